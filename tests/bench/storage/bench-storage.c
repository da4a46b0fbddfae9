/* Durable commits and reads per second through the store API, next to raw
 * LMDB doing the same on the same disk, and next to the reference figures
 * of issue 3. Output format: tests/bench/README.md. */
#define G_LOG_DOMAIN "sipcred-bench-storage"

#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <lmdb.h>

#include "storage/store.h"
#include "tests/common/testutil.h"

/* Issue 3: "LMDB does about 2,700 durable single-key commits/s and about
 * 1.2 M reads/s per core" on this kind of machine. */
#define REFERENCE_COMMITS_PER_S 2700.0
#define REFERENCE_READS_PER_S 1200000.0

#define N_RECORDS 1000
#define CERT_SIZE 700 /* about a 2048-bit RSA certificate */
#define ROUNDS 4

static double opt_seconds = 2.0;

static void
check_mdb(int rc, const char *what)
{
  if (rc != MDB_SUCCESS)
    g_error("%s: %s", what, mdb_strerror(rc));
}

static char *
aor_of(guint i)
{
  return g_strdup_printf("sip:user%06u@example.com", i);
}

static GBytes *
cert_of(guint i)
{
  guint8 *buf = g_malloc(CERT_SIZE);

  for (gsize j = 0; j < CERT_SIZE; j++)
    buf[j] = (guint8)(i * 31 + j * 7);
  return g_bytes_new_take(buf, CERT_SIZE);
}

typedef gboolean (*StepFunc)(gpointer data, guint i);

typedef struct {
  guint64 calls;
  gint64 usec;
} Tally;

/* Runs @step for @seconds, adding to @tally. */
static void
run_timed(StepFunc step, gpointer data, double seconds, Tally *tally)
{
  gint64 start = g_get_monotonic_time();
  gint64 end = start + (gint64)(seconds * G_USEC_PER_SEC);
  gint64 now = start;
  guint64 n = 0;

  while (now < end) {
    /* Check the clock every 64 calls: reads are fast. */
    for (guint k = 0; k < 64; k++, n++) {
      if (!step(data, (guint)(tally->calls + n)))
        g_error("benchmark step %" G_GUINT64_FORMAT " failed", tally->calls + n);
    }
    now = g_get_monotonic_time();
  }
  tally->calls += n;
  tally->usec += now - start;
}

/* Calls per second of @a and @b, measured in alternating rounds so that
 * other load on the machine hits both alike. */
static void
run_pair(StepFunc a, gpointer a_data, StepFunc b, gpointer b_data, double *a_rate, double *b_rate)
{
  Tally ta = {0}, tb = {0};

  for (guint round = 0; round < ROUNDS; round++) {
    run_timed(a, a_data, opt_seconds / ROUNDS, &ta);
    run_timed(b, b_data, opt_seconds / ROUNDS, &tb);
  }
  *a_rate = (double)ta.calls * G_USEC_PER_SEC / (double)ta.usec;
  *b_rate = (double)tb.calls * G_USEC_PER_SEC / (double)tb.usec;
}

/* ---- raw LMDB, as the reference does it ---- */

typedef struct {
  MDB_env *env;
  MDB_dbi dbi;
  GBytes *value;
  GRand *rand;
} RawBench;

static void
raw_open(RawBench *raw, const char *dir)
{
  MDB_txn *txn;

  if (g_mkdir_with_parents(dir, 0700) != 0)
    g_error("cannot create %s", dir);
  check_mdb(mdb_env_create(&raw->env), "mdb_env_create");
  check_mdb(mdb_env_set_mapsize(raw->env, 64 << 20), "mdb_env_set_mapsize");
  /* Default flags: every commit is synced, as in the store. */
  check_mdb(mdb_env_open(raw->env, dir, MDB_NOTLS, 0600), "mdb_env_open");
  check_mdb(mdb_txn_begin(raw->env, NULL, 0, &txn), "mdb_txn_begin");
  check_mdb(mdb_dbi_open(txn, NULL, 0, &raw->dbi), "mdb_dbi_open");
  check_mdb(mdb_txn_commit(txn), "mdb_txn_commit");
}

static gboolean
raw_commit_step(gpointer data, guint i)
{
  RawBench *raw = data;
  g_autofree char *aor = aor_of(i % N_RECORDS);
  MDB_val k = {strlen(aor), aor};
  MDB_val v = {g_bytes_get_size(raw->value), (void *)g_bytes_get_data(raw->value, NULL)};
  MDB_txn *txn;

  if (mdb_txn_begin(raw->env, NULL, 0, &txn) != MDB_SUCCESS)
    return FALSE;
  if (mdb_put(txn, raw->dbi, &k, &v, 0) != MDB_SUCCESS) {
    mdb_txn_abort(txn);
    return FALSE;
  }
  return mdb_txn_commit(txn) == MDB_SUCCESS;
}

static gboolean
raw_read_step(gpointer data, guint i)
{
  RawBench *raw = data;
  char aor[64];
  MDB_val k, v;
  MDB_txn *txn;
  int rc;

  /* One read transaction per read, as store_cred_get() has: each read
   * sees the latest commit. */
  g_snprintf(aor, sizeof aor, "sip:user%06u@example.com",
             (guint)g_rand_int_range(raw->rand, 0, N_RECORDS));
  k = (MDB_val){strlen(aor), aor};
  if (mdb_txn_begin(raw->env, NULL, MDB_RDONLY, &txn) != MDB_SUCCESS)
    return FALSE;
  rc = mdb_get(txn, raw->dbi, &k, &v);
  mdb_txn_abort(txn);
  return rc == MDB_SUCCESS && v.mv_size == CERT_SIZE;
}

/* ---- the store ---- */

typedef struct {
  StoreDb *db;
  GBytes *cert;
  GRand *rand;
} StoreBench;

static gboolean
store_commit_step(gpointer data, guint i)
{
  StoreBench *sb = data;
  g_autofree char *aor = aor_of(i % N_RECORDS);

  return store_cred_put_cert(sb->db, aor, sb->cert, 1000, 2000, NULL);
}

static gboolean
store_read_step(gpointer data, guint i)
{
  StoreBench *sb = data;
  char aor[64];
  g_autoptr(StoreCred) cred = NULL;

  g_snprintf(aor, sizeof aor, "sip:user%06u@example.com",
             (guint)g_rand_int_range(sb->rand, 0, N_RECORDS));
  cred = store_cred_get(sb->db, aor, NULL);
  return cred != NULL && g_bytes_get_size(cred->cert_der) == CERT_SIZE;
}

static void
populate(RawBench *raw, StoreBench *sb)
{
  g_autoptr(GError) error = NULL;
  MDB_txn *txn;

  check_mdb(mdb_txn_begin(raw->env, NULL, 0, &txn), "mdb_txn_begin");
  for (guint i = 0; i < N_RECORDS; i++) {
    g_autofree char *aor = aor_of(i);
    MDB_val k = {strlen(aor), aor};
    MDB_val v = {g_bytes_get_size(raw->value), (void *)g_bytes_get_data(raw->value, NULL)};
    check_mdb(mdb_put(txn, raw->dbi, &k, &v, 0), "mdb_put");
  }
  check_mdb(mdb_txn_commit(txn), "mdb_txn_commit");
  for (guint i = 0; i < N_RECORDS; i++) {
    g_autofree char *aor = aor_of(i);
    if (!store_cred_put_cert(sb->db, aor, sb->cert, 1000, 2000, &error))
      g_error("%s", error->message);
  }
}

static void
report(const char *what, double store, double here, double reference)
{
  g_print("%s store=%.0f lmdb_here=%.0f reference=%.0f ratio_to_reference=%.2f "
          "ratio_to_lmdb_here=%.2f\n",
          what, store, here, reference, store / reference, store / here);
}

int
main(int argc, char **argv)
{
  const GOptionEntry entries[] = {
      {"seconds", 's', 0, G_OPTION_ARG_DOUBLE, &opt_seconds, "Seconds per measurement (2)", "S"},
      {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- storage benchmark");
  g_autoptr(GError) error = NULL;
  g_autofree char *tmp = NULL;
  g_autofree char *raw_dir = NULL;
  g_autofree char *store_dir = NULL;
  RawBench raw = {0};
  StoreBench sb = {0};
  double raw_commits, raw_reads, store_commits, store_reads;

  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || opt_seconds <= 0) {
    g_printerr("%s\n", error != NULL ? error->message : "--seconds must be positive");
    return 2;
  }
  /* In $TMPDIR (default /tmp): point it at the disk to measure. A tmpfs
   * makes fsync free and the commit figures meaningless. */
  tmp = g_dir_make_tmp("sipcred-bench-XXXXXX", &error);
  if (tmp == NULL)
    g_error("%s", error->message);
  raw_dir = g_build_filename(tmp, "lmdb", NULL);
  store_dir = g_build_filename(tmp, "store", NULL);

  raw.value = cert_of(1);
  raw.rand = g_rand_new_with_seed(1);
  raw_open(&raw, raw_dir);
  sb.cert = cert_of(1);
  sb.rand = g_rand_new_with_seed(1);
  sb.db = store_db_open(store_dir, 0, &error);
  if (sb.db == NULL)
    g_error("%s", error->message);

  g_print("# sipcred storage benchmark: %u records of %u bytes, %.1f s per figure "
          "(%u alternating rounds), in %s\n",
          N_RECORDS, CERT_SIZE, opt_seconds, ROUNDS, tmp);
  g_print("# commits: one durable write transaction per call (store_cred_put_cert: "
          "record + change log; lmdb: one mdb_put)\n");
  g_print("# reads: one read transaction per call, random keys, one thread "
          "(store_cred_get: copy + decode; lmdb: mdb_get)\n");
  /* Every key exists before timing: commits replace, reads always hit. */
  populate(&raw, &sb);
  run_pair(raw_commit_step, &raw, store_commit_step, &sb, &raw_commits, &store_commits);
  run_pair(raw_read_step, &raw, store_read_step, &sb, &raw_reads, &store_reads);
  report("commits_per_s", store_commits, raw_commits, REFERENCE_COMMITS_PER_S);
  report("reads_per_s", store_reads, raw_reads, REFERENCE_READS_PER_S);

  store_db_free(sb.db);
  mdb_env_close(raw.env);
  g_rand_free(raw.rand);
  g_rand_free(sb.rand);
  g_bytes_unref(raw.value);
  g_bytes_unref(sb.cert);
  test_util_rm_rf(tmp);
  return 0;
}
