/* server/infoserver: the built-in HTTPS endpoint that Identity-Info points
 * at (RFC 4474 section 6.2): GET /DOMAIN.der answers with the certificate of
 * that served domain, DER, application/pkix-cert.
 *
 * TLS is GnuTLS with the domains' own certificates (chosen by SNI) and the
 * edge's TLS floor. Each connection is served by a short-lived thread with
 * socket timeouts, so a slow client never stalls the main loop; connections
 * are bounded in number, size and time. */
#pragma once

#include <glib.h>

#include "server/config.h"

G_BEGIN_DECLS

typedef struct _InfoServer InfoServer;

/* Most connections served at once; more are closed at accept. */
#define INFO_SERVER_MAX_CONNECTIONS 64
/* Longest request head read, and the time a connection may take. */
#define INFO_SERVER_MAX_HEAD 8192
#define INFO_SERVER_TIMEOUT_S 10

/* Loads the certificate and key of every [domain] group. Opens nothing. */
InfoServer *info_server_new(const SrvConfig *cfg, GError **error);
void info_server_free(InfoServer *srv);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(InfoServer, info_server_free)

/* Binds [identity] https-listen and starts serving on the default main
 * context. */
gboolean info_server_start(InfoServer *srv, GError **error);

/* The port the @index-th listener bound (useful with port 0). */
guint16 info_server_get_port(InfoServer *srv, guint index);

/* domain -> https://HOST:PORT/DOMAIN.der, HOST being [identity] public-host
 * or the first listener's address. After info_server_start(). */
GHashTable *info_server_dup_urls(InfoServer *srv);

/* Re-reads the certificates and keys (SIGHUP); on error nothing changes. */
gboolean info_server_reload(InfoServer *srv, const SrvConfig *cfg, GError **error);

G_END_DECLS
