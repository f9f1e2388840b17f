"""`report` verdicts and order (issue 8), against five nodes whose ipamD answers this test writes
itself (small HTTP servers on 127.88.0.x): one full (headroom 0), two with room, one whose scrape
has no awscni_ip_max (capacity unknown) and one that does not answer. Proves: the text table and
the JSON list the nodes in the same order, least headroom first, the node of unknown capacity after
every known one (shown as "?" / null, never as negative headroom) and the failed one last; the
cluster headroom and utilization leave the unknown node out; the cluster-headroom branch of
REPORT_MIN_FREE_IPS (below: 3, equal: 0); REPORT_MAX_UTILIZATION on the known nodes only; a single
full node is not a threshold, a cluster with no free IP at all is (exit 3 with no threshold set).
"""
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

BIN = os.environ["CMH_BIN"]
DATA = os.environ["CMH_DATA_DIR"]

with open(os.path.join(DATA, "ipamd", "cni_test1.data"), encoding="utf-8") as f:
    TEMPLATE = f.read()


def body(assigned, total, max_ips):
    """The recorded ipamD answer with these IP gauges; max_ips None drops awscni_ip_max whole."""
    text = TEMPLATE
    for fam, v in (("awscni_assigned_ip_addresses", assigned), ("awscni_total_ip_addresses", total),
                   ("awscni_ip_max", max_ips)):
        if v is None:
            text = "".join(ln for ln in text.splitlines(True)
                           if not re.match(r"(# (HELP|TYPE) )?%s\b" % fam, ln))
        else:
            text, n = re.subn(r"(?m)^%s \S+$" % fam, "%s %d" % (fam, v), text)
            assert n == 1, fam
    return text.encode()


# name -> (assigned, total, max); headroom = max - assigned.
NODES = {"full-a": (15, 15, 15), "tight-b": (10, 12, 14), "roomy-c": (2, 10, 30),
         "nomax-d": (3, 10, None)}
BODIES = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        data = BODIES[self.server.node]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_all(gauges):
    for name, g in gauges.items():
        BODIES[name] = body(*g)


serve_all(NODES)
servers, targets = [], []
for i, name in enumerate(NODES):
    srv = ThreadingHTTPServer(("127.88.0.%d" % (i + 1), 0), Handler)
    srv.daemon_threads = True
    srv.node = name
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    servers.append(srv)
    targets.append("%s=127.88.0.%d:%d" % (name, i + 1, srv.server_address[1]))
# Nothing listens there: a refused connect, a failed node.
targets.append("dead-e=127.88.0.9:9")


def report(extra=None, json_out=False):
    env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": ",".join(targets), "AWS_CLUSTER_ID": "rep",
           "SCRAPE_TIMEOUT": "2", "REPORT_MAX_UTILIZATION": "100"}
    env.update(extra or {})
    p = subprocess.run([BIN, "report"] + (["--json"] if json_out else []), env=env,
                       capture_output=True, text=True, timeout=60)
    doc = None
    if json_out:
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            doc = {}
    return p, doc


def table_order(text):
    """Node names in the order of the text table's rows."""
    out, inside = [], False
    for ln in text.splitlines():
        if ln.startswith("Nodes ("):
            inside = True
            continue
        if inside and not ln.strip():
            break
        cols = ln.split()
        if inside and cols and cols[0] != "NODE":
            out.append(cols)
    return out


try:
    want = ["full-a", "tight-b", "roomy-c", "nomax-d", "dead-e"]
    p, doc = report(json_out=True)
    check("no threshold, one full node: exit 0 (a full node is normal)", p.returncode == 0,
          (p.returncode, p.stdout[-400:], p.stderr[-400:]))
    nodes = (doc or {}).get("nodes", [])
    check("JSON: least headroom first, unknown capacity after, failed last",
          [n["node"] for n in nodes] == want, [(n["node"], n.get("headroom")) for n in nodes])
    by = {n["node"]: n for n in nodes}
    check("JSON: the node without awscni_ip_max has null max and headroom, not a negative number",
          "nomax-d" in by and by["nomax-d"]["max"] is None and by["nomax-d"]["headroom"] is None
          and by["nomax-d"]["assigned"] == 3, by.get("nomax-d"))
    check("JSON: known headrooms", [by[n].get("headroom") for n in want[:3] if n in by] == [0, 4, 28],
          [by[n].get("headroom") for n in want[:3] if n in by])
    cl = (doc or {}).get("cluster", {})
    # Known nodes: max 15 + 14 + 30 = 59, assigned 15 + 10 + 2 = 27.
    check("JSON: cluster headroom and utilization leave the unknown node out",
          cl.get("headroom") == 32 and cl.get("max") == 59 and cl.get("nodes_max_unknown") == 1
          and abs(cl.get("utilization_pct", 0) - 100 * 27 / 59) < 1e-9
          and cl.get("assigned") == 30 and cl.get("min_node_headroom") == 0, cl)

    p, _ = report()
    rows = table_order(p.stdout)
    check("text table: the same order as the JSON", [r[0] for r in rows] == want, p.stdout)
    row = {r[0]: r for r in rows}
    # NODE IP ASSIGNED TOTAL MAX ENIS "ENI MAX" "FREE WARM" HEADROOM (no AZ column here).
    check("text table: unknown capacity shown as ?", "nomax-d" in row and
          row["nomax-d"][4] == "?" and row["nomax-d"][-1] == "?", row.get("nomax-d"))
    check("text table: full-a at 0 headroom", "full-a" in row and row["full-a"][-1] == "0",
          row.get("full-a"))
    check("text table: dead-e says its scrape failed", "scrape failed" in " ".join(row.get("dead-e", [])),
          row.get("dead-e"))
    check("text: the summary says a node was left out", "1 node without awscni_ip_max left out"
          in p.stdout, p.stdout[-400:])

    # The cluster-headroom branch of REPORT_MIN_FREE_IPS: 32 free.
    p, _ = report({"REPORT_MIN_FREE_IPS": "33"})
    check("REPORT_MIN_FREE_IPS=33 > cluster headroom 32: exit 3 naming the headroom",
          p.returncode == 3 and "THRESHOLD: cluster headroom 32 IPs is below REPORT_MIN_FREE_IPS=33"
          in p.stdout, (p.returncode, p.stdout[-400:]))
    p, _ = report({"REPORT_MIN_FREE_IPS": "32"})
    check("REPORT_MIN_FREE_IPS=32 = cluster headroom: exit 0", p.returncode == 0,
          (p.returncode, p.stdout[-400:]))
    # Utilization on the known nodes: 27 / 59 = 45.8 %.
    p, _ = report({"REPORT_MAX_UTILIZATION": "45"})
    check("REPORT_MAX_UTILIZATION=45 < 45.8%: exit 3", p.returncode == 3 and
          "utilization 45.8% is above" in p.stdout, (p.returncode, p.stdout[-400:]))
    p, _ = report({"REPORT_MAX_UTILIZATION": "46"})
    check("REPORT_MAX_UTILIZATION=46 > 45.8%: exit 0", p.returncode == 0,
          (p.returncode, p.stdout[-400:]))

    # Every node of known capacity full: no free IP anywhere, exit 3 with no threshold set.
    serve_all({"full-a": (15, 15, 15), "tight-b": (14, 14, 14), "roomy-c": (30, 30, 30),
               "nomax-d": (3, 10, None)})
    p, doc = report(json_out=True)
    check("every known node full, no threshold set: exit 3", p.returncode == 3 and
          (doc or {}).get("status") == "threshold_crossed", (p.returncode, p.stdout[-500:]))
    check("the reason names the cluster's headroom", any(
        "cluster headroom 0 IPs: no node can take another pod IP" in t
        for t in (doc or {}).get("thresholds_crossed", [])), (doc or {}).get("thresholds_crossed"))
finally:
    for srv in servers:
        srv.shutdown()
        srv.server_close()
finish()
