/* Unit tests of server/sipwire: framing, parsing, header helpers and the
 * edge's rewriting rules. */
#define G_LOG_DOMAIN "sipcred-test-sipwire"

#include <string.h>

#include "server/sipwire.h"

static const char *const served_domains[] = {"example.com", "example.org", NULL};

/* The edge of these tests: TLS on example.com:5061, its internal listener on
 * 127.0.0.1:5070 and nua on 127.0.0.1:5080. */
static const SipwireRelayCtx relay_ctx = {
    .flow_token = "Fl0wT0ken42",
    .peer_ip = "192.0.2.7",
    .peer_port = 49152,
    .internal_host = "127.0.0.1",
    .edge_internal_port = 5070,
    .nua_port = 5080,
    .public_host = "example.com",
    .public_port = 5061,
    .served_domains = served_domains,
};

#define EDGE_RR "<sip:Fl0wT0ken42@127.0.0.1:5070;transport=tcp;lr>"

/* ---- helpers ----------------------------------------------------------- */

static SipwireMsg *
parse_str(const char *text)
{
  g_autoptr(GError) error = NULL;
  SipwireMsg *msg = sipwire_msg_parse((const guint8 *)text, strlen(text), &error);
  g_assert_no_error(error);
  g_assert_nonnull(msg);
  return msg;
}

static void
assert_parse_fails(const char *text, SipwireError code)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SipwireMsg) msg = sipwire_msg_parse((const guint8 *)text, strlen(text), &error);
  g_assert_error(error, SIPWIRE_ERROR, (gint)code);
  g_assert_null(msg);
}

static char *
serialize_str(const SipwireMsg *msg)
{
  g_autoptr(GBytes) bytes = sipwire_msg_serialize(msg);
  gsize n;
  const char *data = g_bytes_get_data(bytes, &n);
  return g_strndup(data, n);
}

static char *
values_join(const SipwireMsg *msg, const char *name)
{
  g_autoptr(GPtrArray) values = sipwire_msg_get_values(msg, name);
  g_ptr_array_add(values, NULL);
  return g_strjoinv(" | ", (char **)values->pdata);
}

#define assert_values(msg, name, expected)                                                        \
  G_STMT_START                                                                                    \
  {                                                                                               \
    g_autofree char *joined_ = values_join((msg), (name));                                        \
    g_assert_cmpstr(joined_, ==, (expected));                                                     \
  }                                                                                               \
  G_STMT_END

static void
push_str(SipwireFramer *f, const char *s)
{
  sipwire_framer_push(f, (const guint8 *)s, strlen(s));
}

/* Next framer result; a message is returned as a string in *text. */
static SipwireFrameResult
next_str(SipwireFramer *f, char **text, GError **error)
{
  g_autoptr(GBytes) out = NULL;
  SipwireFrameResult r = sipwire_framer_next(f, &out, error);
  if (r == SIPWIRE_FRAME_MESSAGE) {
    gsize n;
    const char *d = g_bytes_get_data(out, &n);
    *text = g_strndup(d, n);
  }
  return r;
}

static void
assert_next_message(SipwireFramer *f, const char *expected)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *text = NULL;
  g_assert_cmpint(next_str(f, &text, &error), ==, SIPWIRE_FRAME_MESSAGE);
  g_assert_no_error(error);
  g_assert_cmpstr(text, ==, expected);
}

static void
assert_next(SipwireFramer *f, SipwireFrameResult expected)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *text = NULL;
  g_assert_cmpint(next_str(f, &text, &error), ==, expected);
  g_assert_no_error(error);
}

static void
assert_next_error(SipwireFramer *f, SipwireError code)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *text = NULL;
  g_assert_cmpint(next_str(f, &text, &error), ==, SIPWIRE_FRAME_ERROR);
  g_assert_error(error, SIPWIRE_ERROR, (gint)code);
}

/* ---- framing ----------------------------------------------------------- */

#define OPTIONS_MSG                                                                               \
  "OPTIONS sip:alice@example.com SIP/2.0\r\n"                                                     \
  "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKopt1\r\n"                                         \
  "From: <sip:bob@example.com>;tag=b1\r\n"                                                        \
  "To: <sip:alice@example.com>\r\n"                                                               \
  "Call-ID: opt1@10.0.0.5\r\n"                                                                    \
  "CSeq: 1 OPTIONS\r\n"                                                                           \
  "Content-Length: 0\r\n"                                                                         \
  "\r\n"

#define MESSAGE_MSG                                                                               \
  "MESSAGE sip:alice@example.com SIP/2.0\r\n"                                                     \
  "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKmsg1\r\n"                                         \
  "From: <sip:bob@example.com>;tag=b2\r\n"                                                        \
  "To: <sip:alice@example.com>\r\n"                                                               \
  "Call-ID: msg1@10.0.0.5\r\n"                                                                    \
  "CSeq: 2 MESSAGE\r\n"                                                                           \
  "Content-Type: text/plain\r\n"                                                                  \
  "l: 13\r\n"                                                                                     \
  "\r\n"                                                                                          \
  "Hello, Alice!"

static void
test_framer_single(void)
{
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  push_str(f, MESSAGE_MSG);
  assert_next_message(f, MESSAGE_MSG);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  g_assert_cmpuint(sipwire_framer_get_pending(f), ==, 0);
}

static void
test_framer_byte_by_byte(void)
{
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  const char *all = MESSAGE_MSG OPTIONS_MSG;
  gsize first_len = strlen(MESSAGE_MSG), total = strlen(all);
  guint got = 0;

  for (gsize i = 0; i < total; i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *text = NULL;
    sipwire_framer_push(f, (const guint8 *)all + i, 1);
    SipwireFrameResult r = next_str(f, &text, &error);
    g_assert_no_error(error);
    if (i + 1 == first_len) {
      g_assert_cmpint(r, ==, SIPWIRE_FRAME_MESSAGE);
      g_assert_cmpstr(text, ==, MESSAGE_MSG);
      got++;
    } else if (i + 1 == total) {
      g_assert_cmpint(r, ==, SIPWIRE_FRAME_MESSAGE);
      g_assert_cmpstr(text, ==, OPTIONS_MSG);
      got++;
    } else {
      /* Nothing comes out before the last byte of a message. */
      g_assert_cmpint(r, ==, SIPWIRE_FRAME_NEED_MORE);
      gsize in_msg = i + 1 < first_len ? i + 1 : i + 1 - first_len;
      g_assert_cmpuint(sipwire_framer_get_pending(f), ==, in_msg);
    }
  }
  g_assert_cmpuint(got, ==, 2);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
}

/* A message at the size limit, arriving byte by byte. */
static void
test_framer_large_byte_by_byte(void)
{
  g_autoptr(GString) text = g_string_new("MESSAGE sip:a@example.com SIP/2.0\r\n");
  for (int i = 0; i < 800; i++)
    g_string_append(text, "X-Filler: 0123456789012345678901234567890123456789\r\n");
  g_string_append(text, "Content-Length: 20000\r\n\r\n");
  for (int i = 0; i < 2000; i++)
    g_string_append(text, "body\r\nbody");
  g_autoptr(SipwireFramer) f = sipwire_framer_new(text->len);
  for (gsize i = 0; i < text->len; i++) {
    sipwire_framer_push(f, (const guint8 *)text->str + i, 1);
    if (i + 1 < text->len)
      assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  }
  assert_next_message(f, text->str);
}

static void
test_framer_pipelined(void)
{
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  /* Three messages in one push, a CRLF between two of them and half of a
   * fourth at the end. */
  push_str(f, OPTIONS_MSG MESSAGE_MSG "\r\n" OPTIONS_MSG "OPTIONS sip:x@exa");
  assert_next_message(f, OPTIONS_MSG);
  assert_next_message(f, MESSAGE_MSG);
  assert_next_message(f, OPTIONS_MSG);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  g_assert_cmpuint(sipwire_framer_get_pending(f), ==, strlen("OPTIONS sip:x@exa"));
}

static void
test_framer_ping(void)
{
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);

  /* A ping split over pushes is reported once complete. */
  push_str(f, "\r\n");
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  push_str(f, "\r");
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  push_str(f, "\n");
  assert_next(f, SIPWIRE_FRAME_PING);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  g_assert_cmpuint(sipwire_framer_get_pending(f), ==, 0);

  /* Pings between messages, two in a row, then a message. */
  push_str(f, OPTIONS_MSG "\r\n\r\n\r\n\r\n" OPTIONS_MSG);
  assert_next_message(f, OPTIONS_MSG);
  assert_next(f, SIPWIRE_FRAME_PING);
  assert_next(f, SIPWIRE_FRAME_PING);
  assert_next_message(f, OPTIONS_MSG);

  /* Single CRLFs before a message are skipped, not taken as pings. */
  push_str(f, "\r\nOPTIONS");
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  push_str(f, strchr(OPTIONS_MSG, ' '));
  assert_next_message(f, OPTIONS_MSG);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
}

static void
test_framer_binary_body(void)
{
  static const guint8 body[] = {'a', 0x00, 0xff, '\r', '\n', '\r', '\n', 0x00, 'z'};
  g_autofree char *head = g_strdup_printf("MESSAGE sip:a@example.com SIP/2.0\r\n"
                                          "Content-Type: application/octet-stream\r\n"
                                          "Content-Length: %zu\r\n\r\n",
                                          sizeof body);
  g_autoptr(GByteArray) wire = g_byte_array_new();
  g_byte_array_append(wire, (const guint8 *)head, (guint)strlen(head));
  g_byte_array_append(wire, body, sizeof body);
  g_byte_array_append(wire, (const guint8 *)OPTIONS_MSG, (guint)strlen(OPTIONS_MSG));

  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  sipwire_framer_push(f, wire->data, wire->len);
  g_autoptr(GBytes) out = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_cmpint(sipwire_framer_next(f, &out, &error), ==, SIPWIRE_FRAME_MESSAGE);
  g_assert_no_error(error);
  gsize n;
  const guint8 *d = g_bytes_get_data(out, &n);
  g_assert_cmpmem(d, n, wire->data, strlen(head) + sizeof body);

  g_autoptr(SipwireMsg) msg = sipwire_msg_parse(d, n, &error);
  g_assert_no_error(error);
  g_autoptr(GBytes) parsed_body = sipwire_msg_get_body(msg);
  g_assert_cmpmem(g_bytes_get_data(parsed_body, NULL), g_bytes_get_size(parsed_body), body,
                  sizeof body);
  assert_next_message(f, OPTIONS_MSG);
}

static void
test_framer_content_length_errors(void)
{
  static const struct {
    const char *header;
    SipwireError code;
  } cases[] = {
      {"", SIPWIRE_ERROR_FRAMING},                              /* missing */
      {"Content-Length: -5\r\n", SIPWIRE_ERROR_FRAMING},        /* negative */
      {"Content-Length: five\r\n", SIPWIRE_ERROR_FRAMING},      /* non-numeric */
      {"Content-Length: 5x\r\n", SIPWIRE_ERROR_FRAMING},        /* trailing junk */
      {"Content-Length:\r\n", SIPWIRE_ERROR_FRAMING},           /* empty */
      {"Content-Length: 5, 5\r\n", SIPWIRE_ERROR_FRAMING},      /* list */
      {"Content-Length: 0\r\nl: 0\r\n", SIPWIRE_ERROR_FRAMING}, /* duplicated */
      {"Content-Length: 13\r\nContent-Length: 5\r\n", SIPWIRE_ERROR_FRAMING},
      {"Content-Length: 70000\r\n", SIPWIRE_ERROR_TOO_BIG}, /* over the limit */
      {"Content-Length: 99999999999999999999999999\r\n", SIPWIRE_ERROR_TOO_BIG},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
    g_autofree char *text = g_strdup_printf("OPTIONS sip:a@example.com SIP/2.0\r\n"
                                            "Call-ID: x\r\n%s\r\n",
                                            cases[i].header);
    g_test_message("case %zu: %s", i, cases[i].header);
    push_str(f, text);
    assert_next_error(f, cases[i].code);
    /* Framing is lost for good: the stream must be closed. */
    push_str(f, OPTIONS_MSG);
    assert_next_error(f, cases[i].code);
    g_assert_cmpuint(sipwire_framer_get_pending(f), ==, 0);
  }
}

static void
test_framer_too_big(void)
{
  /* A header block that never ends is refused once over the limit. */
  g_autoptr(SipwireFramer) f = sipwire_framer_new(1024);
  push_str(f, "OPTIONS sip:a@example.com SIP/2.0\r\n");
  for (int i = 0; i < 25; i++)
    push_str(f, "X-Filler: 0123456789012345678901234\r\n");
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  for (int i = 0; i < 5; i++)
    push_str(f, "X-Filler: 0123456789012345678901234\r\n");
  assert_next_error(f, SIPWIRE_ERROR_TOO_BIG);

  /* Headers plus body over the limit, announced by Content-Length. */
  g_autoptr(SipwireFramer) g = sipwire_framer_new(200);
  push_str(g, "MESSAGE sip:a@example.com SIP/2.0\r\nContent-Length: 170\r\n\r\n");
  assert_next_error(g, SIPWIRE_ERROR_TOO_BIG);

  /* Exactly at the limit is fine. */
  g_autoptr(SipwireFramer) h = sipwire_framer_new(strlen(MESSAGE_MSG));
  push_str(h, MESSAGE_MSG);
  assert_next_message(h, MESSAGE_MSG);
}

/* ---- parsing and serialization ----------------------------------------- */

static char *
bytes_str(GBytes *b)
{
  g_assert_nonnull(b);
  return g_strndup(g_bytes_get_data(b, NULL), g_bytes_get_size(b));
}

/* What is buffered of a message not yet whole can be looked at (the edge
 * answers it when the flow goes idle), without being consumed. */
static void
test_framer_peek_pending(void)
{
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  g_autoptr(GBytes) none = sipwire_framer_peek_pending(f);
  g_assert_null(none);
  g_autofree char *start = g_strndup(OPTIONS_MSG, 20);
  push_str(f, OPTIONS_MSG);
  push_str(f, start);
  assert_next_message(f, OPTIONS_MSG);
  assert_next(f, SIPWIRE_FRAME_NEED_MORE);
  g_autoptr(GBytes) half = sipwire_framer_peek_pending(f);
  g_autofree char *half_text = bytes_str(half);
  g_assert_cmpstr(half_text, ==, start);
  /* Still there: the rest completes the message. */
  push_str(f, OPTIONS_MSG + 20);
  assert_next_message(f, OPTIONS_MSG);
  g_autoptr(GBytes) after = sipwire_framer_peek_pending(f);
  g_assert_null(after);
}

/* When framing is lost with the headers whole, they are kept (so the edge
 * can answer before it closes) but are no longer pending; when the header
 * block itself is too big there is nothing to keep. */
static void
test_framer_failed_head(void)
{
  static const struct {
    const char *text;
    SipwireError code;
    const char *head;
  } cases[] = {
      {"OPTIONS sip:a SIP/2.0\r\nCall-ID: 1\r\n\r\nbody", SIPWIRE_ERROR_FRAMING,
       "OPTIONS sip:a SIP/2.0\r\nCall-ID: 1\r\n\r\n"},
      {"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nxx", SIPWIRE_ERROR_FRAMING,
       "OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n"},
      {"INVITE sip:a SIP/2.0\nContent-Length: -999\n\n", SIPWIRE_ERROR_FRAMING,
       "INVITE sip:a SIP/2.0\nContent-Length: -999\n\n"},
      {"MESSAGE sip:a SIP/2.0\r\nContent-Length: 99999\r\n\r\n", SIPWIRE_ERROR_TOO_BIG,
       "MESSAGE sip:a SIP/2.0\r\nContent-Length: 99999\r\n\r\n"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(SipwireFramer) f = sipwire_framer_new(1024);
    g_autoptr(GBytes) before = sipwire_framer_get_failed_head(f);
    g_assert_null(before);
    push_str(f, cases[i].text);
    assert_next_error(f, cases[i].code);
    g_autoptr(GBytes) head = sipwire_framer_get_failed_head(f);
    g_autofree char *head_text = bytes_str(head);
    g_assert_cmpstr(head_text, ==, cases[i].head);
    g_assert_cmpuint(sipwire_framer_get_pending(f), ==, 0);
    g_autoptr(GBytes) pending = sipwire_framer_peek_pending(f);
    g_assert_null(pending);
  }
  g_autoptr(SipwireFramer) f = sipwire_framer_new(64);
  push_str(f, "OPTIONS sip:a SIP/2.0\r\nX-Long: 01234567890123456789012345678901234567890\r\n");
  assert_next_error(f, SIPWIRE_ERROR_TOO_BIG);
  g_autoptr(GBytes) head = sipwire_framer_get_failed_head(f);
  g_assert_null(head);
}

static void
test_msg_parse_request(void)
{
  g_autoptr(SipwireMsg) msg = parse_str(MESSAGE_MSG);
  g_assert_true(sipwire_msg_is_request(msg));
  g_assert_cmpstr(sipwire_msg_get_method(msg), ==, "MESSAGE");
  g_assert_cmpstr(sipwire_msg_get_request_uri(msg), ==, "sip:alice@example.com");
  g_assert_cmpuint(sipwire_msg_get_status(msg), ==, 0);
  g_assert_cmpstr(sipwire_msg_get_first(msg, "call-id"), ==, "msg1@10.0.0.5");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "CSeq"), ==, "2 MESSAGE");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Content-Length"), ==, "13");
  g_assert_null(sipwire_msg_get_first(msg, "Route"));
  g_autoptr(GPtrArray) none = sipwire_msg_get_values(msg, "Route");
  g_assert_cmpuint(none->len, ==, 0);
  g_autoptr(GBytes) body = sipwire_msg_get_body(msg);
  g_assert_cmpmem(g_bytes_get_data(body, NULL), g_bytes_get_size(body), "Hello, Alice!", 13);

  sipwire_msg_set_request_uri(msg, "sip:alice@10.0.0.9:5061");
  g_assert_cmpstr(sipwire_msg_get_request_uri(msg), ==, "sip:alice@10.0.0.9:5061");
  g_autofree char *text = serialize_str(msg);
  g_assert_true(g_str_has_prefix(text, "MESSAGE sip:alice@10.0.0.9:5061 SIP/2.0\r\n"));
}

static void
test_msg_parse_response(void)
{
  g_autoptr(SipwireMsg) msg = parse_str("SIP/2.0 404 Not Found Here\r\n"
                                        "Via: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
                                        "Content-Length: 0\r\n\r\n");
  g_assert_false(sipwire_msg_is_request(msg));
  g_assert_null(sipwire_msg_get_method(msg));
  g_assert_null(sipwire_msg_get_request_uri(msg));
  g_assert_cmpuint(sipwire_msg_get_status(msg), ==, 404);
  g_autofree char *text = serialize_str(msg);
  g_assert_cmpstr(text, ==,
                  "SIP/2.0 404 Not Found Here\r\n"
                  "Via: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
                  "Content-Length: 0\r\n\r\n");

  /* An empty reason phrase is allowed (RFC 4475 3.1.1.13). */
  g_autoptr(SipwireMsg) noreason = parse_str("SIP/2.0 100 \r\nContent-Length: 0\r\n\r\n");
  g_assert_cmpuint(sipwire_msg_get_status(noreason), ==, 100);
}

static void
test_msg_parse_errors(void)
{
  assert_parse_fails("OPTIONS sip:a@b SIP/3.0\r\n\r\n", SIPWIRE_ERROR_VERSION);
  assert_parse_fails("OPTIONS sip:a@b SIP/1.0\r\n\r\n", SIPWIRE_ERROR_VERSION);
  assert_parse_fails("SIP/7.0 200 OK\r\n\r\n", SIPWIRE_ERROR_VERSION);

  assert_parse_fails("", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b HTTP/1.1\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0 \r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS  sip:a@b SIP/2.0\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS <sip:a@b> SIP/2.0\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS nocolon SIP/2.0\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPT(IONS sip:a@b SIP/2.0\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("SIP/2.0 20 OK\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("SIP/2.0 2000 OK\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("SIP/2.0 099 Low\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("SIP/2.0 700 High\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  /* Header lines. */
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0\r\n: empty name\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0\r\nBad Name: v\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0\r\n folded: first\r\n\r\n", SIPWIRE_ERROR_MALFORMED);
  /* A bare CR could end the line for another parser: header injection. */
  assert_parse_fails("OPTIONS sip:a@b SIP/2.0\r\nX-A: a\rVia: SIP/2.0/TCP 127.0.0.1:5080\r\n\r\n",
                     SIPWIRE_ERROR_MALFORMED);
  static const char with_nul[] = "OPTIONS sip:a@b SIP/2.0\r\nTo: \"a\0b\" <sip:a@b>\r\n\r\n";
  g_autoptr(GError) error = NULL;
  g_autoptr(SipwireMsg) msg =
      sipwire_msg_parse((const guint8 *)with_nul, sizeof with_nul - 1, &error);
  g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);
  g_assert_null(msg);
  /* Content-Length larger than the bytes there, or duplicated. */
  assert_parse_fails("MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
                     SIPWIRE_ERROR_MALFORMED);
  assert_parse_fails("MESSAGE sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 1\r\n\r\nx",
                     SIPWIRE_ERROR_MALFORMED);
}

/* SIPWIRE_MAX_HEADERS header fields parse; one more is MALFORMED, and the
 * edge can still answer it from the bytes. */
static void
test_msg_too_many_headers(void)
{
  for (guint extra = 0; extra <= 1; extra++) {
    g_autoptr(GString) s = g_string_new("OPTIONS sip:a@b SIP/2.0\r\n"
                                        "Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKx\r\n"
                                        "From: <sip:c@b>;tag=1\r\nTo: <sip:a@b>\r\n"
                                        "Call-ID: many\r\nCSeq: 1 OPTIONS\r\n");
    for (guint i = 5; i < SIPWIRE_MAX_HEADERS - 1 + extra; i++)
      g_string_append_printf(s, "X-H%u: %u\r\n", i, i);
    g_string_append(s, "Content-Length: 0\r\n\r\n");
    g_autoptr(GError) error = NULL;
    g_autoptr(SipwireMsg) msg = sipwire_msg_parse((const guint8 *)s->str, s->len, &error);
    if (extra == 0) {
      g_assert_no_error(error);
      g_assert_nonnull(msg);
      g_assert_cmpstr(sipwire_msg_get_first(msg, "Content-Length"), ==, "0");
      continue;
    }
    g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);
    g_assert_cmpstr(error->message, ==, "Too many header fields");
    g_assert_null(msg);
    g_autoptr(GBytes) reply =
        sipwire_build_response_raw((const guint8 *)s->str, s->len, 400, "Too many header fields");
    g_assert_nonnull(reply);
    g_assert_true(
        g_str_has_prefix(g_bytes_get_data(reply, NULL), "SIP/2.0 400 Too many header fields\r\n"));
  }
}

/* Each way of getting the request line's whitespace wrong is MALFORMED and
 * says which; only a well-formed version other than 2.0 is VERSION (the edge
 * answers 400 with the reason, or 505). */
static void
test_msg_request_line(void)
{
  static const struct {
    const char *line;
    SipwireError code;
    const char *why;
  } cases[] = {
      {"INVITE  sip:a@b  SIP/2.0", SIPWIRE_ERROR_MALFORMED,
       "more than one space between request line elements"},
      {"INVITE sip:a@b  SIP/2.0", SIPWIRE_ERROR_MALFORMED,
       "more than one space between request line elements"},
      {"OPTIONS sip:a@b SIP/2.0  ", SIPWIRE_ERROR_MALFORMED,
       "whitespace at the end of the request line"},
      {"OPTIONS sip:a@b SIP/2.0\t", SIPWIRE_ERROR_MALFORMED,
       "whitespace at the end of the request line"},
      {"INVITE sip:a@b; lr SIP/2.0", SIPWIRE_ERROR_MALFORMED, "whitespace in the Request-URI"},
      {"INVITE sip:a@b;\tlr SIP/2.0", SIPWIRE_ERROR_MALFORMED, "whitespace in the Request-URI"},
      {"INVITE <sip:a@b> SIP/2.0", SIPWIRE_ERROR_MALFORMED, "Request-URI in angle brackets"},
      {"INVITE nocolon SIP/2.0", SIPWIRE_ERROR_MALFORMED, "invalid Request-URI"},
      {"INVITE sip:a@b HTTP/1.1", SIPWIRE_ERROR_MALFORMED, "invalid SIP version"},
      {"INVITE sip:a@b SIP/2.0x", SIPWIRE_ERROR_MALFORMED, "invalid SIP version"},
      {"INVITE sip:a@b", SIPWIRE_ERROR_MALFORMED, "request line without a SIP version"},
      {"INV(ITE sip:a@b SIP/2.0", SIPWIRE_ERROR_MALFORMED, "invalid method"},
      {"INVITE", SIPWIRE_ERROR_MALFORMED, "invalid start line"},
      {"OPTIONS sip:a@b SIP/7.0", SIPWIRE_ERROR_VERSION, "SIP version not supported"},
      {"OPTIONS sip:a@b sip/10.20", SIPWIRE_ERROR_VERSION, "SIP version not supported"},
      /* The version is looked at before the URI's content. */
      {"OPTIONS <sip:a@b> SIP/3.0", SIPWIRE_ERROR_VERSION, "SIP version not supported"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *text = g_strdup_printf("%s\r\nContent-Length: 0\r\n\r\n", cases[i].line);
    g_autoptr(GError) error = NULL;
    g_autoptr(SipwireMsg) msg = sipwire_msg_parse((const guint8 *)text, strlen(text), &error);
    g_test_message("%s", cases[i].line);
    g_assert_null(msg);
    g_assert_error(error, SIPWIRE_ERROR, (gint)cases[i].code);
    g_assert_cmpstr(error->message, ==, cases[i].why);
  }
  /* A single space each, and odd but legal characters, still parse. */
  g_autoptr(SipwireMsg) ok = parse_str("!odd-Method.% sip:a;b=c@example.com SIP/2.0\r\n\r\n");
  g_assert_cmpstr(sipwire_msg_get_method(ok), ==, "!odd-Method.%");
  g_assert_cmpstr(sipwire_msg_get_request_uri(ok), ==, "sip:a;b=c@example.com");
}

static void
test_msg_folding(void)
{
  g_autoptr(SipwireMsg) msg = parse_str("SUBSCRIBE sip:a@example.com SIP/2.0\r\n"
                                        "TO :\r\n"
                                        " sip:a@example.com ;   tag    = 1918\r\n"
                                        "Subject: first\r\n"
                                        "\t  second  \r\n"
                                        "   third\r\n"
                                        "Via  : SIP  /   2.0\r\n"
                                        " /TCP\r\n"
                                        "    192.0.2.2;branch=z9hG4bK390\r\n"
                                        "Content-Length: 0\r\n\r\n");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "To"), ==, "sip:a@example.com ;   tag    = 1918");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Subject"), ==, "first second third");
  g_autofree char *tag = sipwire_param_get(sipwire_msg_get_first(msg, "t"), "tag");
  g_assert_cmpstr(tag, ==, "1918");
  g_autofree char *host = NULL;
  guint16 port = 1;
  g_assert_true(sipwire_via_get_sent_by(sipwire_msg_get_first(msg, "v"), &host, &port));
  g_assert_cmpstr(host, ==, "192.0.2.2");
  g_assert_cmpuint(port, ==, 0);

  g_autofree char *text = serialize_str(msg);
  g_assert_cmpstr(text, ==,
                  "SUBSCRIBE sip:a@example.com SIP/2.0\r\n"
                  "TO: sip:a@example.com ;   tag    = 1918\r\n"
                  "Subject: first second third\r\n"
                  "Via: SIP  /   2.0 /TCP 192.0.2.2;branch=z9hG4bK390\r\n"
                  "Content-Length: 0\r\n\r\n");
}

static void
test_msg_compact(void)
{
  g_autoptr(SipwireMsg) msg = parse_str("NOTIFY sip:a@example.com SIP/2.0\r\n"
                                        "v: SIP/2.0/TCP a.example.com;branch=z9hG4bK1\r\n"
                                        "VIA: SIP/2.0/TCP b.example.com;branch=z9hG4bK2\r\n"
                                        "f: <sip:b@example.com>;tag=1\r\n"
                                        "t: <sip:a@example.com>\r\n"
                                        "i: c1\r\n"
                                        "m: <sip:b@10.0.0.1>\r\n"
                                        "o: credential\r\n"
                                        "u: certificate, credential\r\n"
                                        "k: path\r\n"
                                        "c: text/plain\r\n"
                                        "e: gzip\r\n"
                                        "s: hi\r\n"
                                        "r: <sip:c@example.com>\r\n"
                                        "b: <sip:d@example.com>\r\n"
                                        "x: 90\r\n"
                                        "y: \"abc\"\r\n"
                                        "n: <https://example.com/cert>;alg=rsa-sha256\r\n"
                                        "L: 0\r\n\r\n");
  static const char *const pairs[][2] = {
      {"From", "<sip:b@example.com>;tag=1"},
      {"To", "<sip:a@example.com>"},
      {"Call-ID", "c1"},
      {"Contact", "<sip:b@10.0.0.1>"},
      {"Event", "credential"},
      {"Allow-Events", "certificate"},
      {"Supported", "path"},
      {"Content-Type", "text/plain"},
      {"Content-Encoding", "gzip"},
      {"Subject", "hi"},
      {"Refer-To", "<sip:c@example.com>"},
      {"Referred-By", "<sip:d@example.com>"},
      {"Session-Expires", "90"},
      {"Identity", "\"abc\""},
      {"identity-info", "<https://example.com/cert>;alg=rsa-sha256"},
      {"content-length", "0"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(pairs); i++)
    g_assert_cmpstr(sipwire_msg_get_first(msg, pairs[i][0]), ==, pairs[i][1]);
  /* Lookups by compact name find the long forms too. */
  assert_values(msg, "v",
                "SIP/2.0/TCP a.example.com;branch=z9hG4bK1 | "
                "SIP/2.0/TCP b.example.com;branch=z9hG4bK2");
  assert_values(msg, "Allow-Events", "certificate | credential");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "l"), ==, "0");

  sipwire_msg_remove_header(msg, "Via");
  sipwire_msg_remove_header(msg, "u");
  g_assert_null(sipwire_msg_get_first(msg, "v"));
  g_assert_null(sipwire_msg_get_first(msg, "Allow-Events"));
}

static void
test_msg_list_split(void)
{
  g_autoptr(SipwireMsg) msg =
      parse_str("REGISTER sip:example.com SIP/2.0\r\n"
                "Via: SIP/2.0/TLS a.example.com;branch=z9hG4bK1 ,SIP/2.0/TLS b;branch=z9hG4bK2\r\n"
                "Contact: \"Doe, John \\\"JD\\\", Jr\" <sip:jd@10.0.0.1;x=\"a,b\">;q=0.5, "
                "<sip:jd@10.0.0.2?h=a,b>, sip:jd@10.0.0.3\r\n"
                "Contact: ,, <sip:jd@10.0.0.4>\r\n"
                "Route: <sip:p1.example.net;lr>,<sip:p2.example.net;lr>\r\n"
                "Accept: application/pkix-cert, application/pkcs8\r\n"
                "Subject: not, a, list\r\n"
                "Content-Length: 0\r\n\r\n");
  assert_values(msg, "Via",
                "SIP/2.0/TLS a.example.com;branch=z9hG4bK1 | SIP/2.0/TLS b;branch=z9hG4bK2");
  assert_values(msg, "m",
                "\"Doe, John \\\"JD\\\", Jr\" <sip:jd@10.0.0.1;x=\"a,b\">;q=0.5 | "
                "<sip:jd@10.0.0.2?h=a,b> | sip:jd@10.0.0.3 | <sip:jd@10.0.0.4>");
  assert_values(msg, "Route", "<sip:p1.example.net;lr> | <sip:p2.example.net;lr>");
  assert_values(msg, "Accept", "application/pkix-cert | application/pkcs8");
  assert_values(msg, "Subject", "not, a, list");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Contact"), ==,
                  "\"Doe, John \\\"JD\\\", Jr\" <sip:jd@10.0.0.1;x=\"a,b\">;q=0.5");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Via"), ==,
                  "SIP/2.0/TLS a.example.com;branch=z9hG4bK1");
}

static void
test_msg_edit(void)
{
  g_autoptr(SipwireMsg) msg = parse_str("MESSAGE sip:a@example.com SIP/2.0\r\n"
                                        "Via: SIP/2.0/TCP a;branch=z9hG4bK1, "
                                        "SIP/2.0/TCP b;branch=z9hG4bK2\r\n"
                                        "From: <sip:b@example.com>;tag=1\r\n"
                                        "v: SIP/2.0/TCP c;branch=z9hG4bK3\r\n"
                                        "Content-Length: 5\r\n"
                                        "To: <sip:a@example.com>\r\n\r\n"
                                        "hello");
  /* get_first's pointer stays valid until the next change. */
  const char *first = sipwire_msg_get_first(msg, "Via");
  g_assert_cmpstr(first, ==, "SIP/2.0/TCP a;branch=z9hG4bK1");
  g_assert_true(first == sipwire_msg_get_first(msg, "v"));

  g_autoptr(GPtrArray) vias = g_ptr_array_new_with_free_func(g_free);
  g_ptr_array_add(vias, g_strdup("SIP/2.0/TCP x;branch=z9hG4bKx"));
  g_ptr_array_add(vias, g_strdup("SIP/2.0/TCP y;branch=z9hG4bKy"));
  sipwire_msg_set_values(msg, "Via", vias);
  sipwire_msg_prepend_value(msg, "Via", "SIP/2.0/TCP top;branch=z9hG4bKt");
  sipwire_msg_prepend_value(msg, "Record-Route", "<sip:rr.example.com;lr>");
  sipwire_msg_append_header(msg, "X-Extra", "1");
  sipwire_msg_append_header(msg, "X-Extra", "2");
  g_assert_cmpstr(sipwire_msg_get_first(msg, "Via"), ==, "SIP/2.0/TCP top;branch=z9hG4bKt");
  assert_values(msg, "X-Extra", "1 | 2");

  g_autofree char *text = serialize_str(msg);
  /* Via lines where the first one was, the new Record-Route right after the
   * start line. */
  g_assert_cmpstr(text, ==,
                  "MESSAGE sip:a@example.com SIP/2.0\r\n"
                  "Record-Route: <sip:rr.example.com;lr>\r\n"
                  "Via: SIP/2.0/TCP top;branch=z9hG4bKt\r\n"
                  "Via: SIP/2.0/TCP x;branch=z9hG4bKx\r\n"
                  "Via: SIP/2.0/TCP y;branch=z9hG4bKy\r\n"
                  "From: <sip:b@example.com>;tag=1\r\n"
                  "Content-Length: 5\r\n"
                  "To: <sip:a@example.com>\r\n"
                  "X-Extra: 1\r\n"
                  "X-Extra: 2\r\n"
                  "\r\n"
                  "hello");

  g_autoptr(GPtrArray) empty = g_ptr_array_new();
  sipwire_msg_set_values(msg, "Via", empty);
  sipwire_msg_remove_header(msg, "Content-Length");
  g_free(text);
  text = serialize_str(msg);
  /* Without a Content-Length one is added at the end. */
  g_assert_cmpstr(text, ==,
                  "MESSAGE sip:a@example.com SIP/2.0\r\n"
                  "Record-Route: <sip:rr.example.com;lr>\r\n"
                  "From: <sip:b@example.com>;tag=1\r\n"
                  "To: <sip:a@example.com>\r\n"
                  "X-Extra: 1\r\n"
                  "X-Extra: 2\r\n"
                  "Content-Length: 5\r\n"
                  "\r\n"
                  "hello");
}

/* Parsing what we serialized gives the same message again. */
static void
test_msg_round_trip(void)
{
  const char *inputs[] = {
      OPTIONS_MSG,
      MESSAGE_MSG,
      "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
      "TO :\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
      "from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\n  ;\n  tag = 98asjd8\n"
      "Call-ID: wsinv\nl: 3\n\nabc",
      "SIP/2.0 200 OK\r\nVia: a\r\nVia: b\r\nContent-Length: 2\r\n\r\nxy",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(inputs); i++) {
    g_autoptr(SipwireMsg) m1 = parse_str(inputs[i]);
    g_autofree char *t1 = serialize_str(m1);
    g_autoptr(SipwireMsg) m2 = parse_str(t1);
    g_autofree char *t2 = serialize_str(m2);
    g_assert_cmpstr(t1, ==, t2);
    /* Our own serialization is one framed message. */
    g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
    push_str(f, t1);
    assert_next_message(f, t1);
  }
  /* Canonical input comes out byte for byte. */
  g_autoptr(SipwireMsg) m = parse_str(MESSAGE_MSG);
  g_autofree char *t = serialize_str(m);
  g_autofree char *expected = g_strdup(MESSAGE_MSG);
  char *l = strstr(expected, "l: 13");
  g_assert_nonnull(l);
  g_assert_true(g_str_has_prefix(t, "MESSAGE"));
  /* Only the compact Content-Length is written in full. */
  g_autofree char *prefix = g_strndup(expected, (gsize)(l - expected));
  g_autofree char *canonical = g_strconcat(prefix, "Content-Length: 13", l + 5, NULL);
  g_assert_cmpstr(t, ==, canonical);
}

/* ---- parameters and addresses ------------------------------------------ */

static void
test_param_get(void)
{
  static const struct {
    const char *value, *param, *expected;
  } cases[] = {
      {"SIP/2.0/TCP h:5060;branch=z9hG4bK1;rport;received=1.2.3.4", "branch", "z9hG4bK1"},
      {"SIP/2.0/TCP h:5060;branch=z9hG4bK1;rport;received=1.2.3.4", "rport", ""},
      {"SIP/2.0/TCP h:5060;branch=z9hG4bK1;rport;received=1.2.3.4", "RECEIVED", "1.2.3.4"},
      {"SIP/2.0/TCP h:5060;branch=z9hG4bK1", "flow", NULL},
      {"SIP/2.0/TCP h ; branch = z9hG4bK9 ; flow=abc", "flow", "abc"},
      /* name-addr: URI params are not header params */
      {"\"A;b=c\" <sip:a@h;tag=uri;lr>;tag=hdr;expires=60", "tag", "hdr"},
      {"<sip:a@h;lr>", "lr", NULL},
      {"<sip:a@h;lr>;q=0.5", "q", "0.5"},
      {"Bob <sip:a@h", "tag", NULL},
      /* bare URIs: all params; a ';' in the user part is not one */
      {"sip:h;lr", "lr", ""},
      {"sip:h:5070;maddr=127.0.0.1;transport=tcp", "transport", "tcp"},
      {"sip:user;par=u%40example.net@example.com;x=1", "par", NULL},
      {"sip:user;par=u%40example.net@example.com;x=1", "x", "1"},
      {"sip:a@h;p=\"q;r=s\"", "r", NULL},
      /* an '@' in a Via does not hide params written before it */
      {"SIP/2.0/TCP h;flow=victim;x=a@b", "flow", "victim"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *v = sipwire_param_get(cases[i].value, cases[i].param);
    g_test_message("%s / %s", cases[i].value, cases[i].param);
    g_assert_cmpstr(v, ==, cases[i].expected);
  }
}

static void
test_param_set_remove(void)
{
  static const struct {
    const char *value, *param, *set_to; /* set_to "-": remove; NULL: flag */
    const char *expected;
  } cases[] = {
      {"SIP/2.0/TCP h;branch=z9hG4bK1;flow=a;x;flow=b", "flow", "-",
       "SIP/2.0/TCP h;branch=z9hG4bK1;x"},
      {"SIP/2.0/TCP h;branch=z9hG4bK1", "flow", "-", "SIP/2.0/TCP h;branch=z9hG4bK1"},
      {"SIP/2.0/TCP h ;flow=a", "FLOW", "-", "SIP/2.0/TCP h"},
      {"SIP/2.0/TCP h;rport;branch=z9hG4bK1", "rport", "5062",
       "SIP/2.0/TCP h;rport=5062;branch=z9hG4bK1"},
      {"SIP/2.0/TCP h;branch=z9hG4bK1", "received", "192.0.2.1",
       "SIP/2.0/TCP h;branch=z9hG4bK1;received=192.0.2.1"},
      {"SIP/2.0/TCP h;received=1;received=2", "received", "3", "SIP/2.0/TCP h;received=3"},
      {"SIP/2.0/TCP h", "rport", NULL, "SIP/2.0/TCP h;rport"},
      {"<sip:a@h;tag=u>;tag=x", "tag", "y", "<sip:a@h;tag=u>;tag=y"},
      {"<sip:a@h;tag=u>", "tag", "y", "<sip:a@h;tag=u>;tag=y"},
      {"\"X\" <sip:a@h;lr>;expires=5;q=1", "expires", "-", "\"X\" <sip:a@h;lr>;q=1"},
      {"sip:a@h", "tag", "t1", "sip:a@h;tag=t1"},
      {"sip:h;lr;transport=tcp", "lr", "-", "sip:h;transport=tcp"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *v = NULL;
    g_test_message("%s / %s", cases[i].value, cases[i].param);
    if (g_strcmp0(cases[i].set_to, "-") == 0)
      v = sipwire_param_remove(cases[i].value, cases[i].param);
    else
      v = sipwire_param_set(cases[i].value, cases[i].param, cases[i].set_to);
    g_assert_cmpstr(v, ==, cases[i].expected);
  }
}

static void
test_sent_by(void)
{
  static const struct {
    const char *via, *host;
    guint16 port;
  } good[] = {
      {"SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK1", "127.0.0.1", 5080},
      {"SIP/2.0/TLS client.example.com;branch=z9hG4bK1", "client.example.com", 0},
      {"SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8",
       "spindle.example.com", 0},
      {"SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bK1", "[2001:db8::9:1]", 5060},
      {"SIP/2.0/TCP h : 05070", "h", 5070},
      {"SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK1", "df7jal23ls0d.invalid", 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
    g_autofree char *host = NULL;
    guint16 port = 7;
    g_test_message("%s", good[i].via);
    g_assert_true(sipwire_via_get_sent_by(good[i].via, &host, &port));
    g_assert_cmpstr(host, ==, good[i].host);
    g_assert_cmpuint(port, ==, good[i].port);
  }
  static const char *const bad[] = {
      "",
      ";",
      "SIP/2.0/TCP",
      "SIP/2.0/TCP ",
      "SIP/2.0 TCP h",
      "SIP/2.0/TCPh",
      "SIP/2.0/TCP h:0",
      "SIP/2.0/TCP h:65536",
      "SIP/2.0/TCP h:123456",
      "SIP/2.0/TCP h:",
      "SIP/2.0/TCP h x",
      "SIP/2.0/TCP [::1",
      "SIP/2.0/TCP h/x;branch=1",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autofree char *host = NULL;
    guint16 port = 0;
    g_test_message("bad: %s", bad[i]);
    g_assert_false(sipwire_via_get_sent_by(bad[i], &host, &port));
    g_assert_null(host);
  }
}

static void
test_nameaddr(void)
{
  static const struct {
    const char *value, *user, *host;
    guint16 port;
  } good[] = {
      {EDGE_RR, "Fl0wT0ken42", "127.0.0.1", 5070},
      {"\"Alice, A.\" <sips:alice:secret@example.com:5061;transport=tls>;q=1", "alice",
       "example.com", 5061},
      {"sip:example.com;lr", NULL, "example.com", 0},
      {"<sip:[2001:db8::1]:5080>", NULL, "[2001:db8::1]", 5080},
      {"sip:user;par=u%40example.net@example.com", "user;par=u%40example.net", "example.com", 0},
      {"<sip:a@h?subject=x>", "a", "h", 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
    g_autofree char *user = NULL, *host = NULL;
    guint16 port = 7;
    g_test_message("%s", good[i].value);
    g_assert_true(sipwire_nameaddr_get_host_port(good[i].value, &user, &host, &port));
    g_assert_cmpstr(user, ==, good[i].user);
    g_assert_cmpstr(host, ==, good[i].host);
    g_assert_cmpuint(port, ==, good[i].port);
  }
  static const char *const bad[] = {
      "",       "*",      "<sip:a@h",        "\"unterminated <sip:a@h>", "<>",
      "<sip:>", "<:a@h>", "<sip:a@h:99999>", "<http://example.com/x>",   "<sip:a@h x>",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autofree char *user = NULL, *host = NULL;
    guint16 port = 0;
    g_test_message("bad: %s", bad[i]);
    g_assert_false(sipwire_nameaddr_get_host_port(bad[i], &user, &host, &port));
  }
}

/* ---- edge rewriting ---------------------------------------------------- */

/* Replaces the (hashed) branch of the edge's Via by "RANDOM". */
static char *
mask_edge_branch(const char *text)
{
  const char *marker = "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK";
  const char *at = strstr(text, marker);
  g_assert_nonnull(at);
  const char *b = at + strlen(marker), *e = b;
  while (g_ascii_isalnum(*e))
    e++;
  g_assert_cmpint(e - b, >=, 16);
  g_autofree char *head = g_strndup(text, (gsize)(b - text));
  return g_strconcat(head, "RANDOM", e, NULL);
}

#define CLIENT_SUBSCRIBE                                                                          \
  "SUBSCRIBE sip:alice@example.com SIP/2.0\r\n"                                                   \
  "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1ient;rport\r\n"                                 \
  "Max-Forwards: 70\r\n"                                                                          \
  "Route: <sip:example.com;lr>\r\n"                                                               \
  "From: <sip:alice@example.com>;tag=a1\r\n"                                                      \
  "To: <sip:alice@example.com>\r\n"                                                               \
  "Call-ID: sub1@10.0.0.5\r\n"                                                                    \
  "CSeq: 1 SUBSCRIBE\r\n"                                                                         \
  "Contact: <sips:alice@10.0.0.5:5061;transport=tls>\r\n"                                         \
  "Event: credential\r\n"                                                                         \
  "Accept: application/pkix-cert, application/pkcs8\r\n"                                          \
  "Expires: 3600\r\n"                                                                             \
  "Content-Length: 0\r\n"                                                                         \
  "\r\n"

static void
test_relay_request_in(void)
{
  g_autoptr(SipwireMsg) msg = parse_str(CLIENT_SUBSCRIBE);
  g_autoptr(GError) error = NULL;
  g_assert_true(sipwire_relay_request_in(msg, &relay_ctx, &error));
  g_assert_no_error(error);

  /* The edge's Via on top with its own branch and the flow token; the
   * client's Via with received/rport; our Route popped; our Record-Route. */
  g_autofree char *text = serialize_str(msg);
  g_autofree char *masked = mask_edge_branch(text);
  g_assert_cmpstr(masked, ==,
                  "SUBSCRIBE sip:alice@example.com SIP/2.0\r\n"
                  "Record-Route: " EDGE_RR "\r\n"
                  "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKRANDOM;flow=Fl0wT0ken42\r\n"
                  "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1ient;rport=49152;"
                  "received=192.0.2.7\r\n"
                  "Max-Forwards: 70\r\n"
                  "From: <sip:alice@example.com>;tag=a1\r\n"
                  "To: <sip:alice@example.com>\r\n"
                  "Call-ID: sub1@10.0.0.5\r\n"
                  "CSeq: 1 SUBSCRIBE\r\n"
                  "Contact: <sips:alice@10.0.0.5:5061;transport=tls>\r\n"
                  "Event: credential\r\n"
                  "Accept: application/pkix-cert, application/pkcs8\r\n"
                  "Expires: 3600\r\n"
                  "Content-Length: 0\r\n"
                  "\r\n");

  /* A retransmission gets the same branch (RFC 3261 16.11), so nua sees it
   * as one. */
  g_autoptr(SipwireMsg) again = parse_str(CLIENT_SUBSCRIBE);
  g_assert_true(sipwire_relay_request_in(again, &relay_ctx, &error));
  g_autofree char *b1 = sipwire_param_get(sipwire_msg_get_first(msg, "Via"), "branch");
  g_autofree char *b2 = sipwire_param_get(sipwire_msg_get_first(again, "Via"), "branch");
  g_assert_true(g_str_has_prefix(b1, "z9hG4bK"));
  g_assert_cmpstr(b1, ==, b2);
}

/* The edge branch @text gets with @ctx ("z9hG4bK" + 32 hex digits). */
static char *
relay_branch(const char *text, const SipwireRelayCtx *ctx)
{
  g_autoptr(SipwireMsg) msg = parse_str(text);
  g_autoptr(GError) error = NULL;
  g_assert_true(sipwire_relay_request_in(msg, ctx, &error));
  g_assert_no_error(error);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  g_assert_cmpuint(vias->len, ==, 2);
  g_autofree char *flow = sipwire_param_get(vias->pdata[0], "flow");
  g_assert_cmpstr(flow, ==, ctx->flow_token);
  char *branch = sipwire_param_get(vias->pdata[0], "branch");
  g_assert_nonnull(branch);
  g_assert_true(g_str_has_prefix(branch, "z9hG4bK"));
  g_assert_cmpuint(strlen(branch), ==, 7 + 32);
  for (const char *p = branch + 7; *p != '\0'; p++)
    g_assert_true(g_ascii_isxdigit(*p) && !g_ascii_isupper(*p));
  return branch;
}

/* A client request: @method, CSeq @cseq_method, top Via @via, To tag @to_tag
 * (or none), Call-ID @call_id. */
static char *
branch_req(const char *method, const char *cseq_method, const char *via, const char *to_tag,
           const char *call_id)
{
  return g_strdup_printf("%s sip:bob@example.com SIP/2.0\r\n"
                         "Via: %s\r\n"
                         "Max-Forwards: 70\r\n"
                         "From: <sip:alice@example.com>;tag=a1\r\n"
                         "To: <sip:bob@example.com>%s%s\r\n"
                         "Call-ID: %s\r\n"
                         "CSeq: 1 %s\r\n"
                         "Content-Length: 0\r\n\r\n",
                         method, via, to_tag != NULL ? ";tag=" : "", to_tag != NULL ? to_tag : "",
                         call_id, cseq_method);
}

#define VIA_3261 "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKinv1;rport"

/* RFC 3261 16.11: an INVITE, its CANCEL and the ACK to its non-2xx response
 * share the edge branch, so nua matches them; other transactions and the
 * same client branch on another flow do not. */
static void
test_relay_branch(void)
{
  SipwireRelayCtx other_flow = relay_ctx;
  other_flow.flow_token = "An0therFl0w";

  g_autofree char *invite = branch_req("INVITE", "INVITE", VIA_3261, NULL, "c1@10.0.0.5");
  g_autofree char *cancel = branch_req("CANCEL", "CANCEL", VIA_3261, NULL, "c1@10.0.0.5");
  g_autofree char *ack = branch_req("ACK", "ACK", VIA_3261, "uas486", "c1@10.0.0.5");
  g_autofree char *b_invite = relay_branch(invite, &relay_ctx);
  g_autofree char *b_cancel = relay_branch(cancel, &relay_ctx);
  g_autofree char *b_ack = relay_branch(ack, &relay_ctx);
  g_assert_cmpstr(b_cancel, ==, b_invite);
  g_assert_cmpstr(b_ack, ==, b_invite);
  /* Host case does not make another transaction. */
  g_autofree char *upper = branch_req(
      "CANCEL", "CANCEL", "SIP/2.0/TLS CLIENT.example:5061;branch=z9hG4bKinv1", NULL, "c1");
  g_autofree char *lower = branch_req(
      "INVITE", "INVITE", "SIP/2.0/TLS client.example:5061;branch=z9hG4bKinv1", NULL, "c1");
  g_autofree char *b_upper = relay_branch(upper, &relay_ctx);
  g_autofree char *b_lower = relay_branch(lower, &relay_ctx);
  g_assert_cmpstr(b_upper, ==, b_lower);

  /* Same client branch on another flow. */
  g_autofree char *b_other_flow = relay_branch(invite, &other_flow);
  g_autofree char *b_other_cancel = relay_branch(cancel, &other_flow);
  g_assert_cmpstr(b_other_flow, !=, b_invite);
  g_assert_cmpstr(b_other_cancel, ==, b_other_flow);
  /* Another client branch: the ACK to a 2xx, a new INVITE. */
  g_autofree char *ack2xx = branch_req(
      "ACK", "ACK", "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKack2;rport", "uas", "c1@10.0.0.5");
  g_autofree char *invite2 = branch_req(
      "INVITE", "INVITE", "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKinv2;rport", NULL, "c1");
  g_autofree char *b_ack2xx = relay_branch(ack2xx, &relay_ctx);
  g_autofree char *b_invite2 = relay_branch(invite2, &relay_ctx);
  g_assert_cmpstr(b_ack2xx, !=, b_invite);
  g_assert_cmpstr(b_invite2, !=, b_invite);
  /* Same branch from another sent-by. */
  g_autofree char *moved = branch_req(
      "INVITE", "INVITE", "SIP/2.0/TLS 10.0.0.6:5061;branch=z9hG4bKinv1;rport", NULL, "c1");
  g_autofree char *b_moved = relay_branch(moved, &relay_ctx);
  g_assert_cmpstr(b_moved, !=, b_invite);

  /* RFC 2543 client: no magic cookie (or no branch at all). The To tag
   * differs between an INVITE and the ACK to its non-2xx response. */
  const char *const old_vias[] = {"SIP/2.0/UDP 10.0.0.7:5060;branch=1234",
                                  "SIP/2.0/UDP 10.0.0.7:5060"};
  for (gsize i = 0; i < G_N_ELEMENTS(old_vias); i++) {
    g_test_message("RFC 2543 Via: %s", old_vias[i]);
    g_autofree char *o_inv = branch_req("INVITE", "INVITE", old_vias[i], NULL, "o1@10.0.0.7");
    g_autofree char *o_can = branch_req("CANCEL", "CANCEL", old_vias[i], NULL, "o1@10.0.0.7");
    g_autofree char *o_ack = branch_req("ACK", "ACK", old_vias[i], "uas404", "o1@10.0.0.7");
    g_autofree char *o_call = branch_req("INVITE", "INVITE", old_vias[i], NULL, "o2@10.0.0.7");
    g_autofree char *b_o_inv = relay_branch(o_inv, &relay_ctx);
    g_autofree char *b_o_can = relay_branch(o_can, &relay_ctx);
    g_autofree char *b_o_ack = relay_branch(o_ack, &relay_ctx);
    g_autofree char *b_o_call = relay_branch(o_call, &relay_ctx);
    g_autofree char *b_o_flow = relay_branch(o_inv, &other_flow);
    g_assert_cmpstr(b_o_can, ==, b_o_inv);
    g_assert_cmpstr(b_o_ack, ==, b_o_inv);
    g_assert_cmpstr(b_o_call, !=, b_o_inv);
    g_assert_cmpstr(b_o_flow, !=, b_o_inv);
    /* The next request of the call (CSeq 2) is another transaction. */
    g_autoptr(GString) next = g_string_new(o_inv);
    g_string_replace(next, "CSeq: 1 INVITE", "CSeq: 2 INVITE", 1);
    g_autofree char *b_o_next = relay_branch(next->str, &relay_ctx);
    g_assert_cmpstr(b_o_next, !=, b_o_inv);
  }
  /* A branch that only looks like one (case differs from the cookie) is
   * not RFC 3261's: the Call-ID then tells transactions apart. */
  g_autofree char *fake1 =
      branch_req("INVITE", "INVITE", "SIP/2.0/UDP 10.0.0.7:5060;branch=Z9HG4BKx", NULL, "f1");
  g_autofree char *fake2 =
      branch_req("INVITE", "INVITE", "SIP/2.0/UDP 10.0.0.7:5060;branch=Z9HG4BKx", NULL, "f2");
  g_autofree char *b_fake1 = relay_branch(fake1, &relay_ctx);
  g_autofree char *b_fake2 = relay_branch(fake2, &relay_ctx);
  g_assert_cmpstr(b_fake1, !=, b_fake2);
}

static void
test_relay_request_in_spoof(void)
{
  g_autoptr(SipwireMsg) msg =
      parse_str("SUBSCRIBE sip:bob@example.com SIP/2.0\r\n"
                "Via: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bKfake;flow=VictimToken\r\n"
                "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKfake2;flow=VictimToken, "
                "SIP/2.0/TLS 10.0.0.6:5061;branch=z9hG4bKreal;flow=VictimToken;rport=1\r\n"
                "Via: SIP/2.0/TCP 127.0.0.1:5090;branch=z9hG4bKother;FLOW=x\r\n"
                "Record-Route: <sip:VictimToken@127.0.0.1:5070;transport=tcp;lr>, "
                "<sip:proxy.example.net;lr>\r\n"
                "Record-Route: <sip:127.0.0.1:5080;lr>\r\n"
                "Route: <sip:example.org:5061;lr>, <sip:127.0.0.1:5080;transport=tcp;lr>, "
                "<sip:example.com;lr>, <sip:example.com:5062;lr>, <sip:next.example.net;lr>\r\n"
                "From: <sip:mallory@example.net>;tag=m1\r\n"
                "To: <sip:bob@example.com>\r\n"
                "Call-ID: spoof@10.0.0.6\r\n"
                "CSeq: 1 SUBSCRIBE\r\n"
                "Event: credential\r\n"
                "Content-Length: 0\r\n\r\n");
  g_autoptr(GError) error = NULL;
  g_assert_true(sipwire_relay_request_in(msg, &relay_ctx, &error));
  g_assert_no_error(error);

  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  g_assert_cmpuint(vias->len, ==, 3);
  g_autofree char *token = sipwire_param_get(vias->pdata[0], "flow");
  g_assert_cmpstr(token, ==, "Fl0wT0ken42");
  g_assert_cmpstr(vias->pdata[1], ==,
                  "SIP/2.0/TLS 10.0.0.6:5061;branch=z9hG4bKreal;rport=49152;received=192.0.2.7");
  /* 127.0.0.1:5090 is not internal: kept, but without its flow param. */
  g_assert_cmpstr(vias->pdata[2], ==, "SIP/2.0/TCP 127.0.0.1:5090;branch=z9hG4bKother");
  assert_values(msg, "Record-Route", EDGE_RR " | <sip:proxy.example.net;lr>");
  /* Leading routes naming us (served domain, default or public port) are
   * popped; internal ones stripped wherever they are. */
  assert_values(msg, "Route", "<sip:example.com:5062;lr> | <sip:next.example.net;lr>");

  /* The only flow parameter left is ours and nothing names nua. */
  g_autofree char *text = serialize_str(msg);
  g_assert_null(strstr(text, "VictimToken"));
  g_assert_null(strstr(text, "5080"));
  g_assert_nonnull(strstr(text, "flow=Fl0wT0ken42"));
  g_assert_null(strstr(strstr(text, "flow=Fl0wT0ken42") + 1, "flow="));
}

/* nua names itself by the public name and its own port ("Via: SIP/2.0/TCP
 * example.com:44813", "Contact: <sip:example.com:44813;transport=tcp>"): a
 * client's Via, Route or Record-Route naming a served domain or the public
 * host with nua's or the edge's internal port is internal too, and so is a
 * route whose maddr names the internal side. */
static void
test_relay_request_in_nua_name(void)
{
  g_autoptr(SipwireMsg) msg =
      parse_str("SUBSCRIBE sip:bob@example.com SIP/2.0\r\n"
                "Via: SIP/2.0/TCP example.com:5080;branch=z9hG4bKnua, "
                "SIP/2.0/TCP EXAMPLE.ORG:5070;branch=z9hG4bKedge;flow=Victim\r\n"
                "Via: SIP/2.0/TCP example.com:5090;branch=z9hG4bKother, "
                "SIP/2.0/TLS 10.0.0.6:5061;branch=z9hG4bKreal\r\n"
                "Record-Route: <sip:Victim@example.com:5070;transport=tcp;lr>, "
                "<sip:example.org:5080;lr>, <sip:proxy.example.net;lr>\r\n"
                "Route: <sip:example.com;lr>, <sip:example.com:5080;transport=tcp;lr>, "
                "<sip:Victim@Example.Org:5070;lr>, <sip:relay.example.net:5080;lr>, "
                "<sip:evil.example.net:5070;maddr=127.0.0.1;lr>, "
                "<sip:evil.example.net:5080;maddr=example.org;lr>, "
                "<sip:evil.example.net:5061;maddr=127.0.0.1;lr>, <sip:next.example.net;lr>\r\n"
                "From: <sip:mallory@example.net>;tag=m1\r\n"
                "To: <sip:bob@example.com>\r\n"
                "Call-ID: nua-name@10.0.0.6\r\n"
                "CSeq: 1 SUBSCRIBE\r\n"
                "Event: credential\r\n"
                "Content-Length: 0\r\n\r\n");
  g_autoptr(GError) error = NULL;
  g_assert_true(sipwire_relay_request_in(msg, &relay_ctx, &error));
  g_assert_no_error(error);

  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  g_assert_cmpuint(vias->len, ==, 3);
  g_autofree char *token = sipwire_param_get(vias->pdata[0], "flow");
  g_assert_cmpstr(token, ==, "Fl0wT0ken42");
  /* The first Via left is the client's: received/rport go there. */
  g_assert_cmpstr(vias->pdata[1], ==,
                  "SIP/2.0/TCP example.com:5090;branch=z9hG4bKother;received=192.0.2.7;"
                  "rport=49152");
  g_assert_cmpstr(vias->pdata[2], ==, "SIP/2.0/TLS 10.0.0.6:5061;branch=z9hG4bKreal");
  assert_values(msg, "Record-Route", EDGE_RR " | <sip:proxy.example.net;lr>");
  /* Other hosts on those ports, and maddr naming something else, stay. */
  assert_values(msg, "Route",
                "<sip:relay.example.net:5080;lr> | "
                "<sip:evil.example.net:5061;maddr=127.0.0.1;lr> | <sip:next.example.net;lr>");
  g_autofree char *text = serialize_str(msg);
  g_assert_null(strstr(text, "Victim"));
  g_assert_null(strstr(text, "example.com:5080"));
  g_assert_null(strstr(text, "5070;maddr"));

  /* A request whose only Via is nua's name is not from a client. */
  g_autoptr(SipwireMsg) only = parse_str("MESSAGE sip:a@example.com SIP/2.0\r\n"
                                         "Via: SIP/2.0/TCP example.org:5080;branch=z9hG4bK1\r\n"
                                         "Content-Length: 0\r\n\r\n");
  g_autoptr(GError) only_error = NULL;
  g_assert_false(sipwire_relay_request_in(only, &relay_ctx, &only_error));
  g_assert_error(only_error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);

  /* Toward the client, routes naming nua that way do not leave either. */
  g_autoptr(SipwireMsg) ok =
      parse_str("SIP/2.0 200 OK\r\n"
                "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKedge1;flow=Fl0wT0ken42\r\n"
                "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1ient\r\n"
                "Record-Route: " EDGE_RR ", <sip:example.com:5080;transport=tcp;lr>, "
                "<sip:proxy.example.net;lr>\r\n"
                "From: <sip:alice@example.com>;tag=a1\r\n"
                "To: <sip:alice@example.com>;tag=n1\r\n"
                "Call-ID: sub1@10.0.0.5\r\n"
                "CSeq: 1 SUBSCRIBE\r\n"
                "Content-Length: 0\r\n\r\n");
  g_autofree char *flow = NULL;
  g_assert_true(sipwire_relay_response_out(ok, &relay_ctx, &flow, &error));
  g_assert_no_error(error);
  assert_values(ok, "Record-Route", "<sip:proxy.example.net;lr>");
}

static void
test_relay_request_in_errors(void)
{
  static const char *const bad[] = {
      /* no Via */
      "MESSAGE sip:a@example.com SIP/2.0\r\nFrom: <sip:b@example.com>;tag=1\r\n"
      "Content-Length: 0\r\n\r\n",
      /* only internal Vias */
      "MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
      "Content-Length: 0\r\n\r\n",
      /* a Via we cannot read (RFC 4475 badinv01) */
      "MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n"
      "Content-Length: 0\r\n\r\n",
      /* <> in a Via: not Via syntax, and a place to hide a flow param */
      "MESSAGE sip:a@example.com SIP/2.0\r\n"
      "Via: SIP/2.0/TLS h;x=<\">;flow=Victim;y=<\">;branch=z9hG4bK1\r\n"
      "Content-Length: 0\r\n\r\n",
      /* an unterminated quoted string swallowing what follows */
      "MESSAGE sip:a@example.com SIP/2.0\r\n"
      "Via: SIP/2.0/TLS h;x=\"a, SIP/2.0/TCP 127.0.0.1:5070;flow=Victim\r\n"
      "Content-Length: 0\r\n\r\n",
      /* a Record-Route we cannot check */
      "SUBSCRIBE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\n"
      "Record-Route: <sip:127.0.0.1:5080\r\nContent-Length: 0\r\n\r\n",
      /* a response */
      "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(SipwireMsg) msg = parse_str(bad[i]);
    g_autoptr(GError) error = NULL;
    g_test_message("case %zu", i);
    g_assert_false(sipwire_relay_request_in(msg, &relay_ctx, &error));
    g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);
    /* Untouched, so the edge can still answer it. */
    g_autoptr(SipwireMsg) orig = parse_str(bad[i]);
    g_autofree char *t1 = serialize_str(msg);
    g_autofree char *t2 = serialize_str(orig);
    g_assert_cmpstr(t1, ==, t2);
  }

  /* No Record-Route for requests that create no dialog. */
  g_autoptr(SipwireMsg) msg = parse_str(MESSAGE_MSG);
  g_assert_true(sipwire_relay_request_in(msg, &relay_ctx, NULL));
  g_assert_null(sipwire_msg_get_first(msg, "Record-Route"));
  g_autoptr(SipwireMsg) invite = parse_str("INVITE sip:a@example.com SIP/2.0\r\n"
                                           "Via: SIP/2.0/TLS h;branch=z9hG4bK1\r\n"
                                           "Content-Length: 0\r\n\r\n");
  g_assert_true(sipwire_relay_request_in(invite, &relay_ctx, NULL));
  g_assert_cmpstr(sipwire_msg_get_first(invite, "Record-Route"), ==, EDGE_RR);
}

/* Thousands of values, all to be removed: linear, and still right. */
static void
test_relay_many_values(void)
{
  g_autoptr(GString) text = g_string_new("SUBSCRIBE sip:alice@example.com SIP/2.0\r\nVia: ");
  for (int i = 0; i < 2000; i++)
    g_string_append(text, "SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bKx, ");
  g_string_append(text, "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc");
  for (int i = 0; i < 2000; i++)
    g_string_append(text, ";flow=Victim");
  g_string_append(text, "\r\nRoute: ");
  for (int i = 0; i < 2000; i++)
    g_string_append(text, "<sip:example.com;lr>, <sip:127.0.0.1:5070;lr>, ");
  g_string_append(text, "<sip:next.example.net;lr>\r\nContent-Length: 0\r\n\r\n");

  g_autoptr(SipwireMsg) msg = parse_str(text->str);
  g_autoptr(GError) error = NULL;
  g_assert_true(sipwire_relay_request_in(msg, &relay_ctx, &error));
  g_assert_no_error(error);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(msg, "Via");
  g_assert_cmpuint(vias->len, ==, 2);
  g_assert_cmpstr(vias->pdata[1], ==,
                  "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc;received=192.0.2.7;rport=49152");
  assert_values(msg, "Route", "<sip:next.example.net;lr>");
}

#define NUA_200_OK                                                                                \
  "SIP/2.0 200 OK\r\n"                                                                            \
  "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKedge1;flow=Fl0wT0ken42\r\n"                      \
  "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1ient;rport=49152;received=192.0.2.7\r\n"        \
  "Record-Route: " EDGE_RR "\r\n"                                                                 \
  "From: <sip:alice@example.com>;tag=a1\r\n"                                                      \
  "To: <sip:alice@example.com>;tag=n1\r\n"                                                        \
  "Call-ID: sub1@10.0.0.5\r\n"                                                                    \
  "CSeq: 1 SUBSCRIBE\r\n"                                                                         \
  "Contact: <sip:example.com:5080;maddr=127.0.0.1;transport=tcp>;expires=3600\r\n"                \
  "Expires: 3600\r\n"                                                                             \
  "Content-Length: 0\r\n"                                                                         \
  "\r\n"

static void
test_relay_response_out(void)
{
  g_autoptr(SipwireMsg) msg = parse_str(NUA_200_OK);
  g_autoptr(GError) error = NULL;
  g_autofree char *token = NULL;
  g_assert_true(sipwire_relay_response_out(msg, &relay_ctx, &token, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(token, ==, "Fl0wT0ken42");
  g_autofree char *text = serialize_str(msg);
  g_assert_cmpstr(text, ==,
                  "SIP/2.0 200 OK\r\n"
                  "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1ient;rport=49152;"
                  "received=192.0.2.7\r\n"
                  "From: <sip:alice@example.com>;tag=a1\r\n"
                  "To: <sip:alice@example.com>;tag=n1\r\n"
                  "Call-ID: sub1@10.0.0.5\r\n"
                  "CSeq: 1 SUBSCRIBE\r\n"
                  "Contact: <sips:example.com:5061>;expires=3600\r\n"
                  "Expires: 3600\r\n"
                  "Content-Length: 0\r\n"
                  "\r\n");

  /* Other Record-Routes stay; a client's Contact is left alone, as is one
   * naming a served domain without the loopback binding, and a registered
   * binding on the loopback host that has a user or another port (the
   * registrar lists it in its 200). */
  g_autoptr(SipwireMsg) m2 =
      parse_str("SIP/2.0 202 Accepted\r\n"
                "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKedge2;flow=Fl0wT0ken42\r\n"
                "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc2\r\n"
                "Record-Route: <sip:proxy.example.net;lr>, " EDGE_RR "\r\n"
                "Contact: <sips:bob@10.0.0.9:5061;transport=tls>, <sip:carol@example.com>\r\n"
                "Contact: \"nua\" <sip:127.0.0.1:5080;transport=TCP>\r\n"
                "Contact: <sip:dev@127.0.0.1:5080;transport=tcp>;expires=60\r\n"
                "Contact: <sip:127.0.0.1:40000;transport=tcp>;expires=60\r\n"
                "Content-Length: 0\r\n\r\n");
  g_autofree char *token2 = NULL;
  g_assert_true(sipwire_relay_response_out(m2, &relay_ctx, &token2, &error));
  g_assert_no_error(error);
  assert_values(m2, "Via", "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc2");
  assert_values(m2, "Record-Route", "<sip:proxy.example.net;lr>");
  assert_values(m2, "Contact",
                "<sips:bob@10.0.0.9:5061;transport=tls> | <sip:carol@example.com> | "
                "<sips:example.com:5061> | <sip:dev@127.0.0.1:5080;transport=tcp>;expires=60 | "
                "<sip:127.0.0.1:40000;transport=tcp>;expires=60");
}

static void
test_relay_response_out_spoofed(void)
{
  static const char *const tops[] = {
      "SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1;flow=Fl0wT0ken42",     /* a client's */
      "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKedge1",                  /* no flow */
      "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKedge1;flow",             /* empty flow */
      "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKedge1;flow=a-b",         /* not a token */
      "SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bKedge1;flow=Fl0wT0ken42", /* nua's port */
      "SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKedge1;flow=Fl0wT0ken42",      /* no port */
  };
  for (gsize i = 0; i < G_N_ELEMENTS(tops); i++) {
    g_autofree char *text = g_strdup_printf("SIP/2.0 200 OK\r\nVia: %s\r\n"
                                            "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1\r\n"
                                            "Content-Length: 0\r\n\r\n",
                                            tops[i]);
    g_autoptr(SipwireMsg) msg = parse_str(text);
    g_autoptr(GError) error = NULL;
    g_autofree char *token = NULL;
    g_test_message("%s", tops[i]);
    g_assert_false(sipwire_relay_response_out(msg, &relay_ctx, &token, &error));
    g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_SPOOFED);
    g_assert_null(token);
  }
  g_autoptr(SipwireMsg) novia = parse_str("SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
  g_autoptr(GError) error = NULL;
  g_autofree char *token = NULL;
  g_assert_false(sipwire_relay_response_out(novia, &relay_ctx, &token, &error));
  g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_SPOOFED);
}

#define NUA_NOTIFY_HEAD                                                                           \
  "NOTIFY sips:alice@10.0.0.5:5061;transport=tls SIP/2.0\r\n"                                     \
  "Via: SIP/2.0/TCP 127.0.0.1:5080;rport;branch=z9hG4bKnua77\r\n"                                 \
  "Route: <sip:Fl0wT0ken42@127.0.0.1:5070;transport=tcp;lr>\r\n"                                  \
  "Max-Forwards: 70\r\n"                                                                          \
  "From: <sip:alice@example.com>;tag=n1\r\n"                                                      \
  "To: <sip:alice@example.com>;tag=a1\r\n"                                                        \
  "Call-ID: sub1@10.0.0.5\r\n"                                                                    \
  "CSeq: 2 NOTIFY\r\n"                                                                            \
  "Contact: <sip:example.com:5080;maddr=127.0.0.1;transport=tcp>\r\n"                             \
  "Event: credential\r\n"                                                                         \
  "Subscription-State: active;expires=3600\r\n"                                                   \
  "Content-Type: application/pkix-cert\r\n"                                                       \
  "Content-Length: 4\r\n"                                                                         \
  "\r\n"

static void
test_relay_notify_round_trip(void)
{
  static const guint8 body[] = {0x30, 0x00, 0x82, 0x0d};
  g_autoptr(GByteArray) wire = g_byte_array_new();
  g_byte_array_append(wire, (const guint8 *)NUA_NOTIFY_HEAD, (guint)strlen(NUA_NOTIFY_HEAD));
  g_byte_array_append(wire, body, sizeof body);

  g_autoptr(GError) error = NULL;
  g_autoptr(SipwireMsg) notify = sipwire_msg_parse(wire->data, wire->len, &error);
  g_assert_no_error(error);
  g_autofree char *token = NULL, *saved_via = NULL, *branch = NULL;
  g_assert_true(
      sipwire_relay_request_out(notify, &relay_ctx, &token, &saved_via, &branch, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(token, ==, "Fl0wT0ken42");
  g_assert_cmpstr(saved_via, ==, "SIP/2.0/TCP 127.0.0.1:5080;rport;branch=z9hG4bKnua77");
  g_assert_cmpstr(branch, ==, "z9hG4bKnua77");

  g_autoptr(GBytes) out = sipwire_msg_serialize(notify);
  static const char expected_head[] = "NOTIFY sips:alice@10.0.0.5:5061;transport=tls SIP/2.0\r\n"
                                      "Via: SIP/2.0/TLS example.com:5061;branch=z9hG4bKnua77\r\n"
                                      "Max-Forwards: 70\r\n"
                                      "From: <sip:alice@example.com>;tag=n1\r\n"
                                      "To: <sip:alice@example.com>;tag=a1\r\n"
                                      "Call-ID: sub1@10.0.0.5\r\n"
                                      "CSeq: 2 NOTIFY\r\n"
                                      "Contact: <sips:example.com:5061>\r\n"
                                      "Event: credential\r\n"
                                      "Subscription-State: active;expires=3600\r\n"
                                      "Content-Type: application/pkix-cert\r\n"
                                      "Content-Length: 4\r\n"
                                      "\r\n";
  g_autoptr(GByteArray) expected = g_byte_array_new();
  g_byte_array_append(expected, (const guint8 *)expected_head, sizeof expected_head - 1);
  g_byte_array_append(expected, body, sizeof body);
  g_assert_cmpmem(g_bytes_get_data(out, NULL), g_bytes_get_size(out), expected->data,
                  expected->len);

  /* The client answers with the Via it saw; nua gets its own back. */
  g_autoptr(SipwireMsg) ok = parse_str("SIP/2.0 200 OK\r\n"
                                       "Via: SIP/2.0/TLS example.com:5061;branch=z9hG4bKnua77\r\n"
                                       "From: <sip:alice@example.com>;tag=n1\r\n"
                                       "To: <sip:alice@example.com>;tag=a1\r\n"
                                       "Call-ID: sub1@10.0.0.5\r\n"
                                       "CSeq: 2 NOTIFY\r\n"
                                       "Content-Length: 0\r\n\r\n");
  g_autofree char *resp_branch = NULL;
  g_assert_true(sipwire_relay_response_in(ok, &resp_branch, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(resp_branch, ==, branch);
  sipwire_relay_response_in_restore(ok, saved_via);
  g_autofree char *text = serialize_str(ok);
  g_assert_cmpstr(text, ==,
                  "SIP/2.0 200 OK\r\n"
                  "Via: SIP/2.0/TCP 127.0.0.1:5080;rport;branch=z9hG4bKnua77\r\n"
                  "From: <sip:alice@example.com>;tag=n1\r\n"
                  "To: <sip:alice@example.com>;tag=a1\r\n"
                  "Call-ID: sub1@10.0.0.5\r\n"
                  "CSeq: 2 NOTIFY\r\n"
                  "Content-Length: 0\r\n\r\n");
}

static void
test_relay_request_out_errors(void)
{
  static const struct {
    const char *route;
    SipwireError code;
  } cases[] = {
      {NULL, SIPWIRE_ERROR_SPOOFED},
      {"<sip:Fl0wT0ken42@127.0.0.1:5080;transport=tcp;lr>", SIPWIRE_ERROR_SPOOFED},
      {"<sips:Fl0wT0ken42@127.0.0.1:5070;lr>", SIPWIRE_ERROR_SPOOFED},
      {"<sip:127.0.0.1:5070;lr>", SIPWIRE_ERROR_SPOOFED},
      {"<sip:Fl0w-T0ken@127.0.0.1:5070;lr>", SIPWIRE_ERROR_SPOOFED},
      {"<sip:Fl0wT0ken42@example.com:5070;lr>", SIPWIRE_ERROR_SPOOFED},
      {"<sip:proxy.example.net;lr>, " EDGE_RR, SIPWIRE_ERROR_SPOOFED},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *text =
        g_strdup_printf("NOTIFY sips:alice@10.0.0.5 SIP/2.0\r\n"
                        "Via: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bKn\r\n"
                        "%s%s%s"
                        "Content-Length: 0\r\n\r\n",
                        cases[i].route ? "Route: " : "", cases[i].route ? cases[i].route : "",
                        cases[i].route ? "\r\n" : "");
    g_autoptr(SipwireMsg) msg = parse_str(text);
    g_autoptr(GError) error = NULL;
    g_autofree char *token = NULL, *saved = NULL, *branch = NULL;
    g_test_message("route %s", cases[i].route ? cases[i].route : "(none)");
    g_assert_false(sipwire_relay_request_out(msg, &relay_ctx, &token, &saved, &branch, &error));
    g_assert_error(error, SIPWIRE_ERROR, (gint)cases[i].code);
    g_assert_null(token);
  }

  /* A response has no branch to look up without a Via. */
  g_autoptr(SipwireMsg) novia = parse_str("SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
  g_autoptr(GError) error = NULL;
  g_autofree char *branch = NULL;
  g_assert_false(sipwire_relay_response_in(novia, &branch, &error));
  g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);
}

static void
test_build_response(void)
{
  g_autoptr(SipwireMsg) req =
      parse_str("SUBSCRIBE sip:alice@example.com SIP/2.0\r\n"
                "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKa, SIP/2.0/TLS p;branch=z9hG4bKb\r\n"
                "From: <sip:alice@example.com>;tag=a1\r\n"
                "t: <sip:alice@example.com>\r\n"
                "Call-ID: sub9@10.0.0.5\r\n"
                "CSeq: 7 SUBSCRIBE\r\n"
                "Event: credential\r\n"
                "Content-Length: 0\r\n\r\n");
  g_autoptr(GBytes) resp = sipwire_build_response(req, 489, "Bad Event");
  g_assert_nonnull(resp);
  gsize n;
  const char *d = g_bytes_get_data(resp, &n);
  g_autofree char *text = g_strndup(d, n);
  g_autoptr(SipwireMsg) parsed = parse_str(text);
  g_autofree char *tag = sipwire_param_get(sipwire_msg_get_first(parsed, "To"), "tag");
  g_assert_nonnull(tag);
  g_assert_cmpuint(strlen(tag), >=, 8);
  g_autofree char *expected = g_strdup_printf("SIP/2.0 489 Bad Event\r\n"
                                              "Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKa\r\n"
                                              "Via: SIP/2.0/TLS p;branch=z9hG4bKb\r\n"
                                              "From: <sip:alice@example.com>;tag=a1\r\n"
                                              "To: <sip:alice@example.com>;tag=%s\r\n"
                                              "Call-ID: sub9@10.0.0.5\r\n"
                                              "CSeq: 7 SUBSCRIBE\r\n"
                                              "Content-Length: 0\r\n\r\n",
                                              tag);
  g_assert_cmpstr(text, ==, expected);

  /* An existing To tag is kept. */
  g_autoptr(SipwireMsg) indialog = parse_str("NOTIFY sip:a@example.com SIP/2.0\r\n"
                                             "Via: SIP/2.0/TLS h;branch=z9hG4bKa\r\n"
                                             "From: <sip:b@example.com>;tag=b1\r\n"
                                             "To: <sip:a@example.com>;tag=keep\r\n"
                                             "Call-ID: x\r\nCSeq: 3 NOTIFY\r\n"
                                             "Content-Length: 0\r\n\r\n");
  g_autoptr(GBytes) r2 = sipwire_build_response(indialog, 481, "Subscription Does Not Exist");
  g_assert_nonnull(r2);
  g_assert_nonnull(g_strstr_len(g_bytes_get_data(r2, NULL), (gssize)g_bytes_get_size(r2),
                                "\r\nTo: <sip:a@example.com>;tag=keep\r\n"));

  /* Without what a response needs there is nothing to send. */
  static const char *const missing[] = {"Via", "From", "To", "Call-ID", "CSeq"};
  for (gsize i = 0; i < G_N_ELEMENTS(missing); i++) {
    g_autoptr(SipwireMsg) m = parse_str(CLIENT_SUBSCRIBE);
    sipwire_msg_remove_header(m, missing[i]);
    g_autoptr(GBytes) r = sipwire_build_response(m, 400, "Bad Request");
    g_assert_null(r);
  }
  g_autoptr(SipwireMsg) response = parse_str(NUA_200_OK);
  g_autoptr(GBytes) r3 = sipwire_build_response(response, 400, "Bad Request");
  g_assert_null(r3);
}

/* ---- Answers to requests that do not parse ------------------------------ */

static GBytes *
build_raw(const char *data, gsize len, guint status, const char *phrase)
{
  return sipwire_build_response_raw((const guint8 *)data, len, status, phrase);
}

/* No CR without its LF and no LF without its CR: nothing in the answer can
 * start a line the client did not write as one. */
static void
assert_clean_lines(GBytes *bytes)
{
  gsize n;
  const guint8 *d = g_bytes_get_data(bytes, &n);
  for (gsize i = 0; i < n; i++) {
    if (d[i] == '\r')
      g_assert_true(i + 1 < n && d[i + 1] == '\n');
    if (d[i] == '\n')
      g_assert_true(i > 0 && d[i - 1] == '\r');
  }
}

/* The To tag the answer carries (To has no NUL in these cases). */
static char *
raw_to_tag(GBytes *bytes)
{
  g_autofree char *text = g_strndup(g_bytes_get_data(bytes, NULL), g_bytes_get_size(bytes));
  g_autoptr(SipwireMsg) msg = parse_str(text);
  return sipwire_param_get(sipwire_msg_get_first(msg, "To"), "tag");
}

/* The headers every request needs, checked before nua sees it (nua would
 * answer 400 and close the shared connection). */
static void
test_check_request_headers(void)
{
  static const struct {
    const char *from, *to, *why; /* replace @from by @to in CLIENT_SUBSCRIBE */
  } bad[] = {
      {"Call-ID: sub1@10.0.0.5\r\n", "", "no Call-ID"},
      {"Call-ID: sub1@10.0.0.5\r\n", "Call-ID: a\r\ni: b\r\n", "more than one Call-ID"},
      {"CSeq: 1 SUBSCRIBE\r\n", "", "no CSeq"},
      {"CSeq: 1 SUBSCRIBE\r\n", "CSeq: 1 SUBSCRIBE\r\nCSeq: 2 SUBSCRIBE\r\n",
       "more than one CSeq"},
      {"CSeq: 1 SUBSCRIBE\r\n", "CSeq: one SUBSCRIBE\r\n", "not a number and a method"},
      {"CSeq: 1 SUBSCRIBE\r\n", "CSeq: 1\r\n", "not a number and a method"},
      {"CSeq: 1 SUBSCRIBE\r\n", "CSeq: 1 NOTIFY\r\n", "does not match"},
      {"From: <sip:alice@example.com>;tag=a1\r\n", "", "no From"},
      {"To: <sip:alice@example.com>\r\n", "t: <sip:a@b>\r\nTo: <sip:c@d>\r\n", "more than one To"},
      {"Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nMax-Forwards: 5\r\n",
       "more than one Max-Forwards"},
  };
  g_autoptr(SipwireMsg) good = parse_str(CLIENT_SUBSCRIBE);
  g_assert_true(sipwire_msg_check_request_headers(good, NULL));
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GString) text = g_string_new(CLIENT_SUBSCRIBE);
    g_assert_cmpuint(g_string_replace(text, bad[i].from, bad[i].to, 1), ==, 1);
    g_autoptr(SipwireMsg) m = parse_str(text->str);
    g_autoptr(GError) error = NULL;
    g_assert_false(sipwire_msg_check_request_headers(m, &error));
    g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);
    g_assert_nonnull(strstr(error->message, bad[i].why));
  }

  /* The 400 for a request without Call-ID and From still reaches the client:
   * the Via is there, the missing headers are left out. */
  g_autoptr(GString) text = g_string_new(CLIENT_SUBSCRIBE);
  g_string_replace(text, "Call-ID: sub1@10.0.0.5\r\n", "", 1);
  g_string_replace(text, "From: <sip:alice@example.com>;tag=a1\r\n", "", 1);
  g_autoptr(SipwireMsg) m = parse_str(text->str);
  g_assert_null(sipwire_build_response(m, 400, "No Call-ID"));
  g_autoptr(GBytes) r = sipwire_build_response_partial(m, 400, "No Call-ID");
  g_assert_nonnull(r);
  g_autofree char *rs = g_strndup(g_bytes_get_data(r, NULL), g_bytes_get_size(r));
  g_assert_true(g_str_has_prefix(rs, "SIP/2.0 400 No Call-ID\r\nVia: SIP/2.0/TLS 10.0.0.5"));
  g_assert_null(strstr(rs, "Call-ID:"));
  g_assert_null(strstr(rs, "From:"));
  g_assert_nonnull(strstr(rs, "\r\nCSeq: 1 SUBSCRIBE\r\n"));
  g_assert_nonnull(strstr(rs, "\r\nTo: <sip:alice@example.com>;tag="));
  /* Without a Via there is nowhere to send it. */
  sipwire_msg_remove_header(m, "Via");
  g_assert_null(sipwire_build_response_partial(m, 400, "No Via"));
}

static void
test_build_response_raw(void)
{
  /* NUL, BEL and DEL in From and To (RFC 4475 intmeth) are copied byte for
   * byte; a To tag is added behind the NUL-bearing value. */
  static const char nul_req[] = "OPTIONS sip:a@example.com SIP/2.0\r\n"
                                "Via: SIP/2.0/TLS 10.0.0.5;branch=z9hG4bKn1\r\n"
                                "From: \"B\aE\0L\x7f\" <sip:b@example.com>;tag=f1\r\n"
                                "To: \"x\0y\" <sip:a@example.com>\r\n"
                                "Call-ID: nul1\r\n"
                                "CSeq: 4 OPTIONS\r\n"
                                "Content-Length: 0\r\n\r\n";
  g_autoptr(GBytes) r1 = build_raw(nul_req, sizeof nul_req - 1, 400, "Bad Header");
  g_assert_nonnull(r1);
  assert_clean_lines(r1);
  gsize n1;
  const char *d1 = g_bytes_get_data(r1, &n1);
  static const char from_line[] = "\r\nFrom: \"B\aE\0L\x7f\" <sip:b@example.com>;tag=f1\r\n";
  static const char to_start[] = "\r\nTo: \"x\0y\" <sip:a@example.com>;tag=";
  g_assert_nonnull(memmem(d1, n1, from_line, sizeof from_line - 1));
  const char *to = memmem(d1, n1, to_start, sizeof to_start - 1);
  g_assert_nonnull(to);
  g_assert_true(g_ascii_isalnum(to[sizeof to_start - 1]));
  static const char head[] = "SIP/2.0 400 Bad Header\r\n"
                             "Via: SIP/2.0/TLS 10.0.0.5;branch=z9hG4bKn1\r\n";
  g_assert_cmpuint(n1, >, sizeof head - 1);
  g_assert_cmpmem(d1, sizeof head - 1, head, sizeof head - 1);
  static const char tail[] = "\r\nCall-ID: nul1\r\nCSeq: 4 OPTIONS\r\nContent-Length: 0\r\n\r\n";
  g_assert_cmpmem(d1 + n1 - (sizeof tail - 1), sizeof tail - 1, tail, sizeof tail - 1);

  /* Compact names, folded lines, several Vias in order (one with two
   * values on a line, an empty one skipped), the first From only, and a To
   * that already has a tag. */
  static const char compact[] = "\r\nNEWMETHOD sip:a@example.com SIP/2.0\r\n"
                                "v: SIP/2.0/TLS h1;branch=z9hG4bK1, SIP/2.0/TLS h2\r\n"
                                "Via:\r\n"
                                "X-Bad\x01Name: whatever\r\n"
                                "VIA  :  SIP/2.0/TLS h3\r\n"
                                "\t;branch=z9hG4bK3  \r\n"
                                "f: <sip:b@example.com>\r\n"
                                "   ;tag=first\r\n"
                                "From: <sip:c@example.com>;tag=second\r\n"
                                "t: <sip:a@example.com>;TAG=keep\r\n"
                                "i:  c2\r\n"
                                "cseq: 9\r\n"
                                " NEWMETHOD\r\n"
                                "\r\n";
  g_autoptr(GBytes) r2 = build_raw(compact, sizeof compact - 1, 501, "Not Implemented");
  g_assert_nonnull(r2);
  g_autofree char *t2 = g_strndup(g_bytes_get_data(r2, NULL), g_bytes_get_size(r2));
  g_assert_cmpstr(t2, ==,
                  "SIP/2.0 501 Not Implemented\r\n"
                  "Via: SIP/2.0/TLS h1;branch=z9hG4bK1, SIP/2.0/TLS h2\r\n"
                  "Via: SIP/2.0/TLS h3 ;branch=z9hG4bK3\r\n"
                  "From: <sip:b@example.com> ;tag=first\r\n"
                  "To: <sip:a@example.com>;TAG=keep\r\n"
                  "Call-ID: c2\r\n"
                  "CSeq: 9 NEWMETHOD\r\n"
                  "Content-Length: 0\r\n\r\n");

  /* A To tag is added where there is none, or only an empty one. */
  static const char *const tos[] = {"<sip:a@example.com>", "sip:a@example.com",
                                    "<sip:a@example.com>;tag=", "sip:a;tag=x@example.com"};
  for (gsize i = 0; i < G_N_ELEMENTS(tos); i++) {
    g_autofree char *req = g_strdup_printf("OPTIONS sip:a@example.com SIP/2.0\r\n"
                                           "Via: SIP/2.0/TLS h;branch=z9hG4bKt\r\n"
                                           "From: <sip:b@example.com>;tag=1\r\n"
                                           "To: %s\r\nCall-ID: t\r\nCSeq: 1 OPTIONS\r\n\r\n",
                                           tos[i]);
    g_autoptr(GBytes) r = build_raw(req, strlen(req), 400, "Bad Request");
    g_assert_nonnull(r);
    g_autofree char *tag = raw_to_tag(r);
    g_assert_nonnull(tag);
    g_assert_cmpuint(strlen(tag), ==, 16);
  }

  /* A bare CR becomes a space: it must not end a line for the client. */
  static const char cr_req[] = "OPTIONS sip:a@example.com SIP/2.0\r\n"
                               "Via: SIP/2.0/TLS h;branch=z9hG4bKcr\r\n"
                               "From: <sip:b@example.com>;tag=1\rRoute: <sip:evil>\r\n"
                               "To: <sip:a@example.com>;tag=2\r\n"
                               "Call-ID: cr\r\nCSeq: 1 OPTIONS\r\n\r\n";
  g_autoptr(GBytes) r3 = build_raw(cr_req, sizeof cr_req - 1, 400, "Bad Request");
  g_assert_nonnull(r3);
  assert_clean_lines(r3);
  g_assert_nonnull(g_strstr_len(g_bytes_get_data(r3, NULL), (gssize)g_bytes_get_size(r3),
                                "\r\nFrom: <sip:b@example.com>;tag=1 Route: <sip:evil>\r\n"));

  /* No empty line (RFC 4475 baddn over a stream): the lines there count,
   * but a last line without its LF may be cut and does not. */
  static const char open_req[] = "OPTIONS sip:a@example.com SIP/2.0\r\n"
                                 "Via: SIP/2.0/TLS h;branch=z9hG4bKo\r\n"
                                 "From: <sip:b@example.com>;tag=1\r\n"
                                 "To: <sip:a@example.com>\r\n"
                                 "Call-ID: open\r\n"
                                 "CSeq: 12 OPTIONS\r\n";
  g_autoptr(GBytes) r4 = build_raw(open_req, sizeof open_req - 1, 400, "Bad Request");
  g_assert_nonnull(r4);
  g_assert_nonnull(g_strstr_len(g_bytes_get_data(r4, NULL), (gssize)g_bytes_get_size(r4),
                                "\r\nCSeq: 12 OPTIONS\r\n"));
  g_autoptr(GBytes) r5 = build_raw(open_req, sizeof open_req - 3, 400, "Bad Request");
  g_assert_null(r5);

  /* Without what a response needs (absent or empty), or without a request
   * line: nothing. */
  static const char *const needed[] = {"Via", "From", "To", "Call-ID", "CSeq"};
  static const char *const values[] = {"SIP/2.0/TLS h;branch=z9hG4bKm", "<sip:b@h>;tag=1",
                                       "<sip:a@h>", "m1", "1 OPTIONS"};
  for (gsize i = 0; i < G_N_ELEMENTS(needed); i++) {
    for (guint variant = 0; variant < 2; variant++) {
      g_autoptr(GString) req = g_string_new("OPTIONS sip:a@h SIP/2.0\r\n");
      for (gsize j = 0; j < G_N_ELEMENTS(needed); j++) {
        if (j != i)
          g_string_append_printf(req, "%s: %s\r\n", needed[j], values[j]);
        else if (variant == 1)
          g_string_append_printf(req, "%s:  \r\n", needed[j]);
      }
      g_string_append(req, "Content-Length: 0\r\n\r\n");
      g_autoptr(GBytes) r = build_raw(req->str, req->len, 400, "Bad Request");
      g_assert_null(r);
    }
  }
  static const char *const not_requests[] = {
      "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS h\r\nFrom: <sip:b>;tag=1\r\nTo: <sip:a>\r\n"
      "Call-ID: r\r\nCSeq: 1 OPTIONS\r\n\r\n",
      "FOO\r\nVia: SIP/2.0/TLS h\r\nFrom: <sip:b>;tag=1\r\nTo: <sip:a>\r\n"
      "Call-ID: r\r\nCSeq: 1 OPTIONS\r\n\r\n",
      " OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TLS h\r\nFrom: <sip:b>;tag=1\r\nTo: <sip:a>\r\n"
      "Call-ID: r\r\nCSeq: 1 OPTIONS\r\n\r\n",
      "",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(not_requests); i++) {
    g_autoptr(GBytes) r = build_raw(not_requests[i], strlen(not_requests[i]), 400, "Bad Request");
    g_assert_null(r);
  }
}

static void
test_raw_method(void)
{
  static const struct {
    const char *data;
    const char *method;
  } cases[] = {
      {"INVITE sip:a SIP/2.0\r\n", "INVITE"},
      {"\r\n\r\nOPTIONS <sip:a> SIP/2.0\r\n", "OPTIONS"},
      {"!interesting-Method0123456789_*+`.%indeed'~ sip:x SIP/2.0\r\n",
       "!interesting-Method0123456789_*+`.%indeed'~"},
      {"SIP/2.0 200 OK\r\n", NULL},
      {"INVITE\r\n", NULL},
      {"INVITE", NULL},
      {"INV@ITE sip:a SIP/2.0\r\n", NULL},
      {" INVITE sip:a SIP/2.0\r\n", NULL},
      {"", NULL},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *m =
        sipwire_raw_get_method((const guint8 *)cases[i].data, strlen(cases[i].data));
    g_assert_cmpstr(m, ==, cases[i].method);
  }
  static const char *const known[] = {"INVITE",   "ACK",   "BYE",       "CANCEL", "OPTIONS",
                                      "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "UPDATE",
                                      "MESSAGE",  "REFER", "PUBLISH",   "INFO"};
  for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
    g_assert_true(sipwire_method_is_known(known[i]));
  static const char *const unknown[] = {"invite", "NEWMETHOD", "RE%47IST%45R", "", "INVITEX"};
  for (gsize i = 0; i < G_N_ELEMENTS(unknown); i++)
    g_assert_false(sipwire_method_is_known(unknown[i]));
  g_assert_false(sipwire_method_is_known(NULL));
}

/* ---- RFC 4475 torture messages ----------------------------------------- */

typedef enum {
  OUT_OK,        /* one message that parses */
  OUT_MALFORMED, /* framed, sipwire_msg_parse gives MALFORMED */
  OUT_VERSION,   /* framed, parse gives VERSION */
  OUT_FRAMING,   /* framer: Content-Length error */
  OUT_INCOMPLETE /* framer waits for more bytes */
} Outcome;

static const struct {
  const char *name;
  Outcome outcome;
} rfc4475[] = {
    {"badaspec", OUT_OK},
    {"badbranch", OUT_OK},
    {"baddate", OUT_OK},
    {"baddn", OUT_INCOMPLETE}, /* the file has no empty line after its headers */
    {"badinv01", OUT_OK},
    {"badvers", OUT_VERSION},
    {"bcast", OUT_OK},
    {"bext01", OUT_OK},
    {"bigcode", OUT_MALFORMED},
    {"clerr", OUT_INCOMPLETE}, /* Content-Length 9999: a stream waits */
    {"cparam01", OUT_OK},
    {"cparam02", OUT_OK},
    {"dblreq", OUT_OK}, /* checked in detail below */
    {"esc01", OUT_OK},
    {"esc02", OUT_OK},
    {"escnull", OUT_OK},
    {"escruri", OUT_OK},
    {"insuf", OUT_OK},
    {"intmeth", OUT_MALFORMED}, /* NUL in a header value: never relayed, see sipwire.c */
    {"inv2543", OUT_FRAMING},   /* no Content-Length */
    {"invut", OUT_OK},
    {"longreq", OUT_OK},
    {"ltgtruri", OUT_MALFORMED},
    {"lwsdisp", OUT_OK},
    {"lwsruri", OUT_MALFORMED},
    {"lwsstart", OUT_MALFORMED},
    {"mcl01", OUT_FRAMING},
    {"mismatch01", OUT_OK},
    {"mismatch02", OUT_OK},
    {"mpart01", OUT_OK},
    {"multi01", OUT_OK},
    {"ncl", OUT_FRAMING},
    {"noreason", OUT_OK},
    {"novelsc", OUT_OK},
    {"quotbal", OUT_OK},
    {"regaut01", OUT_OK},
    {"regbadct", OUT_OK},
    {"regescrt", OUT_OK},
    {"scalar02", OUT_OK},
    {"scalarlg", OUT_OK},
    {"sdp01", OUT_OK},
    {"semiuri", OUT_OK},
    {"transports", OUT_OK},
    {"trws", OUT_MALFORMED},
    {"unkscm", OUT_OK},
    {"unksm2", OUT_OK},
    {"unreason", OUT_OK},
    {"wsinv", OUT_OK},
    {"zeromf", OUT_OK},
};

static GBytes *
load_rfc4475(const char *name)
{
  g_autofree char *file = g_strconcat(name, ".dat", NULL);
  g_autofree char *path =
      g_test_build_filename(G_TEST_DIST, "fuzz", "corpus", "sipwire", file, NULL);
  g_autoptr(GError) error = NULL;
  char *data;
  gsize len;
  g_file_get_contents(path, &data, &len, &error);
  g_assert_no_error(error);
  return g_bytes_new_take(data, len);
}

/* Whatever framed message comes in, the relay functions must cope. */
static void
relay_all(const guint8 *d, gsize n)
{
  SipwireMsg *m;
  if ((m = sipwire_msg_parse(d, n, NULL)) != NULL) {
    sipwire_relay_request_in(m, &relay_ctx, NULL);
    g_autoptr(GBytes) b = sipwire_msg_serialize(m);
    sipwire_msg_free(m);
  }
  if ((m = sipwire_msg_parse(d, n, NULL)) != NULL) {
    g_autofree char *token = NULL;
    sipwire_relay_response_out(m, &relay_ctx, &token, NULL);
    sipwire_msg_free(m);
  }
  if ((m = sipwire_msg_parse(d, n, NULL)) != NULL) {
    g_autofree char *token = NULL, *saved = NULL, *branch = NULL;
    sipwire_relay_request_out(m, &relay_ctx, &token, &saved, &branch, NULL);
    sipwire_msg_free(m);
  }
  if ((m = sipwire_msg_parse(d, n, NULL)) != NULL) {
    g_autofree char *branch = NULL;
    if (sipwire_relay_response_in(m, &branch, NULL))
      sipwire_relay_response_in_restore(m, "SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bKx");
    g_autoptr(GBytes) r = sipwire_build_response(m, 400, "Bad Request");
    sipwire_msg_free(m);
  }
}

static void
test_rfc4475_all(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(rfc4475); i++) {
    g_autoptr(GBytes) file = load_rfc4475(rfc4475[i].name);
    g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
    g_autoptr(GBytes) out = NULL;
    g_autoptr(GError) error = NULL;
    gsize n;
    const guint8 *d = g_bytes_get_data(file, &n);

    g_test_message("%s", rfc4475[i].name);
    sipwire_framer_push(f, d, n);
    SipwireFrameResult r = sipwire_framer_next(f, &out, &error);
    switch (rfc4475[i].outcome) {
    case OUT_INCOMPLETE:
      g_assert_cmpint(r, ==, SIPWIRE_FRAME_NEED_MORE);
      g_assert_cmpuint(sipwire_framer_get_pending(f), ==, n);
      continue;
    case OUT_FRAMING:
      g_assert_cmpint(r, ==, SIPWIRE_FRAME_ERROR);
      g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_FRAMING);
      continue;
    default:
      break;
    }
    g_assert_cmpint(r, ==, SIPWIRE_FRAME_MESSAGE);
    gsize mlen;
    const guint8 *m = g_bytes_get_data(out, &mlen);
    g_autoptr(SipwireMsg) msg = sipwire_msg_parse(m, mlen, &error);
    relay_all(m, mlen);
    switch (rfc4475[i].outcome) {
    case OUT_OK: {
      g_assert_no_error(error);
      g_assert_nonnull(msg);
      /* What we would send on parses the same way again. */
      g_autoptr(GBytes) s1 = sipwire_msg_serialize(msg);
      g_autoptr(SipwireMsg) again =
          sipwire_msg_parse(g_bytes_get_data(s1, NULL), g_bytes_get_size(s1), &error);
      g_assert_no_error(error);
      g_autoptr(GBytes) s2 = sipwire_msg_serialize(again);
      g_assert_true(g_bytes_equal(s1, s2));
      break;
    }
    case OUT_MALFORMED:
      g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_MALFORMED);
      break;
    case OUT_VERSION:
      g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_VERSION);
      break;
    default:
      g_assert_not_reached();
    }
  }
}

static void
test_rfc4475_specific(void)
{
  /* dblreq over a stream: the REGISTER, then the "extra octets" are a
   * second message, an INVITE. Its declared 150-byte body leaves 5 bytes
   * that are no message: framing is lost there. */
  g_autoptr(GBytes) file = load_rfc4475("dblreq");
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  sipwire_framer_push(f, g_bytes_get_data(file, NULL), g_bytes_get_size(file));
  const char *methods[] = {"REGISTER", "INVITE"};
  for (gsize i = 0; i < G_N_ELEMENTS(methods); i++) {
    g_autoptr(GBytes) out = NULL;
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(sipwire_framer_next(f, &out, &error), ==, SIPWIRE_FRAME_MESSAGE);
    g_autoptr(SipwireMsg) msg =
        sipwire_msg_parse(g_bytes_get_data(out, NULL), g_bytes_get_size(out), &error);
    g_assert_no_error(error);
    g_assert_cmpstr(sipwire_msg_get_method(msg), ==, methods[i]);
  }
  g_autoptr(GBytes) out = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_cmpint(sipwire_framer_next(f, &out, &error), ==, SIPWIRE_FRAME_ERROR);
  g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_FRAMING);
  g_clear_error(&error);

  /* wsinv: folded, spaced and mixed-case headers read as intended. */
  g_autoptr(GBytes) ws = load_rfc4475("wsinv");
  g_autoptr(SipwireMsg) inv =
      sipwire_msg_parse(g_bytes_get_data(ws, NULL), g_bytes_get_size(ws), &error);
  g_assert_no_error(error);
  g_assert_cmpstr(sipwire_msg_get_first(inv, "Max-Forwards"), ==, "0068");
  g_assert_cmpstr(sipwire_msg_get_first(inv, "CSeq"), ==, "0009 INVITE");
  assert_values(inv, "Via",
                "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw | "
                "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8 | "
                "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239");
  g_autofree char *b = sipwire_param_get(sipwire_msg_get_first(inv, "v"), "branch");
  g_assert_cmpstr(b, ==, "390skdjuw");
  g_autoptr(GBytes) body = sipwire_msg_get_body(inv);
  g_assert_cmpuint(g_bytes_get_size(body), ==, 150);

  /* mpart01: the binary part with NULs is kept byte for byte. */
  g_autoptr(GBytes) mp = load_rfc4475("mpart01");
  g_autoptr(SipwireMsg) mpm =
      sipwire_msg_parse(g_bytes_get_data(mp, NULL), g_bytes_get_size(mp), &error);
  g_assert_no_error(error);
  g_autoptr(GBytes) mpbody = sipwire_msg_get_body(mpm);
  g_assert_cmpuint(g_bytes_get_size(mpbody), ==,
                   g_ascii_strtoull(sipwire_msg_get_first(mpm, "Content-Length"), NULL, 10));
  g_assert_nonnull(memchr(g_bytes_get_data(mpbody, NULL), 0, g_bytes_get_size(mpbody)));

  /* longreq: 34 Vias written in every case and compact form. */
  g_autoptr(GBytes) lr = load_rfc4475("longreq");
  g_autoptr(SipwireMsg) lrm =
      sipwire_msg_parse(g_bytes_get_data(lr, NULL), g_bytes_get_size(lr), &error);
  g_assert_no_error(error);
  g_autoptr(GPtrArray) vias = sipwire_msg_get_values(lrm, "Via");
  g_assert_cmpuint(vias->len, ==, 34);
  g_assert_cmpstr(vias->pdata[0], ==, "SIP/2.0/TCP sip33.example.com");
}

/* The messages the edge cannot relay: why sipwire refuses each (the reason
 * the edge puts in its 400), and that the lenient builder still finds what
 * an answer needs (intmeth's NUL/BEL/DEL-bearing To included). */
static void
test_rfc4475_unparsable(void)
{
  static const struct {
    const char *name;
    SipwireError code;
    const char *why;
    const char *method;
    const char *call_id;
  } cases[] = {
      {"intmeth", SIPWIRE_ERROR_MALFORMED, "control character in a header",
       "!interesting-Method0123456789_*+`.%indeed'~",
       "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"},
      {"ltgtruri", SIPWIRE_ERROR_MALFORMED, "Request-URI in angle brackets", "INVITE",
       "ltgtruri.1@192.0.2.5"},
      {"lwsruri", SIPWIRE_ERROR_MALFORMED, "whitespace in the Request-URI", "INVITE",
       "lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423"},
      {"lwsstart", SIPWIRE_ERROR_MALFORMED, "more than one space between request line elements",
       "INVITE", "lwsstart.dfknq234oi243099adsdfnawe3@example.com"},
      {"trws", SIPWIRE_ERROR_MALFORMED, "whitespace at the end of the request line", "OPTIONS",
       "trws.oicu34958239neffasdhr2345r"},
      {"badvers", SIPWIRE_ERROR_VERSION, "SIP version not supported", "OPTIONS",
       "badvers.31417@c.example.com"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_test_message("%s", cases[i].name);
    g_autoptr(GBytes) file = load_rfc4475(cases[i].name);
    gsize n;
    const guint8 *d = g_bytes_get_data(file, &n);
    g_autoptr(GError) error = NULL;
    g_autoptr(SipwireMsg) msg = sipwire_msg_parse(d, n, &error);
    g_assert_null(msg);
    g_assert_error(error, SIPWIRE_ERROR, (gint)cases[i].code);
    g_assert_cmpstr(error->message, ==, cases[i].why);
    g_autofree char *method = sipwire_raw_get_method(d, n);
    g_assert_cmpstr(method, ==, cases[i].method);
    g_autoptr(GBytes) r = sipwire_build_response_raw(d, n, 400, "Bad Request");
    g_assert_nonnull(r);
    assert_clean_lines(r);
    g_autofree char *line = g_strdup_printf("\r\nCall-ID: %s\r\n", cases[i].call_id);
    g_assert_nonnull(memmem(g_bytes_get_data(r, NULL), g_bytes_get_size(r), line, strlen(line)));
  }
  g_assert_false(sipwire_method_is_known(cases[0].method));

  /* intmeth's To keeps its NUL, BEL and DEL and gains a tag. */
  g_autoptr(GBytes) im = load_rfc4475("intmeth");
  g_autoptr(GBytes) r =
      sipwire_build_response_raw(g_bytes_get_data(im, NULL), g_bytes_get_size(im), 501, "X");
  static const char to[] = "\r\nTo: \"BEL:\\\a NUL:\\\0 DEL:\\\x7f\" "
                           "<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>"
                           ";tag=";
  g_assert_nonnull(memmem(g_bytes_get_data(r, NULL), g_bytes_get_size(r), to, sizeof to - 1));

  /* baddn has no empty line: on a stream it never ends (the framer waits),
   * yet what was received is enough for an answer. */
  g_autoptr(GBytes) dn = load_rfc4475("baddn");
  g_autoptr(SipwireFramer) f = sipwire_framer_new(65536);
  sipwire_framer_push(f, g_bytes_get_data(dn, NULL), g_bytes_get_size(dn));
  g_autoptr(GBytes) none = NULL;
  g_assert_cmpint(sipwire_framer_next(f, &none, NULL), ==, SIPWIRE_FRAME_NEED_MORE);
  g_autoptr(GBytes) dr =
      sipwire_build_response_raw(g_bytes_get_data(dn, NULL), g_bytes_get_size(dn), 400, "X");
  g_assert_nonnull(dr);
  static const char dn_from[] = "\r\nFrom: Bell, Alexander <sip:a.g.bell@example.com>;tag=43\r\n";
  g_assert_nonnull(
      memmem(g_bytes_get_data(dr, NULL), g_bytes_get_size(dr), dn_from, sizeof dn_from - 1));
  g_autoptr(GBytes) dn_pending = sipwire_framer_peek_pending(f);
  g_assert_true(g_bytes_equal(dn_pending, dn));

  /* The files that lose the framing on a stream keep headers that can be
   * answered before the close. */
  static const char *const unframed[] = {"ncl", "mcl01", "inv2543"};
  for (gsize i = 0; i < G_N_ELEMENTS(unframed); i++) {
    g_autoptr(GBytes) file = load_rfc4475(unframed[i]);
    g_autoptr(SipwireFramer) uf = sipwire_framer_new(65536);
    sipwire_framer_push(uf, g_bytes_get_data(file, NULL), g_bytes_get_size(file));
    g_autoptr(GBytes) out = NULL;
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(sipwire_framer_next(uf, &out, &error), ==, SIPWIRE_FRAME_ERROR);
    g_assert_error(error, SIPWIRE_ERROR, SIPWIRE_ERROR_FRAMING);
    g_autoptr(GBytes) head = sipwire_framer_get_failed_head(uf);
    g_assert_nonnull(head);
    g_autoptr(GBytes) answer =
        sipwire_build_response_raw(g_bytes_get_data(head, NULL), g_bytes_get_size(head), 400, "X");
    g_assert_nonnull(answer);
  }
}

/* nua takes a SUBSCRIBE without Expires as 3600 s and grants no more, so the
 * edge writes the configured default in; an explicit Expires is untouched. */
static void
test_relay_subscribe_default_expires(void)
{
  SipwireRelayCtx ctx = relay_ctx;
  ctx.subscribe_default_expires = 86400;

  g_autoptr(GString) without = g_string_new(CLIENT_SUBSCRIBE);
  g_assert_cmpuint(g_string_replace(without, "Expires: 3600\r\n", "", 0), ==, 1);
  g_autoptr(SipwireMsg) msg = parse_str(without->str);
  g_autoptr(GError) error = NULL;
  g_assert_true(sipwire_relay_request_in(msg, &ctx, &error));
  g_autoptr(GPtrArray) values = sipwire_msg_get_values(msg, "Expires");
  g_assert_cmpuint(values->len, ==, 1);
  g_assert_cmpstr(values->pdata[0], ==, "86400");

  g_autoptr(SipwireMsg) with = parse_str(CLIENT_SUBSCRIBE);
  g_assert_true(sipwire_relay_request_in(with, &ctx, &error));
  g_autoptr(GPtrArray) kept = sipwire_msg_get_values(with, "Expires");
  g_assert_cmpuint(kept->len, ==, 1);
  g_assert_cmpstr(kept->pdata[0], ==, "3600");

  /* Off (0): nothing is added. */
  g_autoptr(SipwireMsg) off = parse_str(without->str);
  g_assert_true(sipwire_relay_request_in(off, &relay_ctx, &error));
  g_assert_null(sipwire_msg_get_first(off, "Expires"));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/sipwire/framer/single", test_framer_single);
  g_test_add_func("/sipwire/framer/byte-by-byte", test_framer_byte_by_byte);
  g_test_add_func("/sipwire/framer/large-byte-by-byte", test_framer_large_byte_by_byte);
  g_test_add_func("/sipwire/framer/pipelined", test_framer_pipelined);
  g_test_add_func("/sipwire/framer/ping", test_framer_ping);
  g_test_add_func("/sipwire/framer/binary-body", test_framer_binary_body);
  g_test_add_func("/sipwire/framer/content-length-errors", test_framer_content_length_errors);
  g_test_add_func("/sipwire/framer/too-big", test_framer_too_big);
  g_test_add_func("/sipwire/framer/peek-pending", test_framer_peek_pending);
  g_test_add_func("/sipwire/framer/failed-head", test_framer_failed_head);
  g_test_add_func("/sipwire/msg/parse-request", test_msg_parse_request);
  g_test_add_func("/sipwire/msg/parse-response", test_msg_parse_response);
  g_test_add_func("/sipwire/msg/parse-errors", test_msg_parse_errors);
  g_test_add_func("/sipwire/msg/too-many-headers", test_msg_too_many_headers);
  g_test_add_func("/sipwire/msg/request-line", test_msg_request_line);
  g_test_add_func("/sipwire/msg/folding", test_msg_folding);
  g_test_add_func("/sipwire/msg/compact", test_msg_compact);
  g_test_add_func("/sipwire/msg/list-split", test_msg_list_split);
  g_test_add_func("/sipwire/msg/edit", test_msg_edit);
  g_test_add_func("/sipwire/msg/round-trip", test_msg_round_trip);
  g_test_add_func("/sipwire/param/get", test_param_get);
  g_test_add_func("/sipwire/param/set-remove", test_param_set_remove);
  g_test_add_func("/sipwire/addr/sent-by", test_sent_by);
  g_test_add_func("/sipwire/addr/nameaddr", test_nameaddr);
  g_test_add_func("/sipwire/relay/request-in", test_relay_request_in);
  g_test_add_func("/sipwire/relay/request-in-spoof", test_relay_request_in_spoof);
  g_test_add_func("/sipwire/relay/request-in-errors", test_relay_request_in_errors);
  g_test_add_func("/sipwire/relay/request-in-nua-name", test_relay_request_in_nua_name);
  g_test_add_func("/sipwire/relay/branch", test_relay_branch);
  g_test_add_func("/sipwire/relay/subscribe-default-expires",
                  test_relay_subscribe_default_expires);
  g_test_add_func("/sipwire/relay/many-values", test_relay_many_values);
  g_test_add_func("/sipwire/relay/response-out", test_relay_response_out);
  g_test_add_func("/sipwire/relay/response-out-spoofed", test_relay_response_out_spoofed);
  g_test_add_func("/sipwire/relay/notify-round-trip", test_relay_notify_round_trip);
  g_test_add_func("/sipwire/relay/request-out-errors", test_relay_request_out_errors);
  g_test_add_func("/sipwire/build-response", test_build_response);
  g_test_add_func("/sipwire/build-response-raw", test_build_response_raw);
  g_test_add_func("/sipwire/check-request-headers", test_check_request_headers);
  g_test_add_func("/sipwire/raw-method", test_raw_method);
  g_test_add_func("/sipwire/rfc4475/all", test_rfc4475_all);
  g_test_add_func("/sipwire/rfc4475/specific", test_rfc4475_specific);
  g_test_add_func("/sipwire/rfc4475/unparsable", test_rfc4475_unparsable);

  return g_test_run();
}
