"""
Operations without downtime (SPEC: "Operations without downtime"):

* SIGHUP reloads the configuration file: listeners added and removed,
  backends changed, a bad file refused with FILE:LINE errors and counted,
  open sessions untouched, new sessions on the new settings;
* SIGUSR2 upgrades in place: the binary is started again with the listening
  sockets, the old process drains and exits 0; a new binary that fails
  leaves the old one serving;
* socket activation: sockets from systemd (systemd-socket-activate) are
  used instead of binding; sd_notify READY/RELOADING/STOPPING are sent.

Throughout, a client connects in a tight loop (TCP, TLS handshake, the
backend's greeting): not one of its connections may be refused or fail.
"""

import ctypes
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest
import urllib.request

import mtd
from mtd import (FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK, free_port,
                 listener_conf, daemon_conf, render_config, wait_for)

GREET_A = b"220 backend-A ready\r\n"
GREET_B = b"220 backend-B ready\r\n"

# A bound on every loop: iterations and seconds.
LOOP_MAX_CONNS = 20000
LOOP_MAX_SECONDS = 600


class ConnectLoop:
    """Connects to ${port} again and again from a thread until stopped (or
    a bound is reached): TCP connect, TLS handshake, the greeting.  Counts
    the good ones and keeps every failure."""

    def __init__(self, port, greetings=(GREET_A, GREET_B)):
        self.port = port
        self.greetings = greetings
        self.ok = 0
        self.failures = []
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *a):
        self.stop()

    def _run(self):
        deadline = time.monotonic() + LOOP_MAX_SECONDS
        while (not self._stop.is_set() and time.monotonic() < deadline and
               self.ok + len(self.failures) < LOOP_MAX_CONNS):
            try:
                with TlsConn(self.port, timeout=10) as c:
                    line = c.recv_until(b"\n")
                if line in self.greetings:
                    self.ok += 1
                    self.seen.add(line)
                else:
                    self.failures.append("greeting %r" % line)
            except Exception as e:  # refused, reset, timeout: all failures
                self.failures.append(repr(e))

    def wait_more(self, n=3):
        """Wait until ${n} more connections have succeeded (proves the loop
        ran across whatever happened just before)."""
        target = self.ok + n
        wait_for(lambda: self.ok >= target or self.failures, 30 * SLOW,
                 what="%d more connections in the loop" % n)

    def stop(self):
        self._stop.set()
        self._thread.join(60 * SLOW)


def leaf_der(pair):
    """The DER of the first certificate in pair.cert."""
    with open(pair.cert) as f:
        pem = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                  pem, re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def greeting(port):
    with TlsConn(port) as c:
        return c.recv_until(b"\n")


def open_session(port):
    """A session that has its greeting; returns (conn, greeting)."""
    c = TlsConn(port)
    return c, c.recv_until(b"\n")


def session_command(tc, c, token):
    """The session still relays both ways (the backends echo)."""
    c.send(token + b"\r\n")
    tc.assertEqual(c.recv_until(b"\r\n"), token + b"\r\n")


def metrics_text(port):
    with urllib.request.urlopen("http://%s:%d/metrics" % (LOOPBACK, port),
                                timeout=10 * SLOW) as r:
        return r.read().decode()


def metrics_or_none(port):
    try:
        return metrics_text(port)
    except OSError:
        return ""


def count_lines(d, pattern):
    return len(re.findall(pattern, d.log, re.M))


def listening_sockets(port):
    """How many LISTEN sockets the kernel has on 127.0.0.1:${port}."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and local == "0100007F:%04X" % port:
                n += 1
    return n


class OperationsCase(unittest.TestCase):

    def setUp(self):
        self.a = FakeBackend(FakeBackend.greet_echo(GREET_A), tc=self,
                             record=False)
        self.b = FakeBackend(FakeBackend.greet_echo(GREET_B), tc=self,
                             record=False)
        self.port = free_port()
        self.sessions = []

    def tearDown(self):
        for c in self.sessions:
            c.close()

    def conf(self, backend, extra_port=None, certs=None, **glob):
        ls = {"stable": listener_conf("none", backend.addr, self.port,
                                      certs=certs)}
        if extra_port is not None:
            ls["extra"] = listener_conf("none", self.b.addr, extra_port)
        g = {"workers": 2}
        g.update(glob)
        return daemon_conf(ls, **g)

    def session(self, port=None):
        c, g = open_session(port or self.port)
        self.sessions.append(c)
        return c, g


class TestReload(OperationsCase):

    def test_20_reloads_refuse_nothing(self):
        """20 SIGHUPs cycling through a backend change, a listener added,
        the listener removed, a bad file, a file whose new address is held
        by another socket, and a new certificate: the loop sees no refused or failed
        connection, every open session completes a command after each
        reload, new sessions get the new settings (or the old ones after an
        error), and /metrics counts the reloads by result."""
        mport = free_port()
        extra = free_port()
        # Somebody else's socket on the address of a new listener.
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind((LOOPBACK, 0))
        held.listen(1)
        busy_port = held.getsockname()[1]
        metrics = "%s:%d" % (LOOPBACK, mport)
        busy = self.conf(self.a, extra, metrics=metrics)
        busy["busy"] = listener_conf("none", self.a.addr, busy_port)
        # "back" also gives the listener another certificate.
        first = mtd.certs().server_ecdsa
        other = mtd.certs().issue("ops-other")
        d = Mailtlsd(self.conf(self.a, metrics=metrics), tc=self,
                     name="reload20")
        d.start()
        steps = [
            ("backend", self.conf(self.b, metrics=metrics)),
            ("add", self.conf(self.a, extra, metrics=metrics)),
            ("remove", self.conf(self.b, metrics=metrics)),
            ("bad", None),
            ("busy", busy),
            ("back", self.conf(self.a, metrics=metrics, certs=[other])),
        ]
        leaf = {p: leaf_der(p) for p in (first, other)}
        serving = first
        expect = GREET_A
        ok = err = 0
        with ConnectLoop(self.port) as loop:
            loop.wait_more()
            for i in range(20):
                what, cfg = steps[i % len(steps)]
                old, old_greet = self.session()
                self.assertEqual(old_greet, expect)
                self.assertEqual(old.peer_cert_der(), leaf[serving])
                if cfg is None:
                    # A bad address and an unknown key: two FILE:LINE
                    # errors.
                    text = render_config(self.conf(self.b, extra)) + \
                        "\n[broken]\nlisten = 127.0.0.1:notaport\n" \
                        "no_such_key = 1\n"
                else:
                    text = render_config(cfg)
                with open(d.path + ".tmp", "w") as f:
                    f.write(text)
                os.replace(d.path + ".tmp", d.path)
                n = count_lines(d, r"event=config_reload .*result=")
                nc = count_lines(d, r"event=reload .*trigger=SIGHUP "
                                 r".*result=ok")
                d.signal(signal.SIGHUP)
                wait_for(lambda: count_lines(
                    d, r"event=config_reload .*result=") > n, 10 * SLOW,
                    what="reload %d (%s) logged" % (i, what))
                # Certificates are reloaded on every SIGHUP, even when the
                # file has an error.
                wait_for(lambda: count_lines(
                    d, r"event=reload .*trigger=SIGHUP .*result=ok") > nc,
                    10 * SLOW, what="certificates reloaded (%d)" % i)
                last = re.findall(r"event=config_reload .*result=(\w+)",
                                  d.log)[-1]
                if what == "bad":
                    err += 1
                    self.assertEqual(last, "error")
                    self.assertRegex(d.log, re.escape(d.path) +
                                     r":\d+: .*notaport")
                    self.assertRegex(d.log, re.escape(d.path) +
                                     r":\d+: .*no_such_key")
                elif what == "busy":
                    err += 1
                    self.assertEqual(last, "error")
                    self.assertRegex(d.log, re.escape(d.path) +
                                     r":\d+: listener busy: .*%d" %
                                     busy_port)
                    # The socket made for "extra" in the same attempt was
                    # closed again: nothing changed.
                    self.assertFalse(mtd.port_accepts(extra))
                else:
                    ok += 1
                    self.assertEqual(last, "ok")
                    expect = {"backend": GREET_B, "add": GREET_A,
                              "remove": GREET_B, "back": GREET_A}[what]
                    serving = other if what == "back" else first
                # The session opened before finishes under its settings.
                session_command(self, old, b"NOOP %d" % i)
                old.close()
                # New sessions: the new backend (or the old one after an
                # error).
                self.assertEqual(greeting(self.port), expect,
                                 "after reload %d (%s)" % (i, what))
                with TlsConn(self.port) as c:
                    self.assertEqual(c.peer_cert_der(), leaf[serving],
                                     "certificate after reload %d (%s)" %
                                     (i, what))
                if what == "add":
                    self.assertEqual(greeting(extra), GREET_B)
                    self.extra_session = self.session(extra)[0]
                elif what == "remove":
                    mtd.wait_port_closed(extra, timeout=10 * SLOW)
                    # Its open session was not interrupted.
                    session_command(self, self.extra_session, b"STILL")
                    self.extra_session.close()
                loop.wait_more()
        self.assertEqual(loop.failures, [], d.log[-4000:])
        self.assertGreater(loop.ok, 20)
        self.assertEqual(loop.seen, {GREET_A, GREET_B})
        self.assertEqual((ok, err), (14, 6))
        m = metrics_text(mport)
        self.assertIn('mailtlsd_config_reloads_total{result="ok"} %d' % ok,
                      m)
        self.assertIn('mailtlsd_config_reloads_total{result="error"} %d' %
                      err, m)
        self.assertEqual(d.stop(), 0)

    def test_metrics_address_moves(self):
        """A new metrics address is bound before anything changes: one
        held by somebody else fails the reload and the old endpoint keeps
        answering; a free one takes over from the old."""
        m1, m2 = free_port(), free_port()
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind((LOOPBACK, 0))
        held.listen(1)
        d = Mailtlsd(self.conf(self.a, metrics="%s:%d" % (LOOPBACK, m1)),
                     tc=self, name="metricsmove")
        d.start()
        for port, result in ((held.getsockname()[1], "error"), (m2, "ok")):
            with open(d.path, "w") as f:
                f.write(render_config(self.conf(
                    self.b, metrics="%s:%d" % (LOOPBACK, port))))
            n = count_lines(d, r"event=config_reload .*result=")
            d.signal(signal.SIGHUP)
            wait_for(lambda: count_lines(
                d, r"event=config_reload .*result=") > n, 10 * SLOW,
                what="reload logged")
            self.assertEqual(re.findall(
                r"event=config_reload .*result=(\w+)", d.log)[-1], result)
            # The endpoint in use answers either way.
            self.assertIn("mailtlsd_config_reloads_total", metrics_text(
                m1 if result == "error" else m2))
        self.assertRegex(d.log, r"metrics = 127\.0\.0\.1:%d: " %
                         held.getsockname()[1])
        m = metrics_text(m2)
        self.assertIn('mailtlsd_config_reloads_total{result="ok"} 1', m)
        self.assertIn('mailtlsd_config_reloads_total{result="error"} 1', m)
        self.assertIn('mailtlsd_connections_total{listener="stable"}', m)
        mtd.wait_port_closed(m1, timeout=10 * SLOW)
        self.assertEqual(d.stop(), 0)

    def test_user_and_workers_need_a_restart(self):
        """workers (and user) cannot change in a running process: the
        reload says a restart is needed, keeps them, and applies the
        rest."""
        d = Mailtlsd(self.conf(self.a), tc=self, name="restartneeded")
        d.start()
        with open(d.path, "w") as f:
            f.write(render_config(self.conf(self.b, workers=3)))
        d.signal(signal.SIGHUP)
        d.wait_log(r"event=config_reload .*result=ok")
        self.assertRegex(d.log, r"workers changed: a restart is needed; "
                         r"keeping the 2 running worker")
        self.assertEqual(greeting(self.port), GREET_B)
        # Reloading the same file again still says so: the process runs
        # what it started with, not what the last file said.
        d.signal(signal.SIGHUP)
        wait_for(lambda: count_lines(d, r"event=config_reload .*result=ok")
                 == 2, 10 * SLOW, what="second reload")
        self.assertEqual(count_lines(d, r"workers changed"), 2)
        self.assertEqual(d.stop(), 0)


def set_subreaper():
    """Orphans (the old processes' children) become ours, so that their
    exit status can be read with waitpid."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def wait_exit(pid, timeout):
    """Exit status of our child (or adopted orphan) ${pid}; fail if it
    does not exit in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("pid %d did not exit within %.0fs" % (pid, timeout))


class TestUpgrade(OperationsCase):

    def setUp(self):
        super().setUp()
        set_subreaper()
        # A copy of the binary that the test may replace.
        self.bindir = mtd.tempdir("mtd-upgrade-bin-")
        self.bin = os.path.join(self.bindir, "mailtlsd")
        shutil.copy2(mtd.mailtlsd_bin(), self.bin)
        self.live = []          # pids to stop at the end

    def tearDown(self):
        super().tearDown()
        for pid in self.live:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    def start(self, name):
        self.mport = free_port()
        d = Mailtlsd(self.conf(self.a, shutdown_timeout="30s",
                               metrics="%s:%d" % (LOOPBACK, self.mport)),
                     tc=self, name=name)
        d.bin = self.bin
        d.start()
        return d

    def upgrade(self, d, pid, i):
        """SIGUSR2 to ${pid}; return the new process's pid."""
        n = count_lines(d, r"event=upgrade .*result=ok")
        os.kill(pid, signal.SIGUSR2)
        wait_for(lambda: count_lines(d, r"event=upgrade .*result=ok") > n,
                 20 * SLOW, what="upgrade %d ready" % i)
        ok = re.findall(r"event=upgrade .*result=ok .*pid=(\d+)", d.log)[-1]
        new = int(ok)
        self.live.append(new)
        self.assertRegex(d.log, r"event=ready .*pid %d" % new)
        # The old process let go of the /metrics port; the new one has it.
        self.assertIn("mailtlsd_connections_total", metrics_text(self.mport))
        return new

    def test_5_upgrades_refuse_nothing(self):
        """5 upgrades in a row under the connect loop: none refused; each
        old process finishes its open session, then exits 0; the last new
        one serves and stops cleanly."""
        d = self.start("upgrade5")
        pid = d.pid
        with ConnectLoop(self.port, (GREET_A,)) as loop:
            loop.wait_more()
            for i in range(5):
                old_session, g = self.session()
                self.assertEqual(g, GREET_A)
                new = self.upgrade(d, pid, i)
                loop.wait_more()
                # The old process drains: its session still works ...
                session_command(self, old_session, b"NOOP %d" % i)
                old_session.close()
                # ... and once it is over, the process exits 0.
                if pid == d.pid:
                    self.assertEqual(d.wait(20), 0, d.log[-4000:])
                else:
                    self.assertEqual(wait_exit(pid, 20 * SLOW), 0,
                                     d.log[-4000:])
                    self.live.remove(pid)
                self.assertEqual(greeting(self.port), GREET_A)
                pid = new
            loop.wait_more()
        self.assertEqual(loop.failures, [], d.log[-6000:])
        self.assertGreater(loop.ok, 10)
        # The process started last stops as any other.
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(wait_exit(pid, 20 * SLOW), 0)
        self.live.remove(pid)
        mtd.check_sanitizer_log(d.log)

    def test_failed_upgrade_keeps_serving(self):
        """The binary on disk is replaced by one that exits 1: SIGUSR2
        logs why the upgrade failed, and the old process keeps serving
        without refusing a connection; a later upgrade to a good binary
        works."""
        d = self.start("upgradefail")
        good = self.bin + ".good"
        shutil.copy2(self.bin, good)
        bad = self.bin + ".bad"
        with open(bad, "w") as f:
            f.write("#!/bin/sh\nexit 1\n")
        os.chmod(bad, 0o755)
        os.replace(bad, self.bin)
        with ConnectLoop(self.port, (GREET_A,)) as loop:
            loop.wait_more()
            d.signal(signal.SIGUSR2)
            d.wait_log(r"event=upgrade .*result=failed", 20)
            d.wait_log(r"event=upgrade .*exited with status 1", 20)
            loop.wait_more()
            # Its /metrics endpoint is back.
            wait_for(lambda: "mailtlsd_connections_total" in
                     metrics_or_none(self.mport), 10 * SLOW,
                     what="/metrics after the failed upgrade")
            self.assertIsNone(d.proc.poll())
            self.assertEqual(greeting(self.port), GREET_A)
            # Put the good binary back: now the upgrade goes through.
            os.replace(good, self.bin)
            self.upgrade(d, d.pid, 1)
            self.assertEqual(d.wait(20), 0)
            loop.wait_more()
        self.assertEqual(loop.failures, [], d.log[-4000:])


class TestUpgradeAsProcessOne(OperationsCase):

    def test_process_one_refuses_sigusr2(self):
        """As process 1 (a container's), SIGUSR2 is refused with a log
        line and the process goes on serving: the container would end
        with the old process."""
        unshare = shutil.which("unshare")
        self.assertIsNotNone(unshare, "unshare is missing (util-linux)")
        # CI runs the tests as root; a PID namespace needs it.
        self.assertEqual(os.geteuid(), 0, "this test must run as root "
                         "(it makes a PID namespace)")
        d = Mailtlsd(self.conf(self.a), tc=self, name="pid1")
        d.bin = unshare
        d.spawn(["--pid", "--fork", "--kill-child", mtd.mailtlsd_bin(),
                 "-c", d.path])
        mtd.wait_port(self.port, LOOPBACK, 10 * SLOW, d.proc)
        d.wait_log(r"event=ready .*pid 1\b")
        # unshare's child is mailtlsd, process 1 in its namespace.
        with open("/proc/%d/task/%d/children" % (d.pid, d.pid)) as f:
            inner = int(f.read().split()[0])
        os.kill(inner, signal.SIGUSR2)
        d.wait_log(r"SIGUSR2 ignored: this is process 1")
        self.assertEqual(greeting(self.port), GREET_A)
        self.assertNotRegex(d.log, r"event=upgrade .*started")
        os.kill(inner, signal.SIGTERM)
        self.assertEqual(d.wait(), 0)


class TestSocketActivation(OperationsCase):

    def test_systemd_socket_activate(self):
        """Started by systemd-socket-activate, mailtlsd serves on the
        socket it was given (by address, and by name), and binds none of
        its own: the kernel has exactly one listening socket on the port,
        although there are two workers."""
        tool = shutil.which("systemd-socket-activate")
        self.assertIsNotNone(tool, "systemd-socket-activate is missing "
                             "(Debian package systemd)")
        for by in ("address", "name"):
            with self.subTest(by=by):
                self.port = free_port()
                cfg = self.conf(self.a)
                listen = "%s:%d" % (LOOPBACK, self.port)
                if by == "name":
                    # The config says another address: only the name
                    # (FileDescriptorName=) ties the socket to it.
                    cfg["stable"]["listen"] = "%s:%d" % (LOOPBACK,
                                                         free_port())
                d = Mailtlsd(cfg, tc=self, name="sockact", wait_ports=[])
                env = []
                for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
                    if k in d.env:
                        env += ["-E", "%s=%s" % (k, d.env[k])]
                # The tool execs mailtlsd in its own process (same pid),
                # with a minimal environment: pass the sanitizers' on.
                d._logf = open(d.log_path, "wb")
                d.proc = subprocess.Popen(
                    [tool, "-l", listen, "--fdname=stable"] + env +
                    [d.bin, "-c", d.path], stdin=subprocess.DEVNULL,
                    stdout=d._logf, stderr=subprocess.STDOUT, cwd=d.dir)
                d._exit_hook = mtd.at_exit(d._cleanup)
                mtd.wait_port(self.port, LOOPBACK, 10 * SLOW, d.proc)
                # The first connection makes the tool start mailtlsd.
                self.assertEqual(greeting(self.port), GREET_A)
                d.wait_log(r"event=ready")
                self.assertRegex(d.log, r"event=inherit fd=3 name=stable "
                                 r"listen=%s" % re.escape(listen))
                self.assertEqual(listening_sockets(self.port), 1)
                with ConnectLoop(self.port, (GREET_A,)) as loop:
                    loop.wait_more(5)
                self.assertEqual(loop.failures, [])
                self.assertEqual(d.stop(), 0)


class TestSdNotify(OperationsCase):

    def notify_socket(self, abstract):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        if abstract:
            name = "mtd-notify-%d-%d" % (os.getpid(), free_port())
            s.bind("\0" + name)
            env = "@" + name
        else:
            path = os.path.join(mtd.tempdir("mtd-notify-"), "notify")
            s.bind(path)
            env = path
        s.settimeout(10 * SLOW)
        return s, env

    def expect(self, s, prefix):
        while True:
            msg = s.recv(4096).decode()
            if msg.startswith(prefix):
                return msg

    def test_ready_reloading_stopping(self):
        """READY=1 once serving, RELOADING=1 (with MONOTONIC_USEC) then
        READY=1 on SIGHUP, STOPPING=1 on SIGTERM; to a path and to an
        abstract socket name (@...)."""
        for abstract in (False, True):
            with self.subTest(abstract=abstract):
                s, env = self.notify_socket(abstract)
                d = Mailtlsd(self.conf(self.a), tc=self, name="notify",
                             env={"NOTIFY_SOCKET": env})
                d.start()
                self.assertEqual(self.expect(s, "READY=1"), "READY=1")
                d.signal(signal.SIGHUP)
                msg = self.expect(s, "RELOADING=1")
                self.assertRegex(msg, r"^RELOADING=1\nMONOTONIC_USEC=\d+$")
                self.assertEqual(self.expect(s, "READY=1"), "READY=1")
                d.signal(signal.SIGTERM)
                self.assertEqual(self.expect(s, "STOPPING=1"), "STOPPING=1")
                self.assertEqual(d.wait(), 0)


if __name__ == "__main__":
    unittest.main()
