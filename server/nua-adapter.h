/* server/nua-adapter: Sofia-SIP nua on the GLib main loop, and the CorePort
 * the core talks through. nua listens only on TCP at 127.0.0.1; the edge
 * relays every client flow to it. */
#pragma once

#include <glib.h>

#include "core/core.h"
#include "server/config.h"

G_BEGIN_DECLS

#define NUA_ADAPTER_ERROR (nua_adapter_error_quark())
GQuark nua_adapter_error_quark(void);

typedef enum {
  NUA_ADAPTER_ERROR_START, /* nua could not be created or bound */
} NuaAdapterError;

typedef struct _NuaAdapter NuaAdapter;

/* Creates nua on the default GMainContext, bound to a free TCP port on
 * 127.0.0.1 under the public name of the first served domain. */
NuaAdapter *nua_adapter_new(const SrvConfig *cfg, GError **error);
void nua_adapter_free(NuaAdapter *ad);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(NuaAdapter, nua_adapter_free)

guint16 nua_adapter_get_port(NuaAdapter *ad);

/* How often the server answered each method with each status: keys
 * "METHOD STATUS" (e.g. "PUBLISH 412"), values counts (GPOINTER_TO_SIZE).
 * Borrowed; only answers the core gave are counted (not nua's own 489s). */
GHashTable *nua_adapter_get_answer_counts(NuaAdapter *ad);

/* nua handles the application holds now: live dialogs, MESSAGEs awaiting
 * their answer, relayed MESSAGEs in flight. Back at its idle value once
 * traffic ends; growth without traffic is a leaked handle. */
guint nua_adapter_get_live_handles(NuaAdapter *ad);

/* The port to hand to core_service_new() together with @ad as port_data. */
const CorePort *nua_adapter_get_core_port(void);

/* The edge whose flows the requests come through: their TLS facts go to the
 * core with each request. */
struct _Edge;
void nua_adapter_set_edge(NuaAdapter *ad, struct _Edge *edge);

/* Requests reach the core from now on. */
void nua_adapter_attach_core(NuaAdapter *ad, CoreService *core);

/* Ends every dialog (subscribers get their terminating NOTIFY) and waits,
 * iterating the default main context, until nua is done or @timeout_ms has
 * passed. Returns FALSE on timeout. */
gboolean nua_adapter_shutdown(NuaAdapter *ad, guint timeout_ms);

G_END_DECLS
