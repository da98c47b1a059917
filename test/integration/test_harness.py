"""
The test harness itself (test/helpers/mtd.py), without mailtlsd: the real
Postfix and Dovecot deliver and serve mail, the fake backend records bytes,
the certificates are what the other tests assume.  When this fails, the
other integration tests' failures say nothing about mailtlsd.
"""

import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import subprocess
import threading
import unittest
import uuid

import mtd
from mtd import FakeBackend, LOOPBACK


class RealServersWork(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rs = mtd.RealServers().start()

    @classmethod
    def tearDownClass(cls):
        cls.rs.stop()

    def test_postfix_delivers_and_dovecot_serves_over_imap_and_pop3(self):
        tok = "mtd-" + uuid.uuid4().hex
        rcpt = self.rs.address("bob")
        with smtplib.SMTP(LOOPBACK, self.rs.smtp_port, timeout=30) as s:
            s.ehlo("client.example.org")
            self.assertEqual(s.sendmail("x@example.org", [rcpt],
                                        "Subject: %s\r\n\r\n%s\r\n" %
                                        (tok, tok)), {})
        self.rs.wait_delivered("bob", tok)
        m = imaplib.IMAP4(LOOPBACK, self.rs.imap_port, timeout=30)
        m.login("bob", self.rs.users["bob"])
        m.select("INBOX")
        typ, data = m.search(None, "SUBJECT", tok)
        self.assertEqual(len(data[0].split()), 1)
        m.logout()
        p = poplib.POP3(LOOPBACK, self.rs.pop3_port, timeout=30)
        p.user("bob")
        p.pass_(self.rs.users["bob"])
        self.assertGreaterEqual(p.stat()[0], 1)
        p.quit()

    def test_wrong_password_is_refused(self):
        m = imaplib.IMAP4(LOOPBACK, self.rs.imap_port, timeout=30)
        with self.assertRaises(imaplib.IMAP4.error):
            m.login("bob", "not-the-password")
        m.logout()


class FakeBackendRecords(unittest.TestCase):
    def test_records_every_byte_and_replies(self):
        b = FakeBackend(FakeBackend.script(b"220 hi\r\n",
                                           [(b"\r\n", b"250 ok\r\n")]),
                        tc=self)
        with socket.create_connection((LOOPBACK, b.port), timeout=10) as s:
            f = s.makefile("rb")
            self.assertEqual(f.readline(), b"220 hi\r\n")
            s.sendall(b"EHLO x\r\nextra\x00bytes")
            self.assertEqual(f.readline(), b"250 ok\r\n")
            s.shutdown(socket.SHUT_WR)
            b.wait_closed(0)
        self.assertEqual(b.received(0), b"EHLO x\r\nextra\x00bytes")
        b.check()

    def test_echo_big(self):
        b = FakeBackend(FakeBackend.echo, tc=self, record=False)
        data = os.urandom(4 * 1024 * 1024)
        with socket.create_connection((LOOPBACK, b.port), timeout=30) as s:
            t = threading.Thread(target=s.sendall, args=(data,))
            t.start()
            got = bytearray()
            while len(got) < len(data):
                got += s.recv(1 << 20)
            t.join()
        self.assertEqual(mtd.sha256(bytes(got)), mtd.sha256(data))


class TlsClientAndCerts(unittest.TestCase):
    """TlsConn against a GnuTLS server using the certificates."""

    def test_tlsconn_against_gnutls_serv(self):
        c = mtd.certs()
        port = mtd.free_port()
        srv = subprocess.Popen(
            [mtd.need_tool("gnutls-serv"), "--echo", "-p", str(port),
             "--x509certfile", c.server_ecdsa.chain,
             "--x509keyfile", c.server_ecdsa.key],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(mtd.stop_process, srv)
        mtd.wait_port(port, proc=srv)
        t = mtd.TlsConn(port)
        self.assertIn(t.version, ("TLSv1.2", "TLSv1.3"))
        t.send(b"hello\n")
        self.assertEqual(t.recv_until(b"\n"), b"hello\n")
        t.close()

    def test_tlsconn_half_close_keeps_reading(self):
        """close_notify ends our direction only: a reply sent after the
        server saw it still arrives (what the relay tests rely on)."""
        c = mtd.certs()
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(c.server_ecdsa.cert, c.server_ecdsa.key)
        ls = socket.socket()
        ls.bind((LOOPBACK, 0))
        ls.listen(1)
        self.addCleanup(ls.close)
        got = []

        def serve():
            s, _ = ls.accept()
            s.settimeout(10)
            s = sctx.wrap_socket(s, server_side=True)
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            got.append(data)
            s.sendall(b"got %d\n" % len(data))
            s.unwrap()
            s.close()
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        t = mtd.TlsConn(ls.getsockname()[1])
        payload = os.urandom(1 << 20)
        t.send(payload)
        t.close_notify()
        self.assertEqual(t.recv_to_eof(), b"got %d\n" % len(payload))
        self.assertEqual(t.eof_kind, "close_notify")
        th.join(10)
        self.assertEqual(got, [payload])
        t.close()

    def test_certificates_verify_as_expected(self):
        c = mtd.certs()

        def verify(pair, ca=None):
            p = mtd.run([mtd.need_tool("certtool"), "--verify",
                         "--load-ca-certificate", ca or c.ca,
                         "--infile", pair.cert])
            return p.returncode == 0
        self.assertTrue(verify(c.server_ecdsa))
        self.assertTrue(verify(c.server_rsa))
        self.assertTrue(verify(c.client))
        self.assertTrue(verify(c.other_name))
        self.assertFalse(verify(c.expired))
        self.assertFalse(verify(c.unknown_ca))
        self.assertTrue(verify(c.unknown_ca, c.unknown_ca_pair[1]))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(c.server_rsa.cert, c.server_rsa.key)


if __name__ == "__main__":
    unittest.main()
