/* core: the service state shared by core.c, auth.c and publish.c. Not for
 * use outside core/ (tests use core.h and core-private.h). */
#pragma once

#include "core/core-private.h"
#include "core/digest.h"
#include "core/ratelimit.h"

G_BEGIN_DECLS

/* The state of one AOR as a package serves it. */
typedef struct {
  GBytes *body;       /* empty: no state */
  char *content_type; /* NULL when body is empty */
  gboolean stored;    /* the store has a record (maybe expired) */
  gint64 not_after;   /* of the stored certificate, 0 without one */
} CoreState;

void core_state_clear(CoreState *state);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(CoreState, core_state_clear)

typedef struct _CorePackage CorePackage;

/* The request rate limits, as in CoreRateLimits. */
typedef enum {
  CORE_LIMIT_SUBSCRIBE_SOURCE,
  CORE_LIMIT_SUBSCRIBE_AOR,
  CORE_LIMIT_PUBLISH_USER,
  CORE_LIMIT_REGISTER_USER,
  CORE_LIMIT_MESSAGE_USER,
  CORE_N_LIMITS,
} CoreLimit;

struct _CoreService {
  CoreConfig cfg;
  char **domains;
  StoreDb *store;
  CorePort port;
  gpointer port_data;
  char *allow_events;
  CoreCredGetCb cred_get;
  gpointer cred_get_data;

  GHashTable *subs;    /* sub -> CoreSub (owned) */
  GHashTable **by_aor; /* per package: AOR -> CoreAorSubs (owned) */
  GQueue fanout;       /* CoreSub waiting for a slot */
  guint in_flight;     /* NOTIFYs awaiting core_notify_done() */
  gboolean pumping;

  GHashTable *digests;    /* realm (served domain) -> CoreDigest (owned) */
  GHashTable *generating; /* AOR -> GCancellable, while a credential is made */
  GHashTable *relay_legs; /* CoreRelayLeg set (owned): MESSAGE copies in flight */
  CoreStats stats;        /* the totals; the rest is counted on demand */
  CoreRatelimit *limits[CORE_N_LIMITS];
};

/* Reads @aor's record through the test seam or the store. */
StoreCred *core_cred_read(CoreService *svc, const char *aor, GError **error);

/* Takes a token of @limit for @key (NULL: not limited). Over the limit it
 * answers @txn 503 with a reason naming the limit and Retry-After, counts
 * it, and returns FALSE. */
gboolean core_limit_take(CoreService *svc, gpointer txn, CoreLimit limit, const char *key);

/* Answers @txn. */
void core_respond(CoreService *svc, gpointer txn, const CoreResponse *resp);
void core_respond_error(CoreService *svc, gpointer txn, guint status, const char *phrase);
/* A non-zero @expires below min-expires: answers 423 with Min-Expires and
 * returns TRUE. */
gboolean core_refuse_brief_expires(CoreService *svc, gpointer txn, guint32 expires);
/* When @error is STORE_ERROR_FULL (the map at [store] max-map-size, or the
 * disk full): logs it with @what, answers 503 "Store full" with Retry-After
 * and returns TRUE. The failed write changed nothing. */
gboolean core_respond_if_store_full(CoreService *svc, gpointer txn, const char *what,
                                    const GError *error);

/* The credential state of @aor changed in the store (written by this
 * process or found in the change log): bring every subscriber of both
 * packages up to date. */
void core_aor_state_changed(CoreService *svc, const char *aor);

/* ---- registrar.c ---- */

/* The unexpired bindings of @aor (StoreBinding*, owned array). */
GPtrArray *core_registrar_current_bindings(CoreService *svc, const char *aor, gint64 now,
                                           GError **error);

/* ---- relay.c ---- */

void core_relay_init(CoreService *svc);
void core_relay_clear(CoreService *svc);

/* ---- auth.c ---- */

/* Creates the per-realm digest state. */
void core_auth_init(CoreService *svc);
void core_auth_clear(CoreService *svc);
/* Applies svc->cfg's nonce lifetime and limits to every realm. */
void core_auth_reload(CoreService *svc);

/* Digest authentication alone (RFC 3261 22, RFC 7616) in @realm, a served
 * domain: returns the canonical AOR of the authenticated user, or NULL when
 * it has answered @txn (400, 401 with fresh challenges, 403 lockout, 500).
 * @user_out (optional) receives the user's record. */
char *core_auth_authenticate(CoreService *svc, gpointer txn, const char *method,
                             const char *request_uri, const char *realm, const char *peer_addr,
                             const char *const *authorization, StoreUser **user_out);

/* Whose request is this? The policy of RFC 6072 7.6/7.9 for credential
 * operations: the request came directly over TLS (@direct), carries valid
 * digest credentials for the realm of @aor, and the authenticated user is
 * @aor, which the Request-URI and @to_uri both name. Returns TRUE when all
 * hold; otherwise it has answered @txn (400, 401, 403) and returns FALSE.
 * @user_out (optional) receives the user's record. */
gboolean core_auth_authorize(CoreService *svc, gpointer txn, const char *method,
                             const char *request_uri, const char *aor, const char *to_uri,
                             gboolean direct, const char *peer_addr,
                             const char *const *authorization, StoreUser **user_out);

G_END_DECLS
