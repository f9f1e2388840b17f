"""End to end, free /28 blocks for prefix delegation: the daemon (SUBNET_METRICS,
SUBNET_PREFIX_METRICS) walks the cluster's subnets with DescribeNetworkInterfaces (filtered by
subnet-id, MaxResults 1000, paginated) and GetSubnetCidrReservations against the EC2 stand-in
(botocore validates every request; the first usage request is throttled with
RequestLimitExceeded and must be retried), and publishes subnetFreeIPv4Prefixes equal to an
address-by-address count here (Python's ipaddress); a subnet with thousands of free addresses
and no free /28 reads 0; after more prefixes are taken the next walk follows; the prefix forecast
(subnetTimeToPrefixExhaustion) appears once its window has filled and is in [0, 604800]."""
import ipaddress
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, parse_metrics, stop_all  # noqa: E402
from subnet_peers import Peers, own_url  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
A, B = "subnet-0000b281", "subnet-0000b282"
CIDR = {A: "10.28.0.0/22", B: "10.28.16.0/20"}
rng = random.Random(28)


def oracle(subnet, interfaces, reservations):
    net = ipaddress.ip_network(CIDR[subnet])
    addrs = list(net)
    used = set(addrs[:4]) | {addrs[-1]}
    for i in interfaces:
        if i["SubnetId"] != subnet:
            continue
        used |= {ipaddress.ip_address(a) for a in i["PrivateIpAddresses"]}
        for p in i["Ipv4Prefixes"]:
            used |= set(ipaddress.ip_network(p))
    for r in reservations:
        if r["SubnetId"] == subnet:
            used |= set(ipaddress.ip_network(r["Cidr"])) & set(addrs)
    return sum(1 for k in range(0, len(addrs), 16) if not used & set(addrs[k:k + 16]))


def gen_interfaces():
    out = []
    a = list(ipaddress.ip_network(CIDR[A]))[4:-1]
    for k in range(40):  # scattered: fragmented on purpose
        ips = [str(x) for x in rng.sample(a, 3)]
        pfx = []
        if k % 4 == 0:
            base = int(a[0]) + 16 * rng.randrange(60)
            pfx.append("%s/28" % ipaddress.ip_address(base & ~15))
        out.append({"NetworkInterfaceId": "eni-%017x" % k, "SubnetId": A,
                    "PrivateIpAddresses": ips, "Ipv4Prefixes": pfx})
    b = list(ipaddress.ip_network(CIDR[B]))
    for blk in range(256):  # one address in every block of B: 3,800 free, no free /28
        out.append({"NetworkInterfaceId": "eni-%017x" % (1000 + blk), "SubnetId": B,
                    "PrivateIpAddresses": [str(b[16 * blk + 5])], "Ipv4Prefixes": []})
    return out


interfaces = gen_interfaces()
reservations = [{"SubnetId": A, "Cidr": "10.28.2.0/25"}, {"SubnetId": A, "Cidr": "10.28.3.200/29"}]
SUBNETS = [{"SubnetId": s, "CidrBlock": CIDR[s], "AvailabilityZone": "us-west-2a",
            "AvailableIpAddressCount": 500} for s in (A, B)]
tmp = tempfile.mkdtemp(prefix="cmh-prefix-")
truth_file = os.path.join(tmp, "subnets.json")
with open(truth_file, "w") as f:
    json.dump({"subnets": SUBNETS, "interfaces": interfaces, "reservations": reservations}, f)
peers = Peers(BUILD, DATA, tmp, "px", "127.88.0.1", 1, 28, truth_file, 150)
daemon = None
try:
    cw_url, ec2_url = peers.cw_url, peers.ec2_url
    env = dict(peers.env, METRIC_UPDATE_INTERVAL="2s")
    env.update({
        "SUBNET_IDS": "%s,%s" % (A, B),
        "SUBNET_METRICS_INTERVAL": "10s", "SUBNET_PREFIX_METRICS": "true",
        "SUBNET_PREFIX_INTERVAL": "10s", "FORECAST_WINDOW": "30s"})
    # Every DescribeSubnets and usage request pops the script: the first few see throttling.
    http(ec2_url + "/faults", "POST", {"script": ["ok", "throttle", "ok", "throttle"]})
    want = {A: oracle(A, interfaces, reservations), B: oracle(B, interfaces, reservations)}
    check("the generated sets are what the test means", want[B] == 0 and 0 < want[A] < 64, want)
    log_path = os.path.join(tmp, "daemon.log")
    daemon = subprocess.Popen([BIN], env=env, stderr=open(log_path, "w"), text=True)

    def datums(metric, sid):
        ds = json.loads(http(cw_url + "/datums"))
        return [(d["timestamp_ms"], d["value"]) for d in ds
                if d["metric"] == metric and d["dimensions"].get("SubnetId") == sid]

    def wait_value(sid, value, limit_s):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            got = datums("subnetFreeIPv4Prefixes", sid)
            if got and got[-1][1] == value:
                return True
            time.sleep(0.5)
        return False

    check("A: free /28 blocks equal the address-by-address count", wait_value(A, want[A], 45),
          (datums("subnetFreeIPv4Prefixes", A)[-1:], want[A]))
    check("B: thousands of free addresses, no free /28: reads 0", wait_value(B, 0, 20),
          datums("subnetFreeIPv4Prefixes", B)[-1:])

    # More prefixes taken: the next walk follows.
    free_blocks = [k for k in range(64) if k not in (0, 63)]
    taken = ["%s/28" % ipaddress.ip_address(int(ipaddress.ip_address("10.28.0.0")) + 16 * k)
             for k in rng.sample(free_blocks, 20)]
    interfaces.append({"NetworkInterfaceId": "eni-0000000000000ffff", "SubnetId": A,
                       "PrivateIpAddresses": ["10.28.1.1"], "Ipv4Prefixes": taken})
    http(ec2_url + "/usage", "POST", {"interfaces": interfaces, "reservations": reservations})
    want2 = oracle(A, interfaces, reservations)
    check("A: after more prefixes, the new count", want2 < want[A] and wait_value(A, want2, 30),
          (datums("subnetFreeIPv4Prefixes", A)[-1:], want2))

    # The prefix forecast, once its window (30 s, a walk every 10 s) holds three counts.
    deadline = time.monotonic() + 30
    tte = []
    while time.monotonic() < deadline and not tte:
        tte = datums("subnetTimeToPrefixExhaustion", A)
        time.sleep(0.5)
    check("prefix forecast published", tte, tte)
    check("prefix forecast within [0, 604800]", all(0 <= v <= 604800 for _, v in tte), tte[:3])
    own = own_url(log_path)
    page = parse_metrics(http(own + "/metrics").decode())
    check("/metrics: free /28 blocks per subnet",
          page.get('cni_metrics_helper_subnet_free_ipv4_prefixes{cluster_id="px",subnet_id="%s"}'
                   % B) == 0 and
          page.get('cni_metrics_helper_subnet_free_ipv4_prefixes{cluster_id="px",subnet_id="%s"}'
                   % A) == want2, [k for k in page if "prefixes" in k])

    stats = json.loads(http(ec2_url + "/stats"))
    usage = stats.get("usage_requests", [])
    check("EC2 stand-in: every request signed and valid", stats["bad_signature"] == 0 and
          stats["invalid"] == 0, stats["errors"][:3])
    check("usage requests at the largest page", usage and all(u["MaxResults"] == 1000 for u in usage),
          usage[:2])
    enis = [u for u in usage if u["action"] == "DescribeNetworkInterfaces"]
    check("DescribeNetworkInterfaces filtered by subnet-id, one subnet each",
          enis and all(u["Filters"] == [{"Name": "subnet-id", "Values": [u["Filters"][0]["Values"][0]]}]
                       and u["Filters"][0]["Values"][0] in (A, B) for u in enis), enis[:2])
    res = [u for u in usage if u["action"] == "GetSubnetCidrReservations"]
    check("GetSubnetCidrReservations by SubnetId", res and all(u["SubnetId"] in (A, B) for u in res),
          res[:2])
    check("throttled requests were retried", stats["faults"].get("throttle", 0) == 2, stats["faults"])
    # A's 40+ interfaces at 6 a page: DescribeNetworkInterfaces follows NextToken.
    pages_a = [u for u in enis if u["Filters"][0]["Values"][0] == A]
    walks = len([u for u in res if u["SubnetId"] == A])
    check("pagination followed (more interface pages than walks)", len(pages_a) > walks >= 3,
          (len(pages_a), walks))
finally:
    stop_all(daemon, [peers.cw, peers.ec2], peers.sim, peers.control)
finish()
