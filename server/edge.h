/* server/edge: the GnuTLS edge. It terminates direct TLS from clients,
 * enforces the cipher-suite policy and connection limits, frames SIP on each
 * TLS stream, and relays each client flow to nua (plain TCP on 127.0.0.1)
 * using the Via flow-token / Record-Route scheme of DESIGN.md. Everything
 * runs on the GLib main context of the caller. */
#pragma once

#include <gio/gio.h>

#include "server/config.h"

G_BEGIN_DECLS

#define EDGE_ERROR (edge_error_quark())
GQuark edge_error_quark(void);

typedef enum {
  EDGE_ERROR_TLS,    /* GnuTLS refused a credential or the priority string */
  EDGE_ERROR_LISTEN, /* could not bind/listen */
  EDGE_ERROR_POLICY, /* the priority string enables something forbidden */
} EdgeError;

/* The TLS suffix always appended to the configured priority string, so no
 * configuration can enable SSL 3.0, TLS 1.0/1.1, NULL, anonymous or RC4. */
#define EDGE_TLS_PRIORITY_FLOOR                                                                   \
  ":-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1:-NULL:-ARCFOUR-128:-ANON-DH:-ANON-ECDH"

typedef struct _Edge Edge;

/* Facts about one client flow, for the core's policy decisions. */
typedef struct {
  char *peer_addr;       /* "IP:PORT" */
  char *tls_version;     /* "TLS1.3" */
  char *cipher_suite;    /* GnuTLS suite name */
  char *sni;             /* server name the client asked for, or NULL */
  GBytes *peer_cert_der; /* client certificate, or NULL */
} EdgeFlowInfo;

void edge_flow_info_clear(EdgeFlowInfo *info);

/* Loads certificates/keys per domain (SNI) and checks the priority string.
 * Opens nothing yet. */
Edge *edge_new(const SrvConfig *cfg, GError **error);
void edge_free(Edge *edge);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Edge, edge_free)

/* Opens the internal listener (127.0.0.1, ephemeral port) and the public TLS
 * listeners, and starts relaying to nua at 127.0.0.1:@nua_port. */
gboolean edge_start(Edge *edge, guint16 nua_port, GError **error);

/* Port of the internal listener nua sends requests to (after edge_start). */
guint16 edge_get_internal_port(Edge *edge);
/* Port actually bound by the first public listener (useful with port 0). */
guint16 edge_get_public_port(Edge *edge);

/* Re-reads the certificates and keys of @cfg (SIGHUP). Existing flows keep
 * their sessions; new handshakes use the new credentials. On error nothing
 * changes. */
gboolean edge_reload_credentials(Edge *edge, const SrvConfig *cfg, GError **error);

/* Takes the [tls] limits of @cfg (connections, per-IP connections,
 * timeouts, message size) for what comes next; nothing open is cut. */
void edge_reload_limits(Edge *edge, const SrvConfig *cfg);

/* The identity stage (RFC 4474, RFC 6072 section 8): from now on every
 * NOTIFY to a client leaves signed, after every header rewrite, by the key
 * and certificate of the [domain] group that its From host names, with
 * `Identity-Info: <@info_urls[domain]>;alg=...` (@info_urls: domain -> URL,
 * copied). Signing runs on a thread pool ([identity] threads); messages keep
 * their order within a flow. A NOTIFY that cannot be signed is not sent:
 * nua gets 500. SIGHUP reloads the keys with the TLS ones. */
gboolean edge_enable_identity(Edge *edge, const SrvConfig *cfg, GHashTable *info_urls,
                              GError **error);

/* Messages queued in or being signed by the identity stage. The core's
 * fan-out window bounds it: a NOTIFY counts in flight until answered. */
guint edge_get_sign_pending(Edge *edge);

/* What the edge counts (totals since the start, and the state now). */
typedef struct {
  guint connections; /* client connections open, handshaking or not */
  guint flows;       /* of them, with the TLS handshake done */
  guint64 connections_accepted;
  guint64 connections_refused;  /* max-connections or max-connections-per-ip */
  guint64 handshakes;           /* completed */
  guint64 handshakes_failed;    /* a TLS error (no common suite, bad record...) */
  guint64 handshakes_timed_out; /* handshake-timeout */
  guint64 messages_timed_out;   /* message-timeout (a message left unfinished) */
  guint64 signed_messages;      /* Identity added */
  guint64 sign_failures;
  guint sign_pending;    /* waiting in the signing pool */
  guint64 sign_us_total; /* submit-to-signed time, summed */
  guint64 sign_us_max;
} EdgeStats;

void edge_get_stats(Edge *edge, EdgeStats *out);

/* Facts of the flow named by @flow_token. FALSE when it is gone. */
gboolean edge_flow_lookup(Edge *edge, const char *flow_token, EdgeFlowInfo *out);

/* Stops accepting and closes every flow. */
void edge_stop(Edge *edge);

guint edge_get_n_flows(Edge *edge);

G_END_DECLS
