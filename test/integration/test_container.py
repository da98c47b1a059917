"""
The container image for real (Dockerfile at the top of the tree): build it
with Debian's docker.io against a base image made by debootstrap, check
that it runs as a non-root user, run it with --network host and a mounted
configuration (examples/docker/mailtlsd.conf, re-addressed) and certificate
in front of the real Postfix and Dovecot, send a message through it over
implicit TLS and over STARTTLS, reload a renewed certificate in the mounted
volume with `docker kill -s HUP`, and `docker stop` it while a session is
open: the session finishes and the container exits 0.

examples/compose's "no certificate yet" path: with MAILTLSD_AUTO_CERT=yes,
a read-only root and a tmpfs /tmp (as compose.yaml runs it) and an empty
certificate volume, the container says so in its log, serves a throw-away
self-signed certificate for the configured hostname and relays mail; with a
certificate in the volume it serves that one; without the variable a
missing certificate is still the start-up error it was.

This machine has no registry and no bridge networking, so the test starts a
dockerd of its own (`dockerd --iptables=false --bridge=none`, a private
socket and data root) and stops it again by its PID; the base image is
`debootstrap --variant=minbase bookworm` imported as
local/debian:bookworm-slim and passed as --build-arg BASE.  The rootfs
tarball is cached in /var/cache/mailtlsd-test (MAILTLSD_TEST_CACHE) between
runs; without it everything is made from nothing.

Missing docker.io or debootstrap is a failure, never a skip.  The test is
labelled `container` and runs in the normal stage only: the image builds
its own binary, so the sanitizer build of the host binary is not what it
tests.
"""

import os
import re
import shutil
import signal
import smtplib
import imaplib
import ssl
import subprocess
import time
import unittest
import uuid

import mtd
from mtd import HarnessError, LOOPBACK, SLOW

DOCKER = "/usr/bin/docker"          # Debian's docker.io, not any other CLI
DOCKERD = "/usr/sbin/dockerd"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
MIRROR = os.environ.get("MAILTLSD_TEST_DEBIAN_MIRROR",
                        "http://deb.debian.org/debian")
CACHE = os.environ.get("MAILTLSD_TEST_CACHE", "/var/cache/mailtlsd-test")
ROOTFS_TAR = "debian-bookworm-minbase.tar"
ROOTFS_MAX_AGE = 30 * 86400         # older than this: debootstrap again
BASE = "local/debian:bookworm-slim"
UID = 10465                         # the image's user (Dockerfile)
CAP_NET_BIND_SERVICE = 1 << 10
HOSTNAME = "mail.example.org"       # as in examples/docker/mailtlsd.conf


def source_dir():
    return os.environ.get("MAILTLSD_SOURCE") or os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", ".."))


def need_exe(path, package):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError("%s is missing: install Debian's %s package "
                           "(.ci/run does)" % (path, package))
    return path


def log(msg):
    print("[container] %s" % msg, flush=True)


# --------------------------------------------------------------------------
# A dockerd of our own

class Dockerd:
    """dockerd --iptables=false --bridge=none on a private socket, data root
    and exec root; stop() ends it by its PID and removes its data."""

    def __init__(self):
        need_exe(DOCKER, "docker.io")
        need_exe(DOCKERD, "docker.io")
        # Short: the socket path must fit in sun_path.
        self.dir = mtd.tempdir("mtd-dockerd-", 0o711)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.data = os.path.join(self.dir, "data")
        self.exec_root = os.path.join(self.dir, "exec")
        self.log_path = os.path.join(self.dir, "dockerd.log")
        self.proc = None
        self._hook = None

    def start(self):
        self._hook = mtd.at_exit(self.stop)
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [DOCKERD, "--iptables=false", "--bridge=none",
             "--data-root", self.data, "--exec-root", self.exec_root,
             "--host", "unix://" + self.sock,
             "--pidfile", os.path.join(self.dir, "docker.pid")],
            stdin=subprocess.DEVNULL, stdout=self._logf,
            stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise HarnessError("dockerd exited with %s:\n%s" % (
                    self.proc.returncode, self.tail()))
            return self.docker(["version"], timeout=20).returncode == 0
        try:
            mtd.wait_for(up, 60, 0.2, "dockerd to answer")
        except HarnessError as e:
            raise HarnessError("%s\n--- dockerd log:\n%s" % (e, self.tail()))
        return self

    def tail(self, n=6000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def docker(self, args, timeout=120, input=None, check=False):
        env = dict(os.environ)
        env.pop("DOCKER_CONTEXT", None)
        env["DOCKER_HOST"] = "unix://" + self.sock
        p = mtd.run([DOCKER] + list(args), timeout=timeout, input=input,
                    env=env)
        if check and p.returncode != 0:
            raise HarnessError("docker %s failed (%d):\n%s%s" % (
                " ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def _containerd_pid(self):
        p = os.path.join(self.exec_root, "containerd", "containerd.pid")
        try:
            with open(p) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        containerd = self._containerd_pid()
        # By its PID, never by name: other dockerds may run on this machine.
        rc, killed = mtd.stop_process(proc, signal.SIGTERM, 60)
        if killed:
            log("dockerd (pid %d) did not stop on SIGTERM; killed" %
                proc.pid)
        if containerd:
            try:
                os.kill(containerd, 0)
                with open("/proc/%d/cmdline" % containerd, "rb") as f:
                    mine = self.exec_root.encode() in f.read()
                if mine:
                    os.kill(containerd, signal.SIGTERM)
                    mtd.wait_for(lambda: not os.path.exists(
                        "/proc/%d" % containerd), 20, 0.1,
                        "containerd to exit")
            except (OSError, HarnessError):
                pass
        self._logf.close()
        # Whatever is still mounted under the data root (a killed daemon)
        # must go before the directory can be removed.
        try:
            with open("/proc/self/mounts") as f:
                mounts = [l.split()[1] for l in f]
            for m in sorted((m for m in mounts if m.startswith(self.dir)),
                            key=len, reverse=True):
                subprocess.run(["umount", "-l", m], timeout=30,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._hook:
            self._hook.cancel()


# --------------------------------------------------------------------------
# The base image: debootstrap --variant=minbase bookworm, cached

def rootfs_tarball():
    """A tar of a minbase bookworm rootfs: from the cache if it is fresh,
    else made now (and cached when the cache directory is writable)."""
    need_exe(DEBOOTSTRAP, "debootstrap")
    try:
        os.makedirs(CACHE, mode=0o755, exist_ok=True)
        cache = CACHE if os.access(CACHE, os.W_OK) else None
    except OSError:
        cache = None
    if cache is None:
        cache = mtd.tempdir("mtd-rootfs-cache-")
    tar = os.path.join(cache, ROOTFS_TAR)
    try:
        age = time.time() - os.stat(tar).st_mtime
        if age < ROOTFS_MAX_AGE and os.path.getsize(tar) > (20 << 20):
            log("base rootfs from the cache: %s" % tar)
            return tar
    except OSError:
        pass
    work = mtd.tempdir("mtd-debootstrap-", 0o755)
    rootfs = os.path.join(work, "rootfs")
    t0 = time.monotonic()
    log("debootstrap --variant=minbase bookworm (%s)" % MIRROR)
    p = mtd.run([DEBOOTSTRAP, "--variant=minbase", "bookworm", rootfs,
                 MIRROR], timeout=1200)
    if p.returncode != 0:
        raise HarnessError("debootstrap failed (%d):\n%s%s" % (
            p.returncode, p.stdout[-4000:], p.stderr[-4000:]))
    # The package cache is of no use in an image.
    shutil.rmtree(os.path.join(rootfs, "var", "cache", "apt", "archives"),
                  ignore_errors=True)
    tmp = "%s.%d.tmp" % (tar, os.getpid())
    p = mtd.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", tmp, "."],
                timeout=600)
    if p.returncode != 0:
        raise HarnessError("tar of the rootfs failed: %s" % p.stderr)
    os.replace(tmp, tar)
    shutil.rmtree(work, ignore_errors=True)
    log("debootstrap + tar: %.0fs" % (time.monotonic() - t0))
    return tar


# --------------------------------------------------------------------------
# Module state: one dockerd, one image, one pair of real servers

_dockerd = None
_servers = None
_image = None


def setUpModule():
    global _dockerd, _servers, _image
    t0 = time.monotonic()
    tar = rootfs_tarball()
    _dockerd = Dockerd().start()
    with open(tar, "rb") as f:
        data = f.read()
    _dockerd.docker(["import", "-", BASE], input=data, timeout=600,
                    check=True)
    del data
    log("base image %s imported (%.0fs so far)" % (BASE,
                                                  time.monotonic() - t0))
    _image = "local/mailtlsd:test-%s" % uuid.uuid4().hex[:8]
    t1 = time.monotonic()
    p = _dockerd.docker(["build", "--network", "host", "--build-arg",
                         "BASE=" + BASE, "-t", _image, source_dir()],
                        timeout=1800)
    if p.returncode != 0:
        raise HarnessError("docker build failed (%d):\n%s\n%s" % (
            p.returncode, p.stdout[-8000:], p.stderr[-4000:]))
    log("docker build: %.0fs" % (time.monotonic() - t1))
    # PROXY v2 listeners, as examples/docker/mailtlsd.conf expects.
    _servers = mtd.RealServers(
        postfix_listeners={"pp": {"smtpd_upstream_proxy_protocol":
                                  "haproxy"}},
        dovecot_listeners={"pp": {"haproxy": "yes"}}).start()


def tearDownModule():
    global _dockerd, _servers, _image
    try:
        if _dockerd is not None and _image is not None:
            for c in _dockerd.docker(["ps", "-aq"]).stdout.split():
                _dockerd.docker(["rm", "-f", c], timeout=60)
            _dockerd.docker(["rmi", "-f", _image, BASE], timeout=120)
            _dockerd.docker(["image", "prune", "-f"], timeout=120)
    finally:
        try:
            if _servers is not None:
                _servers.stop()
        finally:
            if _dockerd is not None:
                _dockerd.stop()
            _dockerd = _servers = _image = None


# --------------------------------------------------------------------------

# The real servers' name inside the container (docker run --add-host).
BACKEND_NAME = "mail-backend.test"
ADD_HOST = ["--add-host", "%s:%s" % (BACKEND_NAME, LOOPBACK)]


def example_config(ports, metrics_port):
    """examples/docker/mailtlsd.conf, moved to loopback high ports and to
    the real servers' PROXY listeners; everything else as shipped."""
    with open(os.path.join(source_dir(), "examples", "docker",
                           "mailtlsd.conf")) as f:
        text = f.read()
    rs = _servers
    backend = {"smtp": rs.smtp_ports["pp"], "imap": rs.imap_ports["pp"],
               "pop3": rs.pop3_ports["pp"]}
    section = r"(?ms)^\[([^\]]+)\]\n(.*?)(?=^\[|\Z)"
    proto = {}
    for name, body in re.findall(section, text):
        m = re.search(r"(?m)^protocol\s*=\s*(\w+)", body)
        if m:
            proto[name] = m.group(1)

    def fix(m):
        name, body = m.group(1), m.group(2)
        if name in ports:
            body = re.sub(r"(?m)^listen\s*=.*$",
                          "listen = %s:%d" % (LOOPBACK, ports[name]), body)
            # By name, as in Compose (issue 14): the container's
            # /etc/hosts gets it from --add-host.
            body = re.sub(r"(?m)^backend\s*=.*$", "backend = %s:%d" % (
                BACKEND_NAME, backend[proto[name]]), body)
        return "[%s]\n%s" % (name, body)
    text = re.sub(section, fix, text)
    text = re.sub(r"(?m)^metrics\s*=.*$", "metrics = %s:%d" % (
        LOOPBACK, metrics_port), text)
    # a shorter drain than the example's, to keep the test quick
    text = re.sub(r"(?m)^shutdown_timeout\s*=.*$", "shutdown_timeout = 20s",
                  text)
    text = re.sub(r"(?m)^workers\s*=.*$", "workers = 2", text)
    return text, proto


def leaf_der(path):
    with open(path) as f:
        pem = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                  pem, re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def served_der(port):
    with mtd.TlsConn(port, server_hostname=HOSTNAME) as c:
        return c.peer_cert_der()


def install_pair(certdir, pair):
    """Put pair into certdir as fullchain.pem / privkey.pem the way a renewal
    does (write beside, rename over), readable by the image's user only
    through its group."""
    for src, name, mode in ((pair.chain, "fullchain.pem", 0o644),
                            (pair.key, "privkey.pem", 0o640)):
        tmp = os.path.join(certdir, "." + name + ".new")
        shutil.copyfile(src, tmp)
        os.chown(tmp, 0, UID)
        os.chmod(tmp, mode)
        os.replace(tmp, os.path.join(certdir, name))


class Container(unittest.TestCase):
    """One container of the image, in front of the real servers."""

    LISTENERS = ("submissions", "imaps", "pop3s", "submission", "imap",
                 "pop3")

    @classmethod
    def setUpClass(cls):
        d = _dockerd
        cls.d = d
        cls.certs = mtd.certs()
        cls.pair = cls.certs.issue("container-1", names=(HOSTNAME,
                                                         "localhost"))
        cls.confdir = mtd.tempdir("mtd-ctr-conf-")
        cls.certdir = mtd.tempdir("mtd-ctr-certs-", 0o750)
        os.chown(cls.certdir, 0, UID)
        install_pair(cls.certdir, cls.pair)
        ports = mtd.free_ports(len(cls.LISTENERS) + 1)
        cls.ports = dict(zip(cls.LISTENERS, ports))
        cls.metrics_port = ports[-1]
        text, cls.proto = example_config(cls.ports, cls.metrics_port)
        cls.conf_text = text
        with open(os.path.join(cls.confdir, "mailtlsd.conf"), "w") as f:
            f.write(text)
        # For the health check's TCP-probe mode: no metrics line.
        with open(os.path.join(cls.confdir, "probe.conf"), "w") as f:
            f.write(re.sub(r"(?m)^metrics\s*=.*$", "", text))
        with open(os.path.join(cls.confdir, "closed.conf"), "w") as f:
            f.write("[x]\nlisten = 127.0.0.1:%d\n" % mtd.free_port())
        cls.mounts = ["-v", "%s:/etc/mailtlsd:ro" % cls.confdir,
                      "-v", "%s:/etc/ssl/mailtlsd:ro" % cls.certdir]
        cls.name = "mtd-%s" % uuid.uuid4().hex[:8]
        p = d.docker(["run", "-d", "--name", cls.name, "--network", "host",
                      "--health-interval", "1s", "--health-start-period",
                      "30s"] + ADD_HOST + cls.mounts + [_image],
                     timeout=120)
        if p.returncode != 0:
            raise HarnessError("docker run failed: %s%s" % (p.stdout,
                                                            p.stderr))
        try:
            for port in ports:
                mtd.wait_for(lambda port=port: cls.running() and
                             mtd.port_accepts(port), 30 * SLOW, 0.05,
                             "the container to listen on %d" % port)
        except HarnessError as e:
            raise HarnessError("%s\n--- docker logs:\n%s" % (e, cls.logs()))

    @classmethod
    def tearDownClass(cls):
        cls.d.docker(["rm", "-f", cls.name], timeout=60)

    @classmethod
    def inspect(cls, fmt):
        return cls.d.docker(["inspect", "-f", fmt, cls.name],
                            timeout=30).stdout.strip()

    @classmethod
    def running(cls):
        r = cls.inspect("{{.State.Running}}")
        if r == "false":
            raise HarnessError("the container stopped (exit %s):\n%s" % (
                cls.inspect("{{.State.ExitCode}}"), cls.logs()))
        return r == "true"

    @classmethod
    def logs(cls):
        p = cls.d.docker(["logs", cls.name], timeout=30)
        return p.stdout + p.stderr

    def wait_log(self, pattern, timeout=15):
        rx = re.compile(pattern, re.M)
        try:
            return mtd.wait_for(lambda: rx.search(self.logs()),
                                timeout * SLOW, 0.2,
                                "docker logs to match %r" % pattern)
        except HarnessError as e:
            raise HarnessError("%s\n--- docker logs:\n%s" % (
                e, self.logs()[-6000:]))

    def ctx(self):
        return mtd.client_context()

    # The order matters: the stop test ends the container, so it runs last
    # (unittest sorts by name).

    def test_1_runs_as_non_root_with_no_capability_but_bind(self):
        user = self.d.docker(["image", "inspect", "-f", "{{.Config.User}}",
                              _image]).stdout.strip()
        self.assertTrue(user and user.split(":")[0] not in ("", "0",
                                                            "root"), user)
        pid = int(self.inspect("{{.State.Pid}}"))
        with open("/proc/%d/status" % pid) as f:
            st = dict(l.split(":", 1) for l in f if ":" in l)
        self.assertEqual(st["Uid"].split(), [str(UID)] * 4, st["Uid"])
        self.assertEqual(st["Gid"].split(), [str(UID)] * 4, st["Gid"])
        # The file capability is the only one the process can hold.
        self.assertEqual(int(st["CapEff"], 16) & ~CAP_NET_BIND_SERVICE, 0,
                         st["CapEff"])
        self.assertEqual(int(st["CapPrm"], 16) & ~CAP_NET_BIND_SERVICE, 0,
                         st["CapPrm"])
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        self.assertEqual(argv[0], b"/usr/sbin/mailtlsd", argv)
        p = self.d.docker(["exec", self.name, "id", "-u"])
        self.assertEqual(p.stdout.strip(), str(UID), p.stderr)
        # logs go to stderr (docker logs keeps the two streams apart)
        p = self.d.docker(["logs", self.name])
        self.assertIn('"event":"ready"', p.stderr)
        self.assertNotIn('"event":"ready"', p.stdout)
        # the configuration mounted into the image checks out with -t
        p = self.d.docker(["run", "--rm", "--network", "host"] + ADD_HOST +
                          self.mounts + [_image, "-t", "-c",
                                         "/etc/mailtlsd/mailtlsd.conf"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # the backend's name resolves inside the container: no warning
        self.assertNotIn("does not resolve", p.stdout + p.stderr)

    def test_2_health_check(self):
        try:
            mtd.wait_for(lambda: self.inspect("{{.State.Health.Status}}") ==
                         "healthy", 30 * SLOW, 0.5,
                         "the container to be healthy")
        except HarnessError as e:
            # the probes' own output says why
            raise HarnessError("%s\n--- health: %s" % (
                e, self.inspect("{{json .State.Health}}")))
        hc = "/usr/local/bin/mailtlsd-healthcheck"
        p = self.d.docker(["exec", self.name, hc])
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.d.docker(["exec", self.name, hc, "/etc/mailtlsd/probe.conf"])
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.d.docker(["exec", self.name, hc,
                           "/etc/mailtlsd/closed.conf"])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("does not accept", p.stderr)

    def message(self, user, tok):
        rcpt = _servers.address(user)
        return rcpt, ("From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n"
                      "\r\nthrough the container %s\r\n" % (rcpt, tok, tok))

    def test_3_mail_over_implicit_tls_and_starttls(self):
        rs = _servers
        tok1 = "ctr-implicit-" + uuid.uuid4().hex
        rcpt, msg = self.message("alice", tok1)
        with smtplib.SMTP_SSL(LOOPBACK, self.ports["submissions"],
                              context=self.ctx(), timeout=30 * SLOW) as s:
            code, ehlo = s.ehlo("client.example.org")
            self.assertEqual(code, 250)
            self.assertNotIn(b"STARTTLS", ehlo.upper())
            self.assertEqual(s.sendmail("sender@example.org", [rcpt], msg),
                             {})
        got = rs.wait_delivered("alice", tok1)
        self.assertIn(b"through the container", got)

        tok2 = "ctr-starttls-" + uuid.uuid4().hex
        rcpt, msg = self.message("bob", tok2)
        with smtplib.SMTP(LOOPBACK, self.ports["submission"],
                          timeout=30 * SLOW) as s:
            code, ehlo = s.ehlo("client.example.org")
            self.assertIn(b"STARTTLS", ehlo.upper())
            code, _ = s.mail("sender@example.org")
            self.assertEqual(code, 530, "mail before TLS was not refused")
            s.starttls(context=self.ctx())
            s.ehlo("client.example.org")
            self.assertEqual(s.sendmail("sender@example.org", [rcpt], msg),
                             {})
        rs.wait_delivered("bob", tok2)

        # and read back over IMAPS through the container (Dovecot behind
        # PROXY v2)
        m = imaplib.IMAP4_SSL(LOOPBACK, self.ports["imaps"],
                              ssl_context=self.ctx(), timeout=30 * SLOW)
        try:
            self.assertEqual(m.login("bob", rs.users["bob"])[0], "OK")
            m.select("INBOX")
            typ, data = m.search(None, "SUBJECT", tok2)
            self.assertEqual(typ, "OK")
            self.assertEqual(len(data[0].split()), 1, data)
        finally:
            m.logout()

    def test_4_sighup_reloads_renewed_certificate(self):
        port = self.ports["submissions"]
        self.assertEqual(served_der(port), leaf_der(self.pair.cert))
        renewed = self.certs.issue("container-2", names=(HOSTNAME,
                                                         "localhost"))
        before = len(re.findall(r"SIGHUP", self.logs()))
        install_pair(self.certdir, renewed)
        p = self.d.docker(["kill", "-s", "HUP", self.name])
        self.assertEqual(p.returncode, 0, p.stderr)
        mtd.wait_for(lambda: len(re.findall(
            r'(?m)^.*"trigger":"SIGHUP".*"result":"ok".*$', self.logs()))
            >= len(self.LISTENERS), 15 * SLOW, 0.2,
            "a SIGHUP reload of every listener")
        self.assertGreater(len(re.findall(r"SIGHUP", self.logs())), before)
        want = leaf_der(renewed.cert)
        mtd.wait_for(lambda: served_der(port) == want, 10 * SLOW, 0.2,
                     "the renewed certificate to be served")
        self.assertTrue(self.running())

    def test_5_docker_stop_drains_and_exits_0(self):
        rs = _servers
        tok = "ctr-drain-" + uuid.uuid4().hex
        rcpt, msg = self.message("carol", tok)
        s = smtplib.SMTP_SSL(LOOPBACK, self.ports["submissions"],
                             context=self.ctx(), timeout=30 * SLOW)
        s.ehlo("client.example.org")
        stop = subprocess.Popen(
            [DOCKER, "-H", "unix://" + self.d.sock, "stop", "-t", "40",
             self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # new connections are refused at once ...
            mtd.wait_for(lambda: not mtd.port_accepts(
                self.ports["submission"]), 10 * SLOW, 0.05,
                "the listeners to close after docker stop")
            self.assertTrue(self.running(), "exited with a session open")
            # ... while the open session still delivers
            self.assertEqual(s.sendmail("sender@example.org", [rcpt], msg),
                             {})
            s.quit()
            out, _ = stop.communicate(timeout=60 * SLOW)
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait(10)
            s.close()
        self.assertEqual(stop.returncode, 0, out)
        rs.wait_delivered("carol", tok)
        self.assertEqual(self.inspect("{{.State.Running}}"), "false")
        self.assertEqual(self.inspect("{{.State.ExitCode}}"), "0",
                         self.logs()[-4000:])
        self.assertEqual(self.inspect("{{.State.OOMKilled}}"), "false")
        # Every session ended by itself, none was cut at shutdown_timeout.
        logs = self.logs()
        cut = [l for l in logs.splitlines() if '"reason":"shutdown"' in l]
        self.assertEqual(cut, [], "sessions cut at shutdown_timeout")
        self.assertRegex(logs, r"SIGTERM")
        self.assertRegex(logs, r'"event":"shutdown".*stopped')


def x509_text(der):
    p = mtd.run([mtd.need_tool("openssl"), "x509", "-inform", "DER",
                 "-noout", "-subject", "-issuer", "-ext", "subjectAltName"],
                input=der, timeout=30)
    if p.returncode != 0:
        raise HarnessError("openssl x509: %s" % p.stderr)
    return p.stdout


class AutoCert(unittest.TestCase):
    """MAILTLSD_AUTO_CERT=yes, as examples/compose runs the image."""

    COMPOSE_LIKE = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                    "--cap-add", "NET_BIND_SERVICE", "--security-opt",
                    "no-new-privileges:true"]

    def start(self, certdir, env=("MAILTLSD_AUTO_CERT=yes",), wait=True):
        confdir = mtd.tempdir("mtd-ctr-auto-conf-")
        names = Container.LISTENERS
        ports = mtd.free_ports(len(names) + 1)
        self.ports = dict(zip(names, ports))
        text, _ = example_config(self.ports, ports[-1])
        with open(os.path.join(confdir, "mailtlsd.conf"), "w") as f:
            f.write(text)
        name = "mtd-auto-%s" % uuid.uuid4().hex[:8]
        args = ["run", "-d", "--name", name, "--network", "host"] + ADD_HOST
        for e in env:
            args += ["-e", e]
        args += self.COMPOSE_LIKE + [
            "-v", "%s:/etc/mailtlsd:ro" % confdir,
            "-v", "%s:/etc/ssl/mailtlsd:ro" % certdir, _image]
        p = _dockerd.docker(args, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.addCleanup(_dockerd.docker, ["rm", "-f", name], 60)
        self.name = name
        if wait:
            def up():
                st = self.inspect("{{.State.Running}}")
                if st == "false":
                    raise HarnessError("the container exited (%s):\n%s" % (
                        self.inspect("{{.State.ExitCode}}"), self.logs()))
                return all(mtd.port_accepts(p) for p in ports)
            mtd.wait_for(up, 30 * SLOW, 0.05, "the container's listeners")
        return name

    def inspect(self, fmt):
        return _dockerd.docker(["inspect", "-f", fmt, self.name],
                               timeout=30).stdout.strip()

    def logs(self):
        p = _dockerd.docker(["logs", self.name], timeout=30)
        return p.stdout + p.stderr

    def test_empty_cert_volume_serves_a_throw_away_cert_and_says_so(self):
        certdir = mtd.tempdir("mtd-ctr-auto-certs-", 0o755)
        self.start(certdir)
        logs = self.logs()
        said = [l for l in logs.splitlines()
                if l.startswith("mailtlsd-entrypoint: no certificate")]
        self.assertEqual(len(said), 1, logs)
        self.assertIn("/etc/ssl/mailtlsd/fullchain.pem is missing", said[0])
        self.assertIn("for %s" % HOSTNAME, said[0])
        for name in Container.LISTENERS:
            self.assertIn(name, said[0])
        self.assertIn('"event":"cert_auto"', logs)
        # a self-signed certificate for the configured hostname
        with mtd.TlsConn(self.ports["imaps"], server_hostname=HOSTNAME,
                         ctx=mtd.client_context(verify=False)) as c:
            der = c.peer_cert_der()
        text = x509_text(der)
        subject = re.search(r"(?m)^subject=(.*)$", text).group(1)
        issuer = re.search(r"(?m)^issuer=(.*)$", text).group(1)
        self.assertEqual(subject, issuer, text)
        self.assertIn(HOSTNAME, text)
        # and mail goes through it
        rs = _servers
        tok = "ctr-auto-" + uuid.uuid4().hex
        rcpt = rs.address("dave")
        with smtplib.SMTP(LOOPBACK, self.ports["submission"],
                          timeout=30 * SLOW) as s:
            s.ehlo("client.example.org")
            s.starttls(context=mtd.client_context(verify=False))
            s.ehlo("client.example.org")
            self.assertEqual(s.sendmail(
                "sender@example.org", [rcpt],
                "Subject: %s\r\n\r\nauto cert\r\n" % tok), {})
        rs.wait_delivered("dave", tok)
        # the mounted configuration was not touched; the process is mailtlsd
        self.assertEqual(self.inspect("{{.State.Running}}"), "true")
        pid = int(self.inspect("{{.State.Pid}}"))
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        self.assertEqual(argv[0], b"/usr/sbin/mailtlsd", argv)

    def test_a_certificate_in_the_volume_is_served(self):
        certdir = mtd.tempdir("mtd-ctr-auto-real-", 0o750)
        os.chown(certdir, 0, UID)
        pair = mtd.certs().issue("container-auto", names=(HOSTNAME,
                                                          "localhost"))
        install_pair(certdir, pair)
        self.start(certdir)
        self.assertNotIn("mailtlsd-entrypoint", self.logs())
        self.assertNotIn('"event":"cert_auto"', self.logs())
        self.assertEqual(served_der(self.ports["imaps"]),
                         leaf_der(pair.cert))

    def test_without_the_variable_a_missing_certificate_is_an_error(self):
        certdir = mtd.tempdir("mtd-ctr-auto-none-", 0o755)
        self.start(certdir, env=(), wait=False)
        mtd.wait_for(lambda: self.inspect("{{.State.Running}}") == "false",
                     30 * SLOW, 0.2, "the container to exit")
        self.assertNotEqual(self.inspect("{{.State.ExitCode}}"), "0")
        self.assertIn("fullchain.pem", self.logs())
        self.assertNotIn('"event":"cert_auto"', self.logs())


if __name__ == "__main__":
    unittest.main()
