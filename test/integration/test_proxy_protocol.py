"""
Trust at the edges, part 1: the PROXY protocol (SPEC "PROXY protocol").

  * toward real servers: Postfix with smtpd_upstream_proxy_protocol = haproxy
    and Dovecot listeners with haproxy = yes log the client address that
    mailtlsd passed, for v1 and v2; Dovecot with ssl = required accepts a
    LOGIN that came over the client's TLS session only with v2 (its
    PP2_TYPE_SSL TLV), and refuses it over v1;
  * byte level: a recording backend gets the exact header first, parsed here
    after HAProxy's doc/proxy-protocol.txt (addresses, ports, TLVs), over
    IPv4 and IPv6;
  * accept_proxy: a trusted peer's header is honoured (log, outgoing header),
    required from it, and never honoured from anyone else; malformed or
    unfinished headers close the connection, nothing reaches the backend.

The client connects from 127.0.0.2 wherever the address it is seen with
matters, so that it differs from mailtlsd's own 127.0.0.1.
"""

import imaplib
import re
import smtplib
import socket
import ssl
import struct
import time
import unittest
import uuid

import mtd
from mtd import (FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK,
                 free_port)

CLIENT_ADDR = "127.0.0.2"       # the client's address, not mailtlsd's
HOSTNAME = mtd.FRONT_HOSTNAME
SNI = "mail.example.test"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


# --------------------------------------------------------------------------
# helpers

listener = mtd.listener_conf


def config(listeners, **glob):
    return mtd.daemon_conf(listeners, **dict({"workers": "2"}, **glob))


parse_kv = mtd.parse_kv


def close_events(d):
    """The event=close lines of mailtlsd d, parsed."""
    return [parse_kv(l) for l in d.log.splitlines() if " event=close " in l]


def wait_close(d, pred, what="close line"):
    """Wait for an event=close line for which pred(fields) is true."""
    def find():
        for e in close_events(d):
            if pred(e):
                return e
        return None
    try:
        return mtd.wait_for(find, 10 * SLOW, 0.02, what)
    except mtd.HarnessError as e:
        raise AssertionError("%s\n--- log:\n%s" % (e, d.log[-4000:]))


def bound_socket(src, dst_port, dst=LOOPBACK, timeout=10):
    """A TCP socket bound to src (port chosen by the kernel), connected."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    s.bind((src, 0))
    s.connect((dst, dst_port))
    return s


def tls_from(src, port, dst=LOOPBACK, ctx=None, server_hostname=SNI,
             prefix=b""):
    """A TlsConn to dst:port from the address src, optionally writing
    prefix (a PROXY header) in the clear before the ClientHello."""
    s = bound_socket(src, port, dst)
    try:
        if prefix:
            s.sendall(prefix)
        return TlsConn(port, host=dst, sock=s,
                       ctx=ctx or mtd.client_context(),
                       server_hostname=server_hostname)
    except BaseException:
        s.close()
        raise


def read_until_eof(sock, timeout=10):
    """Raw bytes until the peer closes (or resets); fails if it stays open."""
    sock.settimeout(timeout * SLOW)
    data = b""
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return data
            data += d
    except ConnectionResetError:
        return data
    except socket.timeout:
        raise AssertionError("connection still open after %.0fs; got %r" %
                             (timeout * SLOW, data[:200]))


def v1_header(src, dst, sport, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport,
                                          dport)).encode()


def v2_header(src, dst, sport, dport, tlvs=b"", cmd=0x21):
    if ":" in src:
        fam = 0x21
        addr = (socket.inet_pton(socket.AF_INET6, src) +
                socket.inet_pton(socket.AF_INET6, dst))
    else:
        fam = 0x11
        addr = socket.inet_aton(src) + socket.inet_aton(dst)
    body = addr + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIG + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


def tlv(t, value):
    return bytes([t]) + struct.pack("!H", len(value)) + value


# -- parsing what mailtlsd sends, after HAProxy's proxy-protocol.txt

class Header:
    """A parsed PROXY header: version, family, src, dst, sport, dport,
    tlvs ({type: value}, first occurrence), ssl (dict or None), raw."""

    def __repr__(self):
        return "Header(%r)" % (self.__dict__,)


def parse_v1(raw):
    assert raw.endswith(b"\r\n") and len(raw) <= 107, raw
    parts = raw[:-2].decode("ascii").split(" ")
    h = Header()
    h.raw, h.version, h.tlvs, h.ssl = raw, 1, {}, None
    assert parts[0] == "PROXY", raw
    h.family = parts[1]
    if h.family == "UNKNOWN":
        return h
    assert len(parts) == 6, raw
    h.src, h.dst = parts[2], parts[3]
    h.sport, h.dport = int(parts[4]), int(parts[5])
    fam = socket.AF_INET if h.family == "TCP4" else socket.AF_INET6
    for a in (h.src, h.dst):
        socket.inet_pton(fam, a)            # raises if malformed
    return h


def parse_tlvs(data):
    out = []
    i = 0
    while i < len(data):
        assert len(data) - i >= 3, "truncated TLV in %r" % data
        t = data[i]
        n = struct.unpack("!H", data[i + 1:i + 3])[0]
        assert i + 3 + n <= len(data), "TLV runs past the header: %r" % data
        out.append((t, data[i + 3:i + 3 + n]))
        i += 3 + n
    return out


def parse_v2(raw):
    assert raw[:12] == V2_SIG, raw
    h = Header()
    h.raw, h.version, h.ssl = raw, 2, None
    ver_cmd, fam = raw[12], raw[13]
    assert ver_cmd >> 4 == 2, "version nibble %#x" % ver_cmd
    h.command = "PROXY" if ver_cmd & 0xf == 1 else (
        "LOCAL" if ver_cmd & 0xf == 0 else "bad")
    n = struct.unpack("!H", raw[14:16])[0]
    assert len(raw) == 16 + n, (len(raw), n)
    body = raw[16:]
    if fam == 0x11:
        h.family = "TCP4"
        h.src = socket.inet_ntop(socket.AF_INET, body[0:4])
        h.dst = socket.inet_ntop(socket.AF_INET, body[4:8])
        h.sport, h.dport = struct.unpack("!HH", body[8:12])
        rest = body[12:]
    elif fam == 0x21:
        h.family = "TCP6"
        h.src = socket.inet_ntop(socket.AF_INET6, body[0:16])
        h.dst = socket.inet_ntop(socket.AF_INET6, body[16:32])
        h.sport, h.dport = struct.unpack("!HH", body[32:36])
        rest = body[36:]
    else:
        h.family = "fam=%#x" % fam
        rest = body
    h.tlv_list = parse_tlvs(rest)
    h.tlvs = {}
    for t, v in h.tlv_list:
        h.tlvs.setdefault(t, v)
    if PP2_TYPE_SSL in h.tlvs:
        v = h.tlvs[PP2_TYPE_SSL]
        assert len(v) >= 5, v
        subs = {}
        for t, sv in parse_tlvs(v[5:]):
            subs.setdefault(t, sv)
        h.ssl = {"client": v[0], "verify": struct.unpack("!I", v[1:5])[0],
                 "subs": subs}
    return h


class HeaderReader:
    """Reads a BackendConn with a buffer of its own, so that exact byte
    counts can be taken."""

    def __init__(self, conn):
        self.c = conn
        self.buf = b""

    def _more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("backend: nothing more in time; have %r" %
                                 self.buf)
        d = self.c.recv(timeout=left)
        if not d:
            raise Closed("backend: EOF; have %r" % self.buf)
        self.buf += d

    def exact(self, n, timeout=10):
        deadline = time.monotonic() + timeout * SLOW
        while len(self.buf) < n:
            self._more(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def until(self, marker, timeout=10):
        deadline = time.monotonic() + timeout * SLOW
        while marker not in self.buf:
            self._more(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def header(self):
        first = self.exact(1)
        self.buf = first + self.buf
        if first == b"P":
            return parse_v1(self.until(b"\r\n"))
        head = self.exact(16)
        n = struct.unpack("!H", head[14:16])[0]
        return parse_v2(head + self.exact(n))


def pp_backend(greeting):
    """A backend that reads the PROXY header (kept as conn.pp, or the
    exception as conn.pp_error), greets, answers QUIT with 221 (and other
    lines with 250), until EOF."""
    def h(c):
        r = HeaderReader(c)
        try:
            c.pp = r.header()
        except Exception as e:  # noqa: BLE001 - shown by the test
            c.pp_error = e
            raise
        c.send(greeting)
        while True:
            try:
                line = r.until(b"\n", timeout=60)
            except Closed:
                return
            if line.upper().startswith(b"QUIT"):
                c.send(b"221 2.0.0 bye\r\n")
                return
            c.send(b"250 2.0.0 ok\r\n")
    return h


def header_of(backend, i=0):
    c = backend.wait_conns(i + 1)[i]
    mtd.wait_for(lambda: hasattr(c, "pp") or hasattr(c, "pp_error") or
                 c.closed.is_set(), 10 * SLOW, 0.02, "the PROXY header")
    if not hasattr(c, "pp"):
        raise AssertionError("backend connection %d: no PROXY header: %r; "
                             "received %r" % (i, getattr(c, "pp_error", None),
                                              bytes(c.received[:300])))
    return c.pp


def smtp_session(c):
    """Greeting, then QUIT, over a TlsConn."""
    g = c.recv_until(b"\r\n")
    c.send(b"QUIT\r\n")
    return g, c.recv_until(b"\r\n")


# --------------------------------------------------------------------------
# Real Postfix and Dovecot behind PROXY headers

_servers = None


def servers():
    """Postfix with a smtpd_upstream_proxy_protocol = haproxy listener;
    Dovecot with ssl = required and haproxy = yes listeners (and the
    harness's haproxy_trusted_networks = 127.0.0.0/8).  Both log the client
    port too, so that a log line is tied to one test connection."""
    global _servers
    if _servers is None:
        _servers = mtd.RealServers(
            postfix_listeners={
                "pp": {"smtpd_upstream_proxy_protocol": "haproxy"}},
            dovecot_listeners={"pp": {"haproxy": "yes"}},
            dovecot_ssl="required",
            postfix_extra="smtpd_client_port_logging = yes\n",
            dovecot_extra=(
                "login_log_format_elements = user=<%u> method=%m rip=%r "
                "rport=%b lip=%l mpid=%e %c session=<%{session}>\n"),
        ).start()
    return _servers


def tearDownModule():
    global _servers
    if _servers is not None:
        _servers.stop()
        _servers = None


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class RealServersSeeTheClientAddress(unittest.TestCase):
    """mailtlsd (implicit TLS, proxy_protocol v1 / v2) in front of Postfix
    and Dovecot that take PROXY headers: their own logs name 127.0.0.2, the
    client's address, not mailtlsd's 127.0.0.1."""

    @classmethod
    def setUpClass(cls):
        rs = cls.rs = servers()
        ports = mtd.free_ports(6)
        cls.port = {}
        lst = {}
        for i, v in enumerate(("v1", "v2")):
            for j, (proto, backend) in enumerate((
                    ("smtp", rs.smtp_ports["pp"]),
                    ("imap", rs.imap_ports["pp"]),
                    ("pop3", rs.pop3_ports["pp"]))):
                p = ports[3 * i + j]
                cls.port[(proto, v)] = p
                lst["%s-%s" % (proto, v)] = listener(
                    proto, "%s:%d" % (LOOPBACK, backend), p,
                    proxy_protocol=v)
        cls.d = Mailtlsd(config(lst), name="pp-real").start()
        cls.ctx = mtd.client_context()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def wait_in(self, path, pattern, what):
        rx = re.compile(pattern, re.M)
        try:
            return mtd.wait_for(lambda: rx.search(read_file(path)),
                                20 * SLOW, 0.05, what)
        except mtd.HarnessError as e:
            raise AssertionError("%s\n--- %s:\n%s" % (
                e, path, read_file(path)[-4000:]))

    def test_postfix_logs_and_stamps_the_client_address_v1_v2(self):
        for v in ("v1", "v2"):
            with self.subTest(proxy_protocol=v):
                tok = "mtd-%s" % uuid.uuid4().hex
                rcpt = self.rs.address("alice")
                msg = ("From: pp@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\n"
                       "%s\r\n" % (rcpt, tok, tok))
                with smtplib.SMTP_SSL(
                        LOOPBACK, self.port[("smtp", v)], context=self.ctx,
                        timeout=30 * SLOW,
                        source_address=(CLIENT_ADDR, 0)) as s:
                    cport = s.sock.getsockname()[1]
                    self.assertEqual(s.sock.getsockname()[0], CLIENT_ADDR)
                    code, _ = s.ehlo("pp-%s.example.org" % v)
                    self.assertEqual(code, 250)
                    self.assertEqual(s.sendmail("pp@example.org", [rcpt],
                                                msg), {})
                data = self.rs.wait_delivered("alice", tok).decode(
                    "utf-8", "replace")
                # Received: from pp-v1.example.org (unknown [127.0.0.2]) ...
                m = re.search(r"Received: from pp-%s\.example\.org "
                              r"\(\S+ \[([^\]]+)\]\)\s+by \S+ \(Postfix\) "
                              r"with \S+ id (\w+)" % v, data)
                self.assertIsNotNone(m, data[:1500])
                self.assertEqual(m.group(1), CLIENT_ADDR, data[:1500])
                qid = m.group(2)
                # the maillog names the client's address and its port
                self.wait_in(self.rs.maillog,
                             r"connect from \S+\[127\.0\.0\.2\]:%d$" % cport,
                             "postfix 'connect from ...[127.0.0.2]:%d'" %
                             cport)
                self.wait_in(self.rs.maillog,
                             r"%s: client=\S+\[127\.0\.0\.2\]:%d$" %
                             (qid, cport), "postfix '%s: client=...'" % qid)

    def imap_login(self, v, user="bob"):
        """Log in over IMAP from 127.0.0.2 through the vN listener; return
        (client port, greeting, capability line, tagged LOGIN reply)."""
        with tls_from(CLIENT_ADDR, self.port[("imap", v)],
                      ctx=self.ctx) as c:
            cport = c.sock.getsockname()[1]
            greeting = c.recv_until(b"\r\n")
            c.send(b"a1 CAPABILITY\r\n")
            caps = c.recv_until(b"a1 ")
            c.recv_until(b"\r\n")
            c.send(b"a2 LOGIN %s %s\r\n" % (
                user.encode(), self.rs.users[user].encode()))
            reply = c.recv_until(b"a2 ")
            reply = c.recv_until(b"\r\n")
            c.send(b"a3 LOGOUT\r\n")
            try:
                c.recv_until(b"a3 ")
            except Closed:
                pass
            return cport, greeting, caps, reply

    def test_dovecot_imap_v2_login_over_tls_accepted_with_client_address(self):
        """ssl = required: Dovecot only takes plaintext LOGIN over TLS; with
        v2 the PP2_TYPE_SSL TLV tells it the client used TLS to mailtlsd."""
        cport, greeting, caps, reply = self.imap_login("v2", "bob")
        self.assertNotIn(b"LOGINDISABLED", greeting + caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertTrue(reply.startswith(b"OK"), reply)
        m = self.wait_in(self.rs.dovecot_log,
                         r"imap-login: Info: Login: user=<bob>, .*"
                         r"rip=([0-9a-f.:]+), rport=%d, .*$" % cport,
                         "dovecot imap Login with rport=%d" % cport)
        self.assertEqual(m.group(1), CLIENT_ADDR, m.group(0))
        self.assertRegex(m.group(0), r"\bsecured\b")

    def test_dovecot_imap_v1_login_refused_under_ssl_required(self):
        """The same LOGIN through a v1 header: nothing says the client used
        TLS, so Dovecot (ssl = required) sees a plaintext session from
        127.0.0.2 and refuses it.

        Dovecot's rules (2.3.19, checked here): a connection counts as
        secured when it is TLS, from login_trusted_networks (empty here), or
        from Dovecot's own address -- that last rule uses the real socket
        addresses and applies only to connections without a PROXY header.
        A proxied session is secured only by a PP2_TYPE_SSL TLV.  So with
        ssl = required the refusal is observable for any client address; the
        client still comes from 127.0.0.2 so that the refusal cannot be
        put down to a "local" address, and the control below shows that the
        very same LOGIN from 127.0.0.1 straight to Dovecot's own plain
        listener (a local, hence secured, connection) is accepted."""
        cport, greeting, caps, reply = self.imap_login("v1", "carol")
        self.assertIn(b"LOGINDISABLED", greeting + caps)
        self.assertNotIn(b"AUTH=PLAIN", caps)
        self.assertTrue(reply.startswith(b"NO"), reply)
        self.assertRegex(reply, rb"PRIVACYREQUIRED|[Pp]laintext "
                         rb"authentication disallowed")
        # Dovecot saw 127.0.0.2 (the header was honoured) and no TLS
        m = self.wait_in(self.rs.dovecot_log,
                         r"imap-login: .*rip=([0-9a-f.:]+), rport=%d, .*$" %
                         cport, "dovecot imap line with rport=%d" % cport)
        self.assertEqual(m.group(1), CLIENT_ADDR, m.group(0))
        self.assertNotRegex(m.group(0), r"\bsecured\b|\bTLS\b")
        self.assertNotRegex(read_file(self.rs.dovecot_log),
                            r"Login: user=<carol>.*rport=%d," % cport)

        # control: the password is right, and a local connection is secured
        m = imaplib.IMAP4(LOOPBACK, self.rs.imap_ports["plain"],
                          timeout=30 * SLOW)
        try:
            typ, _ = m.login("carol", self.rs.users["carol"])
            self.assertEqual(typ, "OK")
        finally:
            m.logout()

    def pop3_login(self, v, user):
        with tls_from(CLIENT_ADDR, self.port[("pop3", v)],
                      ctx=self.ctx) as c:
            cport = c.sock.getsockname()[1]
            greeting = c.recv_until(b"\r\n")
            c.send(b"USER %s\r\n" % user.encode())
            r1 = c.recv_until(b"\r\n")
            r2 = b""
            if r1.startswith(b"+OK"):
                c.send(b"PASS %s\r\n" % self.rs.users[user].encode())
                r2 = c.recv_until(b"\r\n")
            c.send(b"QUIT\r\n")
            try:
                c.recv_until(b"\r\n")
            except Closed:
                pass
            return cport, greeting, r1, r2

    def test_dovecot_pop3_v2_accepted_v1_refused(self):
        cport, greeting, r1, r2 = self.pop3_login("v2", "dave")
        self.assertTrue(greeting.startswith(b"+OK"), greeting)
        self.assertTrue(r1.startswith(b"+OK"), r1)
        self.assertTrue(r2.startswith(b"+OK"), r2)
        m = self.wait_in(self.rs.dovecot_log,
                         r"pop3-login: Info: Login: user=<dave>, .*"
                         r"rip=([0-9a-f.:]+), rport=%d, .*$" % cport,
                         "dovecot pop3 Login with rport=%d" % cport)
        self.assertEqual(m.group(1), CLIENT_ADDR)

        cport, greeting, r1, r2 = self.pop3_login("v1", "erin")
        self.assertTrue(r1.startswith(b"-ERR") or r2.startswith(b"-ERR"),
                        (r1, r2))
        self.assertIn(b"disallowed", r1 + r2)
        m = self.wait_in(self.rs.dovecot_log,
                         r"pop3-login: .*rip=([0-9a-f.:]+), rport=%d, .*$" %
                         cport, "dovecot pop3 line with rport=%d" % cport)
        self.assertEqual(m.group(1), CLIENT_ADDR)
        self.assertNotRegex(m.group(0), r"Login: ")


# --------------------------------------------------------------------------
# Byte level: the exact header toward a recording backend

class HeaderBytes(unittest.TestCase):
    """What the backend receives first is one PROXY header, exactly as the
    spec writes it, with the client's address and port."""

    GREETING = b"220 fake.example.test ESMTP\r\n"

    def start(self, version, host=LOOPBACK, **kw):
        self.b = FakeBackend(pp_backend(self.GREETING), host=host,
                              tc=self)
        self.port = free_port(host)
        listen = ("[%s]:%d" if ":" in host else "%s:%d") % (host, self.port)
        self.d = Mailtlsd(config({"pp": listener(
            "smtp", self.b.addr, listen, proxy_protocol=version, **kw)}),
            tc=self).start()
        return self.b, self.d

    def session(self, src, host=LOOPBACK, ctx=None, sni=SNI):
        with tls_from(src, self.port, dst=host, ctx=ctx,
                      server_hostname=sni) as c:
            cport = c.sock.getsockname()[1]
            g, bye = smtp_session(c)
            self.assertEqual(g, self.GREETING)
            self.assertEqual(bye, b"221 2.0.0 bye\r\n")
            info = {"port": cport, "version": c.version, "cipher": c.cipher,
                    "alpn": c.tls.selected_alpn_protocol()}
        return info

    def check_exact_start(self, h, i=0):
        """The header is the first thing on the connection, byte for byte,
        and nothing else is sent before the client speaks."""
        c = self.b.wait_closed(i)
        self.assertTrue(bytes(c.received).startswith(h.raw),
                        (h.raw, bytes(c.received[:200])))
        self.assertEqual(bytes(c.received[len(h.raw):]), b"QUIT\r\n")
        self.b.check()

    def test_v1_ipv4(self):
        self.start("v1")
        info = self.session(CLIENT_ADDR)
        h = header_of(self.b)
        self.assertEqual(h.raw, b"PROXY TCP4 127.0.0.2 127.0.0.1 %d %d\r\n" %
                         (info["port"], self.port))
        self.check_exact_start(h)

    def test_v1_ipv6(self):
        self.start("v1", host="::1")
        info = self.session("::1", host="::1")
        h = header_of(self.b)
        self.assertEqual(h.raw, b"PROXY TCP6 ::1 ::1 %d %d\r\n" %
                         (info["port"], self.port))
        self.check_exact_start(h)

    def check_v2_ssl(self, h, info, cn=None):
        self.assertIsNotNone(h.ssl, "no PP2_TYPE_SSL TLV for a TLS client")
        self.assertTrue(h.ssl["client"] & PP2_CLIENT_SSL, h.ssl)
        subs = h.ssl["subs"]
        version = subs.get(PP2_SUBTYPE_SSL_VERSION, b"").decode()
        cipher = subs.get(PP2_SUBTYPE_SSL_CIPHER, b"").decode()
        # the TLS library's own names: they must say what was negotiated
        want_v = info["version"].replace("TLSv", "")          # "1.3"
        self.assertIn(want_v, version, (version, info))
        self.assertTrue(cipher, h.ssl)
        # the cipher's bulk algorithm as Python (OpenSSL) names it, e.g.
        # TLS_AES_128_GCM_SHA256 or ECDHE-ECDSA-AES128-GCM-SHA256
        py = info["cipher"][0].upper().replace("-", "_")
        m = re.search(r"AES_?(128|256)_GCM|CHACHA20", py)
        self.assertIsNotNone(m, py)
        bulk = ("AES-%s-GCM" % m.group(1) if m.group(1) else "CHACHA20")
        self.assertIn(bulk, cipher.upper(), (cipher, info["cipher"]))
        # and they are the ones mailtlsd logs for the session
        e = wait_close(self.d, lambda e: e.get("client", "").endswith(
            ":%d" % info["port"]) or e.get("client", "").endswith(
            "]:%d" % info["port"]))
        self.assertEqual(e["tls_version"], version, e)
        self.assertEqual(e["cipher"], cipher, e)
        if cn is None:
            self.assertNotIn(PP2_SUBTYPE_SSL_CN, subs, h.ssl)
            self.assertNotEqual(h.ssl["verify"], 0, "verify = 0 (a verified "
                                "certificate) without a client certificate")
            self.assertFalse(h.ssl["client"] & (PP2_CLIENT_CERT_CONN |
                                                PP2_CLIENT_CERT_SESS), h.ssl)
        else:
            self.assertEqual(subs.get(PP2_SUBTYPE_SSL_CN), cn.encode(),
                             h.ssl)
            self.assertEqual(h.ssl["verify"], 0, h.ssl)
            self.assertTrue(h.ssl["client"] & PP2_CLIENT_CERT_CONN, h.ssl)

    def test_v2_ipv4_tlvs_sni_alpn_ssl(self):
        self.start("v2")
        info = self.session(CLIENT_ADDR,
                            ctx=mtd.client_context(alpn=["smtp"]))
        self.assertEqual(info["alpn"], "smtp")
        h = header_of(self.b)
        self.assertEqual(h.raw[12], 0x21, "version 2, command PROXY")
        self.assertEqual(h.raw[13], 0x11, "AF_INET, STREAM")
        self.assertEqual((h.family, h.src, h.dst, h.sport, h.dport),
                         ("TCP4", CLIENT_ADDR, LOOPBACK, info["port"],
                          self.port))
        self.assertEqual(h.tlvs.get(PP2_TYPE_AUTHORITY), SNI.encode(), h)
        self.assertEqual(h.tlvs.get(PP2_TYPE_ALPN), b"smtp", h)
        self.check_v2_ssl(h, info)
        self.check_exact_start(h)

    def test_v2_ipv6_tls12_without_alpn_or_sni(self):
        self.start("v2", host="::1")
        ctx = mtd.client_context(verify=False,
                                 maximum=ssl.TLSVersion.TLSv1_2)
        # an IP literal as server_hostname: Python sends no SNI for it
        info = self.session("::1", host="::1", ctx=ctx, sni="::1")
        self.assertEqual(info["version"], "TLSv1.2")
        h = header_of(self.b)
        self.assertEqual(h.raw[12:14], b"\x21\x21", "PROXY, AF_INET6/STREAM")
        self.assertEqual((h.family, h.src, h.dst, h.sport, h.dport),
                         ("TCP6", "::1", "::1", info["port"], self.port))
        self.assertNotIn(PP2_TYPE_AUTHORITY, h.tlvs, "AUTHORITY without SNI")
        self.assertNotIn(PP2_TYPE_ALPN, h.tlvs, "ALPN the client never sent")
        self.check_v2_ssl(h, info)
        self.check_exact_start(h)

    def test_v2_verified_client_certificate_cn(self):
        c = mtd.certs()
        self.start("v2", client_ca=c.ca, client_verify="optional")
        info = self.session(CLIENT_ADDR,
                            ctx=mtd.client_context(cert=c.client))
        h = header_of(self.b)
        self.check_v2_ssl(h, info, cn="client.example.test")
        # (without a certificate: no CN, verify != 0 -- test_v2_ipv4_...;
        # optional client certificates: test_alpn_clientcert.py)


class StarttlsHeaders(unittest.TestCase):
    """STARTTLS listener with v2: the backend connection made before TLS has
    no PP2_TYPE_SSL; the fresh one after the handshake has it (SECURITY-NOTES
    design point 4), and each starts with its header."""

    def test_v2_ssl_tlv_only_after_starttls(self):
        b = FakeBackend(pp_backend(b"220 fake.example.test ESMTP\r\n"),
                         tc=self)
        port = free_port()
        d = Mailtlsd(config({"st": listener(
            "smtp", b.addr, port, client_tls="starttls",
            proxy_protocol="v2")}), tc=self).start()
        s = bound_socket(CLIENT_ADDR, port)
        f = s.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220 "))
        s.sendall(b"EHLO a.example\r\n")
        while True:
            line = f.readline()
            self.assertTrue(line, "EOF in the EHLO reply")
            if line[3:4] == b" ":
                break
        s.sendall(b"STARTTLS\r\n")
        self.assertTrue(f.readline().startswith(b"220 "))
        cport = s.getsockname()[1]
        c = TlsConn(port, sock=s, server_hostname=SNI)
        c.send(b"EHLO a.example\r\nQUIT\r\n")
        c.recv_until(b"221 ")
        c.close()
        f.close()
        # connection 0 is the harness's readiness probe: take the two of
        # this client, in order
        mtd.wait_for(lambda: len(b.conns) >= 3, 10 * SLOW, 0.02,
                     "two backend connections for the client")
        mine = [i for i in range(len(b.conns))
                if header_of(b, i).src == CLIENT_ADDR]
        self.assertEqual(len(mine), 2, [header_of(b, i)
                                        for i in range(len(b.conns))])
        h0, h1 = header_of(b, mine[0]), header_of(b, mine[1])
        for h in (h0, h1):
            self.assertEqual((h.src, h.sport), (CLIENT_ADDR, cport), h)
        self.assertIsNone(h0.ssl, "PP2_TYPE_SSL before the client's TLS")
        self.assertIsNotNone(h1.ssl, "no PP2_TYPE_SSL after STARTTLS")
        self.assertTrue(h1.ssl["client"] & PP2_CLIENT_SSL)
        self.assertEqual(h1.tlvs.get(PP2_TYPE_AUTHORITY), SNI.encode())
        for i, h in zip(mine, (h0, h1)):
            b.wait_closed(i)
            self.assertTrue(b.received(i).startswith(h.raw))
        # nothing of the client's before TLS reached the fresh session
        self.assertNotIn(b"STARTTLS", b.received(mine[1]))
        b.check()


# --------------------------------------------------------------------------
# accept_proxy: headers from a load balancer in front of mailtlsd

class AcceptProxy(unittest.TestCase):
    """accept_proxy = 127.0.0.1/32 on an implicit listener whose backend
    gets proxy_protocol = v1 (so what mailtlsd believes is visible)."""

    GREETING = b"220 fake.example.test ESMTP\r\n"

    def start(self, accept="127.0.0.1/32", out="v1", **kw):
        self.b = FakeBackend(pp_backend(self.GREETING), tc=self)
        self.port = free_port()
        lkw = {"proxy_protocol": out, "handshake_timeout": "30s"}
        if accept:
            lkw["accept_proxy"] = accept
        lkw.update(kw)
        self.d = Mailtlsd(config({"lb": listener(
            "smtp", self.b.addr, self.port, **lkw)}), tc=self,
            wait_ports=[]).start()
        # a probe connection would count as a client without header: wait
        # for the listen line instead of connecting
        self.d.wait_log(r"event=ready")
        return self.b, self.d

    def honoured(self, header, src, sport, dst, dport, out="v1"):
        self.start(out=out)
        with tls_from(LOOPBACK, self.port, prefix=header) as c:
            g, bye = smtp_session(c)
        self.assertEqual(g, self.GREETING)
        h = header_of(self.b)
        self.assertEqual((h.src, h.sport), (src, sport), h)
        # the destination: the one the load balancer saw (or ours)
        self.assertIn((h.dst, h.dport), [(dst, dport),
                                         (LOOPBACK, self.port)], h)
        want = ("[%s]:%d" if ":" in src else "%s:%d") % (src, sport)
        e = wait_close(self.d, lambda e: e.get("listener") == "lb" and
                       e.get("reason") not in (None, ""),
                       "close line of the proxied session")
        self.assertEqual(e["client"], want, e)
        self.b.check()

    def test_trusted_v1_header_honoured(self):
        self.honoured(v1_header("203.0.113.7", "198.51.100.1", 40001, 465),
                      "203.0.113.7", 40001, "198.51.100.1", 465)

    def test_trusted_v2_header_honoured(self):
        hdr = v2_header("203.0.113.8", "198.51.100.1", 40002, 465,
                        tlvs=tlv(PP2_TYPE_AUTHORITY, b"lb.example"))
        self.honoured(hdr, "203.0.113.8", 40002, "198.51.100.1", 465)

    def test_trusted_v1_ipv6_client_passed_on_in_v2(self):
        self.honoured(v1_header("2001:db8::7", "2001:db8::1", 40003, 465),
                      "2001:db8::7", 40003, "2001:db8::1", 465, out="v2")

    def test_trusted_header_and_client_hello_in_one_segment(self):
        """The header and the ClientHello in one write: the bytes after the
        header are the client's TLS, not lost and not part of the header."""
        self.start()
        s = bound_socket(LOOPBACK, self.port)
        try:
            c = TlsConn(self.port, sock=s, server_hostname=SNI,
                        handshake=False)
            try:
                c.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = c.out.read()
            self.assertEqual(hello[:1], b"\x16")
            s.setblocking(True)
            s.sendall(v2_header("203.0.113.11", "198.51.100.1", 40011,
                                465) + hello)
            c.handshake()
            g, _ = smtp_session(c)
        finally:
            s.close()
        self.assertEqual(g, self.GREETING)
        h = header_of(self.b)
        self.assertEqual((h.src, h.sport), ("203.0.113.11", 40011), h)

    def test_trusted_local_and_unknown_keep_the_real_address(self):
        """A v2 LOCAL header (a health check) and v1 "PROXY UNKNOWN" carry
        no client: the connection's own address is used."""
        self.start()
        for name, hdr in (("v2 LOCAL", V2_SIG + b"\x20\x00\x00\x00"),
                          ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n")):
            with self.subTest(header=name):
                n = len(self.b.conns)
                with tls_from(LOOPBACK, self.port, prefix=hdr) as c:
                    cport = c.sock.getsockname()[1]
                    g, _ = smtp_session(c)
                self.assertEqual(g, self.GREETING)
                h = header_of(self.b, n)
                self.assertEqual((h.src, h.sport), (LOOPBACK, cport), h)
                e = wait_close(self.d, lambda e: e.get("client") ==
                               "127.0.0.1:%d" % cport)
                self.assertNotEqual(e.get("tls_version"), "", e)

    def assert_closed_nothing_relayed(self):
        e = wait_close(self.d, lambda e: e.get("listener") == "lb",
                       "close line")
        self.assertEqual(len(self.b.conns), 0,
                         "a backend connection was made")
        return e

    def test_trusted_source_without_header_closed(self):
        self.start()
        with self.assertRaises((Closed, ssl.SSLError, ConnectionError)):
            with tls_from(LOOPBACK, self.port) as c:
                c.recv_until(b"\r\n", timeout=10)
        e = self.assert_closed_nothing_relayed()
        self.assertEqual(e.get("tls_version"), "", e)
        self.assertIn(e.get("phase"), ("proxy_header",), e)

    def test_untrusted_source_header_not_honoured(self):
        """accept_proxy = 127.0.0.2/32, the client comes from 127.0.0.1 and
        puts a PROXY header before its ClientHello: the header is taken as
        TLS bytes, the handshake fails cleanly (an alert or a close, never a
        hang), and nothing reaches the backend."""
        self.start(accept="127.0.0.2/32")
        s = bound_socket(LOOPBACK, self.port)
        cport = s.getsockname()[1]
        s.sendall(v1_header("203.0.113.9", "198.51.100.1", 40009, 465))
        raw = read_until_eof(s, 15)
        s.close()
        if raw:
            self.assertEqual(raw[0], 0x15, "not a TLS alert: %r" % raw[:50])
        e = self.assert_closed_nothing_relayed()
        self.assertEqual(e["client"], "127.0.0.1:%d" % cport, e)
        self.assertNotIn("203.0.113.9", self.d.log)

        # and with a real ClientHello after the header: the handshake fails
        with self.assertRaises((Closed, ssl.SSLError, ConnectionError)):
            with tls_from(LOOPBACK, self.port, prefix=v1_header(
                    "203.0.113.9", "198.51.100.1", 40010, 465)) as c:
                c.recv_until(b"\r\n", timeout=10)
        self.assertEqual(len(self.b.conns), 0)
        self.assertNotIn("203.0.113.9", self.d.log)

    def test_untrusted_source_served_without_header(self):
        """From outside accept_proxy no header is required: a plain client
        is served, with its own address."""
        self.start(accept="127.0.0.2/32")
        with tls_from(LOOPBACK, self.port) as c:
            cport = c.sock.getsockname()[1]
            g, _ = smtp_session(c)
        self.assertEqual(g, self.GREETING)
        h = header_of(self.b)
        self.assertEqual((h.src, h.sport), (LOOPBACK, cport))

    def malformed(self, data, eof=False):
        """Send data from the trusted source; the connection must close
        well before handshake_timeout (30s), nothing relayed."""
        s = bound_socket(LOOPBACK, self.port)
        cport = s.getsockname()[1]
        t0 = time.monotonic()
        s.sendall(data)
        if eof:
            s.shutdown(socket.SHUT_WR)
        raw = read_until_eof(s, 10)
        elapsed = time.monotonic() - t0
        s.close()
        self.assertEqual(raw, b"", "mailtlsd answered a bad header")
        self.assertLess(elapsed, 10 * SLOW)
        e = wait_close(self.d, lambda e: e.get("client") ==
                       "127.0.0.1:%d" % cport, "close line of :%d" % cport)
        self.assertEqual(e.get("phase"), "proxy_header", e)
        self.assertEqual(len(self.b.conns), 0,
                         "a backend connection was made")
        return e

    def test_malformed_headers_close(self):
        cases = {
            "truncated v1 then EOF": (b"PROXY TCP4 203.0.113.7 198.51", True),
            "truncated v2 then EOF": (v2_header(
                "203.0.113.7", "198.51.100.1", 1, 2)[:20], True),
            "wrong signature": (b"PROXZ TCP4 203.0.113.7 198.51.100.1 1 2"
                                b"\r\n", False),
            "v2 signature off by one byte": (
                b"\r\n\r\n\x00\r\nQUIT\r" + v2_header(
                    "203.0.113.7", "198.51.100.1", 1, 2)[12:], False),
            "http request": (b"GET / HTTP/1.0\r\n\r\n", False),
            "bad v1 address": (b"PROXY TCP4 999.0.113.7 198.51.100.1 1 2"
                               b"\r\n", False),
            "bad v1 port": (b"PROXY TCP4 203.0.113.7 198.51.100.1 70000 2"
                            b"\r\n", False),
            "oversized v1 (no CRLF in 107 bytes)": (
                b"PROXY TCP4 " + b"1" * 200, False),
            "oversized v2 (length 4000)": (
                V2_SIG + b"\x21\x11" + struct.pack("!H", 4000) +
                b"\0" * 4000, False),
            "v2 bad version": (V2_SIG + b"\x31\x11\x00\x0c" + b"\0" * 12,
                               False),
            "v2 TLV past the end": (v2_header(
                "203.0.113.7", "198.51.100.1", 1, 2,
                tlvs=b"\x02\x00\x10abc"), False),
        }
        self.start()
        for name, (data, eof) in cases.items():
            with self.subTest(case=name):
                self.malformed(data, eof)
        self.assertNotIn("203.0.113.7", "\n".join(
            e.get("client", "") for e in close_events(self.d)))

    def test_unfinished_header_cut_by_handshake_timeout(self):
        self.start(handshake_timeout="1s")
        s = bound_socket(LOOPBACK, self.port)
        t0 = time.monotonic()
        s.sendall(b"PROXY TCP4 203.0.113.7 ")
        raw = read_until_eof(s, 15)
        elapsed = time.monotonic() - t0
        s.close()
        self.assertEqual(raw, b"")
        self.assertGreaterEqual(elapsed, 0.5, "closed before the timeout")
        e = self.assert_closed_nothing_relayed()
        self.assertEqual(e.get("phase"), "proxy_header", e)
        self.assertEqual(e.get("reason"), "handshake_timeout", e)


if __name__ == "__main__":
    unittest.main()
