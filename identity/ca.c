#define G_LOG_DOMAIN "sipcred-ca"

#include "identity/ca.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/abstract.h>
#include <gnutls/pkcs12.h>
#include <gnutls/x509.h>
#include <glib/gstdio.h>

/* clang-format off */
G_DEFINE_QUARK(sipcred-ca-error-quark, ident_ca_error)
/* clang-format on */

#define CA_RSA_BITS 2048
#define CA_SERIAL_LEN 16
#define CA_BACKDATE (5 * 60) /* clock skew between the CA and its users */
#define CA_DAY (24 * 60 * 60)
#define CA_FILE_MAX (1024 * 1024) /* far above any certificate, key or index here */
#define CA_OID_KP_SIP_DOMAIN "1.3.6.1.5.5.7.3.20" /* RFC 5924 */
#define CA_MODE_PUBLIC 0644
#define CA_MODE_SECRET 0600

G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_privkey_t, gnutls_x509_privkey_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_crt_t, gnutls_x509_crt_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_crl_t, gnutls_x509_crl_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_privkey_t, gnutls_privkey_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_pkcs12_t, gnutls_pkcs12_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_pkcs12_bag_t, gnutls_pkcs12_bag_deinit, NULL)

struct _IdentCa {
  char *dir;
  gnutls_x509_crt_t crt;
  gnutls_x509_privkey_t key;
  gnutls_privkey_t signer; /* wraps @key, does not own it */
};

/* One line of the index. */
typedef struct {
  char status;  /* 'V' valid, 'R' revoked */
  char *serial; /* lower-case hex */
  gint64 not_after;
  gint64 revoked_at; /* 0 when valid */
  char *name;
} CaEntry;

static void
ca_entry_free(CaEntry *e)
{
  g_free(e->serial);
  g_free(e->name);
  g_free(e);
}

/* ---- small helpers ---- */

static gboolean
ca_gnutls_fail(GError **error, int rc, const char *what)
{
  g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_CRYPTO, "%s: %s", what, gnutls_strerror(rc));
  return FALSE;
}

/* Frees a GnuTLS buffer that held key material. */
static void
ca_datum_wipe(gnutls_datum_t *d)
{
  if (d->data != NULL) {
    explicit_bzero(d->data, d->size);
    gnutls_free(d->data);
  }
  d->data = NULL;
  d->size = 0;
}

static void
ca_datum_free(gnutls_datum_t *d)
{
  gnutls_free(d->data);
  d->data = NULL;
  d->size = 0;
}

static gboolean
ca_path_exists(const char *path)
{
  GStatBuf st;

  /* lstat: a dangling symlink counts, it would be written through. */
  return g_lstat(path, &st) == 0;
}

static gboolean
ca_write(const char *path, const void *data, gsize len, int mode, GError **error)
{
  g_autoptr(GError) local = NULL;

  /* Temp file with @mode, then rename: never a moment with a key readable by
   * others, and never a half-written file under the final name. */
  if (!g_file_set_contents_full(path, data, (gssize)len, G_FILE_SET_CONTENTS_CONSISTENT, mode,
                                &local)) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_IO, "%s", local->message);
    return FALSE;
  }
  return TRUE;
}

static gboolean
ca_write_datum(const char *path, const gnutls_datum_t *d, int mode, GError **error)
{
  return ca_write(path, d->data, d->size, mode, error);
}

/* Reads a whole file, bounded. */
static gboolean
ca_read(const char *path, char **data, gsize *len, GError **error)
{
  g_autoptr(GError) local = NULL;

  if (!g_file_get_contents(path, data, len, &local)) {
    g_set_error(error, IDENT_CA_ERROR,
                g_error_matches(local, G_FILE_ERROR, G_FILE_ERROR_NOENT) ? IDENT_CA_ERROR_BAD_CA
                                                                         : IDENT_CA_ERROR_IO,
                "%s", local->message);
    return FALSE;
  }
  if (*len > CA_FILE_MAX) {
    explicit_bzero(*data, *len);
    g_clear_pointer(data, g_free);
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_IO, "%s: larger than %d bytes", path,
                CA_FILE_MAX);
    return FALSE;
  }
  return TRUE;
}

static void
ca_secret_free(char *s, gsize len)
{
  if (s != NULL) {
    explicit_bzero(s, len);
    g_free(s);
  }
}

static char *
ca_hex(const guint8 *data, gsize len)
{
  GString *out = g_string_sized_new(len * 2);

  for (gsize i = 0; i < len; i++)
    g_string_append_printf(out, "%02x", data[i]);
  return g_string_free(out, FALSE);
}

/* Lower-case hex to bytes; NULL for anything else. */
static GBytes *
ca_unhex(const char *hex)
{
  gsize n = strlen(hex);
  g_autofree guint8 *out = NULL;

  if (n == 0 || n % 2 != 0 || n > 2 * 20)
    return NULL;
  out = g_malloc(n / 2);
  for (gsize i = 0; i < n / 2; i++) {
    int hi = g_ascii_xdigit_value(hex[2 * i]);
    int lo = g_ascii_xdigit_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return NULL;
    out[i] = (guint8)(hi << 4 | lo);
  }
  return g_bytes_new_take(g_steal_pointer(&out), n / 2);
}

/* A domain name that is also a safe file name. */
static gboolean
ca_valid_domain(const char *s)
{
  gsize n = strlen(s);

  if (n == 0 || n > 253 || !g_ascii_isalnum(s[0]) || !g_ascii_isalnum(s[n - 1]))
    return FALSE;
  for (gsize i = 0; i < n; i++) {
    if (!g_ascii_isalnum(s[i]) && s[i] != '-' && s[i] != '.')
      return FALSE;
    if (s[i] == '.' && s[i + 1] == '.')
      return FALSE;
  }
  return TRUE;
}

/* A user part that is also a safe file name (no '/', no leading dot). */
static gboolean
ca_valid_user(const char *s)
{
  gsize n = strlen(s);

  if (n == 0 || n > 64 || !g_ascii_isalnum(s[0]))
    return FALSE;
  for (gsize i = 0; i < n; i++)
    if (!g_ascii_isalnum(s[i]) && strchr("._+-", s[i]) == NULL)
      return FALSE;
  return TRUE;
}

/* "sip:user@host", "sips:user@host" or "user@host" into its parts. */
static gboolean
ca_split_aor(const char *aor, char **user, char **host, GError **error)
{
  const char *rest = aor, *at;

  if (g_ascii_strncasecmp(rest, "sip:", 4) == 0)
    rest += 4;
  else if (g_ascii_strncasecmp(rest, "sips:", 5) == 0)
    rest += 5;
  at = strchr(rest, '@');
  if (at == NULL || strchr(at + 1, '@') != NULL) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID,
                "'%s' is not an AOR of the form sip:user@domain", aor);
    return FALSE;
  }
  *user = g_strndup(rest, (gsize)(at - rest));
  *host = g_ascii_strdown(at + 1, -1);
  if (!ca_valid_user(*user) || !ca_valid_domain(*host)) {
    g_clear_pointer(user, g_free);
    g_clear_pointer(host, g_free);
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID,
                "'%s': the user part may hold letters, digits and . _ + - (at most 64), the "
                "domain letters, digits, dots and hyphens",
                aor);
    return FALSE;
  }
  return TRUE;
}

static gboolean
ca_check_days(guint days, GError **error)
{
  if (days > IDENT_CA_MAX_DAYS) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID, "validity of %u days is over %d",
                days, IDENT_CA_MAX_DAYS);
    return FALSE;
  }
  return TRUE;
}

/* Validity as sec-flows' makeCert has it: @days 0 is already expired. */
static void
ca_validity(guint days, gint64 now, gint64 *not_before, gint64 *not_after)
{
  if (days == 0) {
    *not_before = now - 2 * CA_DAY;
    *not_after = now - CA_DAY;
  } else {
    *not_before = now - CA_BACKDATE;
    *not_after = now + (gint64)days * CA_DAY;
  }
}

/* ---- certificate building ---- */

static gboolean
ca_new_key(gnutls_x509_privkey_t *out, GError **error)
{
  g_auto(gnutls_x509_privkey_t) key = NULL;
  int rc;

  rc = gnutls_x509_privkey_init(&key);
  if (rc < 0) {
    key = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_x509_privkey_init");
  }
  rc = gnutls_x509_privkey_generate(key, GNUTLS_PK_RSA, CA_RSA_BITS, 0);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "generating an RSA key");
  *out = g_steal_pointer(&key);
  return TRUE;
}

typedef struct {
  const char *oid;
  const char *value;
} CaRdn;

/* A new v3 certificate with everything every certificate here has: serial,
 * validity, subject, public key and subject key identifier. */
static gboolean
ca_crt_start(gnutls_x509_crt_t *out, gnutls_x509_privkey_t key, const CaRdn *rdns, gsize n_rdns,
             gint64 not_before, gint64 not_after, GError **error)
{
  g_auto(gnutls_x509_crt_t) crt = NULL;
  guint8 serial[CA_SERIAL_LEN];
  guint8 id[64];
  size_t id_len = sizeof id;
  int rc;

  rc = gnutls_x509_crt_init(&crt);
  if (rc < 0) {
    crt = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_x509_crt_init");
  }
  rc = gnutls_x509_crt_set_version(crt, 3);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "setting the version");
  /* 128 random bits, positive, and a non-zero first byte so the encoding
   * keeps all 16 bytes. */
  rc = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "random serial");
  serial[0] &= 0x7f;
  if (serial[0] == 0)
    serial[0] = 0x01;
  rc = gnutls_x509_crt_set_serial(crt, serial, sizeof serial);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "setting the serial");
  rc = gnutls_x509_crt_set_activation_time(crt, (time_t)not_before);
  if (rc >= 0)
    rc = gnutls_x509_crt_set_expiration_time(crt, (time_t)not_after);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "setting the validity");
  for (gsize i = 0; i < n_rdns; i++) {
    rc = gnutls_x509_crt_set_dn_by_oid(crt, rdns[i].oid, 0, rdns[i].value,
                                       (unsigned int)strlen(rdns[i].value));
    if (rc < 0)
      return ca_gnutls_fail(error, rc, "setting the subject");
  }
  rc = gnutls_x509_crt_set_key(crt, key);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "setting the public key");
  rc = gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA1, id, &id_len);
  if (rc >= 0)
    rc = gnutls_x509_crt_set_subject_key_id(crt, id, id_len);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "setting the subject key identifier");
  *out = g_steal_pointer(&crt);
  return TRUE;
}

static gboolean
ca_crt_sign(gnutls_x509_crt_t crt, gnutls_x509_crt_t issuer, gnutls_privkey_t signer,
            GError **error)
{
  guint8 id[64];
  size_t id_len = sizeof id;
  unsigned int critical = 0;
  int rc;

  rc = gnutls_x509_crt_get_subject_key_id(issuer, id, &id_len, &critical);
  if (rc >= 0)
    rc = gnutls_x509_crt_set_authority_key_id(crt, id, id_len);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "setting the authority key identifier");
  rc = gnutls_x509_crt_privkey_sign(crt, issuer, signer, GNUTLS_DIG_SHA256, 0);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "signing the certificate");
  return TRUE;
}

static char *
ca_crt_serial_hex(gnutls_x509_crt_t crt)
{
  guint8 serial[64];
  size_t len = sizeof serial;

  if (gnutls_x509_crt_get_serial(crt, serial, &len) < 0)
    return NULL;
  return ca_hex(serial, len);
}

/* ---- the index ---- */

static char *
ca_path(IdentCa *ca, const char *name)
{
  return g_build_filename(ca->dir, name, NULL);
}

static GPtrArray *
ca_index_load(IdentCa *ca, GError **error)
{
  g_autoptr(GPtrArray) entries = g_ptr_array_new_with_free_func((GDestroyNotify)ca_entry_free);
  g_autofree char *path = ca_path(ca, "index");
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;
  gsize len = 0;

  if (!ca_path_exists(path))
    return g_steal_pointer(&entries);
  if (!ca_read(path, &text, &len, error))
    return NULL;
  lines = g_strsplit(text, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++) {
    g_auto(GStrv) f = NULL;
    CaEntry *e;

    if (lines[i][0] == '\0' || lines[i][0] == '#')
      continue;
    f = g_strsplit(lines[i], " ", 5);
    if (g_strv_length(f) != 5 || (strcmp(f[0], "V") != 0 && strcmp(f[0], "R") != 0)) {
      g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA, "%s: line %u is not an entry",
                  path, i + 1);
      return NULL;
    }
    g_autoptr(GBytes) serial = ca_unhex(f[1]);
    if (serial == NULL) {
      g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA, "%s: line %u: bad serial", path,
                  i + 1);
      return NULL;
    }
    e = g_new0(CaEntry, 1);
    e->status = f[0][0];
    e->serial = g_ascii_strdown(f[1], -1);
    e->not_after = g_ascii_strtoll(f[2], NULL, 10);
    e->revoked_at = strcmp(f[3], "-") == 0 ? 0 : g_ascii_strtoll(f[3], NULL, 10);
    e->name = g_strdup(f[4]);
    g_ptr_array_add(entries, e);
  }
  return g_steal_pointer(&entries);
}

static gboolean
ca_index_save(IdentCa *ca, GPtrArray *entries, GError **error)
{
  g_autofree char *path = ca_path(ca, "index");
  g_autoptr(GString) out =
      g_string_new("# sipcred ca index: V|R SERIAL NOT_AFTER REVOKED_AT|- NAME\n");

  for (guint i = 0; i < entries->len; i++) {
    CaEntry *e = entries->pdata[i];

    g_string_append_printf(out, "%c %s %" G_GINT64_FORMAT " ", e->status, e->serial, e->not_after);
    if (e->status == 'R')
      g_string_append_printf(out, "%" G_GINT64_FORMAT, e->revoked_at);
    else
      g_string_append_c(out, '-');
    g_string_append_printf(out, " %s\n", e->name);
  }
  return ca_write(path, out->str, out->len, CA_MODE_PUBLIC, error);
}

static gboolean
ca_index_add(IdentCa *ca, const char *serial, gint64 not_after, const char *name, GError **error)
{
  g_autoptr(GPtrArray) entries = ca_index_load(ca, error);
  CaEntry *e;

  if (entries == NULL)
    return FALSE;
  e = g_new0(CaEntry, 1);
  e->status = 'V';
  e->serial = g_strdup(serial);
  e->not_after = not_after;
  e->name = g_strdup(name);
  g_ptr_array_add(entries, e);
  return ca_index_save(ca, entries, error);
}

/* ---- the CA ---- */

void
ident_ca_free(IdentCa *ca)
{
  if (ca == NULL)
    return;
  if (ca->signer != NULL)
    gnutls_privkey_deinit(ca->signer);
  if (ca->key != NULL)
    gnutls_x509_privkey_deinit(ca->key);
  if (ca->crt != NULL)
    gnutls_x509_crt_deinit(ca->crt);
  g_free(ca->dir);
  g_free(ca);
}

const char *
ident_ca_get_dir(IdentCa *ca)
{
  g_return_val_if_fail(ca != NULL, NULL);
  return ca->dir;
}

static gboolean
ca_set_signer(IdentCa *ca, GError **error)
{
  int rc = gnutls_privkey_init(&ca->signer);

  if (rc < 0) {
    ca->signer = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_privkey_init");
  }
  rc = gnutls_privkey_import_x509(ca->signer, ca->key, 0);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "gnutls_privkey_import_x509");
  return TRUE;
}

IdentCa *
ident_ca_create(const char *dir, const char *cn, guint days, gint64 now, IdentCaFlags flags,
                GError **error)
{
  static const char *const outputs[] = {"ca.pem", "ca.der", "ca.key"};
  g_autoptr(IdentCa) ca = NULL;
  gnutls_datum_t pem = {NULL, 0}, der = {NULL, 0}, key_pem = {NULL, 0};
  gint64 not_before, not_after;
  gboolean ok;
  int rc;

  g_return_val_if_fail(dir != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (cn == NULL)
    cn = IDENT_CA_DEFAULT_CN;
  if (cn[0] == '\0' || strlen(cn) > 64 || !g_utf8_validate(cn, -1, NULL)) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID,
                "the CA name must be 1 to 64 bytes of UTF-8");
    return NULL;
  }
  if (!ca_check_days(days, error))
    return NULL;
  if (g_mkdir_with_parents(dir, 0755) != 0) {
    int saved = errno;
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_IO, "cannot create %s: %s", dir,
                g_strerror(saved));
    return NULL;
  }
  ca = g_new0(IdentCa, 1);
  ca->dir = g_strdup(dir);
  if (!(flags & IDENT_CA_FLAG_FORCE)) {
    for (gsize i = 0; i < G_N_ELEMENTS(outputs); i++) {
      g_autofree char *path = ca_path(ca, outputs[i]);
      if (ca_path_exists(path)) {
        g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_EXISTS,
                    "%s exists (--force replaces it, and forgets what the old CA issued)", path);
        return NULL;
      }
    }
  }

  const CaRdn rdns[] = {
      {GNUTLS_OID_X520_COUNTRY_NAME, "US"},
      {GNUTLS_OID_X520_STATE_OR_PROVINCE_NAME, "California"},
      {GNUTLS_OID_X520_LOCALITY_NAME, "San Jose"},
      {GNUTLS_OID_X520_ORGANIZATION_NAME, "sipit"},
      {GNUTLS_OID_X520_ORGANIZATIONAL_UNIT_NAME, "Sipit Test Certificate Authority"},
      {GNUTLS_OID_X520_COMMON_NAME, cn},
  };
  if (!ca_new_key(&ca->key, error) || !ca_set_signer(ca, error))
    return NULL;
  ca_validity(days, now, &not_before, &not_after);
  if (!ca_crt_start(&ca->crt, ca->key, rdns, G_N_ELEMENTS(rdns), not_before, not_after, error))
    return NULL;
  rc = gnutls_x509_crt_set_basic_constraints(ca->crt, 1, -1);
  if (rc < 0) {
    ca_gnutls_fail(error, rc, "setting basicConstraints");
    return NULL;
  }
  rc = gnutls_x509_crt_set_key_usage(ca->crt, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN);
  if (rc < 0) {
    ca_gnutls_fail(error, rc, "setting keyUsage");
    return NULL;
  }
  if (!ca_crt_sign(ca->crt, ca->crt, ca->signer, error))
    return NULL;

  rc = gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_PEM, &pem);
  if (rc >= 0)
    rc = gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_DER, &der);
  if (rc >= 0)
    rc = gnutls_x509_privkey_export2_pkcs8(ca->key, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN,
                                           &key_pem);
  if (rc < 0) {
    ca_datum_free(&pem);
    ca_datum_free(&der);
    ca_gnutls_fail(error, rc, "exporting the CA");
    return NULL;
  }
  {
    g_autofree char *p_key = ca_path(ca, "ca.key");
    g_autofree char *p_pem = ca_path(ca, "ca.pem");
    g_autofree char *p_der = ca_path(ca, "ca.der");
    g_autofree char *p_crlnum = ca_path(ca, "crlnumber");
    g_autoptr(GPtrArray) none = g_ptr_array_new();

    /* The key first: a certificate without its key would be useless. A new
     * CA starts a new index, and old serials mean nothing to it. */
    ok = ca_write_datum(p_key, &key_pem, CA_MODE_SECRET, error) &&
         ca_write_datum(p_pem, &pem, CA_MODE_PUBLIC, error) &&
         ca_write_datum(p_der, &der, CA_MODE_PUBLIC, error) && ca_index_save(ca, none, error) &&
         ca_write(p_crlnum, "0\n", 2, CA_MODE_PUBLIC, error);
  }
  ca_datum_wipe(&key_pem);
  ca_datum_free(&pem);
  ca_datum_free(&der);
  if (!ok)
    return NULL;
  /* Read back from disk: a certificate GnuTLS built in memory lacks the raw
   * names that issuer matching compares, so later verifications fail. */
  ident_ca_free(g_steal_pointer(&ca));
  return ident_ca_open(dir, error);
}

IdentCa *
ident_ca_open(const char *dir, GError **error)
{
  g_autoptr(IdentCa) ca = NULL;
  g_autofree char *p_pem = NULL;
  g_autofree char *p_key = NULL;
  g_autofree char *pem = NULL;
  char *key = NULL;
  gsize pem_len = 0, key_len = 0;
  gnutls_datum_t d;
  guint8 id_crt[64], id_key[64];
  size_t id_crt_len = sizeof id_crt, id_key_len = sizeof id_key;
  unsigned int is_ca = 0, critical = 0;
  int pathlen = 0, rc;

  g_return_val_if_fail(dir != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  ca = g_new0(IdentCa, 1);
  ca->dir = g_strdup(dir);
  p_pem = ca_path(ca, "ca.pem");
  p_key = ca_path(ca, "ca.key");
  if (!ca_read(p_pem, &pem, &pem_len, error)) {
    g_prefix_error(error, "not a CA directory ('sipcred ca init DIR' makes one): ");
    return NULL;
  }
  rc = gnutls_x509_crt_init(&ca->crt);
  if (rc < 0) {
    ca->crt = NULL;
    ca_gnutls_fail(error, rc, "gnutls_x509_crt_init");
    return NULL;
  }
  d.data = (unsigned char *)pem;
  d.size = (unsigned int)pem_len;
  rc = gnutls_x509_crt_import(ca->crt, &d, GNUTLS_X509_FMT_PEM);
  if (rc < 0) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA, "%s: not a PEM certificate: %s",
                p_pem, gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_x509_crt_get_basic_constraints(ca->crt, &critical, &is_ca, &pathlen);
  if (rc < 0 || !is_ca) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA, "%s: not a CA certificate", p_pem);
    return NULL;
  }

  if (!ca_read(p_key, &key, &key_len, error))
    return NULL;
  rc = gnutls_x509_privkey_init(&ca->key);
  if (rc < 0) {
    ca->key = NULL;
    ca_secret_free(key, key_len);
    ca_gnutls_fail(error, rc, "gnutls_x509_privkey_init");
    return NULL;
  }
  d.data = (unsigned char *)key;
  d.size = (unsigned int)key_len;
  rc = gnutls_x509_privkey_import2(ca->key, &d, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN);
  ca_secret_free(key, key_len);
  if (rc < 0) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA,
                "%s: not an unencrypted PEM private key: %s", p_key, gnutls_strerror(rc));
    return NULL;
  }
  rc = gnutls_x509_crt_get_key_id(ca->crt, GNUTLS_KEYID_USE_SHA256, id_crt, &id_crt_len);
  if (rc >= 0)
    rc = gnutls_x509_privkey_get_key_id(ca->key, GNUTLS_KEYID_USE_SHA256, id_key, &id_key_len);
  if (rc < 0 || id_crt_len != id_key_len || memcmp(id_crt, id_key, id_crt_len) != 0) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA,
                "%s is not the key of the certificate in %s", p_key, p_pem);
    return NULL;
  }
  if (!ca_set_signer(ca, error))
    return NULL;
  return g_steal_pointer(&ca);
}

/* ---- issuing ---- */

/* The PKCS#12 of sec-flows' makeCert: the certificate and its key, the key
 * bag shrouded and the certificate bag encrypted under @password, with a MAC,
 * both tied by the key identifier so importers pair them. */
static gboolean
ca_pkcs12(gnutls_x509_crt_t crt, const gnutls_datum_t *p8_encrypted, const char *friendly,
          const char *password, gnutls_datum_t *out, GError **error)
{
  g_auto(gnutls_pkcs12_t) p12 = NULL;
  g_auto(gnutls_pkcs12_bag_t) cbag = NULL;
  g_auto(gnutls_pkcs12_bag_t) kbag = NULL;
  guint8 id[20];
  size_t id_len = sizeof id;
  gnutls_datum_t key_id;
  int rc, idx;

  rc = gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA1, id, &id_len);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "key identifier");
  key_id.data = id;
  key_id.size = (unsigned int)id_len;

  rc = gnutls_pkcs12_bag_init(&cbag);
  if (rc < 0) {
    cbag = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_pkcs12_bag_init");
  }
  idx = gnutls_pkcs12_bag_set_crt(cbag, crt);
  if (idx < 0)
    return ca_gnutls_fail(error, idx, "PKCS#12 certificate bag");
  rc = gnutls_pkcs12_bag_set_key_id(cbag, (unsigned int)idx, &key_id);
  if (rc >= 0)
    rc = gnutls_pkcs12_bag_set_friendly_name(cbag, (unsigned int)idx, friendly);
  if (rc >= 0)
    rc = gnutls_pkcs12_bag_encrypt(cbag, password, GNUTLS_PKCS_PBES2_AES_256);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "PKCS#12 certificate bag");

  rc = gnutls_pkcs12_bag_init(&kbag);
  if (rc < 0) {
    kbag = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_pkcs12_bag_init");
  }
  idx = gnutls_pkcs12_bag_set_data(kbag, GNUTLS_BAG_PKCS8_ENCRYPTED_KEY, p8_encrypted);
  if (idx < 0)
    return ca_gnutls_fail(error, idx, "PKCS#12 key bag");
  rc = gnutls_pkcs12_bag_set_key_id(kbag, (unsigned int)idx, &key_id);
  if (rc >= 0)
    rc = gnutls_pkcs12_bag_set_friendly_name(kbag, (unsigned int)idx, friendly);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "PKCS#12 key bag");

  rc = gnutls_pkcs12_init(&p12);
  if (rc < 0) {
    p12 = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_pkcs12_init");
  }
  rc = gnutls_pkcs12_set_bag(p12, cbag);
  if (rc >= 0)
    rc = gnutls_pkcs12_set_bag(p12, kbag);
  if (rc >= 0)
    rc = gnutls_pkcs12_generate_mac2(p12, GNUTLS_MAC_SHA256, password);
  if (rc >= 0)
    rc = gnutls_pkcs12_export2(p12, GNUTLS_X509_FMT_DER, out);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "building the PKCS#12");
  return TRUE;
}

/* Everything ident_ca_issue() writes, in memory. */
typedef struct {
  gnutls_datum_t pem, der; /* certificate */
  gnutls_datum_t key, p8;  /* PKCS#8 PEM plain, DER encrypted */
  gnutls_datum_t p12;
} CaOutputs;

static void
ca_outputs_clear(CaOutputs *o)
{
  ca_datum_free(&o->pem);
  ca_datum_free(&o->der);
  ca_datum_wipe(&o->key);
  ca_datum_free(&o->p8);
  ca_datum_free(&o->p12);
}

static gboolean
ca_same_dir(const char *a, const char *b)
{
  GStatBuf sa, sb;

  if (g_stat(a, &sa) != 0 || g_stat(b, &sb) != 0)
    return g_strcmp0(a, b) == 0;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

char *
ident_ca_issue(IdentCa *ca, IdentCaKind kind, const char *subject, guint days, gint64 now,
               const char *password, const char *out_dir, IdentCaFlags flags, GError **error)
{
  static const char *const exts[] = {".pem", ".der", ".key", ".p8", ".p12"};
  g_auto(gnutls_x509_privkey_t) key = NULL;
  g_auto(gnutls_x509_crt_t) crt = NULL;
  g_autofree char *user = NULL;
  g_autofree char *host = NULL;
  g_autofree char *cn = NULL;
  g_autofree char *name = NULL;
  g_autofree char *serial = NULL;
  g_autoptr(GPtrArray) sans = g_ptr_array_new_with_free_func(g_free);
  CaOutputs o = {{0}};
  CaRdn rdns[5] = {
      {GNUTLS_OID_X520_COUNTRY_NAME, "US"},
      {GNUTLS_OID_X520_STATE_OR_PROVINCE_NAME, "California"},
      {GNUTLS_OID_X520_LOCALITY_NAME, "San Jose"},
      {GNUTLS_OID_X520_ORGANIZATION_NAME, "sipit"},
      {GNUTLS_OID_X520_COMMON_NAME, NULL},
  };
  gsize n_rdns = 4;
  gint64 not_before, not_after;
  const char *kp;
  gboolean ok;
  int rc;

  g_return_val_if_fail(ca != NULL, NULL);
  g_return_val_if_fail(subject != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (password == NULL)
    password = IDENT_CA_DEFAULT_PASSWORD;
  if (password[0] == '\0' || !g_utf8_validate(password, -1, NULL)) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID,
                "the password must be non-empty UTF-8");
    return NULL;
  }
  if (!ca_check_days(days, error))
    return NULL;
  if (out_dir == NULL)
    out_dir = ca->dir;

  if (kind == IDENT_CA_HOST) {
    if (!ca_valid_domain(subject)) {
      g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID,
                  "'%s' is not a domain name (letters, digits, dots and hyphens)", subject);
      return NULL;
    }
    name = g_ascii_strdown(subject, -1);
    cn = g_strdup(name);
    g_ptr_array_add(sans, g_strdup(name)); /* dNSName first, then the URI */
    g_ptr_array_add(sans, g_strconcat("sip:", name, NULL));
    kp = GNUTLS_KP_TLS_WWW_SERVER;
  } else {
    if (!ca_split_aor(subject, &user, &host, error))
      return NULL;
    name = g_strdup(user);
    cn = g_strdup_printf("%s@%s", user, host);
    for (const char *const *s = (const char *const[]){"sip:", "im:", "pres:", NULL}; *s; s++)
      g_ptr_array_add(sans, g_strconcat(*s, cn, NULL));
    kp = GNUTLS_KP_EMAIL_PROTECTION;
  }
  /* The CA's own files would be replaced by a user called "ca". */
  if (g_str_equal(name, "ca") && ca_same_dir(out_dir, ca->dir)) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID,
                "the name 'ca' would replace the CA's own files; use --out DIR");
    return NULL;
  }
  /* ub-common-name is 64; a longer name lives in the subjectAltName only. */
  if (strlen(cn) <= 64) {
    rdns[4].value = cn;
    n_rdns = 5;
  }
  if (g_mkdir_with_parents(out_dir, 0755) != 0) {
    int saved = errno;
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_IO, "cannot create %s: %s", out_dir,
                g_strerror(saved));
    return NULL;
  }
  if (!(flags & IDENT_CA_FLAG_FORCE)) {
    for (gsize i = 0; i < G_N_ELEMENTS(exts); i++) {
      g_autofree char *base = g_strconcat(name, exts[i], NULL);
      g_autofree char *path = g_build_filename(out_dir, base, NULL);
      if (ca_path_exists(path)) {
        g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_EXISTS,
                    "%s exists (--force replaces it)", path);
        return NULL;
      }
    }
  }

  if (!ca_new_key(&key, error))
    return NULL;
  ca_validity(days, now, &not_before, &not_after);
  if (!ca_crt_start(&crt, key, rdns, n_rdns, not_before, not_after, error))
    return NULL;
  rc = gnutls_x509_crt_set_basic_constraints(crt, 0, -1);
  if (rc >= 0)
    rc = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
                                                GNUTLS_KEY_NON_REPUDIATION |
                                                GNUTLS_KEY_KEY_ENCIPHERMENT);
  for (guint i = 0; rc >= 0 && i < sans->len; i++) {
    const char *san = sans->pdata[i];
    gboolean dns = kind == IDENT_CA_HOST && i == 0;
    rc = gnutls_x509_crt_set_subject_alt_name(crt, dns ? GNUTLS_SAN_DNSNAME : GNUTLS_SAN_URI, san,
                                              (unsigned int)strlen(san), GNUTLS_FSAN_APPEND);
  }
  if (rc >= 0 && !(flags & IDENT_CA_FLAG_NO_EKU)) {
    rc = gnutls_x509_crt_set_key_purpose_oid(crt, kp, 0);
    if (rc >= 0)
      rc = gnutls_x509_crt_set_key_purpose_oid(crt, CA_OID_KP_SIP_DOMAIN, 0);
  }
  if (rc < 0) {
    ca_gnutls_fail(error, rc, "setting the extensions");
    return NULL;
  }
  if (!ca_crt_sign(crt, ca->crt, ca->signer, error))
    return NULL;
  serial = ca_crt_serial_hex(crt);
  if (serial == NULL) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_CRYPTO, "reading back the serial");
    return NULL;
  }

  rc = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &o.pem);
  if (rc >= 0)
    rc = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &o.der);
  if (rc >= 0)
    rc = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN,
                                           &o.key);
  if (rc >= 0)
    rc = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_DER, password,
                                           GNUTLS_PKCS_PBES2_AES_256, &o.p8);
  if (rc < 0) {
    ca_outputs_clear(&o);
    ca_gnutls_fail(error, rc, "exporting the certificate and key");
    return NULL;
  }
  if (!ca_pkcs12(crt, &o.p8, cn, password, &o.p12, error)) {
    ca_outputs_clear(&o);
    return NULL;
  }

  {
    const gnutls_datum_t *data[] = {&o.pem, &o.der, &o.key, &o.p8, &o.p12};
    const int modes[] = {CA_MODE_PUBLIC, CA_MODE_PUBLIC, CA_MODE_SECRET, CA_MODE_SECRET,
                         CA_MODE_SECRET};

    ok = TRUE;
    for (gsize i = 0; ok && i < G_N_ELEMENTS(exts); i++) {
      g_autofree char *base = g_strconcat(name, exts[i], NULL);
      g_autofree char *path = g_build_filename(out_dir, base, NULL);
      ok = ca_write_datum(path, data[i], modes[i], error);
    }
  }
  ca_outputs_clear(&o);
  if (!ok || !ca_index_add(ca, serial, not_after, name, error))
    return NULL;
  g_info("issued %s certificate %s, serial %s", kind == IDENT_CA_HOST ? "host" : "user", name,
         serial);
  return g_steal_pointer(&name);
}

/* ---- revocation ---- */

/* The serial of a certificate file this CA issued. */
static char *
ca_serial_of_file(IdentCa *ca, const char *path, GError **error)
{
  g_auto(gnutls_x509_crt_t) crt = NULL;
  g_autofree char *data = NULL;
  gsize len = 0;
  gnutls_datum_t d;
  unsigned int status = 0;
  int rc;

  if (!ca_read(path, &data, &len, error))
    return NULL;
  rc = gnutls_x509_crt_init(&crt);
  if (rc < 0) {
    crt = NULL;
    ca_gnutls_fail(error, rc, "gnutls_x509_crt_init");
    return NULL;
  }
  d.data = (unsigned char *)data;
  d.size = (unsigned int)len;
  rc = gnutls_x509_crt_import(crt, &d,
                              memmem(data, len, "-----BEGIN", 10) != NULL ? GNUTLS_X509_FMT_PEM
                                                                          : GNUTLS_X509_FMT_DER);
  if (rc < 0) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_INVALID, "%s: not a certificate: %s", path,
                gnutls_strerror(rc));
    return NULL;
  }
  /* An expired certificate may still be revoked: only the signature counts. */
  rc = gnutls_x509_crt_verify(
      crt, &ca->crt, 1,
      GNUTLS_VERIFY_DISABLE_TIME_CHECKS | GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS, &status);
  if (rc < 0 || status != 0) {
    g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_NOT_FOUND,
                "%s was not issued by the CA in %s", path, ca->dir);
    return NULL;
  }
  return ca_crt_serial_hex(crt);
}

char *
ident_ca_revoke(IdentCa *ca, const char *what, gint64 now, gboolean *already, GError **error)
{
  g_autoptr(GPtrArray) entries = NULL;
  g_autofree char *serial = NULL;
  CaEntry *found = NULL;

  g_return_val_if_fail(ca != NULL, NULL);
  g_return_val_if_fail(what != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (already != NULL)
    *already = FALSE;
  entries = ca_index_load(ca, error);
  if (entries == NULL)
    return NULL;

  if (strchr(what, '/') != NULL) {
    serial = ca_serial_of_file(ca, what, error);
    if (serial == NULL)
      return NULL;
    for (guint i = 0; i < entries->len && found == NULL; i++)
      if (g_str_equal(((CaEntry *)entries->pdata[i])->serial, serial))
        found = entries->pdata[i];
    if (found == NULL) {
      /* Issued here before the index was started (or it was lost). */
      g_autofree char *base = g_path_get_basename(what);
      char *dot = strrchr(base, '.');
      if (dot != NULL && dot != base)
        *dot = '\0';
      found = g_new0(CaEntry, 1);
      found->status = 'V';
      found->serial = g_strdup(serial);
      found->name = g_strdelimit(g_strdup(base), " \n\r\t", '_');
      g_ptr_array_add(entries, found);
    }
  } else {
    CaEntry *revoked = NULL;

    /* The newest one still valid; else the newest, already revoked. */
    for (guint i = entries->len; i-- > 0 && found == NULL;) {
      CaEntry *e = entries->pdata[i];
      if (!g_str_equal(e->name, what))
        continue;
      if (e->status == 'V')
        found = e;
      else if (revoked == NULL)
        revoked = e;
    }
    if (found == NULL)
      found = revoked;
    if (found == NULL) {
      g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_NOT_FOUND,
                  "no certificate named '%s' was issued by the CA in %s", what, ca->dir);
      return NULL;
    }
  }

  if (found->status == 'R') {
    if (already != NULL)
      *already = TRUE;
    return g_strdup(found->serial);
  }
  found->status = 'R';
  found->revoked_at = now;
  if (!ca_index_save(ca, entries, error))
    return NULL;
  return g_strdup(found->serial);
}

/* ---- CRL ---- */

gboolean
ident_ca_write_crl(IdentCa *ca, guint days, gint64 now, guint *n_revoked, GError **error)
{
  g_auto(gnutls_x509_crl_t) crl = NULL;
  g_autoptr(GPtrArray) entries = NULL;
  g_autofree char *p_num = NULL;
  g_autofree char *p_pem = NULL;
  g_autofree char *p_der = NULL;
  g_autofree char *num_text = NULL;
  gnutls_datum_t pem = {NULL, 0}, der = {NULL, 0};
  guint8 id[64], number[8];
  size_t id_len = sizeof id;
  unsigned int critical = 0;
  guint64 crl_number = 0;
  gint64 this_update, next_update;
  gsize num_len = 0;
  guint n = 0;
  char num_buf[32];
  gboolean ok;
  int rc;

  g_return_val_if_fail(ca != NULL, FALSE);
  g_return_val_if_fail(error == NULL || *error == NULL, FALSE);

  if (!ca_check_days(days, error))
    return FALSE;
  entries = ca_index_load(ca, error);
  if (entries == NULL)
    return FALSE;
  p_num = ca_path(ca, "crlnumber");
  if (ca_path_exists(p_num)) {
    if (!ca_read(p_num, &num_text, &num_len, error))
      return FALSE;
    if (!g_ascii_string_to_unsigned(g_strstrip(num_text), 10, 0, G_MAXINT64, &crl_number, NULL)) {
      g_set_error(error, IDENT_CA_ERROR, IDENT_CA_ERROR_BAD_CA, "%s: not a number", p_num);
      return FALSE;
    }
  }
  crl_number++;

  rc = gnutls_x509_crl_init(&crl);
  if (rc < 0) {
    crl = NULL;
    return ca_gnutls_fail(error, rc, "gnutls_x509_crl_init");
  }
  if (days == 0) {
    this_update = now - 2 * CA_DAY;
    next_update = now - CA_DAY;
  } else {
    this_update = now;
    next_update = now + (gint64)days * CA_DAY;
  }
  rc = gnutls_x509_crl_set_version(crl, 2);
  if (rc >= 0)
    rc = gnutls_x509_crl_set_this_update(crl, (time_t)this_update);
  if (rc >= 0)
    rc = gnutls_x509_crl_set_next_update(crl, (time_t)next_update);
  for (guint i = 0; rc >= 0 && i < entries->len; i++) {
    CaEntry *e = entries->pdata[i];
    g_autoptr(GBytes) serial = NULL;

    if (e->status != 'R')
      continue;
    serial = ca_unhex(e->serial);
    rc = gnutls_x509_crl_set_crt_serial(crl, g_bytes_get_data(serial, NULL),
                                        g_bytes_get_size(serial), (time_t)e->revoked_at);
    n++;
  }
  if (rc >= 0)
    rc = gnutls_x509_crt_get_subject_key_id(ca->crt, id, &id_len, &critical);
  if (rc >= 0)
    rc = gnutls_x509_crl_set_authority_key_id(crl, id, id_len);
  if (rc >= 0) {
    /* Big-endian, with a leading zero byte so it stays positive. */
    for (gsize i = 0; i < sizeof number; i++)
      number[i] = (guint8)(crl_number >> (8 * (sizeof number - 1 - i)));
    rc = gnutls_x509_crl_set_number(crl, number, sizeof number);
  }
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "building the CRL");
  rc = gnutls_x509_crl_privkey_sign(crl, ca->crt, ca->signer, GNUTLS_DIG_SHA256, 0);
  if (rc < 0)
    return ca_gnutls_fail(error, rc, "signing the CRL");
  rc = gnutls_x509_crl_export2(crl, GNUTLS_X509_FMT_PEM, &pem);
  if (rc >= 0)
    rc = gnutls_x509_crl_export2(crl, GNUTLS_X509_FMT_DER, &der);
  if (rc < 0) {
    ca_datum_free(&pem);
    return ca_gnutls_fail(error, rc, "exporting the CRL");
  }
  p_pem = ca_path(ca, "ca.crl");
  p_der = ca_path(ca, "ca.crl.der");
  g_snprintf(num_buf, sizeof num_buf, "%" G_GUINT64_FORMAT "\n", crl_number);
  ok = ca_write_datum(p_pem, &pem, CA_MODE_PUBLIC, error) &&
       ca_write_datum(p_der, &der, CA_MODE_PUBLIC, error) &&
       ca_write(p_num, num_buf, strlen(num_buf), CA_MODE_PUBLIC, error);
  ca_datum_free(&pem);
  ca_datum_free(&der);
  if (ok && n_revoked != NULL)
    *n_revoked = n;
  return ok;
}
