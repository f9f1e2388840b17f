"""`make demo`: a simulated cluster, the daemon, and what it publishes to "CloudWatch".

Starts the ipamD fleet simulator (36 nodes on 127.80.0.x with changing values, two of them
unreachable), the CloudWatch stand-in (botocore checks every signature and request), and the
daemon with static credentials and every endpoint pointing at them; runs a few rounds, stepping the
simulator between rounds; then prints, per round, what arrived at the stand-in. Loopback only.

Usage: demo.py BUILD_DIR [ROUNDS]"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
tmp = tempfile.mkdtemp(prefix="cmh-demo-")


def post(url, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10) as r:
        return r.read()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


procs = []
try:
    sim_args = [os.path.join(build, "test", "ipamd_sim"), "--nodes", "36", "--base", "127.80.0.1",
                "--seed", "2026", "--targets-out", os.path.join(tmp, "targets"), "--workers", "1",
                "--faults", "refuse=34-35"]
    sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(sim)
    control = "http://" + re.search(r"control=(\S+)", sim.stdout.readline()).group(1)
    cw = subprocess.Popen(["/usr/bin/python3", os.path.join(src, "test/sim/cloudwatch_standin.py"),
                           "--key", "AKIDDEMO:demo-secret", "--region", "eu-west-1", "--lifetime", "120"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(cw)
    standin = "http://127.0.0.1:" + re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
    env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "true",
           "AWS_REGION": "eu-west-1", "AWS_CLUSTER_ID": "demo-cluster", "AWS_ACCESS_KEY_ID": "AKIDDEMO",
           "AWS_SECRET_ACCESS_KEY": "demo-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": standin,
           "AWS_EC2_METADATA_DISABLED": "true", "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
           "SCRAPE_TIMEOUT": "1s", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0",
           "LOG_FORMAT": "text"}
    print("ipamD simulator: 36 nodes on 127.80.0.1-36:61678 (2 refuse connections)")
    print(f"CloudWatch stand-in: {standin} (botocore checks every signature and request)")
    print("daemon: build/cni-metrics-helper with SCRAPE_TARGETS, AWS_ENDPOINT_URL_CLOUDWATCH, "
          "static keys; its round lines:\n")
    daemon = subprocess.Popen([os.path.join(build, "cni-metrics-helper")], env=env,
                              stderr=subprocess.PIPE, text=True)
    procs.append(daemon)
    done = 0
    deadline = time.monotonic() + 60
    while done < rounds and time.monotonic() < deadline:
        line = daemon.stderr.readline()
        if not line:
            break
        if " msg=round " in line:
            print("  " + re.sub(r"^ts=\S+ level=\S+ ", "", line.rstrip()))
            done += 1
            if done < rounds:
                post(control + "/advance")  # the cluster changes between rounds
                time.sleep(0.5)
                daemon.send_signal(signal.SIGUSR1)
        elif "level=error" in line or "level=warn" in line:
            print("  " + re.sub(r"^ts=\S+ ", "", line.rstrip())[:160])
    daemon.send_signal(signal.SIGTERM)  # flushes what is queued
    daemon.wait(timeout=20)
    datums = get(standin + "/datums")
    stats = get(standin + "/stats")
    by_ts = {}
    for d in datums:
        by_ts.setdefault(d["timestamp_ms"], {})[d["metric"]] = d
    tss = sorted(by_ts)
    print(f"\nWhat arrived at CloudWatch: {len(datums)} datums in {stats['accepted']} accepted "
          f"PutMetricData calls (gzip: {stats['gzip_requests']}), namespace Kubernetes, "
          f"dimension CLUSTER_ID=demo-cluster, {len(by_ts)} rounds stamped " +
          ", ".join(time.strftime("%H:%M:%S", time.gmtime(ts / 1000)) + ".%03d" % (ts % 1000)
                    for ts in tss) + ":\n")
    metrics = []
    for ts in tss:
        for m in by_ts[ts]:
            if m not in metrics:
                metrics.append(m)

    def fmt(d):
        if d is None:
            return "-"
        if "stats" in d:
            s = d["stats"]
            return "%.1f (n=%g)" % (s["sum"] / s["count"], s["count"])
        v = d["value"]
        return "%.1f" % v if v != int(v) else "%d" % v

    header = "%-28s %-12s" % ("metric", "unit") + "".join(" %16s" % ("round %d" % (i + 1))
                                                          for i in range(len(tss)))
    print(header)
    print("-" * len(header))
    for m in metrics:
        unit = next(by_ts[ts][m]["unit"] for ts in tss if m in by_ts[ts])
        print("%-28s %-12s" % (m, unit) + "".join(" %16s" % fmt(by_ts[ts].get(m)) for ts in tss))
    print("\nCounters (addReqCount, ipamdErr, ...) start in round 2: they are increases since the "
          "previous scrape.\nawsAPILatency is a statistic set: the round's mean latency in ms (n = calls).")
finally:
    for p in reversed(procs):
        if p.poll() is None:
            if p.stdin:
                p.stdin.close()
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
