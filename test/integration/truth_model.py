"""The README's aggregation rules as an independent model over the ipamD simulator's truth files,
shared by the ground-truth tests (log sink, CloudWatch stand-in). Only the metric table (names and
kinds) comes from the daemon, through --help-metrics-markdown."""
import calendar
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures  # noqa: E402

BIN = os.environ["CMH_BIN"]


def metric_table():
    """family -> (cw name, kind) from the daemon's own table (the spec of what is published)."""
    out = subprocess.run([BIN, "--help-metrics-markdown"], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[2].startswith("`"):
            cw, family, agg = cells[0].strip("`"), cells[2].strip("`"), cells[3]
            kind = ("counter" if agg.startswith("counter") else "gauge" if agg.startswith("gauge")
                    else "latency" if agg.startswith("statistic") else None)
            if kind:
                table[family] = (cw, kind)
    return table


TABLE = metric_table()
LAT_FAMILY = "awscni_aws_api_latency_ms"
# How early process_start_time_seconds may read (client_golang: boot time in whole seconds).
START_SLACK_MS = 1000.0


def classify(series):
    """series key as served -> (family, kind, is_latency_count) or None."""
    name = series.split("{", 1)[0]
    if name.startswith(LAT_FAMILY + "_"):
        suffix = name[len(LAT_FAMILY) + 1:]
        if suffix in ("sum", "count"):
            return LAT_FAMILY, "latency", suffix == "count"
        return None
    if name in TABLE:
        return name, TABLE[name][1], False
    return None


class Model:
    """The README's aggregation rules, applied to the simulator's truth."""

    def __init__(self, stale_rounds):
        self.stale = stale_rounds
        self.nodes = {}
        self.rounds_finished = 0
        self.prev_start_ms = 0
        self.start_ms = 0

    def round(self, start_ms, truth_nodes):
        if self.start_ms:
            self.prev_start_ms = self.start_ms
        self.start_ms = start_ms
        for t in truth_nodes:
            st = self.nodes.setdefault(t["node"], {"has_state": False, "series": {}, "start": None,
                                                   "fail_streak": 0, "gauges": {}, "present": set()})
            st["fresh"] = False
            if not t["ok"]:
                st["fail_streak"] += 1
                continue
            vals = t["values"]
            start = vals.get("process_start_time_seconds")
            first = not st["has_state"]
            restarted = (not first and start is not None and st["start"] is not None and start != st["start"])
            whole = (first and self.prev_start_ms > 0 and start is not None
                     and start * 1000.0 + START_SLACK_MS > self.prev_start_ms)
            gauges, present, inc, series = {}, set(), {}, {}
            dsum = dcount = 0.0
            for key, v in vals.items():
                c = classify(key)
                if c is None:
                    continue
                fam, kind, is_count = c
                present.add(fam)
                if kind == "gauge":
                    gauges[fam] = gauges.get(fam, 0.0) + v
                    continue
                if first:
                    d = v if whole else 0.0
                elif restarted:
                    d = v
                elif key in st["series"]:
                    last = st["series"][key]
                    d = v - last if v >= last else v
                else:
                    d = v
                series[key] = v
                if kind == "latency":
                    if is_count:
                        dcount += d
                    else:
                        dsum += d
                else:
                    inc[fam] = inc.get(fam, 0.0) + d
            st.update(has_state=True, series=series, start=start, fail_streak=0, gauges=gauges,
                      present=present, fresh=True, inc=inc, dsum=dsum, dcount=dcount)
        # Cluster values, summed in node-name order like the daemon.
        sums, present = {}, set()
        fresh = stale = failed = at_cap = 0
        lat = None
        for name in sorted(self.nodes):
            st = self.nodes[name]
            if st["fresh"]:
                fresh += 1
                contributes = True
                present |= st["present"]
                for fam, d in st["inc"].items():
                    sums[fam] = sums.get(fam, 0.0) + d
                if st["dcount"] > 0:
                    mean = st["dsum"] / st["dcount"]
                    if lat is None:
                        lat = [st["dcount"], st["dsum"], mean, mean]
                    else:
                        lat[0] += st["dcount"]
                        lat[1] += st["dsum"]
                        lat[2] = min(lat[2], mean)
                        lat[3] = max(lat[3], mean)
            else:
                failed += 1
                contributes = st["has_state"] and st["fail_streak"] <= self.stale
                stale += contributes
                if contributes:
                    present |= {f for f in st["present"] if TABLE.get(f, ("", ""))[1] == "gauge"}
            if contributes:
                for fam, v in st["gauges"].items():
                    sums[fam] = sums.get(fam, 0.0) + v
                mx = st["gauges"].get("awscni_ip_max", 0.0)
                at_cap += mx > 0 and st["gauges"].get("awscni_assigned_ip_addresses", 0.0) >= mx
        out = {}
        counters = self.rounds_finished > 0 and fresh > 0
        for fam, (cw, kind) in TABLE.items():
            # Every counter from the second round on in which a node answered, 0 when no node has
            # the family (client_golang creates a labelled series at its first increment).
            if kind == "counter" and counters:
                out[cw] = sums.get(fam, 0.0)
            if fam not in present:
                continue
            if kind == "gauge":
                out[cw] = sums.get(fam, 0.0)
            elif kind == "latency" and counters and lat is not None:
                out[cw] = tuple(lat)
        assigned = sums.get("awscni_assigned_ip_addresses", 0.0)
        mx = sums.get("awscni_ip_max", 0.0)
        if "awscni_assigned_ip_addresses" in present and "awscni_total_ip_addresses" in present:
            out["availableIPAddresses"] = sums.get("awscni_total_ip_addresses", 0.0) - assigned
        if "awscni_assigned_ip_addresses" in present and "awscni_ip_max" in present:
            if mx > 0:
                out["ipUtilization"] = 100.0 * assigned / mx
            out["nodesAtIPCapacity"] = float(at_cap)
        # The node closest to running out: min over fresh nodes of ip max - assigned.
        rooms = [st["gauges"].get("awscni_ip_max", 0.0) - st["gauges"].get("awscni_assigned_ip_addresses", 0.0)
                 for st in self.nodes.values() if st["fresh"] and
                 {"awscni_ip_max", "awscni_assigned_ip_addresses"} <= st["present"]]
        if rooms:
            out["minNodeAvailableIPAddresses"] = min(rooms)
        out.update(scrapeTargets=float(len(self.nodes)), scrapeTargetsFresh=float(fresh),
                   scrapeTargetsStale=float(stale), scrapeTargetsFailed=float(failed))
        self.rounds_finished += 1
        return out


def check_published_rounds(model, datums, rounds, cluster):
    """Checks what the CloudWatch stand-in received (`datums`) against the model, round by round:
    `rounds` lists (the daemon's round event, the simulator's truth nodes) in order. One timestamp
    per round; each round's datums, in namespace Kubernetes with dimension CLUSTER_ID=`cluster` and
    each metric once, equal the model's values, and are as many as the daemon's round said. Returns
    the number of bad rounds and datums (the first two differences are recorded as failures)."""
    by_ts = {}
    for d in datums:
        by_ts.setdefault(d["timestamp_ms"], []).append(d)
    tss = sorted(by_ts)
    check("one timestamp per round", len(tss) == len(rounds), (len(tss), len(rounds)))
    bad = 0
    for ts, (summary, truth) in zip(tss, rounds):
        exp = model.round(ts, truth)
        got = {}
        for d in by_ts[ts]:
            if d["namespace"] != "Kubernetes" or d["dimensions"] != {"CLUSTER_ID": cluster}:
                bad += 1
            if d["metric"] in got:
                bad += 1
            got[d["metric"]] = (d["stats"]["count"], d["stats"]["sum"], d["stats"]["min"], d["stats"]["max"]) \
                if "stats" in d else d["value"]
        if got != exp:
            bad += 1
            if bad <= 2:
                diff = {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}
                failures.append(f"round at {ts} differs (got, expected): {diff}")
        check(f"round at {ts}: datum count = the daemon's", len(by_ts[ts]) == summary["datums"],
              (len(by_ts[ts]), summary["datums"]))
    return bad


def ts_ms(ts):
    t = time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + int(ts[20:23])


