"""A registering user agent for the integration tests: REGISTER and MESSAGE on one TLS
connection, answering the digest challenge the way a UA does (SHA-256 taken first)."""

import sys

sys.dont_write_bytecode = True
import sipcredharness as h  # noqa: E402
import credclient as cc  # noqa: E402


class Ua:
    def __init__(self, dep, aor, password, username=None, sni=None, source=None):
        self.dep = dep
        self.aor = aor
        self.username = username or aor.split(':', 1)[1].split('@', 1)[0]
        self.password = password
        self.conn = dep.connect(sni, source=source)
        self.domain = aor.split('@', 1)[1]
        self.call_id = h.new_id()
        self.cseq = 0
        self.digest = None

    def close(self):
        self.conn.close()

    def contact(self, user=None, params=''):
        return '<sips:%s@%s:%d;transport=tls>%s' % (user or self.username, h.HOST,
                                                     self.conn.local_port, params)

    def _send(self, method, ruri, to_uri, extra, body=b'', call_id=None, cseq=None,
              from_uri=None, auth=True):
        """Sends once; on a 401 answers it once with digest (when auth). Returns the final
        response; requests the server sends meanwhile are answered 200 and kept."""
        call_id = call_id or self.call_id
        for attempt in range(2):
            if cseq is None or attempt > 0:
                self.cseq += 1
            seq = cseq if (cseq is not None and attempt == 0) else self.cseq
            hdrs = list(extra)
            if self.digest is not None and auth:
                hdrs.append('Authorization: ' + self.digest.authorization(method, ruri))
            self.conn.send(h.request(method, ruri, self.conn.local_port,
                                     from_uri=from_uri or self.aor, to_uri=to_uri,
                                     call_id=call_id, cseq=seq, extra=hdrs, body=body,
                                     contact=False))
            resp = self.final(call_id, method)
            if resp.code != 401 or not auth or attempt > 0:
                return resp
            challenge = cc.pick(resp)
            if challenge is None:
                return resp
            self.digest = cc.DigestState(challenge, self.username, self.password)
        return resp

    def final(self, call_id, method, timeout=10.0):
        self.received = getattr(self, 'received', [])
        return cc.final_response(self.conn, call_id, method, timeout=timeout,
                                 notifies=self.received)

    def register(self, contacts=None, expires=None, cseq=None, call_id=None, extra=(),
                 aor=None, ruri=None):
        aor = aor or self.aor
        hdrs = ['Contact: ' + c for c in (contacts if contacts is not None
                                          else [self.contact()])]
        if expires is not None:
            hdrs.append('Expires: %d' % expires)
        hdrs += list(extra)
        return self._send('REGISTER', ruri or 'sip:' + aor.split('@', 1)[1], aor, hdrs,
                          call_id=call_id, cseq=cseq, from_uri=aor)

    def message(self, to, body=b'', content_type='text/plain', extra=(), from_uri=None):
        hdrs = []
        if content_type:
            hdrs.append('Content-Type: ' + content_type)
        hdrs += list(extra)
        return self._send('MESSAGE', to, to, hdrs, body=body, call_id=h.new_id(),
                          from_uri=from_uri)


def bindings(resp):
    """{uri: params text} of the Contacts of a REGISTER response."""
    out = {}
    for v in resp.get_all('contact'):
        out[h.uri_of(v)] = v
    return out


def expires_of(value):
    import re
    m = re.search(r';\s*expires=(\d+)', value)
    return int(m.group(1)) if m else None
