/* Fuzz target: the NAPTR and SRV answer parsers of server/sipdns, which read
 * what a DNS server (or anyone spoofing one) sends.
 *
 * The whole input is one DNS message, given to both parsers. Checked: a
 * parse either fails in the sipdns domain or yields records whose names are
 * NUL-free text no longer than a DNS name; choosing SIPS+D2T owners and
 * ordering SRV records never grows or invents records. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <string.h>

#include "fuzz.h"
#include "server/sipdns.h"

#define MAX_NAME 1025

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) naptrs = sipdns_parse_naptr(data, size, &error);
  g_autoptr(GPtrArray) srvs = NULL;
  g_autoptr(GRand) rand = g_rand_new_with_seed(1);

  if (naptrs == NULL) {
    FUZZ_CHECK(error != NULL && error->domain == SIPDNS_ERROR);
  } else {
    g_auto(GStrv) owners = sipdns_naptr_sips_owners(naptrs);
    FUZZ_CHECK(g_strv_length(owners) <= naptrs->len);
    for (guint i = 0; i < naptrs->len; i++) {
      SipdnsNaptr *rr = g_ptr_array_index(naptrs, i);
      FUZZ_CHECK(strlen(rr->replacement) < MAX_NAME);
      FUZZ_CHECK(strlen(rr->flags) < 256 && strlen(rr->service) < 256);
    }
  }
  g_clear_error(&error);
  srvs = sipdns_parse_srv(data, size, &error);
  if (srvs == NULL) {
    FUZZ_CHECK(error != NULL && error->domain == SIPDNS_ERROR);
    return 0;
  }
  guint before = srvs->len;
  sipdns_srv_order(srvs, rand);
  FUZZ_CHECK(srvs->len <= before);
  for (guint i = 0; i < srvs->len; i++) {
    SipdnsSrv *rr = g_ptr_array_index(srvs, i);
    FUZZ_CHECK(rr->target[0] != '\0' && strlen(rr->target) < MAX_NAME);
    if (i > 0)
      FUZZ_CHECK(((SipdnsSrv *)g_ptr_array_index(srvs, i - 1))->priority <= rr->priority);
  }
  return 0;
}
