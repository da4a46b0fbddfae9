#define G_LOG_DOMAIN "sipcred-core"

/* core: the RFC 6072 event packages, the subscription registry and the
 * fan-out scheduler.
 *
 * Every notifier rule lives here; the server only carries messages. Each
 * subscription is a CoreSub keyed by the server's opaque @sub pointer and
 * linked into the list of subscribers of its (package, AOR). A state change
 * of an AOR reads the store once, hands the new body to each subscriber and
 * queues those that are idle. The scheduler sends queued NOTIFYs while fewer
 * than notify_window are in flight, because nua's send queue drops NOTIFYs
 * when thousands arrive at once (DESIGN.md). A subscriber notified less than
 * min_notify_interval ago is not queued but waits on a port timer, holding no
 * window slot; whatever changes meanwhile only replaces its pending body.
 */

#include "core/core-private.h"

#include <string.h>

/* What differs between event packages. Adding the credential package
 * (RFC 6072 section 7) means adding an entry here. */
typedef struct {
  const char *event;               /* event-package token, case-sensitive */
  const char *content_type;        /* the body type of a non-empty NOTIFY */
  const char *content_disposition; /* RFC 6072 6.4: "signal" */
  /* Reads the current state of @aor as a NOTIFY body; an empty GBytes when
   * there is none. NULL with @error only when the store failed. */
  GBytes *(*load_body)(CoreService *svc, const char *aor, GError **error);
} CorePackage;

enum {
  CORE_PKG_CERTIFICATE,
  CORE_N_PACKAGES,
};

static GBytes *core_cert_load_body(CoreService *svc, const char *aor, GError **error);

static const CorePackage core_packages[CORE_N_PACKAGES] = {
    [CORE_PKG_CERTIFICATE] =
        {
            .event = "certificate",
            .content_type = "application/pkix-cert",
            .content_disposition = "signal",
            .load_body = core_cert_load_body,
        },
};

typedef struct {
  char *aor;
  GQueue subs; /* CoreSub, linked through CoreSub.aor_link */
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
  GBytes *pending;    /* newest state not yet sent, NULL when up to date */
  gint64 last_sent;   /* unix seconds of the last NOTIFY */
  gpointer timer;     /* port timer while deferred by the interval, else NULL */
} CoreSub;

struct _CoreService {
  CoreConfig cfg;
  char **domains;
  StoreDb *store;
  CorePort port;
  gpointer port_data;
  char *allow_events;
  CoreCredGetCb cred_get;
  gpointer cred_get_data;

  GHashTable *subs;                    /* sub -> CoreSub (owned) */
  GHashTable *by_aor[CORE_N_PACKAGES]; /* AOR -> CoreAorSubs (owned) */
  GQueue fanout;                       /* CoreSub waiting for a slot */
  guint in_flight;                     /* NOTIFYs awaiting core_notify_done() */
  gboolean pumping;
};

void
core_config_init_defaults(CoreConfig *cfg)
{
  g_return_if_fail(cfg != NULL);

  *cfg = (CoreConfig){
      .domains = NULL,
      .default_expires = 86400, /* RFC 6072 6.3: one day */
      .max_expires = 86400,
      .min_expires = 60,
      .notify_window = 200,
      .min_notify_interval = 60, /* RFC 6072 6.10 and 7.12 */
  };
}

static void
core_aor_subs_free(gpointer data)
{
  CoreAorSubs *entry = data;

  /* The links are embedded in CoreSub records, which the subs table owns. */
  g_free(entry->aor);
  g_free(entry);
}

static void
core_sub_free(gpointer data)
{
  CoreSub *rec = data;

  g_clear_pointer(&rec->pending, g_bytes_unref);
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
  for (guint i = 0; i < CORE_N_PACKAGES; i++)
    svc->by_aor[i] = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, core_aor_subs_free);
  g_queue_init(&svc->fanout);
  return svc;
}

void
core_service_free(CoreService *svc)
{
  if (svc == NULL)
    return;
  /* Queue links live inside the records: forget them before freeing those. */
  g_queue_init(&svc->fanout);
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, svc->subs);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    CoreSub *rec = value;
    if (rec->timer != NULL)
      svc->port.cancel(g_steal_pointer(&rec->timer), svc->port_data);
  }
  g_hash_table_destroy(svc->subs);
  for (guint i = 0; i < CORE_N_PACKAGES; i++)
    g_hash_table_destroy(svc->by_aor[i]);
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

guint
core_service_get_n_subscriptions(CoreService *svc)
{
  g_return_val_if_fail(svc != NULL, 0);

  return g_hash_table_size(svc->subs);
}

static GBytes *
core_cert_load_body(CoreService *svc, const char *aor, GError **error)
{
  g_autoptr(GError) local = NULL;
  g_autoptr(StoreCred) cred = NULL;

  if (svc->cred_get != NULL)
    cred = svc->cred_get(svc->store, aor, svc->cred_get_data, &local);
  else
    cred = store_cred_get(svc->store, aor, &local);
  if (cred == NULL) {
    if (g_error_matches(local, STORE_ERROR, STORE_ERROR_NOT_FOUND))
      return g_bytes_new(NULL, 0);
    if (local == NULL)
      g_set_error_literal(&local, STORE_ERROR, STORE_ERROR_IO, "no record and no error");
    g_propagate_error(error, g_steal_pointer(&local));
    return NULL;
  }
  if (cred->cert_der == NULL)
    return g_bytes_new(NULL, 0);
  return g_bytes_ref(cred->cert_der);
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

static void
core_respond(CoreService *svc, gpointer txn, const CoreResponse *resp)
{
  svc->port.respond(txn, resp, svc->port_data);
}

static void
core_respond_error(CoreService *svc, gpointer txn, guint status, const char *phrase)
{
  CoreResponse resp = {.status = status, .phrase = phrase};
  core_respond(svc, txn, &resp);
}

static void
core_send_notify(CoreService *svc, gpointer sub, const CorePackage *pkg, CoreSubstate state,
                 guint32 expires, const char *reason, GBytes *body)
{
  CoreNotify notify = {
      .event = pkg->event,
      .state = state,
      .expires = expires,
      .reason = reason,
      .body = body,
  };

  /* RFC 6072 6.4: the body is empty or one application/pkix-cert; empty
   * means "no certificate" (6.6) or "revoked" (7.9, 6.8). It goes without
   * Content-Type: RFC 3261 7.4.1 reads an empty body with a Content-Type as
   * a zero-length object of that type, and a zero-length pkix-cert is not a
   * certificate. Content-Disposition describes a body (RFC 3261 20.11), so
   * "signal" travels only with one. */
  if (g_bytes_get_size(body) > 0) {
    notify.content_type = pkg->content_type;
    notify.content_disposition = pkg->content_disposition;
  }
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
    g_autoptr(GBytes) body = g_steal_pointer(&rec->pending);
    if (body == NULL)
      continue;
    gint64 remaining = rec->expires_at - svc->port.now(svc->port_data);
    if (remaining <= 0) {
      /* Expired but not yet ended by the server: nothing left to promise. */
      continue;
    }
    rec->in_flight = TRUE;
    rec->last_sent = svc->port.now(svc->port_data);
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
  if (rec->pending != NULL && !rec->in_flight)
    core_fanout_enqueue(svc, rec);
  core_fanout_pump(svc);
}

/* @rec has a newer state to send and no NOTIFY in flight: queue it, or, when
 * its last NOTIFY is too recent, wait until the interval has passed. */
static void
core_sub_make_ready(CoreService *svc, CoreSub *rec)
{
  if (rec->queued || rec->timer != NULL)
    return; /* it will send rec->pending, whatever that is by then */
  guint32 interval = svc->cfg.min_notify_interval;
  if (interval > 0) {
    gint64 wait = rec->last_sent + interval - svc->port.now(svc->port_data);
    if (wait > 0) {
      /* A clock step back would make wait up to the whole interval, no more. */
      wait = MIN(wait, (gint64)interval);
      rec->timer = svc->port.schedule((guint)(wait * 1000), core_sub_timer_fired, rec,
                                      svc->port_data);
      if (rec->timer != NULL)
        return;
      g_warning("cannot schedule a deferred NOTIFY; sending it now");
    }
  }
  core_fanout_enqueue(svc, rec);
}

static CoreSub *
core_sub_register(CoreService *svc, gpointer sub, const CorePackage *pkg, const char *aor,
                  gint64 expires_at)
{
  GHashTable *table = svc->by_aor[pkg - core_packages];
  CoreAorSubs *entry = g_hash_table_lookup(table, aor);

  if (entry == NULL) {
    entry = g_new0(CoreAorSubs, 1);
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

void
core_subscribe(CoreService *svc, gpointer txn, gpointer sub, const CoreSubscribeInfo *info)
{
  g_return_if_fail(svc != NULL);
  g_return_if_fail(info != NULL);

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

  /* RFC 6072 6.4: without Accept the package's own type is assumed. */
  if (info->accept != NULL && !core_accept_allows(info->accept, pkg->content_type)) {
    g_autofree char *phrase = g_strdup_printf("Accept excludes %s", pkg->content_type);
    CoreResponse resp = {.status = 406, .phrase = phrase, .accept = pkg->content_type};
    core_respond(svc, txn, &resp);
    return;
  }

  guint32 granted;
  if (!info->has_expires) {
    granted = MIN(svc->cfg.default_expires, svc->cfg.max_expires);
  } else if (info->expires == 0) {
    granted = 0; /* a fetch (RFC 6665 4.4.3) */
  } else if (info->expires < svc->cfg.min_expires) {
    CoreResponse resp = {
        .status = 423,
        .phrase = "Interval Too Brief",
        .min_expires = svc->cfg.min_expires,
    };
    core_respond(svc, txn, &resp);
    return;
  } else {
    granted = MIN(info->expires, svc->cfg.max_expires);
  }

  g_autoptr(GBytes) body = pkg->load_body(svc, aor, &error);
  if (body == NULL) {
    g_warning("cannot read the %s state of %s: %s", pkg->event, aor, error->message);
    core_respond_error(svc, txn, 500, "Credential store unavailable");
    return;
  }

  CoreResponse ok = {.status = 200, .phrase = "OK", .expires = granted};
  if (granted == 0) {
    /* RFC 6665 3.1.1 and 4.4.3: Expires 0 fetches the state once; the
     * subscription ends with that NOTIFY and is never registered. */
    core_respond(svc, txn, &ok);
    g_info("%s fetch of %s", pkg->event, aor);
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
  gint64 now = svc->port.now(svc->port_data);
  CoreSub *rec = core_sub_register(svc, sub, pkg, aor, now + granted);
  g_info("%s subscription to %s for %u s from %s over %s %s (%s)", pkg->event, aor, granted,
         info->peer_addr ? info->peer_addr : "?", info->tls_version ? info->tls_version : "?",
         info->cipher_suite ? info->cipher_suite : "?", info->direct ? "direct" : "not direct");

  /* RFC 6665 4.2.1 and RFC 6072 6.7: the first NOTIFY goes out at once,
   * outside the window, but it is counted in flight so that fan-out waits
   * for it and a change meanwhile is sent after it, not beside it. */
  rec->in_flight = TRUE;
  rec->last_sent = now;
  svc->in_flight++;
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
  if (core_notify_status_ends_sub(status)) {
    g_info("%s subscription to %s dropped: NOTIFY failed with %u", rec->pkg->event, rec->aor->aor,
           status);
    core_sub_forget(svc, rec);
  } else if (rec->pending != NULL) {
    /* The state changed while this NOTIFY was out: send the newest next. */
    core_sub_make_ready(svc, rec);
  }
  core_fanout_pump(svc);
}

static void
core_state_changed(CoreService *svc, const CorePackage *pkg, const char *aor)
{
  CoreAorSubs *entry = g_hash_table_lookup(svc->by_aor[pkg - core_packages], aor);
  if (entry == NULL)
    return;

  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) body = pkg->load_body(svc, aor, &error);
  if (body == NULL) {
    /* Queued subscribers keep the newest state we could read; the next
     * change or refresh brings them up to date. */
    g_warning("cannot read the %s state of %s, subscribers not notified: %s", pkg->event, aor,
              error->message);
    return;
  }

  /* One body shared by all; a subscriber already queued or deferred just
   * gets the newer body, one in flight gets it after its NOTIFY completes. */
  for (GList *l = entry->subs.head; l != NULL; l = l->next) {
    CoreSub *rec = l->data;
    g_clear_pointer(&rec->pending, g_bytes_unref);
    rec->pending = g_bytes_ref(body);
    if (!rec->in_flight)
      core_sub_make_ready(svc, rec);
  }
  g_info("%s of %s changed: notifying %u subscribers", pkg->event, aor, entry->subs.length);
  core_fanout_pump(svc);
}

void
core_cert_changed(CoreService *svc, const char *aor)
{
  g_return_if_fail(svc != NULL);
  g_return_if_fail(aor != NULL);

  g_autoptr(GError) error = NULL;
  g_autofree char *canonical = core_aor_canonicalize(aor, &error);
  if (canonical == NULL) {
    g_warning("certificate change for an invalid AOR ignored: %s", error->message);
    return;
  }
  core_state_changed(svc, &core_packages[CORE_PKG_CERTIFICATE], canonical);
}
