"""
The deployment files under examples/ and the installation:

  * every mailtlsd configuration in examples/ (and the one the Kubernetes
    ConfigMap carries) passes `mailtlsd -t`, with certificates, keys, CAs
    and ticket keys made by the test at the paths the file names;
  * the Kubernetes YAML parses (PyYAML) and holds what a Deployment,
    Service, Secret, ConfigMap and Certificate need, consistent with the
    configuration (ports, mounts, probes, names);
  * the Compose file is accepted by `docker-compose config`, and the
    Postfix and Dovecot configurations beside it by postconf and doveconf;
    it runs the image so that an empty certs/ gets a throw-away
    certificate (MAILTLSD_AUTO_CERT, a tmpfs /tmp), and the image's entry
    point, run here on the Compose configuration with no certificate
    files, makes every listener `cert = auto` and says so (the container
    test runs it in the image);
  * the systemd unit is sandboxed as documented and passes
    `systemd-analyze verify`;
  * `cmake --install` into a temporary prefix installs the binary, both man
    pages and the examples, and `man -l` renders the pages without warnings.

Missing tools (docker-compose, python3-yaml, man-db, systemd-analyze,
postconf, doveconf) are failures, never skips.
"""

import base64
import os
import re
import shutil
import unittest

import mtd
from mtd import HarnessError, Mailtlsd

try:
    import yaml
except ImportError:                 # reported by the tests that need it
    yaml = None

PATH_KEYS = ("cert", "key", "client_ca", "backend_ca", "ticket_key_file")
MAIL_PORTS = {465, 587, 993, 995, 143, 110}


def source_dir():
    return os.environ.get("MAILTLSD_SOURCE") or os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", ".."))


def examples(*parts):
    return os.path.join(source_dir(), "examples", *parts)


def read(path):
    with open(path) as f:
        return f.read()


def need_yaml():
    if yaml is None:
        raise HarnessError("PyYAML is missing: install Debian's python3-yaml")
    return yaml


def load_yaml(path):
    return [d for d in need_yaml().safe_load_all(read(path)) if d is not None]


def strip_comment(v):
    return re.split(r"\s[;#]", " " + v, 1)[0].strip()


def parse_conf(text):
    """{section: [(key, value, lineno)]} of a mailtlsd configuration."""
    out, sec = {}, None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            sec = m.group(1)
            out.setdefault(sec, [])
            continue
        m = re.match(r"^([A-Za-z_]+)\s*[=:]\s*(.*)$", s)
        if m and sec is not None:
            out[sec].append((m.group(1), strip_comment(m.group(2)), n))
    return out


def values(conf, key, section=None):
    return [v for sec, kvs in conf.items() if section in (None, sec)
            for k, v, _ in kvs if k == key]


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def is_mailtlsd_conf(path):
    """A *.conf whose first statement is a section title."""
    for line in read(path).splitlines():
        s = line.strip()
        if s and s[0] not in "#;":
            return s.startswith("[")
    return False


class Materialized:
    """A configuration text with every file it names replaced by one made
    here: one certificate/key pair of the test CA, the test CA for CAs, a
    fresh ticket key.  .paths lists the (key, original path) pairs."""

    def __init__(self, text, name="example"):
        self.dir = mtd.tempdir("mtd-ex-")
        c = mtd.certs()
        pair = c.server_ecdsa
        ticket = os.path.join(self.dir, "ticket.key")
        with open(ticket, "w") as f:
            f.write(base64.b64encode(os.urandom(64)).decode() + "\n")
        repl = {"cert": pair.chain, "key": pair.key, "client_ca": c.ca,
                "backend_ca": c.ca, "ticket_key_file": ticket}
        self.paths = []

        def sub(m):
            k, v = m.group(2), strip_comment(m.group(4))
            if k == "cert" and v == "auto":
                return m.group(0)
            self.paths.append((k, v))
            return "%s%s%s%s" % (m.group(1), k, m.group(3), repl[k])
        self.text = re.sub(r"(?m)^(\s*)(%s)(\s*[=:]\s*)(.*)$" %
                           "|".join(PATH_KEYS), sub, text)
        self.path = os.path.join(self.dir, name + ".conf")
        with open(self.path, "w") as f:
            f.write(self.text)

    def check(self, tc):
        rc, out = Mailtlsd.run_args(["-t", "-c", self.path])
        tc.assertEqual(rc, 0, "mailtlsd -t failed:\n%s\n--- config:\n%s" %
                       (out, self.text))
        for k, p in self.paths:
            tc.assertTrue(p.startswith("/"), "%s = %s is not absolute" %
                          (k, p))
        return out


# --------------------------------------------------------------------------

class ExampleConfigsPassCheck(unittest.TestCase):
    """mailtlsd -t on every configuration under examples/."""

    EXPECTED = {"quickstart.conf", "docker/mailtlsd.conf",
                "compose/mailtlsd/mailtlsd.conf", "systemd/mailtlsd.conf"}

    def confs(self):
        found = []
        for root, _, files in os.walk(examples()):
            for n in files:
                p = os.path.join(root, n)
                if n.endswith(".conf") and is_mailtlsd_conf(p):
                    found.append(os.path.relpath(p, examples()))
        return sorted(found)

    def test_every_example_config_passes_check(self):
        found = self.confs()
        self.assertTrue(self.EXPECTED <= set(found), found)
        for rel in found:
            with self.subTest(config=rel):
                m = Materialized(read(examples(rel)),
                                 rel.replace("/", "_")[:-5])
                m.check(self)

    def test_unprivileged_deployments_have_no_user_line(self):
        """The image and the unit start mailtlsd as its own user: a `user`
        line would be at best useless there (documented)."""
        for rel in ("docker/mailtlsd.conf", "compose/mailtlsd/mailtlsd.conf",
                    "systemd/mailtlsd.conf"):
            with self.subTest(config=rel):
                self.assertEqual(values(parse_conf(read(examples(rel))),
                                        "user"), [])

    def test_container_configs_cover_the_six_mail_ports(self):
        for rel in ("docker/mailtlsd.conf", "compose/mailtlsd/mailtlsd.conf"):
            with self.subTest(config=rel):
                conf = parse_conf(read(examples(rel)))
                ports = {port_of(a) for a in values(conf, "listen")}
                self.assertEqual(ports, MAIL_PORTS)
                self.assertEqual(set(values(conf, "proxy_protocol")), {"v2"})
                # the image's health check asks /metrics on loopback
                self.assertTrue(values(conf, "metrics", "global")[0]
                                .startswith("127.0.0.1:"))
                for p in values(conf, "cert") + values(conf, "key"):
                    self.assertTrue(p.startswith("/etc/ssl/mailtlsd/"), p)

    def test_systemd_config_listens_on_the_standard_ports(self):
        conf = parse_conf(read(examples("systemd", "mailtlsd.conf")))
        ports = {port_of(a) for a in values(conf, "listen")}
        self.assertEqual(ports, MAIL_PORTS | {25})
        self.assertEqual(values(conf, "require_tls", "smtp"), ["no"])


# --------------------------------------------------------------------------

class Kubernetes(unittest.TestCase):
    """examples/kubernetes: YAML that parses and fits together."""

    @classmethod
    def setUpClass(cls):
        cls.docs = {}
        d = examples("kubernetes")
        for n in sorted(os.listdir(d)):
            if n.endswith((".yaml", ".yml")):
                for doc in load_yaml(os.path.join(d, n)):
                    cls.docs.setdefault(doc["kind"], []).append(doc)

    def one(self, kind, name=None):
        docs = [d for d in self.docs.get(kind, [])
                if name is None or d["metadata"]["name"] == name]
        self.assertEqual(len(docs), 1, "%s %s: %r" % (kind, name, docs))
        d = docs[0]
        self.assertIn("apiVersion", d)
        if kind != "Kustomization":
            self.assertTrue(d["metadata"]["name"])
        return d

    def config_text(self):
        cm = self.one("ConfigMap")
        self.assertEqual(cm["apiVersion"], "v1")
        return cm["data"]["mailtlsd.conf"]

    def container(self):
        dep = self.one("Deployment")
        c = dep["spec"]["template"]["spec"]["containers"]
        self.assertEqual(len(c), 1)
        return dep, c[0]

    def test_configmap_config_passes_check(self):
        text = self.config_text()
        m = Materialized(text, "k8s")
        m.check(self)
        conf = parse_conf(text)
        self.assertTrue(values(conf, "ticket_key_file", "global"))
        self.assertEqual(values(conf, "user"), [])
        # several replicas: the ticket key is what lets them share sessions
        self.assertIn("ticket_key_file", dict(m.paths))

    def test_deployment(self):
        dep, c = self.container()
        self.assertEqual(dep["apiVersion"], "apps/v1")
        spec = dep["spec"]
        self.assertGreaterEqual(spec["replicas"], 2)
        labels = spec["template"]["metadata"]["labels"]
        for k, v in spec["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(k), v)
        pod = spec["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        self.assertTrue(c["image"])
        sc = c["securityContext"]
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertLessEqual(set(sc["capabilities"].get("add", [])),
                             {"NET_BIND_SERVICE"})
        for kind in ("requests", "limits"):
            self.assertIn("cpu", c["resources"][kind])
            self.assertIn("memory", c["resources"][kind])
        conf = parse_conf(self.config_text())
        # workers: not more event loops than the CPU limit allows
        cpu = str(c["resources"]["limits"]["cpu"])
        cpus = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        workers = values(conf, "workers", "global")
        self.assertTrue(workers and workers[0] != "auto")
        self.assertLessEqual(int(workers[0]), max(1, int(cpus + 0.999)))

        # probes point at ports the pod declares, /metrics at `metrics`
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            pr = c[probe]
            target = (pr.get("httpGet") or pr.get("tcpSocket"))["port"]
            self.assertIn(target, ports, probe)
            if "httpGet" in pr:
                self.assertEqual(pr["httpGet"]["path"], "/metrics")
                self.assertEqual(ports[target], port_of(values(
                    conf, "metrics", "global")[0]))
        # every listener's port is declared
        self.assertEqual({port_of(a) for a in values(conf, "listen")},
                         set(ports.values()) - {ports["metrics"]})

        # the config file is where args say, from the ConfigMap
        args = c["args"]
        conf_path = args[args.index("-c") + 1]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        by_path = {}
        for name, m in mounts.items():
            self.assertTrue(m.get("readOnly"), name)
            self.assertNotIn("subPath", m, "%s: subPath volumes are never "
                             "updated, the reloader would not see renewals"
                             % name)
            by_path[m["mountPath"].rstrip("/")] = vols[name]

        def volume_for(path):
            d = os.path.dirname(path)
            self.assertIn(d, by_path, "%s is not on a mounted volume" % path)
            return by_path[d]
        cm = volume_for(conf_path)
        self.assertEqual(cm["configMap"]["name"],
                         self.one("ConfigMap")["metadata"]["name"])
        self.assertEqual(os.path.basename(conf_path), "mailtlsd.conf")
        # certificates from the cert-manager Secret, ticket key from its own
        cert_secret = self.one("Certificate")["spec"]["secretName"]
        for k in ("cert", "key"):
            for p in values(conf, k):
                v = volume_for(p)
                self.assertEqual(v["secret"]["secretName"], cert_secret, p)
                self.assertIn(os.path.basename(p), ("tls.crt", "tls.key"))
        tk = values(conf, "ticket_key_file", "global")[0]
        v = volume_for(tk)
        sec = self.one("Secret", v["secret"]["secretName"])
        self.assertIn(os.path.basename(tk), sec.get("stringData", {}) or
                      sec.get("data", {}))
        # the grace period covers preStop and the drain
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        pre_s = int(pre[-1]) if pre[0] == "sleep" else 0
        st = values(conf, "shutdown_timeout", "global")[0]
        self.assertTrue(st.endswith("s"))
        self.assertGreater(pod["terminationGracePeriodSeconds"],
                           pre_s + int(st[:-1]))

    def test_service(self):
        svc = self.one("Service")
        self.assertEqual(svc["apiVersion"], "v1")
        spec = svc["spec"]
        self.assertEqual(spec["type"], "LoadBalancer")
        _, c = self.container()
        labels = self.one("Deployment")["spec"]["template"]["metadata"][
            "labels"]
        for k, v in spec["selector"].items():
            self.assertEqual(labels.get(k), v)
        names = {p["name"] for p in c["ports"]}
        self.assertEqual({p["port"] for p in spec["ports"]}, MAIL_PORTS)
        for p in spec["ports"]:
            self.assertIn(p["targetPort"], names, p)
            self.assertEqual(p.get("protocol", "TCP"), "TCP")
        # PROXY settings are documented for the common load balancers
        text = read(examples("kubernetes", "service.yaml"))
        for a in ("aws-load-balancer-proxy-protocol",
                  "do-loadbalancer-enable-proxy-protocol",
                  "hetzner.cloud/uses-proxyprotocol",
                  "externalTrafficPolicy"):
            self.assertIn(a, text)

    def test_secrets(self):
        sec = self.one("Secret", "mailtlsd-ticket-key")
        self.assertEqual(sec["apiVersion"], "v1")
        self.assertEqual(sec["type"], "Opaque")
        data = sec.get("stringData") or sec.get("data")
        self.assertIn("ticket.key", data)
        # The placeholder must never work: mailtlsd refuses to start on it.
        text = self.config_text()
        m = Materialized(text, "k8s-placeholder")
        tk = [p for k, p in m.paths if k == "ticket_key_file"]
        self.assertTrue(tk)
        bad = os.path.join(m.dir, "placeholder.key")
        with open(bad, "w") as f:
            f.write(data["ticket.key"])
        text = re.sub(r"(?m)^(\s*ticket_key_file\s*=\s*).*$",
                      lambda mm: mm.group(1) + bad, m.text)
        path = os.path.join(m.dir, "placeholder.conf")
        with open(path, "w") as f:
            f.write(text)
        rc, out = Mailtlsd.run_args(["-t", "-c", path])
        self.assertNotEqual(rc, 0, out)
        self.assertIn("ticket", out)

        cert = self.one("Certificate")
        self.assertTrue(cert["apiVersion"].startswith("cert-manager.io/"))
        self.assertTrue(cert["spec"]["secretName"])
        self.assertTrue(cert["spec"]["dnsNames"])
        self.assertIn("name", cert["spec"]["issuerRef"])

    def test_kustomization_lists_existing_files(self):
        k = self.one("Kustomization")
        for r in k["resources"]:
            self.assertTrue(os.path.isfile(examples("kubernetes", r)), r)


# --------------------------------------------------------------------------

class Compose(unittest.TestCase):
    """examples/compose: docker-compose accepts it; it fits its configs."""

    def test_docker_compose_config_accepts_it(self):
        dc = mtd.need_tool("docker-compose")
        d = examples("compose")
        p = mtd.run([dc, "--project-directory", d, "-f",
                     os.path.join(d, "compose.yaml"), "config"], timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        cfg = need_yaml().safe_load(p.stdout)
        self.assertEqual(set(cfg["services"]),
                         {"mailtlsd", "postfix", "dovecot"})
        self.assertNotRegex(p.stderr, r"(?i)warn|error", p.stderr)

    def test_compose_file_fits_the_configs(self):
        doc = load_yaml(examples("compose", "compose.yaml"))[0]
        svc = doc["services"]
        m = svc["mailtlsd"]
        conf = parse_conf(read(examples("compose", "mailtlsd",
                                        "mailtlsd.conf")))
        # published ports reach the listeners
        published = {}
        for p in m["ports"]:
            host, ctr = str(p).split(":")[-2:]
            published[int(host)] = int(ctr)
        self.assertEqual(set(published), MAIL_PORTS)
        self.assertEqual(set(published.values()),
                         {port_of(a) for a in values(conf, "listen")})
        # config and certificates come from the mounted volumes
        targets = [v.split(":")[1] for v in m["volumes"]]
        self.assertIn("/etc/mailtlsd", targets)
        for v in m["volumes"]:
            self.assertTrue(v.endswith(":ro"), v)
        for p in values(conf, "cert") + values(conf, "key"):
            self.assertIn(os.path.dirname(p), targets, p)
        # only mailtlsd is published; Postfix and Dovecot never
        for s in ("postfix", "dovecot"):
            self.assertNotIn("ports", svc[s])
        # the backends are the other services, by name (issue 14): no
        # fixed subnet, no fixed addresses
        backends = {a.rsplit(":", 1)[0] for a in values(conf, "backend")}
        self.assertEqual(backends, {"postfix", "dovecot"})
        for s in svc:
            self.assertNotIn("ipv4_address", str(svc[s].get("networks")))
        self.assertNotIn("ipam", str(doc.get("networks")))
        # PROXY toward both, trusted from the private network only
        self.assertEqual(set(values(conf, "proxy_protocol")), {"v2"})
        dconf = read(examples("compose", "dovecot", "dovecot.conf"))
        self.assertRegex(dconf, r"(?m)^haproxy_trusted_networks = 10.0.0.0/8 "
                         r"172.16.0.0/12 192.168.0.0/16$")
        self.assertGreaterEqual(len(re.findall(r"(?m)^\s*haproxy = yes$",
                                               dconf)), 2)
        mcf = read(examples("compose", "postfix", "master.cf"))
        self.assertIn("smtpd_upstream_proxy_protocol=haproxy", mcf)
        main = read(examples("compose", "postfix", "main.cf"))
        mynetworks = re.search(r"(?m)^mynetworks\s*=(.*)$", main).group(1)
        self.assertEqual(mynetworks.split(), ["127.0.0.0/8"],
                         "mailtlsd's network must not be in mynetworks")
        self.assertRegex(main, r"(?m)^smtpd_sasl_path = inet:dovecot:\d+$")
        # docker stop waits longer than the drain
        st = values(conf, "shutdown_timeout", "global")[0]
        self.assertGreater(int(m["stop_grace_period"].rstrip("s")),
                           int(st.rstrip("s")))
        self.assertEqual(m.get("stop_signal", "SIGTERM"), "SIGTERM")
        # no certificate yet: a throw-away one (docker/mailtlsd-entrypoint
        # writes the changed configuration to a tmpfs /tmp)
        env = m["environment"]
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        self.assertEqual(str(env["MAILTLSD_AUTO_CERT"]), "yes")
        self.assertIn("/tmp", m["tmpfs"])
        self.assertTrue(m["read_only"])
        docker = read(os.path.join(source_dir(), "Dockerfile"))
        self.assertRegex(docker, r'(?m)^ENTRYPOINT \["/usr/local/bin/'
                         r'mailtlsd-entrypoint"\]$')


class ComposeAutoCert(unittest.TestCase):
    """docker/mailtlsd-entrypoint on examples/compose's configuration, with
    this build's binary in place of /usr/sbin/mailtlsd and the certificate
    directory empty."""

    ENTRYPOINT = os.path.join(source_dir(), "docker", "mailtlsd-entrypoint")

    def setUp(self):
        self.dir = mtd.tempdir("mtd-ex-auto-")
        self.certdir = os.path.join(self.dir, "certs")
        os.mkdir(self.certdir)
        text = read(examples("compose", "mailtlsd", "mailtlsd.conf"))
        text = text.replace("/etc/ssl/mailtlsd/", self.certdir + "/")
        ports = iter(mtd.free_ports(8))
        text = re.sub(r"(?m)^(listen|metrics)\s*=.*$", lambda m: "%s = "
                      "127.0.0.1:%d" % (m.group(1), next(ports)), text)
        self.conf = os.path.join(self.dir, "mailtlsd.conf")
        with open(self.conf, "w") as f:
            f.write(text)
        self.text = text

    def run_entrypoint(self, auto):
        env = dict(os.environ, MAILTLSD_EXEC=mtd.mailtlsd_bin(),
                   TMPDIR=self.dir)
        env.pop("MAILTLSD_AUTO_CERT", None)
        if auto:
            env["MAILTLSD_AUTO_CERT"] = "yes"
        return mtd.run([self.ENTRYPOINT, "-t", "-c", self.conf], env=env,
                       timeout=60)

    def test_missing_certificates_become_cert_auto_and_the_log_says_so(self):
        p = self.run_entrypoint(True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        said = [l for l in p.stderr.splitlines()
                if l.startswith("mailtlsd-entrypoint: no certificate")]
        self.assertEqual(len(said), 1, p.stderr)
        self.assertIn("for mail.example.org", said[0])
        self.assertIn("fullchain.pem is missing", said[0])
        for sec in parse_conf(self.text):
            if sec != "global":
                self.assertIn(sec, said[0])
        auto = read(os.path.join(self.dir, "mailtlsd-auto-cert.conf"))
        conf = parse_conf(auto)
        self.assertEqual(set(values(conf, "cert")), {"auto"})
        self.assertEqual(values(conf, "key"), [])
        self.assertEqual(len(values(conf, "cert")),
                         len(values(conf, "listen")))
        # the mounted file is left as it was
        self.assertEqual(read(self.conf), self.text)

    def test_present_certificates_are_kept(self):
        pair = mtd.certs().server_ecdsa
        shutil.copy(pair.chain, os.path.join(self.certdir, "fullchain.pem"))
        shutil.copy(pair.key, os.path.join(self.certdir, "privkey.pem"))
        p = self.run_entrypoint(True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("mailtlsd-entrypoint", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(
            self.dir, "mailtlsd-auto-cert.conf")))

    def test_without_the_variable_a_missing_certificate_is_an_error(self):
        p = self.run_entrypoint(False)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("fullchain.pem", p.stdout + p.stderr)
        self.assertNotIn("mailtlsd-entrypoint", p.stderr)

    def test_postfix_and_dovecot_configs_parse(self):
        postconf = mtd.need_tool("postconf")
        d = mtd.tempdir("mtd-ex-postfix-")
        for n in ("main.cf", "master.cf"):
            shutil.copy(examples("compose", "postfix", n), d)
        for flag in ("-n", "-M"):
            p = mtd.run([postconf, "-c", d, flag], timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stderr.strip(), "", p.stderr)
        p = mtd.run([postconf, "-c", d, "-P", "10587/inet/"
                     "smtpd_upstream_proxy_protocol"], timeout=60)
        self.assertIn("haproxy", p.stdout, p.stderr)
        doveconf = mtd.need_tool("doveconf")
        p = mtd.run([doveconf, "-c", examples("compose", "dovecot",
                                              "dovecot.conf"), "-n"],
                    timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr.strip(), "", p.stderr)
        self.assertIn("haproxy = yes", p.stdout)


# --------------------------------------------------------------------------

class Systemd(unittest.TestCase):
    UNIT = examples("systemd", "mailtlsd.service")

    def unit(self):
        out = {}
        for line in read(self.UNIT).splitlines():
            m = re.match(r"^([A-Za-z]+)=(.*)$", line)
            if m:
                out.setdefault(m.group(1), []).append(m.group(2))
        return out

    def test_sandboxing_and_reload(self):
        u = self.unit()
        want = {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
                "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
                "ProtectHome": "yes", "PrivateTmp": "yes",
                "PrivateDevices": "yes", "User": "mailtlsd",
                "KillSignal": "SIGTERM"}
        for k, v in want.items():
            self.assertEqual(u.get(k), [v], k)
        self.assertEqual(u["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(u["ExecStart"],
                         ["/usr/sbin/mailtlsd -c /etc/mailtlsd/mailtlsd.conf"])
        # stop waits longer than the drain of the example config
        st = values(parse_conf(read(examples("systemd", "mailtlsd.conf"))),
                    "shutdown_timeout", "global")[0]
        self.assertGreater(int(u["TimeoutStopSec"][0].rstrip("s")),
                           int(st.rstrip("s")))

    def test_socket_unit_matches_the_listeners(self):
        """mailtlsd.socket offers exactly the example's listen addresses,
        written as in the config (an inherited socket is matched by
        address), and the service is Type=notify."""
        sock = read(examples("systemd", "mailtlsd.socket"))
        streams = re.findall(r"^ListenStream=(\S+)$", sock, re.M)
        conf = parse_conf(read(examples("systemd", "mailtlsd.conf")))
        self.assertEqual(sorted(streams), sorted(values(conf, "listen")))
        self.assertEqual(self.unit()["Type"], ["notify"])
        self.assertEqual(self.unit()["NotifyAccess"], ["all"])

    def test_systemd_analyze_verify(self):
        sa = mtd.need_tool("systemd-analyze")
        d = mtd.tempdir("mtd-ex-unit-")
        unit = os.path.join(d, "mailtlsd.service")
        # verify checks that the executables exist: point at this build
        with open(unit, "w") as f:
            f.write(read(self.UNIT).replace("/usr/sbin/mailtlsd",
                                            mtd.mailtlsd_bin()))
        sock = os.path.join(d, "mailtlsd.socket")
        shutil.copy(examples("systemd", "mailtlsd.socket"), sock)
        p = mtd.run([sa, "verify", "--man=no", sock, unit], timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # it reports unknown keys and bad values without failing
        self.assertEqual((p.stdout + p.stderr).strip(), "",
                         p.stdout + p.stderr)


# --------------------------------------------------------------------------

class Install(unittest.TestCase):
    """cmake --install into a temporary prefix."""

    @classmethod
    def setUpClass(cls):
        cls.build = os.path.dirname(mtd.mailtlsd_bin())
        if not os.path.isfile(os.path.join(cls.build, "cmake_install.cmake")):
            raise HarnessError("%s is not a CMake build directory" %
                               cls.build)
        cls.prefix = mtd.tempdir("mtd-prefix-")
        p = mtd.run([mtd.need_tool("cmake"), "--install", cls.build,
                     "--prefix", cls.prefix], timeout=300)
        if p.returncode != 0:
            raise HarnessError("cmake --install failed:\n%s%s" % (p.stdout,
                                                                 p.stderr))

    def test_binary_man_pages_and_examples_installed(self):
        b = os.path.join(self.prefix, "sbin", "mailtlsd")
        self.assertTrue(os.access(b, os.X_OK), b)
        p = mtd.run([b, "--version"], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        for page in ("man8/mailtlsd.8", "man5/mailtlsd.conf.5"):
            self.assertTrue(os.path.isfile(os.path.join(
                self.prefix, "share", "man", page)), page)
        ex = os.path.join(self.prefix, "share", "doc", "mailtlsd", "examples")
        for rel in ("quickstart.conf", "docker/mailtlsd.conf",
                    "systemd/mailtlsd.service", "systemd/mailtlsd.conf",
                    "compose/compose.yaml", "kubernetes/deployment.yaml"):
            self.assertTrue(os.path.isfile(os.path.join(ex, rel)), rel)
        # the installed example config checks out with the installed binary
        m = Materialized(read(os.path.join(ex, "systemd", "mailtlsd.conf")),
                         "installed")
        p = mtd.run([b, "-t", "-c", m.path], timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_man_renders_both_pages_without_warnings(self):
        man = mtd.need_tool("man")
        env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8",
                   MANWIDTH="80", MAN_KEEP_FORMATTING="")
        env.pop("MANPAGER", None)
        env.pop("PAGER", None)
        for page, title, sections in (
                ("man8/mailtlsd.8", "MAILTLSD(8)",
                 ("NAME", "SYNOPSIS", "DESCRIPTION", "SIGNALS",
                  "EXIT STATUS", "SEE ALSO")),
                ("man5/mailtlsd.conf.5", "MAILTLSD.CONF(5)",
                 ("NAME", "DESCRIPTION", "GLOBAL SETTINGS",
                  "LISTENER SETTINGS", "EXAMPLES", "SEE ALSO"))):
            with self.subTest(page=page):
                path = os.path.join(self.prefix, "share", "man", page)
                for warn in ([], ["--warnings=w"]):
                    p = mtd.run([man] + warn + ["-l", path], timeout=60,
                                env=env)
                    self.assertEqual(p.returncode, 0, p.stderr)
                    self.assertEqual(p.stderr, "", "man %s -l %s:\n%s" % (
                        " ".join(warn), page, p.stderr))
                    self.assertIn(title, p.stdout)
                    for s in sections:
                        self.assertRegex(p.stdout, r"(?m)^%s$" % s, s)
                # every key of the configuration is documented
                if page.endswith(".5"):
                    for key in ("user", "workers", "ticket_key_file",
                                "metrics", "listen", "protocol",
                                "client_tls", "require_tls", "backend",
                                "backend_tls", "cert", "proxy_protocol",
                                "accept_proxy", "max_connections"):
                        self.assertRegex(p.stdout, r"(?m)^\s+%s = " % key,
                                         key)


if __name__ == "__main__":
    unittest.main()
