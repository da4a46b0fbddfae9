/* Fuzz target: the configuration loader, srv_config_load().
 *
 * The input is written to sipcredd.conf in a private temporary directory,
 * made once per process and removed at exit. Next to it are certificate and
 * key pairs for example.com and example.org, a key that matches neither and
 * a file that is no PEM, so that inputs naming them by relative path get
 * past the certificate checks into the rest of the loader. A failure must
 * be a SRV_CONFIG_ERROR naming the file; a success must hold the limits the
 * loader promises. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/config.h"
#include "fuzz.h"

/* LeakSanitizer reads this at start. GnuTLS 3.7.9 leaks the certificate it
 * was decoding when gnutls_certificate_set_x509_key_file2() meets a PEM
 * CERTIFICATE block that does not decode (seen with a plain C program, no
 * sipcred code involved). config.c never makes a certificate itself, so a
 * leak from gnutls_x509_crt_init is always that one. */
const char *__lsan_default_suppressions(void);
__attribute__((visibility("default"))) const char *
__lsan_default_suppressions(void)
{
  return "leak:gnutls_x509_crt_init\n";
}

static char *tmp_dir;
static char *conf_path;
static const char *const tmp_files[] = {"sipcredd.conf",   "example.com.pem", "example.com.key",
                                        "example.org.pem", "example.org.key", "other.key",
                                        "garbage.pem"};

static void
remove_tmp_dir(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(tmp_files); i++) {
    g_autofree char *path = g_build_filename(tmp_dir, tmp_files[i], NULL);
    g_unlink(path);
  }
  g_rmdir(tmp_dir);
}

static void
write_file(const char *name, const void *data, gsize len)
{
  g_autofree char *path = g_build_filename(tmp_dir, name, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_file_set_contents(path, data, len, &error)) {
    fprintf(stderr, "fuzz-config: %s\n", error->message);
    abort();
  }
}

static gnutls_x509_privkey_t
make_key(void)
{
  gnutls_x509_privkey_t key;
  FUZZ_CHECK(gnutls_x509_privkey_init(&key) == 0);
  FUZZ_CHECK(gnutls_x509_privkey_generate(
                 key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0) == 0);
  return key;
}

static void
write_key(const char *name, gnutls_x509_privkey_t key)
{
  gnutls_datum_t out;
  FUZZ_CHECK(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &out) == 0);
  write_file(name, out.data, out.size);
  gnutls_free(out.data);
}

/* A self-signed certificate for @domain as DOMAIN.pem, its key as DOMAIN.key. */
static void
write_cert_pair(const char *domain)
{
  gnutls_x509_privkey_t key = make_key();
  gnutls_x509_crt_t crt;
  FUZZ_CHECK(gnutls_x509_crt_init(&crt) == 0);
  gnutls_x509_crt_set_version(crt, 3);
  static const unsigned char serial[] = {1};
  gnutls_x509_crt_set_serial(crt, serial, sizeof serial);
  gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, domain, strlen(domain));
  gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, domain, strlen(domain),
                                       GNUTLS_FSAN_SET);
  time_t now = time(NULL);
  gnutls_x509_crt_set_activation_time(crt, now - 60);
  gnutls_x509_crt_set_expiration_time(crt, now + 86400);
  gnutls_x509_crt_set_key(crt, key);
  FUZZ_CHECK(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0) == 0);

  gnutls_datum_t out;
  FUZZ_CHECK(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &out) == 0);
  g_autofree char *cert_name = g_strconcat(domain, ".pem", NULL);
  write_file(cert_name, out.data, out.size);
  gnutls_free(out.data);
  g_autofree char *key_name = g_strconcat(domain, ".key", NULL);
  write_key(key_name, key);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_privkey_deinit(key);
}

static void
set_up_once(void)
{
  static const char garbage[] = "-----BEGIN CERTIFICATE-----\nnot base64\n";
  g_autoptr(GError) error = NULL;

  if (tmp_dir != NULL)
    return;
  tmp_dir = g_dir_make_tmp("sipcred-fuzz-config-XXXXXX", &error);
  if (tmp_dir == NULL) {
    fprintf(stderr, "fuzz-config: %s\n", error->message);
    abort();
  }
  atexit(remove_tmp_dir);
  conf_path = g_build_filename(tmp_dir, "sipcredd.conf", NULL);
  write_cert_pair("example.com");
  write_cert_pair("example.org");
  gnutls_x509_privkey_t other = make_key();
  write_key("other.key", other);
  gnutls_x509_privkey_deinit(other);
  write_file("garbage.pem", garbage, sizeof garbage - 1);
}

/* The loader reads whatever files the input names. A character device
 * (/dev/zero, /dev/stdin) or a FIFO would never end; a configuration is
 * the administrator's input, not a peer's, so such paths are not fuzzed. */
static gboolean
names_special_files(const uint8_t *data, size_t size)
{
  static const char *const dirs[] = {"dev/", "proc/", "sys/", "run/"};
  if (size == 0)
    return FALSE; /* memmem() must not see the NULL of an empty input */
  for (gsize i = 0; i < G_N_ELEMENTS(dirs); i++)
    if (memmem(data, size, dirs[i], strlen(dirs[i])) != NULL)
      return TRUE;
  return FALSE;
}

static void
check_config(const SrvConfig *cfg)
{
  FUZZ_CHECK(g_str_equal(cfg->path, conf_path));
  FUZZ_CHECK(cfg->domains != NULL && cfg->domains[0] != NULL);
  guint n_domains = g_strv_length(cfg->domains);
  for (guint i = 0; i < n_domains; i++) {
    g_autofree char *lower = g_ascii_strdown(cfg->domains[i], -1);
    FUZZ_CHECK(g_str_equal(lower, cfg->domains[i]));
  }
  FUZZ_CHECK(cfg->listen != NULL && cfg->listen[0] != NULL);
  FUZZ_CHECK(cfg->state_dir != NULL && g_path_is_absolute(cfg->state_dir));
  FUZZ_CHECK(cfg->tls_priority != NULL);
  FUZZ_CHECK(cfg->shutdown_timeout_ms <= 600000);
  FUZZ_CHECK(cfg->handshake_timeout_ms >= 100 && cfg->handshake_timeout_ms <= 600000);
  FUZZ_CHECK(cfg->idle_timeout_ms >= 100 && cfg->idle_timeout_ms <= 86400000);
  FUZZ_CHECK(cfg->max_connections >= 1 && cfg->max_connections_per_ip >= 1);
  FUZZ_CHECK(cfg->max_message_size >= 1024 && cfg->max_message_size <= 16 * 1024 * 1024);

  /* Every served domain has its certificate and key, in the same order. */
  FUZZ_CHECK(cfg->domain_certs != NULL && cfg->domain_certs->len == n_domains);
  for (guint i = 0; i < n_domains; i++) {
    const SrvDomain *d = g_ptr_array_index(cfg->domain_certs, i);
    FUZZ_CHECK(g_str_equal(d->name, cfg->domains[i]));
    FUZZ_CHECK(g_path_is_absolute(d->cert_file) && g_path_is_absolute(d->key_file));
  }

  const CoreConfig *core = &cfg->core;
  FUZZ_CHECK(core->domains == (const char *const *)cfg->domains);
  FUZZ_CHECK(core->min_expires >= 1 && core->min_expires <= core->default_expires &&
             core->default_expires <= core->max_expires);
  FUZZ_CHECK(core->notify_window >= 1 && core->notify_window <= 100000);
  FUZZ_CHECK(cfg->map_size >= 1024 * 1024);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (names_special_files(data, size))
    return 0;
  set_up_once();
  write_file("sipcredd.conf", data, size);

  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg = srv_config_load(conf_path, &error);
  if (cfg == NULL) {
    FUZZ_CHECK(error != NULL && error->domain == SRV_CONFIG_ERROR);
    FUZZ_CHECK(error->code == SRV_CONFIG_ERROR_SYNTAX || error->code == SRV_CONFIG_ERROR_KEY);
    /* The message says which file is wrong. */
    FUZZ_CHECK(g_str_has_prefix(error->message, conf_path));
    return 0;
  }
  FUZZ_CHECK(error == NULL);
  check_config(cfg);
  return 0;
}
