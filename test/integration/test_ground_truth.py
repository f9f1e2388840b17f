"""End to end against ground truth: the ipamD fleet simulator (test/sim/ipamd_sim.c) serves nodes
whose values it knows, the daemon scrapes them (log sink, LOG_FORMAT=json) and every datum of every
round must equal what the README's aggregation rules give on the simulator's truth files, exactly.

The expected values are computed here from the simulator's per-node truth (what each node served
and whether a correct scraper gets it), independently of the daemon's code; where the simulator's
own cluster sums apply (no failures, STALE_ROUNDS=0), they are checked too.

Scenarios: steady; nodes joining and leaving; aws-node restarts; partial failures of every fast
failure class; stalled nodes; a series present on only some nodes and label churn (the simulator
does both every round); and a randomized run of 1,000 rounds. The original helper's counter bug
(deltas against one shared previous value) is covered by every counter comparison: each node's
increase is checked against its own previous value.

Usage: test_ground_truth.py [SCENARIO...] (default: all)."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SHARED = os.environ["CMH_SHARED_DIR"]
SIM = os.path.join(BUILD, "test", "ipamd_sim")
TEMPLATE = os.path.join(SHARED, "testdata/ipamd/cni_test1.data")

failures, passed = [], 0


def check(name, cond, detail=""):
    global passed
    if cond:
        passed += 1
    else:
        failures.append(f"{name}: {detail}")
    return cond


def metric_table():
    """family -> (cw name, kind) from the daemon's own table (the spec of what is published)."""
    out = subprocess.run([BIN, "--help-metrics-markdown"], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[2].startswith("`"):
            cw, family, agg = cells[0].strip("`"), cells[2].strip("`"), cells[3]
            kind = ("counter" if agg.startswith("counter") else "gauge" if agg.startswith("gauge")
                    else "latency" if agg.startswith("statistic") else None)
            if kind:
                table[family] = (cw, kind)
    return table


TABLE = metric_table()
LAT_FAMILY = "awscni_aws_api_latency_ms"


def classify(series):
    """series key as served -> (family, kind, is_latency_count) or None."""
    name = series.split("{", 1)[0]
    if name.startswith(LAT_FAMILY + "_"):
        suffix = name[len(LAT_FAMILY) + 1:]
        if suffix in ("sum", "count"):
            return LAT_FAMILY, "latency", suffix == "count"
        return None
    if name in TABLE:
        return name, TABLE[name][1], False
    return None


class Model:
    """The README's aggregation rules, applied to the simulator's truth."""

    def __init__(self, stale_rounds):
        self.stale = stale_rounds
        self.nodes = {}
        self.rounds_finished = 0
        self.prev_start_ms = 0
        self.start_ms = 0

    def round(self, start_ms, truth_nodes):
        if self.start_ms:
            self.prev_start_ms = self.start_ms
        self.start_ms = start_ms
        for t in truth_nodes:
            st = self.nodes.setdefault(t["node"], {"has_state": False, "series": {}, "start": None,
                                                   "fail_streak": 0, "gauges": {}, "present": set()})
            st["fresh"] = False
            if not t["ok"]:
                st["fail_streak"] += 1
                continue
            vals = t["values"]
            start = vals.get("process_start_time_seconds")
            first = not st["has_state"]
            restarted = (not first and start is not None and st["start"] is not None and start != st["start"])
            whole = first and self.prev_start_ms > 0 and start is not None and start * 1000.0 > self.prev_start_ms
            gauges, present, inc, series = {}, set(), {}, {}
            dsum = dcount = 0.0
            for key, v in vals.items():
                c = classify(key)
                if c is None:
                    continue
                fam, kind, is_count = c
                present.add(fam)
                if kind == "gauge":
                    gauges[fam] = gauges.get(fam, 0.0) + v
                    continue
                if first:
                    d = v if whole else 0.0
                elif restarted:
                    d = v
                elif key in st["series"]:
                    last = st["series"][key]
                    d = v - last if v >= last else v
                else:
                    d = v
                series[key] = v
                if kind == "latency":
                    if is_count:
                        dcount += d
                    else:
                        dsum += d
                else:
                    inc[fam] = inc.get(fam, 0.0) + d
            st.update(has_state=True, series=series, start=start, fail_streak=0, gauges=gauges,
                      present=present, fresh=True, inc=inc, dsum=dsum, dcount=dcount)
        # Cluster values, summed in node-name order like the daemon.
        sums, present = {}, set()
        fresh = stale = failed = at_cap = 0
        lat = None
        for name in sorted(self.nodes):
            st = self.nodes[name]
            if st["fresh"]:
                fresh += 1
                contributes = True
                present |= st["present"]
                for fam, d in st["inc"].items():
                    sums[fam] = sums.get(fam, 0.0) + d
                if st["dcount"] > 0:
                    mean = st["dsum"] / st["dcount"]
                    if lat is None:
                        lat = [st["dcount"], st["dsum"], mean, mean]
                    else:
                        lat[0] += st["dcount"]
                        lat[1] += st["dsum"]
                        lat[2] = min(lat[2], mean)
                        lat[3] = max(lat[3], mean)
            else:
                failed += 1
                contributes = st["has_state"] and st["fail_streak"] <= self.stale
                stale += contributes
                if contributes:
                    present |= {f for f in st["present"] if TABLE.get(f, ("", ""))[1] == "gauge"}
            if contributes:
                for fam, v in st["gauges"].items():
                    sums[fam] = sums.get(fam, 0.0) + v
                mx = st["gauges"].get("awscni_ip_max", 0.0)
                at_cap += mx > 0 and st["gauges"].get("awscni_assigned_ip_addresses", 0.0) >= mx
        out = {}
        counters = self.rounds_finished > 0 and fresh > 0
        for fam, (cw, kind) in TABLE.items():
            if fam not in present:
                continue
            if kind == "gauge":
                out[cw] = sums.get(fam, 0.0)
            elif kind == "counter" and counters:
                out[cw] = sums.get(fam, 0.0)
            elif kind == "latency" and counters and lat is not None:
                out[cw] = tuple(lat)
        assigned = sums.get("awscni_assigned_ip_addresses", 0.0)
        mx = sums.get("awscni_ip_max", 0.0)
        if "awscni_assigned_ip_addresses" in present and "awscni_total_ip_addresses" in present:
            out["availableIPAddresses"] = sums.get("awscni_total_ip_addresses", 0.0) - assigned
        if "awscni_assigned_ip_addresses" in present and "awscni_ip_max" in present:
            if mx > 0:
                out["ipUtilization"] = 100.0 * assigned / mx
            out["nodesAtIPCapacity"] = float(at_cap)
        out.update(scrapeTargets=float(len(self.nodes)), scrapeTargetsFresh=float(fresh),
                   scrapeTargetsStale=float(stale), scrapeTargetsFailed=float(failed))
        self.rounds_finished += 1
        return out


def ts_ms(ts):
    t = time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    import calendar
    return calendar.timegm(t) * 1000 + int(ts[20:23])


def run(name, nodes, rounds, faults="", churn=0, restart=0, stale_rounds=2, seed=1,
        scrape_timeout="2s", sim_sums=False):
    tmp = tempfile.mkdtemp(prefix=f"cmh-truth-{name}-")
    base = "127.%d.%d.1" % (40 + (seed % 50), (hash(name) & 0x7f) + 1)
    sim_args = [SIM, "--nodes", str(nodes), "--base", base, "--seed", str(seed), "--template", TEMPLATE,
                "--truth-dir", tmp, "--targets-out", os.path.join(tmp, "targets"), "--workers", "1",
                "--churn", str(churn), "--restart", str(restart)]
    if faults:
        sim_args += ["--faults", faults]
    sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    daemon = None
    try:
        ready = sim.stdout.readline()
        m = re.search(r"control=(\S+)", ready)
        if not check(f"{name}: simulator ready", m is not None, ready):
            return
        control = "http://" + m.group(1)
        targets = []
        for line in open(os.path.join(tmp, "targets")):
            n, ip, port = line.split()
            targets.append(f"{n}={ip}:{port}")
        env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": ",".join(targets), "USE_CLOUDWATCH": "no",
               "LOG_FORMAT": "json", "AWS_CLUSTER_ID": "truth", "METRIC_UPDATE_INTERVAL": "3600",
               "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": scrape_timeout, "STALE_ROUNDS": str(stale_rounds),
               "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "SCRAPE_KEEPALIVE": "false"}
        daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
        model = Model(stale_rounds)
        mismatches = 0
        deadline = time.monotonic() + 600
        for r in range(rounds):
            datums = {}
            summary = None
            for _ in range(100000):
                if time.monotonic() > deadline:
                    break
                line = daemon.stderr.readline()
                if not line:
                    break
                ev = json.loads(line)
                if ev.get("msg") == "datum":
                    if ev["metric"] in datums:
                        check(f"{name}: one value per metric (round {r + 1})", False, ev["metric"])
                    datums[ev["metric"]] = ev
                elif ev.get("msg") == "round":
                    summary = ev
                    break
            if not check(f"{name}: round {r + 1} finished", summary is not None):
                return
            epoch = json.load(open(os.path.join(tmp, "epoch-%06d.json" % r)))
            truth_nodes = [json.loads(l) for l in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % r))]
            start = ts_ms(next(iter(datums.values()))["timestamp"])
            exp = model.round(start, truth_nodes)
            got = {}
            for k, ev in datums.items():
                if "statistics" in ev:
                    s = ev["statistics"]
                    got[k] = (s["sample_count"], s["sum"], s["min"], s["max"])
                else:
                    got[k] = float(ev["value"])
            if got != exp:
                mismatches += 1
                if mismatches <= 3:
                    diff = {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}
                    failures.append(f"{name}: round {r + 1} differs (got, expected): {diff}")
            check(f"{name}: fresh nodes = simulator's ok nodes", summary["fresh"] == epoch["ok"],
                  (r + 1, summary["fresh"], epoch["ok"]))
            if sim_sums and r > 0:
                for fam, v in epoch["sum_gauges"].items():
                    if fam in TABLE and "{" not in fam:
                        check(f"{name}: simulator sum {fam}", got.get(TABLE[fam][0]) == v, (got.get(TABLE[fam][0]), v))
                for key, v in epoch["sum_increase"].items():
                    fam = key.split("{", 1)[0]
                    if fam in TABLE and TABLE[fam][1] == "counter":
                        tot = sum(x for k2, x in epoch["sum_increase"].items() if k2.split("{", 1)[0] == fam)
                        # A family no node serves yet (late series) is not published at all.
                        check(f"{name}: simulator increase {fam}", got.get(TABLE[fam][0], 0.0) == tot,
                              (got.get(TABLE[fam][0]), tot))
            if r + 1 < rounds:
                urllib.request.urlopen(urllib.request.Request(control + "/advance", method="POST"), timeout=10).read()
                daemon.send_signal(signal.SIGUSR1)
        check(f"{name}: every round equals the truth ({rounds} rounds)", mismatches == 0, f"{mismatches} rounds differ")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                rc = daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                rc = None
            check(f"{name}: daemon stopped cleanly", rc == 0, rc)
        try:
            urllib.request.urlopen(urllib.request.Request(control + "/quit", method="POST"), timeout=5).read()
        except Exception:
            pass
        sim.terminate()
        sim.wait(timeout=10)
        for f in glob.glob(os.path.join(tmp, "*")):
            os.unlink(f)
        os.rmdir(tmp)


FAST_FAULTS = "refuse=5%,reset=3%,status500=3%,garbage=2%,truncate=3%,ctype=2%,oversize=1%,chunked=5%,eofbody=5%"
SCENARIOS = {
    "steady": lambda: run("steady", nodes=20, rounds=30, stale_rounds=0, sim_sums=True),
    "join_leave": lambda: run("join_leave", nodes=30, rounds=60, churn=10, seed=2),
    "restarts": lambda: run("restarts", nodes=30, rounds=60, restart=10, seed=3),
    "partial_failures": lambda: run("partial_failures", nodes=40, rounds=60, faults=FAST_FAULTS, seed=4),
    "stalls": lambda: run("stalls", nodes=12, rounds=8, faults="stall=0-1,trickle=2", seed=5,
                          scrape_timeout="300ms", stale_rounds=3),
    "randomized_1000_rounds": lambda: run("randomized_1000_rounds", nodes=30, rounds=1000, faults=FAST_FAULTS,
                                          churn=3, restart=3, stale_rounds=2, seed=6),
}

names = sys.argv[1:] or list(SCENARIOS)
for n in names:
    SCENARIOS[n]()
for f in failures:
    print("FAIL", f)
print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
