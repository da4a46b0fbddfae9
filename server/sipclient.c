/* server/sipclient: see sipclient.h. */
#define G_LOG_DOMAIN "sipcred-client"

#include "server/sipclient.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "core/digest.h"

#define SIPCLIENT_MAX_MESSAGE (256 * 1024)
#define SIPCLIENT_MAX_CHAIN 16
#define SIPCLIENT_MAX_TRUST_FILE (4 * 1024 * 1024)

G_DEFINE_QUARK(sipclient - error - quark, sipclient_error)

/* ---- trust ---- */

struct _SipclientTrust {
  gnutls_x509_trust_list_t list;
};

void
sipclient_trust_free(SipclientTrust *trust)
{
  if (trust == NULL)
    return;
  if (trust->list != NULL)
    gnutls_x509_trust_list_deinit(trust->list, 1);
  g_free(trust);
}

static gboolean
sipclient_read_small(const char *path, char **data, gsize *len, GError **error)
{
  if (!g_file_get_contents(path, data, len, error)) {
    g_prefix_error(error, "%s: ", path);
    (*error)->domain = SIPCLIENT_ERROR;
    (*error)->code = SIPCLIENT_ERROR_FILE;
    return FALSE;
  }
  if (*len > SIPCLIENT_MAX_TRUST_FILE) {
    g_clear_pointer(data, g_free);
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE, "%s: larger than %d bytes", path,
                SIPCLIENT_MAX_TRUST_FILE);
    return FALSE;
  }
  return TRUE;
}

SipclientTrust *
sipclient_trust_new(const char *ca_file, const char *const *crl_files, GError **error)
{
  g_autoptr(SipclientTrust) trust = g_new0(SipclientTrust, 1);
  g_autofree char *data = NULL;
  gsize len = 0;
  int ret;

  g_return_val_if_fail(ca_file != NULL, NULL);
  if (gnutls_x509_trust_list_init(&trust->list, 0) < 0) {
    g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE, "GnuTLS trust list");
    return NULL;
  }
  if (!sipclient_read_small(ca_file, &data, &len, error))
    return NULL;
  gnutls_datum_t ca = {(unsigned char *)data, (unsigned int)len};
  ret = gnutls_x509_trust_list_add_trust_mem(trust->list, &ca, NULL, GNUTLS_X509_FMT_PEM, 0, 0);
  if (ret <= 0) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE,
                "%s: no PEM certificate to trust (%s)", ca_file,
                ret < 0 ? gnutls_strerror(ret) : "none found");
    return NULL;
  }
  for (guint i = 0; crl_files != NULL && crl_files[i] != NULL; i++) {
    g_autofree char *crl = NULL;
    gsize crl_len = 0;

    if (!sipclient_read_small(crl_files[i], &crl, &crl_len, error))
      return NULL;
    gnutls_datum_t d = {(unsigned char *)crl, (unsigned int)crl_len};
    gnutls_x509_crt_fmt_t fmt = g_strstr_len(crl, (gssize)crl_len, "-----BEGIN")
                                    ? GNUTLS_X509_FMT_PEM
                                    : GNUTLS_X509_FMT_DER;
    /* Only CRLs a trust anchor signed are kept (GNUTLS_TL_VERIFY_CRL). */
    ret =
        gnutls_x509_trust_list_add_trust_mem(trust->list, NULL, &d, fmt, GNUTLS_TL_VERIFY_CRL, 0);
    if (ret <= 0) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_FILE,
                  "%s: no CRL signed by a trust anchor of %s (%s)", crl_files[i], ca_file,
                  ret < 0 ? gnutls_strerror(ret) : "none accepted");
      return NULL;
    }
  }
  return g_steal_pointer(&trust);
}

gboolean
sipclient_cert_names(const guint8 *cert_der, gsize len, const char *name)
{
  gnutls_x509_crt_t crt;
  gnutls_datum_t d = {(unsigned char *)cert_der, (unsigned int)len};
  gboolean have_dns = FALSE, match = FALSE;

  if (name == NULL || *name == '\0' || gnutls_x509_crt_init(&crt) < 0)
    return FALSE;
  if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) < 0) {
    gnutls_x509_crt_deinit(crt);
    return FALSE;
  }
  for (unsigned int i = 0; i < 1024; i++) {
    char buf[1024];
    size_t size = sizeof buf - 1;
    int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &size, NULL);

    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      break;
    if (type == GNUTLS_SAN_DNSNAME) {
      have_dns = TRUE;
      buf[size] = '\0';
      /* Exact, case-insensitive; "*" has no special meaning (sec-flows 7). */
      if (strlen(buf) == size && g_ascii_strcasecmp(buf, name) == 0)
        match = TRUE;
    }
  }
  if (!have_dns) {
    /* The most specific (last) CN. */
    char cn[256];
    int last = -1;

    for (int i = 0; i < 16; i++) {
      size_t size = sizeof cn;
      if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, (unsigned)i, 0, cn,
                                        &size) < 0)
        break;
      last = i;
    }
    if (last >= 0) {
      size_t size = sizeof cn;
      if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, (unsigned)last, 0, cn,
                                        &size) == 0 &&
          strlen(cn) == size && g_ascii_strcasecmp(cn, name) == 0)
        match = TRUE;
    }
  }
  gnutls_x509_crt_deinit(crt);
  return match;
}

static char *
sipclient_time_text(gint64 t)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);
  return dt != NULL ? g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ") : g_strdup("?");
}

gboolean
sipclient_trust_verify_chain(SipclientTrust *trust, GBytes *const *chain, guint n,
                             const char *what, gint64 now, GError **error)
{
  gnutls_x509_crt_t crts[SIPCLIENT_MAX_CHAIN] = {0};
  unsigned int status = 0;
  gboolean ok = FALSE;
  guint loaded = 0;
  int ret;

  g_return_val_if_fail(trust != NULL && chain != NULL && what != NULL, FALSE);
  if (n == 0 || n > SIPCLIENT_MAX_CHAIN) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED, "%s comes with %u certificates",
                what, n);
    return FALSE;
  }
  for (; loaded < n; loaded++) {
    gsize len = 0;
    const guint8 *der = g_bytes_get_data(chain[loaded], &len);
    gnutls_datum_t d = {(unsigned char *)der, (unsigned int)len};

    if (gnutls_x509_crt_init(&crts[loaded]) < 0 ||
        gnutls_x509_crt_import(crts[loaded], &d, GNUTLS_X509_FMT_DER) < 0) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED,
                  "certificate %u of the chain does not parse", loaded);
      loaded++;
      goto done;
    }
  }
  /* Times are checked below against @now, so that each failure gets its
   * own error and tests can choose the clock. */
  ret = gnutls_x509_trust_list_verify_crt2(trust->list, crts, n, NULL, 0,
                                           GNUTLS_VERIFY_DISABLE_TIME_CHECKS |
                                               GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS,
                                           &status, NULL);
  if (ret < 0) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED, "chain verification: %s",
                gnutls_strerror(ret));
    goto done;
  }
  if (status & GNUTLS_CERT_REVOKED) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_REVOKED,
                "%s (or a certificate of its chain) is revoked by a CRL", what);
    goto done;
  }
  if (status != 0) {
    gnutls_datum_t out = {0};
    g_autofree char *why = NULL;

    if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
      why = g_strndup((const char *)out.data, out.size);
      gnutls_free(out.data);
    }
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED,
                "the chain of %s does not end at a trust anchor (%s)", what,
                why != NULL ? why : "unknown");
    goto done;
  }
  for (guint i = 0; i < n; i++) {
    gint64 nb = gnutls_x509_crt_get_activation_time(crts[i]);
    gint64 na = gnutls_x509_crt_get_expiration_time(crts[i]);

    if (now < nb || now > na) {
      g_autofree char *t1 = sipclient_time_text(nb);
      g_autofree char *t2 = sipclient_time_text(na);
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_VALIDITY, "%s%s is %s (valid %s to %s)",
                  i == 0 ? "" : "a chain certificate of ", what,
                  now < nb ? "not yet valid" : "expired", t1, t2);
      goto done;
    }
  }
  ok = TRUE;
done:
  for (guint i = 0; i < loaded; i++)
    if (crts[i] != NULL)
      gnutls_x509_crt_deinit(crts[i]);
  return ok;
}

gboolean
sipclient_trust_verify(SipclientTrust *trust, GBytes *const *chain, guint n, const char *name,
                       gint64 now, GError **error)
{
  gsize len = 0;
  const guint8 *der;

  g_return_val_if_fail(name != NULL, FALSE);
  if (!sipclient_trust_verify_chain(trust, chain, n, "the server certificate", now, error))
    return FALSE;
  der = g_bytes_get_data(chain[0], &len);
  if (!sipclient_cert_names(der, len, name)) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_NAME,
                "the server certificate does not name %s (exact subjectAltName dNSName, or "
                "the Subject CN when there is no dNSName)",
                name);
    return FALSE;
  }
  return TRUE;
}

/* ---- connection ---- */

struct _SipclientConn {
  int fd;
  gnutls_session_t session;
  gnutls_certificate_credentials_t cred;
  SipwireFramer *framer;
  char *local_host;
  guint16 local_port;
};

void
sipclient_conn_free(SipclientConn *conn)
{
  if (conn == NULL)
    return;
  if (conn->session != NULL) {
    gnutls_record_set_timeout(conn->session, 200);
    gnutls_bye(conn->session, GNUTLS_SHUT_WR);
    gnutls_deinit(conn->session);
  }
  if (conn->cred != NULL)
    gnutls_certificate_free_credentials(conn->cred);
  if (conn->fd >= 0)
    close(conn->fd);
  g_clear_pointer(&conn->framer, sipwire_framer_free);
  g_free(conn->local_host);
  g_free(conn);
}

const char *
sipclient_conn_get_local_host(SipclientConn *conn)
{
  return conn->local_host;
}

guint16
sipclient_conn_get_local_port(SipclientConn *conn)
{
  return conn->local_port;
}

static int
sipclient_ms_left(gint64 deadline)
{
  gint64 left = (deadline - g_get_monotonic_time()) / 1000;
  return left <= 0 ? 0 : (int)MIN(left, (gint64)G_MAXINT);
}

/* Waits until @fd is ready for @events or the deadline passes. */
static gboolean
sipclient_wait(int fd, short events, gint64 deadline, GError **error)
{
  for (;;) {
    struct pollfd p = {.fd = fd, .events = events};
    int ms = sipclient_ms_left(deadline);
    int r;

    if (ms == 0) {
      g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TIMEOUT, "timed out");
      return FALSE;
    }
    r = poll(&p, 1, ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_CONNECT, "poll: %s", g_strerror(errno));
      return FALSE;
    }
    if (r > 0)
      return TRUE;
  }
}

static int
sipclient_tcp_connect(const char *host, guint16 port, gint64 deadline, GError **error)
{
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
  struct addrinfo *res = NULL;
  char service[8];
  g_autofree char *last = NULL;
  int fd = -1, r;

  g_snprintf(service, sizeof service, "%u", port);
  r = getaddrinfo(host, service, &hints, &res);
  if (r != 0) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_CONNECT, "%s: %s", host, gai_strerror(r));
    return -1;
  }
  for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
    int s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int soerr = 0;
    socklen_t sl = sizeof soerr;

    if (s < 0)
      continue;
    if (connect(s, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      g_free(last);
      last = g_strdup(g_strerror(errno));
      close(s);
      continue;
    }
    if (!sipclient_wait(s, POLLOUT, deadline, NULL) ||
        getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
      g_free(last);
      last = g_strdup(soerr != 0 ? g_strerror(soerr) : "timed out");
      close(s);
      continue;
    }
    fd = s;
  }
  freeaddrinfo(res);
  if (fd < 0)
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_CONNECT, "cannot connect to %s:%u: %s",
                host, port, last != NULL ? last : "no address");
  return fd;
}

static gboolean
sipclient_is_ip(const char *name)
{
  return g_hostname_is_ip_address(name);
}

/* TLS on a non-blocking socket, every wait through poll() with the deadline. */
static gboolean
sipclient_tls_start(SipclientConn *conn, const char *name, SipclientTrust *trust, gint64 deadline,
                    GError **error)
{
  const gnutls_datum_t *peers;
  unsigned int n_peers = 0;
  GBytes *chain[SIPCLIENT_MAX_CHAIN];
  gboolean ok;
  int ret;

  if (gnutls_certificate_allocate_credentials(&conn->cred) < 0 ||
      gnutls_init(&conn->session, GNUTLS_CLIENT | GNUTLS_NONBLOCK) < 0 ||
      gnutls_set_default_priority(conn->session) < 0 ||
      gnutls_credentials_set(conn->session, GNUTLS_CRD_CERTIFICATE, conn->cred) < 0) {
    g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TLS, "GnuTLS setup failed");
    return FALSE;
  }
  if (!sipclient_is_ip(name))
    gnutls_server_name_set(conn->session, GNUTLS_NAME_DNS, name, strlen(name));
  gnutls_transport_set_int(conn->session, conn->fd);
  for (;;) {
    ret = gnutls_handshake(conn->session);
    if (ret == 0)
      break;
    if (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED) {
      if (!sipclient_wait(conn->fd, gnutls_record_get_direction(conn->session) ? POLLOUT : POLLIN,
                          deadline, error)) {
        g_prefix_error(error, "TLS handshake: ");
        return FALSE;
      }
      continue;
    }
    if (gnutls_error_is_fatal(ret)) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TLS, "TLS handshake: %s",
                  gnutls_strerror(ret));
      return FALSE;
    }
  }
  peers = gnutls_certificate_get_peers(conn->session, &n_peers);
  if (peers == NULL || n_peers == 0) {
    g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_UNTRUSTED,
                        "the server sent no certificate");
    return FALSE;
  }
  n_peers = MIN(n_peers, SIPCLIENT_MAX_CHAIN);
  for (guint i = 0; i < n_peers; i++)
    chain[i] = g_bytes_new(peers[i].data, peers[i].size);
  ok = sipclient_trust_verify(trust, chain, n_peers, name, g_get_real_time() / G_USEC_PER_SEC,
                              error);
  for (guint i = 0; i < n_peers; i++)
    g_bytes_unref(chain[i]);
  return ok;
}

SipclientConn *
sipclient_conn_open(const char *host, guint16 port, const char *name, SipclientTrust *trust,
                    gint64 deadline, GError **error)
{
  g_autoptr(SipclientConn) conn = g_new0(SipclientConn, 1);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char addr[NI_MAXHOST], serv[NI_MAXSERV];

  g_return_val_if_fail(host != NULL && name != NULL && trust != NULL, NULL);
  conn->fd = sipclient_tcp_connect(host, port, deadline, error);
  if (conn->fd < 0)
    return NULL;
  conn->framer = sipwire_framer_new(SIPCLIENT_MAX_MESSAGE);
  if (getsockname(conn->fd, (struct sockaddr *)&ss, &sl) == 0 &&
      getnameinfo((struct sockaddr *)&ss, sl, addr, sizeof addr, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    conn->local_host = strchr(addr, ':') ? g_strdup_printf("[%s]", addr) : g_strdup(addr);
    conn->local_port = (guint16)atoi(serv);
  } else {
    conn->local_host = g_strdup("127.0.0.1");
  }
  if (!sipclient_tls_start(conn, name, trust, deadline, error))
    return NULL;
  return g_steal_pointer(&conn);
}

gboolean
sipclient_conn_send(SipclientConn *conn, const void *data, gsize len, gint64 deadline,
                    GError **error)
{
  const guint8 *p = data;
  gsize off = 0;

  while (off < len) {
    ssize_t n = gnutls_record_send(conn->session, p + off, len - off);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
      if (!sipclient_wait(conn->fd, POLLOUT, deadline, error))
        return FALSE;
      continue;
    }
    if (n < 0) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TLS, "TLS send: %s",
                  gnutls_strerror((int)n));
      return FALSE;
    }
    off += (gsize)n;
  }
  return TRUE;
}

/* The next framed message's bytes. */
static GBytes *
sipclient_read_raw(SipclientConn *conn, gint64 deadline, GError **error)
{
  guint8 buf[16384];

  for (guint guard = 0; guard < 100000; guard++) {
    g_autoptr(GError) local = NULL;
    GBytes *out = NULL;
    ssize_t n;

    switch (sipwire_framer_next(conn->framer, &out, &local)) {
    case SIPWIRE_FRAME_MESSAGE:
      return out;
    case SIPWIRE_FRAME_PING:
      continue;
    case SIPWIRE_FRAME_ERROR:
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "framing lost: %s",
                  local->message);
      return NULL;
    case SIPWIRE_FRAME_NEED_MORE:
      break;
    }
    n = gnutls_record_recv(conn->session, buf, sizeof buf);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
      if (!sipclient_wait(conn->fd, POLLIN, deadline, error))
        return NULL;
      continue;
    }
    if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION) {
      g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_CLOSED,
                          "the server closed the connection");
      return NULL;
    }
    if (n < 0) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TLS, "TLS receive: %s",
                  gnutls_strerror((int)n));
      return NULL;
    }
    sipwire_framer_push(conn->framer, buf, (gsize)n);
  }
  g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "no message");
  return NULL;
}

SipwireMsg *
sipclient_conn_read(SipclientConn *conn, gint64 deadline, GBytes **raw, GError **error)
{
  g_autoptr(GBytes) bytes = sipclient_read_raw(conn, deadline, error);
  g_autoptr(GError) local = NULL;
  SipwireMsg *msg;
  gsize len = 0;
  const guint8 *data;

  if (bytes == NULL)
    return NULL;
  data = g_bytes_get_data(bytes, &len);
  msg = sipwire_msg_parse(data, len, &local);
  if (msg == NULL) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "unreadable message: %s",
                local->message);
    return NULL;
  }
  if (raw != NULL)
    *raw = g_steal_pointer(&bytes);
  return msg;
}

gboolean
sipclient_conn_answer(SipclientConn *conn, const SipwireMsg *request, guint status,
                      const char *phrase, gint64 deadline, GError **error)
{
  g_autoptr(GBytes) resp = sipwire_build_response(request, status, phrase);

  if (resp == NULL)
    return TRUE; /* nothing a response could be built from: let it time out */
  return sipclient_conn_send(conn, g_bytes_get_data(resp, NULL), g_bytes_get_size(resp), deadline,
                             error);
}

/* ---- digest ---- */

char *
sipclient_token(void)
{
  guint8 r[12];
  GString *s = g_string_sized_new(24);

  gnutls_rnd(GNUTLS_RND_NONCE, r, sizeof r);
  for (guint i = 0; i < sizeof r; i++)
    g_string_append_printf(s, "%02x", r[i]);
  return g_string_free(s, FALSE);
}

/* name=value pairs of a "Digest ..." challenge, names lower-cased. */
static GHashTable *
sipclient_challenge_parse(const char *value)
{
  GHashTable *params;
  const char *p = value;

  while (g_ascii_isspace(*p))
    p++;
  if (g_ascii_strncasecmp(p, "Digest", 6) != 0 || !g_ascii_isspace(p[6]))
    return NULL;
  p += 7;
  params = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  while (*p != '\0') {
    const char *name;
    GString *val = g_string_new(NULL);

    while (*p == ',' || g_ascii_isspace(*p))
      p++;
    name = p;
    while (*p != '\0' && *p != '=' && *p != ',' && !g_ascii_isspace(*p))
      p++;
    g_autofree char *key = g_ascii_strdown(name, p - name);
    while (g_ascii_isspace(*p))
      p++;
    if (*p == '=') {
      p++;
      while (g_ascii_isspace(*p))
        p++;
      if (*p == '"') {
        p++;
        while (*p != '\0' && *p != '"') {
          if (*p == '\\' && p[1] != '\0')
            p++;
          g_string_append_c(val, *p++);
        }
        if (*p == '"')
          p++;
      } else {
        while (*p != '\0' && *p != ',' && !g_ascii_isspace(*p))
          g_string_append_c(val, *p++);
      }
    }
    if (*key != '\0')
      g_hash_table_replace(params, g_steal_pointer(&key), g_string_free(val, FALSE));
    else
      g_string_free(val, TRUE);
  }
  return params;
}

static gboolean
sipclient_qop_has_auth(const char *qop)
{
  g_auto(GStrv) parts = g_strsplit(qop != NULL ? qop : "", ",", -1);

  for (guint i = 0; parts[i] != NULL; i++)
    if (g_ascii_strcasecmp(g_strstrip(parts[i]), "auth") == 0)
      return TRUE;
  return FALSE;
}

char *
sipclient_digest_authorization(GPtrArray *challenges, const char *user, const char *password,
                               const char *method, const char *uri, guint nc, GError **error)
{
  g_autoptr(GHashTable) best = NULL;
  CoreDigestAlgorithm alg = CORE_DIGEST_ALGORITHM_MD5;

  for (guint i = 0; challenges != NULL && i < challenges->len; i++) {
    g_autoptr(GHashTable) c = sipclient_challenge_parse(g_ptr_array_index(challenges, i));
    const char *a;
    gboolean sha;

    if (c == NULL || g_hash_table_lookup(c, "nonce") == NULL ||
        g_hash_table_lookup(c, "realm") == NULL ||
        !sipclient_qop_has_auth(g_hash_table_lookup(c, "qop")))
      continue;
    a = g_hash_table_lookup(c, "algorithm");
    sha = a != NULL && g_ascii_strcasecmp(a, "SHA-256") == 0;
    if (a != NULL && !sha && g_ascii_strcasecmp(a, "MD5") != 0)
      continue;
    if (best == NULL || (sha && alg == CORE_DIGEST_ALGORITHM_MD5)) {
      g_clear_pointer(&best, g_hash_table_unref);
      best = g_steal_pointer(&c);
      alg = sha ? CORE_DIGEST_ALGORITHM_SHA256 : CORE_DIGEST_ALGORITHM_MD5;
    }
  }
  if (best == NULL) {
    g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_AUTH,
                        "no usable digest challenge (SHA-256 or MD5 with qop=auth)");
    return NULL;
  }
  const char *realm = g_hash_table_lookup(best, "realm");
  const char *nonce = g_hash_table_lookup(best, "nonce");
  const char *opaque = g_hash_table_lookup(best, "opaque");
  g_autofree char *cnonce = sipclient_token();
  g_autofree char *ncs = g_strdup_printf("%08x", nc);
  g_autofree char *ha1 = core_digest_ha1(alg, user, realm, password);
  g_autofree char *resp = core_digest_response(alg, ha1, nonce, ncs, cnonce, "auth", method, uri);
  GString *out;

  if (ha1 != NULL)
    explicit_bzero(ha1, strlen(ha1));
  if (resp == NULL) {
    g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_AUTH, "digest computation");
    return NULL;
  }
  out = g_string_new("Digest ");
  g_string_append_printf(out,
                         "username=\"%s\", realm=\"%s\", nonce=\"%s\", uri=\"%s\", "
                         "response=\"%s\", algorithm=%s, cnonce=\"%s\", nc=%s, qop=auth",
                         user, realm, nonce, uri, resp,
                         alg == CORE_DIGEST_ALGORITHM_SHA256 ? "SHA-256" : "MD5", cnonce, ncs);
  if (opaque != NULL)
    g_string_append_printf(out, ", opaque=\"%s\"", opaque);
  return g_string_free(out, FALSE);
}

/* ---- requests ---- */

static GBytes *
sipclient_request_build(SipclientConn *conn, const SipclientRequest *req, guint32 cseq,
                        const char *authorization)
{
  GString *s = g_string_new(NULL);
  g_autofree char *branch = sipclient_token();
  gsize body_len = req->body != NULL ? g_bytes_get_size(req->body) : 0;

  g_string_append_printf(s, "%s %s SIP/2.0\r\n", req->method, req->uri);
  g_string_append_printf(s, "Via: SIP/2.0/TLS %s:%u;branch=z9hG4bK%s;rport\r\n", conn->local_host,
                         conn->local_port, branch);
  g_string_append(s, "Max-Forwards: 70\r\n");
  g_string_append_printf(s, "From: <%s>;tag=%s\r\n", req->from, req->from_tag);
  g_string_append_printf(s, "To: <%s>%s%s\r\n", req->uri, req->to_tag ? ";tag=" : "",
                         req->to_tag ? req->to_tag : "");
  g_string_append_printf(s, "Call-ID: %s\r\n", req->call_id);
  g_string_append_printf(s, "CSeq: %u %s\r\n", cseq, req->method);
  g_string_append_printf(s, "Contact: <sip:%s:%u;transport=tls>\r\n", conn->local_host,
                         conn->local_port);
  g_string_append(s, "User-Agent: sipcred/"
                     "client\r\n");
  for (guint i = 0; req->headers != NULL && req->headers[i] != NULL; i++)
    g_string_append_printf(s, "%s\r\n", req->headers[i]);
  if (authorization != NULL)
    g_string_append_printf(s, "Authorization: %s\r\n", authorization);
  if (body_len > 0 && req->content_type != NULL)
    g_string_append_printf(s, "Content-Type: %s\r\n", req->content_type);
  g_string_append_printf(s, "Content-Length: %" G_GSIZE_FORMAT "\r\n\r\n", body_len);
  if (body_len > 0)
    g_string_append_len(s, g_bytes_get_data(req->body, NULL), (gssize)body_len);
  return g_string_free_to_bytes(s);
}

static SipwireMsg *
sipclient_request_once(SipclientConn *conn, const SipclientRequest *req, guint32 cseq,
                       const char *authorization, GPtrArray *notifies, gint64 deadline,
                       GError **error)
{
  g_autoptr(GBytes) msg = sipclient_request_build(conn, req, cseq, authorization);

  if (!sipclient_conn_send(conn, g_bytes_get_data(msg, NULL), g_bytes_get_size(msg), deadline,
                           error))
    return NULL;
  for (guint guard = 0; guard < 10000; guard++) {
    g_autoptr(GBytes) raw = NULL;
    g_autoptr(SipwireMsg) in = sipclient_conn_read(conn, deadline, &raw, error);
    const char *cid, *cs;

    if (in == NULL)
      return NULL;
    if (sipwire_msg_is_request(in)) {
      gboolean notify = g_strcmp0(sipwire_msg_get_method(in), "NOTIFY") == 0;
      if (!sipclient_conn_answer(conn, in, notify ? 200 : 481,
                                 notify ? "OK" : "Call/Transaction Does Not Exist", deadline,
                                 error))
        return NULL;
      if (notify && notifies != NULL)
        g_ptr_array_add(notifies, g_steal_pointer(&raw));
      continue;
    }
    cid = sipwire_msg_get_first(in, "Call-ID");
    cs = sipwire_msg_get_first(in, "CSeq");
    if (g_strcmp0(cid, req->call_id) != 0 || cs == NULL)
      continue;
    g_autofree char *want = g_strdup_printf("%u %s", cseq, req->method);
    g_autofree char *got = g_strstrip(g_strdup(cs));
    if (!g_str_equal(want, got) || sipwire_msg_get_status(in) < 200)
      continue;
    return g_steal_pointer(&in);
  }
  g_set_error_literal(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "no final response");
  return NULL;
}

SipwireMsg *
sipclient_request(SipclientConn *conn, const SipclientRequest *req, guint32 *cseq,
                  GPtrArray *notifies, gint64 deadline, GError **error)
{
  g_autoptr(SipwireMsg) resp = NULL;
  g_autoptr(GPtrArray) challenges = NULL;
  g_autofree char *auth = NULL;

  resp = sipclient_request_once(conn, req, (*cseq)++, NULL, notifies, deadline, error);
  if (resp == NULL || sipwire_msg_get_status(resp) != 401 || req->user == NULL)
    return g_steal_pointer(&resp);
  challenges = sipwire_msg_get_values(resp, "WWW-Authenticate");
  auth = sipclient_digest_authorization(challenges, req->user, req->password, req->method,
                                        req->uri, 1, error);
  if (auth == NULL)
    return NULL;
  g_clear_pointer(&resp, sipwire_msg_free);
  return sipclient_request_once(conn, req, (*cseq)++, auth, notifies, deadline, error);
}

/* ---- HTTPS ---- */

GBytes *
sipclient_https_get(const char *url, const char *name, SipclientTrust *trust, gsize max,
                    gint64 deadline, GError **error)
{
  g_autoptr(GUri) uri = NULL;
  g_autoptr(SipclientConn) conn = NULL;
  g_autoptr(GByteArray) in = g_byte_array_new();
  g_autofree char *req = NULL;
  const char *path;
  guint8 buf[8192];
  int port;

  uri = g_uri_parse(url, G_URI_FLAGS_NONE, error);
  if (uri == NULL || g_strcmp0(g_uri_get_scheme(uri), "https") != 0 ||
      g_uri_get_host(uri) == NULL) {
    g_clear_error(error);
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "not an https URL: %s", url);
    return NULL;
  }
  port = g_uri_get_port(uri) > 0 ? g_uri_get_port(uri) : 443;
  conn = sipclient_conn_open(g_uri_get_host(uri), (guint16)port, name, trust, deadline, error);
  if (conn == NULL) {
    g_prefix_error(error, "%s: ", url);
    return NULL;
  }
  path = *g_uri_get_path(uri) != '\0' ? g_uri_get_path(uri) : "/";
  req = g_strdup_printf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                        "Accept: application/pkix-cert\r\n\r\n",
                        path, g_uri_get_host(uri));
  if (!sipclient_conn_send(conn, req, strlen(req), deadline, error))
    return NULL;
  for (;;) {
    ssize_t n = gnutls_record_recv(conn->session, buf, sizeof buf);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
      if (!sipclient_wait(conn->fd, POLLIN, deadline, error))
        return NULL;
      continue;
    }
    if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION)
      break;
    if (n < 0) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_TLS, "%s: %s", url,
                  gnutls_strerror((int)n));
      return NULL;
    }
    g_byte_array_append(in, buf, (guint)n);
    if (in->len > max + 8192) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "%s: answer too large", url);
      return NULL;
    }
  }
  /* Status line, headers, then Content-Length bytes (or up to the close). */
  const char *data = (const char *)in->data;
  const char *end = g_strstr_len(data, in->len, "\r\n\r\n");
  if (end == NULL || in->len < 12 || strncmp(data, "HTTP/1.", 7) != 0) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "%s: not an HTTP answer", url);
    return NULL;
  }
  if (strncmp(data + 8, " 200", 4) != 0) {
    g_autofree char *line = g_strndup(data, strcspn(data, "\r\n"));
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "%s: %s", url, line);
    return NULL;
  }
  gsize head = (gsize)(end + 4 - data);
  gsize body_len = in->len - head;
  g_autofree char *headers = g_ascii_strdown(data, (gssize)head);
  const char *cl = strstr(headers, "\r\ncontent-length:");
  if (cl != NULL) {
    guint64 v = g_ascii_strtoull(cl + 17, NULL, 10);
    if (v > body_len) {
      g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "%s: answer cut short", url);
      return NULL;
    }
    body_len = (gsize)v;
  }
  if (body_len > max) {
    g_set_error(error, SIPCLIENT_ERROR, SIPCLIENT_ERROR_PROTOCOL, "%s: body too large", url);
    return NULL;
  }
  return g_bytes_new(in->data + head, body_len);
}
