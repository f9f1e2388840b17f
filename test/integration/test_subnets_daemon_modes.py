"""The daemon's two ways of choosing subnets (issue 8), end to end: the ipamD simulator (6 nodes on
127.87.0.x), the fake Kubernetes API (aws-node pods, ENIConfigs), the EC2 stand-in (botocore
checks every signature and parameter), datums read from the daemon's log sink.

Custom networking (no SUBNET_IDS, in a cluster): the subnets holding a node's IP plus the one an
ENIConfig names are published; when listing ENIConfigs is forbidden (403, no RBAC) the daemon logs
a hint naming the RBAC component and keeps the previous list (the ENIConfig subnet stays); once the
list is allowed again and the ENIConfig is gone, its subnet drops out (the list is read before
every fetch).

SUBNET_IDS (one of the three ids deleted in EC2): the view is exactly the two that exist, the
deleted one is logged once over several fetches and counted on /metrics, ENIConfigs are never
read, and nodes outside the listed subnets count under AvailabilityZone "unknown" (per-AZ sums
equal the simulator's truth)."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, parse_metrics, read_events, spawn_ipamd_sim, stop_all, stop_proc  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
PY = "/usr/bin/python3"
NODES = 6
A1, B2, C3, D4 = "subnet-0000a001", "subnet-0000b002", "subnet-0000c003", "subnet-0000d004"
DELETED = "subnet-0000dead"
# Nodes 0-2 (127.87.0.1-3) in a1, nodes 3-5 (127.87.0.4-6) in b2; c3 holds no node (the pods'
# subnet of custom networking), d4 is nobody's.
SUBNETS = [
    {"SubnetId": A1, "CidrBlock": "127.87.0.0/30", "AvailabilityZone": "us-west-2a",
     "AvailableIpAddressCount": 40},
    {"SubnetId": B2, "CidrBlock": "127.87.0.4/30", "AvailabilityZone": "us-west-2b",
     "AvailableIpAddressCount": 30},
    {"SubnetId": C3, "CidrBlock": "10.99.0.0/16", "AvailabilityZone": "us-west-2a",
     "AvailableIpAddressCount": 6000},
    {"SubnetId": D4, "CidrBlock": "10.98.0.0/16", "AvailabilityZone": "us-west-2c",
     "AvailableIpAddressCount": 9},
]
FREE = {s["SubnetId"]: s["AvailableIpAddressCount"] for s in SUBNETS}

tmp = tempfile.mkdtemp(prefix="cmh-subnet-modes-")
truth_file = os.path.join(tmp, "subnets.json")
with open(truth_file, "w", encoding="utf-8") as f:
    json.dump({"subnets": SUBNETS}, f)
sim = spawn_ipamd_sim(BUILD, DATA, tmp, NODES, "127.87.0.1", seed=9)
ec2 = subprocess.Popen([PY, os.path.join(SRC, "test/sim/ec2_standin.py"), "--key", "AKIDMODES:modes",
                        "--region", "us-west-2", "--lifetime", "280", "--truth", truth_file],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
api = subprocess.Popen([PY, os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                        os.path.join(tmp, "token"), "--lifetime", "280"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
daemon = None
control = "http://127.0.0.1:1"


def api_cmd(line):
    api.stdin.write(line + "\n")
    api.stdin.flush()
    return api.stdout.readline().strip()


def api_stats():
    return json.loads(api_cmd("stats")[3:])


class Daemon:
    """One daemon run: its log read up to events, its /metrics, its rounds stepped by SIGUSR1."""

    def __init__(self, env):
        self.p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
        self.events = []
        self.epoch = None
        first, _ = self.read_round()
        check("daemon ran its first round", first is not None)
        self.own = "http://127.0.0.1:%d" % next(
            (e["port"] for e in self.events if e.get("msg") == "listening"), 1)

    def read_round(self, limit_s=20):
        datums = []

        def each(ev):
            self.events.append(ev)
            if ev.get("msg") == "datum":
                datums.append(ev)
        return read_events(self.p, "round", limit_s, each), datums

    def step(self):
        """Advances the simulator one epoch and runs a round: (summary, {(metric, dims): value})."""
        self.epoch = json.loads(http(control + "/advance", "POST"))["epoch"]
        self.p.send_signal(signal.SIGUSR1)
        summary, datums = self.read_round()
        got = {}
        for d in datums:
            dims = tuple(sorted((k, v) for k, v in d["dimensions"].items() if k != "CLUSTER_ID"))
            got[(d["metric"], dims)] = d.get("value")
        return summary, got

    def until_all_targets(self):
        """Steps until the pod list has reached the daemon (bounded)."""
        for _ in range(10):
            summary, got = self.step()
            if summary and summary["targets"] == NODES and summary["fresh"] == NODES:
                return summary, got
            time.sleep(0.5)
        return None, {}

    def metrics(self):
        return parse_metrics(http(self.own + "/metrics").decode())

    def fetches_ok(self):
        return self.metrics().get('cni_metrics_helper_subnet_fetches_total{result="ok"}', 0)

    def wait_fetches(self, n, limit_s=40):
        """Waits until n good fetches have ended after this call began. The first may have started
        earlier; the second started after the first ended, so it saw whatever was changed before
        this call (fetches never overlap)."""
        want = self.fetches_ok() + n
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.fetches_ok() >= want:
                return True
            time.sleep(0.2)
        return False

    def stop(self):
        rc = stop_proc(self.p)
        self.p.stderr.read()
        return rc


def start_mode(mode, env, fetches):
    """A daemon that has found every pod and fetched the subnets `fetches` times; then one round:
    (daemon, {(metric, dims): value})."""
    d = Daemon(env)
    summary, _ = d.until_all_targets()
    check(f"{mode}: every aws-node pod discovered", summary is not None, summary)
    check(f"{mode}: {fetches} good fetch(es)", d.wait_fetches(fetches))
    return d, d.step()[1]


def published_subnets(got):
    return {dims[0][1]: v for (m, dims), v in got.items()
            if m == "subnetAvailableIPAddresses" and dims and dims[0][0] == "SubnetId"}


def truth_sum(epoch, node_indexes, fam):
    nodes = [json.loads(ln) for ln in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % epoch))]
    return sum(v for n in nodes if int(n["node"].split("-")[1]) in node_indexes
               for k, v in n["values"].items() if k.split("{")[0] == fam)


try:
    control = "http://" + re.search(r"control=(\S+)", sim.stdout.readline()).group(1)
    ec2_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", ec2.stdout.readline()).group(1)
    m = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", api.stdout.readline())
    lines = [ln.split() for ln in open(os.path.join(tmp, "targets"))]
    check("simulator nodes on their own 127.87.0.x addresses",
          [ln[1] for ln in lines] == ["127.87.0.%d" % (i + 1) for i in range(NODES)], lines)
    for i, (name, ip, _) in enumerate(lines):
        api_cmd(f"add aws-node-{i} {name} {ip}")
    api_cmd(f"eniconfig pods-us-west-2a {C3}")
    base_env = {"PATH": "/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": m.group(1), "K8S_CA_FILE": m.group(2),
                "K8S_TOKEN_FILE": m.group(3), "USE_CLOUDWATCH": "no", "LOG_FORMAT": "json",
                "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": "2",
                "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0",
                "USE_PROMETHEUS": "true", "AWS_CLUSTER_ID": "modes", "AWS_REGION": "us-west-2",
                "AWS_ACCESS_KEY_ID": "AKIDMODES", "AWS_SECRET_ACCESS_KEY": "modes",
                "AWS_ENDPOINT_URL_EC2": ec2_url, "AWS_EC2_METADATA_DISABLED": "true",
                "SUBNET_METRICS": "true", "SUBNET_METRICS_INTERVAL": "10", "CW_PER_AZ": "true",
                "CW_BACKOFF_BASE": "50ms", "CW_BACKOFF_CAP": "300ms", "HTTP_TIMEOUT": "3"}

    # -- Custom networking: ENIConfigs read through the Kubernetes API.
    daemon, got = start_mode("ENIConfig mode", base_env, 1)
    pub = published_subnets(got)
    check("ENIConfig mode: the nodes' subnets and the ENIConfig's are published, with EC2's numbers",
          pub == {A1: FREE[A1], B2: FREE[B2], C3: FREE[C3]}, pub)
    check("ENIConfig mode: us-west-2a sums a1 and the ENIConfig's c3",
          got.get(("subnetAvailableIPAddresses", (("AvailabilityZone", "us-west-2a"),))) ==
          FREE[A1] + FREE[C3], got.get(("subnetAvailableIPAddresses", (("AvailabilityZone", "us-west-2a"),))))
    lists = api_stats().get("eniconfig_lists", 0)
    check("ENIConfig mode: the daemon listed ENIConfigs", lists >= 1, lists)

    # No RBAC to list ENIConfigs: a hint, and the previous list kept.
    api_cmd("eniconfig-forbid on")
    check("403: two fetches after the ENIConfig list was forbidden", daemon.wait_fetches(2))
    _, got = daemon.step()
    warn = [e for e in daemon.events if e.get("msg", "").startswith("ENIConfig list forbidden (403)")]
    check("403: logged with the RBAC component to apply",
          warn and warn[0].get("level") == "warn" and
          "manifests/components/subnet-metrics" in warn[0].get("fix", "") and
          warn[0].get("eniconfig_subnets") == 1, warn[:1])
    check("403: the previous ENIConfig list is kept (c3 still published)",
          set(published_subnets(got)) == {A1, B2, C3}, published_subnets(got))
    check("403: the fetches still succeed (/metrics counts no failed fetch)",
          daemon.metrics().get('cni_metrics_helper_subnet_fetches_total{result="error"}', -1) == 0)

    # Allowed again, and the ENIConfig is gone: the list is read before every fetch.
    api_cmd("eniconfig-forbid off")
    api_cmd("eniconfig-del pods-us-west-2a")
    check("two fetches after the ENIConfig was deleted", daemon.wait_fetches(2))
    _, got = daemon.step()
    check("ENIConfig deleted: its subnet is no longer published",
          set(published_subnets(got)) == {A1, B2}, published_subnets(got))
    check("ENIConfig mode: daemon stopped cleanly", daemon.stop() == 0)
    daemon = None

    # -- SUBNET_IDS, one of them deleted in EC2: ENIConfigs are not read.
    api_cmd(f"eniconfig pods-us-west-2a {C3}")
    lists = api_stats().get("eniconfig_lists", 0)
    daemon, got = start_mode("SUBNET_IDS mode", dict(base_env, SUBNET_IDS=f"{A1},{DELETED},{C3}"), 2)
    pub = published_subnets(got)
    check("SUBNET_IDS mode: exactly the listed subnets that exist, with EC2's numbers",
          pub == {A1: FREE[A1], C3: FREE[C3]}, pub)
    az_sub = {dims[0][1]: v for (mm, dims), v in got.items()
              if mm == "subnetAvailableIPAddresses" and dims and dims[0][0] == "AvailabilityZone"}
    check("SUBNET_IDS mode: per-AZ free IPs of the listed subnets only",
          az_sub == {"us-west-2a": FREE[A1] + FREE[C3]}, az_sub)
    for az, idx in (("us-west-2a", {0, 1, 2}), ("unknown", {3, 4, 5})):
        for metric, fam in (("assignIPAddresses", "awscni_assigned_ip_addresses"),
                            ("maxIPAddresses", "awscni_ip_max")):
            want = truth_sum(daemon.epoch, idx, fam)
            have = got.get((metric, (("AvailabilityZone", az),)))
            check(f"SUBNET_IDS mode: {metric} in {az} = the simulator's truth of its nodes",
                  have == want, (have, want))
    check("SUBNET_IDS mode: no AZ of an unlisted subnet",
          not any(dims and dims[0] == ("AvailabilityZone", "us-west-2b") for (_, dims) in got))
    gone = [e for e in daemon.events if e.get("subnet") == DELETED]
    fetched = [e for e in daemon.events if e.get("msg") == "subnets fetched"]
    check("SUBNET_IDS mode: the deleted id is logged once over several fetches",
          len(gone) == 1 and gone[0].get("level") == "warn" and
          "does not exist" in gone[0].get("msg", "") and len(fetched) >= 2 and
          all(e.get("missing") == 1 for e in fetched), (gone, fetched[-1:]))
    check("SUBNET_IDS mode: /metrics counts the missing id",
          daemon.metrics().get("cni_metrics_helper_subnet_ids_missing") == 1)
    check("SUBNET_IDS mode: ENIConfigs never read", api_stats().get("eniconfig_lists", 0) == lists)
    check("SUBNET_IDS mode: daemon stopped cleanly", daemon.stop() == 0)
    daemon = None
    st = json.loads(http(ec2_url + "/stats"))
    # Every fetch of SUBNET_IDS mode asked for the deleted id once and was answered NotFound; how
    # many fetches fit in the mode's rounds depends on the machine's load, so the count is theirs.
    check("EC2 stand-in: no bad signature or invalid request, unknown ids answered NotFound",
          st["bad_signature"] == 0 and st["invalid"] == 0 and st["not_found"] >= len(fetched) >= 2,
          (st, len(fetched)))
finally:
    if daemon is not None:
        daemon.p.kill()
        daemon.p.wait()
    stop_all(None, [ec2, api], sim, control)
finish()
