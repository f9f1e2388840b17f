"""Checks manifests/cloudwatch/ (issue 8, alarms and dashboard) against botocore's CloudWatch model
and against the metrics the daemon under test publishes:

- alarms.yaml parses as CloudFormation YAML (short-form tags !Ref, !Sub, ...); every reference names
  a parameter, pseudo parameter or condition it declares; the parameters' defaults satisfy their own
  constraints;
- every AWS::CloudWatch::Alarm's Properties, resolved with test parameters and converted to
  PutMetricAlarm parameters, validate against botocore's PutMetricAlarm input shape (types,
  required members, lengths, ranges, enums) and CloudWatch's documented rules (one of MetricName or
  Metrics, one query returning data, periods, TreatMissingData values, Metrics Insights syntax);
- the dashboard validates against PutDashboard, its body parses, its widgets fit the 24-column grid
  without overlapping, and every metric row and Metrics Insights query is well formed;
- every metric name + dimension set an alarm or a widget uses is one the daemon emits: the metric
  table of `cni-metrics-helper --help-metrics-markdown`, cross-checked for the cluster-level ones
  against what `cni-metrics-helper inspect --json` really produces;
- the `put-metric-alarm` / `put-dashboard` files under manifests/cloudwatch/cli/ are exactly what
  the template gives with placeholder values (`--update` regenerates them), and cli/apply.sh
  renders them into files that validate and equal the template resolved with the same values;
- what the alarms are meant to do holds: the subnet alarm watches the fullest subnet in percent
  and treats missing data as breaching, because a live daemon whose DescribeSubnets is denied
  publishes no subnet datum at all (checked here) while its other metrics flow; failed assignments
  page only when they last (M of N minutes); capacity counts 16 addresses per slot under prefix
  delegation; `SUBNET_ALARM=false cli/apply.sh` leaves out the subnet alarm and its dashboard
  entry, exactly as the template's SubnetAlarm=false (alarm_scenarios.py evaluates the alarms
  against what the daemon publishes in scripted scenarios);
- deliberately broken alarms and dashboards are rejected, so the checks themselves can fail (their
  number is printed, not written down anywhere else).
"""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import botocore.session
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

SRC = os.environ.get("CMH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CMH_BIN") or os.path.join(SRC, "build", "cni-metrics-helper")
DATA = os.environ.get("CMH_DATA_DIR") or os.path.join(SRC, "test", "data")
CWDIR = os.path.join(SRC, "manifests", "cloudwatch")
TEMPLATE = os.path.join(CWDIR, "alarms.yaml")
CLIDIR = os.path.join(CWDIR, "cli")

CW = botocore.session.get_session().get_service_model("cloudwatch")
PUT_ALARM = CW.operation_model("PutMetricAlarm").input_shape
PUT_DASHBOARD = CW.operation_model("PutDashboard").input_shape

# Placeholders of the cli/ files; cli/apply.sh replaces them.
PLACEHOLDERS = {"ClusterId": "@CLUSTER_ID@", "SnsTopicArn": "@SNS_TOPIC_ARN@",
                "AWS::Region": "@REGION@", "AWS::AccountId": "@ACCOUNT_ID@",
                "AWS::Partition": "@PARTITION@"}
TEST_VALUES = {"ClusterId": "prod-eu_1", "SnsTopicArn": "arn:aws:sns:eu-west-1:111122223333:ip-alarms",
               "AWS::Region": "eu-west-1", "AWS::AccountId": "111122223333",
               "AWS::Partition": "aws"}
PSEUDO = {"AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::StackName", "AWS::StackId",
          "AWS::URLSuffix", "AWS::NoValue"}


# ---------------------------------------------------------------------------------------------
# CloudFormation YAML: short-form tags become the long form ({"Ref": x}, {"Fn::Sub": x}, ...).
class CfnLoader(yaml.SafeLoader):
    pass


def _cfn_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path=TEMPLATE):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


class Unresolvable(Exception):
    pass


def resolve(node, env, conditions):
    """Resolves intrinsic functions with env {parameter or pseudo parameter: value}."""
    if isinstance(node, list):
        return [resolve(x, env, conditions) for x in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (k, v), = node.items()
        if k == "Ref":
            if v not in env:
                raise Unresolvable(f"Ref to unknown {v!r}")
            return env[v]
        if k == "Fn::Sub":
            text, extra = (v, {}) if isinstance(v, str) else (v[0], resolve(v[1], env, conditions))

            def sub(m):
                name = m.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in extra:
                    return str(extra[name])
                if name not in env:
                    raise Unresolvable(f"${{{name}}} names nothing")
                return str(env[name])
            return re.sub(r"\$\{([^}]*)\}", sub, text)
        if k == "Fn::Equals":
            a, b = resolve(v, env, conditions)
            return str(a) == str(b)
        if k == "Fn::If":
            cond, yes, no = v
            if cond not in conditions:
                raise Unresolvable(f"Fn::If on unknown condition {cond!r}")
            return resolve(yes if conditions[cond] else no, env, conditions)
        if k == "Fn::Join":
            sep, items = v
            return sep.join(str(x) for x in resolve(items, env, conditions))
        if k.startswith("Fn::"):
            raise Unresolvable(f"{k} is not used by this template's checks")
    return {k: resolve(v, env, conditions) for k, v in node.items()}


def parameter_problems(tpl):
    """The defaults must satisfy their own constraints; every Number default must be a number."""
    out = []
    for name, p in tpl.get("Parameters", {}).items():
        if "Default" not in p:
            continue
        d = p["Default"]
        if p["Type"] == "Number":
            try:
                x = float(d)
            except (TypeError, ValueError):
                out.append(f"{name}: default {d!r} is not a number")
                continue
            if "MinValue" in p and x < p["MinValue"] or "MaxValue" in p and x > p["MaxValue"]:
                out.append(f"{name}: default {d} outside [{p.get('MinValue')}, {p.get('MaxValue')}]")
        if "AllowedPattern" in p and not re.fullmatch(p["AllowedPattern"], str(d)):
            out.append(f"{name}: default {d!r} does not match {p['AllowedPattern']}")
        if "AllowedValues" in p and str(d) not in [str(a) for a in p["AllowedValues"]]:
            out.append(f"{name}: default {d!r} not in {p['AllowedValues']}")
    return out


def environment(tpl, values, enforce_patterns=True):
    env = {}
    for name, p in tpl["Parameters"].items():
        v = values.get(name, p.get("Default"))
        if v is None:
            raise Unresolvable(f"parameter {name} has no value")
        if enforce_patterns and "AllowedPattern" in p and not re.fullmatch(p["AllowedPattern"], str(v)):
            raise Unresolvable(f"parameter {name}={v!r} does not match {p['AllowedPattern']}")
        env[name] = v
    for k in PSEUDO:
        env[k] = values.get(k, "@" + k.split("::")[1].upper() + "@")
    conditions = {}
    for cname, expr in tpl.get("Conditions", {}).items():
        conditions[cname] = bool(resolve(expr, env, conditions))
    return env, conditions


# ---------------------------------------------------------------------------------------------
# botocore: shape-driven conversion (CloudFormation passes every Ref as text) and validation.
def convert(value, shape):
    t = shape.type_name
    if t == "structure" and isinstance(value, dict):
        return {k: convert(v, shape.members[k]) if k in shape.members else v
                for k, v in value.items()}
    if t == "list" and isinstance(value, list):
        return [convert(v, shape.member) for v in value]
    if t == "integer" and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    if t == "double" and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return value
    if t == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def shape_problems(value, shape, path):
    """Type, required, length, range and enum checks from the model (botocore's own validator
    checks the first three; enums and maxima are checked here too)."""
    out = []
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        for req in shape.required_members:
            if req not in value:
                out.append(f"{path}: missing required {req}")
        for k, v in value.items():
            if k not in shape.members:
                out.append(f"{path}: unknown member {k}")
            else:
                out += shape_problems(v, shape.members[k], f"{path}.{k}")
    elif t == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        if "min" in meta and len(value) < meta["min"] or "max" in meta and len(value) > meta["max"]:
            out.append(f"{path}: {len(value)} items, allowed {meta.get('min')}..{meta.get('max')}")
        for i, v in enumerate(value):
            out += shape_problems(v, shape.member, f"{path}[{i}]")
    elif t == "string":
        if not isinstance(value, str):
            return [f"{path}: expected a string, got {value!r}"]
        if "min" in meta and len(value) < meta["min"] or "max" in meta and len(value) > meta["max"]:
            out.append(f"{path}: length {len(value)}, allowed {meta.get('min')}..{meta.get('max')}")
        if shape.enum and value not in shape.enum:
            out.append(f"{path}: {value!r} is not one of {shape.enum}")
    elif t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: expected an integer, got {value!r}"]
        if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
            out.append(f"{path}: {value} outside {meta.get('min')}..{meta.get('max')}")
    elif t == "double":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{path}: expected a number, got {value!r}"]
    elif t == "boolean":
        if not isinstance(value, bool):
            return [f"{path}: expected a boolean, got {value!r}"]
    return out


def botocore_problems(params, shape, name):
    from botocore.validate import ParamValidator
    report = ParamValidator().validate(params, shape)
    out = [f"{name}: botocore: {report.generate_report()}"] if report.has_errors() else []
    return out + shape_problems(params, shape, name)


# ---------------------------------------------------------------------------------------------
# What the daemon emits: {metric name: {frozenset(dimension names), ...}}.
def emitted_from_markdown(text):
    """Reads the metric table (every metric with {CLUSTER_ID}, unless its row says "never with
    {CLUSTER_ID} alone") and any table or column headed "Dimension..." whose cells list further
    sets as {A, B}. The "ipamD families deliberately not published" table is skipped."""
    out = {}
    header = []
    for ln in text.splitlines():
        if not ln.startswith("|"):
            header = [] if not ln.strip() else header
            continue
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        m = re.fullmatch(r"`([A-Za-z0-9_]+)`", cells[0])
        if not m:
            header = [c.lower() for c in cells]
            continue
        if not header or header[0] != "cloudwatch metric":
            continue
        name = m.group(1)
        sets = out.setdefault(name, set())
        if "unit" in header and not re.search(r"never with \{CLUSTER_ID\} alone", ln):
            sets.add(frozenset({"CLUSTER_ID"}))
        for i, h in enumerate(header):
            if "dimension" in h and i < len(cells):
                for group in re.findall(r"\{([^}]*)\}", cells[i]):
                    sets.add(frozenset(x.strip() for x in group.split(",") if x.strip()))
    return out


def daemon_metrics():
    md = subprocess.run([BIN, "--help-metrics-markdown"], capture_output=True, text=True,
                        timeout=30, check=True).stdout
    return emitted_from_markdown(md)


def inspect_emitted(tmp):
    """What one round of the real aggregator publishes for two rounds of a real ipamD scrape, with
    the failed-assignment counter added so that it is published too."""
    with open(os.path.join(DATA, "ipamd", "cni_test1.data"), encoding="utf-8") as f:
        base = f.read()
    files = []
    for i, n in enumerate((3, 8)):
        p = os.path.join(tmp, f"round{i}.prom")
        with open(p, "w", encoding="utf-8") as f:
            f.write(base + "# TYPE awscni_no_available_ip_addresses counter\n"
                    f"awscni_no_available_ip_addresses {n}\n"
                    "# TYPE awscni_total_ipv4_prefixes gauge\nawscni_total_ipv4_prefixes 2\n")
        files.append(p)
    out = subprocess.run([BIN, "inspect", "--json", files[0], "--then", files[1]],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, AWS_CLUSTER_ID="c1"))
    if out.returncode != 0:
        return None
    got = {}
    for d in json.loads(out.stdout):
        got.setdefault(d["metric"], set()).add(frozenset(d["dimensions"]))
    return got


def live_emitted(tmp, ec2_faults=(), forecast=False):
    """What the daemon really publishes with SUBNET_METRICS, CW_PER_AZ and CW_PER_NODE on: the
    ipamD fleet simulator (8 nodes in two /29 subnets of two AZs), the EC2 stand-in that knows
    those subnets (answering with ec2_faults first, e.g. "denied": a blind subnet view) and the
    CloudWatch stand-in; three rounds, then what arrived at "CloudWatch". With forecast, the last
    round comes after a whole FORECAST_WINDOW (30 s of 10 s fetches), so it carries the forecast.
    Returns ({metric: {frozenset(dimension names)}}, why-not text)."""
    build = os.environ.get("CMH_BUILD_DIR") or os.path.dirname(BIN)
    sim_bin = os.path.join(build, "test", "ipamd_sim")
    ec2_py = os.path.join(SRC, "test", "sim", "ec2_standin.py")
    cw_py = os.path.join(SRC, "test", "sim", "cloudwatch_standin.py")
    for need in (sim_bin, ec2_py, cw_py):
        if not os.path.exists(need):
            return None, f"{need} missing"
    truth = os.path.join(tmp, "subnets.json")
    with open(truth, "w", encoding="utf-8") as f:
        json.dump({"subnets": [
            {"SubnetId": "subnet-0aaa", "CidrBlock": "127.83.0.0/29", "Ipv6CidrBlocks": [],
             "AvailabilityZone": "eu-west-1a", "AvailableIpAddressCount": 3},
            {"SubnetId": "subnet-0bbb", "CidrBlock": "127.83.0.8/29", "Ipv6CidrBlocks": [],
             "AvailabilityZone": "eu-west-1b", "AvailableIpAddressCount": 2}]}, f)
    key = "AKIDALARMS:alarms-secret"
    procs = []

    def line_of(p):
        return p.stdout.readline()
    try:
        sim = subprocess.Popen([sim_bin, "--nodes", "8", "--base", "127.83.0.2", "--seed", "8",
                                "--workers", "1", "--targets-out", os.path.join(tmp, "targets"),
                                "--template", os.path.join(DATA, "ipamd",
                                                           "cni_test1.data")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(sim)
        if not re.search(r"control=(\S+)", line_of(sim) or ""):
            return None, "simulator did not start"
        peers = {}
        for name, script in (("ec2", ec2_py), ("cw", cw_py)):
            args = ["/usr/bin/python3", script, "--key", key, "--region", "eu-west-1",
                    "--lifetime", "120"] + (["--truth", truth, "--faults", json.dumps(list(ec2_faults))]
                                            if name == "ec2" else [])
            p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            m = re.search(r"http=(\d+)", line_of(p) or "")
            if not m:
                return None, f"{name} stand-in did not start"
            peers[name] = f"http://127.0.0.1:{m.group(1)}"
        with open(os.path.join(tmp, "targets"), encoding="utf-8") as f:
            targets = ",".join("%s=%s:%s" % tuple(ln.split()) for ln in f if ln.strip())
        env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "true",
               "AWS_REGION": "eu-west-1", "AWS_CLUSTER_ID": "alarms-e2e",
               "AWS_ACCESS_KEY_ID": key.split(":")[0], "AWS_SECRET_ACCESS_KEY": key.split(":")[1],
               "AWS_ENDPOINT_URL_CLOUDWATCH": peers["cw"], "AWS_ENDPOINT_URL_EC2": peers["ec2"],
               "AWS_EC2_METADATA_DISABLED": "true", "METRIC_UPDATE_INTERVAL": "3600",
               "SCRAPE_JITTER": "0", "SCRAPE_TIMEOUT": "2s", "PROMETHEUS_ADDRESS": "127.0.0.1",
               "PROMETHEUS_PORT": "0", "SUBNET_METRICS": "true", "CW_PER_AZ": "true",
               "CW_PER_NODE": "true"}
        if forecast:
            env.update(SUBNET_METRICS_INTERVAL="10s", FORECAST_WINDOW="30s")
        started = time.monotonic()
        d = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
        procs.append(d)
        rounds, log = 0, []
        deadline = time.monotonic() + 100
        while rounds < 3 and time.monotonic() < deadline:
            ln = d.stderr.readline()
            if not ln:
                break
            log.append(ln)
            if " msg=round " in ln:
                rounds += 1
                if rounds < 3:
                    time.sleep(1.0)  # lets the first DescribeSubnets answer arrive
                    if forecast and rounds == 2:
                        time.sleep(max(0.0, started + 36 - time.monotonic()))
                    d.send_signal(signal.SIGUSR1)
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(timeout=20)
        except subprocess.TimeoutExpired:
            d.kill()
        if rounds < 3:
            return None, "the daemon ran %d rounds: %s" % (rounds, "".join(log[-5:]))
        with urllib.request.urlopen(peers["cw"] + "/datums", timeout=10) as r:
            datums = json.loads(r.read())
        got = {}
        for dt in datums:
            got.setdefault(dt["metric"], set()).add(frozenset(dt["dimensions"]))
        return got, ""
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait()


# ---------------------------------------------------------------------------------------------
# Metrics Insights: the subset of the grammar we use, parsed strictly.
MI_RE = re.compile(
    r"SELECT\s+(?P<fn>AVG|COUNT|MAX|MIN|SUM)\((?P<metric>[A-Za-z0-9_]+)\)\s+"
    r"FROM\s+SCHEMA\(\s*(?P<ns>\"[^\"]+\"|[A-Za-z0-9_]+)(?P<dims>(?:\s*,\s*[A-Za-z0-9_]+)*)\s*\)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+GROUP\s+BY\s+(?P<group>[A-Za-z0-9_]+(?:\s*,\s*[A-Za-z0-9_]+)*))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>AVG|COUNT|MAX|MIN|SUM)\(\)(?:\s+(?:ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*", re.IGNORECASE)


def mi_parse(expr):
    m = MI_RE.fullmatch(expr)
    if not m:
        return None, [f"not a Metrics Insights query we can read: {expr!r}"]
    out = []
    ns = m.group("ns").strip('"')
    dims = [d.strip() for d in m.group("dims").split(",") if d.strip()]
    where = {}
    if m.group("where"):
        for term in re.split(r"\s+AND\s+", m.group("where"), flags=re.IGNORECASE):
            t = re.fullmatch(r"([A-Za-z0-9_]+)\s*=\s*'([^'\\]*)'", term.strip())
            if not t:
                out.append(f"WHERE term {term!r} is not dimension = 'value'")
                continue
            where[t.group(1)] = t.group(2)
    group = [g.strip() for g in (m.group("group") or "").split(",") if g.strip()]
    for k in list(where) + group:
        if k not in dims:
            out.append(f"{k} used in WHERE/GROUP BY but not in SCHEMA({', '.join(dims)})")
    if m.group("limit") and not 1 <= int(m.group("limit")) <= 500:
        out.append("LIMIT must be 1..500")
    return {"fn": m.group("fn").upper(), "metric": m.group("metric"), "ns": ns,
            "dims": dims, "where": where, "group": group}, out


class Ctx:
    def __init__(self, emitted, namespace, cluster, alarm_names=()):
        self.emitted = emitted
        self.namespace = namespace
        self.cluster = cluster
        self.alarm_names = set(alarm_names)


def metric_problems(where, ns, name, dims, ctx):
    """dims: {dimension name: value or None (a Metrics Insights SCHEMA leaves values open)}."""
    out = []
    if ns != ctx.namespace:
        out.append(f"{where}: namespace {ns!r}, the helper publishes to {ctx.namespace!r}")
    if name not in ctx.emitted:
        out.append(f"{where}: the daemon publishes no metric {name!r}")
    elif frozenset(dims) not in ctx.emitted[name]:
        out.append(f"{where}: {name} is not published with dimensions {sorted(dims)} "
                   f"(it has {[sorted(s) for s in ctx.emitted[name]]})")
    if dims.get("CLUSTER_ID", ctx.cluster) not in (ctx.cluster, None):
        out.append(f"{where}: CLUSTER_ID={dims['CLUSTER_ID']!r}, not this cluster")
    return out


def mi_problems(where, expr, ctx, for_alarm):
    q, out = mi_parse(expr)
    if q is None:
        return [f"{where}: {p}" for p in out]
    out = [f"{where}: {p}" for p in out]
    out += metric_problems(where, q["ns"], q["metric"], {d: None for d in q["dims"]}, ctx)
    if q["where"].get("CLUSTER_ID") != ctx.cluster:
        out.append(f"{where}: the query must keep to WHERE CLUSTER_ID = '{ctx.cluster}'")
    if for_alarm and q["group"]:
        out.append(f"{where}: an alarm query must return one series (no GROUP BY)")
    return out


# ---------------------------------------------------------------------------------------------
STATS = {"SampleCount", "Average", "Sum", "Minimum", "Maximum"}
SUBNET_WIDGET = "Subnet addresses in use (%, fullest 20)"


def alarm_problems(p, ctx):
    """PutMetricAlarm parameters: the model, then CloudWatch's rules, then our metrics."""
    name = p.get("AlarmName", "?")
    out = botocore_problems(p, PUT_ALARM, name)
    single = "MetricName" in p
    if single == ("Metrics" in p):
        out.append(f"{name}: exactly one of MetricName and Metrics")
    if p.get("TreatMissingData") not in ("breaching", "notBreaching", "ignore", "missing"):
        out.append(f"{name}: TreatMissingData {p.get('TreatMissingData')!r}")
    ev, dp = p.get("EvaluationPeriods", 0), p.get("DatapointsToAlarm", p.get("EvaluationPeriods", 0))
    if not (isinstance(ev, int) and isinstance(dp, int) and 1 <= dp <= ev):
        out.append(f"{name}: need 1 <= DatapointsToAlarm <= EvaluationPeriods")
    if not p.get("AlarmActions"):
        out.append(f"{name}: no AlarmActions: nobody would hear it")
    if single:
        for k in ("Namespace", "Period"):
            if k not in p:
                out.append(f"{name}: a single-metric alarm needs {k}")
        if ("Statistic" in p) == ("ExtendedStatistic" in p):
            out.append(f"{name}: exactly one of Statistic and ExtendedStatistic")
        period = p.get("Period", 0)
        if not (period in (10, 30) or period % 60 == 0) or period * ev > 86400:
            out.append(f"{name}: Period {period} x {ev} periods")
        dims = {d["Name"]: d["Value"] for d in p.get("Dimensions", [])}
        out += metric_problems(name, p.get("Namespace"), p.get("MetricName"), dims, ctx)
        return out
    for k in ("Namespace", "Statistic", "ExtendedStatistic", "Period", "Dimensions", "Unit"):
        if k in p:
            out.append(f"{name}: {k} must not be given with Metrics")
    queries = p.get("Metrics", [])
    ids = [q.get("Id", "") for q in queries]
    if len(set(ids)) != len(ids):
        out.append(f"{name}: duplicate query ids")
    for i in ids:
        if not re.fullmatch(r"[a-z][A-Za-z0-9_]*", i):
            out.append(f"{name}: query id {i!r} must start with a lower-case letter")
    if sum(1 for q in queries if q.get("ReturnData", True)) != 1:
        out.append(f"{name}: exactly one query must return data")
    periods = set()
    for q in queries:
        where = f"{name}.{q.get('Id')}"
        if ("MetricStat" in q) == ("Expression" in q):
            out.append(f"{where}: exactly one of MetricStat and Expression")
        if "MetricStat" in q:
            ms = q["MetricStat"]
            m = ms.get("Metric", {})
            if ms.get("Stat") not in STATS and not re.fullmatch(r"p\d{1,2}(\.\d+)?", ms.get("Stat", "")):
                out.append(f"{where}: Stat {ms.get('Stat')!r}")
            periods.add(ms.get("Period"))
            dims = {d["Name"]: d["Value"] for d in m.get("Dimensions", [])}
            out += metric_problems(where, m.get("Namespace"), m.get("MetricName"), dims, ctx)
        elif q["Expression"].lstrip().upper().startswith("SELECT"):
            if len(queries) != 1:
                out.append(f"{where}: a Metrics Insights alarm has exactly one query")
            if "Period" not in q:
                out.append(f"{where}: a Metrics Insights query needs its Period")
            periods.add(q.get("Period"))
            out += mi_problems(where, q["Expression"], ctx, for_alarm=True)
        else:
            for ref in re.findall(r"\b[a-z][A-Za-z0-9_]*\b", q["Expression"]):
                if ref not in ids and ref.upper() not in ("METRICS", "FILL", "IF", "AND", "OR"):
                    out.append(f"{where}: expression refers to unknown id {ref!r}")
    if len(periods) != 1 or None in periods:
        out.append(f"{name}: every metric of an alarm must have the same period ({periods})")
    else:
        (period,) = periods
        if not (period in (10, 30) or period % 60 == 0) or period * ev > 86400:
            out.append(f"{name}: Period {period} x {ev} periods")
    return out


VIEWS = {"timeSeries", "singleValue", "gauge", "bar", "pie", "table"}
ROW_OPTIONS = {"accountId", "color", "label", "id", "period", "region", "stat", "visible", "yAxis"}


def dashboard_problems(p, ctx):
    out = botocore_problems(p, PUT_DASHBOARD, "dashboard")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", p.get("DashboardName", "")):
        out.append("dashboard: DashboardName may hold only A-Z a-z 0-9 - _ (1-255)")
    try:
        body = json.loads(p.get("DashboardBody", ""))
    except ValueError as e:
        return out + [f"dashboard: body is not JSON: {e}"]
    if not isinstance(body, dict) or not isinstance(body.get("widgets"), list):
        return out + ["dashboard: body needs a widgets list"]
    for k in body:
        if k not in ("widgets", "start", "end", "periodOverride", "variables"):
            out.append(f"dashboard: unknown body field {k}")
    if body.get("periodOverride", "auto") not in ("auto", "inherit"):
        out.append("dashboard: periodOverride")
    cells = {}
    seen_alarms = set()
    for i, w in enumerate(body["widgets"]):
        where = f"widget[{i}]"
        pr = w.get("properties", {})
        geo = [w.get(k) for k in ("x", "y", "width", "height")]
        if not all(isinstance(g, int) for g in geo):
            out.append(f"{where}: x, y, width and height must be integers")
            continue
        x, y, wd, ht = geo
        if not (0 <= x and 1 <= wd and x + wd <= 24 and 0 <= y and 1 <= ht <= 1000):
            out.append(f"{where}: outside the 24-column grid")
        for cx in range(x, x + wd):
            for cy in range(y, y + ht):
                if (cx, cy) in cells:
                    out.append(f"{where}: overlaps widget[{cells[(cx, cy)]}]")
                    break
                cells[(cx, cy)] = i
            else:
                continue
            break
        t = w.get("type")
        if t == "text":
            if not isinstance(pr.get("markdown"), str):
                out.append(f"{where}: a text widget needs markdown")
        elif t == "alarm":
            for arn in pr.get("alarms", []):
                m = re.fullmatch(r"arn:[a-z-@A-Z]+:cloudwatch:[^:]+:[^:]+:alarm:(.+)", arn)
                if not m:
                    out.append(f"{where}: {arn!r} is not an alarm ARN")
                elif m.group(1) not in ctx.alarm_names:
                    out.append(f"{where}: alarm {m.group(1)!r} is not one of the template's")
                else:
                    seen_alarms.add(m.group(1))
        elif t == "metric":
            if not isinstance(pr.get("region"), str) or not pr["region"]:
                out.append(f"{where}: a metric widget needs its region")
            if pr.get("view", "timeSeries") not in VIEWS:
                out.append(f"{where}: view {pr.get('view')!r}")
            stat = pr.get("stat", "Average")
            if stat not in STATS and not re.fullmatch(r"p\d{1,2}(\.\d+)?", stat):
                out.append(f"{where}: stat {stat!r}")
            per = pr.get("period", 300)
            if not (isinstance(per, int) and (per in (1, 5, 10, 30) or per % 60 == 0)):
                out.append(f"{where}: period {per!r}")
            rows = pr.get("metrics")
            if not isinstance(rows, list) or not rows:
                out.append(f"{where}: no metrics")
                continue
            for j, row in enumerate(rows):
                out += widget_row_problems(f"{where}.metrics[{j}]", row, ctx)
        else:
            out.append(f"{where}: unknown widget type {t!r}")
    missing = ctx.alarm_names - seen_alarms
    if missing:
        out.append(f"dashboard: the alarm widget lacks {sorted(missing)}")
    return out


def widget_row_problems(where, row, ctx):
    if not isinstance(row, list) or not row:
        return [f"{where}: a metric row is a non-empty list"]
    opts = row[-1] if isinstance(row[-1], dict) else {}
    strs = row[:-1] if isinstance(row[-1], dict) else row
    out = [f"{where}: unknown option {k}" for k in opts if k not in ROW_OPTIONS | {"expression"}]
    if "stat" in opts and opts["stat"] not in STATS:
        out.append(f"{where}: stat {opts['stat']!r}")
    if not strs:
        if "expression" not in opts or "id" not in opts:
            return out + [f"{where}: an expression row needs expression and id"]
        if not re.fullmatch(r"[a-z][A-Za-z0-9_]*", opts["id"]):
            out.append(f"{where}: id {opts['id']!r}")
        return out + mi_problems(where, opts["expression"], ctx, for_alarm=False)
    if "expression" in opts:
        out.append(f"{where}: expression in a metric row")
    if any(not isinstance(s, str) for s in strs) or len(strs) < 2 or len(strs) % 2:
        return out + [f"{where}: [namespace, metric, (dimension, value)...] expected"]
    if "..." in strs or "." in strs:
        out.append(f"{where}: no shorthand rows (they hide the metric from this check)")
    dims = dict(zip(strs[2::2], strs[3::2]))
    return out + metric_problems(where, strs[0], strs[1], dims, ctx)


# ---------------------------------------------------------------------------------------------
def template_outputs(tpl, values, enforce_patterns=True):
    """(alarms {logical id: PutMetricAlarm params}, dashboard PutDashboard params, env)."""
    env, conditions = environment(tpl, values, enforce_patterns)
    alarms, dashboard = {}, None
    for lid, res in tpl["Resources"].items():
        if "Condition" in res and not conditions[res["Condition"]]:
            continue
        props = resolve(res.get("Properties", {}), env, conditions)
        if res["Type"] == "AWS::CloudWatch::Alarm":
            alarms[lid] = convert(props, PUT_ALARM)
        elif res["Type"] == "AWS::CloudWatch::Dashboard":
            dashboard = convert(props, PUT_DASHBOARD)
    return alarms, dashboard, env


def cli_file_name(params):
    # "cni-@CLUSTER_ID@-ip-utilization-high" -> "alarm-ip-utilization-high.json"
    return "alarm-" + params["AlarmName"].split("@-", 1)[1] + ".json"


def cli_files(tpl):
    """The cli/ files the template gives with placeholder values: {file name: text}."""
    values = dict(PLACEHOLDERS, SubnetAlarm="true")
    alarms, dashboard, _ = template_outputs(tpl, values, enforce_patterns=False)
    files = {cli_file_name(p): json.dumps(p, indent=2) + "\n" for p in alarms.values()}
    files["dashboard.json"] = json.dumps(dashboard, indent=2) + "\n"
    return files


def intent_problems(alarms):
    """What the alarms are for, beyond being valid: the subnet alarm watches the fullest subnet in
    percent of its size and a blind subnet view alarms (missing data breaching: the daemon
    publishes no subnet datum when it cannot see the subnets); failed assignments page on any
    failure, but only in M of N minutes with M > 1; capacity counts 16 addresses per slot when the
    cluster holds prefixes; a subnet forecast to run out within the hour alarms, and no forecast
    yet does not; a silent helper alarms."""
    out = []
    sub = alarms.get("SubnetUtilizationHigh")
    if sub is not None:
        if sub.get("MetricName") != "clusterMaxSubnetIPUtilization" or sub.get("Statistic") != "Maximum":
            out.append("SubnetUtilizationHigh: must watch the fullest subnet in percent")
        if sub.get("TreatMissingData") != "breaching":
            out.append("SubnetUtilizationHigh: a blind subnet view (no datum) must be breaching")
        if sub.get("ComparisonOperator") != "GreaterThanThreshold":
            out.append("SubnetUtilizationHigh: must fire above the threshold")
    soon = alarms.get("SubnetRunsOutSoon", {})
    if not (soon.get("MetricName") == "clusterMinTimeToIPExhaustion"
            and soon.get("Statistic") == "Minimum" and soon.get("Threshold") == 3600.0
            and soon.get("ComparisonOperator") == "LessThanThreshold"):
        out.append("SubnetRunsOutSoon: must fire when the soonest subnet runs out within an hour")
    if soon.get("TreatMissingData") != "notBreaching":
        out.append("SubnetRunsOutSoon: no forecast yet (the window filling) must not page")
    silent = alarms.get("HelperSilent", {})
    if silent.get("TreatMissingData") != "breaching" or silent.get("MetricName") != "scrapeTargetsFresh":
        out.append("HelperSilent: no fresh scrape or no datum must be breaching")
    fail = alarms.get("PodIPAssignmentsFailing", {})
    if not (fail.get("Statistic") == "Sum" and fail.get("Threshold") == 0.0
            and fail.get("ComparisonOperator") == "GreaterThanThreshold"):
        out.append("PodIPAssignmentsFailing: a minute counts on any failed assignment (Sum > 0)")
    if not 1 < fail.get("DatapointsToAlarm", 1) <= fail.get("EvaluationPeriods", 0):
        out.append("PodIPAssignmentsFailing: must need failures in several minutes (M of N, M > 1)")
    cap = alarms.get("IPCapacityHigh", {})
    expr = [q.get("Expression", "") for q in cap.get("Metrics", []) if q.get("ReturnData", True)]
    if not (expr and "16 *" in expr[0] and "prefixes" in expr[0]):
        out.append("IPCapacityHigh: capacity must count 16 addresses per slot under prefix delegation")
    return out


def references(node, acc):
    """Every Ref and ${...} name in a template subtree."""
    if isinstance(node, list):
        for x in node:
            references(x, acc)
    elif isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref":
                acc.add(v)
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                local = set() if isinstance(v, str) else set(v[1])
                acc.update(n for n in re.findall(r"\$\{([^}!][^}]*)\}", text) if n not in local)
                if not isinstance(v, str):
                    references(v[1], acc)
            else:
                references(v, acc)


def main():
    tpl = load_template()
    if "--update" in sys.argv:
        for name, text in cli_files(tpl).items():
            with open(os.path.join(CLIDIR, name), "w", encoding="utf-8") as f:
                f.write(text)
        print("wrote", ", ".join(sorted(cli_files(tpl))))
        return

    # -- the template itself
    check("template has the CloudFormation format version",
          tpl.get("AWSTemplateFormatVersion") == "2010-09-09")
    probs = parameter_problems(tpl)
    check("template parameter defaults satisfy their constraints", not probs, probs)
    for req in ("ClusterId", "SnsTopicArn"):
        check(f"template parameter {req} has no default (the operator must say it)",
              req in tpl["Parameters"] and "Default" not in tpl["Parameters"][req])
    refs = set()
    references(tpl["Resources"], refs)
    references(tpl.get("Outputs", {}), refs)
    unknown = {r for r in refs if r not in tpl["Parameters"] and r not in PSEUDO
               and r not in tpl["Resources"]}
    check("every Ref and ${} names a parameter, pseudo parameter or resource", not unknown, unknown)

    emitted = daemon_metrics()
    check("the daemon's metric table lists the cluster metrics",
          {"ipUtilization", "noAvailableIPAddrs", "scrapeTargetsFresh"} <= set(emitted), emitted)
    with tempfile.TemporaryDirectory() as tmp:
        real = inspect_emitted(tmp)
    with tempfile.TemporaryDirectory() as tmp:
        live, why = live_emitted(tmp, forecast=True)
    if check("a live daemon published to the CloudWatch stand-in (subnet, per-AZ, per-node on)",
             live is not None, why):
        for name, sets in sorted(live.items()):
            for st in sets:
                check(f"metric table lists what the daemon published: {name} {sorted(st)}",
                      st in emitted.get(name, set()), emitted.get(name))
    check("inspect --json ran on two rounds of a real ipamD scrape", real is not None)
    real = real or {}
    for name, sets in real.items():
        for s in sets:
            check(f"metric table agrees with a real round: {name} {sorted(s)}",
                  s in emitted.get(name, set()), emitted.get(name))

    alarms, dashboard, env = template_outputs(tpl, TEST_VALUES)
    ctx = Ctx(emitted, env["Namespace"], env["ClusterId"],
              [p["AlarmName"] for p in alarms.values()])
    check("template has the six alarms", set(alarms) == {
        "PodIPAssignmentsFailing", "SubnetUtilizationHigh", "IPCapacityHigh",
        "HelperScrapeFailures", "HelperSilent", "SubnetRunsOutSoon"}, sorted(alarms))
    for lid, p in alarms.items():
        probs = alarm_problems(p, ctx)
        check(f"template alarm {lid} is a valid PutMetricAlarm on emitted metrics", not probs, probs)
        for m in ([p.get("MetricName")] + [q.get("MetricStat", {}).get("Metric", {}).get("MetricName")
                                          for q in p.get("Metrics", [])]):
            if m in ("assignIPAddresses", "maxIPAddresses", "totalIPv4Prefixes",
                     "noAvailableIPAddrs", "scrapeTargetsFresh", "scrapeTargetsFailed",
                     "scrapeTargets"):
                check(f"{lid}: {m} is published by a real round (inspect)", m in real, sorted(real))
    check("dashboard present", dashboard is not None)
    probs = dashboard_problems(dashboard, ctx)
    check("template dashboard is a valid PutDashboard on emitted metrics", not probs, probs)
    # The same checks with what the daemon was seen to publish (live run + inspect) as the oracle.
    if live is not None:
        seen = {k: set(v) for k, v in live.items()}
        for k, v in real.items():
            seen.setdefault(k, set()).update(v)
        seen_ctx = Ctx(seen, ctx.namespace, ctx.cluster, ctx.alarm_names)
        for lid, p in alarms.items():
            probs = alarm_problems(p, seen_ctx)
            check(f"template alarm {lid} watches metrics a live daemon published", not probs, probs)
        probs = dashboard_problems(dashboard, seen_ctx)
        check("every dashboard metric was published by a live daemon", not probs, probs)

    # Semantics the issue asks for.
    probs = intent_problems(alarms)
    check("the alarms do what they are meant to (fullest subnet, blind = breaching, M of N, ...)",
          not probs, probs)
    # A blind subnet view (DescribeSubnets denied) is missing data, not a low number: the daemon
    # publishes no subnet datum at all, while the helper's own metrics still flow.
    with tempfile.TemporaryDirectory() as tmp:
        blind, why = live_emitted(tmp, ec2_faults=["denied"] * 50)
    if check("a live daemon with ec2:DescribeSubnets denied published", blind is not None, why):
        check("blind subnet view: no subnet datum at all (so the subnet alarm sees missing data)",
              not {"subnetAvailableIPAddresses", "clusterMinSubnetAvailableIPAddresses",
                   "subnetIPUtilization", "subnetTotalIPAddresses",
                   "clusterMaxSubnetIPUtilization"} & set(blind),
              sorted(blind))
        check("blind subnet view: the cluster metrics still flow (helper-silent stays quiet)",
              {"scrapeTargetsFresh", "assignIPAddresses"} <= set(blind), sorted(blind))
    off, off_dash, _ = template_outputs(tpl, dict(TEST_VALUES, SubnetAlarm="false"))
    check("SubnetAlarm=false drops only the subnet alarm",
          set(alarms) - set(off) == {"SubnetUtilizationHigh"})
    probs = dashboard_problems(off_dash, Ctx(emitted, ctx.namespace, ctx.cluster,
                                             [p["AlarmName"] for p in off.values()]))
    check("SubnetAlarm=false: the dashboard shows exactly the alarms created", not probs, probs)
    body = json.loads(dashboard["DashboardBody"])
    text = json.dumps(body)
    for needle in ("SubnetId", "AvailabilityZone", "scrapeTargetsFailed", "ipUtilization",
                   "clusterMinSubnetAvailableIPAddresses", "clusterMaxSubnetIPUtilization",
                   "subnetIPUtilization"):
        check(f"dashboard shows {needle}", needle in text)

    # -- the cli/ files: generated from the template, then rendered by apply.sh.
    want = cli_files(tpl)
    have = {n: open(os.path.join(CLIDIR, n), encoding="utf-8").read()
            for n in os.listdir(CLIDIR) if n.endswith(".json")}
    check("cli/ holds exactly the template's alarms and dashboard", set(want) == set(have),
          f"missing {sorted(set(want) - set(have))}, extra {sorted(set(have) - set(want))}")
    for n in sorted(set(want) & set(have)):
        check(f"cli/{n} equals the template (regenerate: {sys.argv[0]} --update)",
              want[n] == have[n])
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(["sh", os.path.join(CLIDIR, "apply.sh"), "--render", out,
                            TEST_VALUES["ClusterId"], TEST_VALUES["SnsTopicArn"],
                            TEST_VALUES["AWS::Region"], TEST_VALUES["AWS::AccountId"]],
                           capture_output=True, text=True, timeout=30)
        check("apply.sh --render succeeds", r.returncode == 0, r.stderr)
        by_name = {p["AlarmName"]: p for p in alarms.values()}
        for n in sorted(want):
            path = os.path.join(out, n)
            if not check(f"apply.sh rendered {n}", os.path.exists(path)):
                continue
            with open(path, encoding="utf-8") as f:
                raw = f.read()
            check(f"rendered {n} has no placeholder left", not re.search(r"@[A-Z_]+@", raw),
                  raw[:200])
            doc = json.loads(raw)
            if n == "dashboard.json":
                probs = dashboard_problems(doc, ctx)
                check("rendered dashboard.json is a valid PutDashboard", not probs, probs)
                check("rendered dashboard.json equals the template's", doc == dashboard)
            else:
                probs = alarm_problems(doc, ctx)
                check(f"rendered {n} is a valid PutMetricAlarm", not probs, probs)
                check(f"rendered {n} equals the template's alarm",
                      doc == by_name.get(doc.get("AlarmName")))
        bad = subprocess.run(["sh", os.path.join(CLIDIR, "apply.sh"), "--render", out,
                              "bad'id", TEST_VALUES["SnsTopicArn"], "eu-west-1", "111122223333"],
                             capture_output=True, text=True, timeout=30)
        check("apply.sh refuses a cluster id that could break out of a quoted value",
              bad.returncode != 0)
    # SUBNET_ALARM=false: the counterpart of the template's SubnetAlarm=false.
    args = [TEST_VALUES["ClusterId"], TEST_VALUES["SnsTopicArn"], TEST_VALUES["AWS::Region"],
            TEST_VALUES["AWS::AccountId"]]
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(["sh", os.path.join(CLIDIR, "apply.sh"), "--render", out] + args,
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, SUBNET_ALARM="false"))
        check("SUBNET_ALARM=false apply.sh --render succeeds", r.returncode == 0, r.stderr)
        got = sorted(os.listdir(out))
        check("SUBNET_ALARM=false: every file but the subnet alarm's",
              got == sorted(n for n in want if n != "alarm-subnet-ip-utilization-high.json"), got)
        off_by_name = {p["AlarmName"]: p for p in off.values()}
        for n in got:
            with open(os.path.join(out, n), encoding="utf-8") as f:
                doc = json.load(f)
            if n == "dashboard.json":
                check("SUBNET_ALARM=false: the dashboard equals the template's with SubnetAlarm=false",
                      doc == off_dash)
                probs = dashboard_problems(doc, Ctx(emitted, ctx.namespace, ctx.cluster,
                                                    list(off_by_name)))
                check("SUBNET_ALARM=false: the dashboard lists exactly the alarms created", not probs,
                      probs)
            else:
                check(f"SUBNET_ALARM=false: {n} equals the template's",
                      doc == off_by_name.get(doc.get("AlarmName")))
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(["sh", os.path.join(CLIDIR, "apply.sh"), "--render", out] + args,
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, SUBNET_ALARM="no"))
        check("apply.sh refuses SUBNET_ALARM other than true or false",
              r.returncode == 2 and not os.listdir(out), (r.returncode, r.stderr))

    # cfn-lint (AWS's CloudFormation linter, not a Debian package) when the machine has it.
    lint = shutil.which("cfn-lint")
    if lint:
        r = subprocess.run([lint, TEMPLATE], capture_output=True, text=True, timeout=240)
        check("cfn-lint finds nothing in alarms.yaml", r.returncode == 0, r.stdout + r.stderr)
    else:
        print("cfn-lint not installed: skipped that check")

    # -- the checks can fail: broken copies must be rejected.
    base = alarms["PodIPAssignmentsFailing"]
    # A Metrics Insights alarm (the form an alarm over every subnet's own series takes), built from
    # the subnet alarm, so the Metrics Insights rules stay checked.
    mi_alarm = {k: v for k, v in alarms["SubnetUtilizationHigh"].items()
                if k not in ("Namespace", "MetricName", "Dimensions", "Statistic", "Period")}
    mi_alarm["Metrics"] = [{
        "Id": "fullest", "Period": 300, "ReturnData": True,
        "Expression": "SELECT MAX(subnetIPUtilization) FROM SCHEMA(\"%s\", CLUSTER_ID, SubnetId) "
                      "WHERE CLUSTER_ID = '%s'" % (env["Namespace"], env["ClusterId"])}]
    check("the Metrics Insights form of the subnet alarm is valid", not alarm_problems(mi_alarm, ctx),
          alarm_problems(mi_alarm, ctx))
    math_alarm = alarms["HelperScrapeFailures"]
    mutants = {
        "unknown metric name": (base, lambda a: a.update(MetricName="ipUtilisation")),
        "dimension the metric lacks": (base, lambda a: a["Dimensions"].append(
            {"Name": "SubnetId", "Value": "subnet-1"})),
        "other cluster": (base, lambda a: a["Dimensions"][0].update(Value="other")),
        "other namespace": (base, lambda a: a.update(Namespace="AWS/EC2")),
        "bad comparison enum": (base, lambda a: a.update(ComparisonOperator="GreaterThan")),
        "threshold as text": (base, lambda a: a.update(Threshold="80")),
        "bad TreatMissingData": (base, lambda a: a.update(TreatMissingData="breach")),
        "datapoints above periods": (base, lambda a: a.update(DatapointsToAlarm=99)),
        "Statistic and ExtendedStatistic": (base, lambda a: a.update(ExtendedStatistic="p99")),
        "no actions": (base, lambda a: a.pop("AlarmActions")),
        "unknown member": (base, lambda a: a.update(Severity="high")),
        "MI on a dimension set not emitted": (mi_alarm, lambda a: a["Metrics"][0].update(
            Expression=a["Metrics"][0]["Expression"].replace("SubnetId", "NodeName"))),
        "MI with GROUP BY": (mi_alarm, lambda a: a["Metrics"][0].update(
            Expression=a["Metrics"][0]["Expression"] + " GROUP BY SubnetId")),
        "MI on all clusters": (mi_alarm, lambda a: a["Metrics"][0].update(
            Expression=a["Metrics"][0]["Expression"].split(" WHERE")[0])),
        "MI without period": (mi_alarm, lambda a: a["Metrics"][0].pop("Period")),
        "MI expression too long": (mi_alarm, lambda a: a["Metrics"][0].update(
            Expression=a["Metrics"][0]["Expression"] + " " * 2100)),
        "math on unknown id": (math_alarm, lambda a: a["Metrics"][2].update(
            Expression="100 * failed / nodes")),
        "two queries return data": (math_alarm, lambda a: a["Metrics"][0].update(ReturnData=True)),
        "mixed periods": (math_alarm, lambda a: a["Metrics"][0]["MetricStat"].update(Period=300)),
    }
    for what, (src, mutate) in mutants.items():
        a = copy.deepcopy(src)
        mutate(a)
        check(f"a broken alarm is rejected: {what}", alarm_problems(a, ctx), a)
    # Valid alarms that would not do the job: intent_problems must see them.
    intent_mutants = {
        "subnet alarm quiet when blind": ("SubnetUtilizationHigh", lambda a: a.update(
            TreatMissingData="missing")),
        "subnet alarm on free IPs, not percent": ("SubnetUtilizationHigh", lambda a: a.update(
            MetricName="clusterMinSubnetAvailableIPAddresses", Statistic="Minimum")),
        "helper-silent quiet when silent": ("HelperSilent", lambda a: a.update(
            TreatMissingData="notBreaching")),
        "failing assignments page on one minute": ("PodIPAssignmentsFailing", lambda a: a.update(
            EvaluationPeriods=1, DatapointsToAlarm=1)),
        "failing assignments wait for two per minute": ("PodIPAssignmentsFailing",
                                                        lambda a: a.update(Threshold=1.0)),
        "capacity blind to prefix delegation": ("IPCapacityHigh", lambda a: a["Metrics"][3].update(
            Expression="100 * assigned / slots")),
    }
    for what, (lid, mutate) in intent_mutants.items():
        bad = copy.deepcopy(alarms)
        mutate(bad[lid])
        check(f"a valid but useless alarm is rejected: {what}",
              intent_problems(bad) and not alarm_problems(bad[lid], ctx), intent_problems(bad))

    def dash_mutant(fn):
        d = copy.deepcopy(dashboard)
        b = json.loads(d["DashboardBody"])
        fn(b)
        d["DashboardBody"] = json.dumps(b)
        return d
    wi = {w["properties"].get("title"): w for w in body["widgets"] if "title" in w.get("properties", {})}
    dmut = {
        "unknown metric": lambda b: b["widgets"][1]["properties"]["metrics"][0].__setitem__(1, "ipUsage"),
        "overlap": lambda b: b["widgets"][2].update(y=0),
        "off the grid": lambda b: b["widgets"][2].update(x=20),
        "bad view": lambda b: b["widgets"][1]["properties"].update(view="sparkline"),
        "per-subnet query on AZ set": lambda b: [
            w["properties"]["metrics"][0][0].update(expression=w["properties"]["metrics"][0][0][
                "expression"].replace("SubnetId", "NodeName"))
            for w in b["widgets"] if w.get("properties", {}).get("title") == SUBNET_WIDGET],
        "alarm not in template": lambda b: [
            w["properties"]["alarms"].append(w["properties"]["alarms"][0] + "-x")
            for w in b["widgets"] if w["type"] == "alarm"],
        "alarm missing": lambda b: [w["properties"]["alarms"].pop()
                                    for w in b["widgets"] if w["type"] == "alarm"],
        "no region": lambda b: b["widgets"][1]["properties"].pop("region"),
    }
    check("dashboard has the per-subnet widget", SUBNET_WIDGET in wi)
    for what, fn in dmut.items():
        d = dash_mutant(fn)
        check(f"a broken dashboard is rejected: {what}", dashboard_problems(d, ctx))
    d = copy.deepcopy(dashboard)
    d["DashboardBody"] = d["DashboardBody"][:-3]
    check("a broken dashboard is rejected: body not JSON", dashboard_problems(d, ctx))
    d = copy.deepcopy(dashboard)
    d.pop("DashboardName")
    check("a broken dashboard is rejected: no name (botocore)", dashboard_problems(d, ctx))
    print("broken variants tried: %d alarms, %d valid but useless alarms, %d dashboards"
          % (len(mutants), len(intent_mutants), len(dmut) + 2))

    # The markdown reader: dimension sets from a Dimensions column and the "never alone" rule.
    sample = ("| CloudWatch metric | Unit | From ipamD | Aggregation | Dimensions | Meaning |\n"
              "|---|---|---|---|---|---|\n"
              "| `a` | Count | - | derived | {CLUSTER_ID, SubnetId}; {CLUSTER_ID, AvailabilityZone} "
              "| never with {CLUSTER_ID} alone |\n"
              "| `b` | Count | - | derived | {CLUSTER_ID, NodeName} with CW_PER_NODE | x |\n"
              "| `c` | Count | - | derived |  | x |\n")
    sample += ("\nipamD families deliberately not published:\n\n| ipamD family | Why |\n|---|---|\n"
               "| `awscni_x` | {CLUSTER_ID, Bogus} |\n\n"
               "| CloudWatch metric | Dimension sets |\n|---|---|\n"
               "| `c` | {CLUSTER_ID, AvailabilityZone} with CW_PER_AZ=true |\n")
    got = emitted_from_markdown(sample)
    check("markdown reader: dimension sets", got == {
        "a": {frozenset({"CLUSTER_ID", "SubnetId"}), frozenset({"CLUSTER_ID", "AvailabilityZone"})},
        "b": {frozenset({"CLUSTER_ID"}), frozenset({"CLUSTER_ID", "NodeName"})},
        "c": {frozenset({"CLUSTER_ID"}), frozenset({"CLUSTER_ID", "AvailabilityZone"})}}, got)
    finish()


if __name__ == "__main__":
    main()
