#!/usr/bin/env python3
"""A full store refuses writes precisely and keeps serving reads.

1. The map at [store] max-map-size (works as any user): the store is filled through the CLI
   with certificates of decreasing size until it refuses one. Then a PUBLISH gets
   "503 Store full" with Retry-After, so does a REGISTER, and so does the CLI (exit 1, "full");
   the refused PUBLISH left nothing (the old certificate is still what the store holds and
   serves); a SUBSCRIBE still gets alice's certificate, digest authentication still works.
   Revoking a filler credential with the CLI frees room: the next PUBLISH gets 200. Filled
   again, a raised max-map-size and a SIGHUP let a PUBLISH through without a restart.
   --check-config refuses a max-map-size below map-size, naming the key and line.
2. The file system full (only as root, with unshare): sipcredd runs in a private mount
   namespace whose state directory is a small tmpfs; the CLI runs in the same namespace
   (nsenter). Filled until the file system refuses, the same answers as in 1, the store still
   passes "sipcred db check", and the daemon stays up.

Certificates are made with openssl; a big nsComment extension makes them big."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
import regclient as rc_  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
CAROL = 'sip:carol@example.com'
PW = {BOB: 'bob-secret', CAROL: 'carol-secret'}
MIB = 1024 * 1024
# Filler certificates: from big to small, so that little room is left at the end.
FILL_SIZES = (200000, 50000, 12000, 3000, 0)
FILL_TRIES = 80  # per size; the store is full long before
# A refused write is bigger than the few pages a full store may have left.
BIG = 20000


class Certs:
    """Self-signed certificates made with openssl, one key for all."""

    def __init__(self, d):
        self.dir = d
        self.n = 0
        self.key = os.path.join(d, 'fill.key')
        rc, out = h.run(['openssl', 'genpkey', '-algorithm', 'EC', '-pkeyopt',
                         'ec_paramgen_curve:P-256', '-out', self.key])
        if rc != 0:
            raise RuntimeError(out)

    def make(self, aor, pad=0):
        """(path, DER) of a certificate for @aor, about @pad bytes bigger than plain."""
        self.n += 1
        cnf = os.path.join(self.dir, 'c%d.cnf' % self.n)
        with open(cnf, 'w') as f:
            f.write('[req]\ndistinguished_name=dn\n[dn]\n[ext]\n'
                    'subjectAltName=URI:%s\nkeyUsage=digitalSignature,keyEncipherment\n' % aor)
            if pad:
                f.write('nsComment="%s"\n' % ('%d-' % self.n + 'x' * pad))
        path = os.path.join(self.dir, 'c%d.der' % self.n)
        rc, out = h.run(['openssl', 'req', '-x509', '-new', '-key', self.key, '-subj',
                         '/CN=' + aor.split(':', 1)[1], '-days', '30', '-config', cnf,
                         '-extensions', 'ext', '-outform', 'DER', '-out', path])
        if rc != 0:
            raise RuntimeError(out)
        with open(path, 'rb') as f:
            return path, f.read()


def fill(dep, certs, prefix):
    """Imports filler certificates through the CLI until the store refuses one at every
    size. Returns (AORs stored, output of the last refusal)."""
    stored, refusal = [], ''
    for size in FILL_SIZES:
        for _ in range(FILL_TRIES):
            aor = 'sip:%s%d-%d@example.com' % (prefix, size, len(stored))
            path, _ = certs.make(aor, size)
            rc, out = dep.sipcred('cred', 'import', aor, '--cert', path)
            if rc != 0:
                refusal = out
                break
            stored.append(aor)
    return stored, refusal


def publish(dep, der):
    """Bob publishes @der on a new connection (answering the digest challenge)."""
    with dep.connect() as c:
        return cc.Publisher(c, BOB, 'bob', PW[BOB]).publish(der, 'application/pkix-cert',
                                                             expires=3600)


serves = h.serves


def register(dep):
    """Carol registers four long contacts (a record of over 12 KB)."""
    ua = rc_.Ua(dep, CAROL, PW[CAROL])
    try:
        contacts = [ua.contact('c%d-%s' % (i, 'x' * 3000)) for i in range(4)]
        return ua.register(contacts=contacts, expires=600)
    finally:
        ua.close()


def store_full_answer(resp):
    return (resp is not None and resp.code == 503 and resp.reason == 'Store full'
            and (resp.get('retry-after') or '').strip().isdigit())


def desc(resp):
    if resp is None:
        return 'no answer'
    return '%s %s, Retry-After %s' % (resp.code, resp.reason, resp.get('retry-after'))


def check_full(tap, dep, certs, case, bob_der, alice_der):
    """The answers of a full store; returns nothing, reports through @tap."""
    _, new_der = certs.make(BOB, BIG)
    resp = publish(dep, new_der)
    tap.ok(store_full_answer(resp), '%s: PUBLISH gets 503 Store full with Retry-After (%s)'
           % (case, desc(resp)))
    tap.ok(dep.export_der(BOB) == bob_der,
           '%s: the refused PUBLISH changed nothing: the store holds the old certificate' % case)
    tap.ok(serves(dep, BOB, bob_der),
           '%s: a SUBSCRIBE to bob still gets 200 and the old certificate' % case)
    tap.ok(serves(dep, ALICE, alice_der),
           '%s: a SUBSCRIBE to alice still gets 200 and her certificate' % case)
    resp = register(dep)
    tap.ok(store_full_answer(resp), '%s: REGISTER (digest checked) gets 503 Store full (%s)'
           % (case, desc(resp)))
    path, _ = certs.make(CAROL, BIG)
    rc, out = dep.sipcred('cred', 'import', CAROL, '--cert', path)
    tap.ok(rc == 1 and 'full' in out, '%s: the CLI refuses an import, saying the store is full '
           '(exit %s: %s)' % (case, rc, out.strip()[-200:]))
    tap.ok(dep.alive(), '%s: the daemon is still running' % case)


def wait_log(dep, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in h.tail(dep.log, 400):
            return True
        time.sleep(0.1)
    return False


def check_config(tap):
    with h.Deployment(tap, extra='[store]\nmap-size=2097152\nmax-map-size=1048576\n') as dep:
        line = open(dep.conf).read().split('\n').index('max-map-size=1048576') + 1
        rc, out = h.run([h.binary('sipcredd'), '--check-config', '--config', dep.conf])
        tap.ok(rc == 1 and '%s:%d:' % (dep.conf, line) in out and '[store] max-map-size' in out
               and 'smaller than map-size' in out,
               '--check-config refuses max-map-size below map-size, naming file:line and key '
               '(%s)' % out.strip())


def map_cap(tap):
    extra = '\n[store]\nmap-size=%d\nmax-map-size=%d\n' % (MIB, MIB)
    with h.Deployment(tap, users=(ALICE,), extra=extra) as dep:
        certs = Certs(dep.dir)
        dep.import_certs()
        cc.add_user(dep, BOB, PW[BOB])
        cc.add_user(dep, CAROL, PW[CAROL])
        dep.start()
        alice_der = dep.export_der(ALICE)
        _, bob_der = certs.make(BOB)
        resp = publish(dep, bob_der)
        tap.ok(resp.code == 200, 'map cap: bob publishes while there is room (%s)' % desc(resp))

        stored, refusal = fill(dep, certs, 'fill')
        tap.ok(len(stored) > 2 and 'full' in refusal,
               'map cap: the CLI fills the store until it is full (%d certificates; %s)'
               % (len(stored), refusal.strip()[-160:]))
        check_full(tap, dep, certs, 'map cap', bob_der, alice_der)

        # Room again: revoke the biggest filler.
        rc, out = dep.sipcred('cred', 'revoke', stored[0])
        tap.ok(rc == 0, 'map cap: the CLI revokes a credential of a full store (%s)'
               % out.strip()[-160:])
        _, bob_der2 = certs.make(BOB, BIG)
        resp = publish(dep, bob_der2)
        tap.ok(resp.code == 200 and serves(dep, BOB, bob_der2),
               'map cap: after the revocation bob publishes again, and it is served (%s)'
               % desc(resp))

        # Full again; then a raised cap and SIGHUP, no restart.
        stored2, refusal = fill(dep, certs, 'more')
        _, bob_der3 = certs.make(BOB, BIG)
        resp = publish(dep, bob_der3)
        tap.ok(store_full_answer(resp), 'map cap: filled again, PUBLISH gets 503 Store full '
               '(%s)' % desc(resp))
        with open(dep.conf) as f:
            text = f.read()
        with open(dep.conf, 'w') as f:
            f.write(text.replace('max-map-size=%d' % MIB, 'max-map-size=%d' % (4 * MIB)))
        pid = dep.proc.pid
        os.kill(pid, signal.SIGHUP)
        tap.ok(wait_log(dep, 'reloaded', 10), 'map cap: sipcredd reloads on SIGHUP')
        resp = publish(dep, bob_der3)
        tap.ok(resp.code == 200 and serves(dep, BOB, bob_der3),
               'map cap: with max-map-size raised and SIGHUP, PUBLISH gets 200 and the new '
               'certificate is served (%s)' % desc(resp))
        tap.ok(dep.alive() and dep.proc.pid == pid, 'map cap: the same daemon ran throughout')


def disk_full(tap):
    why = None
    if os.geteuid() != 0:
        why = 'needs root for a tmpfs in a private mount namespace'
    elif not (shutil.which('unshare') and shutil.which('nsenter')):
        why = 'needs unshare and nsenter (util-linux)'
    else:
        # Root without CAP_SYS_ADMIN (some containers) cannot mount.
        probe = tempfile.mkdtemp(prefix='sipcred-mnt-')
        rc, out = h.run(['unshare', '--mount', '--propagation', 'private', 'mount', '-t',
                         'tmpfs', '-o', 'size=64k', 'sipcred-probe', probe], timeout=30)
        os.rmdir(probe)
        if rc != 0:
            why = 'cannot mount a tmpfs in a private mount namespace here: ' + out.strip()
    if why:
        for desc_ in ('disk full: PUBLISH gets 503 Store full',
                      'disk full: the store passes db check and the daemon is up'):
            tap.skip(desc_, why)
        return

    with h.Deployment(tap, users=(ALICE,)) as dep:
        certs = Certs(dep.dir)
        state = os.path.join(dep.dir, 'state')
        os.mkdir(state, 0o700)
        dep.logf = open(dep.log, 'ab')
        # unshare and sh exec: the PID is sipcredd's. The tmpfs exists only in its namespace.
        dep.proc = h.spawn(['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                            'mount -t tmpfs -o size=2m,mode=0700 sipcred-full "$0" && '
                            'exec "$@"', state, h.binary('sipcredd'), '--config', dep.conf,
                            '--verbose'],
                           stdin=subprocess.DEVNULL, stdout=dep.logf, stderr=dep.logf)
        if not h.wait_port(dep.port, 15, dep.proc):
            tap.diag(h.tail(dep.log))
            raise RuntimeError('sipcredd in its mount namespace did not start')
        pid = dep.proc.pid

        def sipcred_in_ns(*args, timeout=30):
            return h.run(['nsenter', '--target', str(pid), '--mount', '--',
                          h.binary('sipcred'), '--config', dep.conf] + list(args),
                         timeout=timeout)
        dep.sipcred = sipcred_in_ns
        rc, out = h.run(['nsenter', '--target', str(pid), '--mount', '--', 'df', '-k', state])
        tap.ok(rc == 0 and 'sipcred-full' in out, 'disk full: the state directory is the '
               'tmpfs in the daemon\'s namespace (%s)' % out.strip().replace('\n', ' | '))
        dep.import_certs()
        cc.add_user(dep, BOB, PW[BOB])
        cc.add_user(dep, CAROL, PW[CAROL])
        alice_der = dep.export_der(ALICE)
        _, bob_der = certs.make(BOB)
        resp = publish(dep, bob_der)
        tap.ok(resp.code == 200, 'disk full: bob publishes while there is room (%s)'
               % desc(resp))

        stored, refusal = fill(dep, certs, 'fill')
        tap.ok(len(stored) > 2 and ('full' in refusal or 'No space' in refusal),
               'disk full: the CLI fills the file system until it refuses (%d certificates; %s)'
               % (len(stored), refusal.strip()[-160:]))
        check_full(tap, dep, certs, 'disk full', bob_der, alice_der)
        rc, out = dep.sipcred('db', 'check')
        tap.ok(rc == 0, 'disk full: the store passes sipcred db check (%s)'
               % out.strip()[-200:])
        rc, out = dep.sipcred('cred', 'revoke', stored[0])
        _, bob_der2 = certs.make(BOB, BIG)
        resp = publish(dep, bob_der2)
        tap.ok(rc == 0 and resp.code == 200 and serves(dep, BOB, bob_der2),
               'disk full: after the CLI revokes a filler, bob publishes again (%s; %s)'
               % (out.strip()[-120:], desc(resp)))
        tap.ok(dep.alive() and dep.proc.pid == pid, 'disk full: the same daemon ran throughout')


def main(tap):
    h.require_tools('certtool', 'openssl')
    check_config(tap)
    map_cap(tap)
    disk_full(tap)


if __name__ == '__main__':
    h.run_tap(main)
