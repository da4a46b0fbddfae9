/* identity/sign-backend: what a signer backend implements. Private to
 * identity/sign*.c. A backend gets the key once, as unencrypted PKCS#8 DER
 * already checked against the certificate, and must not keep that buffer. */
#pragma once

#include <glib.h>

#include "identity/sign.h"

G_BEGIN_DECLS

typedef struct {
  const char *name;
  /* Imports the key; NULL and IDENT_SIGN_ERROR_KEY or _CRYPTO on failure. */
  gpointer (*key_new)(const guint8 *pkcs8, gsize len, GError **error);
  /* RSASSA-PKCS1-v1_5; must be safe to call from many threads at once. */
  GBytes *(*sign)(gpointer key, IdentAlg alg, const guint8 *data, gsize len, GError **error);
  /* Frees the key, wiping its private parts. */
  void (*key_free)(gpointer key);
} IdentSignBackendOps;

extern const IdentSignBackendOps ident_sign_backend_gnutls;
#ifdef SIPCRED_HAVE_OPENSSL
extern const IdentSignBackendOps ident_sign_backend_openssl;
#endif

G_END_DECLS
