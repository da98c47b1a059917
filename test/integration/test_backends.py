"""
Backends as deployments name them (issue 14; issue 17 item 4): DNS names,
several backends, failover and round-robin, health, and the start-up check.

Names go through the real resolver path (glibc getaddrinfo): mailtlsd runs
in a private mount namespace (unshare -m) where /etc/hosts is a file of the
test's and /etc/resolv.conf points at a name server that is not there
(timeout:1 attempts:1), so a name the hosts file lacks fails fast, and the
machine's own files are never touched.  A test changes an address by
rewriting its hosts file in place (the bind mount follows the inode).
"""

import imaplib
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import unittest

import mtd
from mtd import (FRONT_HOSTNAME, LOOPBACK, SLOW, FakeBackend, Mailtlsd,
                 daemon_conf, free_port, listener_conf, parse_kv, wait_for)

SMTP_421 = b"421 4.3.0 %s Service not available\r\n" % FRONT_HOSTNAME.encode()
IMAP_BYE = b"* BYE [UNAVAILABLE] Service not available\r\n"
POP3_ERR = b"-ERR [SYS/TEMP] Service not available\r\n"
GREETING = b"220 fake.example.test ESMTP\r\n"


class Names:
    """A hosts file and a resolv.conf of the test's, and a wrapper that runs
    a command with them bind-mounted in a private mount namespace."""

    def __init__(self, entries=()):
        mtd.need_tool("unshare")
        self.dir = mtd.tempdir("mtd-names-")
        self.hosts = os.path.join(self.dir, "hosts")
        self.resolv = os.path.join(self.dir, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.set(entries)
        self.wrapper = os.path.join(self.dir, "in-namespace")
        with open(self.wrapper, "w") as f:
            # unshare and sh exec: the process started is mailtlsd itself.
            f.write("#!/bin/sh\nexec unshare -m -- sh -c 'mount --bind "
                    "\"$0\" /etc/hosts && mount --bind \"$1\" "
                    "/etc/resolv.conf && shift && exec \"$@\"' "
                    "%s %s %s \"$@\"\n" % (self.hosts, self.resolv,
                                          mtd.mailtlsd_bin()))
        os.chmod(self.wrapper, 0o755)

    def set(self, entries):
        """Rewrite the hosts file in place: [(address, name), ...]."""
        text = "127.0.0.1 localhost\n" + "".join(
            "%s %s\n" % e for e in entries)
        with open(self.hosts, "w") as f:
            f.write(text)

    def daemon(self, cfg, tc, **kw):
        d = Mailtlsd(cfg, tc=tc, **kw)
        d.bin = self.wrapper
        return d

    def check(self, cfg):
        path = os.path.join(mtd.tempdir("mtd-check-"), "mailtlsd.conf")
        with open(path, "w") as f:
            f.write(mtd.render_config(cfg))
        p = subprocess.run([self.wrapper, "-t", "-c", path],
                           capture_output=True, timeout=60 * SLOW)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        if mtd.SANITIZERS:
            mtd.check_sanitizer_log(out)
        return p.returncode, out, path


def smtp_listener(backends, port, **kw):
    """A STARTTLS SMTP listener: a plain client sees the greeting (or the
    unavailable reply) at once."""
    d = listener_conf("smtp", backends, port, client_tls="starttls",
                      require_tls="no", connect_timeout="1s")
    d.update(kw)
    return d


def first_line(port, timeout=15):
    """Connect, return the first line the front says (b"" on close)."""
    return first_line_from(port, timeout)[0]


def first_line_from(port, timeout=15):
    """first_line(), and the client address the front logs for it."""
    with socket.create_connection((LOOPBACK, port), timeout * SLOW) as s:
        s.settimeout(timeout * SLOW)
        me = "%s:%d" % s.getsockname()[:2]
        buf = b""
        while not buf.endswith(b"\n"):
            d = s.recv(4096)
            if not d:
                break
            buf += d
        return buf, me


def wait_closes(d, n):
    """Until the log has ${n} close lines.  (Counted, not matched with a
    regex of n repeated groups, whose backtracking explodes while there
    are fewer.)"""
    wait_for(lambda: d.log.count("event=close ") >= n, timeout=10 * SLOW,
             what="%d close lines" % n)


def close_lines(d):
    return [parse_kv(l) for l in d.log.splitlines() if "event=close " in l]


def refused_port():
    """A loopback port where nothing listens."""
    return free_port()


class Blackhole:
    """A port that never answers a connection: a listening socket with a
    backlog of one, filled by a connection nobody accepts.  Further SYNs
    are dropped, so connecting times out."""

    def __init__(self, tc):
        self.lsock = socket.socket()
        self.lsock.bind((LOOPBACK, 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fill = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex((LOOPBACK, self.port))
            self.fill.append(c)
        tc.addCleanup(self.close)
        # Make sure it really does not answer before a test relies on it.
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect((LOOPBACK, self.port))
            raise AssertionError("blackhole port answered")
        except socket.timeout:
            pass
        finally:
            probe.close()

    def close(self):
        for c in self.fill:
            c.close()
        self.lsock.close()


class TlsBackend:
    """A TLS server (implicit TLS) that sends an SMTP greeting, then reads
    to EOF.  Counts the sessions it served."""

    def __init__(self, tc):
        c = mtd.certs().server_ecdsa
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(c[0], c[1])
        self.lsock = socket.socket()
        self.lsock.bind((LOOPBACK, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.served = 0
        self._stop = False
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()
        tc.addCleanup(self.close)

    def _loop(self):
        while not self._stop:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,),
                             daemon=True).start()

    def _serve(self, s):
        try:
            s.settimeout(30)
            t = self.ctx.wrap_socket(s, server_side=True)
            self.served += 1
            t.sendall(b"220 tls-backend ESMTP\r\n")
            while t.recv(4096):
                pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            s.close()

    def close(self):
        self._stop = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()


class TestNames(unittest.TestCase):

    def test_real_postfix_and_dovecot_by_name(self):
        """A name backend in front of a real Postfix (STARTTLS SMTP) and a
        real Dovecot (implicit TLS IMAP): mail goes in and is read back."""
        rs = mtd.RealServers(tc=self).start()
        names = Names([("127.0.0.1", "postfix.mail.test"),
                       ("127.0.0.1", "dovecot.mail.test")])
        sport, iport = free_port(), free_port()
        d = names.daemon(daemon_conf({
            "smtp": listener_conf(
                "smtp", "postfix.mail.test:%d" % rs.smtp_port, sport,
                client_tls="starttls"),
            "imaps": listener_conf(
                "imap", "dovecot.mail.test:%d" % rs.imap_port, iport)}),
            self).start()
        ctx = mtd.client_context()
        token = "name-backend-%d" % time.time_ns()
        with smtplib.SMTP(LOOPBACK, sport, timeout=30 * SLOW) as s:
            s.ehlo("client.example.test")
            s.starttls(context=ctx)
            s.ehlo("client.example.test")
            s.sendmail("bob@example.test", [rs.address("alice")],
                       "Subject: %s\r\n\r\n%s\r\n" % (token, token))
        rs.wait_delivered("alice", token.encode())
        m = imaplib.IMAP4_SSL(LOOPBACK, iport, ssl_context=ctx,
                              timeout=30 * SLOW)
        try:
            m.login("alice", rs.users["alice"])
            m.select("INBOX")
            typ, data = m.search(None, "SUBJECT", token)
            self.assertEqual(typ, "OK")
            self.assertTrue(data[0].split(), "message not found over IMAP")
            m.logout()
        finally:
            try:
                m.shutdown()
            except OSError:
                pass
        # The harness's port checks are sessions too, closed before any
        # backend: wait for the IMAP session's own line.
        d.wait_log(r"event=close .*listener=imaps .*backend=\d")
        by = {c["listener"]: c["backend"] for c in close_lines(d)
              if c["backend"]}
        self.assertEqual(by["smtp"], "127.0.0.1:%d" % rs.smtp_port)
        self.assertEqual(by["imaps"], "127.0.0.1:%d" % rs.imap_port)
        self.assertRegex(d.log, r"event=backend_resolve listener=smtp "
                         r"backend=postfix.mail.test:\d+ addresses="
                         r"127.0.0.1:\d+ ")

    def test_name_changes_address(self):
        """New sessions follow a name's new address within backend_resolve;
        the old one is never tried again."""
        port = free_port()
        # One port on two addresses (the port is in the configuration).
        for _ in range(20):
            b = FakeBackend(FakeBackend.greet_echo(b"220 new ESMTP\r\n"),
                            host="127.0.0.2", tc=self)
            try:
                a = FakeBackend(FakeBackend.greet_echo(b"220 old ESMTP\r\n"),
                                host="127.0.0.1", tc=self, port=b.port)
                break
            except OSError:
                b.close()
        else:
            self.fail("no port free on both 127.0.0.1 and 127.0.0.2")
        names = Names([("127.0.0.1", "relay.test")])
        d = names.daemon(daemon_conf({"s": smtp_listener(
            "relay.test:%d" % a.port, port, backend_resolve="1s")}),
            self).start()
        self.assertEqual(first_line(port), b"220 old ESMTP\r\n")
        names.set([("127.0.0.2", "relay.test")])
        t0 = time.monotonic()
        wait_for(lambda: first_line(port) == b"220 new ESMTP\r\n",
                 timeout=10 * SLOW, interval=0.2, what="new address used")
        # Within backend_resolve (1 s) plus the time a lookup takes.
        self.assertLess(time.monotonic() - t0, 5 * SLOW)
        n = len(a.conns)
        for _ in range(3):
            self.assertEqual(first_line(port), b"220 new ESMTP\r\n")
        self.assertEqual(len(a.conns), n)
        d.wait_log(r"event=backend_resolve .*addresses=127.0.0.2:%d .*new "
                   r"addresses" % a.port)

    def test_name_resolves_later(self):
        """A name that does not resolve at start: a warning, clients get the
        unavailable reply (no crash, no spin, few log lines); once the name
        resolves, sessions are served."""
        port = free_port()
        b = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        names = Names([])
        d = names.daemon(daemon_conf({"s": smtp_listener(
            "later.test:%d" % b.port, port, backend_resolve="1s")}),
            self).start()
        d.wait_log(r"level=warn event=backend_resolve listener=s "
                   r"backend=later.test:\d+ .*does not resolve \(yet\)")
        for _ in range(20):
            self.assertEqual(first_line(port), SMTP_421)
        self.assertIsNone(d.proc.poll())
        # One warning per 10 s, not one per client.
        noaddr = [l for l in d.log.splitlines()
                  if "event=backend_unavailable" in l and
                  "no backend address" in l]
        self.assertGreaterEqual(len(noaddr), 1)
        self.assertLessEqual(len(noaddr), 2, "\n".join(noaddr))
        # Twenty clients and the harness's own port check.
        wait_closes(d, 21)
        closes = close_lines(d)
        self.assertEqual(len(closes), 21)
        self.assertTrue(all(c["reason"] == "backend_unavailable"
                            for c in closes))
        names.set([("127.0.0.1", "later.test")])
        wait_for(lambda: first_line(port) == GREETING, timeout=10 * SLOW,
                 interval=0.2, what="the name to resolve")
        d.wait_log(r"event=backend_resolve .*resolves again")

    def test_threadpool_sized_for_lookups(self):
        """libuv's threadpool has room for the lookups (4) besides its
        default 4 threads for file work; a bigger UV_THREADPOOL_SIZE
        stands."""
        names = Names([("127.0.0.1", "relay.test")])
        for env, want in ((None, 8), ("16", 16)):
            with self.subTest(env=env):
                port = free_port()
                e = {"UV_THREADPOOL_SIZE": env} if env else {}
                d = names.daemon(daemon_conf({"s": smtp_listener(
                    "relay.test:%d" % free_port(), port)}, workers=1),
                    self, env=e)
                if env is None:
                    d.env.pop("UV_THREADPOOL_SIZE", None)
                d.start()
                d.wait_log(r"event=backend_resolve listener=s")
                # main thread + 1 worker + the pool (started all at once);
                # the worker thread may start after the lookup's log line.
                def ntasks():
                    return len(os.listdir("/proc/%d/task" % d.pid))
                try:
                    wait_for(lambda: ntasks() >= 2 + want, timeout=5 * SLOW,
                             interval=0.05, what="%d threads" % (2 + want))
                except mtd.HarnessError:
                    self.fail("%d threads, want at least %d" %
                              (ntasks(), 2 + want))
                self.assertLess(ntasks(), 2 + want + 4)
                d.stop()

    def test_check_warns_and_exits_0(self):
        """-t: a name that does not resolve is a warning with its line, and
        the check still passes; a name that resolves says nothing."""
        names = Names([("127.0.0.1", "known.test")])
        rc, out, path = names.check(daemon_conf({"s": smtp_listener(
            ["known.test:25", "unknown.test:25"], free_port())}))
        self.assertEqual(rc, 0, out)
        lines = [l for l in out.splitlines() if "warning" in l]
        self.assertEqual(len(lines), 1, out)
        text = open(path).read().splitlines()
        lineno = text.index("backend = unknown.test:25") + 1
        self.assertTrue(lines[0].startswith(
            "%s:%d: warning: backend unknown.test:25 does not resolve" %
            (path, lineno)), out)
        self.assertIn("configuration and certificates OK", out)


class TestFailover(unittest.TestCase):

    def run_modes(self, backends, good_port, expect_skipped, **kw):
        """For failover and roundrobin: every session reaches the good
        backend; the bad ones are logged as failed and marked down."""
        for mode in ("failover", "roundrobin"):
            with self.subTest(mode=mode):
                port, mport = free_port(), free_port()
                d = Mailtlsd(daemon_conf(
                    {"s": smtp_listener(backends, port,
                                        backend_balance=mode, **kw)},
                    metrics="%s:%d" % (LOOPBACK, mport)), tc=self).start()
                for _ in range(4):
                    self.assertEqual(first_line(port), GREETING_OR(kw))
                wait_closes(d, 5)
                # The harness's own port check is a session too.
                closes = close_lines(d)
                self.assertGreaterEqual(len(closes), 5)
                for c in closes:
                    self.assertEqual(c["backend"], "127.0.0.1:%d" %
                                     good_port, c)
                fails = failures(d)
                for addr in expect_skipped:
                    failed = [i for i, c in enumerate(closes)
                              if addr in fails.get(c["conn"], [])]
                    self.assertTrue(failed, d.log)
                # Marked down once it failed: sessions that start after
                # its failure is logged skip it.  They are told apart by
                # client address, not by time: a session that started
                # while an attempt on it was still pending (such as the
                # harness's port check waiting for its connect timeout)
                # may have picked it too, and log times are whole ms.
                later = []
                for _ in range(3):
                    line, me = first_line_from(port)
                    self.assertEqual(line, GREETING_OR(kw))
                    later.append(me)
                wait_for(lambda: all(
                    any(c["client"] == me for c in close_lines(d))
                    for me in later), timeout=10 * SLOW,
                    what="the close lines of %s" % later)
                closes = close_lines(d)
                fails = failures(d)
                for c in closes:
                    self.assertEqual(c["backend"], "127.0.0.1:%d" %
                                     good_port, c)
                    if c["client"] not in later:
                        continue
                    for addr in expect_skipped:
                        self.assertNotIn(addr, fails.get(c["conn"], []),
                                         d.log)
                m = metrics(mport)
                for addr in expect_skipped:
                    self.assertEqual(m[("up", addr)], 0)
                    self.assertGreaterEqual(m[("failures", addr)], 1)
                self.assertEqual(m[("up", "127.0.0.1:%d" % good_port)], 1)
                self.assertEqual(m[("attempts", "127.0.0.1:%d" %
                                    good_port)], len(closes))
                d.stop()

    def test_refused(self):
        b = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        r = refused_port()
        self.run_modes(["127.0.0.1:%d" % r, b.addr], b.port,
                       ["127.0.0.1:%d" % r])

    def test_timeout(self):
        b = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        bh = Blackhole(self)
        self.run_modes(["127.0.0.1:%d" % bh.port, b.addr], b.port,
                       ["127.0.0.1:%d" % bh.port])

    def test_tls_failure(self):
        """backend_tls = implicit: a plaintext backend fails its TLS check
        and the next one, a TLS server, serves."""
        plain = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        tb = TlsBackend(self)
        self.run_modes([plain.addr, "127.0.0.1:%d" % tb.port], tb.port,
                       [plain.addr], client_tls="none",
                       backend_tls="implicit", backend_verify="no")

    def test_all_down_exact_replies(self):
        """Every backend refuses: each was tried once, then the protocol's
        own unavailable reply."""
        r1, r2 = refused_port(), refused_port()
        ports = {p: free_port() for p in ("smtp", "imap", "pop3")}
        lst = {p: listener_conf(p, ["127.0.0.1:%d" % r1,
                                    "127.0.0.1:%d" % r2], ports[p],
                                client_tls="starttls", connect_timeout="1s")
               for p in ports}
        d = Mailtlsd(daemon_conf(lst), tc=self).start()
        self.assertEqual(first_line(ports["smtp"]), SMTP_421)
        self.assertEqual(first_line(ports["imap"]), IMAP_BYE)
        self.assertEqual(first_line(ports["pop3"]), POP3_ERR)
        d.wait_log(r"event=close .*listener=pop3")
        fails = failures(d)
        both = sorted(["127.0.0.1:%d" % r1, "127.0.0.1:%d" % r2])
        closes = [c for c in close_lines(d)
                  if c["reason"] == "backend_unavailable"]
        self.assertGreaterEqual(len(closes), 3)
        for c in closes:
            # Each candidate exactly once per session.
            self.assertEqual(sorted(fails[c["conn"]]), both, d.log)
        # Both are marked down now: a new session still tries both (a
        # hint, not a verdict), then answers.
        n = len(closes)
        self.assertEqual(first_line(ports["smtp"]), SMTP_421)
        wait_closes(d, n + 1)
        c = close_lines(d)[-1]
        self.assertEqual(sorted(failures(d)[c["conn"]]), both, d.log)


    def test_fresh_connection_after_starttls_fails_over(self):
        """The backend that served before STARTTLS goes down; the fresh
        backend connection after the handshake goes to the next one."""
        ehlo = lambda name: (lambda line: b"250-%s\r\n250 8BITMIME\r\n" %
                             name)
        a = FakeBackend(FakeBackend.lines(b"220 a ESMTP\r\n", [
            (b"EHLO", ehlo(b"a")), (b"QUIT", None)]), tc=self)
        b = FakeBackend(FakeBackend.lines(b"220 b ESMTP\r\n", [
            (b"EHLO", ehlo(b"b")), (b"QUIT", None)]), tc=self)
        port = free_port()
        d = Mailtlsd(daemon_conf({"s": listener_conf(
            "smtp", [a.addr, b.addr], port, client_tls="starttls")}),
            tc=self).start()
        s = smtplib.SMTP(LOOPBACK, port, timeout=20 * SLOW)
        try:
            code, msg = s.ehlo("c.example.test")
            self.assertEqual(code, 250)
            self.assertTrue(msg.startswith(b"a"), msg)
            # Backend a stops listening now.
            a.lsock.shutdown(socket.SHUT_RDWR)
            a.lsock.close()
            s.starttls(context=mtd.client_context())
            code, msg = s.ehlo("c.example.test")
            self.assertEqual(code, 250)
            self.assertTrue(msg.startswith(b"b"), msg)
        finally:
            s.close()
        d.wait_log(r"event=close .*starttls=yes")
        # Only the connection after STARTTLS went to b.
        self.assertEqual(len(b.conns), 1)
        self.assertRegex(d.log, r"event=backend_unavailable .*backend=%s "
                         r'error="connection refused"' % re.escape(a.addr))
        tls = [c for c in close_lines(d) if c["starttls"] == "yes"]
        self.assertEqual(tls[0]["backend"], b.addr)


def failures(d):
    """{conn id: [backend addresses that failed, in order]}."""
    out = {}
    for l in d.log.splitlines():
        if "event=backend_unavailable" in l:
            f = parse_kv(l)
            if "backend" in f:
                out.setdefault(f["conn"], []).append(f["backend"])
    return out


def GREETING_OR(kw):
    return (b"220 tls-backend ESMTP\r\n" if kw.get("backend_tls") ==
            "implicit" else GREETING)


def metrics(port):
    """{(kind, backend address): value} from /metrics."""
    import urllib.request
    text = urllib.request.urlopen("http://%s:%d/metrics" % (LOOPBACK, port),
                                  timeout=10 * SLOW).read().decode()
    out = {}
    rx = re.compile(r'^mailtlsd_backend_(up|attempts_total|failures_total)'
                    r'\{listener="[^"]*",backend="([^"]*)",name="[^"]*"\} '
                    r'(\d+)$', re.M)
    for kind, addr, v in rx.findall(text):
        out[(kind.replace("_total", ""), addr)] = int(v)
    return out


class TestStartupCheck(unittest.TestCase):

    def test_one_warning_per_listener_that_does_not_answer(self):
        """At start-up, one warning for a listener whose backend refuses,
        before any client and never again per client; none for one whose
        backend answers."""
        good = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        r = refused_port()
        p1, p2 = free_port(), free_port()
        d = Mailtlsd(daemon_conf({
            "bad": smtp_listener("127.0.0.1:%d" % r, p1),
            "good": smtp_listener(good.addr, p2)}), tc=self,
            backend_check=True).start()
        d.wait_log(r"level=warn event=backend_check listener=bad "
                   r'failed="127.0.0.1:%d \(connection refused\)"' % r)
        for _ in range(3):
            self.assertEqual(first_line(p1), SMTP_421)
        self.assertEqual(first_line(p2), GREETING)
        d.wait_log(r"event=close .*listener=good")
        checks = [l for l in d.log.splitlines()
                  if "level=warn event=backend_check" in l]
        self.assertEqual(len(checks), 1, d.log)
        # The check's own connection to the good backend, the harness's
        # port check and the client.
        wait_for(lambda: len(good.conns) == 3, what="three connections")

    def test_check_off(self):
        r = refused_port()
        port = free_port()
        d = Mailtlsd(daemon_conf({"s": smtp_listener("127.0.0.1:%d" % r,
                                                     port)},
                                 backend_check="no"), tc=self,
                     backend_check=True).start()
        self.assertEqual(first_line(port), SMTP_421)
        d.wait_log(r"event=close ")
        self.assertNotIn("event=backend_check", d.log)


if __name__ == "__main__":
    unittest.main()
