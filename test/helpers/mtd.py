"""
mtd: the harness shared by mailtlsd's integration tests (standard library only).

    ports     free_port(), wait_port(), wait_for(), tempdir()
    certs     certs() -> Certs: a test CA and leaf certificates made with certtool,
              once per test process (each ctest test is one process)
    TLS       client_context(), TlsConn (full-duplex TLS client over memory BIOs:
              big transfers, half-close, never-reading clients)
    servers   RealServers: a throw-away Postfix and Dovecot on loopback high ports
    daemon    Mailtlsd: write a config, run MAILTLSD_BIN, stop it, read its log
    backend   FakeBackend: a scripted TCP server that records every byte it received

Every wait is bounded; nothing synchronises on a fixed sleep.  Everything that
starts a process or a thread registers its own cleanup (atexit as the last
resort), so a failing test never leaves a daemon behind.
"""

import atexit
import collections
import functools
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

LOOPBACK = "127.0.0.1"
DEFAULT_TIMEOUT = 10.0
SANITIZERS = os.environ.get("MAILTLSD_SANITIZERS", "").upper() in (
    "ON", "1", "YES", "TRUE")
# Under ASan/UBSan everything is slower: bounded waits are scaled, never removed.
SLOW = 3.0 if SANITIZERS else 1.0


class HarnessError(AssertionError):
    """A precondition of the test environment failed (a missing tool, a
    server that does not start).  It is an AssertionError so that unittest
    reports it as a failure, never as a skip."""


# --------------------------------------------------------------------------
# Processes, ports, waiting

_cleanups = []


def _run_cleanups():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - last-resort cleanup
            print("mtd: cleanup failed: %r" % (e,), file=sys.stderr)


atexit.register(_run_cleanups)


def at_exit(fn):
    """Run fn at interpreter exit unless it was already run; returns a handle
    whose cancel() removes it."""
    _cleanups.append(fn)

    class _H:
        @staticmethod
        def cancel():
            try:
                _cleanups.remove(fn)
            except ValueError:
                pass
    return _H


def need_tool(name):
    """Return the path of an executable; fail loudly when it is missing."""
    for d in os.environ.get("PATH", "").split(os.pathsep) + [
            "/usr/sbin", "/sbin", "/usr/bin"]:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise HarnessError("required tool %r is not installed" % name)


def tempdir(prefix="mtd-", mode=0o755):
    """A new temporary directory, removed at exit.  mode 0755 by default
    because unprivileged Postfix/Dovecot processes must traverse it."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, mode)
    at_exit(functools.partial(shutil.rmtree, d, True))
    return d


def free_port(host=LOOPBACK):
    """A TCP port that was free a moment ago (bind port 0, then release)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n, host=LOOPBACK):
    """n distinct free ports (all held open while choosing)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(pred, timeout=DEFAULT_TIMEOUT, interval=0.02, what="condition"):
    """Poll pred() until it returns a true value, which is returned; raise
    HarnessError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1fs waiting for %s" %
                               (timeout, what))
        time.sleep(interval)


def port_accepts(port, host=LOOPBACK):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, host=LOOPBACK, timeout=DEFAULT_TIMEOUT, proc=None):
    """Wait until host:port accepts a TCP connection.  If proc (a Popen) is
    given and exits meanwhile, fail at once with its exit status."""
    def ok():
        if proc is not None and proc.poll() is not None:
            raise HarnessError("process exited with %s while waiting for "
                               "port %s" % (proc.returncode, port))
        return port_accepts(port, host)
    return wait_for(ok, timeout, 0.02, "%s:%s to accept" % (host, port))


def wait_port_closed(port, host=LOOPBACK, timeout=DEFAULT_TIMEOUT):
    """Wait until host:port refuses connections."""
    return wait_for(lambda: not port_accepts(port, host), timeout, 0.02,
                    "%s:%s to refuse" % (host, port))


def run(argv, timeout=60, input=None, check=False, env=None):
    """Run a command, bounded; return CompletedProcess with text stdout/stderr."""
    if isinstance(input, str):
        input = input.encode()
    p = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, env=env)
    p.stdout = p.stdout.decode("utf-8", "replace")
    p.stderr = p.stderr.decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise HarnessError("%s failed (%d):\n%s%s" % (
            " ".join(argv), p.returncode, p.stdout, p.stderr))
    return p


def stop_process(proc, sig=signal.SIGTERM, timeout=DEFAULT_TIMEOUT):
    """Signal proc, wait for it (bounded), SIGKILL if needed.  Return
    (returncode, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(DEFAULT_TIMEOUT), True


def rss_kb(pid):
    """Resident set size of pid in KiB (VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise HarnessError("no VmRSS for pid %d" % pid)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------
# Certificates

CertPair = collections.namedtuple("CertPair", "cert key chain")


class Certs:
    """Certificates made with certtool in one directory, each made on first use.

        ca, ca_key            the test CA that clients trust (ca_file)
        server_ecdsa          ECDSA P-256, DNS localhost + mail.example.test
                              (+ extra names), IP 127.0.0.1 and ::1
        server_rsa            the same names, RSA-2048
        client                a client certificate (CN client.example.test)
        expired               valid names, expired in 2020
        other_name            signed by the CA, only for other.example.test
        unknown_ca            for localhost/127.0.0.1, signed by an unknown CA
        client_server_eku     from the CA, extended key usage serverAuth only
        client_san_only       a client certificate with an empty subject
    Every pair is a CertPair(cert, key, chain) of file paths; chain is the leaf
    followed by its CA.  issue() makes more.
    """

    NAMES = ("localhost", "mail.example.test")
    IPS = ("127.0.0.1", "::1")

    def __init__(self, directory=None):
        self.certtool = need_tool("certtool")
        self.dir = directory or tempdir("mtd-certs-", 0o755)
        self._n = 0
        self.ca_key, self.ca = self._make_ca("mailtlsd test CA")
        self.ca_file = self.ca

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _tool(self, *args):
        run([self.certtool] + list(args), timeout=60, check=True)

    def _key(self, name, kind):
        path = self._path(name + ".key")
        if kind == "ecdsa":
            self._tool("--generate-privkey", "--key-type", "ecdsa",
                       "--curve", "secp256r1", "--outfile", path)
        elif kind == "rsa":
            self._tool("--generate-privkey", "--key-type", "rsa",
                       "--bits", "2048", "--outfile", path)
        else:
            raise ValueError(kind)
        os.chmod(path, 0o644)
        return path

    def _template(self, name, lines):
        path = self._path(name + ".tmpl")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _make_ca(self, cn, name=None):
        name = name or "ca"
        key = self._key(name, "ecdsa")
        tmpl = self._template(name, [
            'cn = "%s"' % cn, 'organization = "mailtlsd tests"',
            "serial = %d" % (int(time.time()) % 1000000),
            "expiration_days = 30", "ca", "cert_signing_key",
            "crl_signing_key"])
        cert = self._path(name + ".crt")
        self._tool("--generate-self-signed", "--load-privkey", key,
                   "--template", tmpl, "--outfile", cert)
        return key, cert

    def issue(self, name, names=NAMES, ips=IPS, kind="ecdsa", client=False,
              ca=None, activation=None, expiration=None, cn=None,
              purposes=None, empty_subject=False):
        """Make a leaf certificate; return a CertPair.  purposes: the
        certtool key purposes (e.g. ["tls_www_server"]) instead of the
        one that client= picks; empty_subject: no subject DN at all (the
        names are then only in the subject alternative names)."""
        ca_key, ca_cert = ca or (self.ca_key, self.ca)
        key = self._key(name, kind)
        self._n += 1
        lines = [] if empty_subject else [
            'cn = "%s"' % (cn or (names[0] if names else name)),
            'organization = "mailtlsd tests"']
        lines += ["serial = %d" % (1000 + self._n), "signing_key"]
        if kind == "rsa":
            lines.append("encryption_key")
        lines += ['dns_name = "%s"' % n for n in names]
        lines += ['ip_address = "%s"' % i for i in ips]
        if purposes is not None:
            lines += list(purposes)
        else:
            lines.append("tls_www_client" if client else "tls_www_server")
        if activation:
            lines.append('activation_date = "%s"' % activation)
        if expiration:
            lines.append('expiration_date = "%s"' % expiration)
        else:
            lines.append("expiration_days = 30")
        tmpl = self._template(name, lines)
        cert = self._path(name + ".crt")
        self._tool("--generate-certificate", "--load-privkey", key,
                   "--load-ca-certificate", ca_cert,
                   "--load-ca-privkey", ca_key,
                   "--template", tmpl, "--outfile", cert)
        chain = self._path(name + ".chain.pem")
        with open(chain, "w") as out:
            for p in (cert, ca_cert):
                with open(p) as f:
                    out.write(f.read())
        return CertPair(cert, key, chain)

    @functools.cached_property
    def server_ecdsa(self):
        return self.issue("server-ecdsa", kind="ecdsa")

    @functools.cached_property
    def server_rsa(self):
        return self.issue("server-rsa", kind="rsa")

    @functools.cached_property
    def client(self):
        return self.issue("client", names=(), ips=(), client=True,
                          cn="client.example.test")

    @functools.cached_property
    def expired(self):
        return self.issue("expired", activation="2020-01-01 00:00:00 UTC",
                          expiration="2020-12-31 00:00:00 UTC")

    @functools.cached_property
    def other_name(self):
        return self.issue("other-name", names=("other.example.test",), ips=())

    @functools.cached_property
    def unknown_ca_pair(self):
        return self._make_ca("mailtlsd unknown CA", name="unknown-ca")

    @functools.cached_property
    def unknown_ca(self):
        return self.issue("unknown-ca-leaf", ca=self.unknown_ca_pair)

    @functools.cached_property
    def client_server_eku(self):
        """From the test CA, with extended key usage serverAuth only."""
        return self.issue("client-server-eku", names=(), ips=(),
                          cn="server-eku.example.test",
                          purposes=["tls_www_server"])

    @functools.cached_property
    def client_san_only(self):
        """A client certificate from the test CA with an empty subject:
        its only name is the DNS subject alternative name."""
        return self.issue("client-san-only", names=("san-only.example.test",),
                          ips=(), client=True, empty_subject=True)


_certs = None


def certs():
    """The Certs of this test process (made once, removed at exit)."""
    global _certs
    if _certs is None:
        _certs = Certs()
    return _certs


def client_context(ca=None, verify=True, cert=None, minimum=None,
                   maximum=None, ciphers=None, alpn=None):
    """An ssl.SSLContext for a client that trusts the test CA (or ca)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(ca or certs().ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


# --------------------------------------------------------------------------
# A full-duplex TLS client

class Closed(Exception):
    """The peer closed the connection (EOF, close_notify or reset)."""


class TlsConn:
    """A TLS client over a plain socket and ssl memory BIOs, driven from one
    thread with select(), so that it can send and receive at once (big
    transfers both ways), stop reading on purpose (backpressure), and send a
    close_notify while still reading (half-close).

        c = TlsConn(port)                 # connect + handshake
        c.send(b"x"); c.recv_until(b"\\n"); c.recv_exact(n); c.recv_to_eof()
        c.pump(data, want=n)              # send data and receive n bytes at once
        c.close_notify(); c.shutdown_wr(); c.close()
    self.eof is set once the peer closed; self.eof_kind says how
    ("close_notify", "eof", "reset").
    """

    CHUNK = 64 * 1024

    def __init__(self, port, host=LOOPBACK, ctx=None,
                 server_hostname="localhost", timeout=DEFAULT_TIMEOUT,
                 handshake=True, sock=None):
        self.ctx = ctx or client_context()
        self.timeout = timeout * SLOW
        if sock is None:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect((host, port))
        self.sock = sock
        self.sock.setblocking(False)
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.tls = self.ctx.wrap_bio(self.inc, self.out,
                                     server_hostname=server_hostname)
        self.buf = bytearray()          # received plaintext not yet consumed
        self.eof = False
        self.eof_kind = None
        self.tcp_eof = False
        self.sent_close = False
        self.pending = b""              # ciphertext not yet on the wire
        if handshake:
            self.handshake()

    # -- low level
    def _flush_out(self):
        self.pending += self.out.read()

    def _io(self, want_read, deadline, want_write_plain=False):
        """One select round: write pending ciphertext, read ciphertext into
        the BIO.  Return True if anything moved."""
        self._flush_out()
        rl = [self.sock] if (want_read and not self.tcp_eof) else []
        wl = [self.sock] if self.pending else []
        if not rl and not wl:
            return False
        left = max(0.0, deadline - time.monotonic())
        r, w, _ = select.select(rl, wl, [], min(left, 0.5))
        moved = False
        if w:
            try:
                n = self.sock.send(self.pending)
                self.pending = self.pending[n:]
                moved = True
            except (BlockingIOError, InterruptedError):
                pass
            except (BrokenPipeError, ConnectionResetError):
                self.pending = b""
                self._set_eof("reset")
                moved = True
        if r:
            try:
                data = self.sock.recv(self.CHUNK * 4)
            except (BlockingIOError, InterruptedError):
                data = None
            except ConnectionResetError:
                self.tcp_eof = True
                self._set_eof("reset")
                data = None
                moved = True
            if data is not None:
                moved = True
                if data:
                    self.inc.write(data)
                else:
                    self.tcp_eof = True
                    self.inc.write_eof()
        return moved

    def _set_eof(self, kind):
        if not self.eof:
            self.eof = True
            self.eof_kind = kind

    def _read_plain(self):
        """Move decrypted bytes into self.buf; return count."""
        n = 0
        while not self.eof:
            try:
                d = self.tls.read(self.CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._set_eof("close_notify")
                break
            except ssl.SSLEOFError:
                self._set_eof("eof")
                break
            except ssl.SSLError as e:
                if self.tcp_eof:
                    self._set_eof("eof")
                    break
                raise
            if not d:
                self._set_eof("close_notify")
                break
            self.buf += d
            n += len(d)
        if self.tcp_eof and not self.eof and self.inc.pending == 0:
            self._set_eof("eof")
        return n

    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None
                                   else timeout * SLOW)

    def handshake(self, timeout=None):
        deadline = self._deadline(timeout)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if self.tcp_eof:
                self._flush_out()
                raise Closed("connection closed during the TLS handshake")
            moved = self._io(True, deadline)
            if not moved and time.monotonic() >= deadline:
                raise socket.timeout("TLS handshake timed out")
        self._flush_out()
        d = self._deadline(timeout)
        while self.pending and time.monotonic() < d:
            self._io(False, d)
        return self

    @property
    def version(self):
        return self.tls.version()

    @property
    def cipher(self):
        return self.tls.cipher()

    def peer_cert_der(self):
        return self.tls.getpeercert(binary_form=True)

    # -- sending and receiving
    def pump(self, data=b"", want=0, timeout=None, read=True,
             stall=None, on_progress=None):
        """Send all of data while receiving, until data is sent and at least
        want bytes are buffered (or EOF).  With read=False nothing is read
        (the peer sees a client that never reads).  With stall=S return
        quietly once nothing could be sent for S seconds (the peer stopped
        reading); otherwise time out with socket.timeout.  Return bytes sent."""
        deadline = self._deadline(timeout)
        mv = memoryview(data)
        off = 0
        last_progress = time.monotonic()
        while True:
            # Encrypt while the ciphertext queue is short.
            while off < len(mv) and len(self.pending) < 4 * self.CHUNK \
                    and not self.eof:
                n = self.tls.write(mv[off:off + self.CHUNK])
                off += n
                self._flush_out()
            if read:
                self._read_plain()
            done_send = off >= len(mv) and not self.pending
            if done_send and (len(self.buf) >= want or self.eof or not read):
                return off
            if self.eof and not done_send and self.eof_kind == "reset":
                raise Closed("connection reset while sending")
            if self.eof and read and len(self.buf) < want and done_send:
                return off
            before = (off, len(self.pending), len(self.buf))
            self._io(read, deadline)
            if read:
                self._read_plain()
            if (off, len(self.pending), len(self.buf)) != before:
                last_progress = time.monotonic()
                if on_progress:
                    on_progress(off, len(self.buf))
            elif on_progress:
                on_progress(off, len(self.buf))
            now = time.monotonic()
            if stall is not None and now - last_progress >= stall:
                return off
            if now >= deadline:
                raise socket.timeout(
                    "pump timed out: sent %d/%d, received %d/%d" %
                    (off, len(mv), len(self.buf), want))

    def send(self, data, timeout=None):
        self.pump(data, 0, timeout)

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_exact(self, n, timeout=None):
        self.pump(b"", n, timeout)
        if len(self.buf) < n:
            raise Closed("closed after %d of %d bytes: %r" %
                         (len(self.buf), n, bytes(self.buf[:200])))
        return self._take(n)

    def recv_until(self, marker=b"\r\n", timeout=None):
        deadline = self._deadline(timeout)
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                return self._take(i + len(marker))
            if self.eof:
                raise Closed("closed before %r; got %r" %
                             (marker, bytes(self.buf)))
            self._io(True, deadline)
            self._read_plain()
            if time.monotonic() >= deadline:
                raise socket.timeout("no %r within the deadline; got %r" %
                                     (marker, bytes(self.buf)))

    def recv_to_eof(self, timeout=None):
        """Everything until the peer closes; raises socket.timeout if it
        does not close in time."""
        deadline = self._deadline(timeout)
        while not self.eof:
            self._io(True, deadline)
            self._read_plain()
            if not self.eof and time.monotonic() >= deadline:
                raise socket.timeout("peer did not close; got %r" %
                                     (bytes(self.buf[:300]),))
        return self._take(len(self.buf))

    def close_notify(self, timeout=None):
        """Send a TLS close_notify (our write side ends) and keep reading."""
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError:
            pass
        self.sent_close = True
        self._flush_out()
        deadline = self._deadline(timeout)
        while self.pending and time.monotonic() < deadline:
            self._io(False, deadline)

    def shutdown_wr(self):
        """TCP half-close (after close_notify or instead of it)."""
        self._flush_out()
        d = self._deadline(None)
        while self.pending and time.monotonic() < d:
            self._io(False, d)
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def tls_connect(port, host=LOOPBACK, ctx=None, server_hostname="localhost",
                timeout=DEFAULT_TIMEOUT):
    """A blocking ssl.SSLSocket, for simple request/reply exchanges."""
    ctx = ctx or client_context()
    s = socket.create_connection((host, port), timeout=timeout * SLOW)
    return ctx.wrap_socket(s, server_hostname=server_hostname)


def read_until_closed(sock, timeout=DEFAULT_TIMEOUT, limit=1 << 20):
    """Read a (TLS) socket until the peer closes.  Return the bytes; raise
    socket.timeout if the peer keeps it open."""
    deadline = time.monotonic() + timeout * SLOW
    data = bytearray()
    while len(data) < limit:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                BrokenPipeError):
            break
        except socket.timeout:
            raise socket.timeout("peer kept the connection open; got %r" %
                                 (bytes(data[:300]),))
        if not d:
            break
        data += d
    return bytes(data)


# --------------------------------------------------------------------------
# mailtlsd

def mailtlsd_bin():
    b = os.environ.get("MAILTLSD_BIN")
    if not b:
        src = os.environ.get("MAILTLSD_SOURCE") or os.path.abspath(
            os.path.join(os.path.dirname(__file__), "..", ".."))
        b = os.path.join(src, "build", "mailtlsd")
    if not os.access(b, os.X_OK):
        raise HarnessError("mailtlsd binary %r not found (set MAILTLSD_BIN)"
                           % b)
    return b


# The hostname that test listeners use in the replies mailtlsd writes.
FRONT_HOSTNAME = "mx-front.example.test"


def listener_conf(protocol, backend, listen, certs=None, **kw):
    """A listener section: implicit TLS on ${listen} (a port on 127.0.0.1,
    or "HOST:PORT") with the test ECDSA certificate unless ${certs} is
    given; keyword arguments add or override keys."""
    d = {
        "listen": listen if isinstance(listen, str) else
        "%s:%d" % (LOOPBACK, listen),
        "protocol": protocol,
        "client_tls": "implicit",
        "backend": backend,
        "certs": certs or [_test_certs().server_ecdsa],
        "hostname": FRONT_HOSTNAME,
        "connect_timeout": "5s",
        "handshake_timeout": "10s",
    }
    d.update(kw)
    return d


def daemon_conf(listeners, **glob):
    """A whole configuration: [global] (debug logs, and a short
    shutdown_timeout so that a failing test that leaves a session open does
    not hold up stop()) with ${glob} added, then the ${listeners}."""
    g = {"log_level": "debug", "shutdown_timeout": "2s"}
    g.update(glob)
    cfg = {"global": g}
    cfg.update(listeners)
    return cfg


_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(line):
    """The key=value fields of a text log line, quoted values unescaped."""
    out = {}
    for k, v in _KV.findall(line):
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[k] = v
    return out


def render_config(cfg):
    """Text of a config from a dict {section: {key: value or [values]}};
    a str is returned unchanged.  Lists repeat the key (cert/key pairs:
    use key "certs" with a list of CertPair or (cert, key) tuples)."""
    if isinstance(cfg, str):
        return cfg
    out = []
    for section, kv in cfg.items():
        out.append("[%s]" % section)
        for k, v in kv.items():
            if k == "certs":
                for pair in v:
                    if isinstance(pair, str):
                        out.append("cert = %s" % pair)
                    else:
                        out.append("cert = %s" % pair[0])
                        out.append("key = %s" % pair[1])
                continue
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(item, bool):
                    item = "yes" if item else "no"
                out.append("%s = %s" % (k, item))
        out.append("")
    return "\n".join(out)


_LISTEN_RE = re.compile(r"^\s*listen\s*[=:]\s*(\S+)", re.M)


def listen_addrs(text):
    """(host, port) of every listen key in a config text."""
    addrs = []
    for a in _LISTEN_RE.findall(text):
        a = re.split(r"[;#]", a)[0]
        m = re.match(r"^\[(.*)\]:(\d+)$", a) or re.match(r"^(.*):(\d+)$", a)
        if m:
            addrs.append((m.group(1), int(m.group(2))))
    return addrs


def check_sanitizer_log(text, what="mailtlsd"):
    bad = [l for l in text.splitlines()
           if "ERROR: AddressSanitizer" in l or "runtime error:" in l
           or "ERROR: LeakSanitizer" in l]
    if bad:
        raise AssertionError("%s: sanitizer report:\n%s" %
                             (what, "\n".join(bad[:20]) + "\n---\n" +
                              text[-8000:]))


class Mailtlsd:
    """A mailtlsd process.

        d = Mailtlsd(config_dict_or_text)      # writes DIR/mailtlsd.conf
        d.start()                              # waits until each listen port accepts
        d.log                                  # stderr so far
        rc = d.stop()                          # SIGTERM; exit status (SIGKILL = failure)
        rc, out = Mailtlsd.check(text)         # mailtlsd -t -c FILE
    A testcase given as tc= gets stop() registered with addCleanup.
    """

    def __init__(self, config, tc=None, name="mailtlsd", env=None,
                 wait_ports=None, backend_check=False):
        self.bin = mailtlsd_bin()
        self.dir = tempdir("mtd-%s-" % name)
        # mailtlsd's start-up check opens one connection to each backend:
        # FakeBackend would count it as a session's.  Tests that do not
        # test that check turn it off (test_backends tests it).
        if isinstance(config, dict) and not backend_check:
            config = dict(config)
            g = dict(config.get("global", {}))
            g.setdefault("backend_check", "no")
            config = dict([("global", g)] + [(k, v) for k, v in
                                              config.items()
                                              if k != "global"])
        self.text = render_config(config)
        self.path = os.path.join(self.dir, "mailtlsd.conf")
        with open(self.path, "w") as f:
            f.write(self.text)
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.proc = None
        self.returncode = None
        self.env = dict(os.environ)
        if SANITIZERS:
            self.env.setdefault("ASAN_OPTIONS",
                                "detect_leaks=1:abort_on_error=0:"
                                "halt_on_error=1")
            self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if env:
            self.env.update(env)
        self.wait_ports = (wait_ports if wait_ports is not None
                           else listen_addrs(self.text))
        self._exit_hook = None
        if tc is not None:
            tc.addCleanup(self._cleanup)

    @property
    def pid(self):
        return self.proc.pid

    def spawn(self, args=None):
        """Start the process without waiting for anything."""
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.bin] + (args or ["-c", self.path]), stdin=subprocess.DEVNULL,
            stdout=self._logf, stderr=subprocess.STDOUT, env=self.env,
            cwd=self.dir)
        self._exit_hook = at_exit(self._cleanup)
        return self

    def start(self, timeout=DEFAULT_TIMEOUT):
        self.spawn()
        try:
            for host, port in self.wait_ports:
                host = {"0.0.0.0": LOOPBACK, "::": "::1",
                        "localhost": LOOPBACK}.get(host, host)
                wait_port(port, host, timeout * SLOW, self.proc)
        except HarnessError as e:
            self._cleanup()
            raise HarnessError("%s\n--- mailtlsd log:\n%s\n--- config:\n%s" %
                               (e, self.log, self.text))
        return self

    @property
    def log(self):
        """The log so far, in whole lines while the process runs.

        mailtlsd writes each line with one write(), but a reader of a
        regular file can see a write that crosses a page boundary half
        done (the kernel copies and extends the file a page at a time), so
        a line still being written is left for the next read.
        """
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return ""
        if getattr(self, "proc", None) is not None and \
                self.proc.poll() is None:
            data = data[:data.rfind(b"\n") + 1]
        return data.decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=DEFAULT_TIMEOUT):
        """Wait until a log line matches the regex pattern; return the match."""
        rx = re.compile(pattern, re.M)
        return wait_for(lambda: rx.search(self.log), timeout * SLOW, 0.02,
                        "log line matching %r" % pattern)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the process to exit by itself (bounded); return its
        status.  Fails (after SIGKILL) if it does not exit."""
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(DEFAULT_TIMEOUT)
            self._finish()
            raise AssertionError("mailtlsd did not exit within %.0fs; killed."
                                 "\n--- log:\n%s" % (timeout * SLOW,
                                                     self.log[-6000:]))
        self._finish()
        return rc

    def stop(self, timeout=DEFAULT_TIMEOUT):
        """SIGTERM, wait (bounded), return the exit status; SIGKILL and fail
        when it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def _finish(self):
        self.returncode = self.proc.returncode
        if self._exit_hook:
            self._exit_hook.cancel()
            self._exit_hook = None
        if not self._logf.closed:
            self._logf.close()
        if SANITIZERS:
            check_sanitizer_log(self.log)

    def _cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM, DEFAULT_TIMEOUT * SLOW)
        if self.proc is not None:
            self._finish()

    def rss_kb(self):
        return rss_kb(self.proc.pid)

    @staticmethod
    def run_args(args, timeout=30):
        """Run mailtlsd with args; return (rc, stdout+stderr)."""
        p = run([mailtlsd_bin()] + list(args), timeout=timeout * SLOW)
        out = p.stdout + p.stderr
        if SANITIZERS:
            check_sanitizer_log(out, "mailtlsd %s" % " ".join(args))
        return p.returncode, out

    @staticmethod
    def check(config, path=None):
        """mailtlsd -t -c FILE; return (rc, output).  The config (dict or
        text) is written to path, or to a new temporary file."""
        if path is None:
            path = os.path.join(tempdir("mtd-check-"), "mailtlsd.conf")
        with open(path, "w") as f:
            f.write(render_config(config))
        return Mailtlsd.run_args(["-t", "-c", path])


# --------------------------------------------------------------------------
# FakeBackend

class BackendConn:
    """One accepted connection of a FakeBackend, handed to the handler.
    Every byte read through it is appended to .received."""

    def __init__(self, sock, index, record=True):
        self.sock = sock
        self.index = index
        self.record = record
        self.received = bytearray()
        self.nreceived = 0
        self._hash = hashlib.sha256()
        self.buf = bytearray()          # read but not yet consumed by handler
        self.eof = False
        self.closed = threading.Event()
        self.error = None
        self.peer = sock.getpeername()

    @property
    def sha256(self):
        return self._hash.hexdigest()

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return 0
        self.nreceived += len(d)
        self._hash.update(d)
        if self.record:
            self.received += d
        self.buf += d
        return len(d)

    def recv(self, timeout=DEFAULT_TIMEOUT):
        """Whatever arrives next (b"" at EOF)."""
        if not self.buf and not self.eof:
            self._fill(timeout)
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def recv_until(self, marker=b"\r\n", timeout=DEFAULT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            if self.eof:
                raise Closed("EOF before %r" % (marker,))
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no %r" % (marker,))
            self._fill(left)

    def recv_line(self, timeout=DEFAULT_TIMEOUT):
        return self.recv_until(b"\n", timeout)

    def read_to_eof(self, timeout=60, keep=True):
        """Read until the peer half-closes; return the bytes (if keep)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no EOF from the proxy")
            self._fill(left)
            if not keep:
                self.buf.clear()
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def send(self, data, timeout=60):
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def shutdown_wr(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Close with an RST (SO_LINGER 0)."""
        import struct
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
        self.close()


class FakeBackend:
    """A scripted TCP server on loopback; one thread per connection.

        b = FakeBackend(handler, tc=self)     # handler(conn: BackendConn)
        b.port; b.conns; b.wait_conns(n); b.wait_closed(i); b.received(i)
    Ready-made handlers: FakeBackend.echo, .sink, .source(data),
    .duplex(data), .script(greeting, [(expect_marker, reply), ...]),
    .half_close_reply(fmt), .lines(greeting, replies: dict prefix->reply).
    A handler's exception is kept in conn.error and shown by check().
    """

    def __init__(self, handler=None, host=LOOPBACK, tc=None, record=True,
                 port=0):
        self.handler = handler or FakeBackend.echo
        self.record = record
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(128)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        self.addr = ("[%s]:%d" if ":" in host else "%s:%d") % (host, self.port)
        self.conns = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = False
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept_loop,
                                          daemon=True)
        self._acceptor.start()
        self._exit_hook = at_exit(self.close)
        if tc is not None:
            tc.addCleanup(self.close)

    def _accept_loop(self):
        while not self._stop:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self._cond:
                if self._stop:
                    s.close()
                    return
                c = BackendConn(s, len(self.conns), self.record)
                self.conns.append(c)
                self._cond.notify_all()
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, c):
        try:
            self.handler(c)
        except Exception as e:  # noqa: BLE001 - kept for the test to see
            if not self._stop:
                c.error = e
        finally:
            c.close()
            c.closed.set()
            with self._cond:
                self._cond.notify_all()

    def wait_conns(self, n, timeout=DEFAULT_TIMEOUT):
        """Wait until at least n connections were accepted; return them."""
        deadline = time.monotonic() + timeout * SLOW
        with self._cond:
            while len(self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError("backend got %d connections, expected "
                                       "%d" % (len(self.conns), n))
                self._cond.wait(left)
            return list(self.conns)

    def wait_closed(self, i=0, timeout=DEFAULT_TIMEOUT):
        c = self.wait_conns(i + 1, timeout)[i]
        if not c.closed.wait(timeout * SLOW):
            raise HarnessError("backend connection %d still open" % i)
        return c

    def received(self, i=0):
        return bytes(self.conns[i].received)

    def total_received(self):
        return sum(c.nreceived for c in self.conns)

    def check(self):
        """Raise the first handler error, if any."""
        for c in self.conns:
            if c.error is not None:
                raise AssertionError("backend connection %d: %r" %
                                     (c.index, c.error))

    def close(self):
        self._stop = True
        # close() alone does not wake a thread blocked in accept(): it
        # would take a connection meant for a later backend that got the
        # same descriptor number.  shutdown() wakes it; then wait for it.
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        if threading.current_thread() is not self._acceptor:
            self._acceptor.join(5)
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self._threads:
            t.join(5)
        if self._exit_hook:
            self._exit_hook.cancel()
            self._exit_hook = None

    # -- ready-made handlers
    @staticmethod
    def echo(c):
        """Send back everything, until EOF; then close."""
        while True:
            d = c.recv(timeout=300)
            if not d:
                return
            c.send(d)

    @staticmethod
    def sink(c):
        """Read until EOF, then close."""
        c.read_to_eof(timeout=300, keep=False)

    @staticmethod
    def source(data):
        def h(c):
            c.send(data)
        return h

    @staticmethod
    def duplex(data):
        """Send data while reading everything the peer sends, until both are
        done (peer's EOF); then close."""
        def h(c):
            t = threading.Thread(target=c.send, args=(data, 300), daemon=True)
            t.start()
            c.read_to_eof(timeout=300, keep=False)
            t.join(300)
        return h

    @staticmethod
    def greet_echo(greeting):
        def h(c):
            c.send(greeting)
            FakeBackend.echo(c)
        return h

    @staticmethod
    def half_close_reply(fmt=b"got %d bytes\r\n"):
        """Read to EOF, then answer how much arrived, then close."""
        def h(c):
            data = c.read_to_eof(timeout=60)
            c.send(fmt % len(data))
        return h

    @staticmethod
    def script(greeting, steps=()):
        """Send greeting, then for each (marker, reply): read up to marker,
        send reply.  Then read to EOF."""
        def h(c):
            if greeting:
                c.send(greeting)
            for marker, reply in steps:
                c.recv_until(marker, timeout=30)
                if reply:
                    c.send(reply)
            c.read_to_eof(timeout=60)
        return h

    @staticmethod
    def lines(greeting, replies):
        """A line server: send greeting; for each line received, send the
        reply of the first prefix (bytes, case-insensitive) it starts with;
        a reply may be a callable(line) -> bytes; b"" = no reply; None as a
        reply closes the connection."""
        def h(c):
            if greeting:
                c.send(greeting)
            while True:
                try:
                    line = c.recv_line(timeout=60)
                except Closed:
                    return
                for prefix, reply in replies:
                    if line.upper().startswith(prefix.upper()):
                        if callable(reply):
                            reply = reply(line)
                        if reply is None:
                            return
                        if reply:
                            c.send(reply)
                        break
        return h


# --------------------------------------------------------------------------
# Real Postfix and Dovecot

POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class RealServers:
    """A throw-away Postfix and Dovecot on loopback high ports, sharing
    virtual Maildirs under DIR/mail/<user>/.

        rs = RealServers(users={"alice": "pw", ...}, tc=None)
        rs.start()                  # both up (ports accept), or HarnessError
        rs.smtp_port, rs.imap_port, rs.pop3_port   plaintext backends
        rs.address("alice") -> "alice@example.test"
        rs.wait_delivered("alice", b"token") -> message bytes
        rs.stop()                   # also at exit, and by tc.addCleanup

    Extra listeners are keyword arguments, each a dict name -> options:
        postfix_listeners={"tls": {"smtpd_tls_security_level": "encrypt"},
                           "pp": {"smtpd_upstream_proxy_protocol": "haproxy"}}
            -> rs.smtp_ports["tls"], rs.smtp_ports["pp"] (-o overrides;
               "tls" levels get the server cert/key unless given)
        dovecot_listeners={"pp": {"haproxy": "yes"}}
            -> rs.imap_ports["pp"], rs.pop3_ports["pp"]
        dovecot_ssl="no" | "yes" | "required" (global, cert from certs())
        postfix_extra / dovecot_extra: text appended to main.cf / dovecot.conf
    """

    DOMAIN = "example.test"
    USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw",
             "dave": "dave-pw", "erin": "erin-pw"}

    def __init__(self, users=None, tc=None, postfix=True, dovecot=True,
                 postfix_listeners=None, dovecot_listeners=None,
                 dovecot_ssl="no", postfix_extra="", dovecot_extra="",
                 hostname="mx.example.test"):
        self.users = dict(users or self.USERS)
        self.want_postfix = postfix
        self.want_dovecot = dovecot
        self.postfix_listeners = dict(postfix_listeners or {})
        self.dovecot_listeners = dict(dovecot_listeners or {})
        self.dovecot_ssl = dovecot_ssl
        self.postfix_extra = postfix_extra
        self.dovecot_extra = dovecot_extra
        self.hostname = hostname
        self.dir = tempdir("mtd-servers-")
        self.mail = os.path.join(self.dir, "mail")
        self.uid = 65534
        self.gid = 65534
        self.smtp_ports = {}
        self.imap_ports = {}
        self.pop3_ports = {}
        self.postfix_dir = None
        self.dovecot_proc = None
        self._postfix_up = False
        self._exit_hook = None
        if tc is not None:
            tc.addCleanup(self.stop)

    # convenient names for the plaintext listeners
    @property
    def smtp_port(self):
        return self.smtp_ports["plain"]

    @property
    def imap_port(self):
        return self.imap_ports["plain"]

    @property
    def pop3_port(self):
        return self.pop3_ports["plain"]

    def address(self, user):
        return "%s@%s" % (user, self.DOMAIN)

    def maildir(self, user):
        return os.path.join(self.mail, user)

    def start(self):
        self._exit_hook = at_exit(self.stop)
        os.makedirs(self.mail, mode=0o755)
        for u in self.users:
            for sub in ("new", "cur", "tmp"):
                os.makedirs(os.path.join(self.mail, u, sub), mode=0o700)
        for root, dirs, _ in os.walk(self.mail):
            os.chown(root, self.uid, self.gid)
            for d in dirs:
                os.chown(os.path.join(root, d), self.uid, self.gid)
        try:
            if self.want_postfix:
                self._start_postfix()
            if self.want_dovecot:
                self._start_dovecot()
        except BaseException:
            self.stop()
            raise
        return self

    # -- Postfix
    def _start_postfix(self):
        postfix = need_tool("postfix")
        d = self.postfix_dir = os.path.join(self.dir, "postfix")
        etc = os.path.join(d, "etc")
        queue = os.path.join(d, "queue")
        data = os.path.join(d, "data")
        for p in (etc, queue, data):
            os.makedirs(p, mode=0o755)
        pf = __import__("pwd").getpwnam("postfix")
        os.chown(data, pf.pw_uid, pf.pw_gid)
        self.maillog = os.path.join(d, "maillog")
        vmap = os.path.join(etc, "vmailbox")
        with open(vmap, "w") as f:
            for u in self.users:
                f.write("%s %s/\n" % (self.address(u), u))
        listeners = {"plain": {}}
        listeners.update(self.postfix_listeners)
        ports = free_ports(len(listeners))
        lines = []
        for (name, opts), port in zip(listeners.items(), ports):
            self.smtp_ports[name] = port
            opts = dict(opts)
            level = opts.get("smtpd_tls_security_level")
            if level and level != "none":
                pair = certs().server_ecdsa
                opts.setdefault("smtpd_tls_cert_file", pair.chain)
                opts.setdefault("smtpd_tls_key_file", pair.key)
            o = "".join("\n  -o %s=%s" % kv for kv in opts.items())
            lines.append("%s:%d inet n - n - - smtpd%s" %
                         (LOOPBACK, port, o))
        with open(os.path.join(etc, "master.cf"), "w") as f:
            f.write("\n".join(lines) + "\n" + POSTFIX_SERVICES)
        main = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = {domain}
myorigin = $myhostname
inet_interfaces = {lo}
inet_protocols = ipv4
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_banner = $myhostname ESMTP mtd-postfix
smtp_dns_support_level = disabled
disable_dns_lookups = yes
smtpd_peername_lookup = no
biff = no
maillog_file = {maillog}
maillog_file_prefixes = /tmp, {d}
message_size_limit = 104857600
virtual_mailbox_limit = 0
mailbox_size_limit = 0
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{vmap}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
smtpd_tls_security_level = none
smtp_tls_security_level = none
{extra}
""".format(queue=queue, data=data, hostname=self.hostname,
           domain=self.DOMAIN, lo=LOOPBACK, maillog=self.maillog, d=d,
           mail=self.mail, vmap=vmap, uid=self.uid, gid=self.gid,
           extra=self.postfix_extra)
        with open(os.path.join(etc, "main.cf"), "w") as f:
            f.write(main)
        self._postfix = [postfix, "-c", etc]
        # postfix prints start-up errors only to a terminal: use script(1).
        p = run([need_tool("script"), "-qec",
                 "%s -c %s start" % (postfix, etc), "/dev/null"], timeout=60)
        self._postfix_up = True
        if p.returncode != 0:
            raise HarnessError("postfix start failed (%d):\n%s%s\n%s" % (
                p.returncode, p.stdout, p.stderr, self._maillog_tail()))
        try:
            for port in self.smtp_ports.values():
                wait_port(port, LOOPBACK, 30)
            # the first smtpd must answer with its banner
            with socket.create_connection((LOOPBACK, self.smtp_port),
                                          timeout=30) as s:
                banner = s.makefile("rb").readline()
                if not banner.startswith(b"220 "):
                    raise HarnessError("postfix banner: %r" % banner)
                s.sendall(b"QUIT\r\n")
        except (HarnessError, OSError) as e:
            raise HarnessError("postfix did not come up: %s\n%s" %
                               (e, self._maillog_tail()))

    def _maillog_tail(self):
        try:
            with open(self.maillog) as f:
                return f.read()[-4000:]
        except (OSError, AttributeError):
            return "(no maillog)"

    def _postfix_master_pid(self):
        try:
            with open(os.path.join(self.postfix_dir, "queue", "pid",
                                   "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _stop_postfix(self):
        if not self._postfix_up:
            return
        self._postfix_up = False
        pid = self._postfix_master_pid()
        try:
            run(self._postfix + ["stop"], timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if pid:
            def gone():
                try:
                    os.kill(pid, 0)
                    # a zombie is gone for our purposes
                    with open("/proc/%d/stat" % pid) as f:
                        return f.read().split()[2] == "Z"
                except (ProcessLookupError, FileNotFoundError):
                    return True
            try:
                wait_for(gone, 20, 0.05, "postfix master to exit")
            except HarnessError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- Dovecot
    def _start_dovecot(self):
        dovecot = need_tool("dovecot")
        d = os.path.join(self.dir, "dovecot")
        base = os.path.join(d, "run")
        state = os.path.join(d, "state")
        for p in (d, base, state):
            os.makedirs(p, mode=0o755, exist_ok=True)
        passwd = os.path.join(d, "passwd")
        with open(passwd, "w") as f:
            for u, pw in self.users.items():
                f.write("%s:{PLAIN}%s:%d:%d::%s\n" % (
                    u, pw, self.uid, self.gid, self.maildir(u)))
        os.chmod(passwd, 0o644)
        self.dovecot_log = os.path.join(d, "dovecot.log")
        listeners = {"plain": {}}
        listeners.update(self.dovecot_listeners)
        ports = free_ports(2 * len(listeners))
        imap_l, pop3_l = [], []
        for i, (name, opts) in enumerate(listeners.items()):
            ip, pp = ports[2 * i], ports[2 * i + 1]
            self.imap_ports[name] = ip
            self.pop3_ports[name] = pp
            extra = "".join("    %s = %s\n" % kv for kv in opts.items())
            imap_l.append("  inet_listener imap_%s {\n    address = %s\n"
                          "    port = %d\n%s  }\n" % (name, LOOPBACK, ip,
                                                        extra))
            pop3_l.append("  inet_listener pop3_%s {\n    address = %s\n"
                          "    port = %d\n%s  }\n" % (name, LOOPBACK, pp,
                                                        extra))
        ssl_conf = "ssl = %s\n" % self.dovecot_ssl
        if self.dovecot_ssl != "no":
            pair = certs().server_ecdsa
            ssl_conf += "ssl_cert = <%s\nssl_key = <%s\n" % (pair.chain,
                                                            pair.key)
        conf = """\
instance_name = mtd-%(tag)s
base_dir = %(base)s
state_dir = %(state)s
protocols = imap pop3
listen = %(lo)s
log_path = %(log)s
info_log_path = %(log)s
%(ssl)s
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~
mail_uid = %(uid)d
mail_gid = %(gid)d
first_valid_uid = 1
first_valid_gid = 1
haproxy_trusted_networks = 127.0.0.0/8
login_trusted_networks =
pop3_uidl_format = %%08Xu%%08Xv
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%n %(passwd)s
}
userdb {
  driver = passwd-file
  args = username_format=%%n %(passwd)s
}
service imap-login {
%(imap)s  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
%(pop3)s  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    port = 0
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0600
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
%(extra)s
""" % {"tag": os.path.basename(self.dir), "base": base, "state": state,
       "lo": LOOPBACK, "log": self.dovecot_log, "ssl": ssl_conf,
       "uid": self.uid, "gid": self.gid, "passwd": passwd,
       "imap": "".join(imap_l), "pop3": "".join(pop3_l),
       "extra": self.dovecot_extra}
        self.dovecot_conf = os.path.join(d, "dovecot.conf")
        with open(self.dovecot_conf, "w") as f:
            f.write(conf)
        self._dovecot_out = open(os.path.join(d, "stdout.log"), "wb")
        self.dovecot_proc = subprocess.Popen(
            [dovecot, "-F", "-c", self.dovecot_conf],
            stdin=subprocess.DEVNULL, stdout=self._dovecot_out,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for port in list(self.imap_ports.values()) + list(
                    self.pop3_ports.values()):
                wait_port(port, LOOPBACK, 30, self.dovecot_proc)
        except HarnessError as e:
            raise HarnessError("dovecot did not come up: %s\n%s" %
                               (e, self._dovecot_tail()))

    def _dovecot_tail(self):
        out = []
        for p in (self.dovecot_log,
                  os.path.join(os.path.dirname(self.dovecot_log),
                               "stdout.log")):
            try:
                with open(p) as f:
                    out.append(f.read()[-4000:])
            except OSError:
                pass
        return "\n".join(out)

    def _stop_dovecot(self):
        p = self.dovecot_proc
        if p is None:
            return
        self.dovecot_proc = None
        stop_process(p, signal.SIGTERM, 20)
        # its children (login, auth, imap) share the session: make sure none
        # outlives the test
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._dovecot_out.close()

    def stop(self):
        try:
            self._stop_postfix()
        finally:
            self._stop_dovecot()
            if self._exit_hook:
                self._exit_hook.cancel()
                self._exit_hook = None

    # -- mail
    def messages(self, user):
        """Paths of the messages delivered to user (new/ and cur/)."""
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(user), sub)
            try:
                out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
            except FileNotFoundError:
                pass
        return out

    def find_message(self, user, token):
        if isinstance(token, str):
            token = token.encode()
        for p in self.messages(user):
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError:     # moved new/ -> cur/ meanwhile
                continue
            if token in data:
                return data
        return None

    def wait_delivered(self, user, token, timeout=30):
        """Wait until a message containing token is in user's Maildir;
        return its bytes."""
        try:
            return wait_for(lambda: self.find_message(user, token),
                            timeout, 0.05,
                            "delivery of %r to %s" % (token, user))
        except HarnessError as e:
            raise HarnessError("%s\n--- maillog:\n%s" %
                               (e, self._maillog_tail()))


_test_certs = certs
