/* core: the RFC 6072 rules and the state of sipcred's event packages.
 *
 * The core does no I/O. It talks to the outside through CorePort, which
 * server/ implements with nua and the tests implement with a fake. Every
 * request the server hands in gets exactly one answer through port->respond,
 * synchronously, before the call returns.
 */
#pragma once

#include <glib.h>

#include "core/digest.h"
#include "storage/store.h"

G_BEGIN_DECLS

#define CORE_ERROR (core_error_quark())
GQuark core_error_quark(void);

typedef enum {
  CORE_ERROR_BAD_URI,    /* not a sip:/sips: URI with user and host */
  CORE_ERROR_NOT_SERVED, /* the URI's host is not one of our domains */
} CoreError;

typedef enum {
  CORE_SUBSTATE_ACTIVE,
  CORE_SUBSTATE_PENDING,
  CORE_SUBSTATE_TERMINATED,
} CoreSubstate;

/* One request rate limit, a token bucket: @rate requests per second on
 * average (fractions allowed), @burst at once. A rate or burst of 0 is no
 * limit. */
typedef struct {
  double rate;
  guint burst;
} CoreRateLimit;

/* The request rate limits (core/ratelimit.h). Over one, a request gets 503
 * with a reason naming the limit and Retry-After. */
typedef struct {
  CoreRateLimit subscribe_per_source; /* initial SUBSCRIBEs per source IP (IPv6: /64) */
  CoreRateLimit subscribe_per_aor;    /* initial SUBSCRIBEs per target AOR and package */
  CoreRateLimit publish_per_user;     /* PUBLISHes per authenticated user */
  CoreRateLimit register_per_user;    /* REGISTERs per authenticated user */
  CoreRateLimit message_per_user;     /* MESSAGEs per authenticated sender */
  guint max_entries;                  /* buckets remembered per limit */
} CoreRateLimits;

typedef struct {
  const char *const *domains; /* served domains, NULL-terminated */
  guint32 default_expires;    /* granted when the SUBSCRIBE has no Expires */
  guint32 max_expires;        /* longer requests are granted this */
  guint32 min_expires;        /* shorter (non-zero) requests get 423 */
  guint notify_window;        /* NOTIFYs in flight at once during fan-out */
  /* Least seconds between two NOTIFYs of one subscription (RFC 6072 6.10,
   * 7.12); 0: no limit. Changes meanwhile coalesce into one NOTIFY with the
   * newest state. Needs CorePort.schedule; without it there is no limit. */
  guint32 min_notify_interval;
  /* Digest authentication of credential operations (RFC 6072 7.6, 7.9). */
  guint32 nonce_lifetime;         /* seconds a nonce is good for */
  CoreDigestLimits digest_limits; /* failed-attempt limiting */
  /* Deployment style 3 (RFC 6072 section 3): a known user who authenticates
   * a credential SUBSCRIBE and has no credential gets one made by the
   * server (section 10.6 profile, key held by the server). */
  gboolean generate_credentials;
  guint generate_key_bits; /* 2048 or 3072 */
  guint generate_days;     /* 1 .. 365 */
  /* Registrar (RFC 3261 10.3): the expiry of a Contact without one, the
   * least a non-zero one may ask (423 below), the most granted (longer
   * asks are clamped), and the bindings one AOR may hold. */
  guint32 reg_default_expires;
  guint32 reg_min_expires;
  guint32 reg_max_expires;
  guint reg_max_bindings; /* 1 .. 64 (the store's limit) */
  /* MESSAGE relay: the largest body relayed (413 above). */
  gsize message_max_body;
  CoreRateLimits rate_limits;
} CoreConfig;

/* Defaults: 86400, 86400, 60, 200, 60; nonces live 300 s; the digest limits'
 * defaults; no generation (2048-bit keys, 365 days when enabled); bindings
 * 3600 s by default, 60 s at least, 86400 s at most, 16 per AOR; MESSAGE
 * bodies up to 65536 bytes; rate limits (per second/burst) SUBSCRIBE 200/2000
 * per source and 50/1000 per AOR, PUBLISH and REGISTER 1/30 per user, MESSAGE
 * 10/100 per user, 10000 buckets per limit. */
void core_config_init_defaults(CoreConfig *cfg);

/* What the core needs of an incoming initial SUBSCRIBE. Strings are only
 * borrowed for the duration of the call. */
typedef struct {
  const char *event;       /* Event package token, NULL when absent */
  const char *request_uri; /* as received */
  const char *to_uri;      /* To addr-spec */
  const char *from_uri;    /* From addr-spec */
  gboolean has_expires;
  guint32 expires;
  const char *accept;     /* all Accept values joined by ", ", NULL when absent */
  const char *flow_token; /* the edge flow it came through, NULL if none */
  /* That flow's TLS facts, from the edge (NULL/FALSE when unknown). direct:
   * the request came straight from the UA over this TLS flow (exactly one Via
   * below the edge's), the precondition for credential operations. */
  gboolean direct;
  const char *peer_addr;
  const char *tls_version;
  const char *cipher_suite;
  const char *sni;
  GBytes *peer_cert_der;
  /* Authorization header values (NULL-terminated), NULL when none. */
  const char *const *authorization;
} CoreSubscribeInfo;

/* What the core needs of a PUBLISH (RFC 3903). Borrowed for the call. */
typedef struct {
  const char *event;
  const char *request_uri;
  const char *to_uri;
  const char *from_uri;
  gboolean has_expires;
  guint32 expires;
  const char *if_match;                  /* SIP-If-Match, NULL when absent */
  const char *content_type;              /* full value with parameters, NULL when absent */
  const char *content_transfer_encoding; /* NULL when absent */
  const char *content_disposition;       /* full value with parameters, NULL when absent */
  GBytes *body;                          /* NULL when there is none */
  const char *const *authorization;
  /* The flow facts, as in CoreSubscribeInfo. */
  gboolean direct;
  const char *peer_addr;
} CorePublishInfo;

/* One Contact of a REGISTER (RFC 3261 10.2, RFC 5626 5.2). Borrowed. */
typedef struct {
  const char *uri;      /* the addr-spec as sent; "*" for the wildcard */
  gboolean has_expires; /* an expires parameter was given */
  guint32 expires;
  float q;              /* 0..1, -1 when absent */
  const char *instance; /* +sip.instance value without its quotes ("<urn:...>"), or NULL */
  guint32 reg_id;       /* reg-id, 0 when absent */
} CoreContact;

/* What the registrar needs of a REGISTER. Borrowed for the call. */
typedef struct {
  const char *request_uri;
  const char *to_uri; /* the AOR being registered */
  const char *from_uri;
  const char *call_id;
  guint32 cseq;
  gboolean has_expires; /* an Expires header */
  guint32 expires;
  const CoreContact *contacts; /* none: a query for the current bindings */
  guint n_contacts;
  gboolean outbound; /* Supported: outbound (RFC 5626) */
  const char *const *authorization;
  /* The flow facts, as in CoreSubscribeInfo; bindings remember the flow. */
  const char *flow_token;
  gboolean direct;
  const char *peer_addr;
} CoreRegisterInfo;

/* What the relay needs of a MESSAGE (RFC 3428). Borrowed for the call. */
typedef struct {
  const char *request_uri; /* the callee */
  const char *to_uri;
  const char *from_uri;                  /* must be the authenticated user */
  const char *content_type;              /* full value, NULL when absent */
  const char *content_disposition;       /* full value, NULL when absent */
  const char *content_transfer_encoding; /* NULL when absent */
  GBytes *body;                          /* NULL when there is none */
  const char *const *authorization;
  const char *flow_token;
  gboolean direct;
  const char *peer_addr;
} CoreMessageInfo;

/* One MESSAGE the core asks the server to send to one binding. Borrowed
 * for the call; the body and its headers go out byte for byte. */
typedef struct {
  const char *request_uri; /* the binding's Contact */
  const char *flow_token;  /* the flow to send it over, never NULL */
  const char *from_uri;    /* the sender's AOR */
  const char *to_uri;      /* the callee's AOR */
  const char *content_type;
  const char *content_disposition;
  const char *content_transfer_encoding;
  GBytes *body; /* never NULL; may be empty */
} CoreRelayRequest;

/* One answer to a request. Zero/NULL fields are left out. */
typedef struct {
  guint status;
  const char *phrase;                  /* says what was wrong, for errors */
  guint32 expires;                     /* 2xx to SUBSCRIBE: granted expiry (Expires header) */
  guint32 min_expires;                 /* 423: Min-Expires header */
  const char *accept;                  /* 406/415: Accept header */
  const char *allow_events;            /* 489: Allow-Events header */
  const char *const *www_authenticate; /* 401: one header per value, in order */
  guint32 retry_after;                 /* Retry-After header when non-zero */
  const char *etag;                    /* 2xx to PUBLISH: SIP-ETag */
  /* 2xx to REGISTER: every current binding, one Contact value each
   * ("<uri>;expires=N[;q=..][;+sip.instance=\"..\";reg-id=N]"), NULL-terminated. */
  const char *const *contacts;
  gboolean date;         /* add a Date header (RFC 3261 20.17; UAs learn the time) */
  const char *require;   /* Require header, e.g. "outbound" (RFC 5626 6) */
  const char *supported; /* Supported header */
} CoreResponse;

typedef struct {
  const char *event; /* Event header of the NOTIFY */
  CoreSubstate state;
  guint32 expires;          /* remaining seconds, for active/pending */
  const char *reason;       /* for terminated: "deactivated", "timeout", ... */
  const char *content_type; /* NULL: no body at all */
  const char *content_disposition;
  GBytes *body; /* may be empty (zero length) */
} CoreNotify;

typedef struct {
  /* Answers the request identified by @txn (opaque to the core). */
  void (*respond)(gpointer txn, const CoreResponse *resp, gpointer user_data);
  /* Sends a NOTIFY in subscription @sub. Must not block. The server calls
   * core_notify_done() once for every notify, when its transaction ends.
   * Everything in @notify is borrowed for the call (g_bytes_ref() the body
   * to keep it). body is never NULL; when it is empty, content_type and
   * content_disposition are NULL (see core.c for why). */
  void (*notify)(gpointer sub, const CoreNotify *notify, gpointer user_data);
  /* Wall-clock time, unix seconds. */
  gint64 (*now)(gpointer user_data);
  /* Optional (both or neither). Calls @cb(@data) once, from the main loop,
   * @delay_ms from now, unless cancelled first; never from within schedule.
   * Returns a non-NULL handle. cancel is only called for a handle whose
   * callback has not yet run, and stops it. */
  gpointer (*schedule)(guint delay_ms, void (*cb)(gpointer data), gpointer data,
                       gpointer user_data);
  void (*cancel)(gpointer handle, gpointer user_data);
  /* Optional. Sends @req as a new MESSAGE over its flow, signed for its
   * From by the identity stage. The server calls core_relay_done(@leg)
   * exactly once, later (never from within relay), with the final status
   * (430 or 408 when the flow or the peer is gone). Without relay, MESSAGE
   * is answered 501. */
  void (*relay)(gpointer leg, const CoreRelayRequest *req, gpointer user_data);
} CorePort;

typedef struct _CoreService CoreService;

CoreService *core_service_new(const CoreConfig *cfg, StoreDb *store, const CorePort *port,
                              gpointer port_data);
void core_service_free(CoreService *svc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CoreService, core_service_free)

/* An initial SUBSCRIBE arrived. @txn identifies the request for respond;
 * @sub identifies the subscription for notify, and stays valid until the
 * server calls core_subscription_gone(). If the core rejects the request it
 * never uses @sub. */
void core_subscribe(CoreService *svc, gpointer txn, gpointer sub, const CoreSubscribeInfo *info);

/* The server answered a refresh itself; @expires is what it granted. */
void core_subscription_refreshed(CoreService *svc, gpointer sub, guint32 expires);

/* The subscription ended (unsubscribed, expired, flow failed). The core
 * forgets @sub and never uses it again. Unknown @sub is ignored. */
void core_subscription_gone(CoreService *svc, gpointer sub);

/* A NOTIFY sent through port->notify finished with final @status (or 408/
 * 430/503 for local failures). Lets the fan-out scheduler send the next. */
void core_notify_done(CoreService *svc, gpointer sub, guint status);

/* A PUBLISH arrived (RFC 3903, RFC 6072 7.8 and 7.9). Answered through
 * port->respond before the call returns; a 2xx only after the store has
 * durably committed the change. Subscribers of the AOR are notified. */
void core_publish(CoreService *svc, gpointer txn, const CorePublishInfo *info);

/* A REGISTER arrived (RFC 3261 10.3, RFC 5626 6). Answered through
 * port->respond before the call returns: 401/403 (digest: only the AOR
 * itself may register), 404 (a domain or user we do not serve), 400
 * (malformed, or a Contact, Call-ID or instance the store refuses as too
 * long), 423, 439 (outbound asked for through a proxy: we have no Path),
 * 500 (out-of-order CSeq; store failure), or 200 with every current
 * binding and a Date. A 2xx leaves only after the store committed. */
void core_register(CoreService *svc, gpointer txn, const CoreRegisterInfo *info);

/* A MESSAGE arrived for a local user (RFC 3428). Refusals are answered
 * before the call returns (401/403 digest, 403 From not the authenticated
 * user, 404 unknown user or domain, 413 too large, 480 no current binding,
 * 501 without relay). Otherwise the core relays it to every current binding
 * and answers @txn LATER, through port->respond, with the best final
 * response of the legs (RFC 3261 16.7: any 2xx, else a 6xx, else the lowest
 * class; legs whose flow is gone count as 480). The server keeps @txn
 * valid until then. */
void core_message(CoreService *svc, gpointer txn, const CoreMessageInfo *info);

/* A MESSAGE leg sent through port->relay finished with final @status and
 * its reason @phrase (may be NULL). */
void core_relay_done(CoreService *svc, gpointer leg, guint status, const char *phrase);

/* The credential of @aor changed or was removed (a change found in the
 * store's change log): NOTIFY every subscriber of both packages, paced by
 * the notify window. A subscriber that already has (or is about to get)
 * this very state hears nothing; a removed credential ends credential
 * subscriptions with reason=deactivated. */
void core_cert_changed(CoreService *svc, const char *aor);

/* The user @aor was changed or removed (password, flags): credential
 * subscriptions of that AOR end with reason=deactivated, so that a client
 * holding an old secret must authenticate again (RFC 6072 7.7). */
void core_user_changed(CoreService *svc, const char *aor);

/* What the core counts, for `sipcred stats` and the metrics endpoint.
 * Totals count since the start; the others are now. */
typedef struct {
  guint subscriptions_certificate; /* live subscriptions by package */
  guint subscriptions_credential;
  guint notifies_in_flight; /* sent, final response not yet in */
  guint fanout_queued;      /* waiting for a slot in the window */
  guint64 notifies_sent;
  guint64 notifies_failed;    /* final response >= 300, or a local failure */
  guint64 notifies_coalesced; /* a newer state replaced one not yet sent */
  guint64 auth_failures;      /* wrong, replayed or unknown digest credentials */
  guint64 auth_lockouts;      /* requests refused by the failed-attempt limit */
  guint64 messages_relayed;   /* MESSAGEs sent on to at least one binding */
  guint64 rate_limited;       /* requests refused by a rate limit (503) */
} CoreStats;

void core_service_get_stats(CoreService *svc, CoreStats *out);

/* Takes the limits of @cfg (expiries, fan-out window and interval, nonce
 * lifetime, failed-attempt limits, registrar and message limits, rate
 * limits) from now on. The served domains and credential generation stay as they were
 * (they need a restart); live subscriptions keep what they were granted. */
void core_service_reload(CoreService *svc, const CoreConfig *cfg);

/* Number of live subscriptions (all packages). */
guint core_service_get_n_subscriptions(CoreService *svc);

/* Canonical AOR "sip:user@host" for a sip:/sips: URI, optionally in <>:
 * scheme folded to sip, host lower-cased, parameters and headers dropped,
 * unreserved %-escapes in the user part decoded. */
char *core_aor_canonicalize(const char *uri, GError **error);

/* Like core_aor_canonicalize(), and the host must be a served domain. */
char *core_aor_canonicalize_served(const char *const *domains, const char *uri, GError **error);

G_END_DECLS
