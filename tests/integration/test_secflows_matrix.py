#!/usr/bin/env python3
"""The eleven test scenarios of sec-flows section 7, end to end, with every certificate made
by `sipcred ca` at test time.

The daemon serves example.com with a host certificate from the test CA, and a second domain
whose certificate has no dNSName, only a CN. Bob's certificate reaches `sipcred fetch` the
way RFC 6072 delivers it: published to the daemon, then a signed NOTIFY.

S/MIME (the certificate fetch obtains for the AOR):
  1 good: CA-issued, URI SAN of the AOR, valid, not revoked    -> 0
  2 the AOR is not in a subjectAltName URI                      -> 12
  3 the chain does not end at a --ca anchor (another CA)        -> 13
  4 outside its validity (the client's clock past notAfter)     -> 14
  5 revoked by the CA's CRL                                     -> 15
TLS (the client's verification of the server):
  6 good: the name is a subjectAltName dNSName                  -> 0
  7 good: no dNSName at all, the name is the Subject CN         -> 0
  8 the name is neither                                         -> 4
  9 the chain does not end at a --ca anchor                     -> 5
 10 expired host certificate                                    -> 6
 11 host certificate revoked by the CA's CRL                    -> 7

Test 4 needs the certificate to expire between the PUBLISH (the daemon refuses expired
certificates, RFC 6072 7.9) and the fetch: the CA issues it under faketime so that it expires
150 s from now, and fetch runs under faketime 300 s ahead (still inside the 600 s Identity
Date window). Test 10 only needs a handshake with an expired certificate: a plain Python TLS
server presents it, so the daemon keeps valid certificates for the other tests."""

import os
import shutil
import socket
import ssl
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402

BOB = 'sip:bob@example.com'
BOB_PW = 'bob-matrix-secret'
CN_ONLY = 'cn-only.example.net'

OK = 0
EXIT_TLS_NAME, EXIT_TLS_TRUST, EXIT_TLS_TIME, EXIT_TLS_REVOKED = 4, 5, 6, 7
EXIT_CERT_PROFILE, EXIT_CERT_TRUST, EXIT_CERT_TIME, EXIT_CERT_REVOKED = 12, 13, 14, 15


class Matrix:
    def __init__(self, tap, dep):
        self.tap = tap
        self.dep = dep
        self.sipcred = h.binary('sipcred')
        self.cadir = os.path.join(dep.dir, 'testca')
        self.ca_pem = os.path.join(self.cadir, 'ca.pem')
        self.crl = os.path.join(self.cadir, 'ca.crl')
        self.pw = os.path.join(dep.dir, 'bob.pw')
        with open(self.pw, 'w') as f:
            f.write(BOB_PW + '\n')

    def ca(self, *args, wrapper=()):
        rc, out = h.run(list(wrapper) + [self.sipcred, 'ca'] + list(args), timeout=120)
        if rc != 0:
            raise RuntimeError('sipcred ca %s failed (%s):\n%s' % (' '.join(args), rc, out))
        return out

    def client(self, *args, ca=None, wrapper=(), port=None):
        argv = list(wrapper) + [self.sipcred] + list(args) + [
            '--server', '%s:%d' % (h.HOST, port or self.dep.port), '--ca', ca or self.ca_pem]
        if args[0] == 'fetch':
            argv += ['--cache-lifetime', '0']  # every fetch asks the server
        return h.run(argv, timeout=60)

    def publish(self, cert, key):
        """Bob publishes @cert with our CLI (it checks the certificate names Bob)."""
        rc, out = self.client('publish', BOB, '--cert', cert, '--key', key, '--cert-only',
                              '--password-file', self.pw, '--etag-file',
                              os.path.join(self.dep.dir, 'bob.etag'))
        if rc != 0:
            raise RuntimeError('publish %s failed (%s):\n%s' % (cert, rc, out))

    def expect(self, rc, out, want, what, mentions=None):
        good = rc == want and (mentions is None or mentions in out)
        self.tap.ok(good, '%s: status %d (got %s)' % (what, want, rc))
        if not good:
            self.tap.diag(out[-1500:])


class TlsOnce:
    """Accepts TLS connections with one certificate for max_s seconds; speaks no SIP (the
    client is expected to refuse the certificate during the handshake)."""

    def __init__(self, cert, key, max_s=20.0):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((h.HOST, 0))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self._stop = threading.Event()
        self._end = time.monotonic() + max_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set() and time.monotonic() < self._end:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    self.handshakes += 1
                    conn.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def cn_only_certificate(m, out_dir):
    """A host certificate from the test CA with the host name only in the Subject CN (no
    subjectAltName): `sipcred ca issue host` always writes a dNSName, so certtool signs this
    one with the CA's key."""
    key = os.path.join(out_dir, CN_ONLY + '.key')
    pem = os.path.join(out_dir, CN_ONLY + '.pem')
    tmpl = os.path.join(out_dir, 'cn-only.tmpl')
    with open(tmpl, 'w') as f:
        f.write('cn = "%s"\nexpiration_days = 30\ntls_www_server\nsigning_key\n'
                'encryption_key\nserial = 4242\n' % CN_ONLY)
    for argv in (['certtool', '--generate-privkey', '--key-type', 'rsa', '--bits', '2048',
                  '--outfile', key],
                 ['certtool', '--generate-certificate', '--load-privkey', key,
                  '--load-ca-certificate', m.ca_pem,
                  '--load-ca-privkey', os.path.join(m.cadir, 'ca.key'),
                  '--template', tmpl, '--outfile', pem]):
        rc, out = h.run(argv, timeout=60)
        if rc != 0:
            raise RuntimeError('%s failed:\n%s' % (argv[1], out))
    os.chmod(key, 0o600)


def smime(m):
    tap, dep = m.tap, m.dep
    users = os.path.join(dep.dir, 'users')
    os.mkdir(users)

    # 1. Good: Bob's certificate from the test CA, published and fetched.
    m.ca('issue', 'user', BOB, '--ca', m.cadir, '--out', users)
    bob_pem, bob_key = os.path.join(users, 'bob.pem'), os.path.join(users, 'bob.key')
    m.publish(bob_pem, bob_key)
    der = os.path.join(dep.dir, 'fetched.der')
    rc, out = m.client('fetch', BOB, '--der', der)
    m.expect(rc, out, OK, 'S/MIME test 1: a CA-issued certificate of the AOR is accepted')
    rc2, pem = h.run(['certtool', '--certificate-info', '--inder', '--infile', der])
    with open(bob_pem) as f:
        issued = f.read()
    rc2, fetched = h.run(['certtool', '--certificate-info', '--inder', '--infile', der,
                          '--outfile', '/dev/stdout'])
    tap.ok(rc2 == 0 and os.path.exists(der) and issued.strip() in fetched,
           'the accepted certificate is the CA-issued one Bob published')
    rc, out = m.client('fetch', BOB, '--require-ca')
    m.expect(rc, out, OK, '--require-ca accepts it too: it chains to --ca')

    # 5. Revoked: the CA revokes Bob's certificate; with its CRL, fetch refuses it.
    m.ca('revoke', 'bob', '--ca', m.cadir)
    m.ca('crl', '--ca', m.cadir)
    rc, out = m.client('fetch', BOB, '--crl', m.crl)
    m.expect(rc, out, EXIT_CERT_REVOKED,
             'S/MIME test 5: a certificate the CA revoked is refused under its CRL',
             'revoked')
    rc, out = m.client('fetch', BOB)
    m.expect(rc, out, OK, 'without --crl the revocation is not known: still accepted')

    # 2. The AOR is not in a subjectAltName URI: Carol's certificate published for Bob. Our
    # publish refuses that, so a plain PUBLISH does it (RFC 6072 7.9: the service does not
    # check the subjectAltName).
    m.ca('issue', 'user', 'sip:carol@example.com', '--ca', m.cadir, '--out', users)
    with open(os.path.join(users, 'carol.der'), 'rb') as f:
        carol_der = f.read()
    conn = h.SipConn(dep.port, dep.domain, m.ca_pem)
    with conn:
        pub = cc.Publisher(conn, BOB, 'bob', BOB_PW)
        resp = pub.publish(carol_der, 'application/pkix-cert', expires=3600)
    tap.ok(resp is not None and resp.code == 200,
           'the daemon takes a certificate that does not name the AOR (%s)'
           % (resp.code if resp else None))
    rc, out = m.client('fetch', BOB)
    m.expect(rc, out, EXIT_CERT_PROFILE,
             'S/MIME test 2: a certificate without the AOR in its subjectAltName is refused',
             'subjectAltName')

    # 3. The chain ends at another CA.
    other = os.path.join(dep.dir, 'otherca')
    m.ca('init', other, '--cn', 'Some Other CA')
    other_out = os.path.join(dep.dir, 'other-users')
    os.mkdir(other_out)
    m.ca('issue', 'user', BOB, '--ca', other, '--out', other_out)
    m.publish(os.path.join(other_out, 'bob.pem'), os.path.join(other_out, 'bob.key'))
    rc, out = m.client('fetch', BOB)
    m.expect(rc, out, EXIT_CERT_TRUST,
             'S/MIME test 3: a certificate whose chain does not end at --ca is refused',
             'trust anchor')

    # A self-signed certificate (what RFC 6072 user agents publish) rests on the Identity;
    # --require-ca refuses it.
    rc, out = h.run([m.sipcred, 'publish', BOB, '--server', '%s:%d' % (h.HOST, dep.port),
                     '--ca', m.ca_pem, '--cert-only', '--password-file', m.pw,
                     '--etag-file', os.path.join(dep.dir, 'bob.etag')], timeout=60)
    tap.ok(rc == 0, 'Bob publishes a generated self-signed certificate (%s)' % rc)
    rc, out = m.client('fetch', BOB)
    m.expect(rc, out, OK, 'a self-signed certificate is accepted on the verified Identity')
    rc, out = m.client('fetch', BOB, '--require-ca')
    m.expect(rc, out, EXIT_CERT_TRUST, '--require-ca refuses a self-signed certificate',
             'self-signed')

    # 4. Validity: issued (under faketime) to expire 150 s from now, published while valid,
    # fetched by a client whose clock is 300 s ahead.
    short = os.path.join(dep.dir, 'short')
    os.mkdir(short)
    m.ca('issue', 'user', BOB, '--ca', m.cadir, '--out', short, '--days', '1',
         wrapper=('faketime', '-f', '-%ds' % (86400 - 150)))
    m.publish(os.path.join(short, 'bob.pem'), os.path.join(short, 'bob.key'))
    rc, out = m.client('fetch', BOB)
    m.expect(rc, out, OK, 'the short-lived certificate is accepted while valid')
    rc, out = m.client('fetch', BOB, wrapper=('faketime', '-f', '+300s'))
    m.expect(rc, out, EXIT_CERT_TIME,
             'S/MIME test 4: a certificate past its notAfter is refused', 'expired')


def tls(m):
    tap, dep = m.tap, m.dep

    # 6. The name is a subjectAltName dNSName (sipcred ca issue host).
    rc, out = m.client('fetch', BOB)
    m.expect(rc, out, OK, 'TLS test 6: the server name in a subjectAltName dNSName passes')

    # 7. No dNSName at all: the Subject CN counts. The daemon picks that certificate by SNI.
    rc, out = m.client('fetch', BOB, '--tls-name', CN_ONLY)
    m.expect(rc, out, OK, 'TLS test 7: no dNSName, the name in the Subject CN passes')

    # 8. Neither: example.com's certificate does not name another host.
    rc, out = m.client('fetch', BOB, '--tls-name', 'sip.example.org')
    m.expect(rc, out, EXIT_TLS_NAME, 'TLS test 8: a name in neither dNSName nor CN fails',
             'does not name sip.example.org')

    # 9. The chain does not end at --ca.
    rc, out = m.client('fetch', BOB, ca=os.path.join(dep.dir, 'otherca', 'ca.pem'))
    m.expect(rc, out, EXIT_TLS_TRUST, 'TLS test 9: a chain not ending at --ca fails',
             'trust anchor')

    # 11. The CA revokes the host certificate the daemon serves (before test 10 issues
    # another certificate for the same name: ca revoke takes the newest of a name).
    m.ca('revoke', dep.domain, '--ca', m.cadir)
    m.ca('crl', '--ca', m.cadir)
    rc, out = m.client('fetch', BOB, '--crl', m.crl)
    m.expect(rc, out, EXIT_TLS_REVOKED, 'TLS test 11: a revoked host certificate fails',
             'revoked')

    # 10. An expired host certificate, presented by a plain TLS server.
    expired = os.path.join(dep.dir, 'expired')
    os.mkdir(expired)
    m.ca('issue', 'host', dep.domain, '--ca', m.cadir, '--out', expired, '--days', '0')
    server = TlsOnce(os.path.join(expired, dep.domain + '.pem'),
                     os.path.join(expired, dep.domain + '.key'))
    rc, out = m.client('fetch', BOB, port=server.port)
    server.stop()
    m.expect(rc, out, EXIT_TLS_TIME, 'TLS test 10: an expired host certificate fails',
             'expired')
    tap.ok(server.handshakes >= 1, 'the expired certificate was presented in a handshake')

def main(tap):
    h.require_tools('certtool', 'faketime')
    # libfaketime is preloaded ahead of an ASan build's runtime; let ASan accept that.
    opts = os.environ.get('ASAN_OPTIONS', '')
    os.environ['ASAN_OPTIONS'] = (opts + ':' if opts else '') + 'verify_asan_link_order=0'
    with h.Deployment(tap, domains=('example.com', CN_ONLY), users=(BOB,),
                      extra='\n[fanout]\nmin-interval=0\n') as dep:
        m = Matrix(tap, dep)
        m.ca('init', m.cadir)
        m.ca('issue', 'host', dep.domain, '--ca', m.cadir, '--out', dep.dir, '--force')
        cn_only_certificate(m, dep.dir)
        dep.start()
        cc.add_user(dep, BOB, BOB_PW)
        smime(m)
        tls(m)


if __name__ == '__main__':
    h.run_tap(main)
