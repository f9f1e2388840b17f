"""Replicas with LEADER_ELECTION=true against the fake Kubernetes API (Lease, aws-node pods on the
ipamD simulator), each publishing to its own CloudWatch stand-in, so every request is known to come
from one replica. It proves, in one run:
  - exactly one leader; leadership intervals never overlap; every stand-in holds exactly what its
    replica says it published, and no round is published twice;
  - a leader that loses the lease (its token goes stale: the API rotates it, its own token file is
    an old copy) while CloudWatch throttles it and it has a backlog steps down, drops the backlog
    at that moment (dropped_not_leader), and starts no request afterwards; produced = received +
    dropped, exactly;
  - a crashed leader (SIGKILL) is replaced within one lease duration and one retry period, and
    not before a lease duration less one retry period;
  - a leader stopped with SIGTERM hands over once its flush is done, within one retry period of
    the release."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, parse_metrics, spawn_ipamd_sim  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
LEASE_S, RETRY_S = 2.0, 0.2  # whole seconds: followers wait the Lease's leaseDurationSeconds
SLACK_S = 0.4  # a GET and a PUT, the log pipe, a loaded 2-core machine (ASan included)

tmp = tempfile.mkdtemp(prefix="cmh-leader-")
sim = spawn_ipamd_sim(BUILD, DATA, tmp, 4, "127.79.0.1", truth=False)
api = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                        os.path.join(tmp, "token"), "--lifetime", "150"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
standins = {}
for name in ("replica-a", "replica-b", "replica-c"):
    standins[name] = subprocess.Popen(
        ["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py"),
         "--key", "AKIDLEAD:lead-secret", "--region", "us-west-2", "--lifetime", "150"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
standin_url = {}
replicas = {}
killed = {}  # replica -> monotonic time of its SIGKILL
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


def api_cmd(cmd):
    api.stdin.write(cmd + "\n")
    api.stdin.flush()
    return api.stdout.readline()


def start(name, port, ca, token_file):
    env = {"PATH": "/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
           "K8S_CA_FILE": ca, "K8S_TOKEN_FILE": token_file, "POD_NAME": name, "LEADER_ELECTION": "true",
           "LEADER_ELECTION_LEASE_DURATION": "%ds" % LEASE_S, "LEADER_ELECTION_RENEW_DEADLINE": "1s",
           "LEADER_ELECTION_RETRY_PERIOD": "%dms" % (RETRY_S * 1000), "USE_CLOUDWATCH": "true",
           "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "lead", "AWS_ACCESS_KEY_ID": "AKIDLEAD",
           "AWS_SECRET_ACCESS_KEY": "lead-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": standin_url[name],
           "AWS_EC2_METADATA_DISABLED": "true", "CW_BACKOFF_BASE": "100ms", "CW_BACKOFF_CAP": "400ms",
           "METRIC_UPDATE_INTERVAL": "1", "SCRAPE_JITTER": "0", "LOG_FORMAT": "json",
           "USE_PROMETHEUS": "true", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0",
           "SHUTDOWN_TIMEOUT": "5"}
    p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=reader, args=(name, p), daemon=True).start()
    replicas[name] = p


def find(name, msg, after=0.0):
    """The first (time, event) of name with msg logged after the given time, or None."""
    with lock:
        for t, n, ev in events:
            if n == name and ev.get("msg") == msg and t > after:
                return t, ev
    return None


def wait_for(names, msg, after, limit_s):
    """The first (time, replica, event) with msg from one of names after the given time."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        hits = [(h[0], n, h[1]) for n in names for h in [find(n, msg, after)] if h]
        if hits:
            return min(hits, key=lambda h: h[0])
        time.sleep(0.02)
    return None


def metrics(name):
    hit = wait_for([name], "listening", 0, 10)
    return parse_metrics(http("http://127.0.0.1:%d/metrics" % hit[2]["port"]).decode())


def cw(m, outcome):
    return int(m.get('cni_metrics_helper_cloudwatch_datums_total{outcome="%s"}' % outcome, 0))


def standin(name, path):
    return json.loads(urllib.request.urlopen(standin_url[name] + path, timeout=10).read())


def leadership_intervals(until):
    """Per replica, the [start, end) intervals in which it was leader: from "leader: publishing"
    to its step-down, or to "stopped" (logged after the flush, just before the release), or to its
    SIGKILL."""
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
            elif ev.get("msg") in ("not leader: not publishing", "stopped") and cur is not None:
                spans.append((cur, t))
                cur = None
        if cur is not None:
            spans.append((cur, killed.get(name, until)))
        out[name] = spans
    return out


def produced_while_leader(name):
    """Datums of the rounds name queued for CloudWatch: round lines between its "leader:
    publishing" and its step-down (one thread logs both, in order), less rounds the publisher was
    not ready for."""
    total, leading, skip = 0, False, False
    with lock:
        evs = [ev for _, n, ev in events if n == name]
    for ev in evs:
        msg = ev.get("msg")
        if msg == "leader: publishing":
            leading = True
        elif msg == "not leader: not publishing":
            leading = False
        elif msg == "round not published: CloudWatch publishing is not set up yet":
            skip = True
        elif msg == "round":
            if leading and not skip:
                total += int(ev["datums"])
            skip = False
    return total


try:
    check("simulator ready", sim.stdout.readline().startswith("READY"))
    m = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", api.stdout.readline())
    port, ca, token = m.groups()
    for name, p in standins.items():
        standin_url[name] = "http://127.0.0.1:" + re.search(r"http=(\d+)", p.stdout.readline()).group(1)
    for i, line in enumerate(open(os.path.join(tmp, "targets"))):
        node, ip, _ = line.split()
        api_cmd(f"add aws-node-{i} {node} {ip}")
    # replica-a reads a copy of the token file: when the API rotates the token, a keeps the old one.
    token_a = os.path.join(tmp, "token-a")
    shutil.copy(token, token_a)

    # 1. a leads; b follows; for 3 s exactly one leader, the same.
    t0 = time.monotonic()
    start("replica-a", port, ca, token_a)
    check("replica-a leads first", wait_for(["replica-a"], "leader: publishing", t0, 10) is not None)
    start("replica-b", port, ca, token)
    time.sleep(3)
    spans = leadership_intervals(time.monotonic())
    check("exactly one leader, replica-a", len(spans["replica-a"]) == 1 and not spans["replica-b"], spans)

    # 2. CloudWatch throttles a (retries every 100-400 ms): a builds a backlog. Then a loses the
    #    lease: the API takes a new token, a's file keeps the old one.
    http(standin_url["replica-a"] + "/faults", "POST",
         {"random": {"rate": 1.0, "kinds": ["throttle"], "seed": 1}})
    time.sleep(2.5)
    m = metrics("replica-a")
    check("leader has a backlog before it loses the lease",
          m.get("cni_metrics_helper_cloudwatch_queue_datums", 0) > 0 and cw(m, "dropped_not_leader") == 0,
          (m.get("cni_metrics_helper_cloudwatch_queue_datums"), cw(m, "dropped_not_leader")))
    t_rot = time.monotonic()
    api_cmd("token tok-rotated")
    down = wait_for(["replica-a"], "not leader: not publishing", t_rot, 5)
    check("replica-a steps down within the renew deadline (+ slack)",
          down is not None and down[0] - t_rot <= 1.0 + SLACK_S, down and down[0] - t_rot)
    took_over = wait_for(["replica-b"], "leader: publishing", t_rot, 10)
    check("replica-b takes over after replica-a stepped down",
          down is not None and took_over is not None and took_over[0] > down[0], (down, took_over))
    time.sleep(3)  # a would retry every 100-400 ms here if it still sent
    ma = metrics("replica-a")
    sa = standin("replica-a", "/stats")
    received_a = len(standin("replica-a", "/datums"))
    requests_a = sum(v for k, v in ma.items() if k.startswith("cni_metrics_helper_cloudwatch_requests_total"))
    dropped_a = cw(ma, "dropped_not_leader")
    produced_a = produced_while_leader("replica-a")
    at_down = down[2] if down else {}
    # At the step-down the queue goes at once; a request then in flight cannot be recalled, and
    # its datums go as not_leader when it fails (the stand-in throttles every one), never retried.
    # How the backlog splits between the two depends on timing; their sum does not.
    check("the backlog was dropped as not_leader: the queue at the step-down, the request in flight when it failed",
          at_down.get("cw_dropped_not_leader", 0) + at_down.get("cw_in_flight", 0) > 0
          and dropped_a == at_down.get("cw_dropped_not_leader", 0) + at_down.get("cw_in_flight", 0),
          (at_down, dropped_a))
    check("no request started after the step-down, none reached the stand-in since",
          requests_a == at_down.get("cw_requests", -1) == sa["requests"], (requests_a, at_down, sa["requests"]))
    other_drops = sum(cw(ma, o) for o in ("dropped_overflow", "dropped_age", "dropped_invalid", "dropped_shutdown"))
    check("produced = received + dropped not_leader, exactly",
          produced_a > 0 and produced_a == received_a + dropped_a and cw(ma, "published") == received_a
          and other_drops == 0 and ma.get("cni_metrics_helper_cloudwatch_queue_datums") == 0,
          (produced_a, received_a, dropped_a, cw(ma, "published"), other_drops))
    print("lost lease: stepped down %.3f s after the rotation; produced %d = received %d + dropped "
          "not_leader %d (%d at the step-down, %d in flight); %d requests" % (
              down[0] - t_rot if down else -1, produced_a, received_a, dropped_a,
              at_down.get("cw_dropped_not_leader", -1), at_down.get("cw_in_flight", -1), requests_a))
    http(standin_url["replica-a"] + "/faults", "POST", {"clear": True})
    # a gets the new token (it reads its file again after the next 401) and follows.
    with open(token_a + ".new", "w") as f:
        f.write("tok-rotated\n")
    os.replace(token_a + ".new", token_a)

    # 3. c joins; b crashes (SIGKILL): a or c takes over within a lease duration and a retry period.
    start("replica-c", port, ca, token)
    time.sleep(2)
    t_kill = time.monotonic()
    replicas["replica-b"].kill()
    killed["replica-b"] = t_kill
    replicas["replica-b"].wait(timeout=10)
    hit = wait_for(["replica-a", "replica-c"], "leader: publishing", t_kill, 10)
    took = hit[0] - t_kill if hit else None
    check("crash failover not before lease - retry, within lease + retry",
          took is not None and LEASE_S - RETRY_S - 0.1 <= took <= LEASE_S + RETRY_S + SLACK_S, took)
    print("crash: %s took over %.3f s after the SIGKILL" % (hit and hit[1], took or -1))
    new_leader = hit[1] if hit else "replica-c"
    other = "replica-a" if new_leader == "replica-c" else "replica-c"
    time.sleep(2)

    # 4. The leader stops (SIGTERM: flush, then release): the other leads within a retry period
    #    of the release.
    t_stop = time.monotonic()
    replicas[new_leader].send_signal(signal.SIGTERM)
    rc = replicas[new_leader].wait(timeout=15)
    check("stopped leader exits 0", rc == 0, rc)
    released = find(new_leader, "leader election: lease released", t_stop)
    hit = wait_for([other], "leader: publishing", t_stop, 10)
    check("graceful failover within a retry period of the release",
          released is not None and hit is not None and 0 <= hit[0] - released[0] <= RETRY_S + SLACK_S,
          (released and released[0] - t_stop, hit and hit[0] - t_stop))
    if released is None:
        with lock:
            print("\n".join(json.dumps(ev) for t, n, ev in events if n == new_leader and t > t_stop - 1))
    print("graceful: released %.3f s after SIGTERM, taken over %.3f s after the release" % (
        released[0] - t_stop if released else -1, hit[0] - released[0] if hit and released else -1))
    time.sleep(2)
    end = time.monotonic()
    spans = leadership_intervals(end)
    all_spans = sorted((s, e, n) for n, ss in spans.items() for s, e in ss)
    overlap = [(a, b) for a, b in zip(all_spans, all_spans[1:]) if b[0] < a[1] and a[2] != b[2]]
    check("leadership intervals never overlap", not overlap, all_spans)
    replicas[other].send_signal(signal.SIGTERM)
    check("last replica exits 0", replicas[other].wait(timeout=15) == 0)

    # Every stand-in holds exactly what its replica says it published (b was killed: at least what
    # it last logged, at most what it queued); no period twice.
    all_datums = []
    for name in replicas:
        datums = standin(name, "/datums")
        all_datums += datums
        if name in killed:
            with lock:
                logged = max([int(ev.get("cw_published", 0)) for _, n, ev in events
                              if n == name and ev.get("msg") == "round"] + [0])
            ok = logged <= len(datums) <= produced_while_leader(name) and len(datums) > 0
            check(f"{name} (killed): stand-in holds between its logged and its queued", ok,
                  (logged, len(datums), produced_while_leader(name)))
        else:
            stopped = find(name, "stopped")
            published = int(stopped[1].get("cw_published", -1)) if stopped else -1
            check(f"{name}: datums at its stand-in = published", len(datums) == published, (len(datums), published))
    ts = sorted(d["timestamp_ms"] for d in all_datums if d["metric"] == "scrapeTargets")
    dup = [(a, b) for a, b in zip(ts, ts[1:]) if b - a < 500]
    check("no round published twice (rounds 1 s apart)", not dup and len(ts) > 5, (dup, len(ts)))
    with lock:
        nonjson = [ev for _, _, ev in events if ev.get("msg") == "non-json"]
    check("logs clean", not nonjson, nonjson[:3])
finally:
    for p in replicas.values():
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    for p in [api] + list(standins.values()):
        p.stdin.close()
        p.wait(timeout=10)
    sim.terminate()
    sim.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)
finish()
