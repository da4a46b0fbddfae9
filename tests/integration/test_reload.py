#!/usr/bin/env python3
"""SIGHUP reloads the TLS certificates and keys without dropping connections: after the domain
certificate is replaced on disk and sipcredd gets SIGHUP, new connections get the new
certificate while a connection made before keeps working; a broken certificate file makes the
reload fail and leaves the running certificate in place. Under a live subscription, a reload
applies new limits to what comes next and keeps the subscription; an invalid file changes
nothing; a setting that needs a restart is named in the log. After `sipcred db rekey`, a reload
takes the new master key."""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402


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


def count_log(dep, text):
    with open(dep.log, 'rb') as f:
        return f.read().count(text.encode())


def stat_value(dep, name):
    # --socket: the configuration file may be the invalid one under test.
    rc, out = h.run([h.binary('sipcred'), 'stats', '--socket',
                     os.path.join(dep.dir, 'state', 'control.sock')])
    for line in out.splitlines():
        if line.rpartition(' ')[0] == name:
            return int(line.rpartition(' ')[2])
    return None


def accepted(dep):
    """Whether a new TLS connection gets a SIP answer (not closed by a limit)."""
    try:
        with dep.connect() as c:
            return options_on(c, dep) == 200
    except (OSError, h.Closed):
        return False


def live_subscriptions(tap):
    """A reload under a live subscription: new limits apply to what comes next, the
    subscription and its connection stay and still get NOTIFYs; an invalid file changes
    nothing and the log says why; a setting that needs a restart is named."""
    alice = 'sip:alice@example.com'
    extra = '\n[fanout]\nmin-interval=0\n'
    with h.Deployment(tap, users=(alice,), extra=extra) as dep:
        dep.start()
        dep.import_certs()
        sub_conn = dep.connect()
        sub = h.Subscription(sub_conn, alice)
        final, notify = sub.exchange(3600)
        tap.ok(final is not None and final.code == 200 and notify is not None,
               'a live certificate subscription before the reload')
        text = open(dep.conf).read()
        with open(dep.conf, 'w') as f:
            f.write(text.replace('[tls]\n', '[tls]\nmax-connections-per-ip=2\n', 1))
        n = count_log(dep, 'reloaded TLS certificates')
        dep.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while count_log(dep, 'reloaded TLS certificates') == n and time.monotonic() < deadline:
            time.sleep(0.1)
        tap.ok(count_log(dep, 'reloaded TLS certificates') == n + 1,
               'SIGHUP reloads the file with a new [tls] max-connections-per-ip')
        tap.ok(accepted(dep), 'a second connection from this address is still allowed')
        # The daemon counts a closed connection until it has seen the close.
        deadline = time.monotonic() + 5
        while stat_value(dep, 'sipcred_connections') != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        with dep.connect() as second:
            tap.ok(options_on(second, dep) == 200 and not accepted(dep),
                   'with two open, a third one is refused: the new limit of 2 applies')
        tap.ok(stat_value(dep, 'sipcred_subscriptions{package="certificate"}') == 1,
               'the subscription is still there after the reload')
        rc, out = dep.sipcred('cred', 'revoke', alice)
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            try:
                msg = sub_conn.read(1.0)
            except TimeoutError:
                continue
            if msg.is_request and msg.method == 'NOTIFY':
                sub_conn.answer(msg)
                got = msg
        tap.ok(got is not None and len(got.body) == 0,
               'and gets the revocation NOTIFY on its old connection')

        with open(dep.conf, 'w') as f:
            f.write(text.replace('[tls]\n', '[tls]\nmax-connections-per-ip=many\n', 1) +
                    '\n')
        n_failed = count_log(dep, 'reload failed')
        dep.proc.send_signal(signal.SIGHUP)
        tap.ok(wait_log(dep, 'reload failed, keeping the running configuration') and
               count_log(dep, 'reload failed') == n_failed + 1 and
               wait_log(dep, 'max-connections-per-ip'),
               'an invalid file is refused; the log names the key and keeps the running '
               'configuration')
        tap.ok(stat_value(dep, 'sipcred_subscriptions{package="certificate"}') == 1,
               'the subscription survives the failed reload too')

        with open(dep.conf, 'w') as f:
            f.write(text.replace('listen=%s:%d' % (h.HOST, dep.port),
                                 'listen=%s:%d' % (h.HOST, dep.port + 1), 1))
        dep.proc.send_signal(signal.SIGHUP)
        tap.ok(wait_log(dep, '[server] listen changed; it takes effect after a restart'),
               'a changed listen address is named as waiting for a restart')
        tap.ok(h.options_ok(dep), 'the daemon still serves on the old address')
        sub_conn.close()


def credential_key(dep, aor, user, password):
    """The PKCS#8 part of the first credential NOTIFY @user gets, or None."""
    with dep.connect() as c:
        s = cc.CredSubscription(c, aor, user, password)
        final, notify = s.subscribe(expires=0)
        if final is None or final.code != 200 or notify is None or not notify.body:
            return None
        parts = cc.parse_multipart(notify.get('content-type'), notify.body)
        return parts.get('application/pkcs8') if parts else None


def master_key_reload(tap):
    """After `sipcred db rekey` the running daemon holds a key that no longer unwraps the
    server-held keys; pointing [store] master-key at the new key and SIGHUP makes it serve
    them again, without a restart."""
    carol = 'sip:carol@example.com'
    extra = '\n[store]\nmaster-key=master.key\n'
    with h.Deployment(tap, extra=extra) as dep:
        rc, _ = dep.sipcred('keygen', os.path.join(dep.dir, 'master.key'))
        rc2, _ = dep.sipcred('keygen', os.path.join(dep.dir, 'master2.key'))
        dep.start()
        cc.add_user(dep, carol, 'carol-secret')
        rc3, out = dep.sipcred('cred', 'generate', carol)
        key1 = credential_key(dep, carol, 'carol', 'carol-secret')
        tap.ok(rc == rc2 == rc3 == 0 and key1 is not None,
               'a server-held credential is served with its key (%s)' % out.strip()[:80])
        rc, out = dep.sipcred('db', 'rekey', os.path.join(dep.dir, 'master2.key'))
        tap.ok(rc == 0 and credential_key(dep, carol, 'carol', 'carol-secret') is None,
               'after db rekey the running daemon cannot unwrap it (rekey: %s)'
               % out.strip().splitlines()[-1:])
        text = open(dep.conf).read()
        with open(dep.conf, 'w') as f:
            f.write(text.replace('master-key=master.key', 'master-key=master2.key'))
        dep.proc.send_signal(signal.SIGHUP)
        tap.ok(wait_log(dep, 'master key') and wait_log(dep, 'in use'),
               'SIGHUP takes the new master key (logged)')
        tap.ok(credential_key(dep, carol, 'carol', 'carol-secret') == key1,
               'and the credential comes with the same private key again, no restart')
        with open(dep.conf, 'w') as f:
            f.write(text)  # the old key: no longer the store's
        dep.proc.send_signal(signal.SIGHUP)
        tap.ok(wait_log(dep, 'the key in use stays') and
               credential_key(dep, carol, 'carol', 'carol-secret') == key1,
               'a reload naming a key that is not the store\'s keeps the one in use')


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
    live_subscriptions(tap)
    master_key_reload(tap)


if __name__ == '__main__':
    h.run_tap(main)
