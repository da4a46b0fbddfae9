#define G_LOG_DOMAIN "sipcred-identity"

#include "identity/cert.h"

#include <string.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509-ext.h>
#include <gnutls/x509.h>

/* clang-format off */
G_DEFINE_QUARK(sipcred-ident-error-quark, ident_error)
/* clang-format on */

/* Far above any real certificate; keeps hostile input cheap to refuse. */
#define IDENT_CERT_MAX_SIZE (256 * 1024)
#define IDENT_OID_SAN "2.5.29.17"

struct _IdentCert {
  gnutls_x509_crt_t crt;
  GBytes *der;
  gint64 not_before;
  gint64 not_after;
};

void
ident_cert_free(IdentCert *cert)
{
  if (cert == NULL)
    return;
  if (cert->crt != NULL)
    gnutls_x509_crt_deinit(cert->crt);
  g_clear_pointer(&cert->der, g_bytes_unref);
  g_free(cert);
}

IdentCert *
ident_cert_new_from_data(const guint8 *data, gsize len, GError **error)
{
  static const char pem_marker[] = "-----BEGIN CERTIFICATE-----";
  g_autoptr(IdentCert) cert = NULL;
  gnutls_datum_t in, out = {NULL, 0};
  gboolean pem;
  time_t t;
  int rc;

  g_return_val_if_fail(data != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (len == 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PARSE, "empty certificate");
    return NULL;
  }
  if (len > IDENT_CERT_MAX_SIZE) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PARSE, "certificate larger than %d bytes",
                IDENT_CERT_MAX_SIZE);
    return NULL;
  }
  pem = memmem(data, len, pem_marker, sizeof pem_marker - 1) != NULL;

  cert = g_new0(IdentCert, 1);
  rc = gnutls_x509_crt_init(&cert->crt);
  if (rc < 0) {
    cert->crt = NULL;
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_CRYPTO, "gnutls_x509_crt_init: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  in.data = (unsigned char *)data;
  in.size = (unsigned int)len;
  /* For PEM, GnuTLS takes the first CERTIFICATE block, wherever it is. */
  rc = gnutls_x509_crt_import(cert->crt, &in, pem ? GNUTLS_X509_FMT_PEM : GNUTLS_X509_FMT_DER);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PARSE, "not a %s X.509 certificate: %s",
                pem ? "PEM" : "DER", gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_x509_crt_export2(cert->crt, GNUTLS_X509_FMT_DER, &out);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_CRYPTO, "exporting the certificate: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  cert->der = g_bytes_new(out.data, out.size);
  gnutls_free(out.data);
  /* Bytes after a DER certificate would be stored and served blindly. */
  if (!pem && g_bytes_get_size(cert->der) != len) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PARSE,
                "%" G_GSIZE_FORMAT " bytes of trailing data after the DER certificate",
                len - MIN(len, g_bytes_get_size(cert->der)));
    return NULL;
  }

  t = gnutls_x509_crt_get_activation_time(cert->crt);
  if (t == (time_t)-1) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PARSE, "certificate has no valid notBefore");
    return NULL;
  }
  cert->not_before = (gint64)t;
  t = gnutls_x509_crt_get_expiration_time(cert->crt);
  if (t == (time_t)-1) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PARSE, "certificate has no valid notAfter");
    return NULL;
  }
  cert->not_after = (gint64)t;
  return g_steal_pointer(&cert);
}

GBytes *
ident_cert_get_der(IdentCert *cert)
{
  g_return_val_if_fail(cert != NULL, NULL);
  return cert->der;
}

gint64
ident_cert_get_not_before(IdentCert *cert)
{
  g_return_val_if_fail(cert != NULL, 0);
  return cert->not_before;
}

gint64
ident_cert_get_not_after(IdentCert *cert)
{
  g_return_val_if_fail(cert != NULL, 0);
  return cert->not_after;
}

/* SAN entries of @type as strings. Entries with embedded NULs (a classic
 * way to smuggle a second name past a C string compare) are skipped. */
static GPtrArray *
ident_cert_collect_san(IdentCert *cert, gnutls_x509_subject_alt_name_t type, GError **error)
{
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  gnutls_subject_alt_names_t sans = NULL;
  gnutls_datum_t ext = {NULL, 0};
  unsigned int critical = 0;
  int rc;

  rc = gnutls_x509_crt_get_extension_by_oid2(cert->crt, IDENT_OID_SAN, 0, &ext, &critical);
  if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
    return g_steal_pointer(&names);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE, "unreadable subjectAltName: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_subject_alt_names_init(&sans);
  if (rc < 0) {
    gnutls_free(ext.data);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_CRYPTO, "gnutls_subject_alt_names_init: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_x509_ext_import_subject_alt_names(&ext, sans, 0);
  gnutls_free(ext.data);
  if (rc < 0) {
    gnutls_subject_alt_names_deinit(sans);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE, "undecodable subjectAltName: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  for (unsigned int i = 0;; i++) {
    unsigned int san_type = 0;
    gnutls_datum_t san = {NULL, 0};

    rc = gnutls_subject_alt_names_get(sans, i, &san_type, &san, NULL);
    if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      break;
    if (rc < 0) {
      gnutls_subject_alt_names_deinit(sans);
      g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                  "unreadable subjectAltName entry %u: %s", i, gnutls_strerror(rc));
      return NULL;
    }
    if (san_type != (unsigned int)type || san.size == 0 ||
        memchr(san.data, '\0', san.size) != NULL ||
        !g_utf8_validate((const char *)san.data, san.size, NULL))
      continue;
    g_ptr_array_add(names, g_strndup((const char *)san.data, san.size));
  }
  gnutls_subject_alt_names_deinit(sans);
  return g_steal_pointer(&names);
}

/* Splits canonical "sip:user@host". */
static gboolean
ident_aor_split(const char *aor, char **user, char **host)
{
  const char *rest, *at;

  if (aor == NULL || g_ascii_strncasecmp(aor, "sip:", 4) != 0)
    return FALSE;
  rest = aor + 4;
  at = strrchr(rest, '@');
  if (at == NULL || at == rest || at[1] == '\0')
    return FALSE;
  *user = g_strndup(rest, at - rest);
  *host = g_strdup(at + 1);
  return TRUE;
}

/* sip:, sips:, im: or pres: with exactly this user (case-sensitive, as in
 * SIP) at this host (case-insensitive). */
static gboolean
ident_uri_matches(const char *uri, const char *user, const char *host)
{
  static const char *const schemes[] = {"sip", "sips", "im", "pres"};
  const char *colon = strchr(uri, ':');
  const char *rest, *at;
  gboolean scheme_ok = FALSE;

  if (colon == NULL)
    return FALSE;
  for (guint i = 0; i < G_N_ELEMENTS(schemes); i++) {
    gsize n = strlen(schemes[i]);
    if ((gsize)(colon - uri) == n && g_ascii_strncasecmp(uri, schemes[i], n) == 0)
      scheme_ok = TRUE;
  }
  if (!scheme_ok)
    return FALSE;
  rest = colon + 1;
  at = strrchr(rest, '@');
  if (at == NULL || (gsize)(at - rest) != strlen(user) || memcmp(rest, user, at - rest) != 0)
    return FALSE;
  return g_ascii_strcasecmp(at + 1, host) == 0;
}

static char *
ident_format_time(gint64 t)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);

  if (dt == NULL)
    return g_strdup_printf("%" G_GINT64_FORMAT, t);
  return g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ");
}

gboolean
ident_cert_check_user_profile(IdentCert *cert, const char *aor, gint64 now, GError **error)
{
  g_autoptr(GPtrArray) uris = NULL;
  g_autofree char *user = NULL;
  g_autofree char *host = NULL;
  unsigned int critical = 0, ca = 0, usage = 0;
  int pathlen = -1;
  int rc;

  g_return_val_if_fail(cert != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  rc = gnutls_x509_crt_get_basic_constraints(cert->crt, &critical, &ca, &pathlen);
  if (rc < 0 && rc != GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE, "unreadable basicConstraints: %s",
                gnutls_strerror(rc));
    return FALSE;
  }
  if (rc >= 0 && ca) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "a CA certificate (basicConstraints cA=TRUE) is not a user certificate");
    return FALSE;
  }
  rc = gnutls_x509_crt_get_key_usage(cert->crt, &usage, &critical);
  if (rc >= 0 && (usage & (GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN)) != 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "keyUsage allows signing certificates or CRLs, as only a CA may");
    return FALSE;
  }

  if (!ident_aor_split(aor, &user, &host)) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE, "AOR %s is not sip:user@host",
                aor != NULL ? aor : "(null)");
    return FALSE;
  }
  uris = ident_cert_collect_san(cert, GNUTLS_SAN_URI, error);
  if (uris == NULL)
    return FALSE;
  if (uris->len == 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "subjectAltName has no URI; a user certificate for %s needs one", aor);
    return FALSE;
  }
  gboolean matched = FALSE;
  for (guint i = 0; i < uris->len && !matched; i++)
    matched = ident_uri_matches(g_ptr_array_index(uris, i), user, host);
  if (!matched) {
    g_ptr_array_add(uris, NULL);
    g_autofree char *joined = g_strjoinv(", ", (char **)uris->pdata);
    /* The names come from the certificate: keep control bytes off terminals. */
    g_autofree char *found = g_strescape(joined, NULL);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "no subjectAltName URI matches %s (found: %s)", aor, found);
    return FALSE;
  }

  if (now < cert->not_before) {
    g_autofree char *when = ident_format_time(cert->not_before);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_EXPIRED, "not yet valid (notBefore %s)", when);
    return FALSE;
  }
  if (now > cert->not_after) {
    g_autofree char *when = ident_format_time(cert->not_after);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_EXPIRED, "expired (notAfter %s)", when);
    return FALSE;
  }
  return TRUE;
}

/* The most specific (last) Subject CN, or NULL. */
static char *
ident_cert_dup_last_cn(IdentCert *cert)
{
  char *last = NULL;

  for (unsigned int idx = 0;; idx++) {
    size_t size = 0;
    char *buf;
    int rc;

    rc =
        gnutls_x509_crt_get_dn_by_oid(cert->crt, GNUTLS_OID_X520_COMMON_NAME, idx, 0, NULL, &size);
    if (rc != GNUTLS_E_SHORT_MEMORY_BUFFER)
      break;
    buf = g_malloc0(size + 1);
    rc = gnutls_x509_crt_get_dn_by_oid(cert->crt, GNUTLS_OID_X520_COMMON_NAME, idx, 0, buf, &size);
    if (rc < 0 || strlen(buf) != size || !g_utf8_validate(buf, -1, NULL)) {
      g_free(buf);
      continue;
    }
    g_free(last);
    last = buf;
  }
  return last;
}

GStrv
ident_cert_dup_dns_names(IdentCert *cert)
{
  g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
  g_autoptr(GPtrArray) dns = NULL;
  g_autoptr(GError) error = NULL;

  g_return_val_if_fail(cert != NULL, NULL);

  dns = ident_cert_collect_san(cert, GNUTLS_SAN_DNSNAME, &error);
  if (dns == NULL)
    g_debug("no dNSNames: %s", error->message);
  if (dns != NULL && dns->len > 0) {
    for (guint i = 0; i < dns->len; i++)
      g_strv_builder_add(builder, g_ptr_array_index(dns, i));
  } else {
    /* RFC 6125 / sec-flows: the CN counts only when there is no dNSName. */
    g_autofree char *cn = ident_cert_dup_last_cn(cert);
    if (cn != NULL && *cn != '\0')
      g_strv_builder_add(builder, cn);
  }
  return g_strv_builder_end(builder);
}
