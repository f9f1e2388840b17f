"""`report` from an operator's laptop. The Kubernetes API reached through `kubectl proxy` (an http
URL on loopback, no token: the fake API in --plain-http mode counts any Authorization header it
gets) or through a kubeconfig's current context (certificate-authority-data and a token; a
tokenFile; an exec plugin run without a shell, with the entry's env and KUBERNETES_EXEC_INFO, its
ExecCredential's status.token sent). The fake API checks the token: a wrong one in the kubeconfig
fails. Refused with a message naming the key: http to a non-loopback address,
insecure-skip-tls-verify, client certificates. Each answer is checked against the two aws-node
pods the fake API serves and the two ipamD answers this test writes. AWS credentials from the
shared files: AWS_PROFILE with role_arn + source_profile makes one STS AssumeRole signed with the
source profile's keys (the STS stand-in checks it with botocore), then DescribeSubnets is signed
with the assumed credentials in the profile's region (the EC2 stand-in knows only those); a
profile with static keys signs with them; an SSO profile and an unknown profile are refused naming
the key or the profile. HOME is a temporary directory: the operator's own files are never read.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

BIN = os.environ["CMH_BIN"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]

with open(os.path.join(DATA, "ipamd", "cni_test1.data"), encoding="utf-8") as f:
    BODY = f.read().encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


# Two nodes' ipamD on 127.89.0.1 and .2, the same port (IPAMD_METRICS_PORT is one port).
first = ThreadingHTTPServer(("127.89.0.1", 0), Handler)
PORT = first.server_address[1]
servers = [first, ThreadingHTTPServer(("127.89.0.2", PORT), Handler)]
for s in servers:
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()

tmp = tempfile.mkdtemp(prefix="cmh-laptop-")
HOME = os.path.join(tmp, "home")
os.makedirs(os.path.join(HOME, ".kube"))


class Api:
    def __init__(self, plain):
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
             os.path.join(tmp, "token-%d" % plain), "--lifetime", "120"]
            + (["--plain-http"] if plain else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        m = re.search(r"port=(\d+) ca=(\S+)", self.proc.stdout.readline())
        self.port, self.ca = m.group(1), m.group(2)
        self.cmd("add aws-node-a node-a 127.89.0.1")
        self.cmd("add aws-node-b node-b 127.89.0.2")

    def cmd(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stats(self):
        a = self.cmd("stats")
        return json.loads(a[3:]) if a.startswith("OK ") else {}

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def report(extra):
    env = {"PATH": "/usr/bin:/bin", "HOME": HOME, "TMPDIR": tmp, "AWS_CLUSTER_ID": "laptop",
           "IPAMD_METRICS_PORT": str(PORT), "SCRAPE_MODE": "direct", "SCRAPE_TIMEOUT": "2",
           "SUBNET_METRICS": "false", "REPORT_MAX_UTILIZATION": "100"}
    env.update(extra)
    p = subprocess.run([BIN, "report", "--json"], env=env, capture_output=True, text=True,
                       timeout=90)
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = {}
    return p, doc


def nodes(doc):
    return sorted(n.get("node") for n in doc.get("nodes", []))


def kubeconfig(path, server, cluster_extra, user):
    with open(path, "w") as f:
        f.write("apiVersion: v1\nkind: Config\ncurrent-context: laptop\n"
                "contexts:\n- name: other\n  context: {cluster: nowhere, user: nobody}\n"
                "- name: laptop\n  context:\n    cluster: eks\n    user: me\n"
                "clusters:\n- name: eks\n  cluster:\n    server: %s\n%s"
                "users:\n- name: me\n  user:\n%s" % (server, cluster_extra, user))


WANT = ["node-a", "node-b"]
apis = []
try:
    # kubectl proxy: plain http on loopback, no token.
    plain = Api(True)
    apis.append(plain)
    p, doc = report({"K8S_API_URL": "http://127.0.0.1:%s/" % plain.port})
    st = plain.stats()
    check("kubectl proxy URL: exit 0, both pods' nodes", p.returncode == 0 and nodes(doc) == WANT,
          (p.returncode, nodes(doc), p.stderr[-400:]))
    check("kubectl proxy URL: the pods were listed, no Authorization header sent",
          st.get("lists", 0) >= 1 and st.get("plain_with_auth", 0) == 0, st)
    before = plain.stats().get("proxy_requests", 0)
    p, doc = report({"K8S_API_URL": "http://127.0.0.1:%s" % plain.port, "SCRAPE_MODE": "proxy"})
    st = plain.stats()
    check("kubectl proxy URL, SCRAPE_MODE=proxy: both nodes scraped through the pods proxy",
          p.returncode == 0 and nodes(doc) == WANT and st.get("proxy_requests", 0) - before == 2
          and st.get("plain_with_auth", 0) == 0 and st.get("proxy_unauthorized", 0) == 0,
          (p.returncode, nodes(doc), st, p.stderr[-400:]))
    p, _ = report({"K8S_API_URL": "http://10.0.0.1:8001"})
    check("K8S_API_URL http to a non-loopback address: exit 2, says loopback",
          p.returncode == 2 and "loopback" in p.stderr, (p.returncode, p.stderr[-300:]))

    # A kubeconfig (~/.kube/config) with the CA inline and a token.
    api = Api(False)
    apis.append(api)
    with open(api.ca, "rb") as f:
        ca_b64 = base64.b64encode(f.read()).decode()
    server = "https://127.0.0.1:%s" % api.port
    cfg = os.path.join(HOME, ".kube", "config")
    kubeconfig(cfg, server, "    certificate-authority-data: %s\n" % ca_b64, "    token: token-0\n")
    p, doc = report({})
    st = api.stats()
    check("~/.kube/config with a token: exit 0, both pods' nodes",
          p.returncode == 0 and nodes(doc) == WANT, (p.returncode, nodes(doc), p.stderr[-400:]))
    check("~/.kube/config: the token was the one sent", "token-0" in st.get("tokens_seen", [])
          and st.get("unauthorized", 1) == 0, st)
    before = api.stats().get("proxy_requests", 0)
    p, doc = report({"SCRAPE_MODE": "proxy"})
    st = api.stats()
    check("~/.kube/config, SCRAPE_MODE=proxy: both nodes through the pods proxy, with the token",
          p.returncode == 0 and nodes(doc) == WANT and st.get("proxy_requests", 0) - before == 2
          and st.get("proxy_unauthorized", 0) == 0, (p.returncode, nodes(doc), st, p.stderr[-400:]))
    check("the private copies of the token and CA are removed afterwards",
          not [d for d in os.listdir(tmp) if d.startswith("cmh-report-")], os.listdir(tmp))
    kubeconfig(cfg, server, "    certificate-authority-data: %s\n" % ca_b64, "    token: wrong\n")
    p, _ = report({})
    check("a token the API refuses: exit 1 (the token matters)", p.returncode == 1
          and api.stats().get("unauthorized", 0) >= 1, (p.returncode, p.stderr[-300:]))

    # KUBECONFIG elsewhere, CA by path, tokenFile relative to the kubeconfig's directory.
    kdir = os.path.join(tmp, "kc")
    os.makedirs(kdir)
    with open(os.path.join(kdir, "tok"), "w") as f:
        f.write("token-0\n")
    kc2 = os.path.join(kdir, "config")
    kubeconfig(kc2, server, "    certificate-authority: %s\n" % api.ca, "    tokenFile: tok\n")
    p, doc = report({"KUBECONFIG": os.path.join(tmp, "missing") + ":" + kc2})
    check("KUBECONFIG (first existing file), tokenFile: exit 0, both nodes",
          p.returncode == 0 and nodes(doc) == WANT, (p.returncode, nodes(doc), p.stderr[-400:]))

    # An exec plugin, as `aws eks update-kubeconfig` writes: argv without a shell, env, and
    # KUBERNETES_EXEC_INFO; the plugin records what it got.
    seen = os.path.join(tmp, "plugin-seen.json")
    plugin = os.path.join(kdir, "plugin.py")
    with open(plugin, "w") as f:
        f.write("#!/usr/bin/python3\nimport json, os, sys\n"
                "json.dump({'argv': sys.argv[1:], 'mark': os.environ.get('PLUGIN_MARK'),\n"
                "           'info': os.environ.get('KUBERNETES_EXEC_INFO')}, open(%r, 'w'))\n"
                "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',\n"
                "                  'kind': 'ExecCredential', 'status': {'token': sys.argv[-1]}}))\n"
                % seen)
    os.chmod(plugin, 0o755)
    exec_user = ("    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n"
                 "      command: ./plugin.py\n      args: [eks, get-token, '$HOME; x', token-0]\n"
                 "      env:\n      - name: PLUGIN_MARK\n        value: from-kubeconfig\n")
    kubeconfig(kc2, server, "    certificate-authority-data: %s\n" % ca_b64, exec_user)
    p, doc = report({"KUBECONFIG": kc2, "PLUGIN_MARK": "from-environment"})
    got = json.load(open(seen)) if os.path.exists(seen) else {}
    check("exec plugin: exit 0, both nodes", p.returncode == 0 and nodes(doc) == WANT,
          (p.returncode, nodes(doc), p.stderr[-400:]))
    check("exec plugin: argv as written (no shell), the entry's env wins, KUBERNETES_EXEC_INFO",
          got.get("argv") == ["eks", "get-token", "$HOME; x", "token-0"]
          and got.get("mark") == "from-kubeconfig"
          and json.loads(got.get("info") or "{}").get("kind") == "ExecCredential", got)
    with open(plugin, "a") as f:
        f.write("sys.exit(3)\n")
    p, _ = report({"KUBECONFIG": kc2})
    check("exec plugin failing: refused, names the plugin and its status",
          p.returncode in (1, 2) and "exit status 3" in p.stderr, (p.returncode, p.stderr[-300:]))

    # Refused with the key named.
    for extra, user, key in (
            ("    insecure-skip-tls-verify: true\n", "    token: token-0\n",
             "insecure-skip-tls-verify"),
            ("    certificate-authority-data: %s\n" % ca_b64,
             "    client-certificate-data: AAAA\n    client-key-data: AAAA\n",
             "client-certificate-data")):
        kubeconfig(kc2, server, extra, user)
        p, _ = report({"KUBECONFIG": kc2})
        check("kubeconfig with %s: refused, exit 2, key named" % key,
              p.returncode == 2 and key in p.stderr, (p.returncode, p.stderr[-300:]))
    kubeconfig(kc2, "http://10.1.2.3:80", "", "    token: token-0\n")
    p, _ = report({"KUBECONFIG": kc2})
    check("kubeconfig server http to a non-loopback address: refused, exit 2",
          p.returncode == 2 and "loopback" in p.stderr, (p.returncode, p.stderr[-300:]))
    os.unlink(cfg)
    p, _ = report({})
    check("no pod, no K8S_API_URL, no kubeconfig: exit 2, says what is missing",
          p.returncode == 2 and "kubeconfig" in p.stderr, (p.returncode, p.stderr[-300:]))

    # AWS from the shared files: AWS_PROFILE=ops assumes a role with the keys of its
    # source_profile (STS stand-in: botocore checks the signature with the source keys), then the
    # assumed credentials sign DescribeSubnets (EC2 stand-in: it knows only those). The region
    # comes from the profile. The Kubernetes API is the kubectl proxy one from above.
    aws = os.path.join(HOME, ".aws")
    os.makedirs(aws)
    role = "arn:aws:iam::111122223333:role/cni-report"
    with open(os.path.join(aws, "credentials"), "w") as f:
        f.write("# operator keys\n[laptop-keys]\naws_access_key_id = AKIDSOURCE\n"
                "aws_secret_access_key = source-secret\n")
    with open(os.path.join(aws, "config"), "w") as f:
        f.write("[default]\nregion = eu-west-1\n\n[profile  ops]\nrole_arn = %s\n"
                "source_profile = laptop-keys\nregion = us-west-2\nrole_session_name = laptop\n"
                "s3 =\n    max_concurrent_requests = 4\n"
                "[profile sso]\nsso_session = corp\n[profile plain]\nregion = us-west-2\n"
                "aws_access_key_id = AKIDPLAIN\naws_secret_access_key = plain-secret\n" % role)
    truth = os.path.join(tmp, "truth.json")
    with open(truth, "w") as f:
        json.dump({"subnets": [{"SubnetId": "subnet-0000a001", "CidrBlock": "127.89.0.0/29",
                                "AvailabilityZone": "us-west-2a",
                                "AvailableIpAddressCount": 321}]}, f)

    def peer(argv):
        pr = subprocess.Popen(["/usr/bin/python3"] + argv, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        peers.append(pr)
        return pr.stdout.readline()

    peers = []
    line = peer([os.path.join(SRC, "test/sim/sts_standin.py"), "--key", "AKIDSOURCE:source-secret",
                 "--region", "us-west-2", "--role", role, "--issue",
                 "AKIDASSUMED:assumed-secret:assumed-token", "--ca-out",
                 os.path.join(tmp, "sts-ca.pem"), "--lifetime", "120"])
    sts_port, sts_ca = re.search(r"https=(\d+) ca=(\S+)", line).groups()
    ec2_urls = []
    for key in ("AKIDASSUMED:assumed-secret:assumed-token", "AKIDPLAIN:plain-secret"):
        line = peer([os.path.join(SRC, "test/sim/ec2_standin.py"), "--key", key, "--region",
                     "us-west-2", "--truth", truth, "--lifetime", "120"])
        ec2_urls.append("http://127.0.0.1:" + re.search(r"http=(\d+)", line).group(1))

    def stats(url, ca=None):
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=ca) if ca else None
        with urllib.request.urlopen(url + "/stats", timeout=10, context=ctx) as r:
            return json.loads(r.read())

    def aws_report(profile, ec2_url):
        return report({"K8S_API_URL": "http://127.0.0.1:%s" % plain.port, "AWS_PROFILE": profile,
                       "SUBNET_METRICS": "true", "SUBNET_IDS": "subnet-0000a001",
                       "AWS_ENDPOINT_URL_EC2": ec2_url,
                       "AWS_ENDPOINT_URL_STS": "https://127.0.0.1:%s" % sts_port,
                       "AWS_CA_BUNDLE": sts_ca, "AWS_EC2_METADATA_DISABLED": "true"})

    p, doc = aws_report("ops", ec2_urls[0])
    sts = stats("https://127.0.0.1:%s" % sts_port, sts_ca)
    ec2 = stats(ec2_urls[0])
    subnets = {s.get("subnet"): s for s in doc.get("subnets", [])}
    check("AWS_PROFILE with role_arn + source_profile: exit 0, the subnet's EC2 truth",
          p.returncode == 0 and subnets.get("subnet-0000a001", {}).get("free_ips") == 321,
          (p.returncode, doc.get("subnets"), p.stderr[-500:]))
    check("STS saw one AssumeRole of the profile's role, signed with the source profile's keys",
          sts["assumed"] == 1 and sts["bad_signature"] == 0 and sts["invalid"] == 0
          and sts["calls"] == [{"RoleArn": role, "RoleSessionName": "laptop", "key": "AKIDSOURCE"}],
          sts)
    check("EC2 saw DescribeSubnets signed with the assumed credentials, in the profile's region",
          ec2["requests"] >= 1 and ec2["bad_signature"] == 0 and ec2["invalid"] == 0, ec2)

    p, doc = aws_report("plain", ec2_urls[1])
    ec2 = stats(ec2_urls[1])
    check("AWS_PROFILE with static keys: exit 0, signed with them, no STS call",
          p.returncode == 0 and ec2["requests"] >= 1 and ec2["bad_signature"] == 0
          and stats("https://127.0.0.1:%s" % sts_port, sts_ca)["requests"] == 1,
          (p.returncode, ec2, p.stderr[-400:]))
    for prof, words in (("sso", "sso_session"), ("nope", "nope")):
        p, _ = aws_report(prof, ec2_urls[1])
        check("AWS_PROFILE=%s: refused, exit 2, names %s" % (prof, words),
              p.returncode == 2 and words in p.stderr, (p.returncode, p.stderr[-400:]))
finally:
    for pr in globals().get("peers", []):
        pr.stdin.close()
        pr.wait(10)
    for a in apis:
        a.stop()
    for s in servers:
        s.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
finish()
