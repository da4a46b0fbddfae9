#define G_LOG_DOMAIN "sipcred-storage"

#include "storage/store.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

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

/* Change-log retention defaults (see store_txn_change_prune). */
#define STORE_CHANGE_KEEP 10000
#define STORE_CHANGE_MIN_AGE 3600

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
  guint64 map_max; /* the map grows up to this; under resize_lock */
  /* Change-log retention (store_db_set_change_retention); read by writers,
   * which LMDB serialises. */
  guint change_keep;
  gint64 change_min_age;
  gboolean tables_ready; /* dbis hold committed handles */
  MDB_dbi dbis[STORE_TABLE_N];
} StoreEnv;

G_LOCK_DEFINE_STATIC(store_envs);
static GHashTable *store_envs; /* key -> StoreEnv*, not owned */

/* Immutable once loaded and shared by reference: a StoreDb keeps a ref of
 * the key it was given, so the caller may free its own at once. */
struct _StoreMasterKey {
  guint8 bytes[STORE_MASTER_KEY_SIZE];
  char id[STORE_KEY_ID_HEX_LEN + 1];
  char *path; /* for messages; "(memory)" when not loaded from a file */
};

struct _StoreDb {
  StoreEnv *env;
  guint schema_version;
  /* The key may be set or replaced (rekey) while other threads read. */
  GMutex key_lock;
  StoreMasterKey *key;   /* a ref, or NULL */
  gint warned_stale_key; /* atomic: warned once that another process re-keyed */
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
  if (code == STORE_ERROR_FULL)
    g_set_error(error, STORE_ERROR, code, "%s: the store is full: %s", what, mdb_strerror(rc));
  else
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

/* Doubles the map after a MAP_FULL in a transaction that saw @seen bytes,
 * never past the cap. At the cap the write fails with STORE_ERROR_FULL; the
 * failed transaction was aborted, so nothing of it is in the store. */
static gboolean
store_env_grow(StoreEnv *env, gsize seen, GError **error)
{
  gsize current, wanted;
  guint64 cap;
  int rc;

  g_rw_lock_writer_lock(&env->resize_lock);
  current = store_env_get_map_size(env);
  if (current > seen) {
    /* Another thread grew it while we waited. */
    g_rw_lock_writer_unlock(&env->resize_lock);
    return TRUE;
  }
  cap = MIN(env->map_max, (guint64)G_MAXSIZE);
  if (current >= cap) {
    g_rw_lock_writer_unlock(&env->resize_lock);
    g_set_error(error, STORE_ERROR, STORE_ERROR_FULL,
                "the store in %s is full: its map has %" G_GSIZE_FORMAT
                " bytes and may not grow past %" G_GUINT64_FORMAT " bytes",
                env->path, current, cap);
    return FALSE;
  }
  wanted = (gsize)MIN((guint64)current * 2, cap);
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
  env->map_max = STORE_MAP_SIZE_MAX;
  env->change_keep = STORE_CHANGE_KEEP;
  env->change_min_age = STORE_CHANGE_MIN_AGE;
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
  /* MDB_NOTLS: read transactions may be used from a GLib thread pool.
   * Never MDB_WRITEMAP: through a writable map a full file system kills the
   * process with SIGBUS; written with pwrite(), ENOSPC comes back from the
   * commit, which aborts, and the last committed state stays readable. */
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

/* LMDB reports a short write of its pages as EIO (a failed one as ENOSPC):
 * on a full file system the write comes up short as often as it fails. */
static gboolean
store_env_disk_full(StoreEnv *env)
{
  struct statvfs vfs;
  int fd = -1;

  if (mdb_env_get_fd(env->env, &fd) != MDB_SUCCESS || fstatvfs(fd, &vfs) != 0)
    return FALSE;
  /* Less than a page of room left for us; root may use the reserved blocks. */
  return (guint64)(geteuid() == 0 ? vfs.f_bfree : vfs.f_bavail) * vfs.f_frsize < 4096;
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
  if (rc == EIO && store_env_disk_full(txn->env))
    rc = ENOSPC;
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

static gboolean
store_txn_put_raw(StoreTxn *txn, StoreTable table, const char *key, const void *data, gsize len,
                  const char *what)
{
  MDB_val k = {strlen(key), (void *)key};
  MDB_val v = {len, (void *)data};

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

static gboolean store_schema_write(StoreTxn *txn, MDB_dbi meta, guint32 version);

/* LMDB hands pages freed by a commit out again only two commits later (a
 * reader may still see the commit before). So when the store is full, room
 * that a removal just freed stays out of reach until something else commits.
 * This commits a rewrite of one small meta record to get there. */
static gboolean
store_env_nudge(StoreEnv *env)
{
  StoreTxn txn;

  if (!env->tables_ready || !store_txn_begin(env, &txn, TRUE, NULL))
    return FALSE;
  store_schema_write(&txn, env->dbis[STORE_TABLE_META], STORE_SCHEMA_VERSION);
  return store_txn_commit(&txn, NULL);
}

static gboolean
store_txn_full(const StoreTxn *txn)
{
  return txn->rc == MDB_MAP_FULL || txn->rc == ENOSPC || txn->rc == EDQUOT;
}

/* Runs @func in a write transaction and commits. A full map is grown and the
 * whole write retried, so @func must only depend on what it reads in @txn. */
static gboolean
store_env_write(StoreEnv *env, StoreWriteFunc func, gpointer user_data, GError **error)
{
  gboolean nudged = FALSE;

  for (guint attempt = 0;; attempt++) {
    StoreTxn txn;
    g_autoptr(GError) local = NULL;

    if (!store_txn_begin(env, &txn, TRUE, error))
      return FALSE;
    func(&txn, user_data);
    if (store_txn_commit(&txn, &local))
      return TRUE;
    if (!store_txn_full(&txn) || attempt + 1 >= STORE_WRITE_ATTEMPTS) {
      g_propagate_error(error, g_steal_pointer(&local));
      return FALSE;
    }
    if (txn.rc == MDB_MAP_FULL) {
      g_clear_error(&local);
      if (store_env_grow(env, txn.map_size, &local))
        continue;
      if (!g_error_matches(local, STORE_ERROR, STORE_ERROR_FULL)) {
        g_propagate_error(error, g_steal_pointer(&local));
        return FALSE;
      }
    }
    /* Full for good (at the cap, or the file system): once, make freed room
     * reachable and try again. */
    if (nudged || !store_env_nudge(env)) {
      g_propagate_error(error, g_steal_pointer(&local));
      return FALSE;
    }
    nudged = TRUE;
  }
}

/* ---- secrets --------------------------------------------------------- */

typedef struct {
  gsize len;
  guint8 data[];
} StoreSecret;

static void
store_secret_free(gpointer p)
{
  StoreSecret *secret = p;

  gnutls_memset(secret->data, 0, secret->len);
  g_free(secret);
}

/* A GBytes of @len bytes (from @data when not NULL) that are wiped when the
 * last reference goes; *@out is where to write them. */
static GBytes *
store_secret_bytes_new(const void *data, gsize len, guint8 **out)
{
  StoreSecret *secret = g_malloc(sizeof *secret + MAX(len, 1));

  secret->len = len;
  if (data != NULL)
    memcpy(secret->data, data, len);
  if (out != NULL)
    *out = secret->data;
  return g_bytes_new_with_free_func(secret->data, len, store_secret_free, secret);
}

/* ---- master key ------------------------------------------------------ */

static void
store_master_key_clear(gpointer p)
{
  StoreMasterKey *key = p;

  gnutls_memset(key->bytes, 0, sizeof key->bytes);
  g_free(key->path);
}

void
store_master_key_free(StoreMasterKey *key)
{
  if (key != NULL)
    g_atomic_rc_box_release_full(key, store_master_key_clear);
}

const char *
store_master_key_get_id(StoreMasterKey *key)
{
  g_return_val_if_fail(key != NULL, NULL);
  return key->id;
}

static gboolean
store_master_key_derive_id(StoreMasterKey *key, GError **error)
{
  guint8 digest[32];
  gnutls_hash_hd_t hash;
  int rc;

  /* A one-way function of the key under its own label: safe to store and
   * log, and not usable as a known plaintext for anything else. */
  rc = gnutls_hash_init(&hash, GNUTLS_DIG_SHA256);
  if (rc < 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "master key %s: cannot hash: %s", key->path,
                gnutls_strerror(rc));
    return FALSE;
  }
  gnutls_hash(hash, STORE_KEY_ID_CONTEXT, strlen(STORE_KEY_ID_CONTEXT));
  gnutls_hash(hash, key->bytes, sizeof key->bytes);
  gnutls_hash_deinit(hash, digest);
  for (guint i = 0; i < STORE_KEY_ID_HEX_LEN / 2; i++)
    g_snprintf(key->id + 2 * i, 3, "%02x", digest[i]);
  return TRUE;
}

static gboolean
store_fsync_parent(const char *path, GError **error)
{
  g_autofree char *dir = g_path_get_dirname(path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

  if (fd < 0 || fsync(fd) != 0) {
    int saved = errno;
    if (fd >= 0)
      close(fd);
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot sync directory %s: %s", dir,
                g_strerror(saved));
    return FALSE;
  }
  close(fd);
  return TRUE;
}

static gboolean
store_write_all(int fd, const void *data, gsize len)
{
  const guint8 *p = data;

  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    p += n;
    len -= (gsize)n;
  }
  return TRUE;
}

gboolean
store_master_key_generate(const char *path, GError **error)
{
  guint8 bytes[STORE_MASTER_KEY_SIZE];
  int fd, rc, saved;

  g_return_val_if_fail(path != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  rc = gnutls_rnd(GNUTLS_RND_KEY, bytes, sizeof bytes);
  if (rc < 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "master key %s: no random bytes: %s", path,
                gnutls_strerror(rc));
    return FALSE;
  }
  /* O_EXCL: never replace a key that wraps existing records. */
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    saved = errno;
    gnutls_memset(bytes, 0, sizeof bytes);
    g_set_error(error, STORE_ERROR, saved == EEXIST ? STORE_ERROR_KEY : STORE_ERROR_IO,
                saved == EEXIST ? "master key file %s already exists; not overwriting it"
                                : "cannot create master key file %s: %s",
                path, g_strerror(saved));
    return FALSE;
  }
  if (fchmod(fd, 0600) != 0 || !store_write_all(fd, bytes, sizeof bytes) || fsync(fd) != 0) {
    saved = errno;
    gnutls_memset(bytes, 0, sizeof bytes);
    close(fd);
    unlink(path);
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot write master key file %s: %s", path,
                g_strerror(saved));
    return FALSE;
  }
  gnutls_memset(bytes, 0, sizeof bytes);
  if (close(fd) != 0) {
    saved = errno;
    unlink(path);
    g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot write master key file %s: %s", path,
                g_strerror(saved));
    return FALSE;
  }
  return store_fsync_parent(path, error);
}

StoreMasterKey *
store_master_key_load(const char *path, GError **error)
{
  StoreMasterKey *key;
  struct stat st;
  gsize got = 0;
  guint8 extra;
  int fd, saved;

  g_return_val_if_fail(path != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    saved = errno;
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "cannot read master key file %s: %s", path,
                g_strerror(saved));
    return NULL;
  }
  if (fstat(fd, &st) != 0) {
    saved = errno;
    close(fd);
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "cannot read master key file %s: %s", path,
                g_strerror(saved));
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "master key file %s is not a regular file",
                path);
    return NULL;
  }
  if ((st.st_mode & 077) != 0) {
    close(fd);
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY,
                "master key file %s is %s by group or others (mode %04o); chmod 600 it", path,
                (st.st_mode & 044) != 0 ? "readable" : "accessible", (guint)(st.st_mode & 07777));
    return NULL;
  }
  if (st.st_size != STORE_MASTER_KEY_SIZE) {
    close(fd);
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY,
                "master key file %s has %jd bytes, not %d; was it made by sipcred keygen?", path,
                (intmax_t)st.st_size, STORE_MASTER_KEY_SIZE);
    return NULL;
  }

  key = g_atomic_rc_box_new0(StoreMasterKey);
  key->path = g_strdup(path);
  while (got < sizeof key->bytes) {
    ssize_t n = read(fd, key->bytes + got, sizeof key->bytes - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      saved = n < 0 ? errno : 0;
      close(fd);
      store_master_key_free(key);
      g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "cannot read master key file %s: %s", path,
                  saved != 0 ? g_strerror(saved) : "it is shorter than its size says");
      return NULL;
    }
    got += (gsize)n;
  }
  /* The size can change between fstat() and read(). */
  if (read(fd, &extra, 1) != 0) {
    close(fd);
    store_master_key_free(key);
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY,
                "master key file %s changed while it was read, or is longer than %d bytes", path,
                STORE_MASTER_KEY_SIZE);
    return NULL;
  }
  close(fd);
  if (!store_master_key_derive_id(key, error)) {
    store_master_key_free(key);
    return NULL;
  }
  return key;
}

static StoreMasterKey *
store_master_key_ref(StoreMasterKey *key)
{
  return key != NULL ? g_atomic_rc_box_acquire(key) : NULL;
}

/* The handle's key (a ref, or NULL). */
static StoreMasterKey *
store_db_dup_key(StoreDb *db)
{
  StoreMasterKey *key;

  g_mutex_lock(&db->key_lock);
  key = store_master_key_ref(db->key);
  g_mutex_unlock(&db->key_lock);
  return key;
}

static void
store_db_replace_key(StoreDb *db, StoreMasterKey *key)
{
  StoreMasterKey *old;

  g_mutex_lock(&db->key_lock);
  old = db->key;
  db->key = store_master_key_ref(key);
  g_mutex_unlock(&db->key_lock);
  store_master_key_free(old);
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

/* The master-key id recorded in meta into *@id (NULL when none yet). FALSE
 * with the failure recorded in @txn when it cannot be read or is malformed. */
static gboolean
store_txn_get_key_id(StoreTxn *txn, char **id)
{
  g_autoptr(GBytes) value = NULL;
  gsize len;
  const char *data;

  *id = NULL;
  value =
      store_txn_get(txn, STORE_TABLE_META, STORE_META_MASTER_KEY_ID, "reading the master-key id");
  if (!store_txn_ok(txn))
    return FALSE;
  if (value == NULL)
    return TRUE;
  data = g_bytes_get_data(value, &len);
  *id = g_strndup(data, len);
  if (len != STORE_KEY_ID_HEX_LEN || !store_is_lower_hex(*id, len)) {
    g_clear_pointer(id, g_free);
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                    "the master-key id recorded in the store is malformed"));
    return FALSE;
  }
  return TRUE;
}

/* ---- key wrapping ---------------------------------------------------- */

/* Binds a wrapped key to its AOR and version: a blob copied to another
 * record, or replayed from an older version, does not decrypt. */
static guint8 *
store_wrap_ad_new(const char *aor, guint64 version, gsize *len)
{
  gsize aor_len = strlen(aor);
  guint64 be = GUINT64_TO_BE(version);
  guint8 *ad = g_malloc(aor_len + sizeof be);

  memcpy(ad, aor, aor_len);
  memcpy(ad + aor_len, &be, sizeof be);
  *len = aor_len + sizeof be;
  return ad;
}

static GBytes *
store_key_wrap(StoreMasterKey *key, const char *aor, guint64 version, GBytes *plain,
               GError **error)
{
  gnutls_datum_t k = {key->bytes, sizeof key->bytes};
  gnutls_aead_cipher_hd_t cipher = NULL;
  g_autofree guint8 *ad = NULL;
  gsize ad_len, plain_len;
  const guint8 *p = g_bytes_get_data(plain, &plain_len);
  gsize out_len = STORE_WRAP_NONCE_SIZE + plain_len + STORE_WRAP_TAG_SIZE;
  g_autofree guint8 *out = g_malloc(out_len);
  size_t ct_len = plain_len + STORE_WRAP_TAG_SIZE;
  int rc;

  ad = store_wrap_ad_new(aor, version, &ad_len);
  /* A fresh random nonce per wrap: with at most a few million wraps per
   * key, the GCM collision bound is far away. */
  rc = gnutls_rnd(GNUTLS_RND_NONCE, out, STORE_WRAP_NONCE_SIZE);
  if (rc >= 0)
    rc = gnutls_aead_cipher_init(&cipher, GNUTLS_CIPHER_AES_256_GCM, &k);
  if (rc >= 0) {
    rc = gnutls_aead_cipher_encrypt(cipher, out, STORE_WRAP_NONCE_SIZE, ad, ad_len,
                                    STORE_WRAP_TAG_SIZE, p, plain_len, out + STORE_WRAP_NONCE_SIZE,
                                    &ct_len);
    gnutls_aead_cipher_deinit(cipher);
  }
  if (rc < 0 || ct_len != plain_len + STORE_WRAP_TAG_SIZE) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "cannot wrap the key of %s: %s", aor,
                rc < 0 ? gnutls_strerror(rc) : "unexpected ciphertext length");
    return NULL;
  }
  return g_bytes_new_take(g_steal_pointer(&out), out_len);
}

/* The plain PKCS#8 (wiped when freed), or NULL: CORRUPT when the blob does
 * not authenticate, which is all a damaged or moved blob can look like. */
static GBytes *
store_key_unwrap(StoreMasterKey *key, const char *aor, guint64 version, GBytes *blob,
                 GError **error)
{
  gnutls_datum_t k = {key->bytes, sizeof key->bytes};
  gnutls_aead_cipher_hd_t cipher = NULL;
  g_autofree guint8 *ad = NULL;
  g_autoptr(GBytes) plain = NULL;
  gsize ad_len, blob_len, plain_len;
  const guint8 *b = g_bytes_get_data(blob, &blob_len);
  guint8 *out;
  size_t out_len;
  int rc;

  if (blob_len <= STORE_WRAP_NONCE_SIZE + STORE_WRAP_TAG_SIZE) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "the server-held key of %s is truncated",
                aor);
    return NULL;
  }
  plain_len = blob_len - STORE_WRAP_NONCE_SIZE - STORE_WRAP_TAG_SIZE;
  out_len = plain_len;
  plain = store_secret_bytes_new(NULL, plain_len, &out);
  ad = store_wrap_ad_new(aor, version, &ad_len);
  rc = gnutls_aead_cipher_init(&cipher, GNUTLS_CIPHER_AES_256_GCM, &k);
  if (rc < 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_KEY, "cannot unwrap the key of %s: %s", aor,
                gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_aead_cipher_decrypt(cipher, b, STORE_WRAP_NONCE_SIZE, ad, ad_len,
                                  STORE_WRAP_TAG_SIZE, b + STORE_WRAP_NONCE_SIZE,
                                  blob_len - STORE_WRAP_NONCE_SIZE, out, &out_len);
  gnutls_aead_cipher_deinit(cipher);
  if (rc < 0 || out_len != plain_len) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "the server-held key of %s does not decrypt under master key %s: "
                "the record is damaged",
                aor, key->id);
    return NULL;
  }
  return g_steal_pointer(&plain);
}

/* ---- records --------------------------------------------------------- */

static GVariant *
store_record_new(guint16 format, GVariant *body)
{
  return g_variant_ref_sink(g_variant_new("(qv)", format, body));
}

/* The format number and body of a stored record. Anything that is not a
 * record is CORRUPT: the bytes come from disk.
 *
 * GVariant reads untrusted data safely (a damaged frame yields empty or zero
 * children, which the decoders refuse), so the hot path skips the normal-form
 * check: GLib checks every byte of an "ay" one call at a time, which made a
 * credential read 15 times slower. store_db_check() is @strict. */
static GVariant *
store_record_split(GBytes *value, gboolean strict, guint16 *format, GError **error)
{
  g_autoptr(GVariant) record = NULL;
  GVariant *body = NULL;

  record = g_variant_ref_sink(
      g_variant_new_from_bytes(G_VARIANT_TYPE(STORE_RECORD_TYPE), value, FALSE));
  if (strict && !g_variant_is_normal_form(record)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "not a valid record");
    return NULL;
  }
  g_variant_get(record, "(qv)", format, &body);
  return body;
}

static gboolean
store_record_check_type(GVariant *body, const char *body_type, GError **error)
{
  if (!g_variant_is_of_type(body, G_VARIANT_TYPE(body_type))) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "record body has type %s, not %s",
                g_variant_get_type_string(body), body_type);
    return FALSE;
  }
  return TRUE;
}

/* The body of a stored record, checked to be of format @format and type
 * @body_type. */
static GVariant *
store_record_open(GBytes *value, gboolean strict, guint16 format, const char *body_type,
                  GError **error)
{
  g_autoptr(GVariant) body = NULL;
  guint16 found;

  body = store_record_split(value, strict, &found, error);
  if (body == NULL)
    return NULL;
  if (found != format) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "record format %u is unknown to this build (expected %u)", found, format);
    return NULL;
  }
  if (!store_record_check_type(body, body_type, error))
    return NULL;
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

/* An AOR from a table key, or NULL when the key is not one. */
static char *
store_aor_from_key(const MDB_val *k)
{
  if (k->mv_size == 0 || memchr(k->mv_data, '\0', k->mv_size) != NULL ||
      !g_utf8_validate(k->mv_data, k->mv_size, NULL))
    return NULL;
  return g_strndup(k->mv_data, k->mv_size);
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
      char *aor = store_aor_from_key(&k);

      if (aor == NULL) {
        store_txn_fail(&txn,
                       g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                   "a key in %s is not valid UTF-8", store_table_names[table]));
        break;
      }
      g_ptr_array_add(keys, aor);
    }
    if (rc != MDB_NOTFOUND)
      store_txn_check(&txn, rc, "listing the store");
    mdb_cursor_close(cursor);
  }
  if (!store_txn_end(&txn, error))
    return NULL;
  return g_steal_pointer(&keys);
}

/* ---- credential records ---------------------------------------------- */

/* A credential record as stored: the key part still wrapped. */
typedef struct {
  GBytes *cert_der;
  gint64 not_before;
  gint64 not_after;
  gint64 updated;
  guint64 version;
  char *etag;
  StoreKeyKind key_kind;
  GBytes *key_blob; /* NULL for STORE_KEY_NONE */
  char *key_id;     /* SERVER_HELD only */
  guint16 format;   /* as read; records are always written in the current one */
} StoreCredRecord;

static void
store_cred_record_clear(StoreCredRecord *rec)
{
  g_clear_pointer(&rec->cert_der, g_bytes_unref);
  g_clear_pointer(&rec->etag, g_free);
  g_clear_pointer(&rec->key_blob, g_bytes_unref);
  g_clear_pointer(&rec->key_id, g_free);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(StoreCredRecord, store_cred_record_clear)

static gsize
store_gv_offset_size(gsize container_size)
{
  if (container_size > G_MAXUINT32)
    return 8;
  if (container_size > G_MAXUINT16)
    return 4;
  if (container_size > G_MAXUINT8)
    return 2;
  return container_size > 0 ? 1 : 0;
}

static gsize
store_gv_offset_read(const guint8 *p, gsize size)
{
  guint64 v = 0;

  for (gsize i = 0; i < size; i++)
    v |= (guint64)p[i] << (8 * i);
  return (gsize)v;
}

/* A GVariant string at [start, end): UTF-8, one NUL, at the end. */
static const char *
store_gv_string(const guint8 *d, gsize start, gsize end)
{
  const char *s = (const char *)d + start;

  if (end <= start || d[end - 1] != '\0' || !g_utf8_validate(s, (gssize)(end - start - 1), NULL))
    return NULL;
  return s;
}

/* Reads a format 2 credential straight from its GVariant serialisation,
 * without building a GVariant per field: that took 2.5 us of a 3 us read.
 * The record "(qv)" holds q at 0 and the variant at 8: the body, a NUL and
 * the body's type string. The body "(ayxxxtsyays)" is
 *   cert | pad to 8 | notBefore notAfter updated version | etag NUL | kind |
 *   blob | key id NUL | end of blob | end of etag | end of cert
 * with the three ends little-endian, 1 to 8 bytes by the body's size. The
 * unit tests compare this against GVariant's own decoding. */
static gboolean
store_cred_body_v2_read(GBytes *value, StoreCredRecord *rec, guint8 *kind, GError **error)
{
  static const char type[] = STORE_CRED_BODY_TYPE_V2;
  gsize len, body_len, osz, cert_end, etag_end, blob_end, limit, ints;
  const guint8 *p = g_bytes_get_data(value, &len);
  const guint8 *nul, *d;
  const char *etag, *key_id;

  nul = len > 8 ? memrchr(p + 8, '\0', len - 8) : NULL;
  if (nul == NULL || (gsize)(p + len - (nul + 1)) != sizeof type - 1 ||
      memcmp(nul + 1, type, sizeof type - 1) != 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "record body is not of type %s", type);
    return FALSE;
  }
  d = p + 8;
  body_len = (gsize)(nul - d);
  osz = store_gv_offset_size(body_len);
  if (body_len < 3 * osz) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "record body is truncated");
    return FALSE;
  }
  limit = body_len - 3 * osz;
  cert_end = store_gv_offset_read(d + body_len - osz, osz);
  etag_end = store_gv_offset_read(d + body_len - 2 * osz, osz);
  blob_end = store_gv_offset_read(d + body_len - 3 * osz, osz);
  ints = (cert_end + 7) & ~(gsize)7;
  if (cert_end > limit || etag_end > limit || blob_end > limit || ints + 32 > etag_end ||
      etag_end + 1 > blob_end) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "record body has broken framing");
    return FALSE;
  }
  etag = store_gv_string(d, ints + 32, etag_end);
  key_id = store_gv_string(d, blob_end, limit);
  if (etag == NULL || key_id == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "record holds a malformed string");
    return FALSE;
  }
  /* GVariant stores integers in host order; LMDB files are host-specific
   * anyway. memcpy: LMDB and GBytes give no 8-byte alignment. */
  memcpy(&rec->not_before, d + ints, 8);
  memcpy(&rec->not_after, d + ints + 8, 8);
  memcpy(&rec->updated, d + ints + 16, 8);
  memcpy(&rec->version, d + ints + 24, 8);
  *kind = d[etag_end];
  rec->cert_der = g_bytes_new_from_bytes(value, 8, cert_end);
  rec->key_blob = g_bytes_new_from_bytes(value, 8 + etag_end + 1, blob_end - etag_end - 1);
  rec->etag = g_strdup(etag);
  rec->key_id = g_strdup(key_id);
  return TRUE;
}

/* Format 1: certificate only. Rare (migrated at open), so GVariant decodes it. */
static gboolean
store_cred_body_v1_read(GVariant *body, StoreCredRecord *rec, guint8 *kind, GError **error)
{
  g_autoptr(GVariant) der = NULL;
  g_autoptr(GVariant) blob = NULL;
  const char *etag;

  if (!store_record_check_type(body, STORE_CRED_BODY_TYPE_V1, error))
    return FALSE;
  g_variant_get(body, "(@ayxxxt&sy@ay)", &der, &rec->not_before, &rec->not_after, &rec->updated,
                &rec->version, &etag, kind, &blob);
  if (*kind != STORE_KEY_NONE || g_variant_get_size(blob) != 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "a format 1 record cannot hold a private key");
    return FALSE;
  }
  rec->cert_der = g_variant_get_data_as_bytes(der);
  rec->etag = g_strdup(etag);
  rec->key_id = g_strdup("");
  return TRUE;
}

/* Fills @rec; on failure the caller clears it. */
static gboolean
store_cred_record_parse(GBytes *value, gboolean strict, StoreCredRecord *rec, GError **error)
{
  gsize blob_len;
  guint8 kind = 0;
  guint16 format = 0;

  if (strict || g_bytes_get_size(value) < 8) {
    /* Normal form, checked by GLib; the fields are then read as always. */
    g_autoptr(GVariant) body = store_record_split(value, strict, &format, error);
    if (body == NULL)
      return FALSE;
    if (format == STORE_CRED_RECORD_VERSION &&
        !store_record_check_type(body, STORE_CRED_BODY_TYPE_V2, error))
      return FALSE;
    if (format == 1 && !store_cred_body_v1_read(body, rec, &kind, error))
      return FALSE;
  } else {
    memcpy(&format, g_bytes_get_data(value, NULL), sizeof format);
    if (format == 1) {
      g_autoptr(GVariant) body = store_record_split(value, FALSE, &format, error);
      if (body == NULL || !store_cred_body_v1_read(body, rec, &kind, error))
        return FALSE;
    }
  }
  rec->format = format;
  if (format == STORE_CRED_RECORD_VERSION) {
    if (!store_cred_body_v2_read(value, rec, &kind, error))
      return FALSE;
  } else if (format != 1) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "record format %u is unknown to this build (expected %u)", format,
                STORE_CRED_RECORD_VERSION);
    return FALSE;
  }

  if (g_bytes_get_size(rec->cert_der) == 0 || *rec->etag == '\0' || rec->version == 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "record lacks a certificate, ETag or version");
    return FALSE;
  }
  blob_len = rec->key_blob != NULL ? g_bytes_get_size(rec->key_blob) : 0;
  switch (kind) {
  case STORE_KEY_NONE:
    if (blob_len != 0 || *rec->key_id != '\0') {
      g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "key data without a key kind");
      return FALSE;
    }
    break;
  case STORE_KEY_USER_ENCRYPTED:
    if (blob_len == 0 || *rec->key_id != '\0') {
      g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "malformed user-encrypted key");
      return FALSE;
    }
    break;
  case STORE_KEY_SERVER_HELD:
    if (blob_len <= STORE_WRAP_NONCE_SIZE + STORE_WRAP_TAG_SIZE ||
        !store_is_lower_hex(rec->key_id, STORE_KEY_ID_HEX_LEN)) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "malformed server-held key");
      return FALSE;
    }
    break;
  default:
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "unknown key kind %u", kind);
    return FALSE;
  }
  rec->key_kind = kind;
  if (kind == STORE_KEY_NONE)
    g_clear_pointer(&rec->key_blob, g_bytes_unref);
  if (kind != STORE_KEY_SERVER_HELD)
    g_clear_pointer(&rec->key_id, g_free);
  return TRUE;
}

static gboolean
store_cred_record_decode(const char *aor, GBytes *value, gboolean strict, StoreCredRecord *rec,
                         GError **error)
{
  if (!store_cred_record_parse(value, strict, rec, error)) {
    store_cred_record_clear(rec);
    g_prefix_error(error, "credential of %s: ", aor);
    return FALSE;
  }
  return TRUE;
}

static GVariant *
store_cred_record_encode(const StoreCredRecord *rec)
{
  GVariant *blob;

  if (rec->key_blob != NULL)
    blob = g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, rec->key_blob, TRUE);
  else
    blob = g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, NULL, 0, 1);
  return store_record_new(
      STORE_CRED_RECORD_VERSION,
      g_variant_new("(@ayxxxtsy@ays)",
                    g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, rec->cert_der, TRUE),
                    rec->not_before, rec->not_after, rec->updated, rec->version, rec->etag,
                    (guint8)rec->key_kind, blob, rec->key_id != NULL ? rec->key_id : ""));
}

/* ---- change log ------------------------------------------------------ */

/* The log only carries changes to a running daemon, which reads it every
 * second (and starts from its end): old entries serve nobody, and kept for
 * ever they would fill a capped store. Each append drops entries from the
 * head while more than change_keep remain and the head is older than
 * change_min_age, at most STORE_CHANGE_PRUNE_STEP of them, so the log stays
 * bounded at a small cost per write, and a backlog (a bulk import) drains
 * over the writes that follow. */
#define STORE_CHANGE_PRUNE_STEP 64

static StoreChange *store_change_decode(const MDB_val *k, const MDB_val *v, gboolean strict,
                                        GError **error);

static void
store_txn_change_prune(StoreTxn *txn, MDB_cursor *cursor, gint64 now)
{
  MDB_stat st;
  MDB_val k, v;

  if (!store_txn_ok(txn) ||
      !store_txn_check(txn, mdb_stat(txn->txn, txn->env->dbis[STORE_TABLE_CHANGES], &st),
                       "counting the change log"))
    return;
  for (guint i = 0; i < STORE_CHANGE_PRUNE_STEP && st.ms_entries > txn->env->change_keep;
       i++, st.ms_entries--) {
    GError *local = NULL;
    int rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST);
    if (rc != MDB_SUCCESS) {
      if (rc != MDB_NOTFOUND)
        store_txn_check(txn, rc, "reading the change log");
      return;
    }
    g_autoptr(StoreChange) head = store_change_decode(&k, &v, FALSE, &local);
    if (head == NULL) {
      store_txn_fail(txn, local);
      return;
    }
    if (now - head->time < txn->env->change_min_age)
      return;
    if (!store_txn_check(txn, mdb_cursor_del(cursor, 0), "pruning the change log"))
      return;
  }
}

/* Appends (next seq, @aor, @kind, now) in @txn: the change commits or
 * vanishes together with the write it describes. LMDB serialises writers
 * across processes, so last + 1 is unique and increasing. */
static void
store_txn_change_append(StoreTxn *txn, const char *aor, StoreChangeKind kind)
{
  g_autoptr(GVariant) record = NULL;
  MDB_cursor *cursor = NULL;
  MDB_val k, v;
  guint64 last = 0, be;
  int rc;

  if (!store_txn_ok(txn) ||
      !store_txn_check(txn,
                       mdb_cursor_open(txn->txn, txn->env->dbis[STORE_TABLE_CHANGES], &cursor),
                       "opening the change log"))
    return;
  rc = mdb_cursor_get(cursor, &k, &v, MDB_LAST);
  if (rc == MDB_SUCCESS) {
    if (k.mv_size != sizeof be) {
      mdb_cursor_close(cursor);
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                      "the change log holds a key of %zu bytes", k.mv_size));
      return;
    }
    memcpy(&be, k.mv_data, sizeof be);
    last = GUINT64_FROM_BE(be);
  } else if (rc != MDB_NOTFOUND) {
    mdb_cursor_close(cursor);
    store_txn_check(txn, rc, "reading the change log");
    return;
  }
  if (last == G_MAXUINT64) {
    mdb_cursor_close(cursor);
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_FULL,
                                    "the change log ran out of sequence numbers"));
    return;
  }
  be = GUINT64_TO_BE(last + 1);
  record = store_record_new(
      STORE_CHANGE_RECORD_VERSION,
      g_variant_new("(sux)", aor, (guint32)kind, g_get_real_time() / G_USEC_PER_SEC));
  k = (MDB_val){sizeof be, &be};
  v = (MDB_val){g_variant_get_size(record), (void *)g_variant_get_data(record)};
  if (store_txn_check(txn, mdb_cursor_put(cursor, &k, &v, MDB_APPEND),
                      "appending to the change log"))
    store_txn_change_prune(txn, cursor, g_get_real_time() / G_USEC_PER_SEC);
  mdb_cursor_close(cursor);
}

/* ---- schema ---------------------------------------------------------- */

/* store_migrations[v] turns schema v into v + 1 inside the open transaction,
 * recording any failure in @txn. A new store is created at the current
 * version; a store without a recorded version is schema 0. To change the
 * schema, bump STORE_SCHEMA_VERSION and append the function that upgrades
 * the previous version (see the history in store-private.h). */
typedef void (*StoreMigrateFunc)(StoreTxn *txn);

static void
store_migrate_0_to_1(StoreTxn *txn)
{
  MDB_dbi dbi;

  /* Schema 0 had no registrations or changes table; a table that was never
   * written to may be missing too. */
  for (guint i = 0; i < STORE_TABLE_N; i++) {
    g_autofree char *what = g_strdup_printf("creating the %s table", store_table_names[i]);
    if (!store_txn_check(txn, mdb_dbi_open(txn->txn, store_table_names[i], MDB_CREATE, &dbi),
                         what))
      return;
  }
}

typedef struct {
  char *aor;
  GVariant *record;
} StorePendingPut;

static void
store_pending_put_free(gpointer p)
{
  StorePendingPut *put = p;

  g_free(put->aor);
  g_variant_unref(put->record);
  g_free(put);
}

static void
store_pending_add(GPtrArray *pending, const char *aor, GVariant *record)
{
  StorePendingPut *put = g_new(StorePendingPut, 1);

  put->aor = g_strdup(aor);
  put->record = record;
  g_ptr_array_add(pending, put);
}

/* Writes @pending into table @dbi (after the cursor that found them closed). */
static void
store_pending_write(StoreTxn *txn, MDB_dbi dbi, GPtrArray *pending, const char *what)
{
  for (guint i = 0; i < pending->len && store_txn_ok(txn); i++) {
    StorePendingPut *put = g_ptr_array_index(pending, i);
    MDB_val k = {strlen(put->aor), put->aor};
    MDB_val v = {g_variant_get_size(put->record), (void *)g_variant_get_data(put->record)};

    store_txn_check(txn, mdb_put(txn->txn, dbi, &k, &v, 0), what);
  }
}

static void
store_migrate_1_to_2(StoreTxn *txn)
{
  g_autoptr(GPtrArray) pending = g_ptr_array_new_with_free_func(store_pending_put_free);
  MDB_cursor *cursor = NULL;
  MDB_dbi dbi;
  MDB_val k, v;
  guint n_damaged = 0;
  int rc;

  /* Rewrites format 1 credentials (certificate only) in format 2 so that
   * the whole table has one shape; nothing else changes, so the change log
   * gets no entries. A damaged record is left as it is: failing here would
   * lock everyone out of the store, the CLI included, while left alone it
   * reads as CORRUPT, store_db_check() names it, and it can be deleted. */
  if (!store_txn_check(txn, mdb_dbi_open(txn->txn, STORE_DBI_CREDENTIALS, MDB_CREATE, &dbi),
                       "opening the credentials table") ||
      !store_txn_check(txn, mdb_cursor_open(txn->txn, dbi, &cursor), "opening a cursor"))
    return;
  while ((rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) == MDB_SUCCESS) {
    g_autofree char *aor = store_aor_from_key(&k);
    g_autoptr(GBytes) value = NULL;
    g_auto(StoreCredRecord) rec = {0};
    GError *local = NULL;

    if (aor == NULL) {
      g_warning("migration: a key in credentials is not valid UTF-8; left as it is");
      continue;
    }
    value = g_bytes_new(v.mv_data, v.mv_size);
    if (!store_cred_record_decode(aor, value, TRUE, &rec, &local)) {
      g_warning("migration: %s; left as it is", local->message);
      g_error_free(local);
      n_damaged++;
      continue;
    }
    if (rec.format != STORE_CRED_RECORD_VERSION)
      store_pending_add(pending, aor, store_cred_record_encode(&rec));
  }
  if (store_txn_ok(txn) && rc != MDB_NOTFOUND)
    store_txn_check(txn, rc, "reading the credentials");
  mdb_cursor_close(cursor);
  store_pending_write(txn, dbi, pending, "rewriting a credential");
  if (store_txn_ok(txn) && pending->len + n_damaged > 0)
    g_message("rewrote %u credentials in record format %u (%u damaged left as they were)",
              pending->len, STORE_CRED_RECORD_VERSION, n_damaged);
}

static const StoreMigrateFunc store_migrations[STORE_SCHEMA_VERSION] = {
    [0] = store_migrate_0_to_1,
    [1] = store_migrate_1_to_2,
};
G_STATIC_ASSERT(G_N_ELEMENTS(store_migrations) == STORE_SCHEMA_VERSION);

typedef struct {
  MDB_dbi dbis[STORE_TABLE_N];
  guint found_version;   /* as found; STORE_SCHEMA_VERSION for a new store */
  gboolean created;      /* the environment held nothing */
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

/* Sets prep->found_version and ->created; FALSE with the failure in @txn. */
static gboolean
store_schema_read(StoreTxn *txn, StorePrepare *prep)
{
  MDB_val k = {strlen(STORE_META_SCHEMA_VERSION), (void *)STORE_META_SCHEMA_VERSION};
  MDB_val v;
  MDB_dbi meta, main_dbi;
  MDB_stat st;
  guint32 be;
  int rc;

  prep->found_version = 0;
  prep->created = FALSE;
  rc = mdb_dbi_open(txn->txn, STORE_DBI_META, 0, &meta);
  if (rc == MDB_NOTFOUND) {
    /* No meta table: new, unless tables from before versioning exist. */
    if (!store_txn_check(txn, mdb_dbi_open(txn->txn, NULL, 0, &main_dbi), "opening the store") ||
        !store_txn_check(txn, mdb_stat(txn->txn, main_dbi, &st), "reading the store"))
      return FALSE;
    prep->created = st.ms_entries == 0;
    if (prep->created)
      prep->found_version = STORE_SCHEMA_VERSION;
    return TRUE;
  }
  if (!store_txn_check(txn, rc, "opening the meta table"))
    return FALSE;
  rc = mdb_get(txn->txn, meta, &k, &v);
  if (rc == MDB_NOTFOUND)
    return TRUE; /* schema 0 */
  if (!store_txn_check(txn, rc, "reading the schema version"))
    return FALSE;
  if (v.mv_size != sizeof be) {
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                    "the store has no valid schema version"));
    return FALSE;
  }
  memcpy(&be, v.mv_data, sizeof be);
  prep->found_version = GUINT32_FROM_BE(be);
  /* No build ever wrote 0: an explicit 0 is damage, not history. */
  if (prep->found_version == 0) {
    store_txn_fail(
        txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT, "the store records schema version 0"));
    return FALSE;
  }
  if (prep->found_version > STORE_SCHEMA_VERSION) {
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_SCHEMA,
                                    "the store has schema version %u, newer than version %u "
                                    "of this build",
                                    prep->found_version, STORE_SCHEMA_VERSION));
    return FALSE;
  }
  return TRUE;
}

static void
store_prepare_cb(StoreTxn *txn, gpointer user_data)
{
  StorePrepare *prep = user_data;

  if (!store_schema_read(txn, prep))
    return;
  for (guint ver = prep->found_version; ver < STORE_SCHEMA_VERSION; ver++) {
    store_migrations[ver](txn);
    if (!store_txn_ok(txn)) {
      g_prefix_error(&txn->error, "migrating the store from schema version %u to %u: ", ver,
                     ver + 1);
      return;
    }
    g_message("store migrated from schema version %u to %u", ver, ver + 1);
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

  if (prep->created || prep->found_version != STORE_SCHEMA_VERSION)
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
  store_master_key_free(db->key);
  g_mutex_clear(&db->key_lock);
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
  g_mutex_init(&db->key_lock);

  if (!store_env_write(env, store_prepare_cb, &prep, error)) {
    g_prefix_error(error, "%s: ", dir);
    store_db_unref_locked(g_steal_pointer(&db));
    return NULL;
  }
  db->schema_version = STORE_SCHEMA_VERSION;
  env->tables_ready = TRUE;
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

void
store_db_set_map_size_max(StoreDb *db, guint64 max_size)
{
  g_return_if_fail(db != NULL);

  g_rw_lock_writer_lock(&db->env->resize_lock);
  db->env->map_max = max_size == 0 ? STORE_MAP_SIZE_MAX : max_size;
  g_rw_lock_writer_unlock(&db->env->resize_lock);
}

void
store_db_set_change_retention(StoreDb *db, guint keep, gint64 min_age)
{
  g_return_if_fail(db != NULL);
  db->env->change_keep = keep;
  db->env->change_min_age = min_age;
}

guint
store_db_get_schema_version(StoreDb *db)
{
  g_return_val_if_fail(db != NULL, 0);
  return db->schema_version;
}

/* ---- master key and store -------------------------------------------- */

typedef struct {
  StoreMasterKey *key;
  gboolean recorded;
} StoreKeySet;

static void
store_key_set_cb(StoreTxn *txn, gpointer user_data)
{
  StoreKeySet *set = user_data;
  g_autofree char *id = NULL;

  set->recorded = FALSE;
  if (!store_txn_get_key_id(txn, &id))
    return;
  if (id == NULL) {
    /* First use: from now on only this key opens the store's keys. */
    set->recorded =
        store_txn_put_raw(txn, STORE_TABLE_META, STORE_META_MASTER_KEY_ID, set->key->id,
                          STORE_KEY_ID_HEX_LEN, "recording the master-key id");
    return;
  }
  if (strcmp(id, set->key->id) != 0)
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_KEY,
                                    "master key %s (id %s) is not the key of the store in %s "
                                    "(id %s)",
                                    set->key->path, set->key->id, txn->env->path, id));
}

gboolean
store_db_set_master_key(StoreDb *db, StoreMasterKey *key, GError **error)
{
  StoreKeySet set = {key, FALSE};

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(key != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  /* A write transaction, so two processes setting different first keys
   * cannot both win. */
  if (!store_env_write(db->env, store_key_set_cb, &set, error))
    return FALSE;
  if (set.recorded)
    g_message("store in %s now uses master key id %s", db->env->path, key->id);
  store_db_replace_key(db, key);
  return TRUE;
}

typedef struct {
  StoreMasterKey *old_key; /* may be NULL when the store never had a key */
  StoreMasterKey *new_key;
  guint n_rewrapped;
  StoreProgressFunc progress;
  gpointer progress_data;
} StoreRekey;

static void
store_rekey_cb(StoreTxn *txn, gpointer user_data)
{
  StoreRekey *rk = user_data;
  g_autoptr(GPtrArray) pending = g_ptr_array_new_with_free_func(store_pending_put_free);
  g_autofree char *id = NULL;
  MDB_cursor *cursor = NULL;
  MDB_val k, v;
  int rc;

  rk->n_rewrapped = 0;
  if (!store_txn_get_key_id(txn, &id))
    return;
  if (id != NULL && rk->old_key == NULL) {
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_KEY,
                                    "re-keying the store in %s needs its current master key "
                                    "(id %s)",
                                    txn->env->path, id));
    return;
  }
  if (id != NULL && strcmp(id, rk->old_key->id) != 0) {
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_KEY,
                                    "master key %s (id %s) is not the key of the store in %s "
                                    "(id %s)",
                                    rk->old_key->path, rk->old_key->id, txn->env->path, id));
    return;
  }

  if (!store_txn_check(txn,
                       mdb_cursor_open(txn->txn, txn->env->dbis[STORE_TABLE_CREDENTIALS], &cursor),
                       "opening a cursor"))
    return;
  MDB_stat st = {0};
  guint64 total = 0, done = 0;
  if (rk->progress != NULL &&
      mdb_stat(txn->txn, txn->env->dbis[STORE_TABLE_CREDENTIALS], &st) == MDB_SUCCESS)
    total = st.ms_entries;
  while ((rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) == MDB_SUCCESS) {
    g_autofree char *aor = store_aor_from_key(&k);
    g_autoptr(GBytes) value = NULL;
    g_autoptr(GBytes) plain = NULL;
    g_auto(StoreCredRecord) rec = {0};
    GError *local = NULL;

    if (rk->progress != NULL)
      rk->progress(++done, total, rk->progress_data);
    if (aor == NULL) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                      "a key in credentials is not valid UTF-8"));
      break;
    }
    value = g_bytes_new(v.mv_data, v.mv_size);
    if (!store_cred_record_decode(aor, value, TRUE, &rec, &local)) {
      store_txn_fail(txn, local);
      break;
    }
    if (rec.key_kind != STORE_KEY_SERVER_HELD)
      continue;
    if (id == NULL || strcmp(rec.key_id, id) != 0) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_CORRUPT,
                                      "credential of %s: wrapped under master key id %s, not the "
                                      "store's (%s)",
                                      aor, rec.key_id, id != NULL ? id : "none"));
      break;
    }
    /* Any key that does not unwrap aborts the whole rekey: nothing may be
     * left under a key that is about to be retired. */
    plain = store_key_unwrap(rk->old_key, aor, rec.version, rec.key_blob, &local);
    if (plain == NULL) {
      store_txn_fail(txn, local);
      break;
    }
    g_clear_pointer(&rec.key_blob, g_bytes_unref);
    rec.key_blob = store_key_wrap(rk->new_key, aor, rec.version, plain, &local);
    if (rec.key_blob == NULL) {
      store_txn_fail(txn, local);
      break;
    }
    g_free(rec.key_id);
    rec.key_id = g_strdup(rk->new_key->id);
    store_pending_add(pending, aor, store_cred_record_encode(&rec));
  }
  if (store_txn_ok(txn) && rc != MDB_NOTFOUND)
    store_txn_check(txn, rc, "reading the credentials");
  mdb_cursor_close(cursor);
  store_pending_write(txn, txn->env->dbis[STORE_TABLE_CREDENTIALS], pending,
                      "rewriting a credential");
  store_txn_put_raw(txn, STORE_TABLE_META, STORE_META_MASTER_KEY_ID, rk->new_key->id,
                    STORE_KEY_ID_HEX_LEN, "recording the master-key id");
  if (store_txn_ok(txn))
    rk->n_rewrapped = pending->len;
}

gboolean
store_db_rekey(StoreDb *db, StoreMasterKey *new_key, GError **error)
{
  return store_db_rekey_full(db, new_key, NULL, NULL, error);
}

gboolean
store_db_rekey_full(StoreDb *db, StoreMasterKey *new_key, StoreProgressFunc progress,
                    gpointer progress_data, GError **error)
{
  g_autoptr(StoreMasterKey) old_key = NULL;
  StoreRekey rk = {.progress = progress, .progress_data = progress_data};

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(new_key != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  old_key = store_db_dup_key(db);
  rk.old_key = old_key;
  rk.new_key = new_key;
  if (!store_env_write(db->env, store_rekey_cb, &rk, error))
    return FALSE;
  g_message("store in %s re-keyed from master key id %s to %s (%u server-held keys re-wrapped)",
            db->env->path, old_key != NULL ? old_key->id : "(none)", new_key->id, rk.n_rewrapped);
  store_db_replace_key(db, new_key);
  return TRUE;
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
  /* Unwrapped keys are wiped by their GBytes' free function. */
  g_clear_pointer(&cred->pkcs8, g_bytes_unref);
  g_free(cred);
}

/* One DER tag and length at @p; FALSE unless the content fits in @n. */
static gboolean
store_der_header(const guint8 *p, gsize n, guint8 *tag, gsize *hdr_len, gsize *len)
{
  if (n < 2)
    return FALSE;
  *tag = p[0];
  if (p[1] < 0x80) {
    *len = p[1];
    *hdr_len = 2;
  } else {
    gsize n_len = p[1] & 0x7f;

    if (n_len == 0 || n_len > 4 || n < 2 + n_len)
      return FALSE;
    *len = 0;
    for (gsize i = 0; i < n_len; i++)
      *len = (*len << 8) | p[2 + i];
    *hdr_len = 2 + n_len;
  }
  return *len <= n - *hdr_len;
}

typedef enum {
  STORE_PKCS8_NOT = 0,
  STORE_PKCS8_PLAIN,     /* PrivateKeyInfo: SEQUENCE { INTEGER, SEQUENCE, OCTET STRING .. } */
  STORE_PKCS8_ENCRYPTED, /* EncryptedPrivateKeyInfo: SEQUENCE { SEQUENCE, OCTET STRING } */
} StorePkcs8Shape;

/* Just enough DER to tell the two PKCS#8 forms apart: a plain key handed in
 * as "user-encrypted" would otherwise reach the file in clear. */
static StorePkcs8Shape
store_pkcs8_shape(GBytes *pkcs8)
{
  static const guint8 plain[] = {0x02, 0x30, 0x04};
  static const guint8 encrypted[] = {0x30, 0x04};
  gsize n, hdr, len;
  const guint8 *p = g_bytes_get_data(pkcs8, &n);
  const guint8 *want;
  gsize n_want;
  guint8 tag;

  if (!store_der_header(p, n, &tag, &hdr, &len) || tag != 0x30 || hdr + len != n)
    return STORE_PKCS8_NOT;
  p += hdr;
  n = len;
  if (!store_der_header(p, n, &tag, &hdr, &len))
    return STORE_PKCS8_NOT;
  want = tag == 0x02 ? plain : encrypted;
  n_want = tag == 0x02 ? G_N_ELEMENTS(plain) : G_N_ELEMENTS(encrypted);
  for (gsize i = 0; i < n_want; i++) {
    if (!store_der_header(p, n, &tag, &hdr, &len) || tag != want[i])
      return STORE_PKCS8_NOT;
    p += hdr + len;
    n -= hdr + len;
  }
  return want == plain ? STORE_PKCS8_PLAIN : STORE_PKCS8_ENCRYPTED;
}

typedef struct {
  const char *aor;
  GBytes *cert_der;
  gint64 not_before;
  gint64 not_after;
  gint64 updated;
  const char *etag;
  StoreKeyKind key_kind;
  GBytes *pkcs8;
  StoreMasterKey *key; /* for SERVER_HELD */
  const char *if_etag; /* NULL: unconditional */
} StoreCredPut;

/* Fails @txn with PRECONDITION unless the stored record of @aor (@old, NULL
 * when absent) carries @if_etag. */
static gboolean
store_txn_check_etag(StoreTxn *txn, const char *aor, GBytes *old, const char *if_etag)
{
  g_auto(StoreCredRecord) prev = {0};
  GError *local = NULL;

  if (old == NULL) {
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_PRECONDITION,
                                    "no credential stored for %s to match ETag %s", aor, if_etag));
    return FALSE;
  }
  if (!store_cred_record_decode(aor, old, FALSE, &prev, &local)) {
    store_txn_fail(txn, local);
    return FALSE;
  }
  if (strcmp(prev.etag, if_etag) != 0) {
    store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_PRECONDITION,
                                    "the credential of %s has another ETag", aor));
    return FALSE;
  }
  return TRUE;
}

static void
store_cred_put_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreCredPut *put = user_data;
  g_autoptr(GBytes) old = NULL;
  g_autoptr(GVariant) record = NULL;
  g_auto(StoreCredRecord) rec = {0};
  GError *local = NULL;

  old = store_txn_get(txn, STORE_TABLE_CREDENTIALS, put->aor, "reading the old credential");
  if (!store_txn_ok(txn))
    return;
  if (put->if_etag != NULL && !store_txn_check_etag(txn, put->aor, old, put->if_etag))
    return;
  rec.version = 1;
  if (old != NULL) {
    g_auto(StoreCredRecord) prev = {0};

    /* Overwriting would silently restart the version; the operator can
     * delete the damaged record first. */
    if (!store_cred_record_decode(put->aor, old, FALSE, &prev, &local)) {
      store_txn_fail(txn, local);
      return;
    }
    rec.version = prev.version + 1;
  }
  rec.cert_der = g_bytes_ref(put->cert_der);
  rec.not_before = put->not_before;
  rec.not_after = put->not_after;
  rec.updated = put->updated;
  rec.etag = g_strdup(put->etag);
  rec.key_kind = put->key_kind;
  /* The record replaces any stored key part: an old key never goes with a
   * new certificate. */
  if (put->key_kind == STORE_KEY_USER_ENCRYPTED) {
    rec.key_blob = g_bytes_ref(put->pkcs8);
  } else if (put->key_kind == STORE_KEY_SERVER_HELD) {
    g_autofree char *id = NULL;

    if (!store_txn_get_key_id(txn, &id))
      return;
    /* Another process may have re-keyed since this handle got its key. */
    if (id != NULL && strcmp(id, put->key->id) != 0) {
      store_txn_fail(txn, g_error_new(STORE_ERROR, STORE_ERROR_KEY,
                                      "cannot store the key of %s: master key %s (id %s) is no "
                                      "longer the store's (id %s)",
                                      put->aor, put->key->path, put->key->id, id));
      return;
    }
    if (id == NULL &&
        !store_txn_put_raw(txn, STORE_TABLE_META, STORE_META_MASTER_KEY_ID, put->key->id,
                           STORE_KEY_ID_HEX_LEN, "recording the master-key id"))
      return;
    rec.key_blob = store_key_wrap(put->key, put->aor, rec.version, put->pkcs8, &local);
    if (rec.key_blob == NULL) {
      store_txn_fail(txn, local);
      return;
    }
    rec.key_id = g_strdup(put->key->id);
  }
  record = store_cred_record_encode(&rec);
  store_txn_put(txn, STORE_TABLE_CREDENTIALS, put->aor, record, "writing the credential");
  store_txn_change_append(txn, put->aor, STORE_CHANGE_CREDENTIAL);
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

static gboolean
store_cred_put_check(const char *aor, GBytes *cert_der, gint64 not_before, gint64 not_after,
                     StoreKeyKind key_kind, GBytes *pkcs8, GError **error)
{
  StorePkcs8Shape shape;

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
  if (key_kind == STORE_KEY_NONE) {
    if (pkcs8 != NULL) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                  "%s: a private key was given without a key kind", aor);
      return FALSE;
    }
    return TRUE;
  }
  if (key_kind != STORE_KEY_USER_ENCRYPTED && key_kind != STORE_KEY_SERVER_HELD) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s: unknown key kind %d", aor,
                (int)key_kind);
    return FALSE;
  }
  if (pkcs8 == NULL || g_bytes_get_size(pkcs8) == 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s: the PKCS#8 key is missing", aor);
    return FALSE;
  }
  if (g_bytes_get_size(pkcs8) > STORE_PKCS8_MAX_SIZE) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s: PKCS#8 key larger than %d bytes",
                aor, STORE_PKCS8_MAX_SIZE);
    return FALSE;
  }
  shape = store_pkcs8_shape(pkcs8);
  if (shape == STORE_PKCS8_NOT) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s: the key is not PKCS#8 DER", aor);
    return FALSE;
  }
  if (key_kind == STORE_KEY_USER_ENCRYPTED && shape != STORE_PKCS8_ENCRYPTED) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                "%s: the PKCS#8 key is not encrypted; it can only be stored server-held", aor);
    return FALSE;
  }
  if (key_kind == STORE_KEY_SERVER_HELD && shape != STORE_PKCS8_PLAIN) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                "%s: a server-held key must be plain PKCS#8, not encrypted", aor);
    return FALSE;
  }
  return TRUE;
}

gboolean
store_cred_put(StoreDb *db, const char *aor, GBytes *cert_der, gint64 not_before, gint64 not_after,
               StoreKeyKind key_kind, GBytes *pkcs8, GError **error)
{
  return store_cred_put_if(db, aor, NULL, cert_der, not_before, not_after, key_kind, pkcs8, NULL,
                           error);
}

gboolean
store_cred_put_if(StoreDb *db, const char *aor, const char *if_etag, GBytes *cert_der,
                  gint64 not_before, gint64 not_after, StoreKeyKind key_kind, GBytes *pkcs8,
                  char **etag_out, GError **error)
{
  g_autoptr(StoreMasterKey) key = NULL;
  g_autofree char *etag = NULL;
  StoreCredPut put;

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, aor, error) ||
      !store_cred_put_check(aor, cert_der, not_before, not_after, key_kind, pkcs8, error))
    return FALSE;
  if (key_kind == STORE_KEY_SERVER_HELD) {
    key = store_db_dup_key(db);
    if (key == NULL) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_KEY,
                  "%s: a server-held key needs the master key, and none is set", aor);
      return FALSE;
    }
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
      .key_kind = key_kind,
      .pkcs8 = pkcs8,
      .key = key,
      .if_etag = if_etag,
  };
  if (!store_env_write(db->env, store_cred_put_cb, &put, error))
    return FALSE;
  if (etag_out != NULL)
    *etag_out = g_steal_pointer(&etag);
  return TRUE;
}

typedef struct {
  const char *aor;
  const char *if_etag;
  const char *new_etag;
} StoreCredRefresh;

static void
store_cred_refresh_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreCredRefresh *ref = user_data;
  g_autoptr(GBytes) old = NULL;
  g_autoptr(GVariant) record = NULL;
  g_auto(StoreCredRecord) rec = {0};
  GError *local = NULL;

  old = store_txn_get(txn, STORE_TABLE_CREDENTIALS, ref->aor, "reading the credential");
  if (!store_txn_ok(txn) || !store_txn_check_etag(txn, ref->aor, old, ref->if_etag))
    return;
  if (!store_cred_record_decode(ref->aor, old, FALSE, &rec, &local)) {
    store_txn_fail(txn, local);
    return;
  }
  /* The wrapped key is bound to AOR and version, both unchanged: it is
   * written back as it was. */
  g_free(rec.etag);
  rec.etag = g_strdup(ref->new_etag);
  record = store_cred_record_encode(&rec);
  store_txn_put(txn, STORE_TABLE_CREDENTIALS, ref->aor, record, "writing the credential");
}

gboolean
store_cred_refresh(StoreDb *db, const char *aor, const char *if_etag, char **etag_out,
                   GError **error)
{
  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(if_etag != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, aor, error))
    return FALSE;
  g_autofree char *etag = store_etag_new(error);
  if (etag == NULL)
    return FALSE;
  StoreCredRefresh ref = {aor, if_etag, etag};
  if (!store_env_write(db->env, store_cred_refresh_cb, &ref, error))
    return FALSE;
  if (etag_out != NULL)
    *etag_out = g_steal_pointer(&etag);
  return TRUE;
}

gboolean
store_cred_put_cert(StoreDb *db, const char *aor, GBytes *cert_der, gint64 not_before,
                    gint64 not_after, GError **error)
{
  return store_cred_put(db, aor, cert_der, not_before, not_after, STORE_KEY_NONE, NULL, error);
}

/* The private key of @rec for the caller: NULL without error when this
 * handle cannot open it (no key, or another process re-keyed). */
static gboolean
store_cred_open_key(StoreDb *db, const char *aor, const StoreCredRecord *rec, GBytes **pkcs8,
                    GError **error)
{
  g_autoptr(StoreMasterKey) key = NULL;

  *pkcs8 = NULL;
  if (rec->key_kind == STORE_KEY_USER_ENCRYPTED) {
    *pkcs8 = g_bytes_ref(rec->key_blob);
    return TRUE;
  }
  if (rec->key_kind != STORE_KEY_SERVER_HELD)
    return TRUE;
  key = store_db_dup_key(db);
  if (key == NULL)
    return TRUE;
  if (strcmp(key->id, rec->key_id) != 0) {
    if (g_atomic_int_compare_and_exchange(&db->warned_stale_key, 0, 1))
      g_warning("the store in %s was re-keyed to master key id %s; this process holds id %s "
                "and cannot open server-held keys until it loads the new key",
                db->env->path, rec->key_id, key->id);
    return TRUE;
  }
  *pkcs8 = store_key_unwrap(key, aor, rec->version, rec->key_blob, error);
  return *pkcs8 != NULL;
}

StoreCred *
store_cred_get(StoreDb *db, const char *aor, GError **error)
{
  g_autoptr(GBytes) value = NULL;
  g_auto(StoreCredRecord) rec = {0};
  g_autoptr(StoreCred) cred = NULL;
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
  if (!store_cred_record_decode(aor, value, FALSE, &rec, error))
    return NULL;
  cred = g_new0(StoreCred, 1);
  if (!store_cred_open_key(db, aor, &rec, &cred->pkcs8, error))
    return NULL;
  cred->aor = g_strdup(aor);
  cred->cert_der = g_steal_pointer(&rec.cert_der);
  cred->not_before = rec.not_before;
  cred->not_after = rec.not_after;
  cred->updated = rec.updated;
  cred->version = rec.version;
  cred->etag = g_steal_pointer(&rec.etag);
  cred->key_kind = rec.key_kind;
  return g_steal_pointer(&cred);
}

typedef struct {
  StoreTable table;
  const char *aor;
  const char *what;
  StoreChangeKind change;
  const char *if_etag; /* credentials only; NULL: unconditional */
} StoreDelete;

static void
store_delete_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreDelete *del = user_data;

  if (del->if_etag != NULL) {
    g_autoptr(GBytes) old = store_txn_get(txn, del->table, del->aor, "reading the credential");
    if (!store_txn_ok(txn) || !store_txn_check_etag(txn, del->aor, old, del->if_etag))
      return;
  }

  if (!store_txn_del(txn, del->table, del->aor, "deleting")) {
    if (txn->rc == MDB_NOTFOUND) {
      g_clear_error(&txn->error);
      txn->error = g_error_new(STORE_ERROR, STORE_ERROR_NOT_FOUND, "no %s stored for %s",
                               del->what, del->aor);
    }
    return;
  }
  store_txn_change_append(txn, del->aor, del->change);
}

gboolean
store_cred_delete(StoreDb *db, const char *aor, GError **error)
{
  return store_cred_delete_if(db, aor, NULL, error);
}

gboolean
store_cred_delete_if(StoreDb *db, const char *aor, const char *if_etag, GError **error)
{
  StoreDelete del = {STORE_TABLE_CREDENTIALS, aor, "certificate", STORE_CHANGE_REVOKED, if_etag};

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
store_user_decode(const char *aor, GBytes *value, gboolean strict, GError **error)
{
  g_autoptr(GVariant) body = NULL;
  g_autoptr(StoreUser) user = g_new0(StoreUser, 1);
  GError *local = NULL;

  body =
      store_record_open(value, strict, STORE_USER_RECORD_VERSION, STORE_USER_BODY_TYPE_V1, error);
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
  store_txn_change_append(txn, user->aor, STORE_CHANGE_USER);
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
  return store_user_decode(aor, value, FALSE, error);
}

gboolean
store_user_delete(StoreDb *db, const char *aor, GError **error)
{
  StoreDelete del = {STORE_TABLE_USERS, aor, "user", STORE_CHANGE_USER};

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

/* ---- registrations --------------------------------------------------- */

void
store_binding_free(StoreBinding *b)
{
  if (b == NULL)
    return;
  g_free(b->contact);
  g_free(b->instance);
  g_free(b->flow_token);
  g_free(b->call_id);
  g_free(b);
}

/* @s is NULL (allowed only when @optional), or 1 to @max bytes of UTF-8
 * without control characters (none belongs in a SIP header value). */
static gboolean
store_reg_text_check(const char *what, const char *s, gboolean optional, gsize max, GError **error)
{
  gsize len;

  if (s == NULL && optional)
    return TRUE;
  len = s != NULL ? strlen(s) : 0;
  if (len == 0 || len > max || !g_utf8_validate(s, len, NULL)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s must be 1 to %zu bytes of UTF-8",
                what, max);
    return FALSE;
  }
  for (const char *p = s; *p != '\0'; p++) {
    if ((guchar)*p < 0x20 || *p == 0x7f) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%s contains a control character",
                  what);
      return FALSE;
    }
  }
  return TRUE;
}

static gboolean
store_binding_check(const StoreBinding *b, GError **error)
{
  if (b == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "NULL binding");
    return FALSE;
  }
  if (!store_reg_text_check("contact", b->contact, FALSE, STORE_REG_CONTACT_MAX, error) ||
      !store_reg_text_check("instance", b->instance, TRUE, STORE_REG_FIELD_MAX, error) ||
      !store_reg_text_check("flow token", b->flow_token, TRUE, STORE_REG_FIELD_MAX, error) ||
      !store_reg_text_check("Call-ID", b->call_id, FALSE, STORE_REG_FIELD_MAX, error))
    return FALSE;
  /* RFC 5626 section 4.2: reg-id is 1 to 2^31-1, and means nothing
   * without an instance (a registrar ignores it then). */
  if (b->reg_id > G_MAXINT32 || (b->reg_id != 0 && b->instance == NULL)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                "reg-id %u out of range or without +sip.instance", b->reg_id);
    return FALSE;
  }
  if (b->expires_at < 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "negative expiry");
    return FALSE;
  }
  /* Written this way so that NaN fails too. */
  if (b->q != -1.0f && !(b->q >= 0.0f && b->q <= 1.0f)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "q %g is not in 0..1 nor -1",
                (double)b->q);
    return FALSE;
  }
  return TRUE;
}

static gboolean
store_bindings_check(GPtrArray *bindings, GError **error)
{
  if (bindings->len > STORE_REG_BINDINGS_MAX) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID, "%u bindings, more than %d",
                bindings->len, STORE_REG_BINDINGS_MAX);
    return FALSE;
  }
  for (guint i = 0; i < bindings->len; i++) {
    if (!store_binding_check(g_ptr_array_index(bindings, i), error)) {
      g_prefix_error(error, "binding %u: ", i);
      return FALSE;
    }
  }
  return TRUE;
}

static GPtrArray *
store_reg_decode(const char *aor, GBytes *value, gboolean strict, GError **error)
{
  g_autoptr(GPtrArray) bindings =
      g_ptr_array_new_with_free_func((GDestroyNotify)store_binding_free);
  g_autoptr(GVariant) body = NULL;
  GError *local = NULL;
  GVariantIter iter;
  const char *contact, *instance, *flow_token, *call_id;
  guint32 reg_id, cseq;
  gint64 expires_at;
  double q;

  body = store_record_open(value, strict, STORE_REG_RECORD_VERSION, STORE_REG_BODY_TYPE_V1, error);
  if (body == NULL) {
    g_prefix_error(error, "registrations of %s: ", aor);
    return NULL;
  }
  /* A damaged frame could claim more children than were ever written. */
  if (g_variant_n_children(body) == 0 || g_variant_n_children(body) > STORE_REG_BINDINGS_MAX) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "registrations of %s: %zu bindings, not 1 to %d", aor, g_variant_n_children(body),
                STORE_REG_BINDINGS_MAX);
    return NULL;
  }
  g_variant_iter_init(&iter, body);
  while (g_variant_iter_next(&iter, "(&s&su&s&suxd)", &contact, &instance, &reg_id, &flow_token,
                             &call_id, &cseq, &expires_at, &q)) {
    StoreBinding *b = g_new0(StoreBinding, 1);

    b->contact = g_strdup(contact);
    b->instance = *instance != '\0' ? g_strdup(instance) : NULL;
    b->reg_id = reg_id;
    b->flow_token = *flow_token != '\0' ? g_strdup(flow_token) : NULL;
    b->call_id = g_strdup(call_id);
    b->cseq = cseq;
    b->expires_at = expires_at;
    /* Only floats are written, so a double that is not one is damage. */
    b->q = (float)q;
    g_ptr_array_add(bindings, b);
    if ((double)b->q != q && !isnan(q)) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                  "registrations of %s: binding %u: q is not a float", aor, bindings->len - 1);
      return NULL;
    }
  }
  if (!store_bindings_check(bindings, &local)) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "registrations of %s: %s", aor,
                local->message);
    g_error_free(local);
    return NULL;
  }
  return g_steal_pointer(&bindings);
}

static GVariant *
store_reg_encode(GPtrArray *bindings)
{
  GVariantBuilder builder;

  g_variant_builder_init(&builder, G_VARIANT_TYPE(STORE_REG_BODY_TYPE_V1));
  for (guint i = 0; i < bindings->len; i++) {
    const StoreBinding *b = g_ptr_array_index(bindings, i);

    g_variant_builder_add(&builder, "(ssussuxd)", b->contact,
                          b->instance != NULL ? b->instance : "", b->reg_id,
                          b->flow_token != NULL ? b->flow_token : "", b->call_id, b->cseq,
                          b->expires_at, (double)b->q);
  }
  return store_record_new(STORE_REG_RECORD_VERSION, g_variant_builder_end(&builder));
}

typedef struct {
  const char *aor;
  GPtrArray *bindings;
} StoreRegPut;

/* No change-log entry: bindings are registrar soft state, not credential
 * changes, and nothing tails them. A damaged record is simply replaced: it
 * holds nothing that must be carried over. */
static void
store_reg_put_cb(StoreTxn *txn, gpointer user_data)
{
  const StoreRegPut *put = user_data;
  g_autoptr(GVariant) record = NULL;

  if (put->bindings->len > 0) {
    record = store_reg_encode(put->bindings);
    store_txn_put(txn, STORE_TABLE_REGISTRATIONS, put->aor, record, "writing the registrations");
    return;
  }
  /* Removing what is not there is not an error: the outcome is the same. */
  if (!store_txn_del(txn, STORE_TABLE_REGISTRATIONS, put->aor, "removing the registrations") &&
      txn->rc == MDB_NOTFOUND) {
    g_clear_error(&txn->error);
    txn->rc = MDB_SUCCESS;
  }
}

gboolean
store_reg_put(StoreDb *db, const char *aor, GPtrArray *bindings, GError **error)
{
  StoreRegPut put = {aor, bindings};

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(bindings != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!store_key_check(db, aor, error))
    return FALSE;
  if (!store_bindings_check(bindings, error)) {
    g_prefix_error(error, "registrations of %s: ", aor);
    return FALSE;
  }
  return store_env_write(db->env, store_reg_put_cb, &put, error);
}

GPtrArray *
store_reg_get(StoreDb *db, const char *aor, GError **error)
{
  g_autoptr(GBytes) value = NULL;
  StoreTxn txn;

  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!store_key_check(db, aor, error))
    return NULL;
  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return NULL;
  value = store_txn_get(&txn, STORE_TABLE_REGISTRATIONS, aor, "reading the registrations");
  if (!store_txn_end(&txn, error))
    return NULL;
  if (value == NULL)
    return g_ptr_array_new_with_free_func((GDestroyNotify)store_binding_free);
  return store_reg_decode(aor, value, FALSE, error);
}

GPtrArray *
store_reg_list(StoreDb *db, GError **error)
{
  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);
  return store_list_keys(db, STORE_TABLE_REGISTRATIONS, error);
}

/* ---- change log ------------------------------------------------------ */

void
store_change_free(StoreChange *change)
{
  if (change == NULL)
    return;
  g_free(change->aor);
  g_free(change);
}

static gboolean
store_change_seq_from_key(const MDB_val *k, guint64 *seq, GError **error)
{
  guint64 be;

  if (k->mv_size != sizeof be) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "the change log holds a key of %zu bytes, not %zu", k->mv_size, sizeof be);
    return FALSE;
  }
  memcpy(&be, k->mv_data, sizeof be);
  *seq = GUINT64_FROM_BE(be);
  if (*seq == 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "the change log holds sequence 0");
    return FALSE;
  }
  return TRUE;
}

static StoreChange *
store_change_decode(const MDB_val *k, const MDB_val *v, gboolean strict, GError **error)
{
  g_autoptr(GBytes) value = NULL;
  g_autoptr(GVariant) body = NULL;
  g_autoptr(StoreChange) change = g_new0(StoreChange, 1);
  guint32 kind;

  if (!store_change_seq_from_key(k, &change->seq, error))
    return NULL;
  value = g_bytes_new(v->mv_data, v->mv_size);
  body = store_record_open(value, strict, STORE_CHANGE_RECORD_VERSION, STORE_CHANGE_BODY_TYPE_V1,
                           error);
  if (body == NULL) {
    g_prefix_error(error, "change %" G_GUINT64_FORMAT ": ", change->seq);
    return NULL;
  }
  g_variant_get(body, "(sux)", &change->aor, &kind, &change->time);
  if (*change->aor == '\0' || kind < STORE_CHANGE_CREDENTIAL || kind > STORE_CHANGE_USER) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "change %" G_GUINT64_FORMAT ": no AOR or unknown kind %u", change->seq, kind);
    return NULL;
  }
  change->kind = kind;
  return g_steal_pointer(&change);
}

/* The highest sequence number in @txn, 0 when the log is empty. */
static guint64
store_txn_last_seq(StoreTxn *txn)
{
  MDB_cursor *cursor = NULL;
  MDB_val k, v;
  guint64 seq = 0;
  GError *local = NULL;
  int rc;

  if (!store_txn_ok(txn) ||
      !store_txn_check(txn,
                       mdb_cursor_open(txn->txn, txn->env->dbis[STORE_TABLE_CHANGES], &cursor),
                       "opening the change log"))
    return 0;
  rc = mdb_cursor_get(cursor, &k, &v, MDB_LAST);
  if (rc == MDB_SUCCESS) {
    if (!store_change_seq_from_key(&k, &seq, &local))
      store_txn_fail(txn, local);
  } else if (rc != MDB_NOTFOUND) {
    store_txn_check(txn, rc, "reading the change log");
  }
  mdb_cursor_close(cursor);
  return seq;
}

guint64
store_change_get_last_seq(StoreDb *db, GError **error)
{
  StoreTxn txn;
  guint64 seq;

  g_return_val_if_fail(db != NULL, 0);
  g_return_val_if_fail(error == NULL || *error == NULL, 0);

  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return 0;
  seq = store_txn_last_seq(&txn);
  if (!store_txn_end(&txn, error))
    return 0;
  return seq;
}

GPtrArray *
store_change_list_since(StoreDb *db, guint64 after, guint max, GError **error)
{
  g_autoptr(GPtrArray) changes = g_ptr_array_new_with_free_func((GDestroyNotify)store_change_free);
  MDB_cursor *cursor = NULL;
  guint64 be;
  MDB_val k = {sizeof be, &be};
  MDB_val v;
  StoreTxn txn;
  int rc;

  g_return_val_if_fail(db != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (after == G_MAXUINT64 || max == 0)
    return g_steal_pointer(&changes);
  be = GUINT64_TO_BE(after + 1);
  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return NULL;
  if (store_txn_check(&txn, mdb_cursor_open(txn.txn, db->env->dbis[STORE_TABLE_CHANGES], &cursor),
                      "opening the change log")) {
    /* Big-endian keys sort numerically: one seek, then a sequential read. */
    for (rc = mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE); rc == MDB_SUCCESS;
         rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
      GError *local = NULL;
      StoreChange *change = store_change_decode(&k, &v, FALSE, &local);

      if (change == NULL) {
        store_txn_fail(&txn, local);
        break;
      }
      g_ptr_array_add(changes, change);
      if (changes->len >= max)
        break;
    }
    if (store_txn_ok(&txn) && rc != MDB_SUCCESS && rc != MDB_NOTFOUND)
      store_txn_check(&txn, rc, "reading the change log");
    mdb_cursor_close(cursor);
  }
  if (!store_txn_end(&txn, error))
    return NULL;
  return g_steal_pointer(&changes);
}

/* ---- maintenance ----------------------------------------------------- */

gboolean
store_db_backup(StoreDb *db, const char *path, GError **error)
{
  int fd, rc = MDB_SUCCESS, saved = 0;

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(path != NULL && *path != '\0', FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  /* The copy holds wrapped keys and HA1 values: private from the start. */
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    saved = errno;
    if (saved == EEXIST)
      g_set_error(error, STORE_ERROR, STORE_ERROR_INVALID,
                  "backup file %s already exists; not overwriting it", path);
    else
      g_set_error(error, STORE_ERROR, STORE_ERROR_IO, "cannot create backup file %s: %s", path,
                  g_strerror(saved));
    return FALSE;
  }
  for (guint attempt = 0; attempt < STORE_BEGIN_ATTEMPTS; attempt++) {
    /* The copy runs its own read transaction: hold off resizes meanwhile. */
    g_rw_lock_reader_lock(&db->env->resize_lock);
    rc = mdb_env_copyfd2(db->env->env, fd, MDB_CP_COMPACT);
    g_rw_lock_reader_unlock(&db->env->resize_lock);
    if (rc != MDB_MAP_RESIZED)
      break;
    if (!store_env_adopt_map_size(db->env, error)) {
      close(fd);
      unlink(path);
      return FALSE;
    }
    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0) {
      rc = errno;
      break;
    }
  }
  if (rc == MDB_SUCCESS && fsync(fd) != 0)
    rc = errno;
  if (close(fd) != 0 && rc == MDB_SUCCESS)
    rc = errno;
  if (rc != MDB_SUCCESS) {
    g_autofree char *what =
        g_strdup_printf("backing up the store in %s to %s", db->env->path, path);
    unlink(path);
    return store_error_from_mdb(rc, error, what);
  }
  if (!store_fsync_parent(path, error)) {
    unlink(path);
    return FALSE;
  }
  return TRUE;
}

typedef struct {
  StoreDb *db;
  char *store_key_id;  /* from meta, or NULL */
  StoreMasterKey *key; /* the handle's, or NULL */
  guint64 n_server_held;
} StoreCheck;

typedef gboolean (*StoreCheckFunc)(StoreCheck *check, const MDB_val *k, const MDB_val *v,
                                   GError **error);

static gboolean
store_check_meta(StoreCheck *check, const MDB_val *k, const MDB_val *v, GError **error)
{
  guint32 be;

  if (k->mv_size == strlen(STORE_META_SCHEMA_VERSION) &&
      memcmp(k->mv_data, STORE_META_SCHEMA_VERSION, k->mv_size) == 0) {
    if (v->mv_size != sizeof be) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "malformed schema version");
      return FALSE;
    }
    memcpy(&be, v->mv_data, sizeof be);
    if (GUINT32_FROM_BE(be) != STORE_SCHEMA_VERSION) {
      g_set_error(error, STORE_ERROR, STORE_ERROR_SCHEMA, "schema version %u, expected %u",
                  GUINT32_FROM_BE(be), STORE_SCHEMA_VERSION);
      return FALSE;
    }
  }
  /* The master-key id was validated when it was read for this check. */
  return TRUE;
}

static gboolean
store_check_credential(StoreCheck *check, const MDB_val *k, const MDB_val *v, GError **error)
{
  g_autofree char *aor = store_aor_from_key(k);
  g_autoptr(GBytes) value = NULL;
  g_autoptr(GBytes) plain = NULL;
  g_auto(StoreCredRecord) rec = {0};

  if (aor == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "the key is not an AOR");
    return FALSE;
  }
  value = g_bytes_new(v->mv_data, v->mv_size);
  if (!store_cred_record_decode(aor, value, TRUE, &rec, error))
    return FALSE;
  if (rec.key_kind != STORE_KEY_SERVER_HELD)
    return TRUE;
  check->n_server_held++;
  if (check->store_key_id == NULL || strcmp(rec.key_id, check->store_key_id) != 0) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT,
                "the key of %s is wrapped under master key id %s, not the store's (%s)", aor,
                rec.key_id, check->store_key_id != NULL ? check->store_key_id : "none");
    return FALSE;
  }
  if (check->key == NULL)
    return TRUE;
  plain = store_key_unwrap(check->key, aor, rec.version, rec.key_blob, error);
  return plain != NULL;
}

static gboolean
store_check_user(StoreCheck *check, const MDB_val *k, const MDB_val *v, GError **error)
{
  g_autofree char *aor = store_aor_from_key(k);
  g_autoptr(GBytes) value = NULL;
  g_autoptr(StoreUser) user = NULL;

  if (aor == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "the key is not an AOR");
    return FALSE;
  }
  value = g_bytes_new(v->mv_data, v->mv_size);
  user = store_user_decode(aor, value, TRUE, error);
  return user != NULL;
}

static gboolean
store_check_registration(StoreCheck *check, const MDB_val *k, const MDB_val *v, GError **error)
{
  g_autofree char *aor = store_aor_from_key(k);
  g_autoptr(GBytes) value = NULL;
  g_autoptr(GPtrArray) bindings = NULL;

  if (aor == NULL) {
    g_set_error(error, STORE_ERROR, STORE_ERROR_CORRUPT, "the key is not an AOR");
    return FALSE;
  }
  value = g_bytes_new(v->mv_data, v->mv_size);
  bindings = store_reg_decode(aor, value, TRUE, error);
  return bindings != NULL;
}

static gboolean
store_check_change(StoreCheck *check, const MDB_val *k, const MDB_val *v, GError **error)
{
  g_autoptr(StoreChange) change = store_change_decode(k, v, TRUE, error);

  return change != NULL;
}

/* A printable form of a table key for messages. */
static char *
store_key_describe(StoreTable table, const MDB_val *k)
{
  guint64 be;

  if (table == STORE_TABLE_CHANGES && k->mv_size == sizeof be) {
    memcpy(&be, k->mv_data, sizeof be);
    return g_strdup_printf("%" G_GUINT64_FORMAT, GUINT64_FROM_BE(be));
  }
  return g_utf8_make_valid(k->mv_data, MIN(k->mv_size, (gsize)256));
}

static void
store_check_table(StoreTxn *txn, StoreCheck *check, StoreTable table, StoreCheckFunc func)
{
  MDB_cursor *cursor = NULL;
  MDB_val k, v;
  int rc;

  if (!store_txn_ok(txn) ||
      !store_txn_check(txn, mdb_cursor_open(txn->txn, txn->env->dbis[table], &cursor),
                       "opening a cursor"))
    return;
  while ((rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) == MDB_SUCCESS) {
    GError *local = NULL;

    if (!func(check, &k, &v, &local)) {
      g_autofree char *key = store_key_describe(table, &k);
      g_prefix_error(&local, "table %s, key %s: ", store_table_names[table], key);
      store_txn_fail(txn, local);
      break;
    }
  }
  if (store_txn_ok(txn) && rc != MDB_NOTFOUND) {
    g_autofree char *what = g_strdup_printf("reading table %s", store_table_names[table]);
    store_txn_check(txn, rc, what);
  }
  mdb_cursor_close(cursor);
}

gboolean
store_db_check(StoreDb *db, GError **error)
{
  static const StoreCheckFunc funcs[STORE_TABLE_N] = {
      [STORE_TABLE_META] = store_check_meta,
      [STORE_TABLE_CREDENTIALS] = store_check_credential,
      [STORE_TABLE_USERS] = store_check_user,
      [STORE_TABLE_REGISTRATIONS] = store_check_registration,
      [STORE_TABLE_CHANGES] = store_check_change,
  };
  g_autoptr(StoreMasterKey) key = NULL;
  StoreCheck check = {db, NULL, NULL, 0};
  StoreTxn txn;

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  key = store_db_dup_key(db);
  check.key = key;
  /* One read transaction: a consistent snapshot, while others write. */
  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return FALSE;
  if (store_txn_get_key_id(&txn, &check.store_key_id) && key != NULL &&
      check.store_key_id != NULL && strcmp(key->id, check.store_key_id) != 0)
    store_txn_fail(&txn, g_error_new(STORE_ERROR, STORE_ERROR_KEY,
                                     "master key %s (id %s) is not the key of the store in %s "
                                     "(id %s)",
                                     key->path, key->id, db->env->path, check.store_key_id));
  for (guint i = 0; i < STORE_TABLE_N; i++)
    store_check_table(&txn, &check, i, funcs[i]);
  g_free(check.store_key_id);
  if (!store_txn_end(&txn, error)) {
    g_prefix_error(error, "store in %s: ", db->env->path);
    return FALSE;
  }
  return TRUE;
}

gboolean
store_db_get_stats(StoreDb *db, StoreStats *out, GError **error)
{
  static const struct {
    StoreTable table;
    gsize offset;
  } counts[] = {
      {STORE_TABLE_USERS, G_STRUCT_OFFSET(StoreStats, n_users)},
      {STORE_TABLE_CREDENTIALS, G_STRUCT_OFFSET(StoreStats, n_credentials)},
      {STORE_TABLE_REGISTRATIONS, G_STRUCT_OFFSET(StoreStats, n_registrations)},
      {STORE_TABLE_CHANGES, G_STRUCT_OFFSET(StoreStats, n_changes)},
  };
  MDB_cursor *cursor = NULL;
  MDB_envinfo info;
  MDB_stat st;
  MDB_val k, v;
  StoreTxn txn;
  int rc;

  g_return_val_if_fail(db != NULL, FALSE);
  g_return_val_if_fail(out != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  memset(out, 0, sizeof *out);
  out->schema_version = db->schema_version;
  if (!store_txn_begin(db->env, &txn, FALSE, error))
    return FALSE;
  if (store_txn_check(&txn, mdb_env_info(db->env->env, &info), "reading the store size") &&
      store_txn_check(&txn, mdb_env_stat(db->env->env, &st), "reading the store size")) {
    out->map_size = info.me_mapsize;
    out->map_used = ((guint64)info.me_last_pgno + 1) * st.ms_psize;
  }
  for (guint i = 0; i < G_N_ELEMENTS(counts) && store_txn_ok(&txn); i++) {
    if (store_txn_check(&txn, mdb_stat(txn.txn, db->env->dbis[counts[i].table], &st),
                        "counting records"))
      G_STRUCT_MEMBER(guint64, out, counts[i].offset) = st.ms_entries;
  }
  /* Counted by reading every credential: stats are for operators, not for
   * a hot path. A record that does not decode is left to store_db_check(). */
  if (store_txn_ok(&txn) &&
      store_txn_check(&txn,
                      mdb_cursor_open(txn.txn, db->env->dbis[STORE_TABLE_CREDENTIALS], &cursor),
                      "opening a cursor")) {
    while ((rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) == MDB_SUCCESS) {
      g_autoptr(GBytes) value = g_bytes_new(v.mv_data, v.mv_size);
      g_auto(StoreCredRecord) rec = {0};

      if (store_cred_record_parse(value, FALSE, &rec, NULL) &&
          rec.key_kind == STORE_KEY_SERVER_HELD)
        out->n_server_held++;
    }
    if (rc != MDB_NOTFOUND)
      store_txn_check(&txn, rc, "reading the credentials");
    mdb_cursor_close(cursor);
  }
  out->last_change = store_txn_last_seq(&txn);
  if (!store_txn_end(&txn, error)) {
    memset(out, 0, sizeof *out);
    return FALSE;
  }
  return TRUE;
}
