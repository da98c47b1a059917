"""
Implicit TLS listeners (RFC 8314) for smtp, imap, pop3 and none: relay to real
and fake backends, TLS policy, failure replies, timeouts, signals, limits,
backpressure and the command line (SPEC: "Command line", "Implicit TLS",
"TLS policy", "When things fail").
"""

import os
import poplib
import re
import signal
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
MB = 1024 * 1024

_servers = None
_front = None


def servers():
    """The real Postfix + Dovecot of this module (started on first use)."""
    global _servers
    if _servers is None:
        _servers = mtd.RealServers().start()
    return _servers


listener = mtd.listener_conf


config = mtd.daemon_conf


class Front:
    """One mailtlsd in front of the real servers, shared by the tests that
    only talk through it: implicit smtp/imap/pop3 with the ECDSA
    certificate, and smtp with the RSA certificate."""

    def __init__(self):
        rs = servers()
        c = mtd.certs()
        p = mtd.free_ports(4)
        self.smtps, self.imaps, self.pop3s, self.smtps_rsa = p
        self.d = Mailtlsd(config({
            "smtps": listener("smtp", "%s:%d" % (LOOPBACK, rs.smtp_port),
                              self.smtps),
            "imaps": listener("imap", "%s:%d" % (LOOPBACK, rs.imap_port),
                              self.imaps),
            "pop3s": listener("pop3", "%s:%d" % (LOOPBACK, rs.pop3_port),
                              self.pop3s),
            "smtps-rsa": listener("smtp", "%s:%d" % (LOOPBACK, rs.smtp_port),
                                  self.smtps_rsa, certs=[c.server_rsa]),
        }), name="front").start()


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


def s_client(port, args, stdin=b"", timeout=30):
    """openssl s_client against 127.0.0.1:port; return (rc, output)."""
    mtd.need_tool("openssl")
    argv = ["openssl", "s_client", "-connect", "%s:%d" % (LOOPBACK, port),
            "-servername", "localhost", "-CAfile", mtd.certs().ca,
            "-verify_return_error", "-ign_eof", "-msg"] + list(args)
    p = mtd.run(argv, input=stdin, timeout=timeout * SLOW)
    return p.returncode, p.stdout + p.stderr


def curl(args, timeout=60):
    mtd.need_tool("curl")
    p = mtd.run(["curl", "-sS", "--max-time", str(int(30 * SLOW)),
                 "--cacert", mtd.certs().ca] + list(args),
                timeout=timeout * SLOW)
    return p.returncode, p.stdout, p.stderr


def token():
    return "mtd-" + uuid.uuid4().hex


# --------------------------------------------------------------------------

class RealClientsThroughImplicitListeners(unittest.TestCase):
    """Real clients -> mailtlsd (implicit TLS) -> real Postfix / Dovecot."""

    @classmethod
    def setUpClass(cls):
        cls.f = front()
        cls.rs = servers()
        cls.ctx = mtd.client_context()

    def test_smtp_ssl_message_is_read_back_over_imap_ssl_and_pop3_ssl(self):
        tok = token()
        rcpt = self.rs.address("alice")
        msg = ("From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\n"
               "body line %s\r\n" % (rcpt, tok, tok))
        with smtplib.SMTP_SSL(LOOPBACK, self.f.smtps, context=self.ctx,
                              timeout=30 * SLOW) as s:
            code, ehlo = s.ehlo("client.example.org")
            self.assertEqual(code, 250)
            self.assertNotIn(b"STARTTLS", ehlo.upper())
            refused = s.sendmail("sender@example.org", [rcpt], msg)
            self.assertEqual(refused, {})
        self.rs.wait_delivered("alice", tok)

        m = imaplib.IMAP4_SSL(LOOPBACK, self.f.imaps, ssl_context=self.ctx,
                              timeout=30 * SLOW)
        try:
            typ, _ = m.login("alice", self.rs.users["alice"])
            self.assertEqual(typ, "OK")
            typ, caps = m.capability()
            self.assertNotIn(b"STARTTLS", caps[0].upper())
            m.select("INBOX")
            typ, data = m.search(None, "SUBJECT", tok)
            self.assertEqual(typ, "OK")
            nums = data[0].split()
            self.assertEqual(len(nums), 1, data)
            typ, data = m.fetch(nums[0], "(RFC822)")
            self.assertIn(("body line %s" % tok).encode(), data[0][1])
        finally:
            m.logout()

        p = poplib.POP3_SSL(LOOPBACK, self.f.pop3s, context=self.ctx,
                            timeout=30 * SLOW)
        try:
            p.user("alice")
            p.pass_(self.rs.users["alice"])
            caps = p.capa()
            self.assertNotIn("STLS", {k.upper() for k in caps})
            count, _ = p.stat()
            found = False
            for i in range(1, count + 1):
                _, lines, _ = p.retr(i)
                if ("body line %s" % tok).encode() in lines:
                    found = True
            self.assertTrue(found, "message not found over POP3")
        finally:
            p.quit()

    def test_openssl_s_client(self):
        cases = [
            ("smtp", self.f.smtps, b"EHLO client.example.org\r\nQUIT\r\n",
             [rb"(?m)^220 .*ESMTP", rb"(?m)^250 ", rb"(?m)^221 "]),
            ("imap", self.f.imaps, b"a1 CAPABILITY\r\na2 LOGOUT\r\n",
             [rb"(?m)^\* OK ", rb"(?m)^\* CAPABILITY .*IMAP4rev1",
              rb"(?m)^a1 OK", rb"(?m)^a2 OK"]),
            ("pop3", self.f.pop3s, b"CAPA\r\nQUIT\r\n",
             [rb"(?m)^\+OK .*\r?\n", rb"(?m)^\.\r?$", rb"(?m)^\+OK.*\r?\n"]),
        ]
        for name, port, stdin, want in cases:
            with self.subTest(protocol=name):
                rc, out = s_client(port, [], stdin)
                self.assertEqual(rc, 0, out)
                self.assertIn("Verify return code: 0 (ok)", out)
                for rx in want:
                    self.assertRegex(out.encode(), rx, out)
                # already on TLS: never offered STARTTLS/STLS
                self.assertNotIn("STARTTLS", out.upper())
                self.assertNotRegex(out, r"(?im)^STLS\r?$")

    def test_curl_smtps_imaps_pop3s(self):
        tok = token()
        rcpt = self.rs.address("carol")
        msgfile = os.path.join(mtd.tempdir("mtd-curl-"), "msg.eml")
        with open(msgfile, "w") as f:
            f.write("From: curl@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\n"
                    "curl body %s\r\n" % (rcpt, tok, tok))
        rc, out, err = curl(["--mail-from", "curl@example.org",
                             "--mail-rcpt", rcpt, "--upload-file", msgfile,
                             "smtps://%s:%d" % (LOOPBACK, self.f.smtps)])
        self.assertEqual(rc, 0, err)
        self.rs.wait_delivered("carol", tok)

        user = ["-u", "carol:%s" % self.rs.users["carol"]]
        rc, out, err = curl(user + ["imaps://%s:%d/INBOX;MAILINDEX=1" %
                                    (LOOPBACK, self.f.imaps)])
        self.assertEqual(rc, 0, err)
        self.assertIn("curl body %s" % tok, out)

        rc, out, err = curl(user + ["pop3s://%s:%d/1" %
                                    (LOOPBACK, self.f.pop3s)])
        self.assertEqual(rc, 0, err)
        self.assertIn("curl body %s" % tok, out)


class TlsPolicy(unittest.TestCase):
    """The default priority: TLS 1.2/1.3, ECDHE, AEAD only; refusals carry
    the matching alert (SPEC "TLS policy")."""

    @classmethod
    def setUpClass(cls):
        cls.f = front()

    def refused(self, port, args, alert, sent_version):
        rc, out = s_client(port, args, b"QUIT\r\n")
        self.assertNotEqual(rc, 0, out)
        # the client really sent a ClientHello of that version ...
        self.assertRegex(out, r">>> %s, Handshake \[length [0-9a-f]+\], "
                         r"ClientHello" % re.escape(sent_version), out)
        # ... and got a TLS alert back, not a bare reset
        self.assertIn(alert, out, out)
        self.assertNotIn("New, TLSv1", out)

    def served(self, port, args, proto, cipher=None):
        rc, out = s_client(port, args, b"QUIT\r\n")
        self.assertEqual(rc, 0, out)
        self.assertIn("New, %s, Cipher is %s" % (proto, cipher or ""), out)
        self.assertRegex(out, r"(?m)^221 ", out)
        return out

    def test_tls10_refused_with_protocol_version_alert(self):
        self.refused(self.f.smtps, ["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                     "alert protocol version", "TLS 1.0")

    def test_tls11_refused_with_protocol_version_alert(self):
        self.refused(self.f.smtps,
                     ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                     "alert protocol version", "TLS 1.1")

    def test_cbc_only_client_refused_with_handshake_failure(self):
        self.refused(self.f.smtps, ["-tls1_2", "-cipher", "AES128-SHA"],
                     "alert handshake failure", "TLS 1.2")
        # CBC with ECDHE, matching each certificate: refused for CBC alone
        # (GnuTLS's NORMAL would accept these two and AES128-SHA on RSA)
        self.refused(self.f.smtps,
                     ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
                     "alert handshake failure", "TLS 1.2")
        self.refused(self.f.smtps_rsa,
                     ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"],
                     "alert handshake failure", "TLS 1.2")
        self.refused(self.f.smtps_rsa, ["-tls1_2", "-cipher", "AES128-SHA"],
                     "alert handshake failure", "TLS 1.2")

    def test_rsa_key_exchange_only_client_refused_with_handshake_failure(self):
        # against an RSA certificate, so that only the key exchange is wrong
        self.refused(self.f.smtps_rsa,
                     ["-tls1_2", "-cipher", "AES128-GCM-SHA256"],
                     "alert handshake failure", "TLS 1.2")
        self.served(self.f.smtps_rsa,
                    ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                    "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")

    def test_tls12_ecdhe_ecdsa_aes128_gcm_served(self):
        self.served(self.f.smtps,
                    ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
                    "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_tls13_served(self):
        self.served(self.f.smtps, ["-tls1_3"], "TLSv1.3")
        ctx = mtd.client_context(minimum=ssl.TLSVersion.TLSv1_3)
        with mtd.tls_connect(self.f.imaps, ctx=ctx) as s:
            self.assertEqual(s.version(), "TLSv1.3")
            self.assertTrue(s.recv(1024).startswith(b"* OK"))


class CapabilitiesOnImplicitTls(unittest.TestCase):
    """A client already on TLS never sees STARTTLS/STLS, whatever the
    backend announces; everything else is relayed unchanged."""

    def start(self, protocol, handler):
        b = FakeBackend(handler, tc=self)
        port = free_port()
        d = Mailtlsd(config({"l": listener(protocol, b.addr, port)}),
                     tc=self).start()
        return b, d, port

    def test_smtp_ehlo_hides_starttls(self):
        mid = (b"250-fake.example.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n"
               b"250-SIZE 1000\r\n250 8BITMIME\r\n")
        last = (b"250-fake.example.test\r\n250-PIPELINING\r\n"
                b"250 STARTTLS\r\n")
        b, d, port = self.start("smtp", FakeBackend.lines(
            b"220 fake.example.test ESMTP\r\n",
            [(b"EHLO A", mid), (b"EHLO B", last),
             (b"QUIT", b"221 2.0.0 Bye\r\n")]))
        with TlsConn(port) as c:
            self.assertEqual(c.recv_until(b"\r\n"),
                             b"220 fake.example.test ESMTP\r\n")
            c.send(b"EHLO a.example\r\n")
            r = self.read_smtp_reply(c)
            self.assertNotIn(b"STARTTLS", r.upper())
            self.assertEqual(r, b"250-fake.example.test\r\n250-PIPELINING\r\n"
                             b"250-SIZE 1000\r\n250 8BITMIME\r\n")
            c.send(b"EHLO b.example\r\n")
            r = self.read_smtp_reply(c)
            self.assertNotIn(b"STARTTLS", r.upper())
            self.assertEqual(r, b"250-fake.example.test\r\n250 PIPELINING\r\n")
            c.send(b"QUIT\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), b"221 2.0.0 Bye\r\n")
        b.check()

    @staticmethod
    def read_smtp_reply(c):
        out = b""
        while True:
            line = c.recv_until(b"\r\n")
            out += line
            if line[3:4] == b" ":
                return out

    def test_imap_capabilities_hide_starttls(self):
        b, d, port = self.start("imap", FakeBackend.lines(
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] fake ready\r\n",
            [(b"a1 CAPABILITY", b"* CAPABILITY IMAP4rev1 STARTTLS "
              b"AUTH=PLAIN\r\na1 OK done\r\n"),
             (b"a2 LOGOUT", b"* BYE bye\r\na2 OK done\r\n")]))
        with TlsConn(port) as c:
            g = c.recv_until(b"\r\n")
            self.assertNotIn(b"STARTTLS", g.upper())
            self.assertRegex(g, rb"^\* OK \[CAPABILITY IMAP4rev1 +AUTH=PLAIN\]"
                             rb" fake ready\r\n$")
            c.send(b"a1 CAPABILITY\r\n")
            cap = c.recv_until(b"\r\n")
            self.assertNotIn(b"STARTTLS", cap.upper())
            self.assertRegex(cap, rb"^\* CAPABILITY IMAP4rev1 +AUTH=PLAIN\r\n$")
            self.assertEqual(c.recv_until(b"\r\n"), b"a1 OK done\r\n")
            c.send(b"a2 LOGOUT\r\n")
            self.assertEqual(c.recv_until(b"a2 OK done\r\n"),
                             b"* BYE bye\r\na2 OK done\r\n")
        b.check()

    def test_pop3_capa_hides_stls(self):
        b, d, port = self.start("pop3", FakeBackend.lines(
            b"+OK fake ready\r\n",
            [(b"CAPA", b"+OK list follows\r\nUSER\r\nSTLS\r\nSASL PLAIN\r\n"
              b".\r\n"), (b"QUIT", b"+OK bye\r\n")]))
        with TlsConn(port) as c:
            self.assertEqual(c.recv_until(b"\r\n"), b"+OK fake ready\r\n")
            c.send(b"CAPA\r\n")
            r = c.recv_until(b"\r\n.\r\n")
            self.assertEqual(r, b"+OK list follows\r\nUSER\r\nSASL PLAIN\r\n"
                             b".\r\n")
            c.send(b"QUIT\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), b"+OK bye\r\n")
        b.check()


class BackendDown(unittest.TestCase):
    """A backend that refuses: the protocol's own temporary error after the
    handshake, then the connection closes."""

    @classmethod
    def setUpClass(cls):
        dead = "%s:%d" % (LOOPBACK, free_port())  # nothing listens there
        cls.smtp, cls.imap, cls.pop3 = mtd.free_ports(3)
        cls.d = Mailtlsd(config({
            "smtps": listener("smtp", dead, cls.smtp),
            "imaps": listener("imap", dead, cls.imap),
            "pop3s": listener("pop3", dead, cls.pop3),
        }), name="down").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def reply(self, port):
        with mtd.tls_connect(port) as s:
            return mtd.read_until_closed(s, timeout=20)

    def test_smtp_421(self):
        self.assertEqual(self.reply(self.smtp),
                         ("421 4.3.0 %s Service not available\r\n" %
                          HOSTNAME).encode())

    def test_imap_bye_unavailable(self):
        r = self.reply(self.imap)
        self.assertTrue(r.startswith(b"* BYE [UNAVAILABLE] "), r)
        self.assertTrue(r.endswith(b"\r\n") and r.count(b"\r\n") == 1, r)

    def test_pop3_err_sys_temp(self):
        r = self.reply(self.pop3)
        self.assertTrue(r.startswith(b"-ERR [SYS/TEMP] "), r)
        self.assertTrue(r.endswith(b"\r\n") and r.count(b"\r\n") == 1, r)


class HandshakeTimeout(unittest.TestCase):
    def setUp(self):
        self.b = FakeBackend(FakeBackend.echo, tc=self)
        self.port = free_port()
        self.d = Mailtlsd(config({"l": listener(
            "smtp", self.b.addr, self.port, handshake_timeout="1s")}),
            tc=self).start()

    def assert_closed_after_timeout(self, first_bytes):
        s = socket.create_connection((LOOPBACK, self.port), timeout=5)
        try:
            t0 = time.monotonic()
            if first_bytes:
                s.sendall(first_bytes)
            s.settimeout(15 * SLOW)
            try:
                while s.recv(4096):
                    pass        # an alert may come before the close
            except ConnectionResetError:
                pass
            except socket.timeout:
                self.fail("connection still open %.0fs after a 1s "
                          "handshake_timeout" % (15 * SLOW))
            elapsed = time.monotonic() - t0
        finally:
            s.close()
        self.assertGreaterEqual(elapsed, 0.5,
                                "closed before handshake_timeout (1s)")
        self.assertEqual(self.b.total_received(), 0)

    def test_silent_client_closed(self):
        self.assert_closed_after_timeout(b"")

    def test_stalled_client_hello_closed(self):
        # a TLS record header announcing 512 bytes, then 5 of them
        self.assert_closed_after_timeout(b"\x16\x03\x01\x02\x00\x01\x00\x01"
                                         b"\xfc\x03")


class Relay(unittest.TestCase):
    """protocol = none: an opaque, byte-exact relay."""

    def start(self, handler, record=True, env=None, **kw):
        self.b = FakeBackend(handler, tc=self, record=record)
        self.port = free_port()
        self.d = Mailtlsd(config({"raw": listener(
            "none", self.b.addr, self.port, **kw)}), tc=self,
            env=env).start()
        return self.b, self.d

    def test_50mb_both_ways_byte_exact(self):
        up = os.urandom(50 * MB)
        down = os.urandom(50 * MB)
        b, d = self.start(FakeBackend.duplex(down), record=False)
        c = TlsConn(self.port, timeout=120)
        c.pump(up, want=len(down), timeout=120)
        c.close_notify()
        conn = b.wait_closed(0, timeout=120)
        got = c.recv_to_eof(timeout=30)     # all that is buffered, then EOF
        c.close()
        b.check()
        self.assertEqual(conn.nreceived, len(up))
        self.assertEqual(conn.sha256, sha256(up), "client->backend differs")
        self.assertEqual(len(got), len(down))
        self.assertEqual(sha256(got), sha256(down), "backend->client differs")

    def test_half_close_with_close_notify_still_gets_reply(self):
        b, d = self.start(FakeBackend.half_close_reply(b"got %d bytes\r\n"))
        payload = os.urandom(300000)
        for variant in ("close_notify", "close_notify+shutdown"):
            with self.subTest(variant=variant):
                n = len(b.conns)
                c = TlsConn(self.port)
                c.send(payload)
                c.close_notify()
                if variant.endswith("shutdown"):
                    c.shutdown_wr()
                reply = c.recv_to_eof(timeout=20)
                c.close()
                self.assertEqual(reply, b"got %d bytes\r\n" % len(payload))
                self.assertEqual(b.wait_closed(n).received, payload)
        b.check()

    def test_client_tcp_close_without_close_notify_delivers_data(self):
        b, d = self.start(FakeBackend.sink)
        payload = os.urandom(300000)
        c = TlsConn(self.port)
        c.send(payload)
        c.shutdown_wr()
        conn = b.wait_closed(0, timeout=20)
        c.close()
        self.assertEqual(bytes(conn.received), payload)

    def test_backend_reset_mid_stream_delivers_data_then_closes(self):
        data = os.urandom(200000)

        def h(conn):
            conn.send(data)
            conn.recv_until(b"bye\n", timeout=30)
            conn.reset()
        b, d = self.start(h)
        c = TlsConn(self.port)
        self.assertEqual(c.recv_exact(len(data)), data)
        c.send(b"bye\n")
        c.recv_to_eof(timeout=20)
        c.close()

    def test_max_connections_third_waits_then_is_served(self):
        b, d = self.start(FakeBackend.greet_echo(b"hello\n"),
                          max_connections="2")
        c1 = TlsConn(self.port)
        self.assertEqual(c1.recv_until(b"\n"), b"hello\n")
        c2 = TlsConn(self.port)
        self.assertEqual(c2.recv_until(b"\n"), b"hello\n")
        b.wait_conns(2)

        c3 = TlsConn(self.port, handshake=False)

        def served(within):
            deadline = time.monotonic() + within * SLOW
            try:
                c3.handshake(timeout=max(0.01, (deadline - time.monotonic())
                                         / SLOW))
                return c3.recv_until(b"\n", timeout=max(
                    0.01, (deadline - time.monotonic()) / SLOW)) == b"hello\n"
            except socket.timeout:
                return False
        self.assertFalse(served(1.5),
                         "a third connection was served with "
                         "max_connections = 2")
        self.assertEqual(len(b.conns), 2)
        c1.close()
        b.wait_closed(0)
        self.assertTrue(served(10), "the waiting connection was not served "
                        "after a slot freed")
        c3.send(b"ping\n")
        self.assertEqual(c3.recv_until(b"\n"), b"ping\n")
        c2.send(b"pong\n")
        self.assertEqual(c2.recv_until(b"\n"), b"pong\n")
        for c in (c2, c3):
            c.close()

    def test_backpressure_client_that_never_reads(self):
        """A client sends but does not read while the backend echoes: reads
        must pause when a write queue is full, so memory stays bounded."""
        env = None
        if mtd.SANITIZERS:
            # keep ASan's quarantine of freed buffers from looking like growth
            env = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:"
                   "quarantine_size_mb=4:allocator_release_to_os_interval_ms=0"}
        b, d = self.start(FakeBackend.echo, record=False, env=env)
        c = TlsConn(self.port, timeout=60)
        c.send(b"warm up\n")
        self.assertEqual(c.recv_until(b"\n"), b"warm up\n")
        base = d.rss_kb()
        peak = [base]

        def sample(sent, received):
            peak[0] = max(peak[0], d.rss_kb())
        # 64 MB: more than the kernel's socket buffers on the way can hold,
        # so that a proxy that queues without bound shows in its RSS
        data = os.urandom(64 * MB)
        sent = c.pump(data, read=False, stall=1.0, timeout=120,
                      on_progress=sample)
        sample(0, 0)
        self.assertIsNone(d.proc.poll(), "mailtlsd died:\n" + d.log[-3000:])
        self.assertLess(peak[0] - base, 32 * 1024,
                        "RSS grew from %d to %d KiB with %d bytes in flight"
                        % (base, peak[0], sent))
        c.pump(data[sent:], want=len(data), timeout=120, on_progress=sample)
        got = c.recv_exact(len(data))
        self.assertEqual(sha256(got), sha256(data))
        self.assertLess(peak[0] - base, 32 * 1024)
        c.close()

    def test_cert_auto(self):
        b, d = self.start(FakeBackend.echo, certs=["auto"])
        c = TlsConn(self.port, ctx=mtd.client_context(verify=False))
        self.assertTrue(c.peer_cert_der())
        c.send(b"auto\n")
        self.assertEqual(c.recv_until(b"\n"), b"auto\n")
        c.close()
        self.assertRegex(d.log, r"(?im)^.*warn.*(auto|self-signed).*$")


class Signals(unittest.TestCase):
    def start(self, **glob):
        self.b = FakeBackend(FakeBackend.echo, tc=self)
        self.port = free_port()
        self.d = Mailtlsd(config({"raw": listener("none", self.b.addr,
                                                  self.port)}, **glob),
                          tc=self).start()
        return self.d

    def test_sigterm_refuses_new_connections_and_lets_open_session_finish(self):
        d = self.start(shutdown_timeout="60s")
        c = TlsConn(self.port)
        c.send(b"before\n")
        self.assertEqual(c.recv_until(b"\n"), b"before\n")
        d.signal(signal.SIGTERM)
        mtd.wait_port_closed(self.port, timeout=5 * SLOW)
        c.send(b"after\n")
        self.assertEqual(c.recv_until(b"\n"), b"after\n")
        self.assertIsNone(d.proc.poll(), "exited with a session open")
        c.close_notify()
        c.recv_to_eof(timeout=10)
        c.close()
        self.assertEqual(d.wait(15), 0, d.log[-3000:])

    def test_shutdown_timeout_cuts_open_session_and_exits_0(self):
        d = self.start(shutdown_timeout="1s")
        c = TlsConn(self.port)
        c.send(b"x\n")
        self.assertEqual(c.recv_until(b"\n"), b"x\n")
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait(20), 0, d.log[-3000:])
        self.assertGreaterEqual(time.monotonic() - t0, 0.5,
                                "exited before shutdown_timeout")
        c.recv_to_eof(timeout=10)
        c.close()

    def test_sigint_without_sessions_exits_0(self):
        d = self.start()
        d.signal(signal.SIGINT)
        self.assertEqual(d.wait(15), 0, d.log[-3000:])


class CommandLine(unittest.TestCase):
    def good_config(self, port=None):
        c = mtd.certs()
        return mtd.render_config(config({"smtps": listener(
            "smtp", "127.0.0.1:25", port or free_port(),
            certs=[c.server_ecdsa])}))

    def write(self, text):
        path = os.path.join(mtd.tempdir("mtd-cfg-"), "mailtlsd.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_check_good_config(self):
        rc, out = Mailtlsd.run_args(["-t", "-c", self.write(
            self.good_config())])
        self.assertEqual(rc, 0, out)

    def test_check_bad_configs_report_file_and_line(self):
        c = mtd.certs().server_ecdsa
        text = "\n".join([
            "[global]",                                  # 1
            "log_level = debug",                         # 2
            "bogus_key = 1",                             # 3 unknown key
            "[smtps]",                                   # 4
            "listen = 127.0.0.1:%d" % free_port(),       # 5
            "protocol = smtq",                           # 6 bad value
            "client_tls = implicit",                     # 7
            "backend = 127.0.0.1:25",                    # 8
            "cert = %s" % c.cert,                        # 9
            "key = %s" % c.key,                          # 10
            "handshake_timeout = soon",                  # 11 bad duration
            "",
        ])
        path = self.write(text)
        rc, out = Mailtlsd.run_args(["-t", "-c", path])
        self.assertEqual(rc, 1, out)
        for line in (3, 6, 11):
            self.assertRegex(out, r"(?m)^%s:%d: \S" % (re.escape(path), line),
                             "no %s:%d: problem reported" % (path, line))

    def test_check_missing_required_key_and_duplicate_listen(self):
        c = mtd.certs().server_ecdsa
        port = free_port()
        text = "\n".join([
            "[a]",                                       # 1
            "listen = 127.0.0.1:%d" % port,              # 2
            "protocol = imap",                           # 3
            "client_tls = implicit",                     # 4
            "cert = %s" % c.cert,                        # 5
            "key = %s" % c.key,                          # 6 (no backend)
            "[b]",                                       # 7
            "listen = 127.0.0.1:%d" % port,              # 8 duplicate
            "protocol = imap",                           # 9
            "client_tls = implicit",                     # 10
            "backend = 127.0.0.1:143",                   # 11
            "cert = %s" % c.cert,                        # 12
            "key = %s" % c.key,                          # 13
            "",
        ])
        path = self.write(text)
        rc, out = Mailtlsd.run_args(["-t", "-c", path])
        self.assertEqual(rc, 1, out)
        p = re.escape(path)
        self.assertRegex(out, r"(?im)^%s:[1-6]: .*backend" % p)
        self.assertRegex(out, r"(?m)^%s:(2|7|8): \S" % p)

    def test_check_missing_cert_file_is_named(self):
        missing = os.path.join(mtd.tempdir("mtd-nocert-"), "nope.crt")
        text = self.good_config().replace(
            mtd.certs().server_ecdsa.cert, missing)
        self.assertIn(missing, text)
        rc, out = Mailtlsd.run_args(["-t", "-c", self.write(text)])
        self.assertNotEqual(rc, 0, out)
        self.assertIn(missing, out)

    def test_start_with_missing_cert_exits_2(self):
        missing = os.path.join(mtd.tempdir("mtd-nocert-"), "nope.crt")
        text = self.good_config().replace(
            mtd.certs().server_ecdsa.cert, missing)
        d = Mailtlsd(text, tc=self).spawn()
        self.assertEqual(d.wait(15), 2, d.log)
        self.assertIn(missing, d.log)

    def test_port_in_use_exits_2(self):
        busy = socket.socket()
        busy.bind((LOOPBACK, 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        d = Mailtlsd(self.good_config(port), tc=self).spawn()
        self.assertEqual(d.wait(15), 2, d.log)
        self.assertIn(str(port), d.log)

    def test_version(self):
        rc, out = Mailtlsd.run_args(["--version"])
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"\d+\.\d+")

    def test_help(self):
        rc, out = Mailtlsd.run_args(["-h"])
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"(?i)usage")
        self.assertIn("-c", out)
        self.assertIn("-t", out)


if __name__ == "__main__":
    unittest.main()
