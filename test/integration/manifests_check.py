"""Renders manifests/ (the kustomize base and overlays, and the Helm chart under several values
files, among them the original eks-charts chart's) and checks every rendering against the code:

- every environment variable is one the daemon knows (`--help` of the binary under test, read at
  test time) or a standard AWS SDK variable, enum/bool values are accepted, and the daemon started
  with the rendered environment accepts it (no exit 2, no "unknown variable" warning);
- RBAC grants exactly what the code uses: pods get/list/watch in the watched namespace, bound to
  the Deployment's ServiceAccount; pods/proxy get if and only if the rendered SCRAPE_MODE is not
  direct (and src/ scrapes through pods/proxy); leases only with leader election; no cluster-wide
  role, no wildcards (and if src/ starts using leases, this test says the manifests must follow);
- the probes' paths answer on the daemon (liveness 200, readiness 200/503, an unknown path 404),
  and their port is the container port the daemon listens on (PROMETHEUS_PORT);
- the pod is hardened (non-root, read-only root, no capabilities, seccomp RuntimeDefault), one
  replica replaced with Recreate, memory requests and limits, grace period above SHUTDOWN_TIMEOUT;
- the IAM policy grants cloudwatch:PutMetricData only, on the daemon's namespace, and the IRSA
  trust policy and Pod Identity association name the rendered ServiceAccount;
- the chart's values are a superset of the original chart's.
Renders with test/integration/manifests_render.py; when `kubectl` is on PATH its `kustomize` must
produce the same objects (a differential check of the renderer). Finally, deliberately broken
renderings must be rejected, so the checks themselves can fail.
"""
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import manifests_render as mr  # noqa: E402

import yaml  # noqa: E402

BIN = os.environ["CMH_BIN"]
SRC = os.environ["CMH_SOURCE_DIR"]
MAN = os.path.join(SRC, "manifests")
CHART = os.path.join(MAN, "helm", "cni-metrics-helper")

failures = 0
quiet = False


def check(name, ok, detail=""):
    global failures
    if not quiet:
        print(("ok    " if ok else "FAIL  ") + name + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        failures += 1
    return ok


# Standard AWS SDK variables the daemon reads (../shared/DESIGN.md "Compatibility contract") or
# that EKS injects for IRSA / Pod Identity.
AWS_SDK_VARS = {
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_CLOUDWATCH",
    "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_EC2",
    # Not AWS: the pod's own name (downward API), the leader-election identity (src/leader.c).
    "POD_NAME",
}


def daemon_vars():
    """{name: {"type", "default", "accepted"}} parsed from `cni-metrics-helper --help`."""
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    vars_, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"^  ([A-Z][A-Z0-9_]+) \((\w+), default: (.*)\)$", line)
        if m:
            cur = m.group(1)
            vars_[cur] = {"type": m.group(2), "default": None if m.group(3) == "unset" else m.group(3),
                          "accepted": None}
            continue
        m = re.match(r"^\s+Accepted: (.*)\.$", line)
        if m and cur:
            vars_[cur]["accepted"] = m.group(1)
    return vars_


VARS = daemon_vars()
check("--help lists the daemon's variables", len(VARS) >= 10 and "PROMETHEUS_PORT" in VARS, sorted(VARS))


def enum_choices(var):
    acc = (VARS[var]["accepted"] or "")
    if VARS[var]["type"] == "bool":
        return {"yes", "true", "no", "false"}
    m = re.match(r"one of (.*)$", acc)
    return {x.strip().lower() for x in m.group(1).split(",")} if m else None


def effective(env, var):
    """The value the daemon would use: the manifest's, else the binary's default."""
    if var in env and env[var] is not None and env[var] != "":
        return env[var]
    return VARS.get(var, {}).get("default")


def parse_seconds(text):
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m)?$", str(text))
    if not m:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def mem_bytes(q):
    m = re.match(r"^(\d+)(Ki|Mi|Gi|K|M|G)?$", str(q))
    return int(m.group(1)) * {None: 1, "Ki": 1024, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000,
                              "M": 10 ** 6, "G": 10 ** 9}[m.group(2)]


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


# --- checks of one rendering --------------------------------------------------------------------

def code_uses(pattern):
    hits = []
    for path in glob.glob(os.path.join(SRC, "src", "**", "*.c"), recursive=True):
        with open(path, errors="replace") as f:
            if re.search(pattern, f.read()):
                hits.append(os.path.relpath(path, SRC))
    return hits


USES_LEASES = code_uses(r'"[^"\n]*coordination\.k8s\.io')
USES_PROXY = code_uses(r'"[^"\n]*/pods/[^"\n]*/proxy|"[^"\n]*/proxy/metrics')


def check_rendering(label, objs):
    """Returns the number of failed checks for this rendering."""
    before = failures
    deps = by_kind(objs, "Deployment")
    if not check(f"{label}: one Deployment", len(deps) == 1, [o.get("kind") for o in objs]):
        return failures - before
    dep = deps[0]
    ns = dep["metadata"].get("namespace")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    ctrs = pod["containers"]
    check(f"{label}: one container", len(ctrs) == 1, len(ctrs))
    c = ctrs[0]
    env_list = c.get("env") or []
    names = [e["name"] for e in env_list]
    check(f"{label}: no variable set twice", len(names) == len(set(names)), names)
    env = {e["name"]: e.get("value") for e in env_list if "valueFrom" not in e}
    unknown = [n for n in names if n not in VARS and n not in AWS_SDK_VARS]
    check(f"{label}: every env var is one the daemon knows", not unknown, unknown)
    for n, v in env.items():
        if n in VARS and v:
            choices = enum_choices(n)
            if choices is not None:
                check(f"{label}: {n}={v} is accepted", str(v).lower() in choices, sorted(choices))

    # Namespace, ServiceAccount, RBAC.
    sa_name = pod.get("serviceAccountName", "default")
    sas = [o for o in by_kind(objs, "ServiceAccount") if o["metadata"]["name"] == sa_name]
    # None rendered: the user brings a named one (serviceAccount.create=false).
    check(f"{label}: the Deployment's ServiceAccount is rendered, or a named one",
          len(sas) == 1 or (not sas and sa_name != "default"), sa_name)
    check(f"{label}: ServiceAccount in the Deployment's namespace",
          all(s["metadata"].get("namespace") == ns for s in sas))
    watch_ns = effective(env, "K8S_NAMESPACE") or "kube-system"
    # Cluster-wide RBAC only for SUBNET_METRICS: list ENIConfigs (cluster-scoped), bound to the SA.
    subnets_on = str(effective(env, "SUBNET_METRICS") or "").lower() in ("true", "yes")
    cgrants = {(g, res, v) for r in by_kind(objs, "ClusterRole") for rule in r.get("rules") or []
               for g in rule.get("apiGroups") or [] for res in rule.get("resources") or []
               for v in rule.get("verbs") or []}
    check(f"{label}: cluster-wide RBAC exactly eniconfigs list, and only with SUBNET_METRICS",
          cgrants == {("crd.k8s.amazonaws.com", "eniconfigs", "list")} if subnets_on else
          not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding"),
          (subnets_on, sorted(cgrants)))
    for crb in by_kind(objs, "ClusterRoleBinding"):
        check(f"{label}: ClusterRoleBinding binds a rendered ClusterRole to the Deployment's ServiceAccount",
              crb["roleRef"]["kind"] == "ClusterRole" and
              any(r["metadata"]["name"] == crb["roleRef"]["name"] for r in by_kind(objs, "ClusterRole")) and
              all(sub.get("kind") == "ServiceAccount" and sub.get("name") == sa_name and
                  sub.get("namespace") == ns for sub in crb.get("subjects") or []) and crb.get("subjects"),
              crb)
    roles = by_kind(objs, "Role")
    grants = set()
    for r in roles:
        check(f"{label}: Role {r['metadata']['name']} in the watched namespace {watch_ns}",
              r["metadata"].get("namespace") == watch_ns, r["metadata"].get("namespace"))
        for rule in r.get("rules") or []:
            check(f"{label}: rule names no resourceNames/nonResourceURLs",
                  "resourceNames" not in rule and "nonResourceURLs" not in rule, rule)
            for g in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    for v in rule.get("verbs") or []:
                        grants.add((g, res, v))
    wanted = {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch")}
    if str(effective(env, "LEADER_ELECTION") or "").lower() in ("true", "yes"):
        wanted |= {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    # USES_PROXY: pods/proxy get exactly where SCRAPE_MODE may use it (auto, proxy).
    if USES_PROXY and str(effective(env, "SCRAPE_MODE") or "").lower() != "direct":
        wanted.add(("", "pods/proxy", "get"))
    check(f"{label}: RBAC grants exactly pods get/list/watch (+ pods/proxy get unless SCRAPE_MODE=direct, "
          "+ leases with LEADER_ELECTION)",
          grants == wanted,
          f"extra {sorted(grants - wanted)}, missing {sorted(wanted - grants)}")
    bound = False
    for rb in by_kind(objs, "RoleBinding"):
        ref = rb["roleRef"]
        role_ok = ref["kind"] == "Role" and any(r["metadata"]["name"] == ref["name"] for r in roles)
        check(f"{label}: RoleBinding {rb['metadata']['name']} refers to a rendered Role", role_ok, ref)
        check(f"{label}: RoleBinding in the watched namespace",
              rb["metadata"].get("namespace") == watch_ns, rb["metadata"].get("namespace"))
        for s in rb.get("subjects") or []:
            okay = s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and s.get("namespace") == ns
            check(f"{label}: RoleBinding subject is the Deployment's ServiceAccount", okay, s)
            bound = bound or (okay and role_ok)
    if roles:
        check(f"{label}: the Role is bound to the Deployment's ServiceAccount", bound)

    # Probes and ports.
    port = int(effective(env, "PROMETHEUS_PORT"))
    ports = {p.get("name"): p for p in c.get("ports") or []}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not check(f"{label}: {probe} is an httpGet probe", bool(p and "httpGet" in p), p):
            continue
        hg = p["httpGet"]
        check(f"{label}: {probe} path is {path}", hg.get("path") == path, hg.get("path"))
        pp = hg.get("port")
        resolved = ports[pp]["containerPort"] if isinstance(pp, str) and pp in ports else pp
        check(f"{label}: {probe} port is PROMETHEUS_PORT ({port})", resolved == port, pp)
        check(f"{label}: {probe} scheme is HTTP", hg.get("scheme", "HTTP") == "HTTP", hg.get("scheme"))
    addr_env = [e for e in env_list if e["name"] == "PROMETHEUS_ADDRESS"]
    if addr_env and "valueFrom" in addr_env[0]:
        check(f"{label}: PROMETHEUS_ADDRESS is the pod IP",
              addr_env[0]["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP", addr_env)
    else:
        addr = effective(env, "PROMETHEUS_ADDRESS")
        check(f"{label}: PROMETHEUS_ADDRESS reachable by the kubelet (not loopback)",
              addr is not None and not addr.startswith("127.") and addr != "::1", addr)

    # Hardening and shape.
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    check(f"{label}: runs as non-root",
          (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True)
          and (csc.get("runAsUser", psc.get("runAsUser", 1)) != 0))
    check(f"{label}: read-only root filesystem", csc.get("readOnlyRootFilesystem") is True)
    check(f"{label}: all capabilities dropped", (csc.get("capabilities") or {}).get("drop") == ["ALL"]
          and not (csc.get("capabilities") or {}).get("add"), csc.get("capabilities"))
    check(f"{label}: no privilege escalation", csc.get("allowPrivilegeEscalation") is False)
    check(f"{label}: not privileged", not csc.get("privileged"))
    sec = csc.get("seccompProfile") or psc.get("seccompProfile") or {}
    check(f"{label}: seccomp RuntimeDefault", sec.get("type") == "RuntimeDefault", sec)
    check(f"{label}: no host namespaces",
          not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")))
    res = c.get("resources") or {}
    req = (res.get("requests") or {}).get("memory")
    lim = (res.get("limits") or {}).get("memory")
    check(f"{label}: memory request and limit, request <= limit",
          req is not None and lim is not None and mem_bytes(req) <= mem_bytes(lim), res)
    # Two publishers would double every CloudWatch Sum: one replica replaced with Recreate, or
    # several only with leader election.
    elect = str(effective(env, "LEADER_ELECTION") or "").lower() in ("true", "yes")
    check(f"{label}: one replica replaced with Recreate, or leader election (never two publishers)",
          elect or (spec.get("replicas", 1) == 1 and
                    (spec.get("strategy") or {}).get("type") == "Recreate"),
          (spec.get("replicas"), spec.get("strategy")))
    with open(os.path.join(MAN, "iam", "policy.json")) as f:
        allowed_ns = {s.get("Condition", {}).get("StringEquals", {}).get("cloudwatch:namespace")
                      for s in json.load(f).get("Statement", [])}
    cw_ns = effective(env, "CW_NAMESPACE") or "Kubernetes"
    check(f"{label}: CW_NAMESPACE {cw_ns} is the one iam/policy.json allows", allowed_ns == {cw_ns}, allowed_ns)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    stop = parse_seconds(effective(env, "SHUTDOWN_TIMEOUT") or "10")
    check(f"{label}: grace period {grace}s above SHUTDOWN_TIMEOUT {stop}s", stop is not None and grace > stop)
    return failures - before


def run_daemon_with(label, objs):
    """Starts the daemon with the rendered environment (loopback overrides only) and probes the
    rendered paths on it."""
    dep = by_kind(objs, "Deployment")[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": "/usr/bin:/bin"}
    for e in c.get("env") or []:
        if "valueFrom" not in e:
            env[e["name"]] = str(e.get("value", ""))
    # This build has no CloudWatch publisher or discovery in every variant, and a test never leaves
    # the machine: log datums, scrape one closed loopback port, listen on loopback.
    env.update({"USE_CLOUDWATCH": "no", "SCRAPE_TARGETS": "127.0.0.1:9", "PROMETHEUS_ADDRESS": "127.0.0.1",
                "PROMETHEUS_PORT": "0", "LOG_FORMAT": "json", "AWS_EC2_METADATA_DISABLED": "true"})
    p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    port, warnings, lines = None, [], []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("msg") == "unknown variable ignored":
                warnings.append(ev.get("name"))
            if ev.get("msg") == "listening":
                port = ev.get("port")
                break
        if not check(f"{label}: daemon starts with the rendered environment", port is not None,
                     f"exit {p.poll()}: {''.join(lines[-5:])}"):
            return
        check(f"{label}: daemon warns about no variable", not warnings, warnings)
        probes = {c["livenessProbe"]["httpGet"]["path"]: {200},
                  c["readinessProbe"]["httpGet"]["path"]: {200, 503},
                  "/no-such-path": {404}}
        for path, okay in probes.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError as e:
                status = str(e)
            check(f"{label}: GET {path} answers {sorted(okay)}", status in okay, status)
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stderr.close()


# --- kustomize -------------------------------------------------------------------------------

renders = {}
for d in ("base", "overlays/irsa", "overlays/pod-identity", "overlays/leader-election", "overlays/direct-only",
              "overlays/subnet-metrics"):
    try:
        renders[f"kustomize {d}"] = mr.kustomize(os.path.join(MAN, d))
        check(f"kustomize {d}: renders", True)
    except (mr.RenderError, OSError, KeyError) as e:
        check(f"kustomize {d}: renders", False, e)

def kustomize_major(kubectl):
    """Major version of the kustomize inside kubectl (Debian 12's kubernetes-client 1.20 embeds
    kustomize v2, which predates `patches` and directory resources: not a usable oracle)."""
    r = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60)
    m = re.search(r"Kustomize Version: v(\d+)", r.stdout)
    return int(m.group(1)) if m else 0


kubectl = shutil.which("kubectl")
if kubectl and kustomize_major(kubectl) < 4:
    print(f"note  {kubectl} embeds kustomize older than v4: not used as an oracle")
    kubectl = None
if kubectl:
    for d in ("base", "overlays/irsa", "overlays/pod-identity", "overlays/leader-election", "overlays/direct-only",
              "overlays/subnet-metrics"):
        r = subprocess.run([kubectl, "kustomize", os.path.join(MAN, d)], capture_output=True, text=True,
                           timeout=120)
        if not check(f"kubectl kustomize {d}: renders", r.returncode == 0, r.stderr):
            continue
        theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(r.stdout) if o}
        ours = {(o["kind"], o["metadata"]["name"]): o for o in renders.get(f"kustomize {d}", [])}
        check(f"kubectl kustomize {d}: same objects as manifests_render.py", theirs == ours,
              f"only kubectl {sorted(set(theirs) - set(ours))}, differing "
              f"{[k for k in theirs if k in ours and theirs[k] != ours[k]]}")
else:
    print("note  kubectl not on PATH: kustomize rendered by manifests_render.py only")

VERSION = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=30).stdout.split()[-1]
base = renders.get("kustomize base", [])
if base:
    img = by_kind(base, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    check(f"kustomize base: image tag is the daemon's version {VERSION}", img.endswith(":" + VERSION), img)
    with open(os.path.join(SRC, "Dockerfile")) as f:
        users = re.findall(r"^USER\s+(\S+)", f.read(), re.M)
    psc = by_kind(base, "Deployment")[0]["spec"]["template"]["spec"].get("securityContext", {})
    check("kustomize base: runAsUser/runAsGroup are the Dockerfile's USER",
          users and users[-1] == f"{psc.get('runAsUser')}:{psc.get('runAsGroup')}", (users, psc))
with open(os.path.join(CHART, "Chart.yaml")) as f:
    chart_meta = yaml.safe_load(f)
check(f"helm: appVersion is the daemon's version {VERSION}", str(chart_meta.get("appVersion")) == VERSION,
      chart_meta.get("appVersion"))
if base:
    dep = by_kind(base, "Deployment")[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    for e in c.get("env") or []:
        n, v = e["name"], e.get("value")
        if "valueFrom" in e or n not in VARS or n == "AWS_CLUSTER_ID":
            continue
        d = VARS[n]["default"]
        same = d is not None and (str(v).lower() == d.lower())
        check(f"kustomize base: {n}={v} is the daemon's default", same, f"daemon default {d}")
for label in ("kustomize overlays/irsa", "kustomize overlays/pod-identity"):
    objs = renders.get(label, [])
    if objs:
        c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        cid = [e.get("value") for e in c["env"] if e["name"] == "AWS_CLUSTER_ID"]
        check(f"{label}: sets AWS_CLUSTER_ID", cid and cid[0], cid)
irsa = renders.get("kustomize overlays/irsa", [])
if irsa:
    sa = by_kind(irsa, "ServiceAccount")[0]
    arn = (sa["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
    check("irsa: ServiceAccount carries eks.amazonaws.com/role-arn",
          re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", arn) is not None, arn)
    with open(os.path.join(MAN, "overlays", "irsa", "iam-trust-policy.json")) as f:
        trust = json.load(f)
    st = trust["Statement"]
    subject = f"system:serviceaccount:{sa['metadata']['namespace']}:{sa['metadata']['name']}"
    conds = st[0].get("Condition", {}).get("StringEquals", {}) if len(st) == 1 else {}
    check("irsa: trust policy is one AssumeRoleWithWebIdentity statement for the rendered SA",
          len(st) == 1 and st[0]["Action"] == "sts:AssumeRoleWithWebIdentity"
          and any(k.endswith(":sub") and v == subject for k, v in conds.items())
          and any(k.endswith(":aud") and v == "sts.amazonaws.com" for k, v in conds.items()), st)
pid = renders.get("kustomize overlays/pod-identity", [])
if pid:
    sa = by_kind(pid, "ServiceAccount")[0]
    check("pod-identity: no IRSA annotation",
          "eks.amazonaws.com/role-arn" not in (sa["metadata"].get("annotations") or {}))
    with open(os.path.join(MAN, "overlays", "pod-identity", "pod-identity-association.json")) as f:
        assoc = json.load(f)
    check("pod-identity: association names the rendered ServiceAccount",
          assoc.get("namespace") == sa["metadata"]["namespace"]
          and assoc.get("serviceAccount") == sa["metadata"]["name"], assoc)
    with open(os.path.join(MAN, "overlays", "pod-identity", "iam-trust-policy.json")) as f:
        trust = json.load(f)
    st = trust["Statement"]
    tags = st[0].get("Condition", {}).get("StringEquals", {}) if len(st) == 1 else {}
    check("pod-identity: trust policy lets pods.eks.amazonaws.com AssumeRole and TagSession "
          "for the rendered ServiceAccount only",
          len(st) == 1 and st[0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
          and sorted(st[0]["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
          and tags.get("aws:RequestTag/kubernetes-namespace") == sa["metadata"]["namespace"]
          and tags.get("aws:RequestTag/kubernetes-service-account") == sa["metadata"]["name"], st)

# --- Helm ----------------------------------------------------------------------------------------

# The original chart's values.yaml (aws/eks-charts stable/cni-metrics-helper, chart for v1.21.2),
# keys and defaults: an existing values file written for it must keep rendering with ours.
ORIGINAL_VALUES = yaml.safe_load("""
nameOverride: cni-metrics-helper
image:
  region: us-west-2
  tag: v1.21.2
  account: "602401143452"
  domain: "amazonaws.com"
  registry:
env:
  USE_CLOUDWATCH: "true"
  USE_PROMETHEUS: "false"
  AWS_CLUSTER_ID: ""
  AWS_VPC_K8S_CNI_LOGLEVEL: "INFO"
fullnameOverride: "cni-metrics-helper"
serviceAccount:
  create: true
  name:
  annotations: {}
resources: {}
revisionHistoryLimit: 10
podSecurityContext: {}
containerSecurityContext: {}
podAnnotations: {}
imagePullSecrets: []
updateStrategy: {}
nodeSelector: {}
tolerations: []
affinity: {}
""")


def key_paths(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and v:
            out |= key_paths(v, prefix + k + ".")
    return out


with open(os.path.join(CHART, "values.yaml")) as f:
    OUR_VALUES = yaml.safe_load(f)
missing = sorted(key_paths(ORIGINAL_VALUES) - key_paths(OUR_VALUES))
check("helm: values are a superset of the original chart's", not missing, missing)

HELM_CASES = {
    "defaults": ([], "cni-metrics-helper", "kube-system"),
    "original values file": ([ORIGINAL_VALUES], "cni-metrics-helper", "kube-system"),
    "typical user values": ([{
        "image": {"override": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/cni-metrics-helper:0.1.0"},
        "env": {"AWS_CLUSTER_ID": "prod-1", "METRIC_UPDATE_INTERVAL": 60, "USE_PROMETHEUS": True,
                "AWS_VPC_K8S_CNI_LOGLEVEL": "DEBUG"},
        "serviceAccount": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/cni-metrics-helper"}},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "tolerations": [{"operator": "Exists"}], "nodeSelector": {"role": "system"},
        "podAnnotations": {"a": "b"}, "imagePullSecrets": [{"name": "regcred"}],
        "affinity": {"nodeAffinity": {}}, "revisionHistoryLimit": 3,
    }], "cni-metrics-helper", "kube-system"),
    "leader election": ([{"leaderElection": {"enabled": True}, "env": {"AWS_CLUSTER_ID": "c1"}}],
                        "cni-metrics-helper", "kube-system"),
    "direct only": ([{"scrapeMode": "direct"}], "cni-metrics-helper", "kube-system"),
    "subnet metrics": ([{"subnetMetrics": {"enabled": True}}], "cni-metrics-helper", "kube-system"),
    "direct only through env": ([{"env": {"SCRAPE_MODE": "direct"}}], "cni-metrics-helper", "kube-system"),
    "other namespace, own ServiceAccount, port": ([{
        "fullnameOverride": None, "serviceAccount": {"create": False, "name": "cmh"},
        "env": {"PROMETHEUS_PORT": "9101", "SHUTDOWN_TIMEOUT": "20"},
        "image": {"registry": "registry.example/cmh", "tag": "1.2.3"},
    }], "metrics", "monitoring"),
}
helm_renders = {}
for case, (values, release, ns) in HELM_CASES.items():
    try:
        objs, notes = mr.helm_template(CHART, values, release, ns, with_notes=True)
        helm_renders[f"helm {case}"] = objs
        check(f"helm {case}: renders", True)
        check(f"helm {case}: NOTES render", bool(notes and notes.strip()))
    except mr.RenderError as e:
        check(f"helm {case}: renders", False, e)

h = helm_renders.get("helm original values file")
if h:
    d = by_kind(h, "Deployment")[0]
    check("helm original values file: upgrade-compatible selector k8s-app=cni-metrics-helper",
          d["spec"]["selector"] == {"matchLabels": {"k8s-app": "cni-metrics-helper"}}, d["spec"]["selector"])
h = helm_renders.get("helm typical user values")
if h:
    d = by_kind(h, "Deployment")[0]
    ps = d["spec"]["template"]["spec"]
    c = ps["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    sa = by_kind(h, "ServiceAccount")[0]
    check("helm typical user values: every value lands where it belongs",
          c["image"] == HELM_CASES["typical user values"][0][0]["image"]["override"]
          and env["AWS_CLUSTER_ID"] == "prod-1" and env["METRIC_UPDATE_INTERVAL"] == "60"
          and env["USE_PROMETHEUS"] == "true"
          and sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/cni-metrics-helper")
          and c["resources"]["limits"]["memory"] == "512Mi" and ps["tolerations"] == [{"operator": "Exists"}]
          and ps["nodeSelector"] == {"kubernetes.io/os": "linux", "role": "system"}
          and d["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
          and ps["imagePullSecrets"] == [{"name": "regcred"}] and d["spec"]["revisionHistoryLimit"] == 3,
          json.dumps(d)[:400])
h = helm_renders.get("helm other namespace, own ServiceAccount, port")
if h:
    d = by_kind(h, "Deployment")[0]
    c = d["spec"]["template"]["spec"]["containers"][0]
    check("helm other namespace: fullname is release-chart, no ServiceAccount created, image registry:tag",
          d["metadata"]["name"] == "metrics-cni-metrics-helper" and not by_kind(h, "ServiceAccount")
          and d["spec"]["template"]["spec"]["serviceAccountName"] == "cmh"
          and c["image"] == "registry.example/cmh:1.2.3", (d["metadata"]["name"], c["image"]))
h = helm_renders.get("helm defaults")
if h and base:
    # The chart and the kustomize base describe the same pod.
    def pod_shape(objs):
        d = by_kind(objs, "Deployment")[0]
        c = d["spec"]["template"]["spec"]["containers"][0]
        return (c["resources"], c["securityContext"], d["spec"]["template"]["spec"]["securityContext"],
                c["ports"], c["livenessProbe"], c["readinessProbe"], d["spec"]["strategy"],
                by_kind(objs, "Role")[0]["rules"])
    check("helm defaults: same resources, security, probes, strategy and RBAC as the kustomize base",
          pod_shape(h) == pod_shape(base))

# --- every rendering -----------------------------------------------------------------------------

all_renders = dict(renders)
all_renders.update(helm_renders)
for label, objs in all_renders.items():
    check_rendering(label, objs)
for label in ("kustomize base", "helm defaults", "helm other namespace, own ServiceAccount, port"):
    if label in all_renders:
        run_daemon_with(label, all_renders[label])

# Leases are used only by leader election: granted only where LEADER_ELECTION is on (checked per
# rendering above), and an opt-in rendering must exist once the code uses them.
le = renders.get("kustomize overlays/leader-election", [])
check("src/ uses leases only with an opt-in grant (overlays/leader-election, helm leaderElection)",
      not USES_LEASES or (le and "helm leader election" in helm_renders),
      f"{USES_LEASES} use coordination.k8s.io")
if le:
    d = by_kind(le, "Deployment")[0]
    check("leader-election overlay: 2 replicas", d["spec"]["replicas"] == 2, d["spec"])
# pods/proxy is used by the default (SCRAPE_MODE=auto): granted by default (checked per rendering
# above), with a way to drop it that also turns the proxy off.
check("src/ scrapes through pods/proxy", bool(USES_PROXY), "the proxy scraper is gone: drop the grant")


def rendered_mode(objs):
    c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env") or [] if "valueFrom" not in e}
    return str(effective(env, "SCRAPE_MODE") or "").lower()


for label in ("kustomize overlays/direct-only", "helm direct only", "helm direct only through env"):
    objs = all_renders.get(label)
    if check(f"{label}: rendered", objs is not None):
        grants = [r for role in by_kind(objs, "Role") for r in role.get("rules") or []
                  if "pods/proxy" in (r.get("resources") or [])]
        check(f"{label}: SCRAPE_MODE=direct and no pods/proxy grant",
              rendered_mode(objs) == "direct" and not grants, (rendered_mode(objs), grants))
for label in ("kustomize base", "helm defaults"):
    if label in all_renders:
        check(f"{label}: SCRAPE_MODE is auto (the default, which may use the proxy)",
              rendered_mode(all_renders[label]) == "auto", rendered_mode(all_renders[label]))

# --- IAM -----------------------------------------------------------------------------------------

def check_iam(label, policy):
    before = failures
    cw_ns = effective({}, "CW_NAMESPACE") or "Kubernetes"
    st = policy.get("Statement", [])
    actions = set()
    for s in st:
        a = s.get("Action")
        actions |= set(a if isinstance(a, list) else [a])
    check(f"{label}: only cloudwatch:PutMetricData, allowed", actions == {"cloudwatch:PutMetricData"}
          and all(s.get("Effect") == "Allow" and "NotAction" not in s for s in st), st)
    check(f"{label}: conditioned on the namespace {cw_ns}",
          bool(st) and all(s.get("Condition") == {"StringEquals": {"cloudwatch:namespace": cw_ns}}
                           for s in st), st)
    return failures - before


with open(os.path.join(MAN, "iam", "policy.json")) as f:
    POLICY = json.load(f)
check_iam("iam", POLICY)
called = set()
for path in glob.glob(os.path.join(SRC, "src", "**", "*.c"), recursive=True):
    with open(path, errors="replace") as f:
        text = f.read()
    called |= set(re.findall(r'"[^"\n]*Action=([A-Za-z]+)', text))
    called |= set(re.findall(r'GraniteServiceVersion20100801\.([A-Za-z]+)', text))
    called |= set(re.findall(r'"Action", "([A-Za-z]+)"', text))  # form_add-style builders (ec2.c)
# SUBNET_METRICS: ec2:DescribeSubnets, in its own opt-in policy (Resource "*": the action has no
# resource-level permissions), and nothing else there.
with open(os.path.join(MAN, "iam", "subnet-metrics-policy.json")) as f:
    SUBNET_POLICY = json.load(f)
sst = SUBNET_POLICY.get("Statement", [])
check("iam subnet-metrics: exactly ec2:DescribeSubnets on *, allowed",
      [(x.get("Effect"), x.get("Action"), x.get("Resource")) for x in sst] ==
      [("Allow", "ec2:DescribeSubnets", "*")], sst)
check("iam subnet-metrics: the code calls DescribeSubnets", "DescribeSubnets" in called, sorted(called))
for label in ("kustomize overlays/subnet-metrics", "helm subnet metrics"):
    objs = renders.get(label) or helm_renders.get(label)
    if check(f"{label}: rendered", objs is not None):
        c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        check(f"{label}: SUBNET_METRICS=true and a ClusterRole", env.get("SUBNET_METRICS") == "true"
              and len(by_kind(objs, "ClusterRole")) == 1, env)
needs_policy = called - {"PutMetricData", "AssumeRoleWithWebIdentity", "GetCallerIdentity",
                         "DescribeSubnets"}
check("iam: the code calls no AWS action the policy lacks", not needs_policy, sorted(needs_policy))

# --- the checks must be able to fail --------------------------------------------------------------


def mutate(fn):
    objs = copy.deepcopy(base)
    fn(objs)
    return objs


def dep_of(objs):
    return by_kind(objs, "Deployment")[0]


def ctr_of(objs):
    return dep_of(objs)["spec"]["template"]["spec"]["containers"][0]


def set_env(objs, name, value):
    env = ctr_of(objs)["env"]
    for e in env:
        if e["name"] == name:
            e.clear()
            e.update(name=name, value=value)
            return
    env.append({"name": name, "value": value})


MUTANTS = {
    "pods/proxy granted with SCRAPE_MODE=direct": lambda o: set_env(o, "SCRAPE_MODE", "direct"),
    "pods/proxy missing with SCRAPE_MODE=auto": lambda o: by_kind(o, "Role")[0].update(
        rules=[r for r in by_kind(o, "Role")[0]["rules"] if "pods/proxy" not in r["resources"]]),
    "pods/proxy missing with SCRAPE_MODE=proxy": lambda o: (
        set_env(o, "SCRAPE_MODE", "proxy"),
        by_kind(o, "Role")[0].update(
            rules=[r for r in by_kind(o, "Role")[0]["rules"] if "pods/proxy" not in r["resources"]])),
    "leases granted": lambda o: by_kind(o, "Role")[0]["rules"].append(
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}),
    "wildcard verb": lambda o: by_kind(o, "Role")[0]["rules"][0].update(verbs=["*"]),
    "ClusterRole": lambda o: o.append({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []}),
    "SUBNET_METRICS without the eniconfigs grant": lambda o: set_env(o, "SUBNET_METRICS", "true"),
    "unknown env var": lambda o: ctr_of(o)["env"].append({"name": "CMH_NO_SUCH_VARIABLE", "value": "1"}),
    "bad enum value": lambda o: set_env(o, "LOG_FORMAT", "xml"),
    "Role not in K8S_NAMESPACE": lambda o: set_env(o, "K8S_NAMESPACE", "monitoring"),
    "liveness path": lambda o: ctr_of(o)["livenessProbe"]["httpGet"].update(path="/health"),
    "readiness port": lambda o: ctr_of(o)["readinessProbe"]["httpGet"].update(port=8080),
    "container port": lambda o: ctr_of(o)["ports"][0].update(containerPort=9999),
    "writable root": lambda o: ctr_of(o)["securityContext"].update(readOnlyRootFilesystem=False),
    "capability added": lambda o: ctr_of(o)["securityContext"]["capabilities"].update(add=["NET_RAW"]),
    "root user": lambda o: dep_of(o)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
    "no seccomp": lambda o: dep_of(o)["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"),
    "rolling update": lambda o: dep_of(o)["spec"].update(strategy={"type": "RollingUpdate"}),
    "role bound to other SA": lambda o: by_kind(o, "RoleBinding")[0]["subjects"][0].update(name="other"),
    "role in default namespace": lambda o: by_kind(o, "Role")[0]["metadata"].update(namespace="default"),
    "other CloudWatch namespace": lambda o: set_env(o, "CW_NAMESPACE", "X"),
    "loopback listen address": lambda o: set_env(o, "PROMETHEUS_ADDRESS", "127.0.0.1"),
    "grace below SHUTDOWN_TIMEOUT": lambda o: set_env(o, "SHUTDOWN_TIMEOUT", "40s"),
    "short grace period": lambda o: dep_of(o)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=5),
    "no memory limit": lambda o: ctr_of(o)["resources"].pop("limits"),
}
IAM_MUTANTS = {
    "cloudwatch:*": lambda p: p["Statement"][0].update(Action="cloudwatch:*"),
    "extra action": lambda p: p["Statement"][0].update(Action=["cloudwatch:PutMetricData", "ec2:DescribeTags"]),
    "no namespace condition": lambda p: p["Statement"][0].pop("Condition"),
    "other namespace": lambda p: p["Statement"][0]["Condition"]["StringEquals"].update(
        {"cloudwatch:namespace": "Other"}),
}
real = failures
quiet = True
caught = {}
if base:
    for name, fn in MUTANTS.items():
        caught[name] = check_rendering(f"mutant {name}", mutate(fn))
for name, fn in IAM_MUTANTS.items():
    p = copy.deepcopy(POLICY)
    fn(p)
    caught["IAM " + name] = check_iam(f"mutant IAM {name}", p)
quiet = False
failures = real
for name, n in caught.items():
    check(f"the checks reject a mutant: {name}", n > 0)

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
