"""manifests/prometheus/ against the real daemon and promtool:

- a live daemon (two scripted ipamD nodes, the EC2 stand-in for the subnet view, USE_PROMETHEUS)
  is scraped; every metric name a rule or a Grafana panel uses must be one it serves, and the
  unit tests below use its series exactly as served (names and labels);
- with PROMETHEUS_ORIGINAL_NAMES=true it also serves the six gauges AWS's helper served with
  USE_PROMETHEUS (unlabelled, the sums of the nodes' values); without it, none of them;
- the PrometheusRule's groups, extracted into a rules file, pass `promtool check rules`, and
  `promtool test rules` runs scripted scenarios on them: a scale-up with a minute and a half of
  failed assignments does not fire, failures that last do; the fullest subnet above 85% for 10
  minutes fires, a subnet view that never fetched fires its own alert; capacity under prefix
  delegation (16 addresses per slot) stays quiet where slots alone would read 625%; no fresh
  scrape or no helper at all fires the dead man; scrape failures fire; a subnet forecast to run
  out within the hour fires (with its subnet_id) after 2 minutes, a later forecast or none does
  not. (Annotations are left out
  of the unit-test copy: promtool compares them verbatim; `check rules` validates their templates.)
- the Kubernetes objects are the kinds and API versions prometheus-operator serves, select the
  helper's pods by the label the Deployment carries and its port by the name it declares, and the
  Grafana dashboard is JSON whose panels fit the 24-column grid.
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, parse_metrics, read_events, stop_proc  # noqa: E402
from alarm_scenarios import Node, KEY  # noqa: E402

SRC = os.environ.get("CMH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CMH_BIN") or os.path.join(SRC, "build", "cni-metrics-helper")
PDIR = os.path.join(SRC, "manifests", "prometheus")
CLUSTER = "prom-e2e"
ORIGINAL = {"awscni_eni_max": "enimax", "awscni_ip_max": "max", "awscni_eni_allocated": "enis",
            "awscni_total_ip_addresses": "total", "awscni_assigned_ip_addresses": "assigned",
            "awscni_total_ipv4_prefixes": "prefixes"}


def live_page(tmp, original, forecast=False):
    """/metrics of a daemon after three rounds, and the nodes' values it scraped; with forecast,
    after its first time-to-exhaustion forecast too (a 30 s window of 10 s fetches)."""
    nodes = [Node("127.96.0.2"), Node("127.96.0.3")]
    vals = [dict(assigned=30, total=40, max=58, prefixes=0, noavail=4, enis=2, enimax=3),
            dict(assigned=12, total=20, max=29, prefixes=3, noavail=1, enis=1, enimax=4)]
    for n, v in zip(nodes, vals):
        n.set(**v)
    truth = os.path.join(tmp, "subnets.json")
    with open(truth, "w", encoding="utf-8") as f:
        json.dump({"subnets": [{"SubnetId": "subnet-0b0b0b0b", "CidrBlock": "127.96.0.0/24",
                                "Ipv6CidrBlocks": [], "AvailabilityZone": "eu-west-1a",
                                "AvailableIpAddressCount": 100}]}, f)
    ec2 = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test", "sim", "ec2_standin.py"),
                            "--key", KEY, "--region", "eu-west-1", "--lifetime", "120",
                            "--truth", truth], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    d = None
    try:
        m = re.search(r"http=(\d+)", ec2.stdout.readline() or "")
        if not m:
            return None, "EC2 stand-in did not start"
        env = {"PATH": "/usr/bin:/bin", "USE_CLOUDWATCH": "no", "USE_PROMETHEUS": "true",
               "PROMETHEUS_ORIGINAL_NAMES": "true" if original else "false",
               "SCRAPE_TARGETS": ",".join(f"n{i}={n.addr}" for i, n in enumerate(nodes)),
               "AWS_CLUSTER_ID": CLUSTER, "AWS_REGION": "eu-west-1",
               "AWS_ACCESS_KEY_ID": KEY.split(":")[0], "AWS_SECRET_ACCESS_KEY": KEY.split(":")[1],
               "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{m.group(1)}",
               "AWS_EC2_METADATA_DISABLED": "true", "SUBNET_METRICS": "true",
               "METRIC_UPDATE_INTERVAL": "1", "SCRAPE_JITTER": "0", "LOG_FORMAT": "json",
               "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0"}
        if forecast:
            env.update(SUBNET_METRICS_INTERVAL="10s", FORECAST_WINDOW="30s")
        d = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
        ev = read_events(d, "listening", 15)
        if ev is None:
            return None, "the daemon did not listen"
        port = ev["port"]
        for _ in range(3):
            if read_events(d, "round", 15) is None:
                return None, "no round"
        # The subnet view is fetched at start; a round after it carries it.
        body = ""
        for _ in range(60 if forecast else 20):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body = r.read().decode()
            if "max_subnet_ip_utilization_percent" in body and (
                    not forecast or "subnet_time_to_ip_exhaustion_seconds{" in body):
                break
            read_events(d, "round", 5)
        return (body, vals), ""
    finally:
        stop_proc(d)
        ec2.kill()
        ec2.wait()
        for n in nodes:
            n.server.shutdown()
            n.server.server_close()


def names_in_promql(expr):
    """Metric names an expression uses: identifiers that are neither functions, keywords nor
    label names, nor inside strings."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    funcs = {"count_over_time", "increase", "max", "min", "sum", "absent", "time", "bool", "or",
             "and", "unless", "rate", "avg", "count", "label_values"}
    return {w for w in words if w not in funcs and not re.fullmatch(r"\d+[smhd]?", w)}


def series_key(page, name):
    """The series of name as the daemon served it: name{labels} (exactly one is expected)."""
    keys = [k for k in page if k == name or k.startswith(name + "{")]
    return keys[0] if len(keys) == 1 else None


def main():
    promtool = shutil.which("promtool")
    if not check("promtool installed (Debian package prometheus)", promtool is not None):
        finish()
        return
    with tempfile.TemporaryDirectory() as tmp:
        got, why = live_page(tmp, original=True, forecast=True)
        off, why_off = live_page(tmp, original=False)
    if not check("a live daemon served /metrics with the subnet view", got, why) or \
            not check("a live daemon without PROMETHEUS_ORIGINAL_NAMES served /metrics", off, why_off):
        finish()
        return
    body, vals = got
    page = parse_metrics(body)
    names = {k.split("{")[0] for k in page}

    # The original helper's names behind the switch, with the sums of what the nodes served.
    sums = {k: sum(v[f] for v in vals) for k, f in ORIGINAL.items()}
    for name, want in sums.items():
        check(f"PROMETHEUS_ORIGINAL_NAMES: {name} unlabelled = sum over nodes ({want})",
              page.get(name) == want, page.get(name))
    check("PROMETHEUS_ORIGINAL_NAMES: HELP text of the original",
          "# HELP awscni_assigned_ip_addresses The number of IP addresses assigned to pods" in body)
    off_page = parse_metrics(off[0])
    check("without the switch: none of the original names",
          not [k for k in off_page if k.split("{")[0] in ORIGINAL], sorted(off_page)[:5])

    # The PrometheusRule and its expressions.
    with open(os.path.join(PDIR, "prometheusrule.yaml"), encoding="utf-8") as f:
        rule = yaml.safe_load(f)
    check("PrometheusRule is monitoring.coreos.com/v1",
          rule.get("apiVersion") == "monitoring.coreos.com/v1" and rule.get("kind") == "PrometheusRule")
    groups = rule["spec"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    check("the alerts of the CloudWatch alarms are all there", {
        "CNIPodIPAssignmentsFailing", "CNISubnetIPUtilizationHigh", "CNISubnetViewBlind",
        "CNIIPCapacityHigh", "CNIMetricsHelperScrapeFailures", "CNIMetricsHelperSilent",
        "CNISubnetRunsOutWithin60m"} == alerts,
        sorted(alerts))
    used = set()
    for r in rules:
        used |= names_in_promql(r["expr"])
    check("the rules use metric names (the scan works)",
          "cni_metrics_helper_cluster_no_available_ip_addresses_total" in used, sorted(used))
    missing = sorted(used - names)
    check("every metric name a rule uses is one the live daemon serves", not missing, missing)
    with tempfile.TemporaryDirectory() as tmp:
        rules_file = os.path.join(tmp, "rules.yaml")
        with open(rules_file, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": groups}, f)
        r = subprocess.run([promtool, "check", "rules", rules_file], capture_output=True, text=True,
                           timeout=60)
        check("promtool check rules", r.returncode == 0, r.stdout + r.stderr)
        bad = copy.deepcopy(groups)
        bad[0]["rules"][0]["expr"] = "count_over_time((increase(x[1m]) > 0)[5m:1m] >= "
        bad_file = os.path.join(tmp, "bad.yaml")
        with open(bad_file, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": bad}, f)
        r = subprocess.run([promtool, "check", "rules", bad_file], capture_output=True, text=True,
                           timeout=60)
        check("promtool check rules rejects a broken expression (the check can fail)",
              r.returncode != 0)

        # promtool test rules on the daemon's own series.
        bare = copy.deepcopy(groups)
        for g in bare:
            for x in g["rules"]:
                x.pop("annotations", None)
        unit_rules = os.path.join(tmp, "unit-rules.yaml")
        with open(unit_rules, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": bare}, f)
        S = {}
        for n in ("cni_metrics_helper_cluster_no_available_ip_addresses_total",
                  "cni_metrics_helper_cluster_max_subnet_ip_utilization_percent",
                  "cni_metrics_helper_subnet_last_success_timestamp_seconds",
                  "cni_metrics_helper_cluster_assigned_ip_addresses",
                  "cni_metrics_helper_cluster_max_ip_addresses",
                  "cni_metrics_helper_cluster_ipv4_prefixes",
                  "cni_metrics_helper_cluster_scrape_targets",
                  "cni_metrics_helper_cluster_scrape_targets_fresh",
                  "cni_metrics_helper_cluster_scrape_targets_failed",
                  "cni_metrics_helper_subnet_time_to_ip_exhaustion_seconds"):
            S[n] = series_key(page, n)
            check(f"the daemon serves one series of {n}", S[n] is not None)
        if None in S.values():
            finish()
            return
        lab = {"cluster_id": CLUSTER}
        SUBNET = re.search(r'subnet_id="([^"]+)"',
                           S["cni_metrics_helper_subnet_time_to_ip_exhaustion_seconds"]).group(1)

        def fire(name, sev, labels=lab):
            return [{"exp_labels": dict(labels, severity=sev)}]

        def series(pairs):
            return [{"series": S[k], "values": v} for k, v in pairs]
        healthy = [("cni_metrics_helper_cluster_scrape_targets", "2x60"),
                   ("cni_metrics_helper_cluster_scrape_targets_fresh", "2x60"),
                   ("cni_metrics_helper_cluster_scrape_targets_failed", "0x60")]
        tests = [
            {"name": "scale-up: a minute and a half of failures does not fire", "interval": "30s",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_cluster_no_available_ip_addresses_total", "0x7 3 6 9 9x40"),
                 ("cni_metrics_helper_cluster_assigned_ip_addresses", "40+1x12 52x40"),
                 ("cni_metrics_helper_cluster_max_ip_addresses", "100x60"),
                 ("cni_metrics_helper_cluster_ipv4_prefixes", "0x60"),
                 ("cni_metrics_helper_cluster_max_subnet_ip_utilization_percent", "50x60"),
                 ("cni_metrics_helper_subnet_last_success_timestamp_seconds", "0+30x60")]),
             "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": []}
                                 for t in ("5m", "7m", "12m") for a in sorted(alerts)]},
            {"name": "failures that last fire", "interval": "30s",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_cluster_no_available_ip_addresses_total", "0x9 2+2x40")]),
             "alert_rule_test": [
                 {"eval_time": "5m", "alertname": "CNIPodIPAssignmentsFailing", "exp_alerts": []},
                 {"eval_time": "9m", "alertname": "CNIPodIPAssignmentsFailing",
                  "exp_alerts": fire("CNIPodIPAssignmentsFailing", "critical")}]},
            {"name": "a draining subnet fires after 10 minutes above 85%", "interval": "1m",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_cluster_max_subnet_ip_utilization_percent", "70 70 88 88 88 95x30"),
                 ("cni_metrics_helper_subnet_last_success_timestamp_seconds", "0+60x40")]),
             "alert_rule_test": [
                 {"eval_time": "6m", "alertname": "CNISubnetIPUtilizationHigh", "exp_alerts": []},
                 {"eval_time": "13m", "alertname": "CNISubnetIPUtilizationHigh",
                  "exp_alerts": fire("CNISubnetIPUtilizationHigh", "warning")},
                 {"eval_time": "13m", "alertname": "CNISubnetViewBlind", "exp_alerts": []}]},
            {"name": "a subnet forecast to run out within the hour fires; a later one does not",
             "interval": "1m",
             # A forecast of 3 h until 5m, then 70 minutes falling 5 minutes a minute: 60 minutes
             # (not yet below) at 8m, below from 9m, firing 2 minutes later.
             "input_series": series(healthy + [
                 ("cni_metrics_helper_subnet_time_to_ip_exhaustion_seconds", "10800x5 4200-300x13")]),
             "alert_rule_test": [
                 {"eval_time": "5m", "alertname": "CNISubnetRunsOutWithin60m", "exp_alerts": []},
                 {"eval_time": "10m", "alertname": "CNISubnetRunsOutWithin60m", "exp_alerts": []},
                 {"eval_time": "12m", "alertname": "CNISubnetRunsOutWithin60m",
                  "exp_alerts": fire("CNISubnetRunsOutWithin60m", "critical",
                                     dict(lab, subnet_id=SUBNET))}]},
            {"name": "no forecast yet (the window filling) does not fire", "interval": "1m",
             "input_series": series(healthy),
             "alert_rule_test": [{"eval_time": "20m", "alertname": "CNISubnetRunsOutWithin60m",
                                  "exp_alerts": []}]},
            {"name": "a subnet view that never fetched fires", "interval": "1m",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_subnet_last_success_timestamp_seconds", "0x40")]),
             "alert_rule_test": [
                 {"eval_time": "10m", "alertname": "CNISubnetViewBlind", "exp_alerts": []},
                 {"eval_time": "22m", "alertname": "CNISubnetViewBlind",
                  "exp_alerts": [{"exp_labels": {"severity": "warning"}}]}]},
            {"name": "prefix delegation: 150 pods on 24 slots (384 addresses) is not full",
             "interval": "1m",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_cluster_assigned_ip_addresses", "150x30"),
                 ("cni_metrics_helper_cluster_max_ip_addresses", "24x30"),
                 ("cni_metrics_helper_cluster_ipv4_prefixes", "20x30")]),
             "alert_rule_test": [{"eval_time": "20m", "alertname": "CNIIPCapacityHigh",
                                  "exp_alerts": []}]},
            {"name": "secondary IPs: 95 of 100 for 15 minutes fires", "interval": "1m",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_cluster_assigned_ip_addresses", "95x30"),
                 ("cni_metrics_helper_cluster_max_ip_addresses", "100x30"),
                 ("cni_metrics_helper_cluster_ipv4_prefixes", "0x30")]),
             "alert_rule_test": [
                 {"eval_time": "10m", "alertname": "CNIIPCapacityHigh", "exp_alerts": []},
                 {"eval_time": "20m", "alertname": "CNIIPCapacityHigh",
                  "exp_alerts": fire("CNIIPCapacityHigh", "warning")}]},
            {"name": "an ipamD without the prefix family counts slots", "interval": "1m",
             "input_series": series(healthy + [
                 ("cni_metrics_helper_cluster_assigned_ip_addresses", "95x30"),
                 ("cni_metrics_helper_cluster_max_ip_addresses", "100x30")]),
             "alert_rule_test": [{"eval_time": "20m", "alertname": "CNIIPCapacityHigh",
                                  "exp_alerts": fire("CNIIPCapacityHigh", "warning")}]},
            {"name": "no fresh scrape fires the dead man; scrape failures fire", "interval": "1m",
             "input_series": series([
                 ("cni_metrics_helper_cluster_scrape_targets", "2x30"),
                 ("cni_metrics_helper_cluster_scrape_targets_fresh", "2x5 0x25"),
                 ("cni_metrics_helper_cluster_scrape_targets_failed", "0x5 2x25")]),
             "alert_rule_test": [
                 {"eval_time": "5m", "alertname": "CNIMetricsHelperSilent", "exp_alerts": []},
                 {"eval_time": "12m", "alertname": "CNIMetricsHelperSilent",
                  "exp_alerts": fire("CNIMetricsHelperSilent", "critical")},
                 {"eval_time": "12m", "alertname": "CNIMetricsHelperScrapeFailures",
                  "exp_alerts": fire("CNIMetricsHelperScrapeFailures", "warning")}]},
            {"name": "no helper series at all fires the dead man", "interval": "1m",
             "input_series": [{"series": 'up{job="other"}', "values": "1x20"}],
             "alert_rule_test": [
                 {"eval_time": "7m", "alertname": "CNIMetricsHelperSilent",
                  "exp_alerts": [{"exp_labels": {"severity": "critical"}}]}]},
        ]
        unit = os.path.join(tmp, "unit.yaml")
        with open(unit, "w", encoding="utf-8") as f:
            yaml.safe_dump({"rule_files": [unit_rules], "evaluation_interval": "30s",
                            "tests": tests}, f, sort_keys=False)
        r = subprocess.run([promtool, "test", "rules", unit], capture_output=True, text=True,
                           timeout=120)
        check("promtool test rules: every scenario as expected", r.returncode == 0,
              (r.stdout + r.stderr)[-3000:])
        # The unit tests can fail: a rule that fires on the first failed minute breaks them.
        weak = copy.deepcopy(bare)
        weak[0]["rules"][0]["expr"] = ("max by (cluster_id) (increase("
                                       "cni_metrics_helper_cluster_no_available_ip_addresses_total[1m])) > 0")
        with open(unit_rules, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": weak}, f)
        r = subprocess.run([promtool, "test", "rules", unit], capture_output=True, text=True,
                           timeout=120)
        check("promtool test rules fails on a rule that pages on one failed minute",
              r.returncode != 0 and "scale-up" in r.stdout + r.stderr)

    # The Kubernetes objects select what the Deployment declares.
    with open(os.path.join(SRC, "manifests", "base", "deployment.yaml"), encoding="utf-8") as f:
        dep = yaml.safe_load(f)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p.get("name"): p["containerPort"]
             for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    docs = {}
    for fn in ("service.yaml", "servicemonitor.yaml", "podmonitor.yaml"):
        with open(os.path.join(PDIR, fn), encoding="utf-8") as f:
            docs[fn] = yaml.safe_load(f)
    svc, sm, pm = docs["service.yaml"], docs["servicemonitor.yaml"], docs["podmonitor.yaml"]
    check("Service selects the helper's pods", all(pod_labels.get(k) == v
                                                  for k, v in svc["spec"]["selector"].items()))
    check("Service targets the container port named metrics",
          svc["spec"]["ports"][0]["targetPort"] == "metrics" and "metrics" in ports)
    check("ServiceMonitor/PodMonitor are monitoring.coreos.com/v1",
          sm["apiVersion"] == pm["apiVersion"] == "monitoring.coreos.com/v1"
          and sm["kind"] == "ServiceMonitor" and pm["kind"] == "PodMonitor")
    check("ServiceMonitor selects the Service by its labels", all(
        svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()))
    check("PodMonitor selects the helper's pods", all(
        pod_labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items()))
    check("monitors scrape the port named metrics at /metrics",
          sm["spec"]["endpoints"][0]["port"] == "metrics" and
          pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics")

    # Grafana: JSON, panels on the grid, every expression on served names.
    with open(os.path.join(PDIR, "grafana-dashboard.json"), encoding="utf-8") as f:
        dash = json.load(f)
    cells = set()
    overlap = False
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                overlap |= (x, y) in cells or x >= 24
                cells.add((x, y))
    check("Grafana panels fit the 24-column grid without overlapping", not overlap)
    gused = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            gused |= names_in_promql(t["expr"])
    gmiss = sorted(gused - names)
    check("every metric name a Grafana panel uses is one the live daemon serves", not gmiss, gmiss)
    finish()


if __name__ == "__main__":
    main()
