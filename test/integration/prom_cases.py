"""`cni-metrics-helper parse` against every case of the reference Go parser's own tests
(test/data/prom/cases.json): accepted cases print exactly the expected samples, rejected
cases exit 1 with `line N: reason` where N and the reason's start are the Go parser's. Also the
command's own contract: stdin, a missing file, exit codes."""
import json
import os
import subprocess
import sys

BIN = os.environ["CMH_BIN"]
SRC = os.environ["CMH_SOURCE_DIR"]
CASES = os.path.join(os.environ["CMH_DATA_DIR"], "prom")
EXPECTED = os.path.join(SRC, "test", "data", "prom", "expected")
GO_PREFIX = "text format parsing error in "

# Valid under the UTF-8 name scheme, which this parser implements (the Go test's errUTF8 is "").
ACCEPTED_BAD = {"bad_41.txt", "bad_42.txt"}

failures = []
checked = 0


def check(name, cond, detail=""):
    global checked
    checked += 1
    if not cond:
        failures.append(f"{name}: {detail}")


def parse(args, stdin=None):
    return subprocess.run([BIN, "parse"] + args, input=stdin, capture_output=True, timeout=30)


with open(os.path.join(CASES, "cases.json"), encoding="utf-8") as f:
    cases = json.load(f)
check("case count", len(cases) == 66, str(len(cases)))

for c in cases:
    name = c["file"]
    path = os.path.join(CASES, name)
    r = parse([path])
    valid = c.get("expect") == "valid" or name in ACCEPTED_BAD
    if valid:
        with open(os.path.join(EXPECTED, name), "rb") as f:
            want = f.read()
        check(name, r.returncode == 0 and r.stdout == want,
              f"rc={r.returncode} stderr={r.stderr!r}\n got={r.stdout!r}\nwant={want!r}")
        continue
    check(name + " is invalid under UTF-8 names", c["expect_utf8_names"] == "invalid")
    prefix = c["error_utf8_prefix"]
    check(name + " prefix", prefix.startswith(GO_PREFIX), prefix)
    want = prefix[len(GO_PREFIX):]  # "line N: reason..."
    err = r.stderr.decode("utf-8", "replace").rstrip("\n")
    # Samples before the bad line may already be printed (the command streams); stderr is one line.
    check(name, r.returncode == 1 and "\n" not in err and err.startswith(want),
          f"rc={r.returncode} stdout={r.stdout!r} stderr={err!r} want prefix {want!r}")

# The same bytes through standard input, explicitly and by default.
with open(os.path.join(CASES, "good_03.txt"), "rb") as f:
    body = f.read()
with open(os.path.join(EXPECTED, "good_03.txt"), "rb") as f:
    want = f.read()
for args in (["-"], []):
    r = parse(args, stdin=body)
    check(f"stdin {args}", r.returncode == 0 and r.stdout == want, r.stderr)

# Malformed input on stdin; a missing file; too many arguments.
r = parse(["-"], stdin=b"ok 1\nbad{ 2\n")
check("stdin error", r.returncode == 1 and r.stderr.startswith(b"line 2: "), r.stderr)
r = parse(["/nonexistent/metrics.txt"])
check("missing file", r.returncode == 2 and b"/nonexistent/metrics.txt" in r.stderr, r.stderr)
r = parse(["a", "b"])
check("two files", r.returncode == 2, r.stderr)
# An empty body is a valid exposition with no samples.
r = parse(["-"], stdin=b"")
check("empty", r.returncode == 0 and r.stdout == b"", r.stderr)

if failures:
    print("\n".join(failures))
    print(f"{len(failures)} of {checked} checks failed")
    sys.exit(1)
print(f"all {checked} checks passed")
