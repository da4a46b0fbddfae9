#!/usr/bin/env python3
"""An independent SIP stack subscribes to alice's certificate: SIPp (TCP) through stunnel
(TLS client, verifying sipcredd's certificate against the test CA with SNI = the domain).
SIPp checks the 200, the NOTIFY headers, the unsubscribe and the terminated NOTIFY. A small
relay between SIPp and stunnel records the plaintext, so that the NOTIFY body bytes can be
compared with the DER that `sipcred cred export` gives (SIPp's own logs mangle binary)."""

import os
import select
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

ALICE = 'sip:alice@example.com'


class Relay:
    """Forwards one TCP client to upstream and records both directions. Bounded: it stops
    when either side closes, when stop() is called, or after max_s seconds."""

    def __init__(self, upstream_port, max_s=60.0):
        self.upstream_port = upstream_port
        self.max_s = max_s
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((h.HOST, 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.error = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        end = time.monotonic() + self.max_s
        try:
            self.lsock.settimeout(self.max_s)
            client, _ = self.lsock.accept()
            upstream = socket.create_connection((h.HOST, self.upstream_port), timeout=5)
            with client, upstream:
                peers = {client: (upstream, self.to_server), upstream: (client, self.to_client)}
                while not self._stop.is_set() and time.monotonic() < end:
                    ready, _, _ = select.select(list(peers), [], [], 0.2)
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        other, record = peers[s]
                        record += data
                        other.sendall(data)
        except OSError as exc:
            self.error = exc
        finally:
            self.lsock.close()

    def stop(self):
        self._stop.set()
        self.thread.join(5)


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


def main(tap):
    h.require_tools('certtool', 'sipp', 'stunnel4')
    with h.Deployment(tap, users=(ALICE,)) as dep:
        dep.import_certs()
        dep.start()
        der = dep.export_der(ALICE)

        stunnel_port = h.free_port()
        stunnel_log = os.path.join(dep.dir, 'stunnel.log')
        with open(stunnel_log, 'wb') as logf:
            stunnel = h.spawn(['stunnel4', write_stunnel_conf(dep, stunnel_port)],
                              stdin=h.subprocess.DEVNULL, stdout=logf, stderr=logf)
        if not h.wait_port(stunnel_port, 10, stunnel):
            tap.diag(h.tail(stunnel_log))
            raise RuntimeError('stunnel did not start')

        relay = Relay(stunnel_port)
        scenario = os.path.join(h.HERE, 'subscribe-certificate.xml')
        sipp_out = os.path.join(dep.dir, 'sipp.out')
        err_file = os.path.join(dep.dir, 'sipp-errors.log')
        argv = ['sipp', '-sf', scenario, '-t', 't1', '-m', '1', '-l', '1',
                '-s', 'alice', '-key', 'domain', dep.domain,
                '-i', h.HOST, '-p', str(h.free_port()),
                '-recv_timeout', '10000', '-timeout', '30s', '-timeout_error',
                '-nostdin', '-trace_err', '-error_file', err_file,
                '%s:%d' % (h.HOST, relay.port)]
        with open(sipp_out, 'wb') as outf:
            sipp = h.spawn(argv, stdin=h.subprocess.DEVNULL, stdout=outf, stderr=outf,
                           cwd=dep.dir)
            try:
                status = sipp.wait(timeout=45)
            except h.subprocess.TimeoutExpired:
                status = None
            h.stop(sipp)
        relay.stop()
        h.stop(stunnel)

        if not tap.ok(status == 0, 'SIPp runs the scenario: 200, NOTIFY with pkix-cert, '
                                   'unsubscribe, terminated NOTIFY (exit status %s)' % status):
            tap.diag(h.tail(err_file, 30))
            tap.diag(h.tail(sipp_out, 15))
        tap.ok(b'Certificate accepted' in open(stunnel_log, 'rb').read(),
               'stunnel verified the server certificate against the test CA')

        received = h.parse_stream(bytes(relay.to_client))
        notifies = [m for m in received if m.is_request and m.method == 'NOTIFY']
        tap.ok(len(notifies) == 2, 'two NOTIFYs crossed the relay (%d)' % len(notifies))
        if notifies:
            tap.ok(notifies[0].body == der and len(der) > 0,
                   'the first NOTIFY body equals `sipcred cred export` byte for byte '
                   '(%d vs %d bytes)' % (len(notifies[0].body), len(der)))
        else:
            tap.ok(False, 'the first NOTIFY body equals `sipcred cred export`')
        # The edge's public view: TLS Via and sips: Contact on what the server originates,
        # and no trace of the internal TCP hop (flow tokens, maddr, transport=tcp).
        headers = ' '.join(v for m in received for _, v in m.headers).lower()
        public = (all(m.get('via', '').upper().startswith('SIP/2.0/TLS ') for m in notifies)
                  and all((m.get('contact') or '<sips:').startswith('<sips:')
                          for m in received)
                  and not any(w in headers for w in ('flow=', 'maddr=', 'transport=tcp')))
        tap.ok(bool(received) and public,
               'what the client sees is TLS and sips: only, no internal hop')
        tap.ok(h.options_ok(dep), 'the daemon still answers OPTIONS with 200')


h.run_tap(main)
