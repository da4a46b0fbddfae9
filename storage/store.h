/* storage: the LMDB store of everything sipcred knows.
 *
 * One environment per state directory. Several processes (daemon and CLI) may
 * open it at once; every write commits durably before it reports success.
 * This module knows nothing about SIP messages: AORs are opaque canonical
 * strings ("sip:alice@example.com") handed in by callers.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define STORE_ERROR (store_error_quark())
GQuark store_error_quark(void);

typedef enum {
  STORE_ERROR_NOT_FOUND,    /* no such record */
  STORE_ERROR_FULL,         /* map or disk full and growing did not help */
  STORE_ERROR_IO,           /* the file system refused */
  STORE_ERROR_CORRUPT,      /* a record or the environment is damaged */
  STORE_ERROR_SCHEMA,       /* schema version newer than this build knows */
  STORE_ERROR_BUSY,         /* reader table full or lock held */
  STORE_ERROR_INVALID,      /* caller passed something unstorable */
  STORE_ERROR_KEY,          /* master key missing, unsafe (mode), malformed or not the store's */
  STORE_ERROR_PRECONDITION, /* a conditional write found no record, or another ETag */
} StoreError;

/* Current on-disk schema version; see store_db_open() for migrations. */
#define STORE_SCHEMA_VERSION 2

typedef struct _StoreDb StoreDb;

/* Opens (creating if needed) the store in directory @dir, mode 0700.
 * @map_size is the initial map size in bytes (0 for the default, 64 MiB); the
 * map grows on demand. Stale reader slots are cleared. */
StoreDb *store_db_open(const char *dir, guint64 map_size, GError **error);
void store_db_free(StoreDb *db);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreDb, store_db_free)

/* Caps the growth of the map at @max_size bytes (0: the default, 64 GiB).
 * A write that finds the map full at the cap fails with STORE_ERROR_FULL and
 * leaves the store as it was; reads go on. A map already larger (grown by
 * another process) is kept, it only stops growing. Applies to every StoreDb
 * of the same directory in this process; may be called at any time. */
void store_db_set_map_size_max(StoreDb *db, guint64 max_size);

/* The change log keeps at least its newest @keep entries and whatever is
 * younger than @min_age seconds; older ones go as later writes append
 * (defaults: 10,000 entries, one hour). Applies to every StoreDb of the same
 * directory in this process. */
void store_db_set_change_retention(StoreDb *db, guint keep, gint64 min_age);

/* Schema version recorded in the store's meta table. */
guint store_db_get_schema_version(StoreDb *db);

/* How the private key of a credential is held. */
typedef enum {
  STORE_KEY_NONE = 0,       /* certificate only */
  STORE_KEY_USER_ENCRYPTED, /* PKCS#8 encrypted by the user: opaque, stored as given */
  STORE_KEY_SERVER_HELD,    /* plain PKCS#8, wrapped with AES-256-GCM under the master key
                               (additional data: AOR and version); never on disk in clear */
} StoreKeyKind;

/* The credential record of one AOR. */
typedef struct {
  char *aor;
  GBytes *cert_der;  /* X.509 certificate, DER */
  gint64 not_before; /* unix seconds */
  gint64 not_after;  /* unix seconds */
  gint64 updated;    /* unix seconds, time of the last write */
  guint64 version;   /* starts at 1, +1 per write */
  char *etag;        /* opaque, changes on every write */
  StoreKeyKind key_kind;
  GBytes *pkcs8; /* PKCS#8 DER: as stored for USER_ENCRYPTED, unwrapped for SERVER_HELD
                    (only when the store has its master key), else NULL */
} StoreCred;

void store_cred_free(StoreCred *cred);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreCred, store_cred_free)

/* ---- Master key ---------------------------------------------------------
 * 32 random bytes in a file of mode 0600 (no group/other bits). Its id (a
 * hash, never the key) is recorded in meta on first use; a different key is
 * refused. */
#define STORE_MASTER_KEY_SIZE 32
typedef struct _StoreMasterKey StoreMasterKey;

/* Creates @path exclusively (never overwrites), mode 0600. */
gboolean store_master_key_generate(const char *path, GError **error);
/* STORE_ERROR_KEY naming the file when it is readable by group/others,
 * not exactly 32 bytes, or unreadable. */
StoreMasterKey *store_master_key_load(const char *path, GError **error);
void store_master_key_free(StoreMasterKey *key); /* wipes the bytes */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreMasterKey, store_master_key_free)
/* Hex id of the key (derived by a one-way hash; safe to log). */
const char *store_master_key_get_id(StoreMasterKey *key);

/* Gives the store its master key (the store keeps its own copy). Refuses
 * with STORE_ERROR_KEY, naming both ids, a key that is not the store's. */
gboolean store_db_set_master_key(StoreDb *db, StoreMasterKey *key, GError **error);

/* Re-wraps every server-held key under @new_key in one transaction and
 * records the new id; the store uses @new_key afterwards. */
gboolean store_db_rekey(StoreDb *db, StoreMasterKey *new_key, GError **error);

/* Called for each record a long operation visits: @done of @total (0 when
 * unknown). Runs inside the write transaction: keep it short. */
typedef void (*StoreProgressFunc)(guint64 done, guint64 total, gpointer user_data);

/* store_db_rekey() reporting each credential record it visits. */
gboolean store_db_rekey_full(StoreDb *db, StoreMasterKey *new_key, StoreProgressFunc progress,
                             gpointer progress_data, GError **error);

/* ---- Maintenance ------------------------------------------------------- */

/* A consistent, compacted copy of the store at @path (a new file), safe
 * while other processes write. */
gboolean store_db_backup(StoreDb *db, const char *path, GError **error);
/* Reads and decodes every record (unwrapping server-held keys when the master
 * key is set); the first problem is reported naming the table and key. */
gboolean store_db_check(StoreDb *db, GError **error);

typedef struct {
  guint64 map_size, map_used; /* bytes */
  guint64 n_users, n_credentials, n_server_held, n_registrations, n_changes;
  guint64 last_change; /* sequence number, 0 when none */
  guint schema_version;
} StoreStats;
gboolean store_db_get_stats(StoreDb *db, StoreStats *out, GError **error);

/* ---- Change log ---------------------------------------------------------
 * Every write of a credential or user appends (seq, AOR, kind) in the same
 * transaction. The daemon tails it, so admin changes reach subscribers. */
typedef enum {
  STORE_CHANGE_CREDENTIAL = 1, /* put (certificate and/or key) */
  STORE_CHANGE_REVOKED = 2,    /* credential removed or revoked */
  STORE_CHANGE_USER = 3,       /* user added, changed or removed */
} StoreChangeKind;

typedef struct {
  guint64 seq; /* > 0, increasing */
  char *aor;
  StoreChangeKind kind;
  gint64 time; /* unix seconds */
} StoreChange;

void store_change_free(StoreChange *change);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreChange, store_change_free)
/* Highest sequence number so far (0 when empty). */
guint64 store_change_get_last_seq(StoreDb *db, GError **error);
/* Up to @max changes with seq > @after, oldest first (StoreChange*). */
GPtrArray *store_change_list_since(StoreDb *db, guint64 after, guint max, GError **error);

/* Stores (replacing) the credential of @aor. @pkcs8 must be NULL for
 * STORE_KEY_NONE; SERVER_HELD needs the master key. Durable on return. */
gboolean store_cred_put(StoreDb *db, const char *aor, GBytes *cert_der, gint64 not_before,
                        gint64 not_after, StoreKeyKind key_kind, GBytes *pkcs8, GError **error);

/* Certificate only (STORE_KEY_NONE); kept for callers that hold no key. */
gboolean store_cred_put_cert(StoreDb *db, const char *aor, GBytes *cert_der, gint64 not_before,
                             gint64 not_after, GError **error);

/* RFC 3903 conditional writes: each checks and writes in one transaction,
 * so a writer in another process cannot slip in between. @if_etag NULL means
 * unconditional; otherwise the record must exist with exactly that ETag, or
 * the call fails with STORE_ERROR_PRECONDITION and changes nothing. */

/* store_cred_put() under a condition; *@etag_out (optional) gets the new ETag. */
gboolean store_cred_put_if(StoreDb *db, const char *aor, const char *if_etag, GBytes *cert_der,
                           gint64 not_before, gint64 not_after, StoreKeyKind key_kind,
                           GBytes *pkcs8, char **etag_out, GError **error);

/* A refresh: only the ETag changes (@if_etag required). Version, certificate,
 * wrapped key and update time stay; nothing goes to the change log, since
 * subscribers have nothing new to hear. Durable on return. */
gboolean store_cred_refresh(StoreDb *db, const char *aor, const char *if_etag, char **etag_out,
                            GError **error);

/* store_cred_delete() under a condition (logged as STORE_CHANGE_REVOKED).
 * NOT_FOUND only when @if_etag is NULL and there is nothing to delete. */
gboolean store_cred_delete_if(StoreDb *db, const char *aor, const char *if_etag, GError **error);

/* Returns the record, or NULL with STORE_ERROR_NOT_FOUND when @aor has none. */
StoreCred *store_cred_get(StoreDb *db, const char *aor, GError **error);

/* Removes the credential of @aor (logged as STORE_CHANGE_REVOKED).
 * NOT_FOUND if there was none. */
gboolean store_cred_delete(StoreDb *db, const char *aor, GError **error);

/* Lists AORs that have a certificate, sorted. */
GPtrArray *store_cred_list(StoreDb *db, GError **error);

/* A user of a served domain. Plain passwords are never stored: only the
 * RFC 7616 HA1 values H(user ":" realm ":" password) for SHA-256 and MD5. */
typedef enum {
  STORE_USER_ENABLED = 1 << 0,
  STORE_USER_MAY_GENERATE = 1 << 1, /* may ask the server to generate a credential */
} StoreUserFlags;

typedef struct {
  char *aor;
  char *realm;
  char *ha1_sha256; /* 64 lower-case hex digits */
  char *ha1_md5;    /* 32 lower-case hex digits */
  guint32 flags;    /* StoreUserFlags */
} StoreUser;

void store_user_free(StoreUser *user);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreUser, store_user_free)

/* Creates or replaces the user @user->aor. Returns after a durable commit. */
gboolean store_user_put(StoreDb *db, const StoreUser *user, GError **error);
/* NULL with STORE_ERROR_NOT_FOUND when there is no such user. */
StoreUser *store_user_get(StoreDb *db, const char *aor, GError **error);
gboolean store_user_delete(StoreDb *db, const char *aor, GError **error);
/* Sorted AORs of all users. */
GPtrArray *store_user_list(StoreDb *db, GError **error);

/* ---- Registrations ------------------------------------------------------
 * Soft state of the registrar: not logged in the change log (they are not
 * credential changes). */

/* One contact binding of an AOR (RFC 3261 section 10, RFC 5626). */
typedef struct {
  char *contact;    /* the Contact URI as registered */
  char *instance;   /* +sip.instance, or NULL */
  guint32 reg_id;   /* RFC 5626 reg-id, 0 when none */
  char *flow_token; /* edge flow it arrived on, or NULL; flows do not survive a restart */
  char *call_id;
  guint32 cseq;
  gint64 expires_at; /* unix seconds */
  float q;           /* 0..1, -1 when absent */
} StoreBinding;

void store_binding_free(StoreBinding *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreBinding, store_binding_free)

/* Replaces all bindings of @aor with @bindings (StoreBinding*), durably, in one transaction;
 * an empty array removes the AOR. STORE_ERROR_INVALID for an empty contact or Call-ID, q
 * outside 0..1 (other than -1), a reg-id without instance, a negative expiry, more than 64
 * bindings or over-long strings. */
gboolean store_reg_put(StoreDb *db, const char *aor, GPtrArray *bindings, GError **error);
/* Bindings of @aor (possibly empty array; never NULL on success). Expired ones are included:
 * the caller decides with @now. */
GPtrArray *store_reg_get(StoreDb *db, const char *aor, GError **error);
/* AORs with bindings, sorted. */
GPtrArray *store_reg_list(StoreDb *db, GError **error);

G_END_DECLS
