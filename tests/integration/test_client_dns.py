#!/usr/bin/env python3
"""RFC 3263 server location by our client commands, against a DNS server on 127.0.0.1 that this
test runs (`--resolver`), so nothing leaves the machine:

- NAPTR SIPS+D2T -> SRV -> host: the client follows the NAPTR replacement, tries the SRV
  targets by priority, moves past one that refuses the connection, and fetches from the daemon;
  the server must still prove the AOR's domain, not the SRV target's name;
- no NAPTR records: the _sips._tcp SRV records of the domain;
- NAPTR records that offer no SIPS over TCP: a clear failure, no guessing.
"""

import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402

BOB = 'sip:bob@example.com'
BOB_PW = 'bob-dns-secret'
T_SRV, T_NAPTR = 33, 35


def encode_name(name):
    out = b''
    for label in name.strip('.').split('.'):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b'\0'


def naptr_rdata(order, pref, flags, service, replacement):
    def cs(s):
        return bytes([len(s)]) + s.encode()
    return (struct.pack('!HH', order, pref) + cs(flags) + cs(service) + cs('') +
            encode_name(replacement))


def srv_rdata(prio, weight, port, target):
    return struct.pack('!HHH', prio, weight, port) + encode_name(target)


class DnsServer:
    """UDP DNS on 127.0.0.1: answers from self.zone {(name, type): [rdata]}; a name with no
    entry of any type is NXDOMAIN, a name with other types only is NODATA. Records every
    question in self.asked. Bounded by max_s."""

    def __init__(self, max_s=120.0):
        self.zone = {}
        self.asked = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((h.HOST, 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._end = time.monotonic() + max_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set() and time.monotonic() < self._end:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            reply = self._answer(query)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, q):
        if len(q) < 12:
            return None
        qid, = struct.unpack('!H', q[:2])
        labels, i = [], 12
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode('ascii', 'replace'))
            i += 1 + n
        question_end = i + 5
        if question_end > len(q):
            return None
        qtype, = struct.unpack('!H', q[i + 1:i + 3])
        name = '.'.join(labels).lower()
        self.asked.append((name, qtype))
        answers = self.zone.get((name, qtype), [])
        known = any(n == name for (n, _) in self.zone)
        rcode = 0 if known else 3
        head = struct.pack('!HHHHHH', qid, 0x8180 | rcode, 1, len(answers), 0, 0)
        body = q[12:question_end]
        for rdata in answers:
            body += struct.pack('!HHHIH', 0xc00c, qtype, 1, 60, len(rdata)) + rdata
        return head + body

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def main(tap):
    with h.Deployment(tap, users=(BOB,)) as dep:
        dep.start()
        cc.add_user(dep, BOB, BOB_PW)
        pw = os.path.join(dep.dir, 'bob.pw')
        with open(pw, 'w') as f:
            f.write(BOB_PW + '\n')
        dns = DnsServer()
        sipcred = h.binary('sipcred')
        resolver = '%s:%d' % (h.HOST, dns.port)
        closed = h.free_port()
        try:
            # NAPTR -> SRV: priority 10 refuses connections, priority 20 is the daemon.
            dns.zone = {
                ('example.com', T_NAPTR): [
                    naptr_rdata(10, 10, 's', 'SIP+D2U', '_sip._udp.example.com'),
                    naptr_rdata(20, 10, 's', 'SIPS+D2T', '_sips._tcp.sip.example.com')],
                ('_sips._tcp.sip.example.com', T_SRV): [
                    srv_rdata(20, 0, dep.port, 'localhost'),
                    srv_rdata(10, 0, closed, 'localhost')],
            }
            rc, out = h.run([sipcred, 'publish', BOB, '--resolver', resolver, '--ca', dep.ca,
                             '--cert-only', '--password-file', pw, '--etag-file',
                             os.path.join(dep.dir, 'bob.etag')], timeout=60)
            tap.ok(rc == 0 and 'trying the next server' in out,
                   'publish finds the daemon by NAPTR and SRV, past a dead first target (%s)'
                   % rc)
            if rc != 0:
                tap.diag(out)
            tap.ok(dns.asked[:2] == [('example.com', T_NAPTR),
                                     ('_sips._tcp.sip.example.com', T_SRV)],
                   'NAPTR of the domain first, then SRV at the SIPS+D2T replacement (%s)'
                   % dns.asked[:3])
            rc, out = h.run([sipcred, 'fetch', BOB, '--resolver', resolver, '--ca', dep.ca,
                             '--cache-lifetime', '0'], timeout=60)
            tap.ok(rc == 0 and '-----BEGIN CERTIFICATE-----' in out,
                   'fetch located the same way gets the certificate (%s)' % rc)

            # No NAPTR at all: the _sips._tcp SRV of the domain.
            dns.asked.clear()
            dns.zone = {('_sips._tcp.example.com', T_SRV): [srv_rdata(0, 0, dep.port,
                                                                       'localhost')]}
            rc, out = h.run([sipcred, 'fetch', BOB, '--resolver', resolver, '--ca', dep.ca,
                             '--cache-lifetime', '0'], timeout=60)
            tap.ok(rc == 0 and ('_sips._tcp.example.com', T_SRV) in dns.asked,
                   'without NAPTR records, the _sips._tcp SRV records lead to the daemon (%s)'
                   % rc)

            # NAPTR records without SIPS+D2T: the domain offers no SIPS over TCP.
            dns.zone = {('example.com', T_NAPTR): [
                naptr_rdata(10, 10, 's', 'SIP+D2T', '_sip._tcp.example.com')]}
            rc, out = h.run([sipcred, 'fetch', BOB, '--resolver', resolver, '--ca', dep.ca,
                             '--cache-lifetime', '0'], timeout=60)
            tap.ok(rc == 3 and 'none for SIPS over TCP' in out,
                   'NAPTR records without SIPS+D2T: status 3 and why (%s)' % rc)

            # The SRV target's own name does not count: the server proves the AOR's domain.
            dns.zone = {('_sips._tcp.example.com', T_SRV): [srv_rdata(0, 0, dep.port,
                                                                       'localhost')]}
            rc, out = h.run([sipcred, 'fetch', BOB, '--resolver', resolver, '--ca', dep.ca,
                             '--tls-name', 'localhost', '--cache-lifetime', '0'], timeout=60)
            tap.ok(rc == 4, 'the server is verified for the AOR domain (here forced to the SRV '
                   'target name, which the certificate lacks): status 4 (%s)' % rc)
        finally:
            dns.stop()


if __name__ == '__main__':
    h.run_tap(main)
