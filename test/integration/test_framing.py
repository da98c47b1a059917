"""
Framing on the wire (issue 12 items 5 and 7; SPEC "bytes on the wire").

Before TLS on a STARTTLS listener a line is plain text: a CR that does not
end it, or a control character other than tab, closes the connection (as
NUL does) without forwarding the line, so that a backend that ends lines on
CR never reads a second command inside the first.  After TLS a line of any
length passes byte-exact, either way, with bounded memory: a 120 KB
`* SEARCH` reply, a client line over 64 KiB, a message line over 64 KiB in
SMTP DATA through a real Postfix.
"""

import smtplib
import socket
import unittest
import uuid

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK

GREETING = b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready\r\n"


class ControlCharactersBeforeTls(unittest.TestCase):

    def start(self):
        self.b = FakeBackend(FakeBackend.lines(GREETING, [
            (b"", lambda l: l.split(b" ")[0] + b" OK done\r\n")]), tc=self)
        self.port = mtd.free_port()
        self.d = Mailtlsd(mtd.daemon_conf({"imap": mtd.listener_conf(
            "imap", self.b.addr, self.port, client_tls="starttls",
            require_tls="yes")}, log_level="info"), tc=self,
            name="framing").start()

    def session(self, line):
        s = socket.create_connection((LOOPBACK, self.port), timeout=10 * SLOW)
        with s:
            f = s.makefile("rb")
            greeting = f.readline()
            self.assertTrue(greeting.startswith(b"* OK"), greeting)
            s.sendall(line)
            rest = f.read()
            f.close()
        return rest

    def test_bare_cr_and_control_characters_close(self):
        self.start()
        for line in (b'A1 ID ("a" "b")\rA3 LOGIN u p\r\n',
                     b"A1 ID {5}\r\r\n",
                     b"A1 ID NIL\x01\r\n",
                     b"A1 ID\x1b NIL\r\n",
                     b"A1 ID NIL\x7f\r\n"):
            with self.subTest(line=line):
                n = len(self.b.conns)
                self.assertEqual(self.session(line), b"")
                c = self.b.wait_closed(n)
                # not a byte of the line reached the backend
                self.assertEqual(bytes(c.received), b"", line)
                self.d.wait_log(r"event=close .*reason=control_char")

    def test_tab_and_plain_lines_still_pass(self):
        self.start()
        s = socket.create_connection((LOOPBACK, self.port), timeout=10 * SLOW)
        with s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"A1 ID (\"name\"\t\"x\")\r\nA2 NOOP\r\n")
            self.assertEqual(f.readline(), b"A1 OK done\r\n")
            self.assertEqual(f.readline(), b"A2 OK done\r\n")
            f.close()
        # The harness's port check opened a backend connection too (a
        # STARTTLS listener connects at accept), in either order with the
        # session's: exactly one of them carried the lines.
        conns = [self.b.wait_closed(i) for i in range(len(self.b.conns))]
        self.assertEqual([bytes(c.received) for c in conns if c.received],
                         [b"A1 ID (\"name\"\t\"x\")\r\nA2 NOOP\r\n"])


def imap_long_lines_backend(reply):
    """Greeting; answers "a SEARCH" with ${reply}; echoes the length of any
    other line as a tagged OK."""
    def h(c):
        c.send(b"* OK ready\r\n")
        while True:
            try:
                line = c.recv_line(timeout=60)
            except mtd.Closed:
                return
            if line.startswith(b"a SEARCH"):
                c.send(reply)
            else:
                c.send(b"%s OK %d\r\n" % (line.split(b" ")[0], len(line)))
    return h


class LongLinesAfterTls(unittest.TestCase):

    def test_long_lines_pass_byte_exact_both_ways(self):
        uids = b" ".join(b"%d" % (100000 + i) for i in range(20000))
        reply = b"* SEARCH " + uids + b"\r\na OK SEARCH completed\r\n"
        self.assertGreater(len(reply), 120000)
        b = FakeBackend(imap_long_lines_backend(reply), tc=self)
        port = mtd.free_port()
        d = Mailtlsd(mtd.daemon_conf({"imaps": mtd.listener_conf(
            "imap", b.addr, port)}, log_level="info"), tc=self,
            name="longlines").start()
        c = TlsConn(port, timeout=30 * SLOW)
        self.addCleanup(c.close)
        c.recv_until(b"\r\n")
        c.send(b"a SEARCH ALL\r\n")
        got = c.recv_until(b"a OK SEARCH completed\r\n")
        self.assertEqual(got, reply)
        # and from the client: a 100 KB command line
        line = (b"b UID STORE " + b",".join(b"%d" % i for i in
                range(1, 17000)) + b" +FLAGS (\\Seen)\r\n")
        self.assertGreater(len(line), 65536)
        c.send(line)
        self.assertEqual(c.recv_until(b"\r\n"), b"b OK %d\r\n" % len(line))
        self.assertIn(line, b.received(0))
        c.send(b"c LOGOUT\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"c OK 10\r\n")
        self.assertNotIn("line_too_long", d.log)


class LongDataLineThroughPostfix(unittest.TestCase):

    def test_message_line_over_64k_is_delivered(self):
        rs = mtd.RealServers(tc=self, dovecot=False).start()
        port = mtd.free_port()
        d = Mailtlsd(mtd.daemon_conf({"smtps": mtd.listener_conf(
            "smtp", "%s:%d" % (LOOPBACK, rs.smtp_port), port)},
            log_level="info"), tc=self, name="longdata").start()
        tok = "mtd-" + uuid.uuid4().hex
        rcpt = rs.address("alice")
        long_line = "x" * 70000 + tok
        msg = ("From: a@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\n%s\r\n"
               "end\r\n" % (rcpt, tok, long_line))
        with smtplib.SMTP_SSL(LOOPBACK, port, context=mtd.client_context(),
                              timeout=30 * SLOW) as s:
            s.ehlo("client.example.org")
            self.assertEqual(s.sendmail("a@example.org", [rcpt], msg), {})
        got = rs.wait_delivered("alice", tok.encode())
        # Postfix may fold the line when it stores it; every byte arrives
        flat = got.replace(b"\r\n", b"").replace(b"\n", b"")
        self.assertIn(long_line.encode(), flat)
        self.assertNotIn("line_too_long", d.log)


if __name__ == "__main__":
    unittest.main()
