"""sipcredharness -- what the integration tests share.

A TAP emitter, a throw-away deployment of the built sipcredd (test CA, configuration, imported
certificates, a free port on 127.0.0.1), a small SIP-over-TLS client, a hand-made TLS
ClientHello, and bookkeeping that stops every process a test started, even on failure.

Python 3 standard library only. Every wait is bounded.
"""

import atexit
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.environ.get('SIPCRED_SOURCE_ROOT') or os.path.dirname(os.path.dirname(HERE))
BUILD_ROOT = os.environ.get('SIPCRED_BUILD_ROOT')
HOST = '127.0.0.1'


# --------------------------------------------------------------------------------------------
# TAP

class Tap:
    """A tiny TAP producer: the plan is printed at the end."""

    def __init__(self):
        self.n = 0
        self.failures = 0

    @staticmethod
    def _clean(text):
        # '#' starts a directive in TAP; newlines would end the line.
        return ' '.join(str(text).replace('#', 'no.').split())

    def ok(self, cond, desc, todo=None):
        self.n += 1
        line = '%s %d - %s' % ('ok' if cond else 'not ok', self.n, self._clean(desc))
        if todo:
            line += ' # TODO ' + self._clean(todo)
        elif not cond:
            self.failures += 1
        print(line, flush=True)
        return bool(cond)

    def skip(self, desc, reason):
        self.n += 1
        print('ok %d - %s # SKIP %s' % (self.n, self._clean(desc), self._clean(reason)),
              flush=True)

    def diag(self, text):
        for line in str(text).splitlines() or ['']:
            print('# ' + line, flush=True)

    @staticmethod
    def skip_all(reason):
        print('1..0 # SKIP ' + Tap._clean(reason), flush=True)
        sys.exit(0)

    def done(self):
        print('1..%d' % self.n, flush=True)


def require_tools(*names):
    """Skip the whole test when an external tool is missing (and only then)."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        Tap.skip_all('missing tool(s): ' + ', '.join(missing))


def run_tap(main):
    """Runs main(tap); an exception becomes a failed test point, and the plan always ends."""
    tap = Tap()
    try:
        main(tap)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: B902 -- report anything, then clean up
        tap.ok(False, 'unexpected %s: %s' % (type(exc).__name__, exc))
        tap.diag(traceback.format_exc())
    finally:
        stop_all()
    if IDENTITY.n_checked > 0:
        tap.ok(not IDENTITY.failures,
               'every NOTIFY and MESSAGE received (%d) carried an Identity that sipcred '
               'identity verify '
               'accepts%s' % (IDENTITY.n_checked, '; failures: %s' % IDENTITY.failures[:3]
                              if IDENTITY.failures else ''))
    tap.done()
    sys.exit(0)


class IdentityCheck:
    """Checks the RFC 4474 Identity of every NOTIFY and relayed MESSAGE a SipConn reads, with
    our own verifier
    (sipcred identity verify) against the certificate of the From domain."""

    def __init__(self):
        self.n_checked = 0
        self.failures = []

    def check(self, msg, cert_dir):
        host = uri_of(msg.get('from', '')).split('@')[-1].split(';')[0].split(':')[0].lower()
        pem = os.path.join(cert_dir, host + '.pem')
        if not os.path.exists(pem):
            return
        self.n_checked += 1
        rc, out = run([binary('sipcred'), 'identity', 'verify', '-', '--cert', pem],
                      input_bytes=msg.raw)
        if rc != 0:
            self.failures.append(out.strip()[-200:])


IDENTITY = IdentityCheck()


# --------------------------------------------------------------------------------------------
# Processes: everything started here is stopped by PID, whatever happens.

_children = []


def spawn(argv, **kwargs):
    """subprocess.Popen, remembered so that stop_all() can end it."""
    proc = subprocess.Popen(argv, **kwargs)
    _children.append(proc)
    return proc


def stop(proc, grace=5.0):
    """SIGTERM, a bounded wait, then SIGKILL. Returns the exit status (negative: signal)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc in _children:
        _children.remove(proc)
    return proc.returncode


def stop_all():
    for proc in list(_children):
        try:
            stop(proc)
        except Exception:  # noqa: BLE001 -- keep stopping the others
            pass


def _on_signal(signum, frame):
    # meson sends SIGTERM on timeout: unwind so that finally blocks and atexit run.
    raise SystemExit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def run(argv, timeout=30, input_bytes=None):
    """Runs a short command; returns (status, combined output as text)."""
    try:
        res = subprocess.run(argv, input=input_bytes,
                             stdin=None if input_bytes is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.output or b''
        return None, out.decode('utf-8', 'replace') + '\n[timed out after %ss]' % timeout
    return res.returncode, res.stdout.decode('utf-8', 'replace')


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, deadline_s, proc=None):
    """True once HOST:port accepts a TCP connection; False on timeout or if proc exits."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tail(path, lines=40):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return ''
    return '\n'.join(data.decode('utf-8', 'replace').splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# A throw-away deployment of the built daemon.

def binary(name):
    if not BUILD_ROOT:
        raise RuntimeError('SIPCRED_BUILD_ROOT is not set (run through meson test)')
    path = os.path.join(BUILD_ROOT, 'server', name)
    if not os.access(path, os.X_OK):
        raise RuntimeError('not built: ' + path)
    return path


class Deployment:
    """Temp dir, test CA, configuration, imported certificates and a running sipcredd.

    Use as a context manager: the daemon is always stopped and, unless the test failed or
    SIPCRED_KEEP_TMP is set, the directory removed.
    """

    def __init__(self, tap, domains=('example.com',), users=('sip:alice@example.com',),
                 tls=None, certificate=None, extra=''):
        self.tap = tap
        self.domains = list(domains)
        self.domain = self.domains[0]
        self.users = list(users)
        self.dir = tempfile.mkdtemp(prefix='sipcred-it-')
        self.port = free_port()
        self.conf = os.path.join(self.dir, 'sipcredd.conf')
        self.log = os.path.join(self.dir, 'sipcredd.log')
        self.ca = os.path.join(self.dir, 'ca.pem')
        self.proc = None
        self._failures_at_start = tap.failures
        # The client commands keep a certificate cache and ETags under the XDG
        # directories: keep them in this deployment, not in the tester's home.
        os.environ['XDG_CACHE_HOME'] = os.path.join(self.dir, 'xdg-cache')
        os.environ['XDG_STATE_HOME'] = os.path.join(self.dir, 'xdg-state')
        self.make_certs()
        self.write_config(tls or {}, certificate or {}, extra)

    # -- setup --

    def make_certs(self):
        script = os.path.join(SOURCE_ROOT, 'data', 'make-test-ca.sh')
        rc, out = run(['bash', script, self.dir] + self.domains + ['--'] + self.users,
                      timeout=120)
        if rc != 0:
            raise RuntimeError('make-test-ca.sh failed:\n' + out)

    def user_pem(self, aor):
        user = aor.split(':', 1)[1].split('@', 1)[0]
        return os.path.join(self.dir, user + '.pem')

    def write_config(self, tls, certificate, extra):
        lines = ['[server]',
                 'domains=' + ';'.join(self.domains),
                 'listen=%s:%d' % (HOST, self.port),
                 'state-dir=state',
                 'shutdown-timeout=2000',
                 '', '[tls]']
        lines += ['%s=%s' % kv for kv in tls.items()]
        for d in self.domains:
            lines += ['', '[domain %s]' % d, 'certificate=%s.pem' % d, 'key=%s.key' % d]
        if certificate:
            lines += ['', '[certificate]'] + ['%s=%s' % kv for kv in certificate.items()]
        with open(self.conf, 'w') as f:
            f.write('\n'.join(lines) + '\n' + extra)

    def sipcred(self, *args, timeout=30):
        return run([binary('sipcred'), '--config', self.conf] + list(args), timeout=timeout)

    def import_certs(self):
        for aor in self.users:
            rc, out = self.sipcred('cred', 'import', aor, self.user_pem(aor))
            if rc != 0:
                raise RuntimeError('sipcred cred import %s failed (%s):\n%s' % (aor, rc, out))

    def export_der(self, aor):
        path = os.path.join(self.dir, 'export-%d.der' % random.randrange(1 << 30))
        rc, out = self.sipcred('cred', 'export', aor, path)
        if rc != 0:
            raise RuntimeError('sipcred cred export %s failed (%s):\n%s' % (aor, rc, out))
        with open(path, 'rb') as f:
            return f.read()

    # -- the daemon --

    def start(self, ready_s=15.0):
        self.logf = open(self.log, 'ab')
        self.proc = spawn([binary('sipcredd'), '--config', self.conf, '--verbose'],
                          stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        if not wait_port(self.port, ready_s, self.proc):
            status = self.proc.poll()
            self.tap.diag(tail(self.log))
            raise RuntimeError('sipcredd not ready on port %d within %ss (exit status %s)'
                               % (self.port, ready_s, status))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return None
        status = stop(self.proc)
        self.proc = None
        self.logf.close()
        return status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        failed = exc[0] is not None or self.tap.failures > self._failures_at_start
        if failed or os.environ.get('SIPCRED_KEEP_TMP'):
            self.tap.diag('daemon log (%s), last lines:' % self.log)
            self.tap.diag(tail(self.log))
            self.tap.diag('kept ' + self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    # -- clients --

    def connect(self, sni=None, timeout=5.0, source=None):
        """source: the local address to connect from, e.g. '127.0.0.2' (Linux routes all of
        127/8 to lo), so that a test can play several client hosts."""
        conn = SipConn(self.port, sni or self.domain, self.ca, timeout, source=source)
        conn.cert_dir = self.dir  # DOMAIN.pem: the Identity of its NOTIFYs is checked
        return conn


# --------------------------------------------------------------------------------------------
# SIP over TLS

COMPACT = {'l': 'content-length', 'c': 'content-type', 'f': 'from', 't': 'to',
           'i': 'call-id', 'v': 'via', 'm': 'contact', 'o': 'event', 'e': 'content-encoding',
           's': 'subject', 'k': 'supported', 'u': 'allow-events', 'r': 'refer-to'}


class SipMessage:
    def __init__(self, start, headers, body):
        self.start = start          # the start line, text
        self.headers = headers      # [(lower-case long name, value)]
        self.body = body            # bytes
        parts = start.split(' ', 2)
        self.is_request = not start.startswith('SIP/')
        self.method = parts[0] if self.is_request else None
        self.code = None
        self.reason = None
        if not self.is_request and len(parts) >= 2 and parts[1].isdigit():
            self.code = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ''

    def get(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def get_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def start_line_sane(self):
        """A reason phrase of printable text (garbage here hints at freed memory)."""
        return self.start.isprintable() and '\ufffd' not in self.start

    def cseq_method(self):
        v = self.get('cseq', '')
        return v.split()[-1] if v.split() else ''

    def __repr__(self):
        return '<%s, %d body bytes>' % (self.start, len(self.body))


def parse_head(head):
    """Start line and headers of one message head (bytes without the blank line)."""
    text = head.decode('utf-8', 'replace')
    lines = text.split('\r\n')
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if line[:1] in (' ', '\t') and headers:   # folded continuation
            k, v = headers[-1]
            headers[-1] = (k, v + ' ' + line.strip())
            continue
        if ':' not in line:
            continue
        k, v = line.split(':', 1)
        k = k.strip().lower()
        headers.append((COMPACT.get(k, k), v.strip()))
    return start, headers


def split_message(buf):
    """(message, rest) when buf holds a whole message, else (None, buf). Leading CRLFs
    (keep-alive pongs) are dropped."""
    while buf.startswith(b'\r\n'):
        buf = buf[2:]
    end = buf.find(b'\r\n\r\n')
    if end < 0:
        return None, buf
    start, headers = parse_head(buf[:end])
    length = 0
    for k, v in headers:
        if k == 'content-length':
            try:
                length = int(v)
            except ValueError:
                length = 0
    body_start = end + 4
    if len(buf) < body_start + length:
        return None, buf
    msg = SipMessage(start, headers, buf[body_start:body_start + length])
    msg.raw = buf[:body_start + length]
    return msg, buf[body_start + length:]


def parse_stream(data):
    """All whole messages of a recorded SIP byte stream."""
    out = []
    for _ in range(10000):
        msg, data = split_message(data)
        if msg is None:
            break
        out.append(msg)
    return out


class Closed(Exception):
    pass


class SipConn:
    """One TLS connection to the daemon that verifies its certificate against the test CA."""

    def __init__(self, port, sni, ca, timeout=5.0, source=None):
        raw = socket.create_connection((HOST, port), timeout=timeout,
                                       source_address=(source, 0) if source else None)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = True
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        except Exception:
            raw.close()
            raise
        self.buf = b''
        self.local_port = self.sock.getsockname()[1]
        self.sni = sni
        self.cert_dir = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode('utf-8')
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise TimeoutError from None
        except (ssl.SSLError, ConnectionError) as exc:
            raise Closed(str(exc)) from None
        if not chunk:
            raise Closed('EOF')
        self.buf += chunk

    def read(self, timeout=5.0):
        """The next whole message; TimeoutError or Closed otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            msg, self.buf = split_message(self.buf)
            if msg is not None:
                if msg.is_request and msg.method in ('NOTIFY', 'MESSAGE') and self.cert_dir:
                    IDENTITY.check(msg, self.cert_dir)
                return msg
            self._fill(deadline)

    def first_line(self, timeout=5.0):
        """The first line the server sends ('' when it closes first); TimeoutError if none."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.buf.lstrip(b'\r\n')
            if b'\r\n' in b:
                return b.split(b'\r\n', 1)[0].decode('utf-8', 'replace')
            try:
                self._fill(deadline)
            except Closed:
                return b.decode('utf-8', 'replace') if b else ''

    def wait_closed(self, timeout):
        """True when the server closes the connection within timeout (anything it sends
        first is kept in self.buf)."""
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000):
                self._fill(deadline)
        except Closed:
            return True
        except TimeoutError:
            return False
        return False

    def answer(self, req, code=200, reason='OK'):
        """A response to a request the server sent (NOTIFY)."""
        lines = ['SIP/2.0 %d %s' % (code, reason)]
        for name in ('via', 'from', 'to', 'call-id', 'cseq'):
            for v in req.get_all(name):
                lines.append('%s: %s' % (name.title().replace('Call-Id', 'Call-ID')
                                         .replace('Cseq', 'CSeq'), v))
        lines += ['Content-Length: 0', '', '']
        self.send('\r\n'.join(lines))


def new_id():
    return '%016x' % random.getrandbits(64)


def request(method, ruri, local_port, from_uri='sip:tester@example.com', to_uri=None,
            call_id=None, cseq=1, from_tag=None, to_tag=None, extra=(), body=b'',
            contact=True):
    """A request as a client on a TLS flow would send it; contact=False leaves the Contact
    out (a REGISTER gives its own in @extra)."""
    to_uri = to_uri or ruri
    lines = ['%s %s SIP/2.0' % (method, ruri),
             'Via: SIP/2.0/TLS %s:%d;branch=z9hG4bK%s;rport' % (HOST, local_port, new_id()),
             'Max-Forwards: 70',
             'From: <%s>;tag=%s' % (from_uri, from_tag or new_id()),
             'To: <%s>%s' % (to_uri, ';tag=' + to_tag if to_tag else ''),
             'Call-ID: %s@%s' % (call_id or new_id(), HOST),
             'CSeq: %d %s' % (cseq, method)]
    if contact:
        lines.append('Contact: <sip:tester@%s:%d;transport=tls>' % (HOST, local_port))
    lines += list(extra)
    lines += ['Content-Length: %d' % len(body), '', '']
    return '\r\n'.join(lines).encode('utf-8') + body


def tag_of(header_value):
    m = re.search(r';\s*tag=([^;>\s]+)', header_value or '')
    return m.group(1) if m else None


def uri_of(header_value):
    m = re.search(r'<([^>]*)>', header_value or '')
    return m.group(1) if m else (header_value or '').split(';')[0].strip()


class Subscription:
    """A certificate-event subscription on one SipConn."""

    def __init__(self, conn, aor, event='certificate', accept='application/pkix-cert'):
        self.conn = conn
        self.aor = aor
        self.event = event
        self.accept = accept
        self.call_id = new_id()
        self.from_tag = new_id()
        self.to_tag = None
        self.cseq = 0
        self.target = aor
        self.routes = []

    def send_subscribe(self, expires):
        self.cseq += 1
        extra = ['Event: ' + self.event]
        if expires is not None:  # None: no Expires header, the server's default applies
            extra.append('Expires: %d' % expires)
        if self.accept:
            extra.append('Accept: ' + self.accept)
        extra += ['Route: ' + r for r in self.routes]
        self.conn.send(request('SUBSCRIBE', self.target, self.conn.local_port,
                               to_uri=self.aor, call_id=self.call_id, cseq=self.cseq,
                               from_tag=self.from_tag, to_tag=self.to_tag, extra=extra))

    def exchange(self, expires, want_notify=True, timeout=5.0):
        """Sends SUBSCRIBE; returns (final response, NOTIFY or None). Each NOTIFY is
        answered with 200. Either may arrive first."""
        call_id = self.call_id + '@' + HOST
        self.send_subscribe(expires)
        final = notify = None
        deadline = time.monotonic() + timeout
        while final is None or (want_notify and final.code == 200 and notify is None):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = self.conn.read(left)
            except TimeoutError:
                break
            if msg.get('call-id') != call_id:
                continue
            if msg.is_request:
                if msg.method == 'NOTIFY':
                    self.conn.answer(msg)
                    if notify is None:
                        notify = msg
                        self._learn(msg, from_notify=True)
                continue
            if msg.cseq_method() == 'SUBSCRIBE' and msg.code and msg.code >= 200:
                final = msg
                if msg.code < 300:
                    self._learn(msg, from_notify=False)
        return final, notify

    def _learn(self, msg, from_notify):
        tag = tag_of(msg.get('from' if from_notify else 'to'))
        if tag and not self.to_tag:
            self.to_tag = tag
        contact = msg.get('contact')
        if contact:
            self.target = uri_of(contact)
        rr = msg.get_all('record-route')
        if rr and not self.routes:
            hops = [h.strip() for v in rr for h in v.split(',')]
            self.routes = hops if from_notify else list(reversed(hops))


def serves(dep, aor, der):
    """True when a SUBSCRIBE to @aor's certificate on a new connection gets 200 and a NOTIFY
    whose body is @der: the probe that the daemon still serves after something hostile."""
    try:
        with dep.connect() as c:
            final, notify = Subscription(c, aor).exchange(120)
            return (final is not None and final.code == 200 and notify is not None
                    and notify.body == der)
    except (OSError, TimeoutError, Closed, ssl.SSLError):
        return False


def options_ok(dep, timeout=5.0):
    """True when a new TLS connection gets 200 for an OPTIONS (the liveness probe)."""
    try:
        with dep.connect(timeout=timeout) as c:
            c.send(request('OPTIONS', 'sip:%s' % dep.domain, c.local_port,
                           extra=['Accept: application/sdp']))
            deadline = time.monotonic() + timeout
            while True:
                msg = c.read(max(0.1, deadline - time.monotonic()))
                if not msg.is_request and msg.code and msg.code >= 200:
                    return msg.code == 200
    except (OSError, TimeoutError, Closed, ssl.SSLError):
        return False


# --------------------------------------------------------------------------------------------
# A hand-made TLS ClientHello, for what gnutls-cli can no longer offer (SSL 3.0) and for
# exact control of the offered suites.

def client_hello(version, suites, sni=None, extensions=True):
    body = struct.pack('!H', version) + os.urandom(32) + b'\x00'
    body += struct.pack('!H', 2 * len(suites)) + b''.join(struct.pack('!H', s) for s in suites)
    body += b'\x01\x00'
    exts = b''
    if extensions:
        if sni:
            name = sni.encode('ascii')
            entry = b'\x00' + struct.pack('!H', len(name)) + name
            exts += struct.pack('!HH', 0, len(entry) + 2) + struct.pack('!H', len(entry)) + entry
        groups = struct.pack('!HHH', 0x001d, 0x0017, 0x0018)
        exts += struct.pack('!HHH', 0x000a, len(groups) + 2, len(groups)) + groups
        exts += struct.pack('!HH', 0x000b, 2) + b'\x01\x00'
        if version >= 0x0303:
            algs = struct.pack('!7H', 0x0804, 0x0401, 0x0501, 0x0601, 0x0403, 0x0503, 0x0201)
            exts += struct.pack('!HHH', 0x000d, len(algs) + 2, len(algs)) + algs
        exts += struct.pack('!HH', 0xff01, 1) + b'\x00'
        body += struct.pack('!H', len(exts)) + exts
    hs = b'\x01' + struct.pack('!I', len(body))[1:] + body
    rec_version = 0x0300 if version == 0x0300 else 0x0301
    return b'\x16' + struct.pack('!HH', rec_version, len(hs)) + hs


def hello_answer(port, hello, timeout=5.0):
    """Sends a ClientHello on a new TCP connection. Returns ('server_hello', version, suite),
    ('alert', level, description), ('closed',), ('timeout',) or ('other', bytes)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(hello)
        data = b''
        deadline = time.monotonic() + timeout
        while len(data) < 11:
            left = deadline - time.monotonic()
            if left <= 0:
                return ('timeout',) if not data else ('other', data)
            s.settimeout(left)
            try:
                chunk = s.recv(4096)
            except (socket.timeout, TimeoutError):
                return ('timeout',) if not data else ('other', data)
            except ConnectionError:
                chunk = b''
            if not chunk:
                break
            data += chunk
        if not data:
            return ('closed',)
        if data[0] == 0x15 and len(data) >= 7:
            return ('alert', data[5], data[6])
        if data[0] == 0x16 and len(data) >= 11 and data[5] == 0x02:
            # record(5) type(1) len(3) version(2) random(32) sid_len(1) sid suite(2)
            need = 5 + 4 + 2 + 32 + 1
            while len(data) < need + 1 or len(data) < need + data[need - 1] + 2:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ('other', data)
                s.settimeout(left)
                try:
                    chunk = s.recv(4096)
                except (socket.timeout, TimeoutError, ConnectionError):
                    return ('other', data)
                if not chunk:
                    return ('other', data)
                data += chunk
            version = struct.unpack('!H', data[9:11])[0]
            sid_len = data[need - 1]
            suite = struct.unpack('!H', data[need + sid_len:need + sid_len + 2])[0]
            return ('server_hello', version, suite)
        return ('other', data)
