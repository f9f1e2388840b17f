#!/usr/bin/python3
"""Scrape engine against the ipamD fleet simulator (test/sim/ipamd_sim.c).

  scrape_fleet.py faults SIM BENCH  every injected fault gives its result class, every good node's
                                    samples match the simulator's truth, and one body read with
                                    python3-prometheus-client (an independent parser) carries
                                    exactly the truth's values
  scrape_fleet.py churn SIM BENCH   1000 rounds with churn, restarts and random faults: no fd or
                                    memory growth, open sockets bounded by the concurrency
  scrape_fleet.py idle SIM BENCH    ipamD's idle close (here 300 ms) between rounds costs nothing:
                                    fresh connects, no failures; short gaps reuse connections
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

EXPECT = {
    "none": "ok", "chunked": "ok", "eofbody": "ok",
    "refuse": "connect_refused", "stall": "response_timeout", "trickle": "response_timeout",
    "reset": "reset", "status500": "http_status", "garbage": "malformed_http",
    "truncate": "truncated", "oversize": "body_too_large", "ctype": "content_type",
    "badtext": "parse_error", "bomb": "gzip_too_large", "gzcut": "gzip_error",
    "encoding": "content_encoding",
}
QUANTILE_LINES = 18  # awscni_aws_api_latency_ms: 6 apis x 3 quantiles (NaN), not in the truth


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


class Sim:
    def __init__(self, sim_bin, tmp, nodes, extra):
        pid = os.getpid()
        # a private slice of 127/8 and a port of our own, so parallel tests never collide
        self.base = "127.%d.%d.1" % (150 + pid % 100, (pid // 100) % 250)
        self.port = 20000 + pid % 20000
        self.targets = os.path.join(tmp, "targets")
        self.truth = os.path.join(tmp, "truth")
        os.makedirs(self.truth, exist_ok=True)
        cmd = [sim_bin, "--nodes", str(nodes), "--base", self.base, "--port", str(self.port),
               "--targets-out", self.targets, "--truth-dir", self.truth] + extra
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"READY control=(\S+) ", line)
        if not m:
            self.stop()
            fail("simulator did not start: %r" % line)
        self.control = m.group(1)

    def call(self, method, path, body=b""):
        req = urllib.request.Request("http://%s%s" % (self.control, path), data=body if method ==
                                     "POST" else None, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def nodes(self, epoch):
        with open(os.path.join(self.truth, "epoch-%06d.nodes.jsonl" % epoch)) as f:
            return [json.loads(l) for l in f]


def run_bench(bench_bin, args, timeout):
    p = subprocess.run([bench_bin] + args, capture_output=True, text=True, timeout=timeout)
    rounds = [dict(kv.split("=", 1) for kv in l.split()[1:])
              for l in p.stdout.splitlines() if l.startswith("ROUND ")]
    summary = [l for l in p.stdout.splitlines() if l.startswith("SUMMARY ")]
    if p.returncode != 0 or not summary:
        print(p.stdout[-3000:], p.stderr[-3000:])
        fail("bench_scrape exited %d" % p.returncode)
    if "loop_close=0" not in summary[0]:
        fail("uv_loop_close() != 0: " + summary[0])
    return rounds, p.stderr


def records(path):
    out = {}
    with open(path) as f:
        for l in f:
            rnd, name, result, status, nbytes, dur, reused, samples = l.split()
            out[(int(rnd), name)] = (result, int(samples), int(reused), int(nbytes))
    return out


def test_faults(sim_bin, bench_bin, tmp):
    kinds = ["refuse", "stall", "trickle", "reset", "status500", "garbage", "truncate",
             "oversize", "ctype", "badtext", "chunked", "eofbody", "bomb", "gzcut", "encoding"]
    # two nodes of every kind, then 16 healthy ones
    spec = ",".join("%s=%d-%d" % (k, 2 * i, 2 * i + 1) for i, k in enumerate(kinds))
    n = 2 * len(kinds) + 16
    sim = Sim(sim_bin, tmp, n, ["--faults", spec, "--restart", "20"])
    try:
        # one body through an independent parser: the simulator's truth is what it serves
        t0 = sim.nodes(0)
        good = [t for t in t0 if t["ok"] and t["fault"] == "none"][0]
        body = urllib.request.urlopen("http://%s/metrics" % good["addr"], timeout=10).read()
        got = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                if not (s.name.startswith("awscni_") or s.name == "process_start_time_seconds"):
                    continue
                if "quantile" in s.labels:
                    continue
                name = s.name
                if fam.type == "counter" and name.endswith("_total") and \
                        not fam.name.endswith("_total"):
                    name = name[:-len("_total")]  # the client library appends _total
                labels = ",".join('%s="%s"' % kv for kv in s.labels.items())
                got[name + ("{%s}" % labels if labels else "")] = s.value
        if got != good["values"]:
            fail("served body differs from truth: %s" %
                 sorted(set(got.items()) ^ set(good["values"].items()))[:6])

        # gzip on (the default: good nodes answer gzip, chunked), then off: the same results and
        # samples, the good nodes' bodies in about a quarter of the bytes with gzip
        checked = 0
        wire = {}
        for gz, first_epoch in (("1", 0), ("0", 2)):
            rec = os.path.join(tmp, "records." + gz)
            rounds, _ = run_bench(bench_bin, ["--targets", sim.targets, "--rounds", "3",
                                              "--timeout-ms", "400", "--control", sim.control,
                                              "--advance", "1", "--records", rec,
                                              "--keepalive", "1", "--gzip", gz], 120)
            got = records(rec)
            nbytes = 0
            for rnd in (1, 2, 3):
                # the second run's first round scrapes the epoch the first run ended on
                for t in sim.nodes(first_epoch + rnd - 1):
                    result, samples, reused = got[(rnd, t["node"])][:3]
                    want = EXPECT[t["fault"]]
                    if result != want:
                        fail("gzip=%s round %d %s fault=%s: got %s, want %s" %
                             (gz, rnd, t["node"], t["fault"], result, want))
                    if want == "ok" and samples != len(t["values"]) + QUANTILE_LINES:
                        fail("gzip=%s round %d %s: %d samples parsed, truth has %d (+%d quantile "
                             "lines)" % (gz, rnd, t["node"], samples, len(t["values"]),
                                         QUANTILE_LINES))
                    if t["fault"] == "none":
                        nbytes += got[(rnd, t["node"])][3]
                    checked += 1
            if int(rounds[1]["reused"]) == 0:
                fail("no connection was reused in round 2: %s" % rounds[1])
            wire[gz] = nbytes
            gzipped = sum(int(r["gzip"]) for r in rounds)
            # every good node and chunked one in gzip=1; only bomb and gzcut (served gzip unasked)
            # in gzip=0
            if gz == "1" and gzipped < 3 * 16:
                fail("gzip=1: only %d responses came gzip" % gzipped)
            if gz == "0" and gzipped != 3 * 4:
                fail("gzip=0: %d responses came gzip, want the 12 of bomb and gzcut" % gzipped)
        if not wire["1"] * 3 < wire["0"]:
            fail("gzip did not cut the bytes read: %s" % wire)
        print("ok: %d target-rounds match the injected faults and the truth, gzip on and off; "
              "healthy nodes' bytes %d with gzip, %d without" % (checked, wire["1"], wire["0"]))
    finally:
        sim.stop()


def asan_build():
    cache = os.path.join(os.environ.get("CMH_BUILD_DIR", ""), "CMakeCache.txt")
    try:
        with open(cache) as f:
            return "CMH_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


def test_churn(sim_bin, bench_bin, tmp):
    n, conc = 40, 16
    sim = Sim(sim_bin, tmp, n, ["--churn", "5", "--restart", "5", "--faults",
                                "stall=2%,trickle=1%,reset=2%,truncate=2%,status500=2%,"
                                "garbage=1%,refuse=2%,chunked=5%,eofbody=5%"])
    try:
        t = time.time()
        rounds, _ = run_bench(bench_bin, ["--targets", sim.targets, "--rounds", "1000",
                                          "--timeout-ms", "25", "--concurrency", str(conc),
                                          "--control", sim.control, "--advance", "1",
                                          "--keepalive", "1", "--log-failures", "1"], 280)
        took = time.time() - t
        if len(rounds) != 1000:
            fail("%d rounds ran" % len(rounds))
        classes = {}
        for r in rounds:
            total = int(r["ok"]) + int(r["fail"])
            if total != n:
                fail("round %s accounted %d targets" % (r["r"], total))
            for k, v in r.items():
                if k in EXPECT.values() or k in ("connect_timeout", "skipped"):
                    classes[k] = classes.get(k, 0) + int(v)
        for need in ("connect_refused", "response_timeout", "reset", "truncated", "http_status",
                     "malformed_http"):
            if classes.get(need, 0) == 0:
                fail("churn never produced %s: %s" % (need, classes))
        fds = [int(r["fds"]) for r in rounds]
        rss = [int(r["rss_kb"]) for r in rounds]
        base_fds = min(fds)
        if max(fds) > base_fds + conc:
            fail("open fds exceed the concurrency bound: min %d max %d" % (base_fds, max(fds)))
        if max(fds[500:]) > max(fds[:500]):
            fail("fds grew: first half max %d, second half max %d" % (max(fds[:500]),
                                                                     max(fds[500:])))
        if not asan_build() and rss[-1] > rss[99] + 512:
            fail("RSS grew from %d kB (round 100) to %d kB (round 1000)" % (rss[99], rss[-1]))
        stats = sim.call("GET", "/stats")
        print("ok: 1000 rounds in %.1f s, results %s, fds %d..%d, rss %d -> %d kB, sim %s" %
              (took, classes, min(fds), max(fds), rss[99], rss[-1], stats))
    finally:
        sim.stop()


def test_idle(sim_bin, bench_bin, tmp):
    n = 30
    sim = Sim(sim_bin, tmp, n, ["--idle-timeout-ms", "300"])
    try:
        # gaps longer than the server's idle timeout: every round connects afresh, no failure
        slow, _ = run_bench(bench_bin, ["--targets", sim.targets, "--rounds", "4",
                                        "--gap-ms", "700", "--keepalive", "1"], 60)
        for r in slow:
            if int(r["fail"]) != 0 or int(r["connects"]) != n:
                fail("after idle close: %s" % r)
        # short gaps: connections are reused
        fast, _ = run_bench(bench_bin, ["--targets", sim.targets, "--rounds", "4",
                                         "--gap-ms", "50", "--keepalive", "1"], 60)
        for r in fast[1:]:
            if int(r["fail"]) != 0 or int(r["reused"]) != n or int(r["connects"]) != 0:
                fail("short gaps should reuse every connection: %s" % r)
        print("ok: idle-closed connections reconnect cleanly; short gaps reuse all %d" % n)
    finally:
        sim.stop()


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    what, sim_bin, bench_bin = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        {"faults": test_faults, "churn": test_churn, "idle": test_idle}[what](sim_bin, bench_bin,
                                                                               tmp)


if __name__ == "__main__":
    main()
