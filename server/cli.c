/* sipcred: the administration CLI. It opens the same LMDB store as the
 * daemon (both may run at once) and never prints key material, passwords
 * or HA1 values. One GOptionContext per command; exit status 0 success,
 * 1 failure, 2 usage error (see cli_exit_text and sipcred(1)). */
#define G_LOG_DOMAIN "sipcred-cli"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "core/core.h"
#include "identity/ca.h"
#include "identity/cert.h"
#include "identity/sign.h"
#include "server/config.h"
#include "server/sipclient.h"
#include "server/sipdns.h"
#include "core/credbody.h"
#include <gnutls/x509.h>
#include "sipcred-config.h"
#include "storage/store.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

#define CLI_DEFAULT_CONFIG SIPCRED_SYSCONFDIR "/sipcred/sipcredd.conf"
#define CLI_PASSWORD_MAX 4096
#define CLI_CERT_FILE_MAX (1024 * 1024)
#define CLI_KEY_FILE_MAX (64 * 1024)
#define CLI_DEFAULT_DAYS 365
#define CLI_DEFAULT_BITS 2048

static const char cli_exit_text[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  failure: the configuration, store or master key is unusable, or an AOR,\n"
    "     certificate, key or file was refused or not found; the message on\n"
    "     standard error names it\n"
    "  2  usage error: unknown command or option, wrong number of arguments,\n"
    "     or an option value out of range\n"
    "The client commands (fetch, publish, revoke, retrieve) also exit with:\n"
    "  3  no connection, TLS failure or timeout    4  server name mismatch\n"
    "  5  server chain not trusted (--ca)          6  server certificate not valid now\n"
    "  7  server certificate revoked (--crl)       8  NOTIFY failed the RFC 6072 10.3 checks\n"
    "  9  refused by the server                    10 wrong PKCS#8 passphrase\n"
    "  11 the AOR has no certificate\n"
    "fetch and retrieve check the AOR's certificate too (sec-flows 7 tests 2-5):\n"
    "  12 it does not name the AOR, or is a CA    13 CA-issued, chain not trusted (--ca)\n"
    "  14 it is not valid now                     15 it is revoked (--crl)";

/* The options every command takes, before or after the command. */
typedef struct {
  char *config_file;
  char *state_dir;
  char *master_key;
} CliCommon;

typedef struct {
  CliCommon common;  /* after the command overrides before it */
  SrvConfig *cfg;    /* NULL until loaded, and with --state-dir alone */
  gboolean cfg_done; /* the configuration question has been settled */
  char *state_dir;
  guint64 map_size;
  StoreDb *db;      /* opened on first use */
  gboolean key_set; /* the master key was given to db */
} Cli;

/* The options of the commands; each command's GOptionEntry array points
 * into this. */
static struct {
  char *password_file;
  char *realm;
  gboolean may_generate;
  int days;
  int bits;
  char *cert;
  char *key;
  char *pkcs8;
  gboolean pem;
  int window;
} opt = {.days = CLI_DEFAULT_DAYS, .bits = CLI_DEFAULT_BITS, .window = 600};

static void
cli_opt_clear(void)
{
  g_clear_pointer(&opt.password_file, g_free);
  g_clear_pointer(&opt.realm, g_free);
  g_clear_pointer(&opt.cert, g_free);
  g_clear_pointer(&opt.key, g_free);
  g_clear_pointer(&opt.pkcs8, g_free);
}

static void
cli_common_clear(CliCommon *c)
{
  g_clear_pointer(&c->config_file, g_free);
  g_clear_pointer(&c->state_dir, g_free);
  g_clear_pointer(&c->master_key, g_free);
}

static void
cli_common_add_entries(GOptionContext *ctx, CliCommon *c, gboolean with_version, gboolean *version)
{
  GOptionEntry entries[] = {
      {"config", 'c', 0, G_OPTION_ARG_FILENAME, &c->config_file,
       "The daemon's configuration (default " CLI_DEFAULT_CONFIG ")", "FILE"},
      {"state-dir", 's', 0, G_OPTION_ARG_FILENAME, &c->state_dir,
       "Use the store in DIR (without --config: read no configuration)", "DIR"},
      {"master-key", 'k', 0, G_OPTION_ARG_FILENAME, &c->master_key,
       "The master key file (default: [store] master-key of the configuration)", "FILE"},
      {"version", 'V', 0, G_OPTION_ARG_NONE, version, "Print the version and exit", NULL},
      {NULL},
  };

  if (!with_version)
    entries[3] = (GOptionEntry){NULL};
  g_option_context_add_main_entries(ctx, entries, NULL);
}

static int
cli_fail(const char *what, const char *why)
{
  g_printerr("sipcred: %s: %s\n", what, why);
  return CLI_EXIT_FAIL;
}

G_GNUC_PRINTF(2, 3)
static int
cli_failf(const char *what, const char *fmt, ...)
{
  va_list ap;
  g_autofree char *why = NULL;

  va_start(ap, fmt);
  why = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  return cli_fail(what, why);
}

static int
cli_usage(const char *why)
{
  g_printerr("sipcred: %s\nTry 'sipcred --help'.\n", why);
  return CLI_EXIT_USAGE;
}

static void
cli_clear(Cli *cli)
{
  g_clear_pointer(&cli->db, store_db_free);
  g_clear_pointer(&cli->cfg, srv_config_free);
  g_clear_pointer(&cli->state_dir, g_free);
  cli_common_clear(&cli->common);
}

/* ---- configuration, store and master key ---- */

/* Loads the configuration unless --state-dir alone was given. Prints the
 * failure. */
static gboolean
cli_config(Cli *cli)
{
  g_autoptr(GError) error = NULL;
  const char *path;

  if (cli->cfg_done)
    return TRUE;
  if (cli->common.config_file == NULL && cli->common.state_dir != NULL) {
    cli->state_dir = g_strdup(cli->common.state_dir);
    cli->cfg_done = TRUE;
    return TRUE;
  }
  path = cli->common.config_file != NULL ? cli->common.config_file : CLI_DEFAULT_CONFIG;
  cli->cfg = srv_config_load(path, &error);
  if (cli->cfg == NULL) {
    if (cli->common.config_file == NULL)
      g_prefix_error(&error, "(give --config FILE or --state-dir DIR) ");
    cli_fail("configuration", error->message);
    return FALSE;
  }
  cli->map_size = cli->cfg->map_size;
  cli->state_dir =
      g_strdup(cli->common.state_dir != NULL ? cli->common.state_dir : cli->cfg->state_dir);
  cli->cfg_done = TRUE;
  return TRUE;
}

static StoreDb *
cli_store(Cli *cli)
{
  g_autoptr(GError) error = NULL;

  if (cli->db != NULL)
    return cli->db;
  if (!cli_config(cli))
    return NULL;
  cli->db = store_db_open(cli->state_dir, cli->map_size, &error);
  if (cli->db == NULL)
    cli_fail(cli->state_dir, error->message);
  else if (cli->cfg != NULL)
    store_db_set_map_size_max(cli->db, cli->cfg->map_size_max);
  return cli->db;
}

/* The master key file: --master-key, else [store] master-key, else NULL.
 * Call after cli_config(). */
static const char *
cli_master_key_path(Cli *cli)
{
  if (cli->common.master_key != NULL)
    return cli->common.master_key;
  return cli->cfg != NULL ? cli->cfg->master_key : NULL;
}

static int
cli_fail_no_master_key(Cli *cli, const char *what)
{
  if (cli->cfg != NULL)
    return cli_failf("master key",
                     "%s needs the master key, and none is given: set [store] master-key in %s "
                     "or give --master-key FILE (make one with 'sipcred keygen FILE')",
                     what, cli->cfg->path);
  return cli_failf("master key",
                   "%s needs the master key, and none is given: give --master-key FILE, or "
                   "--config FILE with [store] master-key (make one with 'sipcred keygen FILE')",
                   what);
}

static StoreMasterKey *
cli_load_key(const char *path)
{
  g_autoptr(GError) error = NULL;
  StoreMasterKey *key = store_master_key_load(path, &error);

  if (key == NULL)
    cli_fail("master key", error->message);
  return key;
}

/* The store, holding its master key; @what says what needs it. Prints the
 * failure. */
static StoreDb *
cli_store_with_key(Cli *cli, const char *what)
{
  g_autoptr(StoreMasterKey) key = NULL;
  g_autoptr(GError) error = NULL;
  const char *path;

  if (!cli_config(cli))
    return NULL;
  if (cli->key_set)
    return cli->db;
  path = cli_master_key_path(cli);
  if (path == NULL) {
    cli_fail_no_master_key(cli, what);
    return NULL;
  }
  key = cli_load_key(path);
  if (key == NULL || cli_store(cli) == NULL)
    return NULL;
  if (!store_db_set_master_key(cli->db, key, &error)) {
    cli_fail("master key", error->message);
    return NULL;
  }
  cli->key_set = TRUE;
  return cli->db;
}

/* The canonical AOR, restricted to the served domains when a configuration
 * is loaded. Prints the failure. */
static char *
cli_aor(Cli *cli, const char *arg)
{
  g_autoptr(GError) error = NULL;
  char *aor;

  if (!cli_config(cli))
    return NULL;
  if (cli->cfg != NULL)
    aor = core_aor_canonicalize_served((const char *const *)cli->cfg->domains, arg, &error);
  else
    aor = core_aor_canonicalize(arg, &error);
  if (aor == NULL)
    cli_fail(arg, error->message);
  return aor;
}

/* ---- files ---- */

/* Memory that held a key file is wiped before it is freed. */
typedef struct {
  gsize len;
  guint8 data[];
} CliSecretBuf;

static void
cli_secret_buf_free(gpointer p)
{
  CliSecretBuf *buf = p;

  explicit_bzero(buf->data, buf->len);
  g_free(buf);
}

/* The whole of @path, at most @max bytes, read in one buffer (so no copy
 * of a key is left behind by reallocation). Prints the failure. */
static GBytes *
cli_read_file(const char *path, gsize max, const char *what)
{
  CliSecretBuf *buf;
  struct stat st;
  gsize got = 0;
  int fd, saved;

  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    saved = errno;
    cli_failf(path, "cannot read the %s: %s", what, g_strerror(saved));
    return NULL;
  }
  if (fstat(fd, &st) != 0) {
    saved = errno;
    close(fd);
    cli_failf(path, "cannot read the %s: %s", what, g_strerror(saved));
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    cli_failf(path, "cannot read the %s: not a regular file", what);
    return NULL;
  }
  if (st.st_size < 0 || (guint64)st.st_size > max) {
    close(fd);
    cli_failf(path, "the %s is larger than %" G_GSIZE_FORMAT " bytes", what, max);
    return NULL;
  }
  /* One byte more than the size, to notice a file that grew. */
  buf = g_malloc(sizeof *buf + (gsize)st.st_size + 1);
  buf->len = (gsize)st.st_size + 1;
  for (;;) {
    ssize_t n = read(fd, buf->data + got, buf->len - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      saved = errno;
      close(fd);
      cli_secret_buf_free(buf);
      cli_failf(path, "cannot read the %s: %s", what, g_strerror(saved));
      return NULL;
    }
    if (n == 0)
      break;
    got += (gsize)n;
    if (got == buf->len) {
      close(fd);
      cli_secret_buf_free(buf);
      cli_failf(path, "the %s changed while it was read", what);
      return NULL;
    }
  }
  close(fd);
  return g_bytes_new_with_free_func(buf->data, got, cli_secret_buf_free, buf);
}

/* Writes @data to @path (replacing it), or to standard output for NULL or
 * "-". Prints the failure. */
static gboolean
cli_write_output(const char *path, const void *data, gsize len)
{
  g_autoptr(GError) error = NULL;

  if (path == NULL || g_str_equal(path, "-")) {
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0) {
      cli_fail("standard output", g_strerror(errno));
      return FALSE;
    }
    return TRUE;
  }
  if (!g_file_set_contents(path, data, (gssize)len, &error)) {
    cli_fail(path, error->message);
    return FALSE;
  }
  return TRUE;
}

/* ---- printing ---- */

static char *
cli_format_time(gint64 t)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);

  if (dt == NULL)
    return g_strdup_printf("%" G_GINT64_FORMAT, t);
  return g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ");
}

static char *
cli_hex(const guint8 *data, gsize len)
{
  GString *out = g_string_sized_new(len * 2);

  for (gsize i = 0; i < len; i++)
    g_string_append_printf(out, "%02x", data[i]);
  return g_string_free(out, FALSE);
}

static const char *
cli_key_kind_name(StoreKeyKind kind)
{
  switch (kind) {
  case STORE_KEY_NONE:
    return "none";
  case STORE_KEY_USER_ENCRYPTED:
    return "user-encrypted";
  case STORE_KEY_SERVER_HELD:
    return "server-held";
  }
  return "unknown";
}

/* The record, one "field: value" line each. Never the key itself. */
static void
cli_print_cred(const StoreCred *cred)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autofree char *nb = cli_format_time(cred->not_before);
  g_autofree char *na = cli_format_time(cred->not_after);
  g_autofree char *updated = cli_format_time(cred->updated);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  gsize len = 0;
  const guint8 *der = g_bytes_get_data(cred->cert_der, &len);

  g_print("aor: %s\n", cred->aor);
  g_print("version: %" G_GUINT64_FORMAT "\n", cred->version);
  g_print("etag: %s\n", cred->etag);
  cert = ident_cert_new_from_data(der, len, &error);
  if (cert != NULL) {
    g_autofree char *subject = ident_cert_dup_subject(cert);
    g_autofree char *issuer = ident_cert_dup_issuer(cert);
    g_auto(GStrv) names = ident_cert_dup_alt_names(cert);

    g_print("subject: %s\n", subject);
    g_print("issuer: %s\n", issuer);
    for (guint i = 0; names[i] != NULL; i++)
      g_print("san: %s\n", names[i]);
  } else {
    g_print("subject: (the stored certificate does not parse: %s)\n", error->message);
  }
  g_print("not-before: %s\n", nb);
  g_print("not-after: %s\n", na);
  g_print("status: %s\n", now < cred->not_before  ? "not yet valid"
                          : now > cred->not_after ? "expired"
                                                  : "valid");
  g_print("updated: %s\n", updated);
  g_print("size: %" G_GSIZE_FORMAT " bytes\n", len);
  if (cert != NULL) {
    g_autofree char *fp = ident_cert_dup_fingerprint(cert);
    g_autofree char *pk = ident_cert_dup_key_description(cert);

    g_print("sha256-fingerprint: %s\n", fp);
    g_print("public-key: %s\n", pk);
  }
  g_print("key: %s\n", cli_key_kind_name(cred->key_kind));
  /* The encryption scheme of a user-encrypted key is public information
   * (it is in the clear part of the PKCS#8). */
  if (cred->key_kind == STORE_KEY_USER_ENCRYPTED && cred->pkcs8 != NULL) {
    g_autofree char *scheme = NULL;
    g_autoptr(GBytes) checked = ident_pkcs8_check_encrypted(
        g_bytes_get_data(cred->pkcs8, NULL), g_bytes_get_size(cred->pkcs8), &scheme, NULL);

    if (checked != NULL)
      g_print("key-encryption: %s\n", scheme);
  }
}

/* Reads the record back and prints it after @headline. */
static int
cli_show_stored(StoreDb *db, const char *aor, const char *headline)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) stored = store_cred_get(db, aor, &error);

  if (stored == NULL)
    return cli_fail(aor, error->message);
  g_print("%s\n", headline);
  cli_print_cred(stored);
  return CLI_EXIT_OK;
}

/* ---- keygen ---- */

static int
cli_keygen(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreMasterKey) key = NULL;
  const char *path = n_args > 0 ? args[0] : cli->common.master_key;

  if (path == NULL) {
    if (!cli_config(cli))
      return CLI_EXIT_FAIL;
    path = cli_master_key_path(cli);
    if (path == NULL)
      return cli_usage("keygen needs a FILE (or --master-key FILE, or [store] master-key in the "
                       "configuration)");
  }
  if (!store_master_key_generate(path, &error))
    return cli_fail(path, error->message);
  key = store_master_key_load(path, &error);
  if (key == NULL)
    return cli_fail(path, error->message);
  g_print("wrote a new master key to %s (mode 0600, id %s)\n", path, store_master_key_get_id(key));
  return CLI_EXIT_OK;
}

/* ---- identity ---- */

/* Verifies the RFC 4474 Identity of one SIP message (a file, or standard
 * input for "-") against a domain certificate: what a subscriber does before
 * it trusts a NOTIFY (RFC 6072 10.3). */
static int
cli_identity_verify(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *msg = NULL;
  gsize msg_len = 0;
  const char *path = n_args > 0 ? args[0] : "-";

  if (opt.cert == NULL)
    return cli_usage("identity verify needs --cert FILE (the domain certificate)");
  if (opt.window < 1)
    return cli_usage("--window must be at least 1 second");
  if (g_str_equal(path, "-")) {
    g_autoptr(GIOChannel) in = g_io_channel_unix_new(0);
    g_io_channel_set_encoding(in, NULL, NULL);
    if (g_io_channel_read_to_end(in, &msg, &msg_len, &error) != G_IO_STATUS_NORMAL)
      return cli_fail("standard input", error->message);
  } else if (!g_file_get_contents(path, &msg, &msg_len, &error)) {
    return cli_fail(path, error->message);
  }
  g_autofree char *cert_data = NULL;
  gsize cert_len = 0;
  if (!g_file_get_contents(opt.cert, &cert_data, &cert_len, &error))
    return cli_fail(opt.cert, error->message);
  g_autoptr(IdentCert) cert =
      ident_cert_new_from_data((const guint8 *)cert_data, cert_len, &error);
  if (cert == NULL)
    return cli_fail(opt.cert, error->message);
  GBytes *der = ident_cert_get_der(cert);
  IdentAlg alg = IDENT_ALG_RSA_SHA256;
  if (!ident_verify_message((const guint8 *)msg, msg_len, g_bytes_get_data(der, NULL),
                            g_bytes_get_size(der), g_get_real_time() / G_USEC_PER_SEC,
                            (guint)opt.window, &alg, &error))
    return cli_fail(path, error->message);
  g_print("%s: Identity verified (%s)\n", path, ident_alg_to_string(alg));
  return CLI_EXIT_OK;
}

/* ---- cred ---- */

static int
cli_cred_import(Cli *cli, char **args, guint n_args)
{
  g_autofree char *aor = NULL;
  g_autoptr(GBytes) cert_bytes = NULL;
  g_autoptr(GBytes) key_bytes = NULL;
  g_autoptr(GBytes) pkcs8 = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *scheme = NULL;
  g_autofree char *headline = NULL;
  const char *cert_file = opt.cert;
  StoreKeyKind kind = STORE_KEY_NONE;
  StoreDb *db;

  if (n_args == 2) {
    if (cert_file != NULL)
      return cli_usage("cred import: give the certificate once, as --cert FILE or as FILE");
    cert_file = args[1];
  }
  if (cert_file == NULL)
    return cli_usage("cred import needs the certificate: --cert FILE");
  if (opt.key != NULL && opt.pkcs8 != NULL)
    return cli_usage("cred import: --key and --pkcs8 exclude each other");

  aor = cli_aor(cli, args[0]);
  if (aor == NULL)
    return CLI_EXIT_FAIL;
  cert_bytes = cli_read_file(cert_file, CLI_CERT_FILE_MAX, "certificate");
  if (cert_bytes == NULL)
    return CLI_EXIT_FAIL;
  cert = ident_cert_new_from_data(g_bytes_get_data(cert_bytes, NULL), g_bytes_get_size(cert_bytes),
                                  &error);
  if (cert == NULL)
    return cli_fail(cert_file, error->message);
  /* RFC 6072 section 7.9: notBefore not in the future, notAfter in the
   * future, not a CA; and (our policy) a SAN URI naming the AOR. */
  if (!ident_cert_check_user_profile(cert, aor, g_get_real_time() / G_USEC_PER_SEC, &error))
    return cli_failf(cert_file, "certificate refused for %s: %s", aor, error->message);

  if (opt.key != NULL) {
    key_bytes = cli_read_file(opt.key, CLI_KEY_FILE_MAX, "private key");
    if (key_bytes == NULL)
      return CLI_EXIT_FAIL;
    pkcs8 = ident_cert_match_private_key(cert, g_bytes_get_data(key_bytes, NULL),
                                         g_bytes_get_size(key_bytes), &error);
    if (pkcs8 == NULL)
      return cli_failf(opt.key, "private key refused for %s: %s", aor, error->message);
    kind = STORE_KEY_SERVER_HELD;
  } else if (opt.pkcs8 != NULL) {
    key_bytes = cli_read_file(opt.pkcs8, CLI_KEY_FILE_MAX, "PKCS#8 key");
    if (key_bytes == NULL)
      return CLI_EXIT_FAIL;
    pkcs8 = ident_pkcs8_check_encrypted(g_bytes_get_data(key_bytes, NULL),
                                        g_bytes_get_size(key_bytes), &scheme, &error);
    if (pkcs8 == NULL)
      return cli_failf(opt.pkcs8, "PKCS#8 key refused for %s: %s", aor, error->message);
    kind = STORE_KEY_USER_ENCRYPTED;
  }

  db = kind == STORE_KEY_SERVER_HELD ? cli_store_with_key(cli, "a server-held key (--key)")
                                     : cli_store(cli);
  if (db == NULL)
    return CLI_EXIT_FAIL;
  if (!store_cred_put(db, aor, ident_cert_get_der(cert), ident_cert_get_not_before(cert),
                      ident_cert_get_not_after(cert), kind, pkcs8, &error))
    return cli_fail(aor, error->message);
  headline = g_strdup_printf("imported %s of %s",
                             kind == STORE_KEY_NONE ? "the certificate" : "the credential", aor);
  return cli_show_stored(db, aor, headline);
}

static int
cli_cred_generate(Cli *cli, char **args, guint n_args)
{
  g_autofree char *aor = NULL;
  g_autoptr(GBytes) pkcs8 = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *headline = NULL;
  StoreDb *db;

  if (opt.days < 1 || opt.days > IDENT_CRED_MAX_DAYS)
    return cli_usage("cred generate: --days must be 1 to 365");
  if (opt.bits != 2048 && opt.bits != 3072)
    return cli_usage("cred generate: --bits must be 2048 or 3072");
  aor = cli_aor(cli, args[0]);
  if (aor == NULL)
    return CLI_EXIT_FAIL;
  /* The key first: no point generating what cannot be stored. */
  db = cli_store_with_key(cli, "generating a credential (its key is server-held)");
  if (db == NULL)
    return CLI_EXIT_FAIL;
  cert = ident_cert_generate(aor, (guint)opt.bits, (guint)opt.days,
                             g_get_real_time() / G_USEC_PER_SEC, &pkcs8, &error);
  if (cert == NULL)
    return cli_fail(aor, error->message);
  if (!store_cred_put(db, aor, ident_cert_get_der(cert), ident_cert_get_not_before(cert),
                      ident_cert_get_not_after(cert), STORE_KEY_SERVER_HELD, pkcs8, &error))
    return cli_fail(aor, error->message);
  headline = g_strdup_printf("generated a credential for %s", aor);
  return cli_show_stored(db, aor, headline);
}

static int
cli_cred_show(Cli *cli, char **args, guint n_args)
{
  g_autofree char *aor = cli_aor(cli, args[0]);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  cred = store_cred_get(cli->db, aor, &error);
  if (cred == NULL)
    return cli_fail(aor, error->message);
  cli_print_cred(cred);
  return CLI_EXIT_OK;
}

static int
cli_cred_list(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GPtrArray) aors = NULL;
  g_autoptr(GError) error = NULL;

  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  aors = store_cred_list(cli->db, &error);
  if (aors == NULL)
    return cli_fail(cli->state_dir, error->message);
  for (guint i = 0; i < aors->len; i++)
    g_print("%s\n", (const char *)g_ptr_array_index(aors, i));
  return CLI_EXIT_OK;
}

static int
cli_cred_revoke(Cli *cli, char **args, guint n_args)
{
  g_autofree char *aor = cli_aor(cli, args[0]);
  g_autoptr(GError) error = NULL;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_cred_delete(cli->db, aor, &error))
    return cli_fail(aor, error->message);
  g_print("revoked the credential of %s\n", aor);
  return CLI_EXIT_OK;
}

static int
cli_cred_export(Cli *cli, char **args, guint n_args)
{
  g_autofree char *aor = cli_aor(cli, args[0]);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  const char *file = n_args > 1 ? args[1] : NULL;
  gboolean to_stdout = file == NULL || g_str_equal(file, "-");
  gnutls_datum_t in, pem = {NULL, 0};
  gsize len = 0;
  const guint8 *der;
  gboolean ok;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  cred = store_cred_get(cli->db, aor, &error);
  if (cred == NULL)
    return cli_fail(aor, error->message);
  /* Only the certificate: it is public. Keys never leave through the CLI. */
  der = g_bytes_get_data(cred->cert_der, &len);
  if (opt.pem) {
    int rc;

    in.data = (unsigned char *)der;
    in.size = (unsigned int)len;
    rc = gnutls_pem_base64_encode2("CERTIFICATE", &in, &pem);
    if (rc < 0)
      return cli_failf(aor, "cannot encode the certificate as PEM: %s", gnutls_strerror(rc));
    ok = cli_write_output(file, pem.data, pem.size);
    len = pem.size;
    gnutls_free(pem.data);
  } else {
    ok = cli_write_output(file, der, len);
  }
  if (!ok)
    return CLI_EXIT_FAIL;
  if (!to_stdout)
    g_printerr("wrote %" G_GSIZE_FORMAT " bytes of %s to %s\n", len, opt.pem ? "PEM" : "DER",
               file);
  return CLI_EXIT_OK;
}

/* ---- user ---- */

/* The first line of @fp, without its line end. NULL with @error set on a
 * read error or an over-long line. */
static char *
cli_read_line(FILE *fp, const char *what, GError **error)
{
  char *buf = g_malloc0(CLI_PASSWORD_MAX + 1);
  gsize n = 0;
  int c;

  while ((c = getc(fp)) != EOF && c != '\n') {
    if (n == CLI_PASSWORD_MAX) {
      explicit_bzero(buf, CLI_PASSWORD_MAX + 1);
      g_free(buf);
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "password longer than %d bytes",
                  CLI_PASSWORD_MAX);
      return NULL;
    }
    buf[n++] = (char)c;
  }
  if (ferror(fp)) {
    int saved = errno;
    explicit_bzero(buf, CLI_PASSWORD_MAX + 1);
    g_free(buf);
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "reading %s: %s", what,
                g_strerror(saved));
    return NULL;
  }
  if (n > 0 && buf[n - 1] == '\r')
    buf[--n] = '\0';
  return buf;
}

static void
cli_secret_free(char *secret)
{
  if (secret != NULL) {
    explicit_bzero(secret, strlen(secret));
    g_free(secret);
  }
}

typedef char CliSecret;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CliSecret, cli_secret_free)

/* Reads from the terminal without echo. */
static char *
cli_prompt_password(const char *prompt, GError **error)
{
  struct termios saved, quiet;
  gboolean restore;
  char *line;

  g_printerr("%s", prompt);
  restore = tcgetattr(STDIN_FILENO, &saved) == 0;
  if (restore) {
    quiet = saved;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    quiet.c_lflag |= ECHONL;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  }
  line = cli_read_line(stdin, "the terminal", error);
  if (restore)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
  return line;
}

static char *
cli_get_password(const char *file, const char *aor, GError **error)
{
  if (file != NULL) {
    FILE *fp = fopen(file, "r");
    char *line;

    if (fp == NULL) {
      int saved = errno;
      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "cannot open %s: %s", file,
                  g_strerror(saved));
      return NULL;
    }
    /* stdio's buffer would keep a copy of the password. */
    setvbuf(fp, NULL, _IONBF, 0);
    line = cli_read_line(fp, file, error);
    fclose(fp);
    return line;
  }
  if (isatty(STDIN_FILENO)) {
    g_autofree char *prompt = g_strdup_printf("Password for %s: ", aor);
    g_autoptr(CliSecret) first = cli_prompt_password(prompt, error);
    g_autoptr(CliSecret) again = NULL;

    if (first == NULL)
      return NULL;
    again = cli_prompt_password("Retype the password: ", error);
    if (again == NULL)
      return NULL;
    if (!g_str_equal(first, again)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "the passwords differ");
      return NULL;
    }
    return g_steal_pointer(&first);
  }
  return cli_read_line(stdin, "standard input", error);
}

/* Lower-case hex of @algo over "username:realm:password" (RFC 7616 HA1). */
static char *
cli_ha1(gnutls_digest_algorithm_t algo, const char *username, const char *realm,
        const char *password)
{
  g_autoptr(CliSecret) input = g_strconcat(username, ":", realm, ":", password, NULL);
  guint8 digest[64];
  unsigned int len = gnutls_hash_get_len(algo);
  char *hex;

  if (len == 0 || len > sizeof digest || gnutls_hash_fast(algo, input, strlen(input), digest) < 0)
    return NULL;
  hex = cli_hex(digest, len);
  explicit_bzero(digest, sizeof digest);
  return hex;
}

/* The digest username: the user part of canonical "sip:user@host". */
static char *
cli_aor_user(const char *aor)
{
  const char *at = strrchr(aor, '@');

  return g_strndup(aor + 4, at - (aor + 4));
}

/* ---- progress of long work ----
 * On a terminal one line rewritten in place; otherwise a line at most every
 * two seconds. The last step always prints, so the total is on record. */

typedef struct {
  const char *what;
  const char *unit;
  gboolean tty;
  gint64 last_us;
} CliProgress;

static void
cli_progress_init(CliProgress *p, const char *what, const char *unit)
{
  *p = (CliProgress){.what = what, .unit = unit, .tty = isatty(STDERR_FILENO)};
  p->last_us = g_get_monotonic_time();
}

static void
cli_progress(guint64 done, guint64 total, gpointer data)
{
  CliProgress *p = data;
  gint64 now = g_get_monotonic_time();
  gboolean last = total > 0 && done >= total;

  if (!last && now - p->last_us < (p->tty ? 200000 : 2000000))
    return;
  p->last_us = now;
  g_printerr("%s%s: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " %s%s", p->tty ? "\r" : "",
             p->what, done, total, p->unit, p->tty && !last ? "" : "\n");
}

/* Stores @user with the HA1 values of @password. Prints the failure. */
static int
cli_user_store_password(Cli *cli, StoreUser *user, const char *username, const char *password)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(CliSecret) ha1_sha256 = NULL;
  g_autoptr(CliSecret) ha1_md5 = NULL;

  ha1_sha256 = cli_ha1(GNUTLS_DIG_SHA256, username, user->realm, password);
  ha1_md5 = cli_ha1(GNUTLS_DIG_MD5, username, user->realm, password);
  if (ha1_sha256 == NULL || ha1_md5 == NULL)
    return cli_fail(user->aor, "cannot compute the digest secrets");
  user->ha1_sha256 = ha1_sha256;
  user->ha1_md5 = ha1_md5;
  if (!store_user_put(cli->db, user, &error))
    return cli_fail(user->aor, error->message);
  return CLI_EXIT_OK;
}

/* Reads the password and stores @user with its HA1 values. Prints the
 * failure. */
static int
cli_user_store(Cli *cli, StoreUser *user, const char *username)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(CliSecret) password = NULL;

  /* Named by the file it came from, else by the user it is for. */
  password = cli_get_password(opt.password_file, user->aor, &error);
  if (password == NULL)
    return cli_failf(opt.password_file != NULL ? opt.password_file : user->aor,
                     "reading the password: %s", error->message);
  if (*password == '\0')
    return cli_fail(opt.password_file != NULL ? opt.password_file : user->aor,
                    "the password is empty");
  return cli_user_store_password(cli, user, username, password);
}

#define CLI_USER_FILE_MAX (64 * 1024 * 1024)

/* user import FILE: "AOR PASSWORD" per line (the password is the rest of
 * the line after one space or tab), '#' comments and blank lines skipped.
 * Every line is checked before the first user is written. */
static int
cli_user_import(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  GStatBuf st;
  const char *path = args[0];

  if (g_stat(path, &st) != 0)
    return cli_failf(path, "%s", g_strerror(errno));
  /* It holds passwords in clear: like a key file, private or refused. */
  if ((st.st_mode & 0077) != 0)
    return cli_fail(path, "readable by group or others: it holds passwords (chmod 600)");
  g_autoptr(GBytes) data = cli_read_file(path, CLI_USER_FILE_MAX, "user file");
  if (data == NULL)
    return CLI_EXIT_FAIL;
  g_autoptr(CliSecret) text = g_strndup(g_bytes_get_data(data, NULL), g_bytes_get_size(data));
  if (strlen(text) != g_bytes_get_size(data) || !g_utf8_validate(text, -1, NULL))
    return cli_fail(path, "not UTF-8 text");
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  g_autoptr(GPtrArray) aors = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GPtrArray) passwords = g_ptr_array_new_with_free_func((GDestroyNotify)cli_secret_free);
  for (guint i = 0; lines[i] != NULL; i++) {
    char *line = lines[i];
    gsize n = strlen(line);
    if (n > 0 && line[n - 1] == '\r')
      line[--n] = '\0';
    const char *p = line;
    while (*p == ' ' || *p == '\t')
      p++;
    if (*p == '\0' || *p == '#')
      continue;
    gsize aor_len = strcspn(p, " \t");
    if (p[aor_len] == '\0' || p[aor_len + 1] == '\0')
      return cli_failf(path, "line %u: no password after the AOR", i + 1);
    g_autofree char *raw = g_strndup(p, aor_len);
    g_autofree char *aor = cli_aor(cli, raw);
    if (aor == NULL)
      return cli_failf(path, "line %u: the AOR above was refused", i + 1);
    g_ptr_array_add(aors, g_steal_pointer(&aor));
    g_ptr_array_add(passwords, g_strdup(p + aor_len + 1));
  }
  for (guint i = 0; lines[i] != NULL; i++)
    explicit_bzero(lines[i], strlen(lines[i]));
  if (aors->len == 0)
    return cli_fail(path, "no users in it");
  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  CliProgress progress;
  cli_progress_init(&progress, "user import", "users");
  for (guint i = 0; i < aors->len; i++) {
    const char *aor = aors->pdata[i];
    g_autofree char *username = cli_aor_user(aor);
    StoreUser user = {
        .aor = (char *)aor,
        .realm = (char *)(opt.realm != NULL ? opt.realm : strrchr(aor, '@') + 1),
        .flags = STORE_USER_ENABLED | (opt.may_generate ? STORE_USER_MAY_GENERATE : 0),
    };
    int status = cli_user_store_password(cli, &user, username, passwords->pdata[i]);
    if (status != CLI_EXIT_OK) {
      g_printerr("sipcred: user import: stopped after %u of %u users\n", i, aors->len);
      return status;
    }
    cli_progress(i + 1, aors->len, &progress);
  }
  g_print("imported %u users from %s\n", aors->len, path);
  return CLI_EXIT_OK;
}

static int
cli_user_add(Cli *cli, char **args, guint n_args)
{
  g_autoptr(StoreUser) old = NULL;
  g_autofree char *aor = NULL;
  g_autofree char *username = NULL;
  const char *realm;
  StoreUser user;
  int status;

  aor = cli_aor(cli, args[0]);
  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  username = cli_aor_user(aor);
  realm = opt.realm != NULL ? opt.realm : strrchr(aor, '@') + 1;
  old = store_user_get(cli->db, aor, NULL);
  user = (StoreUser){
      .aor = aor,
      .realm = (char *)realm,
      .flags = STORE_USER_ENABLED | (opt.may_generate ? STORE_USER_MAY_GENERATE : 0),
  };
  status = cli_user_store(cli, &user, username);
  if (status != CLI_EXIT_OK)
    return status;
  g_print("%s user %s (digest username %s, realm %s%s)\n", old != NULL ? "replaced" : "added", aor,
          username, realm, opt.may_generate ? ", may generate credentials" : "");
  return CLI_EXIT_OK;
}

static int
cli_user_passwd(Cli *cli, char **args, guint n_args)
{
  g_autoptr(StoreUser) old = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *aor = NULL;
  g_autofree char *username = NULL;
  StoreUser user;
  int status;

  aor = cli_aor(cli, args[0]);
  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  /* Before asking for a password that could not be stored anyway. */
  old = store_user_get(cli->db, aor, &error);
  if (old == NULL)
    return cli_fail(aor, error->message);
  username = cli_aor_user(aor);
  user = (StoreUser){
      .aor = aor,
      .realm = old->realm,
      .flags = old->flags,
  };
  status = cli_user_store(cli, &user, username);
  if (status != CLI_EXIT_OK)
    return status;
  g_print("changed the password of %s (realm %s)\n", aor, old->realm);
  return CLI_EXIT_OK;
}

static int
cli_user_list(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GPtrArray) aors = NULL;
  g_autoptr(GError) error = NULL;
  int status = CLI_EXIT_OK;

  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  aors = store_user_list(cli->db, &error);
  if (aors == NULL)
    return cli_fail(cli->state_dir, error->message);
  for (guint i = 0; i < aors->len; i++) {
    const char *aor = g_ptr_array_index(aors, i);
    g_autoptr(StoreUser) user = store_user_get(cli->db, aor, &error);

    if (user == NULL) {
      status = cli_fail(aor, error->message);
      g_clear_error(&error);
      continue;
    }
    g_print("%s realm=%s%s%s\n", aor, user->realm,
            (user->flags & STORE_USER_ENABLED) ? " enabled" : " disabled",
            (user->flags & STORE_USER_MAY_GENERATE) ? " may-generate" : "");
  }
  return status;
}

static int
cli_user_del(Cli *cli, char **args, guint n_args)
{
  g_autofree char *aor = cli_aor(cli, args[0]);
  g_autoptr(GError) error = NULL;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_user_delete(cli->db, aor, &error))
    return cli_fail(aor, error->message);
  g_print("deleted user %s\n", aor);
  return CLI_EXIT_OK;
}

/* ---- db ---- */

static int
cli_db_backup(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  GStatBuf st;

  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_db_backup(cli->db, args[0], &error))
    return cli_fail(args[0], error->message);
  if (g_stat(args[0], &st) != 0)
    return cli_failf(args[0], "the backup is gone: %s", g_strerror(errno));
  g_print("backed up the store in %s to %s (%" G_GINT64_FORMAT " bytes, mode 0600)\n",
          cli->state_dir, args[0], (gint64)st.st_size);
  return CLI_EXIT_OK;
}

static int
cli_db_check(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  StoreStats stats;
  const char *keys_note = "";

  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_db_get_stats(cli->db, &stats, &error))
    return cli_fail(cli->state_dir, error->message);
  /* Unwrap the server-held keys when a master key is at hand. Only then:
   * giving a key to a store without one would record it. */
  if (stats.n_server_held > 0) {
    if (cli_master_key_path(cli) != NULL) {
      if (cli_store_with_key(cli, "checking the server-held keys") == NULL)
        return CLI_EXIT_FAIL;
      keys_note = ", all unwrapped";
    } else {
      keys_note = ", not unwrapped (no master key given)";
    }
  }
  if (!store_db_check(cli->db, &error))
    return cli_fail(cli->state_dir, error->message);
  g_print("store in %s is consistent: schema %u, %" G_GUINT64_FORMAT " users, %" G_GUINT64_FORMAT
          " credentials, %" G_GUINT64_FORMAT " server-held keys%s, %" G_GUINT64_FORMAT
          " registrations, %" G_GUINT64_FORMAT " changes\n",
          cli->state_dir, stats.schema_version, stats.n_users, stats.n_credentials,
          stats.n_server_held, keys_note, stats.n_registrations, stats.n_changes);
  return CLI_EXIT_OK;
}

static int
cli_db_stats(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  StoreStats stats;

  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_db_get_stats(cli->db, &stats, &error))
    return cli_fail(cli->state_dir, error->message);
  g_print("state-dir: %s\n", cli->state_dir);
  g_print("schema-version: %u\n", stats.schema_version);
  g_print("map-size: %" G_GUINT64_FORMAT "\n", stats.map_size);
  g_print("map-used: %" G_GUINT64_FORMAT "\n", stats.map_used);
  g_print("users: %" G_GUINT64_FORMAT "\n", stats.n_users);
  g_print("credentials: %" G_GUINT64_FORMAT "\n", stats.n_credentials);
  g_print("server-held-keys: %" G_GUINT64_FORMAT "\n", stats.n_server_held);
  g_print("registrations: %" G_GUINT64_FORMAT "\n", stats.n_registrations);
  g_print("changes: %" G_GUINT64_FORMAT "\n", stats.n_changes);
  g_print("last-change: %" G_GUINT64_FORMAT "\n", stats.last_change);
  return CLI_EXIT_OK;
}

/* ---- stats: the running daemon's counters ---- */

static struct {
  char *socket;
  gboolean prometheus;
} cli_stats_opt;

#define CLI_STATS_MAX (1024 * 1024)

static int
cli_stats(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = g_steal_pointer(&cli_stats_opt.socket);
  gboolean prometheus = cli_stats_opt.prometheus;

  cli_stats_opt.prometheus = FALSE;
  if (path == NULL) {
    if (!cli_config(cli))
      return CLI_EXIT_FAIL;
    path = cli->cfg != NULL ? g_strdup(cli->cfg->control_socket)
                            : g_build_filename(cli->state_dir, "control.sock", NULL);
  }
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
  g_socket_client_set_timeout(client, 10);
  g_autoptr(GSocketConnection) conn =
      g_socket_client_connect(client, G_SOCKET_CONNECTABLE(addr), NULL, &error);
  if (conn == NULL)
    return cli_failf(path, "cannot reach sipcredd's control socket: %s", error->message);
  /* The daemon writes everything and closes: read to the end. */
  GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(conn));
  g_autoptr(GByteArray) text = g_byte_array_new();
  guint8 buf[8192];
  for (;;) {
    gssize n = g_input_stream_read(in, buf, sizeof buf, NULL, &error);
    if (n < 0)
      return cli_failf(path, "reading the counters: %s", error->message);
    if (n == 0)
      break;
    if (text->len + (gsize)n > CLI_STATS_MAX)
      return cli_failf(path, "more than %d bytes of counters", CLI_STATS_MAX);
    g_byte_array_append(text, buf, (guint)n);
  }
  g_byte_array_append(text, (const guint8 *)"", 1);
  const char *all = (const char *)text->data;
  if (prometheus) {
    fputs(all, stdout);
    return CLI_EXIT_OK;
  }
  /* For people: the samples, without the HELP and TYPE comments. */
  g_auto(GStrv) lines = g_strsplit(all, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++)
    if (lines[i][0] != '#' && lines[i][0] != '\0')
      g_print("%s\n", lines[i]);
  return CLI_EXIT_OK;
}

static int
cli_db_rekey(Cli *cli, char **args, guint n_args)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreMasterKey) new_key = NULL;
  g_autoptr(StoreMasterKey) old_key = NULL;
  const char *new_path = args[0];
  const char *old_path;
  StoreStats stats;

  if (!cli_config(cli))
    return CLI_EXIT_FAIL;
  new_key = cli_load_key(new_path);
  if (new_key == NULL)
    return CLI_EXIT_FAIL;
  old_path = cli_master_key_path(cli);
  if (old_path != NULL) {
    old_key = cli_load_key(old_path);
    if (old_key == NULL)
      return CLI_EXIT_FAIL;
    if (g_str_equal(store_master_key_get_id(old_key), store_master_key_get_id(new_key)))
      return cli_failf(new_path,
                       "this is the current master key (id %s); make a new one with "
                       "'sipcred keygen FILE'",
                       store_master_key_get_id(new_key));
    if (cli_store_with_key(cli, "re-keying") == NULL)
      return CLI_EXIT_FAIL;
  } else if (cli_store(cli) == NULL) {
    return CLI_EXIT_FAIL;
  }
  CliProgress progress;
  cli_progress_init(&progress, "db rekey", "credential records");
  if (!store_db_rekey_full(cli->db, new_key, cli_progress, &progress, &error)) {
    if (old_path == NULL && g_error_matches(error, STORE_ERROR, STORE_ERROR_KEY))
      g_prefix_error(&error, "give the current key with --master-key FILE: ");
    return cli_fail("master key", error->message);
  }
  if (!store_db_get_stats(cli->db, &stats, &error))
    return cli_fail(cli->state_dir, error->message);
  g_print("the store in %s now uses master key %s (id %s); %" G_GUINT64_FORMAT
          " server-held keys were re-wrapped\n",
          cli->state_dir, new_path, store_master_key_get_id(new_key), stats.n_server_held);
  g_print("next: point [store] master-key at %s and send sipcredd SIGHUP (or restart it)",
          new_path);
  if (old_path != NULL)
    g_print("; then %s may be destroyed", old_path);
  g_print("\n");
  return CLI_EXIT_OK;
}

/* ---- ca ---- */

/* The test CA (sec-flows Appendix A). Its options live apart from opt so
 * that the defaults of the other commands stay as they are. */
static struct {
  char *ca_dir;
  char *out_dir;
  char *cn;
  int days; /* G_MININT: the command's default */
  gboolean no_eku;
  gboolean force;
} cli_ca_opt = {.days = G_MININT};

static void
cli_ca_opt_clear(void)
{
  g_clear_pointer(&cli_ca_opt.ca_dir, g_free);
  g_clear_pointer(&cli_ca_opt.out_dir, g_free);
  g_clear_pointer(&cli_ca_opt.cn, g_free);
}

static gboolean
cli_ca_days(guint default_days, guint *days)
{
  if (cli_ca_opt.days == G_MININT) {
    *days = default_days;
    return TRUE;
  }
  if (cli_ca_opt.days < 0 || cli_ca_opt.days > IDENT_CA_MAX_DAYS)
    return FALSE;
  *days = (guint)cli_ca_opt.days;
  return TRUE;
}

static int
cli_ca_usage_days(void)
{
  g_autofree char *why =
      g_strdup_printf("--days must be 0 (already expired) to %d", IDENT_CA_MAX_DAYS);
  return cli_usage(why);
}

static IdentCaFlags
cli_ca_flags(void)
{
  return (cli_ca_opt.force ? IDENT_CA_FLAG_FORCE : 0) |
         (cli_ca_opt.no_eku ? IDENT_CA_FLAG_NO_EKU : 0);
}

static IdentCa *
cli_ca_open(void)
{
  g_autoptr(GError) error = NULL;
  IdentCa *ca = ident_ca_open(cli_ca_opt.ca_dir, &error);

  if (ca == NULL)
    cli_fail(cli_ca_opt.ca_dir, error->message);
  return ca;
}

static int
cli_ca_init_run(char **args)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCa) ca = NULL;
  guint days;

  if (!cli_ca_days(IDENT_CA_DEFAULT_CA_DAYS, &days))
    return cli_ca_usage_days();
  ca = ident_ca_create(args[0], cli_ca_opt.cn, days, g_get_real_time() / G_USEC_PER_SEC,
                       cli_ca_flags(), &error);
  if (ca == NULL)
    return cli_fail("ca init", error->message);
  if (days == 0)
    g_print("created an already expired test CA in %s: ca.pem, ca.der, ca.key (mode 0600)\n",
            args[0]);
  else
    g_print("created a test CA in %s: ca.pem, ca.der, ca.key (mode 0600), valid %u days\n",
            args[0], days);
  g_print("for tests only: anyone who trusts ca.pem trusts whoever can read ca.key\n");
  return CLI_EXIT_OK;
}

static int
cli_ca_init(Cli *cli, char **args, guint n_args)
{
  int status = cli_ca_init_run(args);

  cli_ca_opt_clear();
  return status;
}

static int
cli_ca_issue_run(char **args)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCa) ca = NULL;
  g_autoptr(CliSecret) password = NULL;
  g_autofree char *name = NULL;
  IdentCaKind kind;
  guint days;

  if (g_str_equal(args[0], "host"))
    kind = IDENT_CA_HOST;
  else if (g_str_equal(args[0], "user"))
    kind = IDENT_CA_USER;
  else
    return cli_usage("usage: sipcred ca issue host DOMAIN | user AOR");
  if (cli_ca_opt.ca_dir == NULL)
    return cli_usage("ca issue needs --ca DIR (made by 'sipcred ca init DIR')");
  if (!cli_ca_days(IDENT_CA_DEFAULT_DAYS, &days))
    return cli_ca_usage_days();
  if (opt.password_file != NULL) {
    password = cli_get_password(opt.password_file, args[1], &error);
    if (password == NULL)
      return cli_fail(opt.password_file, error->message);
  }
  ca = cli_ca_open();
  if (ca == NULL)
    return CLI_EXIT_FAIL;
  name = ident_ca_issue(ca, kind, args[1], days, g_get_real_time() / G_USEC_PER_SEC, password,
                        cli_ca_opt.out_dir, cli_ca_flags(), &error);
  if (name == NULL)
    return cli_fail(args[1], error->message);
  g_print("issued %s certificate %s%s%s: %s/%s.{pem,der,key,p8,p12}\n", args[0], name,
          days == 0 ? " (already expired)" : "", cli_ca_opt.no_eku ? " without EKU" : "",
          cli_ca_opt.out_dir != NULL ? cli_ca_opt.out_dir : cli_ca_opt.ca_dir, name);
  if (password == NULL)
    g_print("the .p8 and .p12 files use the draft's password \"%s\"\n", IDENT_CA_DEFAULT_PASSWORD);
  return CLI_EXIT_OK;
}

static int
cli_ca_issue(Cli *cli, char **args, guint n_args)
{
  int status = cli_ca_issue_run(args);

  cli_ca_opt_clear();
  return status;
}

static int
cli_ca_revoke_run(char **args)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCa) ca = NULL;
  g_autofree char *serial = NULL;
  gboolean already = FALSE;

  if (cli_ca_opt.ca_dir == NULL)
    return cli_usage("ca revoke needs --ca DIR");
  ca = cli_ca_open();
  if (ca == NULL)
    return CLI_EXIT_FAIL;
  serial = ident_ca_revoke(ca, args[0], g_get_real_time() / G_USEC_PER_SEC, &already, &error);
  if (serial == NULL)
    return cli_fail(args[0], error->message);
  if (already)
    g_print("%s (serial %s) was already revoked\n", args[0], serial);
  else
    g_print("revoked %s (serial %s); 'sipcred ca crl --ca %s' publishes it\n", args[0], serial,
            cli_ca_opt.ca_dir);
  return CLI_EXIT_OK;
}

static int
cli_ca_revoke(Cli *cli, char **args, guint n_args)
{
  int status = cli_ca_revoke_run(args);

  cli_ca_opt_clear();
  return status;
}

static int
cli_ca_crl_run(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCa) ca = NULL;
  guint days, n = 0;

  if (cli_ca_opt.ca_dir == NULL)
    return cli_usage("ca crl needs --ca DIR");
  if (!cli_ca_days(IDENT_CA_DEFAULT_CRL_DAYS, &days))
    return cli_ca_usage_days();
  ca = cli_ca_open();
  if (ca == NULL)
    return CLI_EXIT_FAIL;
  if (!ident_ca_write_crl(ca, days, g_get_real_time() / G_USEC_PER_SEC, &n, &error))
    return cli_fail(cli_ca_opt.ca_dir, error->message);
  g_print("wrote %s/ca.crl and ca.crl.der: %u revoked, next update in %u days\n",
          cli_ca_opt.ca_dir, n, days);
  return CLI_EXIT_OK;
}

static int
cli_ca_crl(Cli *cli, char **args, guint n_args)
{
  int status = cli_ca_crl_run();

  cli_ca_opt_clear();
  return status;
}

/* ---- client: fetch, publish, revoke, retrieve (RFC 6072 sections 4, 5, 10.3) ---- */

/* Exit statuses of the client commands beyond 0-2 (sipcred(1) EXIT STATUS). */
#define CLI_EXIT_NETWORK 3     /* cannot connect, TLS failed, timed out, protocol */
#define CLI_EXIT_TLS_NAME 4    /* server certificate does not name the server (test 8) */
#define CLI_EXIT_TLS_TRUST 5   /* chain does not end at a --ca anchor (test 9) */
#define CLI_EXIT_TLS_TIME 6    /* server certificate outside its validity (test 10) */
#define CLI_EXIT_TLS_REVOKED 7 /* server certificate revoked under --crl (test 11) */
#define CLI_EXIT_NOTIFY 8      /* a NOTIFY failed RFC 6072 10.3 (From, Identity, certificate) */
#define CLI_EXIT_REFUSED 9     /* the server refused the request (digest, 4xx, 5xx) */
#define CLI_EXIT_PASSPHRASE 10 /* the PKCS#8 does not decrypt with the passphrase */
#define CLI_EXIT_NONE 11       /* the AOR has no certificate (empty NOTIFY) */
/* The AOR's own certificate (sec-flows 7, S/MIME tests 2-5). */
#define CLI_EXIT_CERT_PROFILE 12 /* no subjectAltName URI of the AOR, or a CA (test 2) */
#define CLI_EXIT_CERT_TRUST 13   /* CA-issued but not chaining to a --ca anchor (test 3) */
#define CLI_EXIT_CERT_TIME 14    /* outside notBefore..notAfter (test 4) */
#define CLI_EXIT_CERT_REVOKED 15 /* revoked under --crl, or its issuer is (test 5) */

#define CLI_CLIENT_MAX_DER (64 * 1024)
#define CLI_CLIENT_IDENTITY_WINDOW 600
#define CLI_CLIENT_CACHE_LIFETIME 86400

static struct {
  char *server;
  char *tls_name;
  char *ca;
  char **crls;
  char *der;
  gboolean watch;
  int timeout;
  char *user;
  char *password_file;
  char *passphrase_file;
  char *cert;
  char *key;
  gboolean cert_only;
  char *etag_file;
  char *key_out;
  int expires;
  gboolean require_ca;
  int cache_lifetime;
  char *resolver;
} cli_client_opt = {.timeout = 30, .expires = -1, .cache_lifetime = CLI_CLIENT_CACHE_LIFETIME};

static void
cli_client_opt_clear(void)
{
  g_clear_pointer(&cli_client_opt.server, g_free);
  g_clear_pointer(&cli_client_opt.tls_name, g_free);
  g_clear_pointer(&cli_client_opt.ca, g_free);
  g_clear_pointer(&cli_client_opt.crls, g_strfreev);
  g_clear_pointer(&cli_client_opt.der, g_free);
  g_clear_pointer(&cli_client_opt.user, g_free);
  g_clear_pointer(&cli_client_opt.password_file, g_free);
  g_clear_pointer(&cli_client_opt.passphrase_file, g_free);
  g_clear_pointer(&cli_client_opt.cert, g_free);
  g_clear_pointer(&cli_client_opt.key, g_free);
  g_clear_pointer(&cli_client_opt.etag_file, g_free);
  g_clear_pointer(&cli_client_opt.key_out, g_free);
  g_clear_pointer(&cli_client_opt.resolver, g_free);
  cli_client_opt.require_ca = FALSE;
  cli_client_opt.cache_lifetime = CLI_CLIENT_CACHE_LIFETIME;
}

/* One client run: the AOR, the connection and what the checks need. */
typedef struct {
  char *aor;
  char *domain;
  char *tls_name;
  SipclientTrust *trust;
  SipclientConn *conn;
  gint64 deadline;
  char *call_id;
  char *from_tag;
  char *to_tag;
  guint32 cseq;
  char *info_url; /* the Identity-Info certificate last fetched, kept for --watch */
  GBytes *info_der;
} CliClient;

static void
cli_client_clear(CliClient *c)
{
  g_clear_pointer(&c->aor, g_free);
  g_clear_pointer(&c->domain, g_free);
  g_clear_pointer(&c->tls_name, g_free);
  g_clear_pointer(&c->conn, sipclient_conn_free);
  g_clear_pointer(&c->trust, sipclient_trust_free);
  g_clear_pointer(&c->call_id, g_free);
  g_clear_pointer(&c->from_tag, g_free);
  g_clear_pointer(&c->to_tag, g_free);
  g_clear_pointer(&c->info_url, g_free);
  g_clear_pointer(&c->info_der, g_bytes_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(CliClient, cli_client_clear)

/* Prints a sipclient error and gives its exit status. */
static int
cli_client_fail(const char *what, const GError *error)
{
  int status = CLI_EXIT_FAIL;

  if (error->domain == SIPCLIENT_ERROR) {
    switch ((SipclientError)error->code) {
    case SIPCLIENT_ERROR_FILE:
      status = CLI_EXIT_FAIL;
      break;
    case SIPCLIENT_ERROR_NAME:
      status = CLI_EXIT_TLS_NAME;
      break;
    case SIPCLIENT_ERROR_UNTRUSTED:
      status = CLI_EXIT_TLS_TRUST;
      break;
    case SIPCLIENT_ERROR_VALIDITY:
      status = CLI_EXIT_TLS_TIME;
      break;
    case SIPCLIENT_ERROR_REVOKED:
      status = CLI_EXIT_TLS_REVOKED;
      break;
    case SIPCLIENT_ERROR_AUTH:
      status = CLI_EXIT_REFUSED;
      break;
    default:
      status = CLI_EXIT_NETWORK;
      break;
    }
  }
  g_printerr("sipcred: %s: %s\n", what, error->message);
  return status;
}

/* A secret from the first line of @file, else one prompt on a terminal,
 * else the first line of standard input. Never from argv. */
static char *
cli_client_secret(const char *file, const char *prompt, GError **error)
{
  if (file != NULL)
    return cli_get_password(file, prompt, error);
  if (isatty(STDIN_FILENO))
    return cli_prompt_password(prompt, error);
  return cli_read_line(stdin, "standard input", error);
}

/* HOST[:PORT], [V6]:PORT. */
static gboolean
cli_client_parse_server(const char *arg, char **host, guint16 *port)
{
  const char *colon;
  guint64 v = 5061;

  if (arg[0] == '[') {
    const char *end = strchr(arg, ']');
    if (end == NULL)
      return FALSE;
    *host = g_strndup(arg + 1, end - arg - 1);
    colon = end[1] == ':' ? end + 1 : NULL;
  } else {
    colon = strrchr(arg, ':');
    *host = colon != NULL ? g_strndup(arg, colon - arg) : g_strdup(arg);
  }
  if (colon != NULL && !g_ascii_string_to_unsigned(colon + 1, 10, 1, 65535, &v, NULL)) {
    g_clear_pointer(host, g_free);
    return FALSE;
  }
  *port = (guint16)v;
  return **host != '\0';
}

/* Canonical AOR, its domain and the trust anchors: what the checks need,
 * before any connection (a cache hit needs no more). Returns an exit
 * status (CLI_EXIT_OK to go on). */
static int
cli_client_prepare(CliClient *c, const char *arg)
{
  g_autoptr(GError) error = NULL;
  const char *at;

  if (cli_client_opt.ca == NULL)
    return cli_usage("the client commands need --ca FILE (the trust anchors, PEM)");
  if (cli_client_opt.timeout < 1 || cli_client_opt.timeout > 86400)
    return cli_usage("--timeout must be 1 to 86400 seconds");
  if (cli_client_opt.cache_lifetime < 0)
    return cli_usage("--cache-lifetime must be 0 (no cache) or more seconds");
  c->aor = core_aor_canonicalize(arg, &error);
  if (c->aor == NULL)
    return cli_fail(arg, error->message);
  at = strrchr(c->aor, '@');
  c->domain = g_strdup(at != NULL ? at + 1 : c->aor + 4);
  c->deadline = g_get_monotonic_time() + (gint64)cli_client_opt.timeout * G_USEC_PER_SEC;
  c->trust =
      sipclient_trust_new(cli_client_opt.ca, (const char *const *)cli_client_opt.crls, &error);
  if (c->trust == NULL)
    return cli_client_fail("trust anchors", error);
  return CLI_EXIT_OK;
}

/* A verified TLS connection to --server, else to the hosts RFC 3263 finds
 * for the AOR's domain (sipdns.h), tried in order while they cannot be
 * reached; a TLS or verification failure stops there. */
static int
cli_client_connect(CliClient *c)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) targets = NULL;

  if (cli_client_opt.server != NULL) {
    SipdnsTarget *t = g_new0(SipdnsTarget, 1);
    targets = g_ptr_array_new_with_free_func((GDestroyNotify)sipdns_target_free);
    g_ptr_array_add(targets, t);
    if (!cli_client_parse_server(cli_client_opt.server, &t->host, &t->port))
      return cli_usage("--server must be HOST[:PORT]");
  } else {
    targets = sipdns_locate_sips(c->domain, cli_client_opt.resolver, &error);
    if (targets == NULL) {
      g_autofree char *what = g_strdup_printf("locating the server of %s", c->domain);
      if (g_error_matches(error, SIPDNS_ERROR, SIPDNS_ERROR_INVALID))
        return cli_usage(error->message);
      g_printerr("sipcred: %s: %s\n", what, error->message);
      return CLI_EXIT_NETWORK;
    }
  }
  /* The name the server must prove is the AOR's domain (RFC 3263 4, RFC
   * 5922): what the user asked for, not where DNS or --server led. */
  c->tls_name = g_strdup(cli_client_opt.tls_name != NULL ? cli_client_opt.tls_name : c->domain);
  for (guint i = 0; i < targets->len; i++) {
    SipdnsTarget *t = g_ptr_array_index(targets, i);
    g_autofree char *what = g_strdup_printf("%s:%u", t->host, t->port);

    g_clear_error(&error);
    c->conn = sipclient_conn_open(t->host, t->port, c->tls_name, c->trust, c->deadline, &error);
    if (c->conn != NULL)
      break;
    if (!g_error_matches(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_CONNECT) || i + 1 == targets->len)
      return cli_client_fail(what, error);
    g_printerr("sipcred: %s: %s; trying the next server\n", what, error->message);
  }
  c->call_id = sipclient_token();
  c->from_tag = sipclient_token();
  c->cseq = 1;
  return CLI_EXIT_OK;
}

static int
cli_client_start(CliClient *c, const char *arg)
{
  int status = cli_client_prepare(c, arg);

  return status != CLI_EXIT_OK ? status : cli_client_connect(c);
}

/* The status of a non-2xx final response. */
static int
cli_client_refused(const char *what, SipwireMsg *resp)
{
  guint status = sipwire_msg_get_status(resp);

  g_printerr("sipcred: %s: the server answered %u%s\n", what, status,
             status == 401 || status == 407 ? " (digest credentials refused)"
             : status == 403                ? " (forbidden)"
                                            : "");
  return status == 404 ? CLI_EXIT_NONE : CLI_EXIT_REFUSED;
}

/* The URI of a From/To value: inside <>, else up to ';'. */
static char *
cli_client_uri_of(const char *value)
{
  const char *lt = strchr(value, '<');

  if (lt != NULL) {
    const char *gt = strchr(lt, '>');
    return gt != NULL ? g_strndup(lt + 1, gt - lt - 1) : NULL;
  }
  return g_strstrip(g_strndup(value, strcspn(value, ";")));
}

/* sec-flows 7, S/MIME tests 1-5, on the AOR's certificate: a
 * subjectAltName URI of the AOR and no CA (test 2), valid now (test 4); a
 * CA-issued one must also chain to a --ca anchor (test 3) and not be
 * revoked under --crl (test 5). A self-signed one, what RFC 6072 user
 * agents publish, has no chain: the verified Identity of the NOTIFY that
 * carried it vouches for it (RFC 6072 3), unless --require-ca. Messages
 * start with @context. Returns an exit status. */
static int
cli_client_check_user_cert(CliClient *c, GBytes *der, gint64 now, const char *context)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCert) cert =
      ident_cert_new_from_data(g_bytes_get_data(der, NULL), g_bytes_get_size(der), &error);
  g_autofree char *what = g_strdup_printf("the certificate of %s", c->aor);
  GBytes *chain[1] = {der};

  if (cert == NULL) {
    g_printerr("sipcred: %s%s: %s\n", context, what, error->message);
    return CLI_EXIT_NOTIFY;
  }
  if (!ident_cert_check_user_profile(cert, c->aor, now, &error)) {
    g_printerr("sipcred: %s%s: %s\n", context, what, error->message);
    return g_error_matches(error, IDENT_ERROR, IDENT_ERROR_EXPIRED) ? CLI_EXIT_CERT_TIME
                                                                    : CLI_EXIT_CERT_PROFILE;
  }
  if (ident_cert_is_self_signed(cert)) {
    if (!cli_client_opt.require_ca)
      return CLI_EXIT_OK;
    g_printerr("sipcred: %s%s is self-signed; --require-ca asks for one a trust anchor issued\n",
               context, what);
    return CLI_EXIT_CERT_TRUST;
  }
  if (!sipclient_trust_verify_chain(c->trust, chain, 1, what, now, &error)) {
    g_printerr("sipcred: %s%s\n", context, error->message);
    if (g_error_matches(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_REVOKED))
      return CLI_EXIT_CERT_REVOKED;
    if (g_error_matches(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_VALIDITY))
      return CLI_EXIT_CERT_TIME;
    return CLI_EXIT_CERT_TRUST;
  }
  return CLI_EXIT_OK;
}

typedef struct {
  GBytes *cert_der; /* NULL: no certificate (revoked or never published) */
  GBytes *pkcs8;
  gboolean terminated;
} CliNotify;

static void
cli_notify_clear(CliNotify *n)
{
  g_clear_pointer(&n->cert_der, g_bytes_unref);
  g_clear_pointer(&n->pkcs8, g_bytes_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(CliNotify, cli_notify_clear)

/* RFC 6072 10.3 on one NOTIFY. Returns an exit status. */
static int
cli_client_check_notify(CliClient *c, GBytes *raw, gboolean want_key, CliNotify *out)
{
  g_autoptr(GError) error = NULL;
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(raw, &len);
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, len, &error);
  g_autofree char *from_uri = NULL;
  g_autofree char *from_aor = NULL;
  g_autofree char *url = NULL;
  const char *from, *info, *state, *ctype, *cte;
  const char *from_host;
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  IdentAlg alg = IDENT_ALG_RSA_SHA256;
  g_autoptr(GBytes) body = NULL;

  if (msg == NULL)
    return cli_failf("NOTIFY", "unreadable: %s", error->message);
  state = sipwire_msg_get_first(msg, "Subscription-State");
  out->terminated = state != NULL && g_ascii_strncasecmp(state, "terminated", 10) == 0;
  /* 1. From is the AOR asked for. */
  from = sipwire_msg_get_first(msg, "From");
  from_uri = from != NULL ? cli_client_uri_of(from) : NULL;
  from_aor = from_uri != NULL ? core_aor_canonicalize(from_uri, NULL) : NULL;
  if (from_aor == NULL || !g_str_equal(from_aor, c->aor)) {
    g_printerr("sipcred: NOTIFY rejected: its From (%s) is not %s\n",
               from_uri != NULL ? from_uri : "missing", c->aor);
    return CLI_EXIT_NOTIFY;
  }
  from_host = strrchr(from_aor, '@') + 1;
  /* 2. Identity, against the certificate behind Identity-Info, which must
   * chain to an anchor and name the From domain. */
  info = sipwire_msg_get_first(msg, "Identity-Info");
  url = info != NULL ? cli_client_uri_of(info) : NULL;
  if (url == NULL || sipwire_msg_get_first(msg, "Identity") == NULL) {
    g_printerr("sipcred: NOTIFY rejected: it carries no Identity and Identity-Info\n");
    return CLI_EXIT_NOTIFY;
  }
  if (c->info_url == NULL || !g_str_equal(c->info_url, url)) {
    g_autoptr(GBytes) der =
        sipclient_https_get(url, from_host, c->trust, CLI_CLIENT_MAX_DER, c->deadline, &error);
    if (der == NULL)
      return cli_client_fail("Identity-Info", error);
    GBytes *chain[1] = {der};
    if (!sipclient_trust_verify(c->trust, chain, 1, from_host, now, &error)) {
      g_printerr("sipcred: NOTIFY rejected: the Identity-Info certificate at %s: %s\n", url,
                 error->message);
      return CLI_EXIT_NOTIFY;
    }
    g_free(c->info_url);
    c->info_url = g_strdup(url);
    g_clear_pointer(&c->info_der, g_bytes_unref);
    c->info_der = g_steal_pointer(&der);
  }
  if (!ident_verify_message(data, len, g_bytes_get_data(c->info_der, NULL),
                            g_bytes_get_size(c->info_der), now, CLI_CLIENT_IDENTITY_WINDOW, &alg,
                            &error)) {
    g_printerr("sipcred: NOTIFY rejected: Identity: %s\n", error->message);
    return CLI_EXIT_NOTIFY;
  }
  g_info("Identity verified (%s) against %s", ident_alg_to_string(alg), c->info_url);
  /* 3. The certificate in the body. */
  body = sipwire_msg_get_body(msg);
  if (body == NULL || g_bytes_get_size(body) == 0)
    return CLI_EXIT_OK;
  ctype = sipwire_msg_get_first(msg, "Content-Type");
  cte = sipwire_msg_get_first(msg, "Content-Transfer-Encoding");
  if (!core_credbody_parse(ctype != NULL ? ctype : "", cte, g_bytes_get_data(body, NULL),
                           g_bytes_get_size(body),
                           want_key ? CORE_CREDBODY_PARSE_NONE : CORE_CREDBODY_PARSE_CERT_ONLY,
                           &out->cert_der, want_key ? &out->pkcs8 : NULL, &error)) {
    g_printerr("sipcred: NOTIFY rejected: body: %s\n", error->message);
    return CLI_EXIT_NOTIFY;
  }
  int status = cli_client_check_user_cert(c, out->cert_der, now, "NOTIFY rejected: ");
  if (status != CLI_EXIT_OK)
    cli_notify_clear(out);
  return status;
}

/* SUBSCRIBE to @event and the first NOTIFY of the dialog. */
static int
cli_client_subscribe(CliClient *c, const char *event, const char *accept, guint expires,
                     const char *user, const char *password, GBytes **notify)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) notifies = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  g_autofree char *ev = g_strdup_printf("Event: %s", event);
  g_autofree char *acc = g_strdup_printf("Accept: %s", accept);
  g_autofree char *exp = g_strdup_printf("Expires: %u", expires);
  g_autofree char *from = NULL;
  const char *headers[] = {ev, acc, exp, NULL};
  SipclientRequest req = {.method = "SUBSCRIBE",
                          .uri = c->aor,
                          .call_id = c->call_id,
                          .from_tag = c->from_tag,
                          .headers = headers,
                          .user = user,
                          .password = password};
  g_autoptr(SipwireMsg) resp = NULL;

  from = g_strdup(cli_client_opt.user != NULL ? cli_client_opt.user
                                              : "sip:anonymous@anonymous.invalid");
  req.from = from;
  resp = sipclient_request(c->conn, &req, &c->cseq, notifies, c->deadline, &error);
  if (resp == NULL)
    return cli_client_fail("SUBSCRIBE", error);
  if (sipwire_msg_get_status(resp) >= 300)
    return cli_client_refused("SUBSCRIBE", resp);
  {
    const char *to = sipwire_msg_get_first(resp, "To");
    g_autofree char *tag = to != NULL ? sipwire_param_get(to, "tag") : NULL;
    c->to_tag = g_steal_pointer(&tag);
  }
  /* The NOTIFY may come before or after the 200. */
  for (guint guard = 0; notifies->len == 0 && guard < 1000; guard++) {
    g_autoptr(GBytes) raw = NULL;
    g_autoptr(SipwireMsg) in = sipclient_conn_read(c->conn, c->deadline, &raw, &error);
    if (in == NULL)
      return cli_client_fail("waiting for the NOTIFY", error);
    if (!sipwire_msg_is_request(in))
      continue;
    gboolean is_notify = g_strcmp0(sipwire_msg_get_method(in), "NOTIFY") == 0;
    if (!sipclient_conn_answer(c->conn, in, is_notify ? 200 : 481, is_notify ? "OK" : "No",
                               c->deadline, &error))
      return cli_client_fail("NOTIFY", error);
    if (is_notify && g_strcmp0(sipwire_msg_get_first(in, "Call-ID"), c->call_id) == 0)
      g_ptr_array_add(notifies, g_steal_pointer(&raw));
  }
  if (notifies->len == 0)
    return cli_failf("SUBSCRIBE", "no NOTIFY arrived");
  *notify = g_bytes_ref(g_ptr_array_index(notifies, 0));
  return CLI_EXIT_OK;
}

static gboolean
cli_client_print_cert(GBytes *der, const char *der_file)
{
  gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(der, NULL),
                       (unsigned int)g_bytes_get_size(der)};
  gnutls_datum_t pem = {NULL, 0};
  gboolean ok;

  if (der_file != NULL)
    return cli_write_output(der_file, in.data, in.size);
  if (gnutls_pem_base64_encode2("CERTIFICATE", &in, &pem) < 0) {
    cli_fail("certificate", "cannot encode as PEM");
    return FALSE;
  }
  ok = cli_write_output(NULL, pem.data, pem.size);
  gnutls_free(pem.data);
  return ok;
}

/* ---- the certificate cache of fetch ----
 * One DER file per AOR under $XDG_CACHE_HOME/sipcred/certificates, written
 * after a certificate passed every check; its mtime is when. A hit within
 * --cache-lifetime is checked again (validity, chain, CRLs: they may have
 * changed since) but needs no server; the Identity it came with is not
 * re-verified. A NOTIFY without a certificate removes the entry. */

static char *
cli_client_cache_path(const char *aor)
{
  g_autofree char *name = g_strdup(aor);

  g_strcanon(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@", '_');
  g_autofree char *file = g_strconcat(name, ".der", NULL);
  return g_build_filename(g_get_user_cache_dir(), "sipcred", "certificates", file, NULL);
}

/* The cached certificate of @aor when fresher than the lifetime; *@age in
 * seconds. */
static GBytes *
cli_client_cache_load(const char *aor, gint64 now, gint64 *age)
{
  g_autofree char *path = cli_client_cache_path(aor);
  g_autofree char *data = NULL;
  gsize len = 0;
  GStatBuf st;

  if (cli_client_opt.cache_lifetime == 0 || g_stat(path, &st) != 0)
    return NULL;
  *age = now - (gint64)st.st_mtime;
  /* A file from the future (a clock set back) is as stale as an old one. */
  if (*age < 0 || *age >= cli_client_opt.cache_lifetime || st.st_size > CLI_CLIENT_MAX_DER ||
      !g_file_get_contents(path, &data, &len, NULL))
    return NULL;
  return g_bytes_new_take(g_steal_pointer(&data), len);
}

static void
cli_client_cache_store(const char *aor, GBytes *der)
{
  g_autofree char *path = cli_client_cache_path(aor);
  g_autofree char *dir = g_path_get_dirname(path);
  g_autoptr(GError) error = NULL;

  if (cli_client_opt.cache_lifetime == 0)
    return;
  if (g_mkdir_with_parents(dir, 0700) != 0 ||
      !g_file_set_contents_full(path, g_bytes_get_data(der, NULL), (gssize)g_bytes_get_size(der),
                                G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error))
    g_printerr("sipcred: warning: cannot cache the certificate in %s: %s\n", path,
               error != NULL ? error->message : g_strerror(errno));
}

static void
cli_client_cache_forget(const char *aor)
{
  g_autofree char *path = cli_client_cache_path(aor);

  if (g_unlink(path) != 0 && errno != ENOENT)
    g_printerr("sipcred: warning: cannot remove %s: %s\n", path, g_strerror(errno));
}

/* fetch from the cache: CLI_EXIT_OK when it answered, else -1 to ask the
 * server. */
static int
cli_client_fetch_cached(CliClient *c)
{
  gint64 now = g_get_real_time() / G_USEC_PER_SEC, age = 0;
  g_autoptr(GBytes) der = cli_client_cache_load(c->aor, now, &age);

  if (der == NULL)
    return -1;
  if (cli_client_check_user_cert(c, der, now, "the cached copy of ") != CLI_EXIT_OK) {
    g_printerr("sipcred: asking the server instead\n");
    cli_client_cache_forget(c->aor);
    return -1;
  }
  if (!cli_client_print_cert(der, cli_client_opt.der))
    return CLI_EXIT_FAIL;
  g_printerr("sipcred: the certificate of %s from the local cache (accepted %" G_GINT64_FORMAT
             " s ago)\n",
             c->aor, age);
  return CLI_EXIT_OK;
}

static int
cli_client_fetch_run(char **args)
{
  g_auto(CliClient) c = {0};
  g_autoptr(GBytes) raw = NULL;
  g_auto(CliNotify) n = {0};
  g_autoptr(GError) error = NULL;
  int status;

  status = cli_client_prepare(&c, args[0]);
  if (status != CLI_EXIT_OK)
    return status;
  if (!cli_client_opt.watch) {
    status = cli_client_fetch_cached(&c);
    if (status >= 0)
      return status;
  }
  status = cli_client_connect(&c);
  if (status != CLI_EXIT_OK)
    return status;
  /* A one-shot fetch is an Expires: 0 SUBSCRIBE (RFC 6665 4.4.3); --watch
   * asks for the whole --timeout so that no refresh is needed. */
  status = cli_client_subscribe(&c, "certificate", "application/pkix-cert",
                                cli_client_opt.watch ? (guint)cli_client_opt.timeout + 60 : 0,
                                NULL, NULL, &raw);
  if (status != CLI_EXIT_OK)
    return status;
  status = cli_client_check_notify(&c, raw, FALSE, &n);
  if (status != CLI_EXIT_OK)
    return status;
  if (n.cert_der != NULL)
    cli_client_cache_store(c.aor, n.cert_der);
  else
    cli_client_cache_forget(c.aor);
  if (n.cert_der == NULL && !cli_client_opt.watch) {
    g_printerr("sipcred: %s has no certificate\n", c.aor);
    return CLI_EXIT_NONE;
  }
  if (n.cert_der != NULL && !cli_client_print_cert(n.cert_der, cli_client_opt.der))
    return CLI_EXIT_FAIL;
  if (n.cert_der != NULL)
    g_printerr("sipcred: accepted the certificate of %s (Identity verified)\n", c.aor);
  else
    g_print("# %s has no certificate\n", c.aor);
  fflush(stdout);
  if (!cli_client_opt.watch)
    return CLI_EXIT_OK;
  /* --watch: every NOTIFY of the dialog until it ends or --timeout. */
  for (guint guard = 0; !n.terminated && guard < 100000; guard++) {
    g_autoptr(GBytes) next = NULL;
    g_autoptr(SipwireMsg) in = sipclient_conn_read(c.conn, c.deadline, &next, &error);

    if (in == NULL) {
      if (g_error_matches(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TIMEOUT))
        return CLI_EXIT_OK;
      return cli_client_fail("watching", error);
    }
    if (!sipwire_msg_is_request(in))
      continue;
    gboolean is_notify = g_strcmp0(sipwire_msg_get_method(in), "NOTIFY") == 0 &&
                         g_strcmp0(sipwire_msg_get_first(in, "Call-ID"), c.call_id) == 0;
    if (!sipclient_conn_answer(c.conn, in, is_notify ? 200 : 481, is_notify ? "OK" : "No",
                               c.deadline, &error))
      return cli_client_fail("NOTIFY", error);
    if (!is_notify)
      continue;
    cli_notify_clear(&n);
    status = cli_client_check_notify(&c, next, FALSE, &n);
    if (status != CLI_EXIT_OK)
      return status;
    if (n.cert_der == NULL) {
      cli_client_cache_forget(c.aor);
      g_print("# revoked: %s has no certificate\n", c.aor);
    } else {
      cli_client_cache_store(c.aor, n.cert_der);
      g_print("# changed: a new certificate of %s\n", c.aor);
      if (!cli_client_print_cert(n.cert_der, cli_client_opt.der))
        return CLI_EXIT_FAIL;
    }
    fflush(stdout);
  }
  return CLI_EXIT_OK;
}

static int
cli_client_fetch(Cli *cli, char **args, guint n_args)
{
  int status = cli_client_fetch_run(args);

  cli_client_opt_clear();
  return status;
}

/* The digest username: the user part of the --user AOR. */
static char *
cli_client_username(const char *user_aor, GError **error)
{
  g_autofree char *canon = core_aor_canonicalize(user_aor, error);
  return canon != NULL ? cli_aor_user(canon) : NULL;
}

/* Where the ETag of @aor's publication is kept. */
static char *
cli_client_etag_path(const char *aor)
{
  g_autofree char *name = NULL;

  if (cli_client_opt.etag_file != NULL)
    return g_strdup(cli_client_opt.etag_file);
  name = g_strdup(aor);
  g_strcanon(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@", '_');
  return g_build_filename(g_get_user_state_dir(), "sipcred", "etags", name, NULL);
}

static char *
cli_client_etag_load(const char *path)
{
  g_autofree char *text = NULL;

  if (!g_file_get_contents(path, &text, NULL, NULL))
    return NULL;
  g_strstrip(text);
  return *text != '\0' ? g_steal_pointer(&text) : NULL;
}

static void
cli_client_etag_save(const char *path, const char *etag)
{
  g_autofree char *dir = g_path_get_dirname(path);
  g_autoptr(GError) error = NULL;
  g_autofree char *line = g_strdup_printf("%s\n", etag);

  if (g_mkdir_with_parents(dir, 0700) != 0 || !g_file_set_contents(path, line, -1, &error))
    g_printerr("sipcred: warning: cannot keep the ETag in %s: %s\n", path,
               error != NULL ? error->message : g_strerror(errno));
}

/* Encrypts an unencrypted PKCS#8 DER under @passphrase: PBES2 with
 * PBKDF2-HMAC-SHA256 and AES-256-CBC. RFC 6072 10.5 names
 * id-aes128-wrap-pad, which GnuTLS cannot write (nor read); CBC under PBES2
 * is what GnuTLS, OpenSSL and NSS all read. */
static GBytes *
cli_client_encrypt_pkcs8(GBytes *plain, const char *passphrase, GError **error)
{
  gnutls_x509_privkey_t key = NULL;
  gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(plain, NULL),
                       (unsigned int)g_bytes_get_size(plain)};
  gnutls_datum_t out = {NULL, 0};
  GBytes *result = NULL;
  int rc;

  if ((rc = gnutls_x509_privkey_init(&key)) < 0 ||
      (rc = gnutls_x509_privkey_import_pkcs8(key, &in, GNUTLS_X509_FMT_DER, NULL,
                                             GNUTLS_PKCS_PLAIN)) < 0 ||
      (rc = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_DER, passphrase,
                                              GNUTLS_PKCS_PBES2_AES_256, &out)) < 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "cannot encrypt the key: %s",
                gnutls_strerror(rc));
  } else {
    result = g_bytes_new(out.data, out.size);
    gnutls_free(out.data);
  }
  if (key != NULL)
    gnutls_x509_privkey_deinit(key);
  return result;
}

/* PUBLISH on the connection with digest; revocation when @body is NULL. */
static int
cli_client_publish_send(CliClient *c, GBytes *body, const char *ctype, const char *password,
                        const char *username)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *etag_path = cli_client_etag_path(c->aor);
  g_autofree char *etag = cli_client_etag_load(etag_path);

  for (guint attempt = 0; attempt < 2; attempt++) {
    g_autofree char *if_match = etag != NULL ? g_strdup_printf("SIP-If-Match: %s", etag) : NULL;
    g_autofree char *exp = NULL;
    const char *headers[4] = {"Event: credential"};
    guint nh = 1;
    g_autoptr(SipwireMsg) resp = NULL;
    g_autofree char *call_id = sipclient_token();
    g_autofree char *from_tag = sipclient_token();
    SipclientRequest req = {.method = "PUBLISH",
                            .uri = c->aor,
                            .from = c->aor,
                            .call_id = call_id,
                            .from_tag = from_tag,
                            .headers = headers,
                            .content_type = ctype,
                            .body = body,
                            .user = username,
                            .password = password};

    if (body == NULL)
      exp = g_strdup("Expires: 0");
    else if (cli_client_opt.expires >= 0)
      exp = g_strdup_printf("Expires: %d", cli_client_opt.expires);
    if (exp != NULL)
      headers[nh++] = exp;
    if (if_match != NULL)
      headers[nh++] = if_match;
    resp = sipclient_request(c->conn, &req, &c->cseq, NULL, c->deadline, &error);
    if (resp == NULL)
      return cli_client_fail("PUBLISH", error);
    if (sipwire_msg_get_status(resp) == 412 && etag != NULL) {
      /* Our ETag is stale (someone else published): start afresh. */
      g_clear_pointer(&etag, g_free);
      g_unlink(etag_path);
      continue;
    }
    if (sipwire_msg_get_status(resp) >= 300)
      return cli_client_refused("PUBLISH", resp);
    if (body == NULL) {
      g_unlink(etag_path);
      g_print("revoked the credential of %s\n", c->aor);
      return CLI_EXIT_OK;
    }
    const char *new_etag = sipwire_msg_get_first(resp, "SIP-ETag");
    const char *granted = sipwire_msg_get_first(resp, "Expires");
    if (new_etag != NULL)
      cli_client_etag_save(etag_path, new_etag);
    g_print("published the %s of %s (etag %s, expires %s)\n",
            cli_client_opt.cert_only ? "certificate" : "credential", c->aor,
            new_etag != NULL ? new_etag : "none", granted != NULL ? granted : "?");
    return CLI_EXIT_OK;
  }
  return cli_failf("PUBLISH", "the server refused our ETag twice");
}

/* The digest credentials of --user and --password-file (or a prompt). */
static int
cli_client_credentials(CliClient *c, char **username, char **password)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *prompt = NULL;

  if (cli_client_opt.user == NULL)
    cli_client_opt.user = g_strdup(c->aor);
  *username = cli_client_username(cli_client_opt.user, &error);
  if (*username == NULL)
    return cli_fail(cli_client_opt.user, error->message);
  prompt = g_strdup_printf("Password for %s: ", cli_client_opt.user);
  *password = cli_client_secret(cli_client_opt.password_file, prompt, &error);
  if (*password == NULL)
    return cli_fail("password", error->message);
  return CLI_EXIT_OK;
}

static int
cli_client_publish_run(char **args, gboolean revoke)
{
  g_auto(CliClient) c = {0};
  g_autoptr(GError) error = NULL;
  g_autoptr(CliSecret) password = NULL;
  g_autofree char *username = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(GBytes) pkcs8 = NULL;
  g_autoptr(GBytes) encrypted = NULL;
  g_autoptr(GBytes) body = NULL;
  g_autofree char *ctype = NULL;
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  int status;

  if (!revoke && (cli_client_opt.cert == NULL) != (cli_client_opt.key == NULL) &&
      !(cli_client_opt.cert != NULL && cli_client_opt.cert_only))
    return cli_usage("publish: give --cert and --key together (or --cert with --cert-only)");
  status = cli_client_start(&c, args[0]);
  if (status != CLI_EXIT_OK)
    return status;
  status = cli_client_credentials(&c, &username, &password);
  if (status != CLI_EXIT_OK)
    return status;
  if (revoke)
    return cli_client_publish_send(&c, NULL, NULL, password, username);

  if (cli_client_opt.cert != NULL) {
    g_autoptr(GBytes) data = cli_read_file(cli_client_opt.cert, CLI_CERT_FILE_MAX, "certificate");
    if (data == NULL)
      return CLI_EXIT_FAIL;
    cert = ident_cert_new_from_data(g_bytes_get_data(data, NULL), g_bytes_get_size(data), &error);
    if (cert == NULL || !ident_cert_check_user_profile(cert, c.aor, now, &error))
      return cli_fail(cli_client_opt.cert, error->message);
    if (cli_client_opt.key != NULL) {
      g_autoptr(GBytes) kd = cli_read_file(cli_client_opt.key, CLI_KEY_FILE_MAX, "private key");
      if (kd == NULL)
        return CLI_EXIT_FAIL;
      pkcs8 = ident_cert_match_private_key(cert, g_bytes_get_data(kd, NULL), g_bytes_get_size(kd),
                                           &error);
      if (pkcs8 == NULL)
        return cli_fail(cli_client_opt.key, error->message);
    }
  } else {
    /* RFC 6072 10.6: our own key and self-signed certificate. */
    cert = ident_cert_generate(c.aor, CLI_DEFAULT_BITS, CLI_DEFAULT_DAYS, now, &pkcs8, &error);
    if (cert == NULL)
      return cli_fail(c.aor, error->message);
  }
  if (!cli_client_opt.cert_only) {
    g_autoptr(CliSecret) pass = NULL;
    g_autofree char *scheme = NULL;

    pass = cli_client_secret(cli_client_opt.passphrase_file, "Passphrase for the key: ", &error);
    if (pass == NULL)
      return cli_fail("passphrase", error->message);
    if (*pass == '\0')
      return cli_fail("passphrase", "empty: the key would be encrypted under nothing");
    encrypted = cli_client_encrypt_pkcs8(pkcs8, pass, &error);
    if (encrypted == NULL)
      return cli_fail(c.aor, error->message);
    g_autoptr(GBytes) checked = ident_pkcs8_check_encrypted(
        g_bytes_get_data(encrypted, NULL), g_bytes_get_size(encrypted), &scheme, &error);
    if (checked == NULL)
      return cli_fail(c.aor, error->message);
    g_info("key encrypted with %s", scheme);
  }
  body = core_credbody_build(ident_cert_get_der(cert), encrypted, &ctype);
  return cli_client_publish_send(&c, body, ctype, password, username);
}

static int
cli_client_publish(Cli *cli, char **args, guint n_args)
{
  int status = cli_client_publish_run(args, FALSE);

  cli_client_opt_clear();
  return status;
}

static int
cli_client_revoke(Cli *cli, char **args, guint n_args)
{
  int status = cli_client_publish_run(args, TRUE);

  cli_client_opt_clear();
  return status;
}

/* Decrypts @enc and checks it is @cert's key; the unencrypted PKCS#8 DER. */
static int
cli_client_decrypt(GBytes *enc, const char *passphrase, GBytes *cert_der, GBytes **plain)
{
  g_autoptr(GError) error = NULL;
  gnutls_x509_privkey_t key = NULL;
  gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(enc, NULL),
                       (unsigned int)g_bytes_get_size(enc)};
  gnutls_datum_t out = {NULL, 0};
  int rc;

  if (gnutls_x509_privkey_init(&key) < 0)
    return cli_fail("private key", "GnuTLS");
  rc = gnutls_x509_privkey_import_pkcs8(key, &in, GNUTLS_X509_FMT_DER, passphrase, 0);
  if (rc == GNUTLS_E_DECRYPTION_FAILED) {
    gnutls_x509_privkey_deinit(key);
    g_printerr("sipcred: private key: wrong passphrase: the PKCS#8 does not decrypt with it "
               "(the condition RFC 6072 7.10 answers with 437)\n");
    return CLI_EXIT_PASSPHRASE;
  }
  if (rc < 0 || (rc = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_DER, NULL,
                                                        GNUTLS_PKCS_PLAIN, &out)) < 0) {
    gnutls_x509_privkey_deinit(key);
    return cli_failf("private key", "cannot read the PKCS#8: %s", gnutls_strerror(rc));
  }
  gnutls_x509_privkey_deinit(key);
  g_autoptr(GBytes) dec = g_bytes_new(out.data, out.size);
  explicit_bzero(out.data, out.size);
  gnutls_free(out.data);
  g_autoptr(IdentCert) cert = ident_cert_new_from_data(g_bytes_get_data(cert_der, NULL),
                                                       g_bytes_get_size(cert_der), &error);
  if (cert == NULL)
    return cli_fail("certificate", error->message);
  *plain = ident_cert_match_private_key(cert, g_bytes_get_data(dec, NULL), g_bytes_get_size(dec),
                                        &error);
  if (*plain == NULL)
    return cli_failf("private key", "decrypted, but %s", error->message);
  return CLI_EXIT_OK;
}

static int
cli_client_retrieve_run(char **args)
{
  g_auto(CliClient) c = {0};
  g_autoptr(GError) error = NULL;
  g_autoptr(CliSecret) password = NULL;
  g_autoptr(CliSecret) pass = NULL;
  g_autofree char *username = NULL;
  g_autoptr(GBytes) raw = NULL;
  g_autoptr(GBytes) plain = NULL;
  g_auto(CliNotify) n = {0};
  int status;

  status = cli_client_start(&c, args[0]);
  if (status != CLI_EXIT_OK)
    return status;
  status = cli_client_credentials(&c, &username, &password);
  if (status != CLI_EXIT_OK)
    return status;
  pass = cli_client_secret(cli_client_opt.passphrase_file, "Passphrase for the key: ", &error);
  if (pass == NULL)
    return cli_fail("passphrase", error->message);
  status = cli_client_subscribe(&c, "credential",
                                "multipart/mixed, application/pkix-cert, application/pkcs8", 0,
                                username, password, &raw);
  if (status != CLI_EXIT_OK)
    return status;
  status = cli_client_check_notify(&c, raw, TRUE, &n);
  if (status != CLI_EXIT_OK)
    return status;
  if (n.cert_der == NULL) {
    g_printerr("sipcred: %s has no credential\n", c.aor);
    return CLI_EXIT_NONE;
  }
  if (n.pkcs8 == NULL) {
    g_printerr("sipcred: %s: the server holds only the certificate, no private key\n", c.aor);
    return CLI_EXIT_NONE;
  }
  status = cli_client_decrypt(n.pkcs8, pass, n.cert_der, &plain);
  if (status != CLI_EXIT_OK)
    return status;
  if (cli_client_opt.key_out != NULL) {
    gnutls_datum_t in = {(unsigned char *)g_bytes_get_data(plain, NULL),
                         (unsigned int)g_bytes_get_size(plain)};
    gnutls_datum_t pem = {NULL, 0};
    int fd;

    if (gnutls_pem_base64_encode2("PRIVATE KEY", &in, &pem) < 0)
      return cli_fail("private key", "cannot encode as PEM");
    fd = open(cli_client_opt.key_out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, pem.data, pem.size) != (ssize_t)pem.size || close(fd) != 0) {
      int saved = errno;
      explicit_bzero(pem.data, pem.size);
      gnutls_free(pem.data);
      return cli_failf(cli_client_opt.key_out, "cannot write the key: %s", g_strerror(saved));
    }
    explicit_bzero(pem.data, pem.size);
    gnutls_free(pem.data);
  }
  if (!cli_client_print_cert(n.cert_der, cli_client_opt.der))
    return CLI_EXIT_FAIL;
  g_printerr("sipcred: retrieved the credential of %s: Identity verified, private key "
             "decrypted%s%s\n",
             c.aor, cli_client_opt.key_out != NULL ? " and written to " : "",
             cli_client_opt.key_out != NULL ? cli_client_opt.key_out : "");
  return CLI_EXIT_OK;
}

static int
cli_client_retrieve(Cli *cli, char **args, guint n_args)
{
  int status = cli_client_retrieve_run(args);

  cli_client_opt_clear();
  return status;
}

/* The options of every client command (cli_run() takes one entry array per
 * command, so each array starts with these). */
/* clang-format off */
#define CLI_CLIENT_COMMON_ENTRIES                                                                 \
  {"server", 0, 0, G_OPTION_ARG_STRING, &cli_client_opt.server,                                   \
   "The server, HOST[:PORT] (default: RFC 3263 for the AOR's domain: NAPTR SIPS+D2T, "            \
   "_sips._tcp SRV, else the domain on 5061)", "HOST[:PORT]"},                                    \
  {"resolver", 0, 0, G_OPTION_ARG_STRING, &cli_client_opt.resolver,                               \
   "Ask this DNS server for NAPTR and SRV instead of the system's", "IPV4[:PORT]"},               \
  {"ca", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.ca, "Trust anchors (PEM)", "FILE"},         \
  {"crl", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &cli_client_opt.crls,                                \
   "A CRL (PEM or DER) signed by a trust anchor; repeatable", "FILE"},                            \
  {"tls-name", 0, 0, G_OPTION_ARG_STRING, &cli_client_opt.tls_name,                               \
   "The name the server certificate must carry (default: the AOR's domain)", "NAME"},             \
  {"timeout", 0, 0, G_OPTION_ARG_INT, &cli_client_opt.timeout,                                    \
   "Give up (with --watch: stop) after N seconds (default 30)", "N"},                             \
  {"user", 0, 0, G_OPTION_ARG_STRING, &cli_client_opt.user,                                       \
   "Digest user, as an AOR (default: the AOR)", "AOR"},                                           \
  {"password-file", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.password_file,                   \
   "Read the digest password from the first line of FILE (default: prompt)", "FILE"}
/* clang-format on */

static const GOptionEntry cli_client_fetch_entries[] = {
    CLI_CLIENT_COMMON_ENTRIES,
    {"der", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.der,
     "Write the certificate as DER to FILE (default: PEM on standard output)", "FILE"},
    {"watch", 0, 0, G_OPTION_ARG_NONE, &cli_client_opt.watch,
     "Stay subscribed and print every change, revocation included, until --timeout", NULL},
    {"cache-lifetime", 0, 0, G_OPTION_ARG_INT, &cli_client_opt.cache_lifetime,
     "Answer from the local cache when it accepted the certificate less than N seconds ago "
     "(default 86400; 0: no cache)",
     "N"},
    {"require-ca", 0, 0, G_OPTION_ARG_NONE, &cli_client_opt.require_ca,
     "Refuse a self-signed certificate of the AOR: it must chain to a --ca anchor", NULL},
    {NULL},
};

static const GOptionEntry cli_client_publish_entries[] = {
    CLI_CLIENT_COMMON_ENTRIES,
    {"cert", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.cert,
     "Publish this certificate (default: generate a key and a self-signed one)", "FILE"},
    {"key", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.key, "Its unencrypted private key",
     "FILE"},
    {"cert-only", 0, 0, G_OPTION_ARG_NONE, &cli_client_opt.cert_only,
     "Publish the certificate without the encrypted key", NULL},
    {"passphrase-file", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.passphrase_file,
     "Encrypt the key with the first line of FILE (default: prompt)", "FILE"},
    {"expires", 0, 0, G_OPTION_ARG_INT, &cli_client_opt.expires,
     "Ask for this lifetime in seconds (default: the certificate's)", "N"},
    {"etag-file", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.etag_file,
     "Keep the SIP-ETag here (default: $XDG_STATE_HOME/sipcred/etags/AOR)", "FILE"},
    {NULL},
};

static const GOptionEntry cli_client_revoke_entries[] = {
    CLI_CLIENT_COMMON_ENTRIES,
    {"etag-file", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.etag_file,
     "The SIP-ETag of the publication (default: $XDG_STATE_HOME/sipcred/etags/AOR)", "FILE"},
    {NULL},
};

static const GOptionEntry cli_client_retrieve_entries[] = {
    CLI_CLIENT_COMMON_ENTRIES,
    {"passphrase-file", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.passphrase_file,
     "Decrypt the key with the first line of FILE (default: prompt)", "FILE"},
    {"key-out", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.key_out,
     "Write the decrypted key (PKCS#8 PEM, mode 0600) to FILE", "FILE"},
    {"require-ca", 0, 0, G_OPTION_ARG_NONE, &cli_client_opt.require_ca,
     "Refuse a self-signed certificate of the AOR: it must chain to a --ca anchor", NULL},
    {"der", 0, 0, G_OPTION_ARG_FILENAME, &cli_client_opt.der,
     "Write the certificate as DER to FILE (default: PEM on standard output)", "FILE"},
    {NULL},
};

/* ---- commands ---- */

static const GOptionEntry cli_user_add_entries[] = {
    {"password-file", 0, 0, G_OPTION_ARG_FILENAME, &opt.password_file,
     "Read the password from the first line of FILE (default: prompt, or standard input)", "FILE"},
    {"realm", 0, 0, G_OPTION_ARG_STRING, &opt.realm, "Digest realm (default: the AOR's host)",
     "REALM"},
    {"may-generate", 0, 0, G_OPTION_ARG_NONE, &opt.may_generate,
     "Allow the user to have the server generate a credential", NULL},
    {NULL},
};

static const GOptionEntry cli_user_import_entries[] = {
    {"realm", 0, 0, G_OPTION_ARG_STRING, &opt.realm,
     "Digest realm of every user (default: each AOR's host)", "REALM"},
    {"may-generate", 0, 0, G_OPTION_ARG_NONE, &opt.may_generate,
     "Allow the users to have the server generate a credential", NULL},
    {NULL},
};

static const GOptionEntry cli_user_passwd_entries[] = {
    {"password-file", 0, 0, G_OPTION_ARG_FILENAME, &opt.password_file,
     "Read the password from the first line of FILE (default: prompt, or standard input)", "FILE"},
    {NULL},
};

static const GOptionEntry cli_cred_generate_entries[] = {
    {"days", 0, 0, G_OPTION_ARG_INT, &opt.days,
     "Validity in days, 1 to 365, less a random 0-10 % (default 365)", "N"},
    {"bits", 0, 0, G_OPTION_ARG_INT, &opt.bits, "RSA key size: 2048 (default) or 3072", "BITS"},
    {NULL},
};

static const GOptionEntry cli_cred_import_entries[] = {
    {"cert", 0, 0, G_OPTION_ARG_FILENAME, &opt.cert, "The certificate (PEM or DER)", "FILE"},
    {"key", 0, 0, G_OPTION_ARG_FILENAME, &opt.key,
     "Its unencrypted private key (PEM or DER), stored server-held under the master key", "FILE"},
    {"pkcs8", 0, 0, G_OPTION_ARG_FILENAME, &opt.pkcs8,
     "Its private key as encrypted PKCS#8 (PBES2; PEM or DER), stored as given", "FILE"},
    {NULL},
};

static const GOptionEntry cli_cred_export_entries[] = {
    {"pem", 0, 0, G_OPTION_ARG_NONE, &opt.pem, "Write PEM instead of DER", NULL},
    {NULL},
};

static const GOptionEntry cli_identity_verify_entries[] = {
    {"cert", 0, 0, G_OPTION_ARG_FILENAME, &opt.cert, "The domain certificate (PEM or DER)",
     "FILE"},
    {"window", 0, 0, G_OPTION_ARG_INT, &opt.window,
     "Seconds the Date may differ from now (default 600)", "N"},
    {NULL},
};

static const GOptionEntry cli_stats_entries[] = {
    {"socket", 0, 0, G_OPTION_ARG_FILENAME, &cli_stats_opt.socket,
     "The daemon's control socket (default: [server] control-socket)", "PATH"},
    {"prometheus", 0, 0, G_OPTION_ARG_NONE, &cli_stats_opt.prometheus,
     "Print the Prometheus text format as served, HELP and TYPE lines included", NULL},
    {NULL},
};

static const GOptionEntry cli_ca_init_entries[] = {
    {"cn", 0, 0, G_OPTION_ARG_STRING, &cli_ca_opt.cn,
     "Common name of the CA (default \"" IDENT_CA_DEFAULT_CN "\")", "NAME"},
    {"days", 0, 0, G_OPTION_ARG_INT, &cli_ca_opt.days,
     "Validity in days (default 3650; 0: already expired)", "N"},
    {"force", 0, 0, G_OPTION_ARG_NONE, &cli_ca_opt.force,
     "Replace an existing CA (and forget what it issued)", NULL},
    {NULL},
};

static const GOptionEntry cli_ca_issue_entries[] = {
    {"ca", 0, 0, G_OPTION_ARG_FILENAME, &cli_ca_opt.ca_dir, "The CA directory", "DIR"},
    {"days", 0, 0, G_OPTION_ARG_INT, &cli_ca_opt.days,
     "Validity in days (default 365; 0: already expired)", "N"},
    {"no-eku", 0, 0, G_OPTION_ARG_NONE, &cli_ca_opt.no_eku,
     "Leave out the extendedKeyUsage (sec-flows Appendix B.2)", NULL},
    {"out", 0, 0, G_OPTION_ARG_FILENAME, &cli_ca_opt.out_dir,
     "Write the files to DIR (default: the CA directory)", "DIR"},
    {"password-file", 0, 0, G_OPTION_ARG_FILENAME, &opt.password_file,
     "Protect the .p8 and .p12 with the first line of FILE (default: \"password\")", "FILE"},
    {"force", 0, 0, G_OPTION_ARG_NONE, &cli_ca_opt.force, "Replace existing files", NULL},
    {NULL},
};

static const GOptionEntry cli_ca_revoke_entries[] = {
    {"ca", 0, 0, G_OPTION_ARG_FILENAME, &cli_ca_opt.ca_dir, "The CA directory", "DIR"},
    {NULL},
};

static const GOptionEntry cli_ca_crl_entries[] = {
    {"ca", 0, 0, G_OPTION_ARG_FILENAME, &cli_ca_opt.ca_dir, "The CA directory", "DIR"},
    {"days", 0, 0, G_OPTION_ARG_INT, &cli_ca_opt.days,
     "Days until nextUpdate (default 30; 0: already stale)", "N"},
    {NULL},
};

typedef int (*CliCommandFunc)(Cli *cli, char **args, guint n_args);

typedef struct {
  const char *group; /* NULL for a verb of its own */
  const char *name;
  const char *args; /* for the command's own --help */
  guint min_args, max_args;
  const char *synopsis; /* with its options, for 'sipcred --help' */
  const char *summary;
  const GOptionEntry *entries;
  CliCommandFunc func;
  gboolean hidden; /* an old name, kept working */
} CliCommand;

static const CliCommand cli_commands[] = {
    {NULL, "keygen", "[FILE]", 0, 1, "[FILE]",
     "Create a master key file: 32 random bytes, mode 0600, never overwritten", NULL, cli_keygen},
    {"user", "add", "AOR", 1, 1, "AOR [--password-file FILE] [--realm REALM] [--may-generate]",
     "Create or replace a user", cli_user_add_entries, cli_user_add},
    {"user", "import", "FILE", 1, 1, "FILE [--realm REALM] [--may-generate]",
     "Create or replace the users of FILE (\"AOR PASSWORD\" per line, mode 0600)",
     cli_user_import_entries, cli_user_import},
    {"user", "passwd", "AOR", 1, 1, "AOR [--password-file FILE]", "Change the password of a user",
     cli_user_passwd_entries, cli_user_passwd},
    {"user", "del", "AOR", 1, 1, "AOR", "Remove a user", NULL, cli_user_del},
    {"user", "delete", "AOR", 1, 1, "AOR", "Remove a user", NULL, cli_user_del, TRUE},
    {"user", "list", "", 0, 0, "", "List the users, their realm and flags", NULL, cli_user_list},
    {"cred", "generate", "AOR", 1, 1, "AOR [--days N] [--bits 2048|3072]",
     "Make an RSA key (server-held) and a self-signed certificate", cli_cred_generate_entries,
     cli_cred_generate},
    {"cred", "import", "AOR [FILE]", 1, 2, "AOR --cert FILE [--key FILE | --pkcs8 FILE]",
     "Check and store a certificate, with its private key if given", cli_cred_import_entries,
     cli_cred_import},
    {"cred", "show", "AOR", 1, 1, "AOR", "Print subject, SANs, validity, fingerprint and key kind",
     NULL, cli_cred_show},
    {"cred", "list", "", 0, 0, "", "List the AORs that have a credential", NULL, cli_cred_list},
    {"cred", "export", "AOR [FILE]", 1, 2, "AOR [FILE] [--pem]",
     "Write the certificate to FILE or standard output", cli_cred_export_entries, cli_cred_export},
    {"cred", "revoke", "AOR", 1, 1, "AOR",
     "Remove the credential; subscribers get an empty NOTIFY", NULL, cli_cred_revoke},
    {"cred", "delete", "AOR", 1, 1, "AOR", "Remove the credential", NULL, cli_cred_revoke, TRUE},
    {"identity", "verify", "[FILE]", 0, 1, "[FILE|-] --cert FILE [--window N]",
     "Check the RFC 4474 Identity of a SIP message against a domain certificate",
     cli_identity_verify_entries, cli_identity_verify},
    {"db", "backup", "FILE", 1, 1, "FILE", "Write a consistent, compacted copy of the store", NULL,
     cli_db_backup},
    {"db", "check", "", 0, 0, "", "Read and decode every record", NULL, cli_db_check},
    {"db", "stats", "", 0, 0, "", "Print sizes and record counts", NULL, cli_db_stats},
    {"db", "rekey", "NEW_KEY_FILE", 1, 1, "NEW_KEY_FILE",
     "Re-wrap every server-held key under a new master key", NULL, cli_db_rekey},
    {NULL, "stats", "", 0, 0, "[--socket PATH] [--prometheus]",
     "Print the running daemon's counters (subscriptions, NOTIFYs, TLS, digest, answers)",
     cli_stats_entries, cli_stats},
    {"ca", "init", "DIR", 1, 1, "DIR [--cn NAME] [--days N] [--force]",
     "Create a test CA (RSA 2048, self-signed) in DIR", cli_ca_init_entries, cli_ca_init},
    {"ca", "issue", "host DOMAIN | user AOR", 2, 2,
     "host DOMAIN|user AOR --ca DIR [--days N] [--no-eku] [--out DIR] [--password-file FILE] "
     "[--force]",
     "Issue a test certificate as PEM, DER, PKCS#8 and PKCS#12", cli_ca_issue_entries,
     cli_ca_issue},
    {"ca", "revoke", "NAME|FILE", 1, 1, "NAME|FILE --ca DIR",
     "Record a certificate of the test CA as revoked", cli_ca_revoke_entries, cli_ca_revoke},
    {"ca", "crl", "", 0, 0, "--ca DIR [--days N]", "Write the test CA's CRL (ca.crl, ca.crl.der)",
     cli_ca_crl_entries, cli_ca_crl},
    {NULL, "fetch", "AOR", 1, 1,
     "AOR --ca FILE [--server HOST[:PORT]] [--crl FILE] [--der FILE] [--watch] [--timeout N]",
     "Subscribe to AOR's certificate; accept it after RFC 6072 10.3 (From, Identity, validity)",
     cli_client_fetch_entries, cli_client_fetch},
    {NULL, "publish", "AOR", 1, 1,
     "AOR --ca FILE [--server HOST[:PORT]] [--user AOR] [--password-file FILE] [--cert FILE "
     "--key FILE] [--cert-only] [--passphrase-file FILE]",
     "PUBLISH AOR's certificate and passphrase-encrypted key (generated unless given)",
     cli_client_publish_entries, cli_client_publish},
    {NULL, "revoke", "AOR", 1, 1,
     "AOR --ca FILE [--server HOST[:PORT]] [--user AOR] [--password-file FILE]",
     "Remove AOR's published credential (PUBLISH with Expires: 0)", cli_client_revoke_entries,
     cli_client_revoke},
    {NULL, "retrieve", "AOR", 1, 1,
     "AOR --ca FILE [--server HOST[:PORT]] [--user AOR] [--password-file FILE] "
     "[--passphrase-file FILE] [--key-out FILE]",
     "Subscribe to AOR's credential and decrypt its private key with the passphrase",
     cli_client_retrieve_entries, cli_client_retrieve},
};

static char *
cli_command_title(const CliCommand *cmd)
{
  if (cmd->group == NULL)
    return g_strdup(cmd->name);
  return g_strdup_printf("%s %s", cmd->group, cmd->name);
}

/* The command list for 'sipcred --help'. */
static char *
cli_commands_text(void)
{
  GString *out = g_string_new("Commands:\n");

  for (guint i = 0; i < G_N_ELEMENTS(cli_commands); i++) {
    const CliCommand *cmd = &cli_commands[i];
    g_autofree char *title = NULL;
    g_autofree char *usage = NULL;

    if (cmd->hidden)
      continue;
    title = cli_command_title(cmd);
    usage = g_strdup_printf("%s %s", title, cmd->synopsis);
    g_string_append_printf(out, "  %s\n      %s\n", g_strstrip(usage), cmd->summary);
  }
  g_string_append(
      out, "\nEvery command takes -c/--config FILE, -s/--state-dir DIR and\n"
           "-k/--master-key FILE, before or after it; 'sipcred COMMAND --help'\n"
           "shows its own options. Without --state-dir, the store, the served\n"
           "domains and the master key come from the configuration (default\n" CLI_DEFAULT_CONFIG
           ").\n\n");
  g_string_append(out, cli_exit_text);
  return g_string_free(out, FALSE);
}

static const CliCommand *
cli_command_find(int argc, char **argv, int *consumed)
{
  for (guint i = 0; i < G_N_ELEMENTS(cli_commands); i++) {
    const CliCommand *cmd = &cli_commands[i];

    if (cmd->group == NULL && g_str_equal(argv[0], cmd->name)) {
      *consumed = 1;
      return cmd;
    }
    if (cmd->group != NULL && argc >= 2 && g_str_equal(argv[0], cmd->group) &&
        g_str_equal(argv[1], cmd->name)) {
      *consumed = 2;
      return cmd;
    }
  }
  return NULL;
}

static gboolean
cli_is_group(const char *word)
{
  for (guint i = 0; i < G_N_ELEMENTS(cli_commands); i++)
    if (cli_commands[i].group != NULL && g_str_equal(word, cli_commands[i].group))
      return TRUE;
  return FALSE;
}

static char *
cli_group_names(const char *group)
{
  GString *out = g_string_new(NULL);

  for (guint i = 0; i < G_N_ELEMENTS(cli_commands); i++)
    if (!cli_commands[i].hidden && g_strcmp0(cli_commands[i].group, group) == 0)
      g_string_append_printf(out, "%s%s", out->len > 0 ? ", " : "", cli_commands[i].name);
  return g_string_free(out, FALSE);
}

static void
cli_common_take(char **dest, char **src)
{
  if (*src != NULL) {
    g_free(*dest);
    *dest = g_steal_pointer(src);
  }
}

/* Parses the command's own options and arguments (@argv[0] is the command
 * name) and runs it. */
static int
cli_run(Cli *cli, const CliCommand *cmd, int argc, char **argv)
{
  g_autofree char *title = cli_command_title(cmd);
  g_autofree char *param = g_strdup_printf("%s %s", title, cmd->args);
  g_autoptr(GOptionContext) ctx = g_option_context_new(param);
  g_autoptr(GError) error = NULL;
  g_autofree char **args = g_new0(char *, argc + 1);
  CliCommon local = {0};
  int nargs = argc;
  guint n_pos;
  char **pos;

  memcpy(args, argv, sizeof(char *) * argc);
  g_option_context_set_summary(ctx, cmd->summary);
  g_option_context_set_description(ctx, cli_exit_text);
  cli_common_add_entries(ctx, &local, FALSE, NULL);
  if (cmd->entries != NULL)
    g_option_context_add_main_entries(ctx, cmd->entries, NULL);
  if (!g_option_context_parse(ctx, &nargs, &args, &error)) {
    cli_common_clear(&local);
    return cli_usage(error->message);
  }
  /* After the command wins over before it. */
  cli_common_take(&cli->common.config_file, &local.config_file);
  cli_common_take(&cli->common.state_dir, &local.state_dir);
  cli_common_take(&cli->common.master_key, &local.master_key);

  pos = args + 1;
  n_pos = (guint)(nargs - 1);
  if (n_pos > 0 && g_str_equal(pos[0], "--")) {
    pos++;
    n_pos--;
  }
  if (n_pos < cmd->min_args || n_pos > cmd->max_args) {
    g_autofree char *why = g_strdup_printf("usage: sipcred %s %s", title, cmd->args);
    return cli_usage(g_strchomp(why));
  }
  return cmd->func(cli, pos, n_pos);
}

/* The store's own messages (a first master key recorded, a re-key) read
 * like the CLI's; criticals and debug output keep GLib's handling. */
static GLogWriterOutput
cli_log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  const char *message = NULL;

  if ((level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_WARNING)) == 0)
    return g_log_writer_default(level, fields, n_fields, user_data);
  for (gsize i = 0; i < n_fields; i++)
    if (g_str_equal(fields[i].key, "MESSAGE") && fields[i].length < 0)
      message = fields[i].value;
  if (message == NULL)
    return g_log_writer_default(level, fields, n_fields, user_data);
  g_printerr("sipcred: %s%s\n", (level & G_LOG_LEVEL_WARNING) ? "warning: " : "", message);
  return G_LOG_WRITER_HANDLED;
}

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *commands = cli_commands_text();
  const CliCommand *cmd;
  gboolean version = FALSE;
  Cli cli = {0};
  int consumed = 0;
  int status;

  setlocale(LC_ALL, "");
  g_log_set_writer_func(cli_log_writer, NULL, NULL);
  ctx = g_option_context_new("COMMAND [ARGUMENTS] - manage the sipcred store");
  cli_common_add_entries(ctx, &cli.common, TRUE, &version);
  g_option_context_set_description(ctx, commands);
  /* Options after the command belong to the command. */
  g_option_context_set_strict_posix(ctx, TRUE);
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    cli_common_clear(&cli.common);
    return cli_usage(error->message);
  }
  if (version) {
    g_print("sipcred %s\n", SIPCRED_VERSION);
    cli_common_clear(&cli.common);
    return CLI_EXIT_OK;
  }
  if (argc >= 2 && g_str_equal(argv[1], "--")) {
    argc--;
    argv++;
  }
  if (argc < 2) {
    cli_common_clear(&cli.common);
    return cli_usage("no command given");
  }
  cmd = cli_command_find(argc - 1, argv + 1, &consumed);
  if (cmd == NULL) {
    g_autofree char *why = NULL;

    cli_common_clear(&cli.common);
    if (cli_is_group(argv[1])) {
      g_autofree char *names = cli_group_names(argv[1]);
      why = argc < 3 ? g_strdup_printf("'%s' needs a subcommand: %s", argv[1], names)
                     : g_strdup_printf("unknown command '%s %s' (%s has: %s)", argv[1], argv[2],
                                       argv[1], names);
    } else {
      why = g_strdup_printf("unknown command '%s'", argv[1]);
    }
    return cli_usage(why);
  }
  /* The command's own parser sees "sipcred" and what follows the command. */
  argv[consumed] = argv[0];
  status = cli_run(&cli, cmd, argc - consumed, argv + consumed);
  cli_clear(&cli);
  cli_opt_clear();
  return status;
}
