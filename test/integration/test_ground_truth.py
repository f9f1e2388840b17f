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
DATA = os.environ["CMH_DATA_DIR"]
SIM = os.path.join(BUILD, "test", "ipamd_sim")
TEMPLATE = os.path.join(DATA, "ipamd/cni_test1.data")



sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures, finish, read_events, stop_proc  # noqa: E402
from truth_model import TABLE, Model, ts_ms  # noqa: E402

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

            def each(ev):
                if ev.get("msg") == "datum":
                    if ev["metric"] in datums:
                        check(f"{name}: one value per metric (round {r + 1})", False, ev["metric"])
                    datums[ev["metric"]] = ev
            summary = read_events(daemon, "round", deadline - time.monotonic(), each)
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
            rc = stop_proc(daemon)
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


FAST_FAULTS = "refuse=5%,reset=3%,status500=3%,garbage=2%,truncate=3%,ctype=2%,badtext=3%,oversize=1%,chunked=5%,eofbody=5%"
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
finish()
