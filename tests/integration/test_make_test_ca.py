#!/usr/bin/env python3
"""data/make-test-ca.sh makes what the demo and the tests rely on: a CA, domain certificates
that a TLS client accepts for the domain name, user certificates that `sipcred cred import`
accepts, private keys only the owner can read, and a rerun that changes nothing."""

import os
import shutil
import stat
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402


def info(path):
    rc, out = h.run(['certtool', '-i', '--infile', path])
    return out if rc == 0 else ''


def verifies(d, name):
    rc, _ = h.run(['certtool', '--verify', '--load-ca-certificate', os.path.join(d, 'ca.pem'),
                   '--infile', os.path.join(d, name)])
    return rc == 0


def main(tap):
    h.require_tools('certtool')
    d = tempfile.mkdtemp(prefix='sipcred-ca-')
    try:
        script = os.path.join(h.SOURCE_ROOT, 'data', 'make-test-ca.sh')
        args = ['bash', script, d, 'example.com', 'example.net', '--',
                'sip:alice@example.com', 'bob@example.net']
        rc, out = h.run(args, timeout=120)
        if not tap.ok(rc == 0, 'make-test-ca.sh succeeds'):
            tap.diag(out)
            return
        names = ['ca', 'example.com', 'example.net', 'alice', 'bob']
        tap.ok(all(os.path.isfile(os.path.join(d, n + ext)) for n in names
                   for ext in ('.pem', '.key')), 'every certificate and key is there')
        tap.ok(all(stat.S_IMODE(os.stat(os.path.join(d, n + '.key')).st_mode) == 0o600
                   for n in names), 'private keys are mode 0600')

        ca = info(os.path.join(d, 'ca.pem'))
        tap.ok('Certificate Authority (CA): TRUE' in ca, 'ca.pem is a CA')

        dom = info(os.path.join(d, 'example.com.pem'))
        tap.ok('DNSname: example.com' in dom and 'URI: sip:example.com' in dom,
               'domain certificate: SAN dNSName and URI sip: of the domain')
        tap.ok('TLS WWW Server' in dom and '1.3.6.1.5.5.7.3.20' in dom,
               'domain certificate: EKU serverAuth and id-kp-sipDomain')
        tap.ok('Digital signature' in dom and 'Key encipherment' in dom
               and 'Certificate Authority (CA): FALSE' in dom,
               'domain certificate: key usage, not a CA')
        tap.ok('2048 bits' in dom, 'domain certificate: RSA 2048')
        tap.ok(verifies(d, 'example.com.pem') and verifies(d, 'example.net.pem'),
               'domain certificates verify against ca.pem')

        alice = info(os.path.join(d, 'alice.pem'))
        tap.ok(all('URI: %s:alice@example.com' % s in alice for s in ('sip', 'im', 'pres')),
               'user certificate: SAN URIs sip:, im: and pres: of the AOR')
        tap.ok('Email protection' in alice and '1.3.6.1.5.5.7.3.20' in alice,
               'user certificate: EKU emailProtection and id-kp-sipDomain')
        bob = info(os.path.join(d, 'bob.pem'))
        tap.ok('URI: sip:bob@example.net' in bob, 'an AOR without sip: is accepted')
        tap.ok(verifies(d, 'alice.pem'), 'user certificate verifies against ca.pem')

        before = {n: open(os.path.join(d, n + '.pem'), 'rb').read() for n in names}
        rc, out = h.run(args, timeout=120)
        after = {n: open(os.path.join(d, n + '.pem'), 'rb').read() for n in names}
        tap.ok(rc == 0 and before == after, 'a rerun reuses every file unchanged')

        os.unlink(os.path.join(d, 'alice.pem'))
        rc, out = h.run(args, timeout=120)
        tap.ok(rc == 0 and os.path.isfile(os.path.join(d, 'alice.pem'))
               and verifies(d, 'alice.pem')
               and open(os.path.join(d, 'ca.pem'), 'rb').read() == before['ca'],
               'a missing certificate is made again under the same CA')

        rc, out = h.run(['bash', script, d, 'bad/name', '--'], timeout=30)
        tap.ok(rc != 0, 'a domain name with a slash is refused')
        rc, out = h.run(['bash', script, d, 'example.com', '--', 'sip:nouser'], timeout=30)
        tap.ok(rc != 0, 'a user AOR without @domain is refused')
    finally:
        shutil.rmtree(d, ignore_errors=True)


h.run_tap(main)
