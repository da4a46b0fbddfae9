#define G_LOG_DOMAIN "sipcred-core"

/* AOR canonicalization: one spelling per address-of-record, so that the
 * subscription registry and the store agree on keys.
 *
 * An AOR names a user at a domain and nothing else, so the canonical form is
 * "sip:user@host": sips folds to sip, the port, URI parameters and headers
 * are dropped (an AOR has no port: "sip:a@b.com:5061" and "sip:a@b.com" are
 * the same user), the host is lower-cased, and in the user part %-escapes of
 * unreserved characters are decoded while every other escape keeps upper-case
 * hex (RFC 3261 section 19.1.4 compares escapes case-insensitively).
 *
 * Anything outside RFC 3261's grammar is refused rather than repaired: the
 * result becomes a database key and appears in logs.
 */

#include "core/core-private.h"

#include <arpa/inet.h>
#include <string.h>

G_DEFINE_QUARK(sipcred - core - error - quark, core_error)

static gboolean
aor_fail(GError **error, const char *what)
{
  g_set_error(error, CORE_ERROR, CORE_ERROR_BAD_URI, "URI: %s", what);
  return FALSE;
}

/* RFC 3261 unreserved = alphanum / mark */
static gboolean
aor_is_unreserved(guchar c)
{
  return g_ascii_isalnum(c) || (c != '\0' && strchr("-_.!~*'()", c) != NULL);
}

/* RFC 3261 user-unreserved */
static gboolean
aor_is_user_unreserved(guchar c)
{
  return c != '\0' && strchr("&=+$,;?/", c) != NULL;
}

/* Characters that may appear raw in URI parameters and headers: unreserved,
 * reserved and the brackets of param-unreserved/hnv-unreserved. */
static gboolean
aor_is_uric(guchar c)
{
  return aor_is_unreserved(c) || (c != '\0' && strchr(";/?:@&=+$,[]", c) != NULL);
}

/* Reads "%HH" at @p. Returns the byte value, or -1 when malformed. */
static int
aor_read_escape(const char *p)
{
  if (p[0] != '%' || !g_ascii_isxdigit(p[1]) || !g_ascii_isxdigit(p[2]))
    return -1;
  return g_ascii_xdigit_value(p[1]) * 16 + g_ascii_xdigit_value(p[2]);
}

/* Escapes that decode to NUL or another control character are refused:
 * decoding them later would truncate or corrupt keys and log lines. */
static gboolean
aor_escape_ok(int v)
{
  return v >= 0x20 && v != 0x7f;
}

static gboolean
aor_parse_user(const char *p, const char *end, GString *out, GError **error)
{
  if (p == end)
    return aor_fail(error, "empty user part");
  while (p < end) {
    guchar c = (guchar)*p;
    if (c == '%') {
      int v = end - p >= 3 ? aor_read_escape(p) : -1;
      if (v < 0)
        return aor_fail(error, "malformed %-escape in user part");
      if (!aor_escape_ok(v))
        return aor_fail(error, "escaped NUL or control character in user part");
      if (aor_is_unreserved((guchar)v))
        g_string_append_c(out, (char)v);
      else
        g_string_append_printf(out, "%%%02X", (unsigned)v);
      p += 3;
    } else if (c == ':') {
      /* user:password@host is deprecated (RFC 3261 section 19.1.1) and an
       * AOR never carries one. */
      return aor_fail(error, "password in user part");
    } else if (aor_is_unreserved(c) || aor_is_user_unreserved(c)) {
      g_string_append_c(out, (char)c);
      p++;
    } else {
      return aor_fail(error, "invalid character in user part");
    }
  }
  return TRUE;
}

/* RFC 3261 hostname without its optional trailing dot: dot-separated labels
 * of letters, digits and inner hyphens, the last one starting with a letter
 * (all-numeric names are IPv4 addresses, which the caller handles). */
static gboolean
aor_hostname_valid(const char *host, gsize len)
{
  gsize start = 0;
  gboolean top_alpha = FALSE;

  if (len == 0 || len > 253)
    return FALSE;
  for (gsize i = 0; i <= len; i++) {
    if (i < len && host[i] != '.') {
      if (!g_ascii_isalnum(host[i]) && host[i] != '-')
        return FALSE;
      continue;
    }
    gsize label_len = i - start;
    if (label_len == 0 || label_len > 63 || host[start] == '-' || host[i - 1] == '-')
      return FALSE;
    top_alpha = g_ascii_isalpha(host[start]);
    start = i + 1;
  }
  return top_alpha;
}

/* Parses the host at @p (up to ':', ';', '?' or the end) into @out,
 * canonical and lower-case. Returns where the host ends, or NULL. */
static const char *
aor_parse_host(const char *p, GString *out, GError **error)
{
  if (*p == '[') {
    const char *close = strchr(p, ']');
    char addr[INET6_ADDRSTRLEN];
    guint8 bin[16];

    if (close == NULL || (gsize)(close - p - 1) >= sizeof addr) {
      aor_fail(error, "malformed IPv6 reference");
      return NULL;
    }
    g_autofree char *inner = g_strndup(p + 1, close - p - 1);
    if (inet_pton(AF_INET6, inner, bin) != 1 ||
        inet_ntop(AF_INET6, bin, addr, sizeof addr) == NULL) {
      aor_fail(error, "malformed IPv6 reference");
      return NULL;
    }
    g_string_append_printf(out, "[%s]", addr);
    return close + 1;
  }

  gsize len = strcspn(p, ":;?");
  const char *end = p + len;
  if (len == 0) {
    aor_fail(error, "empty host");
    return NULL;
  }
  if (strspn(p, "0123456789.") == len) {
    char addr[INET_ADDRSTRLEN];
    guint8 bin[4];
    g_autofree char *v4 = g_strndup(p, len);
    if (inet_pton(AF_INET, v4, bin) != 1 || inet_ntop(AF_INET, bin, addr, sizeof addr) == NULL) {
      aor_fail(error, "malformed IPv4 address");
      return NULL;
    }
    g_string_append(out, addr);
    return end;
  }
  /* RFC 3261 allows one trailing dot on a hostname; it names the same host. */
  gsize name_len = p[len - 1] == '.' ? len - 1 : len;
  if (!aor_hostname_valid(p, name_len)) {
    aor_fail(error, "invalid host name");
    return NULL;
  }
  for (gsize i = 0; i < name_len; i++)
    g_string_append_c(out, g_ascii_tolower(p[i]));
  return end;
}

/* Port, parameters and headers are checked for syntax, then dropped. */
static gboolean
aor_check_tail(const char *p, GError **error)
{
  if (*p == ':') {
    gsize digits = strspn(++p, "0123456789");
    if (digits == 0 || digits > 5 || g_ascii_strtoull(p, NULL, 10) > 65535)
      return aor_fail(error, "invalid port");
    p += digits;
  }
  if (*p != '\0' && *p != ';' && *p != '?')
    return aor_fail(error, "unexpected character after host");
  while (*p != '\0') {
    guchar c = (guchar)*p;
    if (c == '%') {
      int v = aor_read_escape(p);
      if (v < 0)
        return aor_fail(error, "malformed %-escape");
      if (!aor_escape_ok(v))
        return aor_fail(error, "escaped NUL or control character");
      p += 3;
    } else if (aor_is_uric(c)) {
      p++;
    } else {
      return aor_fail(error, "invalid character in parameters or headers");
    }
  }
  return TRUE;
}

char *
core_aor_canonicalize(const char *uri, GError **error)
{
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (uri == NULL) {
    aor_fail(error, "missing");
    return NULL;
  }
  gsize len = strnlen(uri, CORE_AOR_MAX_INPUT + 1);
  if (len > CORE_AOR_MAX_INPUT) {
    aor_fail(error, "longer than 512 bytes");
    return NULL;
  }

  /* Optional surrounding whitespace and one pair of angle brackets. */
  const char *start = uri;
  const char *end = uri + len;
  while (start < end && (*start == ' ' || *start == '\t'))
    start++;
  while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  if (start < end && *start == '<') {
    if (end - start < 2 || end[-1] != '>') {
      aor_fail(error, "unbalanced angle brackets");
      return NULL;
    }
    start++;
    end--;
  }
  for (const char *q = start; q < end; q++) {
    guchar c = (guchar)*q;
    if (c <= 0x20 || c >= 0x7f) {
      aor_fail(error, "control character, space or non-ASCII byte");
      return NULL;
    }
  }
  g_autofree char *s = g_strndup(start, end - start);

  const char *p;
  if (g_ascii_strncasecmp(s, "sip:", 4) == 0) {
    p = s + 4;
  } else if (g_ascii_strncasecmp(s, "sips:", 5) == 0) {
    p = s + 5;
  } else {
    aor_fail(error, "not a sip: or sips: URI");
    return NULL;
  }

  /* The user part cannot hold a raw '@', so the first one ends it. */
  const char *at = strchr(p, '@');
  if (at == NULL) {
    aor_fail(error, "no user part");
    return NULL;
  }

  g_autoptr(GString) out = g_string_new("sip:");
  if (!aor_parse_user(p, at, out, error))
    return NULL;
  g_string_append_c(out, '@');
  const char *tail = aor_parse_host(at + 1, out, error);
  if (tail == NULL || !aor_check_tail(tail, error))
    return NULL;
  /* Normalising can lengthen an IPv6 host ("::ffff:a:a" prints as
   * "::ffff:0.10.0.10"); the result must itself be acceptable input, so a
   * canonical AOR is always a fixed point. */
  if (out->len > CORE_AOR_MAX_INPUT) {
    aor_fail(error, "longer than " G_STRINGIFY(CORE_AOR_MAX_INPUT) " bytes once normalised");
    return NULL;
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

static gboolean
aor_domain_equal(const char *host, const char *domain)
{
  gsize hlen = strlen(host);
  gsize dlen = strlen(domain);
  if (dlen > 0 && domain[dlen - 1] == '.')
    dlen--;
  return hlen == dlen && g_ascii_strncasecmp(host, domain, dlen) == 0;
}

char *
core_aor_canonicalize_served(const char *const *domains, const char *uri, GError **error)
{
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  g_autofree char *aor = core_aor_canonicalize(uri, error);
  if (aor == NULL)
    return NULL;
  /* Canonical user parts keep '@' escaped, so the only '@' is this one. */
  const char *host = strchr(aor, '@') + 1;
  for (gsize i = 0; domains != NULL && domains[i] != NULL; i++) {
    if (aor_domain_equal(host, domains[i]))
      return g_steal_pointer(&aor);
  }
  g_set_error(error, CORE_ERROR, CORE_ERROR_NOT_SERVED, "%s is not a served domain", host);
  return NULL;
}
