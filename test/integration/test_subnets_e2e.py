"""End to end, issue 8: ipamD simulator -> daemon (SUBNET_METRICS, CW_PER_AZ, CW_PER_NODE) -> the
CloudWatch stand-in, with the EC2 stand-in (botocore checks every SigV4 signature and the
DescribeSubnets parameters; answers paginated two subnets a page, throttled and failing at first).
Subnet and AZ numbers equal the stand-in's truth; only the cluster's subnets are published (those
holding a node's IP); per-AZ IP gauges equal the simulator's truth of the nodes in that AZ (a node
in no known subnet under "unknown"); the per-node cap keeps the nodes nearest to exhaustion; a
subnet drained mid-scenario shows in clusterMinSubnetAvailableIPAddresses and in `report`'s exit
status (3), healthy again -> 0; a subnet drained to 0 free IPs makes `report` exit 3 with no
threshold set; `report --json` equals the same truth, and in a cluster it lists the pods once (no
watch) and adds ENIConfig subnets, with static SCRAPE_TARGETS too (as the daemon does); with EC2
failing for 3 intervals the view is stale and no subnet datum is published until a fetch succeeds
again. Waits for "a fetch after X" read the daemon's fetch counter on /metrics, so a fetch logged
before X cannot stand in for it."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, http_status, parse_metrics, read_events, spawn_ipamd_sim, stop_all  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
NODES = 12
PER_NODE_MAX = 5


# Nodes are 127.86.0.1 .. 127.86.0.12: nodes 0-6 in subnet a1 (us-west-2a), 7-10 in b2
# (us-west-2b), node 11 in no subnet. c3 holds no node and is no ENIConfig's: never published.
SUBNETS = [
    {"SubnetId": "subnet-0000a001", "CidrBlock": "127.86.0.0/29", "Ipv6CidrBlocks": ["fd00:79::/64"],
     "AvailabilityZone": "us-west-2a", "AvailableIpAddressCount": 500},
    {"SubnetId": "subnet-0000b002", "CidrBlock": "127.86.0.8/30", "AvailabilityZone": "us-west-2b",
     "AvailableIpAddressCount": 300},
    {"SubnetId": "subnet-0000c003", "CidrBlock": "127.90.0.0/16", "AvailabilityZone": "us-west-2a",
     "AvailableIpAddressCount": 5},
    {"SubnetId": "subnet-0000a004", "CidrBlock": "127.86.0.64/26", "AvailabilityZone": "us-west-2c",
     "AvailableIpAddressCount": 9000},
]
AZ_OF_NODE = {}
for i in range(NODES):
    AZ_OF_NODE["node-%06d" % i] = "us-west-2a" if i <= 6 else "us-west-2b" if i <= 10 else "unknown"

tmp = tempfile.mkdtemp(prefix="cmh-subnets-")
truth_file = os.path.join(tmp, "subnets.json")
with open(truth_file, "w") as f:
    json.dump({"subnets": SUBNETS}, f)
sim = spawn_ipamd_sim(BUILD, DATA, tmp, NODES, "127.86.0.1", seed=8)
cw = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py"),
                       "--key", "AKIDE2E:e2e-secret", "--region", "us-west-2", "--lifetime", "280"],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
ec2 = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/ec2_standin.py"),
                        "--key", "AKIDE2E:e2e-secret", "--region", "us-west-2", "--lifetime", "280",
                        "--truth", truth_file, "--page-size", "2"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
daemon = None
try:
    control = "http://" + re.search(r"control=(\S+)", sim.stdout.readline()).group(1)
    cw_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
    ec2_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", ec2.stdout.readline()).group(1)
    lines = [l.split() for l in open(os.path.join(tmp, "targets"))]
    check("simulator nodes on their own 127.86.0.x addresses",
          all(l[1] == "127.86.0.%d" % (i + 1) for i, l in enumerate(lines)), lines[:2])
    targets = ",".join("%s=%s:%s" % tuple(l) for l in lines)
    env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
           "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "e2e", "AWS_ACCESS_KEY_ID": "AKIDE2E",
           "AWS_SECRET_ACCESS_KEY": "e2e-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": cw_url,
           "AWS_ENDPOINT_URL_EC2": ec2_url, "AWS_EC2_METADATA_DISABLED": "true",
           "LOG_FORMAT": "json", "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
           "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "USE_PROMETHEUS": "true",
           "CW_BACKOFF_BASE": "50ms", "CW_BACKOFF_CAP": "300ms", "HTTP_TIMEOUT": "3",
           "SUBNET_METRICS": "true",
           "SUBNET_METRICS_INTERVAL": "10", "CW_PER_AZ": "true", "CW_PER_NODE": "true",
           "CW_PER_NODE_MAX": str(PER_NODE_MAX)}
    # The first fetch meets throttling and a 500 before it succeeds.
    http(ec2_url + "/faults", "POST", {"script": ["throttle", "500"]})
    daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    epoch = [0]
    seen_ts = [0]  # the newest round timestamp already checked
    events = []

    def wait_for(msg, limit_s=30):
        return read_events(daemon, msg, limit_s, events.append)

    def step():
        http(control + "/advance", "POST")
        epoch[0] += 1
        daemon.send_signal(signal.SIGUSR1)
        return wait_for("round")

    def truth_nodes():
        return [json.loads(l) for l in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % epoch[0]))]

    def gauge(node, fam):
        return sum(v for k, v in node["values"].items() if k.split("{")[0] == fam)

    def round_datums(summary):
        """The datums of the round just logged, from the CloudWatch stand-in (bounded wait)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ds = json.loads(http(cw_url + "/datums"))
            if ds:
                last = max(d["timestamp_ms"] for d in ds)
                mine = [d for d in ds if d["timestamp_ms"] == last]
                if last > seen_ts[0] and len(mine) == summary["datums"]:
                    seen_ts[0] = last
                    return mine
            time.sleep(0.2)
        return []

    def index(ds):
        out = {}
        for d in ds:
            extra = tuple(sorted((k, v) for k, v in d["dimensions"].items() if k != "CLUSTER_ID"))
            key = (d["metric"], extra)
            check("one value per metric and dimension set", key not in out, key)
            out[key] = d.get("value", d.get("stats"))
        return out

    first = wait_for("round")
    check("first round ran", first is not None)
    own = "http://127.0.0.1:%d" % next(e["port"] for e in events if e.get("msg") == "listening")

    def fetches_ok():
        m = parse_metrics(http(own + "/metrics").decode())
        return m.get('cni_metrics_helper_subnet_fetches_total{result="ok"}', 0)

    def wait_fetch_after(before, limit_s=25):
        """True once a good fetch started after `before` was read has ended (bounded)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if fetches_ok() > before:
                return True
            time.sleep(0.2)
        return False
    fetched = wait_for("subnets fetched", 30)
    check("subnets fetched through throttling and a 500", fetched is not None and
          fetched["subnets"] == len(SUBNETS), fetched)
    st = json.loads(http(ec2_url + "/stats"))
    check("EC2 stand-in: no bad signature, no invalid request, faults met, paginated",
          st["bad_signature"] == 0 and st["invalid"] == 0 and st["faults"] == {"throttle": 1, "500": 1}
          and st["pages"] == 2 and st["describe_all"] == 2, st)

    def verify(name, drained=None):
        summary = step()
        if not check(f"{name}: round ran", summary is not None):
            return None
        got = index(round_datums(summary))
        sub = {s["SubnetId"]: s for s in json.loads(http(ec2_url + "/truth"))["subnets"]}
        cluster = ["subnet-0000a001", "subnet-0000b002"]
        for sid in cluster:
            check(f"{name}: subnetAvailableIPAddresses {sid} = EC2 truth",
                  got.get(("subnetAvailableIPAddresses", (("SubnetId", sid),))) ==
                  sub[sid]["AvailableIpAddressCount"], (got.get(("subnetAvailableIPAddresses", (("SubnetId", sid),))), sub[sid]))
        published = {k[1][0][1] for k in got if k[0] == "subnetAvailableIPAddresses" and k[1][0][0] == "SubnetId"}
        check(f"{name}: only the cluster's subnets are published", published == set(cluster), published)
        for az in ("us-west-2a", "us-west-2b"):
            want = sum(sub[s]["AvailableIpAddressCount"] for s in cluster if sub[s]["AvailabilityZone"] == az)
            check(f"{name}: subnetAvailableIPAddresses {az} = sum of its subnets",
                  got.get(("subnetAvailableIPAddresses", (("AvailabilityZone", az),))) == want,
                  (got.get(("subnetAvailableIPAddresses", (("AvailabilityZone", az),))), want))
        want_min = min(sub[s]["AvailableIpAddressCount"] for s in cluster)
        check(f"{name}: clusterMinSubnetAvailableIPAddresses = the emptiest subnet",
              got.get(("clusterMinSubnetAvailableIPAddresses", ())) == want_min,
              (got.get(("clusterMinSubnetAvailableIPAddresses", ())), want_min))
        nodes = [n for n in truth_nodes() if n["ok"]]
        check(f"{name}: every node answered", len(nodes) == NODES, len(nodes))
        for az in ("us-west-2a", "us-west-2b", "unknown"):
            mine = [n for n in nodes if AZ_OF_NODE[n["node"]] == az]
            for metric, fam in (("assignIPAddresses", "awscni_assigned_ip_addresses"),
                                ("totalIPAddresses", "awscni_total_ip_addresses"),
                                ("maxIPAddresses", "awscni_ip_max")):
                want = sum(gauge(n, fam) for n in mine)
                check(f"{name}: {metric} in {az} = truth of its nodes",
                      got.get((metric, (("AvailabilityZone", az),))) == want,
                      (got.get((metric, (("AvailabilityZone", az),))), want))
            want = sum(gauge(n, "awscni_total_ip_addresses") - gauge(n, "awscni_assigned_ip_addresses") for n in mine)
            check(f"{name}: availableIPAddresses in {az}",
                  got.get(("availableIPAddresses", (("AvailabilityZone", az),))) == want)
        rooms = sorted((gauge(n, "awscni_ip_max") - gauge(n, "awscni_assigned_ip_addresses"), n["node"]) for n in nodes)
        per_node = {k[1][0][1] for k in got if k[0] == "assignIPAddresses" and k[1] and k[1][0][0] == "NodeName"}
        check(f"{name}: CW_PER_NODE_MAX={PER_NODE_MAX} nodes, nearest to exhaustion",
              per_node == {n for _, n in rooms[:PER_NODE_MAX]}, (per_node, rooms[:PER_NODE_MAX + 1]))
        check(f"{name}: minNodeAvailableIPAddresses = min over nodes of max - assigned",
              got.get(("minNodeAvailableIPAddresses", ())) == rooms[0][0],
              (got.get(("minNodeAvailableIPAddresses", ())), rooms[0]))
        return got

    verify("healthy")
    verify("healthy, next round")

    def report(extra, json_out=False):
        renv = dict(env, **extra)
        for k in ("AWS_ENDPOINT_URL_CLOUDWATCH",):
            renv.pop(k)
        p = subprocess.run([BIN, "report"] + (["--json"] if json_out else []), env=renv,
                           capture_output=True, text=True, timeout=60)
        return p

    thresholds = {"REPORT_MIN_FREE_IPS": "50", "REPORT_MAX_UTILIZATION": "100"}
    r = report(thresholds)
    check("report healthy: exit 0", r.returncode == 0, (r.returncode, r.stdout[-600:], r.stderr[-600:]))
    check("report names the subnets and AZs", "subnet-0000b002" in r.stdout and "us-west-2b" in r.stdout
          and "subnet-0000c003" not in r.stdout, r.stdout[-800:])

    # Drain b2 (us-west-2b): the next fetch shows it. A fetch ending after the counter is read
    # may have been answered before the drain; the one after it started later (fetches never
    # overlap), so it saw the drain: wait for two.
    http(ec2_url + "/subnet", "POST", {"SubnetId": "subnet-0000b002", "AvailableIpAddressCount": 3})
    before = fetches_ok()
    check("two fetches after the drain", wait_fetch_after(before + 1, 35), before)
    got = verify("drained")
    if got is not None:
        check("drained subnet is the cluster minimum",
              got.get(("clusterMinSubnetAvailableIPAddresses", ())) == 3)
    r = report(thresholds)
    check("report with a drained subnet: exit 3", r.returncode == 3, (r.returncode, r.stdout[-600:], r.stderr[-600:]))
    check("report says which subnet", "subnet-0000b002" in r.stdout and "THRESHOLD" in r.stdout, r.stdout[-600:])
    rj = report(thresholds, json_out=True)
    check("report --json: exit 3", rj.returncode == 3, rj.returncode)
    try:
        doc = json.loads(rj.stdout)
    except ValueError:
        doc = {}
    check("report --json: subnets emptiest first, equal the EC2 truth",
          [(s["subnet"], s["free_ips"]) for s in doc.get("subnets", [])] ==
          [("subnet-0000b002", 3), ("subnet-0000a001", 500)], doc.get("subnets"))
    check("report --json: every node, with its AZ",
          sorted((n["node"], n["availability_zone"]) for n in doc.get("nodes", [])) ==
          sorted(AZ_OF_NODE.items()), doc.get("nodes", [])[:3])
    rows = [n for n in doc.get("nodes", [])]
    check("report --json: nodes nearest to exhaustion first",
          [n["headroom"] for n in rows] == sorted(n["headroom"] for n in rows), [n.get("headroom") for n in rows])
    check("report --json: status", doc.get("status") == "threshold_crossed" and doc.get("exit_code") == 3,
          doc.get("status"))
    # Drained to 0 free IPs: exhausted, so exit 3 with no threshold set at all.
    http(ec2_url + "/subnet", "POST", {"SubnetId": "subnet-0000b002", "AvailableIpAddressCount": 0})
    r = report({"REPORT_MAX_UTILIZATION": "100"})
    check("report, a subnet with 0 free IPs and REPORT_MIN_FREE_IPS unset: exit 3", r.returncode == 3,
          (r.returncode, r.stdout[-600:], r.stderr[-300:]))
    check("report says the subnet is exhausted", "THRESHOLD: subnet subnet-0000b002 (us-west-2b) has 0 "
          "free IPs: exhausted" in r.stdout, r.stdout[-600:])
    http(ec2_url + "/subnet", "POST", {"SubnetId": "subnet-0000b002", "AvailableIpAddressCount": 1})
    r = report({"REPORT_MAX_UTILIZATION": "100"})
    check("report, 1 free IP and REPORT_MIN_FREE_IPS unset: exit 0", r.returncode == 0,
          (r.returncode, r.stdout[-600:]))

    # Healthy again.
    http(ec2_url + "/subnet", "POST", {"SubnetId": "subnet-0000b002", "AvailableIpAddressCount": 300})
    r = report(thresholds)
    check("report healthy again: exit 0", r.returncode == 0, (r.returncode, r.stdout[-400:]))
    # Utilization threshold alone.
    r = report({"REPORT_MIN_FREE_IPS": "0", "REPORT_MAX_UTILIZATION": "1"})
    check("report with utilization above REPORT_MAX_UTILIZATION=1: exit 3", r.returncode == 3,
          (r.returncode, r.stdout[-300:]))
    # Errors: bad usage 2; every scrape failed 1; EC2 denied 1.
    p = subprocess.run([BIN, "report", "--bogus"], env=env, capture_output=True, text=True, timeout=30)
    check("report --bogus: exit 2", p.returncode == 2, p.returncode)
    r = report({"SCRAPE_TARGETS": "127.86.1.250:1", "SUBNET_METRICS": "false", "SCRAPE_TIMEOUT": "1"})
    check("report, every scrape failed: exit 1", r.returncode == 1, (r.returncode, r.stdout[-300:]))
    http(ec2_url + "/faults", "POST", {"script": ["denied"]})
    r = report(thresholds)
    check("report, EC2 denied: exit 1 naming ec2:DescribeSubnets", r.returncode == 1 and
          "ec2:DescribeSubnets" in r.stdout + r.stderr, (r.returncode, r.stdout[-300:], r.stderr[-300:]))
    st = json.loads(http(ec2_url + "/stats"))
    check("EC2 stand-in: still no bad signature or invalid request", st["bad_signature"] == 0 and
          st["invalid"] == 0, st)

    # In a cluster: report discovers the aws-node pods through the (fake) Kubernetes API with one
    # list, and ENIConfigs name more subnets (custom networking). First without the CRD (404).
    api = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/fake_k8s_api.py"),
                            "--token-file", os.path.join(tmp, "token"), "--lifetime", "120"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    try:
        m = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", api.stdout.readline())

        def api_cmd(line):
            api.stdin.write(line + "\n")
            api.stdin.flush()
            return api.stdout.readline().strip()

        for i, (name, ip, _) in enumerate(lines):
            api_cmd(f"add aws-node-{i} {name} {ip}")
        kenv = {"SCRAPE_TARGETS": "", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": m.group(1), "K8S_CA_FILE": m.group(2),
                "K8S_TOKEN_FILE": m.group(3)}
        rj = report(dict(thresholds, **kenv), json_out=True)
        doc = json.loads(rj.stdout) if rj.stdout.startswith("{") else {}
        check("report in a cluster (no ENIConfig CRD): exit 0, every pod's node",
              rj.returncode == 0 and len(doc.get("nodes", [])) == NODES, (rj.returncode, rj.stderr[-300:]))
        check("report in a cluster: the nodes' subnets only",
              [s["subnet"] for s in doc.get("subnets", [])] == ["subnet-0000a001", "subnet-0000b002"][::-1]
              or {s["subnet"] for s in doc.get("subnets", [])} == {"subnet-0000a001", "subnet-0000b002"},
              doc.get("subnets"))
        api_cmd("eniconfig us-west-2a-pods subnet-0000c003")
        rj = report(dict(thresholds, **kenv), json_out=True)
        doc = json.loads(rj.stdout) if rj.stdout.startswith("{") else {}
        check("report: the ENIConfig's subnet joins the view (5 free IPs < 50: exit 3)",
              rj.returncode == 3 and doc.get("subnets", [{}])[0].get("subnet") == "subnet-0000c003",
              (rj.returncode, doc.get("subnets")))
        # Static SCRAPE_TARGETS in a cluster: the ENIConfig subnets count too, as in the daemon.
        rj = report(dict(thresholds, **dict(kenv, SCRAPE_TARGETS=targets)), json_out=True)
        doc = json.loads(rj.stdout) if rj.stdout.startswith("{") else {}
        check("report with SCRAPE_TARGETS in a cluster: the ENIConfig's subnet is in the view",
              rj.returncode == 3 and len(doc.get("nodes", [])) == NODES and
              {s["subnet"] for s in doc.get("subnets", [])} ==
              {"subnet-0000a001", "subnet-0000b002", "subnet-0000c003"},
              (rj.returncode, doc.get("subnets"), rj.stderr[-300:]))
        st = json.loads(api_cmd("stats")[3:])
        check("report listed the pods once and never watched", st.get("watches", 0) == 0, st)
        # SCRAPE_MODE=proxy: report scrapes as the daemon would, every node through the pod proxy.
        rj = report(dict(thresholds, SCRAPE_MODE="proxy", **kenv), json_out=True)
        doc = json.loads(rj.stdout) if rj.stdout.startswith("{") else {}
        st2 = json.loads(api_cmd("stats")[3:])
        proxied = {pod: n - st.get("proxy_by_pod", {}).get(pod, 0)
                   for pod, n in st2.get("proxy_by_pod", {}).items()}
        check("report with SCRAPE_MODE=proxy: every node, each scraped once through the API server",
              rj.returncode == 3 and len(doc.get("nodes", [])) == NODES
              and proxied == {f"aws-node-{i}": 1 for i in range(NODES)},
              (rj.returncode, rj.stderr[-300:], proxied))
    finally:
        api.stdin.close()
        api.wait(timeout=10)

    # EC2 fails from now on: after 3 intervals (30 s) without a good fetch the view is stale, and
    # no subnet or AZ datum is published (logged once); a good fetch brings them back.
    http(ec2_url + "/faults", "POST", {"script": ["500"] * 200})
    time.sleep(31)
    summary = step()
    got = index(round_datums(summary)) if summary else {}
    check("stale view: no subnet or AZ datum", summary is not None and not any(
        k[0] in ("subnetAvailableIPAddresses", "clusterMinSubnetAvailableIPAddresses") or
        (k[1] and k[1][0][0] == "AvailabilityZone") for k in got), sorted(k for k in got if k[1])[:5])
    check("stale view: per-node and cluster datums still published",
          ("assignIPAddresses", ()) in got and
          any(k[1] and k[1][0][0] == "NodeName" for k in got))
    check("stale view: logged", any(e.get("msg", "").startswith("subnet view stale") for e in events))
    st, body = http_status(own + "/readyz")
    check("stale view: /readyz still ready, and says the subnet view's last fetch failed",
          st == 200 and "degraded: subnet view: last fetch failed" in body, (st, body))
    m = parse_metrics(http(own + "/metrics").decode())
    failed_before = m.get('cni_metrics_helper_subnet_fetches_total{result="error"}', 0)
    last_ok = m.get("cni_metrics_helper_subnet_last_success_timestamp_seconds", 0)
    check("stale view: /metrics counts the failed fetches, the last good one is 30 s or more ago",
          failed_before >= 1 and m.get('cni_metrics_helper_subnet_fetches_total{result="ok"}', 0) >= 1
          and 30 <= time.time() - last_ok < 120, (failed_before, last_ok))
    before = fetches_ok()
    http(ec2_url + "/faults", "POST", {"script": []})
    check("fetch after EC2 recovered", wait_fetch_after(before, 25), before)
    verify("recovered")
    st, body = http_status(own + "/readyz")
    m = parse_metrics(http(own + "/metrics").decode())
    check("recovered: /readyz no longer degraded, last success timestamp moved",
          st == 200 and "degraded" not in body and
          m.get("cni_metrics_helper_subnet_last_success_timestamp_seconds", 0) > last_ok, (st, body))

    daemon.send_signal(signal.SIGTERM)
    rc = daemon.wait(timeout=20)
    daemon.stderr.read()
    daemon = None
    check("daemon stopped cleanly", rc == 0, rc)
    cst = json.loads(http(cw_url + "/stats"))
    check("CloudWatch stand-in: every request valid", cst["bad_signature"] == 0 and
          cst["invalid_params"] == 0, cst)
finally:
    stop_all(daemon, [cw, ec2], sim, control)
finish()
