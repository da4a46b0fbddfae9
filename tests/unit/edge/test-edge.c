/* Unit tests of server/edge: real TLS over real sockets on 127.0.0.1.
 *
 * The edge runs on the GLib main loop of the test's main thread. Each test
 * "script" runs in a second thread and plays both the TLS client (GnuTLS,
 * blocking, with timeouts) and nua (plain TCP: a listener the edge relays
 * to, and connections to the edge's internal port). Certificates come from
 * a CA generated once per run; nothing is read from the source tree. */
#define G_LOG_DOMAIN "sipcred-test-edge"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "server/edge.h"
#include "server/sipwire.h"

#define IO_TIMEOUT_MS 5000
#define WATCHDOG_S 60

/* Forward-secret AEAD first (ECDHE, then DHE), RSA key transport last, and
 * the RFC 6072 section 10.5 suites TLS_RSA_WITH_AES_128_CBC_SHA and _SHA256
 * (the SHA256 MAC is not in GnuTLS' NORMAL). */
#define RECOMMENDED_PRIORITY                                                                     \
  "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+CHACHA20-POLY1305:"      \
  "+AES-128-GCM:+AES-256-CCM:+AES-128-CCM:+AES-256-CBC:+AES-128-CBC:-KX-ALL:+ECDHE-ECDSA:"       \
  "+ECDHE-RSA:+DHE-RSA:+RSA:+SHA256:%SERVER_PRECEDENCE"

#define PRIO_RSA_AES128_SHA1                                                                     \
  "NORMAL:-KX-ALL:+RSA:-CIPHER-ALL:+AES-128-CBC:-MAC-ALL:+SHA1:-VERS-ALL:+VERS-TLS1.2"
#define PRIO_RSA_AES128_SHA256                                                                   \
  "NORMAL:-KX-ALL:+RSA:-CIPHER-ALL:+AES-128-CBC:-MAC-ALL:+SHA256:-VERS-ALL:+VERS-TLS1.2"

/* ---- Test PKI ---------------------------------------------------------- */

typedef struct {
  char *dir;
  char *ca_file;
  char *a_cert, *a_key;
  char *b_cert, *b_key;
  char *a2_cert;  /* a.example again (same key, serial 0x42): reload */
  char *client_cert, *client_key;
} TestPki;

static TestPki pki;

#define SERIAL_A 0x02
#define SERIAL_A2 0x42

static gnutls_x509_privkey_t
pki_key_new(void)
{
  gnutls_x509_privkey_t key = NULL;
  g_assert_cmpint(gnutls_x509_privkey_init(&key), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_generate(key, GNUTLS_PK_RSA, 2048, 0), ==, 0);
  return key;
}

static void
pki_write(const char *path, gnutls_datum_t *d)
{
  g_autoptr(GError) err = NULL;
  g_assert_true(g_file_set_contents(path, (const char *) d->data, d->size, &err));
  gnutls_free(d->data);
}

static void
pki_write_key(gnutls_x509_privkey_t key, const char *path)
{
  gnutls_datum_t d;
  g_assert_cmpint(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &d), ==, 0);
  pki_write(path, &d);
}

static void
pki_write_crt(gnutls_x509_crt_t crt, const char *path)
{
  gnutls_datum_t d;
  g_assert_cmpint(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d), ==, 0);
  pki_write(path, &d);
}

/* @issuer NULL: self-signed CA. @dns NULL: no SAN. */
static gnutls_x509_crt_t
pki_crt_new(const char *cn, const char *dns, guint8 serial, gnutls_x509_privkey_t key,
            gnutls_x509_crt_t issuer, gnutls_x509_privkey_t issuer_key, gboolean client)
{
  gnutls_x509_crt_t crt = NULL;
  time_t now = time(NULL);
  guint8 key_id[64];
  size_t key_id_len = sizeof key_id;
  g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_version(crt, 3), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_serial(crt, &serial, 1), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_activation_time(crt, now - 3600), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_expiration_time(crt, now + 30 * 86400), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                                strlen(cn)),
                  ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_key(crt, key), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_get_key_id(crt, 0, key_id, &key_id_len), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_subject_key_id(crt, key_id, key_id_len), ==, 0);
  if (issuer == NULL) {
    g_assert_cmpint(gnutls_x509_crt_set_basic_constraints(crt, 1, -1), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_KEY_CERT_SIGN |
                                                           GNUTLS_KEY_CRL_SIGN),
                    ==, 0);
    g_assert_cmpint(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), ==, 0);
    return crt;
  }
  if (dns != NULL)
    g_assert_cmpint(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, dns,
                                                         strlen(dns), GNUTLS_FSAN_SET),
                    ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
                                                         GNUTLS_KEY_KEY_ENCIPHERMENT),
                  ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_key_purpose_oid(crt, client ? GNUTLS_KP_TLS_WWW_CLIENT
                                                                  : GNUTLS_KP_TLS_WWW_SERVER,
                                                      0),
                  ==, 0);
  key_id_len = sizeof key_id;
  g_assert_cmpint(gnutls_x509_crt_get_subject_key_id(issuer, key_id, &key_id_len, NULL), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_set_authority_key_id(crt, key_id, key_id_len), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_sign2(crt, issuer, issuer_key, GNUTLS_DIG_SHA256, 0), ==, 0);
  return crt;
}

static void
pki_setup(void)
{
  g_autoptr(GError) err = NULL;
  pki.dir = g_dir_make_tmp("test-edge-XXXXXX", &err);
  g_assert_no_error(err);
  pki.ca_file = g_build_filename(pki.dir, "ca.pem", NULL);
  pki.a_cert = g_build_filename(pki.dir, "a.pem", NULL);
  pki.a_key = g_build_filename(pki.dir, "a.key", NULL);
  pki.a2_cert = g_build_filename(pki.dir, "a2.pem", NULL);
  pki.b_cert = g_build_filename(pki.dir, "b.pem", NULL);
  pki.b_key = g_build_filename(pki.dir, "b.key", NULL);
  pki.client_cert = g_build_filename(pki.dir, "client.pem", NULL);
  pki.client_key = g_build_filename(pki.dir, "client.key", NULL);

  gnutls_x509_privkey_t ca_key = pki_key_new();
  gnutls_x509_crt_t ca = pki_crt_new("sipcred test CA", NULL, 1, ca_key, NULL, NULL, FALSE);
  pki_write_crt(ca, pki.ca_file);

  gnutls_x509_privkey_t a_key = pki_key_new();
  gnutls_x509_crt_t a = pki_crt_new("a.example", "a.example", SERIAL_A, a_key, ca, ca_key,
                                    FALSE);
  gnutls_x509_crt_t a2 = pki_crt_new("a.example", "a.example", SERIAL_A2, a_key, ca, ca_key,
                                     FALSE);
  pki_write_crt(a, pki.a_cert);
  pki_write_crt(a2, pki.a2_cert);
  pki_write_key(a_key, pki.a_key);

  gnutls_x509_privkey_t b_key = pki_key_new();
  gnutls_x509_crt_t b = pki_crt_new("b.example", "b.example", 3, b_key, ca, ca_key, FALSE);
  pki_write_crt(b, pki.b_cert);
  pki_write_key(b_key, pki.b_key);

  /* The client reuses b's key: key generation is the slow part. */
  gnutls_x509_crt_t cl = pki_crt_new("alice", "alice.client.example", 4, b_key, ca, ca_key,
                                     TRUE);
  pki_write_crt(cl, pki.client_cert);
  pki_write_key(b_key, pki.client_key);

  gnutls_x509_crt_deinit(cl);
  gnutls_x509_crt_deinit(b);
  gnutls_x509_crt_deinit(a2);
  gnutls_x509_crt_deinit(a);
  gnutls_x509_crt_deinit(ca);
  gnutls_x509_privkey_deinit(b_key);
  gnutls_x509_privkey_deinit(a_key);
  gnutls_x509_privkey_deinit(ca_key);
}

static void
pki_teardown(void)
{
  const char *files[] = {pki.ca_file, pki.a_cert, pki.a_key,       pki.a2_cert,
                         pki.b_cert,  pki.b_key,  pki.client_cert, pki.client_key};
  for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
    g_unlink(files[i]);
    g_free((char *) files[i]);
  }
  g_rmdir(pki.dir);
  g_free(pki.dir);
}

/* ---- Configuration ----------------------------------------------------- */

static void
srv_domain_free_test(gpointer p)
{
  SrvDomain *d = p;
  g_free(d->name);
  g_free(d->cert_file);
  g_free(d->key_file);
  g_free(d);
}

static void
cfg_set_cert(SrvConfig *cfg, const char *name, const char *cert, const char *key)
{
  for (guint i = 0; i < cfg->domain_certs->len; i++) {
    SrvDomain *d = g_ptr_array_index(cfg->domain_certs, i);
    if (g_strcmp0(d->name, name) == 0) {
      g_free(d->cert_file);
      g_free(d->key_file);
      d->cert_file = g_strdup(cert);
      d->key_file = g_strdup(key);
      return;
    }
  }
  SrvDomain *d = g_new0(SrvDomain, 1);
  d->name = g_strdup(name);
  d->cert_file = g_strdup(cert);
  d->key_file = g_strdup(key);
  g_ptr_array_add(cfg->domain_certs, d);
}

static void
cfg_init(SrvConfig *cfg)
{
  memset(cfg, 0, sizeof *cfg);
  const char *domains[] = {"a.example", "b.example", NULL};
  const char *listen[] = {"127.0.0.1:0", NULL};
  cfg->domains = g_strdupv((char **) domains);
  cfg->listen = g_strdupv((char **) listen);
  cfg->tls_priority = g_strdup(SRV_TLS_PRIORITY_DEFAULT);
  cfg->handshake_timeout_ms = 5000;
  cfg->idle_timeout_ms = 60000;
  cfg->max_connections = 100;
  cfg->max_connections_per_ip = 50;
  cfg->max_message_size = 65535;
  cfg->domain_certs = g_ptr_array_new_with_free_func(srv_domain_free_test);
  /* b first in the list: the edge must order by [server] domains, not by
   * the order of the [domain] groups. */
  cfg_set_cert(cfg, "b.example", pki.b_cert, pki.b_key);
  cfg_set_cert(cfg, "a.example", pki.a_cert, pki.a_key);
}

static void
cfg_clear(SrvConfig *cfg)
{
  g_strfreev(cfg->domains);
  g_strfreev(cfg->listen);
  g_free(cfg->tls_priority);
  g_ptr_array_unref(cfg->domain_certs);
  memset(cfg, 0, sizeof *cfg);
}

/* ---- Blocking I/O helpers (script thread) ------------------------------ */

/* When set, clients shrink their receive buffer (before connecting, so the
 * TCP window stays small): the edge then has to wait for writability. */
static int client_rcvbuf;

static int
tcp_connect_family(int family, guint16 port)
{
  int fd = socket(family, SOCK_STREAM, 0);
  g_assert_cmpint(fd, >=, 0);
  if (client_rcvbuf > 0)
    g_assert_cmpint(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &client_rcvbuf, sizeof client_rcvbuf),
                    ==, 0);
  int ret;
  if (family == AF_INET6) {
    struct sockaddr_in6 sa = {0};
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(port);
    sa.sin6_addr = in6addr_loopback;
    ret = connect(fd, (struct sockaddr *) &sa, sizeof sa);
  } else {
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ret = connect(fd, (struct sockaddr *) &sa, sizeof sa);
  }
  g_assert_cmpint(ret, ==, 0);
  return fd;
}

static int
tcp_connect(guint16 port)
{
  return tcp_connect_family(AF_INET, port);
}

static guint16
fd_local_port(int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  g_assert_cmpint(getsockname(fd, (struct sockaddr *) &ss, &len), ==, 0);
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
  return ntohs(((struct sockaddr_in *) &ss)->sin_port);
}

static void
fd_send(int fd, const char *text)
{
  gsize len = strlen(text);
  while (len > 0) {
    ssize_t n = send(fd, text, len, MSG_NOSIGNAL);
    g_assert_cmpint(n, >, 0);
    text += n;
    len -= (gsize) n;
  }
}

/* The next SIP message on @fd, or NULL on EOF, error or timeout. */
static GBytes *
fd_read_msg(int fd, SipwireFramer *framer, int timeout_ms)
{
  for (;;) {
    GBytes *out = NULL;
    SipwireFrameResult r = sipwire_framer_next(framer, &out, NULL);
    if (r == SIPWIRE_FRAME_MESSAGE)
      return out;
    if (r == SIPWIRE_FRAME_ERROR)
      return NULL;
    if (r == SIPWIRE_FRAME_PING)
      continue;
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0)
      return NULL;
    guint8 buf[16384];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
      return NULL;
    sipwire_framer_push(framer, buf, (gsize) n);
  }
}

/* TRUE when the peer closes @fd within @timeout_ms (data before is skipped). */
static gboolean
fd_wait_closed(int fd, int timeout_ms)
{
  gint64 deadline = g_get_monotonic_time() + (gint64) timeout_ms * 1000;
  for (;;) {
    int left = (int) ((deadline - g_get_monotonic_time()) / 1000);
    if (left <= 0)
      return FALSE;
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, left) <= 0)
      return FALSE;
    guint8 buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
      return TRUE;
  }
}

static SipwireMsg *
msg_parse(GBytes *bytes)
{
  g_assert_nonnull(bytes);
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(bytes, &len);
  g_autoptr(GError) err = NULL;
  SipwireMsg *msg = sipwire_msg_parse(data, len, &err);
  g_assert_no_error(err);
  return msg;
}

static char *
msg_text(GBytes *bytes)
{
  gsize len = 0;
  const char *data = g_bytes_get_data(bytes, &len);
  return g_strndup(data, len);
}

static guint
msg_count(const SipwireMsg *msg, const char *name)
{
  g_autoptr(GPtrArray) v = sipwire_msg_get_values(msg, name);
  return v->len;
}

/* A response to @req as a UA writes it: Vias and Record-Routes copied. */
static char *
make_response(const SipwireMsg *req, guint status, const char *phrase, const char *extra)
{
  GString *s = g_string_new(NULL);
  g_string_append_printf(s, "SIP/2.0 %u %s\r\n", status, phrase);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(req, "Via");
  for (guint i = 0; i < vias->len; i++)
    g_string_append_printf(s, "Via: %s\r\n", (char *) vias->pdata[i]);
  g_autoptr(GPtrArray) rrs = sipwire_msg_get_values(req, "Record-Route");
  for (guint i = 0; i < rrs->len; i++)
    g_string_append_printf(s, "Record-Route: %s\r\n", (char *) rrs->pdata[i]);
  const char *to = sipwire_msg_get_first(req, "To");
  g_autofree char *tag = sipwire_param_get(to, "tag");
  g_string_append_printf(s, "From: %s\r\nTo: %s%s\r\nCall-ID: %s\r\nCSeq: %s\r\n",
                         sipwire_msg_get_first(req, "From"), to, tag == NULL ? ";tag=uas" : "",
                         sipwire_msg_get_first(req, "Call-ID"),
                         sipwire_msg_get_first(req, "CSeq"));
  if (extra != NULL)
    g_string_append(s, extra);
  g_string_append(s, "Content-Length: 0\r\n\r\n");
  return g_string_free(s, FALSE);
}

/* ---- TLS client -------------------------------------------------------- */

typedef struct {
  int fd;
  gnutls_session_t tls;
  gnutls_certificate_credentials_t cred;
  gnutls_anon_client_credentials_t anon;
  SipwireFramer *framer;
  int hs_ret;
} TestClient;

static TestClient *
client_new_full(int family, guint16 port, const char *sni, const char *priority,
                gboolean anon, gboolean with_cert)
{
  TestClient *c = g_new0(TestClient, 1);
  c->fd = tcp_connect_family(family, port);
  c->framer = sipwire_framer_new(1 << 20);
  g_assert_cmpint(gnutls_init(&c->tls, GNUTLS_CLIENT), ==, 0);
  const char *err_pos = NULL;
  int ret = gnutls_priority_set_direct(c->tls, priority != NULL ? priority : "NORMAL", &err_pos);
  g_assert_cmpint(ret, ==, 0);
  g_assert_cmpint(gnutls_certificate_allocate_credentials(&c->cred), ==, 0);
  g_assert_cmpint(gnutls_certificate_set_x509_trust_file(c->cred, pki.ca_file,
                                                         GNUTLS_X509_FMT_PEM),
                  ==, 1);
  if (with_cert)
    g_assert_cmpint(gnutls_certificate_set_x509_key_file(c->cred, pki.client_cert,
                                                         pki.client_key, GNUTLS_X509_FMT_PEM),
                    ==, 0);
  g_assert_cmpint(gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, c->cred), ==, 0);
  if (anon) {
    g_assert_cmpint(gnutls_anon_allocate_client_credentials(&c->anon), ==, 0);
    g_assert_cmpint(gnutls_credentials_set(c->tls, GNUTLS_CRD_ANON, c->anon), ==, 0);
  }
  if (sni != NULL)
    g_assert_cmpint(gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, sni, strlen(sni)), ==, 0);
  gnutls_transport_set_int(c->tls, c->fd);
  gnutls_handshake_set_timeout(c->tls, IO_TIMEOUT_MS);
  gnutls_record_set_timeout(c->tls, IO_TIMEOUT_MS);
  do {
    ret = gnutls_handshake(c->tls);
  } while (ret < 0 && !gnutls_error_is_fatal(ret));
  c->hs_ret = ret;
  return c;
}

static TestClient *
client_try(guint16 port, const char *sni, const char *priority)
{
  return client_new_full(AF_INET, port, sni, priority, FALSE, FALSE);
}

static void
client_free(TestClient *c)
{
  if (c == NULL)
    return;
  gnutls_deinit(c->tls);
  gnutls_certificate_free_credentials(c->cred);
  if (c->anon != NULL)
    gnutls_anon_free_client_credentials(c->anon);
  close(c->fd);
  sipwire_framer_free(c->framer);
  g_free(c);
}

/* A successful handshake with a certificate valid for @host. */
static TestClient *
client_connect(guint16 port, const char *sni, const char *host)
{
  TestClient *c = client_try(port, sni, NULL);
  if (c->hs_ret < 0)
    g_error("handshake failed: %s", gnutls_strerror(c->hs_ret));
  unsigned int status = 1;
  g_assert_cmpint(gnutls_certificate_verify_peers3(c->tls, host, &status), ==, 0);
  g_assert_cmpuint(status, ==, 0);
  return c;
}

static void
client_send_len(TestClient *c, const char *text, gsize len)
{
  while (len > 0) {
    ssize_t n = gnutls_record_send(c->tls, text, len);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
      continue;
    g_assert_cmpint(n, >, 0);
    text += n;
    len -= (gsize) n;
  }
}

static void
client_send(TestClient *c, const char *text)
{
  client_send_len(c, text, strlen(text));
}

static GBytes *
client_read_msg(TestClient *c, int timeout_ms)
{
  gnutls_record_set_timeout(c->tls, timeout_ms);
  for (;;) {
    GBytes *out = NULL;
    SipwireFrameResult r = sipwire_framer_next(c->framer, &out, NULL);
    if (r == SIPWIRE_FRAME_MESSAGE)
      return out;
    if (r == SIPWIRE_FRAME_ERROR)
      return NULL;
    if (r == SIPWIRE_FRAME_PING)
      continue;
    guint8 buf[16384];
    ssize_t n = gnutls_record_recv(c->tls, buf, sizeof buf);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n <= 0)
      return NULL;
    sipwire_framer_push(c->framer, buf, (gsize) n);
  }
}

/* Raw bytes (for the pong), up to @len. */
static char *
client_read_raw(TestClient *c, gsize len)
{
  gnutls_record_set_timeout(c->tls, IO_TIMEOUT_MS);
  GString *s = g_string_new(NULL);
  while (s->len < len) {
    char buf[64];
    ssize_t n = gnutls_record_recv(c->tls, buf, MIN(sizeof buf, len - s->len));
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n <= 0)
      break;
    g_string_append_len(s, buf, n);
  }
  return g_string_free(s, FALSE);
}

/* TRUE when the edge ends the TLS stream within @timeout_ms. */
static gboolean
client_wait_closed(TestClient *c, int timeout_ms)
{
  gnutls_record_set_timeout(c->tls, timeout_ms);
  for (;;) {
    char buf[4096];
    ssize_t n = gnutls_record_recv(c->tls, buf, sizeof buf);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n > 0)
      continue;
    return n != GNUTLS_E_TIMEDOUT;
  }
}

/* A keep-alive answered with CRLF: the flow is alive. */
static void
client_assert_alive(TestClient *c)
{
  client_send(c, "\r\n\r\n");
  g_autofree char *pong = client_read_raw(c, 2);
  g_assert_cmpstr(pong, ==, "\r\n");
}

static gnutls_x509_crt_t
client_peer_crt(TestClient *c)
{
  unsigned int n = 0;
  const gnutls_datum_t *list = gnutls_certificate_get_peers(c->tls, &n);
  g_assert_nonnull(list);
  g_assert_cmpuint(n, >=, 1);
  gnutls_x509_crt_t crt = NULL;
  g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
  g_assert_cmpint(gnutls_x509_crt_import(crt, &list[0], GNUTLS_X509_FMT_DER), ==, 0);
  return crt;
}

/* The single dNSName of the server certificate the client got. */
static char *
client_peer_san(TestClient *c)
{
  gnutls_x509_crt_t crt = client_peer_crt(c);
  char name[256];
  size_t size = sizeof name;
  unsigned int critical = 0;
  int type = gnutls_x509_crt_get_subject_alt_name(crt, 0, name, &size, &critical);
  g_assert_cmpint(type, ==, GNUTLS_SAN_DNSNAME);
  g_assert_cmpint(gnutls_x509_crt_get_subject_alt_name(crt, 1, name, &size, &critical), ==,
                  GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);
  size = sizeof name;
  gnutls_x509_crt_get_subject_alt_name(crt, 0, name, &size, &critical);
  gnutls_x509_crt_deinit(crt);
  return g_strdup(name);
}

static guint
client_peer_serial(TestClient *c)
{
  gnutls_x509_crt_t crt = client_peer_crt(c);
  guint8 serial[32];
  size_t size = sizeof serial;
  g_assert_cmpint(gnutls_x509_crt_get_serial(crt, serial, &size), ==, 0);
  gnutls_x509_crt_deinit(crt);
  g_assert_cmpuint(size, ==, 1);
  return serial[0];
}

/* ---- Fixture: edge on the main loop, script in a thread ---------------- */

typedef struct _Fixture Fixture;
typedef void (*ScriptFunc)(Fixture *f);

struct _Fixture {
  SrvConfig cfg;
  Edge *edge;
  GMainLoop *loop;
  int nua_listen_fd;
  guint16 nua_port;
  int nua_fd; /* the edge's shared connection to "nua", once accepted */
  SipwireFramer *nua_framer;
  guint16 port;
  guint16 internal_port;
  ScriptFunc script;
  /* results a script hands back to the main thread */
  int result[4];
};

static void
fixture_init(Fixture *f)
{
  memset(f, 0, sizeof *f);
  cfg_init(&f->cfg);
  f->nua_fd = -1;
  f->nua_framer = sipwire_framer_new(1 << 20);
  f->nua_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  g_assert_cmpint(f->nua_listen_fd, >=, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g_assert_cmpint(bind(f->nua_listen_fd, (struct sockaddr *) &sa, sizeof sa), ==, 0);
  g_assert_cmpint(listen(f->nua_listen_fd, 16), ==, 0);
  f->nua_port = fd_local_port(f->nua_listen_fd);
}

static void
fixture_start(Fixture *f)
{
  g_autoptr(GError) err = NULL;
  f->edge = edge_new(&f->cfg, &err);
  g_assert_no_error(err);
  g_assert_nonnull(f->edge);
  g_assert_true(edge_start(f->edge, f->nua_port, &err));
  g_assert_no_error(err);
  f->port = edge_get_public_port(f->edge);
  f->internal_port = edge_get_internal_port(f->edge);
  g_assert_cmpuint(f->port, !=, 0);
  g_assert_cmpuint(f->internal_port, !=, 0);
  g_assert_cmpuint(f->port, !=, f->internal_port);
}

static void
fixture_clear(Fixture *f)
{
  g_clear_pointer(&f->edge, edge_free);
  if (f->nua_fd >= 0)
    close(f->nua_fd);
  if (f->nua_listen_fd >= 0)
    close(f->nua_listen_fd);
  sipwire_framer_free(f->nua_framer);
  cfg_clear(&f->cfg);
}

static gboolean
quit_cb(gpointer data)
{
  Fixture *f = data;
  g_main_loop_quit(f->loop);
  return G_SOURCE_REMOVE;
}

static gpointer
script_thread(gpointer data)
{
  Fixture *f = data;
  f->script(f);
  g_idle_add(quit_cb, f);
  return NULL;
}

static gboolean
watchdog_cb(gpointer data)
{
  g_printerr("test-edge: the test did not finish within %d s\n", WATCHDOG_S);
  g_assert_not_reached();
  return G_SOURCE_REMOVE;
}

static void
fixture_run(Fixture *f, ScriptFunc script)
{
  f->script = script;
  f->loop = g_main_loop_new(NULL, FALSE);
  GThread *t = g_thread_new("script", script_thread, f);
  guint wd = g_timeout_add_seconds(WATCHDOG_S, watchdog_cb, f);
  g_main_loop_run(f->loop);
  g_source_remove(wd);
  g_thread_join(t);
  g_main_loop_unref(f->loop);
  f->loop = NULL;
}

/* Runs @fn on the main thread (where the edge lives) and waits for it. */
typedef struct {
  GMutex lock;
  GCond cond;
  gboolean done;
  void (*fn)(Fixture *f, gpointer data);
  Fixture *f;
  gpointer data;
} MainCall;

static gboolean
main_call_dispatch(gpointer p)
{
  MainCall *mc = p;
  mc->fn(mc->f, mc->data);
  g_mutex_lock(&mc->lock);
  mc->done = TRUE;
  g_cond_signal(&mc->cond);
  g_mutex_unlock(&mc->lock);
  return G_SOURCE_REMOVE;
}

static void
main_call(Fixture *f, void (*fn)(Fixture *f, gpointer data), gpointer data)
{
  MainCall mc = {0};
  g_mutex_init(&mc.lock);
  g_cond_init(&mc.cond);
  mc.fn = fn;
  mc.f = f;
  mc.data = data;
  g_idle_add(main_call_dispatch, &mc);
  g_mutex_lock(&mc.lock);
  while (!mc.done)
    g_cond_wait(&mc.cond, &mc.lock);
  g_mutex_unlock(&mc.lock);
  g_mutex_clear(&mc.lock);
  g_cond_clear(&mc.cond);
}

static void
n_flows_fn(Fixture *f, gpointer data)
{
  *(guint *) data = edge_get_n_flows(f->edge);
}

static guint
main_n_flows(Fixture *f)
{
  guint n = 0;
  main_call(f, n_flows_fn, &n);
  return n;
}

/* Waits until the edge has @n flows (it learns of closes asynchronously). */
static void
wait_n_flows(Fixture *f, guint n)
{
  gint64 deadline = g_get_monotonic_time() + IO_TIMEOUT_MS * 1000;
  while (main_n_flows(f) != n) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_usleep(10000);
  }
}

typedef struct {
  const char *token;
  gboolean found;
  EdgeFlowInfo info;
} LookupCall;

static void
lookup_fn(Fixture *f, gpointer data)
{
  LookupCall *lc = data;
  lc->found = edge_flow_lookup(f->edge, lc->token, &lc->info);
}

/* ---- nua's side -------------------------------------------------------- */

static void
nua_accept_shared(Fixture *f)
{
  if (f->nua_fd >= 0)
    return;
  struct pollfd p = {f->nua_listen_fd, POLLIN, 0};
  g_assert_cmpint(poll(&p, 1, IO_TIMEOUT_MS), ==, 1);
  f->nua_fd = accept(f->nua_listen_fd, NULL, NULL);
  g_assert_cmpint(f->nua_fd, >=, 0);
}

/* The next message the edge relays to nua. */
static GBytes *
nua_read(Fixture *f)
{
  nua_accept_shared(f);
  return fd_read_msg(f->nua_fd, f->nua_framer, IO_TIMEOUT_MS);
}

/* Sends OPTIONS on @c, plays nua answering 200, and returns the flow token
 * the edge put in its Via. */
static char *
client_get_token(Fixture *f, TestClient *c)
{
  client_send(c, "OPTIONS sips:a.example SIP/2.0\r\n"
                 "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKopt1\r\n"
                 "Max-Forwards: 70\r\n"
                 "From: <sips:alice@a.example>;tag=o1\r\n"
                 "To: <sips:a.example>\r\n"
                 "Call-ID: options-1\r\n"
                 "CSeq: 1 OPTIONS\r\n"
                 "Content-Length: 0\r\n\r\n");
  g_autoptr(GBytes) req_bytes = nua_read(f);
  g_autoptr(SipwireMsg) req = msg_parse(req_bytes);
  g_assert_cmpstr(sipwire_msg_get_method(req), ==, "OPTIONS");
  char *token = sipwire_param_get(sipwire_msg_get_first(req, "Via"), "flow");
  g_assert_nonnull(token);
  g_autofree char *resp = make_response(req, 200, "OK", NULL);
  fd_send(f->nua_fd, resp);
  g_autoptr(GBytes) back = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) msg = msg_parse(back);
  g_assert_cmpuint(sipwire_msg_get_status(msg), ==, 200);
  return token;
}

/* ---- Tests: credentials and SNI ---------------------------------------- */

static void
script_sni(Fixture *f)
{
  struct {
    const char *sni;
    const char *expect;
  } cases[] = {
      {"a.example", "a.example"},
      {"b.example", "b.example"},
      {NULL, "a.example"},              /* no SNI: the first domain */
      {"unknown.example", "a.example"}, /* unknown name: the first domain */
      {"B.EXAMPLE", "b.example"},       /* DNS names are case-insensitive */
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    TestClient *c = client_connect(f->port, cases[i].sni, cases[i].expect);
    g_autofree char *san = client_peer_san(c);
    g_assert_cmpstr(san, ==, cases[i].expect);
    client_free(c);
  }
}

/* Facts of a flow, including the SNI name and the client's certificate. */
static void
script_flow_info(Fixture *f)
{
  TestClient *c = client_new_full(AF_INET, f->port, "b.example", NULL, FALSE, TRUE);
  g_assert_cmpint(c->hs_ret, ==, 0);
  g_autofree char *token = client_get_token(f, c);
  g_assert_cmpuint(strlen(token), >=, 16);

  LookupCall lc = {.token = token};
  main_call(f, lookup_fn, &lc);
  g_assert_true(lc.found);
  g_autofree char *peer = g_strdup_printf("127.0.0.1:%u", fd_local_port(c->fd));
  g_assert_cmpstr(lc.info.peer_addr, ==, peer);
  g_assert_cmpstr(lc.info.sni, ==, "b.example");
  g_assert_cmpstr(lc.info.tls_version, ==,
                  gnutls_protocol_get_name(gnutls_protocol_get_version(c->tls)));
  g_assert_true(g_str_has_prefix(lc.info.cipher_suite, "TLS_"));
  g_assert_nonnull(lc.info.peer_cert_der);
  g_autofree char *client_pem = NULL;
  gsize pem_len = 0;
  g_assert_true(g_file_get_contents(pki.client_cert, &client_pem, &pem_len, NULL));
  gnutls_datum_t pem = {(unsigned char *) client_pem, (unsigned int) pem_len};
  gnutls_datum_t der = {NULL, 0};
  g_assert_cmpint(gnutls_pem_base64_decode2("CERTIFICATE", &pem, &der), ==, 0);
  g_assert_cmpmem(g_bytes_get_data(lc.info.peer_cert_der, NULL),
                  g_bytes_get_size(lc.info.peer_cert_der), der.data, der.size);
  gnutls_free(der.data);
  edge_flow_info_clear(&lc.info);

  /* Without a client certificate: none reported; SNI absent. */
  TestClient *c2 = client_connect(f->port, NULL, "a.example");
  g_autofree char *token2 = client_get_token(f, c2);
  g_assert_cmpstr(token2, !=, token);
  LookupCall lc2 = {.token = token2};
  main_call(f, lookup_fn, &lc2);
  g_assert_true(lc2.found);
  g_assert_null(lc2.info.sni);
  g_assert_null(lc2.info.peer_cert_der);
  edge_flow_info_clear(&lc2.info);
  g_assert_cmpuint(main_n_flows(f), ==, 2);

  client_free(c);
  wait_n_flows(f, 1);
  LookupCall lc3 = {.token = token};
  main_call(f, lookup_fn, &lc3);
  g_assert_false(lc3.found);
  client_free(c2);
  wait_n_flows(f, 0);
}

/* ---- Tests: cipher-suite policy ---------------------------------------- */

static void
script_refused(Fixture *f)
{
  const char *refused[] = {
      "NORMAL:-VERS-ALL:+VERS-TLS1.0",
      "NORMAL:-VERS-ALL:+VERS-TLS1.1",
      "NONE:+VERS-TLS1.2:+NULL:+SHA1:+SHA256:+RSA:+SIGN-ALL:+COMP-NULL:+GROUP-ALL",
      "NONE:+VERS-TLS1.2:+AES-128-CBC:+AES-128-GCM:+SHA1:+AEAD:+ANON-ECDH:+ANON-DH:+SIGN-ALL:"
      "+COMP-NULL:+GROUP-ALL",
  };
  for (guint i = 0; i < G_N_ELEMENTS(refused); i++) {
    TestClient *c = client_new_full(AF_INET, f->port, "a.example", refused[i], TRUE, FALSE);
    g_test_message("client priority %s: %s", refused[i], gnutls_strerror(c->hs_ret));
    g_assert_cmpint(c->hs_ret, <, 0);
    /* The edge said no (an alert), rather than the client giving up. */
    g_assert_cmpint(c->hs_ret, ==, GNUTLS_E_FATAL_ALERT_RECEIVED);
    client_free(c);
  }
  /* The refusals did not hurt the listener. */
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  client_assert_alive(c);
  client_free(c);
}

static void
test_refused(void)
{
  Fixture f;
  fixture_init(&f);
  g_free(f.cfg.tls_priority);
  /* The floor must win even over a configuration that asks for more. */
  f.cfg.tls_priority = g_strdup("NORMAL:+VERS-TLS1.0:+VERS-TLS1.1:+ANON-ECDH:+NULL");
  fixture_start(&f);
  fixture_run(&f, script_refused);
  fixture_clear(&f);
}

/* result[0], [1]: handshake results for the two RFC 6072 suites;
 * result[2]: cipher, result[3]: mac of the SHA256 one. */
static void
script_rfc6072(Fixture *f)
{
  const char *prio[] = {PRIO_RSA_AES128_SHA1, PRIO_RSA_AES128_SHA256};
  for (guint i = 0; i < 2; i++) {
    TestClient *c = client_try(f->port, "a.example", prio[i]);
    f->result[i] = c->hs_ret;
    if (c->hs_ret == 0) {
      g_assert_cmpint(gnutls_kx_get(c->tls), ==, GNUTLS_KX_RSA);
      g_assert_cmpint(gnutls_cipher_get(c->tls), ==, GNUTLS_CIPHER_AES_128_CBC);
      g_assert_cmpint(gnutls_mac_get(c->tls), ==, i == 0 ? GNUTLS_MAC_SHA1 : GNUTLS_MAC_SHA256);
      g_autofree char *token = client_get_token(f, c);
      LookupCall lc = {.token = token};
      main_call(f, lookup_fn, &lc);
      g_assert_true(lc.found);
      g_assert_cmpstr(lc.info.tls_version, ==, "TLS1.2");
      g_assert_cmpstr(lc.info.cipher_suite, ==,
                      i == 0 ? "TLS_RSA_AES_128_CBC_SHA1" : "TLS_RSA_AES_128_CBC_SHA256");
      edge_flow_info_clear(&lc.info);
    }
    client_free(c);
  }
}

static void
test_rfc6072_recommended(void)
{
  Fixture f;
  fixture_init(&f);
  g_free(f.cfg.tls_priority);
  f.cfg.tls_priority = g_strdup(RECOMMENDED_PRIORITY);
  fixture_start(&f);
  fixture_run(&f, script_rfc6072);
  g_assert_cmpint(f.result[0], ==, 0);
  g_assert_cmpint(f.result[1], ==, 0);
  fixture_clear(&f);
}

static void
test_rfc6072_default(void)
{
  Fixture f;
  fixture_init(&f);
  fixture_start(&f);
  fixture_run(&f, script_rfc6072);
  g_assert_cmpint(f.result[0], ==, 0);
  if (f.result[1] != 0)
    g_test_incomplete("SRV_TLS_PRIORITY_DEFAULT does not accept TLS_RSA_WITH_AES_128_CBC_SHA256 "
                      "(needs +SHA256; see RECOMMENDED_PRIORITY)");
  fixture_clear(&f);
}

/* The server's order wins: a client preferring RSA-CBC still gets ECDHE AEAD. */
static void
script_precedence(Fixture *f)
{
  TestClient *c = client_try(f->port, "a.example",
                             "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-CBC:"
                             "+AES-128-GCM:-KX-ALL:+RSA:+DHE-RSA:+ECDHE-RSA:-MAC-ALL:+SHA1:+AEAD");
  g_assert_cmpint(c->hs_ret, ==, 0);
  g_assert_cmpint(gnutls_kx_get(c->tls), ==, GNUTLS_KX_ECDHE_RSA);
  g_assert_cmpint(gnutls_cipher_get(c->tls), ==, GNUTLS_CIPHER_AES_128_GCM);
  client_free(c);
  /* Without ECDHE, DHE (forward secret) beats RSA key transport. */
  c = client_try(f->port, "a.example",
                 "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-CBC:+AES-128-GCM:"
                 "-KX-ALL:+RSA:+DHE-RSA:-MAC-ALL:+SHA1:+AEAD");
  g_assert_cmpint(c->hs_ret, ==, 0);
  g_assert_cmpint(gnutls_kx_get(c->tls), ==, GNUTLS_KX_DHE_RSA);
  g_assert_cmpint(gnutls_cipher_get(c->tls), ==, GNUTLS_CIPHER_AES_128_GCM);
  client_free(c);
  /* A default client gets TLS 1.3. */
  c = client_connect(f->port, "a.example", "a.example");
  g_assert_cmpint(gnutls_protocol_get_version(c->tls), ==, GNUTLS_TLS1_3);
  client_free(c);
}

static void
test_precedence(void)
{
  Fixture f;
  fixture_init(&f);
  g_free(f.cfg.tls_priority);
  f.cfg.tls_priority = g_strdup(RECOMMENDED_PRIORITY);
  fixture_start(&f);
  fixture_run(&f, script_precedence);
  fixture_clear(&f);
}

static void
test_config_errors(void)
{
  SrvConfig cfg;
  g_autoptr(GError) err = NULL;

  cfg_init(&cfg);
  g_free(cfg.tls_priority);
  cfg.tls_priority = g_strdup("NORMAL:+BOGUS-THING");
  g_assert_null(edge_new(&cfg, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_TLS);
  g_assert_nonnull(strstr(err->message, "position 8"));
  g_clear_error(&err);

  g_free(cfg.tls_priority);
  cfg.tls_priority = g_strdup("NONE");
  g_assert_null(edge_new(&cfg, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_TLS);
  g_clear_error(&err);

  /* Valid for GnuTLS, but no TLS 1.2/1.3 left: refused by the policy check. */
  g_free(cfg.tls_priority);
  cfg.tls_priority = g_strdup("NONE:+VERS-DTLS1.2:+AES-128-GCM:+AEAD:+ECDHE-RSA:+SIGN-ALL:"
                              "+GROUP-ALL:+COMP-NULL");
  g_assert_null(edge_new(&cfg, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_POLICY);
  g_assert_nonnull(strstr(err->message, "TLS 1.2"));
  g_clear_error(&err);
  cfg_clear(&cfg);

  /* A certificate that does not name its domain. */
  cfg_init(&cfg);
  cfg_set_cert(&cfg, "b.example", pki.a_cert, pki.a_key);
  g_assert_null(edge_new(&cfg, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_TLS);
  g_assert_nonnull(strstr(err->message, "b.example"));
  g_clear_error(&err);
  cfg_clear(&cfg);

  /* A key that does not match the certificate. */
  cfg_init(&cfg);
  cfg_set_cert(&cfg, "a.example", pki.a_cert, pki.b_key);
  g_assert_null(edge_new(&cfg, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_TLS);
  g_clear_error(&err);
  cfg_clear(&cfg);

  /* A served domain without a certificate. */
  cfg_init(&cfg);
  g_ptr_array_remove_index(cfg.domain_certs, 0); /* b.example */
  g_assert_null(edge_new(&cfg, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_TLS);
  g_assert_nonnull(strstr(err->message, "b.example"));
  g_clear_error(&err);
  cfg_clear(&cfg);

  /* Bad listen address: edge_start fails. */
  cfg_init(&cfg);
  g_strfreev(cfg.listen);
  const char *bad[] = {"127.0.0.1:0", "::1:5061", NULL};
  cfg.listen = g_strdupv((char **) bad);
  Edge *edge = edge_new(&cfg, &err);
  g_assert_no_error(err);
  g_assert_false(edge_start(edge, 5060, &err));
  g_assert_error(err, EDGE_ERROR, EDGE_ERROR_LISTEN);
  g_clear_error(&err);
  edge_free(edge);
  cfg_clear(&cfg);
}

/* ---- Tests: relay ------------------------------------------------------ */

static char *
make_subscribe(guint16 internal_port)
{
  /* Also tries to spoof the internal side: a flow= parameter and a Route to
   * the internal listener, which the edge must strip. */
  return g_strdup_printf("SUBSCRIBE sips:alice@a.example SIP/2.0\r\n"
                         "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKsub1;rport;flow=FAKE\r\n"
                         "Route: <sip:FAKE@127.0.0.1:%u;transport=tcp;lr>\r\n"
                         "Max-Forwards: 70\r\n"
                         "From: <sips:alice@a.example>;tag=fromtag\r\n"
                         "To: <sips:alice@a.example>\r\n"
                         "Call-ID: sub-call-1\r\n"
                         "CSeq: 1 SUBSCRIBE\r\n"
                         "Contact: <sips:alice@client.invalid>\r\n"
                         "Event: certificate\r\n"
                         "Expires: 3600\r\n"
                         "Content-Length: 0\r\n\r\n",
                         internal_port);
}

static char *
make_notify(Fixture *f, const char *token, const char *branch, guint cseq)
{
  return g_strdup_printf("NOTIFY sips:alice@client.invalid SIP/2.0\r\n"
                         "Via: SIP/2.0/TCP 127.0.0.1:%u;branch=%s;rport\r\n"
                         "Route: <sip:%s@127.0.0.1:%u;transport=tcp;lr>\r\n"
                         "Max-Forwards: 70\r\n"
                         "From: <sips:alice@a.example>;tag=nuatag\r\n"
                         "To: <sips:alice@a.example>;tag=fromtag\r\n"
                         "Call-ID: sub-call-1\r\n"
                         "CSeq: %u NOTIFY\r\n"
                         "Contact: <sip:a.example:%u;maddr=127.0.0.1;transport=tcp>\r\n"
                         "Event: certificate\r\n"
                         "Subscription-State: active;expires=3600\r\n"
                         "Content-Type: application/pkix-cert\r\n"
                         "Content-Length: 5\r\n\r\n"
                         "HELLO",
                         f->nua_port, branch, token, f->internal_port, cseq, f->nua_port);
}

static void
script_relay(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  guint16 cport = fd_local_port(c->fd);

  /* Client SUBSCRIBE -> nua */
  g_autofree char *sub = make_subscribe(f->internal_port);
  client_send(c, sub);
  g_autoptr(GBytes) req_bytes = nua_read(f);
  g_autoptr(SipwireMsg) req = msg_parse(req_bytes);
  g_assert_cmpstr(sipwire_msg_get_method(req), ==, "SUBSCRIBE");
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(req, "Via");
  g_assert_cmpuint(vias->len, ==, 2);
  g_autofree char *edge_via_prefix = g_strdup_printf("SIP/2.0/TCP 127.0.0.1:%u;",
                                                     f->internal_port);
  g_assert_true(g_str_has_prefix(vias->pdata[0], edge_via_prefix));
  g_autofree char *token = sipwire_param_get(vias->pdata[0], "flow");
  g_assert_nonnull(token);
  g_assert_cmpuint(strlen(token), >=, 16);
  g_assert_cmpstr(token, !=, "FAKE");
  g_autofree char *received = sipwire_param_get(vias->pdata[1], "received");
  g_autofree char *rport = sipwire_param_get(vias->pdata[1], "rport");
  g_autofree char *client_flow = sipwire_param_get(vias->pdata[1], "flow");
  g_autofree char *cport_str = g_strdup_printf("%u", cport);
  g_assert_cmpstr(received, ==, "127.0.0.1");
  g_assert_cmpstr(rport, ==, cport_str);
  g_assert_null(client_flow);
  g_assert_cmpuint(msg_count(req, "Route"), ==, 0);
  g_autoptr(GPtrArray) rrs = sipwire_msg_get_values(req, "Record-Route");
  g_assert_cmpuint(rrs->len, ==, 1);
  g_autofree char *rr_expect = g_strdup_printf("<sip:%s@127.0.0.1:%u;transport=tcp;lr>", token,
                                               f->internal_port);
  g_assert_cmpstr(rrs->pdata[0], ==, rr_expect);

  /* nua's 200 -> client: no internal headers, sips Contact */
  g_autofree char *contact = g_strdup_printf(
      "Contact: <sip:a.example:%u;maddr=127.0.0.1;transport=tcp>\r\nExpires: 3600\r\n",
      f->nua_port);
  g_autofree char *ok = make_response(req, 200, "OK", contact);
  fd_send(f->nua_fd, ok);
  g_autoptr(GBytes) ok_bytes = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) ok_msg = msg_parse(ok_bytes);
  g_assert_cmpuint(sipwire_msg_get_status(ok_msg), ==, 200);
  g_autoptr(GPtrArray) ok_vias = sipwire_msg_get_values(ok_msg, "Via");
  g_assert_cmpuint(ok_vias->len, ==, 1);
  g_assert_true(g_str_has_prefix(ok_vias->pdata[0], "SIP/2.0/TLS client.invalid;"));
  g_assert_cmpuint(msg_count(ok_msg, "Record-Route"), ==, 0);
  g_autofree char *ok_text = msg_text(ok_bytes);
  g_assert_null(strstr(ok_text, "flow="));
  g_assert_null(strstr(ok_text, "maddr"));
  g_autofree char *internal_port_str = g_strdup_printf(":%u", f->internal_port);
  g_autofree char *nua_port_str = g_strdup_printf(":%u", f->nua_port);
  g_assert_null(strstr(ok_text, internal_port_str));
  g_assert_null(strstr(ok_text, nua_port_str));
  g_autofree char *public_contact = g_strdup_printf("<sips:a.example:%u>", f->port);
  g_assert_cmpstr(sipwire_msg_get_first(ok_msg, "Contact"), ==, public_contact);

  /* NOTIFY from nua on its own connection to the internal port -> client */
  int ifd = tcp_connect(f->internal_port);
  g_autoptr(SipwireFramer) ifr = sipwire_framer_new(1 << 20);
  g_autofree char *notify = make_notify(f, token, "z9hG4bKnua1", 1);
  fd_send(ifd, notify);
  g_autoptr(GBytes) n_bytes = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) n_msg = msg_parse(n_bytes);
  g_assert_cmpstr(sipwire_msg_get_method(n_msg), ==, "NOTIFY");
  g_autoptr(GPtrArray) n_vias = sipwire_msg_get_values(n_msg, "Via");
  g_assert_cmpuint(n_vias->len, ==, 1);
  g_autofree char *public_via = g_strdup_printf("SIP/2.0/TLS a.example:%u;branch=z9hG4bKnua1",
                                                f->port);
  g_assert_cmpstr(n_vias->pdata[0], ==, public_via);
  g_assert_cmpuint(msg_count(n_msg, "Route"), ==, 0);
  g_assert_cmpstr(sipwire_msg_get_first(n_msg, "Contact"), ==, public_contact);
  g_autoptr(GBytes) body = sipwire_msg_get_body(n_msg);
  g_assert_cmpmem(g_bytes_get_data(body, NULL), g_bytes_get_size(body), "HELLO", 5);
  g_autofree char *n_text = msg_text(n_bytes);
  g_assert_null(strstr(n_text, "127.0.0.1"));

  /* Client 200 -> nua, on the connection the NOTIFY came on, nua's Via back */
  g_autofree char *n_ok = make_response(n_msg, 200, "OK", NULL);
  client_send(c, n_ok);
  g_autoptr(GBytes) back = fd_read_msg(ifd, ifr, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) back_msg = msg_parse(back);
  g_assert_cmpuint(sipwire_msg_get_status(back_msg), ==, 200);
  g_autoptr(GPtrArray) back_vias = sipwire_msg_get_values(back_msg, "Via");
  g_assert_cmpuint(back_vias->len, ==, 1);
  g_autofree char *nua_via = g_strdup_printf("SIP/2.0/TCP 127.0.0.1:%u;branch=z9hG4bKnua1;rport",
                                             f->nua_port);
  g_assert_cmpstr(back_vias->pdata[0], ==, nua_via);

  /* The transaction is over: a repeated 200 goes nowhere. */
  client_send(c, n_ok);
  g_autoptr(GBytes) none = fd_read_msg(ifd, ifr, 300);
  g_assert_null(none);

  /* A second NOTIFY, answered with 100 then 200 (provisional keeps it). */
  g_autofree char *notify2 = make_notify(f, token, "z9hG4bKnua2", 2);
  fd_send(ifd, notify2);
  g_autoptr(GBytes) n2_bytes = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) n2 = msg_parse(n2_bytes);
  g_autofree char *n2_trying = make_response(n2, 100, "Trying", NULL);
  g_autofree char *n2_ok = make_response(n2, 200, "OK", NULL);
  client_send(c, n2_trying);
  client_send(c, n2_ok);
  g_autoptr(GBytes) b1 = fd_read_msg(ifd, ifr, IO_TIMEOUT_MS);
  g_autoptr(GBytes) b2 = fd_read_msg(ifd, ifr, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) m1 = msg_parse(b1);
  g_autoptr(SipwireMsg) m2 = msg_parse(b2);
  g_assert_cmpuint(sipwire_msg_get_status(m1), ==, 100);
  g_assert_cmpuint(sipwire_msg_get_status(m2), ==, 200);

  /* nua's connection closed: the client's answer comes on the shared one. */
  g_autofree char *notify3 = make_notify(f, token, "z9hG4bKnua3", 3);
  fd_send(ifd, notify3);
  g_autoptr(GBytes) n3_bytes = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) n3 = msg_parse(n3_bytes);
  close(ifd);
  g_usleep(100000);
  g_autofree char *n3_ok = make_response(n3, 200, "OK", NULL);
  client_send(c, n3_ok);
  g_autoptr(GBytes) b3 = nua_read(f);
  g_autoptr(SipwireMsg) m3 = msg_parse(b3);
  g_assert_cmpuint(sipwire_msg_get_status(m3), ==, 200);
  g_assert_cmpstr(sipwire_msg_get_first(m3, "CSeq"), ==, "3 NOTIFY");

  client_free(c);
}

static void
script_flow_failed(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *token = client_get_token(f, c);
  client_free(c);
  wait_n_flows(f, 0);

  int ifd = tcp_connect(f->internal_port);
  g_autoptr(SipwireFramer) ifr = sipwire_framer_new(1 << 20);
  const char *tokens[] = {token, "NoSuchFlowToken1234"};
  for (guint i = 0; i < G_N_ELEMENTS(tokens); i++) {
    g_autofree char *branch = g_strdup_printf("z9hG4bKgone%u", i);
    g_autofree char *notify = make_notify(f, tokens[i], branch, i + 1);
    fd_send(ifd, notify);
    g_autoptr(GBytes) resp = fd_read_msg(ifd, ifr, IO_TIMEOUT_MS);
    g_autoptr(SipwireMsg) msg = msg_parse(resp);
    g_assert_cmpuint(sipwire_msg_get_status(msg), ==, 430);
    g_autofree char *text = msg_text(resp);
    g_assert_true(g_str_has_prefix(text, "SIP/2.0 430 Flow Failed\r\n"));
    /* Answered as nua sent it: its own Via, untouched. */
    g_autofree char *via = g_strdup_printf("SIP/2.0/TCP 127.0.0.1:%u;branch=%s;rport",
                                           f->nua_port, branch);
    g_assert_cmpstr(sipwire_msg_get_first(msg, "Via"), ==, via);
  }
  close(ifd);
}

/* nua's own name (a served domain with nua's or the edge's internal port)
 * in a client's Via, Route or Record-Route never reaches nua. */
static void
script_strip_nua_name(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *sub = g_strdup_printf(
      "SUBSCRIBE sips:alice@a.example SIP/2.0\r\n"
      "Via: SIP/2.0/TCP a.example:%u;branch=z9hG4bKnuaname\r\n"
      "Via: SIP/2.0/TCP B.EXAMPLE:%u;branch=z9hG4bKedgename\r\n"
      "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKsub2\r\n"
      "Route: <sip:b.example:%u;transport=tcp;lr>\r\n"
      "Record-Route: <sip:a.example:%u;transport=tcp;lr>, <sip:proxy.invalid;lr>\r\n"
      "Max-Forwards: 70\r\n"
      "From: <sips:alice@a.example>;tag=fromtag\r\n"
      "To: <sips:alice@a.example>\r\n"
      "Call-ID: sub-call-2\r\n"
      "CSeq: 1 SUBSCRIBE\r\n"
      "Contact: <sips:alice@client.invalid>\r\n"
      "Event: certificate\r\n"
      "Content-Length: 0\r\n\r\n",
      f->nua_port, f->internal_port, f->internal_port, f->nua_port);
  client_send(c, sub);
  g_autoptr(GBytes) req_bytes = nua_read(f);
  g_autoptr(SipwireMsg) req = msg_parse(req_bytes);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(req, "Via");
  g_assert_cmpuint(vias->len, ==, 2);
  g_autofree char *token = sipwire_param_get(vias->pdata[0], "flow");
  g_assert_nonnull(token);
  g_assert_true(
      g_str_has_prefix(vias->pdata[1], "SIP/2.0/TLS client.invalid;branch=z9hG4bKsub2;"));
  g_assert_cmpuint(msg_count(req, "Route"), ==, 0);
  g_autoptr(GPtrArray) rrs = sipwire_msg_get_values(req, "Record-Route");
  g_assert_cmpuint(rrs->len, ==, 2);
  g_autofree char *rr_expect =
      g_strdup_printf("<sip:%s@127.0.0.1:%u;transport=tcp;lr>", token, f->internal_port);
  g_assert_cmpstr(rrs->pdata[0], ==, rr_expect);
  g_assert_cmpstr(rrs->pdata[1], ==, "<sip:proxy.invalid;lr>");
  client_free(c);
}

/* A NOTIFY the client never answers gets 430 for its branch and CSeq as
 * soon as the flow goes (not after Timer F), with nua's own Via. */
static void
assert_flow_failed_430(Fixture *f, int ifd, SipwireFramer *ifr, const char *branch,
                       const char *cseq)
{
  gint64 start = g_get_monotonic_time();
  g_autoptr(GBytes) resp = fd_read_msg(ifd, ifr, 1000);
  g_assert_nonnull(resp);
  g_assert_cmpint(g_get_monotonic_time() - start, <, G_USEC_PER_SEC);
  g_autoptr(SipwireMsg) msg = msg_parse(resp);
  g_autofree char *text = msg_text(resp);
  g_assert_true(g_str_has_prefix(text, "SIP/2.0 430 Flow Failed\r\n"));
  g_autofree char *via =
      g_strdup_printf("SIP/2.0/TCP 127.0.0.1:%u;branch=%s;rport", f->nua_port, branch);
  g_assert_cmpuint(msg_count(msg, "Via"), ==, 1);
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Via"), ==, via);
  g_assert_cmpstr(sipwire_msg_get_first(msg, "CSeq"), ==, cseq);
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Call-ID"), ==, "sub-call-1");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "To"), ==, "<sips:alice@a.example>;tag=fromtag");
}

static void
script_flow_dies(Fixture *f)
{
  /* The client closes its TLS connection. */
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *token = client_get_token(f, c);
  int ifd = tcp_connect(f->internal_port);
  g_autoptr(SipwireFramer) ifr = sipwire_framer_new(1 << 20);
  g_autofree char *n1 = make_notify(f, token, "z9hG4bKdie1", 7);
  g_autofree char *n2 = make_notify(f, token, "z9hG4bKdie2", 8);
  fd_send(ifd, n1);
  fd_send(ifd, n2);
  g_autoptr(GBytes) r1 = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(GBytes) r2 = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) m2 = msg_parse(r2);
  g_assert_cmpstr(sipwire_msg_get_first(m2, "CSeq"), ==, "8 NOTIFY");
  /* The second is answered; only the first is left when the flow dies. */
  g_autofree char *ok = make_response(m2, 200, "OK", NULL);
  client_send(c, ok);
  g_autoptr(GBytes) ok_back = fd_read_msg(ifd, ifr, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) ok_msg = msg_parse(ok_back);
  g_assert_cmpuint(sipwire_msg_get_status(ok_msg), ==, 200);
  client_free(c);
  assert_flow_failed_430(f, ifd, ifr, "z9hG4bKdie1", "7 NOTIFY");
  /* Exactly one answer per request: no 430 for the answered one. */
  g_autoptr(GBytes) none = fd_read_msg(ifd, ifr, 300);
  g_assert_null(none);
  wait_n_flows(f, 0);

  /* The edge closes the flow (framing lost), with a NOTIFY pending. */
  c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *token2 = client_get_token(f, c);
  g_autofree char *n3 = make_notify(f, token2, "z9hG4bKdie3", 9);
  fd_send(ifd, n3);
  g_autoptr(GBytes) r3 = client_read_msg(c, IO_TIMEOUT_MS);
  g_assert_nonnull(r3);
  client_send(c, "HELLO THERE\r\nthis is not SIP\r\n\r\n");
  assert_flow_failed_430(f, ifd, ifr, "z9hG4bKdie3", "9 NOTIFY");
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  client_free(c);
  close(ifd);
}

/* Pipelined requests, sent before the edge's connection to nua exists:
 * queued while it opens, relayed complete and in order; a large body
 * crosses several TLS records intact. */
static void
script_pipeline(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  GString *batch = g_string_new(NULL);
  for (guint i = 1; i <= 3; i++)
    g_string_append_printf(batch,
                           "OPTIONS sips:a.example SIP/2.0\r\n"
                           "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKpipe%u\r\n"
                           "From: <sips:alice@a.example>;tag=p\r\nTo: <sips:a.example>\r\n"
                           "Call-ID: pipe\r\nCSeq: %u OPTIONS\r\nContent-Length: 0\r\n\r\n",
                           i, i);
  gsize body_len = 30000;
  g_string_append_printf(batch,
                         "PUBLISH sips:alice@a.example SIP/2.0\r\n"
                         "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKpub\r\n"
                         "From: <sips:alice@a.example>;tag=p\r\nTo: <sips:alice@a.example>\r\n"
                         "Call-ID: pub\r\nCSeq: 4 PUBLISH\r\nEvent: credential\r\n"
                         "Content-Type: application/octet-stream\r\n"
                         "Content-Length: %" G_GSIZE_FORMAT "\r\n\r\n",
                         body_len);
  for (gsize i = 0; i < body_len; i++)
    g_string_append_c(batch, (char) ('a' + i % 26));
  client_send(c, batch->str);
  for (guint i = 1; i <= 4; i++) {
    g_autoptr(GBytes) b = nua_read(f);
    g_autoptr(SipwireMsg) m = msg_parse(b);
    g_autofree char *cseq = g_strdup_printf("%u %s", i, i < 4 ? "OPTIONS" : "PUBLISH");
    g_assert_cmpstr(sipwire_msg_get_first(m, "CSeq"), ==, cseq);
    if (i == 4) {
      g_autoptr(GBytes) body = sipwire_msg_get_body(m);
      const char *sent = strstr(batch->str, "\r\n\r\nabc");
      g_assert_nonnull(sent);
      g_assert_cmpmem(g_bytes_get_data(body, NULL), g_bytes_get_size(body), sent + 4, body_len);
    }
  }
  g_string_free(batch, TRUE);
  client_free(c);
}

/* A burst of large NOTIFYs to a client that is not reading yet: the edge
 * buffers (the socket fills; writes resume when it drains) and everything
 * arrives whole and in order, then the client's answers go back in order. */
#define BURST_N 40
#define BURST_BODY 150000 /* 6 MB in all: more than the kernel buffers (4 MB) */

static void
script_burst(Fixture *f)
{
  client_rcvbuf = 4096;
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  client_rcvbuf = 0;
  g_autofree char *token = client_get_token(f, c);
  int ifd = tcp_connect(f->internal_port);
  g_autoptr(SipwireFramer) ifr = sipwire_framer_new(1 << 20);
  g_autofree char *body = g_malloc(BURST_BODY + 1);
  for (guint i = 0; i < BURST_BODY; i++)
    body[i] = (char) ('A' + i % 26);
  body[BURST_BODY] = '\0';
  for (guint i = 1; i <= BURST_N; i++) {
    g_autofree char *n = g_strdup_printf(
        "NOTIFY sips:alice@client.invalid SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:%u;branch=z9hG4bKburst%u;rport\r\n"
        "Route: <sip:%s@127.0.0.1:%u;transport=tcp;lr>\r\n"
        "From: <sips:alice@a.example>;tag=nuatag\r\nTo: <sips:alice@a.example>;tag=fromtag\r\n"
        "Call-ID: burst\r\nCSeq: %u NOTIFY\r\nEvent: certificate\r\n"
        "Subscription-State: active;expires=3600\r\n"
        "Content-Type: application/pkix-cert\r\nContent-Length: %u\r\n\r\n%s",
        f->nua_port, i, token, f->internal_port, i, BURST_BODY, body);
    fd_send(ifd, n);
  }
  g_usleep(200000); /* let the edge queue everything before the client reads */
  /* Read everything before answering: only writability can drain the edge. */
  GString *answers = g_string_new(NULL);
  for (guint i = 1; i <= BURST_N; i++) {
    g_autoptr(GBytes) b = client_read_msg(c, IO_TIMEOUT_MS);
    g_autoptr(SipwireMsg) m = msg_parse(b);
    g_autofree char *cseq = g_strdup_printf("%u NOTIFY", i);
    g_assert_cmpstr(sipwire_msg_get_first(m, "CSeq"), ==, cseq);
    g_autoptr(GBytes) got = sipwire_msg_get_body(m);
    g_assert_cmpmem(g_bytes_get_data(got, NULL), g_bytes_get_size(got), body, BURST_BODY);
    g_autofree char *ok = make_response(m, 200, "OK", NULL);
    g_string_append(answers, ok);
  }
  client_send(c, answers->str);
  g_string_free(answers, TRUE);
  for (guint i = 1; i <= BURST_N; i++) {
    g_autoptr(GBytes) b = fd_read_msg(ifd, ifr, IO_TIMEOUT_MS);
    g_autoptr(SipwireMsg) m = msg_parse(b);
    g_assert_cmpuint(sipwire_msg_get_status(m), ==, 200);
    g_autofree char *via = g_strdup_printf("SIP/2.0/TCP 127.0.0.1:%u;branch=z9hG4bKburst%u;rport",
                                           f->nua_port, i);
    g_assert_cmpstr(sipwire_msg_get_first(m, "Via"), ==, via);
  }
  close(ifd);
  client_free(c);
}

static void
test_burst(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.max_message_size = 256 * 1024; /* a slow reader may hold 64 times this */
  fixture_start(&f);
  fixture_run(&f, script_burst);
  fixture_clear(&f);
}

/* nua drops the shared connection: the edge opens a new one when needed. */
static void
script_nua_reconnect(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *t1 = client_get_token(f, c);
  close(f->nua_fd);
  f->nua_fd = -1;
  sipwire_framer_free(f->nua_framer);
  f->nua_framer = sipwire_framer_new(1 << 20);
  g_usleep(200000); /* the edge sees the close */
  g_autofree char *t2 = client_get_token(f, c); /* accepts the new connection */
  g_assert_cmpstr(t1, ==, t2);
  client_free(c);
}

/* nua not listening: the client gets 503 rather than silence. */
static void
script_nua_down(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *sub = make_subscribe(f->internal_port);
  client_send(c, sub);
  g_autoptr(GBytes) resp = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) msg = msg_parse(resp);
  g_assert_cmpuint(sipwire_msg_get_status(msg), ==, 503);
  g_assert_cmpstr(sipwire_msg_get_first(msg, "CSeq"), ==, "1 SUBSCRIBE");
  client_assert_alive(c);
  client_free(c);
}

static void
count_nua_warning(const char *domain, GLogLevelFlags level, const char *message,
                  gpointer data)
{
  if (g_str_has_prefix(message, "cannot connect to nua"))
    (*(guint *) data)++;
  else
    g_error("unexpected warning: %s", message);
}

static void
test_nua_down(void)
{
  Fixture f;
  fixture_init(&f);
  close(f.nua_listen_fd); /* nothing listens on nua_port any more */
  f.nua_listen_fd = -1;
  fixture_start(&f);
  /* The edge warns about nua being unreachable; that warning is expected
   * (g_test_expect_message() would also trip on the edge's other logs). */
  guint warnings = 0;
  GLogLevelFlags old_fatal = g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
  guint handler = g_log_set_handler("sipcred-edge", G_LOG_LEVEL_WARNING, count_nua_warning,
                                    &warnings);
  fixture_run(&f, script_nua_down);
  g_log_remove_handler("sipcred-edge", handler);
  g_log_set_always_fatal(old_fatal);
  g_assert_cmpuint(warnings, ==, 1);
  fixture_clear(&f);
}

/* ---- Tests: framing ---------------------------------------------------- */

static void
script_ping(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  client_assert_alive(c);
  client_assert_alive(c);
  client_free(c);
}

static void
script_garbage(Fixture *f)
{
  /* Framing lost (no Content-Length): clean close. */
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  client_send(c, "HELLO THERE\r\nthis is not SIP\r\n\r\n");
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  client_free(c);

  c = client_connect(f->port, "a.example", "a.example");
  /* Framed but no request line to answer: dropped, the flow stays. */
  client_send(c, "FOO\r\nContent-Length: 0\r\n\r\n");
  client_assert_alive(c);
  /* Wrong SIP version: 505. */
  client_send(c, "OPTIONS sips:a.example SIP/3.0\r\n"
                 "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKv3\r\n"
                 "From: <sips:alice@a.example>;tag=v3\r\n"
                 "To: <sips:a.example>\r\n"
                 "Call-ID: v3\r\n"
                 "CSeq: 1 OPTIONS\r\n"
                 "Content-Length: 0\r\n\r\n");
  g_autoptr(GBytes) r1 = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) m1 = msg_parse(r1);
  g_assert_cmpuint(sipwire_msg_get_status(m1), ==, 505);
  g_assert_cmpstr(sipwire_msg_get_first(m1, "Call-ID"), ==, "v3");
  /* Parses, but cannot be relayed (unreadable Route): 400, flow stays. */
  client_send(c, "OPTIONS sips:a.example SIP/2.0\r\n"
                 "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKbad\r\n"
                 "Route: %%%\r\n"
                 "From: <sips:alice@a.example>;tag=bad\r\n"
                 "To: <sips:a.example>\r\n"
                 "Call-ID: bad-route\r\n"
                 "CSeq: 7 OPTIONS\r\n"
                 "Content-Length: 0\r\n\r\n");
  g_autoptr(GBytes) r2 = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) m2 = msg_parse(r2);
  g_assert_cmpuint(sipwire_msg_get_status(m2), ==, 400);
  g_assert_cmpstr(sipwire_msg_get_first(m2, "CSeq"), ==, "7 OPTIONS");
  client_assert_alive(c);
  /* A response nobody asked for is dropped, the flow stays. */
  client_send(c, "SIP/2.0 200 OK\r\n"
                 "Via: SIP/2.0/TLS a.example;branch=z9hG4bKnothing\r\n"
                 "From: <sips:a@a.example>;tag=1\r\nTo: <sips:b@a.example>;tag=2\r\n"
                 "Call-ID: x\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n");
  client_assert_alive(c);
  client_free(c);

  /* Plain TCP garbage instead of a TLS handshake: closed. */
  int fd = tcp_connect(f->port);
  fd_send(fd, "GET / HTTP/1.0\r\n\r\n");
  g_assert_true(fd_wait_closed(fd, IO_TIMEOUT_MS));
  close(fd);

  c = client_connect(f->port, "a.example", "a.example");
  client_assert_alive(c);
  client_free(c);
}

/* A request as a client writes it, around @request_line and @extra (header
 * lines, may hold NUL: hence the explicit length). */
static GString *
make_client_request(const char *request_line, const char *extra, gsize extra_len,
                    const char *call_id, guint cseq)
{
  GString *s = g_string_new(request_line);
  g_string_append_printf(s,
                         "\r\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bK%s\r\n"
                         "Max-Forwards: 70\r\n"
                         "From: <sips:alice@a.example>;tag=u1\r\n",
                         call_id);
  g_string_append_len(s, extra, (gssize) extra_len);
  g_string_append_printf(s,
                         "Call-ID: %s\r\n"
                         "CSeq: %u OPTIONS\r\n"
                         "Content-Length: 0\r\n\r\n",
                         call_id, cseq);
  return s;
}

static gboolean
bytes_contain(GBytes *bytes, const char *needle, gsize len)
{
  return memmem(g_bytes_get_data(bytes, NULL), g_bytes_get_size(bytes), needle, len) != NULL;
}

/* A framed request that does not parse gets the answer of RFC 3261 8.2,
 * built from its bytes (505 for the version, 501 for an unknown method,
 * else 400 saying what is wrong); an ACK or a response gets none. The flow
 * carries on in every case. */
static void
script_unparsable(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  static const char to[] = "To: <sips:a.example>\r\n";
  static const char nul_to[] = "To: \"n\0l\a\x7f\" <sips:a.example>\r\n";
  static const char nul_hdr[] = "To: <sips:a.example>\r\nX-Odd: a\0b\r\n";
  static const struct {
    const char *request_line;
    const char *extra;
    gsize extra_len;
    const char *status_line;
  } cases[] = {
      {"OPTIONS <sips:a.example> SIP/2.0", to, sizeof to - 1,
       "SIP/2.0 400 Request-URI in angle brackets\r\n"},
      {"OPTIONS  sips:a.example  SIP/2.0", to, sizeof to - 1,
       "SIP/2.0 400 More than one space between request line elements\r\n"},
      {"OPTIONS sips:a.example SIP/2.0 ", to, sizeof to - 1,
       "SIP/2.0 400 Whitespace at the end of the request line\r\n"},
      {"OPTIONS sips:a.example; lr SIP/2.0", to, sizeof to - 1,
       "SIP/2.0 400 Whitespace in the Request-URI\r\n"},
      {"OPTIONS sips:a.example SIP/2.0", nul_hdr, sizeof nul_hdr - 1,
       "SIP/2.0 400 Control character in a header\r\n"},
      {"OPTIONS sips:a.example SIP/7.0", to, sizeof to - 1, "SIP/2.0 505 Version Not Supported\r\n"},
      /* The method is looked at before the headers and the version's syntax. */
      {"NEWMETHOD <sips:a.example> SIP/2.0", to, sizeof to - 1,
       "SIP/2.0 501 Not Implemented\r\n"},
      {"!interesting-Method sips:a.example SIP/2.0", nul_to, sizeof nul_to - 1,
       "SIP/2.0 501 Not Implemented\r\n"},
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *call_id = g_strdup_printf("unparsable-%u", i);
    g_autoptr(GString) req = make_client_request(cases[i].request_line, cases[i].extra,
                                                 cases[i].extra_len, call_id, i + 1);
    client_send_len(c, req->str, req->len);
    g_autoptr(GBytes) resp = client_read_msg(c, IO_TIMEOUT_MS);
    g_assert_nonnull(resp);
    gsize n = 0;
    const char *d = g_bytes_get_data(resp, &n);
    g_test_message("%s -> %.*s", cases[i].request_line, (int) MIN(n, 60), d);
    g_assert_true(n > strlen(cases[i].status_line) &&
                  memcmp(d, cases[i].status_line, strlen(cases[i].status_line)) == 0);
    g_autofree char *call_line = g_strdup_printf("\r\nCall-ID: %s\r\n", call_id);
    g_autofree char *cseq_line = g_strdup_printf("\r\nCSeq: %u OPTIONS\r\n", i + 1);
    g_assert_true(bytes_contain(resp, call_line, strlen(call_line)));
    g_assert_true(bytes_contain(resp, cseq_line, strlen(cseq_line)));
    static const char via[] = "\r\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKunparsable-";
    g_assert_true(bytes_contain(resp, via, sizeof via - 1));
    /* The To value comes back as sent, NUL included, with a tag added. */
    gsize to_len = cases[i].extra == nul_to ? sizeof nul_to - 3 : sizeof to - 3;
    g_autoptr(GString) to_tagged = g_string_new("\r\n");
    g_string_append_len(to_tagged, cases[i].extra, (gssize) to_len);
    g_string_append(to_tagged, ";tag=");
    g_assert_true(bytes_contain(resp, to_tagged->str, to_tagged->len));
  }

  /* No answer to an ACK, to a response, or to a request lacking what an
   * answer needs: the next thing the client reads is the keep-alive pong. */
  g_autoptr(GString) ack = make_client_request("ACK <sips:a.example> SIP/2.0", to, sizeof to - 1,
                                               "unparsable-ack", 1);
  client_send_len(c, ack->str, ack->len);
  client_assert_alive(c);
  client_send(c, "SIP/2.0 2000 OK\r\n"
                 "Via: SIP/2.0/TLS a.example;branch=z9hG4bKbadresp\r\n"
                 "From: <sips:a@a.example>;tag=1\r\nTo: <sips:b@a.example>;tag=2\r\n"
                 "Call-ID: r\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n");
  client_assert_alive(c);
  client_send(c, "OPTIONS <sips:a.example> SIP/2.0\r\n"
                 "From: <sips:a@a.example>;tag=1\r\nTo: <sips:b@a.example>\r\n"
                 "Call-ID: novia\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
  client_assert_alive(c);

  /* None of it reached nua, and the flow still relays. */
  g_autoptr(GString) good =
      make_client_request("OPTIONS sips:a.example SIP/2.0", to, sizeof to - 1, "good-after", 9);
  client_send_len(c, good->str, good->len);
  g_autoptr(GBytes) req_bytes = nua_read(f);
  g_autoptr(SipwireMsg) req = msg_parse(req_bytes);
  g_assert_cmpstr(sipwire_msg_get_first(req, "Call-ID"), ==, "good-after");
  g_autofree char *ok = make_response(req, 200, "OK", NULL);
  fd_send(f->nua_fd, ok);
  g_autoptr(GBytes) back = client_read_msg(c, IO_TIMEOUT_MS);
  g_autoptr(SipwireMsg) back_msg = msg_parse(back);
  g_assert_cmpuint(sipwire_msg_get_status(back_msg), ==, 200);
  g_assert_cmpstr(sipwire_msg_get_first(back_msg, "Call-ID"), ==, "good-after");
  client_free(c);
}

/* Framing lost after a good request (RFC 4475 dblreq over a stream): nua's
 * answer to the good request still reaches the client, then the flow closes
 * at once. While it waits, it keeps its place in the connection limits and
 * nua's requests to it get 430. Without an answer it closes after about
 * 2 s. */
static void
script_drain(Fixture *f)
{
  static const char to[] = "To: <sips:a.example>\r\n";
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  g_autofree char *token = client_get_token(f, c);
  g_autoptr(GString) good =
      make_client_request("OPTIONS sips:a.example SIP/2.0", to, sizeof to - 1, "drain-1", 2);
  g_string_append(good, "C\r\n\r\n"); /* a header block without Content-Length */
  client_send_len(c, good->str, good->len);
  g_autoptr(GBytes) req_bytes = nua_read(f);
  g_autoptr(SipwireMsg) req = msg_parse(req_bytes);
  g_assert_cmpstr(sipwire_msg_get_first(req, "Call-ID"), ==, "drain-1");

  /* max-connections-per-ip is 1: the draining flow still holds the slot. */
  TestClient *other = client_try(f->port, "a.example", NULL);
  g_assert_cmpint(other->hs_ret, <, 0);
  client_free(other);
  g_assert_cmpuint(main_n_flows(f), ==, 1);

  int ifd = tcp_connect(f->internal_port);
  g_autoptr(SipwireFramer) ifr = sipwire_framer_new(1 << 20);
  g_autofree char *notify = make_notify(f, token, "z9hG4bKdrain1", 5);
  fd_send(ifd, notify);
  assert_flow_failed_430(f, ifd, ifr, "z9hG4bKdrain1", "5 NOTIFY");
  close(ifd);

  g_usleep(200000);
  g_autofree char *ok = make_response(req, 200, "OK", NULL);
  fd_send(f->nua_fd, ok);
  g_autoptr(GBytes) back = client_read_msg(c, IO_TIMEOUT_MS);
  g_assert_nonnull(back);
  g_autoptr(SipwireMsg) back_msg = msg_parse(back);
  g_assert_cmpuint(sipwire_msg_get_status(back_msg), ==, 200);
  g_assert_cmpstr(sipwire_msg_get_first(back_msg, "Call-ID"), ==, "drain-1");
  /* Nothing else is outstanding: closed well before the 2 s bound. */
  gint64 start = g_get_monotonic_time();
  g_assert_true(client_wait_closed(c, 1000));
  g_assert_cmpint(g_get_monotonic_time() - start, <, G_USEC_PER_SEC);
  client_free(c);
  wait_n_flows(f, 0);

  /* nua does not answer: the flow closes after the drain time. */
  c = client_connect(f->port, "a.example", "a.example");
  g_autoptr(GString) lost =
      make_client_request("OPTIONS sips:a.example SIP/2.0", to, sizeof to - 1, "drain-2", 3);
  g_string_append(lost, "C\r\n\r\n");
  start = g_get_monotonic_time();
  client_send_len(c, lost->str, lost->len);
  g_autoptr(GBytes) lost_req_bytes = nua_read(f);
  g_autoptr(SipwireMsg) lost_req = msg_parse(lost_req_bytes);
  g_assert_cmpstr(sipwire_msg_get_first(lost_req, "Call-ID"), ==, "drain-2");
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  gint64 took = g_get_monotonic_time() - start;
  g_assert_cmpint(took, >=, 1800 * 1000);
  g_assert_cmpint(took, <, 4 * G_USEC_PER_SEC);
  client_free(c);
  wait_n_flows(f, 0);
  /* A late answer goes nowhere and breaks nothing. */
  g_autofree char *late = make_response(lost_req, 200, "OK", NULL);
  fd_send(f->nua_fd, late);
  c = client_connect(f->port, "a.example", "a.example");
  client_assert_alive(c);
  client_free(c);
}

static void
test_drain(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.max_connections_per_ip = 1;
  fixture_start(&f);
  fixture_run(&f, script_drain);
  fixture_clear(&f);
}

/* Framing lost with the headers whole (RFC 4475 ncl, mcl01, inv2543): the
 * client learns why before the close. */
static void
script_unframed(Fixture *f)
{
  static const char to[] = "To: <sips:a.example>\r\n";
  static const struct {
    const char *request_line;
    const char *length; /* Content-Length header line(s) */
    const char *status_line;
  } cases[] = {
      {"OPTIONS sips:a.example SIP/2.0", "Content-Length: -999\r\n",
       "SIP/2.0 400 Invalid Content-Length\r\n"},
      {"OPTIONS sips:a.example SIP/2.0", "Content-Length: 1\r\nl: 2\r\n",
       "SIP/2.0 400 Duplicate Content-Length\r\n"},
      {"OPTIONS sips:a.example SIP/2.0", "", "SIP/2.0 400 No Content-Length on a stream transport\r\n"},
      {"NEWMETHOD sips:a.example SIP/2.0", "", "SIP/2.0 501 Not Implemented\r\n"},
      {"OPTIONS sips:a.example SIP/7.0", "", "SIP/2.0 505 Version Not Supported\r\n"},
      {"ACK sips:a.example SIP/2.0", "", NULL},
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    TestClient *c = client_connect(f->port, "a.example", "a.example");
    g_autofree char *call_id = g_strdup_printf("unframed-%u", i);
    g_autoptr(GString) req = make_client_request(cases[i].request_line, to, sizeof to - 1,
                                                 call_id, i + 1);
    /* Without its Content-Length line, then with the case's. */
    g_assert_true(g_str_has_suffix(req->str, "Content-Length: 0\r\n\r\n"));
    g_string_truncate(req, req->len - strlen("Content-Length: 0\r\n\r\n"));
    g_string_append_printf(req, "%s\r\nsome body", cases[i].length);
    client_send_len(c, req->str, req->len);
    if (cases[i].status_line != NULL) {
      g_autoptr(GBytes) resp = client_read_msg(c, IO_TIMEOUT_MS);
      g_assert_nonnull(resp);
      g_autofree char *text = msg_text(resp);
      g_test_message("%s", text);
      g_assert_true(g_str_has_prefix(text, cases[i].status_line));
      g_autofree char *call_line = g_strdup_printf("\r\nCall-ID: %s\r\n", call_id);
      g_assert_nonnull(strstr(text, call_line));
    }
    /* Closed at once: nothing of this flow is waiting at nua. */
    gint64 start = g_get_monotonic_time();
    g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
    g_assert_cmpint(g_get_monotonic_time() - start, <, G_USEC_PER_SEC);
    client_free(c);
  }
  wait_n_flows(f, 0);
}

static void
script_max_size(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  /* Just under the limit: relayed. */
  g_autofree char *token = client_get_token(f, c);
  g_assert_nonnull(token);
  GString *big = g_string_new("OPTIONS sips:a.example SIP/2.0\r\n"
                              "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKbig\r\n"
                              "X-Padding: ");
  while (big->len < 3000)
    g_string_append_c(big, 'x');
  g_string_append(big, "\r\nContent-Length: 0\r\n\r\n");
  client_send(c, big->str);
  g_string_free(big, TRUE);
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  client_free(c);
  wait_n_flows(f, 0);

  /* A body announced over the limit: the headers are whole, so 513 first. */
  c = client_connect(f->port, "a.example", "a.example");
  client_send(c, "MESSAGE sips:a.example SIP/2.0\r\n"
                 "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKbigbody\r\n"
                 "From: <sips:alice@a.example>;tag=big\r\n"
                 "To: <sips:a.example>\r\n"
                 "Call-ID: big-body\r\n"
                 "CSeq: 1 MESSAGE\r\n"
                 "Content-Length: 100000\r\n\r\n");
  g_autoptr(GBytes) resp = client_read_msg(c, IO_TIMEOUT_MS);
  g_assert_nonnull(resp);
  g_autofree char *text = msg_text(resp);
  g_assert_true(g_str_has_prefix(text, "SIP/2.0 513 Message Too Large\r\n"));
  g_assert_nonnull(strstr(text, "\r\nCall-ID: big-body\r\n"));
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  client_free(c);
  wait_n_flows(f, 0);
}

static void
test_max_size(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.max_message_size = 2048;
  fixture_start(&f);
  fixture_run(&f, script_max_size);
  fixture_clear(&f);
}

/* ---- Tests: limits ----------------------------------------------------- */

static void
script_handshake_timeout(Fixture *f)
{
  gint64 start = g_get_monotonic_time();
  int fd = tcp_connect(f->port);
  g_assert_true(fd_wait_closed(fd, IO_TIMEOUT_MS));
  gint64 elapsed_ms = (g_get_monotonic_time() - start) / 1000;
  g_assert_cmpint(elapsed_ms, >=, 250);
  close(fd);

  /* Half a ClientHello does not buy more time either. */
  fd = tcp_connect(f->port);
  fd_send(fd, "\x16\x03\x01\x02\x00\x01");
  g_assert_true(fd_wait_closed(fd, IO_TIMEOUT_MS));
  close(fd);
}

static void
test_handshake_timeout(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.handshake_timeout_ms = 300;
  fixture_start(&f);
  fixture_run(&f, script_handshake_timeout);
  fixture_clear(&f);
}

static void
script_idle_timeout(Fixture *f)
{
  TestClient *silent = client_connect(f->port, "a.example", "a.example");
  TestClient *chatty = client_connect(f->port, "a.example", "a.example");
  /* A message that never ends (RFC 4475 baddn: no empty line) is answered
   * from what arrived when the flow goes idle. */
  TestClient *partial = client_connect(f->port, "a.example", "a.example");
  client_send(partial, "OPTIONS sips:a.example SIP/2.0\r\n"
                       "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKpartial\r\n"
                       "From: Bell, Alexander <sips:alice@a.example>;tag=43\r\n"
                       "To: <sips:a.example>\r\n"
                       "Call-ID: partial-1\r\n"
                       "CSeq: 3 OPTIONS\r\n"
                       "l: 0\r\n");
  /* Keep-alives every 150 ms keep the flow for longer than the timeout. */
  for (guint i = 0; i < 8; i++) {
    g_usleep(150000);
    client_assert_alive(chatty);
  }
  g_assert_true(client_wait_closed(silent, 100));
  client_assert_alive(chatty);
  client_free(silent);
  g_autoptr(GBytes) resp = client_read_msg(partial, 100);
  g_assert_nonnull(resp);
  g_autofree char *text = msg_text(resp);
  g_assert_true(
      g_str_has_prefix(text, "SIP/2.0 400 Incomplete message when the flow went idle\r\n"));
  g_assert_nonnull(strstr(text, "\r\nCall-ID: partial-1\r\n"));
  g_assert_true(client_wait_closed(partial, 100));
  client_free(partial);
  g_assert_true(client_wait_closed(chatty, IO_TIMEOUT_MS));
  client_free(chatty);
  wait_n_flows(f, 0);
}

static void
test_idle_timeout(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.idle_timeout_ms = 500;
  fixture_start(&f);
  fixture_run(&f, script_idle_timeout);
  fixture_clear(&f);
}

/* A client that stops reading is closed once the edge holds more than 64
 * times max-message-size (at least 1 MiB) for it, instead of growing. */
static void
script_slow_reader(Fixture *f)
{
  client_rcvbuf = 4096;
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  client_rcvbuf = 0;
  g_autofree char *token = client_get_token(f, c);
  int ifd = tcp_connect(f->internal_port);
  g_autofree char *body = g_malloc(BURST_BODY + 1);
  memset(body, 'Z', BURST_BODY);
  body[BURST_BODY] = '\0';
  for (guint i = 1; i <= 60; i++) { /* 9 MB: buffers (4 MB) + cap (4 MiB) */
    g_autofree char *n = g_strdup_printf(
        "NOTIFY sips:alice@client.invalid SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:%u;branch=z9hG4bKslow%u;rport\r\n"
        "Route: <sip:%s@127.0.0.1:%u;transport=tcp;lr>\r\n"
        "From: <sips:alice@a.example>;tag=nuatag\r\nTo: <sips:alice@a.example>;tag=fromtag\r\n"
        "Call-ID: slow\r\nCSeq: %u NOTIFY\r\n"
        "Content-Length: %u\r\n\r\n%s",
        f->nua_port, i, token, f->internal_port, i, BURST_BODY, body);
    fd_send(ifd, n);
  }
  wait_n_flows(f, 0); /* closed while the client has read nothing */
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  client_free(c);
  close(ifd);
}

static void
script_per_ip(Fixture *f)
{
  TestClient *c1 = client_connect(f->port, "a.example", "a.example");
  TestClient *c2 = client_connect(f->port, "a.example", "a.example");
  /* The third from the same address is closed at accept time. */
  TestClient *c3 = client_try(f->port, "a.example", NULL);
  g_assert_cmpint(c3->hs_ret, <, 0);
  client_free(c3);
  client_assert_alive(c1);
  client_assert_alive(c2);
  /* A slot frees up when a connection ends. */
  client_free(c1);
  wait_n_flows(f, 1);
  TestClient *c4 = client_connect(f->port, "a.example", "a.example");
  client_assert_alive(c4);
  client_free(c4);
  client_free(c2);
}

static void
test_per_ip(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.max_connections_per_ip = 2;
  fixture_start(&f);
  fixture_run(&f, script_per_ip);
  fixture_clear(&f);
}

static void
script_max_connections(Fixture *f)
{
  int raw = tcp_connect(f->port); /* counts before its handshake */
  TestClient *c1 = client_connect(f->port, "a.example", "a.example");
  TestClient *c2 = client_try(f->port, "a.example", NULL);
  g_assert_cmpint(c2->hs_ret, <, 0);
  client_free(c2);
  client_assert_alive(c1);
  client_free(c1);
  close(raw);
}

static void
test_max_connections(void)
{
  Fixture f;
  fixture_init(&f);
  f.cfg.max_connections = 2;
  fixture_start(&f);
  fixture_run(&f, script_max_connections);
  fixture_clear(&f);
}

static void
script_ipv6(Fixture *f)
{
  TestClient *c1 = client_new_full(AF_INET6, f->port, "b.example", NULL, FALSE, FALSE);
  g_assert_cmpint(c1->hs_ret, ==, 0);
  g_autofree char *token = client_get_token(f, c1);
  LookupCall lc = {.token = token};
  main_call(f, lookup_fn, &lc);
  g_assert_true(lc.found);
  g_autofree char *peer = g_strdup_printf("[::1]:%u", fd_local_port(c1->fd));
  g_assert_cmpstr(lc.info.peer_addr, ==, peer);
  edge_flow_info_clear(&lc.info);
  /* The per-IP limit counts IPv6 addresses too. */
  TestClient *c2 = client_new_full(AF_INET6, f->port, "b.example", NULL, FALSE, FALSE);
  g_assert_cmpint(c2->hs_ret, <, 0);
  client_free(c2);
  client_free(c1);
}

static void
test_ipv6(void)
{
  int probe = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 sa = {0};
  sa.sin6_family = AF_INET6;
  sa.sin6_addr = in6addr_loopback;
  gboolean have_v6 = probe >= 0 && bind(probe, (struct sockaddr *) &sa, sizeof sa) == 0;
  if (probe >= 0)
    close(probe);
  if (!have_v6) {
    g_test_skip("no IPv6 loopback");
    return;
  }
  Fixture f;
  fixture_init(&f);
  g_strfreev(f.cfg.listen);
  const char *listen[] = {"[::1]:0", "127.0.0.1:0", NULL};
  f.cfg.listen = g_strdupv((char **) listen);
  f.cfg.max_connections_per_ip = 1;
  fixture_start(&f);
  fixture_run(&f, script_ipv6);
  fixture_clear(&f);
}

/* ---- Tests: reload ----------------------------------------------------- */

typedef struct {
  SrvConfig *cfg;
  gboolean ok;
  GError *error;
} ReloadCall;

static void
reload_fn(Fixture *f, gpointer data)
{
  ReloadCall *rc = data;
  rc->ok = edge_reload_credentials(f->edge, rc->cfg, &rc->error);
}

static void
script_reload(Fixture *f)
{
  TestClient *old = client_connect(f->port, NULL, "a.example");
  g_assert_cmpuint(client_peer_serial(old), ==, SERIAL_A);

  SrvConfig cfg;
  cfg_init(&cfg);
  cfg_set_cert(&cfg, "a.example", pki.a2_cert, pki.a_key);
  ReloadCall rc = {.cfg = &cfg};
  main_call(f, reload_fn, &rc);
  g_assert_no_error(rc.error);
  g_assert_true(rc.ok);

  TestClient *fresh = client_connect(f->port, NULL, "a.example");
  g_assert_cmpuint(client_peer_serial(fresh), ==, SERIAL_A2);
  TestClient *fresh_b = client_connect(f->port, "b.example", "b.example");
  client_assert_alive(old);
  client_assert_alive(fresh);

  /* A broken reload changes nothing. */
  cfg_set_cert(&cfg, "a.example", "/nonexistent/a.pem", pki.a_key);
  ReloadCall bad = {.cfg = &cfg};
  main_call(f, reload_fn, &bad);
  g_assert_false(bad.ok);
  g_assert_error(bad.error, EDGE_ERROR, EDGE_ERROR_TLS);
  g_clear_error(&bad.error);
  TestClient *after = client_connect(f->port, NULL, "a.example");
  g_assert_cmpuint(client_peer_serial(after), ==, SERIAL_A2);
  client_assert_alive(old);

  client_free(after);
  client_free(fresh_b);
  client_free(fresh);
  client_free(old);
  cfg_clear(&cfg);
}

/* ---- Stop -------------------------------------------------------------- */

static void
stop_fn(Fixture *f, gpointer data)
{
  edge_stop(f->edge);
}

static void
script_stop(Fixture *f)
{
  TestClient *c = client_connect(f->port, "a.example", "a.example");
  client_assert_alive(c);
  main_call(f, stop_fn, NULL);
  g_assert_true(client_wait_closed(c, IO_TIMEOUT_MS));
  client_free(c);
  g_assert_cmpuint(main_n_flows(f), ==, 0);
  /* Nothing listens any more. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(f->port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g_assert_cmpint(connect(fd, (struct sockaddr *) &sa, sizeof sa), !=, 0);
  close(fd);
}

/* Most tests are one script on a default, started fixture. */
typedef struct {
  ScriptFunc script;
} PlainTest;

static void
run_plain(gconstpointer data)
{
  const PlainTest *t = data;
  Fixture f;
  fixture_init(&f);
  fixture_start(&f);
  fixture_run(&f, t->script);
  fixture_clear(&f);
}

int
main(int argc, char **argv)
{
  signal(SIGPIPE, SIG_IGN);
  g_test_init(&argc, &argv, NULL);
  g_assert_cmpint(gnutls_global_init(), ==, 0);
  pki_setup();

  g_test_add_data_func("/edge/tls/sni", &(const PlainTest){script_sni}, run_plain);
  g_test_add_data_func("/edge/tls/flow-info", &(const PlainTest){script_flow_info}, run_plain);
  g_test_add_func("/edge/tls/refused", test_refused);
  g_test_add_func("/edge/tls/rfc6072-suites/recommended", test_rfc6072_recommended);
  g_test_add_func("/edge/tls/rfc6072-suites/default", test_rfc6072_default);
  g_test_add_func("/edge/tls/server-precedence", test_precedence);
  g_test_add_func("/edge/config/errors", test_config_errors);
  g_test_add_data_func("/edge/relay/round-trip", &(const PlainTest){script_relay}, run_plain);
  g_test_add_data_func("/edge/relay/flow-failed", &(const PlainTest){script_flow_failed}, run_plain);
  g_test_add_data_func("/edge/relay/flow-dies", &(const PlainTest){script_flow_dies}, run_plain);
  g_test_add_data_func("/edge/relay/strip-nua-name", &(const PlainTest){script_strip_nua_name}, run_plain);
  g_test_add_func("/edge/relay/nua-down", test_nua_down);
  g_test_add_data_func("/edge/relay/pipeline", &(const PlainTest){script_pipeline}, run_plain);
  g_test_add_func("/edge/relay/burst", test_burst);
  g_test_add_data_func("/edge/relay/nua-reconnect", &(const PlainTest){script_nua_reconnect}, run_plain);
  g_test_add_data_func("/edge/framing/ping", &(const PlainTest){script_ping}, run_plain);
  g_test_add_data_func("/edge/framing/garbage", &(const PlainTest){script_garbage}, run_plain);
  g_test_add_func("/edge/framing/max-size", test_max_size);
  g_test_add_data_func("/edge/framing/unparsable", &(const PlainTest){script_unparsable}, run_plain);
  g_test_add_func("/edge/framing/drain", test_drain);
  g_test_add_data_func("/edge/framing/unframed", &(const PlainTest){script_unframed}, run_plain);
  g_test_add_func("/edge/limits/handshake-timeout", test_handshake_timeout);
  g_test_add_func("/edge/limits/idle-timeout", test_idle_timeout);
  g_test_add_func("/edge/limits/per-ip", test_per_ip);
  g_test_add_data_func("/edge/limits/slow-reader", &(const PlainTest){script_slow_reader}, run_plain);
  g_test_add_func("/edge/limits/max-connections", test_max_connections);
  g_test_add_func("/edge/listen/ipv6", test_ipv6);
  g_test_add_data_func("/edge/reload", &(const PlainTest){script_reload}, run_plain);
  g_test_add_data_func("/edge/stop", &(const PlainTest){script_stop}, run_plain);

  int ret = g_test_run();
  pki_teardown();
  gnutls_global_deinit();
  return ret;
}
