/* server/sipdns: RFC 3263 server location for sips: URIs, as the client
 * commands need it. Only TLS over TCP is usable for sips, so of section 4.1
 * only the "SIPS+D2T" NAPTR service counts:
 *   1. NAPTR of the domain: when there are records, those with flag "s" and
 *      service SIPS+D2T, by order then preference, name the SRV owners to
 *      query; records but none of them usable means the domain offers no
 *      SIPS over TCP (an error, not a reason to guess);
 *   2. no NAPTR at all: the SRV records of _sips._tcp.DOMAIN;
 *   3. no SRV either: DOMAIN itself on port 5061.
 * SRV targets come by priority, and within one priority in the weighted
 * random order of RFC 2782.
 *
 * GResolver has no NAPTR query, so both lookups use the system's libresolv;
 * an explicit resolver address (for tests, or to try a zone before it is
 * published) replaces the servers of resolv.conf. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define SIPDNS_ERROR (sipdns_error_quark())
GQuark sipdns_error_quark(void);

typedef enum {
  SIPDNS_ERROR_INVALID,     /* a name or resolver address we cannot use */
  SIPDNS_ERROR_MALFORMED,   /* a DNS answer we cannot parse */
  SIPDNS_ERROR_NO_SERVICE,  /* NAPTR records exist, none for SIPS over TCP */
  SIPDNS_ERROR_UNAVAILABLE, /* the resolver failed (not "no such records") */
} SipdnsError;

typedef struct {
  char *host;
  guint16 port;
} SipdnsTarget;

void sipdns_target_free(SipdnsTarget *target);

/* The hosts to try for sips:...@@domain, in order (never empty on success).
 * @resolver: "ADDRESS[:PORT]" of a DNS server to ask instead of the
 * system's, or NULL. */
GPtrArray *sipdns_locate_sips(const char *domain, const char *resolver, GError **error);

/* ---- The parts, for tests and fuzzing ----------------------------------- */

typedef struct {
  guint16 order;
  guint16 preference;
  char *flags;
  char *service;
  char *replacement; /* without the trailing dot; "" for the root */
} SipdnsNaptr;

typedef struct {
  guint16 priority;
  guint16 weight;
  guint16 port;
  char *target; /* without the trailing dot; "" means "no service here" */
} SipdnsSrv;

void sipdns_naptr_free(SipdnsNaptr *rr);
void sipdns_srv_free(SipdnsSrv *rr);

/* The NAPTR (type 35) or SRV (type 33) records of the answer section of the
 * DNS response @msg, in the order they came. */
GPtrArray *sipdns_parse_naptr(const guint8 *msg, gsize len, GError **error);
GPtrArray *sipdns_parse_srv(const guint8 *msg, gsize len, GError **error);

/* The owner names to query for SRV: the replacements of the usable
 * records (flag "s", service SIPS+D2T, case-insensitive), sorted by order
 * then preference. Empty when none is usable. */
GStrv sipdns_naptr_sips_owners(GPtrArray *naptrs);

/* Sorts @srvs (SipdnsSrv) into the order to try them: ascending priority,
 * and within a priority the weighted random selection of RFC 2782 drawn
 * from @rand. Drops the "." target. */
void sipdns_srv_order(GPtrArray *srvs, GRand *rand);

G_END_DECLS
