/* Unit tests of core/digest.c: challenges, the credentials parser, checks
 * (realm, uri, qop, nonce authenticity and age, replay) and failed-attempt
 * limiting. Expected responses are computed here with GLib's GChecksum, not
 * with the code under test. */
#define G_LOG_DOMAIN "sipcred-test"

#include <string.h>

#include "core/digest.h"

#define T0 G_GINT64_CONSTANT(1700000000)
#define LIFETIME 300
#define REALM "example.com"
#define RURI "sip:alice@example.com"
#define PASSWORD "s3cret pass"

static const guint8 secret[32] = "0123456789abcdef0123456789abcdef";

static CoreDigest *
digest_new(void)
{
  return core_digest_new(REALM, secret, sizeof secret, LIFETIME, NULL);
}

static char *
hhex(CoreDigestAlgorithm alg, const char *s)
{
  return g_compute_checksum_for_string(alg == CORE_DIGEST_ALGORITHM_SHA256 ? G_CHECKSUM_SHA256
                                                                           : G_CHECKSUM_MD5,
                                       s, -1);
}

/* The response a correct client sends, computed independently. */
static char *
client_response(CoreDigestAlgorithm alg, const char *user, const char *realm, const char *pw,
                const char *nonce, const char *nc, const char *cnonce, const char *method,
                const char *uri)
{
  g_autofree char *a1 = g_strconcat(user, ":", realm, ":", pw, NULL);
  g_autofree char *ha1 = hhex(alg, a1);
  g_autofree char *a2 = g_strconcat(method, ":", uri, NULL);
  g_autofree char *ha2 = hhex(alg, a2);
  g_autofree char *kd = g_strconcat(ha1, ":", nonce, ":", nc, ":", cnonce, ":auth:", ha2, NULL);
  return hhex(alg, kd);
}

static char *
stored_ha1(CoreDigestAlgorithm alg, const char *user)
{
  g_autofree char *a1 = g_strconcat(user, ":", REALM, ":", PASSWORD, NULL);
  return hhex(alg, a1);
}

static char *
fresh_nonce(CoreDigest *d, gint64 now)
{
  g_auto(GStrv) ch = core_digest_challenges(d, now, FALSE);
  g_assert_nonnull(ch);
  const char *p = strstr(ch[0], "nonce=\"");
  g_assert_nonnull(p);
  p += 7;
  return g_strndup(p, strchr(p, '"') - p);
}

static char *
opaque_of(CoreDigest *d)
{
  g_auto(GStrv) ch = core_digest_challenges(d, T0, FALSE);
  const char *p = strstr(ch[0], "opaque=\"") + 8;
  return g_strndup(p, strchr(p, '"') - p);
}

typedef struct {
  CoreDigestAlgorithm alg;
  gboolean no_algorithm; /* leave algorithm out (MD5 by default) */
  const char *user;
  const char *realm;   /* default REALM */
  const char *pw;      /* default PASSWORD */
  const char *uri;     /* default RURI */
  const char *nc;      /* default 00000001; "" leaves it out */
  const char *cnonce;  /* default "0a4f113b"; "" leaves it out */
  gboolean no_qop;
  const char *qop;     /* default auth */
  const char *opaque;  /* NULL leaves it out */
  const char *method;  /* default SUBSCRIBE */
} Auth;

static char *
auth_value(const Auth *a, const char *nonce)
{
  const char *user = a->user ? a->user : "alice";
  const char *realm = a->realm ? a->realm : REALM;
  const char *uri = a->uri ? a->uri : RURI;
  const char *nc = a->nc ? a->nc : "00000001";
  const char *cnonce = a->cnonce ? a->cnonce : "0a4f113b";
  g_autofree char *resp =
    client_response(a->alg, user, realm, a->pw ? a->pw : PASSWORD, nonce, nc[0] ? nc : "00000001",
                    cnonce, a->method ? a->method : "SUBSCRIBE", uri);
  GString *s = g_string_new("Digest ");
  g_string_append_printf(s, "username=\"%s\", realm=\"%s\", nonce=\"%s\", uri=\"%s\", "
                            "response=\"%s\"",
                         user, realm, nonce, uri, resp);
  if (!a->no_algorithm)
    g_string_append_printf(s, ", algorithm=%s",
                           a->alg == CORE_DIGEST_ALGORITHM_SHA256 ? "SHA-256" : "MD5");
  if (!a->no_qop)
    g_string_append_printf(s, ", qop=%s", a->qop ? a->qop : "auth");
  if (nc[0])
    g_string_append_printf(s, ", nc=%s", nc);
  if (cnonce[0])
    g_string_append_printf(s, ", cnonce=\"%s\"", cnonce);
  if (a->opaque)
    g_string_append_printf(s, ", opaque=\"%s\"", a->opaque);
  return g_string_free(s, FALSE);
}

/* Parses and checks; the check's error must be set exactly when not OK. */
static CoreDigestResult
run_check(CoreDigest *d, const Auth *a, const char *nonce, const char *ruri, gint64 now)
{
  g_autofree char *value = auth_value(a, nonce);
  g_autoptr(CoreDigestCredentials) creds = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(core_digest_parse(value, &creds, &error));
  g_assert_no_error(error);
  g_autofree char *ha1 =
    stored_ha1(core_digest_credentials_get_algorithm(creds), a->user ? a->user : "alice");
  CoreDigestResult r = core_digest_check(d, creds, a->method ? a->method : "SUBSCRIBE",
                                         ruri ? ruri : RURI, ha1, now, &error);
  if (r == CORE_DIGEST_RESULT_OK)
    g_assert_no_error(error);
  else
    g_assert_error(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_REFUSED);
  return r;
}

static void
test_rfc7616_vectors(void)
{
  /* RFC 7616 section 3.9.1. */
  const char *nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
  const char *cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
  struct {
    CoreDigestAlgorithm alg;
    const char *response;
  } v[] = {
    {CORE_DIGEST_ALGORITHM_MD5, "8ca523f5e9506fed4657c9700eebdbec"},
    {CORE_DIGEST_ALGORITHM_SHA256,
     "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(v); i++) {
    g_autofree char *ha1 =
      core_digest_ha1(v[i].alg, "Mufasa", "http-auth@example.org", "Circle of Life");
    g_autofree char *resp = core_digest_response(v[i].alg, ha1, nonce, "00000001", cnonce, "auth",
                                                 "GET", "/dir/index.html");
    g_assert_cmpstr(resp, ==, v[i].response);
  }

  /* The section's SHA-256 Authorization header parses to its fields. */
  const char *value =
    "Digest username=\"Mufasa\",\r\n realm=\"http-auth@example.org\",\r\n"
    " uri=\"/dir/index.html\", algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZ"
    "H4GiTo0v\", nc=00000001, cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth,"
    " response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\","
    " opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
  /* Line folding is the header parser's business; we get it unfolded. */
  g_autofree char *unfolded = g_strdup(value);
  for (char *p = unfolded; *p; p++)
    if (*p == '\r' || *p == '\n')
      *p = ' ';
  g_autoptr(CoreDigestCredentials) creds = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(core_digest_parse(unfolded, &creds, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(core_digest_credentials_get_username(creds), ==, "Mufasa");
  g_assert_cmpstr(core_digest_credentials_get_realm(creds), ==, "http-auth@example.org");
  g_assert_cmpint(core_digest_credentials_get_algorithm(creds), ==,
                  CORE_DIGEST_ALGORITHM_SHA256);

  /* Our check with that realm and the RFC's inputs: everything matches but
   * the nonce, which we did not issue. */
  g_autoptr(CoreDigest) d =
    core_digest_new("http-auth@example.org", secret, sizeof secret, LIFETIME, NULL);
  g_autofree char *ha1 = core_digest_ha1(CORE_DIGEST_ALGORITHM_SHA256, "Mufasa",
                                         "http-auth@example.org", "Circle of Life");
  CoreDigestResult r = core_digest_check(d, creds, "GET", "/dir/index.html", ha1, T0, &error);
  g_assert_cmpint(r, ==, CORE_DIGEST_RESULT_BAD);
  g_assert_error(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_REFUSED);
  g_assert_nonnull(strstr(error->message, "nonce"));
}

static void
test_challenges(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  g_auto(GStrv) ch = core_digest_challenges(d, T0, FALSE);
  g_assert_cmpuint(g_strv_length(ch), ==, 2);
  g_assert_true(g_str_has_prefix(ch[0], "Digest realm=\"example.com\", qop=\"auth\", nonce=\""));
  g_assert_true(g_str_has_suffix(ch[0], ", algorithm=SHA-256"));
  g_assert_true(g_str_has_suffix(ch[1], ", algorithm=MD5"));
  g_assert_nonnull(strstr(ch[0], "opaque=\""));
  g_assert_null(strstr(ch[0], "stale"));
  g_autofree char *n1 = fresh_nonce(d, T0);
  g_autofree char *n2 = fresh_nonce(d, T0);
  g_assert_cmpstr(n1, !=, n2);
  /* Both challenges of one answer carry the same nonce. */
  const char *nonce0 = strstr(ch[0], "nonce=\"");
  g_autofree char *nonce_param = g_strndup(nonce0, strchr(nonce0 + 7, '"') + 1 - nonce0);
  g_assert_cmpuint(strlen(nonce_param), >, 40);
  g_assert_nonnull(strstr(ch[1], nonce_param));

  g_auto(GStrv) st = core_digest_challenges(d, T0, TRUE);
  g_assert_true(g_str_has_suffix(st[0], ", algorithm=SHA-256, stale=true"));
  g_assert_true(g_str_has_suffix(st[1], ", algorithm=MD5, stale=true"));
}

static void
test_ok(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  g_autofree char *opaque = opaque_of(d);
  g_autofree char *n1 = fresh_nonce(d, T0);
  Auth sha = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .opaque = opaque};
  g_assert_cmpint(run_check(d, &sha, n1, NULL, T0 + 1), ==, CORE_DIGEST_RESULT_OK);

  g_autofree char *n2 = fresh_nonce(d, T0);
  Auth md5 = {.alg = CORE_DIGEST_ALGORITHM_MD5};
  g_assert_cmpint(run_check(d, &md5, n2, NULL, T0 + LIFETIME), ==, CORE_DIGEST_RESULT_OK);

  /* No algorithm parameter means MD5. */
  g_autofree char *n3 = fresh_nonce(d, T0);
  Auth dflt = {.alg = CORE_DIGEST_ALGORITHM_MD5, .no_algorithm = TRUE};
  g_assert_cmpint(run_check(d, &dflt, n3, NULL, T0), ==, CORE_DIGEST_RESULT_OK);

  /* The wrong password, or an HA1 of the other algorithm, fails. */
  g_autofree char *n4 = fresh_nonce(d, T0);
  Auth wrong = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .pw = "guess"};
  g_assert_cmpint(run_check(d, &wrong, n4, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
  g_autofree char *value = auth_value(&sha, n4);
  g_autoptr(CoreDigestCredentials) creds = NULL;
  g_assert_true(core_digest_parse(value, &creds, NULL));
  g_autofree char *md5_ha1 = stored_ha1(CORE_DIGEST_ALGORITHM_MD5, "alice");
  g_assert_cmpint(core_digest_check(d, creds, "SUBSCRIBE", RURI, md5_ha1, T0, NULL), ==,
                  CORE_DIGEST_RESULT_BAD);
  /* A response for another method fails. */
  g_assert_cmpint(core_digest_check(d, creds, "PUBLISH", RURI, md5_ha1, T0, NULL), ==,
                  CORE_DIGEST_RESULT_BAD);
  g_autofree char *sha_ha1 = stored_ha1(CORE_DIGEST_ALGORITHM_SHA256, "alice");
  g_assert_cmpint(core_digest_check(d, creds, "PUBLISH", RURI, sha_ha1, T0, NULL), ==,
                  CORE_DIGEST_RESULT_BAD);
  g_assert_cmpint(core_digest_check(d, creds, "SUBSCRIBE", RURI, sha_ha1, T0, NULL), ==,
                  CORE_DIGEST_RESULT_OK);

  /* A wrong opaque fails. */
  g_autofree char *n5 = fresh_nonce(d, T0);
  Auth bad_opaque = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .opaque = "xyz"};
  g_assert_cmpint(run_check(d, &bad_opaque, n5, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
}

static void
test_stale(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  g_autofree char *n = fresh_nonce(d, T0);
  Auth a = {.alg = CORE_DIGEST_ALGORITHM_SHA256};
  /* Expired and the right password: stale, so the UA retries unprompted. */
  g_assert_cmpint(run_check(d, &a, n, NULL, T0 + LIFETIME + 1), ==, CORE_DIGEST_RESULT_STALE);
  /* Expired and the wrong password: plain failure, never stale. */
  Auth wrong = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .pw = "guess"};
  g_assert_cmpint(run_check(d, &wrong, n, NULL, T0 + LIFETIME + 1), ==, CORE_DIGEST_RESULT_BAD);
  /* Issued far in the future (clock set back): stale too. */
  g_autofree char *future = fresh_nonce(d, T0 + 3600);
  g_assert_cmpint(run_check(d, &a, future, NULL, T0), ==, CORE_DIGEST_RESULT_STALE);
  /* Still in its lifetime it works. */
  g_assert_cmpint(run_check(d, &a, n, NULL, T0 + LIFETIME), ==, CORE_DIGEST_RESULT_OK);
}

static void
test_forged_nonce(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  Auth a = {.alg = CORE_DIGEST_ALGORITHM_SHA256};
  g_autofree char *n = fresh_nonce(d, T0);

  /* One character changed anywhere (time, random part or MAC). */
  for (gsize i = 0; i < strlen(n); i += 10) {
    g_autofree char *forged = g_strdup(n);
    forged[i] = forged[i] == 'A' ? 'B' : 'A';
    g_assert_cmpint(run_check(d, &a, forged, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
  }
  /* Truncated or extended. */
  g_autofree char *shorter = g_strndup(n, strlen(n) - 1);
  g_assert_cmpint(run_check(d, &a, shorter, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
  g_autofree char *longer = g_strconcat(n, "A", NULL);
  g_assert_cmpint(run_check(d, &a, longer, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);

  /* A nonce made with another key, or for another realm. */
  static const guint8 other[32] = "another secret, another server!";
  g_autoptr(CoreDigest) d2 = core_digest_new(REALM, other, sizeof other, LIFETIME, NULL);
  g_autofree char *n2 = fresh_nonce(d2, T0);
  g_assert_cmpint(run_check(d, &a, n2, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
  g_autoptr(CoreDigest) d3 = core_digest_new("example.org", secret, sizeof secret, LIFETIME, NULL);
  g_autofree char *n3 = fresh_nonce(d3, T0);
  g_assert_cmpint(run_check(d, &a, n3, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);

  /* The genuine one still works. */
  g_assert_cmpint(run_check(d, &a, n, NULL, T0), ==, CORE_DIGEST_RESULT_OK);
}

static void
test_wrong_realm(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  g_autofree char *n = fresh_nonce(d, T0);
  /* A self-consistent response for another realm (the stored HA1 is ours). */
  Auth a = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .realm = "example.org"};
  g_assert_cmpint(run_check(d, &a, n, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
  Auth b = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .realm = "EXAMPLE.COM"};
  g_assert_cmpint(run_check(d, &b, n, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
}

static void
test_uri(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  struct {
    const char *digest_uri;
    const char *request_uri;
    CoreDigestResult want;
  } cases[] = {
    {"sip:example.com", RURI, CORE_DIGEST_RESULT_BAD},
    {"sip:bob@example.com", RURI, CORE_DIGEST_RESULT_BAD},
    {"sips:alice@example.com", RURI, CORE_DIGEST_RESULT_BAD},
    {"sip:alice@example.com:5061", RURI, CORE_DIGEST_RESULT_BAD},
    {"sip:alice@example.com;transport=tls", RURI, CORE_DIGEST_RESULT_BAD},
    {"sip:alice@example.com?x=y", RURI, CORE_DIGEST_RESULT_BAD},
    /* The user part is case-sensitive. */
    {"sip:Alice@example.com", RURI, CORE_DIGEST_RESULT_BAD},
    /* The tolerance: scheme and host compare case-insensitively. */
    {"SIP:alice@EXAMPLE.com", RURI, CORE_DIGEST_RESULT_OK},
    {"sips:alice@example.com;transport=tls", "SIPS:alice@Example.Com;transport=tls",
     CORE_DIGEST_RESULT_OK},
    {"sip:alice@[2001:DB8::1]:5061", "sip:alice@[2001:db8::1]:5061", CORE_DIGEST_RESULT_OK},
    /* ... but only there, and only for sip/sips. */
    {"sip:alice@example.com;Transport=tls", "sip:alice@example.com;transport=tls",
     CORE_DIGEST_RESULT_BAD},
    {"tel:+1-555", "TEL:+1-555", CORE_DIGEST_RESULT_BAD},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *n = fresh_nonce(d, T0);
    Auth a = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .uri = cases[i].digest_uri};
    g_test_message("digest uri %s, Request-URI %s", cases[i].digest_uri, cases[i].request_uri);
    g_assert_cmpint(run_check(d, &a, n, cases[i].request_uri, T0), ==, cases[i].want);
  }
}

static void
test_qop_nc_cnonce(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  Auth cases[] = {
    {.alg = CORE_DIGEST_ALGORITHM_SHA256, .no_qop = TRUE},
    {.alg = CORE_DIGEST_ALGORITHM_SHA256, .qop = "auth-int"},
    {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = ""},
    {.alg = CORE_DIGEST_ALGORITHM_SHA256, .cnonce = ""},
    {.alg = CORE_DIGEST_ALGORITHM_MD5, .nc = "00000000"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *n = fresh_nonce(d, T0);
    g_assert_cmpint(run_check(d, &cases[i], n, NULL, T0), ==, CORE_DIGEST_RESULT_BAD);
  }
}

static void
test_replay(void)
{
  g_autoptr(CoreDigest) d = digest_new();
  g_autofree char *n = fresh_nonce(d, T0);
  Auth a1 = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000001"};
  Auth a2 = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000002", .cnonce = "other"};
  Auth a5 = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000005"};
  Auth a5_wrong = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000005", .pw = "guess"};
  Auth a3 = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000003"};

  g_assert_cmpint(run_check(d, &a1, n, NULL, T0), ==, CORE_DIGEST_RESULT_OK);
  /* The same Authorization again. */
  g_assert_cmpint(run_check(d, &a1, n, NULL, T0 + 1), ==, CORE_DIGEST_RESULT_REPLAY);
  g_assert_cmpint(run_check(d, &a2, n, NULL, T0 + 1), ==, CORE_DIGEST_RESULT_OK);
  /* nc going backwards. */
  g_assert_cmpint(run_check(d, &a1, n, NULL, T0 + 1), ==, CORE_DIGEST_RESULT_REPLAY);
  /* A wrong guess does not advance the count... */
  g_assert_cmpint(run_check(d, &a5_wrong, n, NULL, T0 + 2), ==, CORE_DIGEST_RESULT_BAD);
  g_assert_cmpint(run_check(d, &a3, n, NULL, T0 + 2), ==, CORE_DIGEST_RESULT_OK);
  /* ... a right one may skip ahead. */
  g_assert_cmpint(run_check(d, &a5, n, NULL, T0 + 2), ==, CORE_DIGEST_RESULT_OK);
  g_assert_cmpint(run_check(d, &a3, n, NULL, T0 + 2), ==, CORE_DIGEST_RESULT_REPLAY);
  /* A second nonce has its own count. */
  g_autofree char *m = fresh_nonce(d, T0);
  g_assert_cmpint(run_check(d, &a1, m, NULL, T0 + 3), ==, CORE_DIGEST_RESULT_OK);
  /* After expiry a replay is stale, never accepted. */
  g_assert_cmpint(run_check(d, &a5, n, NULL, T0 + LIFETIME + 1), ==, CORE_DIGEST_RESULT_STALE);
}

static void
test_nonce_table_bounded(void)
{
  CoreDigestLimits limits;
  core_digest_limits_init_defaults(&limits);
  limits.max_nonces = 2;
  g_autoptr(CoreDigest) d = core_digest_new(REALM, secret, sizeof secret, LIFETIME, &limits);
  g_autofree char *n1 = fresh_nonce(d, T0);
  g_autofree char *n2 = fresh_nonce(d, T0 + 1);
  g_autofree char *n3 = fresh_nonce(d, T0 + 2);
  Auth a1 = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000001"};
  Auth a2 = {.alg = CORE_DIGEST_ALGORITHM_SHA256, .nc = "00000002"};
  g_assert_cmpint(run_check(d, &a1, n1, NULL, T0 + 3), ==, CORE_DIGEST_RESULT_OK);
  g_assert_cmpint(run_check(d, &a1, n2, NULL, T0 + 3), ==, CORE_DIGEST_RESULT_OK);
  g_assert_cmpint(run_check(d, &a1, n3, NULL, T0 + 3), ==, CORE_DIGEST_RESULT_OK);
  /* n1's count was dropped for room: a replay of it is stale, not OK. */
  g_assert_cmpint(run_check(d, &a1, n1, NULL, T0 + 4), ==, CORE_DIGEST_RESULT_STALE);
  g_assert_cmpint(run_check(d, &a2, n1, NULL, T0 + 4), ==, CORE_DIGEST_RESULT_STALE);
  /* The newer ones are still tracked. */
  g_assert_cmpint(run_check(d, &a1, n3, NULL, T0 + 4), ==, CORE_DIGEST_RESULT_REPLAY);
  g_assert_cmpint(run_check(d, &a2, n3, NULL, T0 + 4), ==, CORE_DIGEST_RESULT_OK);
}

static char *
replace(const char *s, const char *from, const char *to)
{
  g_auto(GStrv) parts = g_strsplit(s, from, -1);
  return g_strjoinv(to, parts);
}

static void
test_parse(void)
{
  g_autoptr(CoreDigestCredentials) c = NULL;
  g_autoptr(GError) error = NULL;
  const char *r32 = "0123456789abcdef0123456789ABCDEF";

  /* Escapes, tokens for quoted values, empty list elements, unknown and
   * oddly cased parameter names. */
  g_autofree char *good = g_strdup_printf(
    "  digest USERNAME=\"al\\\"i\\\\ce\",, realm=example.com ,nonce=\"n\",uri=\"sip:a@b\""
    ",response=%s, foo=\"bar, baz\", Algorithm=md5,", r32);
  g_assert_true(core_digest_parse(good, &c, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(core_digest_credentials_get_username(c), ==, "al\"i\\ce");
  g_assert_cmpstr(core_digest_credentials_get_realm(c), ==, "example.com");
  g_assert_cmpint(core_digest_credentials_get_algorithm(c), ==, CORE_DIGEST_ALGORITHM_MD5);
  g_clear_pointer(&c, core_digest_credentials_free);

  const char *base = "username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\"";
  const char *bad[] = {
    "",
    "Digest",
    "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    "Digestusername=\"a\"",
    "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\"", /* no response */
    "Digest realm=\"r\", nonce=\"n\", uri=\"u\", response=R32", /* no username */
    "Digest BASE, response=R32, username=\"b\"", /* duplicate */
    "Digest BASE, response=R32, Realm=\"r\"", /* duplicate */
    "Digest BASE, response=\"R32", /* unterminated */
    "Digest BASE, response=R32, nc=1", /* short nc */
    "Digest BASE, response=R32, nc=0000000g", /* not hex */
    "Digest BASE, response=R32, algorithm=SHA-512", /* unsupported */
    "Digest BASE, response=R32, algorithm=MD5-sess", /* unsupported */
    "Digest BASE, response=R32, algorithm=SHA-256", /* short response */
    "Digest BASE, response=R32 x", /* junk */
    "Digest BASE, response=R32, =x", /* no name */
    "Digest BASE, response=R32, a=", /* no value */
    "Digest BASE, response=R32, a", /* no '=' */
    "Digest BASE, response=R32, userhash=true", /* userhash */
    "Digest BASE, response=R32, username*=UTF-8''a", /* username* */
    "Digest BASE, response=R32, cnonce=\"a\x01\"", /* control */
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autofree char *v0 = replace(bad[i], "BASE", base);
    g_autofree char *v = replace(v0, "R32", r32);
    g_test_message("bad: %s", v);
    g_assert_false(core_digest_parse(v, &c, &error));
    g_assert_null(c);
    g_assert_error(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_MALFORMED);
    g_clear_error(&error);
  }

  /* Length limits: a long parameter value, a long header. */
  g_autofree char *big = g_strnfill(CORE_DIGEST_MAX_PARAM + 1, 'x');
  g_autofree char *v1 = g_strdup_printf("Digest %s, response=%s, cnonce=\"%s\"", base, r32, big);
  g_assert_false(core_digest_parse(v1, &c, &error));
  g_assert_error(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_MALFORMED);
  g_clear_error(&error);
  g_autofree char *fits = g_strnfill(CORE_DIGEST_MAX_PARAM, 'x');
  g_autofree char *v2 = g_strdup_printf("Digest %s, response=%s, cnonce=\"%s\"", base, r32, fits);
  g_assert_true(core_digest_parse(v2, &c, &error));
  g_clear_pointer(&c, core_digest_credentials_free);
  g_autofree char *huge = g_strdup_printf("Digest %s, response=%s, a=%s, b=%s, c=%s, d=%s, e=%s",
                                          base, r32, fits, fits, fits, fits, fits);
  g_assert_false(core_digest_parse(huge, &c, &error));
  g_assert_error(error, CORE_DIGEST_ERROR, CORE_DIGEST_ERROR_MALFORMED);
}

static void
test_lockout(void)
{
  CoreDigestLimits limits;
  core_digest_limits_init_defaults(&limits);
  limits.free_failures = 2;
  limits.base_delay_s = 2;
  limits.max_delay_s = 8;
  limits.forget_after_s = 100;
  g_autoptr(CoreDigest) d = core_digest_new(REALM, secret, sizeof secret, LIFETIME, &limits);
  guint wait = 99;

  g_assert_true(core_digest_may_try(d, "192.0.2.1", "alice", T0, &wait));
  g_assert_cmpuint(wait, ==, 0);
  core_digest_note_failure(d, "192.0.2.1", "alice", T0);
  core_digest_note_failure(d, "192.0.2.1", "alice", T0);
  g_assert_true(core_digest_may_try(d, "192.0.2.1", "alice", T0, &wait));
  core_digest_note_failure(d, "192.0.2.1", "alice", T0);
  g_assert_false(core_digest_may_try(d, "192.0.2.1", "alice", T0, &wait));
  g_assert_cmpuint(wait, ==, 2);
  /* The user is locked out from every address, the address for every user. */
  g_assert_false(core_digest_may_try(d, "198.51.100.7", "alice", T0 + 1, &wait));
  g_assert_cmpuint(wait, ==, 1);
  g_assert_false(core_digest_may_try(d, "192.0.2.1", "bob", T0 + 1, &wait));
  g_assert_true(core_digest_may_try(d, "198.51.100.7", "bob", T0 + 1, &wait));
  /* The delay ends, and grows with each further failure up to the cap. */
  g_assert_true(core_digest_may_try(d, "192.0.2.1", "alice", T0 + 2, &wait));
  guint expect[] = {4, 8, 8};
  gint64 t = T0 + 2;
  for (gsize i = 0; i < G_N_ELEMENTS(expect); i++) {
    core_digest_note_failure(d, "192.0.2.1", "alice", t);
    g_assert_false(core_digest_may_try(d, "192.0.2.1", "alice", t, &wait));
    g_assert_cmpuint(wait, ==, expect[i]);
    t += expect[i];
  }
  /* A success forgets the user's count, not the address's. */
  core_digest_note_success(d, "alice");
  g_assert_true(core_digest_may_try(d, "198.51.100.7", "alice", t, &wait));
  core_digest_note_failure(d, "192.0.2.1", NULL, t);
  g_assert_false(core_digest_may_try(d, "192.0.2.1", NULL, t, &wait));
  g_assert_cmpuint(wait, ==, 8);
  /* After forget_after_s without failures, the count starts afresh. */
  t += 8 + 100;
  core_digest_note_failure(d, "192.0.2.1", NULL, t);
  g_assert_true(core_digest_may_try(d, "192.0.2.1", NULL, t, &wait));
}

static void
test_lockout_bounded(void)
{
  CoreDigestLimits limits;
  core_digest_limits_init_defaults(&limits);
  limits.free_failures = 0;
  limits.max_delay_s = 60;
  limits.max_entries = 2;
  g_autoptr(CoreDigest) d = core_digest_new(REALM, secret, sizeof secret, LIFETIME, &limits);
  core_digest_note_failure(d, "192.0.2.1", NULL, T0);
  core_digest_note_failure(d, "192.0.2.2", NULL, T0 + 1);
  g_assert_false(core_digest_may_try(d, "192.0.2.1", NULL, T0 + 1, NULL));
  /* A third address pushes out the one whose last failure is oldest. */
  core_digest_note_failure(d, "192.0.2.3", NULL, T0 + 1);
  g_assert_true(core_digest_may_try(d, "192.0.2.1", NULL, T0 + 1, NULL));
  g_assert_false(core_digest_may_try(d, "192.0.2.2", NULL, T0 + 1, NULL));
  g_assert_false(core_digest_may_try(d, "192.0.2.3", NULL, T0 + 1, NULL));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/digest/rfc7616-vectors", test_rfc7616_vectors);
  g_test_add_func("/core/digest/challenges", test_challenges);
  g_test_add_func("/core/digest/ok", test_ok);
  g_test_add_func("/core/digest/stale", test_stale);
  g_test_add_func("/core/digest/forged-nonce", test_forged_nonce);
  g_test_add_func("/core/digest/wrong-realm", test_wrong_realm);
  g_test_add_func("/core/digest/uri", test_uri);
  g_test_add_func("/core/digest/qop-nc-cnonce", test_qop_nc_cnonce);
  g_test_add_func("/core/digest/replay", test_replay);
  g_test_add_func("/core/digest/nonce-table-bounded", test_nonce_table_bounded);
  g_test_add_func("/core/digest/parse", test_parse);
  g_test_add_func("/core/digest/lockout", test_lockout);
  g_test_add_func("/core/digest/lockout-bounded", test_lockout_bounded);
  return g_test_run();
}
