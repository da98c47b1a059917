"""
Certificates chosen by SNI, and the connect and idle timeouts (SPEC:
"Several pairs per listener are chosen by SNI"; connect_timeout,
idle_timeout; "When things fail").
"""

import socket
import ssl
import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK

HOSTNAME = "front.example.test"


class SniSelection(unittest.TestCase):

    def test_each_pair_served_for_its_name(self):
        c = mtd.certs()
        main, other = c.server_ecdsa, c.other_name
        b = FakeBackend(FakeBackend.greet_echo(b"hello\n"), tc=self)
        port = mtd.free_port()
        Mailtlsd({
            "global": {"shutdown_timeout": "2s"},
            "front": {"listen": "%s:%d" % (LOOPBACK, port),
                      "protocol": "none", "client_tls": "implicit",
                      "backend": b.addr, "certs": [main, other]},
        }, tc=self, name="sni").start()

        def leaf(pair):
            with open(pair.cert) as f:
                return ssl.PEM_cert_to_DER_cert(f.read())

        for name, pair in (("mail.example.test", main),
                           ("other.example.test", other),
                           ("localhost", main)):
            t = TlsConn(port, server_hostname=name)
            self.assertEqual(t.peer_cert_der(), leaf(pair),
                             "wrong certificate for SNI %s" % name)
            self.assertEqual(t.recv_until(b"\n"), b"hello\n")
            t.close()


class Timeouts(unittest.TestCase):

    def test_connect_timeout_gives_the_unavailable_reply(self):
        # A backend whose accept queue is full: the kernel drops further
        # SYNs, so a connect neither succeeds nor fails by itself.
        full = socket.socket()
        full.bind((LOOPBACK, 0))
        full.listen(0)
        self.addCleanup(full.close)
        fillers = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(full.getsockname())
            fillers.append(f)
            self.addCleanup(f.close)
        probe = socket.socket()
        probe.settimeout(0.5)
        self.addCleanup(probe.close)
        with self.assertRaises(socket.timeout,
                               msg="the backend's queue is not full"):
            probe.connect(full.getsockname())

        port = mtd.free_port()
        d = Mailtlsd({
            "global": {"shutdown_timeout": "2s", "log_level": "info"},
            "smtps": {"listen": "%s:%d" % (LOOPBACK, port),
                      "protocol": "smtp", "client_tls": "implicit",
                      "backend": "%s:%d" % full.getsockname(),
                      "certs": [mtd.certs().server_ecdsa],
                      "hostname": HOSTNAME, "connect_timeout": "1s"},
        }, tc=self, name="ctimeout").start()
        t = TlsConn(port, timeout=20)
        self.assertEqual(t.recv_to_eof(timeout=20),
                         b"421 4.3.0 %s Service not available\r\n" %
                         HOSTNAME.encode())
        t.close()
        d.wait_log(r"connect timeout")

    def test_idle_session_closed_busy_session_kept(self):
        b = FakeBackend(FakeBackend.greet_echo(b"hello\n"), tc=self)
        port = mtd.free_port()
        d = Mailtlsd({
            "global": {"shutdown_timeout": "2s"},
            "front": {"listen": "%s:%d" % (LOOPBACK, port),
                      "protocol": "none", "client_tls": "implicit",
                      "backend": b.addr,
                      "certs": [mtd.certs().server_ecdsa],
                      "idle_timeout": "1500ms"},
        }, tc=self, name="idle").start()

        busy = TlsConn(port)
        self.assertEqual(busy.recv_until(b"\n"), b"hello\n")
        idle = TlsConn(port)
        self.assertEqual(idle.recv_until(b"\n"), b"hello\n")

        # Traffic every 0.3 s for well over idle_timeout keeps one open
        # while the other, silent, is closed.
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            busy.send(b"tick\n")
            self.assertEqual(busy.recv_until(b"\n"), b"tick\n")
            time.sleep(0.3)     # pacing the traffic, not waiting for it
        self.assertEqual(idle.recv_to_eof(timeout=10), b"")
        busy.send(b"still\n")
        self.assertEqual(busy.recv_until(b"\n"), b"still\n")
        busy.close()
        idle.close()
        d.wait_log(r"reason=idle_timeout")


if __name__ == "__main__":
    unittest.main()
