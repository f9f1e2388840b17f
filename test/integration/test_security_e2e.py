"""The daemon against adversarial peers on loopback, one scenario per run (the argument):

  ca          K8S_CA_FILE and AWS_CA_BUNDLE replace the system store: in a private mount namespace
              whose /etc/ssl/certs trusts only another CA (libcurl's built-in CA path and bundle),
              impostors with that CA's certificates for the Kubernetes API and STS get TLS
              handshakes and not one HTTP request: no Bearer token, no web identity token;
  proxy       with http_proxy, HTTPS_PROXY and ALL_PROXY set, IMDS, the container-credentials
              endpoint and the Kubernetes API are reached directly (the proxy sees none of them),
              while STS and CloudWatch go through the proxy (CONNECT), and NO_PROXY exempts them;
  redact      AWS_ENDPOINT_URL_STS with user:password@: the password is on neither /readyz nor
              any log line, the URL is shown with <redacted>;
  dumpable    the running daemon is not dumpable: as an unprivileged user its /proc/PID files
              belong to root (the kernel's mark of PR_SET_DUMPABLE 0), unlike another process of
              that user;
  readyz307   CloudWatch answering 307 to every request: /readyz turns 503 after 3 intervals
              without a success, naming it, and ready again once a request succeeds;
  probeflood  110 clients (idle, slow, connect-and-close, from one address or thirty): 30
              /healthz probes over 10 s are each answered 200 within 1 s, while the connection
              cap is hit.
"""
import json
import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import (check, finish, http, http_status, parse_metrics, read_events,  # noqa: E402
                     spawn_ipamd_sim, stop_proc)

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
sys.path.insert(0, os.path.join(SRC, "test", "sim"))
import testca  # noqa: E402

PY = "/usr/bin/python3"
TMP = tempfile.mkdtemp(prefix="cmh-security-")
BASE_ENV = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json", "PROMETHEUS_ADDRESS": "127.0.0.1",
            "PROMETHEUS_PORT": "0", "HTTP_TIMEOUT": "2", "SHUTDOWN_TIMEOUT": "2",
            "SCRAPE_JITTER": "0", "AWS_EC2_METADATA_DISABLED": "true"}
STS_OK = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAWEB1</AccessKeyId>
<SecretAccessKey>secretweb</SecretAccessKey><SessionToken>tokenweb</SessionToken>
<Expiration>{{EXP+3600}}</Expiration></Credentials></AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"""
procs = []


def spawn(args, env=None, **kw):
    p = subprocess.Popen(args, env=env, **kw)
    procs.append(p)
    return p


def start_daemon(env, prefix=()):
    """The daemon (behind prefix, e.g. unshare) and its own URL, read from its "listening" line."""
    d = spawn(list(prefix) + [BIN], env=dict(BASE_ENV, **env), stderr=subprocess.PIPE, text=True)
    ev = read_events(d, "listening", 15)
    return d, ("http://127.0.0.1:%d" % ev["port"] if ev else None)


def drain_log(d, into):
    """Keeps reading the daemon's log into a list (so it never blocks on a full pipe)."""
    def run():
        for line in d.stderr:
            into.append(line)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_for(pred, limit_s, step=0.2):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


class Listener:
    """A TCP listener on 127.0.0.1 (kernel-chosen port) that counts accepts and hands each
    connection to self.one on a thread of its own."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts += 1
            threading.Thread(target=self.one, args=(c,), daemon=True).start()


def read_head(s):
    """Bytes up to the end of an HTTP request head (or what came before EOF, at most 64 KiB)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class Impostor(Listener):
    """A TLS listener that records failed handshakes and every HTTP request head (with its body)
    it gets, answering 500."""

    def __init__(self, certdir):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(certdir, "srv.pem"), os.path.join(certdir, "srv.key"))
        self.handshake_failures, self.requests = 0, []
        super().__init__()

    def one(self, c):
        c.settimeout(5)
        try:
            s = self.ctx.wrap_socket(c, server_side=True)
        except (ssl.SSLError, OSError):
            with self.lock:
                self.handshake_failures += 1
            c.close()
            return
        try:
            data = read_head(s)
            if data:
                time.sleep(0.2)
                s.settimeout(0.3)
                try:
                    data += s.recv(65536)
                except (socket.timeout, ssl.SSLError, OSError):
                    pass
                with self.lock:
                    self.requests.append(data.decode("latin-1"))
                s.sendall(b"HTTP/1.1 500 Impostor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (ssl.SSLError, OSError):
            pass
        finally:
            s.close()


def private_store(certdir):
    """A directory to mount on /etc/ssl/certs holding only certdir's CA, as Debian lays it out:
    the bundle libcurl is built with (ca-certificates.crt) and the hashed CA path."""
    store = os.path.join(TMP, "store")
    os.makedirs(store, exist_ok=True)
    shutil.copy(os.path.join(certdir, "ca.pem"), os.path.join(store, "public-ca.pem"))
    shutil.copy(os.path.join(certdir, "ca.pem"), os.path.join(store, "ca-certificates.crt"))
    subprocess.run(["openssl", "rehash", store], check=True, capture_output=True, timeout=30)
    return store


def scenario_ca():
    incluster, public = os.path.join(TMP, "incluster"), os.path.join(TMP, "public")
    for d, cn in ((incluster, "in-cluster CA"), (public, "public CA")):
        os.makedirs(d)
        testca.make_certs(d, ca_cn=cn)
    store = private_store(public)
    ns = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/ssl/certs && exec "$@"', store]
    k8s, sts = Impostor(public), Impostor(public)
    # Precondition: in that namespace the system store (libcurl's defaults) trusts the impostor.
    r = subprocess.run(ns + ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                             "https://127.0.0.1:%d/" % k8s.port], capture_output=True, text=True,
                       timeout=30)
    check("precondition: in the private mount namespace libcurl's default store trusts the impostor",
          r.returncode == 0 and r.stdout == "500" and len(k8s.requests) == 1, (r.returncode, r.stdout, r.stderr))
    k8s.requests.clear()
    k8s.accepts = 0
    token = os.path.join(TMP, "sa-token")
    with open(token, "w") as f:
        f.write("sa-token-MARKER-1\n")
    wit = os.path.join(TMP, "web-identity")
    with open(wit, "w") as f:
        f.write("web-identity-MARKER-2\n")
    d, own = start_daemon({
        "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(k8s.port),
        "K8S_CA_FILE": os.path.join(incluster, "ca.pem"), "K8S_TOKEN_FILE": token,
        # The impostor never lists pods: rounds, and so credentials, start after this wait.
        "K8S_SYNC_TIMEOUT": "1",
        "USE_CLOUDWATCH": "true", "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "ca-test",
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/cmh", "AWS_WEB_IDENTITY_TOKEN_FILE": wit,
        "AWS_ENDPOINT_URL_STS": "https://127.0.0.1:%d/" % sts.port,
        "AWS_CA_BUNDLE": os.path.join(incluster, "ca.pem")}, prefix=ns)
    log = []
    drain_log(d, log)
    check("daemon started in the private mount namespace", own is not None)
    wait_for(lambda: k8s.accepts >= 2 and sts.accepts >= 1, 20)
    time.sleep(1)
    check("the Kubernetes API impostor got TLS handshakes (the daemon tried)", k8s.accepts >= 1, k8s.accepts)
    check("the STS impostor got TLS handshakes (the daemon tried)", sts.accepts >= 1, sts.accepts)
    check("K8S_CA_FILE is the only anchor: the impostor got no HTTP request, no Bearer token",
          k8s.requests == [], k8s.requests[:1])
    check("AWS_CA_BUNDLE replaces the system store: the STS impostor got no request, no web identity token",
          sts.requests == [], sts.requests[:1])
    st, body = http_status(own + "/readyz") if own else (None, "")
    check("/readyz 503, naming the failed certificate check", st == 503 and
          re.search(r"certificate|SSL|tls", body, re.I) is not None, (st, body))
    check("daemon stopped cleanly", stop_proc(d) == 0)


class Proxy(Listener):
    """An HTTP proxy that records every request line: a CONNECT is tunnelled to its target, a
    request in absolute form is answered 502."""

    def __init__(self):
        self.seen = []
        super().__init__()

    def one(self, c):
        c.settimeout(10)
        try:
            data = read_head(c)
            if b"\r\n\r\n" not in data:
                return
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            self.seen.append(line)
            method, target = line.split(" ")[:2]
            if method != "CONNECT":
                c.sendall(b"HTTP/1.1 502 Proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            up = socket.create_connection((host, int(port)), timeout=5)
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = data.split(b"\r\n\r\n", 1)[1]
            if rest:
                up.sendall(rest)
            self.pipe(c, up)
        except (OSError, ValueError):
            pass
        finally:
            c.close()

    @staticmethod
    def pipe(a, b):
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for key, _ in sel.select(1):
                try:
                    d = key.fileobj.recv(65536)
                except OSError:
                    d = b""
                if not d:
                    b.close()
                    return
                key.data.sendall(d)


def aws_standin():
    p = spawn([PY, os.path.join(SRC, "test/sim/aws_standin.py"), "--lifetime", "120"],
              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r"http=(\d+) https=(\d+) ca=(\S+)", p.stdout.readline())

    def cmd(c):
        p.stdin.write(json.dumps(c) + "\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())
    return cmd, int(m.group(1)), int(m.group(2)), m.group(3)


def scenario_proxy():
    proxy = Proxy()
    purl = "http://127.0.0.1:%d" % proxy.port
    proxy_env = {"http_proxy": purl, "HTTPS_PROXY": purl, "https_proxy": purl, "ALL_PROXY": purl,
                 "all_proxy": purl}
    sim = spawn_ipamd_sim(BUILD, DATA, TMP, 1, "127.153.0.1", seed=3)
    sim_line = sim.stdout.readline()
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(TMP, "targets")))
    # 1. Region from IMDS, credentials from STS (web identity), a Lease on the Kubernetes API.
    imds, imds_http, imds_https, imds_ca = aws_standin()
    imds({"cmd": "aemm"})
    k8s = spawn([PY, os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                 os.path.join(TMP, "k8s-token"), "--lifetime", "120"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    km = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", k8s.stdout.readline())
    wit = os.path.join(TMP, "web-identity")
    with open(wit, "w") as f:
        f.write("irsa.jwt\n")
    env = dict(proxy_env, SCRAPE_TARGETS=targets, USE_CLOUDWATCH="true", AWS_CLUSTER_ID="proxy",
               AWS_EC2_METADATA_DISABLED="false",
               AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:%d" % imds_http,
               AWS_ROLE_ARN="arn:aws:iam::123456789012:role/cmh", AWS_WEB_IDENTITY_TOKEN_FILE=wit,
               AWS_ENDPOINT_URL_STS="https://127.0.0.1:%d/" % imds_https, AWS_CA_BUNDLE=imds_ca,
               KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=km.group(1),
               K8S_CA_FILE=km.group(2), K8S_TOKEN_FILE=km.group(3), POD_NAME="proxy-test",
               LEADER_ELECTION="true", METRIC_UPDATE_INTERVAL="1",
               AWS_ENDPOINT_URL_CLOUDWATCH="http://127.0.0.1:9")  # never off the machine
    d, own = start_daemon(env)
    log = []
    drain_log(d, log)

    def imds_log():
        return imds({"cmd": "log"})["requests"]
    wait_for(lambda: any(r["listener"] == "https" for r in imds_log()) and
             any(r["listener"] == "http" and r["method"] == "GET" for r in imds_log()), 20)
    reqs = imds_log()
    k8s.stdin.write("stats\n")
    k8s.stdin.flush()
    kstats = json.loads(k8s.stdout.readline().split(" ", 1)[1])
    stop_proc(d)
    sts_port = "127.0.0.1:%d" % imds_https
    check("IMDS reached directly: token PUT and GETs at the metadata stand-in",
          any(r["listener"] == "http" and r["method"] == "PUT" for r in reqs) and
          any(r["listener"] == "http" and r["method"] == "GET" for r in reqs), reqs)
    check("the Kubernetes API reached directly (Lease requests at the fake API)",
          kstats.get("h1_connections", 0) + kstats.get("h2_connections", 0) > 0, kstats)
    check("STS honours HTTPS_PROXY: one CONNECT to it, and the request arrived through the tunnel",
          ("CONNECT %s HTTP/1.1" % sts_port) in proxy.seen and
          any(r["listener"] == "https" for r in reqs), (proxy.seen, reqs))
    check("the proxy saw nothing but CONNECTs to STS (no IMDS, no Kubernetes API)",
          proxy.seen and all(s == "CONNECT %s HTTP/1.1" % sts_port for s in proxy.seen), proxy.seen)

    # 2. Container credentials (Pod Identity style, loopback HTTP with a token), CloudWatch over HTTPS.
    creds, c_http, _, _ = aws_standin()
    body = json.dumps({"AccessKeyId": "ASIACONT1", "SecretAccessKey": "secretcont",
                       "Token": "tokencont", "Expiration": "{{EXP+3600}}"})
    creds({"cmd": "script", "exchanges": [{"method": "GET", "path": "/v1/credentials", "status": 200,
                                           "body": body, "headers": {"content-type": "application/json"}}] * 3})
    cw = spawn([PY, os.path.join(SRC, "test/sim/cloudwatch_standin.py"), "--key",
                "ASIACONT1:secretcont:tokencont", "--region", "us-west-2", "--tls", "--lifetime", "120"],
               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    cm = re.search(r"http=(\d+) https=(\d+) ca=(\S+)", cw.stdout.readline())
    cw_ctl = "http://127.0.0.1:%s" % cm.group(1)
    cw_env = dict(SCRAPE_TARGETS=targets, USE_CLOUDWATCH="true", AWS_REGION="us-west-2",
                  AWS_CLUSTER_ID="proxy", METRIC_UPDATE_INTERVAL="3600",
                  AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:%d/v1/credentials" % c_http,
                  AWS_CONTAINER_AUTHORIZATION_TOKEN="pod-identity-token",
                  AWS_ENDPOINT_URL_CLOUDWATCH="https://127.0.0.1:%s" % cm.group(2),
                  AWS_CA_BUNDLE=cm.group(3))
    for label, extra in (("through the proxy", proxy_env),
                         ("NO_PROXY=127.0.0.1", dict(proxy_env, NO_PROXY="127.0.0.1"))):
        proxy.seen.clear()
        http(cw_ctl + "/reset", "POST")
        d, own = start_daemon(dict(cw_env, **extra))
        log = []
        drain_log(d, log)
        n = wait_for(lambda: len(json.loads(http(cw_ctl + "/datums"))), 20)
        stop_proc(d)
        reqs = creds({"cmd": "log"})["requests"]
        creds({"cmd": "reset"})
        creds({"cmd": "script", "exchanges": [{"method": "GET", "path": "/v1/credentials", "status": 200,
                                               "body": body, "headers": {"content-type": "application/json"}}] * 3})
        check("%s: container credentials fetched directly, with the token" % label,
              any(r["path"] == "/v1/credentials" and r["headers"].get("authorization") == "pod-identity-token"
                  for r in reqs), reqs)
        check("%s: datums published to CloudWatch" % label, n > 0, n)
        cw_connect = "CONNECT 127.0.0.1:%s HTTP/1.1" % cm.group(2)
        if extra.get("NO_PROXY"):
            check("NO_PROXY=127.0.0.1: the proxy saw nothing", proxy.seen == [], proxy.seen)
        else:
            check("CloudWatch honours HTTPS_PROXY; the proxy saw only CONNECTs to it",
                  proxy.seen and all(s == cw_connect for s in proxy.seen), proxy.seen)
    for p in (k8s, cw):
        p.stdin.close()
    try:
        http("http://" + re.search(r"control=(\S+)", sim_line).group(1) + "/quit", "POST")
    except Exception:
        pass


def scenario_redact():
    wit = os.path.join(TMP, "web-identity")
    with open(wit, "w") as f:
        f.write("irsa.jwt\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, never listening: connections are refused
    d, own = start_daemon({"SCRAPE_TARGETS": "n=127.0.0.1:%d" % port, "USE_CLOUDWATCH": "true",
                           "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "redact",
                           "AWS_VPC_K8S_CNI_LOGLEVEL": "debug",
                           "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/cmh",
                           "AWS_WEB_IDENTITY_TOKEN_FILE": wit,
                           "AWS_ENDPOINT_URL_STS": "https://stsuser:s3cr3tPW@127.0.0.1:%d/" % port})
    log = []
    drain_log(d, log)
    st, body = wait_for(lambda: (lambda r: r if "STS" in r[1] else None)(http_status(own + "/readyz")), 15) \
        or http_status(own + "/readyz")
    stop_proc(d)
    text = "".join(log)
    check("/readyz names the failing STS call, its URL shown as https://<redacted>@127.0.0.1...",
          st == 503 and "https://<redacted>@127.0.0.1:%d/" % port in body, (st, body))
    check("the password is not on /readyz", "s3cr3tPW" not in body, body)
    check("the log mentions the STS endpoint (redacted) and never the password",
          "<redacted>@127.0.0.1" in text and "s3cr3tPW" not in text and "stsuser" not in text,
          [l for l in log if "s3cr3tPW" in l or "stsuser" in l][:3])


def scenario_dumpable():
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    other = spawn(drop + ["sleep", "30"])
    d, own = start_daemon({"SCRAPE_TARGETS": "n=127.0.0.1:1", "USE_CLOUDWATCH": "false"}, prefix=drop)
    check("daemon started as uid 65534", own is not None)
    time.sleep(0.3)
    ctl = os.stat("/proc/%d/status" % other.pid).st_uid
    dm = os.stat("/proc/%d/status" % d.pid).st_uid
    status = open("/proc/%d/status" % d.pid).read()
    check("oracle: another process of uid 65534 owns its /proc files", ctl == 65534, ctl)
    check("the daemon runs as uid 65534", re.search(r"^Uid:\s+65534\b", status, re.M) is not None)
    check("the daemon is not dumpable: its /proc files belong to root", dm == 0, dm)
    other.kill()
    check("daemon stopped cleanly", stop_proc(d) == 0)


def scenario_readyz307():
    sim = spawn_ipamd_sim(BUILD, DATA, TMP, 1, "127.154.0.1", seed=4)
    sim_line = sim.stdout.readline()
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(TMP, "targets")))
    cw = spawn([PY, os.path.join(SRC, "test/sim/cloudwatch_standin.py"), "--key", "AKIDSTATIC:secretstatic",
                "--region", "us-west-2", "--lifetime", "120"],
               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    cw_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
    http(cw_url + "/faults", "POST", {"random": {"rate": 1.0, "kinds": ["307"], "seed": 1}})
    d, own = start_daemon({"SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "true", "AWS_REGION": "us-west-2",
                           "AWS_CLUSTER_ID": "r307", "AWS_ACCESS_KEY_ID": "AKIDSTATIC",
                           "AWS_SECRET_ACCESS_KEY": "secretstatic", "AWS_ENDPOINT_URL_CLOUDWATCH": cw_url,
                           "METRIC_UPDATE_INTERVAL": "1", "CW_BACKOFF_BASE": "100ms", "CW_BACKOFF_CAP": "1"})
    log = []
    drain_log(d, log)
    t0 = time.monotonic()
    first = wait_for(lambda: http_status(own + "/readyz")[0] == 200, 5)
    check("ready at first (rounds run, nothing has failed for long yet)", first)
    st, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http_status(own + "/readyz")), 12) \
        or http_status(own + "/readyz")
    took = time.monotonic() - t0
    faults = json.loads(http(cw_url + "/stats"))["faults"].get("307", 0)
    check("CloudWatch answered 307 (the stand-in's count)", faults > 0, faults)
    check("/readyz 503 after 3 intervals of failing, naming it",
          st == 503 and "no CloudWatch PutMetricData has succeeded for 3 intervals" in body and
          2.5 <= took <= 12, (st, body, took))
    http(cw_url + "/faults", "POST", {"clear": True})
    back = wait_for(lambda: http_status(own + "/readyz")[0] == 200, 10)
    n = len(json.loads(http(cw_url + "/datums")))
    check("ready again once CloudWatch accepts (datums received)", back and n > 0, (back, n))
    check("daemon stopped cleanly", stop_proc(d) == 0)
    cw.stdin.close()
    try:
        http("http://" + re.search(r"control=(\S+)", sim_line).group(1) + "/quit", "POST")
    except Exception:
        pass


class Flood:
    """Clients on a selector, each (kind, source address): "idle" connects and sends nothing,
    "slow" drips a request a byte every 200 ms, "churn" connects and closes at once; idle and slow
    clients reconnect as soon as their connection ends, churn ones 5 ms later (each still a few
    hundred connections a second: they load the accept path, the others hold the slots)."""

    def __init__(self, port, clients):
        self.port, self.clients = port, clients
        self.stop = threading.Event()
        self.connects = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self, sel, kind, src):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((src, 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        self.connects += 1
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE,
                      {"kind": kind, "src": src, "sent": 0, "next": time.monotonic()})

    def run(self):
        sel = selectors.DefaultSelector()
        for kind, src in self.clients:
            self.open(sel, kind, src)
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        later = []  # (when, kind, src): churn clients waiting to reconnect
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            for key, ev in sel.select(0.05):
                s, st = key.fileobj, key.data
                closed = False
                if ev & selectors.EVENT_READ:
                    try:
                        closed = s.recv(4096) == b""
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        closed = True
                if not closed and ev & selectors.EVENT_WRITE:
                    if st["kind"] == "churn":
                        closed = True
                    else:
                        sel.modify(s, selectors.EVENT_READ, st)
                if closed:
                    sel.unregister(s)
                    s.close()
                    if st["kind"] == "churn":
                        later.append((time.monotonic() + 0.005, st["kind"], st["src"]))
                    else:
                        self.open(sel, st["kind"], st["src"])
            now = time.monotonic()
            for item in [x for x in later if x[0] <= now]:
                later.remove(item)
                self.open(sel, item[1], item[2])
            for key in list(sel.get_map().values()):
                st = key.data
                if st["kind"] == "slow" and now >= st["next"] and st["sent"] < len(req) - 1:
                    try:
                        key.fileobj.send(req[st["sent"]:st["sent"] + 1])
                        st["sent"] += 1
                    except OSError:
                        pass
                    st["next"] = now + 0.2
        for key in list(sel.get_map().values()):
            key.fileobj.close()


def probe(url, timeout=1.0):
    t = time.monotonic()
    try:
        st, _ = http_status(url, timeout=timeout)
    except Exception as e:  # noqa: BLE001  (a refused or reset probe is a failed probe)
        return None, repr(e)
    return st, time.monotonic() - t


def scenario_probeflood():
    d, own = start_daemon({"SCRAPE_TARGETS": "n=127.0.0.1:1", "USE_CLOUDWATCH": "false",
                           "USE_PROMETHEUS": "true", "METRIC_UPDATE_INTERVAL": "3600"})
    log = []
    drain_log(d, log)
    port = int(own.rsplit(":", 1)[1])
    clients = ([("idle", "127.0.0.2")] * 40 + [("slow", "127.0.0.3")] * 30 +
               [("churn", "127.0.0.4")] * 10 + [("idle", "127.0.1.%d" % i) for i in range(1, 31)])
    flood = Flood(port, clients)
    time.sleep(1.0)
    results = []
    for _ in range(30):
        results.append(probe(own + "/healthz"))
        time.sleep(0.33)
    ready = probe(own + "/readyz")
    connects = flood.connects
    flood.stop.set()
    flood.thread.join(10)
    m = parse_metrics(http(own + "/metrics").decode())
    rejected = sum(v for k, v in m.items() if k.startswith("cni_metrics_helper_http_requests_rejected_total"))
    bad = [r for r in results if r[0] != 200 or not isinstance(r[1], float) or r[1] > 1.0]
    check("the flood hit the connection cap (connections closed to make room)", rejected > 64 and connects > 110,
          (rejected, connects))
    check("30 /healthz probes under the flood: each 200 within 1 s", len(results) == 30 and not bad, bad[:5])
    check("/readyz answered under the flood", ready[0] in (200, 503) and isinstance(ready[1], float)
          and ready[1] <= 1.0, ready)
    check("daemon stopped cleanly", stop_proc(d) == 0)


SCENARIOS = {"ca": scenario_ca, "proxy": scenario_proxy, "redact": scenario_redact,
             "dumpable": scenario_dumpable, "readyz307": scenario_readyz307,
             "probeflood": scenario_probeflood}

try:
    SCENARIOS[sys.argv[1]]()
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
    shutil.rmtree(TMP, ignore_errors=True)
finish()
