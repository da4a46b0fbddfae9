/* core/credbody: the bodies of the credential package (RFC 6072 section 7).
 *
 * Pure code, no I/O: core_credbody_parse() reads a PUBLISH body into the
 * certificate DER and the PKCS#8 DER, core_credbody_build() writes the
 * multipart/mixed body of a credential NOTIFY. The certificate is checked
 * here only as one well-formed DER element; X.509 is the identity module's.
 *
 * Receiving is forgiving as sec-flows section 6 asks (Content-Transfer-
 * Encoding base64, PEM, binary DER); sending is binary only (RFC 6072 7.4).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define CORE_CREDBODY_ERROR (core_credbody_error_quark())
GQuark core_credbody_error_quark(void);

/* Error messages are fixed ASCII text and never quote the peer's bytes, so
 * they can go out as a SIP reason phrase or Warning text as they are. */
typedef enum {
  CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE, /* SIP 415: body or required part of unknown type */
  CORE_CREDBODY_ERROR_MALFORMED,        /* SIP 400: the message says what was wrong */
  CORE_CREDBODY_ERROR_TOO_LARGE,        /* SIP 413: longer than CORE_CREDBODY_MAX_LEN */
} CoreCredbodyError;

/* The largest body parse() reads. A certificate plus an RSA-4096 PKCS#8,
 * both PEM inside base64, stays well below this. */
#define CORE_CREDBODY_MAX_LEN (64 * 1024)
/* The most body parts a multipart may have, counting ignored ones. */
#define CORE_CREDBODY_MAX_PARTS 8

typedef enum {
  CORE_CREDBODY_PARSE_NONE = 0,
  /* The caller takes a certificate only: any PKCS#8 in the body is an error
   * ("pkcs8 part in a certificate-only body") instead of being returned. */
  CORE_CREDBODY_PARSE_CERT_ONLY = 1 << 0,
} CoreCredbodyParseFlags;

/* Parses a PUBLISH body. content_type is the Content-Type header value and
 * cte the message's Content-Transfer-Encoding (NULL when absent). Accepted:
 *  - application/pkix-cert: the certificate alone;
 *  - multipart/mixed (RFC 2046) with exactly one application/pkix-cert part
 *    and at most one application/pkcs8 part.
 * Each DER may arrive binary, base64 (Content-Transfer-Encoding, whitespace
 * allowed) or PEM, and must be exactly one DER SEQUENCE with nothing after.
 *
 * Parts (RFC 3261 20.11, RFC 3204): a part's Content-Disposition may be
 * absent, signal, render, inline or attachment. A part of another type or
 * disposition is ignored when it says handling=optional and refused with
 * UNSUPPORTED_TYPE otherwise, since handling defaults to required. handling
 * only concerns parts we do not understand: a certificate marked optional is
 * still the certificate. Nested multiparts are refused (MALFORMED).
 *
 * On success *cert_der is set and *pkcs8_der is the key or NULL (either out
 * pointer may be NULL when the caller does not want it); on failure nothing
 * is set. */
gboolean core_credbody_parse(const char *content_type, const char *cte, const guint8 *body,
                             gsize len, CoreCredbodyParseFlags flags, GBytes **cert_der,
                             GBytes **pkcs8_der, GError **error);

/* The SIP status for an error of parse(): 415, 413 or 400 (500 for an error
 * of another domain). */
guint core_credbody_error_status(const GError *error);

/* Builds a credential NOTIFY body: multipart/mixed with the certificate and,
 * when pkcs8_der is not NULL, the key, both exactly as given. Each part has
 * Content-Type, "Content-Transfer-Encoding: binary" and "Content-Disposition:
 * signal" (RFC 6072 7.4 and the design; handling defaults to required). The
 * boundary depends only on the certificate (the same input gives the same
 * bytes) and occurs in neither part. Sets *content_type_out to
 * the Content-Type header value to send with it (free with g_free). */
GBytes *core_credbody_build(GBytes *cert_der, GBytes *pkcs8_der, char **content_type_out);

/* TRUE when der is exactly one well-formed DER element (definite minimal
 * lengths, nesting bounded, constructed contents made of whole elements) and
 * nothing follows it. */
gboolean core_credbody_der_check(const guint8 *der, gsize len);

G_END_DECLS
