#!/usr/bin/env python3
"""Two users register with registrars' clients no one here wrote: alice with SIPp (TCP)
through stunnel (TLS, verifying sipcredd against the test CA with SNI = the domain), bob with
sipsak through the same stunnel. Each answers the digest challenge with its own digest code.

Both know only MD5 and read only the first challenge (see test_sipp_credential.py), so they
go through the relay that removes the SHA-256 challenge from 401s. A query by each user with
our Python client then lists the binding each tool registered."""

import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
from regclient import Ua, bindings  # noqa: E402
from test_sipp_credential import (Relay, drop_sha256_challenges, run_client,  # noqa: E402
                                  start_stunnel)

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
PW = {ALICE: 'alice-sipp-reg', BOB: 'bob-sipsak-reg'}


def sipp_register(tap, dep, stunnel_port):
    relay = Relay(stunnel_port, rewrite=drop_sha256_challenges)
    err_file = os.path.join(dep.dir, 'sipp-register-errors.log')
    argv = ['sipp', '-sf', os.path.join(h.HERE, 'register-sipp.xml'), '-t', 't1', '-m', '1',
            '-l', '1', '-s', 'alice', '-key', 'domain', dep.domain, '-au', 'alice',
            '-ap', PW[ALICE], '-auth_uri', dep.domain, '-i', h.HOST, '-p', str(h.free_port()),
            '-recv_timeout', '10000', '-timeout', '30s', '-timeout_error', '-nostdin',
            '-trace_err', '-error_file', err_file, '%s:%d' % (h.HOST, relay.port)]
    status, out = run_client(dep, 'sipp-register', argv, relay)
    if not tap.ok(status == 0, 'SIPp registers alice: 401, digest, 200 with a Date and its '
                               'binding (exit status %s)' % status):
        tap.diag(h.tail(err_file, 30) + '\n' + out)
    sent = [m for m in relay.sent() if m.is_request and m.get('authorization')]
    a = cc.parse_challenge(sent[0].get('authorization')) if sent else {}
    tap.ok(a.get('algorithm', '').upper() == 'MD5' and a.get('uri') == 'sip:' + dep.domain,
           "SIPp's Authorization: MD5 with the Request-URI as digest uri (%s)" % a.get('uri'))


def sipsak_register(tap, dep, stunnel_port):
    relay = Relay(stunnel_port, rewrite=drop_sha256_challenges)
    msg_path = os.path.join(dep.dir, 'sipsak-register.txt')
    with open(msg_path, 'w') as f:
        f.write('\n'.join([
            'REGISTER sip:%s SIP/2.0' % dep.domain,
            'Max-Forwards: 70',
            'From: <%s>;tag=sipsak%s' % (BOB, h.new_id()),
            'To: <%s>' % BOB,
            'Call-ID: %s@%s' % (h.new_id(), h.HOST),
            'CSeq: 1 REGISTER',
            'Contact: <sip:bob-sipsak@%s:%d;transport=tcp>' % (h.HOST, relay.port),
            'Expires: 600',
            'Content-Length: 0',
            '', '']))
    argv = ['sipsak', '-f', msg_path, '-s', 'sip:bob@%s:%d' % (h.HOST, relay.port),
            '-E', 'tcp', '-u', 'bob', '-a', PW[BOB], '-vv']
    _, out = run_client(dep, 'sipsak-register', argv, relay, timeout=30)
    finals = [m for m in relay.received() if not m.is_request and m.cseq_method() == 'REGISTER'
              and m.code >= 200]
    codes = [m.code for m in finals]
    if not tap.ok(codes[-1:] == [200] and 401 in codes,
                  'sipsak registers bob: 401, then digest and 200 (%s)' % codes):
        tap.diag(out)


def main(tap):
    h.require_tools('sipp', 'stunnel4', 'sipsak')
    with h.Deployment(tap, users=(ALICE, BOB)) as dep:
        dep.start()
        for aor, pw in PW.items():
            cc.add_user(dep, aor, pw)
        stunnel, port, log = start_stunnel(dep)
        try:
            sipp_register(tap, dep, port)
            sipsak_register(tap, dep, port)
        finally:
            h.stop(stunnel)
        for aor, tool in ((ALICE, 'alice-sipp'), (BOB, 'bob-sipsak')):
            ua = Ua(dep, aor, PW[aor])
            resp = ua.register(contacts=[])
            got = list(bindings(resp))
            tap.ok(resp.code == 200 and any(tool + '@' in u for u in got),
                   'a query lists the binding %s registered (%s)' % (tool.split('-')[1], got))
            ua.close()


if __name__ == '__main__':
    h.run_tap(main)
