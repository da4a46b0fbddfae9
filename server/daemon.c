/* sipcredd: the SIP credential service daemon. Wires the store, the core,
 * nua and the TLS edge together on one GLib main loop. */
#define G_LOG_DOMAIN "sipcred-daemon"

#include <gio/gio.h>
#include <glib-unix.h>
#include <glib.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "core/core.h"
#include "server/changes.h"
#include "server/config.h"
#include "server/edge.h"
#include "server/infoserver.h"
#include "server/nua-adapter.h"
#include "sipcred-config.h"
#include "storage/store.h"

typedef struct {
  char *config_path;
  SrvConfig *cfg;
  GMainLoop *loop;
  Edge *edge;
  InfoServer *info; /* the built-in Identity-Info endpoint, or NULL */
  gboolean verbose;
} Daemon;

static gboolean log_verbose;

/* domain -> the Identity-Info URL of its certificate: the operator's, with
 * "{domain}" replaced, or else the built-in endpoint's, which this starts. */
static GHashTable *
daemon_identity_urls(Daemon *d, const SrvConfig *cfg, GError **error)
{
  if (cfg->identity_info_url == NULL) {
    g_autoptr(InfoServer) info = info_server_new(cfg, error);
    if (info == NULL || !info_server_start(info, error))
      return NULL;
    d->info = g_steal_pointer(&info);
    return info_server_dup_urls(d->info);
  }
  g_autoptr(GHashTable) urls = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  for (guint i = 0; cfg->domains[i] != NULL; i++) {
    const char *domain = cfg->domains[i];
    g_auto(GStrv) parts = g_strsplit(cfg->identity_info_url, "{domain}", -1);
    g_hash_table_insert(urls, g_strdup(domain), g_strjoinv(domain, parts));
  }
  return g_steal_pointer(&urls);
}

/* Service output goes to stderr (journald adds its own timestamps); info
 * only with --verbose, debug through G_MESSAGES_DEBUG as usual in GLib. */
static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  const char *domain = NULL, *message = NULL;
  for (gsize i = 0; i < n_fields; i++) {
    if (g_str_equal(fields[i].key, "GLIB_DOMAIN"))
      domain = fields[i].value;
    else if (g_str_equal(fields[i].key, "MESSAGE"))
      message = fields[i].value;
  }
  gboolean asked = !g_log_writer_default_would_drop(level, domain); /* G_MESSAGES_DEBUG */
  if ((level & G_LOG_LEVEL_DEBUG) && !asked)
    return G_LOG_WRITER_HANDLED;
  if ((level & G_LOG_LEVEL_INFO) && !log_verbose && !asked)
    return G_LOG_WRITER_HANDLED;

  const char *tag = "";
  if (level & G_LOG_LEVEL_ERROR)
    tag = "error: ";
  else if (level & G_LOG_LEVEL_CRITICAL)
    tag = "critical: ";
  else if (level & G_LOG_LEVEL_WARNING)
    tag = "warning: ";
  else if (level & G_LOG_LEVEL_DEBUG)
    tag = "debug: ";
  fprintf(stderr, "sipcredd: %s%s%s%s\n", tag, domain ? domain : "", domain ? ": " : "",
          message ? message : "");
  fflush(stderr);
  return G_LOG_WRITER_HANDLED;
}

static gboolean
on_terminate(gpointer user_data)
{
  Daemon *d = user_data;
  g_message("shutting down");
  g_main_loop_quit(d->loop);
  return G_SOURCE_CONTINUE;
}

/* SIGHUP: re-read the configuration and swap in new TLS certificates and
 * keys. Existing connections keep theirs. Other settings need a restart. */
static gboolean
on_reload(gpointer user_data)
{
  Daemon *d = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(SrvConfig) fresh = srv_config_load(d->config_path, &error);
  if (fresh == NULL || !edge_reload_credentials(d->edge, fresh, &error) ||
      (d->info != NULL && !info_server_reload(d->info, fresh, &error))) {
    g_warning("reload failed, keeping the running configuration: %s", error->message);
    return G_SOURCE_CONTINUE;
  }
  g_message("reloaded TLS certificates and keys from %s", d->config_path);
  return G_SOURCE_CONTINUE;
}

static int
run(Daemon *d)
{
  g_autoptr(GError) error = NULL;
  SrvConfig *cfg = d->cfg;

  g_autoptr(StoreDb) store = store_db_open(cfg->state_dir, cfg->map_size, &error);
  if (store == NULL) {
    g_printerr("sipcredd: cannot open the store in %s: %s\n", cfg->state_dir, error->message);
    return 1;
  }
  if (cfg->master_key != NULL) {
    g_autoptr(StoreMasterKey) key = store_master_key_load(cfg->master_key, &error);
    if (key == NULL || !store_db_set_master_key(store, key, &error)) {
      g_printerr("sipcredd: %s\n", error->message);
      return 1;
    }
  }
  g_autoptr(Edge) edge = edge_new(cfg, &error);
  if (edge == NULL) {
    g_printerr("sipcredd: %s\n", error->message);
    return 1;
  }
  if (cfg->identity_enabled) {
    g_autoptr(GHashTable) urls = daemon_identity_urls(d, cfg, &error);
    if (urls == NULL || !edge_enable_identity(edge, cfg, urls, &error)) {
      g_printerr("sipcredd: [identity]: %s\n", error->message);
      return 1;
    }
  }
  g_autoptr(NuaAdapter) nua = nua_adapter_new(cfg, &error);
  if (nua == NULL) {
    g_printerr("sipcredd: %s\n", error->message);
    return 1;
  }
  g_autoptr(CoreService) core =
      core_service_new(&cfg->core, store, nua_adapter_get_core_port(), nua);
  nua_adapter_set_edge(nua, edge);
  nua_adapter_attach_core(nua, core);
  /* Admin changes (sipcred, another process) reach subscribers through the
   * store's change log; polling it is one cheap read transaction. */
  g_autoptr(SrvChangeTail) changes = srv_change_tail_new(store, core, 1000);
  if (!edge_start(edge, nua_adapter_get_port(nua), &error)) {
    g_printerr("sipcredd: %s\n", error->message);
    return 1;
  }
  d->edge = edge;

  d->loop = g_main_loop_new(NULL, FALSE);
  guint sig_term = g_unix_signal_add(SIGTERM, on_terminate, d);
  guint sig_int = g_unix_signal_add(SIGINT, on_terminate, d);
  guint sig_hup = g_unix_signal_add(SIGHUP, on_reload, d);

  g_autofree char *domains = g_strjoinv(", ", cfg->domains);
  g_autofree char *listen = g_strjoinv(", ", cfg->listen);
  g_message("ready: serving %s on %s (TLS), store %s", domains, listen, cfg->state_dir);
  g_main_loop_run(d->loop);

  /* Subscribers get their terminating NOTIFYs through the edge, so nua
   * shuts down first, within a bound, and the edge closes afterwards. */
  g_clear_pointer(&changes, srv_change_tail_free);
  nua_adapter_shutdown(nua, cfg->shutdown_timeout_ms);
  edge_stop(edge);
  g_source_remove(sig_term);
  g_source_remove(sig_int);
  g_source_remove(sig_hup);
  d->edge = NULL;
  g_clear_pointer(&d->info, info_server_free);
  g_clear_pointer(&d->loop, g_main_loop_unref);
  g_message("stopped");
  return 0;
}

int
main(int argc, char **argv)
{
  g_autofree char *config_path = NULL;
  gboolean check_config = FALSE, verbose = FALSE, version = FALSE;
  GOptionEntry entries[] = {
    {"config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
     "Configuration file (default " SIPCRED_SYSCONFDIR "/sipcred/sipcredd.conf)", "FILE"},
    {"check-config", 0, 0, G_OPTION_ARG_NONE, &check_config,
     "Validate the configuration, certificates and keys, then exit", NULL},
    {"verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Log info messages too", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL},
    {NULL},
  };

  setlocale(LC_ALL, "");
  signal(SIGPIPE, SIG_IGN);
  g_autoptr(GOptionContext) ctx = g_option_context_new("- SIP credential service");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    g_printerr("sipcredd: %s\n", error->message);
    return 2;
  }
  if (version) {
    printf("sipcredd %s\n", SIPCRED_VERSION);
    return 0;
  }
  if (config_path == NULL)
    config_path = g_strdup(SIPCRED_SYSCONFDIR "/sipcred/sipcredd.conf");

  g_log_set_writer_func(log_writer, NULL, NULL);
  g_autoptr(SrvConfig) cfg = srv_config_load(config_path, &error);
  if (cfg == NULL) {
    g_printerr("sipcredd: %s\n", error->message);
    return 1;
  }
  log_verbose = verbose || cfg->verbose;

  if (check_config) {
    /* The edge loads every certificate and key and checks the TLS policy. */
    g_autoptr(Edge) edge = edge_new(cfg, &error);
    if (edge == NULL) {
      g_printerr("sipcredd: %s: %s\n", cfg->path, error->message);
      return 1;
    }
    /* Mode and size only: whether it is the store's key needs the store. */
    if (cfg->master_key != NULL) {
      g_autoptr(StoreMasterKey) key = store_master_key_load(cfg->master_key, &error);
      if (key == NULL) {
        g_printerr("sipcredd: %s: [store] master-key: %s\n", cfg->path, error->message);
        return 1;
      }
    }
    printf("%s: configuration OK\n", cfg->path);
    return 0;
  }

  Daemon d = {.config_path = config_path, .cfg = cfg, .verbose = log_verbose};
  return run(&d);
}
