#define G_LOG_DOMAIN "sipcred-edge"

#include "server/edge.h"

#include "identity/sign.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <sofia-sip/msg.h>
#include <sofia-sip/sip.h>
#include <sofia-sip/sip_header.h>
#include <sofia-sip/sip_util.h>

#include "server/poller.h"
#include "server/sipwire.h"

/* nua and the edge meet on loopback only. */
#define EDGE_INTERNAL_HOST "127.0.0.1"
/* Flow tokens: 22 characters of [A-Za-z0-9] carry about 130 bits. */
#define EDGE_TOKEN_LEN 22
/* A request from nua waits for the client's answer at most Timer F (64*T1). */
#define EDGE_TXN_TTL_US (32 * G_USEC_PER_SEC)
#define EDGE_TXN_MAX 65536
/* Messages held while the connection to nua is being opened. */
#define EDGE_NUA_QUEUE_MAX 4096
/* nua is local and normally drains at once; past this it is stuck. */
#define EDGE_NUA_OUTBUF_MAX ((gsize)64 * 1024 * 1024)
/* nua may send large NOTIFY bodies; clients are bounded by the config. */
#define EDGE_INTERNAL_MAX_MESSAGE ((gsize)4 * 1024 * 1024)
/* A client that does not read its responses may hold this much output. */
#define EDGE_CLIENT_OUTBUF_MIN ((gsize)1024 * 1024)
/* How long a closing connection may take to drain its output. */
#define EDGE_LINGER_MS 2000
/* After a client's framing is lost, how long nua's answers to the requests
 * already relayed from it may still reach it. */
#define EDGE_DRAIN_MS 2000
/* After accept() fails (EMFILE...), the listener pauses this long. */
#define EDGE_ACCEPT_PAUSE_MS 200
#define EDGE_ACCEPT_BATCH 64
/* Reads per wake-up, so one busy client cannot starve the others. */
#define EDGE_READ_BATCH 16

G_DEFINE_QUARK(sipcred - edge - error - quark, edge_error)

typedef enum {
  EDGE_CONN_CLIENT,   /* TLS from a UA */
  EDGE_CONN_NUA_OUT,  /* the one shared connection the edge opens to nua */
  EDGE_CONN_INTERNAL, /* a connection nua opened to the internal listener */
} EdgeConnKind;

/* Credentials shared by every session created while they were current; a
 * reload swaps them for new handshakes and the old ones die with their last
 * session. One GnuTLS credentials object per served domain, in the order of
 * Edge.domains: the edge picks by SNI itself (client_hello_cb), because
 * GnuTLS' own choice among several certificates compares the name
 * case-sensitively and its fallback depends on the key type. */
typedef struct {
  gint ref;
  guint n;
  gnutls_certificate_credentials_t *cred;
} EdgeCreds;

typedef struct _EdgeConn EdgeConn;

struct _EdgeConn {
  gint ref;
  Edge *edge;
  EdgeConnKind kind;
  GSocket *sock;
  char *peer;    /* "IP:PORT" ("[IPv6]:PORT"), for logs and EdgeFlowInfo */
  char *peer_ip; /* without brackets, IPv4-mapped addresses folded to IPv4 */
  guint16 peer_port;

  PollerWatch *watch; /* the socket in the edge's poller */
  PollerTimer *timer; /* CLIENT: handshake, idle or message timeout */
  GSource *linger;    /* bounds the drain of a closing connection */
  GSource *drain;     /* CLIENT, draining: bounds the wait for nua's answers */
  GByteArray *outbuf;
  gsize out_off; /* bytes of outbuf already written */
  SipwireFramer *framer;

  gboolean closed;       /* socket closed and out of every table */
  gboolean closing;      /* no more reading; closes once outbuf drained */
  gboolean draining;     /* CLIENT: no more reading; still sends nua's answers */
  gboolean connecting;   /* NUA_OUT: connect() in progress */
  gboolean flush_queued; /* in Edge.dirty */

  /* EDGE_CONN_CLIENT */
  gnutls_session_t tls;
  EdgeCreds *creds;
  gboolean counted; /* counted in n_clients and per_ip */
  gboolean handshake_done;
  guint16 public_port;
  char *token;       /* set once the handshake is done */
  char *sni;         /* lower case, or NULL */
  char *public_host; /* served domain this flow speaks for */
  char *tls_version;
  char *cipher_suite;
  GBytes *peer_cert;
  gint64 last_rx;   /* monotonic time of the last received bytes */
  guint64 rx_bytes; /* raw bytes read (TLS records included), for logs */
  /* Monotonic time since when a message has been arriving without ending
   * (0: none pending): bounds slowloris clients by message-timeout. */
  gint64 msg_started;
  GQueue send_fifo;   /* EdgeOut* on their way to the client, in order */
  gboolean send_busy; /* the head of send_fifo is in an asynchronous stage */
  guint64 serial;     /* the flow's order key in the signing pool */
  GQueue txns;        /* EdgeTxn* from nua awaiting this client (EdgeTxn.flow_link) */
  /* Requests relayed to nua (ACK aside) minus final answers sent back. Only
   * an estimate (a retransmission counts twice): it lets a draining flow
   * close early, and EDGE_DRAIN_MS bounds the wait when it is too high. */
  guint awaiting;
};

typedef struct {
  Edge *edge;
  GSocket *sock;
  GSource *source;
  GSource *pause;
  guint16 port;
  gboolean internal;
  char *name;
} EdgeListener;

/* A request relayed while the nua connection was still opening. */
typedef struct {
  GBytes *wire;
  char *token;  /* client flow of a client request, for a 503 if nua is unreachable */
  GBytes *orig; /* the client's request as received */
} EdgePending;

/* A request from nua that waits for the client's response. */
typedef struct {
  char *key; /* "BRANCH METHOD": CANCEL shares the branch of its INVITE */
  char *token;
  char *saved_via;
  /* The request as nua sent it: a 430 (flow gone) or 500 (signing failed)
   * is built from it only when needed, not for every NOTIFY. */
  GBytes *request;
  EdgeConn *conn; /* nua connection the request came on (ref) */
  EdgeConn *flow; /* borrowed: a flow fails its txns before it closes */
  gint64 expires;
  GList link;      /* in Edge.txn_order */
  GList flow_link; /* in flow->txns */
} EdgeTxn;

struct _Edge {
  GMainContext *ctx;
  /* Every connection's socket and timer: one source for all of them, so a
   * loop iteration does not cost O(connections) (see server/poller.h). */
  Poller *poller;
  /* Connections with output to send at the end of this poller dispatch:
   * the messages many callbacks of one dispatch produce for one connection
   * (NOTIFYs for one shared flow, 200s for nua) leave in one send(). */
  GPtrArray *dirty; /* EdgeConn* (ref) */
  GStrv domains;
  guint32 subscribe_default_expires; /* see SipwireRelayCtx */
  GStrv listen;
  gnutls_priority_t priority;
  EdgeCreds *creds;
  guint handshake_timeout_ms;
  guint idle_timeout_ms;
  guint message_timeout_ms;
  guint max_connections;
  guint max_connections_per_ip;
  gsize max_message_size;
  gsize client_outbuf_max;

  gboolean started;
  guint16 nua_port;
  GPtrArray *listeners; /* EdgeListener*, public */
  EdgeListener *internal;

  GHashTable *conns;  /* EdgeConn* -> itself; holds one ref each */
  GHashTable *flows;  /* token -> EdgeConn* (borrowed from conns) */
  GHashTable *per_ip; /* peer_ip -> count */
  guint n_clients;

  EdgeConn *nua; /* shared outbound connection, NULL until needed */
  GQueue nua_pending;

  GHashTable *txns; /* key -> EdgeTxn* (owned) */
  GQueue txn_order; /* by expiry, links embedded in EdgeTxn */
  GSource *txn_sweep;

  /* The identity stage (RFC 4474), NULL pool when off. */
  IdentSignPool *sign_pool;
  GHashTable *signers;   /* domain -> IdentSigner* (ref) */
  GHashTable *info_urls; /* domain -> Identity-Info URL */
  IdentAlg sign_alg;
  IdentSignerBackend sign_backend;
  guint64 next_serial;
  guint64 n_signed, n_sign_failed;
  guint64 sign_us_total, sign_us_max; /* submit to signed, on the edge's loop */

  /* Totals for EdgeStats. */
  guint64 n_accepted, n_refused_limit, n_handshakes, n_handshake_failed, n_handshake_timeout;
  guint64 n_message_timeout;
};

/* One message on its way to a client. */
typedef struct {
  GBytes *msg;      /* NULL while the identity stage signs it */
  EdgeConn *flow;   /* borrowed: the flow cancels its jobs before it closes */
  char *txn_key;    /* the nua transaction of a request, may be NULL */
  gint64 submitted; /* monotonic microseconds, for the sign latency */
} EdgeOut;

static void
edge_out_free(gpointer data)
{
  EdgeOut *out = data;
  g_clear_pointer(&out->msg, g_bytes_unref);
  g_free(out->txn_key);
  g_free(out);
}

static void conn_close_now(EdgeConn *c);
static gboolean conn_flush(EdgeConn *c);
static void conn_start_reading(EdgeConn *c);
static void edge_nua_fail_pending(Edge *edge);
static void edge_flow_send_message(EdgeConn *flow, GBytes *msg);
static void edge_flow_fail_txns(EdgeConn *flow);

/* ---- Credentials and priority ------------------------------------------ */

static EdgeCreds *
edge_creds_ref(EdgeCreds *creds)
{
  g_atomic_int_inc(&creds->ref);
  return creds;
}

static void
edge_creds_unref(EdgeCreds *creds)
{
  if (creds == NULL || !g_atomic_int_dec_and_test(&creds->ref))
    return;
  for (guint i = 0; i < creds->n; i++) {
    if (creds->cred[i] != NULL)
      gnutls_certificate_free_credentials(creds->cred[i]);
  }
  g_free(creds->cred);
  g_free(creds);
}

static const SrvDomain *
edge_find_domain_cert(const SrvConfig *cfg, const char *name)
{
  for (guint i = 0; cfg->domain_certs != NULL && i < cfg->domain_certs->len; i++) {
    const SrvDomain *d = g_ptr_array_index(cfg->domain_certs, i);
    if (d->name != NULL && g_ascii_strcasecmp(d->name, name) == 0)
      return d;
  }
  return NULL;
}

/* The leaf at @index must name @domain, or SNI could never select it and
 * clients would reject it anyway. */
static gboolean
edge_creds_check_name(gnutls_certificate_credentials_t cred, int index, const char *domain,
                      GError **error)
{
  gnutls_datum_t der = {NULL, 0};
  gnutls_x509_crt_t crt = NULL;
  int ret = gnutls_certificate_get_crt_raw(cred, index, 0, &der);
  if (ret >= 0)
    ret = gnutls_x509_crt_init(&crt);
  if (ret >= 0)
    ret = gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER);
  if (ret < 0) {
    if (crt != NULL)
      gnutls_x509_crt_deinit(crt);
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "domain %s: cannot read certificate: %s",
                domain, gnutls_strerror(ret));
    return FALSE;
  }
  gboolean ok = gnutls_x509_crt_check_hostname(crt, domain) != 0;
  gnutls_x509_crt_deinit(crt);
  if (!ok) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS,
                "domain %s: the certificate does not name %s (subjectAltName)", domain, domain);
    return FALSE;
  }
  return TRUE;
}

/* A credentials object per served domain, in the order of @domains; the
 * first is the default for clients without (or with an unknown) SNI name. */
static EdgeCreds *
edge_creds_load(const SrvConfig *cfg, const char *const *domains, GError **error)
{
  EdgeCreds *creds = g_new0(EdgeCreds, 1);
  creds->ref = 1;
  creds->n = g_strv_length((char **)domains);
  creds->cred = g_new0(gnutls_certificate_credentials_t, creds->n);

  for (guint i = 0; i < creds->n; i++) {
    const SrvDomain *d = edge_find_domain_cert(cfg, domains[i]);
    if (d == NULL || d->cert_file == NULL || d->key_file == NULL) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS,
                  "domain %s: no certificate and key configured", domains[i]);
      edge_creds_unref(creds);
      return NULL;
    }
    int ret = gnutls_certificate_allocate_credentials(&creds->cred[i]);
    if (ret < 0) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "cannot allocate TLS credentials: %s",
                  gnutls_strerror(ret));
      edge_creds_unref(creds);
      return NULL;
    }
    gnutls_certificate_set_flags(creds->cred[i], GNUTLS_CERTIFICATE_API_V2);
    int index = gnutls_certificate_set_x509_key_file2(creds->cred[i], d->cert_file, d->key_file,
                                                      GNUTLS_X509_FMT_PEM, NULL, 0);
    if (index < 0) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "domain %s: cannot load %s and %s: %s",
                  domains[i], d->cert_file, d->key_file, gnutls_strerror(index));
      edge_creds_unref(creds);
      return NULL;
    }
    if (!edge_creds_check_name(creds->cred[i], index, domains[i], error)) {
      edge_creds_unref(creds);
      return NULL;
    }
    /* DHE-RSA for clients without ECDHE or RFC 7919 groups. */
    gnutls_certificate_set_known_dh_params(creds->cred[i], GNUTLS_SEC_PARAM_MEDIUM);
  }
  return creds;
}

static gboolean
edge_cipher_forbidden(gnutls_cipher_algorithm_t cipher)
{
  switch (cipher) {
  case GNUTLS_CIPHER_NULL:
  case GNUTLS_CIPHER_ARCFOUR_128:
  case GNUTLS_CIPHER_ARCFOUR_40:
  case GNUTLS_CIPHER_RC2_40_CBC:
  case GNUTLS_CIPHER_DES_CBC:
    return TRUE;
  default:
    return FALSE;
  }
}

static gboolean
edge_kx_forbidden(gnutls_kx_algorithm_t kx)
{
  return kx == GNUTLS_KX_ANON_DH || kx == GNUTLS_KX_ANON_ECDH;
}

/* Defence in depth: the floor should already have removed all of this, but
 * a future GnuTLS keyword or system policy must not re-enable it silently. */
static gboolean
edge_priority_check_policy(gnutls_priority_t prio, GError **error)
{
  const unsigned int *list = NULL;
  int n = gnutls_priority_protocol_list(prio, &list);
  gboolean have_tls = FALSE;
  for (int i = 0; i < n; i++) {
    gnutls_protocol_t v = list[i];
    if (v == GNUTLS_SSL3 || v == GNUTLS_TLS1_0 || v == GNUTLS_TLS1_1) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_POLICY, "TLS priority string enables %s",
                  gnutls_protocol_get_name(v));
      return FALSE;
    }
    if (v == GNUTLS_TLS1_2 || v == GNUTLS_TLS1_3)
      have_tls = TRUE;
  }
  if (!have_tls) {
    g_set_error_literal(error, EDGE_ERROR, EDGE_ERROR_POLICY,
                        "TLS priority string enables neither TLS 1.2 nor TLS 1.3");
    return FALSE;
  }

  n = gnutls_priority_cipher_list(prio, &list);
  for (int i = 0; i < n; i++) {
    if (edge_cipher_forbidden(list[i])) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_POLICY, "TLS priority string enables cipher %s",
                  gnutls_cipher_get_name(list[i]));
      return FALSE;
    }
  }
  n = gnutls_priority_kx_list(prio, &list);
  for (int i = 0; i < n; i++) {
    if (edge_kx_forbidden(list[i])) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_POLICY,
                  "TLS priority string enables key exchange %s", gnutls_kx_get_name(list[i]));
      return FALSE;
    }
  }

  guint n_suites = 0;
  for (unsigned int idx = 0;; idx++) {
    unsigned int sidx = 0;
    int ret = gnutls_priority_get_cipher_suite_index(prio, idx, &sidx);
    if (ret == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      break;
    if (ret < 0)
      continue;
    gnutls_kx_algorithm_t kx = 0;
    gnutls_cipher_algorithm_t cipher = 0;
    gnutls_mac_algorithm_t mac = 0;
    gnutls_protocol_t min_version = 0;
    const char *name = gnutls_cipher_suite_info(sidx, NULL, &kx, &cipher, &mac, &min_version);
    if (name == NULL)
      continue;
    if (edge_kx_forbidden(kx) || edge_cipher_forbidden(cipher) || mac == GNUTLS_MAC_NULL ||
        mac == GNUTLS_MAC_MD5) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_POLICY,
                  "TLS priority string enables the cipher suite %s", name);
      return FALSE;
    }
    n_suites++;
  }
  if (n_suites == 0) {
    g_set_error_literal(error, EDGE_ERROR, EDGE_ERROR_POLICY,
                        "TLS priority string enables no cipher suite");
    return FALSE;
  }
  return TRUE;
}

static gboolean
edge_priority_load(const char *configured, gnutls_priority_t *out, GError **error)
{
  if (configured == NULL || *configured == '\0')
    configured = SRV_TLS_PRIORITY_DEFAULT;
  /* A trailing ':' would make the floor's first element empty. */
  g_autofree char *base = g_strdup(configured);
  gsize base_len = strlen(base);
  while (base_len > 0 && base[base_len - 1] == ':')
    base[--base_len] = '\0';
  g_autofree char *full = g_strconcat(base, EDGE_TLS_PRIORITY_FLOOR, NULL);

  const char *err_pos = NULL;
  gnutls_priority_t prio = NULL;
  int ret = gnutls_priority_init(&prio, full, &err_pos);
  if (ret < 0) {
    gsize pos = err_pos != NULL && err_pos >= full ? (gsize)(err_pos - full) : 0;
    if (ret != GNUTLS_E_INVALID_REQUEST)
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "TLS priority string \"%s\": %s", base,
                  gnutls_strerror(ret));
    else if (pos < base_len)
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS,
                  "TLS priority string \"%s\": error at position %" G_GSIZE_FORMAT
                  " (\"%.20s\"): %s",
                  base, pos + 1, base + pos, gnutls_strerror(ret));
    else
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS,
                  "TLS priority string \"%s\" is rejected together with the enforced "
                  "suffix \"%s\": %s",
                  base, EDGE_TLS_PRIORITY_FLOOR, gnutls_strerror(ret));
    return FALSE;
  }
  if (!edge_priority_check_policy(prio, error)) {
    gnutls_priority_deinit(prio);
    return FALSE;
  }
  *out = prio;
  return TRUE;
}

/* ---- Connections ------------------------------------------------------- */

static EdgeConn *
edge_conn_ref(EdgeConn *c)
{
  c->ref++;
  return c;
}

static void
edge_conn_unref(EdgeConn *c)
{
  if (c == NULL || --c->ref > 0)
    return;
  /* Closed before the last ref goes: sources and tables are already gone. */
  if (c->tls != NULL)
    gnutls_deinit(c->tls);
  edge_creds_unref(c->creds);
  g_clear_pointer(&c->framer, sipwire_framer_free);
  g_byte_array_unref(c->outbuf);
  g_queue_clear_full(&c->send_fifo, edge_out_free);
  g_clear_object(&c->sock);
  g_free(c->peer);
  g_free(c->peer_ip);
  g_free(c->token);
  g_free(c->sni);
  g_free(c->public_host);
  g_free(c->tls_version);
  g_free(c->cipher_suite);
  g_clear_pointer(&c->peer_cert, g_bytes_unref);
  g_free(c);
}

static void
edge_conn_unref_cb(gpointer c)
{
  edge_conn_unref(c);
}

static void
edge_source_clear(GSource **source)
{
  if (*source == NULL)
    return;
  g_source_destroy(*source);
  g_source_unref(*source);
  *source = NULL;
}

static void conn_io_cb(PollerEvents events, gpointer data);
static void client_timer_cb(gpointer data);

/* Adds @on and then removes @off from what the poller watches @c for. */
static void
conn_set_interest(EdgeConn *c, PollerEvents on, PollerEvents off)
{
  if (c->watch == NULL)
    return;
  PollerEvents want = (poller_watch_get_events(c->watch) | on) & ~off;
  g_autoptr(GError) err = NULL;
  /* Only a kernel out of memory (or over max_user_watches) refuses; the
   * connection then ends by its timers. */
  if (!poller_watch_set_events(c->watch, want, &err))
    g_warning("%s: %s", c->peer, err->message);
}

static gboolean
conn_is_reading(EdgeConn *c)
{
  return c->watch != NULL && (poller_watch_get_events(c->watch) & POLLER_IN) != 0;
}

static void
conn_timer_stop(EdgeConn *c)
{
  if (c->timer != NULL)
    poller_timer_stop(c->timer);
}

static void
socket_set_nodelay(GSocket *sock)
{
  /* SIP messages are small and latency-bound (fan-out): no Nagle. */
  g_socket_set_option(sock, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
}

static EdgeConn *
edge_conn_new(Edge *edge, EdgeConnKind kind, GSocket *sock)
{
  EdgeConn *c = g_new0(EdgeConn, 1);
  c->ref = 1;
  c->edge = edge;
  c->kind = kind;
  c->sock = sock;
  c->outbuf = g_byte_array_new();
  c->framer = sipwire_framer_new(kind == EDGE_CONN_CLIENT
                                     ? edge->max_message_size
                                     : MAX(edge->max_message_size, EDGE_INTERNAL_MAX_MESSAGE));
  g_queue_init(&c->send_fifo);
  g_queue_init(&c->txns);
  c->serial = ++edge->next_serial;
  g_socket_set_blocking(sock, FALSE);
  c->watch = poller_watch_new(edge->poller, g_socket_get_fd(sock), conn_io_cb, c);
  if (kind == EDGE_CONN_CLIENT)
    c->timer = poller_timer_new(edge->poller, client_timer_cb, c);
  g_hash_table_add(edge->conns, c); /* takes the initial ref */
  return c;
}

/* Formats @addr as "IP:PORT" / "[IP]:PORT". IPv4-mapped IPv6 addresses (a
 * dual-stack socket) become plain IPv4, so per-IP limits and received=
 * see one address per host. */
static void
socket_address_describe(GSocketAddress *addr, char **ip_out, guint16 *port_out, char **peer_out)
{
  GInetSocketAddress *isa = G_INET_SOCKET_ADDRESS(addr);
  GInetAddress *ia = g_inet_socket_address_get_address(isa);
  guint16 port = g_inet_socket_address_get_port(isa);
  char *ip = NULL;
  if (g_inet_address_get_family(ia) == G_SOCKET_FAMILY_IPV6) {
    const guint8 *b = g_inet_address_to_bytes(ia);
    static const guint8 mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(b, mapped, sizeof mapped) == 0)
      ip = g_strdup_printf("%u.%u.%u.%u", b[12], b[13], b[14], b[15]);
  }
  if (ip == NULL)
    ip = g_inet_address_to_string(ia);
  *peer_out = strchr(ip, ':') != NULL ? g_strdup_printf("[%s]:%u", ip, port)
                                      : g_strdup_printf("%s:%u", ip, port);
  *port_out = port;
  *ip_out = ip;
}

/* Immediate close: no more I/O, out of every table. The caller must hold
 * its own ref if it uses @c afterwards. */
static void
conn_close_now(EdgeConn *c)
{
  if (c->closed)
    return;
  Edge *edge = c->edge;
  c->closed = TRUE;
  c->closing = TRUE;
  g_clear_pointer(&c->watch, poller_watch_free);
  g_clear_pointer(&c->timer, poller_timer_free);
  edge_source_clear(&c->linger);
  edge_source_clear(&c->drain);
  g_socket_close(c->sock, NULL);
  /* Signing jobs of this flow must not call back into freed entries. */
  if (edge->sign_pool != NULL)
    ident_sign_pool_cancel(edge->sign_pool, c->serial);
  g_queue_clear_full(&c->send_fifo, edge_out_free);
  g_queue_init(&c->send_fifo);

  switch (c->kind) {
  case EDGE_CONN_CLIENT:
    if (c->token != NULL && g_hash_table_lookup(edge->flows, c->token) == c) {
      g_hash_table_remove(edge->flows, c->token);
      g_info("flow %s from %s closed", c->token, c->peer);
    }
    edge_flow_fail_txns(c);
    if (c->counted) {
      c->counted = FALSE;
      edge->n_clients--;
      guint n = GPOINTER_TO_UINT(g_hash_table_lookup(edge->per_ip, c->peer_ip));
      if (n <= 1)
        g_hash_table_remove(edge->per_ip, c->peer_ip);
      else
        g_hash_table_insert(edge->per_ip, g_strdup(c->peer_ip), GUINT_TO_POINTER(n - 1));
    }
    break;
  case EDGE_CONN_NUA_OUT:
    if (edge->nua == c) {
      edge->nua = NULL;
      g_info("connection to nua closed");
      /* Queued only while connecting: a failed connect. */
      edge_nua_fail_pending(edge);
    }
    break;
  case EDGE_CONN_INTERNAL:
    g_debug("internal connection from %s closed", c->peer);
    break;
  }
  g_hash_table_remove(edge->conns, c);
}

static gboolean
conn_linger_cb(gpointer data)
{
  EdgeConn *c = data;
  g_debug("%s: output not drained in time; closing", c->peer);
  edge_source_clear(&c->linger);
  conn_close_now(c);
  return G_SOURCE_REMOVE;
}

/* Graceful close: stop reading, say close_notify on TLS, write out what is
 * queued (bounded in time), then close. */
static void
conn_shutdown(EdgeConn *c)
{
  if (c->closing)
    return;
  c->closing = TRUE;
  conn_set_interest(c, 0, POLLER_IN);
  conn_timer_stop(c);
  edge_source_clear(&c->drain);
  /* Nothing more is read, so no response from the client can come. */
  if (c->kind == EDGE_CONN_CLIENT) {
    edge_conn_ref(c);
    edge_flow_fail_txns(c);
    edge_conn_unref(c);
  }
  if (c->tls != NULL && c->handshake_done)
    gnutls_bye(c->tls, GNUTLS_SHUT_WR); /* only appends to outbuf */
  if (c->out_off >= c->outbuf->len) {
    conn_close_now(c);
    return;
  }
  c->linger = g_timeout_source_new(EDGE_LINGER_MS);
  g_source_set_callback(c->linger, conn_linger_cb, c, NULL);
  g_source_attach(c->linger, c->edge->ctx);
  edge_conn_ref(c);
  conn_flush(c);
  edge_conn_unref(c);
}

/* A draining flow closes once nothing it waits for is outstanding. */
static void
client_drain_check(EdgeConn *c)
{
  if (!c->draining || c->closing || c->awaiting > 0 || c->send_fifo.length > 0 || c->send_busy)
    return;
  /* (A message being signed sits in send_fifo, so it is waited for too.) */
  g_debug("flow %s (%s): every relayed request answered; closing", c->token, c->peer);
  edge_conn_ref(c);
  conn_shutdown(c);
  edge_conn_unref(c);
}

static gboolean
client_drain_timeout_cb(gpointer data)
{
  EdgeConn *c = data;
  g_debug("flow %s (%s): about %u answers still outstanding after %u ms; closing", c->token,
          c->peer, c->awaiting, EDGE_DRAIN_MS);
  edge_source_clear(&c->drain);
  edge_conn_ref(c);
  conn_shutdown(c);
  edge_conn_unref(c);
  return G_SOURCE_REMOVE;
}

/* Framing is lost: nothing more can be read from the client. nua may still
 * answer requests relayed from it before, so the flow stays (and still
 * counts against the connection limits) until those answers have gone out
 * or EDGE_DRAIN_MS have passed, and then closes gracefully. */
static void
client_start_draining(EdgeConn *c)
{
  if (c->closing || c->draining)
    return;
  c->draining = TRUE;
  conn_set_interest(c, 0, POLLER_IN);
  conn_timer_stop(c);
  edge_conn_ref(c);
  /* No response from the client can come now: nua's requests get 430. */
  edge_flow_fail_txns(c);
  if (!c->closed) {
    c->drain = g_timeout_source_new(EDGE_DRAIN_MS);
    g_source_set_callback(c->drain, client_drain_timeout_cb, c, NULL);
    g_source_attach(c->drain, c->edge->ctx);
    client_drain_check(c);
  }
  edge_conn_unref(c);
}

/* A final answer to one of the flow's requests went out (or was given up). */
static void
client_answer_sent(EdgeConn *c)
{
  if (c->awaiting > 0)
    c->awaiting--;
  client_drain_check(c);
}

static void
conn_watch_writable(EdgeConn *c)
{
  conn_set_interest(c, POLLER_OUT, 0);
}

/* Writes what the socket takes now and waits for writability for the rest.
 * FALSE when @c is closed (possibly by this call). Callers hold a ref. */
static gboolean
conn_flush(EdgeConn *c)
{
  if (c->closed)
    return FALSE;
  if (c->connecting)
    return TRUE;
  while (c->out_off < c->outbuf->len) {
    g_autoptr(GError) err = NULL;
    gssize n = g_socket_send(c->sock, (const gchar *)c->outbuf->data + c->out_off,
                             c->outbuf->len - c->out_off, NULL, &err);
    if (n < 0) {
      if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
        if (c->out_off > 65536 && c->out_off * 2 > c->outbuf->len) {
          g_byte_array_remove_range(c->outbuf, 0, c->out_off);
          c->out_off = 0;
        }
        conn_watch_writable(c);
        return TRUE;
      }
      g_debug("%s: write failed: %s", c->peer, err->message);
      conn_close_now(c);
      return FALSE;
    }
    c->out_off += n;
  }
  g_byte_array_set_size(c->outbuf, 0);
  c->out_off = 0;
  conn_set_interest(c, 0, POLLER_OUT);
  if (c->closing) {
    conn_close_now(c);
    return FALSE;
  }
  return TRUE;
}

static gsize
conn_out_pending(EdgeConn *c)
{
  return c->outbuf->len - c->out_off;
}

static void
edge_flush_dirty_cb(gpointer data)
{
  Edge *edge = data;
  g_autoptr(GPtrArray) batch = g_steal_pointer(&edge->dirty);
  edge->dirty = g_ptr_array_new();
  for (guint i = 0; i < batch->len; i++) {
    EdgeConn *c = g_ptr_array_index(batch, i);
    c->flush_queued = FALSE;
    conn_flush(c);
    edge_conn_unref(c);
  }
}

/* Sends @c's output at the end of the current dispatch (see Edge.dirty). */
static void
conn_flush_soon(EdgeConn *c)
{
  Edge *edge = c->edge;
  if (c->closed || c->flush_queued || c->connecting)
    return;
  c->flush_queued = TRUE;
  if (edge->dirty->len == 0)
    poller_defer(edge->poller, edge_flush_dirty_cb, edge);
  g_ptr_array_add(edge->dirty, edge_conn_ref(c));
}

/* Plain TCP (nua side): the whole message goes into the output buffer. */
static gboolean
conn_write_plain(EdgeConn *c, GBytes *bytes)
{
  if (c->closed || c->closing)
    return FALSE;
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(bytes, &len);
  g_byte_array_append(c->outbuf, data, len);
  conn_flush_soon(c);
  return TRUE;
}

/* ---- TLS transport ----------------------------------------------------- */

/* GnuTLS writes into our buffer and never sees EAGAIN: a message is either
 * fully encrypted into outbuf or not at all, and the socket is drained by
 * conn_flush() whenever it is writable. */
static ssize_t
tls_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
  EdgeConn *c = ptr;
  g_byte_array_append(c->outbuf, data, len);
  return (ssize_t)len;
}

static ssize_t
tls_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
  EdgeConn *c = ptr;
  g_autoptr(GError) err = NULL;
  gssize n = g_socket_receive(c->sock, data, len, NULL, &err);
  if (n >= 0) {
    c->rx_bytes += (guint64)n;
    return n;
  }
  if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    gnutls_transport_set_errno(c->tls, EAGAIN);
  else
    gnutls_transport_set_errno(c->tls, ECONNRESET);
  return -1;
}

/* Never waits: GnuTLS asks with a timeout only when told to use one (we keep
 * our own timers on the main loop). */
static int
tls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
  EdgeConn *c = ptr;
  return (g_socket_condition_check(c->sock, G_IO_IN) & G_IO_IN) != 0 ? 1 : 0;
}

/* Index of the served domain @name (case-insensitive), or -1. */
static int
edge_domain_index(Edge *edge, const char *name)
{
  for (guint i = 0; name != NULL && edge->domains[i] != NULL; i++) {
    if (g_ascii_strcasecmp(edge->domains[i], name) == 0)
      return (int)i;
  }
  return -1;
}

/* After the ClientHello, before any certificate is chosen: the SNI name
 * selects the domain's credentials; none or an unknown name gets the first
 * domain's. */
static int
client_hello_cb(gnutls_session_t session)
{
  EdgeConn *c = gnutls_session_get_ptr(session);
  char name[256];
  size_t len = sizeof name;
  unsigned int type = 0;
  int index = 0;
  if (gnutls_server_name_get(session, name, &len, &type, 0) == 0 && type == GNUTLS_NAME_DNS)
    index = MAX(edge_domain_index(c->edge, name), 0);
  if ((guint)index >= c->creds->n)
    index = 0;
  return gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, c->creds->cred[index]);
}

static gboolean
client_tls_init(EdgeConn *c, GError **error)
{
  Edge *edge = c->edge;
  int ret = gnutls_init(&c->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK);
  if (ret >= 0)
    ret = gnutls_priority_set(c->tls, edge->priority);
  if (ret >= 0)
    ret = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, edge->creds->cred[0]);
  if (ret < 0) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "cannot set up a TLS session: %s",
                gnutls_strerror(ret));
    return FALSE;
  }
  c->creds = edge_creds_ref(edge->creds);
  gnutls_session_set_ptr(c->tls, c);
  gnutls_handshake_set_post_client_hello_function(c->tls, client_hello_cb);
  /* Clients may present a certificate; the core decides what it is worth. */
  gnutls_certificate_server_set_request(c->tls, GNUTLS_CERT_REQUEST);
  gnutls_handshake_set_timeout(c->tls, 0);
  gnutls_transport_set_ptr(c->tls, c);
  gnutls_transport_set_push_function(c->tls, tls_push);
  gnutls_transport_set_pull_function(c->tls, tls_pull);
  gnutls_transport_set_pull_timeout_function(c->tls, tls_pull_timeout);
  return TRUE;
}

/* Encrypts one whole message into the output buffer and starts writing it. */
static gboolean
flow_tls_write(EdgeConn *c, const guint8 *data, gsize len)
{
  if (c->closed || c->closing)
    return FALSE;
  guint retries = 0;
  while (len > 0) {
    ssize_t n = gnutls_record_send(c->tls, data, len);
    if ((n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) && ++retries < 8)
      continue; /* our push never fails; same arguments again, as GnuTLS requires */
    if (n < 0) {
      g_info("flow %s (%s): TLS write failed: %s", c->token, c->peer, gnutls_strerror((int)n));
      conn_close_now(c);
      return FALSE;
    }
    data += n;
    len -= (gsize)n;
  }
  if (conn_out_pending(c) > c->edge->client_outbuf_max) {
    g_message("closing flow %s (%s): client does not read; output over %" G_GSIZE_FORMAT " bytes",
              c->token, c->peer, c->edge->client_outbuf_max);
    conn_close_now(c);
    return FALSE;
  }
  conn_flush_soon(c);
  return TRUE;
}

/* The one way a SIP message reaches a client. The identity stage (RFC 4474
 * signing, a later issue) hooks in right here: after every header rewrite
 * and right before the TLS write. Signing may complete asynchronously on a
 * thread pool, so messages wait in a per-flow FIFO and leave strictly in
 * order: the stage sets send_busy while it works on the head and calls
 * edge_flow_send_pump() again when the signed message is ready. */
static void
edge_flow_send_pump(EdgeConn *flow)
{
  edge_conn_ref(flow);
  while (!flow->closed && !flow->closing && !flow->send_busy) {
    EdgeOut *out = g_queue_peek_head(&flow->send_fifo);
    if (out == NULL || out->msg == NULL)
      break; /* empty, or the head is still being signed */
    g_queue_pop_head(&flow->send_fifo);
    gsize len = 0;
    const guint8 *data = g_bytes_get_data(out->msg, &len);
    flow_tls_write(flow, data, len);
    edge_out_free(out);
  }
  edge_conn_unref(flow);
}

static void
edge_flow_send_message(EdgeConn *flow, GBytes *msg)
{
  if (flow->closed || flow->closing)
    return;
  EdgeOut *out = g_new0(EdgeOut, 1);
  out->msg = g_bytes_ref(msg);
  out->flow = flow;
  g_queue_push_tail(&flow->send_fifo, out);
  edge_flow_send_pump(flow);
}

static void edge_txn_fail_signing(Edge *edge, EdgeOut *out);

/* The pool calls back on the edge's context, in order per flow. */
static void
edge_sign_done(GBytes *signed_msg, const GError *error, void *user_data)
{
  EdgeOut *out = user_data;
  EdgeConn *flow = out->flow;
  Edge *edge = flow->edge;

  if (signed_msg == NULL) {
    /* Never send it unsigned: the subscriber could not trust it. nua hears
     * 500 and, for a NOTIFY, ends the subscription. */
    edge->n_sign_failed++;
    g_warning("flow %s: signing a message failed, not sent: %s", flow->token,
              error != NULL ? error->message : "?");
    g_queue_remove(&flow->send_fifo, out);
    edge_txn_fail_signing(edge, out);
    edge_out_free(out);
  } else {
    guint64 us = (guint64)MAX(g_get_monotonic_time() - out->submitted, 0);
    edge->n_signed++;
    edge->sign_us_total += us;
    edge->sign_us_max = MAX(edge->sign_us_max, us);
    out->msg = g_bytes_ref(signed_msg);
  }
  edge_flow_send_pump(flow);
  client_drain_check(flow);
}

/* Sends @msg signed for @domain when the identity stage is on and has that
 * domain's key; otherwise as it is. */
static void
edge_flow_send_signed(EdgeConn *flow, GBytes *msg, const char *domain, const char *txn_key)
{
  Edge *edge = flow->edge;
  IdentSigner *signer = edge->sign_pool != NULL && domain != NULL
                            ? g_hash_table_lookup(edge->signers, domain)
                            : NULL;
  if (signer == NULL) {
    if (edge->sign_pool != NULL)
      g_warning("flow %s: no signing key for %s; message sent without Identity", flow->token,
                domain != NULL ? domain : "(no From host)");
    edge_flow_send_message(flow, msg);
    return;
  }
  if (flow->closed || flow->closing)
    return;
  EdgeOut *out = g_new0(EdgeOut, 1);
  out->flow = flow;
  out->txn_key = g_strdup(txn_key);
  out->submitted = g_get_monotonic_time();
  g_queue_push_tail(&flow->send_fifo, out);
  ident_sign_pool_submit(edge->sign_pool, flow->serial, signer, edge->sign_alg,
                         g_hash_table_lookup(edge->info_urls, domain),
                         g_get_real_time() / G_USEC_PER_SEC, msg, edge_sign_done, out, NULL);
}

/* ---- Responses the edge builds itself ---------------------------------- */

/* Reason phrases carry error text; keep them to printable ASCII. */
static char *
edge_phrase_sanitize(const char *phrase)
{
  GString *s = g_string_new(NULL);
  for (const char *p = phrase; *p != '\0' && s->len < 100; p++)
    g_string_append_c(s, g_ascii_isprint(*p) ? *p : ' ');
  return g_string_free(s, FALSE);
}

/* A response for @request, or NULL when it is not a request that gets one
 * (responses, ACK) or lacks what a response needs. */
static GBytes *
edge_build_reply(const SipwireMsg *request, guint status, const char *phrase)
{
  if (request == NULL || !sipwire_msg_is_request(request))
    return NULL;
  if (g_strcmp0(sipwire_msg_get_method(request), "ACK") == 0)
    return NULL;
  g_autofree char *clean = edge_phrase_sanitize(phrase);
  return sipwire_build_response(request, status, clean);
}

static GBytes *
edge_build_reply_from_bytes(GBytes *orig, guint status, const char *phrase)
{
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(orig, &len);
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, len, NULL);
  return edge_build_reply(msg, status, phrase);
}

static void
edge_reply_to_flow(Edge *edge, const char *token, GBytes *orig, guint status, const char *phrase)
{
  if (token == NULL || orig == NULL)
    return;
  EdgeConn *flow = g_hash_table_lookup(edge->flows, token);
  if (flow == NULL)
    return;
  g_autoptr(GBytes) reply = edge_build_reply_from_bytes(orig, status, phrase);
  edge_conn_ref(flow); /* sending may close it */
  if (reply != NULL)
    edge_flow_send_message(flow, reply);
  client_answer_sent(flow);
  edge_conn_unref(flow);
}

/* ---- The connection to nua --------------------------------------------- */

static void
edge_pending_free(EdgePending *p)
{
  g_bytes_unref(p->wire);
  g_free(p->token);
  if (p->orig != NULL)
    g_bytes_unref(p->orig);
  g_free(p);
}

static void
edge_nua_fail_pending(Edge *edge)
{
  EdgePending *p;
  while ((p = g_queue_pop_head(&edge->nua_pending)) != NULL) {
    edge_reply_to_flow(edge, p->token, p->orig, 503, "Service Unavailable");
    edge_pending_free(p);
  }
}

static void
edge_nua_connected(EdgeConn *c)
{
  Edge *edge = c->edge;
  c->connecting = FALSE;
  g_info("connected to nua at %s", c->peer);
  conn_start_reading(c);
  EdgePending *p;
  while ((p = g_queue_pop_head(&edge->nua_pending)) != NULL) {
    gsize len = 0;
    const guint8 *data = g_bytes_get_data(p->wire, &len);
    g_byte_array_append(c->outbuf, data, len);
    edge_pending_free(p);
  }
  conn_flush(c);
}

/* Opens the shared connection; afterwards edge->nua is it, or NULL when it
 * failed at once. */
static void
edge_nua_connect(Edge *edge)
{
  g_autoptr(GError) err = NULL;
  GSocket *sock =
      g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &err);
  if (sock == NULL) {
    g_warning("cannot create a socket to nua: %s", err->message);
    return;
  }
  EdgeConn *c = edge_conn_new(edge, EDGE_CONN_NUA_OUT, sock);
  c->peer = g_strdup_printf(EDGE_INTERNAL_HOST ":%u", edge->nua_port);
  c->peer_ip = g_strdup(EDGE_INTERNAL_HOST);
  c->peer_port = edge->nua_port;
  socket_set_nodelay(sock);
  g_autoptr(GSocketAddress) addr =
      g_inet_socket_address_new_from_string(EDGE_INTERNAL_HOST, edge->nua_port);
  edge->nua = c;
  c->connecting = TRUE;
  if (g_socket_connect(sock, addr, NULL, &err)) {
    edge_nua_connected(c);
  } else if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_PENDING)) {
    conn_watch_writable(c);
  } else {
    g_warning("cannot connect to nua at %s: %s", c->peer, err->message);
    conn_close_now(c);
  }
}

/* Relays @wire to nua on the shared connection. @token and @orig name the
 * client request it came from (NULL for responses), so the client gets a
 * 503 when nua cannot take it. */
static void
edge_nua_send(Edge *edge, GBytes *wire, const char *token, GBytes *orig)
{
  if (!edge->started)
    return;
  if (edge->nua == NULL)
    edge_nua_connect(edge);
  EdgeConn *c = edge->nua;
  if (c == NULL) {
    edge_reply_to_flow(edge, token, orig, 503, "Service Unavailable");
    return;
  }
  if (c->connecting) {
    if (edge->nua_pending.length >= EDGE_NUA_QUEUE_MAX) {
      g_warning("queue to nua full (%u messages); rejecting", EDGE_NUA_QUEUE_MAX);
      edge_reply_to_flow(edge, token, orig, 503, "Service Unavailable");
      return;
    }
    EdgePending *p = g_new0(EdgePending, 1);
    p->wire = g_bytes_ref(wire);
    p->token = g_strdup(token);
    p->orig = orig != NULL ? g_bytes_ref(orig) : NULL;
    g_queue_push_tail(&edge->nua_pending, p);
    return;
  }
  if (conn_out_pending(c) > EDGE_NUA_OUTBUF_MAX) {
    g_warning("nua does not read (%" G_GSIZE_FORMAT " bytes pending); rejecting",
              conn_out_pending(c));
    edge_reply_to_flow(edge, token, orig, 503, "Service Unavailable");
    return;
  }
  conn_write_plain(c, wire);
}

/* ---- Transactions from nua awaiting the client's response --------------- */

static void
edge_txn_free(gpointer data)
{
  EdgeTxn *t = data;
  if (t->flow != NULL)
    g_queue_unlink(&t->flow->txns, &t->flow_link);
  g_free(t->key);
  g_free(t->token);
  g_free(t->saved_via);
  if (t->request != NULL)
    g_bytes_unref(t->request);
  edge_conn_unref(t->conn);
  g_free(t);
}

static void
edge_txn_remove(Edge *edge, EdgeTxn *t)
{
  g_queue_unlink(&edge->txn_order, &t->link);
  g_hash_table_remove(edge->txns, t->key); /* frees t */
  if (edge->txns != NULL && g_hash_table_size(edge->txns) == 0)
    edge_source_clear(&edge->txn_sweep);
}

static gboolean
edge_txn_sweep_cb(gpointer data)
{
  Edge *edge = data;
  gint64 now = g_get_monotonic_time();
  GList *l;
  while ((l = edge->txn_order.head) != NULL) {
    EdgeTxn *t = l->data;
    if (t->expires > now)
      break;
    g_debug("no response from flow %s for %s within 32 s", t->token, t->key);
    g_queue_unlink(&edge->txn_order, &t->link);
    g_hash_table_remove(edge->txns, t->key);
  }
  if (g_hash_table_size(edge->txns) > 0)
    return G_SOURCE_CONTINUE;
  g_source_unref(edge->txn_sweep);
  edge->txn_sweep = NULL;
  return G_SOURCE_REMOVE;
}

static char *
edge_txn_key(const char *branch, const char *method)
{
  return g_strdup_printf("%s %s", branch, method);
}

static gboolean
edge_txn_add(Edge *edge, const char *branch, const char *method, EdgeConn *flow, EdgeConn *conn,
             const char *saved_via, GBytes *request)
{
  g_autofree char *key = edge_txn_key(branch, method);
  EdgeTxn *old = g_hash_table_lookup(edge->txns, key);
  if (old != NULL)
    edge_txn_remove(edge, old);
  if (g_hash_table_size(edge->txns) >= EDGE_TXN_MAX)
    return FALSE;
  EdgeTxn *t = g_new0(EdgeTxn, 1);
  t->key = g_steal_pointer(&key);
  t->token = g_strdup(flow->token);
  t->saved_via = g_strdup(saved_via);
  t->request = g_bytes_ref(request);
  t->conn = edge_conn_ref(conn);
  t->flow = flow;
  t->expires = g_get_monotonic_time() + EDGE_TXN_TTL_US;
  t->link.data = t;
  g_queue_push_tail_link(&edge->txn_order, &t->link);
  t->flow_link.data = t;
  g_queue_push_tail_link(&flow->txns, &t->flow_link);
  g_hash_table_insert(edge->txns, t->key, t);
  if (edge->txn_sweep == NULL) {
    edge->txn_sweep = g_timeout_source_new(1000);
    g_source_set_callback(edge->txn_sweep, edge_txn_sweep_cb, edge, NULL);
    g_source_attach(edge->txn_sweep, edge->ctx);
  }
  return TRUE;
}

static void
edge_txn_clear_all(Edge *edge)
{
  edge_source_clear(&edge->txn_sweep);
  g_queue_init(&edge->txn_order);
  g_hash_table_remove_all(edge->txns);
}

static void edge_txn_send_to_nua(Edge *edge, EdgeConn *conn, GBytes *wire);

/* The identity stage could not sign @out: nua gets its 500 and the edge
 * forgets the transaction. */
static void
edge_txn_fail_signing(Edge *edge, EdgeOut *out)
{
  if (out->txn_key == NULL)
    return;
  EdgeTxn *t = g_hash_table_lookup(edge->txns, out->txn_key);
  if (t == NULL)
    return;
  g_autoptr(GBytes) reply =
      edge_build_reply_from_bytes(t->request, 500, "Identity Signing Failed");
  if (reply != NULL)
    edge_txn_send_to_nua(edge, t->conn, reply);
  edge_txn_remove(edge, t);
}

/* Hands a response for nua back on @conn, the connection its request came
 * on, or on the shared one when that is going (nua matches responses by
 * transaction, not by connection). */
static void
edge_txn_send_to_nua(Edge *edge, EdgeConn *conn, GBytes *wire)
{
  if (conn != NULL && !conn->closed && !conn->closing)
    conn_write_plain(conn, wire);
  else
    edge_nua_send(edge, wire, NULL, NULL);
}

/* @flow can no longer answer: every request nua sent on it gets 430 Flow
 * Failed (RFC 5626) at once, instead of nua waiting for Timer F (32 s). */
static void
edge_flow_fail_txns(EdgeConn *flow)
{
  Edge *edge = flow->edge;
  EdgeTxn *t;
  while ((t = g_queue_peek_head(&flow->txns)) != NULL) {
    g_autoptr(GBytes) reply = edge_build_reply_from_bytes(t->request, 430, "Flow Failed");
    EdgeConn *conn = edge_conn_ref(t->conn);
    g_debug("flow %s is gone; 430 for %s", flow->token, t->key);
    edge_txn_remove(edge, t);
    if (reply != NULL)
      edge_txn_send_to_nua(edge, conn, reply);
    edge_conn_unref(conn);
  }
}

/* "1 NOTIFY" -> "NOTIFY" */
static char *
cseq_get_method(const SipwireMsg *msg)
{
  const char *cseq = sipwire_msg_get_first(msg, "CSeq");
  if (cseq == NULL)
    return NULL;
  const char *p = cseq;
  while (g_ascii_isdigit(*p))
    p++;
  while (*p == ' ' || *p == '\t')
    p++;
  if (p == cseq || *p == '\0')
    return NULL;
  const char *end = p;
  while (*end != '\0' && !g_ascii_isspace(*end))
    end++;
  return g_strndup(p, end - p);
}

/* ---- Relay ------------------------------------------------------------- */

static void
flow_relay_ctx(EdgeConn *flow, SipwireRelayCtx *ctx)
{
  Edge *edge = flow->edge;
  memset(ctx, 0, sizeof *ctx);
  ctx->flow_token = flow->token;
  ctx->peer_ip = flow->peer_ip;
  ctx->peer_port = flow->peer_port;
  ctx->internal_host = EDGE_INTERNAL_HOST;
  ctx->edge_internal_port = edge->internal != NULL ? edge->internal->port : 0;
  ctx->nua_port = edge->nua_port;
  ctx->public_host = flow->public_host;
  ctx->public_port = flow->public_port;
  ctx->served_domains = (const char *const *)edge->domains;
  ctx->subscribe_default_expires = edge->subscribe_default_expires;
}

/* "invalid Request-URI" -> "Invalid Request-URI": a reason phrase saying
 * what was wrong, in printable ASCII and of bounded length. */
static char *
edge_phrase_from_error(const GError *err, const char *fallback)
{
  g_autofree char *phrase =
      edge_phrase_sanitize(err != NULL && err->message[0] != '\0' ? err->message : fallback);
  phrase[0] = g_ascii_toupper(phrase[0]);
  return g_steal_pointer(&phrase);
}

/* Answers a request the edge cannot relay from its bytes, the way RFC 3261
 * 8.2 orders the checks: 505 for a SIP version other than 2.0, 501 for a
 * method we do not know (8.2.1 looks at the method before the headers),
 * else @status with a reason saying what was wrong (@err). No answer to an
 * ACK, to a response, or to a request lacking what an answer needs. */
static void
client_reject_bytes(EdgeConn *c, const guint8 *data, gsize len, guint status, const GError *err)
{
  const char *why = err != NULL ? err->message : "?";
  g_autofree char *method = sipwire_raw_get_method(data, len);
  if (method == NULL) {
    if (len >= 4 && g_ascii_strncasecmp((const char *)data, "SIP/", 4) == 0)
      g_debug("flow %s (%s): dropping a response: %s", c->token, c->peer, why);
    else
      g_info("flow %s (%s): dropping a message without a request line: %s", c->token, c->peer,
             why);
    return;
  }
  if (strcmp(method, "ACK") == 0) {
    g_info("flow %s (%s): dropping an ACK: %s", c->token, c->peer, why);
    return;
  }
  g_autofree char *phrase = NULL;
  if (g_error_matches(err, SIPWIRE_ERROR, SIPWIRE_ERROR_VERSION)) {
    status = 505;
    phrase = g_strdup("Version Not Supported");
  } else if (!sipwire_method_is_known(method)) {
    status = 501;
    phrase = g_strdup("Not Implemented");
  } else {
    phrase = edge_phrase_from_error(err, "Bad Request");
  }
  g_autoptr(GBytes) reply = sipwire_build_response_raw(data, len, status, phrase);
  if (reply == NULL) {
    g_info("flow %s (%s): dropping a request (%s) that lacks what an answer needs (Via, "
           "From, To, Call-ID, CSeq)",
           c->token, c->peer, why);
    return;
  }
  g_info("flow %s (%s): %u for a request: %s", c->token, c->peer, status, why);
  edge_flow_send_message(c, reply);
}

/* A framed message that does not parse: framing is intact, so the flow
 * stays. */
static void
client_reject_unparsable(EdgeConn *c, GBytes *frame, const GError *err)
{
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(frame, &len);
  client_reject_bytes(c, data, len, 400, err);
}

/* Framing is lost, but the message's headers are whole: tell the client why
 * the flow closes (a 400, or 513 when it is too big), as far as the
 * headers allow. */
static void
client_reject_unframed(EdgeConn *c, const GError *err)
{
  g_autoptr(GBytes) head = sipwire_framer_get_failed_head(c->framer);
  if (head == NULL)
    return;
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(head, &len);
  g_autoptr(GError) perr = NULL;
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, len, &perr);
  if (g_error_matches(perr, SIPWIRE_ERROR, SIPWIRE_ERROR_VERSION)) {
    client_reject_bytes(c, data, len, 505, perr);
    return;
  }
  if (g_error_matches(err, SIPWIRE_ERROR, SIPWIRE_ERROR_TOO_BIG)) {
    g_autoptr(GError) big =
        g_error_new_literal(SIPWIRE_ERROR, SIPWIRE_ERROR_TOO_BIG, "Message Too Large");
    client_reject_bytes(c, data, len, 513, big);
    return;
  }
  client_reject_bytes(c, data, len, 400, err);
}

/* A client's response to a request from nua: restore nua's Via and hand it
 * back on the connection the request came from. */
static void
client_handle_response(EdgeConn *c, SipwireMsg *msg)
{
  Edge *edge = c->edge;
  g_autoptr(GError) err = NULL;
  g_autofree char *branch = NULL;
  if (!sipwire_relay_response_in(msg, &branch, &err)) {
    g_info("flow %s (%s): dropping a response: %s", c->token, c->peer, err->message);
    return;
  }
  g_autofree char *method = cseq_get_method(msg);
  g_autofree char *key = edge_txn_key(branch, method != NULL ? method : "");
  EdgeTxn *t = g_hash_table_lookup(edge->txns, key);
  if (t == NULL || t->flow != c) {
    g_debug("flow %s (%s): dropping a response to an unknown transaction", c->token, c->peer);
    return;
  }
  sipwire_relay_response_in_restore(msg, t->saved_via);
  g_autoptr(GBytes) wire = sipwire_msg_serialize(msg);
  EdgeConn *target = edge_conn_ref(t->conn);
  if (sipwire_msg_get_status(msg) >= 200)
    edge_txn_remove(edge, t);
  edge_txn_send_to_nua(edge, target, wire);
  edge_conn_unref(target);
}

/* Would nua refuse @wire as malformed? nta answers such a request 400 "Bad
 * X Header" and then closes the connection it came on (nta.c,
 * agent_recv_request), and for the edge that connection carries every
 * client's requests. So the edge asks Sofia's own parser first, with nta's
 * default error mask, and answers those itself. *@badname: the header. */
static gboolean
edge_nua_would_refuse(GBytes *wire, char **badname)
{
  gsize len = 0;
  const void *data = g_bytes_get_data(wire, &len);
  msg_t *m = msg_make(sip_default_mclass(), 0, data, (ssize_t)len);
  *badname = NULL;
  if (m == NULL)
    return TRUE;
  sip_t const *sip = sip_object(m);
  unsigned mask = ~(unsigned)(sip_mask_response | sip_mask_proxy | sip_mask_registrar |
                              sip_mask_pref | sip_mask_privacy);
  gboolean refused = sip == NULL || (msg_extract_errors(m) & mask) != 0 ||
                     (sip->sip_flags & MSG_FLG_ERROR) != 0 || sip_sanity_check(sip) < 0;
  if (refused && sip != NULL) {
    for (sip_header_t const *h = (sip_header_t const *)sip->sip_error; h && !*badname;
         h = h->sh_next) {
      const char *bad =
          h->sh_class == sip_error_class ? h->sh_error->er_name : h->sh_class->hc_name;
      if (bad != NULL)
        *badname = g_strdup(bad);
    }
  }
  msg_destroy(m);
  return refused;
}

static void
client_handle_message(EdgeConn *c, GBytes *frame)
{
  gsize len = 0;
  const guint8 *data = g_bytes_get_data(frame, &len);
  g_autoptr(GError) err = NULL;
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, len, &err);
  if (msg == NULL) {
    client_reject_unparsable(c, frame, err);
    return;
  }
  if (!sipwire_msg_is_request(msg)) {
    client_handle_response(c, msg);
    return;
  }
  if (!sipwire_msg_check_request_headers(msg, &err)) {
    g_info("flow %s (%s): rejecting a request: %s", c->token, c->peer, err->message);
    /* No response to an ACK (RFC 3261 17.2.1); anything else gets the 400. */
    if (g_strcmp0(sipwire_msg_get_method(msg), "ACK") != 0) {
      g_autofree char *phrase = edge_phrase_from_error(err, "Bad Request");
      g_autofree char *clean = edge_phrase_sanitize(phrase);
      g_autoptr(GBytes) reply = sipwire_build_response_partial(msg, 400, clean);
      if (reply != NULL)
        edge_flow_send_message(c, reply);
    }
    return;
  }
  SipwireRelayCtx ctx;
  flow_relay_ctx(c, &ctx);
  if (!sipwire_relay_request_in(msg, &ctx, &err)) {
    if (g_error_matches(err, SIPWIRE_ERROR, SIPWIRE_ERROR_SPOOFED)) {
      g_info("flow %s (%s): dropping a spoofed request: %s", c->token, c->peer, err->message);
      return;
    }
    g_info("flow %s (%s): rejecting a request: %s", c->token, c->peer, err->message);
    /* The rewrite may have stopped halfway; answer from the bytes received. */
    g_autofree char *phrase = edge_phrase_from_error(err, "Bad Request");
    g_autoptr(GBytes) reply = edge_build_reply_from_bytes(frame, 400, phrase);
    if (reply != NULL)
      edge_flow_send_message(c, reply);
    return;
  }
  g_autoptr(GBytes) wire = sipwire_msg_serialize(msg);
  g_autofree char *badname = NULL;
  if (edge_nua_would_refuse(wire, &badname)) {
    g_info("flow %s (%s): rejecting a request nua cannot parse (%s)", c->token, c->peer,
           badname != NULL ? badname : "sanity check");
    if (g_strcmp0(sipwire_msg_get_method(msg), "ACK") != 0) {
      g_autofree char *phrase =
          badname != NULL ? g_strdup_printf("Bad %s Header", badname) : g_strdup("Bad Request");
      g_autofree char *clean = edge_phrase_sanitize(phrase);
      g_autoptr(SipwireMsg) orig = sipwire_msg_parse(data, len, NULL);
      g_autoptr(GBytes) reply =
          orig != NULL ? sipwire_build_response_partial(orig, 400, clean) : NULL;
      if (reply != NULL)
        edge_flow_send_message(c, reply);
    }
    return;
  }
  if (g_strcmp0(sipwire_msg_get_method(msg), "ACK") != 0)
    c->awaiting++;
  edge_nua_send(c->edge, wire, c->token, frame);
}

static void
client_process_frames(EdgeConn *c)
{
  while (!c->closed && !c->closing && !c->draining) {
    g_autoptr(GBytes) frame = NULL;
    g_autoptr(GError) err = NULL;
    switch (sipwire_framer_next(c->framer, &frame, &err)) {
    case SIPWIRE_FRAME_NEED_MORE:
      return;
    case SIPWIRE_FRAME_PING:
      /* RFC 5626 pong. Messages reach TLS whole, so it can't split one. */
      flow_tls_write(c, (const guint8 *)"\r\n", 2);
      break;
    case SIPWIRE_FRAME_ERROR:
      if (g_error_matches(err, SIPWIRE_ERROR, SIPWIRE_ERROR_TOO_BIG))
        g_message("closing flow %s (%s): message over max-message-size (%" G_GSIZE_FORMAT
                  " bytes)",
                  c->token, c->peer, c->edge->max_message_size);
      else
        g_info("closing flow %s (%s): SIP framing lost: %s", c->token, c->peer,
               err != NULL ? err->message : "?");
      client_reject_unframed(c, err);
      client_start_draining(c);
      return;
    case SIPWIRE_FRAME_MESSAGE:
      client_handle_message(c, frame);
      break;
    }
  }
}

/* ---- Messages from nua ------------------------------------------------- */

static void
nua_reply(EdgeConn *c, const SipwireMsg *request, guint status, const char *phrase)
{
  g_autoptr(GBytes) reply = edge_build_reply(request, status, phrase);
  if (reply != NULL)
    conn_write_plain(c, reply);
}

/* A request from nua for a client (NOTIFY, ...). Its first Route is the
 * token Record-Route the edge put in the dialog. */
static void
nua_handle_request(EdgeConn *c, SipwireMsg *msg, GBytes *frame)
{
  Edge *edge = c->edge;
  g_autofree char *method = g_strdup(sipwire_msg_get_method(msg));
  const char *route = sipwire_msg_get_first(msg, "Route");
  g_autofree char *user = NULL;
  g_autofree char *host = NULL;
  guint16 port = 0;
  if (route == NULL || !sipwire_nameaddr_get_host_port(route, &user, &host, &port) ||
      user == NULL || *user == '\0') {
    g_warning("%s from nua carries no flow Route; rejected", method);
    nua_reply(c, msg, 400, "No Flow Route");
    return;
  }
  EdgeConn *flow = g_hash_table_lookup(edge->flows, user);
  if (flow == NULL || flow->closing || flow->draining) {
    g_info("%s for flow %s: the flow is gone; 430", method, user);
    nua_reply(c, msg, 430, "Flow Failed"); /* msg is still as nua sent it */
    return;
  }
  gboolean is_ack = g_strcmp0(method, "ACK") == 0;
  SipwireRelayCtx ctx;
  flow_relay_ctx(flow, &ctx);
  g_autoptr(GError) err = NULL;
  g_autofree char *token = NULL;
  g_autofree char *saved_via = NULL;
  g_autofree char *branch = NULL;
  if (!sipwire_relay_request_out(msg, &ctx, &token, &saved_via, &branch, &err) ||
      g_strcmp0(token, flow->token) != 0) {
    g_warning("%s from nua for flow %s cannot be relayed: %s", method, user,
              err != NULL ? err->message : "flow token mismatch");
    g_autoptr(GBytes) reply = edge_build_reply_from_bytes(frame, 400, "Bad Request");
    if (reply != NULL)
      conn_write_plain(c, reply);
    return;
  }
  if (!is_ack &&
      !edge_txn_add(edge, branch != NULL ? branch : "", method, flow, c, saved_via, frame)) {
    g_warning("too many requests from nua awaiting a client response (%u)", EDGE_TXN_MAX);
    g_autoptr(GBytes) reply = edge_build_reply_from_bytes(frame, 503, "Service Unavailable");
    if (reply != NULL)
      conn_write_plain(c, reply);
    return;
  }
  g_autoptr(GBytes) wire = sipwire_msg_serialize(msg);
  /* RFC 6072 sections 6.7 and 7.7, RFC 4474: every NOTIFY leaves signed by
   * the domain of its From, which is the AOR it reports on; a relayed
   * MESSAGE by the domain of its sender, whom the core authenticated. */
  if (g_strcmp0(method, "NOTIFY") == 0 || g_strcmp0(method, "MESSAGE") == 0) {
    g_autofree char *from_user = NULL;
    g_autofree char *from_host = NULL;
    guint16 from_port = 0;
    const char *from = sipwire_msg_get_first(msg, "From");
    if (from != NULL)
      sipwire_nameaddr_get_host_port(from, &from_user, &from_host, &from_port);
    g_autofree char *domain = from_host != NULL ? g_ascii_strdown(from_host, -1) : NULL;
    g_autofree char *key = edge_txn_key(branch != NULL ? branch : "", method);
    edge_flow_send_signed(flow, wire, domain, key);
    return;
  }
  edge_flow_send_message(flow, wire);
}

/* A response from nua to a client request: its top Via is the edge's, with
 * the flow token. */
static void
nua_handle_response(EdgeConn *c, SipwireMsg *msg)
{
  Edge *edge = c->edge;
  const char *via = sipwire_msg_get_first(msg, "Via");
  g_autofree char *peek = via != NULL ? sipwire_param_get(via, "flow") : NULL;
  if (peek == NULL || *peek == '\0') {
    g_warning("response %u from nua without the edge's Via; dropped", sipwire_msg_get_status(msg));
    return;
  }
  EdgeConn *flow = g_hash_table_lookup(edge->flows, peek);
  if (flow == NULL || flow->closing) {
    g_debug("response %u for flow %s: the flow is gone; dropped", sipwire_msg_get_status(msg),
            peek);
    return;
  }
  SipwireRelayCtx ctx;
  flow_relay_ctx(flow, &ctx);
  g_autoptr(GError) err = NULL;
  g_autofree char *token = NULL;
  if (!sipwire_relay_response_out(msg, &ctx, &token, &err) || g_strcmp0(token, flow->token) != 0) {
    g_warning("response from nua for flow %s cannot be relayed: %s", peek,
              err != NULL ? err->message : "flow token mismatch");
    return;
  }
  g_autoptr(GBytes) wire = sipwire_msg_serialize(msg);
  edge_conn_ref(flow); /* sending may close it */
  edge_flow_send_message(flow, wire);
  if (sipwire_msg_get_status(msg) >= 200)
    client_answer_sent(flow);
  edge_conn_unref(flow);
}

static void
nua_process_frames(EdgeConn *c)
{
  while (!c->closed && !c->closing) {
    g_autoptr(GBytes) frame = NULL;
    g_autoptr(GError) err = NULL;
    switch (sipwire_framer_next(c->framer, &frame, &err)) {
    case SIPWIRE_FRAME_NEED_MORE:
      return;
    case SIPWIRE_FRAME_PING: {
      g_autoptr(GBytes) pong = g_bytes_new_static("\r\n", 2);
      conn_write_plain(c, pong);
      break;
    }
    case SIPWIRE_FRAME_ERROR:
      g_warning("closing nua connection %s: framing lost: %s", c->peer,
                err != NULL ? err->message : "?");
      conn_shutdown(c);
      return;
    case SIPWIRE_FRAME_MESSAGE: {
      gsize len = 0;
      const guint8 *data = g_bytes_get_data(frame, &len);
      g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, len, &err);
      if (msg == NULL)
        g_warning("dropping a message from nua that does not parse: %s", err->message);
      else if (sipwire_msg_is_request(msg))
        nua_handle_request(c, msg, frame);
      else
        nua_handle_response(c, msg);
      break;
    }
    }
  }
}

/* ---- Reading ----------------------------------------------------------- */

/* Arms the timer of an established flow for the earlier of its idle and
 * message deadlines. Bytes arriving do not re-arm it (that would cost a heap
 * operation per read): when it fires early, it re-arms for what is left. */
static void
client_arm_deadline(EdgeConn *c)
{
  Edge *edge = c->edge;
  if (c->timer == NULL)
    return;
  gint64 next = G_MAXINT64;
  if (edge->idle_timeout_ms > 0)
    next = c->last_rx + (gint64)edge->idle_timeout_ms * 1000;
  if (edge->message_timeout_ms > 0 && c->msg_started > 0)
    next = MIN(next, c->msg_started + (gint64)edge->message_timeout_ms * 1000);
  if (next == G_MAXINT64) {
    poller_timer_stop(c->timer);
    return;
  }
  gint64 left = next - g_get_monotonic_time();
  poller_timer_start(c->timer, left > 0 ? (guint)MIN((left + 999) / 1000, G_MAXUINT) : 0);
}

/* An established flow's deadline: a message that has been arriving for
 * message-timeout (slowloris), or silence for idle-timeout, closes it. */
static void
client_deadline_expired(EdgeConn *c)
{
  Edge *edge = c->edge;
  gint64 now = g_get_monotonic_time();
  const char *why;
  if (edge->message_timeout_ms > 0 && c->msg_started > 0 &&
      now - c->msg_started >= (gint64)edge->message_timeout_ms * 1000) {
    g_message("closing flow %s (%s): message-timeout (%u ms) expired with a message unfinished",
              c->token, c->peer, edge->message_timeout_ms);
    edge->n_message_timeout++;
    why = "incomplete message when message-timeout expired";
  } else if (edge->idle_timeout_ms > 0 &&
             now - c->last_rx >= (gint64)edge->idle_timeout_ms * 1000) {
    g_message("closing flow %s (%s): idle-timeout (%u ms) expired", c->token, c->peer,
              edge->idle_timeout_ms);
    why = "incomplete message when the flow went idle";
  } else {
    client_arm_deadline(c);
    return;
  }
  edge_conn_ref(c);
  /* A message that never ended (RFC 4475 baddn has no empty line, clerr a
   * short body) still gets an answer, from what arrived. */
  g_autoptr(GBytes) partial = sipwire_framer_peek_pending(c->framer);
  if (partial != NULL) {
    g_autoptr(GError) err = g_error_new_literal(SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED, why);
    gsize len = 0;
    const guint8 *bytes = g_bytes_get_data(partial, &len);
    client_reject_bytes(c, bytes, len, 400, err);
  }
  conn_shutdown(c);
  edge_conn_unref(c);
}

static void
client_timer_cb(gpointer data)
{
  EdgeConn *c = data;
  if (c->closed || c->closing || c->draining)
    return;
  if (c->handshake_done) {
    client_deadline_expired(c);
    return;
  }
  g_message("closing %s: handshake-timeout (%u ms) expired after %" G_GUINT64_FORMAT
            " bytes from the client",
            c->peer, c->edge->handshake_timeout_ms, c->rx_bytes);
  c->edge->n_handshake_timeout++;
  edge_conn_ref(c);
  conn_close_now(c);
  edge_conn_unref(c);
}

static char *
edge_token_new(Edge *edge)
{
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  for (;;) {
    char *token = g_malloc(EDGE_TOKEN_LEN + 1);
    gsize n = 0;
    while (n < EDGE_TOKEN_LEN) {
      guint8 rnd[32];
      if (gnutls_rnd(GNUTLS_RND_NONCE, rnd, sizeof rnd) < 0) {
        for (gsize i = 0; i < sizeof rnd; i++)
          rnd[i] = (guint8)g_random_int();
      }
      for (gsize i = 0; i < sizeof rnd && n < EDGE_TOKEN_LEN; i++) {
        if (rnd[i] < 248) /* 4 * 62: no modulo bias */
          token[n++] = alphabet[rnd[i] % 62];
      }
    }
    token[n] = '\0';
    if (!g_hash_table_contains(edge->flows, token))
      return token;
    g_free(token);
  }
}

static void
client_flow_established(EdgeConn *c)
{
  Edge *edge = c->edge;
  c->handshake_done = TRUE;
  c->last_rx = g_get_monotonic_time();

  char name[256];
  size_t name_len = sizeof name;
  unsigned int type = 0;
  if (gnutls_server_name_get(c->tls, name, &name_len, &type, 0) == 0 && type == GNUTLS_NAME_DNS &&
      name_len > 0)
    c->sni = g_ascii_strdown(name, -1);
  int index = edge_domain_index(edge, c->sni);
  c->public_host = g_strdup(edge->domains[MAX(index, 0)]);

  gnutls_protocol_t version = gnutls_protocol_get_version(c->tls);
  c->tls_version = g_strdup(gnutls_protocol_get_name(version));
  /* GnuTLS names, with the "TLS_" prefix its documentation asks for; a TLS
   * 1.3 suite has no key exchange in its name. */
  const char *suite = gnutls_cipher_suite_get_name(
      version == GNUTLS_TLS1_3 ? GNUTLS_KX_UNKNOWN : gnutls_kx_get(c->tls),
      gnutls_cipher_get(c->tls), gnutls_mac_get(c->tls));
  c->cipher_suite = g_strdup_printf("TLS_%s", suite != NULL ? suite : "UNKNOWN");
  unsigned int n_certs = 0;
  const gnutls_datum_t *certs = gnutls_certificate_get_peers(c->tls, &n_certs);
  if (certs != NULL && n_certs > 0)
    c->peer_cert = g_bytes_new(certs[0].data, certs[0].size);

  c->token = edge_token_new(edge);
  g_hash_table_insert(edge->flows, c->token, c);
  g_message("flow %s from %s: SNI %s, %s, %s%s", c->token, c->peer,
            c->sni != NULL ? c->sni : "(none)", c->tls_version, c->cipher_suite,
            c->peer_cert != NULL ? ", client certificate" : "");
  client_arm_deadline(c);
}

/* FALSE while the handshake is still running or when it failed. */
static gboolean
client_handshake_step(EdgeConn *c)
{
  int ret;
  guint rounds = 0;
  do {
    ret = gnutls_handshake(c->tls);
  } while (ret < 0 && ret != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(ret) && ++rounds < 16);
  if (ret == GNUTLS_E_AGAIN || (ret < 0 && !gnutls_error_is_fatal(ret))) {
    conn_flush(c);
    return FALSE;
  }
  if (ret < 0) {
    g_info("TLS handshake with %s failed: %s", c->peer, gnutls_strerror(ret));
    c->edge->n_handshake_failed++;
    /* Tell the client why (protocol_version, handshake_failure...). */
    gnutls_alert_send_appropriate(c->tls, ret);
    if (conn_flush(c))
      conn_close_now(c);
    return FALSE;
  }
  conn_timer_stop(c);
  c->edge->n_handshakes++;
  client_flow_established(c);
  return conn_flush(c);
}

/* After input: @offered bytes were pending before the frames were taken.
 * A message that has not ended since the last one did gets a start time. */
static void
client_track_message_start(EdgeConn *c, gsize offered)
{
  gsize pending = sipwire_framer_get_pending(c->framer);
  if (pending == 0) {
    c->msg_started = 0;
    return;
  }
  if (c->msg_started > 0 && pending >= offered)
    return; /* still the same unfinished message */
  /* A new message began (the first, or one after a message that ended). */
  c->msg_started = c->last_rx;
  if (c->edge->message_timeout_ms > 0)
    client_arm_deadline(c);
}

static void
client_on_input(EdgeConn *c)
{
  if (!c->handshake_done && !client_handshake_step(c))
    return;
  guint8 buf[16384];
  for (guint i = 0; !c->closed && !c->closing && !c->draining; i++) {
    /* Records GnuTLS already decrypted never wake the socket source. */
    if (i >= EDGE_READ_BATCH && gnutls_record_check_pending(c->tls) == 0)
      break;
    ssize_t n = gnutls_record_recv(c->tls, buf, sizeof buf);
    if (n > 0) {
      c->last_rx = g_get_monotonic_time();
      gsize before = sipwire_framer_get_pending(c->framer);
      sipwire_framer_push(c->framer, buf, (gsize)n);
      client_process_frames(c);
      client_track_message_start(c, before + (gsize)n);
      continue;
    }
    if (n == 0) {
      g_debug("flow %s (%s): closed by the client", c->token, c->peer);
      conn_close_now(c);
      return;
    }
    if (n == GNUTLS_E_AGAIN)
      break;
    if (n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n == GNUTLS_E_REHANDSHAKE) {
      gnutls_alert_send(c->tls, GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
      continue;
    }
    if (!gnutls_error_is_fatal((int)n))
      continue;
    g_debug("flow %s (%s): TLS read failed: %s", c->token, c->peer, gnutls_strerror((int)n));
    conn_close_now(c);
    return;
  }
  conn_flush(c);
}

static void
plain_on_input(EdgeConn *c)
{
  guint8 buf[65536];
  for (guint i = 0; i < EDGE_READ_BATCH && !c->closed && !c->closing; i++) {
    g_autoptr(GError) err = NULL;
    gssize n = g_socket_receive(c->sock, (gchar *)buf, sizeof buf, NULL, &err);
    if (n > 0) {
      sipwire_framer_push(c->framer, buf, (gsize)n);
      nua_process_frames(c);
      continue;
    }
    if (n < 0 && g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
      break;
    if (n < 0)
      g_debug("%s: read failed: %s", c->peer, err->message);
    conn_close_now(c);
    return;
  }
}

static void
conn_start_reading(EdgeConn *c)
{
  conn_set_interest(c, POLLER_IN, 0);
}

static void
conn_on_writable(EdgeConn *c)
{
  if (!c->connecting) {
    conn_flush(c);
    return;
  }
  conn_set_interest(c, 0, POLLER_OUT);
  g_autoptr(GError) err = NULL;
  if (g_socket_check_connect_result(c->sock, &err)) {
    edge_nua_connected(c);
  } else {
    g_warning("cannot connect to nua at %s: %s", c->peer, err->message);
    conn_close_now(c);
  }
}

static void
conn_io_cb(PollerEvents events, gpointer data)
{
  EdgeConn *c = data;
  edge_conn_ref(c);
  if (conn_is_reading(c) && (events & (POLLER_IN | POLLER_ERR))) {
    if (c->kind == EDGE_CONN_CLIENT)
      client_on_input(c);
    else
      plain_on_input(c);
    if (c->closing || c->draining)
      conn_set_interest(c, 0, POLLER_IN);
  }
  if (!c->closed && c->watch != NULL && (poller_watch_get_events(c->watch) & POLLER_OUT) &&
      (events & (POLLER_OUT | POLLER_ERR)))
    conn_on_writable(c);
  edge_conn_unref(c);
}

/* ---- Listeners --------------------------------------------------------- */

static void
edge_accept_client(EdgeListener *l, GSocket *sock)
{
  Edge *edge = l->edge;
  g_autoptr(GError) err = NULL;
  g_autoptr(GSocketAddress) remote = g_socket_get_remote_address(sock, &err);
  if (remote == NULL || !G_IS_INET_SOCKET_ADDRESS(remote)) {
    g_socket_close(sock, NULL);
    g_object_unref(sock);
    return;
  }
  g_autofree char *ip = NULL;
  g_autofree char *peer = NULL;
  guint16 port = 0;
  socket_address_describe(remote, &ip, &port, &peer);

  if (edge->max_connections > 0 && edge->n_clients >= edge->max_connections) {
    g_message("refusing %s: max-connections (%u) reached", peer, edge->max_connections);
    edge->n_refused_limit++;
    g_socket_close(sock, NULL);
    g_object_unref(sock);
    return;
  }
  guint n_ip = GPOINTER_TO_UINT(g_hash_table_lookup(edge->per_ip, ip));
  if (edge->max_connections_per_ip > 0 && n_ip >= edge->max_connections_per_ip) {
    g_message("refusing %s: max-connections-per-ip (%u) reached", peer,
              edge->max_connections_per_ip);
    edge->n_refused_limit++;
    g_socket_close(sock, NULL);
    g_object_unref(sock);
    return;
  }

  EdgeConn *c = edge_conn_new(edge, EDGE_CONN_CLIENT, sock);
  edge->n_accepted++;
  c->peer = g_steal_pointer(&peer);
  c->peer_ip = g_steal_pointer(&ip);
  c->peer_port = port;
  c->public_port = l->port;
  c->counted = TRUE;
  edge->n_clients++;
  g_hash_table_insert(edge->per_ip, g_strdup(c->peer_ip), GUINT_TO_POINTER(n_ip + 1));
  socket_set_nodelay(sock);
  if (!client_tls_init(c, &err)) {
    g_warning("%s: %s", c->peer, err->message);
    conn_close_now(c);
    return;
  }
  g_debug("accepted %s on %s", c->peer, l->name);
  if (edge->handshake_timeout_ms > 0)
    poller_timer_start(c->timer, edge->handshake_timeout_ms);
  conn_start_reading(c);
}

static void
edge_accept_internal(EdgeListener *l, GSocket *sock)
{
  Edge *edge = l->edge;
  EdgeConn *c = edge_conn_new(edge, EDGE_CONN_INTERNAL, sock);
  g_autoptr(GSocketAddress) remote = g_socket_get_remote_address(sock, NULL);
  if (remote != NULL && G_IS_INET_SOCKET_ADDRESS(remote))
    socket_address_describe(remote, &c->peer_ip, &c->peer_port, &c->peer);
  else
    c->peer = g_strdup("nua");
  socket_set_nodelay(sock);
  g_debug("nua connected from %s", c->peer);
  conn_start_reading(c);
}

static gboolean listener_accept_cb(GSocket *sock, GIOCondition cond, gpointer data);

static void
listener_watch(EdgeListener *l)
{
  l->source = g_socket_create_source(l->sock, G_IO_IN, NULL);
  g_source_set_callback(l->source, G_SOURCE_FUNC(listener_accept_cb), l, NULL);
  g_source_attach(l->source, l->edge->ctx);
}

static gboolean
listener_resume_cb(gpointer data)
{
  EdgeListener *l = data;
  g_source_unref(l->pause);
  l->pause = NULL;
  listener_watch(l);
  return G_SOURCE_REMOVE;
}

static gboolean
listener_accept_cb(GSocket *lsock, GIOCondition cond, gpointer data)
{
  EdgeListener *l = data;
  for (guint i = 0; i < EDGE_ACCEPT_BATCH; i++) {
    g_autoptr(GError) err = NULL;
    GSocket *sock = g_socket_accept(lsock, NULL, &err);
    if (sock != NULL) {
      if (l->internal)
        edge_accept_internal(l, sock);
      else
        edge_accept_client(l, sock);
      continue;
    }
    if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
      break;
    /* Out of descriptors or similar: the listen queue stays readable, so
     * pause instead of spinning. */
    g_warning("accept on %s failed: %s", l->name, err->message);
    g_source_unref(l->source);
    l->source = NULL;
    l->pause = g_timeout_source_new(EDGE_ACCEPT_PAUSE_MS);
    g_source_set_callback(l->pause, listener_resume_cb, l, NULL);
    g_source_attach(l->pause, l->edge->ctx);
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

static void
listener_free(EdgeListener *l)
{
  if (l == NULL)
    return;
  edge_source_clear(&l->source);
  edge_source_clear(&l->pause);
  if (l->sock != NULL) {
    g_socket_close(l->sock, NULL);
    g_object_unref(l->sock);
  }
  g_free(l->name);
  g_free(l);
}

/* "IP:PORT" or "[IPv6]:PORT" */
static GSocketAddress *
edge_parse_listen(const char *spec, GError **error)
{
  g_autofree char *host = NULL;
  const char *port_str = NULL;
  if (spec[0] == '[') {
    const char *close = strchr(spec, ']');
    if (close == NULL || close[1] != ':') {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_LISTEN, "bad listen address \"%s\"", spec);
      return NULL;
    }
    host = g_strndup(spec + 1, close - spec - 1);
    port_str = close + 2;
  } else {
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || strchr(spec, ':') != colon) {
      g_set_error(error, EDGE_ERROR, EDGE_ERROR_LISTEN,
                  "bad listen address \"%s\" (IPv6 needs brackets)", spec);
      return NULL;
    }
    host = g_strndup(spec, colon - spec);
    port_str = colon + 1;
  }
  guint64 port = 0;
  g_autoptr(GInetAddress) ia = g_inet_address_new_from_string(host);
  if (ia == NULL || !g_ascii_string_to_unsigned(port_str, 10, 0, G_MAXUINT16, &port, NULL)) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_LISTEN, "bad listen address \"%s\"", spec);
    return NULL;
  }
  return g_inet_socket_address_new(ia, (guint16)port);
}

static EdgeListener *
edge_listener_open(Edge *edge, GSocketAddress *addr, const char *name, gboolean internal,
                   GError **error)
{
  GSocketFamily family = g_socket_address_get_family(addr);
  g_autoptr(GError) err = NULL;
  g_autoptr(GSocket) sock =
      g_socket_new(family, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &err);
  if (sock == NULL) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_LISTEN, "%s: %s", name, err->message);
    return NULL;
  }
  g_socket_set_blocking(sock, FALSE);
  /* Each entry binds exactly what it names: "[::]" and "0.0.0.0" may both
   * be listed. */
  if (family == G_SOCKET_FAMILY_IPV6)
    g_socket_set_option(sock, IPPROTO_IPV6, IPV6_V6ONLY, 1, NULL);
  g_socket_set_listen_backlog(sock, 511);
  if (!g_socket_bind(sock, addr, TRUE, &err) || !g_socket_listen(sock, &err)) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_LISTEN, "cannot listen on %s: %s", name,
                err->message);
    return NULL;
  }
  g_autoptr(GSocketAddress) local = g_socket_get_local_address(sock, &err);
  if (local == NULL) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_LISTEN, "%s: %s", name, err->message);
    return NULL;
  }
  EdgeListener *l = g_new0(EdgeListener, 1);
  l->edge = edge;
  l->sock = g_steal_pointer(&sock);
  l->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(local));
  l->internal = internal;
  l->name = g_strdup(name);
  listener_watch(l);
  return l;
}

/* ---- Public API -------------------------------------------------------- */

void
edge_flow_info_clear(EdgeFlowInfo *info)
{
  if (info == NULL)
    return;
  g_clear_pointer(&info->peer_addr, g_free);
  g_clear_pointer(&info->tls_version, g_free);
  g_clear_pointer(&info->cipher_suite, g_free);
  g_clear_pointer(&info->sni, g_free);
  g_clear_pointer(&info->peer_cert_der, g_bytes_unref);
}

Edge *
edge_new(const SrvConfig *cfg, GError **error)
{
  g_return_val_if_fail(cfg != NULL, NULL);
  if (cfg->domains == NULL || cfg->domains[0] == NULL) {
    g_set_error_literal(error, EDGE_ERROR, EDGE_ERROR_TLS, "no served domain configured");
    return NULL;
  }
  g_autoptr(GPtrArray) lower = g_ptr_array_new();
  for (guint i = 0; cfg->domains[i] != NULL; i++)
    g_ptr_array_add(lower, g_ascii_strdown(cfg->domains[i], -1));
  g_ptr_array_add(lower, NULL);
  g_auto(GStrv) domains = (GStrv)g_ptr_array_free(g_steal_pointer(&lower), FALSE);

  gnutls_priority_t priority = NULL;
  if (!edge_priority_load(cfg->tls_priority, &priority, error))
    return NULL;
  EdgeCreds *creds = edge_creds_load(cfg, (const char *const *)domains, error);
  if (creds == NULL) {
    gnutls_priority_deinit(priority);
    return NULL;
  }

  Edge *edge = g_new0(Edge, 1);
  edge->ctx = g_main_context_ref_thread_default();
  edge->poller = poller_new(edge->ctx, error);
  edge->dirty = g_ptr_array_new();
  if (edge->poller == NULL) {
    g_main_context_unref(edge->ctx);
    g_free(edge);
    edge_creds_unref(creds);
    gnutls_priority_deinit(priority);
    return NULL;
  }
  edge->domains = g_steal_pointer(&domains);
  edge->subscribe_default_expires = cfg->core.default_expires;
  edge->listen = g_strdupv(cfg->listen);
  edge->priority = priority;
  edge->creds = creds;
  edge->handshake_timeout_ms = cfg->handshake_timeout_ms;
  edge->idle_timeout_ms = cfg->idle_timeout_ms;
  edge->message_timeout_ms = cfg->message_timeout_ms;
  edge->max_connections = cfg->max_connections;
  edge->max_connections_per_ip = cfg->max_connections_per_ip;
  edge->max_message_size = cfg->max_message_size > 0 ? cfg->max_message_size : 65535;
  edge->client_outbuf_max = MAX(EDGE_CLIENT_OUTBUF_MIN, 64 * edge->max_message_size);
  edge->listeners = g_ptr_array_new_with_free_func((GDestroyNotify)listener_free);
  edge->conns = g_hash_table_new_full(g_direct_hash, g_direct_equal, edge_conn_unref_cb, NULL);
  edge->flows = g_hash_table_new(g_str_hash, g_str_equal);
  edge->per_ip = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  edge->txns = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, edge_txn_free);
  g_queue_init(&edge->nua_pending);
  g_queue_init(&edge->txn_order);
  return edge;
}

gboolean
edge_start(Edge *edge, guint16 nua_port, GError **error)
{
  g_return_val_if_fail(edge != NULL, FALSE);
  g_return_val_if_fail(!edge->started, FALSE);
  if (edge->listen == NULL || edge->listen[0] == NULL) {
    g_set_error_literal(error, EDGE_ERROR, EDGE_ERROR_LISTEN, "no listen address configured");
    return FALSE;
  }
  edge->nua_port = nua_port;

  g_autoptr(GSocketAddress) iaddr = g_inet_socket_address_new_from_string(EDGE_INTERNAL_HOST, 0);
  edge->internal = edge_listener_open(edge, iaddr, "internal " EDGE_INTERNAL_HOST, TRUE, error);
  if (edge->internal == NULL)
    return FALSE;

  for (guint i = 0; edge->listen[i] != NULL; i++) {
    g_autoptr(GSocketAddress) addr = edge_parse_listen(edge->listen[i], error);
    EdgeListener *l =
        addr != NULL ? edge_listener_open(edge, addr, edge->listen[i], FALSE, error) : NULL;
    if (l == NULL) {
      g_ptr_array_set_size(edge->listeners, 0);
      g_clear_pointer(&edge->internal, listener_free);
      return FALSE;
    }
    g_ptr_array_add(edge->listeners, l);
    g_message("listening for TLS on %s (port %u)", edge->listen[i], l->port);
  }
  edge->started = TRUE;
  g_info("internal listener on " EDGE_INTERNAL_HOST ":%u, nua at " EDGE_INTERNAL_HOST ":%u",
         edge->internal->port, nua_port);
  return TRUE;
}

guint16
edge_get_internal_port(Edge *edge)
{
  g_return_val_if_fail(edge != NULL, 0);
  return edge->internal != NULL ? edge->internal->port : 0;
}

guint16
edge_get_public_port(Edge *edge)
{
  g_return_val_if_fail(edge != NULL, 0);
  if (edge->listeners->len == 0)
    return 0;
  return ((EdgeListener *)g_ptr_array_index(edge->listeners, 0))->port;
}

static GHashTable *edge_signers_load(const SrvConfig *cfg, IdentSignerBackend backend,
                                     GError **error);

gboolean
edge_reload_credentials(Edge *edge, const SrvConfig *cfg, GError **error)
{
  g_return_val_if_fail(edge != NULL && cfg != NULL, FALSE);
  /* The served set is fixed at edge_new(); a reload renews their keys. */
  EdgeCreds *creds = edge_creds_load(cfg, (const char *const *)edge->domains, error);
  if (creds == NULL)
    return FALSE;
  GHashTable *signers = NULL;
  if (edge->sign_pool != NULL) {
    signers = edge_signers_load(cfg, edge->sign_backend, error);
    if (signers == NULL) {
      edge_creds_unref(creds);
      return FALSE;
    }
  }
  edge_creds_unref(edge->creds);
  edge->creds = creds;
  if (signers != NULL) {
    /* Jobs already queued keep the signer they were given. */
    g_hash_table_unref(edge->signers);
    edge->signers = signers;
  }
  g_info("TLS credentials%s reloaded; new handshakes use them",
         signers != NULL ? " and signing keys" : "");
  return TRUE;
}

void
edge_reload_limits(Edge *edge, const SrvConfig *cfg)
{
  g_return_if_fail(edge != NULL && cfg != NULL);
  /* Counts and timeouts apply from the next connection, message or timer;
   * the message size bounds the framers of new connections. */
  edge->handshake_timeout_ms = cfg->handshake_timeout_ms;
  edge->idle_timeout_ms = cfg->idle_timeout_ms;
  edge->message_timeout_ms = cfg->message_timeout_ms;
  edge->max_connections = cfg->max_connections;
  edge->max_connections_per_ip = cfg->max_connections_per_ip;
  edge->max_message_size = cfg->max_message_size > 0 ? cfg->max_message_size : 65535;
  edge->client_outbuf_max = MAX(EDGE_CLIENT_OUTBUF_MIN, 64 * edge->max_message_size);
}

/* domain -> IdentSigner from the key and certificate of each [domain]. */
static GHashTable *
edge_signers_load(const SrvConfig *cfg, IdentSignerBackend backend, GError **error)
{
  g_autoptr(GHashTable) signers =
      g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)ident_signer_unref);
  for (guint i = 0; i < cfg->domain_certs->len; i++) {
    const SrvDomain *d = g_ptr_array_index(cfg->domain_certs, i);
    g_autofree char *cert = NULL, *key = NULL;
    gsize cert_len = 0, key_len = 0;
    if (!g_file_get_contents(d->cert_file, &cert, &cert_len, error) ||
        !g_file_get_contents(d->key_file, &key, &key_len, error))
      return NULL;
    IdentSigner *signer = ident_signer_new(backend, (const guint8 *)key, key_len,
                                           (const guint8 *)cert, cert_len, error);
    explicit_bzero(key, key_len);
    if (signer == NULL) {
      g_prefix_error(error, "identity key of %s (%s): ", d->name, d->key_file);
      return NULL;
    }
    g_hash_table_insert(signers, g_strdup(d->name), signer);
  }
  return g_steal_pointer(&signers);
}

gboolean
edge_enable_identity(Edge *edge, const SrvConfig *cfg, GHashTable *info_urls, GError **error)
{
  g_return_val_if_fail(edge != NULL && cfg != NULL && info_urls != NULL, FALSE);
  g_return_val_if_fail(edge->sign_pool == NULL, FALSE);

  IdentSignerBackend backend = IDENT_SIGNER_GNUTLS;
  if (g_str_equal(cfg->identity_backend, "auto"))
    backend = ident_signer_backend_available(IDENT_SIGNER_OPENSSL) ? IDENT_SIGNER_OPENSSL
                                                                   : IDENT_SIGNER_GNUTLS;
  else if (!ident_signer_backend_from_string(cfg->identity_backend, &backend)) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "unknown signing backend %s",
                cfg->identity_backend);
    return FALSE;
  }
  if (!ident_alg_from_string(cfg->identity_algorithm, &edge->sign_alg)) {
    g_set_error(error, EDGE_ERROR, EDGE_ERROR_TLS, "unknown Identity algorithm %s",
                cfg->identity_algorithm);
    return FALSE;
  }
  GHashTable *signers = edge_signers_load(cfg, backend, error);
  if (signers == NULL)
    return FALSE;
  IdentSignPool *pool = ident_sign_pool_new(cfg->identity_threads, error);
  if (pool == NULL) {
    g_hash_table_unref(signers);
    return FALSE;
  }
  edge->sign_backend = backend;
  edge->signers = signers;
  edge->sign_pool = pool;
  edge->info_urls = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  GHashTableIter iter;
  gpointer k, v;
  g_hash_table_iter_init(&iter, info_urls);
  while (g_hash_table_iter_next(&iter, &k, &v))
    g_hash_table_insert(edge->info_urls, g_strdup(k), g_strdup(v));
  g_message("identity: every NOTIFY signed with %s by the %s backend on %u threads",
            ident_alg_to_string(edge->sign_alg), ident_signer_backend_to_string(backend),
            ident_sign_pool_get_threads(pool));
  return TRUE;
}

void
edge_get_stats(Edge *edge, EdgeStats *out)
{
  g_return_if_fail(edge != NULL && out != NULL);
  *out = (EdgeStats){
      .connections = edge->n_clients,
      .flows = g_hash_table_size(edge->flows),
      .connections_accepted = edge->n_accepted,
      .connections_refused = edge->n_refused_limit,
      .handshakes = edge->n_handshakes,
      .handshakes_failed = edge->n_handshake_failed,
      .handshakes_timed_out = edge->n_handshake_timeout,
      .messages_timed_out = edge->n_message_timeout,
      .signed_messages = edge->n_signed,
      .sign_failures = edge->n_sign_failed,
      .sign_pending = edge_get_sign_pending(edge),
      .sign_us_total = edge->sign_us_total,
      .sign_us_max = edge->sign_us_max,
  };
}

guint
edge_get_sign_pending(Edge *edge)
{
  g_return_val_if_fail(edge != NULL, 0);
  return edge->sign_pool != NULL ? ident_sign_pool_get_pending(edge->sign_pool) : 0;
}

gboolean
edge_flow_lookup(Edge *edge, const char *flow_token, EdgeFlowInfo *out)
{
  g_return_val_if_fail(edge != NULL && out != NULL, FALSE);
  memset(out, 0, sizeof *out);
  if (flow_token == NULL)
    return FALSE;
  EdgeConn *c = g_hash_table_lookup(edge->flows, flow_token);
  if (c == NULL || c->closed)
    return FALSE;
  out->peer_addr = g_strdup(c->peer);
  out->tls_version = g_strdup(c->tls_version);
  out->cipher_suite = g_strdup(c->cipher_suite);
  out->sni = g_strdup(c->sni);
  out->peer_cert_der = c->peer_cert != NULL ? g_bytes_ref(c->peer_cert) : NULL;
  return TRUE;
}

void
edge_stop(Edge *edge)
{
  g_return_if_fail(edge != NULL);
  g_ptr_array_set_size(edge->listeners, 0);
  g_clear_pointer(&edge->internal, listener_free);
  edge->started = FALSE;
  g_queue_clear_full(&edge->nua_pending, (GDestroyNotify)edge_pending_free);
  g_queue_init(&edge->nua_pending);
  edge_txn_clear_all(edge);

  GList *conns = g_hash_table_get_keys(edge->conns);
  for (GList *l = conns; l != NULL; l = l->next)
    edge_conn_ref(l->data);
  for (GList *l = conns; l != NULL; l = l->next) {
    EdgeConn *c = l->data;
    if (c->tls != NULL && c->handshake_done && !c->closed) {
      /* Best effort close_notify; the socket may not take it. */
      gnutls_bye(c->tls, GNUTLS_SHUT_WR);
      c->closing = TRUE;
      conn_flush(c);
    }
    conn_close_now(c);
  }
  g_list_free_full(conns, edge_conn_unref_cb);
  edge->nua = NULL;
  /* All closed: their deferred flushes have nothing left to do. */
  for (guint i = 0; i < edge->dirty->len; i++) {
    EdgeConn *c = g_ptr_array_index(edge->dirty, i);
    c->flush_queued = FALSE;
    edge_conn_unref(c);
  }
  g_ptr_array_set_size(edge->dirty, 0);
}

void
edge_free(Edge *edge)
{
  if (edge == NULL)
    return;
  edge_stop(edge);
  g_clear_pointer(&edge->sign_pool, ident_sign_pool_free);
  g_clear_pointer(&edge->signers, g_hash_table_unref);
  g_clear_pointer(&edge->info_urls, g_hash_table_unref);
  g_ptr_array_unref(edge->listeners);
  g_hash_table_unref(edge->conns);
  g_hash_table_unref(edge->flows);
  g_hash_table_unref(edge->per_ip);
  g_hash_table_unref(edge->txns);
  edge_creds_unref(edge->creds);
  gnutls_priority_deinit(edge->priority);
  /* A flush still deferred dies with the poller. */
  g_ptr_array_free(edge->dirty, TRUE);
  poller_free(edge->poller);
  g_strfreev(edge->domains);
  g_strfreev(edge->listen);
  g_main_context_unref(edge->ctx);
  g_free(edge);
}

guint
edge_get_n_flows(Edge *edge)
{
  g_return_val_if_fail(edge != NULL, 0);
  return g_hash_table_size(edge->flows);
}
