"""Soak driver (run by test/soak/soak.sh): the ipamD simulator (churn, restarts, scrape faults),
the fake Kubernetes API holding one aws-node pod per simulated node (discovery; occasional watch
cuts, 410s, 500s and token rotations), the CloudWatch stand-in (a few throttles and 5xx, which
are retried, never lost) and the daemon at a 1-second interval, for SOAK_MINUTES.

Every SOAK_SAMPLE_S seconds it writes the daemon's RSS, peak RSS and open fds (/proc) and its
round and CloudWatch counters (/metrics) to a CSV. At the end (SIGTERM, flush) it prints the
curve per bucket after warm-up, rounds done/skipped, datums produced (sum of the round summary
lines) against datums received by the stand-in, and exits 1 when:
  - RSS grew after warm-up: the last bucket's highest sample exceeds the first post-warm-up
    bucket's highest by more than SOAK_RSS_TOL_KB (default 4096) and 5%; skipped under ASan and
    valgrind, whose allocators (quarantine, shadow) grow by design;
  - open fds grew after warm-up: last bucket's highest > first bucket's highest + SOAK_FD_TOL
    (default 64: the scrape sockets open at the sampled instant vary by round);
  - any datum was lost: received != produced, or the daemon reports a drop;
  - the daemon did not exit 0, or (valgrind) reported an error.
Environment: SOAK_MINUTES (30), SOAK_NODES (20000), SOAK_INTERVAL (1), SOAK_SAMPLE_S (10),
SOAK_WARMUP_S (min(300, a third of the run)), SOAK_BUCKET_S (300, or a sixth of a short run),
SOAK_API_DOWN_S (120), SOAK_VALGRIND (0/1), SOAK_OUT (directory for soak.csv, daemon.log, valgrind.log),
CMH_BIN, CMH_BUILD_DIR, CMH_SOURCE_DIR, CMH_DATA_DIR."""
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from fault_peers import CloudWatch, Daemon, K8sApi, Sim, sanitized  # noqa: E402


def env_num(name, default):
    v = os.environ.get(name, "")
    return float(v) if v else default


MINUTES = env_num("SOAK_MINUTES", 30)
NODES = int(env_num("SOAK_NODES", 20000))
INTERVAL = env_num("SOAK_INTERVAL", 1)
SAMPLE_S = env_num("SOAK_SAMPLE_S", 10)
DURATION = MINUTES * 60
WARMUP = env_num("SOAK_WARMUP_S", min(300, DURATION / 3))
BUCKET = env_num("SOAK_BUCKET_S", 300 if DURATION >= 1800 else max(SAMPLE_S, (DURATION - WARMUP) / 4))
VALGRIND = os.environ.get("SOAK_VALGRIND", "0") == "1"
ASAN = sanitized()
RSS_TOL_KB = env_num("SOAK_RSS_TOL_KB", 4096)
FD_TOL = env_num("SOAK_FD_TOL", 64)
OUT = os.environ.get("SOAK_OUT") or tempfile.mkdtemp(prefix="cmh-soak-")
os.makedirs(OUT, exist_ok=True)
API_DOWN_S = env_num("SOAK_API_DOWN_S", 120)
PORT = 31000 + os.getpid() % 2000
BASE = "127.%d.0.1" % (100 + os.getpid() % 20)
SIM_FAULTS = ("refuse=0.3%,reset=0.3%,status500=0.3%,garbage=0.2%,truncate=0.3%,ctype=0.1%,"
              "badtext=0.2%,stall=0.1%,trickle=0.1%,oversize=0.05%,chunked=2%,eofbody=2%")
problems = []


def say(*a):
    print(*a, flush=True)


def main():
    tmp = tempfile.mkdtemp(prefix="cmh-soak-run-")
    life = DURATION + 600
    sim = api = cw = daemon = None
    stop = threading.Event()
    try:
        sim = Sim(NODES, BASE, PORT, tmp, faults=SIM_FAULTS, churn=0.5, restart=0.5, seed=9,
                  truth=False)
        if not sim.all_on_port(PORT):
            problems.append("simulator could not bind every node at %s:%d" % (BASE, PORT))
            return
        api = K8sApi(tmp, life)
        t0 = time.monotonic()
        api.cmds(["add aws-node-%d %s %s" % (i, n, ip) for i, (n, ip, _) in enumerate(sim.nodes)])
        say("soak: %d pods added to the fake API in %.1f s" % (NODES, time.monotonic() - t0))
        cw = CloudWatch(life)
        cw.faults({"random": {"rate": 0.02, "kinds": ["throttle", "500", "503"], "seed": 3}})
        env = dict(api.env())
        env.update(cw.env())
        env.update({"AWS_ACCESS_KEY_ID": CloudWatch.KEY, "AWS_SECRET_ACCESS_KEY": CloudWatch.SECRET,
                    "AWS_CLUSTER_ID": "soak", "METRIC_UPDATE_INTERVAL": "%gs" % INTERVAL,
                    "IPAMD_METRICS_PORT": str(PORT), "SCRAPE_TIMEOUT": "%dms" % int(INTERVAL * 500),
                    "SCRAPE_CONCURRENCY": "4000", "SCRAPE_MAX_BODY": "256KiB", "HTTP_TIMEOUT": "5",
                    "CW_BACKOFF_BASE": "50ms", "CW_BACKOFF_CAP": "1s", "SHUTDOWN_TIMEOUT": "30",
                    "SCRAPE_MODE": "direct"})
        wrap = ()
        if VALGRIND:
            wrap = ("valgrind", "--tool=memcheck", "--error-exitcode=99", "--leak-check=full",
                    "--errors-for-leak-kinds=definite,indirect", "--show-leak-kinds=definite,indirect",
                    "--track-fds=no", "--log-file=" + os.path.join(OUT, "valgrind.log"))
        daemon = Daemon(env, log_path=os.path.join(OUT, "daemon.log"), wrap=wrap, keep=("round", "stopped"))
        start = time.monotonic()

        def advancer():
            """The fleet moves every interval (values, churn, restarts); the API misbehaves now
            and then (every event kind once per 100 s) and, in runs of 10 minutes or more, is
            down for SOAK_API_DOWN_S (120 s) once, at 40% of the run."""
            k8s = ["disconnect", "fail 2", "gone", "token soak-token-%d", "stall 3"]
            n = 0
            while not stop.wait(INTERVAL):
                try:
                    sim.advance()
                    n += 1
                    if DURATION >= 600 and n == int(0.4 * DURATION / INTERVAL):
                        api.cmd("down %d" % API_DOWN_S)  # the API down for minutes, once
                    elif n % 20 == 0:
                        c = k8s[(n // 20) % len(k8s)]
                        api.cmd(c % n if "%d" in c else c)
                except Exception as e:  # the soak goes on; the summary says what failed
                    problems.append("advancer: %s" % e)
                    return

        adv = threading.Thread(target=advancer, daemon=True)
        adv.start()
        csv_path = os.path.join(OUT, "soak.csv")
        samples = []
        with open(csv_path, "w") as csv:
            csv.write("t_s,rss_kb,hwm_kb,fds,rounds,rounds_skipped,cw_published,cw_queue\n")
            while time.monotonic() - start < DURATION:
                time.sleep(min(SAMPLE_S, max(0.1, DURATION - (time.monotonic() - start))))
                st = daemon.proc_status()
                if st is None or daemon.proc.poll() is not None:
                    problems.append("daemon exited during the soak (status %s)" % daemon.proc.poll())
                    break
                try:
                    m = daemon.metrics()
                except Exception as e:
                    m = {}
                    problems.append("/metrics unreadable at %.0f s: %s" % (time.monotonic() - start, e))
                row = (time.monotonic() - start, st[0], st[1], st[2],
                       m.get("cni_metrics_helper_rounds_total", -1),
                       m.get("cni_metrics_helper_rounds_skipped_total", -1),
                       m.get('cni_metrics_helper_cloudwatch_datums_total{outcome="published"}', -1),
                       m.get("cni_metrics_helper_cloudwatch_queue_datums", -1))
                samples.append(row)
                csv.write("%.1f,%d,%d,%d,%d,%d,%d,%d\n" % row)
                csv.flush()
        stop.set()
        adv.join(30)
        cw.faults({"clear": True})
        rc = daemon.stop(timeout=120 if VALGRIND else 60)
        rounds = skipped_log = produced = 0
        results = {}
        stopped = None
        with open(os.path.join(OUT, "daemon.log")) as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("msg") == "round":
                    rounds += 1
                    produced += int(ev["datums"])
                    for item in filter(None, ev.get("failures", "").split(",")):
                        k, v = item.split(":")
                        results[k] = results.get(k, 0) + int(v)
                elif ev.get("msg") == "previous round still running; tick skipped":
                    skipped_log += 1
                elif ev.get("msg") == "stopped":
                    stopped = ev
        cst = cw.stats()
        received = cst["datums"]
        report(samples, rounds, skipped_log, produced, received, results, stopped, rc, cst)
    finally:
        stop.set()
        if daemon is not None and daemon.proc.poll() is None:
            daemon.stop()
        for p in (cw, api, sim):
            if p is not None:
                p.stop()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


def report(samples, rounds, skipped, produced, received, results, stopped, rc, cst):
    say("soak: %d nodes, interval %gs, %.1f min, warm-up %.0f s, %s%s; files in %s" %
        (NODES, INTERVAL, MINUTES, WARMUP, "ASan+UBSan build" if ASAN else "release build",
         " under valgrind memcheck" if VALGRIND else "", OUT))
    post = [s for s in samples if s[0] >= WARMUP]
    if not post:
        problems.append("no sample after warm-up")
        return
    say("%-14s %8s %8s %8s %8s | %6s %6s %6s %6s" % ("bucket (s)", "rss_min", "rss_max", "rss_1st",
                                                       "rss_last", "fd_min", "fd_max", "fd_1st", "fd_last"))
    buckets = []
    b0 = WARMUP
    while b0 < post[-1][0] + 1e-9:
        b = [s for s in post if b0 <= s[0] < b0 + BUCKET]
        if b:
            buckets.append(b)
            rss = [s[1] for s in b]
            fds = [s[3] for s in b]
            say("%6.0f-%-7.0f %7.1fM %7.1fM %7.1fM %7.1fM | %6d %6d %6d %6d" %
                (b0, b0 + BUCKET, min(rss) / 1024, max(rss) / 1024, rss[0] / 1024, rss[-1] / 1024,
                 min(fds), max(fds), fds[0], fds[-1]))
        b0 += BUCKET
    pre = [s for s in samples if s[0] < WARMUP]
    say("warm-up: rss %s, fds %s; peak RSS (VmHWM) %.1f MB" % (
        "%.1f-%.1f MB" % (min(s[1] for s in pre) / 1024, max(s[1] for s in pre) / 1024) if pre else "-",
        "%d-%d" % (min(s[3] for s in pre), max(s[3] for s in pre)) if pre else "-",
        samples[-1][2] / 1024))
    first_rss, last_rss = max(s[1] for s in buckets[0]), max(s[1] for s in buckets[-1])
    first_fd, last_fd = max(s[3] for s in buckets[0]), max(s[3] for s in buckets[-1])
    growth = last_rss - first_rss
    say("RSS after warm-up: first bucket max %.1f MB, last bucket max %.1f MB (growth %+d kB)" %
        (first_rss / 1024, last_rss / 1024, growth))
    say("fds after warm-up: first bucket max %d, last bucket max %d" % (first_fd, last_fd))
    if ASAN or VALGRIND:
        say("RSS growth not judged under %s (its allocator grows by design)" % ("valgrind" if VALGRIND else "ASan"))
    elif growth > max(RSS_TOL_KB, 0.05 * first_rss):
        problems.append("RSS grew after warm-up by %d kB (tolerance %d kB or 5%%)" % (growth, RSS_TOL_KB))
    if last_fd > first_fd + FD_TOL:
        problems.append("open fds grew after warm-up: %d -> %d (tolerance %d)" % (first_fd, last_fd, FD_TOL))
    last = samples[-1]
    say("rounds: %d finished, %d ticks skipped (log); /metrics at the last sample: %d finished, %d skipped" %
        (rounds, skipped, last[4], last[5]))
    say("scrape failures by class over the run: %s" % (", ".join("%s=%d" % kv for kv in sorted(results.items()))
                                                      or "none"))
    say("datums: produced %d (round lines), received by the stand-in %d, daemon published %s, "
        "dropped at shutdown %s; stand-in: %d requests, faults %s, duplicates %d, bad signatures %d, "
        "invalid %d" % (produced, received, stopped and stopped.get("cw_published"),
                        stopped and stopped.get("cw_dropped_shutdown"), cst["requests"], cst["faults"],
                        cst["duplicates"], cst["bad_signature"], cst["invalid_params"]))
    if received != produced:
        problems.append("datums lost: produced %d, received %d" % (produced, received))
    if stopped is None or stopped.get("cw_published") != received or stopped.get("cw_dropped_shutdown") != 0:
        problems.append("daemon's own accounting differs: %s vs received %d" % (stopped, received))
    if cst["duplicates"] or cst["bad_signature"] or cst["invalid_params"]:
        problems.append("stand-in refused or saw duplicates: %s" % cst)
    if rc != 0:
        problems.append("daemon exit status %s%s" % (rc, " (valgrind found errors)" if rc == 99 else ""))


main()
for p in problems:
    say("SOAK FAIL:", p)
say("SOAK %s" % ("FAILED" if problems else "PASSED"))
sys.exit(1 if problems else 0)
