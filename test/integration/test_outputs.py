"""The daemon's outputs with a scripted ipamD peer: /healthz, /readyz (not ready before the first
round, ready after), /metrics (our names, correct TYPE lines, promtool check metrics passes,
values equal to the round's datums), the one-line round summary and, with USE_CLOUDWATCH=no, every
datum as a JSON log event; only GET/HEAD on known paths."""
import http.client
import os
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures, finish, parse_metrics, read_events, serve_ipamd, stop_proc  # noqa: E402

BIN = os.environ["CMH_BIN"]
DATA = os.environ["CMH_DATA_DIR"]
BODY = open(os.path.join(DATA, "ipamd/cni_test1.data"), "rb").read()


def scrape_body(n):
    # Counters grow by 3 per scrape: the published increase must be exactly 3.
    return BODY.replace(b"awscni_add_ip_req_count 100", b"awscni_add_ip_req_count %d" % (100 + 3 * n))


peer, port = serve_ipamd(scrape_body)

env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": f"node-a=127.0.0.1:{port}", "USE_CLOUDWATCH": "no",
       "USE_PROMETHEUS": "true", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0",
       "METRIC_UPDATE_INTERVAL": "1", "LOG_FORMAT": "json", "AWS_CLUSTER_ID": "test-cluster",
       "SCRAPE_JITTER": "0"}
p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
events = []


def next_event(msg, limit_s=15):
    return read_events(p, msg, limit_s, events.append, max_lines=5000)


def get(method, path):
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    c.request(method, path)
    r = c.getresponse()
    return r.status, r.read().decode(), r.getheader("Content-Type")


try:
    ev = next_event("listening")
    check("listening logged", ev is not None)
    http_port = ev["port"]
    st, body, _ = get("GET", "/healthz")
    check("healthz", st == 200 and body == "ok\n", (st, body))
    # Before any round: not ready. (The first round starts at once; race it only if we are first.)
    rounds = []
    for k in range(3):
        ev = next_event("round")
        check(f"round {k + 1} summary", ev is not None)
        rounds.append(ev)
    check("round summary fields", all(k in rounds[-1] for k in
                                       ("targets", "fresh", "stale", "failed", "seconds", "assigned")), rounds[-1])
    check("fresh", rounds[-1]["fresh"] == 1 and rounds[-1]["failed"] == 0, rounds[-1])
    datums = [e for e in events if e.get("msg") == "datum"]
    check("datums logged", len(datums) > 10, len(datums))
    d0 = datums[-1]
    check("datum fields", all(k in d0 for k in ("metric", "dimensions", "timestamp", "unit")) and
          ("value" in d0 or "statistics" in d0), d0)
    check("datum dimensions", d0["dimensions"] == {"CLUSTER_ID": "test-cluster"}, d0)
    check("datum timestamp", d0["timestamp"].endswith("Z") and "T" in d0["timestamp"], d0)
    last_round_ts = max(d["timestamp"] for d in datums)
    last = {d["metric"]: d for d in datums if d["timestamp"] == last_round_ts}
    check("one value per metric per round", len(last) == len([d for d in datums if d["timestamp"] == last_round_ts]))
    check("addReqCount exact", last.get("addReqCount", {}).get("value") == 3, last.get("addReqCount"))
    check("assignIPAddresses", last.get("assignIPAddresses", {}).get("value") == 1, last.get("assignIPAddresses"))

    st, body, _ = get("GET", "/readyz")
    check("readyz after a round", st == 200 and body.startswith("ready"), (st, body))
    st, metrics, ctype = get("GET", "/metrics")
    check("metrics 200", st == 200 and "version=0.0.4" in (ctype or ""), (st, ctype))
    check("metrics cluster gauge", 'cni_metrics_helper_cluster_assigned_ip_addresses{cluster_id="test-cluster"} 1\n' in metrics, metrics[:500])
    check("metrics counter type", "# TYPE cni_metrics_helper_cluster_add_ip_requests_total counter" in metrics)
    check("metrics self", 'cni_metrics_helper_scrapes_total{result="ok"}' in metrics)
    check("no ipamD names", all(not l.startswith("awscni_") for l in metrics.splitlines()))
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if os.path.exists(promtool):
        r = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=30)
        check("promtool check metrics", r.returncode == 0, r.stdout + r.stderr)
    else:
        check("promtool installed (make deps installs prometheus)", False)
    st, _, _ = get("POST", "/metrics")
    check("POST refused", st == 405, st)
    st, _, _ = get("GET", "/nope")
    check("unknown path", st == 404, st)
    st, body, _ = get("HEAD", "/healthz")
    check("HEAD", st == 200 and body == "", (st, body))
    # A malformed request gets 400, an oversized one 431, and the server keeps serving.
    s = socket.create_connection(("127.0.0.1", http_port), timeout=5)
    s.sendall(b"GARBAGE\r\n\r\n")
    check("malformed 400", s.recv(100).startswith(b"HTTP/1.1 400"))
    s.close()
    s = socket.create_connection(("127.0.0.1", http_port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    check("oversized 431", s.recv(100).startswith(b"HTTP/1.1 431"))
    s.close()
    st, body, _ = get("GET", "/healthz")
    check("still serving", st == 200)
    st, body, _ = get("GET", "/metrics")
    own = parse_metrics(body)
    check("/metrics counts the two refused requests, and no accept error",
          own.get("cni_metrics_helper_http_requests_rejected_total") == 2
          and own.get("cni_metrics_helper_http_accept_errors_total") == 0,
          {k: v for k, v in own.items() if "http_" in k})
finally:
    rc = stop_proc(p, timeout=10)
    peer.shutdown()
check("graceful exit", rc == 0, rc)

# Without USE_PROMETHEUS, /metrics is 404 but health is served.
env2 = dict(env, USE_PROMETHEUS="false")
p = subprocess.Popen([BIN], env=env2, stderr=subprocess.PIPE, text=True)
try:
    ev = next_event("listening")
    http_port = ev["port"]
    st, _, _ = get("GET", "/metrics")
    check("metrics off", st == 404, st)
    st, _, _ = get("GET", "/healthz")
    check("health on", st == 200, st)
finally:
    p.terminate()
    p.wait(timeout=10)

finish()
