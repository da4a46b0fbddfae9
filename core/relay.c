/* core/relay: page-mode MESSAGE between local users (RFC 3428), the
 * encrypted-IM case of RFC 6072 section 9.1. The sender authenticates with
 * digest as the AOR in its From; the MESSAGE goes, body and content headers
 * untouched, to every current binding of the callee over the flow that
 * binding registered on; the edge signs each copy for the sender's domain
 * (RFC 4474). The best final answer of the copies goes back (RFC 3261
 * 16.7). */
#define G_LOG_DOMAIN "sipcred-core"

#include <string.h>

#include "core/core-service.h"

/* One MESSAGE being relayed: the sender's transaction and the copies out. */
typedef struct {
  gpointer txn;
  guint pending;
  guint best; /* 0 until a copy answered */
  gboolean best_synthetic;
  char *best_phrase;
} CoreRelay;

/* One copy; the pointer is the leg handle the port reports on. */
typedef struct {
  CoreRelay *relay;
} CoreRelayLeg;

static void
core_relay_free(CoreRelay *relay)
{
  g_free(relay->best_phrase);
  g_free(relay);
}

static void
core_relay_leg_free(gpointer p)
{
  CoreRelayLeg *leg = p;
  if (--leg->relay->pending == 0)
    core_relay_free(leg->relay);
  g_free(leg);
}

void
core_relay_init(CoreService *svc)
{
  /* Freeing a leg (at service end) drops its relay with the last one; the
   * sender's transaction dies with the server's stack, unanswered. */
  svc->relay_legs =
      g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, core_relay_leg_free);
}

void
core_relay_clear(CoreService *svc)
{
  g_clear_pointer(&svc->relay_legs, g_hash_table_destroy);
}

/* RFC 3261 16.7: any 2xx; else a 6xx; else the lowest class. Lower wins.
 * Within 4xx a device's own answer beats the 480 we make up for a
 * connection that is gone (@synthetic). */
static guint
core_relay_rank(guint status, gboolean synthetic)
{
  switch (status / 100) {
  case 2:
    return 0;
  case 6:
    return 2;
  case 3:
    return 4;
  case 4:
    return synthetic ? 7 : 6;
  default:
    return 8;
  }
}

/* The bindings of @aor a MESSAGE can reach now: unexpired, on a flow. */
static GPtrArray *
core_relay_targets(CoreService *svc, const char *aor, gint64 now, GError **error)
{
  GPtrArray *out = core_registrar_current_bindings(svc, aor, now, error);
  for (guint i = out != NULL ? out->len : 0; i > 0; i--) {
    StoreBinding *b = g_ptr_array_index(out, i - 1);
    if (b->flow_token == NULL || *b->flow_token == '\0')
      g_ptr_array_remove_index(out, i - 1);
  }
  return out;
}

void
core_message(CoreService *svc, gpointer txn, const CoreMessageInfo *info)
{
  g_autoptr(GError) error = NULL;

  g_return_if_fail(svc != NULL && info != NULL);
  if (svc->port.relay == NULL) {
    core_respond_error(svc, txn, 501, "MESSAGE relay not available");
    return;
  }
  g_autofree char *callee =
      info->request_uri ? core_aor_canonicalize(info->request_uri, &error) : NULL;
  if (callee == NULL) {
    core_respond_error(svc, txn, 400, "Request-URI is not a sip: or sips: AOR");
    return;
  }
  g_autofree char *callee_served =
      core_aor_canonicalize_served((const char *const *)svc->domains, callee, NULL);
  if (callee_served == NULL) {
    core_respond_error(svc, txn, 404, "Not a user of a domain served here");
    return;
  }
  gsize body_len = info->body ? g_bytes_get_size(info->body) : 0;
  if (body_len > svc->cfg.message_max_body) {
    g_autofree char *phrase = g_strdup_printf(
        "Message body over the %" G_GSIZE_FORMAT "-byte limit", svc->cfg.message_max_body);
    core_respond_error(svc, txn, 413, phrase);
    return;
  }
  g_autofree char *sender =
      info->from_uri
          ? core_aor_canonicalize_served((const char *const *)svc->domains, info->from_uri, NULL)
          : NULL;
  if (sender == NULL) {
    core_respond_error(svc, txn, 403, "From is not a user of a domain served here");
    return;
  }
  g_autofree char *user_aor =
      core_auth_authenticate(svc, txn, "MESSAGE", info->request_uri, strrchr(sender, '@') + 1,
                             info->peer_addr, info->authorization, NULL);
  if (user_aor == NULL)
    return;
  if (g_strcmp0(user_aor, sender) != 0) {
    g_message("MESSAGE from %s refused: authenticated as %s", sender, user_aor);
    core_respond_error(svc, txn, 403, "From does not match the authenticated user");
    return;
  }
  if (!core_limit_take(svc, txn, CORE_LIMIT_MESSAGE_USER, sender))
    return;

  g_autoptr(StoreUser) user = store_user_get(svc->store, callee, &error);
  if (user == NULL) {
    if (g_error_matches(error, STORE_ERROR, STORE_ERROR_NOT_FOUND)) {
      core_respond_error(svc, txn, 404, "No such user");
    } else {
      g_warning("cannot read user %s: %s", callee, error->message);
      core_respond_error(svc, txn, 500, "User store unavailable");
    }
    return;
  }
  gint64 now = svc->port.now(svc->port_data);
  g_autoptr(GPtrArray) targets = core_relay_targets(svc, callee, now, &error);
  if (targets == NULL) {
    g_warning("cannot read the bindings of %s: %s", callee, error->message);
    core_respond_error(svc, txn, 500, "Registration store unavailable");
    return;
  }
  if (targets->len == 0) {
    core_respond_error(svc, txn, 480, "Not registered");
    return;
  }

  CoreRelay *relay = g_new0(CoreRelay, 1);
  relay->txn = txn;
  relay->pending = targets->len;
  g_autoptr(GBytes) empty = g_bytes_new_static("", 0);
  /* Every leg is registered before the first is sent: the port reports
   * later, but keep the count whole whatever it does. */
  g_autoptr(GPtrArray) legs = g_ptr_array_new();
  for (guint i = 0; i < targets->len; i++) {
    CoreRelayLeg *leg = g_new0(CoreRelayLeg, 1);
    leg->relay = relay;
    g_hash_table_add(svc->relay_legs, leg);
    g_ptr_array_add(legs, leg);
  }
  g_info("MESSAGE from %s to %s: relayed to %u binding(s)", sender, callee, targets->len);
  svc->stats.messages_relayed++;
  for (guint i = 0; i < targets->len; i++) {
    StoreBinding *b = g_ptr_array_index(targets, i);
    CoreRelayRequest req = {
        .request_uri = b->contact,
        .flow_token = b->flow_token,
        .from_uri = sender,
        .to_uri = callee,
        .content_type = info->content_type,
        .content_disposition = info->content_disposition,
        .content_transfer_encoding = info->content_transfer_encoding,
        .body = info->body ? info->body : empty,
    };
    svc->port.relay(g_ptr_array_index(legs, i), &req, svc->port_data);
  }
}

void
core_relay_done(CoreService *svc, gpointer legp, guint status, const char *phrase)
{
  g_return_if_fail(svc != NULL);
  if (!g_hash_table_steal(svc->relay_legs, legp))
    return; /* unknown or already reported */
  CoreRelayLeg *leg = legp;
  CoreRelay *relay = leg->relay;

  /* 430: the edge found the binding's flow gone (the device went away or
   * the server restarted); for the sender that is "not reachable now". */
  gboolean synthetic = status == 430;
  if (synthetic) {
    status = 480;
    phrase = "Not reachable (its connection is gone)";
  }
  if (relay->best == 0 ||
      core_relay_rank(status, synthetic) < core_relay_rank(relay->best, relay->best_synthetic)) {
    relay->best = status;
    relay->best_synthetic = synthetic;
    g_free(relay->best_phrase);
    relay->best_phrase = g_strdup(phrase);
  }
  gboolean last = relay->pending == 1;
  if (last) {
    CoreResponse resp = {.status = relay->best, .phrase = relay->best_phrase};
    core_respond(svc, relay->txn, &resp);
  }
  core_relay_leg_free(leg); /* frees the relay with the last leg */
}
