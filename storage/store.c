#define G_LOG_DOMAIN "sipcred-storage"

#include "storage/store.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <lmdb.h>

#include "storage/store-private.h"

/* clang-format off */
G_DEFINE_QUARK(sipcred-store-error-quark, store_error)
/* clang-format on */

/* One MAP_FULL per doubling: 64 KiB to 64 GiB is 20 of them. */
#define STORE_WRITE_ATTEMPTS 40
#define STORE_BEGIN_ATTEMPTS 8
#define STORE_ETAG_BYTES 16
#define STORE_REALM_MAX 1024

typedef enum {
  STORE_TABLE_META,
  STORE_TABLE_CREDENTIALS,
  STORE_TABLE_USERS,
  STORE_TABLE_REGISTRATIONS,
  STORE_TABLE_CHANGES,
  STORE_TABLE_N,
} StoreTable;

static const char *const store_table_names[STORE_TABLE_N] = {
    [STORE_TABLE_META] = STORE_DBI_META,
    [STORE_TABLE_CREDENTIALS] = STORE_DBI_CREDENTIALS,
    [STORE_TABLE_USERS] = STORE_DBI_USERS,
    [STORE_TABLE_REGISTRATIONS] = STORE_DBI_REGISTRATIONS,
    [STORE_TABLE_CHANGES] = STORE_DBI_CHANGES,
};

/* LMDB forbids opening one environment twice in a process (closing either
 * copy drops the other's POSIX locks), so every StoreDb on the same directory
 * shares one StoreEnv. */
typedef struct {
  char *key; /* "dev:inode" of the directory */
  char *path;
  guint refcount; /* under the store_envs lock */
  MDB_env *env;
  /* mdb_env_set_mapsize() must not run while any transaction of this
   * process is open: transactions hold it shared, resizing exclusive. */
  GRWLock resize_lock;
  MDB_dbi dbis[STORE_TABLE_N];
} StoreEnv;

G_LOCK_DEFINE_STATIC(store_envs);
static GHashTable *store_envs; /* key -> StoreEnv*, not owned */

struct _StoreDb {
  StoreEnv *env;
  guint schema_version;
};

/* The one place where LMDB return codes become StoreError. */
static gboolean
store_error_from_mdb(int rc, GError **error, const char *what)
{
  StoreError code;

  if (rc == MDB_SUCCESS)
    return TRUE;

  switch (rc) {
  case MDB_NOTFOUND:
    code = STORE_ERROR_NOT_FOUND;
    break;
  case MDB_MAP_FULL:
  case MDB_TXN_FULL:
  case MDB_DBS_FULL:
  case MDB_PAGE_FULL:
  case MDB_CURSOR_FULL:
  case ENOSPC:
  case EDQUOT:
    code = STORE_ERROR_FULL;
    break;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_PANIC:
  case MDB_INVALID:
  case MDB_VERSION_MISMATCH:
  case MDB_INCOMPATIBLE:
    code = STORE_ERROR_CORRUPT;
    break;
  case MDB_READERS_FULL:
  case MDB_TLS_FULL:
  case MDB_MAP_RESIZED:
  case EBUSY:
  case EAGAIN:
    code = STORE_ERROR_BUSY;
    break;
  case MDB_KEYEXIST:
  case MDB_BAD_VALSIZE:
    code = STORE_ERROR_INVALID;
    break;
  default:
    code = STORE_ERROR_IO;
    break;
  }
  g_set_error(error, STORE_ERROR, code, "%s: %s", what, mdb_strerror(rc));
  return FALSE;
}

/* ---- environments ---------------------------------------------------- */

static void
store_env_close(StoreEnv *env)
{
  if (env->env != NULL)
    mdb_env_close(env->env);
  g_rw_lock_clear(&env->resize_lock);
  g_free(env->key);
  g_free(env->path);
  g_free(env);
}

static gsize
store_env_get_map_size(StoreEnv *env)
{
  MDB_envinfo info;

  if (mdb_env_info(env->env, &info) != MDB_SUCCESS)
    return 0;
  return info.me_mapsize;
}

/* Another process grew the map beyond ours: take over its size. */
static gboolean
store_env_adopt_map_size(StoreEnv *env, GError **error)
{
  int rc;

  g_rw_lock_writer_lock(&env->resize_lock);
  rc = mdb_env_set_mapsize(env->env, 0);
  g_rw_lock_writer_unlock(&env->resize_lock);
  if (!store_error_from_mdb(rc, error, "adopting the grown store map"))
    return FALSE;
  g_debug("store map in %s grown by another process, now %" G_GSIZE_FORMAT " bytes", env->path,
          store_env_get_map_size(env));
  return TRUE;
}

/* Doubles the map after a MAP_FULL in a transaction that saw @seen bytes. */
static gboolean
store_env_grow(StoreEnv *env, gsize seen, GError **error)
{
  gsize current, wanted;
  int rc;

  g_rw_lock_writer_lock(&env->resize_lock);
  current = store_env_get_map_size(env);
  if (current > seen) {
    /* Another thread grew it while we waited. */
    g_rw_lock_writer_unlock(&env->resize_lock);
    return TRUE;
  }
  if (current >= STORE_MAP_SIZE_MAX) {
    g_rw_lock_writer_unlock(&env->resize_lock);
    g_set_error(error, STORE_ERROR, STORE_ERROR_FULL,
                "the store in %s reached its maximum size of %" G_GUINT64_FORMAT " bytes",
                env->path, (guint64)STORE_MAP_SIZE_MAX);
    return FALSE;
  }
  wanted = (gsize)MIN((guint64)current * 2, STORE_MAP_SIZE_MAX);
  rc = mdb_env_set_mapsize(env->env, wanted);
  g_rw_lock_writer_unlock(&env->resize_lock);
  if (!store_error_from_mdb(rc, error, "growing the store map"))
    return FALSE;
  g_info("store map in %s grown to %" G_GSIZE_FORMAT " bytes", env->path, wanted);
  return TRUE;
}

static gboolean
store_env_ensure_map_size(StoreEnv *env, guint64 map_size, GError **error)
{
  int rc = MDB_SUCCESS;

  g_rw_lock_writer_lock(&env->resize_lock);
  /* Size 0 takes what the file's meta page records, which may exceed ours. */
  rc = mdb_env_set_mapsize(env->env, 0);
  if (rc == MDB_SUCCESS && store_env_get_map_size(env) < map_size)
    rc = mdb_env_set_mapsize(env->env, (gsize)map_size);
  g_rw_lock_writer_unlock(&env->resize_lock);
  return store_error_from_mdb(rc, error, "setting the store map size");
}

/* The data file must stay private even if an older build or an operator
 * loosened it: it will hold wrapped private keys and digest secrets. */
static void
store_env_tighten_mode(StoreEnv *env)
{
  int fd = -1;
  struct stat st;

  if (mdb_env_get_fd(env->env, &fd) != MDB_SUCCESS || fstat(fd, &st) != 0)
    return;
  if ((st.st_mode & 077) != 0 && fchmod(fd, st.st_mode & 0700) != 0)
    g_warning("store data file in %s is accessible by others and cannot be restricted: %s",
              env->path, g_strerror(errno));
}

static StoreEnv *
store_env_open(const char *dir, const char *key, guint64 map_size, GError **error)
{
  StoreEnv *env = g_new0(StoreEnv, 1);
  int rc, dead = 0;

  g_rw_lock_init(&env->resize_lock);
  env->key = g_strdup(key);
  env->path = g_strdup(dir);

  rc = mdb_env_create(&env->env);
  if (rc != MDB_SUCCESS) {
    env->env = NULL;
    store_env_close(env);
    store_error_from_mdb(rc, error, "creating the store environment");
    return NULL;
  }
  rc = mdb_env_set_maxdbs(env->env, STORE_TABLE_N + 3);
  if (rc == MDB_SUCCESS)
    rc = mdb_env_set_mapsize(env->env, (gsize)map_size);
  /* MDB_NOTLS: read transactions may be used from a GLib thread pool. */
  if (rc == MDB_SUCCESS)
    rc = mdb_env_open(env->env, dir, MDB_NOTLS, 0600);
  if (rc != MDB_SUCCESS) {
    g_autofree char *what = g_strdup_printf("opening the store in %s", dir);
    store_env_close(env);
    store_error_from_mdb(rc, error, what);
    return NULL;
  }
  store_env_tighten_mode(env);

  /* Slots of readers that died (a killed CLI) would pin old pages forever. */
  rc = mdb_reader_check(env->env, &dead);
  if (rc != MDB_SUCCESS)
    g_warning("checking stale readers in %s: %s", dir, mdb_strerror(rc));
  else if (dead > 0)
    g_info("cleared %d stale reader slots in %s", dead, dir);

  if (!store_env_ensure_map_size(env, map_size, error)) {
    store_env_close(env);
    return NULL;
  }
  return env;
}

/* ---- transactions ---------------------------------------------------- */

/* Remembers the first failure; commit refuses once anything failed, so a
 * write is all or nothing (as Knot's knot_lmdb_txn_t). */
typedef struct {
  StoreEnv *env;
  MDB_txn *txn;
  gboolean write;
  gsize map_size; /* the map size when the transaction began */
  int rc;         /* LMDB code of the first failure, 0 if none or not LMDB */
  GError *error;  /* first failure */
} StoreTxn;

static gboolean
store_txn_begin(StoreEnv *env, StoreTxn *txn, gboolean write, GError **error)
{
  memset(txn, 0, sizeof *txn);
  txn->env = env;
  txn->write = write;

  for (guint attempt = 0; attempt < STORE_BEGIN_ATTEMPTS; attempt++) {
    int rc;

    g_rw_lock_reader_lock(&env->resize_lock);
    rc = mdb_txn_begin(env->env, NULL, write ? 0 : MDB_RDONLY, &txn->txn);
    if (rc == MDB_SUCCESS) {
      txn->map_size = store_env_get_map_size(env);
      return TRUE;
    }
    g_rw_lock_reader_unlock(&env->resize_lock);
    txn->txn = NULL;
    if (rc != MDB_MAP_RESIZED)
      return store_error_from_mdb(rc, error, "beginning a store transaction");
    if (!store_env_adopt_map_size(env, error))
      return FALSE;
  }
  g_set_error(error, STORE_ERROR, STORE_ERROR_BUSY,
              "beginning a store transaction: the map keeps changing size");
  return FALSE;
}

static gboolean
store_txn_ok(const StoreTxn *txn)
{
  return txn->error == NULL;
}

/* Records @rc unless something already failed; TRUE when @rc is success. */
static gboolean
store_txn_check(StoreTxn *txn, int rc, const char *what)
{
  if (rc == MDB_SUCCESS)
    return TRUE;
  if (txn->error == NULL) {
    txn->rc = rc;
    store_error_from_mdb(rc, &txn->error, what);
  }
  return FALSE;
}

/* Records a failure that is not an LMDB code; takes @error. */
static void
store_txn_fail(StoreTxn *txn, GError *error)
{
  if (txn->error == NULL)
    txn->error = error;
  else
    g_error_free(error);
}

static void
store_txn_release(StoreTxn *txn)
{
  if (txn->txn != NULL) {
    mdb_txn_abort(txn->txn);
    txn->txn = NULL;
    g_rw_lock_reader_unlock(&txn->env->resize_lock);
  }
}

/* Ends a transaction without writing; passes on the first failure. */
static gboolean
store_txn_end(StoreTxn *txn, GError **error)
{
  store_txn_release(txn);
  if (txn->error != NULL) {
    g_propagate_error(error, g_steal_pointer(&txn->error));
    return FALSE;
  }
  return TRUE;
}

/* Commits durably, or aborts if anything failed before. */
static gboolean
store_txn_commit(StoreTxn *txn, GError **error)
{
  int rc;

  if (txn->error != NULL)
    return store_txn_end(txn, error);

  rc = mdb_txn_commit(txn->txn);
  txn->txn = NULL;
  g_rw_lock_reader_unlock(&txn->env->resize_lock);
  if (rc != MDB_SUCCESS) {
    txn->rc = rc;
    return store_error_from_mdb(rc, error, "committing to the store");
  }
  return TRUE;
}

/* A copy of the value under @key, or NULL when absent or on failure (then
 * the failure is recorded in @txn). */
static GBytes *
store_txn_get(StoreTxn *txn, StoreTable table, const char *key, const char *what)
{
  MDB_val k = {strlen(key), (void *)key};
  MDB_val v;
  int rc;

  if (!store_txn_ok(txn))
    return NULL;
  rc = mdb_get(txn->txn, txn->env->dbis[table], &k, &v);
  if (rc == MDB_NOTFOUND)
    return NULL;
  if (!store_txn_check(txn, rc, what))
    return NULL;
  return g_bytes_new(v.mv_data, v.mv_size);
}

static gboolean
store_txn_put(StoreTxn *txn, StoreTable table, const char *key, GVariant *value, const char *what)
{
  MDB_val k = {strlen(key), (void *)key};
  MDB_val v = {g_variant_get_size(value), (void *)g_variant_get_data(value)};

  if (!store_txn_ok(txn))
    return FALSE;
  return store_txn_check(txn, mdb_put(txn->txn, txn->env->dbis[table], &k, &v, 0), what);
}

/* FALSE, with NOT_FOUND recorded, when there was nothing to delete. */
static gboolean
store_txn_del(StoreTxn *txn, StoreTable table, const char *key, const char *what)
{
  MDB_val k = {strlen(key), (void *)key};

  if (!store_txn_ok(txn))
    return FALSE;
  return store_txn_check(txn, mdb_del(txn->txn, txn->env->dbis[table], &k, NULL), what);
}

typedef void (*StoreWriteFunc)(StoreTxn *txn, gpointer user_data);

/* Runs @func in a write transaction and commits. A full map is grown and the
 * whole write retried, so @func must only depend on what it reads in @txn. */
static gboolean
store_env_write(StoreEnv *env, StoreWriteFunc func, gpointer user_data, GError **error)
{
  for (guint attempt = 0;; attempt++) {
    StoreTxn txn;
    GError *local = NULL;

    if (!store_txn_begin(env, &txn, TRUE, error))
      return FALSE;
    func(&txn, user_data);
    if (store_txn_commit(&txn, &local))
      return TRUE;
    if (txn.rc != MDB_MAP_FULL || attempt + 1 >= STORE_WRITE_ATTEMPTS) {
      g_propagate_error(error, local);
      return FALSE;
    }
    g_error_free(local);
    if (!store_env_grow(env, txn.map_size, error))
      return FALSE;
  }
}

/* ---- records --------------------------------------------------------- */

static GVariant *
store_record_new(guint16 format, GVariant *body)
{
  return g_variant_ref_sink(g_variant_new("(qv)", format, body));
}

/* The body of a stored record, checked to be of format @format and type
 * @body_type. Anything else is CORRUPT: the bytes come from disk. */
static GVariant *
store_record_open(GBytes *value, guint16 format, const char *body_type, GError **error)
{
  g_autoptr(GVariant) record = NULL;
  g_autoptr(GVariant) body = NULL;
  guint16 found;

  record = g_variant_ref_sink(
      g_variant_new_from_bytes(G_VARIANT_TYPE(STORE_RECORD_TYPE), value, FALSE));
  if (!g_variant_is_normal_form(record)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "not a valid record");
    return NULL;
  }
  g_variant_get(record, "(qv)", &found, &body);
  if (found != format) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "record format %u is unknown to this build (expected %u)", found, format);
    return NULL;
  }
  if (!g_variant_is_of_type(body, G_VARIANT_TYPE(body_type))) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "record body has type %s, not %s",
                g_variant_get_type_string(body), body_type);
    return NULL;
  }
  return g_steal_pointer(&body);
}

static gboolean
store_key_check(StoreDb *db, const char *aor, GError **error)
{
  gsize len;

  if (aor == NULL || *aor == '\0') {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "empty AOR");
    return FALSE;
  }
  len = strlen(aor);
  if (len > (gsize)mdb_env_get_maxkeysize(db->env->env)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "AOR longer than %d bytes",
                mdb_env_get_maxkeysize(db->env->env));
    return FALSE;
  }
  if (!g_utf8_validate(aor, len, NULL)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "AOR is not valid UTF-8");
    return FALSE;
  }
  return TRUE;
}

static GPtrArray *
store_list_keys(StoreDb *db, StoreTable table, GError **error)
{
  g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func(g_free);
  StoreTxn txn;
  MDB_cursor *cursor = NULL;
  MDB_val k, v;
  int rc;

  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return NULL;
  if (store_txn_check(&txn, mdb_cursor_open(txn.txn, db->env->dbis[table], &cursor),
                      "opening a cursor")) {
    while ((rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) == MDB_SUCCESS) {
      if (memchr(k.mv_data, '\0', k.mv_size) != NULL ||
          !g_utf8_validate(k.mv_data, k.mv_size, NULL)) {
        store_txn_fail(&txn,
                       g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                   "a key in %s is not valid UTF-8", store_table_names[table]));
        break;
      }
      g_ptr_array_add(keys, g_strndup(k.mv_data, k.mv_size));
    }
    if (rc != MDB_NOTFOUND)
      store_txn_check(&txn, rc, "listing the store");
    mdb_cursor_close(cursor);
  }
  if (!store_txn_end(&txn, error))
    return NULL;
  return g_steal_pointer(&keys);
}

/* ---- schema ---------------------------------------------------------- */

typedef gboolean (*StoreMigrateFunc)(StoreTxn *txn, GError **error);

/* store_migrations[v] turns schema v into v + 1 inside the open transaction,
 * with every table already open. Entry 0 is unused: a new store is created
 * at the current version. To change the schema, bump STORE_SCHEMA_VERSION and
 * append the function that upgrades the previous version. */
static const StoreMigrateFunc store_migrations[STORE_SCHEMA_VERSION] = {
    [0] = NULL,
};
G_STATIC_ASSERT(G_N_ELEMENTS(store_migrations) == STORE_SCHEMA_VERSION);

typedef struct {
  MDB_dbi dbis[STORE_TABLE_N];
  guint found_version;   /* 0 for a new store */
  gboolean set_env_dbis; /* a new environment: publish the table handles */
} StorePrepare;

static gboolean
store_schema_write(StoreTxn *txn, MDB_dbi meta, guint32 version)
{
  guint32 be = GUINT32_TO_BE(version);
  MDB_val k = {strlen(STORE_META_SCHEMA_VERSION), (void *)STORE_META_SCHEMA_VERSION};
  MDB_val v = {sizeof be, &be};

  return store_txn_check(txn, mdb_put(txn->txn, meta, &k, &v, 0), "writing the schema version");
}

static void
store_prepare_cb(StoreTxn *txn, gpointer user_data)
{
  StorePrepare *prep = user_data;
  MDB_val k = {strlen(STORE_META_SCHEMA_VERSION), (void *)STORE_META_SCHEMA_VERSION};
  MDB_val v;
  guint32 be;
  int rc;

  prep->found_version = 0;
  rc = mdb_dbi_open(txn->txn, STORE_DBI_META, 0, &prep->dbis[STORE_TABLE_META]);
  if (rc == MDB_SUCCESS) {
    rc = mdb_get(txn->txn, prep->dbis[STORE_TABLE_META], &k, &v);
    if (rc == MDB_NOTFOUND || (rc == MDB_SUCCESS && v.mv_size != sizeof be)) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                      "the store has no valid schema version"));
      return;
    }
    if (!store_txn_check(txn, rc, "reading the schema version"))
      return;
    memcpy(&be, v.mv_data, sizeof be);
    prep->found_version = GUINT32_FROM_BE(be);
    if (prep->found_version == 0) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                      "the store records schema version 0"));
      return;
    }
    if (prep->found_version > STORE_SCHEMA_VERSION) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_SCHEMA,
                                      "the store has schema version %u, newer than version %u "
                                      "of this build",
                                      prep->found_version, STORE_SCHEMA_VERSION));
      return;
    }
  } else if (rc != MDB_NOTFOUND) {
    store_txn_check(txn, rc, "opening the meta table");
    return;
  }

  for (guint i = 0; i < STORE_TABLE_N; i++) {
    g_autofree char *what = g_strdup_printf("opening the %s table", store_table_names[i]);
    if (!store_txn_check(
            txn, mdb_dbi_open(txn->txn, store_table_names[i], MDB_CREATE, &prep->dbis[i]), what))
      return;
  }
  /* A shared environment already has these same handles. */
  if (prep->set_env_dbis)
    memcpy(txn->env->dbis, prep->dbis, sizeof prep->dbis);

  if (prep->found_version == 0) {
    store_schema_write(txn, prep->dbis[STORE_TABLE_META], STORE_SCHEMA_VERSION);
    return;
  }
  for (guint ver = prep->found_version; ver < STORE_SCHEMA_VERSION; ver++) {
    GError *local = NULL;

    if (store_migrations[ver] == NULL) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_SCHEMA,
                                      "no migration from schema version %u to %u", ver, ver + 1));
      return;
    }
    if (!store_migrations[ver](txn, &local)) {
      g_prefix_error(&local, "migrating the store from schema version %u to %u: ", ver, ver + 1);
      store_txn_fail(txn, local);
      return;
    }
    g_message("store migrated from schema version %u to %u", ver, ver + 1);
  }
  if (prep->found_version != STORE_SCHEMA_VERSION)
    store_schema_write(txn, prep->dbis[STORE_TABLE_META], STORE_SCHEMA_VERSION);
}

/* ---- opening --------------------------------------------------------- */

static gboolean
store_dir_prepare(const char *dir, char **key, GError **error)
{
  struct stat st;

  if (g_mkdir_with_parents(dir, 0700) != 0) {
    int saved = errno;
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot create %s: %s", dir,
                g_strerror(saved));
    return FALSE;
  }
  if (g_stat(dir, &st) != 0) {
    int saved = errno;
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot stat %s: %s", dir, g_strerror(saved));
    return FALSE;
  }
  if (!S_ISDIR(st.st_mode)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "%s is not a directory", dir);
    return FALSE;
  }
  if ((st.st_mode & 077) != 0 && g_chmod(dir, 0700) != 0)
    g_warning("store directory %s is accessible by others and cannot be restricted: %s", dir,
              g_strerror(errno));
  *key = g_strdup_printf("%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
  return TRUE;
}

static void
store_db_unref_locked(StoreDb *db)
{
  if (--db->env->refcount == 0) {
    g_hash_table_remove(store_envs, db->env->key);
    store_env_close(db->env);
  }
  g_free(db);
}

/* Opens or shares the environment of @dir and brings its schema up to date.
 * Called with the store_envs lock held, so a shared environment is never
 * seen before its table handles are set. */
static StoreDb *
store_db_open_locked(const char *dir, const char *key, guint64 map_size, GError **error)
{
  g_autoptr(StoreDb) db = NULL;
  StorePrepare prep = {0};
  StoreEnv *env;

  if (store_envs == NULL)
    store_envs = g_hash_table_new(g_str_hash, g_str_equal);
  env = g_hash_table_lookup(store_envs, key);
  if (env == NULL) {
    env = store_env_open(dir, key, map_size, error);
    if (env == NULL)
      return NULL;
    g_hash_table_insert(store_envs, env->key, env);
    prep.set_env_dbis = TRUE;
  } else if (!store_env_ensure_map_size(env, map_size, error)) {
    return NULL;
  }
  env->refcount++;
  db = g_new0(StoreDb, 1);
  db->env = env;

  if (!store_env_write(env, store_prepare_cb, &prep, error)) {
    g_prefix_error(error, "%s: ", dir);
    store_db_unref_locked(g_steal_pointer(&db));
    return NULL;
  }
  db->schema_version = STORE_SCHEMA_VERSION;
  g_debug("store %s in %s (schema version %u)", prep.set_env_dbis ? "opened" : "shared", dir,
          db->schema_version);
  return g_steal_pointer(&db);
}

StoreDb *
store_db_open(const char *dir, guint64 map_size, GError **error)
{
  g_autofree char *key = NULL;
  StoreDb *db;

  g_return_val_if_fail(dir != NULL && *dir != '\0', NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (map_size == 0)
    map_size = STORE_MAP_SIZE_DEFAULT;
  map_size = MIN(map_size, STORE_MAP_SIZE_MAX);
  if (map_size > G_MAXSIZE)
    map_size = G_MAXSIZE;

  if (!store_dir_prepare(dir, &key, error))
    return NULL;
  G_LOCK(store_envs);
  db = store_db_open_locked(dir, key, map_size, error);
  G_UNLOCK(store_envs);
  return db;
}

void
store_db_free(StoreDb *db)
{
  if (db == NULL)
    return;
  G_LOCK(store_envs);
  store_db_unref_locked(db);
  G_UNLOCK(store_envs);
}

guint
store_db_get_schema_version(StoreDb *db)
{
  g_return_val_if_fail(db != NULL, 0);
  return db->schema_version;
}

/* ---- credentials ----------------------------------------------------- */

void
store_cred_free(StoreCred *cred)
{
  if (cred == NULL)
    return;
  g_free(cred->aor);
  g_clear_pointer(&cred->cert_der, g_bytes_unref);
  g_free(cred->etag);
  g_free(cred);
}

static StoreCred *
store_cred_decode(const char *aor, GBytes *value, GError **error)
{
  g_autoptr(GVariant) body = NULL;
  g_autoptr(GVariant) der = NULL;
  g_autoptr(GVariant) key_blob = NULL;
  g_autoptr(StoreCred) cred = g_new0(StoreCred, 1);
  const char *etag;
  guint8 key_kind;

  body = store_record_open(value, STORE_CRED_RECORD_VERSION, STORE_CRED_BODY_TYPE_V1, error);
  if (body == NULL) {
    g_prefix_error(error, "credential of %s: ", aor);
    return NULL;
  }
  g_variant_get(body, "(@ayxxxt&sy@ay)", &der, &cred->not_before, &cred->not_after, &cred->updated,
                &cred->version, &etag, &key_kind, &key_blob);
  if (g_variant_get_size(der) == 0 || *etag == '\0' || cred->version == 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "credential of %s: record lacks a certificate, ETag or version", aor);
    return NULL;
  }
  cred->aor = g_strdup(aor);
  cred->cert_der = g_variant_get_data_as_bytes(der);
  cred->etag = g_strdup(etag);
  return g_steal_pointer(&cred);
}

typedef struct {
  const char *aor;
  GBytes *cert_der;
  gint64 not_before;
  gint64 not_after;
  gint64 updated;
  const char *etag;
} StoreCredPut;

static void
store_cred_put_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreCredPut *put = user_data;
  g_autoptr(GBytes) old = NULL;
  g_autoptr(GVariant) record = NULL;
  guint64 version = 1;

  old = store_txn_get(txn, STORE_TABLE_CREDENTIALS, put->aor, "reading the old credential");
  if (!store_txn_ok(txn))
    return;
  if (old != NULL) {
    GError *local = NULL;
    g_autoptr(StoreCred) prev = store_cred_decode(put->aor, old, &local);

    /* Overwriting would silently restart the version; the operator can
     * delete the damaged record first. */
    if (prev == NULL) {
      store_txn_fail(txn, local);
      return;
    }
    version = prev->version + 1;
  }
  /* The record replaces any stored key part: an old key never goes with a
   * new certificate. */
  record = store_record_new(
      STORE_CRED_RECORD_VERSION,
      g_variant_new("(@ayxxxtsy@ay)",
                    g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, put->cert_der, TRUE),
                    put->not_before, put->not_after, put->updated, version, put->etag, (guint8)0,
                    g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, NULL, 0, 1)));
  store_txn_put(txn, STORE_TABLE_CREDENTIALS, put->aor, record, "writing the credential");
}

static char *
store_etag_new(GError **error)
{
  guint8 raw[STORE_ETAG_BYTES];
  int rc;

  rc = gnutls_rnd(GNUTLS_RND_NONCE, raw, sizeof raw);
  if (rc < 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot generate an ETag: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  GString *hex = g_string_sized_new(2 * sizeof raw);
  for (gsize i = 0; i < sizeof raw; i++)
    g_string_append_printf(hex, "%02x", raw[i]);
  return g_string_free(hex, FALSE);
}

gboolean
store_cred_put_cert(StoreDb *db, const char *aor, GBytes *cert_der, gint64 not_before,
                    gint64 not_after, GError **error)
{
  g_autofree char *etag = NULL;
  StoreCredPut put;

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, aor, error))
    return FALSE;
  if (cert_der == NULL || g_bytes_get_size(cert_der) == 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s: empty certificate", aor);
    return FALSE;
  }
  if (g_bytes_get_size(cert_der) > STORE_CERT_MAX_SIZE) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s: certificate larger than %d bytes",
                aor, STORE_CERT_MAX_SIZE);
    return FALSE;
  }
  if (not_after < not_before) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                "%s: certificate notAfter lies before notBefore", aor);
    return FALSE;
  }
  etag = store_etag_new(error);
  if (etag == NULL)
    return FALSE;

  put = (StoreCredPut){
      .aor = aor,
      .cert_der = cert_der,
      .not_before = not_before,
      .not_after = not_after,
      .updated = g_get_real_time() / G_USEC_PER_SEC,
      .etag = etag,
  };
  return store_env_write(db->env, store_cred_put_cb, &put, error);
}

StoreCred *
store_cred_get(StoreDb *db, const char *aor, GError **error)
{
  g_autoptr(GBytes) value = NULL;
  StoreTxn txn;

  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!store_key_check(db, aor, error))
    return NULL;
  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return NULL;
  value = store_txn_get(&txn, STORE_TABLE_CREDENTIALS, aor, "reading a credential");
  if (!store_txn_end(&txn, error))
    return NULL;
  if (value == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no certificate stored for %s", aor);
    return NULL;
  }
  return store_cred_decode(aor, value, error);
}

typedef struct {
  StoreTable table;
  const char *aor;
  const char *what;
} StoreDelete;

static void
store_delete_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreDelete *del = user_data;

  if (!store_txn_del(txn, del->table, del->aor, "deleting") && txn->rc == MDB_NOTFOUND) {
    g_clear_error(&txn->error);
    txn->error = g_error_new(STORE_ERROR, STORE_ERROR_NOT_FOUND, "no %s stored for %s", del->what,
                             del->aor);
  }
}

gboolean
store_cred_delete(StoreDb *db, const char *aor, GError **error)
{
  StoreDelete del = {STORE_TABLE_CREDENTIALS, aor, "certificate"};

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, aor, error))
    return FALSE;
  return store_env_write(db->env, store_delete_cb, &del, error);
}

GPtrArray *
store_cred_list(StoreDb *db, GError **error)
{
  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);
  return store_list_keys(db, STORE_TABLE_CREDENTIALS, error);
}

/* ---- users ----------------------------------------------------------- */

void
store_user_free(StoreUser *user)
{
  if (user == NULL)
    return;
  g_free(user->aor);
  g_free(user->realm);
  /* HA1 is a password equivalent: do not leave it in freed memory. */
  if (user->ha1_sha256 != NULL)
    explicit_bzero(user->ha1_sha256, strlen(user->ha1_sha256));
  if (user->ha1_md5 != NULL)
    explicit_bzero(user->ha1_md5, strlen(user->ha1_md5));
  g_free(user->ha1_sha256);
  g_free(user->ha1_md5);
  g_free(user);
}

static gboolean
store_is_lower_hex(const char *s, gsize len)
{
  if (s == NULL || strlen(s) != len)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isdigit(s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
      return FALSE;
  }
  return TRUE;
}

/* Checks everything but the AOR; never quotes the HA1 values. */
static gboolean
store_user_fields_check(const char *realm, const char *ha1_sha256, const char *ha1_md5,
                        guint32 flags, GError **error)
{
  const guint32 known = STORE_USER_ENABLED | STORE_USER_MAY_GENERATE;

  if (realm == NULL || *realm == '\0' || strlen(realm) > STORE_REALM_MAX ||
      !g_utf8_validate(realm, -1, NULL)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "realm must be 1 to %d bytes of UTF-8",
                STORE_REALM_MAX);
    return FALSE;
  }
  for (const char *p = realm; *p != '\0'; p++) {
    if ((guchar)*p < 0x20 || *p == 0x7f) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "realm contains a control character");
      return FALSE;
    }
  }
  if (!store_is_lower_hex(ha1_sha256, 64)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                "SHA-256 HA1 is not 64 lower-case hex digits");
    return FALSE;
  }
  if (!store_is_lower_hex(ha1_md5, 32)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                "MD5 HA1 is not 32 lower-case hex digits");
    return FALSE;
  }
  if ((flags & ~known) != 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "unknown user flags 0x%x",
                flags & ~known);
    return FALSE;
  }
  return TRUE;
}

static StoreUser *
store_user_decode(const char *aor, GBytes *value, GError **error)
{
  g_autoptr(GVariant) body = NULL;
  g_autoptr(StoreUser) user = g_new0(StoreUser, 1);
  GError *local = NULL;

  body = store_record_open(value, STORE_USER_RECORD_VERSION, STORE_USER_BODY_TYPE_V1, error);
  if (body == NULL) {
    g_prefix_error(error, "user %s: ", aor);
    return NULL;
  }
  g_variant_get(body, "(sssu)", &user->realm, &user->ha1_sha256, &user->ha1_md5, &user->flags);
  if (!store_user_fields_check(user->realm, user->ha1_sha256, user->ha1_md5, user->flags,
                               &local)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "user %s: %s", aor, local->message);
    g_error_free(local);
    return NULL;
  }
  user->aor = g_strdup(aor);
  return g_steal_pointer(&user);
}

typedef struct {
  const StoreUser *user;
} StoreUserPut;

static void
store_user_put_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreUser *user = ((const StoreUserPut *)user_data)->user;
  g_autoptr(GVariant) record = NULL;

  record = store_record_new(
      STORE_USER_RECORD_VERSION,
      g_variant_new("(sssu)", user->realm, user->ha1_sha256, user->ha1_md5, user->flags));
  store_txn_put(txn, STORE_TABLE_USERS, user->aor, record, "writing the user");
}

gboolean
store_user_put(StoreDb *db, const StoreUser *user, GError **error)
{
  StoreUserPut put = {user};

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(user != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, user->aor, error))
    return FALSE;
  if (!store_user_fields_check(user->realm, user->ha1_sha256, user->ha1_md5, user->flags, error)) {
    g_prefix_error(error, "user %s: ", user->aor);
    return FALSE;
  }
  return store_env_write(db->env, store_user_put_cb, &put, error);
}

StoreUser *
store_user_get(StoreDb *db, const char *aor, GError **error)
{
  g_autoptr(GBytes) value = NULL;
  StoreTxn txn;

  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!store_key_check(db, aor, error))
    return NULL;
  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return NULL;
  value = store_txn_get(&txn, STORE_TABLE_USERS, aor, "reading a user");
  if (!store_txn_end(&txn, error))
    return NULL;
  if (value == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no user %s", aor);
    return NULL;
  }
  return store_user_decode(aor, value, error);
}

gboolean
store_user_delete(StoreDb *db, const char *aor, GError **error)
{
  StoreDelete del = {STORE_TABLE_USERS, aor, "user"};

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, aor, error))
    return FALSE;
  return store_env_write(db->env, store_delete_cb, &del, error);
}

GPtrArray *
store_user_list(StoreDb *db, GError **error)
{
  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);
  return store_list_keys(db, STORE_TABLE_USERS, error);
}
