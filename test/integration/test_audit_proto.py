"""
Issue 12, the protocol handlers' items, on the wire:

  4   client-supplied XCLIENT and XFORWARD are refused on every SMTP listener
      (implicit, STARTTLS before and after TLS with and without require_tls,
      client_tls = none), never forwarded, and never advertised;
  6   with backend_tls = starttls the backend's plaintext greeting is filtered
      as the pre-TLS rules filter a greeting (no IMAP response code: no
      [ALERT], no [REFERRAL]) and kept whole however many lines it has (the
      bound past which the backend is unavailable, never a cut greeting, is
      checked in test/unit/test_bstarttls.c);
  6b  before TLS with require_tls = yes nothing invites credentials in clear:
      no IMAP SASL-IR (nor AUTH=), no POP3 APOP timestamp (nor SASL, USER),
      against a real Dovecot.

Choices pinned here (README "Behaviour worth knowing", "STARTTLS
listeners", "TLS toward the backend"):
XCLIENT/XFORWARD get Postfix's own reply to an unauthorized client,
"550 5.7.0 Error: insufficient authorization"; the command verb is read as
Postfix reads it (leading white space skipped, ended by any white space).
"""

import re
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, LOOPBACK, free_port

import test_backend_tls as bt
import test_starttls as st

REFUSED = b"550 5.7.0 Error: insufficient authorization\r\n"
OK = b"250 2.0.0 Ok\r\n"

EHLO_X = (b"250-fake.example.test\r\n250-PIPELINING\r\n"
          b"250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n"
          b"250-XFORWARD NAME ADDR PROTO HELO SOURCE\r\n"
          b"250 8BITMIME\r\n")

# Each is refused on its own line; the last two are read by Postfix as
# XCLIENT/XFORWARD (its tokenizer skips leading white space and splits on
# any white space).
ATTEMPTS = [
    b"XCLIENT ADDR=203.0.113.7 NAME=spoofed.example.org\r\n",
    b"xforward ADDR=203.0.113.7\r\n",
    b"XCLIENT\r\n",
    b" XCLIENT ADDR=203.0.113.7\r\n",
    b"XFORWARD\tADDR=203.0.113.7\r\n",
]


class Xclient(unittest.TestCase):
    """Item 4."""

    def dialogue(self, c, bdat, ok=OK):
        """EHLO (no XCLIENT/XFORWARD shown), each attempt refused, one in
        a pipelined group answered in order; with bdat, a chunk read by the
        backend as two bytes, after which an XCLIENT line is a command."""
        c.send(b"EHLO client.example.org\r\n")
        _, kws = st.ehlo_keywords(st.smtp_reply(c))
        self.assertFalse([k for k in kws if re.match(rb"(?i)X(CLIENT|FORWARD)",
                                                     k)], kws)
        for a in ATTEMPTS:
            c.send(a)
            self.assertEqual(c.recv_until(b"\r\n"), REFUSED, a)
        c.send(b"NOOP\r\nXCLIENT ADDR=203.0.113.7\r\nNOOP\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), ok)
        self.assertEqual(c.recv_until(b"\r\n"), REFUSED)
        self.assertEqual(c.recv_until(b"\r\n"), ok)
        if bdat:
            c.send(b"BDAT\t2\r\n..XCLIENT ADDR=203.0.113.7\r\n")
            self.assertEqual(c.recv_until(b"\r\n"),
                             b"250 2.0.0 Ok: 2 octets\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), REFUSED)

    def quit(self, c):
        c.send(b"QUIT\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"221 2.0.0 Bye\r\n")
        c.close()

    def assert_never_forwarded(self, data):
        self.assertNotRegex(data, rb"(?i)XCLIENT|XFORWARD")

    def test_refused_on_every_listener(self):
        # a backend that offers XCLIENT and XFORWARD (as a Postfix that
        # trusts mailtlsd's address does) and records every byte
        b = FakeBackend(st.smtp_backend(ehlo=EHLO_X), tc=self)
        tb = FakeBackend(bt.tls_backend("smtp", bt.tls_server_context(
            mtd.certs().server_ecdsa), "implicit"), tc=self)
        ports = mtd.free_ports(4)
        cfg = mtd.daemon_conf({
            "implicit": mtd.listener_conf("smtp", b.addr, ports[0]),
            "st-require": st.st_listener("smtp", b.addr, ports[1], True),
            "st-open": st.st_listener("smtp", b.addr, ports[2], False),
            "plain-in": bt.listener("smtp", tb.addr, ports[3], "implicit",
                                    client_tls="none"),
        })
        d = Mailtlsd(cfg, tc=self, name="xclient").start()

        with self.subTest(listener="implicit"):
            c = TlsConn(ports[0])
            self.addCleanup(c.close)
            self.assertEqual(c.recv_until(b"\r\n"), st.SMTP_GREETING)
            self.dialogue(c, bdat=True)
            self.quit(c)

        for name, port, require in (("st-require", ports[1], True),
                                    ("st-open", ports[2], False)):
            with self.subTest(listener=name):
                c = st.Plain(port)
                self.addCleanup(c.close)
                self.assertEqual(c.recv_until(b"\r\n"), st.SMTP_GREETING)
                # before TLS (a refused BDAT would close: only without
                # require_tls)
                self.dialogue(c, bdat=not require)
                c.send(b"STARTTLS\r\n")
                self.assertEqual(c.recv_until(b"\r\n"), st.SMTP_READY)
                t = c.tls()
                self.dialogue(t, bdat=True)
                self.quit(t)

        with self.subTest(listener="client_tls = none"):
            c = st.Plain(ports[3])
            self.addCleanup(c.close)
            self.assertEqual(c.recv_until(b"\r\n"),
                             bt.greeting_for("smtp"))
            self.dialogue(c, bdat=False, ok=b"250 2.0.0 Ok (over TLS)\r\n")
            self.quit(c)

        self.assertEqual(d.stop(), 0, d.log[-3000:])
        b.check()
        for conn in b.conns:
            self.assert_never_forwarded(bytes(conn.received))
        for conn in tb.conns:
            self.assert_never_forwarded(bytes(getattr(conn, "tls_received",
                                                      b"")))


# --------------------------------------------------------------------------
# Item 6: the greeting of a backend reached with STARTTLS

SMTP_LONG_GREETING = (b"220-fake.example.test ESMTP\r\n" +
                      b"220-" + b"a" * 1500 + b"\r\n" +
                      b"".join(b"220-%d %s\r\n" % (i, b"b" * 400)
                               for i in range(6)) +
                      b"220 fake ready\r\n")
IMAP_GREETINGS = [
    b"* OK [ALERT] Your password expired: log in at evil.example\r\n",
    b"* OK [REFERRAL imap://alice@[::1]:9/] fake IMAP ready\r\n",
    b"* ok  [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] fake IMAP ready\r\n",
    b"* OK [ALERT]\r\n",
]
IMAP_SHOWN = [
    b"* OK Your password expired: log in at evil.example\r\n",
    b"* OK fake IMAP ready\r\n",
    b"* OK fake IMAP ready\r\n",
    b"* OK Ready\r\n",
]


class BackendGreeting(unittest.TestCase):
    """Item 6."""

    def serve(self, proto, greeting, client_tls="implicit"):
        ctx = bt.tls_server_context(mtd.certs().server_ecdsa)
        b = FakeBackend(bt.tls_backend(proto, ctx, "starttls",
                                       greeting=greeting), tc=self)
        port = free_port()
        d = Mailtlsd(bt.config({"bst": bt.listener(
            proto, b.addr, port, "starttls", client_tls=client_tls)}),
            tc=self, name="bgreeting").start()
        c = TlsConn(port) if client_tls == "implicit" else st.Plain(port)
        self.addCleanup(c.close)
        return b, d, c

    def test_imap_response_codes_removed(self):
        for client_tls in ("implicit", "none"):
            for g, shown in zip(IMAP_GREETINGS, IMAP_SHOWN):
                with self.subTest(greeting=g, client_tls=client_tls):
                    b, d, c = self.serve("imap", g, client_tls)
                    self.assertEqual(c.recv_until(b"\r\n"), shown)
                    c.send(b"a1 LOGOUT\r\n")
                    self.assertEqual(c.recv_to_eof(),
                                     b"* BYE bye\r\na1 OK done\r\n")
                    self.assertEqual(d.stop(), 0, d.log[-3000:])
                    b.check()

    def test_smtp_long_multiline_greeting_whole(self):
        b, d, c = self.serve("smtp", SMTP_LONG_GREETING)
        self.assertEqual(st.smtp_reply(c), SMTP_LONG_GREETING)
        c.send(b"QUIT\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"221 2.0.0 Bye\r\n")
        c.close()
        self.assertEqual(d.stop(), 0, d.log[-3000:])
        b.check()


# --------------------------------------------------------------------------
# Item 6b: nothing invites credentials before TLS (real Dovecot)

def has_cap(words, name):
    return any(w.upper() == name for w in words)


def auth_caps(words):
    return [w for w in words if w.upper().startswith(b"AUTH=")]


class NoCredentialsInClear(unittest.TestCase):
    """Item 6b, against Dovecot 2.3 (which sees mailtlsd's loopback
    connection as secured, so offers everything)."""

    @classmethod
    def setUpClass(cls):
        # apop: Dovecot then puts its APOP timestamp in the POP3 greeting
        cls.rs = mtd.RealServers(postfix=False, dovecot_extra=(
            "auth_mechanisms = plain login apop\n")).start()
        cls.ports = mtd.free_ports(4)
        cfg = mtd.daemon_conf({
            "imap-req": st.st_listener("imap", "%s:%d" % (
                LOOPBACK, cls.rs.imap_port), cls.ports[0], True),
            "imap-open": st.st_listener("imap", "%s:%d" % (
                LOOPBACK, cls.rs.imap_port), cls.ports[1], False),
            "pop3-req": st.st_listener("pop3", "%s:%d" % (
                LOOPBACK, cls.rs.pop3_port), cls.ports[2], True),
            "pop3-open": st.st_listener("pop3", "%s:%d" % (
                LOOPBACK, cls.rs.pop3_port), cls.ports[3], False),
        })
        cls.d = Mailtlsd(cfg, name="nocreds").start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        cls.rs.stop()

    def connect(self, i):
        c = st.Plain(self.ports[i])
        self.addCleanup(c.close)
        g = c.recv_until(b"\r\n")
        # Dovecot, when its auth process is slow to answer, says so before
        # its greeting (an untagged OK, passed on as such).
        while g.startswith(b"* OK Waiting for authentication process"):
            g = c.recv_until(b"\r\n")
        return c, g

    def test_imap_require_tls(self):
        c, g = self.connect(0)
        self.assertRegex(g, rb"^\* OK \[CAPABILITY .*\] Dovecot .*ready")
        for words in (st.imap_caps(g), None):
            if words is None:
                c.send(b"a1 CAPABILITY\r\n")
                words = st.imap_caps(c.recv_until(b"\r\n"), code=False)
                self.assertTrue(c.recv_until(b"\r\n").startswith(b"a1 OK"))
            self.assertFalse(has_cap(words, b"SASL-IR"), words)
            self.assertEqual(auth_caps(words), [], words)
            self.assertTrue(has_cap(words, b"LOGINDISABLED"), words)
            self.assertTrue(has_cap(words, b"STARTTLS"), words)
        c.send(b"s1 STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"s1" + st.IMAP_READY)
        t = c.tls()
        t.send(b"b1 CAPABILITY\r\n")
        words = st.imap_caps(t.recv_until(b"\r\n"), code=False)
        # on TLS, Dovecot's own list again (without STARTTLS)
        self.assertTrue(has_cap(words, b"SASL-IR"), words)
        self.assertIn(b"AUTH=PLAIN", [w.upper() for w in words])
        self.assertFalse(has_cap(words, b"STARTTLS"), words)
        self.assertTrue(t.recv_until(b"\r\n").startswith(b"b1 OK"))
        t.send(b"b2 LOGIN alice alice-pw\r\n")
        r = t.recv_until(b"\r\n")
        while r.startswith(b"* "):      # Dovecot's post-login CAPABILITY
            r = t.recv_until(b"\r\n")
        self.assertTrue(r.startswith(b"b2 OK"), r)
        t.send(b"b3 LOGOUT\r\n")
        self.assertRegex(t.recv_to_eof(), rb"\r\nb3 OK Logout completed")

    def test_imap_without_require_tls_unchanged(self):
        c, g = self.connect(1)
        words = st.imap_caps(g)
        self.assertTrue(has_cap(words, b"SASL-IR"), words)
        self.assertIn(b"AUTH=PLAIN", [w.upper() for w in words])
        self.assertTrue(has_cap(words, b"STARTTLS"), words)

    def test_pop3_require_tls(self):
        c, g = self.connect(2)
        self.assertTrue(g.startswith(b"+OK Dovecot "), g)
        self.assertNotIn(b"<", g)
        self.assertNotIn(b">", g)
        c.send(b"CAPA\r\n")
        caps = st.pop3_capa(c.recv_until(b"\r\n.\r\n"))
        self.assertFalse([l for l in caps if l.split()[0].upper() in
                          (b"SASL", b"USER")], caps)
        c.send(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), st.POP3_MUSTTLS)
        c.send(b"STLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), st.POP3_READY)
        t = c.tls()
        t.send(b"CAPA\r\n")
        caps = st.pop3_capa(t.recv_until(b"\r\n.\r\n"))
        self.assertTrue([l for l in caps if l.startswith(b"SASL ")], caps)
        t.send(b"USER alice\r\n")
        self.assertTrue(t.recv_until(b"\r\n").startswith(b"+OK"))
        t.send(b"PASS alice-pw\r\n")
        self.assertTrue(t.recv_until(b"\r\n").startswith(b"+OK"))
        t.send(b"QUIT\r\n")
        self.assertTrue(t.recv_until(b"\r\n").startswith(b"+OK"))

    def test_pop3_without_require_tls_keeps_apop_timestamp(self):
        """The other side of the previous test: Dovecot does send a
        timestamp, and without require_tls it reaches the client."""
        c, g = self.connect(3)
        self.assertRegex(g, rb"^\+OK Dovecot .*ready\. <[^<>]+>\r\n$")


if __name__ == "__main__":
    unittest.main()
