"""
Capacity that follows the machine (issue 18): at start-up mailtlsd raises its
soft RLIMIT_NOFILE to the hard limit, logs how many sessions the descriptors
hold (two per session), and warns when the listeners' max_connections add
up to more, also under -t.  Each test runs mailtlsd under prlimit.
"""

import os
import re
import unittest

import mtd
from mtd import Mailtlsd, LOOPBACK, free_port

CAPACITY_RE = (r"(?m)^.*event=capacity msg=\"descriptor limit (\d+) \(soft "
               r"limit was (\d+), hard (\d+)\): room for about (\d+) sessions "
               r"at 2 descriptors each\"$")
WARN_RE = (r"(?m)^.*level=warn event=capacity msg=\"max_connections adds up "
           r"to (\d+) over (\d+) listener\(s\), more than the about (\d+) "
           r"sessions the descriptor limit \((\d+)\) allows")


def conf(*max_conns):
    """One worker; a protocol = none listener per max_connections value."""
    ls = {}
    for i, m in enumerate(max_conns):
        ls["l%d" % i] = mtd.listener_conf("none", "%s:9" % LOOPBACK,
                                          free_port(), max_connections=m)
    return mtd.daemon_conf(ls, workers=1, log_level="info")


def nofile_limits(pid):
    """(soft, hard) "Max open files" of a running process."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files in /proc/%d/limits" % pid)


class Capacity(unittest.TestCase):

    def setUp(self):
        self.prlimit = mtd.need_tool("prlimit")
        hard = int(mtd.run(["sh", "-c", "ulimit -Hn"]).stdout.strip())
        # Below this process's own hard limit, which prlimit cannot raise.
        self.hard = min(hard, 4096)
        self.soft = 256

    def start(self, cfg):
        """mailtlsd -c under prlimit --nofile=SOFT:HARD (prlimit execs it,
        so the pid is mailtlsd's), once it logs that it is ready."""
        d = Mailtlsd(cfg, tc=self)
        d.bin = self.prlimit
        d.spawn(["--nofile=%d:%d" % (self.soft, self.hard),
                 mtd.mailtlsd_bin(), "-c", d.path])
        d.wait_log(r"event=ready")
        return d

    def test_raises_soft_limit_and_logs_sessions(self):
        d = self.start(conf(100))
        m = re.search(CAPACITY_RE, d.log)
        self.assertIsNotNone(m, d.log)
        limit, was, hard, sessions = map(int, m.groups())
        self.assertEqual((limit, was, hard), (self.hard, self.soft,
                                              self.hard), d.log)
        # The process really runs with the raised limit.
        self.assertEqual(nofile_limits(d.pid), (self.hard, self.hard))
        # The estimate is honest: what the process holds idle, plus two
        # descriptors per session, fits in the limit; and it is not
        # absurdly low.
        idle_fds = len(os.listdir("/proc/%d/fd" % d.pid))
        self.assertLessEqual(idle_fds + 2 * sessions, limit,
                             "%d sessions cannot fit: %d descriptors open "
                             "at idle" % (sessions, idle_fds))
        self.assertGreater(sessions, (limit - 4 * idle_fds) // 2, d.log)
        self.assertNotRegex(d.log, WARN_RE)
        self.assertEqual(d.stop(), 0, d.log)

    def test_max_connections_beyond_capacity_warns(self):
        d = self.start(conf(self.hard, 10))
        m = re.search(WARN_RE, d.log)
        self.assertIsNotNone(m, d.log)
        total, nl, sessions, limit = map(int, m.groups())
        self.assertEqual((total, nl, limit), (self.hard + 10, 2, self.hard))
        self.assertLess(sessions, total)
        # A warning, not an error: it serves.
        self.assertTrue(mtd.port_accepts(int(
            mtd.listen_addrs(d.text)[0][1])))
        self.assertEqual(d.stop(), 0, d.log)

    def test_check_mode_reports_capacity_and_warning(self):
        path = os.path.join(mtd.tempdir("mtd-cap-"), "mailtlsd.conf")
        with open(path, "w") as f:
            f.write(mtd.render_config(conf(self.hard)))
        p = mtd.run([self.prlimit, "--nofile=%d:%d" % (self.soft, self.hard),
                     mtd.mailtlsd_bin(), "-t", "-c", path], timeout=60)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out)
        self.assertRegex(out, CAPACITY_RE)
        self.assertRegex(out, WARN_RE)
        self.assertIn("configuration and certificates OK", out)


if __name__ == "__main__":
    unittest.main()
