#define G_LOG_DOMAIN "sipcred-test-ratelimit"

/* Unit tests of core/ratelimit.c (token buckets in a bounded table) and of
 * the request rate limits the service applies: SUBSCRIBE per source and per
 * target AOR, REGISTER per authenticated user. The service tests drive the
 * core through a fake CorePort with a fake clock over a real LMDB store. */

#include <glib/gstdio.h>
#include <string.h>

#include "core/core.h"
#include "core/ratelimit.h"
#include "storage/store.h"
#include "tests/common/testutil.h"

#define T0 1700000000

/* ---- the buckets ---- */

static void
test_bucket_burst_and_refill(void)
{
  g_autoptr(CoreRatelimit) rl = core_ratelimit_new(1, 3, 100);
  guint retry = 99;

  for (guint i = 0; i < 3; i++)
    g_assert_true(core_ratelimit_take(rl, "a", T0, &retry));
  g_assert_cmpuint(retry, ==, 0);
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "a"), ==, 0);
  g_assert_false(core_ratelimit_take(rl, "a", T0, &retry));
  g_assert_cmpuint(retry, ==, 1);
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "a"), ==, 1);
  /* Another key has its own bucket. */
  g_assert_true(core_ratelimit_take(rl, "b", T0, &retry));
  /* One second later one token is back, not more. */
  g_assert_true(core_ratelimit_take(rl, "a", T0 + 1, &retry));
  g_assert_false(core_ratelimit_take(rl, "a", T0 + 1, &retry));
  g_assert_cmpuint(retry, ==, 1);
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "a"), ==, 2);
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "b"), ==, 0);
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "unknown"), ==, 0);
  /* Long idle refills to the burst, never above. */
  for (guint i = 0; i < 3; i++)
    g_assert_true(core_ratelimit_take(rl, "a", T0 + 1000, NULL));
  g_assert_false(core_ratelimit_take(rl, "a", T0 + 1000, NULL));
  /* A clock that goes back refills nothing. */
  g_assert_false(core_ratelimit_take(rl, "a", T0 + 10, &retry));
  g_assert_cmpuint(retry, >=, 1);
}

/* A bucket that has refilled starts a new flood episode (its first refusal
 * is logged again), whether pruning dropped it or not. */
static void
test_bucket_refusals(void)
{
  g_autoptr(CoreRatelimit) rl = core_ratelimit_new(1, 1, 100);

  /* Two older buckets: pruning (two per request) drops them, not "a". */
  const char *keys[] = {"b1", "b2", "a"};
  for (guint i = 0; i < G_N_ELEMENTS(keys); i++) {
    g_assert_true(core_ratelimit_take(rl, keys[i], T0, NULL));
    g_assert_false(core_ratelimit_take(rl, keys[i], T0, NULL));
  }
  g_assert_false(core_ratelimit_take(rl, "a", T0, NULL));
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "a"), ==, 2);
  g_assert_true(core_ratelimit_take(rl, "a", T0 + 5, NULL));
  g_assert_cmpuint(core_ratelimit_get_size(rl), ==, 1);
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "a"), ==, 0);
  g_assert_false(core_ratelimit_take(rl, "a", T0 + 5, NULL));
  g_assert_cmpuint(core_ratelimit_get_refusals(rl, "a"), ==, 1);
}

static void
test_bucket_fractional(void)
{
  /* One token per 5 s. */
  g_autoptr(CoreRatelimit) rl = core_ratelimit_new(0.2, 1, 100);
  guint retry = 0;

  g_assert_true(core_ratelimit_take(rl, "u", T0, &retry));
  g_assert_false(core_ratelimit_take(rl, "u", T0, &retry));
  g_assert_cmpuint(retry, ==, 5);
  g_assert_false(core_ratelimit_take(rl, "u", T0 + 4, &retry));
  g_assert_cmpuint(retry, ==, 1);
  g_assert_true(core_ratelimit_take(rl, "u", T0 + 5, &retry));
  /* Retry-After is whole seconds, rounded up: 1/3 per s needs 3 s. */
  g_autoptr(CoreRatelimit) third = core_ratelimit_new(1.0 / 3, 1, 100);
  g_assert_true(core_ratelimit_take(third, "u", T0, NULL));
  g_assert_false(core_ratelimit_take(third, "u", T0, &retry));
  g_assert_cmpuint(retry, ==, 3);
  g_assert_false(core_ratelimit_take(third, "u", T0 + 2, &retry));
  g_assert_cmpuint(retry, ==, 1);
  g_assert_true(core_ratelimit_take(third, "u", T0 + 3, NULL));
}

static void
test_bucket_off(void)
{
  g_autoptr(CoreRatelimit) zero_rate = core_ratelimit_new(0, 10, 100);
  g_autoptr(CoreRatelimit) zero_burst = core_ratelimit_new(5, 0, 100);
  g_autoptr(CoreRatelimit) on = core_ratelimit_new(1, 1, 100);

  for (guint i = 0; i < 1000; i++) {
    g_assert_true(core_ratelimit_take(zero_rate, "k", T0, NULL));
    g_assert_true(core_ratelimit_take(zero_burst, "k", T0, NULL));
    g_assert_true(core_ratelimit_take(on, NULL, T0, NULL)); /* no key: no limit */
  }
  g_assert_cmpuint(core_ratelimit_get_size(zero_rate), ==, 0);
  g_assert_cmpuint(core_ratelimit_get_size(zero_burst), ==, 0);
  g_assert_cmpuint(core_ratelimit_get_size(on), ==, 0);
}

static void
test_bucket_bounded(void)
{
  g_autoptr(CoreRatelimit) rl = core_ratelimit_new(1, 2, 8);

  /* A limited key stays limited while a few others come and go. */
  g_assert_true(core_ratelimit_take(rl, "victim", T0, NULL));
  g_assert_true(core_ratelimit_take(rl, "victim", T0, NULL));
  g_assert_false(core_ratelimit_take(rl, "victim", T0, NULL));
  for (guint i = 0; i < 5; i++) {
    g_autofree char *key = g_strdup_printf("other-%u", i);
    g_assert_true(core_ratelimit_take(rl, key, T0, NULL));
  }
  g_assert_false(core_ratelimit_take(rl, "victim", T0, NULL));

  /* An attacker choosing keys never grows the table past its cap, and a key
   * never seen is never refused. */
  for (guint i = 0; i < 10000; i++) {
    g_autofree char *key = g_strdup_printf("attacker-%u", i);
    g_assert_true(core_ratelimit_take(rl, key, T0, NULL));
    g_assert_cmpuint(core_ratelimit_get_size(rl), <=, 8);
  }
  g_assert_cmpuint(core_ratelimit_get_size(rl), ==, 8);

  /* Buckets that have refilled carry nothing and are dropped as requests
   * pass: a few requests later the idle ones are gone. */
  g_autoptr(CoreRatelimit) idle = core_ratelimit_new(1, 2, 1000);
  for (guint i = 0; i < 100; i++) {
    g_autofree char *key = g_strdup_printf("k%u", i);
    g_assert_true(core_ratelimit_take(idle, key, T0, NULL));
  }
  g_assert_cmpuint(core_ratelimit_get_size(idle), ==, 100);
  for (guint i = 0; i < 60; i++)
    core_ratelimit_take(idle, "busy", T0 + 10 + i, NULL);
  g_assert_cmpuint(core_ratelimit_get_size(idle), ==, 1);
}

static void
test_bucket_reload(void)
{
  g_autoptr(CoreRatelimit) rl = core_ratelimit_new(1, 10, 100);

  g_assert_true(core_ratelimit_take(rl, "a", T0, NULL));
  /* A smaller burst clips what the bucket holds. */
  core_ratelimit_set(rl, 1, 2, 100);
  g_assert_true(core_ratelimit_take(rl, "a", T0, NULL));
  g_assert_true(core_ratelimit_take(rl, "a", T0, NULL));
  g_assert_false(core_ratelimit_take(rl, "a", T0, NULL));
  /* Turned off: everything passes and nothing is kept. */
  core_ratelimit_set(rl, 0, 2, 100);
  g_assert_cmpuint(core_ratelimit_get_size(rl), ==, 0);
  g_assert_true(core_ratelimit_take(rl, "a", T0, NULL));
  /* On again: fresh buckets; fewer entries evict the oldest. */
  core_ratelimit_set(rl, 1, 1, 100);
  for (guint i = 0; i < 10; i++) {
    g_autofree char *key = g_strdup_printf("k%u", i);
    g_assert_true(core_ratelimit_take(rl, key, T0, NULL));
  }
  core_ratelimit_set(rl, 1, 1, 3);
  g_assert_cmpuint(core_ratelimit_get_size(rl), ==, 3);
  g_assert_false(core_ratelimit_take(rl, "k9", T0, NULL)); /* the newest stayed */
}

static void
test_source_key(void)
{
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"192.0.2.1:5061", "192.0.2.1"},
      {"192.0.2.1", "192.0.2.1"},
      {"[2001:db8::1]:5061", "2001:db8::/64"},
      {"[2001:db8:0:0:aaaa:bbbb:cccc:dddd]:1", "2001:db8::/64"},
      {"[2001:db8:1:2:3::4]:1", "2001:db8:1:2::/64"},
      {"2001:db8::5", "2001:db8::/64"},
      {"[::ffff:192.0.2.7]:5061", "192.0.2.7"},
      {"not-an-address:1", "not-an-address"},
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *key = core_ratelimit_source_key(cases[i].in);
    g_assert_cmpstr(key, ==, cases[i].out);
  }
  g_assert_null(core_ratelimit_source_key(NULL));
}

/* ---- the service ---- */

#define DOMAIN "example.com"
#define PASSWORD "rate-test-password"

static const char *const domains[] = {DOMAIN, NULL};

typedef struct {
  guint status;
  char *phrase;
  guint32 retry_after;
  GStrv challenges;
} Answer;

typedef struct {
  char *dir;
  StoreDb *store;
  CoreService *core;
  GPtrArray *answers;
  gint64 now;
  guint nc;
} Fixture;

static void
answer_free(gpointer p)
{
  Answer *a = p;
  g_free(a->phrase);
  g_strfreev(a->challenges);
  g_free(a);
}

static void
fake_respond(gpointer txn, const CoreResponse *r, gpointer data)
{
  Fixture *fx = data;
  Answer *a = g_new0(Answer, 1);
  a->status = r->status;
  a->phrase = g_strdup(r->phrase);
  a->retry_after = r->retry_after;
  a->challenges = g_strdupv((char **)r->www_authenticate);
  g_ptr_array_add(fx->answers, a);
}

static void
fake_notify(gpointer sub, const CoreNotify *n, gpointer data)
{
  Fixture *fx = data;
  core_notify_done(fx->core, sub, 200);
}

static gint64
fake_now(gpointer data)
{
  Fixture *fx = data;
  return fx->now;
}

static const CorePort port = {
    .respond = fake_respond,
    .notify = fake_notify,
    .now = fake_now,
};

static char *
hex_digest(GChecksumType type, const char *text)
{
  return g_compute_checksum_for_string(type, text, -1);
}

static void
add_user(Fixture *fx, const char *aor, const char *user)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *in = g_strdup_printf("%s:%s:%s", user, DOMAIN, PASSWORD);
  g_autofree char *sha = hex_digest(G_CHECKSUM_SHA256, in);
  g_autofree char *md5 = hex_digest(G_CHECKSUM_MD5, in);
  StoreUser u = {.aor = (char *)aor,
                 .realm = DOMAIN,
                 .ha1_sha256 = sha,
                 .ha1_md5 = md5,
                 .flags = STORE_USER_ENABLED};
  g_assert_true(store_user_put(fx->store, &u, &error));
  g_assert_no_error(error);
}

/* Limits low enough to hit: SUBSCRIBE 1/s burst 2 per source, 0.1/s burst 3
 * per AOR; REGISTER 0.5/s burst 2 per user. */
static void
fx_setup(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  fx->dir = g_dir_make_tmp("sipcred-test-ratelimit-XXXXXX", &error);
  g_assert_no_error(error);
  fx->store = store_db_open(fx->dir, 0, &error);
  g_assert_no_error(error);
  fx->answers = g_ptr_array_new_with_free_func(answer_free);
  fx->now = T0;
  CoreConfig cfg;
  core_config_init_defaults(&cfg);
  cfg.domains = domains;
  cfg.rate_limits.subscribe_per_source = (CoreRateLimit){1, 2};
  cfg.rate_limits.subscribe_per_aor = (CoreRateLimit){0.1, 3};
  cfg.rate_limits.register_per_user = (CoreRateLimit){0.5, 2};
  fx->core = core_service_new(&cfg, fx->store, &port, fx);
  add_user(fx, "sip:alice@" DOMAIN, "alice");
  add_user(fx, "sip:bob@" DOMAIN, "bob");
}

static void
fx_teardown(Fixture *fx, gconstpointer data)
{
  g_clear_pointer(&fx->core, core_service_free);
  g_clear_pointer(&fx->store, store_db_free);
  test_util_rm_rf(fx->dir);
  g_free(fx->dir);
  g_ptr_array_unref(fx->answers);
}

static Answer *
last(Fixture *fx)
{
  g_assert_cmpuint(fx->answers->len, >, 0);
  return g_ptr_array_index(fx->answers, fx->answers->len - 1);
}

static guint64
rate_limited(Fixture *fx)
{
  CoreStats stats;
  core_service_get_stats(fx->core, &stats);
  return stats.rate_limited;
}

static guint next_sub = 1;

/* An initial certificate SUBSCRIBE to @aor from @peer. */
static Answer *
subscribe(Fixture *fx, const char *aor, const char *peer)
{
  CoreSubscribeInfo info = {
      .event = "certificate",
      .request_uri = aor,
      .to_uri = aor,
      .from_uri = "sip:watcher@" DOMAIN,
      .peer_addr = peer,
  };
  core_subscribe(fx->core, GUINT_TO_POINTER(1), GUINT_TO_POINTER(next_sub++), &info);
  return last(fx);
}

static void
test_subscribe_per_source(Fixture *fx, gconstpointer data)
{
  /* Different AORs, so that only the per-source limit is in play. */
  g_assert_cmpuint(subscribe(fx, "sip:a@" DOMAIN, "192.0.2.1:40001")->status, ==, 200);
  g_assert_cmpuint(subscribe(fx, "sip:b@" DOMAIN, "192.0.2.1:40002")->status, ==, 200);
  guint n_subs = core_service_get_n_subscriptions(fx->core);
  Answer *a = subscribe(fx, "sip:c@" DOMAIN, "192.0.2.1:40003");
  g_assert_cmpuint(a->status, ==, 503);
  g_assert_cmpstr(a->phrase, ==, "Too many SUBSCRIBEs from this address");
  g_assert_cmpuint(a->retry_after, ==, 1);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, n_subs);
  /* Even a SUBSCRIBE for an unknown package counts against the address. */
  CoreSubscribeInfo presence = {
      .event = "presence",
      .request_uri = "sip:c@" DOMAIN,
      .peer_addr = "192.0.2.1:40004",
  };
  core_subscribe(fx->core, GUINT_TO_POINTER(1), GUINT_TO_POINTER(next_sub++), &presence);
  g_assert_cmpuint(last(fx)->status, ==, 503);
  g_assert_cmpuint(rate_limited(fx), ==, 2);

  /* Another address is served meanwhile. */
  g_assert_cmpuint(subscribe(fx, "sip:c@" DOMAIN, "192.0.2.2:40001")->status, ==, 200);
  /* After Retry-After the first is served again. */
  fx->now += 1;
  g_assert_cmpuint(subscribe(fx, "sip:c@" DOMAIN, "192.0.2.1:40005")->status, ==, 200);
  g_assert_cmpuint(subscribe(fx, "sip:d@" DOMAIN, "192.0.2.1:40006")->status, ==, 503);
  g_assert_cmpuint(rate_limited(fx), ==, 3);
}

static void
test_subscribe_per_aor(Fixture *fx, gconstpointer data)
{
  /* Each from its own address, so that only the per-AOR limit is in play. */
  for (guint i = 0; i < 3; i++) {
    g_autofree char *peer = g_strdup_printf("192.0.2.%u:5060", 10 + i);
    g_assert_cmpuint(subscribe(fx, "sips:alice@EXAMPLE.com", peer)->status, ==, 200);
  }
  /* The same AOR in another spelling is the same AOR. */
  Answer *a = subscribe(fx, "sip:alice@example.com;transport=tls", "192.0.2.20:5060");
  g_assert_cmpuint(a->status, ==, 503);
  g_assert_cmpstr(a->phrase, ==, "Too many SUBSCRIBEs to this AOR");
  g_assert_cmpuint(a->retry_after, ==, 10);
  /* Another AOR is served. */
  g_assert_cmpuint(subscribe(fx, "sip:bob@" DOMAIN, "192.0.2.21:5060")->status, ==, 200);
  /* A request refused earlier for another reason costs nothing here. */
  g_assert_cmpuint(subscribe(fx, "sip:alice@example.net", "192.0.2.22:5060")->status, ==, 404);
  fx->now += 9;
  a = subscribe(fx, "sip:alice@" DOMAIN, "192.0.2.23:5060");
  g_assert_cmpuint(a->status, ==, 503);
  g_assert_cmpuint(a->retry_after, ==, 1);
  fx->now += 1;
  g_assert_cmpuint(subscribe(fx, "sip:alice@" DOMAIN, "192.0.2.24:5060")->status, ==, 200);
  g_assert_cmpuint(rate_limited(fx), ==, 2);
}

/* The Digest value of a SHA-256 challenge answering @method @uri as @user. */
static char *
authorization(Fixture *fx, const char *const *challenges, const char *user, const char *method,
              const char *uri)
{
  return test_util_digest_authorization(challenges[0], user, DOMAIN, PASSWORD, method, uri,
                                        ++fx->nc);
}

/* A REGISTER of one binding for @user, answering the challenge. */
static Answer *
do_register(Fixture *fx, const char *user, guint cseq)
{
  g_autofree char *aor = g_strdup_printf("sip:%s@" DOMAIN, user);
  g_autofree char *call_id = g_strdup_printf("call-%s", user);
  CoreContact contact = {.uri = "sip:ua@192.0.2.1:5061;transport=tls", .q = -1};
  CoreRegisterInfo info = {
      .request_uri = "sip:" DOMAIN,
      .to_uri = aor,
      .from_uri = aor,
      .call_id = call_id,
      .cseq = cseq,
      .contacts = &contact,
      .n_contacts = 1,
      .flow_token = "flow-1",
      .direct = TRUE,
      .peer_addr = "192.0.2.1:5000",
  };
  core_register(fx->core, GUINT_TO_POINTER(1), &info);
  Answer *challenge = last(fx);
  g_assert_cmpuint(challenge->status, ==, 401);
  g_autofree char *auth = authorization(fx, (const char *const *)challenge->challenges, user,
                                        "REGISTER", info.request_uri);
  const char *auths[] = {auth, NULL};
  info.authorization = auths;
  core_register(fx->core, GUINT_TO_POINTER(2), &info);
  return last(fx);
}

static void
test_register_per_user(Fixture *fx, gconstpointer data)
{
  g_assert_cmpuint(do_register(fx, "alice", 1)->status, ==, 200);
  g_assert_cmpuint(do_register(fx, "alice", 2)->status, ==, 200);
  Answer *a = do_register(fx, "alice", 3);
  g_assert_cmpuint(a->status, ==, 503);
  g_assert_cmpstr(a->phrase, ==, "Too many REGISTERs from this user");
  g_assert_cmpuint(a->retry_after, ==, 2);
  /* The refused REGISTER changed nothing: the binding has the second CSeq. */
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) bindings = store_reg_get(fx->store, "sip:alice@" DOMAIN, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(bindings->len, ==, 1);
  g_assert_cmpuint(((StoreBinding *)g_ptr_array_index(bindings, 0))->cseq, ==, 2);
  /* Another user from the same address is served. */
  g_assert_cmpuint(do_register(fx, "bob", 1)->status, ==, 200);
  fx->now += 2;
  g_assert_cmpuint(do_register(fx, "alice", 4)->status, ==, 200);
  g_assert_cmpuint(rate_limited(fx), ==, 1);
}

/* A reload applies new limits at once; 0 turns a limit off. */
static void
test_reload(Fixture *fx, gconstpointer data)
{
  g_assert_cmpuint(subscribe(fx, "sip:a@" DOMAIN, "192.0.2.1:1")->status, ==, 200);
  g_assert_cmpuint(subscribe(fx, "sip:b@" DOMAIN, "192.0.2.1:1")->status, ==, 200);
  g_assert_cmpuint(subscribe(fx, "sip:c@" DOMAIN, "192.0.2.1:1")->status, ==, 503);
  CoreConfig cfg;
  core_config_init_defaults(&cfg);
  cfg.domains = domains;
  cfg.rate_limits.subscribe_per_source = (CoreRateLimit){0, 2};
  core_service_reload(fx->core, &cfg);
  for (guint i = 0; i < 10; i++) {
    g_autofree char *aor = g_strdup_printf("sip:x%u@" DOMAIN, i);
    g_assert_cmpuint(subscribe(fx, aor, "192.0.2.1:1")->status, ==, 200);
  }
}

#define ADD(path, func) g_test_add(path, Fixture, NULL, fx_setup, func, fx_teardown)

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/core/ratelimit/burst-refill", test_bucket_burst_and_refill);
  g_test_add_func("/core/ratelimit/refusals", test_bucket_refusals);
  g_test_add_func("/core/ratelimit/fractional", test_bucket_fractional);
  g_test_add_func("/core/ratelimit/off", test_bucket_off);
  g_test_add_func("/core/ratelimit/bounded", test_bucket_bounded);
  g_test_add_func("/core/ratelimit/reload", test_bucket_reload);
  g_test_add_func("/core/ratelimit/source-key", test_source_key);
  ADD("/core/ratelimit/subscribe-per-source", test_subscribe_per_source);
  ADD("/core/ratelimit/subscribe-per-aor", test_subscribe_per_aor);
  ADD("/core/ratelimit/register-per-user", test_register_per_user);
  ADD("/core/ratelimit/service-reload", test_reload);

  return g_test_run();
}
