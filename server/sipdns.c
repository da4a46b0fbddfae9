/* server/sipdns: see sipdns.h. */
#define G_LOG_DOMAIN "sipcred-dns"

#include "server/sipdns.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <string.h>

#define SIPDNS_MAX_ANSWER 65536
#define SIPDNS_MAX_RECORDS 64 /* more than any sane zone publishes for one name */
#define SIPDNS_NS_T_NAPTR 35

G_DEFINE_QUARK(sipdns - error - quark, sipdns_error)

void
sipdns_target_free(SipdnsTarget *target)
{
  if (target == NULL)
    return;
  g_free(target->host);
  g_free(target);
}

void
sipdns_naptr_free(SipdnsNaptr *rr)
{
  if (rr == NULL)
    return;
  g_free(rr->flags);
  g_free(rr->service);
  g_free(rr->replacement);
  g_free(rr);
}

void
sipdns_srv_free(SipdnsSrv *rr)
{
  if (rr == NULL)
    return;
  g_free(rr->target);
  g_free(rr);
}

/* ---- parsing ---- */

/* A domain name at @p inside the message, without the trailing dot. */
static char *
sipdns_name(const guint8 *msg, gsize len, const guint8 *p, const guint8 **next)
{
  char name[NS_MAXDNAME];
  int used = dn_expand(msg, msg + len, p, name, sizeof name);

  if (used < 0)
    return NULL;
  if (next != NULL)
    *next = p + used;
  gsize n = strlen(name);
  if (n > 0 && name[n - 1] == '.')
    name[n - 1] = '\0';
  return g_strdup(name);
}

/* A <character-string>: one length byte, then that many bytes. */
static char *
sipdns_string(const guint8 **p, const guint8 *end)
{
  if (*p >= end || *p + 1 + **p > end)
    return NULL;
  guint n = **p;
  char *s = g_strndup((const char *)*p + 1, n);
  *p += 1 + n;
  /* A NUL inside would cut the text short: refuse rather than misread. */
  if (strlen(s) != n) {
    g_free(s);
    return NULL;
  }
  return s;
}

typedef gpointer (*SipdnsRdataFunc)(const guint8 *msg, gsize len, const guint8 *rdata,
                                    gsize rdlen);

static gpointer
sipdns_naptr_rdata(const guint8 *msg, gsize len, const guint8 *rdata, gsize rdlen)
{
  const guint8 *p = rdata, *end = rdata + rdlen;
  g_autofree char *regexp = NULL;
  SipdnsNaptr *rr;

  if (rdlen < 4)
    return NULL;
  rr = g_new0(SipdnsNaptr, 1);
  rr->order = ns_get16(p);
  rr->preference = ns_get16(p + 2);
  p += 4;
  rr->flags = sipdns_string(&p, end);
  rr->service = rr->flags != NULL ? sipdns_string(&p, end) : NULL;
  regexp = rr->service != NULL ? sipdns_string(&p, end) : NULL;
  if (regexp == NULL || p >= end) {
    sipdns_naptr_free(rr);
    return NULL;
  }
  rr->replacement = sipdns_name(msg, len, p, &p);
  if (rr->replacement == NULL || p != end) {
    sipdns_naptr_free(rr);
    return NULL;
  }
  return rr;
}

static gpointer
sipdns_srv_rdata(const guint8 *msg, gsize len, const guint8 *rdata, gsize rdlen)
{
  const guint8 *p = rdata + 6;
  SipdnsSrv *rr;

  if (rdlen < 7)
    return NULL;
  rr = g_new0(SipdnsSrv, 1);
  rr->priority = ns_get16(rdata);
  rr->weight = ns_get16(rdata + 2);
  rr->port = ns_get16(rdata + 4);
  rr->target = sipdns_name(msg, len, p, &p);
  if (rr->target == NULL || p != rdata + rdlen) {
    sipdns_srv_free(rr);
    return NULL;
  }
  return rr;
}

static GPtrArray *
sipdns_parse(const guint8 *msg, gsize len, int type, SipdnsRdataFunc parse, GDestroyNotify free_rr,
             GError **error)
{
  g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func(free_rr);
  ns_msg handle;
  int count;

  if (len > SIPDNS_MAX_ANSWER || ns_initparse(msg, (int)len, &handle) < 0) {
    g_set_error_literal(error, SIPDNS_ERROR, SIPDNS_ERROR_MALFORMED, "unparsable DNS message");
    return NULL;
  }
  count = ns_msg_count(handle, ns_s_an);
  for (int i = 0; i < count; i++) {
    ns_rr rr;
    gpointer parsed;

    if (ns_parserr(&handle, ns_s_an, i, &rr) < 0) {
      g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_MALFORMED, "unparsable answer record %d", i);
      return NULL;
    }
    /* CNAMEs and other types may come along; only ours count. */
    if ((int)ns_rr_type(rr) != type || ns_rr_class(rr) != ns_c_in)
      continue;
    parsed = parse(msg, len, ns_rr_rdata(rr), ns_rr_rdlen(rr));
    if (parsed == NULL) {
      g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_MALFORMED, "malformed record %d", i);
      return NULL;
    }
    if (out->len >= SIPDNS_MAX_RECORDS) {
      free_rr(parsed);
      break;
    }
    g_ptr_array_add(out, parsed);
  }
  return g_steal_pointer(&out);
}

GPtrArray *
sipdns_parse_naptr(const guint8 *msg, gsize len, GError **error)
{
  return sipdns_parse(msg, len, SIPDNS_NS_T_NAPTR, sipdns_naptr_rdata,
                      (GDestroyNotify)sipdns_naptr_free, error);
}

GPtrArray *
sipdns_parse_srv(const guint8 *msg, gsize len, GError **error)
{
  return sipdns_parse(msg, len, ns_t_srv, sipdns_srv_rdata, (GDestroyNotify)sipdns_srv_free,
                      error);
}

/* ---- ordering ---- */

static gint
sipdns_naptr_cmp(gconstpointer a, gconstpointer b)
{
  const SipdnsNaptr *x = *(SipdnsNaptr *const *)a;
  const SipdnsNaptr *y = *(SipdnsNaptr *const *)b;

  if (x->order != y->order)
    return x->order < y->order ? -1 : 1;
  if (x->preference != y->preference)
    return x->preference < y->preference ? -1 : 1;
  return 0;
}

GStrv
sipdns_naptr_sips_owners(GPtrArray *naptrs)
{
  g_autoptr(GPtrArray) usable = g_ptr_array_new();
  g_autoptr(GStrvBuilder) owners = g_strv_builder_new();

  for (guint i = 0; i < naptrs->len; i++) {
    SipdnsNaptr *rr = g_ptr_array_index(naptrs, i);
    if (g_ascii_strcasecmp(rr->flags, "s") == 0 &&
        g_ascii_strcasecmp(rr->service, "SIPS+D2T") == 0 && rr->replacement[0] != '\0')
      g_ptr_array_add(usable, rr);
  }
  /* g_ptr_array_sort is a stable merge sort: equal records keep DNS order. */
  g_ptr_array_sort(usable, sipdns_naptr_cmp);
  for (guint i = 0; i < usable->len; i++)
    g_strv_builder_add(owners, ((SipdnsNaptr *)g_ptr_array_index(usable, i))->replacement);
  return g_strv_builder_end(owners);
}

static gint
sipdns_srv_priority_cmp(gconstpointer a, gconstpointer b)
{
  const SipdnsSrv *x = *(SipdnsSrv *const *)a;
  const SipdnsSrv *y = *(SipdnsSrv *const *)b;

  return x->priority < y->priority ? -1 : x->priority > y->priority ? 1 : 0;
}

void
sipdns_srv_order(GPtrArray *srvs, GRand *rand)
{
  g_autoptr(GPtrArray) out = g_ptr_array_new();

  for (guint i = srvs->len; i > 0; i--) {
    SipdnsSrv *rr = g_ptr_array_index(srvs, i - 1);
    if (rr->target[0] == '\0')
      g_ptr_array_remove_index(srvs, i - 1); /* frees it */
  }
  g_ptr_array_sort(srvs, sipdns_srv_priority_cmp);
  /* RFC 2782: within a priority, draw a number in 0..sum of weights and
   * take the first record whose running sum reaches it; repeat. */
  for (guint start = 0; start < srvs->len;) {
    guint end = start;
    while (end < srvs->len && ((SipdnsSrv *)g_ptr_array_index(srvs, end))->priority ==
                                  ((SipdnsSrv *)g_ptr_array_index(srvs, start))->priority)
      end++;
    g_autoptr(GPtrArray) group = g_ptr_array_new();
    for (guint i = start; i < end; i++)
      g_ptr_array_add(group, g_ptr_array_index(srvs, i));
    while (group->len > 0) {
      guint32 total = 0, pick, sum = 0;
      guint chosen = 0;

      for (guint i = 0; i < group->len; i++)
        total += ((SipdnsSrv *)g_ptr_array_index(group, i))->weight;
      pick = (guint32)g_rand_int_range(rand, 0, (gint32)total + 1);
      for (guint i = 0; i < group->len; i++) {
        sum += ((SipdnsSrv *)g_ptr_array_index(group, i))->weight;
        if (sum >= pick) {
          chosen = i;
          break;
        }
      }
      g_ptr_array_add(out, g_ptr_array_index(group, chosen));
      g_ptr_array_remove_index(group, chosen);
    }
    start = end;
  }
  /* The same records in the chosen order: copy the pointers back. */
  for (guint i = 0; i < out->len; i++)
    srvs->pdata[i] = out->pdata[i];
}

/* ---- querying ---- */

typedef struct {
  struct __res_state res;
  gboolean ready;
} SipdnsResolver;

static gboolean
sipdns_resolver_init(SipdnsResolver *r, const char *resolver, GError **error)
{
  memset(&r->res, 0, sizeof r->res);
  if (res_ninit(&r->res) != 0) {
    g_set_error_literal(error, SIPDNS_ERROR, SIPDNS_ERROR_UNAVAILABLE,
                        "cannot initialise the resolver");
    return FALSE;
  }
  r->ready = TRUE;
  if (resolver != NULL) {
    g_autofree char *host = NULL;
    guint64 port = 53;
    const char *colon = strrchr(resolver, ':');
    struct in_addr addr;

    host = colon != NULL ? g_strndup(resolver, colon - resolver) : g_strdup(resolver);
    if ((colon != NULL && !g_ascii_string_to_unsigned(colon + 1, 10, 1, 65535, &port, NULL)) ||
        inet_pton(AF_INET, host, &addr) != 1) {
      g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_INVALID,
                  "resolver %s is not IPV4-ADDRESS[:PORT]", resolver);
      return FALSE;
    }
    r->res.nscount = 1;
    r->res.nsaddr_list[0].sin_family = AF_INET;
    r->res.nsaddr_list[0].sin_addr = addr;
    r->res.nsaddr_list[0].sin_port = htons((guint16)port);
  }
  /* Answers are small; keep a dead resolver from stalling the command. */
  r->res.retrans = 2;
  r->res.retry = 2;
  return TRUE;
}

static void
sipdns_resolver_clear(SipdnsResolver *r)
{
  if (r->ready)
    res_nclose(&r->res);
  r->ready = FALSE;
}

/* The answer to @name/@type, or NULL with *@none set when the name or the
 * records do not exist (not an error). */
static GBytes *
sipdns_query(SipdnsResolver *r, const char *name, int type, gboolean *none, GError **error)
{
  g_autofree guint8 *buf = g_malloc(SIPDNS_MAX_ANSWER);
  int n;

  *none = FALSE;
  n = res_nquery(&r->res, name, ns_c_in, type, buf, SIPDNS_MAX_ANSWER);
  if (n < 0) {
    if (r->res.res_h_errno == HOST_NOT_FOUND || r->res.res_h_errno == NO_DATA) {
      *none = TRUE;
      return NULL;
    }
    g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_UNAVAILABLE, "DNS query for %s failed (%s)",
                name, hstrerror(r->res.res_h_errno));
    return NULL;
  }
  return g_bytes_new(buf, (gsize)MIN(n, SIPDNS_MAX_ANSWER));
}

/* The ordered SRV targets of @owner, appended to @out. */
static gboolean
sipdns_add_srv(SipdnsResolver *r, const char *owner, GRand *rand, GPtrArray *out, GError **error)
{
  gboolean none = FALSE;
  g_autoptr(GBytes) answer = sipdns_query(r, owner, ns_t_srv, &none, error);
  g_autoptr(GPtrArray) srvs = NULL;

  if (answer == NULL)
    return none;
  srvs = sipdns_parse_srv(g_bytes_get_data(answer, NULL), g_bytes_get_size(answer), error);
  if (srvs == NULL) {
    g_prefix_error(error, "SRV %s: ", owner);
    return FALSE;
  }
  sipdns_srv_order(srvs, rand);
  for (guint i = 0; i < srvs->len; i++) {
    SipdnsSrv *rr = g_ptr_array_index(srvs, i);
    SipdnsTarget *t = g_new0(SipdnsTarget, 1);
    t->host = g_strdup(rr->target);
    t->port = rr->port;
    g_ptr_array_add(out, t);
  }
  return TRUE;
}

GPtrArray *
sipdns_locate_sips(const char *domain, const char *resolver, GError **error)
{
  g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func((GDestroyNotify)sipdns_target_free);
  g_autoptr(GRand) rand = g_rand_new();
  g_autoptr(GBytes) answer = NULL;
  SipdnsResolver r = {0};
  gboolean none = FALSE, ok = FALSE;

  g_return_val_if_fail(domain != NULL, NULL);
  if (*domain == '\0' || strlen(domain) >= NS_MAXDNAME) {
    g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_INVALID, "no usable domain name");
    return NULL;
  }
  if (!sipdns_resolver_init(&r, resolver, error))
    goto done;
  answer = sipdns_query(&r, domain, SIPDNS_NS_T_NAPTR, &none, error);
  if (answer == NULL && !none)
    goto done;
  if (answer != NULL) {
    g_autoptr(GPtrArray) naptrs =
        sipdns_parse_naptr(g_bytes_get_data(answer, NULL), g_bytes_get_size(answer), error);
    g_auto(GStrv) owners = NULL;

    if (naptrs == NULL) {
      g_prefix_error(error, "NAPTR %s: ", domain);
      goto done;
    }
    if (naptrs->len > 0) {
      owners = sipdns_naptr_sips_owners(naptrs);
      if (owners[0] == NULL) {
        g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_NO_SERVICE,
                    "%s has NAPTR records but none for SIPS over TCP (SIPS+D2T)", domain);
        goto done;
      }
      for (guint i = 0; owners[i] != NULL; i++)
        if (!sipdns_add_srv(&r, owners[i], rand, out, error))
          goto done;
      if (out->len == 0) {
        g_set_error(error, SIPDNS_ERROR, SIPDNS_ERROR_NO_SERVICE,
                    "the SIPS+D2T NAPTR records of %s lead to no SRV target", domain);
        goto done;
      }
      ok = TRUE;
      goto done;
    }
  }
  {
    g_autofree char *owner = g_strdup_printf("_sips._tcp.%s", domain);
    if (!sipdns_add_srv(&r, owner, rand, out, error))
      goto done;
  }
  if (out->len == 0) {
    SipdnsTarget *t = g_new0(SipdnsTarget, 1);
    t->host = g_strdup(domain);
    t->port = 5061;
    g_ptr_array_add(out, t);
  }
  ok = TRUE;
done:
  sipdns_resolver_clear(&r);
  return ok ? g_steal_pointer(&out) : NULL;
}
