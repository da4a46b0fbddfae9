#!/usr/bin/env python3
"""The core learns each request's flow and its TLS facts from the edge: a SUBSCRIBE straight
from the UA is logged with the peer address, TLS version and suite as direct; the same request
carrying a second Via (as if a proxy had relayed it) is not direct."""

import re
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

ALICE = 'sip:alice@example.com'


def wait_log(dep, pattern, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(dep.log, 'rb') as f:
            m = re.search(pattern, f.read().decode('utf-8', 'replace'))
        if m:
            return m
        time.sleep(0.1)
    return None


def main(tap):
    h.require_tools('certtool')
    with h.Deployment(tap) as dep:
        dep.import_certs()
        dep.start()
        with dep.connect() as c:
            final, notify = h.Subscription(c, ALICE).exchange(600)
            tap.ok(final is not None and final.code == 200, 'a direct SUBSCRIBE is accepted')
            m = wait_log(dep, r'certificate subscription to %s for \d+ s from 127\.0\.0\.1:%d '
                              r'over (TLS1\.[23]) (\S+) \(direct\)' % (re.escape(ALICE),
                                                                       c.local_port))
            tap.ok(m is not None, 'the core sees the peer, TLS version and suite, and "direct"')

            # The same request with a proxy's Via below the client's.
            call_id = h.new_id()
            req = h.request('SUBSCRIBE', ALICE, c.local_port, call_id=call_id,
                            extra=['Event: certificate', 'Expires: 600'])
            req = req.replace(b'\r\nMax-Forwards:',
                              b'\r\nVia: SIP/2.0/TLS 192.0.2.9:5061;branch=z9hG4bKproxy1'
                              b'\r\nMax-Forwards:', 1)
            c.send(req)
            deadline = time.monotonic() + 5
            code = None
            while code is None and time.monotonic() < deadline:
                msg = c.read(max(0.1, deadline - time.monotonic()))
                if msg.is_request:
                    c.answer(msg)
                elif msg.get('call-id', '').startswith(call_id) and msg.code >= 200:
                    code = msg.code
            tap.ok(code == 200, 'a certificate SUBSCRIBE through a proxy is still served')
            tap.ok(wait_log(dep, r'certificate subscription to %s .*\(not direct\)'
                            % re.escape(ALICE)) is not None,
                   'but the core sees it as not direct')


if __name__ == '__main__':
    h.run_tap(main)
