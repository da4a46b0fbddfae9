#!/usr/bin/env python3
"""The credential package with a SIP stack no one here wrote: SIPp (TCP) through stunnel (TLS
client, verifying sipcredd against the test CA with SNI = the domain) publishes Bob's
credential and subscribes to it, answering the digest challenges with its own digest code.

What SIPp 3.6 (Debian bookworm's sip-tester) can do, and what the test does about it:
- It joins every WWW-Authenticate of a 401 into one value and takes the first algorithm=,
  realm= and nonce= in it; it computes MD5 and AKAv1-MD5 only. The daemon offers SHA-256
  first (RFC 8760), so SIPp stops with "authentication must use MD5 or AKAv1-MD5". The first
  run below gives SIPp the 401 as sent and records that as a TODO while the limitation lasts
  (a SIPp that can do it makes it an ordinary passing test point). The other runs go through
  a relay that removes the SHA-256 challenge from 401s, which is what a client that knows
  only MD5 sees as the one challenge it supports; SIPp then answers the daemon's MD5
  challenge with qop=auth, nc and cnonce.
- Its digest uri is sip:HOST:PORT of the peer unless -auth_uri is given; the daemon wants the
  Request-URI, so the runs pass -auth_uri.
- When it adds [authentication] it moves the message with C-string functions, which cuts a
  binary body at its first NUL byte; so the PUBLISH body carries base64 parts
  (Content-Transfer-Encoding: base64), inserted from a file with SIPp's [file] keyword.
- Its regexps run on C strings, so in the NOTIFY it can see only the first part's headers;
  the parts are compared byte for byte from the relay's record of the stream.

sipsak 0.9.8 (Debian) sends a SUBSCRIBE from a file through the same relay: it reads only
the first WWW-Authenticate and, built without OpenSSL, knows only MD5 (a TODO as for SIPp).
Through the MD5-only relay its Authorization is complete and well-formed; it puts response=
last, which caught a daemon bug (Sofia's sip_header_as_string drops the last parameter of a
value of 127 bytes or more; the daemon now rebuilds the value from the parsed fields). The
right password gets 200, the wrong one 401 and never key material or a NOTIFY."""

import base64
import os
import re
import select
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
BOB_PW = 'bob-sipp-secret'
BOUNDARY = 'sipp-cred-boundary'
SIPP_SHA256_LIMIT = 'authentication must use MD5 or AKAv1-MD5'


# --------------------------------------------------------------------------------------------
# Credentials made with certtool (not with our code)

def certtool(dep, name, *args):
    path = os.path.join(dep.dir, name)
    rc, out = h.run(['certtool'] + list(args) + ['--outfile', path])
    if rc != 0:
        raise RuntimeError('certtool %s failed:\n%s' % (' '.join(args), out))
    with open(path, 'rb') as f:
        return path, f.read()


def make_credential(dep, aor):
    """(certificate DER, PBES2-encrypted PKCS#8 DER) for @aor, self-signed."""
    key, _ = certtool(dep, 'bob.key', '--generate-privkey', '--key-type=rsa', '--bits=2048')
    tmpl = os.path.join(dep.dir, 'bob.tmpl')
    with open(tmpl, 'w') as f:
        f.write('cn = "%s"\nuri = "%s"\nsigning_key\nencryption_key\nexpiration_days = 30\n'
                % (aor.split(':', 1)[1], aor))
    _, cert = certtool(dep, 'bob.der', '--generate-self-signed', '--load-privkey', key,
                       '--template', tmpl, '--outder')
    _, p8 = certtool(dep, 'bob.p8', '--to-p8', '--load-privkey', key,
                     '--password', 'device-pass', '--pkcs-cipher', 'aes-128', '--outder')
    return cert, p8


def base64_multipart(cert, p8):
    """A multipart/mixed body with base64 parts and CRLF line ends (SIPp inserts it as is)."""
    out = b''
    for ctype, data in (('application/pkix-cert', cert), ('application/pkcs8', p8)):
        lines = base64.encodebytes(data).replace(b'\n', b'\r\n')
        out += ('--%s\r\nContent-Type: %s\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                % (BOUNDARY, ctype)).encode() + lines
    return out + ('--%s--\r\n' % BOUNDARY).encode()


# --------------------------------------------------------------------------------------------
# A relay between the client and stunnel that records both directions and may rewrite what
# the server sends.

def drop_sha256_challenges(msg_bytes):
    """The message without WWW-Authenticate values for algorithm=SHA-256 (only in 401s)."""
    if not msg_bytes.startswith(b'SIP/2.0 401 '):
        return msg_bytes
    head, sep, body = msg_bytes.partition(b'\r\n\r\n')
    kept = [ln for ln in head.split(b'\r\n')
            if not re.match(rb'(?i)www-authenticate\s*:.*algorithm\s*=\s*"?sha-256', ln)]
    return b'\r\n'.join(kept) + sep + body


class Relay:
    """Forwards one TCP client to upstream. Records the bytes as each side sent them
    (to_server, to_client); @rewrite, when given, changes each whole server message before
    the client gets it. Bounded: it stops when either side closes, when stop() is called, or
    after max_s seconds."""

    def __init__(self, upstream_port, rewrite=None, max_s=60.0):
        self.upstream_port = upstream_port
        self.rewrite = rewrite
        self.max_s = max_s
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((h.HOST, 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.pending = b''   # server bytes not yet a whole message (only with rewrite)
        self.error = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _from_server(self, data, client):
        self.to_client += data
        if self.rewrite is None:
            client.sendall(data)
            return
        self.pending += data
        for _ in range(1000):
            stripped = self.pending.lstrip(b'\r\n')
            keepalive = self.pending[:len(self.pending) - len(stripped)]
            msg, rest = h.split_message(self.pending)
            if msg is None:
                if keepalive:
                    client.sendall(keepalive)
                    self.pending = stripped
                return
            whole = self.pending[len(keepalive):len(self.pending) - len(rest)]
            client.sendall(keepalive + self.rewrite(whole))
            self.pending = rest

    def _run(self):
        end = time.monotonic() + self.max_s
        try:
            self.lsock.settimeout(self.max_s)
            client, _ = self.lsock.accept()
            upstream = socket.create_connection((h.HOST, self.upstream_port), timeout=5)
            with client, upstream:
                while not self._stop.is_set() and time.monotonic() < end:
                    ready, _, _ = select.select([client, upstream], [], [], 0.2)
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        if s is client:
                            self.to_server += data
                            upstream.sendall(data)
                        else:
                            self._from_server(data, client)
        except OSError as exc:
            self.error = exc
        finally:
            self.lsock.close()

    def stop(self):
        self._stop.set()
        self.thread.join(5)

    def sent(self):
        return h.parse_stream(bytes(self.to_server))

    def received(self):
        return h.parse_stream(bytes(self.to_client))


def write_stunnel_conf(dep, accept_port):
    path = os.path.join(dep.dir, 'stunnel.conf')
    with open(path, 'w') as f:
        f.write('\n'.join([
            'foreground = yes',
            'pid =',
            'syslog = no',
            'debug = info',
            '[sipcred]',
            'client = yes',
            'accept = %s:%d' % (h.HOST, accept_port),
            'connect = %s:%d' % (h.HOST, dep.port),
            'sni = %s' % dep.domain,
            'CAfile = %s' % dep.ca,
            'verifyChain = yes',
            'checkHost = %s' % dep.domain,
            '']))
    return path


def start_stunnel(dep):
    port = h.free_port()
    log = os.path.join(dep.dir, 'stunnel.log')
    with open(log, 'wb') as logf:
        proc = h.spawn(['stunnel4', write_stunnel_conf(dep, port)],
                       stdin=h.subprocess.DEVNULL, stdout=logf, stderr=logf)
    if not h.wait_port(port, 10, proc):
        raise RuntimeError('stunnel did not start:\n' + h.tail(log))
    return proc, port, log


def run_client(dep, name, argv, relay, timeout=45):
    """Runs a client to completion (bounded), then stops the relay; returns (status, output)."""
    out_path = os.path.join(dep.dir, name + '.out')
    with open(out_path, 'wb') as outf:
        proc = h.spawn(argv, stdin=h.subprocess.DEVNULL, stdout=outf, stderr=outf,
                       cwd=dep.dir)
        try:
            status = proc.wait(timeout=timeout)
        except h.subprocess.TimeoutExpired:
            status = None
        h.stop(proc)
    relay.stop()
    return status, h.tail(out_path, 30)


def run_sipp(dep, name, scenario, stunnel_port, password=BOB_PW, rewrite=None):
    """One SIPp call of @scenario as bob through a relay; returns (status, relay, errors)."""
    relay = Relay(stunnel_port, rewrite=rewrite)
    err_file = os.path.join(dep.dir, name + '-errors.log')
    argv = ['sipp', '-sf', os.path.join(h.HERE, scenario), '-t', 't1', '-m', '1', '-l', '1',
            '-s', 'bob', '-key', 'domain', dep.domain, '-key', 'boundary', BOUNDARY,
            '-au', 'bob', '-ap', password, '-auth_uri', 'bob@' + dep.domain,
            '-i', h.HOST, '-p', str(h.free_port()),
            '-recv_timeout', '10000', '-timeout', '30s', '-timeout_error',
            '-nostdin', '-trace_err', '-error_file', err_file,
            '%s:%d' % (h.HOST, relay.port)]
    status, out = run_client(dep, name, argv, relay)
    errors = h.tail(err_file, 30) + '\n' + out
    return status, relay, errors


def responses(msgs, method, code=None):
    return [m for m in msgs if not m.is_request and m.cseq_method() == method and
            (code is None or m.code == code)]


def auth_params(msg):
    return cc.parse_challenge(msg.get('authorization') or '') or {}


# --------------------------------------------------------------------------------------------

def sha256_first(tap, dep, stunnel_port):
    """SIPp and the daemon's 401 exactly as it is sent."""
    status, relay, errors = run_sipp(dep, 'sipp-publish-sha256', 'credential-publish.xml',
                                     stunnel_port)
    sent = relay.sent()
    authed = [m for m in sent if m.is_request and m.get('authorization')]
    desc = "SIPp answers the daemon's 401 as sent (SHA-256 challenge first)"
    if status == 0:
        tap.ok(authed and auth_params(authed[0]).get('algorithm', '').upper() == 'SHA-256',
               desc + ', with algorithm=SHA-256')
    elif SIPP_SHA256_LIMIT in errors and not authed:
        tap.ok(False, desc, todo='SIPp 3.6 reads only the first algorithm= of the joined '
               'WWW-Authenticate values and computes only MD5 and AKAv1-MD5')
    else:
        tap.ok(False, desc + ' (exit status %s)' % status)
        tap.diag(errors)


def publish(tap, dep, stunnel_port, cert, p8):
    status, relay, errors = run_sipp(dep, 'sipp-publish', 'credential-publish.xml',
                                     stunnel_port, rewrite=drop_sha256_challenges)
    if not tap.ok(status == 0, 'SIPp publishes the credential: 401, digest, 200 with SIP-ETag, '
                               'refresh by ETag, 200 (exit status %s)' % status):
        tap.diag(errors)
    received, sent = relay.received(), relay.sent()

    challenges = [m for m in received if not m.is_request and m.code == 401]
    algs = [c.get('algorithm') for c in cc.challenges(challenges[0])] if challenges else []
    tap.ok(algs == ['SHA-256', 'MD5'],
           'the daemon challenged with SHA-256, then MD5 (%s); SIPp saw the MD5 one' % algs)
    authed = [m for m in sent if m.is_request and m.get('authorization')]
    a = auth_params(authed[0]) if authed else {}
    tap.ok(a.get('algorithm', '').upper() == 'MD5' and a.get('qop') == 'auth' and
           a.get('nc') == '00000001' and a.get('cnonce') and a.get('realm') == dep.domain and
           a.get('uri') == BOB and a.get('username') == 'bob',
           "SIPp's Authorization: MD5, qop=auth, nc=00000001, a cnonce, realm and uri right "
           '(%s)' % {k: a.get(k) for k in ('algorithm', 'qop', 'nc', 'uri')})
    ok200 = responses(received, 'PUBLISH', 200)
    etags = [m.get('sip-etag') for m in ok200]
    tap.ok(len(ok200) == 2 and all(etags) and etags[0] != etags[1],
           'both PUBLISHes got 200 with a SIP-ETag, the refresh a new one (%s)' % etags)
    tap.ok(len(ok200) >= 1 and 0 < int(ok200[0].get('expires') or 0) <= 3600,
           'the first 200 grants Expires <= 3600 (%s)' %
           (ok200[0].get('expires') if ok200 else None))
    refresh = [m for m in sent if m.is_request and m.get('sip-if-match')]
    tap.ok(len(refresh) == 1 and refresh[0].get('sip-if-match') == etags[0] and
           auth_params(refresh[0]).get('nc') == '00000002',
           'the refresh carried the first ETag and the same nonce with nc=00000002')
    tap.ok(dep.export_der(BOB) == cert,
           '`sipcred cred export` gives the certificate SIPp published, byte for byte')
    rc, out = dep.sipcred('cred', 'show', BOB)
    tap.ok(rc == 0 and re.search(r'(?m)^key: user-encrypted$', out) is not None,
           '`sipcred cred show` lists the user-encrypted key with it')


def subscribe(tap, dep, stunnel_port, cert, p8):
    status, relay, errors = run_sipp(dep, 'sipp-subscribe', 'credential-subscribe.xml',
                                     stunnel_port, rewrite=drop_sha256_challenges)
    if not tap.ok(status == 0, 'SIPp subscribes to the credential: 401, digest, 200, NOTIFY '
                               'multipart/mixed, unsubscribe, terminated NOTIFY (exit status '
                               '%s)' % status):
        tap.diag(errors)
    received = relay.received()
    notifies = [m for m in received if m.is_request and m.method == 'NOTIFY']
    first = notifies[0] if notifies else None
    ctype = first.get('content-type') if first else None
    parts = cc.parse_multipart(ctype, first.body) if first else None
    tap.ok(first is not None and ctype.startswith('multipart/mixed'),
           'the first NOTIFY is multipart/mixed (%s)' % ctype)
    tap.ok(parts is not None and parts.get('application/pkcs8') == p8,
           'it carries the application/pkcs8 part: the PKCS#8 SIPp published, as DER')
    tap.ok(parts is not None and parts.get('application/pkix-cert') == cert,
           'and the application/pkix-cert part: the certificate, as DER')
    states = [m.get('subscription-state') for m in notifies]
    tap.ok(len(notifies) == 2 and 'terminated' in (states[-1] or ''),
           'the unsubscribe ends the subscription with a terminated NOTIFY (%s)' % states)


SIPSAK_SHA256_LIMIT = 'unsupported authentication algorithm'
# server/nua-adapter.c reads each Authorization back with sofia's sip_header_as_string(), which
# (sofia-sip 1.12.11 as Debian ships it) drops the last auth-param of a value of 127 or more
# characters. sipsak puts response= last, so the daemon finds no response and answers 400.


def sipsak_subscribe(dep, stunnel_port, name, password, rewrite):
    """One SUBSCRIBE from a file, sent by sipsak through a relay; returns (relay, output)."""
    relay = Relay(stunnel_port, rewrite=rewrite)
    msg_path = os.path.join(dep.dir, name + '.txt')
    # sipsak adds its own Via (TCP); the rest is ours.
    with open(msg_path, 'w') as f:
        f.write('\n'.join([
            'SUBSCRIBE %s SIP/2.0' % BOB,
            'Max-Forwards: 70',
            'From: <%s>;tag=sipsak%s' % (BOB, h.new_id()),
            'To: <%s>' % BOB,
            'Call-ID: %s@%s' % (h.new_id(), h.HOST),
            'CSeq: 1 SUBSCRIBE',
            'Contact: <sip:bob@%s:%d;transport=tcp>' % (h.HOST, relay.port),
            'Event: credential',
            'Expires: 600',
            'Content-Length: 0',
            '', '']))
    argv = ['sipsak', '-f', msg_path, '-s', 'sip:bob@%s:%d' % (h.HOST, relay.port),
            '-E', 'tcp', '-u', 'bob', '-a', password, '-vv']
    _, out = run_client(dep, name, argv, relay, timeout=30)
    return relay, out


def sipsak_checks(tap, dep, stunnel_port, p8):
    if h.shutil.which('sipsak') is None:
        tap.skip('sipsak checks', 'missing tool: sipsak')
        return
    relay, out = sipsak_subscribe(dep, stunnel_port, 'sipsak-sha256', BOB_PW, None)
    authed = [m for m in relay.sent() if m.is_request and m.get('authorization')]
    desc = "sipsak answers the daemon's 401 as sent (SHA-256 challenge first)"
    if authed:
        tap.ok(auth_params(authed[0]).get('algorithm', '').upper() == 'SHA-256',
               desc + ', with algorithm=SHA-256')
    elif SIPSAK_SHA256_LIMIT in out:
        tap.ok(False, desc, todo='sipsak reads only the first WWW-Authenticate and, built '
               'without OpenSSL (Debian), computes only MD5')
    else:
        tap.ok(False, desc)
        tap.diag(out)

    for password, want in (('not-the-password', 401), (BOB_PW, 200)):
        relay, out = sipsak_subscribe(dep, stunnel_port, 'sipsak-%d' % want, password,
                                      drop_sha256_challenges)
        received = relay.received()
        finals = responses(received, 'SUBSCRIBE')
        codes = [m.code for m in finals]
        sent_auth = [m for m in relay.sent() if m.is_request and m.get('authorization')]
        a = auth_params(sent_auth[0]) if sent_auth else {}
        tap.ok(len(sent_auth) == 1 and a.get('algorithm', '').upper() == 'MD5' and
               all(a.get(k) for k in ('username', 'realm', 'nonce', 'uri', 'response',
                                      'cnonce', 'nc')) and a.get('qop') == 'auth',
               'sipsak answers the MD5 challenge with a complete Authorization (%s)'
               % sorted(a))
        last = finals[-1] if finals else None
        desc = ('sipsak with a wrong password gets 401 again' if want == 401 else
                'sipsak with the right password gets 200')
        if not tap.ok(last is not None and last.code == want, '%s (%s %s)'
                      % (desc, codes, last.reason if last is not None else '')):
            tap.diag(out)
        if want == 401:
            tap.ok(finals and p8 not in bytes(relay.to_client) and
                   b'application/pkcs8' not in bytes(relay.to_client) and
                   not any(m.is_request and m.method == 'NOTIFY' for m in received),
                   'nothing the daemon sent the wrong password holds key material or is a '
                   'NOTIFY')


def main(tap):
    h.require_tools('certtool', 'sipp', 'stunnel4')
    with h.Deployment(tap, users=(ALICE,)) as dep:
        dep.start()
        cc.add_user(dep, BOB, BOB_PW)
        cert, p8 = make_credential(dep, BOB)
        stunnel, stunnel_port, stunnel_log = start_stunnel(dep)
        try:
            with open(os.path.join(dep.dir, 'publish-body.txt'), 'wb') as f:
                f.write(base64_multipart(cert, p8))
            sha256_first(tap, dep, stunnel_port)
            publish(tap, dep, stunnel_port, cert, p8)
            subscribe(tap, dep, stunnel_port, cert, p8)
            sipsak_checks(tap, dep, stunnel_port, p8)
        finally:
            h.stop(stunnel)
        tap.ok(b'Certificate accepted' in open(stunnel_log, 'rb').read(),
               'stunnel verified the server certificate against the test CA')
        tap.ok(dep.alive() and h.options_ok(dep), 'the daemon still answers OPTIONS with 200')


if __name__ == '__main__':
    h.run_tap(main)
