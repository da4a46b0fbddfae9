/* sipcredd: the SIP credential service daemon. Wires the store, the core,
 * nua and the TLS edge together on one GLib main loop. */
#define G_LOG_DOMAIN "sipcred-daemon"

#include <gio/gio.h>
#include <glib-unix.h>
#include <glib.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "identity/cert.h"
#include "server/changes.h"
#include "server/config.h"
#include "server/edge.h"
#include "server/certserver.h"
#include "server/nua-adapter.h"
#include "server/sdnotify.h"
#include "server/stats.h"
#include "sipcred-config.h"
#include "storage/store.h"

#ifdef SIPCRED_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

/* "jemalloc 5.3.0-..." or "glibc malloc": which allocator this build runs on
 * (the meson feature `jemalloc`), for --version. */
static const char *
daemon_allocator(void)
{
#ifdef SIPCRED_HAVE_JEMALLOC
  static char name[96];
  const char *v = NULL;
  size_t len = sizeof v;
  if (mallctl("version", &v, &len, NULL, 0) == 0 && v != NULL) {
    g_snprintf(name, sizeof name, "jemalloc %s", v);
    return name;
  }
  return "jemalloc";
#else
  return "glibc malloc";
#endif
}

typedef struct {
  char *config_path;
  SrvConfig *cfg;
  GMainLoop *loop;
  Edge *edge;
  CoreService *core;
  StoreDb *store;
  CertServer *certs; /* the built-in Identity-Info endpoint, or NULL */
  gboolean verbose;
} Daemon;

static gboolean log_verbose;

/* The DER of each [domain] certificate, as the endpoint serves it, in the
 * form cert_server_reload() takes. Frees with g_array_unref(). */
static void
daemon_cert_domain_clear(gpointer data)
{
  g_bytes_unref(((CertServerDomain *)data)->served_cert_der);
}

static GArray *
daemon_cert_domains(const SrvConfig *cfg, GError **error)
{
  g_autoptr(GArray) out = g_array_new(FALSE, TRUE, sizeof(CertServerDomain));
  g_array_set_clear_func(out, daemon_cert_domain_clear);
  for (guint i = 0; i < cfg->domain_certs->len; i++) {
    const SrvDomain *d = g_ptr_array_index(cfg->domain_certs, i);
    g_autofree char *pem = NULL;
    gsize len = 0;
    if (!g_file_get_contents(d->cert_file, &pem, &len, error))
      return NULL;
    g_autoptr(IdentCert) cert = ident_cert_new_from_data((const guint8 *)pem, len, error);
    if (cert == NULL)
      return NULL;
    CertServerDomain cd = {d->name, d->cert_file, d->key_file,
                           g_bytes_ref(ident_cert_get_der(cert))};
    g_array_append_val(out, cd);
  }
  return g_steal_pointer(&out);
}

/* The host of an "ADDR:PORT" / "[ADDR]:PORT" listen address. */
static char *
daemon_listen_host(const char *addr)
{
  const char *colon = strrchr(addr, ':');
  if (addr[0] == '[' && colon != NULL && colon > addr + 1 && colon[-1] == ']')
    return g_strndup(addr + 1, colon - addr - 2);
  return colon != NULL ? g_strndup(addr, colon - addr) : g_strdup(addr);
}

/* domain -> the Identity-Info URL of its certificate: the operator's, with
 * "{domain}" replaced, or else the built-in endpoint's, which this starts. */
static GHashTable *
daemon_identity_urls(Daemon *d, const SrvConfig *cfg, GError **error)
{
  g_autoptr(GHashTable) urls = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  if (cfg->identity_info_url != NULL) {
    for (guint i = 0; cfg->domains[i] != NULL; i++) {
      g_auto(GStrv) parts = g_strsplit(cfg->identity_info_url, "{domain}", -1);
      g_hash_table_insert(urls, g_strdup(cfg->domains[i]), g_strjoinv(cfg->domains[i], parts));
    }
    return g_steal_pointer(&urls);
  }
  g_autoptr(GArray) domains = daemon_cert_domains(cfg, error);
  g_autoptr(CertServer) srv = domains != NULL ? cert_server_new(error) : NULL;
  if (srv == NULL ||
      !cert_server_reload(srv, (CertServerDomain *)domains->data, domains->len, error))
    return NULL;
  for (guint i = 0; cfg->identity_https_listen[i] != NULL; i++)
    if (!cert_server_listen(srv, cfg->identity_https_listen[i], error))
      return NULL;
  /* Without public-host the URL names the listen address, which works
   * without DNS (the demo); production sets the domain's public name. */
  g_autofree char *host = cfg->identity_public_host != NULL
                              ? g_strdup(cfg->identity_public_host)
                              : daemon_listen_host(cfg->identity_https_listen[0]);
  for (guint i = 0; cfg->domains[i] != NULL; i++) {
    char *url = cert_server_url_for(srv, host, cfg->domains[i]);
    if (url == NULL) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "no Identity-Info URL for %s",
                  cfg->domains[i]);
      return NULL;
    }
    g_hash_table_insert(urls, g_strdup(cfg->domains[i]), url);
  }
  g_message("Identity-Info endpoint: %s", (char *)g_hash_table_lookup(urls, cfg->domains[0]));
  d->certs = g_steal_pointer(&srv);
  return g_steal_pointer(&urls);
}

/* SIGHUP for the built-in endpoint. */
static gboolean
daemon_certs_reload(Daemon *d, const SrvConfig *cfg, GError **error)
{
  if (d->certs == NULL)
    return TRUE;
  g_autoptr(GArray) domains = daemon_cert_domains(cfg, error);
  return domains != NULL &&
         cert_server_reload(d->certs, (CertServerDomain *)domains->data, domains->len, error);
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

/* Settings a reload cannot change: the running values stay, and the log
 * says which ones wait for a restart. */
static void
daemon_warn_restart_only(const SrvConfig *old, const SrvConfig *fresh)
{
  struct {
    const char *name;
    gboolean changed;
  } checks[] = {
      {"[server] domains",
       !g_strv_equal((const char *const *)old->domains, (const char *const *)fresh->domains)},
      {"[server] listen",
       !g_strv_equal((const char *const *)old->listen, (const char *const *)fresh->listen)},
      {"[server] state-dir", g_strcmp0(old->state_dir, fresh->state_dir) != 0},
      {"[server] control-socket", g_strcmp0(old->control_socket, fresh->control_socket) != 0},
      {"[metrics] listen", g_strcmp0(old->metrics_listen, fresh->metrics_listen) != 0},
      {"[tls] priority", g_strcmp0(old->tls_priority, fresh->tls_priority) != 0},
      {"[identity]", old->identity_enabled != fresh->identity_enabled ||
                         g_strcmp0(old->identity_algorithm, fresh->identity_algorithm) != 0 ||
                         g_strcmp0(old->identity_backend, fresh->identity_backend) != 0},
      {"[credential] generate",
       old->core.generate_credentials != fresh->core.generate_credentials},
  };
  for (guint i = 0; i < G_N_ELEMENTS(checks); i++)
    if (checks[i].changed)
      g_warning("reload: %s changed; it takes effect after a restart", checks[i].name);
}

/* The master key named by @path replaces the one in use, when it is the
 * store's: after `sipcred db rekey` the running daemon holds the old key,
 * which no longer unwraps anything. A key that cannot be loaded or is not
 * the store's leaves the one in use. */
static void
daemon_master_key_reload(Daemon *d, const char *path)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreMasterKey) key = store_master_key_load(path, &error);
  if (key == NULL || !store_db_set_master_key(d->store, key, &error)) {
    g_warning("reload: [store] master-key: %s; the key in use stays", error->message);
    return;
  }
  g_message("reload: master key %s in use", store_master_key_get_id(key));
}

/* SIGHUP: re-read the configuration; swap in new TLS certificates and keys
 * (signing keys too) and the limits. Connections and subscriptions stay.
 * An invalid file changes nothing. */
static gboolean
on_reload(gpointer user_data)
{
  Daemon *d = user_data;
  g_autoptr(GError) error = NULL;
  srv_sdnotify_reloading();
  g_autoptr(SrvConfig) fresh = srv_config_load(d->config_path, &error);
  if (fresh == NULL || !edge_reload_credentials(d->edge, fresh, &error) ||
      !daemon_certs_reload(d, fresh, &error)) {
    g_warning("reload failed, keeping the running configuration: %s", error->message);
    srv_sdnotify_ready("reload failed, running the previous configuration");
    return G_SOURCE_CONTINUE;
  }
  edge_reload_limits(d->edge, fresh);
  /* A raised cap lets a full store take writes again at once. */
  if (d->store != NULL)
    store_db_set_map_size_max(d->store, fresh->map_size_max);
  if (d->store != NULL && fresh->master_key != NULL)
    daemon_master_key_reload(d, fresh->master_key);
  if (d->core != NULL)
    core_service_reload(d->core, &fresh->core);
  daemon_warn_restart_only(d->cfg, fresh);
  g_message("reloaded TLS certificates, keys and limits from %s", d->config_path);
  srv_sdnotify_ready("reloaded");
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
  store_db_set_map_size_max(store, cfg->map_size_max);
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
  d->core = core;
  d->store = store;
  StatsSources sources = {.core = core, .edge = edge, .nua = nua};
  g_autoptr(StatsServer) stats =
      stats_server_new(&sources, cfg->control_socket, cfg->metrics_listen, &error);
  if (stats == NULL) {
    g_printerr("sipcredd: %s\n", error->message);
    edge_stop(edge);
    return 1;
  }
  if (cfg->metrics_listen != NULL)
    g_message("metrics on http://%s/metrics (port %u)", cfg->metrics_listen,
              stats_server_get_metrics_port(stats));

  d->loop = g_main_loop_new(NULL, FALSE);
  guint sig_term = g_unix_signal_add(SIGTERM, on_terminate, d);
  guint sig_int = g_unix_signal_add(SIGINT, on_terminate, d);
  guint sig_hup = g_unix_signal_add(SIGHUP, on_reload, d);

  g_autofree char *domains = g_strjoinv(", ", cfg->domains);
  g_autofree char *listen = g_strjoinv(", ", cfg->listen);
  g_message("ready: serving %s on %s (TLS), store %s", domains, listen, cfg->state_dir);
  g_autofree char *status = g_strdup_printf("serving %s on %s", domains, listen);
  srv_sdnotify_ready(status);
  g_main_loop_run(d->loop);
  srv_sdnotify_stopping();

  /* Subscribers get their terminating NOTIFYs through the edge, so nua
   * shuts down first, within a bound, and the edge closes afterwards. */
  g_clear_pointer(&changes, srv_change_tail_free);
  g_clear_pointer(&stats, stats_server_free);
  nua_adapter_shutdown(nua, cfg->shutdown_timeout_ms);
  edge_stop(edge);
  g_source_remove(sig_term);
  g_source_remove(sig_int);
  g_source_remove(sig_hup);
  d->edge = NULL;
  d->core = NULL;
  d->store = NULL;
  g_clear_pointer(&d->certs, cert_server_free);
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
    printf("sipcredd %s (allocator: %s)\n", SIPCRED_VERSION, daemon_allocator());
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
