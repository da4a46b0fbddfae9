#!/usr/bin/env python3
"""SNI picks the certificate: with two served domains, gnutls-cli naming either one gets that
domain's certificate (verified against the test CA for that name), a client without SNI gets
the first domain's, and a SUBSCRIBE works under both names."""

import os
import ssl
import sys

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

DOMAINS = ('example.com', 'example.net')


def pem_certs(path):
    """The DER certificates of a PEM file, in order."""
    text = open(path).read()
    out = []
    marker = '-----BEGIN CERTIFICATE-----'
    for part in text.split(marker)[1:]:
        block = marker + part.split('-----END CERTIFICATE-----')[0] + \
            '-----END CERTIFICATE-----\n'
        out.append(ssl.PEM_cert_to_DER_cert(block))
    return out


def gnutls_leaf(dep, sni, tag):
    """Connects with gnutls-cli (SNI = sni, verifying that name), saves the chain; returns
    (status, leaf DER or None, output)."""
    saved = os.path.join(dep.dir, 'peer-%s.pem' % tag)
    argv = ['gnutls-cli', '--x509cafile=' + dep.ca, '-p', str(dep.port),
            '--save-cert=' + saved]
    if sni:
        argv += ['--sni-hostname=' + sni, '--verify-hostname=' + sni]
    else:
        argv += ['--disable-sni', '--verify-hostname=' + DOMAINS[0]]
    rc, out = h.run(argv + [h.HOST], timeout=20)
    leaf = pem_certs(saved)[0] if os.path.exists(saved) and pem_certs(saved) else None
    return rc, leaf, out


def main(tap):
    h.require_tools('certtool', 'gnutls-cli')
    users = ('sip:alice@example.com', 'sip:bob@example.net')
    with h.Deployment(tap, domains=DOMAINS, users=users) as dep:
        dep.import_certs()
        dep.start()
        expected = {d: pem_certs(os.path.join(dep.dir, d + '.pem'))[0] for d in DOMAINS}
        tap.ok(expected[DOMAINS[0]] != expected[DOMAINS[1]], 'the two domain certificates differ')

        for d in DOMAINS:
            rc, leaf, out = gnutls_leaf(dep, d, d)
            if not tap.ok(rc == 0 and leaf == expected[d],
                          'gnutls-cli with SNI %s gets the %s certificate and verifies it'
                          % (d, d)):
                tap.diag(out[-800:])

        rc, leaf, out = gnutls_leaf(dep, None, 'nosni')
        if not tap.ok(rc == 0 and leaf == expected[DOMAINS[0]],
                      'without SNI the first domain (%s) certificate is served' % DOMAINS[0]):
            tap.diag(out[-800:])

        for d, aor in zip(DOMAINS, users):
            with dep.connect(sni=d) as c:
                final, notify = h.Subscription(c, aor).exchange(300)
                tap.ok(final is not None and final.code == 200 and notify is not None
                       and notify.body == dep.export_der(aor),
                       'over SNI %s, SUBSCRIBE to %s gets 200 and its certificate' % (d, aor))

        tap.ok(h.options_ok(dep), 'the daemon still answers OPTIONS with 200')


h.run_tap(main)
