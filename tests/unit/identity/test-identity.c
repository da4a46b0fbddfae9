#define G_LOG_DOMAIN "sipcred-test-identity"

#include <string.h>

#include <glib.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

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

/* Self-signed means the certificate's own key signed it, not only that the
 * names agree: a CA-issued certificate that copies its issuer's name is not. */
static void
test_self_signed(void)
{
  const char *uris[] = {AOR, NULL};
  TestCertSpec own = {.cn = "alice", .uris = uris};
  TestCertSpec same_name = {.cn = "sipcred test CA", .uris = uris, .issuer = ca_cert};
  g_autoptr(TestCert) self = test_cert_new(&own);
  g_autoptr(TestCert) issued = user_cert(uris, 0, 0);
  g_autoptr(TestCert) copied = test_cert_new(&same_name);
  g_autoptr(IdentCert) c1 = parse_ok(self->der);
  g_autoptr(IdentCert) c2 = parse_ok(issued->der);
  g_autoptr(IdentCert) c3 = parse_ok(copied->der);

  g_assert_true(ident_cert_is_self_signed(c1));
  g_assert_false(ident_cert_is_self_signed(c2));
  g_assert_false(ident_cert_is_self_signed(c3));
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

/* ---- describing ---- */

static void
test_describe(void)
{
  const char *uris[] = {AOR, NULL};
  const char *dns[] = {"example.com", NULL};
  TestCertSpec spec = {.cn = "Alice\x1b[31m", .uris = uris, .dns = dns, .issuer = ca_cert};
  g_autoptr(TestCert) tc = test_cert_new(&spec);
  g_autoptr(IdentCert) cert = parse_ok(tc->der);
  g_autofree char *subject = ident_cert_dup_subject(cert);
  g_autofree char *issuer = ident_cert_dup_issuer(cert);
  g_auto(GStrv) names = ident_cert_dup_alt_names(cert);
  g_autofree char *fp = ident_cert_dup_fingerprint(cert);
  g_autofree char *key = ident_cert_dup_key_description(cert);
  g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
  g_autofree char *expected_fp = NULL;

  g_test_message("subject %s issuer %s key %s", subject, issuer, key);
  /* The escape character of a terminal sequence is never passed through. */
  g_assert_null(strchr(subject, '\x1b'));
  g_assert_true(g_str_has_prefix(subject, "CN=Alice"));
  g_assert_cmpstr(issuer, ==, "CN=sipcred test CA");
  g_assert_cmpuint(g_strv_length(names), ==, 2);
  g_assert_cmpstr(names[0], ==, "URI:" AOR);
  g_assert_cmpstr(names[1], ==, "DNS:example.com");
  g_assert_cmpstr(key, ==, "ECDSA 256 bits");

  g_checksum_update(sum, g_bytes_get_data(tc->der, NULL), g_bytes_get_size(tc->der));
  expected_fp = g_ascii_strup(g_checksum_get_string(sum), -1);
  g_assert_cmpuint(strlen(fp), ==, 95);
  for (guint i = 0, j = 0; i < strlen(fp); i++) {
    if (i % 3 == 2) {
      g_assert_cmpint(fp[i], ==, ':');
      continue;
    }
    g_assert_cmpint(fp[i], ==, expected_fp[j++]);
  }
}

/* ---- generating credentials (RFC 6072 section 10.6) ---- */

static gnutls_x509_crt_t
import_der(GBytes *der)
{
  gnutls_x509_crt_t crt;
  gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(der, NULL),
                       (unsigned int)g_bytes_get_size(der)};

  g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_import(crt, &in, GNUTLS_X509_FMT_DER), ==, 0);
  return crt;
}

static void
assert_generated(const char *aor, guint bits, guint days)
{
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) pkcs8 = NULL;
  g_autoptr(IdentCert) cert = ident_cert_generate(aor, bits, days, now, &pkcs8, &error);
  g_autoptr(GBytes) again = NULL;
  gnutls_x509_crt_t crt;
  gnutls_x509_privkey_t key;
  gnutls_datum_t dn = {NULL, 0}, issuer = {NULL, 0};
  unsigned int crit = 0, ca = 1, usage = 0, pk_bits = 0, verify = 0;
  int pathlen = 0;
  char san[1024];
  size_t san_len = sizeof san;
  gint64 span;
  gnutls_datum_t in;

  g_assert_no_error(error);
  g_assert_nonnull(cert);
  g_assert_nonnull(pkcs8);
  crt = import_der(ident_cert_get_der(cert));

  g_assert_cmpint(gnutls_x509_crt_get_version(crt), ==, 3);
  /* Self-signed: issuer = subject, and the signature verifies with its own key. */
  g_assert_cmpint(gnutls_x509_crt_get_dn3(crt, &dn, 0), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_get_issuer_dn3(crt, &issuer, 0), ==, 0);
  g_assert_cmpmem(dn.data, dn.size, issuer.data, issuer.size);
  if (strlen(aor) <= 64) {
    g_autofree char *cn = g_strdup_printf("CN=%s", aor);
    g_assert_cmpmem(dn.data, dn.size, cn, strlen(cn));
  }
  gnutls_free(dn.data);
  gnutls_free(issuer.data);
  g_assert_cmpint(gnutls_x509_crt_verify(crt, &crt, 1, 0, &verify), ==, 0);
  g_assert_cmpuint(verify, ==, 0);
  g_assert_cmpint(gnutls_x509_crt_get_signature_algorithm(crt), ==, GNUTLS_SIGN_RSA_SHA256);
  g_assert_cmpint(gnutls_x509_crt_get_pk_algorithm(crt, &pk_bits), ==, GNUTLS_PK_RSA);
  g_assert_cmpuint(pk_bits, ==, bits);

  /* SAN URI = the AOR, and nothing else. */
  g_assert_cmpint(gnutls_x509_crt_get_subject_alt_name(crt, 0, san, &san_len, &crit), ==,
                  GNUTLS_SAN_URI);
  g_assert_cmpmem(san, san_len, aor, strlen(aor));
  san_len = sizeof san;
  g_assert_cmpint(gnutls_x509_crt_get_subject_alt_name(crt, 1, san, &san_len, &crit), ==,
                  GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);

  /* cA false, and said so in a critical basicConstraints. */
  g_assert_cmpint(gnutls_x509_crt_get_basic_constraints(crt, &crit, &ca, &pathlen), >=, 0);
  g_assert_cmpuint(ca, ==, 0);
  g_assert_cmpuint(crit, ==, 1);
  g_assert_cmpint(gnutls_x509_crt_get_key_usage(crt, &usage, &crit), >=, 0);
  g_assert_cmpuint(usage, ==, GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_ENCIPHERMENT);

  /* At most @days, at least 90 % of it; valid now. */
  span = ident_cert_get_not_after(cert) - ident_cert_get_not_before(cert);
  g_assert_cmpint(ident_cert_get_not_before(cert), ==, now - IDENT_CRED_BACKDATE);
  g_assert_cmpint(span, <=, (gint64)days * 86400);
  g_assert_cmpint(span, >=, (gint64)days * 86400 * 9 / 10);
  g_assert_true(ident_cert_check_user_profile(cert, aor, now, &error));
  g_assert_no_error(error);

  /* The PKCS#8 is plain and holds the certificate's key. */
  in.data = (unsigned char *)g_bytes_get_data(pkcs8, NULL);
  in.size = (unsigned int)g_bytes_get_size(pkcs8);
  g_assert_cmpint(gnutls_x509_privkey_init(&key), ==, 0);
  g_assert_cmpint(
      gnutls_x509_privkey_import_pkcs8(key, &in, GNUTLS_X509_FMT_DER, NULL, GNUTLS_PKCS_PLAIN), ==,
      0);
  gnutls_x509_privkey_deinit(key);
  again = ident_cert_match_private_key(cert, in.data, in.size, &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(again, pkcs8));
  gnutls_x509_crt_deinit(crt);
}

static void
test_generate_profile(void)
{
  assert_generated(AOR, 2048, 365);
  assert_generated("sip:bob@example.org", 3072, 30);
  /* Too long for a CN: the subject falls back, the SAN still names it. */
  assert_generated("sip:a-very-long-user-name-that-goes-on-and-on@a-long-host.example.com", 2048,
                   1);
}

static void
test_generate_jitter(void)
{
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  GHashTable *spans = g_hash_table_new(g_int64_hash, g_int64_equal);
  gint64 values[4];

  /* Renewals spread out: four credentials made at the same moment do not all
   * expire together (chance of a false failure: about 1e-20). */
  for (guint i = 0; i < G_N_ELEMENTS(values); i++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) pkcs8 = NULL;
    g_autoptr(IdentCert) cert = ident_cert_generate(AOR, 2048, 365, now, &pkcs8, &error);

    g_assert_no_error(error);
    values[i] = ident_cert_get_not_after(cert);
    g_hash_table_add(spans, &values[i]);
  }
  g_assert_cmpuint(g_hash_table_size(spans), >, 1);
  g_hash_table_unref(spans);
}

static void
test_generate_refused(void)
{
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  const struct {
    const char *aor;
    guint bits, days;
    const char *mentions;
  } cases[] = {
      {AOR, 1024, 365, "1024"},
      {AOR, 4096, 365, "4096"},
      {AOR, 2048, 0, "0 days"},
      {AOR, 2048, 366, "366 days"},
      {"alice@example.com", 2048, 365, "alice@example.com"},
  };

  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) pkcs8 = NULL;
    g_autoptr(IdentCert) cert =
        ident_cert_generate(cases[i].aor, cases[i].bits, cases[i].days, now, &pkcs8, &error);

    g_assert_null(cert);
    g_assert_null(pkcs8);
    g_assert_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE);
    g_assert_nonnull(strstr(error->message, cases[i].mentions));
  }
}

/* ---- private keys ---- */

static void
assert_key_error(IdentCert *cert, const void *data, gsize len, const char *mentions)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) pkcs8 = ident_cert_match_private_key(cert, data, len, &error);

  g_assert_null(pkcs8);
  g_assert_error(error, IDENT_ERROR, IDENT_ERROR_KEY);
  g_test_message("%s", error->message);
  if (mentions != NULL)
    g_assert_nonnull(strstr(error->message, mentions));
}

static void
test_key_match(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) tc = user_cert(uris, 0, 0);
  g_autoptr(TestCert) other = user_cert(uris, 0, 0);
  g_autoptr(IdentCert) cert = parse_ok(tc->der);
  g_autofree char *pem = test_cert_get_key_pem(tc);
  g_autofree char *other_pem = test_cert_get_key_pem(other);
  g_autoptr(GBytes) der = test_cert_export_key(tc, GNUTLS_X509_FMT_DER, GNUTLS_PKCS_PLAIN, NULL);
  g_autoptr(GBytes) enc_pem =
      test_cert_export_key(tc, GNUTLS_X509_FMT_PEM, GNUTLS_PKCS_PBES2_AES_256, "secret");
  g_autoptr(GBytes) enc_der =
      test_cert_export_key(tc, GNUTLS_X509_FMT_DER, GNUTLS_PKCS_PBES2_AES_256, "secret");
  g_autofree char *cert_pem = test_cert_get_pem(tc);
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) from_pem = NULL;
  g_autoptr(GBytes) from_der = NULL;
  gnutls_datum_t sec1 = {NULL, 0};

  /* PEM, DER, and a combined certificate+key PEM: all the same PKCS#8. */
  from_pem = ident_cert_match_private_key(cert, (const guint8 *)pem, strlen(pem), &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(from_pem, der));
  from_der = ident_cert_match_private_key(cert, g_bytes_get_data(der, NULL), g_bytes_get_size(der),
                                          &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(from_der, der));
  {
    g_autofree char *combined = g_strconcat(cert_pem, pem, NULL);
    g_autoptr(GBytes) k =
        ident_cert_match_private_key(cert, (const guint8 *)combined, strlen(combined), &error);
    g_assert_no_error(error);
    g_assert_true(g_bytes_equal(k, der));
  }
  /* The SEC 1 "EC PRIVATE KEY" form too. */
  g_assert_cmpint(gnutls_x509_privkey_export2(tc->key, GNUTLS_X509_FMT_PEM, &sec1), ==, 0);
  g_assert_nonnull(g_strstr_len((const char *)sec1.data, sec1.size, "EC PRIVATE KEY"));
  {
    g_autoptr(GBytes) k = ident_cert_match_private_key(cert, sec1.data, sec1.size, &error);
    g_assert_no_error(error);
    g_assert_true(g_bytes_equal(k, der));
  }
  gnutls_free(sec1.data);

  assert_key_error(cert, other_pem, strlen(other_pem), "does not belong");
  assert_key_error(cert, g_bytes_get_data(enc_pem, NULL), g_bytes_get_size(enc_pem), "encrypted");
  assert_key_error(cert, g_bytes_get_data(enc_der, NULL), g_bytes_get_size(enc_der), "encrypted");
  assert_key_error(cert, cert_pem, strlen(cert_pem), NULL);
  assert_key_error(cert, "", 0, "empty");
  assert_key_error(cert, "junk", 4, NULL);
  assert_key_error(cert, g_bytes_get_data(der, NULL), g_bytes_get_size(der) / 2, NULL);
}

static void
assert_pkcs8_error(const void *data, gsize len, const char *mentions)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) der = ident_pkcs8_check_encrypted(data, len, NULL, &error);

  g_assert_null(der);
  g_assert_error(error, IDENT_ERROR, IDENT_ERROR_KEY);
  if (mentions != NULL && strstr(error->message, mentions) == NULL)
    g_error("\"%s\" lacks \"%s\"", error->message, mentions);
}

static void
test_pkcs8_encrypted(void)
{
  const char *uris[] = {AOR, NULL};
  g_autoptr(TestCert) tc = user_cert(uris, 0, 0);
  g_autoptr(GBytes) pem =
      test_cert_export_key(tc, GNUTLS_X509_FMT_PEM, GNUTLS_PKCS_PBES2_AES_128, "pass phrase");
  g_autoptr(GBytes) der =
      test_cert_export_key(tc, GNUTLS_X509_FMT_DER, GNUTLS_PKCS_PBES2_AES_128, "pass phrase");
  g_autoptr(GBytes) plain = test_cert_export_key(tc, GNUTLS_X509_FMT_DER, GNUTLS_PKCS_PLAIN, NULL);
  g_autoptr(GBytes) plain_pem =
      test_cert_export_key(tc, GNUTLS_X509_FMT_PEM, GNUTLS_PKCS_PLAIN, NULL);
  g_autoptr(GBytes) pkcs12 =
      test_cert_export_key(tc, GNUTLS_X509_FMT_DER, GNUTLS_PKCS_PKCS12_3DES, "pass phrase");
  /* aes128-cbc, as GnuTLS writes it, and the last octet of its OID. */
  static const guint8 aes128_cbc[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                      0x65, 0x03, 0x04, 0x01, 0x02};
  g_autoptr(GError) error = NULL;
  g_autofree char *scheme = NULL;
  g_autoptr(GBytes) out = NULL;
  gsize len = 0;
  const guint8 *d = g_bytes_get_data(der, &len);
  g_autofree guint8 *buf = g_malloc(len + 1);
  const guint8 *oid;

  gnutls_datum_t pem_in = {(unsigned char *)g_bytes_get_data(pem, NULL),
                           (unsigned int)g_bytes_get_size(pem)};
  gnutls_datum_t pem_der = {NULL, 0};

  out = ident_pkcs8_check_encrypted(pem_in.data, pem_in.size, &scheme, &error);
  g_assert_no_error(error);
  /* PEM in, its DER out: the blob itself is kept as it was. */
  g_assert_cmpint(gnutls_pem_base64_decode2("ENCRYPTED PRIVATE KEY", &pem_in, &pem_der), ==, 0);
  g_assert_cmpmem(g_bytes_get_data(out, NULL), g_bytes_get_size(out), pem_der.data, pem_der.size);
  gnutls_free(pem_der.data);
  g_assert_cmpstr(scheme, ==, "PBES2, PBKDF2 hmacWithSHA256, aes128-cbc");
  g_clear_pointer(&out, g_bytes_unref);
  g_clear_pointer(&scheme, g_free);
  out = ident_pkcs8_check_encrypted(d, len, &scheme, &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(out, der));
  g_clear_pointer(&out, g_bytes_unref);
  g_clear_pointer(&scheme, g_free);

  /* RFC 6072's id-aes128-wrap-pad, which GnuTLS itself cannot decrypt. */
  memcpy(buf, d, len);
  oid = memmem(buf, len, aes128_cbc, sizeof aes128_cbc);
  g_assert_nonnull(oid);
  buf[oid - buf + sizeof aes128_cbc - 1] = 0x08;
  out = ident_pkcs8_check_encrypted(buf, len, &scheme, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(scheme, ==, "PBES2, PBKDF2 hmacWithSHA256, aes128-wrap-pad");
  g_clear_pointer(&out, g_bytes_unref);

  assert_pkcs8_error(g_bytes_get_data(plain, NULL), g_bytes_get_size(plain), "unencrypted");
  assert_pkcs8_error(g_bytes_get_data(plain_pem, NULL), g_bytes_get_size(plain_pem),
                     "ENCRYPTED PRIVATE KEY");
  assert_pkcs8_error(g_bytes_get_data(pkcs12, NULL), g_bytes_get_size(pkcs12), "only PBES2");
  assert_pkcs8_error("", 0, "empty");
  /* Trailing data, and every truncation: refused, never read past the end. */
  memcpy(buf, d, len);
  buf[len] = 0;
  assert_pkcs8_error(buf, len + 1, "trailing");
  for (gsize cut = 0; cut < len; cut++) {
    g_autofree guint8 *copy = g_memdup2(d, cut);
    assert_pkcs8_error(copy, cut, NULL);
  }
  /* Single-bit damage in the structure (not in the salt or ciphertext, where
   * it is undetectable without the password) is refused or at worst still
   * parses: it must never crash. */
  for (gsize i = 0; i < len; i++) {
    g_autoptr(GBytes) res = NULL;
    memcpy(buf, d, len);
    buf[i] ^= 0x80;
    res = ident_pkcs8_check_encrypted(buf, len, NULL, NULL);
  }
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
  g_test_add_func("/identity/cert/self-signed", test_self_signed);
  g_test_add_func("/identity/profile/no-san", test_profile_no_san);
  g_test_add_func("/identity/profile/other-aor", test_profile_other_aor);
  g_test_add_func("/identity/profile/validity", test_profile_validity);
  g_test_add_func("/identity/profile/ca", test_profile_ca);
  g_test_add_func("/identity/profile/bad-aor", test_profile_bad_aor);
  g_test_add_func("/identity/cert/dns-names", test_dns_names);
  g_test_add_func("/identity/cert/describe", test_describe);
  g_test_add_func("/identity/generate/profile", test_generate_profile);
  g_test_add_func("/identity/generate/jitter", test_generate_jitter);
  g_test_add_func("/identity/generate/refused", test_generate_refused);
  g_test_add_func("/identity/key/match", test_key_match);
  g_test_add_func("/identity/pkcs8/encrypted", test_pkcs8_encrypted);

  rc = g_test_run();
  test_cert_free(ca_cert);
  return rc;
}
