/* identity/sign: RFC 4474 digest-string, message signing, verification and
 * the signing pool. The key stays in the backends (sign-gnutls.c,
 * sign-openssl.c); this file only ever holds the signer handle. */
#define G_LOG_DOMAIN "sipcred-identity"

#include "identity/sign.h"

#include <string.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "identity/cert.h"
#include "identity/sign-backend.h"

/* clang-format off */
G_DEFINE_QUARK(sipcred-ident-sign-error-quark, ident_sign_error)
/* clang-format on */

const char *
ident_alg_to_string(IdentAlg alg)
{
  return alg == IDENT_ALG_RSA_SHA1 ? "rsa-sha1" : "rsa-sha256";
}

gboolean
ident_alg_from_string(const char *name, IdentAlg *alg)
{
  g_return_val_if_fail(alg != NULL, FALSE);
  if (name == NULL)
    return FALSE;
  if (g_ascii_strcasecmp(name, "rsa-sha256") == 0)
    *alg = IDENT_ALG_RSA_SHA256;
  else if (g_ascii_strcasecmp(name, "rsa-sha1") == 0)
    *alg = IDENT_ALG_RSA_SHA1;
  else
    return FALSE;
  return TRUE;
}

/* ---- Date ------------------------------------------------------------------ */

static const char wkdays[7][4] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

char *
ident_date_format(gint64 unix_time)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(unix_time);

  /* Outside years 1..9999 there is no RFC 1123 form. */
  g_return_val_if_fail(dt != NULL, NULL);
  /* By hand: g_date_time_format()'s %a and %b follow the locale. */
  return g_strdup_printf("%s, %02d %s %04d %02d:%02d:%02d GMT",
                         wkdays[g_date_time_get_day_of_week(dt) - 1],
                         g_date_time_get_day_of_month(dt), months[g_date_time_get_month(dt) - 1],
                         g_date_time_get_year(dt), g_date_time_get_hour(dt),
                         g_date_time_get_minute(dt), g_date_time_get_second(dt));
}

static gboolean
parse_digits(const char *s, guint n, int *out)
{
  int v = 0;

  for (guint i = 0; i < n; i++) {
    if (!g_ascii_isdigit(s[i]))
      return FALSE;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return TRUE;
}

gboolean
ident_date_parse(const char *value, gint64 *unix_time)
{
  /* "Www, DD Mmm YYYY HH:MM:SS GMT" */
  int wday = -1, mon = -1, day, year, hour, min, sec;
  g_autoptr(GDateTime) dt = NULL;

  g_return_val_if_fail(unix_time != NULL, FALSE);
  if (value == NULL || strlen(value) != 29)
    return FALSE;
  for (int i = 0; i < 7; i++)
    if (memcmp(value, wkdays[i], 3) == 0)
      wday = i + 1;
  for (int i = 0; i < 12; i++)
    if (memcmp(value + 8, months[i], 3) == 0)
      mon = i + 1;
  if (wday < 0 || mon < 0 || memcmp(value + 3, ", ", 2) != 0 || value[7] != ' ' ||
      value[11] != ' ' || value[16] != ' ' || value[19] != ':' || value[22] != ':' ||
      memcmp(value + 25, " GMT", 4) != 0)
    return FALSE;
  if (!parse_digits(value + 5, 2, &day) || !parse_digits(value + 12, 4, &year) ||
      !parse_digits(value + 17, 2, &hour) || !parse_digits(value + 20, 2, &min) ||
      !parse_digits(value + 23, 2, &sec))
    return FALSE;
  if (year < 1 || day < 1 || hour > 23 || min > 59 || sec > 59)
    return FALSE;
  dt = g_date_time_new_utc(year, mon, day, hour, min, sec);
  /* An impossible day (31 Feb) or a weekday that does not fit is not exact. */
  if (dt == NULL || g_date_time_get_day_of_week(dt) != wday)
    return FALSE;
  *unix_time = g_date_time_to_unix(dt);
  return TRUE;
}

/* ---- Reading the message ----------------------------------------------------- */

/* What the digest-string, signing and verification need from a message.
 * Values are unfolded and trimmed; NULL when the header is absent. */
typedef struct {
  gsize headers_end; /* offset of the empty line that ends the header section */
  gsize body_off;
  gsize body_len;
  char *from, *to, *call_id, *cseq, *date, *contact, *content_length;
  char *identity, *identity_info;
} IdentMsg;

static void
ident_msg_clear(IdentMsg *m)
{
  g_free(m->from);
  g_free(m->to);
  g_free(m->call_id);
  g_free(m->cseq);
  g_free(m->date);
  g_free(m->contact);
  g_free(m->content_length);
  g_free(m->identity);
  g_free(m->identity_info);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(IdentMsg, ident_msg_clear)

typedef enum {
  HDR_OTHER,
  HDR_FROM,
  HDR_TO,
  HDR_CALL_ID,
  HDR_CSEQ,
  HDR_DATE,
  HDR_CONTACT,
  HDR_CONTENT_LENGTH,
  HDR_IDENTITY,
  HDR_IDENTITY_INFO,
} HdrKind;

static const struct {
  const char *name;
  const char *compact; /* RFC 3261 section 7.3.3, RFC 4474 section 12 */
  HdrKind kind;
} known_headers[] = {
    {"From", "f", HDR_FROM},
    {"To", "t", HDR_TO},
    {"Call-ID", "i", HDR_CALL_ID},
    {"CSeq", NULL, HDR_CSEQ},
    {"Date", NULL, HDR_DATE},
    {"Contact", "m", HDR_CONTACT},
    {"Content-Length", "l", HDR_CONTENT_LENGTH},
    {"Identity", "y", HDR_IDENTITY},
    {"Identity-Info", "n", HDR_IDENTITY_INFO},
};

static HdrKind
header_kind(const char *name, gsize len)
{
  for (guint i = 0; i < G_N_ELEMENTS(known_headers); i++) {
    const char *full = known_headers[i].name, *compact = known_headers[i].compact;
    if ((strlen(full) == len && g_ascii_strncasecmp(name, full, len) == 0) ||
        (compact != NULL && len == 1 && g_ascii_tolower(name[0]) == compact[0]))
      return known_headers[i].kind;
  }
  return HDR_OTHER;
}

static gboolean
is_ws(char c)
{
  return c == ' ' || c == '\t';
}

static gboolean
is_token_char(char c)
{
  return g_ascii_isalnum(c) || (c != '\0' && strchr("-.!%*_+`'~", c) != NULL);
}

/* The value between @start and @end (which may hold folds, CRLF followed by
 * whitespace) with each fold and the whitespace around it made one space,
 * and trimmed. */
static char *
unfold(const guint8 *start, const guint8 *end)
{
  GString *s = g_string_sized_new(end - start);
  const guint8 *p = start;

  while (p < end) {
    if (*p == '\r' || is_ws(*p)) {
      while (p < end && (*p == '\r' || *p == '\n' || is_ws(*p)))
        p++;
      if (s->len > 0 && p < end)
        g_string_append_c(s, ' ');
      continue;
    }
    g_string_append_c(s, *p++);
  }
  return g_string_free(s, FALSE);
}

static const char *
kind_name(HdrKind kind)
{
  for (guint i = 0; i < G_N_ELEMENTS(known_headers); i++)
    if (known_headers[i].kind == kind)
      return known_headers[i].name;
  return "?";
}

static gboolean
store_header(IdentMsg *m, HdrKind kind, const guint8 *vstart, const guint8 *vend, GError **error)
{
  char **const slots[] = {
      [HDR_OTHER] = NULL,
      [HDR_FROM] = &m->from,
      [HDR_TO] = &m->to,
      [HDR_CALL_ID] = &m->call_id,
      [HDR_CSEQ] = &m->cseq,
      [HDR_DATE] = &m->date,
      [HDR_CONTACT] = &m->contact,
      [HDR_CONTENT_LENGTH] = &m->content_length,
      [HDR_IDENTITY] = &m->identity,
      [HDR_IDENTITY_INFO] = &m->identity_info,
  };
  char **slot = slots[kind];

  if (slot == NULL)
    return TRUE;
  if (*slot != NULL) {
    /* Only the first Contact counts; every other one must be unique, or
     * signer and verifier could read different values. */
    if (kind == HDR_CONTACT)
      return TRUE;
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "more than one %s header",
                kind_name(kind));
    return FALSE;
  }
  *slot = unfold(vstart, vend);
  return TRUE;
}

static gboolean
parse_content_length(const char *value, gsize *out)
{
  gsize n = 0;

  if (value[0] == '\0' || strlen(value) > 9)
    return FALSE;
  for (const char *p = value; *p != '\0'; p++) {
    if (!g_ascii_isdigit(*p))
      return FALSE;
    n = n * 10 + (gsize)(*p - '0');
  }
  *out = n;
  return TRUE;
}

/* Splits @msg into its header fields and body. Linear in @len. */
static gboolean
ident_msg_parse(const guint8 *msg, gsize len, IdentMsg *m, GError **error)
{
  const guint8 *end = msg + len, *p = msg, *eol;
  HdrKind cur = HDR_OTHER;
  const guint8 *vstart = NULL, *vend = NULL;
  gboolean in_header = FALSE;
  gsize cl;

  if (len == 0 || len > IDENT_SIGN_MAX_MESSAGE) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "message is %s",
                len == 0 ? "empty" : "too large");
    return FALSE;
  }
  for (gboolean start_line = TRUE;; start_line = FALSE) {
    /* One line: everything up to CRLF, with no other CR, LF or NUL in it. */
    for (eol = p; eol < end && *eol != '\r' && *eol != '\n' && *eol != '\0'; eol++)
      ;
    if (end - eol < 2 || eol[0] != '\r' || eol[1] != '\n') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  eol >= end ? "header section does not end with an empty line"
                             : "stray CR, LF or NUL in the header section");
      return FALSE;
    }
    if (start_line) {
      if (eol == p || is_ws(*p)) {
        g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "no start line");
        return FALSE;
      }
    } else if (eol > p && is_ws(*p)) {
      /* A fold continues the header before it. */
      if (!in_header) {
        g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                    "folded line without a header");
        return FALSE;
      }
      vend = eol;
    } else {
      if (in_header && !store_header(m, cur, vstart, vend, error))
        return FALSE;
      in_header = FALSE;
      if (eol == p) {
        m->headers_end = (gsize)(p - msg);
        m->body_off = m->headers_end + 2;
        break;
      }
      const guint8 *colon = memchr(p, ':', eol - p);
      const guint8 *name_end = colon;
      if (colon == NULL) {
        g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                    "header line without a colon");
        return FALSE;
      }
      while (name_end > p && is_ws(name_end[-1]))
        name_end--;
      for (const guint8 *q = p; q < name_end; q++) {
        if (!is_token_char(*q)) {
          g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "invalid header name");
          return FALSE;
        }
      }
      if (name_end == p) {
        g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "empty header name");
        return FALSE;
      }
      cur = header_kind((const char *)p, name_end - p);
      vstart = colon + 1;
      vend = eol;
      in_header = TRUE;
    }
    p = eol + 2;
  }

  /* A stream gives no other end of the body than Content-Length. */
  if (m->content_length == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "no Content-Length header");
    return FALSE;
  }
  if (!parse_content_length(m->content_length, &cl)) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                "Content-Length is not a number");
    return FALSE;
  }
  m->body_len = len - m->body_off;
  if (m->body_len != cl) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                "body is %" G_GSIZE_FORMAT " bytes, Content-Length says %" G_GSIZE_FORMAT,
                m->body_len, cl);
    return FALSE;
  }
  return TRUE;
}

/* The addr-spec of a From, To or Contact value, as written. For Contact
 * (@list) a comma ends an addr-spec written without <>. */
static char *
addr_spec(const char *field, const char *value, gboolean list, GError **error)
{
  const char *p = value, *spec, *spec_end;

  if (*p == '"') {
    /* A quoted display name may hold '<', '>', ',' and escaped quotes. */
    for (p++; *p != '\0' && *p != '"'; p++)
      if (*p == '\\' && p[1] != '\0')
        p++;
    if (*p != '"') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  "%s: unterminated quoted display name", field);
      return NULL;
    }
    for (p++; is_ws(*p); p++)
      ;
    if (*p != '<') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  "%s: display name not followed by <", field);
      return NULL;
    }
  } else {
    const char *q = p;
    while (*q != '\0' && *q != '<' && *q != ';' && *q != '"' && !(list && *q == ','))
      q++;
    if (*q == '"') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  "%s: quote inside a display name", field);
      return NULL;
    }
    if (*q != '<') {
      /* addr-spec without <>: what follows ';' are header parameters. */
      spec = p;
      spec_end = q;
      while (spec_end > spec && is_ws(spec_end[-1]))
        spec_end--;
      goto check;
    }
    p = q;
  }
  spec = p + 1;
  spec_end = strchr(spec, '>');
  if (spec_end == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "%s: no closing >", field);
    return NULL;
  }
check:
  if (spec_end == spec) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "%s: empty URI", field);
    return NULL;
  }
  for (const char *c = spec; c < spec_end; c++) {
    if (is_ws(*c) || *c == '<' || (guchar)*c < 0x20 || *c == 0x7f) {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  "%s: invalid character in the URI", field);
      return NULL;
    }
  }
  if (memchr(spec, ':', spec_end - spec) == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "%s: URI without a scheme",
                field);
    return NULL;
  }
  return g_strndup(spec, spec_end - spec);
}

/* "num method", the numeric part and the method separated by one space. */
static char *
cseq_normalize(const char *value, GError **error)
{
  const char *p = value, *num, *meth;
  gsize num_len, meth_len;

  for (num = p; g_ascii_isdigit(*p); p++)
    ;
  num_len = p - num;
  if (num_len == 0 || num_len > 10 || !is_ws(*p)) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                "CSeq is not a number and a method");
    return NULL;
  }
  while (is_ws(*p))
    p++;
  for (meth = p; is_token_char(*p); p++)
    ;
  meth_len = p - meth;
  if (meth_len == 0 || *p != '\0') {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                "CSeq is not a number and a method");
    return NULL;
  }
  return g_strdup_printf("%.*s %.*s", (int)num_len, num, (int)meth_len, meth);
}

static gboolean
require(const char *value, const char *name, GError **error)
{
  if (value == NULL || value[0] == '\0') {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "no %s header", name);
    return FALSE;
  }
  return TRUE;
}

/* The digest-string of a parsed message, with @date as the Date value. */
static GBytes *
digest_string(const guint8 *msg, const IdentMsg *m, const char *date, GError **error)
{
  g_autofree char *from = NULL, *to = NULL, *cseq = NULL, *contact = NULL;
  GByteArray *out;

  if (!require(m->from, "From", error) || !require(m->to, "To", error) ||
      !require(m->call_id, "Call-ID", error) || !require(m->cseq, "CSeq", error) ||
      !require(date, "Date", error))
    return NULL;
  from = addr_spec("From", m->from, FALSE, error);
  if (from == NULL)
    return NULL;
  to = addr_spec("To", m->to, FALSE, error);
  if (to == NULL)
    return NULL;
  cseq = cseq_normalize(m->cseq, error);
  if (cseq == NULL)
    return NULL;
  if (m->contact != NULL) {
    if (strcmp(m->contact, "*") == 0) {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  "Contact: * has no addr-spec to sign");
      return NULL;
    }
    contact = addr_spec("Contact", m->contact, TRUE, error);
    if (contact == NULL)
      return NULL;
  }

  out = g_byte_array_sized_new(strlen(from) + strlen(to) + strlen(m->call_id) + strlen(cseq) +
                               strlen(date) + (contact ? strlen(contact) : 0) + m->body_len + 6);
#define APPEND(s) g_byte_array_append(out, (const guint8 *)(s), strlen(s))
  APPEND(from);
  APPEND("|");
  APPEND(to);
  APPEND("|");
  APPEND(m->call_id);
  APPEND("|");
  APPEND(cseq);
  APPEND("|");
  APPEND(date);
  APPEND("|");
  if (contact != NULL)
    APPEND(contact);
  APPEND("|");
#undef APPEND
  g_byte_array_append(out, msg + m->body_off, m->body_len);
  return g_byte_array_free_to_bytes(out);
}

GBytes *
ident_digest_string(const guint8 *msg, gsize len, GError **error)
{
  g_auto(IdentMsg) m = {0};

  g_return_val_if_fail(msg != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);
  if (!ident_msg_parse(msg, len, &m, error))
    return NULL;
  return digest_string(msg, &m, m.date, error);
}

/* ---- Signer -------------------------------------------------------------- */

struct _IdentSigner {
  gatomicrefcount ref;
  IdentSignerBackend backend;
  const IdentSignBackendOps *ops;
  gpointer key;
  GBytes *cert_der;
};

const char *
ident_signer_backend_to_string(IdentSignerBackend backend)
{
  return backend == IDENT_SIGNER_OPENSSL ? "openssl" : "gnutls";
}

gboolean
ident_signer_backend_from_string(const char *name, IdentSignerBackend *backend)
{
  g_return_val_if_fail(backend != NULL, FALSE);
  if (name == NULL)
    return FALSE;
  if (g_ascii_strcasecmp(name, "gnutls") == 0)
    *backend = IDENT_SIGNER_GNUTLS;
  else if (g_ascii_strcasecmp(name, "openssl") == 0)
    *backend = IDENT_SIGNER_OPENSSL;
  else
    return FALSE;
  return TRUE;
}

static const IdentSignBackendOps *
backend_ops(IdentSignerBackend backend)
{
  switch (backend) {
  case IDENT_SIGNER_GNUTLS:
    return &ident_sign_backend_gnutls;
  case IDENT_SIGNER_OPENSSL:
#ifdef SIPCRED_HAVE_OPENSSL
    return &ident_sign_backend_openssl;
#else
    return NULL;
#endif
  }
  return NULL;
}

gboolean
ident_signer_backend_available(IdentSignerBackend backend)
{
  return backend_ops(backend) != NULL;
}

/* cert.c's errors, told apart by what they concern. */
static void
propagate_key_error(GError **error, GError *src, const char *what)
{
  g_set_error(error, IDENT_SIGN_ERROR,
              src->code == IDENT_ERROR_CRYPTO ? IDENT_SIGN_ERROR_CRYPTO : IDENT_SIGN_ERROR_KEY,
              "%s: %s", what, src->message);
  g_error_free(src);
}

IdentSigner *
ident_signer_new(IdentSignerBackend backend, const guint8 *key, gsize key_len, const guint8 *cert,
                 gsize cert_len, GError **error)
{
  const IdentSignBackendOps *ops = backend_ops(backend);
  g_autoptr(IdentCert) crt = NULL;
  g_autoptr(GBytes) pkcs8 = NULL; /* wiped by cert.c when released */
  g_autofree char *desc = NULL;
  GError *local = NULL;
  IdentSigner *signer;
  gpointer handle;

  g_return_val_if_fail(key != NULL || key_len == 0, NULL);
  g_return_val_if_fail(cert != NULL || cert_len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (ops == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_BACKEND,
                "the %s signer backend is not built in (it needs libcrypto: build with "
                "-Dopenssl=enabled)",
                ident_signer_backend_to_string(backend));
    return NULL;
  }
  crt = ident_cert_new_from_data(cert, cert_len, &local);
  if (crt == NULL) {
    propagate_key_error(error, local, "certificate");
    return NULL;
  }
  desc = ident_cert_dup_key_description(crt);
  if (desc == NULL || !g_str_has_prefix(desc, "RSA ")) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_KEY,
                "certificate: the key is %s, RFC 4474 signs with RSA",
                desc != NULL ? desc : "unknown");
    return NULL;
  }
  pkcs8 = ident_cert_match_private_key(crt, key, key_len, &local);
  if (pkcs8 == NULL) {
    propagate_key_error(error, local, "private key");
    return NULL;
  }
  handle = ops->key_new(g_bytes_get_data(pkcs8, NULL), g_bytes_get_size(pkcs8), error);
  if (handle == NULL)
    return NULL;

  signer = g_new0(IdentSigner, 1);
  g_atomic_ref_count_init(&signer->ref);
  signer->backend = backend;
  signer->ops = ops;
  signer->key = handle;
  signer->cert_der = g_bytes_ref(ident_cert_get_der(crt));
  return signer;
}

IdentSigner *
ident_signer_ref(IdentSigner *signer)
{
  g_return_val_if_fail(signer != NULL, NULL);
  g_atomic_ref_count_inc(&signer->ref);
  return signer;
}

void
ident_signer_unref(IdentSigner *signer)
{
  if (signer == NULL || !g_atomic_ref_count_dec(&signer->ref))
    return;
  signer->ops->key_free(signer->key);
  g_bytes_unref(signer->cert_der);
  g_free(signer);
}

IdentSignerBackend
ident_signer_get_backend(IdentSigner *signer)
{
  g_return_val_if_fail(signer != NULL, IDENT_SIGNER_GNUTLS);
  return signer->backend;
}

GBytes *
ident_signer_get_cert_der(IdentSigner *signer)
{
  g_return_val_if_fail(signer != NULL, NULL);
  return signer->cert_der;
}

GBytes *
ident_signer_sign(IdentSigner *signer, IdentAlg alg, const guint8 *data, gsize len, GError **error)
{
  g_return_val_if_fail(signer != NULL, NULL);
  g_return_val_if_fail(data != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);
  return signer->ops->sign(signer->key, alg, data, len, error);
}

/* ---- Signing a message ---------------------------------------------------- */

static gboolean
check_info_url(const char *url, GError **error)
{
  gsize len = url != NULL ? strlen(url) : 0;

  if (len == 0 || len > IDENT_SIGN_MAX_URL || strchr(url, ':') == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                "Identity-Info URL must be an absolute URI of at most %d bytes",
                IDENT_SIGN_MAX_URL);
    return FALSE;
  }
  for (const char *p = url; *p != '\0'; p++) {
    if ((guchar)*p <= 0x20 || (guchar)*p >= 0x7f || *p == '<' || *p == '>' || *p == '"') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE,
                  "Identity-Info URL holds a character that cannot go inside <>");
      return FALSE;
    }
  }
  return TRUE;
}

GBytes *
ident_sign_message(IdentSigner *signer, IdentAlg alg, const char *info_url, gint64 now,
                   const guint8 *msg, gsize len, GError **error)
{
  g_auto(IdentMsg) m = {0};
  g_autofree char *added_date = NULL, *b64 = NULL;
  g_autoptr(GBytes) digest = NULL, sig = NULL;
  GByteArray *out;

  g_return_val_if_fail(signer != NULL, NULL);
  g_return_val_if_fail(msg != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!check_info_url(info_url, error) || !ident_msg_parse(msg, len, &m, error))
    return NULL;
  if (m.identity != NULL || m.identity_info != NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE, "message already carries %s",
                m.identity != NULL ? "Identity" : "Identity-Info");
    return NULL;
  }
  if (m.date == NULL) {
    added_date = ident_date_format(now);
    if (added_date == NULL) {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE, "time out of range for Date");
      return NULL;
    }
  }
  digest = digest_string(msg, &m, m.date != NULL ? m.date : added_date, error);
  if (digest == NULL)
    return NULL;
  sig = ident_signer_sign(signer, alg, g_bytes_get_data(digest, NULL), g_bytes_get_size(digest),
                          error);
  if (sig == NULL)
    return NULL;
  b64 = g_base64_encode(g_bytes_get_data(sig, NULL), g_bytes_get_size(sig));

  out = g_byte_array_sized_new(len + strlen(b64) + strlen(info_url) + 128);
  g_byte_array_append(out, msg, m.headers_end);
#define APPEND(s) g_byte_array_append(out, (const guint8 *)(s), strlen(s))
  if (added_date != NULL) {
    APPEND("Date: ");
    APPEND(added_date);
    APPEND("\r\n");
  }
  APPEND("Identity: \"");
  APPEND(b64);
  APPEND("\"\r\nIdentity-Info: <");
  APPEND(info_url);
  APPEND(">;alg=");
  APPEND(ident_alg_to_string(alg));
  APPEND("\r\n");
#undef APPEND
  /* The empty line and the body, untouched. */
  g_byte_array_append(out, msg + m.headers_end, len - m.headers_end);
  return g_byte_array_free_to_bytes(out);
}

/* ---- Verification ---------------------------------------------------------- */

G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_pubkey_t, gnutls_pubkey_deinit, NULL)

/* The alg parameter of an Identity-Info value "<URI>;alg=...;...". */
static gboolean
info_alg(const char *value, IdentAlg *alg, GError **error)
{
  const char *p;

  if (value == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_ALGORITHM, "no Identity-Info header");
    return FALSE;
  }
  if (value[0] != '<' || (p = strchr(value, '>')) == NULL || p == value + 1) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_ALGORITHM,
                "Identity-Info is not <URI> with parameters");
    return FALSE;
  }
  *alg = IDENT_ALG_RSA_SHA1; /* RFC 4474's default when alg is absent */
  p++;
  while (*p != '\0') {
    const char *name, *name_end, *val = NULL, *val_end;
    while (is_ws(*p))
      p++;
    if (*p != ';') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_ALGORITHM,
                  "Identity-Info: junk after the URI");
      return FALSE;
    }
    for (p++; is_ws(*p); p++)
      ;
    for (name = p; is_token_char(*p); p++)
      ;
    name_end = p;
    while (is_ws(*p))
      p++;
    if (*p == '=') {
      for (p++; is_ws(*p); p++)
        ;
      for (val = p; is_token_char(*p); p++)
        ;
    }
    val_end = p;
    if (name_end - name == 3 && g_ascii_strncasecmp(name, "alg", 3) == 0) {
      g_autofree char *v = val != NULL ? g_strndup(val, val_end - val) : NULL;
      if (!ident_alg_from_string(v, alg)) {
        g_autofree char *shown = g_strescape(v != NULL ? v : "", NULL);
        g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_ALGORITHM,
                    "Identity-Info names alg \"%.40s\"; only rsa-sha256 and rsa-sha1 are taken",
                    shown);
        return FALSE;
      }
    }
  }
  return TRUE;
}

/* The signature inside Identity: "<base64>", whitespace from folding removed. */
static GBytes *
identity_signature(const char *value, GError **error)
{
  gsize len = value != NULL ? strlen(value) : 0;
  g_autoptr(GString) b64 = NULL;
  guchar *raw;
  gsize raw_len;

  if (value == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE, "no Identity header");
    return NULL;
  }
  if (len < 2 || value[0] != '"' || value[len - 1] != '"') {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE,
                "Identity is not a quoted string");
    return NULL;
  }
  b64 = g_string_sized_new(len);
  for (gsize i = 1; i + 1 < len; i++) {
    char c = value[i];
    if (is_ws(c))
      continue;
    if (!g_ascii_isalnum(c) && c != '+' && c != '/' && c != '=') {
      g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE, "Identity is not base64");
      return NULL;
    }
    g_string_append_c(b64, c);
  }
  if (b64->len == 0 || b64->len % 4 != 0) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE, "Identity is not base64");
    return NULL;
  }
  raw = g_base64_decode(b64->str, &raw_len);
  return g_bytes_new_take(raw, raw_len);
}

/* The host of a sip: or sips: URI. */
static char *
uri_host(const char *uri)
{
  const char *p, *end, *at, *h, *h_end;

  if (g_ascii_strncasecmp(uri, "sip:", 4) == 0)
    p = uri + 4;
  else if (g_ascii_strncasecmp(uri, "sips:", 5) == 0)
    p = uri + 5;
  else
    return NULL;
  end = p + strcspn(p, ";?");
  h = p;
  for (at = p; at < end; at++)
    if (*at == '@')
      h = at + 1;
  if (*h == '[') {
    h_end = memchr(h, ']', end - h);
    if (h_end == NULL)
      return NULL;
    h_end++;
  } else {
    h_end = memchr(h, ':', end - h);
    if (h_end == NULL)
      h_end = end;
  }
  return h_end > h ? g_strndup(h, h_end - h) : NULL;
}

static gboolean
check_certificate(IdentCert *cert, const IdentMsg *m, gint64 now, GError **error)
{
  g_autofree char *from = NULL, *host = NULL, *shown = NULL;
  g_auto(GStrv) names = NULL;

  if (now < ident_cert_get_not_before(cert) || now > ident_cert_get_not_after(cert)) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE,
                "the signer's certificate is not valid now");
    return FALSE;
  }
  /* The digest-string was built, so From has an addr-spec. */
  from = addr_spec("From", m->from, FALSE, NULL);
  host = from != NULL ? uri_host(from) : NULL;
  if (host == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE,
                "From is not a sip: or sips: URI with a host");
    return FALSE;
  }
  names = ident_cert_dup_dns_names(cert);
  for (guint i = 0; names != NULL && names[i] != NULL; i++)
    if (g_ascii_strcasecmp(names[i], host) == 0)
      return TRUE;
  shown = g_strescape(host, NULL);
  g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE,
              "the certificate's subjectAltName dNSName (or CN) does not name the From host "
              "\"%.100s\"",
              shown);
  return FALSE;
}

gboolean
ident_verify_message(const guint8 *msg, gsize len, const guint8 *cert_der, gsize cert_len,
                     gint64 now, guint window, IdentAlg *alg, GError **error)
{
  g_auto(IdentMsg) m = {0};
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(GBytes) digest = NULL, sig = NULL;
  g_auto(gnutls_pubkey_t) pub = NULL;
  gnutls_datum_t der = {(unsigned char *)cert_der, (unsigned int)cert_len};
  gnutls_datum_t data, sigd;
  IdentAlg a;
  gint64 date;
  GError *local = NULL;
  int rc;

  g_return_val_if_fail(msg != NULL || len == 0, FALSE);
  g_return_val_if_fail(cert_der != NULL || cert_len == 0, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  cert = ident_cert_new_from_data(cert_der, cert_len, &local);
  if (cert == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE,
                "the signer's certificate: %s", local->message);
    g_error_free(local);
    return FALSE;
  }
  if (!ident_msg_parse(msg, len, &m, error))
    return FALSE;
  if (!info_alg(m.identity_info, &a, error))
    return FALSE;
  if (alg != NULL)
    *alg = a;
  sig = identity_signature(m.identity, error);
  if (sig == NULL)
    return FALSE;
  if (m.date == NULL) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE, "no Date header");
    return FALSE;
  }
  digest = digest_string(msg, &m, m.date, error);
  if (digest == NULL)
    return FALSE;

  rc = gnutls_pubkey_init(&pub);
  if (rc < 0) {
    pub = NULL;
  } else {
    /* ident_cert_new_from_data() took PEM too; the public key needs DER. */
    GBytes *d = ident_cert_get_der(cert);
    der.data = (unsigned char *)g_bytes_get_data(d, NULL);
    der.size = (unsigned int)g_bytes_get_size(d);
    rc = gnutls_pubkey_import_x509_raw(pub, &der, GNUTLS_X509_FMT_DER, 0);
  }
  if (rc < 0) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CRYPTO,
                "cannot read the certificate's public key: %s", gnutls_strerror(rc));
    return FALSE;
  }
  if (gnutls_pubkey_get_pk_algorithm(pub, NULL) != GNUTLS_PK_RSA) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE,
                "the certificate's key is not RSA");
    return FALSE;
  }
  data.data = (unsigned char *)g_bytes_get_data(digest, NULL);
  data.size = (unsigned int)g_bytes_get_size(digest);
  sigd.data = (unsigned char *)g_bytes_get_data(sig, NULL);
  sigd.size = (unsigned int)g_bytes_get_size(sig);
  rc = gnutls_pubkey_verify_data2(
      pub, a == IDENT_ALG_RSA_SHA1 ? GNUTLS_SIGN_RSA_SHA1 : GNUTLS_SIGN_RSA_SHA256,
      a == IDENT_ALG_RSA_SHA1 ? GNUTLS_VERIFY_ALLOW_SIGN_WITH_SHA1 : 0, &data, &sigd);
  if (rc < 0) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE,
                "the Identity signature (%s) does not match the message", ident_alg_to_string(a));
    return FALSE;
  }

  if (!ident_date_parse(m.date, &date)) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE,
                "Date is not in RFC 1123 form (Www, DD Mmm YYYY HH:MM:SS GMT)");
    return FALSE;
  }
  if (date < now - (gint64)window || date > now + (gint64)window) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE,
                "Date is %" G_GINT64_FORMAT " s %s now, outside the %u s window",
                date < now ? now - date : date - now, date < now ? "before" : "after", window);
    return FALSE;
  }
  return check_certificate(cert, &m, now, error);
}

/* ---- Signing pool ------------------------------------------------------------
 * Each order key has a queue of its jobs in submission order. A worker signs
 * and marks its job done; whoever finishes the job at the head of a queue
 * schedules a delivery on the job's context, and the delivery hands out
 * done jobs from the head, one at a time, until it meets one not yet done.
 * The shared state lives in a reference-counted core so that a delivery
 * already scheduled when the pool is freed finds it marked dead.
 *
 * Deliveries to the context that made the pool go through one source of
 * the pool's: a worker adds the key to a list and wakes that source only
 * when it is not already due, so a fan-out of thousands of signed messages
 * costs one wake-up per loop iteration instead of one idle source (and one
 * wake-up) per message. Other contexts get an idle source per delivery. */

typedef struct {
  gatomicrefcount ref;
  GMutex lock;
  GHashTable *keys; /* &KeyQueue.key -> KeyQueue */
  guint pending;
  gboolean dead;
  /* The batched delivery to the pool's own context. */
  GMainContext *home;
  GSource *home_source;
  GArray *ready;  /* guint64 keys whose head is done; under lock */
  GArray *taking; /* the batch being delivered; home context only */
  gboolean armed; /* home_source is due; under lock */
} PoolCore;

typedef struct {
  GSource source;
  PoolCore *core; /* a reference */
} HomeSource;

typedef struct {
  guint64 key;
  GQueue jobs; /* SignJob, oldest first */
} KeyQueue;

typedef struct {
  gatomicrefcount ref;
  PoolCore *core; /* no reference: the pool outlives its workers */
  guint64 key;
  /* Read by the worker only. */
  IdentSigner *signer;
  IdentAlg alg;
  char *url;
  gint64 now;
  GBytes *msg;
  /* Under core->lock. */
  gboolean done, cancelled;
  GBytes *result;
  GError *error;
  /* Used on the submitting context only. */
  GMainContext *context;
  IdentSignDoneCb callback;
  void *user_data;
  GDestroyNotify destroy;
} SignJob;

/* GLib threads of our own with one queue, rather than a GThreadPool: its
 * threads cannot be joined, so a freed pool would leave threads still
 * exiting (and valgrind reporting their TLS). */
struct _IdentSignPool {
  GAsyncQueue *queue; /* SignJob, or the pool itself to stop a thread */
  GPtrArray *threads; /* GThread */
  guint n_threads;
  PoolCore *core;
};

static PoolCore *
pool_core_ref(PoolCore *core)
{
  g_atomic_ref_count_inc(&core->ref);
  return core;
}

static void
key_queue_free(gpointer data)
{
  KeyQueue *kq = data;
  /* Only ever freed empty: jobs are taken out first. */
  g_warn_if_fail(g_queue_is_empty(&kq->jobs));
  g_free(kq);
}

static void
pool_core_unref(PoolCore *core)
{
  if (!g_atomic_ref_count_dec(&core->ref))
    return;
  g_hash_table_unref(core->keys);
  g_mutex_clear(&core->lock);
  g_array_unref(core->ready);
  g_array_unref(core->taking);
  if (core->home != NULL)
    g_main_context_unref(core->home);
  g_free(core);
}

static SignJob *
sign_job_ref(SignJob *job)
{
  g_atomic_ref_count_inc(&job->ref);
  return job;
}

static void
sign_job_unref(SignJob *job)
{
  if (!g_atomic_ref_count_dec(&job->ref))
    return;
  g_clear_pointer(&job->signer, ident_signer_unref);
  g_clear_pointer(&job->msg, g_bytes_unref);
  g_clear_pointer(&job->result, g_bytes_unref);
  g_clear_error(&job->error);
  g_free(job->url);
  g_main_context_unref(job->context);
  g_free(job);
}

/* The user's side of a job that will not be delivered. */
static void
sign_job_drop(SignJob *job)
{
  if (job->destroy != NULL)
    job->destroy(job->user_data);
  job->destroy = NULL;
  sign_job_unref(job);
}

typedef struct {
  PoolCore *core;
  guint64 key;
} Delivery;

static void
delivery_free(gpointer data)
{
  Delivery *d = data;
  pool_core_unref(d->core);
  g_free(d);
}

/* Hands out the done jobs at the head of @key's queue, in order. */
static void
deliver_key(PoolCore *core, guint64 key)
{
  /* One job per turn: a callback may cancel its own key or free the pool. */
  for (;;) {
    SignJob *job = NULL;
    KeyQueue *kq;

    g_mutex_lock(&core->lock);
    kq = core->dead ? NULL : g_hash_table_lookup(core->keys, &key);
    if (kq != NULL) {
      SignJob *head = g_queue_peek_head(&kq->jobs);
      if (head != NULL && head->done) {
        job = g_queue_pop_head(&kq->jobs);
        core->pending--;
        if (g_queue_is_empty(&kq->jobs))
          g_hash_table_remove(core->keys, &key);
      }
    }
    g_mutex_unlock(&core->lock);
    if (job == NULL)
      break;
    job->callback(job->result, job->error, job->user_data);
    sign_job_drop(job);
  }
}

static gboolean
deliver_cb(gpointer data)
{
  Delivery *d = data;

  deliver_key(d->core, d->key);
  return G_SOURCE_REMOVE;
}

static gboolean
home_source_dispatch(GSource *source, GSourceFunc callback, gpointer user_data)
{
  PoolCore *core = ((HomeSource *)source)->core;
  GArray *batch;

  /* Before taking the list: a worker that adds a key after the swap finds
   * armed FALSE and makes the source due again. */
  g_source_set_ready_time(source, -1);
  g_mutex_lock(&core->lock);
  batch = core->ready;
  core->ready = core->taking;
  core->taking = batch;
  core->armed = FALSE;
  g_mutex_unlock(&core->lock);
  for (guint i = 0; i < batch->len; i++)
    deliver_key(core, g_array_index(batch, guint64, i));
  g_array_set_size(batch, 0);
  return G_SOURCE_CONTINUE;
}

static void
home_source_finalize(GSource *source)
{
  pool_core_unref(((HomeSource *)source)->core);
}

static GSourceFuncs home_source_funcs = {
    .dispatch = home_source_dispatch,
    .finalize = home_source_finalize,
};

static void
schedule_delivery(SignJob *job)
{
  PoolCore *core = job->core;
  Delivery *d;
  GSource *src;

  if (job->context == core->home) {
    gboolean wake;

    g_mutex_lock(&core->lock);
    g_array_append_val(core->ready, job->key);
    wake = !core->armed;
    core->armed = TRUE;
    g_mutex_unlock(&core->lock);
    /* Thread-safe; wakes the context. The pool frees the source only after
     * joining the workers. */
    if (wake)
      g_source_set_ready_time(core->home_source, 0);
    return;
  }
  d = g_new0(Delivery, 1);
  src = g_idle_source_new();

  d->core = pool_core_ref(job->core);
  d->key = job->key;
  g_source_set_priority(src, G_PRIORITY_DEFAULT);
  g_source_set_callback(src, deliver_cb, d, delivery_free);
  g_source_set_static_name(src, "ident-sign-delivery");
  g_source_attach(src, job->context);
  g_source_unref(src);
}

static void
pool_sign(SignJob *job)
{
  PoolCore *core = job->core;
  GBytes *result = NULL;
  GError *error = NULL;
  gboolean cancelled, head;
  KeyQueue *kq;

  g_mutex_lock(&core->lock);
  cancelled = job->cancelled;
  g_mutex_unlock(&core->lock);

  if (!cancelled)
    result =
        ident_sign_message(job->signer, job->alg, job->url, job->now,
                           g_bytes_get_data(job->msg, NULL), g_bytes_get_size(job->msg), &error);
  /* The message and the signer are no longer needed; let them go early. */
  g_clear_pointer(&job->msg, g_bytes_unref);
  g_clear_pointer(&job->signer, ident_signer_unref);

  g_mutex_lock(&core->lock);
  job->result = result;
  job->error = error;
  job->done = TRUE;
  kq = job->cancelled ? NULL : g_hash_table_lookup(core->keys, &job->key);
  head = kq != NULL && g_queue_peek_head(&kq->jobs) == job;
  g_mutex_unlock(&core->lock);

  if (head)
    schedule_delivery(job);
  sign_job_unref(job);
}

static gpointer
pool_thread(gpointer data)
{
  IdentSignPool *pool = data;

  for (;;) {
    gpointer item = g_async_queue_pop(pool->queue);
    if (item == pool)
      return NULL;
    pool_sign(item);
  }
}

IdentSignPool *
ident_sign_pool_new(guint threads, GError **error)
{
  g_autoptr(IdentSignPool) pool = g_new0(IdentSignPool, 1);

  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  pool->n_threads = threads != 0 ? threads : (guint)g_get_num_processors();
  pool->core = g_new0(PoolCore, 1);
  g_atomic_ref_count_init(&pool->core->ref);
  g_mutex_init(&pool->core->lock);
  pool->core->keys = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, key_queue_free);
  pool->core->ready = g_array_new(FALSE, FALSE, sizeof(guint64));
  pool->core->taking = g_array_new(FALSE, FALSE, sizeof(guint64));
  pool->core->home = g_main_context_ref_thread_default();
  pool->core->home_source = g_source_new(&home_source_funcs, sizeof(HomeSource));
  ((HomeSource *)pool->core->home_source)->core = pool_core_ref(pool->core);
  g_source_set_static_name(pool->core->home_source, "ident-sign-delivery");
  g_source_attach(pool->core->home_source, pool->core->home);
  pool->queue = g_async_queue_new();
  pool->threads = g_ptr_array_new();
  for (guint i = 0; i < pool->n_threads; i++) {
    g_autofree char *name = g_strdup_printf("ident-sign-%u", i);
    GThread *t = g_thread_try_new(name, pool_thread, pool, error);
    if (t == NULL) {
      g_prefix_error(error, "signing pool: ");
      return NULL;
    }
    g_ptr_array_add(pool->threads, t);
  }
  return g_steal_pointer(&pool);
}

guint
ident_sign_pool_get_threads(IdentSignPool *pool)
{
  g_return_val_if_fail(pool != NULL, 0);
  return pool->n_threads;
}

/* Takes the jobs of @kq out, marks them cancelled and returns them. Called
 * with the lock held. */
static GList *
take_jobs(PoolCore *core, KeyQueue *kq)
{
  GList *jobs = kq->jobs.head;

  for (GList *l = jobs; l != NULL; l = l->next) {
    ((SignJob *)l->data)->cancelled = TRUE;
    core->pending--;
  }
  kq->jobs.head = kq->jobs.tail = NULL;
  kq->jobs.length = 0;
  return jobs;
}

void
ident_sign_pool_free(IdentSignPool *pool)
{
  GList *jobs = NULL;

  if (pool == NULL)
    return;
  if (pool->core != NULL) {
    GHashTableIter it;
    gpointer value;

    g_mutex_lock(&pool->core->lock);
    pool->core->dead = TRUE;
    g_hash_table_iter_init(&it, pool->core->keys);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
      jobs = g_list_concat(take_jobs(pool->core, value), jobs);
      g_hash_table_iter_remove(&it);
    }
    g_mutex_unlock(&pool->core->lock);
    g_list_free_full(jobs, (GDestroyNotify)sign_job_drop);
  }
  /* Queued jobs are all cancelled now and finish at once; the stop marks
   * queue up behind them. Joining waits for the jobs being signed, which
   * still point at the core. */
  if (pool->threads != NULL) {
    for (guint i = 0; i < pool->threads->len; i++)
      g_async_queue_push(pool->queue, pool);
    for (guint i = 0; i < pool->threads->len; i++)
      g_thread_join(pool->threads->pdata[i]);
    g_ptr_array_free(pool->threads, TRUE);
  }
  if (pool->queue != NULL)
    g_async_queue_unref(pool->queue);
  if (pool->core != NULL) {
    /* No worker is left to touch it; its finalize drops its core ref. */
    if (pool->core->home_source != NULL) {
      g_source_destroy(pool->core->home_source);
      g_source_unref(pool->core->home_source);
    }
    pool_core_unref(pool->core);
  }
  g_free(pool);
}

void
ident_sign_pool_submit(IdentSignPool *pool, guint64 order_key, IdentSigner *signer, IdentAlg alg,
                       const char *info_url, gint64 now, GBytes *msg, IdentSignDoneCb callback,
                       void *user_data, GDestroyNotify destroy)
{
  SignJob *job;
  KeyQueue *kq;

  g_return_if_fail(pool != NULL);
  g_return_if_fail(signer != NULL);
  g_return_if_fail(msg != NULL);
  g_return_if_fail(callback != NULL);

  job = g_new0(SignJob, 1);
  g_atomic_ref_count_init(&job->ref);
  job->core = pool->core;
  job->key = order_key;
  job->signer = ident_signer_ref(signer);
  job->alg = alg;
  job->url = g_strdup(info_url);
  job->now = now;
  job->msg = g_bytes_ref(msg);
  job->context = g_main_context_ref_thread_default();
  job->callback = callback;
  job->user_data = user_data;
  job->destroy = destroy;

  g_mutex_lock(&pool->core->lock);
  kq = g_hash_table_lookup(pool->core->keys, &order_key);
  if (kq == NULL) {
    kq = g_new0(KeyQueue, 1);
    kq->key = order_key;
    g_queue_init(&kq->jobs);
    g_hash_table_insert(pool->core->keys, &kq->key, kq);
  }
  g_queue_push_tail(&kq->jobs, job); /* the queue's reference */
  pool->core->pending++;
  g_mutex_unlock(&pool->core->lock);

  /* The threads' reference. */
  g_async_queue_push(pool->queue, sign_job_ref(job));
}

guint
ident_sign_pool_cancel(IdentSignPool *pool, guint64 order_key)
{
  GList *jobs = NULL;
  guint n;
  KeyQueue *kq;

  g_return_val_if_fail(pool != NULL, 0);

  g_mutex_lock(&pool->core->lock);
  kq = g_hash_table_lookup(pool->core->keys, &order_key);
  if (kq != NULL) {
    jobs = take_jobs(pool->core, kq);
    g_hash_table_remove(pool->core->keys, &order_key);
  }
  g_mutex_unlock(&pool->core->lock);
  n = g_list_length(jobs);
  g_list_free_full(jobs, (GDestroyNotify)sign_job_drop);
  return n;
}

guint
ident_sign_pool_get_pending(IdentSignPool *pool)
{
  guint n;

  g_return_val_if_fail(pool != NULL, 0);
  g_mutex_lock(&pool->core->lock);
  n = pool->core->pending;
  g_mutex_unlock(&pool->core->lock);
  return n;
}

guint
ident_sign_pool_get_pending_for(IdentSignPool *pool, guint64 order_key)
{
  KeyQueue *kq;
  guint n;

  g_return_val_if_fail(pool != NULL, 0);
  g_mutex_lock(&pool->core->lock);
  kq = g_hash_table_lookup(pool->core->keys, &order_key);
  n = kq != NULL ? kq->jobs.length : 0;
  g_mutex_unlock(&pool->core->lock);
  return n;
}
