#!/usr/bin/env python3
"""The default TLS policy, as clients meet it: gnutls-cli is refused with TLS 1.0, TLS 1.1 and
NULL suites, and gets both RFC 6072 section 10.5 mandatory suites; SSL 2.0/3.0, anonymous,
export and RC4 offers get no ServerHello (hand-made ClientHellos, since modern clients cannot
even offer them, with a valid TLS 1.2 hello as the control); forward-secret AEAD suites are
preferred; and sslscan finds nothing weak."""

import os
import re
import sys
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

TLS12, TLS11, TLS10, SSL30 = 0x0303, 0x0302, 0x0301, 0x0300

# IANA code points
RSA_AES128_SHA = 0x002f         # TLS_RSA_WITH_AES_128_CBC_SHA (mandatory)
RSA_AES128_SHA256 = 0x003c      # TLS_RSA_WITH_AES_128_CBC_SHA256 (mandatory)
ECDHE_RSA_AES128_SHA = 0xc013
ECDHE_RSA_AES256_SHA = 0xc014
ECDHE_RSA_AES128_GCM = 0xc02f
ECDHE_RSA_AES256_GCM = 0xc030
ECDHE_RSA_CHACHA20 = 0xcca8
NULL_SUITES = [0x0001, 0x0002, 0x003b, 0xc010]          # RSA NULL MD5/SHA/SHA256, ECDHE NULL
ANON_SUITES = [0x0034, 0x003a, 0x006c, 0xc018, 0xc019, 0x00a6]  # DH_anon, ECDH_anon
EXPORT_SUITES = [0x0003, 0x0006, 0x0008, 0x0014, 0x0062, 0x0064]
RC4_SUITES = [0x0004, 0x0005, 0xc011, 0x0018]
STRONG = [ECDHE_RSA_AES128_GCM, RSA_AES128_SHA, ECDHE_RSA_AES128_SHA]
AEAD_FS = {ECDHE_RSA_AES128_GCM, ECDHE_RSA_AES256_GCM, ECDHE_RSA_CHACHA20,
           0x009e, 0x009f, 0xccaa}


def gnutls_cli(dep, priority, verbose=False):
    argv = ['gnutls-cli', '--x509cafile=' + dep.ca, '--sni-hostname=' + dep.domain,
            '--verify-hostname=' + dep.domain, '-p', str(dep.port), '--priority', priority]
    if verbose:
        argv.append('-V')
    return h.run(argv + [h.HOST], timeout=20)


def completed(out):
    return '- Handshake was completed' in out


def ssl2_client_hello():
    # SSL 2.0 record: CLIENT-HELLO, version 0.2, RC4-128-MD5 and DES-EDE3-CBC-MD5.
    specs = bytes([0x01, 0x00, 0x80, 0x07, 0x00, 0xc0])
    challenge = os.urandom(16)
    body = bytes([0x01, 0x00, 0x02, 0, len(specs), 0, 0, 0, len(challenge)]) + specs + challenge
    return bytes([0x80 | (len(body) >> 8), len(body) & 0xff]) + body


def no_server_hello(answer):
    return answer[0] in ('alert', 'closed') or (
        answer[0] == 'other' and answer[1][:1] != b'\x16' and
        not (len(answer[1]) > 2 and answer[1][0] & 0x80 and answer[1][2] == 0x04))


def check_gnutls(tap, dep):
    for name, vers in (('TLS 1.0', 'VERS-TLS1.0'), ('TLS 1.1', 'VERS-TLS1.1')):
        rc, out = gnutls_cli(dep, 'NORMAL:-VERS-ALL:+' + vers)
        offered = 'Error in priorities' not in out
        if not tap.ok(offered and rc != 0 and not completed(out),
                      'gnutls-cli offering only %s is refused' % name):
            tap.diag(out[-800:])

    rc, out = gnutls_cli(dep, 'NORMAL:-VERS-ALL:+VERS-SSL3.0')
    if 'Error in priorities' in out or 'insufficient priorities' in out:
        tap.skip('gnutls-cli offering only SSL 3.0 is refused',
                 'this gnutls-cli cannot offer SSL 3.0; the hand-made hello below checks it')
    else:
        tap.ok(rc != 0 and not completed(out), 'gnutls-cli offering only SSL 3.0 is refused')

    null_prio = ('NONE:+VERS-TLS1.2:+NULL:+MAC-ALL:+RSA:+ECDHE-RSA:+SIGN-ALL:+COMP-NULL:'
                 '+GROUP-ALL:+CTYPE-X509')
    _, listing = h.run(['gnutls-cli', '-l', '--priority', null_prio])
    rc, out = gnutls_cli(dep, null_prio)
    if not tap.ok('_NULL_' in listing and rc != 0 and not completed(out),
                  'gnutls-cli offering only NULL-cipher suites is refused'):
        tap.diag(out[-800:])

    for suite, mac in (('TLS_RSA_WITH_AES_128_CBC_SHA', 'SHA1'),
                       ('TLS_RSA_WITH_AES_128_CBC_SHA256', 'SHA256')):
        prio = ('NONE:+VERS-TLS1.2:+AES-128-CBC:+%s:+RSA:+SIGN-ALL:+COMP-NULL:+GROUP-ALL:'
                '+CTYPE-X509' % mac)
        rc, out = gnutls_cli(dep, prio, verbose=True)
        got = (rc == 0 and completed(out)
               and re.search(r'^- Version: TLS1\.2$', out, re.M)
               and re.search(r'^- Key Exchange: RSA$', out, re.M)
               and re.search(r'^- Cipher: AES-128-CBC$', out, re.M)
               and re.search(r'^- MAC: %s$' % mac, out, re.M))
        if not tap.ok(got, 'gnutls-cli negotiates the mandatory %s' % suite):
            tap.diag('\n'.join(l for l in out.splitlines()
                               if l.startswith(('- ', '***', '|<')))[-800:])


def check_hellos(tap, dep):
    port, sni = dep.port, dep.domain
    ans = h.hello_answer(port, h.client_hello(TLS12, STRONG, sni))
    control = tap.ok(ans[0] == 'server_hello' and ans[1] == TLS12,
                     'control: a hand-made TLS 1.2 ClientHello gets a ServerHello (%r)'
                     % (ans,))
    for name, version, suites in (('a TLS 1.1', TLS11, STRONG), ('a TLS 1.0', TLS10, STRONG),
                                  ('an SSL 3.0', SSL30, [RSA_AES128_SHA, 0x000a, 0x0005])):
        ans = h.hello_answer(port, h.client_hello(version, suites, sni,
                                                  extensions=version != SSL30))
        tap.ok(control and no_server_hello(ans),
               '%s ClientHello gets no ServerHello (%r)' % (name, ans))
    ans = h.hello_answer(port, ssl2_client_hello())
    tap.ok(control and no_server_hello(ans), 'an SSL 2.0 ClientHello gets no ServerHello (%r)'
           % (ans,))
    for name, suites in (('NULL', NULL_SUITES), ('anonymous', ANON_SUITES),
                         ('export', EXPORT_SUITES), ('RC4', RC4_SUITES)):
        ans = h.hello_answer(port, h.client_hello(TLS12, suites, sni))
        tap.ok(control and no_server_hello(ans),
               'a TLS 1.2 ClientHello offering only %s suites gets no ServerHello (%r)'
               % (name, ans))
    for name, suite in (('TLS_RSA_WITH_AES_128_CBC_SHA', RSA_AES128_SHA),
                        ('TLS_RSA_WITH_AES_128_CBC_SHA256', RSA_AES128_SHA256)):
        ans = h.hello_answer(port, h.client_hello(TLS12, [suite], sni))
        tap.ok(ans == ('server_hello', TLS12, suite),
               'a ClientHello offering only %s gets it (%r)' % (name, ans))
    # Forward-secret AEAD first: offered CBC suites (with and without ECDHE) before an ECDHE
    # AEAD one, the server still picks the AEAD one.
    offer = [RSA_AES128_SHA, RSA_AES128_SHA256, ECDHE_RSA_AES256_SHA, ECDHE_RSA_AES128_SHA,
             ECDHE_RSA_AES128_GCM]
    ans = h.hello_answer(port, h.client_hello(TLS12, offer, sni))
    tap.ok(ans[0] == 'server_hello' and ans[2] in AEAD_FS,
           'the server prefers a forward-secret AEAD suite over CBC ones (chose %s)'
           % ('0x%04x' % ans[2] if ans[0] == 'server_hello' else ans))


def check_sslscan(tap, dep):
    xml_path = os.path.join(dep.dir, 'sslscan.xml')
    rc, out = h.run(['sslscan', '--no-colour', '--sni-name=' + dep.domain,
                     '--xml=' + xml_path, '%s:%d' % (h.HOST, dep.port)], timeout=180)
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        tap.ok(False, 'sslscan wrote its report (%s, status %s)' % (exc, rc))
        tap.diag(out[-1000:])
        return
    protocols = {(p.get('type'), p.get('version')): p.get('enabled')
                 for p in root.iter('protocol')}
    weak_protocols = [('ssl', '2'), ('ssl', '3'), ('tls', '1.0'), ('tls', '1.1')]
    tap.ok(all(protocols.get(p) == '0' for p in weak_protocols)
           and protocols.get(('tls', '1.2')) == '1',
           'sslscan: SSLv2, SSLv3, TLS 1.0, TLS 1.1 disabled; TLS 1.2 enabled (%s)'
           % sorted(protocols.items()))
    accepted = [c for c in root.iter('cipher') if c.get('status') in ('accepted', 'preferred')]
    weak = [c.get('cipher') for c in accepted
            if re.search(r'NULL|ANON|ADH|AECDH|EXP|RC4|DES-CBC-|MD5', c.get('cipher', '').upper())
            or c.get('bits') in ('0', None)]
    tap.ok(accepted and not weak, 'sslscan: %d suites accepted, none NULL, anonymous, '
           'export or RC4 (weak: %s)' % (len(accepted), weak))
    names = {c.get('cipher') for c in accepted}
    tap.ok({'AES128-SHA', 'AES128-SHA256'} <= names,
           'sslscan: both mandatory suites (AES128-SHA, AES128-SHA256) accepted')
    preferred12 = [c.get('cipher') for c in root.iter('cipher')
                   if c.get('status') == 'preferred' and c.get('sslversion') == 'TLSv1.2']
    tap.ok(preferred12 and re.match(r'(ECDHE|DHE)-.*(GCM|CHACHA20|CCM)', preferred12[0]),
           'sslscan: the preferred TLS 1.2 suite is forward-secret AEAD (%s)' % preferred12)


def check_floor(tap):
    """A configured priority cannot re-enable what the policy forbids."""
    weak = 'NORMAL:+VERS-TLS1.1:+VERS-TLS1.0:+NULL:+ARCFOUR-128:+ANON-DH:+ANON-ECDH'
    with h.Deployment(tap, tls={'priority': weak}) as dep:
        dep.start()
        port, sni = dep.port, dep.domain
        ans = h.hello_answer(port, h.client_hello(TLS12, STRONG, sni))
        control = ans[0] == 'server_hello'
        results = {}
        for name, version, suites in (('TLS 1.0', TLS10, STRONG), ('TLS 1.1', TLS11, STRONG),
                                      ('NULL', TLS12, NULL_SUITES), ('RC4', TLS12, RC4_SUITES),
                                      ('anonymous', TLS12, ANON_SUITES)):
            results[name] = h.hello_answer(port, h.client_hello(version, suites, sni))
        tap.ok(control and all(no_server_hello(a) for a in results.values()),
               'priority=%s still refuses TLS 1.0, TLS 1.1, NULL, RC4 and anonymous (%r)'
               % (weak, results))


def main(tap):
    h.require_tools('certtool', 'gnutls-cli', 'sslscan')
    with h.Deployment(tap) as dep:
        dep.start()
        check_gnutls(tap, dep)
        check_hellos(tap, dep)
        check_sslscan(tap, dep)
        tap.ok(h.options_ok(dep), 'the daemon still answers OPTIONS with 200')
    check_floor(tap)


h.run_tap(main)
