#!/usr/bin/env python3
"""sipcred ca makes what sec-flows' makeCA and makeCert make, and tools we did not write agree:
certtool reads the SIP profiles (SANs, EKU, key usage), openssl verifies the chain (and refuses
the expired and the revoked certificate), opens the PKCS#12 and the encrypted PKCS#8 with the
draft's password and lists the revoked serial in the CRL; sipcredd serves TLS with an issued
host certificate that gnutls-cli accepts, and refuses once the CRL revokes it."""

import os
import shutil
import stat
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402


def sipcred(*args, timeout=60):
    return h.run([h.binary('sipcred')] + list(args), timeout=timeout)


def certtool_info(path, der=False):
    argv = ['certtool', '-i', '--infile', path] + (['--inder'] if der else [])
    rc, out = h.run(argv)
    return out if rc == 0 else ''


def openssl_pubkey_of_cert(path):
    rc, out = h.run(['openssl', 'x509', '-in', path, '-noout', '-pubkey'])
    return out.strip() if rc == 0 else None


def openssl_pubkey_of_key_text(text, workdir):
    """The public key of a PEM private key found in text (openssl output)."""
    start = text.find('-----BEGIN PRIVATE KEY-----')
    end = text.find('-----END PRIVATE KEY-----')
    if start < 0 or end < 0:
        return None
    path = os.path.join(workdir, 'extracted.key')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(text[start:end + len('-----END PRIVATE KEY-----')] + '\n')
    rc, out = h.run(['openssl', 'pkey', '-in', path, '-pubout'])
    os.unlink(path)
    return out.strip() if rc == 0 else None


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def serial_of(path):
    rc, out = h.run(['openssl', 'x509', '-in', path, '-noout', '-serial'])
    return out.strip().split('=', 1)[1].upper() if rc == 0 and '=' in out else None


def check_files(tap, d):
    ca = os.path.join(d, 'ca.pem')
    rc, out = sipcred('ca', 'init', d, '--cn', 'Interop Test CA')
    if not tap.ok(rc == 0, 'sipcred ca init succeeds'):
        tap.diag(out)
        return
    tap.ok(all(os.path.isfile(os.path.join(d, n)) for n in ('ca.pem', 'ca.der', 'ca.key')),
           'ca init writes ca.pem, ca.der and ca.key')
    tap.ok(mode(os.path.join(d, 'ca.key')) == 0o600, 'ca.key is mode 0600')
    info = certtool_info(ca)
    tap.ok('Certificate Authority (CA): TRUE' in info and 'Certificate signing.' in info
           and 'CRL signing.' in info and 'CN=Interop Test CA' in info,
           'certtool: the CA has CA:TRUE, keyCertSign and cRLSign, and the given CN')
    tap.ok('Basic Constraints (critical)' in info, 'certtool: its basicConstraints are critical')
    tap.ok(certtool_info(os.path.join(d, 'ca.der'), der=True) == info,
           'ca.der is the same certificate as ca.pem')
    rc, out = sipcred('ca', 'init', d)
    tap.ok(rc == 1 and 'exists' in out, 'a second ca init refuses to replace the CA')

    issued = [('host', 'example.com', []), ('user', 'sip:alice@example.com', []),
              ('host', 'old.example.com', ['--days', '0']),
              ('host', 'noeku.example.com', ['--no-eku']),
              ('user', 'sip:bob@example.com', ['--no-eku'])]
    for kind, subject, extra in issued:
        rc, out = sipcred('ca', 'issue', kind, subject, '--ca', d, *extra)
        if not tap.ok(rc == 0, 'sipcred ca issue %s %s %s' % (kind, subject, ' '.join(extra))):
            tap.diag(out)
            return

    names = ['example.com', 'alice', 'old.example.com', 'noeku.example.com', 'bob']
    tap.ok(all(os.path.isfile(os.path.join(d, n + ext)) for n in names
               for ext in ('.pem', '.der', '.key', '.p8', '.p12')),
           'every issued certificate has .pem, .der, .key, .p8 and .p12')
    tap.ok(all(mode(os.path.join(d, n + ext)) == 0o600 for n in names
               for ext in ('.key', '.p8', '.p12')),
           'the .key, .p8 and .p12 files are mode 0600')

    host = certtool_info(os.path.join(d, 'example.com.pem'))
    tap.ok('DNSname: example.com' in host and 'URI: sip:example.com' in host,
           'certtool: host certificate has SAN dNSName and URI sip: of the domain')
    tap.ok('TLS WWW Server' in host and '1.3.6.1.5.5.7.3.20' in host,
           'certtool: host certificate has EKU serverAuth and id-kp-sipDomain')
    tap.ok('Digital signature.' in host and 'Non repudiation.' in host
           and 'Key encipherment.' in host and 'Certificate Authority (CA): FALSE' in host,
           'certtool: host key usage digitalSignature, nonRepudiation, keyEncipherment; '
           'not a CA')
    tap.ok('CN=example.com' in host and 'RSA-SHA256' in host and '2048 bits' in host,
           'certtool: CN is the domain, RSA 2048, signed with RSA-SHA256')

    alice = certtool_info(os.path.join(d, 'alice.pem'))
    tap.ok(all('URI: %s:alice@example.com' % s in alice for s in ('sip', 'im', 'pres')),
           'certtool: user certificate has SAN URIs sip:, im: and pres: of the AOR')
    tap.ok('Email protection' in alice and '1.3.6.1.5.5.7.3.20' in alice
           and 'TLS WWW Server' not in alice,
           'certtool: user certificate has EKU emailProtection and id-kp-sipDomain')
    tap.ok(all('Key Purpose' not in certtool_info(os.path.join(d, n + '.pem'))
               for n in ('noeku.example.com', 'bob')),
           'certtool: --no-eku certificates have no extendedKeyUsage')
    tap.ok('DNSname: noeku.example.com' in certtool_info(os.path.join(d, 'noeku.example.com.pem')),
           '--no-eku keeps the subjectAltName')

    s1, s2 = serial_of(os.path.join(d, 'example.com.pem')), serial_of(os.path.join(d, 'alice.pem'))
    tap.ok(s1 and s2 and s1 != s2 and len(s1) == 32 and int(s1[0], 16) < 8,
           'serials are distinct positive 128-bit numbers (%s, %s)' % (s1, s2))

    rc, out = h.run(['openssl', 'verify', '-CAfile', ca] +
                    [os.path.join(d, n + '.pem') for n in
                     ('example.com', 'alice', 'noeku.example.com', 'bob')])
    if not tap.ok(rc == 0, 'openssl verify -CAfile ca.pem accepts the issued certificates'):
        tap.diag(out)
    rc, out = h.run(['openssl', 'verify', '-CAfile', ca, os.path.join(d, 'old.example.com.pem')])
    tap.ok(rc != 0 and 'expired' in out, 'openssl verify refuses the --days 0 certificate: '
           'expired')
    rc, out = h.run(['openssl', 'x509', '-in', os.path.join(d, 'old.example.com.pem'), '-noout',
                     '-checkend', '0'])
    tap.ok(rc != 0, 'openssl x509 -checkend 0: the --days 0 certificate has expired')

    cert_pub = openssl_pubkey_of_cert(os.path.join(d, 'alice.pem'))
    p12 = os.path.join(d, 'alice.p12')
    rc, out = h.run(['openssl', 'pkcs12', '-in', p12, '-passin', 'pass:password', '-nodes'])
    tap.ok(rc == 0 and 'BEGIN CERTIFICATE' in out and 'BEGIN PRIVATE KEY' in out,
           'openssl pkcs12 opens alice.p12 with the password "password"')
    tap.ok(cert_pub is not None and openssl_pubkey_of_key_text(out, d) == cert_pub,
           'the key in the PKCS12 file is the key of alice.pem')
    rc, _ = h.run(['openssl', 'pkcs12', '-in', p12, '-passin', 'pass:wrong', '-nodes'])
    tap.ok(rc != 0, 'openssl pkcs12 refuses a wrong password')

    rc, out = h.run(['openssl', 'pkcs8', '-inform', 'DER', '-in', os.path.join(d, 'alice.p8'),
                     '-passin', 'pass:password'])
    tap.ok(rc == 0 and openssl_pubkey_of_key_text(out, d) == cert_pub,
           'openssl pkcs8 decrypts alice.p8 with "password" to the key of alice.pem')
    rc, out = h.run(['openssl', 'asn1parse', '-inform', 'DER', '-in',
                     os.path.join(d, 'alice.p8')])
    tap.ok(rc == 0 and ':PBES2' in out and ':PBKDF2' in out and 'hmacWithSHA256' in out,
           'alice.p8 is PBES2 with PBKDF2 HMAC-SHA256')
    rc, out = h.run(['openssl', 'pkey', '-in', os.path.join(d, 'alice.key'), '-pubout'])
    tap.ok(rc == 0 and out.strip() == cert_pub
           and open(os.path.join(d, 'alice.key')).read().startswith(
               '-----BEGIN PRIVATE KEY-----'),
           'alice.key is unencrypted PKCS8 PEM of the same key')

    pw = os.path.join(d, 'pw')
    with open(pw, 'w') as f:
        f.write('other secret\n')
    out_dir = os.path.join(d, 'out')
    rc, out = sipcred('ca', 'issue', 'user', 'carol@example.com', '--ca', d, '--out', out_dir,
                      '--password-file', pw)
    rc2, _ = h.run(['openssl', 'pkcs12', '-in', os.path.join(out_dir, 'carol.p12'),
                    '-passin', 'pass:other secret', '-nodes'])
    tap.ok(rc == 0 and rc2 == 0 and not os.path.exists(os.path.join(d, 'carol.pem')),
           '--password-file and --out: carol.p12 in the other directory opens with that '
           'password')
    tap.ok('other secret' not in out, 'the password is not printed')

    before = open(os.path.join(d, 'alice.key'), 'rb').read()
    rc, out = sipcred('ca', 'issue', 'user', 'sip:alice@example.com', '--ca', d)
    tap.ok(rc == 1 and 'exists' in out
           and open(os.path.join(d, 'alice.key'), 'rb').read() == before,
           'issuing the same name again without --force changes nothing')
    rc, out = sipcred('ca', 'issue', 'host', '../evil', '--ca', d)
    tap.ok(rc == 1 and not os.path.exists(os.path.join(os.path.dirname(d), 'evil.pem')),
           'a domain name with a slash is refused')
    rc, _ = sipcred('ca', 'issue', 'host', 'x.example.com', '--ca', d, '--days', '-1')
    tap.ok(rc == 2, 'a negative --days is a usage error')

    # Revocation and the CRL.
    rc, out = sipcred('ca', 'revoke', 'alice', '--ca', d)
    tap.ok(rc == 0 and s2.lower() in out, 'sipcred ca revoke alice names its serial')
    rc, out = sipcred('ca', 'crl', '--ca', d)
    tap.ok(rc == 0 and os.path.isfile(os.path.join(d, 'ca.crl'))
           and os.path.isfile(os.path.join(d, 'ca.crl.der')),
           'sipcred ca crl writes ca.crl and ca.crl.der')
    rc, text = h.run(['openssl', 'crl', '-in', os.path.join(d, 'ca.crl'), '-noout', '-text'])
    tap.ok(rc == 0 and ('Serial Number: ' + s2) in text and s1 not in text,
           'openssl crl lists the revoked serial, and only it')
    tap.ok('sha256WithRSAEncryption' in text and 'CRL Number' in text,
           'the CRL is signed with sha256WithRSA and numbered')
    rc, out = h.run(['openssl', 'crl', '-in', os.path.join(d, 'ca.crl'), '-CAfile', ca,
                     '-noout'])
    tap.ok(rc == 0 and 'verify OK' in out, 'openssl crl verifies the CRL against ca.pem')
    rc, out = h.run(['openssl', 'crl', '-inform', 'DER', '-in', os.path.join(d, 'ca.crl.der'),
                     '-noout', '-text'])
    tap.ok(rc == 0 and ('Serial Number: ' + s2) in out, 'ca.crl.der is the same CRL in DER')
    crl_check = ['openssl', 'verify', '-crl_check', '-CAfile', ca, '-CRLfile',
                 os.path.join(d, 'ca.crl')]
    rc, out = h.run(crl_check + [os.path.join(d, 'alice.pem')])
    tap.ok(rc != 0 and 'revoked' in out, 'openssl verify -crl_check refuses alice: revoked')
    rc, out = h.run(crl_check + [os.path.join(d, 'example.com.pem')])
    tap.ok(rc == 0, 'openssl verify -crl_check still accepts example.com')
    rc, out = sipcred('ca', 'revoke', 'nobody', '--ca', d)
    tap.ok(rc == 1, 'revoking a name the CA never issued fails')


class CaDeployment(h.Deployment):
    """A deployment whose certificates come from sipcred ca instead of make-test-ca.sh."""

    def make_certs(self):
        steps = [['ca', 'init', self.dir]]
        steps += [['ca', 'issue', 'host', dom, '--ca', self.dir] for dom in self.domains]
        steps += [['ca', 'issue', 'user', u, '--ca', self.dir] for u in self.users]
        for step in steps:
            rc, out = sipcred(*step)
            if rc != 0:
                raise RuntimeError('sipcred %s failed:\n%s' % (' '.join(step), out))


def gnutls_cli(dep, crl=None):
    argv = ['gnutls-cli', '--x509cafile=' + dep.ca, '-p', str(dep.port),
            '--sni-hostname=' + dep.domain, '--verify-hostname=' + dep.domain]
    if crl:
        argv.append('--x509crlfile=' + crl)
    return h.run(argv + [h.HOST], timeout=20, input_bytes=b'')


def check_daemon(tap):
    with CaDeployment(tap, domains=('example.com',), users=('sip:alice@example.com',)) as dep:
        rc, out = dep.sipcred('cred', 'import', 'sip:alice@example.com',
                              dep.user_pem('sip:alice@example.com'))
        if not tap.ok(rc == 0, 'sipcred cred import accepts a user certificate from sipcred ca'):
            tap.diag(out)
        dep.start()
        rc, out = gnutls_cli(dep)
        if not tap.ok(rc == 0 and 'Handshake was completed' in out,
                      'gnutls-cli --x509cafile ca.pem accepts sipcredd serving the sipcred ca '
                      'host certificate'):
            tap.diag(out[-800:])
        tap.ok(h.options_ok(dep), 'a SIP OPTIONS over that TLS (Python ssl, hostname checked) '
               'gets 200')

        rc, out = sipcred('ca', 'revoke', 'example.com', '--ca', dep.dir)
        rc2, out2 = sipcred('ca', 'crl', '--ca', dep.dir)
        tap.ok(rc == 0 and rc2 == 0, 'the host certificate is revoked and a CRL written')
        rc, out = gnutls_cli(dep, crl=os.path.join(dep.dir, 'ca.crl'))
        if not tap.ok(rc != 0 and 'revoked' in out.lower(),
                      'gnutls-cli with that CRL refuses the server: revoked'):
            tap.diag(out[-800:])


def main(tap):
    h.require_tools('certtool', 'openssl', 'gnutls-cli')
    d = tempfile.mkdtemp(prefix='sipcred-ca-it-')
    failures = tap.failures
    try:
        check_files(tap, os.path.join(d, 'ca'))
    finally:
        if tap.failures == failures and not os.environ.get('SIPCRED_KEEP_TMP'):
            shutil.rmtree(d, ignore_errors=True)
        else:
            tap.diag('kept ' + d)
    check_daemon(tap)


h.run_tap(main)
