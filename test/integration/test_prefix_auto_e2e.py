"""End to end, SUBNET_PREFIX_METRICS unset (auto) with SUBNET_METRICS: while every node reports
awscni_total_ipv4_prefixes = 0 the daemon makes no DescribeNetworkInterfaces call and publishes no
subnetFreeIPv4Prefixes; once one node reports prefixes > 0 the walk starts and
subnetFreeIPv4Prefixes equals an address-by-address count of the EC2 stand-in's truth (Python's
ipaddress). A second daemon, whose usage calls the stand-in denies, logs the denial once with the
IAM policy to attach, stops counting, says degraded on /readyz (still 200) and counts it on
/metrics, and keeps publishing the other subnet metrics.

Nodes: one ipamD simulator endpoint (which never reports prefixes) and one endpoint served here,
a real ipamD scrape (cni_test1.data) plus an awscni_total_ipv4_prefixes gauge the test sets.
Addresses: 127.97.0.0/24."""
import http.server as http_server
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, http_status, parse_metrics, stop_all  # noqa: E402
from subnet_peers import Peers, own_url  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
A, CIDR = "subnet-0000b971", "10.97.0.0/24"
NODE_IP = "127.97.0.9"
DENIAL = "nodes use prefix delegation but counting free /28 blocks was denied"

# The subnet's usage: scattered addresses, two prefixes, one reservation.
interfaces = [{"NetworkInterfaceId": "eni-%017x" % k, "SubnetId": A,
               "PrivateIpAddresses": ["10.97.0.%d" % (7 + 37 * k)],
               "Ipv4Prefixes": ["10.97.0.%d/28" % (16 * (9 + 2 * k))] if k < 2 else []}
              for k in range(6)]
reservations = [{"SubnetId": A, "Cidr": "10.97.0.192/28"}]


def oracle():
    """Aligned /28 blocks of the subnet with no address in use (the 5 AWS keeps count as used)."""
    addrs = list(ipaddress.ip_network(CIDR))
    used = set(addrs[:4]) | {addrs[-1]}
    for i in interfaces:
        used |= {ipaddress.ip_address(a) for a in i["PrivateIpAddresses"]}
        for p in i["Ipv4Prefixes"]:
            used |= set(ipaddress.ip_network(p))
    for r in reservations:
        used |= set(ipaddress.ip_network(r["Cidr"]))
    return sum(1 for k in range(0, len(addrs), 16) if not used & set(addrs[k:k + 16]))


TEMPLATE = open(os.path.join(DATA, "ipamd/cni_test1.data"), "rb").read().rstrip(b"\n") + b"\n"
PREFIXES = {"n": 0}


class Node(http_server.BaseHTTPRequestHandler):
    """An ipamD /metrics whose awscni_total_ipv4_prefixes is PREFIXES["n"]."""

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        body = TEMPLATE + (b"# HELP awscni_total_ipv4_prefixes The total number of IPv4 prefixes\n"
                           b"# TYPE awscni_total_ipv4_prefixes gauge\n"
                           b"awscni_total_ipv4_prefixes %d\n" % PREFIXES["n"])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


node = http_server.ThreadingHTTPServer((NODE_IP, 0), Node)
node.daemon_threads = True
threading.Thread(target=node.serve_forever, daemon=True).start()

tmp = tempfile.mkdtemp(prefix="cmh-pfxauto-")
truth_file = os.path.join(tmp, "subnets.json")
with open(truth_file, "w") as f:
    json.dump({"subnets": [{"SubnetId": A, "CidrBlock": CIDR, "AvailabilityZone": "us-west-2a",
                            "AvailableIpAddressCount": 150}],
               "interfaces": interfaces, "reservations": reservations}, f)
peers = Peers(BUILD, DATA, tmp, "pa", "127.97.0.1", 1, 97, truth_file, 100)
daemons = []


def start_daemon(name):
    env = dict(peers.env, METRIC_UPDATE_INTERVAL="1s", SUBNET_IDS=A,
               SUBNET_METRICS_INTERVAL="10s", SUBNET_PREFIX_INTERVAL="10s")
    env["SCRAPE_TARGETS"] += ",node-here=%s:%d" % (NODE_IP, node.server_address[1])
    check("SUBNET_PREFIX_METRICS is unset", "SUBNET_PREFIX_METRICS" not in env)
    log_path = os.path.join(tmp, name + ".log")
    daemons.append(subprocess.Popen([BIN], env=env, stderr=open(log_path, "w"), text=True))
    return log_path, own_url(log_path)


def datums(metric):
    return [(d["timestamp_ms"], d["value"]) for d in json.loads(http(peers.cw_url + "/datums"))
            if d["metric"] == metric and d["dimensions"].get("SubnetId") == A]


def usage_calls(action):
    stats = json.loads(http(peers.ec2_url + "/stats"))
    return [u for u in stats.get("usage_requests", []) if u["action"] == action]


def wait_for(pred, limit_s):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    return pred()


def log_events(path, msg):
    return [json.loads(l) for l in open(path) if msg in l]


try:
    want = oracle()
    check("the truth leaves some /28 blocks free, not all", 0 < want < 16, want)

    # 1. No node reports prefixes: subnet metrics flow, no usage walk, no free /28 datums.
    started = time.monotonic()
    log1, own1 = start_daemon("auto")
    check("daemon up", own1 is not None)
    check("subnet view published", wait_for(lambda: len(datums("subnetAvailableIPAddresses")) >= 3,
                                            20), datums("subnetAvailableIPAddresses")[-1:])
    # Past the first SUBNET_METRICS_INTERVAL / SUBNET_PREFIX_INTERVAL tick (10 s), when a walk
    # that was on would have started.
    time.sleep(max(0.0, 11.5 - (time.monotonic() - started)))
    check("no prefixes: no DescribeNetworkInterfaces call",
          usage_calls("DescribeNetworkInterfaces") == [], usage_calls("DescribeNetworkInterfaces"))
    check("no prefixes: no GetSubnetCidrReservations call",
          usage_calls("GetSubnetCidrReservations") == [])
    check("no prefixes: no subnetFreeIPv4Prefixes datum", datums("subnetFreeIPv4Prefixes") == [])
    page = parse_metrics(http(own1 + "/metrics").decode())
    check("/metrics: not counting", page.get("cni_metrics_helper_subnet_prefix_counting") == 0,
          [k for k in page if "prefix" in k])

    # 2. One node reports prefixes: the walk starts after that round, without waiting for the
    # next SUBNET_PREFIX_INTERVAL tick, and the count is the oracle's.
    PREFIXES["n"] = 3
    t0 = time.monotonic()
    got = wait_for(lambda: [v for _, v in datums("subnetFreeIPv4Prefixes")], 10)
    check("prefixes seen: subnetFreeIPv4Prefixes published within 10 s", got,
          time.monotonic() - t0)
    check("subnetFreeIPv4Prefixes equals the address-by-address count",
          got and got[-1] == want, (got[-1:], want))
    check("DescribeNetworkInterfaces filtered by the subnet",
          all(u["Filters"] == [{"Name": "subnet-id", "Values": [A]}]
              for u in usage_calls("DescribeNetworkInterfaces")))
    check("turning on is logged once", len(log_events(log1, "a node reports IPv4 prefixes")) == 1)
    # Prefixes back to 0 for a while: the count stays on.
    PREFIXES["n"] = 0
    n_before = len(datums("subnetFreeIPv4Prefixes"))
    check("prefixes back to 0: still published",
          wait_for(lambda: len(datums("subnetFreeIPv4Prefixes")) >= n_before + 2, 5))
    page = parse_metrics(http(own1 + "/metrics").decode())
    check("/metrics: counting, one ok count",
          page.get("cni_metrics_helper_subnet_prefix_counting") == 1 and
          page.get('cni_metrics_helper_subnet_prefix_counts_total{result="ok"}', 0) >= 1,
          [(k, v) for k, v in page.items() if "prefix_count" in k])
    daemons[0].kill()
    daemons[0].wait(5)

    # 3. Auto, prefixes reported, usage denied: one log line naming the policy, degraded, no more
    # usage calls, the other subnet metrics go on.
    http(peers.ec2_url + "/reset", "POST", {})
    http(peers.ec2_url + "/faults", "POST", {"script": [], "deny": ["DescribeNetworkInterfaces"]})
    http(peers.cw_url + "/reset", "POST", {})
    PREFIXES["n"] = 5
    log2, own2 = start_daemon("denied")
    check("second daemon up", own2 is not None)
    denied = wait_for(lambda: log_events(log2, DENIAL), 15)
    check("denial logged", denied, open(log2).read()[-800:])
    check("the log line names the IAM policy to attach",
          denied and "subnet-prefix-metrics-policy.json" in denied[0].get("fix", ""), denied[:1])
    st, body = wait_for(lambda: (lambda r: r if "degraded: free /28" in r[1] else None)(
        http_status(own2 + "/readyz")), 5) or http_status(own2 + "/readyz")
    check("/readyz: 200 with a degraded line naming the permission",
          st == 200 and "degraded: free /28 blocks not counted" in body and
          "DescribeNetworkInterfaces" in body, (st, body))
    seen = len(datums("subnetAvailableIPAddresses"))
    # Past the next SUBNET_PREFIX_INTERVAL (10 s) tick: still one call, still one line.
    time.sleep(11)
    calls = usage_calls("DescribeNetworkInterfaces")
    check("the walk stopped: one denied call", len(calls) == 1, len(calls))
    check("the denial is logged once", len(log_events(log2, DENIAL)) == 1)
    check("the other subnet metrics go on",
          len(datums("subnetAvailableIPAddresses")) >= seen + 5, seen)
    check("no subnetFreeIPv4Prefixes datum", datums("subnetFreeIPv4Prefixes") == [])
    page = parse_metrics(http(own2 + "/metrics").decode())
    check("/metrics: one denied count, not counting",
          page.get('cni_metrics_helper_subnet_prefix_counts_total{result="denied"}') == 1 and
          page.get("cni_metrics_helper_subnet_prefix_counting") == 0,
          [(k, v) for k, v in page.items() if "prefix_count" in k])
finally:
    for d in daemons:
        d.kill()
    stop_all(None, [peers.cw, peers.ec2], peers.sim, peers.control)
    node.shutdown()
finish()
