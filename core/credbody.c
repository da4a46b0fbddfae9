#define G_LOG_DOMAIN "sipcred-credbody"

/* Credential bodies: parse what a PUBLISH carries, build what a credential
 * NOTIFY sends. See credbody.h for the accepted forms and the policy on
 * Content-Disposition.
 *
 * Everything here reads peer input that may hold a private key, so: no
 * allocation larger than the input, no recursion without a bound, and no
 * peer byte ever copied into an error message or a log line.
 */

#include "core/credbody.h"

#include <string.h>

G_DEFINE_QUARK(sipcred - credbody - error - quark, core_credbody_error)

/* Constructed DER nesting; X.509 certificates stay below 10. */
#define DER_MAX_DEPTH 32
/* Parameters on one Content-Type or Content-Disposition value. */
#define MIME_MAX_PARAMS 16
/* RFC 2046 section 5.1.1. */
#define BOUNDARY_MAX_LEN 70

typedef enum {
  PART_UNKNOWN,
  PART_CERT,
  PART_PKCS8,
} PartKind;

typedef enum {
  CTE_IDENTITY, /* absent, 7bit, 8bit, binary */
  CTE_BASE64,
  CTE_UNSUPPORTED,
} Cte;

static gboolean
fail(GError **error, CoreCredbodyError code, const char *what)
{
  g_set_error_literal(error, CORE_CREDBODY_ERROR, code, what);
  return FALSE;
}

static gboolean
malformed(GError **error, const char *what)
{
  return fail(error, CORE_CREDBODY_ERROR_MALFORMED, what);
}

guint
core_credbody_error_status(const GError *error)
{
  g_return_val_if_fail(error != NULL, 500);
  if (error->domain != CORE_CREDBODY_ERROR)
    return 500;
  switch ((CoreCredbodyError)error->code) {
  case CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE:
    return 415;
  case CORE_CREDBODY_ERROR_TOO_LARGE:
    return 413;
  case CORE_CREDBODY_ERROR_MALFORMED:
    return 400;
  }
  return 400;
}

/* ---- DER ---------------------------------------------------------------- */

/* One element at der; *used is its encoded size. */
static gboolean
der_element(const guint8 *der, gsize len, gsize *used, guint depth)
{
  gsize i = 1;
  if (len < 2)
    return FALSE;
  guint8 tag = der[0];
  if ((tag & 0x1f) == 0x1f) {
    /* High tag number form: base 128, minimal, and bounded to 4 bytes. */
    guint32 number = 0;
    guint n = 0;
    if (der[i] == 0x80)
      return FALSE;
    for (;;) {
      if (i >= len || n == 4)
        return FALSE;
      guint8 b = der[i++];
      number = (number << 7) | (b & 0x7f);
      n++;
      if (!(b & 0x80))
        break;
    }
    if (number < 0x1f)
      return FALSE;
  }
  if (i >= len)
    return FALSE;
  guint8 lb = der[i++];
  gsize content_len;
  if (lb < 0x80) {
    content_len = lb;
  } else {
    guint nbytes = lb & 0x7f;
    /* 0x80 is BER's indefinite length; DER has none. */
    if (nbytes == 0 || nbytes > 4 || nbytes > len - i || der[i] == 0)
      return FALSE;
    content_len = 0;
    for (guint k = 0; k < nbytes; k++)
      content_len = (content_len << 8) | der[i++];
    if (content_len < 0x80)
      return FALSE; /* the short form was required */
  }
  if (content_len > len - i)
    return FALSE;
  if (tag & 0x20) {
    if (depth >= DER_MAX_DEPTH)
      return FALSE;
    gsize off = 0;
    while (off < content_len) {
      gsize sub;
      if (!der_element(der + i + off, content_len - off, &sub, depth + 1))
        return FALSE;
      off += sub;
    }
  }
  *used = i + content_len;
  return TRUE;
}

gboolean
core_credbody_der_check(const guint8 *der, gsize len)
{
  gsize used = 0;
  if (der == NULL)
    return FALSE;
  return der_element(der, len, &used, 0) && used == len;
}

/* ---- base64 and PEM ----------------------------------------------------- */

typedef struct {
  gpointer data;
  gsize len;
} SecretBuf;

static void
secret_buf_free(gpointer p)
{
  SecretBuf *b = p;
  /* An empty part may have no buffer at all; explicit_bzero takes none. */
  if (b->data != NULL)
    explicit_bzero(b->data, b->len);
  g_free(b->data);
  g_free(b);
}

/* A PKCS#8 may be plain: every decoded part lives in memory that is wiped
 * when the last reference goes. Takes @data (g_malloc'd). */
static GBytes *
secret_bytes_take(gpointer data, gsize len)
{
  SecretBuf *b = g_new(SecretBuf, 1);
  b->data = data;
  b->len = len;
  return g_bytes_new_with_free_func(data, len, secret_buf_free, b);
}

static gboolean
is_b64_space(guint8 c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Strict base64 apart from whitespace, which mail-style line breaks need.
 * g_base64_decode() would skip any junk silently. */
static GBytes *
base64_decode_strict(const guint8 *p, gsize len)
{
  g_autofree char *clean = g_malloc(len + 1);
  gsize n = 0, pad = 0;
  for (gsize i = 0; i < len; i++) {
    guint8 c = p[i];
    if (is_b64_space(c))
      continue;
    if (c == '=') {
      pad++;
    } else if (g_ascii_isalnum(c) || c == '+' || c == '/') {
      if (pad > 0)
        return NULL; /* data after padding */
    } else {
      return NULL;
    }
    clean[n++] = (char)c;
  }
  if (n == 0 || n % 4 != 0 || pad > 2)
    return NULL;
  clean[n] = '\0';
  gsize out_len = 0;
  guchar *out = g_base64_decode(clean, &out_len);
  if (out_len == 0) {
    g_free(out);
    return NULL;
  }
  explicit_bzero(clean, n);
  return secret_bytes_take(out, out_len);
}

static gboolean
has_prefix(const guint8 *p, gsize len, const char *prefix)
{
  gsize n = strlen(prefix);
  return len >= n && memcmp(p, prefix, n) == 0;
}

static gsize
skip_space(const guint8 *p, gsize len, gsize i)
{
  while (i < len && is_b64_space(p[i]))
    i++;
  return i;
}

static gboolean
looks_pem(const guint8 *p, gsize len)
{
  gsize i = skip_space(p, len, 0);
  return has_prefix(p + i, len - i, "-----BEGIN ");
}

/* Exactly one PEM block, surrounded by whitespace only, without RFC 1421
 * headers. Sets *label (upper-case letters, digits, spaces). */
static GBytes *
pem_decode(const guint8 *p, gsize len, char **label)
{
  gsize i = skip_space(p, len, 0);
  if (!has_prefix(p + i, len - i, "-----BEGIN "))
    return NULL;
  i += strlen("-----BEGIN ");
  gsize label_start = i;
  while (i < len && (g_ascii_isupper(p[i]) || g_ascii_isdigit(p[i]) || p[i] == ' '))
    i++;
  gsize label_len = i - label_start;
  if (label_len == 0 || label_len > 64 || !has_prefix(p + i, len - i, "-----"))
    return NULL;
  i += 5;
  gsize data_start = i;
  /* The END line; the base64 in between rejects anything else. */
  gsize data_end = data_start;
  while (data_end < len && p[data_end] != '-')
    data_end++;
  if (!has_prefix(p + data_end, len - data_end, "-----END "))
    return NULL;
  i = data_end + strlen("-----END ");
  if (len - i < label_len || memcmp(p + i, p + label_start, label_len) != 0)
    return NULL;
  i += label_len;
  if (!has_prefix(p + i, len - i, "-----"))
    return NULL;
  i = skip_space(p, len, i + 5);
  if (i != len)
    return NULL; /* a second block or trailing junk */
  GBytes *der = base64_decode_strict(p + data_start, data_end - data_start);
  if (der != NULL)
    *label = g_strndup((const char *)p + label_start, label_len);
  return der;
}

static PartKind
pem_label_kind(const char *label)
{
  if (strcmp(label, "CERTIFICATE") == 0 || strcmp(label, "X509 CERTIFICATE") == 0)
    return PART_CERT;
  if (strcmp(label, "PRIVATE KEY") == 0 || strcmp(label, "ENCRYPTED PRIVATE KEY") == 0)
    return PART_PKCS8;
  return PART_UNKNOWN;
}

/* Turns one body (or part) of the given kind into its DER. bare: the whole
 * body was application/pkix-cert, so a key in it is a key sent where only a
 * certificate may go. */
static GBytes *
content_decode(const guint8 *p, gsize len, Cte cte, PartKind kind, gboolean bare,
               GError **error)
{
  g_autoptr(GBytes) decoded = NULL;
  if (cte == CTE_BASE64) {
    decoded = base64_decode_strict(p, len);
    if (decoded == NULL) {
      malformed(error, "bad base64 content");
      return NULL;
    }
    p = g_bytes_get_data(decoded, &len);
  }
  g_autoptr(GBytes) der = NULL;
  if (looks_pem(p, len)) {
    g_autofree char *label = NULL;
    der = pem_decode(p, len, &label);
    if (der == NULL) {
      malformed(error, "bad PEM content");
      return NULL;
    }
    PartKind label_kind = pem_label_kind(label);
    if (label_kind != kind) {
      if (bare && label_kind == PART_PKCS8)
        malformed(error, "pkcs8 in a certificate-only body");
      else
        malformed(error, "PEM label does not match the content type");
      return NULL;
    }
  } else if (decoded != NULL) {
    der = g_steal_pointer(&decoded);
  } else {
    der = secret_bytes_take(g_memdup2(p, len), len);
  }
  gsize der_len;
  const guint8 *d = g_bytes_get_data(der, &der_len);
  /* Both a Certificate and a PrivateKeyInfo are a SEQUENCE. */
  if (der_len == 0 || d[0] != 0x30 || !core_credbody_der_check(d, der_len)) {
    malformed(error, kind == PART_CERT ? "certificate is not one DER element"
                                       : "pkcs8 is not one DER element");
    return NULL;
  }
  return g_steal_pointer(&der);
}

/* ---- MIME header values ------------------------------------------------- */

typedef struct {
  char *value; /* lower-cased "type/subtype" or disposition type */
  guint n_params;
  char *names[MIME_MAX_PARAMS]; /* lower-cased */
  char *values[MIME_MAX_PARAMS];
} MimeValue;

static void
mime_value_clear(MimeValue *mv)
{
  g_free(mv->value);
  for (guint i = 0; i < mv->n_params; i++) {
    g_free(mv->names[i]);
    g_free(mv->values[i]);
  }
  memset(mv, 0, sizeof(*mv));
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(MimeValue, mime_value_clear)

static gboolean
is_token_char(char c)
{
  /* RFC 2045 token: printable ASCII but SPACE and tspecials. */
  return c > 0x20 && c < 0x7f && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

static const char *
skip_lws(const char *s)
{
  while (*s == ' ' || *s == '\t')
    s++;
  return s;
}

static const char *
mime_value_param(const MimeValue *mv, const char *name)
{
  for (guint i = 0; i < mv->n_params; i++)
    if (strcmp(mv->names[i], name) == 0)
      return mv->values[i];
  return NULL;
}

/* token ["/" token] *(";" token "=" (token / quoted-string)), case-folded
 * where MIME says case does not matter. slash: whether "/" is required. */
static gboolean
mime_value_parse(const char *s, gboolean slash, MimeValue *mv)
{
  s = skip_lws(s);
  const char *start = s;
  while (is_token_char(*s))
    s++;
  if (s == start)
    return FALSE;
  if (slash) {
    if (*s != '/')
      return FALSE;
    s++;
    const char *sub = s;
    while (is_token_char(*s))
      s++;
    if (s == sub)
      return FALSE;
  }
  mv->value = g_ascii_strdown(start, s - start);
  s = skip_lws(s);
  while (*s == ';') {
    s = skip_lws(s + 1);
    if (*s == '\0')
      break; /* a trailing ";" is common and harmless */
    const char *name = s;
    while (is_token_char(*s))
      s++;
    if (s == name)
      return FALSE;
    g_autofree char *lname = g_ascii_strdown(name, s - name);
    s = skip_lws(s);
    if (*s != '=')
      return FALSE;
    s = skip_lws(s + 1);
    g_autofree char *val = NULL;
    if (*s == '"') {
      GString *q = g_string_new(NULL);
      s++;
      while (*s != '"') {
        if (*s == '\\' && s[1] != '\0')
          s++;
        if (*s == '\0' || *s == '\r' || *s == '\n') {
          g_string_free(q, TRUE);
          return FALSE;
        }
        g_string_append_c(q, *s++);
      }
      s++;
      val = g_string_free(q, FALSE);
    } else {
      const char *v = s;
      while (is_token_char(*s))
        s++;
      if (s == v)
        return FALSE;
      val = g_strndup(v, s - v);
    }
    if (mv->n_params == MIME_MAX_PARAMS || mime_value_param(mv, lname) != NULL)
      return FALSE;
    mv->names[mv->n_params] = g_steal_pointer(&lname);
    mv->values[mv->n_params] = g_steal_pointer(&val);
    mv->n_params++;
    s = skip_lws(s);
  }
  return *s == '\0';
}

static Cte
cte_parse(const char *cte)
{
  if (cte == NULL)
    return CTE_IDENTITY;
  g_autofree char *v = g_strstrip(g_ascii_strdown(cte, -1));
  if (strcmp(v, "binary") == 0 || strcmp(v, "8bit") == 0 || strcmp(v, "7bit") == 0)
    return CTE_IDENTITY;
  if (strcmp(v, "base64") == 0)
    return CTE_BASE64;
  return CTE_UNSUPPORTED;
}

static PartKind
media_kind(const char *type_subtype)
{
  if (strcmp(type_subtype, "application/pkix-cert") == 0)
    return PART_CERT;
  if (strcmp(type_subtype, "application/pkcs8") == 0)
    return PART_PKCS8;
  return PART_UNKNOWN;
}

/* ---- multipart ---------------------------------------------------------- */

static gboolean
boundary_valid(const char *b)
{
  gsize n = strlen(b);
  if (n < 1 || n > BOUNDARY_MAX_LEN || b[n - 1] == ' ')
    return FALSE;
  for (gsize i = 0; i < n; i++)
    if (!g_ascii_isalnum(b[i]) && strchr("'()+_,-./:=? ", b[i]) == NULL)
      return FALSE;
  return TRUE;
}

static const guint8 *
find_bytes(const guint8 *hay, gsize len, const guint8 *needle, gsize nlen)
{
  if (nlen == 0 || len < nlen)
    return NULL;
  const guint8 *end = hay + len - nlen + 1;
  for (const guint8 *p = hay; p < end;) {
    p = memchr(p, needle[0], end - p);
    if (p == NULL)
      return NULL;
    if (memcmp(p, needle, nlen) == 0)
      return p;
    p++;
  }
  return NULL;
}

/* At p (just after "--boundary"): is this a delimiter line? Sets *next to
 * the first byte after its CRLF, or *close for "--boundary--". */
static gboolean
delimiter_end(const guint8 *p, const guint8 *end, const guint8 **next, gboolean *close)
{
  if (end - p >= 2 && p[0] == '-' && p[1] == '-') {
    *close = TRUE;
    *next = end; /* the epilogue is ignored */
    return TRUE;
  }
  while (p < end && (*p == ' ' || *p == '\t'))
    p++; /* transport padding */
  if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
    *close = FALSE;
    *next = p + 2;
    return TRUE;
  }
  return FALSE;
}

/* The next "CRLF--boundary" delimiter at or after from. *at is where its
 * CRLF starts, which ends the preceding part. */
static gboolean
next_delimiter(const guint8 *from, const guint8 *end, const guint8 *delim, gsize dlen,
               const guint8 **at, const guint8 **next, gboolean *close)
{
  while (from < end) {
    const guint8 *p = find_bytes(from, end - from, delim, dlen);
    if (p == NULL)
      return FALSE;
    if (delimiter_end(p + dlen, end, next, close)) {
      *at = p;
      return TRUE;
    }
    from = p + 1;
  }
  return FALSE;
}

typedef struct {
  GBytes *cert;
  GBytes *pkcs8;
} Found;

static void
found_clear(Found *f)
{
  g_clear_pointer(&f->cert, g_bytes_unref);
  g_clear_pointer(&f->pkcs8, g_bytes_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Found, found_clear)

typedef struct {
  char *content_type;
  char *cte;
  char *disposition;
} PartHeaders;

static void
part_headers_clear(PartHeaders *h)
{
  g_free(h->content_type);
  g_free(h->cte);
  g_free(h->disposition);
  memset(h, 0, sizeof(*h));
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(PartHeaders, part_headers_clear)

/* RFC 822 style header lines, each ending in CRLF, folded lines allowed.
 * Only the three headers that matter are kept; each may appear once. */
static gboolean
part_headers_parse(const guint8 *p, gsize len, PartHeaders *h, GError **error)
{
  g_autoptr(GString) line = g_string_new(NULL);
  gsize i = 0;
  while (i < len) {
    /* One logical line: physical lines while the next starts with WSP. */
    g_string_truncate(line, 0);
    for (;;) {
      const guint8 *eol = find_bytes(p + i, len - i, (const guint8 *)"\r\n", 2);
      if (eol == NULL)
        return malformed(error, "bad part header");
      gsize n = eol - (p + i);
      for (gsize k = 0; k < n; k++) {
        guint8 c = p[i + k];
        if (c == '\0' || c == '\r' || c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f)
          return malformed(error, "bad part header");
      }
      g_string_append_len(line, (const char *)p + i, n);
      i += n + 2;
      if (i >= len || (p[i] != ' ' && p[i] != '\t'))
        break;
    }
    const char *colon = strchr(line->str, ':');
    if (colon == NULL || colon == line->str)
      return malformed(error, "bad part header");
    g_autofree char *name = g_strstrip(g_ascii_strdown(line->str, colon - line->str));
    char **slot = NULL;
    if (strcmp(name, "content-type") == 0)
      slot = &h->content_type;
    else if (strcmp(name, "content-transfer-encoding") == 0)
      slot = &h->cte;
    else if (strcmp(name, "content-disposition") == 0)
      slot = &h->disposition;
    if (slot == NULL)
      continue; /* Content-ID, Content-Description, ...: not needed */
    if (*slot != NULL)
      return malformed(error, "repeated part header");
    *slot = g_strdup(colon + 1);
  }
  return TRUE;
}

/* Dispositions a credential part may carry; others count as not understood.
 * "signal" is what we send; render is SIP's default for most bodies, inline
 * and attachment are what MIME libraries write. */
static gboolean
disposition_known(const char *type)
{
  return strcmp(type, "signal") == 0 || strcmp(type, "render") == 0 ||
         strcmp(type, "inline") == 0 || strcmp(type, "attachment") == 0;
}

static gboolean
part_process(const guint8 *p, gsize len, CoreCredbodyParseFlags flags, Found *found,
             GError **error)
{
  const guint8 *content;
  g_auto(PartHeaders) h = {0};
  if (len >= 2 && p[0] == '\r' && p[1] == '\n') {
    content = p + 2; /* no headers at all */
  } else {
    const guint8 *hend = find_bytes(p, len, (const guint8 *)"\r\n\r\n", 4);
    if (hend == NULL)
      return malformed(error, "part headers not terminated");
    if (!part_headers_parse(p, hend + 2 - p, &h, error))
      return FALSE;
    content = hend + 4;
  }
  gsize content_len = len - (content - p);

  /* RFC 2045: without Content-Type a part is text/plain. */
  g_auto(MimeValue) type = {0};
  if (!mime_value_parse(h.content_type != NULL ? h.content_type : "text/plain", TRUE, &type))
    return malformed(error, "bad part Content-Type");
  if (g_str_has_prefix(type.value, "multipart/"))
    return malformed(error, "nested multipart");

  gboolean optional = FALSE, disposition_ok = TRUE;
  if (h.disposition != NULL) {
    g_auto(MimeValue) disp = {0};
    if (!mime_value_parse(h.disposition, FALSE, &disp))
      return malformed(error, "bad part Content-Disposition");
    const char *handling = mime_value_param(&disp, "handling");
    /* RFC 3261 20.11: required unless it says optional. */
    optional = handling != NULL && g_ascii_strcasecmp(handling, "optional") == 0;
    disposition_ok = disposition_known(disp.value);
  }

  PartKind kind = media_kind(type.value);
  if (kind == PART_UNKNOWN || !disposition_ok) {
    if (optional)
      return TRUE; /* may be ignored, so it is */
    return fail(error, CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE,
                kind == PART_UNKNOWN ? "unsupported required part type"
                                     : "unsupported required part disposition");
  }
  if (kind == PART_PKCS8 && (flags & CORE_CREDBODY_PARSE_CERT_ONLY))
    return malformed(error, "pkcs8 part in a certificate-only body");
  if (kind == PART_CERT && found->cert != NULL)
    return malformed(error, "two certificate parts");
  if (kind == PART_PKCS8 && found->pkcs8 != NULL)
    return malformed(error, "two pkcs8 parts");

  Cte cte = cte_parse(h.cte);
  if (cte == CTE_UNSUPPORTED)
    return fail(error, CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE,
                "unsupported part Content-Transfer-Encoding");
  GBytes *der = content_decode(content, content_len, cte, kind, FALSE, error);
  if (der == NULL)
    return FALSE;
  if (kind == PART_CERT)
    found->cert = der;
  else
    found->pkcs8 = der;
  return TRUE;
}

static gboolean
multipart_parse(const MimeValue *type, const guint8 *body, gsize len,
                CoreCredbodyParseFlags flags, Found *found, GError **error)
{
  const char *boundary = mime_value_param(type, "boundary");
  if (boundary == NULL)
    return malformed(error, "multipart boundary missing");
  if (!boundary_valid(boundary))
    return malformed(error, "multipart boundary invalid");

  /* "CRLF--boundary"; the first delimiter may also open the body without
   * its CRLF (RFC 2046: the CRLF belongs to the delimiter). */
  gsize blen = strlen(boundary);
  g_autofree guint8 *delim = g_malloc(blen + 4);
  memcpy(delim, "\r\n--", 4);
  memcpy(delim + 4, boundary, blen);
  gsize dlen = blen + 4;

  const guint8 *end = body + len;
  const guint8 *at, *next;
  gboolean close = FALSE;
  if (!(len >= dlen - 2 && memcmp(body, delim + 2, dlen - 2) == 0 &&
        delimiter_end(body + dlen - 2, end, &next, &close)) &&
      !next_delimiter(body, end, delim, dlen, &at, &next, &close))
    return malformed(error, "multipart delimiter not found");
  if (close)
    return malformed(error, "multipart has no parts");

  guint n_parts = 0;
  while (!close) {
    const guint8 *part = next;
    if (!next_delimiter(part, end, delim, dlen, &at, &next, &close))
      return malformed(error, "multipart close delimiter missing");
    if (++n_parts > CORE_CREDBODY_MAX_PARTS)
      return malformed(error, "too many parts");
    if (!part_process(part, at - part, flags, found, error))
      return FALSE;
  }
  if (found->cert == NULL)
    return malformed(error, found->pkcs8 != NULL ? "pkcs8 part without a certificate part"
                                                 : "no certificate part");
  return TRUE;
}

gboolean
core_credbody_parse(const char *content_type, const char *cte, const guint8 *body, gsize len,
                    CoreCredbodyParseFlags flags, GBytes **cert_der, GBytes **pkcs8_der,
                    GError **error)
{
  g_return_val_if_fail(body != NULL || len == 0, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (len > CORE_CREDBODY_MAX_LEN)
    return fail(error, CORE_CREDBODY_ERROR_TOO_LARGE, "credential body too large");
  if (len == 0)
    return malformed(error, "empty body");
  if (content_type == NULL)
    return malformed(error, "Content-Type missing");
  g_auto(MimeValue) type = {0};
  if (!mime_value_parse(content_type, TRUE, &type))
    return malformed(error, "bad Content-Type");

  Cte message_cte = cte_parse(cte);
  g_auto(Found) found = {0};
  if (strcmp(type.value, "multipart/mixed") == 0) {
    /* RFC 2045 6.4: a multipart is never encoded as a whole. */
    if (message_cte != CTE_IDENTITY)
      return malformed(error, "encoded multipart body");
    if (!multipart_parse(&type, body, len, flags, &found, error))
      return FALSE;
  } else if (media_kind(type.value) == PART_CERT) {
    if (message_cte == CTE_UNSUPPORTED)
      return fail(error, CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE,
                  "unsupported Content-Transfer-Encoding");
    found.cert = content_decode(body, len, message_cte, PART_CERT, TRUE, error);
    if (found.cert == NULL)
      return FALSE;
  } else if (media_kind(type.value) == PART_PKCS8) {
    return malformed(error, (flags & CORE_CREDBODY_PARSE_CERT_ONLY)
                                ? "pkcs8 in a certificate-only body"
                                : "pkcs8 body without a certificate");
  } else {
    return fail(error, CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE, "unsupported Content-Type");
  }

  if (cert_der != NULL)
    *cert_der = g_steal_pointer(&found.cert);
  if (pkcs8_der != NULL)
    *pkcs8_der = g_steal_pointer(&found.pkcs8);
  return TRUE;
}

/* ---- build -------------------------------------------------------------- */

static gboolean
bytes_contain(GBytes *bytes, const char *s)
{
  gsize len;
  if (bytes == NULL)
    return FALSE;
  const guint8 *p = g_bytes_get_data(bytes, &len);
  return find_bytes(p, len, (const guint8 *)s, strlen(s)) != NULL;
}

static void
append_part(GByteArray *out, const char *boundary, const char *type, GBytes *der)
{
  gsize len;
  const guint8 *p = g_bytes_get_data(der, &len);
  g_autofree char *head = g_strdup_printf("--%s\r\n"
                                          "Content-Type: %s\r\n"
                                          "Content-Transfer-Encoding: binary\r\n"
                                          "Content-Disposition: signal\r\n"
                                          "\r\n",
                                          boundary, type);
  g_byte_array_append(out, (const guint8 *)head, strlen(head));
  g_byte_array_append(out, p, len);
  /* This CRLF belongs to the next delimiter, not to the DER. */
  g_byte_array_append(out, (const guint8 *)"\r\n", 2);
}

GBytes *
core_credbody_build(GBytes *cert_der, GBytes *pkcs8_der, char **content_type_out)
{
  g_return_val_if_fail(cert_der != NULL, NULL);
  g_return_val_if_fail(content_type_out != NULL, NULL);

  /* The boundary only has to be absent from the parts, not secret. It is
   * derived from the certificate, so that the same credential always gives
   * the same body and the core can tell a repeated state from a new one; a
   * collision is checked for, not just made unlikely. */
  g_autofree char *boundary = NULL;
  for (guint attempt = 0; boundary == NULL || bytes_contain(cert_der, boundary) ||
                          bytes_contain(pkcs8_der, boundary);
       attempt++) {
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    gsize len = 0;
    const guchar *data = g_bytes_get_data(cert_der, &len);
    g_checksum_update(sum, data, len);
    g_checksum_update(sum, (const guchar *)&attempt, sizeof attempt);
    g_free(boundary);
    boundary = g_strdup_printf("sipcred-%.24s", g_checksum_get_string(sum));
  }

  g_autoptr(GByteArray) out = g_byte_array_new();
  append_part(out, boundary, "application/pkix-cert", cert_der);
  if (pkcs8_der != NULL)
    append_part(out, boundary, "application/pkcs8", pkcs8_der);
  g_autofree char *close = g_strdup_printf("--%s--\r\n", boundary);
  g_byte_array_append(out, (const guint8 *)close, strlen(close));

  *content_type_out = g_strdup_printf("multipart/mixed;boundary=%s", boundary);
  return g_byte_array_free_to_bytes(g_steal_pointer(&out));
}
