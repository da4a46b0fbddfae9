#!/usr/bin/env python3
"""Floods and password guessing against the running daemon over real TLS: each [limits] rate
limit holds with a precise answer (503, a reason naming the limit, Retry-After) while the
daemon keeps serving everybody else, and the failed-attempt lockout of [auth] stops a
dictionary attack. Clients play several hosts by connecting from 127.0.0.x (Linux routes all
of 127/8 to lo).

1. A SUBSCRIBE flood from 127.0.0.1 gets 503 "Too many SUBSCRIBEs from this address" with
   Retry-After; a SUBSCRIBE from 127.0.0.2 meanwhile gets 200 and the certificate.
2. SUBSCRIBEs to one AOR (each from its own address) get 503 "Too many SUBSCRIBEs to this AOR";
   another AOR is served; after Retry-After seconds the first is served again.
3. PUBLISHes of one user over the limit get 503 with Retry-After, and nothing of the refused
   PUBLISH reaches the store (the stored certificate and ETag are those of the last 200);
   another user's PUBLISH succeeds.
4. SIPVicious-style guessing (svcrack: REGISTER with a dictionary of passwords) for one user
   from 127.0.0.1 gets 401s, then 403 with Retry-After. Another user from 127.0.0.2
   authenticates and registers meanwhile.
   The victim: the lockout counts per user name as well as per address (sipcredd.conf(5)
   [auth]), so during the lockout the victim's OWN correct login from another address
   (127.0.0.3) is refused too, with 403 and Retry-After, for at most lockout-max seconds
   (here lockout-base=60). That is the price of stopping a guesser who spreads over many
   addresses: the password is never guessable faster than the lockout allows, and the user is
   held off only while someone keeps guessing. Other users are not affected.
5. sipcred stats counts the 503s (sipcred_rate_limited_total) and the 403s
   (sipcred_auth_lockouts_total).
6. A SIGHUP with the per-source limit off lets 127.0.0.1 subscribe again at once, and
   --check-config names a bad [limits] value with its line."""

import os
import re
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402
import regclient as rc  # noqa: E402

D = 'example.com'
ALICE, BOB, CAROL = ('sip:%s@%s' % (u, D) for u in ('alice', 'bob', 'carol'))
PAT, QUINN, DAVE, EVE = ('sip:%s@%s' % (u, D) for u in ('pat', 'quinn', 'dave', 'eve'))
PW = {PAT: 'pat-secret', QUINN: 'quinn-secret', DAVE: 'dave-Secret-7', EVE: 'eve-secret'}

# Per source: 5 at once, then one per 100 s, so that 127.0.0.1 stays refused for the whole
# test unless a reload lifts the limit. Per AOR: 3 at once, then one per 2 s. PUBLISH: 2 at
# once, then one per 10 s.
LIMITS = '''
[limits]
subscribe-per-source=0.01
subscribe-per-source-burst=5
subscribe-per-aor=0.5
subscribe-per-aor-burst=3
publish-per-user=0.1
publish-per-user-burst=2

[auth]
free-failures=3
lockout-base=60
lockout-max=120
'''

SOURCE_PHRASE = 'Too many SUBSCRIBEs from this address'
AOR_PHRASE = 'Too many SUBSCRIBEs to this AOR'
PUBLISH_PHRASE = 'Too many PUBLISHes from this user'
DICTIONARY = ['123456', 'password', 'dave', 'dave123', 'qwerty', 'letmein', 'sip', 'admin']


def reason(resp):
    return resp.start.split(' ', 2)[2] if resp is not None else None


def retry_after(resp):
    v = (resp.get('retry-after') or '').strip() if resp is not None else ''
    m = re.match(r'^(\d+)', v)
    return int(m.group(1)) if m else None


def subscribe(dep, aor, source):
    """An initial certificate SUBSCRIBE to @aor from @source: (final response, NOTIFY)."""
    with dep.connect(source=source) as c:
        return h.Subscription(c, aor).exchange(600)


def refused(resp, phrase, most):
    """A 503 with @phrase and a Retry-After of 1..@most seconds."""
    return (resp is not None and resp.code == 503 and reason(resp) == phrase and
            retry_after(resp) is not None and 1 <= retry_after(resp) <= most)


class Material:
    """Self-signed certificates for PUBLISH, made with certtool (not with our code)."""

    def __init__(self, d):
        self.dir = d
        self.n = 0
        self.key = os.path.join(d, 'pub.key')
        code, out = h.run(['certtool', '--generate-privkey', '--key-type=rsa', '--bits=2048',
                           '--outfile', self.key])
        if code != 0:
            raise RuntimeError(out)

    def cert(self, aor):
        self.n += 1
        tmpl = os.path.join(self.dir, 'pub%d.tmpl' % self.n)
        out_path = os.path.join(self.dir, 'pub%d.der' % self.n)
        with open(tmpl, 'w') as f:
            f.write('cn = "%s"\nuri = "%s"\nserial = %d\nsigning_key\nencryption_key\n'
                    'expiration_days = 30\n' % (aor.split(':', 1)[1], aor, 1000 + self.n))
        code, out = h.run(['certtool', '--generate-self-signed', '--load-privkey', self.key,
                           '--template', tmpl, '--outder', '--outfile', out_path])
        if code != 0:
            raise RuntimeError(out)
        with open(out_path, 'rb') as f:
            return f.read()


def stored_etag(dep, aor):
    code, out = dep.sipcred('cred', 'show', aor)
    m = re.search(r'^etag: (\S+)', out, re.M)
    return m.group(1) if code == 0 and m else None


def per_source(tap, dep, counts):
    answers = []
    first_refusal = None
    for i in range(12):  # bounded; the sixth is over the burst of 5
        final, _ = subscribe(dep, 'sip:flood%d@%s' % (i, D), '127.0.0.1')
        answers.append(final.code if final else None)
        if final is not None and final.code == 503:
            first_refusal = final
            break
    counts['503'] += answers.count(503)
    tap.ok(answers[:5] == [200] * 5 and answers[5:] == [503],
           'a SUBSCRIBE flood from 127.0.0.1: 5 (the burst) get 200, the next 503 (%s)'
           % answers)
    tap.ok(refused(first_refusal, SOURCE_PHRASE, 100),
           'the 503 says "%s" and has Retry-After (%s, Retry-After %s)'
           % (SOURCE_PHRASE, reason(first_refusal), retry_after(first_refusal)))
    final, notify = subscribe(dep, ALICE, '127.0.0.2')
    tap.ok(final is not None and final.code == 200 and notify is not None and
           notify.body == dep.export_der(ALICE),
           'meanwhile a SUBSCRIBE from 127.0.0.2 gets 200 and the certificate (%s)'
           % (final.code if final else None))


def per_aor(tap, dep, counts):
    answers = []
    first_refusal = None
    for i in range(8):  # bounded; the fourth is over the burst of 3 unless 2 s passed
        final, _ = subscribe(dep, BOB, '127.0.0.%d' % (10 + i))
        answers.append(final.code if final else None)
        if final is not None and final.code == 503:
            first_refusal = final
            break
    counts['503'] += answers.count(503)
    tap.ok(answers[:3] == [200] * 3 and answers[-1] == 503 and
           all(a == 200 for a in answers[:-1]),
           'SUBSCRIBEs to Bob, each from its own address: the burst gets 200, then 503 (%s)'
           % answers)
    tap.ok(refused(first_refusal, AOR_PHRASE, 2),
           'the 503 says "%s" and has Retry-After of at most 2 s (%s, %s)'
           % (AOR_PHRASE, reason(first_refusal), retry_after(first_refusal)))
    final, notify = subscribe(dep, CAROL, '127.0.0.30')
    tap.ok(final is not None and final.code == 200 and notify is not None and
           notify.body == dep.export_der(CAROL),
           'meanwhile Carol (another AOR) is served with her certificate (%s)'
           % (final.code if final else None))
    wait = min(retry_after(first_refusal) or 2, 5)
    time.sleep(wait)
    final, notify = subscribe(dep, BOB, '127.0.0.31')
    tap.ok(final is not None and final.code == 200 and notify is not None and
           notify.body == dep.export_der(BOB),
           'after Retry-After (%d s) Bob is served again (%s)'
           % (wait, final.code if final else None))


def per_user_publish(tap, dep, mat, counts):
    certs = [mat.cert(PAT) for _ in range(3)]
    with dep.connect() as c:
        pub = cc.Publisher(c, PAT, 'pat', PW[PAT])
        codes = [pub.publish(certs[i], 'application/pkix-cert', expires=3600).code
                 for i in range(2)]
        etag = pub.etag
        tap.ok(codes == [200, 200] and etag is not None and stored_etag(dep, PAT) == etag,
               'Pat publishes twice (the burst): 200, 200; the store has the second ETag '
               '(%s)' % codes)
        third = pub.publish(certs[2], 'application/pkix-cert', expires=3600)
    if third.code == 503:
        counts['503'] += 1
    tap.ok(refused(third, PUBLISH_PHRASE, 10),
           'a third PUBLISH gets 503 "%s" with Retry-After of at most 10 s (%s %s, %s)'
           % (PUBLISH_PHRASE, third.code, reason(third), retry_after(third)))
    tap.ok(third.get('sip-etag') is None, 'the 503 carries no SIP-ETag')
    tap.ok(stored_etag(dep, PAT) == etag and dep.export_der(PAT) == certs[1],
           'nothing of the refused PUBLISH reached the store: same ETag, same certificate')
    with dep.connect() as c:
        pub = cc.Publisher(c, QUINN, 'quinn', PW[QUINN])
        resp = pub.publish(mat.cert(QUINN), 'application/pkix-cert', expires=3600)
        tap.ok(resp.code == 200 and stored_etag(dep, QUINN) == pub.etag,
               "meanwhile Quinn's PUBLISH succeeds and is stored (%s)" % resp.code)


def password_guessing(tap, dep, counts):
    attacker = rc.Ua(dep, DAVE, 'x', source='127.0.0.1')
    codes = []
    last = None
    try:
        for word in DICTIONARY:
            attacker.password = word
            attacker.digest = None  # a fresh challenge per guess, as svcrack does
            last = attacker.register(expires=600)
            codes.append(last.code)
    finally:
        attacker.close()
    counts['403'] += codes.count(403)
    # free-failures=3: three failures are free, the fourth locks out (and is itself answered
    # 401), every guess after that gets 403.
    tap.ok(codes[:4] == [401] * 4 and codes[4:] == [403] * (len(DICTIONARY) - 4),
           'a dictionary of wrong passwords for Dave from 127.0.0.1: 401 x4, then 403 (%s)'
           % codes)
    tap.ok(retry_after(last) is not None and 1 <= retry_after(last) <= 120 and
           'failed attempts' in (reason(last) or ''),
           'the 403 says why and has Retry-After (%s, %s)' % (reason(last), retry_after(last)))

    eve = rc.Ua(dep, EVE, PW[EVE], source='127.0.0.2')
    try:
        resp = eve.register(expires=600)
    finally:
        eve.close()
    tap.ok(resp.code == 200, 'meanwhile Eve from 127.0.0.2 authenticates and registers (%s)'
           % resp.code)

    # The victim's own correct password, from another address: held off by the per-user
    # lockout (see the docstring).
    dave = rc.Ua(dep, DAVE, PW[DAVE], source='127.0.0.3')
    try:
        resp = dave.register(expires=600)
    finally:
        dave.close()
    if resp.code == 403:
        counts['403'] += 1
    tap.ok(resp.code == 403 and retry_after(resp) is not None,
           "Dave's own right password from 127.0.0.3 during the lockout: 403 with Retry-After "
           '(%s, %s)' % (resp.code, retry_after(resp)))
    tap.ok(dep.alive(), 'the daemon is alive')


def stats(tap, dep, counts):
    code, out = dep.sipcred('stats')
    got = {}
    for line in out.splitlines():
        if line and not line.startswith('#'):
            name, _, value = line.rpartition(' ')
            got[name] = value
    tap.ok(code == 0 and got.get('sipcred_rate_limited_total') == str(counts['503']),
           'sipcred stats: sipcred_rate_limited_total is the %d 503s seen (%s)'
           % (counts['503'], got.get('sipcred_rate_limited_total')))
    tap.ok(got.get('sipcred_auth_lockouts_total') == str(counts['403']),
           'sipcred stats: sipcred_auth_lockouts_total is the %d 403s seen (%s)'
           % (counts['403'], got.get('sipcred_auth_lockouts_total')))


def count_log(dep, text):
    with open(dep.log, 'rb') as f:
        return f.read().decode('utf-8', 'replace').count(text)


def reload_and_check(tap, dep):
    final, _ = subscribe(dep, 'sip:after@%s' % D, '127.0.0.1')
    tap.ok(final is not None and final.code == 503,
           '127.0.0.1 is still refused before the reload (%s)' % (final.code if final else None))
    with open(dep.conf) as f:
        text = f.read()
    with open(dep.conf, 'w') as f:
        f.write(text.replace('subscribe-per-source=0.01\n', 'subscribe-per-source=0\n'))
    n = count_log(dep, 'reloaded TLS certificates')
    dep.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while count_log(dep, 'reloaded TLS certificates') == n and time.monotonic() < deadline:
        time.sleep(0.1)
    final, _ = subscribe(dep, 'sip:after@%s' % D, '127.0.0.1')
    tap.ok(final is not None and final.code == 200,
           'after SIGHUP with subscribe-per-source=0, 127.0.0.1 is served (%s)'
           % (final.code if final else None))

    bad = os.path.join(dep.dir, 'bad.conf')
    with open(bad, 'w') as f:
        f.write(text.replace('publish-per-user=0.1\n', 'publish-per-user=-1\n'))
    line = text.split('\n').index('publish-per-user=0.1') + 1
    code, out = h.run([h.binary('sipcredd'), '--check-config', '--config', bad])
    tap.ok(code != 0 and ':%d: [limits] publish-per-user' % line in out,
           '--check-config names the bad rate, its key and line (%s)' % out.strip()[-120:])


def main(tap):
    h.require_tools('certtool')
    users = (ALICE, BOB, CAROL)
    with h.Deployment(tap, users=users, extra=LIMITS) as dep:
        dep.import_certs()
        for aor, pw in PW.items():
            cc.add_user(dep, aor, pw)
        dep.start()
        counts = {'503': 0, '403': 0}
        per_source(tap, dep, counts)
        per_aor(tap, dep, counts)
        per_user_publish(tap, dep, Material(dep.dir), counts)
        password_guessing(tap, dep, counts)
        stats(tap, dep, counts)
        reload_and_check(tap, dep)
        tap.ok(dep.alive(), 'the daemon is alive at the end')


if __name__ == '__main__':
    h.run_tap(main)
