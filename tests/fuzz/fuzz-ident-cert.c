/* Fuzz target: certificate parsing (PEM and DER) and the RFC 6072
 * user-certificate profile.
 *
 * The input is handed to ident_cert_new_from_data(). What parses must give
 * DER bytes that parse again into the same certificate (the store serves
 * exactly those bytes to subscribers), names that are clean C strings, and a
 * profile verdict for sip:alice@example.com at a fixed time that agrees with
 * the validity dates the certificate reports. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "identity/cert.h"
#include "fuzz.h"

#define AOR "sip:alice@example.com"
/* 2023-11-14T22:13:20Z: inside the validity of the seed user certificates
 * (see corpus/make-cert-seeds.sh), after the expired one, before the
 * not-yet-valid one. */
#define FIXED_NOW G_GINT64_CONSTANT(1700000000)

static void
check_names(IdentCert *cert)
{
  g_auto(GStrv) names = ident_cert_dup_dns_names(cert);
  FUZZ_CHECK(names != NULL);
  for (guint i = 0; names[i] != NULL; i++) {
    /* Entries with NULs or bad UTF-8 are dropped, never passed on. */
    FUZZ_CHECK(names[i][0] != '\0');
    FUZZ_CHECK(g_utf8_validate(names[i], -1, NULL));
  }
}

/* The verdict at @now; TRUE when the profile holds. */
static gboolean
check_profile_at(IdentCert *cert, gint64 now)
{
  g_autoptr(GError) error = NULL;
  gboolean ok = ident_cert_check_user_profile(cert, AOR, now, &error);
  FUZZ_CHECK(ok == (error == NULL));
  if (!ok)
    FUZZ_CHECK(error->domain == IDENT_ERROR &&
               (error->code == IDENT_ERROR_PROFILE || error->code == IDENT_ERROR_EXPIRED));
  return ok;
}

static void
check_profile(IdentCert *cert)
{
  gint64 not_before = ident_cert_get_not_before(cert);
  gint64 not_after = ident_cert_get_not_after(cert);

  if (!check_profile_at(cert, FIXED_NOW))
    return;
  FUZZ_CHECK(not_before <= FIXED_NOW && FIXED_NOW <= not_after);
  /* The profile holds at both ends of the validity and not a second outside. */
  FUZZ_CHECK(check_profile_at(cert, not_before));
  FUZZ_CHECK(check_profile_at(cert, not_after));
  if (not_before > G_MININT64) {
    g_autoptr(GError) error = NULL;
    FUZZ_CHECK(!ident_cert_check_user_profile(cert, AOR, not_before - 1, &error));
    FUZZ_CHECK(g_error_matches(error, IDENT_ERROR, IDENT_ERROR_EXPIRED));
  }
  if (not_after < G_MAXINT64) {
    g_autoptr(GError) error = NULL;
    FUZZ_CHECK(!ident_cert_check_user_profile(cert, AOR, not_after + 1, &error));
    FUZZ_CHECK(g_error_matches(error, IDENT_ERROR, IDENT_ERROR_EXPIRED));
  }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCert) cert = ident_cert_new_from_data(data, size, &error);
  if (cert == NULL) {
    FUZZ_CHECK(error != NULL && error->domain == IDENT_ERROR);
    FUZZ_CHECK(error->code == IDENT_ERROR_PARSE || error->code == IDENT_ERROR_CRYPTO);
    return 0;
  }
  FUZZ_CHECK(error == NULL);

  /* Owned by the certificate: not unreffed here. */
  GBytes *der = ident_cert_get_der(cert);
  FUZZ_CHECK(der != NULL && g_bytes_get_size(der) > 0);

  /* What is served must read back as the same certificate. */
  gsize der_len = 0;
  const guint8 *der_data = g_bytes_get_data(der, &der_len);
  g_autoptr(IdentCert) again = ident_cert_new_from_data(der_data, der_len, &error);
  if (again == NULL) {
    fprintf(stderr, "served DER does not parse back: %s\n", error->message);
    abort();
  }
  FUZZ_CHECK(g_bytes_equal(ident_cert_get_der(again), der));
  FUZZ_CHECK(ident_cert_get_not_before(again) == ident_cert_get_not_before(cert));
  FUZZ_CHECK(ident_cert_get_not_after(again) == ident_cert_get_not_after(cert));

  check_names(cert);
  check_profile(cert);
  return 0;
}
