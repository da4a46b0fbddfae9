#define G_LOG_DOMAIN "sipcred-test-registrar"

/* Unit tests of core/registrar.c and core/relay.c: REGISTER (RFC 3261
 * 10.3, RFC 5626) and the MESSAGE relay (RFC 3428, best response per RFC
 * 3261 16.7), driven through a fake CorePort with a fake clock over a real
 * LMDB store. Digest answers are computed here from the challenges, with
 * GChecksum (not with core/digest.c). */

#include <glib/gstdio.h>
#include <string.h>

#include "core/core-service.h" /* core_registrar_current_bindings */
#include "core/core.h"
#include "storage/store.h"
#include "tests/common/testutil.h"

#define DOMAIN "example.com"
#define ALICE "sip:alice@example.com"
#define BOB "sip:bob@example.com"
#define PASSWORD "reg-test-password"

/* example.net is served too, with no users: an AOR must match its Request-URI. */
static const char *const domains[] = {DOMAIN, "example.net", NULL};

typedef struct {
  gpointer txn;
  guint status;
  char *phrase;
  guint32 min_expires;
  GStrv contacts;
  GStrv challenges;
  gboolean date;
  char *require;
  char *supported;
} Answer;

typedef struct {
  gpointer leg;
  char *request_uri, *flow, *from, *to, *ctype, *cte, *disposition;
  GBytes *body;
} Leg;

typedef struct {
  char *dir;
  StoreDb *store;
  CoreService *core;
  GPtrArray *answers; /* Answer */
  GPtrArray *legs;    /* Leg */
  gint64 now;
  guint nc;
} Fixture;

static void
answer_free(gpointer p)
{
  Answer *a = p;
  g_free(a->phrase);
  g_strfreev(a->contacts);
  g_strfreev(a->challenges);
  g_free(a->require);
  g_free(a->supported);
  g_free(a);
}

static void
leg_free(gpointer p)
{
  Leg *l = p;
  g_free(l->request_uri);
  g_free(l->flow);
  g_free(l->from);
  g_free(l->to);
  g_free(l->ctype);
  g_free(l->cte);
  g_free(l->disposition);
  g_bytes_unref(l->body);
  g_free(l);
}

static void
fake_respond(gpointer txn, const CoreResponse *r, gpointer data)
{
  Fixture *fx = data;
  Answer *a = g_new0(Answer, 1);
  a->txn = txn;
  a->status = r->status;
  a->phrase = g_strdup(r->phrase);
  a->min_expires = r->min_expires;
  a->contacts = g_strdupv((char **)r->contacts);
  a->challenges = g_strdupv((char **)r->www_authenticate);
  a->date = r->date;
  a->require = g_strdup(r->require);
  a->supported = g_strdup(r->supported);
  g_ptr_array_add(fx->answers, a);
}

static void
fake_notify(gpointer sub, const CoreNotify *n, gpointer data)
{
  g_assert_not_reached();
}

static gint64
fake_now(gpointer data)
{
  return ((Fixture *)data)->now;
}

static void
fake_relay(gpointer leg, const CoreRelayRequest *req, gpointer data)
{
  Fixture *fx = data;
  Leg *l = g_new0(Leg, 1);
  l->leg = leg;
  l->request_uri = g_strdup(req->request_uri);
  l->flow = g_strdup(req->flow_token);
  l->from = g_strdup(req->from_uri);
  l->to = g_strdup(req->to_uri);
  l->ctype = g_strdup(req->content_type);
  l->cte = g_strdup(req->content_transfer_encoding);
  l->disposition = g_strdup(req->content_disposition);
  l->body = g_bytes_ref(req->body);
  g_ptr_array_add(fx->legs, l);
}

static const CorePort port = {
    .respond = fake_respond,
    .notify = fake_notify,
    .now = fake_now,
    .relay = fake_relay,
};

static char *
hex_digest(GChecksumType type, const char *text)
{
  return g_compute_checksum_for_string(type, text, -1);
}

static void
add_user(Fixture *fx, const char *aor)
{
  g_autoptr(GError) error = NULL;
  const char *user_start = aor + 4;
  g_autofree char *user = g_strndup(user_start, strchr(aor, '@') - user_start);
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

static void
fx_config(CoreConfig *cfg)
{
  core_config_init_defaults(cfg);
  cfg->domains = domains;
  cfg->reg_min_expires = 60;
  cfg->reg_max_expires = 7200;
  cfg->reg_default_expires = 600;
  cfg->reg_max_bindings = 3;
  cfg->message_max_body = 100;
}

static void
fx_setup(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  fx->dir = g_dir_make_tmp("sipcred-test-registrar-XXXXXX", &error);
  g_assert_no_error(error);
  fx->store = store_db_open(fx->dir, 0, &error);
  g_assert_no_error(error);
  fx->answers = g_ptr_array_new_with_free_func(answer_free);
  fx->legs = g_ptr_array_new_with_free_func(leg_free);
  fx->now = 1700000000;
  CoreConfig cfg;
  fx_config(&cfg);
  fx->core = core_service_new(&cfg, fx->store, &port, fx);
  add_user(fx, ALICE);
  add_user(fx, BOB);
}

static void
fx_teardown(Fixture *fx, gconstpointer data)
{
  g_clear_pointer(&fx->core, core_service_free);
  g_clear_pointer(&fx->store, store_db_free);
  test_util_rm_rf(fx->dir);
  g_free(fx->dir);
  g_ptr_array_unref(fx->answers);
  g_ptr_array_unref(fx->legs);
}

static Answer *
last(Fixture *fx)
{
  g_assert_cmpuint(fx->answers->len, >, 0);
  return g_ptr_array_index(fx->answers, fx->answers->len - 1);
}

/* The Digest value of a SHA-256 challenge answering @method @uri as @user. */
static char *
authorization(Fixture *fx, const char *const *challenges, const char *user, const char *method,
              const char *uri)
{
  return test_util_digest_authorization(challenges[0], user, DOMAIN, PASSWORD, method, uri,
                                        ++fx->nc);
}

/* Sends @info without credentials; when that gets a 401, answers the
 * challenge as @user and sends it again. Returns the final answer. */
static Answer *
register_info(Fixture *fx, const char *user, CoreRegisterInfo *info)
{
  const char *const *saved = info->authorization;
  info->authorization = NULL;
  core_register(fx->core, GUINT_TO_POINTER(1), info);
  Answer *challenge = last(fx);
  if (challenge->status != 401) {
    info->authorization = saved;
    return challenge;
  }
  g_autofree char *auth = authorization(fx, (const char *const *)challenge->challenges, user,
                                        "REGISTER", info->request_uri);
  const char *auths[] = {auth, NULL};
  info->authorization = auths;
  core_register(fx->core, GUINT_TO_POINTER(2), info);
  info->authorization = saved;
  return last(fx);
}

static CoreRegisterInfo
reg_info(const char *aor, const CoreContact *contacts, guint n, gboolean has_expires,
         guint32 expires, const char *call_id, guint32 cseq, const char *flow)
{
  CoreRegisterInfo info = {
      .request_uri = "sip:" DOMAIN,
      .to_uri = aor,
      .from_uri = aor,
      .call_id = call_id,
      .cseq = cseq,
      .has_expires = has_expires,
      .expires = expires,
      .contacts = contacts,
      .n_contacts = n,
      .outbound = TRUE,
      .flow_token = flow,
      .direct = TRUE,
      .peer_addr = "127.0.0.1:5000",
  };
  return info;
}

/* REGISTER as @user for @aor (Supported: outbound): first without
 * credentials, then answering the challenge. Returns the final answer. */
static Answer *
do_register(Fixture *fx, const char *user, const char *aor, const CoreContact *contacts, guint n,
            gboolean has_expires, guint32 expires, const char *call_id, guint32 cseq,
            const char *flow)
{
  CoreRegisterInfo info = reg_info(aor, contacts, n, has_expires, expires, call_id, cseq, flow);
  return register_info(fx, user, &info);
}

/* What the store holds for @aor, expired bindings included. */
static GPtrArray *
stored(Fixture *fx, const char *aor)
{
  g_autoptr(GError) error = NULL;
  GPtrArray *all = store_reg_get(fx->store, aor, &error);
  g_assert_no_error(error);
  g_assert_nonnull(all);
  return all;
}

static StoreBinding *
binding_at(GPtrArray *bindings, guint i)
{
  g_assert_cmpuint(i, <, bindings->len);
  return g_ptr_array_index(bindings, i);
}

static void
test_register_basic(Fixture *fx, gconstpointer data)
{
  CoreContact c = {.uri = "sips:bob@192.0.2.1:5061;transport=tls", .q = 0.5f};
  Answer *a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "call-1", 1, "FLOW1");

  g_assert_cmpuint(a->status, ==, 200);
  g_assert_true(a->date);
  g_assert_null(a->require); /* no instance, no outbound */
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 1);
  g_assert_cmpstr(a->contacts[0], ==, "<sips:bob@192.0.2.1:5061;transport=tls>;expires=600;q=0.5");

  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) stored = store_reg_get(fx->store, BOB, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(stored->len, ==, 1);
  StoreBinding *b = g_ptr_array_index(stored, 0);
  g_assert_cmpstr(b->flow_token, ==, "FLOW1");
  g_assert_cmpstr(b->call_id, ==, "call-1");
  g_assert_cmpuint(b->cseq, ==, 1);
  g_assert_cmpint(b->expires_at, ==, fx->now + 600);

  /* alice may not register bob. */
  a = do_register(fx, "alice", BOB, &c, 1, FALSE, 0, "call-2", 1, "FLOW2");
  g_assert_cmpuint(a->status, ==, 403);

  /* Not a served domain. */
  a = do_register(fx, "bob", "sip:bob@example.org", &c, 1, FALSE, 0, "call-3", 1, "FLOW1");
  g_assert_cmpuint(a->status, ==, 404);
}

static void
test_register_expiry_rules(Fixture *fx, gconstpointer data)
{
  CoreContact brief = {.uri = "sip:bob@192.0.2.1", .has_expires = TRUE, .expires = 30, .q = -1};
  Answer *a = do_register(fx, "bob", BOB, &brief, 1, FALSE, 0, "c", 1, "F");
  g_assert_cmpuint(a->status, ==, 423);
  g_assert_cmpuint(a->min_expires, ==, 60);

  CoreContact longc = {.uri = "sip:bob@192.0.2.1", .q = -1};
  a = do_register(fx, "bob", BOB, &longc, 1, TRUE, 999999, "c", 2, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstr(a->contacts[0], ==, "<sip:bob@192.0.2.1>;expires=7200");

  /* Out of order: the same Call-ID, CSeq not higher. Nothing changes. */
  CoreContact other = {.uri = "sip:bob@192.0.2.1", .has_expires = TRUE, .expires = 100, .q = -1};
  a = do_register(fx, "bob", BOB, &other, 1, FALSE, 0, "c", 2, "F");
  g_assert_cmpuint(a->status, ==, 500);
  a = do_register(fx, "bob", BOB, NULL, 0, FALSE, 0, "q", 1, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstr(a->contacts[0], ==, "<sip:bob@192.0.2.1>;expires=7200");

  /* The clock passes: the remaining time shrinks, then the binding is gone. */
  fx->now += 7000;
  a = do_register(fx, "bob", BOB, NULL, 0, FALSE, 0, "q", 2, "F");
  g_assert_cmpstr(a->contacts[0], ==, "<sip:bob@192.0.2.1>;expires=200");
  fx->now += 200;
  a = do_register(fx, "bob", BOB, NULL, 0, FALSE, 0, "q", 3, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 0);
}

static void
test_register_wildcard_and_limits(Fixture *fx, gconstpointer data)
{
  CoreContact three[] = {
      {.uri = "sip:b1@192.0.2.1", .q = -1},
      {.uri = "sip:b2@192.0.2.1", .q = -1},
      {.uri = "sip:b3@192.0.2.1", .q = -1},
  };
  Answer *a = do_register(fx, "bob", BOB, three, 3, FALSE, 0, "w", 1, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 3);

  CoreContact fourth = {.uri = "sip:b4@192.0.2.1", .q = -1};
  a = do_register(fx, "bob", BOB, &fourth, 1, FALSE, 0, "w", 2, "F");
  g_assert_cmpuint(a->status, ==, 403);
  g_assert_nonnull(strstr(a->phrase, "limit 3"));

  /* Removing one by expires=0, matched case-insensitively on the host. */
  CoreContact gone = {.uri = "sip:b1@192.0.2.1", .has_expires = TRUE, .expires = 0, .q = -1};
  a = do_register(fx, "bob", BOB, &gone, 1, FALSE, 0, "w", 3, "F");
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 2);

  CoreContact star = {.uri = "*", .q = -1};
  a = do_register(fx, "bob", BOB, &star, 1, TRUE, 3600, "w", 4, "F");
  g_assert_cmpuint(a->status, ==, 400);
  CoreContact star_and_more[] = {{.uri = "*", .q = -1}, {.uri = "sip:x@192.0.2.9", .q = -1}};
  a = do_register(fx, "bob", BOB, star_and_more, 2, TRUE, 0, "w", 5, "F");
  g_assert_cmpuint(a->status, ==, 400);
  a = do_register(fx, "bob", BOB, &star, 1, TRUE, 0, "w", 6, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 0);

  CoreContact tel = {.uri = "tel:+15551234", .q = -1};
  a = do_register(fx, "bob", BOB, &tel, 1, FALSE, 0, "w", 7, "F");
  g_assert_cmpuint(a->status, ==, 400);
}

static void
test_register_outbound(Fixture *fx, gconstpointer data)
{
  CoreContact c1 = {.uri = "sips:bob@192.0.2.1:40000;transport=tls",
                    .q = -1,
                    .instance = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>",
                    .reg_id = 1};
  Answer *a = do_register(fx, "bob", BOB, &c1, 1, FALSE, 0, "o1", 1, "FLOWA");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstr(a->require, ==, "outbound");
  g_assert_nonnull(strstr(a->contacts[0], ";+sip.instance=\"<urn:uuid:"));
  g_assert_nonnull(strstr(a->contacts[0], ";reg-id=1"));

  /* The device reconnects: new flow, new port, new Call-ID; same instance
   * and reg-id: it replaces the binding. */
  CoreContact c2 = c1;
  c2.uri = "sips:bob@192.0.2.1:40001;transport=tls";
  a = do_register(fx, "bob", BOB, &c2, 1, FALSE, 0, "o2", 1, "FLOWB");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 1);
  g_assert_nonnull(strstr(a->contacts[0], ":40001"));
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) stored = store_reg_get(fx->store, BOB, &error);
  g_assert_cmpstr(((StoreBinding *)g_ptr_array_index(stored, 0))->flow_token, ==, "FLOWB");

  /* A second flow of the same instance (reg-id 2) is a binding of its own;
   * a new flow for reg-id 1 replaces only reg-id 1's. */
  CoreContact c3 = c1;
  c3.uri = "sips:bob@192.0.2.1:40002;transport=tls";
  c3.reg_id = 2;
  a = do_register(fx, "bob", BOB, &c3, 1, FALSE, 0, "o3", 1, "FLOWC");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 2);
  CoreContact c4 = c1;
  c4.uri = "sips:bob@192.0.2.1:40003;transport=tls";
  a = do_register(fx, "bob", BOB, &c4, 1, FALSE, 0, "o4", 1, "FLOWD");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstr(a->require, ==, "outbound");
  g_autoptr(GPtrArray) two = store_reg_get(fx->store, BOB, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(two->len, ==, 2);
  for (guint i = 0; i < two->len; i++) {
    StoreBinding *b = binding_at(two, i);
    g_assert_cmpstr(b->flow_token, ==, b->reg_id == 1 ? "FLOWD" : "FLOWC");
    g_assert_cmpstr(b->contact, ==,
                    b->reg_id == 1 ? c4.uri : "sips:bob@192.0.2.1:40002;transport=tls");
  }
}

static void
test_register_challenge(Fixture *fx, gconstpointer data)
{
  CoreContact c = {.uri = "sips:bob@192.0.2.1:5061;transport=tls", .q = -1};
  CoreRegisterInfo info = reg_info(BOB, &c, 1, FALSE, 0, "call-1", 1, "FLOW1");

  /* Without credentials: a 401 with challenges, and nothing stored. */
  core_register(fx->core, NULL, &info);
  Answer *a = last(fx);
  g_assert_cmpuint(a->status, ==, 401);
  g_assert_nonnull(a->challenges);
  g_assert_nonnull(strstr(a->challenges[0], "realm=\"" DOMAIN "\""));
  g_assert_false(a->date);
  g_autoptr(GPtrArray) none = stored(fx, BOB);
  g_assert_cmpuint(none->len, ==, 0);

  /* Answered: 200, Date, Supported: outbound, no Require without reg-id. */
  a = register_info(fx, "bob", &info);
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_true(a->date);
  g_assert_cmpstr(a->supported, ==, "outbound");
  g_assert_null(a->require);
  g_assert_cmpstrv(a->contacts, ((const char *[]){
                                    "<sips:bob@192.0.2.1:5061;transport=tls>;expires=600", NULL}));

  /* A wrong digest response for the right user is challenged again, and
   * nothing is stored. */
  fx->now += 10;
  CoreContact other = {.uri = "sip:bob@192.0.2.7", .q = -1};
  CoreRegisterInfo bad = reg_info(BOB, &other, 1, FALSE, 0, "call-1", 2, "FLOW1");
  core_register(fx->core, NULL, &bad);
  g_assert_cmpuint(last(fx)->status, ==, 401);
  g_autofree char *wrong =
      authorization(fx, (const char *const *)last(fx)->challenges, "bob", "INVITE", "sip:" DOMAIN);
  const char *auths[] = {wrong, NULL};
  bad.authorization = auths;
  core_register(fx->core, NULL, &bad);
  g_assert_cmpuint(last(fx)->status, ==, 401);
  g_autoptr(GPtrArray) one = stored(fx, BOB);
  g_assert_cmpuint(one->len, ==, 1);
}

/* Each refusal before authentication: nothing stored, no challenge. */
static void
test_register_refusals(Fixture *fx, gconstpointer data)
{
  static const struct {
    const char *ruri, *to;
    guint status;
    const char *phrase;
  } cases[] = {
      {"sip:example.org", BOB, 404, "Domain not served here"},
      {"tel:+15551234", BOB, 404, "Domain not served here"},
      {NULL, BOB, 404, "Domain not served here"},
      {"sip:" DOMAIN, "sip:bob@example.org", 404, "Not a user of a domain served here"},
      {"sip:example.net", BOB, 404, "To is not an AOR of the Request-URI's domain"},
      {"sip:" DOMAIN, "sip:" DOMAIN, 400, "To is not a sip: or sips: AOR with a user"},
      {"sip:" DOMAIN, "sip:@" DOMAIN, 400, "To is not a sip: or sips: AOR with a user"},
      {"sip:" DOMAIN, "tel:+15551234", 400, "To is not a sip: or sips: AOR with a user"},
      {"sip:" DOMAIN, NULL, 400, "To is not a sip: or sips: AOR with a user"},
  };
  CoreContact c = {.uri = "sip:bob@192.0.2.1", .q = -1};
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    CoreRegisterInfo info = reg_info(cases[i].to, &c, 1, FALSE, 0, "r", i + 1, "F");
    info.request_uri = cases[i].ruri;
    core_register(fx->core, NULL, &info);
    g_test_message("case %u: %s / %s", i, cases[i].ruri, cases[i].to);
    g_assert_cmpuint(last(fx)->status, ==, cases[i].status);
    g_assert_cmpstr(last(fx)->phrase, ==, cases[i].phrase);
  }
  /* The Request-URI's host is compared case-insensitively, without port. */
  CoreRegisterInfo info = reg_info(BOB, &c, 1, FALSE, 0, "r", 100, "F");
  info.request_uri = "SIPS:Example.COM:5061;transport=tls";
  core_register(fx->core, NULL, &info);
  g_assert_cmpuint(last(fx)->status, ==, 401);

  /* Contacts that are not sip:/sips:, and no Call-ID. */
  CoreContact tel = {.uri = "tel:+15551234", .q = -1};
  info = reg_info(BOB, &tel, 1, FALSE, 0, "r", 101, "F");
  core_register(fx->core, NULL, &info);
  g_assert_cmpuint(last(fx)->status, ==, 400);
  g_assert_cmpstr(last(fx)->phrase, ==, "Contact is not a sip: or sips: URI");
  info = reg_info(BOB, &c, 1, FALSE, 0, NULL, 102, "F");
  core_register(fx->core, NULL, &info);
  g_assert_cmpuint(last(fx)->status, ==, 400);

  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) aors = store_reg_list(fx->store, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(aors->len, ==, 0);
}

/* A refresh with a higher CSeq, a new Call-ID, and out-of-order requests. */
static void
test_register_refresh(Fixture *fx, gconstpointer data)
{
  CoreContact c = {.uri = "sip:bob@192.0.2.1;transport=tls", .q = -1};
  Answer *a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "call-1", 5, "F1");
  g_assert_cmpuint(a->status, ==, 200);

  fx->now += 100;
  a = do_register(fx, "bob", BOB, &c, 1, TRUE, 1200, "call-1", 6, "F2");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstrv(a->contacts,
                   ((const char *[]){"<sip:bob@192.0.2.1;transport=tls>;expires=1200", NULL}));
  g_autoptr(GPtrArray) b1 = stored(fx, BOB);
  g_assert_cmpuint(b1->len, ==, 1);
  g_assert_cmpstr(binding_at(b1, 0)->flow_token, ==, "F2");
  g_assert_cmpuint(binding_at(b1, 0)->cseq, ==, 6);
  g_assert_cmpint(binding_at(b1, 0)->expires_at, ==, fx->now + 1200);

  /* The same CSeq again (a retransmission) and a lower one: 500, even to
   * remove it; nothing changes. */
  a = do_register(fx, "bob", BOB, &c, 1, TRUE, 0, "call-1", 6, "F3");
  g_assert_cmpuint(a->status, ==, 500);
  g_assert_cmpstr(a->phrase, ==, "Out-of-order REGISTER: CSeq not above the binding's");
  a = do_register(fx, "bob", BOB, &c, 1, TRUE, 3000, "call-1", 2, "F3");
  g_assert_cmpuint(a->status, ==, 500);
  g_autoptr(GPtrArray) b2 = stored(fx, BOB);
  g_assert_cmpuint(b2->len, ==, 1);
  g_assert_cmpstr(binding_at(b2, 0)->flow_token, ==, "F2");
  g_assert_cmpint(binding_at(b2, 0)->expires_at, ==, fx->now + 1200);

  /* A different Call-ID (the UA rebooted) replaces it, whatever its CSeq. */
  a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "call-2", 1, "F4");
  g_assert_cmpuint(a->status, ==, 200);
  g_autoptr(GPtrArray) b3 = stored(fx, BOB);
  g_assert_cmpuint(b3->len, ==, 1);
  g_assert_cmpstr(binding_at(b3, 0)->call_id, ==, "call-2");
  g_assert_cmpuint(binding_at(b3, 0)->cseq, ==, 1);
  g_assert_cmpstr(binding_at(b3, 0)->flow_token, ==, "F4");
  g_assert_cmpint(binding_at(b3, 0)->expires_at, ==, fx->now + 600);
}

/* Several Contacts at once; each its own expiry; removal by expires=0 with
 * the URI matched on a case-insensitive scheme and host only. */
static void
test_register_several(Fixture *fx, gconstpointer data)
{
  CoreContact three[] = {
      {.uri = "sip:bob@host.example.net;transport=tls", .q = 1.0f},
      {.uri = "sip:bob@192.0.2.2", .has_expires = TRUE, .expires = 120, .q = 0.25f},
      {.uri = "sips:bob@192.0.2.3", .q = -1},
  };
  Answer *a = do_register(fx, "bob", BOB, three, 3, TRUE, 900, "s", 1, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstrv(a->contacts, ((const char *[]){
                                    "<sip:bob@host.example.net;transport=tls>;expires=900;q=1",
                                    "<sip:bob@192.0.2.2>;expires=120;q=0.25",
                                    "<sips:bob@192.0.2.3>;expires=900",
                                    NULL,
                                }));

  /* A different user part is another binding: expires=0 on it removes
   * nothing. The same URI in other case of scheme and host removes the
   * first, and the same Contact twice leaves one binding (the later wins). */
  CoreContact change[] = {
      {.uri = "sip:BOB@host.example.net;transport=tls", .has_expires = TRUE, .expires = 0},
      {.uri = "SIP:bob@HOST.Example.NET;transport=tls", .has_expires = TRUE, .expires = 0},
      {.uri = "sips:bob@192.0.2.3", .has_expires = TRUE, .expires = 300, .q = -1},
      {.uri = "sips:bob@192.0.2.3", .has_expires = TRUE, .expires = 400, .q = -1},
  };
  a = do_register(fx, "bob", BOB, change, G_N_ELEMENTS(change), FALSE, 0, "s", 2, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpstrv(a->contacts, ((const char *[]){
                                    "<sip:bob@192.0.2.2>;expires=120;q=0.25",
                                    "<sips:bob@192.0.2.3>;expires=400",
                                    NULL,
                                }));
  g_autoptr(GPtrArray) b = stored(fx, BOB);
  g_assert_cmpuint(b->len, ==, 2);
  g_assert_cmpstr(binding_at(b, 0)->contact, ==, "sip:bob@192.0.2.2");

  /* Contact: * with Expires: 0 removes them all, and the AOR's record. */
  CoreContact star = {.uri = "*", .q = -1};
  a = do_register(fx, "bob", BOB, &star, 1, TRUE, 0, "s", 3, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) aors = store_reg_list(fx->store, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(aors->len, ==, 0);
}

/* A 423 for one Contact changes nothing, not even the others'. */
static void
test_register_brief_changes_nothing(Fixture *fx, gconstpointer data)
{
  CoreContact c = {.uri = "sip:bob@192.0.2.1", .q = -1};
  Answer *a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "b", 1, "F1");
  g_assert_cmpuint(a->status, ==, 200);

  CoreContact two[] = {
      {.uri = "sip:bob@192.0.2.1", .has_expires = TRUE, .expires = 3000, .q = -1},
      {.uri = "sip:bob@192.0.2.2", .has_expires = TRUE, .expires = 59, .q = -1},
  };
  a = do_register(fx, "bob", BOB, two, 2, FALSE, 0, "b", 2, "F2");
  g_assert_cmpuint(a->status, ==, 423);
  g_assert_cmpuint(a->min_expires, ==, 60);
  g_autoptr(GPtrArray) b = stored(fx, BOB);
  g_assert_cmpuint(b->len, ==, 1);
  g_assert_cmpint(binding_at(b, 0)->expires_at, ==, fx->now + 600);
  g_assert_cmpstr(binding_at(b, 0)->flow_token, ==, "F1");

  /* The Expires header applies to Contacts without their own: 423 too. */
  CoreContact plain = {.uri = "sip:bob@192.0.2.3", .q = -1};
  a = do_register(fx, "bob", BOB, &plain, 1, TRUE, 1, "b", 3, "F2");
  g_assert_cmpuint(a->status, ==, 423);
  /* Exactly the minimum is fine. */
  a = do_register(fx, "bob", BOB, &plain, 1, TRUE, 60, "b", 4, "F2");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 2);
}

/* Over the limit: 403 and nothing changed; after a reload lowers the
 * limit, an AOR above it may still refresh and shrink. */
static void
test_register_max_bindings(Fixture *fx, gconstpointer data)
{
  CoreContact three[] = {
      {.uri = "sip:b1@192.0.2.1", .q = -1},
      {.uri = "sip:b2@192.0.2.1", .q = -1},
      {.uri = "sip:b3@192.0.2.1", .q = -1},
  };
  Answer *a = do_register(fx, "bob", BOB, three, 3, FALSE, 0, "m", 1, "F");
  g_assert_cmpuint(a->status, ==, 200);

  CoreContact more[] = {
      {.uri = "sip:b1@192.0.2.1", .has_expires = TRUE, .expires = 0, .q = -1},
      {.uri = "sip:b4@192.0.2.1", .q = -1},
      {.uri = "sip:b5@192.0.2.1", .q = -1},
  };
  a = do_register(fx, "bob", BOB, more, 3, FALSE, 0, "m", 2, "F");
  g_assert_cmpuint(a->status, ==, 403);
  g_assert_cmpstr(a->phrase, ==, "Too many bindings for this AOR (limit 3)");
  g_autoptr(GPtrArray) b = stored(fx, BOB);
  g_assert_cmpuint(b->len, ==, 3);
  g_assert_cmpstr(binding_at(b, 0)->contact, ==, "sip:b1@192.0.2.1");

  /* Replacing one with another keeps the count: allowed. */
  CoreContact swap[] = {
      {.uri = "sip:b1@192.0.2.1", .has_expires = TRUE, .expires = 0, .q = -1},
      {.uri = "sip:b4@192.0.2.1", .q = -1},
  };
  a = do_register(fx, "bob", BOB, swap, 2, FALSE, 0, "m", 3, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 3);

  CoreConfig cfg;
  fx_config(&cfg);
  cfg.reg_max_bindings = 1;
  core_service_reload(fx->core, &cfg);
  a = do_register(fx, "bob", BOB, &three[1], 1, FALSE, 0, "m", 4, "F");
  g_assert_cmpuint(a->status, ==, 200); /* a refresh */
  CoreContact gone = {.uri = "sip:b3@192.0.2.1", .has_expires = TRUE, .expires = 0, .q = -1};
  a = do_register(fx, "bob", BOB, &gone, 1, FALSE, 0, "m", 5, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_cmpuint(g_strv_length(a->contacts), ==, 2);
  CoreContact newer = {.uri = "sip:b9@192.0.2.1", .q = -1};
  a = do_register(fx, "bob", BOB, &newer, 1, FALSE, 0, "m", 6, "F");
  g_assert_cmpuint(a->status, ==, 403);
  g_assert_cmpstr(a->phrase, ==, "Too many bindings for this AOR (limit 1)");
}

/* Expired bindings vanish from answers as the clock passes, and from the
 * store the next time the AOR is written. */
static void
test_register_expired_dropped(Fixture *fx, gconstpointer data)
{
  CoreContact two[] = {
      {.uri = "sip:bob@192.0.2.1", .has_expires = TRUE, .expires = 100, .q = -1},
      {.uri = "sip:bob@192.0.2.2", .has_expires = TRUE, .expires = 1000, .q = -1},
  };
  Answer *a = do_register(fx, "bob", BOB, two, 2, FALSE, 0, "e", 1, "F");
  g_assert_cmpuint(a->status, ==, 200);

  fx->now += 100; /* the first expires exactly now */
  a = do_register(fx, "bob", BOB, NULL, 0, FALSE, 0, "q", 1, "F");
  g_assert_cmpstrv(a->contacts, ((const char *[]){"<sip:bob@192.0.2.2>;expires=900", NULL}));
  g_autoptr(GPtrArray) before = stored(fx, BOB); /* a query writes nothing */
  g_assert_cmpuint(before->len, ==, 2);

  CoreContact third = {.uri = "sip:bob@192.0.2.3", .q = -1};
  a = do_register(fx, "bob", BOB, &third, 1, FALSE, 0, "e", 2, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_autoptr(GPtrArray) after = stored(fx, BOB);
  g_assert_cmpuint(after->len, ==, 2);
  g_assert_cmpstr(binding_at(after, 0)->contact, ==, "sip:bob@192.0.2.2");
  g_assert_cmpstr(binding_at(after, 1)->contact, ==, "sip:bob@192.0.2.3");

  /* The helper the relay uses sees the same. */
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) cur = core_registrar_current_bindings(fx->core, BOB, fx->now + 600, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(cur->len, ==, 1); /* the third expires at now + 600 */
  g_assert_cmpstr(binding_at(cur, 0)->contact, ==, "sip:bob@192.0.2.2");
}

/* RFC 5626 without Supported: outbound, and a reg-id without an instance. */
static void
test_register_instance_only(Fixture *fx, gconstpointer data)
{
  const char *inst = "<urn:uuid:00000000-0000-1000-8000-000000000001>";
  CoreContact c1 = {.uri = "sips:bob@192.0.2.1:40000", .q = -1, .instance = inst, .reg_id = 1};
  CoreRegisterInfo info = reg_info(BOB, &c1, 1, FALSE, 0, "i1", 1, "FA");
  info.outbound = FALSE;
  Answer *a = register_info(fx, "bob", &info);
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_null(a->require);
  g_assert_cmpstrv(a->contacts,
                   ((const char *[]){"<sips:bob@192.0.2.1:40000>;expires=600;+sip.instance="
                                     "\"<urn:uuid:00000000-0000-1000-8000-000000000001>\"",
                                     NULL}));
  g_autoptr(GPtrArray) b1 = stored(fx, BOB);
  g_assert_cmpuint(binding_at(b1, 0)->reg_id, ==, 0);

  /* The same instance from another address replaces it (keyed by instance). */
  CoreContact c2 = c1;
  c2.uri = "sips:bob@192.0.2.9:40002";
  info = reg_info(BOB, &c2, 1, FALSE, 0, "i2", 1, "FB");
  info.outbound = FALSE;
  a = register_info(fx, "bob", &info);
  g_assert_cmpuint(a->status, ==, 200);
  g_autoptr(GPtrArray) b2 = stored(fx, BOB);
  g_assert_cmpuint(b2->len, ==, 1);
  g_assert_cmpstr(binding_at(b2, 0)->contact, ==, "sips:bob@192.0.2.9:40002");
  g_assert_cmpstr(binding_at(b2, 0)->flow_token, ==, "FB");

  /* A reg-id without +sip.instance is ignored, even with outbound. */
  CoreContact c3 = {.uri = "sip:bob@192.0.2.5", .q = -1, .reg_id = 2};
  a = do_register(fx, "bob", BOB, &c3, 1, FALSE, 0, "i3", 1, "FC");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_null(a->require);
  g_assert_cmpstr(a->contacts[1], ==, "<sip:bob@192.0.2.5>;expires=600");
  g_autoptr(GPtrArray) b3 = stored(fx, BOB);
  g_assert_cmpuint(binding_at(b3, 1)->reg_id, ==, 0);
  g_assert_null(binding_at(b3, 1)->instance);
}

/* Bindings survive closing and reopening the store (a restart). */
static void
test_register_restart(Fixture *fx, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  CoreContact c = {.uri = "sips:bob@192.0.2.1",
                   .q = 0.5f,
                   .instance = "<urn:uuid:00000000-0000-1000-8000-000000000002>",
                   .reg_id = 3};
  Answer *a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "r1", 7, "FLOW-OLD");
  g_assert_cmpuint(a->status, ==, 200);

  g_clear_pointer(&fx->core, core_service_free);
  g_clear_pointer(&fx->store, store_db_free);
  fx->store = store_db_open(fx->dir, 0, &error);
  g_assert_no_error(error);
  CoreConfig cfg;
  fx_config(&cfg);
  fx->core = core_service_new(&cfg, fx->store, &port, fx);
  fx->now += 60;

  a = do_register(fx, "bob", BOB, NULL, 0, FALSE, 0, "q", 1, "F");
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_null(a->require); /* a query uses no flow */
  g_assert_cmpstrv(a->contacts,
                   ((const char *[]){"<sips:bob@192.0.2.1>;expires=540;q=0.5;+sip.instance="
                                     "\"<urn:uuid:00000000-0000-1000-8000-000000000002>\";"
                                     "reg-id=3",
                                     NULL}));
  /* The order state survived too. */
  a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "r1", 7, "FLOW-NEW");
  g_assert_cmpuint(a->status, ==, 500);
  a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, "r1", 8, "FLOW-NEW");
  g_assert_cmpuint(a->status, ==, 200);
  g_autoptr(GPtrArray) b = stored(fx, BOB);
  g_assert_cmpstr(binding_at(b, 0)->flow_token, ==, "FLOW-NEW");
}

/* Through another proxy (not direct): allowed, but not outbound (RFC 5626
 * 6: 439 when the REGISTER asks for it, as we do not support Path). */
static void
test_register_not_direct(Fixture *fx, gconstpointer data)
{
  const char *inst = "<urn:uuid:00000000-0000-1000-8000-000000000003>";
  CoreContact ob = {.uri = "sips:bob@192.0.2.1", .q = -1, .instance = inst, .reg_id = 1};
  CoreRegisterInfo info = reg_info(BOB, &ob, 1, FALSE, 0, "n", 1, "PROXYFLOW");
  info.direct = FALSE;
  core_register(fx->core, NULL, &info);
  g_assert_cmpuint(last(fx)->status, ==, 439);
  g_assert_cmpstr(last(fx)->phrase, ==, "First Hop Lacks Outbound Support");

  /* Without Supported: outbound the reg-id is ignored and it registers. */
  info.outbound = FALSE;
  Answer *a = register_info(fx, "bob", &info);
  g_assert_cmpuint(a->status, ==, 200);
  g_assert_null(a->require);
  g_autoptr(GPtrArray) b = stored(fx, BOB);
  g_assert_cmpuint(b->len, ==, 1);
  g_assert_cmpuint(binding_at(b, 0)->reg_id, ==, 0);
  g_assert_cmpstr(binding_at(b, 0)->flow_token, ==, "PROXYFLOW");
}

/* ---- MESSAGE ---- */

static void
send_message(Fixture *fx, gpointer txn, const char *user, const char *from, const char *to,
             GBytes *body)
{
  CoreMessageInfo info = {
      .request_uri = to,
      .to_uri = to,
      .from_uri = from,
      .content_type = "application/pkcs7-mime;smime-type=enveloped-data",
      .content_disposition = "attachment;handling=required",
      .content_transfer_encoding = "binary",
      .body = body,
      .direct = TRUE,
      .peer_addr = "127.0.0.1:6000",
  };
  core_message(fx->core, txn, &info);
  Answer *challenge = last(fx);
  if (challenge->status != 401)
    return;
  g_autofree char *auth =
      authorization(fx, (const char *const *)challenge->challenges, user, "MESSAGE", to);
  const char *auths[] = {auth, NULL};
  info.authorization = auths;
  core_message(fx->core, txn, &info);
}

static void
register_bob(Fixture *fx, guint n)
{
  for (guint i = 0; i < n; i++) {
    g_autofree char *uri = g_strdup_printf("sips:bob@192.0.2.%u", i + 1);
    g_autofree char *flow = g_strdup_printf("FLOW%u", i + 1);
    g_autofree char *call = g_strdup_printf("reg-%u", i);
    CoreContact c = {.uri = uri, .q = -1};
    Answer *a = do_register(fx, "bob", BOB, &c, 1, FALSE, 0, call, 1, flow);
    g_assert_cmpuint(a->status, ==, 200);
  }
}

static void
test_message_relay(Fixture *fx, gconstpointer data)
{
  static const guint8 bytes[] = {0x30, 0x82, 0x00, 0x0d, '\r', '\n', 0xff, 0x00};
  g_autoptr(GBytes) body = g_bytes_new_static(bytes, sizeof bytes);
  register_bob(fx, 2);
  guint answered = fx->answers->len;

  send_message(fx, GUINT_TO_POINTER(77), "alice", ALICE, BOB, body);
  /* Relayed, not answered yet (the 401 came first). */
  g_assert_cmpuint(fx->legs->len, ==, 2);
  g_assert_cmpuint(fx->answers->len, ==, answered + 1);
  Leg *l0 = g_ptr_array_index(fx->legs, 0);
  g_assert_cmpstr(l0->from, ==, ALICE);
  g_assert_cmpstr(l0->to, ==, BOB);
  g_assert_cmpstr(l0->ctype, ==, "application/pkcs7-mime;smime-type=enveloped-data");
  g_assert_cmpstr(l0->disposition, ==, "attachment;handling=required");
  g_assert_cmpstr(l0->cte, ==, "binary");
  g_assert_true(g_bytes_equal(l0->body, body));
  Leg *l1 = g_ptr_array_index(fx->legs, 1);
  g_assert_cmpstr(l0->flow, !=, l1->flow);

  /* 486 from one device, 200 from the other: the 200 wins, once. */
  core_relay_done(fx->core, l0->leg, 486, "Busy Here");
  g_assert_cmpuint(fx->answers->len, ==, answered + 1);
  core_relay_done(fx->core, l1->leg, 200, "OK");
  g_assert_cmpuint(fx->answers->len, ==, answered + 2);
  g_assert_cmpuint(last(fx)->status, ==, 200);
  g_assert_true(last(fx)->txn == GUINT_TO_POINTER(77));
  /* A late or repeated report is ignored. */
  core_relay_done(fx->core, l1->leg, 500, "late");
  g_assert_cmpuint(fx->answers->len, ==, answered + 2);

  /* A gone flow (430) loses to a device's own 4xx, whatever the order. */
  send_message(fx, GUINT_TO_POINTER(78), "alice", ALICE, BOB, body);
  Leg *a = g_ptr_array_index(fx->legs, 2), *b = g_ptr_array_index(fx->legs, 3);
  core_relay_done(fx->core, a->leg, 430, "Flow Failed");
  core_relay_done(fx->core, b->leg, 486, "Busy Here");
  g_assert_cmpuint(last(fx)->status, ==, 486);

  /* Every flow gone: 480. */
  send_message(fx, GUINT_TO_POINTER(79), "alice", ALICE, BOB, body);
  a = g_ptr_array_index(fx->legs, 4);
  b = g_ptr_array_index(fx->legs, 5);
  core_relay_done(fx->core, a->leg, 430, "Flow Failed");
  core_relay_done(fx->core, b->leg, 430, "Flow Failed");
  g_assert_cmpuint(last(fx)->status, ==, 480);

  /* A 6xx beats a 4xx. */
  send_message(fx, GUINT_TO_POINTER(80), "alice", ALICE, BOB, body);
  a = g_ptr_array_index(fx->legs, 6);
  b = g_ptr_array_index(fx->legs, 7);
  core_relay_done(fx->core, a->leg, 404, "Not Found");
  core_relay_done(fx->core, b->leg, 603, "Decline");
  g_assert_cmpuint(last(fx)->status, ==, 603);
}

static void
test_message_refusals(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) small = g_bytes_new_static("hi", 2);
  g_autoptr(GBytes) big = g_bytes_new_take(g_malloc0(101), 101);

  send_message(fx, NULL, "alice", ALICE, BOB, small);
  g_assert_cmpuint(last(fx)->status, ==, 480); /* bob has no binding */
  send_message(fx, NULL, "alice", ALICE, "sip:nobody@" DOMAIN, small);
  g_assert_cmpuint(last(fx)->status, ==, 404);
  send_message(fx, NULL, "alice", ALICE, "sip:bob@example.org", small);
  g_assert_cmpuint(last(fx)->status, ==, 404);
  send_message(fx, NULL, "alice", ALICE, BOB, big);
  g_assert_cmpuint(last(fx)->status, ==, 413);
  /* alice authenticates, but the From says bob. */
  send_message(fx, NULL, "alice", BOB, ALICE, small);
  g_assert_cmpuint(last(fx)->status, ==, 403);
  g_assert_nonnull(strstr(last(fx)->phrase, "authenticated user"));
  g_assert_cmpuint(fx->legs->len, ==, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define ADD(path, fn) g_test_add(path, Fixture, NULL, fx_setup, fn, fx_teardown)
  ADD("/registrar/basic", test_register_basic);
  ADD("/registrar/expiry-rules", test_register_expiry_rules);
  ADD("/registrar/wildcard-and-limits", test_register_wildcard_and_limits);
  ADD("/registrar/outbound", test_register_outbound);
  ADD("/registrar/challenge", test_register_challenge);
  ADD("/registrar/refusals", test_register_refusals);
  ADD("/registrar/refresh", test_register_refresh);
  ADD("/registrar/several", test_register_several);
  ADD("/registrar/brief-changes-nothing", test_register_brief_changes_nothing);
  ADD("/registrar/max-bindings", test_register_max_bindings);
  ADD("/registrar/expired-dropped", test_register_expired_dropped);
  ADD("/registrar/instance-only", test_register_instance_only);
  ADD("/registrar/restart", test_register_restart);
  ADD("/registrar/not-direct", test_register_not_direct);
  ADD("/relay/message", test_message_relay);
  ADD("/relay/refusals", test_message_refusals);
#undef ADD
  return g_test_run();
}
