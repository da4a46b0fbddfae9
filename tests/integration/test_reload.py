#!/usr/bin/env python3
"""SIGHUP reloads the TLS certificates and keys without dropping connections: after the domain
certificate is replaced on disk and sipcredd gets SIGHUP, new connections get the new
certificate while a connection made before keeps working; a broken certificate file makes the
reload fail and leaves the running certificate in place."""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402


def options_on(conn, dep):
    """The final status of an OPTIONS sent on an existing connection, or None."""
    conn.send(h.request('OPTIONS', 'sip:%s' % dep.domain, conn.local_port))
    deadline = time.monotonic() + 5
    try:
        while True:
            msg = conn.read(max(0.1, deadline - time.monotonic()))
            if not msg.is_request and msg.code and msg.code >= 200:
                return msg.code
    except (TimeoutError, h.Closed):
        return None


def peer_der(dep):
    with dep.connect() as c:
        return c.sock.getpeercert(binary_form=True)


def wait_log(dep, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(dep.log, 'rb') as f:
            if text.encode() in f.read():
                return True
        time.sleep(0.1)
    return False


def main(tap):
    h.require_tools('certtool')
    with h.Deployment(tap) as dep:
        dep.start()
        old = peer_der(dep)
        before = dep.connect()
        tap.ok(options_on(before, dep) == 200, 'a connection made before the reload works')

        # A new certificate and key for the domain, from the same test CA.
        for ext in ('.pem', '.key'):
            path = os.path.join(dep.dir, dep.domain + ext)
            os.rename(path, path + '.old')
        dep.make_certs()
        dep.proc.send_signal(signal.SIGHUP)
        tap.ok(wait_log(dep, 'reloaded TLS certificates'), 'sipcredd logs the reload')

        new = peer_der(dep)
        tap.ok(new is not None and new != old, 'a new connection gets the new certificate')
        tap.ok(before.sock.getpeercert(binary_form=True) == old,
               'the earlier connection keeps its session')
        tap.ok(options_on(before, dep) == 200, 'the earlier connection still works')

        # A broken certificate: the reload fails and nothing changes.
        with open(os.path.join(dep.dir, dep.domain + '.pem'), 'w') as f:
            f.write('-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n')
        dep.proc.send_signal(signal.SIGHUP)
        tap.ok(wait_log(dep, 'reload failed'), 'a broken certificate file makes the reload fail')
        tap.ok(peer_der(dep) == new, 'new connections keep the last good certificate')
        tap.ok(options_on(before, dep) == 200, 'the earlier connection survives a failed reload')
        before.close()
        tap.ok(dep.alive() and h.options_ok(dep), 'the daemon still serves')


if __name__ == '__main__':
    h.run_tap(main)
