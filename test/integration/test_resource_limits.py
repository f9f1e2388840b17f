"""Resource limits: the daemon degrades gracefully, with a clear error, never a crash or a busy loop.

fd: a fleet of 500 simulated nodes scraped under RLIMIT_NOFILE=64. Concurrency is capped with one
warning; every round equals the simulator's truth (the README's aggregation rules, computed here by
truth_model). Then a client holds connections to our HTTP server until the daemon has no file
descriptor left: accept failures are logged, a round run meanwhile fails every node with EMFILE
(logged by name, counted in the summary, stale values published as the rules say, still exact),
the daemon stays nearly idle on the CPU, and once the client lets go the next rounds are exact
again.

disk: stdout and stderr are /dev/full (ENOSPC on every log write) and CloudWatch is on (the
stand-in): rounds keep running and publishing (the stand-in receives the truth), our /metrics
counts the lost log lines (cni_metrics_helper_log_lines_lost_total), the CPU stays idle, and
SIGTERM still stops the daemon cleanly.

Usage: test_resource_limits.py [fd|disk] (default: both). Each scenario takes well under 60 s."""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
SIM = os.path.join(BUILD, "test", "ipamd_sim")
TEMPLATE = os.path.join(DATA, "ipamd/cni_test1.data")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures, finish  # noqa: E402
from truth_model import Model, ts_ms  # noqa: E402


def cpu_seconds(pid):
    """utime + stime of pid, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_sim(tmp, nodes, base, seed):
    sim = subprocess.Popen([SIM, "--nodes", str(nodes), "--base", base, "--seed", str(seed), "--template",
                            TEMPLATE, "--truth-dir", tmp, "--targets-out", os.path.join(tmp, "targets"),
                            "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r"control=(\S+)", sim.stdout.readline())
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
    return sim, "http://" + m.group(1) if m else None, targets


def stop_sim(sim, control, tmp):
    try:
        urllib.request.urlopen(urllib.request.Request(control + "/quit", method="POST"), timeout=5).read()
    except Exception:
        pass
    sim.terminate()
    sim.wait(timeout=10)
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)


def advance(control):
    urllib.request.urlopen(urllib.request.Request(control + "/advance", method="POST"), timeout=10).read()


def stop_daemon(name, daemon):
    daemon.send_signal(signal.SIGTERM)
    try:
        rc = daemon.wait(timeout=15)
    except subprocess.TimeoutExpired:
        daemon.kill()
        rc = None
    check(f"{name}: daemon stopped cleanly on SIGTERM", rc == 0, rc)


class Events:
    """The daemon's JSON log lines, read with a deadline."""

    def __init__(self, stream):
        self.stream = stream
        self.all = []

    def until(self, pred, limit_s=20):
        deadline = time.monotonic() + limit_s
        for _ in range(200000):
            if time.monotonic() > deadline:
                return None
            line = self.stream.readline()
            if not line:
                return None
            ev = json.loads(line)
            self.all.append(ev)
            if pred(ev):
                return ev
        return None

    def round(self):
        """Datums and summary of the next round."""
        datums, start = {}, len(self.all)
        ev = self.until(lambda e: e.get("msg") in ("datum", "round"))
        while ev is not None and ev.get("msg") == "datum":
            datums[ev["metric"]] = ev
            ev = self.until(lambda e: e.get("msg") in ("datum", "round"))
        return datums, ev, self.all[start:]


def values(datums):
    got = {}
    for k, ev in datums.items():
        if "statistics" in ev:
            s = ev["statistics"]
            got[k] = (s["sample_count"], s["sum"], s["min"], s["max"])
        else:
            got[k] = float(ev["value"])
    return got


def truth(tmp, r, all_failed=False):
    nodes = [json.loads(l) for l in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % r))]
    if all_failed:
        for n in nodes:
            n["ok"] = False
    return nodes


def fd_scenario():
    name = "fd"
    nodes = 500
    tmp = tempfile.mkdtemp(prefix="cmh-rlimit-")
    sim, control, targets = start_sim(tmp, nodes, "127.91.0.1", 21)
    daemon = None
    held = []
    try:
        if not check(f"{name}: simulator ready", control is not None):
            return
        env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "no",
               "LOG_FORMAT": "json", "AWS_CLUSTER_ID": "rlimit", "METRIC_UPDATE_INTERVAL": "3600",
               "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": "5s", "STALE_ROUNDS": "2", "SCRAPE_KEEPALIVE": "false",
               "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "USE_PROMETHEUS": "true"}

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

        daemon = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
        ev = Events(daemon.stderr)
        listening = ev.until(lambda e: e.get("msg") == "listening")
        if not check(f"{name}: daemon listening", listening is not None):
            return
        port = listening["port"]
        model = Model(2)
        r = 0
        peak = 0

        def one_round(label, all_failed=False, expect_fresh=nodes):
            nonlocal r, peak
            datums, summary, evs = ev.round()
            if not check(f"{name}: {label}: round finished", summary is not None and datums, summary):
                return None
            peak = max(peak, open_fds(daemon.pid))
            exp = model.round(ts_ms(next(iter(datums.values()))["timestamp"]), truth(tmp, r, all_failed))
            got = values(datums)
            diff = {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}
            check(f"{name}: {label}: datums equal the truth", not diff, diff)
            check(f"{name}: {label}: fresh nodes", summary["fresh"] == expect_fresh, summary)
            r += 1
            return summary, evs

        # 1. Rounds under the limit: capped concurrency, one warning, exact totals.
        for i in range(3):
            if one_round(f"round {i + 1} under RLIMIT_NOFILE=64") is None:
                return
            advance(control)
            daemon.send_signal(signal.SIGUSR1)
        capped = [e for e in ev.all if "capped" in e.get("msg", "")]
        check(f"{name}: concurrency capped with one warning", len(capped) == 1 and capped[0].get("capped", 0) <= 32,
              capped)
        if one_round("round 4") is None:
            return
        check(f"{name}: never more than 64 fds open", peak <= 64, peak)

        # 2. No fd left: hold connections to our HTTP server until accept fails.
        for _ in range(90):
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            held.append(s)
        time.sleep(0.5)
        fds = open_fds(daemon.pid)
        check(f"{name}: the client used up the daemon's descriptors", fds >= 63, fds)
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        advance(control)
        daemon.send_signal(signal.SIGUSR1)
        res = one_round("round without descriptors", all_failed=True, expect_fresh=0)
        if res is None:
            return
        summary, evs = res
        emfile = [e for e in evs if e.get("msg") == "scrape failed" and e.get("error") == "EMFILE"]
        check(f"{name}: failed scrapes name EMFILE", len(emfile) > 0, [e.get("error") for e in evs][:5])
        check(f"{name}: summary counts them as connect errors",
              f"connect_error:{nodes}" in summary.get("failures", ""), summary.get("failures"))
        check(f"{name}: one clear out-of-descriptors line for the round",
              sum(1 for e in evs if e.get("msg", "").startswith("out of file descriptors")) == 1 and
              any(e.get("targets") == nodes for e in evs if e.get("msg", "").startswith("out of file")),
              [e for e in evs if "descriptor" in e.get("msg", "")])
        time.sleep(2.0)
        used = cpu_seconds(daemon.pid) - cpu0
        wall = time.monotonic() - t0
        check(f"{name}: no busy loop while out of descriptors", used < 0.5 * wall, (used, wall))
        # libuv meets EMFILE on accept with its reserve descriptor: it accepts and closes what waits
        # (the connection callback never sees the error), so the extra clients get a clean EOF.
        closed = 0
        for s in held:
            s.settimeout(0.01)
            try:
                closed += s.recv(1) == b""
            except (socket.timeout, OSError):
                pass
        check(f"{name}: connections beyond the descriptors are closed, not left hanging",
              0 < closed < len(held), (closed, len(held)))

        # 3. Let go: the next rounds are exact again.
        for s in held:
            s.close()
        held = []
        time.sleep(0.5)
        for i in range(2):
            advance(control)
            daemon.send_signal(signal.SIGUSR1)
            if one_round(f"recovery round {i + 1}") is None:
                return
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        m = re.search(r'scrapes_total\{result="connect_error"\} (\d+)', text)
        check(f"{name}: /metrics counts the EMFILE scrapes", m is not None and int(m.group(1)) >= nodes,
              m.group(0) if m else None)
        print(f"{name}: {r} rounds of {nodes} nodes under RLIMIT_NOFILE=64, peak {peak} fds, "
              f"EMFILE round cpu {used:.2f}s over {wall:.1f}s")
    finally:
        for s in held:
            s.close()
        if daemon is not None:
            stop_daemon(name, daemon)
        stop_sim(sim, control, tmp)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def disk_scenario():
    name = "disk"
    tmp = tempfile.mkdtemp(prefix="cmh-diskfull-")
    sim, control, targets = start_sim(tmp, 20, "127.92.0.1", 22)
    cw = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py"),
                           "--key", "AKIDFULL:full-secret", "--region", "us-west-2", "--lifetime", "120"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    daemon = None
    try:
        m = re.search(r"http=(\d+)", cw.stdout.readline())
        if not check(f"{name}: simulator and stand-in ready", control is not None and m is not None):
            return
        standin = f"http://127.0.0.1:{m.group(1)}"
        port = free_port()
        env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
               "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "full", "AWS_ACCESS_KEY_ID": "AKIDFULL",
               "AWS_SECRET_ACCESS_KEY": "full-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": standin,
               "AWS_EC2_METADATA_DISABLED": "true", "METRIC_UPDATE_INTERVAL": "1", "SCRAPE_JITTER": "0",
               "AWS_VPC_K8S_CNI_LOGLEVEL": "DEBUG",
               "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": str(port), "USE_PROMETHEUS": "true"}
        full = open("/dev/full", "w")
        daemon = subprocess.Popen([BIN], env=env, stdout=full, stderr=full)
        full.close()

        def metrics():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.read().decode()

        def counter(text, metric):
            mm = re.search(r"^cni_metrics_helper_" + metric + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
            return float(mm.group(1)) if mm else None

        text = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                text = metrics()
                if (counter(text, "rounds_total") or 0) >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not check(f"{name}: /metrics served with stderr on /dev/full", text is not None):
            return
        lost0, rounds0 = counter(text, "log_lines_lost_total"), counter(text, "rounds_total")
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(4)
        text = metrics()
        used, wall = cpu_seconds(daemon.pid) - cpu0, time.monotonic() - t0
        lost1, rounds1 = counter(text, "log_lines_lost_total"), counter(text, "rounds_total")
        check(f"{name}: lost log lines counted", lost0 is not None and lost0 > 0 and lost1 > lost0, (lost0, lost1))
        check(f"{name}: rounds keep running", rounds1 is not None and rounds1 >= rounds0 + 3, (rounds0, rounds1))
        check(f"{name}: no busy loop", used < 0.5 * wall, (used, wall))
        # Publishing goes on: the stand-in holds the simulator's cluster values for the last rounds.
        epoch = json.load(open(os.path.join(tmp, "epoch-000000.json")))
        with urllib.request.urlopen(standin + "/datums", timeout=10) as resp:
            datums = json.loads(resp.read())
        want = epoch["sum_gauges"].get("awscni_assigned_ip_addresses")
        got = [d.get("value") for d in datums if d["metric"] == "assignIPAddresses" and
               d["dimensions"] == {"CLUSTER_ID": "full"}]
        check(f"{name}: CloudWatch keeps receiving the truth", len(got) >= 3 and all(v == want for v in got),
              (want, got[-5:]))
        mm = re.search(r'^cni_metrics_helper_cloudwatch_datums_total\{outcome="published"\} (\d+)$', text, re.M)
        published = int(mm.group(1)) if mm else None
        check(f"{name}: /metrics counts the published datums", published is not None and published >= len(got),
              (published, len(got)))
        print(f"{name}: {int(rounds1)} rounds, {int(lost1)} log lines lost (counted), "
              f"{len(datums)} datums at the stand-in, published counter {published}, "
              f"cpu {used:.2f}s over {wall:.1f}s")
    finally:
        if daemon is not None:
            stop_daemon(name, daemon)
        cw.stdin.close()
        cw.wait(timeout=10)
        stop_sim(sim, control, tmp)


SCENARIOS = {"fd": fd_scenario, "disk": disk_scenario}
for n in sys.argv[1:] or list(SCENARIOS):
    t = time.monotonic()
    SCENARIOS[n]()
    print(f"{n}: {time.monotonic() - t:.1f} s")
finish()
