"""An ipamD family the daemon does not know (a newer VPC CNI's) is counted on our /metrics and each
name is logged once, however many scrapes carry it; go_* and process_* families are not counted.
The peer serves the recorded ipamD exposition plus two unknown families, and a third from its
fourth scrape on."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http_status, parse_metrics, read_events, serve_ipamd, stop_proc  # noqa: E402
import subprocess  # noqa: E402

BIN = os.environ["CMH_BIN"]
DATA = os.environ["CMH_DATA_DIR"]
BODY = open(os.path.join(DATA, "ipamd/cni_test1.data"), "rb").read()
NEW = (b"# HELP awscni_future_pool_ips A family from a newer VPC CNI.\n"
       b"# TYPE awscni_future_pool_ips gauge\nawscni_future_pool_ips 12\n"
       b"# HELP awscni_future_error_count Another.\n# TYPE awscni_future_error_count counter\n"
       b"awscni_future_error_count{fn=\"a\"} 1\nawscni_future_error_count{fn=\"b\"} 4\n")
LATE = b"# TYPE awscni_future_late gauge\nawscni_future_late 1\n"


def scrape_body(n):
    return NEW + BODY + (LATE if n >= 4 else b"")


peer, _ = serve_ipamd(scrape_body)
env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": f"node-a=127.0.0.1:{peer.server_address[1]}",
       "USE_CLOUDWATCH": "no", "USE_PROMETHEUS": "true", "PROMETHEUS_ADDRESS": "127.0.0.1",
       "PROMETHEUS_PORT": "0", "METRIC_UPDATE_INTERVAL": "1", "LOG_FORMAT": "json",
       "AWS_CLUSTER_ID": "unknown-families", "SCRAPE_JITTER": "0"}
p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
events = []
try:
    ev = read_events(p, "listening", 10, events.append)
    check("listening", ev is not None)
    port = ev["port"]
    rounds = 0
    for _ in range(6):
        if read_events(p, "round", 10, events.append) is not None:
            rounds += 1
    check("six rounds", rounds == 6, rounds)
    st, text = http_status(f"http://127.0.0.1:{port}/metrics")
    m = parse_metrics(text)
    ok = m.get('cni_metrics_helper_scrapes_total{result="ok"}')
    unknown = m.get("cni_metrics_helper_scrape_unknown_families_total")
    # Two unknown families in each good scrape, a third from the fourth scrape on; the page may
    # be read while a seventh round is under way, so bound rather than equate the scrape count.
    check("good scrapes counted", ok is not None and ok >= 6, ok)
    check("unknown families counted once per family and good scrape",
          unknown is not None and unknown == 2 * ok + max(0, ok - 3), (unknown, ok))
    check("distinct unknown families: 3", m.get("cni_metrics_helper_ipamd_unknown_families") == 3,
          m.get("cni_metrics_helper_ipamd_unknown_families"))
    check("TYPE lines", "# TYPE cni_metrics_helper_scrape_unknown_families_total counter" in text and
          "# TYPE cni_metrics_helper_ipamd_unknown_families gauge" in text)
    logged = [e.get("family") for e in events
              if e.get("msg") == "ipamD family not in the metric table: counted, not published"]
    check("each unknown family logged once, go_/process_ ones not at all",
          sorted(logged) == ["awscni_future_error_count", "awscni_future_late", "awscni_future_pool_ips"],
          logged)
    check("no scrape refused", m.get('cni_metrics_helper_scrapes_total{result="parse_error"}') == 0)
finally:
    rc = stop_proc(p)
    check("daemon stopped cleanly", rc == 0, rc)
    peer.shutdown()

finish()
