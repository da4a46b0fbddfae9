/* sipcred: the administration CLI. It opens the same LMDB store as the
 * daemon (both may run at once) and never prints key material, passwords
 * or HA1 values. Exit status: 0 success, 1 failure, 2 usage error. */
#define G_LOG_DOMAIN "sipcred-cli"

#include <errno.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <glib.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "core/core.h"
#include "identity/cert.h"
#include "server/config.h"
#include "sipcred-config.h"
#include "storage/store.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

#define CLI_DEFAULT_CONFIG SIPCRED_SYSCONFDIR "/sipcred/sipcredd.conf"
#define CLI_PASSWORD_MAX 4096
#define CLI_CERT_FILE_MAX (1024 * 1024)

typedef struct {
  SrvConfig *cfg; /* NULL with --state-dir alone */
  char *state_dir;
  guint64 map_size;
  StoreDb *db; /* opened on first use */
} Cli;

typedef int (*CliCommandFunc)(Cli *cli, int argc, char **argv);

static const char *cli_usage_text =
    "Commands:\n"
    "  cred import AOR FILE     check and store the certificate in FILE (PEM or DER)\n"
    "  cred show AOR            version, ETag, validity and fingerprint\n"
    "  cred list                AORs that have a certificate\n"
    "  cred delete AOR          remove the certificate of AOR\n"
    "  cred export AOR FILE     write the stored DER to FILE ('-' for stdout)\n"
    "  user add AOR [--password-file FILE] [--realm REALM] [--may-generate]\n"
    "                           create or replace a user; the password is the first\n"
    "                           line of FILE, or of standard input\n"
    "  user list                users, their realm and flags\n"
    "  user delete AOR          remove a user\n"
    "\n"
    "Without --state-dir, the store and the served domains come from the\n"
    "configuration file (default " CLI_DEFAULT_CONFIG ").";

static int
cli_fail(const char *what, const char *why)
{
  g_printerr("sipcred: %s: %s\n", what, why);
  return CLI_EXIT_FAIL;
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
}

static StoreDb *
cli_store(Cli *cli)
{
  g_autoptr(GError) error = NULL;

  if (cli->db == NULL) {
    cli->db = store_db_open(cli->state_dir, cli->map_size, &error);
    if (cli->db == NULL)
      cli_fail(cli->state_dir, error->message);
  }
  return cli->db;
}

/* The canonical AOR, restricted to the served domains when a configuration
 * is loaded. Prints the failure. */
static char *
cli_aor(Cli *cli, const char *arg)
{
  g_autoptr(GError) error = NULL;
  char *aor;

  if (cli->cfg != NULL)
    aor = core_aor_canonicalize_served((const char *const *)cli->cfg->domains, arg, &error);
  else
    aor = core_aor_canonicalize(arg, &error);
  if (aor == NULL)
    cli_fail(arg, error->message);
  return aor;
}

static char *
cli_format_time(gint64 t)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);

  if (dt == NULL)
    return g_strdup_printf("%" G_GINT64_FORMAT, t);
  return g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ");
}

static char *
cli_hex(const guint8 *data, gsize len, gboolean colons)
{
  GString *out = g_string_sized_new(len * 3);

  for (gsize i = 0; i < len; i++) {
    if (colons && i > 0)
      g_string_append_c(out, ':');
    g_string_append_printf(out, colons ? "%02X" : "%02x", data[i]);
  }
  return g_string_free(out, FALSE);
}

static char *
cli_fingerprint(GBytes *der)
{
  guint8 digest[32];
  gsize len = 0;
  const void *data = g_bytes_get_data(der, &len);

  if (gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, digest) < 0)
    return g_strdup("(unavailable)");
  return cli_hex(digest, sizeof digest, TRUE);
}

static void
cli_print_cred(const StoreCred *cred)
{
  g_autofree char *nb = cli_format_time(cred->not_before);
  g_autofree char *na = cli_format_time(cred->not_after);
  g_autofree char *updated = cli_format_time(cred->updated);
  g_autofree char *fp = cli_fingerprint(cred->cert_der);

  g_print("aor: %s\n", cred->aor);
  g_print("version: %" G_GUINT64_FORMAT "\n", cred->version);
  g_print("etag: %s\n", cred->etag);
  g_print("not-before: %s\n", nb);
  g_print("not-after: %s\n", na);
  g_print("updated: %s\n", updated);
  g_print("size: %" G_GSIZE_FORMAT " bytes\n", g_bytes_get_size(cred->cert_der));
  g_print("sha256-fingerprint: %s\n", fp);
}

/* ---- cred ---- */

static int
cli_cred_import(Cli *cli, int argc, char **argv)
{
  g_autofree char *aor = NULL;
  g_autofree char *contents = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(StoreCred) stored = NULL;
  g_autoptr(GError) error = NULL;
  const char *file = argv[1];
  gsize len = 0;
  StoreDb *db;

  aor = cli_aor(cli, argv[0]);
  if (aor == NULL)
    return CLI_EXIT_FAIL;
  if (!g_file_get_contents(file, &contents, &len, &error))
    return cli_fail("reading the certificate", error->message);
  if (len > CLI_CERT_FILE_MAX)
    return cli_fail(file, "too large for a certificate");
  cert = ident_cert_new_from_data((const guint8 *)contents, len, &error);
  if (cert == NULL)
    return cli_fail(file, error->message);
  if (!ident_cert_check_user_profile(cert, aor, g_get_real_time() / G_USEC_PER_SEC, &error)) {
    g_prefix_error(&error, "certificate refused for %s: ", aor);
    return cli_fail(file, error->message);
  }
  db = cli_store(cli);
  if (db == NULL)
    return CLI_EXIT_FAIL;
  if (!store_cred_put_cert(db, aor, ident_cert_get_der(cert), ident_cert_get_not_before(cert),
                           ident_cert_get_not_after(cert), &error))
    return cli_fail(aor, error->message);
  stored = store_cred_get(db, aor, &error);
  if (stored == NULL)
    return cli_fail(aor, error->message);
  g_print("imported certificate of %s\n", aor);
  cli_print_cred(stored);
  return CLI_EXIT_OK;
}

static int
cli_cred_show(Cli *cli, int argc, char **argv)
{
  g_autofree char *aor = cli_aor(cli, argv[0]);
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
cli_cred_list(Cli *cli, int argc, char **argv)
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
cli_cred_delete(Cli *cli, int argc, char **argv)
{
  g_autofree char *aor = cli_aor(cli, argv[0]);
  g_autoptr(GError) error = NULL;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_cred_delete(cli->db, aor, &error))
    return cli_fail(aor, error->message);
  g_print("deleted certificate of %s\n", aor);
  return CLI_EXIT_OK;
}

static int
cli_cred_export(Cli *cli, int argc, char **argv)
{
  g_autofree char *aor = cli_aor(cli, argv[0]);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  const char *file = argv[1];
  gsize len = 0;
  const char *data;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  cred = store_cred_get(cli->db, aor, &error);
  if (cred == NULL)
    return cli_fail(aor, error->message);
  data = g_bytes_get_data(cred->cert_der, &len);
  if (g_str_equal(file, "-")) {
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
      return cli_fail("standard output", g_strerror(errno));
    return CLI_EXIT_OK;
  }
  if (!g_file_set_contents(file, data, (gssize)len, &error))
    return cli_fail(file, error->message);
  g_printerr("wrote %" G_GSIZE_FORMAT " bytes of DER to %s\n", len, file);
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
  hex = cli_hex(digest, len, FALSE);
  explicit_bzero(digest, sizeof digest);
  return hex;
}

static int
cli_user_add(Cli *cli, int argc, char **argv)
{
  g_autofree char *password_file = NULL;
  g_autofree char *realm = NULL;
  gboolean may_generate = FALSE;
  GOptionEntry entries[] = {
      {"password-file", 0, 0, G_OPTION_ARG_FILENAME, &password_file,
       "Read the password from the first line of FILE", "FILE"},
      {"realm", 0, 0, G_OPTION_ARG_STRING, &realm, "Digest realm (default: the AOR's host)",
       "REALM"},
      {"may-generate", 0, 0, G_OPTION_ARG_NONE, &may_generate,
       "Allow the user to have the server generate a credential", NULL},
      {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("AOR - add or replace a user");
  g_autoptr(GError) error = NULL;
  g_autoptr(CliSecret) password = NULL;
  g_autoptr(CliSecret) ha1_sha256 = NULL;
  g_autoptr(CliSecret) ha1_md5 = NULL;
  g_autoptr(StoreUser) old = NULL;
  g_autofree char *aor = NULL;
  g_autofree char *username = NULL;
  const char *at;
  StoreUser user;
  /* GOptionContext wants a program name first. */
  g_autofree char **args = g_new0(char *, argc + 2);
  int nargs = argc + 1;

  args[0] = (char *)"sipcred user add";
  memcpy(args + 1, argv, sizeof(char *) * argc);
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_set_help_enabled(ctx, TRUE);
  if (!g_option_context_parse(ctx, &nargs, &args, &error))
    return cli_usage(error->message);
  if (nargs != 2)
    return cli_usage("user add needs exactly one AOR");

  aor = cli_aor(cli, args[1]);
  if (aor == NULL)
    return CLI_EXIT_FAIL;
  /* Canonical "sip:user@host" with no raw '@' in the user part. */
  at = strchr(aor, '@');
  username = g_strndup(aor + 4, at - (aor + 4));
  if (realm == NULL)
    realm = g_strdup(at + 1);

  password = cli_get_password(password_file, aor, &error);
  if (password == NULL)
    return cli_fail("reading the password", error->message);
  if (*password == '\0')
    return cli_fail("reading the password", "the password is empty");

  ha1_sha256 = cli_ha1(GNUTLS_DIG_SHA256, username, realm, password);
  ha1_md5 = cli_ha1(GNUTLS_DIG_MD5, username, realm, password);
  if (ha1_sha256 == NULL || ha1_md5 == NULL)
    return cli_fail(aor, "cannot compute the digest secrets");

  if (cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  old = store_user_get(cli->db, aor, NULL);
  user = (StoreUser){
      .aor = aor,
      .realm = realm,
      .ha1_sha256 = ha1_sha256,
      .ha1_md5 = ha1_md5,
      .flags = STORE_USER_ENABLED | (may_generate ? STORE_USER_MAY_GENERATE : 0),
  };
  if (!store_user_put(cli->db, &user, &error))
    return cli_fail(aor, error->message);
  g_print("%s user %s (digest username %s, realm %s%s)\n", old != NULL ? "replaced" : "added", aor,
          username, realm, may_generate ? ", may generate credentials" : "");
  return CLI_EXIT_OK;
}

static int
cli_user_list(Cli *cli, int argc, char **argv)
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
cli_user_delete(Cli *cli, int argc, char **argv)
{
  g_autofree char *aor = cli_aor(cli, argv[0]);
  g_autoptr(GError) error = NULL;

  if (aor == NULL || cli_store(cli) == NULL)
    return CLI_EXIT_FAIL;
  if (!store_user_delete(cli->db, aor, &error))
    return cli_fail(aor, error->message);
  g_print("deleted user %s\n", aor);
  return CLI_EXIT_OK;
}

/* ---- main ---- */

/* argc -1: the command parses its own options and arguments. */
static const struct {
  const char *group;
  const char *name;
  int argc;
  const char *args;
  CliCommandFunc func;
} cli_commands[] = {
    {"cred", "import", 2, "AOR FILE", cli_cred_import},
    {"cred", "show", 1, "AOR", cli_cred_show},
    {"cred", "list", 0, "", cli_cred_list},
    {"cred", "delete", 1, "AOR", cli_cred_delete},
    {"cred", "export", 2, "AOR FILE", cli_cred_export},
    {"user", "add", -1, "AOR [OPTIONS]", cli_user_add},
    {"user", "list", 0, "", cli_user_list},
    {"user", "delete", 1, "AOR", cli_user_delete},
};

static int
cli_run(Cli *cli, int argc, char **argv)
{
  if (argc < 2)
    return cli_usage(argc == 0 ? "no command given" : "missing subcommand");
  for (guint i = 0; i < G_N_ELEMENTS(cli_commands); i++) {
    if (!g_str_equal(argv[0], cli_commands[i].group) ||
        !g_str_equal(argv[1], cli_commands[i].name))
      continue;
    if (cli_commands[i].argc >= 0 && argc - 2 != cli_commands[i].argc) {
      g_autofree char *why = g_strdup_printf("usage: sipcred %s %s %s", cli_commands[i].group,
                                             cli_commands[i].name, cli_commands[i].args);
      return cli_usage(why);
    }
    return cli_commands[i].func(cli, argc - 2, argv + 2);
  }
  g_autofree char *why = g_strdup_printf("unknown command '%s %s'", argv[0], argv[1]);
  return cli_usage(why);
}

int
main(int argc, char **argv)
{
  g_autofree char *config_file = NULL;
  g_autofree char *state_dir = NULL;
  gboolean version = FALSE;
  GOptionEntry entries[] = {
      {"config", 'c', 0, G_OPTION_ARG_FILENAME, &config_file,
       "Configuration file (default " CLI_DEFAULT_CONFIG ")", "FILE"},
      {"state-dir", 's', 0, G_OPTION_ARG_FILENAME, &state_dir,
       "Use the store in DIR (without --config: no configuration file)", "DIR"},
      {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL},
      {NULL},
  };
  g_autoptr(GOptionContext) ctx = NULL;
  g_autoptr(GError) error = NULL;
  Cli cli = {0};
  int status;

  setlocale(LC_ALL, "");
  ctx = g_option_context_new("COMMAND [ARGUMENTS] - manage the sipcred store");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_set_description(ctx, cli_usage_text);
  /* Options after the command belong to the command. */
  g_option_context_set_strict_posix(ctx, TRUE);
  if (!g_option_context_parse(ctx, &argc, &argv, &error))
    return cli_usage(error->message);
  if (version) {
    g_print("sipcred %s\n", SIPCRED_VERSION);
    return CLI_EXIT_OK;
  }
  if (argc >= 2 && g_str_equal(argv[1], "--")) {
    argc--;
    argv++;
  }
  if (argc < 2)
    return cli_usage("no command given");

  if (state_dir == NULL || config_file != NULL) {
    const char *path = config_file != NULL ? config_file : CLI_DEFAULT_CONFIG;

    cli.cfg = srv_config_load(path, &error);
    if (cli.cfg == NULL) {
      if (config_file == NULL)
        g_prefix_error(&error, "(give --config FILE or --state-dir DIR) ");
      status = cli_fail("configuration", error->message);
      cli_clear(&cli);
      return status;
    }
    cli.map_size = cli.cfg->map_size;
  }
  cli.state_dir = g_strdup(state_dir != NULL ? state_dir : cli.cfg->state_dir);

  status = cli_run(&cli, argc - 1, argv + 1);
  cli_clear(&cli);
  return status;
}
