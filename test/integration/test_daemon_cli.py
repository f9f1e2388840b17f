"""The daemon as a process: --help/--version, configuration errors (exit 2 with one line), typo
warnings, the effective-configuration line, JSON logs, and graceful stop on SIGTERM/SIGINT."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures, finish  # noqa: E402

BIN = os.environ["CMH_BIN"]
BASE_ENV = {"PATH": "/usr/bin:/bin", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0"}


def run(args, env, timeout=10):
    return subprocess.run([BIN] + args, env={**BASE_ENV, **env}, capture_output=True, text=True,
                          timeout=timeout)


r = run(["--version"], {})
check("version", r.returncode == 0 and r.stdout.startswith("cni-metrics-helper "), r.stdout)
r = run(["--help"], {})
check("help", r.returncode == 0 and "METRIC_UPDATE_INTERVAL" in r.stdout and "SCRAPE_TARGETS" in r.stdout)
r = run(["--bogus"], {})
check("unknown argument", r.returncode == 2 and "unknown argument" in r.stderr, r.stderr)

# Every bad value: exit 2, exactly one line naming variable and value.
for var, val in [("METRIC_UPDATE_INTERVAL", "abc"), ("USE_CLOUDWATCH", "maybe"),
                 ("AWS_VPC_K8S_CNI_LOGLEVEL", "loud"), ("SCRAPE_TARGETS", "a=:1"),
                 ("IPAMD_METRICS_PORT", "70000"), ("LOG_FORMAT", "xml"), ("HTTP_TIMEOUT", "0"),
                 ("PROMETHEUS_PORT", "65536"), ("SHUTDOWN_TIMEOUT", "1h"), ("USE_PROMETHEUS", "2")]:
    r = run([], {var: val})
    lines = r.stderr.strip().splitlines()
    check(f"bad {var}", r.returncode == 2 and len(lines) == 1 and f"{var}={val}" in lines[0]
          and "accepted" in lines[0], f"rc={r.returncode} stderr={r.stderr!r}")

# No targets: a clear error, exit 2.
r = run([], {"USE_CLOUDWATCH": "no"})
check("no targets", r.returncode == 2 and "SCRAPE_TARGETS" in r.stderr, r.stderr)


def start(env):
    return subprocess.Popen([BIN], env={**BASE_ENV, **env}, stderr=subprocess.PIPE, text=True)


def read_until(p, needle, limit_s=10):
    """Reads the child's log lines until one contains needle (bounded by time and count)."""
    seen = []
    deadline = time.monotonic() + limit_s
    for _ in range(1000):
        if time.monotonic() > deadline:
            break
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    return seen


for sig in (signal.SIGTERM, signal.SIGINT):
    env = {"SCRAPE_TARGETS": "n1=127.0.0.1:1", "METRIC_UPDATE_INTERVAL": "1",
           "USE_CLOUDWATCH": "no", "METRIC_UPDATE_INTERVALL": "5", "AWS_VPC_K8S_CNI_LOGLEVEL": "debug"}
    p = start(env)
    seen = read_until(p, "msg=\"round start\" round=2")
    check(f"{sig.name}: rounds every interval", any("round=2" in l for l in seen), "".join(seen))
    check("typo warned", any("unknown variable ignored" in l and "did_you_mean=METRIC_UPDATE_INTERVAL" in l
                              for l in seen), "".join(seen))
    check("effective configuration logged", any("effective configuration" in l and
                                                 'SCRAPE_TARGETS="n1=127.0.0.1:1"' in l for l in seen))
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        rc = p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = None
    rest = p.stderr.read()
    check(f"{sig.name}: exit 0", rc == 0, f"rc={rc}")
    check(f"{sig.name}: quick", time.monotonic() - t0 < 5)
    check(f"{sig.name}: says stopped", "msg=stopped" in rest, rest)

# JSON logs: every line is one JSON object.
import json

p = start({"SCRAPE_TARGETS": "127.0.0.1:1", "LOG_FORMAT": "json", "USE_CLOUDWATCH": "no"})
seen = read_until(p, '"msg":"started"')
p.send_signal(signal.SIGTERM)
p.wait(timeout=10)
seen += p.stderr.read().splitlines()
ok = True
for l in seen:
    try:
        json.loads(l)
    except ValueError:
        ok = False
check("json lines", ok and len(seen) >= 3, repr(seen))

finish()
