/* Unit tests of server/certserver: real TLS on 127.0.0.1 against a CA and
 * certificates made at run time. The server runs on the main loop; each
 * script is a blocking GnuTLS (or curl) client on a second thread. */
#define G_LOG_DOMAIN "sipcred-test-certserver"

#include "server/certserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "testcert.h"

#define WATCHDOG_S 60
#define CLIENT_TIMEOUT_S 5

typedef struct {
  char *dir;
  TestCert *ca;
  TestCert *tls[2];    /* TLS certificates of a.example and b.example */
  TestCert *served[2]; /* what /a.example.der and /b.example.der serve */
  TestCert *other;     /* a spare certificate for reload */
  char *ca_path;
  char *cert_path[2], *key_path[2];
  CertServer *srv;
  guint16 port;
  GMainLoop *loop;
  void (*script)(gpointer f);
} Fixture;

static const char *const domains[] = {"a.example", "b.example"};

static void
write_file(const char *path, const char *text)
{
  g_autoptr(GError) err = NULL;
  g_assert_true(g_file_set_contents(path, text, -1, &err));
  g_assert_no_error(err);
}

static TestCert *
leaf_new(const TestCert *ca, const char *name)
{
  const char *dns[] = {name, NULL};
  TestCertSpec spec = {.cn = name, .dns = dns, .issuer = ca};
  return test_cert_new(&spec);
}

static void
fixture_setup(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) err = NULL;
  memset(f, 0, sizeof *f);
  f->dir = g_dir_make_tmp("certserver-XXXXXX", &err);
  g_assert_no_error(err);
  TestCertSpec ca_spec = {.cn = "certserver test CA", .ca = TRUE};
  f->ca = test_cert_new(&ca_spec);
  f->ca_path = g_build_filename(f->dir, "ca.pem", NULL);
  g_autofree char *ca_pem = test_cert_get_pem(f->ca);
  write_file(f->ca_path, ca_pem);
  for (guint i = 0; i < 2; i++) {
    f->tls[i] = leaf_new(f->ca, domains[i]);
    f->served[i] = leaf_new(f->ca, domains[i]);
    g_autofree char *cert_name = g_strdup_printf("%s.crt", domains[i]);
    g_autofree char *key_name = g_strdup_printf("%s.key", domains[i]);
    f->cert_path[i] = g_build_filename(f->dir, cert_name, NULL);
    f->key_path[i] = g_build_filename(f->dir, key_name, NULL);
    g_autofree char *pem = test_cert_get_pem(f->tls[i]);
    g_autofree char *key = test_cert_get_key_pem(f->tls[i]);
    write_file(f->cert_path[i], pem);
    write_file(f->key_path[i], key);
  }
  f->other = leaf_new(f->ca, "a.example");

  f->srv = cert_server_new(&err);
  g_assert_no_error(err);
  for (guint i = 0; i < 2; i++) {
    g_assert_true(cert_server_add_domain(f->srv, domains[i], f->cert_path[i], f->key_path[i],
                                         f->served[i]->der, &err));
    g_assert_no_error(err);
  }
  g_assert_true(cert_server_listen(f->srv, "127.0.0.1:0", &err));
  g_assert_no_error(err);
  f->port = cert_server_get_port(f->srv, 0);
  g_assert_cmpuint(f->port, !=, 0);
}

static void
rm_dir(const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_unlink(path);
  }
  g_rmdir(dir);
}

static void
fixture_teardown(Fixture *f, gconstpointer data)
{
  g_clear_pointer(&f->srv, cert_server_free);
  rm_dir(f->dir);
  for (guint i = 0; i < 2; i++) {
    test_cert_free(f->tls[i]);
    test_cert_free(f->served[i]);
    g_free(f->cert_path[i]);
    g_free(f->key_path[i]);
  }
  test_cert_free(f->other);
  test_cert_free(f->ca);
  g_free(f->ca_path);
  g_free(f->dir);
}

/* ---- running a client script against the main loop ---- */

static gboolean
quit_cb(gpointer data)
{
  g_main_loop_quit(data);
  return G_SOURCE_REMOVE;
}

static gpointer
script_thread(gpointer data)
{
  Fixture *f = data;
  f->script(f);
  g_idle_add(quit_cb, f->loop);
  return NULL;
}

static gboolean
watchdog_cb(gpointer data)
{
  g_printerr("test-certserver: the test did not finish within %d s\n", WATCHDOG_S);
  g_assert_not_reached();
  return G_SOURCE_REMOVE;
}

static void
fixture_run(Fixture *f, void (*script)(Fixture *f))
{
  f->script = (void (*)(gpointer))script;
  f->loop = g_main_loop_new(NULL, FALSE);
  GThread *t = g_thread_new("script", script_thread, f);
  guint wd = g_timeout_add_seconds(WATCHDOG_S, watchdog_cb, NULL);
  g_main_loop_run(f->loop);
  g_source_remove(wd);
  g_thread_join(t);
  g_clear_pointer(&f->loop, g_main_loop_unref);
}

/* ---- a blocking TCP / GnuTLS client ---- */

static int
tcp_connect(guint16 port)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  g_assert_cmpint(fd, >=, 0);
  struct timeval tv = {CLIENT_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof sa), ==, 0);
  return fd;
}

/* TRUE when the peer closed the connection; FALSE on data or timeout. */
static gboolean
tcp_wait_closed(int fd)
{
  char buf[256];
  for (guint i = 0; i < 64; i++) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      return TRUE;
    if (n < 0)
      return FALSE;
  }
  return FALSE;
}

typedef struct {
  int fd;
  gnutls_session_t tls;
  gnutls_certificate_credentials_t creds;
} Client;

static void
client_free(Client *c)
{
  gnutls_deinit(c->tls);
  gnutls_certificate_free_credentials(c->creds);
  close(c->fd);
  g_free(c);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Client, client_free)

/* Connects and handshakes, sending @sni if not NULL and verifying the
 * server's chain against the test CA for @verify_name if not NULL. Returns
 * the handshake's result in @rc. */
static Client *
client_new(Fixture *f, const char *sni, const char *verify_name, const char *priority, int *rc)
{
  Client *c = g_new0(Client, 1);
  c->fd = tcp_connect(f->port);
  g_assert_cmpint(gnutls_certificate_allocate_credentials(&c->creds), ==, 0);
  g_assert_cmpint(
      gnutls_certificate_set_x509_trust_file(c->creds, f->ca_path, GNUTLS_X509_FMT_PEM), ==, 1);
  g_assert_cmpint(gnutls_init(&c->tls, GNUTLS_CLIENT), ==, 0);
  if (priority != NULL)
    g_assert_cmpint(gnutls_priority_set_direct(c->tls, priority, NULL), ==, 0);
  else
    g_assert_cmpint(gnutls_set_default_priority(c->tls), ==, 0);
  g_assert_cmpint(gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, c->creds), ==, 0);
  if (sni != NULL)
    g_assert_cmpint(gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, sni, strlen(sni)), ==, 0);
  if (verify_name != NULL)
    gnutls_session_set_verify_cert(c->tls, verify_name, 0);
  gnutls_transport_set_int(c->tls, c->fd);
  gnutls_handshake_set_timeout(c->tls, CLIENT_TIMEOUT_S * 1000);
  do {
    *rc = gnutls_handshake(c->tls);
  } while (*rc < 0 && !gnutls_error_is_fatal(*rc));
  return c;
}

static Client *
client_connect(Fixture *f, const char *sni)
{
  int rc = 0;
  Client *c = client_new(f, sni, sni, NULL, &rc);
  if (rc < 0)
    g_error("handshake with SNI %s: %s", sni != NULL ? sni : "(none)", gnutls_strerror(rc));
  return c;
}

static GBytes *
client_peer_der(Client *c)
{
  unsigned int n = 0;
  const gnutls_datum_t *chain = gnutls_certificate_get_peers(c->tls, &n);
  g_assert_nonnull(chain);
  g_assert_cmpuint(n, >=, 1);
  return g_bytes_new(chain[0].data, chain[0].size);
}

static void
client_send(Client *c, const char *data, gsize len)
{
  while (len > 0) {
    ssize_t n = gnutls_record_send(c->tls, data, len);
    g_assert_cmpint(n, >, 0);
    data += n;
    len -= (gsize)n;
  }
}

/* Everything the server sends until it closes; the close must come. */
static GByteArray *
client_read_all(Client *c)
{
  GByteArray *all = g_byte_array_new();
  for (guint i = 0; i < 1024; i++) {
    guint8 buf[4096];
    ssize_t n = gnutls_record_recv(c->tls, buf, sizeof buf);
    if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION)
      return all;
    if (n < 0)
      g_error("reading the response: %s", gnutls_strerror((int)n));
    g_byte_array_append(all, buf, (guint)n);
  }
  g_error("the server did not close the connection");
  return NULL;
}

typedef struct {
  guint status;
  GHashTable *headers; /* lower-case name -> value; a repeated name fails */
  GBytes *body;
} Response;

static void
response_free(Response *r)
{
  g_hash_table_unref(r->headers);
  g_bytes_unref(r->body);
  g_free(r);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Response, response_free)

static Response *
response_parse(const GByteArray *raw)
{
  Response *r = g_new0(Response, 1);
  r->headers = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  const char *data = (const char *)raw->data;
  const char *end = g_strstr_len(data, raw->len, "\r\n\r\n");
  g_assert_nonnull(end);
  g_autofree char *head = g_strndup(data, end - data);
  g_auto(GStrv) lines = g_strsplit(head, "\r\n", -1);
  g_assert_true(g_str_has_prefix(lines[0], "HTTP/1.1 "));
  r->status = (guint)g_ascii_strtoull(lines[0] + 9, NULL, 10);
  for (guint i = 1; lines[i] != NULL; i++) {
    const char *colon = strchr(lines[i], ':');
    g_assert_nonnull(colon);
    char *name = g_ascii_strdown(lines[i], colon - lines[i]);
    g_assert_false(g_hash_table_contains(r->headers, name));
    g_hash_table_insert(r->headers, name, g_strstrip(g_strdup(colon + 1)));
  }
  gsize off = (gsize)(end + 4 - data);
  r->body = g_bytes_new(raw->data + off, raw->len - off);
  return r;
}

static const char *
response_header(const Response *r, const char *name)
{
  return g_hash_table_lookup(r->headers, name);
}

/* One request on a fresh connection with SNI @sni. */
static Response *
request(Fixture *f, const char *sni, const char *text, gsize len)
{
  g_autoptr(Client) c = client_connect(f, sni);
  client_send(c, text, len);
  g_autoptr(GByteArray) raw = client_read_all(c);
  return response_parse(raw);
}

static Response *
request_str(Fixture *f, const char *text)
{
  return request(f, "a.example", text, strlen(text));
}

static void
assert_bytes_equal(GBytes *got, GBytes *want)
{
  gsize got_len = 0, want_len = 0;
  const void *got_data = g_bytes_get_data(got, &got_len);
  const void *want_data = g_bytes_get_data(want, &want_len);
  g_assert_cmpmem(got_data, got_len, want_data, want_len);
}

static void
assert_content_length(const Response *r, gsize want)
{
  const char *cl = response_header(r, "content-length");
  g_assert_nonnull(cl);
  g_autofree char *want_s = g_strdup_printf("%" G_GSIZE_FORMAT, want);
  g_assert_cmpstr(cl, ==, want_s);
}

/* ---- tests ---- */

static void
assert_cert_response(const Response *r, GBytes *der)
{
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpstr(response_header(r, "content-type"), ==, "application/pkix-cert");
  g_assert_cmpstr(response_header(r, "cache-control"), ==, "max-age=3600");
  g_assert_cmpstr(response_header(r, "connection"), ==, "close");
  g_assert_nonnull(response_header(r, "date"));
  assert_content_length(r, g_bytes_get_size(der));
  assert_bytes_equal(r->body, der);
}

static void
script_get(Fixture *f)
{
  g_autoptr(Response) a = request_str(f, "GET /a.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n");
  assert_cert_response(a, f->served[0]->der);
  /* any domain's certificate on any connection, whatever its SNI */
  g_autoptr(Response) b = request_str(f, "GET /b.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n");
  assert_cert_response(b, f->served[1]->der);
  /* HTTP/1.0 without Host, a query, and the domain in another case */
  g_autoptr(Response) old = request_str(f, "GET /B.Example.der?x=1 HTTP/1.0\r\n\r\n");
  assert_cert_response(old, f->served[1]->der);
  /* absolute-form target and bare-LF line ends */
  g_autoptr(Response) abs =
      request_str(f, "GET https://a.example/a.example.der HTTP/1.1\nHost: a.example\n\n");
  assert_cert_response(abs, f->served[0]->der);
}

static void
test_get(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_get);
}

static void
script_head(Fixture *f)
{
  g_autoptr(Response) r =
      request_str(f, "HEAD /a.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n");
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpstr(response_header(r, "content-type"), ==, "application/pkix-cert");
  g_assert_cmpstr(response_header(r, "cache-control"), ==, "max-age=3600");
  assert_content_length(r, g_bytes_get_size(f->served[0]->der));
  g_assert_cmpuint(g_bytes_get_size(r->body), ==, 0);
}

static void
test_head(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_head);
}

static void
script_not_found(Fixture *f)
{
  const char *const paths[] = {"/c.example.der", "/", "/a.example", "/a.example.der/",
                               "/../a.example.der"};
  for (guint i = 0; i < G_N_ELEMENTS(paths); i++) {
    g_autofree char *req = g_strdup_printf("GET %s HTTP/1.1\r\nHost: a.example\r\n\r\n", paths[i]);
    g_autoptr(Response) r = request_str(f, req);
    g_assert_cmpuint(r->status, ==, 404);
    g_assert_cmpstr(response_header(r, "connection"), ==, "close");
    g_assert_cmpstr(response_header(r, "content-type"), ==, NULL);
  }
}

static void
test_not_found(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_not_found);
}

static void
script_method(Fixture *f)
{
  const char *const methods[] = {"POST", "PUT", "DELETE", "OPTIONS", "get"};
  for (guint i = 0; i < G_N_ELEMENTS(methods); i++) {
    g_autofree char *req = g_strdup_printf("%s /a.example.der HTTP/1.1\r\nHost: a.example\r\n"
                                           "Content-Length: 0\r\n\r\n",
                                           methods[i]);
    g_autoptr(Response) r = request_str(f, req);
    g_assert_cmpuint(r->status, ==, 405);
    g_assert_cmpstr(response_header(r, "allow"), ==, "GET, HEAD");
    g_assert_cmpstr(response_header(r, "content-type"), ==, NULL);
  }
}

static void
test_method(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_method);
}

static void
script_bad_requests(Fixture *f)
{
  /* a head that never ends within the limit */
  GString *big = g_string_new("GET /a.example.der HTTP/1.1\r\nHost: a.example\r\nX-Pad: ");
  while (big->len <= CERT_SERVER_MAX_HEAD)
    g_string_append_c(big, 'x');
  g_autoptr(Response) r = request(f, "a.example", big->str, big->len);
  g_assert_cmpuint(r->status, ==, 431);
  g_string_free(big, TRUE);

  /* a head just within the limit is served */
  GString *fits = g_string_new("GET /a.example.der HTTP/1.1\r\nHost: a.example\r\nX-Pad: ");
  while (fits->len < CERT_SERVER_MAX_HEAD - 3)
    g_string_append_c(fits, 'x');
  g_string_append(fits, "\r\n\r\n");
  g_autoptr(Response) ok = request(f, "a.example", fits->str, fits->len);
  assert_cert_response(ok, f->served[0]->der);
  g_string_free(fits, TRUE);

  struct {
    const char *req;
    guint status;
  } cases[] = {
      {"GET /a.example.der HTTP/1.1\r\n\r\n", 400},                       /* no Host */
      {"GET /a.example.der HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400}, /* two */
      {"GET /a.example.der HTTP/2.0\r\nHost: a.example\r\n\r\n", 505},
      {"GET /a.example.der\r\n\r\n", 400}, /* HTTP/0.9 */
      {"GET  /a.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n", 400},
      {"GET /a.example.der HTTP/1.1\r\nHost : a.example\r\n\r\n", 400},
      {"GET /a.example.der HTTP/1.1\r\nHost: a.example\r\n folded\r\n\r\n", 400},
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(Response) bad = request_str(f, cases[i].req);
    if (bad->status != cases[i].status)
      g_error("%s: got %u, want %u", g_strescape(cases[i].req, NULL), bad->status,
              cases[i].status);
  }
}

static void
test_bad_requests(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_bad_requests);
}

static void
assert_peer_is(Fixture *f, const char *sni, guint want)
{
  int rc = 0;
  /* no verification here: an unknown name would not verify */
  g_autoptr(Client) c = client_new(f, sni, NULL, NULL, &rc);
  g_assert_cmpint(rc, ==, 0);
  g_autoptr(GBytes) peer = client_peer_der(c);
  assert_bytes_equal(peer, f->tls[want]->der);
}

static void
script_sni(Fixture *f)
{
  assert_peer_is(f, "a.example", 0);
  assert_peer_is(f, "b.example", 1);
  assert_peer_is(f, "B.EXAMPLE", 1);
  assert_peer_is(f, "b.example.", 1);
  assert_peer_is(f, NULL, 0);
  assert_peer_is(f, "unknown.example", 0);
  /* and the chain verifies for the name asked for */
  g_autoptr(Client) c = client_connect(f, "b.example");
  g_assert_cmpuint(gnutls_session_get_verify_cert_status(c->tls), ==, 0);
}

static void
test_sni(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_sni);
}

static void
script_tls_versions(Fixture *f)
{
  int rc = 0;
  g_autoptr(Client) old =
      client_new(f, "a.example", NULL, "NORMAL:-VERS-ALL:+VERS-TLS1.1:+VERS-TLS1.0", &rc);
  g_assert_cmpint(rc, <, 0);
  const char *const ok[] = {"NORMAL:-VERS-ALL:+VERS-TLS1.2", "NORMAL:-VERS-ALL:+VERS-TLS1.3"};
  for (guint i = 0; i < G_N_ELEMENTS(ok); i++) {
    g_autoptr(Client) c = client_new(f, "a.example", "a.example", ok[i], &rc);
    g_assert_cmpint(rc, ==, 0);
    const char *req = "GET /a.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n";
    client_send(c, req, strlen(req));
    g_autoptr(GByteArray) raw = client_read_all(c);
    g_autoptr(Response) r = response_parse(raw);
    assert_cert_response(r, f->served[0]->der);
  }
}

static void
test_tls_versions(Fixture *f, gconstpointer data)
{
  fixture_run(f, script_tls_versions);
}

static void
script_timeout(Fixture *f)
{
  /* silent before the handshake */
  int fd = tcp_connect(f->port);
  g_assert_true(tcp_wait_closed(fd));
  close(fd);
  /* a request head that never ends */
  g_autoptr(Client) c = client_connect(f, "a.example");
  const char *part = "GET /a.example.der HTTP/1.1\r\n";
  client_send(c, part, strlen(part));
  guint8 buf[64];
  ssize_t n = gnutls_record_recv(c->tls, buf, sizeof buf);
  g_assert_true(n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION);
}

static void
test_timeout(Fixture *f, gconstpointer data)
{
  /* short, so the test stays quick; the assertion is only that the
   * server closes, which the client's own 5 s timeout bounds */
  cert_server_set_limits(f->srv, 0, 300);
  fixture_run(f, script_timeout);
}

static void
script_max_connections(Fixture *f)
{
  int held[2];
  for (guint i = 0; i < 2; i++)
    held[i] = tcp_connect(f->port);
  int extra = tcp_connect(f->port);
  g_assert_true(tcp_wait_closed(extra));
  close(extra);
  for (guint i = 0; i < 2; i++)
    close(held[i]);
  /* once the server has seen those two go, it serves again */
  for (guint i = 0;; i++) {
    int rc = 0;
    g_autoptr(Client) c = client_new(f, "a.example", "a.example", NULL, &rc);
    if (rc == 0) {
      const char *req = "GET /a.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n";
      client_send(c, req, strlen(req));
      g_autoptr(GByteArray) raw = client_read_all(c);
      g_autoptr(Response) r = response_parse(raw);
      assert_cert_response(r, f->served[0]->der);
      break;
    }
    g_assert_cmpuint(i, <, 50);
    g_usleep(20000);
  }
}

static void
test_max_connections(Fixture *f, gconstpointer data)
{
  cert_server_set_limits(f->srv, 2, 0);
  fixture_run(f, script_max_connections);
}

static void
script_get_a(Fixture *f)
{
  g_autoptr(Response) r = request_str(f, "GET /a.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n");
  assert_cert_response(r, f->served[0]->der);
  g_autoptr(Response) b = request_str(f, "GET /b.example.der HTTP/1.1\r\nHost: a.example\r\n\r\n");
  g_assert_cmpuint(b->status, ==, 404);
}

static void
script_sni_b_is_a(Fixture *f)
{
  /* after the reload below, b.example's TLS certificate answers for a
   * name that is no longer served: the first domain is b.example */
  assert_peer_is(f, "a.example", 1);
}

static void
test_reload(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) err = NULL;
  /* a failing reload changes nothing */
  CertServerDomain bad[] = {
      {"a.example", f->cert_path[0], f->key_path[0], f->other->der},
      {"b.example", f->cert_path[1], f->key_path[0], f->served[1]->der}, /* wrong key */
  };
  g_assert_false(cert_server_reload(f->srv, bad, G_N_ELEMENTS(bad), &err));
  g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS);
  g_clear_error(&err);
  fixture_run(f, script_get);

  /* a good one replaces everything: a.example serves another DER, and
   * b.example is gone */
  CertServerDomain good[] = {{"a.example", f->cert_path[0], f->key_path[0], f->other->der}};
  g_assert_true(cert_server_reload(f->srv, good, 1, &err));
  g_assert_no_error(err);
  TestCert *old = f->served[0];
  f->served[0] = f->other;
  fixture_run(f, script_get_a);
  f->served[0] = old;

  /* the TLS certificate follows the reload too */
  CertServerDomain swapped[] = {{"b.example", f->cert_path[1], f->key_path[1], f->other->der}};
  g_assert_true(cert_server_reload(f->srv, swapped, 1, &err));
  g_assert_no_error(err);
  fixture_run(f, script_sni_b_is_a);
}

static void
script_curl(Fixture *f)
{
  g_autofree char *url = cert_server_url_for(f->srv, NULL, "b.example");
  g_autofree char *resolve = g_strdup_printf("b.example:%u:127.0.0.1", f->port);
  g_autofree char *out = g_build_filename(f->dir, "fetched.der", NULL);
  g_autofree char *hdr = g_build_filename(f->dir, "fetched.hdr", NULL);
  const char *argv[] = {"curl",
                        "--silent",
                        "--show-error",
                        "--fail",
                        "--max-time",
                        "10",
                        "--cacert",
                        f->ca_path,
                        "--resolve",
                        resolve,
                        "--dump-header",
                        hdr,
                        "--output",
                        out,
                        url,
                        NULL};
  g_autofree char *err_text = NULL;
  int status = 0;
  g_autoptr(GError) err = NULL;
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL,
                             &err_text, &status, &err));
  g_assert_no_error(err);
  if (!g_spawn_check_wait_status(status, &err))
    g_error("curl %s: %s: %s", url, err->message, err_text);
  g_autofree char *body = NULL;
  gsize len = 0;
  g_assert_true(g_file_get_contents(out, &body, &len, &err));
  g_autoptr(GBytes) got = g_bytes_new(body, len);
  assert_bytes_equal(got, f->served[1]->der);
  g_autofree char *headers = NULL;
  g_assert_true(g_file_get_contents(hdr, &headers, NULL, &err));
  g_autofree char *lower = g_ascii_strdown(headers, -1);
  g_assert_nonnull(strstr(lower, "\r\ncontent-type: application/pkix-cert\r\n"));
}

static void
test_curl(Fixture *f, gconstpointer data)
{
  g_autofree char *curl = g_find_program_in_path("curl");
  if (curl == NULL) {
    g_test_skip("curl is not installed");
    return;
  }
  fixture_run(f, script_curl);
}

static void
test_url(Fixture *f, gconstpointer data)
{
  g_autofree char *want = g_strdup_printf("https://a.example:%u/a.example.der", f->port);
  g_autofree char *url = cert_server_url_for(f->srv, NULL, "A.example");
  g_assert_cmpstr(url, ==, want);
  g_autofree char *want6 = g_strdup_printf("https://[2001:db8::1]:%u/b.example.der", f->port);
  g_autofree char *url6 = cert_server_url_for(f->srv, "2001:db8::1", "b.example");
  g_assert_cmpstr(url6, ==, want6);
  g_autofree char *host = g_strdup_printf("https://certs.example:%u/b.example.der", f->port);
  g_autofree char *url_host = cert_server_url_for(f->srv, "certs.example", "b.example");
  g_assert_cmpstr(url_host, ==, host);
  g_assert_null(cert_server_url_for(f->srv, NULL, "c.example"));
}

static void
test_errors(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) err = NULL;
  /* already served */
  g_assert_false(cert_server_add_domain(f->srv, "A.EXAMPLE", f->cert_path[0], f->key_path[0],
                                        f->served[0]->der, &err));
  g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID);
  g_clear_error(&err);
  /* the TLS certificate does not name the domain */
  g_assert_false(cert_server_add_domain(f->srv, "c.example", f->cert_path[0], f->key_path[0],
                                        f->served[0]->der, &err));
  g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_TLS);
  g_clear_error(&err);
  /* not a DNS name */
  g_assert_false(cert_server_add_domain(f->srv, "a.example/x", f->cert_path[0], f->key_path[0],
                                        f->served[0]->der, &err));
  g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID);
  g_clear_error(&err);
  /* the served bytes are not DER (here: PEM) */
  g_autofree char *pem = test_cert_get_pem(f->served[0]);
  g_autoptr(GBytes) pem_bytes = g_bytes_new(pem, strlen(pem));
  g_assert_false(cert_server_add_domain(f->srv, "d.example", f->cert_path[0], f->key_path[0],
                                        pem_bytes, &err));
  g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID);
  g_clear_error(&err);
  /* the key does not belong to the certificate; the message names files,
   * never key material */
  g_assert_false(cert_server_add_domain(f->srv, "a.example", f->cert_path[0], f->key_path[1],
                                        f->served[0]->der, &err));
  g_assert_nonnull(err);
  g_assert_null(strstr(err->message, "PRIVATE KEY"));
  g_clear_error(&err);
  const char *const addrs[] = {"localhost:1", "127.0.0.1:65536", "127.0.0.1",
                               "::1:80",      "[::1]",           "127.0.0.1:"};
  for (guint i = 0; i < G_N_ELEMENTS(addrs); i++) {
    g_assert_false(cert_server_listen(f->srv, addrs[i], &err));
    g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_INVALID);
    g_clear_error(&err);
  }
  /* the port already in use */
  g_autofree char *taken = g_strdup_printf("127.0.0.1:%u", f->port);
  g_assert_false(cert_server_listen(f->srv, taken, &err));
  g_assert_error(err, CERT_SERVER_ERROR, CERT_SERVER_ERROR_LISTEN);
  g_assert_cmpuint(cert_server_get_port(f->srv, 1), ==, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  gnutls_global_init();
#define ADD(path, fn) g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  ADD("/certserver/get", test_get);
  ADD("/certserver/head", test_head);
  ADD("/certserver/not-found", test_not_found);
  ADD("/certserver/method", test_method);
  ADD("/certserver/bad-requests", test_bad_requests);
  ADD("/certserver/sni", test_sni);
  ADD("/certserver/tls-versions", test_tls_versions);
  ADD("/certserver/timeout", test_timeout);
  ADD("/certserver/max-connections", test_max_connections);
  ADD("/certserver/reload", test_reload);
  ADD("/certserver/curl", test_curl);
  ADD("/certserver/url", test_url);
  ADD("/certserver/errors", test_errors);
#undef ADD
  return g_test_run();
}
