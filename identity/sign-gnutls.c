/* identity/sign-gnutls: the GnuTLS signer backend (always built).
 *
 * GnuTLS promises thread safety per object, not for one gnutls_privkey_t
 * used by several threads at once. So the backend keeps a small stack of
 * key handles: a signing call borrows one (importing another copy of the key
 * when all are busy) and gives it back. The stack never grows beyond the
 * number of threads that ever signed at the same time. */
#define G_LOG_DOMAIN "sipcred-identity"

#include <string.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

#include "identity/sign-backend.h"

typedef struct {
  guint8 *pkcs8; /* wiped on free */
  gsize pkcs8_len;
  GMutex lock;
  GPtrArray *idle; /* gnutls_privkey_t not in use */
} GnutlsKey;

static gnutls_privkey_t
gnutls_key_import(GnutlsKey *key, GError **error)
{
  gnutls_privkey_t pk = NULL;
  gnutls_datum_t in = {key->pkcs8, (unsigned int)key->pkcs8_len};
  int rc = gnutls_privkey_init(&pk);

  if (rc >= 0)
    rc = gnutls_privkey_import_x509_raw(pk, &in, GNUTLS_X509_FMT_DER, NULL, GNUTLS_PKCS_PLAIN);
  if (rc < 0) {
    if (pk != NULL)
      gnutls_privkey_deinit(pk);
    /* The message is GnuTLS's, never the key. */
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_KEY,
                "GnuTLS cannot import the private key: %s", gnutls_strerror(rc));
    return NULL;
  }
  return pk;
}

static void
gnutls_key_free(gpointer data)
{
  GnutlsKey *key = data;

  if (key == NULL)
    return;
  /* gnutls_privkey_deinit() zeroes the key parameters. */
  if (key->idle != NULL)
    g_ptr_array_free(key->idle, TRUE);
  if (key->pkcs8 != NULL) {
    explicit_bzero(key->pkcs8, key->pkcs8_len);
    g_free(key->pkcs8);
  }
  g_mutex_clear(&key->lock);
  g_free(key);
}

static gpointer
gnutls_key_new(const guint8 *pkcs8, gsize len, GError **error)
{
  GnutlsKey *key = g_new0(GnutlsKey, 1);
  gnutls_privkey_t pk;

  g_mutex_init(&key->lock);
  key->idle = g_ptr_array_new_with_free_func((GDestroyNotify)gnutls_privkey_deinit);
  key->pkcs8 = g_memdup2(pkcs8, len);
  key->pkcs8_len = len;
  /* Import once now, so that a bad key fails here and not in a worker. */
  pk = gnutls_key_import(key, error);
  if (pk == NULL) {
    gnutls_key_free(key);
    return NULL;
  }
  g_ptr_array_add(key->idle, pk);
  return key;
}

static GBytes *
gnutls_key_sign(gpointer data, IdentAlg alg, const guint8 *bytes, gsize len, GError **error)
{
  GnutlsKey *key = data;
  gnutls_privkey_t pk = NULL;
  gnutls_datum_t in = {(unsigned char *)bytes, (unsigned int)len};
  gnutls_datum_t sig = {NULL, 0};
  gnutls_sign_algorithm_t algo =
      alg == IDENT_ALG_RSA_SHA1 ? GNUTLS_SIGN_RSA_SHA1 : GNUTLS_SIGN_RSA_SHA256;
  GBytes *out;
  int rc;

  if (len > G_MAXUINT) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CRYPTO, "input too large to sign");
    return NULL;
  }
  g_mutex_lock(&key->lock);
  if (key->idle->len > 0)
    pk = g_ptr_array_steal_index_fast(key->idle, key->idle->len - 1);
  g_mutex_unlock(&key->lock);
  if (pk == NULL) {
    pk = gnutls_key_import(key, error);
    if (pk == NULL)
      return NULL;
  }

  rc = gnutls_privkey_sign_data2(pk, algo, 0, &in, &sig);

  g_mutex_lock(&key->lock);
  g_ptr_array_add(key->idle, pk);
  g_mutex_unlock(&key->lock);

  if (rc < 0) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CRYPTO, "GnuTLS %s signing failed: %s",
                ident_alg_to_string(alg), gnutls_strerror(rc));
    return NULL;
  }
  out = g_bytes_new(sig.data, sig.size);
  gnutls_free(sig.data);
  return out;
}

const IdentSignBackendOps ident_sign_backend_gnutls = {
    .name = "gnutls",
    .key_new = gnutls_key_new,
    .sign = gnutls_key_sign,
    .key_free = gnutls_key_free,
};
