/* server/stats: the daemon's counters (core, edge, nua adapter) as
 * Prometheus text, served on a UNIX control socket for `sipcred stats` and,
 * optionally, over HTTP on a loopback address for a Prometheus scraper.
 *
 * The control socket needs no request: a client connects and reads until
 * the server closes. The HTTP endpoint answers GET /metrics; other paths get
 * 404, other methods 405. Both write without blocking the main loop and give
 * up on a peer after a few seconds. */
#pragma once

#include <gio/gio.h>

#include "core/core.h"
#include "server/edge.h"
#include "server/nua-adapter.h"

G_BEGIN_DECLS

#define STATS_ERROR (stats_error_quark())
GQuark stats_error_quark(void);

typedef enum {
  STATS_ERROR_SOCKET, /* the control socket path cannot be used */
  STATS_ERROR_LISTEN, /* the metrics address cannot be bound */
} StatsError;

/* Where the numbers come from; any may be NULL (left out). Borrowed: they
 * must outlive the server. */
typedef struct {
  CoreService *core;
  Edge *edge;
  NuaAdapter *nua;
} StatsSources;

/* Prometheus text exposition format 0.0.4, every metric with HELP and TYPE. */
char *stats_render(const StatsSources *src);

typedef struct _StatsServer StatsServer;

/* Listens on @control_socket (a path; a stale socket there is replaced, any
 * other file is an error; mode 0600) and, unless @metrics_listen is NULL, on
 * that "ADDR:PORT" over HTTP. */
StatsServer *stats_server_new(const StatsSources *src, const char *control_socket,
                              const char *metrics_listen, GError **error);
/* The port the metrics endpoint bound (with port 0), else 0. */
guint16 stats_server_get_metrics_port(StatsServer *server);
void stats_server_free(StatsServer *server); /* removes the socket file */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StatsServer, stats_server_free)

G_END_DECLS
