"""
STARTTLS injection toward clients (client_tls = starttls) for SMTP, IMAP and
POP3, against scripted fake backends that record every byte they receive
(SPEC: "STARTTLS injection" and its table, "Fresh start after TLS",
"Injection", "When things fail"; SECURITY-NOTES points 1-6 and 11).

Real clients against a real Postfix and Dovecot are in
test_starttls_clients.py, which imports the helpers of this module.

Choices of the implementation that these tests pin down (see the header
comments of proxy/proto_smtp.c, proto_imap.c, proto_pop3.c):
  * refusal and STARTTLS texts (R_* below);
  * pre-TLS line limits, CRLF included: SMTP 512 (require_tls = yes),
    IMAP 8192, POP3 512; longer lines get a last reply and a close;
  * before TLS with require_tls, CHUNKING is removed from EHLO replies along
    with AUTH (a refused BDAT chunk could not be skipped);
  * a literal in an allowed IMAP command before TLS is refused with BAD.
gnutls-cli 3.7.9 in STARTTLS mode writes its own EHLO / CAPABILITY / STLS
lines with CRLF (checked in test_starttls_clients.py); the proxy also takes a
bare LF as a line end, as the handlers document.
"""

import re
import select
import socket
import threading
import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK

HOSTNAME = mtd.FRONT_HOSTNAME

# The replies the proxy writes itself (SPEC table; the free text after the
# fixed part is each handler's, from proxy/proto_*.c).
SMTP_READY = b"220 2.0.0 Ready to start TLS\r\n"
SMTP_MUSTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
SMTP_TLSACTIVE = b"503 5.5.1 Error: TLS already active\r\n"
SMTP_INMAIL = b"503 5.5.1 Error: MAIL transaction in progress\r\n"
SMTP_AUTHED = b"503 5.5.1 Error: already authenticated\r\n"
SMTP_LONG = b"500 5.5.2 Error: line too long\r\n"
IMAP_READY = b" OK Begin TLS negotiation now\r\n"
IMAP_PRIVACY = b" NO [PRIVACYREQUIRED] Must issue STARTTLS first\r\n"
IMAP_MUSTTLS = b" BAD Must issue STARTTLS first\r\n"
IMAP_NOLITERAL = b" BAD Literals not allowed before STARTTLS\r\n"
IMAP_TLSACTIVE = b" BAD TLS already active\r\n"
IMAP_AUTHED = b" BAD STARTTLS not allowed after login\r\n"
IMAP_LONG = b"* BYE Line too long\r\n"
POP3_READY = b"+OK Begin TLS negotiation\r\n"
POP3_MUSTTLS = b"-ERR Must issue STLS first\r\n"
POP3_TLSACTIVE = b"-ERR TLS already active\r\n"
POP3_AUTHED = b"-ERR STLS not allowed after login\r\n"
POP3_LONG = b"-ERR Line too long\r\n"


# --------------------------------------------------------------------------
# Configuration

def st_listener(protocol, backend, port, require=True, **kw):
    d = {
        "listen": "%s:%d" % (LOOPBACK, port),
        "protocol": protocol,
        "client_tls": "starttls",
        "require_tls": "yes" if require else "no",
        "backend": backend,
        "certs": [mtd.certs().server_ecdsa],
        "hostname": HOSTNAME,
        "connect_timeout": "5s",
        "handshake_timeout": "10s",
    }
    d.update(kw)
    return d


config = mtd.daemon_conf


# --------------------------------------------------------------------------
# A plaintext client that can be upgraded to TLS in place

class Plain:
    """A plaintext client.  Everything received is kept in self.buf until
    consumed, so that tls() can check that not a single byte came between
    the STARTTLS reply and the handshake."""

    def __init__(self, port, host=LOOPBACK, timeout=10.0):
        self.timeout = timeout * SLOW
        self.sock = socket.create_connection((host, port),
                                             timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("nothing within the deadline; got %r" %
                                 bytes(self.buf[:400]))
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
        self.buf += d

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_until(self, marker=b"\r\n", timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout * SLOW)
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                return self._take(i + len(marker))
            if self.eof:
                raise Closed("closed before %r; got %r" %
                             (marker, bytes(self.buf)))
            self._fill(deadline)

    def recv_exact(self, n, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout * SLOW)
        while len(self.buf) < n:
            if self.eof:
                raise Closed("closed after %d of %d bytes: %r" %
                             (len(self.buf), n, bytes(self.buf)))
            self._fill(deadline)
        return self._take(n)

    def quiet(self, window=0.3):
        """What arrives within window seconds (a bounded check that
        nothing comes); the bytes stay in the buffer."""
        deadline = time.monotonic() + window * SLOW
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline)
        return bytes(self.buf)

    def recv_to_eof(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout * SLOW)
        while not self.eof:
            self._fill(deadline)
        return self._take(len(self.buf))

    def send(self, data):
        self.sock.sendall(data)

    def tls(self):
        """Upgrade in place: the TLS handshake over this socket."""
        assert not self.buf, "bytes after the STARTTLS reply: %r" % \
            bytes(self.buf)
        return TlsConn(0, sock=self.sock)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def smtp_reply(c):
    """One complete SMTP reply (all its lines) from a Plain or TlsConn."""
    out = b""
    while True:
        line = c.recv_until(b"\r\n")
        out += line
        if line[3:4] != b"-":
            return out


def ehlo_keywords(reply, tc=None):
    """Check that reply is a well-formed 250 EHLO reply and return
    (domain line, [keyword lines])."""
    lines = reply.split(b"\r\n")
    if lines[-1] != b"" or len(lines) < 2:
        raise AssertionError("not CRLF-terminated: %r" % reply)
    lines = lines[:-1]
    for i, l in enumerate(lines):
        sep = b" " if i == len(lines) - 1 else b"-"
        if not (l.startswith(b"250") and l[3:4] == sep):
            raise AssertionError("malformed EHLO reply line %d %r in %r" %
                                 (i, l, reply))
    return lines[0][4:], [l[4:] for l in lines[1:]]


def imap_caps(line, code=True):
    """The capability words of a "* OK [CAPABILITY ...]" greeting or tagged
    OK (code=True), or of a "* CAPABILITY ..." line (code=False)."""
    if code:
        m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line)
        if not m:
            raise AssertionError("no CAPABILITY code in %r" % line)
        return m.group(1).split()
    m = re.match(rb"^\* CAPABILITY ([^\r\n]*)\r\n$", line)
    if not m:
        raise AssertionError("not a CAPABILITY response: %r" % line)
    return m.group(1).split()


def pop3_capa(reply):
    """The capability lines of a CAPA response (well-formed, dot-ended)."""
    if not reply.startswith(b"+OK") or not reply.endswith(b"\r\n.\r\n"):
        raise AssertionError("malformed CAPA response: %r" % reply)
    return reply.split(b"\r\n")[1:-2]


def count_word(words, w):
    return sum(1 for x in words if x.upper() == w.upper())


# --------------------------------------------------------------------------
# Scripted backends (each speaks enough of its protocol, literals, DATA and
# BDAT included, to tell what reached it)

class Reader:
    """Exact reads over a BackendConn (its public recv only)."""

    def __init__(self, c):
        self.c = c
        self.buf = bytearray()

    def _more(self, timeout):
        d = self.c.recv(timeout=timeout)
        if not d:
            raise Closed("EOF")
        self.buf += d

    def line(self, timeout=120):
        while b"\n" not in self.buf:
            self._more(timeout)
        i = self.buf.index(b"\n") + 1
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def exact(self, n, timeout=120):
        while len(self.buf) < n:
            self._more(timeout)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


SMTP_GREETING = b"220 fake.example.test ESMTP fake\r\n"
SMTP_EHLO_FULL = (b"250-fake.example.test\r\n250-PIPELINING\r\n"
                  b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n"
                  b"250-AUTH=PLAIN LOGIN\r\n250-SIZE 10240000\r\n"
                  b"250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
                  b"250 8BITMIME\r\n")
SMTP_FULL_KEYWORDS = [b"PIPELINING", b"STARTTLS", b"AUTH PLAIN LOGIN",
                      b"AUTH=PLAIN LOGIN", b"SIZE 10240000", b"CHUNKING",
                      b"ENHANCEDSTATUSCODES", b"8BITMIME"]
# "EHLO lastauth...": AUTH is the last line; "EHLO one...": one line only
SMTP_EHLO_LASTAUTH = (b"250-fake.example.test\r\n250-PIPELINING\r\n"
                      b"250 AUTH PLAIN LOGIN\r\n")
SMTP_EHLO_ONE = b"250 fake.example.test\r\n"


def smtp_backend(gate=None, noop_extra=b"", ehlo=SMTP_EHLO_FULL):
    """A fake SMTP server.  NOOP waits for gate (a threading.Event) when
    given; the first NOOP reply (of the whole backend) is followed by
    noop_extra in the same write.  ehlo: its usual EHLO reply."""
    extra = [noop_extra]

    def h(c):
        r = Reader(c)
        c.send(SMTP_GREETING)
        while True:
            try:
                line = r.line()
            except Closed:
                return
            words = line.split()
            verb = words[0].upper() if words else b""
            if verb == b"EHLO":
                arg = words[1].lower() if len(words) > 1 else b""
                if arg.startswith(b"lastauth"):
                    c.send(SMTP_EHLO_LASTAUTH)
                elif arg.startswith(b"one"):
                    c.send(SMTP_EHLO_ONE)
                else:
                    c.send(ehlo)
            elif verb == b"HELO":
                c.send(b"250 fake.example.test\r\n")
            elif verb == b"NOOP":
                if gate is not None:
                    gate.wait(60)
                c.send(b"250 2.0.0 Ok\r\n" +
                       (extra.pop() if extra else b""))
            elif verb == b"RSET":
                c.send(b"250 2.0.0 Ok\r\n")
            elif verb == b"MAIL":
                c.send(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                c.send(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                while r.line() != b".\r\n":
                    pass
                c.send(b"250 2.0.0 Ok: queued as FAKE\r\n")
            elif verb == b"BDAT":
                r.exact(int(words[1]))
                c.send(b"250 2.0.0 Ok: %d octets\r\n" % int(words[1]))
            elif verb == b"AUTH":
                if len(words) >= 3:
                    c.send(b"235 2.7.0 Authentication successful\r\n")
                else:
                    c.send(b"334 VXNlcm5hbWU6\r\n")
                    r.line()
                    c.send(b"334 UGFzc3dvcmQ6\r\n")
                    r.line()
                    c.send(b"535 5.7.8 Error: authentication failed\r\n")
            elif verb == b"QUIT":
                c.send(b"221 2.0.0 Bye\r\n")
                return
            elif verb == b"STARTTLS":
                c.send(b"454 4.7.0 the backend must never see STARTTLS\r\n")
            else:
                c.send(b"502 5.5.2 Error: command not recognized\r\n")
    return h


IMAP_CAPS = (b"IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS AUTH=PLAIN "
             b"AUTH=LOGIN ENABLE")
IMAP_CAPS_WORDS = IMAP_CAPS.split()
IMAP_GREETING = b"* OK [CAPABILITY " + IMAP_CAPS + b"] fake ready\r\n"
_LIT = re.compile(rb"\{(\d+)(\+?)\}\r?\n$")


def imap_backend(gate=None, noop_extra=b"", noop_code=b""):
    """A fake IMAP server that reads literals ({n} after "+ ", {n+} at
    once).  NOOP waits for gate when given; its tagged OK carries
    noop_code (e.g. b"[CAPABILITY ...] "); the first one (of the whole
    backend) is followed by noop_extra."""
    extra = [noop_extra]

    def h(c):
        r = Reader(c)
        c.send(IMAP_GREETING)
        while True:
            try:
                line = r.line()
                cmd = line
                m = _LIT.search(line)
                while m:
                    if not m.group(2):
                        c.send(b"+ Ready for literal data\r\n")
                    cmd += r.exact(int(m.group(1)))
                    line = r.line()
                    cmd += line
                    m = _LIT.search(line)
            except Closed:
                return
            words = cmd.split(None, 2)
            if len(words) < 2:
                c.send(b"* BAD Error in IMAP command\r\n")
                continue
            tag, verb = words[0], words[1].upper()
            if verb == b"CAPABILITY":
                c.send(b"* CAPABILITY " + IMAP_CAPS + b"\r\n" + tag +
                       b" OK Capability completed.\r\n")
            elif verb == b"NOOP":
                if gate is not None:
                    gate.wait(60)
                c.send(tag + b" OK " + noop_code + b"NOOP completed.\r\n" +
                       (extra.pop() if extra else b""))
            elif verb == b"LOGIN" and b" bad " in cmd:
                c.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication "
                       b"failed.\r\n")
            elif verb == b"LOGIN":
                c.send(tag + b" OK [CAPABILITY IMAP4rev1 IDLE STARTTLS "
                       b"AUTH=PLAIN] Logged in\r\n")
            elif verb == b"AUTHENTICATE":
                if len(words) < 3 or len(words[2].split()) < 2:
                    c.send(b"+ \r\n")
                    r.line()
                c.send(tag + b" OK Logged in\r\n")
            elif verb == b"LOGOUT":
                c.send(b"* BYE Logging out\r\n" + tag +
                       b" OK Logout completed.\r\n")
                return
            elif verb == b"ID":
                c.send(b"* ID NIL\r\n" + tag + b" OK ID completed.\r\n")
            elif verb == b"STARTTLS":
                c.send(tag + b" BAD the backend must never see STARTTLS\r\n")
            else:
                c.send(tag + b" OK " + verb + b" completed.\r\n")
    return h


POP3_GREETING = b"+OK fake ready.\r\n"
POP3_CAPA_LINES = [b"TOP", b"USER", b"SASL PLAIN LOGIN", b"STLS",
                   b"PIPELINING", b"UIDL", b"RESP-CODES"]
POP3_CAPA = (b"+OK Capability list follows\r\n" +
             b"".join(l + b"\r\n" for l in POP3_CAPA_LINES) + b".\r\n")
POP3_MESSAGE = (b"Subject: stls\r\n\r\nSTLS\r\n..dot-stuffed\r\nUSER x\r\n"
                b"+OK not a reply\r\n")


def pop3_backend(gate=None, noop_extra=b""):
    """A fake POP3 server; PASS succeeds only after USER on the same
    connection (what a real server does), which shows session state.
    The first NOOP reply is followed by noop_extra, as for SMTP."""
    extra = [noop_extra]

    def h(c):
        r = Reader(c)
        c.send(POP3_GREETING)
        user = None
        while True:
            try:
                line = r.line()
            except Closed:
                return
            words = line.split()
            verb = words[0].upper() if words else b""
            if verb == b"CAPA":
                c.send(POP3_CAPA)
            elif verb == b"USER":
                user = words[1] if len(words) > 1 else b""
                c.send(b"+OK\r\n")
            elif verb == b"PASS":
                if user is None:
                    c.send(b"-ERR No username given.\r\n")
                else:
                    c.send(b"+OK Logged in.\r\n")
            elif verb == b"AUTH" and len(words) >= 3:
                c.send(b"+OK Logged in.\r\n")
            elif verb == b"NOOP":
                if gate is not None:
                    gate.wait(60)
                c.send(b"+OK\r\n" + (extra.pop() if extra else b""))
            elif verb == b"STAT":
                c.send(b"+OK 1 %d\r\n" % len(POP3_MESSAGE))
            elif verb == b"RETR":
                c.send(b"+OK %d octets\r\n" % len(POP3_MESSAGE) +
                       POP3_MESSAGE + b".\r\n")
            elif verb == b"QUIT":
                c.send(b"+OK Logging out.\r\n")
                return
            elif verb == b"STLS":
                c.send(b"-ERR the backend must never see STLS\r\n")
            else:
                c.send(b"-ERR Unknown command.\r\n")
    return h


BACKENDS = {"smtp": smtp_backend, "imap": imap_backend, "pop3": pop3_backend}
GREETINGS = {"smtp": SMTP_GREETING, "pop3": POP3_GREETING}


class StarttlsCase(unittest.TestCase):
    """Per test: a fake backend and a mailtlsd with one STARTTLS listener."""

    def start(self, protocol, require=True, handler=None, **kw):
        self.protocol = protocol
        self.b = FakeBackend(handler or BACKENDS[protocol](), tc=self)
        self.port = mtd.free_port()
        self.d = Mailtlsd(config({"st": st_listener(
            protocol, self.b.addr, self.port, require, **kw)}),
            tc=self).start()
        # Mailtlsd.start() probes the port, and the proxy connects to the
        # backend for every accepted connection: let that one come and go,
        # so that a test's own backend connections are numbered from here.
        self.b.wait_closed(0)
        return self.b

    def tearDown(self):
        b = getattr(self, "b", None)
        if b is not None:
            b.check()

    def connect(self):
        """A client whose greeting was read (and checked); returns it and
        the index of its backend connection."""
        n = len(self.b.conns)
        c = Plain(self.port)
        self.addCleanup(c.close)
        g = c.recv_until(b"\r\n")
        if self.protocol == "imap":
            self.assertTrue(g.startswith(b"* OK [CAPABILITY "), g)
            self.assertTrue(g.endswith(b"] fake ready\r\n"), g)
        else:
            self.assertEqual(g, GREETINGS[self.protocol],
                             "the greeting must reach the client unchanged")
        self.b.wait_conns(n + 1)
        return c, n

    def received(self, i):
        return bytes(self.b.conns[i].received)

    def starttls(self, c, cmd=None, ready=None):
        """Send the STARTTLS command, check the exact reply, and upgrade."""
        p = self.protocol
        cmd = cmd or {"smtp": b"STARTTLS\r\n", "imap": b"s1 STARTTLS\r\n",
                      "pop3": b"STLS\r\n"}[p]
        ready = ready or {"smtp": SMTP_READY, "imap": b"s1" + IMAP_READY,
                          "pop3": POP3_READY}[p]
        c.send(cmd)
        self.assertEqual(c.recv_until(b"\r\n"), ready)
        return c.tls()

    def assert_backend_closed(self, i):
        """The proxy closed backend connection i (it was dropped)."""
        self.b.wait_closed(i)


# --------------------------------------------------------------------------
# Capabilities before and after TLS (SPEC table rows 1, 2 and 5)

class SmtpCapabilities(StarttlsCase):

    def check_ehlo(self, reply, expected_keywords, starttls):
        domain, kws = ehlo_keywords(reply)
        self.assertEqual(domain, b"fake.example.test")
        n = sum(1 for k in kws if k.upper() == b"STARTTLS")
        self.assertEqual(n, 1 if starttls else 0,
                         "STARTTLS %s in %r" % (
                             "must be shown exactly once" if starttls
                             else "must never be shown", reply))
        rest = sorted(k for k in kws if k.upper() != b"STARTTLS")
        self.assertEqual(rest, sorted(expected_keywords), reply)

    def test_require_tls_yes(self):
        self.start("smtp", require=True)
        c, i = self.connect()
        c.send(b"EHLO client.example.org\r\n")
        r = smtp_reply(c)
        # no AUTH (nor AUTH=) before TLS; CHUNKING goes too (a refused
        # BDAT chunk cannot be skipped); the backend's STARTTLS is not ours
        self.check_ehlo(r, [b"PIPELINING", b"SIZE 10240000",
                            b"ENHANCEDSTATUSCODES", b"8BITMIME"], True)
        self.assertIn(b"250-STARTTLS\r\n", r)
        self.assertNotRegex(r, rb"(?i)AUTH")
        # every EHLO reply: AUTH as the last line, and a one-line reply
        c.send(b"EHLO lastauth.example.org\r\n")
        self.assertEqual(smtp_reply(c), b"250-fake.example.test\r\n"
                         b"250-PIPELINING\r\n250 STARTTLS\r\n")
        c.send(b"EHLO one.example.org\r\n")
        self.assertEqual(smtp_reply(c), b"250-fake.example.test\r\n"
                         b"250 STARTTLS\r\n")
        # HELO has no keywords: relayed unchanged
        c.send(b"HELO client.example.org\r\n")
        self.assertEqual(smtp_reply(c), b"250 fake.example.test\r\n")

        t = self.starttls(c)
        t.send(b"EHLO client.example.org\r\n")
        r = smtp_reply(t)
        self.check_ehlo(r, [k for k in SMTP_FULL_KEYWORDS
                            if k != b"STARTTLS"], False)
        t.send(b"EHLO lastauth.example.org\r\n")
        self.assertEqual(smtp_reply(t), SMTP_EHLO_LASTAUTH)
        t.send(b"EHLO one.example.org\r\n")
        self.assertEqual(smtp_reply(t), SMTP_EHLO_ONE)
        t.send(b"QUIT\r\n")
        self.assertEqual(t.recv_until(b"\r\n"), b"221 2.0.0 Bye\r\n")
        t.close()

    def test_require_tls_no(self):
        self.start("smtp", require=False)
        c, i = self.connect()
        c.send(b"EHLO client.example.org\r\n")
        r = smtp_reply(c)
        # AUTH is shown before TLS when the backend offers it
        self.check_ehlo(r, [k for k in SMTP_FULL_KEYWORDS
                            if k != b"STARTTLS"], True)
        self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", r)
        c.send(b"EHLO lastauth.example.org\r\n")
        self.assertEqual(smtp_reply(c), b"250-fake.example.test\r\n"
                         b"250-PIPELINING\r\n250-STARTTLS\r\n"
                         b"250 AUTH PLAIN LOGIN\r\n")
        c.send(b"EHLO one.example.org\r\n")
        self.assertEqual(smtp_reply(c), b"250-fake.example.test\r\n"
                         b"250 STARTTLS\r\n")
        t = self.starttls(c)
        t.send(b"EHLO client.example.org\r\n")
        self.check_ehlo(smtp_reply(t), [k for k in SMTP_FULL_KEYWORDS
                                        if k != b"STARTTLS"], False)
        t.send(b"EHLO one.example.org\r\n")
        self.assertEqual(smtp_reply(t), SMTP_EHLO_ONE)
        t.close()


class ImapCapabilities(StarttlsCase):
    CODE = b"[CAPABILITY " + IMAP_CAPS + b"] "

    def expect(self, words, starttls, logindisabled, auth):
        want = [w for w in IMAP_CAPS_WORDS if w.upper() != b"STARTTLS"]
        if not auth:
            # no capability that invites credentials in clear
            want = [w for w in want if not w.upper().startswith(b"AUTH=")
                    and w.upper() != b"SASL-IR"]
        self.assertEqual(count_word(words, b"STARTTLS"), 1 if starttls
                         else 0, words)
        self.assertEqual(count_word(words, b"LOGINDISABLED"),
                         1 if logindisabled else 0, words)
        rest = [w for w in words if w.upper() not in (b"STARTTLS",
                                                      b"LOGINDISABLED")]
        self.assertEqual(sorted(rest), sorted(want), words)
        if not auth:
            self.assertFalse([w for w in words
                              if w.upper().startswith(b"AUTH=")], words)

    def run_case(self, require):
        self.start("imap", require=require,
                   handler=imap_backend(noop_code=self.CODE))
        n = len(self.b.conns)
        c = Plain(self.port)
        self.addCleanup(c.close)
        g = c.recv_until(b"\r\n")
        self.assertTrue(g.startswith(b"* OK [CAPABILITY ") and
                        g.endswith(b"] fake ready\r\n"), g)
        # greeting code, * CAPABILITY and a tagged [CAPABILITY] code
        self.expect(imap_caps(g), True, require, not require)
        c.send(b"a1 CAPABILITY\r\n")
        self.expect(imap_caps(c.recv_until(b"\r\n"), code=False), True,
                    require, not require)
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"a1 OK Capability completed.\r\n")
        c.send(b"a2 NOOP\r\n")
        r = c.recv_until(b"\r\n")
        self.assertTrue(r.startswith(b"a2 OK [CAPABILITY ") and
                        r.endswith(b"] NOOP completed.\r\n"), r)
        self.expect(imap_caps(r), True, require, not require)

        t = self.starttls(c)
        t.send(b"b1 CAPABILITY\r\n")
        self.expect(imap_caps(t.recv_until(b"\r\n"), code=False), False,
                    False, True)
        self.assertEqual(t.recv_until(b"\r\n"),
                         b"b1 OK Capability completed.\r\n")
        t.send(b"b2 NOOP\r\n")
        r = t.recv_until(b"\r\n")
        self.expect(imap_caps(r), False, False, True)
        t.send(b"b3 LOGOUT\r\n")
        self.assertEqual(t.recv_to_eof(),
                         b"* BYE Logging out\r\nb3 OK Logout completed.\r\n")
        # the greeting of the fresh backend session was swallowed
        self.b.wait_closed(n + 1)
        self.assertEqual(self.received(n + 1),
                         b"b1 CAPABILITY\r\nb2 NOOP\r\nb3 LOGOUT\r\n")

    def test_require_tls_yes(self):
        self.run_case(True)

    def test_require_tls_no(self):
        self.run_case(False)

    def test_pre_tls_unsolicited_data_and_alert_dropped(self):
        """SPEC: before TLS only greeting, capabilities and tagged replies
        are relayed; untagged data and [ALERT] codes are dropped."""
        self.start("imap", handler=imap_backend(
            noop_code=b"[ALERT] ",
            noop_extra=b"* 3 EXISTS\r\n* OK [ALERT] evil\r\n"))
        c, i = self.connect()
        c.send(b"a1 NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a1 OK NOOP completed.\r\n")
        c.send(b"a2 CAPABILITY\r\n")
        self.assertTrue(c.recv_until(b"\r\n").startswith(b"* CAPABILITY "))
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"a2 OK Capability completed.\r\n")


class Pop3Capabilities(StarttlsCase):

    def run_case(self, require):
        self.start("pop3", require=require)
        c, i = self.connect()
        c.send(b"CAPA\r\n")
        lines = pop3_capa(c.recv_until(b"\r\n.\r\n"))
        self.assertEqual(count_word(lines, b"STLS"), 1, lines)
        want = [l for l in POP3_CAPA_LINES if l != b"STLS"]
        if require:
            want = [l for l in want if l.split()[0] not in (b"USER",
                                                            b"SASL")]
        self.assertEqual(sorted(l for l in lines if l != b"STLS"),
                         sorted(want))
        t = self.starttls(c)
        t.send(b"CAPA\r\n")
        lines = pop3_capa(t.recv_until(b"\r\n.\r\n"))
        self.assertEqual(sorted(lines), sorted(l for l in POP3_CAPA_LINES
                                               if l != b"STLS"))
        t.close()

    def test_require_tls_yes(self):
        self.run_case(True)

    def test_require_tls_no(self):
        self.run_case(False)


# --------------------------------------------------------------------------
# Injection (CVE-2011-0411 class) and the fresh backend session

INJECT = {
    "smtp": (b"MAIL FROM:<injected@evil.example>\r\n"
             b"RCPT TO:<injected@evil.example>\r\n"),
    "imap": b"i1 LOGIN injected pw\r\ni2 SELECT injected\r\n",
    "pop3": b"USER injected\r\nPASS injected\r\n",
}
PRE = {"smtp": (b"EHLO pre.example.org\r\n", smtp_reply),
       "imap": (b"a1 NOOP\r\n", lambda c: c.recv_until(b"\r\n")),
       "pop3": (b"NOOP\r\n", lambda c: c.recv_until(b"\r\n"))}
STLS = {"smtp": (b"STARTTLS\r\n", SMTP_READY),
        "imap": (b"s1 STARTTLS\r\n", b"s1" + IMAP_READY),
        "pop3": (b"STLS\r\n", POP3_READY)}


def post_tls_session(protocol, t):
    """After TLS: one command and the closing one; return (what the client
    sent, what it received up to EOF)."""
    if protocol == "smtp":
        sent = b"EHLO post.example.org\r\nQUIT\r\n"
        t.send(b"EHLO post.example.org\r\n")
        first = smtp_reply(t)
        t.send(b"QUIT\r\n")
    elif protocol == "imap":
        sent = b"b1 NOOP\r\nb2 LOGOUT\r\n"
        t.send(b"b1 NOOP\r\n")
        first = t.recv_until(b"\r\n")
        t.send(b"b2 LOGOUT\r\n")
    else:
        sent = b"STAT\r\nQUIT\r\n"
        t.send(b"STAT\r\n")
        first = t.recv_until(b"\r\n")
        t.send(b"QUIT\r\n")
    return sent, first + t.recv_to_eof()


POST_REPLIES = {
    "smtp": (b"250-fake.example.test\r\n250-PIPELINING\r\n"
             b"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n"
             b"250-SIZE 10240000\r\n250-CHUNKING\r\n"
             b"250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"
             b"221 2.0.0 Bye\r\n"),
    "imap": (b"b1 OK NOOP completed.\r\n* BYE Logging out\r\n"
             b"b2 OK Logout completed.\r\n"),
    "pop3": b"+OK 1 %d\r\n+OK Logging out.\r\n" % len(POP3_MESSAGE),
}


class Injection(StarttlsCase):
    """Bytes after the STARTTLS line and before the handshake are never
    relayed, answered or fed to TLS; after TLS the proxy opens a new
    backend connection, and the first saw only what came before."""

    VARIANTS = ("same_packet", "next_packet", "after_reply",
                "held_behind_pipelined_command")

    def one(self, protocol, variant, gate):
        pre_cmd, pre_read = PRE[protocol]
        stls, ready = STLS[protocol]
        inj = INJECT[protocol]
        c, i = self.connect()
        c.send(pre_cmd)
        pre_read(c)
        if variant == "same_packet":
            c.send(stls + inj)
        elif variant == "next_packet":
            c.send(stls)
            c.send(inj)
        elif variant == "after_reply":
            c.send(stls)
        else:
            # a NOOP whose reply the backend delays: STARTTLS and the
            # injection wait in the proxy's buffer meanwhile
            noop = {"smtp": b"NOOP\r\n", "imap": b"a9 NOOP\r\n",
                    "pop3": b"NOOP\r\n"}[protocol]
            gate.clear()
            c.send(noop + stls + inj)
            mtd.wait_for(lambda: noop in self.received(i), 10 * SLOW,
                         what="the pipelined NOOP at the backend")
            gate.set()
            c.recv_until(b"\r\n")       # the NOOP reply
        self.assertEqual(c.recv_until(b"\r\n"), ready)
        if variant == "after_reply":
            c.send(inj)
        t = c.tls()
        self.b.wait_conns(i + 2)
        sent, got = post_tls_session(protocol, t)
        t.close()
        self.assertEqual(got, POST_REPLIES[protocol],
                         "the injected commands were answered (or the "
                         "session is not fresh)")
        self.assert_backend_closed(i)
        self.b.wait_closed(i + 1)
        before = pre_cmd + (b"" if variant != "held_behind_pipelined_command"
                            else {"smtp": b"NOOP\r\n", "imap": b"a9 NOOP\r\n",
                                  "pop3": b"NOOP\r\n"}[protocol])
        self.assertEqual(self.received(i), before,
                         "the pre-TLS backend session got more than what "
                         "came before STARTTLS")
        self.assertEqual(self.received(i + 1), sent,
                         "the post-TLS backend session is not fresh")
        self.assertEqual(len(self.b.conns), i + 2)
        for conn in self.b.conns:
            self.assertNotIn(b"injected", bytes(conn.received))
            self.assertNotIn(b"STARTTLS", bytes(conn.received).upper())
            self.assertNotIn(b"STLS", bytes(conn.received).upper())

    def run_protocol(self, protocol):
        gate = threading.Event()
        gate.set()
        self.start(protocol, handler=BACKENDS[protocol](gate=gate))
        for v in self.VARIANTS:
            with self.subTest(variant=v):
                self.one(protocol, v, gate)

    def test_smtp(self):
        self.run_protocol("smtp")

    def test_imap(self):
        self.run_protocol("imap")

    def test_pop3(self):
        self.run_protocol("pop3")

    def test_injection_with_require_tls_no(self):
        for p in ("smtp", "imap", "pop3"):
            with self.subTest(protocol=p):
                gate = threading.Event()
                gate.set()
                self.start(p, require=False,
                           handler=BACKENDS[p](gate=gate))
                self.one(p, "same_packet", gate)


# --------------------------------------------------------------------------
# Reply ordering and the boundary (SPEC: "answered only after the replies to
# every command pipelined before it ... no backend byte relayed between that
# answer and the end of the handshake")

class Ordering(StarttlsCase):

    def run_protocol(self, protocol, noop, noop_reply):
        gate = threading.Event()
        # the NOOP reply comes with unsolicited bytes right after it: they
        # must never reach the client (before the handshake or after it)
        extra = {"smtp": b"250 2.0.0 LEAKED\r\n",
                 "imap": b"a1 OK LEAKED\r\n",
                 "pop3": b"+OK LEAKED\r\n"}[protocol]
        self.start(protocol, handler=BACKENDS[protocol](
            gate=gate, noop_extra=extra))
        c, i = self.connect()
        stls, ready = STLS[protocol]
        c.send(noop + stls)
        mtd.wait_for(lambda: noop in self.received(i), 10 * SLOW,
                     what="the NOOP at the backend")
        # the proxy has read STARTTLS too: it must not answer it yet
        self.assertEqual(c.quiet(0.5), b"",
                         "STARTTLS answered before the pipelined NOOP")
        gate.set()
        self.assertEqual(c.recv_until(b"\r\n"), noop_reply)
        self.assertEqual(c.recv_until(b"\r\n"), ready)
        # nothing after our reply until the handshake
        self.assertEqual(c.quiet(0.3), b"",
                         "backend bytes relayed after the STARTTLS reply")
        self.assert_backend_closed(i)
        t = c.tls()
        sent, got = post_tls_session(protocol, t)
        t.close()
        self.assertEqual(got, POST_REPLIES[protocol])
        self.assertNotIn(b"LEAKED", got)
        self.assertEqual(self.received(i), noop)

    def test_smtp(self):
        self.run_protocol("smtp", b"NOOP\r\n", b"250 2.0.0 Ok\r\n")

    def test_imap(self):
        self.run_protocol("imap", b"a1 NOOP\r\n", b"a1 OK NOOP completed.\r\n")

    def test_pop3(self):
        self.run_protocol("pop3", b"NOOP\r\n", b"+OK\r\n")

    def test_smtp_refusal_waits_for_earlier_replies(self):
        gate = threading.Event()
        self.start("smtp", handler=smtp_backend(gate=gate))
        c, i = self.connect()
        c.send(b"NOOP\r\nMAIL FROM:<a@example.org>\r\n")
        mtd.wait_for(lambda: b"NOOP\r\n" in self.received(i), 10 * SLOW)
        self.assertEqual(c.quiet(0.3), b"")
        gate.set()
        self.assertEqual(c.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), SMTP_MUSTTLS)


# --------------------------------------------------------------------------
# Refusals before TLS with require_tls = yes (SPEC table row 4)

class RefusedBeforeTls(StarttlsCase):

    def test_smtp(self):
        self.start("smtp")
        c, i = self.connect()
        allowed = []

        def ok(cmd, reply):
            c.send(cmd)
            self.assertEqual(smtp_reply(c), reply, cmd)
            allowed.append(cmd)
        c.send(b"EHLO client.example.org\r\n")
        smtp_reply(c)
        allowed.append(b"EHLO client.example.org\r\n")
        for cmd in (b"MAIL FROM:<a@example.org>\r\n",
                    b"RCPT TO:<b@example.org>\r\n", b"DATA\r\n",
                    b"AUTH PLAIN AGFsaWNlAHB3\r\n", b"AUTH LOGIN\r\n",
                    b"auth plain\r\n", b"VRFY postmaster\r\n",
                    b"EXPN staff\r\n", b"HELP\r\n", b"ETRN example.org\r\n",
                    b"TURN\r\n",
                    b"mail from:<lower@example.org>\r\n", b"XYZZY\r\n"):
            with self.subTest(command=cmd):
                c.send(cmd)
                self.assertEqual(c.recv_until(b"\r\n"), SMTP_MUSTTLS)
        # refused on every listener, TLS or not (test_audit_proto.py)
        c.send(b"XCLIENT ADDR=1.2.3.4\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"550 5.7.0 Error: "
                         b"insufficient authorization\r\n")
        ok(b"HELO client.example.org\r\n", b"250 fake.example.test\r\n")
        ok(b"NOOP\r\n", b"250 2.0.0 Ok\r\n")
        ok(b"RSET\r\n", b"250 2.0.0 Ok\r\n")
        ok(b"noop\r\n", b"250 2.0.0 Ok\r\n")
        ok(b"QUIT\r\n", b"221 2.0.0 Bye\r\n")
        self.assertEqual(c.recv_to_eof(), b"")
        self.b.wait_closed(i)
        self.assertEqual(self.received(i), b"".join(allowed),
                         "a refused command reached the backend")

    def test_smtp_bdat_refused_and_closed(self):
        """CHUNKING is not offered before TLS; a BDAT anyway is refused and,
        since its chunk cannot be skipped, the connection closes."""
        self.start("smtp")
        c, i = self.connect()
        c.send(b"BDAT 12 LAST\r\nRSET\r\nQUIT\r\n")
        self.assertEqual(c.recv_to_eof(), SMTP_MUSTTLS)
        self.b.wait_closed(i)
        self.assertEqual(self.received(i), b"")

    def test_imap(self):
        self.start("imap")
        c, i = self.connect()
        allowed = []
        for tag, cmd in ((b"r1", b"LOGIN alice pw"),
                         (b"r2", b"login alice pw"),
                         (b"r3", b"AUTHENTICATE PLAIN"),
                         (b"r4", b"AUTHENTICATE PLAIN AGFsaWNlAHB3")):
            with self.subTest(command=cmd):
                c.send(tag + b" " + cmd + b"\r\n")
                self.assertEqual(c.recv_until(b"\r\n"), tag + IMAP_PRIVACY)
        for tag, cmd in ((b"r5", b"SELECT INBOX"), (b"r6", b"EXAMINE INBOX"),
                         (b"r7", b'LIST "" "*"'),
                         (b"r8", b"STATUS INBOX (MESSAGES)"),
                         (b"r9", b"ENABLE IMAP4rev2"),
                         (b"r10", b"COMPRESS DEFLATE"), (b"r11", b"IDLE"),
                         (b"r12", b"NAMESPACE"), (b"r13", b"XYZZY"),
                         (b"r14", b"UID FETCH 1 BODY[]")):
            with self.subTest(command=cmd):
                c.send(tag + b" " + cmd + b"\r\n")
                self.assertEqual(c.recv_until(b"\r\n"), tag + IMAP_MUSTTLS)
        for cmd, reply in ((b"k1 CAPABILITY\r\n", None),
                           (b"k2 NOOP\r\n", b"k2 OK NOOP completed.\r\n"),
                           (b"k3 ID NIL\r\n", b"* ID NIL\r\nk3 OK ID "
                            b"completed.\r\n"),
                           (b'k4 ID ("name" "test")\r\n', b"* ID NIL\r\n"
                            b"k4 OK ID completed.\r\n"),
                           (b"k5 LOGOUT\r\n", b"* BYE Logging out\r\n"
                            b"k5 OK Logout completed.\r\n")):
            c.send(cmd)
            tag = cmd.split()[0]
            got = c.recv_until(tag + b" OK")
            got += c.recv_until(b"\r\n")
            if reply is not None:
                self.assertEqual(got, reply, cmd)
            allowed.append(cmd)
        self.assertEqual(c.recv_to_eof(), b"")
        self.b.wait_closed(i)
        self.assertEqual(self.received(i), b"".join(allowed),
                         "a refused command reached the backend")

    def test_pop3(self):
        self.start("pop3")
        c, i = self.connect()
        for cmd in (b"USER alice", b"user alice", b"PASS secret",
                    b"APOP alice c4c9334bac560ecc979e58001b3e22fb",
                    b"AUTH", b"AUTH PLAIN AGFsaWNlAHB3", b"STAT", b"LIST",
                    b"LIST 1", b"UIDL", b"RETR 1", b"TOP 1 0", b"DELE 1",
                    b"RSET", b"LAST", b"XYZZY"):
            with self.subTest(command=cmd):
                c.send(cmd + b"\r\n")
                self.assertEqual(c.recv_until(b"\r\n"), POP3_MUSTTLS)
        c.send(b"CAPA\r\n")
        c.recv_until(b"\r\n.\r\n")
        c.send(b"NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"+OK\r\n")
        c.send(b"QUIT\r\n")
        self.assertEqual(c.recv_to_eof(), b"+OK Logging out.\r\n")
        self.b.wait_closed(i)
        self.assertEqual(self.received(i), b"CAPA\r\nNOOP\r\nQUIT\r\n",
                         "a refused command reached the backend")


# --------------------------------------------------------------------------
# STARTTLS where it is not allowed; session fixation (require_tls = no)

class StarttlsRefused(StarttlsCase):

    def second_starttls(self, protocol, cmd, refusal, after, after_reply):
        self.start(protocol)
        c, i = self.connect()
        t = self.starttls(c)
        t.send(cmd)
        self.assertEqual(t.recv_until(b"\r\n"), refusal)
        # still the same TLS session (no second handshake): it goes on
        t.send(after)
        self.assertEqual(t.recv_until(b"\r\n"), after_reply)
        t.close()
        self.b.wait_closed(i + 1)
        self.assertEqual(len(self.b.conns), i + 2)
        self.assertEqual(self.received(i + 1), after)

    def test_second_starttls_smtp(self):
        self.second_starttls("smtp", b"STARTTLS\r\n", SMTP_TLSACTIVE,
                             b"NOOP\r\n", b"250 2.0.0 Ok\r\n")

    def test_second_starttls_imap(self):
        self.second_starttls("imap", b"t1 STARTTLS\r\n",
                             b"t1" + IMAP_TLSACTIVE, b"t2 NOOP\r\n",
                             b"t2 OK NOOP completed.\r\n")

    def test_second_starttls_pop3(self):
        self.second_starttls("pop3", b"STLS\r\n", POP3_TLSACTIVE,
                             b"NOOP\r\n", b"+OK\r\n")

    def after_auth_on_tls(self, login, caps, stls, refusal, after):
        """On a TLS session after authentication: the capabilities still
        never show STARTTLS/STLS (the fake backend announces it), and
        STARTTLS is refused by the proxy, never passed to the backend."""
        c, i = self.connect()
        t = self.starttls(c)
        for cmd, check in login:
            t.send(cmd)
            check(t)
        with self.subTest(check="capabilities after authentication"):
            t.send(caps[0])
            r = caps[1](t)
            self.assertNotIn(b"STARTTLS", r.upper())
            self.assertNotRegex(r, rb"(?im)^STLS\r?$")
        with self.subTest(check="STARTTLS after authentication"):
            t.send(stls)
            self.assertEqual(t.recv_until(b"\r\n"), refusal)
        t.send(after[0])
        self.assertEqual(t.recv_until(b"\r\n"), after[1])
        t.close()
        self.b.wait_closed(i + 1)
        rec = self.received(i + 1).upper()
        self.assertNotIn(b"STARTTLS", rec, "STARTTLS reached the backend")
        self.assertNotRegex(rec, rb"(?m)^STLS\r?$",
                            "STLS reached the backend")
        self.assertEqual(len(self.b.conns), i + 2, "a second handshake?")

    def test_smtp_after_auth_on_tls(self):
        self.start("smtp")

        def ok235(t):
            self.assertEqual(t.recv_until(b"\r\n"),
                             b"235 2.7.0 Authentication successful\r\n")
        self.after_auth_on_tls(
            [(b"EHLO a.example.org\r\n", smtp_reply),
             (b"AUTH PLAIN AGFsaWNlAHB3\r\n", ok235)],
            (b"EHLO b.example.org\r\n", smtp_reply), b"STARTTLS\r\n",
            SMTP_TLSACTIVE, (b"NOOP\r\n", b"250 2.0.0 Ok\r\n"))

    def test_imap_after_login_on_tls(self):
        self.start("imap")

        def ok(t):
            self.assertTrue(t.recv_until(b"\r\n").startswith(b"b1 OK "))
        self.after_auth_on_tls(
            [(b"b1 LOGIN alice pw\r\n", ok)],
            (b"b2 CAPABILITY\r\n", lambda t: t.recv_until(b"b2 OK") +
             t.recv_until(b"\r\n")),
            b"b3 STARTTLS\r\n", b"b3" + IMAP_TLSACTIVE,
            (b"b4 NOOP\r\n", b"b4 OK NOOP completed.\r\n"))

    def test_pop3_after_login_on_tls(self):
        self.start("pop3")

        def ok(t):
            self.assertTrue(t.recv_until(b"\r\n").startswith(b"+OK"))
        self.after_auth_on_tls(
            [(b"USER alice\r\n", ok), (b"PASS pw\r\n", ok)],
            (b"CAPA\r\n", lambda t: t.recv_until(b"\r\n.\r\n")),
            b"STLS\r\n", POP3_TLSACTIVE, (b"NOOP\r\n", b"+OK\r\n"))

    def test_smtp_inside_mail_transaction(self):
        self.start("smtp", require=False)
        c, i = self.connect()
        c.send(b"EHLO a.example.org\r\n")
        smtp_reply(c)
        c.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"250 2.1.0 Ok\r\n")
        c.send(b"STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), SMTP_INMAIL)
        # no handshake started: the plaintext session goes on
        c.send(b"NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
        # RSET ends the transaction: STARTTLS is allowed again
        c.send(b"RSET\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
        t = self.starttls(c)
        t.send(b"NOOP\r\n")
        self.assertEqual(t.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
        t.close()
        self.b.wait_closed(i)
        self.assertEqual(self.received(i),
                         b"EHLO a.example.org\r\nMAIL FROM:<a@example.org>"
                         b"\r\nNOOP\r\nRSET\r\n")

    def test_smtp_after_auth(self):
        self.start("smtp", require=False)
        c, i = self.connect()
        c.send(b"EHLO a.example.org\r\n")
        smtp_reply(c)
        c.send(b"AUTH PLAIN AGFsaWNlAHB3\r\n")
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        c.send(b"STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), SMTP_AUTHED)
        c.send(b"NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertEqual(len(self.b.conns), i + 1)
        self.assertNotIn(b"STARTTLS", self.received(i))

    def test_smtp_starttls_as_sasl_response_is_not_a_command(self):
        """One framing model: inside an AUTH exchange (after 334) a line
        reading STARTTLS is a SASL response, not a command."""
        self.start("smtp", require=False)
        c, i = self.connect()
        c.send(b"AUTH LOGIN\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"334 VXNlcm5hbWU6\r\n")
        c.send(b"STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        c.send(b"*\r\n")
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"535 5.7.8 Error: authentication failed\r\n")
        # and a real STARTTLS afterwards works
        t = self.starttls(c)
        t.close()

    def test_imap_after_login(self):
        self.start("imap", require=False)
        c, i = self.connect()
        c.send(b"a1 LOGIN alice pw\r\n")
        r = c.recv_until(b"\r\n")
        self.assertTrue(r.startswith(b"a1 OK"), r)
        # authenticated: STARTTLS no longer shown nor accepted
        self.assertNotIn(b"STARTTLS", r.upper())
        c.send(b"a2 STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a2" + IMAP_AUTHED)
        c.send(b"a3 NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a3 OK NOOP completed.\r\n")
        self.assertEqual(len(self.b.conns), i + 1)
        self.assertNotIn(b"STARTTLS", self.received(i))

    def test_imap_starttls_as_sasl_response_is_not_a_command(self):
        self.start("imap", require=False)
        c, i = self.connect()
        c.send(b"a1 AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"+ \r\n")
        c.send(b"a2 STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a1 OK Logged in\r\n")
        self.assertEqual(c.quiet(0.3), b"")
        self.assertEqual(self.received(i),
                         b"a1 AUTHENTICATE PLAIN\r\na2 STARTTLS\r\n")

    def test_pop3_after_login(self):
        self.start("pop3", require=False)
        c, i = self.connect()
        c.send(b"USER alice\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"+OK\r\n")
        c.send(b"PASS pw\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"+OK Logged in.\r\n")
        c.send(b"STLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), POP3_AUTHED)
        c.send(b"NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"+OK\r\n")
        self.assertEqual(len(self.b.conns), i + 1)
        self.assertNotIn(b"STLS", self.received(i))


class SessionFixation(StarttlsCase):
    """require_tls = no: what a client did before TLS leaves nothing behind
    on the backend session it uses after TLS."""

    def test_pop3_user_before_stls(self):
        self.start("pop3", require=False)
        c, i = self.connect()
        c.send(b"USER victim\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"+OK\r\n")
        t = self.starttls(c)
        t.send(b"PASS pw\r\n")
        # the fresh backend session never saw USER
        self.assertEqual(t.recv_until(b"\r\n"),
                         b"-ERR No username given.\r\n")
        t.send(b"QUIT\r\n")
        self.assertEqual(t.recv_to_eof(), b"+OK Logging out.\r\n")
        self.b.wait_closed(i + 1)
        self.assertEqual(self.received(i), b"USER victim\r\n")
        self.assertEqual(self.received(i + 1), b"PASS pw\r\nQUIT\r\n")

    def test_smtp_mail_rset_auth_attempt_before_starttls(self):
        self.start("smtp", require=False)
        c, i = self.connect()
        pre = (b"EHLO pre.example.org\r\n",
               b"MAIL FROM:<fix@evil.example>\r\n",
               b"RSET\r\n", b"AUTH LOGIN\r\n")
        for cmd in pre[:3]:
            c.send(cmd)
            smtp_reply(c)
        # an AUTH exchange abandoned half-way ("*" cancels it)
        c.send(pre[3])
        self.assertEqual(c.recv_until(b"\r\n"), b"334 VXNlcm5hbWU6\r\n")
        c.send(b"dmljdGlt\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        c.send(b"*\r\n")
        c.recv_until(b"\r\n")
        t = self.starttls(c)
        sent, got = post_tls_session("smtp", t)
        t.close()
        self.assertEqual(got, POST_REPLIES["smtp"])
        self.b.wait_closed(i + 1)
        self.assertEqual(self.received(i), b"".join(pre) +
                         b"dmljdGlt\r\n*\r\n")
        self.assertEqual(self.received(i + 1), sent)

    def test_imap_commands_and_failed_login_before_starttls(self):
        self.start("imap", require=False)
        c, i = self.connect()
        pre = (b"a1 SELECT INBOX\r\n", b"a2 LOGIN bad {2+}\r\npw\r\n")
        c.send(pre[0])
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"a1 OK SELECT completed.\r\n")
        c.send(pre[1])
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"a2 NO [AUTHENTICATIONFAILED] "
                         b"Authentication failed.\r\n")
        # not authenticated: STARTTLS is allowed, and nothing survives it
        t = self.starttls(c)
        sent, got = post_tls_session("imap", t)
        t.close()
        self.assertEqual(got, POST_REPLIES["imap"])
        self.b.wait_closed(i + 1)
        self.assertEqual(self.received(i), b"".join(pre))
        self.assertEqual(self.received(i + 1), sent)


# --------------------------------------------------------------------------
# Overlong lines, NUL bytes, IMAP literals before TLS

class Malformed(StarttlsCase):

    LIMITS = {"smtp": (512, b"NOOP ", SMTP_LONG, b"250 2.0.0 Ok\r\n"),
              "imap": (8192, b"a1 NOOP ", IMAP_LONG,
                       b"a1 OK NOOP completed.\r\n"),
              "pop3": (512, b"NOOP ", POP3_LONG, b"+OK\r\n")}

    def overlong(self, protocol):
        limit, prefix, long_reply, ok_reply = self.LIMITS[protocol]
        self.start(protocol)
        # exactly at the limit (CRLF included): relayed
        c, i = self.connect()
        line = prefix + b"x" * (limit - len(prefix) - 2) + b"\r\n"
        self.assertEqual(len(line), limit)
        c.send(line)
        self.assertEqual(c.recv_until(b"\r\n"), ok_reply)
        # one octet more: last reply, closed, nothing reaches the backend
        c.send(prefix + b"y" * (limit - len(prefix) - 1) + b"\r\n")
        self.assertEqual(c.recv_to_eof(), long_reply)
        self.b.wait_closed(i)
        self.assertEqual(self.received(i), line)

    def test_overlong_smtp(self):
        self.overlong("smtp")

    def test_overlong_imap(self):
        self.overlong("imap")

    def test_overlong_pop3(self):
        self.overlong("pop3")

    def test_overlong_unterminated_line_closes_promptly(self):
        """A line already past the limit is overlong before its LF comes:
        the connection closes without waiting for the rest (nor for
        handshake_timeout, here 60s)."""
        for p in ("smtp", "imap", "pop3"):
            with self.subTest(protocol=p):
                self.start(p, handshake_timeout="60s")
                c, i = self.connect()
                c.send(b"NOOP " + b"z" * 16000)
                t0 = time.monotonic()
                try:
                    c.recv_to_eof(timeout=3)
                except socket.timeout:
                    self.fail("%s: a 16 KB unterminated line before TLS "
                              "kept the connection open %.0fs" %
                              (p, time.monotonic() - t0))
                self.b.wait_closed(i)
                self.assertEqual(self.received(i), b"")

    def test_nul_byte_closes(self):
        cmds = {"smtp": b"NO\x00OP\r\n", "imap": b"a1 NO\x00OP\r\n",
                "pop3": b"NO\x00OP\r\n"}
        for p in ("smtp", "imap", "pop3"):
            for require in (True, False):
                with self.subTest(protocol=p, require_tls=require):
                    self.start(p, require=require)
                    c, i = self.connect()
                    c.send(cmds[p])
                    self.assertEqual(c.recv_to_eof(), b"")
                    self.b.wait_closed(i)
                    self.assertEqual(self.received(i), b"")
                    self.d.wait_log(r"event=close .*reason=nul_byte")

    def test_imap_nonsync_literal_with_starttls_inside_is_not_a_command(self):
        # require_tls = no: the literal is relayed as data, never parsed
        self.start("imap", require=False)
        c, i = self.connect()
        cmd = b'a1 ID ("name" {12+}\r\na STARTTLS\r\n)\r\n'
        c.send(cmd)
        self.assertEqual(c.recv_until(b"a1 OK ID completed.\r\n"),
                         b"* ID NIL\r\na1 OK ID completed.\r\n")
        self.assertEqual(c.quiet(0.3), b"", "the literal was answered")
        self.assertEqual(self.received(i), cmd)
        # a synchronizing literal too, sent after the backend's "+"
        c.send(b'a2 ID ("name" {12}\r\n')
        self.assertEqual(c.recv_until(b"\r\n"),
                         b"+ Ready for literal data\r\n")
        c.send(b"a STARTTLS\r\n)\r\n")
        self.assertEqual(c.recv_until(b"a2 OK ID completed.\r\n"),
                         b"* ID NIL\r\na2 OK ID completed.\r\n")
        # the session is still plaintext and STARTTLS still works
        t = self.starttls(c)
        t.close()
        self.assertEqual(self.received(i), cmd +
                         b'a2 ID ("name" {12}\r\na STARTTLS\r\n)\r\n')

    def test_imap_literals_refused_before_tls(self):
        """require_tls = yes: no literal reaches the backend before TLS; a
        refused command's literal is dropped, never read as commands."""
        self.start("imap")
        c, i = self.connect()
        c.send(b'a1 ID ("name" {12+}\r\na STARTTLS\r\n)\r\n')
        self.assertEqual(c.recv_until(b"\r\n"), b"a1" + IMAP_NOLITERAL)
        c.send(b"a2 LOGIN {5+}\r\nalice {14+}\r\nb1 STARTTLS\r\n\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a2" + IMAP_PRIVACY)
        c.send(b"a3 APPEND INBOX {12+}\r\na STARTTLS\r\n\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a3" + IMAP_MUSTTLS)
        c.send(b"a4 NOOP {3}\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a4" + IMAP_NOLITERAL)
        c.send(b"a5 NOOP }\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a5" + IMAP_NOLITERAL)
        # none of the literals was taken for a STARTTLS: still in sync
        self.assertEqual(c.quiet(0.3), b"")
        c.send(b"a6 NOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a6 OK NOOP completed.\r\n")
        self.assertEqual(self.received(i), b"a6 NOOP\r\n")
        t = self.starttls(c)
        t.close()


# --------------------------------------------------------------------------
# handshake_timeout bounds the plaintext phase (require_tls = yes)

class PreTlsDeadline(StarttlsCase):
    TIMEOUT = 2.0

    def test_client_that_keeps_sending_noops_is_cut(self):
        noop = {"smtp": (b"NOOP\r\n", b"250 2.0.0 Ok\r\n"),
                "imap": (b"n NOOP\r\n", b"n OK NOOP completed.\r\n"),
                "pop3": (b"NOOP\r\n", b"+OK\r\n")}
        for p in ("smtp", "imap", "pop3"):
            with self.subTest(protocol=p):
                self.start(p, handshake_timeout="%ds" % self.TIMEOUT,
                           idle_timeout="60s")
                t0 = time.monotonic()
                c, i = self.connect()
                cmd, reply = noop[p]
                n = 0
                cut = None
                while time.monotonic() - t0 < self.TIMEOUT + 10 * SLOW:
                    try:
                        c.send(cmd)
                        got = c.recv_until(b"\r\n", timeout=5)
                    except (Closed, BrokenPipeError, ConnectionResetError):
                        cut = time.monotonic() - t0
                        break
                    self.assertEqual(got, reply)
                    n += 1
                    c.quiet(0.05)       # pacing: ~20 NOOPs a second
                self.assertIsNotNone(cut, "%s: still served %.0fs after a "
                                     "%gs handshake_timeout (%d NOOPs)" %
                                     (p, time.monotonic() - t0,
                                      self.TIMEOUT, n))
                self.assertGreaterEqual(cut, self.TIMEOUT * 0.75)
                self.assertLess(cut, self.TIMEOUT + 2 * SLOW)
                self.assertGreater(n, 5)
                self.d.wait_log(r"event=close .*reason=handshake_timeout")

    def test_deadline_is_absolute_across_starttls(self):
        """STARTTLS late in the plaintext phase does not restart the clock:
        a client that never sends its ClientHello is cut at
        handshake_timeout from the connection's start (3s here), not from
        STARTTLS (which would be at about 5.4s)."""
        timeout = 3.0
        self.start("smtp", handshake_timeout="%ds" % timeout)
        t0 = time.monotonic()
        c, i = self.connect()
        while time.monotonic() - t0 < timeout * 0.8:
            c.send(b"NOOP\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
            c.quiet(0.05)
        c.send(b"STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), SMTP_READY)
        try:
            c.recv_to_eof(timeout=timeout + 8)
        except socket.timeout:
            self.fail("not closed after the handshake_timeout")
        cut = time.monotonic() - t0
        # timers are wall-clock: a little slack, more under sanitizers
        self.assertLess(cut, timeout + (2.0 if mtd.SANITIZERS else 1.2),
                        "the deadline restarted at STARTTLS")
        self.assertGreaterEqual(cut, timeout * 0.9)
        self.assertEqual(len(self.b.conns), i + 1)
        self.d.wait_log(r"event=close .*reason=handshake_timeout")


# --------------------------------------------------------------------------
# After TLS the session is relayed byte for byte

class RelayAfterTls(StarttlsCase):

    def test_smtp_data_and_bdat_byte_exact(self):
        self.start("smtp")
        c, i = self.connect()
        t = self.starttls(c)
        body = (b"Subject: relay\r\n\r\nSTARTTLS\r\n..leading dot\r\n"
                b"...\r\nQUIT\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"
                b"RCPT TO:<x@evil.example>\r\n" + b"L" * 5000 + b"\r\n"
                b". not the end\r\n")
        chunk = b"STARTTLS\r\nQUIT\r\n.\r\nMAIL FROM:<x>\r\n"
        steps = [(b"EHLO post.example.org\r\n", None),
                 (b"MAIL FROM:<a@example.org>\r\n", b"250 2.1.0 Ok\r\n"),
                 (b"RCPT TO:<b@example.org>\r\n", b"250 2.1.5 Ok\r\n"),
                 (b"DATA\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
                 (body + b".\r\n", b"250 2.0.0 Ok: queued as FAKE\r\n"),
                 (b"MAIL FROM:<a@example.org>\r\n", b"250 2.1.0 Ok\r\n"),
                 (b"RCPT TO:<b@example.org>\r\n", b"250 2.1.5 Ok\r\n"),
                 (b"BDAT %d LAST\r\n" % len(chunk) + chunk,
                  b"250 2.0.0 Ok: %d octets\r\n" % len(chunk)),
                 (b"QUIT\r\n", b"221 2.0.0 Bye\r\n")]
        for cmd, reply in steps:
            t.send(cmd)
            r = smtp_reply(t)
            if reply is not None:
                self.assertEqual(r, reply, cmd[:60])
        t.recv_to_eof()
        t.close()
        self.b.wait_closed(i + 1)
        self.assertEqual(self.received(i + 1),
                         b"".join(cmd for cmd, _ in steps))

    def test_imap_append_literal_byte_exact(self):
        self.start("imap")
        c, i = self.connect()
        t = self.starttls(c)
        msg = (b"Subject: x\r\n\r\na STARTTLS\r\nb LOGIN x y\r\n"
               b"{5}\r\n* OK not a response\r\n")
        t.send(b"c1 APPEND INBOX {%d}\r\n" % len(msg))
        self.assertEqual(t.recv_until(b"\r\n"),
                         b"+ Ready for literal data\r\n")
        t.send(msg + b"\r\n")
        self.assertEqual(t.recv_until(b"\r\n"), b"c1 OK APPEND completed.\r\n")
        t.send(b"c2 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
        self.assertEqual(t.recv_until(b"\r\n"), b"c2 OK APPEND completed.\r\n")
        t.send(b"c3 LOGOUT\r\n")
        t.recv_to_eof()
        t.close()
        self.b.wait_closed(i + 1)
        self.assertEqual(self.received(i + 1),
                         b"c1 APPEND INBOX {%d}\r\n" % len(msg) + msg +
                         b"\r\nc2 APPEND INBOX {%d+}\r\n" % len(msg) + msg +
                         b"\r\nc3 LOGOUT\r\n")

    def test_pop3_retr_byte_exact(self):
        self.start("pop3")
        c, i = self.connect()
        t = self.starttls(c)
        t.send(b"RETR 1\r\n")
        self.assertEqual(t.recv_until(b"\r\n.\r\n"),
                         b"+OK %d octets\r\n" % len(POP3_MESSAGE) +
                         POP3_MESSAGE + b".\r\n")
        t.send(b"QUIT\r\n")
        self.assertEqual(t.recv_to_eof(), b"+OK Logging out.\r\n")
        t.close()


if __name__ == "__main__":
    unittest.main()
