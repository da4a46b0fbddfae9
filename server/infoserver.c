#define G_LOG_DOMAIN "sipcred-infoserver"

#include "server/infoserver.h"

#include <gio/gio.h>
#include <gnutls/gnutls.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "identity/cert.h"
#include "server/edge.h"

/* What one generation of the configuration serves; a reload swaps it while
 * connection threads keep the one they started with. */
typedef struct {
  gint ref;
  gnutls_certificate_credentials_t creds; /* every domain's; GnuTLS picks by SNI */
  gnutls_priority_t priority;
  GHashTable *ders; /* "/domain.der" -> GBytes */
} InfoContent;

/* Shared with the connection threads, which may outlive the server. */
typedef struct {
  gint ref;
  GMutex lock;
  InfoContent *content;
  gint n_conns;
} InfoShared;

typedef struct {
  InfoServer *srv;
  GSocket *sock;
  GSource *source;
  guint16 port;
  char *host; /* as configured, without brackets */
} InfoListener;

struct _InfoServer {
  InfoShared *shared;
  GStrv listen;
  char *public_host;
  GStrv domains;
  GPtrArray *listeners;
};

static InfoContent *
info_content_ref(InfoContent *c)
{
  g_atomic_int_inc(&c->ref);
  return c;
}

static void
info_content_unref(InfoContent *c)
{
  if (c == NULL || !g_atomic_int_dec_and_test(&c->ref))
    return;
  gnutls_certificate_free_credentials(c->creds);
  gnutls_priority_deinit(c->priority);
  g_hash_table_unref(c->ders);
  g_free(c);
}

static InfoShared *
info_shared_ref(InfoShared *s)
{
  g_atomic_int_inc(&s->ref);
  return s;
}

static void
info_shared_unref(InfoShared *s)
{
  if (!g_atomic_int_dec_and_test(&s->ref))
    return;
  info_content_unref(s->content);
  g_mutex_clear(&s->lock);
  g_free(s);
}

static InfoContent *
info_shared_get_content(InfoShared *s)
{
  g_mutex_lock(&s->lock);
  InfoContent *c = info_content_ref(s->content);
  g_mutex_unlock(&s->lock);
  return c;
}

static InfoContent *
info_content_load(const SrvConfig *cfg, GError **error)
{
  InfoContent *c = g_new0(InfoContent, 1);
  c->ref = 1;
  c->ders = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_bytes_unref);
  gnutls_certificate_allocate_credentials(&c->creds);
  const char *err_pos = NULL;
  g_autofree char *priority =
      g_strconcat("NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", EDGE_TLS_PRIORITY_FLOOR, NULL);
  int rc = gnutls_priority_init(&c->priority, priority, &err_pos);
  if (rc < 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "TLS priority: %s", gnutls_strerror(rc));
    c->priority = NULL;
    gnutls_certificate_free_credentials(c->creds);
    g_hash_table_unref(c->ders);
    g_free(c);
    return NULL;
  }
  for (guint i = 0; i < cfg->domain_certs->len; i++) {
    const SrvDomain *d = g_ptr_array_index(cfg->domain_certs, i);
    rc = gnutls_certificate_set_x509_key_file2(c->creds, d->cert_file, d->key_file,
                                               GNUTLS_X509_FMT_PEM, NULL, 0);
    g_autofree char *pem = NULL;
    gsize len = 0;
    g_autoptr(IdentCert) cert = NULL;
    if (rc >= 0 && g_file_get_contents(d->cert_file, &pem, &len, error))
      cert = ident_cert_new_from_data((const guint8 *) pem, len, error);
    if (rc < 0 || cert == NULL) {
      if (rc < 0)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s with %s: %s", d->cert_file,
                    d->key_file, gnutls_strerror(rc));
      info_content_unref(c);
      return NULL;
    }
    g_hash_table_insert(c->ders, g_strdup_printf("/%s.der", d->name),
                        g_bytes_ref(ident_cert_get_der(cert)));
  }
  return c;
}

/* ---- one connection, on its own thread ---- */

typedef struct {
  InfoShared *shared;
  GSocket *sock;
  char *peer;
} InfoJob;

static gboolean
info_send_all(gnutls_session_t s, const void *data, gsize len)
{
  const char *p = data;
  while (len > 0) {
    ssize_t n = gnutls_record_send(s, p, len);
    if (n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n <= 0)
      return FALSE;
    p += n;
    len -= (gsize) n;
  }
  return TRUE;
}

static void
info_respond(gnutls_session_t s, guint status, const char *reason, const char *extra,
             GBytes *body, gboolean head_only)
{
  gsize len = body != NULL ? g_bytes_get_size(body) : 0;
  g_autofree char *head =
      g_strdup_printf("HTTP/1.1 %u %s\r\n%sContent-Length: %" G_GSIZE_FORMAT
                      "\r\nConnection: close\r\n\r\n",
                      status, reason, extra != NULL ? extra : "", len);
  if (!info_send_all(s, head, strlen(head)))
    return;
  if (body != NULL && !head_only)
    info_send_all(s, g_bytes_get_data(body, NULL), len);
}

/* Serves one request: GET or HEAD of /DOMAIN.der. */
static void
info_serve(gnutls_session_t s, InfoContent *content, const char *peer)
{
  char buf[INFO_SERVER_MAX_HEAD + 1];
  gsize got = 0;
  gint64 deadline = g_get_monotonic_time() + INFO_SERVER_TIMEOUT_S * G_USEC_PER_SEC;

  for (;;) {
    if (got >= INFO_SERVER_MAX_HEAD) {
      info_respond(s, 431, "Request Header Fields Too Large", NULL, NULL, FALSE);
      return;
    }
    if (g_get_monotonic_time() > deadline)
      return;
    ssize_t n = gnutls_record_recv(s, buf + got, INFO_SERVER_MAX_HEAD - got);
    if (n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n <= 0)
      return; /* closed, timed out (SO_RCVTIMEO) or broken */
    got += (gsize) n;
    buf[got] = '\0';
    if (memchr(buf, '\0', got) != NULL) {
      info_respond(s, 400, "Bad Request", NULL, NULL, FALSE);
      return;
    }
    if (strstr(buf, "\r\n\r\n") != NULL || strstr(buf, "\n\n") != NULL)
      break;
  }

  char *eol = strpbrk(buf, "\r\n");
  *eol = '\0';
  g_auto(GStrv) parts = g_strsplit(buf, " ", -1);
  if (g_strv_length(parts) != 3 || !g_str_has_prefix(parts[2], "HTTP/1.")) {
    info_respond(s, 400, "Bad Request", NULL, NULL, FALSE);
    return;
  }
  gboolean head_only = g_str_equal(parts[0], "HEAD");
  if (!head_only && !g_str_equal(parts[0], "GET")) {
    info_respond(s, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", NULL, FALSE);
    return;
  }
  g_autofree char *path = g_ascii_strdown(parts[1], -1);
  GBytes *der = g_hash_table_lookup(content->ders, path);
  if (der == NULL) {
    info_respond(s, 404, "Not Found", NULL, NULL, head_only);
    return;
  }
  info_respond(s, 200, "OK",
               "Content-Type: application/pkix-cert\r\nCache-Control: max-age=3600\r\n", der,
               head_only);
  g_debug("served %s to %s", path, peer);
}

static gpointer
info_conn_thread(gpointer data)
{
  InfoJob *job = data;
  InfoContent *content = info_shared_get_content(job->shared);
  int fd = g_socket_get_fd(job->sock);
  struct timeval tv = {.tv_sec = INFO_SERVER_TIMEOUT_S};

  /* GSocket keeps its descriptor non-blocking whatever it is told; this
   * thread wants plain blocking I/O bounded by the socket timeouts. */
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0)
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  gnutls_session_t s = NULL;
  if (gnutls_init(&s, GNUTLS_SERVER) == 0) {
    gnutls_priority_set(s, content->priority);
    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, content->creds);
    gnutls_transport_set_int(s, fd);
    gnutls_handshake_set_timeout(s, INFO_SERVER_TIMEOUT_S * 1000);
    int rc;
    do
      rc = gnutls_handshake(s);
    while (rc < 0 && rc == GNUTLS_E_INTERRUPTED);
    if (rc == 0) {
      info_serve(s, content, job->peer);
      gnutls_bye(s, GNUTLS_SHUT_WR);
    } else {
      g_debug("TLS handshake with %s failed: %s", job->peer, gnutls_strerror(rc));
    }
    gnutls_deinit(s);
  }
  g_socket_close(job->sock, NULL);
  g_object_unref(job->sock);
  info_content_unref(content);
  g_atomic_int_dec_and_test(&job->shared->n_conns);
  info_shared_unref(job->shared);
  g_free(job->peer);
  g_free(job);
  return NULL;
}

static gboolean
info_listener_accept(GSocket *sock, GIOCondition cond, gpointer data)
{
  InfoListener *l = data;
  InfoShared *shared = l->srv->shared;

  for (guint i = 0; i < 16; i++) {
    GSocket *client = g_socket_accept(sock, NULL, NULL);
    if (client == NULL)
      break;
    if (g_atomic_int_add(&shared->n_conns, 1) >= INFO_SERVER_MAX_CONNECTIONS) {
      g_atomic_int_dec_and_test(&shared->n_conns);
      g_message("Identity-Info endpoint: %d connections already; one closed",
                INFO_SERVER_MAX_CONNECTIONS);
      g_socket_close(client, NULL);
      g_object_unref(client);
      continue;
    }
    InfoJob *job = g_new0(InfoJob, 1);
    job->shared = info_shared_ref(shared);
    job->sock = client;
    g_autoptr(GSocketAddress) addr = g_socket_get_remote_address(client, NULL);
    job->peer = addr != NULL ? g_inet_address_to_string(g_inet_socket_address_get_address(
                                   G_INET_SOCKET_ADDRESS(addr)))
                             : g_strdup("?");
    GError *error = NULL;
    GThread *t = g_thread_try_new("sipcred-info", info_conn_thread, job, &error);
    if (t == NULL) {
      g_warning("Identity-Info endpoint: no thread for a connection: %s", error->message);
      g_error_free(error);
      g_socket_close(client, NULL);
      g_object_unref(client);
      g_atomic_int_dec_and_test(&shared->n_conns);
      info_shared_unref(job->shared);
      g_free(job->peer);
      g_free(job);
      continue;
    }
    g_thread_unref(t); /* detached: it cleans up after itself */
  }
  return G_SOURCE_CONTINUE;
}

static void
info_listener_free(gpointer data)
{
  InfoListener *l = data;
  if (l->source != NULL) {
    g_source_destroy(l->source);
    g_source_unref(l->source);
  }
  if (l->sock != NULL) {
    g_socket_close(l->sock, NULL);
    g_object_unref(l->sock);
  }
  g_free(l->host);
  g_free(l);
}

/* "HOST:PORT" or "[V6]:PORT" (checked by the configuration loader). */
static gboolean
info_split_addr(const char *addr, char **host, guint16 *port)
{
  const char *colon = strrchr(addr, ':');
  guint64 p;
  if (colon == NULL || !g_ascii_string_to_unsigned(colon + 1, 10, 0, 65535, &p, NULL))
    return FALSE;
  if (addr[0] == '[' && colon > addr + 1 && colon[-1] == ']')
    *host = g_strndup(addr + 1, colon - addr - 2);
  else
    *host = g_strndup(addr, colon - addr);
  *port = (guint16) p;
  return TRUE;
}

InfoServer *
info_server_new(const SrvConfig *cfg, GError **error)
{
  g_return_val_if_fail(cfg != NULL, NULL);

  InfoContent *content = info_content_load(cfg, error);
  if (content == NULL)
    return NULL;
  InfoServer *srv = g_new0(InfoServer, 1);
  srv->shared = g_new0(InfoShared, 1);
  srv->shared->ref = 1;
  g_mutex_init(&srv->shared->lock);
  srv->shared->content = content;
  srv->listen = g_strdupv(cfg->identity_https_listen);
  srv->public_host = g_strdup(cfg->identity_public_host);
  srv->domains = g_strdupv(cfg->domains);
  srv->listeners = g_ptr_array_new_with_free_func(info_listener_free);
  return srv;
}

gboolean
info_server_start(InfoServer *srv, GError **error)
{
  g_return_val_if_fail(srv != NULL, FALSE);

  for (guint i = 0; srv->listen != NULL && srv->listen[i] != NULL; i++) {
    g_autofree char *host = NULL;
    guint16 port = 0;
    if (!info_split_addr(srv->listen[i], &host, &port)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "https-listen %s is invalid",
                  srv->listen[i]);
      return FALSE;
    }
    g_autoptr(GInetAddress) ia = g_inet_address_new_from_string(host);
    if (ia == NULL) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "https-listen %s: not an IP address", srv->listen[i]);
      return FALSE;
    }
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(ia, port);
    g_autoptr(GSocket) sock = g_socket_new(g_inet_address_get_family(ia), G_SOCKET_TYPE_STREAM,
                                           G_SOCKET_PROTOCOL_TCP, error);
    if (sock == NULL)
      return FALSE;
    g_socket_set_blocking(sock, FALSE);
    if (!g_socket_bind(sock, sa, TRUE, error) || !g_socket_listen(sock, error)) {
      g_prefix_error(error, "Identity-Info endpoint on %s: ", srv->listen[i]);
      return FALSE;
    }
    InfoListener *l = g_new0(InfoListener, 1);
    l->srv = srv;
    l->sock = g_steal_pointer(&sock);
    l->host = g_steal_pointer(&host);
    g_autoptr(GSocketAddress) bound = g_socket_get_local_address(l->sock, NULL);
    l->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    l->source = g_socket_create_source(l->sock, G_IO_IN, NULL);
    g_source_set_callback(l->source, (GSourceFunc) (void (*)(void)) info_listener_accept, l,
                          NULL);
    g_source_attach(l->source, NULL);
    g_ptr_array_add(srv->listeners, l);
    g_info("Identity-Info endpoint listening on %s port %u (HTTPS)", l->host, l->port);
  }
  return TRUE;
}

guint16
info_server_get_port(InfoServer *srv, guint index)
{
  g_return_val_if_fail(srv != NULL, 0);
  if (index >= srv->listeners->len)
    return 0;
  return ((InfoListener *) g_ptr_array_index(srv->listeners, index))->port;
}

GHashTable *
info_server_dup_urls(InfoServer *srv)
{
  g_return_val_if_fail(srv != NULL, NULL);
  GHashTable *urls = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  if (srv->listeners->len == 0)
    return urls;
  InfoListener *l = g_ptr_array_index(srv->listeners, 0);
  const char *host = srv->public_host != NULL ? srv->public_host : l->host;
  g_autofree char *shown = strchr(host, ':') != NULL ? g_strdup_printf("[%s]", host)
                                                     : g_strdup(host);
  for (guint i = 0; srv->domains[i] != NULL; i++)
    g_hash_table_insert(urls, g_strdup(srv->domains[i]),
                        g_strdup_printf("https://%s:%u/%s.der", shown, l->port, srv->domains[i]));
  return urls;
}

gboolean
info_server_reload(InfoServer *srv, const SrvConfig *cfg, GError **error)
{
  g_return_val_if_fail(srv != NULL && cfg != NULL, FALSE);
  InfoContent *fresh = info_content_load(cfg, error);
  if (fresh == NULL)
    return FALSE;
  g_mutex_lock(&srv->shared->lock);
  InfoContent *old = srv->shared->content;
  srv->shared->content = fresh;
  g_mutex_unlock(&srv->shared->lock);
  info_content_unref(old);
  return TRUE;
}

void
info_server_free(InfoServer *srv)
{
  if (srv == NULL)
    return;
  g_ptr_array_unref(srv->listeners);
  info_shared_unref(srv->shared); /* threads still serving keep their ref */
  g_strfreev(srv->listen);
  g_free(srv->public_host);
  g_strfreev(srv->domains);
  g_free(srv);
}
