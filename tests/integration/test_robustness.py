#!/usr/bin/env python3
"""Hostile and broken peers get a clean close, within the configured limits, and the daemon
keeps serving: garbage instead of TLS, garbage over TLS, half a handshake (torn or left
hanging), half a SIP message (torn or left hanging), a slowloris client that never ends its
headers, an oversized message, too many connections from one address. CRLF keep-alives get their pong. After each case a SUBSCRIBE on a
new connection must still get 200 and alice's certificate."""

import os
import socket
import ssl
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

ALICE = 'sip:alice@example.com'
HANDSHAKE_S = 2.0
IDLE_S = 3.0
MESSAGE_S = 5.0  # message-timeout: longer than IDLE_S, so the two cannot be confused
DRIP_S = 0.5     # a slowloris byte this often keeps the idle timeout from firing
MAX_MESSAGE = 4096
PER_IP = 4
SLACK_S = 3.0
QUICK_S = 1.5  # well below IDLE_S: a close this fast is not the idle timeout's


def raw_closed(sock, timeout):
    """'eof' or 'reset' when the peer closes within timeout, else 'open'."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                if not sock.recv(65536):
                    return 'eof'
            except (socket.timeout, TimeoutError):
                return 'open'
    except ConnectionResetError:
        return 'reset'
    except OSError:
        return 'reset'
    return 'open'


def serves(dep, der):
    return h.serves(dep, ALICE, der)


def half_subscribe(c):
    msg = h.request('SUBSCRIBE', ALICE, c.local_port, extra=['Event: certificate',
                                                             'Expires: 60'])
    return msg[:len(msg) // 2]


def main(tap):
    h.require_tools('certtool')
    tls = {'handshake-timeout': int(HANDSHAKE_S * 1000), 'idle-timeout': int(IDLE_S * 1000),
           'message-timeout': int(MESSAGE_S * 1000),
           'max-message-size': MAX_MESSAGE, 'max-connections-per-ip': PER_IP}
    with h.Deployment(tap, users=(ALICE,), tls=tls) as dep:
        dep.import_certs()
        dep.start()
        der = dep.export_der(ALICE)
        tap.ok(serves(dep, der), 'before: SUBSCRIBE gets 200 and the certificate')

        def after(case):
            tap.ok(dep.alive() and serves(dep, der),
                   'after %s: the daemon still serves a SUBSCRIBE' % case)

        # 1. Plain-text garbage where a ClientHello belongs.
        with socket.create_connection((h.HOST, dep.port), timeout=5) as s:
            s.sendall(b'GET / HTTP/1.0\r\n\r\n' + os.urandom(512))
            how = raw_closed(s, SLACK_S)
        tap.ok(how != 'open', 'garbage instead of a TLS handshake: the connection is closed '
                              '(%s)' % how)
        after('garbage before TLS')

        # 2. Binary garbage inside TLS.
        with dep.connect() as c:
            c.send(bytes(range(256)) * 4 + b'\r\n\r\n' + os.urandom(256))
            closed = c.wait_closed(IDLE_S + SLACK_S)
            first = c.buf[:40]
        tap.ok(closed, 'garbage over TLS: the connection is closed (first bytes back: %r)'
               % first)
        after('garbage over TLS')

        # 3. Half a ClientHello, then the client disappears.
        hello = h.client_hello(0x0303, [0xc02f, 0x002f], dep.domain)
        with socket.create_connection((h.HOST, dep.port), timeout=5) as s:
            s.sendall(hello[:len(hello) // 2])
        after('a torn handshake')

        # 4. Half a ClientHello, then silence: closed by the handshake timeout.
        with socket.create_connection((h.HOST, dep.port), timeout=5) as s:
            s.sendall(hello[:len(hello) // 2])
            t0 = time.monotonic()
            how = raw_closed(s, HANDSHAKE_S + SLACK_S)
            took = time.monotonic() - t0
        tap.ok(how != 'open', 'a hanging handshake is closed by handshake-timeout=%gs (%s after '
                              '%.1fs)' % (HANDSHAKE_S, how, took))
        after('a hanging handshake')

        # 5. Half a SIP message, then the client disappears.
        with dep.connect() as c:
            c.send(half_subscribe(c))
        after('half a SIP message then close')

        # 6. Half a SIP message, then silence: closed by the idle timeout.
        with dep.connect() as c:
            c.send(half_subscribe(c))
            t0 = time.monotonic()
            closed = c.wait_closed(IDLE_S + SLACK_S)
            took = time.monotonic() - t0
        tap.ok(closed, 'half a SIP message then silence: closed by idle-timeout=%gs (after '
                       '%.1fs)' % (IDLE_S, took))
        after('half a SIP message then silence')

        # 6b. Slowloris: the headers of a SUBSCRIBE without the empty line that ends them, then
        # one more header a byte every DRIP_S. The idle timeout never fires; message-timeout
        # ends it with a 400 that says why, and closes the connection.
        with dep.connect() as c:
            msg = h.request('SUBSCRIBE', ALICE, c.local_port, extra=['Event: certificate',
                                                                    'Expires: 60'])
            msg = msg.encode() if isinstance(msg, str) else msg
            assert msg.endswith(b'\r\n\r\n')
            c.send(msg[:-2])
            drip = b'X-Slow: ' + b'z' * 1000
            t0 = time.monotonic()
            sent = 0
            closed = False
            # Bounded: at most two message-timeouts of drips.
            while time.monotonic() - t0 < 2 * MESSAGE_S and sent < len(drip):
                try:
                    c.send(drip[sent:sent + 1])
                except (OSError, ssl.SSLError):
                    closed = True
                    break
                sent += 1
                if c.wait_closed(DRIP_S):
                    closed = True
                    break
            took = time.monotonic() - t0
            if not closed:
                closed = c.wait_closed(SLACK_S)
            first = c.buf.split(b'\r\n', 1)[0].decode('utf-8', 'replace')
        tap.ok(closed and first == 'SIP/2.0 400 Incomplete message when message-timeout expired'
               and took >= MESSAGE_S * 0.8,
               'slowloris (a header byte every %gs, %d bytes): closed by message-timeout=%gs '
               'after %.1fs with %r' % (DRIP_S, sent, MESSAGE_S, took, first))
        after('a slowloris client')

        # 7. A silent TLS connection is closed by the idle timeout too.
        with dep.connect() as c:
            t0 = time.monotonic()
            closed = c.wait_closed(IDLE_S + SLACK_S)
            took = time.monotonic() - t0
        tap.ok(closed and took >= IDLE_S * 0.5,
               'a silent connection is closed by idle-timeout=%gs (after %.1fs)'
               % (IDLE_S, took))

        # 8. CRLF keep-alive (RFC 5626): a double CRLF gets a single CRLF back.
        with dep.connect() as c:
            c.send(b'\r\n\r\n')
            pong = b''
            deadline = time.monotonic() + 2.0
            try:
                while len(pong) < 2 and time.monotonic() < deadline:
                    c.sock.settimeout(max(0.05, deadline - time.monotonic()))
                    pong += c.sock.recv(16)
            except (socket.timeout, TimeoutError, ssl.SSLError, OSError):
                pass
        tap.ok(pong == b'\r\n', 'a CRLFCRLF keep-alive gets a CRLF pong (%r)' % pong)

        # 9. A message larger than max-message-size.
        with dep.connect() as c:
            big = h.request('SUBSCRIBE', ALICE, c.local_port,
                            extra=['Event: certificate', 'X-Padding: ' + 'a' * MAX_MESSAGE])
            c.send(big)
            closed = c.wait_closed(QUICK_S)
            first = c.buf.split(b'\r\n', 1)[0][:60]
        tap.ok(closed, 'a %d-byte message (max-message-size=%d) gets a close (first line back: '
                       '%r)' % (len(big), MAX_MESSAGE, first))
        after('an oversized message')

        # 10. More connections from one address than max-connections-per-ip.
        time.sleep(0.5)  # let the daemon notice the closes above
        held = []
        try:
            for _ in range(PER_IP):
                held.append(dep.connect())
            try:
                extra = dep.connect(timeout=5)
                refused = extra.wait_closed(QUICK_S)
                extra.close()
            except (OSError, ssl.SSLError):
                refused = True
            tap.ok(refused, 'connection %d from one address (max-connections-per-ip=%d) is '
                            'closed' % (PER_IP + 1, PER_IP))
        finally:
            for c in held:
                c.close()
        time.sleep(0.5)
        after('the per-address limit was reached')

        tap.ok(h.options_ok(dep), 'the daemon still answers OPTIONS with 200')
        tap.ok(dep.stop() == 0, 'sipcredd exits 0 on SIGTERM')


h.run_tap(main)
