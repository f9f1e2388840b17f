"""End to end: ipamD simulator -> daemon -> CloudWatch stand-in (botocore checks every signature
and every PutMetricData against the CloudWatch model). Every datum that arrives equals the
simulator's truth under the README's rules; with 30% of calls throttled or failing and connection
resets for several rounds, nothing is lost or duplicated once the faults stop; with the stand-in
down longer than the buffer holds, the drop count is exact (published + dropped = produced); and
SIGTERM flushes the last round before exit."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, read_events, spawn_cloudwatch_standin, spawn_ipamd_sim, stop_proc  # noqa: E402
from truth_model import Model, check_published_rounds  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]


def http(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


tmp = tempfile.mkdtemp(prefix="cmh-cw-")
sim = spawn_ipamd_sim(BUILD, DATA, tmp, 12, "127.78.0.1", seed=11)
cw, standin = spawn_cloudwatch_standin(SRC, "AKIDE2E:e2e-secret", "us-west-2", 280, "--stall", "2")
daemon = None
try:
    m = re.search(r"control=(\S+)", sim.stdout.readline())
    control = "http://" + m.group(1)
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
    env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
           "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "e2e", "AWS_ACCESS_KEY_ID": "AKIDE2E",
           "AWS_SECRET_ACCESS_KEY": "e2e-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": standin,
           "AWS_EC2_METADATA_DISABLED": "true", "LOG_FORMAT": "json", "METRIC_UPDATE_INTERVAL": "3600",
           "SCRAPE_JITTER": "0", "SCRAPE_KEEPALIVE": "false", "PROMETHEUS_ADDRESS": "127.0.0.1",
           "PROMETHEUS_PORT": "0", "USE_PROMETHEUS": "true", "CW_BACKOFF_BASE": "50ms",
           "CW_BACKOFF_CAP": "300ms", "CW_BUFFER_MAX_DATUMS": "1000", "HTTP_TIMEOUT": "2",
           "SHUTDOWN_TIMEOUT": "8"}
    daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    http_port = None
    model = Model(2)
    expected = {}  # round timestamp_ms -> {metric: value}
    epoch = 0

    def note_port(ev):
        global http_port
        if ev.get("msg") == "listening":
            http_port = ev["port"]

    def next_round(limit_s=30):
        return read_events(daemon, "round", limit_s, note_port)

    def metric(name):
        body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if line.split(" ")[0] == name or name.endswith("}"):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def step():
        global epoch
        http(control + "/advance", "POST")
        epoch += 1
        daemon.send_signal(signal.SIGUSR1)
        return next_round()

    def run_round(first=False):
        r = next_round() if first else step()
        if r is None:
            return None
        truth = [json.loads(l) for l in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % epoch))]
        return r, truth

    def settle(limit_s=30):
        """Waits until the publisher's queue is empty (bounded)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            q = metric("cni_metrics_helper_cloudwatch_queue_datums")
            if q == 0:
                return True
            time.sleep(0.2)
        return False

    # The model needs each round's start time (for the "started after our previous round" rule);
    # it is the timestamp of the round's datums, known once they arrive. Rounds are checked in
    # order after each phase, feeding the model then.
    rounds = []

    def collect(first=False):
        rt = run_round(first)
        check(f"round {len(rounds) + 1} ran", rt is not None)
        rounds.append(rt)
        return rt

    # Phase A: healthy.
    collect(first=True)
    for _ in range(3):
        collect()
    check("phase A drained", settle())
    # Phase B: 30% of calls throttled, failing or reset, for 6 rounds; then healthy again.
    # A scripted burst first (so every kind surely happens), then 30% at random.
    http(standin + "/faults", "POST", {"script": ["throttle", "500", "reset", "503", "throttle429"],
                                       "random": {"rate": 0.3, "kinds": ["throttle", "500", "503", "reset"],
                                                  "seed": 5}})
    for _ in range(14):
        collect()
        time.sleep(0.3)  # rounds apart, as in production: each round's datums in their own calls
    http(standin + "/faults", "POST", {"clear": True})
    collect()
    check("phase B drained", settle())
    st = json.loads(http(standin + "/stats"))
    check("faults were injected", sum(st["faults"].values()) >= 6, st["faults"])

    datums = json.loads(http(standin + "/datums"))
    bad = check_published_rounds(model, datums, rounds, "e2e")
    check("every datum equals the truth, once, through throttling/5xx/resets", bad == 0, bad)
    st = json.loads(http(standin + "/stats"))
    check("no duplicate, bad signature or invalid request", st["duplicates"] == 0 and
          st["bad_signature"] == 0 and st["invalid_params"] == 0, st)
    published_before = metric('cni_metrics_helper_cloudwatch_datums_total{outcome="published"}')
    check("published count = datums received", published_before == len(datums), (published_before, len(datums)))

    # Phase C: the stand-in down for longer than the buffer (1000 datums) holds.
    http(standin + "/faults", "POST", {"down": True})
    produced = 0
    for _ in range(45):
        r = step()
        check("round during outage", r is not None)
        produced += r["datums"]
    http(standin + "/faults", "POST", {"clear": True})
    check("phase C drained", settle(60))
    received = len(json.loads(http(standin + "/datums"))) - len(datums)
    dropped = metric('cni_metrics_helper_cloudwatch_datums_total{outcome="dropped_overflow"}')
    check("outage longer than the buffer drops some", dropped and dropped > 0, dropped)
    check("drop count exact: received + dropped = produced", received + dropped == produced,
          (received, dropped, produced))
    check("buffer bound respected", received <= 1000 + 60, received)

    # Phase D: SIGTERM right after a round: everything queued is flushed before exit.
    r = step()
    daemon.send_signal(signal.SIGTERM)
    stopped = None
    for _ in range(1000):
        line = daemon.stderr.readline()
        if not line:
            break
        ev = json.loads(line)
        if ev.get("msg") == "stopped":
            stopped = ev
    rc = daemon.wait(timeout=20)
    daemon = None
    check("SIGTERM: exit 0", rc == 0, rc)
    total = len(json.loads(http(standin + "/datums")))
    check("SIGTERM: flushed, nothing left behind", stopped is not None and
          stopped.get("cw_dropped_shutdown") == 0 and stopped.get("cw_published") == total,
          (stopped, total))
finally:
    stop_proc(daemon)
    cw.stdin.close()
    cw.wait(timeout=10)
    sim.terminate()
    sim.wait(timeout=10)

finish()
