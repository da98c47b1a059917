"""
Trust at the edges, part 3: dropping privileges ([global] user) and TLS
session tickets shared by replicas ([global] ticket_key_file).
"""

import base64
import grp
import os
import pwd
import signal
import socket
import ssl
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK, free_port

HOSTNAME = mtd.FRONT_HOSTNAME
SNI = "mail.example.test"
GREETING = b"hello from the backend\n"


def listener(backend, listen, protocol="none", **kw):
    return mtd.listener_conf(protocol, backend, listen, **kw)


def config(listeners, **glob):
    return mtd.daemon_conf(listeners, **dict({"workers": "2"}, **glob))


def status_fields(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


# --------------------------------------------------------------------------

class PrivilegeDrop(unittest.TestCase):
    """Started as root with [global] user = nobody: every thread ends up as
    nobody/nogroup with no capabilities, after binding a port below 1024,
    and sessions work."""

    USER = "nobody"

    def low_port(self):
        """A port in 600-1000 that binds now on 127.0.0.1 (root only)."""
        for p in range(600, 1001):
            s = socket.socket()
            try:
                s.bind((LOOPBACK, p))
                return p
            except OSError:
                continue
            finally:
                s.close()
        self.fail("no port in 600-1000 is free on 127.0.0.1")

    def test_runs_as_nobody_on_a_privileged_port(self):
        # CI runs the tests as root; anything else cannot test this at all
        self.assertEqual(os.geteuid(), 0,
                         "this test must run as root (it checks that "
                         "mailtlsd drops root after binding port < 1024)")
        pw = pwd.getpwnam(self.USER)
        uid, gid = pw.pw_uid, pw.pw_gid
        self.assertNotEqual(uid, 0)
        allowed_groups = {gid} | {g.gr_gid for g in grp.getgrall()
                                  if self.USER in g.gr_mem}

        b = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        low = self.low_port()
        high = free_port()
        d = Mailtlsd(config({
            "low": listener(b.addr, low),
            "high": listener(b.addr, high),
        }, user=self.USER, workers="3"), tc=self).start()
        d.wait_log(r"event=ready")

        # every thread of the process, not only the main one
        tasks = os.listdir("/proc/%d/task" % d.pid)
        self.assertGreaterEqual(len(tasks), 4, "main thread + 3 workers")
        for tid in tasks:
            st = status_fields("/proc/%d/task/%s/status" % (d.pid, tid))
            with self.subTest(task=tid):
                # real, effective, saved set, file system
                self.assertEqual(st["Uid"], [str(uid)] * 4, st["Uid"])
                self.assertEqual(st["Gid"], [str(gid)] * 4, st["Gid"])
                groups = {int(g) for g in st.get("Groups", [])}
                self.assertNotIn(0, groups, st.get("Groups"))
                self.assertLessEqual(groups, allowed_groups,
                                     st.get("Groups"))
                for cap in ("CapPrm", "CapEff", "CapAmb"):
                    if cap in st:
                        self.assertEqual(int(st[cap][0], 16), 0,
                                         "%s = %s" % (cap, st[cap]))

        # sessions on both ports are relayed
        for port in (low, high):
            with self.subTest(port=port):
                with TlsConn(port, server_hostname=SNI) as c:
                    self.assertEqual(c.recv_until(b"\n"), GREETING)
                    c.send(b"ping %d\n" % port)
                    self.assertEqual(c.recv_until(b"\n"), b"ping %d\n" %
                                     port)
        b.check()
        self.assertEqual(d.stop(), 0, d.log[-3000:])


# --------------------------------------------------------------------------
# Session tickets

def openssl_ticket_key(directory, name="ticket.key"):
    """A ticket key file exactly as the spec says to make one:
    openssl rand -base64 64 > FILE (88 characters on two lines)."""
    mtd.need_tool("openssl")
    r = mtd.run(["openssl", "rand", "-base64", "64"], check=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(r.stdout)
    os.chmod(path, 0o600)
    assert len(base64.b64decode(r.stdout)) == 64
    return path


class Replica:
    """One mailtlsd with an implicit protocol = none listener in front of an
    echo backend that greets."""

    def __init__(self, tc, backend, name, **glob):
        self.port = free_port()
        self.d = Mailtlsd(config({"t": listener(backend.addr, self.port)},
                                 **glob), tc=tc, name=name).start()


def connect(port, ctx, session=None):
    """Connect, read the greeting (by then a TLS 1.3 ticket has been
    processed), send and get back one line; return (session, reused).
    port may be a Replica: its log is shown when this fails."""
    if isinstance(port, Replica):
        r = port
        try:
            return connect(r.port, ctx, session)
        except (AssertionError, OSError) as e:
            raise AssertionError("%r (resuming: %s)\n--- log of %s:\n%s" % (
                e, session is not None, r.d.dir, r.d.log[-3000:]))
    raw = socket.create_connection((LOOPBACK, port), timeout=10 * SLOW)
    s = ctx.wrap_socket(raw, server_hostname=SNI, session=session)
    try:
        f = b""
        while not f.endswith(b"\n"):
            d = s.recv(1024)
            if not d:
                raise AssertionError("EOF before the greeting; got %r" % f)
            f += d
        assert f == GREETING, f
        s.sendall(b"x\n")
        got = b""
        while not got.endswith(b"\n"):
            d = s.recv(1024)
            if not d:
                break
            got += d
        assert got == b"x\n", got
        return s.session, s.session_reused
    finally:
        s.close()


class SessionTickets(unittest.TestCase):
    VERSIONS = ("TLSv1_3", "TLSv1_2")

    def setUp(self):
        self.b = FakeBackend(FakeBackend.greet_echo(GREETING), tc=self)
        self.dir = mtd.tempdir("mtd-tickets-")

    def ctx(self, version):
        v = getattr(ssl.TLSVersion, version)
        return mtd.client_context(minimum=v, maximum=v)

    def ticket_from(self, port, ctx):
        sess, reused = connect(port, ctx)
        self.assertFalse(reused)
        self.assertIsNotNone(sess)
        self.assertTrue(sess.has_ticket, "no session ticket was issued")
        return sess

    def test_same_key_file_resumes_across_processes(self):
        key = openssl_ticket_key(self.dir)
        a = Replica(self, self.b, "ticket-a", ticket_key_file=key)
        b = Replica(self, self.b, "ticket-b", ticket_key_file=key)
        for version in self.VERSIONS:
            with self.subTest(tls=version):
                ctx = self.ctx(version)
                sess = self.ticket_from(a, ctx)
                _, reused = connect(b, ctx, sess)
                self.assertTrue(reused, "the second replica did not resume "
                                "the first one's session")
                # and the other way round
                sess = self.ticket_from(b, ctx)
                _, reused = connect(a, ctx, sess)
                self.assertTrue(reused)
        self.assertRegex(b.d.log, r"event=handshake .*resumed=1")

    def test_random_keys_do_not_resume_across_processes(self):
        a = Replica(self, self.b, "ticket-rand-a")
        b = Replica(self, self.b, "ticket-rand-b")
        for version in self.VERSIONS:
            with self.subTest(tls=version):
                ctx = self.ctx(version)
                sess = self.ticket_from(a, ctx)
                # control: the issuing process resumes it
                _, reused = connect(a, ctx, sess)
                self.assertTrue(reused, "not even the issuer resumed")
                # another process with its own random key: a full handshake
                sess = self.ticket_from(a, ctx)
                _, reused = connect(b, ctx, sess)
                self.assertFalse(reused)

    def test_different_key_files_do_not_resume(self):
        a = Replica(self, self.b, "ticket-k1", ticket_key_file=(
            openssl_ticket_key(self.dir, "k1")))
        b = Replica(self, self.b, "ticket-k2", ticket_key_file=(
            openssl_ticket_key(self.dir, "k2")))
        ctx = self.ctx("TLSv1_3")
        sess = self.ticket_from(a, ctx)
        _, reused = connect(b, ctx, sess)
        self.assertFalse(reused)

    def test_key_file_reread_on_sighup(self):
        """"It is re-read with the certificates" (SPEC): after the file
        changes and SIGHUP, tickets made with the new key are resumed."""
        k1 = openssl_ticket_key(self.dir, "k1")
        k2 = openssl_ticket_key(self.dir, "k2")
        a = Replica(self, self.b, "ticket-reload-a", ticket_key_file=k1)
        b = Replica(self, self.b, "ticket-reload-b", ticket_key_file=k2)
        ctx = self.ctx("TLSv1_3")
        sess = self.ticket_from(b, ctx)
        _, reused = connect(a, ctx, sess)
        self.assertFalse(reused, "resumed before the key changed")
        # give a the key of b: atomic replace, then SIGHUP
        with open(k2) as f:
            text = f.read()
        tmp = k1 + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, k1)
        a.d.signal(signal.SIGHUP)

        def resumed_on_a():
            sess = self.ticket_from(b, ctx)
            return connect(a, ctx, sess)[1]
        try:
            mtd.wait_for(resumed_on_a, 10 * SLOW, 0.1,
                         "a ticket made with the new key to be resumed")
        except mtd.HarnessError as e:
            self.fail("%s: the key file was not re-read on SIGHUP\n"
                      "--- log:\n%s" % (e, a.d.log[-3000:]))
        self.assertRegex(a.d.log, r"event=reload .*result=ok")

    # -- bad files

    def bad_files(self):
        d = self.dir
        out = {}

        def w(name, data, mode="w"):
            p = os.path.join(d, name)
            with open(p, mode) as f:
                f.write(data)
            out[name] = p
        w("short.key", base64.b64encode(os.urandom(32)).decode() + "\n")
        w("long.key", base64.b64encode(os.urandom(65)).decode() + "\n")
        w("junk.key", "this is not base64 at all!!!\n")
        w("empty.key", "")
        w("raw.key", os.urandom(64), "wb")
        out["missing.key"] = os.path.join(d, "missing.key")
        return out

    def test_bad_key_file_check_exits_1_start_exits_2(self):
        for name, path in self.bad_files().items():
            with self.subTest(file=name):
                cfg = config({"t": listener(self.b.addr, free_port())},
                             ticket_key_file=path)
                rc, out = Mailtlsd.check(cfg)
                self.assertEqual(rc, 1, out)
                self.assertIn(path, out)
                d = Mailtlsd(cfg, tc=self, name="ticket-bad").spawn()
                self.assertEqual(d.wait(15), 2, d.log)
                self.assertIn(path, d.log)

    def test_good_key_file_check_exits_0(self):
        cfg = config({"t": listener(self.b.addr, free_port())},
                     ticket_key_file=openssl_ticket_key(self.dir))
        rc, out = Mailtlsd.check(cfg)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
