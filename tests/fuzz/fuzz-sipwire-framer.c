/* Fuzz target: SIP framing on a stream, then parsing and serialization.
 *
 * The whole input is the stream. It is framed twice: pushed at once, and
 * pushed in chunks whose sizes come from the input bytes themselves. Both
 * must give the same messages, pings and errors, in the same order. Each
 * message is parsed; what parses must serialize into a message that frames
 * and parses back to the same bytes. */
#define G_LOG_DOMAIN "sipcred-fuzz"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/sipwire.h"
#include "fuzz.h"

/* One item out of the framer: a message (its bytes), a ping, or an error. */
typedef struct {
  SipwireFrameResult kind;
  GBytes *message;
  gint code;
} Event;

static void
event_clear(gpointer p)
{
  Event *e = p;
  g_clear_pointer(&e->message, g_bytes_unref);
}

/* FALSE once the framer failed: nothing more will come out of it. */
static gboolean
drain(SipwireFramer *f, GArray *events)
{
  for (;;) {
    GBytes *out = NULL;
    GError *error = NULL;
    SipwireFrameResult r = sipwire_framer_next(f, &out, &error);
    if (r == SIPWIRE_FRAME_NEED_MORE) {
      FUZZ_CHECK(out == NULL && error == NULL);
      return TRUE;
    }
    Event e = {r, out, 0};
    if (r == SIPWIRE_FRAME_ERROR) {
      FUZZ_CHECK(error != NULL && error->domain == SIPWIRE_ERROR);
      e.code = error->code;
      g_error_free(error);
      /* Framing is lost for good: the next call says so again. */
      g_autoptr(GBytes) again = NULL;
      g_autoptr(GError) again_error = NULL;
      FUZZ_CHECK(sipwire_framer_next(f, &again, &again_error) == SIPWIRE_FRAME_ERROR);
      FUZZ_CHECK(sipwire_framer_get_pending(f) == 0);
      g_array_append_val(events, e);
      return FALSE;
    }
    FUZZ_CHECK(error == NULL);
    FUZZ_CHECK((r == SIPWIRE_FRAME_MESSAGE) == (out != NULL));
    g_array_append_val(events, e);
  }
}

static GArray *
events_new(void)
{
  GArray *a = g_array_new(FALSE, TRUE, sizeof(Event));
  g_array_set_clear_func(a, event_clear);
  return a;
}

static void
check_same_events(GArray *a, GArray *b)
{
  FUZZ_CHECK(a->len == b->len);
  for (guint i = 0; i < a->len; i++) {
    const Event *x = &g_array_index(a, Event, i), *y = &g_array_index(b, Event, i);
    FUZZ_CHECK(x->kind == y->kind && x->code == y->code);
    FUZZ_CHECK((x->message == NULL) == (y->message == NULL));
    FUZZ_CHECK(x->message == NULL || g_bytes_equal(x->message, y->message));
  }
}

/* Read-only accessors must cope with whatever parsed. */
static void
exercise_accessors(const SipwireMsg *msg)
{
  static const char *const names[] = {"Via", "Route",   "Record-Route", "Contact", "From",
                                      "To",  "Call-ID", "CSeq",         "l",       "Accept"};
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
    g_autoptr(GPtrArray) values = sipwire_msg_get_values(msg, names[i]);
    const char *first = sipwire_msg_get_first(msg, names[i]);
    FUZZ_CHECK((values->len == 0) == (first == NULL));
    for (guint j = 0; j < values->len && j < 8; j++) {
      const char *v = values->pdata[j];
      g_autofree char *host = NULL, *user = NULL, *host2 = NULL;
      guint16 port = 0;
      g_autofree char *branch = sipwire_param_get(v, "branch");
      g_autofree char *without = sipwire_param_remove(v, "branch");
      g_autofree char *with = sipwire_param_set(v, "tag", "t");
      g_autofree char *tag = sipwire_param_get(with, "tag");
      /* NULL only where quotes or <> are left open and hide every param. */
      FUZZ_CHECK(tag == NULL || g_str_equal(tag, "t"));
      g_autofree char *gone = sipwire_param_get(without, "branch");
      FUZZ_CHECK(gone == NULL);
      /* Setting one param leaves the others as they were. */
      g_autofree char *branch_after = sipwire_param_get(with, "branch");
      FUZZ_CHECK(tag == NULL || g_strcmp0(branch, branch_after) == 0);
      sipwire_via_get_sent_by(v, &host, &port);
      sipwire_nameaddr_get_host_port(v, &user, &host2, &port);
    }
  }
  g_autoptr(GBytes) resp = sipwire_build_response(msg, 400, "Bad Request");
  if (resp != NULL) {
    g_autoptr(GError) error = NULL;
    g_autoptr(SipwireMsg) r =
        sipwire_msg_parse(g_bytes_get_data(resp, NULL), g_bytes_get_size(resp), &error);
    FUZZ_CHECK(r != NULL && sipwire_msg_get_status(r) == 400);
  }
}

static void
check_message(GBytes *bytes)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SipwireMsg) msg =
      sipwire_msg_parse(g_bytes_get_data(bytes, NULL), g_bytes_get_size(bytes), &error);
  if (msg == NULL) {
    FUZZ_CHECK(error != NULL && error->domain == SIPWIRE_ERROR);
    FUZZ_CHECK(error->code == SIPWIRE_ERROR_MALFORMED || error->code == SIPWIRE_ERROR_VERSION);
    /* The edge answers such a request from its bytes: the answer must be
     * one well-formed response. */
    g_autofree char *method = sipwire_raw_get_method(g_bytes_get_data(bytes, NULL),
                                                     g_bytes_get_size(bytes));
    if (method)
      (void)sipwire_method_is_known(method);
    g_autoptr(GBytes) raw = sipwire_build_response_raw(g_bytes_get_data(bytes, NULL),
                                                       g_bytes_get_size(bytes), 400, "Bad");
    if (raw != NULL) {
      g_autoptr(GError) rerr = NULL;
      g_autoptr(SipwireMsg) r =
          sipwire_msg_parse(g_bytes_get_data(raw, NULL), g_bytes_get_size(raw), &rerr);
      /* NUL bytes copied from the request may make it unparsable for us, never
       * unframable: it must stay exactly one framed message. */
      g_autoptr(SipwireFramer) rf = sipwire_framer_new(g_bytes_get_size(raw));
      sipwire_framer_push(rf, g_bytes_get_data(raw, NULL), g_bytes_get_size(raw));
      g_autoptr(GBytes) rframed = NULL;
      g_autoptr(GError) ferr = NULL;
      FUZZ_CHECK(sipwire_framer_next(rf, &rframed, &ferr) == SIPWIRE_FRAME_MESSAGE);
      FUZZ_CHECK(g_bytes_equal(rframed, raw));
      FUZZ_CHECK(r == NULL || sipwire_msg_get_status(r) == 400);
    }
    return;
  }
  exercise_accessors(msg);

  g_autoptr(GBytes) s1 = sipwire_msg_serialize(msg);
  g_autoptr(SipwireMsg) again =
      sipwire_msg_parse(g_bytes_get_data(s1, NULL), g_bytes_get_size(s1), &error);
  FUZZ_CHECK(again != NULL);
  g_autoptr(GBytes) s2 = sipwire_msg_serialize(again);
  FUZZ_CHECK(g_bytes_equal(s1, s2));

  /* What the edge sends is exactly one framed message. */
  g_autoptr(SipwireFramer) f = sipwire_framer_new(g_bytes_get_size(s1));
  sipwire_framer_push(f, g_bytes_get_data(s1, NULL), g_bytes_get_size(s1));
  g_autoptr(GBytes) framed = NULL;
  FUZZ_CHECK(sipwire_framer_next(f, &framed, &error) == SIPWIRE_FRAME_MESSAGE);
  FUZZ_CHECK(g_bytes_equal(framed, s1));
  FUZZ_CHECK(sipwire_framer_get_pending(f) == 0);
}

static GArray *
frame(const uint8_t *data, size_t size, gsize max_message, gboolean chunked)
{
  g_autoptr(SipwireFramer) f = sipwire_framer_new(max_message);
  GArray *events = events_new();
  if (!chunked) {
    sipwire_framer_push(f, data, size);
    drain(f, events);
    return events;
  }
  size_t pos = 0;
  while (pos < size) {
    /* The byte at the cut chooses the next chunk: 1 to 64 bytes. */
    size_t n = MIN((size_t)(data[pos] % 64) + 1, size - pos);
    sipwire_framer_push(f, data + pos, n);
    pos += n;
    if (!drain(f, events))
      break;
  }
  return events;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  /* A roomy limit, and a small one so the size checks are reached too. */
  static const gsize limits[] = {65536, 300};
  for (gsize l = 0; l < G_N_ELEMENTS(limits); l++) {
    g_autoptr(GArray) whole = frame(data, size, limits[l], FALSE);
    g_autoptr(GArray) chunked = frame(data, size, limits[l], TRUE);
    check_same_events(whole, chunked);
    if (l == 0)
      for (guint i = 0; i < whole->len; i++) {
        const Event *e = &g_array_index(whole, Event, i);
        if (e->message != NULL)
          check_message(e->message);
      }
  }
  return 0;
}
