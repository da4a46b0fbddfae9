#define G_LOG_DOMAIN "sipcred-certserver"

#include "server/certserver.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "server/edge.h" /* EDGE_TLS_PRIORITY_FLOOR: one TLS floor for the box */

G_DEFINE_QUARK(sipcred - certserver - error - quark, cert_server_error)

/* After the response, how long unread client bytes are drained before the
 * close; closing with unread input would reset the connection and could
 * destroy the response in flight. */
#define CERT_SERVER_LINGER_MS 2000
#define CERT_SERVER_LINGER_MAX (64 * 1024)
#define CERT_SERVER_ACCEPT_BURST 16

typedef struct {
  char *name; /* lower case */
  char *path; /* "/name.der" */
  gnutls_certificate_credentials_t creds;
  GBytes *der;
} CertDomain;

/* What one generation serves; connections keep the one they started with. */
typedef struct {
  GPtrArray *domains; /* CertDomain, the first is the SNI default */
} CertContent;

typedef struct {
  GSocket *sock;
  GSource *source;
  guint16 port;
} CertListener;

typedef enum {
  CONN_HANDSHAKE,
  CONN_READ,
  CONN_WRITE,
  CONN_BYE,
  CONN_LINGER,
} ConnState;

typedef struct {
  CertServer *srv;
  CertContent *content;
  GSocket *sock;
  int fd;
  gnutls_session_t tls;
  ConnState state;
  GSource *io;
  GSource *timer;
  GByteArray *in;
  GBytes *out;
  gsize out_off;
  gsize drained;
  char *peer;
} CertConn;

struct _CertServer {
  GMainContext *context;
  gnutls_priority_t priority;
  CertContent *content;
  GPtrArray *listeners; /* CertListener */
  GHashTable *conns;    /* CertConn set */
  guint max_conns;
  guint timeout_ms;
};

static void
cert_domain_free(gpointer p)
{
  CertDomain *d = p;
  g_free(d->name);
  g_free(d->path);
  if (d->creds != NULL)
    gnutls_certificate_free_credentials(d->creds);
  g_clear_pointer(&d->der, g_bytes_unref);
  g_free(d);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CertDomain, cert_domain_free)

static void
cert_content_clear(gpointer p)
{
  CertContent *c = p;
  g_ptr_array_unref(c->domains);
}

static CertContent *
cert_content_new(void)
{
  CertContent *c = g_rc_box_new0(CertContent);
  c->domains = g_ptr_array_new_with_free_func(cert_domain_free);
  return c;
}

static void
cert_content_unref(CertContent *c)
{
  if (c != NULL)
    g_rc_box_release_full(c, cert_content_clear);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CertContent, cert_content_unref)

static const CertDomain *
cert_content_find(const CertContent *c, const char *name)
{
  for (guint i = 0; i < c->domains->len; i++) {
    const CertDomain *d = g_ptr_array_index(c->domains, i);
    if (g_ascii_strcasecmp(d->name, name) == 0)
      return d;
  }
  return NULL;
}

static const CertDomain *
cert_content_find_path(const CertContent *c, const char *path)
{
  for (guint i = 0; i < c->domains->len; i++) {
    const CertDomain *d = g_ptr_array_index(c->domains, i);
    if (g_ascii_strcasecmp(d->path, path) == 0)
      return d;
  }
  return NULL;
}

/* A DNS name made of letters, digits, '-' and '.', so it is safe in a URL
 * path and a log line as it is. */
static gboolean
cert_domain_name_valid(const char *name)
{
  gsize len = strlen(name);
  if (len == 0 || len > 253 || name[0] == '.' || name[0] == '-' || name[len - 1] == '.')
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isalnum(name[i]) && name[i] != '-' && name[i] != '.')
      return FALSE;
    if (name[i] == '.' && name[i + 1] == '.')
      return FALSE;
  }
  return TRUE;
}

/* The leaf must name the domain, or a client that asks for it by SNI could
 * never verify it. */
static gboolean
cert_domain_check_name(CertDomain *d, GError **error)
{
  gnutls_datum_t der = {NULL, 0};
  gnutls_x509_crt_t crt = NULL;
  int rc = gnutls_certificate_get_crt_raw(d->creds, 0, 0, &der);
  if (rc >= 0)
    rc = gnutls_x509_crt_init(&crt);
  if (rc >= 0)
    rc = gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER);
  gboolean ok = rc >= 0 && gnutls_x509_crt_check_hostname(crt, d->name) != 0;
  if (crt != NULL)
    gnutls_x509_crt_deinit(crt);
  if (rc < 0) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS,
                "%s: cannot read the TLS certificate back: %s", d->name, gnutls_strerror(rc));
    return FALSE;
  }
  if (!ok) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS,
                "%s: the TLS certificate does not name this domain", d->name);
    return FALSE;
  }
  return TRUE;
}

static CertDomain *
cert_domain_load(const CertServerDomain *spec, GError **error)
{
  g_return_val_if_fail(spec->domain != NULL && spec->tls_cert_pem_path != NULL &&
                           spec->tls_key_pem_path != NULL && spec->served_cert_der != NULL,
                       NULL);
  if (!cert_domain_name_valid(spec->domain)) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID, "\"%s\" is not a DNS name",
                spec->domain);
    return NULL;
  }
  g_autoptr(CertDomain) d = g_new0(CertDomain, 1);
  d->name = g_ascii_strdown(spec->domain, -1);
  d->path = g_strconcat("/", d->name, ".der", NULL);

  gsize der_len = 0;
  const void *der_data = g_bytes_get_data(spec->served_cert_der, &der_len);
  gnutls_datum_t der = {(unsigned char *)der_data, (unsigned int)der_len};
  gnutls_x509_crt_t crt = NULL;
  int rc = der_len > 0 && der_len <= G_MAXUINT ? gnutls_x509_crt_init(&crt)
                                               : GNUTLS_E_NO_CERTIFICATE_FOUND;
  if (rc >= 0)
    rc = gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER);
  if (crt != NULL)
    gnutls_x509_crt_deinit(crt);
  if (rc < 0) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID,
                "%s: the certificate to serve is not DER X.509: %s", d->name, gnutls_strerror(rc));
    return NULL;
  }
  d->der = g_bytes_ref(spec->served_cert_der);

  rc = gnutls_certificate_allocate_credentials(&d->creds);
  if (rc < 0) {
    d->creds = NULL;
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS, "%s: %s", d->name,
                gnutls_strerror(rc));
    return NULL;
  }
  gnutls_certificate_set_flags(d->creds, GNUTLS_CERTIFICATE_API_V2);
  /* Only paths and GnuTLS's message are reported: never key material. */
  rc = gnutls_certificate_set_x509_key_file2(d->creds, spec->tls_cert_pem_path,
                                             spec->tls_key_pem_path, GNUTLS_X509_FMT_PEM, NULL, 0);
  if (rc < 0) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS,
                "%s: cannot load TLS certificate %s with key %s: %s", d->name,
                spec->tls_cert_pem_path, spec->tls_key_pem_path, gnutls_strerror(rc));
    return NULL;
  }
  gnutls_certificate_set_known_dh_params(d->creds, GNUTLS_SEC_PARAM_MEDIUM);
  if (!cert_domain_check_name(d, error))
    return NULL;
  return g_steal_pointer(&d);
}

/* ---- connections ---- */

static void conn_step(CertConn *c);

static void
conn_source_clear(GSource **source)
{
  if (*source != NULL) {
    g_source_destroy(*source);
    g_source_unref(*source);
    *source = NULL;
  }
}

static void
conn_free(CertConn *c)
{
  conn_source_clear(&c->io);
  conn_source_clear(&c->timer);
  if (c->tls != NULL)
    gnutls_deinit(c->tls);
  g_socket_close(c->sock, NULL);
  g_object_unref(c->sock);
  cert_content_unref(c->content);
  g_byte_array_unref(c->in);
  g_clear_pointer(&c->out, g_bytes_unref);
  g_free(c->peer);
  g_free(c);
}

static void
conn_close(CertConn *c)
{
  /* conn_free runs from the set's destroy function */
  g_hash_table_remove(c->srv->conns, c);
}

static gboolean
conn_timeout_cb(gpointer data)
{
  CertConn *c = data;
  if (c->state != CONN_LINGER)
    g_debug("%s: closed after %u ms without a complete request", c->peer, c->srv->timeout_ms);
  conn_close(c);
  return G_SOURCE_REMOVE;
}

static void
conn_set_timer(CertConn *c, guint ms)
{
  conn_source_clear(&c->timer);
  c->timer = g_timeout_source_new(ms);
  g_source_set_callback(c->timer, conn_timeout_cb, c, NULL);
  g_source_attach(c->timer, c->srv->context);
}

static gboolean
conn_io_cb(GSocket *sock, GIOCondition cond, gpointer data)
{
  CertConn *c = data;
  conn_source_clear(&c->io);
  conn_step(c);
  return G_SOURCE_REMOVE;
}

static void
conn_wait(CertConn *c, GIOCondition cond)
{
  conn_source_clear(&c->io);
  c->io = g_socket_create_source(c->sock, cond, NULL);
  g_source_set_callback(c->io, (GSourceFunc)(void (*)(void))conn_io_cb, c, NULL);
  g_source_attach(c->io, c->srv->context);
}

/* GnuTLS tells which direction the interrupted call was waiting for. */
static void
conn_wait_tls(CertConn *c)
{
  conn_wait(c, gnutls_record_get_direction(c->tls) ? G_IO_OUT : G_IO_IN);
}

static ssize_t
conn_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
  CertConn *c = ptr;
  /* MSG_NOSIGNAL: a peer that went away must not raise SIGPIPE */
  ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
  if (n < 0)
    gnutls_transport_set_errno(c->tls, errno);
  return n;
}

static ssize_t
conn_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
  CertConn *c = ptr;
  ssize_t n = recv(c->fd, data, len, 0);
  if (n < 0)
    gnutls_transport_set_errno(c->tls, errno);
  return n;
}

static int
conn_client_hello_cb(gnutls_session_t session)
{
  CertConn *c = gnutls_session_get_ptr(session);
  const CertDomain *d = g_ptr_array_index(c->content->domains, 0);
  char name[256];
  size_t len = sizeof name;
  unsigned int type = 0;
  if (gnutls_server_name_get(session, name, &len, &type, 0) == 0 && type == GNUTLS_NAME_DNS) {
    if (len > 0 && name[len - 1] == '.')
      name[len - 1] = '\0';
    const CertDomain *named = cert_content_find(c->content, name);
    if (named != NULL)
      d = named;
  }
  return gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, d->creds);
}

/* RFC 1123 date without the locale-dependent strftime names. */
static char *
http_date_now(void)
{
  static const char *const days[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  g_autoptr(GDateTime) now = g_date_time_new_now_utc();
  return g_strdup_printf("%s, %02d %s %04d %02d:%02d:%02d GMT",
                         days[g_date_time_get_day_of_week(now) - 1],
                         g_date_time_get_day_of_month(now), months[g_date_time_get_month(now) - 1],
                         g_date_time_get_year(now), g_date_time_get_hour(now),
                         g_date_time_get_minute(now), g_date_time_get_second(now));
}

static void
conn_respond(CertConn *c, guint status, const char *reason, const char *extra, GBytes *body,
             gboolean head_only)
{
  g_autofree char *date = http_date_now();
  g_autofree char *text = NULL;
  gsize body_len = 0;
  const guint8 *body_data = NULL;
  if (body == NULL) {
    text = g_strdup_printf("%u %s\n", status, reason);
    body_data = (const guint8 *)text;
    body_len = strlen(text);
  } else {
    body_data = g_bytes_get_data(body, &body_len);
  }
  g_autofree char *head =
      g_strdup_printf("HTTP/1.1 %u %s\r\n"
                      "Date: %s\r\n"
                      "%s"
                      "Content-Length: %" G_GSIZE_FORMAT "\r\n"
                      "Connection: close\r\n"
                      "\r\n",
                      status, reason, date, extra != NULL ? extra : "", body_len);
  GByteArray *out = g_byte_array_new();
  g_byte_array_append(out, (const guint8 *)head, (guint)strlen(head));
  if (!head_only && body_len > 0)
    g_byte_array_append(out, body_data, (guint)body_len);
  c->out = g_byte_array_free_to_bytes(out);
  c->out_off = 0;
  c->state = CONN_WRITE;
}

/* One header line "Name: value"; no whitespace before the colon and no
 * obsolete line folding (RFC 9112 section 5). */
static gboolean
http_header_split(const char *line, char **name)
{
  const char *colon = strchr(line, ':');
  if (colon == NULL || colon == line)
    return FALSE;
  for (const char *p = line; p < colon; p++) {
    if (!g_ascii_isgraph(*p))
      return FALSE;
  }
  *name = g_strndup(line, colon - line);
  return TRUE;
}

/* The request head is complete in c->in (@head_len bytes, terminator
 * excluded). Decides the response. */
static void
conn_handle_request(CertConn *c, gsize head_len)
{
  g_autofree char *head = g_strndup((const char *)c->in->data, head_len);
  if (memchr(c->in->data, '\0', head_len) != NULL) {
    conn_respond(c, 400, "Bad Request", NULL, NULL, FALSE);
    return;
  }
  g_auto(GStrv) lines = g_strsplit(head, "\n", -1);
  guint i = 0;
  for (guint j = 0; lines[j] != NULL; j++)
    g_strchomp(lines[j]); /* drops the CR of CRLF */
  while (lines[i] != NULL && lines[i][0] == '\0')
    i++; /* RFC 9112 section 2.2: empty lines before the request line */
  if (lines[i] == NULL) {
    conn_respond(c, 400, "Bad Request", NULL, NULL, FALSE);
    return;
  }
  g_auto(GStrv) parts = g_strsplit(lines[i], " ", -1);
  if (g_strv_length(parts) != 3 || parts[0][0] == '\0' || parts[1][0] == '\0') {
    conn_respond(c, 400, "Bad Request", NULL, NULL, FALSE);
    return;
  }
  const char *method = parts[0], *target = parts[1], *version = parts[2];
  gboolean http11 = strcmp(version, "HTTP/1.1") == 0;
  if (!http11 && strcmp(version, "HTTP/1.0") != 0) {
    if (g_str_has_prefix(version, "HTTP/") && strlen(version) == 8 &&
        g_ascii_isdigit(version[5]) && version[6] == '.' && g_ascii_isdigit(version[7]))
      conn_respond(c, 505, "HTTP Version Not Supported", NULL, NULL, FALSE);
    else
      conn_respond(c, 400, "Bad Request", NULL, NULL, FALSE);
    return;
  }
  guint n_host = 0;
  for (i++; lines[i] != NULL; i++) {
    g_autofree char *name = NULL;
    if (lines[i][0] == '\0' && lines[i + 1] == NULL)
      break; /* the end of the last header line */
    if (!http_header_split(lines[i], &name)) {
      conn_respond(c, 400, "Bad Request", NULL, NULL, FALSE);
      return;
    }
    if (g_ascii_strcasecmp(name, "Host") == 0)
      n_host++;
  }
  /* RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host. */
  if ((http11 && n_host != 1) || n_host > 1) {
    conn_respond(c, 400, "Bad Request", NULL, NULL, FALSE);
    return;
  }
  gboolean is_head = strcmp(method, "HEAD") == 0;
  if (!is_head && strcmp(method, "GET") != 0) {
    g_debug("%s: method %s refused", c->peer, method);
    conn_respond(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", NULL, FALSE);
    return;
  }
  /* absolute-form (RFC 9112 section 3.2.2): keep the path only */
  const char *path = target;
  if (g_ascii_strncasecmp(path, "https://", 8) == 0 ||
      g_ascii_strncasecmp(path, "http://", 7) == 0) {
    path = strchr(strstr(path, "//") + 2, '/');
    if (path == NULL)
      path = "/";
  }
  g_autofree char *raw = g_strndup(path, strcspn(path, "?#"));
  g_autofree char *decoded = g_uri_unescape_string(raw, NULL);
  const CertDomain *d =
      decoded != NULL && decoded[0] == '/' ? cert_content_find_path(c->content, decoded) : NULL;
  if (d == NULL) {
    g_debug("%s: %s %s: not found", c->peer, method, decoded != NULL ? decoded : "(bad)");
    conn_respond(c, 404, "Not Found", NULL, NULL, is_head);
    return;
  }
  g_debug("%s: %s %s", c->peer, method, d->path);
  conn_respond(c, 200, "OK",
               "Content-Type: application/pkix-cert\r\nCache-Control: max-age=3600\r\n", d->der,
               is_head);
}

/* Looks for the end of the request head: an empty line (CRLF or bare LF,
 * which RFC 9112 section 2.2 allows a recipient to accept). */
static gboolean
http_head_end(const GByteArray *in, gsize *head_len)
{
  for (gsize i = 0; i + 1 < in->len; i++) {
    if (in->data[i] != '\n')
      continue;
    if (in->data[i + 1] == '\n' ||
        (in->data[i + 1] == '\r' && i + 2 < in->len && in->data[i + 2] == '\n')) {
      *head_len = i + 1;
      return TRUE;
    }
  }
  return FALSE;
}

static void
conn_step(CertConn *c)
{
  for (;;) {
    int rc;
    switch (c->state) {
    case CONN_HANDSHAKE:
      rc = gnutls_handshake(c->tls);
      if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        conn_wait_tls(c);
        return;
      }
      if (rc < 0 && !gnutls_error_is_fatal(rc))
        continue; /* a warning alert: the handshake goes on */
      if (rc < 0) {
        g_debug("%s: TLS handshake failed: %s", c->peer, gnutls_strerror(rc));
        conn_close(c);
        return;
      }
      c->state = CONN_READ;
      continue;

    case CONN_READ: {
      guint8 buf[2048];
      gsize room = CERT_SERVER_MAX_HEAD + 1 - c->in->len;
      rc = (int)gnutls_record_recv(c->tls, buf, MIN(sizeof buf, room));
      if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        conn_wait_tls(c);
        return;
      }
      if (rc < 0 && !gnutls_error_is_fatal(rc))
        continue;
      if (rc <= 0) {
        if (rc < 0)
          g_debug("%s: TLS read failed: %s", c->peer, gnutls_strerror(rc));
        conn_close(c);
        return;
      }
      g_byte_array_append(c->in, buf, (guint)rc);
      gsize head_len = 0;
      if (http_head_end(c->in, &head_len) && head_len <= CERT_SERVER_MAX_HEAD) {
        conn_handle_request(c, head_len);
      } else if (c->in->len > CERT_SERVER_MAX_HEAD) {
        g_debug("%s: request head over %u bytes", c->peer, CERT_SERVER_MAX_HEAD);
        conn_respond(c, 431, "Request Header Fields Too Large", NULL, NULL, FALSE);
      }
      continue;
    }

    case CONN_WRITE: {
      gsize len = 0;
      const guint8 *data = g_bytes_get_data(c->out, &len);
      if (c->out_off == len) {
        c->state = CONN_BYE;
        continue;
      }
      ssize_t n = gnutls_record_send(c->tls, data + c->out_off, len - c->out_off);
      if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
        conn_wait_tls(c);
        return;
      }
      if (n < 0) {
        g_debug("%s: TLS write failed: %s", c->peer, gnutls_strerror((int)n));
        conn_close(c);
        return;
      }
      c->out_off += (gsize)n;
      continue;
    }

    case CONN_BYE:
      rc = gnutls_bye(c->tls, GNUTLS_SHUT_WR);
      if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        conn_wait_tls(c);
        return;
      }
      g_socket_shutdown(c->sock, FALSE, TRUE, NULL);
      c->state = CONN_LINGER;
      conn_set_timer(c, MIN(CERT_SERVER_LINGER_MS, c->srv->timeout_ms));
      continue;

    case CONN_LINGER: {
      guint8 buf[4096];
      g_autoptr(GError) err = NULL;
      gssize n = g_socket_receive(c->sock, (char *)buf, sizeof buf, NULL, &err);
      if (n < 0 && g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
        conn_wait(c, G_IO_IN);
        return;
      }
      if (n <= 0 || (c->drained += (gsize)n) > CERT_SERVER_LINGER_MAX) {
        conn_close(c);
        return;
      }
      continue;
    }
    }
  }
}

static void
cert_server_accept_one(CertServer *srv, GSocket *sock)
{
  g_autoptr(GSocketAddress) remote = g_socket_get_remote_address(sock, NULL);
  g_autofree char *peer = NULL;
  if (G_IS_INET_SOCKET_ADDRESS(remote)) {
    g_autofree char *ip =
        g_inet_address_to_string(g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(remote)));
    peer = g_strdup_printf(strchr(ip, ':') != NULL ? "[%s]:%u" : "%s:%u", ip,
                           g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(remote)));
  } else {
    peer = g_strdup("?");
  }
  if (g_hash_table_size(srv->conns) >= srv->max_conns) {
    g_debug("%s: refused, %u connections open", peer, srv->max_conns);
    g_socket_close(sock, NULL);
    return;
  }
  if (srv->content->domains->len == 0) {
    g_debug("%s: refused, no domain to serve", peer);
    g_socket_close(sock, NULL);
    return;
  }
  CertConn *c = g_new0(CertConn, 1);
  c->srv = srv;
  c->sock = g_object_ref(sock);
  c->fd = g_socket_get_fd(sock);
  c->peer = g_steal_pointer(&peer);
  c->in = g_byte_array_new();
  c->content = g_rc_box_acquire(srv->content);
  c->state = CONN_HANDSHAKE;
  g_socket_set_blocking(sock, FALSE);
  g_hash_table_add(srv->conns, c);

  int rc = gnutls_init(&c->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK);
  if (rc >= 0)
    rc = gnutls_priority_set(c->tls, srv->priority);
  if (rc >= 0) {
    const CertDomain *d = g_ptr_array_index(c->content->domains, 0);
    rc = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, d->creds);
  }
  if (rc < 0) {
    g_warning("%s: cannot set up a TLS session: %s", c->peer, gnutls_strerror(rc));
    conn_close(c);
    return;
  }
  gnutls_session_set_ptr(c->tls, c);
  gnutls_handshake_set_post_client_hello_function(c->tls, conn_client_hello_cb);
  gnutls_transport_set_ptr(c->tls, c);
  gnutls_transport_set_push_function(c->tls, conn_push);
  gnutls_transport_set_pull_function(c->tls, conn_pull);
  conn_set_timer(c, srv->timeout_ms);
  conn_step(c);
}

static gboolean
cert_server_accept_cb(GSocket *lsock, GIOCondition cond, gpointer data)
{
  CertServer *srv = data;
  /* bounded, so a connection flood cannot hold the main loop here */
  for (guint i = 0; i < CERT_SERVER_ACCEPT_BURST; i++) {
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocket) sock = g_socket_accept(lsock, NULL, &err);
    if (sock == NULL) {
      if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        g_debug("accept: %s", err->message);
      break;
    }
    cert_server_accept_one(srv, sock);
  }
  return G_SOURCE_CONTINUE;
}

/* ---- the server ---- */

static void
cert_listener_free(gpointer p)
{
  CertListener *l = p;
  if (l->source != NULL) {
    g_source_destroy(l->source);
    g_source_unref(l->source);
  }
  g_socket_close(l->sock, NULL);
  g_object_unref(l->sock);
  g_free(l);
}

CertServer *
cert_server_new(GError **error)
{
  g_autofree char *prio =
      g_strconcat("NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", EDGE_TLS_PRIORITY_FLOOR, NULL);
  gnutls_priority_t priority = NULL;
  int rc = gnutls_priority_init(&priority, prio, NULL);
  if (rc < 0) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS, "TLS priority %s: %s", prio,
                gnutls_strerror(rc));
    return NULL;
  }
  CertServer *srv = g_new0(CertServer, 1);
  srv->context = g_main_context_ref_thread_default();
  srv->priority = priority;
  srv->content = cert_content_new();
  srv->listeners = g_ptr_array_new_with_free_func(cert_listener_free);
  srv->conns =
      g_hash_table_new_full(g_direct_hash, g_direct_equal, (GDestroyNotify)conn_free, NULL);
  srv->max_conns = CERT_SERVER_MAX_CONNECTIONS;
  srv->timeout_ms = CERT_SERVER_TIMEOUT_MS;
  return srv;
}

void
cert_server_free(CertServer *srv)
{
  if (srv == NULL)
    return;
  g_ptr_array_unref(srv->listeners);
  g_hash_table_unref(srv->conns);
  cert_content_unref(srv->content);
  gnutls_priority_deinit(srv->priority);
  g_main_context_unref(srv->context);
  g_free(srv);
}

void
cert_server_set_limits(CertServer *srv, guint max_connections, guint timeout_ms)
{
  g_return_if_fail(srv != NULL);
  if (max_connections > 0)
    srv->max_conns = max_connections;
  if (timeout_ms > 0)
    srv->timeout_ms = timeout_ms;
}

gboolean
cert_server_add_domain(CertServer *srv, const char *domain, const char *tls_cert_pem_path,
                       const char *tls_key_pem_path, GBytes *served_cert_der, GError **error)
{
  g_return_val_if_fail(srv != NULL, FALSE);
  g_return_val_if_fail(domain != NULL && tls_cert_pem_path != NULL && tls_key_pem_path != NULL &&
                           served_cert_der != NULL,
                       FALSE);
  if (cert_content_find(srv->content, domain) != NULL) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID, "%s is already served",
                domain);
    return FALSE;
  }
  const CertServerDomain spec = {domain, tls_cert_pem_path, tls_key_pem_path, served_cert_der};
  CertDomain *d = cert_domain_load(&spec, error);
  if (d == NULL)
    return FALSE;
  /* Appending is safe while connections share this content: everything
   * runs on one main context and a domain is never removed from it. */
  g_ptr_array_add(srv->content->domains, d);
  g_info("serving %s at %s", d->name, d->path);
  return TRUE;
}

gboolean
cert_server_reload(CertServer *srv, const CertServerDomain *domains, guint n_domains,
                   GError **error)
{
  g_return_val_if_fail(srv != NULL, FALSE);
  g_return_val_if_fail(domains != NULL || n_domains == 0, FALSE);
  if (n_domains == 0) {
    g_set_error_literal(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID,
                        "reload with no domain to serve");
    return FALSE;
  }
  g_autoptr(CertContent) next = cert_content_new();
  for (guint i = 0; i < n_domains; i++) {
    if (domains[i].domain != NULL && cert_content_find(next, domains[i].domain) != NULL) {
      g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID, "%s is listed twice",
                  domains[i].domain);
      return FALSE;
    }
    CertDomain *d = cert_domain_load(&domains[i], error);
    if (d == NULL)
      return FALSE;
    g_ptr_array_add(next->domains, d);
  }
  cert_content_unref(srv->content);
  srv->content = g_steal_pointer(&next);
  g_info("reloaded: %u domain(s)", n_domains);
  return TRUE;
}

/* "IP:PORT" or "[IPv6]:PORT"; literals only, so nothing resolves (and
 * blocks) here. */
static GSocketAddress *
cert_server_parse_addr(const char *addr_port, GError **error)
{
  g_autofree char *host = NULL;
  const char *port_str = NULL;
  if (addr_port[0] == '[') {
    const char *end = strchr(addr_port, ']');
    if (end != NULL && end[1] == ':') {
      host = g_strndup(addr_port + 1, end - addr_port - 1);
      port_str = end + 2;
    }
  } else {
    const char *colon = strrchr(addr_port, ':');
    if (colon != NULL && memchr(addr_port, ':', colon - addr_port) == NULL) {
      host = g_strndup(addr_port, colon - addr_port);
      port_str = colon + 1;
    }
  }
  guint64 port = 0;
  g_autoptr(GInetAddress) ip = host != NULL ? g_inet_address_new_from_string(host) : NULL;
  if (ip == NULL || port_str[0] == '\0' ||
      !g_ascii_string_to_unsigned(port_str, 10, 0, G_MAXUINT16, &port, NULL)) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID,
                "\"%s\" is not IP:PORT or [IPv6]:PORT", addr_port);
    return NULL;
  }
  return g_inet_socket_address_new(ip, (guint16)port);
}

gboolean
cert_server_listen(CertServer *srv, const char *addr_port, GError **error)
{
  g_return_val_if_fail(srv != NULL && addr_port != NULL, FALSE);
  g_autoptr(GSocketAddress) addr = cert_server_parse_addr(addr_port, error);
  if (addr == NULL)
    return FALSE;
  g_autoptr(GError) err = NULL;
  g_autoptr(GSocket) sock = g_socket_new(g_socket_address_get_family(addr), G_SOCKET_TYPE_STREAM,
                                         G_SOCKET_PROTOCOL_TCP, &err);
  if (sock != NULL && g_socket_address_get_family(addr) == G_SOCKET_FAMILY_IPV6 &&
      !g_socket_set_option(sock, IPPROTO_IPV6, IPV6_V6ONLY, 1, &err))
    g_clear_object(&sock); /* so [::] and 0.0.0.0 can both be bound */
  if (sock != NULL) {
    g_socket_set_blocking(sock, FALSE);
    g_socket_set_listen_backlog(sock, CERT_SERVER_MAX_CONNECTIONS);
    if (!g_socket_bind(sock, addr, TRUE, &err) || !g_socket_listen(sock, &err))
      g_clear_object(&sock);
  }
  if (sock == NULL) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_LISTEN, "cannot listen on %s: %s",
                addr_port, err->message);
    return FALSE;
  }
  g_autoptr(GSocketAddress) local = g_socket_get_local_address(sock, &err);
  if (local == NULL) {
    g_set_error(error, CERT_SERVER_ERROR, CERT_SERVER_ERROR_LISTEN, "cannot listen on %s: %s",
                addr_port, err->message);
    return FALSE;
  }
  CertListener *l = g_new0(CertListener, 1);
  l->sock = g_steal_pointer(&sock);
  l->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(local));
  l->source = g_socket_create_source(l->sock, G_IO_IN, NULL);
  g_source_set_callback(l->source, (GSourceFunc)(void (*)(void))cert_server_accept_cb, srv, NULL);
  g_source_attach(l->source, srv->context);
  g_ptr_array_add(srv->listeners, l);
  g_message("serving certificates over HTTPS on %s (port %u)", addr_port, l->port);
  return TRUE;
}

guint16
cert_server_get_port(CertServer *srv, guint index)
{
  g_return_val_if_fail(srv != NULL, 0);
  if (index >= srv->listeners->len)
    return 0;
  const CertListener *l = g_ptr_array_index(srv->listeners, index);
  return l->port;
}

char *
cert_server_url_for(CertServer *srv, const char *public_host, const char *domain)
{
  g_return_val_if_fail(srv != NULL && domain != NULL, NULL);
  const CertDomain *d = cert_content_find(srv->content, domain);
  if (d == NULL || srv->listeners->len == 0)
    return NULL;
  const char *host = public_host != NULL ? public_host : d->name;
  gboolean bracket = strchr(host, ':') != NULL && host[0] != '[';
  guint16 port = cert_server_get_port(srv, 0);
  g_autofree char *port_part = port == 443 ? g_strdup("") : g_strdup_printf(":%u", port);
  return g_strdup_printf("https://%s%s%s%s%s", bracket ? "[" : "", host, bracket ? "]" : "",
                         port_part, d->path);
}
