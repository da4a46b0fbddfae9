#define G_LOG_DOMAIN "sipcred-changes"

#include "server/changes.h"

/* One read transaction returns at most this many entries; one poll reads
 * at most SRV_CHANGE_MAX_PER_POLL so that a burst (a bulk import) cannot
 * hold the main loop for long: the rest waits for the next tick. */
#define SRV_CHANGE_BATCH 256
#define SRV_CHANGE_MAX_PER_POLL 4096
#define SRV_CHANGE_DEFAULT_INTERVAL_MS 1000

struct _SrvChangeTail {
  StoreDb *db;
  CoreService *core;
  guint source_id;
  guint64 last_seq;
  gboolean started; /* last_seq holds the store's position */
  char *last_error; /* the last error logged, so a lasting one is logged once */
};

static void
srv_change_tail_report(SrvChangeTail *tail, const GError *error)
{
  if (g_strcmp0(tail->last_error, error->message) == 0)
    return;
  g_warning("reading the change log: %s; subscribers miss changes made by other processes until "
            "it can be read again",
            error->message);
  g_free(tail->last_error);
  tail->last_error = g_strdup(error->message);
}

static void
srv_change_tail_recovered(SrvChangeTail *tail)
{
  if (tail->last_error == NULL)
    return;
  g_message("the change log can be read again");
  g_clear_pointer(&tail->last_error, g_free);
}

static gboolean
srv_change_tail_start(SrvChangeTail *tail)
{
  g_autoptr(GError) error = NULL;
  guint64 seq = store_change_get_last_seq(tail->db, &error);

  if (error != NULL) {
    srv_change_tail_report(tail, error);
    return FALSE;
  }
  tail->last_seq = seq;
  tail->started = TRUE;
  return TRUE;
}

/* The log is below our position: the store was replaced (a backup put
 * back). Its history means nothing to us; continue from its end. */
static void
srv_change_tail_check_rewound(SrvChangeTail *tail)
{
  g_autoptr(GError) error = NULL;
  guint64 seq = store_change_get_last_seq(tail->db, &error);

  if (error != NULL) {
    srv_change_tail_report(tail, error);
    return;
  }
  if (seq < tail->last_seq) {
    g_warning("the change log went back from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT
              " (was the store replaced?); following it from there",
              tail->last_seq, seq);
    tail->last_seq = seq;
  }
}

guint
srv_change_tail_poll(SrvChangeTail *tail)
{
  g_autoptr(GHashTable) notified = NULL;
  g_autoptr(GError) error = NULL;
  guint consumed = 0;

  g_return_val_if_fail(tail != NULL, 0);

  if (!tail->started && !srv_change_tail_start(tail))
    return 0;
  /* The core reads the current credential when told, so one call per AOR
   * and poll is enough however often it changed. */
  notified = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  while (consumed < SRV_CHANGE_MAX_PER_POLL) {
    g_autoptr(GPtrArray) changes =
        store_change_list_since(tail->db, tail->last_seq, SRV_CHANGE_BATCH, &error);

    if (changes == NULL) {
      srv_change_tail_report(tail, error);
      return consumed;
    }
    if (changes->len == 0 && consumed == 0)
      srv_change_tail_check_rewound(tail);
    for (guint i = 0; i < changes->len; i++) {
      const StoreChange *change = g_ptr_array_index(changes, i);

      if (change->seq <= tail->last_seq)
        continue;
      tail->last_seq = change->seq;
      consumed++;
      if (change->kind == STORE_CHANGE_USER) {
        /* A new password must not leave old sessions holding keys. */
        core_user_changed(tail->core, change->aor);
        continue;
      }
      if (change->kind != STORE_CHANGE_CREDENTIAL && change->kind != STORE_CHANGE_REVOKED)
        continue;
      if (g_hash_table_contains(notified, change->aor))
        continue;
      g_hash_table_add(notified, g_strdup(change->aor));
      core_cert_changed(tail->core, change->aor);
    }
    if (changes->len < SRV_CHANGE_BATCH)
      break;
  }
  srv_change_tail_recovered(tail);
  if (consumed > 0)
    g_debug("change log: %u entries up to %" G_GUINT64_FORMAT ", %u credentials changed", consumed,
            tail->last_seq, g_hash_table_size(notified));
  return consumed;
}

static gboolean
srv_change_tail_tick(gpointer user_data)
{
  srv_change_tail_poll(user_data);
  return G_SOURCE_CONTINUE;
}

SrvChangeTail *
srv_change_tail_new(StoreDb *db, CoreService *core, guint interval_ms)
{
  SrvChangeTail *tail;

  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(core != NULL, NULL);

  tail = g_new0(SrvChangeTail, 1);
  tail->db = db;
  tail->core = core;
  /* Read the position now: what happened before we started is not news. */
  srv_change_tail_start(tail);
  tail->source_id = g_timeout_add(interval_ms > 0 ? interval_ms : SRV_CHANGE_DEFAULT_INTERVAL_MS,
                                  srv_change_tail_tick, tail);
  g_source_set_name_by_id(tail->source_id, "sipcred change log");
  return tail;
}

void
srv_change_tail_free(SrvChangeTail *tail)
{
  if (tail == NULL)
    return;
  g_clear_handle_id(&tail->source_id, g_source_remove);
  g_free(tail->last_error);
  g_free(tail);
}

guint64
srv_change_tail_get_last_seq(SrvChangeTail *tail)
{
  g_return_val_if_fail(tail != NULL, 0);
  return tail->last_seq;
}
