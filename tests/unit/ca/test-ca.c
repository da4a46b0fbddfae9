#define G_LOG_DOMAIN "sipcred-test-ca"

#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/pkcs12.h>
#include <gnutls/x509.h>

#include "identity/ca.h"
#include "identity/cert.h"

#define OID_SIP_DOMAIN "1.3.6.1.5.5.7.3.20"

typedef struct {
  char *dir;
  IdentCa *ca;
  gint64 now;
} Fixture;

static void
rm_rf(const char *path)
{
  GDir *dir = g_dir_open(path, 0, NULL);
  const char *name;

  if (dir != NULL) {
    while ((name = g_dir_read_name(dir)) != NULL) {
      g_autofree char *child = g_build_filename(path, name, NULL);
      if (g_file_test(child, G_FILE_TEST_IS_DIR) && !g_file_test(child, G_FILE_TEST_IS_SYMLINK))
        rm_rf(child);
      else
        g_unlink(child);
    }
    g_dir_close(dir);
  }
  g_rmdir(path);
}

static void
fixture_setup(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;

  f->dir = g_dir_make_tmp("sipcred-ca-XXXXXX", &error);
  g_assert_no_error(error);
  f->now = g_get_real_time() / G_USEC_PER_SEC;
  f->ca = ident_ca_create(f->dir, NULL, 30, f->now, IDENT_CA_FLAG_NONE, &error);
  g_assert_no_error(error);
  g_assert_nonnull(f->ca);
}

static void
fixture_teardown(Fixture *f, gconstpointer data)
{
  g_clear_pointer(&f->ca, ident_ca_free);
  rm_rf(f->dir);
  g_free(f->dir);
}

static char *
path_in(const char *dir, const char *name)
{
  return g_build_filename(dir, name, NULL);
}

static GBytes *
read_file(const char *dir, const char *name)
{
  g_autofree char *path = path_in(dir, name);
  g_autoptr(GError) error = NULL;
  char *data = NULL;
  gsize len = 0;

  g_file_get_contents(path, &data, &len, &error);
  g_assert_no_error(error);
  return g_bytes_new_take(data, len);
}

static guint
file_mode(const char *dir, const char *name)
{
  g_autofree char *path = path_in(dir, name);
  GStatBuf st;

  g_assert_cmpint(g_stat(path, &st), ==, 0);
  return st.st_mode & 07777;
}

static gnutls_x509_crt_t
load_crt(const char *dir, const char *name)
{
  g_autoptr(GBytes) bytes = read_file(dir, name);
  gnutls_datum_t d = {(unsigned char *)g_bytes_get_data(bytes, NULL),
                      (unsigned int)g_bytes_get_size(bytes)};
  gnutls_x509_crt_t crt = NULL;

  g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_import(crt, &d,
                                         g_str_has_suffix(name, ".der") ? GNUTLS_X509_FMT_DER
                                                                        : GNUTLS_X509_FMT_PEM),
                  ==, 0);
  return crt;
}

/* gnutls_x509_crt_list_verify of @name against ca.pem, with the CRL when
 * @with_crl. Returns the status bits. */
static unsigned int
verify_status(const char *ca_dir, const char *out_dir, const char *name, gboolean with_crl)
{
  gnutls_x509_crt_t ca = load_crt(ca_dir, "ca.pem");
  gnutls_x509_crt_t crt = load_crt(out_dir, name);
  gnutls_x509_crl_t crl = NULL;
  unsigned int status = 0;

  if (with_crl) {
    g_autoptr(GBytes) bytes = read_file(ca_dir, "ca.crl");
    gnutls_datum_t d = {(unsigned char *)g_bytes_get_data(bytes, NULL),
                        (unsigned int)g_bytes_get_size(bytes)};
    g_assert_cmpint(gnutls_x509_crl_init(&crl), ==, 0);
    g_assert_cmpint(gnutls_x509_crl_import(crl, &d, GNUTLS_X509_FMT_PEM), ==, 0);
  }
  g_assert_cmpint(gnutls_x509_crt_list_verify(&crt, 1, &ca, 1, with_crl ? &crl : NULL,
                                              with_crl ? 1 : 0, 0, &status),
                  ==, 0);
  if (crl != NULL)
    gnutls_x509_crl_deinit(crl);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_crt_deinit(ca);
  return status;
}

static char *
crt_serial(gnutls_x509_crt_t crt)
{
  guint8 serial[64];
  size_t len = sizeof serial;
  GString *out = g_string_new(NULL);

  g_assert_cmpint(gnutls_x509_crt_get_serial(crt, serial, &len), ==, 0);
  for (gsize i = 0; i < len; i++)
    g_string_append_printf(out, "%02x", serial[i]);
  return g_string_free(out, FALSE);
}

/* Every SAN as "DNS:x" or "URI:x", in order. */
static char *
crt_sans(gnutls_x509_crt_t crt)
{
  GString *out = g_string_new(NULL);

  for (unsigned int i = 0;; i++) {
    char buf[512];
    size_t len = sizeof buf;
    unsigned int critical = 0;
    int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &len, &critical);

    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      break;
    g_assert_cmpint(type, >=, 0);
    g_assert_false(critical);
    g_string_append_printf(out, "%s%s:%s", out->len ? " " : "",
                           type == GNUTLS_SAN_DNSNAME ? "DNS"
                           : type == GNUTLS_SAN_URI   ? "URI"
                                                      : "other",
                           buf);
  }
  return g_string_free(out, FALSE);
}

static char *
crt_ekus(gnutls_x509_crt_t crt)
{
  GString *out = g_string_new(NULL);

  for (unsigned int i = 0;; i++) {
    char oid[128];
    size_t len = sizeof oid;
    int rc = gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &len, NULL);

    if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      break;
    g_assert_cmpint(rc, >=, 0);
    g_string_append_printf(out, "%s%s", out->len ? " " : "", oid);
  }
  return g_string_free(out, FALSE);
}

static char *
issue_ok(Fixture *f, IdentCaKind kind, const char *subject, guint days, IdentCaFlags flags)
{
  g_autoptr(GError) error = NULL;
  char *name = ident_ca_issue(f->ca, kind, subject, days, f->now, NULL, NULL, flags, &error);

  g_assert_no_error(error);
  g_assert_nonnull(name);
  return name;
}

static gboolean
same_key_id(gnutls_x509_crt_t crt, gnutls_x509_privkey_t key)
{
  guint8 a[64], b[64];
  size_t la = sizeof a, lb = sizeof b;

  g_assert_cmpint(gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, a, &la), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_get_key_id(key, GNUTLS_KEYID_USE_SHA256, b, &lb), ==, 0);
  return la == lb && memcmp(a, b, la) == 0;
}

/* ---- the CA ---- */

static void
test_init_profile(Fixture *f, gconstpointer data)
{
  gnutls_x509_crt_t ca = load_crt(f->dir, "ca.pem");
  gnutls_x509_crt_t ca_der = load_crt(f->dir, "ca.der");
  unsigned int critical = 0, is_ca = 0, usage = 0, status = 99;
  int pathlen = 0;
  char cn[128];
  size_t cn_len = sizeof cn;

  g_assert_cmpint(gnutls_x509_crt_equals(ca, ca_der), !=, 0);
  g_assert_cmpint(gnutls_x509_crt_get_basic_constraints(ca, &critical, &is_ca, &pathlen), >=, 0);
  g_assert_true(is_ca);
  g_assert_true(critical);
  g_assert_cmpint(gnutls_x509_crt_get_key_usage(ca, &usage, &critical), >=, 0);
  g_assert_cmpuint(usage, ==, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN);
  g_assert_cmpint(gnutls_x509_crt_get_signature_algorithm(ca), ==, GNUTLS_SIGN_RSA_SHA256);
  g_assert_cmpint(gnutls_x509_crt_get_pk_algorithm(ca, &usage), ==, GNUTLS_PK_RSA);
  g_assert_cmpuint(usage, ==, 2048);
  g_assert_cmpint(
      gnutls_x509_crt_get_dn_by_oid(ca, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &cn_len), ==, 0);
  g_assert_cmpstr(cn, ==, IDENT_CA_DEFAULT_CN);
  /* Self-signed and valid now. */
  g_assert_cmpint(gnutls_x509_crt_verify(ca, &ca, 1, 0, &status), ==, 0);
  g_assert_cmpuint(status, ==, 0);
  g_assert_cmpuint(file_mode(f->dir, "ca.key"), ==, 0600);
  gnutls_x509_crt_deinit(ca_der);
  gnutls_x509_crt_deinit(ca);
}

static void
test_init_no_overwrite(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) before = read_file(f->dir, "ca.pem");
  g_autoptr(GBytes) after = NULL;
  g_autoptr(IdentCa) again = ident_ca_create(f->dir, "Other", 30, f->now, 0, &error);

  g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_EXISTS);
  g_assert_null(again);
  after = read_file(f->dir, "ca.pem");
  g_assert_true(g_bytes_equal(before, after));
  g_clear_error(&error);

  again = ident_ca_create(f->dir, "Other", 30, f->now, IDENT_CA_FLAG_FORCE, &error);
  g_assert_no_error(error);
  g_clear_pointer(&after, g_bytes_unref);
  after = read_file(f->dir, "ca.pem");
  g_assert_false(g_bytes_equal(before, after));
}

static void
test_open(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCa) ca = ident_ca_open(f->dir, &error);
  g_autofree char *missing = path_in(f->dir, "nothing-here");
  g_autofree char *other_dir = path_in(f->dir, "other");
  g_autofree char *other_key = path_in(other_dir, "ca.key");
  g_autofree char *our_key = path_in(f->dir, "ca.key");
  g_autoptr(GBytes) key = NULL;

  g_assert_no_error(error);
  g_assert_nonnull(ca);
  g_clear_pointer(&ca, ident_ca_free);

  ca = ident_ca_open(missing, &error);
  g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA);
  g_assert_null(ca);
  g_clear_error(&error);

  /* Another CA's key next to our certificate is refused. */
  ca = ident_ca_create(other_dir, NULL, 30, f->now, 0, &error);
  g_assert_no_error(error);
  g_clear_pointer(&ca, ident_ca_free);
  key = read_file(other_dir, "ca.key");
  g_assert_true(g_file_set_contents(our_key, g_bytes_get_data(key, NULL),
                                    (gssize)g_bytes_get_size(key), NULL));
  ca = ident_ca_open(f->dir, &error);
  g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA);
  g_assert_null(ca);
}

/* ---- issuing ---- */

static void
test_issue_host(Fixture *f, gconstpointer data)
{
  g_autofree char *name = issue_ok(f, IDENT_CA_HOST, "Example.COM", 10, 0);
  gnutls_x509_crt_t crt = NULL;
  g_autofree char *sans = NULL;
  g_autofree char *ekus = NULL;
  unsigned int critical = 0, is_ca = 1, usage = 0;
  int pathlen = 0;
  char cn[128];
  size_t cn_len = sizeof cn;
  guint8 serial[64];
  size_t serial_len = sizeof serial;
  time_t nb, na;

  g_assert_cmpstr(name, ==, "example.com");
  crt = load_crt(f->dir, "example.com.pem");
  sans = crt_sans(crt);
  g_assert_cmpstr(sans, ==, "DNS:example.com URI:sip:example.com");
  ekus = crt_ekus(crt);
  g_assert_cmpstr(ekus, ==, GNUTLS_KP_TLS_WWW_SERVER " " OID_SIP_DOMAIN);
  g_assert_cmpint(gnutls_x509_crt_get_key_usage(crt, &usage, &critical), >=, 0);
  g_assert_cmpuint(usage, ==,
                   GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_NON_REPUDIATION |
                       GNUTLS_KEY_KEY_ENCIPHERMENT);
  g_assert_cmpint(gnutls_x509_crt_get_basic_constraints(crt, &critical, &is_ca, &pathlen), >=, 0);
  g_assert_false(is_ca);
  g_assert_cmpint(
      gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &cn_len), ==, 0);
  g_assert_cmpstr(cn, ==, "example.com");
  g_assert_cmpint(gnutls_x509_crt_get_signature_algorithm(crt), ==, GNUTLS_SIGN_RSA_SHA256);
  /* 128-bit, positive. */
  g_assert_cmpint(gnutls_x509_crt_get_serial(crt, serial, &serial_len), ==, 0);
  g_assert_cmpuint(serial_len, ==, 16);
  g_assert_cmpuint(serial[0] & 0x80, ==, 0);
  nb = gnutls_x509_crt_get_activation_time(crt);
  na = gnutls_x509_crt_get_expiration_time(crt);
  g_assert_cmpint(nb, <=, f->now);
  g_assert_cmpint(na, ==, f->now + 10 * 24 * 3600);

  g_assert_cmpuint(verify_status(f->dir, f->dir, "example.com.pem", FALSE), ==, 0);
  g_assert_cmpuint(verify_status(f->dir, f->dir, "example.com.der", FALSE), ==, 0);
  gnutls_x509_crt_deinit(crt);
}

static void
test_issue_user(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *name = issue_ok(f, IDENT_CA_USER, "sip:alice@Example.com", 10, 0);
  gnutls_x509_crt_t crt = load_crt(f->dir, "alice.pem");
  g_autofree char *sans = crt_sans(crt);
  g_autofree char *ekus = crt_ekus(crt);
  g_autoptr(GBytes) der = read_file(f->dir, "alice.der");
  g_autoptr(IdentCert) cert = NULL;

  g_assert_cmpstr(name, ==, "alice");
  g_assert_cmpstr(sans, ==,
                  "URI:sip:alice@example.com URI:im:alice@example.com "
                  "URI:pres:alice@example.com");
  g_assert_cmpstr(ekus, ==, GNUTLS_KP_EMAIL_PROTECTION " " OID_SIP_DOMAIN);
  g_assert_cmpuint(verify_status(f->dir, f->dir, "alice.pem", FALSE), ==, 0);

  /* What the credential service accepts for the AOR. */
  cert = ident_cert_new_from_data(g_bytes_get_data(der, NULL), g_bytes_get_size(der), &error);
  g_assert_no_error(error);
  g_assert_true(ident_cert_check_user_profile(cert, "sip:alice@example.com", f->now, &error));
  g_assert_no_error(error);
  gnutls_x509_crt_deinit(crt);

  /* The bare form gives the same names. */
  g_clear_pointer(&name, g_free);
  name =
      ident_ca_issue(f->ca, IDENT_CA_USER, "bob@example.net", 10, f->now, NULL, NULL, 0, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(name, ==, "bob");
  crt = load_crt(f->dir, "bob.pem");
  g_clear_pointer(&sans, g_free);
  sans = crt_sans(crt);
  g_assert_cmpstr(sans, ==,
                  "URI:sip:bob@example.net URI:im:bob@example.net URI:pres:bob@example.net");
  gnutls_x509_crt_deinit(crt);
}

static void
test_issue_expired(Fixture *f, gconstpointer data)
{
  g_autofree char *name = issue_ok(f, IDENT_CA_HOST, "old.example.com", 0, 0);
  gnutls_x509_crt_t crt = load_crt(f->dir, "old.example.com.pem");
  time_t nb = gnutls_x509_crt_get_activation_time(crt);
  time_t na = gnutls_x509_crt_get_expiration_time(crt);
  unsigned int status = verify_status(f->dir, f->dir, "old.example.com.pem", FALSE);

  g_assert_cmpint(na, <, f->now);
  g_assert_cmpint(nb, <, na);
  g_assert_true(status & GNUTLS_CERT_INVALID);
  g_assert_true(status & GNUTLS_CERT_EXPIRED);
  gnutls_x509_crt_deinit(crt);
}

static void
test_issue_no_eku(Fixture *f, gconstpointer data)
{
  g_autofree char *host = issue_ok(f, IDENT_CA_HOST, "example.org", 10, IDENT_CA_FLAG_NO_EKU);
  g_autofree char *user =
      issue_ok(f, IDENT_CA_USER, "sip:carol@example.org", 10, IDENT_CA_FLAG_NO_EKU);
  const char *names[] = {"example.org.pem", "carol.pem"};

  for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
    gnutls_x509_crt_t crt = load_crt(f->dir, names[i]);
    char oid[128];
    size_t len = sizeof oid;
    g_autofree char *sans = crt_sans(crt);

    g_assert_cmpint(gnutls_x509_crt_get_key_purpose_oid(crt, 0, oid, &len, NULL), ==,
                    GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);
    /* Only the EKU is left out. */
    g_assert_true(strstr(sans, "URI:sip:") != NULL);
    g_assert_cmpuint(verify_status(f->dir, f->dir, names[i], FALSE), ==, 0);
    gnutls_x509_crt_deinit(crt);
  }
}

static void
test_issue_pkcs8(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *name = issue_ok(f, IDENT_CA_HOST, "example.com", 10, 0);
  g_autoptr(GBytes) p8 = read_file(f->dir, "example.com.p8");
  g_autoptr(GBytes) key_pem = read_file(f->dir, "example.com.key");
  g_autoptr(GBytes) der = read_file(f->dir, "example.com.der");
  gnutls_datum_t d = {(unsigned char *)g_bytes_get_data(p8, NULL),
                      (unsigned int)g_bytes_get_size(p8)};
  gnutls_x509_crt_t crt = load_crt(f->dir, "example.com.pem");
  gnutls_x509_privkey_t key = NULL;
  g_autofree char *scheme = NULL;
  g_autoptr(GBytes) checked = NULL;
  g_autoptr(GBytes) plain = NULL;
  g_autoptr(IdentCert) cert = NULL;

  /* The password opens it, another does not. */
  g_assert_cmpint(gnutls_x509_privkey_init(&key), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_import_pkcs8(key, &d, GNUTLS_X509_FMT_DER, "wrong", 0), <,
                  0);
  gnutls_x509_privkey_deinit(key);
  g_assert_cmpint(gnutls_x509_privkey_init(&key), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_import_pkcs8(key, &d, GNUTLS_X509_FMT_DER, "password", 0),
                  ==, 0);
  g_assert_true(same_key_id(crt, key));
  gnutls_x509_privkey_deinit(key);

  /* The scheme RFC 6072 expects (PBES2 with PBKDF2); our own checker agrees. */
  checked = ident_pkcs8_check_encrypted(g_bytes_get_data(p8, NULL), g_bytes_get_size(p8), &scheme,
                                        &error);
  g_assert_no_error(error);
  g_assert_cmpstr(scheme, ==, "PBES2, PBKDF2 hmacWithSHA256, aes256-cbc");

  /* The .key is unencrypted PEM PKCS#8 of the same key. */
  g_assert_true(g_strstr_len(g_bytes_get_data(key_pem, NULL), (gssize)g_bytes_get_size(key_pem),
                             "-----BEGIN PRIVATE KEY-----") != NULL);
  cert = ident_cert_new_from_data(g_bytes_get_data(der, NULL), g_bytes_get_size(der), &error);
  g_assert_no_error(error);
  plain = ident_cert_match_private_key(cert, g_bytes_get_data(key_pem, NULL),
                                       g_bytes_get_size(key_pem), &error);
  g_assert_no_error(error);
  g_assert_nonnull(plain);

  g_assert_cmpuint(file_mode(f->dir, "example.com.key"), ==, 0600);
  g_assert_cmpuint(file_mode(f->dir, "example.com.p8"), ==, 0600);
  g_assert_cmpuint(file_mode(f->dir, "example.com.p12"), ==, 0600);
  g_assert_cmpuint(file_mode(f->dir, "example.com.pem") & 0400, ==, 0400);
  gnutls_x509_crt_deinit(crt);
}

/* Opens @p12 with @password: the key and certificate inside. */
static int
open_p12(GBytes *p12_bytes, const char *password, gnutls_x509_privkey_t *key,
         gnutls_x509_crt_t *crt)
{
  gnutls_datum_t d = {(unsigned char *)g_bytes_get_data(p12_bytes, NULL),
                      (unsigned int)g_bytes_get_size(p12_bytes)};
  gnutls_pkcs12_t p12 = NULL;
  gnutls_x509_crt_t *chain = NULL;
  unsigned int chain_len = 0;
  int rc;

  g_assert_cmpint(gnutls_pkcs12_init(&p12), ==, 0);
  g_assert_cmpint(gnutls_pkcs12_import(p12, &d, GNUTLS_X509_FMT_DER, 0), ==, 0);
  rc = gnutls_pkcs12_verify_mac(p12, password);
  if (rc == 0)
    rc = gnutls_pkcs12_simple_parse(p12, password, key, &chain, &chain_len, NULL, NULL, NULL, 0);
  gnutls_pkcs12_deinit(p12);
  if (rc < 0)
    return rc;
  g_assert_cmpuint(chain_len, ==, 1);
  *crt = chain[0];
  gnutls_free(chain);
  return 0;
}

static void
test_issue_pkcs12(Fixture *f, gconstpointer data)
{
  g_autofree char *name = issue_ok(f, IDENT_CA_USER, "sip:alice@example.com", 10, 0);
  g_autoptr(GBytes) p12 = read_file(f->dir, "alice.p12");
  gnutls_x509_crt_t expected = load_crt(f->dir, "alice.der");
  gnutls_x509_privkey_t key = NULL;
  gnutls_x509_crt_t crt = NULL;

  g_assert_cmpint(open_p12(p12, "wrong", &key, &crt), <, 0);
  g_assert_cmpint(open_p12(p12, "password", &key, &crt), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_equals(crt, expected), !=, 0);
  g_assert_true(same_key_id(crt, key));
  gnutls_x509_privkey_deinit(key);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_crt_deinit(expected);
}

static void
test_issue_password(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *out = path_in(f->dir, "out");
  g_autofree char *name = ident_ca_issue(f->ca, IDENT_CA_HOST, "example.com", 10, f->now,
                                         "s3cret pass", out, 0, &error);
  g_autoptr(GBytes) p12 = NULL;
  g_autoptr(GBytes) p8 = NULL;
  gnutls_x509_privkey_t key = NULL;
  gnutls_x509_crt_t crt = NULL;
  g_autofree char *in_ca_dir = path_in(f->dir, "example.com.pem");
  gnutls_datum_t d;

  g_assert_no_error(error);
  /* --out: nothing of it in the CA directory, and the chain still verifies. */
  g_assert_false(g_file_test(in_ca_dir, G_FILE_TEST_EXISTS));
  g_assert_cmpuint(verify_status(f->dir, out, "example.com.pem", FALSE), ==, 0);
  p12 = read_file(out, "example.com.p12");
  g_assert_cmpint(open_p12(p12, "password", &key, &crt), <, 0);
  g_assert_cmpint(open_p12(p12, "s3cret pass", &key, &crt), ==, 0);
  gnutls_x509_privkey_deinit(key);
  gnutls_x509_crt_deinit(crt);

  p8 = read_file(out, "example.com.p8");
  d.data = (unsigned char *)g_bytes_get_data(p8, NULL);
  d.size = (unsigned int)g_bytes_get_size(p8);
  g_assert_cmpint(gnutls_x509_privkey_init(&key), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_import_pkcs8(key, &d, GNUTLS_X509_FMT_DER, "s3cret pass", 0),
                  ==, 0);
  gnutls_x509_privkey_deinit(key);
}

static void
test_issue_no_overwrite(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *name = issue_ok(f, IDENT_CA_HOST, "example.com", 10, 0);
  g_autoptr(GBytes) before = read_file(f->dir, "example.com.key");
  g_autoptr(GBytes) after = NULL;
  g_autofree char *again = NULL;
  g_autofree char *p12 = path_in(f->dir, "example.com.p12");

  /* Any one of the outputs present stops it, before anything is written. */
  g_assert_cmpint(g_unlink(p12), ==, 0);
  again = ident_ca_issue(f->ca, IDENT_CA_HOST, "example.com", 10, f->now, NULL, NULL, 0, &error);
  g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_EXISTS);
  g_assert_null(again);
  g_clear_error(&error);
  after = read_file(f->dir, "example.com.key");
  g_assert_true(g_bytes_equal(before, after));
  g_assert_false(g_file_test(p12, G_FILE_TEST_EXISTS));

  again = ident_ca_issue(f->ca, IDENT_CA_HOST, "example.com", 10, f->now, NULL, NULL,
                         IDENT_CA_FLAG_FORCE, &error);
  g_assert_no_error(error);
  g_clear_pointer(&after, g_bytes_unref);
  after = read_file(f->dir, "example.com.key");
  g_assert_false(g_bytes_equal(before, after));
  g_assert_true(g_file_test(p12, G_FILE_TEST_EXISTS));
  g_assert_cmpuint(file_mode(f->dir, "example.com.key"), ==, 0600);
}

static void
test_issue_bad_names(Fixture *f, gconstpointer data)
{
  const struct {
    IdentCaKind kind;
    const char *subject;
  } bad[] = {
      {IDENT_CA_HOST, "../etc"},
      {IDENT_CA_HOST, "a b.example.com"},
      {IDENT_CA_HOST, ""},
      {IDENT_CA_HOST, "example..com"},
      {IDENT_CA_USER, "sip:example.com"},
      {IDENT_CA_USER, "sip:../x@example.com"},
      {IDENT_CA_USER, "sip:a@b@example.com"},
      {IDENT_CA_USER, "sip:ca@example.com"}, /* would replace ca.pem and ca.key */
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *name = ident_ca_issue(f->ca, bad[i].kind, bad[i].subject, 10, f->now, NULL,
                                           NULL, IDENT_CA_FLAG_FORCE, &error);
    g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID);
    g_assert_null(name);
  }
  /* The CA itself is intact. */
  g_assert_cmpuint(verify_status(f->dir, f->dir, "ca.pem", FALSE), ==, 0);
}

static void
test_serials_differ(Fixture *f, gconstpointer data)
{
  g_autofree char *a = issue_ok(f, IDENT_CA_HOST, "a.example.com", 10, 0);
  g_autofree char *b = issue_ok(f, IDENT_CA_HOST, "b.example.com", 10, 0);
  gnutls_x509_crt_t ca = load_crt(f->dir, "ca.pem");
  gnutls_x509_crt_t ca_ = load_crt(f->dir, "a.example.com.pem");
  gnutls_x509_crt_t cb = load_crt(f->dir, "b.example.com.pem");
  g_autofree char *sa = crt_serial(ca_);
  g_autofree char *sb = crt_serial(cb);
  g_autofree char *sc = crt_serial(ca);

  g_assert_cmpstr(sa, !=, sb);
  g_assert_cmpstr(sa, !=, sc);
  gnutls_x509_crt_deinit(ca);
  gnutls_x509_crt_deinit(ca_);
  gnutls_x509_crt_deinit(cb);
}

/* ---- revocation ---- */

static gnutls_x509_crl_t
load_crl(const char *dir, const char *name)
{
  g_autoptr(GBytes) bytes = read_file(dir, name);
  gnutls_datum_t d = {(unsigned char *)g_bytes_get_data(bytes, NULL),
                      (unsigned int)g_bytes_get_size(bytes)};
  gnutls_x509_crl_t crl = NULL;

  g_assert_cmpint(gnutls_x509_crl_init(&crl), ==, 0);
  g_assert_cmpint(gnutls_x509_crl_import(crl, &d,
                                         g_str_has_suffix(name, ".der") ? GNUTLS_X509_FMT_DER
                                                                        : GNUTLS_X509_FMT_PEM),
                  ==, 0);
  return crl;
}

static void
test_crl(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *a = issue_ok(f, IDENT_CA_USER, "sip:alice@example.com", 10, 0);
  g_autofree char *b = issue_ok(f, IDENT_CA_HOST, "example.com", 10, 0);
  gnutls_x509_crt_t ca = load_crt(f->dir, "ca.pem");
  gnutls_x509_crt_t alice = load_crt(f->dir, "alice.pem");
  g_autofree char *alice_serial = crt_serial(alice);
  g_autofree char *serial = NULL;
  gnutls_x509_crl_t crl, crl_der;
  unsigned int status = 99, n_revoked = 99;
  gboolean already = TRUE;
  guint8 got[64], number[16];
  size_t got_len = sizeof got, number_len = sizeof number;
  unsigned int critical = 0;
  time_t revoked_at = 0;

  serial = ident_ca_revoke(f->ca, "alice", f->now, &already, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(serial, ==, alice_serial);
  g_assert_false(already);
  g_assert_true(ident_ca_write_crl(f->ca, 7, f->now, &n_revoked, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(n_revoked, ==, 1);

  crl = load_crl(f->dir, "ca.crl");
  crl_der = load_crl(f->dir, "ca.crl.der");
  /* Signed by the CA, with sha256WithRSA. */
  g_assert_cmpint(gnutls_x509_crl_verify(crl, &ca, 1, 0, &status), ==, 0);
  g_assert_cmpuint(status, ==, 0);
  g_assert_cmpint(gnutls_x509_crl_get_signature_algorithm(crl), ==, GNUTLS_SIGN_RSA_SHA256);
  g_assert_cmpint(gnutls_x509_crl_get_crt_count(crl), ==, 1);
  g_assert_cmpint(gnutls_x509_crl_get_crt_count(crl_der), ==, 1);
  g_assert_cmpint(gnutls_x509_crl_get_crt_serial(crl, 0, got, &got_len, &revoked_at), ==, 0);
  {
    g_autofree char *hex = NULL;
    GString *s = g_string_new(NULL);
    for (gsize i = 0; i < got_len; i++)
      g_string_append_printf(s, "%02x", got[i]);
    hex = g_string_free(s, FALSE);
    g_assert_cmpstr(hex, ==, alice_serial);
  }
  g_assert_cmpint(revoked_at, ==, f->now);
  g_assert_cmpint(gnutls_x509_crl_get_next_update(crl), ==, f->now + 7 * 24 * 3600);
  g_assert_cmpint(gnutls_x509_crl_get_number(crl, number, &number_len, &critical), >=, 0);
  g_assert_cmpuint(number[number_len - 1], ==, 1);

  /* What a relying party sees: alice revoked, example.com fine. */
  status = verify_status(f->dir, f->dir, "alice.pem", TRUE);
  g_assert_true(status & GNUTLS_CERT_REVOKED);
  g_assert_cmpuint(verify_status(f->dir, f->dir, "example.com.pem", TRUE), ==, 0);

  /* Again: idempotent, and the next CRL has the next number. */
  g_clear_pointer(&serial, g_free);
  serial = ident_ca_revoke(f->ca, "alice", f->now + 5, &already, &error);
  g_assert_no_error(error);
  g_assert_true(already);
  g_assert_cmpstr(serial, ==, alice_serial);
  g_assert_true(ident_ca_write_crl(f->ca, 7, f->now, &n_revoked, &error));
  g_assert_cmpuint(n_revoked, ==, 1);
  gnutls_x509_crl_deinit(crl);
  crl = load_crl(f->dir, "ca.crl");
  number_len = sizeof number;
  g_assert_cmpint(gnutls_x509_crl_get_number(crl, number, &number_len, &critical), >=, 0);
  g_assert_cmpuint(number[number_len - 1], ==, 2);

  gnutls_x509_crl_deinit(crl);
  gnutls_x509_crl_deinit(crl_der);
  gnutls_x509_crt_deinit(alice);
  gnutls_x509_crt_deinit(ca);
}

static void
test_crl_empty(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  gnutls_x509_crt_t ca = load_crt(f->dir, "ca.pem");
  gnutls_x509_crl_t crl;
  unsigned int status = 99, n = 99;

  g_assert_true(ident_ca_write_crl(f->ca, 1, f->now, &n, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(n, ==, 0);
  crl = load_crl(f->dir, "ca.crl");
  g_assert_cmpint(gnutls_x509_crl_get_crt_count(crl), ==, 0);
  g_assert_cmpint(gnutls_x509_crl_verify(crl, &ca, 1, 0, &status), ==, 0);
  g_assert_cmpuint(status, ==, 0);
  gnutls_x509_crl_deinit(crl);
  gnutls_x509_crt_deinit(ca);
}

static void
test_revoke_by_file(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *name = issue_ok(f, IDENT_CA_HOST, "example.com", 10, 0);
  g_autofree char *path = path_in(f->dir, "example.com.der");
  g_autofree char *other_dir = path_in(f->dir, "other");
  g_autofree char *foreign = NULL;
  g_autofree char *foreign_path = NULL;
  g_autofree char *serial = NULL;
  g_autoptr(IdentCa) other = NULL;
  gnutls_x509_crt_t crt = load_crt(f->dir, "example.com.der");
  g_autofree char *expected = crt_serial(crt);
  gboolean already = TRUE;

  serial = ident_ca_revoke(f->ca, path, f->now, &already, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(serial, ==, expected);
  g_assert_false(already);
  /* The name now has nothing valid left: revoking it again is "already". */
  g_clear_pointer(&serial, g_free);
  serial = ident_ca_revoke(f->ca, "example.com", f->now, &already, &error);
  g_assert_no_error(error);
  g_assert_true(already);

  /* Unknown names and another CA's certificates are refused. */
  g_clear_pointer(&serial, g_free);
  serial = ident_ca_revoke(f->ca, "nobody", f->now, NULL, &error);
  g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_NOT_FOUND);
  g_assert_null(serial);
  g_clear_error(&error);

  other = ident_ca_create(other_dir, NULL, 30, f->now, 0, &error);
  g_assert_no_error(error);
  foreign = ident_ca_issue(other, IDENT_CA_HOST, "example.net", 10, f->now, NULL, NULL, 0, &error);
  g_assert_no_error(error);
  foreign_path = path_in(other_dir, "example.net.pem");
  serial = ident_ca_revoke(f->ca, foreign_path, f->now, NULL, &error);
  g_assert_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_NOT_FOUND);
  g_assert_null(serial);
  gnutls_x509_crt_deinit(crt);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

#define ADD(path, fn) g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  ADD("/ca/init/profile", test_init_profile);
  ADD("/ca/init/no-overwrite", test_init_no_overwrite);
  ADD("/ca/open", test_open);
  ADD("/ca/issue/host", test_issue_host);
  ADD("/ca/issue/user", test_issue_user);
  ADD("/ca/issue/expired", test_issue_expired);
  ADD("/ca/issue/no-eku", test_issue_no_eku);
  ADD("/ca/issue/pkcs8", test_issue_pkcs8);
  ADD("/ca/issue/pkcs12", test_issue_pkcs12);
  ADD("/ca/issue/password-and-out", test_issue_password);
  ADD("/ca/issue/no-overwrite", test_issue_no_overwrite);
  ADD("/ca/issue/bad-names", test_issue_bad_names);
  ADD("/ca/issue/serials-differ", test_serials_differ);
  ADD("/ca/crl/revoked", test_crl);
  ADD("/ca/crl/empty", test_crl_empty);
  ADD("/ca/revoke/by-file", test_revoke_by_file);
#undef ADD
  return g_test_run();
}
