/* Tests of server/config: every error names the file, line, group and key. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <string.h>

#include "server/config.h"

typedef struct {
  char *dir;
  char *path;
} Fixture;

/* A self-signed ECDSA certificate and its key, written as PEM into @dir. */
static void
write_cert_pair(const char *dir, const char *name)
{
  gnutls_x509_privkey_t key;
  gnutls_x509_crt_t crt;
  g_assert_cmpint(gnutls_x509_privkey_init(&key), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
                                               GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
                  ==, 0);
  g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
  gnutls_x509_crt_set_version(crt, 3);
  unsigned char serial[] = {1};
  gnutls_x509_crt_set_serial(crt, serial, sizeof serial);
  gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, name, strlen(name));
  gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, name, strlen(name),
                                       GNUTLS_FSAN_SET);
  time_t now = time(NULL);
  gnutls_x509_crt_set_activation_time(crt, now - 60);
  gnutls_x509_crt_set_expiration_time(crt, now + 3600);
  gnutls_x509_crt_set_key(crt, key);
  g_assert_cmpint(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), ==, 0);

  gnutls_datum_t out;
  g_autofree char *cert_path = g_strdup_printf("%s/%s.pem", dir, name);
  g_autofree char *key_path = g_strdup_printf("%s/%s.key", dir, name);
  g_assert_cmpint(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &out), ==, 0);
  g_assert_true(g_file_set_contents(cert_path, (char *)out.data, out.size, NULL));
  gnutls_free(out.data);
  g_assert_cmpint(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &out), ==, 0);
  g_assert_true(g_file_set_contents(key_path, (char *)out.data, out.size, NULL));
  g_assert_cmpint(g_chmod(key_path, 0600), ==, 0); /* others may not read a key */
  gnutls_free(out.data);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_privkey_deinit(key);
}

static void
fixture_set_up(Fixture *f, gconstpointer data)
{
  f->dir = g_dir_make_tmp("sipcred-config-XXXXXX", NULL);
  g_assert_nonnull(f->dir);
  write_cert_pair(f->dir, "example.com");
  write_cert_pair(f->dir, "example.org");
  f->path = g_build_filename(f->dir, "sipcredd.conf", NULL);
}

static void
fixture_tear_down(Fixture *f, gconstpointer data)
{
  g_autoptr(GFile) dir = g_file_new_for_path(f->dir);
  g_autoptr(GFileEnumerator) e =
      g_file_enumerate_children(dir, G_FILE_ATTRIBUTE_STANDARD_NAME, 0, NULL, NULL);
  GFileInfo *info;
  while (e && (info = g_file_enumerator_next_file(e, NULL, NULL))) {
    g_autofree char *p = g_build_filename(f->dir, g_file_info_get_name(info), NULL);
    g_unlink(p);
    g_object_unref(info);
  }
  g_rmdir(f->dir);
  g_free(f->dir);
  g_free(f->path);
}

static const char minimal[] = "[server]\n"
                              "domains=Example.COM\n"
                              "state-dir=state\n"
                              "[domain example.com]\n"
                              "certificate=example.com.pem\n"
                              "key=example.com.key\n";

static SrvConfig *
load_text(Fixture *f, const char *text, GError **error)
{
  g_assert_true(g_file_set_contents(f->path, text, -1, NULL));
  return srv_config_load(f->path, error);
}

static void
test_defaults(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg = load_text(f, minimal, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(cfg->domains[0], ==, "example.com");
  g_assert_null(cfg->domains[1]);
  g_assert_cmpstr(cfg->listen[0], ==, "127.0.0.1:5061");
  /* Relative paths resolve against the configuration's directory. */
  g_autofree char *state = g_build_filename(f->dir, "state", NULL);
  g_assert_cmpstr(cfg->state_dir, ==, state);
  g_assert_cmpuint(cfg->domain_certs->len, ==, 1);
  SrvDomain *d = g_ptr_array_index(cfg->domain_certs, 0);
  g_autofree char *pem = g_build_filename(f->dir, "example.com.pem", NULL);
  g_assert_cmpstr(d->cert_file, ==, pem);
  g_assert_cmpstr(cfg->tls_priority, ==, SRV_TLS_PRIORITY_DEFAULT);
  g_assert_cmpuint(cfg->core.default_expires, ==, 86400);
  g_assert_cmpuint(cfg->core.max_expires, ==, 86400);
  g_assert_cmpuint(cfg->core.min_expires, ==, 60);
  g_assert_cmpuint(cfg->core.notify_window, ==, 200);
  /* RFC 6072 6.10 and 7.12: a minute between NOTIFYs unless configured. */
  g_assert_cmpuint(cfg->core.min_notify_interval, ==, 60);
  g_assert_cmpstr(cfg->core.domains[0], ==, "example.com");
  g_assert_cmpuint(cfg->max_message_size, ==, 65535);
  /* No master key unless one is named. */
  g_assert_null(cfg->master_key);
}

static void
test_master_key(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *text = g_strconcat(minimal, "[store]\nmaster-key = keys/master.key \n", NULL);
  g_autoptr(SrvConfig) cfg = load_text(f, text, &error);
  g_autofree char *expected = g_build_filename(f->dir, "keys", "master.key", NULL);
  g_autofree char *abs_text =
      g_strconcat(minimal, "[store]\nmaster-key=/srv/k/master.key\n", NULL);
  g_autoptr(SrvConfig) abs_cfg = NULL;

  /* Relative to the configuration file, like every other path; the file need
   * not exist yet (sipcred keygen creates it). */
  g_assert_no_error(error);
  g_assert_cmpstr(cfg->master_key, ==, expected);
  abs_cfg = load_text(f, abs_text, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(abs_cfg->master_key, ==, "/srv/k/master.key");
}

static void
test_example_file_is_valid(Fixture *f, gconstpointer data)
{
  /* The shipped example documents every key; with its paths pointed at our
   * fixture it must load. */
  g_autofree char *example =
      g_build_filename(g_getenv("SIPCRED_SOURCE_ROOT"), "data", "sipcredd.conf.example", NULL);
  g_autofree char *text = NULL;
  g_assert_true(g_file_get_contents(example, &text, NULL, NULL));
  g_autoptr(GString) s = g_string_new(text);
  g_string_replace(s, "/etc/sipcred/example.com.pem", "example.com.pem", 0);
  g_string_replace(s, "/etc/sipcred/example.com.key", "example.com.key", 0);
  g_string_replace(s, "/var/lib/sipcred", "state", 0);
  /* The one key without a default is documented commented out; it must load. */
  g_assert_cmpuint(g_string_replace(s, "#master-key=/etc/sipcred/master.key", "master-key=mk", 0),
                   ==, 1);
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg = load_text(f, s->str, &error);
  g_assert_no_error(error);
  g_assert_nonnull(cfg);
  g_autofree char *mk = g_build_filename(f->dir, "mk", NULL);
  g_assert_cmpstr(cfg->master_key, ==, mk);
}

/* Each bad file must fail with a message that contains every fragment. */
static const struct {
  const char *name;
  const char *text;
  const char *expect[3];
} bad_cases[] = {
  {"missing-domains", "[server]\nstate-dir=s\n", {"[server] domains", "required"}},
  {"unknown-key",
   "[server]\ndomains=example.com\nstate-dir=s\nverbos=true\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n",
   {":4:", "[server] verbos", "unknown key"}},
  {"unknown-group", "[server]\ndomains=example.com\nstate-dir=s\n[tsl]\n", {"[tsl]", "unknown group"}},
  {"bad-number",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[tls]\nidle-timeout=soon\n",
   {":8:", "[tls] idle-timeout", "not a whole number"}},
  {"bad-listen",
   "[server]\ndomains=example.com\nstate-dir=s\nlisten=::1:5061\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n",
   {":4:", "[server] listen", "[ADDRESS]:PORT"}},
  {"bad-priority",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[tls]\npriority=NORMAL:+NO-SUCH-THING\n",
   {":8:", "[tls] priority", "GnuTLS rejects"}},
  {"domain-without-group", "[server]\ndomains=example.com\nstate-dir=s\n",
   {"[server] domains", "no [domain example.com] group"}},
  {"missing-key-file",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=nothere.key\n",
   {":6:", "[domain example.com] key", "cannot read"}},
  {"mismatched-pair",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.org.key\n",
   {"[domain example.com] certificate", "example.org.key"}},
  {"stray-domain-group",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[domain example.net]\ncertificate=example.com.pem\nkey=example.com.key\n",
   {":7:", "[domain example.net]", "not listed"}},
  {"min-over-max",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[certificate]\nmin-expires=100\nmax-expires=50\n",
   {"[certificate] min-expires", "more than max-expires"}},
  {"bad-domain-name",
   "[server]\ndomains=exa mple.com\nstate-dir=s\n", {"[server] domains", "not a domain name"}},
  {"min-interval-too-long",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[fanout]\nmin-interval=86401\n",
   {":8:", "[fanout] min-interval", "0 to 86400"}},
  {"not-a-keyfile", "this is not [ a key file\n", {"sipcredd.conf"}},
  {"empty-master-key",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[store]\nmaster-key=\n",
   {":8:", "[store] master-key", "empty"}},
  {"negative-rate",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[limits]\nsubscribe-per-source=-1\n",
   {":8:", "[limits] subscribe-per-source", "requests per second"}},
  {"exponent-rate",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[limits]\npublish-per-user=1e3\n",
   {":8:", "[limits] publish-per-user", "requests per second"}},
  {"nan-rate",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[limits]\nmessage-per-user=nan\n",
   {":8:", "[limits] message-per-user", "requests per second"}},
  {"zero-burst",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[limits]\nsubscribe-per-aor-burst=0\n",
   {":8:", "[limits] subscribe-per-aor-burst", "1 to 1000000"}},
  {"few-entries",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[limits]\nmax-entries=5\n",
   {":8:", "[limits] max-entries", "100 to 10000000"}},
  {"misspelt-master-key",
   "[server]\ndomains=example.com\nstate-dir=s\n"
   "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
   "[store]\nmasterkey=k\n",
   {":8:", "[store] masterkey", "unknown key"}},
};

static void
test_bad(Fixture *f, gconstpointer data)
{
  guint i = GPOINTER_TO_UINT(data);
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg = load_text(f, bad_cases[i].text, &error);
  g_assert_null(cfg);
  g_assert_nonnull(error);
  g_assert_true(error->domain == SRV_CONFIG_ERROR || error->domain == G_KEY_FILE_ERROR);
  for (guint k = 0; k < G_N_ELEMENTS(bad_cases[i].expect) && bad_cases[i].expect[k]; k++)
    if (strstr(error->message, bad_cases[i].expect[k]) == NULL)
      g_error("case %s: \"%s\" lacks \"%s\"", bad_cases[i].name, error->message,
              bad_cases[i].expect[k]);
}

static void
test_fanout_min_interval(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg =
      load_text(f,
                "[server]\ndomains=example.com\nstate-dir=s\n"
                "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
                "[fanout]\nmin-interval=0\n",
                &error);
  g_assert_no_error(error);
  g_assert_cmpuint(cfg->core.min_notify_interval, ==, 0);
}

static void
test_limits(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg =
      load_text(f,
                "[server]\ndomains=example.com\nstate-dir=s\n"
                "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
                "[limits]\nsubscribe-per-source=0.25\nsubscribe-per-source-burst=7\n"
                "publish-per-user=0\nmax-entries=100\n",
                &error);
  g_assert_no_error(error);
  const CoreRateLimits *rl = &cfg->core.rate_limits;
  g_assert_cmpfloat(rl->subscribe_per_source.rate, ==, 0.25);
  g_assert_cmpuint(rl->subscribe_per_source.burst, ==, 7);
  g_assert_cmpfloat(rl->publish_per_user.rate, ==, 0);
  g_assert_cmpuint(rl->max_entries, ==, 100);
  /* Keys not given keep the defaults. */
  CoreConfig defaults;
  core_config_init_defaults(&defaults);
  g_assert_cmpfloat(rl->subscribe_per_aor.rate, ==, defaults.rate_limits.subscribe_per_aor.rate);
  g_assert_cmpuint(rl->publish_per_user.burst, ==, defaults.rate_limits.publish_per_user.burst);
  g_assert_cmpuint(rl->register_per_user.burst, ==, defaults.rate_limits.register_per_user.burst);
}

static void
test_two_domains_and_ipv6(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) cfg =
      load_text(f,
                "[server]\ndomains=example.com; example.org\nstate-dir=/tmp/x\n"
                "listen=127.0.0.1:5061;[::1]:5061\n"
                "[domain example.com]\ncertificate=example.com.pem\nkey=example.com.key\n"
                "[domain example.org]\ncertificate=example.org.pem\nkey=example.org.key\n",
                &error);
  g_assert_no_error(error);
  g_assert_cmpuint(g_strv_length(cfg->domains), ==, 2);
  g_assert_cmpstr(cfg->listen[1], ==, "[::1]:5061");
  g_assert_cmpuint(cfg->domain_certs->len, ==, 2);
  g_assert_cmpstr(cfg->state_dir, ==, "/tmp/x");
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add("/server/config/defaults", Fixture, NULL, fixture_set_up, test_defaults,
             fixture_tear_down);
  g_test_add("/server/config/example-file", Fixture, NULL, fixture_set_up,
             test_example_file_is_valid, fixture_tear_down);
  g_test_add("/server/config/master-key", Fixture, NULL, fixture_set_up, test_master_key,
             fixture_tear_down);
  g_test_add("/server/config/fanout-min-interval", Fixture, NULL, fixture_set_up,
             test_fanout_min_interval, fixture_tear_down);
  g_test_add("/server/config/limits", Fixture, NULL, fixture_set_up, test_limits,
             fixture_tear_down);
  g_test_add("/server/config/two-domains-ipv6", Fixture, NULL, fixture_set_up,
             test_two_domains_and_ipv6, fixture_tear_down);
  for (guint i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
    g_autofree char *path = g_strdup_printf("/server/config/bad/%s", bad_cases[i].name);
    g_test_add(path, Fixture, GUINT_TO_POINTER(i), fixture_set_up, test_bad, fixture_tear_down);
  }
  return g_test_run();
}
