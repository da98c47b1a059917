"""
Issue 12 (audit), the TLS items, and issue 13 item 5 (certs.c):

  1   a TLS session (TLS 1.2 or 1.3 ticket) resumes only on the listener, and
      under the client-certificate policy, that issued it; replicas sharing
      ticket_key_file still resume each other; a client_ca reload stops
      resuming the sessions the old CA admitted;
  2   tls_priority is used as written (no GnuTLS default appended), the
      default refuses a TLS 1.2 client that offers only SHA-1 signatures,
      and the effective lists are logged at start-up;
  3   client certificates must carry the TLS client-authentication purpose;
  11  a verified certificate with an empty subject is present (log, PROXY v2);
  12  every JSON log line parses, however long;
  13  start-up warnings: root without user =, keys readable by group/others;
  13.5 certs.c reads each certificate file once.
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, Closed, SLOW, LOOPBACK

import test_proxy_protocol as pp

SNI = "mail.example.test"
GREETING = b"hello from the backend\n"
VERSIONS = ("TLSv1_3", "TLSv1_2")
REFUSED = (ssl.SSLError, Closed, ConnectionError, socket.timeout, EOFError)

listener = mtd.listener_conf
parse_kv = mtd.parse_kv


def config(listeners, **glob):
    return mtd.daemon_conf(listeners, **dict({"workers": "2"}, **glob))


def ctx_for(version, cert=None):
    v = getattr(ssl.TLSVersion, version)
    return mtd.client_context(cert=cert, minimum=v, maximum=v)


class Result:
    """One Python client connection: served (greeting read), the session
    (with its ticket) afterwards, whether it was resumed, or the error."""

    def __init__(self, port, ctx, session=None):
        self.served = False
        self.session = None
        self.reused = False
        self.error = None
        raw = socket.create_connection((LOOPBACK, port), timeout=10 * SLOW)
        self.cport = raw.getsockname()[1]
        s = None
        try:
            s = ctx.wrap_socket(raw, server_hostname=SNI, session=session)
            got = b""
            while not got.endswith(b"\n"):
                d = s.recv(1024)
                if not d:
                    raise EOFError("EOF before the greeting; got %r" % got)
                got += d
            self.served = got == GREETING
            self.reused = s.session_reused
            self.session = s.session
        except REFUSED as e:
            self.error = e
            if s is not None:
                self.reused = s.session_reused
        finally:
            (s or raw).close()

    def __repr__(self):
        return "Result(served=%r, reused=%r, error=%r)" % (
            self.served, self.reused, self.error)


def close_line(d, cport):
    """The close log line (fields) of the client whose port is cport."""
    want = "%s:%d" % (LOOPBACK, cport)

    def find():
        for line in d.log.splitlines():
            if " event=close " in line:
                e = parse_kv(line)
                if e.get("client") == want:
                    return e
        return None
    try:
        return mtd.wait_for(find, 10 * SLOW, 0.02, "close line of %s" % want)
    except mtd.HarnessError as e:
        raise AssertionError("%s\n--- log:\n%s" % (e, d.log[-4000:]))


def s_client(port, *args, timeout=30):
    """openssl s_client to 127.0.0.1:port with SNI; the backend greets and
    closes, so it ends by itself.  Return (rc, stdout+stderr)."""
    mtd.need_tool("openssl")
    argv = ["openssl", "s_client", "-connect", "%s:%d" % (LOOPBACK, port),
            "-servername", SNI, "-ign_eof"] + list(args)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout * SLOW)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def brief(out):
    """s_client's output without the certificate and the ticket dump, for
    failure messages."""
    out = re.sub(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                 "[certificate]", out, flags=re.S)
    return re.sub(r"(?m)^    [0-9a-f]{4} - .*\n", "", out)[-2500:]


def served_by_s_client(out):
    return GREETING.decode().strip() in out


# --------------------------------------------------------------------------
# 1: sessions resume only where they were issued

class TicketScope(unittest.TestCase):
    """One mailtlsd with a listener per client-certificate policy:
        none   client_verify = none
        opt    client_ca = test CA, optional
        optx   client_ca = another CA, optional
        req    client_ca = test CA, required
        req2   the same settings as req, under another name."""

    @classmethod
    def setUpClass(cls):
        c = mtd.certs()
        cls.good = c.client
        cls.foreign = c.issue("audit-foreign-client", names=(), ips=(),
                              client=True, ca=c.unknown_ca_pair,
                              cn="foreign.example.test")
        cls.b = FakeBackend(FakeBackend.source(GREETING))
        names = ("none", "opt", "optx", "req", "req2")
        cls.port = dict(zip(names, mtd.free_ports(len(names))))
        other_ca = c.unknown_ca_pair[1]
        cls.d = Mailtlsd(config({
            "none": listener("none", cls.b.addr, cls.port["none"]),
            "opt": listener("none", cls.b.addr, cls.port["opt"],
                            client_ca=c.ca, client_verify="optional"),
            "optx": listener("none", cls.b.addr, cls.port["optx"],
                             client_ca=other_ca, client_verify="optional"),
            "req": listener("none", cls.b.addr, cls.port["req"],
                            client_ca=c.ca, client_verify="required"),
            "req2": listener("none", cls.b.addr, cls.port["req2"],
                             client_ca=c.ca, client_verify="required"),
        }), name="ticket-scope").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def ticket(self, name, ctx):
        r = Result(self.port[name], ctx)
        self.assertTrue(r.served, r)
        self.assertFalse(r.reused)
        self.assertTrue(r.session is not None and r.session.has_ticket,
                        "listener %s issued no session ticket" % name)
        return r.session

    def assert_refused_not_resumed(self, r):
        self.assertFalse(r.reused, "the session was resumed: %r" % r)
        self.assertFalse(r.served, r)
        e = close_line(self.d, r.cport)
        self.assertEqual(e.get("reason"), "tls_handshake_failed", e)
        self.assertEqual(e.get("client_cert"), "", e)

    def test_none_session_not_resumed_on_required(self):
        for version in VERSIONS:
            with self.subTest(tls=version):
                ctx = ctx_for(version)              # no certificate
                sess = self.ticket("none", ctx)
                n = len(self.b.conns)
                self.assert_refused_not_resumed(
                    Result(self.port["req"], ctx, sess))
                self.assertEqual(len(self.b.conns), n,
                                 "a client without a certificate reached "
                                 "the backend of a required listener")

    def test_optional_without_cert_not_resumed_on_required(self):
        for version in VERSIONS:
            with self.subTest(tls=version):
                ctx = ctx_for(version)
                sess = self.ticket("opt", ctx)
                self.assert_refused_not_resumed(
                    Result(self.port["req"], ctx, sess))

    def test_other_ca_session_not_resumed_on_required(self):
        """A certificate from another CA, fine on optx, is not let in on
        req through its session."""
        for version in VERSIONS:
            with self.subTest(tls=version):
                ctx = ctx_for(version, self.foreign)
                sess = self.ticket("optx", ctx)
                e = close_line(self.d, Result(self.port["optx"], ctx).cport)
                self.assertIn("foreign.example.test", e.get("client_cert"))
                self.assert_refused_not_resumed(
                    Result(self.port["req"], ctx, sess))

    def test_openssl_session_from_optional_offered_to_required(self):
        """openssl s_client: a session made on opt with a good certificate,
        offered to req without one, is not resumed and the handshake fails;
        on opt itself it resumes."""
        sess = os.path.join(mtd.tempdir("mtd-sess-"), "opt.sess")
        for version in ("-tls1_3", "-tls1_2"):
            with self.subTest(tls=version):
                rc, out = s_client(self.port["opt"], version, "-sess_out",
                                   sess, "-cert", self.good.cert, "-key",
                                   self.good.key)
                self.assertTrue(served_by_s_client(out), brief(out))
                self.assertRegex(out, r"\bNew, TLSv1\.[23]")
                rc, out = s_client(self.port["opt"], version, "-sess_in",
                                   sess)
                self.assertRegex(out, r"\bReused, TLSv1\.[23]",
                                 "not resumed on the listener that issued "
                                 "it:\n" + brief(out))
                self.assertTrue(served_by_s_client(out), brief(out))
                rc, out = s_client(self.port["req"], version, "-sess_in",
                                   sess)
                self.assertNotRegex(out, r"\bReused,", brief(out))
                self.assertFalse(served_by_s_client(out), brief(out))

    def test_same_listener_resumes(self):
        cases = (("none", None), ("opt", None), ("opt", "good"),
                 ("optx", "foreign"), ("req", "good"))
        for name, cert in cases:
            for version in VERSIONS:
                with self.subTest(listener=name, cert=cert, tls=version):
                    ctx = ctx_for(version, getattr(self, cert) if cert
                                  else None)
                    sess = self.ticket(name, ctx)
                    r = Result(self.port[name], ctx, sess)
                    self.assertTrue(r.served, r)
                    self.assertTrue(r.reused, "not resumed on %s" % name)
                    if cert == "good":
                        # the resumed session still names its certificate
                        e = close_line(self.d, r.cport)
                        self.assertIn("client.example.test",
                                      e.get("client_cert"), e)

    def test_same_policy_other_listener_not_resumed(self):
        for version in VERSIONS:
            with self.subTest(tls=version):
                ctx = ctx_for(version, self.good)
                sess = self.ticket("req", ctx)
                r = Result(self.port["req2"], ctx, sess)
                self.assertTrue(r.served, r)       # a full handshake
                self.assertFalse(r.reused)


def ticket_key(directory, name="ticket.key"):
    r = mtd.run(["openssl", "rand", "-base64", "64"], check=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(r.stdout)
    os.chmod(path, 0o600)
    return path


class TicketReplicasAndReload(unittest.TestCase):

    def setUp(self):
        self.b = FakeBackend(FakeBackend.source(GREETING), tc=self)
        self.dir = mtd.tempdir("mtd-audit-tickets-")
        self.c = mtd.certs()

    def test_two_processes_one_ticket_file_resume_each_other(self):
        key = ticket_key(self.dir)
        ports = mtd.free_ports(2)
        ds = [Mailtlsd(config({"req": listener(
            "none", self.b.addr, p, client_ca=self.c.ca,
            client_verify="required")}, ticket_key_file=key), tc=self,
            name="replica%d" % i).start() for i, p in enumerate(ports)]
        for version in VERSIONS:
            for a, b in ((0, 1), (1, 0)):
                with self.subTest(tls=version, issuer=a):
                    ctx = ctx_for(version, self.c.client)
                    r = Result(ports[a], ctx)
                    self.assertTrue(r.served, r)
                    r = Result(ports[b], ctx, r.session)
                    self.assertTrue(r.served, r)
                    self.assertTrue(r.reused, "replica %d did not resume "
                                    "replica %d's session" % (b, a))
        for d in ds:
            self.assertEqual(d.stop(), 0, d.log[-3000:])

    def test_client_ca_reload_stops_resumption(self):
        cafile = os.path.join(self.dir, "clients-ca.pem")
        shutil.copyfile(self.c.ca, cafile)
        foreign = self.c.issue("audit-foreign-client2", names=(), ips=(),
                               client=True, ca=self.c.unknown_ca_pair,
                               cn="foreign2.example.test")
        port = mtd.free_port()
        d = Mailtlsd(config({"req": listener(
            "none", self.b.addr, port, client_ca=cafile,
            client_verify="required")}), tc=self, name="ca-reload").start()
        sessions = {}
        for version in VERSIONS:
            ctx = ctx_for(version, self.c.client)
            r = Result(port, ctx)
            self.assertTrue(r.served, r)
            # control: it resumes before the reload
            r2 = Result(port, ctx, r.session)
            self.assertTrue(r2.reused, r2)
            sessions[version] = (ctx, r2.session)
        # the CA is replaced by another one (atomic rename), then SIGHUP
        tmp = cafile + ".new"
        shutil.copyfile(self.c.unknown_ca_pair[1], tmp)
        os.rename(tmp, cafile)
        d.signal(signal.SIGHUP)
        d.wait_log(r"event=reload .*listener=req .*result=ok")
        # the new CA's clients get in: the reload took effect
        for version in VERSIONS:
            with self.subTest(tls=version, cert="new CA"):
                r = Result(port, ctx_for(version, foreign))
                self.assertTrue(r.served, r)
        for version in VERSIONS:
            with self.subTest(tls=version, cert="old CA, old session"):
                ctx, sess = sessions[version]
                r = Result(port, ctx, sess)
                self.assertFalse(r.reused, "a session the old CA admitted "
                                 "was resumed after the client_ca reload")
                self.assertFalse(r.served, r)
        self.assertEqual(d.stop(), 0, d.log[-3000:])


# --------------------------------------------------------------------------
# 2: the priority string as written, no SHA-1 signatures, logged

class Priority(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        c = mtd.certs()
        cls.b = FakeBackend(FakeBackend.source(GREETING))
        cls.ecdsa, cls.rsa, cls.custom = mtd.free_ports(3)
        cls.custom_priority = "SECURE256:-VERS-ALL:+VERS-TLS1.2"
        cls.d = Mailtlsd(config({
            "ecdsa": listener("none", cls.b.addr, cls.ecdsa),
            "rsa": listener("none", cls.b.addr, cls.rsa,
                            certs=[c.server_rsa]),
            "custom": listener("none", cls.b.addr, cls.custom,
                               tls_priority=cls.custom_priority),
        }, log_level="info"), name="priority").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def tls12(self, port, sigalgs, cipher="DEFAULT:@SECLEVEL=0"):
        return s_client(port, "-tls1_2", "-sigalgs", sigalgs,
                        "-cipher", cipher)

    def test_default_refuses_sha1_only_tls12_client(self):
        for port, sha1, sha256 in (
                (self.ecdsa, "ECDSA+SHA1", "ECDSA+SHA256"),
                (self.rsa, "RSA+SHA1", "RSA+SHA256")):
            with self.subTest(port=port, sigalgs=sha1):
                # control: the same client with SHA-256 is served
                rc, out = self.tls12(port, sha256)
                self.assertTrue(served_by_s_client(out), brief(out))
                rc, out = self.tls12(port, sha1)
                self.assertFalse(served_by_s_client(out),
                                 "served with SHA-1 signatures:\n" +
                                 brief(out))
                self.assertNotEqual(rc, 0, brief(out))

    def test_operator_string_not_widened(self):
        """SECURE256 has no 128-bit ciphers: a TLS 1.2 client offering only
        AES-128-GCM is refused; one offering AES-256-GCM is served."""
        rc, out = s_client(self.custom, "-tls1_2", "-cipher",
                           "ECDHE-ECDSA-AES256-GCM-SHA384")
        self.assertTrue(served_by_s_client(out), brief(out))
        rc, out = s_client(self.custom, "-tls1_2", "-cipher",
                           "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertFalse(served_by_s_client(out),
                         "an AES-128 cipher was added to the operator's "
                         "SECURE256 string:\n" + brief(out))

    def effective(self, name):
        m = self.d.wait_log(r"^.*event=tls_priority .*listener=%s .*$" % name)
        return parse_kv(m.group(0))

    def test_effective_lists_logged(self):
        e = self.effective("ecdsa")
        for k in ("priority", "versions", "ciphers", "groups", "signatures"):
            self.assertTrue(e.get(k), (k, e))
        self.assertEqual(set(e["versions"].split(",")),
                         {"TLS1.3", "TLS1.2"}, e)
        self.assertEqual(set(e["ciphers"].split(",")),
                         {"AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"},
                         e)
        self.assertNotIn("SHA1", e["signatures"], e)
        self.assertIn("ECDSA-SECP256R1-SHA256", e["signatures"], e)
        c = self.effective("custom")
        self.assertEqual(c["priority"], self.custom_priority, c)
        self.assertNotIn("AES-128", c["ciphers"], c)
        self.assertEqual(c["versions"], "TLS1.2", c)


# --------------------------------------------------------------------------
# 3 and 11: client certificates

class ClientCertPurposeAndPresence(unittest.TestCase):
    """smtp listeners with PROXY v2 toward a recording backend:
    req (required) and opt (optional), client_ca = the test CA."""

    SMTP_GREETING = b"220 fake.example.test ESMTP\r\n"

    @classmethod
    def setUpClass(cls):
        c = mtd.certs()
        cls.good = c.client
        cls.server_eku = c.client_server_eku
        cls.san_only = c.client_san_only
        cls.b = FakeBackend(pp.pp_backend(cls.SMTP_GREETING))
        cls.req, cls.opt = mtd.free_ports(2)
        cls.d = Mailtlsd(config({
            "req": listener("smtp", cls.b.addr, cls.req, client_ca=c.ca,
                            client_verify="required", proxy_protocol="v2"),
            "opt": listener("smtp", cls.b.addr, cls.opt, client_ca=c.ca,
                            client_verify="optional", proxy_protocol="v2"),
        }), name="client-purpose").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.b.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def session(self, port, ctx):
        """SMTP greeting and QUIT; return (client port, index of the
        backend connection)."""
        n = len(self.b.conns)
        s = socket.create_connection((LOOPBACK, port), timeout=10 * SLOW)
        cport = s.getsockname()[1]
        c = TlsConn(port, sock=s, ctx=ctx, server_hostname=SNI)
        try:
            g, bye = pp.smtp_session(c)
            self.assertEqual(g, self.SMTP_GREETING)
            return cport, n
        finally:
            c.close()

    def each(self):
        for name, port in (("required", self.req), ("optional", self.opt)):
            for version in VERSIONS:
                yield name, port, version

    def test_server_purpose_certificate_refused(self):
        for name, port, version in self.each():
            with self.subTest(client_verify=name, tls=version):
                # control: a certificate for client authentication is served
                self.session(port, ctx_for(version, self.good))
                n = len(self.b.conns)
                s = socket.create_connection((LOOPBACK, port),
                                             timeout=10 * SLOW)
                cport = s.getsockname()[1]
                with self.assertRaises(REFUSED):
                    c = TlsConn(port, sock=s, server_hostname=SNI,
                                ctx=ctx_for(version, self.server_eku))
                    try:
                        c.recv_until(b"\r\n", timeout=10)
                    finally:
                        c.close()
                s.close()
                e = close_line(self.d, cport)
                self.assertEqual(e.get("reason"), "tls_handshake_failed", e)
                self.assertEqual(e.get("client_cert"), "", e)
                self.assertEqual(len(self.b.conns), n, "a certificate for "
                                 "serverAuth only reached the backend")

    def test_san_only_certificate_is_present(self):
        for name, port, version in self.each():
            with self.subTest(client_verify=name, tls=version):
                cport, i = self.session(port, ctx_for(version, self.san_only))
                e = close_line(self.d, cport)
                self.assertIn("san-only.example.test", e.get("client_cert"),
                              e)
                h = pp.header_of(self.b, i)
                self.assertIsNotNone(h.ssl, h)
                self.assertTrue(h.ssl["client"] & pp.PP2_CLIENT_SSL, h.ssl)
                self.assertTrue(h.ssl["client"] & pp.PP2_CLIENT_CERT_CONN,
                                "a verified SAN-only certificate sent as "
                                "absent: %r" % h.ssl)
                self.assertEqual(h.ssl["verify"], 0, h.ssl)
                # it has no CN, so none goes out
                self.assertNotIn(pp.PP2_SUBTYPE_SSL_CN, h.ssl["subs"], h.ssl)


# --------------------------------------------------------------------------
# 12: JSON log lines always parse

class JsonTruncation(unittest.TestCase):
    """Listeners whose reload error lines are far over the line limit, with
    file names full of characters JSON escapes (quote, backslash), commas
    and UTF-8; the directory name grows by one character per listener so
    that the cut falls at every offset of that pattern."""

    PAIRS = 20
    LISTENERS = 12

    def test_every_line_parses(self):
        c = mtd.certs()
        base = mtd.tempdir("mtd-json-")
        ports = mtd.free_ports(self.LISTENERS)
        b = FakeBackend(FakeBackend.source(GREETING), tc=self)
        lst, certfiles = {}, []
        for i in range(self.LISTENERS):
            d = os.path.join(base, "d" + "x" * i + '"q\\b,\u00e9')
            os.mkdir(d)
            pairs = []
            for j in range(self.PAIRS):
                cert = os.path.join(d, 'c%d"\\,\u00e9.pem' % j)
                key = os.path.join(d, 'k%d"\\,\u00e9.pem' % j)
                shutil.copyfile(c.server_ecdsa.cert, cert)
                shutil.copyfile(c.server_ecdsa.key, key)
                os.chmod(key, 0o600)
                pairs.append((cert, key))
                certfiles.append(cert)
            lst["l%d" % i] = listener("none", b.addr, ports[i], certs=pairs)
        d = Mailtlsd(config(lst, log_format="json", log_level="info"),
                     tc=self, name="json").start()
        for path in certfiles:
            with open(path + ".tmp", "w") as f:
                f.write("not a certificate, \"really\" \\ not\n")
            os.rename(path + ".tmp", path)
        d.signal(signal.SIGHUP)

        def failed_lines():
            n = 0
            for line in d.log.splitlines():
                if '"event":"reload"' in line and '"failed"' in line:
                    n += 1
            return n >= self.LISTENERS
        try:
            mtd.wait_for(failed_lines, 20 * SLOW, 0.05,
                         "a failed reload line per listener")
        except mtd.HarnessError as e:
            self.fail("%s\n--- log:\n%s" % (e, d.log[-3000:]))
        self.assertEqual(d.stop(), 0)
        with open(d.log_path, "rb") as f:
            raw = f.read()
        truncated = 0
        for n, line in enumerate(raw.split(b"\n")[:-1]):
            with self.subTest(line=n):
                try:
                    obj = json.loads(line.decode("utf-8"))
                except ValueError as e:
                    self.fail("line %d is not JSON (%s): %r" % (n, e, line))
                self.assertIsInstance(obj, dict)
                self.assertLessEqual(len(line) + 1, 4096)
                if obj.get("truncated") is True:
                    truncated += 1
                    self.assertIn("event", obj)
        self.assertGreaterEqual(truncated, self.LISTENERS,
                                "the long lines were not cut")


# --------------------------------------------------------------------------
# 13: start-up warnings

class StartupWarnings(unittest.TestCase):

    def setUp(self):
        self.b = FakeBackend(FakeBackend.source(GREETING), tc=self)
        self.dir = mtd.tempdir("mtd-warn-")
        c = mtd.certs()
        self.cert = os.path.join(self.dir, "server.crt")
        shutil.copyfile(c.server_ecdsa.cert, self.cert)

    def key(self, name, mode):
        p = os.path.join(self.dir, name)
        shutil.copyfile(mtd.certs().server_ecdsa.key, p)
        os.chmod(p, mode)
        return p

    def start(self, key, **glob):
        d = Mailtlsd(config({"w": listener(
            "none", self.b.addr, mtd.free_port(), certs=[(self.cert, key)])},
            **glob), tc=self, name="warn").start()
        d.wait_log(r"event=ready")
        return d

    def warnings(self, d):
        return [l for l in d.log.splitlines() if " level=warn " in l]

    def test_root_without_user_warns(self):
        self.assertEqual(os.geteuid(), 0, "this test must run as root")
        d = self.start(self.key("k.pem", 0o600))
        w = [l for l in self.warnings(d) if "root" in l]
        self.assertTrue(w, "no warning about running as root:\n" + d.log)
        self.assertIn("user", w[0])
        d.stop()
        # with user = nobody: no such warning (the key is read as root)
        d = self.start(self.key("k2.pem", 0o600), user="nobody")
        self.assertFalse([l for l in self.warnings(d) if "root" in l],
                         d.log)
        d.stop()

    def test_readable_key_and_ticket_file_warn(self):
        for mode in (0o644, 0o640, 0o604):
            with self.subTest(mode=oct(mode)):
                key = self.key("key-%o.pem" % mode, mode)
                tk = ticket_key(self.dir, "ticket-%o.key" % mode)
                os.chmod(tk, mode)
                d = self.start(key, ticket_key_file=tk, user="nobody")
                w = "\n".join(self.warnings(d))
                self.assertIn(key, w, d.log)
                self.assertIn(tk, w, d.log)
                d.stop()
        # 0600, and 0640 in the group of [global] user: no warning
        gid = pwd.getpwnam("nobody").pw_gid
        for mode, group in ((0o600, None), (0o640, gid)):
            with self.subTest(mode=oct(mode), group=group):
                key = self.key("key-ok-%o.pem" % mode, mode)
                tk = ticket_key(self.dir, "ticket-ok-%o.key" % mode)
                os.chmod(tk, mode)
                if group is not None:
                    os.chown(key, -1, group)
                    os.chown(tk, -1, group)
                d = self.start(key, ticket_key_file=tk, user="nobody")
                w = "\n".join(self.warnings(d))
                self.assertNotIn(key, w, d.log)
                self.assertNotIn(tk, w, d.log)
                d.stop()


# --------------------------------------------------------------------------
# issue 13 item 5: each certificate file is read once per load

class ReadOnce(unittest.TestCase):

    def test_check_opens_each_file_once(self):
        strace = mtd.need_tool("strace")
        c = mtd.certs()
        d = mtd.tempdir("mtd-readonce-")
        files = {}
        for name, src in (("cert", c.server_ecdsa.chain),
                          ("key", c.server_ecdsa.key), ("ca", c.ca)):
            files[name] = os.path.join(d, "once-" + name + ".pem")
            shutil.copyfile(src, files[name])
            os.chmod(files[name], 0o600)
        cfg = os.path.join(d, "mailtlsd.conf")
        with open(cfg, "w") as f:
            f.write(mtd.render_config(config({"o": listener(
                "none", "127.0.0.1:9", mtd.free_port(),
                certs=[(files["cert"], files["key"])], client_ca=files["ca"],
                client_verify="required")})))
        trace = os.path.join(d, "trace")
        # LeakSanitizer cannot run under ptrace; leaks are other tests' job
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") +
                               ":detect_leaks=0").lstrip(":")
        p = subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat",
                            "-o", trace, mtd.mailtlsd_bin(), "-t", "-c",
                            cfg], capture_output=True, timeout=60 * SLOW,
                           env=env)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open(trace) as f:
            text = f.read()
        for name, path in files.items():
            with self.subTest(file=name):
                opens = [l for l in text.splitlines() if '"%s"' % path in l]
                self.assertEqual(len(opens), 1, "\n".join(opens))


if __name__ == "__main__":
    unittest.main()
