#define G_LOG_DOMAIN "sipcred-test-changes"

/* Tests of server/changes: a change written to the store by anyone reaches
 * the subscribers of that AOR, once, and old history is not replayed. A
 * real store in a temporary directory; a fake CorePort records NOTIFYs. */

#include <glib/gstdio.h>
#include <string.h>

#include "core/core.h"
#include "server/changes.h"
#include "storage/store.h"

typedef struct {
  gpointer sub;
  GBytes *body;
} RecNotify;

typedef struct {
  char *dir;
  StoreDb *store;
  CoreService *core;
  GPtrArray *notifies; /* RecNotify */
  guint n_responses;
  guint last_status;
} Fixture;

static void
rec_notify_free(gpointer data)
{
  RecNotify *n = data;
  g_bytes_unref(n->body);
  g_free(n);
}

static void
fake_respond(gpointer txn, const CoreResponse *resp, gpointer user_data)
{
  Fixture *fx = user_data;
  fx->n_responses++;
  fx->last_status = resp->status;
}

static void
fake_notify(gpointer sub, const CoreNotify *notify, gpointer user_data)
{
  Fixture *fx = user_data;
  RecNotify *n = g_new0(RecNotify, 1);
  n->sub = sub;
  n->body = g_bytes_new(g_bytes_get_data(notify->body, NULL), g_bytes_get_size(notify->body));
  g_ptr_array_add(fx->notifies, n);
}

static gint64
fake_now(gpointer user_data)
{
  return g_get_real_time() / G_USEC_PER_SEC;
}

static const CorePort fake_port = {
    .respond = fake_respond,
    .notify = fake_notify,
    .now = fake_now,
};

static const char *const domains[] = {"example.com", NULL};

#define SUB_ALICE GUINT_TO_POINTER(0xa1)
#define SUB_BOB GUINT_TO_POINTER(0xb0)

static void
fx_setup(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  CoreConfig cfg;

  fx->dir = g_dir_make_tmp("sipcred-test-changes-XXXXXX", &error);
  g_assert_no_error(error);
  fx->store = store_db_open(fx->dir, 0, &error);
  g_assert_no_error(error);
  fx->notifies = g_ptr_array_new_with_free_func(rec_notify_free);
  core_config_init_defaults(&cfg);
  cfg.domains = domains;
  fx->core = core_service_new(&cfg, fx->store, &fake_port, fx);
}

static void
fx_teardown(Fixture *fx, gconstpointer data)
{
  g_clear_pointer(&fx->core, core_service_free);
  g_clear_pointer(&fx->store, store_db_free);
  g_ptr_array_unref(fx->notifies);
  /* LMDB's files: data.mdb and lock.mdb. */
  g_autoptr(GDir) dir = g_dir_open(fx->dir, 0, NULL);
  const char *name;
  while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
    g_autofree char *path = g_build_filename(fx->dir, name, NULL);
    g_unlink(path);
  }
  g_rmdir(fx->dir);
  g_free(fx->dir);
}

static GBytes *
fake_der(const char *tag)
{
  /* The core and the store do not parse certificates. */
  g_autofree char *s = g_strdup_printf("0\x82-%s-certificate", tag);
  return g_bytes_new(s, strlen(s));
}

static void
put_cert(StoreDb *store, const char *aor, const char *tag)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) der = fake_der(tag);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;

  g_assert_true(store_cred_put_cert(store, aor, der, now - 60, now + 86400, &error));
  g_assert_no_error(error);
}

static void
put_user(StoreDb *store, const char *aor)
{
  g_autoptr(GError) error = NULL;
  StoreUser user = {
      .aor = (char *)aor,
      .realm = (char *)"example.com",
      .ha1_sha256 = (char *)"0000000000000000000000000000000000000000000000000000000000000000",
      .ha1_md5 = (char *)"00000000000000000000000000000000",
      .flags = STORE_USER_ENABLED,
  };

  g_assert_true(store_user_put(store, &user, &error));
  g_assert_no_error(error);
}

/* Subscribes @sub to the certificate of @aor and completes the initial
 * NOTIFY. */
static void
subscribe(Fixture *fx, gpointer sub, const char *aor)
{
  CoreSubscribeInfo info = {
      .event = "certificate",
      .request_uri = aor,
      .to_uri = aor,
      .from_uri = "sip:watcher@example.net",
      .has_expires = TRUE,
      .expires = 3600,
      .accept = "application/pkix-cert",
  };
  guint before = fx->notifies->len;

  core_subscribe(fx->core, GUINT_TO_POINTER(1), sub, &info);
  g_assert_cmpuint(fx->last_status, ==, 200);
  g_assert_cmpuint(fx->notifies->len, ==, before + 1);
  core_notify_done(fx->core, sub, 200);
  g_ptr_array_set_size(fx->notifies, 0);
}

/* Takes the one NOTIFY sent so far, which must be to @sub with @der (NULL:
 * an empty body), and completes it. */
static void
assert_one_notify(Fixture *fx, gpointer sub, GBytes *der)
{
  RecNotify *n;

  g_assert_cmpuint(fx->notifies->len, ==, 1);
  n = g_ptr_array_index(fx->notifies, 0);
  g_assert_true(n->sub == sub);
  if (der != NULL)
    g_assert_true(g_bytes_equal(n->body, der));
  else
    g_assert_cmpuint(g_bytes_get_size(n->body), ==, 0);
  core_notify_done(fx->core, sub, 200);
  g_ptr_array_set_size(fx->notifies, 0);
}

static void
test_poll(Fixture *fx, gconstpointer data)
{
  g_autoptr(SrvChangeTail) tail = NULL;
  g_autoptr(GBytes) alice3 = fake_der("alice3");
  g_autoptr(GError) error = NULL;
  guint64 start;

  /* History from before the tail: not news. */
  put_cert(fx->store, "sip:alice@example.com", "alice1");
  put_cert(fx->store, "sip:bob@example.com", "bob1");
  subscribe(fx, SUB_ALICE, "sip:alice@example.com");
  subscribe(fx, SUB_BOB, "sip:bob@example.com");
  start = store_change_get_last_seq(fx->store, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(start, >=, 2);

  tail = srv_change_tail_new(fx->store, fx->core, 60000);
  g_assert_cmpuint(srv_change_tail_get_last_seq(tail), ==, start);
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, 0);
  g_assert_cmpuint(fx->notifies->len, ==, 0);

  /* Two writes of alice's credential, a user change and a credential nobody
   * watches: alice's watcher gets one NOTIFY with the newest certificate. */
  put_cert(fx->store, "sip:alice@example.com", "alice2");
  put_user(fx->store, "sip:alice@example.com");
  put_cert(fx->store, "sip:alice@example.com", "alice3");
  put_cert(fx->store, "sip:carol@example.com", "carol1");
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, 4);
  assert_one_notify(fx, SUB_ALICE, alice3);
  g_assert_cmpuint(srv_change_tail_get_last_seq(tail), ==, start + 4);

  /* A user change alone notifies nobody. */
  put_user(fx->store, "sip:bob@example.com");
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, 1);
  g_assert_cmpuint(fx->notifies->len, ==, 0);

  /* A revocation: bob's watcher gets an empty body (RFC 6072 section 7.9). */
  g_assert_true(store_cred_delete(fx->store, "sip:bob@example.com", &error));
  g_assert_no_error(error);
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, 1);
  assert_one_notify(fx, SUB_BOB, NULL);

  /* Nothing new, nothing sent. */
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, 0);
  g_assert_cmpuint(fx->notifies->len, ==, 0);
}

static void
test_many(Fixture *fx, gconstpointer data)
{
  g_autoptr(SrvChangeTail) tail = NULL;
  g_autoptr(GBytes) last = fake_der("alice-last");
  guint n = 600; /* more than one batch of the store's list */

  subscribe(fx, SUB_ALICE, "sip:alice@example.com");
  tail = srv_change_tail_new(fx->store, fx->core, 60000);
  for (guint i = 0; i < n; i++) {
    g_autofree char *aor = g_strdup_printf("sip:user%u@example.com", i);
    put_cert(fx->store, aor, "x");
  }
  put_cert(fx->store, "sip:alice@example.com", "alice-last");
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, n + 1);
  assert_one_notify(fx, SUB_ALICE, last);
}

static void
run_until_notify(Fixture *fx, guint max_ms)
{
  gint64 deadline = g_get_monotonic_time() + (gint64)max_ms * 1000;

  while (fx->notifies->len == 0 && g_get_monotonic_time() < deadline)
    if (!g_main_context_iteration(NULL, FALSE))
      g_usleep(2000);
}

static void
test_timer(Fixture *fx, gconstpointer data)
{
  SrvChangeTail *tail;
  g_autoptr(GBytes) alice2 = fake_der("alice2");

  subscribe(fx, SUB_ALICE, "sip:alice@example.com");
  tail = srv_change_tail_new(fx->store, fx->core, 10);
  put_cert(fx->store, "sip:alice@example.com", "alice2");
  /* The timer on the default main context finds it on its own. */
  run_until_notify(fx, 5000);
  assert_one_notify(fx, SUB_ALICE, alice2);

  /* After free, the timer is gone. */
  srv_change_tail_free(tail);
  put_cert(fx->store, "sip:alice@example.com", "alice3");
  run_until_notify(fx, 100);
  g_assert_cmpuint(fx->notifies->len, ==, 0);
}

/* The writer in another process, as sipcred is while the daemon runs. */
static void
test_other_process(Fixture *fx, gconstpointer data)
{
  g_autoptr(SrvChangeTail) tail = NULL;
  g_autoptr(GBytes) der = fake_der("from-child");
  const char *dir = g_getenv("SIPCRED_TEST_CHANGES_DIR");

  if (dir != NULL) {
    /* The child: its own environment on the parent's store. */
    g_autoptr(GError) error = NULL;
    g_autoptr(StoreDb) store = store_db_open(dir, 0, &error);
    g_assert_no_error(error);
    put_cert(store, "sip:alice@example.com", "from-child");
    return;
  }
  subscribe(fx, SUB_ALICE, "sip:alice@example.com");
  tail = srv_change_tail_new(fx->store, fx->core, 60000);
  g_setenv("SIPCRED_TEST_CHANGES_DIR", fx->dir, TRUE);
  g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDERR);
  g_unsetenv("SIPCRED_TEST_CHANGES_DIR");
  g_test_trap_assert_passed();
  g_assert_cmpuint(srv_change_tail_poll(tail), ==, 1);
  assert_one_notify(fx, SUB_ALICE, der);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define ADD(path, func) g_test_add(path, Fixture, NULL, fx_setup, func, fx_teardown)
  ADD("/server/changes/poll", test_poll);
  ADD("/server/changes/many", test_many);
  ADD("/server/changes/timer", test_timer);
  ADD("/server/changes/other-process", test_other_process);
#undef ADD
  return g_test_run();
}
