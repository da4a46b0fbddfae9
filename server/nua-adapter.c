#define G_LOG_DOMAIN "sipcred-nua"

#include "server/nua-adapter.h"

#include <gio/gio.h>
#include <stdarg.h>
#include <string.h>

struct _NuaAdapter;
struct _NuaSub;
#define SU_ROOT_MAGIC_T struct _NuaAdapter
#define NUA_MAGIC_T struct _NuaAdapter
#define NUA_HMAGIC_T struct _NuaSub

#include <sofia-sip/msg_header.h>
#include <sofia-sip/nua.h>
#include <sofia-sip/nua_tag.h>
#include <sofia-sip/sip_header.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_tag.h>
#include <sofia-sip/su_glib.h>
#include <sofia-sip/su_log.h>
#include <sofia-sip/tport_tag.h>
#include <sofia-sip/url.h>

#include "server/edge.h"
#include "sipcred-config.h"

G_DEFINE_QUARK(sipcred - nua - adapter - error - quark, nua_adapter_error)

/* One subscription as nua knows it: a handle bound to this record. The core
 * holds the pointer from core_subscribe() until core_subscription_gone(). */
typedef struct _NuaSub {
  struct _NuaAdapter *ad;
  nua_handle_t *nh;
  guint core_notifies; /* NOTIFYs the core sent that have not completed */
  gboolean accepted;   /* the core took it: it must hear when it ends */
} NuaSub;

struct _NuaAdapter {
  su_root_t *root;
  nua_t *nua;
  guint16 port;
  CoreService *core;
  Edge *edge;          /* not owned */
  GHashTable *subs;    /* NuaSub* set, so shutdown frees what nua never reports */
  GHashTable *legs;    /* nua_handle_t* of a relayed MESSAGE -> the core's leg */
  GHashTable *pending; /* NuaTxn* answered later (MESSAGE), owned */
  GHashTable *answers; /* "METHOD STATUS" -> count (GSIZE_TO_POINTER) of our answers */
  GHashTable *handles; /* nua_handle_t* set: handles the application holds (a gauge) */
  gboolean shutdown_done;
};

/* A request being answered: inside the nua callback (saved == NULL), or
 * later (a MESSAGE waiting for its relayed legs; nua's request is saved). */
typedef struct {
  NuaAdapter *ad;
  nua_handle_t *nh;
  guint status;          /* what the core answered, 0 before */
  gboolean with_expires; /* a 2xx carries Expires (SUBSCRIBE, PUBLISH) */
  const char *method;    /* for the answer counts */
  nua_saved_event_t saved[1];
  gboolean is_saved;
  gboolean in_call; /* the core is still inside core_message() */
} NuaTxn;

static void nua_txn_finish(NuaTxn *t);

/* Every handle the application owns goes through here, so the live-handle
 * gauge shows a handle that a path forgets to destroy. */
static void
nua_adapter_handle_destroy(struct _NuaAdapter *ad, nua_handle_t *nh)
{
  if (ad->handles != NULL)
    g_hash_table_remove(ad->handles, nh);
  nua_handle_destroy(nh);
}

static void
nua_sub_free(NuaSub *s)
{
  if (s->nh) {
    nua_handle_bind(s->nh, NULL);
    nua_adapter_handle_destroy(s->ad, s->nh);
  }
  g_free(s);
}

/* The subscription is over: tell the core (if it knew it) and drop it. */
static void
nua_adapter_end_sub(NuaAdapter *ad, NuaSub *s)
{
  if (s->accepted && ad->core)
    core_subscription_gone(ad->core, s);
  g_hash_table_remove(ad->subs, s);
}

/* ---- CorePort ------------------------------------------------------------ */

static void
port_respond(gpointer txnp, const CoreResponse *r, gpointer user_data)
{
  NuaTxn *t = txnp;
  NuaAdapter *ad = user_data;
  char expires[16], min_expires[16];
  gboolean is_2xx = r->status >= 200 && r->status < 300;
  g_snprintf(expires, sizeof expires, "%u", r->expires);
  g_snprintf(min_expires, sizeof min_expires, "%u", r->min_expires);

  /* nua keeps the phrase pointer until its stack runs the response; the
   * core's string dies when this call returns, so the handle owns a copy. */
  char const *phrase = r->phrase ? su_strdup(nua_handle_home(t->nh), r->phrase) : NULL;
  /* One WWW-Authenticate line per challenge: a challenge holds commas, so
   * they cannot share one header. */
  g_autoptr(GString) extra = g_string_new(NULL);
  for (guint i = 0; r->www_authenticate && r->www_authenticate[i]; i++)
    g_string_append_printf(extra, "%sWWW-Authenticate: %s", extra->len ? "\r\n" : "",
                           r->www_authenticate[i]);
  char retry_after[16];
  g_snprintf(retry_after, sizeof retry_after, "%u", r->retry_after);
  /* REGISTER: every binding, one Contact line each (their values hold
   * commas inside quotes). */
  for (guint i = 0; r->contacts && r->contacts[i]; i++)
    g_string_append_printf(extra, "%sContact: %s", extra->len ? "\r\n" : "", r->contacts[i]);
  sip_date_t *date = r->date ? sip_date_create(nua_handle_home(t->nh), sip_now()) : NULL;
  nua_respond(t->nh, r->status, phrase, TAG_IF(!t->is_saved, NUTAG_WITH_THIS(ad->nua)),
              TAG_IF(t->is_saved, NUTAG_WITH_SAVED(t->saved)), TAG_IF(date, SIPTAG_DATE(date)),
              TAG_IF(r->require, SIPTAG_REQUIRE_STR(r->require)),
              TAG_IF(r->supported, SIPTAG_SUPPORTED_STR(r->supported)),
              TAG_IF(is_2xx && t->with_expires, SIPTAG_EXPIRES_STR(expires)),
              TAG_IF(r->min_expires, SIPTAG_MIN_EXPIRES_STR(min_expires)),
              TAG_IF(r->accept, SIPTAG_ACCEPT_STR(r->accept)),
              TAG_IF(r->allow_events, SIPTAG_ALLOW_EVENTS_STR(r->allow_events)),
              TAG_IF(r->retry_after, SIPTAG_RETRY_AFTER_STR(retry_after)),
              TAG_IF(r->etag, SIPTAG_ETAG_STR(r->etag)),
              TAG_IF(extra->len, SIPTAG_HEADER_STR(extra->str)), TAG_END());
  t->status = r->status;
  if (ad->answers != NULL && t->method != NULL) {
    char *key = g_strdup_printf("%s %u", t->method, r->status);
    gsize n = GPOINTER_TO_SIZE(g_hash_table_lookup(ad->answers, key));
    g_hash_table_replace(ad->answers, key, GSIZE_TO_POINTER(n + 1));
  }
  if (t->is_saved && !t->in_call)
    nua_txn_finish(t);
}

/* An answered MESSAGE: its saved request and handle go. */
static void
nua_txn_finish(NuaTxn *t)
{
  g_hash_table_remove(t->ad->pending, t); /* frees t */
}

static void
nua_txn_free(NuaTxn *t)
{
  if (t->is_saved)
    nua_destroy_event(t->saved);
  if (t->nh)
    nua_adapter_handle_destroy(t->ad, t->nh);
  g_free(t);
}

static void
port_notify(gpointer subp, const CoreNotify *n, gpointer user_data)
{
  NuaSub *s = subp;
  su_home_t home[1] = {SU_HOME_INIT(home)};
  enum nua_substate substate;
  char *state;

  switch (n->state) {
  case CORE_SUBSTATE_TERMINATED:
    substate = nua_substate_terminated;
    state = su_sprintf(home, "terminated;reason=%s", n->reason ? n->reason : "noresource");
    break;
  case CORE_SUBSTATE_PENDING:
    substate = nua_substate_pending;
    state = su_sprintf(home, "pending;expires=%u", n->expires);
    break;
  case CORE_SUBSTATE_ACTIVE:
  default:
    substate = nua_substate_active;
    state = su_sprintf(home, "active;expires=%u", n->expires);
    break;
  }

  gsize len = 0;
  const void *data = n->body ? g_bytes_get_data(n->body, &len) : NULL;
  sip_payload_t *pl = len ? sip_payload_create(home, data, (isize_t)len) : NULL;

  nua_notify(
      s->nh, NUTAG_SUBSTATE(substate), SIPTAG_EVENT_STR(n->event),
      SIPTAG_SUBSCRIPTION_STATE_STR(state),
      TAG_IF(n->content_type, SIPTAG_CONTENT_TYPE_STR(n->content_type)),
      TAG_IF(n->content_disposition, SIPTAG_CONTENT_DISPOSITION_STR(n->content_disposition)),
      TAG_IF(pl, SIPTAG_PAYLOAD(pl)), TAG_END());
  s->core_notifies++;
  su_home_deinit(home);
}

static gint64
port_now(gpointer user_data)
{
  return g_get_real_time() / G_USEC_PER_SEC;
}

typedef struct {
  void (*cb)(gpointer data);
  gpointer data;
} PortTimer;

static gboolean
port_timer_fire(gpointer user_data)
{
  PortTimer *t = user_data;
  t->cb(t->data);
  return G_SOURCE_REMOVE;
}

static gpointer
port_schedule(guint delay_ms, void (*cb)(gpointer data), gpointer data, gpointer user_data)
{
  PortTimer *t = g_new(PortTimer, 1);
  t->cb = cb;
  t->data = data;
  /* The default context is the one nua runs on (nua_adapter_new). */
  guint id = g_timeout_add_full(G_PRIORITY_DEFAULT, delay_ms, port_timer_fire, t, g_free);
  return GUINT_TO_POINTER(id);
}

static void
port_cancel(gpointer handle, gpointer user_data)
{
  g_source_remove(GPOINTER_TO_UINT(handle));
}

static void
port_relay(gpointer leg, const CoreRelayRequest *req, gpointer user_data)
{
  NuaAdapter *ad = user_data;
  su_home_t home[1] = {SU_HOME_INIT(home)};
  gsize len = 0;
  const void *data = g_bytes_get_data(req->body, &len);
  sip_payload_t *pl = len ? sip_payload_create(home, data, (isize_t)len) : NULL;
  /* The token Route leads the MESSAGE to the edge, which sends it over that
   * flow (and signs it), as it does NOTIFYs in a dialog. */
  char *route = su_sprintf(home, "<sip:%s@127.0.0.1:%u;transport=tcp;lr>", req->flow_token,
                           ad->edge ? edge_get_internal_port(ad->edge) : 0);
  char *cte = req->content_transfer_encoding ? su_sprintf(home, "Content-Transfer-Encoding: %s",
                                                          req->content_transfer_encoding)
                                             : NULL;
  nua_handle_t *nh = nua_handle(ad->nua, NULL, SIPTAG_TO_STR(req->to_uri), TAG_END());
  g_hash_table_add(ad->handles, nh);

  g_hash_table_insert(ad->legs, nh, leg);
  nua_message(
      nh, NUTAG_URL(req->request_uri), SIPTAG_FROM_STR(req->from_uri), SIPTAG_ROUTE_STR(route),
      TAG_IF(req->content_type, SIPTAG_CONTENT_TYPE_STR(req->content_type)),
      TAG_IF(req->content_disposition, SIPTAG_CONTENT_DISPOSITION_STR(req->content_disposition)),
      TAG_IF(cte, SIPTAG_HEADER_STR(cte)), TAG_IF(pl, SIPTAG_PAYLOAD(pl)), TAG_END());
  su_home_deinit(home);
}

static const CorePort nua_core_port = {
    .respond = port_respond,
    .notify = port_notify,
    .now = port_now,
    .schedule = port_schedule,
    .cancel = port_cancel,
    .relay = port_relay,
};

const CorePort *
nua_adapter_get_core_port(void)
{
  return &nua_core_port;
}

/* ---- nua events ---------------------------------------------------------- */

static enum nua_substate
tags_get_substate(tagi_t const *tags)
{
  tagi_t const *t = tl_find(tags, nutag_substate);
  return t ? (enum nua_substate)t->t_value : nua_substate_embryonic;
}

/* @first followed by each of @params after @sep, as the header carried them.
 * Header values are rebuilt from Sofia's parsed fields rather than with
 * sip_header_as_string(): in the Sofia-SIP that Debian ships, that drops the
 * last parameter of a value of 127 bytes or more. */
static void
append_with_params(GString *s, char const *first, msg_param_t const *params, char const *sep)
{
  g_string_append(s, first ? first : "");
  for (guint i = 0; params && params[i]; i++) {
    g_string_append(s, sep);
    g_string_append(s, params[i]);
  }
}

/* "type;param;..." of a header with a main token and parameters. */
static char *
token_with_params(char const *first, msg_param_t const *params)
{
  GString *s = g_string_new(NULL);
  append_with_params(s, first, params, ";");
  return g_string_free(s, FALSE);
}

/* All Accept values of @sip joined by ", ", NULL when there is no Accept. */
static char *
accept_join(su_home_t *home, sip_t const *sip)
{
  if (!sip->sip_accept)
    return NULL;
  GString *s = g_string_new(NULL);
  for (sip_accept_t const *ac = sip->sip_accept; ac; ac = ac->ac_next) {
    if (!ac->ac_type || !*ac->ac_type)
      continue;
    if (s->len)
      g_string_append(s, ", ");
    append_with_params(s, ac->ac_type, ac->ac_params, ";");
  }
  return g_string_free(s, FALSE);
}

/* All Authorization values of @sip ("Digest ..."), NULL-terminated, or NULL. */
static char **
authorization_list(su_home_t *home, sip_t const *sip)
{
  if (!sip->sip_authorization)
    return NULL;
  GPtrArray *out = g_ptr_array_new();
  for (sip_authorization_t const *au = sip->sip_authorization; au; au = au->au_next) {
    GString *one = g_string_new(au->au_scheme ? au->au_scheme : "");
    g_string_append_c(one, ' ');
    for (guint i = 0; au->au_params && au->au_params[i]; i++) {
      if (i > 0)
        g_string_append(one, ", ");
      g_string_append(one, au->au_params[i]);
    }
    g_ptr_array_add(out, g_string_free(one, FALSE));
  }
  g_ptr_array_add(out, NULL);
  return (char **)g_ptr_array_free(out, FALSE);
}

/* The edge's facts about the flow @sip came through. Direct: only the
 * client's Via below the edge's own, on a flow the edge still has (so it
 * came over TLS from that peer). Clear @flow_info afterwards. */
static gboolean
request_flow_facts(NuaAdapter *ad, sip_t const *sip, char const **flow, EdgeFlowInfo *flow_info)
{
  *flow = NULL;
  if (sip->sip_via && sip->sip_via->v_params)
    *flow = msg_params_find(sip->sip_via->v_params, "flow=");
  guint n_vias = 0;
  for (sip_via_t const *v = sip->sip_via; v; v = v->v_next)
    n_vias++;
  gboolean have_flow = *flow && ad->edge && edge_flow_lookup(ad->edge, *flow, flow_info);
  return have_flow && n_vias == 2;
}

/* What the request handlers read from every request in the same way. The
 * strings live until request_facts_clear(). */
typedef struct {
  su_home_t home[1];
  char **authorization; /* "Digest ..." values, NULL-terminated, or NULL */
  char const *flow;     /* the edge flow token, or NULL */
  EdgeFlowInfo flow_info;
  gboolean direct;
  char const *request_uri, *to_uri, *from_uri;
  char *content_type; /* "type/sub;params", or NULL */
  char *disposition;  /* "type;params", or NULL */
  GBytes *body;       /* the payload in place (it may hold a private key: never
                       * copied here), or NULL */
} NuaRequestFacts;

static void
request_facts_init(NuaRequestFacts *f, NuaAdapter *ad, sip_t const *sip)
{
  memset(f, 0, sizeof *f);
  su_home_init(f->home);
  f->authorization = authorization_list(f->home, sip);
  f->direct = request_flow_facts(ad, sip, &f->flow, &f->flow_info);
  f->request_uri = sip->sip_request ? url_as_string(f->home, sip->sip_request->rq_url) : NULL;
  f->to_uri = sip->sip_to ? url_as_string(f->home, sip->sip_to->a_url) : NULL;
  f->from_uri = sip->sip_from ? url_as_string(f->home, sip->sip_from->a_url) : NULL;
  if (sip->sip_content_type)
    f->content_type =
        token_with_params(sip->sip_content_type->c_type, sip->sip_content_type->c_params);
  if (sip->sip_content_disposition)
    f->disposition = token_with_params(sip->sip_content_disposition->cd_type,
                                       sip->sip_content_disposition->cd_params);
  if (sip->sip_payload)
    f->body = g_bytes_new_static(sip->sip_payload->pl_data, sip->sip_payload->pl_len);
}

static void
request_facts_clear(NuaRequestFacts *f)
{
  g_strfreev(f->authorization);
  edge_flow_info_clear(&f->flow_info);
  g_free(f->content_type);
  g_free(f->disposition);
  g_clear_pointer(&f->body, g_bytes_unref);
  su_home_deinit(f->home);
}

static void
on_initial_subscribe(NuaAdapter *ad, nua_handle_t *nh, sip_t const *sip)
{
  NuaRequestFacts f;
  request_facts_init(&f, ad, sip);
  g_autofree char *accept = accept_join(f.home, sip);

  CoreSubscribeInfo info = {
      .event = sip->sip_event ? sip->sip_event->o_type : NULL,
      .request_uri = f.request_uri,
      .to_uri = f.to_uri,
      .from_uri = f.from_uri,
      .has_expires = sip->sip_expires != NULL,
      .expires = sip->sip_expires ? sip->sip_expires->ex_delta : 0,
      .accept = accept,
      .flow_token = f.flow,
      .direct = f.direct,
      .peer_addr = f.flow_info.peer_addr,
      .tls_version = f.flow_info.tls_version,
      .cipher_suite = f.flow_info.cipher_suite,
      .sni = f.flow_info.sni,
      .peer_cert_der = f.flow_info.peer_cert_der,
      .authorization = (const char *const *)f.authorization,
  };

  NuaSub *s = g_new0(NuaSub, 1);
  s->ad = ad;
  s->nh = nh;
  nua_handle_bind(nh, s);
  g_hash_table_add(ad->subs, s);

  NuaTxn txn = {.ad = ad, .nh = nh, .with_expires = TRUE, .method = "SUBSCRIBE"};
  core_subscribe(ad->core, &txn, s, &info);
  if (txn.status == 0) {
    g_critical("core left a SUBSCRIBE unanswered");
    nua_respond(nh, SIP_500_INTERNAL_SERVER_ERROR, NUTAG_WITH_THIS(ad->nua), TAG_END());
  }
  /* A fetch (Expires: 0) is answered and notified but never registered. */
  gboolean is_fetch = info.has_expires && info.expires == 0;
  s->accepted = txn.status >= 200 && txn.status < 300 && !is_fetch;
  /* Rejected: the handle goes with the record. A fetch ends when its
   * terminated NOTIFY completes. */
  if (!(txn.status >= 200 && txn.status < 300))
    g_hash_table_remove(ad->subs, s);
  request_facts_clear(&f);
}

/* The value of the first header named @name that Sofia does not know. */
static char const *
unknown_header(sip_t const *sip, char const *name)
{
  for (sip_unknown_t const *un = sip->sip_unknown; un; un = un->un_next)
    if (un->un_name && g_ascii_strcasecmp(un->un_name, name) == 0)
      return un->un_value;
  return NULL;
}

static void
on_publish(NuaAdapter *ad, int status, nua_handle_t *nh, sip_t const *sip)
{
  if (status >= 200 || !sip || !ad->core) {
    nua_adapter_handle_destroy(ad, nh); /* nua already answered it (e.g. 489) */
    return;
  }
  NuaRequestFacts f;
  request_facts_init(&f, ad, sip);
  g_autofree char *event =
      sip->sip_event ? token_with_params(sip->sip_event->o_type, sip->sip_event->o_params) : NULL;
  CorePublishInfo info = {
      .event = event,
      .request_uri = f.request_uri,
      .to_uri = f.to_uri,
      .from_uri = f.from_uri,
      .has_expires = sip->sip_expires != NULL,
      .expires = sip->sip_expires ? sip->sip_expires->ex_delta : 0,
      .if_match = sip->sip_if_match ? sip->sip_if_match->g_string : NULL,
      .content_type = f.content_type,
      .content_transfer_encoding = unknown_header(sip, "Content-Transfer-Encoding"),
      .content_disposition = f.disposition,
      .body = f.body,
      .authorization = (const char *const *)f.authorization,
      .direct = f.direct,
      .peer_addr = f.flow_info.peer_addr,
  };

  NuaTxn txn = {.ad = ad, .nh = nh, .with_expires = TRUE, .method = "PUBLISH"};
  core_publish(ad->core, &txn, &info);
  if (txn.status == 0) {
    g_critical("core left a PUBLISH unanswered");
    nua_respond(nh, SIP_500_INTERNAL_SERVER_ERROR, NUTAG_WITH_THIS(ad->nua), TAG_END());
  }
  /* PUBLISH makes no dialog: the handle has no further use. */
  nua_adapter_handle_destroy(ad, nh);
  request_facts_clear(&f);
}

static void
on_subscribe(NuaAdapter *ad, int status, nua_handle_t *nh, NuaSub *s, sip_t const *sip,
             tagi_t tags[])
{
  if (s == NULL) {
    if (status < 200 && sip && ad->core)
      on_initial_subscribe(ad, nh, sip);
    else
      nua_adapter_handle_destroy(ad, nh); /* nua already refused it (e.g. 489) */
    return;
  }

  /* A refresh or unsubscribe in an existing dialog. Some nua builds leave
   * the answer to the application; this nua answers it itself. */
  if (status < 200)
    nua_respond(nh, SIP_200_OK, NUTAG_WITH_THIS(ad->nua), TAG_END());
  if (tags_get_substate(tags) == nua_substate_terminated) {
    g_info("subscription %p ended by the subscriber", (void *)s);
    return; /* nua sends the final NOTIFY; its response ends the record */
  }
  if (s->accepted && ad->core && sip && sip->sip_expires)
    core_subscription_refreshed(ad->core, s, sip->sip_expires->ex_delta);
}

static void
on_notify_response(NuaAdapter *ad, int status, NuaSub *s, tagi_t tags[])
{
  if (s == NULL || status < 200)
    return;
  if (s->core_notifies > 0) {
    s->core_notifies--;
    if (s->accepted && ad->core)
      core_notify_done(ad->core, s, status);
  }
  /* 430: the edge says the client's flow is gone; 481/408: the subscriber
   * forgot the dialog or is unreachable. The subscriber re-subscribes. */
  gboolean dead = status == 408 || status == 430 || status == 481;
  if (dead || tags_get_substate(tags) == nua_substate_terminated) {
    if (dead)
      g_info("NOTIFY failed with %d: ending the subscription", status);
    nua_adapter_end_sub(ad, s);
  }
}

/* The unquoted value of parameter @name ("+sip.instance=") in @params. */
static char *
param_unquoted(msg_param_t const *params, char const *name)
{
  char const *v = params ? msg_params_find(params, name) : NULL;
  if (v == NULL)
    return NULL;
  gsize n = strlen(v);
  if (n >= 2 && v[0] == '"' && v[n - 1] == '"')
    return g_strndup(v + 1, n - 2);
  return g_strdup(v);
}

static void
on_register(NuaAdapter *ad, int status, nua_handle_t *nh, sip_t const *sip)
{
  if (status >= 200 || !sip || !ad->core) {
    nua_adapter_handle_destroy(ad, nh);
    return;
  }
  NuaRequestFacts f;
  request_facts_init(&f, ad, sip);
  g_autoptr(GArray) contacts = g_array_new(FALSE, TRUE, sizeof(CoreContact));
  g_autoptr(GPtrArray) keep = g_ptr_array_new_with_free_func(g_free);

  for (sip_contact_t const *m = sip->sip_contact; m; m = m->m_next) {
    CoreContact c = {.q = -1};
    if (m->m_url->url_type == url_any) {
      c.uri = "*";
    } else {
      c.uri = url_as_string(f.home, m->m_url);
    }
    guint64 v = 0;
    if (m->m_expires && g_ascii_string_to_unsigned(m->m_expires, 10, 0, G_MAXUINT32, &v, NULL)) {
      c.has_expires = TRUE;
      c.expires = (guint32)v;
    } else if (m->m_expires) {
      /* Sofia only keeps digits here: more than 32 bits asks for "very
       * long", which the registrar clamps (RFC 3261 20.19 caps at 2^32-1). */
      c.has_expires = TRUE;
      c.expires = G_MAXUINT32;
    }
    if (m->m_q)
      c.q = (float)g_ascii_strtod(m->m_q, NULL);
    char *instance = param_unquoted(m->m_params, "+sip.instance=");
    if (instance) {
      g_ptr_array_add(keep, instance);
      c.instance = instance;
    }
    char const *reg_id = m->m_params ? msg_params_find(m->m_params, "reg-id=") : NULL;
    if (reg_id && g_ascii_string_to_unsigned(reg_id, 10, 1, G_MAXINT32, &v, NULL))
      c.reg_id = (guint32)v;
    g_array_append_val(contacts, c);
  }

  CoreRegisterInfo info = {
      .request_uri = f.request_uri,
      .to_uri = f.to_uri,
      .from_uri = f.from_uri,
      .call_id = sip->sip_call_id ? sip->sip_call_id->i_id : NULL,
      .cseq = sip->sip_cseq ? sip->sip_cseq->cs_seq : 0,
      .has_expires = sip->sip_expires != NULL,
      .expires = sip->sip_expires ? sip->sip_expires->ex_delta : 0,
      .contacts = (const CoreContact *)(gpointer)contacts->data,
      .n_contacts = contacts->len,
      .outbound = sip_has_supported(sip->sip_supported, "outbound"),
      .authorization = (const char *const *)f.authorization,
      .flow_token = f.flow,
      .direct = f.direct,
      .peer_addr = f.flow_info.peer_addr,
  };

  NuaTxn txn = {.ad = ad, .nh = nh, .method = "REGISTER"};
  core_register(ad->core, &txn, &info);
  if (txn.status == 0) {
    g_critical("core left a REGISTER unanswered");
    nua_respond(nh, SIP_500_INTERNAL_SERVER_ERROR, NUTAG_WITH_THIS(ad->nua), TAG_END());
  }
  nua_adapter_handle_destroy(ad, nh);
  request_facts_clear(&f);
}

static void
on_message(NuaAdapter *ad, int status, nua_handle_t *nh, sip_t const *sip)
{
  if (status >= 200 || !sip || !ad->core) {
    nua_adapter_handle_destroy(ad, nh);
    return;
  }
  NuaRequestFacts f;
  request_facts_init(&f, ad, sip);
  /* The body is relayed byte for byte: the core copies what it keeps. */
  CoreMessageInfo info = {
      .request_uri = f.request_uri,
      .to_uri = f.to_uri,
      .from_uri = f.from_uri,
      .content_type = f.content_type,
      .content_disposition = f.disposition,
      .content_transfer_encoding = unknown_header(sip, "Content-Transfer-Encoding"),
      .body = f.body,
      .authorization = (const char *const *)f.authorization,
      .flow_token = f.flow,
      .direct = f.direct,
      .peer_addr = f.flow_info.peer_addr,
  };

  /* The answer may come after this callback: keep nua's request. */
  NuaTxn *t = g_new0(NuaTxn, 1);
  t->ad = ad;
  t->nh = nh;
  t->method = "MESSAGE";
  t->is_saved = nua_save_event(ad->nua, t->saved) != 0;
  if (!t->is_saved) {
    g_warning("cannot keep a MESSAGE for its answer; 500");
    nua_respond(nh, SIP_500_INTERNAL_SERVER_ERROR, NUTAG_WITH_THIS(ad->nua), TAG_END());
    t->nh = NULL;
    nua_adapter_handle_destroy(ad, nh);
    g_free(t);
  } else {
    g_hash_table_add(ad->pending, t);
    t->in_call = TRUE;
    core_message(ad->core, t, &info);
    t->in_call = FALSE;
    if (t->status != 0)
      nua_txn_finish(t);
  }
  request_facts_clear(&f);
}

/* The final answer to a MESSAGE we relayed. */
static void
on_message_response(NuaAdapter *ad, int status, char const *phrase, nua_handle_t *nh)
{
  gpointer leg = NULL;
  if (status < 200 || ad->legs == NULL || !g_hash_table_steal_extended(ad->legs, nh, NULL, &leg))
    return;
  nua_adapter_handle_destroy(ad, nh);
  if (ad->core)
    core_relay_done(ad->core, leg, (guint)status, phrase);
}

static void
on_nua_event(nua_event_t event, int status, char const *phrase, nua_t *nua, NuaAdapter *ad,
             nua_handle_t *nh, NuaSub *s, sip_t const *sip, tagi_t tags[])
{
  g_debug("nua event %s: %d %s", nua_event_name(event), status, phrase ? phrase : "");
  /* nua hands the application a handle with the first event of a request it
   * did not create (and delivers nothing after nua_handle_destroy). */
  if (nh != NULL && ad->handles != NULL)
    g_hash_table_add(ad->handles, nh);
  switch (event) {
  case nua_i_subscribe:
    on_subscribe(ad, status, nh, s, sip, tags);
    break;
  case nua_r_notify:
    /* A 430 is the edge's (the flow is gone) and common; anything else
     * failing is worth seeing. */
    if (status >= 300 && status != 430)
      g_message("NOTIFY failed: %d %s", status, phrase ? phrase : "");
    on_notify_response(ad, status, s, tags);
    break;
  case nua_i_publish:
    on_publish(ad, status, nh, sip);
    break;
  case nua_i_register:
    on_register(ad, status, nh, sip);
    break;
  case nua_i_message:
    on_message(ad, status, nh, sip);
    break;
  case nua_r_message:
    on_message_response(ad, status, phrase, nh);
    break;
  case nua_r_shutdown:
    if (status >= 200)
      ad->shutdown_done = TRUE;
    break;
  case nua_i_error:
    g_warning("nua error: %d %s", status, phrase ? phrase : "");
    break;
  default:
    /* Requests nua answered by itself (OPTIONS, 405s, 501s) leave a
     * handle the application owns; nothing else will use it. */
    if (s == NULL && nh && event < nua_r_set_params && status >= 200)
      nua_adapter_handle_destroy(ad, nh);
    break;
  }
}

/* ---- lifecycle ----------------------------------------------------------- */

static void
sofia_log(void *stream, char const *fmt, va_list ap)
{
  /* Sofia logs protocol traces at high levels; they are for developers. */
  g_autofree char *line = g_strdup_vprintf(fmt, ap);
  g_strchomp(line);
  if (*line)
    g_debug("sofia: %s", line);
}

/* A free loopback TCP port for nua. nua_create() cannot report the port it
 * bound, so we pick one and retry on the rare race with another process. */
static guint16
pick_loopback_port(void)
{
  g_autoptr(GSocket) sock =
      g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
  if (!sock)
    return 0;
  g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
  g_autoptr(GSocketAddress) any = g_inet_socket_address_new(lo, 0);
  if (!g_socket_bind(sock, any, FALSE, NULL))
    return 0;
  g_autoptr(GSocketAddress) bound = g_socket_get_local_address(sock, NULL);
  return bound ? g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound)) : 0;
}

NuaAdapter *
nua_adapter_new(const SrvConfig *cfg, GError **error)
{
  g_return_val_if_fail(cfg && cfg->domains && cfg->domains[0], NULL);
  static gsize sofia_initialized = 0;
  if (g_once_init_enter(&sofia_initialized)) {
    /* Sofia's transport can log or dump whole messages when these are set;
     * credential NOTIFYs and PUBLISHes carry private keys, which must never
     * reach a log or a file (see sipcredd(8)). */
    g_unsetenv("TPORT_LOG");
    g_unsetenv("TPORT_DUMP");
    g_unsetenv("TPORT_CAPT");
    su_init();
    su_log_redirect(NULL, sofia_log, NULL);
    g_once_init_leave(&sofia_initialized, 1);
  }

  g_autoptr(NuaAdapter) ad = g_new0(NuaAdapter, 1);
  ad->subs = g_hash_table_new_full(NULL, NULL, (GDestroyNotify)nua_sub_free, NULL);
  ad->legs = g_hash_table_new(NULL, NULL);
  ad->answers = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  ad->handles = g_hash_table_new(NULL, NULL);
  ad->pending = g_hash_table_new_full(NULL, NULL, (GDestroyNotify)nua_txn_free, NULL);
  ad->root = su_glib_root_create(ad);
  if (ad->root == NULL) {
    g_set_error(error, NUA_ADAPTER_ERROR, NUA_ADAPTER_ERROR_START, "cannot create the su root");
    return NULL;
  }
  g_source_attach(su_root_gsource(ad->root), NULL);

  g_autofree char *server = g_strdup_printf("sipcred/%s", SIPCRED_VERSION);
  g_autofree char *allow_events = g_strdup("certificate, credential");
  for (int attempt = 0; attempt < 5 && ad->nua == NULL; attempt++) {
    ad->port = pick_loopback_port();
    if (ad->port == 0)
      continue;
    /* nua speaks for the public name but listens only on loopback. */
    g_autofree char *url =
        g_strdup_printf("sip:%s:%u;maddr=127.0.0.1;transport=tcp", cfg->domains[0], ad->port);
    /* nua's connections carry every client's traffic to the edge. A burst of
     * SUBSCRIBEs makes as many 200s and first NOTIFYs at once (those are not
     * paced by the fan-out window), and with tport's default queue of 64
     * messages per connection nua failed some NOTIFYs with its own 503. 1000
     * is tport's largest; the core also sends a failed NOTIFY again. */
    ad->nua = nua_create(ad->root, on_nua_event, ad, NUTAG_URL(url), TPTAG_LOG(0),
                         TPTAG_QUEUESIZE(1000), TAG_END());
  }
  if (ad->nua == NULL) {
    g_set_error(error, NUA_ADAPTER_ERROR, NUA_ADAPTER_ERROR_START,
                "cannot bind nua to a loopback TCP port");
    return NULL;
  }

  nua_set_params(ad->nua, NUTAG_APPL_METHOD("SUBSCRIBE"), NUTAG_APPL_METHOD("PUBLISH"),
                 NUTAG_APPL_METHOD("REGISTER"), NUTAG_APPL_METHOD("MESSAGE"),
                 NUTAG_ALLOW_EVENTS(allow_events),
                 SIPTAG_ALLOW_STR("OPTIONS, SUBSCRIBE, PUBLISH, REGISTER, MESSAGE"),
                 NUTAG_ENABLEINVITE(0), NUTAG_ENABLEMESSAGE(1),
                 NUTAG_SUB_EXPIRES(cfg->core.max_expires), SIPTAG_SERVER_STR(server),
                 SIPTAG_USER_AGENT_STR(server), TAG_END());
  g_info("nua listening on 127.0.0.1:%u (tcp) as %s", ad->port, cfg->domains[0]);
  return g_steal_pointer(&ad);
}

GHashTable *
nua_adapter_get_answer_counts(NuaAdapter *ad)
{
  return ad->answers;
}

guint
nua_adapter_get_live_handles(NuaAdapter *ad)
{
  return ad->handles ? g_hash_table_size(ad->handles) : 0;
}

guint16
nua_adapter_get_port(NuaAdapter *ad)
{
  return ad->port;
}

void
nua_adapter_set_edge(NuaAdapter *ad, Edge *edge)
{
  ad->edge = edge;
}

void
nua_adapter_attach_core(NuaAdapter *ad, CoreService *core)
{
  ad->core = core;
}

static gboolean
on_shutdown_timeout(gpointer data)
{
  *(gboolean *)data = TRUE;
  return G_SOURCE_REMOVE;
}

gboolean
nua_adapter_shutdown(NuaAdapter *ad, guint timeout_ms)
{
  if (ad->nua == NULL || ad->shutdown_done)
    return TRUE;
  nua_shutdown(ad->nua);
  gboolean timed_out = FALSE;
  guint timer = g_timeout_add(timeout_ms, on_shutdown_timeout, &timed_out);
  while (!ad->shutdown_done && !timed_out)
    g_main_context_iteration(NULL, TRUE);
  if (!timed_out)
    g_source_remove(timer);
  else
    g_warning("nua did not finish its dialogs within %u ms; exiting anyway", timeout_ms);
  /* The core must not hear of subscriptions after this point. */
  ad->core = NULL;
  return !timed_out;
}

void
nua_adapter_free(NuaAdapter *ad)
{
  if (ad == NULL)
    return;
  ad->core = NULL;
  g_clear_pointer(&ad->subs, g_hash_table_unref);
  g_clear_pointer(&ad->pending, g_hash_table_unref);
  g_clear_pointer(&ad->legs, g_hash_table_unref);
  g_clear_pointer(&ad->answers, g_hash_table_unref);
  g_clear_pointer(&ad->handles, g_hash_table_unref);
  if (ad->nua) {
    if (!ad->shutdown_done) {
      /* nua_destroy() refuses a nua that was not shut down. */
      nua_shutdown(ad->nua);
      for (int i = 0; i < 100 && !ad->shutdown_done; i++)
        su_root_step(ad->root, 10);
    }
    nua_destroy(ad->nua);
  }
  if (ad->root)
    su_root_destroy(ad->root);
  g_free(ad);
}
