/* server/stats: see stats.h. */
#define G_LOG_DOMAIN "sipcred-stats"

#include "server/stats.h"

#include <errno.h>
#include <gio/gunixsocketaddress.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>

#define STATS_PEER_TIMEOUT_S 5
#define STATS_REQUEST_MAX 2048

G_DEFINE_QUARK(sipcred - stats - error - quark, stats_error)

/* ---- rendering ---- */

static void
metric(GString *out, const char *name, const char *type, const char *help)
{
  g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
value(GString *out, const char *name, const char *labels, guint64 v)
{
  g_string_append_printf(out, "%s%s %" G_GUINT64_FORMAT "\n", name, labels ? labels : "", v);
}

static void
one(GString *out, const char *name, const char *type, const char *help, guint64 v)
{
  metric(out, name, type, help);
  value(out, name, NULL, v);
}

static gint
compare_keys(gconstpointer a, gconstpointer b)
{
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *
stats_render(const StatsSources *src)
{
  GString *out = g_string_new(NULL);

  if (src->core != NULL) {
    CoreStats c;
    core_service_get_stats(src->core, &c);
    metric(out, "sipcred_subscriptions", "gauge", "Live subscriptions by event package.");
    value(out, "sipcred_subscriptions", "{package=\"certificate\"}", c.subscriptions_certificate);
    value(out, "sipcred_subscriptions", "{package=\"credential\"}", c.subscriptions_credential);
    one(out, "sipcred_notifies_sent_total", "counter", "NOTIFYs sent.", c.notifies_sent);
    one(out, "sipcred_notifies_failed_total", "counter",
        "NOTIFYs that ended with a final response of 300 or more, or a local failure.",
        c.notifies_failed);
    one(out, "sipcred_notifies_coalesced_total", "counter",
        "States replaced by a newer one before their NOTIFY was sent.", c.notifies_coalesced);
    one(out, "sipcred_notifies_in_flight", "gauge", "NOTIFYs awaiting their final response.",
        c.notifies_in_flight);
    one(out, "sipcred_fanout_queued", "gauge", "Subscriptions waiting for a fan-out slot.",
        c.fanout_queued);
    one(out, "sipcred_auth_failures_total", "counter",
        "Digest authentications that failed (wrong, replayed or unknown credentials).",
        c.auth_failures);
    one(out, "sipcred_auth_lockouts_total", "counter",
        "Requests refused by the failed-attempt limit.", c.auth_lockouts);
    one(out, "sipcred_rate_limited_total", "counter",
        "Requests refused with 503 by a request rate limit ([limits]).", c.rate_limited);
    one(out, "sipcred_messages_relayed_total", "counter",
        "MESSAGEs relayed to at least one binding.", c.messages_relayed);
  }
  if (src->edge != NULL) {
    EdgeStats e;
    edge_get_stats(src->edge, &e);
    one(out, "sipcred_connections", "gauge", "Client TLS connections open.", e.connections);
    one(out, "sipcred_flows", "gauge", "Client connections past the TLS handshake.", e.flows);
    one(out, "sipcred_connections_accepted_total", "counter", "Client connections accepted.",
        e.connections_accepted);
    one(out, "sipcred_connections_refused_total", "counter",
        "Client connections refused by max-connections or max-connections-per-ip.",
        e.connections_refused);
    one(out, "sipcred_tls_handshakes_total", "counter", "TLS handshakes completed.", e.handshakes);
    metric(out, "sipcred_tls_handshake_failures_total", "counter",
           "TLS handshakes that failed, by reason.");
    value(out, "sipcred_tls_handshake_failures_total", "{reason=\"tls\"}", e.handshakes_failed);
    value(out, "sipcred_tls_handshake_failures_total", "{reason=\"timeout\"}",
          e.handshakes_timed_out);
    one(out, "sipcred_message_timeouts_total", "counter",
        "Flows closed because a message stayed unfinished for message-timeout (slowloris).",
        e.messages_timed_out);
    one(out, "sipcred_identity_signed_total", "counter", "Messages signed (RFC 4474).",
        e.signed_messages);
    one(out, "sipcred_identity_sign_failures_total", "counter",
        "Messages that could not be signed (not sent).", e.sign_failures);
    one(out, "sipcred_identity_sign_queue", "gauge", "Messages waiting to be signed.",
        e.sign_pending);
    one(out, "sipcred_identity_sign_microseconds_total", "counter",
        "Microseconds from queueing to signed, summed over sipcred_identity_signed_total.",
        e.sign_us_total);
    one(out, "sipcred_identity_sign_microseconds_max", "gauge",
        "The longest time from queueing to signed, in microseconds.", e.sign_us_max);
  }
  if (src->nua != NULL) {
    one(out, "sipcred_nua_handles", "gauge",
        "nua handles the daemon holds (dialogs, requests awaiting an answer, relayed MESSAGEs).",
        nua_adapter_get_live_handles(src->nua));
    GHashTable *answers = nua_adapter_get_answer_counts(src->nua);
    g_autoptr(GPtrArray) keys = g_ptr_array_new();
    GHashTableIter iter;
    gpointer k;
    g_hash_table_iter_init(&iter, answers);
    while (g_hash_table_iter_next(&iter, &k, NULL))
      g_ptr_array_add(keys, k);
    g_ptr_array_sort(keys, compare_keys);
    metric(out, "sipcred_answers_total", "counter",
           "Final responses the server gave, by method and status.");
    for (guint i = 0; i < keys->len; i++) {
      const char *key = keys->pdata[i];
      const char *space = strchr(key, ' ');
      if (space == NULL)
        continue;
      g_autofree char *method = g_strndup(key, space - key);
      g_autofree char *labels =
          g_strdup_printf("{method=\"%s\",status=\"%s\"}", method, space + 1);
      value(out, "sipcred_answers_total", labels,
            GPOINTER_TO_SIZE(g_hash_table_lookup(answers, key)));
    }
  }
  return g_string_free(out, FALSE);
}

/* ---- serving ---- */

struct _StatsServer {
  StatsSources src;
  char *socket_path;
  GSocketService *control;
  GSocketService *metrics;
  guint16 metrics_port;
};

/* One peer: its connection, what it sent, what it gets. */
typedef struct {
  StatsServer *server;
  GSocketConnection *conn;
  GCancellable *cancel;
  guint timeout;
  char request[STATS_REQUEST_MAX];
  char *reply;
} StatsPeer;

static void
stats_peer_free(StatsPeer *p)
{
  if (p->timeout)
    g_source_remove(p->timeout);
  g_io_stream_close(G_IO_STREAM(p->conn), NULL, NULL);
  g_object_unref(p->conn);
  g_object_unref(p->cancel);
  g_free(p->reply);
  g_free(p);
}

static gboolean
stats_peer_timeout(gpointer data)
{
  StatsPeer *p = data;
  p->timeout = 0;
  g_cancellable_cancel(p->cancel); /* the pending call finishes with an error */
  return G_SOURCE_REMOVE;
}

static StatsPeer *
stats_peer_new(StatsServer *server, GSocketConnection *conn)
{
  StatsPeer *p = g_new0(StatsPeer, 1);
  p->server = server;
  p->conn = g_object_ref(conn);
  p->cancel = g_cancellable_new();
  p->timeout = g_timeout_add_seconds(STATS_PEER_TIMEOUT_S, stats_peer_timeout, p);
  return p;
}

static void
stats_written(GObject *source, GAsyncResult *res, gpointer data)
{
  StatsPeer *p = data;
  g_autoptr(GError) error = NULL;
  if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), res, NULL, &error))
    g_debug("stats peer: %s", error->message);
  stats_peer_free(p);
}

static void
stats_send(StatsPeer *p, char *reply)
{
  p->reply = reply;
  GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(p->conn));
  g_output_stream_write_all_async(out, p->reply, strlen(p->reply), G_PRIORITY_DEFAULT, p->cancel,
                                  stats_written, p);
}

static gboolean
on_control(GSocketService *service, GSocketConnection *conn, GObject *source, gpointer data)
{
  StatsServer *server = data;
  stats_send(stats_peer_new(server, conn), stats_render(&server->src));
  return TRUE;
}

static char *
http_reply(guint status, const char *phrase, const char *extra, const char *body)
{
  return g_strdup_printf("HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %" G_GSIZE_FORMAT
                         "\r\n%sConnection: close\r\n\r\n%s",
                         status, phrase,
                         status == 200 ? "text/plain; version=0.0.4; charset=utf-8"
                                       : "text/plain; charset=utf-8",
                         strlen(body), extra, body);
}

static void
on_metrics_request(GObject *source, GAsyncResult *res, gpointer data)
{
  StatsPeer *p = data;
  g_autoptr(GError) error = NULL;
  gssize n = g_input_stream_read_finish(G_INPUT_STREAM(source), res, &error);
  if (n <= 0) {
    stats_peer_free(p);
    return;
  }
  p->request[MIN((gsize)n, sizeof p->request - 1)] = '\0';
  const char *eol = strstr(p->request, "\r\n");
  g_autofree char *line = eol ? g_strndup(p->request, eol - p->request) : NULL;
  g_auto(GStrv) parts = line ? g_strsplit(line, " ", 3) : NULL;
  if (parts == NULL || g_strv_length(parts) != 3 || !g_str_has_prefix(parts[2], "HTTP/1.")) {
    stats_send(p, http_reply(400, "Bad Request", "", "request line unreadable\n"));
  } else if (strcmp(parts[0], "GET") != 0 && strcmp(parts[0], "HEAD") != 0) {
    stats_send(
        p, http_reply(405, "Method Not Allowed", "Allow: GET, HEAD\r\n", "only GET /metrics\n"));
  } else if (strcmp(parts[1], "/metrics") != 0) {
    stats_send(p, http_reply(404, "Not Found", "", "only /metrics is served here\n"));
  } else {
    g_autofree char *body = stats_render(&p->server->src);
    char *reply = http_reply(200, "OK", "", body);
    if (strcmp(parts[0], "HEAD") == 0)
      *(strstr(reply, "\r\n\r\n") + 4) = '\0';
    stats_send(p, reply);
  }
}

static gboolean
on_metrics(GSocketService *service, GSocketConnection *conn, GObject *source, gpointer data)
{
  StatsPeer *p = stats_peer_new(data, conn);
  /* Scrapers send the request in one write: one read is enough. */
  g_input_stream_read_async(g_io_stream_get_input_stream(G_IO_STREAM(conn)), p->request,
                            sizeof p->request - 1, G_PRIORITY_DEFAULT, p->cancel,
                            on_metrics_request, p);
  return TRUE;
}

static gboolean
stats_control_open(StatsServer *server, const char *path, GError **error)
{
  GStatBuf st;
  if (strlen(path) >= 108) {
    g_set_error(error, STATS_ERROR, STATS_ERROR_SOCKET,
                "control socket %s: longer than a UNIX socket path may be", path);
    return FALSE;
  }
  if (g_lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      g_set_error(error, STATS_ERROR, STATS_ERROR_SOCKET,
                  "control socket %s: a file that is not a socket is in the way", path);
      return FALSE;
    }
    g_unlink(path); /* left by a daemon that did not stop cleanly */
  }
  g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
  server->control = g_socket_service_new();
  /* Only the daemon's user may read the numbers: create it private. */
  mode_t old = umask(0077);
  gboolean ok =
      g_socket_listener_add_address(G_SOCKET_LISTENER(server->control), addr, G_SOCKET_TYPE_STREAM,
                                    G_SOCKET_PROTOCOL_DEFAULT, NULL, NULL, error);
  umask(old);
  if (!ok) {
    g_prefix_error(error, "control socket %s: ", path);
    return FALSE;
  }
  server->socket_path = g_strdup(path);
  g_signal_connect(server->control, "incoming", G_CALLBACK(on_control), server);
  g_socket_service_start(server->control);
  return TRUE;
}

static gboolean
stats_metrics_open(StatsServer *server, const char *listen, GError **error)
{
  g_autoptr(GSocketConnectable) where = g_network_address_parse(listen, 0, error);
  if (where == NULL)
    return FALSE;
  const char *host = g_network_address_get_hostname(G_NETWORK_ADDRESS(where));
  guint16 port = g_network_address_get_port(G_NETWORK_ADDRESS(where));
  g_autoptr(GInetAddress) ip = g_inet_address_new_from_string(host);
  if (ip == NULL || !g_inet_address_get_is_loopback(ip)) {
    g_set_error(error, STATS_ERROR, STATS_ERROR_LISTEN,
                "metrics listen %s: not a loopback address", listen);
    return FALSE;
  }
  g_autoptr(GSocketAddress) addr = g_inet_socket_address_new(ip, port);
  g_autoptr(GSocketAddress) bound = NULL;
  server->metrics = g_socket_service_new();
  if (!g_socket_listener_add_address(G_SOCKET_LISTENER(server->metrics), addr,
                                     G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL, &bound,
                                     error)) {
    g_prefix_error(error, "metrics listen %s: ", listen);
    return FALSE;
  }
  server->metrics_port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
  g_signal_connect(server->metrics, "incoming", G_CALLBACK(on_metrics), server);
  g_socket_service_start(server->metrics);
  return TRUE;
}

StatsServer *
stats_server_new(const StatsSources *src, const char *control_socket, const char *metrics_listen,
                 GError **error)
{
  g_autoptr(StatsServer) server = g_new0(StatsServer, 1);

  g_return_val_if_fail(src != NULL && control_socket != NULL, NULL);
  server->src = *src;
  if (!stats_control_open(server, control_socket, error))
    return NULL;
  if (metrics_listen != NULL && !stats_metrics_open(server, metrics_listen, error))
    return NULL;
  return g_steal_pointer(&server);
}

guint16
stats_server_get_metrics_port(StatsServer *server)
{
  return server->metrics_port;
}

void
stats_server_free(StatsServer *server)
{
  if (server == NULL)
    return;
  if (server->control != NULL) {
    g_socket_service_stop(server->control);
    g_socket_listener_close(G_SOCKET_LISTENER(server->control));
    g_object_unref(server->control);
  }
  if (server->metrics != NULL) {
    g_socket_service_stop(server->metrics);
    g_socket_listener_close(G_SOCKET_LISTENER(server->metrics));
    g_object_unref(server->metrics);
  }
  if (server->socket_path != NULL)
    g_unlink(server->socket_path);
  g_free(server->socket_path);
  g_free(server);
}
