"""
The /metrics endpoint (SPEC: "Logs and metrics"; [global] metrics = HOST:PORT).

Counts: after a scripted set of connections (a TLS session through to a
FakeBackend, a handshake broken by garbage bytes, one by a client alert, one
by the handshake timeout, a backend that is down, a SIGHUP), /metrics shows
exactly the expected series and values.

Format: the text parses under the exposition-format checker below (every
sample line is `name{labels} value`, each family has HELP and TYPE before its
samples, its samples are together, no series twice, label values escaped).

HTTP: 200 for GET and HEAD /metrics (also with a query string, HTTP/1.0 and
1.1, the absolute form), 404 for another path, 405 for another method, 400
for garbage, 431 for a head over 8 KiB, `Connection: close` always; a slow
client is closed by the 5 s deadline while the relay and other scrapes carry
on; a 1 MB request is closed; over 16 connections the oldest is closed
(so that slow clients cannot keep a scrape out); a
metrics address that cannot be bound stops start-up with status 2; SIGTERM
with a scrape connection open still exits 0.

Every wait is bounded; nothing synchronises on a fixed sleep.
"""

import calendar
import os
import re
import select
import signal
import socket
import ssl
import threading
import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GREETING = b"HELLO from the fake backend\r\n"
DEADLINE = 5.0          # METRICS_HTTP_DEADLINE_MS
MAX_CONNS = 16          # METRICS_HTTP_MAX_CONNS: then the oldest goes


# --------------------------------------------------------------------------
# HTTP, by hand: the tests need to send exactly the bytes they mean.

class Response:
    def __init__(self, raw):
        self.raw = raw
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError("no complete response head: %r" % raw[:300])
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"^HTTP/1\.1 (\d{3}) (.+)$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        self.status = int(m.group(1))
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()

    @property
    def text(self):
        return self.body.decode("utf-8")


def recv_all(sock, timeout=10.0):
    """Everything until the server closes; socket.timeout if it does not."""
    deadline = time.monotonic() + timeout * SLOW
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("server kept the connection open; got %r" %
                                 bytes(data[:300]))
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        data += d
    return bytes(data)


def http_raw(port, request, timeout=10.0):
    """Send request bytes, return every byte until the server closes."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout * SLOW) \
            as s:
        s.sendall(request)
        return recv_all(s, timeout)


def http(port, request=None, path="/metrics"):
    if request is None:
        request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                   "User-Agent: test_metrics\r\n\r\n" % (path, port)).encode()
    return Response(http_raw(port, request))


def scrape(port):
    """GET /metrics; check the response and the text; return the samples."""
    r = http(port)
    if r.status != 200:
        raise AssertionError("GET /metrics: %d %r" % (r.status, r.raw[:300]))
    if r.headers.get("content-type") != CONTENT_TYPE:
        raise AssertionError("content-type %r" % r.headers.get("content-type"))
    if r.headers.get("connection") != "close":
        raise AssertionError("no Connection: close")
    if int(r.headers.get("content-length", -1)) != len(r.body):
        raise AssertionError("content-length %r for %d bytes" %
                             (r.headers.get("content-length"), len(r.body)))
    return parse_exposition(r.text)


# --------------------------------------------------------------------------
# A checker for the text exposition format 0.0.4

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _parse_labels(s, lineno):
    """Parse `a="x",b="y"` (with escapes); return a tuple of (name, value)."""
    out = []
    i = 0
    while i < len(s):
        m = re.compile(_LABEL).match(s, i)
        if not m or s[m.end():m.end() + 2] != '="':
            raise AssertionError("line %d: bad label at %r" % (lineno, s[i:]))
        name = m.group(0)
        i = m.end() + 2
        val = []
        while True:
            if i >= len(s):
                raise AssertionError("line %d: unterminated label value" %
                                     lineno)
            ch = s[i]
            if ch == "\\":
                nxt = s[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise AssertionError("line %d: bad escape \\%s" %
                                         (lineno, nxt))
                val.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            elif ch == "\n":
                raise AssertionError("line %d: raw newline in a label" %
                                     lineno)
            else:
                val.append(ch)
                i += 1
        if name in [n for n, _ in out]:
            raise AssertionError("line %d: label %s twice" % (lineno, name))
        out.append((name, "".join(val)))
        if i < len(s):
            if s[i] != ",":
                raise AssertionError("line %d: expected ',' at %r" %
                                     (lineno, s[i:]))
            i += 1
    return tuple(out)


def _parse_value(v, lineno):
    if v in ("+Inf", "-Inf", "NaN"):
        return float(v.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.match(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$", v):
        raise AssertionError("line %d: bad value %r" % (lineno, v))
    f = float(v)
    return int(v) if re.match(r"^[-+]?\d+$", v) else f


def parse_exposition(text):
    """Check text against the 0.0.4 format and return
    {family: {"type", "help", "samples": {labels-tuple-sorted: value}}}."""
    if not text.endswith("\n"):
        raise AssertionError("the text must end with a line feed")
    fams = {}
    current = None          # the family whose samples are being read
    closed = set()          # families whose samples have ended
    sample_rx = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$" % _NAME)
    for lineno, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.match("^%s$" % _NAME, name):
                    raise AssertionError("line %d: bad name %r" %
                                         (lineno, name))
                f = fams.setdefault(name, {"type": None, "help": None,
                                           "samples": {}})
                if f["samples"]:
                    raise AssertionError("line %d: %s for %s after its "
                                         "samples" % (lineno, parts[1], name))
                key = parts[1].lower()
                if f[key] is not None:
                    raise AssertionError("line %d: second %s for %s" %
                                         (lineno, parts[1], name))
                val = parts[3] if len(parts) > 3 else ""
                if key == "type" and val not in _TYPES:
                    raise AssertionError("line %d: bad type %r" %
                                         (lineno, val))
                f[key] = val
                if current is not None and current != name:
                    closed.add(current)
                current = name
            continue
        if line.strip() == "":
            raise AssertionError("line %d: empty line" % lineno)
        m = sample_rx.match(line)
        if not m:
            raise AssertionError("line %d: not `name{labels} value`: %r" %
                                 (lineno, line))
        name, labels, value = m.group(1), m.group(2), m.group(3)
        fam = name
        if fam not in fams:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[:-len(suffix)] in fams:
                    fam = name[:-len(suffix)]
        f = fams.get(fam)
        if f is None or f["help"] is None or f["type"] is None:
            raise AssertionError("line %d: sample of %s before its HELP and "
                                 "TYPE" % (lineno, fam))
        if fam in closed or (current is not None and current != fam):
            raise AssertionError("line %d: samples of %s are not together" %
                                 (lineno, fam))
        current = fam
        lab = tuple(sorted(_parse_labels(labels or "", lineno)))
        key = (name, lab)
        if key in f["samples"]:
            raise AssertionError("line %d: duplicate series %s%r" %
                                 (lineno, name, lab))
        f["samples"][key] = _parse_value(value, lineno)
    return fams


def series(fams, name, **labels):
    """The value of one series (KeyError if absent)."""
    return fams[name]["samples"][(name, tuple(sorted(labels.items())))]


def values(fams, name):
    """{labels-dict-as-sorted-tuple: value} of a family."""
    return {lab: v for (_, lab), v in fams[name]["samples"].items()}


# --------------------------------------------------------------------------

def listener(port, backend, **kw):
    d = {
        "listen": "%s:%d" % (LOOPBACK, port),
        "protocol": "none",
        "client_tls": "implicit",
        "backend": backend,
        "certs": [mtd.certs().server_ecdsa],
        "connect_timeout": "5s",
        "handshake_timeout": "10s",
    }
    d.update(kw)
    return d


def start(tc, listeners, metrics_port, **glob):
    g = {"log_level": "debug", "workers": 2, "shutdown_timeout": "2s",
         "metrics": "%s:%d" % (LOOPBACK, metrics_port)}
    g.update(glob)
    cfg = {"global": g}
    cfg.update(listeners)
    # Wait for the endpoint only: it starts after every listening socket is
    # bound, and probing the listeners would count connections.
    return Mailtlsd(cfg, tc=tc, name="metrics",
                    wait_ports=[(LOOPBACK, metrics_port)]).start()


def cert_info(path):
    """(subject as GnuTLS writes it, not_after in Unix seconds) of a PEM
    certificate, from certtool."""
    p = mtd.run([mtd.need_tool("certtool"), "-i", "--infile", path],
                check=True)
    subj = re.search(r"^\s*Subject: (.*)$", p.stdout, re.M).group(1)
    na = re.search(r"^\s*Not After: (.*)$", p.stdout, re.M).group(1)
    t = time.strptime(na.strip(), "%a %b %d %H:%M:%S UTC %Y")
    return subj.strip(), calendar.timegm(t)


def wait_closed_by_peer(sock, timeout):
    """Wait until the peer closes sock (EOF or reset); return the bytes."""
    return recv_all(sock, timeout)


def alert_client(port, timeout=10.0):
    """A TLS 1.2 client that trusts no CA: it rejects the certificate and
    sends its alert, half-closes, and reads until the server closes, so that
    no reset overtakes the alert.  (TLS 1.2: GnuTLS 3.7.9, gnutls-serv too,
    reports the encrypted alert of a TLS 1.3 client as "Decryption has
    failed", which counts as "other".)"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)    # trusts nothing
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    deadline = time.monotonic() + timeout * SLOW
    with socket.create_connection((LOOPBACK, port), timeout=timeout * SLOW) \
            as s:
        while True:
            try:
                tls.do_handshake()
                raise AssertionError("the handshake succeeded")
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError:
                break
            if out.pending:
                s.sendall(out.read())
            s.settimeout(max(0.01, deadline - time.monotonic()))
            d = s.recv(65536)
            if not d:
                raise AssertionError("closed during the handshake")
            inc.write(d)
        if not out.pending:
            raise AssertionError("no alert to send")
        s.sendall(out.read())
        s.shutdown(socket.SHUT_WR)
        recv_all(s, timeout)


def echo_session(port, size=1000):
    """A whole TLS session through mailtlsd to the greet+echo backend."""
    with TlsConn(port) as c:
        got = c.recv_exact(len(GREETING))
        if got != GREETING:
            raise AssertionError("greeting %r" % got)
        data = os.urandom(size)
        c.pump(data, size)
        if c.recv_exact(size) != data:
            raise AssertionError("echo differs")
        c.close_notify()
        c.shutdown_wr()
        c.recv_to_eof()


# --------------------------------------------------------------------------

class ScriptedCounts(unittest.TestCase):
    """A known sequence of connections, then exact counts."""

    def test_counts_after_a_scripted_set_of_connections(self):
        be = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        down_port = mtd.free_port()     # nothing listens there
        tls_port, down_listen, mport = mtd.free_ports(3)
        pair = mtd.certs().server_ecdsa
        d = start(self, {
            "tls": listener(tls_port, be.addr, handshake_timeout="1s"),
            "down": listener(down_listen, "%s:%d" % (LOOPBACK, down_port)),
        }, mport)

        # Nothing has happened yet: every counter is there, at zero.
        fams = scrape(mport)
        for name in ("mailtlsd_connections_total",
                     "mailtlsd_connections_active",
                     "mailtlsd_tls_handshakes_total"):
            for lst in ("tls", "down"):
                self.assertEqual(series(fams, name, listener=lst), 0)

        # 1. A successful session: greeting + 1000 bytes echoed.
        echo_session(tls_port, 1000)
        be.wait_closed(0)

        # 2. Garbage instead of a ClientHello: "other".
        with socket.create_connection((LOOPBACK, tls_port),
                                      timeout=10 * SLOW) as s:
            s.sendall(b"EHLO this is not TLS at all\r\n" * 4)
            wait_closed_by_peer(s, 10)

        # 3. A client that does not trust the certificate sends an alert.
        alert_client(tls_port)

        # 4. A client that never says anything: the 1 s handshake timeout.
        with socket.create_connection((LOOPBACK, tls_port),
                                      timeout=10 * SLOW) as s:
            wait_closed_by_peer(s, 10)

        # 5. A backend that is down: handshake, then connect refused.
        with TlsConn(down_listen) as c:
            c.recv_to_eof()

        # 6. SIGHUP: one successful reload of each TLS listener.
        d.signal(signal.SIGHUP)

        expected = {
            ("mailtlsd_connections_total", "tls"): 4,
            ("mailtlsd_connections_total", "down"): 1,
            ("mailtlsd_connections_active", "tls"): 0,
            ("mailtlsd_connections_active", "down"): 0,
            ("mailtlsd_tls_handshakes_total", "tls"): 1,
            ("mailtlsd_tls_handshakes_total", "down"): 1,
            ("mailtlsd_starttls_upgrades_total", "tls"): 0,
            ("mailtlsd_starttls_upgrades_total", "down"): 0,
        }
        exp_fail = {("tls", "timeout"): 1, ("tls", "alert"): 1,
                    ("tls", "other"): 1}
        exp_backend = {("down", "connect"): 1}
        exp_bytes = {("tls", "client_to_backend"): 1000,
                     ("tls", "backend_to_client"): 1000 + len(GREETING)}
        exp_reloads = {("tls", "ok"): 1, ("down", "ok"): 1}

        def actual(fams):
            got = {}
            for (name, lst) in expected:
                got[(name, lst)] = series(fams, name, listener=lst)
            for lst in ("tls", "down"):
                for r in ("timeout", "alert", "alpn", "client_cert",
                          "other"):
                    got[("fail", lst, r)] = series(
                        fams, "mailtlsd_tls_handshake_failures_total",
                        listener=lst, reason=r)
                for k in ("connect", "tls"):
                    got[("backend", lst, k)] = series(
                        fams, "mailtlsd_backend_errors_total", listener=lst,
                        kind=k)
                for dr in ("client_to_backend", "backend_to_client"):
                    got[("bytes", lst, dr)] = series(
                        fams, "mailtlsd_bytes_total", listener=lst,
                        direction=dr)
                for r in ("ok", "failed"):
                    got[("reloads", lst, r)] = series(
                        fams, "mailtlsd_cert_reloads_total", listener=lst,
                        result=r)
            return got

        want = dict(expected)
        for lst in ("tls", "down"):
            for r in ("timeout", "alert", "alpn", "client_cert", "other"):
                want[("fail", lst, r)] = exp_fail.get((lst, r), 0)
            for k in ("connect", "tls"):
                want[("backend", lst, k)] = exp_backend.get((lst, k), 0)
            for dr in ("client_to_backend", "backend_to_client"):
                want[("bytes", lst, dr)] = exp_bytes.get((lst, dr), 0)
            for r in ("ok", "failed"):
                want[("reloads", lst, r)] = exp_reloads.get((lst, r), 0)

        # Closing and the reload finish asynchronously: wait (bounded) for
        # the counts to settle, then compare everything at once.
        last = {}

        def settled():
            last["got"] = actual(scrape(mport))
            return last["got"] == want
        try:
            mtd.wait_for(settled, 10 * SLOW, 0.1, "the expected counts")
        except mtd.HarnessError:
            got = last["got"]
            diff = {k: (got.get(k), v) for k, v in want.items()
                    if got.get(k) != v}
            log = "\n".join(l for l in d.log.splitlines()
                            if "event=metrics_request" not in l)
            self.fail("counts differ (key: (got, expected)): %r\n--- log:\n%s"
                      % (diff, log[-6000:]))

        # The certificate families: subject and expiry of the one pair of
        # each TLS listener.
        fams = scrape(mport)
        subj, na = cert_info(pair.cert)
        self.assertEqual(values(fams, "mailtlsd_cert_not_after_seconds"), {
            (("listener", "down"), ("subject", subj)): na,
            (("listener", "tls"), ("subject", subj)): na,
        })
        # Exactly the families documented, each with HELP and TYPE.
        types = {n: f["type"] for n, f in fams.items()}
        self.assertEqual(types, {
            "mailtlsd_build_info": "gauge",
            "mailtlsd_connections_total": "counter",
            "mailtlsd_connections_active": "gauge",
            "mailtlsd_tls_handshakes_total": "counter",
            "mailtlsd_tls_handshake_failures_total": "counter",
            "mailtlsd_starttls_upgrades_total": "counter",
            "mailtlsd_backend_errors_total": "counter",
            "mailtlsd_bytes_total": "counter",
            "mailtlsd_client_limit_refusals_total": "counter",
            "mailtlsd_cert_not_after_seconds": "gauge",
            "mailtlsd_cert_reloads_total": "counter",
            "mailtlsd_config_reloads_total": "counter",
            "mailtlsd_backend_up": "gauge",
            "mailtlsd_backend_attempts_total": "counter",
            "mailtlsd_backend_failures_total": "counter",
        })
        # The SIGHUP above read the configuration file again: one good
        # reload, no error.
        self.assertEqual(values(fams, "mailtlsd_config_reloads_total"), {
            (("result", "ok"),): 1,
            (("result", "error"),): 0,
        })
        ((_, labels), value), = fams["mailtlsd_build_info"][
            "samples"].items()
        self.assertEqual(value, 1)
        lab = dict(labels)
        self.assertEqual(sorted(lab), ["gnutls", "libuv", "version"])
        self.assertRegex(lab["version"], r"^\d+\.\d+\.\d+")
        self.assertRegex(lab["gnutls"], r"^\d+\.\d+\.\d+")
        self.assertRegex(lab["libuv"], r"^1\.\d+\.\d+")
        be.check()
        self.assertEqual(d.stop(), 0)


class ExpositionChecker(unittest.TestCase):
    """The checker itself rejects what it must (so that passing means
    something)."""

    GOOD = ('# HELP a_total A.\n# TYPE a_total counter\n'
            'a_total{l="x\\\\y\\"z\\n"} 1\na_total{l="w"} 2\n')

    def test_accepts_good_text(self):
        fams = parse_exposition(self.GOOD)
        self.assertEqual(series(fams, "a_total", l='x\\y"z\n'), 1)

    def test_rejects_bad_text(self):
        bad = [
            "a_total 1\n",                                   # no HELP/TYPE
            self.GOOD + 'a_total{l="w"} 3\n',                # duplicate
            self.GOOD.replace(' 2\n', ' two\n'),             # value
            self.GOOD.replace('l="w"', 'l="w\\q"'),          # escape
            self.GOOD.replace('l="w"', 'l=w'),               # quoting
            self.GOOD + '# HELP b B.\n# TYPE b gauge\nb 1\na_total 3\n',
            self.GOOD.rstrip("\n"),                          # final LF
            self.GOOD.replace("counter", "countr"),          # type
        ]
        for text in bad:
            with self.assertRaises(AssertionError, msg=text):
                parse_exposition(text)


class Endpoint(unittest.TestCase):
    """HTTP behaviour and robustness; one mailtlsd for the class."""

    @classmethod
    def setUpClass(cls):
        cls.be = FakeBackend(FakeBackend.greet_echo(GREETING))
        cls.tls_port, cls.mport = mtd.free_ports(2)
        cls.d = start(None, {"tls": listener(cls.tls_port, cls.be.addr)},
                      cls.mport)

    @classmethod
    def tearDownClass(cls):
        try:
            rc = cls.d.stop()
            if rc != 0:
                raise AssertionError("mailtlsd exited %r" % rc)
        finally:
            cls.be.close()

    def assertStatus(self, request, status):
        r = http(self.mport, request)
        self.assertEqual(r.status, status, r.raw[:300])
        self.assertEqual(r.headers.get("connection"), "close")
        self.assertEqual(int(r.headers["content-length"]), len(r.body))
        return r

    def assertAlive(self):
        fams = scrape(self.mport)
        self.assertIn("mailtlsd_connections_total", fams)

    # -- the protocol
    def test_get_http11_and_http10_and_query(self):
        scrape(self.mport)
        r = self.assertStatus(b"GET /metrics HTTP/1.0\r\n\r\n", 200)
        self.assertEqual(r.headers["content-type"], CONTENT_TYPE)
        parse_exposition(r.text)
        r = self.assertStatus(b"GET /metrics?name[]=x&y HTTP/1.1\r\n"
                              b"Host: a\r\n\r\n", 200)
        parse_exposition(r.text)
        # Bare LF line ends and the absolute form are accepted too.
        self.assertStatus(b"GET /metrics HTTP/1.1\nHost: a\n\n", 200)
        self.assertStatus(b"GET http://127.0.0.1/metrics HTTP/1.1\r\n"
                          b"Host: a\r\n\r\n", 200)

    def test_head_has_no_body(self):
        raw = http_raw(self.mport,
                       b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        r = Response(raw)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")
        self.assertGreater(int(r.headers["content-length"]), 100)

    def test_other_path_is_404(self):
        for path in ("/other", "/", "/metricsx", "/metrics/", "/METRICS"):
            r = self.assertStatus(("GET %s HTTP/1.1\r\nHost: a\r\n\r\n" %
                                   path).encode(), 404)
            self.assertNotIn(b"mailtlsd_", r.body)

    def test_other_method_is_405(self):
        for m in ("POST", "PUT", "DELETE", "OPTIONS", "get"):
            r = self.assertStatus(("%s /metrics HTTP/1.1\r\nHost: a\r\n"
                                   "Content-Length: 0\r\n\r\n" % m).encode(),
                                  405)
            self.assertEqual(r.headers.get("allow"), "GET, HEAD")

    def test_garbage_is_400(self):
        for req in (b"garbage\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                    b"GET /metrics\r\n\r\n",                  # HTTP/0.9
                    b"GET  /metrics HTTP/1.1\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\nA\x00: b\r\n\r\n",
                    b"GET /met\x7frics HTTP/1.1\r\n\r\n",
                    b"GET /metrics HTTP/1.x\r\n\r\n"):
            self.assertStatus(req, 400)
        self.assertStatus(b"GET /metrics HTTP/2.0\r\n\r\n", 505)
        self.assertAlive()

    def test_garbage_without_end_is_closed_by_deadline_or_limit(self):
        # Random bytes and an early close: the endpoint just goes on.
        with socket.create_connection((LOOPBACK, self.mport)) as s:
            s.sendall(os.urandom(3000))
        self.assertAlive()

    def test_long_head_is_431(self):
        req = b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
        with socket.create_connection((LOOPBACK, self.mport),
                                      timeout=10 * SLOW) as s:
            try:
                s.sendall(req)
            except (BrokenPipeError, ConnectionResetError):
                pass
            raw = recv_all(s)
        self.assertTrue(raw.startswith(b"HTTP/1.1 431 "), raw[:100])
        self.assertIn(b"\r\nConnection: close\r\n", raw)
        self.assertAlive()

    def test_one_megabyte_request_is_closed(self):
        big = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * (1 << 20)
        s = socket.create_connection((LOOPBACK, self.mport), timeout=10 * SLOW)
        got = bytearray()
        closed = threading.Event()

        def reader():
            try:
                got.extend(recv_all(s, 15))
            except OSError:
                pass
            closed.set()
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            s.sendall(big)      # may fail: the server stops reading
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        self.assertTrue(closed.wait(15 * SLOW), "1 MB request not closed")
        t.join(5)
        s.close()
        if got:
            self.assertTrue(bytes(got).startswith(b"HTTP/1.1 431 "),
                            bytes(got[:100]))
        self.assertAlive()

    def test_slow_client_is_closed_and_relay_carries_on(self):
        req = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
        s = socket.create_connection((LOOPBACK, self.mport), timeout=30)
        t0 = time.monotonic()
        result = {}
        done = threading.Event()

        def slow():
            # One byte a second: the client's behaviour, not a wait.
            try:
                for b in req:
                    s.sendall(bytes([b]))
                    s.settimeout(1.0)
                    try:
                        d = s.recv(4096)
                    except socket.timeout:
                        continue
                    result["data"] = d + recv_all(s, 5)
                    break
            except OSError as e:
                result["error"] = e
            result["t"] = time.monotonic() - t0
            done.set()
        th = threading.Thread(target=slow, daemon=True)
        th.start()
        # Meanwhile: a TLS session through mailtlsd and a scrape work.
        t1 = time.monotonic()
        echo_session(self.tls_port, 64 * 1024)
        self.assertAlive()
        self.assertLess(time.monotonic() - t1, 3 * SLOW)
        self.assertFalse(done.is_set(), "slow client closed too early")
        self.assertTrue(done.wait((DEADLINE + 5) * SLOW),
                        "slow client was not closed")
        th.join(5)
        s.close()
        self.assertGreaterEqual(result["t"], DEADLINE - 0.5)
        self.assertLess(result["t"], DEADLINE + 3 * SLOW)
        if "data" in result:
            self.assertTrue(result["data"].startswith(b"HTTP/1.1 408 "),
                            result["data"][:100])
        self.assertAlive()

    def test_connection_cap_closes_the_oldest(self):
        n = MAX_CONNS + 4
        socks = []
        try:
            for _ in range(n):
                socks.append(socket.create_connection((LOOPBACK, self.mport),
                                                      timeout=10 * SLOW))

            # Each connection over the cap closes the oldest one, unanswered.
            def closed(s):
                r, _, _ = select.select([s], [], [], 0)
                try:
                    return bool(r) and s.recv(1, socket.MSG_PEEK) == b""
                except ConnectionResetError:
                    return True
            mtd.wait_for(lambda: all(closed(s) for s in socks[:n - MAX_CONNS]),
                         5 * SLOW, 0.02, "the oldest connections to be closed")
            held = socks[n - MAX_CONNS:]
            self.assertFalse([s for s in held if closed(s)])
            # Each held connection is served.
            for s in held:
                s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            for s in held:
                self.assertTrue(recv_all(s).startswith(b"HTTP/1.1 200"))
        finally:
            for s in socks:
                s.close()
        self.assertTrue(self._try_scrape())

    def test_idle_clients_cannot_keep_a_scrape_out(self):
        # Twice the cap of clients that connect and say nothing: a scrape
        # made while they are all still within their deadline is served.
        socks = []
        try:
            for _ in range(2 * MAX_CONNS):
                socks.append(socket.create_connection((LOOPBACK, self.mport),
                                                      timeout=10 * SLOW))
            t0 = time.monotonic()
            raw = http_raw(self.mport, b"GET /metrics HTTP/1.1\r\n\r\n", 5)
            self.assertTrue(raw.startswith(b"HTTP/1.1 200"), raw[:100])
            # (Had the deadline freed the slots, this would prove nothing.)
            self.assertLess(time.monotonic() - t0, DEADLINE)
        finally:
            for s in socks:
                s.close()

    def _try_scrape(self):
        try:
            raw = http_raw(self.mport, b"GET /metrics HTTP/1.1\r\n\r\n", 2)
        except OSError:
            return False
        return raw.startswith(b"HTTP/1.1 200")


class StartAndStop(unittest.TestCase):

    def test_metrics_address_in_use_exits_2(self):
        be = FakeBackend(FakeBackend.echo, tc=self)
        holder = socket.socket()
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        mport = holder.getsockname()[1]
        port = mtd.free_port()
        d = Mailtlsd({"global": {"metrics": "%s:%d" % (LOOPBACK, mport),
                                 "workers": 1},
                      "tls": listener(port, be.addr)}, tc=self,
                     name="metrics-inuse")
        d.spawn()
        rc = d.wait(15)
        self.assertEqual(rc, 2, d.log)
        self.assertRegex(d.log, r"level=error event=start .*metrics.*%d" %
                         mport)

    def test_sigterm_with_an_open_scrape_connection_exits_0(self):
        be = FakeBackend(FakeBackend.echo, tc=self)
        port, mport = mtd.free_ports(2)
        d = start(self, {"tls": listener(port, be.addr)}, mport)
        s = socket.create_connection((LOOPBACK, mport), timeout=10 * SLOW)
        self.addCleanup(s.close)
        s.sendall(b"GET /met")          # half a request, left hanging
        t0 = time.monotonic()
        self.assertEqual(d.stop(10), 0)
        # Well before the connection's own 5 s deadline.
        self.assertLess(time.monotonic() - t0, 4 * SLOW)
        self.assertEqual(recv_all(s, 5), b"")
        mtd.wait_port_closed(mport)


if __name__ == "__main__":
    unittest.main()
