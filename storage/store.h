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
  STORE_ERROR_NOT_FOUND, /* no such record */
  STORE_ERROR_FULL,      /* map or disk full and growing did not help */
  STORE_ERROR_IO,        /* the file system refused */
  STORE_ERROR_CORRUPT,   /* a record or the environment is damaged */
  STORE_ERROR_SCHEMA,    /* schema version newer than this build knows */
  STORE_ERROR_BUSY,      /* reader table full or lock held */
  STORE_ERROR_INVALID,   /* caller passed something unstorable */
} StoreError;

/* Current on-disk schema version; see store_db_open() for migrations. */
#define STORE_SCHEMA_VERSION 1

typedef struct _StoreDb StoreDb;

/* Opens (creating if needed) the store in directory @dir, mode 0700.
 * @map_size is the initial map size in bytes (0 for the default, 64 MiB); the
 * map grows on demand. Stale reader slots are cleared. */
StoreDb *store_db_open(const char *dir, guint64 map_size, GError **error);
void store_db_free(StoreDb *db);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreDb, store_db_free)

/* Schema version recorded in the store's meta table. */
guint store_db_get_schema_version(StoreDb *db);

/* The certificate record of one AOR. The private-key part of a credential
 * arrives with the credential issue; this record already reserves its place. */
typedef struct {
  char *aor;
  GBytes *cert_der;  /* X.509 certificate, DER */
  gint64 not_before; /* unix seconds */
  gint64 not_after;  /* unix seconds */
  gint64 updated;    /* unix seconds, time of the last write */
  guint64 version;   /* starts at 1, +1 per write */
  char *etag;        /* opaque, changes on every write */
} StoreCred;

void store_cred_free(StoreCred *cred);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StoreCred, store_cred_free)

/* Stores (replacing) the certificate of @aor. Returns after a durable commit. */
gboolean store_cred_put_cert(StoreDb *db, const char *aor, GBytes *cert_der, gint64 not_before,
                             gint64 not_after, GError **error);

/* Returns the record, or NULL with STORE_ERROR_NOT_FOUND when @aor has none. */
StoreCred *store_cred_get(StoreDb *db, const char *aor, GError **error);

/* Removes the certificate of @aor. NOT_FOUND if there was none. */
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

G_END_DECLS
