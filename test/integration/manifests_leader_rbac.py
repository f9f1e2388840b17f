"""Leader election under the rendered RBAC, against the fake Kubernetes API enforcing it
(test/sim/fake_k8s_api.py --rbac: the rendered Roles, ClusterRoles and bindings authorize the
rendered ServiceAccount as the API server's RBAC authorizer would; the rendered Lease exists as if
applied). For the kustomize component (irsa + components/leader-election) and the chart
(leaderElection.enabled=true), it proves:
  - the daemon started with the rendered environment becomes leader through the shipped Lease and
    keeps renewing it, and none of its requests (pods list/watch, pods/proxy, Lease get/update) is
    refused;
  - a daemon pointed at another Lease (LEADER_ELECTION_LEASE_NAME=kube-controller-manager) is
    refused (403) and never leads, and that Lease is left as it was; the token cannot read, update,
    list or create any other Lease either;
  - without the shipped Lease the daemon cannot create one (no create is granted) and never leads:
    the Lease in the manifests is what makes the election work;
and, so the refusals are known to come from the resourceNames and nothing else, the same fake with
the Lease rule widened to every Lease (the grant before resourceNames) lets those requests through."""
import atexit
import copy
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import manifests_tools as mt  # noqa: E402
from testlib import check, finish, stop_proc  # noqa: E402

BIN = os.environ["CMH_BIN"]
SRC = os.environ["CMH_SOURCE_DIR"]
MAN = mt.MAN
WORK = tempfile.mkdtemp(prefix="cmh-leader-rbac-")
atexit.register(shutil.rmtree, WORK, True)
OTHER = "kube-controller-manager"


class Api:
    """One fake API server with the given rendered objects' RBAC."""

    def __init__(self, name, objs, subject):
        self.objs_file = os.path.join(WORK, name + ".json")
        with open(self.objs_file, "w") as f:
            json.dump(objs, f)
        self.token_file = os.path.join(WORK, name + ".token")
        self.p = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file", self.token_file,
             "--lifetime", "120", "--rbac", self.objs_file, "--rbac-subject", subject],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline()
        fields = dict(x.split("=", 1) for x in line.split()[1:])
        self.port, self.ca = fields["port"], fields["ca"]
        with open(self.token_file) as f:
            self.token = f.read().strip()
        self.ctx = ssl.create_default_context(cafile=self.ca)

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        return json.loads(out[3:]) if out.startswith("OK ") else out

    def request(self, method, path, body=None):
        """(status, parsed body) of a request with the service account's token."""
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + self.token,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def lease(self, ns, name):
        return self.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}")

    def close(self):
        self.p.stdin.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


class Daemon:
    """The daemon with the rendered Deployment's environment, pointed at api (loopback only)."""

    def __init__(self, objs, api, pod_name, **overrides):
        env = mt.daemon_env(objs, pod_name)
        env.update({"USE_CLOUDWATCH": "no", "PROMETHEUS_ADDRESS": "127.0.0.1",
                    "PROMETHEUS_PORT": "0", "LOG_FORMAT": "json", "AWS_EC2_METADATA_DISABLED": "true",
                    "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": api.port,
                    "K8S_CA_FILE": api.ca, "K8S_TOKEN_FILE": api.token_file, "AWS_REGION": "us-west-2",
                    "METRIC_UPDATE_INTERVAL": "1", "LEADER_ELECTION_RETRY_PERIOD": "300ms",
                    "LEADER_ELECTION_RENEW_DEADLINE": "1s", "LEADER_ELECTION_LEASE_DURATION": "2s"})
        env.update(overrides)
        self.env = env
        self.events, self.lock = [], threading.Lock()
        self.p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"msg": "non-json", "line": line}
            with self.lock:
                self.events.append(ev)

    def saw(self, msg):
        with self.lock:
            return [e for e in self.events if e.get("msg") == msg]

    def wait(self, msg, limit_s):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.saw(msg):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        stop_proc(self.p, timeout=20)


def rendered():
    d = os.path.join(WORK, "irsa-leader-election")
    os.makedirs(d)
    with open(os.path.join(d, "kustomization.yaml"), "w") as f:
        json.dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                   "resources": [os.path.relpath(os.path.join(MAN, "overlays", "irsa"), d)],
                   "components": [os.path.relpath(os.path.join(MAN, "components", "leader-election"), d)]}, f)
    return {"kustomize irsa + leader-election": mt.kustomize(d),
            "helm leaderElection.enabled": mt.helm_template(WORK, [{"image": {"registry": "registry.example/cmh"}, "leaderElection": {"enabled": True}}])}


def subject_of(objs):
    dep = mt.by_kind(objs, "Deployment")[0]
    return "%s:%s" % (dep["metadata"]["namespace"], dep["spec"]["template"]["spec"]["serviceAccountName"])


def lease_path(ns, name=""):
    return f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases" + (f"/{name}" if name else "")


def lease_rules(objs):
    return [r for role in mt.by_kind(objs, "Role") for r in role["rules"] if "leases" in r["resources"]]


def run_case(label, objs):
    subject = subject_of(objs)
    leases = mt.by_kind(objs, "Lease")
    if not check(f"{label}: one Lease rendered and a Lease rule by name", len(leases) == 1 and all(
            r.get("resourceNames") == [leases[0]["metadata"]["name"]] for r in lease_rules(objs)), leases):
        return
    ns, ours = leases[0]["metadata"]["namespace"], leases[0]["metadata"]["name"]

    # 1. With the rendered RBAC and the shipped Lease: leader, renewing, nothing refused.
    api = Api(label.replace(" ", "-"), objs, subject)
    api.cmd(f"lease {OTHER} kcm-0 15")
    api.cmd("add aws-node-a node-a 127.61.0.2")  # scraped directly (refused), then through the proxy
    other_before = api.cmd(f"getlease {OTHER} ns={ns}")
    d = Daemon(objs, api, "helper-a")
    d2 = None
    try:
        check(f"{label}: the daemon leads through the shipped Lease {ns}/{ours}",
              d.wait("leader: publishing", 15), d.events[-5:])
        time.sleep(2.0)  # several renewals (retry period 300 ms), scrapes, the pod watch
        st = api.cmd("stats")
        lease = api.cmd(f"getlease {ours} ns={ns}")
        check(f"{label}: the Lease is held by the daemon and renewed",
              lease["spec"].get("holderIdentity") == "helper-a"
              and int(lease["metadata"]["resourceVersion"]) > int(other_before["metadata"]["resourceVersion"]) + 2,
              lease)
        check(f"{label}: none of the daemon's requests is refused (pods list/watch, pods/proxy, Lease get/update)",
              st["forbidden"] == 0 and st["lists"] >= 1 and st["watches"] >= 1 and st["proxy_requests"] >= 1,
              st)
        check(f"{label}: the daemon stayed leader", not d.saw("not leader: not publishing"), d.events[-5:])

        # 2. Another Lease: refused, never led, left as it was.
        d2 = Daemon(objs, api, "helper-b", LEADER_ELECTION_LEASE_NAME=OTHER)
        time.sleep(2.0)
        st = api.cmd("stats")
        check(f"{label}: a daemon pointed at {OTHER} is refused (403) and never leads",
              f"get coordination.k8s.io/leases {ns}/{OTHER}" in st["forbidden_requests"]
              and not d2.saw("leader: publishing"), (st["forbidden_requests"], d2.events[-3:]))
        check(f"{label}: the {OTHER} Lease is untouched", api.cmd(f"getlease {OTHER} ns={ns}") == other_before,
              other_before)
        body = copy.deepcopy(other_before)
        body["spec"]["holderIdentity"] = "helper-b"
        refused = {
            f"get {OTHER}": api.request("GET", lease_path(ns, OTHER))[0],
            f"update {OTHER}": api.request("PUT", lease_path(ns, OTHER), body)[0],
            "list every Lease": api.request("GET", lease_path(ns))[0],
            "create a Lease": api.request("POST", lease_path(ns), {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "new", "namespace": ns}, "spec": {}})[0],
            f"get {ours} in another namespace": api.request("GET", lease_path("default", ours))[0],
        }
        check(f"{label}: the token cannot get, update, list or create any other Lease",
              set(refused.values()) == {403}, refused)
        check(f"{label}: ... while its own Lease answers", api.lease(ns, ours)[0] == 200)
    finally:
        d.stop()
        if d2:
            d2.stop()
        api.close()

    # 3. Without the shipped Lease: the create is refused, the daemon never leads.
    api = Api(label.replace(" ", "-") + "-nolease", [o for o in objs if o["kind"] != "Lease"], subject)
    d = Daemon(objs, api, "helper-c")
    try:
        time.sleep(2.0)
        st = api.cmd("stats")
        check(f"{label}: without the shipped Lease the daemon's create is refused and it never leads",
              f"create coordination.k8s.io/leases {ns}/" in st["forbidden_requests"]
              and not d.saw("leader: publishing"), (st["forbidden_requests"], d.events[-3:]))
    finally:
        d.stop()
        api.close()

    # 4. The oracle's own control: the Lease rule widened to every Lease lets the same requests in.
    wide = copy.deepcopy(objs)
    for r in lease_rules(wide):
        r.pop("resourceNames")
        r["verbs"] = ["get", "create", "update"]
    api = Api(label.replace(" ", "-") + "-wide", wide, subject)
    try:
        api.cmd(f"lease {OTHER} kcm-0 15")
        got = {"get": api.request("GET", lease_path(ns, OTHER))[0],
               "create": api.request("POST", lease_path(ns), {"metadata": {"name": "new"}, "spec": {}})[0]}
        check(f"{label}: control: with every Lease granted the same requests pass (so the 403s come from "
              "resourceNames)", got == {"get": 200, "create": 201}, got)
    finally:
        api.close()


for label, objs in rendered().items():
    run_case(label, objs)
finish()
