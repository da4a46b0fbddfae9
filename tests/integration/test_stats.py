#!/usr/bin/env python3
"""The daemon's counters: `sipcred stats` over the UNIX control socket and the Prometheus
endpoint on a loopback address. After known traffic (a live certificate subscription, a
PUBLISH challenged, refused for a wrong password and accepted, a plain-text client that fails
the TLS handshake), each counter shows it, and both outlets agree. The endpoint serves only
GET /metrics; the configuration refuses a metrics address that is not loopback."""

import os
import socket
import stat
import sys
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
BOB_PW = 'bob-stats-secret'


def samples(text):
    """{'name{labels}': int} of the sample lines of Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            name, _, value = line.rpartition(' ')
            out[name] = int(value)
    return out


def http(port, path, method='GET'):
    req = urllib.request.Request('http://%s:%d%s' % (h.HOST, port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get('Content-Type'), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get('Content-Type'), exc.read().decode()


def main(tap):
    metrics_port = h.free_port()
    extra = '\n[fanout]\nmin-interval=0\n[metrics]\nlisten=%s:%d\n' % (h.HOST, metrics_port)
    with h.Deployment(tap, users=(ALICE, BOB), extra=extra) as dep:
        dep.start()
        dep.import_certs()
        cc.add_user(dep, BOB, BOB_PW)
        sock_path = os.path.join(dep.dir, 'state', 'control.sock')
        tap.ok(os.path.exists(sock_path) and stat.S_ISSOCK(os.stat(sock_path).st_mode) and
               (os.stat(sock_path).st_mode & 0o077) == 0,
               'the control socket is in the state directory, mode 0600')

        # Idle: the nua handles the daemon holds before any dialog.
        handles_idle = samples(dep.sipcred('stats')[1]).get('sipcred_nua_handles')
        with dep.connect() as sub_conn, dep.connect() as pub_conn:
            sub = h.Subscription(sub_conn, ALICE)
            first, _ = sub.exchange(3600)
            pub = cc.Publisher(pub_conn, BOB, 'bob', 'wrong-password')
            wrong = pub.publish(b'', expires=0)
            pub.password = BOB_PW
            pub.digest = None
            ok = pub.publish(dep.export_der(BOB), 'application/pkix-cert', expires=3600)
            tap.diag('subscribe: %s; publish wrong password: %s; publish: %s' % (
                getattr(first, 'code', first), wrong.code if wrong else None,
                ok.code if ok else None))
            # A client that speaks no TLS at all.
            with socket.create_connection((h.HOST, dep.port), timeout=5) as raw:
                raw.sendall(b'OPTIONS sip:example.com SIP/2.0\r\n\r\n')
                try:
                    raw.recv(100)
                except OSError:
                    pass

            rc, out = dep.sipcred('stats')
            got = samples(out)
            tap.ok(rc == 0 and not any(line.startswith('#') for line in out.splitlines()),
                   'sipcred stats prints the samples, one per line (%s)' % rc)
            if rc != 0:
                tap.diag(out)
            tap.ok(got.get('sipcred_subscriptions{package="certificate"}') == 1 and
                   got.get('sipcred_subscriptions{package="credential"}') == 0,
                   'subscriptions by package: 1 certificate, 0 credential')
            tap.ok(handles_idle is not None and
                   got.get('sipcred_nua_handles', 0) >= handles_idle + 1,
                   'the live subscription holds a nua handle (%s, idle %s)' % (
                       got.get('sipcred_nua_handles'), handles_idle))
            tap.ok(got.get('sipcred_notifies_sent_total', 0) >= 1 and
                   got.get('sipcred_identity_signed_total', 0) >= 1,
                   'NOTIFYs sent and signed are counted (%s, %s)' % (
                       got.get('sipcred_notifies_sent_total'),
                       got.get('sipcred_identity_signed_total')))
            tap.ok(got.get('sipcred_auth_failures_total', 0) >= 1,
                   'the wrong password is an authentication failure (%s)'
                   % got.get('sipcred_auth_failures_total'))
            tap.ok(got.get('sipcred_answers_total{method="PUBLISH",status="401"}', 0) >= 2 and
                   got.get('sipcred_answers_total{method="PUBLISH",status="200"}') == 1,
                   'PUBLISH results by status: 401s and one 200 (%s)' % {
                       k: v for k, v in got.items() if 'PUBLISH' in k})
            tap.ok(got.get('sipcred_connections', 0) >= 2 and
                   got.get('sipcred_tls_handshakes_total', 0) >= 2,
                   'open connections and completed handshakes (%s, %s)' % (
                       got.get('sipcred_connections'), got.get('sipcred_tls_handshakes_total')))
            tap.ok(got.get('sipcred_tls_handshake_failures_total{reason="tls"}', 0) >= 1,
                   'the plain-text client is a TLS handshake failure')

            status, ctype, text = http(metrics_port, '/metrics')
            scraped = samples(text)
            tap.ok(status == 200 and ctype.startswith('text/plain; version=0.0.4') and
                   '# TYPE sipcred_notifies_sent_total counter' in text,
                   'GET /metrics: 200, Prometheus text with HELP and TYPE (%s %s)'
                   % (status, ctype))
            same = ['sipcred_subscriptions{package="certificate"}',
                    'sipcred_answers_total{method="PUBLISH",status="200"}',
                    'sipcred_auth_failures_total']
            tap.ok(all(scraped.get(k) == got.get(k) for k in same),
                   'the endpoint and sipcred stats agree')
            unsub, _ = sub.exchange(0)
        # The subscription ended (its final NOTIFY answered): its handle is gone. Bounded
        # wait, as nua ends the dialog after the NOTIFY's response.
        handles = None
        for _ in range(50):
            handles = samples(dep.sipcred('stats')[1]).get('sipcred_nua_handles')
            if handles == handles_idle:
                break
            time.sleep(0.1)
        tap.ok(unsub is not None and unsub.code == 200 and handles == handles_idle,
               'after an unsubscribe (%s) nua handles are back at the idle value (%s, idle %s)'
               % (getattr(unsub, 'code', unsub), handles, handles_idle))
        tap.ok(http(metrics_port, '/other')[0] == 404, 'another path: 404')
        tap.ok(http(metrics_port, '/metrics', method='POST')[0] == 405, 'POST: 405')

        conf = os.path.join(dep.dir, 'wide.conf')
        with open(dep.conf) as f:
            text = f.read().replace('listen=%s:%d\n' % (h.HOST, metrics_port),
                                    'listen=0.0.0.0:%d\n' % metrics_port)
        with open(conf, 'w') as f:
            f.write(text)
        rc, out = h.run([h.binary('sipcredd'), '--check-config', '--config', conf])
        tap.ok(rc != 0 and 'not a loopback address' in out,
               'a metrics address that is not loopback is refused (%s)' % out.strip()[-120:])


if __name__ == '__main__':
    h.run_tap(main)
