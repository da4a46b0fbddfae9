/* Fuzz target: the private-key readers of identity/cert.
 *
 * The input goes to ident_pkcs8_check_encrypted() (PEM or DER, whichever it
 * looks like) and to ident_cert_match_private_key() against a fixed ECDSA
 * P-256 certificate. The checker may only accept one DER SEQUENCE that is not
 * a PrivateKeyInfo, describe it as PBES2/PBKDF2, and accept its own output
 * again unchanged; DER input must come back byte for byte. The matcher must
 * refuse everything the checker accepts (an encrypted key is never read as
 * plain); what it accepts must be the fixed key, returned as a PrivateKeyInfo
 * that GnuTLS reads back as that key, that the matcher returns again
 * unchanged and that the checker refuses.
 *
 * The certificate is made once per process from FIXED_KEY_PEM, so that seeds
 * holding that key (see corpus/make-pkcs8-seeds.sh, which reads the key from
 * this file) reach the matcher's success path. The key is public: nothing
 * trusts it. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "identity/cert.h"
#include "fuzz.h"

/* clang-format off */
static const char FIXED_KEY_PEM[] =
  "-----BEGIN PRIVATE KEY-----\n"
  "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRXWg8S/ofpK2KXi0\n"
  "a6D92SmSBJ0umRrRr7g4OQZrI7yhRANCAARNeQgRUoDbOPI3EUqetylywizgJ8xG\n"
  "vHTRmI2RxXRL64xM38M8gtQr8M+iPLrkw3UrdqTK8zhyX8rQia6Iu+Y4\n"
  "-----END PRIVATE KEY-----\n";
/* clang-format on */

#define ENCRYPTED_LABEL "-----BEGIN ENCRYPTED PRIVATE KEY-----"

typedef struct {
  IdentCert *cert;
  guint8 key_id[32]; /* SHA-256 key id of FIXED_KEY_PEM */
} Fixture;

static void
gnutls_or_die(int rc, const char *what)
{
  if (rc < 0) {
    fprintf(stderr, "fixture: %s: %s\n", what, gnutls_strerror(rc));
    abort();
  }
}

/* A self-signed certificate for FIXED_KEY_PEM, made on first use. Read-only
 * afterwards, so no state carries from one input to the next. */
static const Fixture *
fixture_get(void)
{
  static Fixture fixture;
  static const guint8 serial[] = {0x01};
  gnutls_x509_privkey_t key;
  gnutls_x509_crt_t crt;
  gnutls_datum_t in = {(unsigned char *)FIXED_KEY_PEM, sizeof FIXED_KEY_PEM - 1};
  gnutls_datum_t der = {NULL, 0};
  g_autoptr(GError) error = NULL;

  if (fixture.cert != NULL)
    return &fixture;

  gnutls_or_die(gnutls_x509_privkey_init(&key), "privkey_init");
  gnutls_or_die(gnutls_x509_privkey_import(key, &in, GNUTLS_X509_FMT_PEM), "privkey_import");
  gnutls_or_die(gnutls_x509_crt_init(&crt), "crt_init");
  gnutls_or_die(gnutls_x509_crt_set_version(crt, 3), "set_version");
  gnutls_or_die(gnutls_x509_crt_set_serial(crt, serial, sizeof serial), "set_serial");
  gnutls_or_die(gnutls_x509_crt_set_dn(crt, "CN=fuzz-ident-pkcs8", NULL), "set_dn");
  gnutls_or_die(gnutls_x509_crt_set_issuer_dn(crt, "CN=fuzz-ident-pkcs8", NULL), "set_issuer");
  gnutls_or_die(gnutls_x509_crt_set_activation_time(crt, 1577836800), "activation");  /* 2020 */
  gnutls_or_die(gnutls_x509_crt_set_expiration_time(crt, 2208988800), "expiration"); /* 2040 */
  gnutls_or_die(gnutls_x509_crt_set_key(crt, key), "set_key");
  gnutls_or_die(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), "sign");
  gnutls_or_die(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), "export");

  fixture.cert = ident_cert_new_from_data(der.data, der.size, &error);
  if (fixture.cert == NULL) {
    fprintf(stderr, "fixture: certificate does not parse: %s\n", error->message);
    abort();
  }
  size_t id_len = sizeof fixture.key_id;
  gnutls_or_die(gnutls_x509_privkey_get_key_id(key, GNUTLS_KEYID_USE_SHA256, fixture.key_id,
                                               &id_len),
                "get_key_id");
  FUZZ_CHECK(id_len == sizeof fixture.key_id);
  gnutls_free(der.data);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_privkey_deinit(key);
  return &fixture;
}

static gboolean
has_bytes(const guint8 *data, gsize len, const char *needle)
{
  return len > 0 && memmem(data, len, needle, strlen(needle)) != NULL;
}

/* The header length when @der is exactly one definite-length DER SEQUENCE and
 * nothing else; 0 otherwise. */
static gsize
one_sequence_header(const guint8 *der, gsize len)
{
  gsize hdr = 2, n;

  if (len < 2 || der[0] != 0x30)
    return 0;
  n = der[1];
  if (n & 0x80) {
    guint k = n & 0x7f;
    if (k == 0 || k > 4 || len < 2 + k)
      return 0;
    n = 0;
    for (guint i = 0; i < k; i++)
      n = (n << 8) | der[2 + i];
    hdr += k;
  }
  return len - hdr == n ? hdr : 0;
}

static void
check_key_error(const GError *error, gboolean crypto_allowed)
{
  FUZZ_CHECK(error != NULL && error->domain == IDENT_ERROR);
  FUZZ_CHECK(error->code == IDENT_ERROR_KEY ||
             (crypto_allowed && error->code == IDENT_ERROR_CRYPTO));
  FUZZ_CHECK(error->message != NULL && g_utf8_validate(error->message, -1, NULL));
}

/* The matcher on @data; on success the result, which must be the fixed key. */
static GBytes *
match_key(const Fixture *fx, const guint8 *data, gsize len)
{
  g_autoptr(GError) error = NULL;
  GBytes *pkcs8 = ident_cert_match_private_key(fx->cert, data, len, &error);

  if (pkcs8 == NULL) {
    check_key_error(error, TRUE);
    return NULL;
  }
  FUZZ_CHECK(error == NULL);
  /* A PrivateKeyInfo: a SEQUENCE starting with its version INTEGER. (Not
   * always the same bytes for one key: GnuTLS keeps optional fields, such as
   * SEC1's curve parameters, as they came in.) */
  gsize der_len = 0;
  const guint8 *der = g_bytes_get_data(pkcs8, &der_len);
  gsize hdr = one_sequence_header(der, der_len);
  FUZZ_CHECK(hdr != 0 && hdr < der_len && der[hdr] == 0x02);

  /* Read back on its own, it is the certificate's key. */
  gnutls_x509_privkey_t key;
  gnutls_datum_t in = {(unsigned char *)der, (unsigned int)der_len};
  guint8 id[32];
  size_t id_len = sizeof id;
  gnutls_or_die(gnutls_x509_privkey_init(&key), "privkey_init");
  int rc = gnutls_x509_privkey_import_pkcs8(key, &in, GNUTLS_X509_FMT_DER, NULL,
                                            GNUTLS_PKCS_PLAIN);
  if (rc >= 0)
    rc = gnutls_x509_privkey_get_key_id(key, GNUTLS_KEYID_USE_SHA256, id, &id_len);
  gnutls_x509_privkey_deinit(key);
  if (rc < 0) {
    fprintf(stderr, "returned PKCS#8 does not read back: %s\n", gnutls_strerror(rc));
    abort();
  }
  FUZZ_CHECK(id_len == sizeof fx->key_id && memcmp(id, fx->key_id, id_len) == 0);
  return pkcs8;
}

/* The checker on @data; on success the DER, with *@scheme set. */
static GBytes *
check_encrypted(const guint8 *data, gsize len, char **scheme)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *scheme_out = NULL;
  GBytes *der = ident_pkcs8_check_encrypted(data, len, &scheme_out, &error);
  gboolean pem = has_bytes(data, len, "-----BEGIN ");

  if (der == NULL) {
    check_key_error(error, FALSE);
    FUZZ_CHECK(scheme_out == NULL);
    /* The verdict does not depend on asking for the scheme. */
    g_autoptr(GError) error2 = NULL;
    FUZZ_CHECK(ident_pkcs8_check_encrypted(data, len, NULL, &error2) == NULL);
    FUZZ_CHECK(error2 != NULL && error2->code == error->code);
    return NULL;
  }
  FUZZ_CHECK(error == NULL);
  FUZZ_CHECK(scheme_out != NULL && g_str_has_prefix(scheme_out, "PBES2, PBKDF2 "));
  for (const char *c = scheme_out; *c != '\0'; c++)
    FUZZ_CHECK(g_ascii_isprint(*c));

  gsize der_len = 0;
  const guint8 *der_data = g_bytes_get_data(der, &der_len);
  gsize hdr = one_sequence_header(der_data, der_len);
  FUZZ_CHECK(hdr != 0);
  /* An EncryptedPrivateKeyInfo starts with an AlgorithmIdentifier, not the
   * version INTEGER of a PrivateKeyInfo. */
  FUZZ_CHECK(hdr < der_len && der_data[hdr] == 0x30);
  if (pem)
    FUZZ_CHECK(has_bytes(data, len, ENCRYPTED_LABEL));
  else
    FUZZ_CHECK(der_len == len && memcmp(der_data, data, len) == 0);

  {
    g_autoptr(GError) error2 = NULL;
    g_autoptr(GBytes) der2 = ident_pkcs8_check_encrypted(data, len, NULL, &error2);
    FUZZ_CHECK(der2 != NULL && error2 == NULL && g_bytes_equal(der2, der));
  }
  *scheme = g_steal_pointer(&scheme_out);
  return der;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const Fixture *fx = fixture_get();
  g_autofree char *scheme = NULL;
  g_autoptr(GBytes) der = check_encrypted(data, size, &scheme);
  g_autoptr(GBytes) plain = match_key(fx, data, size);

  if (der != NULL) {
    /* An accepted encrypted key is never taken for a plain one. */
    FUZZ_CHECK(plain == NULL);
    gsize der_len = 0;
    const guint8 *der_data = g_bytes_get_data(der, &der_len);
    g_autofree char *scheme2 = NULL;
    g_autoptr(GBytes) der2 = check_encrypted(der_data, der_len, &scheme2);
    FUZZ_CHECK(der2 != NULL && g_bytes_equal(der2, der));
    FUZZ_CHECK(g_str_equal(scheme2, scheme));
    g_autoptr(GBytes) plain2 = match_key(fx, der_data, der_len);
    FUZZ_CHECK(plain2 == NULL);
  }
  if (plain != NULL) {
    gsize plain_len = 0;
    const guint8 *plain_data = g_bytes_get_data(plain, &plain_len);
    g_autoptr(GBytes) again = match_key(fx, plain_data, plain_len);
    /* A fixed point: what it returns comes back byte for byte. */
    FUZZ_CHECK(again != NULL && g_bytes_equal(again, plain));
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) enc = ident_pkcs8_check_encrypted(plain_data, plain_len, NULL, &error);
    FUZZ_CHECK(enc == NULL && g_error_matches(error, IDENT_ERROR, IDENT_ERROR_KEY));
  }
  return 0;
}
