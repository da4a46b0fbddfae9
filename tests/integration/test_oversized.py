#!/usr/bin/env python3
"""Oversized input is refused at its limit, precisely, and the daemon keeps serving others.

1. A header line longer than [tls] max-message-size: the connection is closed.
2. A body larger than max-message-size (Content-Length declared large): 513 Message Too Large,
   then the connection is closed.
3. More header fields than the edge takes (256): 400 Too many header fields, and the
   connection stays usable; a request with 250 header fields is still served.
4. A credential PUBLISH (digest-authenticated) whose multipart/mixed body nests 150 levels
   deep: 400 nested multipart; one with 150 parts: 400 too many parts; nothing is stored.
5. A MESSAGE whose body is over [message] max-body: 413.
After each case a SUBSCRIBE on a new connection still gets 200 and alice's certificate."""

import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
import regclient as rc_  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
PW = {ALICE: 'alice-secret', BOB: 'bob-secret'}
MAX_MESSAGE = 16384
MAX_BODY = 1024
MAX_HEADERS = 256  # SIPWIRE_MAX_HEADERS
CLOSE_S = 5.0
DEPTH = 150  # multipart levels; the whole PUBLISH stays under MAX_MESSAGE
PARTS = 150


def serves(dep, der):
    return h.serves(dep, ALICE, der)


def subscribe_with(c, n_headers):
    """A SUBSCRIBE to alice's certificate with @n_headers header fields in all."""
    base = h.request('SUBSCRIBE', ALICE, c.local_port, extra=['Event: certificate',
                                                              'Expires: 0'])
    have = base.split(b'\r\n\r\n', 1)[0].count(b'\r\n')  # header lines after the start line
    pad = ''.join('X-Pad-%d: %d\r\n' % (i, i) for i in range(n_headers - have))
    head, rest = base.split(b'\r\n', 1)
    return head + b'\r\n' + pad.encode() + rest


def answer_to(c, timeout=5.0):
    """The first final response on @c (NOTIFYs answered on the way)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = c.read(max(0.1, deadline - time.monotonic()))
        if msg.is_request:
            if msg.method == 'NOTIFY':
                c.answer(msg)
            continue
        if msg.code and msg.code >= 200:
            return msg


def nested(depth, cert):
    """A multipart/mixed body nesting @depth levels, the certificate at the bottom."""
    body = b'Content-Type: application/pkix-cert\r\n\r\n' + cert
    for i in range(depth):
        b = 'n%d' % i
        body = ('Content-Type: multipart/mixed;boundary=%s\r\n\r\n--%s\r\n' % (b, b)).encode() \
            + body + ('\r\n--%s--\r\n' % b).encode()
    ctype, _, body = body.partition(b'\r\n\r\n')
    return ctype.split(b': ', 1)[1].decode(), body


def many_parts(n, cert):
    parts = b''.join(b'--m\r\nContent-Type: text/plain\r\nContent-Disposition: render;'
                     b'handling=optional\r\n\r\nx\r\n' for _ in range(n - 1))
    parts += b'--m\r\nContent-Type: application/pkix-cert\r\n\r\n' + cert + b'\r\n--m--\r\n'
    return 'multipart/mixed;boundary=m', parts


def main(tap):
    h.require_tools('certtool')
    extra = '\n[message]\nmax-body=%d\n' % MAX_BODY
    with h.Deployment(tap, users=(ALICE, BOB), tls={'max-message-size': MAX_MESSAGE},
                      extra=extra) as dep:
        dep.import_certs()
        cc.add_user(dep, ALICE, PW[ALICE])
        cc.add_user(dep, BOB, PW[BOB])
        dep.start()
        der = dep.export_der(ALICE)
        bob_der = dep.export_der(BOB)
        rc, _ = dep.sipcred('cred', 'revoke', BOB)  # bob has a certificate to publish, not stored
        tap.ok(rc == 0 and serves(dep, der), 'before: SUBSCRIBE gets 200 and the certificate')

        def after(case):
            tap.ok(dep.alive() and serves(dep, der),
                   'after %s: a new SUBSCRIBE still gets 200 and the certificate' % case)

        # 1. One header line longer than the whole message may be, never ended.
        with dep.connect() as c:
            msg = h.request('SUBSCRIBE', ALICE, c.local_port, extra=['Event: certificate'])
            head = msg.split(b'\r\n', 1)[0] + b'\r\nX-Long: ' + b'a' * (MAX_MESSAGE + 1000)
            c.send(head)
            closed = c.wait_closed(CLOSE_S)
            first = c.buf.split(b'\r\n', 1)[0][:60]
        tap.ok(closed and not first.startswith(b'SIP/2.0 2'),
               'a header line of %d bytes (max-message-size %d): the connection is closed '
               '(first line back: %r)' % (len(head), MAX_MESSAGE, first))
        after('an over-long header line')

        # 2. A declared body larger than the limit: answered before it is read, then closed.
        with dep.connect() as c:
            msg = h.request('MESSAGE', 'sip:bob@example.com', c.local_port,
                            from_uri=ALICE, extra=['Content-Type: text/plain'])
            msg = msg.replace(b'Content-Length: 0', b'Content-Length: 10000000')
            c.send(msg + b'x' * 1000)
            closed = c.wait_closed(CLOSE_S)
            first = c.buf.split(b'\r\n', 1)[0]
        tap.ok(closed and first.startswith(b'SIP/2.0 513 '),
               'Content-Length 10000000 (max-message-size %d): 513, then the connection is '
               'closed (%r, closed %s)' % (MAX_MESSAGE, first, closed))
        after('an oversized body')

        # 3. Too many header fields: 400 naming it; the flow stays.
        with dep.connect() as c:
            c.send(subscribe_with(c, MAX_HEADERS + 44))
            resp = answer_to(c)
            tap.ok(resp.code == 400 and resp.reason == 'Too many header fields',
                   '%d header fields: 400 Too many header fields (%s %s)'
                   % (MAX_HEADERS + 44, resp.code, resp.reason))
            c.send(subscribe_with(c, 250))
            resp = answer_to(c)
            tap.ok(resp.code == 200, 'then, on the same connection, a SUBSCRIBE with 250 header '
                   'fields gets 200 (%s %s)' % (resp.code, resp.reason))
        after('too many header fields')

        # 4. Deep multipart nesting and many parts in a credential PUBLISH.
        with dep.connect() as c:
            pub = cc.Publisher(c, BOB, 'bob', PW[BOB])
            ctype, body = nested(DEPTH, bob_der)
            resp = pub.publish(body, ctype, expires=3600)
            tap.ok(resp.code == 400 and resp.reason == 'nested multipart',
                   'a PUBLISH body nesting multipart/mixed %d levels deep (%d bytes): 400 '
                   'nested multipart (%s %s)' % (DEPTH, len(body), resp.code, resp.reason))
            ctype, body = many_parts(PARTS, bob_der)
            resp = pub.publish(body, ctype, expires=3600)
            tap.ok(resp.code == 400 and resp.reason == 'too many parts',
                   'a PUBLISH body of %d parts: 400 too many parts (%s %s)'
                   % (PARTS, resp.code, resp.reason))
            ctype, body = cc.multipart(bob_der)
            resp = pub.publish(body, ctype, expires=3600)
            tap.ok(resp.code == 200, 'then, on the same connection, a plain credential PUBLISH '
                   'gets 200 (%s %s)' % (resp.code, resp.reason))
        rc, out = dep.sipcred('cred', 'show', BOB)
        tap.ok(rc == 0 and 'version: 1' in out,
               'only the plain PUBLISH was stored (bob\'s credential is at version 1)')
        after('deep multipart nesting')

        # 5. A MESSAGE body over [message] max-body.
        ua = rc_.Ua(dep, ALICE, PW[ALICE])
        try:
            resp = ua.message(BOB, b'x' * (MAX_BODY + 1))
        finally:
            ua.close()
        tap.ok(resp.code == 413 and str(MAX_BODY) in resp.reason,
               'a MESSAGE body of %d bytes (max-body %d): 413 naming the limit (%s %s)'
               % (MAX_BODY + 1, MAX_BODY, resp.code, resp.reason))
        after('a MESSAGE body over max-body')


if __name__ == '__main__':
    h.run_tap(main)
