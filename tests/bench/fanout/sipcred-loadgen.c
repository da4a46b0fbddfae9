/* sipcred-loadgen: the subscriber side of the fan-out benchmark.
 *
 * One process, one thread, epoll. It opens --conns TLS connections to the
 * daemon (GnuTLS, trusting --ca, verifying --tls-name), establishes --subs
 * SUBSCRIBE dialogs to the certificate of one --aor spread evenly over them,
 * answers every NOTIFY with 200, then prints "READY <n>" and waits for "GO"
 * on stdin. From GO it counts, per dialog, the NOTIFYs that carry a state
 * other than the one of the dialog's initial NOTIFY, and ends with one line
 *
 *   RESULT subs=.. conns=.. delivered=.. ...
 *
 * (see tests/bench/README.md for every key). Messages are framed by
 * Content-Length with server/sipwire's framer, so partial reads and
 * pipelined messages are handled the way the daemon's own edge does.
 *
 * Every loop is bounded: in count (connections, subscriptions, reads per
 * wake-up) and in time (--establish-timeout, --timeout). Exit status: 0 when
 * every dialog got exactly one new NOTIFY, 1 otherwise, 2 on usage errors. */
#define G_LOG_DOMAIN "sipcred-loadgen"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <glib.h>
#include <gnutls/gnutls.h>

#include "server/sipwire.h"

#define MAX_MESSAGE (256 * 1024)
#define READ_BATCH 64
#define EPOLL_BATCH 256
#define STDIN_TAG UINT32_MAX

typedef enum {
  CONN_IDLE, /* not opened yet */
  CONN_CONNECTING,
  CONN_HANDSHAKE,
  CONN_READY,
  CONN_DEAD,
} ConnState;

typedef struct {
  guint index;
  int fd;
  ConnState state;
  gnutls_session_t tls;
  SipwireFramer *framer;
  GByteArray *out;   /* bytes not yet handed to GnuTLS */
  gsize send_cached; /* length of a gnutls_record_send() that returned EAGAIN */
  guint16 local_port;
  guint next_sub; /* subscriptions of this connection are next_sub, +conns, ... */
  guint32 events; /* epoll events registered */
} Conn;

typedef enum {
  SUB_NEW,
  SUB_SENT,
  SUB_ESTABLISHED, /* 2xx and the initial NOTIFY */
  SUB_FAILED,
} SubState;

typedef struct {
  SubState state;
  guint16 final_status;
  gboolean initial_seen;
  guint64 initial_hash;  /* FNV-1a of the initial NOTIFY body, with its length */
  guint pre_go_notifies; /* NOTIFYs after the initial one but before GO */
  guint new_notifies;    /* after GO, carrying a new state */
  guint stale_notifies;  /* after GO, carrying the initial state again */
  gboolean terminated;
} Sub;

typedef struct {
  /* options */
  char *server_host;
  guint16 server_port;
  char *ca;
  char *tls_name;
  char *aor;
  guint subs;
  guint conns;
  guint expires;
  guint pipeline;
  guint handshakes;
  double establish_timeout;
  double timeout;

  gnutls_certificate_credentials_t cred;
  int ep;
  Conn *conn;
  Sub *sub;
  char run_id[17];

  /* establishment */
  guint next_conn_to_open;
  guint handshaking;
  guint conns_ready;
  guint in_flight; /* SUBSCRIBEs sent and not yet established */
  guint established;
  guint failed;
  guint next_conn_to_send; /* round robin over connections */

  /* fan-out */
  gboolean go;
  gint64 t0;
  gint64 t_first, t_last; /* monotonic us of the first and last new-state NOTIFY */
  guint delivered;        /* dialogs with at least one new-state NOTIFY */
  guint duplicates;       /* new-state NOTIFYs beyond the first of a dialog */
  guint notifies_after_go;
  guint identity_after_go;
  guint identity_total;
  guint notifies_total;
  guint unknown_messages;
  guint conns_lost;
  guint stdin_eof;
  gint64 cpu0; /* own CPU time at GO */
} Gen;

static Gen gen;

static gint64
now_us(void)
{
  return g_get_monotonic_time();
}

/* This process' user+system CPU time in microseconds. */
static gint64
cpu_us(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (gint64)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * G_USEC_PER_SEC + ru.ru_utime.tv_usec +
         ru.ru_stime.tv_usec;
}

static guint64
body_hash(GBytes *body)
{
  gsize len = 0;
  const guint8 *p = body != NULL ? g_bytes_get_data(body, &len) : NULL;
  guint64 h = 1469598103934665603ULL;
  for (gsize i = 0; i < len; i++) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h ^ ((guint64)len << 40);
}

static void
conn_watch(Conn *c, guint32 events)
{
  if (c->fd < 0 || c->events == events)
    return;
  struct epoll_event ev = {.events = events, .data.u32 = c->index};
  if (epoll_ctl(gen.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
    g_printerr("loadgen: epoll_ctl: %s\n", g_strerror(errno));
  c->events = events;
}

static void
conn_kill(Conn *c, const char *why)
{
  if (c->state == CONN_DEAD)
    return;
  if (c->state == CONN_HANDSHAKE || c->state == CONN_CONNECTING)
    gen.handshaking--;
  if (c->state == CONN_READY)
    gen.conns_ready--;
  g_printerr("loadgen: connection %u lost: %s\n", c->index, why);
  gen.conns_lost++;
  c->state = CONN_DEAD;
  if (c->fd >= 0) {
    epoll_ctl(gen.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
  }
  /* Its dialogs are lost: count them as failed while establishing. */
  for (guint i = c->index; i < gen.subs; i += gen.conns) {
    Sub *s = &gen.sub[i];
    if (s->state == SUB_SENT) {
      gen.in_flight--;
      s->state = SUB_FAILED;
      gen.failed++;
    } else if (s->state == SUB_NEW) {
      s->state = SUB_FAILED;
      gen.failed++;
    }
  }
}

/* Hands queued bytes to GnuTLS until it would block. */
static void
conn_flush(Conn *c)
{
  for (guint i = 0; i < 1024 && c->state == CONN_READY; i++) {
    ssize_t n;
    if (c->send_cached > 0)
      n = gnutls_record_send(c->tls, NULL, 0);
    else if (c->out->len > 0)
      n = gnutls_record_send(c->tls, c->out->data, MIN(c->out->len, 16384u));
    else
      break;
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
      if (c->send_cached == 0)
        c->send_cached = MIN(c->out->len, 16384u);
      conn_watch(c, EPOLLIN | EPOLLOUT);
      return;
    }
    if (n < 0) {
      conn_kill(c, gnutls_strerror((int)n));
      return;
    }
    g_byte_array_remove_range(c->out, 0, (guint)n);
    c->send_cached = 0;
  }
  if (c->state == CONN_READY)
    conn_watch(c, EPOLLIN | (c->out->len > 0 ? EPOLLOUT : 0));
}

static void
sub_send(guint i)
{
  Sub *s = &gen.sub[i];
  Conn *c = &gen.conn[i % gen.conns];
  char buf[1024];
  int n = g_snprintf(buf, sizeof buf,
                     "SUBSCRIBE %s SIP/2.0\r\n"
                     "Via: SIP/2.0/TLS 127.0.0.1:%u;branch=z9hG4bK%s.%u;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: <sip:loadgen@127.0.0.1>;tag=lg%u\r\n"
                     "To: <%s>\r\n"
                     "Call-ID: lg%u.%s@127.0.0.1\r\n"
                     "CSeq: 1 SUBSCRIBE\r\n"
                     "Contact: <sip:loadgen@127.0.0.1:%u;transport=tls>\r\n"
                     "Event: certificate\r\n"
                     "Accept: application/pkix-cert\r\n"
                     "Expires: %u\r\n"
                     "Content-Length: 0\r\n\r\n",
                     gen.aor, c->local_port, gen.run_id, i, i, gen.aor, i, gen.run_id,
                     c->local_port, gen.expires);
  g_byte_array_append(c->out, (const guint8 *)buf, (guint)n);
  s->state = SUB_SENT;
  gen.in_flight++;
}

/* Sends SUBSCRIBEs while fewer than --pipeline are pending, round robin
 * over the ready connections. */
static void
establish_more(void)
{
  for (guint round = 0; round < gen.conns && gen.in_flight < gen.pipeline; round++) {
    gboolean sent = FALSE;
    for (guint k = 0; k < gen.conns && gen.in_flight < gen.pipeline; k++) {
      Conn *c = &gen.conn[gen.next_conn_to_send];
      gen.next_conn_to_send = (gen.next_conn_to_send + 1) % gen.conns;
      if (c->state != CONN_READY || c->next_sub >= gen.subs)
        continue;
      sub_send(c->next_sub);
      c->next_sub += gen.conns;
      conn_flush(c);
      sent = TRUE;
    }
    if (!sent)
      return;
  }
}

static guint
sub_index_of(const char *call_id)
{
  /* "lg<index>.<run>@127.0.0.1" */
  if (call_id == NULL || strncmp(call_id, "lg", 2) != 0)
    return G_MAXUINT;
  char *end = NULL;
  guint64 v = g_ascii_strtoull(call_id + 2, &end, 10);
  if (end == call_id + 2 || *end != '.' || strncmp(end + 1, gen.run_id, 16) != 0 || v >= gen.subs)
    return G_MAXUINT;
  return (guint)v;
}

static void
sub_maybe_established(Sub *s)
{
  if (s->state == SUB_SENT && s->final_status >= 200 && s->final_status < 300 && s->initial_seen) {
    s->state = SUB_ESTABLISHED;
    gen.in_flight--;
    gen.established++;
  }
}

static void
handle_notify(Conn *c, SipwireMsg *msg, Sub *s)
{
  gint64 t = now_us();
  gen.notifies_total++;
  gboolean has_identity = sipwire_msg_get_first(msg, "Identity") != NULL;
  if (has_identity)
    gen.identity_total++;

  g_autoptr(GBytes) answer = sipwire_build_response(msg, 200, "OK");
  if (answer != NULL) {
    gsize len;
    const guint8 *p = g_bytes_get_data(answer, &len);
    g_byte_array_append(c->out, p, (guint)len);
  }
  if (s == NULL)
    return;

  const char *state = sipwire_msg_get_first(msg, "Subscription-State");
  if (state != NULL && g_ascii_strncasecmp(state, "terminated", 10) == 0)
    s->terminated = TRUE;

  g_autoptr(GBytes) body = sipwire_msg_get_body(msg);
  guint64 h = body_hash(body);
  if (!s->initial_seen) {
    s->initial_seen = TRUE;
    s->initial_hash = h;
    sub_maybe_established(s);
    return;
  }
  if (!gen.go) {
    s->pre_go_notifies++;
    return;
  }
  gen.notifies_after_go++;
  if (has_identity)
    gen.identity_after_go++;
  if (h == s->initial_hash) {
    s->stale_notifies++;
    return;
  }
  if (s->new_notifies++ == 0) {
    gen.delivered++;
    if (gen.delivered == 1)
      gen.t_first = t;
    gen.t_last = t;
  } else {
    gen.duplicates++;
  }
}

static void
handle_message(Conn *c, GBytes *bytes)
{
  gsize len;
  const guint8 *data = g_bytes_get_data(bytes, &len);
  g_autoptr(GError) error = NULL;
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, len, &error);
  if (msg == NULL) {
    gen.unknown_messages++;
    return;
  }
  guint i = sub_index_of(sipwire_msg_get_first(msg, "Call-ID"));
  Sub *s = i != G_MAXUINT ? &gen.sub[i] : NULL;

  if (sipwire_msg_is_request(msg)) {
    if (g_strcmp0(sipwire_msg_get_method(msg), "NOTIFY") == 0) {
      handle_notify(c, msg, s);
    } else {
      gen.unknown_messages++;
      g_autoptr(GBytes) answer = sipwire_build_response(msg, 501, "Not Implemented");
      if (answer != NULL)
        g_byte_array_append(c->out, g_bytes_get_data(answer, NULL),
                            (guint)g_bytes_get_size(answer));
    }
    return;
  }
  guint status = sipwire_msg_get_status(msg);
  const char *cseq = sipwire_msg_get_first(msg, "CSeq");
  if (s == NULL || cseq == NULL || strstr(cseq, "SUBSCRIBE") == NULL) {
    gen.unknown_messages++;
    return;
  }
  if (status < 200 || s->final_status != 0)
    return;
  s->final_status = (guint16)status;
  if (status >= 300) {
    g_printerr("loadgen: subscription %u refused: %u\n", i, status);
    if (s->state == SUB_SENT) {
      s->state = SUB_FAILED;
      gen.in_flight--;
      gen.failed++;
    }
    return;
  }
  sub_maybe_established(s);
}

static void
conn_read(Conn *c)
{
  guint8 buf[16384];
  for (guint i = 0; i < READ_BATCH && c->state == CONN_READY; i++) {
    ssize_t n = gnutls_record_recv(c->tls, buf, sizeof buf);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
      break;
    if (n == 0) {
      conn_kill(c, "closed by the server");
      return;
    }
    if (n < 0) {
      if (!gnutls_error_is_fatal((int)n))
        continue;
      conn_kill(c, gnutls_strerror((int)n));
      return;
    }
    sipwire_framer_push(c->framer, buf, (gsize)n);
    for (guint k = 0; k < 100000; k++) {
      g_autoptr(GBytes) m = NULL;
      g_autoptr(GError) error = NULL;
      SipwireFrameResult r = sipwire_framer_next(c->framer, &m, &error);
      if (r == SIPWIRE_FRAME_NEED_MORE)
        break;
      if (r == SIPWIRE_FRAME_PING) {
        g_byte_array_append(c->out, (const guint8 *)"\r\n", 2);
        continue;
      }
      if (r == SIPWIRE_FRAME_ERROR) {
        conn_kill(c, error != NULL ? error->message : "framing lost");
        return;
      }
      handle_message(c, m);
    }
  }
  conn_flush(c);
}

static void
conn_handshake(Conn *c)
{
  int r = gnutls_handshake(c->tls);
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
    conn_watch(c, gnutls_record_get_direction(c->tls) ? EPOLLOUT : EPOLLIN);
    return;
  }
  if (r < 0) {
    if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
      gnutls_datum_t out = {0};
      guint status = gnutls_session_get_verify_cert_status(c->tls);
      gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0);
      g_printerr("loadgen: server certificate: %s\n", out.data);
      gnutls_free(out.data);
    }
    conn_kill(c, gnutls_strerror(r));
    return;
  }
  gen.handshaking--;
  gen.conns_ready++;
  c->state = CONN_READY;
  conn_watch(c, EPOLLIN);
}

static void
conn_open(Conn *c)
{
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    g_printerr("loadgen: socket: %s\n", g_strerror(errno));
    c->state = CONN_CONNECTING; /* counted, then killed */
    gen.handshaking++;
    conn_kill(c, "no socket");
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(gen.server_port)};
  inet_pton(AF_INET, gen.server_host, &sa.sin_addr);
  c->fd = fd;
  c->state = CONN_CONNECTING;
  gen.handshaking++;
  struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = c->index};
  epoll_ctl(gen.ep, EPOLL_CTL_ADD, fd, &ev);
  c->events = EPOLLOUT;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
    conn_kill(c, g_strerror(errno));
    return;
  }
}

static void
conn_connected(Conn *c)
{
  int err = 0;
  socklen_t l = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
  if (err != 0) {
    conn_kill(c, g_strerror(err));
    return;
  }
  struct sockaddr_in local;
  socklen_t ll = sizeof local;
  getsockname(c->fd, (struct sockaddr *)&local, &ll);
  c->local_port = ntohs(local.sin_port);

  gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
  gnutls_set_default_priority(c->tls);
  gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, gen.cred);
  gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, gen.tls_name, strlen(gen.tls_name));
  gnutls_session_set_verify_cert(c->tls, gen.tls_name, 0);
  gnutls_transport_set_int(c->tls, c->fd);
  c->state = CONN_HANDSHAKE;
  conn_handshake(c);
}

static void
dispatch(guint32 tag, guint32 events)
{
  Conn *c = &gen.conn[tag];
  switch (c->state) {
  case CONN_CONNECTING:
    conn_connected(c);
    break;
  case CONN_HANDSHAKE:
    conn_handshake(c);
    break;
  case CONN_READY:
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
      conn_read(c);
    if (c->state == CONN_READY && (events & EPOLLOUT))
      conn_flush(c);
    break;
  default:
    break;
  }
}

/* Reads stdin; TRUE once a line "GO" arrived. */
static gboolean
read_stdin(void)
{
  static char line[256];
  static gsize have;
  ssize_t n = read(STDIN_FILENO, line + have, sizeof line - 1 - have);
  if (n <= 0) {
    gen.stdin_eof = 1;
    epoll_ctl(gen.ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
    return FALSE;
  }
  have += (gsize)n;
  line[have] = '\0';
  if (strstr(line, "GO") != NULL)
    return TRUE;
  if (have >= sizeof line - 1)
    have = 0;
  return FALSE;
}

/* Waits on epoll once, at most @timeout_ms, and serves what is ready. */
static void
poll_once(int timeout_ms)
{
  struct epoll_event evs[EPOLL_BATCH];
  int n = epoll_wait(gen.ep, evs, EPOLL_BATCH, timeout_ms);
  for (int i = 0; i < n; i++) {
    if (evs[i].data.u32 == STDIN_TAG) {
      if (read_stdin() && !gen.go) {
        gen.go = TRUE;
        gen.t0 = now_us();
        gen.cpu0 = cpu_us();
      }
      continue;
    }
    dispatch(evs[i].data.u32, evs[i].events);
  }
  /* GnuTLS may hold records it already read (only from connections read
   * just now, when conn_read() stopped at READ_BATCH): drain them. */
  for (int i = 0; i < n; i++) {
    if (evs[i].data.u32 == STDIN_TAG)
      continue;
    Conn *c = &gen.conn[evs[i].data.u32];
    for (guint k = 0; k < 64 && c->state == CONN_READY && gnutls_record_check_pending(c->tls) > 0;
         k++)
      conn_read(c);
  }
}

static double
ms_since(gint64 t0, gint64 t)
{
  return (t - t0) / 1000.0;
}

int
main(int argc, char **argv)
{
  g_autofree char *server = NULL;
  gint subs = 100, conns = 0, expires = 86400, pipeline = 100, handshakes = 32;
  double establish_timeout = 120, timeout = 120;
  g_autofree char *ca = NULL, *tls_name = NULL, *aor = NULL;
  GOptionEntry entries[] = {
      {"server", 0, 0, G_OPTION_ARG_STRING, &server, "Daemon address (required)", "IP:PORT"},
      {"ca", 0, 0, G_OPTION_ARG_FILENAME, &ca, "Trusted CA (PEM, required)", "FILE"},
      {"tls-name", 0, 0, G_OPTION_ARG_STRING, &tls_name, "Server name to verify and send (SNI)",
       "NAME"},
      {"aor", 0, 0, G_OPTION_ARG_STRING, &aor, "AOR to watch (required)", "sip:USER@DOMAIN"},
      {"subs", 0, 0, G_OPTION_ARG_INT, &subs, "Subscriptions (default 100)", "S"},
      {"conns", 0, 0, G_OPTION_ARG_INT, &conns, "TLS connections (default: one per subscription)",
       "C"},
      {"expires", 0, 0, G_OPTION_ARG_INT, &expires, "Expires of the SUBSCRIBEs (default 86400)",
       "SECONDS"},
      {"pipeline", 0, 0, G_OPTION_ARG_INT, &pipeline,
       "SUBSCRIBEs pending at once while establishing (default 100)", "N"},
      {"handshakes", 0, 0, G_OPTION_ARG_INT, &handshakes,
       "TLS connections being opened at once (default 32)", "N"},
      {"establish-timeout", 0, 0, G_OPTION_ARG_DOUBLE, &establish_timeout,
       "Seconds to establish everything (default 120)", "S"},
      {"timeout", 0, 0, G_OPTION_ARG_DOUBLE, &timeout,
       "Seconds after GO to wait for every NOTIFY (default 120)", "S"},
      {NULL}};
  g_autoptr(GError) error = NULL;
  g_autoptr(GOptionContext) octx = g_option_context_new("- fan-out benchmark load generator");
  g_option_context_add_main_entries(octx, entries, NULL);
  if (!g_option_context_parse(octx, &argc, &argv, &error)) {
    g_printerr("%s\n", error->message);
    return 2;
  }
  if (conns <= 0)
    conns = subs;
  if (server == NULL || ca == NULL || aor == NULL || subs <= 0 || conns > subs || pipeline <= 0 ||
      handshakes <= 0 || expires <= 0) {
    g_printerr("loadgen: need --server, --ca, --aor, 0 < --conns <= --subs\n");
    return 2;
  }
  char *colon = strrchr(server, ':');
  if (colon == NULL) {
    g_printerr("loadgen: --server IP:PORT\n");
    return 2;
  }
  *colon = '\0';
  gen.server_host = server;
  gen.server_port = (guint16)atoi(colon + 1);
  gen.ca = ca;
  gen.aor = aor;
  gen.tls_name = tls_name != NULL
                     ? tls_name
                     : g_strdup(strchr(aor, '@') ? strchr(aor, '@') + 1 : "example.com");
  gen.subs = (guint)subs;
  gen.conns = (guint)conns;
  gen.expires = (guint)expires;
  gen.pipeline = (guint)pipeline;
  gen.handshakes = (guint)handshakes;
  gen.establish_timeout = establish_timeout;
  gen.timeout = timeout;
  g_snprintf(gen.run_id, sizeof gen.run_id, "%08x%08x", g_random_int(), g_random_int());

  gnutls_global_init();
  gnutls_certificate_allocate_credentials(&gen.cred);
  if (gnutls_certificate_set_x509_trust_file(gen.cred, ca, GNUTLS_X509_FMT_PEM) <= 0) {
    g_printerr("loadgen: no CA certificate in %s\n", ca);
    return 2;
  }
  gen.ep = epoll_create1(EPOLL_CLOEXEC);
  gen.conn = g_new0(Conn, gen.conns);
  gen.sub = g_new0(Sub, gen.subs);
  for (guint i = 0; i < gen.conns; i++) {
    gen.conn[i].index = i;
    gen.conn[i].fd = -1;
    gen.conn[i].framer = sipwire_framer_new(MAX_MESSAGE);
    gen.conn[i].out = g_byte_array_new();
    gen.conn[i].next_sub = i;
  }

  /* Establish: bounded handshakes and pending SUBSCRIBEs. */
  gint64 start = now_us();
  gint64 end = start + (gint64)(establish_timeout * G_USEC_PER_SEC);
  gint64 last_report = start;
  while (gen.established + gen.failed < gen.subs && now_us() < end) {
    while (gen.next_conn_to_open < gen.conns && gen.handshaking < gen.handshakes)
      conn_open(&gen.conn[gen.next_conn_to_open++]);
    establish_more();
    poll_once(50);
    if (now_us() - last_report > 5 * G_USEC_PER_SEC) {
      last_report = now_us();
      g_printerr("loadgen: %u/%u connections, %u/%u subscriptions\n", gen.conns_ready, gen.conns,
                 gen.established, gen.subs);
    }
  }
  double establish_ms = ms_since(start, now_us());
  guint pre_go = 0;
  for (guint i = 0; i < gen.subs; i++)
    pre_go += gen.sub[i].pre_go_notifies;
  if (gen.established < gen.subs) {
    printf("ESTABLISH-FAILED subs=%u established=%u failed=%u conns_ready=%u conns=%u "
           "establish_ms=%.0f\n",
           gen.subs, gen.established, gen.failed, gen.conns_ready, gen.conns, establish_ms);
    fflush(stdout);
    return 1;
  }
  printf("READY %u conns=%u establish_ms=%.0f\n", gen.established, gen.conns_ready, establish_ms);
  fflush(stdout);

  /* Wait for GO (still answering whatever arrives), then count. The wait is
   * bounded too: the runner samples the daemon in between. */
  struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
  fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
  epoll_ctl(gen.ep, EPOLL_CTL_ADD, STDIN_FILENO, &sev);
  gint64 go_end = now_us() + 600 * G_USEC_PER_SEC;
  while (!gen.go && !gen.stdin_eof && now_us() < go_end)
    poll_once(100);
  if (!gen.go) {
    printf("RESULT-FAILED no GO on stdin\n");
    return 1;
  }
  gint64 fan_end = gen.t0 + (gint64)(timeout * G_USEC_PER_SEC);
  while (gen.delivered < gen.subs && now_us() < fan_end)
    poll_once(20);
  /* A short grace period to catch duplicates of the last ones. */
  gint64 grace_end = now_us() + 200 * 1000;
  while (now_us() < grace_end)
    poll_once(20);

  double cpu_ms = (cpu_us() - gen.cpu0) / 1000.0;
  guint stale = 0, terminated = 0;
  for (guint i = 0; i < gen.subs; i++) {
    stale += gen.sub[i].stale_notifies;
    terminated += gen.sub[i].terminated ? 1 : 0;
  }
  double first_ms = gen.delivered > 0 ? ms_since(gen.t0, gen.t_first) : -1;
  double last_ms = gen.delivered > 0 ? ms_since(gen.t0, gen.t_last) : -1;
  double spread_s = gen.delivered > 1 ? (gen.t_last - gen.t_first) / 1e6 : 0;
  double rate = spread_s > 0 ? (gen.delivered - 1) / spread_s : 0;
  printf("RESULT subs=%u conns=%u delivered=%u duplicates=%u stale=%u terminated=%u "
         "first_ms=%.1f last_ms=%.1f notify_per_s=%.1f identity=%u notifies_after_go=%u "
         "pre_go=%u conns_lost=%u unknown=%u establish_ms=%.0f cpu_ms=%.1f\n",
         gen.subs, gen.conns, gen.delivered, gen.duplicates, stale, terminated, first_ms, last_ms,
         rate, gen.identity_after_go, gen.notifies_after_go, pre_go, gen.conns_lost,
         gen.unknown_messages, establish_ms, cpu_ms);
  fflush(stdout);

  for (guint i = 0; i < gen.conns; i++) {
    Conn *c = &gen.conn[i];
    if (c->tls != NULL)
      gnutls_deinit(c->tls);
    if (c->fd >= 0)
      close(c->fd);
    sipwire_framer_free(c->framer);
    g_byte_array_free(c->out, TRUE);
  }
  g_free(gen.conn);
  g_free(gen.sub);
  gnutls_certificate_free_credentials(gen.cred);
  close(gen.ep);
  gboolean ok = gen.delivered == gen.subs && gen.duplicates == 0 && stale == 0;
  return ok ? 0 : 1;
}
