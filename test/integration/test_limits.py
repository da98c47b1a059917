"""
Out of file descriptors (SPEC "When things fail": "Too many connections, or
out of file descriptors: new connections wait or are refused; the process
never spins, never crashes, and recovers by itself").

mailtlsd runs with a small RLIMIT_NOFILE (set with prlimit once it has
started), sessions are opened until a new one is no longer served, and then:
the process is alive, it does not burn the CPU while the listener is
starved, it says so once in its log, and a new session is served again once
descriptors free up.
"""

import time
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, SLOW, LOOPBACK, free_port

CLK_TCK = 100


def cpu_seconds(pid):
    """utime + stime of ${pid} in seconds (from /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid):
    import os
    return len(os.listdir("/proc/%d/fd" % pid))


class DescriptorExhaustion(unittest.TestCase):

    def test_out_of_descriptors_no_spin_no_crash_then_recovers(self):
        mtd.need_tool("prlimit")
        b = FakeBackend(FakeBackend.greet_echo(b"hello\n"), tc=self)
        port = free_port()
        d = Mailtlsd({
            "global": {"workers": "1", "log_level": "info",
                       "shutdown_timeout": "2s"},
            "front": {
                "listen": "%s:%d" % (LOOPBACK, port),
                "protocol": "none",
                "client_tls": "implicit",
                "backend": b.addr,
                "certs": [mtd.certs().server_ecdsa],
                "handshake_timeout": "30s",
            },
        }, tc=self, name="emfile").start()

        # Room for a handful of sessions (two descriptors each) above what
        # the process holds already.
        limit = open_fds(d.pid) + 12
        mtd.run(["prlimit", "--pid", str(d.pid),
                 "--nofile=%d:%d" % (limit, limit)], check=True)

        served = []
        stalled = None
        for _ in range(limit):
            c = TlsConn(port, handshake=False)
            try:
                c.handshake(timeout=2)
                if c.recv_until(b"\n", timeout=2) != b"hello\n":
                    raise AssertionError("unexpected greeting")
                served.append(c)
            except Exception:
                stalled = c
                break
        self.assertIsNotNone(stalled, "every session was served with "
                             "RLIMIT_NOFILE = %d" % limit)
        self.assertGreater(len(served), 0)

        # Starved: the process lives and does not spin.  A loop spinning on
        # a readable listening socket would use about the whole interval.
        self.assertIsNone(d.proc.poll(), "mailtlsd died:\n" + d.log)
        t0, c0 = time.monotonic(), cpu_seconds(d.pid)
        time.sleep(1.0)     # a measuring interval, not a synchronisation
        used = cpu_seconds(d.pid) - c0
        elapsed = time.monotonic() - t0
        self.assertLess(used, 0.5 * elapsed,
                        "mailtlsd used %.2fs of CPU in %.2fs while out of "
                        "descriptors" % (used, elapsed))
        self.assertIsNone(d.proc.poll(), "mailtlsd died:\n" + d.log)
        stalled.close()

        # Descriptors free up: service resumes by itself.
        for c in served[: len(served) // 2 + 1]:
            c.close()

        def serves():
            c = TlsConn(port, handshake=False)
            try:
                c.handshake(timeout=2)
                ok = c.recv_until(b"\n", timeout=2) == b"hello\n"
                if ok:
                    c.send(b"ping\n")
                    ok = c.recv_until(b"\n", timeout=2) == b"ping\n"
                return ok
            except Exception:
                return False
            finally:
                c.close()
        mtd.wait_for(serves, timeout=20 * SLOW,
                     what="a new session served after descriptors freed up")
        for c in served:
            c.close()
        log = d.log
        self.assertRegex(log, r"not accepting until descriptors free up|"
                         r"backend_unavailable",
                         "the starvation is not in the log")
        # Said once per episode, not at every retry.
        self.assertLessEqual(log.count("not accepting until descriptors "
                                       "free up"), 2, log)
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
