#!/usr/bin/env python3
"""The registrar over the TLS edge (RFC 3261 section 10.3, RFC 5626): digest, only the AOR
itself, 404 outside the served domains, Min-Expires and clamping, several Contacts,
out-of-order CSeq, refresh, removal one by one and with Contact: *, expiry, outbound
instance/reg-id replacement on a new flow, the Date header, and bindings that survive a
daemon restart."""

import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
from regclient import Ua, bindings, expires_of  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
PW = {ALICE: 'alice-reg-secret', BOB: 'bob-reg-secret'}
INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-0123456789ab>"'

CONFIG = '\n[registrar]\nmin-expires=2\nmax-expires=7200\ndefault-expires=600\n'


def main(tap):
    with h.Deployment(tap, users=(ALICE, BOB), extra=CONFIG) as dep:
        dep.start()
        for aor, pw in PW.items():
            cc.add_user(dep, aor, pw)

        bob = Ua(dep, BOB, PW[BOB])
        # Without credentials: a challenge, SHA-256 first.
        raw_id = h.new_id()
        bob.conn.send(h.request('REGISTER', 'sip:example.com', bob.conn.local_port,
                                from_uri=BOB, to_uri=BOB, call_id=raw_id, contact=False,
                                extra=['Contact: ' + bob.contact()]))
        resp = cc.final_response(bob.conn, raw_id, 'REGISTER')
        algs = [c.get('algorithm') for c in cc.challenges(resp)]
        tap.ok(resp.code == 401 and algs[:2] == ['SHA-256', 'MD5'],
               'an unauthenticated REGISTER gets 401 with SHA-256 and MD5 (%s %s)'
               % (resp.code, algs))

        resp = bob.register()
        got = bindings(resp)
        tap.ok(resp.code == 200 and list(got) == [h.uri_of(bob.contact())],
               'bob registers one binding: 200 lists it (%s %s)' % (resp.code, list(got)))
        tap.ok(expires_of(next(iter(got.values()), '')) == 600,
               'a Contact without expiry gets default-expires (%s)' % list(got.values()))
        tap.ok(resp.get('date') is not None and resp.get('date').endswith('GMT'),
               'the 200 carries a Date header (%s)' % resp.get('date'))

        alice = Ua(dep, ALICE, PW[ALICE])
        resp = alice.register(aor=BOB)
        tap.ok(resp.code == 403 and 'only the aor itself' in resp.reason.lower(),
               "alice registering bob's AOR: 403 (%s %s)" % (resp.code, resp.reason))
        resp = alice.register(aor='sip:alice@elsewhere.example.org')
        tap.ok(resp.code == 404, 'an AOR outside the served domains: 404 (%s %s)'
               % (resp.code, resp.reason))

        resp = bob.register(expires=1)
        tap.ok(resp.code == 423 and resp.get('min-expires') == '2',
               'an expiry below min-expires: 423 with Min-Expires (%s %s)'
               % (resp.code, resp.get('min-expires')))
        resp = bob.register(expires=999999)
        tap.ok(resp.code == 200 and
               expires_of(bindings(resp).get(h.uri_of(bob.contact()), '')) == 7200,
               'a long expiry is clamped to max-expires (%s)' % bindings(resp))

        # Out of order: the same Call-ID with a CSeq not above the binding's.
        resp = bob.register(cseq=1)
        tap.ok(resp.code == 500 and 'order' in resp.reason.lower(),
               'an out-of-order CSeq: 500 (%s %s)' % (resp.code, resp.reason))
        resp = bob.register(contacts=[])
        tap.ok(resp.code == 200 and
               expires_of(bindings(resp).get(h.uri_of(bob.contact()), '')) in (7199, 7200),
               'the out-of-order REGISTER changed nothing; a query lists the binding (%s)'
               % bindings(resp))

        # Several Contacts at once, and removal of one.
        second = '<sips:bob-desk@%s:5999;transport=tls>' % h.HOST
        resp = bob.register(contacts=[bob.contact(), second + ';expires=300'])
        got = bindings(resp)
        tap.ok(resp.code == 200 and len(got) == 2 and
               expires_of(got.get(h.uri_of(second), '')) == 300,
               'two Contacts in one REGISTER, each with its expiry (%s)' % got)
        resp = bob.register(contacts=[second + ';expires=0'])
        tap.ok(resp.code == 200 and list(bindings(resp)) == [h.uri_of(bob.contact())],
               'expires=0 removes that binding only (%s)' % bindings(resp))

        resp = bob.register(contacts=['*'], expires=600)
        tap.ok(resp.code == 400, 'Contact: * without Expires: 0 is refused (%s %s)'
               % (resp.code, resp.reason))
        resp = bob.register(contacts=['*'], expires=0)
        tap.ok(resp.code == 200 and not bindings(resp),
               'Contact: * with Expires: 0 removes every binding (%s)' % bindings(resp))

        # Expiry: a two-second binding is gone after it lapses.
        resp = bob.register(expires=2)
        time.sleep(3.2)
        resp = bob.register(contacts=[])
        tap.ok(resp.code == 200 and not bindings(resp),
               'an expired binding is no longer listed (%s)' % bindings(resp))

        # RFC 5626: the same instance and reg-id from a new flow replace the binding.
        ob = [';+sip.instance=%s;reg-id=1' % INSTANCE]
        resp = bob.register(contacts=[bob.contact(params=ob[0])], extra=['Supported: outbound'])
        tap.ok(resp.code == 200 and resp.get('require') == 'outbound',
               'an outbound registration: 200 with Require: outbound (%s %s)'
               % (resp.code, resp.get('require')))
        bob2 = Ua(dep, BOB, PW[BOB])
        resp = bob2.register(contacts=[bob2.contact(params=ob[0])],
                             extra=['Supported: outbound'])
        got = bindings(resp)
        tap.ok(resp.code == 200 and list(got) == [h.uri_of(bob2.contact())] and
               'reg-id=1' in next(iter(got.values()), ''),
               'the same instance and reg-id on a new flow replace the old binding (%s)' % got)
        bob.close()
        bob2.close()
        alice.close()

        # Bindings survive a restart (their flows do not).
        bob3 = Ua(dep, BOB, PW[BOB])
        keep = '<sips:bob-phone@%s:5998;transport=tls>' % h.HOST
        resp = bob3.register(contacts=[keep + ';expires=3600'])
        bob3.close()
        dep.stop()
        dep.start()
        bob4 = Ua(dep, BOB, PW[BOB])
        resp = bob4.register(contacts=[])
        tap.ok(resp.code == 200 and h.uri_of(keep) in bindings(resp),
               'bindings survive a daemon restart (%s)' % bindings(resp))
        bob4.close()


if __name__ == '__main__':
    h.run_tap(main)
