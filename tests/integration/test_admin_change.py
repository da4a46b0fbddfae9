#!/usr/bin/env python3
"""An admin change made with sipcred while sipcredd runs reaches the subscribers: importing a
new certificate for alice sends every subscriber of alice's certificate a NOTIFY with the new
DER, and revoking it sends a NOTIFY with an empty body; subscribers of others get nothing.
The first part turns the minimum interval between NOTIFYs off ([fanout] min-interval=0); the
second keeps it on (a short 5 s, not the 60 s default, so the test stays quick) and checks that
two changes in quick succession reach a fresh subscriber as one NOTIFY with the newer state."""

import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'


def next_notify(conn, call_id, timeout=6.0):
    """The next NOTIFY of this dialog (answered with 200), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = conn.read(max(0.1, deadline - time.monotonic()))
        except (TimeoutError, h.Closed):
            return None
        if msg.is_request and msg.method == 'NOTIFY':
            conn.answer(msg)
            if msg.get('call-id') == call_id:
                return msg
    return None


def main(tap):
    h.require_tools('certtool')
    no_interval = '[fanout]\nmin-interval=0\n'
    with h.Deployment(tap, users=(ALICE, BOB), extra=no_interval) as dep:
        dep.import_certs()
        dep.start()
        first = dep.export_der(ALICE)
        conns = [dep.connect() for _ in range(3)]
        subs = [h.Subscription(c, ALICE) for c in conns[:2]] + [h.Subscription(conns[2], BOB)]
        for s in subs:
            final, notify = s.exchange(600)
            tap.ok(final is not None and final.code == 200 and notify is not None,
                   'subscribed to %s' % s.aor)

        # A new certificate for alice from the same CA, imported while the daemon runs.
        for ext in ('.pem', '.key'):
            os.rename(os.path.join(dep.dir, 'alice' + ext),
                      os.path.join(dep.dir, 'alice-old' + ext))
        dep.make_certs()
        rc, out = dep.sipcred('cred', 'import', ALICE, dep.user_pem(ALICE))
        tap.ok(rc == 0, 'sipcred cred import of a new certificate succeeds')
        second = dep.export_der(ALICE)
        tap.ok(second != first, 'the stored certificate changed')
        for i, s in enumerate(subs[:2]):
            n = next_notify(s.conn, s.call_id + '@' + h.HOST)
            tap.ok(n is not None and n.body == second
                   and n.get('subscription-state', '').startswith('active'),
                   'subscriber %d of alice gets a NOTIFY with the new DER' % (i + 1))
        tap.ok(next_notify(subs[2].conn, subs[2].call_id + '@' + h.HOST, timeout=2) is None,
               "bob's subscriber gets no NOTIFY for alice's change")

        rc, out = dep.sipcred('cred', 'revoke', ALICE)
        tap.ok(rc == 0, 'sipcred cred revoke succeeds')
        n = next_notify(subs[0].conn, subs[0].call_id + '@' + h.HOST)
        tap.ok(n is not None and n.body == b'' and n.get('content-type') is None,
               'after the revocation the subscriber gets a NOTIFY with an empty body')
        for c in conns:
            c.close()
        tap.ok(dep.alive() and h.options_ok(dep), 'the daemon still serves')

    with h.Deployment(tap, users=(ALICE,), extra='[fanout]\nmin-interval=5\n') as dep:
        dep.import_certs()
        dep.start()
        # The replacement certificate is made first: the two changes must come quickly.
        for ext in ('.pem', '.key'):
            os.rename(os.path.join(dep.dir, 'alice' + ext),
                      os.path.join(dep.dir, 'alice-old' + ext))
        dep.make_certs()
        conn = dep.connect()
        s = h.Subscription(conn, ALICE)
        final, notify = s.exchange(600)
        tap.ok(final is not None and final.code == 200 and notify is not None,
               'with the interval on, the first NOTIFY comes with the subscription')
        started = time.monotonic()
        rc1, _ = dep.sipcred('cred', 'import', ALICE, dep.user_pem(ALICE))
        rc2, _ = dep.sipcred('cred', 'revoke', ALICE)
        tap.ok(rc1 == 0 and rc2 == 0, 'an import and a revocation right after the subscription')
        dialog = s.call_id + '@' + h.HOST
        n = next_notify(conn, dialog, timeout=10)
        waited = time.monotonic() - started
        tap.ok(n is not None and n.body == b'' and waited >= 3.5,
               'one NOTIFY after the interval carries the newest state (empty body), '
               'after %.1f s' % waited)
        tap.ok(next_notify(conn, dialog, timeout=3) is None,
               'the two changes gave no second NOTIFY')
        conn.close()
        tap.ok(dep.alive(), 'the daemon still runs')


if __name__ == '__main__':
    h.run_tap(main)
