"""SCRAPE_MODE end to end: the daemon discovers aws-node pods through the fake Kubernetes API and
scrapes the ipamD simulator directly, through the API server's pod proxy (HTTP/2), or both.

- proxy: every node goes through the fake API's pod proxy, all rounds over ONE TLS connection as
  HTTP/2 streams (the fake counts both), the simulator sees no request but the proxy's, and every
  datum of every round equals the simulator's truth (test/integration/truth_model.py).
- proxy faults: a 503 from the proxy and a slow proxy fail those nodes only (connect_error,
  response_timeout); the others stay fresh; the datums still equal the truth with those nodes
  failed.
- auto: three pods' hostIPs are dead (nothing listens: refused); those nodes fall back to the
  proxy in the same round, one warning per node naming the security-group rule, and stay on it in
  later rounds while the others stay direct; the datums equal the truth. When a node's hostIP works
  again, the periodic direct re-check brings it back to direct.
- direct: the proxy is never touched; the dead nodes fail as connect_refused."""
import http.client
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
from testlib import check, failures, finish, parse_metrics, read_events, spawn_ipamd_sim, stop_proc  # noqa: E402
from truth_model import TABLE, Model, ts_ms  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
PY = "/usr/bin/python3"
NODES = 6
DEAD = [0, 1, 2]  # auto mode: these pods' hostIPs refuse connections

tmp = tempfile.mkdtemp(prefix="cmh-mode-")


def start_sim():
    """The fleet on its own 127.x.0.1.. addresses at the ipamD port (discovered pods are scraped at
    IPAMD_METRICS_PORT); another test holding those addresses makes us take the next block."""
    for net in (147, 148, 149, 150):
        p = spawn_ipamd_sim(BUILD, DATA, tmp, NODES, f"127.{net}.0.1")
        ready = p.stdout.readline()
        lines = [l.split() for l in open(os.path.join(tmp, "targets"))] if ready.startswith("READY") else []
        if lines and all(l[2] == "61678" and l[1].startswith(f"127.{net}.") for l in lines):
            return p, net, ready
        p.terminate()
        p.wait(timeout=10)
    return None, 0, ""


sim, NET, sim_ready = start_sim()
api = subprocess.Popen([PY, os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                        os.path.join(tmp, "token"), "--lifetime", "280"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
daemon = None
epoch = [0]
control = None


def api_cmd(line):
    api.stdin.write(line + "\n")
    api.stdin.flush()
    out = api.stdout.readline().strip()
    if not out.startswith("OK"):
        failures.append(f"fake API command {line!r}: {out}")
    return out


def api_stats():
    return json.loads(api_cmd("stats")[3:])


def sim_post(path):
    req = urllib.request.Request(control + path, method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=10).read() or b"{}")


def sim_stats():
    return json.loads(urllib.request.urlopen(control + "/stats", timeout=10).read())


def start_daemon(mode, extra=None):
    global daemon
    env = {"PATH": "/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
           "K8S_CA_FILE": ca, "K8S_TOKEN_FILE": token_file, "USE_CLOUDWATCH": "no", "LOG_FORMAT": "json",
           "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": "1s",
           "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "AWS_CLUSTER_ID": "mode",
           "USE_PROMETHEUS": "true", "SCRAPE_MODE": mode}
    env.update(extra or {})
    daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    return Model(2)


def stop_daemon():
    global daemon
    rc = stop_proc(daemon)
    daemon = None
    return rc


def read_round(limit_s=20):
    """The next round's datums, summary line and every other log line before it."""
    datums, lines = {}, []

    def each(ev):
        if ev.get("msg") == "listening":
            global http_port
            http_port = ev["port"]
        if ev.get("msg") == "datum":
            datums[ev["metric"]] = ev
        elif ev.get("msg") != "round":
            lines.append(ev)
    ev = read_events(daemon, "round", limit_s, each)
    return None if ev is None else {"summary": ev, "datums": datums, "lines": lines}


def step(advance=True, settle=0.0):
    if advance:
        epoch[0] = sim_post("/advance")["epoch"]
    time.sleep(settle)
    daemon.send_signal(signal.SIGUSR1)
    return read_round()


def first_full_round(model):
    """Rounds until discovery has every pod (the first may run before the first list); the empty
    rounds count for the model too (counters are published from the daemon's second round)."""
    r = read_round()
    for _ in range(10):
        if r and r["summary"]["targets"] == NODES:
            return r
        if r and r["summary"]["targets"] == 0:
            model.round(int(time.time() * 1000), [])
        r = step(advance=False, settle=0.5)
    return r


def truth(failed_nodes=()):
    nodes = [json.loads(l) for l in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % epoch[0]))]
    for t in nodes:
        if t["node"] in failed_nodes:
            t["ok"] = False
    return nodes


# What the model computes; a datum it does not model (a newer derived metric) is not compared.
MODELLED = {cw for cw, _ in TABLE.values()} | {
    "availableIPAddresses", "ipUtilization", "nodesAtIPCapacity", "scrapeTargets",
    "scrapeTargetsFresh", "scrapeTargetsStale", "scrapeTargetsFailed"}


def equals_truth(name, model, r, failed_nodes=()):
    exp = model.round(ts_ms(next(iter(r["datums"].values()))["timestamp"]), truth(failed_nodes))
    got = {}
    for k, ev in r["datums"].items():
        if k not in MODELLED and k not in exp:
            continue
        if "statistics" in ev:
            s = ev["statistics"]
            got[k] = (s["sample_count"], s["sum"], s["min"], s["max"])
        else:
            got[k] = float(ev["value"])
    diff = {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}
    return check(name, not diff, diff)


def metrics():
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    c.request("GET", "/metrics")
    return parse_metrics(c.getresponse().read().decode())


def fallback_lines(r):
    return [ev for ev in r["lines"] if "through the API server proxy" in ev.get("msg", "")
            and ev.get("level") == "warn"]


try:
    m = re.search(r"control=(\S+)", sim_ready)
    check("simulator ready on its own addresses at the ipamD port", m is not None, sim_ready)
    control = "http://" + m.group(1)
    nodes = [l.split() for l in open(os.path.join(tmp, "targets"))]
    api_ready = api.stdout.readline()
    m = re.search(r"port=(\d+) ca=(\S+) token_file=(\S+)", api_ready)
    check("fake API ready", m is not None, api_ready)
    port, ca, token_file = m.groups()
    names = [n[0] for n in nodes]
    for i, (name, ip, p) in enumerate(nodes):
        api_cmd(f"add aws-node-{i} {name} {ip}")
        api_cmd(f"proxy aws-node-{i} {ip}:{p}")

    # --- proxy: every node through the API server, one connection, HTTP/2 streams ------------
    before_api, before_sim = api_stats(), sim_stats()
    model = start_daemon("proxy")
    r = first_full_round(model)
    check("proxy: all nodes fresh", r and r["summary"]["fresh"] == NODES, r and r["summary"])
    check("proxy: summary counts proxied scrapes",
          r and r["summary"].get("proxy") == NODES and r["summary"].get("proxy_ok") == NODES, r and r["summary"])
    equals_truth("proxy: round 1 equals the truth", model, r)
    rounds = 1
    for k in range(4):
        r = step()
        rounds += 1
        check(f"proxy: round {rounds} all fresh", r and r["summary"]["fresh"] == NODES, r and r["summary"])
        equals_truth(f"proxy: round {rounds} equals the truth", model, r)
    st, sst = api_stats(), sim_stats()
    check("proxy: one TLS connection for every proxied scrape",
          st["h2_connections"] - before_api["h2_connections"] == 1, st)
    check("proxy: every scrape an HTTP/2 stream",
          st["h2_streams"] - before_api["h2_streams"] == rounds * NODES, (st["h2_streams"], rounds))
    check("proxy: every pod proxied once per round",
          all(st["proxy_by_pod"].get(f"aws-node-{i}", 0) == rounds for i in range(NODES)), st["proxy_by_pod"])
    check("proxy: the simulator saw only the proxy's requests",
          sst["requests"] - before_sim["requests"] == rounds * NODES, (sst["requests"], before_sim["requests"]))
    check("proxy: every proxied scrape asked for gzip (SCRAPE_GZIP's default), equal to the truth above",
          st["proxy_gzip"] - before_api["proxy_gzip"] == rounds * NODES, st["proxy_gzip"])
    mt = metrics()
    check("proxy: /metrics counts proxied scrapes",
          mt.get('cni_metrics_helper_proxy_scrapes_total{result="ok"}') == rounds * NODES, mt)
    check("proxy: /metrics counts one API server connection",
          mt.get("cni_metrics_helper_proxy_connections_total") == 1, mt)

    # Bad answers of the pods themselves, relayed by the proxy, are classed as direct ones are. A
    # truncated body reaches us as the proxy's stream reset: truncated when libcurl delivered part
    # of the body first, reset when it dropped it with the stream (both happen, by timing).
    urllib.request.urlopen(urllib.request.Request(control + "/faults", data=b"ctype=3,oversize=4,truncate=5",
                                                  method="POST"), timeout=10).read()
    r = step()
    s = r and r["summary"]
    check("pod faults through the proxy: classed like direct ones",
          s and s["failures"] in ("reset:1,content_type:1,body_too_large:1", "truncated:1,content_type:1,body_too_large:1")
          and s["fresh"] == 3, s)
    equals_truth("pod faults through the proxy: datums equal the truth", model, r)
    # gzip faults relayed by the proxy: a bomb (6 KB inflating past SCRAPE_MAX_BODY), a gzip stream
    # cut in half inside a complete response, a coding we cannot read; those nodes alone fail.
    urllib.request.urlopen(urllib.request.Request(control + "/faults", data=b"bomb=3,gzcut=4,encoding=5",
                                                  method="POST"), timeout=10).read()
    r = step()
    s = r and r["summary"]
    check("gzip faults through the proxy: classed like direct ones, those nodes only",
          s and s["failures"] == "content_encoding:1,gzip_too_large:1,gzip_error:1" and s["fresh"] == 3, s)
    equals_truth("gzip faults through the proxy: datums equal the truth", model, r)
    urllib.request.urlopen(urllib.request.Request(control + "/faults", data=b"", method="POST"), timeout=10).read()
    r = step()
    check("pod faults cleared", r and r["summary"]["fresh"] == NODES, r and r["summary"])
    equals_truth("pod faults cleared: datums equal the truth", model, r)

    # A rotated token: refused once (401), re-read, then accepted.
    api_cmd("token rotated-token-7")
    r = step()
    s = r and r["summary"]
    check("token rotation: the old token is refused", s and s["fresh"] == 0, s)
    equals_truth("token rotation: datums equal the truth with every node failed", model, r,
                 failed_nodes=tuple(names))
    r = step()
    check("token rotation: the new token is read and accepted", r and r["summary"]["fresh"] == NODES,
          r and r["summary"])
    equals_truth("token rotation: datums equal the truth again", model, r)
    st = api_stats()
    check("token rotation: the proxy saw the new token", "rotated-token-7" in st["tokens_seen"], st["tokens_seen"])

    # Faults of the proxy fail those nodes only.
    api_cmd("proxyfault aws-node-1 503")
    api_cmd("proxyfault aws-node-2 slow=3")
    r = step()
    s = r and r["summary"]
    check("proxy faults: two nodes fail, the rest fresh",
          s and s["failed"] == 2 and s["fresh"] == NODES - 2, s)
    check("proxy faults: 503 is connect_error, slow is response_timeout",
          s and s["failures"] == "connect_error:1,response_timeout:1", s)
    equals_truth("proxy faults: datums equal the truth with those nodes failed", model, r,
                 failed_nodes=(names[1], names[2]))
    fl = [ev for ev in r["lines"] if ev.get("msg") == "proxy scrape failed"]
    check("proxy faults: one failure line per failed node",
          sorted(ev["pod"] for ev in fl) == ["aws-node-1", "aws-node-2"], fl)
    api_cmd("proxyfault aws-node-1 none")
    api_cmd("proxyfault aws-node-2 none")
    time.sleep(2.5)  # the slow answer finishes on its own; nothing waits for it
    r = step()
    check("proxy faults cleared: all fresh", r and r["summary"]["fresh"] == NODES, r and r["summary"])
    equals_truth("proxy faults cleared: datums equal the truth", model, r)
    st = api_stats()
    check("proxy: still one connection after faults",
          st["h2_connections"] - before_api["h2_connections"] == 1, st["h2_connections"])
    check("proxy: daemon stopped cleanly", stop_daemon() == 0)

    # --- auto: dead hostIPs fall back per node ------------------------------------------------
    for i in DEAD:
        api_cmd(f"set aws-node-{i} ip=127.{NET}.1.{i + 1}")  # nothing listens there
    before_api = api_stats()
    model = start_daemon("auto", {"SCRAPE_DIRECT_RECHECK": "2s"})
    r = first_full_round(model)
    s = r and r["summary"]
    check("auto: every node fresh in the first round", s and s["fresh"] == NODES and s["failed"] == 0, s)
    check("auto: summary counts the fallbacks",
          s and s.get("fallbacks") == len(DEAD) and s.get("proxy_ok") == len(DEAD) and s.get("on_proxy") == len(DEAD), s)
    equals_truth("auto: round 1 equals the truth", model, r)
    fb = fallback_lines(r)
    check("auto: one fallback line per dead node",
          sorted(ev["pod"] for ev in fb) == [f"aws-node-{i}" for i in DEAD], fb)
    check("auto: the line names the security-group rule",
          fb and all("allow inbound TCP 61678 on the node security group" in ev.get("fix", "") and
                     ev.get("result") == "connect_refused" for ev in fb), fb)
    for k in range(2, 4):
        r = step()
        s = r and r["summary"]
        check(f"auto: round {k} all fresh, no new fallback", s and s["fresh"] == NODES and s["fallbacks"] == 0
              and not fallback_lines(r), s)
        equals_truth(f"auto: round {k} equals the truth", model, r)
    st = api_stats()
    check("auto: dead nodes through the proxy every round, live ones never",
          all(st["proxy_by_pod"].get(f"aws-node-{i}", 0) - before_api["proxy_by_pod"].get(f"aws-node-{i}", 0)
              == (3 if i in DEAD else 0) for i in range(NODES)),
          (st["proxy_by_pod"], before_api["proxy_by_pod"]))
    mt = metrics()
    check("auto: /metrics counts the fallbacks", mt.get("cni_metrics_helper_scrape_fallbacks_total") == len(DEAD), mt)
    check("auto: /metrics nodes on the proxy", mt.get("cni_metrics_helper_scrape_nodes_on_proxy") == len(DEAD), mt)
    # The re-check: node 0's hostIP works again; after SCRAPE_DIRECT_RECHECK it is direct.
    api_cmd(f"set aws-node-0 ip={nodes[0][1]}")
    time.sleep(2.2)
    r = step(settle=0.3)
    s = r and r["summary"]
    back = [ev for ev in (r["lines"] if r else []) if ev.get("msg", "").startswith("direct scrape connects again")]
    check("auto: re-check brings a fixed node back to direct", [ev.get("target") for ev in back] == [names[0]], back)
    check("auto: the still-dead nodes stay on the proxy, no new fallback line",
          s and s["fresh"] == NODES and s["on_proxy"] == len(DEAD) - 1 and not fallback_lines(r), s)
    equals_truth("auto: re-check round equals the truth", model, r)
    check("auto: daemon stopped cleanly", stop_daemon() == 0)

    # --- direct: never the proxy ---------------------------------------------------------------
    before_api = api_stats()
    model = start_daemon("direct")
    r = first_full_round(model)
    for _ in range(2):
        r = step()
    s = r and r["summary"]
    check("direct: the dead nodes fail as connect_refused",
          s and s["fresh"] == NODES - 2 and s["failures"] == "connect_refused:2" and "proxy" not in s, s)
    st = api_stats()
    check("direct: the proxy is never touched",
          st["proxy_requests"] == before_api["proxy_requests"] and st["h2_connections"] == before_api["h2_connections"],
          st)
    check("direct: daemon stopped cleanly", stop_daemon() == 0)
finally:
    if daemon is not None:
        stop_daemon()
    api.stdin.close()
    api.wait(timeout=10)
    if sim is not None:
        try:
            sim_post("/quit")
        except Exception:
            pass
        sim.terminate()
        sim.wait(timeout=10)

finish()
