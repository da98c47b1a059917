"""
Limits per client (SPEC "Limits per client"; issue 16).

From two source addresses, 127.0.0.1 and 127.0.0.2, against a real Postfix
and Dovecot: max_per_client and rate_per_client on implicit and STARTTLS
listeners of each protocol.  Over a limit, an implicit TLS client is closed
before a byte of TLS; a STARTTLS client gets exactly the spec's reply, from
mailtlsd, and no backend connection is opened for it.  The other address is
served throughout.  Behind a trusted proxy the PROXY-header address is what
counts.  A flood of 300 refused connections gives a log line a second at
most, whose counts add up, and exact /metrics counts.  The table's memory
stays bounded after 100,000 distinct client addresses (PROXY headers from
an allowed source).  A STARTTLS client in plaintext with require_tls = no
is closed after plaintext_timeout of idleness, not idle_timeout.

Every wait is bounded; nothing synchronises on a fixed sleep.
"""

import math
import os
import re
import selectors
import socket
import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK, free_port

A = "127.0.0.1"
B = "127.0.0.2"
HOST = mtd.FRONT_HOSTNAME
GREETING = {"smtp": b"220 ", "imap": b"* OK", "pop3": b"+OK"}
REPLY = {
    "smtp": ("421 4.7.0 %s Too many connections from your address\r\n" %
             HOST).encode(),
    "imap": b"* BYE [UNAVAILABLE] Too many connections\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections\r\n",
}
PROTOS = ("smtp", "imap", "pop3")
KINDS = ("implicit", "starttls")

_servers = None


def servers():
    global _servers
    if _servers is None:
        _servers = mtd.RealServers().start()
    return _servers


def tearDownModule():
    global _servers
    if _servers is not None:
        _servers.stop()
        _servers = None


def backend_port(proto):
    rs = servers()
    return {"smtp": rs.smtp_port, "imap": rs.imap_port,
            "pop3": rs.pop3_port}[proto]


def sock_from(src, port, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    s.bind((src, 0))
    s.connect((LOOPBACK, port))
    return s


def read_to_eof(s, timeout=10):
    """Every byte until the peer closes; fails if it stays open."""
    s.settimeout(timeout * SLOW)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return data
            data += d
    except ConnectionResetError:
        return data
    except socket.timeout:
        raise AssertionError("still open after %.0fs; got %r" %
                             (timeout * SLOW, data[:200]))


def read_line(s, timeout=10):
    s.settimeout(timeout * SLOW)
    data = b""
    while not data.endswith(b"\n"):
        d = s.recv(1)
        if not d:
            break
        data += d
    return data


class Session:
    """A client session from ${src}: on an implicit listener a TLS session
    through to the greeting, on a STARTTLS one the plaintext greeting."""

    def __init__(self, src, port, proto, kind, prefix=b""):
        self.sock = sock_from(src, port)
        self.tls = None
        try:
            if prefix:
                self.sock.sendall(prefix)
            if kind == "implicit":
                self.tls = TlsConn(port, sock=self.sock)
                self.greeting = self.tls.recv_until(b"\n")
            else:
                self.greeting = read_line(self.sock)
        except BaseException:
            self.sock.close()
            raise
        if not self.greeting.startswith(GREETING[proto]):
            self.close()
            raise AssertionError("%s/%s from %s: greeting %r" %
                                 (proto, kind, src, self.greeting))

    def close(self):
        if self.tls is not None:
            self.tls.close()
        else:
            self.sock.close()


def refused(src, port, proto, kind, prefix=b""):
    """Connect from ${src}; return what arrives before mailtlsd closes.
    Nothing is sent (but ${prefix}): a refused TLS client is closed before
    its ClientHello; an admitted one would be kept waiting for it."""
    s = sock_from(src, port)
    try:
        if prefix:
            s.sendall(prefix)
        return read_to_eof(s)
    finally:
        s.close()


def expected_refusal(proto, kind):
    return b"" if kind == "implicit" else REPLY[proto]


def metric(d, mport, name, **labels):
    import test_metrics
    fams = test_metrics.scrape(mport)
    for key, value in fams.get(name, {"samples": {}})["samples"].items():
        _, lab = key
        if dict(lab) == labels:
            return value
    raise AssertionError("no %s%r in /metrics" % (name, labels))


def limit_lines(log, listener):
    return [mtd.parse_kv(l) for l in log.splitlines()
            if "event=client_limit" in l and
            mtd.parse_kv(l).get("listener") == listener]


def v1(src, sport=40000, dport=25):
    fam = "TCP6" if ":" in src else "TCP4"
    dst = "2001:db8::9" if ":" in src else "127.0.0.9"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport,
                                          dport)).encode()


class PerClient(unittest.TestCase):
    """One mailtlsd (two workers: the limits hold across them) with a
    listener per protocol, kind and limit."""

    @classmethod
    def setUpClass(cls):
        cls.ports = {}
        cls.fake = FakeBackend(FakeBackend.greet_echo(
            b"220 fake.example.test ESMTP\r\n"))
        listeners = {}
        for proto in PROTOS:
            for kind in KINDS:
                for lim, kw in (("cap", {"max_per_client": "2"}),
                                ("rate", {"rate_per_client": "1"})):
                    name = "%s-%s-%s" % (lim, proto, kind)
                    cls.ports[name] = free_port()
                    listeners[name] = mtd.listener_conf(
                        proto, "%s:%d" % (LOOPBACK, backend_port(proto)),
                        cls.ports[name], client_tls=kind,
                        handshake_timeout="60s", **kw)
        for name, proto, kind, backend in (
                ("pp-smtp-starttls", "smtp", "starttls", cls.fake.addr),
                ("pp-imap-implicit", "imap", "implicit",
                 "%s:%d" % (LOOPBACK, backend_port("imap"))),
                ("flood", "smtp", "starttls", cls.fake.addr)):
            cls.ports[name] = free_port()
            kw = {"max_per_client": "1"}
            if name.startswith("pp-"):
                kw["accept_proxy"] = "127.0.0.1/32"
            listeners[name] = mtd.listener_conf(
                proto, backend, cls.ports[name], client_tls=kind,
                handshake_timeout="60s", **kw)
        cls.mport = free_port()
        cls.d = Mailtlsd(mtd.daemon_conf(
            listeners, workers="2", log_level="info",
            metrics="%s:%d" % (LOOPBACK, cls.mport)),
            name="climit").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.fake.close()
        if rc != 0:
            raise AssertionError("mailtlsd exited %r:\n%s" % (rc, cls.d.log))

    def refusals(self, listener, limit):
        return metric(self.d, self.mport,
                      "mailtlsd_client_limit_refusals_total",
                      listener=listener, limit=limit)

    def test_cap_per_address(self):
        for proto in PROTOS:
            for kind in KINDS:
                with self.subTest(proto=proto, kind=kind):
                    self.check_cap(proto, kind)

    def check_cap(self, proto, kind):
        name = "cap-%s-%s" % (proto, kind)
        port = self.ports[name]
        held = [Session(A, port, proto, kind) for _ in range(2)]
        others = []
        try:
            for i in range(3):
                self.assertEqual(refused(A, port, proto, kind),
                                 expected_refusal(proto, kind))
                # The other address is served all the while (up to its
                # own cap).
                if i < 2:
                    others.append(Session(B, port, proto, kind))
            self.assertEqual(self.refusals(name, "max_per_client"), 3)
            self.assertEqual(self.refusals(name, "rate_per_client"), 0)
            # One closes: a place for a new one (once mailtlsd has seen
            # the close), and the cap holds again after it.
            held.pop().close()
            held.append(mtd.wait_for(
                lambda: self.try_session(A, port, proto, kind), 10 * SLOW,
                0.05, "a session after one closed"))
            self.assertEqual(refused(A, port, proto, kind),
                             expected_refusal(proto, kind))
        finally:
            for s in held + others:
                s.close()

    def try_session(self, src, port, proto, kind):
        try:
            return Session(src, port, proto, kind)
        except Exception:
            return None

    def test_rate_per_address(self):
        for proto in PROTOS:
            for kind in KINDS:
                with self.subTest(proto=proto, kind=kind):
                    self.check_rate(proto, kind)

    def check_rate(self, proto, kind):
        # rate_per_client = 1: a burst of 2, then one a second.  Ten
        # connections at once: the first two are served, and of the rest
        # no more than the seconds it took (tokens come back meanwhile).
        name = "rate-%s-%s" % (proto, kind)
        port = self.ports[name]
        t0 = time.monotonic()
        socks = [sock_from(A, port) for _ in range(10)]
        other = Session(B, port, proto, kind)
        got = []
        try:
            for s in socks:
                if kind == "starttls":
                    line = read_line(s)
                    if line.startswith(GREETING[proto]):
                        got.append("served")
                    else:
                        got.append(line + read_to_eof(s))
                else:
                    # Refused: closed at once, nothing sent.  Served: the
                    # handshake goes through.
                    try:
                        c = TlsConn(port, sock=s)
                        c.recv_until(b"\n")
                        got.append("served")
                    except (OSError, mtd.Closed):
                        got.append(b"")
            elapsed = time.monotonic() - t0
            nref = got.count(expected_refusal(proto, kind))
            nserved = got.count("served")
            self.assertEqual(nref + nserved, 10, got)
            self.assertGreaterEqual(nserved, 2)
            self.assertLessEqual(nserved, 2 + math.ceil(elapsed), got)
            self.assertEqual(self.refusals(name, "rate_per_client"), nref)
            self.assertEqual(self.refusals(name, "max_per_client"), 0)
            # The other address was served meanwhile, and once a token
            # is back, so is this one.
            other.close()
            Session(B, port, proto, kind).close()
            mtd.wait_for(lambda: self.try_session(A, port, proto, kind),
                         10 * SLOW, 0.3, "a session once a token is back"
                         ).close()
        finally:
            for s in socks:
                s.close()

    def test_proxy_header_address_counts(self):
        # Behind a trusted proxy (127.0.0.1) each PROXY address is a
        # client: 192.0.2.1 has its one, 192.0.2.2 gets its own; the
        # proxy's own address is not limited.  Refused ones never reach
        # the backend.
        name = "pp-smtp-starttls"
        port = self.ports[name]
        before = len(self.fake.conns)
        s1 = Session(A, port, "smtp", "starttls", prefix=v1("192.0.2.1"))
        s2 = Session(A, port, "smtp", "starttls", prefix=v1("192.0.2.2"))
        s3 = Session(A, port, "smtp", "starttls",
                     prefix=v1("2001:db8:1:2::1"))
        try:
            for src in ("192.0.2.1", "2001:db8:1:2::99"):
                self.assertEqual(refused(A, port, "smtp", "starttls",
                                         prefix=v1(src)), REPLY["smtp"])
            self.assertEqual(self.refusals(name, "max_per_client"), 2)
            self.fake.wait_conns(before + 3)
            self.assertEqual(len(self.fake.conns), before + 3)
            # The refused client is named in the log by its PROXY address.
            line = self.d.wait_log(
                r"event=client_limit.*listener=%s.*" % name).group(0)
            self.assertIn(mtd.parse_kv(line)["last_client"],
                          ("192.0.2.1", "2001:db8:1:2::99"))
        finally:
            for s in (s1, s2, s3):
                s.close()
        # Implicit TLS behind a proxy: closed after the header, no TLS.
        name = "pp-imap-implicit"
        port = self.ports[name]
        s1 = Session(A, port, "imap", "implicit", prefix=v1("192.0.2.1"))
        try:
            self.assertEqual(refused(A, port, "imap", "implicit",
                                     prefix=v1("192.0.2.1")), b"")
            Session(A, port, "imap", "implicit",
                    prefix=v1("192.0.2.2")).close()
            self.assertEqual(self.refusals(name, "max_per_client"), 1)
        finally:
            s1.close()

    def test_flood_few_log_lines_exact_counts(self):
        name = "flood"
        port = self.ports[name]
        before = len(self.fake.conns)
        total = metric(self.d, self.mport, "mailtlsd_connections_total",
                       listener=name)
        held = Session(A, port, "smtp", "starttls")
        try:
            self.fake.wait_conns(before + 1)
            t0 = time.monotonic()
            for _ in range(300):
                self.assertEqual(refused(A, port, "smtp", "starttls"),
                                 REPLY["smtp"])
            elapsed = time.monotonic() - t0
            Session(B, port, "smtp", "starttls").close()
            self.assertEqual(self.refusals(name, "max_per_client"), 300)
            self.assertEqual(metric(self.d, self.mport,
                                    "mailtlsd_connections_total",
                                    listener=name), total + 302)
            # The tail of the flood is logged within a second or so.
            mtd.wait_for(lambda: sum(int(l["refused"]) for l in limit_lines(
                self.d.log, name)) == 300, 10 * SLOW, 0.05,
                "log lines counting 300 refusals")
            lines = limit_lines(self.d.log, name)
            # One at once, then at most one a second.
            self.assertLessEqual(len(lines), 2 + math.ceil(elapsed), lines)
            self.assertEqual(sum(int(l["max_per_client"]) for l in lines),
                             300)
            # No backend connection for any of them: the held one, and
            # the one from the other address.
            self.fake.wait_conns(before + 2)
            self.assertEqual(len(self.fake.conns), before + 2)
            # And no close line per refused connection (only those of the
            # start-up port probe and of the session from B).
            closes = [l for l in self.d.log.splitlines()
                      if "event=close" in l and "listener=flood" in l]
            self.assertLessEqual(len(closes), 2, closes[:3])
        finally:
            held.close()


class TableMemory(unittest.TestCase):
    """100,000 distinct client addresses through PROXY headers from an
    allowed source: the table does not grow."""

    N = 100000
    BATCH = 200

    def test_memory_bounded_after_100000_addresses(self):
        port = free_port()
        env = None
        if mtd.SANITIZERS:
            # ASan's quarantine of freed memory fills during the first
            # 10,000; keep it small so that it does not look like growth.
            env = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:"
                   "quarantine_size_mb=4:allocator_release_to_os_interval_ms=0"}
        # max_connections 1000: a table of 2048 slots (64 KiB).
        d = Mailtlsd(mtd.daemon_conf({
            "front": mtd.listener_conf(
                "imap", "%s:%d" % (LOOPBACK, free_port()), port,
                accept_proxy="127.0.0.0/8", max_per_client="2",
                rate_per_client="1", max_connections="1000",
                handshake_timeout="10m")},
            workers="2", log_level="warn"), tc=self, name="climit-mem",
            env=env).start()
        # A client that holds its two connections all along.
        held = [sock_from(A, port) for _ in range(2)]
        for s in held:
            s.sendall(v1("2001:db8:77::1"))
        rss = {}
        for n in range(0, self.N, 10000):
            self.distinct(port, n, n + 10000)
            if n == 10000:
                rss["start"] = d.rss_kb()
        rss["end"] = d.rss_kb()
        # A table that kept every address would need 90,000 more entries
        # of at least 32 bytes: over 2.7 MiB more.  The bounded table is
        # 64 KiB; the allocator's own growth over 90,000 sessions in two
        # worker threads was seen up to 1.2 MiB on a loaded machine.
        self.assertLess(rss["end"] - rss["start"], 2048, rss)
        # The held client (its /64) was never forgotten: its cap holds.
        self.assertEqual(refused(A, port, "imap", "implicit",
                                 prefix=v1("2001:db8:77::2")), b"")
        for s in held:
            s.close()
        self.assertEqual(d.stop(), 0)

    def distinct(self, port, lo, hi):
        """Connections lo..hi-1, each with its own PROXY source address,
        BATCH at a time: header, then EOF; mailtlsd reads both and closes
        (so the TIME_WAIT is on its side, not on our ports)."""
        sel = selectors.DefaultSelector()
        todo = iter(range(lo, hi))
        live = 0

        def start():
            i = next(todo, None)
            if i is None:
                return False
            # (No bind: a port chosen at connect is found fast.)
            s = socket.create_connection((LOOPBACK, port), 10 * SLOW)
            s.sendall(v1("10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255,
                                           i & 255)))
            s.shutdown(socket.SHUT_WR)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            return True
        deadline = time.monotonic() + 300 * SLOW
        while live < self.BATCH and start():
            live += 1
        while live > 0:
            if time.monotonic() > deadline:
                raise AssertionError("connections not closed by mailtlsd")
            for key, _ in sel.select(5):
                s = key.fileobj
                try:
                    d = s.recv(4096)
                except ConnectionResetError:
                    d = b""
                if d:
                    continue
                sel.unregister(s)
                s.close()
                live -= 1
                if start():
                    live += 1
        sel.close()


class PlaintextTimeout(unittest.TestCase):
    """require_tls = no: a STARTTLS client may stay in plaintext, idle for
    plaintext_timeout, not idle_timeout; after STARTTLS, idle_timeout."""

    def test_idle_plaintext_is_closed_after_plaintext_timeout(self):
        rs = servers()
        port = free_port()
        d = Mailtlsd(mtd.daemon_conf({
            "sub": mtd.listener_conf(
                "smtp", "%s:%d" % (LOOPBACK, rs.smtp_port), port,
                client_tls="starttls", require_tls="no",
                plaintext_timeout="1s", idle_timeout="10m")},
            log_level="info"), tc=self, name="climit-plain").start()
        s = sock_from(A, port)
        client = "%s:%d" % s.getsockname()
        try:
            self.assertTrue(read_line(s).startswith(b"220 "))
            s.sendall(b"EHLO client.example\r\n")
            t0 = time.monotonic()
            rest = read_to_eof(s, 10)
            self.assertIn(b"250", rest)
            self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        finally:
            s.close()
        line = d.wait_log(r"event=close.*client=%s .*" % re.escape(client)
                          ).group(0)
        self.assertEqual(mtd.parse_kv(line)["reason"], "idle_timeout")
        # After STARTTLS the session is past the plaintext phase: idle
        # for twice plaintext_timeout, it is still served.
        s = sock_from(A, port)
        try:
            self.assertTrue(read_line(s).startswith(b"220 "))
            s.sendall(b"STARTTLS\r\n")
            self.assertTrue(read_line(s).startswith(b"220 "))
            c = TlsConn(port, sock=s)
            c.send(b"EHLO client.example\r\n")
            c.recv_until(b"250 ")
            c.recv_until(b"\n")
            start = time.monotonic()
            # The client's own pause (the behaviour under test).
            time.sleep(2.0)
            self.assertGreater(time.monotonic() - start, 1.5)
            c.send(b"NOOP\r\n")
            self.assertTrue(c.recv_until(b"\n").startswith(b"250"))
            c.close()
        finally:
            s.close()
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
