"""End to end, time to exhaustion in compressed time: the daemon (SUBNET_METRICS, SUBNET_IDS,
CW_PER_AZ) against the EC2 stand-in (botocore checks every signature and DescribeSubnets request)
playing scripted drains, publishing to the CloudWatch stand-in. Time runs 30 times faster than
the defaults: SUBNET_METRICS_INTERVAL 10 s (300 s), FORECAST_WINDOW 60 s (30 min), a round every
2 s (60 s), and every limit alike: the 60-minute alarm is 120 s, 24 hours is 2880 s, a day 2880 s.
(SUBNET_METRICS_INTERVAL is at its least, 10 s, so time cannot run faster.) Two daemons run side by
side, each with its own peers: the drains, and the stale view (an EC2 outage would cut the drains).
  - steady: 8 addresses every 4 s on average, each step anywhere in its slot: once the window has
    filled, every published subnetTimeToIPExhaustion is within 25% of the true remaining time while
    at least one window of it is left, and a value below the alarm threshold comes before the
    subnet runs out; nothing is published before the window holds its history;
  - flat: 2000 free give or take 20 at every step: never forecast to run out within 24 hours;
  - daily: the drain half of a fill-and-drain day (phase 2.0 to 2.45 rad, forecasts from 2.13,
    around 2.37 where the drain is steepest relative to what is left): never below the alarm
    threshold;
  - stale (the second daemon, flat and daily): once forecasts are published, EC2 failing for
    longer than 3 intervals: no subnet datum while the view is stale, and after it recovers no
    forecast until a new window has filled (nothing across the gap);
  - clusterMinTimeToIPExhaustion is the least of the subnets' values of its round, the per-AZ value
    the least of the AZ's subnets, and /metrics shows the same figures;
  - `report` with REPORT_MIN_TIME_TO_EXHAUSTION samples a window and shows a "runs out in" column:
    exit 3 when the steady subnet runs out within the threshold (300 s here), 0 with a threshold
    (20 s) no subnet crosses."""
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, parse_metrics, stop_all  # noqa: E402
from subnet_peers import Peers, own_url  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]

SCALE = 30.0
INTERVAL, WINDOW, ROUND = 300 / SCALE, 1800 / SCALE, 60 / SCALE
ALARM, DAY_LIMIT, DAY = 3600 / SCALE, 86400 / SCALE, 86400 / SCALE
CAP = 604800.0
STEADY, FLAT, DAILY = "subnet-0000f001", "subnet-0000f002", "subnet-0000f003"
RUN = 205.0        # the drains' daemon; steady runs out at about 220 s, judged until 160 s
OUTAGE_AT = 80.0   # the stale daemon: forecasts from about 60 s
OUTAGE = 45.0      # > 3 intervals
AFTER = 75.0       # recovery: > one window

rng = random.Random(19)


def steady_points():
    # 8 addresses per 4 s slot (1/15 per second at full scale, times 30), from 440.
    pts, n, slot = [[0, 440]], 440, 0.0
    while n > 0:
        n -= 8
        pts.append([round(slot + 4.0 * rng.random(), 3), max(n, 0)])
        slot += 4.0
    pts.sort()
    return pts


def flat_points():
    return [[round(t * ROUND, 3), 2000 + rng.randint(-20, 20)] for t in range(int(400 / ROUND))]


def daily_points():
    # Full scale: 2500 + 1800 cos(2 pi t / day) in steps of 8, pods +-20; here from phase 2.0.
    t0 = 2.0 / (2 * math.pi) * DAY
    pts = []
    for k in range(int(400 / ROUND)):
        t = k * ROUND
        want = 2500 + 1800 * math.cos(2 * math.pi * (t0 + t) / DAY)
        pts.append([round(t, 3), int(8 * round(want / 8)) + rng.randint(-20, 20)])
    return pts


def exhausted_at(pts):
    return next(t for t, n in pts if n <= 0)


SUBNETS = [
    {"SubnetId": STEADY, "CidrBlock": "10.19.0.0/20", "AvailabilityZone": "us-west-2a",
     "AvailableIpAddressCount": 440},
    {"SubnetId": FLAT, "CidrBlock": "10.19.16.0/20", "AvailabilityZone": "us-west-2a",
     "AvailableIpAddressCount": 2000},
    {"SubnetId": DAILY, "CidrBlock": "10.19.32.0/20", "AvailabilityZone": "us-west-2b",
     "AvailableIpAddressCount": 4000},
]



def setup(name, base, subnets, scripts):
    """Peers in tmp/name (truth: subnets, drains: scripts) and the daemon's environment."""
    d = os.path.join(tmp, name)
    os.mkdir(d)
    truth = os.path.join(d, "subnets.json")
    with open(truth, "w") as f:
        json.dump({"subnets": subnets}, f)
    p = Peers(BUILD, DATA, d, name, base, 2, 19, truth, RUN + OUTAGE_AT + OUTAGE + AFTER + 60)
    env = dict(p.env, METRIC_UPDATE_INTERVAL="%gs" % ROUND)
    env.update({
        "SUBNET_IDS": ",".join(s["SubnetId"] for s in subnets),
        "SUBNET_METRICS_INTERVAL": "%gs" % INTERVAL, "FORECAST_WINDOW": "%gs" % WINDOW,
        "CW_PER_AZ": "true"})
    for sid, pts in scripts.items():
        http(p.ec2_url + "/drain", "POST", {"SubnetId": sid, "points": pts})
    return p, env


tmp = tempfile.mkdtemp(prefix="cmh-forecast-")
peers = stale_peers = daemon = stale_daemon = None
try:
    scripts = {STEADY: steady_points(), FLAT: flat_points(), DAILY: daily_points()}
    peers, env = setup("fc", "127.98.0.1", SUBNETS, scripts)
    stale_peers, stale_env = setup("fs", "127.98.1.1", SUBNETS[1:],
                                   {sid: scripts[sid] for sid in (FLAT, DAILY)})
    cw_url, ec2_url = peers.cw_url, peers.ec2_url
    log_path = os.path.join(tmp, "daemon.log")
    log = open(log_path, "w")
    start = time.time()
    daemon = subprocess.Popen([BIN], env=env, stderr=log, text=True)
    stale_log = open(os.path.join(tmp, "stale-daemon.log"), "w")
    stale_daemon = subprocess.Popen([BIN], env=stale_env, stderr=stale_log, text=True)
    end_steady = start + exhausted_at(scripts[STEADY])

    own = own_url(log_path)
    check("daemon listening", own is not None)

    # Two reports, sampling a window alongside the daemon.
    time.sleep(20)
    renv = {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL_CLOUDWATCH"}
    reports = {thr: subprocess.Popen([BIN, "report"], env=dict(renv, REPORT_MIN_TIME_TO_EXHAUSTION=thr),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for thr in ("300s", "20s")}
    # The stale daemon's EC2 fails for OUTAGE seconds from OUTAGE_AT.
    time.sleep(max(0.0, start + OUTAGE_AT - time.time()))
    outage_at = time.time()
    http(stale_peers.ec2_url + "/outage", "POST", {"seconds": OUTAGE})
    recovered_at = time.time() + OUTAGE
    # /metrics mid-run, once forecasts exist: the same figures as the round's datums.
    time.sleep(max(0.0, start + WINDOW + 3 * INTERVAL - time.time()))
    page = parse_metrics(http(own + "/metrics").decode())
    per_subnet = {k: v for k, v in page.items()
                  if k.startswith("cni_metrics_helper_subnet_time_to_ip_exhaustion_seconds{")}
    check("/metrics: a forecast per subnet", len(per_subnet) == 3, per_subnet)
    cmin = page.get('cni_metrics_helper_cluster_min_time_to_ip_exhaustion_seconds{cluster_id="fc"}')
    check("/metrics: cluster min is the least subnet", per_subnet and cmin == min(per_subnet.values()),
          (cmin, per_subnet))

    outs = {}
    for thr, p in reports.items():
        try:
            out, err = p.communicate(timeout=120)
            outs[thr] = (p.returncode, out, err)
        except subprocess.TimeoutExpired:
            p.kill()
            outs[thr] = (None, "", "timed out")
    rc, out, err = outs["300s"]
    row = next((l for l in out.splitlines() if STEADY in l and "10.19.0.0/20" in l), "")
    check("report: exit 3 when a subnet runs out within REPORT_MIN_TIME_TO_EXHAUSTION", rc == 3,
          (rc, out[-600:], err[-300:]))
    check("report: a RUNS OUT IN column", "RUNS OUT IN" in out and re.search(r"\d+(s|m)\s*$", row),
          row)
    check("report: the reason names the subnet",
          re.search(r"THRESHOLD: subnet %s .* runs out of IPs in" % STEADY, out), out[-400:])
    flat_row = next((l for l in out.splitlines() if FLAT in l and "10.19.16.0/20" in l), "")
    check("report: the flat subnet does not run out within 7 days", flat_row.endswith(">7d"), flat_row)
    rc, out, err = outs["20s"]
    check("report: exit 0 when no subnet runs out within the threshold", rc == 0,
          (rc, out[-600:], err[-300:]))

    time.sleep(max(0.0, start + RUN - time.time(), recovered_at + AFTER - time.time()))
    ds = json.loads(http(cw_url + "/datums"))
    stale_ds = json.loads(http(stale_peers.cw_url + "/datums"))
    for what, p in (("drains", peers), ("stale view", stale_peers)):
        stats = json.loads(http(p.ec2_url + "/stats"))
        check("EC2 stand-in (%s): every request signed and valid" % what,
              stats["bad_signature"] == 0 and stats["invalid"] == 0, stats["errors"][:3])

    def series(metric, dim, value, datums=ds):
        return sorted((d["timestamp_ms"] / 1000.0, d["value"]) for d in datums
                      if d["metric"] == metric and d["dimensions"].get(dim) == value)

    # Rule: nothing until the window holds its history (first good fetch at about start).
    tte = {sid: series("subnetTimeToIPExhaustion", "SubnetId", sid) for sid in scripts}
    first = min(t for sid in tte for t, _ in tte[sid][:1]) if any(tte.values()) else None
    check("forecasts published", first is not None)
    check("no forecast before the window filled", first is not None and
          first >= start + WINDOW - INTERVAL / 2, (first, start))
    check("every value within [0, 604800]", all(0 <= v <= CAP for s in tte.values() for _, v in s))

    # Steady drain.
    judged = [(t, v, end_steady - t) for t, v in tte[STEADY] if end_steady - t >= WINDOW]
    worst = max((abs(v - tr) / tr for t, v, tr in judged), default=None)
    check("steady: judged rounds", len(judged) >= 30, len(judged))
    check("steady: within 25% of the true remaining time at every judged round",
          worst is not None and worst <= 0.25,
          "worst %.1f%%: %s" % (100 * (worst or 0), [x for x in judged if abs(x[1] - x[2]) > 0.25 * x[2]][:3]))
    alarm = [t for t, v in tte[STEADY] if v < ALARM]
    check("steady: the alarm threshold is crossed before the subnet runs out",
          alarm and alarm[0] < end_steady, (alarm[:1], end_steady))
    print("steady: %d rounds judged, worst error %.1f%%, alarm %.0f s (compressed) before exhaustion"
          % (len(judged), 100 * (worst or 0), end_steady - alarm[0] if alarm else -1))

    # Flat with noise and the daily cycle's drain half.
    flat = [v for t, v in tte[FLAT]]
    daily = [v for t, v in tte[DAILY]]
    check("flat: never within 24 hours", flat and min(flat) > DAY_LIMIT, min(flat or [0]))
    check("daily drain half: never within 60 minutes", daily and min(daily) > ALARM,
          min(daily or [0]))
    print("flat: soonest %.0f s (24 h = %.0f s); daily: soonest %.0f s (60 min = %.0f s)"
          % (min(flat or [0]), DAY_LIMIT, min(daily or [0]), ALARM))

    # Stale: the view is stale 3 intervals after the last good fetch before the outage.
    before = [t for sid in (FLAT, DAILY)
              for t, _ in series("subnetTimeToIPExhaustion", "SubnetId", sid, stale_ds)
              if t < outage_at]
    check("stale: forecasts published before the outage", before, OUTAGE_AT)
    stale_from = outage_at + 3 * INTERVAL + ROUND
    during = [d for d in stale_ds if stale_from + ROUND <= d["timestamp_ms"] / 1000.0 < recovered_at
              and d["metric"] in ("subnetTimeToIPExhaustion", "clusterMinTimeToIPExhaustion",
                                  "subnetAvailableIPAddresses")]
    check("stale: no subnet datum while the view is stale", not during, during[:2])
    rounds_during = [d for d in stale_ds if stale_from + ROUND <= d["timestamp_ms"] / 1000.0 < recovered_at
                     and d["metric"] == "scrapeTargets"]
    check("stale: rounds kept running", len(rounds_during) >= 3, len(rounds_during))
    back = series("subnetAvailableIPAddresses", "SubnetId", FLAT, stale_ds)
    back_at = next((t for t, _ in back if t >= recovered_at), None)
    check("stale: free counts back after recovery", back_at is not None)
    after = [t for sid in (FLAT, DAILY)
             for t, _ in series("subnetTimeToIPExhaustion", "SubnetId", sid, stale_ds)
             if t >= recovered_at]
    check("stale: no forecast across the gap (none until a new window filled)",
          back_at is not None and after and min(after) >= back_at + WINDOW - INTERVAL,
          (back_at, min(after or [0])))

    # Cluster min and per AZ, round by round.
    by_ts = {}
    for d in ds:
        by_ts.setdefault(d["timestamp_ms"], []).append(d)
    bad = []
    for ts, group in by_ts.items():
        subs = [d["value"] for d in group if d["metric"] == "subnetTimeToIPExhaustion"
                and "SubnetId" in d["dimensions"]]
        mins = [d["value"] for d in group if d["metric"] == "clusterMinTimeToIPExhaustion"]
        az_a = [d["value"] for d in group if d["metric"] == "subnetTimeToIPExhaustion"
                and d["dimensions"].get("AvailabilityZone") == "us-west-2a"]
        subs_a = [d["value"] for d in group if d["metric"] == "subnetTimeToIPExhaustion"
                  and d["dimensions"].get("SubnetId") in (STEADY, FLAT)]
        if subs and (mins != [min(subs)] or (subs_a and az_a != [min(subs_a)])):
            bad.append((ts, subs, mins, az_a))
        if not subs and mins:
            bad.append((ts, "min without subnets"))
    check("cluster min and per-AZ min equal the subnets' least, every round", not bad, bad[:2])
    units = {d["unit"] for d in ds if "TimeTo" in d["metric"]}
    check("unit Seconds", units == {"Seconds"}, units)
finally:
    for d, p in ((daemon, peers), (stale_daemon, stale_peers)):
        if p is not None:
            stop_all(d, [p.cw, p.ec2], p.sim, p.control)
finish()
