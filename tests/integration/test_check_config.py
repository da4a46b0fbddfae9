#!/usr/bin/env python3
"""sipcredd --check-config: a good configuration passes (exit 0); a bad one fails (exit 1)
with a message naming the file, line, group and key and saying why; nothing is started."""

import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402


def check(conf):
    return h.run([h.binary('sipcredd'), '--check-config', '--config', conf], timeout=30)


def main(tap):
    h.require_tools('certtool')
    with h.Deployment(tap) as dep:
        rc, out = check(dep.conf)
        tap.ok(rc == 0 and 'configuration OK' in out, 'a good configuration passes')
        tap.ok(not os.path.exists(os.path.join(dep.dir, 'state')),
               '--check-config creates no store')

        text = open(dep.conf).read()
        cases = [
            ('[tls]\n', '[tls]\nidle-timeout=soon\n', '[tls] idle-timeout', 'not a whole number'),
            ('[server]\n', '[server]\nlisten-on=127.0.0.1:5061\n', '[server] listen-on',
             'unknown key'),
            ('key=%s.key' % dep.domain, 'key=missing.key', 'key', 'cannot read'),
        ]
        for i, (old, new, where, why) in enumerate(cases):
            bad = os.path.join(dep.dir, 'bad%d.conf' % i)
            with open(bad, 'w') as f:
                f.write(text.replace(old, new, 1))
            line = next(n for n, ln in enumerate(open(bad).read().split('\n'), 1)
                        if new.strip().split('\n')[-1] == ln)
            rc, out = check(bad)
            tap.ok(rc == 1 and ('%s:%d:' % (bad, line)) in out and where in out and why in out,
                   'a bad value is refused naming file:line, "%s" and why ("%s")' % (where, why))
            if rc != 1:
                tap.diag(out)

        # A master key that group or others can read is refused before the daemon starts.
        key = os.path.join(dep.dir, 'master.key')
        rc, out = h.run([h.binary('sipcred'), 'keygen', key], timeout=30)
        tap.ok(rc == 0, 'sipcred keygen makes a master key')
        with_key = os.path.join(dep.dir, 'with-key.conf')
        with open(with_key, 'w') as f:
            f.write(text + '\n[store]\nmaster-key=master.key\n')
        rc, out = check(with_key)
        tap.ok(rc == 0, 'a configuration with a private master key passes')
        os.chmod(key, 0o644)
        rc, out = check(with_key)
        tap.ok(rc == 1 and '[store] master-key' in out and 'group or others' in out,
               'a master key readable by others is refused, naming the key and why')
        if rc != 1:
            tap.diag(out)


if __name__ == '__main__':
    h.run_tap(main)
