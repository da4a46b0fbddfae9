/* Fuzz target: core_credbody_parse, the PUBLISH body parser.
 *
 * Input: "<Content-Type>\n<Content-Transfer-Encoding>\n<body>"; an empty
 * second line means no Content-Transfer-Encoding. Inputs without two
 * newlines are skipped.
 *
 * Checked: errors are in the credbody domain, map to 400/413/415 and carry
 * printable single-line text; what parses is one DER SEQUENCE no bigger than
 * the input, CERT_ONLY never returns a key, and build -> parse gives back
 * the same certificate and key. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <string.h>

#include "core/credbody.h"
#include "fuzz.h"

static void
check_error(const GError *error)
{
  FUZZ_CHECK(error != NULL);
  FUZZ_CHECK(error->domain == CORE_CREDBODY_ERROR);
  guint status = core_credbody_error_status(error);
  FUZZ_CHECK(status == 400 || status == 413 || status == 415);
  for (const char *c = error->message; *c != '\0'; c++)
    FUZZ_CHECK(*c >= 0x20 && *c < 0x7f);
}

static void
check_der(GBytes *der, gsize input_len)
{
  gsize len;
  const guint8 *p = g_bytes_get_data(der, &len);
  FUZZ_CHECK(len > 0 && len <= input_len);
  FUZZ_CHECK(p[0] == 0x30);
  FUZZ_CHECK(core_credbody_der_check(p, len));
}

static void
check_round_trip(GBytes *cert, GBytes *key)
{
  g_autofree char *ct = NULL;
  g_autoptr(GBytes) body = core_credbody_build(cert, key, &ct);
  FUZZ_CHECK(body != NULL && ct != NULL);
  gsize len;
  const guint8 *p = g_bytes_get_data(body, &len);
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) cert2 = NULL, key2 = NULL;
  FUZZ_CHECK(core_credbody_parse(ct, NULL, p, len, CORE_CREDBODY_PARSE_NONE, &cert2, &key2,
                                 &error));
  FUZZ_CHECK(g_bytes_equal(cert, cert2));
  FUZZ_CHECK((key == NULL) == (key2 == NULL));
  if (key != NULL)
    FUZZ_CHECK(g_bytes_equal(key, key2));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const uint8_t *nl1 = memchr(data, '\n', size);
  if (nl1 == NULL)
    return 0;
  const uint8_t *nl2 = memchr(nl1 + 1, '\n', size - (nl1 + 1 - data));
  if (nl2 == NULL)
    return 0;
  g_autofree char *ct = g_strndup((const char *)data, nl1 - data);
  g_autofree char *cte = g_strndup((const char *)nl1 + 1, nl2 - nl1 - 1);
  const guint8 *body = nl2 + 1;
  gsize len = size - (nl2 + 1 - data);
  /* A copy of exactly len bytes, so ASan sees any read past the body. */
  g_autofree guint8 *copy = g_memdup2(body, len);

  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) cert = NULL, key = NULL;
  gboolean ok = core_credbody_parse(ct, cte[0] != '\0' ? cte : NULL, copy, len,
                                    CORE_CREDBODY_PARSE_NONE, &cert, &key, &error);

  g_autoptr(GError) error_co = NULL;
  g_autoptr(GBytes) cert_co = NULL, key_co = NULL;
  gboolean ok_co = core_credbody_parse(ct, cte[0] != '\0' ? cte : NULL, copy, len,
                                       CORE_CREDBODY_PARSE_CERT_ONLY, &cert_co, &key_co,
                                       &error_co);
  if (!ok) {
    FUZZ_CHECK(cert == NULL && key == NULL);
    check_error(error);
    FUZZ_CHECK(!ok_co);
    check_error(error_co);
    return 0;
  }
  FUZZ_CHECK(error == NULL && cert != NULL);
  check_der(cert, len);
  if (key != NULL)
    check_der(key, len);
  /* CERT_ONLY refuses exactly the bodies that carry a key. */
  if (key == NULL) {
    FUZZ_CHECK(ok_co && key_co == NULL && g_bytes_equal(cert, cert_co));
  } else {
    FUZZ_CHECK(!ok_co);
    check_error(error_co);
    FUZZ_CHECK(core_credbody_error_status(error_co) == 400);
  }
  check_round_trip(cert, key);
  return 0;
}
