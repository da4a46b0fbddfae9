#!/usr/bin/env python3
"""The MESSAGE relay (RFC 3428; RFC 6072 section 9.1; sec-flows section 5) over real TLS.

alice sends bob a multipart/signed body with a binary part, shaped like sec-flows 5.1, and an
application/pkcs7-mime one like 5.2: bob's registered device receives the same bytes with the
same Content-Type, Content-Disposition and Content-Transfer-Encoding, signed (Identity) for
alice's domain. The best final answer of bob's devices goes back. Refusals: unauthenticated
(401), a From that is not the authenticated user (403), an unknown user (404), a user with no
binding (480) or whose binding's flow is gone (480), a body over [message] max-body (413)."""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
from regclient import Ua  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
CAROL = 'sip:carol@example.com'
PW = {ALICE: 'alice-msg-secret', BOB: 'bob-msg-secret', CAROL: 'carol-msg-secret'}
MAX_BODY = 4096

SIGNED_TYPE = ('multipart/signed;boundary=----1F9A2;micalg=sha1;'
               'protocol="application/pkcs7-signature"')
BINARY = bytes(range(256)) * 3  # every byte value, CR LF and NUL included


def signed_body():
    return (b'------1F9A2\r\n'
            b'Content-Type: text/plain\r\n'
            b'Content-Transfer-Encoding: binary\r\n\r\n'
            b'Hello bob, a signed hello from alice.\r\n'
            b'------1F9A2\r\n'
            b'Content-Type: application/pkcs7-signature;name=smime.p7s\r\n'
            b'Content-Transfer-Encoding: binary\r\n'
            b'Content-Disposition: attachment;handling=required;filename=smime.p7s\r\n\r\n' +
            BINARY + b'\r\n------1F9A2--\r\n')


class Device:
    """bob's registered device: answers every MESSAGE on its connection with @code and keeps
    what it received. Bounded by max_s."""

    def __init__(self, ua, code=200, max_s=60.0):
        self.ua = ua
        self.code = code
        self.got = []
        self._stop = threading.Event()
        self._end = time.monotonic() + max_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set() and time.monotonic() < self._end:
            try:
                msg = self.ua.conn.read(0.3)
            except TimeoutError:
                continue
            except (h.Closed, OSError):
                return
            if msg.is_request and msg.method == 'MESSAGE':
                self.got.append(msg)
                self.ua.conn.answer(msg, self.code, 'OK' if self.code == 200 else 'Busy Here')

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)


def registered(dep, code=200):
    ua = Ua(dep, BOB, PW[BOB])
    resp = ua.register(contacts=[ua.contact(user='bob-%d' % ua.conn.local_port)])
    if resp.code != 200:
        raise RuntimeError('bob cannot register: %s %s' % (resp.code, resp.reason))
    return ua, Device(ua, code)


def verify_identity(dep, msg):
    rc, out = h.run([h.binary('sipcred'), 'identity', 'verify', '-', '--cert',
                     os.path.join(dep.dir, dep.domain + '.pem')], input_bytes=msg.raw)
    return rc == 0, out


def main(tap):
    extra = '\n[message]\nmax-body=%d\n' % MAX_BODY
    with h.Deployment(tap, users=(ALICE, BOB, CAROL), extra=extra) as dep:
        dep.start()
        for aor, pw in PW.items():
            cc.add_user(dep, aor, pw)
        alice = Ua(dep, ALICE, PW[ALICE])

        # Unauthenticated: a challenge, nothing relayed.
        resp = alice._send('MESSAGE', BOB, BOB, ['Content-Type: text/plain'], body=b'hi',
                           call_id=h.new_id(), auth=False)
        tap.ok(resp.code == 401, 'an unauthenticated MESSAGE gets 401 (%s)' % resp.code)

        bob_ua, bob = registered(dep)
        body = signed_body()
        resp = alice.message(BOB, body, SIGNED_TYPE)
        time.sleep(0.2)
        tap.ok(resp.code == 200 and len(bob.got) == 1,
               'alice -> bob: 200 once bob\'s device accepted it (%s %s, %d received)'
               % (resp.code, resp.reason, len(bob.got)))
        got = bob.got[0] if bob.got else None
        tap.ok(got is not None and got.body == body,
               'bob receives the multipart/signed body byte for byte, binary part included')
        tap.ok(got is not None and got.get('content-type') == SIGNED_TYPE,
               'the Content-Type is unchanged (%s)' % (got.get('content-type') if got else None))
        tap.ok(got is not None and h.uri_of(got.get('from', '')) == ALICE,
               'the From is alice (%s)' % (got.get('from') if got else None))
        ok, out = verify_identity(dep, got) if got is not None else (False, 'none received')
        tap.ok(got is not None and got.get('identity') is not None and ok,
               "the relayed MESSAGE carries a valid Identity for alice's domain (%s)"
               % out.strip()[-200:])

        # sec-flows 5.2: an encrypted body, with its Content-Disposition and CTE headers.
        enveloped = b'\x30\x82\x01\x00' + bytes(reversed(range(256)))
        ptype = 'application/pkcs7-mime;smime-type=enveloped-data;name=smime.p7m'
        pdisp = 'attachment;handling=required;filename=smime.p7m'
        resp = alice.message(BOB, enveloped, ptype, extra=[
            'Content-Disposition: ' + pdisp, 'Content-Transfer-Encoding: binary'])
        time.sleep(0.2)
        got = bob.got[1] if len(bob.got) > 1 else None
        tap.ok(resp.code == 200 and got is not None and got.body == enveloped and
               got.get('content-type') == ptype and got.get('content-disposition') == pdisp and
               got.get('content-transfer-encoding') == 'binary',
               'an application/pkcs7-mime body keeps its bytes, Content-Disposition and '
               'Content-Transfer-Encoding (%s)' % resp.code)

        # Refusals.
        resp = alice.message(BOB, b'spoofed', from_uri=CAROL)
        tap.ok(resp.code == 403 and 'from' in resp.reason.lower(),
               'a From other than the authenticated user: 403 (%s %s)'
               % (resp.code, resp.reason))
        resp = alice.message('sip:nobody@example.com', b'hello?')
        tap.ok(resp.code == 404, 'an unknown user: 404 (%s %s)' % (resp.code, resp.reason))
        resp = alice.message(CAROL, b'hello carol')
        tap.ok(resp.code == 480, 'a user with no binding: 480 (%s %s)' % (resp.code, resp.reason))
        resp = alice.message(BOB, b'x' * (MAX_BODY + 1))
        tap.ok(resp.code == 413, 'a body over max-body: 413 (%s %s)' % (resp.code, resp.reason))
        n_before = len(bob.got)
        time.sleep(0.2)
        tap.ok(len(bob.got) == n_before, 'none of the refused MESSAGEs reached bob')

        # Two devices: a busy one and one that accepts; the 2xx wins. One busy alone: 486.
        bob2_ua, bob2 = registered(dep, code=486)
        resp = alice.message(BOB, b'to both')
        time.sleep(0.2)
        tap.ok(resp.code == 200 and len(bob2.got) == 1,
               'with two devices both get it and the 200 wins over 486 (%s)' % resp.code)
        bob.stop()
        bob_ua.close()
        time.sleep(0.3)
        resp = alice.message(BOB, b'to the busy one')
        tap.ok(resp.code == 486, "the other device's flow is gone, the busy one answers: 486 "
               '(%s %s)' % (resp.code, resp.reason))
        bob2.stop()
        bob2_ua.close()
        time.sleep(0.3)
        resp = alice.message(BOB, b'nobody home')
        tap.ok(resp.code == 480, 'every binding on a closed flow: 480 (%s %s)'
               % (resp.code, resp.reason))
        alice.close()


if __name__ == '__main__':
    h.run_tap(main)
