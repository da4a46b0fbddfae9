/* tests/unit/sipclient: server verification (sec-flows 7, tests 6-11) and
 * the client half of digest. Certificates and CRLs are made here. */
#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "core/digest.h"
#include "server/sipclient.h"
#include "testcert.h"

typedef struct {
  char *dir;
  TestCert *ca;
  TestCert *other_ca;
  char *ca_file;
} Fixture;

static const char *const dns_example[] = {"example.com", NULL};

static void
write_text(const char *path, const char *text)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_set_contents(path, text, -1, &error));
  g_assert_no_error(error);
}

static void
fixture_set_up(Fixture *f, gconstpointer data)
{
  TestCertSpec ca = {.cn = "client test CA", .ca = TRUE};
  TestCertSpec other = {.cn = "someone else's CA", .ca = TRUE};
  g_autofree char *pem = NULL;

  f->dir = g_dir_make_tmp("sipclient-XXXXXX", NULL);
  g_assert_nonnull(f->dir);
  f->ca = test_cert_new(&ca);
  f->other_ca = test_cert_new(&other);
  f->ca_file = g_build_filename(f->dir, "ca.pem", NULL);
  pem = test_cert_get_pem(f->ca);
  write_text(f->ca_file, pem);
}

static void
fixture_tear_down(Fixture *f, gconstpointer data)
{
  g_autoptr(GDir) dir = g_dir_open(f->dir, 0, NULL);
  const char *name;

  while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
    g_autofree char *path = g_build_filename(f->dir, name, NULL);
    g_unlink(path);
  }
  g_rmdir(f->dir);
  g_free(f->dir);
  g_free(f->ca_file);
  test_cert_free(f->ca);
  test_cert_free(f->other_ca);
}

/* A CRL of @issuer revoking @revoked (may be NULL), written as PEM. */
static char *
write_crl(Fixture *f, const char *name, const TestCert *issuer, const TestCert *revoked)
{
  gnutls_x509_crl_t crl;
  gnutls_datum_t out = {0};
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  char *path = g_build_filename(f->dir, name, NULL);
  g_autofree char *text = NULL;

  g_assert_cmpint(gnutls_x509_crl_init(&crl), ==, 0);
  g_assert_cmpint(gnutls_x509_crl_set_version(crl, 2), ==, 0);
  g_assert_cmpint(gnutls_x509_crl_set_this_update(crl, now - 60), ==, 0);
  g_assert_cmpint(gnutls_x509_crl_set_next_update(crl, now + 86400), ==, 0);
  if (revoked != NULL)
    g_assert_cmpint(gnutls_x509_crl_set_crt(crl, revoked->crt, now - 30), ==, 0);
  g_assert_cmpint(gnutls_x509_crl_sign2(crl, issuer->crt, issuer->key, GNUTLS_DIG_SHA256, 0), ==,
                  0);
  g_assert_cmpint(gnutls_x509_crl_export2(crl, GNUTLS_X509_FMT_PEM, &out), ==, 0);
  text = g_strndup((const char *)out.data, out.size);
  gnutls_free(out.data);
  gnutls_x509_crl_deinit(crl);
  write_text(path, text);
  return path;
}

static gboolean
verify(Fixture *f, const char *const *crls, const TestCert *leaf, const char *name, gint64 now,
       GError **error)
{
  g_autoptr(SipclientTrust) trust = sipclient_trust_new(f->ca_file, crls, error);
  GBytes *chain[1];

  if (trust == NULL)
    return FALSE;
  chain[0] = leaf->der;
  return sipclient_trust_verify(trust, chain, 1, name, now, error);
}

static gint64
now_s(void)
{
  return g_get_real_time() / G_USEC_PER_SEC;
}

/* Test 6: the host name is a subjectAltName dNSName. */
static void
test_good_dns(Fixture *f, gconstpointer data)
{
  const char *const dns[] = {"other.example.org", "example.com", NULL};
  TestCertSpec spec = {.cn = "not-the-name.example", .dns = dns, .issuer = f->ca};
  g_autoptr(TestCert) leaf = test_cert_new(&spec);
  g_autoptr(GError) error = NULL;

  g_assert_true(verify(f, NULL, leaf, "example.com", now_s(), &error));
  g_assert_no_error(error);
  /* DNS names compare without regard to case. */
  g_assert_true(verify(f, NULL, leaf, "EXAMPLE.com", now_s(), &error));
}

/* Test 7: no dNSName at all, the CN names the host. */
static void
test_good_cn(Fixture *f, gconstpointer data)
{
  const char *const uris[] = {"sip:example.com", NULL};
  TestCertSpec spec = {.cn = "example.com", .uris = uris, .issuer = f->ca};
  g_autoptr(TestCert) leaf = test_cert_new(&spec);
  g_autoptr(GError) error = NULL;

  g_assert_true(verify(f, NULL, leaf, "example.com", now_s(), &error));
  g_assert_no_error(error);
}

/* Test 8: no match, including the cases a looser matcher would accept. */
static void
test_bad_name(Fixture *f, gconstpointer data)
{
  const char *const other[] = {"other.example.com", NULL};
  const char *const wild[] = {"*.example.com", NULL};
  TestCertSpec s1 = {.cn = "example.com", .dns = other, .issuer = f->ca};
  TestCertSpec s2 = {.dns = wild, .issuer = f->ca};
  TestCertSpec s3 = {.cn = "*.example.com", .issuer = f->ca};
  g_autoptr(TestCert) cn_ignored = test_cert_new(&s1);
  g_autoptr(TestCert) wildcard = test_cert_new(&s2);
  g_autoptr(TestCert) cn_wild = test_cert_new(&s3);
  g_autoptr(GError) error = NULL;

  /* The CN does not count when there are dNSNames, even non-matching ones. */
  g_assert_false(verify(f, NULL, cn_ignored, "example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_NAME);
  g_assert_nonnull(strstr(error->message, "example.com"));
  g_clear_error(&error);
  /* No wildcards in dNSNames. */
  g_assert_false(verify(f, NULL, wildcard, "sip.example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_NAME);
  g_clear_error(&error);
  /* Nor in the CN (we match it exactly too). */
  g_assert_false(verify(f, NULL, cn_wild, "sip.example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_NAME);
}

/* Test 9: the chain ends at a CA that is not a trust anchor, or is
 * self-signed. */
static void
test_untrusted(Fixture *f, gconstpointer data)
{
  TestCertSpec s1 = {.dns = dns_example, .issuer = f->other_ca};
  TestCertSpec s2 = {.cn = "example.com", .dns = dns_example};
  g_autoptr(TestCert) foreign = test_cert_new(&s1);
  g_autoptr(TestCert) self = test_cert_new(&s2);
  g_autoptr(GError) error = NULL;

  g_assert_false(verify(f, NULL, foreign, "example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED);
  g_clear_error(&error);
  g_assert_false(verify(f, NULL, self, "example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED);
}

/* Test 10: outside the validity period, either way; and at a chosen now. */
static void
test_validity(Fixture *f, gconstpointer data)
{
  gint64 now = now_s();
  TestCertSpec s1 = {.dns = dns_example,
                     .issuer = f->ca,
                     .not_before = now - 86400 * 10,
                     .not_after = now - 86400};
  TestCertSpec s2 = {.dns = dns_example,
                     .issuer = f->ca,
                     .not_before = now + 86400,
                     .not_after = now + 86400 * 10};
  TestCertSpec s3 = {.dns = dns_example, .issuer = f->ca};
  g_autoptr(TestCert) expired = test_cert_new(&s1);
  g_autoptr(TestCert) future = test_cert_new(&s2);
  g_autoptr(TestCert) good = test_cert_new(&s3);
  g_autoptr(GError) error = NULL;

  g_assert_false(verify(f, NULL, expired, "example.com", now, &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_VALIDITY);
  g_assert_nonnull(strstr(error->message, "expired"));
  g_clear_error(&error);
  g_assert_false(verify(f, NULL, future, "example.com", now, &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_VALIDITY);
  g_assert_nonnull(strstr(error->message, "not yet valid"));
  g_clear_error(&error);
  /* The good one, two days later (it lasts one). */
  g_assert_false(verify(f, NULL, good, "example.com", now + 2 * 86400, &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_VALIDITY);
}

/* Test 11: revoked under a CRL of the trust anchor; another certificate of
 * the same CA stays good; a CRL not signed by an anchor is refused. */
static void
test_revoked(Fixture *f, gconstpointer data)
{
  TestCertSpec spec = {.dns = dns_example, .issuer = f->ca};
  g_autoptr(TestCert) revoked = test_cert_new(&spec);
  g_autoptr(TestCert) kept = test_cert_new(&spec);
  g_autofree char *crl = write_crl(f, "ca.crl", f->ca, revoked);
  g_autofree char *foreign = write_crl(f, "other.crl", f->other_ca, kept);
  const char *crls[] = {crl, NULL};
  const char *bad[] = {foreign, NULL};
  g_autoptr(GError) error = NULL;

  g_assert_false(verify(f, crls, revoked, "example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_REVOKED);
  g_clear_error(&error);
  g_assert_true(verify(f, crls, kept, "example.com", now_s(), &error));
  g_assert_no_error(error);
  /* Without the CRL the revoked one passes: the CRL is what decides. */
  g_assert_true(verify(f, NULL, revoked, "example.com", now_s(), &error));
  g_assert_no_error(error);
  g_assert_false(verify(f, bad, kept, "example.com", now_s(), &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE);
}

static void
test_ca_file(Fixture *f, gconstpointer data)
{
  g_autofree char *empty = g_build_filename(f->dir, "empty.pem", NULL);
  g_autofree char *missing = g_build_filename(f->dir, "missing.pem", NULL);
  g_autoptr(GError) error = NULL;
  SipclientTrust *trust;

  write_text(empty, "not a certificate\n");
  trust = sipclient_trust_new(empty, NULL, &error);
  g_assert_null(trust);
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE);
  g_clear_error(&error);
  trust = sipclient_trust_new(missing, NULL, &error);
  g_assert_null(trust);
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE);
}

/* The Authorization the client computes is accepted by the server side;
 * SHA-256 is chosen over MD5, and a wrong password is refused. */
static void
test_digest(void)
{
  const guint8 secret[32] = {1, 2, 3};
  g_autoptr(CoreDigest) digest = core_digest_new("example.com", secret, sizeof secret, 300, NULL);
  gint64 now = now_s();
  g_auto(GStrv) ch = core_digest_challenges(digest, now, FALSE);
  g_autoptr(GPtrArray) values = g_ptr_array_new();
  g_autofree char *auth = NULL;
  g_autofree char *bad = NULL;
  g_autofree char *ha1 = NULL;
  g_autoptr(CoreDigestCredentials) creds = NULL;
  g_autoptr(CoreDigestCredentials) bad_creds = NULL;
  g_autoptr(GError) error = NULL;

  /* MD5 first in the list: the client must still pick SHA-256. */
  for (gint i = (gint)g_strv_length(ch) - 1; i >= 0; i--)
    g_ptr_array_add(values, ch[i]);
  auth = sipclient_digest_authorization(values, "bob", "s3cret", "PUBLISH", "sip:bob@example.com",
                                        1, &error);
  g_assert_no_error(error);
  g_assert_true(core_digest_parse(auth, &creds, &error));
  g_assert_cmpint(core_digest_credentials_get_algorithm(creds), ==, CORE_DIGEST_ALGORITHM_SHA256);
  ha1 = core_digest_ha1(CORE_DIGEST_ALGORITHM_SHA256, "bob", "example.com", "s3cret");
  g_assert_cmpint(
      core_digest_check(digest, creds, "PUBLISH", "sip:bob@example.com", ha1, now, &error), ==,
      CORE_DIGEST_RESULT_OK);
  g_assert_no_error(error);

  bad = sipclient_digest_authorization(values, "bob", "wrong", "PUBLISH", "sip:bob@example.com", 2,
                                       &error);
  g_assert_true(core_digest_parse(bad, &bad_creds, &error));
  g_assert_cmpint(
      core_digest_check(digest, bad_creds, "PUBLISH", "sip:bob@example.com", ha1, now, NULL), ==,
      CORE_DIGEST_RESULT_BAD);

  /* Nothing usable: a Basic challenge, or digest without qop=auth. */
  g_autoptr(GPtrArray) unusable = g_ptr_array_new();
  g_ptr_array_add(unusable, (gpointer) "Basic realm=\"x\"");
  g_ptr_array_add(unusable, (gpointer) "Digest realm=\"x\", nonce=\"n\", algorithm=MD5");
  g_assert_null(
      sipclient_digest_authorization(unusable, "bob", "pw", "PUBLISH", "sip:x", 1, &error));
  g_assert_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_AUTH);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add("/sipclient/verify/good-dns", Fixture, NULL, fixture_set_up, test_good_dns,
             fixture_tear_down);
  g_test_add("/sipclient/verify/good-cn", Fixture, NULL, fixture_set_up, test_good_cn,
             fixture_tear_down);
  g_test_add("/sipclient/verify/bad-name", Fixture, NULL, fixture_set_up, test_bad_name,
             fixture_tear_down);
  g_test_add("/sipclient/verify/untrusted", Fixture, NULL, fixture_set_up, test_untrusted,
             fixture_tear_down);
  g_test_add("/sipclient/verify/validity", Fixture, NULL, fixture_set_up, test_validity,
             fixture_tear_down);
  g_test_add("/sipclient/verify/revoked", Fixture, NULL, fixture_set_up, test_revoked,
             fixture_tear_down);
  g_test_add("/sipclient/verify/ca-file", Fixture, NULL, fixture_set_up, test_ca_file,
             fixture_tear_down);
  g_test_add_func("/sipclient/digest/authorization", test_digest);
  return g_test_run();
}
