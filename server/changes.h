/* server/changes: tails the store's change log, so that a change made by
 * another process (sipcred, while the daemon runs) reaches subscribers.
 *
 * A GLib timeout on the default main context (g_timeout_add) polls
 * store_change_list_since() and calls core_cert_changed() for every
 * credential that was written or revoked. Only changes made after
 * srv_change_tail_new() are acted on: old history is not replayed. */
#pragma once

#include <glib.h>

#include "core/core.h"
#include "storage/store.h"

G_BEGIN_DECLS

typedef struct _SrvChangeTail SrvChangeTail;

/* Starts tailing @db every @interval_ms (0 means 1000) milliseconds. @db
 * and @core must outlive the tail. Never fails: a store error is logged and
 * the next poll tries again. */
SrvChangeTail *srv_change_tail_new(StoreDb *db, CoreService *core, guint interval_ms);
void srv_change_tail_free(SrvChangeTail *tail);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SrvChangeTail, srv_change_tail_free)

/* Polls now, outside the timer (also what the timer calls). Returns the
 * number of log entries consumed. */
guint srv_change_tail_poll(SrvChangeTail *tail);

/* The highest sequence number acted on so far. */
guint64 srv_change_tail_get_last_seq(SrvChangeTail *tail);

G_END_DECLS
