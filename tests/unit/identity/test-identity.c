#define G_LOG_DOMAIN "sipcred-test-identity"

#include <string.h>

#include <glib.h>

#include "identity/cert.h"
#include "testcert.h"

#define AOR "sip:alice@example.com"

static TestCert *ca_cert;

static TestCert *
user_cert(const char *const *uris, gint64 nb, gint64 na)
{
  TestCertSpec spec = {
      .cn = "Alice",
      .uris = uris,
      .not_before = nb,
      .not_after = na,
      .issuer = ca_cert,
  };
  return test_cert_new(&spec);
}

static IdentCert *
parse_ok(GBytes *bytes)
{
  g_autoptr(GError) error = NULL;
  IdentCert *cert =
      ident_cert_new_from_data(g_bytes_get_data(bytes, NULL), g_bytes_get_size(bytes), &error);

  g_assert_no_error(error);
  g_assert_nonnull(cert);
  return cert;
}

static void
assert_parse_error(const void *data, gsize len)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCert) cert = ident_cert_new_from_data(data, len, &error);

  g_assert_null(cert);
  g_assert_error(error, IDENT_ERROR, IDENT_ERROR_PARSE);
}

/* ---- parsing ---- */

static void
test_parse_der(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) tc = user_cert(uris, 1000000000, 2000000000);
  g_autoptr(IdentCert) cert = parse_ok(tc->der);

  g_assert_true(g_bytes_equal(ident_cert_get_der(cert), tc->der));
  g_assert_cmpint(ident_cert_get_not_before(cert), ==, 1000000000);
  g_assert_cmpint(ident_cert_get_not_after(cert), ==, 2000000000);
}

static void
test_parse_pem(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) tc = user_cert(uris, 1000000000, 2000000000);
  g_autofree char *pem = test_cert_get_pem(tc);
  g_autoptr(GBytes) bytes = g_bytes_new(pem, strlen(pem));
  g_autoptr(IdentCert) cert = parse_ok(bytes);

  /* PEM in, the same DER out. */
  g_assert_true(g_bytes_equal(ident_cert_get_der(cert), tc->der));
  g_assert_cmpint(ident_cert_get_not_after(cert), ==, 2000000000);
}

static void
test_parse_pem_first_block(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) first = user_cert(uris, 0, 0);
  g_autofree char *key = test_cert_get_key_pem(first);
  g_autofree char *pem1 = test_cert_get_pem(first);
  g_autofree char *pem2 = test_cert_get_pem(ca_cert);
  /* A key block first, then the leaf, then its chain: the leaf is taken. */
  g_autofree char *bundle = g_strconcat("junk before\n", key, pem1, pem2, NULL);
  g_autoptr(GBytes) bytes = g_bytes_new(bundle, strlen(bundle));
  g_autoptr(IdentCert) cert = parse_ok(bytes);

  g_assert_true(g_bytes_equal(ident_cert_get_der(cert), first->der));
}

static void
test_parse_garbage(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) tc = user_cert(uris, 0, 0);
  gsize len = 0;
  const guint8 *der = g_bytes_get_data(tc->der, &len);
  g_autofree char *pem = test_cert_get_pem(tc);
  g_autofree guint8 *trailing = g_malloc(len + 4);
  g_autofree guint8 *flipped = g_memdup2(der, len);
  static const char broken_pem[] = "-----BEGIN CERTIFICATE-----\n@@@ not base64 @@@\n"
                                   "-----END CERTIFICATE-----\n";
  g_autofree char *key_only = test_cert_get_key_pem(tc);
  guint8 random_bytes[512];

  for (guint i = 0; i < sizeof random_bytes; i++)
    random_bytes[i] = (guint8)g_test_rand_int();
  random_bytes[0] = 0x17; /* not a DER SEQUENCE either */

  assert_parse_error("", 0);
  assert_parse_error("hello world", 11);
  assert_parse_error(random_bytes, sizeof random_bytes);
  assert_parse_error(der, len / 2);
  assert_parse_error(der, len - 1);
  assert_parse_error(broken_pem, strlen(broken_pem));
  assert_parse_error(key_only, strlen(key_only));
  /* A PEM cut in the middle of its base64. */
  assert_parse_error(pem, strlen(pem) / 2);

  memcpy(trailing, der, len);
  memcpy(trailing + len, "JUNK", 4);
  assert_parse_error(trailing, len + 4);

  /* Break the outer SEQUENCE tag. */
  flipped[0] ^= 0xff;
  assert_parse_error(flipped, len);
}

/* ---- the user profile ---- */

static void
assert_profile(TestCert *tc, const char *aor, gint64 now, int code, const char *mentions)
{
  g_autoptr(IdentCert) cert = parse_ok(tc->der);
  g_autoptr(GError) error = NULL;
  gboolean ok = ident_cert_check_user_profile(cert, aor, now, &error);

  if (code < 0) {
    g_assert_no_error(error);
    g_assert_true(ok);
    return;
  }
  g_assert_false(ok);
  g_assert_error(error, IDENT_ERROR, code);
  g_test_message("%s", error->message);
  if (mentions != NULL)
    g_assert_nonnull(strstr(error->message, mentions));
}

static void
test_profile_good(void)
{
  const char *sip[] = {"sip:alice@example.com", NULL};
  const char *sips[] = {"sips:alice@EXAMPLE.com", NULL};
  const char *im[] = {"mailto:alice@example.com", "im:alice@example.com", NULL};
  const char *pres[] = {"pres:alice@Example.Com", NULL};
  g_autoptr(TestCert) c1 = user_cert(sip, 0, 0);
  g_autoptr(TestCert) c2 = user_cert(sips, 0, 0);
  g_autoptr(TestCert) c3 = user_cert(im, 0, 0);
  g_autoptr(TestCert) c4 = user_cert(pres, 0, 0);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  assert_profile(c1, AOR, now, -1, NULL);
  assert_profile(c2, AOR, now, -1, NULL);
  assert_profile(c3, AOR, now, -1, NULL);
  assert_profile(c4, AOR, now, -1, NULL);
}

static void
test_profile_self_signed(void)
{
  const char *uris[] = {AOR, NULL};
  TestCertSpec spec = {.cn = "alice", .uris = uris};
  g_autoptr(TestCert) tc = test_cert_new(&spec);

  /* RFC 6072 certificates are usually self-signed: that is fine. */
  assert_profile(tc, AOR, g_get_real_time() / G_USEC_PER_SEC, -1, NULL);
}

static void
test_profile_no_san(void)
{
  g_autoptr(TestCert) tc = user_cert(NULL, 0, 0);

  assert_profile(tc, AOR, g_get_real_time() / G_USEC_PER_SEC, IDENT_ERROR_PROFILE,
                 "subjectAltName");
}

static void
test_profile_other_aor(void)
{
  const char *bob[] = {"sip:bob@example.com", NULL};
  const char *upper_user[] = {"sip:Alice@example.com", NULL};
  const char *other_host[] = {"sip:alice@example.org", NULL};
  const char *bad_scheme[] = {"http:alice@example.com", "mailto:alice@example.com", NULL};
  const char *suffix[] = {"sip:alice@example.com.evil", "sip:xalice@example.com", NULL};
  const char *params[] = {"sip:alice@example.com;transport=tls", NULL};
  const char *dns[] = {"example.com", NULL};
  TestCertSpec dns_only = {.cn = AOR, .dns = dns, .issuer = NULL};
  g_autoptr(TestCert) c1 = user_cert(bob, 0, 0);
  g_autoptr(TestCert) c2 = user_cert(upper_user, 0, 0);
  g_autoptr(TestCert) c3 = user_cert(other_host, 0, 0);
  g_autoptr(TestCert) c4 = user_cert(bad_scheme, 0, 0);
  g_autoptr(TestCert) c5 = user_cert(suffix, 0, 0);
  g_autoptr(TestCert) c6 = user_cert(params, 0, 0);
  g_autoptr(TestCert) c7 = test_cert_new(&dns_only);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  assert_profile(c1, AOR, now, IDENT_ERROR_PROFILE, "sip:bob@example.com");
  assert_profile(c2, AOR, now, IDENT_ERROR_PROFILE, "subjectAltName");
  assert_profile(c3, AOR, now, IDENT_ERROR_PROFILE, "subjectAltName");
  assert_profile(c4, AOR, now, IDENT_ERROR_PROFILE, "subjectAltName");
  assert_profile(c5, AOR, now, IDENT_ERROR_PROFILE, "subjectAltName");
  assert_profile(c6, AOR, now, IDENT_ERROR_PROFILE, "subjectAltName");
  /* The AOR in the CN or a dNSName does not count. */
  assert_profile(c7, AOR, now, IDENT_ERROR_PROFILE, "subjectAltName");
  /* And the right cert for another AOR. */
  assert_profile(c1, "sip:bob@example.com", now, -1, NULL);
}

static void
test_profile_validity(void)
{
  const char *uris[] = {AOR, NULL};
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  g_autoptr(TestCert) expired = user_cert(uris, now - 86400 * 30, now - 86400);
  g_autoptr(TestCert) future = user_cert(uris, now + 86400, now + 86400 * 30);
  g_autoptr(TestCert) edge = user_cert(uris, now - 100, now + 100);

  assert_profile(expired, AOR, now, IDENT_ERROR_EXPIRED, "expired");
  assert_profile(future, AOR, now, IDENT_ERROR_EXPIRED, "not yet valid");
  /* The bounds themselves are inside the validity period. */
  assert_profile(edge, AOR, now - 100, -1, NULL);
  assert_profile(edge, AOR, now + 100, -1, NULL);
  assert_profile(edge, AOR, now + 101, IDENT_ERROR_EXPIRED, "notAfter");
  assert_profile(edge, AOR, now - 101, IDENT_ERROR_EXPIRED, "notBefore");
}

static void
test_profile_ca(void)
{
  const char *uris[] = {AOR, NULL};
  TestCertSpec spec = {.cn = "Alice CA", .uris = uris, .ca = TRUE};
  g_autoptr(TestCert) ca_with_san = test_cert_new(&spec);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  /* Even with a matching SAN, a CA certificate is refused. */
  assert_profile(ca_with_san, AOR, now, IDENT_ERROR_PROFILE, "CA");
  assert_profile(ca_cert, AOR, now, IDENT_ERROR_PROFILE, "CA");
}

static void
test_profile_bad_aor(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) tc = user_cert(uris, 0, 0);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  assert_profile(tc, "alice@example.com", now, IDENT_ERROR_PROFILE, "AOR");
  assert_profile(tc, "sip:example.com", now, IDENT_ERROR_PROFILE, "AOR");
  assert_profile(tc, "sip:alice@", now, IDENT_ERROR_PROFILE, "AOR");
}

/* ---- names ---- */

static void
test_dns_names(void)
{
  const char *dns[] = {"example.com", "sip.example.com", NULL};
  const char *uris[] = {AOR, NULL};
  TestCertSpec with_dns = {.cn = "ignored.example", .dns = dns, .uris = uris};
  TestCertSpec cn_only = {.cn = "cn.example.com", .uris = uris};
  TestCertSpec nothing = {.uris = uris};
  g_autoptr(TestCert) c1 = test_cert_new(&with_dns);
  g_autoptr(TestCert) c2 = test_cert_new(&cn_only);
  g_autoptr(TestCert) c3 = test_cert_new(&nothing);
  g_autoptr(IdentCert) i1 = parse_ok(c1->der);
  g_autoptr(IdentCert) i2 = parse_ok(c2->der);
  g_autoptr(IdentCert) i3 = parse_ok(c3->der);
  g_auto(GStrv) n1 = ident_cert_dup_dns_names(i1);
  g_auto(GStrv) n2 = ident_cert_dup_dns_names(i2);
  g_auto(GStrv) n3 = ident_cert_dup_dns_names(i3);

  g_assert_cmpuint(g_strv_length(n1), ==, 2);
  g_assert_cmpstr(n1[0], ==, "example.com");
  g_assert_cmpstr(n1[1], ==, "sip.example.com");
  g_assert_cmpuint(g_strv_length(n2), ==, 1);
  g_assert_cmpstr(n2[0], ==, "cn.example.com");
  g_assert_nonnull(n3);
  g_assert_cmpuint(g_strv_length(n3), ==, 0);
}

int
main(int argc, char **argv)
{
  TestCertSpec ca_spec = {.cn = "sipcred test CA", .ca = TRUE};
  int rc;

  g_test_init(&argc, &argv, NULL);
  ca_cert = test_cert_new(&ca_spec);

  g_test_add_func("/identity/cert/parse-der", test_parse_der);
  g_test_add_func("/identity/cert/parse-pem", test_parse_pem);
  g_test_add_func("/identity/cert/parse-pem-first-block", test_parse_pem_first_block);
  g_test_add_func("/identity/cert/parse-garbage", test_parse_garbage);
  g_test_add_func("/identity/profile/good", test_profile_good);
  g_test_add_func("/identity/profile/self-signed", test_profile_self_signed);
  g_test_add_func("/identity/profile/no-san", test_profile_no_san);
  g_test_add_func("/identity/profile/other-aor", test_profile_other_aor);
  g_test_add_func("/identity/profile/validity", test_profile_validity);
  g_test_add_func("/identity/profile/ca", test_profile_ca);
  g_test_add_func("/identity/profile/bad-aor", test_profile_bad_aor);
  g_test_add_func("/identity/cert/dns-names", test_dns_names);

  rc = g_test_run();
  test_cert_free(ca_cert);
  return rc;
}
