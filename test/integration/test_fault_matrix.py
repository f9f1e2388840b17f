"""Fault matrix (issue 9): the daemon end to end under every fault its peers can inject, each row
judged against an independent oracle: the ipamD simulator's truth files through the README's
aggregation rules (truth_model.py), the CloudWatch stand-in's record of what arrived, the
daemon's own /metrics counters, and /proc.

  nodes       5,000 nodes (1,000 under ASan), ~20% of them failing every round with every fault
              class of the simulator at once, plus churn and aws-node restarts: every round
              ends by its deadline, every datum equals the truth model (healthy nodes exact,
              failed ones stale then gone), the failures by class equal the simulator's truth.
  k8s         discovery of 150 aws-node pods through the fake API while it disconnects watches,
              answers 500s and 410 Gone, stalls the watch, rotates the token and is down for
              FAULT_MATRIX_API_DOWN_S (20 s): every round scrapes the last known targets and its
              datums equal the truth; pods deleted during the outage are dropped by discovery
              once the API is back, by itself (targets, /readyz).
  cloudwatch  CloudWatch throttling storms, 5xx, stalls, resets, ExpiredToken and an outage
              longer than the buffer, with credentials from a container-credentials endpoint
              that answers 500s and stalls on refresh: received + dropped by reason (/metrics) =
              produced, every received datum equals the truth, RSS bounded; and instance
              metadata unreachable (no region, no credentials): the daemon stays up, keeps
              scraping, /readyz says why, nothing is sent or lost.
  process     SIGTERM during a round and during a stalled publish: exit 0 within
              SHUTDOWN_TIMEOUT, every datum flushed; SIGKILL, then a new daemon: loss at most
              the unsent buffer, its first round publishes no counter (no spike), and its
              datums equal the truth model of a freshly started helper.

STS errors are tested end to end by test_aws_ca_bundle.py (an HTTPS STS stand-in trusted through
AWS_CA_BUNDLE: certificate failure, AccessDenied, 503/Throttling/500 then recovery with every
datum accounted for); the unit test aws_creds_chain_replays_recorded_traffic covers the answer
classes.

Sizes: FAULT_MATRIX_NODES and FAULT_MATRIX_ROUNDS (nodes row), FAULT_MATRIX_API_DOWN_S (k8s row);
`make soak` runs the matrix at full size first (5,000 nodes x 30 rounds, the API down 180 s).

Usage: test_fault_matrix.py SCENARIO...   (scenarios above; all when none is given)."""
import json
import os
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fault_peers import AwsCreds, CloudWatch, Daemon, K8sApi, Sim, sanitized  # noqa: E402
from testlib import check, failures, finish  # noqa: E402
from truth_model import TABLE, Model, ts_ms  # noqa: E402

ASAN = sanitized()
PID = os.getpid()
# Result class a correct scraper gets for each simulator fault (README "Scraping"; ipamd_sim.c).
EXPECT = {"none": "ok", "chunked": "ok", "eofbody": "ok", "refuse": "connect_refused",
          "stall": "response_timeout", "trickle": "response_timeout", "reset": "reset",
          "status500": "http_status", "garbage": "malformed_http", "truncate": "truncated",
          "oversize": "body_too_large", "ctype": "content_type", "badtext": "parse_error",
          "bomb": "gzip_too_large", "gzcut": "gzip_error", "encoding": "content_encoding"}
ALL_FAULTS = ("refuse=2%,stall=1.5%,trickle=1%,reset=2%,status500=2%,garbage=2%,truncate=2%,"
              "oversize=1%,ctype=2%,badtext=2%,chunked=2%,eofbody=2%,bomb=1%,gzcut=1%,encoding=1%")


def base_for(k):
    """A private slice of 127/8 and a port per run, so parallel tests never collide."""
    return "127.%d.%d.1" % (200 + k * 10 + PID % 10, (PID // 10) % 200), 32000 + (PID * 7 + k * 101) % 20000


def static_targets(sim, port):
    """SCRAPE_TARGETS as bare hosts (5,000 named targets would not fit in one environment
    string); the daemon then names each node by its host, so the model does too."""
    return ",".join(ip for _, ip, _ in sim.nodes), {n: ip for n, ip, _ in sim.nodes}


def renamed(truth, names):
    out = []
    for t in truth:
        if t["node"] in names:
            t = dict(t)
            t["node"] = names[t["node"]]
            out.append(t)
    return out


def log_datums(evs):
    got = {}
    for ev in evs:
        if ev.get("msg") != "datum":
            continue
        if ev["metric"] in got:
            got["DUPLICATE " + ev["metric"]] = 1
        if "statistics" in ev:
            s = ev["statistics"]
            got[ev["metric"]] = (s["sample_count"], s["sum"], s["min"], s["max"])
        else:
            got[ev["metric"]] = float(ev["value"])
    ts = next((ts_ms(ev["timestamp"]) for ev in evs if ev.get("msg") == "datum"), None)
    return got, ts


def cw_by_round(datums):
    by = {}
    for d in datums:
        got = by.setdefault(d["timestamp_ms"], {})
        if d["metric"] in got:
            got["DUPLICATE " + d["metric"]] = 1
        got[d["metric"]] = ((d["stats"]["count"], d["stats"]["sum"], d["stats"]["min"], d["stats"]["max"])
                            if "stats" in d else d["value"])
    return by


def diff(got, exp):
    return {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}


def failure_counts(summary):
    out = {}
    for item in filter(None, summary.get("failures", "").split(",")):
        k, v = item.split(":")
        out[k] = int(v)
    return out


def truth_counts(truth):
    out = {}
    for t in truth:
        cls = EXPECT[t["fault"]] if t["present"] else "connect_refused"
        if cls != "ok":
            out[cls] = out.get(cls, 0) + 1
    return out


def debug(*a):
    if os.environ.get("FM_DEBUG"):
        print("DEBUG", *a, flush=True)


def step(sim, daemon, advance=True):
    if advance:
        sim.advance()
    daemon.signal(signal.SIGUSR1)


# ------------------------------------------------------------------------------------ nodes
def scenario_nodes():
    n, rounds = (1000, 4) if ASAN else (5000, 6)
    n = int(os.environ.get("FAULT_MATRIX_NODES", n))
    rounds = int(os.environ.get("FAULT_MATRIX_ROUNDS", rounds))
    deadline_s = 4.0
    base, port = base_for(0)
    tmp = tempfile.mkdtemp(prefix="cmh-fm-nodes-")
    sim = Sim(n, base, port, tmp, faults=ALL_FAULTS, churn=2, restart=2, seed=21)
    daemon = None
    try:
        if not check("nodes: every simulated node on its own address", sim.all_on_port(port)):
            return
        targets, names = static_targets(sim, port)
        daemon = Daemon({"SCRAPE_TARGETS": targets, "IPAMD_METRICS_PORT": str(port),
                         "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_ROUND_TIMEOUT": "%gs" % deadline_s,
                         "SCRAPE_TIMEOUT": "30s", "SCRAPE_JITTER": "0", "SCRAPE_CONCURRENCY": "3000",
                         "SCRAPE_MAX_BODY": "256KiB", "STALE_ROUNDS": "2",
                         "SCRAPE_KEEPALIVE": "false", "SCRAPE_MODE": "direct"})
        model = Model(2)
        bad = 0
        faulted = seen_classes = 0
        classes = set()
        for r in range(rounds):
            summary, evs = daemon.next("round", 60)
            if not check("nodes: round %d finished" % (r + 1), summary is not None):
                return
            truth = sim.truth(r)
            got, start = log_datums(evs)
            exp = model.round(start, renamed(truth, names))
            if got != exp:
                bad += 1
                if bad <= 2:
                    failures.append("nodes: round %d differs (got, expected): %s" % (r + 1, diff(got, exp)))
            check("nodes: round %d ended by its %g s deadline" % (r + 1, deadline_s),
                  summary["seconds"] <= deadline_s + 0.25, summary["seconds"])
            want = truth_counts(truth)
            check("nodes: round %d failures by class = simulator truth" % (r + 1),
                  failure_counts(summary) == want, (failure_counts(summary), want))
            ok = sum(1 for t in truth if t["ok"])
            check("nodes: round %d fresh = simulator's ok nodes" % (r + 1), summary["fresh"] == ok,
                  (summary["fresh"], ok))
            faulted += sum(1 for t in truth if t["present"] and t["fault"] != "none")
            classes |= set(want)
            seen_classes = len(classes)
            if r + 1 < rounds:
                step(sim, daemon)
        check("nodes: every round's datums equal the truth model (%d rounds, %d nodes)" % (rounds, n), bad == 0, bad)
        check("nodes: ~20%% of the fleet faulted per round", faulted >= 0.15 * n * rounds, faulted)
        check("nodes: every failure class occurred", seen_classes == len(set(EXPECT.values())) - 1, classes)
        print("nodes: %d nodes x %d rounds, %d node-rounds faulted, classes %s" %
              (n, rounds, faulted, sorted(classes)), flush=True)
    finally:
        if daemon is not None:
            check("nodes: daemon stopped cleanly", daemon.stop() == 0)
        sim.stop()


# -------------------------------------------------------------------------------------- k8s
def scenario_k8s():
    n = 150
    down_s = float(os.environ.get("FAULT_MATRIX_API_DOWN_S", "20"))
    base, port = base_for(1)
    tmp = tempfile.mkdtemp(prefix="cmh-fm-k8s-")
    sim = Sim(n + 10, base, port, tmp, faults="refuse=1%,reset=1%,stall=1%,chunked=3%", churn=0,
              restart=3, seed=22)
    api = K8sApi(tmp, 300 + down_s)
    daemon = None
    try:
        if not check("k8s: every simulated node on its own address", sim.all_on_port(port)):
            return
        pods = {sim.nodes[i][0]: ("aws-node-%d" % i, sim.nodes[i][1]) for i in range(n)}
        api.cmds(["add %s %s %s" % (p, node, ip) for node, (p, ip) in pods.items()])
        env = api.env()
        env.update({"IPAMD_METRICS_PORT": str(port), "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
                    "SCRAPE_TIMEOUT": "2s", "HTTP_TIMEOUT": "2", "K8S_WATCH_TIMEOUT": "30s",
                    "SCRAPE_KEEPALIVE": "false", "SCRAPE_MODE": "direct"})
        daemon = Daemon(env, keep=("round", "datum", "listening", "scrape failed"))
        model = Model(2)
        state = {"bad": 0, "rounds": 0, "epoch": 0, "checked": 0}

        def one_round(what, settle=0.5, advance=True, sets=None):
            """Steps one round; the daemon must scrape one of `sets` (node-name sets, told apart
            by size; default: the current pods); its datums must equal the truth model on that
            set. Returns (summary, the set scraped or None)."""
            if state["rounds"] > 0:
                time.sleep(settle)
                if advance:
                    sim.advance()
                    state["epoch"] += 1
                daemon.signal(signal.SIGUSR1)
            summary, evs = daemon.next("round", 30)
            state["rounds"] += 1
            if not check("k8s: round during %s finished" % what, summary is not None):
                raise RuntimeError("no round during " + what)
            return check_round(what, summary, evs, sets)

        def check_round(what, summary, evs, sets=None):
            scraped = next((x for x in (sets or [set(pods)]) if len(x) == summary["targets"]), None)
            if scraped is None:
                return summary, None
            truth = [t for t in sim.truth(state["epoch"]) if t["node"] in scraped]
            for gone in [k for k in model.nodes if k not in scraped]:
                del model.nodes[gone]  # a node no longer a target is forgotten
            got, start = log_datums(evs)
            exp = model.round(start, truth)
            state["checked"] += 1
            if got != exp:
                state["bad"] += 1
                if state["bad"] <= 3:
                    failures.append("k8s: round during %s differs (got, expected): %s" % (what, diff(got, exp)))
                    if os.environ.get("FM_DEBUG"):
                        print("DEBUG epoch", state["epoch"], summary.get("failures"), "failed:",
                              sorted((e["target"], e.get("result")) for e in evs if e.get("msg") == "scrape failed"),
                              "truth not ok:", sorted((t["node"], t["fault"]) for t in truth if not t["ok"]))
            return summary, scraped

        # Discovery first: the first rounds may run before the first list ends (no targets).
        daemon_started = time.monotonic()
        summary, evs = daemon.next("round", 30)
        while summary is not None and summary["targets"] != n and time.monotonic() - daemon_started < 30:
            time.sleep(0.5)
            daemon.signal(signal.SIGUSR1)
            summary, evs = daemon.next("round", 30)
        if not check("k8s: %d pods discovered" % n, summary is not None and summary["targets"] == n, summary):
            return
        state["rounds"] = 1
        model.rounds_finished = summary["round"] - 1  # the daemon's rounds before discovery ended
        check_round("start-up", summary, evs)
        one_round("steady")
        faults = [("watch disconnect", "disconnect"), ("three 500s", "fail 3"),
                  ("410 Gone", "gone"), ("slow watch", "stall 4"),
                  ("token rotation", "token fm-rotated-token"), ("503s after rotation", "fail 2 503")]
        for what, cmd in faults:
            check("k8s: %s injected" % what, api.cmd(cmd).startswith("OK"))
            if cmd.startswith("fail"):
                api.cmd("disconnect")  # makes discovery ask again, into the failures
            for _ in range(2):
                s, scraped = one_round(what)
                check("k8s: %s: last known targets scraped" % what, scraped is not None and s["fresh"] > 0, s)
        # The API down; pods deleted meanwhile; rounds go on with the last known targets.
        check("k8s: API down", api.cmd("down %g" % down_s).startswith("OK"))
        t_down = time.monotonic()
        old = set(pods)
        removed = list(pods)[:5]
        api.cmds(["del %s" % pods[k][0] for k in removed])
        for k in removed:
            del pods[k]
        while time.monotonic() - t_down < down_s - 2:
            s, scraped = one_round("API down", settle=1.5, sets=[old])
            check("k8s: API down: last known %d targets scraped" % n, scraped is not None, s)
        st, body = daemon.get("/readyz")
        check("k8s: ready while the API is down (last known targets)", st == 200, (st, body))
        # Recovery by itself (no signal, no restart): rounds see the old set until discovery's
        # backoff ends, then the new one; each is checked against its own truth.
        recovered = False
        while time.monotonic() - t_down < down_s + 60:
            s, scraped = one_round("recovery", settle=1.0, sets=[set(pods), old])
            if scraped is None:
                check("k8s: recovery: targets are the old or the new set", False, s)
                break
            if len(scraped) == len(pods):
                recovered = True
                break
        t_back = max(0.0, time.monotonic() - t_down - down_s)
        check("k8s: discovery recovered by itself after the outage (%d targets)" % len(pods), recovered, s)
        print("k8s: %d rounds checked; new target set seen %.1f s after the outage ended" %
              (state["checked"], t_back), flush=True)
        st, body = daemon.get("/readyz")
        check("k8s: /readyz 200 after recovery", st == 200, (st, body))
        check("k8s: API saw the rotated token", "fm-rotated-token" in
              json.dumps(api.stats().get("tokens_seen", [])), api.stats().get("tokens_seen"))
        check("k8s: every round's datums equal the truth (%d rounds)" % state["checked"],
              state["bad"] == 0, state["bad"])
    finally:
        if daemon is not None:
            check("k8s: daemon stopped cleanly", daemon.stop() == 0)
        api.stop()
        sim.stop()


# ------------------------------------------------------------------------------- cloudwatch
CW_TOKEN = "fm-session-token"
CONTAINER_AUTH = "fm-container-auth"


def creds_exchange(exp_s=None, status=200, stall=0):
    ex = {"method": "GET", "path": "/creds", "status": status,
          "expect_headers": {"authorization": CONTAINER_AUTH}}
    if stall:
        ex["stall"] = stall
    elif status == 200:
        ex["body"] = json.dumps({"AccessKeyId": CloudWatch.KEY, "SecretAccessKey": CloudWatch.SECRET,
                                 "Token": CW_TOKEN, "Expiration": "{{EXP+%d}}" % exp_s})
        ex["headers"] = {"Content-Type": "application/json"}
    else:
        ex["body"] = "injected"
    return ex


class Rounds:
    """Steps rounds (advance + SIGUSR1), remembering each round's summary, truth and the wall
    time around it (to tell its datums' timestamp)."""

    def __init__(self, sim, daemon, names=None):
        self.sim, self.daemon, self.names = sim, daemon, names
        self.list = []  # (summary, truth, t0_ms, t1_ms)
        self.epoch = 0

    def run(self, first=False, limit_s=30):
        t0 = time.time() * 1000 - 1
        if first:
            t0 -= 60000  # started by the daemon's own first tick
        if not first:
            self.sim.advance()
            self.epoch += 1
            self.daemon.signal(signal.SIGUSR1)
        summary, _ = self.daemon.next("round", limit_s)
        t1 = time.time() * 1000
        if summary is None:
            raise RuntimeError("no round")
        truth = self.sim.truth(self.epoch)
        if self.names:
            truth = renamed(truth, self.names)
        self.list.append((summary, truth, t0, t1))
        return summary

    def check_received(self, tag, datums, model=None):
        """Every received datum equals the model's value for its round; one value per metric
        and round. Returns (rounds with datums, rounds fully received)."""
        model = model or Model(2)
        by = cw_by_round(datums)
        bad = full = seen = 0
        for summary, truth, t0, t1 in self.list:
            ts = [t for t in by if t0 <= t <= t1]
            exp = model.round(ts[0] if ts else t0, truth)
            if len(ts) > 1:
                bad += 1
                failures.append("%s: two timestamps in one round: %s" % (tag, ts))
                continue
            if not ts:
                continue
            got = by[ts[0]]
            seen += 1
            full += len(got) == len(exp) == summary["datums"]
            wrong = {k: (v, exp.get(k)) for k, v in got.items() if exp.get(k) != v}
            if wrong:
                bad += 1
                if bad <= 2:
                    failures.append("%s: round %d: received datums differ from the truth (got, expected): %s"
                                    % (tag, summary["round"], wrong))
        check("%s: every received datum equals the truth model, once (%d rounds)" % (tag, seen), bad == 0, bad)
        check("%s: every timestamp belongs to a round" % tag,
              all(any(t0 <= t <= t1 for _, _, t0, t1 in self.list) for t in by), sorted(by)[:5])
        return seen, full


def cw_metric(m, outcome):
    return int(m.get('cni_metrics_helper_cloudwatch_datums_total{outcome="%s"}' % outcome, 0))


def scenario_cloudwatch():
    n = 40
    base, port = base_for(2)
    tmp = tempfile.mkdtemp(prefix="cmh-fm-cw-")
    sim = Sim(n, base, port, tmp, restart=5, seed=23)
    cw = CloudWatch(280, stall=3, token=CW_TOKEN)
    creds = AwsCreds(280)
    daemon = None
    try:
        targets = ",".join("%s=%s:%s" % tuple(x) for x in sim.nodes)
        # Container credentials that expire in 302 s: 2 s later they are inside the 5-minute refresh
        # window and every publish asks again, through a 500, a stall (past HTTP_TIMEOUT) and another 500, until
        # hour-long ones arrive; the stand-in logs every request.
        script = [creds_exchange(302), creds_exchange(status=500), creds_exchange(stall=4),
                  creds_exchange(302), creds_exchange(status=503)] + [creds_exchange(3600)] * 6
        creds.cmd({"cmd": "script", "exchanges": script})
        env = cw.env()
        env.update({"SCRAPE_TARGETS": targets, "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
                    "SCRAPE_KEEPALIVE": "false", "AWS_CONTAINER_CREDENTIALS_FULL_URI": creds.url + "/creds",
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_AUTH, "CW_BUFFER_MAX_DATUMS": "1000",
                    "CW_BACKOFF_BASE": "50ms", "CW_BACKOFF_CAP": "300ms", "HTTP_TIMEOUT": "2",
                    "SHUTDOWN_TIMEOUT": "10"})
        daemon = Daemon(env)
        rounds = Rounds(sim, daemon)
        rounds.run(first=True)
        for _ in range(3):
            rounds.run()
            time.sleep(0.3)
        base_rss = max(daemon.proc_status()[0], 1)
        # Throttling storm, then 5xx / stalls / resets at random, then ExpiredToken; rounds half a
        # second apart until every scripted fault and credential answer was served (bounded).
        storm = ["throttle"] * 12 + [{"kind": "throttle429", "retry_after": 1}, "500", "503", "stall", "reset",
                                     "reset_early"]
        cw.faults({"script": storm,
                   "random": {"rate": 0.3, "kinds": ["throttle", "500", "503", "reset", "stall"], "seed": 9}})

        def served(kinds):
            f = cw.stats()["faults"]
            return all(f.get(k, 0) >= c for k, c in kinds.items())

        t = time.monotonic()
        while time.monotonic() - t < 40:
            rounds.run()
            time.sleep(0.5)
            if served({"throttle": 12, "throttle429": 1, "stall": 1, "reset_early": 1}) and \
                    len(creds.cmd({"cmd": "log"})["requests"]) >= 6:
                break
        debug("after the storm", cw.stats())
        cw.faults({"clear": True})
        cw.faults({"script": ["expired", "expired"]})
        t = time.monotonic()
        while time.monotonic() - t < 20:
            rounds.run()
            time.sleep(0.3)
            if served({"expired": 2}):
                break
        rounds.run()
        debug("after expired", cw.stats())
        # CloudWatch down for longer than the buffer holds (about 30 datums a round, 1000 kept).
        cw.faults({"down": True})
        rss = []
        queue_full_rss = None
        for i in range(45):
            rounds.run()
            st = daemon.proc_status()
            rss.append(st[0])
            m = daemon.metrics()
            if queue_full_rss is None and m.get("cni_metrics_helper_cloudwatch_queue_datums", 0) >= 990:
                queue_full_rss = st[0]
        cw.faults({"clear": True})
        rounds.run()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.metrics().get("cni_metrics_helper_cloudwatch_queue_datums", 1) != 0:
            time.sleep(0.3)
        m = daemon.metrics()
        datums = cw.datums()
        stats = cw.stats()
        produced = sum(r[0]["datums"] for r in rounds.list)
        drops = {o: cw_metric(m, o) for o in ("dropped_overflow", "dropped_age", "dropped_invalid", "dropped_shutdown")}
        published = cw_metric(m, "published")
        check("cloudwatch: queue drained", m.get("cni_metrics_helper_cloudwatch_queue_datums") == 0, m)
        check("cloudwatch: received + dropped = produced", len(datums) + sum(drops.values()) == produced,
              (len(datums), drops, produced))
        check("cloudwatch: the daemon's published count = datums received", published == len(datums),
              (published, len(datums)))
        check("cloudwatch: the outage overflowed the buffer (drops by reason: overflow only)",
              drops["dropped_overflow"] > 0 and drops["dropped_overflow"] == sum(drops.values()), drops)
        check("cloudwatch: no duplicate, bad signature or invalid request",
              stats["duplicates"] == 0 and stats["bad_signature"] == 0 and stats["invalid_params"] == 0, stats)
        kinds = set(stats["faults"])
        check("cloudwatch: every fault kind was served", {"throttle", "throttle429", "500", "503", "stall",
                                                          "reset", "reset_early", "expired"} <= kinds, stats["faults"])
        seen, full = rounds.check_received("cloudwatch", datums)
        check("cloudwatch: rounds before the outage arrived whole", full >= len(rounds.list) - 46, (seen, full))
        log = creds.cmd({"cmd": "log"})
        served = len(log["requests"])
        check("cloudwatch: container credentials refreshed through a 500, a stall and a 503",
              served >= 6 and not log["mismatches"], (served, log["mismatches"]))
        peak = max(rss)
        print("cloudwatch: produced %d, received %d, dropped %s; creds requests %d; RSS %d kB before, "
              "peak %d kB in the outage (buffer full at %s kB); faults %s" %
              (produced, len(datums), drops, served, base_rss, peak, queue_full_rss, stats["faults"]), flush=True)
        if not ASAN:
            # The queue holds at most CW_BUFFER_MAX_DATUMS (1000) datums of a few hundred bytes:
            # well under 1 MiB. Allow 8 MiB over the pre-fault RSS for allocator slack and
            # libcurl's buffers; and once the buffer is full, RSS must not climb further.
            check("cloudwatch: RSS bounded by the buffer (peak - before <= 8 MiB)", peak - base_rss <= 8192,
                  (base_rss, peak))
            check("cloudwatch: RSS flat once the buffer is full (<= 1 MiB more)",
                  queue_full_rss is not None and peak - queue_full_rss <= 1024, (queue_full_rss, peak))
        rc = daemon.stop()
        daemon = None
        check("cloudwatch: daemon stopped cleanly", rc == 0, rc)
    finally:
        if daemon is not None:
            daemon.stop()
        creds.stop()
        cw.stop()
        sim.stop()
    scenario_imds_unreachable()


def scenario_imds_unreachable():
    """No region, no keys, instance metadata refusing connections: the daemon stays up (no crash
    loop, unlike the original), says why in the log and on /readyz, retries every 30 s, and sends
    nothing; with AWS_CLUSTER_ID set it scrapes meanwhile and says each round was not published."""
    base, port = base_for(3)
    tmp = tempfile.mkdtemp(prefix="cmh-fm-imds-")
    sim = Sim(10, base, port, tmp, seed=24)
    cw = CloudWatch(120)
    daemon = None
    try:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        s.close()  # nothing listens there now: connection refused
        env = {"SCRAPE_TARGETS": ",".join("%s=%s:%s" % tuple(x) for x in sim.nodes), "USE_CLOUDWATCH": "yes",
               "AWS_ENDPOINT_URL_CLOUDWATCH": cw.url, "AWS_EC2_METADATA_DISABLED": "false",
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:%d" % dead,
               "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0", "HTTP_TIMEOUT": "2"}
        daemon = Daemon(env, keep=("round", "listening", "CloudWatch publishing not possible yet; retrying in 30s"))
        ev, _ = daemon.next("CloudWatch publishing not possible yet; retrying in 30s", 15)
        check("imds: the failure is logged with its reason and the fix", ev is not None and "IMDS" in ev.get("reason", "")
              and "AWS_REGION" in ev.get("fix", ""), ev)
        time.sleep(1.0)
        check("imds: still running", daemon.proc.poll() is None)
        st, body = daemon.get("/readyz")
        check("imds: /readyz 503 says CloudWatch publishing is not set up", st == 503 and "CloudWatch" in body, (st, body))
        check("imds: nothing sent to CloudWatch", cw.stats()["requests"] == 0, cw.stats())
        check("imds: /healthz ok", daemon.get("/healthz")[0] == 200)
        rc = daemon.stop()
        daemon = None
        check("imds: daemon stopped cleanly", rc == 0, rc)
        # With AWS_CLUSTER_ID set, scraping and /metrics do not wait for the region: rounds run,
        # each says it was not published, /readyz names the reason, and nothing is sent.
        env["AWS_CLUSTER_ID"] = "fm-imds"
        daemon = Daemon(env, keep=("round", "round not published: CloudWatch publishing is not set up yet",
                                   "CloudWatch publishing not possible yet; retrying in 30s"))
        ev, _ = daemon.next("round not published: CloudWatch publishing is not set up yet", 15)
        check("imds+cluster id: the round says it was not published", ev is not None and ev.get("datums", 0) > 0, ev)
        ev, _ = daemon.next("round", 5)
        check("imds+cluster id: the first round runs without a region", ev is not None and ev.get("fresh") == 10, ev)
        ev, _ = daemon.next("CloudWatch publishing not possible yet; retrying in 30s", 15)
        st, body = daemon.get("/readyz")
        check("imds+cluster id: /readyz 503 names the reason", st == 503 and "IMDS" in body, (st, body))
        st, body = daemon.get("/metrics")
        check("imds+cluster id: /metrics has the round", st == 200 and "cni_metrics_helper_rounds_total 1" in body,
              body[:300])
        check("imds+cluster id: nothing sent to CloudWatch", cw.stats()["requests"] == 0, cw.stats())
        rc = daemon.stop()
        daemon = None
        check("imds+cluster id: daemon stopped cleanly", rc == 0, rc)
    finally:
        if daemon is not None:
            daemon.stop()
        cw.stop()
        sim.stop()


# ---------------------------------------------------------------------------------- process
def scenario_process():
    n = 30
    base, port = base_for(4)
    tmp = tempfile.mkdtemp(prefix="cmh-fm-proc-")
    sim = Sim(n, base, port, tmp, faults="chunked=0", restart=5, seed=25)
    cw = CloudWatch(280, stall=3)
    names_env = ",".join("%s=%s:%s" % tuple(x) for x in sim.nodes)
    env = cw.env()
    env.update({"SCRAPE_TARGETS": names_env, "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
                "SCRAPE_KEEPALIVE": "false", "SCRAPE_TIMEOUT": "3s", "AWS_ACCESS_KEY_ID": CloudWatch.KEY,
                "AWS_SECRET_ACCESS_KEY": CloudWatch.SECRET, "CW_BACKOFF_BASE": "50ms",
                "CW_BACKOFF_CAP": "300ms", "HTTP_TIMEOUT": "2", "SHUTDOWN_TIMEOUT": "8"})
    daemon = None
    try:
        def stopped_within(d, what, limit_s=8.0):
            t = time.monotonic()
            d.signal(signal.SIGTERM)
            rc = d.wait(limit_s + 5)
            took = time.monotonic() - t
            evs = d.drain()
            stopped = next((e for e in evs if e.get("msg") == "stopped"), None)
            last = [e for e in evs if e.get("msg") == "round"]
            check("process: %s: exit 0 within SHUTDOWN_TIMEOUT (%.2f s)" % (what, took), rc == 0 and took <= limit_s + 0.5,
                  (rc, took))
            return stopped, last, took

        # SIGTERM during a round (three stalled nodes hold it open for 3 s).
        daemon = Daemon(env)
        rounds = Rounds(sim, daemon)
        rounds.run(first=True)
        rounds.run()
        sim.set_faults("stall=0-2")
        sim.advance()
        rounds.epoch += 1
        daemon.signal(signal.SIGUSR1)
        time.sleep(0.7)
        stopped, last, took_round = stopped_within(daemon, "SIGTERM during a round")
        daemon = None
        received = len(cw.datums())
        produced = sum(r[0]["datums"] for r in rounds.list) + sum(e["datums"] for e in last)
        check("process: SIGTERM during a round: that round finished and was published",
              len(last) == 1 and stopped is not None and stopped["cw_dropped_shutdown"] == 0 and
              stopped["cw_published"] == received == produced, (last, stopped, received, produced))

        sim.set_faults("chunked=0")
        # SIGTERM during a publish that stalls past HTTP_TIMEOUT: retried, flushed, in time.
        cw_before = received
        daemon = Daemon(env)
        rounds = Rounds(sim, daemon)
        rounds.run(first=True)
        time.sleep(0.5)
        cw.faults({"script": ["stall"]})
        sim.advance()
        rounds.epoch += 1
        daemon.signal(signal.SIGUSR1)
        s, _ = daemon.next("round", 30)
        time.sleep(0.3)  # the PutMetricData is now in flight, stalled
        stopped, _, took_pub = stopped_within(daemon, "SIGTERM during a stalled publish")
        daemon = None
        received = len(cw.datums()) - cw_before
        produced = rounds.list[0][0]["datums"] + (s["datums"] if s else 0)
        check("process: SIGTERM during a publish: flushed, nothing dropped",
              stopped is not None and stopped["cw_dropped_shutdown"] == 0 and stopped["cw_published"] == received == produced,
              (stopped, received, produced))
        check("process: the stalled publish was served", cw.stats()["faults"].get("stall", 0) >= 1, cw.stats()["faults"])

        # SIGKILL right after a round, then a new daemon: loss at most the unsent buffer, no spike.
        cw_before = len(cw.datums())
        daemon = Daemon(env)
        a = Rounds(sim, daemon)
        a.epoch = sim.epoch
        a.run(first=True)
        for _ in range(3):
            a.run()
            time.sleep(0.3)
        a.run()
        queued = daemon.metrics().get("cni_metrics_helper_cloudwatch_queue_datums", 0)
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon = None
        got_a = cw.datums()[cw_before:]
        produced_a = sum(r[0]["datums"] for r in a.list)
        check("process: SIGKILL loses at most the unsent buffer (<= last round's datums)",
              produced_a - len(got_a) <= a.list[-1][0]["datums"], (produced_a, len(got_a), queued))
        a.check_received("process: before SIGKILL", got_a)
        mid = len(cw.datums())
        daemon = Daemon(env)
        b = Rounds(sim, daemon)
        b.epoch = sim.epoch
        b.run(first=True)
        for _ in range(3):
            time.sleep(0.3)
            b.run()
        time.sleep(1.0)
        got_b = cw.datums()[mid:]
        first_ts = [d for d in got_b if b.list[0][2] <= d["timestamp_ms"] <= b.list[0][3]]
        counters = {name for name, kind in TABLE.values() if kind != "gauge"}
        check("process: first round after the restart publishes no counter (no spike)",
              first_ts and not any(d["metric"] in counters for d in first_ts), [d["metric"] for d in first_ts])
        b.check_received("process: after restart (a fresh helper's rules)", got_b)
        print("process: SIGTERM mid-round exit %.2f s, mid-publish exit %.2f s; SIGKILL: produced %d, "
              "received %d (queue at kill %d)" % (took_round, took_pub, produced_a, len(got_a), queued), flush=True)
    finally:
        if daemon is not None:
            daemon.stop()
        cw.stop()
        sim.stop()


scenario_names = {"nodes": scenario_nodes, "k8s": scenario_k8s, "cloudwatch": scenario_cloudwatch,
                  "process": scenario_process}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(scenario_names):
        t0 = time.monotonic()
        try:
            scenario_names[name]()
        except Exception as e:  # a crashed scenario is a failure, never a pass
            failures.append("%s: %s: %s" % (name, type(e).__name__, e))
        print("%s: %.1f s" % (name, time.monotonic() - t0), flush=True)
    finish()
