/* identity/sign-openssl: the OpenSSL libcrypto signer backend, built when
 * the `openssl` feature finds libcrypto. About four times the RSA signing
 * rate of GnuTLS here (issue 5), which sets the fan-out ceiling.
 *
 * One EVP_PKEY is shared by all threads: libcrypto allows concurrent use of
 * a key that is no longer modified (openssl-threads(7)); each call has its
 * own EVP_MD_CTX. */
#define G_LOG_DOMAIN "sipcred-identity"

#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "identity/sign-backend.h"

/* The first queued libcrypto error as text (never key material), and the
 * queue emptied so that it does not leak into the next call on this thread. */
static void
openssl_set_error(GError **error, int code, const char *what)
{
  unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";

  if (e != 0)
    ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  g_set_error(error, IDENT_SIGN_ERROR, code, "OpenSSL %s: %s", what, buf);
}

static gpointer
openssl_key_new(const guint8 *pkcs8, gsize len, GError **error)
{
  const unsigned char *p = pkcs8;
  EVP_PKEY *pkey;

  if (len > G_MAXLONG) {
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_KEY, "private key too large");
    return NULL;
  }
  pkey = d2i_AutoPrivateKey(NULL, &p, (long)len);
  if (pkey == NULL) {
    openssl_set_error(error, IDENT_SIGN_ERROR_KEY, "cannot import the private key");
    return NULL;
  }
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
    EVP_PKEY_free(pkey);
    g_set_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_KEY, "OpenSSL: not an RSA key");
    return NULL;
  }
  return pkey;
}

static void
openssl_key_free(gpointer key)
{
  /* Frees the RSA private numbers with BN_clear_free(). */
  EVP_PKEY_free(key);
}

static GBytes *
openssl_key_sign(gpointer key, IdentAlg alg, const guint8 *data, gsize len, GError **error)
{
  EVP_PKEY *pkey = key;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  const EVP_MD *md = alg == IDENT_ALG_RSA_SHA1 ? EVP_sha1() : EVP_sha256();
  size_t sig_len = 0;
  guint8 *sig;

  if (ctx == NULL) {
    openssl_set_error(error, IDENT_SIGN_ERROR_CRYPTO, "EVP_MD_CTX_new");
    return NULL;
  }
  /* RSA keys default to PKCS#1 v1.5 padding. */
  if (EVP_DigestSignInit(ctx, NULL, md, NULL, pkey) != 1 ||
      EVP_DigestSign(ctx, NULL, &sig_len, data, len) != 1) {
    EVP_MD_CTX_free(ctx);
    openssl_set_error(error, IDENT_SIGN_ERROR_CRYPTO, "signing setup failed");
    return NULL;
  }
  sig = g_malloc(sig_len);
  if (EVP_DigestSign(ctx, sig, &sig_len, data, len) != 1) {
    EVP_MD_CTX_free(ctx);
    g_free(sig);
    openssl_set_error(error, IDENT_SIGN_ERROR_CRYPTO, "signing failed");
    return NULL;
  }
  EVP_MD_CTX_free(ctx);
  return g_bytes_new_take(sig, sig_len);
}

const IdentSignBackendOps ident_sign_backend_openssl = {
    .name = "openssl",
    .key_new = openssl_key_new,
    .sign = openssl_key_sign,
    .key_free = openssl_key_free,
};
