/* Test-only certificate factory: ECDSA P-256 keys and X.509 certificates
 * made with GnuTLS at test time, so no certificate file is committed. */
#pragma once

#include <glib.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

G_BEGIN_DECLS

typedef struct {
  gnutls_x509_crt_t crt;
  gnutls_x509_privkey_t key;
  GBytes *der;
} TestCert;

typedef struct {
  const char *cn;          /* Subject CN, NULL for none */
  const char *const *uris; /* SAN URIs, NULL-terminated, or NULL */
  const char *const *dns;  /* SAN dNSNames, NULL-terminated, or NULL */
  gboolean ca;             /* basicConstraints cA=TRUE and keyCertSign */
  gint64 not_before;       /* unix seconds; 0 with not_after 0: now-60 .. now+1 day */
  gint64 not_after;
  const TestCert *issuer; /* NULL: self-signed */
} TestCertSpec;

TestCert *test_cert_new(const TestCertSpec *spec);
void test_cert_free(TestCert *cert);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestCert, test_cert_free)

/* The certificate as one PEM CERTIFICATE block. */
char *test_cert_get_pem(const TestCert *cert);
/* The private key as PKCS#8 PEM (unencrypted). */
char *test_cert_get_key_pem(const TestCert *cert);
/* The private key as PKCS#8 in @fmt, encrypted with @flags (a
 * gnutls_pkcs_encrypt_flags_t; GNUTLS_PKCS_PLAIN for none) under @password. */
GBytes *test_cert_export_key(const TestCert *cert, gnutls_x509_crt_fmt_t fmt, unsigned int flags,
                             const char *password);

G_END_DECLS
