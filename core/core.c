#define G_LOG_DOMAIN "sipcred-core"

/* core: the RFC 6072 event packages, the subscription registry and the
 * fan-out scheduler.
 *
 * Every notifier rule lives here; the server only carries messages. Each
 * subscription is a CoreSub keyed by the server's opaque @sub pointer and
 * linked into the list of subscribers of its (package, AOR). A state change
 * of an AOR reads the store once per package, hands the new body to each
 * subscriber that does not already have it and queues those that are idle.
 * The scheduler sends queued NOTIFYs while fewer than notify_window are in
 * flight, because nua's send queue drops NOTIFYs when thousands arrive at
 * once (DESIGN.md). A subscriber notified less than min_notify_interval ago
 * is not queued but waits on a port timer, holding no window slot; whatever
 * changes meanwhile only replaces its pending body. Ending a credential
 * subscription (revocation) never waits for the interval.
 */

#include "core/core-service.h"

#include <gio/gio.h>
#include <string.h>

#include "core/credbody.h"
#include "identity/cert.h"

/* What differs between event packages. */
struct _CorePackage {
  const char *event;        /* event-package token, case-sensitive */
  const char *const *types; /* media types an Accept must allow (RFC 6072 6.4, 7.4) */
  const char *accept;       /* the Accept header of our 406 */
  gboolean credential;      /* serves private keys: authenticated, direct TLS only */
};

enum {
  CORE_PKG_CERTIFICATE,
  CORE_PKG_CREDENTIAL,
  CORE_N_PACKAGES,
};

static const char *const core_cert_types[] = {"application/pkix-cert", NULL};
static const char *const core_cred_types[] = {"multipart/mixed", "application/pkix-cert",
                                              "application/pkcs8", NULL};

static const CorePackage core_packages[CORE_N_PACKAGES] = {
    [CORE_PKG_CERTIFICATE] =
        {
            .event = "certificate",
            .types = core_cert_types,
            .accept = "application/pkix-cert",
        },
    [CORE_PKG_CREDENTIAL] =
        {
            .event = "credential",
            .types = core_cred_types,
            .accept = "multipart/mixed, application/pkix-cert, application/pkcs8",
            .credential = TRUE,
        },
};

/* A NOTIFY body and its type, shared by every subscriber it goes to. */
typedef struct {
  GBytes *bytes;      /* empty: no body */
  char *content_type; /* NULL for an empty body */
} CoreBody;

static void
core_body_clear(gpointer data)
{
  CoreBody *b = data;
  g_bytes_unref(b->bytes);
  g_free(b->content_type);
}

static CoreBody *
core_body_new(const CoreState *state)
{
  CoreBody *b = g_rc_box_new0(CoreBody);
  b->bytes = g_bytes_ref(state->body);
  b->content_type = g_strdup(state->content_type);
  return b;
}

static CoreBody *
core_body_ref(CoreBody *b)
{
  return g_rc_box_acquire(b);
}

static void
core_body_unref(CoreBody *b)
{
  g_rc_box_release_full(b, core_body_clear);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CoreBody, core_body_unref)

static gboolean
core_body_equal(const CoreBody *a, const CoreBody *b)
{
  return a != NULL && b != NULL && g_bytes_equal(a->bytes, b->bytes) &&
         g_strcmp0(a->content_type, b->content_type) == 0;
}

typedef struct {
  CoreService *svc;
  const CorePackage *pkg;
  char *aor;
  GQueue subs;      /* CoreSub, linked through CoreSub.aor_link */
  gint64 not_after; /* of the certificate served, 0 when none */
  gpointer timer;   /* fires when the certificate expires, else NULL */
  gint64 timer_at;
} CoreAorSubs;

typedef struct {
  CoreService *svc;
  gpointer sub; /* the server's handle; the hash key */
  const CorePackage *pkg;
  CoreAorSubs *aor;
  GList aor_link;     /* in aor->subs */
  GList fanout_link;  /* in svc->fanout while queued */
  gboolean queued;    /* waiting for a window slot */
  gboolean in_flight; /* a NOTIFY was sent and core_notify_done() is due */
  gint64 expires_at;  /* unix seconds */
  CoreBody *pending;  /* newest state not yet sent, NULL when up to date */
  CoreBody *last;     /* the state the subscriber has or is about to get */
  gint64 last_sent;   /* unix seconds of the last NOTIFY */
  gpointer timer;     /* port timer while deferred by the interval, else NULL */
  gboolean awaiting;  /* told "pending" while its credential is generated */
  gboolean ending;    /* to be ended with reason=deactivated */
  gboolean ended;     /* the terminating NOTIFY went out */
  guint failures;     /* NOTIFYs failed in a row (see core_notify_done) */
} CoreSub;

/* A NOTIFY that fails without ending the dialog usage (RFC 5057: 500, 503,
 * ...; nua's own 503 when its send queue is full) is sent again after 1, 2,
 * then 4 s; when the last of these retries fails too, the subscription is
 * dropped (RFC 6665 4.2.2) and the subscriber has to subscribe again. */
#define CORE_NOTIFY_RETRIES 3

void
core_config_init_defaults(CoreConfig *cfg)
{
  g_return_if_fail(cfg != NULL);

  *cfg = (CoreConfig){
      .domains = NULL,
      .default_expires = 86400, /* RFC 6072 6.3 and 7.3: one day */
      .max_expires = 86400,
      .min_expires = 60,
      .notify_window = 200,
      .min_notify_interval = 60, /* RFC 6072 6.10 and 7.12 */
      .nonce_lifetime = 300,
      .generate_credentials = FALSE,
      .generate_key_bits = 2048,
      .generate_days = 365,        /* RFC 6072 10.6: a year or less */
      .reg_default_expires = 3600, /* RFC 3261 10.2.1.1 suggests an hour */
      .reg_min_expires = 60,
      .reg_max_expires = 86400,
      .reg_max_bindings = 16,
      .message_max_body = 65536,
      /* Generous per source: an enterprise puts many UAs behind one NAT
       * address, and each subscribes to the certificates of its contacts
       * when it starts. */
      .rate_limits =
          {
              .subscribe_per_source = {200, 2000},
              .subscribe_per_aor = {50, 1000},
              .publish_per_user = {1, 30},
              .register_per_user = {1, 30},
              .message_per_user = {10, 100},
              .max_entries = 10000,
          },
  };
  core_digest_limits_init_defaults(&cfg->digest_limits);
}

static const CoreRateLimit *
core_limit_config(const CoreRateLimits *limits, CoreLimit limit)
{
  switch (limit) {
  case CORE_LIMIT_SUBSCRIBE_SOURCE:
    return &limits->subscribe_per_source;
  case CORE_LIMIT_SUBSCRIBE_AOR:
    return &limits->subscribe_per_aor;
  case CORE_LIMIT_PUBLISH_USER:
    return &limits->publish_per_user;
  case CORE_LIMIT_REGISTER_USER:
    return &limits->register_per_user;
  case CORE_LIMIT_MESSAGE_USER:
  default:
    return &limits->message_per_user;
  }
}

/* The reason phrases of the 503s: each names the limit. */
static const char *const core_limit_phrases[CORE_N_LIMITS] = {
    [CORE_LIMIT_SUBSCRIBE_SOURCE] = "Too many SUBSCRIBEs from this address",
    [CORE_LIMIT_SUBSCRIBE_AOR] = "Too many SUBSCRIBEs to this AOR",
    [CORE_LIMIT_PUBLISH_USER] = "Too many PUBLISHes from this user",
    [CORE_LIMIT_REGISTER_USER] = "Too many REGISTERs from this user",
    [CORE_LIMIT_MESSAGE_USER] = "Too many MESSAGEs from this user",
};

static void
core_limits_apply(CoreService *svc)
{
  const CoreRateLimits *cfg = &svc->cfg.rate_limits;
  for (guint i = 0; i < CORE_N_LIMITS; i++) {
    const CoreRateLimit *l = core_limit_config(cfg, i);
    if (svc->limits[i] == NULL)
      svc->limits[i] = core_ratelimit_new(l->rate, l->burst, cfg->max_entries);
    else
      core_ratelimit_set(svc->limits[i], l->rate, l->burst, cfg->max_entries);
  }
}

gboolean
core_limit_take(CoreService *svc, gpointer txn, CoreLimit limit, const char *key)
{
  guint retry_after = 0;
  if (core_ratelimit_take(svc->limits[limit], key, svc->port.now(svc->port_data), &retry_after))
    return TRUE;
  svc->stats.rate_limited++;
  /* One line per flood, not per request: the first refusal of a bucket. */
  if (core_ratelimit_get_refusals(svc->limits[limit], key) == 1)
    g_message("%s (%s): refusing with 503 until it slows down", core_limit_phrases[limit], key);
  else
    g_debug("%s (%s): 503, retry after %u s", core_limit_phrases[limit], key, retry_after);
  CoreResponse resp = {
      .status = 503,
      .phrase = core_limit_phrases[limit],
      .retry_after = retry_after,
  };
  core_respond(svc, txn, &resp);
  return FALSE;
}

void
core_state_clear(CoreState *state)
{
  g_clear_pointer(&state->body, g_bytes_unref);
  g_clear_pointer(&state->content_type, g_free);
  state->stored = FALSE;
  state->not_after = 0;
}

static void
core_aor_subs_free(gpointer data)
{
  CoreAorSubs *entry = data;

  /* The links are embedded in CoreSub records, which the subs table owns. */
  if (entry->timer != NULL)
    entry->svc->port.cancel(g_steal_pointer(&entry->timer), entry->svc->port_data);
  g_free(entry->aor);
  g_free(entry);
}

static void
core_sub_free(gpointer data)
{
  CoreSub *rec = data;

  g_clear_pointer(&rec->pending, core_body_unref);
  g_clear_pointer(&rec->last, core_body_unref);
  g_free(rec);
}

CoreService *
core_service_new(const CoreConfig *cfg, StoreDb *store, const CorePort *port, gpointer port_data)
{
  g_return_val_if_fail(cfg != NULL, NULL);
  g_return_val_if_fail(store != NULL, NULL);
  g_return_val_if_fail(
      port != NULL && port->respond != NULL && port->notify != NULL && port->now != NULL, NULL);

  CoreService *svc = g_new0(CoreService, 1);
  svc->cfg = *cfg;
  svc->domains = g_strdupv((char **)cfg->domains);
  if (svc->domains == NULL)
    svc->domains = g_new0(char *, 1);
  svc->cfg.domains = (const char *const *)svc->domains;
  /* A window of 0 would never send a fan-out NOTIFY. */
  svc->cfg.notify_window = MAX(cfg->notify_window, 1);
  svc->store = store;
  svc->port = *port;
  svc->port_data = port_data;
  if ((port->schedule == NULL) != (port->cancel == NULL)) {
    g_critical("CorePort needs both schedule and cancel, or neither");
    svc->port.schedule = NULL;
    svc->port.cancel = NULL;
  }
  if (svc->port.schedule == NULL)
    svc->cfg.min_notify_interval = 0; /* nothing to wait with */

  g_autoptr(GStrvBuilder) events = g_strv_builder_new();
  for (guint i = 0; i < CORE_N_PACKAGES; i++)
    g_strv_builder_add(events, core_packages[i].event);
  g_auto(GStrv) names = g_strv_builder_end(events);
  svc->allow_events = g_strjoinv(", ", names);

  svc->subs = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, core_sub_free);
  svc->by_aor = g_new0(GHashTable *, CORE_N_PACKAGES);
  for (guint i = 0; i < CORE_N_PACKAGES; i++)
    svc->by_aor[i] = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, core_aor_subs_free);
  g_queue_init(&svc->fanout);
  svc->generating = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_object_unref);
  core_auth_init(svc);
  core_relay_init(svc);
  core_limits_apply(svc);
  return svc;
}

void
core_service_free(CoreService *svc)
{
  if (svc == NULL)
    return;
  /* Generations still running finish in their threads and find the
   * cancellable set: they touch nothing of svc. */
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, svc->generating);
  while (g_hash_table_iter_next(&iter, NULL, &value))
    g_cancellable_cancel(value);
  g_hash_table_destroy(svc->generating);
  /* Queue links live inside the records: forget them before freeing those. */
  g_queue_init(&svc->fanout);
  g_hash_table_iter_init(&iter, svc->subs);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    CoreSub *rec = value;
    if (rec->timer != NULL)
      svc->port.cancel(g_steal_pointer(&rec->timer), svc->port_data);
  }
  g_hash_table_destroy(svc->subs);
  for (guint i = 0; i < CORE_N_PACKAGES; i++)
    g_hash_table_destroy(svc->by_aor[i]);
  g_free(svc->by_aor);
  core_auth_clear(svc);
  core_relay_clear(svc);
  for (guint i = 0; i < CORE_N_LIMITS; i++)
    g_clear_pointer(&svc->limits[i], core_ratelimit_free);
  g_strfreev(svc->domains);
  g_free(svc->allow_events);
  g_free(svc);
}

void
core_service_set_cred_get_cb(CoreService *svc, CoreCredGetCb func, gpointer user_data)
{
  g_return_if_fail(svc != NULL);

  svc->cred_get = func;
  svc->cred_get_data = user_data;
}

static void core_fanout_pump(CoreService *svc);

void
core_service_reload(CoreService *svc, const CoreConfig *cfg)
{
  g_return_if_fail(svc != NULL && cfg != NULL);
  CoreConfig *c = &svc->cfg;
  c->default_expires = cfg->default_expires;
  c->max_expires = cfg->max_expires;
  c->min_expires = cfg->min_expires;
  c->notify_window = MAX(cfg->notify_window, 1);
  if (svc->port.schedule != NULL)
    c->min_notify_interval = cfg->min_notify_interval;
  c->nonce_lifetime = cfg->nonce_lifetime;
  c->digest_limits = cfg->digest_limits;
  c->reg_default_expires = cfg->reg_default_expires;
  c->reg_min_expires = cfg->reg_min_expires;
  c->reg_max_expires = cfg->reg_max_expires;
  c->reg_max_bindings = cfg->reg_max_bindings;
  c->message_max_body = cfg->message_max_body;
  c->rate_limits = cfg->rate_limits;
  core_limits_apply(svc);
  core_auth_reload(svc);
  /* A wider window may let queued NOTIFYs go now. */
  core_fanout_pump(svc);
}

void
core_service_get_stats(CoreService *svc, CoreStats *out)
{
  g_return_if_fail(svc != NULL && out != NULL);

  *out = svc->stats;
  out->subscriptions_certificate = 0;
  out->subscriptions_credential = 0;
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, svc->subs);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    const CoreSub *rec = value;
    if (rec->pkg == &core_packages[CORE_PKG_CREDENTIAL])
      out->subscriptions_credential++;
    else
      out->subscriptions_certificate++;
  }
  out->notifies_in_flight = svc->in_flight;
  out->fanout_queued = svc->fanout.length;
}

guint
core_service_get_n_subscriptions(CoreService *svc)
{
  g_return_val_if_fail(svc != NULL, 0);

  return g_hash_table_size(svc->subs);
}

StoreCred *
core_cred_read(CoreService *svc, const char *aor, GError **error)
{
  if (svc->cred_get != NULL) {
    StoreCred *cred = svc->cred_get(svc->store, aor, svc->cred_get_data, error);
    if (cred == NULL && error != NULL && *error == NULL)
      g_set_error_literal(error, STORE_ERROR, STORE_ERROR_IO, "no record and no error");
    return cred;
  }
  return store_cred_get(svc->store, aor, error);
}

/* Reads the state of @aor as @pkg serves it. An expired certificate is no
 * certificate (RFC 6072 6.8, 7.10): it is never served. FALSE only when the
 * store failed. */
static gboolean
core_state_load(CoreService *svc, const CorePackage *pkg, const char *aor, CoreState *state,
                GError **error)
{
  g_autoptr(GError) local = NULL;

  *state = (CoreState){0};
  g_autoptr(StoreCred) cred = core_cred_read(svc, aor, &local);
  if (cred == NULL) {
    if (!g_error_matches(local, STORE_ERROR, STORE_ERROR_NOT_FOUND)) {
      g_propagate_error(error, g_steal_pointer(&local));
      return FALSE;
    }
    state->body = g_bytes_new(NULL, 0);
    return TRUE;
  }
  state->stored = TRUE;
  state->not_after = cred->not_after;
  if (cred->cert_der == NULL || g_bytes_get_size(cred->cert_der) == 0 ||
      cred->not_after <= svc->port.now(svc->port_data)) {
    state->body = g_bytes_new(NULL, 0);
    return TRUE;
  }
  if (!pkg->credential) {
    state->body = g_bytes_ref(cred->cert_der);
    state->content_type = g_strdup("application/pkix-cert");
    return TRUE;
  }
  if (cred->key_kind != STORE_KEY_NONE && cred->pkcs8 == NULL)
    g_warning("the private key of %s cannot be opened (no or another master key): "
              "serving the certificate alone",
              aor);
  state->body = core_credbody_build(cred->cert_der, cred->pkcs8, &state->content_type);
  return TRUE;
}

/* ---- Event and Accept parsing (peer input) ---- */

/* RFC 3261 token characters. */
static gboolean
core_is_token_char(guchar c)
{
  return g_ascii_isalnum(c) || (c != '\0' && strchr("-.!%*_+`'~", c) != NULL);
}

static gboolean
core_is_lws(guchar c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void
core_skip_lws(const char **p)
{
  while (core_is_lws((guchar)(*p)[0]))
    (*p)++;
}

static gsize
core_read_token(const char **p)
{
  gsize n = 0;

  while (core_is_token_char((guchar)(*p)[n]))
    n++;
  *p += n;
  return n;
}

const char *
core_event_token(const char *event, gsize *len)
{
  g_return_val_if_fail(len != NULL, NULL);

  if (event == NULL)
    return NULL;
  const char *p = event;
  core_skip_lws(&p);
  const char *token = p;
  gsize n = core_read_token(&p);
  core_skip_lws(&p);
  /* Parameters such as ";id=" name a subscription, not a package. */
  if (n == 0 || (*p != '\0' && *p != ';'))
    return NULL;
  *len = n;
  return token;
}

static const CorePackage *
core_package_lookup(const char *event)
{
  gsize len = 0;
  const char *token = core_event_token(event, &len);

  if (token == NULL)
    return NULL;
  /* RFC 6665 section 8.2.1: event tokens compare case-sensitively. */
  for (guint i = 0; i < CORE_N_PACKAGES; i++) {
    const char *name = core_packages[i].event;
    if (strlen(name) == len && memcmp(name, token, len) == 0)
      return &core_packages[i];
  }
  return NULL;
}

/* Leaves @p just past the next ',' outside a quoted string, or at the end. */
static void
core_accept_skip_element(const char **p)
{
  const char *s = *p;
  gboolean quoted = FALSE;

  for (; *s != '\0'; s++) {
    if (quoted) {
      if (*s == '\\' && s[1] != '\0')
        s++;
      else if (*s == '"')
        quoted = FALSE;
    } else if (*s == '"') {
      quoted = TRUE;
    } else if (*s == ',') {
      s++;
      break;
    }
  }
  *p = s;
}

/* A quoted-string at @p; FALSE when unterminated. */
static gboolean
core_read_quoted(const char **p)
{
  const char *s = *p + 1;

  for (; *s != '\0'; s++) {
    if (*s == '\\' && s[1] != '\0') {
      s++;
    } else if (*s == '"') {
      *p = s + 1;
      return TRUE;
    }
  }
  return FALSE;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in
 * thousandths; -1 when malformed. */
static int
core_accept_qvalue(const char *v, gsize len)
{
  if (len == 0 || (v[0] != '0' && v[0] != '1'))
    return -1;
  int q = (v[0] - '0') * 1000;
  if (len == 1)
    return q;
  if (v[1] != '.' || len > 5)
    return -1;
  int scale = 100;
  for (gsize i = 2; i < len; i++, scale /= 10) {
    if (!g_ascii_isdigit(v[i]))
      return -1;
    q += (v[i] - '0') * scale;
  }
  return q > 1000 ? -1 : q;
}

typedef struct {
  const char *type;
  gsize type_len;
  const char *subtype;
  gsize subtype_len;
  int q; /* thousandths */
} CoreMediaRange;

/* Parses one media range at @p and leaves @p at the following ',' or the
 * end. FALSE on a syntax error, with @p unspecified. */
static gboolean
core_accept_parse_range(const char **p, CoreMediaRange *range)
{
  gboolean have_q = FALSE;

  range->type = *p;
  range->type_len = core_read_token(p);
  core_skip_lws(p);
  if (range->type_len == 0 || **p != '/')
    return FALSE;
  (*p)++;
  core_skip_lws(p);
  range->subtype = *p;
  range->subtype_len = core_read_token(p);
  if (range->subtype_len == 0)
    return FALSE;
  range->q = 1000;

  for (;;) {
    core_skip_lws(p);
    if (**p != ';')
      break;
    (*p)++;
    core_skip_lws(p);
    const char *name = *p;
    gsize name_len = core_read_token(p);
    if (name_len == 0)
      return FALSE;
    core_skip_lws(p);
    if (**p != '=')
      continue;
    (*p)++;
    core_skip_lws(p);
    const char *value = *p;
    gboolean is_q = name_len == 1 && g_ascii_tolower(name[0]) == 'q';
    if (**p == '"') {
      if (is_q || !core_read_quoted(p))
        return FALSE;
      continue;
    }
    gsize value_len = core_read_token(p);
    if (value_len == 0)
      return FALSE;
    if (is_q && !have_q) {
      range->q = core_accept_qvalue(value, value_len);
      if (range->q < 0)
        return FALSE;
      have_q = TRUE;
    }
  }
  return **p == ',' || **p == '\0';
}

gboolean
core_accept_allows(const char *accept, const char *media_type)
{
  g_return_val_if_fail(accept != NULL, FALSE);
  g_return_val_if_fail(media_type != NULL, FALSE);

  const char *slash = strchr(media_type, '/');
  g_return_val_if_fail(slash != NULL, FALSE);
  gsize type_len = slash - media_type;
  const char *subtype = slash + 1;
  gsize subtype_len = strlen(subtype);

  /* RFC 7231 5.3.2: the most specific matching range decides. Ties (the
   * same range listed twice) go to the higher q. Media-type parameters are
   * ignored: we serve the type without parameters. */
  int best_specificity = 0;
  int best_q = 0;
  const char *p = accept;
  while (*p != '\0') {
    core_skip_lws(&p);
    if (*p == ',') {
      p++; /* empty list elements are allowed */
      continue;
    }
    if (*p == '\0')
      break;
    CoreMediaRange range;
    const char *element = p;
    if (!core_accept_parse_range(&p, &range)) {
      p = element;
      core_accept_skip_element(&p);
      continue;
    }
    gboolean any_type = range.type_len == 1 && range.type[0] == '*';
    gboolean any_subtype = range.subtype_len == 1 && range.subtype[0] == '*';
    int specificity = 0;
    if (any_type) {
      specificity = any_subtype ? 1 : 0; /* "* / subtype" is not a range */
    } else if (range.type_len == type_len &&
               g_ascii_strncasecmp(range.type, media_type, type_len) == 0) {
      if (any_subtype)
        specificity = 2;
      else if (range.subtype_len == subtype_len &&
               g_ascii_strncasecmp(range.subtype, subtype, subtype_len) == 0)
        specificity = 3;
    }
    if (specificity > best_specificity ||
        (specificity > 0 && specificity == best_specificity && range.q > best_q)) {
      best_specificity = specificity;
      best_q = range.q;
    }
  }
  return best_specificity > 0 && best_q > 0;
}

/* ---- Responses and NOTIFYs ---- */

void
core_respond(CoreService *svc, gpointer txn, const CoreResponse *resp)
{
  svc->port.respond(txn, resp, svc->port_data);
}

void
core_respond_error(CoreService *svc, gpointer txn, guint status, const char *phrase)
{
  CoreResponse resp = {.status = status, .phrase = phrase};
  core_respond(svc, txn, &resp);
}

/* Room comes back only when an operator acts (removes credentials, raises
 * max-map-size, frees the disk): retrying within seconds would not help. */
#define CORE_STORE_FULL_RETRY_AFTER 300

gboolean
core_respond_if_store_full(CoreService *svc, gpointer txn, const char *what, const GError *error)
{
  if (!g_error_matches(error, STORE_ERROR, STORE_ERROR_FULL))
    return FALSE;
  g_warning("%s: %s", what, error->message);
  CoreResponse resp = {
      .status = 503,
      .phrase = "Store full",
      .retry_after = CORE_STORE_FULL_RETRY_AFTER,
  };
  core_respond(svc, txn, &resp);
  return TRUE;
}

gboolean
core_refuse_brief_expires(CoreService *svc, gpointer txn, guint32 expires)
{
  if (expires == 0 || expires >= svc->cfg.min_expires)
    return FALSE;
  CoreResponse resp = {
      .status = 423,
      .phrase = "Interval Too Brief",
      .min_expires = svc->cfg.min_expires,
  };
  core_respond(svc, txn, &resp);
  return TRUE;
}

static void
core_send_notify(CoreService *svc, gpointer sub, const CorePackage *pkg, CoreSubstate state,
                 guint32 expires, const char *reason, const CoreBody *body)
{
  g_autoptr(GBytes) empty = g_bytes_new_static("", 0);

  CoreNotify notify = {
      .event = pkg->event,
      .state = state,
      .expires = expires,
      .reason = reason,
      .body = body != NULL ? body->bytes : empty,
  };

  /* An empty body means "no certificate" (6.6), "no credential" or
   * "revoked" (7.9, 6.8). It goes without Content-Type: RFC 3261 7.4.1 reads
   * an empty body with a Content-Type as a zero-length object of that type,
   * and a zero-length pkix-cert is not a certificate. Content-Disposition
   * describes a body (RFC 3261 20.11), so "signal" travels only with one. */
  if (g_bytes_get_size(notify.body) > 0) {
    notify.content_type = body->content_type;
    notify.content_disposition = "signal";
  }
  svc->stats.notifies_sent++;
  svc->port.notify(sub, &notify, svc->port_data);
}

/* ---- Registry and fan-out ---- */

static void
core_fanout_enqueue(CoreService *svc, CoreSub *rec)
{
  if (rec->queued)
    return;
  rec->fanout_link.data = rec;
  g_queue_push_tail_link(&svc->fanout, &rec->fanout_link);
  rec->queued = TRUE;
}

/* Sends queued NOTIFYs while the window has room. The port may call back
 * into the core from notify (done, gone, another change): those calls only
 * update state, and this loop, already running, picks the result up. */
static void
core_fanout_pump(CoreService *svc)
{
  if (svc->pumping)
    return;
  svc->pumping = TRUE;
  while (svc->in_flight < svc->cfg.notify_window) {
    GList *link = g_queue_pop_head_link(&svc->fanout);
    if (link == NULL)
      break;
    CoreSub *rec = link->data;
    rec->queued = FALSE;
    gint64 now = svc->port.now(svc->port_data);
    if (rec->ending) {
      if (rec->ended)
        continue;
      rec->ended = TRUE;
      rec->in_flight = TRUE;
      rec->last_sent = now;
      svc->in_flight++;
      g_clear_pointer(&rec->pending, core_body_unref);
      /* RFC 6072 7.7: the subscriber must authenticate again. */
      core_send_notify(svc, rec->sub, rec->pkg, CORE_SUBSTATE_TERMINATED, 0, "deactivated", NULL);
      continue;
    }
    g_autoptr(CoreBody) body = g_steal_pointer(&rec->pending);
    if (body == NULL)
      continue;
    gint64 remaining = rec->expires_at - now;
    if (remaining <= 0) {
      /* Expired but not yet ended by the server: nothing left to promise. */
      continue;
    }
    rec->in_flight = TRUE;
    rec->awaiting = FALSE;
    rec->last_sent = now;
    svc->in_flight++;
    /* rec may be freed by the time notify returns. */
    core_send_notify(svc, rec->sub, rec->pkg, CORE_SUBSTATE_ACTIVE,
                     (guint32)MIN(remaining, (gint64)G_MAXUINT32), NULL, body);
  }
  svc->pumping = FALSE;
}

static void
core_sub_timer_fired(gpointer data)
{
  CoreSub *rec = data;
  CoreService *svc = rec->svc;

  rec->timer = NULL;
  if ((rec->pending != NULL || rec->ending) && !rec->in_flight)
    core_fanout_enqueue(svc, rec);
  core_fanout_pump(svc);
}

/* @rec has a newer state to send and no NOTIFY in flight: queue it, or, when
 * its last NOTIFY is too recent, wait until the interval has passed. The
 * first real state after "pending" and a deactivation never wait. */
static void
core_sub_make_ready(CoreService *svc, CoreSub *rec)
{
  if (rec->queued)
    return;
  if (rec->timer != NULL) {
    if (!rec->ending && !rec->awaiting)
      return; /* it will send rec->pending, whatever that is by then */
    svc->port.cancel(g_steal_pointer(&rec->timer), svc->port_data);
  }
  guint32 interval = svc->cfg.min_notify_interval;
  if (interval > 0 && !rec->ending && !rec->awaiting) {
    gint64 wait = rec->last_sent + interval - svc->port.now(svc->port_data);
    if (wait > 0) {
      /* A clock step back would make wait up to the whole interval, no more. */
      wait = MIN(wait, (gint64)interval);
      rec->timer =
          svc->port.schedule((guint)(wait * 1000), core_sub_timer_fired, rec, svc->port_data);
      if (rec->timer != NULL)
        return;
      g_warning("cannot schedule a deferred NOTIFY; sending it now");
    }
  }
  core_fanout_enqueue(svc, rec);
}

static void core_package_state_changed(CoreService *svc, const CorePackage *pkg, const char *aor);

static void
core_aor_expiry_fired(gpointer data)
{
  CoreAorSubs *entry = data;
  CoreService *svc = entry->svc;
  g_autofree char *aor = g_strdup(entry->aor);

  entry->timer = NULL;
  /* Reloading serves an expired certificate as none; a timer capped short of
   * notAfter finds nothing new and is armed again. */
  core_package_state_changed(svc, entry->pkg, aor);
}

/* Arms @entry's timer so that its subscribers hear when the certificate
 * expires (an expired one is not served). Only needed when a subscription
 * may still live then; a refresh looks again. */
static void
core_aor_arm_expiry(CoreService *svc, CoreAorSubs *entry, gint64 not_after)
{
  entry->not_after = not_after;
  if (svc->port.schedule == NULL)
    return;
  gint64 now = svc->port.now(svc->port_data);
  gint64 last_end = 0;
  for (GList *l = entry->subs.head; l != NULL; l = l->next)
    last_end = MAX(last_end, ((CoreSub *)l->data)->expires_at);
  if (entry->timer != NULL && entry->timer_at == not_after && not_after < last_end)
    return;
  if (entry->timer != NULL)
    svc->port.cancel(g_steal_pointer(&entry->timer), svc->port_data);
  if (not_after <= 0 || not_after <= now || not_after >= last_end)
    return;
  /* At most a day ahead: a guint of milliseconds lasts 49 days. */
  gint64 delay = MIN(not_after - now + 1, (gint64)86400);
  entry->timer_at = not_after;
  entry->timer =
      svc->port.schedule((guint)(delay * 1000), core_aor_expiry_fired, entry, svc->port_data);
}

static CoreSub *
core_sub_register(CoreService *svc, gpointer sub, const CorePackage *pkg, const char *aor,
                  gint64 expires_at)
{
  GHashTable *table = svc->by_aor[pkg - core_packages];
  CoreAorSubs *entry = g_hash_table_lookup(table, aor);

  if (entry == NULL) {
    entry = g_new0(CoreAorSubs, 1);
    entry->svc = svc;
    entry->pkg = pkg;
    entry->aor = g_strdup(aor);
    g_queue_init(&entry->subs);
    g_hash_table_insert(table, entry->aor, entry);
  }
  CoreSub *rec = g_new0(CoreSub, 1);
  rec->svc = svc;
  rec->sub = sub;
  rec->pkg = pkg;
  rec->aor = entry;
  rec->expires_at = expires_at;
  rec->aor_link.data = rec;
  g_queue_push_tail_link(&entry->subs, &rec->aor_link);
  g_hash_table_insert(svc->subs, sub, rec);
  return rec;
}

/* Removes @rec from every structure and frees it. Does not pump. */
static void
core_sub_forget(CoreService *svc, CoreSub *rec)
{
  CoreAorSubs *entry = rec->aor;

  if (rec->queued)
    g_queue_unlink(&svc->fanout, &rec->fanout_link);
  if (rec->timer != NULL)
    svc->port.cancel(g_steal_pointer(&rec->timer), svc->port_data);
  if (rec->in_flight)
    svc->in_flight--; /* its core_notify_done() will find no record */
  g_queue_unlink(&entry->subs, &rec->aor_link);
  if (g_queue_is_empty(&entry->subs))
    g_hash_table_remove(svc->by_aor[rec->pkg - core_packages], entry->aor);
  g_hash_table_remove(svc->subs, rec->sub);
}

/* ---- Credentials generated by the server (RFC 6072 section 3, style 3) ---- */

typedef struct {
  CoreService *svc; /* valid only while cancellable is not cancelled */
  GCancellable *cancellable;
  char *aor;
  guint bits, days;
  gint64 now;
} CoreGenerate;

typedef struct {
  GBytes *cert_der;
  GBytes *pkcs8;
  gint64 not_before, not_after;
} CoreGenerated;

static void
core_generate_free(gpointer data)
{
  CoreGenerate *gen = data;
  g_object_unref(gen->cancellable);
  g_free(gen->aor);
  g_free(gen);
}

static void
core_generated_free(gpointer data)
{
  CoreGenerated *out = data;
  g_clear_pointer(&out->cert_der, g_bytes_unref);
  g_clear_pointer(&out->pkcs8, g_bytes_unref);
  g_free(out);
}

/* Runs in a worker thread: an RSA key costs far too long for the loop. */
static void
core_generate_thread(GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
  CoreGenerate *gen = data;
  GError *error = NULL;
  CoreGenerated *out = g_new0(CoreGenerated, 1);

  g_autoptr(IdentCert) cert =
      ident_cert_generate(gen->aor, gen->bits, gen->days, gen->now, &out->pkcs8, &error);
  if (cert == NULL) {
    core_generated_free(out);
    g_task_return_error(task, error);
    return;
  }
  out->cert_der = g_bytes_ref(ident_cert_get_der(cert));
  out->not_before = ident_cert_get_not_before(cert);
  out->not_after = ident_cert_get_not_after(cert);
  g_task_return_pointer(task, out, core_generated_free);
}

/* Subscribers still told "pending" get whatever the state now is. */
static void
core_generate_release_waiters(CoreService *svc, const char *aor)
{
  CoreAorSubs *entry = g_hash_table_lookup(svc->by_aor[CORE_PKG_CREDENTIAL], aor);
  if (entry == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_auto(CoreState) state = {0};
  if (!core_state_load(svc, entry->pkg, aor, &state, &error)) {
    g_warning("cannot read the credential of %s: %s", aor, error->message);
    return;
  }
  g_autoptr(CoreBody) body = core_body_new(&state);
  for (GList *l = entry->subs.head; l != NULL; l = l->next) {
    CoreSub *rec = l->data;
    if (!rec->awaiting || rec->ending)
      continue;
    g_clear_pointer(&rec->pending, core_body_unref);
    g_clear_pointer(&rec->last, core_body_unref);
    rec->pending = core_body_ref(body);
    rec->last = core_body_ref(body);
    if (!rec->in_flight)
      core_sub_make_ready(svc, rec);
  }
  core_fanout_pump(svc);
}

static void
core_generate_done(GObject *source, GAsyncResult *result, gpointer data)
{
  CoreGenerate *gen = g_task_get_task_data(G_TASK(result));
  g_autoptr(GError) error = NULL;
  CoreGenerated *out = g_task_propagate_pointer(G_TASK(result), &error);

  if (g_cancellable_is_cancelled(gen->cancellable)) {
    if (out != NULL)
      core_generated_free(out);
    return; /* the service is gone */
  }
  CoreService *svc = gen->svc;
  g_autofree char *aor = g_strdup(gen->aor);
  g_hash_table_remove(svc->generating, aor); /* frees nothing gen still needs */

  if (out == NULL) {
    g_warning("cannot generate a credential for %s: %s", aor, error->message);
  } else {
    g_autoptr(StoreCred) existing = store_cred_get(svc->store, aor, NULL);
    if (existing != NULL) {
      g_info("%s published a credential while one was generated; the generated one is dropped",
             aor);
    } else if (!store_cred_put(svc->store, aor, out->cert_der, out->not_before, out->not_after,
                               STORE_KEY_SERVER_HELD, out->pkcs8, &error)) {
      g_warning("cannot store the credential generated for %s: %s", aor, error->message);
    } else {
      g_message("generated a credential for %s (server-held key, valid until %" G_GINT64_FORMAT
                ")",
                aor, out->not_after);
    }
    core_generated_free(out);
  }
  core_aor_state_changed(svc, aor);
  core_generate_release_waiters(svc, aor);
}

static void
core_generate_start(CoreService *svc, const char *aor)
{
  if (g_hash_table_contains(svc->generating, aor))
    return; /* its waiters hear when that one is done */
  CoreGenerate *gen = g_new0(CoreGenerate, 1);
  gen->svc = svc;
  gen->cancellable = g_cancellable_new();
  gen->aor = g_strdup(aor);
  gen->bits = svc->cfg.generate_key_bits;
  gen->days = svc->cfg.generate_days;
  gen->now = svc->port.now(svc->port_data);
  g_hash_table_insert(svc->generating, g_strdup(aor), g_object_ref(gen->cancellable));

  /* The callback must run even when cancelled, to free gen: the task gets no
   * cancellable, and the callback checks gen's instead. */
  g_autoptr(GTask) task = g_task_new(NULL, NULL, core_generate_done, NULL);
  g_task_set_task_data(task, gen, core_generate_free);
  g_task_run_in_thread(task, core_generate_thread);
}

/* ---- SUBSCRIBE ---- */

void
core_subscribe(CoreService *svc, gpointer txn, gpointer sub, const CoreSubscribeInfo *info)
{
  g_return_if_fail(svc != NULL);
  g_return_if_fail(info != NULL);

  /* First, before any work: a flood from one address costs one lookup. */
  g_autofree char *source = core_ratelimit_source_key(info->peer_addr);
  if (!core_limit_take(svc, txn, CORE_LIMIT_SUBSCRIBE_SOURCE, source))
    return;

  const CorePackage *pkg = core_package_lookup(info->event);
  if (pkg == NULL) {
    CoreResponse resp = {
        .status = 489,
        .phrase = "Bad Event",
        .allow_events = svc->allow_events,
    };
    core_respond(svc, txn, &resp);
    return;
  }

  g_autoptr(GError) error = NULL;
  g_autofree char *aor = core_aor_canonicalize_served(svc->cfg.domains, info->request_uri, &error);
  if (aor == NULL) {
    g_debug("%s SUBSCRIBE refused: %s", pkg->event, error->message);
    if (g_error_matches(error, CORE_ERROR, CORE_ERROR_NOT_SERVED))
      core_respond_error(svc, txn, 404, "Not a served domain");
    else
      core_respond_error(svc, txn, 400, "Request-URI is not a user AOR");
    return;
  }

  /* Per target AOR and package, before the store is read. The credential
   * package counts only after authentication (its subscriber is the AOR
   * itself), so that nobody without the password can use up the bucket
   * that the user's own credential SUBSCRIBEs need. */
  g_autofree char *aor_key = g_strconcat(pkg->event, " ", aor, NULL);
  if (!pkg->credential && !core_limit_take(svc, txn, CORE_LIMIT_SUBSCRIBE_AOR, aor_key))
    return;
  g_autoptr(StoreUser) user = NULL;
  if (pkg->credential &&
      !core_auth_authorize(svc, txn, "SUBSCRIBE", info->request_uri, aor, info->to_uri,
                           info->direct, info->peer_addr, info->authorization, &user))
    return;
  if (pkg->credential && !core_limit_take(svc, txn, CORE_LIMIT_SUBSCRIBE_AOR, aor_key))
    return;

  /* RFC 6072 6.4 and 7.4: without Accept the package's types are assumed;
   * with one, every type the package sends must be in it. */
  for (guint i = 0; info->accept != NULL && pkg->types[i] != NULL; i++) {
    if (!core_accept_allows(info->accept, pkg->types[i])) {
      g_autofree char *phrase = g_strdup_printf("Accept excludes %s", pkg->types[i]);
      CoreResponse resp = {.status = 406, .phrase = phrase, .accept = pkg->accept};
      core_respond(svc, txn, &resp);
      return;
    }
  }

  guint32 granted;
  if (!info->has_expires) {
    granted = MIN(svc->cfg.default_expires, svc->cfg.max_expires);
  } else if (info->expires == 0) {
    granted = 0; /* a fetch (RFC 6665 4.4.3) */
  } else if (core_refuse_brief_expires(svc, txn, info->expires)) {
    return;
  } else {
    granted = MIN(info->expires, svc->cfg.max_expires);
  }

  g_auto(CoreState) state = {0};
  if (!core_state_load(svc, pkg, aor, &state, &error)) {
    g_warning("cannot read the %s state of %s: %s", pkg->event, aor, error->message);
    core_respond_error(svc, txn, 500, "Credential store unavailable");
    return;
  }
  gint64 now = svc->port.now(svc->port_data);
  /* RFC 6072 7.6: never longer than the certificate stays valid. */
  if (pkg->credential && g_bytes_get_size(state.body) > 0)
    granted = (guint32)MIN((gint64)granted, MAX(state.not_after - now, (gint64)1));

  gboolean generate = pkg->credential && !state.stored && svc->cfg.generate_credentials &&
                      user != NULL && (user->flags & STORE_USER_MAY_GENERATE) != 0;

  g_autoptr(CoreBody) body = core_body_new(&state);
  CoreResponse ok = {.status = 200, .phrase = "OK", .expires = granted};
  if (granted == 0) {
    /* RFC 6665 3.1.1 and 4.4.3: Expires 0 fetches the state once; the
     * subscription ends with that NOTIFY and is never registered. */
    core_respond(svc, txn, &ok);
    g_info("%s fetch of %s", pkg->event, aor);
    if (generate)
      core_generate_start(svc, aor);
    core_send_notify(svc, sub, pkg, CORE_SUBSTATE_TERMINATED, 0, "timeout", body);
    return;
  }

  CoreSub *old = g_hash_table_lookup(svc->subs, sub);
  if (old != NULL) {
    /* The server reuses a handle it never reported gone: a server bug, but
     * the new subscription is the one that exists now. */
    g_warning("subscription handle %p reused without core_subscription_gone()", sub);
    core_sub_forget(svc, old);
  }

  core_respond(svc, txn, &ok);
  CoreSub *rec = core_sub_register(svc, sub, pkg, aor, now + granted);
  core_aor_arm_expiry(svc, rec->aor, state.not_after);
  g_info("%s subscription to %s for %u s from %s over %s %s (%s)", pkg->event, aor, granted,
         info->peer_addr ? info->peer_addr : "?", info->tls_version ? info->tls_version : "?",
         info->cipher_suite ? info->cipher_suite : "?", info->direct ? "direct" : "not direct");

  /* RFC 6665 4.2.1 and RFC 6072 6.7, 7.7: the first NOTIFY goes out at
   * once, outside the window, but it is counted in flight so that fan-out
   * waits for it and a change meanwhile is sent after it, not beside it. */
  rec->in_flight = TRUE;
  rec->last_sent = now;
  svc->in_flight++;
  if (generate) {
    /* "pending" until the credential exists; then it comes at once. */
    rec->awaiting = TRUE;
    core_generate_start(svc, aor);
    core_send_notify(svc, sub, pkg, CORE_SUBSTATE_PENDING, granted, NULL, NULL);
    return;
  }
  rec->last = core_body_ref(body);
  core_send_notify(svc, sub, pkg, CORE_SUBSTATE_ACTIVE, granted, NULL, body);
}

void
core_subscription_refreshed(CoreService *svc, gpointer sub, guint32 expires)
{
  g_return_if_fail(svc != NULL);

  CoreSub *rec = g_hash_table_lookup(svc->subs, sub);
  if (rec == NULL)
    return;
  rec->expires_at = svc->port.now(svc->port_data) + expires;
  core_aor_arm_expiry(svc, rec->aor, rec->aor->not_after);
  g_debug("%s subscription to %s refreshed for %u s", rec->pkg->event, rec->aor->aor, expires);
}

void
core_subscription_gone(CoreService *svc, gpointer sub)
{
  g_return_if_fail(svc != NULL);

  CoreSub *rec = g_hash_table_lookup(svc->subs, sub);
  if (rec == NULL)
    return;
  g_info("%s subscription to %s ended", rec->pkg->event, rec->aor->aor);
  gboolean freed_slot = rec->in_flight;
  core_sub_forget(svc, rec);
  if (freed_slot)
    core_fanout_pump(svc);
}

/* RFC 6665 4.2.2 ends a subscription whose NOTIFY fails. The server ends the
 * dialog on exactly these (nua-adapter.c), and the core must agree with it:
 * a record dropped here while its dialog lives on would never again be
 * notified, so a revocation would silently miss that subscriber. */
static gboolean
core_notify_status_ends_sub(guint status)
{
  /* 408: timeout; 430: the flow is gone (RFC 5626); 481: no such dialog. */
  return status == 408 || status == 430 || status == 481;
}

void
core_notify_done(CoreService *svc, gpointer sub, guint status)
{
  g_return_if_fail(svc != NULL);

  CoreSub *rec = g_hash_table_lookup(svc->subs, sub);
  if (rec == NULL || !rec->in_flight) {
    g_debug("NOTIFY result %u for a subscription with none in flight", status);
    return;
  }
  rec->in_flight = FALSE;
  svc->in_flight--;
  if (status >= 300)
    svc->stats.notifies_failed++;
  if (status < 300)
    rec->failures = 0;
  if (rec->ended) {
    /* The terminating NOTIFY completed: the dialog is over. */
    core_sub_forget(svc, rec);
  } else if (core_notify_status_ends_sub(status) ||
             (status >= 300 && rec->failures >= CORE_NOTIFY_RETRIES)) {
    g_info("%s subscription to %s dropped: NOTIFY failed with %u", rec->pkg->event, rec->aor->aor,
           status);
    core_sub_forget(svc, rec);
  } else if (status >= 300 && rec->last != NULL && !rec->ending) {
    /* The subscriber does not have rec->last: send it again (or what is
     * newer) after a pause, outside the min-interval. */
    rec->failures++;
    if (rec->pending == NULL)
      rec->pending = core_body_ref(rec->last);
    guint delay_ms = 1000u << (rec->failures - 1);
    g_info("%s NOTIFY to a subscriber of %s failed with %u; again in %u ms (%u of %u)",
           rec->pkg->event, rec->aor->aor, status, delay_ms, rec->failures, CORE_NOTIFY_RETRIES);
    if (svc->port.schedule != NULL && rec->timer == NULL)
      rec->timer = svc->port.schedule(delay_ms, core_sub_timer_fired, rec, svc->port_data);
    else if (svc->port.schedule == NULL)
      core_fanout_enqueue(svc, rec);
  } else if (rec->pending != NULL || rec->ending) {
    /* The state changed while this NOTIFY was out: send the newest next. */
    core_sub_make_ready(svc, rec);
  }
  core_fanout_pump(svc);
}

/* ---- State changes ---- */

/* Marks @rec to be ended with reason=deactivated. */
static void
core_sub_deactivate(CoreService *svc, CoreSub *rec)
{
  if (rec->ending)
    return;
  rec->ending = TRUE;
  g_clear_pointer(&rec->pending, core_body_unref);
  if (!rec->in_flight)
    core_sub_make_ready(svc, rec);
}

static void
core_package_state_changed(CoreService *svc, const CorePackage *pkg, const char *aor)
{
  CoreAorSubs *entry = g_hash_table_lookup(svc->by_aor[pkg - core_packages], aor);
  if (entry == NULL)
    return;

  g_autoptr(GError) error = NULL;
  g_auto(CoreState) state = {0};
  if (!core_state_load(svc, pkg, aor, &state, &error)) {
    /* Queued subscribers keep the newest state we could read; the next
     * change or refresh brings them up to date. */
    g_warning("cannot read the %s state of %s, subscribers not notified: %s", pkg->event, aor,
              error->message);
    return;
  }
  core_aor_arm_expiry(svc, entry, state.not_after);

  /* RFC 6072 7.7 and 7.9: a removed credential ends credential
   * subscriptions; certificate watchers get the empty body and stay. */
  gboolean deactivate = pkg->credential && !state.stored;
  g_autoptr(CoreBody) body = core_body_new(&state);
  guint n = 0;
  /* One body shared by all; a subscriber already queued or deferred just
   * gets the newer body, one in flight gets it after its NOTIFY completes,
   * and one that already has this very state hears nothing. Deactivating
   * may forget records, so step with care. */
  for (GList *l = entry->subs.head, *next; l != NULL; l = next) {
    next = l->next;
    CoreSub *rec = l->data;
    if (rec->ending || rec->awaiting)
      continue;
    if (deactivate) {
      core_sub_deactivate(svc, rec);
      n++;
      continue;
    }
    if (core_body_equal(rec->last, body))
      continue;
    if (rec->pending != NULL)
      svc->stats.notifies_coalesced++;
    g_clear_pointer(&rec->pending, core_body_unref);
    g_clear_pointer(&rec->last, core_body_unref);
    rec->pending = core_body_ref(body);
    rec->last = core_body_ref(body);
    if (!rec->in_flight)
      core_sub_make_ready(svc, rec);
    n++;
  }
  if (n > 0)
    g_info("%s of %s changed: %s %u subscribers", pkg->event, aor,
           deactivate ? "deactivating" : "notifying", n);
  core_fanout_pump(svc);
}

void
core_aor_state_changed(CoreService *svc, const char *aor)
{
  for (guint i = 0; i < CORE_N_PACKAGES; i++)
    core_package_state_changed(svc, &core_packages[i], aor);
}

void
core_cert_changed(CoreService *svc, const char *aor)
{
  g_return_if_fail(svc != NULL);
  g_return_if_fail(aor != NULL);

  g_autoptr(GError) error = NULL;
  g_autofree char *canonical = core_aor_canonicalize(aor, &error);
  if (canonical == NULL) {
    g_warning("credential change for an invalid AOR ignored: %s", error->message);
    return;
  }
  core_aor_state_changed(svc, canonical);
}

void
core_user_changed(CoreService *svc, const char *aor)
{
  g_return_if_fail(svc != NULL);
  g_return_if_fail(aor != NULL);

  g_autofree char *canonical = core_aor_canonicalize(aor, NULL);
  if (canonical == NULL)
    return;
  CoreAorSubs *entry = g_hash_table_lookup(svc->by_aor[CORE_PKG_CREDENTIAL], canonical);
  if (entry == NULL)
    return;
  g_info("user %s changed: deactivating %u credential subscriptions", canonical,
         entry->subs.length);
  for (GList *l = entry->subs.head, *next; l != NULL; l = next) {
    next = l->next;
    core_sub_deactivate(svc, l->data);
  }
  core_fanout_pump(svc);
}
