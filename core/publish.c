#define G_LOG_DOMAIN "sipcred-publish"

/* core/publish: PUBLISH of the credential package (RFC 3903; RFC 6072 7.8
 * and 7.9).
 *
 * The stored credential is the published state and its store ETag is the
 * entity-tag, so a publication survives a restart and every conditional
 * write is one store transaction. A publication does not lapse at its
 * Expires: a credential lives until it is revoked or its certificate
 * expires, and the Expires we grant is capped at the certificate's notAfter
 * so that the UA refreshes before that. Fan-out happens right after the
 * commit; the change-log tail finds the same change later and, the state
 * being the same, notifies nobody twice.
 */

#include "core/core-service.h"

#include <string.h>

#include "core/credbody.h"
#include "identity/cert.h"

#define CORE_PUBLISH_EVENT "credential"

/* RFC 3261 20.11 dispositions a credential body may carry. An unknown one
 * is refused unless it says handling=optional, in which case the
 * Content-Type alone decides. */
static gboolean
core_publish_disposition_ok(const char *value)
{
  if (value == NULL)
    return TRUE;
  g_auto(GStrv) params = g_strsplit(value, ";", -1);
  g_autofree char *type = g_strstrip(g_strdup(params[0]));
  static const char *const known[] = {"signal", "render", "inline", "attachment", NULL};
  for (guint i = 0; known[i] != NULL; i++)
    if (g_ascii_strcasecmp(type, known[i]) == 0)
      return TRUE;
  for (guint i = 1; params[i] != NULL; i++) {
    g_autofree char *param = g_strstrip(g_strdup(params[i]));
    char *eq = strchr(param, '=');
    if (eq == NULL)
      continue;
    *eq = '\0';
    g_strstrip(param);
    g_autofree char *val = g_strstrip(g_strdup(eq + 1));
    if (g_ascii_strcasecmp(param, "handling") == 0 && g_ascii_strcasecmp(val, "optional") == 0)
      return TRUE;
  }
  return FALSE;
}

/* The Expires to grant: what was asked (or all of it), never past notAfter. */
static guint32
core_publish_grant(const CorePublishInfo *info, gint64 not_after, gint64 now)
{
  gint64 remaining = MAX(not_after - now, (gint64)1);
  gint64 granted = info->has_expires ? MIN((gint64)info->expires, remaining) : remaining;
  return (guint32)MIN(granted, (gint64)G_MAXUINT32);
}

static void
core_publish_store_failed(CoreService *svc, gpointer txn, const char *aor, const GError *error)
{
  if (g_error_matches(error, STORE_ERROR, STORE_ERROR_PRECONDITION)) {
    core_respond_error(svc, txn, 412, "Unknown or outdated SIP-If-Match entity-tag");
    return;
  }
  if (g_error_matches(error, STORE_ERROR, STORE_ERROR_KEY)) {
    g_warning("PUBLISH for %s: %s", aor, error->message);
    core_respond_error(svc, txn, 403,
                       "This service holds no unencrypted private keys; encrypt the PKCS#8");
    return;
  }
  if (g_error_matches(error, STORE_ERROR, STORE_ERROR_INVALID)) {
    g_message("PUBLISH for %s refused by the store: %s", aor, error->message);
    core_respond_error(svc, txn, 400, "Credential not storable");
    return;
  }
  g_autofree char *what = g_strdup_printf("PUBLISH for %s not stored", aor);
  if (core_respond_if_store_full(svc, txn, what, error))
    return;
  g_warning("PUBLISH for %s not stored: %s", aor, error->message);
  core_respond_error(svc, txn, 500, "Credential store unavailable");
}

static void
core_publish_ok(CoreService *svc, gpointer txn, guint32 expires, const char *etag)
{
  CoreResponse resp = {.status = 200, .phrase = "OK", .expires = expires, .etag = etag};
  core_respond(svc, txn, &resp);
}

/* No body: a refresh (SIP-If-Match) or a removal (Expires: 0). */
static void
core_publish_bodyless(CoreService *svc, gpointer txn, const CorePublishInfo *info, const char *aor,
                      gint64 now)
{
  g_autoptr(GError) error = NULL;

  if (info->has_expires && info->expires == 0) {
    /* RFC 6072 7.9: revocation. RFC 3903 wants SIP-If-Match on a removal;
     * 7.9 does not, and the user is authenticated, so it may be absent. */
    if (!store_cred_delete_if(svc->store, aor, info->if_match, &error)) {
      if (g_error_matches(error, STORE_ERROR, STORE_ERROR_NOT_FOUND)) {
        /* Already gone: the state the client asked for (a retried removal). */
        core_publish_ok(svc, txn, 0, NULL);
        return;
      }
      core_publish_store_failed(svc, txn, aor, error);
      return;
    }
    core_publish_ok(svc, txn, 0, NULL);
    g_message("%s revoked its credential", aor);
    core_aor_state_changed(svc, aor);
    return;
  }
  if (info->if_match == NULL) {
    core_respond_error(svc, txn, 400, "PUBLISH without a body needs SIP-If-Match");
    return;
  }
  if (info->has_expires && core_refuse_brief_expires(svc, txn, info->expires))
    return;
  g_autofree char *etag = NULL;
  if (!store_cred_refresh(svc->store, aor, info->if_match, &etag, &error)) {
    core_publish_store_failed(svc, txn, aor, error);
    return;
  }
  g_autoptr(StoreCred) cred = core_cred_read(svc, aor, NULL);
  gint64 not_after = cred != NULL ? cred->not_after : now + 1;
  core_publish_ok(svc, txn, core_publish_grant(info, not_after, now), etag);
  g_info("%s refreshed its publication", aor);
}

void
core_publish(CoreService *svc, gpointer txn, const CorePublishInfo *info)
{
  g_return_if_fail(svc != NULL);
  g_return_if_fail(info != NULL);

  gsize len = 0;
  const char *token = core_event_token(info->event, &len);
  if (info->event == NULL) {
    /* RFC 3903 4.1: the Event header says what the state is. */
    core_respond_error(svc, txn, 400, "PUBLISH without an Event header");
    return;
  }
  if (token == NULL || len != strlen(CORE_PUBLISH_EVENT) ||
      memcmp(token, CORE_PUBLISH_EVENT, len) != 0) {
    CoreResponse resp = {.status = 489, .phrase = "Bad Event", .allow_events = CORE_PUBLISH_EVENT};
    core_respond(svc, txn, &resp);
    return;
  }

  g_autoptr(GError) error = NULL;
  g_autofree char *aor = core_aor_canonicalize_served(svc->cfg.domains, info->request_uri, &error);
  if (aor == NULL) {
    if (g_error_matches(error, CORE_ERROR, CORE_ERROR_NOT_SERVED))
      core_respond_error(svc, txn, 404, "Not a served domain");
    else
      core_respond_error(svc, txn, 400, "Request-URI is not a user AOR");
    return;
  }
  g_clear_error(&error);

  if (!core_auth_authorize(svc, txn, "PUBLISH", info->request_uri, aor, info->to_uri, info->direct,
                           info->peer_addr, info->authorization, NULL))
    return;
  /* After authentication (only the user spends its own tokens), before the
   * body is parsed or the store touched. */
  if (!core_limit_take(svc, txn, CORE_LIMIT_PUBLISH_USER, aor))
    return;

  gint64 now = svc->port.now(svc->port_data);
  gsize body_len = 0;
  const guint8 *body = info->body != NULL ? g_bytes_get_data(info->body, &body_len) : NULL;
  if (body_len == 0) {
    core_publish_bodyless(svc, txn, info, aor, now);
    return;
  }

  if (info->has_expires && info->expires == 0) {
    core_respond_error(svc, txn, 400, "Expires 0 removes a publication and takes no body");
    return;
  }
  if (info->has_expires && core_refuse_brief_expires(svc, txn, info->expires))
    return;
  if (!core_publish_disposition_ok(info->content_disposition)) {
    core_respond_error(svc, txn, 415, "Unsupported Content-Disposition");
    return;
  }
  if (info->content_type == NULL) {
    core_respond_error(svc, txn, 400, "Body without Content-Type");
    return;
  }

  g_autoptr(GBytes) cert_der = NULL;
  g_autoptr(GBytes) pkcs8 = NULL;
  if (!core_credbody_parse(info->content_type, info->content_transfer_encoding, body, body_len,
                           CORE_CREDBODY_PARSE_NONE, &cert_der, &pkcs8, &error)) {
    guint status = core_credbody_error_status(error);
    CoreResponse resp = {.status = status, .phrase = error->message};
    if (status == 415)
      resp.accept = "application/pkix-cert, multipart/mixed";
    core_respond(svc, txn, &resp);
    return;
  }
  g_clear_error(&error);

  gsize der_len = 0;
  const guint8 *der = g_bytes_get_data(cert_der, &der_len);
  g_autoptr(IdentCert) cert = ident_cert_new_from_data(der, der_len, &error);
  if (cert == NULL) {
    core_respond_error(svc, txn, 400, "Certificate part is not an X.509 certificate");
    return;
  }
  if (!ident_cert_check_publishable(cert, now, &error)) {
    g_message("PUBLISH for %s refused: %s", aor, error->message);
    core_respond_error(svc, txn, 400, error->message);
    return;
  }

  StoreKeyKind kind = STORE_KEY_NONE;
  g_autoptr(GBytes) key = NULL;
  if (pkcs8 != NULL) {
    gsize key_len = 0;
    const guint8 *key_data = g_bytes_get_data(pkcs8, &key_len);
    /* Encrypted with the user's passphrase (RFC 6072 10.5): opaque to us.
     * Otherwise it must be the certificate's key, held by the server. */
    key = ident_pkcs8_check_encrypted(key_data, key_len, NULL, NULL);
    if (key != NULL) {
      kind = STORE_KEY_USER_ENCRYPTED;
    } else {
      key = ident_cert_match_private_key(cert, key_data, key_len, NULL);
      if (key == NULL) {
        core_respond_error(svc, txn, 400,
                           "PKCS#8 part is neither PBES2-encrypted nor the certificate's key");
        return;
      }
      kind = STORE_KEY_SERVER_HELD;
    }
  }

  g_autofree char *etag = NULL;
  if (!store_cred_put_if(svc->store, aor, info->if_match, ident_cert_get_der(cert),
                         ident_cert_get_not_before(cert), ident_cert_get_not_after(cert), kind,
                         key, &etag, &error)) {
    core_publish_store_failed(svc, txn, aor, error);
    return;
  }
  /* Committed: now the 2xx may leave. */
  core_publish_ok(svc, txn, core_publish_grant(info, ident_cert_get_not_after(cert), now), etag);
  g_message("%s published a %s", aor,
            kind == STORE_KEY_NONE             ? "certificate"
            : kind == STORE_KEY_USER_ENCRYPTED ? "credential (key encrypted by the user)"
                                               : "credential (key held by the server)");
  core_aor_state_changed(svc, aor);
}
