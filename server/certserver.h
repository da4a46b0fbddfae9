/* server/certserver: a small HTTPS endpoint that serves each domain's
 * certificate as DER (application/pkix-cert), for the RFC 4474 Identity-Info
 * URL. Self-contained: it knows nothing of the configuration file.
 *
 * - TLS is GnuTLS directly on non-blocking sockets, driven by the GLib main
 *   context that was the thread default when cert_server_new() ran. Nothing
 *   blocks that context. GIO's GTlsServerConnection cannot pick a
 *   certificate by SNI, hence GnuTLS.
 * - TLS 1.2 and 1.3 only, with the edge's priority floor.
 * - The TLS certificate is chosen by SNI, case-insensitively; without SNI, or
 *   for an unknown name, the first domain added is used.
 * - GET or HEAD /DOMAIN.der (DOMAIN in lower case; the path is matched
 *   case-insensitively, a query is ignored) answers 200 with the DER given
 *   for that domain, on any connection whatever its SNI. Other paths: 404.
 *   Other methods: 405 with Allow. HTTP/1.0 and 1.1 only (505 otherwise).
 * - One request per connection (Connection: close). The request head is
 *   limited to CERT_SERVER_MAX_HEAD bytes (431), each connection to
 *   CERT_SERVER_TIMEOUT_MS from accept to the response, and the server to
 *   CERT_SERVER_MAX_CONNECTIONS at once; connections past that are closed at
 *   accept. */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define CERT_SERVER_ERROR (cert_server_error_quark())
GQuark cert_server_error_quark(void);

typedef enum {
  CERT_SERVER_ERROR_INVALID, /* a bad argument: domain name, address, DER */
  CERT_SERVER_ERROR_TLS,     /* GnuTLS refused a certificate, key or priority */
  CERT_SERVER_ERROR_LISTEN,  /* could not bind or listen */
} CertServerError;

#define CERT_SERVER_MAX_CONNECTIONS 64
#define CERT_SERVER_MAX_HEAD 8192
#define CERT_SERVER_TIMEOUT_MS 10000

typedef struct _CertServer CertServer;

/* One served domain, for cert_server_reload(). */
typedef struct {
  const char *domain;            /* DNS name; the TLS certificate must name it */
  const char *tls_cert_pem_path; /* chain, leaf first */
  const char *tls_key_pem_path;
  GBytes *served_cert_der; /* what GET /DOMAIN.der returns (borrowed) */
} CertServerDomain;

CertServer *cert_server_new(GError **error);
void cert_server_free(CertServer *srv);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CertServer, cert_server_free)

/* Loads the TLS certificate and key of @domain and what /DOMAIN.der serves.
 * Fails if the domain is already served, the key does not match, the
 * certificate does not name @domain or @served_cert_der is not a
 * certificate. May be called while listening. */
gboolean cert_server_add_domain(CertServer *srv, const char *domain, const char *tls_cert_pem_path,
                                const char *tls_key_pem_path, GBytes *served_cert_der,
                                GError **error);

/* Replaces every domain at once (SIGHUP); on error nothing changes.
 * Connections already open finish with what they started with. */
gboolean cert_server_reload(CertServer *srv, const CertServerDomain *domains, guint n_domains,
                            GError **error);

/* Binds an IP literal and port: "127.0.0.1:8443", "[::1]:8443"; port 0
 * picks a free one. May be called several times. */
gboolean cert_server_listen(CertServer *srv, const char *addr_port, GError **error);

/* The port the @index-th successful cert_server_listen() bound; 0 if none. */
guint16 cert_server_get_port(CertServer *srv, guint index);

/* https://HOST[:PORT]/DOMAIN.der for Identity-Info, PORT being the first
 * listener's (omitted when 443). HOST is @public_host, or @domain when NULL,
 * which is the name whose certificate a client sending SNI gets. NULL if
 * @domain is not served or nothing listens. */
char *cert_server_url_for(CertServer *srv, const char *public_host, const char *domain);

/* For tests: lower the limits. 0 keeps the current value. */
void cert_server_set_limits(CertServer *srv, guint max_connections, guint timeout_ms);

G_END_DECLS
