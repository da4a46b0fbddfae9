#define G_LOG_DOMAIN "sipcred-digest"

#include "core/digest.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdarg.h>
#include <string.h>

G_DEFINE_QUARK(sipcred - core - digest - error - quark, core_digest_error)

/* Nonce layout before base64url: issue time (8 bytes, big endian), random
 * bytes, HMAC-SHA256(secret, time || random || realm). */
#define NONCE_TIME_LEN 8
#define NONCE_RANDOM_LEN 16
#define NONCE_MAC_LEN 32
#define NONCE_RAW_LEN (NONCE_TIME_LEN + NONCE_RANDOM_LEN + NONCE_MAC_LEN)
/* A nonce issued this far in our future was made before the clock was set
 * back; it is answered with stale=true rather than trusted. */
#define NONCE_FUTURE_SLACK_S 60
#define MIN_SECRET_LEN 16
#define MAX_PARAMS 32
#define MAX_NAME 64

typedef struct {
  guint failures;
  gint64 last_failure;
  gint64 blocked_until;
} Attempts;

typedef struct {
  guint32 max_nc;
  gint64 issued;
} NonceState;

struct _CoreDigest {
  char *realm;
  guint8 *secret;
  gsize secret_len;
  guint lifetime;
  CoreDigestLimits limits;
  char *opaque;
  GHashTable *nonces; /* nonce string -> NonceState */
  /* Nonces issued at or before this time whose state may have been dropped
   * for room: without their state they are answered as stale, never
   * accepted, so dropping state cannot open a replay. */
  gint64 nonce_floor;
  gint64 next_purge;
  GHashTable *by_source; /* address -> Attempts */
  GHashTable *by_user;   /* user name -> Attempts */
};

struct _CoreDigestCredentials {
  char *username;
  char *realm;
  char *nonce;
  char *uri;
  char *response;
  char *algorithm;
  char *cnonce;
  char *opaque;
  char *qop;
  char *nc;
  char *userhash;
  guint32 nc_value;
  CoreDigestAlgorithm alg;
};

void
core_digest_limits_init_defaults(CoreDigestLimits *limits)
{
  g_return_if_fail(limits != NULL);
  limits->free_failures = 5;
  limits->base_delay_s = 2;
  limits->max_delay_s = 900;
  limits->forget_after_s = 3600;
  limits->max_entries = 10000;
  limits->max_nonces = 65536;
}

/* ---- encoding helpers ---- */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *
base64url_encode(const guint8 *data, gsize len)
{
  GString *s = g_string_sized_new(len * 4 / 3 + 4);
  for (gsize i = 0; i < len; i += 3) {
    guint32 v = (guint32)data[i] << 16;
    if (i + 1 < len)
      v |= (guint32)data[i + 1] << 8;
    if (i + 2 < len)
      v |= data[i + 2];
    g_string_append_c(s, b64url[(v >> 18) & 63]);
    g_string_append_c(s, b64url[(v >> 12) & 63]);
    if (i + 1 < len)
      g_string_append_c(s, b64url[(v >> 6) & 63]);
    if (i + 2 < len)
      g_string_append_c(s, b64url[v & 63]);
  }
  return g_string_free(s, FALSE);
}

static int
b64url_value(char c)
{
  const char *p = c != '\0' ? strchr(b64url, c) : NULL;
  return p != NULL ? (int)(p - b64url) : -1;
}

/* Strict: exactly @len bytes, unpadded, canonical trailing bits. */
static gboolean
base64url_decode_exact(const char *text, guint8 *out, gsize len)
{
  gsize want = (len * 4 + 2) / 3;
  if (strlen(text) != want)
    return FALSE;
  guint32 acc = 0;
  int bits = 0;
  gsize n = 0;
  for (gsize i = 0; i < want; i++) {
    int v = b64url_value(text[i]);
    if (v < 0)
      return FALSE;
    acc = (acc << 6) | (guint32)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (guint8)(acc >> bits);
    }
  }
  return n == len && (acc & ((1u << bits) - 1)) == 0;
}

static char *
hex_lower(const guint8 *data, gsize len)
{
  static const char digits[] = "0123456789abcdef";
  char *s = g_malloc(len * 2 + 1);
  for (gsize i = 0; i < len; i++) {
    s[2 * i] = digits[data[i] >> 4];
    s[2 * i + 1] = digits[data[i] & 15];
  }
  s[len * 2] = '\0';
  return s;
}

static gboolean
is_hex(const char *s, gsize len)
{
  if (strlen(s) != len)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    if (!g_ascii_isxdigit(s[i]))
      return FALSE;
  return TRUE;
}

/* Equal-length comparison whose time does not depend on where they differ. */
static gboolean
equal_const_time(const char *a, const char *b, gsize len)
{
  volatile guint8 diff = 0;
  for (gsize i = 0; i < len; i++)
    diff |= (guint8)(a[i] ^ b[i]);
  return diff == 0;
}

static gsize
algorithm_hex_len(CoreDigestAlgorithm alg)
{
  return alg == CORE_DIGEST_ALGORITHM_SHA256 ? 64 : 32;
}

static char *
hash_hex(CoreDigestAlgorithm alg, const char *data)
{
  guint8 out[32];
  gnutls_digest_algorithm_t g =
      alg == CORE_DIGEST_ALGORITHM_SHA256 ? GNUTLS_DIG_SHA256 : GNUTLS_DIG_MD5;
  if (gnutls_hash_fast(g, data, strlen(data), out) < 0) {
    g_critical("digest: hash failed");
    return NULL;
  }
  return hex_lower(out, gnutls_hash_get_len(g));
}

char *
core_digest_ha1(CoreDigestAlgorithm algorithm, const char *username, const char *realm,
                const char *password)
{
  g_return_val_if_fail(username != NULL && realm != NULL && password != NULL, NULL);
  g_autofree char *a1 = g_strconcat(username, ":", realm, ":", password, NULL);
  char *ha1 = hash_hex(algorithm, a1);
  memset(a1, 0, strlen(a1));
  return ha1;
}

char *
core_digest_response(CoreDigestAlgorithm algorithm, const char *ha1_hex, const char *nonce,
                     const char *nc, const char *cnonce, const char *qop, const char *method,
                     const char *uri)
{
  g_return_val_if_fail(nonce != NULL && nc != NULL && cnonce != NULL && qop != NULL, NULL);
  g_return_val_if_fail(method != NULL && uri != NULL, NULL);
  if (ha1_hex == NULL || !is_hex(ha1_hex, algorithm_hex_len(algorithm)))
    return NULL;
  g_autofree char *ha1 = g_ascii_strdown(ha1_hex, -1);
  g_autofree char *a2 = g_strconcat(method, ":", uri, NULL);
  g_autofree char *ha2 = hash_hex(algorithm, a2);
  if (ha2 == NULL)
    return NULL;
  g_autofree char *kd =
      g_strconcat(ha1, ":", nonce, ":", nc, ":", cnonce, ":", qop, ":", ha2, NULL);
  char *response = hash_hex(algorithm, kd);
  memset(ha1, 0, strlen(ha1));
  memset(kd, 0, strlen(kd));
  return response;
}

/* ---- object ---- */

static gboolean
digest_mac(const CoreDigest *d, const guint8 *data, gsize len, guint8 out[NONCE_MAC_LEN])
{
  g_autofree guint8 *buf = g_malloc(len + strlen(d->realm));
  memcpy(buf, data, len);
  memcpy(buf + len, d->realm, strlen(d->realm));
  return gnutls_hmac_fast(GNUTLS_MAC_SHA256, d->secret, d->secret_len, buf, len + strlen(d->realm),
                          out) >= 0;
}

void
core_digest_set_limits(CoreDigest *digest, guint nonce_lifetime_s, const CoreDigestLimits *limits)
{
  g_return_if_fail(digest != NULL && nonce_lifetime_s > 0 && limits != NULL);
  g_return_if_fail(limits->max_entries > 0 && limits->max_nonces > 0);
  digest->lifetime = nonce_lifetime_s;
  digest->limits = *limits;
}

CoreDigest *
core_digest_new(const char *realm, const guint8 *secret, gsize secret_len, guint nonce_lifetime_s,
                const CoreDigestLimits *limits)
{
  g_return_val_if_fail(realm != NULL && realm[0] != '\0', NULL);
  g_return_val_if_fail(secret != NULL && secret_len >= MIN_SECRET_LEN, NULL);
  g_return_val_if_fail(nonce_lifetime_s > 0, NULL);
  g_return_val_if_fail(limits == NULL || (limits->max_entries > 0 && limits->max_nonces > 0),
                       NULL);

  CoreDigest *d = g_new0(CoreDigest, 1);
  d->realm = g_strdup(realm);
  d->secret = g_memdup2(secret, secret_len);
  d->secret_len = secret_len;
  d->lifetime = nonce_lifetime_s;
  if (limits != NULL)
    d->limits = *limits;
  else
    core_digest_limits_init_defaults(&d->limits);
  d->nonce_floor = G_MININT64;
  d->nonces = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  d->by_source = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  d->by_user = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

  /* The opaque value only has to come back unchanged; deriving it from the
   * secret keeps it the same for every challenge of this key. */
  static const guint8 label[] = "opaque";
  guint8 mac[NONCE_MAC_LEN];
  if (!digest_mac(d, label, sizeof label - 1, mac)) {
    g_critical("digest: HMAC-SHA256 unavailable");
    core_digest_free(d);
    return NULL;
  }
  d->opaque = base64url_encode(mac, 16);
  return d;
}

void
core_digest_free(CoreDigest *d)
{
  if (d == NULL)
    return;
  g_free(d->realm);
  if (d->secret != NULL) {
    memset(d->secret, 0, d->secret_len);
    g_free(d->secret);
  }
  g_free(d->opaque);
  g_clear_pointer(&d->nonces, g_hash_table_unref);
  g_clear_pointer(&d->by_source, g_hash_table_unref);
  g_clear_pointer(&d->by_user, g_hash_table_unref);
  g_free(d);
}

char *
core_digest_nonce_new(CoreDigest *d, gint64 now)
{
  g_return_val_if_fail(d != NULL, NULL);
  guint8 raw[NONCE_RAW_LEN];
  guint64 t = (guint64)now;
  for (int i = 0; i < NONCE_TIME_LEN; i++)
    raw[i] = (guint8)(t >> (8 * (NONCE_TIME_LEN - 1 - i)));
  if (gnutls_rnd(GNUTLS_RND_NONCE, raw + NONCE_TIME_LEN, NONCE_RANDOM_LEN) < 0) {
    /* Nonces need uniqueness, not secrecy; the HMAC makes them unforgeable. */
    g_critical("digest: gnutls_rnd failed, using GLib's generator");
    for (int i = 0; i < NONCE_RANDOM_LEN; i++)
      raw[NONCE_TIME_LEN + i] = (guint8)g_random_int();
  }
  if (!digest_mac(d, raw, NONCE_TIME_LEN + NONCE_RANDOM_LEN,
                  raw + NONCE_TIME_LEN + NONCE_RANDOM_LEN)) {
    g_critical("digest: HMAC-SHA256 failed");
    return NULL;
  }
  return base64url_encode(raw, sizeof raw);
}

/* TRUE when @nonce is one of ours; its issue time goes to *issued. */
static gboolean
nonce_verify(const CoreDigest *d, const char *nonce, gint64 *issued)
{
  guint8 raw[NONCE_RAW_LEN];
  guint8 mac[NONCE_MAC_LEN];
  if (!base64url_decode_exact(nonce, raw, sizeof raw))
    return FALSE;
  if (!digest_mac(d, raw, NONCE_TIME_LEN + NONCE_RANDOM_LEN, mac))
    return FALSE;
  if (!equal_const_time((const char *)mac, (const char *)raw + NONCE_TIME_LEN + NONCE_RANDOM_LEN,
                        NONCE_MAC_LEN))
    return FALSE;
  guint64 t = 0;
  for (int i = 0; i < NONCE_TIME_LEN; i++)
    t = (t << 8) | raw[i];
  *issued = (gint64)t;
  return TRUE;
}

static void
append_quoted(GString *s, const char *v)
{
  g_string_append_c(s, '"');
  for (const char *p = v; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\')
      g_string_append_c(s, '\\');
    g_string_append_c(s, *p);
  }
  g_string_append_c(s, '"');
}

char **
core_digest_challenges(CoreDigest *d, gint64 now, gboolean stale)
{
  g_return_val_if_fail(d != NULL, NULL);
  g_autofree char *nonce = core_digest_nonce_new(d, now);
  if (nonce == NULL)
    return NULL;
  static const char *const algs[] = {"SHA-256", "MD5"};
  char **out = g_new0(char *, G_N_ELEMENTS(algs) + 1);
  for (gsize i = 0; i < G_N_ELEMENTS(algs); i++) {
    GString *s = g_string_new("Digest realm=");
    append_quoted(s, d->realm);
    g_string_append_printf(s, ", qop=\"auth\", nonce=\"%s\", opaque=\"%s\", algorithm=%s", nonce,
                           d->opaque, algs[i]);
    if (stale)
      g_string_append(s, ", stale=true");
    out[i] = g_string_free(s, FALSE);
  }
  return out;
}

/* ---- parser ---- */

static gboolean
is_tchar(guchar c)
{
  return g_ascii_isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static gboolean
is_ows(char c)
{
  return c == ' ' || c == '\t';
}

static gboolean parse_fail(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean
parse_fail(GError **error, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error_literal(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_MALFORMED, msg);
  return FALSE;
}

void
core_digest_credentials_free(CoreDigestCredentials *c)
{
  if (c == NULL)
    return;
  g_free(c->username);
  g_free(c->realm);
  g_free(c->nonce);
  g_free(c->uri);
  g_free(c->response);
  g_free(c->algorithm);
  g_free(c->cnonce);
  g_free(c->opaque);
  g_free(c->qop);
  g_free(c->nc);
  g_free(c->userhash);
  g_free(c);
}

static char **
credentials_field(CoreDigestCredentials *c, const char *name)
{
  static const struct {
    const char *name;
    gsize offset;
  } fields[] = {
      {"username", G_STRUCT_OFFSET(CoreDigestCredentials, username)},
      {"realm", G_STRUCT_OFFSET(CoreDigestCredentials, realm)},
      {"nonce", G_STRUCT_OFFSET(CoreDigestCredentials, nonce)},
      {"uri", G_STRUCT_OFFSET(CoreDigestCredentials, uri)},
      {"response", G_STRUCT_OFFSET(CoreDigestCredentials, response)},
      {"algorithm", G_STRUCT_OFFSET(CoreDigestCredentials, algorithm)},
      {"cnonce", G_STRUCT_OFFSET(CoreDigestCredentials, cnonce)},
      {"opaque", G_STRUCT_OFFSET(CoreDigestCredentials, opaque)},
      {"qop", G_STRUCT_OFFSET(CoreDigestCredentials, qop)},
      {"nc", G_STRUCT_OFFSET(CoreDigestCredentials, nc)},
      {"userhash", G_STRUCT_OFFSET(CoreDigestCredentials, userhash)},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(fields); i++)
    if (g_ascii_strcasecmp(name, fields[i].name) == 0)
      return G_STRUCT_MEMBER_P(c, fields[i].offset);
  return NULL;
}

/* Reads one value at *p (a token or a quoted-string, RFC 9110 section 5.6),
 * unquoted into @out; both forms are taken for every parameter because
 * clients differ on which ones they quote. */
static gboolean
parse_value(const char **p, GString *out, GError **error)
{
  const char *s = *p;
  if (*s == '"') {
    s++;
    for (;;) {
      guchar c = (guchar)*s;
      if (c == '\0')
        return parse_fail(error, "unterminated quoted string");
      if (c == '"')
        break;
      if (c == '\\') {
        s++;
        c = (guchar)*s;
        if (c == '\0')
          return parse_fail(error, "unterminated quoted string");
      }
      if ((c < 0x20 && c != '\t') || c == 0x7f)
        return parse_fail(error, "control character in quoted string");
      if (out->len >= CORE_DIGEST_MAX_PARAM)
        return parse_fail(error, "parameter value too long");
      g_string_append_c(out, (char)c);
      s++;
    }
    s++;
  } else {
    while (is_tchar((guchar)*s)) {
      if (out->len >= CORE_DIGEST_MAX_PARAM)
        return parse_fail(error, "parameter value too long");
      g_string_append_c(out, *s++);
    }
    if (out->len == 0)
      return parse_fail(error, "missing parameter value");
  }
  *p = s;
  return TRUE;
}

gboolean
core_digest_parse(const char *value, CoreDigestCredentials **out, GError **error)
{
  g_return_val_if_fail(value != NULL && out != NULL, FALSE);
  *out = NULL;
  if (strlen(value) > CORE_DIGEST_MAX_INPUT)
    return parse_fail(error, "Authorization value too long");

  const char *p = value;
  while (is_ows(*p))
    p++;
  if (g_ascii_strncasecmp(p, "Digest", 6) != 0 || !is_ows(p[6]))
    return parse_fail(error, "not a Digest Authorization");
  p += 6;

  g_autoptr(CoreDigestCredentials) c = g_new0(CoreDigestCredentials, 1);
  g_autoptr(GPtrArray) seen = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GString) name = g_string_new(NULL);
  g_autoptr(GString) val = g_string_new(NULL);
  for (;;) {
    /* Empty list elements are allowed (RFC 9110 section 5.6.1). */
    while (is_ows(*p) || *p == ',')
      p++;
    if (*p == '\0')
      break;
    g_string_truncate(name, 0);
    g_string_truncate(val, 0);
    while (is_tchar((guchar)*p)) {
      if (name->len >= MAX_NAME)
        return parse_fail(error, "parameter name too long");
      g_string_append_c(name, *p++);
    }
    if (name->len == 0)
      return parse_fail(error, "expected a parameter name");
    while (is_ows(*p))
      p++;
    if (*p != '=')
      return parse_fail(error, "parameter %s has no value", name->str);
    p++;
    while (is_ows(*p))
      p++;
    if (!parse_value(&p, val, error))
      return FALSE;
    while (is_ows(*p))
      p++;
    if (*p != ',' && *p != '\0')
      return parse_fail(error, "junk after parameter %s", name->str);

    for (guint i = 0; i < seen->len; i++)
      if (g_ascii_strcasecmp(g_ptr_array_index(seen, i), name->str) == 0)
        return parse_fail(error, "duplicate parameter %s", name->str);
    if (seen->len >= MAX_PARAMS)
      return parse_fail(error, "too many parameters");
    g_ptr_array_add(seen, g_strdup(name->str));

    if (g_ascii_strcasecmp(name->str, "username*") == 0)
      return parse_fail(error, "username* is not supported");
    char **field = credentials_field(c, name->str);
    if (field != NULL)
      *field = g_strdup(val->str);
    /* else: unknown parameters are ignored (RFC 7616 section 3.4). */
  }

  static const char *const required[] = {"username", "realm", "nonce", "uri", "response"};
  for (gsize i = 0; i < G_N_ELEMENTS(required); i++)
    if (*credentials_field(c, required[i]) == NULL)
      return parse_fail(error, "missing parameter %s", required[i]);

  if (c->algorithm == NULL || g_ascii_strcasecmp(c->algorithm, "MD5") == 0)
    c->alg = CORE_DIGEST_ALGORITHM_MD5;
  else if (g_ascii_strcasecmp(c->algorithm, "SHA-256") == 0)
    c->alg = CORE_DIGEST_ALGORITHM_SHA256;
  else
    return parse_fail(error, "unsupported algorithm");
  if (c->userhash != NULL && g_ascii_strcasecmp(c->userhash, "false") != 0)
    return parse_fail(error, "userhash is not supported");
  if (!is_hex(c->response, algorithm_hex_len(c->alg)))
    return parse_fail(error, "response is not a digest of the algorithm");
  if (c->nc != NULL) {
    if (!is_hex(c->nc, 8))
      return parse_fail(error, "nc is not 8 hex digits");
    c->nc_value = (guint32)g_ascii_strtoull(c->nc, NULL, 16);
  }
  *out = g_steal_pointer(&c);
  return TRUE;
}

const char *
core_digest_credentials_get_username(const CoreDigestCredentials *c)
{
  g_return_val_if_fail(c != NULL, NULL);
  return c->username;
}

const char *
core_digest_credentials_get_realm(const CoreDigestCredentials *c)
{
  g_return_val_if_fail(c != NULL, NULL);
  return c->realm;
}

CoreDigestAlgorithm
core_digest_credentials_get_algorithm(const CoreDigestCredentials *c)
{
  g_return_val_if_fail(c != NULL, CORE_DIGEST_ALGORITHM_MD5);
  return c->alg;
}

/* ---- check ---- */

/* The one tolerance in comparing the digest uri with the Request-URI: for
 * sip: and sips: URIs the scheme and the host compare case-insensitively, as
 * RFC 3261 section 19.1.4 says they are equal; everything else (user part,
 * port, parameters, headers) must be byte-identical. A proxy or UA that
 * lowercases the host must not cost the user a login, and nothing here lets
 * a digest made for one resource pass for another. Other URIs compare
 * exactly. Returns NULL for a URI that is not sip/sips. */
static char *
sip_uri_normalize(const char *uri)
{
  const char *colon = strchr(uri, ':');
  if (colon == NULL)
    return NULL;
  gsize scheme_len = (gsize)(colon - uri);
  if (!((scheme_len == 3 && g_ascii_strncasecmp(uri, "sip", 3) == 0) ||
        (scheme_len == 4 && g_ascii_strncasecmp(uri, "sips", 4) == 0)))
    return NULL;
  const char *rest = colon + 1;
  const char *headers = strchr(rest, '?');
  const char *end = headers != NULL ? headers : rest + strlen(rest);
  /* uri-parameters cannot hold '@', so the last one before '?' ends userinfo. */
  const char *host = rest;
  for (const char *q = rest; q < end; q++)
    if (*q == '@')
      host = q + 1;
  const char *host_end = host;
  if (*host == '[') {
    host_end = strchr(host, ']');
    if (host_end == NULL || host_end > end)
      return NULL;
    host_end++;
  } else {
    while (host_end < end && *host_end != ':' && *host_end != ';')
      host_end++;
  }
  g_autofree char *scheme = g_ascii_strdown(uri, (gssize)scheme_len);
  g_autofree char *host_lc = g_ascii_strdown(host, host_end - host);
  return g_strdup_printf("%s:%.*s%s%s", scheme, (int)(host - rest), rest, host_lc, host_end);
}

static gboolean
uri_matches(const char *digest_uri, const char *request_uri)
{
  if (strcmp(digest_uri, request_uri) == 0)
    return TRUE;
  g_autofree char *a = sip_uri_normalize(digest_uri);
  g_autofree char *b = sip_uri_normalize(request_uri);
  return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static CoreDigestResult
refuse(GError **error, CoreDigestResult result, const char *why)
{
  g_set_error_literal(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_REFUSED, why);
  return result;
}

static void
nonces_purge(CoreDigest *d, gint64 now)
{
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, d->nonces);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    const NonceState *st = value;
    if (now - st->issued > (gint64)d->lifetime)
      g_hash_table_iter_remove(&it);
  }
  d->next_purge = now + MIN(d->lifetime, 60u);
}

/* Makes room for one more nonce: expired ones go first; if that is not
 * enough, the oldest issue time becomes the floor and everything at or
 * below it is dropped (those nonces will be answered as stale). */
static void
nonces_make_room(CoreDigest *d, gint64 now)
{
  if (g_hash_table_size(d->nonces) < d->limits.max_nonces)
    return;
  nonces_purge(d, now);
  if (g_hash_table_size(d->nonces) < d->limits.max_nonces)
    return;
  gint64 oldest = G_MAXINT64;
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, d->nonces);
  while (g_hash_table_iter_next(&it, NULL, &value))
    oldest = MIN(oldest, ((const NonceState *)value)->issued);
  d->nonce_floor = MAX(d->nonce_floor, oldest);
  g_hash_table_iter_init(&it, d->nonces);
  while (g_hash_table_iter_next(&it, NULL, &value))
    if (((const NonceState *)value)->issued <= d->nonce_floor)
      g_hash_table_iter_remove(&it);
  g_message("digest: nonce table full (%u), dropped the oldest nonces' counts",
            d->limits.max_nonces);
}

CoreDigestResult
core_digest_check(CoreDigest *d, const CoreDigestCredentials *c, const char *method,
                  const char *request_uri, const char *ha1_hex, gint64 now, GError **error)
{
  g_return_val_if_fail(d != NULL && c != NULL, CORE_DIGEST_RESULT_BAD);
  g_return_val_if_fail(method != NULL && request_uri != NULL, CORE_DIGEST_RESULT_BAD);

  if (strcmp(c->realm, d->realm) != 0)
    return refuse(error, CORE_DIGEST_RESULT_BAD, "realm is not ours");
  if (c->qop == NULL || g_ascii_strcasecmp(c->qop, "auth") != 0)
    return refuse(error, CORE_DIGEST_RESULT_BAD, "qop=auth is required");
  if (c->nc == NULL || c->cnonce == NULL || c->cnonce[0] == '\0')
    return refuse(error, CORE_DIGEST_RESULT_BAD, "nc and cnonce are required");
  if (c->nc_value == 0)
    return refuse(error, CORE_DIGEST_RESULT_BAD, "nc must start at 00000001");
  if (!uri_matches(c->uri, request_uri))
    return refuse(error, CORE_DIGEST_RESULT_BAD, "digest uri is not the Request-URI");
  gint64 issued = 0;
  if (!nonce_verify(d, c->nonce, &issued))
    return refuse(error, CORE_DIGEST_RESULT_BAD, "nonce was not issued here");
  /* Some SIP UAs do not echo opaque; it carries nothing the nonce's own HMAC
   * does not already prove, so only a wrong one is refused. */
  if (c->opaque != NULL && strcmp(c->opaque, d->opaque) != 0)
    return refuse(error, CORE_DIGEST_RESULT_BAD, "opaque is not ours");

  g_autofree char *expected =
      core_digest_response(c->alg, ha1_hex, c->nonce, c->nc, c->cnonce, c->qop, method, c->uri);
  if (expected == NULL)
    return refuse(error, CORE_DIGEST_RESULT_BAD, "no usable HA1 for this algorithm");
  g_autofree char *got = g_ascii_strdown(c->response, -1);
  gsize len = algorithm_hex_len(c->alg);
  if (strlen(got) != len || !equal_const_time(expected, got, len))
    return refuse(error, CORE_DIGEST_RESULT_BAD, "wrong response");

  /* Only now, with the password proven, may the nonce be called stale
   * (RFC 7616 section 3.3) and its count be recorded: a guess must not be
   * able to advance a count and lock out the real user. */
  if (now - issued > (gint64)d->lifetime || issued > now + NONCE_FUTURE_SLACK_S)
    return refuse(error, CORE_DIGEST_RESULT_STALE, "nonce expired");

  if (now >= d->next_purge)
    nonces_purge(d, now);
  NonceState *st = g_hash_table_lookup(d->nonces, c->nonce);
  if (st == NULL) {
    if (issued <= d->nonce_floor)
      return refuse(error, CORE_DIGEST_RESULT_STALE, "nonce count forgotten");
    nonces_make_room(d, now);
    if (issued <= d->nonce_floor)
      return refuse(error, CORE_DIGEST_RESULT_STALE, "nonce count forgotten");
    st = g_new0(NonceState, 1);
    st->issued = issued;
    g_hash_table_insert(d->nonces, g_strdup(c->nonce), st);
  } else if (c->nc_value <= st->max_nc) {
    return refuse(error, CORE_DIGEST_RESULT_REPLAY, "nonce count already used");
  }
  st->max_nc = c->nc_value;
  return CORE_DIGEST_RESULT_OK;
}

/* ---- failed-attempt limiting ---- */

static gboolean
attempts_forgotten(const CoreDigest *d, const Attempts *a, gint64 now)
{
  return now - a->last_failure >= (gint64)d->limits.forget_after_s && a->blocked_until <= now;
}

static void
attempts_make_room(CoreDigest *d, GHashTable *table, gint64 now)
{
  if (g_hash_table_size(table) < d->limits.max_entries)
    return;
  GHashTableIter it;
  gpointer key, value;
  g_hash_table_iter_init(&it, table);
  while (g_hash_table_iter_next(&it, NULL, &value))
    if (attempts_forgotten(d, value, now))
      g_hash_table_iter_remove(&it);
  if (g_hash_table_size(table) < d->limits.max_entries)
    return;
  const char *oldest_key = NULL;
  gint64 oldest = G_MAXINT64;
  g_hash_table_iter_init(&it, table);
  while (g_hash_table_iter_next(&it, &key, &value)) {
    const Attempts *a = value;
    if (a->last_failure < oldest) {
      oldest = a->last_failure;
      oldest_key = key;
    }
  }
  if (oldest_key != NULL)
    g_hash_table_remove(table, oldest_key);
}

static void
attempts_note(CoreDigest *d, GHashTable *table, const char *kind, const char *key, gint64 now)
{
  Attempts *a = g_hash_table_lookup(table, key);
  if (a != NULL && attempts_forgotten(d, a, now)) {
    a->failures = 0;
    a->blocked_until = 0;
  }
  if (a == NULL) {
    attempts_make_room(d, table, now);
    a = g_new0(Attempts, 1);
    g_hash_table_insert(table, g_strdup(key), a);
  }
  if (a->failures < G_MAXUINT)
    a->failures++;
  a->last_failure = now;
  if (a->failures <= d->limits.free_failures)
    return;
  guint shift = a->failures - d->limits.free_failures - 1;
  guint64 delay = d->limits.base_delay_s;
  while (shift-- > 0 && delay < d->limits.max_delay_s)
    delay *= 2;
  delay = MIN(delay, (guint64)d->limits.max_delay_s);
  a->blocked_until = now + (gint64)delay;
  g_autofree char *shown = g_strescape(key, NULL);
  g_message("digest: %s \"%.64s\" locked out for %" G_GUINT64_FORMAT " s after %u failures", kind,
            shown, delay, a->failures);
}

void
core_digest_note_failure(CoreDigest *d, const char *source, const char *user, gint64 now)
{
  g_return_if_fail(d != NULL);
  if (source != NULL)
    attempts_note(d, d->by_source, "source", source, now);
  if (user != NULL)
    attempts_note(d, d->by_user, "user", user, now);
}

static guint
attempts_wait(GHashTable *table, const char *key, gint64 now)
{
  const Attempts *a = key != NULL ? g_hash_table_lookup(table, key) : NULL;
  if (a == NULL || a->blocked_until <= now)
    return 0;
  return (guint)MIN(a->blocked_until - now, (gint64)G_MAXUINT);
}

gboolean
core_digest_may_try(CoreDigest *d, const char *source, const char *user, gint64 now,
                    guint *retry_after)
{
  g_return_val_if_fail(d != NULL, FALSE);
  guint wait = MAX(attempts_wait(d->by_source, source, now), attempts_wait(d->by_user, user, now));
  if (retry_after != NULL)
    *retry_after = wait;
  return wait == 0;
}

void
core_digest_note_success(CoreDigest *d, const char *user)
{
  g_return_if_fail(d != NULL);
  if (user != NULL)
    g_hash_table_remove(d->by_user, user);
}
