"""The shipped CloudWatch alarms (manifests/cloudwatch/alarms.yaml) against scripted scenarios, fed
with the datums the real daemon published.

The daemon scrapes two scripted ipamD nodes (a small HTTP server here, values from a timeline),
reads the subnet from the EC2 stand-in (drained on the timeline) and publishes to the CloudWatch
stand-in, which records every datum. Time is compressed 30 times: METRIC_UPDATE_INTERVAL=1 and
SUBNET_METRICS_INTERVAL=10 are the defaults (30 s, 300 s) of a real cluster, so one real second
is 30 virtual seconds and a datum's timestamp maps to virtual time.

The alarms, resolved from the template with its defaults, are then evaluated by a small evaluator
written from CloudWatch's documented semantics: per period the statistic of the datums in it, a
metric math expression over the queries' values (arithmetic, comparisons, IF, FILL), the
comparison with the threshold, M of the last N periods breaching; with at least M datapoints in
the range only those are evaluated, with fewer the missing ones are filled per TreatMissingData
(breaching: bad, notBreaching: good, missing/ignore: ALARM only when every present one breaches;
none present: INSUFFICIENT_DATA for missing, the state kept for ignore). CloudWatch's look-back
beyond N periods for missing datapoints is not modelled. The definitions themselves are checked against botocore's
model by cloudwatch_manifests_check.py.

Scenarios:
  scale-up  pods arrive, ipamD attaches ENIs and fails assignments for about a minute,
            capacity and subnet stay healthy: nothing may page (the former one-failed-assignment
            alarm would have: checked, so the scenario is shown to contain failures);
  drain     prefix delegation on (assigned / slots above 100%, a healthy PD cluster); the subnet
            drains from 70% to 99% used, then assignments fail in every round: the subnet alarm
            pages first, then the failing-assignments alarm; the capacity alarm does not (a copy
            that ignores prefix delegation would: checked); after the helper stops, the dead-man
            alarm pages and the others keep their meaning;
  blind     the same run's datums without any subnet datum: the subnet alarm pages.
"""
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402
import cloudwatch_manifests_check as cwm  # noqa: E402

SRC = cwm.SRC
BIN = cwm.BIN
SCALE = 30  # virtual seconds per real second
KEY = "AKIDSCENARIO:scenario-secret"
SUBNET_CIDR = "127.95.0.0/24"
SUBNET_USABLE = 256 - 5

# ---------------------------------------------------------------------------------------------
# The evaluator.
OPS = {"GreaterThanThreshold": lambda v, t: v > t,
       "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
       "LessThanThreshold": lambda v, t: v < t,
       "LessThanOrEqualToThreshold": lambda v, t: v <= t}


def stat_of(values, stat):
    if not values:
        return None
    return {"Sum": sum, "Maximum": max, "Minimum": min, "SampleCount": len,
            "Average": lambda v: sum(v) / len(v)}[stat](values)


def per_period(datums, namespace, metric, dims, period, stat):
    """{period index: statistic} of the datums of one metric and exact dimension set."""
    buckets = {}
    for d in datums:
        if d["namespace"] == namespace and d["metric"] == metric and d["dimensions"] == dims:
            buckets.setdefault(int(d["vt"] // period), []).append(d["value"])
    return {k: stat_of(v, stat) for k, v in buckets.items()}


def math_eval(expr, env):
    """A metric math expression for one period; None when a value it needs is missing."""
    def _if(c, a, b):
        return None if c is None else (a if c else b)

    def _fill(x, v):
        return v if x is None else x
    py = re.sub(r"\bIF\(", "_if(", expr)
    py = re.sub(r"\bFILL\(", "_fill(", py)
    try:
        return eval(py, {"__builtins__": {}, "_if": _if, "_fill": _fill}, dict(env))  # noqa: S307
    except (TypeError, ZeroDivisionError):
        return None


def alarm_series(alarm, datums):
    """(period seconds, {period index: value}) of what the alarm compares with its threshold."""
    if "MetricName" in alarm:
        dims = {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
        return alarm["Period"], per_period(datums, alarm["Namespace"], alarm["MetricName"], dims,
                                           alarm["Period"], alarm["Statistic"])
    values, period, result = {}, None, None
    for q in alarm["Metrics"]:
        if "MetricStat" in q:
            ms = q["MetricStat"]
            m = ms["Metric"]
            dims = {d["Name"]: d["Value"] for d in m.get("Dimensions", [])}
            period = ms["Period"]
            values[q["Id"]] = per_period(datums, m["Namespace"], m["MetricName"], dims,
                                         ms["Period"], ms["Stat"])
        if q.get("ReturnData", True):
            result = q
    if "MetricStat" in result:
        return period, values[result["Id"]]
    keys = set().union(*values.values()) if values else set()
    out = {}
    for k in keys:
        v = math_eval(result["Expression"], {i: s.get(k) for i, s in values.items()})
        if v is not None:
            out[k] = v
    return period, out


def evaluate(alarm, datums, first_vt, last_vt):
    """The alarm's state after each period, from the first range that starts at first_vt or
    later, to last_vt: [(vt, state)]."""
    period, values = alarm_series(alarm, datums)
    n, m = alarm["EvaluationPeriods"], alarm.get("DatapointsToAlarm", alarm["EvaluationPeriods"])
    op, thr, tmd = OPS[alarm["ComparisonOperator"]], alarm["Threshold"], alarm["TreatMissingData"]
    state, out = "INSUFFICIENT_DATA", []
    # The first evaluation whose whole range lies after first_vt (the alarm exists from there).
    end = int(first_vt // period) + n
    while end * period <= last_vt:
        window = [values.get(p) for p in range(end - n, end)]
        present = [v for v in window if v is not None]
        bad = sum(1 for v in present if op(v, thr))
        if len(present) >= m:
            # Enough datapoints: CloudWatch evaluates the existing ones only.
            state = "ALARM" if bad >= m else "OK"
        elif tmd == "breaching":
            state = "ALARM" if bad + (n - len(present)) >= m else "OK"
        elif tmd == "notBreaching":
            state = "ALARM" if bad >= m else "OK"
        elif not present:
            state = "INSUFFICIENT_DATA" if tmd == "missing" else state
        else:
            # missing/ignore with fewer than M datapoints: ALARM when every one of them breaches.
            state = "ALARM" if bad == len(present) else "OK"
        out.append((end * period, state))
        end += 1
    return out


def first_alarm(states):
    return next((vt for vt, s in states if s == "ALARM"), None)


# ---------------------------------------------------------------------------------------------
# Scripted ipamD nodes.
class Node:
    def __init__(self, ip):
        self.lock = threading.Lock()
        self.values = {"assigned": 0, "total": 0, "max": 0, "prefixes": 0, "noavail": 0,
                       "enis": 1, "enimax": 3}
        node = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                with node.lock:
                    v = dict(node.values)
                body = ("# TYPE awscni_assigned_ip_addresses gauge\n"
                        f"awscni_assigned_ip_addresses {v['assigned']}\n"
                        "# TYPE awscni_total_ip_addresses gauge\n"
                        f"awscni_total_ip_addresses {v['total']}\n"
                        "# TYPE awscni_ip_max gauge\n"
                        f"awscni_ip_max {v['max']}\n"
                        "# TYPE awscni_eni_allocated gauge\n"
                        f"awscni_eni_allocated {v['enis']}\n"
                        "# TYPE awscni_eni_max gauge\n"
                        f"awscni_eni_max {v['enimax']}\n"
                        "# TYPE awscni_total_ipv4_prefixes gauge\n"
                        f"awscni_total_ipv4_prefixes {v['prefixes']}\n"
                        "# TYPE awscni_no_available_ip_addresses counter\n"
                        f"awscni_no_available_ip_addresses {v['noavail']}\n"
                        "# TYPE process_start_time_seconds gauge\n"
                        "process_start_time_seconds 1.7e+09\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        try:
            self.server = ThreadingHTTPServer((ip, 0), H)
        except OSError:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.addr = "%s:%d" % self.server.server_address[:2]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, **kw):
        with self.lock:
            self.values.update(kw)


def post(url, doc):
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def run_scenario(name, minutes, timeline, tmp):
    """Runs the daemon for `minutes` virtual minutes while timeline(virtual minute) gives
    (per-node values, subnet used percent). Returns (datums with "vt", virtual end, why-not)."""
    nodes = [Node("127.95.0.2"), Node("127.95.0.3")]
    truth = os.path.join(tmp, f"{name}-subnets.json")
    state0, used0 = timeline(0.0)
    with open(truth, "w", encoding="utf-8") as f:
        json.dump({"subnets": [{"SubnetId": "subnet-0a0a0a0a", "CidrBlock": SUBNET_CIDR,
                                "Ipv6CidrBlocks": [], "AvailabilityZone": "eu-west-1a",
                                "AvailableIpAddressCount": round(SUBNET_USABLE * (1 - used0 / 100))}]},
                  f)
    procs, peers = [], {}
    try:
        for peer, script in (("ec2", "ec2_standin.py"), ("cw", "cloudwatch_standin.py")):
            args = ["/usr/bin/python3", os.path.join(SRC, "test", "sim", script), "--key", KEY,
                    "--region", "eu-west-1", "--lifetime", "300"] + (
                        ["--truth", truth] if peer == "ec2" else [])
            p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            m = re.search(r"http=(\d+)", p.stdout.readline() or "")
            if not m:
                return None, 0, f"{peer} stand-in did not start"
            peers[peer] = f"http://127.0.0.1:{m.group(1)}"
        for n, v in zip(nodes, state0):
            n.set(**v)
        env = {"PATH": "/usr/bin:/bin", "USE_CLOUDWATCH": "true", "AWS_REGION": "eu-west-1",
               "SCRAPE_TARGETS": ",".join(f"n{i}={n.addr}" for i, n in enumerate(nodes)),
               "AWS_CLUSTER_ID": cwm.TEST_VALUES["ClusterId"],
               "AWS_ACCESS_KEY_ID": KEY.split(":")[0], "AWS_SECRET_ACCESS_KEY": KEY.split(":")[1],
               "AWS_ENDPOINT_URL_CLOUDWATCH": peers["cw"], "AWS_ENDPOINT_URL_EC2": peers["ec2"],
               "AWS_EC2_METADATA_DISABLED": "true", "METRIC_UPDATE_INTERVAL": "1",
               "SUBNET_METRICS": "true", "SUBNET_METRICS_INTERVAL": "10", "SCRAPE_JITTER": "0",
               "SCRAPE_TIMEOUT": "500ms", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0"}
        t0 = time.time()
        d = subprocess.Popen([BIN], env=env, stderr=subprocess.DEVNULL)
        procs.append(d)
        last_used = used0
        while True:
            vmin = (time.time() - t0) * SCALE / 60
            if vmin >= minutes or d.poll() is not None:
                break
            values, used = timeline(vmin)
            for n, v in zip(nodes, values):
                n.set(**v)
            if used != last_used:
                post(peers["ec2"] + "/subnet", {"SubnetId": "subnet-0a0a0a0a",
                                                "AvailableIpAddressCount":
                                                round(SUBNET_USABLE * (1 - used / 100))})
                last_used = used
            time.sleep(0.1)
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=20)
        vend = (time.time() - t0) * SCALE
        with urllib.request.urlopen(peers["cw"] + "/datums", timeout=10) as r:
            datums = json.loads(r.read())
        for x in datums:
            x["vt"] = (x["timestamp_ms"] / 1000.0 - t0) * SCALE
        return [x for x in datums if "value" in x], vend, ""
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait()
        for n in nodes:
            n.server.shutdown()
            n.server.server_close()


def node_values(assigned, slots, prefixes, noavail):
    """Two nodes sharing the cluster's figures evenly."""
    per = {"assigned": assigned // 2, "max": slots // 2, "prefixes": prefixes // 2,
           "total": max(assigned // 2, (prefixes // 2) * 16 or assigned // 2 + 5),
           "noavail": noavail}
    return [per, dict(per)]


def scale_up(vmin):
    """Secondary-IP mode. Pods arrive in minutes 3-6; assignments fail twice, half a minute
    apart, while ENIs attach (3 failures per node each time), so they land in one or two
    one-minute periods however the rounds fall; the subnet stays half used."""
    assigned = 40 + int(min(max(vmin - 3, 0), 3) * 12)  # 40 -> 76 of 100 slots
    fails = 0 if vmin < 4.2 else 3 if vmin < 4.7 else 6
    return node_values(assigned, 100, 0, fails), 50


def drain(vmin):
    """Prefix delegation: 2 x 12 slots of /28 = 384 addresses, 150 pods (assigned / slots is
    625%, capacity use 39%). The subnet's use climbs every 5 minutes; from minute 14 on
    assignments fail in every round."""
    used = 70 if vmin < 2 else 88 if vmin < 7 else 95 if vmin < 12 else 99
    fails = 0 if vmin < 14 else int((vmin - 14) * 2 + 1) * 2
    return node_values(150, 24, 20, fails), used


def main():
    tpl = cwm.load_template()
    alarms, _, _ = cwm.template_outputs(tpl, cwm.TEST_VALUES)
    by = {lid: a for lid, a in alarms.items()}
    # The two scenarios run side by side, each with its own daemon, nodes and stand-ins.
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        running_up = pool.submit(run_scenario, "scale-up", 16, scale_up, tmp)
        running_dr = pool.submit(run_scenario, "drain", 22, drain, tmp)
        up, up_end, why = running_up.result()
        if not check("scale-up scenario ran and published", up, why):
            finish()
            return
        dr, dr_end, why = running_dr.result()
        if not check("drain scenario ran and published", dr, why):
            finish()
            return

    # The scenario holds what it claims: failures were published in some rounds.
    fails = [x for x in up if x["metric"] == "noAvailableIPAddrs" and len(x["dimensions"]) == 1
             and x["value"] > 0]
    check("scale-up: the daemon published failed assignments", fails, len(up))
    for lid, a in sorted(by.items()):
        states = evaluate(a, up, 0, up_end)
        check(f"scale-up must not page: {lid} never in ALARM", first_alarm(states) is None,
              [s for s in states if s[1] == "ALARM"][:3])
    # The alarm it replaces (one failed assignment in one minute) would have paged.
    old = dict(by["PodIPAssignmentsFailing"], EvaluationPeriods=1, DatapointsToAlarm=1)
    check("scale-up: a one-failure-in-a-minute alarm would have paged (the scenario has teeth)",
          first_alarm(evaluate(old, up, 0, up_end)) is not None)

    # Drain: the subnet pages, then the failures; PD capacity stays quiet.
    sub = first_alarm(evaluate(by["SubnetUtilizationHigh"], dr, 0, dr_end))
    fail = first_alarm(evaluate(by["PodIPAssignmentsFailing"], dr, 0, dr_end))
    check("drain must page: subnet-ip-utilization-high fires", sub is not None)
    check("drain must page: pod-ip-assignments-failing fires", fail is not None)
    check("drain: the subnet alarm fires before pods fail for minutes",
          sub is not None and fail is not None and sub < fail, (sub, fail))
    cap = evaluate(by["IPCapacityHigh"], dr, 0, dr_end)
    check("drain with prefix delegation: ip-capacity-high stays quiet (39% of 384 addresses)",
          first_alarm(cap) is None and any(s == "OK" for _, s in cap), cap[-3:])
    naive = json.loads(json.dumps(by["IPCapacityHigh"]))
    for q in naive["Metrics"]:
        if "Expression" in q:
            q["Expression"] = "100 * assigned / slots"
    check("drain: capacity counted in slots (blind to prefix delegation) would have paged",
          first_alarm(evaluate(naive, dr, 0, dr_end)) is not None)
    print("drain (virtual minutes): subnet alarm at %s, failing-assignments alarm at %s"
          % (sub and sub / 60, fail and fail / 60))
    quiet = evaluate(by["HelperSilent"], dr, 0, dr_end - 60)
    check("helper-silent is quiet while the helper publishes", first_alarm(quiet) is None,
          quiet[-3:])
    # The helper stopped at dr_end: the dead-man alarm fires within its minutes after.
    after = evaluate(by["HelperSilent"], dr, 0, dr_end + 8 * 60)
    went = first_alarm(after)
    print("helper stopped at %.1f, helper-silent at %s (virtual minutes)"
          % (dr_end / 60, went and went / 60))
    check("helper stopped: helper-silent fires within its 5 minutes (plus one)",
          went is not None and dr_end <= went <= dr_end + 7 * 60, (went, dr_end))
    check("helper stopped: pod-ip-assignments-failing clears (no data is no failure)",
          evaluate(by["PodIPAssignmentsFailing"], dr, 0, dr_end + 8 * 60)[-1][1] == "OK")

    # Blind subnet view: the same run without any subnet datum.
    blind = [x for x in up if "Subnet" not in x["metric"]]
    st = evaluate(by["SubnetUtilizationHigh"], blind, 0, up_end)
    check("blind subnet view pages (missing data is breaching)", first_alarm(st) is not None, st[-3:])

    # The evaluator itself on hand-made series (its rules can fail).
    h = {"Namespace": "N", "MetricName": "m", "Dimensions": [], "Statistic": "Maximum",
         "Period": 60, "EvaluationPeriods": 5, "DatapointsToAlarm": 3, "Threshold": 0,
         "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching"}

    def pts(vals):
        return [{"namespace": "N", "metric": "m", "dimensions": {}, "vt": i * 60 + 1, "value": v}
                for i, v in enumerate(vals) if v is not None]
    check("evaluator: 3 of 5 breaching alarms", evaluate(h, pts([1, 0, 1, None, 1]), 0, 300)[-1][1]
          == "ALARM")
    check("evaluator: 2 of 5 breaching stays OK", evaluate(h, pts([1, 0, 0, None, 1]), 0, 300)[-1][1]
          == "OK")
    hb = dict(h, TreatMissingData="breaching")
    check("evaluator: breaching, fewer than M present: missing ones count as bad", evaluate(hb, pts([1, None, None, None, 0]), 0, 300)
          [-1][1] == "ALARM")
    hm = dict(h, TreatMissingData="missing")
    check("evaluator: all missing is INSUFFICIENT_DATA", evaluate(hm, [], 0, 300)[-1][1]
          == "INSUFFICIENT_DATA")
    check("evaluator: missing, fewer than M present, all breaching: ALARM (AWS's - - X - - row)",
          evaluate(hm, pts([None, None, 1, None, None]), 0, 300)[-1][1] == "ALARM")
    check("evaluator: breaching, M present and good: OK (existing datapoints only)",
          evaluate(hb, pts([0, 0, 0, None, None]), 0, 300)[-1][1] == "OK")
    check("evaluator: math IF/FILL", math_eval("100 * a / IF(FILL(p, 0) > 0, 16 * s, s)",
                                               {"a": 8, "p": None, "s": 10}) == 80.0 and
          math_eval("100 * a / IF(FILL(p, 0) > 0, 16 * s, s)", {"a": 8, "p": 2, "s": 10}) == 5.0)
    finish()


if __name__ == "__main__":
    main()
