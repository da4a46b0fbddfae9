/* identity/cert: certificate parsing and the RFC 6072 certificate-profile
 * checks (sections 7.9, 10.3, 10.6) applied before a certificate is stored or
 * served. GnuTLS underneath; nothing here knows about flows or storage. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define IDENT_ERROR (ident_error_quark())
GQuark ident_error_quark(void);

typedef enum {
  IDENT_ERROR_PARSE,      /* not a certificate (PEM or DER) */
  IDENT_ERROR_PROFILE,    /* a certificate, but not one we may store or serve */
  IDENT_ERROR_EXPIRED,    /* outside notBefore..notAfter */
  IDENT_ERROR_CRYPTO,     /* GnuTLS failed */
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

/* The SAN dNSName entries (or the CN when there are none), for logging and
 * for SNI selection. */
GStrv ident_cert_dup_dns_names(IdentCert *cert);

G_END_DECLS
