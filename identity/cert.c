#define G_LOG_DOMAIN "sipcred-identity"

#include "identity/cert.h"

#include <arpa/inet.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509-ext.h>
#include <gnutls/x509.h>

/* clang-format off */
G_DEFINE_QUARK(sipcred-ident-error-quark, ident_error)
/* clang-format on */

/* Far above any real certificate; keeps hostile input cheap to refuse. */
#define IDENT_CERT_MAX_SIZE (256 * 1024)
#define IDENT_OID_SAN "2.5.29.17"
/* Key files are small; this bounds what a hostile file can make us parse. */
#define IDENT_KEY_MAX_SIZE (64 * 1024)

/* The handles are pointer typedefs: g_auto() frees them at scope exit. */
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_privkey_t, gnutls_x509_privkey_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_crt_t, gnutls_x509_crt_deinit, NULL)

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

gboolean
ident_cert_check_publishable(IdentCert *cert, gint64 now, GError **error)
{
  unsigned int critical = 0, ca = 0;
  int pathlen = -1;
  int rc;

  g_return_val_if_fail(cert != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (now < cert->not_before) {
    g_autofree char *when = ident_format_time(cert->not_before);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_EXPIRED,
                "certificate not yet valid (notBefore %s)", when);
    return FALSE;
  }
  if (now >= cert->not_after) {
    g_autofree char *when = ident_format_time(cert->not_after);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_EXPIRED, "certificate expired (notAfter %s)",
                when);
    return FALSE;
  }
  rc = gnutls_x509_crt_get_basic_constraints(cert->crt, &critical, &ca, &pathlen);
  if (rc < 0 && rc != GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "certificate basicConstraints unreadable");
    return FALSE;
  }
  if (rc >= 0 && ca) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "certificate is a CA (basicConstraints cA=TRUE)");
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

/* ---- Describing a certificate ---- */

/* Text from a certificate, safe for a terminal: valid UTF-8 with C0/C1
 * control characters and DEL shown as \xNN. */
static char *
ident_sanitize(const char *data, gssize len)
{
  g_autofree char *valid = g_utf8_make_valid(data, len);
  GString *out = g_string_sized_new(strlen(valid));

  for (const char *p = valid; *p != '\0'; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);
    if (c < 0x20 || (c >= 0x7f && c < 0xa0))
      g_string_append_printf(out, "\\x%02X", (guint)c);
    else
      g_string_append_unichar(out, c);
  }
  return g_string_free(out, FALSE);
}

static char *
ident_dn_to_string(int rc, gnutls_datum_t *dn)
{
  char *out;

  if (rc < 0) {
    /* GnuTLS reports an empty DN as "not available". */
    return g_strdup("");
  }
  out = ident_sanitize((const char *)dn->data, dn->size);
  gnutls_free(dn->data);
  return out;
}

char *
ident_cert_dup_subject(IdentCert *cert)
{
  gnutls_datum_t dn = {NULL, 0};

  g_return_val_if_fail(cert != NULL, NULL);
  return ident_dn_to_string(gnutls_x509_crt_get_dn3(cert->crt, &dn, 0), &dn);
}

gboolean
ident_cert_is_self_signed(IdentCert *cert)
{
  unsigned int status = 0;

  g_return_val_if_fail(cert != NULL, FALSE);
  if (!gnutls_x509_crt_check_issuer(cert->crt, cert->crt))
    return FALSE;
  /* A user certificate is no CA: allow it to sign itself once, and leave
   * validity to the caller. DO_NOT_ALLOW_SAME makes GnuTLS check the
   * signature instead of trusting a certificate found in the anchor list. */
  if (gnutls_x509_crt_verify(cert->crt, &cert->crt, 1,
                             GNUTLS_VERIFY_DISABLE_CA_SIGN | GNUTLS_VERIFY_DO_NOT_ALLOW_SAME |
                                 GNUTLS_VERIFY_DISABLE_TIME_CHECKS |
                                 GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS |
                                 GNUTLS_VERIFY_ALLOW_SIGN_WITH_SHA1,
                             &status) < 0)
    return FALSE;
  return status == 0;
}

char *
ident_cert_dup_issuer(IdentCert *cert)
{
  gnutls_datum_t dn = {NULL, 0};

  g_return_val_if_fail(cert != NULL, NULL);
  return ident_dn_to_string(gnutls_x509_crt_get_issuer_dn3(cert->crt, &dn, 0), &dn);
}

static char *
ident_san_to_string(unsigned int type, const gnutls_datum_t *san)
{
  g_autofree char *text = NULL;
  char addr[INET6_ADDRSTRLEN];

  switch (type) {
  case GNUTLS_SAN_URI:
  case GNUTLS_SAN_DNSNAME:
  case GNUTLS_SAN_RFC822NAME:
    text = ident_sanitize((const char *)san->data, san->size);
    /* An embedded NUL would hide the rest of the name: show it. */
    if (memchr(san->data, '\0', san->size) != NULL) {
      g_free(text);
      text = g_strdup("(contains a NUL byte)");
    }
    return g_strdup_printf("%s:%s",
                           type == GNUTLS_SAN_URI       ? "URI"
                           : type == GNUTLS_SAN_DNSNAME ? "DNS"
                                                        : "email",
                           text);
  case GNUTLS_SAN_IPADDRESS:
    if ((san->size == 4 && inet_ntop(AF_INET, san->data, addr, sizeof addr) != NULL) ||
        (san->size == 16 && inet_ntop(AF_INET6, san->data, addr, sizeof addr) != NULL))
      return g_strdup_printf("IP:%s", addr);
    return g_strdup("IP:(malformed)");
  case GNUTLS_SAN_DN:
    return g_strdup("other:directoryName");
  case GNUTLS_SAN_OTHERNAME:
    return g_strdup("other:otherName");
  case GNUTLS_SAN_REGISTERED_ID:
    return g_strdup("other:registeredID");
  default:
    return g_strdup_printf("other:%u", type);
  }
}

GStrv
ident_cert_dup_alt_names(IdentCert *cert)
{
  g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
  gnutls_subject_alt_names_t sans = NULL;
  gnutls_datum_t ext = {NULL, 0};
  unsigned int critical = 0;

  g_return_val_if_fail(cert != NULL, NULL);

  if (gnutls_x509_crt_get_extension_by_oid2(cert->crt, IDENT_OID_SAN, 0, &ext, &critical) < 0)
    return g_strv_builder_end(builder);
  if (gnutls_subject_alt_names_init(&sans) < 0) {
    gnutls_free(ext.data);
    return g_strv_builder_end(builder);
  }
  if (gnutls_x509_ext_import_subject_alt_names(&ext, sans, 0) < 0) {
    g_strv_builder_add(builder, "(undecodable subjectAltName)");
  } else {
    for (unsigned int i = 0;; i++) {
      unsigned int type = 0;
      gnutls_datum_t san = {NULL, 0};

      if (gnutls_subject_alt_names_get(sans, i, &type, &san, NULL) < 0)
        break;
      g_autofree char *entry = ident_san_to_string(type, &san);
      g_strv_builder_add(builder, entry);
    }
  }
  gnutls_free(ext.data);
  gnutls_subject_alt_names_deinit(sans);
  return g_strv_builder_end(builder);
}

char *
ident_cert_dup_fingerprint(IdentCert *cert)
{
  guint8 digest[32];
  GString *out;

  g_return_val_if_fail(cert != NULL, NULL);
  if (gnutls_hash_fast(GNUTLS_DIG_SHA256, g_bytes_get_data(cert->der, NULL),
                       g_bytes_get_size(cert->der), digest) < 0)
    return g_strdup("(unavailable)");
  out = g_string_sized_new(3 * sizeof digest);
  for (gsize i = 0; i < sizeof digest; i++)
    g_string_append_printf(out, "%s%02X", i > 0 ? ":" : "", digest[i]);
  return g_string_free(out, FALSE);
}

char *
ident_cert_dup_key_description(IdentCert *cert)
{
  unsigned int bits = 0;
  int algo;
  const char *name;

  g_return_val_if_fail(cert != NULL, NULL);
  algo = gnutls_x509_crt_get_pk_algorithm(cert->crt, &bits);
  if (algo < 0)
    return g_strdup("unknown");
  /* GnuTLS calls it "EC/ECDSA". */
  name = algo == GNUTLS_PK_ECDSA ? "ECDSA"
                                 : gnutls_pk_algorithm_get_name((gnutls_pk_algorithm_t)algo);
  return g_strdup_printf("%s %u bits", name != NULL ? name : "unknown", bits);
}

/* ---- Private keys ---- */

/* Wiped on free: a GBytes that holds a private key in clear. */
typedef struct {
  gsize len;
  guint8 data[];
} IdentSecret;

static void
ident_secret_free(gpointer p)
{
  IdentSecret *secret = p;

  explicit_bzero(secret->data, secret->len);
  g_free(secret);
}

static GBytes *
ident_secret_bytes_new(const void *data, gsize len)
{
  IdentSecret *secret = g_malloc(sizeof *secret + len);

  secret->len = len;
  memcpy(secret->data, data, len);
  return g_bytes_new_with_free_func(secret->data, len, ident_secret_free, secret);
}

/* The key as unencrypted PKCS#8 DER, in wiped memory. */
static GBytes *
ident_privkey_export_pkcs8(gnutls_x509_privkey_t key, GError **error)
{
  gnutls_datum_t out = {NULL, 0};
  GBytes *bytes;
  int rc;

  rc = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_DER, NULL, GNUTLS_PKCS_PLAIN, &out);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_CRYPTO, "exporting the key as PKCS#8: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  bytes = ident_secret_bytes_new(out.data, out.size);
  gnutls_memset(out.data, 0, out.size);
  gnutls_free(out.data);
  return bytes;
}

/* ---- DER, just enough for PKCS#8 EncryptedPrivateKeyInfo ---- */

typedef struct {
  const guint8 *p;
  gsize len;
} IdentDer;

#define DER_INTEGER 0x02
#define DER_OCTET_STRING 0x04
#define DER_OID 0x06
#define DER_SEQUENCE 0x30

/* Reads one definite-length TLV with tag @tag off the front of @in. */
static gboolean
ident_der_read(IdentDer *in, guint8 tag, IdentDer *value)
{
  gsize hdr = 2, n;

  if (in->len < 2 || in->p[0] != tag)
    return FALSE;
  n = in->p[1];
  if (n & 0x80) {
    guint k = n & 0x7f;
    /* k == 0 is BER's indefinite length, which DER forbids. */
    if (k == 0 || k > 4 || in->len < 2 + k || in->p[2] == 0)
      return FALSE;
    n = 0;
    for (guint i = 0; i < k; i++)
      n = (n << 8) | in->p[2 + i];
    if (n < 0x80)
      return FALSE;
    hdr += k;
  }
  if (n > in->len - hdr)
    return FALSE;
  value->p = in->p + hdr;
  value->len = n;
  in->p += hdr + n;
  in->len -= hdr + n;
  return TRUE;
}

static gboolean
ident_der_oid_is(const IdentDer *oid, const guint8 *der, gsize len)
{
  return oid->len == len && memcmp(oid->p, der, len) == 0;
}

/* Dotted form of an OID's content octets, or NULL when malformed. */
static char *
ident_der_oid_to_string(const IdentDer *oid)
{
  g_autoptr(GString) out = g_string_new(NULL);
  guint64 v = 0;
  gboolean first = TRUE;

  if (oid->len == 0 || oid->len > 64)
    return NULL;
  for (gsize i = 0; i < oid->len; i++) {
    if (v == 0 && oid->p[i] == 0x80)
      return NULL; /* non-minimal */
    if (v > (G_MAXUINT64 >> 7))
      return NULL;
    v = (v << 7) | (oid->p[i] & 0x7f);
    if (oid->p[i] & 0x80)
      continue;
    if (first) {
      guint top = v < 40 ? 0 : v < 80 ? 1 : 2;
      g_string_append_printf(out, "%u.%" G_GUINT64_FORMAT, top, v - 40 * top);
      first = FALSE;
    } else {
      g_string_append_printf(out, ".%" G_GUINT64_FORMAT, v);
    }
    v = 0;
  }
  if (oid->p[oid->len - 1] & 0x80)
    return NULL;
  return g_string_free(g_steal_pointer(&out), FALSE);
}

static const struct {
  const char *oid;
  const char *name;
} ident_oid_names[] = {
    {"1.2.840.113549.1.5.13", "PBES2"},
    {"1.2.840.113549.1.5.12", "PBKDF2"},
    {"1.2.840.113549.1.5.3", "pbeWithMD5AndDES-CBC"},
    {"1.2.840.113549.1.5.10", "pbeWithSHA1AndDES-CBC"},
    {"1.2.840.113549.1.12.1.3", "pbeWithSHAAnd3-KeyTripleDES-CBC"},
    {"1.2.840.113549.2.7", "hmacWithSHA1"},
    {"1.2.840.113549.2.9", "hmacWithSHA256"},
    {"1.2.840.113549.2.10", "hmacWithSHA384"},
    {"1.2.840.113549.2.11", "hmacWithSHA512"},
    {"1.2.840.113549.3.7", "des-ede3-cbc"},
    {"2.16.840.1.101.3.4.1.2", "aes128-cbc"},
    {"2.16.840.1.101.3.4.1.22", "aes192-cbc"},
    {"2.16.840.1.101.3.4.1.42", "aes256-cbc"},
    {"2.16.840.1.101.3.4.1.8", "aes128-wrap-pad"},
    {"2.16.840.1.101.3.4.1.28", "aes192-wrap-pad"},
    {"2.16.840.1.101.3.4.1.48", "aes256-wrap-pad"},
};

static char *
ident_der_oid_name(const IdentDer *oid)
{
  g_autofree char *dotted = ident_der_oid_to_string(oid);

  if (dotted == NULL)
    return g_strdup("(malformed OID)");
  for (guint i = 0; i < G_N_ELEMENTS(ident_oid_names); i++)
    if (g_str_equal(dotted, ident_oid_names[i].oid))
      return g_strdup(ident_oid_names[i].name);
  return g_steal_pointer(&dotted);
}

static gboolean
ident_pkcs8_fail(GError **error, const char *why)
{
  g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "not an encrypted PKCS#8 key: %s", why);
  return FALSE;
}

/* Parses EncryptedPrivateKeyInfo (RFC 5958) with PBES2 (RFC 8018). */
static gboolean
ident_pkcs8_parse_encrypted(const guint8 *data, gsize len, char **scheme, GError **error)
{
  /* 1.2.840.113549.1.5.13 and .12 */
  static const guint8 oid_pbes2[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d};
  static const guint8 oid_pbkdf2[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c};
  IdentDer in = {data, len}, info, alg, alg_oid, params, kdf, kdf_oid, kdf_params, salt, iter;
  IdentDer enc, enc_oid, blob;
  g_autofree char *prf = NULL;
  g_autofree char *cipher = NULL;

  if (!ident_der_read(&in, DER_SEQUENCE, &info))
    return ident_pkcs8_fail(error, "not a DER SEQUENCE");
  if (in.len != 0)
    return ident_pkcs8_fail(error, "trailing data after the key");
  if (info.len > 0 && info.p[0] == DER_INTEGER)
    return ident_pkcs8_fail(error, "this is an unencrypted PrivateKeyInfo");
  if (!ident_der_read(&info, DER_SEQUENCE, &alg) || !ident_der_read(&alg, DER_OID, &alg_oid))
    return ident_pkcs8_fail(error, "no encryptionAlgorithm");
  if (!ident_der_oid_is(&alg_oid, oid_pbes2, sizeof oid_pbes2)) {
    g_autofree char *name = ident_der_oid_name(&alg_oid);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY,
                "encrypted PKCS#8 with %s; only PBES2 is accepted", name);
    return FALSE;
  }
  if (!ident_der_read(&alg, DER_SEQUENCE, &params) || alg.len != 0)
    return ident_pkcs8_fail(error, "malformed PBES2 parameters");
  if (!ident_der_read(&params, DER_SEQUENCE, &kdf) || !ident_der_read(&kdf, DER_OID, &kdf_oid))
    return ident_pkcs8_fail(error, "PBES2 without a keyDerivationFunc");
  if (!ident_der_oid_is(&kdf_oid, oid_pbkdf2, sizeof oid_pbkdf2)) {
    g_autofree char *name = ident_der_oid_name(&kdf_oid);
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY,
                "PBES2 with key derivation %s; only PBKDF2 is accepted", name);
    return FALSE;
  }
  if (!ident_der_read(&kdf, DER_SEQUENCE, &kdf_params) || kdf.len != 0 ||
      !ident_der_read(&kdf_params, DER_OCTET_STRING, &salt) || salt.len == 0 ||
      !ident_der_read(&kdf_params, DER_INTEGER, &iter) || iter.len == 0 || iter.len > 8 ||
      (iter.p[0] & 0x80) != 0)
    return ident_pkcs8_fail(error, "malformed PBKDF2 parameters");
  /* Optional keyLength, then the optional prf (default hmacWithSHA1). */
  if (kdf_params.len > 0 && kdf_params.p[0] == DER_INTEGER) {
    IdentDer key_len;
    if (!ident_der_read(&kdf_params, DER_INTEGER, &key_len))
      return ident_pkcs8_fail(error, "malformed PBKDF2 keyLength");
  }
  if (kdf_params.len > 0) {
    IdentDer prf_alg, prf_oid;
    if (!ident_der_read(&kdf_params, DER_SEQUENCE, &prf_alg) || kdf_params.len != 0 ||
        !ident_der_read(&prf_alg, DER_OID, &prf_oid))
      return ident_pkcs8_fail(error, "malformed PBKDF2 prf");
    prf = ident_der_oid_name(&prf_oid);
  } else {
    prf = g_strdup("hmacWithSHA1");
  }
  if (!ident_der_read(&params, DER_SEQUENCE, &enc) || params.len != 0 ||
      !ident_der_read(&enc, DER_OID, &enc_oid))
    return ident_pkcs8_fail(error, "PBES2 without an encryptionScheme");
  cipher = ident_der_oid_name(&enc_oid);
  if (!ident_der_read(&info, DER_OCTET_STRING, &blob) || blob.len == 0 || info.len != 0)
    return ident_pkcs8_fail(error, "no encryptedData");
  if (scheme != NULL)
    *scheme = g_strdup_printf("PBES2, PBKDF2 %s, %s", prf, cipher);
  return TRUE;
}

/* The DER of the first PEM block labelled @label in @data, in wiped memory;
 * NULL with @error set when there is none or it does not decode. */
static GBytes *
ident_pem_decode(const guint8 *data, gsize len, const char *label, GError **error)
{
  gnutls_datum_t in = {(unsigned char *)data, (unsigned int)len};
  gnutls_datum_t out = {NULL, 0};
  GBytes *bytes;
  int rc;

  rc = gnutls_pem_base64_decode2(label, &in, &out);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "no readable PEM \"%s\" block: %s", label,
                gnutls_strerror(rc));
    return NULL;
  }
  bytes = ident_secret_bytes_new(out.data, out.size);
  gnutls_memset(out.data, 0, out.size);
  gnutls_free(out.data);
  return bytes;
}

static gboolean
ident_is_pem(const guint8 *data, gsize len)
{
  static const char marker[] = "-----BEGIN ";

  return memmem(data, len, marker, sizeof marker - 1) != NULL;
}

GBytes *
ident_pkcs8_check_encrypted(const guint8 *data, gsize len, char **scheme, GError **error)
{
  static const char encrypted_label[] = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
  g_autoptr(GBytes) der = NULL;

  g_return_val_if_fail(data != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (len == 0 || len > IDENT_KEY_MAX_SIZE) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "%s key file",
                len == 0 ? "empty" : "oversized");
    return NULL;
  }
  if (ident_is_pem(data, len)) {
    if (memmem(data, len, encrypted_label, sizeof encrypted_label - 1) == NULL) {
      ident_pkcs8_fail(error, "no PEM \"ENCRYPTED PRIVATE KEY\" block");
      return NULL;
    }
    der = ident_pem_decode(data, len, "ENCRYPTED PRIVATE KEY", error);
    if (der == NULL)
      return NULL;
  } else {
    der = g_bytes_new(data, len);
  }
  if (!ident_pkcs8_parse_encrypted(g_bytes_get_data(der, NULL), g_bytes_get_size(der), scheme,
                                   error))
    return NULL;
  /* Encrypted: no need for wiped memory from here on. */
  return g_bytes_new(g_bytes_get_data(der, NULL), g_bytes_get_size(der));
}

GBytes *
ident_cert_match_private_key(IdentCert *cert, const guint8 *data, gsize len, GError **error)
{
  g_auto(gnutls_x509_privkey_t) key = NULL;
  gnutls_datum_t in = {(unsigned char *)data, (unsigned int)len};
  guint8 cert_id[32], key_id[32];
  size_t cert_id_len = sizeof cert_id, key_id_len = sizeof key_id;
  gboolean pem;
  int rc;

  g_return_val_if_fail(cert != NULL, NULL);
  g_return_val_if_fail(data != NULL || len == 0, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (len == 0 || len > IDENT_KEY_MAX_SIZE) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "%s key file",
                len == 0 ? "empty" : "oversized");
    return NULL;
  }
  pem = ident_is_pem(data, len);
  /* Refuse encrypted keys up front: GnuTLS would only say "decryption failed". */
  if ((pem && (memmem(data, len, "ENCRYPTED PRIVATE KEY", 21) != NULL ||
               memmem(data, len, "Proc-Type: 4,ENCRYPTED", 22) != NULL)) ||
      (!pem && ident_pkcs8_parse_encrypted(data, len, NULL, NULL))) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY,
                "the private key is encrypted; give it as encrypted PKCS#8 instead, or "
                "decrypt it first");
    return NULL;
  }
  rc = gnutls_x509_privkey_init(&key);
  if (rc < 0) {
    key = NULL;
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_CRYPTO, "gnutls_x509_privkey_init: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_x509_privkey_import2(key, &in, pem ? GNUTLS_X509_FMT_PEM : GNUTLS_X509_FMT_DER, NULL,
                                   0);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "not a readable %s private key: %s",
                pem ? "PEM" : "DER", gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_x509_privkey_verify_params(key);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "inconsistent private key: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  /* Both ids hash the SubjectPublicKeyInfo. */
  rc = gnutls_x509_crt_get_key_id(cert->crt, GNUTLS_KEYID_USE_SHA256, cert_id, &cert_id_len);
  if (rc >= 0)
    rc = gnutls_x509_privkey_get_key_id(key, GNUTLS_KEYID_USE_SHA256, key_id, &key_id_len);
  if (rc < 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY, "cannot compare the keys: %s",
                gnutls_strerror(rc));
    return NULL;
  }
  if (cert_id_len != key_id_len || memcmp(cert_id, key_id, cert_id_len) != 0) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_KEY,
                "the private key does not belong to the certificate's public key");
    return NULL;
  }
  return ident_privkey_export_pkcs8(key, error);
}

/* ---- Generating a credential ---- */

static guint32
ident_random_u32(void)
{
  guint32 r = 0;

  /* g_random would do for jitter, but the nonce generator is at hand and
   * never fails in practice; fall back to g_random if it does. */
  if (gnutls_rnd(GNUTLS_RND_NONCE, &r, sizeof r) < 0)
    r = g_random_int();
  return r;
}

#define IDENT_CHECK(call, what)                                                                   \
  do {                                                                                            \
    int rc_ = (call);                                                                             \
    if (rc_ < 0) {                                                                                \
      g_set_error(error, IDENT_ERROR, IDENT_ERROR_CRYPTO, "%s: %s", (what),                       \
                  gnutls_strerror(rc_));                                                          \
      return NULL;                                                                                \
    }                                                                                             \
  } while (0)

IdentCert *
ident_cert_generate(const char *aor, guint bits, guint days, gint64 now, GBytes **pkcs8,
                    GError **error)
{
  static const char fallback_cn[] = "SIP user";
  g_auto(gnutls_x509_privkey_t) key = NULL;
  g_auto(gnutls_x509_crt_t) crt = NULL;
  gnutls_datum_t der = {NULL, 0};
  g_autofree char *user = NULL;
  g_autofree char *host = NULL;
  g_autoptr(GBytes) key_der = NULL;
  IdentCert *cert;
  guint8 serial[16];
  guint8 key_id[64];
  size_t key_id_len = sizeof key_id;
  gint64 span, jitter, not_before;
  const char *cn;

  g_return_val_if_fail(aor != NULL, NULL);
  g_return_val_if_fail(pkcs8 != NULL && *pkcs8 == NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!ident_aor_split(aor, &user, &host)) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE, "AOR %s is not sip:user@host", aor);
    return NULL;
  }
  if (bits != 2048 && bits != 3072) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "%u-bit RSA keys are not offered: use 2048 or 3072", bits);
    return NULL;
  }
  if (days < 1 || days > IDENT_CRED_MAX_DAYS) {
    g_set_error(error, IDENT_ERROR, IDENT_ERROR_PROFILE,
                "a validity of %u days is outside 1 to %d", days, IDENT_CRED_MAX_DAYS);
    return NULL;
  }
  span = (gint64)days * 86400;
  jitter = ident_random_u32() % (span / 10 + 1);
  not_before = now - IDENT_CRED_BACKDATE;
  /* ub-common-name is 64; a longer AOR still lives in the subjectAltName. */
  cn = strlen(aor) <= 64 ? aor : fallback_cn;

  IDENT_CHECK(gnutls_x509_privkey_init(&key), "gnutls_x509_privkey_init");
  IDENT_CHECK(gnutls_x509_privkey_generate(key, GNUTLS_PK_RSA, bits, 0), "generating the key");
  IDENT_CHECK(gnutls_x509_crt_init(&crt), "gnutls_x509_crt_init");
  IDENT_CHECK(gnutls_x509_crt_set_version(crt, 3), "setting the version");
  IDENT_CHECK(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial), "random serial");
  /* Positive and of full length (RFC 5280 4.1.2.2). */
  serial[0] = (guint8)((serial[0] & 0x7f) | 0x40);
  IDENT_CHECK(gnutls_x509_crt_set_serial(crt, serial, sizeof serial), "setting the serial");
  IDENT_CHECK(gnutls_x509_crt_set_activation_time(crt, (time_t)not_before), "setting notBefore");
  IDENT_CHECK(gnutls_x509_crt_set_expiration_time(crt, (time_t)(not_before + span - jitter)),
              "setting notAfter");
  IDENT_CHECK(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn, strlen(cn)),
              "setting the subject");
  IDENT_CHECK(
      gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_URI, aor, strlen(aor), GNUTLS_FSAN_SET),
      "setting the subjectAltName");
  IDENT_CHECK(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), "setting basicConstraints");
  IDENT_CHECK(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
                                                     GNUTLS_KEY_KEY_ENCIPHERMENT),
              "setting keyUsage");
  IDENT_CHECK(gnutls_x509_crt_set_key(crt, key), "setting the public key");
  IDENT_CHECK(gnutls_x509_crt_get_key_id(crt, 0, key_id, &key_id_len), "computing the key id");
  IDENT_CHECK(gnutls_x509_crt_set_subject_key_id(crt, key_id, key_id_len),
              "setting subjectKeyIdentifier");
  /* Self-signed: the issuer is the subject. RSA with SHA-256 is
   * sha256WithRSAEncryption (PKCS#1 v1.5), as section 10.6 asks. */
  IDENT_CHECK(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), "signing");
  IDENT_CHECK(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), "exporting");

  cert = ident_cert_new_from_data(der.data, der.size, error);
  gnutls_free(der.data);
  if (cert == NULL)
    return NULL;
  key_der = ident_privkey_export_pkcs8(key, error);
  if (key_der == NULL) {
    ident_cert_free(cert);
    return NULL;
  }
  *pkcs8 = g_steal_pointer(&key_der);
  return cert;
}
