"""
Connection logs (SPEC "Logs and metrics"): one line per closed connection
with listener, client address, SNI, TLS version, cipher, client-certificate
subject, bytes each way, duration and the reason for closing, plus whether
STARTTLS was used; log_format = json writes the same facts as one JSON
object per line; start-up, reload and shutdown are logged too.
"""

import json
import re
import shlex
import signal
import unittest

import mtd
from mtd import FakeBackend, Mailtlsd, TlsConn, LOOPBACK

CLOSE_FIELDS = ("conn", "listener", "client", "proto", "starttls", "sni",
                "tls_version", "cipher", "client_cert", "bytes_in",
                "bytes_out", "duration_ms", "reason")


def text_fields(line):
    """The key=value pairs of a text log line (values may be quoted)."""
    out = {}
    for tok in shlex.split(line, posix=True):
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


class ConnectionLogs(unittest.TestCase):

    def run_sessions(self, fmt):
        """An implicit TLS session with SNI and a client certificate that
        sends 5 bytes and gets 11 back, a failed handshake, a STARTTLS
        session, then SIGHUP and SIGTERM.  Return the log."""
        c = mtd.certs()
        echo = FakeBackend(FakeBackend.greet_echo(b"hello\n"), tc=self)
        smtp = FakeBackend(FakeBackend.lines(
            b"220 mx ESMTP\r\n",
            [(b"EHLO", b"250-mx\r\n250 8BITMIME\r\n"),
             (b"QUIT", b"221 bye\r\n")]), tc=self)
        p1, p2 = mtd.free_ports(2)
        d = Mailtlsd({
            "global": {"log_format": fmt, "log_level": "info",
                       "shutdown_timeout": "2s"},
            "tls-echo": {
                "listen": "%s:%d" % (LOOPBACK, p1), "protocol": "none",
                "client_tls": "implicit", "backend": echo.addr,
                "certs": [c.server_ecdsa], "client_ca": c.ca,
                "client_verify": "optional",
            },
            "submission": {
                "listen": "%s:%d" % (LOOPBACK, p2), "protocol": "smtp",
                "client_tls": "starttls", "backend": smtp.addr,
                "certs": [c.server_ecdsa], "hostname": "front.test",
            },
        }, tc=self, name="logs-" + fmt).start()

        ctx = mtd.client_context(cert=c.client)
        t = TlsConn(p1, ctx=ctx, server_hostname="mail.example.test")
        self.assertEqual(t.recv_until(b"\n"), b"hello\n")
        t.send(b"ping\n")
        self.assertEqual(t.recv_until(b"\n"), b"ping\n")
        t.close()
        echo.wait_closed(0)

        # A handshake that fails: not TLS at all.
        s = mtd.socket.create_connection((LOOPBACK, p1))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        mtd.read_until_closed(s)
        s.close()

        # STARTTLS through the SMTP listener.
        import smtplib
        with smtplib.SMTP(LOOPBACK, p2, timeout=10 * mtd.SLOW) as m:
            m.ehlo("client.test")
            m.starttls(context=mtd.client_context())
            m.ehlo("client.test")
        mtd.wait_for(lambda: re.search(r'starttls(=|":")yes', d.log),
                     what="the STARTTLS session's close line")

        d.signal(signal.SIGHUP)
        # The reload itself, not the watcher's start-up line.
        d.wait_log(r'event(=|":")reload[" ]')
        self.assertEqual(d.stop(), 0)
        return d.log

    def test_json_lines_parse_and_carry_every_field(self):
        log = self.run_sessions("json")
        events = []
        for line in log.splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)      # every line is one JSON object
            self.assertIsInstance(obj, dict)
            for k in ("ts", "level", "event"):
                self.assertIn(k, obj, line)
            events.append(obj)
        closes = [e for e in events if e["event"] == "close"]
        for e in closes:
            for k in CLOSE_FIELDS:
                self.assertIn(k, e, e)
            self.assertIsInstance(e["bytes_in"], int)
            self.assertIsInstance(e["duration_ms"], int)

        ok = [e for e in closes if e["listener"] == "tls-echo" and
              e["bytes_in"] == 5]
        self.assertEqual(len(ok), 1, closes)
        ok = ok[0]
        self.assertEqual(ok["bytes_out"], 11)
        self.assertEqual(ok["sni"], "mail.example.test")
        self.assertRegex(ok["tls_version"], r"^TLS1\.[23]$")
        self.assertRegex(ok["cipher"], r"GCM|CHACHA20")
        self.assertIn("client.example.test", ok["client_cert"])
        self.assertEqual(ok["starttls"], "no")
        self.assertRegex(ok["client"], r"^127\.0\.0\.1:\d+$")
        self.assertGreaterEqual(ok["duration_ms"], 0)

        failed = [e for e in closes if e["reason"] == "tls_handshake_failed"]
        self.assertEqual(len(failed), 1, closes)
        self.assertEqual(failed[0]["tls_version"], "")

        st = [e for e in closes if e["listener"] == "submission" and
              e["starttls"] == "yes"]
        self.assertEqual(len(st), 1, closes)
        self.assertRegex(st[0]["tls_version"], r"^TLS1\.[23]$")

        names = {e["event"] for e in events}
        for ev in ("listen", "ready", "reload", "shutdown",
                   "handshake_failed"):
            self.assertIn(ev, names)
        listens = [e for e in events if e["event"] == "listen"]
        self.assertEqual({e["listener"] for e in listens},
                         {"tls-echo", "submission"})
        for e in listens:
            self.assertIn("+VERS-TLS1.3", e["tls_priority"])

    def test_text_lines_carry_the_same_facts(self):
        log = self.run_sessions("text")
        closes = [text_fields(l) for l in log.splitlines()
                  if re.search(r"\bevent=close\b", l)]
        for f in closes:
            for k in CLOSE_FIELDS:
                self.assertIn(k, f, f)
        ok = [f for f in closes if f["listener"] == "tls-echo" and
              f["bytes_in"] == "5"]
        self.assertEqual(len(ok), 1, closes)
        ok = ok[0]
        self.assertEqual(ok["bytes_out"], "11")
        self.assertEqual(ok["sni"], "mail.example.test")
        self.assertIn("client.example.test", ok["client_cert"])
        st = [f for f in closes if f["listener"] == "submission" and
              f["starttls"] == "yes"]
        self.assertEqual(len(st), 1, closes)
        self.assertRegex(st[0]["tls_version"], r"^TLS1\.[23]$")
        for ev in ("listen", "ready", "reload", "shutdown"):
            self.assertRegex(log, r"\bevent=%s\b" % ev)


if __name__ == "__main__":
    unittest.main()
