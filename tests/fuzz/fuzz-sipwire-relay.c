/* Fuzz target: the edge's four rewrites on one parsed message.
 *
 * Each rewrite runs on its own fresh parse with a fixed relay context. When
 * a rewrite succeeds, its output must serialize into a message that parses
 * back identically, and the properties the edge relies on must hold: the
 * flow token appears only in the edge's own Via, and nothing internal
 * reaches a client. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/sipwire.h"
#include "fuzz.h"

static const char *const domains[] = {"example.com", "example.org", NULL};

static const SipwireRelayCtx ctx = {
    .flow_token = "Fl0wT0ken42",
    .peer_ip = "192.0.2.7",
    .peer_port = 49152,
    .internal_host = "127.0.0.1",
    .edge_internal_port = 5070,
    .nua_port = 5080,
    .public_host = "example.com",
    .public_port = 5061,
    .served_domains = domains,
};

static gboolean
is_internal(const char *host, guint16 port)
{
  return host != NULL && g_ascii_strcasecmp(host, "127.0.0.1") == 0 &&
         (port == 5070 || port == 5080);
}

/* Serializes @msg and parses it back; the round trip must be exact. */
static SipwireMsg *
reparse(const SipwireMsg *msg)
{
  g_autoptr(GBytes) s1 = sipwire_msg_serialize(msg);
  g_autoptr(GError) error = NULL;
  SipwireMsg *again = sipwire_msg_parse(g_bytes_get_data(s1, NULL), g_bytes_get_size(s1), &error);
  FUZZ_CHECK(again != NULL);
  g_autoptr(GBytes) s2 = sipwire_msg_serialize(again);
  FUZZ_CHECK(g_bytes_equal(s1, s2));
  return again;
}

static void
check_no_internal_routes(const SipwireMsg *msg, const char *name, guint skip)
{
  g_autoptr(GPtrArray) values = sipwire_msg_get_values(msg, name);
  for (guint i = skip; i < values->len; i++) {
    g_autofree char *host = NULL;
    guint16 port = 0;
    if (sipwire_nameaddr_get_host_port(values->pdata[i], NULL, &host, &port))
      FUZZ_CHECK(!is_internal(host, port));
  }
}

static void
run_request_in(const uint8_t *data, size_t size)
{
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, size, NULL);
  if (msg == NULL)
    return;
  g_autoptr(GError) error = NULL;
  if (!sipwire_relay_request_in(msg, &ctx, &error)) {
    FUZZ_CHECK(error != NULL && error->domain == SIPWIRE_ERROR);
    return;
  }
  g_autoptr(SipwireMsg) out = reparse(msg);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(out, "Via");
  FUZZ_CHECK(vias->len >= 2);
  g_autofree char *host = NULL;
  guint16 port = 0;
  FUZZ_CHECK(sipwire_via_get_sent_by(vias->pdata[0], &host, &port));
  FUZZ_CHECK(g_str_equal(host, "127.0.0.1") && port == 5070);
  g_autofree char *token = sipwire_param_get(vias->pdata[0], "flow");
  FUZZ_CHECK(token != NULL && g_str_equal(token, "Fl0wT0ken42"));
  for (guint i = 1; i < vias->len; i++) {
    g_autofree char *flow = sipwire_param_get(vias->pdata[i], "flow");
    g_autofree char *h = NULL;
    guint16 p = 0;
    FUZZ_CHECK(flow == NULL);
    FUZZ_CHECK(sipwire_via_get_sent_by(vias->pdata[i], &h, &p));
    FUZZ_CHECK(!is_internal(h, p != 0 ? p : 5060));
  }
  g_autofree char *received = sipwire_param_get(vias->pdata[1], "received");
  g_autofree char *rport = sipwire_param_get(vias->pdata[1], "rport");
  FUZZ_CHECK(received != NULL && g_str_equal(received, "192.0.2.7"));
  FUZZ_CHECK(rport != NULL && g_str_equal(rport, "49152"));

  const char *method = sipwire_msg_get_method(out);
  gboolean dialog = g_str_equal(method, "SUBSCRIBE") || g_str_equal(method, "INVITE") ||
                    g_str_equal(method, "REFER");
  const char *rr = sipwire_msg_get_first(out, "Record-Route");
  if (dialog)
    FUZZ_CHECK(rr != NULL && g_str_equal(rr, "<sip:Fl0wT0ken42@127.0.0.1:5070;transport=tcp;lr>"));
  check_no_internal_routes(out, "Record-Route", dialog ? 1 : 0);
  check_no_internal_routes(out, "Route", 0);
}

static void
run_response_out(const uint8_t *data, size_t size)
{
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, size, NULL);
  if (msg == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_autofree char *token = NULL;
  if (!sipwire_relay_response_out(msg, &ctx, &token, &error)) {
    FUZZ_CHECK(error != NULL && token == NULL);
    return;
  }
  FUZZ_CHECK(token != NULL && token[0] != '\0');
  g_autoptr(SipwireMsg) out = reparse(msg);
  check_no_internal_routes(out, "Record-Route", 0);
}

static void
run_request_out(const uint8_t *data, size_t size)
{
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, size, NULL);
  if (msg == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_autofree char *token = NULL, *saved_via = NULL, *branch = NULL;
  if (!sipwire_relay_request_out(msg, &ctx, &token, &saved_via, &branch, &error)) {
    FUZZ_CHECK(error != NULL && token == NULL && saved_via == NULL && branch == NULL);
    return;
  }
  FUZZ_CHECK(token != NULL && saved_via != NULL && branch != NULL);
  g_autoptr(SipwireMsg) out = reparse(msg);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(out, "Via");
  FUZZ_CHECK(vias->len >= 1);
  FUZZ_CHECK(g_str_has_prefix(vias->pdata[0], "SIP/2.0/TLS example.com:5061;branch="));
  check_no_internal_routes(out, "Route", 0);
  check_no_internal_routes(out, "Record-Route", 0);
}

static void
run_response_in(const uint8_t *data, size_t size)
{
  static const char saved[] = "SIP/2.0/TCP 127.0.0.1:5080;rport;branch=z9hG4bKnua1";
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(data, size, NULL);
  if (msg == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_autofree char *branch = NULL;
  if (!sipwire_relay_response_in(msg, &branch, &error)) {
    FUZZ_CHECK(error != NULL && branch == NULL);
    return;
  }
  FUZZ_CHECK(branch != NULL && branch[0] != '\0');
  sipwire_relay_response_in_restore(msg, saved);
  g_autoptr(SipwireMsg) out = reparse(msg);
  const char *top = sipwire_msg_get_first(out, "Via");
  FUZZ_CHECK(top != NULL && g_str_equal(top, saved));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  run_request_in(data, size);
  run_response_out(data, size);
  run_request_out(data, size);
  run_response_in(data, size);
  return 0;
}
