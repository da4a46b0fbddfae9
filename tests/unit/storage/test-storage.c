#define G_LOG_DOMAIN "sipcred-test-storage"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <lmdb.h>

#include "storage/store-private.h"
#include "storage/store.h"
#include "tests/common/testutil.h"

#define TINY_MAP (64 * 1024)

typedef struct {
  char *tmp;   /* from g_dir_make_tmp */
  char *state; /* tmp/state: created by the store itself */
} Fixture;

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
  test_util_rm_rf(fx->tmp);
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

/* Fills the map up to a cap of 4 x TINY_MAP; returns how many certificates
 * (sip:userNNNN, 2000 bytes each) went in before the store said FULL. */
static guint
fill_to_cap(StoreDb *db)
{
  guint n = 0;

  for (; n < 2000; n++) {
    g_autofree char *aor = g_strdup_printf("sip:user%04u@example.com", n);
    g_autoptr(GBytes) der = fake_der(n, 2000);
    g_autoptr(GError) error = NULL;

    if (!store_cred_put_cert(db, aor, der, n, n + 1, &error)) {
      g_assert_error(error, STORE_ERROR, STORE_ERROR_FULL);
      g_test_message("full after %u certificates: %s", n, error->message);
      break;
    }
  }
  g_assert_cmpuint(n, <, 2000);
  return n;
}

static void
test_db_map_cap(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, TINY_MAP);
  g_autoptr(GBytes) other = fake_der(777, 2000);
  g_autoptr(GBytes) big = fake_der(778, 64 * 1024);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) before = NULL;
  g_autoptr(StoreCred) after = NULL;
  g_autoptr(StoreCred) missing = NULL;
  g_autoptr(GPtrArray) list = NULL;
  StoreStats st;
  guint64 seq;
  guint n;

  store_db_set_map_size_max(db, 4 * TINY_MAP);
  n = fill_to_cap(db);
  g_assert_cmpuint(n, >, 10);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(st.map_size, ==, 4 * TINY_MAP);
  seq = store_change_get_last_seq(db, &error);
  g_assert_no_error(error);
  before = store_cred_get(db, "sip:user0000@example.com", &error);
  g_assert_no_error(error);

  /* Neither a new record nor a bigger replacement gets in, not even in part. */
  g_assert_false(store_cred_put_cert(db, "sip:other@example.com", other, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_FULL);
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, "sip:user0000@example.com", big, 5, 6, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_FULL);
  g_clear_error(&error);

  missing = store_cred_get(db, "sip:other@example.com", &error);
  g_assert_null(missing);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);
  after = store_cred_get(db, "sip:user0000@example.com", &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(after->cert_der, before->cert_der));
  g_assert_cmpuint(after->version, ==, before->version);
  g_assert_cmpstr(after->etag, ==, before->etag);
  g_assert_cmpuint(store_change_get_last_seq(db, &error), ==, seq);
  g_assert_no_error(error);
  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, n);
  /* Reads go on. */
  check_many(db, n, 2000);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_cmpuint(st.map_size, ==, 4 * TINY_MAP);

  /* Removing credentials frees pages that later writes reuse. */
  for (guint i = 0; i < n / 2; i++) {
    g_autofree char *aor = g_strdup_printf("sip:user%04u@example.com", i);
    g_assert_true(store_cred_delete(db, aor, &error));
    g_assert_no_error(error);
  }
  put_cert(db, "sip:other@example.com", other, 1, 2);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_cmpuint(st.map_size, ==, 4 * TINY_MAP);

  /* A raised cap lets the map grow again. */
  store_db_set_map_size_max(db, 16 * TINY_MAP);
  put_cert(db, "sip:user0000@example.com", big, 5, 6);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_cmpuint(st.map_size, >, 4 * TINY_MAP);
  g_assert_cmpuint(st.map_size, <=, 16 * TINY_MAP);
}

/* Room a removal frees at the cap is usable by the very next write, although
 * LMDB reuses freed pages only two commits later. */
static void
test_db_map_cap_reuse(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, TINY_MAP);
  g_autoptr(GBytes) big = fake_der(901, 16 * 1024);
  g_autoptr(GBytes) big2 = fake_der(902, 16 * 1024);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;

  store_db_set_map_size_max(db, 4 * TINY_MAP);
  put_cert(db, "sip:big@example.com", big, 1, 2);
  fill_to_cap(db);
  g_assert_false(store_cred_put_cert(db, "sip:big2@example.com", big2, 1, 2, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_FULL);
  g_clear_error(&error);

  g_assert_true(store_cred_delete(db, "sip:big@example.com", &error));
  g_assert_no_error(error);
  put_cert(db, "sip:big2@example.com", big2, 1, 2);
  cred = store_cred_get(db, "sip:big2@example.com", &error);
  g_assert_no_error(error);
  g_assert_true(g_bytes_equal(cred->cert_der, big2));
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
}

/* A map that another process grew past our cap stays usable: reads and
 * writes that fit; the cap only stops further growth. */
static void
test_db_map_cap_larger_file(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  StoreStats st;
  StoreDb *db;

  db = open_db(fx->state, TINY_MAP);
  put_many(db, 100, 2000);
  store_db_get_stats(db, &st, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(st.map_size, >, 2 * TINY_MAP);
  store_db_free(db);

  db = open_db(fx->state, TINY_MAP);
  store_db_set_map_size_max(db, TINY_MAP);
  check_many(db, 100, 2000);
  {
    g_autoptr(GBytes) der = fake_der(0, 2000);
    put_cert(db, "sip:user0000@example.com", der, 7, 8);
  }
  fill_to_cap(db);
  check_many(db, 100, 2000);
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

/* ---- raw LMDB helpers for keys, migrations and tampering ---- */

static MDB_env *
raw_env_open(const char *dir)
{
  MDB_env *env;

  g_assert_cmpint(g_mkdir_with_parents(dir, 0700), ==, 0);
  g_assert_cmpint(mdb_env_create(&env), ==, 0);
  g_assert_cmpint(mdb_env_set_maxdbs(env, 16), ==, 0);
  g_assert_cmpint(mdb_env_open(env, dir, 0, 0600), ==, 0);
  return env;
}

/* Puts into @table, creating the table when @create. */
static void
raw_put_in(MDB_env *env, const char *table, gboolean create, const char *key, const void *val,
           gsize vlen)
{
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val k = {strlen(key), (void *)key};
  MDB_val v = {vlen, (void *)val};

  g_assert_cmpint(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
  g_assert_cmpint(mdb_dbi_open(txn, table, create ? MDB_CREATE : 0, &dbi), ==, 0);
  g_assert_cmpint(mdb_put(txn, dbi, &k, &v, 0), ==, 0);
  g_assert_cmpint(mdb_txn_commit(txn), ==, 0);
}

static void
raw_create(MDB_env *env, const char *table)
{
  MDB_txn *txn;
  MDB_dbi dbi;

  g_assert_cmpint(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
  g_assert_cmpint(mdb_dbi_open(txn, table, MDB_CREATE, &dbi), ==, 0);
  g_assert_cmpint(mdb_txn_commit(txn), ==, 0);
}

/* The value under @key, or NULL; FALSE in *@table_exists when there is no
 * such table. */
static GBytes *
raw_get(const char *dir, const char *table, const void *key, gsize klen, gboolean *table_exists)
{
  MDB_env *env = raw_env_open(dir);
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val k = {klen, (void *)key};
  MDB_val v;
  GBytes *out = NULL;
  int rc;

  g_assert_cmpint(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), ==, 0);
  rc = mdb_dbi_open(txn, table, 0, &dbi);
  if (table_exists != NULL)
    *table_exists = rc == 0;
  if (rc == 0 && mdb_get(txn, dbi, &k, &v) == 0)
    out = g_bytes_new(v.mv_data, v.mv_size);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return out;
}

static guint16
record_format(GBytes *value)
{
  g_autoptr(GVariant) rec =
      g_variant_ref_sink(g_variant_new_from_bytes(G_VARIANT_TYPE("(qv)"), value, FALSE));
  g_autoptr(GVariant) body = NULL;
  guint16 format;

  g_variant_get(rec, "(qv)", &format, &body);
  return format;
}

static GVariant *
cred_record_v1(GBytes *der, gint64 nb, gint64 na, guint64 version, const char *etag)
{
  return g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)1,
                    g_variant_new("(@ayxxxtsy@ay)",
                                  g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, der, TRUE),
                                  nb, na, (gint64)12345, version, etag, (guint8)0,
                                  g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, NULL, 0, 1))));
}

static GVariant *
user_record_v1(const char *realm)
{
  return g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)STORE_USER_RECORD_VERSION,
                    g_variant_new("(sssu)", realm, HA1_SHA256, HA1_MD5, (guint32)1)));
}

static gboolean
bytes_contain(GBytes *hay, const void *needle, gsize len)
{
  gsize n;
  const guint8 *h = g_bytes_get_data(hay, &n);

  return len > 0 && memmem(h, n, needle, len) != NULL;
}

/* Every file of the store directory, concatenated. */
static GBytes *
read_store_files(const char *dir)
{
  GByteArray *all = g_byte_array_new();
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;

  g_assert_nonnull(d);
  while ((name = g_dir_read_name(d)) != NULL) {
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(path, &data, &len, NULL));
    g_byte_array_append(all, (guint8 *)data, len);
  }
  return g_byte_array_free_to_bytes(all);
}

/* ---- keys ---- */

typedef struct {
  GBytes *pkcs8_der;     /* PrivateKeyInfo, plain */
  char *pkcs8_pem;       /* the same as PEM */
  GBytes *pkcs1_der;     /* RSAPrivateKey: the raw key */
  GBytes *pkcs8_enc_der; /* EncryptedPrivateKeyInfo (password "secret") */
} TestRsaKey;

static GBytes *
datum_to_bytes(gnutls_datum_t *d)
{
  GBytes *b = g_bytes_new(d->data, d->size);

  gnutls_free(d->data);
  d->data = NULL;
  return b;
}

/* One RSA key for all tests: generating is the slow part. */
static const TestRsaKey *
test_rsa_key(void)
{
  static TestRsaKey key;
  gnutls_x509_privkey_t pk;
  gnutls_datum_t d = {NULL, 0};

  if (key.pkcs8_der != NULL)
    return &key;
  g_assert_cmpint(gnutls_x509_privkey_init(&pk), ==, 0);
  g_assert_cmpint(gnutls_x509_privkey_generate(pk, GNUTLS_PK_RSA, 2048, 0), ==, 0);
  g_assert_cmpint(
      gnutls_x509_privkey_export2_pkcs8(pk, GNUTLS_X509_FMT_DER, NULL, GNUTLS_PKCS_PLAIN, &d), ==,
      0);
  key.pkcs8_der = datum_to_bytes(&d);
  g_assert_cmpint(
      gnutls_x509_privkey_export2_pkcs8(pk, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN, &d), ==,
      0);
  key.pkcs8_pem = g_strndup((char *)d.data, d.size);
  gnutls_free(d.data);
  g_assert_cmpint(gnutls_x509_privkey_export2(pk, GNUTLS_X509_FMT_DER, &d), ==, 0);
  key.pkcs1_der = datum_to_bytes(&d);
  g_assert_cmpint(gnutls_x509_privkey_export2_pkcs8(pk, GNUTLS_X509_FMT_DER, "secret",
                                                    GNUTLS_PKCS_PBES2_AES_256, &d),
                  ==, 0);
  key.pkcs8_enc_der = datum_to_bytes(&d);
  gnutls_x509_privkey_deinit(pk);
  return &key;
}

static char *
make_key_file(Fixture *fx, const char *name)
{
  g_autoptr(GError) error = NULL;
  char *path = g_build_filename(fx->tmp, name, NULL);

  g_assert_true(store_master_key_generate(path, &error));
  g_assert_no_error(error);
  return path;
}

static StoreMasterKey *
load_key(const char *path)
{
  g_autoptr(GError) error = NULL;
  StoreMasterKey *key = store_master_key_load(path, &error);

  g_assert_no_error(error);
  g_assert_nonnull(key);
  return key;
}

static void
set_key(StoreDb *db, StoreMasterKey *key)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(store_db_set_master_key(db, key, &error));
  g_assert_no_error(error);
}

static void
put_cred(StoreDb *db, const char *aor, GBytes *der, StoreKeyKind kind, GBytes *pkcs8)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(store_cred_put(db, aor, der, 1, 2, kind, pkcs8, &error));
  g_assert_no_error(error);
}

static StoreCred *
get_cred(StoreDb *db, const char *aor)
{
  g_autoptr(GError) error = NULL;
  StoreCred *cred = store_cred_get(db, aor, &error);

  g_assert_no_error(error);
  g_assert_nonnull(cred);
  return cred;
}

static void
test_key_generate_load(Fixture *fx, gconstpointer data)
{
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autofree char *other_path = make_key_file(fx, "other.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(StoreMasterKey) again = load_key(path);
  g_autoptr(StoreMasterKey) other = load_key(other_path);
  g_autoptr(GError) error = NULL;
  g_autofree char *bytes = NULL;
  g_autofree char *before = NULL;
  g_autofree char *expected = NULL;
  GChecksum *sha = g_checksum_new(G_CHECKSUM_SHA256);
  gsize len;
  struct stat st;

  g_assert_cmpint(g_stat(path, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0600);
  g_assert_true(g_file_get_contents(path, &bytes, &len, NULL));
  g_assert_cmpuint(len, ==, STORE_MASTER_KEY_SIZE);

  /* The id is the documented one-way function of the key, and stable. */
  g_checksum_update(sha, (const guchar *)"sipcred-master-key-id", 21);
  g_checksum_update(sha, (const guchar *)bytes, len);
  expected = g_strndup(g_checksum_get_string(sha), 16);
  g_checksum_free(sha);
  g_assert_cmpstr(store_master_key_get_id(key), ==, expected);
  g_assert_cmpstr(store_master_key_get_id(again), ==, expected);
  g_assert_cmpstr(store_master_key_get_id(other), !=, expected);

  /* Never overwrites: the old key would be lost with everything it wraps. */
  before = g_steal_pointer(&bytes);
  g_assert_false(store_master_key_generate(path, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, path));
  g_clear_error(&error);
  g_assert_true(g_file_get_contents(path, &bytes, &len, NULL));
  g_assert_cmpmem(bytes, len, before, STORE_MASTER_KEY_SIZE);

  /* Even with a permissive umask. */
  {
    g_autofree char *loose = g_build_filename(fx->tmp, "umask.key", NULL);
    mode_t old = umask(0);
    gboolean ok = store_master_key_generate(loose, &error);
    umask(old);
    g_assert_no_error(error);
    g_assert_true(ok);
    g_assert_cmpint(g_stat(loose, &st), ==, 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0600);
  }
  /* A directory that does not exist names the file. */
  {
    g_autofree char *bad = g_build_filename(fx->tmp, "no", "such", "dir.key", NULL);
    g_assert_false(store_master_key_generate(bad, &error));
    g_assert_nonnull(error);
    g_assert_nonnull(strstr(error->message, bad));
  }
}

static void
test_key_mode_refused(Fixture *fx, gconstpointer data)
{
  static const struct {
    mode_t mode;
    const char *shown;
  } bad[] = {{0644, "0644"}, {0640, "0640"}, {0604, "0604"}, {0620, "0620"}, {0666, "0666"}};
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(GError) error = NULL;

  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_assert_cmpint(g_chmod(path, bad[i].mode), ==, 0);
    g_assert_null(store_master_key_load(path, &error));
    g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
    g_test_message("%s", error->message);
    g_assert_nonnull(strstr(error->message, path));
    g_assert_nonnull(strstr(error->message, bad[i].shown));
    g_assert_nonnull(strstr(error->message, "chmod 600"));
    g_clear_error(&error);
  }
  g_assert_cmpint(g_chmod(path, 0644), ==, 0);
  g_assert_null(store_master_key_load(path, &error));
  g_assert_nonnull(strstr(error->message, "readable by group or others (mode 0644)"));
  g_clear_error(&error);

  /* 0400 is fine: only the owner can read it. */
  g_assert_cmpint(g_chmod(path, 0400), ==, 0);
  store_master_key_free(load_key(path));
}

static void
test_key_size_refused(Fixture *fx, gconstpointer data)
{
  static const gsize sizes[] = {0, 16, 31, 33, 64};
  g_autofree char *path = g_build_filename(fx->tmp, "sized.key", NULL);
  g_autofree char *missing = g_build_filename(fx->tmp, "missing.key", NULL);
  g_autoptr(GError) error = NULL;

  for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
    g_autofree char *content = g_strnfill(sizes[i], 'k');
    g_autofree char *shown = g_strdup_printf("%" G_GSIZE_FORMAT " bytes", sizes[i]);

    g_unlink(path);
    g_assert_true(
        g_file_set_contents_full(path, content, sizes[i], G_FILE_SET_CONTENTS_NONE, 0600, NULL));
    g_assert_null(store_master_key_load(path, &error));
    g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
    g_assert_nonnull(strstr(error->message, path));
    g_assert_nonnull(strstr(error->message, shown));
    g_clear_error(&error);
  }

  g_assert_null(store_master_key_load(missing, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, missing));
  g_clear_error(&error);

  /* A directory is not a key, whatever its mode. */
  g_assert_cmpint(g_chmod(fx->tmp, 0700), ==, 0);
  g_assert_null(store_master_key_load(fx->tmp, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, fx->tmp));
}

static void
test_key_wrong_refused(Fixture *fx, gconstpointer data)
{
  g_autofree char *path_a = make_key_file(fx, "a.key");
  g_autofree char *path_b = make_key_file(fx, "b.key");
  g_autoptr(StoreMasterKey) a = load_key(path_a);
  g_autoptr(StoreMasterKey) b = load_key(path_b);
  g_autoptr(GBytes) der = fake_der(1, 300);
  g_autoptr(GBytes) id = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, a);
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, test_rsa_key()->pkcs8_der);
  store_db_free(db);

  /* meta records the id of the first key, never the key. */
  id = raw_get(fx->state, STORE_DBI_META, STORE_META_MASTER_KEY_ID,
               strlen(STORE_META_MASTER_KEY_ID), NULL);
  g_assert_nonnull(id);
  g_assert_cmpmem(g_bytes_get_data(id, NULL), g_bytes_get_size(id), store_master_key_get_id(a),
                  16);

  db = open_db(fx->state, 0);
  g_assert_false(store_db_set_master_key(db, b, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, store_master_key_get_id(a)));
  g_assert_nonnull(strstr(error->message, store_master_key_get_id(b)));
  g_assert_nonnull(strstr(error->message, path_b));
  g_clear_error(&error);

  /* Refused means unset: the key stays closed, the certificate readable. */
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_null(cred->pkcs8);
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_false(store_cred_put(db, "sip:bob@example.com", der, 1, 2, STORE_KEY_SERVER_HELD,
                                test_rsa_key()->pkcs8_der, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_clear_error(&error);

  set_key(db, a);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->pkcs8, test_rsa_key()->pkcs8_der));
  store_db_free(db);
}

/* ---- credentials with keys ---- */

static void
test_cred_server_held(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(GBytes) der = fake_der(2, 800);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, key);
  /* The store keeps its own reference: the caller may drop the key. */
  g_clear_pointer(&key, store_master_key_free);
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_nonnull(cred->pkcs8);
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_cmpuint(cred->version, ==, 1);
  store_db_free(db);

  /* Without the master key: the certificate, but no key. */
  db = open_db(fx->state, 0);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_null(cred->pkcs8);
  g_assert_true(g_bytes_equal(cred->cert_der, der));

  /* Storing one needs the key; a refused put changes nothing. */
  g_assert_false(store_cred_put(db, "sip:alice@example.com", der, 1, 2, STORE_KEY_SERVER_HELD,
                                rsa->pkcs8_der, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, "sip:alice@example.com"));
  g_clear_error(&error);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_cmpuint(cred->version, ==, 1);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 1);

  /* A new certificate without a key drops the old key. */
  key = load_key(path);
  set_key(db, key);
  put_cert(db, "sip:alice@example.com", der, 3, 4);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_NONE);
  g_assert_null(cred->pkcs8);
  g_assert_cmpuint(cred->version, ==, 2);
  store_db_free(db);
}

static void
test_cred_user_encrypted(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(3, 500);
  g_autoptr(StoreCred) cred = NULL;

  /* No master key needed: the store cannot read it anyway. */
  put_cred(db, "sip:bob@example.com", der, STORE_KEY_USER_ENCRYPTED, rsa->pkcs8_enc_der);
  cred = get_cred(db, "sip:bob@example.com");
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_USER_ENCRYPTED);
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_enc_der));
}

static void
test_cred_key_invalid(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(3, 500);
  g_autoptr(GBytes) empty = g_bytes_new(NULL, 0);
  g_autoptr(GBytes) pem = g_bytes_new(rsa->pkcs8_pem, strlen(rsa->pkcs8_pem));
  g_autoptr(GBytes) huge = fake_der(4, STORE_PKCS8_MAX_SIZE + 1);
  g_autoptr(GBytes) trailing = NULL;
  g_autoptr(GBytes) truncated = NULL;
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;
  const struct {
    StoreKeyKind kind;
    GBytes *pkcs8;
  } bad[] = {
      {STORE_KEY_NONE, rsa->pkcs8_der},
      {STORE_KEY_USER_ENCRYPTED, NULL},
      {STORE_KEY_SERVER_HELD, NULL},
      {STORE_KEY_SERVER_HELD, empty},
      /* a plain key would be stored in clear */
      {STORE_KEY_USER_ENCRYPTED, rsa->pkcs8_der},
      {STORE_KEY_USER_ENCRYPTED, rsa->pkcs1_der},
      /* the server cannot use what it cannot decrypt */
      {STORE_KEY_SERVER_HELD, rsa->pkcs8_enc_der},
      {STORE_KEY_SERVER_HELD, pem},
      {STORE_KEY_SERVER_HELD, rsa->pkcs1_der},
      {STORE_KEY_SERVER_HELD, huge},
      {STORE_KEY_SERVER_HELD, NULL /* trailing */},
      {STORE_KEY_SERVER_HELD, NULL /* truncated */},
      {(StoreKeyKind)7, rsa->pkcs8_der},
  };
  gsize n;
  const guint8 *p = g_bytes_get_data(rsa->pkcs8_der, &n);
  g_autofree guint8 *plus = g_malloc(n + 1);

  memcpy(plus, p, n);
  plus[n] = 0;
  trailing = g_bytes_new(plus, n + 1);
  truncated = g_bytes_new(p, n - 1);
  set_key(db, key);
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    GBytes *pkcs8 = bad[i].pkcs8;

    if (i == 10)
      pkcs8 = trailing;
    else if (i == 11)
      pkcs8 = truncated;
    g_test_message("case %u", i);
    g_assert_false(
        store_cred_put(db, "sip:alice@example.com", der, 1, 2, bad[i].kind, pkcs8, &error));
    g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, "sip:alice@example.com"));
    g_clear_error(&error);
  }
  list = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 0);
}

/* Replaces the record of @aor by applying @edit to its raw bytes. */
static void
raw_edit(const char *dir, const char *table, const char *aor, void (*edit)(GByteArray *))
{
  g_autoptr(GBytes) value = raw_get(dir, table, aor, strlen(aor), NULL);
  g_autoptr(GByteArray) bytes = NULL;
  MDB_env *env;

  g_assert_nonnull(value);
  bytes = g_bytes_unref_to_array(g_steal_pointer(&value));
  edit(bytes);
  env = raw_env_open(dir);
  raw_put_in(env, table, FALSE, aor, bytes->data, bytes->len);
  mdb_env_close(env);
}

static void
flip_in_blob(GByteArray *bytes)
{
  /* The record ends with the key id (16 hex + NUL), framing bytes and the
   * format; 200 bytes before the end lies in the wrapped key. */
  bytes->data[bytes->len - 200] ^= 0x01;
}

static void
test_cred_tampered(Fixture *fx, gconstpointer data)
{
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(GBytes) der = fake_der(5, 400);
  g_autoptr(GBytes) moved = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  MDB_env *env;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, key);
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, test_rsa_key()->pkcs8_der);
  put_cred(db, "sip:bob@example.com", der, STORE_KEY_SERVER_HELD, test_rsa_key()->pkcs8_der);
  put_cred(db, "sip:carol@example.com", der, STORE_KEY_SERVER_HELD, test_rsa_key()->pkcs8_der);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  store_db_free(db);

  raw_edit(fx->state, STORE_DBI_CREDENTIALS, "sip:alice@example.com", flip_in_blob);
  /* A valid blob of another AOR does not open under this one. */
  moved = raw_get(fx->state, STORE_DBI_CREDENTIALS, "sip:bob@example.com", 19, NULL);
  env = raw_env_open(fx->state);
  raw_put_in(env, STORE_DBI_CREDENTIALS, FALSE, "sip:carol@example.com",
             g_bytes_get_data(moved, NULL), g_bytes_get_size(moved));
  mdb_env_close(env);

  db = open_db(fx->state, 0);
  set_key(db, key);
  cred = store_cred_get(db, "sip:alice@example.com", &error);
  g_assert_null(cred);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_assert_nonnull(strstr(error->message, "sip:alice@example.com"));
  g_clear_error(&error);
  cred = store_cred_get(db, "sip:carol@example.com", &error);
  g_assert_null(cred);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_assert_nonnull(strstr(error->message, "sip:carol@example.com"));
  g_clear_error(&error);
  cred = get_cred(db, "sip:bob@example.com");
  g_assert_true(g_bytes_equal(cred->pkcs8, test_rsa_key()->pkcs8_der));

  /* check names the table and the first damaged key. */
  g_assert_false(store_db_check(db, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, "credentials"));
  g_assert_nonnull(strstr(error->message, "sip:alice@example.com"));
  g_clear_error(&error);
  store_db_free(db);

  /* Without the key the damage cannot be seen, and the certificates read. */
  db = open_db(fx->state, 0);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_null(cred->pkcs8);
  store_db_free(db);
}

static void
test_cred_old_format(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(6, 300);
  g_autoptr(GVariant) v1 = cred_record_v1(der, 10, 20, 4, "oldetag");
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GBytes) raw = NULL;
  MDB_env *env;

  /* A format 1 record, as every credential written before keys existed. */
  env = raw_env_open(fx->state);
  raw_put_in(env, STORE_DBI_CREDENTIALS, FALSE, "sip:old@example.com", g_variant_get_data(v1),
             g_variant_get_size(v1));
  mdb_env_close(env);

  cred = get_cred(db, "sip:old@example.com");
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_cmpint(cred->not_before, ==, 10);
  g_assert_cmpint(cred->not_after, ==, 20);
  g_assert_cmpuint(cred->version, ==, 4);
  g_assert_cmpstr(cred->etag, ==, "oldetag");
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_NONE);
  g_assert_null(cred->pkcs8);

  /* Writing continues its version and writes the current format. */
  put_cert(db, "sip:old@example.com", der, 11, 21);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, "sip:old@example.com");
  g_assert_cmpuint(cred->version, ==, 5);
  raw = raw_get(fx->state, STORE_DBI_CREDENTIALS, "sip:old@example.com", 19, NULL);
  g_assert_cmpuint(record_format(raw), ==, STORE_CRED_RECORD_VERSION);
}

static void
assert_no_window(GBytes *file, GBytes *secret, gsize window, const char *what)
{
  gsize n;
  const guint8 *p = g_bytes_get_data(secret, &n);

  g_assert_cmpuint(n, >=, window);
  for (gsize i = 0; i + window <= n; i++) {
    if (bytes_contain(file, p + i, window))
      g_error("%u bytes of %s at offset %" G_GSIZE_FORMAT " occur in the store", (guint)window,
              what, i);
  }
}

static void
test_cred_no_key_bytes(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  /* An opaque certificate: a real one would carry the public modulus, which
   * is also part of the private key's DER. */
  g_autoptr(GBytes) der = fake_der(7, 900);
  g_autoptr(GBytes) file = NULL;
  g_autoptr(GBytes) master = NULL;
  g_auto(GStrv) lines = NULL;
  g_autofree char *master_bytes = NULL;
  gsize master_len, n_lines = 0;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, key);
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  /* Several wraps of the same key, and a rekey, leave old pages behind. */
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, "sip:bob@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, "sip:carol@example.com", der, STORE_KEY_USER_ENCRYPTED, rsa->pkcs8_enc_der);
  {
    g_autofree char *path2 = make_key_file(fx, "second.key");
    g_autoptr(StoreMasterKey) key2 = load_key(path2);
    g_autoptr(GError) error = NULL;
    g_assert_true(store_db_rekey(db, key2, &error));
    g_assert_no_error(error);
  }
  store_db_free(db);

  file = read_store_files(fx->state);
  /* The scan works: what is stored as given is found. */
  g_assert_true(bytes_contain(file, g_bytes_get_data(der, NULL), g_bytes_get_size(der)));
  g_assert_true(bytes_contain(file, g_bytes_get_data(rsa->pkcs8_enc_der, NULL),
                              g_bytes_get_size(rsa->pkcs8_enc_der)));

  g_assert_false(bytes_contain(file, g_bytes_get_data(rsa->pkcs8_der, NULL),
                               g_bytes_get_size(rsa->pkcs8_der)));
  assert_no_window(file, rsa->pkcs8_der, 32, "the PKCS#8 DER");
  assert_no_window(file, rsa->pkcs1_der, 32, "the raw RSA key DER");
  lines = g_strsplit(rsa->pkcs8_pem, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++) {
    if (lines[i][0] == '\0' || g_str_has_prefix(lines[i], "-----"))
      continue;
    n_lines++;
    g_assert_false(bytes_contain(file, lines[i], strlen(lines[i])));
  }
  g_assert_cmpuint(n_lines, >, 10);

  g_assert_true(g_file_get_contents(path, &master_bytes, &master_len, NULL));
  master = g_bytes_new(master_bytes, master_len);
  g_assert_false(bytes_contain(file, master_bytes, master_len));
  assert_no_window(file, master, 16, "the master key");
}

/* ---- rekey ---- */

static void
test_db_rekey(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path_a = make_key_file(fx, "a.key");
  g_autofree char *path_b = make_key_file(fx, "b.key");
  g_autoptr(StoreMasterKey) a = load_key(path_a);
  g_autoptr(StoreMasterKey) b = load_key(path_b);
  g_autoptr(GBytes) der = fake_der(8, 300);
  g_autoptr(GBytes) other_key = fake_der(9, 10);
  g_autoptr(GPtrArray) before = g_ptr_array_new_with_free_func((GDestroyNotify)store_cred_free);
  g_autoptr(GBytes) id = NULL;
  g_autoptr(GError) error = NULL;
  const char *aors[] = {"sip:a@example.com", "sip:b@example.com", "sip:c@example.com",
                        "sip:plain@example.com", "sip:user@example.com"};
  guint64 last;
  StoreDb *db;

  db = open_db(fx->state, 0);
  /* Re-keying needs the current key. */
  set_key(db, a);
  store_db_free(db);
  db = open_db(fx->state, 0);
  g_assert_false(store_db_rekey(db, b, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, store_master_key_get_id(a)));
  g_clear_error(&error);
  set_key(db, a);

  for (guint i = 0; i < 3; i++)
    put_cred(db, aors[i], der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, aors[3], der, STORE_KEY_NONE, NULL);
  put_cred(db, aors[4], der, STORE_KEY_USER_ENCRYPTED, rsa->pkcs8_enc_der);
  for (guint i = 0; i < G_N_ELEMENTS(aors); i++)
    g_ptr_array_add(before, get_cred(db, aors[i]));
  last = store_change_get_last_seq(db, NULL);

  g_assert_true(store_db_rekey(db, b, &error));
  g_assert_no_error(error);
  /* The same handle goes on with the new key. */
  for (guint i = 0; i < 3; i++) {
    g_autoptr(StoreCred) cred = get_cred(db, aors[i]);
    g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
  }
  store_db_free(db);

  id = raw_get(fx->state, STORE_DBI_META, STORE_META_MASTER_KEY_ID,
               strlen(STORE_META_MASTER_KEY_ID), NULL);
  g_assert_cmpmem(g_bytes_get_data(id, NULL), g_bytes_get_size(id), store_master_key_get_id(b),
                  16);

  db = open_db(fx->state, 0);
  g_assert_false(store_db_set_master_key(db, a, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, store_master_key_get_id(a)));
  g_assert_nonnull(strstr(error->message, store_master_key_get_id(b)));
  g_clear_error(&error);
  set_key(db, b);
  for (guint i = 0; i < G_N_ELEMENTS(aors); i++) {
    g_autoptr(StoreCred) cred = get_cred(db, aors[i]);
    StoreCred *old = g_ptr_array_index(before, i);

    /* Nothing a client sees changed: no new version, ETag or change. */
    g_assert_cmpint(cred->key_kind, ==, old->key_kind);
    g_assert_cmpuint(cred->version, ==, old->version);
    g_assert_cmpstr(cred->etag, ==, old->etag);
    g_assert_true(g_bytes_equal(cred->cert_der, der));
    if (old->pkcs8 != NULL)
      g_assert_true(g_bytes_equal(cred->pkcs8, old->pkcs8));
    else
      g_assert_null(cred->pkcs8);
  }
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, last);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  /* New writes use the new key. */
  put_cred(db, "sip:d@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  store_db_free(db);
}

static void
test_db_rekey_atomic(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path_a = make_key_file(fx, "a.key");
  g_autofree char *path_b = make_key_file(fx, "b.key");
  g_autoptr(StoreMasterKey) a = load_key(path_a);
  g_autoptr(StoreMasterKey) b = load_key(path_b);
  g_autoptr(GBytes) der = fake_der(8, 300);
  g_autoptr(GBytes) bob_before = NULL;
  g_autoptr(GBytes) bob_after = NULL;
  g_autoptr(GBytes) id = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, a);
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, "sip:bob@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, "sip:zed@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  store_db_free(db);
  /* bob sorts between a good record and the damaged one. */
  raw_edit(fx->state, STORE_DBI_CREDENTIALS, "sip:zed@example.com", flip_in_blob);
  bob_before = raw_get(fx->state, STORE_DBI_CREDENTIALS, "sip:bob@example.com", 19, NULL);

  db = open_db(fx->state, 0);
  set_key(db, a);
  g_assert_false(store_db_rekey(db, b, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_assert_nonnull(strstr(error->message, "sip:zed@example.com"));
  g_clear_error(&error);
  /* Nothing changed, and the handle keeps the old key. */
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
  store_db_free(db);
  bob_after = raw_get(fx->state, STORE_DBI_CREDENTIALS, "sip:bob@example.com", 19, NULL);
  g_assert_true(g_bytes_equal(bob_before, bob_after));
  id = raw_get(fx->state, STORE_DBI_META, STORE_META_MASTER_KEY_ID,
               strlen(STORE_META_MASTER_KEY_ID), NULL);
  g_assert_cmpmem(g_bytes_get_data(id, NULL), g_bytes_get_size(id), store_master_key_get_id(a),
                  16);
  db = open_db(fx->state, 0);
  g_assert_false(store_db_set_master_key(db, b, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  store_db_free(db);
}

static void
test_db_rekey_other_handle(Fixture *fx, gconstpointer data)
{
  g_autofree char *path_a = make_key_file(fx, "a.key");
  g_autofree char *path_b = make_key_file(fx, "b.key");
  g_autoptr(StoreMasterKey) a = load_key(path_a);
  g_autoptr(StoreMasterKey) b = load_key(path_b);
  g_autoptr(StoreDb) daemon = open_db(fx->state, 0);
  g_autoptr(StoreDb) cli = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(8, 300);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;

  set_key(daemon, a);
  set_key(cli, a);
  put_cred(daemon, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, test_rsa_key()->pkcs8_der);
  g_assert_true(store_db_rekey(cli, b, &error));
  g_assert_no_error(error);

  /* The daemon still holds the old key: it serves the certificate, cannot
   * open the key, and must not write one under a retired key. */
  g_test_expect_message("sipcred-storage", G_LOG_LEVEL_WARNING, "*re-keyed*");
  cred = get_cred(daemon, "sip:alice@example.com");
  g_test_assert_expected_messages();
  g_assert_null(cred->pkcs8);
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_false(store_cred_put(daemon, "sip:bob@example.com", der, 1, 2, STORE_KEY_SERVER_HELD,
                                test_rsa_key()->pkcs8_der, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_assert_nonnull(strstr(error->message, store_master_key_get_id(b)));
  g_clear_error(&error);
  g_assert_false(store_db_check(daemon, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_KEY);
  g_clear_error(&error);

  set_key(daemon, b);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(daemon, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->pkcs8, test_rsa_key()->pkcs8_der));
}

/* ---- change log ---- */

static void
assert_change(StoreChange *c, guint64 seq, const char *aor, StoreChangeKind kind, gint64 t0)
{
  g_assert_cmpuint(c->seq, ==, seq);
  g_assert_cmpstr(c->aor, ==, aor);
  g_assert_cmpint(c->kind, ==, kind);
  g_assert_cmpint(c->time, >=, t0);
  g_assert_cmpint(c->time, <=, g_get_real_time() / G_USEC_PER_SEC);
}

static void
test_change_log(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;
  StoreUser u = {(char *)"sip:bob@example.com", (char *)"example.com", (char *)HA1_SHA256,
                 (char *)HA1_MD5, STORE_USER_ENABLED};
  StoreUser bad = u;
  gint64 t0 = g_get_real_time() / G_USEC_PER_SEC;
  StoreDb *db;

  db = open_db(fx->state, 0);
  g_assert_cmpuint(store_change_get_last_seq(db, &error), ==, 0);
  g_assert_no_error(error);
  list = store_change_list_since(db, 0, 100, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
  g_clear_pointer(&list, g_ptr_array_unref);

  put_cert(db, "sip:alice@example.com", der, 1, 2);
  g_assert_true(store_user_put(db, &u, &error));
  g_assert_true(store_cred_delete(db, "sip:alice@example.com", &error));
  g_assert_true(store_user_delete(db, "sip:bob@example.com", &error));
  g_assert_no_error(error);
  /* Writes that fail log nothing. */
  g_assert_false(store_cred_delete(db, "sip:alice@example.com", &error));
  g_clear_error(&error);
  g_assert_false(store_user_delete(db, "sip:bob@example.com", &error));
  g_clear_error(&error);
  bad.ha1_md5 = (char *)"short";
  g_assert_false(store_user_put(db, &bad, &error));
  g_clear_error(&error);
  g_assert_false(store_cred_put_cert(db, "sip:alice@example.com", der, 5, 4, &error));
  g_clear_error(&error);
  store_db_free(db);

  /* The log is durable and continues after reopening. */
  db = open_db(fx->state, 0);
  g_assert_cmpuint(store_change_get_last_seq(db, &error), ==, 4);
  list = store_change_list_since(db, 0, 100, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 4);
  assert_change(g_ptr_array_index(list, 0), 1, "sip:alice@example.com", STORE_CHANGE_CREDENTIAL,
                t0);
  assert_change(g_ptr_array_index(list, 1), 2, "sip:bob@example.com", STORE_CHANGE_USER, t0);
  assert_change(g_ptr_array_index(list, 2), 3, "sip:alice@example.com", STORE_CHANGE_REVOKED, t0);
  assert_change(g_ptr_array_index(list, 3), 4, "sip:bob@example.com", STORE_CHANGE_USER, t0);
  g_clear_pointer(&list, g_ptr_array_unref);

  list = store_change_list_since(db, 2, 100, &error);
  g_assert_cmpuint(list->len, ==, 2);
  assert_change(g_ptr_array_index(list, 0), 3, "sip:alice@example.com", STORE_CHANGE_REVOKED, t0);
  g_clear_pointer(&list, g_ptr_array_unref);
  list = store_change_list_since(db, 0, 2, &error);
  g_assert_cmpuint(list->len, ==, 2);
  assert_change(g_ptr_array_index(list, 1), 2, "sip:bob@example.com", STORE_CHANGE_USER, t0);
  g_clear_pointer(&list, g_ptr_array_unref);
  list = store_change_list_since(db, 4, 100, &error);
  g_assert_cmpuint(list->len, ==, 0);
  g_clear_pointer(&list, g_ptr_array_unref);
  list = store_change_list_since(db, G_MAXUINT64, 100, &error);
  g_assert_cmpuint(list->len, ==, 0);
  g_clear_pointer(&list, g_ptr_array_unref);
  list = store_change_list_since(db, 0, 0, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 0);
  g_clear_pointer(&list, g_ptr_array_unref);

  put_cert(db, "sip:carol@example.com", der, 1, 2);
  g_assert_cmpuint(store_change_get_last_seq(db, &error), ==, 5);
  store_db_free(db);
}

/* The log stays bounded: a write drops the oldest entries beyond the newest
 * @keep once they are older than @min_age; younger ones stay whatever their
 * number; sequence numbers go on. */
static void
test_change_log_retention(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GError) error = NULL;
  StoreStats st;

  store_db_set_change_retention(db, 5, 0);
  for (guint i = 0; i < 20; i++)
    put_cert(db, "sip:alice@example.com", der, 1, 2);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_cmpuint(st.n_changes, ==, 5);
  g_assert_cmpuint(st.last_change, ==, 20);
  g_autoptr(GPtrArray) list = store_change_list_since(db, 0, 100, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 5);
  for (guint i = 0; i < list->len; i++)
    g_assert_cmpuint(((StoreChange *)g_ptr_array_index(list, i))->seq, ==, 16 + i);

  /* Entries younger than an hour stay however many there are. */
  store_db_set_change_retention(db, 5, 3600);
  for (guint i = 0; i < 10; i++)
    put_cert(db, "sip:alice@example.com", der, 1, 2);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_cmpuint(st.n_changes, ==, 15);
  g_assert_cmpuint(st.last_change, ==, 30);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
}

static void
test_change_log_two_handles(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) daemon = open_db(fx->state, 0);
  g_autoptr(StoreDb) cli = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;
  guint64 seen;

  put_cert(daemon, "sip:a@example.com", der, 1, 2);
  seen = store_change_get_last_seq(daemon, &error);
  /* Writes through either handle interleave in one sequence. */
  for (guint i = 0; i < 20; i++) {
    g_autofree char *aor = g_strdup_printf("sip:u%02u@example.com", i);
    put_cert(i % 2 ? cli : daemon, aor, der, 1, 2);
  }
  list = store_change_list_since(daemon, seen, 1000, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 20);
  for (guint i = 0; i < 20; i++) {
    StoreChange *c = g_ptr_array_index(list, i);
    g_autofree char *aor = g_strdup_printf("sip:u%02u@example.com", i);
    g_assert_cmpuint(c->seq, ==, seen + 1 + i);
    g_assert_cmpstr(c->aor, ==, aor);
  }
}

static void
test_change_log_corrupt(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;
  guint64 be = GUINT64_TO_BE(2);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val k = {sizeof be, &be};
  MDB_val v = {5, (void *)"junk!"};
  StoreDb *db;

  db = open_db(fx->state, 0);
  put_cert(db, "sip:a@example.com", der, 1, 2);
  put_cert(db, "sip:b@example.com", der, 1, 2);
  put_cert(db, "sip:c@example.com", der, 1, 2);
  store_db_free(db);
  env = raw_env_open(fx->state);
  g_assert_cmpint(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
  g_assert_cmpint(mdb_dbi_open(txn, STORE_DBI_CHANGES, 0, &dbi), ==, 0);
  g_assert_cmpint(mdb_put(txn, dbi, &k, &v, 0), ==, 0);
  g_assert_cmpint(mdb_txn_commit(txn), ==, 0);
  mdb_env_close(env);

  db = open_db(fx->state, 0);
  list = store_change_list_since(db, 0, 100, &error);
  g_assert_null(list);
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_assert_nonnull(strstr(error->message, "change 2"));
  g_clear_error(&error);
  /* Past the damage the log reads. */
  list = store_change_list_since(db, 2, 100, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 1);
  g_assert_false(store_db_check(db, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_assert_nonnull(strstr(error->message, "changes"));
  g_assert_nonnull(strstr(error->message, "key 2"));
  store_db_free(db);
}

/* ---- maintenance ---- */

static void
test_db_backup(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autofree char *backup = g_build_filename(fx->tmp, "backup.mdb", NULL);
  g_autofree char *restored = g_build_filename(fx->tmp, "restored", NULL);
  g_autofree char *restored_file = g_build_filename(restored, "data.mdb", NULL);
  g_autofree char *nodir = g_build_filename(fx->tmp, "nodir", "backup.mdb", NULL);
  g_autofree char *contents = NULL;
  g_autoptr(GBytes) der = fake_der(4, 3000);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreDb) db = open_db(fx->state, TINY_MAP);
  g_autoptr(StoreDb) copy = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(StoreUser) user = NULL;
  g_autoptr(GPtrArray) changes = NULL;
  StoreUser u = {(char *)"sip:bob@example.com", (char *)"example.com", (char *)HA1_SHA256,
                 (char *)HA1_MD5, STORE_USER_ENABLED};
  StoreStats live, restored_stats;
  struct stat st;
  gsize len;

  set_key(db, key);
  put_many(db, 100, 2000);
  for (guint i = 50; i < 100; i++) {
    g_autofree char *aor = g_strdup_printf("sip:user%04u@example.com", i);
    g_assert_true(store_cred_delete(db, aor, &error));
  }
  put_cred(db, "sip:alice@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  g_assert_true(store_user_put(db, &u, &error));

  g_assert_true(store_db_backup(db, backup, &error));
  g_assert_no_error(error);
  g_assert_cmpint(g_stat(backup, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0600);

  /* An existing file is never overwritten. */
  g_assert_false(store_db_backup(db, backup, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_assert_nonnull(strstr(error->message, backup));
  g_clear_error(&error);
  g_assert_cmpint(g_stat(backup, &st), ==, 0);
  g_assert_cmpint(st.st_size, >, 0);
  g_assert_false(store_db_backup(db, nodir, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_IO);
  g_assert_nonnull(strstr(error->message, nodir));
  g_clear_error(&error);

  /* Writes after the backup are not in it. */
  put_cert(db, "sip:later@example.com", der, 1, 2);

  /* Restoring is putting the file in a state directory as data.mdb. */
  g_assert_cmpint(g_mkdir(restored, 0700), ==, 0);
  g_assert_true(g_file_get_contents(backup, &contents, &len, NULL));
  g_assert_true(g_file_set_contents_full(restored_file, contents, len, G_FILE_SET_CONTENTS_NONE,
                                         0600, NULL));
  copy = open_db(restored, 0);
  set_key(copy, key);
  g_assert_true(store_db_check(copy, &error));
  g_assert_no_error(error);
  check_many(copy, 50, 2000);
  cred = get_cred(copy, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  user = store_user_get(copy, "sip:bob@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(user->ha1_sha256, ==, HA1_SHA256);
  g_assert_null(store_cred_get(copy, "sip:user0050@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);
  g_assert_null(store_cred_get(copy, "sip:later@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);
  changes = store_change_list_since(copy, 0, 1000, &error);
  g_assert_cmpuint(changes->len, ==, 152);

  /* Compacted: deleted records take no room in the copy. */
  g_assert_true(store_db_get_stats(db, &live, &error));
  g_assert_true(store_db_get_stats(copy, &restored_stats, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(restored_stats.map_used, <, live.map_used);
  g_assert_cmpuint(restored_stats.n_credentials, ==, 51);
}

static void
test_db_check(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GVariant) bad_user = NULL;
  g_autoptr(GError) error = NULL;
  StoreUser u = {(char *)"sip:bob@example.com", (char *)"example.com", (char *)HA1_SHA256,
                 (char *)HA1_MD5, STORE_USER_ENABLED};
  MDB_env *env;
  StoreDb *db;

  db = open_db(fx->state, 0);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  put_cert(db, "sip:alice@example.com", der, 1, 2);
  g_assert_true(store_user_put(db, &u, &error));
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  store_db_free(db);

  bad_user = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)STORE_USER_RECORD_VERSION,
                    g_variant_new("(sssu)", "example.com", "nothex", "nothex", (guint32)1)));
  env = raw_env_open(fx->state);
  raw_put_in(env, STORE_DBI_USERS, FALSE, "sip:mallory@example.com", g_variant_get_data(bad_user),
             g_variant_get_size(bad_user));
  mdb_env_close(env);

  db = open_db(fx->state, 0);
  g_assert_false(store_db_check(db, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, "users"));
  g_assert_nonnull(strstr(error->message, "sip:mallory@example.com"));
  g_assert_nonnull(strstr(error->message, fx->state));
  /* The message is safe to print: no HA1 in it. */
  g_assert_null(strstr(error->message, HA1_SHA256));
  store_db_free(db);
}

static void
test_db_stats(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(1, 100);
  g_autoptr(GError) error = NULL;
  StoreUser u = {(char *)"sip:bob@example.com", (char *)"example.com", (char *)HA1_SHA256,
                 (char *)HA1_MD5, STORE_USER_ENABLED};
  StoreStats st;

  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(st.schema_version, ==, STORE_SCHEMA_VERSION);
  g_assert_cmpuint(st.map_size, ==, STORE_MAP_SIZE_DEFAULT);
  g_assert_cmpuint(st.map_used, >, 0);
  g_assert_cmpuint(st.n_users + st.n_credentials + st.n_server_held + st.n_changes, ==, 0);
  g_assert_cmpuint(st.last_change, ==, 0);

  set_key(db, key);
  put_cert(db, "sip:a@example.com", der, 1, 2);
  put_cred(db, "sip:b@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, "sip:c@example.com", der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  put_cred(db, "sip:d@example.com", der, STORE_KEY_USER_ENCRYPTED, rsa->pkcs8_enc_der);
  g_assert_true(store_cred_delete(db, "sip:c@example.com", &error));
  g_assert_true(store_user_put(db, &u, &error));
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(st.n_credentials, ==, 3);
  g_assert_cmpuint(st.n_server_held, ==, 1);
  g_assert_cmpuint(st.n_users, ==, 1);
  g_assert_cmpuint(st.n_registrations, ==, 0);
  g_assert_cmpuint(st.n_changes, ==, 6);
  g_assert_cmpuint(st.last_change, ==, 6);
  g_assert_cmpuint(st.map_used, <=, st.map_size);
}

/* ---- schema migrations ---- */

/* A store as written before any schema version was recorded: format 1
 * records, a meta table without a version, and no changes or
 * registrations tables (@with_meta FALSE: not even meta). */
static void
make_schema0_store(const char *dir, gboolean with_meta, GBytes *der)
{
  g_autoptr(GVariant) cred = cred_record_v1(der, 100, 200, 3, "etag-from-schema-0");
  g_autoptr(GVariant) user = user_record_v1("example.com");
  MDB_env *env = raw_env_open(dir);

  raw_put_in(env, STORE_DBI_CREDENTIALS, TRUE, "sip:alice@example.com", g_variant_get_data(cred),
             g_variant_get_size(cred));
  raw_put_in(env, STORE_DBI_CREDENTIALS, TRUE, "sip:bob@example.com", g_variant_get_data(cred),
             g_variant_get_size(cred));
  raw_put_in(env, STORE_DBI_USERS, TRUE, "sip:alice@example.com", g_variant_get_data(user),
             g_variant_get_size(user));
  if (with_meta)
    raw_put_in(env, STORE_DBI_META, TRUE, "created-by", "sipcred 0.0", 11);
  mdb_env_close(env);
}

static void
assert_migrated(const char *dir, GBytes *der)
{
  g_autoptr(GBytes) version = NULL;
  g_autoptr(GBytes) raw = NULL;
  g_autoptr(GBytes) none = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(StoreUser) user = NULL;
  g_autoptr(GPtrArray) changes = NULL;
  gboolean exists = FALSE;
  guint32 be;
  StoreDb *db;

  db = open_db(dir, 0);
  g_assert_cmpuint(store_db_get_schema_version(db), ==, STORE_SCHEMA_VERSION);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_cmpuint(cred->version, ==, 3);
  g_assert_cmpstr(cred->etag, ==, "etag-from-schema-0");
  g_assert_cmpint(cred->not_before, ==, 100);
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_NONE);
  user = store_user_get(db, "sip:alice@example.com", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(user->realm, ==, "example.com");
  /* Migrating is not a change subscribers need to hear about. */
  changes = store_change_list_since(db, 0, 10, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(changes->len, ==, 0);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  put_cert(db, "sip:alice@example.com", der, 1, 2);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 1);
  store_db_free(db);

  version = raw_get(dir, STORE_DBI_META, STORE_META_SCHEMA_VERSION,
                    strlen(STORE_META_SCHEMA_VERSION), NULL);
  g_assert_nonnull(version);
  g_assert_cmpuint(g_bytes_get_size(version), ==, 4);
  memcpy(&be, g_bytes_get_data(version, NULL), 4);
  g_assert_cmpuint(GUINT32_FROM_BE(be), ==, STORE_SCHEMA_VERSION);
  raw = raw_get(dir, STORE_DBI_CREDENTIALS, "sip:bob@example.com", 19, NULL);
  g_assert_cmpuint(record_format(raw), ==, STORE_CRED_RECORD_VERSION);
  none = raw_get(dir, STORE_DBI_REGISTRATIONS, "x", 1, &exists);
  g_assert_true(exists);
}

static void
test_db_migrate_schema0(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(11, 600);
  g_autofree char *bare = g_build_filename(fx->tmp, "bare", NULL);

  make_schema0_store(fx->state, TRUE, der);
  assert_migrated(fx->state, der);
  /* Before meta existed at all. */
  make_schema0_store(bare, FALSE, der);
  assert_migrated(bare, der);
}

static void
test_db_migrate_schema1(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(12, 600);
  guint32 be = GUINT32_TO_BE(1);
  MDB_env *env;

  make_schema0_store(fx->state, TRUE, der);
  env = raw_env_open(fx->state);
  raw_put_in(env, STORE_DBI_META, FALSE, STORE_META_SCHEMA_VERSION, &be, sizeof be);
  raw_create(env, STORE_DBI_CHANGES);
  raw_create(env, STORE_DBI_REGISTRATIONS);
  mdb_env_close(env);
  assert_migrated(fx->state, der);
}

static void
test_db_migrate_damaged(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(13, 600);
  g_autoptr(GBytes) raw = NULL;
  g_autoptr(GVariant) broken = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)1, g_variant_new_string("not a credential")));
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(StoreDb) db = NULL;
  MDB_env *env;

  /* One damaged record must not lock the operator out of the whole store:
   * the rest migrates, and the damaged one can be found and deleted. */
  make_schema0_store(fx->state, TRUE, der);
  env = raw_env_open(fx->state);
  raw_put_in(env, STORE_DBI_CREDENTIALS, FALSE, "sip:broken@example.com",
             g_variant_get_data(broken), g_variant_get_size(broken));
  mdb_env_close(env);
  g_test_expect_message("sipcred-storage", G_LOG_LEVEL_MESSAGE, "*schema version 0 to 1");
  g_test_expect_message("sipcred-storage", G_LOG_LEVEL_WARNING,
                        "*sip:broken@example.com*left as it is*");
  g_test_expect_message("sipcred-storage", G_LOG_LEVEL_MESSAGE, "rewrote 2 *(1 damaged*");
  g_test_expect_message("sipcred-storage", G_LOG_LEVEL_MESSAGE, "*schema version 1 to 2");
  db = open_db(fx->state, 0);
  g_test_assert_expected_messages();
  g_assert_cmpuint(store_db_get_schema_version(db), ==, STORE_SCHEMA_VERSION);
  cred = get_cred(db, "sip:alice@example.com");
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  raw = raw_get(fx->state, STORE_DBI_CREDENTIALS, "sip:alice@example.com", 21, NULL);
  g_assert_cmpuint(record_format(raw), ==, STORE_CRED_RECORD_VERSION);

  g_assert_null(store_cred_get(db, "sip:broken@example.com", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_clear_error(&error);
  g_assert_false(store_db_check(db, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_assert_nonnull(strstr(error->message, "sip:broken@example.com"));
  g_clear_error(&error);
  g_assert_true(store_cred_delete(db, "sip:broken@example.com", &error));
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
}

/* ---- the hand-written decoder against GVariant's ---- */

static GVariant *
cred_record_v2(GBytes *der, gint64 nb, gint64 na, gint64 updated, guint64 version,
               const char *etag, guint8 kind, GBytes *blob, const char *key_id)
{
  return g_variant_ref_sink(g_variant_new(
      "(qv)", (guint16)STORE_CRED_RECORD_VERSION,
      g_variant_new("(@ayxxxtsy@ays)",
                    g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, der, TRUE), nb, na,
                    updated, version, etag, kind,
                    g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, blob, TRUE), key_id)));
}

/* What GVariant makes of @value, or FALSE when it is not a format 2 record
 * of the right type in normal form. */
static gboolean
gvariant_decode(GBytes *value, gboolean normal, StoreCred *out, GBytes **blob, char **key_id)
{
  g_autoptr(GVariant) rec =
      g_variant_ref_sink(g_variant_new_from_bytes(G_VARIANT_TYPE("(qv)"), value, FALSE));
  g_autoptr(GVariant) body = NULL;
  g_autoptr(GVariant) der = NULL;
  g_autoptr(GVariant) b = NULL;
  guint16 format;
  guint8 kind;

  if (normal && !g_variant_is_normal_form(rec))
    return FALSE;
  g_variant_get(rec, "(qv)", &format, &body);
  if (format != STORE_CRED_RECORD_VERSION ||
      !g_variant_is_of_type(body, G_VARIANT_TYPE(STORE_CRED_BODY_TYPE_V2)))
    return FALSE;
  g_variant_get(body, "(@ayxxxtsy@ays)", &der, &out->not_before, &out->not_after, &out->updated,
                &out->version, &out->etag, &kind, &b, key_id);
  out->key_kind = kind;
  out->cert_der = g_variant_get_data_as_bytes(der);
  *blob = g_variant_get_data_as_bytes(b);
  return TRUE;
}

static void
raw_put_many(const char *dir, GPtrArray *aors, GPtrArray *values)
{
  MDB_env *env = raw_env_open(dir);
  MDB_txn *txn;
  MDB_dbi dbi;

  g_assert_cmpint(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
  g_assert_cmpint(mdb_dbi_open(txn, STORE_DBI_CREDENTIALS, 0, &dbi), ==, 0);
  for (guint i = 0; i < aors->len; i++) {
    const char *aor = g_ptr_array_index(aors, i);
    GBytes *value = g_ptr_array_index(values, i);
    MDB_val k = {strlen(aor), (void *)aor};
    MDB_val v = {g_bytes_get_size(value), (void *)g_bytes_get_data(value, NULL)};
    g_assert_cmpint(mdb_put(txn, dbi, &k, &v, 0), ==, 0);
  }
  g_assert_cmpint(mdb_txn_commit(txn), ==, 0);
  mdb_env_close(env);
}

static void
test_cred_decode_matches(Fixture *fx, gconstpointer data)
{
  /* Body sizes around every framing-offset width: 1, 2 and 4 bytes. */
  static const gsize cert_sizes[] = {
      1, 7, 8, 9, 150, 200, 250, 255, 256, 300, 4000, 65400, 65600, 70000, STORE_CERT_MAX_SIZE};
  static const struct {
    guint8 kind;
    gsize blob;
    const char *key_id;
  } keys[] = {{STORE_KEY_NONE, 0, ""},
              {STORE_KEY_USER_ENCRYPTED, 1, ""},
              {STORE_KEY_USER_ENCRYPTED, 300, ""},
              {STORE_KEY_SERVER_HELD, 29, "0123456789abcdef"},
              {STORE_KEY_SERVER_HELD, 1300, "fedcba9876543210"}};
  static const char *etags[] = {"e", "0123456789abcdef0123456789abcdef", "\xc3\xa9tag"};
  g_autoptr(GPtrArray) aors = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GPtrArray) values = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GError) error = NULL;
  guint n = 0;

  for (guint c = 0; c < G_N_ELEMENTS(cert_sizes); c++) {
    for (guint k = 0; k < G_N_ELEMENTS(keys); k++, n++) {
      g_autoptr(GBytes) der = fake_der(c, cert_sizes[c]);
      g_autoptr(GBytes) blob = fake_der(k + 100, keys[k].blob);
      g_autoptr(GVariant) rec = cred_record_v2(
          der, -(gint64)n * 1000003, G_MAXINT64 - n, 1700000000 + n, G_MAXUINT64 - n,
          etags[n % G_N_ELEMENTS(etags)], keys[k].kind, blob, keys[k].key_id);

      g_ptr_array_add(aors, g_strdup_printf("sip:d%03u@example.com", n));
      g_ptr_array_add(values, g_variant_get_data_as_bytes(rec));
    }
  }
  raw_put_many(fx->state, aors, values);

  for (guint i = 0; i < aors->len; i++) {
    g_autoptr(StoreCred) got = store_cred_get(db, g_ptr_array_index(aors, i), &error);
    g_autoptr(GBytes) blob = NULL;
    g_autofree char *key_id = NULL;
    StoreCred want = {0};

    g_test_message("record %u", i);
    g_assert_no_error(error);
    g_assert_true(gvariant_decode(g_ptr_array_index(values, i), TRUE, &want, &blob, &key_id));
    g_assert_true(g_bytes_equal(got->cert_der, want.cert_der));
    g_assert_cmpint(got->not_before, ==, want.not_before);
    g_assert_cmpint(got->not_after, ==, want.not_after);
    g_assert_cmpint(got->updated, ==, want.updated);
    g_assert_cmpuint(got->version, ==, want.version);
    g_assert_cmpstr(got->etag, ==, want.etag);
    g_assert_cmpint(got->key_kind, ==, want.key_kind);
    if (want.key_kind == STORE_KEY_USER_ENCRYPTED)
      g_assert_true(g_bytes_equal(got->pkcs8, blob));
    else
      g_assert_null(got->pkcs8); /* no master key: server-held stays closed */
    g_bytes_unref(want.cert_der);
    g_free(want.etag);
  }
}

/* Every truncation and many single-byte changes of valid records: the store
 * either refuses the record as CORRUPT or decodes what GVariant decodes. */
static void
test_cred_decode_damaged(Fixture *fx, gconstpointer data)
{
  static const gsize cert_sizes[] = {40, 300};
  g_autoptr(GPtrArray) aors = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GPtrArray) values = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  guint n_refused = 0, n_read = 0;

  for (guint c = 0; c < G_N_ELEMENTS(cert_sizes); c++) {
    g_autoptr(GBytes) der = fake_der(c, cert_sizes[c]);
    g_autoptr(GBytes) blob = fake_der(9, 40);
    g_autoptr(GVariant) rec =
        cred_record_v2(der, 1, 2, 3, 4, "etag", STORE_KEY_USER_ENCRYPTED, blob, "");
    gsize len = g_variant_get_size(rec);
    const guint8 *p = g_variant_get_data(rec);

    for (gsize cut = 0; cut < len; cut++) {
      g_ptr_array_add(aors, g_strdup_printf("sip:cut%u-%04zu@example.com", c, cut));
      g_ptr_array_add(values, g_bytes_new(p, MAX(cut, 1)));
    }
    for (gsize at = 0; at < len; at += (at < 64 || at + 64 > len) ? 1 : 7) {
      static const guint8 flips[] = {0x01, 0x80, 0xff};
      for (guint f = 0; f < G_N_ELEMENTS(flips); f++) {
        guint8 *copy = g_memdup2(p, len);
        copy[at] ^= flips[f];
        g_ptr_array_add(aors, g_strdup_printf("sip:flip%u-%04zu-%u@example.com", c, at, f));
        g_ptr_array_add(values, g_bytes_new_take(copy, len));
      }
    }
  }
  raw_put_many(fx->state, aors, values);

  for (guint i = 0; i < aors->len; i++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(StoreCred) got = store_cred_get(db, g_ptr_array_index(aors, i), &error);
    g_autoptr(GBytes) blob = NULL;
    g_autofree char *key_id = NULL;
    StoreCred want = {0};

    if (got == NULL) {
      g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
      g_assert_nonnull(strstr(error->message, g_ptr_array_index(aors, i)));
      n_refused++;
      continue;
    }
    n_read++;
    /* Whatever is accepted means what GVariant reads in it (which may not
     * be normal form: padding is not looked at). */
    g_test_message("accepted %s", (char *)g_ptr_array_index(aors, i));
    g_assert_true(gvariant_decode(g_ptr_array_index(values, i), FALSE, &want, &blob, &key_id));
    g_assert_true(g_bytes_equal(got->cert_der, want.cert_der));
    g_assert_cmpint(got->not_before, ==, want.not_before);
    g_assert_cmpint(got->not_after, ==, want.not_after);
    g_assert_cmpint(got->updated, ==, want.updated);
    g_assert_cmpuint(got->version, ==, want.version);
    g_assert_cmpstr(got->etag, ==, want.etag);
    g_assert_cmpint(got->key_kind, ==, want.key_kind);
    g_bytes_unref(want.cert_der);
    g_free(want.etag);
  }
  g_test_message("%u damaged records refused, %u still well-formed", n_refused, n_read);
  g_assert_cmpuint(n_refused, >, 0);
  g_assert_cmpuint(n_read, >, 0);
}

/* ---- conditional writes (RFC 3903) ---- */

#define ALICE "sip:alice@example.com"
#define NO_SUCH_ETAG "00000000000000000000000000000000"

/* store_cred_put_if() that must succeed; returns the new ETag. */
static char *
put_if_ok(StoreDb *db, const char *aor, const char *if_etag, GBytes *der, StoreKeyKind kind,
          GBytes *pkcs8)
{
  g_autoptr(GError) error = NULL;
  char *etag = NULL;

  g_assert_true(store_cred_put_if(db, aor, if_etag, der, 1, 2, kind, pkcs8, &etag, &error));
  g_assert_no_error(error);
  g_assert_nonnull(etag);
  return etag;
}

/* The last change-log entry must be (@seq, @aor, @kind). */
static void
assert_last_change(StoreDb *db, guint64 seq, const char *aor, StoreChangeKind kind)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) list = NULL;
  StoreChange *c;

  g_assert_cmpuint(store_change_get_last_seq(db, &error), ==, seq);
  g_assert_no_error(error);
  list = store_change_list_since(db, seq - 1, 10, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 1);
  c = g_ptr_array_index(list, 0);
  g_assert_cmpstr(c->aor, ==, aor);
  g_assert_cmpint(c->kind, ==, kind);
}

static GBytes *
raw_cred(const char *dir, const char *aor)
{
  GBytes *value = raw_get(dir, STORE_DBI_CREDENTIALS, aor, strlen(aor), NULL);

  g_assert_nonnull(value);
  return value;
}

static void
test_cred_put_if(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der1 = fake_der(11, 300);
  g_autoptr(GBytes) der2 = fake_der(12, 310);
  g_autoptr(GBytes) der3 = fake_der(13, 320);
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autofree char *e1 = NULL;
  g_autofree char *e2 = NULL;
  g_autofree char *bob_etag = NULL;
  char *out = NULL;

  /* A publication that does not exist cannot be modified: nothing is created. */
  g_assert_false(
      store_cred_put_if(db, ALICE, NO_SUCH_ETAG, der1, 1, 2, STORE_KEY_NONE, NULL, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "no credential"));
  g_assert_nonnull(strstr(error->message, ALICE));
  g_clear_error(&error);
  g_assert_null(out);
  g_assert_null(store_cred_get(db, ALICE, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 0);

  /* Unconditional: creates, and hands out the ETag that get reports. */
  e1 = put_if_ok(db, ALICE, NULL, der1, STORE_KEY_NONE, NULL);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e1);
  g_assert_cmpuint(cred->version, ==, 1);
  assert_last_change(db, 1, ALICE, STORE_CHANGE_CREDENTIAL);

  /* The right ETag: replaced, new ETag, next version, logged. */
  e2 = put_if_ok(db, ALICE, e1, der2, STORE_KEY_NONE, NULL);
  g_assert_cmpstr(e2, !=, e1);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e2);
  g_assert_cmpuint(cred->version, ==, 2);
  g_assert_true(g_bytes_equal(cred->cert_der, der2));
  assert_last_change(db, 2, ALICE, STORE_CHANGE_CREDENTIAL);

  /* A stale ETag, and the current ETag of another AOR, are both refused. */
  bob_etag = put_if_ok(db, "sip:bob@example.com", NULL, der1, STORE_KEY_NONE, NULL);
  g_assert_false(store_cred_put_if(db, ALICE, e1, der3, 1, 2, STORE_KEY_NONE, NULL, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "another ETag"));
  g_assert_nonnull(strstr(error->message, ALICE));
  g_clear_error(&error);
  g_assert_null(out);
  g_assert_false(
      store_cred_put_if(db, ALICE, bob_etag, der3, 1, 2, STORE_KEY_NONE, NULL, NULL, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_clear_error(&error);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e2);
  g_assert_cmpuint(cred->version, ==, 2);
  g_assert_true(g_bytes_equal(cred->cert_der, der2));
  assert_last_change(db, 3, "sip:bob@example.com", STORE_CHANGE_CREDENTIAL);

  /* Invalid input is refused before the condition matters. */
  g_assert_false(store_cred_put_if(db, ALICE, e2, der3, 5, 4, STORE_KEY_NONE, NULL, NULL, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);

  /* etag_out is optional. */
  g_assert_true(store_cred_put_if(db, ALICE, e2, der3, 1, 2, STORE_KEY_NONE, NULL, NULL, &error));
  g_assert_no_error(error);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, ALICE);
  g_assert_cmpuint(cred->version, ==, 3);
  g_assert_true(g_bytes_equal(cred->cert_der, der3));
}

static void
test_cred_put_if_server_held(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(14, 400);
  g_autoptr(StoreCred) cred = NULL;
  g_autofree char *e1 = NULL;
  g_autofree char *e2 = NULL;

  /* The condition sits in front of the wrap: the key of version 2 opens. */
  set_key(db, key);
  e1 = put_if_ok(db, ALICE, NULL, der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  e2 = put_if_ok(db, ALICE, e1, der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e2);
  g_assert_cmpuint(cred->version, ==, 2);
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
}

/* Rewrites the stored record of @aor with @updated as its update time. */
static void
raw_set_updated(const char *dir, const char *aor, gint64 updated)
{
  g_autoptr(GBytes) value = raw_cred(dir, aor);
  g_autoptr(StoreCred) c = g_new0(StoreCred, 1);
  g_autoptr(GBytes) blob = NULL;
  g_autofree char *key_id = NULL;
  g_autoptr(GVariant) rec = NULL;
  MDB_env *env;

  g_assert_true(gvariant_decode(value, TRUE, c, &blob, &key_id));
  rec = cred_record_v2(c->cert_der, c->not_before, c->not_after, updated, c->version, c->etag,
                       (guint8)c->key_kind, blob, key_id);
  env = raw_env_open(dir);
  raw_put_in(env, STORE_DBI_CREDENTIALS, FALSE, aor, g_variant_get_data(rec),
             g_variant_get_size(rec));
  mdb_env_close(env);
}

static void
test_cred_refresh(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(GBytes) der = fake_der(15, 500);
  g_autoptr(GBytes) before = NULL;
  g_autoptr(GBytes) after = NULL;
  g_autoptr(GBytes) blob_before = NULL;
  g_autoptr(GBytes) blob_after = NULL;
  g_autofree char *id_before = NULL;
  g_autofree char *id_after = NULL;
  g_autoptr(StoreCred) rb = g_new0(StoreCred, 1);
  g_autoptr(StoreCred) ra = g_new0(StoreCred, 1);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *e1 = NULL;
  g_autofree char *e2 = NULL;
  g_autofree char *e3 = NULL;
  char *out = NULL;
  guint64 seq;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, key);
  e1 = put_if_ok(db, ALICE, NULL, der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  store_db_free(db);
  /* An update time long past: a refresh that touched it would show. */
  raw_set_updated(fx->state, ALICE, 12345);
  before = raw_cred(fx->state, ALICE);

  db = open_db(fx->state, 0);
  set_key(db, key);
  seq = store_change_get_last_seq(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(seq, ==, 1);
  g_assert_true(store_cred_refresh(db, ALICE, e1, &e2, &error));
  g_assert_no_error(error);
  g_assert_nonnull(e2);
  g_assert_cmpstr(e2, !=, e1);
  /* Subscribers hear nothing of a refresh. */
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, seq);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e2);
  g_assert_cmpuint(cred->version, ==, 1);
  g_assert_cmpint(cred->updated, ==, 12345);
  g_assert_true(g_bytes_equal(cred->cert_der, der));
  g_assert_cmpint(cred->not_before, ==, 1);
  g_assert_cmpint(cred->not_after, ==, 2);
  g_assert_cmpint(cred->key_kind, ==, STORE_KEY_SERVER_HELD);
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));

  /* The old ETag is spent. */
  g_assert_false(store_cred_refresh(db, ALICE, e1, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "another ETag"));
  g_clear_error(&error);
  g_assert_null(out);
  /* A publication that is not there. */
  g_assert_false(store_cred_refresh(db, "sip:nobody@example.com", e2, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "no credential"));
  g_assert_nonnull(strstr(error->message, "sip:nobody@example.com"));
  g_clear_error(&error);
  g_assert_null(out);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, seq);
  store_db_free(db);

  /* On disk only the ETag differs: same wrapped blob (no re-wrap, which
   * would draw a new nonce), key id, version and times. Durable: read
   * after closing. */
  after = raw_cred(fx->state, ALICE);
  g_assert_true(gvariant_decode(before, TRUE, rb, &blob_before, &id_before));
  g_assert_true(gvariant_decode(after, TRUE, ra, &blob_after, &id_after));
  g_assert_cmpstr(rb->etag, ==, e1);
  g_assert_cmpstr(ra->etag, ==, e2);
  g_assert_true(g_bytes_equal(ra->cert_der, rb->cert_der));
  g_assert_cmpint(ra->not_before, ==, rb->not_before);
  g_assert_cmpint(ra->not_after, ==, rb->not_after);
  g_assert_cmpint(ra->updated, ==, rb->updated);
  g_assert_cmpuint(ra->version, ==, rb->version);
  g_assert_cmpint(ra->key_kind, ==, rb->key_kind);
  g_assert_true(g_bytes_equal(blob_after, blob_before));
  g_assert_cmpstr(id_after, ==, id_before);

  /* A refresh needs no master key: nothing is unwrapped. The key still
   * opens afterwards. */
  db = open_db(fx->state, 0);
  g_assert_true(store_cred_refresh(db, ALICE, e2, &e3, &error));
  g_assert_no_error(error);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e3);
  g_assert_null(cred->pkcs8);
  set_key(db, key);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e3);
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
  g_assert_cmpuint(cred->version, ==, 1);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, seq);

  /* A later modification still counts on from the version refresh kept. */
  g_free(e1);
  e1 = put_if_ok(db, ALICE, e3, der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  g_clear_pointer(&cred, store_cred_free);
  cred = get_cred(db, ALICE);
  g_assert_cmpuint(cred->version, ==, 2);
  g_assert_true(g_bytes_equal(cred->pkcs8, rsa->pkcs8_der));
  assert_last_change(db, seq + 1, ALICE, STORE_CHANGE_CREDENTIAL);
  store_db_free(db);
}

static void
test_cred_delete_if(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(16, 200);
  g_autoptr(StoreCred) cred = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *e1 = NULL;
  g_autofree char *bob_etag = NULL;

  e1 = put_if_ok(db, ALICE, NULL, der, STORE_KEY_NONE, NULL);
  bob_etag = put_if_ok(db, "sip:bob@example.com", NULL, der, STORE_KEY_NONE, NULL);

  /* Wrong ETag: refused, kept, not logged. */
  g_assert_false(store_cred_delete_if(db, ALICE, bob_etag, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "another ETag"));
  g_clear_error(&error);
  cred = get_cred(db, ALICE);
  g_assert_cmpstr(cred->etag, ==, e1);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 2);

  /* Right ETag: gone, logged as a revocation. */
  g_assert_true(store_cred_delete_if(db, ALICE, e1, &error));
  g_assert_no_error(error);
  g_assert_null(store_cred_get(db, ALICE, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);
  assert_last_change(db, 3, ALICE, STORE_CHANGE_REVOKED);

  /* Nothing left: with an ETag the publication is unknown (PRECONDITION),
   * without one there was simply nothing (NOT_FOUND). Neither is logged. */
  g_assert_false(store_cred_delete_if(db, ALICE, e1, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "no credential"));
  g_clear_error(&error);
  g_assert_false(store_cred_delete_if(db, ALICE, NULL, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error(&error);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 3);

  /* Unconditional, like store_cred_delete(). */
  g_assert_true(store_cred_delete_if(db, "sip:bob@example.com", NULL, &error));
  g_assert_no_error(error);
  assert_last_change(db, 4, "sip:bob@example.com", STORE_CHANGE_REVOKED);
}

/* Every conditional call with a wrong ETag leaves the record as it was, to
 * the byte, and logs nothing. */
static void
test_cred_if_mismatch_untouched(Fixture *fx, gconstpointer data)
{
  const TestRsaKey *rsa = test_rsa_key();
  g_autofree char *path = make_key_file(fx, "master.key");
  g_autoptr(StoreMasterKey) key = load_key(path);
  g_autoptr(GBytes) der = fake_der(17, 600);
  g_autoptr(GBytes) der2 = fake_der(18, 600);
  g_autoptr(GBytes) before = NULL;
  g_autoptr(GBytes) after = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *e1 = NULL;
  g_autofree char *stale = NULL;
  char *out = NULL;
  StoreDb *db;

  db = open_db(fx->state, 0);
  set_key(db, key);
  stale = put_if_ok(db, ALICE, NULL, der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  e1 = put_if_ok(db, ALICE, stale, der, STORE_KEY_SERVER_HELD, rsa->pkcs8_der);
  store_db_free(db);
  before = raw_cred(fx->state, ALICE);

  db = open_db(fx->state, 0);
  set_key(db, key);
  g_assert_false(store_cred_put_if(db, ALICE, stale, der2, 1, 2, STORE_KEY_SERVER_HELD,
                                   rsa->pkcs8_der, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_clear_error(&error);
  g_assert_false(store_cred_put_if(db, ALICE, "", der2, 1, 2, STORE_KEY_NONE, NULL, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_clear_error(&error);
  g_assert_false(store_cred_refresh(db, ALICE, stale, &out, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_clear_error(&error);
  g_assert_false(store_cred_delete_if(db, ALICE, stale, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_PRECONDITION);
  g_clear_error(&error);
  g_assert_null(out);
  g_assert_cmpuint(store_change_get_last_seq(db, NULL), ==, 2);
  store_db_free(db);

  after = raw_cred(fx->state, ALICE);
  g_assert_true(g_bytes_equal(after, before));
}

#define RACE_CHILDREN 8
#define RACE_EXIT_WON 0
#define RACE_EXIT_PRECONDITION 10
/* Where a racing child finds the read end of the starting pipe. */
#define RACE_GO_FD 3

/* The child half of /storage/cred/put-if-race: opens its own environment,
 * waits until the parent closes the starting pipe (all children wake on the
 * same EOF), then tries put_if with @etag. */
static int
put_if_race_child(const char *dir, const char *etag, const char *index)
{
  g_autoptr(StoreDb) db = NULL;
  g_autoptr(GError) error = NULL;
  guint seed = (guint)g_ascii_strtoull(index, NULL, 10);
  g_autoptr(GBytes) der = fake_der(100 + seed, 300);
  char c;
  ssize_t n;

  db = store_db_open(dir, 0, &error);
  if (db == NULL) {
    g_printerr("child %s: %s\n", index, error->message);
    return 1;
  }
  /* EOF also comes if the parent dies, so this cannot hang. */
  do
    n = read(RACE_GO_FD, &c, 1);
  while (n < 0 && errno == EINTR);
  close(RACE_GO_FD);
  if (store_cred_put_if(db, ALICE, etag, der, 1, 2, STORE_KEY_NONE, NULL, NULL, &error))
    return RACE_EXIT_WON;
  if (g_error_matches(error, STORE_ERROR, STORE_ERROR_PRECONDITION))
    return RACE_EXIT_PRECONDITION;
  g_printerr("child %s: %s\n", index, error->message);
  return 1;
}

/* Processes (as the CLI is) that all hold the same ETag: the check and the
 * write share one transaction, so exactly one of them wins. A check in a
 * transaction of its own lets several win, though not in every run. */
static void
test_cred_put_if_race(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GBytes) der = fake_der(19, 300);
  g_autoptr(GBytes) won = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(StoreCred) cred = NULL;
  g_autofree char *e1 = NULL;
  GPid pids[RACE_CHILDREN];
  const int target_fd = RACE_GO_FD;
  int go[2];
  int winner = -1;

  e1 = put_if_ok(db, ALICE, NULL, der, STORE_KEY_NONE, NULL);
  /* Close-on-exec: only the read end, mapped to RACE_GO_FD, reaches a child. */
  g_assert_true(g_unix_open_pipe(go, FD_CLOEXEC, &error));
  g_assert_no_error(error);
  for (int i = 0; i < RACE_CHILDREN; i++) {
    g_autofree char *index = g_strdup_printf("%d", i);
    const char *argv[] = {test_argv0, "--put-if-race-child", fx->state, e1, index, NULL};

    g_assert_true(g_spawn_async_with_pipes_and_fds(
        NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, -1,
        -1, -1, &go[0], &target_fd, 1, &pids[i], NULL, NULL, NULL, &error));
    g_assert_no_error(error);
  }
  close(go[0]);
  close(go[1]);
  for (int i = 0; i < RACE_CHILDREN; i++) {
    int status;

    g_assert_cmpint(waitpid(pids[i], &status, 0), ==, pids[i]);
    g_spawn_close_pid(pids[i]);
    g_assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == RACE_EXIT_WON) {
      g_assert_cmpint(winner, ==, -1);
      winner = i;
    } else {
      g_assert_cmpint(WEXITSTATUS(status), ==, RACE_EXIT_PRECONDITION);
    }
  }
  g_assert_cmpint(winner, >=, 0);

  cred = get_cred(db, ALICE);
  g_assert_cmpuint(cred->version, ==, 2);
  won = fake_der(100 + winner, 300);
  g_assert_true(g_bytes_equal(cred->cert_der, won));
  assert_last_change(db, 2, ALICE, STORE_CHANGE_CREDENTIAL);
}

/* ---- registrations ---- */

static StoreBinding *
binding_new(const char *contact, const char *instance, guint32 reg_id, const char *flow,
            const char *call_id, guint32 cseq, gint64 expires_at, float q)
{
  StoreBinding *b = g_new0(StoreBinding, 1);

  b->contact = g_strdup(contact);
  b->instance = g_strdup(instance);
  b->reg_id = reg_id;
  b->flow_token = g_strdup(flow);
  b->call_id = g_strdup(call_id);
  b->cseq = cseq;
  b->expires_at = expires_at;
  b->q = q;
  return b;
}

static GPtrArray *
bindings_new(void)
{
  return g_ptr_array_new_with_free_func((GDestroyNotify)store_binding_free);
}

/* Three bindings that use every field, including the extremes. */
static GPtrArray *
bindings_sample(void)
{
  GPtrArray *a = bindings_new();

  g_ptr_array_add(a, binding_new("sip:alice@192.0.2.1:5061;transport=tls",
                                 "\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\"", 1,
                                 "flow-7f3a", "a84b4c76e66710@pc33", 314159,
                                 G_GINT64_CONSTANT(4102444800), 0.7f));
  g_ptr_array_add(a, binding_new("sip:alice@[2001:db8::1]", "\"<urn:uuid:other>\"", G_MAXINT32,
                                 NULL, "second-call", G_MAXUINT32, 0, 1.0f));
  g_ptr_array_add(a, binding_new("sips:alice@desk.example.com", NULL, 0, "flow-x", "third", 0,
                                 1700000000, -1.0f));
  return a;
}

static void
assert_bindings_equal(GPtrArray *got, GPtrArray *want)
{
  g_assert_nonnull(got);
  g_assert_cmpuint(got->len, ==, want->len);
  for (guint i = 0; i < want->len; i++) {
    const StoreBinding *g = g_ptr_array_index(got, i);
    const StoreBinding *w = g_ptr_array_index(want, i);

    g_assert_cmpstr(g->contact, ==, w->contact);
    g_assert_cmpstr(g->instance, ==, w->instance);
    g_assert_cmpuint(g->reg_id, ==, w->reg_id);
    g_assert_cmpstr(g->flow_token, ==, w->flow_token);
    g_assert_cmpstr(g->call_id, ==, w->call_id);
    g_assert_cmpuint(g->cseq, ==, w->cseq);
    g_assert_cmpint(g->expires_at, ==, w->expires_at);
    g_assert_true(g->q == w->q); /* exactly: q is stored, not rounded */
  }
}

static GPtrArray *
reg_get(StoreDb *db, const char *aor)
{
  g_autoptr(GError) error = NULL;
  GPtrArray *got = store_reg_get(db, aor, &error);

  g_assert_no_error(error);
  g_assert_nonnull(got);
  return got;
}

static void
reg_put(StoreDb *db, const char *aor, GPtrArray *bindings)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(store_reg_put(db, aor, bindings, &error));
  g_assert_no_error(error);
}

static void
test_reg_put_get(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GPtrArray) want = bindings_sample();
  g_autoptr(GPtrArray) got = NULL;
  g_autoptr(GPtrArray) none = NULL;
  g_autoptr(GError) error = NULL;

  /* An AOR without bindings is an empty array, not an error. */
  none = reg_get(db, "sip:alice@example.com");
  g_assert_cmpuint(none->len, ==, 0);

  reg_put(db, "sip:alice@example.com", want);
  got = reg_get(db, "sip:alice@example.com");
  assert_bindings_equal(got, want);
  g_clear_pointer(&none, g_ptr_array_unref);
  none = reg_get(db, "sip:bob@example.com");
  g_assert_cmpuint(none->len, ==, 0);

  /* Registrations are not credential changes: nothing in the change log. */
  g_assert_cmpuint(store_change_get_last_seq(db, &error), ==, 0);
  g_assert_no_error(error);
}

static void
test_reg_replace_remove(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GPtrArray) three = bindings_sample();
  g_autoptr(GPtrArray) one = bindings_new();
  g_autoptr(GPtrArray) empty = bindings_new();
  g_autoptr(GPtrArray) got = NULL;
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;

  reg_put(db, "sip:alice@example.com", three);
  reg_put(db, "sip:bob@example.com", three);
  g_ptr_array_add(
      one, binding_new("sip:alice@198.51.100.9", NULL, 0, NULL, "new-call", 2, 1800000000, 0.5f));
  reg_put(db, "sip:alice@example.com", one);
  got = reg_get(db, "sip:alice@example.com");
  assert_bindings_equal(got, one);
  g_clear_pointer(&got, g_ptr_array_unref);
  got = reg_get(db, "sip:bob@example.com");
  assert_bindings_equal(got, three);
  g_clear_pointer(&got, g_ptr_array_unref);

  /* An empty array removes the AOR, and removing it again is no error. */
  reg_put(db, "sip:alice@example.com", empty);
  got = reg_get(db, "sip:alice@example.com");
  g_assert_cmpuint(got->len, ==, 0);
  list = store_reg_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 1);
  g_assert_cmpstr(g_ptr_array_index(list, 0), ==, "sip:bob@example.com");
  reg_put(db, "sip:alice@example.com", empty);
  reg_put(db, "sip:nobody@example.com", empty);
  g_clear_pointer(&list, g_ptr_array_unref);
  list = store_reg_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 1);
}

static void
test_reg_list(Fixture *fx, gconstpointer data)
{
  static const char *const aors[] = {"sip:zed@example.com", "sip:alice@example.com",
                                     "sip:mike@example.org", "sip:bob@example.com"};
  static const char *const sorted[] = {"sip:alice@example.com", "sip:bob@example.com",
                                       "sip:mike@example.org", "sip:zed@example.com"};
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GPtrArray) bindings = bindings_sample();
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GPtrArray) creds = NULL;
  g_autoptr(GBytes) der = fake_der(1, 50);
  g_autoptr(GError) error = NULL;

  list = store_reg_list(db, &error);
  g_assert_no_error(error);
  g_assert_nonnull(list);
  g_assert_cmpuint(list->len, ==, 0);
  g_clear_pointer(&list, g_ptr_array_unref);

  put_cert(db, "sip:cert-only@example.com", der, 1, 2);
  for (guint i = 0; i < G_N_ELEMENTS(aors); i++)
    reg_put(db, aors[i], bindings);
  list = store_reg_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, G_N_ELEMENTS(sorted));
  for (guint i = 0; i < G_N_ELEMENTS(sorted); i++)
    g_assert_cmpstr(g_ptr_array_index(list, i), ==, sorted[i]);
  /* The tables are separate. */
  creds = store_cred_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(creds->len, ==, 1);
}

static void
test_reg_invalid(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GPtrArray) good = bindings_sample();
  g_autoptr(GPtrArray) got = NULL;
  g_autoptr(GPtrArray) many = bindings_new();
  g_autoptr(GPtrArray) with_null = bindings_new();
  g_autoptr(GError) error = NULL;
  g_autofree char *long_contact = NULL;
  g_autofree char *long_callid = NULL;
  g_autofree char *max_contact = NULL;
  const char *aor = "sip:alice@example.com";
  struct {
    const char *name;
    StoreBinding b;
  } bad[] = {
      {"NULL contact", {NULL, NULL, 0, NULL, (char *)"c", 1, 1, -1}},
      {"empty contact", {(char *)"", NULL, 0, NULL, (char *)"c", 1, 1, -1}},
      {"control char", {(char *)"sip:a@b\r\nX: y", NULL, 0, NULL, (char *)"c", 1, 1, -1}},
      {"bad UTF-8", {(char *)"sip:\xff@b", NULL, 0, NULL, (char *)"c", 1, 1, -1}},
      {"NULL Call-ID", {(char *)"sip:a@b", NULL, 0, NULL, NULL, 1, 1, -1}},
      {"empty instance", {(char *)"sip:a@b", (char *)"", 0, NULL, (char *)"c", 1, 1, -1}},
      {"empty flow", {(char *)"sip:a@b", NULL, 0, (char *)"", (char *)"c", 1, 1, -1}},
      {"q > 1", {(char *)"sip:a@b", NULL, 0, NULL, (char *)"c", 1, 1, 1.5f}},
      {"q < 0", {(char *)"sip:a@b", NULL, 0, NULL, (char *)"c", 1, 1, -0.5f}},
      {"q NaN", {(char *)"sip:a@b", NULL, 0, NULL, (char *)"c", 1, 1, NAN}},
      {"reg-id alone", {(char *)"sip:a@b", NULL, 1, NULL, (char *)"c", 1, 1, -1}},
      {"reg-id 2^31", {(char *)"sip:a@b", (char *)"i", 0x80000000u, NULL, (char *)"c", 1, 1, -1}},
      {"negative expiry", {(char *)"sip:a@b", NULL, 0, NULL, (char *)"c", 1, -1, -1}},
      {"long contact", {NULL, NULL, 0, NULL, (char *)"c", 1, 1, -1}},
      {"long Call-ID", {(char *)"sip:a@b", NULL, 0, NULL, NULL, 1, 1, -1}},
  };

  long_contact = g_strnfill(STORE_REG_CONTACT_MAX + 1, 'a');
  long_callid = g_strnfill(STORE_REG_FIELD_MAX + 1, 'c');
  bad[G_N_ELEMENTS(bad) - 2].b.contact = long_contact;
  bad[G_N_ELEMENTS(bad) - 1].b.call_id = long_callid;

  reg_put(db, aor, good);
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GPtrArray) one = g_ptr_array_new();

    g_test_message("%s", bad[i].name);
    /* A bad binding anywhere refuses the whole write. */
    g_ptr_array_add(one, g_ptr_array_index(good, 0));
    g_ptr_array_add(one, &bad[i].b);
    g_assert_false(store_reg_put(db, aor, one, &error));
    g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, aor));
    g_clear_error(&error);
  }
  g_ptr_array_add(with_null, NULL);
  g_assert_false(store_reg_put(db, aor, with_null, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);

  for (guint i = 0; i <= STORE_REG_BINDINGS_MAX; i++) {
    g_autofree char *c = g_strdup_printf("sip:alice@host%u.example.com", i);
    g_ptr_array_add(many, binding_new(c, NULL, 0, NULL, "call", i, 100, -1));
  }
  g_assert_false(store_reg_put(db, aor, many, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);

  g_assert_false(store_reg_put(db, "", good, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_null(store_reg_get(db, "", &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_INVALID);
  g_clear_error(&error);

  /* Nothing was written by the refused calls. */
  got = reg_get(db, aor);
  assert_bindings_equal(got, good);
  g_clear_pointer(&got, g_ptr_array_unref);

  /* The limits themselves are accepted. */
  g_ptr_array_remove_index(many, many->len - 1);
  max_contact = g_strnfill(STORE_REG_CONTACT_MAX, 'a');
  g_free(((StoreBinding *)g_ptr_array_index(many, 0))->contact);
  ((StoreBinding *)g_ptr_array_index(many, 0))->contact = g_strdup(max_contact);
  ((StoreBinding *)g_ptr_array_index(many, 1))->q = 0.0f;
  reg_put(db, aor, many);
  got = reg_get(db, aor);
  assert_bindings_equal(got, many);
}

/* A registrations record in format 1 holding @contact and @q. */
static GVariant *
reg_record_v1(const char *contact, double q, gboolean empty)
{
  GVariantBuilder b;

  g_variant_builder_init(&b, G_VARIANT_TYPE(STORE_REG_BODY_TYPE_V1));
  if (!empty)
    g_variant_builder_add(&b, "(ssussuxd)", contact, "", 0, "", "call", 1, (gint64)5, q);
  return g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)STORE_REG_RECORD_VERSION, g_variant_builder_end(&b)));
}

static void
test_reg_corrupt(Fixture *fx, gconstpointer data)
{
  static const char garbage[] = "\x01\x02not a record at all";
  static const char *const bad[] = {"sip:garbage@example.com", "sip:future@example.com",
                                    "sip:typed@example.com",   "sip:nocontact@example.com",
                                    "sip:bigq@example.com",    "sip:empty@example.com",
                                    "sip:double@example.com"};
  g_autoptr(GPtrArray) good = bindings_sample();
  g_autoptr(GPtrArray) none = bindings_new();
  g_autoptr(GVariant) future = NULL;
  g_autoptr(GVariant) typed = NULL;
  g_autoptr(GVariant) nocontact = reg_record_v1("", -1, FALSE);
  g_autoptr(GVariant) bigq = reg_record_v1("sip:a@b", 2.0, FALSE);
  g_autoptr(GVariant) empty = reg_record_v1(NULL, -1, TRUE);
  g_autoptr(GVariant) dbl = reg_record_v1("sip:a@b", 0.1, FALSE); /* not a float */
  g_autoptr(GVariant) fine = reg_record_v1("sip:a@b", 0.5, FALSE);
  g_autoptr(GPtrArray) got = NULL;
  g_autoptr(GError) error = NULL;
  MDB_env *env;
  StoreDb *db;

  db = open_db(fx->state, 0);
  reg_put(db, "sip:good@example.com", good);
  store_db_free(db);

  future = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)77, g_variant_new_string("from the future")));
  typed = g_variant_ref_sink(
      g_variant_new("(qv)", (guint16)STORE_REG_RECORD_VERSION, g_variant_new_uint32(5)));
  env = raw_env_open(fx->state);
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[0], garbage, sizeof garbage);
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[1], g_variant_get_data(future),
             g_variant_get_size(future));
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[2], g_variant_get_data(typed),
             g_variant_get_size(typed));
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[3], g_variant_get_data(nocontact),
             g_variant_get_size(nocontact));
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[4], g_variant_get_data(bigq),
             g_variant_get_size(bigq));
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[5], g_variant_get_data(empty),
             g_variant_get_size(empty));
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, bad[6], g_variant_get_data(dbl),
             g_variant_get_size(dbl));
  raw_put_in(env, STORE_DBI_REGISTRATIONS, FALSE, "sip:fine@example.com", g_variant_get_data(fine),
             g_variant_get_size(fine));
  mdb_env_close(env);

  db = open_db(fx->state, 0);
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_test_message("%s", bad[i]);
    g_assert_null(store_reg_get(db, bad[i], &error));
    g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
    g_assert_nonnull(strstr(error->message, bad[i]));
    g_clear_error(&error);
  }
  /* A hand-made record in the documented format reads back. */
  got = reg_get(db, "sip:fine@example.com");
  g_assert_cmpuint(got->len, ==, 1);
  g_assert_cmpstr(((StoreBinding *)g_ptr_array_index(got, 0))->contact, ==, "sip:a@b");
  g_assert_null(((StoreBinding *)g_ptr_array_index(got, 0))->instance);
  g_assert_true(((StoreBinding *)g_ptr_array_index(got, 0))->q == 0.5f);
  g_clear_pointer(&got, g_ptr_array_unref);

  /* The check names the table and the first damaged AOR. */
  g_assert_false(store_db_check(db, &error));
  g_assert_error(error, STORE_ERROR, STORE_ERROR_CORRUPT);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, STORE_DBI_REGISTRATIONS));
  g_assert_nonnull(strstr(error->message, "sip:bigq@example.com"));
  g_clear_error(&error);

  /* Soft state: a damaged record is replaced by the next registration, or
   * removed; then the store checks clean. */
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++)
    reg_put(db, bad[i], i % 2 == 0 ? good : none);
  got = reg_get(db, bad[0]);
  assert_bindings_equal(got, good);
  g_clear_pointer(&got, g_ptr_array_unref);
  got = reg_get(db, "sip:good@example.com");
  assert_bindings_equal(got, good);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  store_db_free(db);
}

static void
test_reg_reopen(Fixture *fx, gconstpointer data)
{
  g_autoptr(GPtrArray) want = bindings_sample();
  g_autoptr(GPtrArray) got = NULL;
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GError) error = NULL;
  StoreDb *db;

  db = open_db(fx->state, 0);
  reg_put(db, "sip:alice@example.com", want);
  store_db_free(db);

  db = open_db(fx->state, 0);
  got = reg_get(db, "sip:alice@example.com");
  assert_bindings_equal(got, want);
  list = store_reg_list(db, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(list->len, ==, 1);
  store_db_free(db);
}

static void
test_reg_check_stats(Fixture *fx, gconstpointer data)
{
  g_autoptr(StoreDb) db = open_db(fx->state, 0);
  g_autoptr(GPtrArray) bindings = bindings_sample();
  g_autoptr(GPtrArray) empty = bindings_new();
  g_autoptr(GError) error = NULL;
  StoreStats st;

  reg_put(db, "sip:a@example.com", bindings);
  reg_put(db, "sip:b@example.com", bindings);
  reg_put(db, "sip:c@example.com", bindings);
  reg_put(db, "sip:c@example.com", empty);
  g_assert_true(store_db_check(db, &error));
  g_assert_no_error(error);
  g_assert_true(store_db_get_stats(db, &st, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(st.n_registrations, ==, 2);
  g_assert_cmpuint(st.n_users + st.n_credentials + st.n_changes, ==, 0);
  g_assert_cmpuint(st.last_change, ==, 0);
}

/* A store from before schema versions gains a usable registrations table. */
static void
test_reg_schema0(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der(3, 120);
  g_autoptr(GPtrArray) want = bindings_sample();
  g_autoptr(GPtrArray) got = NULL;
  g_autoptr(StoreDb) db = NULL;

  make_schema0_store(fx->state, FALSE, der);
  db = open_db(fx->state, 0);
  got = reg_get(db, "sip:alice@example.com");
  g_assert_cmpuint(got->len, ==, 0);
  g_clear_pointer(&got, g_ptr_array_unref);
  reg_put(db, "sip:alice@example.com", want);
  got = reg_get(db, "sip:alice@example.com");
  assert_bindings_equal(got, want);
}

int
main(int argc, char **argv)
{
  if (argc == 3 && strcmp(argv[1], "--two-processes-child") == 0)
    return two_processes_child(argv[2]);
  if (argc == 5 && strcmp(argv[1], "--put-if-race-child") == 0)
    return put_if_race_child(argv[2], argv[3], argv[4]);
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
  ADD("/storage/db/map-cap", test_db_map_cap);
  ADD("/storage/db/map-cap-reuse", test_db_map_cap_reuse);
  ADD("/storage/db/map-cap-larger-file", test_db_map_cap_larger_file);
  ADD("/storage/db/modes", test_db_modes);
  ADD("/storage/db/open-errors", test_db_open_errors);
  ADD("/storage/db/two-handles", test_db_two_handles);
  ADD("/storage/db/two-processes", test_db_two_processes);
  ADD("/storage/key/generate-load", test_key_generate_load);
  ADD("/storage/key/mode-refused", test_key_mode_refused);
  ADD("/storage/key/size-refused", test_key_size_refused);
  ADD("/storage/key/wrong-refused", test_key_wrong_refused);
  ADD("/storage/cred/server-held", test_cred_server_held);
  ADD("/storage/cred/user-encrypted", test_cred_user_encrypted);
  ADD("/storage/cred/key-invalid", test_cred_key_invalid);
  ADD("/storage/cred/tampered", test_cred_tampered);
  ADD("/storage/cred/old-format", test_cred_old_format);
  ADD("/storage/cred/no-key-bytes", test_cred_no_key_bytes);
  ADD("/storage/cred/decode-matches-gvariant", test_cred_decode_matches);
  ADD("/storage/cred/decode-damaged", test_cred_decode_damaged);
  ADD("/storage/cred/put-if", test_cred_put_if);
  ADD("/storage/cred/put-if-server-held", test_cred_put_if_server_held);
  ADD("/storage/cred/put-if-race", test_cred_put_if_race);
  ADD("/storage/cred/refresh", test_cred_refresh);
  ADD("/storage/cred/delete-if", test_cred_delete_if);
  ADD("/storage/cred/if-mismatch-untouched", test_cred_if_mismatch_untouched);
  ADD("/storage/db/rekey", test_db_rekey);
  ADD("/storage/db/rekey-atomic", test_db_rekey_atomic);
  ADD("/storage/db/rekey-other-handle", test_db_rekey_other_handle);
  ADD("/storage/change/log", test_change_log);
  ADD("/storage/change/retention", test_change_log_retention);
  ADD("/storage/change/two-handles", test_change_log_two_handles);
  ADD("/storage/change/corrupt", test_change_log_corrupt);
  ADD("/storage/db/backup", test_db_backup);
  ADD("/storage/db/check", test_db_check);
  ADD("/storage/db/stats", test_db_stats);
  ADD("/storage/db/migrate-schema0", test_db_migrate_schema0);
  ADD("/storage/db/migrate-schema1", test_db_migrate_schema1);
  ADD("/storage/db/migrate-damaged", test_db_migrate_damaged);
  ADD("/storage/reg/put-get", test_reg_put_get);
  ADD("/storage/reg/replace-remove", test_reg_replace_remove);
  ADD("/storage/reg/list", test_reg_list);
  ADD("/storage/reg/invalid", test_reg_invalid);
  ADD("/storage/reg/corrupt", test_reg_corrupt);
  ADD("/storage/reg/reopen", test_reg_reopen);
  ADD("/storage/reg/check-stats", test_reg_check_stats);
  ADD("/storage/reg/schema0", test_reg_schema0);
#undef ADD

  return g_test_run();
}
