#define G_LOG_DOMAIN "sipcred-test-cli"

#include <string.h>

#include <gio/gio.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "../identity/testcert.h"
#include "storage/store.h"

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
rm_rf(const char *path)
{
  GDir *dir = g_dir_open(path, 0, NULL);

  if (dir != NULL) {
    const char *name;
    while ((name = g_dir_read_name(dir)) != NULL) {
      g_autofree char *child = g_build_filename(path, name, NULL);
      rm_rf(child);
    }
    g_dir_close(dir);
    g_rmdir(path);
  } else {
    g_unlink(path);
  }
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
  rm_rf(fx->tmp);
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
  g_assert_cmpstr(expected_ha1(G_CHECKSUM_MD5, "Mufasa", "testrealm@host.com", "Circle Of Life"),
                  ==, "939e7578ed9e3c518a452acee763bce9");

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

/* ---- usage and configuration ---- */

static void
test_usage(Fixture *fx, gconstpointer data)
{
  Run r = {0};

  RUN(&r, NULL, "--help");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.out, "cred import"));
  g_assert_nonnull(strstr(r.out, "user add"));
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
  ADD("/cli/config", test_config);
#undef ADD

  return g_test_run();
}
