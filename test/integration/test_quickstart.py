"""
quickstart.sh, as a newcomer runs it (with MAILTLSD_BIN: nothing is
installed or built here; test/fresh-machine.sh covers that part):

  * `--check` exits 0 once every listener answers, and says in one line at
    start when nothing answers on the backend ports, and how to fix it
    (`--demo`); it says nothing of the kind when the backends answer;
  * `--demo` starts a throw-away Postfix and Dovecot and mailtlsd in front,
    prints the commands that send a message over implicit TLS and over
    STARTTLS and read them back over IMAP and POP3; the test runs exactly
    those commands (curl), checks that both messages arrive through
    mailtlsd, then sends SIGINT to the process group (what Ctrl-C does) and
    checks that every process is gone and the temporary directory removed;
  * `--demo --check` comes up and cleans up by itself; `--demo` as a user
    other than root says that it needs root.

The listeners are the quickstart's own (examples/quickstart.conf), moved to
free ports with -c so that the test never depends on fixed ports.
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import unittest

import mtd
from mtd import HarnessError, SLOW


def source_dir():
    return os.environ.get("MAILTLSD_SOURCE") or os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", ".."))


QUICKSTART = os.path.join(source_dir(), "quickstart.sh")
NO_BACKEND = "nothing answers on the backend ports"


def quickstart_conf(backends=None):
    """examples/quickstart.conf with every listen port replaced by a free
    one (and, if given, backend {smtp,imap,pop3} -> port); returns the path
    and the listen ports in file order."""
    with open(os.path.join(source_dir(), "examples", "quickstart.conf")) as f:
        text = f.read()
    n = len(re.findall(r"(?m)^listen\s*=", text))
    ports = iter(mtd.free_ports(n))
    listen = []

    def new_listen(m):
        p = next(ports)
        listen.append(p)
        return "listen = 127.0.0.1:%d" % p
    text = re.sub(r"(?m)^listen\s*=.*$", new_listen, text)
    if backends:
        old = {"25": backends["smtp"], "143": backends["imap"],
               "110": backends["pop3"]}
        text = re.sub(r"(?m)^backend\s*=\s*127\.0\.0\.1:(\d+)\s*$",
                      lambda m: "backend = 127.0.0.1:%d" % old[m.group(1)],
                      text)
    d = mtd.tempdir("mtd-qs-")
    path = os.path.join(d, "quickstart.conf")
    with open(path, "w") as f:
        f.write(text)
    return path, listen


def env():
    e = dict(os.environ, MAILTLSD_BIN=mtd.mailtlsd_bin(), LC_ALL="C.UTF-8")
    if mtd.SANITIZERS:
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:"
                     "halt_on_error=1")
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return e


def run_quickstart(args, timeout=120, preexec=None, **kw):
    return subprocess.run([QUICKSTART] + args, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout * SLOW, env=env(),
                          preexec_fn=preexec, **kw)


def processes_mentioning(text):
    """PIDs whose command line contains text."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if text.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


class Check(unittest.TestCase):

    def test_says_at_start_when_no_backend_answers(self):
        closed = mtd.free_ports(3)       # nothing listens on these
        conf, listen = quickstart_conf(dict(zip(("smtp", "imap", "pop3"),
                                                closed)))
        p = run_quickstart(["--check", "-c", conf])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        mtd.check_sanitizer_log(p.stderr)
        lines = p.stderr.splitlines()
        hint = [i for i, l in enumerate(lines) if NO_BACKEND in l]
        self.assertEqual(len(hint), 1, p.stderr)
        line = lines[hint[0]]
        # one line: what is wrong, where, and how to fix it
        self.assertIn("--demo", line)
        for port in closed:
            self.assertIn("127.0.0.1:%d" % port, line)
        # at start: before mailtlsd says anything
        ready = [i for i, l in enumerate(lines) if "event=ready" in l]
        self.assertTrue(ready, p.stderr)
        self.assertLess(hint[0], ready[0])
        self.assertEqual(hint[0], 0, p.stderr)
        self.assertRegex(p.stderr, r"every listener answers: " + " ".join(
            "127.0.0.1:%d" % port for port in listen))
        for port in listen:
            self.assertFalse(mtd.port_accepts(port), "still listening")

    def test_silent_when_the_backends_answer(self):
        fakes = [mtd.FakeBackend(mtd.FakeBackend.greet_echo(b"220 hi\r\n"),
                                 tc=self) for _ in range(3)]
        conf, listen = quickstart_conf(dict(zip(
            ("smtp", "imap", "pop3"), (f.port for f in fakes))))
        p = run_quickstart(["--check", "-c", conf])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn(NO_BACKEND, p.stderr)
        self.assertNotIn("no answer on backend", p.stderr)
        self.assertIn("every listener answers", p.stderr)


class Demo(unittest.TestCase):

    def start_demo(self, conf):
        proc = subprocess.Popen([QUICKSTART, "--demo", "-c", conf],
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env(),
                                start_new_session=True)
        out, err = queue.Queue(), []

        def pump(stream, sink):
            for line in stream:
                sink(line)
        threading.Thread(target=pump, args=(proc.stdout, out.put),
                         daemon=True).start()
        threading.Thread(target=pump, args=(proc.stderr, err.append),
                         daemon=True).start()

        def stop():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        self.addCleanup(stop)
        return proc, out, err

    def test_demo_delivers_a_message_and_ctrl_c_cleans_up(self):
        conf, listen = quickstart_conf()
        proc, out, err = self.start_demo(conf)
        stdout = []
        deadline = time.monotonic() + 90 * SLOW
        while not any(l.startswith("Ctrl-C stops") for l in stdout):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise HarnessError("the demo did not print its commands "
                                   "(exit %s):\n%s\n--- stderr:\n%s" % (
                                       proc.poll(), "".join(stdout),
                                       "".join(err)[-6000:]))
            try:
                stdout.append(out.get(timeout=min(left, 1)))
            except queue.Empty:
                pass
        text = "".join(stdout)
        cmds = [l.strip() for l in stdout if l.startswith("curl ")]
        self.assertEqual(len(cmds), 3, text)
        tmp = re.search(r"removes (/\S+)\.$", text, re.M).group(1)
        self.assertTrue(os.path.isdir(tmp), tmp)
        # the commands use mailtlsd's listeners, never the servers directly
        for c, port in zip(cmds, (listen[0], listen[3], listen[1])):
            self.assertIn("127.0.0.1:%d" % port, c)
        self.assertTrue(cmds[0].startswith("curl -sSk smtps://"), cmds[0])
        self.assertIn("--ssl-reqd smtp://", cmds[1])
        self.assertIn("imaps://", cmds[2])
        self.assertIn("--ssl-reqd pop3://127.0.0.1:%d/" % listen[5], cmds[2])

        def sh(cmd):
            return subprocess.run(["bash", "-c", cmd], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True,
                                  timeout=60 * SLOW)
        for c in cmds[:2]:
            p = sh(c)
            self.assertEqual(p.returncode, 0, "%s\n%s%s" % (c, p.stdout,
                                                            p.stderr))
        maildir = os.path.join(tmp, "mail", "demo")

        def delivered():
            return [n for sub in ("new", "cur")
                    for n in os.listdir(os.path.join(maildir, sub))]
        mtd.wait_for(lambda: len(delivered()) == 2, 30 * SLOW, 0.05,
                     "both demo messages in the Maildir")
        p = sh(cmds[2])
        self.assertEqual(p.returncode, 0, "%s\n%s" % (cmds[2], p.stderr))
        self.assertIn("Subject: mailtlsd demo 1: over implicit TLS", p.stdout)
        self.assertIn("Subject: mailtlsd demo 2: over STARTTLS", p.stdout)
        self.assertIn("This message went through mailtlsd", p.stdout)
        # and it did go through mailtlsd: TLS on each listener it logs.
        # After QUIT/LOGOUT the server closes too, and either end may be
        # seen first: both are a normal end, nothing else is.  curl may
        # exit before mailtlsd has seen the close, so wait for the line.
        for listener, starttls in (("submissions", "no"),
                                   ("submission", "yes"),
                                   ("imaps", "no"), ("pop3", "yes")):
            want = re.compile(r"event=close .*listener=%s .*starttls=%s"
                              r" .*tls_version=TLS1\.[23] .*reason=(client|"
                              r"backend)_closed" % (listener, starttls))
            try:
                mtd.wait_for(lambda: want.search("".join(err)), 10 * SLOW,
                             0.05, "the close line of %s" % listener)
            except HarnessError:
                self.fail("no normal close on %s:\n%s" % (
                    listener, "".join(err)[-4000:]))

        # Ctrl-C: SIGINT to the foreground process group
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60 * SLOW)
        except subprocess.TimeoutExpired:
            raise HarnessError("the demo did not stop on SIGINT:\n%s" %
                               "".join(err)[-4000:])
        self.assertFalse(os.path.exists(tmp), "temporary directory left")
        mtd.wait_for(lambda: processes_mentioning(tmp) == [], 20 * SLOW,
                     0.1, "every demo process to exit")
        for port in listen:
            self.assertFalse(mtd.port_accepts(port), port)
        mtd.check_sanitizer_log("".join(err))

    def test_demo_check_comes_up_and_cleans_up(self):
        conf, listen = quickstart_conf()
        p = run_quickstart(["--demo", "--check", "-c", conf])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("every server and listener answers", p.stderr)
        self.assertNotIn(NO_BACKEND, p.stderr)
        self.assertEqual(processes_mentioning("/tmp/mailtlsd-demo."), [])
        for port in listen:
            self.assertFalse(mtd.port_accepts(port), port)

    def test_demo_as_a_user_says_it_needs_root(self):
        if os.getuid() != 0:
            raise HarnessError("this test runs as root (as CI does)")

        def nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        conf, _ = quickstart_conf()
        # the same script, where the user can reach it (a checkout under
        # /root is not)
        d = os.path.dirname(conf)
        os.chmod(d, 0o755)
        os.chmod(conf, 0o644)
        script = os.path.join(d, "quickstart.sh")
        shutil.copy(QUICKSTART, script)
        os.chmod(script, 0o755)
        p = subprocess.run([script, "--demo", "-c", conf],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=60 * SLOW, env=env(),
                           preexec_fn=nobody, cwd="/")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("sudo ./quickstart.sh --demo", p.stderr)
        self.assertEqual(p.stdout, "")


if __name__ == "__main__":
    unittest.main()
