"""With Kubernetes discovery no round runs from a target set that was never listed. Against the fake
API answering the first pod list 2 s late, the daemon publishes no round before the list and its
first round has every target; /readyz says it waits. A later relist that fails (410 Gone, then the
API answering 500) keeps the last good set. With an API that never answers the list, the first
round runs once K8S_SYNC_TIMEOUT has passed, and /readyz and the log say why."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fault_peers import K8sApi  # noqa: E402
from testlib import check, finish, http_status, read_events, spawn_ipamd_sim, stop_proc  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
NODES = 5

tmp = tempfile.mkdtemp(prefix="cmh-sync-")
sim = spawn_ipamd_sim(BUILD, DATA, tmp, NODES, "127.101.0.1", truth=False)
api = K8sApi(tmp, 250)
api_cmd = api.cmd
daemon = None


def start_daemon(port, ca, token_file, **extra):
    env = {"PATH": "/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
           "K8S_CA_FILE": ca, "K8S_TOKEN_FILE": token_file, "USE_CLOUDWATCH": "no", "LOG_FORMAT": "json",
           "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": "500ms",
           "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "AWS_CLUSTER_ID": "sync"}
    env.update(extra)
    return subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)


class Log:
    """The daemon's events in order, with the monotonic time each was read."""

    def __init__(self):
        self.events = []
        self.port = None

    def __call__(self, ev):
        self.events.append((time.monotonic(), ev))
        if ev.get("msg") == "listening":
            self.port = ev["port"]

    def index(self, msg):
        return next((i for i, (_, ev) in enumerate(self.events) if ev.get("msg") == msg), None)


def readyz(log):
    return http_status(f"http://127.0.0.1:{log.port}/readyz", timeout=5)


try:
    ready = sim.stdout.readline()
    check("simulator ready", ready.startswith("READY"), ready)
    nodes = [l.split() for l in open(os.path.join(tmp, "targets"))]
    port, ca, token_file = api.port, api.ca, api.token_file
    for i, (name, ip, _) in enumerate(nodes):
        api_cmd(f"add aws-node-{i} {name} {ip}")
    check("simulator nodes on their own 127.101.0.x addresses",
          all(ip.startswith("127.101.0.") for _, ip, _ in nodes), nodes)

    # 1. The first list is answered 2 s late: no round before it, and the first has every node.
    api_cmd("listdelay 2 1")
    log = Log()
    t0 = time.monotonic()
    daemon = start_daemon(port, ca, token_file)
    check("the daemon listens", read_events(daemon, "listening", 10, log) is not None)
    st, body = readyz(log)
    check("/readyz while waiting: not ready, waiting for the pod list",
          st == 503 and "the first round waits for the pod list" in body, (st, body))
    first = read_events(daemon, "round", 20, log)
    t_round = log.events[-1][0] if first else None
    check("first round: every aws-node pod, all fresh",
          first is not None and first["targets"] == NODES and first["fresh"] == NODES, first)
    check("first round not before the list (answered 2 s late)",
          t_round is not None and t_round - t0 >= 1.9, t_round and t_round - t0)
    listed, rounds = log.index("aws-node pods listed"), log.index("round")
    check("the log: pods listed, then the first round",
          listed is not None and rounds is not None and listed < rounds, [e.get("msg") for _, e in log.events])
    check("the log says the first round waits",
          log.index("first round waits for the first aws-node pod list") is not None)
    st, body = readyz(log)
    check("ready after the first round", st == 200 and f"ready: {NODES} targets" in body, (st, body))

    # 2. A relist that fails keeps the last good set, never an empty one.
    injected0 = json.loads(api_cmd("stats")[3:])["injected"]
    api_cmd("fail 40")
    api_cmd("gone")
    time.sleep(2)
    for k in range(3):
        daemon.send_signal(signal.SIGUSR1)
        r = read_events(daemon, "round", 20, log)
        check(f"relist failing: round {k + 1} still has every target",
              r is not None and r["targets"] == NODES and r["fresh"] == NODES, r)
        time.sleep(0.5)
    check("the relists did fail (500s answered)", json.loads(api_cmd("stats")[3:])["injected"] > injected0)
    check("no list succeeded since", sum(ev.get("msg") == "aws-node pods listed" for _, ev in log.events) == 1)
    rc = stop_proc(daemon)
    check("daemon stopped cleanly", rc == 0, rc)
    daemon = None
    api_cmd("fail 0")

    # 3. An API that does not answer the list in time: the round runs after K8S_SYNC_TIMEOUT.
    api_cmd("listdelay 30 3")
    log = Log()
    t0 = time.monotonic()
    daemon = start_daemon(port, ca, token_file, K8S_SYNC_TIMEOUT="2")
    first = read_events(daemon, "round", 20, log)
    t_round = log.events[-1][0] if first else None
    check("timeout: the first round runs after K8S_SYNC_TIMEOUT, from no list",
          first is not None and first["targets"] == 0 and 1.9 <= t_round - t0 < 10,
          (first, t_round and t_round - t0))
    gave_up = log.index("no aws-node pod list within K8S_SYNC_TIMEOUT: rounds run without it")
    check("timeout: the log says why", gave_up is not None and gave_up < log.index("round"))
    st, body = readyz(log)
    check("timeout: /readyz says why", st == 503 and "K8S_SYNC_TIMEOUT passed" in body, (st, body))
finally:
    if daemon is not None:
        stop_proc(daemon)
    api.stop()
    sim.terminate()
    sim.wait(timeout=10)

finish()
