#define G_LOG_DOMAIN "sipcred-test-core"

/* Unit tests of core/: the certificate event package (RFC 6072 section 6),
 * the subscription registry, the fan-out scheduler, Accept negotiation and
 * AOR canonicalization. A fake CorePort records every answer and NOTIFY; the
 * store is a real LMDB store in a temporary directory. */

#include <glib/gstdio.h>
#include <string.h>

#include "core/core-private.h"
#include "core/core.h"
#include "storage/store.h"

/* ---- fake port ---- */

typedef struct {
  gpointer txn;
  guint status;
  char *phrase;
  guint32 expires;
  guint32 min_expires;
  char *accept;
  char *allow_events;
} RecResponse;

typedef struct {
  gpointer sub;
  char *event;
  CoreSubstate state;
  guint32 expires;
  char *reason;
  char *content_type;
  char *content_disposition;
  GBytes *body; /* a copy, never NULL */
} RecNotify;

static void
rec_response_free(gpointer data)
{
  RecResponse *r = data;
  g_free(r->phrase);
  g_free(r->accept);
  g_free(r->allow_events);
  g_free(r);
}

static void
rec_notify_free(gpointer data)
{
  RecNotify *n = data;
  g_free(n->event);
  g_free(n->reason);
  g_free(n->content_type);
  g_free(n->content_disposition);
  g_bytes_unref(n->body);
  g_free(n);
}

typedef struct {
  char *dir;
  StoreDb *store;
  CoreService *core;
  GPtrArray *responses; /* RecResponse */
  GPtrArray *notifies;  /* RecNotify */
  gint64 now;
  GHashTable *outstanding; /* sub -> count of NOTIFYs sent, not yet done */
  guint n_outstanding;
  guint max_outstanding;
  gboolean fail_store; /* the cred_get seam reports an I/O error */
  gboolean reenter;    /* notify completes (and maybe ends) the sub at once */
  guint reenter_status;
  guint depth;
  GPtrArray *timers; /* FakeTimer, all ever scheduled */
  guint n_live_timers;
} Fixture;

/* A CorePort timer on the fake clock: fx_advance() fires it. */
typedef struct {
  gint64 due_ms;
  void (*cb)(gpointer data);
  gpointer data;
  gboolean live;
} FakeTimer;

static void fx_done(Fixture *fx, gpointer sub, guint status);

static void
fake_respond(gpointer txn, const CoreResponse *resp, gpointer user_data)
{
  Fixture *fx = user_data;
  RecResponse *r = g_new0(RecResponse, 1);
  r->txn = txn;
  r->status = resp->status;
  r->phrase = g_strdup(resp->phrase);
  r->expires = resp->expires;
  r->min_expires = resp->min_expires;
  r->accept = g_strdup(resp->accept);
  r->allow_events = g_strdup(resp->allow_events);
  g_ptr_array_add(fx->responses, r);
}

static void
fake_notify(gpointer sub, const CoreNotify *notify, gpointer user_data)
{
  Fixture *fx = user_data;
  RecNotify *n = g_new0(RecNotify, 1);
  g_assert_nonnull(notify->body);
  n->sub = sub;
  n->event = g_strdup(notify->event);
  n->state = notify->state;
  n->expires = notify->expires;
  n->reason = g_strdup(notify->reason);
  n->content_type = g_strdup(notify->content_type);
  n->content_disposition = g_strdup(notify->content_disposition);
  n->body = g_bytes_new(g_bytes_get_data(notify->body, NULL), g_bytes_get_size(notify->body));
  g_ptr_array_add(fx->notifies, n);

  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(fx->outstanding, sub));
  g_hash_table_insert(fx->outstanding, sub, GUINT_TO_POINTER(count + 1));
  fx->n_outstanding++;
  fx->max_outstanding = MAX(fx->max_outstanding, fx->n_outstanding);

  if (fx->reenter) {
    g_assert_cmpuint(fx->depth, ==, 0); /* the core never nests notify */
    fx->depth++;
    guint status = fx->reenter_status ? fx->reenter_status : 200;
    fx_done(fx, sub, status);
    if (status >= 300)
      core_subscription_gone(fx->core, sub);
    fx->depth--;
  }
}

static gint64
fake_now(gpointer user_data)
{
  Fixture *fx = user_data;
  return fx->now;
}

static gpointer
fake_schedule(guint delay_ms, void (*cb)(gpointer data), gpointer data, gpointer user_data)
{
  Fixture *fx = user_data;
  FakeTimer *t = g_new0(FakeTimer, 1);
  t->due_ms = fx->now * 1000 + delay_ms;
  t->cb = cb;
  t->data = data;
  t->live = TRUE;
  g_ptr_array_add(fx->timers, t);
  fx->n_live_timers++;
  return t;
}

static void
fake_cancel(gpointer handle, gpointer user_data)
{
  Fixture *fx = user_data;
  FakeTimer *t = handle;
  g_assert_true(t->live); /* never cancelled twice, nor after it fired */
  t->live = FALSE;
  fx->n_live_timers--;
}

static const CorePort fake_port = {
    .respond = fake_respond,
    .notify = fake_notify,
    .now = fake_now,
    .schedule = fake_schedule,
    .cancel = fake_cancel,
};

/* Moves the clock to @secs later, firing due timers in order, each with the
 * clock at its due time (rounded up to the second). */
static void
fx_advance(Fixture *fx, gint64 secs)
{
  gint64 end = fx->now + secs;
  for (;;) {
    FakeTimer *next = NULL;
    for (guint i = 0; i < fx->timers->len; i++) {
      FakeTimer *t = g_ptr_array_index(fx->timers, i);
      if (t->live && t->due_ms <= end * 1000 && (next == NULL || t->due_ms < next->due_ms))
        next = t;
    }
    if (next == NULL)
      break;
    fx->now = MAX(fx->now, (next->due_ms + 999) / 1000);
    next->live = FALSE;
    fx->n_live_timers--;
    next->cb(next->data);
  }
  fx->now = end;
}

/* What the server does when a NOTIFY transaction ends. */
static void
fx_done(Fixture *fx, gpointer sub, guint status)
{
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(fx->outstanding, sub));
  g_assert_cmpuint(count, >, 0);
  if (count == 1)
    g_hash_table_remove(fx->outstanding, sub);
  else
    g_hash_table_insert(fx->outstanding, sub, GUINT_TO_POINTER(count - 1));
  fx->n_outstanding--;
  core_notify_done(fx->core, sub, status);
}

static StoreCred *
failing_cred_get(StoreDb *db, const char *aor, gpointer user_data, GError **error)
{
  Fixture *fx = user_data;
  if (fx->fail_store) {
    g_set_error_literal(error, STORE_ERROR, STORE_ERROR_IO, "disk on fire");
    return NULL;
  }
  return store_cred_get(db, aor, error);
}

static const char *const test_domains[] = {"example.com", "Example.ORG", NULL};

static void
fx_setup_with_interval(Fixture *fx, guint window, guint32 interval)
{
  g_autoptr(GError) error = NULL;
  fx->dir = g_dir_make_tmp("sipcred-test-core-XXXXXX", &error);
  g_assert_no_error(error);
  fx->store = store_db_open(fx->dir, 0, &error);
  g_assert_no_error(error);
  g_assert_nonnull(fx->store);
  fx->responses = g_ptr_array_new_with_free_func(rec_response_free);
  fx->notifies = g_ptr_array_new_with_free_func(rec_notify_free);
  fx->outstanding = g_hash_table_new(g_direct_hash, g_direct_equal);
  fx->now = 1700000000;
  fx->timers = g_ptr_array_new_with_free_func(g_free);

  CoreConfig cfg;
  core_config_init_defaults(&cfg);
  cfg.domains = test_domains;
  cfg.default_expires = 3600;
  cfg.max_expires = 7200;
  cfg.min_expires = 60;
  cfg.notify_window = window;
  cfg.min_notify_interval = interval;
  /* The fan-out tests subscribe thousands to one AOR: no rate limits
   * (test-ratelimit.c tests those). */
  cfg.rate_limits = (CoreRateLimits){.max_entries = 1};
  fx->core = core_service_new(&cfg, fx->store, &fake_port, fx);
  g_assert_nonnull(fx->core);
  core_service_set_cred_get_cb(fx->core, failing_cred_get, fx);
}

/* The older tests check the scheduler without the interval. */
static void
fx_setup_with(Fixture *fx, guint window)
{
  fx_setup_with_interval(fx, window, 0);
}

static void
fx_setup_interval60(Fixture *fx, gconstpointer data)
{
  fx_setup_with_interval(fx, 10, 60);
}

static void
fx_setup(Fixture *fx, gconstpointer data)
{
  fx_setup_with(fx, 200);
}

static void
fx_setup_window10(Fixture *fx, gconstpointer data)
{
  fx_setup_with(fx, 10);
}

static void
fx_setup_window3(Fixture *fx, gconstpointer data)
{
  fx_setup_with(fx, 3);
}

static void
fx_teardown(Fixture *fx, gconstpointer data)
{
  g_clear_pointer(&fx->core, core_service_free);
  /* Freeing the service stops its timers: none may fire into freed memory. */
  g_assert_cmpuint(fx->n_live_timers, ==, 0);
  g_ptr_array_unref(fx->timers);
  g_clear_pointer(&fx->store, store_db_free);
  g_ptr_array_unref(fx->responses);
  g_ptr_array_unref(fx->notifies);
  g_hash_table_destroy(fx->outstanding);

  /* The store directory holds only regular files. */
  g_autoptr(GDir) d = g_dir_open(fx->dir, 0, NULL);
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    g_autofree char *path = g_build_filename(fx->dir, name, NULL);
    g_unlink(path);
  }
  g_rmdir(fx->dir);
  g_free(fx->dir);
}

static GBytes *
fake_der(const char *tag)
{
  /* The core does not parse certificates: DER-looking bytes suffice. An
   * embedded NUL checks that bodies are binary-safe. */
  g_autofree char *s = g_strdup_printf("0\x82%c%s-certificate", '\0', tag);
  return g_bytes_new(s, 2 + 1 + strlen(tag) + strlen("-certificate"));
}

static void
fx_put_cert(Fixture *fx, const char *aor, GBytes *der)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(store_cred_put_cert(fx->store, aor, der, fx->now - 60, fx->now + 86400, &error));
  g_assert_no_error(error);
}

typedef struct {
  const char *event;
  const char *request_uri;
  gboolean has_expires;
  guint32 expires;
  const char *accept;
  gboolean no_event;
  gboolean no_uri;
} SubArgs;

/* NULL fields mean the defaults below, unless no_event/no_uri ask for none. */
#define DEFAULT_EVENT "certificate"
#define DEFAULT_URI "sip:alice@example.com"

/* Sends one initial SUBSCRIBE and returns the single answer it must get. */
static RecResponse *
fx_subscribe(Fixture *fx, gpointer sub, const SubArgs *args)
{
  static int txn_token;
  guint before = fx->responses->len;
  CoreSubscribeInfo info = {
      .event = args->no_event ? NULL
               : args->event  ? args->event
                              : DEFAULT_EVENT,
      .request_uri = args->no_uri        ? NULL
                     : args->request_uri ? args->request_uri
                                         : DEFAULT_URI,
      .to_uri = args->request_uri,
      .from_uri = "sip:bob@example.net",
      .has_expires = args->has_expires,
      .expires = args->expires,
      .accept = args->accept,
      .flow_token = NULL,
  };
  core_subscribe(fx->core, &txn_token, sub, &info);
  g_assert_cmpuint(fx->responses->len, ==, before + 1);
  RecResponse *r = g_ptr_array_index(fx->responses, before);
  g_assert_true(r->txn == &txn_token);
  return r;
}

static RecNotify *
fx_notify(Fixture *fx, guint i)
{
  g_assert_cmpuint(i, <, fx->notifies->len);
  return g_ptr_array_index(fx->notifies, i);
}

static RecNotify *
fx_last_notify(Fixture *fx)
{
  g_assert_cmpuint(fx->notifies->len, >, 0);
  return fx_notify(fx, fx->notifies->len - 1);
}

static void
assert_error_response(RecResponse *r, guint status, const char *phrase)
{
  g_assert_cmpuint(r->status, ==, status);
  g_assert_cmpstr(r->phrase, ==, phrase);
  g_assert_cmpuint(r->expires, ==, 0);
}

static void
assert_cert_notify(RecNotify *n, gpointer sub, CoreSubstate state, guint32 expires, GBytes *der)
{
  g_assert_true(n->sub == sub);
  g_assert_cmpstr(n->event, ==, "certificate");
  g_assert_cmpint(n->state, ==, state);
  g_assert_cmpuint(n->expires, ==, expires);
  g_assert_cmpstr(n->content_type, ==, "application/pkix-cert");
  g_assert_cmpstr(n->content_disposition, ==, "signal");
  g_assert_true(g_bytes_equal(n->body, der));
}

static void
assert_empty_notify(RecNotify *n, gpointer sub, CoreSubstate state, guint32 expires)
{
  g_assert_true(n->sub == sub);
  g_assert_cmpstr(n->event, ==, "certificate");
  g_assert_cmpint(n->state, ==, state);
  g_assert_cmpuint(n->expires, ==, expires);
  g_assert_null(n->content_type);
  g_assert_null(n->content_disposition);
  g_assert_cmpuint(g_bytes_get_size(n->body), ==, 0);
}

#define SUB(n) GUINT_TO_POINTER(0x1000u + (n))

/* ---- rule 1: Event ---- */

static void
test_subscribe_bad_event(Fixture *fx, gconstpointer data)
{
  SubArgs none = {.no_event = TRUE};
  assert_error_response(fx_subscribe(fx, SUB(100), &none), 489, "Bad Event");
  const char *bad[] = {
      "",           "presence", "Certificate",  "CERTIFICATE", "certificates", "certificate.winfo",
      "Credential", ";id=1",    "certificate x"};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    SubArgs args = {.event = bad[i]};
    RecResponse *r = fx_subscribe(fx, SUB(i), &args);
    assert_error_response(r, 489, "Bad Event");
    g_assert_cmpstr(r->allow_events, ==, "certificate, credential");
  }
  g_assert_cmpuint(fx->notifies->len, ==, 0);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);
}

static void
test_subscribe_event_params(Fixture *fx, gconstpointer data)
{
  const char *good[] = {"certificate", "certificate;id=42", " certificate ", "certificate ;id=x"};
  for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
    SubArgs args = {.event = good[i]};
    RecResponse *r = fx_subscribe(fx, SUB(i), &args);
    g_assert_cmpuint(r->status, ==, 200);
    g_assert_null(r->allow_events);
  }
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, G_N_ELEMENTS(good));
}

/* ---- rule 2: Request-URI ---- */

static void
test_subscribe_bad_uri(Fixture *fx, gconstpointer data)
{
  SubArgs none = {.no_uri = TRUE};
  assert_error_response(fx_subscribe(fx, SUB(100), &none), 400, "Request-URI is not a user AOR");
  const char *bad[] = {"",
                       "sip:example.com",
                       "tel:+12125551212",
                       "mailto:alice@example.com",
                       "sip:@example.com",
                       "sip:alice@",
                       "sip:al ice@example.com",
                       "sip:alice%00x@example.com"};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    SubArgs args = {.request_uri = bad[i]};
    RecResponse *r = fx_subscribe(fx, SUB(i), &args);
    assert_error_response(r, 400, "Request-URI is not a user AOR");
  }
  g_assert_cmpuint(fx->notifies->len, ==, 0);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);
}

static void
test_subscribe_not_served(Fixture *fx, gconstpointer data)
{
  const char *bad[] = {"sip:alice@example.net", "sip:alice@sub.example.com", "sip:alice@192.0.2.1",
                       "sips:alice@[2001:db8::1]"};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    SubArgs args = {.request_uri = bad[i]};
    RecResponse *r = fx_subscribe(fx, SUB(i), &args);
    assert_error_response(r, 404, "Not a served domain");
  }
  g_assert_cmpuint(fx->notifies->len, ==, 0);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);
}

/* Spellings of the same AOR reach the same certificate. */
static void
test_subscribe_uri_spellings(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  const char *uris[] = {"sip:alice@example.com", "SIPS:alice@EXAMPLE.com:5061;transport=tls",
                        "<sip:%61lice@example.com>", "sip:alice@example.com?subject=x"};
  for (gsize i = 0; i < G_N_ELEMENTS(uris); i++) {
    SubArgs args = {.request_uri = uris[i]};
    RecResponse *r = fx_subscribe(fx, SUB(i), &args);
    g_assert_cmpuint(r->status, ==, 200);
    assert_cert_notify(fx_last_notify(fx), SUB(i), CORE_SUBSTATE_ACTIVE, 3600, der);
  }
  /* A second served domain, configured in mixed case. */
  SubArgs args = {.request_uri = "sip:carol@example.org"};
  g_assert_cmpuint(fx_subscribe(fx, SUB(100), &args)->status, ==, 200);
  assert_empty_notify(fx_last_notify(fx), SUB(100), CORE_SUBSTATE_ACTIVE, 3600);
}

/* ---- rule 3: Accept ---- */

static void
test_subscribe_accept(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  struct {
    const char *accept;
    gboolean ok;
  } cases[] = {
      {"application/pkix-cert", TRUE},
      {"Application/PKIX-Cert", TRUE},
      {"*/*", TRUE},
      {"application/*", TRUE},
      {"text/plain, application/pkix-cert;q=0.5", TRUE},
      {"application/pkix-cert;q=0", FALSE},
      {"application/pkix-cert;q=0.000", FALSE},
      {"*/*;q=0", FALSE},
      {"*/*, application/pkix-cert;q=0", FALSE}, /* the specific range wins */
      {"application/*;q=0, application/pkix-cert", TRUE},
      {"text/plain", FALSE},
      {"application/pkcs7-mime, message/sipfrag", FALSE},
      {"", FALSE}, /* RFC 3261 20.1: an empty Accept accepts nothing */
      {"garbage", FALSE},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    guint before = fx->notifies->len;
    SubArgs args = {.accept = cases[i].accept};
    RecResponse *r = fx_subscribe(fx, SUB(i), &args);
    if (cases[i].ok) {
      g_assert_cmpuint(r->status, ==, 200);
      g_assert_cmpuint(fx->notifies->len, ==, before + 1);
    } else {
      g_test_message("Accept: %s", cases[i].accept);
      assert_error_response(r, 406, "Accept excludes application/pkix-cert");
      g_assert_cmpstr(r->accept, ==, "application/pkix-cert");
      g_assert_cmpuint(fx->notifies->len, ==, before);
    }
  }
}

static void
test_accept_parser(void)
{
  const char *type = "application/pkix-cert";
  struct {
    const char *accept;
    gboolean ok;
  } cases[] = {
      {"application/pkix-cert", TRUE},
      {"APPLICATION/pkix-CERT", TRUE},
      {"  application / pkix-cert  ", TRUE},
      {"application/pkix-cert;q=1", TRUE},
      {"application/pkix-cert;q=1.000", TRUE},
      {"application/pkix-cert;Q=0.001", TRUE},
      {"application/pkix-cert ; q = 0.5", TRUE},
      {"application/pkix-cert;q=0", FALSE},
      {"application/pkix-cert;q=0.", FALSE},
      {"application/pkix-cert;q=1.001", FALSE},  /* malformed: skipped */
      {"application/pkix-cert;q=2", FALSE},      /* malformed: skipped */
      {"application/pkix-cert;q=0.5555", FALSE}, /* malformed: skipped */
      {"application/pkix-cert;q=\"1\"", FALSE},  /* q is not a quoted-string */
      {"application/pkix-cert;q=", FALSE},
      {"application/pkix-cert;charset=\"a,b\";q=0.9", TRUE},
      {"text/plain;x=\"a, application/pkix-cert\"", FALSE}, /* inside quotes */
      {"text/plain;x=\"unterminated, application/pkix-cert", FALSE},
      {"application/pkix-cert;level=1", TRUE},
      {"application/pkix-certificate", FALSE},
      {"application/pkix", FALSE},
      {"application", FALSE},
      {"application/", FALSE},
      {"/pkix-cert", FALSE},
      {"*/pkix-cert", FALSE},
      {"*/*", TRUE},
      {"*/*;q=0.1", TRUE},
      {"application/*;q=0", FALSE},
      {"application/*;q=0, */*", FALSE},
      {"*/*;q=0, application/*", TRUE},
      {"application/pkix-cert;q=0, application/pkix-cert", TRUE}, /* tie: higher q */
      {",, ,application/pkix-cert,", TRUE},
      {"text/html, garbage here, application/pkix-cert", TRUE},
      {"text/html, garbage here", FALSE},
      {"application/pkix-cert;;q=1", FALSE},
      {"", FALSE},
      {"   ", FALSE},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_test_message("Accept: %s", cases[i].accept);
    g_assert_cmpint(core_accept_allows(cases[i].accept, type), ==, cases[i].ok);
  }
}

static void
test_event_token(void)
{
  gsize len = 0;
  const char *t = core_event_token("  certificate;id=3", &len);
  g_assert_nonnull(t);
  g_assert_cmpuint(len, ==, strlen("certificate"));
  g_assert_cmpint(strncmp(t, "certificate", len), ==, 0);
  g_assert_null(core_event_token(NULL, &len));
  g_assert_null(core_event_token("", &len));
  g_assert_null(core_event_token("a b", &len));
  g_assert_null(core_event_token("<x>", &len));
}

/* ---- rule 4: Expires ---- */

static void
test_subscribe_expires(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);

  /* Absent: default_expires. */
  SubArgs absent = {0};
  RecResponse *r = fx_subscribe(fx, SUB(1), &absent);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpstr(r->phrase, ==, "OK");
  g_assert_cmpuint(r->expires, ==, 3600);
  assert_cert_notify(fx_last_notify(fx), SUB(1), CORE_SUBSTATE_ACTIVE, 3600, der);

  /* Within range: as asked. Exactly min_expires is allowed. */
  SubArgs at_min = {.has_expires = TRUE, .expires = 60};
  r = fx_subscribe(fx, SUB(2), &at_min);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpuint(r->expires, ==, 60);
  assert_cert_notify(fx_last_notify(fx), SUB(2), CORE_SUBSTATE_ACTIVE, 60, der);

  /* Above max_expires: max granted. */
  SubArgs big = {.has_expires = TRUE, .expires = G_MAXUINT32};
  r = fx_subscribe(fx, SUB(3), &big);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpuint(r->expires, ==, 7200);
  assert_cert_notify(fx_last_notify(fx), SUB(3), CORE_SUBSTATE_ACTIVE, 7200, der);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 3);

  /* Below min_expires: 423 with Min-Expires. */
  guint before = fx->notifies->len;
  SubArgs brief = {.has_expires = TRUE, .expires = 59};
  r = fx_subscribe(fx, SUB(4), &brief);
  assert_error_response(r, 423, "Interval Too Brief");
  g_assert_cmpuint(r->min_expires, ==, 60);
  g_assert_cmpuint(fx->notifies->len, ==, before);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 3);
}

static void
test_subscribe_fetch(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);

  SubArgs fetch = {.has_expires = TRUE, .expires = 0};
  RecResponse *r = fx_subscribe(fx, SUB(1), &fetch);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpstr(r->phrase, ==, "OK");
  g_assert_cmpuint(r->expires, ==, 0);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  RecNotify *n = fx_notify(fx, 0);
  assert_cert_notify(n, SUB(1), CORE_SUBSTATE_TERMINATED, 0, der);
  g_assert_cmpstr(n->reason, ==, "timeout");
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);

  /* Not registered: a change sends nothing, and its done is ignored. */
  fx_done(fx, SUB(1), 200);
  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  core_subscription_gone(fx->core, SUB(1));

  /* A fetch of an AOR without a certificate gets an empty terminated NOTIFY. */
  SubArgs fetch_none = {
      .request_uri = "sip:nobody@example.com", .has_expires = TRUE, .expires = 0};
  r = fx_subscribe(fx, SUB(2), &fetch_none);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpuint(r->expires, ==, 0);
  n = fx_last_notify(fx);
  assert_empty_notify(n, SUB(2), CORE_SUBSTATE_TERMINATED, 0);
  g_assert_cmpstr(n->reason, ==, "timeout");
}

/* ---- rule 5: store failure ---- */

static void
test_subscribe_store_error(Fixture *fx, gconstpointer data)
{
  fx->fail_store = TRUE;
  g_test_expect_message("sipcred-core", G_LOG_LEVEL_WARNING, "*cannot read*disk on fire*");
  SubArgs args = {0};
  RecResponse *r = fx_subscribe(fx, SUB(1), &args);
  g_test_assert_expected_messages();
  assert_error_response(r, 500, "Credential store unavailable");
  g_assert_cmpuint(fx->notifies->len, ==, 0);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);

  /* A fetch needs the state too. */
  g_test_expect_message("sipcred-core", G_LOG_LEVEL_WARNING, "*cannot read*");
  SubArgs fetch = {.has_expires = TRUE, .expires = 0};
  r = fx_subscribe(fx, SUB(2), &fetch);
  g_test_assert_expected_messages();
  assert_error_response(r, 500, "Credential store unavailable");
  g_assert_cmpuint(fx->notifies->len, ==, 0);
}

/* ---- rule 6: success ---- */

static void
test_subscribe_ok_cert(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  SubArgs args = {.has_expires = TRUE, .expires = 600, .accept = "application/pkix-cert"};
  RecResponse *r = fx_subscribe(fx, SUB(1), &args);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpstr(r->phrase, ==, "OK");
  g_assert_cmpuint(r->expires, ==, 600);
  g_assert_null(r->accept);
  g_assert_null(r->allow_events);
  g_assert_cmpuint(r->min_expires, ==, 0);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  RecNotify *n = fx_notify(fx, 0);
  assert_cert_notify(n, SUB(1), CORE_SUBSTATE_ACTIVE, 600, der);
  g_assert_null(n->reason);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);
}

static void
test_subscribe_ok_empty(Fixture *fx, gconstpointer data)
{
  SubArgs args = {.request_uri = "sip:nobody@example.com"};
  RecResponse *r = fx_subscribe(fx, SUB(1), &args);
  g_assert_cmpuint(r->status, ==, 200);
  g_assert_cmpuint(r->expires, ==, 3600);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  assert_empty_notify(fx_notify(fx, 0), SUB(1), CORE_SUBSTATE_ACTIVE, 3600);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);

  /* When a certificate appears, the subscriber gets it. */
  fx_done(fx, SUB(1), 200);
  g_autoptr(GBytes) der = fake_der("nobody");
  fx_put_cert(fx, "sip:nobody@example.com", der);
  core_cert_changed(fx->core, "sip:nobody@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  assert_cert_notify(fx_notify(fx, 1), SUB(1), CORE_SUBSTATE_ACTIVE, 3600, der);
}

/* ---- registry ---- */

static void
test_registry_gone_refresh(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  SubArgs args = {.has_expires = TRUE, .expires = 600};
  fx_subscribe(fx, SUB(1), &args);
  fx_subscribe(fx, SUB(2), &args);
  fx_done(fx, SUB(1), 200);
  fx_done(fx, SUB(2), 200);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 2);

  /* Refresh: the remaining expiry counts from the refresh. */
  fx->now += 500;
  core_subscription_refreshed(fx->core, SUB(1), 1000);
  fx->now += 100;
  core_subscription_refreshed(fx->core, SUB(99), 1000); /* unknown: ignored */

  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  /* SUB(2) expired at +600 and is not notified; SUB(1) has 900 s left. */
  g_assert_cmpuint(fx->notifies->len, ==, 3);
  assert_cert_notify(fx_notify(fx, 2), SUB(1), CORE_SUBSTATE_ACTIVE, 900, der2);
  fx_done(fx, SUB(1), 200);

  core_subscription_gone(fx->core, SUB(2));
  core_subscription_gone(fx->core, SUB(2)); /* twice: ignored */
  core_subscription_gone(fx->core, SUB(77));
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);
  core_subscription_gone(fx->core, SUB(1));
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);

  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 3);
}

/* Removal sends an empty body, and subscriptions stay (RFC 6072 7.9). */
static void
test_registry_revocation(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  g_autoptr(GError) error = NULL;
  fx_put_cert(fx, "sip:alice@example.com", der);
  SubArgs args = {0};
  fx_subscribe(fx, SUB(1), &args);
  fx_done(fx, SUB(1), 200);
  g_assert_true(store_cred_delete(fx->store, "sip:alice@example.com", &error));
  g_assert_no_error(error);
  fx->now += 10;
  core_cert_changed(fx->core, "SIP:alice@EXAMPLE.COM"); /* canonicalized */
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  assert_empty_notify(fx_notify(fx, 1), SUB(1), CORE_SUBSTATE_ACTIVE, 3590);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);
}

/* Other AORs and a different user of the same domain are not notified. */
static void
test_registry_isolation(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("alice");
  g_autoptr(GBytes) b = fake_der("bob");
  fx_put_cert(fx, "sip:alice@example.com", a);
  fx_put_cert(fx, "sip:bob@example.com", b);
  SubArgs sa = {0};
  SubArgs sb = {.request_uri = "sip:bob@example.com"};
  fx_subscribe(fx, SUB(1), &sa);
  fx_subscribe(fx, SUB(2), &sb);
  fx_done(fx, SUB(1), 200);
  fx_done(fx, SUB(2), 200);
  g_autoptr(GBytes) b2 = fake_der("bob-2");
  fx_put_cert(fx, "sip:bob@example.com", b2);
  core_cert_changed(fx->core, "sip:bob@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 3);
  assert_cert_notify(fx_notify(fx, 2), SUB(2), CORE_SUBSTATE_ACTIVE, 3600, b2);
}

/* A failed NOTIFY (408/430/481) ends the subscription in the core, as the
 * server ends the dialog; other failures keep it, and its next NOTIFY (the
 * newest state) waits for the retry pause (test_notify_retry). */
static void
test_registry_notify_failure(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  SubArgs args = {0};
  const guint statuses[] = {408, 430, 481, 500};
  for (guint i = 0; i < G_N_ELEMENTS(statuses); i++)
    fx_subscribe(fx, SUB(i), &args);
  for (guint i = 0; i < G_N_ELEMENTS(statuses); i++)
    fx_done(fx, SUB(i), statuses[i]);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);

  guint before = fx->notifies->len;
  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, before);
  fx_advance(fx, 1);
  g_assert_cmpuint(fx->notifies->len, ==, before + 1);
  g_assert_true(fx_last_notify(fx)->sub == SUB(3));
  assert_cert_notify(fx_last_notify(fx), SUB(3), CORE_SUBSTATE_ACTIVE, 3600 - 1, der2);
  /* The server then reports the ended ones gone: ignored. */
  core_subscription_gone(fx->core, SUB(0));
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);
}

/* ---- fan-out ---- */

#define N_FANOUT 1000

static void
subscribe_many(Fixture *fx, guint n, GBytes *expect)
{
  for (guint i = 0; i < n; i++) {
    SubArgs args = {0};
    g_assert_cmpuint(fx_subscribe(fx, SUB(i), &args)->status, ==, 200);
    assert_cert_notify(fx_last_notify(fx), SUB(i), CORE_SUBSTATE_ACTIVE, 3600, expect);
    fx_done(fx, SUB(i), 200);
  }
  g_ptr_array_set_size(fx->notifies, 0);
  fx->max_outstanding = 0;
}

/* Completes the oldest outstanding NOTIFY until none is left. */
static void
drain(Fixture *fx, guint *next)
{
  while (fx->n_outstanding > 0) {
    g_assert_cmpuint(*next, <, fx->notifies->len);
    RecNotify *n = fx_notify(fx, (*next)++);
    fx_done(fx, n->sub, 200);
  }
}

static void
test_fanout_window(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  subscribe_many(fx, N_FANOUT, der);

  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 10);
  g_assert_cmpuint(fx->n_outstanding, ==, 10);

  /* A notify_done for a subscription with nothing in flight is ignored:
   * it must not open an extra slot. */
  RecNotify *first = fx_notify(fx, 0);
  gpointer idle_sub = SUB(N_FANOUT - 1);
  g_assert_true(first->sub != idle_sub);
  core_notify_done(fx->core, idle_sub, 200);
  core_notify_done(fx->core, SUB(N_FANOUT + 5), 200);
  g_assert_cmpuint(fx->notifies->len, ==, 10);

  guint next = 0;
  drain(fx, &next);
  g_assert_cmpuint(fx->notifies->len, ==, N_FANOUT);
  g_assert_cmpuint(fx->max_outstanding, ==, 10);

  g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);
  for (guint i = 0; i < fx->notifies->len; i++) {
    RecNotify *n = fx_notify(fx, i);
    assert_cert_notify(n, n->sub, CORE_SUBSTATE_ACTIVE, 3600, der2);
    g_assert_true(g_hash_table_add(seen, n->sub)); /* exactly once each */
  }
  g_assert_cmpuint(g_hash_table_size(seen), ==, N_FANOUT);
}

/* A second change while NOTIFYs are queued: each subscriber gets the latest
 * body exactly once, and none gets a stale one after the change. */
static void
test_fanout_coalesce(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  subscribe_many(fx, 50, der);

  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 10); /* 10 in flight with der2 */

  /* Complete 5, then change again: 40 queued subs now carry der3, the 5
   * still in flight get der3 after their der2 completes. */
  guint next = 0;
  for (; next < 5; next++)
    fx_done(fx, fx_notify(fx, next)->sub, 200);
  guint sent_before_change = fx->notifies->len; /* 15 */
  g_autoptr(GBytes) der3 = fake_der("alice-3");
  fx_put_cert(fx, "sip:alice@example.com", der3);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, sent_before_change);
  drain(fx, &next);

  g_autoptr(GHashTable) last_body = g_hash_table_new(g_direct_hash, g_direct_equal);
  g_autoptr(GHashTable) count = g_hash_table_new(g_direct_hash, g_direct_equal);
  for (guint i = 0; i < fx->notifies->len; i++) {
    RecNotify *n = fx_notify(fx, i);
    if (i >= sent_before_change)
      g_assert_true(g_bytes_equal(n->body, der3)); /* nothing stale after */
    g_hash_table_insert(last_body, n->sub, n->body);
    guint c = GPOINTER_TO_UINT(g_hash_table_lookup(count, n->sub));
    g_hash_table_insert(count, n->sub, GUINT_TO_POINTER(c + 1));
  }
  g_assert_cmpuint(g_hash_table_size(last_body), ==, 50);
  GHashTableIter iter;
  gpointer sub, body;
  g_hash_table_iter_init(&iter, last_body);
  while (g_hash_table_iter_next(&iter, &sub, &body)) {
    g_assert_true(g_bytes_equal(body, der3));
    guint c = GPOINTER_TO_UINT(g_hash_table_lookup(count, sub));
    /* The 15 that got der2 get der3 once more; the rest only der3. */
    g_assert_cmpuint(c, <=, 2);
  }
  g_assert_cmpuint(fx->notifies->len, ==, 50 + 15);
  g_assert_cmpuint(fx->max_outstanding, <=, 10);
}

/* Many changes while nothing could be sent: one NOTIFY per subscriber. */
static void
test_fanout_coalesce_burst(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  SubArgs args = {0};
  fx_subscribe(fx, SUB(1), &args); /* initial NOTIFY in flight */
  for (int i = 0; i < 5; i++) {
    g_autofree char *tag = g_strdup_printf("v%d", i);
    g_autoptr(GBytes) v = fake_der(tag);
    fx_put_cert(fx, "sip:alice@example.com", v);
    core_cert_changed(fx->core, "sip:alice@example.com");
  }
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  fx_done(fx, SUB(1), 200);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  g_autoptr(GBytes) v4 = fake_der("v4");
  assert_cert_notify(fx_notify(fx, 1), SUB(1), CORE_SUBSTATE_ACTIVE, 3600, v4);
  fx_done(fx, SUB(1), 200);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
}

/* Subscriptions that end during fan-out leave the queue and free their
 * slot; the rest still get exactly one NOTIFY each. */
static void
test_fanout_gone(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  subscribe_many(fx, 100, der);

  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 10);

  /* End the 10 in flight without done (flow died), and 20 queued ones. */
  g_autoptr(GHashTable) ended = g_hash_table_new(g_direct_hash, g_direct_equal);
  for (guint i = 0; i < 10; i++) {
    gpointer sub = fx_notify(fx, i)->sub;
    g_hash_table_add(ended, sub);
    g_hash_table_remove(fx->outstanding, sub);
    fx->n_outstanding--;
    core_subscription_gone(fx->core, sub);
  }
  /* The freed slots went to the next 10. */
  g_assert_cmpuint(fx->notifies->len, ==, 20);
  g_assert_cmpuint(fx->n_outstanding, ==, 10);
  guint ended_queued = 0;
  for (guint i = 0; i < 100 && ended_queued < 20; i++) {
    gboolean sent = FALSE;
    for (guint j = 0; j < fx->notifies->len; j++)
      sent = sent || fx_notify(fx, j)->sub == SUB(i);
    if (!sent) {
      g_hash_table_add(ended, SUB(i));
      core_subscription_gone(fx->core, SUB(i));
      ended_queued++;
    }
  }
  g_assert_cmpuint(ended_queued, ==, 20);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 70);

  guint next = 10;
  drain(fx, &next);
  g_assert_cmpuint(fx->notifies->len, ==, 80); /* 10 ended in flight + 70 */
  g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);
  for (guint i = 10; i < fx->notifies->len; i++) {
    RecNotify *n = fx_notify(fx, i);
    g_assert_false(g_hash_table_contains(ended, n->sub));
    g_assert_true(g_bytes_equal(n->body, der2));
    g_assert_true(g_hash_table_add(seen, n->sub));
  }
  g_assert_cmpuint(fx->max_outstanding, <=, 10);
}

/* The port may call back into the core from inside notify: the edge can
 * answer at once (e.g. 430 for a dead flow) before nua_notify() returns. */
static void
test_fanout_reentrant(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) der = fake_der("alice");
  fx_put_cert(fx, "sip:alice@example.com", der);
  fx->reenter = TRUE;
  for (guint i = 0; i < 20; i++) {
    SubArgs args = {0};
    g_assert_cmpuint(fx_subscribe(fx, SUB(i), &args)->status, ==, 200);
  }
  g_assert_cmpuint(fx->notifies->len, ==, 20);
  g_autoptr(GBytes) der2 = fake_der("alice-2");
  fx_put_cert(fx, "sip:alice@example.com", der2);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 40);
  g_assert_cmpuint(fx->n_outstanding, ==, 0);
  for (guint i = 20; i < 40; i++)
    g_assert_true(g_bytes_equal(fx_notify(fx, i)->body, der2));

  /* A subscriber ended from inside notify (430, then gone). */
  fx->reenter_status = 430;
  g_autoptr(GBytes) der3 = fake_der("alice-3");
  fx_put_cert(fx, "sip:alice@example.com", der3);
  core_cert_changed(fx->core, "sip:alice@example.com");
  g_assert_cmpuint(fx->notifies->len, ==, 60);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);
}

/* ---- AOR canonicalization ---- */

/* ---- minimum interval between NOTIFYs (RFC 6072 6.10, 7.12) ---- */

#define SUB_A GUINT_TO_POINTER(0x1a)

static void
test_interval_defer_coalesce(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("a");
  g_autoptr(GBytes) b = fake_der("b");
  g_autoptr(GBytes) c = fake_der("c");
  fx_put_cert(fx, DEFAULT_URI, a);
  gint64 t0 = fx->now;

  /* The first NOTIFY goes out with the 200, whatever the interval. */
  g_assert_cmpuint(fx_subscribe(fx, SUB_A, &(SubArgs){0})->status, ==, 200);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  assert_cert_notify(fx_notify(fx, 0), SUB_A, CORE_SUBSTATE_ACTIVE, 3600, a);
  fx_done(fx, SUB_A, 200);

  /* Two changes within the minute: nothing yet, and one timer only. */
  fx_advance(fx, 10);
  fx_put_cert(fx, DEFAULT_URI, b);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  g_assert_cmpuint(fx->n_live_timers, ==, 1);
  fx_advance(fx, 10);
  fx_put_cert(fx, DEFAULT_URI, c);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  g_assert_cmpuint(fx->n_live_timers, ==, 1);

  fx_advance(fx, 39); /* t0 + 59 */
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  fx_advance(fx, 1); /* t0 + 60: one NOTIFY with the newest state */
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  assert_cert_notify(fx_notify(fx, 1), SUB_A, CORE_SUBSTATE_ACTIVE, 3600 - 60, c);
  g_assert_cmpint(fx->now, ==, t0 + 60);
  fx_done(fx, SUB_A, 200);

  /* The interval counts from that NOTIFY, not from the subscription. */
  fx_advance(fx, 1);
  fx_put_cert(fx, DEFAULT_URI, a);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  fx_advance(fx, 58); /* t0 + 119 */
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  fx_advance(fx, 1);
  g_assert_cmpuint(fx->notifies->len, ==, 3);
  assert_cert_notify(fx_notify(fx, 2), SUB_A, CORE_SUBSTATE_ACTIVE, 3600 - 120, a);
  fx_done(fx, SUB_A, 200);

  /* After a quiet interval a change goes out at once. */
  fx_advance(fx, 300);
  store_cred_delete(fx->store, DEFAULT_URI, NULL);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 4);
  assert_empty_notify(fx_notify(fx, 3), SUB_A, CORE_SUBSTATE_ACTIVE, 3600 - 420);
  g_assert_cmpuint(fx->n_live_timers, ==, 0);
  fx_done(fx, SUB_A, 200);
}

/* A change while the first NOTIFY is still in flight waits for the interval
 * after that NOTIFY, not just for its completion. */
static void
test_interval_in_flight(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("a");
  g_autoptr(GBytes) b = fake_der("b");
  fx_put_cert(fx, DEFAULT_URI, a);
  g_assert_cmpuint(fx_subscribe(fx, SUB_A, &(SubArgs){0})->status, ==, 200);
  fx_put_cert(fx, DEFAULT_URI, b);
  core_cert_changed(fx->core, DEFAULT_URI);
  fx_advance(fx, 5);
  fx_done(fx, SUB_A, 200);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  fx_advance(fx, 54);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  fx_advance(fx, 1);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  assert_cert_notify(fx_notify(fx, 1), SUB_A, CORE_SUBSTATE_ACTIVE, 3600 - 60, b);
  fx_done(fx, SUB_A, 200);
}

/* A NOTIFY failing without ending the dialog usage (503, e.g. nua's own when
 * its send queue is full) is sent again after 1 s, then 2 s, with the same
 * state and not held back by the 60 s interval; a success resets the count;
 * when the third retry (after 4 s) fails too, the subscription is dropped. */
static void
test_notify_retry(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("a");
  g_autoptr(GBytes) b = fake_der("b");
  fx_put_cert(fx, DEFAULT_URI, a);
  g_assert_cmpuint(fx_subscribe(fx, SUB_A, &(SubArgs){0})->status, ==, 200);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  fx_done(fx, SUB_A, 503);
  fx_advance(fx, 0);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  fx_advance(fx, 1);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  assert_cert_notify(fx_notify(fx, 1), SUB_A, CORE_SUBSTATE_ACTIVE, 3600 - 1, a);
  /* A newer state while the retry is out: the next retry carries it. */
  fx_put_cert(fx, DEFAULT_URI, b);
  core_cert_changed(fx->core, DEFAULT_URI);
  fx_done(fx, SUB_A, 500);
  fx_advance(fx, 1);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  fx_advance(fx, 1);
  g_assert_cmpuint(fx->notifies->len, ==, 3);
  assert_cert_notify(fx_notify(fx, 2), SUB_A, CORE_SUBSTATE_ACTIVE, 3600 - 3, b);
  fx_done(fx, SUB_A, 200);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);

  /* After a success the count starts again: four more failures drop it. */
  core_cert_changed(fx->core, DEFAULT_URI); /* same state: nothing to send */
  fx_put_cert(fx, DEFAULT_URI, a);
  core_cert_changed(fx->core, DEFAULT_URI);
  fx_advance(fx, 60);
  guint sent = fx->notifies->len;
  g_assert_cmpuint(sent, ==, 4);
  fx_done(fx, SUB_A, 503);
  fx_advance(fx, 1);
  fx_done(fx, SUB_A, 503);
  fx_advance(fx, 2);
  g_assert_cmpuint(fx->notifies->len, ==, sent + 2);
  fx_done(fx, SUB_A, 503);
  fx_advance(fx, 4);
  g_assert_cmpuint(fx->notifies->len, ==, sent + 3);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 1);
  fx_done(fx, SUB_A, 503);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);
  fx_advance(fx, 10);
  g_assert_cmpuint(fx->notifies->len, ==, sent + 3);
  core_subscription_gone(fx->core, SUB_A);
}

/* Deferred subscribers hold no window slot: with all 10 slots' worth of
 * subscribers waiting, another AOR's subscriber is notified at once. */
static void
test_interval_window_free(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("a");
  g_autoptr(GBytes) b = fake_der("b");
  const char *bob = "sip:bob@example.com";
  gpointer bob_sub = GUINT_TO_POINTER(0xb0b);
  fx_put_cert(fx, DEFAULT_URI, a);
  fx_put_cert(fx, bob, a);

  g_assert_cmpuint(fx_subscribe(fx, bob_sub, &(SubArgs){.request_uri = bob})->status, ==, 200);
  fx_done(fx, bob_sub, 200);
  fx_advance(fx, 100);
  for (guint i = 1; i <= 10; i++) {
    g_assert_cmpuint(fx_subscribe(fx, GUINT_TO_POINTER(i), &(SubArgs){0})->status, ==, 200);
    fx_done(fx, GUINT_TO_POINTER(i), 200);
  }
  g_assert_cmpuint(fx->notifies->len, ==, 11);

  fx_put_cert(fx, DEFAULT_URI, b);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 11);
  g_assert_cmpuint(fx->n_live_timers, ==, 10);

  fx_put_cert(fx, bob, b);
  core_cert_changed(fx->core, bob);
  g_assert_cmpuint(fx->notifies->len, ==, 12);
  assert_cert_notify(fx_last_notify(fx), bob_sub, CORE_SUBSTATE_ACTIVE, 3600 - 100, b);
  fx_done(fx, bob_sub, 200);

  /* When the minute is up all ten go out, through the window. */
  fx_advance(fx, 60);
  g_assert_cmpuint(fx->notifies->len, ==, 22);
  g_assert_cmpuint(fx->max_outstanding, <=, 10);
  for (guint i = 12; i < 22; i++) {
    RecNotify *n = fx_notify(fx, i);
    g_assert_true(g_bytes_equal(n->body, b));
    fx_done(fx, n->sub, 200);
  }
}

/* A subscription that ends while deferred cancels its timer and gets nothing. */
static void
test_interval_gone_cancels(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("a");
  g_autoptr(GBytes) b = fake_der("b");
  fx_put_cert(fx, DEFAULT_URI, a);
  g_assert_cmpuint(fx_subscribe(fx, SUB_A, &(SubArgs){0})->status, ==, 200);
  fx_done(fx, SUB_A, 200);
  fx_put_cert(fx, DEFAULT_URI, b);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->n_live_timers, ==, 1);

  core_subscription_gone(fx->core, SUB_A);
  g_assert_cmpuint(fx->n_live_timers, ==, 0);
  fx_advance(fx, 120);
  g_assert_cmpuint(fx->notifies->len, ==, 1);
  g_assert_cmpuint(core_service_get_n_subscriptions(fx->core), ==, 0);

  /* A deferred subscription still alive when the service goes: teardown
   * checks that freeing the service cancels this timer. */
  g_assert_cmpuint(fx_subscribe(fx, SUB_A, &(SubArgs){0})->status, ==, 200);
  fx_done(fx, SUB_A, 200);
  g_autoptr(GBytes) c = fake_der("c");
  fx_put_cert(fx, DEFAULT_URI, c);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->n_live_timers, ==, 1);
}

/* Interval 0 (benchmarks): every change is sent at once, no timer. */
static void
test_interval_zero(Fixture *fx, gconstpointer data)
{
  g_autoptr(GBytes) a = fake_der("a");
  g_autoptr(GBytes) b = fake_der("b");
  fx_put_cert(fx, DEFAULT_URI, a);
  g_assert_cmpuint(fx_subscribe(fx, SUB_A, &(SubArgs){0})->status, ==, 200);
  fx_done(fx, SUB_A, 200);
  fx_put_cert(fx, DEFAULT_URI, b);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 2);
  assert_cert_notify(fx_notify(fx, 1), SUB_A, CORE_SUBSTATE_ACTIVE, 3600, b);
  fx_done(fx, SUB_A, 200);
  fx_put_cert(fx, DEFAULT_URI, a);
  core_cert_changed(fx->core, DEFAULT_URI);
  g_assert_cmpuint(fx->notifies->len, ==, 3);
  fx_done(fx, SUB_A, 200);
  g_assert_cmpuint(fx->timers->len, ==, 0);
}

static void
test_aor_valid(void)
{
  struct {
    const char *in;
    const char *out;
  } cases[] = {
      {"sip:alice@example.com", "sip:alice@example.com"},
      {"sips:alice@example.com", "sip:alice@example.com"},
      {"SIP:alice@EXAMPLE.COM", "sip:alice@example.com"},
      {"SiPs:Alice@Example.Com", "sip:Alice@example.com"}, /* user is case-sensitive */
      {"<sip:alice@example.com>", "sip:alice@example.com"},
      {"  <sip:alice@example.com>\t", "sip:alice@example.com"},
      {"sip:alice@example.com:5061", "sip:alice@example.com"},
      {"sip:alice@example.com;transport=tls", "sip:alice@example.com"},
      {"sip:alice@example.com:5060;transport=tcp;lr?subject=hi&x=%20y", "sip:alice@example.com"},
      {"sip:alice@example.com?x=y", "sip:alice@example.com"},
      {"sip:alice@example.com.", "sip:alice@example.com"},
      {"sip:%61lice@example.com", "sip:alice@example.com"},
      {"sip:%41%2d%5F%2E%21%7E%2A%27%28%29@example.com", "sip:A-_.!~*'()@example.com"},
      {"sip:a%40b@example.com", "sip:a%40b@example.com"}, /* '@' stays escaped */
      {"sip:a%3ab@example.com", "sip:a%3Ab@example.com"}, /* hex upper-cased */
      {"sip:a%20b@example.com", "sip:a%20b@example.com"},
      {"sip:+1-212-555-1212;phone-context=x@example.com",
       "sip:+1-212-555-1212;phone-context=x@example.com"},
      {"sip:a&=+$,;?/b@example.com", "sip:a&=+$,;?/b@example.com"},
      {"sip:alice@192.0.2.1", "sip:alice@192.0.2.1"},
      {"sip:alice@192.0.2.1:5060", "sip:alice@192.0.2.1"},
      {"sip:alice@[2001:DB8::1]", "sip:alice@[2001:db8::1]"},
      {"sip:alice@[2001:db8:0:0:0:0:0:1]:5061;transport=tls", "sip:alice@[2001:db8::1]"},
      {"sip:alice@[::ffff:192.0.2.1]", "sip:alice@[::ffff:192.0.2.1]"},
      {"sip:alice@a-b.c0.example", "sip:alice@a-b.c0.example"},
      {"sip:alice@localhost", "sip:alice@localhost"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    g_test_message("in: %s", cases[i].in);
    g_autofree char *out = core_aor_canonicalize(cases[i].in, &error);
    g_assert_no_error(error);
    g_assert_cmpstr(out, ==, cases[i].out);
    /* Canonical forms are fixed points. */
    g_autofree char *again = core_aor_canonicalize(out, &error);
    g_assert_no_error(error);
    g_assert_cmpstr(again, ==, out);
  }
}

static void
test_aor_invalid(void)
{
  g_autofree char *long_user = g_strnfill(600, 'a');
  g_autofree char *overlong = g_strdup_printf("sip:%s@example.com", long_user);
  g_autofree char *at_limit_user = g_strnfill(CORE_AOR_MAX_INPUT - strlen("sip:@x.org"), 'a');
  g_autofree char *just_over = g_strdup_printf("sip:%sa@x.org", at_limit_user);
  g_autofree char *long_label = g_strnfill(64, 'a');
  g_autofree char *long_label_uri = g_strdup_printf("sip:a@%s.com", long_label);
  const char *cases[] = {
      "",
      "   ",
      "alice@example.com",
      "sip:example.com",  /* no user */
      "sip:@example.com", /* empty user */
      "sip:alice@",       /* empty host */
      "sip:alice@:5060",
      "sip:alice@;transport=tls",
      "tel:+12125551212",
      "sipx:alice@example.com",
      "http://alice@example.com/",
      "mailto:alice@example.com",
      "Alice <sip:alice@example.com>", /* display names are not expected */
      "<sip:alice@example.com",
      "sip:alice@example.com>",
      "<>",
      "sip:al ice@example.com",
      "sip:alice@exa mple.com",
      "sip:alice\t@example.com",
      "sip:alice\r\n@example.com",
      "sip:alice@example.com\r\nVia: x",
      "sip:al\x7fice@example.com",
      "sip:al\xc3\xa9@example.com", /* raw UTF-8 */
      "sip:alice%00@example.com",   /* NUL: rejected, not truncated */
      "sip:alice%00x@example.com",
      "sip:alice%0a@example.com",
      "sip:alice%7F@example.com",
      "sip:alice%@example.com",
      "sip:alice%4@example.com",
      "sip:alice%zz@example.com",
      "sip:alice@example.com;x=%00",
      "sip:alice@example.com?x=%0d%0a",
      "sip:alice@example.com;x=<y>",
      "sip:alice:secret@example.com", /* passwords are not part of AORs */
      "sip:al\"ice@example.com",
      "sip:al<ice@example.com",
      "sip:a@b@example.com",
      "sip:alice@exa_mple.com",
      "sip:alice@-example.com",
      "sip:alice@example-.com",
      "sip:alice@example..com",
      "sip:alice@.example.com",
      "sip:alice@example.com..",
      "sip:alice@example.123", /* toplabel starts with a letter */
      "sip:alice@256.1.1.1",
      "sip:alice@1.2.3",
      "sip:alice@[2001:db8::1",
      "sip:alice@[2001:db8::g]",
      "sip:alice@[]",
      "sip:alice@[2001:db8::1]x",
      "sip:alice@[192.0.2.1]",
      "sip:alice@example.com:",
      "sip:alice@example.com:65536",
      "sip:alice@example.com:123456",
      "sip:alice@example.com:50a",
      "sip:alice@example.com#frag",
      overlong,
      just_over,
      long_label_uri,
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    g_test_message("in: %s", cases[i]);
    g_autofree char *out = core_aor_canonicalize(cases[i], &error);
    g_assert_null(out);
    g_assert_error(error, CORE_ERROR, CORE_ERROR_BAD_URI);
  }
  g_autoptr(GError) error = NULL;
  g_assert_null(core_aor_canonicalize(NULL, &error));
  g_assert_error(error, CORE_ERROR, CORE_ERROR_BAD_URI);

  /* The length limit is inclusive. */
  g_autofree char *at_limit = g_strdup_printf("sip:%s@x.org", at_limit_user);
  g_assert_cmpuint(strlen(at_limit), ==, CORE_AOR_MAX_INPUT);
  g_autofree char *ok = core_aor_canonicalize(at_limit, NULL);
  g_assert_cmpstr(ok, ==, at_limit);

  /* Normalising may lengthen an IPv6 host ("::ffff:a:a" prints as
   * "::ffff:0.10.0.10"): an input within the limit whose canonical form
   * would exceed it is refused, so that every canonical AOR canonicalizes
   * to itself (found by fuzz-core-accept-aor). */
  const char *host = "@[::ffff:a:a]";
  g_autofree char *user = g_strnfill(CORE_AOR_MAX_INPUT - strlen("sip:") - strlen(host), 'u');
  g_autofree char *grows = g_strconcat("sip:", user, host, NULL);
  g_assert_cmpuint(strlen(grows), ==, CORE_AOR_MAX_INPUT);
  g_autoptr(GError) grow_error = NULL;
  g_assert_null(core_aor_canonicalize(grows, &grow_error));
  g_assert_error(grow_error, CORE_ERROR, CORE_ERROR_BAD_URI);
  g_autofree char *short_mapped = core_aor_canonicalize("sip:u@[::ffff:a:a]", NULL);
  g_assert_cmpstr(short_mapped, ==, "sip:u@[::ffff:0.10.0.10]");
  g_autofree char *again = core_aor_canonicalize(short_mapped, NULL);
  g_assert_cmpstr(again, ==, short_mapped);
}

static void
test_aor_served(void)
{
  const char *domains[] = {"example.com", "Example.ORG", "trailing.example.", NULL};
  struct {
    const char *in;
    const char *out; /* NULL: not served */
  } cases[] = {
      {"sip:a@example.com", "sip:a@example.com"},
      {"sips:a@EXAMPLE.COM:5061", "sip:a@example.com"},
      {"sip:a@example.org", "sip:a@example.org"},
      {"sip:a@trailing.example", "sip:a@trailing.example"},
      {"sip:a@sub.example.com", NULL},
      {"sip:a@example.com.evil.net", NULL},
      {"sip:a@xexample.com", NULL},
      {"sip:a@example.co", NULL},
      {"sip:a@192.0.2.1", NULL},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = core_aor_canonicalize_served(domains, cases[i].in, &error);
    g_assert_cmpstr(out, ==, cases[i].out);
    if (cases[i].out == NULL)
      g_assert_error(error, CORE_ERROR, CORE_ERROR_NOT_SERVED);
    else
      g_assert_no_error(error);
  }
  g_autoptr(GError) error = NULL;
  g_assert_null(core_aor_canonicalize_served(domains, "sip:example.com", &error));
  g_assert_error(error, CORE_ERROR, CORE_ERROR_BAD_URI);
  g_clear_error(&error);
  g_assert_null(core_aor_canonicalize_served(NULL, "sip:a@example.com", &error));
  g_assert_error(error, CORE_ERROR, CORE_ERROR_NOT_SERVED);
}

static void
test_config_defaults(void)
{
  CoreConfig cfg;
  memset(&cfg, 0xa5, sizeof cfg);
  core_config_init_defaults(&cfg);
  g_assert_null(cfg.domains);
  g_assert_cmpuint(cfg.default_expires, ==, 86400);
  g_assert_cmpuint(cfg.max_expires, ==, 86400);
  g_assert_cmpuint(cfg.min_expires, ==, 60);
  g_assert_cmpuint(cfg.notify_window, ==, 200);
  g_assert_cmpuint(cfg.min_notify_interval, ==, 60);
}

#define ADD(path, setup, func) g_test_add(path, Fixture, NULL, setup, func, fx_teardown)

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  ADD("/core/subscribe/bad-event", fx_setup, test_subscribe_bad_event);
  ADD("/core/subscribe/event-params", fx_setup, test_subscribe_event_params);
  ADD("/core/subscribe/bad-uri", fx_setup, test_subscribe_bad_uri);
  ADD("/core/subscribe/not-served", fx_setup, test_subscribe_not_served);
  ADD("/core/subscribe/uri-spellings", fx_setup, test_subscribe_uri_spellings);
  ADD("/core/subscribe/accept", fx_setup, test_subscribe_accept);
  ADD("/core/subscribe/expires", fx_setup, test_subscribe_expires);
  ADD("/core/subscribe/fetch", fx_setup, test_subscribe_fetch);
  ADD("/core/subscribe/store-error", fx_setup, test_subscribe_store_error);
  ADD("/core/subscribe/ok-cert", fx_setup, test_subscribe_ok_cert);
  ADD("/core/subscribe/ok-empty", fx_setup, test_subscribe_ok_empty);
  ADD("/core/registry/gone-refresh", fx_setup, test_registry_gone_refresh);
  ADD("/core/registry/revocation", fx_setup, test_registry_revocation);
  ADD("/core/registry/isolation", fx_setup, test_registry_isolation);
  ADD("/core/registry/notify-failure", fx_setup, test_registry_notify_failure);
  ADD("/core/fanout/window", fx_setup_window10, test_fanout_window);
  ADD("/core/fanout/coalesce", fx_setup_window10, test_fanout_coalesce);
  ADD("/core/fanout/coalesce-burst", fx_setup_window10, test_fanout_coalesce_burst);
  ADD("/core/fanout/gone", fx_setup_window10, test_fanout_gone);
  ADD("/core/fanout/reentrant", fx_setup_window3, test_fanout_reentrant);
  ADD("/core/interval/defer-coalesce", fx_setup_interval60, test_interval_defer_coalesce);
  ADD("/core/interval/in-flight", fx_setup_interval60, test_interval_in_flight);
  ADD("/core/notify/retry", fx_setup_interval60, test_notify_retry);
  ADD("/core/interval/window-free", fx_setup_interval60, test_interval_window_free);
  ADD("/core/interval/gone-cancels", fx_setup_interval60, test_interval_gone_cancels);
  ADD("/core/interval/zero", fx_setup, test_interval_zero);
  g_test_add_func("/core/accept/parser", test_accept_parser);
  g_test_add_func("/core/event/token", test_event_token);
  g_test_add_func("/core/aor/valid", test_aor_valid);
  g_test_add_func("/core/aor/invalid", test_aor_invalid);
  g_test_add_func("/core/aor/served", test_aor_served);
  g_test_add_func("/core/config/defaults", test_config_defaults);

  return g_test_run();
}
