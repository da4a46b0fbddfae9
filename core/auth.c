#define G_LOG_DOMAIN "sipcred-auth"

/* core/auth: who may run a credential operation (RFC 6072 7.6, 7.9, 10.4).
 *
 * The digest exchange itself is digest.c; this file applies it to a request
 * and adds the rest of the policy: direct TLS, and the authenticated user
 * being the AOR the request is about. Unknown users and wrong passwords get
 * the same answer, so the answers do not tell which accounts exist.
 */

#include "core/core-service.h"

#include <gnutls/crypto.h>
#include <string.h>

void
core_auth_init(CoreService *svc)
{
  guint8 secret[32];

  /* A fresh secret per start: nonces from before a restart fail their HMAC
   * and the client is simply challenged again. */
  if (gnutls_rnd(GNUTLS_RND_KEY, secret, sizeof secret) < 0)
    g_error("cannot get random bytes for the digest nonce secret");
  svc->digests =
      g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)core_digest_free);
  for (guint i = 0; svc->domains[i] != NULL; i++) {
    CoreDigest *digest = core_digest_new(svc->domains[i], secret, sizeof secret,
                                         MAX(svc->cfg.nonce_lifetime, 1), &svc->cfg.digest_limits);
    g_hash_table_insert(svc->digests, g_strdup(svc->domains[i]), digest);
  }
  explicit_bzero(secret, sizeof secret);
}

void
core_auth_reload(CoreService *svc)
{
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, svc->digests);
  while (g_hash_table_iter_next(&iter, NULL, &value))
    core_digest_set_limits(value, MAX(svc->cfg.nonce_lifetime, 1), &svc->cfg.digest_limits);
}

void
core_auth_clear(CoreService *svc)
{
  g_clear_pointer(&svc->digests, g_hash_table_unref);
}

/* The parsed Digest credentials of the Authorization header whose
 * realm is @realm, or NULL. *@malformed is set when a Digest value for some
 * realm does not parse at all. */
static CoreDigestCredentials *
core_auth_find_credentials(const char *const *authorization, const char *realm,
                           gboolean *malformed)
{
  *malformed = FALSE;
  for (guint i = 0; authorization != NULL && authorization[i] != NULL; i++) {
    const char *value = authorization[i];
    while (*value == ' ' || *value == '\t')
      value++;
    if (g_ascii_strncasecmp(value, "Digest", 6) != 0 || (value[6] != ' ' && value[6] != '\t'))
      continue; /* another scheme: not ours to judge */
    g_autoptr(GError) error = NULL;
    CoreDigestCredentials *creds = NULL;
    if (!core_digest_parse(value, &creds, &error)) {
      *malformed = TRUE;
      continue;
    }
    const char *got = core_digest_credentials_get_realm(creds);
    if (got != NULL && g_ascii_strcasecmp(got, realm) == 0)
      return creds;
    core_digest_credentials_free(creds);
  }
  return NULL;
}

static void
core_auth_challenge(CoreService *svc, gpointer txn, CoreDigest *digest, gboolean stale,
                    const char *phrase)
{
  g_auto(GStrv) challenges = core_digest_challenges(digest, svc->port.now(svc->port_data), stale);
  CoreResponse resp = {
      .status = 401,
      .phrase = phrase,
      .www_authenticate = (const char *const *)challenges,
  };
  core_respond(svc, txn, &resp);
}

/* The address part of "IP:PORT" or "[IPv6]:PORT": failures count per host,
 * not per connection (every new connection has a new port). */
static char *
core_auth_source_ip(const char *peer_addr)
{
  if (peer_addr == NULL)
    return NULL;
  if (peer_addr[0] == '[') {
    const char *end = strchr(peer_addr, ']');
    return end != NULL ? g_strndup(peer_addr + 1, end - peer_addr - 1) : g_strdup(peer_addr);
  }
  const char *colon = strrchr(peer_addr, ':');
  if (colon != NULL && strchr(peer_addr, ':') == colon)
    return g_strndup(peer_addr, colon - peer_addr);
  return g_strdup(peer_addr);
}

/* "sip:" user "@" realm: the AOR a digest username stands for. NULL when the
 * username cannot be a user part. */
static char *
core_auth_user_aor(const char *username, const char *realm)
{
  if (username == NULL || *username == '\0' || strlen(username) > 128)
    return NULL;
  for (const char *p = username; *p != '\0'; p++) {
    if ((guchar)*p <= 0x20 || *p == '@' || *p == ':' || *p == ';' || *p == '?' || *p == '>' ||
        *p == '<' || *p == '"' || (guchar)*p >= 0x7f)
      return NULL;
  }
  g_autofree char *uri = g_strdup_printf("sip:%s@%s", username, realm);
  return core_aor_canonicalize(uri, NULL);
}

char *
core_auth_authenticate(CoreService *svc, gpointer txn, const char *method, const char *request_uri,
                       const char *realm, const char *peer_addr, const char *const *authorization,
                       StoreUser **user_out)
{
  CoreDigest *digest = g_hash_table_lookup(svc->digests, realm);
  if (digest == NULL) {
    /* Callers pass a served domain, so this cannot happen. */
    core_respond_error(svc, txn, 500, "No digest realm for the domain");
    return NULL;
  }
  gboolean malformed = FALSE;
  g_autoptr(CoreDigestCredentials) creds =
      core_auth_find_credentials(authorization, realm, &malformed);
  if (creds == NULL) {
    if (malformed) {
      core_respond_error(svc, txn, 400, "Malformed Authorization header");
      return NULL;
    }
    core_auth_challenge(svc, txn, digest, FALSE, "Unauthorized");
    return NULL;
  }

  const char *username = core_digest_credentials_get_username(creds);
  gint64 now = svc->port.now(svc->port_data);
  guint retry_after = 0;
  g_autofree char *source = core_auth_source_ip(peer_addr);
  if (!core_digest_may_try(digest, source, username, now, &retry_after)) {
    svc->stats.auth_lockouts++;
    CoreResponse resp = {
        .status = 403,
        .phrase = "Too many failed attempts; try again later",
        .retry_after = MAX(retry_after, 1),
    };
    core_respond(svc, txn, &resp);
    return NULL;
  }

  g_autofree char *user_aor = core_auth_user_aor(username, realm);
  g_autoptr(StoreUser) user = NULL;
  g_autoptr(GError) error = NULL;
  if (user_aor != NULL) {
    user = store_user_get(svc->store, user_aor, &error);
    if (user == NULL && !g_error_matches(error, STORE_ERROR, STORE_ERROR_NOT_FOUND)) {
      g_warning("cannot read user %s: %s", user_aor, error->message);
      core_respond_error(svc, txn, 500, "Credential store unavailable");
      return NULL;
    }
    g_clear_error(&error);
  }
  const char *ha1 = NULL;
  if (user != NULL && (user->flags & STORE_USER_ENABLED) != 0)
    ha1 = core_digest_credentials_get_algorithm(creds) == CORE_DIGEST_ALGORITHM_SHA256
              ? user->ha1_sha256
              : user->ha1_md5;

  CoreDigestResult result =
      core_digest_check(digest, creds, method, request_uri, ha1, now, &error);
  switch (result) {
  case CORE_DIGEST_RESULT_OK:
    break;
  case CORE_DIGEST_RESULT_STALE:
    core_auth_challenge(svc, txn, digest, TRUE, "Nonce expired");
    return NULL;
  case CORE_DIGEST_RESULT_REPLAY:
    svc->stats.auth_failures++;
    g_message("%s in realm %s from %s: replayed digest credentials refused", method, realm,
              peer_addr ? peer_addr : "?");
    core_auth_challenge(svc, txn, digest, FALSE, "Replayed credentials");
    return NULL;
  case CORE_DIGEST_RESULT_BAD:
  default:
    /* The reason stays in the log: the answer must not tell an unknown user
     * from a wrong password. */
    g_message("%s in realm %s from %s: authentication failed: %s", method, realm,
              peer_addr ? peer_addr : "?", error ? error->message : "?");
    svc->stats.auth_failures++;
    core_digest_note_failure(digest, source, username, now);
    core_auth_challenge(svc, txn, digest, FALSE, "Authentication failed");
    return NULL;
  }
  core_digest_note_success(digest, username);
  if (user_out != NULL)
    *user_out = g_steal_pointer(&user);
  return g_steal_pointer(&user_aor);
}

gboolean
core_auth_authorize(CoreService *svc, gpointer txn, const char *method, const char *request_uri,
                    const char *aor, const char *to_uri, gboolean direct, const char *peer_addr,
                    const char *const *authorization, StoreUser **user_out)
{
  /* RFC 6072 7.5 and 7.8: a UA MUST connect directly over TLS; key material
   * never travels a path the service cannot vouch for, so no challenge is
   * offered on any other. */
  if (!direct) {
    g_info("%s for %s from %s refused: not a direct TLS connection", method, aor,
           peer_addr ? peer_addr : "?");
    core_respond_error(svc, txn, 403, "Credential operations need a direct TLS connection");
    return FALSE;
  }
  g_autoptr(StoreUser) user = NULL;
  g_autofree char *user_aor = core_auth_authenticate(
      svc, txn, method, request_uri, strrchr(aor, '@') + 1, peer_addr, authorization, &user);
  if (user_aor == NULL)
    return FALSE;

  /* Only the AOR itself may touch its credentials (7.6): the user, the
   * Request-URI and the To header must all name it. */
  g_autofree char *to_aor = to_uri ? core_aor_canonicalize(to_uri, NULL) : NULL;
  if (g_strcmp0(user_aor, aor) != 0 || g_strcmp0(to_aor, aor) != 0) {
    g_message("%s for %s refused: authenticated as %s, To %s", method, aor, user_aor,
              to_aor ? to_aor : "(invalid)");
    core_respond_error(svc, txn, 403, "Authenticated user may only act on its own AOR");
    return FALSE;
  }
  if (user_out != NULL)
    *user_out = g_steal_pointer(&user);
  return TRUE;
}
