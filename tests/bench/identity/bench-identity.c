/* Benchmark of the identity stage: signed messages per second for each
 * signer backend, against the raw RSA sign rate of the same backend in the
 * same run, and through the signing pool on all cores. See
 * tests/bench/README.md for the output. */
#define G_LOG_DOMAIN "sipcred-bench"

#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "identity/cert.h"
#include "identity/sign.h"

#define ROUNDS 4
#define INFO_URL "https://example.com/cert/example.com.der"
#define FLOWS 16

/* Issue 5's figures for RSA-2048 on this kind of machine, per core. */
static const double reference[] = {[IDENT_SIGNER_GNUTLS] = 840, [IDENT_SIGNER_OPENSSL] = 3970};

/* A NOTIFY of the certificate package as the edge sends it: a DER
 * certificate of about 800 bytes in the body; @date NULL for none. */
static GBytes *
bench_message(GBytes *cert_der, const char *date)
{
  GString *s = g_string_new(NULL);

  g_string_append(s, "NOTIFY sips:bob@192.0.2.10:5061;transport=tls SIP/2.0\r\n"
                     "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776asdhds\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: <sip:alice@example.com>;tag=1928301774\r\n"
                     "To: <sip:bob@example.org>;tag=a6c85cf\r\n"
                     "Call-ID: a84b4c76e66710@pc33.example.org\r\n"
                     "CSeq: 314159 NOTIFY\r\n"
                     "Contact: <sips:edge.example.com:5061;transport=tls>\r\n"
                     "Event: certificate\r\n"
                     "Subscription-State: active;expires=3600\r\n"
                     "Content-Type: application/pkix-cert\r\n");
  if (date != NULL)
    g_string_append_printf(s, "Date: %s\r\n", date);
  g_string_append_printf(s, "Content-Length: %zu\r\n\r\n", g_bytes_get_size(cert_der));
  g_string_append_len(s, g_bytes_get_data(cert_der, NULL), g_bytes_get_size(cert_der));
  return g_string_free_to_bytes(s);
}

/* Calls per second of one figure for @seconds on this thread. */
static double
rate_raw(IdentSigner *signer, GBytes *digest, double seconds)
{
  gint64 start = g_get_monotonic_time(), end = start + (gint64)(seconds * G_USEC_PER_SEC), now;
  guint64 n = 0;

  do {
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) sig =
        ident_signer_sign(signer, IDENT_ALG_RSA_SHA256, g_bytes_get_data(digest, NULL),
                          g_bytes_get_size(digest), &error);
    if (sig == NULL)
      g_error("raw sign: %s", error->message);
    n++;
    now = g_get_monotonic_time();
  } while (now < end);
  return n / ((now - start) / (double)G_USEC_PER_SEC);
}

static double
rate_message(IdentSigner *signer, GBytes *msg, double seconds)
{
  gint64 start = g_get_monotonic_time(), end = start + (gint64)(seconds * G_USEC_PER_SEC), now;
  guint64 n = 0;

  do {
    g_autoptr(GError) error = NULL;
    /* Without Date, so each message gets one, as most NOTIFYs will. */
    g_autoptr(GBytes) out = ident_sign_message(
        signer, IDENT_ALG_RSA_SHA256, INFO_URL, g_get_real_time() / G_USEC_PER_SEC,
        g_bytes_get_data(msg, NULL), g_bytes_get_size(msg), &error);
    if (out == NULL)
      g_error("sign message: %s", error->message);
    n++;
    now = g_get_monotonic_time();
  } while (now < end);
  return n / ((now - start) / (double)G_USEC_PER_SEC);
}

typedef struct {
  IdentSignPool *pool;
  IdentSigner *signer;
  GBytes *msg;
  gint64 end;
  guint64 submitted, delivered;
  guint outstanding;
  gint64 last;
} PoolRun;

static void pool_submit(PoolRun *r);

static void
pool_done(GBytes *signed_msg, const GError *error, void *user_data)
{
  PoolRun *r = user_data;

  if (signed_msg == NULL)
    g_error("pool: %s", error->message);
  r->delivered++;
  r->outstanding--;
  r->last = g_get_monotonic_time();
  if (r->last < r->end)
    pool_submit(r);
}

static void
pool_submit(PoolRun *r)
{
  ident_sign_pool_submit(r->pool, r->submitted % FLOWS, r->signer, IDENT_ALG_RSA_SHA256, INFO_URL,
                         g_get_real_time() / G_USEC_PER_SEC, r->msg, pool_done, r, NULL);
  r->submitted++;
  r->outstanding++;
}

/* Signed messages per second through the pool, with a window of four jobs
 * per thread kept in flight from the main loop, as a fan-out would. */
static double
rate_pool(IdentSignPool *pool, IdentSigner *signer, GBytes *msg, double seconds)
{
  PoolRun r = {.pool = pool, .signer = signer, .msg = msg};
  gint64 start = g_get_monotonic_time();

  r.end = start + (gint64)(seconds * G_USEC_PER_SEC);
  for (guint i = 0; i < 4 * ident_sign_pool_get_threads(pool); i++)
    pool_submit(&r);
  while (r.outstanding > 0)
    g_main_context_iteration(NULL, TRUE);
  return r.delivered / ((r.last - start) / (double)G_USEC_PER_SEC);
}

int
main(int argc, char **argv)
{
  double seconds = 2.0;
  guint threads = 0;
  GOptionEntry entries[] = {
      {"seconds", 's', 0, G_OPTION_ARG_DOUBLE, &seconds, "Seconds per figure (default 2)", "S"},
      {"threads", 't', 0, G_OPTION_ARG_INT, &threads, "Pool threads (default: cores)", "N"},
      {NULL},
  };
  g_autoptr(GOptionContext) octx = g_option_context_new("- identity signing benchmark");
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) pkcs8 = NULL, msg = NULL, digest = NULL;
  g_autoptr(IdentCert) cert = NULL;
  g_autoptr(IdentSignPool) pool = NULL;
  IdentSigner *signers[2] = {NULL, NULL};
  double raw[2] = {0}, message[2] = {0}, pooled[2] = {0};
  GBytes *der;

  g_option_context_add_main_entries(octx, entries, NULL);
  if (!g_option_context_parse(octx, &argc, &argv, &error)) {
    fprintf(stderr, "%s\n", error->message);
    return 2;
  }
  cert = ident_cert_generate("sip:bench@example.com", 2048, 30, g_get_real_time() / G_USEC_PER_SEC,
                             &pkcs8, &error);
  if (cert == NULL)
    g_error("key generation: %s", error->message);
  der = ident_cert_get_der(cert);
  for (IdentSignerBackend b = IDENT_SIGNER_GNUTLS; b <= IDENT_SIGNER_OPENSSL; b++) {
    if (!ident_signer_backend_available(b))
      continue;
    signers[b] = ident_signer_new(b, g_bytes_get_data(pkcs8, NULL), g_bytes_get_size(pkcs8),
                                  g_bytes_get_data(der, NULL), g_bytes_get_size(der), &error);
    if (signers[b] == NULL)
      g_error("%s signer: %s", ident_signer_backend_to_string(b), error->message);
  }
  msg = bench_message(der, NULL);
  {
    /* The raw figure signs the digest-string of that message once it has
     * its Date, so both figures sign the same bytes. */
    g_autofree char *date = ident_date_format(g_get_real_time() / G_USEC_PER_SEC);
    g_autoptr(GBytes) dated = bench_message(der, date);
    digest = ident_digest_string(g_bytes_get_data(dated, NULL), g_bytes_get_size(dated), &error);
    if (digest == NULL)
      g_error("digest-string: %s", error->message);
  }
  pool = ident_sign_pool_new(threads, &error);
  if (pool == NULL)
    g_error("pool: %s", error->message);

  printf("# sipcred identity benchmark: RSA-2048 rsa-sha256, NOTIFY of %zu bytes "
         "(digest-string %zu bytes), %.1f s per figure (%d alternating rounds), "
         "pool of %u threads on %u cores\n",
         g_bytes_get_size(msg), g_bytes_get_size(digest), seconds, ROUNDS,
         ident_sign_pool_get_threads(pool), g_get_num_processors());
  printf("# raw: ident_signer_sign() of the digest-string, one thread; message: "
         "ident_sign_message() (parse, Date, sign, base64, headers), one thread; pool: "
         "ident_sign_pool with %u jobs in flight\n",
         4 * ident_sign_pool_get_threads(pool));
  /* Rounds alternate between the backends and the figures, so that other
   * load on the machine affects all alike. */
  for (guint round = 0; round < ROUNDS; round++) {
    for (IdentSignerBackend b = IDENT_SIGNER_GNUTLS; b <= IDENT_SIGNER_OPENSSL; b++) {
      if (signers[b] == NULL)
        continue;
      raw[b] += rate_raw(signers[b], digest, seconds / ROUNDS) / ROUNDS;
      message[b] += rate_message(signers[b], msg, seconds / ROUNDS) / ROUNDS;
      pooled[b] += rate_pool(pool, signers[b], msg, seconds / ROUNDS) / ROUNDS;
    }
  }
  for (IdentSignerBackend b = IDENT_SIGNER_GNUTLS; b <= IDENT_SIGNER_OPENSSL; b++) {
    if (signers[b] == NULL) {
      printf("# %s backend not built\n", ident_signer_backend_to_string(b));
      continue;
    }
    printf("signed_per_s backend=%s raw=%.0f message=%.0f message_to_raw=%.2f pool=%.0f "
           "pool_to_raw=%.2f reference=%.0f raw_to_reference=%.2f\n",
           ident_signer_backend_to_string(b), raw[b], message[b], message[b] / raw[b], pooled[b],
           pooled[b] / raw[b], reference[b], raw[b] / reference[b]);
  }
  printf("# csv: backend,alg,message_bytes,raw_per_s,message_per_s,pool_per_s,pool_threads,"
         "reference_per_s\n");
  for (IdentSignerBackend b = IDENT_SIGNER_GNUTLS; b <= IDENT_SIGNER_OPENSSL; b++)
    if (signers[b] != NULL)
      printf("csv,%s,rsa-sha256,%zu,%.0f,%.0f,%.0f,%u,%.0f\n", ident_signer_backend_to_string(b),
             g_bytes_get_size(msg), raw[b], message[b], pooled[b],
             ident_sign_pool_get_threads(pool), reference[b]);
  for (guint i = 0; i < G_N_ELEMENTS(signers); i++)
    g_clear_pointer(&signers[i], ident_signer_unref);
  return 0;
}
