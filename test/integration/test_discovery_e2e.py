"""The daemon in cluster mode: no SCRAPE_TARGETS; it discovers aws-node pods through the fake
Kubernetes API (TLS, bearer token) and scrapes their hostIPs on the ipamD simulator. Pods added,
deleted and re-IPed take effect at the next round; a 410 mid-watch, a token rotation and an API
outage keep the last known targets; with no aws-node pods /readyz says so."""
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, read_events, spawn_ipamd_sim, stop_proc  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
PY = "/usr/bin/python3"


tmp = tempfile.mkdtemp(prefix="cmh-disc-")
sim = spawn_ipamd_sim(BUILD, DATA, tmp, 6, "127.77.0.1", truth=False)
api = subprocess.Popen([PY, os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                        os.path.join(tmp, "token"), "--lifetime", "280"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
daemon = None


def api_cmd(line):
    api.stdin.write(line + "\n")
    api.stdin.flush()
    return api.stdout.readline().strip()


msgs = []


def note_port(ev):
    msgs.append(ev.get("msg", ""))
    if ev.get("msg") == "listening":
        global http_port
        http_port = ev["port"]


def read_round(limit_s=20):
    return read_events(daemon, "round", limit_s, note_port)


def step(settle=1.0):
    time.sleep(settle)  # lets the watch deliver the change
    daemon.send_signal(signal.SIGUSR1)
    return read_round()


def readyz():
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    c.request("GET", "/readyz")
    r = c.getresponse()
    return r.status, r.read().decode()


try:
    ready = sim.stdout.readline()
    check("simulator ready", ready.startswith("READY"), ready)
    nodes = [l.split() for l in open(os.path.join(tmp, "targets"))]
    api_ready = api.stdout.readline()
    m = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", api_ready)
    check("fake API ready", m is not None, api_ready)
    port, ca, token_file = m.groups()
    for i in range(4):
        name, ip, _ = nodes[i]
        api_cmd(f"add aws-node-{i} {name} {ip}")
    api_cmd("add other-pod nodeX 127.77.0.99 labels=k8s-app=kube-proxy")
    api_cmd("add pending-pod nodeY 127.77.0.98 phase=Pending")
    env = {"PATH": "/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
           "K8S_CA_FILE": ca, "K8S_TOKEN_FILE": token_file, "USE_CLOUDWATCH": "no", "LOG_FORMAT": "json",
           "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": "500ms",
           "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "AWS_CLUSTER_ID": "disc",
           "SCRAPE_MAX_NODES": "7"}
    daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    http_port = None
    # The first round may run before the first list completes: step until the 4 pods are seen.
    r = read_round()
    for _ in range(10):
        if r and r["targets"] == 4:
            break
        r = step(0.5)
    check("4 running aws-node pods discovered", r and r["targets"] == 4 and r["fresh"] == 4, r)
    st, body = readyz()
    check("ready", st == 200, (st, body))

    api_cmd(f"add aws-node-4 {nodes[4][0]} {nodes[4][1]}")
    api_cmd(f"add aws-node-5 {nodes[5][0]} {nodes[5][1]}")
    r = step()
    check("pods added", r and r["targets"] == 6 and r["fresh"] == 6, r)

    api_cmd("del aws-node-0")
    r = step()
    check("pod deleted", r and r["targets"] == 5 and r["fresh"] == 5, r)

    api_cmd("set aws-node-1 ip=127.77.0.200")  # nothing listens there
    r = step()
    check("pod re-IPed (to a dead address)", r and r["targets"] == 5 and r["fresh"] == 4 and r["failed"] == 1, r)
    api_cmd(f"set aws-node-1 ip={nodes[1][1]}")
    r = step()
    check("pod re-IPed back", r and r["fresh"] == 5, r)

    api_cmd("gone")
    r = step(1.5)
    check("410 mid-watch keeps the targets", r and r["targets"] == 5 and r["fresh"] == 5, r)

    api_cmd("token rotated-token-2")
    api_cmd("disconnect")
    r = step(1.5)
    check("token rotation", r and r["targets"] == 5, r)
    api_cmd("add aws-node-0 %s %s" % (nodes[0][0], nodes[0][1]))
    r = step(3)
    check("discovery works after rotation", r and r["targets"] == 6, r)

    api_cmd("down 3")
    r = step(0.5)
    check("API down: last known targets scraped", r and r["targets"] == 6 and r["fresh"] == 6, r)
    time.sleep(3)

    for i in range(6):
        api_cmd(f"del aws-node-{i}")
    # Discovery may still be backing off after the outage: it recovers by itself (bounded wait).
    for _ in range(25):
        r = step(2)
        if r and r["targets"] == 0:
            break
    check("no running pods: no targets", r and r["targets"] == 0, r)
    st, body = readyz()
    check("readyz: pods but none running", st == 503 and "none Running" in body, (st, body))
    api_cmd("del pending-pod")
    for _ in range(10):
        time.sleep(0.5)
        st, body = readyz()
        if "no aws-node pods" in body:
            break
    check("readyz names the missing aws-node pods", st == 503 and "no aws-node pods" in body, (st, body))
    step(0.2)
    check("the log names the missing aws-node pods (EKS Auto Mode has none)",
          any(m.startswith("no aws-node pods") and "EKS Auto Mode" in m for m in msgs), msgs[-20:])

    # SCRAPE_MAX_NODES=7: an eighth aws-node pod is not kept and /readyz says so; when a kept one
    # leaves, a new list takes it in.
    for i in range(6):
        api_cmd(f"add aws-node-{i} {nodes[i][0]} {nodes[i][1]}")
    api_cmd("add aws-node-6 nodeZ6 127.77.0.206")
    api_cmd("add aws-node-7 nodeZ7 127.77.0.207")
    for _ in range(10):
        r = step(0.5)
        st, body = readyz()
        if r and r["targets"] == 7 and "beyond" in body:
            break
    check("SCRAPE_MAX_NODES: 7 of 8 pods kept, the 8th said on /readyz",
          r and r["targets"] == 7 and r["fresh"] == 6 and
          "degraded: 1 aws-node pods beyond SCRAPE_MAX_NODES=7 are not scraped" in body, (r, body))
    check("SCRAPE_MAX_NODES: the log warns", any(m.startswith("more aws-node pods than SCRAPE_MAX_NODES") for m in msgs),
          msgs[-20:])
    api_cmd("del aws-node-6")
    for _ in range(10):
        r = step(1)
        st, body = readyz()
        if r and r["targets"] == 7 and "beyond" not in body:
            break
    check("SCRAPE_MAX_NODES: a freed place is taken by the pod beyond",
          r and r["targets"] == 7 and "beyond" not in body, (r, body))
finally:
    if daemon is not None:
        rc = stop_proc(daemon)
        check("daemon stopped cleanly", rc == 0, rc)
    api.stdin.close()
    api.wait(timeout=10)
    sim.terminate()
    sim.wait(timeout=10)

finish()
