"""End to end against ipamD's own metrics library: a fleet of Go peers (test/sim/ipamd_go, ipamD
v1.23.1's collectors on prometheus/client_golang's default registry, served by
promhttp.Handler() on net/http), one process per node, the daemon with static targets and a 2 s
interval, and the CloudWatch stand-in (botocore checks every request). Every datum of every round
must equal what docs/aggregation.md's rules give on what the peers served, exactly.

The truth comes from the peers: each reports every scrape it answered (when, the request's
Accept-Encoding, the response head as it went on the wire, every awscni_* sample served), and
the test checks that those samples are what it scripted. Rounds are matched to scrapes by time
(a round's datums carry its start). The expected datums are computed here by truth_model.Model;
only the metric table comes from the daemon.

Scenario (one step after each round): counter families present on no node (published as 0 from
the second round on), a labelled counter family appearing late on one node (its first
increment), a restart of one node (a new process: new process_start_time_seconds, counters
reset), a node stopped (stale for STALE_ROUNDS rounds, then gone), a node joining late (its
process started after the previous round: its whole counts are in its first round), and gauge
and counter changes on every node every round. Before the daemon starts, the peer itself is
checked against ipamD's metric inventory (names, types, help, labels) and for chunked and gzip
answers."""
import gzip
import http.client
import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
BIN = os.environ["CMH_BIN"]
GO_PEER = os.path.join(BUILD, "test", "ipamd_go")
INVENTORY = os.path.join(os.environ["CMH_DATA_DIR"], "ipamd/ipamd_metric_inventory.tsv")
INTERVAL_MS = 2000
STALE_ROUNDS = 2
ROUNDS = 10

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, read_events, stop_proc
from testlib import http as http_body  # noqa: E402
from truth_model import TABLE, Model  # noqa: E402


def inventory():
    """ipamD v1.23.1's families: name -> (type, label names, help), from the inventory in test/data."""
    out = {}
    for line in open(INVENTORY):
        if line.startswith("#") or line.startswith("name\t"):
            continue
        name, kind, labels, help_ = line.rstrip("\n").split("\t")
        out[name] = (kind, sorted(l for l in labels.split(",") if l), help_)
    return out


INV = inventory()


def key(name, labels):
    """A series as the peer reports it: name{a="x",b="y"}, labels in name order."""
    if not labels:
        return name
    return name + "{" + ",".join('%s="%s"' % (k, labels[k]) for k in sorted(labels)) + "}"


class Peer:
    """One node: one ipamd_go process at a time on a fixed address (a restart is a new process
    on the same address and port). Keeps what the test scripted (mirror) and every scrape any of
    its processes answered (served). A scrape must serve one of the states the script went
through, in order (history): a scrape may land between two commands."""

    def __init__(self, name, ip, port=0):
        self.name, self.ip, self.port = name, ip, port
        self.proc = None
        self.served = []
        self.starts = []
        self.mirror = {}
        self.history = []

    def start(self):
        spawned = time.time()
        self.proc = subprocess.Popen([GO_PEER, "-listen", f"{self.ip}:{self.port}"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = json.loads(self._line())
        self.port = int(ready["addr"].rsplit(":", 1)[1])
        self.starts.append((ready["process_start_time_seconds"], spawned))
        # A new process: only the label-less families exist, at 0, and the two series ipamD
        # creates at registration.
        self.mirror = {n: 0.0 for n, (kind, labels, _) in INV.items()
                       if not labels and kind in ("counter", "gauge")}
        for result in ("success", "error"):
            self.mirror[key("awscni_connmark_reconcile_total", {"result": result})] = 0.0
        self.history = [dict(self.mirror)]

    def _line(self, limit_s=20):
        ready, _, _ = select.select([self.proc.stdout], [], [], limit_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"{self.name}: ipamd_go did not answer")
        return line

    def cmd(self, **c):
        self.proc.stdin.write(json.dumps(c) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self._line())
        if not reply.get("ok"):
            raise RuntimeError(f"{self.name}: {c}: {reply}")
        return reply

    def _scripted(self):
        self.history.append(dict(self.mirror))

    def set(self, name, value, **labels):
        self.cmd(op="set", name=name, labels=labels, value=value)
        self.mirror[key(name, labels)] = float(value)
        self._scripted()

    def add(self, name, value, **labels):
        self.cmd(op="add", name=name, labels=labels, value=value)
        k = key(name, labels)
        self.mirror[k] = self.mirror.get(k, 0.0) + value
        self._scripted()

    def observe(self, name, value, **labels):
        self.cmd(op="observe", name=name, labels=labels, value=value)
        if INV[name][0] == "summary":
            for suffix, v in (("_sum", value), ("_count", 1.0)):
                k = key(name + suffix, labels)
                self.mirror[k] = self.mirror.get(k, 0.0) + v
            self._scripted()

    def collect(self):
        """Takes the scrapes answered so far (a response the tap has not seen end yet comes
        with a later call); checks each served a state that was scripted."""
        got = self.cmd(op="served")["served"]
        self._keep(got)

    def _keep(self, got):
        for s in got:
            served = {k: v for k, v in s["values"].items() if is_checked(k)}
            at = next((i for i, h in enumerate(self.history) if h == served), None)
            check(f"{self.name}: served a scripted state, in order", at is not None,
                  {k: (served.get(k), self.mirror.get(k)) for k in set(served) | set(self.mirror)
                   if served.get(k) != self.mirror.get(k)})
            if at is not None:
                del self.history[:at]
            self.served.append(s)

    def stop(self):
        """Stops accepting, lets a scrape in flight finish, takes the last scrapes; exit 0."""
        if self.proc is None:
            return
        self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
        self.proc.stdin.flush()
        self._keep(json.loads(self._line())["served"])
        check(f"{self.name}: ipamd_go exited cleanly", self.proc.wait(timeout=10) == 0)
        self.proc = None

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def is_checked(series):
    """The samples the test scripts and checks: every ipamD family but the histograms and the
    build info (their values are the library's or the start-up's, not the test's)."""
    name = series.split("{", 1)[0]
    for suffix in ("_sum", "_count"):
        if name.endswith(suffix) and INV.get(name[:-len(suffix)], ("",))[0] == "summary":
            return True
    return name in INV and INV[name][0] in ("counter", "gauge") and name != "awscni_build_info"


APIS = ["AssignPrivateIpAddresses", "AttachNetworkInterface", "CreateNetworkInterface", "CreateTags",
        "DeleteNetworkInterface", "DescribeInstances", "DescribeNetworkInterfaces", "DetachNetworkInterface",
        "GetMetadata", "ModifyNetworkInterfaceAttribute", "UnassignPrivateIpAddresses"]
ACTIONS = ["decreaseIPPool", "increaseIPPool", "nodeIPPoolReconcile", "nodeInit", "retryAllocENIIP"]


def baseline(p, rng):
    """A node as ipamD shows it a while after start: ENIs and IPs, per-ENI and per-CIDR splits,
    EC2 calls and their latencies, the start-up histograms, the connmark backend."""
    enis = rng.randint(1, 3)
    p.set("awscni_eni_max", 4)
    p.set("awscni_ip_max", 29)
    p.set("awscni_eni_allocated", enis)
    p.set("awscni_total_ip_addresses", enis * 5)
    assigned = rng.randint(0, enis * 5)
    p.set("awscni_assigned_ip_addresses", assigned)
    p.set("awscni_total_ipv4_prefixes", 0)
    for e in range(enis):
        p.set("awscni_assigned_ip_per_eni", assigned if e == 0 else 0, eni="eni-%016x" % rng.getrandbits(64))
    p.set("awscni_assigned_ip_per_cidr", assigned, cidr="10.%d.%d.0/32" % (rng.randint(0, 255), rng.randint(0, 255)))
    for fn in ACTIONS:
        p.set("awscni_ipamd_action_inprogress", 0, fn=fn)
    for api in APIS:
        p.add("awscni_ec2api_req_count", rng.randint(1, 9), fn=api)
        p.observe("awscni_aws_api_latency_ms", rng.randint(20, 900), api=api, error="false", status="200")
    p.add("awscni_reconcile_count", rng.randint(1, 50), fn="eniReconcileAdd")
    p.add("awscni_add_ip_req_count", rng.randint(0, 40))
    p.add("awscni_del_ip_req_count", rng.randint(0, 30), reason="PodDeleted")
    p.cmd(op="observe", name="awscni_ipamd_startup_duration_seconds",
          labels={"success": "true", "with_api_server": "true", "failure_reason": ""}, value=1.7)
    p.cmd(op="observe", name="awscni_ipamd_node_initialization_duration_seconds", labels={"success": "true"},
          value=0.9)
    p.set("awscni_connmark_backend", 1, backend="iptables")


def churn(p, rng):
    """A round's worth of activity on a node: pods come and go, EC2 calls, gauges move."""
    p.add("awscni_add_ip_req_count", rng.randint(0, 5))
    p.add("awscni_del_ip_req_count", rng.randint(0, 5), reason="PodDeleted")
    api = rng.choice(APIS)
    p.add("awscni_ec2api_req_count", rng.randint(0, 3), fn=api)
    p.observe("awscni_aws_api_latency_ms", rng.randint(5, 2000), api=api, error="false", status="200")
    p.add("awscni_reconcile_count", rng.randint(0, 2), fn="eniReconcileAdd")
    total = p.mirror["awscni_total_ip_addresses"]
    p.set("awscni_assigned_ip_addresses", rng.randint(0, int(total)))
    p.set("awscni_ipamd_action_inprogress", rng.randint(0, 1), fn=rng.choice(ACTIONS))


def fetch(p, accept_encoding):
    """One GET /metrics of our own: (headers, raw body, text)."""
    c = http.client.HTTPConnection(p.ip, p.port, timeout=10)
    hdrs = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
    c.request("GET", "/metrics", headers=hdrs)  # http.client says identity by default
    r = c.getresponse()
    raw = r.read()
    headers = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    text = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
    return r.status, headers, raw, text.decode()


def peer_self_check(p):
    """The peer against the release's inventory, and its answers with and without gzip."""
    st, h, raw, text = fetch(p, "")
    check("peer: identity answer 200, chunked", st == 200 and h.get("transfer-encoding") == "chunked"
          and "content-encoding" not in h, (st, h))
    st_gz, h_gz, raw_gz, text_gz = fetch(p, "gzip")
    check("peer: gzip answer when asked", st_gz == 200 and h_gz.get("content-encoding") == "gzip", (st_gz, h_gz))
    print(f"peer /metrics: {len(raw)} bytes identity, {len(raw_gz)} bytes gzip "
          f"(gzip answer {'chunked' if h_gz.get('transfer-encoding') == 'chunked' else 'with Content-Length'})")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    fams_gz = {f.name: f for f in text_string_to_metric_families(text_gz)}

    def awscni(fs):
        return {n: sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples)
                for n, f in fs.items() if n.startswith("awscni_")}
    check("peer: gzip body = identity body (awscni samples)", awscni(fams) == awscni(fams_gz))
    never = {"awscni_ipamd_error_count", "awscni_pod_eni_error_count", "awscni_aws_api_error_count",
             "awscni_aws_utils_error_count", "awscni_ec2api_error_count"}
    seen = {n for n in fams if n.startswith("awscni_")}
    # The text parser strips a counter's _total; our inventory names ipamD's families as served.
    served_names = {n for n in seen} | {n + "_total" for n in seen if fams[n].type == "counter"}
    check("peer: every ipamD family but the not-yet-incremented vectors is served",
          {n for n in INV if n not in never} <= served_names and not (never & served_names),
          sorted(set(INV) - never - served_names))
    for n in seen:
        inv_name = n if n in INV else n + "_total"
        kind, labels, help_ = INV.get(inv_name, (None, None, None))
        f = fams[n]
        got_labels = sorted({k for s in f.samples for k in s.labels if k not in ("quantile", "le")})
        check(f"peer: {inv_name} type, help and labels as ipamD's", (f.type, f.documentation, got_labels) ==
              (kind, help_, labels), ((f.type, f.documentation, got_labels), (kind, help_, labels)))
    check("peer: summary with no objectives (no quantiles)",
          not any("quantile" in s.labels for s in fams["awscni_aws_api_latency_ms"].samples))
    check("peer: real go_* and process_* families", "go_goroutines" in fams and "process_start_time_seconds" in fams
          and "go_memstats_alloc_bytes" in fams and "process_resident_memory_bytes" in fams, sorted(fams)[:5])
    # Our client has the last byte a moment before the peer's tap has seen its write return.
    for _ in range(100):
        p.collect()
        if len(p.served) >= 2:
            break
        time.sleep(0.02)
    mine = p.served[-2:]
    check("peer: its wire record matches what the client saw",
          [(s["chunked"], s["content_encoding"], s["accept_encoding"]) for s in mine] ==
          [(True, "", "identity"), (h_gz.get("transfer-encoding") == "chunked", "gzip", "gzip")], mine and
          [(s["chunked"], s["content_encoding"], s["accept_encoding"], s["wire_bytes"]) for s in mine])
    p.served.clear()


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    if not check("ipamd_go built (golang-go and golang-github-prometheus-client-golang-dev: make deps)",
                 os.access(GO_PEER, os.X_OK), GO_PEER):
        return
    t0 = time.monotonic()
    rng = random.Random(14)
    peers = [Peer(f"node-{i}", f"127.94.0.{i + 1}") for i in range(8)]
    late = Peer("node-late", "127.94.0.9", free_port("127.94.0.9"))
    restarted, stopped = peers[2], peers[5]
    cw = daemon = None
    try:
        for p in peers:
            p.start()
            baseline(p, rng)
        peer_self_check(peers[0])
        cw = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py"),
                               "--key", "AKIDGO:go-secret", "--region", "us-west-2", "--lifetime", "120"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        standin = "http://127.0.0.1:%s" % re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
        targets = ",".join(f"{p.name}={p.ip}:{p.port}" for p in peers + [late])
        env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
               "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "go-truth", "AWS_ACCESS_KEY_ID": "AKIDGO",
               "AWS_SECRET_ACCESS_KEY": "go-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": standin,
               "AWS_EC2_METADATA_DISABLED": "true", "LOG_FORMAT": "json",
               "METRIC_UPDATE_INTERVAL": "%dms" % INTERVAL_MS, "STALE_ROUNDS": str(STALE_ROUNDS),
               "SCRAPE_JITTER": "0", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0",
               "HTTP_TIMEOUT": "2", "SHUTDOWN_TIMEOUT": "5"}
        daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)

        # One step after each round; the next round scrapes its result.
        def step(r):
            live = [p for p in peers + [late] if p.proc is not None]
            for p in live:
                churn(p, rng)
            if r == 2:  # a labelled counter family no node had: its first increment on one node
                peers[3].add("awscni_ipamd_error_count", 3, fn="nodeIPPoolReconcile")
                peers[1].add("awscni_no_available_ip_addresses", 2)
            elif r == 3:  # a restart: a new process, counters from 0, a few increments already
                restarted.stop()
                restarted.start()
                baseline(restarted, rng)
            elif r == 4:  # a node stops answering
                stopped.stop()
            elif r == 5:  # a node joins, with counts of its own before its first scrape
                # client_golang's process_start_time_seconds is /proc/stat's btime (whole
                # seconds) plus the start ticks: up to 1 s early. Started 1.1 s after the
                # round's start, it still reads as after it.
                time.sleep(1.1)
                late.start()
                baseline(late, rng)
                late.add("awscni_aws_api_error_count", 1, api="DescribeInstances", error="RequestLimitExceeded")
            elif r == 6:  # the late node's family grows; another appears on a node seen before
                late.add("awscni_aws_api_error_count", 2, api="DescribeInstances", error="RequestLimitExceeded")
                peers[4].add("awscni_aws_utils_error_count", 1, fn="GetENILimits", error="unknown")

        summaries = []
        longest = 0.0
        for r in range(1, ROUNDS + 1):
            s = read_events(daemon, "round", 15)
            if not check(f"round {r} finished", s is not None):
                return
            summaries.append(s)
            for p in peers + [late]:
                if p.proc is not None:
                    p.collect()
            if r < ROUNDS:
                t = time.monotonic()
                step(r)
                longest = max(longest, time.monotonic() - t)
        stop_proc(daemon)
        daemon = None
        for p in peers + [late]:
            p.stop()

        datums = json.loads(http_body(standin + "/datums"))
        stats = json.loads(http_body(standin + "/stats"))
        check("CloudWatch stand-in: every request signed and valid", stats["bad_signature"] == 0 and
              stats["invalid_params"] == 0 and stats["duplicates"] == 0, stats)
        by_ts = {}
        for d in datums:
            by_ts.setdefault(d["timestamp_ms"], []).append(d)
        tss = sorted(by_ts)[:ROUNDS]
        if not check("one timestamp per round", len(tss) == ROUNDS, (len(tss), ROUNDS)):
            return
        verify(peers + [late], tss, by_ts, summaries, restarted, stopped, late)
        print(f"whole test: {time.monotonic() - t0:.1f} s; longest step between rounds {longest:.2f} s "
              f"(interval {INTERVAL_MS / 1000:g} s)")
    finally:
        stop_proc(daemon)
        if cw is not None:
            cw.stdin.close()
            cw.wait(timeout=10)
        for p in peers + [late]:
            p.kill()


def verify(nodes, tss, by_ts, summaries, restarted, stopped, late):
    """Matches every scrape to its round by time and checks every datum against the model."""
    per_round = [[] for _ in tss]
    for p in nodes:
        for s in p.served:
            i = max((j for j, ts in enumerate(tss) if ts <= s["t_ms"]), default=None)
            if i is None or s["t_ms"] > tss[i] + 0.8 * INTERVAL_MS:
                check(f"{p.name}: every scrape inside a round", i == len(tss) - 1 and s["t_ms"] > tss[i] +
                      0.8 * INTERVAL_MS, (s["t_ms"], tss))  # the round after the last is cut short
                continue
            per_round[i].append((p.name, s))
    encodings = set()
    for i, scrapes in enumerate(per_round):
        names = [n for n, _ in scrapes]
        check(f"round {i + 1}: one scrape per node", len(names) == len(set(names)), names)
        for n, s in scrapes:
            encodings.add(s["accept_encoding"])
            check(f"round {i + 1} {n}: answered 200 over HTTP/1.1, chunked (Go's server past 2 KB)",
                  s["status"] == 200 and s["proto"] == "HTTP/1.1" and s["chunked"], s)
            wants_gzip = "gzip" in s["accept_encoding"]
            check(f"round {i + 1} {n}: gzip exactly when asked",
                  (s["content_encoding"] == "gzip") == wants_gzip, (s["accept_encoding"], s["content_encoding"]))
    print("Accept-Encoding the daemon sent: %s" % sorted(encodings))
    check("the daemon asks every node for gzip (SCRAPE_GZIP's default), so the datums below come from "
          "inflated bodies", encodings == {"gzip"}, encodings)

    model = Model(STALE_ROUNDS)
    differ, lacking = [], []  # (round, {metric: (got, expected)})
    zero_rounds = []
    fresh_by_round = []
    for i, ts in enumerate(tss):
        served = dict((n, s) for n, s in per_round[i])
        truth = [{"node": p.name, "ok": p.name in served, "values": served[p.name]["values"] if p.name in served
                  else {}} for p in nodes]
        fresh_by_round.append({n: s["values"] for n, s in served.items()})
        exp = model.round(ts, truth)
        # From the second round on, with a node answering, every counter of the table is
        # published: 0 when no node that answered has the family. Checked apart from the rest.
        zero = {}
        if i > 0 and served:
            families = {k.split("{", 1)[0] for s in served.values() for k in s["values"]}
            zero = {cw: 0.0 for fam, (cw, kind) in TABLE.items() if kind == "counter" and fam not in families}
        if zero:
            zero_rounds.append(i + 1)
        got = {}
        for d in by_ts[ts]:
            check("datum namespace and dimension", d["namespace"] == "Kubernetes" and
                  d["dimensions"] == {"CLUSTER_ID": "go-truth"}, d)
            check(f"round {i + 1}: one value per metric", d["metric"] not in got, d["metric"])
            got[d["metric"]] = ((d["stats"]["count"], d["stats"]["sum"], d["stats"]["min"], d["stats"]["max"])
                                if "stats" in d else d["value"])
        present = {k: v for k, v in got.items() if k not in zero}
        exp = {k: v for k, v in exp.items() if k not in zero}
        if present != exp:
            differ.append((i + 1, {k: (present.get(k), exp.get(k)) for k in set(present) | set(exp)
                                   if present.get(k) != exp.get(k)}))
        missing = {k: (got.get(k), 0.0) for k in zero if got.get(k) != 0.0}
        if missing:
            lacking.append((i + 1, missing))
        check(f"round {i + 1}: datum count = the daemon's", len(by_ts[ts]) == summaries[i]["datums"],
              (len(by_ts[ts]), summaries[i]["datums"]))
        check(f"round {i + 1}: fresh/stale/failed = the truth's", (summaries[i]["fresh"], summaries[i]["stale"],
              summaries[i]["failed"]) == (exp["scrapeTargetsFresh"], exp["scrapeTargetsStale"],
                                          exp["scrapeTargetsFailed"]), (summaries[i], exp))
    check(f"every datum of every round equals the truth ({len(tss)} rounds)", not differ,
          f"{len(differ)} rounds differ (got, expected): {differ[:2]}")
    check("from the second round every counter of the metric table is published, 0 when no node that "
          "answered has the family", not lacking,
          f"{len(lacking)} of rounds {zero_rounds} lack them (got, expected): {lacking[:2]}")

    # The scenario happened as scripted (in the truth, whatever the timing).
    check("scenario: counter families on no node that answered, from round 2", 2 in zero_rounds, zero_rounds)
    def fam_on(i, fam):
        """The nodes that served a series of fam in round i + 1."""
        return [n for n, v in fresh_by_round[i].items() if any(k.split("{")[0] == fam for k in v)]
    late_fam = [i for i in range(1, len(tss)) if fam_on(i, "awscni_ipamd_error_count") and
                not any(fam_on(j, "awscni_ipamd_error_count") for j in range(i))]
    check("scenario: a labelled counter family appears late on a node seen before", late_fam and
          set(fam_on(late_fam[0], "awscni_ipamd_error_count")) <= set(fresh_by_round[late_fam[0] - 1]), late_fam)
    (old_start, _), (new_start, spawned) = restarted.starts
    check("scenario: the restart is a new process with a real later start time",
          new_start > old_start and abs(new_start - spawned) < 2.0, (old_start, new_start, spawned))
    starts = [v["process_start_time_seconds"] for r in fresh_by_round for n, v in r.items() if n == restarted.name]
    check("scenario: the restarted node answered before and after", len(set(starts)) == 2, starts)
    gone = [i for i, r in enumerate(fresh_by_round) if stopped.name not in r]
    check("scenario: the stopped node failed past STALE_ROUNDS, to the end", len(gone) >= STALE_ROUNDS + 1 and
          gone == list(range(len(tss) - len(gone), len(tss))), gone)
    first_late = [i for i, r in enumerate(fresh_by_round) if late.name in r]
    check("scenario: the late node joined after the first rounds, its process started after the "
          "previous round", first_late and first_late[0] >= 2 and
          late.starts[0][0] * 1000 > tss[first_late[0] - 1], (first_late, late.starts, tss))


main()
finish()
