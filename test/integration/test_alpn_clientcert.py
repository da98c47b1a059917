"""
Trust at the edges, part 2: ALPN (the ALPACA mitigation) and client
certificates (SPEC "ALPN", "TLS policy"; config keys alpn, client_ca,
client_verify; the close log line's client_cert field).
"""

import socket
import ssl
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK

HOSTNAME = mtd.FRONT_HOSTNAME
SNI = "mail.example.test"

# protocol -> (backend greeting, goodbye command, backend's reply to it)
PROTOCOLS = {
    "smtp": (b"220 fake.example.test ESMTP\r\n", b"QUIT",
             b"221 2.0.0 bye\r\n"),
    "imap": (b"* OK fake ready\r\n", b"z LOGOUT",
             b"* BYE bye\r\nz OK done\r\n"),
    "pop3": (b"+OK fake ready\r\n", b"QUIT", b"+OK bye\r\n"),
}
REFUSED = (ssl.SSLError, Closed, ConnectionError, socket.timeout)


listener = mtd.listener_conf


def config(listeners, **glob):
    return mtd.daemon_conf(listeners, **dict({"workers": "2"}, **glob))


parse_kv = mtd.parse_kv


def close_of(d, cport):
    """The event=close line of the client whose port is cport."""
    want = "%s:%d" % (LOOPBACK, cport)

    def find():
        for l in d.log.splitlines():
            if " event=close " in l:
                e = parse_kv(l)
                if e.get("client") == want:
                    return e
        return None
    try:
        return mtd.wait_for(find, 10 * SLOW, 0.02, "close line of %s" % want)
    except mtd.HarnessError as e:
        raise AssertionError("%s\n--- log:\n%s" % (e, d.log[-4000:]))


class Attempt:
    """One client connection: served (greeting read) or refused (the
    exception, TLS alerts included)."""

    def __init__(self, port, ctx, greeting):
        self.served = False
        self.error = None
        self.alpn = None
        self.version = None
        s = socket.create_connection((LOOPBACK, port), timeout=10 * SLOW)
        self.cport = s.getsockname()[1]
        c = None
        try:
            c = TlsConn(port, sock=s, ctx=ctx, server_hostname=SNI)
            self.alpn = c.tls.selected_alpn_protocol()
            self.version = c.version
            self.greeting = c.recv_until(b"\r\n", timeout=10)
            self.served = self.greeting == greeting
            if not self.served:
                self.error = "unexpected greeting %r" % self.greeting
        except REFUSED as e:
            self.error = e
        finally:
            (c or s).close()

    def __repr__(self):
        return "Attempt(served=%r, alpn=%r, error=%r)" % (
            self.served, self.alpn, self.error)


def backend_for(protocol, tc):
    greeting, bye, reply = PROTOCOLS[protocol]
    return FakeBackend(FakeBackend.lines(greeting, [(bye, reply)]), tc=tc)


class Alpn(unittest.TestCase):
    """alpn = strict (the default) on smtp, imap and pop3 listeners, and
    alpn = off on the same protocols."""

    @classmethod
    def setUpClass(cls):
        cls.backends = {p: backend_for(p, None) for p in PROTOCOLS}
        ports = mtd.free_ports(6)
        cls.strict = dict(zip(PROTOCOLS, ports[:3]))
        cls.off = dict(zip(PROTOCOLS, ports[3:]))
        lst = {}
        for p in PROTOCOLS:
            lst["%s-strict" % p] = listener(p, cls.backends[p].addr,
                                            cls.strict[p])
            lst["%s-off" % p] = listener(p, cls.backends[p].addr,
                                         cls.off[p], alpn="off")
        # STARTTLS on smtp: the same rule for the upgraded connection
        cls.st_backend = FakeBackend(FakeBackend.lines(
            PROTOCOLS["smtp"][0],
            [(b"EHLO", b"250-fake.example.test\r\n250 PIPELINING\r\n"),
             (b"QUIT", PROTOCOLS["smtp"][2])]))
        cls.starttls = mtd.free_port()
        lst["smtp-starttls"] = listener("smtp", cls.st_backend.addr,
                                        cls.starttls, client_tls="starttls")
        cls.d = Mailtlsd(config(lst), name="alpn").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        for b in list(cls.backends.values()) + [cls.st_backend]:
            b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def attempt(self, protocol, port, alpn, **kw):
        ctx = mtd.client_context(alpn=alpn, **kw)
        return Attempt(port, ctx, PROTOCOLS[protocol][0])

    def assert_refused_120(self, a, protocol):
        self.assertFalse(a.served, a)
        # the no_application_protocol alert (120), as OpenSSL names it
        self.assertRegex(str(a.error), r"(?i)NO_APPLICATION_PROTOCOL|"
                         r"no application protocol", a)
        e = close_of(self.d, a.cport)
        self.assertEqual(e.get("tls_version"), "", e)
        self.assertEqual(e.get("bytes_in"), "0", e)

    def test_foreign_alpn_only_refused_with_alert_120(self):
        for p in PROTOCOLS:
            for version in ("TLSv1_3", "TLSv1_2"):
                with self.subTest(protocol=p, tls=version):
                    n = len(self.backends[p].conns)
                    v = getattr(ssl.TLSVersion, version)
                    a = self.attempt(p, self.strict[p], ["http/1.1"],
                                     minimum=v, maximum=v)
                    self.assert_refused_120(a, p)
                    self.assertEqual(len(self.backends[p].conns), n,
                                     "a refused client reached the backend")

    def test_other_mail_protocol_id_refused(self):
        """Cross-protocol (ALPACA): a client that wants imap on the smtp
        port, and so on, is refused too."""
        for p, other in (("smtp", "imap"), ("imap", "pop3"),
                         ("pop3", "smtp")):
            with self.subTest(protocol=p, offered=other):
                a = self.attempt(p, self.strict[p], [other])
                self.assert_refused_120(a, p)

    def test_openssl_s_client_sees_alert_120(self):
        mtd.need_tool("openssl")
        for p in PROTOCOLS:
            with self.subTest(protocol=p):
                r = mtd.run(["openssl", "s_client", "-connect",
                             "%s:%d" % (LOOPBACK, self.strict[p]),
                             "-servername", SNI, "-CAfile", mtd.certs().ca,
                             "-alpn", "http/1.1", "-msg"],
                            input=b"", timeout=30 * SLOW)
                out = r.stdout + r.stderr
                self.assertNotEqual(r.returncode, 0, out)
                self.assertRegex(out, r"(?i)alert.*(no.application.protocol|"
                                 r"number 120)", out)
                # the alert came from the server (<<<), it was not a reset
                self.assertRegex(out, r"<<< .*Alert", out)

    def test_own_id_offered_is_served_and_selected(self):
        for p in PROTOCOLS:
            for offer in ([p], ["http/1.1", p], [p, "h2"]):
                with self.subTest(protocol=p, offered=offer):
                    a = self.attempt(p, self.strict[p], offer)
                    self.assertTrue(a.served, a)
                    self.assertEqual(a.alpn, p)

    def test_no_alpn_is_served(self):
        for p in PROTOCOLS:
            with self.subTest(protocol=p):
                a = self.attempt(p, self.strict[p], None)
                self.assertTrue(a.served, a)
                self.assertIsNone(a.alpn)

    def starttls_attempt(self, alpn):
        """EHLO, STARTTLS, then a handshake offering alpn; return
        (error or None, selected ALPN, reply to EHLO over TLS)."""
        s = socket.create_connection((LOOPBACK, self.starttls),
                                     timeout=10 * SLOW)
        c = None
        try:
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
            f.close()
            try:
                c = TlsConn(self.starttls, sock=s, server_hostname=SNI,
                            ctx=mtd.client_context(alpn=alpn))
                c.send(b"EHLO a.example\r\n")
                reply = c.recv_until(b"250 ")
                return None, c.tls.selected_alpn_protocol(), reply
            except REFUSED as e:
                return e, None, None
        finally:
            (c or s).close()

    def test_starttls_handshake_applies_alpn_too(self):
        err, alpn, _ = self.starttls_attempt(["http/1.1"])
        self.assertRegex(str(err), r"(?i)NO_APPLICATION_PROTOCOL|"
                         r"no application protocol")
        err, alpn, reply = self.starttls_attempt(["smtp"])
        self.assertIsNone(err)
        self.assertEqual(alpn, "smtp")
        self.assertIn(b"250", reply)
        err, alpn, reply = self.starttls_attempt(None)
        self.assertIsNone(err)
        self.assertIsNone(alpn)

    def test_alpn_off_serves_everyone(self):
        for p in PROTOCOLS:
            for offer in (["http/1.1"], [p], None, ["http/1.1", p]):
                with self.subTest(protocol=p, offered=offer):
                    a = self.attempt(p, self.off[p], offer)
                    self.assertTrue(a.served, a)
                    # "announces the id but serves everyone"
                    self.assertEqual(a.alpn, p if offer and p in offer
                                     else None)


class ClientCertificates(unittest.TestCase):
    """client_ca = the test CA; client_verify = required and optional."""

    GREETING = PROTOCOLS["smtp"][0]

    @classmethod
    def setUpClass(cls):
        c = mtd.certs()
        cls.good = c.client
        # a client certificate of the same shape, from a CA mailtlsd does
        # not trust
        cls.foreign = c.issue("foreign-client", names=(), ips=(),
                              client=True, ca=c.unknown_ca_pair,
                              cn="foreign.example.test")
        cls.b = backend_for("smtp", None)
        cls.req, cls.opt = mtd.free_ports(2)
        cls.d = Mailtlsd(config({
            "req": listener("smtp", cls.b.addr, cls.req, client_ca=c.ca,
                            client_verify="required"),
            "opt": listener("smtp", cls.b.addr, cls.opt, client_ca=c.ca,
                            client_verify="optional"),
        }), name="clientcert").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def attempt(self, port, cert, version):
        v = getattr(ssl.TLSVersion, version)
        ctx = mtd.client_context(cert=cert, minimum=v, maximum=v)
        return Attempt(port, ctx, self.GREETING)

    def each(self):
        for listener_name, port in (("required", self.req),
                                    ("optional", self.opt)):
            for version in ("TLSv1_3", "TLSv1_2"):
                yield listener_name, port, version

    def test_good_certificate_served_and_logged(self):
        for name, port, version in self.each():
            with self.subTest(client_verify=name, tls=version):
                a = self.attempt(port, self.good, version)
                self.assertTrue(a.served, a)
                e = close_of(self.d, a.cport)
                self.assertRegex(e.get("client_cert", ""),
                                 r"(^|[,/ ])CN=client\.example\.test($|[,/ ])",
                                 e)

    def test_missing_certificate_required_fails(self):
        for version in ("TLSv1_3", "TLSv1_2"):
            with self.subTest(tls=version):
                n = len(self.b.conns)
                a = self.attempt(self.req, None, version)
                self.assertFalse(a.served, a)
                # told by an alert (certificate_required / handshake_failure
                # / bad_certificate), not a bare reset
                self.assertRegex(str(a.error), r"(?i)alert", a)
                e = close_of(self.d, a.cport)
                self.assertEqual(e.get("reason"), "tls_handshake_failed", e)
                self.assertEqual(e.get("bytes_in"), "0", e)
                self.assertEqual(len(self.b.conns), n,
                                 "a refused client reached the backend")

    def test_missing_certificate_optional_served_without_subject(self):
        for version in ("TLSv1_3", "TLSv1_2"):
            with self.subTest(tls=version):
                a = self.attempt(self.opt, None, version)
                self.assertTrue(a.served, a)
                e = close_of(self.d, a.cport)
                self.assertEqual(e.get("client_cert"), "", e)

    def test_foreign_ca_certificate_fails(self):
        for name, port, version in self.each():
            with self.subTest(client_verify=name, tls=version):
                n = len(self.b.conns)
                a = self.attempt(port, self.foreign, version)
                self.assertFalse(a.served, a)
                self.assertRegex(str(a.error), r"(?i)alert", a)
                e = close_of(self.d, a.cport)
                self.assertEqual(e.get("reason"), "tls_handshake_failed", e)
                self.assertEqual(e.get("client_cert"), "", e)
                self.assertEqual(len(self.b.conns), n,
                                 "a refused client reached the backend")


if __name__ == "__main__":
    unittest.main()
