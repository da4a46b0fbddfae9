/* server/sipwire: SIP message framing on a stream and the header rewriting
 * the edge does between clients and nua. Pure functions over bytes: no I/O,
 * no Sofia, so every rule here is unit-tested and fuzzed.
 *
 * Header names match case-insensitively and compact forms are equivalent
 * (v=Via, f=From, t=To, i=Call-ID, m=Contact, l=Content-Length,
 * c=Content-Type, o=Event, u=Allow-Events, k=Supported, e=Content-Encoding,
 * s=Subject, r=Refer-To, b=Referred-By, x=Session-Expires, y=Identity,
 * n=Identity-Info).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define SIPWIRE_ERROR (sipwire_error_quark())
GQuark sipwire_error_quark(void);

typedef enum {
  SIPWIRE_ERROR_TOO_BIG,   /* message over the size limit: close */
  SIPWIRE_ERROR_FRAMING,   /* Content-Length missing/invalid/duplicated: framing lost, close */
  SIPWIRE_ERROR_MALFORMED, /* framed, but not a SIP message we can relay: answer 400 */
  SIPWIRE_ERROR_VERSION,   /* not SIP/2.0: answer 505 */
  SIPWIRE_ERROR_SPOOFED,   /* claims to be from the internal side: drop */
} SipwireError;

/* ---- Framing ---------------------------------------------------------- */

typedef struct _SipwireFramer SipwireFramer;

typedef enum {
  SIPWIRE_FRAME_NEED_MORE, /* no complete message buffered yet */
  SIPWIRE_FRAME_MESSAGE,   /* *out holds one complete message */
  SIPWIRE_FRAME_PING,      /* an RFC 5626 CRLFCRLF keep-alive: answer "\r\n" */
  SIPWIRE_FRAME_ERROR,     /* framing lost: *error says why; close the stream */
} SipwireFrameResult;

/* @max_message bounds headers+body of one message; larger gives TOO_BIG. */
SipwireFramer *sipwire_framer_new(gsize max_message);
void sipwire_framer_free(SipwireFramer *framer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SipwireFramer, sipwire_framer_free)

/* Appends stream bytes. Never fails; limits are reported by _next(). */
void sipwire_framer_push(SipwireFramer *framer, const guint8 *data, gsize len);

/* Extracts the next item. Messages are framed by Content-Length (required on
 * streams, RFC 3261 18.3). Single CRLFs between messages are skipped. */
SipwireFrameResult sipwire_framer_next(SipwireFramer *framer, GBytes **out, GError **error);

/* Bytes buffered but not yet returned (for "half a message" detection). */
gsize sipwire_framer_get_pending(SipwireFramer *framer);
/* A copy of those bytes (the start of a message not yet whole), or NULL
 * when there are none. */
GBytes *sipwire_framer_peek_pending(SipwireFramer *framer);
/* After SIPWIRE_FRAME_ERROR: the header block (start line up to the empty
 * line) of the message that lost the framing, when it was complete, so the
 * caller can still answer it before closing; NULL otherwise. */
GBytes *sipwire_framer_get_failed_head(SipwireFramer *framer);

/* ---- Messages --------------------------------------------------------- */

typedef struct _SipwireMsg SipwireMsg;

/* Most header fields a message may have; more is MALFORMED ("Too many header
 * fields"), which the edge answers with 400. Real requests have about 15. */
#define SIPWIRE_MAX_HEADERS 256

/* Parses one framed message. Folded header lines are unfolded. Requires a
 * valid start line; headers must be "name: value" lines, at most
 * SIPWIRE_MAX_HEADERS of them. A NUL or a bare CR in the start line or a
 * header is MALFORMED (they could make a header mean something else to nua).
 * A body longer than Content-Length is cut to it. */
SipwireMsg *sipwire_msg_parse(const guint8 *data, gsize len, GError **error);
void sipwire_msg_free(SipwireMsg *msg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SipwireMsg, sipwire_msg_free)

gboolean sipwire_msg_is_request(const SipwireMsg *msg);
const char *sipwire_msg_get_method(const SipwireMsg *msg);      /* NULL for responses */
const char *sipwire_msg_get_request_uri(const SipwireMsg *msg); /* NULL for responses */
void sipwire_msg_set_request_uri(SipwireMsg *msg, const char *uri);
guint sipwire_msg_get_status(const SipwireMsg *msg); /* 0 for requests */

/* All values of header @name, split at commas outside quotes and <> for
 * list headers (Via, Route, Record-Route, Contact, Accept, Allow, Supported,
 * Require, Proxy-Require, Allow-Events, Unsupported). Trimmed. Never NULL. */
GPtrArray *sipwire_msg_get_values(const SipwireMsg *msg, const char *name);
/* First value of @name, or NULL. Valid until @msg next changes. */
const char *sipwire_msg_get_first(const SipwireMsg *msg, const char *name);

/* Replaces every header @name by one header line per element of @values
 * (which may be empty: removes them), at the position of the first one, or
 * right after the start line when there was none. */
void sipwire_msg_set_values(SipwireMsg *msg, const char *name, GPtrArray *values);
/* Inserts @value as the topmost value of @name. */
void sipwire_msg_prepend_value(SipwireMsg *msg, const char *name, const char *value);
/* Appends a header line at the end of the header block. */
void sipwire_msg_append_header(SipwireMsg *msg, const char *name, const char *value);
void sipwire_msg_remove_header(SipwireMsg *msg, const char *name);

GBytes *sipwire_msg_get_body(const SipwireMsg *msg); /* a new reference */
/* Serializes with CRLF line ends and a Content-Length equal to the body. */
GBytes *sipwire_msg_serialize(const SipwireMsg *msg);

/* A minimal response (status line, Via/From/To/Call-ID/CSeq copied, To tag
 * added when missing, Content-Length: 0) for a request the edge itself
 * rejects. NULL when the request lacks what a response needs. */
GBytes *sipwire_build_response(const SipwireMsg *request, guint status, const char *phrase);

/* The same, for a request refused because one of From, To, Call-ID or CSeq
 * is missing (RFC 4475 3.3.1): those present are copied, the others left
 * out. NULL without a Via, which the answer needs to find the client. */
GBytes *sipwire_build_response_partial(const SipwireMsg *request, guint status,
                                       const char *phrase);

/* ---- Answers to requests that do not parse ------------------------------ */

/* The same minimal response, built leniently from the bytes of a request
 * that sipwire_msg_parse() refused. The start line must begin with a method
 * token and a space; header lines are read up to the empty line or the end
 * of @data (a last line without its LF is ignored: it may be cut), unfolded,
 * compact names recognised. Every non-empty Via and the first From, To,
 * Call-ID and CSeq are copied as bytes: they may hold NUL or other control
 * bytes (the answer goes back to the client that wrote them), but a bare CR
 * becomes a space, so no line ends early. NULL when any of the five is
 * missing or empty. The caller decides whether the request gets an answer
 * at all (never an ACK). */
GBytes *sipwire_build_response_raw(const guint8 *data, gsize len, guint status,
                                   const char *phrase);

/* The method token @data starts with (when a space follows it), or NULL. */
char *sipwire_raw_get_method(const guint8 *data, gsize len);

/* TRUE for the methods of RFC 3261, 3262, 3265, 3311, 3428, 3515, 3903 and
 * 6086 (case-sensitive): INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK
 * SUBSCRIBE NOTIFY UPDATE MESSAGE REFER PUBLISH INFO. */
gboolean sipwire_method_is_known(const char *method);

/* ---- URI and header-parameter helpers ---------------------------------- */

/* Value of ;@param in a header value (Via, Route, ...), outside <> for
 * name-addr forms. NULL if absent; "" if present without a value. */
char *sipwire_param_get(const char *header_value, const char *param);
/* @header_value with ;@param removed (all occurrences). */
char *sipwire_param_remove(const char *header_value, const char *param);
/* @header_value with ;@param=@value set (replacing), @value NULL for a flag. */
char *sipwire_param_set(const char *header_value, const char *param, const char *value);

/* Host and port named by a Via (sent-by) or by the URI of a Route/Contact
 * value. Port is 0 when not written. Returns FALSE when unparsable. The host
 * is as written ([] kept for IPv6); @user is NULL without a user part. Any
 * out-parameter may be NULL. */
gboolean sipwire_via_get_sent_by(const char *via, char **host, guint16 *port);
gboolean sipwire_nameaddr_get_host_port(const char *value, char **user, char **host,
                                        guint16 *port);

/* ---- Edge rewriting ---------------------------------------------------- */

/* What the edge knows when relaying. Strings borrowed. */
typedef struct {
  const char *flow_token; /* [A-Za-z0-9]+, identifies the client TLS flow */
  const char *peer_ip;    /* client address as seen on the socket */
  guint16 peer_port;
  const char *internal_host;  /* "127.0.0.1" */
  guint16 edge_internal_port; /* the edge's listener that nua sends requests to */
  guint16 nua_port;           /* nua's TCP listener */
  const char *public_host;    /* the served domain this flow speaks for (SNI) */
  guint16 public_port;        /* the TLS listener's port */
  const char *const *served_domains;
  /* Written into a SUBSCRIBE that has no Expires; 0 leaves it alone. nua
   * takes a missing Expires as 3600 s and never grants more than requested,
   * so without this the event packages' one-day default could not apply. */
  guint32 subscribe_default_expires;
} SipwireRelayCtx;

/* Client -> nua request. Removes what could spoof the internal side (Via,
 * Route and Record-Route values naming an internal address: internal_host,
 * a served domain or public_host with nua_port or edge_internal_port, as
 * host or route maddr; every "flow" parameter), pops Route values naming us
 * (a served domain or the public address), sets received/rport on the
 * client's Via, pushes the edge's Via
 * "SIP/2.0/TCP internal_host:edge_internal_port;branch=z9hG4bK...;flow=TOKEN",
 * and adds "Record-Route: <sip:TOKEN@internal_host:edge_internal_port;
 * transport=tcp;lr>" to dialog-creating requests (SUBSCRIBE, INVITE, REFER).
 * The edge's branch is derived from the client's transaction and the flow
 * token (RFC 3261 16.11): a retransmission, a CANCEL and the ACK to a non-2xx
 * response get the branch of their request; other transactions and other
 * flows get different ones. Fails with MALFORMED when there is no Via. */
gboolean sipwire_relay_request_in(SipwireMsg *msg, const SipwireRelayCtx *ctx, GError **error);

/* The headers RFC 3261 8.1.1 requires of every request, checked before a
 * request reaches nua: exactly one Call-ID, CSeq, From and To, at most one
 * Max-Forwards, and a CSeq of a number and the request's method. MALFORMED
 * (answer 400)
 * names the first one wrong. nua answers such requests itself but then
 * closes the connection they came on, which for the edge is the one shared
 * by every client. */
gboolean sipwire_msg_check_request_headers(const SipwireMsg *msg, GError **error);

/* nua -> client response. Pops the edge's Via and returns its flow token in
 * @flow_token; removes the internal Record-Route; rewrites nua's Contact to
 * <sips:public_host:public_port>. Fails with SPOOFED when the top Via is not
 * the edge's. */
gboolean sipwire_relay_response_out(SipwireMsg *msg, const SipwireRelayCtx *ctx, char **flow_token,
                                    GError **error);

/* nua -> client request (NOTIFY, ...). Pops the internal Route and returns
 * its token; replaces nua's Via by "SIP/2.0/TLS public_host:public_port;
 * branch=<nua's branch>" and returns nua's original Via in @saved_via and its
 * branch in @branch; rewrites nua's Contact like responses. */
gboolean sipwire_relay_request_out(SipwireMsg *msg, const SipwireRelayCtx *ctx, char **flow_token,
                                   char **saved_via, char **branch, GError **error);

/* Client -> nua response to a request from nua: the top Via's branch in
 * @branch (to find the saved state). The caller then replaces the top Via by
 * the saved one with sipwire_relay_response_in_restore(). */
gboolean sipwire_relay_response_in(SipwireMsg *msg, char **branch, GError **error);
void sipwire_relay_response_in_restore(SipwireMsg *msg, const char *saved_via);

G_END_DECLS
