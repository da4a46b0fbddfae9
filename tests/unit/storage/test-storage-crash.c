/* /storage/crash/sigkill: a writer process is SIGKILLed at random moments;
 * after every kill the store must open cleanly, hold every write the writer
 * reported as committed, intact, and hold no partial record. */
#define G_LOG_DOMAIN "sipcred-test-storage-crash"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "storage/store.h"
#include "tests/unit/storage/crash-common.h"
#include "tests/common/testutil.h"

#define CRASH_KILLS 60 /* the issue asks for at least 50 */
#define CRASH_MIN_KILLS 50
#define CRASH_BUDGET_S 20 /* wall-clock bound once the minimum is reached */
#define CRASH_READY_TIMEOUT_MS 5000

static char *writer_path;

/* Appends what is readable on @fd to @out; FALSE at end of file. With
 * @timeout_ms >= 0, waits at most that long for data. */
static gboolean
read_some(int fd, GString *out, int timeout_ms)
{
  char buf[4096];
  ssize_t n;

  if (timeout_ms >= 0) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int rc;

    do
      rc = poll(&pfd, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc == 0)
      return TRUE;
  }
  do
    n = read(fd, buf, sizeof buf);
  while (n < 0 && errno == EINTR);
  g_assert_cmpint(n, >=, 0);
  if (n == 0)
    return FALSE;
  g_string_append_len(out, buf, n);
  return TRUE;
}

/* Waits until the writer says it has opened the store. */
static void
wait_ready(int fd, GString *out)
{
  gint64 deadline = g_get_monotonic_time() + CRASH_READY_TIMEOUT_MS * 1000;

  while (strstr(out->str, "ready\n") == NULL) {
    int left = (int)((deadline - g_get_monotonic_time()) / 1000);

    if (left <= 0)
      g_error("the crash writer did not open the store within %d ms", CRASH_READY_TIMEOUT_MS);
    if (!read_some(fd, out, left))
      g_error("the crash writer exited before opening the store");
  }
}

static guint
parse_reported(const char *text, GArray *reported)
{
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  guint n = 0;

  for (guint i = 0; lines[i] != NULL; i++) {
    guint64 seq;

    /* The text ends with "\n", so the last piece is empty; a line is
     * written with one write(2) and is never torn. */
    if (lines[i][0] == '\0' || strcmp(lines[i], "ready") == 0)
      continue;
    g_assert_true(g_ascii_string_to_unsigned(lines[i], 10, 1, G_MAXUINT64, &seq, NULL));
    g_array_append_val(reported, seq);
    n++;
  }
  return n;
}

static void
verify_credential(StoreDb *db, const char *aor, guint64 seq)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = store_cred_get(db, aor, &error);
  gsize len;
  const guint8 *p;

  g_assert_no_error(error);
  p = g_bytes_get_data(cred->cert_der, &len);
  if (!crash_payload_check(p, len, seq, 'C'))
    g_error("the certificate of %s is damaged", aor);
  g_assert_cmpuint(cred->version, ==, 1);
  if (crash_is_keyed(seq)) {
    g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
    g_assert_nonnull(cred->pkcs8);
    if (!crash_pkcs8_check(cred->pkcs8, seq))
      g_error("the key of %s is damaged", aor);
  } else {
    g_assert_cmpint(cred->key_kind, ==, STORE_KEY_NONE);
    g_assert_null(cred->pkcs8);
  }
}

static void
verify_user(StoreDb *db, const char *aor, guint64 seq)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreUser) user = store_user_get(db, aor, &error);
  g_autofree char *sha256 = NULL;
  g_autofree char *md5 = NULL;

  g_assert_no_error(error);
  crash_ha1(seq, &sha256, &md5);
  g_assert_cmpstr(user->ha1_sha256, ==, sha256);
  g_assert_cmpstr(user->ha1_md5, ==, md5);
  g_assert_cmpstr(user->realm, ==, "example.com");
}

/* Everything present is intact, everything reported is present, and each
 * record came with exactly one change-log entry. */
static void
verify_store(const char *dir, const char *key_path, GArray *reported)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreDb) db = store_db_open(dir, CRASH_MAP_SIZE, &error);
  g_autoptr(StoreMasterKey) key = NULL;
  g_autoptr(GPtrArray) creds = NULL;
  g_autoptr(GPtrArray) users = NULL;
  g_autoptr(GPtrArray) changes = NULL;
  g_autoptr(GHashTable) cred_seqs = g_hash_table_new(g_int64_hash, g_int64_equal);
  g_autoptr(GHashTable) user_seqs = g_hash_table_new(g_int64_hash, g_int64_equal);
  g_autofree guint64 *seqs = NULL;
  StoreStats stats;

  g_assert_no_error(error);
  g_assert_nonnull(db);
  key = store_master_key_load(key_path, &error);
  g_assert_no_error(error);
  g_assert_true(store_db_set_master_key(db, key, &error));
  g_assert_no_error(error);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);

  creds = store_cred_list(db, &error);
  g_assert_no_error(error);
  seqs = g_new(guint64, creds->len);
  for (guint i = 0; i < creds->len; i++) {
    const char *aor = g_ptr_array_index(creds, i);

    seqs[i] = crash_aor_seq(aor);
    g_assert_cmpuint(seqs[i], !=, 0);
    verify_credential(db, aor, seqs[i]);
    g_hash_table_add(cred_seqs, &seqs[i]);
  }
  users = store_user_list(db, &error);
  g_assert_no_error(error);
  for (guint i = 0; i < users->len; i++) {
    const char *aor = g_ptr_array_index(users, i);
    guint64 seq = crash_aor_seq(aor);

    g_assert_true(crash_has_user(seq));
    verify_user(db, aor, seq);
    /* The user is written after the credential of the same seq. */
    g_assert_true(g_hash_table_contains(cred_seqs, &seq));
    /* cred_seqs owns nothing: its keys point into seqs[], which lives on. */
    g_hash_table_add(user_seqs, g_hash_table_lookup(cred_seqs, &seq));
  }

  for (guint i = 0; i < reported->len; i++) {
    guint64 seq = g_array_index(reported, guint64, i);

    if (!g_hash_table_contains(cred_seqs, &seq))
      g_error("write %" G_GUINT64_FORMAT " was reported as committed but is missing", seq);
    if (crash_has_user(seq) && !g_hash_table_contains(user_seqs, &seq))
      g_error("user of write %" G_GUINT64_FORMAT " was reported as committed but is missing", seq);
  }

  /* A record and its change commit together: one entry per record, and
   * sequence numbers without gaps. */
  g_assert_true(store_db_get_stats(db, &stats, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(stats.n_credentials, ==, creds->len);
  g_assert_cmpuint(stats.n_changes, ==, creds->len + users->len);
  g_assert_cmpuint(stats.last_change, ==, stats.n_changes);
  changes = store_change_list_since(db, 0, G_MAXUINT, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(changes->len, ==, stats.n_changes);
  for (guint i = 0; i < changes->len; i++) {
    StoreChange *c = g_ptr_array_index(changes, i);
    guint64 seq = crash_aor_seq(c->aor);

    g_assert_cmpuint(c->seq, ==, i + 1);
    g_assert_true(
        g_hash_table_contains(c->kind == STORE_CHANGE_USER ? user_seqs : cred_seqs, &seq));
  }
}

static void
test_crash_sigkill(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *tmp = g_dir_make_tmp("sipcred-crash-XXXXXX", &error);
  g_autofree char *state = g_build_filename(tmp, "state", NULL);
  g_autofree char *key_path = g_build_filename(tmp, "master.key", NULL);
  g_autoptr(GArray) reported = g_array_new(FALSE, FALSE, sizeof(guint64));
  gint64 deadline = g_get_monotonic_time() + CRASH_BUDGET_S * G_USEC_PER_SEC;
  guint kills = 0, mid_open = 0;

  g_assert_no_error(error);
  g_assert_true(store_master_key_generate(key_path, &error));
  g_assert_no_error(error);

  /* The time budget only trims kills beyond the minimum: under valgrind the
   * verification is slow, and 50 kills are what the test promises. */
  while (kills < CRASH_KILLS && (kills < CRASH_MIN_KILLS || g_get_monotonic_time() < deadline)) {
    g_autofree char *first = g_strdup_printf("%u", (kills + 1) * 1000000);
    const char *argv[] = {writer_path, state, key_path, first, NULL};
    g_autoptr(GString) out = g_string_new(NULL);
    /* Most kills land in the write loop; some while the writer is still
     * starting, opening the store or growing the map. */
    gboolean early = g_test_rand_int_range(0, 4) == 0;
    guint delay_ms = (guint)g_test_rand_int_range(1, 31);
    GPid pid;
    int out_fd, status;
    guint n;

    g_assert_true(g_spawn_async_with_pipes(NULL, (char **)argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                                           NULL, NULL, &pid, NULL, &out_fd, NULL, &error));
    g_assert_no_error(error);
    if (!early)
      wait_ready(out_fd, out);
    g_usleep(delay_ms * 1000);
    g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_spawn_close_pid(pid);
    /* Anything but our SIGKILL means the writer failed on its own. */
    g_assert_true(WIFSIGNALED(status));
    g_assert_cmpint(WTERMSIG(status), ==, SIGKILL);
    while (read_some(out_fd, out, -1))
      ;
    close(out_fd);
    if (strstr(out->str, "ready\n") == NULL)
      mid_open++;
    n = parse_reported(out->str, reported);
    kills++;
    g_test_message("kill %u after %s%u ms: %u writes reported", kills, early ? "start + " : "",
                   delay_ms, n);
    verify_store(state, key_path, reported);
  }
  g_test_message("%u kills (%u before the store was open), %u writes reported", kills, mid_open,
                 reported->len);
  g_assert_cmpuint(kills, >=, CRASH_MIN_KILLS);
  /* Enough writes were in flight for the kills to mean something. */
  g_assert_cmpuint(reported->len, >=, kills);
  test_util_rm_rf(tmp);
}

int
main(int argc, char **argv)
{
  /* --writer=PATH comes from meson; default: next to this binary. */
  for (int i = 1; i < argc; i++) {
    if (g_str_has_prefix(argv[i], "--writer=")) {
      writer_path = g_strdup(argv[i] + strlen("--writer="));
      memmove(&argv[i], &argv[i + 1], (argc - i) * sizeof *argv);
      argc--;
      break;
    }
  }
  if (writer_path == NULL) {
    g_autofree char *dir = g_path_get_dirname(argv[0]);
    writer_path = g_build_filename(dir, "storage-crash-writer", NULL);
  }
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/storage/crash/sigkill", test_crash_sigkill);
  return g_test_run();
}
