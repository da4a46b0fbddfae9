#!/usr/bin/env python3
"""Interop with an independent RFC 4474 verifier: Kamailio's auth_identity module.

A Kamailio started here (UDP on 127.0.0.1) runs the module's verifier checks on every request
and answers with a status that names the first failed check:
428 no Identity, 403 Date too old, 436 Identity-Info unusable or alg not rsa-sha1,
437 certificate not trusted or not naming the From host, 438 signature wrong, 200 verified.

What Kamailio 5.6's auth_identity needs, found from its documentation and source:
- it verifies rsa-sha1 only (an Identity-Info alg other than rsa-sha1 fails
  vrfy_get_certificate, so rsa-sha256 gets 436 here);
- it downloads the certificate from the Identity-Info URL with libcurl (DER unless
  accept_pem_certs is set), verifies it against cainfo_path, and compares the certificate's
  subject CN with the From host (it does not read subjectAltName);
- so the served domain must resolve for libcurl: the test serves the domain "localhost",
  with [identity] public-host=localhost;
- Date must be no older than auth_validity_time.

Our NOTIFYs reach it as a verifying hop would see them: the Via our client received is
replaced by one of our UDP socket (Via is not covered by the signature), nothing else
changes."""

import os
import re
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

DOMAIN = 'localhost'
ALICE = 'sip:alice@localhost'
MODULES = '/usr/lib/x86_64-linux-gnu/kamailio/modules'

KAMAILIO_CFG = '''#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:%(port)d
mpath="%(modules)s/"
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "auth_identity.so"
modparam("auth_identity", "cainfo_path", "%(ca)s")
modparam("auth_identity", "auth_validity_time", 3600)
request_route {
    if (!is_present_hf("Identity")) { sl_send_reply("428", "Use Identity Header"); exit; }
    if (!vrfy_check_date()) { sl_send_reply("403", "Outdated Date"); exit; }
    if (!vrfy_get_certificate()) { sl_send_reply("436", "Bad Identity-Info"); exit; }
    if (!vrfy_check_certificate()) { sl_send_reply("437", "Unsupported Certificate"); exit; }
    if (!vrfy_check_msgvalidity()) { sl_send_reply("438", "Invalid Identity Header"); exit; }
    if (!vrfy_check_callid()) { sl_send_reply("403", "Replayed"); exit; }
    sl_send_reply("200", "Identity Verified");
    exit;
}
'''


class Kamailio:
    """A throw-away Kamailio verifier on a free UDP port of 127.0.0.1, stopped by PID."""

    def __init__(self, tap, workdir, ca):
        self.tap = tap
        self.port = free_udp_port()
        self.dir = os.path.join(workdir, 'kamailio')
        os.makedirs(os.path.join(self.dir, 'run'), exist_ok=True)
        self.cfg = os.path.join(self.dir, 'kamailio.cfg')
        with open(self.cfg, 'w') as f:
            f.write(KAMAILIO_CFG % {'port': self.port, 'modules': MODULES, 'ca': ca})
        self.log = os.path.join(self.dir, 'kamailio.log')
        self.logf = open(self.log, 'ab')
        self.proc = h.spawn(['kamailio', '-f', self.cfg, '-DD', '-E', '-Y',
                             os.path.join(self.dir, 'run'), '-P',
                             os.path.join(self.dir, 'run', 'kamailio.pid')],
                            stdin=h.subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((h.HOST, 0))
        self.local_port = self.sock.getsockname()[1]

    def ready(self, timeout=15.0):
        """True once Kamailio answers (an unsigned OPTIONS gets 428)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            status, _ = self.verify(h.request('OPTIONS', 'sip:%s' % DOMAIN, 1), timeout=0.5)
            if status is not None:
                return True
        return False

    def verify(self, raw, timeout=10.0):
        """Sends @raw as a request from our UDP socket; returns (status, reason) or (None, '')."""
        head, sep, body = raw.partition(b'\r\n\r\n')
        lines = head.split(b'\r\n')
        branch = 'z9hG4bKkam%s' % h.new_id()
        via = ('Via: SIP/2.0/UDP %s:%d;branch=%s;rport' % (h.HOST, self.local_port, branch)
               ).encode()
        out, replaced = [], False
        for line in lines:
            name = line.split(b':', 1)[0].strip().lower()
            if name in (b'via', b'v'):
                if not replaced:
                    out.append(via)
                    replaced = True
                continue
            out.append(line)
        if not replaced:
            out.insert(1, via)
        self.sock.sendto(b'\r\n'.join(out) + sep + body, (h.HOST, self.port))
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65536)
            except (socket.timeout, OSError):
                break
            first = data.split(b'\r\n', 1)[0].decode('utf-8', 'replace')
            if branch.encode() in data:
                m = re.match(r'SIP/2.0 (\d{3}) (.*)', first)
                if m:
                    return int(m.group(1)), m.group(2)
        return None, ''

    def stop(self):
        self.sock.close()
        h.stop(self.proc)
        self.logf.close()


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((h.HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tamper_body(raw):
    head, sep, body = raw.partition(b'\r\n\r\n')
    return head + sep + bytes([body[0] ^ 0x01]) + body[1:]


def notify_of(dep):
    with dep.connect(sni=DOMAIN) as c:
        sub = h.Subscription(c, ALICE)
        final, notify = sub.exchange(600)
    return notify


def run_algorithm(tap, alg):
    extra = '[identity]\nalgorithm=%s\npublic-host=%s\n' % (alg, DOMAIN)
    with h.Deployment(tap, domains=(DOMAIN,), users=(ALICE,), extra=extra) as dep:
        dep.import_certs()
        dep.start()
        kam = Kamailio(tap, dep.dir, dep.ca)
        try:
            if not tap.ok(kam.ready(), 'Kamailio with auth_identity is up'):
                tap.diag(h.tail(kam.log))
                return
            notify = notify_of(dep)
            tap.ok(notify is not None and notify.body, '%s: a NOTIFY with a certificate' % alg)
            if notify is None:
                return
            tap.diag('Identity-Info: %s' % notify.get('identity-info'))
            status, reason = kam.verify(notify.raw)
            if alg == 'rsa-sha1':
                ok = tap.ok(status == 200, 'Kamailio verifies our rsa-sha1 NOTIFY (%s %s)'
                            % (status, reason))
                if not ok:
                    tap.diag(h.tail(kam.log))
                notify2 = notify_of(dep)
                status, reason = kam.verify(tamper_body(notify2.raw))
                tap.ok(status == 438, 'with one body byte changed Kamailio refuses it (%s %s)'
                       % (status, reason))
                status, reason = kam.verify(notify.raw)
                tap.ok(status == 403, 'a replay of the first NOTIFY is refused (%s %s)'
                       % (status, reason))
            else:
                tap.ok(status == 436, 'Kamailio does not implement %s: it answers 436 (%s %s)'
                       % (alg, status, reason))
        finally:
            kam.stop()


def main(tap):
    h.require_tools('kamailio', 'certtool')
    if not os.path.exists(os.path.join(MODULES, 'auth_identity.so')):
        h.Tap.skip_all('auth_identity.so is missing (Debian package kamailio-tls-modules)')
    run_algorithm(tap, 'rsa-sha1')
    run_algorithm(tap, 'rsa-sha256')


if __name__ == '__main__':
    h.run_tap(main)
