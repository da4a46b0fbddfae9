#!/usr/bin/env python3
"""Our own client commands end to end against the daemon over real TLS: Bob publishes a
generated credential (digest, encrypted PKCS#8), Alice fetches his certificate and the
client verifies the NOTIFY's Identity against the certificate behind Identity-Info, Bob's
second device retrieves and decrypts the key (a wrong passphrase is refused with its own
status), and a revocation reaches `fetch --watch`. The local cache answers a second fetch with
no server, for a day by default, and forgets a revoked certificate. A relay that terminates TLS with the
domain certificate (so the server check passes) changes one byte of the certificate in the
NOTIFY, and fetch refuses it. Server verification failures: a wrong --tls-name and an
unrelated CA each give their own exit status; a host certificate from `sipcred ca` passes, and
fails with its own status once the CA's CRL revokes it."""

import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
BOB_PW = 'bob-client-secret'
PASSPHRASE = 'correct horse battery staple'

EXIT_TLS_NAME, EXIT_TLS_TRUST, EXIT_TLS_REVOKED = 4, 5, 7
EXIT_NOTIFY, EXIT_PASSPHRASE = 8, 10


def write(dep, name, text):
    path = os.path.join(dep.dir, name)
    with open(path, 'w') as f:
        f.write(text + '\n')
    return path


def client(dep, *args, server_port=None, timeout=60, cache=False):
    """Our client against the daemon; fetch skips the local cache unless @cache."""
    argv = [h.binary('sipcred')] + list(args) + [
        '--server', '%s:%d' % (h.HOST, server_port or dep.port), '--ca', dep.ca]
    if args[0] == 'fetch' and not cache:
        argv += ['--cache-lifetime', '0']
    return h.run(argv, timeout=timeout)


def cache_file(aor):
    return os.path.join(os.environ['XDG_CACHE_HOME'], 'sipcred', 'certificates',
                        aor.replace(':', '_') + '.der')


class TlsRelay:
    """Terminates the client's TLS with the domain certificate and forwards to the daemon
    over TLS; @rewrite changes each whole server message. Bounded by max_s."""

    def __init__(self, dep, rewrite, max_s=30.0):
        self.dep = dep
        self.rewrite = rewrite
        self.max_s = max_s
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((h.HOST, 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.pending = b''
        self.changed = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        end = time.monotonic() + self.max_s
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(os.path.join(self.dep.dir, self.dep.domain + '.pem'),
                             os.path.join(self.dep.dir, self.dep.domain + '.key'))
        cctx = ssl.create_default_context(cafile=self.dep.ca)
        try:
            self.lsock.settimeout(self.max_s)
            raw, _ = self.lsock.accept()
            raw.settimeout(5)
            client = sctx.wrap_socket(raw, server_side=True)
            up_raw = socket.create_connection((h.HOST, self.dep.port), timeout=5)
            upstream = cctx.wrap_socket(up_raw, server_hostname=self.dep.domain)
            with client, upstream:
                client.setblocking(False)
                upstream.setblocking(False)
                while not self._stop.is_set() and time.monotonic() < end:
                    ready, _, _ = select.select([client, upstream], [], [], 0.2)
                    for s in ready:
                        try:
                            data = s.recv(65536)
                        except ssl.SSLWantReadError:
                            continue
                        if not data:
                            return
                        if s is client:
                            upstream.sendall(data)
                        else:
                            self._from_server(data, client)
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.lsock.close()

    def _from_server(self, data, client):
        self.pending += data
        for _ in range(1000):
            msg, rest = h.split_message(self.pending)
            if msg is None:
                return
            whole = self.pending[:len(self.pending) - len(rest)]
            out = self.rewrite(whole)
            if out != whole:
                self.changed += 1
            client.setblocking(True)
            client.sendall(out)
            client.setblocking(False)
            self.pending = rest

    def stop(self):
        self._stop.set()
        self.thread.join(5)


def flip_cert_byte(whole):
    """One byte in the middle of a NOTIFY's certificate body, inverted."""
    if not whole.startswith(b'NOTIFY '):
        return whole
    head, sep, body = whole.partition(b'\r\n\r\n')
    if len(body) < 100:
        return whole
    i = len(body) // 2
    return head + sep + body[:i] + bytes([body[i] ^ 0xff]) + body[i + 1:]


def main(tap):
    h.require_tools('certtool')
    # No minimum NOTIFY interval (RFC 6072 6.10's 60 s default): the revocation is sent at
    # once, so the watcher sees it within the test.
    with h.Deployment(tap, users=(ALICE, BOB), extra='\n[fanout]\nmin-interval=0\n') as dep:
        dep.start()
        cc.add_user(dep, BOB, BOB_PW)
        pw = write(dep, 'bob.pw', BOB_PW)
        phrase = write(dep, 'bob.phrase', PASSPHRASE)
        wrong = write(dep, 'wrong.phrase', 'not the passphrase')
        etag = os.path.join(dep.dir, 'bob.etag')

        # 1. publish (Bob): generated key and certificate, encrypted PKCS#8, digest.
        rc, out = client(dep, 'publish', BOB, '--password-file', pw, '--passphrase-file',
                         phrase, '--etag-file', etag)
        tap.ok(rc == 0 and 'published the credential' in out,
               'publish: Bob publishes a generated credential with digest (%s)' % rc)
        if rc != 0:
            tap.diag(out)
        stored_etag = open(etag).read().strip() if os.path.exists(etag) else ''
        tap.ok(stored_etag != '' and stored_etag in out,
               'publish keeps the SIP-ETag in the state file (%s)' % stored_etag)
        rc, shown = dep.sipcred('cred', 'show', BOB)
        tap.ok(rc == 0 and 'key: user-encrypted' in shown and 'PBES2' in shown,
               'the daemon stored a user-encrypted PBES2 key')
        for line in shown.splitlines():
            if line.startswith('key-encryption'):
                tap.diag(line)
        rc, out = client(dep, 'publish', BOB, '--password-file', wrong, '--passphrase-file',
                         phrase, '--etag-file', etag)
        tap.ok(rc == 9 and '401' in out, 'publish with a wrong password: status 9 (%s)' % rc)

        # 2. fetch (Alice): From, Identity against Identity-Info, validity.
        der_path = os.path.join(dep.dir, 'bob.der')
        rc, out = client(dep, 'fetch', BOB, '--der', der_path)
        got = open(der_path, 'rb').read() if os.path.exists(der_path) else b''
        tap.ok(rc == 0 and got == dep.export_der(BOB),
               'fetch: the certificate Bob published, written as DER (%s)' % rc)
        if rc != 0:
            tap.diag(out)
        rc, out = client(dep, 'fetch', BOB)
        tap.ok(rc == 0 and out.startswith('-----BEGIN CERTIFICATE-----'),
               'fetch prints PEM by default')

        # The local cache: kept after a fetch, answers without a server for a day.
        cached = cache_file(BOB)
        rc, out = client(dep, 'fetch', BOB, cache=True)
        kept = open(cached, 'rb').read() if os.path.exists(cached) else b''
        tap.ok(rc == 0 and kept == dep.export_der(BOB) and
               (os.stat(cached).st_mode & 0o077) == 0,
               'fetch keeps the accepted certificate in the cache, mode 0600 (%s)' % rc)
        closed = h.free_port()
        rc, out = client(dep, 'fetch', BOB, server_port=closed, cache=True)
        tap.ok(rc == 0 and 'from the local cache' in out and '-----BEGIN CERTIFICATE-----' in out,
               'a second fetch is answered from the cache, no server needed (%s)' % rc)
        two_days_ago = time.time() - 2 * 86400
        os.utime(cached, (two_days_ago, two_days_ago))
        rc, out = client(dep, 'fetch', BOB, server_port=closed, cache=True)
        tap.ok(rc == 3 and 'from the local cache' not in out,
               'an entry older than the default lifetime (one day) is not used (%s)' % rc)
        rc, out = client(dep, 'fetch', BOB, '--cache-lifetime', str(3 * 86400),
                         server_port=closed, cache=True)
        tap.ok(rc == 0 and 'from the local cache' in out,
               '--cache-lifetime sets the lifetime (%s)' % rc)

        # 3. retrieve (Bob's second device) decrypts.
        key_out = os.path.join(dep.dir, 'bob-key.pem')
        rc, out = client(dep, 'retrieve', BOB, '--password-file', pw, '--passphrase-file',
                         phrase, '--key-out', key_out)
        key = open(key_out).read() if os.path.exists(key_out) else ''
        tap.ok(rc == 0 and key.startswith('-----BEGIN PRIVATE KEY-----') and
               'private key decrypted' in out,
               'retrieve decrypts the key, which matches the certificate (%s)' % rc)
        if rc != 0:
            tap.diag(out)
        tap.ok(os.path.exists(key_out) and (os.stat(key_out).st_mode & 0o077) == 0,
               'the decrypted key is written mode 0600')
        rc, out = client(dep, 'retrieve', BOB, '--password-file', pw, '--passphrase-file',
                         wrong)
        tap.ok(rc == EXIT_PASSPHRASE and 'wrong passphrase' in out and '437' in out,
               'retrieve with a wrong passphrase: status %d and a clear message (%s)'
               % (EXIT_PASSPHRASE, rc))

        # Server verification (sec-flows 7 tests 8 and 9) on the real connection.
        rc, out = client(dep, 'fetch', BOB, '--tls-name', 'other.example.net')
        tap.ok(rc == EXIT_TLS_NAME and 'does not name other.example.net' in out,
               'a server name not in the certificate: status %d (%s)' % (EXIT_TLS_NAME, rc))
        other_ca = os.path.join(dep.dir, 'other-ca')
        h.run([h.binary('sipcred'), 'ca', 'init', other_ca])
        rc, out = h.run([h.binary('sipcred'), 'fetch', BOB, '--server',
                         '%s:%d' % (h.HOST, dep.port), '--ca',
                         os.path.join(other_ca, 'ca.pem'), '--cache-lifetime', '0'])
        tap.ok(rc == EXIT_TLS_TRUST and 'trust anchor' in out,
               'a server chain that does not end at --ca: status %d (%s)' % (EXIT_TLS_TRUST, rc))

        # One byte of the certificate changed on the way: Identity no longer verifies.
        relay = TlsRelay(dep, flip_cert_byte)
        rc, out = client(dep, 'fetch', BOB, server_port=relay.port, timeout=30)
        relay.stop()
        tap.ok(relay.changed >= 1 and rc == EXIT_NOTIFY and 'Identity' in out,
               'a NOTIFY with one certificate byte changed is rejected: status %d (%s, %d '
               'changed)' % (EXIT_NOTIFY, rc, relay.changed))
        if rc != EXIT_NOTIFY:
            tap.diag(out)

        # 4. revoke, which fetch --watch reports.
        watch = h.spawn([h.binary('sipcred'), 'fetch', BOB, '--watch', '--timeout', '12',
                         '--server', '%s:%d' % (h.HOST, dep.port), '--ca', dep.ca],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen = b''
        end = time.monotonic() + 10
        while b'-----END CERTIFICATE-----' not in seen and time.monotonic() < end:
            ready, _, _ = select.select([watch.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(watch.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
        tap.ok(b'-----END CERTIFICATE-----' in seen, 'fetch --watch prints the certificate')
        rc, out = client(dep, 'revoke', BOB, '--password-file', pw, '--etag-file', etag)
        tap.ok(rc == 0 and 'revoked' in out, 'revoke: the empty PUBLISH with Expires: 0 (%s)'
               % rc)
        tap.ok(not os.path.exists(etag), 'revoke forgets the ETag')
        try:
            rest, _ = watch.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            h.stop(watch)
            rest = b''
        seen += rest or b''
        text = seen.decode('utf-8', 'replace')
        tap.ok('# revoked: sip:bob@example.com has no certificate' in text and
               watch.returncode == 0,
               'fetch --watch reports the revocation (%s)' % watch.returncode)
        if '# revoked' not in text:
            tap.diag(text[-2000:])
        tap.ok(not os.path.exists(cached), 'the revocation removes the cached certificate')
        rc, out = client(dep, 'fetch', BOB)
        tap.ok(rc == 11 and 'has no certificate' in out,
               'fetch after the revocation: no certificate, status 11 (%s)' % rc)


def revoked_server(tap):
    """sec-flows 7 tests 6 and 11 with a host certificate from `sipcred ca`: accepted
    without the CRL, refused with its own status once the CA's CRL lists it."""
    with h.Deployment(tap, users=(ALICE,)) as dep:
        cadir = os.path.join(dep.dir, 'testca')
        sipcred = h.binary('sipcred')
        for args in (['ca', 'init', cadir],
                     ['ca', 'issue', 'host', dep.domain, '--ca', cadir, '--out', dep.dir,
                      '--force']):
            rc, out = h.run([sipcred] + args, timeout=120)
            if rc != 0:
                raise RuntimeError('sipcred %s failed:\n%s' % (' '.join(args), out))
        dep.import_certs()
        dep.start()
        # Alice's certificate comes from the harness CA, the host's from sipcred ca: fetch
        # checks both chains, so both are anchors.
        anchors = os.path.join(dep.dir, 'anchors.pem')
        with open(anchors, 'w') as f:
            for path in (os.path.join(cadir, 'ca.pem'), dep.ca):
                with open(path) as src:
                    f.write(src.read())
        argv = [sipcred, 'fetch', ALICE, '--server', '%s:%d' % (h.HOST, dep.port), '--ca',
                anchors, '--cache-lifetime', '0']
        rc, out = h.run(argv)
        tap.ok(rc == 0, 'a host certificate from sipcred ca passes server verification (%s)'
               % rc)
        if rc != 0:
            tap.diag(out)
        h.run([sipcred, 'ca', 'revoke', dep.domain, '--ca', cadir])
        h.run([sipcred, 'ca', 'crl', '--ca', cadir])
        rc, out = h.run(argv + ['--crl', os.path.join(cadir, 'ca.crl')])
        tap.ok(rc == EXIT_TLS_REVOKED and 'revoked' in out,
               'once the CA revokes it, --crl makes the server fail: status %d (%s)'
               % (EXIT_TLS_REVOKED, rc))
        if rc != EXIT_TLS_REVOKED:
            tap.diag(out)


def all_parts(tap):
    main(tap)
    revoked_server(tap)


if __name__ == '__main__':
    h.run_tap(all_parts)
