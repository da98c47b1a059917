"""
STARTTLS listeners with real clients and real servers: openssl s_client,
gnutls-cli, curl, swaks and Python's smtplib / imaplib / poplib, through
mailtlsd (client_tls = starttls) to a real Postfix and Dovecot.  A message
submitted through the SMTP STARTTLS listener is delivered by Postfix and read
back through the IMAP and POP3 STARTTLS listeners in front of Dovecot, with
LOGIN after STARTTLS.  Capabilities before and after TLS are checked against
what the real servers announce when asked directly (SPEC table).

AUTH: the Postfix listener behind mailtlsd has SASL on (Dovecot's auth
socket), so AUTH is a real backend capability that the proxy must hide before
TLS with require_tls = yes, show with require_tls = no, and show after TLS.
Postfix also relays for 127.0.0.0/8, so a submission without AUTH works too.

gnutls-cli (3.7.9) in STARTTLS mode writes its own EHLO / CAPABILITY / STLS
lines with CRLF, not bare LF: test_gnutls_cli_starttls_lines_end_in_crlf
pins that.  In its interactive mode it sends stdin as it is (bare LF unless
--crlf); the tests below give it CRLF lines.
"""

import base64
import imaplib
import os
import poplib
import re
import select
import smtplib
import subprocess
import time
import unittest
import uuid

import mtd
from mtd import FakeBackend, Mailtlsd, SLOW, LOOPBACK
# helpers only (no TestCase is imported, so none runs twice)
from test_starttls import (Plain, smtp_reply, ehlo_keywords, imap_caps,
                           pop3_capa, count_word, st_listener, config,
                           smtp_backend, imap_backend, pop3_backend,
                           SMTP_READY, SMTP_MUSTTLS, SMTP_TLSACTIVE,
                           IMAP_READY,
                           IMAP_PRIVACY, POP3_READY, POP3_MUSTTLS)

_servers = None
_front = None


def servers():
    global _servers
    if _servers is None:
        auth = os.path.join(mtd.tempdir("mtd-sasl-"), "auth-client")
        sasl = {"smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": auth}
        # "tls": a Postfix that itself offers STARTTLS on its plaintext port
        _servers = mtd.RealServers(
            postfix_listeners={"sasl": sasl, "tls": dict(
                sasl, smtpd_tls_security_level="may")},
            dovecot_extra="service auth {\n  unix_listener %s {\n"
                          "    mode = 0666\n  }\n}\n" % auth).start()
    return _servers


class Front:
    """One mailtlsd with STARTTLS listeners for each protocol, with
    require_tls = yes and = no, in front of the real servers."""

    def __init__(self):
        rs = servers()
        back = {"smtp": rs.smtp_ports["sasl"], "imap": rs.imap_port,
                "pop3": rs.pop3_port}
        self.ports = {}
        listeners = {}
        ports = mtd.free_ports(6)
        for proto in ("smtp", "imap", "pop3"):
            for require in (True, False):
                port = ports.pop()
                self.ports[proto, require] = port
                listeners["%s-%s" % (proto, "req" if require else "open")] \
                    = st_listener(proto, "%s:%d" % (LOOPBACK, back[proto]),
                                  port, require)
        port = self.ports["smtp-tls-backend"] = mtd.free_port()
        listeners["smtp-tls-backend"] = st_listener(
            "smtp", "%s:%d" % (LOOPBACK, rs.smtp_ports["tls"]), port)
        self.d = Mailtlsd(config(listeners), name="st-front").start()

    def port(self, proto, require=True):
        return self.ports[proto, require]


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
            _front = None
            if rc != 0:
                raise AssertionError("shared mailtlsd exited %r" % rc)
    finally:
        if _servers is not None:
            _servers.stop()
            _servers = None


def token():
    return "mtd-" + uuid.uuid4().hex


def message(rcpt, tok, sender="sender@example.org"):
    """A message (content, not yet dot-stuffed) with lines that look like
    commands and a line that starts with a dot."""
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nbody line %s\r\n"
            "STARTTLS\r\n. a line that starts with a dot\r\n" %
            (sender, rcpt, tok, tok))


DELIVERED_BODY = (b"\r\n\r\nbody line %s\r\nSTARTTLS\r\n"
                  b". a line that starts with a dot\r\n")


def assert_delivered(tc, rs, user, tok):
    """The message with tok reached user's Maildir with its body intact
    (Maildir files have LF line ends)."""
    m = rs.wait_delivered(user, tok)
    tc.assertIn((DELIVERED_BODY % tok.encode()).replace(b"\r\n", b"\n"), m)


def dot_stuffed(text):
    return text.replace("\r\n.", "\r\n..")


def plain_auth(user, pw):
    return base64.b64encode(b"\0" + user.encode() + b"\0" +
                            pw.encode())


def direct(port, commands):
    """Talk to a real server directly: its greeting, then each (command,
    reader) in turn; return the replies."""
    c = Plain(port)
    try:
        out = [c.recv_until(b"\r\n")]
        for cmd, read in commands:
            c.send(cmd)
            out.append(read(c))
        return out
    finally:
        c.close()


def interactive(argv, stdin, done, timeout=30):
    """Run a client that reads its commands from stdin and stops at stdin's
    EOF (gnutls-cli): send stdin, keep it open until the output matches the
    regex done (bounded), then close it.  Return (rc, stdout+stderr)."""
    mtd.need_tool(argv[0])
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = b""
    rx = re.compile(done)
    deadline = time.monotonic() + timeout * SLOW
    try:
        p.stdin.write(stdin)
        p.stdin.flush()
        while not rx.search(out) and time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [],
                                    max(0.01, deadline - time.monotonic()))
            if r:
                d = os.read(p.stdout.fileno(), 65536)
                if not d:
                    break
                out += d
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + 10 * SLOW
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [],
                                    max(0.01, deadline - time.monotonic()))
            if r:
                d = os.read(p.stdout.fileno(), 65536)
                if not d:
                    break
                out += d
        p.wait(max(0.1, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()
    return p.returncode, out.decode("utf-8", "replace")


def imap_greeting(c):
    """Dovecot's greeting: when its auth process is slow it first says
    "* OK Waiting for authentication process to respond.." and greets with
    its capabilities after that."""
    while True:
        line = c.recv_until(b"\r\n")
        if not line.startswith(b"* OK Waiting for authentication"):
            return line


def imap_response(c, tag):
    """The lines up to and including the tagged reply to tag."""
    lines = []
    while True:
        line = c.recv_until(b"\r\n")
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines


def run_tool(argv, stdin=b"", timeout=60):
    mtd.need_tool(argv[0])
    p = mtd.run(argv, input=stdin, timeout=timeout * SLOW)
    return p.returncode, p.stdout, p.stderr


# --------------------------------------------------------------------------

class RealServerCapabilities(unittest.TestCase):
    """Capabilities before and after TLS, against what Postfix and Dovecot
    themselves announce (SPEC table, rows 1, 2 and 5)."""

    @classmethod
    def setUpClass(cls):
        cls.f = front()
        cls.rs = servers()

    def postfix_ehlo(self):
        g, r = direct(self.rs.smtp_ports["sasl"],
                      [(b"EHLO client.example.org\r\n", smtp_reply)])
        domain, kws = ehlo_keywords(r)
        self.assertIn(b"AUTH PLAIN LOGIN", kws, "Postfix offers no AUTH")
        self.assertNotIn(b"STARTTLS", kws)
        return g, domain, kws

    def smtp_case(self, require):
        g0, domain, backend = self.postfix_ehlo()
        rs = self.rs
        c = Plain(self.f.port("smtp", require))
        self.addCleanup(c.close)
        self.assertEqual(c.recv_until(b"\r\n"), g0)
        c.send(b"EHLO client.example.org\r\n")
        r = smtp_reply(c)
        d, kws = ehlo_keywords(r)
        self.assertEqual(d, domain)
        self.assertEqual(count_word(kws, b"STARTTLS"), 1, r)
        want = list(backend)
        if require:
            # no AUTH before TLS; CHUNKING too (documented choice)
            want = [k for k in want if not k.upper().startswith(b"AUTH")
                    and k.upper() != b"CHUNKING"]
            self.assertNotRegex(r, rb"(?i)AUTH")
            c.send(b"AUTH PLAIN " + plain_auth("alice", rs.users["alice"]) +
                   b"\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), SMTP_MUSTTLS)
        else:
            self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", r)
        self.assertEqual(sorted(k for k in kws if k != b"STARTTLS"),
                         sorted(want), r)
        c.send(b"STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), SMTP_READY)
        t = c.tls()
        t.send(b"EHLO client.example.org\r\n")
        d, kws = ehlo_keywords(smtp_reply(t))
        self.assertEqual(sorted(kws), sorted(backend))
        t.send(b"AUTH PLAIN " + plain_auth("alice", rs.users["alice"]) +
               b"\r\n")
        self.assertEqual(t.recv_until(b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        t.send(b"QUIT\r\n")
        self.assertTrue(t.recv_to_eof().startswith(b"221 "))
        t.close()

    def test_smtp_require_tls_yes(self):
        self.smtp_case(True)

    def test_smtp_require_tls_no(self):
        self.smtp_case(False)

    def test_smtp_backend_that_offers_starttls_itself(self):
        """Postfix with smtpd_tls_security_level = may behind the proxy: its
        STARTTLS is never shown (ours is, once, before TLS), and after TLS
        and AUTH a STARTTLS is still refused by the proxy (503), never
        passed on: that would start a second handshake, with Postfix,
        inside the first."""
        rs = self.rs
        g0, r0 = direct(rs.smtp_ports["tls"],
                        [(b"EHLO client.example.org\r\n", smtp_reply)])
        domain, backend = ehlo_keywords(r0)
        self.assertIn(b"STARTTLS", backend)
        c = Plain(self.f.ports["smtp-tls-backend"])
        self.addCleanup(c.close)
        self.assertEqual(c.recv_until(b"\r\n"), g0)
        c.send(b"EHLO client.example.org\r\n")
        d, kws = ehlo_keywords(smtp_reply(c))
        self.assertEqual(count_word(kws, b"STARTTLS"), 1, kws)
        c.send(b"STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), SMTP_READY)
        t = c.tls()
        t.send(b"EHLO client.example.org\r\n")
        d, kws = ehlo_keywords(smtp_reply(t))
        self.assertEqual(count_word(kws, b"STARTTLS"), 0, kws)
        t.send(b"AUTH PLAIN " + plain_auth("alice", rs.users["alice"]) +
               b"\r\n")
        self.assertEqual(t.recv_until(b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        with self.subTest(check="EHLO after AUTH"):
            t.send(b"EHLO client.example.org\r\n")
            d, kws = ehlo_keywords(smtp_reply(t))
            self.assertEqual(count_word(kws, b"STARTTLS"), 0, kws)
        with self.subTest(check="STARTTLS after AUTH"):
            t.send(b"STARTTLS\r\n")
            self.assertEqual(t.recv_until(b"\r\n"), SMTP_TLSACTIVE)
            t.send(b"NOOP\r\n")
            self.assertEqual(t.recv_until(b"\r\n"), b"250 2.0.0 Ok\r\n")
        t.close()

    def imap_case(self, require):
        c0 = Plain(self.rs.imap_port)
        self.addCleanup(c0.close)
        g0 = imap_greeting(c0)
        c0.send(b"a CAPABILITY\r\n")
        r0 = [l for l in imap_response(c0, b"a")
              if l.startswith(b"* CAPABILITY ")]
        c0.close()
        backend = imap_caps(r0[0], code=False)
        self.assertEqual(sorted(imap_caps(g0)), sorted(backend))
        self.assertTrue([w for w in backend if w.startswith(b"AUTH=")])

        def check(words, tls):
            self.assertEqual(count_word(words, b"STARTTLS"),
                             0 if tls else 1, words)
            strict = require and not tls
            self.assertEqual(count_word(words, b"LOGINDISABLED"),
                             1 if strict else 0, words)
            want = [w for w in backend
                    if not (strict and (w.startswith(b"AUTH=") or
                                        w == b"SASL-IR"))]
            self.assertEqual(sorted(w for w in words if w not in (
                b"STARTTLS", b"LOGINDISABLED")), sorted(want))

        def check_response(lines, tag, tls):
            """Exactly one * CAPABILITY; every [CAPABILITY] code (Dovecot
            may repeat its greeting as an untagged OK) rewritten too."""
            caps = [l for l in lines if l.startswith(b"* CAPABILITY ")]
            self.assertEqual(len(caps), 1, lines)
            check(imap_caps(caps[0], code=False), tls)
            for l in lines:
                if b"[CAPABILITY " in l:
                    check(imap_caps(l), tls)
            self.assertTrue(lines[-1].startswith(tag + b" OK "), lines)

        c = Plain(self.f.port("imap", require))
        self.addCleanup(c.close)
        g = imap_greeting(c)
        self.assertTrue(g.endswith(b"] Dovecot (Debian) ready.\r\n"), g)
        check(imap_caps(g), False)
        c.send(b"a1 CAPABILITY\r\n")
        check_response(imap_response(c, b"a1"), b"a1", False)
        if require:
            c.send(b"a2 LOGIN alice alice-pw\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), b"a2" + IMAP_PRIVACY)
        c.send(b"a3 STARTTLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), b"a3" + IMAP_READY)
        t = c.tls()
        t.send(b"b1 CAPABILITY\r\n")
        check_response(imap_response(t, b"b1"), b"b1", True)
        t.send(b"b2 LOGIN alice alice-pw\r\n")
        r = b"".join(imap_response(t, b"b2"))
        self.assertIn(b"b2 OK ", r)
        self.assertNotIn(b"STARTTLS", r)
        t.send(b"b3 LOGOUT\r\n")
        t.recv_to_eof()
        t.close()

    def test_imap_require_tls_yes(self):
        self.imap_case(True)

    def test_imap_require_tls_no(self):
        self.imap_case(False)

    def pop3_case(self, require):
        g0, r0 = direct(self.rs.pop3_port, [(b"CAPA\r\n",
                                             lambda c: c.recv_until(
                                                 b"\r\n.\r\n"))])
        backend = pop3_capa(r0)
        self.assertIn(b"USER", backend)
        self.assertTrue([l for l in backend if l.startswith(b"SASL")])
        c = Plain(self.f.port("pop3", require))
        self.addCleanup(c.close)
        self.assertEqual(c.recv_until(b"\r\n"), g0)
        c.send(b"CAPA\r\n")
        lines = pop3_capa(c.recv_until(b"\r\n.\r\n"))
        self.assertEqual(count_word(lines, b"STLS"), 1, lines)
        want = [l for l in backend if not (require and l.split()[0] in (
            b"USER", b"SASL"))]
        self.assertEqual(sorted(l for l in lines if l != b"STLS"),
                         sorted(want))
        if require:
            c.send(b"USER alice\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), POP3_MUSTTLS)
        c.send(b"STLS\r\n")
        self.assertEqual(c.recv_until(b"\r\n"), POP3_READY)
        t = c.tls()
        t.send(b"CAPA\r\n")
        self.assertEqual(sorted(pop3_capa(t.recv_until(b"\r\n.\r\n"))),
                         sorted(backend))
        t.send(b"USER alice\r\nPASS alice-pw\r\n")
        self.assertEqual(t.recv_until(b"\r\n"), b"+OK\r\n")
        self.assertTrue(t.recv_until(b"\r\n").startswith(b"+OK "))
        t.send(b"QUIT\r\n")
        t.recv_to_eof()
        t.close()

    def test_pop3_require_tls_yes(self):
        self.pop3_case(True)

    def test_pop3_require_tls_no(self):
        self.pop3_case(False)


class PythonClients(unittest.TestCase):
    """smtplib.starttls(), imaplib.starttls(), poplib.stls()."""

    @classmethod
    def setUpClass(cls):
        cls.f = front()
        cls.rs = servers()
        cls.ctx = mtd.client_context()

    def test_submit_with_auth_and_read_back_over_imap_and_pop3(self):
        tok = token()
        user = "alice"
        rcpt = self.rs.address(user)
        with smtplib.SMTP(LOOPBACK, self.f.port("smtp"),
                          timeout=30 * SLOW) as s:
            code, _ = s.ehlo("client.example.org")
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("auth"))
            code, msg = s.starttls(context=self.ctx)
            self.assertEqual((code, msg), (220, b"2.0.0 Ready to start TLS"))
            s.ehlo("client.example.org")
            self.assertFalse(s.has_extn("starttls"))
            self.assertTrue(s.has_extn("auth"))
            code, _ = s.login(user, self.rs.users[user])
            self.assertEqual(code, 235)
            self.assertEqual(s.sendmail("sender@example.org", [rcpt],
                                        message(rcpt, tok)), {})
        assert_delivered(self, self.rs, user, tok)

        m = imaplib.IMAP4(LOOPBACK, self.f.port("imap"), timeout=30 * SLOW)
        try:
            self.assertIn("STARTTLS", m.capabilities)
            self.assertIn("LOGINDISABLED", m.capabilities)
            self.assertFalse([c for c in m.capabilities
                              if c.startswith("AUTH=")])
            typ, data = m.starttls(ssl_context=self.ctx)
            self.assertEqual(typ, "OK")
            self.assertNotIn("STARTTLS", m.capabilities)
            self.assertNotIn("LOGINDISABLED", m.capabilities)
            self.assertEqual(m.login(user, self.rs.users[user])[0], "OK")
            m.select("INBOX")
            typ, data = m.search(None, "SUBJECT", tok)
            nums = data[0].split()
            self.assertEqual(len(nums), 1, data)
            typ, data = m.fetch(nums[0], "(RFC822)")
            self.assertIn(("body line %s" % tok).encode(), data[0][1])
            self.assertIn(DELIVERED_BODY % tok.encode(), data[0][1])
        finally:
            m.logout()

        p = poplib.POP3(LOOPBACK, self.f.port("pop3"), timeout=30 * SLOW)
        try:
            caps = p.capa()
            self.assertIn("STLS", caps)
            self.assertNotIn("USER", caps)
            self.assertNotIn("SASL", caps)
            with self.assertRaises(poplib.error_proto) as cm:
                p.user(user)
            self.assertEqual(cm.exception.args[0],
                             POP3_MUSTTLS.rstrip(b"\r\n"))
            self.assertEqual(p.stls(context=self.ctx),
                             POP3_READY.rstrip(b"\r\n"))
            caps = p.capa()
            self.assertNotIn("STLS", caps)
            self.assertIn("USER", caps)
            p.user(user)
            p.pass_(self.rs.users[user])
            count, _ = p.stat()
            found = False
            for i in range(1, count + 1):
                _, lines, _ = p.retr(i)
                if ("body line %s" % tok).encode() in lines:
                    found = True
                    # RETR output is dot-stuffed; poplib unstuffs it
                    self.assertIn(b". a line that starts with a dot", lines)
            self.assertTrue(found, "message not found over POP3")
        finally:
            p.quit()

    def test_submit_without_auth_on_require_tls_no(self):
        tok = token()
        rcpt = self.rs.address("alice")
        with smtplib.SMTP(LOOPBACK, self.f.port("smtp", False),
                          timeout=30 * SLOW) as s:
            s.ehlo("client.example.org")
            self.assertTrue(s.has_extn("starttls"))
            self.assertTrue(s.has_extn("auth"))
            s.starttls(context=self.ctx)
            s.ehlo("client.example.org")
            self.assertFalse(s.has_extn("starttls"))
            self.assertEqual(s.sendmail("sender@example.org", [rcpt],
                                        message(rcpt, tok)), {})
        assert_delivered(self, self.rs, "alice", tok)


class CommandLineClients(unittest.TestCase):
    """openssl s_client, gnutls-cli, curl and swaks: each submits one
    message through the SMTP STARTTLS listener and reads it back through
    the IMAP and POP3 ones (one mailbox per client)."""

    @classmethod
    def setUpClass(cls):
        cls.f = front()
        cls.rs = servers()
        cls.ca = mtd.certs().ca

    def smtp_stdin(self, user, tok, auth=True):
        rcpt = self.rs.address(user)
        lines = ["EHLO client.example.org"]
        if auth:
            lines.append("AUTH PLAIN " + plain_auth(
                user, self.rs.users[user]).decode())
        lines += ["MAIL FROM:<sender@example.org>", "RCPT TO:<%s>" % rcpt,
                  "DATA"]
        return ("\r\n".join(lines) + "\r\n" +
                dot_stuffed(message(rcpt, tok)) + ".\r\nQUIT\r\n").encode()

    def imap_stdin(self, user):
        return ("a1 LOGIN %s %s\r\na2 SELECT INBOX\r\na3 FETCH 1 BODY[]\r\n"
                "a4 LOGOUT\r\n" % (user, self.rs.users[user])).encode()

    def pop3_stdin(self, user):
        return ("USER %s\r\nPASS %s\r\nRETR 1\r\nQUIT\r\n" % (
            user, self.rs.users[user])).encode()

    # -- openssl s_client
    def s_client(self, proto, stdin):
        return run_tool(["openssl", "s_client", "-starttls", proto,
                         "-connect", "%s:%d" % (LOOPBACK,
                                                self.f.port(proto)),
                         "-servername", "localhost", "-CAfile", self.ca,
                         "-verify_return_error", "-ign_eof"], stdin)

    def test_openssl_s_client(self):
        user, tok = "bob", token()
        rc, out, err = self.s_client("smtp", self.smtp_stdin(user, tok))
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"(?m)^235 2\.7\.0 ")
        self.assertRegex(out, r"(?m)^250 2\.0\.0 Ok: queued")
        self.assertRegex(out, r"(?m)^221 ")
        self.assertNotIn("STARTTLS", out)      # not after TLS
        assert_delivered(self, self.rs, user, tok)

        rc, out, err = self.s_client("imap", self.imap_stdin(user))
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"(?m)^a1 OK ")
        self.assertIn("body line %s" % tok, out)
        self.assertRegex(out, r"(?m)^a4 OK ")

        rc, out, err = self.s_client("pop3", self.pop3_stdin(user))
        self.assertEqual(rc, 0, out + err)
        self.assertIn("body line %s" % tok, out)
        self.assertRegex(out, r"(?m)^\+OK Logged in")

    # -- gnutls-cli
    def gnutls_cli(self, proto, stdin, done, port=None):
        return interactive(["gnutls-cli", "--starttls-proto=" + proto,
                            "--x509cafile", self.ca, "-p",
                            str(port or self.f.port(proto)), "localhost"],
                           stdin, done)

    def test_gnutls_cli(self):
        user, tok = "carol", token()
        rc, out = self.gnutls_cli("smtp", self.smtp_stdin(user, tok),
                                  rb"(?m)^221 ")
        self.assertIn("Handshake was completed", out)
        self.assertRegex(out, r"(?m)^235 2\.7\.0 ")
        self.assertRegex(out, r"(?m)^250 2\.0\.0 Ok: queued")
        self.assertRegex(out, r"(?m)^221 ")
        assert_delivered(self, self.rs, user, tok)

        rc, out = self.gnutls_cli("imap", self.imap_stdin(user),
                                  rb"(?m)^a4 OK")
        self.assertIn("Handshake was completed", out)
        self.assertRegex(out, r"(?m)^a1 OK ")
        self.assertIn("body line %s" % tok, out)

        rc, out = self.gnutls_cli("pop3", self.pop3_stdin(user),
                                  rb"(?m)^\+OK Logging out")
        self.assertIn("Handshake was completed", out)
        self.assertIn("body line %s" % tok, out)

    def test_gnutls_cli_starttls_lines_end_in_crlf(self):
        """What gnutls-cli's own STARTTLS dialogue sends before TLS, as the
        backend receives it through the proxy (CRLF, no bare LF); the
        STARTTLS/STLS line itself never reaches the backend."""
        expect = {"smtp": (smtp_backend, b"EHLO localhost\r\n",
                           rb"(?m)^250 2\.0\.0 Ok"),
                  "imap": (imap_backend, b"a CAPABILITY\r\n",
                           rb"(?m)^n1 OK"),
                  "pop3": (pop3_backend, b"", rb"(?m)^\+OK\r?$")}
        stdin = {"smtp": b"NOOP\r\n", "imap": b"n1 NOOP\r\n",
                 "pop3": b"NOOP\r\n"}
        for proto, (backend, pre, done) in expect.items():
            with self.subTest(protocol=proto):
                b = FakeBackend(backend(), tc=self)
                port = mtd.free_port()
                Mailtlsd(config({"st": st_listener(proto, b.addr, port)}),
                         tc=self).start()
                b.wait_closed(0)            # start()'s probe
                rc, out = self.gnutls_cli(proto, stdin[proto], done, port)
                self.assertIn("Handshake was completed", out)
                b.wait_closed(1)
                b.wait_closed(2)
                self.assertEqual(b.received(1), pre)
                self.assertEqual(b.received(2), stdin[proto])
                b.check()

    # -- curl
    def curl(self, args):
        return run_tool(["curl", "-sS", "-v", "--ssl-reqd", "--cacert",
                         self.ca, "--max-time", str(int(30 * SLOW))] + args)

    def test_curl(self):
        user, tok = "dave", token()
        rcpt = self.rs.address(user)
        msgfile = os.path.join(mtd.tempdir("mtd-curl-"), "msg.eml")
        with open(msgfile, "w") as f:
            f.write(message(rcpt, tok))
        cred = ["-u", "%s:%s" % (user, self.rs.users[user])]
        rc, out, err = self.curl(cred + [
            "--mail-from", "sender@example.org", "--mail-rcpt", rcpt,
            "--upload-file", msgfile,
            "smtp://%s:%d" % (LOOPBACK, self.f.port("smtp"))])
        self.assertEqual(rc, 0, err)
        self.assertIn("< 220 2.0.0 Ready to start TLS", err)
        self.assertRegex(err, r"< 235 2\.7\.0 ")
        assert_delivered(self, self.rs, user, tok)

        rc, out, err = self.curl(cred + ["imap://%s:%d/INBOX;MAILINDEX=1" %
                                         (LOOPBACK, self.f.port("imap"))])
        self.assertEqual(rc, 0, err)
        self.assertIn("OK Begin TLS negotiation now", err)
        self.assertIn("body line %s" % tok, out)

        rc, out, err = self.curl(cred + ["pop3://%s:%d/1" %
                                         (LOOPBACK, self.f.port("pop3"))])
        self.assertEqual(rc, 0, err)
        self.assertIn("< +OK Begin TLS negotiation", err)
        self.assertIn("body line %s" % tok, out)

    # -- swaks
    def swaks(self, user, tok, port, auth):
        args = ["swaks", "--server", "%s:%d" % (LOOPBACK, port), "--tls",
                "--tls-verify", "--tls-ca-path", self.ca,
                "--helo", "client.example.org",
                "--from", "sender@example.org",
                "--to", self.rs.address(user),
                "--header", "Subject: %s" % tok,
                "--body", "body line %s" % tok]
        if auth:
            args += ["--auth", "PLAIN", "--auth-user", user,
                     "--auth-password", self.rs.users[user]]
        return run_tool(args)

    def test_swaks(self):
        for auth, require in ((True, True), (False, False)):
            with self.subTest(auth=auth, require_tls=require):
                tok = token()
                rc, out, err = self.swaks("erin", tok,
                                          self.f.port("smtp", require), auth)
                self.assertEqual(rc, 0, out + err)
                self.assertRegex(out, r"<-  250[- ]STARTTLS")
                self.assertIn("<-  220 2.0.0 Ready to start TLS", out)
                self.assertIn("=== TLS started", out)
                self.assertNotRegex(out, r"<~  250[- ]STARTTLS")
                if require:
                    self.assertNotRegex(out, r"<-  250[- ]AUTH")
                else:
                    self.assertRegex(out, r"<-  250[- ]AUTH")
                self.assertRegex(out, r"<~  250[- ]AUTH")
                if auth:
                    self.assertRegex(out, r"<~  235 2\.7\.0 ")
                self.rs.wait_delivered("erin", tok)


if __name__ == "__main__":
    unittest.main()
