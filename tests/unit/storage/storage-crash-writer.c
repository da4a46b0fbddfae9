/* The child of /storage/crash/sigkill: commits numbered writes to the store
 * in a loop and reports each sequence number on stdout only after the store
 * said it was committed. Its parent kills it at random moments. */
#define G_LOG_DOMAIN "sipcred-crash-writer"

#include <errno.h>
#include <unistd.h>

#include <glib.h>

#include "storage/store.h"
#include "tests/unit/storage/crash-common.h"

static void
report(const char *line)
{
  gsize len = strlen(line);

  /* One write(2) per line: a line is either in the pipe or not at all. */
  while (write(STDOUT_FILENO, line, len) < 0) {
    if (errno != EINTR)
      _exit(3);
  }
}

static gboolean
write_one(StoreDb *db, guint64 seq, GError **error)
{
  g_autofree char *aor = crash_aor(seq);
  g_autoptr(GBytes) cert = crash_payload_new(seq, 'C');
  g_autoptr(GBytes) pkcs8 = NULL;
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  if (crash_is_keyed(seq)) {
    pkcs8 = crash_pkcs8_new(seq);
    if (!store_cred_put(db, aor, cert, now, now + 3600, STORE_KEY_SERVER_HELD, pkcs8, error))
      return FALSE;
  } else if (!store_cred_put_cert(db, aor, cert, now, now + 3600, error)) {
    return FALSE;
  }
  if (crash_has_user(seq)) {
    g_autofree char *sha256 = NULL;
    g_autofree char *md5 = NULL;
    StoreUser user = {aor, (char *)"example.com", NULL, NULL, STORE_USER_ENABLED};

    crash_ha1(seq, &sha256, &md5);
    user.ha1_sha256 = sha256;
    user.ha1_md5 = md5;
    if (!store_user_put(db, &user, error))
      return FALSE;
  }
  return TRUE;
}

int
main(int argc, char **argv)
{
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(StoreMasterKey) key = NULL;
  g_autoptr(GError) error = NULL;
  guint64 seq;

  if (argc != 4) {
    g_printerr("usage: %s STATE-DIR MASTER-KEY FIRST-SEQ\n", argv[0]);
    return 2;
  }
  seq = g_ascii_strtoull(argv[3], NULL, 10);
  db = store_db_open(argv[1], CRASH_MAP_SIZE, &error);
  if (db != NULL)
    key = store_master_key_load(argv[2], &error);
  if (key != NULL && store_db_set_master_key(db, key, &error))
    report("ready\n");
  while (error == NULL) {
    if (write_one(db, seq, &error)) {
      g_autofree char *line = g_strdup_printf("%" G_GUINT64_FORMAT "\n", seq);
      report(line);
      seq++;
    }
  }
  g_printerr("crash writer: %s\n", error->message);
  return 1;
}
