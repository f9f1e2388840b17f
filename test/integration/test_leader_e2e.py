"""Two replicas with LEADER_ELECTION=true against the fake Kubernetes API (Lease, aws-node pods on
the ipamD simulator) and the CloudWatch stand-in: exactly one publishes at a time (their
leadership intervals never overlap, and the stand-in holds exactly the datums the replicas say
they published), and when the leader stops the other takes over within one lease duration."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
SHARED = os.environ["CMH_SHARED_DIR"]
LEASE_S = 1.5

tmp = tempfile.mkdtemp(prefix="cmh-leader-")
sim = subprocess.Popen([os.path.join(BUILD, "test", "ipamd_sim"), "--nodes", "4", "--base", "127.79.0.1",
                        "--template", os.path.join(SHARED, "testdata/ipamd/cni_test1.data"),
                        "--targets-out", os.path.join(tmp, "targets"), "--workers", "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
api = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                        os.path.join(tmp, "token"), "--lifetime", "120"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
cw = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py"),
                       "--key", "AKIDLEAD:lead-secret", "--region", "us-west-2", "--lifetime", "120"],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
replicas = {}
events = []  # (monotonic time, replica, event dict)
lock = threading.Lock()


def reader(name, p):
    for line in p.stderr:
        try:
            ev = json.loads(line)
        except ValueError:
            ev = {"msg": "non-json", "line": line}
        with lock:
            events.append((time.monotonic(), name, ev))


def start(name, port, ca, token, standin):
    env = {"PATH": "/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
           "K8S_CA_FILE": ca, "K8S_TOKEN_FILE": token, "POD_NAME": name, "LEADER_ELECTION": "true",
           "LEADER_ELECTION_LEASE_DURATION": "1500ms", "LEADER_ELECTION_RENEW_DEADLINE": "1000ms",
           "LEADER_ELECTION_RETRY_PERIOD": "200ms", "USE_CLOUDWATCH": "true", "AWS_REGION": "us-west-2",
           "AWS_CLUSTER_ID": "lead", "AWS_ACCESS_KEY_ID": "AKIDLEAD", "AWS_SECRET_ACCESS_KEY": "lead-secret",
           "AWS_ENDPOINT_URL_CLOUDWATCH": standin, "AWS_EC2_METADATA_DISABLED": "true",
           "METRIC_UPDATE_INTERVAL": "1", "SCRAPE_JITTER": "0", "LOG_FORMAT": "json",
           "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "SHUTDOWN_TIMEOUT": "5"}
    p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=reader, args=(name, p), daemon=True).start()
    replicas[name] = p


def leadership_intervals(until):
    """Per replica, the [start, end) intervals in which it said it was leader."""
    out = {}
    with lock:
        evs = list(events)
    for name in replicas:
        cur, spans = None, []
        for t, n, ev in evs:
            if n != name:
                continue
            if ev.get("msg") == "leader: publishing" and cur is None:
                cur = t
            elif ev.get("msg") in ("not leader: not publishing", "stopping") and cur is not None:
                spans.append((cur, t))
                cur = None
        if cur is not None:
            spans.append((cur, until))
        out[name] = spans
    return out


try:
    check("simulator ready", sim.stdout.readline().startswith("READY"))
    m = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", api.stdout.readline())
    port, ca, token = m.groups()
    standin = "http://127.0.0.1:" + re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
    for i, line in enumerate(open(os.path.join(tmp, "targets"))):
        node, ip, _ = line.split()
        api.stdin.write(f"add aws-node-{i} {node} {ip}\n")
        api.stdin.flush()
        api.stdout.readline()
    start("replica-a", port, ca, token, standin)
    time.sleep(0.5)
    start("replica-b", port, ca, token, standin)
    time.sleep(5)
    spans = leadership_intervals(time.monotonic())
    leaders = [n for n, s in spans.items() if s and s[-1][1] >= time.monotonic() - 0.01]
    check("exactly one leader", len(leaders) == 1, spans)
    leader = leaders[0] if leaders else "replica-a"
    other = "replica-b" if leader == "replica-a" else "replica-a"

    # The leader stops (SIGTERM releases the lease): the other takes over within one lease.
    t_stop = time.monotonic()
    replicas[leader].send_signal(signal.SIGTERM)
    rc = replicas[leader].wait(timeout=15)
    check("stopped leader exits 0", rc == 0, rc)
    deadline = time.monotonic() + 10
    took = None
    while time.monotonic() < deadline and took is None:
        with lock:
            for t, n, ev in events:
                if n == other and ev.get("msg") == "leader: publishing" and t > t_stop:
                    took = t - t_stop
        time.sleep(0.05)
    check("failover within one lease duration", took is not None and took <= LEASE_S + 1.0, took)
    time.sleep(3)
    end = time.monotonic()
    spans = leadership_intervals(end)
    all_spans = sorted((s, e, n) for n, ss in spans.items() for s, e in ss)
    overlap = [(a, b) for a, b in zip(all_spans, all_spans[1:]) if b[0] < a[1] and a[2] != b[2]]
    check("leadership intervals never overlap", not overlap, all_spans)
    replicas[other].send_signal(signal.SIGTERM)
    replicas[other].wait(timeout=15)

    # The stand-in holds exactly what the two replicas say they published, and no period twice.
    published = 0
    with lock:
        for t, n, ev in events:
            if ev.get("msg") == "stopped":
                published += int(ev.get("cw_published", 0))
    datums = json.loads(urllib.request.urlopen(standin + "/datums", timeout=10).read())
    check("datums at the stand-in = published by the replicas", len(datums) == published and published > 0,
          (len(datums), published))
    ts = sorted({d["timestamp_ms"] for d in datums if d["metric"] == "scrapeTargets"})
    dup = [(a, b) for a, b in zip(ts, ts[1:]) if b - a < 500]
    check("no round published twice (rounds 1 s apart)", not dup, dup)
    with lock:
        nonjson = [ev for _, _, ev in events if ev.get("msg") == "non-json"]
    check("logs clean", not nonjson, nonjson[:3])
finally:
    for p in replicas.values():
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    for p in (api, cw):
        p.stdin.close()
        p.wait(timeout=10)
    sim.terminate()
    sim.wait(timeout=10)
finish()
