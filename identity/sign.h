/* identity/sign: RFC 4474 Identity for outgoing SIP messages.
 *
 * - the digest-string of RFC 4474 section 9, read from the message bytes;
 * - an opaque signer that holds the domain key and offers one call, "sign
 *   these bytes", and nothing that hands the key out (CONVENTIONS 6);
 * - signing a whole message (Date, Identity, Identity-Info added);
 * - a thread pool that signs off the main loop and keeps the order per flow;
 * - verification, for our client and the tests.
 *
 * Nothing here does network I/O or reads configuration. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define IDENT_SIGN_ERROR (ident_sign_error_quark())
GQuark ident_sign_error_quark(void);

typedef enum {
  IDENT_SIGN_ERROR_MESSAGE,     /* not a message we can read or sign (framing, headers) */
  IDENT_SIGN_ERROR_KEY,         /* key or certificate unusable (unreadable, not RSA, mismatch) */
  IDENT_SIGN_ERROR_BACKEND,     /* the requested backend is not built in */
  IDENT_SIGN_ERROR_CRYPTO,      /* the crypto library failed */
  IDENT_SIGN_ERROR_ALGORITHM,   /* Identity-Info names an algorithm we do not take */
  IDENT_SIGN_ERROR_SIGNATURE,   /* Identity missing, malformed or not matching */
  IDENT_SIGN_ERROR_DATE,        /* Date missing, malformed or outside the window */
  IDENT_SIGN_ERROR_CERTIFICATE, /* the certificate does not name the From host, or is
                                   not valid now */
} IdentSignError;

/* Hard bounds: the parser refuses larger input before looking at it. */
#define IDENT_SIGN_MAX_MESSAGE (1024 * 1024)
#define IDENT_SIGN_MAX_URL 2048

typedef enum {
  IDENT_ALG_RSA_SHA256, /* RFC 6072 section 8; the default */
  IDENT_ALG_RSA_SHA1,   /* RFC 4474; the only one Kamailio's auth_identity verifies */
} IdentAlg;

/* "rsa-sha256", "rsa-sha1". */
const char *ident_alg_to_string(IdentAlg alg);
/* Case-insensitive; FALSE for anything else. */
gboolean ident_alg_from_string(const char *name, IdentAlg *alg);

/* ---- Digest-string (RFC 4474 section 9) ----------------------------------
 * @msg is one whole message as it goes on the wire: start line, header
 * fields ending in CRLF, an empty line, then exactly Content-Length bytes of
 * body. Content-Length is required (a message over a stream cannot be framed
 * without it), and so are From, To, Call-ID, CSeq and Date, each exactly
 * once. Compact names (f, t, i, m, l) and any letter case are read.
 * addr-specs are taken exactly as written inside <> (URI parameters kept,
 * display name and header parameters dropped); without <> the URI ends at
 * the first ';'. Of several Contact values the first one counts; without
 * Contact the field is empty. Fields are joined by '|'.
 * IDENT_SIGN_ERROR_MESSAGE names what is wrong. */
GBytes *ident_digest_string(const guint8 *msg, gsize len, GError **error);

/* The RFC 1123 form of a Date header value, "Www, DD Mmm YYYY HH:MM:SS GMT",
 * for @unix_time (seconds). */
char *ident_date_format(gint64 unix_time);
/* Parses exactly that form (and nothing looser); FALSE when it is not. */
gboolean ident_date_parse(const char *value, gint64 *unix_time);

/* ---- Signer ---------------------------------------------------------------
 * An RSA domain key and its certificate. The key never leaves the signer:
 * its copies are wiped when the last reference goes, and it is never logged.
 * One signer may be used by any number of threads at once (the GnuTLS
 * backend keeps one key handle per concurrent caller, the OpenSSL backend
 * shares its EVP_PKEY, which libcrypto allows for signing).
 * Reference counted, because pool jobs keep the signer they were given
 * while a reload (SIGHUP) replaces it. */

typedef enum {
  IDENT_SIGNER_GNUTLS,  /* always built */
  IDENT_SIGNER_OPENSSL, /* built when the `openssl` feature found libcrypto */
} IdentSignerBackend;

/* "gnutls", "openssl". */
const char *ident_signer_backend_to_string(IdentSignerBackend backend);
gboolean ident_signer_backend_from_string(const char *name, IdentSignerBackend *backend);
/* Whether this build has @backend. */
gboolean ident_signer_backend_available(IdentSignerBackend backend);

typedef struct _IdentSigner IdentSigner;

/* @key: an unencrypted RSA private key, PEM ("PRIVATE KEY" or "RSA PRIVATE
 * KEY") or DER (PKCS#8 or PKCS#1). @cert: its certificate, PEM or DER.
 * IDENT_SIGN_ERROR_KEY when the key is encrypted, unreadable, not RSA or not
 * the certificate's; IDENT_SIGN_ERROR_BACKEND when @backend is not built. */
IdentSigner *ident_signer_new(IdentSignerBackend backend, const guint8 *key, gsize key_len,
                              const guint8 *cert, gsize cert_len, GError **error);
IdentSigner *ident_signer_ref(IdentSigner *signer);
void ident_signer_unref(IdentSigner *signer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(IdentSigner, ident_signer_unref)

IdentSignerBackend ident_signer_get_backend(IdentSigner *signer);
/* The certificate as DER, what the Identity-Info URL serves (transfer none). */
GBytes *ident_signer_get_cert_der(IdentSigner *signer);

/* The narrow call: RSASSA-PKCS1-v1_5 over @data with the hash of @alg.
 * Returns the raw signature (modulus size). Thread-safe. */
GBytes *ident_signer_sign(IdentSigner *signer, IdentAlg alg, const guint8 *data, gsize len,
                          GError **error);

/* ---- Signing a message ----------------------------------------------------
 * @msg: the final message bytes (nothing covered by the digest-string may
 * change afterwards). Returns the same bytes with, at the end of the header
 * section, a Date header for @now when the message has none, then
 * `Identity: "<base64>"` and `Identity-Info: <@info_url>;alg=<alg>`.
 * Nothing else changes: the body and Content-Length stay as they were.
 * A message that already carries Identity or Identity-Info is refused.
 * Thread-safe. */
GBytes *ident_sign_message(IdentSigner *signer, IdentAlg alg, const char *info_url, gint64 now,
                           const guint8 *msg, gsize len, GError **error);

/* ---- Verification ---------------------------------------------------------
 * Checks, in this order, and fails on the first that does not hold, with a
 * message naming it:
 * - the message parses (IDENT_SIGN_ERROR_MESSAGE);
 * - Identity-Info is present once and its alg is rsa-sha256 or rsa-sha1
 *   (absent alg means rsa-sha1, as RFC 4474 defines) (..._ALGORITHM);
 * - Identity is present once, is base64, and is the signature of the
 *   digest-string under @cert_der's public key (..._SIGNATURE);
 * - Date lies within @window seconds of @now (..._DATE);
 * - the certificate is valid at @now, and its subjectAltName dNSNames (its
 *   CN when it has none) include the host of the From URI, which must be
 *   sip: or sips: (..._CERTIFICATE).
 * *@alg (may be NULL) receives the algorithm once it is known. */
gboolean ident_verify_message(const guint8 *msg, gsize len, const guint8 *cert_der, gsize cert_len,
                              gint64 now, guint window, IdentAlg *alg, GError **error);

/* ---- Signing pool ----------------------------------------------------------
 * Signs on a pool of GLib threads, joined when the pool is freed. A job is
 * submitted from a thread running a GMainContext (the thread-default one is
 * captured) with an order key, for example the flow's id. Its callback runs
 * on that context, and the callbacks of one order key run in submission
 * order, whatever order the threads finish in. Submit, cancel, the pending
 * count and free belong to that thread; only the signing itself runs
 * elsewhere. All jobs of one order key must be submitted from the same
 * context. The pool does not bound its queue: the caller keeps
 * ident_sign_pool_get_pending() within its fan-out window. */

typedef struct _IdentSignPool IdentSignPool;

/* @signed_msg on success (transfer none; ref it to keep it), else @error. */
typedef void (*IdentSignDoneCb)(GBytes *signed_msg, const GError *error, void *user_data);

/* @threads: 0 means one per online core. */
IdentSignPool *ident_sign_pool_new(guint threads, GError **error);
/* Drops the jobs not yet delivered: their callbacks are never called, their
 * destroy notifies are. Waits for the jobs being signed right now. */
void ident_sign_pool_free(IdentSignPool *pool);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(IdentSignPool, ident_sign_pool_free)

guint ident_sign_pool_get_threads(IdentSignPool *pool);

/* Queues the signing of @msg (as ident_sign_message()). The pool keeps
 * references on @signer and @msg. @destroy (may be NULL) is called on
 * @user_data after the callback, or when the job is cancelled. */
void ident_sign_pool_submit(IdentSignPool *pool, guint64 order_key, IdentSigner *signer,
                            IdentAlg alg, const char *info_url, gint64 now, GBytes *msg,
                            IdentSignDoneCb callback, void *user_data, GDestroyNotify destroy);

/* Drops every job of @order_key not yet delivered (the flow is gone): their
 * callbacks will not run, not even for jobs being signed right now. Returns
 * how many were dropped. */
guint ident_sign_pool_cancel(IdentSignPool *pool, guint64 order_key);

/* Jobs submitted and neither delivered nor cancelled: queued, being signed,
 * or signed and waiting for their turn. This is the depth to feed back into
 * the fan-out window. */
guint ident_sign_pool_get_pending(IdentSignPool *pool);
/* The same for one order key. */
guint ident_sign_pool_get_pending_for(IdentSignPool *pool, guint64 order_key);

G_END_DECLS
