/* identity/cert: certificate parsing and the RFC 6072 certificate-profile
 * checks (sections 7.9, 10.3, 10.6) applied before a certificate is stored or
 * served. GnuTLS underneath; nothing here knows about flows or storage. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define IDENT_ERROR (ident_error_quark())
GQuark ident_error_quark(void);

typedef enum {
  IDENT_ERROR_PARSE,   /* not a certificate (PEM or DER) */
  IDENT_ERROR_PROFILE, /* a certificate, but not one we may store or serve */
  IDENT_ERROR_EXPIRED, /* outside notBefore..notAfter */
  IDENT_ERROR_CRYPTO,  /* GnuTLS failed */
  IDENT_ERROR_KEY,     /* a private key that is unreadable, of the wrong form, or not the
                          certificate's */
} IdentError;

typedef struct _IdentCert IdentCert;

/* Parses one certificate from PEM (first CERTIFICATE block) or DER bytes. */
IdentCert *ident_cert_new_from_data(const guint8 *data, gsize len, GError **error);
void ident_cert_free(IdentCert *cert);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(IdentCert, ident_cert_free)

/* The DER encoding, exactly as it will be served. Owned by @cert (transfer
 * none): g_bytes_ref() it to keep it. */
GBytes *ident_cert_get_der(IdentCert *cert);
gint64 ident_cert_get_not_before(IdentCert *cert);
gint64 ident_cert_get_not_after(IdentCert *cert);

/* The user-certificate profile for @aor (canonical "sip:user@host"):
 * not a CA; a subjectAltName URI equal to sip:, sips:, im: or pres: of the
 * AOR (case-insensitive host); valid at @now (unix seconds). Sets
 * IDENT_ERROR_PROFILE or IDENT_ERROR_EXPIRED with a message naming the check. */
gboolean ident_cert_check_user_profile(IdentCert *cert, const char *aor, gint64 now,
                                       GError **error);

/* TRUE when @cert is self-issued (issuer DN = subject DN) and its
 * signature verifies with its own public key: what RFC 6072 user agents
 * generate (10.6), trusted only through the Identity of the NOTIFY that
 * carried it, never through a CA. */
gboolean ident_cert_is_self_signed(IdentCert *cert);

/* The checks of RFC 6072 section 7.9 on a published certificate: notBefore
 * not after @now, notAfter after @now, and cA FALSE when basicConstraints
 * are present. The subjectAltName is deliberately not checked (7.9). Error
 * messages are fixed text plus times, safe as a SIP reason phrase. */
gboolean ident_cert_check_publishable(IdentCert *cert, gint64 now, GError **error);

/* The SAN dNSName entries (or the CN when there are none), for logging and
 * for SNI selection. */
GStrv ident_cert_dup_dns_names(IdentCert *cert);

/* ---- Describing a certificate (for operators) ---------------------------
 * Strings come from the certificate: control characters are escaped (\xNN)
 * and invalid UTF-8 replaced, so they are safe to print. */

/* Subject and issuer DN as RFC 4514 strings ("" when empty). */
char *ident_cert_dup_subject(IdentCert *cert);
char *ident_cert_dup_issuer(IdentCert *cert);
/* Every subjectAltName entry as "URI:...", "DNS:...", "email:...", "IP:..."
 * or "other:TYPE". */
GStrv ident_cert_dup_alt_names(IdentCert *cert);
/* SHA-256 of the DER, upper-case hex pairs joined by ':'. */
char *ident_cert_dup_fingerprint(IdentCert *cert);
/* The public key, e.g. "RSA 2048 bits", "ECDSA 256 bits". */
char *ident_cert_dup_key_description(IdentCert *cert);

/* ---- Credentials (RFC 6072 section 10.6) ---------------------------------
 * The PKCS#8 GBytes returned here hold a private key in clear: their memory
 * is wiped when the last reference goes. Never log them. */

#define IDENT_CRED_MAX_DAYS 365
#define IDENT_CRED_BACKDATE 300 /* seconds notBefore lies before @now (clock skew) */

/* Generates an RSA key of @bits (2048 or 3072) and a self-signed certificate
 * for @aor (canonical "sip:user@host"): issuer = subject (CN = the AOR when it
 * fits 64 bytes), subjectAltName URI @aor, basicConstraints cA=FALSE
 * (critical), keyUsage digitalSignature and keyEncipherment,
 * sha256WithRSAEncryption, a random 128-bit serial. Validity starts
 * IDENT_CRED_BACKDATE seconds before @now and lasts @days (1 to
 * IDENT_CRED_MAX_DAYS) days minus a random 0-10 %, so that renewals spread
 * out. *@pkcs8 receives the unencrypted PKCS#8 DER of the key. */
IdentCert *ident_cert_generate(const char *aor, guint bits, guint days, gint64 now, GBytes **pkcs8,
                               GError **error);

/* Reads an unencrypted private key (PEM "PRIVATE KEY", "RSA PRIVATE KEY" or
 * "EC PRIVATE KEY", or DER PKCS#8/PKCS#1) and checks that it is the key of
 * @cert's public key. Returns it as unencrypted PKCS#8 DER. IDENT_ERROR_KEY
 * when it is encrypted, unreadable or another key. */
GBytes *ident_cert_match_private_key(IdentCert *cert, const guint8 *data, gsize len,
                                     GError **error);

/* Checks that @data (PEM "ENCRYPTED PRIVATE KEY" or DER) is one PKCS#8
 * EncryptedPrivateKeyInfo with PBES2 and PBKDF2 (RFC 8018), without
 * decrypting it: the password is the user's. Any PBES2 cipher is accepted,
 * including RFC 6072's id-aes128-wrap-pad. Returns the DER; *@scheme (when
 * not NULL) receives a description such as
 * "PBES2, PBKDF2 hmacWithSHA256, aes128-wrap-pad". IDENT_ERROR_KEY otherwise,
 * with a message saying what was found instead. */
GBytes *ident_pkcs8_check_encrypted(const guint8 *data, gsize len, char **scheme, GError **error);

G_END_DECLS
