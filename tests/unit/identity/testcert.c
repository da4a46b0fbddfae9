#define G_LOG_DOMAIN "sipcred-test-cert"

#include "testcert.h"

#include <string.h>

static guint test_cert_serial;

static void
check(int rc, const char *what)
{
  if (rc < 0)
    g_error("%s: %s", what, gnutls_strerror(rc));
}

TestCert *
test_cert_new(const TestCertSpec *spec)
{
  TestCert *cert = g_new0(TestCert, 1);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  gint64 nb = spec->not_before, na = spec->not_after;
  guint8 serial[8];
  gnutls_datum_t der = {NULL, 0};
  unsigned int usage;

  if (nb == 0 && na == 0) {
    nb = now - 60;
    na = now + 86400;
  }
  check(gnutls_x509_privkey_init(&cert->key), "privkey_init");
  check(gnutls_x509_privkey_generate(cert->key, GNUTLS_PK_ECDSA,
                                     GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
        "privkey_generate");
  check(gnutls_x509_crt_init(&cert->crt), "crt_init");
  check(gnutls_x509_crt_set_version(cert->crt, 3), "set_version");
  test_cert_serial++;
  for (guint i = 0; i < sizeof serial; i++)
    serial[i] = (guint8)((guint64)test_cert_serial >> (8 * (sizeof serial - 1 - i)));
  serial[0] = 0x01;
  check(gnutls_x509_crt_set_serial(cert->crt, serial, sizeof serial), "set_serial");
  check(gnutls_x509_crt_set_activation_time(cert->crt, (time_t)nb), "set_activation_time");
  check(gnutls_x509_crt_set_expiration_time(cert->crt, (time_t)na), "set_expiration_time");
  if (spec->cn != NULL)
    check(gnutls_x509_crt_set_dn_by_oid(cert->crt, GNUTLS_OID_X520_COMMON_NAME, 0, spec->cn,
                                        strlen(spec->cn)),
          "set_dn CN");
  for (guint i = 0; spec->uris != NULL && spec->uris[i] != NULL; i++)
    check(gnutls_x509_crt_set_subject_alt_name(cert->crt, GNUTLS_SAN_URI, spec->uris[i],
                                               strlen(spec->uris[i]), GNUTLS_FSAN_APPEND),
          "set SAN URI");
  for (guint i = 0; spec->dns != NULL && spec->dns[i] != NULL; i++)
    check(gnutls_x509_crt_set_subject_alt_name(cert->crt, GNUTLS_SAN_DNSNAME, spec->dns[i],
                                               strlen(spec->dns[i]), GNUTLS_FSAN_APPEND),
          "set SAN DNS");
  check(gnutls_x509_crt_set_basic_constraints(cert->crt, spec->ca ? 1 : 0, -1),
        "set_basic_constraints");
  usage = spec->ca
              ? (GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN | GNUTLS_KEY_DIGITAL_SIGNATURE)
              : (GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_AGREEMENT);
  check(gnutls_x509_crt_set_key_usage(cert->crt, usage), "set_key_usage");
  check(gnutls_x509_crt_set_key(cert->crt, cert->key), "set_key");
  if (spec->issuer != NULL)
    check(gnutls_x509_crt_sign2(cert->crt, spec->issuer->crt, spec->issuer->key, GNUTLS_DIG_SHA256,
                                0),
          "sign2");
  else
    check(gnutls_x509_crt_sign2(cert->crt, cert->crt, cert->key, GNUTLS_DIG_SHA256, 0),
          "self-sign");
  check(gnutls_x509_crt_export2(cert->crt, GNUTLS_X509_FMT_DER, &der), "export DER");
  cert->der = g_bytes_new(der.data, der.size);
  gnutls_free(der.data);
  return cert;
}

void
test_cert_free(TestCert *cert)
{
  if (cert == NULL)
    return;
  gnutls_x509_crt_deinit(cert->crt);
  gnutls_x509_privkey_deinit(cert->key);
  g_bytes_unref(cert->der);
  g_free(cert);
}

char *
test_cert_get_pem(const TestCert *cert)
{
  gnutls_datum_t pem = {NULL, 0};
  char *out;

  check(gnutls_x509_crt_export2(cert->crt, GNUTLS_X509_FMT_PEM, &pem), "export PEM");
  out = g_strndup((const char *)pem.data, pem.size);
  gnutls_free(pem.data);
  return out;
}

char *
test_cert_get_key_pem(const TestCert *cert)
{
  gnutls_datum_t pem = {NULL, 0};
  char *out;

  check(gnutls_x509_privkey_export2_pkcs8(cert->key, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN,
                                          &pem),
        "export key");
  out = g_strndup((const char *)pem.data, pem.size);
  gnutls_free(pem.data);
  return out;
}

GBytes *
test_cert_export_key(const TestCert *cert, gnutls_x509_crt_fmt_t fmt, unsigned int flags,
                     const char *password)
{
  gnutls_datum_t out = {NULL, 0};
  GBytes *bytes;

  check(gnutls_x509_privkey_export2_pkcs8(cert->key, fmt, password, flags, &out),
        "export key PKCS#8");
  bytes = g_bytes_new(out.data, out.size);
  gnutls_free(out.data);
  return bytes;
}
