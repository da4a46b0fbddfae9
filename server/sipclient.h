/* server/sipclient: a small SIP-over-TLS user agent for the sipcred client
 * commands (fetch, publish, retrieve, revoke). Blocking I/O on one TLS
 * connection, every wait bounded by a deadline; GnuTLS underneath.
 *
 * Server verification follows sec-flows section 7 (tests 6-11), not the
 * looser RFC 6125 rules GnuTLS applies by default:
 * - the chain must end at a trust anchor of the CA file (SIPCLIENT_ERROR_UNTRUSTED);
 * - no certificate of the chain may be revoked by a CRL that a trust
 *   anchor signed (SIPCLIENT_ERROR_REVOKED);
 * - every certificate of the chain must be within its validity period
 *   (SIPCLIENT_ERROR_VALIDITY);
 * - the expected name must equal a subjectAltName dNSName (no wildcards);
 *   the most specific Subject CN counts only when there are no dNSNames
 *   at all (SIPCLIENT_ERROR_NAME).
 * A revoked certificate is reported as revoked even when its chain is
 * otherwise fine; the checks run in the order above. */
#pragma once

#include <glib.h>

#include "server/sipwire.h"

G_BEGIN_DECLS

#define SIPCLIENT_ERROR (sipclient_error_quark())
GQuark sipclient_error_quark(void);

typedef enum {
  SIPCLIENT_ERROR_FILE,      /* CA or CRL file unreadable or unusable */
  SIPCLIENT_ERROR_CONNECT,   /* name resolution or TCP connect failed */
  SIPCLIENT_ERROR_TLS,       /* TLS handshake or record layer failed */
  SIPCLIENT_ERROR_NAME,      /* the server certificate does not name the server (test 8) */
  SIPCLIENT_ERROR_UNTRUSTED, /* chain does not end at a trust anchor (test 9) */
  SIPCLIENT_ERROR_VALIDITY,  /* a certificate outside notBefore..notAfter (test 10) */
  SIPCLIENT_ERROR_REVOKED,   /* a certificate of the chain is revoked (test 11) */
  SIPCLIENT_ERROR_TIMEOUT,   /* the deadline passed */
  SIPCLIENT_ERROR_CLOSED,    /* the peer closed the connection */
  SIPCLIENT_ERROR_PROTOCOL,  /* a message we cannot frame or use */
  SIPCLIENT_ERROR_AUTH,      /* digest challenge unusable, or credentials refused */
} SipclientError;

/* ---- Trust anchors and revocation ---------------------------------------- */

typedef struct _SipclientTrust SipclientTrust;

/* @ca_file: PEM with one or more trust anchors. @crl_files (may be NULL):
 * CRLs, PEM or DER; each must be signed by one of the anchors, else
 * SIPCLIENT_ERROR_FILE (a CRL we silently ignored would hide a revocation). */
SipclientTrust *sipclient_trust_new(const char *ca_file, const char *const *crl_files,
                                    GError **error);
void sipclient_trust_free(SipclientTrust *trust);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SipclientTrust, sipclient_trust_free)

/* Verifies @chain (DER, leaf first, @n >= 1) for @name at @now (unix
 * seconds) with the rules above. */
gboolean sipclient_trust_verify(SipclientTrust *trust, GBytes *const *chain, guint n,
                                const char *name, gint64 now, GError **error);

/* The same checks without the name rule, for a certificate that is not a
 * server's (a CA-issued user certificate, sec-flows 7 tests 3-5): chain,
 * revocation, validity, in that order. @what names it in messages. */
gboolean sipclient_trust_verify_chain(SipclientTrust *trust, GBytes *const *chain, guint n,
                                      const char *what, gint64 now, GError **error);

/* TRUE when @cert_der names @name under the rules above (exact dNSName, CN
 * only without dNSNames). */
gboolean sipclient_cert_names(const guint8 *cert_der, gsize len, const char *name);

/* ---- Connection ------------------------------------------------------------ */

typedef struct _SipclientConn SipclientConn;

/* Connects to @host:@port, does the TLS handshake with SNI @name (not sent
 * when @name is an IP address) and verifies the server for @name. Every
 * step finishes by @deadline (g_get_monotonic_time() microseconds). */
SipclientConn *sipclient_conn_open(const char *host, guint16 port, const char *name,
                                   SipclientTrust *trust, gint64 deadline, GError **error);
void sipclient_conn_free(SipclientConn *conn);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SipclientConn, sipclient_conn_free)

/* Local address and port, for Via and Contact. */
const char *sipclient_conn_get_local_host(SipclientConn *conn);
guint16 sipclient_conn_get_local_port(SipclientConn *conn);

gboolean sipclient_conn_send(SipclientConn *conn, const void *data, gsize len, gint64 deadline,
                             GError **error);
/* The next message (framed by Content-Length); *@raw (may be NULL)
 * receives its exact bytes, which is what an Identity covers. */
SipwireMsg *sipclient_conn_read(SipclientConn *conn, gint64 deadline, GBytes **raw,
                                GError **error);

/* ---- Requests --------------------------------------------------------------- */

typedef struct {
  const char *method;
  const char *uri;  /* Request-URI and To */
  const char *from; /* From URI */
  const char *call_id;
  const char *from_tag;
  const char *to_tag;         /* NULL outside a dialog */
  const char *const *headers; /* extra "Name: value" lines, NULL-terminated, or NULL */
  const char *content_type;   /* NULL without body */
  GBytes *body;               /* NULL or empty: no body */
  const char *user;           /* digest username, NULL: do not answer a 401 */
  const char *password;
} SipclientRequest;

/* Sends @req with CSeq *@cseq (incremented for every request sent) and
 * waits for its final response. A 401 is answered once with digest when
 * @req->user is set (SHA-256 preferred to MD5, qop=auth). NOTIFYs that
 * arrive meanwhile are answered 200 and their raw bytes appended to
 * @notifies (may be NULL). Other requests get 481. */
SipwireMsg *sipclient_request(SipclientConn *conn, const SipclientRequest *req, guint32 *cseq,
                              GPtrArray *notifies, gint64 deadline, GError **error);

/* Answers a received request with @status (200 for a NOTIFY we read). */
gboolean sipclient_conn_answer(SipclientConn *conn, const SipwireMsg *request, guint status,
                               const char *phrase, gint64 deadline, GError **error);

/* The Authorization value answering the WWW-Authenticate @challenges
 * (SHA-256 taken first, then MD5; qop must offer auth) for @method and
 * @uri, nonce count @nc. SIPCLIENT_ERROR_AUTH when none is usable. */
char *sipclient_digest_authorization(GPtrArray *challenges, const char *user, const char *password,
                                     const char *method, const char *uri, guint nc,
                                     GError **error);

/* A fresh random token for tags, Call-IDs and branches. */
char *sipclient_token(void);

/* ---- HTTPS ------------------------------------------------------------------ */

/* GET @url (https only, no redirects, at most @max bytes of body), with the
 * server verified for @name (not the URL host: an Identity-Info URL must
 * be served by the signing domain). Returns the body of a 200. */
GBytes *sipclient_https_get(const char *url, const char *name, SipclientTrust *trust, gsize max,
                            gint64 deadline, GError **error);

G_END_DECLS
