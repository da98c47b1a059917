"""
Every session ends (SPEC: "When things fail", "Logs and metrics"; issue 12
items 0, 8, 9, 14, 15).

Whatever side ends first, in whatever phase, with or without lines still in
the parser and bytes still queued, the session is finished at once: the
close line is logged within a second of the end, and
mailtlsd_connections_active goes back to 0.  On mail listeners a backend that
closes ends the session (the client gets what was sent, a close_notify and a
FIN) instead of waiting for the client; protocol = none keeps half-close.
A backend that fails during its STARTTLS dialogue or TLS handshake is a
backend failure (the unavailable reply, backend_errors).  A client that
hangs up mid-handshake, or that rejects the certificate with a TLS 1.3
alert, is counted as a handshake failure of the right class; a client that
resets after the reply to QUIT/LOGOUT is a normal close.
"""

import imaplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK
from test_metrics import scrape, series
from test_backend_tls import NO_DEFAULT_DOVECOT_LISTENERS, BACKEND_NAME

GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n"
UNAVAILABLE = re.compile(rb"^\* BYE \[UNAVAILABLE\]")
# The end of a session must be noticed at once: the close line follows the
# end by well under a second (the linger bound is 5 s, the idle timeout here
# 60 s).
PROMPT = 1.0 * SLOW
NORMAL = ("client_closed", "backend_closed")


def closes(d):
    return [mtd.parse_kv(l) for l in d.log.splitlines()
            if "event=close " in l]


class Daemon:
    """One mailtlsd with /metrics, for one scenario."""

    def __init__(self, tc, listeners, **glob):
        used = {v["listen"] for v in listeners.values()}
        self.mport = mtd.free_port()
        while "%s:%d" % (LOOPBACK, self.mport) in used:
            self.mport = mtd.free_port()
        glob = dict({"log_level": "info"}, **glob)
        cfg = mtd.daemon_conf(listeners, metrics="%s:%d" %
                              (LOOPBACK, self.mport), **glob)
        self.d = Mailtlsd(cfg, tc=tc, name="teardown").start()
        self.tc = tc
        # start() probed each listener: let those sessions end first
        mtd.wait_for(lambda: self.nclosed() >= len(listeners), 10 * SLOW,
                     0.02, "the start-up probes' close lines")

    def nclosed(self):
        return len(closes(self.d))

    def wait_closed(self, before, what, timeout=PROMPT):
        """The next close line, within ${timeout} of now."""
        t0 = time.monotonic()
        try:
            mtd.wait_for(lambda: self.nclosed() > before, timeout, 0.01,
                         "the close line")
        except mtd.HarnessError:
            self.tc.fail("%s: no close line within %.1fs\n--- log:\n%s" %
                         (what, time.monotonic() - t0, self.d.log[-4000:]))
        return closes(self.d)[before]

    def metric(self, name, **labels):
        return series(scrape(self.mport), name, **labels)

    def assert_idle(self, listener, what):
        last = {}

        def zero():
            last["v"] = self.metric("mailtlsd_connections_active",
                                    listener=listener)
            return last["v"] == 0
        try:
            mtd.wait_for(zero, PROMPT, 0.02, "connections_active == 0")
        except mtd.HarnessError:
            self.tc.fail("%s: connections_active = %r\n--- log:\n%s" %
                         (what, last.get("v"), self.d.log[-4000:]))


def full_backend(tc):
    """An address whose connects neither succeed nor fail (a full accept
    queue): the session stays in phase connecting."""
    full = socket.socket()
    full.bind((LOOPBACK, 0))
    full.listen(0)
    tc.addCleanup(full.close)
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        tc.addCleanup(f.close)
    return "%s:%d" % full.getsockname()


def partial_client_hello(port):
    """A TCP connection that sent the first half of a real ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    s = socket.create_connection((LOOPBACK, port), timeout=10 * SLOW)
    s.sendall(hello[:len(hello) // 2])
    return s


class Gate:
    """A FakeBackend handler: greeting, then wait for the lines it is told
    to expect, report them, and close when the test says so."""

    def __init__(self, greeting=GREETING, expect=None, tail=b""):
        self.greeting = greeting
        self.expect = expect
        self.tail = tail
        self.got = threading.Event()
        self.end = threading.Event()

    def __call__(self, c):
        if self.greeting:
            c.send(self.greeting)
        if self.expect:
            c.recv_until(self.expect, timeout=30)
        self.got.set()
        self.end.wait(30)
        if self.tail:
            c.send(self.tail)


# --------------------------------------------------------------------------

class EverySideEveryPhase(unittest.TestCase):
    """The table: side that ends x phase x pending input (x queued bytes)."""

    def listener(self, backend, port, **kw):
        return mtd.listener_conf("imap", backend, port,
                                 idle_timeout="60s", **kw)

    # -- relay
    def relay(self, side, pending, queued=False):
        tail = partial = b""
        if queued:
            # 2 MB of untagged lines the client reads only later
            tail = b"* OK " + b"x" * 90 + b"\r\n"
            tail = tail * (2 * 1024 * 1024 // len(tail))
        if side == "backend" and pending:
            # half a line, never finished
            partial = b"* 1 FETCH (FLAGS"
        expect = b"c FOO\r\n" if pending and side == "client" else None
        gate = Gate(expect=expect, tail=tail + partial)
        be = FakeBackend(gate, tc=self)
        port = mtd.free_port()
        d = Daemon(self, {"imaps": self.listener(be.addr, port)})
        c = TlsConn(port, timeout=10 * SLOW)
        self.addCleanup(c.close)
        self.assertEqual(c.recv_until(b"\r\n"), GREETING)
        if pending and side == "client":
            # the empty line is held until "a FOO" is answered: never
            c.send(b"a FOO\r\nb FOO\r\nc FOO\r\n\r\n")
        self.assertTrue(gate.got.wait(10 * SLOW))
        before = d.nclosed()
        what = "relay, %s ends, pending=%s queued=%s" % (side, pending,
                                                         queued)
        if side == "client":
            c.sock.close()
            rec = d.wait_closed(before, what)
            gate.end.set()
            self.assertEqual(rec["reason"], "client_closed", rec)
        else:
            gate.end.set()
            if queued:
                time.sleep(0.3)         # the bytes wait for the client
                # every whole line (a partial line is not a reply)
                data = c.recv_to_eof(timeout=10 * SLOW)
                self.assertEqual(len(data), len(tail), what)
            rec = d.wait_closed(before, what)
            self.assertEqual(rec["reason"], "backend_closed", rec)
            if not queued:
                # the client is closed without having to close first
                c.recv_to_eof(timeout=PROMPT)
        self.assertEqual(rec["phase"], "relay", rec)
        d.assert_idle("imaps", what)

    def test_relay(self):
        for side in ("client", "backend"):
            for pending in (False, True):
                with self.subTest(side=side, pending=pending):
                    self.relay(side, pending)

    def test_relay_with_writes_queued(self):
        for pending in (False, True):
            with self.subTest(pending=pending):
                self.relay("backend", pending, queued=True)

    # -- the client's handshake (implicit TLS)
    def test_handshake(self):
        be = FakeBackend(Gate(), tc=self)
        port = mtd.free_port()
        d = Daemon(self, {"imaps": self.listener(be.addr, port)})
        for pending in (False, True):
            with self.subTest(pending=pending):
                before = d.nclosed()
                if pending:
                    s = partial_client_hello(port)
                else:
                    s = socket.create_connection((LOOPBACK, port))
                    time.sleep(0.05)
                s.close()
                rec = d.wait_closed(before, "handshake, client ends")
                self.assertEqual(rec["phase"], "handshake", rec)
                d.assert_idle("imaps", "handshake")

    # -- connecting to the backend
    def test_connecting(self):
        port = mtd.free_port()
        d = Daemon(self, {"imaps": self.listener(full_backend(self), port,
                                                 connect_timeout="30s")})
        for pending in (False, True):
            with self.subTest(pending=pending):
                before = d.nclosed()
                c = TlsConn(port, timeout=10 * SLOW)
                if pending:
                    c.send(b"a NOOP\r\nb NOOP\r\n")
                time.sleep(0.1)
                c.sock.close()
                rec = d.wait_closed(before, "connecting, client ends")
                self.assertEqual(rec["phase"], "connecting", rec)
                d.assert_idle("imaps", "connecting")

    # -- the backend's STARTTLS dialogue and TLS handshake
    def backend_setup(self, backend_tls, side, pending):
        if backend_tls == "starttls":
            # greeting, then our STARTTLS, never answered
            gate = Gate(greeting=b"* OK [CAPABILITY IMAP4rev1 STARTTLS] "
                        b"hi\r\n", expect=b"\r\n",
                        tail=b"* OK half a li" if pending else b"")
            phase = "backend_starttls"
        else:
            # no greeting: a TLS server that reads the ClientHello and
            # never answers it
            gate = Gate(greeting=b"", expect=b"\x16",
                        tail=b"\x16\x03\x03\x00" if pending else b"")
            phase = "backend_tls"
        be = FakeBackend(gate, tc=self)
        port = mtd.free_port()
        d = Daemon(self, {"imaps": self.listener(
            be.addr, port, backend_tls=backend_tls,
            backend_ca=mtd.certs().ca, backend_name=BACKEND_NAME,
            connect_timeout="30s")})
        c = TlsConn(port, timeout=10 * SLOW)
        self.addCleanup(c.close)
        c.handshake()
        self.assertTrue(gate.got.wait(10 * SLOW))
        if pending and side == "client":
            c.send(b"a NOOP\r\nb NOOP\r\n")
        time.sleep(0.1)
        before = d.nclosed()
        what = "%s, %s ends, pending=%s" % (phase, side, pending)
        if side == "client":
            c.sock.close()
            rec = d.wait_closed(before, what)
            gate.end.set()
            self.assertEqual(rec["reason"], "client_closed", rec)
        else:
            gate.end.set()
            rec = d.wait_closed(before, what)
            # a backend failure: the protocol's reply, and the metric
            self.assertEqual(rec["reason"], "backend_unavailable", rec)
            self.assertRegex(c.recv_to_eof(timeout=10 * SLOW), UNAVAILABLE)
            self.assertEqual(d.metric("mailtlsd_backend_errors_total",
                                      listener="imaps", kind="tls"), 1)
        self.assertEqual(rec["phase"], phase, rec)
        d.assert_idle("imaps", what)

    def test_backend_starttls(self):
        for side in ("client", "backend"):
            for pending in (False, True):
                with self.subTest(side=side, pending=pending):
                    self.backend_setup("starttls", side, pending)

    def test_backend_tls(self):
        for side in ("client", "backend"):
            for pending in (False, True):
                with self.subTest(side=side, pending=pending):
                    self.backend_setup("implicit", side, pending)

    # -- STARTTLS from the client: our reply, then its handshake
    def test_starttls_handshake(self):
        be = FakeBackend(FakeBackend.lines(GREETING, [(b"", b"")]), tc=self)
        port = mtd.free_port()
        d = Daemon(self, {"imap": self.listener(be.addr, port,
                                                client_tls="starttls")})
        for pending in (False, True):
            with self.subTest(pending=pending):
                before = d.nclosed()
                s = socket.create_connection((LOOPBACK, port),
                                             timeout=10 * SLOW)
                f = s.makefile("rb")
                f.readline()
                s.sendall(b"a STARTTLS\r\n" +
                          (b"b NOOP\r\n" if pending else b""))
                self.assertTrue(f.readline().startswith(b"a OK"))
                f.close()
                s.close()
                rec = d.wait_closed(before, "starttls, client ends")
                self.assertIn(rec["phase"], ("starttls",
                                             "starttls_handshake"), rec)
                d.assert_idle("imap", "starttls")


class BackendClosesOnMailListeners(unittest.TestCase):
    """Item 8: the client is closed after the backend's last word; SIGTERM
    does not wait for such sessions; protocol = none keeps half-close."""

    def test_client_closed_after_the_logout_reply(self):
        be = FakeBackend(FakeBackend.lines(GREETING, [
            (b"a LOGOUT", b"* BYE bye\r\na OK done\r\n"),
            (b"a ", None)]), tc=self)
        port = mtd.free_port()
        d = Daemon(self, {"imaps": mtd.listener_conf(
            "imap", be.addr, port, idle_timeout="60s")},
            shutdown_timeout="30s")
        c = TlsConn(port, timeout=10 * SLOW)
        self.addCleanup(c.close)
        c.recv_until(b"\r\n")
        before = d.nclosed()
        c.send(b"a LOGOUT\r\n")
        self.assertEqual(c.recv_until(b"a OK done\r\n"),
                         b"* BYE bye\r\na OK done\r\n")
        # Dovecot closes after LOGOUT's reply; so does this backend ("a "
        # -> None closes): the client gets close_notify and EOF at once.
        c.send(b"a NOOP\r\n")
        self.assertEqual(c.recv_to_eof(timeout=PROMPT), b"")
        rec = d.wait_closed(before, "backend closed after LOGOUT")
        self.assertEqual(rec["reason"], "backend_closed", rec)
        d.assert_idle("imaps", "after LOGOUT")
        # nothing is left for SIGTERM to wait for
        t0 = time.monotonic()
        self.assertEqual(d.d.stop(timeout=20), 0)
        self.assertLess(time.monotonic() - t0, 10.0,
                        "SIGTERM waited for a finished session")

    def test_sigterm_does_not_wait_for_a_backend_closed_session(self):
        gate = Gate(expect=b"a LOGOUT\r\n", tail=b"* BYE\r\na OK\r\n")
        be = FakeBackend(gate, tc=self)
        port = mtd.free_port()
        d = Daemon(self, {"imaps": mtd.listener_conf(
            "imap", be.addr, port, idle_timeout="60s")},
            shutdown_timeout="30s")
        c = TlsConn(port, timeout=10 * SLOW)
        self.addCleanup(c.close)
        c.recv_until(b"\r\n")
        c.send(b"a LOGOUT\r\n")
        self.assertTrue(gate.got.wait(10 * SLOW))
        gate.end.set()
        c.recv_until(b"a OK\r\n")
        # the client stays connected and says nothing
        t0 = time.monotonic()
        d.d.signal(signal.SIGTERM)
        self.assertEqual(d.d.wait(timeout=20), 0)
        self.assertLess(time.monotonic() - t0, 10.0,
                        "SIGTERM waited %.1fs (shutdown_timeout 30s) for a "
                        "session whose backend had closed" %
                        (time.monotonic() - t0))

    def test_protocol_none_keeps_half_close(self):
        be = FakeBackend(FakeBackend.half_close_reply(), tc=self)
        port = mtd.free_port()
        Daemon(self, {"raw": mtd.listener_conf("none", be.addr, port)})
        c = TlsConn(port, timeout=10 * SLOW)
        self.addCleanup(c.close)
        c.send(b"x" * 1000)
        c.close_notify()
        self.assertEqual(c.recv_to_eof(), b"got 1000 bytes\r\n")


class BackendFailsDuringItsSetUp(unittest.TestCase):
    """Item 9 with a reset rather than a FIN, on each protocol."""

    def test_reset_during_backend_starttls_each_protocol(self):
        greet = {"smtp": b"220 mail.example.test ESMTP\r\n",
                 "imap": b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
                 "pop3": b"+OK hi\r\n"}
        reply = {"smtp": rb"^421 ", "imap": rb"^\* BYE \[UNAVAILABLE\]",
                 "pop3": rb"^-ERR \[SYS/TEMP\]"}
        for proto in ("smtp", "imap", "pop3"):
            with self.subTest(protocol=proto):
                def h(c, g=greet[proto]):
                    c.send(g)
                    c.recv_until(b"\r\n", timeout=30)
                    c.reset()
                be = FakeBackend(h, tc=self)
                port = mtd.free_port()
                d = Daemon(self, {"l": mtd.listener_conf(
                    proto, be.addr, port, backend_tls="starttls",
                    backend_ca=mtd.certs().ca, backend_name=BACKEND_NAME)})
                c = TlsConn(port, timeout=10 * SLOW)
                self.addCleanup(c.close)
                self.assertRegex(c.recv_to_eof(timeout=10 * SLOW),
                                 reply[proto])
                self.assertEqual(d.metric("mailtlsd_backend_errors_total",
                                          listener="l", kind="tls"), 1)
                d.assert_idle("l", proto)


class HandshakeFailures(unittest.TestCase):
    """Item 14, and the close reason of item 15 for TLS 1.3."""

    def setUp(self):
        be = FakeBackend(FakeBackend.greet_echo(b"hi\r\n"), tc=self)
        self.port = mtd.free_port()
        self.d = Daemon(self, {"t": mtd.listener_conf("none", be.addr,
                                                      self.port)})

    def fails(self, reason):
        return self.d.metric("mailtlsd_tls_handshake_failures_total",
                             listener="t", reason=reason)

    def test_hang_up_mid_handshake_is_a_failure(self):
        before = self.d.nclosed()
        s = partial_client_hello(self.port)
        s.close()
        rec = self.d.wait_closed(before, "hang-up mid-handshake")
        self.assertEqual(rec["phase"], "handshake", rec)
        mtd.wait_for(lambda: self.fails("other") == 1, PROMPT, 0.02,
                     "a handshake failure counted")
        # a probe that connects and closes without a byte is not one
        before = self.d.nclosed()
        socket.create_connection((LOOPBACK, self.port)).close()
        self.d.wait_closed(before, "port probe")
        self.assertEqual(self.fails("other"), 1)

    def test_tls13_client_rejecting_the_certificate_is_an_alert(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)    # trusts nothing
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        before = self.d.nclosed()
        with self.assertRaises(ssl.SSLCertVerificationError):
            with socket.create_connection((LOOPBACK, self.port),
                                          timeout=10 * SLOW) as s:
                ctx.wrap_socket(s, server_hostname="localhost")
        rec = self.d.wait_closed(before, "TLS 1.3 alert")
        self.assertEqual(rec["reason"], "tls_handshake_failed", rec)
        self.assertNotIn("Decryption", rec.get("detail", ""), rec)
        self.assertRegex(rec.get("detail", ""), r"^alert received: ", rec)
        self.assertEqual(self.fails("alert"), 1)
        self.assertEqual(self.fails("other"), 0)


# --------------------------------------------------------------------------
# The reproductions from the issue, against real Dovecot and Postfix

_servers = None


def servers():
    global _servers
    if _servers is None:
        _servers = mtd.RealServers(
            dovecot_ssl="yes",
            dovecot_extra=NO_DEFAULT_DOVECOT_LISTENERS).start()
    return _servers


def tearDownModule():
    global _servers
    if _servers is not None:
        _servers.stop()
        _servers = None


class RealServerReproductions(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.rs = servers()

    def daemon(self):
        rs = self.rs
        self.ports = dict(zip(("implicit", "starttls", "bstarttls", "smtps"),
                              mtd.free_ports(4)))
        be = "%s:%d" % (LOOPBACK, rs.imap_port)
        lst = {
            "implicit": mtd.listener_conf("imap", be,
                                          self.ports["implicit"]),
            "starttls": mtd.listener_conf("imap", be,
                                          self.ports["starttls"],
                                          client_tls="starttls"),
            "bstarttls": mtd.listener_conf(
                "imap", be, self.ports["bstarttls"], backend_tls="starttls",
                backend_ca=mtd.certs().ca, backend_name=BACKEND_NAME),
            "smtps": mtd.listener_conf("smtp", "%s:%d" % (LOOPBACK,
                                                          rs.smtp_port),
                                       self.ports["smtps"]),
        }
        for v in lst.values():
            v["idle_timeout"] = "60s"
        return Daemon(self, lst)

    def test_openssl_s_client_http_request_on_imaps(self):
        mtd.need_tool("openssl")
        d = self.daemon()
        before = d.nclosed()
        p = subprocess.Popen(
            ["openssl", "s_client", "-connect",
             "%s:%d" % (LOOPBACK, self.ports["implicit"]), "-quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        self.addCleanup(p.kill)
        greeting = p.stdout.readline()
        self.assertTrue(greeting.startswith(b"* OK"), greeting)
        p.stdin.write(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: y\r\n"
                      b"Accept: */*\r\nConnection: close\r\n\r\n")
        p.stdin.flush()
        # stdin stays open (the "sleep 8"): mailtlsd must close by itself
        # once Dovecot has closed.
        out = b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20 * SLOW:
            line = p.stdout.readline()
            if not line:
                break
            out += line
        self.assertIn(b"BYE", out)
        rec = d.wait_closed(before, "s_client GET")
        self.assertIn(rec["reason"], NORMAL + ("protocol",), rec)
        d.assert_idle("implicit", "s_client GET")
        p.stdin.close()
        p.wait(10)

    def test_imaplib_logout_loops(self):
        d = self.daemon()
        ctx = mtd.client_context()
        n = 40
        for lst in ("implicit", "starttls", "bstarttls"):
            with self.subTest(listener=lst):
                self.logout_loop(d, ctx, lst, n)

    def logout_loop(self, d, ctx, lst, n):
        for i in range(n):
            before = d.nclosed()
            if lst == "starttls":
                m = imaplib.IMAP4(LOOPBACK, self.ports[lst],
                                  timeout=10 * SLOW)
                m.starttls(ssl_context=ctx)
            else:
                m = imaplib.IMAP4_SSL(LOOPBACK, self.ports[lst],
                                      ssl_context=ctx, timeout=10 * SLOW)
            m.login("alice", self.rs.users["alice"])
            m.logout()
            rec = d.wait_closed(before, "%s logout #%d" % (lst, i))
            self.assertIn(rec["reason"], NORMAL, rec)
        d.assert_idle(lst, "imaplib logout on %s" % lst)

    def test_smtplib_quit_is_a_normal_close(self):
        d = self.daemon()
        ctx = mtd.client_context()
        for i in range(10):
            before = d.nclosed()
            s = smtplib.SMTP_SSL(LOOPBACK, self.ports["smtps"], context=ctx,
                                 timeout=10 * SLOW)
            s.ehlo("client.example.org")
            s.quit()
            rec = d.wait_closed(before, "smtplib quit #%d" % i)
            self.assertIn(rec["reason"], NORMAL, rec)
        d.assert_idle("smtps", "smtplib quit")


if __name__ == "__main__":
    unittest.main()
