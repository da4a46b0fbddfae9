#!/usr/bin/env python3
"""sipcredd refuses to start with unusable settings: it exits with status 1 within seconds,
and its last line says what is wrong and where. Cases: a missing certificate, a key that does
not match its certificate, a key others can read, a state directory it cannot create or write,
and a listen port already in use. Each case also passes --check-config except the two that
only the start can find (the state directory and the port)."""

import os
import socket
import stat
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402


def start(conf):
    """Runs sipcredd to its exit (bounded); returns (status, last line of its output)."""
    rc, out = h.run([h.binary('sipcredd'), '--config', conf], timeout=15)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return rc, lines[-1] if lines else ''


def variant(dep, name, old, new):
    path = os.path.join(dep.dir, name + '.conf')
    with open(dep.conf) as f:
        text = f.read()
    assert old in text, old
    with open(path, 'w') as f:
        f.write(text.replace(old, new, 1))
    return path


def main(tap):
    h.require_tools('certtool')
    with h.Deployment(tap, users=('sip:alice@example.com',)) as dep:
        key = os.path.join(dep.dir, dep.domain + '.key')

        conf = variant(dep, 'missing', 'certificate=%s.pem' % dep.domain,
                       'certificate=nowhere.pem')
        rc, last = start(conf)
        tap.ok(rc == 1 and 'certificate' in last and 'nowhere.pem' in last and
               'No such file' in last,
               'a missing certificate: status 1, naming the file (%s: %s)' % (rc, last))

        conf = variant(dep, 'mismatch', 'key=%s.key' % dep.domain, 'key=alice.key')
        rc, last = start(conf)
        tap.ok(rc == 1 and 'do not match' in last and 'alice.key' in last,
               'a key that does not match its certificate: status 1 (%s: %s)' % (rc, last))

        open_key = os.path.join(dep.dir, 'open.key')
        with open(key, 'rb') as src, open(open_key, 'wb') as dst:
            dst.write(src.read())
        os.chmod(open_key, 0o644)
        conf = variant(dep, 'open', 'key=%s.key' % dep.domain, 'key=open.key')
        rc, last = start(conf)
        tap.ok(rc == 1 and 'readable or writable by others' in last and 'open.key' in last,
               'a world-readable key: status 1 (%s: %s)' % (rc, last))
        rc, out = h.run([h.binary('sipcredd'), '--check-config', '--config', conf])
        tap.ok(rc == 1 and 'readable or writable by others' in out,
               '--check-config finds the world-readable key too')
        os.chmod(open_key, 0o640)
        rc, out = h.run([h.binary('sipcredd'), '--check-config', '--config', conf])
        tap.ok(rc == 0, 'a key its group may read (Debian ssl-cert, 0640) is accepted (%s)' % rc)

        # root may write anywhere a mode allows nothing; sysfs refuses even root.
        if os.geteuid() == 0:
            where = '/sys/kernel/sipcred-test-state-%d' % os.getpid()
        else:
            locked = tempfile.mkdtemp(dir=dep.dir)
            os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)
            where = os.path.join(locked, 'state')
        conf = variant(dep, 'state', 'state-dir=state', 'state-dir=' + where)
        rc, last = start(conf)
        tap.ok(rc == 1 and where in last and 'cannot' in last,
               'a state directory it cannot create: status 1, naming it (%s: %s)' % (rc, last))

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind((h.HOST, dep.port))
            busy.listen(1)
            rc, last = start(dep.conf)
        tap.ok(rc == 1 and 'Address already in use' in last and
               '%s:%d' % (h.HOST, dep.port) in last,
               'a listen port in use: status 1, naming the address (%s: %s)' % (rc, last))

        dep.start()
        tap.ok(dep.alive() and h.options_ok(dep),
               'with the settings fixed the same deployment starts and answers')


if __name__ == '__main__':
    h.run_tap(main)
