#define G_LOG_DOMAIN "sipcred-test-cli"

#include <string.h>

#include <gio/gio.h>
#include <glib.h>
#include <glib/gstdio.h>

#include <sys/stat.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "../identity/testcert.h"
#include "identity/cert.h"
#include "storage/store.h"
#include "tests/common/testutil.h"

static const char *sipcred_bin;

typedef struct {
  char *tmp;
  char *state;
} Fixture;

typedef struct {
  int status; /* exit status, -1 if killed */
  char *out;  /* stdout as a string */
  char *err;
  GBytes *out_bytes; /* stdout exactly */
} Run;

static void
run_clear(Run *r)
{
  g_clear_pointer(&r->out, g_free);
  g_clear_pointer(&r->err, g_free);
  g_clear_pointer(&r->out_bytes, g_bytes_unref);
}

static void
fixture_setup(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;

  fx->tmp = g_dir_make_tmp("sipcred-cli-XXXXXX", &error);
  g_assert_no_error(error);
  fx->state = g_build_filename(fx->tmp, "state", NULL);
}

static void
fixture_teardown(Fixture *fx, gconstpointer data)
{
  test_util_rm_rf(fx->tmp);
  g_free(fx->tmp);
  g_free(fx->state);
}

/* Runs sipcred with @args (NULL-terminated) and @input on stdin. */
static void
run_cli(Run *r, const char *input, const char *const *args)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GSubprocess) proc = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) in = g_bytes_new(input, input != NULL ? strlen(input) : 0);
  g_autoptr(GBytes) out = NULL;
  g_autoptr(GBytes) err = NULL;

  g_ptr_array_add(argv, (gpointer)sipcred_bin);
  for (guint i = 0; args[i] != NULL; i++)
    g_ptr_array_add(argv, (gpointer)args[i]);
  g_ptr_array_add(argv, NULL);

  proc = g_subprocess_newv((const char *const *)argv->pdata,
                           G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                               G_SUBPROCESS_FLAGS_STDERR_PIPE,
                           &error);
  g_assert_no_error(error);
  g_subprocess_communicate(proc, in, NULL, &out, &err, &error);
  g_assert_no_error(error);
  r->status = g_subprocess_get_if_exited(proc) ? g_subprocess_get_exit_status(proc) : -1;
  r->out_bytes = g_bytes_ref(out);
  r->out = g_strndup(g_bytes_get_data(out, NULL), g_bytes_get_size(out));
  r->err = g_strndup(g_bytes_get_data(err, NULL), g_bytes_get_size(err));
  if (r->out == NULL)
    r->out = g_strdup("");
  if (r->err == NULL)
    r->err = g_strdup("");
  g_test_message("exit %d\nstdout: %s\nstderr: %s", r->status,
                 g_utf8_validate(r->out, g_bytes_get_size(out), NULL) ? r->out : "(binary)",
                 r->err);
}

#define RUN(r, input, ...)                                                                        \
  do {                                                                                            \
    const char *args_[] = {__VA_ARGS__, NULL};                                                    \
    run_cli((r), (input), args_);                                                                 \
  } while (0)

static char *
write_file(Fixture *fx, const char *name, const void *data, gsize len)
{
  char *path = g_build_filename(fx->tmp, name, NULL);
  g_autoptr(GError) error = NULL;

  g_assert_true(g_file_set_contents(path, data, (gssize)len, &error));
  g_assert_no_error(error);
  return path;
}

static TestCert *
user_cert(const char *uri, gint64 nb, gint64 na)
{
  const char *uris[] = {uri, NULL};
  TestCertSpec spec = {.cn = "user", .uris = uris, .not_before = nb, .not_after = na};

  return test_cert_new(&spec);
}

static char *
sha256_fingerprint(GBytes *der)
{
  g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
  guint8 digest[32];
  gsize len = sizeof digest;
  GString *out = g_string_new(NULL);

  g_checksum_update(sum, g_bytes_get_data(der, NULL), g_bytes_get_size(der));
  g_checksum_get_digest(sum, digest, &len);
  for (gsize i = 0; i < len; i++)
    g_string_append_printf(out, "%s%02X", i > 0 ? ":" : "", digest[i]);
  return g_string_free(out, FALSE);
}

/* ---- cred ---- */

static void
test_cred_import_export(Fixture *fx, gconstpointer data)
{
  g_autoptr(TestCert) tc = user_cert("sip:alice@example.com", 0, 0);
  g_autofree char *pem = test_cert_get_pem(tc);
  g_autofree char *pem_file = write_file(fx, "alice.pem", pem, strlen(pem));
  g_autofree char *der_file =
      write_file(fx, "alice.der", g_bytes_get_data(tc->der, NULL), g_bytes_get_size(tc->der));
  g_autofree char *out_file = g_build_filename(fx->tmp, "exported.der", NULL);
  g_autofree char *fp = sha256_fingerprint(tc->der);
  g_autofree char *exported = NULL;
  gsize exported_len = 0;
  Run r = {0};

  /* The AOR is canonicalised: sips: scheme and host case fold to sip:, lower. */
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sips:alice@EXAMPLE.com", pem_file);
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.out, "sip:alice@example.com"));
  g_assert_nonnull(strstr(r.out, "version: 1"));
  g_assert_nonnull(strstr(r.out, fp));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "export", "sip:alice@example.com", out_file);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  g_assert_true(g_file_get_contents(out_file, &exported, &exported_len, NULL));
  g_assert_cmpmem(exported, exported_len, g_bytes_get_data(tc->der, NULL),
                  g_bytes_get_size(tc->der));

  /* DER input works too, and a second import is a new version. */
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com", der_file);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "show", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.out, "version: 2"));
  g_assert_nonnull(strstr(r.out, fp));
  g_assert_null(strstr(r.out, "PRIVATE"));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "list");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_cmpstr(r.out, ==, "sip:alice@example.com\n");
  run_clear(&r);

  /* Export to stdout gives the same bytes. */
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "export", "sip:alice@example.com", "-");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_true(g_bytes_equal(r.out_bytes, tc->der));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "delete", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "show", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 1);
  g_assert_true(g_str_has_prefix(r.err, "sipcred: sip:alice@example.com: "));
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "delete", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 1);
  run_clear(&r);
}

static void
assert_cred_absent(Fixture *fx, const char *aor)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreDb) db = store_db_open(fx->state, 0, &error);
  g_autoptr(StoreCred) cred = NULL;

  g_assert_no_error(error);
  cred = store_cred_get(db, aor, &error);
  g_assert_null(cred);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
}

static void
test_cred_import_refused(Fixture *fx, gconstpointer data)
{
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  g_autoptr(TestCert) bob = user_cert("sip:bob@example.com", 0, 0);
  g_autoptr(TestCert) expired = user_cert("sip:alice@example.com", now - 7200, now - 3600);
  const char *uris[] = {"sip:alice@example.com", NULL};
  TestCertSpec ca_spec = {.cn = "CA", .uris = uris, .ca = TRUE};
  g_autoptr(TestCert) ca = test_cert_new(&ca_spec);
  g_autofree char *bob_pem = test_cert_get_pem(bob);
  g_autofree char *bob_file = write_file(fx, "bob.pem", bob_pem, strlen(bob_pem));
  g_autofree char *expired_file = write_file(
      fx, "expired.der", g_bytes_get_data(expired->der, NULL), g_bytes_get_size(expired->der));
  g_autofree char *ca_file =
      write_file(fx, "ca.der", g_bytes_get_data(ca->der, NULL), g_bytes_get_size(ca->der));
  g_autofree char *junk_file = write_file(fx, "junk", "not a certificate", 17);
  g_autofree char *missing = g_build_filename(fx->tmp, "missing.pem", NULL);
  Run r = {0};

  /* Bob's certificate is not Alice's. */
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com", bob_file);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_true(g_str_has_prefix(r.err, "sipcred: "));
  g_assert_nonnull(strstr(r.err, "subjectAltName"));
  g_assert_cmpstr(r.out, ==, "");
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com", expired_file);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "expired"));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com", ca_file);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "CA"));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com", junk_file);
  g_assert_cmpint(r.status, ==, 1);
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com", missing);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, missing));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "mailto:alice@example.com", bob_file);
  g_assert_cmpint(r.status, ==, 1);
  run_clear(&r);

  assert_cred_absent(fx, "sip:alice@example.com");
}

/* ---- user ---- */

static char *
expected_ha1(GChecksumType type, const char *user, const char *realm, const char *password)
{
  g_autofree char *input = g_strdup_printf("%s:%s:%s", user, realm, password);

  return g_compute_checksum_for_string(type, input, -1);
}

static void
test_user_add(Fixture *fx, gconstpointer data)
{
  const char *password = "correct horse battery staple";
  g_autofree char *pw_file = NULL;
  g_autofree char *sha = expected_ha1(G_CHECKSUM_SHA256, "alice", "example.com", password);
  g_autofree char *md5 = expected_ha1(G_CHECKSUM_MD5, "alice", "example.com", password);
  g_autofree char *sha_bob = expected_ha1(G_CHECKSUM_SHA256, "bob", "Office", "s3cret");
  g_autofree char *md5_bob = expected_ha1(G_CHECKSUM_MD5, "bob", "Office", "s3cret");
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(StoreUser) alice = NULL;
  g_autoptr(StoreUser) bob = NULL;
  Run r = {0};

  /* Known vector, so the test does not only compare our code with itself. */
  g_autofree char *mufasa =
      expected_ha1(G_CHECKSUM_MD5, "Mufasa", "testrealm@host.com", "Circle Of Life");
  g_assert_cmpstr(mufasa, ==, "939e7578ed9e3c518a452acee763bce9");

  /* Password on stdin; only the first line counts. */
  g_autofree char *input = g_strdup_printf("%s\nsecond line\n", password);
  RUN(&r, input, "--state-dir", fx->state, "user", "add", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_null(strstr(r.out, password));
  g_assert_null(strstr(r.out, sha));
  g_assert_null(strstr(r.out, md5));
  g_assert_null(strstr(r.err, password));
  g_assert_null(strstr(r.err, sha));
  run_clear(&r);

  /* Password file with CRLF, explicit realm and may-generate. */
  pw_file = write_file(fx, "pw", "s3cret\r\nignored\n", 16);
  RUN(&r, NULL, "--state-dir", fx->state, "user", "add", "sip:bob@example.com", "--password-file",
      pw_file, "--realm", "Office", "--may-generate");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_null(strstr(r.out, "s3cret"));
  run_clear(&r);

  db = store_db_open(fx->state, 0, &error);
  g_assert_no_error(error);
  alice = store_user_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(alice->realm, ==, "example.com");
  g_assert_cmpstr(alice->ha1_sha256, ==, sha);
  g_assert_cmpstr(alice->ha1_md5, ==, md5);
  g_assert_cmpuint(alice->flags, ==, STORE_USER_ENABLED);
  bob = store_user_get(db, "sip:bob@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(bob->realm, ==, "Office");
  g_assert_cmpstr(bob->ha1_sha256, ==, sha_bob);
  g_assert_cmpstr(bob->ha1_md5, ==, md5_bob);
  g_assert_cmpuint(bob->flags, ==, STORE_USER_ENABLED | STORE_USER_MAY_GENERATE);

  RUN(&r, NULL, "--state-dir", fx->state, "user", "list");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_cmpstr(r.out, ==,
                  "sip:alice@example.com realm=example.com enabled\n"
                  "sip:bob@example.com realm=Office enabled may-generate\n");
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state, "user", "delete", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  g_clear_pointer(&alice, store_user_free);
  alice = store_user_get(db, "sip:alice@example.com", &error);
  g_assert_null(alice);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);

  /* Empty password and a missing password file are refused. */
  RUN(&r, "\n", "--state-dir", fx->state, "user", "add", "sip:carol@example.com");
  g_assert_cmpint(r.status, ==, 1);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "user", "add", "sip:carol@example.com",
      "--password-file", "/nonexistent/pw");
  g_assert_cmpint(r.status, ==, 1);
  run_clear(&r);
  g_assert_null(store_user_get(db, "sip:carol@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
}

/* ---- helpers for keys ---- */

#define ALICE "sip:alice@example.com"

static void
assert_contains(const char *haystack, const char *needle)
{
  if (strstr(haystack, needle) == NULL)
    g_error("\"%s\" lacks \"%s\"", haystack, needle);
}

/* A failure (exit 1) whose message names @what. */
static void
assert_failed_naming(Run *r, const char *what)
{
  g_assert_cmpint(r->status, ==, 1);
  g_assert_true(g_str_has_prefix(r->err, "sipcred: "));
  assert_contains(r->err, what);
}

/* A new master key file @name in the fixture, made by sipcred keygen. */
static char *
keygen(Fixture *fx, const char *name)
{
  char *path = g_build_filename(fx->tmp, name, NULL);
  Run r = {0};

  RUN(&r, NULL, "keygen", path);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  return path;
}

static StoreDb *
open_store(Fixture *fx, const char *key_file)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreDb) db = store_db_open(fx->state, 0, &error);

  g_assert_no_error(error);
  if (key_file != NULL) {
    g_autoptr(StoreMasterKey) key = store_master_key_load(key_file, &error);
    g_assert_no_error(error);
    g_assert_true(store_db_set_master_key(db, key, &error));
    g_assert_no_error(error);
  }
  return g_steal_pointer(&db);
}

static StoreCred *
get_cred(StoreDb *db, const char *aor)
{
  g_autoptr(GError) error = NULL;
  StoreCred *cred = store_cred_get(db, aor, &error);

  g_assert_no_error(error);
  g_assert_nonnull(cred);
  return cred;
}

/* The LMDB file never holds @secret (a private key) in clear, nor any piece
 * of it that is not also in the public @cert_der (an EC PKCS#8 carries the
 * public key, which the certificate shows anyway). */
static void
assert_not_in_store_file(Fixture *fx, GBytes *secret, GBytes *cert_der)
{
  g_autofree char *path = g_build_filename(fx->state, "data.mdb", NULL);
  g_autofree char *data = NULL;
  gsize len = 0, n = g_bytes_get_size(secret), checked = 0;
  const guint8 *p = g_bytes_get_data(secret, NULL);

  g_assert_true(g_file_get_contents(path, &data, &len, NULL));
  g_assert_null(memmem(data, len, p, n));
  g_assert_cmpuint(n, >, 64);
  for (gsize i = 0; i + 24 <= n; i += 4) {
    if (memmem(g_bytes_get_data(cert_der, NULL), g_bytes_get_size(cert_der), p + i, 24) != NULL)
      continue;
    checked++;
    if (memmem(data, len, p + i, 24) != NULL)
      g_error("24 bytes of the private key at offset %" G_GSIZE_FORMAT " are in %s", i, path);
  }
  g_assert_cmpuint(checked, >, 0);
}

static void
assert_no_key_printed(Run *r)
{
  g_assert_null(strstr(r->out, "PRIVATE KEY"));
  g_assert_null(strstr(r->err, "PRIVATE KEY"));
}

static gnutls_x509_crt_t
crt_from_der(GBytes *der)
{
  gnutls_x509_crt_t crt;
  gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(der, NULL),
                       (unsigned int)g_bytes_get_size(der)};

  g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_import(crt, &in, GNUTLS_X509_FMT_DER), ==, 0);
  return crt;
}

/* ---- keygen ---- */

static void
test_keygen(Fixture *fx, gconstpointer data)
{
  g_autofree char *path = g_build_filename(fx->tmp, "master.key", NULL);
  g_autofree char *other = g_build_filename(fx->tmp, "other.key", NULL);
  g_autofree char *nodir = g_build_filename(fx->tmp, "no", "such", "dir.key", NULL);
  g_autofree char *bytes = NULL;
  g_autofree char *again = NULL;
  g_autofree char *hex = NULL;
  gsize len = 0;
  struct stat st;
  Run r = {0};

  RUN(&r, NULL, "keygen", path);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, path);
  assert_contains(r.out, "id ");
  g_assert_cmpint(g_stat(path, &st), ==, 0);
  g_assert_cmpuint(st.st_mode & 07777, ==, 0600);
  g_assert_true(g_file_get_contents(path, &bytes, &len, NULL));
  g_assert_cmpuint(len, ==, 32);
  /* The key itself is never shown, in any spelling. */
  {
    GString *h = g_string_new(NULL);
    for (gsize i = 0; i < len; i++)
      g_string_append_printf(h, "%02x", (guint8)bytes[i]);
    hex = g_string_free(h, FALSE);
  }
  g_assert_null(strstr(r.out, hex));
  g_assert_null(strstr(r.err, hex));
  run_clear(&r);

  /* Never overwritten. */
  RUN(&r, NULL, "keygen", path);
  assert_failed_naming(&r, path);
  assert_contains(r.err, "exists");
  run_clear(&r);
  g_assert_true(g_file_get_contents(path, &again, &len, NULL));
  g_assert_cmpmem(again, len, bytes, 32);

  /* --master-key names the file too; a missing directory is named. */
  RUN(&r, NULL, "keygen", "--master-key", other);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  g_assert_true(g_file_test(other, G_FILE_TEST_IS_REGULAR));
  RUN(&r, NULL, "keygen", nodir);
  assert_failed_naming(&r, nodir);
  run_clear(&r);

  /* Nothing to name the file: a usage error. */
  RUN(&r, NULL, "--state-dir", fx->state, "keygen");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "keygen", "a", "b");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
}

/* ---- cred generate ---- */

static void
assert_generated_profile(GBytes *der, const char *aor, guint bits, guint days)
{
  gnutls_x509_crt_t crt = crt_from_der(der);
  gnutls_datum_t dn = {NULL, 0}, issuer = {NULL, 0};
  unsigned int crit = 0, ca = 1, pk_bits = 0, verify = 1;
  int pathlen = 0;
  char san[512];
  size_t san_len = sizeof san;
  gint64 nb = gnutls_x509_crt_get_activation_time(crt);
  gint64 na = gnutls_x509_crt_get_expiration_time(crt);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  /* RFC 6072 10.6: self-signed (issuer = subject), SAN URI of the AOR, not a
   * CA, sha256WithRSAEncryption, at most @days (never more than a year),
   * with 0-10 % jitter; valid now. */
  g_assert_cmpint(gnutls_x509_crt_get_dn3(crt, &dn, 0), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_get_issuer_dn3(crt, &issuer, 0), ==, 0);
  g_assert_cmpmem(dn.data, dn.size, issuer.data, issuer.size);
  gnutls_free(dn.data);
  gnutls_free(issuer.data);
  g_assert_cmpint(gnutls_x509_crt_verify(crt, &crt, 1, 0, &verify), ==, 0);
  g_assert_cmpuint(verify, ==, 0);
  g_assert_cmpint(gnutls_x509_crt_get_subject_alt_name(crt, 0, san, &san_len, &crit), ==,
                  GNUTLS_SAN_URI);
  g_assert_cmpmem(san, san_len, aor, strlen(aor));
  g_assert_cmpint(gnutls_x509_crt_get_basic_constraints(crt, &crit, &ca, &pathlen), >=, 0);
  g_assert_cmpuint(ca, ==, 0);
  g_assert_cmpint(gnutls_x509_crt_get_signature_algorithm(crt), ==, GNUTLS_SIGN_RSA_SHA256);
  g_assert_cmpint(gnutls_x509_crt_get_pk_algorithm(crt, &pk_bits), ==, GNUTLS_PK_RSA);
  g_assert_cmpuint(pk_bits, ==, bits);
  g_assert_cmpint(na - nb, <=, (gint64)days * 86400);
  g_assert_cmpint(na - nb, >=, (gint64)days * 86400 * 9 / 10);
  g_assert_cmpint(na - nb, <=, 365 * 86400);
  g_assert_cmpint(nb, <=, now);
  g_assert_cmpint(na, >, now);
  gnutls_x509_crt_deinit(crt);
}

static void
test_cred_generate(Fixture *fx, gconstpointer data)
{
  g_autofree char *key = keygen(fx, "master.key");
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(StoreCred) alice = NULL;
  g_autoptr(StoreCred) bob = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(GBytes) matched = NULL;
  g_autoptr(GError) error = NULL;
  Run r = {0};

  RUN(&r, NULL, "--state-dir", fx->state, "--master-key", key, "cred", "generate", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "generated a credential for " ALICE);
  assert_contains(r.out, "key: server-held");
  assert_contains(r.out, "san: URI:" ALICE);
  assert_contains(r.out, "public-key: RSA 2048 bits");
  assert_contains(r.out, "issuer: CN=" ALICE);
  assert_no_key_printed(&r);
  run_clear(&r);

  /* Options after the command, and the other key size. */
  RUN(&r, NULL, "cred", "generate", "sip:bob@example.com", "--days", "30", "--bits", "3072", "-s",
      fx->state, "-k", key);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "public-key: RSA 3072 bits");
  run_clear(&r);

  db = open_store(fx, key);
  alice = get_cred(db, ALICE);
  bob = get_cred(db, "sip:bob@example.com");
  g_assert_cmpint(alice->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_cmpint(bob->key_kind, ==, STORE_KEY_SERVER_HELD);
  assert_generated_profile(alice->cert_der, ALICE, 2048, 365);
  assert_generated_profile(bob->cert_der, "sip:bob@example.com", 3072, 30);

  /* The stored key is the certificate's, and the LMDB file never saw it in
   * clear. */
  cert = ident_cert_new_from_data(g_bytes_get_data(alice->cert_der, NULL),
                                  g_bytes_get_size(alice->cert_der), &error);
  g_assert_no_error(error);
  g_assert_nonnull(alice->pkcs8);
  matched = ident_cert_match_private_key(cert, g_bytes_get_data(alice->pkcs8, NULL),
                                         g_bytes_get_size(alice->pkcs8), &error);
  g_assert_no_error(error);
  assert_not_in_store_file(fx, alice->pkcs8, alice->cert_der);
  assert_not_in_store_file(fx, bob->pkcs8, bob->cert_der);

  /* A second generate is a new credential, a new version. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", ALICE, "--days", "1");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "version: 2");
  run_clear(&r);
}

static void
test_cred_generate_refused(Fixture *fx, gconstpointer data)
{
  g_autofree char *key = keygen(fx, "master.key");
  g_autofree char *other = keygen(fx, "other.key");
  g_autofree char *loose = keygen(fx, "loose.key");
  g_autofree char *missing = g_build_filename(fx->tmp, "missing.key", NULL);
  Run r = {0};

  g_assert_cmpint(g_chmod(loose, 0640), ==, 0);

  /* No master key at all: says which key is missing and how to give it. */
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "generate", ALICE);
  assert_failed_naming(&r, "master key");
  assert_contains(r.err, "--master-key");
  run_clear(&r);
  /* A key that group can read. */
  RUN(&r, NULL, "--state-dir", fx->state, "-k", loose, "cred", "generate", ALICE);
  assert_failed_naming(&r, loose);
  assert_contains(r.err, "group or others");
  run_clear(&r);
  /* A key file that is not there. */
  RUN(&r, NULL, "--state-dir", fx->state, "-k", missing, "cred", "generate", ALICE);
  assert_failed_naming(&r, missing);
  run_clear(&r);

  /* The store takes the first key; another key is then refused, naming it. */
  RUN(&r, NULL, "--state-dir", fx->state, "-k", key, "cred", "generate", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "-k", other, "cred", "generate", "sip:bob@example.com");
  assert_failed_naming(&r, other);
  assert_contains(r.err, "not the key of the store");
  run_clear(&r);

  /* Bad AORs are named. */
  RUN(&r, NULL, "--state-dir", fx->state, "-k", key, "cred", "generate", "alice@example.com");
  assert_failed_naming(&r, "alice@example.com");
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "-k", key, "cred", "generate", "tel:+15551234");
  assert_failed_naming(&r, "tel:+15551234");
  run_clear(&r);

  /* Option values out of range are usage errors. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", ALICE, "--days", "0");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", ALICE, "--days", "366");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", ALICE, "--days", "soon");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", ALICE, "--bits", "1024");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);

  assert_cred_absent(fx, "sip:bob@example.com");
}

/* ---- cred import with a key ---- */

static void
test_cred_import_key(Fixture *fx, gconstpointer data)
{
  g_autofree char *key = keygen(fx, "master.key");
  g_autoptr(TestCert) tc = user_cert(ALICE, 0, 0);
  g_autoptr(TestCert) stranger = user_cert(ALICE, 0, 0);
  g_autofree char *pem = test_cert_get_pem(tc);
  g_autofree char *cert_file = write_file(fx, "alice.pem", pem, strlen(pem));
  g_autofree char *key_pem = test_cert_get_key_pem(tc);
  g_autofree char *key_file = write_file(fx, "alice.key", key_pem, strlen(key_pem));
  g_autoptr(GBytes) key_der =
      test_cert_export_key(tc, GNUTLS_X509_FMT_DER, GNUTLS_PKCS_PLAIN, NULL);
  g_autofree char *key_der_file =
      write_file(fx, "alice.key.der", g_bytes_get_data(key_der, NULL), g_bytes_get_size(key_der));
  g_autofree char *stranger_pem = test_cert_get_key_pem(stranger);
  g_autofree char *stranger_file =
      write_file(fx, "stranger.key", stranger_pem, strlen(stranger_pem));
  g_autoptr(GBytes) enc =
      test_cert_export_key(tc, GNUTLS_X509_FMT_PEM, GNUTLS_PKCS_PBES2_AES_256, "user secret");
  g_autofree char *enc_file =
      write_file(fx, "alice.p8", g_bytes_get_data(enc, NULL), g_bytes_get_size(enc));
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(StoreCred) cred = NULL;
  Run r = {0};

  /* --key: checked against the certificate, then held by the server. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "import", ALICE, "--cert", cert_file, "--key",
      key_file);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "imported the credential of " ALICE);
  assert_contains(r.out, "key: server-held");
  assert_no_key_printed(&r);
  run_clear(&r);
  db = open_store(fx, key);
  cred = get_cred(db, ALICE);
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_true(g_bytes_equal(cred->pkcs8, key_der));
  assert_not_in_store_file(fx, key_der, tc->der);
  g_clear_pointer(&cred, store_cred_free);

  /* The key in DER, the certificate positional. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "import", ALICE, cert_file, "--key",
      key_der_file);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "version: 2");
  run_clear(&r);

  /* Another key than the certificate's, naming the key file. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "import", ALICE, "--cert", cert_file, "--key",
      stranger_file);
  assert_failed_naming(&r, stranger_file);
  assert_contains(r.err, "does not belong");
  run_clear(&r);
  /* An encrypted key is no plain key. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "import", ALICE, "--cert", cert_file, "--key",
      enc_file);
  assert_failed_naming(&r, enc_file);
  assert_contains(r.err, "encrypted");
  run_clear(&r);
  /* A server-held key needs the master key. */
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", cert_file, "--key", key_file);
  assert_failed_naming(&r, "master key");
  run_clear(&r);

  /* --pkcs8: the user's encrypted PKCS#8, stored as given. */
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", cert_file, "--pkcs8",
      enc_file);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "key: user-encrypted");
  assert_contains(r.out, "key-encryption: PBES2, PBKDF2 hmacWithSHA256, aes256-cbc");
  run_clear(&r);
  cred = get_cred(db, ALICE);
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_USER_ENCRYPTED);
  g_assert_cmpuint(cred->version, ==, 3);
  {
    gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(enc, NULL),
                         (unsigned int)g_bytes_get_size(enc)};
    gnutls_datum_t der = {NULL, 0};
    g_assert_cmpint(gnutls_pem_base64_decode2("ENCRYPTED PRIVATE KEY", &in, &der), ==, 0);
    g_assert_cmpmem(g_bytes_get_data(cred->pkcs8, NULL), g_bytes_get_size(cred->pkcs8), der.data,
                    der.size);
    gnutls_free(der.data);
  }
  g_clear_pointer(&cred, store_cred_free);
  /* A plain key is not accepted as --pkcs8. */
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", cert_file, "--pkcs8",
      key_file);
  assert_failed_naming(&r, key_file);
  assert_contains(r.err, "ENCRYPTED PRIVATE KEY");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", cert_file, "--pkcs8",
      key_der_file);
  assert_failed_naming(&r, key_der_file);
  assert_contains(r.err, "unencrypted");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", cert_file, "--pkcs8",
      cert_file);
  assert_failed_naming(&r, cert_file);
  run_clear(&r);
  {
    g_autofree char *gone = g_build_filename(fx->tmp, "gone.key", NULL);
    RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "import", ALICE, "--cert", cert_file,
        "--key", gone);
    assert_failed_naming(&r, gone);
    run_clear(&r);
  }

  /* Wrong combinations are usage errors. */
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", cert_file, "--key", key_file,
      "--pkcs8", enc_file);
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, cert_file, "--cert", cert_file);
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--key", key_file);
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);

  /* None of the refusals changed the record. */
  cred = get_cred(db, ALICE);
  g_assert_cmpuint(cred->version, ==, 3);
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_USER_ENCRYPTED);
}

static void
test_cred_import_not_yet_valid(Fixture *fx, gconstpointer data)
{
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  g_autoptr(TestCert) future = user_cert(ALICE, now + 3600, now + 86400);
  g_autofree char *file = write_file(fx, "future.der", g_bytes_get_data(future->der, NULL),
                                     g_bytes_get_size(future->der));
  Run r = {0};

  /* RFC 6072 section 7.9: notBefore must not lie in the future. */
  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", file);
  assert_failed_naming(&r, file);
  assert_contains(r.err, "not yet valid");
  assert_contains(r.err, ALICE);
  run_clear(&r);
  assert_cred_absent(fx, ALICE);
}

/* ---- cred revoke and export ---- */

static void
test_cred_revoke(Fixture *fx, gconstpointer data)
{
  g_autoptr(TestCert) tc = user_cert(ALICE, 0, 0);
  g_autofree char *file =
      write_file(fx, "alice.der", g_bytes_get_data(tc->der, NULL), g_bytes_get_size(tc->der));
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(GPtrArray) changes = NULL;
  g_autoptr(GError) error = NULL;
  guint64 before;
  Run r = {0};

  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, file);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  db = open_store(fx, NULL);
  before = store_change_get_last_seq(db, &error);
  g_assert_no_error(error);

  RUN(&r, NULL, "-s", fx->state, "cred", "revoke", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "revoked the credential of " ALICE);
  run_clear(&r);
  assert_cred_absent(fx, ALICE);
  /* The daemon learns it from the change log. */
  changes = store_change_list_since(db, before, 10, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(changes->len, ==, 1);
  g_assert_cmpstr(((StoreChange *)g_ptr_array_index(changes, 0))->aor, ==, ALICE);
  g_assert_cmpint(((StoreChange *)g_ptr_array_index(changes, 0))->kind, ==, STORE_CHANGE_REVOKED);

  RUN(&r, NULL, "-s", fx->state, "cred", "revoke", ALICE);
  assert_failed_naming(&r, ALICE);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "revoke", "sip:nobody");
  assert_failed_naming(&r, "sip:nobody");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "revoke");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
}

static void
test_cred_export_pem(Fixture *fx, gconstpointer data)
{
  g_autoptr(TestCert) tc = user_cert(ALICE, 0, 0);
  g_autofree char *pem = test_cert_get_pem(tc);
  g_autofree char *file = write_file(fx, "alice.pem", pem, strlen(pem));
  g_autofree char *out_file = g_build_filename(fx->tmp, "out.pem", NULL);
  g_autofree char *written = NULL;
  Run r = {0};

  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, "--cert", file);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);

  /* Without FILE: standard output, and nothing else there. */
  RUN(&r, NULL, "-s", fx->state, "cred", "export", ALICE, "--pem");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_cmpstr(r.out, ==, pem);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "export", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  g_assert_true(g_bytes_equal(r.out_bytes, tc->der));
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "export", "--pem", ALICE, out_file);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.err, out_file);
  run_clear(&r);
  g_assert_true(g_file_get_contents(out_file, &written, NULL, NULL));
  g_assert_cmpstr(written, ==, pem);

  RUN(&r, NULL, "-s", fx->state, "cred", "export", "sip:bob@example.com");
  assert_failed_naming(&r, "sip:bob@example.com");
  g_assert_cmpstr(r.out, ==, "");
  run_clear(&r);
  {
    g_autofree char *bad = g_build_filename(fx->tmp, "no", "dir", "x.der", NULL);
    RUN(&r, NULL, "-s", fx->state, "cred", "export", ALICE, bad);
    assert_failed_naming(&r, bad);
    run_clear(&r);
  }
}

static void
test_cred_show(Fixture *fx, gconstpointer data)
{
  const char *uris[] = {ALICE, "im:alice@example.com", NULL};
  const char *dns[] = {"alice.example.com", NULL};
  TestCertSpec spec = {.cn = "Alice", .uris = uris, .dns = dns};
  g_autoptr(TestCert) tc = test_cert_new(&spec);
  g_autofree char *file =
      write_file(fx, "alice.der", g_bytes_get_data(tc->der, NULL), g_bytes_get_size(tc->der));
  g_autofree char *fp = sha256_fingerprint(tc->der);
  Run r = {0};

  RUN(&r, NULL, "-s", fx->state, "cred", "import", ALICE, file);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "cred", "show", "<sips:alice@Example.COM>");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "aor: " ALICE "\n");
  assert_contains(r.out, "subject: CN=Alice\n");
  assert_contains(r.out, "issuer: CN=Alice\n");
  assert_contains(r.out, "san: URI:" ALICE "\nsan: URI:im:alice@example.com\n"
                         "san: DNS:alice.example.com\n");
  assert_contains(r.out, "status: valid\n");
  assert_contains(r.out, "public-key: ECDSA 256 bits\n");
  assert_contains(r.out, "key: none\n");
  {
    g_autofree char *line = g_strdup_printf("sha256-fingerprint: %s\n", fp);
    assert_contains(r.out, line);
  }
  run_clear(&r);
}

/* ---- user passwd, del ---- */

/* user import: many users from one private file, with progress that ends
 * on the total; a file others can read, or a bad line, changes nothing. */
static void
test_user_import(Fixture *fx, gconstpointer data)
{
  const guint n = 1500;
  g_autoptr(GString) text = g_string_new("# name password\n\n");
  g_autoptr(GError) error = NULL;
  Run r = {0};

  for (guint i = 0; i < n; i++)
    g_string_append_printf(text, "sip:u%u@example.com pass word %u\r\n", i, i);
  g_autofree char *path = write_file(fx, "users", text->str, text->len);

  g_assert_cmpint(g_chmod(path, 0644), ==, 0);
  RUN(&r, NULL, "--state-dir", fx->state, "user", "import", path);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "readable by group or others"));
  run_clear(&r);

  const char *bad_text = "sip:a@example.com pw\nsip:b@example.com\n";
  g_autofree char *bad = write_file(fx, "bad", bad_text, strlen(bad_text));
  g_assert_cmpint(g_chmod(bad, 0600), ==, 0);
  RUN(&r, NULL, "--state-dir", fx->state, "user", "import", bad);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "line 2: no password"));
  run_clear(&r);

  g_assert_cmpint(g_chmod(path, 0600), ==, 0);
  RUN(&r, NULL, "--state-dir", fx->state, "user", "import", path);
  g_assert_cmpint(r.status, ==, 0);
  g_autofree char *last = g_strdup_printf("user import: %u of %u users\n", n, n);
  g_assert_nonnull(strstr(r.err, last));
  g_assert_null(strstr(r.err, "pass word"));
  g_assert_null(strstr(r.out, "pass word"));
  run_clear(&r);

  g_autoptr(StoreDb) db = store_db_open(fx->state, 0, &error);
  g_assert_no_error(error);
  g_autoptr(GPtrArray) users = store_user_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(users->len, ==, n); /* "bad" wrote nothing */
  g_autoptr(StoreUser) u7 = store_user_get(db, "sip:u7@example.com", &error);
  g_assert_no_error(error);
  g_autofree char *sha = expected_ha1(G_CHECKSUM_SHA256, "u7", "example.com", "pass word 7");
  g_assert_cmpstr(u7->ha1_sha256, ==, sha);
}

static void
test_user_passwd(Fixture *fx, gconstpointer data)
{
  g_autofree char *old_pw = write_file(fx, "old", "first secret\n", 13);
  g_autofree char *new_pw = write_file(fx, "new", "second secret\n", 14);
  g_autofree char *sha = expected_ha1(G_CHECKSUM_SHA256, "alice", "Office", "second secret");
  g_autofree char *md5 = expected_ha1(G_CHECKSUM_MD5, "alice", "Office", "second secret");
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(StoreUser) user = NULL;
  g_autoptr(GError) error = NULL;
  Run r = {0};

  RUN(&r, NULL, "-s", fx->state, "user", "add", ALICE, "--password-file", old_pw, "--realm",
      "Office", "--may-generate");
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "user", "passwd", ALICE, "--password-file", new_pw);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, ALICE);
  g_assert_null(strstr(r.out, "second secret"));
  g_assert_null(strstr(r.out, sha));
  run_clear(&r);

  /* New HA1 values; the realm and the flags stay. */
  db = open_store(fx, NULL);
  user = store_user_get(db, ALICE, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(user->realm, ==, "Office");
  g_assert_cmpstr(user->ha1_sha256, ==, sha);
  g_assert_cmpstr(user->ha1_md5, ==, md5);
  g_assert_cmpuint(user->flags, ==, STORE_USER_ENABLED | STORE_USER_MAY_GENERATE);

  /* From standard input too. */
  RUN(&r, "third\n", "-s", fx->state, "user", "passwd", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);

  /* An unknown user is named, and no password is read for it. */
  RUN(&r, "x\n", "-s", fx->state, "user", "passwd", "sip:bob@example.com");
  assert_failed_naming(&r, "sip:bob@example.com");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "user", "passwd", ALICE, "--password-file", "/nonexistent/pw");
  assert_failed_naming(&r, "/nonexistent/pw");
  run_clear(&r);
  RUN(&r, "\n", "-s", fx->state, "user", "passwd", ALICE);
  assert_failed_naming(&r, ALICE);
  assert_contains(r.err, "empty");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "user", "passwd", ALICE, "secret-on-argv");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);

  RUN(&r, NULL, "-s", fx->state, "user", "del", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "user", "del", ALICE);
  assert_failed_naming(&r, ALICE);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "user", "list");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_cmpstr(r.out, ==, "");
  run_clear(&r);
}

/* ---- db ---- */

static char *
stats_value(const char *out, const char *field)
{
  g_autofree char *prefix = g_strdup_printf("\n%s: ", field);
  g_autofree char *text = g_strconcat("\n", out, NULL);
  const char *p = strstr(text, prefix);
  const char *end;

  g_assert_nonnull(p);
  p += strlen(prefix);
  end = strchr(p, '\n');
  return g_strndup(p, end - p);
}

static void
test_db(Fixture *fx, gconstpointer data)
{
  g_autofree char *key = keygen(fx, "master.key");
  g_autofree char *new_key = keygen(fx, "new.key");
  g_autofree char *newest = keygen(fx, "newest.key");
  g_autofree char *pw = write_file(fx, "pw", "pw\n", 3);
  g_autofree char *backup = g_build_filename(fx->tmp, "backup.mdb", NULL);
  g_autofree char *restored = g_build_filename(fx->tmp, "restored", NULL);
  g_autofree char *restored_file = g_build_filename(restored, "data.mdb", NULL);
  g_autofree char *contents = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) pkcs8_before = NULL;
  gsize len = 0;
  struct stat st;
  Run r = {0};

  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", ALICE);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "user", "add", ALICE, "--password-file", pw);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  {
    g_autoptr(StoreDb) db = open_store(fx, key);
    g_autoptr(StoreCred) cred = get_cred(db, ALICE);
    pkcs8_before = g_bytes_ref(cred->pkcs8);
  }

  /* stats */
  RUN(&r, NULL, "-s", fx->state, "db", "stats");
  g_assert_cmpint(r.status, ==, 0);
  {
    g_autofree char *users = stats_value(r.out, "users");
    g_autofree char *creds = stats_value(r.out, "credentials");
    g_autofree char *held = stats_value(r.out, "server-held-keys");
    g_autofree char *changes = stats_value(r.out, "changes");
    g_autofree char *last = stats_value(r.out, "last-change");
    g_autofree char *schema = stats_value(r.out, "schema-version");
    g_assert_cmpstr(users, ==, "1");
    g_assert_cmpstr(creds, ==, "1");
    g_assert_cmpstr(held, ==, "1");
    g_assert_cmpstr(changes, ==, "2");
    g_assert_cmpstr(last, ==, "2");
    g_assert_cmpuint(g_ascii_strtoull(schema, NULL, 10), ==, STORE_SCHEMA_VERSION);
  }
  run_clear(&r);

  /* check: with the key, the server-held keys are unwrapped too. */
  RUN(&r, NULL, "-s", fx->state, "db", "check");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "not unwrapped");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "db", "check");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "consistent");
  assert_contains(r.out, "all unwrapped");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", new_key, "db", "check");
  assert_failed_naming(&r, new_key);
  run_clear(&r);

  /* backup: a new file, mode 0600, that opens as a store with the data. */
  RUN(&r, NULL, "-s", fx->state, "db", "backup", backup);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, backup);
  run_clear(&r);
  g_assert_cmpint(g_stat(backup, &st), ==, 0);
  g_assert_cmpuint(st.st_mode & 07777, ==, 0600);
  RUN(&r, NULL, "-s", fx->state, "db", "backup", backup);
  assert_failed_naming(&r, backup);
  run_clear(&r);
  g_assert_cmpint(g_mkdir(restored, 0700), ==, 0);
  g_assert_true(g_file_get_contents(backup, &contents, &len, NULL));
  g_assert_true(g_file_set_contents(restored_file, contents, (gssize)len, NULL));
  RUN(&r, NULL, "-s", restored, "-k", key, "db", "check");
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "-s", restored, "cred", "list");
  g_assert_cmpstr(r.out, ==, ALICE "\n");
  run_clear(&r);
  {
    g_autofree char *bad = g_build_filename(fx->tmp, "no", "dir", "b.mdb", NULL);
    RUN(&r, NULL, "-s", fx->state, "db", "backup", bad);
    assert_failed_naming(&r, bad);
    run_clear(&r);
  }

  /* rekey: needs the current key, refuses it as the new one. */
  RUN(&r, NULL, "-s", fx->state, "db", "rekey", new_key);
  assert_failed_naming(&r, "--master-key");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "db", "rekey", key);
  assert_failed_naming(&r, key);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", newest, "db", "rekey", new_key);
  assert_failed_naming(&r, newest);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "db", "rekey", "/nonexistent/k");
  assert_failed_naming(&r, "/nonexistent/k");
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", key, "db", "rekey", new_key);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, new_key);
  assert_contains(r.out, "1 server-held");
  /* Progress ends on the total of credential records visited. */
  assert_contains(r.err, "db rekey: 1 of 1 credential records\n");
  run_clear(&r);

  /* Afterwards the old key is refused and the new one opens the same key. */
  RUN(&r, NULL, "-s", fx->state, "-k", key, "cred", "generate", "sip:bob@example.com");
  assert_failed_naming(&r, key);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "-k", new_key, "db", "check");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "all unwrapped");
  run_clear(&r);
  {
    g_autoptr(StoreDb) db = open_store(fx, new_key);
    g_autoptr(StoreCred) cred = get_cred(db, ALICE);
    g_assert_true(g_bytes_equal(cred->pkcs8, pkcs8_before));
  }

  RUN(&r, NULL, "-s", fx->state, "db", "frobnicate");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "-s", fx->state, "db", "check", "extra");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
}

/* ---- usage and configuration ---- */

static void
test_usage(Fixture *fx, gconstpointer data)
{
  Run r = {0};

  RUN(&r, NULL, "--help");
  g_assert_cmpint(r.status, ==, 0);
  {
    static const char *const commands[] = {
        "keygen",        "user add",    "user passwd",  "user del",     "user list",
        "cred generate", "cred import", "cred show",    "cred list",    "cred export",
        "cred revoke",   "db backup",   "db check",     "db stats",     "db rekey",
        "user import",   "stats",       "Exit status:", "--master-key", "--state-dir",
        "--config"};
    for (guint i = 0; i < G_N_ELEMENTS(commands); i++)
      assert_contains(r.out, commands[i]);
  }
  run_clear(&r);

  /* Each command has its own help, with the common options and exit codes. */
  RUN(&r, NULL, "cred", "import", "--help");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "--pkcs8");
  assert_contains(r.out, "--master-key");
  assert_contains(r.out, "Exit status:");
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "cred");
  g_assert_cmpint(r.status, ==, 2);
  assert_contains(r.err, "generate");
  run_clear(&r);

  RUN(&r, NULL, "--version");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_true(g_str_has_prefix(r.out, "sipcred "));
  run_clear(&r);

  RUN(&r, NULL, "--state-dir", fx->state);
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "frobnicate");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "import", "sip:alice@example.com");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "--state-dir", fx->state, "user", "add", "sip:a@example.com", "--bogus");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
  RUN(&r, NULL, "--no-such-option");
  g_assert_cmpint(r.status, ==, 2);
  run_clear(&r);
}

static void
test_config(Fixture *fx, gconstpointer data)
{
  const char *dns[] = {"example.com", NULL};
  TestCertSpec domain_spec = {.cn = "example.com", .dns = dns};
  g_autoptr(TestCert) domain = test_cert_new(&domain_spec);
  g_autoptr(TestCert) alice = user_cert("sip:alice@example.com", 0, 0);
  g_autoptr(TestCert) eve = user_cert("sip:eve@other.example", 0, 0);
  g_autofree char *domain_pem = test_cert_get_pem(domain);
  g_autofree char *domain_key = test_cert_get_key_pem(domain);
  g_autofree char *cert_file = write_file(fx, "domain.pem", domain_pem, strlen(domain_pem));
  g_autofree char *key_file = write_file(fx, "domain.key", domain_key, strlen(domain_key));
  g_assert_cmpint(g_chmod(key_file, 0600), ==, 0);
  g_autofree char *alice_file = write_file(fx, "alice.der", g_bytes_get_data(alice->der, NULL),
                                           g_bytes_get_size(alice->der));
  g_autofree char *eve_file =
      write_file(fx, "eve.der", g_bytes_get_data(eve->der, NULL), g_bytes_get_size(eve->der));
  g_autofree char *conf = g_strdup_printf("[server]\n"
                                          "domains=example.com\n"
                                          "state-dir=%s\n"
                                          "[domain example.com]\n"
                                          "certificate=%s\n"
                                          "key=%s\n",
                                          fx->state, cert_file, key_file);
  g_autofree char *conf_file = write_file(fx, "sipcredd.conf", conf, strlen(conf));
  g_autofree char *missing = g_build_filename(fx->tmp, "missing.conf", NULL);
  Run r = {0};

  RUN(&r, NULL, "--config", conf_file, "cred", "import", "sip:alice@example.com", alice_file);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  /* The store is the one the configuration names. */
  RUN(&r, NULL, "--state-dir", fx->state, "cred", "list");
  g_assert_cmpstr(r.out, ==, "sip:alice@example.com\n");
  run_clear(&r);

  /* A domain we do not serve is refused, even with a matching certificate. */
  RUN(&r, NULL, "--config", conf_file, "cred", "import", "sip:eve@other.example", eve_file);
  g_assert_cmpint(r.status, ==, 1);
  g_assert_nonnull(strstr(r.err, "other.example"));
  run_clear(&r);
  RUN(&r, "pw\n", "--config", conf_file, "user", "add", "sip:eve@other.example");
  g_assert_cmpint(r.status, ==, 1);
  run_clear(&r);
  assert_cred_absent(fx, "sip:eve@other.example");

  RUN(&r, NULL, "--config", missing, "cred", "list");
  g_assert_cmpint(r.status, ==, 1);
  g_assert_true(g_str_has_prefix(r.err, "sipcred: "));
  run_clear(&r);
}

/* [store] master-key: relative to the configuration, made by keygen, used
 * by every command that needs it; --master-key overrides it. */
static void
test_config_master_key(Fixture *fx, gconstpointer data)
{
  const char *dns[] = {"example.com", NULL};
  TestCertSpec domain_spec = {.cn = "example.com", .dns = dns};
  g_autoptr(TestCert) domain = test_cert_new(&domain_spec);
  g_autofree char *domain_pem = test_cert_get_pem(domain);
  g_autofree char *domain_key = test_cert_get_key_pem(domain);
  g_autofree char *cert_file = write_file(fx, "domain.pem", domain_pem, strlen(domain_pem));
  g_autofree char *key_file = write_file(fx, "domain.key", domain_key, strlen(domain_key));
  g_assert_cmpint(g_chmod(key_file, 0600), ==, 0);
  g_autofree char *conf = g_strdup_printf("[server]\n"
                                          "domains=example.com\n"
                                          "state-dir=state\n"
                                          "[domain example.com]\n"
                                          "certificate=%s\n"
                                          "key=%s\n"
                                          "[store]\n"
                                          "master-key=keys/master.key\n",
                                          cert_file, key_file);
  g_autofree char *conf_file = write_file(fx, "sipcredd.conf", conf, strlen(conf));
  g_autofree char *keys_dir = g_build_filename(fx->tmp, "keys", NULL);
  g_autofree char *master = g_build_filename(keys_dir, "master.key", NULL);
  g_autofree char *other = g_build_filename(fx->tmp, "other.key", NULL);
  Run r = {0};

  /* Missing: the message names the file from the configuration. */
  RUN(&r, NULL, "-c", conf_file, "cred", "generate", ALICE);
  assert_failed_naming(&r, master);
  run_clear(&r);

  g_assert_cmpint(g_mkdir(keys_dir, 0700), ==, 0);
  RUN(&r, NULL, "-c", conf_file, "keygen");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, master);
  run_clear(&r);
  RUN(&r, NULL, "cred", "generate", ALICE, "-c", conf_file);
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "key: server-held");
  run_clear(&r);
  RUN(&r, NULL, "-c", conf_file, "db", "check");
  g_assert_cmpint(r.status, ==, 0);
  assert_contains(r.out, "all unwrapped");
  run_clear(&r);

  /* --master-key wins over the configuration. */
  RUN(&r, NULL, "keygen", other);
  g_assert_cmpint(r.status, ==, 0);
  run_clear(&r);
  RUN(&r, NULL, "-c", conf_file, "db", "check", "--master-key", other);
  assert_failed_naming(&r, other);
  run_clear(&r);
  /* Served domains still apply. */
  RUN(&r, NULL, "-c", conf_file, "cred", "generate", "sip:eve@other.example");
  assert_failed_naming(&r, "other.example");
  run_clear(&r);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  sipcred_bin = g_getenv("SIPCRED_BIN");
  if (sipcred_bin == NULL && argc > 1)
    sipcred_bin = argv[1];
  if (sipcred_bin == NULL) {
    g_printerr("usage: test-cli PATH-TO-SIPCRED (or set SIPCRED_BIN)\n");
    return 1;
  }

#define ADD(path, fn) g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  ADD("/cli/cred/import-export", test_cred_import_export);
  ADD("/cli/cred/import-refused", test_cred_import_refused);
  ADD("/cli/user/add", test_user_add);
  ADD("/cli/usage", test_usage);
  ADD("/cli/keygen", test_keygen);
  ADD("/cli/cred/generate", test_cred_generate);
  ADD("/cli/cred/generate-refused", test_cred_generate_refused);
  ADD("/cli/cred/import-key", test_cred_import_key);
  ADD("/cli/cred/import-not-yet-valid", test_cred_import_not_yet_valid);
  ADD("/cli/cred/revoke", test_cred_revoke);
  ADD("/cli/cred/export-pem", test_cred_export_pem);
  ADD("/cli/cred/show", test_cred_show);
  ADD("/cli/user/passwd", test_user_passwd);
  ADD("/cli/user/import", test_user_import);
  ADD("/cli/db", test_db);
  ADD("/cli/config", test_config);
  ADD("/cli/config/master-key", test_config_master_key);
#undef ADD

  return g_test_run();
}
