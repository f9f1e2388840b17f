"""The daemon as a process: --help/--version, configuration errors (exit 2 with one line), typo
warnings, the effective-configuration line, JSON logs, and graceful stop on SIGTERM/SIGINT."""
import glob
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

# --help names every variable the daemon reads: the names come from the source (the
# configuration table and every getenv / env_get / endpoint-override call), not from a list here.
import re

SRC = os.environ.get("CMH_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
read_vars = set()
for fn in sorted(glob.glob(os.path.join(SRC, "src", "**", "*.c"), recursive=True)):
    with open(fn, encoding="utf-8") as f:
        text = f.read()
    read_vars |= set(re.findall(
        r'\b(?:getenv|env_get|cmh_aws_env_get|cmh_aws_endpoint_override)\([^"()]*"([A-Z0-9_]+)"', text))
    # Scans of an environment block: strncmp(*e, "NAME=", n).
    read_vars |= set(re.findall(r'\bstrncmp\([^"()]*"([A-Z][A-Z0-9_]+)=",', text))
    if fn.endswith("/core/config.c"):
        read_vars |= set(re.findall(r'\{"([A-Z0-9_]+)", CMH_CFG_', text))
check("the source reads the standard AWS and Kubernetes variables (the scan works)",
      {"POD_NAME", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_STS",
       "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "METRIC_UPDATE_INTERVAL"} <= read_vars,
      sorted(read_vars))
r = run(["--help"], {})
missing = sorted(v for v in read_vars if not re.search(r"\b%s\b" % v, r.stdout))
check("--help names every variable the daemon reads", not missing, missing)
check("--help names SIGUSR1 and SIGTERM", "SIGUSR1" in r.stdout and "SIGTERM" in r.stdout)
for args in (["-v"], ["version"], ["--version"]):
    r = run(args, {})
    check(f"{args[0]} prints the version", r.returncode == 0 and
          re.fullmatch(r"cni-metrics-helper \S+\n", r.stdout) is not None, r.stdout)
for args in (["help"], ["-h"]):
    r = run(args, {})
    check(f"{args[0]} prints the usage", r.returncode == 0 and r.stdout.startswith("Usage:"))
r = run(["parse", "--help"], {})
check("parse --help: usage on stdout, exit 0", r.returncode == 0 and "Usage:" in r.stdout
      and not r.stderr, (r.returncode, r.stderr))
r = run(["parse", "--bogus"], {})
check("parse --bogus: usage on stderr, exit 2", r.returncode == 2 and "Usage:" in r.stderr)
r = run(["report", "--bogus"], {})
check("report --bogus: names it, usage, exit 2", r.returncode == 2 and "--bogus" in r.stderr
      and "Usage:" in r.stderr, (r.returncode, r.stderr))
r = run(["report", "--help"], {})
check("report --help: usage on stdout, exit 0", r.returncode == 0 and "Usage:" in r.stdout)

# parse FILE | head: the reader leaves early; parse ends quietly (SIGPIPE, as cat does).
import tempfile

with tempfile.NamedTemporaryFile("w", suffix=".prom", delete=False) as f:
    for i in range(40000):  # well past a pipe buffer
        f.write('m{a="x"} %d\n' % i)
big = f.name
p = subprocess.Popen([BIN, "parse", big], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
first = p.stdout.readline()
p.stdout.close()
err = p.stderr.read()
rc = p.wait(timeout=10)
os.unlink(big)
check("parse FILE | head: first line arrives", first.startswith(b"m{"), first)
check("parse FILE | head: no error message, ends as cat would (0 or SIGPIPE)",
      not err and rc in (0, -signal.SIGPIPE), (rc, err))

# CW_NAMESPACE in AWS's reserved space: refused at start with what to do.
r = run([], {"CW_NAMESPACE": "AWS/EKS", "SCRAPE_TARGETS": "127.0.0.1:1"})
lines = r.stderr.strip().splitlines()
check("CW_NAMESPACE=AWS/...: exit 2, one line that says it is reserved and what to choose",
      r.returncode == 2 and len(lines) == 1 and "CW_NAMESPACE=AWS/EKS" in lines[0]
      and "reserved" in lines[0] and "Kubernetes" in lines[0], r.stderr)

# A near miss of a variable that decides where the numbers go is refused, naming the intended
# one; a near miss of another is warned about (the start goes on: see the signal test below).
for typo, meant in (("AWS_CLUSTERID", "AWS_CLUSTER_ID"), ("USE_CLOUDWATCH_", "USE_CLOUDWATCH"),
                    ("CW_NAMESPAC", "CW_NAMESPACE"), ("AWS_REGON", "AWS_REGION"),
                    ("aws_cluster_id", "AWS_CLUSTER_ID")):
    r = run([], {typo: "x", "SCRAPE_TARGETS": "127.0.0.1:1", "USE_CLOUDWATCH": "no"})
    check(f"{typo}: refused at start naming {meant}", r.returncode == 2 and typo in r.stderr
          and f"did you mean {meant}?" in r.stderr, (r.returncode, r.stderr))

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
           "USE_CLOUDWATCH": "no", "METRIC_UPDATE_INTERVALS": "5", "AWS_VPC_K8S_CNI_LOGLEVEL": "debug"}
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
