#!/usr/bin/env python3
"""The certificate event package over real TLS, as a subscriber sees it: alice's NOTIFY
carries her stored DER, an unknown user of a served domain gets an empty body, a wrong event
gets 489, an AOR outside the served domains 404, unsubscribing gets the final NOTIFY, and
the expiry limits and Accept are honoured."""

import re
import sys

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

ALICE = 'sip:alice@example.com'


def state(notify):
    return (notify.get('subscription-state', '') if notify else '').strip().lower()


def expires_of(notify):
    m = re.search(r'expires=(\d+)', state(notify))
    return int(m.group(1)) if m else None


def main(tap):
    h.require_tools('certtool')
    with h.Deployment(tap, users=(ALICE,),
                      certificate={'default-expires': 7200, 'max-expires': 10800,
                                   'min-expires': 60}) as dep:
        dep.import_certs()
        dep.start()
        der = dep.export_der(ALICE)

        with dep.connect() as c:
            sub = h.Subscription(c, ALICE)
            final, notify = sub.exchange(600)
            tap.ok(final is not None and final.code == 200, 'SUBSCRIBE to alice gets 200')
            tap.ok(notify is not None, 'a NOTIFY follows')
            if notify is None:
                return
            tap.ok(notify.body == der and len(der) > 0,
                   'the NOTIFY body is the stored DER (%d bytes)' % len(der))
            tap.ok(notify.get('content-type', '').lower() == 'application/pkix-cert',
                   'Content-Type: application/pkix-cert')
            tap.ok(notify.get('content-disposition', '').lower().startswith('signal'),
                   'Content-Disposition: signal')
            tap.ok(notify.get('event', '').lower().startswith('certificate'),
                   'Event: certificate')
            tap.ok(state(notify).startswith('active') and expires_of(notify) is not None
                   and 0 < expires_of(notify) <= 600,
                   'Subscription-State: active;expires=N (N <= 600): ' + state(notify))
            tap.ok(h.uri_of(notify.get('from')) == ALICE,
                   'the NOTIFY From is the To of the SUBSCRIBE')
            tap.ok(final.get('expires', '').strip() == '600', 'Expires: 600 granted')

            final, notify = sub.exchange(0)
            tap.ok(final is not None and final.code == 200, 'unsubscribe (Expires: 0) gets 200')
            tap.ok(notify is not None and state(notify).startswith('terminated'),
                   'and a final NOTIFY with Subscription-State: terminated: ' + state(notify))

        with dep.connect() as c:
            sub = h.Subscription(c, 'sip:nobody@example.com')
            final, notify = sub.exchange(300)
            tap.ok(final is not None and final.code == 200,
                   'an unknown user of a served domain gets 200')
            tap.ok(notify is not None and notify.body == b''
                   and notify.get('content-length', '').strip() == '0',
                   'and a NOTIFY with an empty body')
            tap.ok(notify is not None and state(notify).startswith('active'),
                   'that NOTIFY is active: ' + state(notify))

        with dep.connect() as c:
            final, _ = h.Subscription(c, ALICE, event='presence').exchange(300, False)
            tap.ok(final is not None and final.code == 489 and final.start_line_sane(),
                   'Event: presence gets 489 (%s)' % (final.start if final else 'no answer'))
            final, _ = h.Subscription(c, 'sip:alice@example.org').exchange(300, False)
            tap.ok(final is not None and final.code == 404 and final.start_line_sane(),
                   'an AOR outside the served domains gets 404 (%s)'
                   % (final.start if final else 'no answer'))
            final, _ = h.Subscription(c, ALICE, accept='text/plain').exchange(300, False)
            tap.ok(final is not None and final.code == 406 and final.start_line_sane(),
                   'Accept without application/pkix-cert gets 406 (%s)'
                   % (final.start if final else 'no answer'))
            final, _ = h.Subscription(c, ALICE).exchange(30, False)
            tap.ok(final is not None and final.code == 423 and final.start_line_sane()
                   and final.get('min-expires', '').strip() == '60',
                   'Expires below min-expires gets 423 with Min-Expires: 60 (%s)'
                   % (final.start if final else 'no answer'))
            final, notify = h.Subscription(c, ALICE).exchange(None)
            granted = final.get('expires', '').strip() if final else ''
            tap.ok(final is not None and final.code == 200 and granted == '7200'
                   and expires_of(notify) is not None and 7190 <= expires_of(notify) <= 7200,
                   'no Expires gets default-expires, 7200 (got %r)' % granted)
            final, notify = h.Subscription(c, ALICE).exchange(20000)
            granted = final.get('expires', '').strip() if final else ''
            tap.ok(final is not None and final.code == 200 and granted == '10800'
                   and expires_of(notify) is not None and 10790 <= expires_of(notify) <= 10800,
                   'Expires 20000 above max-expires is granted as 10800 (got %r)' % granted)

        tap.ok(h.options_ok(dep), 'the daemon still answers OPTIONS with 200')
        tap.ok(dep.stop() == 0, 'sipcredd exits 0 on SIGTERM')


h.run_tap(main)
