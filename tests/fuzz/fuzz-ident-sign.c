/* Fuzz target: the RFC 4474 digest-string parser, message signing and
 * verification (identity/sign.c). The parser reads peer messages when we
 * verify them, so it must refuse cleanly whatever it cannot read.
 *
 * The input is one message. Properties:
 * - the digest-string parser either gives bytes or an IDENT_SIGN_ERROR_MESSAGE;
 * - a Date value that parses as RFC 1123 formats back to the same text;
 * - when the message can be signed, the result is the input with header
 *   lines added before the empty line (nothing else changed), its
 *   digest-string is the input's (when the input had a Date), and our own
 *   verifier finds the signature good: only the Date window or the
 *   certificate's names may fail it;
 * - verifying the raw input never crashes and fails with our error domain.
 * The RSA key and certificate are made once per process (RSA-2048 keygen is
 * too slow for every input); they are not state that inputs change. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <string.h>

#include "identity/cert.h"
#include "identity/sign.h"
#include "fuzz.h"

#define FIXED_NOW G_GINT64_CONSTANT(1795435200) /* Mon, 23 Nov 2026 12:00:00 GMT */
#define INFO_URL "https://example.com/cert.der"

static IdentSigner *fixed_signer;

static IdentSigner *
signer(void)
{
  if (fixed_signer == NULL) {
    g_autoptr(GBytes) pkcs8 = NULL;
    g_autoptr(IdentCert) cert =
        ident_cert_generate("sip:fuzz@example.com", 2048, 30, FIXED_NOW, &pkcs8, NULL);
    GBytes *der;

    FUZZ_CHECK(cert != NULL);
    der = ident_cert_get_der(cert);
    fixed_signer = ident_signer_new(IDENT_SIGNER_GNUTLS, g_bytes_get_data(pkcs8, NULL),
                                    g_bytes_get_size(pkcs8), g_bytes_get_data(der, NULL),
                                    g_bytes_get_size(der), NULL);
    FUZZ_CHECK(fixed_signer != NULL);
  }
  return fixed_signer;
}

/* The value of the first "\r\nDate:" header, or NULL. Only for the round
 * trip check, so a simple search is enough. */
static char *
find_date(const guint8 *data, size_t size)
{
  const guint8 *p = memmem(data, size, "\r\nDate: ", 8);
  const guint8 *e;

  if (p == NULL)
    return NULL;
  p += 8;
  e = memmem(p, size - (p - data), "\r\n", 2);
  return e != NULL ? g_strndup((const char *)p, e - p) : NULL;
}

static void
check_signed(const uint8_t *data, size_t size, GBytes *in_digest, GBytes *out)
{
  gsize out_len = g_bytes_get_size(out);
  const guint8 *o = g_bytes_get_data(out, NULL);
  g_autoptr(GBytes) out_digest = NULL;
  g_autoptr(GError) error = NULL;
  GBytes *cert_der = ident_signer_get_cert_der(signer());
  gsize pre = 0, post = 0;

  /* Only whole lines are added: a common prefix and suffix cover the input. */
  FUZZ_CHECK(out_len > size);
  while (pre < size && o[pre] == data[pre])
    pre++;
  while (post < size - pre && o[out_len - 1 - post] == data[size - 1 - post])
    post++;
  FUZZ_CHECK(pre + post == size);
  FUZZ_CHECK(memmem(o, out_len, "\r\nIdentity: \"", 13) != NULL);

  out_digest = ident_digest_string(o, out_len, &error);
  FUZZ_CHECK(out_digest != NULL);
  if (in_digest != NULL)
    FUZZ_CHECK(g_bytes_equal(in_digest, out_digest));

  if (!ident_verify_message(o, out_len, g_bytes_get_data(cert_der, NULL),
                            g_bytes_get_size(cert_der), FIXED_NOW, 600, NULL, &error)) {
    FUZZ_CHECK(error != NULL && error->domain == IDENT_SIGN_ERROR);
    FUZZ_CHECK(error->code == IDENT_SIGN_ERROR_DATE ||
               error->code == IDENT_SIGN_ERROR_CERTIFICATE);
  }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(GError) derr = NULL, serr = NULL, verr = NULL;
  g_autoptr(GBytes) digest = NULL, out = NULL;
  g_autofree char *date = NULL;
  GBytes *cert_der = ident_signer_get_cert_der(signer());
  gint64 t;

  digest = ident_digest_string(data, size, &derr);
  FUZZ_CHECK((digest == NULL) == (derr != NULL));
  if (digest == NULL)
    FUZZ_CHECK(g_error_matches(derr, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE));
  else
    FUZZ_CHECK(g_bytes_get_size(digest) >= 6); /* at least the six '|' */

  date = find_date(data, size);
  if (date != NULL && ident_date_parse(date, &t)) {
    g_autofree char *again = ident_date_format(t);
    FUZZ_CHECK(g_strcmp0(again, date) == 0);
  }

  out = ident_sign_message(signer(), size % 2 ? IDENT_ALG_RSA_SHA1 : IDENT_ALG_RSA_SHA256,
                           INFO_URL, FIXED_NOW, data, size, &serr);
  FUZZ_CHECK((out == NULL) == (serr != NULL));
  if (out != NULL)
    check_signed(data, size, digest, out);
  else
    FUZZ_CHECK(serr->domain == IDENT_SIGN_ERROR);
  /* Whatever the digest-string parser takes, signing takes too, unless the
   * message is signed already. */
  if (digest != NULL && out == NULL)
    FUZZ_CHECK(strstr(serr->message, "already carries") != NULL);

  if (!ident_verify_message(data, size, g_bytes_get_data(cert_der, NULL),
                            g_bytes_get_size(cert_der), FIXED_NOW, 600, NULL, &verr))
    FUZZ_CHECK(verr != NULL && verr->domain == IDENT_SIGN_ERROR);
  return 0;
}
