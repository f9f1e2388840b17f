"""`inspect`: files as node scrapes through the daemon's parser and aggregator. Gauges from one
round, counters from two (--then), JSON that parses, a malformed file counted as a failed node,
usage errors."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures, finish  # noqa: E402

BIN = os.environ["CMH_BIN"]
DATA = os.path.join(os.environ["CMH_DATA_DIR"], "ipamd/cni_test1.data")


def run(*args):
    return subprocess.run([BIN, "inspect", *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "AWS_CLUSTER_ID": "c9"})


body = open(DATA).read()
tmp = tempfile.mkdtemp()
later = os.path.join(tmp, "later.txt")
open(later, "w").write(body.replace("awscni_add_ip_req_count 100", "awscni_add_ip_req_count 112")
                       .replace("awscni_assigned_ip_addresses 1", "awscni_assigned_ip_addresses 4"))
bad = os.path.join(tmp, "bad.txt")
open(bad, "w").write(body + 'awscni_ip_max{x="1" 3\n')

r = run(DATA, DATA)
check("table", r.returncode == 0 and "assignIPAddresses" in r.stdout, r.stdout + r.stderr)
rows = {l.split()[0]: l.split()[2] for l in r.stdout.splitlines()[1:] if len(l.split()) >= 3 and l[0].isalpha()}
check("two nodes summed", rows.get("assignIPAddresses") == "2" and rows.get("maxIPAddresses") == "30", rows)
check("no counters after one round", "addReqCount" not in rows, rows)

r = run("--json", DATA, DATA, "--then", later, DATA)
check("json exit", r.returncode == 0, r.stderr)
d = {x["metric"]: x for x in json.loads(r.stdout)}
check("counter increase over two rounds", d["addReqCount"]["value"] == 12, d.get("addReqCount"))
check("gauge of the last round", d["assignIPAddresses"]["value"] == 5, d.get("assignIPAddresses"))
check("dimensions", d["assignIPAddresses"]["dimensions"] == {"CLUSTER_ID": "c9"})
check("fresh", d["scrapeTargetsFresh"]["value"] == 2)

r = run(DATA, bad)
check("malformed file: exit 0, node failed", r.returncode == 0 and "nodes: 1 fresh, 1 failed" in r.stdout, r.stdout)
check("malformed file: line named", "line " in r.stderr and "bad.txt" in r.stderr, r.stderr)
r = run()
check("usage", r.returncode == 2 and "Usage" in r.stderr, r.stderr)
r = run("/nonexistent/file")
check("unreadable", r.returncode == 2 and "No such file" in r.stderr, r.stderr)

finish()
