"""
The certificate reloader (SPEC: "Certificates and the reloader"): a renewed
certificate is served to new handshakes within 2 seconds of the change on
disk, with no signal, whatever the layout (rewritten in place, renamed over,
a Kubernetes "..data" symlink swap, certbot's live/ links into archive/),
and at once on SIGHUP; sessions opened before keep working; a bad pair
(garbage, another certificate's key, expired) is refused, logged with the
file name, and the old pair keeps serving; and reloads under load never fail
a handshake.

Which certificate is served is told by the DER of the leaf: each pair is
issued with its own serial number by the test CA.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import threading
import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK, free_port

# The SPEC's promise, scaled under the sanitizers (everything is slower).
WITHIN = 2.0 * SLOW


def leaf_der(pair):
    """The DER of the first certificate in pair.cert."""
    with open(pair.cert) as f:
        pem = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                  pem, re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def served_der(port, timeout=5.0):
    """The leaf a new handshake gets (verified against the test CA)."""
    with TlsConn(port, timeout=timeout) as c:
        return c.peer_cert_der()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write_in_place(path, data):
    """Truncate and rewrite: the same inode, as `cat new > old` does."""
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.truncate(0)
        f.write(data)


def write_rename(path, data):
    """Write a new file beside, then rename it over (editors, acme.sh)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Pairs:
    """Leaf certificates of the test CA, one per name, made once."""

    _made = {}

    @classmethod
    def get(cls, name):
        if name not in cls._made:
            cls._made[name] = mtd.certs().issue("reload-" + name)
        return cls._made[name]


class ReloadCase(unittest.TestCase):
    """A mailtlsd with one implicit listener in front of an echo backend."""

    def start(self, cert, key, env=None, user=None):
        self.backend = FakeBackend(FakeBackend.echo, tc=self)
        self.port = free_port()
        self.sessions = []
        glob = {"log_level": "debug", "workers": 2,
                "shutdown_timeout": "5s"}
        if user:
            glob["user"] = user
        self.d = Mailtlsd({
            "global": glob,
            "imp": {
                "listen": "%s:%d" % (LOOPBACK, self.port),
                "protocol": "none",
                "client_tls": "implicit",
                "backend": self.backend.addr,
                "certs": [(cert, key)],
                "handshake_timeout": "10s",
            },
        }, tc=self, name="reload", env=env)
        self.d.start()
        self.d.wait_log(r"event=reload_watch ")
        return self.d

    def tearDown(self):
        # Open sessions would hold the shutdown for shutdown_timeout.
        for c in getattr(self, "sessions", []):
            c.close()
        d = getattr(self, "d", None)
        if d is not None and d.proc is not None and d.proc.poll() is None:
            self.assertEqual(d.stop(), 0, d.log[-4000:])

    def assertServes(self, pair, msg=None):
        self.assertEqual(served_der(self.port), leaf_der(pair), msg)

    def wait_serves(self, pair, since, within=WITHIN):
        """Handshake again and again until pair is served; fail if that
        takes more than `within` seconds after `since`."""
        want = leaf_der(pair)
        deadline = since + within
        while True:
            if served_der(self.port) == want:
                return time.monotonic() - since
            if time.monotonic() >= deadline:
                self.fail("%s not served within %.1fs of the change\n"
                          "--- log:\n%s" % (pair.cert, within,
                                            self.d.log[-4000:]))
            time.sleep(0.02)

    def open_session(self):
        """A session opened before the swap, with data through it."""
        c = TlsConn(self.port)
        self.sessions.append(c)
        c.send(b"before\n")
        self.assertEqual(c.recv_until(b"\n"), b"before\n")
        return c

    def check_session_alive(self, c, old_pair):
        """The old session still relays, both ways, with its old leaf."""
        self.assertEqual(c.peer_cert_der(), leaf_der(old_pair))
        blob = os.urandom(256 * 1024)
        c.pump(blob, len(blob))
        self.assertEqual(c.recv_exact(len(blob)), blob)
        c.send(b"after\n")
        self.assertEqual(c.recv_until(b"\n"), b"after\n")

    def reload_lines(self, result=None):
        rx = r"^.*event=reload .*result=%s.*$" % (result or r"\S+")
        return re.findall(rx, self.d.log, re.M)


class LayoutTest(ReloadCase):
    """Each layout: the new pair is served within 2 s, without a signal."""

    def test_rewrite_in_place(self):
        a, b = Pairs.get("a"), Pairs.get("b")
        d = mtd.tempdir("mtd-reload-")
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        shutil.copyfile(a.chain, crt)
        shutil.copyfile(a.key, key)
        self.start(crt, key)
        self.assertServes(a)
        old = self.open_session()

        write_in_place(key, read(b.key))
        write_in_place(crt, read(b.chain))
        self.wait_serves(b, time.monotonic())
        self.check_session_alive(old, a)
        self.assertEqual(self.reload_lines("failed"), [])

    def test_rename_over(self):
        a, b, c = Pairs.get("a"), Pairs.get("b"), Pairs.get("c")
        d = mtd.tempdir("mtd-reload-")
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        shutil.copyfile(a.chain, crt)
        shutil.copyfile(a.key, key)
        self.start(crt, key)
        old = self.open_session()

        write_rename(crt, read(b.chain))
        write_rename(key, read(b.key))
        self.wait_serves(b, time.monotonic())
        # The watch survives its file being replaced: once more.
        write_rename(key, read(c.key))
        write_rename(crt, read(c.chain))
        self.wait_serves(c, time.monotonic())
        self.check_session_alive(old, a)
        self.assertEqual(self.reload_lines("failed"), [])

    @staticmethod
    def k8s_publish(vol, ts, pair):
        """What the kubelet's atomic writer does: a new timestamped
        directory, a new ..data_tmp link renamed over ..data, the old
        directory removed."""
        new = os.path.join(vol, ts)
        os.mkdir(new)
        shutil.copyfile(pair.chain, os.path.join(new, "tls.crt"))
        shutil.copyfile(pair.key, os.path.join(new, "tls.key"))
        data = os.path.join(vol, "..data")
        old = os.readlink(data) if os.path.islink(data) else None
        os.symlink(ts, os.path.join(vol, "..data_tmp"))
        os.replace(os.path.join(vol, "..data_tmp"), data)
        if old:
            shutil.rmtree(os.path.join(vol, old))

    def kubernetes(self, env=None):
        a, b, c = Pairs.get("a"), Pairs.get("b"), Pairs.get("c")
        vol = mtd.tempdir("mtd-reload-k8s-")
        self.k8s_publish(vol, "..2026_01_01_00_00_00.000000001", a)
        for n in ("tls.crt", "tls.key"):
            os.symlink(os.path.join("..data", n), os.path.join(vol, n))
        self.start(os.path.join(vol, "tls.crt"),
                   os.path.join(vol, "tls.key"), env=env)
        self.assertServes(a)
        old = self.open_session()

        self.k8s_publish(vol, "..2026_01_02_00_00_00.000000002", b)
        self.wait_serves(b, time.monotonic())
        # The next update goes through the new directory.
        self.k8s_publish(vol, "..2026_01_03_00_00_00.000000003", c)
        self.wait_serves(c, time.monotonic())
        self.check_session_alive(old, a)
        self.assertEqual(self.reload_lines("failed"), [])

    def test_kubernetes_secret_data_swap(self):
        self.kubernetes()

    def test_kubernetes_without_fs_events(self):
        """The fingerprint check alone (a file system without inotify)."""
        self.kubernetes(env={"MAILTLSD_RELOADER_POLL_ONLY": "1"})
        self.assertIn("fs_events=off", self.d.log)

    def test_certbot_live_links(self):
        a, b = Pairs.get("a"), Pairs.get("b")
        le = mtd.tempdir("mtd-reload-le-")
        live = os.path.join(le, "live", "mail.example.test")
        arch = os.path.join(le, "archive", "mail.example.test")
        os.makedirs(live)
        os.makedirs(arch)
        os.chmod(os.path.join(le, "live"), 0o700)
        os.chmod(os.path.join(le, "archive"), 0o700)

        def issue(n, pair):
            for src, base in ((pair.chain, "fullchain"),
                              (pair.key, "privkey")):
                shutil.copyfile(src, os.path.join(arch, "%s%d.pem" %
                                                  (base, n)))

        def relink(n):
            # certbot's storage.py: unlink, then a new relative link.
            for base in ("fullchain", "privkey"):
                link = os.path.join(live, base + ".pem")
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink("../../archive/mail.example.test/%s%d.pem" %
                           (base, n), link)

        issue(1, a)
        relink(1)
        self.start(os.path.join(live, "fullchain.pem"),
                   os.path.join(live, "privkey.pem"))
        self.assertServes(a)
        old = self.open_session()

        issue(2, b)
        relink(2)
        self.wait_serves(b, time.monotonic())
        self.check_session_alive(old, a)
        self.assertEqual(self.reload_lines("failed"), [])

    def test_sighup(self):
        a, b = Pairs.get("a"), Pairs.get("b")
        d = mtd.tempdir("mtd-reload-")
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        shutil.copyfile(a.chain, crt)
        shutil.copyfile(a.key, key)
        # No fs events: only SIGHUP (or the poll, much later) can reload.
        self.start(crt, key, env={"MAILTLSD_RELOADER_POLL_ONLY": "1"})
        old = self.open_session()

        write_rename(crt, read(b.chain))
        write_rename(key, read(b.key))
        self.d.signal(signal.SIGHUP)
        self.d.wait_log(r"event=reload .*trigger=SIGHUP .*result=ok")
        # A reload on SIGHUP is done by the time it is logged.
        self.assertServes(b)
        self.check_session_alive(old, a)
        # SIGHUP reloads even when nothing changed.
        self.d.signal(signal.SIGHUP)
        mtd.wait_for(lambda: len(re.findall(
            r"trigger=SIGHUP .*result=ok", self.d.log)) >= 2,
            5 * SLOW, what="second SIGHUP reload")
        self.assertServes(b)


class RejectTest(ReloadCase):
    """A bad pair is refused; the old one keeps serving; the log says why."""

    def setUp(self):
        self.a = Pairs.get("a")
        self.dir = mtd.tempdir("mtd-reload-")
        self.crt = os.path.join(self.dir, "tls.crt")
        self.key = os.path.join(self.dir, "tls.key")
        shutil.copyfile(self.a.chain, self.crt)
        shutil.copyfile(self.a.key, self.key)
        self.start(self.crt, self.key)
        self.old = self.open_session()

    def expect_rejected(self, reason, name):
        line = self.d.wait_log(r"^.*event=reload .*result=failed.*%s.*$" %
                               reason).group(0)
        self.assertIn(name, line)
        self.assertServes(self.a)
        self.check_session_alive(self.old, self.a)
        # And a good pair afterwards is taken.
        b = Pairs.get("b")
        write_rename(self.key, read(b.key))
        write_rename(self.crt, read(b.chain))
        self.wait_serves(b, time.monotonic())

    def test_garbage_pem(self):
        write_rename(self.crt, b"-----BEGIN CERTIFICATE-----\n"
                     b"bm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
        self.expect_rejected(r"does not parse", self.crt)

    def test_garbage_key(self):
        write_in_place(self.key, b"this is no key\n")
        self.expect_rejected(r"cannot use certificate", self.key)

    def test_key_of_another_certificate(self):
        write_rename(self.key, read(Pairs.get("b").key))
        self.expect_rejected(r"do not match", self.key)

    def test_expired_certificate(self):
        exp = mtd.certs().expired
        write_rename(self.key, read(exp.key))
        write_rename(self.crt, read(exp.chain))
        self.expect_rejected(r"expired on 2020-", self.crt)

    def test_missing_file_then_back(self):
        os.unlink(self.key)
        self.expect_rejected(r"cannot", self.key)


class LoadTest(ReloadCase):

    def test_50_reloads_during_handshakes(self):
        a, b = Pairs.get("a"), Pairs.get("b")
        d = mtd.tempdir("mtd-reload-")
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        shutil.copyfile(a.chain, crt)
        shutil.copyfile(a.key, key)
        self.start(crt, key)
        ders = {leaf_der(a): "a", leaf_der(b): "b"}

        stop = threading.Event()
        lock = threading.Lock()
        stats = {"ok": 0, "failed": [], "seen": set()}

        def client():
            ctx = mtd.client_context()
            while not stop.is_set():
                try:
                    with socket.create_connection(
                            (LOOPBACK, self.port), timeout=10 * SLOW) as s:
                        with ctx.wrap_socket(
                                s, server_hostname="localhost") as t:
                            t.sendall(b"ping\n")
                            got = b""
                            while not got.endswith(b"\n"):
                                chunk = t.recv(64)
                                if not chunk:
                                    break
                                got += chunk
                            if got != b"ping\n":
                                raise AssertionError("echo: %r" % got)
                            der = t.getpeercert(binary_form=True)
                    with lock:
                        stats["ok"] += 1
                        stats["seen"].add(ders.get(der, "?"))
                except Exception as e:  # noqa: BLE001 - counted
                    with lock:
                        stats["failed"].append(repr(e))

        threads = [threading.Thread(target=client, daemon=True)
                   for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(50):
                pair = b if i % 2 == 0 else a
                write_rename(crt, read(pair.chain))
                write_rename(key, read(pair.key))
                if i % 2:
                    self.d.signal(signal.SIGHUP)
                mtd.wait_for(
                    lambda: len(self.reload_lines("ok")) >= i + 1,
                    10 * SLOW, what="reload %d" % (i + 1))
        finally:
            stop.set()
            for t in threads:
                t.join(30 * SLOW)
        self.assertEqual(stats["failed"], [], self.d.log[-4000:])
        self.assertGreater(stats["ok"], 50)
        self.assertEqual(stats["seen"], {"a", "b"})
        self.assertGreaterEqual(len(self.reload_lines("ok")), 50)
        self.assertEqual(self.reload_lines("failed"), [])


class PermissionTest(ReloadCase):
    """After dropping to an unprivileged user, the reloader reads what that
    user can read: what the README asks for is enough, and less is refused
    with the reason."""

    def setUp(self):
        if os.geteuid() != 0:
            raise mtd.HarnessError("PermissionTest must run as root")
        self.pw = pwd.getpwnam("nobody")

    def layout(self, key_mode):
        root = mtd.tempdir("mtd-reload-perm-")
        d = os.path.join(root, "tls")
        os.mkdir(d)
        # Directories: group search + read (inotify needs read access).
        os.chown(d, 0, self.pw.pw_gid)
        os.chmod(d, 0o750)
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        a = Pairs.get("a")
        shutil.copyfile(a.chain, crt)
        shutil.copyfile(a.key, key)
        os.chmod(crt, 0o644)
        os.chown(key, 0, self.pw.pw_gid)
        os.chmod(key, key_mode)
        return crt, key

    def test_group_readable_key_reloads_as_nobody(self):
        crt, key = self.layout(0o640)
        self.start(crt, key, user="nobody")
        self.d.wait_log(r"running as user nobody")
        b = Pairs.get("b")
        # A renewal tool running as root keeps the group and the mode.
        write_in_place(key, read(b.key))
        write_in_place(crt, read(b.chain))
        self.wait_serves(b, time.monotonic())

    def test_root_only_key_is_refused_old_pair_serves(self):
        crt, key = self.layout(0o640)
        self.start(crt, key, user="nobody")
        self.d.wait_log(r"running as user nobody")
        b = Pairs.get("b")
        write_rename(key, read(b.key))      # a new file: root:root 0600
        os.chmod(key, 0o600)
        write_in_place(crt, read(b.chain))
        line = self.d.wait_log(r"^.*event=reload .*result=failed.*$").group(0)
        self.assertIn(key, line)
        self.assertRegex(line, r"(?i)permission|cannot")
        self.assertServes(Pairs.get("a"))


if __name__ == "__main__":
    unittest.main()
