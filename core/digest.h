/* core digest: HTTP Digest authentication (RFC 7616, RFC 8760 for SIP) on the
 * server side, as a pure module: no I/O, no nua, no clock of its own.
 *
 * Sofia's auth_module is not used (see shared/DESIGN.md): it accepts replayed
 * credentials, ignores the digest uri and only knows MD5. Here:
 * - challenges offer SHA-256 first, then MD5, both with qop=auth;
 * - nonces are stateless: issue time, random bytes and an HMAC-SHA256 under the
 *   server's secret, so any nonce we did not make is refused and an expired one
 *   that we did make gets stale=true;
 * - the nonce count is tracked per nonce: an nc not above the highest seen is
 *   a replay;
 * - failed attempts are limited per source address and per user.
 *
 * Times are unix seconds, given by the caller. Secrets (the HMAC key, HA1,
 * responses, nonces) are never logged.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define CORE_DIGEST_ERROR (core_digest_error_quark())
GQuark core_digest_error_quark(void);

typedef enum {
  CORE_DIGEST_ERROR_MALFORMED, /* the Authorization value does not parse */
  CORE_DIGEST_ERROR_REFUSED,   /* it parses but is not acceptable (see message) */
} CoreDigestError;

typedef enum {
  CORE_DIGEST_ALGORITHM_MD5,
  CORE_DIGEST_ALGORITHM_SHA256,
} CoreDigestAlgorithm;

typedef enum {
  CORE_DIGEST_RESULT_OK,     /* authenticated */
  CORE_DIGEST_RESULT_STALE,  /* right password, expired nonce: challenge with stale=true */
  CORE_DIGEST_RESULT_BAD,    /* wrong or unacceptable credentials */
  CORE_DIGEST_RESULT_REPLAY, /* right digest, but this nonce count was already used */
} CoreDigestResult;

/* Longest Authorization value core_digest_parse() reads. */
#define CORE_DIGEST_MAX_INPUT 4096
/* Longest single parameter value (after unquoting). */
#define CORE_DIGEST_MAX_PARAM 1024

/* Failed-attempt limiting. A key (source address or user name) may fail
 * free_failures times; each further failure locks it out for base_delay_s,
 * doubling per failure up to max_delay_s. A key that has not failed for
 * forget_after_s starts afresh. At most max_entries keys of each kind are
 * remembered; when full, the one whose last failure is oldest is forgotten. */
typedef struct {
  guint free_failures;
  guint base_delay_s;
  guint max_delay_s;
  guint forget_after_s;
  guint max_entries;
  /* Nonces whose count is remembered at once (see core_digest_check). */
  guint max_nonces;
} CoreDigestLimits;

/* Defaults: 5 free failures, 2 s doubling up to 900 s, forgotten after
 * 3600 s, 10000 keys of each kind, 65536 nonces. */
void core_digest_limits_init_defaults(CoreDigestLimits *limits);

typedef struct _CoreDigest CoreDigest;
typedef struct _CoreDigestCredentials CoreDigestCredentials;

/* @realm is the served domain. @secret (at least 16 bytes) keys the nonce
 * HMAC; it is copied. @limits may be NULL for the defaults. Returns NULL
 * (with a critical) only on programming errors: empty realm, short secret,
 * zero lifetime. */
CoreDigest *core_digest_new(const char *realm, const guint8 *secret, gsize secret_len,
                            guint nonce_lifetime_s, const CoreDigestLimits *limits);
void core_digest_free(CoreDigest *digest);

/* New nonce lifetime and limits (a configuration reload). The secret, the
 * nonces handed out and the failure records stay. */
void core_digest_set_limits(CoreDigest *digest, guint nonce_lifetime_s,
                            const CoreDigestLimits *limits);

/* The WWW-Authenticate (or Proxy-Authenticate) values to send, SHA-256
 * first, then MD5, NULL-terminated; both share one fresh nonce. */
char **core_digest_challenges(CoreDigest *digest, gint64 now, gboolean stale);

/* A fresh nonce issued at @now, as the challenges carry it. */
char *core_digest_nonce_new(CoreDigest *digest, gint64 now);

/* Parses the value of an Authorization header with the Digest scheme:
 * auth-params separated by commas, values as tokens or quoted strings with
 * backslash escapes; parameter names compare case-insensitively, a duplicate
 * is refused, an unknown one is ignored. username, realm, nonce, uri and
 * response are required; algorithm must be MD5 (the default) or SHA-256.
 * Fails with CORE_DIGEST_ERROR_MALFORMED. */
gboolean core_digest_parse(const char *value, CoreDigestCredentials **out, GError **error);
void core_digest_credentials_free(CoreDigestCredentials *creds);
const char *core_digest_credentials_get_username(const CoreDigestCredentials *creds);
const char *core_digest_credentials_get_realm(const CoreDigestCredentials *creds);
/* The algorithm whose HA1 core_digest_check() wants. */
CoreDigestAlgorithm core_digest_credentials_get_algorithm(const CoreDigestCredentials *creds);

/* Checks parsed credentials for a request. @ha1_hex is the user's HA1 for
 * the credentials' algorithm, H(username ":" realm ":" password) in lower
 * hex. Checked: realm is ours, qop is auth with nc and cnonce, the nonce is
 * ours, the digest uri is the Request-URI (RFC 2617 section 3.2.2.5; see
 * digest.c for the one tolerance), opaque (when sent) is ours, the response
 * (compared in constant time), the nonce's age, and the nonce count. A
 * NULL @ha1_hex (unknown user) gives BAD. Sets @error
 * (CORE_DIGEST_ERROR_REFUSED, saying why) for every result but OK. */
CoreDigestResult core_digest_check(CoreDigest *digest, const CoreDigestCredentials *creds,
                                   const char *method, const char *request_uri,
                                   const char *ha1_hex, gint64 now, GError **error);

/* H(username ":" realm ":" password) in lower hex, as stored for a user. */
char *core_digest_ha1(CoreDigestAlgorithm algorithm, const char *username, const char *realm,
                      const char *password);
/* The response a client computes for qop=auth, in lower hex. NULL when
 * @ha1_hex is not hex of the algorithm's length. */
char *core_digest_response(CoreDigestAlgorithm algorithm, const char *ha1_hex, const char *nonce,
                           const char *nc, const char *cnonce, const char *qop, const char *method,
                           const char *uri);

/* Failed-attempt limiting. @source is the peer's address as text; either
 * @source or @user may be NULL. Note every BAD result (and a missing user),
 * and ask before checking credentials: FALSE means refuse now and tell the
 * client to wait *retry_after seconds; such a refused request is not a
 * failure to note. Lockouts are logged (message level). */
void core_digest_note_failure(CoreDigest *digest, const char *source, const char *user,
                              gint64 now);
gboolean core_digest_may_try(CoreDigest *digest, const char *source, const char *user, gint64 now,
                             guint *retry_after);
/* A successful login forgets the user's failures (not the address's: one
 * account an attacker holds must not reset the count for guessing others). */
void core_digest_note_success(CoreDigest *digest, const char *user);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(CoreDigest, core_digest_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CoreDigestCredentials, core_digest_credentials_free)

G_END_DECLS
