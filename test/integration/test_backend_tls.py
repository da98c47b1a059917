"""
TLS toward backends (backend_tls = starttls | implicit): real Postfix and
Dovecot that insist on TLS, certificate checks, backends that do not offer
STARTTLS, response injection after the backend's go-ahead, an IMAP PREAUTH
greeting, backend_verify = no, plaintext-in/TLS-out relays for legacy
clients, backend session resumption and the opaque relay over TLS
(SPEC: "TLS toward the backend", "When things fail"; SECURITY-NOTES 12).
"""

import json
import os
import poplib
import re
import smtplib
import imaplib
import socket
import ssl
import time
import unittest
import uuid

import mtd
from mtd import (FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK,
                 free_port, sha256)

HOSTNAME = mtd.FRONT_HOSTNAME
# The test CA's server certificate holds this name (and localhost,
# 127.0.0.1); the other-name certificate does not.
BACKEND_NAME = "mail.example.test"
SMTP_UNAVAILABLE = ("421 4.3.0 %s Service not available\r\n" %
                    HOSTNAME).encode()
UNAVAILABLE_PREFIX = {"smtp": SMTP_UNAVAILABLE,
                      "imap": b"* BYE [UNAVAILABLE] ",
                      "pop3": b"-ERR [SYS/TEMP] "}

_servers = None
_front = None


def token():
    return "mtd-" + uuid.uuid4().hex


def tls_server_context(pair, maximum=None):
    """An ssl context for a fake backend serving the CertPair pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.chain, pair.key)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def listener(protocol, backend, port, backend_tls, client_tls="implicit",
             **kw):
    d = {
        "listen": "%s:%d" % (LOOPBACK, port),
        "protocol": protocol,
        "client_tls": client_tls,
        "backend": backend,
        "backend_tls": backend_tls,
        "backend_ca": mtd.certs().ca,
        "backend_name": BACKEND_NAME,
        "hostname": HOSTNAME,
        "connect_timeout": "5s",
        "handshake_timeout": "10s",
    }
    if client_tls != "none":
        d["certs"] = [mtd.certs().server_ecdsa]
    d.update(kw)
    return d


def config(listeners, **glob):
    return mtd.daemon_conf(listeners, **dict({"log_format": "json"}, **glob))


def events(d, event, listener_name=None):
    """The JSON log records of mailtlsd d for event (and listener)."""
    out = []
    for line in d.log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") != event:
            continue
        if listener_name is not None and rec.get("listener") != listener_name:
            continue
        out.append(rec)
    return out


def wait_event(d, event, listener_name=None, n=1, timeout=10):
    """Wait until mailtlsd d logged n records of event; return them."""
    def enough():
        r = events(d, event, listener_name)
        return r if len(r) >= n else None
    try:
        return mtd.wait_for(enough, timeout * SLOW, 0.02, "%d %r log "
                            "records%s" % (n, event, " of " + listener_name
                                           if listener_name else ""))
    except mtd.HarnessError as e:
        raise mtd.HarnessError("%s; mailtlsd log:\n%s" % (e, d.log[-3000:]))


# --------------------------------------------------------------------------
# A fake backend that can speak TLS (server side) over a recording
# BackendConn, so that every raw byte it received stays on record.

class ServerTls:
    """Server-side TLS through memory BIOs over a mtd.BackendConn.  The
    BackendConn keeps recording the raw bytes (the records); the decrypted
    bytes are kept in conn.tls_received."""

    def __init__(self, conn, ctx):
        self.c = conn
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)
        self.plain = bytearray()
        conn.tls_received = bytearray()
        if conn.buf:
            self.inc.write(bytes(conn.buf))
            conn.buf.clear()

    def _flush(self):
        d = self.out.read()
        if d:
            try:
                self.c.send(d)
            except OSError:
                pass

    def _fill(self, deadline):
        d = self.c.recv(timeout=max(0.01, deadline - time.monotonic()))
        if d:
            self.inc.write(d)
        else:
            self.inc.write_eof()
        return d

    def handshake(self, timeout=30):
        deadline = time.monotonic() + timeout * SLOW
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill(deadline):
                    raise Closed("EOF during the TLS handshake")
            except ssl.SSLError:
                self._flush()           # our alert, if any
                raise
        self._flush()

    def recv(self, timeout=60):
        """Decrypted bytes as they come; b"" at close_notify or EOF."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            try:
                d = self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill(deadline) and self.inc.pending == 0:
                    try:
                        d = self.obj.read(65536)
                    except ssl.SSLError:
                        return b""
                    self.c.tls_received += d
                    return d
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            self._flush()       # tickets, key updates
            self.c.tls_received += d
            return d

    def recv_line(self, timeout=60):
        while b"\n" not in self.plain:
            d = self.recv(timeout)
            if not d:
                raise Closed("EOF over TLS; got %r" % bytes(self.plain))
            self.plain += d
        i = self.plain.index(b"\n") + 1
        line = bytes(self.plain[:i])
        del self.plain[:i]
        return line

    def send(self, data):
        self.obj.write(data)
        self._flush()


def greeting_for(proto):
    return {"smtp": b"220 fake.example.test ESMTP fake\r\n",
            "imap": b"* OK fake IMAP ready\r\n",
            "pop3": b"+OK fake POP3 ready\r\n"}[proto]


def imap_tag(line):
    return line.split(b" ", 1)[0]


def go_ahead_dialogue(c, proto, offer=True, greeting=None):
    """The backend's side of the plaintext dialogue up to its go-ahead
    reply to STARTTLS/STLS, which it returns unsent (None if the proxy
    never asked for TLS).  greeting: other than greeting_for(proto)."""
    c.send(greeting or greeting_for(proto))
    while True:
        line = c.recv_line(timeout=30)
        word = line.split()
        if proto == "smtp":
            cmd = word[0].upper() if word else b""
            if cmd == b"EHLO":
                c.send(b"250-fake.example.test\r\n250-PIPELINING\r\n" +
                       (b"250-STARTTLS\r\n" if offer else b"") +
                       b"250 8BITMIME\r\n")
            elif cmd == b"STARTTLS":
                if not offer:
                    c.send(b"502 5.5.1 no TLS here\r\n")
                    continue
                return b"220 2.0.0 Ready to start TLS\r\n"
            elif cmd == b"QUIT":
                c.send(b"221 2.0.0 Bye\r\n")
                return None
            else:
                # a plaintext fallback would get on with the transaction
                c.send(b"250 2.0.0 Ok\r\n")
        elif proto == "imap":
            tag = imap_tag(line)
            cmd = word[1].upper() if len(word) > 1 else b""
            if cmd == b"CAPABILITY":
                c.send(b"* CAPABILITY IMAP4rev1 " +
                       (b"STARTTLS " if offer else b"") +
                       b"AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
            elif cmd == b"STARTTLS":
                if not offer:
                    c.send(tag + b" BAD no TLS here\r\n")
                    continue
                return tag + b" OK Begin TLS negotiation now\r\n"
            elif cmd == b"LOGOUT":
                c.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return None
            else:
                c.send(tag + b" OK done\r\n")
        else:
            cmd = word[0].upper() if word else b""
            if cmd == b"CAPA":
                c.send(b"+OK list follows\r\nUSER\r\nTOP\r\n" +
                       (b"STLS\r\n" if offer else b"") + b".\r\n")
            elif cmd == b"STLS":
                if not offer:
                    c.send(b"-ERR no TLS here\r\n")
                    continue
                return b"+OK Begin TLS negotiation\r\n"
            elif cmd == b"QUIT":
                c.send(b"+OK bye\r\n")
                return None
            else:
                c.send(b"+OK\r\n")


def serve_over_tls(t, proto):
    """A small line server for proto over the TLS session t."""
    if proto == "none":
        while True:
            d = t.recv(300)
            if not d:
                return
            t.send(d)
    while True:
        try:
            line = t.recv_line(60)
        except Closed:
            return
        word = line.split()
        if proto == "smtp":
            cmd = word[0].upper() if word else b""
            if cmd == b"EHLO":
                t.send(b"250-fake-tls.example.test\r\n250 PIPELINING\r\n")
            elif cmd == b"QUIT":
                t.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                t.send(b"250 2.0.0 Ok (over TLS)\r\n")
        elif proto == "imap":
            tag = imap_tag(line)
            cmd = word[1].upper() if len(word) > 1 else b""
            if cmd == b"LOGOUT":
                t.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return
            t.send(tag + b" OK done (over TLS)\r\n")
        else:
            cmd = word[0].upper() if word else b""
            if cmd == b"QUIT":
                t.send(b"+OK bye\r\n")
                return
            t.send(b"+OK (over TLS)\r\n")


def tls_backend(proto, ctx, mode="starttls", inject=None, offer=True,
                greeting=None):
    """A FakeBackend handler: a proto server that is reached over TLS
    (mode starttls or implicit) with ctx.  Sets on each conn: plain_len (raw
    bytes received before TLS), tls_error (the handshake's failure, if
    any), session_reused, tls_version.  inject = "same" appends a line to
    the go-ahead in the same packet; "next" sends it alone once the proxy's
    ClientHello arrived.  greeting: the plaintext greeting (starttls)."""
    injected = {"smtp": b"250 injected\r\n", "imap": b"* OK injected\r\n",
                "pop3": b"+OK injected\r\n"}.get(proto)

    def h(c):
        c.tls_error = None
        c.session_reused = None
        c.tls_version = None
        c.plain_len = 0
        if mode == "starttls":
            try:
                go = go_ahead_dialogue(c, proto, offer, greeting)
            except Closed:
                return          # the proxy gave up on this backend
            if go is None:
                c.read_to_eof(timeout=30)
                return
            c.plain_len = len(c.received) - len(c.buf)
            if inject == "same":
                c.send(go + injected)
                c.read_to_eof(timeout=30)
                return
            c.send(go)
            if inject == "next":
                # The proxy has read the go-ahead: its ClientHello is here.
                c.recv(timeout=30)
                c.send(injected)
                c.read_to_eof(timeout=30)
                return
        t = ServerTls(c, ctx)
        try:
            t.handshake()
        except (ssl.SSLError, Closed, OSError) as e:
            c.tls_error = e
            try:
                c.read_to_eof(timeout=30)
            except OSError:
                pass
            return
        c.session_reused = t.obj.session_reused
        c.tls_version = t.obj.version()
        if mode == "implicit" and proto != "none":
            t.send(greeting_for(proto))
        serve_over_tls(t, proto)
    return h


# --------------------------------------------------------------------------
# What a backend received

def tls_records(data):
    """Split raw bytes into TLS records; raise AssertionError at the first
    byte that is not a record (plaintext)."""
    recs = []
    i = 0
    while i < len(data):
        hdr = data[i:i + 5]
        if (len(hdr) < 5 or hdr[0] not in (20, 21, 22, 23) or hdr[1] != 3
                or hdr[2] > 4):
            raise AssertionError("not a TLS record at offset %d: %r" %
                                 (i, bytes(data[i:i + 60])))
        n = int.from_bytes(hdr[3:5], "big")
        if i + 5 + n > len(data):
            raise AssertionError("truncated TLS record at offset %d" % i)
        recs.append((hdr[0], n))
        i += 5 + n
    return recs


OWN_LINES = {
    "smtp": re.compile(rb"^(EHLO %s|STARTTLS|QUIT)\r\n$" %
                       re.escape(HOSTNAME.encode()), re.I),
    "imap": re.compile(rb"^[A-Za-z0-9.]+ (CAPABILITY|STARTTLS|LOGOUT)\r\n$",
                       re.I),
    "pop3": re.compile(rb"^(CAPA|STLS|QUIT)\r\n$", re.I),
}
FIRST_LINE = {
    "smtp": re.compile(rb"^EHLO %s\r\n" % re.escape(HOSTNAME.encode())),
    "imap": re.compile(rb"^[A-Za-z0-9.]+ (CAPABILITY|STARTTLS)\r\n", re.I),
    "pop3": re.compile(rb"^CAPA\r\n"),
}


def split_lines(data):
    return [l for l in re.split(rb"(?<=\n)", data) if l]


class BackendTlsCase(unittest.TestCase):
    """Assertions shared by the test classes."""

    def assert_only_own_dialogue(self, proto, plain, secret=None):
        """plain (what a backend received in plaintext) holds only
        mailtlsd's own STARTTLS dialogue, and none of the client's bytes."""
        lines = split_lines(plain)
        if proto in FIRST_LINE and plain:
            self.assertRegex(plain, FIRST_LINE[proto])
        for line in lines:
            self.assertRegex(line, OWN_LINES[proto],
                             "the backend got a line in plaintext that "
                             "mailtlsd did not write itself: %r (all: %r)"
                             % (line, plain))
        if secret is not None:
            self.assertNotIn(secret, plain)

    def assert_unavailable(self, proto, reply):
        if proto == "smtp":
            self.assertEqual(reply, SMTP_UNAVAILABLE)
        else:
            self.assertTrue(reply.startswith(UNAVAILABLE_PREFIX[proto]),
                            reply)
            self.assertTrue(reply.endswith(b"\r\n") and
                            reply.count(b"\n") == 1, reply)


CLIENT_SECRET = {
    # what a client says first; none of it may reach a backend in plaintext
    "smtp": lambda tok: b"EHLO client.example.org\r\nMAIL FROM:<%s@example."
                        b"org>\r\n" % tok,
    "imap": lambda tok: b"a1 LOGIN alice %s\r\n" % tok,
    "pop3": lambda tok: b"USER alice\r\nPASS %s\r\n" % tok,
}


def client_reply(port, proto, secret, client_tls="implicit"):
    """Connect to mailtlsd as a client that says its secret at once (without
    waiting for a greeting) and read until mailtlsd closes."""
    if client_tls == "implicit":
        s = mtd.tls_connect(port)
    else:
        s = socket.create_connection((LOOPBACK, port), timeout=10 * SLOW)
    with s:
        s.sendall(CLIENT_SECRET[proto](secret))
        return mtd.read_until_closed(s, timeout=20)


# --------------------------------------------------------------------------
# Real Postfix and Dovecot that insist on TLS

# mtd.RealServers leaves Dovecot's default imap (143) and pop3 (110)
# listeners on: they fail when another instance holds those ports.  Dovecot
# merges a repeated service section, so this turns them off.
NO_DEFAULT_DOVECOT_LISTENERS = """\
service imap-login {
  inet_listener imap {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
}
"""


def servers():
    """Postfix with a STARTTLS-required (encrypt) listener and a wrapper-mode
    (implicit TLS) listener; Dovecot with ssl = required plus imaps/pop3s
    style listeners.  Both log their TLS sessions."""
    global _servers
    if _servers is None:
        tls_log = {"smtpd_tls_loglevel": "1",
                   "smtpd_tls_received_header": "yes"}
        _servers = mtd.RealServers(
            postfix_listeners={
                "starttls": dict(tls_log, smtpd_tls_security_level="encrypt"),
                "wrapper": dict(tls_log, smtpd_tls_security_level="encrypt",
                                smtpd_tls_wrappermode="yes"),
            },
            dovecot_ssl="required",
            dovecot_listeners={"tls": {"ssl": "yes"}},
            dovecot_extra=NO_DEFAULT_DOVECOT_LISTENERS).start()
    return _servers


class Front:
    """One mailtlsd in front of the TLS-only servers: implicit-TLS client
    listeners with starttls and implicit backend hops, and plaintext
    (client_tls = none) SMTP listeners for legacy clients."""

    def __init__(self):
        rs = servers()
        (self.smtps_st, self.imaps_st, self.pop3s_st, self.smtps_im,
         self.imaps_im, self.pop3s_im, self.legacy_st,
         self.legacy_im) = mtd.free_ports(8)

        def be(port):
            return "%s:%d" % (LOOPBACK, port)
        self.d = Mailtlsd(config({
            "smtps-starttls": listener("smtp", be(rs.smtp_ports["starttls"]),
                                       self.smtps_st, "starttls"),
            "imaps-starttls": listener("imap", be(rs.imap_ports["plain"]),
                                       self.imaps_st, "starttls"),
            "pop3s-starttls": listener("pop3", be(rs.pop3_ports["plain"]),
                                       self.pop3s_st, "starttls"),
            "smtps-implicit": listener("smtp", be(rs.smtp_ports["wrapper"]),
                                       self.smtps_im, "implicit"),
            "imaps-implicit": listener("imap", be(rs.imap_ports["tls"]),
                                       self.imaps_im, "implicit"),
            "pop3s-implicit": listener("pop3", be(rs.pop3_ports["tls"]),
                                       self.pop3s_im, "implicit"),
            "legacy-starttls": listener("smtp", be(rs.smtp_ports["starttls"]),
                                        self.legacy_st, "starttls",
                                        client_tls="none"),
            "legacy-implicit": listener("smtp", be(rs.smtp_ports["wrapper"]),
                                        self.legacy_im, "implicit",
                                        client_tls="none"),
        }), name="bt-front").start()


def front():
    global _front
    if _front is None:
        _front = Front()
    return _front


def tearDownModule():
    global _front, _servers
    try:
        if _front is not None:
            rc = _front.d.stop()
            log = _front.d.log
            _front = None
            if rc != 0:
                raise AssertionError("shared mailtlsd exited %r:\n%s" %
                                     (rc, log[-3000:]))
    finally:
        if _servers is not None:
            _servers.stop()
            _servers = None


def curl(args, timeout=60):
    mtd.need_tool("curl")
    p = mtd.run(["curl", "-sS", "--max-time", str(int(30 * SLOW))] +
                list(args), timeout=timeout * SLOW)
    return p.returncode, p.stdout, p.stderr


class RealServersOverTls(BackendTlsCase):
    """Clients -> mailtlsd -> (STARTTLS or implicit TLS, verified) ->
    Postfix that requires TLS and Dovecot with ssl = required."""

    @classmethod
    def setUpClass(cls):
        cls.f = front()
        cls.rs = servers()
        cls.ctx = mtd.client_context()

    def read_maillog(self):
        with open(self.rs.maillog, errors="replace") as f:
            return f.read()

    def read_dovecot_log(self):
        with open(self.rs.dovecot_log, errors="replace") as f:
            return f.read()

    def assert_postfix_got_it_over_tls(self, msg):
        """The delivered message msg came in over TLS: Postfix's Received
        header says so, and its maillog shows the TLS session of the smtpd
        that took it."""
        text = msg.decode("utf-8", "replace")
        rx = re.search(r"(?s)^Received: from [^\n]*\n\s+\(using "
                       r"(TLSv1\.[23]) with cipher .*?with ESMTPSA? id (\w+)",
                       text, re.M)
        self.assertIsNotNone(rx, "Postfix did not record a TLS session in "
                             "the Received header:\n%s" % text[:1500])
        qid = rx.group(2)
        log = mtd.wait_for(lambda: (lambda l: l if re.search(
            r"smtpd\[\d+\]: %s: client=" % qid, l) else None)(
                self.read_maillog()), 10 * SLOW, 0.05,
            "maillog line for %s" % qid)
        pid = re.search(r"smtpd\[(\d+)\]: %s: client=" % qid, log).group(1)
        before = log[:re.search(r"smtpd\[%s\]: %s: client=" % (pid, qid),
                                log).start()]
        start = before.rfind("smtpd[%s]: connect from" % pid)
        self.assertGreaterEqual(start, 0, log[-3000:])
        conn = before[start:]
        self.assertRegex(conn, r"smtpd\[%s\]: \w+ TLS connection established"
                         % pid, "no TLS session in the maillog for the smtpd "
                         "that took %s:\n%s" % (qid, log[-3000:]))

    def assert_dovecot_logins_over_tls(self, user, services):
        """Every Dovecot login of user was over TLS, and there was one for
        each of services (imap-login, pop3-login)."""
        def logins():
            found = [l for l in self.read_dovecot_log().splitlines()
                     if ": Login: user=<%s>," % user in l]
            if all(any(s + ": " in l for l in found) for s in services):
                return found
            return None
        found = mtd.wait_for(logins, 10 * SLOW, 0.05,
                             "Dovecot logins of %s" % user)
        for l in found:
            self.assertRegex(l, r", TLS(, |$)", "a login of %s was not over "
                             "TLS: %s" % (user, l))
            self.assertNotIn("secured", l)

    def submit_and_read_back(self, smtps, imaps, pop3s, user, starttls):
        tok = token()
        rcpt = self.rs.address(user)
        msg = ("From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\n"
               "body line %s\r\n" % (rcpt, tok, tok))
        with smtplib.SMTP_SSL(LOOPBACK, smtps, context=self.ctx,
                              timeout=30 * SLOW) as s:
            code, ehlo = s.ehlo("client.example.org")
            self.assertEqual(code, 250, ehlo)
            self.assertNotIn(b"STARTTLS", ehlo.upper())
            self.assertEqual(s.sendmail("sender@example.org", [rcpt], msg),
                             {})
        delivered = self.rs.wait_delivered(user, tok)
        self.assert_postfix_got_it_over_tls(delivered)

        m = imaplib.IMAP4_SSL(LOOPBACK, imaps, ssl_context=self.ctx,
                              timeout=30 * SLOW)
        try:
            self.assertRegex(m.welcome, rb"^\* OK .*Dovecot")
            self.assertNotIn(b"STARTTLS", m.welcome.upper())
            if starttls:
                # Dovecot's greeting, without the capabilities it had
                # before TLS
                self.assertNotIn(b"[CAPABILITY", m.welcome.upper())
            typ, _ = m.login(user, self.rs.users[user])
            self.assertEqual(typ, "OK")
            m.select("INBOX")
            typ, data = m.search(None, "SUBJECT", tok)
            self.assertEqual(typ, "OK")
            nums = data[0].split()
            self.assertEqual(len(nums), 1, data)
            typ, data = m.fetch(nums[0], "(RFC822)")
            self.assertIn(("body line %s" % tok).encode(), data[0][1])
        finally:
            m.logout()

        p = poplib.POP3_SSL(LOOPBACK, pop3s, context=self.ctx,
                            timeout=30 * SLOW)
        try:
            self.assertTrue(p.getwelcome().startswith(b"+OK"))
            p.user(user)
            p.pass_(self.rs.users[user])
            count, _ = p.stat()
            found = False
            for i in range(1, count + 1):
                _, lines, _ = p.retr(i)
                if ("body line %s" % tok).encode() in lines:
                    found = True
            self.assertTrue(found, "message not found over POP3")
        finally:
            p.quit()
        self.assert_dovecot_logins_over_tls(user, ("imap-login",
                                                   "pop3-login"))
        self.assertEqual(events(self.f.d, "backend_unavailable"), [])

    def test_starttls_hop_to_postfix_and_dovecot(self):
        self.submit_and_read_back(self.f.smtps_st, self.f.imaps_st,
                                  self.f.pop3s_st, "alice", True)

    def test_implicit_hop_to_postfix_wrappermode_and_dovecot_imaps(self):
        self.submit_and_read_back(self.f.smtps_im, self.f.imaps_im,
                                  self.f.pop3s_im, "bob", False)

    def test_swaks_plaintext_in_tls_out(self):
        swaks = mtd.need_tool("swaks")
        for name, port in (("starttls", self.f.legacy_st),
                           ("implicit", self.f.legacy_im)):
            with self.subTest(backend_tls=name):
                tok = token()
                p = mtd.run([swaks, "--server", LOOPBACK, "--port", str(port),
                             "--helo", "legacy.example.org",
                             "--from", "legacy@example.org",
                             "--to", self.rs.address("carol"),
                             "--header", "Subject: %s" % tok,
                             "--body", "swaks body %s" % tok,
                             "--timeout", str(int(30 * SLOW))],
                            timeout=60 * SLOW)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                # the client's side stayed plaintext
                self.assertNotIn("STARTTLS", p.stdout)
                delivered = self.rs.wait_delivered("carol", tok)
                self.assert_postfix_got_it_over_tls(delivered)

    def test_curl_plaintext_in_tls_out(self):
        for name, port in (("starttls", self.f.legacy_st),
                           ("implicit", self.f.legacy_im)):
            with self.subTest(backend_tls=name):
                tok = token()
                rcpt = self.rs.address("dave")
                msgfile = os.path.join(mtd.tempdir("mtd-curl-"), "msg.eml")
                with open(msgfile, "w") as f:
                    f.write("From: curl@example.org\r\nTo: %s\r\nSubject: %s"
                            "\r\n\r\ncurl body %s\r\n" % (rcpt, tok, tok))
                rc, out, err = curl(["--mail-from", "curl@example.org",
                                     "--mail-rcpt", rcpt,
                                     "--upload-file", msgfile,
                                     "smtp://%s:%d" % (LOOPBACK, port)])
                self.assertEqual(rc, 0, err)
                delivered = self.rs.wait_delivered("dave", tok)
                self.assert_postfix_got_it_over_tls(delivered)


# --------------------------------------------------------------------------
# Backends that must be refused

class RefusedBackends(BackendTlsCase):
    """A backend whose certificate is for another name, or from an unknown
    CA, or that does not offer (or refuses) STARTTLS: the client gets the
    unavailable reply, the log says why, and no client byte reaches the
    backend in plaintext."""

    CASES = [
        # name, proto, backend_tls, cert, offer, expected log error
        ("smtp-othername", "smtp", "starttls", "other_name", True,
         r"(?i)name in the certificate does not match"),
        ("imap-othername", "imap", "starttls", "other_name", True,
         r"(?i)name in the certificate does not match"),
        ("pop3-othername", "pop3", "starttls", "other_name", True,
         r"(?i)name in the certificate does not match"),
        ("smtp-unknownca", "smtp", "starttls", "unknown_ca", True,
         r"(?i)issuer is unknown"),
        ("imap-unknownca", "imap", "starttls", "unknown_ca", True,
         r"(?i)issuer is unknown"),
        ("pop3-unknownca", "pop3", "starttls", "unknown_ca", True,
         r"(?i)issuer is unknown"),
        ("smtp-implicit-othername", "smtp", "implicit", "other_name", True,
         r"(?i)name in the certificate does not match"),
        ("imap-implicit-unknownca", "imap", "implicit", "unknown_ca", True,
         r"(?i)issuer is unknown"),
        ("smtp-nostarttls", "smtp", "starttls", "server_ecdsa", False,
         r"(?i)does not offer STARTTLS"),
        ("imap-nostarttls", "imap", "starttls", "server_ecdsa", False,
         r"(?i)does not offer STARTTLS"),
        ("pop3-nostls", "pop3", "starttls", "server_ecdsa", False,
         r"(?i)does not offer (STARTTLS|STLS)"),
    ]

    @classmethod
    def setUpClass(cls):
        c = mtd.certs()
        cls.backends = {}
        specs = {}      # name -> (proto, backend_tls, extra listener keys)
        for name, proto, btls, cert, offer, _ in cls.CASES:
            ctx = tls_server_context(getattr(c, cert))
            cls.backends[name] = FakeBackend(tls_backend(proto, ctx, btls,
                                                         offer=offer))
            specs[name] = (proto, btls, {})
        # the same behind a plaintext client listener (legacy relay)
        cls.backends["legacy-othername"] = FakeBackend(tls_backend(
            "smtp", tls_server_context(c.other_name), "starttls"))
        specs["legacy-othername"] = ("smtp", "starttls",
                                     {"client_tls": "none"})
        # an IMAP backend whose greeting already lists its capabilities,
        # without STARTTLS (and answers any command with a bare OK)
        cls.backends["imap-greetcaps"] = FakeBackend(FakeBackend.lines(
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] no TLS here\r\n",
            [(b"", lambda l: imap_tag(l) + b" OK done\r\n")]))
        specs["imap-greetcaps"] = ("imap", "starttls", {})
        # an SMTP backend that offers STARTTLS and then refuses it
        cls.backends["smtp-refuses"] = FakeBackend(FakeBackend.lines(
            b"220 fake.example.test ESMTP\r\n",
            [(b"EHLO", b"250-fake.example.test\r\n250 STARTTLS\r\n"),
             (b"STARTTLS", b"454 4.7.0 TLS not available\r\n"),
             (b"", b"250 2.0.0 Ok\r\n")]))
        specs["smtp-refuses"] = ("smtp", "starttls", {})
        # the backends hold their ports: now choose the listeners' at once
        cls.ports = dict(zip(specs, mtd.free_ports(len(specs))))
        listeners = {}
        for name, (proto, btls, kw) in specs.items():
            listeners[name] = listener(proto, cls.backends[name].addr,
                                       cls.ports[name], btls, **kw)
        cls.d = Mailtlsd(config(listeners), name="bt-refused").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        for b in cls.backends.values():
            b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" %
                                 (rc, cls.d.log[-3000:]))

    def check(self, name, proto, log_rx, client_tls="implicit", tls=False):
        b = self.backends[name]
        n = len(b.conns)
        secret = token().encode()
        reply = client_reply(self.ports[name], proto, secret, client_tls)
        self.assert_unavailable(proto, reply)
        rec = wait_event(self.d, "backend_unavailable", name, n + 1)[-1]
        self.assertRegex(rec.get("error", ""), log_rx, rec)
        conn = b.wait_closed(n)
        b.check()
        raw = bytes(conn.received)
        self.assertNotIn(secret, raw)
        if tls:
            # a TLS backend: the proxy's dialogue, then TLS records only
            self.assertIsNotNone(conn.tls_error,
                                 "the backend's TLS handshake succeeded")
            self.assert_only_own_dialogue(proto, raw[:conn.plain_len], secret)
            recs = tls_records(raw[conn.plain_len:])
            self.assertTrue(recs and recs[0][0] == 22, recs)
        else:
            self.assert_only_own_dialogue(proto, raw, secret)
        return conn, reply

    def test_certificate_for_another_name(self):
        for name in ("smtp-othername", "imap-othername", "pop3-othername",
                     "smtp-implicit-othername"):
            case = [c for c in self.CASES if c[0] == name][0]
            with self.subTest(case=name):
                self.check(name, case[1], case[5], tls=True)
        with self.subTest(case="legacy-othername"):
            self.check("legacy-othername", "smtp",
                       r"(?i)name in the certificate does not match",
                       client_tls="none", tls=True)

    def test_certificate_from_unknown_ca(self):
        for name in ("smtp-unknownca", "imap-unknownca", "pop3-unknownca",
                     "imap-implicit-unknownca"):
            case = [c for c in self.CASES if c[0] == name][0]
            with self.subTest(case=name):
                self.check(name, case[1], case[5], tls=True)

    def test_backend_without_starttls(self):
        for name in ("smtp-nostarttls", "imap-nostarttls", "pop3-nostls"):
            case = [c for c in self.CASES if c[0] == name][0]
            with self.subTest(case=name):
                conn, _ = self.check(name, case[1], case[5])
                raw = bytes(conn.received)
                # the proxy asked for the capabilities, never for TLS after
                # they lacked it, and sent nothing of the client's
                self.assertTrue(raw, "mailtlsd sent nothing at all")
                self.assertNotRegex(raw, rb"(?i)(STARTTLS|STLS)\r\n")
        with self.subTest(case="imap-greetcaps"):
            conn, _ = self.check("imap-greetcaps", "imap",
                                 r"(?i)does not offer STARTTLS")
            self.assertNotRegex(bytes(conn.received), rb"(?i)STARTTLS")

    def test_backend_refusing_starttls(self):
        conn, _ = self.check("smtp-refuses", "smtp", r"(?i)STARTTLS refused")
        self.assertEqual(bytes(conn.received), b"EHLO %s\r\nSTARTTLS\r\n" %
                         HOSTNAME.encode())


# --------------------------------------------------------------------------
# Response injection and PREAUTH

class ResponseInjection(BackendTlsCase):
    """Bytes after the backend's go-ahead (in its packet, or in the next one
    before the handshake), and an IMAP PREAUTH greeting, abort the backend
    connection; none of it reaches the client."""

    @classmethod
    def setUpClass(cls):
        ctx = tls_server_context(mtd.certs().server_ecdsa)
        cls.backends = {}
        protos = {}
        for proto in ("smtp", "imap", "pop3"):
            for how in ("same", "next"):
                name = "%s-%s" % (proto, how)
                cls.backends[name] = FakeBackend(tls_backend(proto, ctx,
                                                             inject=how))
                protos[name] = proto
        cls.backends["preauth"] = FakeBackend(FakeBackend.lines(
            b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] logged in as alice"
            b"\r\n", [(b"", lambda l: imap_tag(l) + b" OK done\r\n")]))
        protos["preauth"] = "imap"
        # the backends hold their ports: now choose the listeners' at once
        cls.ports = dict(zip(protos, mtd.free_ports(len(protos))))
        listeners = {name: listener(proto, cls.backends[name].addr,
                                    cls.ports[name], "starttls")
                     for name, proto in protos.items()}
        cls.d = Mailtlsd(config(listeners), name="bt-inject").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        for b in cls.backends.values():
            b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" %
                                 (rc, cls.d.log[-3000:]))

    def injected(self, how):
        for proto in ("smtp", "imap", "pop3"):
            name = "%s-%s" % (proto, how)
            with self.subTest(case=name):
                b = self.backends[name]
                secret = token().encode()
                reply = client_reply(self.ports[name], proto, secret)
                self.assertNotIn(b"injected", reply)
                self.assert_unavailable(proto, reply)
                rec = wait_event(self.d, "backend_unavailable", name)[-1]
                self.assertRegex(rec.get("error", ""),
                                 r"(?i)response injection", rec)
                conn = b.wait_closed(0)
                b.check()
                raw = bytes(conn.received)
                self.assert_only_own_dialogue(proto, raw[:conn.plain_len],
                                              secret)
                # after the go-ahead: TLS records (a ClientHello, an alert)
                # or nothing, never the client's bytes
                tls_records(raw[conn.plain_len:])
                self.assertNotIn(secret, raw)

    def test_bytes_after_go_ahead_in_the_same_packet(self):
        self.injected("same")

    def test_bytes_after_go_ahead_in_the_next_packet(self):
        self.injected("next")

    def test_imap_preauth_greeting_aborts(self):
        b = self.backends["preauth"]
        secret = token().encode()
        reply = client_reply(self.ports["preauth"], "imap", secret)
        self.assertNotIn(b"PREAUTH", reply)
        self.assert_unavailable("imap", reply)
        rec = wait_event(self.d, "backend_unavailable", "preauth")[-1]
        self.assertRegex(rec.get("error", ""), r"PREAUTH", rec)
        conn = b.wait_closed(0)
        # nothing at all: not even a STARTTLS after a PREAUTH
        self.assertEqual(bytes(conn.received), b"")


# --------------------------------------------------------------------------
# backend_verify = no

class VerifyOff(BackendTlsCase):
    """backend_verify = no accepts a certificate for another name; the
    session still runs over TLS, and nothing of the client's reaches the
    backend in plaintext."""

    def test_other_name_accepted_without_verification(self):
        ctx = tls_server_context(mtd.certs().other_name)
        for proto, btls in (("smtp", "starttls"), ("smtp", "implicit"),
                            ("imap", "starttls"), ("pop3", "starttls")):
            with self.subTest(protocol=proto, backend_tls=btls):
                b = FakeBackend(tls_backend(proto, ctx, btls), tc=self)
                port = free_port()
                d = Mailtlsd(config({"noverify": listener(
                    proto, b.addr, port, btls, backend_verify="no")}),
                    tc=self, name="bt-noverify").start()
                secret = token().encode()
                with TlsConn(port) as c:
                    greeting = c.recv_until(b"\r\n")
                    if proto == "smtp":
                        self.assertEqual(greeting, greeting_for("smtp"))
                        c.send(b"EHLO client.example.org\r\n")
                        r = c.recv_until(b"250 PIPELINING\r\n")
                        self.assertIn(b"fake-tls.example.test", r)
                        c.send(b"MAIL FROM:<%s@example.org>\r\n" % secret)
                        self.assertEqual(c.recv_until(b"\r\n"),
                                         b"250 2.0.0 Ok (over TLS)\r\n")
                        c.send(b"QUIT\r\n")
                        self.assertEqual(c.recv_until(b"\r\n"),
                                         b"221 2.0.0 Bye\r\n")
                    elif proto == "imap":
                        self.assertEqual(greeting, greeting_for("imap"))
                        c.send(b"a1 LOGIN alice %s\r\n" % secret)
                        self.assertEqual(c.recv_until(b"\r\n"),
                                         b"a1 OK done (over TLS)\r\n")
                        c.send(b"a2 LOGOUT\r\n")
                        c.recv_until(b"a2 OK done\r\n")
                    else:
                        self.assertEqual(greeting, greeting_for("pop3"))
                        c.send(b"USER alice\r\n")
                        self.assertEqual(c.recv_until(b"\r\n"),
                                         b"+OK (over TLS)\r\n")
                        c.send(b"PASS %s\r\n" % secret)
                        self.assertEqual(c.recv_until(b"\r\n"),
                                         b"+OK (over TLS)\r\n")
                        c.send(b"QUIT\r\n")
                        self.assertEqual(c.recv_until(b"\r\n"),
                                         b"+OK bye\r\n")
                conn = b.wait_closed(0)
                b.check()
                self.assertIsNone(conn.tls_error)
                raw = bytes(conn.received)
                # the client's secret arrived, but only inside TLS
                self.assertIn(secret, bytes(conn.tls_received))
                self.assertNotIn(secret, raw)
                if btls == "starttls":
                    self.assert_only_own_dialogue(proto, raw[:conn.plain_len],
                                                  secret)
                else:
                    self.assertEqual(conn.plain_len, 0)
                recs = tls_records(raw[conn.plain_len:])
                self.assertEqual(recs[0][0], 22)
                self.assertEqual(events(d, "backend_unavailable"), [])
                self.assertEqual(d.stop(), 0, d.log[-3000:])


# --------------------------------------------------------------------------
# Resumption and the opaque relay

class ImplicitTlsRelay(BackendTlsCase):

    def start(self, ctx, proto="none", **kw):
        b = FakeBackend(tls_backend(proto, ctx, "implicit"), tc=self)
        port = free_port()
        d = Mailtlsd(config({"raw": listener(proto, b.addr, port, "implicit",
                                             **kw)}, workers="1"),
                     tc=self, name="bt-relay").start()
        return b, d, port

    def test_backend_sessions_are_resumed(self):
        """Successive client connections: the backend sees the first TLS
        session resumed by the others (TLS 1.3 tickets and TLS 1.2), whether
        the client or the backend ends each session."""
        cases = [("none", "client", ssl.TLSVersion.TLSv1_3),
                 ("none", "client", ssl.TLSVersion.TLSv1_2),
                 # SMTP: the backend closes after its reply to QUIT, with
                 # no close_notify (as many servers do)
                 ("smtp", "backend", ssl.TLSVersion.TLSv1_3),
                 ("smtp", "backend", ssl.TLSVersion.TLSv1_2)]
        for proto, closer, version in cases:
            with self.subTest(protocol=proto, closes_first=closer,
                              tls=version.name):
                ctx = tls_server_context(mtd.certs().server_ecdsa,
                                         maximum=version)
                b, d, port = self.start(ctx, proto)
                rounds = 4
                for i in range(rounds):
                    with TlsConn(port) as c:
                        if proto == "none":
                            msg = b"round %d\n" % i
                            c.send(msg)
                            self.assertEqual(c.recv_until(b"\n"), msg)
                            c.close_notify()
                        else:
                            self.assertEqual(c.recv_until(b"\r\n"),
                                             greeting_for("smtp"))
                            c.send(b"QUIT\r\n")
                            self.assertEqual(c.recv_until(b"\r\n"),
                                             b"221 2.0.0 Bye\r\n")
                        c.recv_to_eof(timeout=10)
                    b.wait_closed(i)
                    # mailtlsd keeps the session once its backend side is
                    # gone: wait for the connection's close record
                    wait_event(d, "close", "raw", i + 1)
                b.check()
                want = "TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 \
                    else "TLSv1.2"
                self.assertEqual([cn.tls_version for cn in b.conns],
                                 [want] * rounds)
                self.assertEqual([cn.session_reused for cn in b.conns],
                                 [False] + [True] * (rounds - 1))
                self.assertEqual(d.stop(), 0, d.log[-3000:])

    def test_protocol_none_byte_exact_echo(self):
        ctx = tls_server_context(mtd.certs().server_ecdsa)
        b, d, port = self.start(ctx)
        data = os.urandom(2 * 1024 * 1024)
        c = TlsConn(port, timeout=60)
        c.pump(data, want=len(data), timeout=60)
        got = c.recv_exact(len(data))
        c.close_notify()
        c.recv_to_eof(timeout=20)
        c.close()
        conn = b.wait_closed(0, timeout=20)
        b.check()
        self.assertEqual(sha256(got), sha256(data))
        self.assertEqual(sha256(bytes(conn.tls_received)), sha256(data))
        # everything on the backend's wire was TLS, from the first byte
        self.assertEqual(conn.plain_len, 0)
        recs = tls_records(bytes(conn.received))
        self.assertEqual(recs[0][0], 22)
        self.assertNotIn(data[:64], bytes(conn.received))


if __name__ == "__main__":
    unittest.main()
