/* server/sipwire: SIP framing on a stream and the edge's header rewriting.
 *
 * Everything here reads bytes from the public Internet, so the rules are:
 * never read past a buffer, never allocate more than the input (bounded by
 * max_message in the framer), and stay linear in the input size. The edge
 * re-serializes every message it relays, so nua only ever sees the canonical
 * form produced here (CRLF line ends, unfolded headers, exact
 * Content-Length): ambiguous input (bare CR, NUL in a header) is rejected
 * instead of being passed on for Sofia to interpret differently. */
#define G_LOG_DOMAIN "sipcred-sipwire"

#include "server/sipwire.h"

#include <string.h>

/* clang-format off */
G_DEFINE_QUARK(sipwire-error-quark, sipwire_error)
/* clang-format on */

#define IS_WS(c) ((c) == ' ' || (c) == '\t')

/* ---- Small character helpers ------------------------------------------ */

static gboolean
is_token_char(guchar c)
{
  return g_ascii_isalnum(c) || (c != '\0' && strchr("-.!%*_+`'~", c) != NULL);
}

static gboolean
is_token(const char *s, gsize n)
{
  if (n == 0)
    return FALSE;
  for (gsize i = 0; i < n; i++)
    if (!is_token_char((guchar)s[i]))
      return FALSE;
  return TRUE;
}

static gboolean
is_alnum_string(const char *s)
{
  if (s == NULL || *s == '\0')
    return FALSE;
  for (; *s != '\0'; s++)
    if (!g_ascii_isalnum(*s))
      return FALSE;
  return TRUE;
}

/* Values we put on the wire ourselves must not be able to break a line. */
static gboolean
is_safe_value(const char *s)
{
  return s != NULL && strpbrk(s, "\r\n") == NULL;
}

static char *
strndup_trimmed(const char *s, gsize n)
{
  while (n > 0 && IS_WS(*s)) {
    s++;
    n--;
  }
  while (n > 0 && IS_WS(s[n - 1]))
    n--;
  return g_strndup(s, n);
}

static char *
random_alnum(guint n)
{
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  char *s = g_malloc(n + 1);
  for (guint i = 0; i < n; i++)
    s[i] = alphabet[g_random_int_range(0, (gint32)(sizeof alphabet - 1))];
  s[n] = '\0';
  return s;
}

static const char *
skip_ws(const char *p)
{
  while (IS_WS(*p))
    p++;
  return p;
}

static const char *
scan_token(const char *p)
{
  const char *q = p;
  while (is_token_char((guchar)*q))
    q++;
  return q == p ? NULL : q;
}

/* Hosts compare case-insensitively, IPv6 references with or without []. */
static gboolean
host_equal(const char *a, const char *b)
{
  if (a == NULL || b == NULL)
    return FALSE;
  gsize la = strlen(a), lb = strlen(b);
  if (la >= 2 && a[0] == '[' && a[la - 1] == ']') {
    a++;
    la -= 2;
  }
  if (lb >= 2 && b[0] == '[' && b[lb - 1] == ']') {
    b++;
    lb -= 2;
  }
  return la == lb && g_ascii_strncasecmp(a, b, la) == 0;
}

/* ---- Header names ------------------------------------------------------ */

static const char *const compact_forms[26] = {
    ['b' - 'a'] = "Referred-By",
    ['c' - 'a'] = "Content-Type",
    ['e' - 'a'] = "Content-Encoding",
    ['f' - 'a'] = "From",
    ['i' - 'a'] = "Call-ID",
    ['k' - 'a'] = "Supported",
    ['l' - 'a'] = "Content-Length",
    ['m' - 'a'] = "Contact",
    ['n' - 'a'] = "Identity-Info",
    ['o' - 'a'] = "Event",
    ['r' - 'a'] = "Refer-To",
    ['s' - 'a'] = "Subject",
    ['t' - 'a'] = "To",
    ['u' - 'a'] = "Allow-Events",
    ['v' - 'a'] = "Via",
    ['x' - 'a'] = "Session-Expires",
    ['y' - 'a'] = "Identity",
};

static const char *
name_expand(const char *name)
{
  if (name[0] != '\0' && name[1] == '\0' && g_ascii_isalpha(name[0])) {
    const char *full = compact_forms[g_ascii_tolower(name[0]) - 'a'];
    if (full != NULL)
      return full;
  }
  return name;
}

static gboolean
name_equal(const char *a, const char *b)
{
  return g_ascii_strcasecmp(name_expand(a), name_expand(b)) == 0;
}

static gboolean
is_list_header(const char *name)
{
  static const char *const lists[] = {
      "Via",       "Route",   "Record-Route",  "Contact",      "Accept",      "Allow",
      "Supported", "Require", "Proxy-Require", "Allow-Events", "Unsupported",
  };
  const char *full = name_expand(name);
  for (gsize i = 0; i < G_N_ELEMENTS(lists); i++)
    if (g_ascii_strcasecmp(full, lists[i]) == 0)
      return TRUE;
  return FALSE;
}

/* ---- Lines and header blocks ------------------------------------------- */

typedef struct {
  const guint8 *data;
  gsize len;
  gsize pos;
} LineReader;

/* The next line without its LF and the CR right before it. */
static gboolean
line_next(LineReader *r, const guint8 **line, gsize *line_len)
{
  if (r->pos >= r->len)
    return FALSE;
  const guint8 *start = r->data + r->pos;
  gsize avail = r->len - r->pos;
  const guint8 *nl = memchr(start, '\n', avail);
  gsize n = nl != NULL ? (gsize)(nl - start) : avail;
  r->pos += nl != NULL ? n + 1 : n;
  if (n > 0 && start[n - 1] == '\r')
    n--;
  *line = start;
  *line_len = n;
  return TRUE;
}

/* NUL would truncate the value and a bare CR may end a line for another
 * parser: either lets a header mean different things to us and to nua. */
static gboolean
line_has_bad_bytes(const guint8 *line, gsize n)
{
  return memchr(line, '\0', n) != NULL || memchr(line, '\r', n) != NULL;
}

/* Finds the empty line ending a header block (LF or CRLF line ends).
 * Searches from @from; on success *@block_len is the length including the
 * empty line. Otherwise *@resume tells where the next search can start, so
 * a message arriving byte by byte is scanned once, not once per byte. */
static gboolean
find_header_end(const guint8 *d, gsize len, gsize from, gsize *block_len, gsize *resume)
{
  gsize i = from;
  while (i < len) {
    const guint8 *nl = memchr(d + i, '\n', len - i);
    if (nl == NULL) {
      *resume = len;
      return FALSE;
    }
    i = (gsize)(nl - d);
    if (i + 1 >= len)
      break;
    if (d[i + 1] == '\n') {
      *block_len = i + 2;
      return TRUE;
    }
    if (d[i + 1] == '\r') {
      if (i + 2 >= len)
        break;
      if (d[i + 2] == '\n') {
        *block_len = i + 3;
        return TRUE;
      }
    }
    i++;
  }
  *resume = i;
  return FALSE;
}

static void
value_append_piece(GString *value, const guint8 *p, gsize n)
{
  while (n > 0 && IS_WS(*p)) {
    p++;
    n--;
  }
  while (n > 0 && IS_WS(p[n - 1]))
    n--;
  if (n == 0)
    return;
  if (value->len > 0)
    g_string_append_c(value, ' ');
  g_string_append_len(value, (const char *)p, (gssize)n);
}

typedef enum { HDR_END, HDR_OK, HDR_BAD } HdrResult;

/* Reads one logical header (with its continuation lines, unfolded). A bad
 * header is still consumed whole, so a caller may skip it. */
static HdrResult
header_next(LineReader *r, GString *name, GString *value, const char **why)
{
  const guint8 *line;
  gsize n;

  if (!line_next(r, &line, &n) || n == 0)
    return HDR_END;

  g_string_truncate(name, 0);
  g_string_truncate(value, 0);
  *why = NULL;

  if (line_has_bad_bytes(line, n))
    *why = "control character in a header";
  if (IS_WS(line[0])) {
    *why = "continuation line without a header";
  } else {
    const guint8 *colon = memchr(line, ':', n);
    if (colon == NULL) {
      *why = "header line without a colon";
    } else {
      gsize nlen = (gsize)(colon - line);
      while (nlen > 0 && IS_WS(line[nlen - 1]))
        nlen--;
      if (!is_token((const char *)line, nlen))
        *why = "invalid header name";
      g_string_append_len(name, (const char *)line, (gssize)nlen);
      value_append_piece(value, colon + 1, n - (gsize)(colon + 1 - line));
    }
  }

  while (r->pos < r->len && IS_WS(r->data[r->pos])) {
    line_next(r, &line, &n);
    if (line_has_bad_bytes(line, n))
      *why = "control character in a header";
    value_append_piece(value, line, n);
  }
  return *why != NULL ? HDR_BAD : HDR_OK;
}

typedef enum { CL_OK, CL_INVALID, CL_TOO_BIG } ClResult;

/* Content-Length is 1*DIGIT; anything else (sign, list, junk) is invalid. */
static ClResult
content_length_parse(const char *value, gsize limit, gsize *out)
{
  gsize v = 0;
  gboolean too_big = FALSE;
  if (*value == '\0')
    return CL_INVALID;
  for (const char *p = value; *p != '\0'; p++) {
    if (!g_ascii_isdigit(*p))
      return CL_INVALID;
    if (too_big)
      continue; /* keep checking the syntax, the size is settled */
    gsize d = (gsize)(*p - '0');
    if (v > (G_MAXSIZE - d) / 10 || v * 10 + d > limit)
      too_big = TRUE;
    else
      v = v * 10 + d;
  }
  if (too_big)
    return CL_TOO_BIG;
  *out = v;
  return CL_OK;
}

/* ---- Framer ------------------------------------------------------------ */

typedef enum {
  FRAMER_IDLE,
  FRAMER_HEADERS,
  FRAMER_BODY,
  FRAMER_FAILED,
} FramerState;

struct _SipwireFramer {
  GByteArray *buf;
  gsize start;      /* first byte not yet returned */
  gsize scan;       /* header-end search resumes at start + scan */
  gsize header_len; /* FRAMER_BODY: header block, including the empty line */
  gsize body_len;   /* FRAMER_BODY: Content-Length */
  gsize max;
  gsize peak; /* largest buf->len since buf was allocated */
  FramerState state;
  GError *error;       /* FRAMER_FAILED: why */
  GBytes *failed_head; /* FRAMER_FAILED: header block of the message, if complete */
};

SipwireFramer *
sipwire_framer_new(gsize max_message)
{
  g_return_val_if_fail(max_message > 0, NULL);
  SipwireFramer *f = g_new0(SipwireFramer, 1);
  f->buf = g_byte_array_new();
  f->max = max_message;
  f->state = FRAMER_IDLE;
  return f;
}

void
sipwire_framer_free(SipwireFramer *framer)
{
  if (framer == NULL)
    return;
  g_byte_array_unref(framer->buf);
  g_clear_error(&framer->error);
  g_clear_pointer(&framer->failed_head, g_bytes_unref);
  g_free(framer);
}

void
sipwire_framer_push(SipwireFramer *framer, const guint8 *data, gsize len)
{
  g_return_if_fail(framer != NULL);
  g_return_if_fail(data != NULL || len == 0);
  /* Once framing is lost nothing more will be read: don't keep it. */
  if (framer->state == FRAMER_FAILED || len == 0)
    return;
  while (len > 0) {
    guint chunk = (guint)MIN(len, (gsize)G_MAXUINT / 2);
    g_byte_array_append(framer->buf, data, chunk);
    data += chunk;
    len -= chunk;
  }
  framer->peak = MAX(framer->peak, framer->buf->len);
}

gsize
sipwire_framer_get_pending(SipwireFramer *framer)
{
  g_return_val_if_fail(framer != NULL, 0);
  return framer->buf->len - framer->start;
}

GBytes *
sipwire_framer_peek_pending(SipwireFramer *framer)
{
  g_return_val_if_fail(framer != NULL, NULL);
  gsize n = framer->buf->len - framer->start;
  return n > 0 ? g_bytes_new(framer->buf->data + framer->start, n) : NULL;
}

GBytes *
sipwire_framer_get_failed_head(SipwireFramer *framer)
{
  g_return_val_if_fail(framer != NULL, NULL);
  return framer->failed_head != NULL ? g_bytes_ref(framer->failed_head) : NULL;
}

/* Drops consumed bytes, amortized: copying only when most of the buffer is
 * consumed keeps many pipelined messages in one push linear. */
static void
framer_compact(SipwireFramer *f)
{
  if (f->start == f->buf->len) {
    /* An idle flow should not keep the room its largest message needed:
     * there may be thousands of flows. */
    if (f->peak > 16384) {
      g_byte_array_unref(f->buf);
      f->buf = g_byte_array_new();
      f->peak = 0;
    } else {
      g_byte_array_set_size(f->buf, 0);
    }
    f->start = 0;
  } else if (f->start >= 4096 && f->start >= f->buf->len / 2) {
    g_byte_array_remove_range(f->buf, 0, (guint)f->start);
    f->start = 0;
  }
}

static SipwireFrameResult
framer_fail(SipwireFramer *f, GError *error, GError **out_error)
{
  f->state = FRAMER_FAILED;
  f->error = error;
  g_byte_array_unref(f->buf);
  f->buf = g_byte_array_new();
  f->peak = 0;
  f->start = 0;
  if (out_error != NULL)
    *out_error = g_error_copy(error);
  return SIPWIRE_FRAME_ERROR;
}

/* The message's Content-Length, checked against the size limit. */
static gboolean
framer_content_length(SipwireFramer *f, const guint8 *d, gsize header_len, gsize *cl,
                      GError **error)
{
  LineReader r = {d, header_len, 0};
  const guint8 *line;
  gsize n;
  g_autoptr(GString) name = g_string_new(NULL);
  g_autoptr(GString) value = g_string_new(NULL);
  const char *why;
  gboolean seen = FALSE;
  HdrResult hr;

  line_next(&r, &line, &n); /* start line */
  while ((hr = header_next(&r, name, value, &why)) != HDR_END) {
    /* A broken header line is the parser's business (400), not framing. */
    if (hr == HDR_BAD || !name_equal(name->str, "Content-Length"))
      continue;
    if (seen) {
      g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_FRAMING, "duplicate Content-Length");
      return FALSE;
    }
    seen = TRUE;
    switch (content_length_parse(value->str, f->max - header_len, cl)) {
    case CL_OK:
      break;
    case CL_INVALID:
      g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_FRAMING, "invalid Content-Length");
      return FALSE;
    case CL_TOO_BIG:
      g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_TOO_BIG,
                  "Content-Length over the %" G_GSIZE_FORMAT " byte limit", f->max);
      return FALSE;
    }
  }
  if (!seen) {
    g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_FRAMING,
                "no Content-Length on a stream transport");
    return FALSE;
  }
  return TRUE;
}

SipwireFrameResult
sipwire_framer_next(SipwireFramer *framer, GBytes **out, GError **error)
{
  g_return_val_if_fail(framer != NULL, SIPWIRE_FRAME_ERROR);
  g_return_val_if_fail(out != NULL && *out == NULL, SIPWIRE_FRAME_ERROR);
  g_return_val_if_fail(error == NULL || *error == NULL, SIPWIRE_FRAME_ERROR);

  SipwireFramer *f = framer;
  for (;;) {
    gsize avail = f->buf->len - f->start;
    /* An empty GByteArray may have no storage at all. */
    const guint8 *d = f->buf->len > 0 ? f->buf->data + f->start : NULL;

    switch (f->state) {
    case FRAMER_FAILED:
      if (error != NULL)
        *error = g_error_copy(f->error);
      return SIPWIRE_FRAME_ERROR;

    case FRAMER_IDLE:
      if (avail == 0) {
        framer_compact(f);
        return SIPWIRE_FRAME_NEED_MORE;
      }
      if (d[0] == '\n') { /* tolerate a stray LF between messages */
        f->start++;
        continue;
      }
      if (d[0] == '\r') {
        if (avail < 2)
          return SIPWIRE_FRAME_NEED_MORE;
        if (d[1] == '\n') {
          if (avail < 3)
            return SIPWIRE_FRAME_NEED_MORE;
          if (d[2] == '\r') {
            if (avail < 4)
              return SIPWIRE_FRAME_NEED_MORE;
            if (d[3] == '\n') { /* RFC 5626 section 3.5.1 keep-alive */
              f->start += 4;
              framer_compact(f);
              return SIPWIRE_FRAME_PING;
            }
          }
          f->start += 2;
          continue;
        }
      }
      f->state = FRAMER_HEADERS;
      f->scan = 0;
      continue;

    case FRAMER_HEADERS: {
      gsize header_len, cl = 0;
      GError *local = NULL;
      if (!find_header_end(d, avail, f->scan, &header_len, &f->scan)) {
        if (avail > f->max)
          return framer_fail(f,
                             g_error_new(SIPWIRE_ERROR, SIPWIRE_ERROR_TOO_BIG,
                                         "header block over the %" G_GSIZE_FORMAT " byte limit",
                                         f->max),
                             error);
        return SIPWIRE_FRAME_NEED_MORE;
      }
      if (header_len > f->max)
        return framer_fail(f,
                           g_error_new(SIPWIRE_ERROR, SIPWIRE_ERROR_TOO_BIG,
                                       "header block over the %" G_GSIZE_FORMAT " byte limit",
                                       f->max),
                           error);
      if (!framer_content_length(f, d, header_len, &cl, &local)) {
        /* Where this message ends is unknown, but its headers are whole:
         * enough for the caller to tell the client why it closes. */
        f->failed_head = g_bytes_new(d, header_len);
        return framer_fail(f, local, error);
      }
      f->header_len = header_len;
      f->body_len = cl;
      f->state = FRAMER_BODY;
      continue;
    }

    case FRAMER_BODY: {
      gsize total = f->header_len + f->body_len;
      if (avail < total)
        return SIPWIRE_FRAME_NEED_MORE;
      *out = g_bytes_new(d, total);
      f->start += total;
      f->state = FRAMER_IDLE;
      framer_compact(f);
      return SIPWIRE_FRAME_MESSAGE;
    }
    }
    g_return_val_if_reached(SIPWIRE_FRAME_ERROR);
  }
}

/* ---- Messages ---------------------------------------------------------- */

typedef struct {
  char *name; /* as written (or as given by the caller) */
  char *value;
} Header;

static void
header_free(gpointer p)
{
  Header *h = p;
  g_free(h->name);
  g_free(h->value);
  g_free(h);
}

static Header *
header_new(const char *name, const char *value)
{
  Header *h = g_new(Header, 1);
  h->name = g_strdup(name);
  h->value = g_strdup(value);
  return h;
}

struct _SipwireMsg {
  char *method; /* NULL for a response */
  char *uri;
  guint status;
  char *reason;
  GPtrArray *headers; /* Header*, in message order */
  GBytes *body;
  /* Split first values of list headers handed out by get_first(); they live
   * until the message next changes, like pointers into the headers do. */
  GHashTable *first_cache;
};

void
sipwire_msg_free(SipwireMsg *msg)
{
  if (msg == NULL)
    return;
  g_free(msg->method);
  g_free(msg->uri);
  g_free(msg->reason);
  g_ptr_array_unref(msg->headers);
  g_bytes_unref(msg->body);
  g_hash_table_unref(msg->first_cache);
  g_free(msg);
}

static void
msg_changed(SipwireMsg *msg)
{
  g_hash_table_remove_all(msg->first_cache);
}

static gboolean
set_error_malformed(GError **error, const char *why)
{
  g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED, "%s", why);
  return FALSE;
}

/* SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT; only 2.0 is ours. */
static gboolean
check_version(const char *s, gsize n, GError **error)
{
  if (n == 7 && g_ascii_strncasecmp(s, "SIP/2.0", 7) == 0)
    return TRUE;
  if (n >= 4 && g_ascii_strncasecmp(s, "SIP/", 4) == 0) {
    gsize i = 4, digits1 = 0, digits2 = 0;
    while (i < n && g_ascii_isdigit(s[i])) {
      i++;
      digits1++;
    }
    if (i < n && s[i] == '.') {
      i++;
      while (i < n && g_ascii_isdigit(s[i])) {
        i++;
        digits2++;
      }
      if (i == n && digits1 > 0 && digits2 > 0) {
        g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_VERSION, "SIP version not supported");
        return FALSE;
      }
    }
  }
  return set_error_malformed(error, "invalid SIP version");
}

/* A Request-URI: scheme ":" and then no whitespace, controls or <>". */
static gboolean
is_request_uri(const char *s, gsize n)
{
  gsize i = 0;
  if (n == 0 || !g_ascii_isalpha(s[0]))
    return FALSE;
  while (i < n && (g_ascii_isalnum(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
    i++;
  if (i >= n || s[i] != ':')
    return FALSE;
  for (i++; i < n; i++) {
    guchar c = (guchar)s[i];
    if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>' || c == '"')
      return FALSE;
  }
  return TRUE;
}

static gboolean
parse_start_line(SipwireMsg *msg, const char *s, gsize n, GError **error)
{
  if (n >= 4 && g_ascii_strncasecmp(s, "SIP/", 4) == 0) {
    /* Status-Line = SIP-Version SP Status-Code SP Reason-Phrase */
    const char *sp = memchr(s, ' ', n);
    gsize vlen = sp != NULL ? (gsize)(sp - s) : n;
    if (!check_version(s, vlen, error))
      return FALSE;
    if (sp == NULL)
      return set_error_malformed(error, "status line without a status code");
    const char *code = sp + 1;
    gsize rest = n - vlen - 1;
    if (rest < 3 || !g_ascii_isdigit(code[0]) || !g_ascii_isdigit(code[1]) ||
        !g_ascii_isdigit(code[2]) || (rest > 3 && code[3] != ' '))
      return set_error_malformed(error, "invalid status code");
    guint status = (guint)((code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0'));
    if (status < 100 || status > 699)
      return set_error_malformed(error, "status code out of range");
    msg->status = status;
    msg->reason = rest > 4 ? g_strndup(code + 4, rest - 4) : g_strdup("");
    return TRUE;
  }

  /* Request-Line = Method SP Request-URI SP SIP-Version (RFC 3261 25.1):
   * exactly two single spaces. Each way of getting the whitespace wrong
   * (RFC 4475 lwsstart, trws, lwsruri) is MALFORMED with its own reason;
   * only a well-formed version other than 2.0 (badvers) is VERSION. */
  const char *sp1 = memchr(s, ' ', n);
  if (sp1 == NULL)
    return set_error_malformed(error, "invalid start line");
  gsize mlen = (gsize)(sp1 - s);
  if (!is_token(s, mlen))
    return set_error_malformed(error, "invalid method");
  if (IS_WS(s[n - 1]))
    return set_error_malformed(error, "whitespace at the end of the request line");
  const char *last = sp1;
  for (const char *p = s + n - 1; p > sp1; p--) {
    if (*p == ' ') {
      last = p;
      break;
    }
  }
  if (last == sp1)
    return set_error_malformed(error, "request line without a SIP version");
  const char *uri = sp1 + 1;
  gsize ulen = (gsize)(last - uri);
  if (ulen == 0 || IS_WS(uri[0]) || IS_WS(uri[ulen - 1]))
    return set_error_malformed(error, "more than one space between request line elements");
  if (!check_version(last + 1, (gsize)(s + n - last - 1), error))
    return FALSE;
  if (memchr(uri, ' ', ulen) != NULL || memchr(uri, '\t', ulen) != NULL)
    return set_error_malformed(error, "whitespace in the Request-URI");
  if (uri[0] == '<')
    return set_error_malformed(error, "Request-URI in angle brackets");
  if (!is_request_uri(uri, ulen))
    return set_error_malformed(error, "invalid Request-URI");
  msg->method = g_strndup(s, mlen);
  msg->uri = g_strndup(uri, ulen);
  return TRUE;
}

static SipwireMsg *
msg_new_empty(void)
{
  SipwireMsg *msg = g_new0(SipwireMsg, 1);
  msg->headers = g_ptr_array_new_with_free_func(header_free);
  msg->first_cache = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  return msg;
}

SipwireMsg *
sipwire_msg_parse(const guint8 *data, gsize len, GError **error)
{
  g_return_val_if_fail(data != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  /* RFC 3261 7.5: CRLFs before the start line are ignored. */
  while (len > 0 && (data[0] == '\r' || data[0] == '\n')) {
    data++;
    len--;
  }

  gsize header_len, unused;
  if (!find_header_end(data, len, 0, &header_len, &unused)) {
    set_error_malformed(error, "no empty line after the headers");
    return NULL;
  }

  g_autoptr(SipwireMsg) msg = msg_new_empty();
  LineReader r = {data, header_len, 0};
  const guint8 *line;
  gsize n;

  line_next(&r, &line, &n);
  if (line_has_bad_bytes(line, n)) {
    set_error_malformed(error, "control character in the start line");
    return NULL;
  }
  if (!parse_start_line(msg, (const char *)line, n, error))
    return NULL;

  g_autoptr(GString) name = g_string_new(NULL);
  g_autoptr(GString) value = g_string_new(NULL);
  const char *why;
  HdrResult hr;
  const char *cl_value = NULL;
  while ((hr = header_next(&r, name, value, &why)) != HDR_END) {
    if (hr == HDR_BAD) {
      set_error_malformed(error, why);
      return NULL;
    }
    /* Each header costs nua and us work on every relay: bound their number
     * rather than let one message of small headers cost thousands. */
    if (msg->headers->len >= SIPWIRE_MAX_HEADERS) {
      set_error_malformed(error, "Too many header fields");
      return NULL;
    }
    Header *h = header_new(name->str, value->str);
    g_ptr_array_add(msg->headers, h);
    if (name_equal(h->name, "Content-Length")) {
      if (cl_value != NULL) {
        set_error_malformed(error, "duplicate Content-Length");
        return NULL;
      }
      cl_value = h->value;
    }
  }

  gsize body_avail = len - header_len;
  gsize body_len = body_avail;
  if (cl_value != NULL) {
    gsize cl;
    if (content_length_parse(cl_value, body_avail, &cl) != CL_OK) {
      set_error_malformed(error, "Content-Length invalid or larger than the body");
      return NULL;
    }
    body_len = cl; /* RFC 3261 18.3: octets beyond it are not the message's */
  }
  msg->body = g_bytes_new(data + header_len, body_len);
  return g_steal_pointer(&msg);
}

gboolean
sipwire_msg_is_request(const SipwireMsg *msg)
{
  g_return_val_if_fail(msg != NULL, FALSE);
  return msg->method != NULL;
}

const char *
sipwire_msg_get_method(const SipwireMsg *msg)
{
  g_return_val_if_fail(msg != NULL, NULL);
  return msg->method;
}

const char *
sipwire_msg_get_request_uri(const SipwireMsg *msg)
{
  g_return_val_if_fail(msg != NULL, NULL);
  return msg->uri;
}

void
sipwire_msg_set_request_uri(SipwireMsg *msg, const char *uri)
{
  g_return_if_fail(msg != NULL && msg->method != NULL);
  g_return_if_fail(uri != NULL && is_request_uri(uri, strlen(uri)));
  g_free(msg->uri);
  msg->uri = g_strdup(uri);
}

guint
sipwire_msg_get_status(const SipwireMsg *msg)
{
  g_return_val_if_fail(msg != NULL, 0);
  return msg->status;
}

/* Tracks quoted strings and <> in a header value. Splitting, parameters and
 * the edge's checks all use these same rules, so they agree on every input:
 * a disagreement is where a spoofed parameter could hide. */
typedef struct {
  gboolean in_quote;
  gboolean in_angle;
} Scanner;

/* Looks at **pp (moving *pp over the escaped character of a quoted-pair)
 * and returns TRUE when it lies outside quotes and <>, so the caller may
 * take it as a separator. */
static gboolean
scanner_step(Scanner *sc, const char **pp)
{
  const char *p = *pp;
  if (sc->in_angle) {
    if (*p == '>')
      sc->in_angle = FALSE;
    return FALSE;
  }
  if (sc->in_quote) {
    if (*p == '\\' && p[1] != '\0')
      *pp = p + 1;
    else if (*p == '"')
      sc->in_quote = FALSE;
    return FALSE;
  }
  if (*p == '"') {
    sc->in_quote = TRUE;
    return FALSE;
  }
  if (*p == '<') {
    sc->in_angle = TRUE;
    return FALSE;
  }
  return TRUE;
}

/* Splits at commas outside quoted strings and <>; drops empty elements. */
static void
split_list(const char *value, GPtrArray *out)
{
  Scanner sc = {FALSE, FALSE};
  const char *start = value, *p;

  for (p = value; *p != '\0'; p++) {
    if (scanner_step(&sc, &p) && *p == ',') {
      char *v = strndup_trimmed(start, (gsize)(p - start));
      if (*v != '\0')
        g_ptr_array_add(out, v);
      else
        g_free(v);
      start = p + 1;
    }
  }
  char *v = strndup_trimmed(start, (gsize)(p - start));
  if (*v != '\0')
    g_ptr_array_add(out, v);
  else
    g_free(v);
}

GPtrArray *
sipwire_msg_get_values(const SipwireMsg *msg, const char *name)
{
  g_return_val_if_fail(msg != NULL && name != NULL, NULL);
  GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
  gboolean list = is_list_header(name);
  for (guint i = 0; i < msg->headers->len; i++) {
    const Header *h = msg->headers->pdata[i];
    if (!name_equal(h->name, name))
      continue;
    if (list)
      split_list(h->value, out);
    else
      g_ptr_array_add(out, g_strdup(h->value));
  }
  return out;
}

const char *
sipwire_msg_get_first(const SipwireMsg *msg, const char *name)
{
  g_return_val_if_fail(msg != NULL && name != NULL, NULL);
  gboolean list = is_list_header(name);
  g_autofree char *key = g_ascii_strdown(name_expand(name), -1);
  const char *cached = g_hash_table_lookup(msg->first_cache, key);
  if (cached != NULL)
    return cached;

  for (guint i = 0; i < msg->headers->len; i++) {
    const Header *h = msg->headers->pdata[i];
    if (!name_equal(h->name, name))
      continue;
    if (!list)
      return h->value;
    g_autoptr(GPtrArray) parts = g_ptr_array_new_with_free_func(g_free);
    split_list(h->value, parts);
    if (parts->len == 0)
      continue;
    char *first = g_ptr_array_steal_index(parts, 0);
    /* The cache is not part of the message's value: updating it through a
     * const pointer is fine. */
    g_hash_table_insert(((SipwireMsg *)msg)->first_cache, g_steal_pointer(&key), first);
    return first;
  }
  return NULL;
}

void
sipwire_msg_set_values(SipwireMsg *msg, const char *name, GPtrArray *values)
{
  g_return_if_fail(msg != NULL && name != NULL && is_token(name, strlen(name)));
  g_return_if_fail(values != NULL);
  for (guint i = 0; i < values->len; i++)
    g_return_if_fail(is_safe_value(values->pdata[i]));

  /* Rebuilt in one pass: inserting one by one would be quadratic in the
   * number of Via lines a peer can send. */
  GPtrArray *old = msg->headers;
  GPtrArray *headers = g_ptr_array_new_full(old->len + values->len, header_free);
  gboolean inserted = FALSE;
  for (guint i = 0; i < old->len; i++) {
    Header *h = old->pdata[i];
    if (name_equal(h->name, name)) {
      if (!inserted) {
        for (guint j = 0; j < values->len; j++)
          g_ptr_array_add(headers, header_new(name, values->pdata[j]));
        inserted = TRUE;
      }
      header_free(h);
    } else {
      g_ptr_array_add(headers, h);
    }
    old->pdata[i] = NULL;
  }
  if (!inserted) {
    /* None before: right after the start line. */
    GPtrArray *rest = headers;
    headers = g_ptr_array_new_full(rest->len + values->len, header_free);
    for (guint j = 0; j < values->len; j++)
      g_ptr_array_add(headers, header_new(name, values->pdata[j]));
    for (guint i = 0; i < rest->len; i++)
      g_ptr_array_add(headers, rest->pdata[i]);
    g_ptr_array_set_free_func(rest, NULL);
    g_ptr_array_unref(rest);
  }
  g_ptr_array_set_free_func(old, NULL);
  g_ptr_array_unref(old);
  msg->headers = headers;
  msg_changed(msg);
}

void
sipwire_msg_prepend_value(SipwireMsg *msg, const char *name, const char *value)
{
  g_return_if_fail(msg != NULL && name != NULL && is_token(name, strlen(name)));
  g_return_if_fail(is_safe_value(value));
  guint i;
  for (i = 0; i < msg->headers->len; i++)
    if (name_equal(((Header *)msg->headers->pdata[i])->name, name))
      break;
  if (i == msg->headers->len)
    i = 0;
  g_ptr_array_insert(msg->headers, (gint)i, header_new(name, value));
  msg_changed(msg);
}

void
sipwire_msg_append_header(SipwireMsg *msg, const char *name, const char *value)
{
  g_return_if_fail(msg != NULL && name != NULL && is_token(name, strlen(name)));
  g_return_if_fail(is_safe_value(value));
  g_ptr_array_add(msg->headers, header_new(name, value));
  msg_changed(msg);
}

void
sipwire_msg_remove_header(SipwireMsg *msg, const char *name)
{
  g_return_if_fail(msg != NULL && name != NULL);
  g_autoptr(GPtrArray) none = g_ptr_array_new();
  sipwire_msg_set_values(msg, name, none);
}

GBytes *
sipwire_msg_get_body(const SipwireMsg *msg)
{
  g_return_val_if_fail(msg != NULL, NULL);
  return g_bytes_ref(msg->body);
}

GBytes *
sipwire_msg_serialize(const SipwireMsg *msg)
{
  g_return_val_if_fail(msg != NULL, NULL);
  gsize body_len = g_bytes_get_size(msg->body);
  GString *s = g_string_sized_new(256 + body_len);

  if (msg->method != NULL)
    g_string_append_printf(s, "%s %s SIP/2.0\r\n", msg->method, msg->uri);
  else
    g_string_append_printf(s, "SIP/2.0 %03u %s\r\n", msg->status, msg->reason);

  gboolean cl_written = FALSE;
  for (guint i = 0; i < msg->headers->len; i++) {
    const Header *h = msg->headers->pdata[i];
    if (name_equal(h->name, "Content-Length")) {
      if (!cl_written)
        g_string_append_printf(s, "Content-Length: %" G_GSIZE_FORMAT "\r\n", body_len);
      cl_written = TRUE;
      continue;
    }
    g_string_append(s, h->name);
    g_string_append(s, ": ");
    g_string_append(s, h->value);
    g_string_append(s, "\r\n");
  }
  if (!cl_written)
    g_string_append_printf(s, "Content-Length: %" G_GSIZE_FORMAT "\r\n", body_len);
  g_string_append(s, "\r\n");
  g_string_append_len(s, g_bytes_get_data(msg->body, NULL), (gssize)body_len);
  return g_string_free_to_bytes(s);
}

/* ---- Header parameters ------------------------------------------------- */

/* Ends an in-place filter that kept the first @len elements. A peer decides
 * how many elements there are, so filters move each one once instead of
 * removing them one by one. The free function sees only NULLs here. */
static void
ptr_array_truncate(GPtrArray *a, guint len)
{
  for (guint i = len; i < a->len; i++)
    a->pdata[i] = NULL;
  g_ptr_array_set_size(a, (gint)len);
}

typedef struct {
  char *name;
  char *value; /* NULL for a flag parameter */
} Param;

static void
param_free(gpointer p)
{
  Param *param = p;
  if (param == NULL)
    return;
  g_free(param->name);
  g_free(param->value);
  g_free(param);
}

/* Where the ;params of a header value start: after the '>' of a name-addr,
 * else at the first ';' outside quotes (after the userinfo of a bare URI,
 * whose user part may hold ';'). Returns strlen(v) when there are none. */
static gsize
params_offset(const char *v)
{
  Scanner sc = {FALSE, FALSE};
  const char *from = v;
  const char *p;

  /* A Via ("SIP/2.0/TCP ...") is no name-addr: a '<' in it must not move
   * where its params start. */
  const char *t = scan_token(v);
  gboolean is_via = t != NULL && *skip_ws(t) == '/';

  for (p = v; *p != '\0' && !is_via; p++) {
    scanner_step(&sc, &p);
    if (sc.in_angle) {
      const char *gt = strchr(p, '>');
      if (gt == NULL)
        return strlen(v);
      from = gt + 1;
      break;
    }
  }
  if (from == v) {
    /* Only a bare URI has a user part; in a Via an '@' must not hide the
     * params written before it. */
    const char *q = v;
    while (g_ascii_isalnum(*q) || *q == '+' || *q == '-' || *q == '.')
      q++;
    const char *at = strchr(v, '@');
    if (q != v && g_ascii_isalpha(v[0]) && *q == ':' && at != NULL)
      from = at + 1;
  }

  sc.in_quote = sc.in_angle = FALSE;
  for (p = from; *p != '\0'; p++)
    if (scanner_step(&sc, &p) && *p == ';')
      return (gsize)(p - v);
  return (gsize)(p - v);
}

/* Splits the parameters of @v into Param*s; returns where they start. */
static gsize
params_parse(const char *v, GPtrArray *out)
{
  gsize off = params_offset(v);
  const char *p = v + off, *start;
  Scanner sc = {FALSE, FALSE};

  if (*p == '\0')
    return off;
  start = ++p; /* skip the first ';' */
  for (;; p++) {
    if (*p != '\0' && !(scanner_step(&sc, &p) && *p == ';'))
      continue;
    const char *eq = memchr(start, '=', (gsize)(p - start));
    Param *param = g_new0(Param, 1);
    if (eq != NULL) {
      param->name = strndup_trimmed(start, (gsize)(eq - start));
      param->value = strndup_trimmed(eq + 1, (gsize)(p - eq - 1));
    } else {
      param->name = strndup_trimmed(start, (gsize)(p - start));
    }
    if (*param->name == '\0')
      param_free(param);
    else
      g_ptr_array_add(out, param);
    if (*p == '\0')
      break;
    start = p + 1;
  }
  return off;
}

static char *
params_build(const char *v, gsize off, GPtrArray *params)
{
  GString *s = g_string_new_len(v, (gssize)off);
  while (s->len > 0 && IS_WS(s->str[s->len - 1]))
    g_string_truncate(s, s->len - 1);
  for (guint i = 0; i < params->len; i++) {
    const Param *param = params->pdata[i];
    g_string_append_c(s, ';');
    g_string_append(s, param->name);
    if (param->value != NULL) {
      g_string_append_c(s, '=');
      g_string_append(s, param->value);
    }
  }
  return g_string_free(s, FALSE);
}

char *
sipwire_param_get(const char *header_value, const char *param)
{
  g_return_val_if_fail(header_value != NULL && param != NULL, NULL);
  g_autoptr(GPtrArray) params = g_ptr_array_new_with_free_func(param_free);
  params_parse(header_value, params);
  for (guint i = 0; i < params->len; i++) {
    const Param *p = params->pdata[i];
    if (g_ascii_strcasecmp(p->name, param) == 0)
      return g_strdup(p->value != NULL ? p->value : "");
  }
  return NULL;
}

char *
sipwire_param_remove(const char *header_value, const char *param)
{
  g_return_val_if_fail(header_value != NULL && param != NULL, NULL);
  g_autoptr(GPtrArray) params = g_ptr_array_new_with_free_func(param_free);
  gsize off = params_parse(header_value, params);
  guint kept = 0;
  for (guint i = 0; i < params->len; i++) {
    Param *p = params->pdata[i];
    if (g_ascii_strcasecmp(p->name, param) == 0)
      param_free(p);
    else
      params->pdata[kept++] = p;
  }
  if (kept == params->len)
    return g_strdup(header_value);
  ptr_array_truncate(params, kept);
  return params_build(header_value, off, params);
}

char *
sipwire_param_set(const char *header_value, const char *param, const char *value)
{
  g_return_val_if_fail(header_value != NULL && param != NULL, NULL);
  g_return_val_if_fail(is_token(param, strlen(param)), NULL);
  g_return_val_if_fail(value == NULL || is_safe_value(value), NULL);
  g_autoptr(GPtrArray) params = g_ptr_array_new_with_free_func(param_free);
  gsize off = params_parse(header_value, params);
  gboolean found = FALSE;
  guint kept = 0;
  for (guint i = 0; i < params->len; i++) {
    Param *p = params->pdata[i];
    if (g_ascii_strcasecmp(p->name, param) == 0) {
      if (found) {
        param_free(p);
        continue;
      }
      g_free(p->value);
      p->value = g_strdup(value);
      found = TRUE;
    }
    params->pdata[kept++] = p;
  }
  ptr_array_truncate(params, kept);
  if (!found) {
    Param *p = g_new0(Param, 1);
    p->name = g_strdup(param);
    p->value = g_strdup(value);
    g_ptr_array_add(params, p);
  }
  return params_build(header_value, off, params);
}

/* ---- Hosts, ports and URIs --------------------------------------------- */

/* host = hostname / IPv4address / IPv6reference, as written. */
static const char *
scan_host(const char *p)
{
  if (*p == '[') {
    const char *q = p + 1;
    while (g_ascii_isxdigit(*q) || *q == ':' || *q == '.')
      q++;
    if (*q != ']' || q == p + 1)
      return NULL;
    return q + 1;
  }
  const char *q = p;
  while (g_ascii_isalnum(*q) || *q == '-' || *q == '.' || *q == '_')
    q++;
  return q == p ? NULL : q;
}

/* port = 1*DIGIT, 1..65535. */
static const char *
scan_port(const char *p, guint16 *port)
{
  guint v = 0;
  const char *q = p;
  while (g_ascii_isdigit(*q) && q - p < 5)
    v = v * 10 + (guint)(*q++ - '0');
  if (q == p || g_ascii_isdigit(*q) || v == 0 || v > 65535)
    return NULL;
  *port = (guint16)v;
  return q;
}

gboolean
sipwire_via_get_sent_by(const char *via, char **host, guint16 *port)
{
  g_return_val_if_fail(via != NULL, FALSE);
  /* sent-protocol = protocol-name SLASH protocol-version SLASH transport,
   * with whitespace allowed around the slashes; then LWS and sent-by. */
  const char *p = skip_ws(via);
  for (int i = 0; i < 3; i++) {
    if ((p = scan_token(p)) == NULL)
      return FALSE;
    p = skip_ws(p);
    if (i < 2) {
      if (*p != '/')
        return FALSE;
      p = skip_ws(p + 1);
    }
  }
  if (p == via || !IS_WS(p[-1]))
    return FALSE;
  const char *h = p;
  const char *hend = scan_host(h);
  if (hend == NULL)
    return FALSE;
  guint16 v = 0;
  p = skip_ws(hend);
  if (*p == ':') {
    if ((p = scan_port(skip_ws(p + 1), &v)) == NULL)
      return FALSE;
    p = skip_ws(p);
  }
  if (*p != '\0' && *p != ';')
    return FALSE;
  if (host != NULL)
    *host = g_strndup(h, (gsize)(hend - h));
  if (port != NULL)
    *port = v;
  return TRUE;
}

/* The URI of a name-addr ("Name <uri>;params") or of a bare value. */
static char *
value_get_uri(const char *value)
{
  Scanner sc = {FALSE, FALSE};
  for (const char *p = value; *p != '\0'; p++) {
    scanner_step(&sc, &p);
    if (sc.in_angle) {
      const char *gt = strchr(p, '>');
      if (gt == NULL)
        return NULL;
      return strndup_trimmed(p + 1, (gsize)(gt - p - 1));
    }
  }
  return sc.in_quote ? NULL : g_strstrip(g_strdup(value));
}

typedef struct {
  char *scheme;
  char *user; /* NULL when absent */
  char *host;
  guint16 port;
} UriParts;

static void
uri_parts_clear(UriParts *u)
{
  g_clear_pointer(&u->scheme, g_free);
  g_clear_pointer(&u->user, g_free);
  g_clear_pointer(&u->host, g_free);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(UriParts, uri_parts_clear)

/* scheme ":" [ user [ ":" password ] "@" ] host [ ":" port ] [ ; ? ... ] */
static gboolean
uri_parse(const char *uri, UriParts *out)
{
  const char *p = uri;
  if (!g_ascii_isalpha(*p))
    return FALSE;
  while (g_ascii_isalnum(*p) || *p == '+' || *p == '-' || *p == '.')
    p++;
  if (*p != ':')
    return FALSE;
  const char *scheme_end = p++;
  const char *user = NULL, *user_end = NULL;
  /* The user part may hold ';' and '?', but '@' cannot appear after it. */
  const char *at = strchr(p, '@');
  if (at != NULL) {
    user = p;
    user_end = memchr(p, ':', (gsize)(at - p));
    if (user_end == NULL)
      user_end = at;
    p = at + 1;
  }
  const char *h = p;
  const char *hend = scan_host(h);
  if (hend == NULL)
    return FALSE;
  guint16 port = 0;
  p = hend;
  if (*p == ':' && (p = scan_port(p + 1, &port)) == NULL)
    return FALSE;
  if (*p != '\0' && *p != ';' && *p != '?')
    return FALSE;
  out->scheme = g_strndup(uri, (gsize)(scheme_end - uri));
  out->user = user != NULL && user_end > user ? g_strndup(user, (gsize)(user_end - user)) : NULL;
  out->host = g_strndup(h, (gsize)(hend - h));
  out->port = port;
  return TRUE;
}

gboolean
sipwire_nameaddr_get_host_port(const char *value, char **user, char **host, guint16 *port)
{
  g_return_val_if_fail(value != NULL, FALSE);
  g_autofree char *uri = value_get_uri(value);
  g_auto(UriParts) parts = {0};
  if (uri == NULL || !uri_parse(uri, &parts))
    return FALSE;
  if (user != NULL)
    *user = g_steal_pointer(&parts.user);
  if (host != NULL)
    *host = g_steal_pointer(&parts.host);
  if (port != NULL)
    *port = parts.port;
  return TRUE;
}

/* ---- Edge rewriting ---------------------------------------------------- */

static gboolean
ctx_is_valid(const SipwireRelayCtx *ctx)
{
  return ctx != NULL && is_alnum_string(ctx->flow_token) && ctx->internal_host != NULL &&
         is_safe_value(ctx->internal_host) && ctx->public_host != NULL &&
         is_safe_value(ctx->public_host) && ctx->peer_ip != NULL && is_safe_value(ctx->peer_ip);
}

static gboolean
ctx_is_served(const SipwireRelayCtx *ctx, const char *host)
{
  if (host_equal(host, ctx->public_host))
    return TRUE;
  for (const char *const *d = ctx->served_domains; d != NULL && *d != NULL; d++)
    if (host_equal(host, *d))
      return TRUE;
  return FALSE;
}

/* An address on the internal side: nua's listener or the edge's own, named
 * by the internal host or by a served name, as nua names itself in its Via
 * and Contact ("example.com:NUA_PORT"). An unwritten port is 5060 (the
 * default for TCP and UDP). */
static gboolean
ctx_is_internal(const SipwireRelayCtx *ctx, const char *host, guint16 port)
{
  guint16 p = port != 0 ? port : 5060;
  if (p != ctx->edge_internal_port && p != ctx->nua_port)
    return FALSE;
  return host_equal(host, ctx->internal_host) || ctx_is_served(ctx, host);
}

static gboolean
ctx_names_us(const SipwireRelayCtx *ctx, const char *host, guint16 port)
{
  return ctx_is_served(ctx, host) && (port == 0 || port == ctx->public_port);
}

/* Quotes and <> closed: otherwise where a value ends is a guess, and
 * nua's parser may guess differently from ours. */
static gboolean
value_is_balanced(const char *v)
{
  Scanner sc = {FALSE, FALSE};
  for (const char *p = v; *p != '\0'; p++)
    if (scanner_step(&sc, &p) && *p == '>')
      return FALSE;
  return !sc.in_quote && !sc.in_angle;
}

static gboolean
values_are_balanced(GPtrArray *values)
{
  for (guint i = 0; i < values->len; i++)
    if (!value_is_balanced(values->pdata[i]))
      return FALSE;
  return TRUE;
}

static GPtrArray *
str_array_new(void)
{
  return g_ptr_array_new_with_free_func(g_free);
}

#define RFC3261_COOKIE "z9hG4bK"

static void
checksum_add_field(GChecksum *sum, const char *field)
{
  /* NUL ends each field: header values never contain one (the parser
   * rejects it), so fields cannot run into each other. */
  if (field == NULL)
    field = "";
  g_checksum_update(sum, (const guchar *)field, (gssize)strlen(field) + 1);
}

/* "  0042 INVITE" -> "42"; NULL when there is no number. */
static char *
cseq_number(const char *cseq)
{
  if (cseq == NULL)
    return NULL;
  const char *p = skip_ws(cseq);
  const char *end = p;
  while (g_ascii_isdigit(*end))
    end++;
  if (end == p)
    return NULL;
  while (p + 1 < end && *p == '0')
    p++;
  return g_strndup(p, (gsize)(end - p));
}

/* The branch of the edge's Via on a client request (RFC 3261 16.11): the
 * same for the request, its retransmissions, its CANCEL and, for an INVITE,
 * the ACK to a non-2xx final response, so nua matches them to the INVITE's
 * transaction; different for every other client transaction. It hashes what
 * identifies the client's transaction (RFC 3261 17.2.3) and the flow token,
 * so two flows that happen to use the same branch never collide at nua and
 * clients cannot aim at another flow's transactions.
 *
 * With the magic cookie that is the client's branch and sent-by. Without it
 * (RFC 2543 clients) it is the Request-URI, From tag, Call-ID, CSeq number
 * and the whole top Via. 17.2.3 also lists the To tag, but for the ACK it
 * compares the To tag of the *response*, which a stateless edge does not
 * know: the INVITE carries none and the ACK the UAS's, so the To tag is left
 * out, or the ACK would never match its INVITE. Besides CANCEL and ACK, two
 * requests of a client that agree on all the rest are retransmissions. */
static char *
edge_branch_derive(const SipwireMsg *msg, const char *client_via, const SipwireRelayCtx *ctx)
{
  g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
  checksum_add_field(sum, "sipcred edge branch 1");
  checksum_add_field(sum, ctx->flow_token);
  g_autofree char *branch = sipwire_param_get(client_via, "branch");
  g_autofree char *host = NULL;
  guint16 port = 0;
  if (branch != NULL && g_str_has_prefix(branch, RFC3261_COOKIE) &&
      sipwire_via_get_sent_by(client_via, &host, &port)) {
    g_autofree char *host_lower = g_ascii_strdown(host, -1);
    g_autofree char *port_str = g_strdup_printf("%u", port);
    checksum_add_field(sum, "rfc3261");
    checksum_add_field(sum, branch);
    checksum_add_field(sum, host_lower);
    checksum_add_field(sum, port_str);
  } else {
    const char *from = sipwire_msg_get_first(msg, "From");
    g_autofree char *from_tag = from != NULL ? sipwire_param_get(from, "tag") : NULL;
    g_autofree char *cseq = cseq_number(sipwire_msg_get_first(msg, "CSeq"));
    checksum_add_field(sum, "rfc2543");
    checksum_add_field(sum, msg->uri);
    checksum_add_field(sum, from_tag);
    checksum_add_field(sum, sipwire_msg_get_first(msg, "Call-ID"));
    checksum_add_field(sum, cseq);
    checksum_add_field(sum, client_via);
  }
  /* 128 bits, as lower-case hex. */
  guint8 digest[32];
  gsize len = sizeof digest;
  g_checksum_get_digest(sum, digest, &len);
  GString *out = g_string_new(RFC3261_COOKIE);
  for (gsize i = 0; i < 16; i++)
    g_string_append_printf(out, "%02x", digest[i]);
  return g_string_free(out, FALSE);
}

/* Whether a Route/Record-Route value leads to the internal side, by its host
 * or by a maddr parameter (which overrides the host as the destination).
 * FALSE when the value cannot be read. */
static gboolean
route_read_internal(const SipwireRelayCtx *ctx, const char *value, gboolean *internal)
{
  g_autofree char *uri = value_get_uri(value);
  g_auto(UriParts) parts = {0};
  if (uri == NULL || !uri_parse(uri, &parts))
    return FALSE;
  *internal = ctx_is_internal(ctx, parts.host, parts.port);
  if (!*internal) {
    g_autofree char *maddr = sipwire_param_get(uri, "maddr");
    *internal = maddr != NULL && ctx_is_internal(ctx, maddr, parts.port);
  }
  return TRUE;
}

/* Route/Record-Route values without those naming an internal address.
 * A value we cannot read could hide one: FALSE then. */
static gboolean
routes_strip_internal(const SipwireRelayCtx *ctx, GPtrArray *values, GError **error)
{
  guint kept = 0;
  for (guint i = 0; i < values->len; i++) {
    gboolean internal = FALSE;
    if (!route_read_internal(ctx, values->pdata[i], &internal)) {
      g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED, "unreadable route");
      for (guint j = i; j < values->len; j++) /* still owned: the caller frees them */
        values->pdata[kept++] = values->pdata[j];
      ptr_array_truncate(values, kept);
      return FALSE;
    }
    if (internal)
      g_free(values->pdata[i]);
    else
      values->pdata[kept++] = values->pdata[i];
  }
  ptr_array_truncate(values, kept);
  return TRUE;
}

gboolean
sipwire_relay_request_in(SipwireMsg *msg, const SipwireRelayCtx *ctx, GError **error)
{
  g_return_val_if_fail(msg != NULL, FALSE);
  g_return_val_if_fail(ctx_is_valid(ctx), FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (msg->method == NULL)
    return set_error_malformed(error, "not a request");

  /* Everything is checked before anything changes, so a caller answering
   * an error still has the message as the client sent it. */
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  g_autoptr(GPtrArray) routes = sipwire_msg_get_values(msg, "Route");
  g_autoptr(GPtrArray) rrs = sipwire_msg_get_values(msg, "Record-Route");
  if (vias->len == 0)
    return set_error_malformed(error, "no Via");
  if (!values_are_balanced(vias) || !values_are_balanced(routes) || !values_are_balanced(rrs))
    return set_error_malformed(error, "unbalanced quotes or <> in Via or Route");
  for (guint i = 0; i < vias->len; i++)
    if (strpbrk(vias->pdata[i], "<>") != NULL)
      return set_error_malformed(error, "<> in a Via");
  g_autoptr(GPtrArray) kept = str_array_new();
  for (guint i = 0; i < vias->len; i++) {
    g_autofree char *host = NULL;
    guint16 port = 0;
    if (!sipwire_via_get_sent_by(vias->pdata[i], &host, &port))
      return set_error_malformed(error, "unreadable Via");
    if (!ctx_is_internal(ctx, host, port))
      g_ptr_array_add(kept, sipwire_param_remove(vias->pdata[i], "flow"));
  }
  if (kept->len == 0)
    return set_error_malformed(error, "no Via from the client");

  if (!routes_strip_internal(ctx, routes, error))
    return FALSE;
  guint ours = 0;
  while (ours < routes->len) {
    g_autofree char *host = NULL;
    guint16 port = 0;
    if (!sipwire_nameaddr_get_host_port(routes->pdata[ours], NULL, &host, &port) ||
        !ctx_names_us(ctx, host, port))
      break;
    ours++;
  }
  g_ptr_array_remove_range(routes, 0, ours);

  if (!routes_strip_internal(ctx, rrs, error))
    return FALSE;
  const char *m = msg->method;
  if (strcmp(m, "SUBSCRIBE") == 0 && ctx->subscribe_default_expires > 0 &&
      sipwire_msg_get_first(msg, "Expires") == NULL) {
    g_autofree char *expires = g_strdup_printf("%u", ctx->subscribe_default_expires);
    sipwire_msg_append_header(msg, "Expires", expires);
  }
  if (strcmp(m, "SUBSCRIBE") == 0 || strcmp(m, "INVITE") == 0 || strcmp(m, "REFER") == 0)
    g_ptr_array_insert(rrs, 0,
                       g_strdup_printf("<sip:%s@%s:%u;transport=tcp;lr>", ctx->flow_token,
                                       ctx->internal_host, ctx->edge_internal_port));

  /* From the client's Via as it came (minus flow params, which it cannot
   * have meant for us), before received/rport. */
  g_autofree char *branch = edge_branch_derive(msg, kept->pdata[0], ctx);

  /* RFC 3581: where the request really came from. */
  g_autofree char *port_str = g_strdup_printf("%u", ctx->peer_port);
  g_autofree char *top = sipwire_param_set(kept->pdata[0], "received", ctx->peer_ip);
  g_free(kept->pdata[0]);
  kept->pdata[0] = sipwire_param_set(top, "rport", port_str);

  g_ptr_array_insert(kept, 0,
                     g_strdup_printf("SIP/2.0/TCP %s:%u;branch=%s;flow=%s", ctx->internal_host,
                                     ctx->edge_internal_port, branch, ctx->flow_token));

  sipwire_msg_set_values(msg, "Via", kept);
  sipwire_msg_set_values(msg, "Route", routes);
  sipwire_msg_set_values(msg, "Record-Route", rrs);
  return TRUE;
}

/* nua's Contact names a served domain or the internal host with nua's
 * port and no user, bound to the loopback listener by maddr and/or
 * transport=tcp. Returns the public view
 * <sips:public_host:public_port> with the header params kept, or NULL for
 * any other Contact (a client's, "*"). */
static char *
contact_rewrite(const SipwireRelayCtx *ctx, const char *value)
{
  g_autofree char *uri = value_get_uri(value);
  g_auto(UriParts) parts = {0};
  if (uri == NULL || !uri_parse(uri, &parts))
    return NULL;
  if (!ctx_is_served(ctx, parts.host) && !host_equal(parts.host, ctx->internal_host))
    return NULL;
  /* nua's own Contact has no user and nua's port; a client's binding on
   * this host (a test on loopback) has a user or another port. */
  if (parts.user != NULL || parts.port != ctx->nua_port)
    return NULL;
  g_autofree char *maddr = sipwire_param_get(uri, "maddr");
  g_autofree char *transport = sipwire_param_get(uri, "transport");
  if (!host_equal(maddr, ctx->internal_host) &&
      (transport == NULL || g_ascii_strcasecmp(transport, "tcp") != 0))
    return NULL;

  g_autoptr(GPtrArray) params = g_ptr_array_new_with_free_func(param_free);
  params_parse(value, params);
  if (strchr(value, '<') == NULL) {
    /* Bare form: the params went with the URI; keep only header params. */
    guint kept = 0;
    for (guint i = 0; i < params->len; i++) {
      Param *p = params->pdata[i];
      if (g_ascii_strcasecmp(p->name, "maddr") == 0 ||
          g_ascii_strcasecmp(p->name, "transport") == 0 || g_ascii_strcasecmp(p->name, "lr") == 0)
        param_free(p);
      else
        params->pdata[kept++] = p;
    }
    ptr_array_truncate(params, kept);
  }
  g_autofree char *base = g_strdup_printf("<sips:%s:%u>", ctx->public_host, ctx->public_port);
  return params_build(base, strlen(base), params);
}

static void
contacts_rewrite(SipwireMsg *msg, const SipwireRelayCtx *ctx)
{
  g_autoptr(GPtrArray) contacts = sipwire_msg_get_values(msg, "Contact");
  gboolean changed = FALSE;
  for (guint i = 0; i < contacts->len; i++) {
    char *public = contact_rewrite(ctx, contacts->pdata[i]);
    if (public != NULL) {
      g_free(contacts->pdata[i]);
      contacts->pdata[i] = public;
      changed = TRUE;
    }
  }
  if (changed)
    sipwire_msg_set_values(msg, "Contact", contacts);
}

/* Route/Record-Route values naming an internal address never leave. */
static void
routes_remove_internal(SipwireMsg *msg, const SipwireRelayCtx *ctx, const char *name)
{
  g_autoptr(GPtrArray) values = sipwire_msg_get_values(msg, name);
  guint kept = 0;
  for (guint i = 0; i < values->len; i++) {
    gboolean internal = FALSE;
    if (route_read_internal(ctx, values->pdata[i], &internal) && internal)
      g_free(values->pdata[i]);
    else
      values->pdata[kept++] = values->pdata[i];
  }
  if (kept != values->len) {
    ptr_array_truncate(values, kept);
    sipwire_msg_set_values(msg, name, values);
  }
}

static gboolean
set_error_spoofed(GError **error, const char *why)
{
  g_set_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_SPOOFED, "%s", why);
  return FALSE;
}

gboolean
sipwire_msg_check_request_headers(const SipwireMsg *msg, GError **error)
{
  static const char *const once[] = {"Call-ID", "CSeq", "From", "To"};

  g_return_val_if_fail(msg != NULL, FALSE);
  for (guint i = 0; i < G_N_ELEMENTS(once); i++) {
    g_autoptr(GPtrArray) values = sipwire_msg_get_values(msg, once[i]);
    if (values->len != 1) {
      g_autofree char *why =
          g_strdup_printf("%s %s", values->len == 0 ? "no" : "more than one", once[i]);
      return set_error_malformed(error, why);
    }
    const char *v = values->pdata[0];
    if (v[strspn(v, " \t")] == '\0') {
      g_autofree char *why = g_strdup_printf("empty %s", once[i]);
      return set_error_malformed(error, why);
    }
  }
  g_autoptr(GPtrArray) mf = sipwire_msg_get_values(msg, "Max-Forwards");
  if (mf->len > 1)
    return set_error_malformed(error, "more than one Max-Forwards");
  /* "CSeq: 1*DIGIT LWS Method" */
  const char *cseq = sipwire_msg_get_first(msg, "CSeq");
  const char *p = cseq;
  while (*p == ' ' || *p == '\t')
    p++;
  const char *digits = p;
  while (g_ascii_isdigit(*p))
    p++;
  gboolean spaced = *p == ' ' || *p == '\t';
  while (*p == ' ' || *p == '\t')
    p++;
  if (p == digits || !spaced || *p == '\0')
    return set_error_malformed(error, "CSeq is not a number and a method");
  /* RFC 3261 8.1.1.5: the CSeq method matches the request's (also for ACK
   * and CANCEL, which carry their own). */
  gsize mlen = strcspn(p, " \t");
  if (p[mlen + strspn(p + mlen, " \t")] != '\0' || mlen != strlen(msg->method) ||
      strncmp(p, msg->method, mlen) != 0)
    return set_error_malformed(error, "CSeq method does not match the request method");
  return TRUE;
}

gboolean
sipwire_relay_response_out(SipwireMsg *msg, const SipwireRelayCtx *ctx, char **flow_token,
                           GError **error)
{
  g_return_val_if_fail(msg != NULL && flow_token != NULL, FALSE);
  g_return_val_if_fail(ctx != NULL && ctx->internal_host != NULL && ctx->public_host != NULL,
                       FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (msg->method != NULL)
    return set_error_malformed(error, "not a response");

  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  g_autofree char *host = NULL;
  guint16 port = 0;
  if (vias->len == 0 || !sipwire_via_get_sent_by(vias->pdata[0], &host, &port) ||
      !host_equal(host, ctx->internal_host) || port != ctx->edge_internal_port)
    return set_error_spoofed(error, "top Via is not the edge's");
  g_autofree char *token = sipwire_param_get(vias->pdata[0], "flow");
  if (!is_alnum_string(token))
    return set_error_spoofed(error, "top Via has no flow token");

  g_ptr_array_remove_index(vias, 0);
  sipwire_msg_set_values(msg, "Via", vias);
  routes_remove_internal(msg, ctx, "Record-Route");
  contacts_rewrite(msg, ctx);
  *flow_token = g_steal_pointer(&token);
  return TRUE;
}

gboolean
sipwire_relay_request_out(SipwireMsg *msg, const SipwireRelayCtx *ctx, char **flow_token,
                          char **saved_via, char **branch, GError **error)
{
  g_return_val_if_fail(msg != NULL && flow_token != NULL && saved_via != NULL && branch != NULL,
                       FALSE);
  g_return_val_if_fail(ctx != NULL && ctx->internal_host != NULL && ctx->public_host != NULL &&
                           is_safe_value(ctx->public_host),
                       FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (msg->method == NULL)
    return set_error_malformed(error, "not a request");

  g_autoptr(GPtrArray) routes = sipwire_msg_get_values(msg, "Route");
  g_autofree char *uri = routes->len > 0 ? value_get_uri(routes->pdata[0]) : NULL;
  g_auto(UriParts) parts = {0};
  if (uri == NULL || !uri_parse(uri, &parts) || g_ascii_strcasecmp(parts.scheme, "sip") != 0 ||
      !host_equal(parts.host, ctx->internal_host) || parts.port != ctx->edge_internal_port ||
      !is_alnum_string(parts.user))
    return set_error_spoofed(error, "no flow-token Route");

  /* nua is a user agent: its requests carry exactly its own Via. */
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  if (vias->len != 1)
    return set_error_malformed(error, "request from nua without exactly one Via");
  g_autofree char *nua_branch = sipwire_param_get(vias->pdata[0], "branch");
  if (nua_branch == NULL || *nua_branch == '\0' || !is_safe_value(nua_branch))
    return set_error_malformed(error, "nua's Via has no branch");

  g_ptr_array_remove_index(routes, 0);
  sipwire_msg_set_values(msg, "Route", routes);
  routes_remove_internal(msg, ctx, "Route");
  routes_remove_internal(msg, ctx, "Record-Route");

  g_autoptr(GPtrArray) public_via = str_array_new();
  g_ptr_array_add(public_via, g_strdup_printf("SIP/2.0/TLS %s:%u;branch=%s", ctx->public_host,
                                              ctx->public_port, nua_branch));
  *saved_via = g_strdup(vias->pdata[0]);
  sipwire_msg_set_values(msg, "Via", public_via);
  contacts_rewrite(msg, ctx);

  *flow_token = g_steal_pointer(&parts.user);
  *branch = g_steal_pointer(&nua_branch);
  return TRUE;
}

gboolean
sipwire_relay_response_in(SipwireMsg *msg, char **branch, GError **error)
{
  g_return_val_if_fail(msg != NULL && branch != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (msg->method != NULL)
    return set_error_malformed(error, "not a response");
  const char *top = sipwire_msg_get_first(msg, "Via");
  if (top == NULL)
    return set_error_malformed(error, "no Via");
  g_autofree char *b = sipwire_param_get(top, "branch");
  if (b == NULL || *b == '\0')
    return set_error_malformed(error, "top Via has no branch");
  *branch = g_steal_pointer(&b);
  return TRUE;
}

void
sipwire_relay_response_in_restore(SipwireMsg *msg, const char *saved_via)
{
  g_return_if_fail(msg != NULL && is_safe_value(saved_via));
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  if (vias->len == 0) {
    g_ptr_array_add(vias, g_strdup(saved_via));
  } else {
    g_free(vias->pdata[0]);
    vias->pdata[0] = g_strdup(saved_via);
  }
  sipwire_msg_set_values(msg, "Via", vias);
}

static GBytes *
build_response(const SipwireMsg *request, guint status, const char *phrase, gboolean partial)
{
  g_return_val_if_fail(request != NULL, NULL);
  g_return_val_if_fail(status >= 100 && status <= 699, NULL);
  g_return_val_if_fail(is_safe_value(phrase), NULL);

  if (request->method == NULL)
    return NULL;
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(request, "Via");
  const char *from = sipwire_msg_get_first(request, "From");
  const char *to = sipwire_msg_get_first(request, "To");
  const char *call_id = sipwire_msg_get_first(request, "Call-ID");
  const char *cseq = sipwire_msg_get_first(request, "CSeq");
  if (vias->len == 0 ||
      (!partial && (from == NULL || to == NULL || call_id == NULL || cseq == NULL)))
    return NULL;

  g_autofree char *tag = to != NULL ? sipwire_param_get(to, "tag") : NULL;
  g_autofree char *to_tagged = NULL;
  if (to != NULL && (tag == NULL || *tag == '\0')) {
    g_autofree char *new_tag = random_alnum(16);
    to_tagged = sipwire_param_set(to, "tag", new_tag);
    to = to_tagged;
  }

  GString *s = g_string_new(NULL);
  g_string_append_printf(s, "SIP/2.0 %u %s\r\n", status, phrase);
  for (guint i = 0; i < vias->len; i++)
    g_string_append_printf(s, "Via: %s\r\n", (const char *)vias->pdata[i]);
  const char *names[] = {"From", "To", "Call-ID", "CSeq"};
  const char *values[] = {from, to, call_id, cseq};
  for (guint i = 0; i < G_N_ELEMENTS(names); i++)
    if (values[i] != NULL)
      g_string_append_printf(s, "%s: %s\r\n", names[i], values[i]);
  g_string_append(s, "Content-Length: 0\r\n\r\n");
  return g_string_free_to_bytes(s);
}

GBytes *
sipwire_build_response(const SipwireMsg *request, guint status, const char *phrase)
{
  return build_response(request, status, phrase, FALSE);
}

GBytes *
sipwire_build_response_partial(const SipwireMsg *request, guint status, const char *phrase)
{
  return build_response(request, status, phrase, TRUE);
}

/* ---- Answers to requests that do not parse ------------------------------ */

gboolean
sipwire_method_is_known(const char *method)
{
  /* RFC 3261, 3262, 3265, 3311, 3428, 3515, 3903 and 6086. Methods are
   * case-sensitive (RFC 3261 7.1). */
  static const char *const known[] = {
      "INVITE",    "ACK",    "BYE",    "CANCEL",  "OPTIONS", "REGISTER", "PRACK",
      "SUBSCRIBE", "NOTIFY", "UPDATE", "MESSAGE", "REFER",   "PUBLISH",  "INFO",
  };
  if (method == NULL)
    return FALSE;
  for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
    if (strcmp(method, known[i]) == 0)
      return TRUE;
  return FALSE;
}

static void
raw_skip_crlf(const guint8 **data, gsize *len)
{
  while (*len > 0 && (**data == '\r' || **data == '\n')) {
    (*data)++;
    (*len)--;
  }
}

/* Length of the method token @data starts with, when a space follows it. */
static gsize
raw_method_len(const guint8 *data, gsize len)
{
  gsize i = 0;
  while (i < len && is_token_char(data[i]))
    i++;
  return i > 0 && i < len && data[i] == ' ' ? i : 0;
}

char *
sipwire_raw_get_method(const guint8 *data, gsize len)
{
  g_return_val_if_fail(data != NULL || len == 0, NULL);
  raw_skip_crlf(&data, &len);
  gsize n = raw_method_len(data, len);
  return n > 0 ? g_strndup((const char *)data, n) : NULL;
}

/* Like line_next(), but a last line without its LF is not returned: the
 * data may have been cut inside it. */
static gboolean
raw_line_next(LineReader *r, const guint8 **line, gsize *line_len)
{
  if (r->pos >= r->len || memchr(r->data + r->pos, '\n', r->len - r->pos) == NULL)
    return FALSE;
  return line_next(r, line, line_len);
}

#define RAW_IS_WS(c) ((c) == ' ' || (c) == '\t' || (c) == '\r')

/* Appends a piece of a (possibly folded) value, trimmed, with one space
 * between pieces. A bare CR becomes a space: it could end the line for the
 * client's parser. Every other byte is copied as it is. */
static void
raw_value_append(GByteArray *value, const guint8 *p, gsize n)
{
  while (n > 0 && RAW_IS_WS(*p)) {
    p++;
    n--;
  }
  while (n > 0 && RAW_IS_WS(p[n - 1]))
    n--;
  if (n == 0)
    return;
  if (value->len > 0)
    g_byte_array_append(value, (const guint8 *)" ", 1);
  guint start = value->len;
  g_byte_array_append(value, p, (guint)n);
  for (guint i = start; i < value->len; i++)
    if (value->data[i] == '\r')
      value->data[i] = ' ';
}

/* @to (no NUL) with a tag, as sipwire_build_response() writes it. */
static char *
to_with_tag(const char *to)
{
  g_autofree char *tag = sipwire_param_get(to, "tag");
  if (tag != NULL && *tag != '\0')
    return g_strdup(to);
  g_autofree char *new_tag = random_alnum(16);
  return sipwire_param_set(to, "tag", new_tag);
}

/* The same for a To value that may hold NUL bytes: they stand in as a
 * control byte the value does not contain, so the parameter rules are
 * exactly those of the C-string helpers, and go back afterwards. NULL in
 * the absurd case that the value holds every candidate byte. */
static GByteArray *
raw_to_with_tag(const GByteArray *to)
{
  guint8 stand_in = 0;
  if (memchr(to->data, '\0', to->len) != NULL) {
    for (guint8 c = 1; c < 0x20 && stand_in == 0; c++)
      if (c != '\t' && c != '\n' && c != '\r' && memchr(to->data, c, to->len) == NULL)
        stand_in = c;
    if (stand_in == 0)
      return NULL;
  }
  /* Not g_strndup(): it would stop at the first NUL. */
  g_autofree char *s = g_malloc((gsize)to->len + 1);
  memcpy(s, to->data, to->len);
  s[to->len] = '\0';
  for (guint i = 0; i < to->len; i++)
    if (s[i] == '\0')
      s[i] = (char)stand_in;
  g_autofree char *tagged = to_with_tag(s);
  gsize n = strlen(tagged);
  GByteArray *out = g_byte_array_sized_new((guint)n);
  g_byte_array_append(out, (const guint8 *)tagged, (guint)n);
  for (guint i = 0; stand_in != 0 && i < out->len; i++)
    if (out->data[i] == stand_in)
      out->data[i] = '\0';
  return out;
}

static void
byte_array_unref0(gpointer p)
{
  if (p != NULL)
    g_byte_array_unref(p);
}

static void
raw_append_header(GString *s, const char *name, const GByteArray *value)
{
  g_string_append(s, name);
  g_string_append(s, ": ");
  g_string_append_len(s, (const char *)value->data, (gssize)value->len);
  g_string_append(s, "\r\n");
}

GBytes *
sipwire_build_response_raw(const guint8 *data, gsize len, guint status, const char *phrase)
{
  g_return_val_if_fail(data != NULL || len == 0, NULL);
  g_return_val_if_fail(status >= 100 && status <= 699, NULL);
  g_return_val_if_fail(is_safe_value(phrase), NULL);

  raw_skip_crlf(&data, &len);
  if (raw_method_len(data, len) == 0)
    return NULL;

  enum { RAW_FROM, RAW_TO, RAW_CALL_ID, RAW_CSEQ, RAW_N };
  static const char *const names[RAW_N] = {"From", "To", "Call-ID", "CSeq"};
  GByteArray *one[RAW_N] = {NULL};
  g_autoptr(GPtrArray) vias = g_ptr_array_new_with_free_func(byte_array_unref0);
  GByteArray *cur = NULL; /* the value continuation lines belong to, if copied */

  LineReader r = {data, len, 0};
  const guint8 *line;
  gsize n;
  if (!raw_line_next(&r, &line, &n)) /* the start line */
    return NULL;
  while (raw_line_next(&r, &line, &n) && n > 0) {
    if (IS_WS(line[0])) {
      if (cur != NULL)
        raw_value_append(cur, line, n);
      continue;
    }
    cur = NULL;
    const guint8 *colon = memchr(line, ':', n);
    if (colon == NULL)
      continue;
    gsize nlen = (gsize)(colon - line);
    while (nlen > 0 && IS_WS(line[nlen - 1]))
      nlen--;
    if (!is_token((const char *)line, nlen))
      continue;
    g_autofree char *name = g_strndup((const char *)line, nlen);
    if (name_equal(name, "Via")) {
      cur = g_byte_array_new();
      g_ptr_array_add(vias, cur);
    } else {
      for (guint i = 0; i < RAW_N; i++) {
        if (name_equal(name, names[i])) {
          if (one[i] == NULL) /* only the first counts */
            cur = one[i] = g_byte_array_new();
          break;
        }
      }
    }
    if (cur != NULL)
      raw_value_append(cur, colon + 1, n - (gsize)(colon + 1 - line));
  }

  GBytes *out = NULL;
  guint n_vias = 0;
  for (guint i = 0; i < vias->len; i++)
    if (((GByteArray *)vias->pdata[i])->len > 0)
      n_vias++;
  gboolean complete = n_vias > 0;
  for (guint i = 0; i < RAW_N; i++)
    if (one[i] == NULL || one[i]->len == 0)
      complete = FALSE;
  GByteArray *to = complete ? raw_to_with_tag(one[RAW_TO]) : NULL;
  if (to != NULL) {
    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "SIP/2.0 %u %s\r\n", status, phrase);
    for (guint i = 0; i < vias->len; i++)
      if (((GByteArray *)vias->pdata[i])->len > 0)
        raw_append_header(s, "Via", vias->pdata[i]);
    raw_append_header(s, "From", one[RAW_FROM]);
    raw_append_header(s, "To", to);
    raw_append_header(s, "Call-ID", one[RAW_CALL_ID]);
    raw_append_header(s, "CSeq", one[RAW_CSEQ]);
    g_string_append(s, "Content-Length: 0\r\n\r\n");
    out = g_string_free_to_bytes(s);
    g_byte_array_unref(to);
  }
  for (guint i = 0; i < RAW_N; i++)
    byte_array_unref0(one[i]);
  return out;
}
