#define G_LOG_DOMAIN "sipcred-test-storage"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <lmdb.h>

#include "storage/store-private.h"
#include "storage/store.h"

#define TINY_MAP (64 * 1024)

typedef struct {
  char *tmp;   /* from g_dir_make_tmp */
  char *state; /* tmp/state: created by the store itself */
} Fixture;

static void
rm_rf(const char *path)
{
  GDir *dir = g_dir_open(path, 0, NULL);

  if (dir != NULL) {
    const char *name;
    while ((name = g_dir_read_name(dir)) != NULL) {
      g_autofree char *child = g_build_filename(path, name, NULL);
      rm_rf(child);
    }
    g_dir_close(dir);
    g_rmdir(path);
  } else {
    g_unlink(path);
  }
}

static void
fixture_setup(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;

  fx->tmp = g_dir_make_tmp("sipcred-store-XXXXXX", &error);
  g_assert_no_error(error);
  fx->state = g_build_filename(fx->tmp, "state", NULL);
}

static void
fixture_teardown(Fixture *fx, gconstpointer data)
{
  rm_rf(fx->tmp);
  g_free(fx->tmp);
  g_free(fx->state);
}

static GBytes *
fake_der(guint seed, gsize len)
{
  guint8 *buf = g_malloc(len);

  /* Not a certificate: storage treats the DER as opaque bytes. */
  for (gsize i = 0; i < len; i++)
    buf[i] = (guint8)(seed * 31 + i * 7);
  return g_bytes_new_take(buf, len);
}

static StoreDb *
open_db(const char *dir, guint64 map_size)
{
  g_autoptr(GError) error = NULL;
  StoreDb *db = store_db_open(dir, map_size, &error);

  g_assert_no_error(error);
  g_assert_nonnull(db);
  return db;
}

static void
put_cert(StoreDb *db, const char *aor, GBytes *der, gint64 nb, gint64 na)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(store_cred_put_cert(db, aor, der, nb, na, &error));
  g_assert_no_error(error);
}

/* Raw LMDB access, the way a damaged or future store would look. */
static void
raw_put(const char *dir, const char *table, const void *key, gsize klen, const void *val,
        gsize vlen)
{
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val k = {klen, (void *)key};
  MDB_val v = {vlen, (void *)val};

  g_assert_cmpint(mdb_env_create(&env), ==, 0);
  g_assert_cmpint(mdb_env_set_maxdbs(env, 16), ==, 0);
  g_assert_cmpint(mdb_env_open(env, dir, 0, 0600), ==, 0);
  g_assert_cmpint(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
  g_assert_cmpint(mdb_dbi_open(txn, table, 0, &dbi), ==, 0);
  g_assert_cmpint(mdb_put(txn, dbi, &k, &v, 0), ==, 0);
  g_assert_cmpint(mdb_txn_commit(txn), ==, 0);
  mdb_env_close(env);
}

/* ---- credentials ---- */

static void
test_cred_put_get(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 700);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  gint64 before = g_get_real_time() / G_USEC_PER_SEC;

  put_cert(db, "sip:alice@example.com", der, 1000, 2000);
  cred = store_cred_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_nonnull(cred);
  g_assert_cmpstr(cred->aor, ==, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_cmpint(cred->not_before, ==, 1000);
  g_assert_cmpint(cred->not_after, ==, 2000);
  g_assert_cmpuint(cred->version, ==, 1);
  g_assert_nonnull(cred->etag);
  g_assert_cmpuint(strlen(cred->etag), >=, 16);
  g_assert_cmpint(cred->updated, >=, before);
  g_assert_cmpint(cred->updated, <=, g_get_real_time() / G_USEC_PER_SEC);
}

static void
test_cred_replace(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der1 = fake_der(1, 600);
  g_autoptr(GBytes) der2 = fake_der(2, 650);
  g_autoptr(StoreCred) first = NULL;
  g_autoptr(StoreCred) second = NULL;
  g_autoptr(StoreCred) third = NULL;

  put_cert(db, "sip:alice@example.com", der1, 1, 2);
  first = store_cred_get(db, "sip:alice@example.com", NULL);
  put_cert(db, "sip:alice@example.com", der2, 3, 4);
  second = store_cred_get(db, "sip:alice@example.com", NULL);
  /* Same bytes again still count as a new write. */
  put_cert(db, "sip:alice@example.com", der2, 3, 4);
  third = store_cred_get(db, "sip:alice@example.com", NULL);

  g_assert_nonnull(first);
  g_assert_nonnull(second);
  g_assert_nonnull(third);
  g_assert_cmpuint(first->version, ==, 1);
  g_assert_cmpuint(second->version, ==, 2);
  g_assert_cmpuint(third->version, ==, 3);
  g_assert_cmpstr(first->etag, !=, second->etag);
  g_assert_cmpstr(second->etag, !=, third->etag);
  g_assert_true(g_bytes_equal(second->cert_der, der2));
  g_assert_cmpint(second->not_before, ==, 3);
  g_assert_cmpint(second->not_after, ==, 4);
}

static void
test_cred_delete(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(StoreCred) again = NULL;

  put_cert(db, "sip:alice@example.com", der, 1, 2);
  put_cert(db, "sip:bob@example.com", der, 1, 2);
  g_assert_true(store_cred_delete(db, "sip:alice@example.com", &error));
  g_assert_no_error(error);

  cred = store_cred_get(db, "sip:alice@example.com", &error);
  g_assert_null(cred);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);

  /* Deleting twice says there was nothing. */
  g_assert_false(store_cred_delete(db, "sip:alice@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);

  /* The other AOR is untouched, and a new put starts over at version 1. */
  g_assert_nonnull((again = store_cred_get(db, "sip:bob@example.com", &error)));
  g_assert_no_error(error);
  put_cert(db, "sip:alice@example.com", der, 1, 2);
  g_clear_pointer(&cred, store_cred_free);
  cred = store_cred_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(cred->version, ==, 1);
}

static void
test_cred_list_order(Fixture *fx, gconstpointer data)
{
  const char *aors[] = {"sip:zed@example.com", "sip:alice@example.com", "sip:bob@b.example",
                        "sip:al@example.com", "sip:bob@a.example"};
  const char *sorted[] = {"sip:al@example.com", "sip:alice@example.com", "sip:bob@a.example",
                          "sip:bob@b.example", "sip:zed@example.com"};
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;

  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
  g_clear_pointer(&list, g_ptr_array_unref);

  for (guint i = 0; i < G_N_ELEMENTS(aors); i++)
    put_cert(db, aors[i], der, 1, 2);
  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, G_N_ELEMENTS(sorted));
  for (guint i = 0; i < G_N_ELEMENTS(sorted); i++)
    g_assert_cmpstr(g_ptr_array_index(list, i), ==, sorted[i]);
}

static void
test_cred_not_found(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;

  cred = store_cred_get(db, "sip:nobody@example.com", &error);
  g_assert_null(cred);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "sip:nobody@example.com"));
}

static void
test_cred_invalid(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GBytes) empty = g_bytes_new(NULL, 0);
  g_autoptr(GBytes) huge = fake_der(1, STORE_CERT_MAX_SIZE + 1);
  g_autofree char *long_aor = g_strnfill(600, 'a');
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) list = NULL;

  g_assert_false(store_cred_put_cert(db, "", der, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, long_aor, der, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, "sip:\xff@example.com", der, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, "sip:a@example.com", empty, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, "sip:a@example.com", huge, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, "sip:a@example.com", der, 5, 4, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);

  /* Nothing was stored by the refused calls. */
  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
}

static void
test_cred_corrupt(Fixture *fx, gconstpointer data)
{
  static const char garbage[] = "\x01\x02not a record at all";
  g_autoptr(GVariant) wrong = NULL;
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  StoreDb *db;

  db = open_db(fx->state, 0);
  put_cert(db, "sip:good@example.com", der, 1, 2);
  store_db_free(db);

  raw_put(fx->state, STORE_DBI_CREDENTIALS, "sip:bad@example.com", 19, garbage, sizeof garbage);
  /* Well-formed envelope, unknown record format. */
  wrong = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)77, g_variant_new_string("from the future")));
  raw_put(fx->state, STORE_DBI_CREDENTIALS, "sip:future@example.com", 22,
          g_variant_get_data(wrong), g_variant_get_size(wrong));
  /* Valid format number, wrong body type. */
  g_clear_pointer(&wrong, g_variant_unref);
  wrong = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)STORE_CRED_RECORD_VERSION, g_variant_new_uint32(5)));
  raw_put(fx->state, STORE_DBI_CREDENTIALS, "sip:typed@example.com", 21, g_variant_get_data(wrong),
          g_variant_get_size(wrong));
  /* A stray user record that is valid GVariant but holds a non-hex HA1. */
  g_clear_pointer(&wrong, g_variant_unref);
  wrong = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)STORE_USER_RECORD_VERSION,
                    g_variant_new("(sssu)", "example.com", "nothex", "nothex", (guint32)1)));
  raw_put(fx->state, STORE_DBI_USERS, "sip:u@example.com", 17, g_variant_get_data(wrong),
          g_variant_get_size(wrong));

  db = open_db(fx->state, 0);
  const char *bad[] = {"sip:bad@example.com", "sip:future@example.com", "sip:typed@example.com"};
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    cred = store_cred_get(db, bad[i], &error);
    g_assert_null(cred);
    g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
    g_clear_error(&error);
  }
  g_assert_null(store_user_get(db, "sip:u@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_clear_error(&error);

  /* A damaged record is not silently overwritten, but it can be deleted. */
  g_assert_false(store_cred_put_cert(db, "sip:bad@example.com", der, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_clear_error(&error);
  g_assert_true(store_cred_delete(db, "sip:bad@example.com", &error));
  g_assert_no_error(error);
  put_cert(db, "sip:bad@example.com", der, 1, 2);

  /* Good records are unaffected. */
  cred = store_cred_get(db, "sip:good@example.com", &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  store_db_free(db);
}

/* ---- users ---- */

#define HA1_SHA256 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HA1_MD5 "0123456789abcdef0123456789abcdef"

static void
test_user_put_get(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreUser) got = NULL;
  g_autoptr(StoreUser) replaced = NULL;
  StoreUser user = {
      .aor = (char *)"sip:alice@example.com",
      .realm = (char *)"example.com",
      .ha1_sha256 = (char *)HA1_SHA256,
      .ha1_md5 = (char *)HA1_MD5,
      .flags = STORE_USER_ENABLED | STORE_USER_MAY_GENERATE,
  };

  g_assert_true(store_user_put(db, &user, &error));
  g_assert_no_error(error);
  got = store_user_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(got->aor, ==, user.aor);
  g_assert_cmpstr(got->realm, ==, "example.com");
  g_assert_cmpstr(got->ha1_sha256, ==, HA1_SHA256);
  g_assert_cmpstr(got->ha1_md5, ==, HA1_MD5);
  g_assert_cmpuint(got->flags, ==, STORE_USER_ENABLED | STORE_USER_MAY_GENERATE);

  user.realm = (char *)"other realm";
  user.flags = 0;
  g_assert_true(store_user_put(db, &user, &error));
  replaced = store_user_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(replaced->realm, ==, "other realm");
  g_assert_cmpuint(replaced->flags, ==, 0);

  g_assert_null(store_user_get(db, "sip:bob@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
}

static void
test_user_list_delete(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) list = NULL;
  const char *aors[] = {"sip:carol@example.com", "sip:alice@example.com", "sip:bob@example.com"};

  for (guint i = 0; i < G_N_ELEMENTS(aors); i++) {
    StoreUser user = {(char *)aors[i], (char *)"example.com", (char *)HA1_SHA256, (char *)HA1_MD5,
                      STORE_USER_ENABLED};
    g_assert_true(store_user_put(db, &user, &error));
    g_assert_no_error(error);
  }
  list = store_user_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 3);
  g_assert_cmpstr(g_ptr_array_index(list, 0), ==, "sip:alice@example.com");
  g_assert_cmpstr(g_ptr_array_index(list, 1), ==, "sip:bob@example.com");
  g_assert_cmpstr(g_ptr_array_index(list, 2), ==, "sip:carol@example.com");
  g_clear_pointer(&list, g_ptr_array_unref);

  g_assert_true(store_user_delete(db, "sip:bob@example.com", &error));
  g_assert_no_error(error);
  g_assert_false(store_user_delete(db, "sip:bob@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);

  list = store_user_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 2);
  g_assert_cmpstr(g_ptr_array_index(list, 0), ==, "sip:alice@example.com");
  g_assert_cmpstr(g_ptr_array_index(list, 1), ==, "sip:carol@example.com");

  /* Users and credentials are separate tables. */
  g_clear_pointer(&list, g_ptr_array_unref);
  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
}

static void
test_user_ha1_validation(Fixture *fx, gconstpointer data)
{
  static const struct {
    const char *sha256;
    const char *md5;
    const char *realm;
    guint32 flags;
  } bad[] = {
      /* upper case */
      {"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", HA1_MD5, "example.com",
       1},
      {HA1_SHA256, "0123456789ABCDEF0123456789abcdef", "example.com", 1},
      /* wrong lengths */
      {"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde", HA1_MD5, "example.com",
       1},
      {HA1_SHA256, "0123456789abcdef0123456789abcdef0", "example.com", 1},
      /* swapped */
      {HA1_MD5, HA1_SHA256, "example.com", 1},
      /* not hex */
      {"g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", HA1_MD5, "example.com",
       1},
      {NULL, HA1_MD5, "example.com", 1},
      {HA1_SHA256, NULL, "example.com", 1},
      /* realm and flags */
      {HA1_SHA256, HA1_MD5, "", 1},
      {HA1_SHA256, HA1_MD5, NULL, 1},
      {HA1_SHA256, HA1_MD5, "exa\nmple", 1},
      {HA1_SHA256, HA1_MD5, "example.com", 1u << 7},
  };
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;

  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    StoreUser user = {(char *)"sip:alice@example.com", (char *)bad[i].realm, (char *)bad[i].sha256,
                      (char *)bad[i].md5, bad[i].flags};

    g_test_message("case %u", i);
    g_assert_false(store_user_put(db, &user, &error));
    g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
    /* Error messages may end up in logs: they never quote the secret. */
    if (bad[i].sha256 != NULL)
      g_assert_null(strstr(error->message, bad[i].sha256));
    if (bad[i].md5 != NULL)
      g_assert_null(strstr(error->message, bad[i].md5));
    g_clear_error(&error);
  }
  list = store_user_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
}

/* ---- the environment ---- */

static void
test_db_reopen(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(3, 300);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) before = NULL;
  g_autoptr(StoreCred) after = NULL;
  g_autoptr(StoreUser) user = NULL;
  StoreUser u = {(char *)"sip:alice@example.com", (char *)"example.com", (char *)HA1_SHA256,
                 (char *)HA1_MD5, STORE_USER_ENABLED};
  StoreDb *db;

  db = open_db(fx->state, 0);
  g_assert_cmpuint(store_db_get_schema_version(db), ==, STORE_SCHEMA_VERSION);
  put_cert(db, "sip:alice@example.com", der, 10, 20);
  g_assert_true(store_user_put(db, &u, &error));
  before = store_cred_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  store_db_free(db);

  db = open_db(fx->state, 0);
  g_assert_cmpuint(store_db_get_schema_version(db), ==, STORE_SCHEMA_VERSION);
  after = store_cred_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(after->cert_der, der));
  g_assert_cmpuint(after->version, ==, before->version);
  g_assert_cmpstr(after->etag, ==, before->etag);
  g_assert_cmpint(after->updated, ==, before->updated);
  user = store_user_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(user->ha1_sha256, ==, HA1_SHA256);
  store_db_free(db);
}

static void
test_db_schema_newer(Fixture *fx, gconstpointer data)
{
  guint32 be = GUINT32_TO_BE(STORE_SCHEMA_VERSION + 98);
  g_autoptr(GBytes) der = fake_der(3, 300);
  g_autoptr(GError) error = NULL;
  g_autofree char *newer = g_strdup_printf("%u", STORE_SCHEMA_VERSION + 98);
  g_autofree char *ours = g_strdup_printf("%u", STORE_SCHEMA_VERSION);
  StoreDb *db;

  db = open_db(fx->state, 0);
  put_cert(db, "sip:alice@example.com", der, 10, 20);
  store_db_free(db);

  raw_put(fx->state, STORE_DBI_META, STORE_META_SCHEMA_VERSION, strlen(STORE_META_SCHEMA_VERSION),
          &be, sizeof be);
  db = store_db_open(fx->state, 0, &error);
  g_assert_null(db);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_SCHEMA);
  g_assert_nonnull(strstr(error->message, newer));
  g_assert_nonnull(strstr(error->message, ours));
  g_clear_error(&error);

  /* Refusing wrote nothing: the version is still the newer one. */
  db = store_db_open(fx->state, 0, &error);
  g_assert_null(db);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_SCHEMA);
}

static void
test_db_schema_garbage(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  StoreDb *db;

  store_db_free(open_db(fx->state, 0));
  raw_put(fx->state, STORE_DBI_META, STORE_META_SCHEMA_VERSION, strlen(STORE_META_SCHEMA_VERSION),
          "x", 1);
  db = store_db_open(fx->state, 0, &error);
  g_assert_null(db);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
}

static void
check_many(StoreDb *db, guint n, gsize der_len)
{
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;

  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, >=, n);
  for (guint i = 0; i < n; i++) {
    g_autofree char *aor = g_strdup_printf("sip:user%04u@example.com", i);
    g_autoptr(GBytes) der = fake_der(i, der_len);
    g_autoptr(StoreCred) cred = store_cred_get(db, aor, &error);

    g_assert_no_error(error);
    g_assert_true(g_bytes_equal(cred->cert_der, der));
  }
}

static void
put_many(StoreDb *db, guint n, gsize der_len)
{
  for (guint i = 0; i < n; i++) {
    g_autofree char *aor = g_strdup_printf("sip:user%04u@example.com", i);
    g_autoptr(GBytes) der = fake_der(i, der_len);
    put_cert(db, aor, der, i, i + 1);
  }
}

static void
test_db_map_growth(Fixture *fx, gconstpointer data)
{
  g_autofree char *file = g_build_filename(fx->state, "data.mdb", NULL);
  g_autoptr(GBytes) big = fake_der(9, 200 * 1024);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  struct stat st;
  StoreDb *db;

  db = open_db(fx->state, TINY_MAP);
  put_many(db, 200, 2000);
  /* One record bigger than the whole initial map needs several doublings
   * within a single write. */
  put_cert(db, "sip:big@example.com", big, 1, 2);
  check_many(db, 200, 2000);
  store_db_free(db);

  g_assert_cmpint(g_stat(file, &st), ==, 0);
  g_assert_cmpint(st.st_size, >, 4 * TINY_MAP);

  /* Reopening with the tiny size keeps the grown map and the data. */
  db = open_db(fx->state, TINY_MAP);
  check_many(db, 200, 2000);
  cred = store_cred_get(db, "sip:big@example.com", &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(cred->cert_der, big));
  store_db_free(db);
}

static void
test_db_modes(Fixture *fx, gconstpointer data)
{
  g_autofree char *nested = g_build_filename(fx->state, "deeper", NULL);
  g_autofree char *loose = g_build_filename(fx->tmp, "loose", NULL);
  const char *files[] = {"data.mdb", "lock.mdb"};
  struct stat st;
  StoreDb *db;
  mode_t old_umask = umask(0);

  /* Even with a permissive umask. */
  db = open_db(nested, 0);
  umask(old_umask);
  store_db_free(db);

  g_assert_cmpint(g_stat(fx->state, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0700);
  g_assert_cmpint(g_stat(nested, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0700);
  for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
    g_autofree char *path = g_build_filename(nested, files[i], NULL);
    g_assert_cmpint(g_stat(path, &st), ==, 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0600);
  }

  /* An existing directory others can read is restricted. */
  g_assert_cmpint(g_mkdir(loose, 0755), ==, 0);
  g_assert_cmpint(g_chmod(loose, 0755), ==, 0);
  store_db_free(open_db(loose, 0));
  g_assert_cmpint(g_stat(loose, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0700);
}

static void
test_db_open_errors(Fixture *fx, gconstpointer data)
{
  g_autofree char *file = g_build_filename(fx->tmp, "plain-file", NULL);
  g_autoptr(GError) error = NULL;
  StoreDb *db;

  g_assert_true(g_file_set_contents(file, "x", 1, NULL));
  db = store_db_open(file, 0, &error);
  g_assert_null(db);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_IO);
  g_assert_nonnull(strstr(error->message, file));
}

static void
test_db_two_handles(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) daemon = open_db(fx->state, 0);
  g_autoptr(StoreDb) cli = open_db(fx->state, TINY_MAP);
  g_autoptr(GBytes) der = fake_der(5, 500);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) seen = NULL;
  g_autoptr(StoreUser) user = NULL;
  StoreUser u = {(char *)"sip:bob@example.com", (char *)"example.com", (char *)HA1_SHA256,
                 (char *)HA1_MD5, STORE_USER_ENABLED};

  put_cert(cli, "sip:alice@example.com", der, 1, 2);
  seen = store_cred_get(daemon, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(seen->cert_der, der));

  g_assert_true(store_user_put(daemon, &u, &error));
  user = store_user_get(cli, "sip:bob@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(user->realm, ==, "example.com");

  g_assert_true(store_cred_delete(daemon, "sip:alice@example.com", &error));
  g_assert_null(store_cred_get(cli, "sip:alice@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);

  /* Closing one handle leaves the other working. */
  g_clear_pointer(&cli, store_db_free);
  put_cert(daemon, "sip:carol@example.com", der, 1, 2);
  g_clear_pointer(&seen, store_cred_free);
  seen = store_cred_get(daemon, "sip:carol@example.com", &error);
  g_assert_no_error(error);
}

static const char *test_argv0;

/* The child half of /storage/db/two-processes: another process (the CLI)
 * reads what the parent wrote and writes enough to grow the map. Runs
 * without GTest; any failure exits non-zero. */
static int
two_processes_child(const char *dir)
{
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(StoreCred) seen = NULL;
  g_autoptr(GError) error = NULL;

  db = store_db_open(dir, TINY_MAP, &error);
  if (db != NULL)
    seen = store_cred_get(db, "sip:parent@example.com", &error);
  for (guint i = 0; seen != NULL && error == NULL && i < 150; i++) {
    g_autofree char *aor = g_strdup_printf("sip:user%04u@example.com", i);
    g_autoptr(GBytes) der = fake_der(i, 2000);
    store_cred_put_cert(db, aor, der, i, i + 1, &error);
  }
  if (error != NULL) {
    g_printerr("child: %s\n", error->message);
    return 1;
  }
  return 0;
}

static void
test_db_two_processes(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, TINY_MAP);
  g_autoptr(GBytes) der = fake_der(7, 100);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  const char *child_argv[] = {test_argv0, "--two-processes-child", fx->state, NULL};
  int status = -1;

  put_cert(db, "sip:parent@example.com", der, 1, 2);
  /* A real second process, not a fork: it has its own LMDB environment. */
  g_assert_true(g_spawn_sync(NULL, (char **)child_argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, NULL,
                             NULL, &status, &error));
  g_assert_no_error(error);
  g_assert_true(g_spawn_check_wait_status(status, &error));
  g_assert_no_error(error);

  /* Our map is still the tiny one: reading must adopt the child's size. */
  check_many(db, 150, 2000);
  put_cert(db, "sip:parent@example.com", der, 3, 4);
  cred = store_cred_get(db, "sip:parent@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(cred->version, ==, 2);
}

int
main(int argc, char **argv)
{
  if (argc == 3 && strcmp(argv[1], "--two-processes-child") == 0)
    return two_processes_child(argv[2]);
  test_argv0 = argv[0];
  g_test_init(&argc, &argv, NULL);

#define ADD(path, fn) g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  ADD("/storage/cred/put-get", test_cred_put_get);
  ADD("/storage/cred/replace", test_cred_replace);
  ADD("/storage/cred/delete", test_cred_delete);
  ADD("/storage/cred/list-order", test_cred_list_order);
  ADD("/storage/cred/not-found", test_cred_not_found);
  ADD("/storage/cred/invalid", test_cred_invalid);
  ADD("/storage/cred/corrupt", test_cred_corrupt);
  ADD("/storage/user/put-get", test_user_put_get);
  ADD("/storage/user/list-delete", test_user_list_delete);
  ADD("/storage/user/ha1-validation", test_user_ha1_validation);
  ADD("/storage/db/reopen", test_db_reopen);
  ADD("/storage/db/schema-newer", test_db_schema_newer);
  ADD("/storage/db/schema-garbage", test_db_schema_garbage);
  ADD("/storage/db/map-growth", test_db_map_growth);
  ADD("/storage/db/modes", test_db_modes);
  ADD("/storage/db/open-errors", test_db_open_errors);
  ADD("/storage/db/two-handles", test_db_two_handles);
  ADD("/storage/db/two-processes", test_db_two_processes);
#undef ADD

  return g_test_run();
}
