#define G_LOG_DOMAIN "sipcred-ratelimit"

/* core/ratelimit: token buckets in a bounded table (see ratelimit.h).
 *
 * The clock has whole seconds, so a bucket refills in steps; a fractional
 * rate (0.2: one token per 5 s) works because the tokens are kept as a
 * double. The table is a hash for lookup and a list in least-recently-used
 * order for pruning and eviction, both O(1) per request.
 */

#include "core/ratelimit.h"

#include <gio/gio.h>
#include <string.h>

/* Tolerance for the rounding of fractional rates. */
#define CORE_RATELIMIT_EPSILON 1e-9
/* Refilled buckets dropped from the old end per request: more than one, so
 * that pruning keeps up with a table that grows by one per request. */
#define CORE_RATELIMIT_PRUNE 2

typedef struct {
  char *key; /* also the hash key */
  double tokens;
  gint64 at;     /* when tokens was right */
  guint refused; /* requests refused since the bucket was made */
  GList link;    /* in CoreRatelimit.lru, most recently used last */
} CoreBucket;

struct _CoreRatelimit {
  double rate;
  guint burst;
  guint max_entries;
  GHashTable *buckets; /* key -> CoreBucket (owned) */
  GQueue lru;          /* CoreBucket, through link */
};

static void
core_bucket_free(gpointer data)
{
  CoreBucket *b = data;
  g_free(b->key);
  g_free(b);
}

static gboolean
core_ratelimit_off(const CoreRatelimit *rl)
{
  return !(rl->rate > 0) || rl->burst == 0;
}

/* The tokens @b holds at @now. A clock that went back refills nothing. */
static double
core_bucket_level(const CoreRatelimit *rl, const CoreBucket *b, gint64 now)
{
  if (now <= b->at)
    return b->tokens;
  return MIN((double)rl->burst, b->tokens + (double)(now - b->at) * rl->rate);
}

static void
core_ratelimit_remove(CoreRatelimit *rl, CoreBucket *b)
{
  g_queue_unlink(&rl->lru, &b->link);
  g_hash_table_remove(rl->buckets, b->key); /* frees b */
}

CoreRatelimit *
core_ratelimit_new(double rate, guint burst, guint max_entries)
{
  CoreRatelimit *rl = g_new0(CoreRatelimit, 1);
  rl->rate = rate;
  rl->burst = burst;
  rl->max_entries = MAX(max_entries, 1);
  rl->buckets = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, core_bucket_free);
  g_queue_init(&rl->lru);
  return rl;
}

void
core_ratelimit_free(CoreRatelimit *rl)
{
  if (rl == NULL)
    return;
  g_queue_init(&rl->lru); /* the links live in the buckets */
  g_hash_table_destroy(rl->buckets);
  g_free(rl);
}

void
core_ratelimit_set(CoreRatelimit *rl, double rate, guint burst, guint max_entries)
{
  g_return_if_fail(rl != NULL);

  rl->rate = rate;
  rl->burst = burst;
  rl->max_entries = MAX(max_entries, 1);
  if (core_ratelimit_off(rl)) {
    g_queue_init(&rl->lru);
    g_hash_table_remove_all(rl->buckets);
    return;
  }
  for (GList *l = rl->lru.head; l != NULL; l = l->next) {
    CoreBucket *b = l->data;
    b->tokens = MIN(b->tokens, (double)burst);
  }
  while (rl->lru.length > rl->max_entries)
    core_ratelimit_remove(rl, rl->lru.head->data);
}

gboolean
core_ratelimit_take(CoreRatelimit *rl, const char *key, gint64 now, guint *retry_after)
{
  g_return_val_if_fail(rl != NULL, TRUE);

  if (retry_after != NULL)
    *retry_after = 0;
  if (key == NULL || core_ratelimit_off(rl))
    return TRUE;

  /* The oldest buckets are the likeliest to have refilled. */
  for (guint i = 0; i < CORE_RATELIMIT_PRUNE && rl->lru.head != NULL; i++) {
    CoreBucket *old = rl->lru.head->data;
    if (core_bucket_level(rl, old, now) + CORE_RATELIMIT_EPSILON < rl->burst)
      break;
    core_ratelimit_remove(rl, old);
  }

  CoreBucket *b = g_hash_table_lookup(rl->buckets, key);
  if (b == NULL) {
    if (rl->lru.length >= rl->max_entries)
      core_ratelimit_remove(rl, rl->lru.head->data);
    b = g_new0(CoreBucket, 1);
    b->key = g_strdup(key);
    b->tokens = rl->burst;
    b->at = now;
    b->link.data = b;
    g_hash_table_insert(rl->buckets, b->key, b);
    g_queue_push_tail_link(&rl->lru, &b->link);
  } else {
    b->tokens = core_bucket_level(rl, b, now);
    b->at = MAX(b->at, now);
    if (b->tokens + CORE_RATELIMIT_EPSILON >= rl->burst)
      b->refused = 0; /* refilled: as good as a new bucket */
    g_queue_unlink(&rl->lru, &b->link);
    g_queue_push_tail_link(&rl->lru, &b->link);
  }

  if (b->tokens + CORE_RATELIMIT_EPSILON >= 1.0) {
    b->tokens = MAX(b->tokens - 1.0, 0.0);
    return TRUE;
  }
  b->refused = MIN(b->refused, G_MAXUINT - 1) + 1;
  if (retry_after != NULL) {
    /* Rounded up without libm: the next whole second with a token. */
    double wait = MIN((1.0 - b->tokens) / rl->rate, (double)G_MAXINT32);
    guint secs = (guint)wait;
    if ((double)secs + CORE_RATELIMIT_EPSILON < wait)
      secs++;
    *retry_after = MAX(secs, 1);
  }
  return FALSE;
}

guint
core_ratelimit_get_refusals(CoreRatelimit *rl, const char *key)
{
  g_return_val_if_fail(rl != NULL, 0);

  const CoreBucket *b = key != NULL ? g_hash_table_lookup(rl->buckets, key) : NULL;
  return b != NULL ? b->refused : 0;
}

guint
core_ratelimit_get_size(CoreRatelimit *rl)
{
  g_return_val_if_fail(rl != NULL, 0);

  return g_hash_table_size(rl->buckets);
}

char *
core_ratelimit_source_key(const char *peer_addr)
{
  if (peer_addr == NULL)
    return NULL;
  g_autofree char *host = NULL;
  if (peer_addr[0] == '[') {
    const char *end = strchr(peer_addr, ']');
    host = end != NULL ? g_strndup(peer_addr + 1, end - peer_addr - 1) : g_strdup(peer_addr);
  } else {
    const char *colon = strrchr(peer_addr, ':');
    /* One colon: IPv4 with a port; more: a bare IPv6 address. */
    host = colon != NULL && strchr(peer_addr, ':') == colon
               ? g_strndup(peer_addr, colon - peer_addr)
               : g_strdup(peer_addr);
  }
  g_autoptr(GInetAddress) addr = g_inet_address_new_from_string(host);
  if (addr == NULL || g_inet_address_get_family(addr) != G_SOCKET_FAMILY_IPV6)
    return g_steal_pointer(&host);

  guint8 bytes[16];
  memcpy(bytes, g_inet_address_to_bytes(addr), sizeof bytes);
  static const guint8 v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(bytes, v4_mapped, sizeof v4_mapped) == 0)
    return g_strdup_printf("%u.%u.%u.%u", bytes[12], bytes[13], bytes[14], bytes[15]);
  memset(bytes + 8, 0, 8);
  g_autoptr(GInetAddress) prefix = g_inet_address_new_from_bytes(bytes, G_SOCKET_FAMILY_IPV6);
  g_autofree char *text = g_inet_address_to_string(prefix);
  return g_strdup_printf("%s/64", text);
}
