#!/usr/bin/env python3
"""The systemd side of sipcredd:

- the generated sipcredd.service passes `systemd-analyze verify` (its Exec paths pointed at
  the built sipcredd, its Documentation= pages at the built man pages), and
  `systemd-analyze security --offline=yes` rates its exposure below 3.0 ("OK");
- the sysusers file parses (`systemd-sysusers --dry-run` into an empty root);
- the Type=notify protocol: sipcredd, started with NOTIFY_SOCKET naming a datagram socket this
  test binds (as systemd would), sends READY=1 once it serves TLS, RELOADING=1 then READY=1
  around SIGHUP, and STOPPING=1 on SIGTERM.

The systemd tools are only used offline: no running systemd is needed. Each check that needs a
tool skips, with the reason, when the tool is missing."""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

MAX_EXPOSURE = 3.0


def built_unit(work):
    """The build's sipcredd.service with Exec paths at the built binary; its path."""
    src = os.path.join(h.BUILD_ROOT, 'data', 'systemd', 'sipcredd.service')
    with open(src) as f:
        text = f.read()
    text = re.sub(r'/\S*/sipcredd(?=\s)', h.binary('sipcredd'), text)
    path = os.path.join(work, 'sipcredd.service')
    with open(path, 'w') as f:
        f.write(text)
    return path, text


def man_tree(work):
    """A MANPATH holding the built pages, so that Documentation=man:... resolves."""
    root = os.path.join(work, 'man')
    for page in ('sipcredd.8', 'sipcred.1', 'sipcredd.conf.5'):
        sect = os.path.join(root, 'man' + page.rsplit('.', 1)[1])
        os.makedirs(sect, exist_ok=True)
        shutil.copy(os.path.join(h.BUILD_ROOT, 'data', 'man', page), sect)
    return root


def check_verify(tap, work):
    unit, text = built_unit(work)
    tap.ok(h.binary('sipcredd') + ' --check-config' in text,
           'ExecStartPre runs sipcredd --check-config')
    if shutil.which('systemd-analyze') is None:
        tap.skip('systemd-analyze verify accepts sipcredd.service',
                 'systemd-analyze is not installed')
        tap.skip('systemd-analyze security rates sipcredd.service OK',
                 'systemd-analyze is not installed')
        return
    env = dict(os.environ, MANPATH=man_tree(work), SYSTEMD_LOG_LEVEL='notice')
    t0 = time.monotonic()
    res = subprocess.run(['systemd-analyze', 'verify', unit], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=60)
    out = res.stdout.decode('utf-8', 'replace')
    # Other units on this machine may draw complaints; those about ours count.
    ours = [line for line in out.splitlines() if 'sipcredd' in line]
    tap.ok(res.returncode == 0 and not ours,
           'systemd-analyze verify accepts sipcredd.service (%.1f s)' % (time.monotonic() - t0))
    if ours or res.returncode != 0:
        tap.diag(out[-3000:])

    rc, helptext = h.run(['systemd-analyze', 'security', '--help'])
    if '--offline' not in helptext:
        tap.skip('systemd-analyze security rates sipcredd.service OK',
                 'this systemd-analyze has no --offline mode')
        return
    rc, out = h.run(['systemd-analyze', 'security', '--offline=yes', '--no-pager', unit],
                    timeout=60)
    m = re.search(r'Overall exposure level for sipcredd\.service:\s*([0-9.]+)\s*(\S+)', out)
    if not tap.ok(m is not None, 'systemd-analyze security --offline=yes rates the unit'):
        tap.diag(out[-3000:])
        return
    score = float(m.group(1))
    tap.diag('systemd-analyze security: exposure %.1f %s' % (score, m.group(2)))
    tap.ok(score < MAX_EXPOSURE, 'exposure level %.1f is below %.1f (OK)'
           % (score, MAX_EXPOSURE))
    if score >= MAX_EXPOSURE:
        tap.diag('\n'.join(line for line in out.splitlines() if line.startswith('✗')))


def check_sysusers(tap, work):
    conf = os.path.join(h.SOURCE_ROOT, 'data', 'systemd', 'sipcred.sysusers')
    if shutil.which('systemd-sysusers') is None:
        tap.skip('systemd-sysusers parses the sysusers file', 'systemd-sysusers is not installed')
        return
    root = os.path.join(work, 'root')
    os.makedirs(os.path.join(root, 'etc'))
    rc, out = h.run(['systemd-sysusers', '--dry-run', '--root', root, conf], timeout=60)
    tap.ok(rc == 0 and re.search(r"sipcred", out) is not None
           and 'Failed' not in out and 'rror' not in out,
           'systemd-sysusers --dry-run creates the system user sipcred from the sysusers file')
    tap.diag(out.strip()[-1000:])


def receive(sock, timeout):
    """The next datagram as {KEY: VALUE}, or None after timeout seconds."""
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        return None
    data = sock.recv(4096).decode('utf-8', 'replace')
    return dict(line.split('=', 1) for line in data.splitlines() if '=' in line)


def check_notify(tap, work, abstract):
    kind = 'abstract socket' if abstract else 'socket path'
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if abstract:
            name = 'sipcred-it-notify-%d-%d' % (os.getpid(), time.monotonic_ns() % 100000)
            sock.bind('\0' + name)
            address = '@' + name
        else:
            address = os.path.join(work, 'notify.sock')
            sock.bind(address)
        os.environ['NOTIFY_SOCKET'] = address
        try:
            with h.Deployment(tap) as dep:
                dep.start()
                ready = receive(sock, 10.0)
                tap.ok(ready is not None and ready.get('READY') == '1',
                       '%s: READY=1 once sipcredd serves TLS (%s)' % (kind, ready))
                tap.ok(ready is not None and 'STATUS' in ready and dep.domain in ready['STATUS'],
                       '%s: STATUS= names the served domain' % kind)

                dep.proc.send_signal(signal.SIGHUP)
                reloading = receive(sock, 10.0)
                tap.ok(reloading is not None and reloading.get('RELOADING') == '1'
                       and reloading.get('MONOTONIC_USEC', '').isdigit(),
                       '%s: SIGHUP sends RELOADING=1 with MONOTONIC_USEC (%s)'
                       % (kind, reloading))
                after = receive(sock, 10.0)
                tap.ok(after is not None and after.get('READY') == '1',
                       '%s: READY=1 again after the reload (%s)' % (kind, after))

                h.stop(dep.proc, grace=10.0)
                stopping = receive(sock, 10.0)
                tap.ok(stopping is not None and stopping.get('STOPPING') == '1',
                       '%s: SIGTERM sends STOPPING=1 (%s)' % (kind, stopping))
                status = dep.proc.returncode
                dep.proc = None
                dep.logf.close()
                tap.ok(status == 0, '%s: sipcredd exits 0 after STOPPING=1' % kind)
        finally:
            del os.environ['NOTIFY_SOCKET']
    finally:
        sock.close()


def main(tap):
    h.require_tools('certtool')  # the test CA of the deployment
    work = tempfile.mkdtemp(prefix='sipcred-systemd-')
    try:
        check_verify(tap, work)
        check_sysusers(tap, work)
        check_notify(tap, work, abstract=False)
        check_notify(tap, work, abstract=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    h.run_tap(main)
