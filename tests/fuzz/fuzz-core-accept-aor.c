/* Fuzz target: the core's parsers of SUBSCRIBE header values and URIs:
 * Accept (core_accept_allows), Event (core_event_token) and AOR
 * canonicalization (core_aor_canonicalize, _served).
 *
 * The input is split at its first NUL byte into two strings (without a NUL
 * the second is empty). Each string goes through every parser; the second
 * one also serves as the media type asked of the first as Accept value,
 * when it has the '/' a media type needs. A canonical AOR must be a clean
 * database key and canonicalize to itself. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core-private.h"
#include "fuzz.h"

static const char *const domains[] = {"example.com", "example.org.", NULL};

static void
check_accept(const char *accept, const char *media_type)
{
  gboolean allows = core_accept_allows(accept, media_type);
  /* Type and subtype compare case-insensitively. */
  g_autofree char *upper = g_ascii_strup(media_type, -1);
  FUZZ_CHECK(core_accept_allows(accept, upper) == allows);
  /* Nothing is accepted by an Accept value without a media range. */
  if (strchr(accept, '/') == NULL)
    FUZZ_CHECK(!allows);
}

static gboolean
is_token_char(guchar c)
{
  return g_ascii_isalnum(c) || (c != '\0' && strchr("-.!%*_+`'~", c) != NULL);
}

static void
check_event(const char *event)
{
  gsize len = 0;
  const char *token = core_event_token(event, &len);
  if (token == NULL)
    return;
  FUZZ_CHECK(token >= event && len > 0 && len <= strlen(token));
  for (gsize i = 0; i < len; i++)
    FUZZ_CHECK(is_token_char((guchar)token[i]));
  /* The token alone is its own package name. */
  g_autofree char *alone = g_strndup(token, len);
  gsize len2 = 0;
  FUZZ_CHECK(core_event_token(alone, &len2) == alone && len2 == len);
}

static void
check_aor(const char *uri)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *aor = core_aor_canonicalize(uri, &error);
  g_autoptr(GError) served_error = NULL;
  g_autofree char *served = core_aor_canonicalize_served(domains, uri, &served_error);

  if (aor == NULL) {
    FUZZ_CHECK(g_error_matches(error, CORE_ERROR, CORE_ERROR_BAD_URI));
    FUZZ_CHECK(served == NULL && g_error_matches(served_error, CORE_ERROR, CORE_ERROR_BAD_URI));
    return;
  }
  FUZZ_CHECK(error == NULL);

  /* A database key and log token: "sip:", printable ASCII without spaces,
   * and exactly one '@' with a user before it and a host after it. */
  FUZZ_CHECK(g_str_has_prefix(aor, "sip:"));
  for (const char *p = aor; *p != '\0'; p++)
    FUZZ_CHECK(*p > 0x20 && *p < 0x7f);
  const char *at = strchr(aor, '@');
  FUZZ_CHECK(at != NULL && at > aor + 4 && at[1] != '\0' && strchr(at + 1, '@') == NULL);
  const char *host = at + 1;
  for (const char *p = host; *p != '\0'; p++)
    FUZZ_CHECK(!g_ascii_isupper(*p));

  /* One spelling per AOR: the canonical form is a fixed point. */
  g_autofree char *again = core_aor_canonicalize(aor, &error);
  FUZZ_CHECK(again != NULL && g_str_equal(again, aor));
  /* The length limit counts the blanks and <> too. */
  g_autofree char *bracketed = g_strdup_printf(" <%s>\t", aor);
  if (strlen(bracketed) <= CORE_AOR_MAX_INPUT) {
    g_autofree char *again2 = core_aor_canonicalize(bracketed, &error);
    FUZZ_CHECK(again2 != NULL && g_str_equal(again2, aor));
  }

  /* Served exactly when the host is one of ours (a trailing dot on the
   * configured name does not matter). */
  gboolean ours = g_str_equal(host, "example.com") || g_str_equal(host, "example.org");
  if (ours) {
    FUZZ_CHECK(served != NULL && g_str_equal(served, aor) && served_error == NULL);
  } else {
    FUZZ_CHECK(served == NULL);
    FUZZ_CHECK(g_error_matches(served_error, CORE_ERROR, CORE_ERROR_NOT_SERVED));
  }
}

static void
run_string(const char *s, const char *other)
{
  static const char *const types[] = {"application/pkix-cert", "message/sipfrag"};
  for (gsize i = 0; i < G_N_ELEMENTS(types); i++)
    check_accept(s, types[i]);
  /* core_accept_allows() requires the '/' of "type/subtype". */
  if (strchr(other, '/') != NULL)
    check_accept(s, other);
  check_event(s);
  check_aor(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const uint8_t *nul = memchr(data, '\0', size);
  gsize first_len = nul != NULL ? (gsize)(nul - data) : size;
  /* NUL-terminated copies of exactly the bytes, so ASan sees overreads. */
  g_autofree char *first = g_strndup((const char *)data, first_len);
  g_autofree char *second =
      nul != NULL ? g_strndup((const char *)nul + 1, size - first_len - 1) : g_strdup("");

  run_string(first, second);
  run_string(second, first);
  return 0;
}
