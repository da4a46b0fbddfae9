#!/usr/bin/env python3
"""run-fanout.py -- the fan-out benchmark of issue 8.

For each N and mode it starts sipcredd with a benchmark configuration in a temp dir, publishes
an initial credential for one AOR with `sipcred publish`, establishes N certificate
subscriptions with sipcred-loadgen (one TLS connection per subscriber, or many subscribers per
connection), samples the daemon's CPU and RSS, triggers one update with a real PUBLISH and
collects every NOTIFY. The raw RSA sign rate of each backend is measured in the same run with
bench-identity, and NOTIFY/s is reported as a ratio to it.

Outputs (in --out): fanout.csv (one row appended per run), fanout-summary.md, fanout.png (or
.svg) with fanout-plot.dat and fanout.gp. See tests/bench/README.md, section "fanout".

  --check: the small correctness run of the normal test suite. TAP on stdout: every NOTIFY
  delivered, exactly once, signed; the CSV and the plot produced. No timing assertions.

Python 3 standard library only. Every wait is bounded; every process started here is stopped
by its PID. Exit status: 0 when every run delivered all N NOTIFYs, 1 otherwise.
"""

import argparse
import csv
import datetime
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.environ.get('SIPCRED_SOURCE_ROOT') or os.path.dirname(
    os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SOURCE_ROOT, 'tests', 'integration'))
sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

AOR = 'sip:alice@example.com'
PASSWORD = 'fanout-bench-secret'
PASSPHRASE = 'fanout bench passphrase'

CSV_FIELDS = [
    'date', 'n', 'mode', 'conns', 'identity', 'backend', 'algorithm', 'key_bits', 'window',
    'status', 'delivered', 'duplicates', 'stale', 'identity_notifies', 'establish_s',
    'first_ms', 'last_ms', 'notify_per_s', 'cpu_ms_fanout', 'cpu_us_per_notify',
    'cpu_ms_establish', 'loadgen_cpu_ms', 'rss_idle_kb', 'rss_subs_kb', 'rss_fanout_peak_kb',
    'rss_per_sub_bytes', 'sign_raw_per_s', 'sign_allcores_per_s', 'sign_pool_per_s',
    'ratio_to_sign', 'cores', 'note',
]

TICKS = os.sysconf('SC_CLK_TCK')


# --------------------------------------------------------------------------------------------
# /proc

def proc_cpu_ms(pid):
    """utime + stime of @pid in milliseconds."""
    with open('/proc/%d/stat' % pid) as f:
        data = f.read()
    fields = data[data.rindex(')') + 2:].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / TICKS


def proc_rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------
# The sign-rate reference

def sign_reference(build, seconds, log):
    """{backend: {'raw': per_s one thread, 'pool': per_s all threads, 'threads': n}} from
    bench-identity, run once for the whole sweep (all cores for the pool figure)."""
    exe = os.path.join(build, 'tests', 'bench', 'identity', 'bench-identity')
    rc, out = h.run([exe, '--seconds', str(seconds)], timeout=60 + 40 * seconds)
    log('bench-identity (status %s):\n%s' % (rc, out.strip()))
    ref = {}
    if rc != 0:
        return ref
    for line in out.splitlines():
        if not line.startswith('csv,'):
            continue
        # csv,backend,alg,message_bytes,raw_per_s,message_per_s,pool_per_s,pool_threads,ref
        f = line.split(',')
        ref[f[1]] = {'raw': float(f[4]), 'pool': float(f[6]), 'threads': int(f[7])}
    return ref


# --------------------------------------------------------------------------------------------
# One deployment per run

class BenchDeployment(h.Deployment):
    """The harness' Deployment with certificates copied from one shared directory (made once
    per sweep), an optional domain key size, and a quiet daemon (no --verbose)."""

    cert_cache = None
    key_bits = 2048

    def make_certs(self):
        if BenchDeployment.cert_cache is None:
            cache = tempfile.mkdtemp(prefix='sipcred-fanout-certs-')
            if self.key_bits != 2048:
                # make-test-ca.sh keeps an existing key: give it one of the wanted size.
                key = os.path.join(cache, self.domain + '.key')
                rc, out = h.run(['certtool', '--generate-privkey', '--key-type=rsa',
                                 '--bits=%d' % self.key_bits, '--outfile', key], timeout=300)
                if rc != 0:
                    raise RuntimeError('certtool --generate-privkey failed:\n' + out)
                os.chmod(key, 0o600)
            script = os.path.join(SOURCE_ROOT, 'data', 'make-test-ca.sh')
            rc, out = h.run(['bash', script, cache] + self.domains + ['--'] + self.users,
                            timeout=300)
            if rc != 0:
                raise RuntimeError('make-test-ca.sh failed:\n' + out)
            BenchDeployment.cert_cache = cache
        for name in os.listdir(BenchDeployment.cert_cache):
            shutil.copy2(os.path.join(BenchDeployment.cert_cache, name), self.dir)

    def start(self, ready_s=30.0, env=None):
        self.logf = open(self.log, 'ab')
        self.proc = h.spawn([h.binary('sipcredd'), '--config', self.conf],
                            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
                            env=env)
        if not h.wait_port(self.port, ready_s, self.proc):
            raise RuntimeError('sipcredd not ready on port %d within %ss (exit status %s):\n%s'
                               % (self.port, ready_s, self.proc.poll(), h.tail(self.log)))
        return self


def bench_config(args, n, identity):
    """The [tls], [fanout], [identity] and [limits] groups of a benchmark run. The request
    rate limits are off: every subscriber comes from 127.0.0.1 to one AOR at once."""
    limit = max(10000, n + 100)
    return {
        'tls': {'max-connections': limit, 'max-connections-per-ip': limit,
                'idle-timeout': 3600000, 'handshake-timeout': 60000},
        'extra': ('\n[fanout]\nmin-interval=%d\nwindow=%d\n'
                  '\n[identity]\nenabled=%s\nalgorithm=%s\nbackend=%s\nthreads=%d\n'
                  '\n[limits]\nsubscribe-per-source=0\nsubscribe-per-aor=0\n'
                  'publish-per-user=0\n'
                  % (args.min_interval, args.window, 'true' if identity else 'false',
                     args.algorithm,
                     args.backend, args.threads)),
    }


class Quiet:
    def __init__(self):
        self.failures = 0

    def diag(self, text):
        pass


def read_line(proc, prefixes, deadline, on_tick=None, tick_s=0.5):
    """The first line of proc's stdout starting with one of @prefixes (others are kept in
    proc.lines); None at the deadline or when proc ends. Calls on_tick between reads."""
    for _ in range(10 ** 7):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], min(left, tick_s))
        if on_tick is not None:
            on_tick()
        if not ready:
            if proc.poll() is not None:
                return None
            continue
        line = proc.stdout.readline()
        if not line:
            return None
        line = line.decode('utf-8', 'replace').strip()
        proc.lines.append(line)
        if line.startswith(prefixes):
            return line
    return None


def kv(line):
    out = {}
    for word in line.split()[1:]:
        if '=' in word:
            k, v = word.split('=', 1)
            out[k] = v
    return out


def run_one(args, n, mode, identity, ref, log):
    """One benchmark run; returns its CSV row (a dict)."""
    conns = n if mode == 'per-conn' else max(1, -(-n // args.subs_per_conn))
    backend = args.backend
    if backend == 'auto':
        backend = 'openssl' if 'openssl' in ref else 'gnutls'
    row = {k: '' for k in CSV_FIELDS}
    row.update(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
               n=n, mode=mode, conns=conns, identity='on' if identity else 'off',
               backend=backend if identity else '-',
               algorithm=args.algorithm if identity else '-', key_bits=args.key_bits,
               window=args.window, cores=os.cpu_count(), status='FAILED')
    if identity and backend in ref:
        r = ref[backend]
        row['sign_raw_per_s'] = '%.0f' % r['raw']
        row['sign_allcores_per_s'] = '%.0f' % (r['raw'] * os.cpu_count())
        row['sign_pool_per_s'] = '%.0f' % r['pool']

    cfg = bench_config(args, n, identity)
    quiet = Quiet()
    BenchDeployment.key_bits = args.key_bits
    env = dict(os.environ)
    if not args.check:
        # The default test setup's malloc checking would be measured too.
        env.pop('MALLOC_CHECK_', None)
    dep = BenchDeployment(quiet, users=(AOR,), tls=cfg['tls'], extra=cfg['extra'])
    gen = None
    try:
        dep.start(env=env)
        pid = dep.proc.pid
        rc, out = dep.sipcred('user', 'add', AOR, '--password-file',
                              write(dep, 'pw', PASSWORD))
        if rc != 0:
            raise RuntimeError('sipcred user add failed (%s): %s' % (rc, out))
        common = ['--server', '%s:%d' % (h.HOST, dep.port), '--ca', dep.ca,
                  '--user', AOR, '--password-file', os.path.join(dep.dir, 'pw'),
                  '--etag-file', os.path.join(dep.dir, 'etag'), '--timeout', '60']
        # The initial credential: generated by the CLI, key encrypted with a passphrase.
        rc, out = h.run([h.binary('sipcred'), 'publish', AOR] + common +
                        ['--passphrase-file', write(dep, 'phrase', PASSPHRASE)], timeout=90)
        if rc != 0:
            raise RuntimeError('initial sipcred publish failed (%s): %s' % (rc, out))
        time.sleep(0.5)
        cpu_idle, rss_idle = proc_cpu_ms(pid), proc_rss_kb(pid)

        loadgen = os.path.join(args.build, 'tests', 'bench', 'fanout', 'sipcred-loadgen')
        fan_timeout = max(60.0, n / 100.0)
        gen = h.spawn([loadgen, '--server', '%s:%d' % (h.HOST, dep.port), '--ca', dep.ca,
                       '--tls-name', dep.domain, '--aor', AOR, '--subs', str(n),
                       '--conns', str(conns), '--pipeline', str(args.pipeline),
                       '--handshakes', str(args.handshakes),
                       '--establish-timeout', str(args.establish_timeout),
                       '--timeout', str(fan_timeout)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=env)
        gen.lines = []
        ready = read_line(gen, ('READY', 'ESTABLISH-FAILED'),
                          time.monotonic() + args.establish_timeout + 30)
        if ready is None or not ready.startswith('READY'):
            err = gen.stderr.read1(4000).decode('utf-8', 'replace') if gen.poll() else ''
            raise RuntimeError('load generator did not get ready: %s %s' % (ready, err))
        row['establish_s'] = '%.1f' % (float(kv(ready).get('establish_ms', 0)) / 1000)
        time.sleep(0.5)
        cpu_subs, rss_subs = proc_cpu_ms(pid), proc_rss_kb(pid)
        row['cpu_ms_establish'] = '%.0f' % (cpu_subs - cpu_idle)
        row['rss_idle_kb'] = rss_idle
        row['rss_subs_kb'] = rss_subs
        row['rss_per_sub_bytes'] = '%.0f' % ((rss_subs - rss_idle) * 1024.0 / n)

        # GO, then one real PUBLISH of a new certificate (prepared, so no key generation
        # runs between GO and the PUBLISH).
        peak = [rss_subs]

        def sample():
            try:
                peak[0] = max(peak[0], proc_rss_kb(pid))
            except OSError:
                pass

        perf = None
        if args.perf:
            # SIPCRED_PERF_ARGS replaces -g, e.g. "--call-graph dwarf,8192 -F 499" to see
            # through libc and GLib, which have no frame pointers.
            perf_args = os.environ.get('SIPCRED_PERF_ARGS', '-g').split()
            perf = h.spawn(['perf', 'record'] + perf_args + ['-o', '%s-n%d-%s-%s.data' % (
                args.perf, n, mode, row['identity']), '-p', str(pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        gen.stdin.write(b'GO\n')
        gen.stdin.flush()
        pub = h.spawn([h.binary('sipcred'), 'publish', AOR] + common +
                      ['--cert', os.path.join(dep.dir, 'alice.pem'),
                       '--key', os.path.join(dep.dir, 'alice.key'), '--cert-only'],
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT)
        result = read_line(gen, ('RESULT',), time.monotonic() + fan_timeout + 30, sample,
                           tick_s=0.01)
        cpu_end = proc_cpu_ms(pid)
        if perf is not None:
            perf.send_signal(2)  # SIGINT: perf writes its file and exits
            try:
                perf.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            h.stop(perf)
        try:
            pub_out = pub.communicate(timeout=90)[0].decode('utf-8', 'replace')
        except subprocess.TimeoutExpired:
            pub_out = '[timed out]'
        h.stop(pub)
        if pub.returncode != 0:
            row['note'] = 'trigger publish status %s' % pub.returncode
            log('trigger publish failed (%s): %s' % (pub.returncode, pub_out.strip()))
        if result is None:
            raise RuntimeError('no RESULT from the load generator: %s' % gen.lines[-3:])
        res = kv(result)
        delivered = int(res.get('delivered', 0))
        row.update(delivered=delivered, duplicates=res.get('duplicates', ''),
                   stale=res.get('stale', ''), identity_notifies=res.get('identity', ''),
                   first_ms=res.get('first_ms', ''), last_ms=res.get('last_ms', ''),
                   notify_per_s=res.get('notify_per_s', ''),
                   loadgen_cpu_ms=res.get('cpu_ms', ''))
        row['cpu_ms_fanout'] = '%.0f' % (cpu_end - cpu_subs)
        if delivered:
            row['cpu_us_per_notify'] = '%.0f' % ((cpu_end - cpu_subs) * 1000.0 / delivered)
        row['rss_fanout_peak_kb'] = peak[0]
        rate = float(res.get('notify_per_s', 0) or 0)
        if identity and row['sign_allcores_per_s']:
            row['ratio_to_sign'] = '%.2f' % (rate / float(row['sign_allcores_per_s']))
        ok = (delivered == n and res.get('duplicates') == '0' and res.get('stale') == '0'
              and res.get('terminated') == '0')
        row['status'] = 'ok' if ok else 'FAILED'
        if not ok and not row['note']:
            row['note'] = 'delivered %d of %d, duplicates %s, stale %s, terminated %s' % (
                delivered, n, res.get('duplicates'), res.get('stale'), res.get('terminated'))
        log('run n=%d mode=%s identity=%s: %s' % (n, mode, row['identity'], result))
    except (RuntimeError, OSError, ValueError) as exc:
        row['note'] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log('run n=%d mode=%s identity=%s FAILED: %s\n%s' % (n, mode, row['identity'], exc,
                                                             h.tail(dep.log, 20)))
    finally:
        if gen is not None:
            h.stop(gen)
        dep.stop()
        if row['status'] == 'ok' and not os.environ.get('SIPCRED_KEEP_TMP'):
            shutil.rmtree(dep.dir, ignore_errors=True)
        else:
            log('kept ' + dep.dir)
    return row


def write(dep, name, text):
    path = os.path.join(dep.dir, name)
    with open(path, 'w') as f:
        f.write(text + '\n')
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------------------------
# Outputs

def append_csv(path, rows):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(r)


def gnuplot_terminal():
    """('pngcairo'|'png'|'svg', extension) that this gnuplot offers, or None without gnuplot."""
    exe = shutil.which('gnuplot')
    if exe is None:
        return None
    rc, out = h.run([exe, '-e', 'set terminal'], timeout=30)
    words = set(w.strip() for line in out.splitlines() for w in line.split()[:1])
    for term, ext in (('pngcairo', 'png'), ('png', 'png'), ('svg', 'svg')):
        if term in words:
            return term, ext
    return 'svg', 'svg'


def plot(out_dir, rows, log):
    """fanout.png/.svg of NOTIFY/s and time-to-last against N, one line per mode and identity
    setting. Returns the plot's path, or None (and why) when it could not be made."""
    term = gnuplot_terminal()
    if term is None:
        return None, 'gnuplot is not installed (Debian: apt-get install gnuplot-nox)'
    series = {}
    for r in rows:
        if r['status'] != 'ok':
            continue
        key = '%s, identity %s%s' % (r['mode'], r['identity'],
                                     ' (%s)' % r['backend'] if r['identity'] == 'on' else '')
        series.setdefault(key, []).append(r)
    if not series:
        return None, 'no successful run to plot'
    dat = os.path.join(out_dir, 'fanout-plot.dat')
    names = sorted(series)
    with open(dat, 'w') as f:
        for name in names:
            f.write('# %s\n# n notify_per_s last_ms\n' % name)
            for r in sorted(series[name], key=lambda r: int(r['n'])):
                f.write('%s %s %s\n' % (r['n'], r['notify_per_s'] or 0, r['last_ms'] or 0))
            f.write('\n\n')
    path = os.path.join(out_dir, 'fanout.' + term[1])
    lines = ['set terminal %s size 1100,480%s' % (term[0], ' font ",10"'
                                                   if term[0] != 'svg' else ''),
             'set output "%s"' % path,
             'set multiplot layout 1,2 title "sipcred fan-out: one PUBLISH to N subscribers '
             '(%d cores)"' % os.cpu_count(),
             'set logscale x', 'set xrange [50:20000]', 'set grid',
             'set key top left', 'set xlabel "N subscribers"',
             'set ylabel "NOTIFY/s"', 'set title "NOTIFY/s"',
             'plot ' + ', '.join('"%s" index %d using 1:2 with linespoints title "%s"'
                                 % (dat, i, n) for i, n in enumerate(names)),
             'set logscale y', 'set ylabel "ms"', 'set title "time to the last NOTIFY"',
             'plot ' + ', '.join('"%s" index %d using 1:3 with linespoints title "%s"'
                                 % (dat, i, n) for i, n in enumerate(names)),
             'unset multiplot']
    gp = os.path.join(out_dir, 'fanout.gp')
    with open(gp, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    rc, out = h.run([shutil.which('gnuplot'), gp], timeout=60)
    if rc != 0 or not os.path.exists(path) or os.path.getsize(path) == 0:
        log('gnuplot failed (%s): %s' % (rc, out))
        return None, 'gnuplot failed: %s' % out.strip()[:200]
    return path, None


def summary(path, rows, ref, args, plot_path, plot_why):
    def num(v):
        return v if v not in ('', None) else '-'

    lines = ['# sipcred fan-out benchmark', '',
             'Run %s on %s: %d cores (`nproc`), Python %s.' % (
                 datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                 os.uname().nodename, os.cpu_count(), sys.version.split()[0]),
             '', 'Knobs: window=%d, algorithm=%s, backend=%s, domain key RSA-%d, '
             'signing threads=%s, min-interval=%s, %d subscribers per '
             'connection in the shared mode.' % (
                 args.window, args.algorithm, args.backend, args.key_bits,
                 args.threads or 'one per core',
                 '%d s' % args.min_interval if args.min_interval else '0 (no coalescing)',
                 args.subs_per_conn), '']
    lines += ['## Sign-rate reference (bench-identity, same run, RSA-2048 rsa-sha256)', '',
              '| backend | raw signs/s, one thread | raw x cores | signing pool, all cores |',
              '|---|---|---|---|']
    for b, r in sorted(ref.items()):
        lines.append('| %s | %.0f | %.0f | %.0f (%d threads) |' % (
            b, r['raw'], r['raw'] * os.cpu_count(), r['pool'], r['threads']))
    if not ref:
        lines.append('| (bench-identity failed) | | | |')
    lines += ['', '## Runs', '',
              '| N | mode | conns | identity | status | delivered | first ms | last ms | '
              'NOTIFY/s | / sign rate | CPU us/NOTIFY | loadgen CPU ms | RSS idle kB | '
              'RSS subs kB | RSS peak kB | RSS B/sub | establish s |',
              '|' + '---|' * 17]
    for r in rows:
        lines.append('| %s |' % ' | '.join(str(num(r[k])) for k in (
            'n', 'mode', 'conns', 'identity', 'status', 'delivered', 'first_ms', 'last_ms',
            'notify_per_s', 'ratio_to_sign', 'cpu_us_per_notify', 'loadgen_cpu_ms', 'rss_idle_kb',
            'rss_subs_kb', 'rss_fanout_peak_kb', 'rss_per_sub_bytes', 'establish_s')))
    failed = [r for r in rows if r['status'] != 'ok']
    lines += ['']
    for r in failed:
        lines.append('- **FAILED**: N=%s %s identity %s: %s' % (r['n'], r['mode'],
                                                                 r['identity'], r['note']))
    lines += ['', '## Targets of issue 8 (reported, not asserted)', '']
    for r in rows:
        if str(r['n']) != '10000' or r['status'] != 'ok':
            continue
        if r['identity'] == 'on' and r['ratio_to_sign']:
            lines.append('- N=10000 %s, identity on (%s): NOTIFY/s = %s of the raw sign rate '
                         'with all cores (target 0.85): %s' % (
                             r['mode'], r['backend'], r['ratio_to_sign'],
                             'met' if float(r['ratio_to_sign']) >= 0.85 else 'not met'))
        if r['identity'] == 'off':
            lines.append('- N=10000 %s, identity off: %s NOTIFY/s (target 10000): %s' % (
                r['mode'], r['notify_per_s'],
                'met' if float(r['notify_per_s'] or 0) >= 10000 else 'not met'))
    lines.append('- All N delivered in every run: %s' % ('yes' if not failed else 'NO'))
    per_sub = ['%s: %s B' % (r['mode'], r['rss_per_sub_bytes']) for r in rows
               if str(r['n']) == str(max(int(x['n']) for x in rows)) and r['rss_per_sub_bytes']
               and r['identity'] == rows[0]['identity']]
    if per_sub:
        lines.append('- RSS added per idle subscription at the largest N (goal: under 16 kB '
                     'without the TLS session): %s' % ', '.join(per_sub))
    lines += ['', '## Plot', '',
              '![fan-out](%s)' % os.path.basename(plot_path) if plot_path
              else 'No plot: %s' % plot_why, '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


# --------------------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--build', default=os.environ.get('SIPCRED_BUILD_ROOT'),
                   help='the build directory (default: $SIPCRED_BUILD_ROOT)')
    p.add_argument('--out', help='output directory (default: BUILD/tests/bench/fanout/out)')
    p.add_argument('--n', default='100,1000,10000', help='subscriber counts (default %(default)s)')
    p.add_argument('--modes', default='per-conn,shared',
                   help='per-conn (a TLS connection per subscriber) and/or shared')
    p.add_argument('--subs-per-conn', type=int, default=100,
                   help='subscribers per connection in the shared mode (default %(default)s)')
    p.add_argument('--identity', default='on,off', help='on, off or on,off (default %(default)s)')
    p.add_argument('--backend', default='auto', choices=('auto', 'gnutls', 'openssl'))
    p.add_argument('--algorithm', default='rsa-sha256', choices=('rsa-sha256', 'rsa-sha1'))
    p.add_argument('--key-bits', type=int, default=2048, help='domain key size (RSA)')
    p.add_argument('--window', type=int, default=200, help='[fanout] window (default 200)')
    p.add_argument('--min-interval', type=int, default=0,
                   help='[fanout] min-interval, the per-subscription rate limit in seconds '
                        '(default 0: off; a subscriber notified less than this ago waits, '
                        'so the update reaches it only after the interval)')
    p.add_argument('--threads', type=int, default=0, help='[identity] threads (0: per core)')
    p.add_argument('--pipeline', type=int, default=100,
                   help='SUBSCRIBEs the load generator keeps pending while establishing')
    p.add_argument('--handshakes', type=int, default=32,
                   help='TLS handshakes the load generator runs at once')
    p.add_argument('--establish-timeout', type=float, default=600.0)
    p.add_argument('--sign-seconds', type=float, default=2.0,
                   help='seconds per bench-identity figure (default 2)')
    p.add_argument('--perf', metavar='PREFIX',
                   help='record the daemon with `perf record -g` from GO to the last NOTIFY, '
                        'into PREFIX-nN-MODE-IDENTITY.data (perf adds its own CPU load)')
    p.add_argument('--check', action='store_true',
                   help='correctness run for the test suite: N=100, both modes, identity on, '
                        'TAP output, no timing assertions')
    args = p.parse_args()
    if not args.build:
        p.error('--build or $SIPCRED_BUILD_ROOT is needed')
    if args.check:
        args.n, args.identity, args.sign_seconds = '100', 'on', 0.3
    args.ns = [int(x) for x in args.n.split(',') if x]
    args.mode_list = [m for m in args.modes.split(',') if m]
    args.identity_list = [x == 'on' for x in args.identity.split(',') if x]
    for m in args.mode_list:
        if m not in ('per-conn', 'shared'):
            p.error('unknown mode ' + m)
    return args


def raise_fd_limit(need):
    """N TLS connections need N descriptors in the daemon and in the load generator (children
    inherit this limit). Returns the soft limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main():
    args = parse_args()
    args.build = os.path.abspath(args.build)
    h.BUILD_ROOT = args.build
    out_dir = args.out or (tempfile.mkdtemp(prefix='sipcred-fanout-') if args.check else
                           os.path.join(args.build, 'tests', 'bench', 'fanout', 'out'))
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, 'fanout.log')
    logf = open(log_path, 'a')
    tap = h.Tap() if args.check else None

    def log(text):
        logf.write(text.rstrip() + '\n')
        logf.flush()
        if tap is not None:
            tap.diag(text)
        else:
            print(text, flush=True)

    if shutil.which('certtool') is None:
        if tap:
            h.Tap.skip_all('missing tool: certtool')
        sys.exit('certtool (gnutls-bin) is needed')
    fd_limit = raise_fd_limit(2 * max(args.ns) + 1024)
    if fd_limit < max(args.ns) + 200:
        log('warning: open-file limit %d is below N=%d: the per-connection runs of that size '
            'will fail' % (fd_limit, max(args.ns)))

    ref = sign_reference(args.build, args.sign_seconds, log)
    rows = []
    try:
        for identity in args.identity_list:
            for n in args.ns:
                for mode in args.mode_list:
                    row = run_one(args, n, mode, identity, ref, log)
                    rows.append(row)
                    append_csv(os.path.join(out_dir, 'fanout.csv'), [row])
                    if tap:
                        tap.ok(row['status'] == 'ok' and int(row['delivered'] or 0) == n,
                               'N=%d %s: every subscriber got exactly one NOTIFY with the new '
                               'certificate (%s of %d delivered)%s' % (
                                   n, mode, row['delivered'] or 0, n,
                                   '; ' + row['note'] if row['note'] else ''))
                        tap.ok(row['identity_notifies'] == str(n),
                               'N=%d %s: each of those NOTIFYs carried an Identity header (%s)'
                               % (n, mode, row['identity_notifies'] or 0))
    finally:
        h.stop_all()
    plot_path, why = plot(out_dir, rows, log)
    summary(os.path.join(out_dir, 'fanout-summary.md'), rows, ref, args, plot_path, why)
    failed = [r for r in rows if r['status'] != 'ok']
    if tap:
        csv_path = os.path.join(out_dir, 'fanout.csv')
        with open(csv_path) as f:
            got = list(csv.DictReader(f))
        tap.ok(len(got) == len(rows) and all(r['n'] == '100' for r in got),
               'the CSV has one row per run with its columns (%d rows)' % len(got))
        tap.ok(bool(ref), 'bench-identity measured the sign-rate reference (%s)'
               % ', '.join(sorted(ref)))
        if plot_path is None and why.startswith('gnuplot is not installed'):
            tap.skip('the plot is produced', why)
        else:
            tap.ok(plot_path is not None and os.path.getsize(plot_path) > 0,
                   'the plot is produced (%s)' % (plot_path or why))
        tap.ok(os.path.getsize(os.path.join(out_dir, 'fanout-summary.md')) > 0,
               'the Markdown summary is produced')
        tap.done()
        if not tap.failures and not os.environ.get('SIPCRED_KEEP_TMP'):
            shutil.rmtree(out_dir, ignore_errors=True)
        sys.exit(0)
    print('\n'.join(open(os.path.join(out_dir, 'fanout-summary.md')).read().splitlines()))
    print('\noutputs in %s' % out_dir)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
