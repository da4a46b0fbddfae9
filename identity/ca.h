/* identity/ca: a throw-away test certificate authority on GnuTLS, with the
 * behaviour of the makeCA and makeCert scripts of draft-ietf-sipcore-sec-flows
 * (Appendix A): host and user certificates in the SIP profiles, written as
 * PEM, DER, PKCS#8 and PKCS#12, and a CRL. For tests and interop events only.
 *
 * A CA directory holds:
 *   ca.pem, ca.der  the self-signed CA certificate
 *   ca.key          its key, PKCS#8 PEM, mode 0600
 *   index           what was issued and revoked (one line each, text)
 *   crlnumber       the last CRL number issued
 *   ca.crl, ca.crl.der  the last CRL written
 * Issued certificates go to an output directory (default: the CA directory).
 * No file is replaced unless IDENT_CA_FLAG_FORCE is given. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define IDENT_CA_ERROR (ident_ca_error_quark())
GQuark ident_ca_error_quark(void);

typedef enum {
  IDENT_CA_ERROR_EXISTS,    /* an output file is there already (no FORCE) */
  IDENT_CA_ERROR_IO,        /* a file could not be read or written */
  IDENT_CA_ERROR_INVALID,   /* a bad name, AOR or argument */
  IDENT_CA_ERROR_BAD_CA,    /* the CA directory does not hold a usable CA */
  IDENT_CA_ERROR_NOT_FOUND, /* revoke: no such certificate issued here */
  IDENT_CA_ERROR_CRYPTO,    /* GnuTLS failed */
} IdentCaError;

typedef enum {
  IDENT_CA_HOST, /* a SIP domain or proxy (sec-flows 3.2) */
  IDENT_CA_USER, /* a SIP user (sec-flows 3.3) */
} IdentCaKind;

typedef enum {
  IDENT_CA_FLAG_NONE = 0,
  IDENT_CA_FLAG_FORCE = 1 << 0,  /* replace existing files */
  IDENT_CA_FLAG_NO_EKU = 1 << 1, /* no extendedKeyUsage (sec-flows Appendix B.2) */
} IdentCaFlags;

/* The draft's password for every PKCS#8 and PKCS#12 file. */
#define IDENT_CA_DEFAULT_PASSWORD "password"
#define IDENT_CA_DEFAULT_CA_DAYS 3650
#define IDENT_CA_DEFAULT_DAYS 365
#define IDENT_CA_DEFAULT_CRL_DAYS 30
#define IDENT_CA_MAX_DAYS 36500
#define IDENT_CA_DEFAULT_CN "sipcred test CA"

typedef struct _IdentCa IdentCa;

/* Creates a CA in @dir (made if missing): an RSA 2048 key and a self-signed
 * certificate with CN @cn (NULL: IDENT_CA_DEFAULT_CN), basicConstraints
 * cA=TRUE (critical), keyUsage keyCertSign and cRLSign, sha256WithRSA, a
 * random positive 128-bit serial. @days 0 gives an already-expired CA, as
 * for issued certificates. Starts an empty index. */
IdentCa *ident_ca_create(const char *dir, const char *cn, guint days, gint64 now,
                         IdentCaFlags flags, GError **error);

/* Loads the CA of @dir (ca.pem and ca.key); checks that the key is the
 * certificate's and that it is a CA. */
IdentCa *ident_ca_open(const char *dir, GError **error);
void ident_ca_free(IdentCa *ca);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(IdentCa, ident_ca_free)

const char *ident_ca_get_dir(IdentCa *ca);

/* Issues a certificate with a new RSA 2048 key, CN = the domain or
 * "user@host", basicConstraints cA=FALSE (critical), keyUsage
 * digitalSignature, nonRepudiation and keyEncipherment, and:
 *   IDENT_CA_HOST, @subject a domain: subjectAltName dNSName DOMAIN and URI
 *     sip:DOMAIN; EKU serverAuth and id-kp-sipDomain;
 *   IDENT_CA_USER, @subject an AOR ("sip:user@host", "sips:..." or
 *     "user@host"): subjectAltName URIs sip:, im: and pres: of user@host;
 *     EKU emailProtection and id-kp-sipDomain.
 * IDENT_CA_FLAG_NO_EKU leaves out the EKU. Valid from 5 minutes before @now
 * for @days days; @days 0 makes a certificate that expired a day before @now
 * (sec-flows' "makeCert host 0").
 *
 * Writes NAME.pem, NAME.der, NAME.key (unencrypted PKCS#8 PEM, 0600),
 * NAME.p8 (PKCS#8 DER, PBES2 AES-256 with PBKDF2 HMAC-SHA256 under
 * @password, 0600) and NAME.p12 (key and certificate, same password, MAC
 * HMAC-SHA256, 0600) into @out_dir (NULL: the CA directory), where NAME is
 * the domain or the user part. Records the serial in the index. Returns
 * NAME. */
char *ident_ca_issue(IdentCa *ca, IdentCaKind kind, const char *subject, guint days, gint64 now,
                     const char *password, const char *out_dir, IdentCaFlags flags,
                     GError **error);

/* Marks a certificate revoked at @now in the index. @what is a NAME that
 * ident_ca_issue() returned (its newest certificate still valid), or, when
 * it contains a '/', the path of a certificate file (PEM or DER) this CA
 * issued. *@already (may be NULL) is set when it was revoked before, which
 * is not an error. Returns the serial as lower-case hex. */
char *ident_ca_revoke(IdentCa *ca, const char *what, gint64 now, gboolean *already,
                      GError **error);

/* Writes ca.crl (PEM) and ca.crl.der into the CA directory: a v2 CRL signed
 * with sha256WithRSA listing every revoked serial, thisUpdate @now,
 * nextUpdate @days later (@days 0: a CRL whose nextUpdate has passed), the
 * next CRL number and the CA's key identifier. Always replaces the previous
 * CRL. *@n_revoked (may be NULL) receives the number of entries. */
gboolean ident_ca_write_crl(IdentCa *ca, guint days, gint64 now, guint *n_revoked, GError **error);

G_END_DECLS
