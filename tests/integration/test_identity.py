#!/usr/bin/env python3
"""The identity stage over real TLS (RFC 4474; RFC 6072 section 8): every NOTIFY leaves with
Date, Identity and Identity-Info, and a second crypto implementation agrees with the
signature.

For each algorithm (rsa-sha256, the default, and rsa-sha1): a certificate subscription gets a
NOTIFY whose Identity verifies with our verifier (sipcred identity verify) and with the openssl
CLI over a digest-string built here from RFC 4474 section 9, independently of our C code. A
copy with one body byte changed fails both. The Date header is in exact RFC 1123 form and
Identity-Info names the algorithm. After the domain key and certificate are replaced and
SIGHUP is sent, new NOTIFYs verify with the new certificate only."""

import base64
import os
import re
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402

ALICE = 'sip:alice@example.com'
DOMAIN = 'example.com'

DATE_RE = re.compile(r'^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|'
                     r'Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$')


def addr_spec(value):
    """RFC 4474 section 9: the addr-spec as written inside <>, or up to ';' without them."""
    m = re.search(r'<([^>]*)>', value)
    return m.group(1) if m else value.split(';')[0].strip()


def digest_string(msg):
    """Our own reading of RFC 4474 section 9, for the openssl cross-check."""
    contacts = msg.get_all('contact')
    contact = addr_spec(contacts[0].split(',')[0]) if contacts else ''
    cseq = msg.get('cseq').split()
    fields = [addr_spec(msg.get('from')), addr_spec(msg.get('to')), msg.get('call-id'),
              '%s %s' % (cseq[0], cseq[1]), msg.get('date'), contact]
    return '|'.join(fields).encode() + b'|' + msg.body


def openssl_verify(dep, msg, alg):
    """True when openssl accepts the Identity of @msg under the domain certificate."""
    pub = os.path.join(dep.dir, 'domain-pub.pem')
    if not os.path.exists(pub):
        rc, out = h.run(['openssl', 'x509', '-in', os.path.join(dep.dir, DOMAIN + '.pem'),
                         '-pubkey', '-noout'])
        with open(pub, 'w') as f:
            f.write(out)
    data = os.path.join(dep.dir, 'ds-%s.bin' % h.new_id())
    sig = data + '.sig'
    with open(data, 'wb') as f:
        f.write(digest_string(msg))
    with open(sig, 'wb') as f:
        f.write(base64.b64decode(msg.get('identity').strip().strip('"')))
    rc, out = h.run(['openssl', 'dgst', '-sha256' if alg == 'rsa-sha256' else '-sha1',
                     '-verify', pub, '-signature', sig, data])
    return rc == 0 and 'Verified OK' in out


def our_verify(dep, raw, cert=None):
    rc, out = h.run([h.binary('sipcred'), 'identity', 'verify', '-', '--cert',
                     cert or os.path.join(dep.dir, DOMAIN + '.pem')], input_bytes=raw)
    return rc == 0, out.strip()


def tamper_body(raw):
    head, _, body = raw.partition(b'\r\n\r\n')
    if not body:
        return None
    return head + b'\r\n\r\n' + bytes([body[0] ^ 0x01]) + body[1:]


def one_algorithm(tap, alg):
    extra = '[identity]\nalgorithm=%s\n[fanout]\nmin-interval=0\n' % alg
    with h.Deployment(tap, users=(ALICE,), extra=extra) as dep:
        dep.import_certs()
        dep.start()
        with dep.connect() as c:
            sub = h.Subscription(c, ALICE)
            final, notify = sub.exchange(600)
            tap.ok(final is not None and final.code == 200 and notify is not None,
                   '%s: subscribed, NOTIFY received' % alg)
            if notify is None:
                return
            date = notify.get('date') or ''
            tap.ok(DATE_RE.match(date) is not None, '%s: Date is RFC 1123 GMT: %r' % (alg, date))
            info = notify.get('identity-info') or ''
            tap.ok(re.search(r';\s*alg=%s\b' % alg, info) is not None and info.startswith('<'),
                   '%s: Identity-Info names the algorithm: %s' % (alg, info))
            ok, out = our_verify(dep, notify.raw)
            tap.ok(ok, '%s: our verifier accepts the NOTIFY: %s' % (alg, out))
            tap.ok(openssl_verify(dep, notify, alg),
                   '%s: openssl dgst -verify accepts the signature over the digest-string' % alg)
            bad = tamper_body(notify.raw)
            ok, out = our_verify(dep, bad)
            tap.ok(not ok, '%s: one body byte changed: our verifier refuses (%s)' % (alg, out))
            tampered = h.parse_stream(bad)[0]
            tap.ok(not openssl_verify(dep, tampered, alg),
                   '%s: one body byte changed: openssl refuses too' % alg)
            wrong = h.request('NOTIFY', ALICE, c.local_port)  # unsigned, for contrast
            ok, _ = our_verify(dep, wrong)
            tap.ok(not ok, '%s: an unsigned message is refused' % alg)
        return dep


def http_get(dep, port, path, method='GET', sni=DOMAIN):
    """(status, headers, body) of one HTTPS request to the built-in endpoint, verifying its
    certificate as @sni against the test CA."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=dep.ca)
    raw = socket.create_connection((h.HOST, port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=sni) as s:
        s.sendall(('%s %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (method, path, sni)).encode())
        data = b''
        while len(data) < 1 << 20:
            try:
                chunk = s.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else None
    hdrs = dict((k.strip().lower(), v.strip()) for k, _, v in
                (line.partition(':') for line in lines[1:]))
    return status, hdrs, body


def info_endpoint(tap):
    """The built-in endpoint behind Identity-Info: it serves the domain certificate as DER."""
    with h.Deployment(tap, users=(ALICE,)) as dep:
        dep.import_certs()
        dep.start()
        with dep.connect() as c:
            sub = h.Subscription(c, ALICE)
            final, notify = sub.exchange(600)
        info = notify.get('identity-info') if notify else ''
        m = re.match(r'<https://([^:/>]+):(\d+)(/[^>]*)>', info or '')
        tap.ok(m is not None, 'Identity-Info points at the built-in HTTPS endpoint: %s' % info)
        if m is None:
            return
        port, path = int(m.group(2)), m.group(3)
        der_path = os.path.join(dep.dir, 'domain.der')
        h.run(['openssl', 'x509', '-in', os.path.join(dep.dir, DOMAIN + '.pem'), '-outform',
               'DER', '-out', der_path])
        with open(der_path, 'rb') as f:
            der = f.read()
        status, hdrs, body = http_get(dep, port, path)
        tap.ok(status == 200 and body == der and
               hdrs.get('content-type') == 'application/pkix-cert',
               'GET %s returns the domain certificate as DER, application/pkix-cert (%s)'
               % (path, status))
        status, hdrs, body = http_get(dep, port, path, method='HEAD')
        tap.ok(status == 200 and body == b'' and hdrs.get('content-length') == str(len(der)),
               'HEAD gives the length without the body')
        status, _, _ = http_get(dep, port, '/other.example.der')
        tap.ok(status == 404, 'an unknown path gets 404 (%s)' % status)
        status, hdrs, _ = http_get(dep, port, path, method='POST')
        tap.ok(status == 405 and 'GET' in hdrs.get('allow', ''), 'POST gets 405 with Allow')
        if h.shutil.which('curl'):
            out_path = os.path.join(dep.dir, 'curl.der')
            rc, out = h.run(['curl', '-sS', '--max-time', '10', '--cacert', dep.ca, '--resolve',
                             '%s:%d:%s' % (DOMAIN, port, h.HOST), '-o', out_path,
                             'https://%s:%d%s' % (DOMAIN, port, path)])
            got = open(out_path, 'rb').read() if os.path.exists(out_path) else b''
            tap.ok(rc == 0 and got == der, 'curl fetches the same DER over verified TLS (%s)'
                   % out.strip()[-200:])
        else:
            tap.skip('curl fetches the certificate', 'curl is not installed')
        # Idle and garbage connections hold nothing up: each is served on its own.
        import socket
        idle = [socket.create_connection((h.HOST, port), timeout=5) for _ in range(5)]
        junk = socket.create_connection((h.HOST, port), timeout=5)
        junk.sendall(b'GET / HTTP/1.0\r\n\r\n' * 10)
        status, _, body = http_get(dep, port, path)
        tap.ok(status == 200 and body == der, 'served while idle and plain-text clients wait')
        junk.settimeout(5)
        try:
            closed = junk.recv(4096) is not None
        except OSError:
            closed = True
        tap.ok(closed, 'a plain-text client is refused by the TLS layer')
        for s in idle + [junk]:
            s.close()
        tap.ok(h.options_ok(dep), 'SIP is still served')
        tap.ok(dep.alive(), 'the daemon still runs')


def reload_keys(tap):
    extra = '[fanout]\nmin-interval=0\n'
    with h.Deployment(tap, users=(ALICE,), extra=extra) as dep:
        dep.import_certs()
        dep.start()
        old_cert = os.path.join(dep.dir, 'old-domain.pem')
        with open(os.path.join(dep.dir, DOMAIN + '.pem'), 'rb') as f:
            old = f.read()
        with open(old_cert, 'wb') as f:
            f.write(old)
        # A new key and certificate for the domain, from the same CA.
        for ext in ('.pem', '.key'):
            os.rename(os.path.join(dep.dir, DOMAIN + ext),
                      os.path.join(dep.dir, 'retired-' + DOMAIN + ext))
        dep.make_certs()
        os.kill(dep.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        log = ''
        while time.monotonic() < deadline and 'reloaded' not in log:
            time.sleep(0.1)
            log = open(dep.log, errors='replace').read()
        tap.ok('signing keys reloaded' in log, 'SIGHUP reloads the signing keys')
        with dep.connect() as c:
            sub = h.Subscription(c, ALICE)
            final, notify = sub.exchange(600)
            ok_new, _ = our_verify(dep, notify.raw) if notify else (False, '')
            ok_old, _ = our_verify(dep, notify.raw, cert=old_cert) if notify else (True, '')
            tap.ok(ok_new and not ok_old,
                   'after the reload NOTIFYs verify with the new certificate, not the old')


def main(tap):
    h.require_tools('certtool', 'openssl')
    one_algorithm(tap, 'rsa-sha256')
    one_algorithm(tap, 'rsa-sha1')
    info_endpoint(tap)
    reload_keys(tap)


if __name__ == '__main__':
    h.run_tap(main)
