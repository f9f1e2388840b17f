"""CLUSTER_ID without AWS_CLUSTER_ID, end to end through the daemon, compared with the original
helper's rule (pkg/publisher/publisher.go of amazon-vpc-cni-k8s, written out below as the oracle:
the first of the instance's tags eks:cluster-name, CLUSTER_ID, Name with a value, else
k8s-cluster), for every combination of those tags:
- the instance id and region come from IMDS (the AEMM tree of the credentials stand-in, IMDSv2);
  the tags from EC2 DescribeTags on the EC2 stand-in (botocore checks every request's signature
  and validates its parameters against DescribeTags' model; it answers in an order that is not the
  preference); the datums reach the CloudWatch stand-in with that CLUSTER_ID;
- the source is said on /metrics (cni_metrics_helper_cluster_id_info{cluster_id,source}) and in
  the log; the shared default is said on /readyz ("degraded") and in the log;
- DescribeTags asks for this instance only (resource-id filter) and another instance's tags are
  not taken;
- with IMDS blocked (a socket that never answers, as with a hop limit of 1) the node object's
  spec.providerID (NODE_NAME, on the fake Kubernetes API) gives the region and the instance, and
  DescribeTags the name; with DescribeTags denied as well, the aws-node pods' CLUSTER_NAME."""
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fault_peers import K8sApi  # noqa: E402
from testlib import (check, finish, http, http_status, parse_metrics, read_events,  # noqa: E402
                     spawn_ipamd_sim, stop_proc)

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
PY = "/usr/bin/python3"
KEY = "AKIDCLUSTER:secretcluster"
IMDS_INSTANCE = "i-1234567890abcdef0"  # the AEMM tree's instance-id
NODE_INSTANCE = "i-0fedcba9876543210"
ORIGINAL_TAGS = ["eks:cluster-name", "CLUSTER_ID", "Name"]


def original_rule(tags):
    """The original helper: getClusterID over clusterIDTags, GetClusterTag's first match."""
    for key in ORIGINAL_TAGS:
        v = tags.get(key)
        if v:
            return v, key
    return "k8s-cluster", None


tmp = tempfile.mkdtemp(prefix="cmh-clusterid-")
sim = spawn_ipamd_sim(BUILD, DATA, tmp, 2, "127.99.0.1", seed=7)
aws = subprocess.Popen([PY, os.path.join(SRC, "test/sim/aws_standin.py"), "--lifetime", "280"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
with open(os.path.join(tmp, "ec2.json"), "w") as f:
    json.dump({"subnets": [], "tags": []}, f)
ec2 = subprocess.Popen([PY, os.path.join(SRC, "test/sim/ec2_standin.py"), "--key", KEY, "--region", "us-west-2",
                        "--truth", os.path.join(tmp, "ec2.json"), "--lifetime", "280"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
cw = subprocess.Popen([PY, os.path.join(SRC, "test/sim/cloudwatch_standin.py"), "--key", KEY,
                       "--region", "us-west-2", "--lifetime", "280"],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
# IMDS blocked: connections are taken into the backlog and never answered (what a hop limit of 1
# looks like to the pod: the token PUT's answer never arrives).
blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
blackhole.bind(("127.0.0.1", 0))
blackhole.listen(64)
k8s = None
daemon = None


def standin(cmd):
    aws.stdin.write(json.dumps(cmd) + "\n")
    aws.stdin.flush()
    return json.loads(aws.stdout.readline())


try:
    control = "http://" + re.search(r"control=(\S+)", sim.stdout.readline()).group(1)
    m = re.search(r"http=(\d+)", aws.stdout.readline())
    imds_url = "http://127.0.0.1:%s" % m.group(1)
    ec2_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", ec2.stdout.readline()).group(1)
    cw_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
    standin({"cmd": "aemm", "extra": {"/latest/meta-data/placement/region": "us-west-2"}})
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
    akid, secret = KEY.split(":")
    base_env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
                "USE_PROMETHEUS": "yes", "AWS_CLUSTER_ID": "", "AWS_ACCESS_KEY_ID": akid,
                "AWS_SECRET_ACCESS_KEY": secret, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url,
                "AWS_ENDPOINT_URL_EC2": ec2_url, "AWS_ENDPOINT_URL_CLOUDWATCH": cw_url,
                "LOG_FORMAT": "json", "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
                "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "HTTP_TIMEOUT": "3",
                "SHUTDOWN_TIMEOUT": "3"}

    def run_case(label, tags, extra_env=None, faults=None, want=None, want_source=None):
        """Starts the daemon against these instance tags; checks the published CLUSTER_ID."""
        global daemon
        http(ec2_url + "/reset", "POST", {})
        http(ec2_url + "/tags", "POST", {"tags": tags})
        http(ec2_url + "/faults", "POST", {"script": faults or []})
        http(cw_url + "/reset", "POST", {})
        events = []
        daemon = subprocess.Popen([BIN], env=dict(base_env, **(extra_env or {})), stderr=subprocess.PIPE,
                                  text=True)
        ev = read_events(daemon, "listening", 20, each=events.append)
        own = "http://127.0.0.1:%d" % ev["port"] if ev else None
        ev = read_events(daemon, "publishing to CloudWatch", 30, each=events.append)
        deadline = time.monotonic() + 20
        datums = []
        while own and ev and time.monotonic() < deadline and not datums:
            datums = json.loads(http(cw_url + "/datums"))
            time.sleep(0.2)
        ids = sorted({d["dimensions"].get("CLUSTER_ID") for d in datums})
        check(f"{label}: datums published with CLUSTER_ID {want}", ids == [want], (ids, len(datums)))
        metrics = parse_metrics(http(own + "/metrics").decode()) if own else {}
        info = [k for k in metrics if k.startswith("cni_metrics_helper_cluster_id_info{")]
        check(f"{label}: /metrics says the cluster id and its source {want_source}",
              info == ['cni_metrics_helper_cluster_id_info{cluster_id="%s",source="%s"}' % (want, want_source)],
              info)
        st, body = http_status(own + "/readyz") if own else (None, "")
        degraded = "degraded: CLUSTER_ID is the shared default k8s-cluster" in body
        check(f"{label}: /readyz {'says' if want_source == 'default' else 'does not say'} it is the shared default",
              degraded == (want_source == "default"), body)
        msgs = [e.get("msg") for e in events]
        logged = ("cluster id: none found, using the shared default" in msgs) if want_source == "default" \
            else any(e.get("msg") in ("cluster id", "aws: region and cluster id")
                     and want_source in (e.get("source"), e.get("cluster_id_from"))
                     and e.get("cluster_id") == want for e in events)
        check(f"{label}: the log says the cluster id and its source", logged, msgs[-15:])
        stats = json.loads(http(ec2_url + "/stats"))
        check(f"{label}: EC2 stand-in: every request signed right and valid",
              stats["bad_signature"] == 0 and stats["invalid"] == 0, stats)
        daemon.send_signal(15)
        try:
            tail = daemon.communicate(timeout=15)[1]  # the log's rest, so a full pipe never blocks it
        except subprocess.TimeoutExpired:
            tail = "(no exit within 15 s)"
        rc = stop_proc(daemon, timeout=5)
        check(f"{label}: the daemon stopped cleanly", rc == 0, (rc, tail[-2000:]))
        daemon = None
        return stats

    # 1. Every combination of the original's three tags (a value, an empty value, absent), with
    #    tags it does not read and another instance's tags beside them.
    n = 0
    for combo in itertools.product([None, "", "v"], repeat=3):
        tags = {}
        for key, v in zip(ORIGINAL_TAGS, combo):
            if v is not None:
                tags[key] = "" if v == "" else {"eks:cluster-name": "prod-eks", "CLUSTER_ID": "cid-tag",
                                                "Name": "ip-10-0-1-7.ec2.internal"}[key]
        # Skip the empty-value combinations beyond a few, so the run stays short.
        if "" in combo and combo.count("") > 1:
            continue
        listed = [{"ResourceId": IMDS_INSTANCE, "Key": k, "Value": v} for k, v in tags.items()]
        listed += [{"ResourceId": IMDS_INSTANCE, "Key": "eks:eks-cluster-name", "Value": "karpenter-name"},
                   {"ResourceId": "i-0aaaaaaaaaaaaaaaa", "Key": "eks:cluster-name", "Value": "other-cluster"}]
        want, key = original_rule(tags)
        label = "IMDS, tags " + (", ".join("%s=%r" % kv for kv in tags.items()) or "none")
        stats = run_case(label, listed, want=want,
                         want_source="ec2-describe-tags:" + key if key else "default")
        filters = stats["tag_filters"]
        check(f"{label}: one DescribeTags for this instance and the original's three keys",
              len(filters) == 1 and filters[0] == [{"Name": "resource-id", "Values": [IMDS_INSTANCE]},
                                                   {"Name": "key", "Values": ORIGINAL_TAGS}], filters)
        n += 1
    check("tag combinations run", n >= 12, n)

    # 2. DescribeTags denied (the role grants PutMetricData only), no cluster to ask: the
    #    original published k8s-cluster; so do we, and say so.
    run_case("IMDS, DescribeTags denied", [{"ResourceId": IMDS_INSTANCE, "Key": "eks:cluster-name",
                                            "Value": "prod-eks"}],
             faults=["denied"], want="k8s-cluster", want_source="default")

    # 3. IMDS blocked: the node's providerID names the region and the instance.
    k8s = K8sApi(tmp, 200)
    k8s.cmd("node ip-10-0-9-9.us-west-2.compute.internal aws:///us-west-2b/" + NODE_INSTANCE)
    k8s.cmd("add aws-node-a ip-10-0-9-9.us-west-2.compute.internal 10.0.9.9")
    blocked = dict(k8s.env(), AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:%d" % blackhole.getsockname()[1],
                   NODE_NAME="ip-10-0-9-9.us-west-2.compute.internal")
    stats = run_case("IMDS blocked, node providerID", [
        {"ResourceId": NODE_INSTANCE, "Key": "eks:cluster-name", "Value": "blocked-prod"},
        {"ResourceId": IMDS_INSTANCE, "Key": "eks:cluster-name", "Value": "not-this-one"}],
        extra_env=blocked, want="blocked-prod", want_source="ec2-describe-tags:eks:cluster-name")
    check("IMDS blocked: DescribeTags asks for the node's instance",
          stats["tag_filters"] and stats["tag_filters"][0][0] == {"Name": "resource-id", "Values": [NODE_INSTANCE]},
          stats["tag_filters"])
    check("IMDS blocked: the node object was read", k8s.stats().get("node_gets", 0) >= 1, k8s.stats())

    # 4. IMDS blocked and DescribeTags denied: the aws-node pods' CLUSTER_NAME.
    k8s.cmd("podenv aws-node-a CLUSTER_NAME from-aws-node")
    run_case("IMDS blocked, DescribeTags denied, aws-node CLUSTER_NAME", [], extra_env=blocked,
             faults=["denied"], want="from-aws-node", want_source="aws-node-env")

    # 5. AWS_CLUSTER_ID set: nothing is asked.
    stats = run_case("AWS_CLUSTER_ID set", [{"ResourceId": IMDS_INSTANCE, "Key": "eks:cluster-name",
                                             "Value": "prod-eks"}],
                     extra_env={"AWS_CLUSTER_ID": "explicit", "METRIC_UPDATE_INTERVAL": "2"}, want="explicit", want_source="AWS_CLUSTER_ID")
    check("AWS_CLUSTER_ID set: no DescribeTags", stats["describe_tags"] == 0, stats)
finally:
    stop_proc(daemon, timeout=10)
    for p in (aws, ec2, cw):
        try:
            p.stdin.close()
        except Exception:
            pass
        stop_proc(p, timeout=10)
    if k8s is not None:
        k8s.stop()
    blackhole.close()
    try:
        http(control + "/quit", "POST", {})
    except Exception:
        pass
    stop_proc(sim, timeout=10)
finish()
