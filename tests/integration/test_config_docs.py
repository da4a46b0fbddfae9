#!/usr/bin/env python3
"""The example configuration and sipcredd.conf(5) document the same keys with the same
defaults, and sipcredd accepts every key they document: this fails when they drift.

- data/sipcredd.conf.example: "[group]" lines, then "key=value" (set) or "#key=value" (the
  documented default, left commented);
- data/man/sipcredd.conf.5: ".SH [group]" sections, then ".BR key " (type, ..., default V)"";
- sipcredd --check-config on the example with every commented key set to its documented
  default, plus the files it needs."""

import os
import re
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

SIMPLE_DEFAULT = re.compile(r'^([0-9]+|true|false|rsa-sha256|auto)$')


def example_keys(path):
    """{group: {key: (value, commented)}}; [domain X] is "domain NAME"."""
    out, group = {}, None
    for line in open(path):
        line = line.rstrip('\n')
        m = re.match(r'^\[(.+)\]$', line)
        if m:
            group = 'domain NAME' if m.group(1).startswith('domain ') else m.group(1)
            out.setdefault(group, {})
            continue
        m = re.match(r'^(#?)([a-z][a-z0-9-]*)=(.*)$', line)
        if m and group is not None:
            out[group][m.group(2)] = (m.group(3), m.group(1) == '#')
    return out


def man_keys(path):
    """{group: {key: default token or None}}."""
    out, group = {}, None
    for line in open(path):
        line = line.rstrip('\n')
        m = re.match(r'^\.SH \[(.+)\]$', line)
        if m:
            group = m.group(1)
            out.setdefault(group, {})
            continue
        if line.startswith('.SH '):
            group = None
            continue
        m = re.match(r'^\.BR ([a-z\\-]+) "(.*)$', line)
        if m and group is not None:
            key = m.group(1).replace('\\-', '-')
            rest = re.sub(r'\\f[BIPR]', '', m.group(2)).replace('\\-', '-')
            d = re.search(r'default\s*"?\s*([^\s)"]+)', rest)
            out[group][key] = d.group(1) if d else None
    return out


def main(tap):
    example = os.path.join(h.SOURCE_ROOT, 'data', 'sipcredd.conf.example')
    man = os.path.join(h.SOURCE_ROOT, 'data', 'man', 'sipcredd.conf.5')
    ex, mn = example_keys(example), man_keys(man)
    tap.ok(sorted(ex) == sorted(mn), 'the same groups (example %s, man page %s)'
           % (sorted(set(ex) - set(mn)), sorted(set(mn) - set(ex))))
    for group in sorted(set(ex) | set(mn)):
        a, b = set(ex.get(group, {})), set(mn.get(group, {}))
        tap.ok(a == b, '[%s]: the same keys (only in the example: %s; only in the man page: '
               '%s)' % (group, sorted(a - b), sorted(b - a)))
    wrong = []
    for group, keys in ex.items():
        for key, (value, commented) in keys.items():
            doc = mn.get(group, {}).get(key)
            if commented and doc is not None and SIMPLE_DEFAULT.match(doc) and doc != value:
                wrong.append('[%s] %s: example %s, man page %s' % (group, key, value, doc))
    tap.ok(not wrong, 'the defaults the example shows are those of the man page (%s)' % wrong)

    # sipcredd accepts every documented key at its default.
    work = tempfile.mkdtemp(prefix='sipcred-docs-')
    try:
        rc, out = h.run(['bash', os.path.join(h.SOURCE_ROOT, 'data', 'make-test-ca.sh'), work,
                         'example.com'], timeout=120)
        lines = []
        for line in open(example):
            m = re.match(r'^#([a-z][a-z0-9-]*)=(.*)$', line.rstrip('\n'))
            if m and m.group(1) in ('info-url', 'https-listen', 'public-host', 'master-key',
                                    'control-socket', 'listen'):
                lines.append(line.rstrip('\n'))  # example values, not defaults: keep commented
            elif m and m.group(1) == 'generate':
                lines.append('generate=false')
            elif m:
                lines.append('%s=%s' % (m.group(1), m.group(2)))
            else:
                lines.append(line.rstrip('\n'))
        text = '\n'.join(lines) + '\n'
        text = text.replace('/etc/sipcred/', work + '/').replace('/var/lib/sipcred',
                                                                 work + '/state')
        conf = os.path.join(work, 'all.conf')
        with open(conf, 'w') as f:
            f.write(text)
        rc, out = h.run([h.binary('sipcredd'), '--check-config', '--config', conf])
        tap.ok(rc == 0, 'sipcredd --check-config accepts the example with every default '
               'written out (%s)' % out.strip()[-300:])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    h.run_tap(main)
