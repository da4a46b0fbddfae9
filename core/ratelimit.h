/* core ratelimit: token buckets keyed by text (a source address, an AOR, a
 * user), for refusing request floods. Pure: no I/O, times are the caller's
 * unix seconds.
 *
 * Each key has a bucket of at most @burst tokens that refills at @rate
 * tokens per second; a request takes one token or is refused. A bucket that
 * has refilled to @burst says nothing a missing bucket would not, so it is
 * dropped. The table is bounded: at most @max_entries buckets, kept in
 * least-recently-used order; refilled buckets at the old end are dropped as
 * requests pass, and a new key in a full table evicts the least recently
 * used bucket. Evicting a bucket only gives that key a fresh burst, so an
 * attacker who floods with more keys than @max_entries weakens the limit for
 * the keys it evicts but never refuses a key that has not been over it, and
 * the memory stays bounded whatever keys it chooses.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _CoreRatelimit CoreRatelimit;

/* @rate tokens per second (0, or a @burst of 0: no limit), @burst tokens at
 * most, @max_entries buckets at most (at least 1). */
CoreRatelimit *core_ratelimit_new(double rate, guint burst, guint max_entries);
void core_ratelimit_free(CoreRatelimit *rl);

/* New limits (a configuration reload). Buckets keep their tokens, clipped to
 * the new burst; with no limit, or fewer entries allowed, buckets go. */
void core_ratelimit_set(CoreRatelimit *rl, double rate, guint burst, guint max_entries);

/* Takes a token from @key's bucket at @now. FALSE: refused; *@retry_after
 * (optional) is the whole seconds until the next token, at least 1. A NULL
 * @key is never limited. */
gboolean core_ratelimit_take(CoreRatelimit *rl, const char *key, gint64 now, guint *retry_after);

/* Requests of @key refused since its bucket was made (a bucket goes once it
 * has refilled): 1 marks the start of a flood, worth one log line. */
guint core_ratelimit_get_refusals(CoreRatelimit *rl, const char *key);

/* Buckets held now. */
guint core_ratelimit_get_size(CoreRatelimit *rl);

/* The key a source address "IP:PORT", "[IPv6]:PORT" or bare IP is limited
 * by: the IP without the port (each new connection has a new port), and for
 * IPv6 its /64 prefix, which one host or site holds (a limit per address
 * would let one host spread a flood over its 2^64 addresses). NULL for
 * NULL. */
char *core_ratelimit_source_key(const char *peer_addr);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(CoreRatelimit, core_ratelimit_free)

G_END_DECLS
