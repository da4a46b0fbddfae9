#!/usr/bin/env python3
"""run-soak.py -- the bounded soak test of issue 10.

Starts the sipcredd of the build it is given (the ASan/UBSan build for the real run) with a
generated configuration and several users, then for --duration seconds runs churn from several
client threads, each on its own TLS connections:

  connect      TLS connect, OPTIONS, disconnect
  certsub      certificate SUBSCRIBE to any user, first NOTIFY, unsubscribe (Expires: 0)
  abandon      certificate SUBSCRIBE with a short Expires, then disconnect without
               unsubscribing: the daemon ends it on expiry (its NOTIFY finds no flow)
  credsub      credential SUBSCRIBE to the worker's own AOR with digest, NOTIFY, unsubscribe
  publish      credential PUBLISH of a new certificate (alone or with its PKCS#8) with digest
  unpublish    PUBLISH Expires: 0 with SIP-If-Match (removal over SIP)
  clirevoke    `sipcred cred revoke AOR` (removal by the administrator)
  register     REGISTER with digest, a MESSAGE to the user itself, REGISTER Expires: 0

plus one watcher connection that holds a certificate subscription to every user for the whole
run and answers every NOTIFY. Each AOR belongs to one worker, so the order of its PUBLISHes
and removals is known: every acknowledged PUBLISH (AOR, ETag, certificate) and every removal is
recorded, and at the end the store must hold exactly the last acknowledged state of each AOR.

Every --interval seconds it samples the daemon: VmRSS and RssAnon (/proc/PID/status), open fds
(/proc/PID/fd), and from `sipcred stats` nua handles, subscriptions, connections and flows.
Samples go to soak-samples.csv, the result to soak-summary.md (both in --out).

Pass criteria (TAP on stdout; exit status 1 when one fails):
  - RSS after warm-up (the first --warmup fraction of the run) is flat: the median VmRSS of the
    last fifth of the run exceeds the median of the first fifth after warm-up by less than
    --rss-bound-kb (4096) or --rss-bound-pct (2) percent, whichever is larger (not judged with
    --smoke; see tests/soak/README.md for why these bounds);
  - with the clients idle at the end, open fds and nua handles are back at their baseline
    (measured idle after a priming round of every operation) and no subscription or
    connection is left;
  - every acknowledged PUBLISH is in the store at the end (the last one per AOR, or its
    acknowledged removal);
  - no client operation failed unexpectedly;
  - the daemon exits 0 on SIGTERM and its log holds no AddressSanitizer, LeakSanitizer or
    UBSan report.

Python 3 standard library only. Every loop is bounded in count and time; every process started
here is stopped by its PID.
"""

import argparse
import csv
import datetime
import os
import platform
import random
import re
import ssl
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.environ.get('SIPCRED_SOURCE_ROOT') or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_ROOT, 'tests', 'integration'))
sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
import regclient  # noqa: E402

DOMAIN = 'example.com'
CERTS_PER_USER = 4
ABANDON_EXPIRES = 5          # [certificate] min-expires of the soak configuration
SANITIZER_PATTERNS = (r'ERROR: AddressSanitizer', r'ERROR: LeakSanitizer', r'runtime error:',
                      r'SUMMARY: \w+Sanitizer', r'UndefinedBehaviorSanitizer')
CSV_FIELDS = ['t_s', 'phase', 'rss_kb', 'rss_anon_kb', 'fds', 'nua_handles',
              'subscriptions_certificate', 'subscriptions_credential', 'connections', 'flows',
              'ops_total']

# Relative weights of the operations a worker picks from.
WEIGHTS = {'connect': 3, 'certsub': 4, 'abandon': 1, 'credsub': 2, 'publish': 5,
           'unpublish': 1, 'clirevoke': 1, 'register': 2}


def password_of(aor):
    return 'soak-%s-secret' % aor.split(':', 1)[1].split('@', 1)[0]


def user_of(aor):
    return aor.split(':', 1)[1].split('@', 1)[0]


# --------------------------------------------------------------------------------------------
# /proc and `sipcred stats`

def proc_status(pid):
    out = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            k, _, v = line.partition(':')
            if k in ('VmRSS', 'RssAnon'):
                out[k] = int(v.split()[0])
    return out


def proc_fds(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


def stats(dep):
    rc, out = dep.sipcred('stats', timeout=20)
    if rc != 0:
        return {}
    got = {}
    for line in out.splitlines():
        if line and not line.startswith('#'):
            name, _, value = line.rpartition(' ')
            try:
                got[name] = int(value)
            except ValueError:
                pass
    return got


# --------------------------------------------------------------------------------------------
# Certificates, made ahead with certtool: CERTS_PER_USER self-signed certificates per user on
# the user's key from make-test-ca.sh, and that key as encrypted PKCS#8.

def make_pool(dep, aors):
    pool = {}
    for aor in aors:
        user = user_of(aor)
        key = os.path.join(dep.dir, user + '.key')
        certs = []
        for i in range(CERTS_PER_USER):
            tmpl = os.path.join(dep.dir, 'pool-%s-%d.tmpl' % (user, i))
            with open(tmpl, 'w') as f:
                f.write('cn = "%s"\nuri = "%s"\nserial = %d\nexpiration_days = 30\n'
                        'signing_key\nencryption_key\n' % (user, aor, 1000 + i))
            der = os.path.join(dep.dir, 'pool-%s-%d.der' % (user, i))
            rc, out = h.run(['certtool', '--generate-self-signed', '--load-privkey', key,
                             '--template', tmpl, '--outder', '--outfile', der], timeout=60)
            if rc != 0:
                raise RuntimeError('certtool: ' + out)
            with open(der, 'rb') as f:
                certs.append(f.read())
        p8 = os.path.join(dep.dir, 'pool-%s.p8' % user)
        rc, out = h.run(['certtool', '--to-p8', '--load-privkey', key, '--password',
                         'soak-device-pass', '--pkcs-cipher', 'aes-128', '--outder',
                         '--outfile', p8], timeout=60)
        if rc != 0:
            raise RuntimeError('certtool: ' + out)
        with open(p8, 'rb') as f:
            pool[aor] = (certs, f.read())
    return pool


# --------------------------------------------------------------------------------------------
# Bookkeeping shared by the threads

class Ledger:
    """Operations done and failed per kind, and per AOR the history of its credential."""

    def __init__(self, aors):
        self.lock = threading.Lock()
        self.ok = {k: 0 for k in WEIGHTS}
        self.failed = {k: 0 for k in WEIGHTS}
        self.failures = []           # (kind, text), the first few
        # Per AOR: the last acknowledged state ('cert', der, etag) or ('absent',), and the
        # states a request without an answer may have left (it timed out).
        self.last = {a: ('absent', None, None) for a in aors}
        self.maybe = {a: [] for a in aors}
        self.publishes_acked = 0
        self.removals_acked = 0
        self.notifies_watched = 0

    def done(self, kind):
        with self.lock:
            self.ok[kind] += 1

    def fail(self, kind, text):
        with self.lock:
            self.failed[kind] += 1
            if len(self.failures) < 20:
                self.failures.append((kind, str(text)[:300]))

    def acked(self, aor, state):
        with self.lock:
            self.last[aor] = state
            self.maybe[aor] = []
            if state[0] == 'cert':
                self.publishes_acked += 1
            else:
                self.removals_acked += 1

    def unknown(self, aor, state):
        with self.lock:
            self.maybe[aor].append(state)

    def total(self):
        with self.lock:
            return sum(self.ok.values()) + sum(self.failed.values())


# --------------------------------------------------------------------------------------------
# Operations: each on its own connection, each bounded by the harness's timeouts.

class Worker:
    def __init__(self, dep, ledger, pool, own, everyone, seed):
        self.dep = dep
        self.ledger = ledger
        self.pool = pool
        self.own = own
        self.everyone = everyone
        self.rnd = random.Random(seed)
        self.etag = {a: None for a in own}    # the ETag of our last acknowledged PUBLISH
        self.next_cert = {a: 0 for a in own}

    def connect(self):
        conn = self.dep.connect(timeout=10.0)
        conn.cert_dir = None  # no `sipcred identity verify` per NOTIFY: too slow for a soak
        return conn

    def run_op(self, kind):
        try:
            err = getattr(self, 'op_' + kind)()
        except (OSError, TimeoutError, h.Closed, ssl.SSLError) as exc:
            err = '%s: %s' % (type(exc).__name__, exc)
        if err:
            self.ledger.fail(kind, err)
        else:
            self.ledger.done(kind)

    def op_connect(self):
        with self.connect() as c:
            c.send(h.request('OPTIONS', 'sip:' + DOMAIN, c.local_port))
            resp = self._final_any(c)
            return None if resp is not None and resp.code == 200 else 'OPTIONS: %s' % resp

    @staticmethod
    def _final_any(conn, timeout=10.0):
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            msg = conn.read(left)
            if msg.is_request:
                if msg.method == 'NOTIFY':
                    conn.answer(msg)
                continue
            if msg.code and msg.code >= 200:
                return msg
        return None

    def op_certsub(self):
        aor = self.rnd.choice(self.everyone)
        with self.connect() as c:
            sub = h.Subscription(c, aor)
            final, notify = sub.exchange(600, timeout=15.0)
            if final is None or final.code != 200 or notify is None:
                return 'certificate SUBSCRIBE: %s, NOTIFY %s' % (
                    final.code if final else None, notify is not None)
            final, notify = sub.exchange(0, timeout=15.0)
            if final is None or final.code != 200:
                return 'unSUBSCRIBE: %s' % (final.code if final else None)
        return None

    def op_abandon(self):
        aor = self.rnd.choice(self.everyone)
        with self.connect() as c:
            sub = h.Subscription(c, aor)
            final, notify = sub.exchange(ABANDON_EXPIRES, timeout=15.0)
            if final is None or final.code != 200:
                return 'certificate SUBSCRIBE: %s' % (final.code if final else None)
        return None  # closed without unsubscribing

    def op_credsub(self):
        aor = self.rnd.choice(self.own)
        with self.connect() as c:
            sub = cc.CredSubscription(c, aor, user_of(aor), password_of(aor))
            final, notify = sub.subscribe(expires=600, timeout=15.0)
            if final is None or final.code != 200 or notify is None:
                return 'credential SUBSCRIBE: %s, NOTIFY %s' % (
                    final.code if final else None, notify is not None)
            final, _ = sub.exchange(0, timeout=15.0)
            if final is None or final.code != 200:
                return 'credential unSUBSCRIBE: %s' % (final.code if final else None)
        return None

    def op_publish(self):
        aor = self.rnd.choice(self.own)
        certs, p8 = self.pool[aor]
        i = self.next_cert[aor]
        self.next_cert[aor] = (i + 1) % len(certs)
        cert = certs[i]
        if self.rnd.random() < 0.5:
            ctype, body = 'application/pkix-cert', cert
        else:
            ctype, body = cc.multipart(cert, p8)
        state = ('cert', cert, None)
        with self.connect() as c:
            pub = cc.Publisher(c, aor, user_of(aor), password_of(aor))
            try:
                resp = pub.publish(body, ctype, expires=3600, if_match=self.etag[aor])
            except (TimeoutError, h.Closed):
                self.ledger.unknown(aor, state)
                self.etag[aor] = None
                raise
            if resp.code == 412 and self.etag[aor]:
                return 'PUBLISH with SIP-If-Match of our last 2xx: 412'
            if not 200 <= resp.code < 300 or not pub.etag:
                return 'PUBLISH: %s %s' % (resp.code, resp.reason)
            self.etag[aor] = pub.etag
            self.ledger.acked(aor, ('cert', cert, pub.etag))
        return None

    def op_unpublish(self):
        aor = self.rnd.choice(self.own)
        if self.etag[aor] is None:
            return self.op_clirevoke(aor)  # nothing of ours to remove over SIP
        with self.connect() as c:
            pub = cc.Publisher(c, aor, user_of(aor), password_of(aor))
            try:
                resp = pub.publish(expires=0, if_match=self.etag[aor])
            except (TimeoutError, h.Closed):
                self.ledger.unknown(aor, ('absent', None, None))
                raise
            if not 200 <= resp.code < 300:
                return 'PUBLISH Expires: 0: %s %s' % (resp.code, resp.reason)
            self.etag[aor] = None
            self.ledger.acked(aor, ('absent', None, None))
        return None

    def op_clirevoke(self, aor=None):
        aor = aor or self.rnd.choice(self.own)
        had = self.ledger.last[aor][0] == 'cert' or self.ledger.maybe[aor]
        rc, out = self.dep.sipcred('cred', 'revoke', aor, timeout=30)
        if rc == 0:
            self.etag[aor] = None
            self.ledger.acked(aor, ('absent', None, None))
            return None
        if not had:
            return None  # nothing stored: refused, as it should be
        return 'sipcred cred revoke: %s %s' % (rc, out.strip()[-200:])

    def op_register(self):
        """REGISTER, a MESSAGE from a second connection of the same user relayed to the
        binding (which answers it), REGISTER Expires: 0."""
        aor = self.rnd.choice(self.own)
        ua = regclient.Ua(self.dep, aor, password_of(aor))
        ua.conn.cert_dir = None
        sender = None
        try:
            resp = ua.register(expires=300)
            if resp.code != 200:
                return 'REGISTER: %s %s' % (resp.code, resp.reason)
            got = []
            stop = threading.Event()

            def device():
                end = time.monotonic() + 30
                while not stop.is_set() and time.monotonic() < end:
                    try:
                        msg = ua.conn.read(0.3)
                    except TimeoutError:
                        continue
                    except (h.Closed, OSError):
                        return
                    if msg.is_request:
                        ua.conn.answer(msg)
                        if msg.method == 'MESSAGE':
                            got.append(msg)

            t = threading.Thread(target=device, daemon=True)
            t.start()
            try:
                sender = regclient.Ua(self.dep, aor, password_of(aor))
                sender.conn.cert_dir = None
                resp = sender.message(aor, b'soak message')
            finally:
                stop.set()
                t.join(timeout=5)
            if resp.code != 200 or len(got) != 1:
                return 'MESSAGE: %s %s, %d relayed' % (resp.code, resp.reason, len(got))
            resp = ua.register(expires=0)
            if resp.code != 200:
                return 'REGISTER Expires: 0: %s %s' % (resp.code, resp.reason)
        finally:
            ua.close()
            if sender is not None:
                sender.close()
        return None

    def loop(self, deadline, stop_event, max_ops, kinds=None):
        kinds = kinds or list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]
        for _ in range(max_ops):
            if stop_event.is_set() or time.monotonic() >= deadline:
                return
            self.run_op(self.rnd.choices(kinds, weights)[0])


class Watcher:
    """One connection with a certificate subscription to every user for the whole run."""

    def __init__(self, dep, ledger, aors):
        self.dep = dep
        self.ledger = ledger
        self.aors = aors
        self.conn = None
        self.subs = []
        self.error = None

    def start(self):
        self.conn = self.dep.connect(timeout=10.0)
        self.conn.cert_dir = None
        for aor in self.aors:
            sub = h.Subscription(self.conn, aor)
            final, _ = sub.exchange(3600, timeout=15.0)
            if final is None or final.code != 200:
                raise RuntimeError('watcher SUBSCRIBE %s: %s' % (aor, final))
            self.subs.append(sub)

    def loop(self, stop_event, deadline):
        for _ in range(10 ** 7):
            if stop_event.is_set() or time.monotonic() >= deadline:
                return
            try:
                msg = self.conn.read(0.5)
            except TimeoutError:
                continue
            except (OSError, h.Closed) as exc:
                self.error = str(exc)
                return
            if msg.is_request and msg.method == 'NOTIFY':
                self.conn.answer(msg)
                with self.ledger.lock:
                    self.ledger.notifies_watched += 1

    def finish(self):
        failed = []
        for sub in self.subs:
            final, _ = sub.exchange(0, timeout=15.0)
            if final is None or final.code != 200:
                failed.append(sub.aor)
        self.conn.close()
        return failed


# --------------------------------------------------------------------------------------------
# Sampling

class Sampler:
    def __init__(self, dep, ledger, path, interval):
        self.dep = dep
        self.ledger = ledger
        self.interval = interval
        self.rows = []
        self.t0 = time.monotonic()
        self.f = open(path, 'w', newline='')
        self.w = csv.DictWriter(self.f, fieldnames=CSV_FIELDS)
        self.w.writeheader()
        self.phase = 'prime'

    def sample(self):
        pid = self.dep.proc.pid
        st = proc_status(pid)
        s = stats(self.dep)
        row = {'t_s': round(time.monotonic() - self.t0, 1), 'phase': self.phase,
               'rss_kb': st.get('VmRSS'), 'rss_anon_kb': st.get('RssAnon'),
               'fds': proc_fds(pid), 'nua_handles': s.get('sipcred_nua_handles'),
               'subscriptions_certificate':
                   s.get('sipcred_subscriptions{package="certificate"}'),
               'subscriptions_credential': s.get('sipcred_subscriptions{package="credential"}'),
               'connections': s.get('sipcred_connections'), 'flows': s.get('sipcred_flows'),
               'ops_total': self.ledger.total()}
        self.rows.append(row)
        self.w.writerow(row)
        self.f.flush()
        return row

    def loop(self, stop_event):
        for _ in range(10 ** 6):
            if stop_event.wait(self.interval):
                return
            try:
                self.sample()
            except (OSError, ValueError):
                return  # the daemon is gone; the end checks say so

    def close(self):
        self.f.close()


def wait_idle(dep, baseline_handles, timeout):
    """Polls `sipcred stats` until no subscription, connection or extra nua handle is left;
    returns the last stats."""
    deadline = time.monotonic() + timeout
    s = {}
    for _ in range(int(timeout) * 2 + 2):
        s = stats(dep)
        if (s.get('sipcred_subscriptions{package="certificate"}') == 0 and
                s.get('sipcred_subscriptions{package="credential"}') == 0 and
                s.get('sipcred_connections') == 0 and
                s.get('sipcred_nua_handles') == baseline_handles):
            return s
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return s


def median_kb(rows, key='rss_kb'):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def slope_kb_per_min(rows, key='rss_kb'):
    pts = [(r['t_s'], r[key]) for r in rows if r.get(key) is not None]
    if len(pts) < 3:
        return None
    mt = statistics.mean(p[0] for p in pts)
    mv = statistics.mean(p[1] for p in pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    if den == 0:
        return None
    return 60.0 * sum((t - mt) * (v - mv) for t, v in pts) / den


# --------------------------------------------------------------------------------------------

def soak_config(args):
    # Generous limits: the soak measures the daemon's resources, not its refusals. Every
    # client is 127.0.0.1. [limits] sets the request-rate limits to 0 (off).
    return '\n'.join([
        '[fanout]', 'min-interval=0',
        '[certificate]', 'min-expires=%d' % ABANDON_EXPIRES,
        '[registrar]', 'min-expires=10',
        # Nonces are remembered for nonce-lifetime (default 300 s): 60 s lets that table reach
        # its steady size within the warm-up of a 10-minute run.
        '[auth]', 'free-failures=1000', 'nonce-lifetime=60',
        '[limits]', 'subscribe-per-source=0', 'subscribe-per-aor=0', 'publish-per-user=0',
        'register-per-user=0', 'message-per-user=0',
        '']) + (args.extra_config or '')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--duration', type=float, default=600.0, help='seconds of churn')
    ap.add_argument('--workers', type=int, default=4)
    ap.add_argument('--users-per-worker', type=int, default=2)
    ap.add_argument('--interval', type=float, default=5.0, help='seconds between samples')
    ap.add_argument('--warmup', type=float, default=0.2, help='fraction of the run')
    ap.add_argument('--rss-bound-kb', type=int, default=4096)
    ap.add_argument('--rss-bound-pct', type=float, default=2.0)
    ap.add_argument('--seed', type=int, default=10)
    ap.add_argument('--out', help='directory for the CSV and the summary')
    ap.add_argument('--extra-config', help='text appended to the daemon configuration')
    ap.add_argument('--ops', default=','.join(WEIGHTS),
                    help='the operations the workers pick from, comma-separated (default: '
                    'all); one kind alone shows which one moves a figure')
    ap.add_argument('--no-watcher', action='store_true',
                    help='no connection holding a subscription to every user')
    ap.add_argument('--smoke', action='store_true',
                    help='the short run of the integration suite: RSS is reported, not judged '
                    '(a run of seconds has no steady state to judge)')
    args = ap.parse_args()
    if not h.BUILD_ROOT:
        sys.exit('run-soak: set SIPCRED_BUILD_ROOT to a build directory (meson test does)')
    out_dir = args.out or os.path.join(h.BUILD_ROOT, 'tests', 'soak', 'out')
    os.makedirs(out_dir, exist_ok=True)
    tap = h.Tap()
    try:
        soak(tap, args, out_dir)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: B902 -- report anything, then clean up
        import traceback
        tap.ok(False, 'unexpected %s: %s' % (type(exc).__name__, exc))
        tap.diag(traceback.format_exc())
    finally:
        h.stop_all()
    tap.done()
    sys.exit(1 if tap.failures else 0)


def soak(tap, args, out_dir):
    h.require_tools('certtool')
    kinds = [k for k in args.ops.split(',') if k]
    if not kinds or any(k not in WEIGHTS for k in kinds):
        raise SystemExit('run-soak: --ops takes some of: ' + ','.join(WEIGHTS))
    aors = ['sip:soak%d@%s' % (i, DOMAIN) for i in range(args.workers * args.users_per_worker)]
    started = datetime.datetime.now(datetime.timezone.utc)
    sanitize = sanitize_of(h.BUILD_ROOT)
    asan = os.environ.get('ASAN_OPTIONS', '')
    if 'address' in sanitize and 'malloc_context_size' not in asan:
        # ASan keeps the stack of every allocation and free in a depot that never shrinks;
        # with 30 frames each new path adds to it, and RSS creeps by about 2 MB a minute under
        # this churn while the daemon's own heap is flat (tests/soak/README.md). One frame
        # keeps the depot bounded; reports still show the faulting access in full.
        os.environ['ASAN_OPTIONS'] = (asan + ':' if asan else '') + 'malloc_context_size=1'
        tap.diag('ASan build: ASAN_OPTIONS=%s' % os.environ['ASAN_OPTIONS'])
    with h.Deployment(tap, users=aors, extra=soak_config(args)) as dep:
        pool = make_pool(dep, aors)
        dep.start(ready_s=60.0)
        for aor in aors:
            cc.add_user(dep, aor, password_of(aor))
        ledger = Ledger(aors)
        workers = [Worker(dep, ledger, pool, aors[i::args.workers], aors, args.seed + i)
                   for i in range(args.workers)]

        # Priming: every operation once, then idle; the baseline is what is left open.
        for kind in WEIGHTS:
            workers[0].run_op(kind)
        if ledger.failures:
            tap.diag('priming failures: %s' % ledger.failures)
        s = wait_idle(dep, 0, ABANDON_EXPIRES + 30)
        base = {'fds': proc_fds(dep.proc.pid), 'nua': s.get('sipcred_nua_handles'),
                'rss': proc_status(dep.proc.pid).get('VmRSS')}
        tap.diag('baseline after priming: %s (stats: %s)' % (base, {
            k: v for k, v in s.items() if 'subscriptions' in k or 'connections' == k[8:] or
            'nua' in k}))

        sampler = Sampler(dep, ledger, os.path.join(out_dir, 'soak-samples.csv'),
                          args.interval)
        sampler.phase = 'churn'
        sampler.sample()
        stop_event = threading.Event()
        watcher = Watcher(dep, ledger, [] if args.no_watcher else aors)
        watcher.start()
        t_start = time.monotonic()
        deadline = t_start + args.duration
        threads = [threading.Thread(target=sampler.loop, args=(stop_event,), daemon=True),
                   threading.Thread(target=watcher.loop, args=(stop_event, deadline + 5),
                                    daemon=True)]
        threads += [threading.Thread(target=w.loop,
                                     args=(deadline, stop_event, 10 ** 6, kinds),
                                     daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads[2:]:
            t.join(timeout=max(1.0, deadline - time.monotonic()) + 120)
        churn_s = time.monotonic() - t_start
        sampler.phase = 'drain'
        stop_event.set()
        threads[1].join(timeout=10)
        watch_failed = watcher.finish()
        tap.ok(not watch_failed and watcher.error is None,
               'the watcher kept its %d subscriptions for the whole run and ended them '
               '(%s %s)' % (len(watcher.aors), watch_failed, watcher.error))
        threads[0].join(timeout=30)

        # The end: idle clients.
        s_end = wait_idle(dep, base['nua'], ABANDON_EXPIRES + 60)
        sampler.phase = 'idle'
        end = sampler.sample()
        sampler.close()

        # The store against what was acknowledged.
        lost = []
        verified = 0
        for aor in aors:
            state, der, etag = ledger.last[aor]
            path = os.path.join(dep.dir, 'final-%s.der' % user_of(aor))
            rc, out = dep.sipcred('cred', 'export', aor, path)
            stored = None
            if rc == 0:
                with open(path, 'rb') as f:
                    stored = f.read()
            want = [der if state == 'cert' else None] + [
                m[1] if m[0] == 'cert' else None for m in ledger.maybe[aor]]
            if stored in want:
                verified += 1
            else:
                lost.append('%s: store has %s, last acknowledged %s (ETag %s)' % (
                    aor, 'a certificate of %d bytes' % len(stored) if stored else 'nothing',
                    state, etag))

        status = dep.stop()
        log = open(dep.log, 'rb').read().decode('utf-8', 'replace')
        reports = [line for line in log.splitlines()
                   if any(re.search(p, line) for p in SANITIZER_PATTERNS)]

        rows = [r for r in sampler.rows if r['phase'] == 'churn']
        warm_end = args.warmup * churn_s
        post = [r for r in rows if r['t_s'] - rows[0]['t_s'] >= warm_end]
        fifth = max(1, len(post) // 5)
        early, late = median_kb(post[:fifth]), median_kb(post[-fifth:])
        early_anon, late_anon = median_kb(post[:fifth], 'rss_anon_kb'), median_kb(
            post[-fifth:], 'rss_anon_kb')
        bound = max(args.rss_bound_kb, (early or 0) * args.rss_bound_pct / 100.0)
        growth = (late - early) if early is not None and late is not None else None
        peak = max((r['rss_kb'] for r in rows if r['rss_kb']), default=None)
        fds_peak = max((r['fds'] for r in rows if r['fds'] is not None), default=None)
        nua_peak = max((r['nua_handles'] for r in rows if r['nua_handles'] is not None),
                       default=None)

        rss_text = ('RSS flat after warm-up: median %s kB in the first fifth after warm-up, %s kB '
                    'in the last fifth (growth %s kB, bound %d kB)' % (early, late, growth, bound))
        if args.smoke:
            tap.skip(rss_text, 'smoke run')
        else:
            tap.ok(growth is not None and growth < bound, rss_text)
        tap.ok(end['fds'] == base['fds'],
               'open fds back to the baseline when idle: %s (baseline %s, peak %s)' % (
                   end['fds'], base['fds'], fds_peak))
        tap.ok(end['nua_handles'] == base['nua'],
               'nua handles back to the baseline after all subscriptions ended: %s '
               '(baseline %s, peak %s)' % (end['nua_handles'], base['nua'], nua_peak))
        tap.ok(end['subscriptions_certificate'] == 0 and end['subscriptions_credential'] == 0
               and end['connections'] == 0,
               'no subscription or connection left: %s' % {
                   k: end[k] for k in ('subscriptions_certificate', 'subscriptions_credential',
                                       'connections', 'flows')})
        tap.ok(not lost and ledger.publishes_acked > 0,
               'every acknowledged PUBLISH is in the store: %d acknowledged, %d removals, '
               '%d of %d AORs verified%s' % (ledger.publishes_acked, ledger.removals_acked,
                                             verified, len(aors),
                                             '; lost: %s' % lost if lost else ''))
        n_failed = sum(ledger.failed.values())
        tap.ok(n_failed == 0, 'no client operation failed: %d of %d (%s)' % (
            n_failed, ledger.total(), ledger.failures[:5]))
        tap.ok(status == 0, 'sipcredd exits 0 on SIGTERM (%s)' % status)
        tap.ok(not reports, 'no sanitizer report in the daemon log (%d lines%s)' % (
            len(reports), ': ' + ' | '.join(reports[:5]) if reports else ''))

        summary = {
            'date': started.strftime('%Y-%m-%d %H:%M UTC'),
            'build': h.BUILD_ROOT, 'sanitize': sanitize,
            'asan_options': os.environ.get('ASAN_OPTIONS', ''),
            'machine': machine(), 'duration_s': round(churn_s, 1),
            'workers': args.workers, 'users': len(aors), 'seed': args.seed,
            'ops': ','.join(kinds), 'watcher': not args.no_watcher,
            'ops_ok': dict(ledger.ok), 'ops_failed': dict(ledger.failed),
            'ops_total': ledger.total(), 'notifies_watched': ledger.notifies_watched,
            'publishes_acked': ledger.publishes_acked, 'removals_acked': ledger.removals_acked,
            'aors_verified': '%d/%d' % (verified, len(aors)), 'lost': lost,
            'rss_baseline_kb': base['rss'], 'rss_early_kb': early, 'rss_late_kb': late,
            'rss_growth_kb': growth, 'rss_bound_kb': int(bound), 'rss_peak_kb': peak,
            'rss_anon_early_kb': early_anon, 'rss_anon_late_kb': late_anon,
            'rss_slope_kb_per_min': round(slope_kb_per_min(post) or 0, 1),
            'rss_growth_bytes_per_op': per_op(post, growth),
            'rss_end_idle_kb': end['rss_kb'],
            'fds_baseline': base['fds'], 'fds_peak': fds_peak, 'fds_end': end['fds'],
            'nua_baseline': base['nua'], 'nua_peak': nua_peak, 'nua_end': end['nua_handles'],
            'stats_end': {k: v for k, v in s_end.items() if 'subscriptions' in k or
                          k in ('sipcred_connections', 'sipcred_flows',
                                'sipcred_nua_handles', 'sipcred_notifies_sent_total',
                                'sipcred_notifies_failed_total')},
            'daemon_exit': status, 'sanitizer_lines': len(reports),
            'samples': len(sampler.rows), 'failures': ledger.failures[:10],
            'passed': tap.failures == 0,
        }
        write_summary(os.path.join(out_dir, 'soak-summary.md'), summary, args)
        tap.diag('summary: %s' % os.path.join(out_dir, 'soak-summary.md'))
        for k, v in summary.items():
            tap.diag('%s: %s' % (k, v))


def per_op(post, growth):
    """Bytes of RSS growth per client operation between the two fifths compared."""
    if growth is None or len(post) < 5:
        return None
    fifth = max(1, len(post) // 5)
    ops = (statistics.median(r['ops_total'] for r in post[-fifth:]) -
           statistics.median(r['ops_total'] for r in post[:fifth]))
    return round(growth * 1024.0 / ops, 1) if ops > 0 else None


def sanitize_of(build):
    try:
        with open(os.path.join(build, 'meson-info', 'intro-buildoptions.json')) as f:
            text = f.read()
        m = re.search(r'"name": "b_sanitize", "value": "([^"]*)"', text)
        return m.group(1) if m else 'unknown'
    except OSError:
        return 'unknown'


def machine():
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return '%s, %d cores, %s %s, Python %s' % (cpu, os.cpu_count() or 0, platform.system(),
                                              platform.release(), platform.python_version())


def write_summary(path, s, args):
    lines = ['# Soak run, %s' % s['date'], '',
             'Result: **%s**' % ('pass' if s['passed'] else 'FAIL'), '',
             '| figure | value |', '|---|---|']
    for k, v in s.items():
        if k in ('date', 'passed'):
            continue
        lines.append('| %s | %s |' % (k, str(v).replace('|', '/')))
    lines += ['', 'Command: `SIPCRED_BUILD_ROOT=%s python3 tests/soak/run-soak.py --duration %g '
              '--workers %d --seed %d --ops %s%s`' % (s['build'], args.duration, args.workers,
                                                     args.seed, s['ops'],
                                                     ' --no-watcher' if args.no_watcher else ''),
              '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


if __name__ == '__main__':
    main()
