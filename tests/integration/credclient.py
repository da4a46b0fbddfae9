"""credclient -- the client side of the credential package, for the integration tests.

Digest authentication (RFC 7616 / RFC 8760 response computation), PUBLISH requests with
SIP-ETag handling, credential SUBSCRIBEs that answer a 401, and a multipart/mixed reader for
credential NOTIFY bodies. Built on sipcredharness; Python 3 standard library only.
"""

import hashlib
import os
import re
import time

from sipcredharness import (HOST, Subscription, new_id, request)


# --------------------------------------------------------------------------------------------
# Users

def add_user(dep, aor, password, may_generate=False):
    """Adds @aor with @password through our CLI (which stores only HA1 values)."""
    path = os.path.join(dep.dir, 'pw-%s' % new_id())
    with open(path, 'w') as f:
        f.write(password + '\n')
    args = ['user', 'add', aor, '--password-file', path]
    if may_generate:
        args.append('--may-generate')
    rc, out = dep.sipcred(*args)
    os.unlink(path)
    if rc != 0:
        raise RuntimeError('sipcred user add %s failed (%s):\n%s' % (aor, rc, out))


# --------------------------------------------------------------------------------------------
# Digest

def parse_challenge(value):
    """The parameters of one 'Digest ...' WWW-Authenticate value, names lower-cased."""
    m = re.match(r'\s*Digest\s+(.*)$', value, re.I | re.S)
    if not m:
        return None
    params = {}
    for pm in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]+)', m.group(1)):
        name = pm.group(1).lower()
        params[name] = pm.group(3) if pm.group(3) is not None else pm.group(2)
    return params


def challenges(resp):
    """Every Digest challenge of a 401, in the order sent."""
    out = []
    for v in resp.get_all('www-authenticate'):
        c = parse_challenge(v)
        if c is not None:
            out.append(c)
    return out


def _h(alg, text):
    fn = hashlib.sha256 if alg.upper() == 'SHA-256' else hashlib.md5
    return fn(text.encode('utf-8')).hexdigest()


class DigestState:
    """What a client remembers of a challenge: it counts nc up per request."""

    def __init__(self, challenge, username, password):
        self.c = challenge
        self.username = username
        self.password = password
        self.nc = 0
        self.alg = challenge.get('algorithm', 'MD5')

    def authorization(self, method, uri, nc=None, cnonce=None, password=None, response=None):
        """An Authorization value for the next request; the keyword arguments forge one."""
        if nc is None:
            self.nc += 1
            nc = self.nc
        cnonce = cnonce or new_id()
        realm = self.c['realm']
        ha1 = _h(self.alg, '%s:%s:%s' % (self.username, realm, password or self.password))
        ha2 = _h(self.alg, '%s:%s' % (method, uri))
        ncs = '%08x' % nc
        resp = response or _h(self.alg, ':'.join([ha1, self.c['nonce'], ncs, cnonce, 'auth', ha2]))
        parts = ['username="%s"' % self.username, 'realm="%s"' % realm,
                 'nonce="%s"' % self.c['nonce'], 'uri="%s"' % uri, 'response="%s"' % resp,
                 'algorithm=%s' % self.alg, 'cnonce="%s"' % cnonce, 'nc=%s' % ncs, 'qop=auth']
        if 'opaque' in self.c:
            parts.append('opaque="%s"' % self.c['opaque'])
        return 'Digest ' + ', '.join(parts)


def pick(resp, algorithm='SHA-256'):
    for c in challenges(resp):
        if c.get('algorithm', 'MD5').upper() == algorithm.upper():
            return c
    return None


# --------------------------------------------------------------------------------------------
# Requests on one connection

def final_response(conn, call_id, method, timeout=5.0, notifies=None):
    """Reads until the final response to @method in @call_id; NOTIFYs that arrive meanwhile
    are answered 200 and appended to @notifies."""
    deadline = time.monotonic() + timeout
    full_id = call_id + '@' + HOST
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('no final response to ' + method)
        msg = conn.read(left)
        if msg.is_request:
            if msg.method == 'NOTIFY':
                conn.answer(msg)
                if notifies is not None:
                    notifies.append(msg)
            continue
        if msg.get('call-id') == full_id and msg.cseq_method() == method and msg.code >= 200:
            return msg


class Publisher:
    """PUBLISH requests for one AOR on one connection, with digest and the ETag."""

    def __init__(self, conn, aor, username, password, algorithm='SHA-256'):
        self.conn = conn
        self.aor = aor
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.call_id = new_id()
        self.cseq = 0
        self.digest = None
        self.etag = None
        self.notifies = []

    def send(self, body=b'', content_type=None, expires=None, if_match=None, extra=(),
             authorization=None, to_uri=None, ruri=None):
        self.cseq += 1
        hdrs = ['Event: credential']
        if expires is not None:
            hdrs.append('Expires: %d' % expires)
        if if_match:
            hdrs.append('SIP-If-Match: ' + if_match)
        if content_type:
            hdrs.append('Content-Type: ' + content_type)
        if authorization:
            hdrs.append('Authorization: ' + authorization)
        hdrs += list(extra)
        self.conn.send(request('PUBLISH', ruri or self.aor, self.conn.local_port,
                               from_uri=self.aor, to_uri=to_uri or self.aor,
                               call_id=self.call_id, cseq=self.cseq, extra=hdrs, body=body))
        return final_response(self.conn, self.call_id, 'PUBLISH', notifies=self.notifies)

    def publish(self, body=b'', content_type=None, expires=None, if_match=None, extra=(),
                to_uri=None, ruri=None):
        """Sends the PUBLISH, answering one 401 with digest; returns the final response and
        remembers the SIP-ETag of a 2xx."""
        uri = ruri or self.aor
        auth = self.digest.authorization('PUBLISH', uri) if self.digest else None
        resp = self.send(body, content_type, expires, if_match, extra, auth, to_uri, ruri)
        if resp.code == 401:
            c = pick(resp, self.algorithm)
            if c is None:
                return resp
            self.digest = DigestState(c, self.username, self.password)
            resp = self.send(body, content_type, expires, if_match, extra,
                             self.digest.authorization('PUBLISH', uri), to_uri, ruri)
        if 200 <= resp.code < 300 and resp.get('sip-etag'):
            self.etag = resp.get('sip-etag').strip()
        return resp


class CredSubscription(Subscription):
    """A credential (or certificate) subscription that answers a 401 with digest."""

    def __init__(self, conn, aor, username=None, password=None, event='credential',
                 accept=None, algorithm='SHA-256'):
        super().__init__(conn, aor, event=event, accept=accept)
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.digest = None
        self.authorization = None
        self.extra = []

    def send_subscribe(self, expires):
        # Subscription.send_subscribe with our extra headers.
        self.cseq += 1
        extra = ['Event: ' + self.event]
        if expires is not None:
            extra.append('Expires: %d' % expires)
        if self.accept:
            extra.append('Accept: ' + self.accept)
        if self.authorization:
            extra.append('Authorization: ' + self.authorization)
        extra += self.extra
        extra += ['Route: ' + r for r in self.routes]
        self.conn.send(request('SUBSCRIBE', self.target, self.conn.local_port,
                               from_uri=self.aor, to_uri=self.aor, call_id=self.call_id,
                               cseq=self.cseq, from_tag=self.from_tag, to_tag=self.to_tag,
                               extra=extra))

    def subscribe(self, expires=None, timeout=10.0):
        """Initial SUBSCRIBE with digest: returns (final, first NOTIFY or None)."""
        self.authorization = None
        final, notify = self.exchange(expires, timeout=timeout)
        if final is not None and final.code == 401 and self.username:
            c = pick(final, self.algorithm)
            self.digest = DigestState(c, self.username, self.password)
            self.authorization = self.digest.authorization('SUBSCRIBE', self.target)
            final, notify = self.exchange(expires, timeout=timeout)
        self.authorization = None
        return final, notify


def wait_notify(conn, call_id, timeout=5.0):
    """The next NOTIFY of dialog @call_id (answered 200), or None on timeout."""
    deadline = time.monotonic() + timeout
    full_id = call_id + '@' + HOST
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            msg = conn.read(left)
        except TimeoutError:
            return None
        if msg.is_request and msg.method == 'NOTIFY':
            conn.answer(msg)
            if msg.get('call-id') == full_id:
                return msg


# --------------------------------------------------------------------------------------------
# Bodies

def multipart(cert_der, key_der=None, boundary='b0undary', cte=None, part_extra=()):
    """A multipart/mixed PUBLISH body; returns (content_type, body)."""
    out = b''
    for ctype, data in (('application/pkix-cert', cert_der), ('application/pkcs8', key_der)):
        if data is None:
            continue
        hdrs = ['Content-Type: ' + ctype] + list(part_extra)
        if cte:
            hdrs.append('Content-Transfer-Encoding: ' + cte)
        out += ('--%s\r\n%s\r\n\r\n' % (boundary, '\r\n'.join(hdrs))).encode() + data + b'\r\n'
    out += ('--%s--\r\n' % boundary).encode()
    return 'multipart/mixed;boundary=%s' % boundary, out


def parse_multipart(content_type, body):
    """{part Content-Type: bytes} of a multipart/mixed body, plus '_headers' per type."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or '')
    if not m:
        return None
    delim = b'--' + m.group(1).encode()
    parts = {}
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b'--'):
            break
        chunk = chunk[2:] if chunk.startswith(b'\r\n') else chunk
        head, _, data = chunk.partition(b'\r\n\r\n')
        if data.endswith(b'\r\n'):
            data = data[:-2]
        hdrs = {}
        for line in head.decode('utf-8', 'replace').split('\r\n'):
            if ':' in line:
                k, v = line.split(':', 1)
                hdrs[k.strip().lower()] = v.strip()
        ctype = hdrs.get('content-type', '').lower()
        parts[ctype] = data
        parts['_headers ' + ctype] = hdrs
    return parts
