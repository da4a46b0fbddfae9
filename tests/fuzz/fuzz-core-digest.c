/* Fuzz target: the digest Authorization parser (core_digest_parse) and the
 * check of what it parses (core_digest_check), plus failed-attempt limiting
 * keyed by the parsed user name.
 *
 * The input is split at its first NUL byte: the first string is the
 * Authorization value, the second the Request-URI (without a NUL it is
 * "sip:alice@example.com"). Every "@N@" in the value becomes a nonce the
 * target's CoreDigest issued, so the checks past the nonce's HMAC are
 * reached. Properties: the error is set exactly when parse fails or check
 * is not OK; parsed credentials have a user name and realm; a check that
 * succeeded never succeeds again with the same credentials (replay).
 * Then a correct client's Authorization for the parsed user name and the
 * Request-URI (when both can be quoted) must be accepted once, and refused
 * as a replay the second time. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <string.h>

#include "core/digest.h"
#include "fuzz.h"

#define T0 G_GINT64_CONSTANT(1700000000)

static const guint8 secret[32] = "fuzz-secret-fuzz-secret-fuzz-sec";

static gboolean
quotable(const char *s)
{
  if (strlen(s) > CORE_DIGEST_MAX_PARAM)
    return FALSE;
  for (const guchar *p = (const guchar *)s; *p != '\0'; p++)
    if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
      return FALSE;
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

/* A correct client's answer must pass exactly once. */
static void
check_round_trip(CoreDigest *d, const char *user, CoreDigestAlgorithm alg, const char *ruri,
                 const char *nonce)
{
  if (!quotable(user) || !quotable(ruri))
    return;
  g_autofree char *ha1 = core_digest_ha1(alg, user, "example.com", "password");
  g_autofree char *resp =
    core_digest_response(alg, ha1, nonce, "00000001", "c0ffee", "auth", "SUBSCRIBE", ruri);
  FUZZ_CHECK(resp != NULL);
  GString *v = g_string_new("Digest username=");
  append_quoted(v, user);
  g_string_append_printf(v, ", realm=\"example.com\", nonce=\"%s\", uri=", nonce);
  append_quoted(v, ruri);
  g_string_append_printf(v, ", response=\"%s\", algorithm=%s, qop=auth, nc=00000001, "
                            "cnonce=\"c0ffee\"",
                         resp, alg == CORE_DIGEST_ALGORITHM_SHA256 ? "SHA-256" : "MD5");
  g_autofree char *value = g_string_free(v, FALSE);
  g_autoptr(CoreDigestCredentials) creds = NULL;
  if (!core_digest_parse(value, &creds, NULL)) {
    /* Only the overall length limit may refuse it. */
    FUZZ_CHECK(strlen(value) > CORE_DIGEST_MAX_INPUT);
    return;
  }
  FUZZ_CHECK(strcmp(core_digest_credentials_get_username(creds), user) == 0);
  FUZZ_CHECK(core_digest_check(d, creds, "SUBSCRIBE", ruri, ha1, T0 + 2, NULL) ==
             CORE_DIGEST_RESULT_OK);
  FUZZ_CHECK(core_digest_check(d, creds, "SUBSCRIBE", ruri, ha1, T0 + 2, NULL) ==
             CORE_DIGEST_RESULT_REPLAY);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size > 2 * CORE_DIGEST_MAX_INPUT)
    return 0;
  g_autofree char *buf = g_malloc(size + 1);
  memcpy(buf, data, size);
  buf[size] = '\0';
  const char *ruri = "sip:alice@example.com";
  size_t first = strlen(buf);
  if (first < size)
    ruri = buf + first + 1;

  CoreDigestLimits limits;
  core_digest_limits_init_defaults(&limits);
  limits.max_entries = 2;
  limits.max_nonces = 2;
  limits.free_failures = 1;
  g_autoptr(CoreDigest) d = core_digest_new("example.com", secret, sizeof secret, 300, &limits);
  FUZZ_CHECK(d != NULL);

  g_autofree char *nonce = core_digest_nonce_new(d, T0);
  g_auto(GStrv) parts = g_strsplit(buf, "@N@", 64);
  g_autofree char *value = g_strjoinv(nonce, parts);

  g_autoptr(CoreDigestCredentials) creds = NULL;
  g_autoptr(GError) error = NULL;
  gboolean ok = core_digest_parse(value, &creds, &error);
  FUZZ_CHECK(ok == (creds != NULL));
  FUZZ_CHECK(ok == (error == NULL));
  if (!ok) {
    FUZZ_CHECK(g_error_matches(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_MALFORMED));
    return 0;
  }
  const char *user = core_digest_credentials_get_username(creds);
  FUZZ_CHECK(user != NULL && core_digest_credentials_get_realm(creds) != NULL);
  CoreDigestAlgorithm alg = core_digest_credentials_get_algorithm(creds);
  FUZZ_CHECK(alg == CORE_DIGEST_ALGORITHM_MD5 || alg == CORE_DIGEST_ALGORITHM_SHA256);

  g_autofree char *ha1 = core_digest_ha1(alg, user, "example.com", "password");
  for (int round = 0; round < 2; round++) {
    g_autoptr(GError) cerr = NULL;
    CoreDigestResult r =
      core_digest_check(d, creds, round ? "PUBLISH" : "SUBSCRIBE", ruri, ha1, T0 + 1, &cerr);
    FUZZ_CHECK((r == CORE_DIGEST_RESULT_OK) == (cerr == NULL));
    if (cerr != NULL)
      FUZZ_CHECK(g_error_matches(cerr, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_REFUSED));
    if (r == CORE_DIGEST_RESULT_OK) {
      r = core_digest_check(d, creds, "SUBSCRIBE", ruri, ha1, T0 + 1, NULL);
      FUZZ_CHECK(r != CORE_DIGEST_RESULT_OK);
    }
    /* Peer-chosen keys in the bounded attempt tables. */
    core_digest_note_failure(d, ruri, user, T0 + round);
    guint wait = 0;
    gboolean may = core_digest_may_try(d, ruri, user, T0 + round, &wait);
    FUZZ_CHECK(may == (wait == 0));
  }
  g_autofree char *fresh = core_digest_nonce_new(d, T0 + 2);
  check_round_trip(d, user, alg, ruri, fresh);
  return 0;
}
