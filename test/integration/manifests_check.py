"""Renders manifests/ (the kustomize base, every overlay, every combination of a credentials
overlay with the components, and the Helm chart under many values files, among them the original
eks-charts chart's) and checks every rendering against the code:

- every environment variable is one the daemon knows (`--help` of the binary under test, read at
  test time) or a standard AWS SDK variable, enum/bool values are accepted, no variable is set
  twice, and the daemon started with the rendered environment accepts it (no exit 2, no "unknown
  variable" warning; leader-election timings pass the daemon's own check);
- RBAC grants exactly what the code uses, with the verbs read from src/: pods (the URLs the code
  builds: a collection read is list, a watch=1 query is watch, a single pod would be get) in the
  watched namespace, bound to the Deployment's ServiceAccount; pods/proxy get if and only if the
  rendered SCRAPE_MODE is not direct; the Lease verbs (the HTTP methods of the Lease code) if and
  only if LEADER_ELECTION is on, on our Lease alone (resourceNames = LEADER_ELECTION_LEASE_NAME)
  and without create, because the Lease itself is rendered (empty) in the watched namespace;
  ENIConfig list (the only cluster-wide grant) if and only if SUBNET_METRICS is on; no wildcards;
- the NetworkPolicy selects the Deployment's pods, admits on the metrics port only the peers the
  operator names (none by default: the kubelet's probes come from the node), and lets out exactly
  TCP 443, the ipamD port, DNS and TCP 80 to the link-local credential endpoints (evaluated on
  sample destinations, allowed and refused);
- the probes' paths answer on the daemon (liveness 200, readiness 200/503, an unknown path 404),
  and their port is the container port the daemon listens on (PROMETHEUS_PORT);
- the pod is hardened (non-root, read-only root, no capabilities, seccomp RuntimeDefault), memory
  requests and limits, grace period above SHUTDOWN_TIMEOUT; without leader election one replica
  replaced with Recreate; with it POD_NAME from the pod's name, 2+ replicas, a rolling update
  that never goes below the replica count, a PodDisruptionBudget (minAvailable 1) and preferred
  anti-affinity by node over the Deployment's own pods, lease timings in the order the daemon needs;
- every documented combination has what it promises (the IRSA annotation and AWS_CLUSTER_ID survive
  every component; each component's env, RBAC and objects are there), in either component order;
- the IAM policy grants cloudwatch:PutMetricData only, on the daemon's namespace, and the IRSA
  trust policy and Pod Identity association name the rendered ServiceAccount; the Pod Identity
  trust policy is bound to the association's account and cluster (aws:SourceAccount,
  aws:SourceArn);
- the chart's values are a superset of the original chart's; the original values file is refused
  (it names AWS's image) and the documented upgrade (`--set image.registry=...`) gets our tag;
  either spelling of a feature (env.LEADER_ELECTION / leaderElection.enabled, env.SUBNET_METRICS /
  subnetMetrics.enabled, env.SCRAPE_MODE / scrapeMode) renders the same objects.
Renders with the real tools (test/integration/manifests_tools.py: `kubectl kustomize` of kubectl
1.30, kustomize v5, and helm 3.17, both installed by `make deps`); `helm lint --strict` passes for
every values case; kustomize refuses the combinations the README warns against. Finally,
deliberately broken renderings must be rejected, so the checks themselves can fail.
"""
import atexit
import copy
import glob
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import manifests_tools as mt  # noqa: E402
from manifests_tools import RenderError  # noqa: E402
from testlib import stop_proc  # noqa: E402

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


# Standard AWS SDK variables the daemon reads, or that EKS injects for IRSA / Pod Identity.
AWS_SDK_VARS = {
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_CLOUDWATCH",
    "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_EC2",
    # Not AWS: the pod's own name (downward API), the leader-election identity (src/k8s/leader.c),
    # and its node's name (spec.nodeName), whose providerID names the instance (src/aws/cluster_id.c).
    "POD_NAME", "NODE_NAME",
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

def src_files():
    for path in sorted(glob.glob(os.path.join(SRC, "src", "**", "*.c"), recursive=True)):
        with open(path, errors="replace") as f:
            yield os.path.relpath(path, SRC), f.read()


def literals(text):
    return re.findall(r'"((?:[^"\\\n]|\\.)*)"', text)


def code_uses(pattern):
    return [rel for rel, text in src_files() if re.search(pattern, text)]


USES_LEASES = code_uses(r'"[^"\n]*coordination\.k8s\.io')
USES_PROXY = code_uses(r'"[^"\n]*/pods/[^"\n]*/proxy|"[^"\n]*/proxy/metrics')
USES_NODE_GET = code_uses(r'"/api/v1/nodes/')


def pod_verbs_from_src():
    """The pods verbs the code needs, from the URLs it builds: the collection (`/pods?...`) is
    list, with a `watch=1` query in the same file watch; a single pod (`/pods/NAME`, other than
    its proxy subresource) get."""
    verbs = {}
    for rel, text in src_files():
        lits = literals(text)
        if any(re.search(r"/pods\?", x) for x in lits):
            verbs.setdefault("list", []).append(rel)
            if any(re.search(r"[?&]watch=(1|true)\b", x) for x in lits):
                verbs.setdefault("watch", []).append(rel)
        if any(re.search(r"/pods/", x) and "/proxy" not in x for x in lits):
            verbs.setdefault("get", []).append(rel)
    return verbs


def lease_verbs_from_src():
    """The Lease verbs: the HTTP methods named in the files that build Lease URLs."""
    verbs = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    out = set()
    for rel in USES_LEASES:
        with open(os.path.join(SRC, rel), errors="replace") as f:
            out |= {verbs[x] for x in literals(f.read()) if x in verbs}
    return out


POD_VERBS = pod_verbs_from_src()
LEASE_VERBS = lease_verbs_from_src()
# Discovery lists then watches: if these are not found, the derivation above has gone blind.
check(f"src/ pods verbs derived from the URLs it builds: {sorted(POD_VERBS)}",
      {"list", "watch"} <= set(POD_VERBS), POD_VERBS)
check(f"src/ Lease verbs derived from the Lease code's methods: {sorted(LEASE_VERBS)}",
      not USES_LEASES or LEASE_VERBS, USES_LEASES)


def is_on(v):
    return str(v or "").lower() in ("true", "yes")


def env_entry(c, name):
    hits = [e for e in c.get("env") or [] if e["name"] == name]
    return hits[0] if len(hits) == 1 else None


def selects(selector, labels):
    ml = (selector or {}).get("matchLabels") or {}
    return bool(ml) and not (selector or {}).get("matchExpressions") and \
        all(labels.get(k) == v for k, v in ml.items())


# --- NetworkPolicy: an evaluator of the rules, for sample peers ----------------------------------

def np_port_ok(ports, proto, port, named):
    """ports of a rule admit proto/port (named: the pod's port names -> numbers)."""
    if not ports:
        return True
    for p in ports:
        pp = named.get(p.get("port"), p.get("port"))
        if p.get("protocol", "TCP") == proto and (pp is None or pp == port
                                                  or (p.get("endPort") and pp <= port <= p["endPort"])):
            return True
    return False


def np_peer_ok(peer, who, policy_ns):
    """peer (a from/to entry) matches who: {"ip", "ns", "ns_labels", "pod_labels"}."""
    if "ipBlock" in peer:
        addr = ipaddress.ip_address(who["ip"])
        net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        return addr.version == net.version and addr in net and not any(
            addr in ipaddress.ip_network(e) for e in peer["ipBlock"].get("except") or []
            if ipaddress.ip_network(e).version == addr.version)
    if who.get("pod_labels") is None:
        return False  # not a pod: only ipBlocks match it
    if "namespaceSelector" in peer:
        nsel = peer["namespaceSelector"] or {}
        if not all((who.get("ns_labels") or {}).get(k) == v for k, v in (nsel.get("matchLabels") or {}).items()):
            return False
    elif who.get("ns") != policy_ns:
        return False
    psel = peer.get("podSelector") or {}
    return all(who["pod_labels"].get(k) == v for k, v in (psel.get("matchLabels") or {}).items())


def np_allows(np, direction, proto, port, who, named=None):
    spec = np.get("spec") or {}
    if direction not in (spec.get("policyTypes") or []):
        return True
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for rule in spec.get(key) or []:
        if np_port_ok(rule.get("ports"), proto, port, named or {}) and (
                not rule.get(peers) or any(np_peer_ok(p, who, np["metadata"].get("namespace"))
                                           for p in rule[peers])):
            return True
    return False


def pod_peer(ns, ip="10.0.9.9", labels=None):
    return {"ip": ip, "ns": ns, "ns_labels": {"kubernetes.io/metadata.name": ns},
            "pod_labels": labels or {"app": "anything"}}


# What the helper talks to (allowed) and what it has no business reaching (refused).
EGRESS_ALLOWED = [("TCP", 443, "172.20.0.1", "the API server's ClusterIP"),
                  ("TCP", 443, "10.0.3.17", "an API server endpoint"),
                  ("TCP", 443, "52.94.133.131", "a CloudWatch/STS/EC2 endpoint"),
                  ("TCP", 443, "2600:1f14:fff:f810::1", "an endpoint over IPv6"),
                  ("TCP", "ipamd", "10.0.12.34", "another node's ipamD"),
                  ("TCP", "ipamd", "2600:1f14::5", "a node's ipamD over IPv6"),
                  ("UDP", 53, "172.20.0.10", "cluster DNS"), ("TCP", 53, "169.254.20.10", "NodeLocal DNS"),
                  ("TCP", 80, "169.254.170.23", "the EKS Pod Identity Agent"),
                  ("TCP", 80, "fd00:ec2::23", "the EKS Pod Identity Agent over IPv6"),
                  ("TCP", 80, "169.254.169.254", "instance metadata")]
EGRESS_REFUSED = [("TCP", 80, "93.184.216.34", "plain HTTP to the internet"),
                  ("TCP", 5432, "10.0.0.5", "a database in the VPC"), ("TCP", 22, "10.0.0.5", "SSH"),
                  ("UDP", 123, "169.254.169.123", "NTP"), ("TCP", 10250, "10.0.12.34", "a kubelet")]


def check_network_policy(label, objs, pod, c, env, ns, pod_labels, metrics_from):
    nps = by_kind(objs, "NetworkPolicy")
    if not check(f"{label}: one NetworkPolicy, in the Deployment's namespace, over its pods, Ingress and Egress",
                 len(nps) == 1 and nps[0]["metadata"].get("namespace") == ns
                 and selects(nps[0]["spec"].get("podSelector"), pod_labels)
                 and set(nps[0]["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}, nps):
        return
    np = nps[0]
    port = int(effective(env, "PROMETHEUS_PORT"))
    named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    ipamd = int(effective(env, "IPAMD_METRICS_PORT"))
    for rule in np["spec"].get("ingress") or []:
        check(f"{label}: NetworkPolicy: each ingress rule names its peers and only the metrics port {port}",
              bool(rule.get("from")) and bool(rule.get("ports"))
              and all(named.get(p.get("port"), p.get("port")) == port and p.get("protocol", "TCP") == "TCP"
                      and not p.get("endPort") for p in rule["ports"]), rule)
    peers = [p for r in np["spec"].get("ingress") or [] for p in r.get("from") or []]
    check(f"{label}: NetworkPolicy admits to the metrics port exactly the peers configured: {metrics_from or 'none'}",
          peers == (metrics_from or []), peers)
    for who in (pod_peer("default"), pod_peer(ns), pod_peer(ns, labels=pod_labels),
                pod_peer("default", "2600:1f14::9")):
        check(f"{label}: NetworkPolicy: a pod in {who['ns']} at {who['ip']} cannot reach the metrics port",
              not np_allows(np, "Ingress", "TCP", port, who, named)
              or any(np_peer_ok(p, who, ns) for p in metrics_from or []), np["spec"].get("ingress"))
    for proto, p, ip, what in EGRESS_ALLOWED:
        p = ipamd if p == "ipamd" else p
        check(f"{label}: NetworkPolicy lets out {proto} {p} to {ip} ({what})",
              np_allows(np, "Egress", proto, p, {"ip": ip, "pod_labels": None}), np["spec"].get("egress"))
    for proto, p, ip, what in EGRESS_REFUSED:
        check(f"{label}: NetworkPolicy keeps in {proto} {p} to {ip} ({what})",
              not np_allows(np, "Egress", proto, p, {"ip": ip, "pod_labels": None}), np["spec"].get("egress"))


def check_rendering(label, objs, netpol=True, metrics_from=None):
    """Returns the number of failed checks for this rendering. netpol False: the rendering is one
    where the NetworkPolicy was turned off (helm networkPolicy.enabled=false); metrics_from: the
    peers the operator admitted to the metrics port (helm networkPolicy.metricsFrom)."""
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
    # And nodes get (not list, not watch) wherever the RBAC is rendered: the node's providerID
    # names the instance whose tags name the cluster (the code reads one node by name).
    rbac_on = bool(by_kind(objs, "Role"))
    want_c = ({("", "nodes", "get")} if rbac_on and USES_NODE_GET else set()) | \
        ({("crd.k8s.amazonaws.com", "eniconfigs", "list")} if subnets_on else set())
    check(f"{label}: cluster-wide RBAC exactly nodes get (the code reads its node), and eniconfigs list "
          "only with SUBNET_METRICS, one ClusterRole and binding each",
          cgrants == want_c and len(by_kind(objs, "ClusterRole")) == len(by_kind(objs, "ClusterRoleBinding"))
          == int(bool(rbac_on and USES_NODE_GET)) + int(subnets_on),
          (subnets_on, sorted(cgrants), [o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")]))
    if ("", "nodes", "get") in cgrants:
        ne = [e for e in env_list if e["name"] == "NODE_NAME"]
        check(f"{label}: NODE_NAME is the pod's node (downward API spec.nodeName)",
              len(ne) == 1 and ne[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
              ne)
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
            check(f"{label}: rule names no nonResourceURLs", "nonResourceURLs" not in rule, rule)
            # A grant is (group, resource, verb, name): name None for every object of the kind.
            for g in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    for v in rule.get("verbs") or []:
                        for n in rule.get("resourceNames") or [None]:
                            grants.add((g, res, v, n))
    wanted = {("", "pods", v, None) for v in POD_VERBS}
    elect = is_on(effective(env, "LEADER_ELECTION"))
    lease_name = effective(env, "LEADER_ELECTION_LEASE_NAME")
    leases = [o for o in by_kind(objs, "Lease")]
    if elect:
        # Our Lease by name, and no create (it cannot be limited to a name): the Lease is shipped.
        wanted |= {("coordination.k8s.io", "leases", v, lease_name) for v in LEASE_VERBS - {"create"}}
        check(f"{label}: leader election: the Lease {lease_name} is rendered, empty, in {watch_ns} "
              "(the daemon would create it only when absent, and create is not granted)",
              len(leases) == 1 and leases[0]["metadata"].get("name") == lease_name
              and leases[0]["metadata"].get("namespace") == watch_ns
              and not (leases[0].get("spec") or {}).get("holderIdentity"), leases)
    else:
        check(f"{label}: no Lease without leader election", not leases, leases)
    # USES_PROXY: pods/proxy get exactly where SCRAPE_MODE may use it (auto, proxy).
    if USES_PROXY and str(effective(env, "SCRAPE_MODE") or "").lower() != "direct":
        wanted.add(("", "pods/proxy", "get", None))
    check(f"{label}: RBAC grants exactly what src/ uses as configured (pods, pods/proxy, our Lease by name)",
          grants == wanted,
          f"extra {sorted(grants - wanted, key=str)}, missing {sorted(wanted - grants, key=str)}")
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
    # Every address of the pod: the kubelet's probes connect to the pod IP, kubectl port-forward
    # to localhost inside the pod (IPv4 or IPv6); an address of one family or the pod IP alone
    # leaves one of them out.
    addr = effective(env, "PROMETHEUS_ADDRESS")
    check(f"{label}: PROMETHEUS_ADDRESS is every address (probes and kubectl port-forward reach it)",
          addr in ("::", "[::]") and not any("valueFrom" in e for e in env_list
                                             if e["name"] == "PROMETHEUS_ADDRESS"), addr)
    ps = pod
    if ps.get("hostNetwork"):
        check(f"{label}: host network resolves cluster names (dnsPolicy ClusterFirstWithHostNet)",
              ps.get("dnsPolicy") == "ClusterFirstWithHostNet", ps.get("dnsPolicy"))

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
    host_net = "host-network" in label or "host network" in label
    check(f"{label}: no host namespaces (the node's network only where host network was chosen)",
          not any(pod.get(k) for k in ("hostPID", "hostIPC")) and bool(pod.get("hostNetwork")) == host_net,
          (host_net, pod.get("hostNetwork")))
    res = c.get("resources") or {}
    req = (res.get("requests") or {}).get("memory")
    lim = (res.get("limits") or {}).get("memory")
    check(f"{label}: memory request and limit, request <= limit",
          req is not None and lim is not None and mem_bytes(req) <= mem_bytes(lim), res)
    # Two publishers would double every CloudWatch Sum: one replica replaced with Recreate, or
    # several only with leader election, and then everything the election needs.
    replicas = spec.get("replicas", 1)
    strategy = spec.get("strategy") or {}
    pdbs = by_kind(objs, "PodDisruptionBudget")
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    if not elect:
        check(f"{label}: without leader election one replica replaced with Recreate (never two publishers)",
              replicas == 1 and strategy.get("type") == "Recreate", (replicas, strategy))
        check(f"{label}: without leader election no PodDisruptionBudget (it would block drains)", not pdbs,
              pdbs)
    else:
        pn = env_entry(c, "POD_NAME") or {}
        check(f"{label}: leader election: POD_NAME is the pod's name (downward API)",
              (pn.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", pn)
        ru = strategy.get("rollingUpdate") or {}
        check(f"{label}: leader election: rolling update that keeps every replica until its successor is "
              "ready (maxUnavailable 0, maxSurge 1+)",
              strategy.get("type") == "RollingUpdate" and ru.get("maxUnavailable") == 0
              and int(str(ru.get("maxSurge", 0)).rstrip("%") or 0) >= 1, strategy)
        lease, renew, retry = (parse_seconds(effective(env, f"LEADER_ELECTION_{x}") or "")
                               for x in ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD"))
        check(f"{label}: leader election: retry period < renew deadline < lease duration",
              None not in (lease, renew, retry) and retry < renew < lease, (retry, renew, lease))
        if replicas >= 2:
            check(f"{label}: leader election: a PodDisruptionBudget minAvailable 1 over the Deployment's pods, "
                  "unhealthy pods always evictable (an unready replica never blocks a drain)",
                  len(pdbs) == 1 and pdbs[0]["spec"].get("minAvailable") == 1
                  and pdbs[0]["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"
                  and "maxUnavailable" not in pdbs[0]["spec"]
                  and pdbs[0]["metadata"].get("namespace") == ns
                  and selects(pdbs[0]["spec"].get("selector"), pod_labels), pdbs)
            terms = (((pod.get("affinity") or {}).get("podAntiAffinity") or {})
                     .get("preferredDuringSchedulingIgnoredDuringExecution") or [])
            check(f"{label}: leader election: preferred anti-affinity by hostname over the Deployment's pods",
                  any(t.get("podAffinityTerm", {}).get("topologyKey") == "kubernetes.io/hostname"
                      and selects(t["podAffinityTerm"].get("labelSelector"), pod_labels) for t in terms),
                  pod.get("affinity"))
        else:
            check(f"{label}: leader election with one replica: no PodDisruptionBudget (it would block drains)",
                  not pdbs, pdbs)
    with open(os.path.join(MAN, "iam", "policy.json")) as f:
        allowed_ns = {s.get("Condition", {}).get("StringEquals", {}).get("cloudwatch:namespace")
                      for s in json.load(f).get("Statement", [])}
    cw_ns = effective(env, "CW_NAMESPACE") or "Kubernetes"
    check(f"{label}: CW_NAMESPACE {cw_ns} is the one iam/policy.json allows", allowed_ns == {cw_ns}, allowed_ns)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    stop = parse_seconds(effective(env, "SHUTDOWN_TIMEOUT") or "10")
    check(f"{label}: grace period {grace}s above SHUTDOWN_TIMEOUT {stop}s", stop is not None and grace > stop)
    if netpol:
        check_network_policy(label, objs, pod, c, env, ns, pod_labels, metrics_from)
    else:
        check(f"{label}: no NetworkPolicy when turned off", not by_kind(objs, "NetworkPolicy"))
    return failures - before


def run_daemon_with(label, objs):
    """Starts the daemon with the rendered environment (loopback overrides only) and probes the
    rendered paths on it."""
    c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = mt.daemon_env(objs, "cni-metrics-helper-test")
    # A test never leaves the machine: log datums, scrape one closed loopback port, listen on
    # loopback. Leader election and the subnet view run against a closed port on 127.61.0.1 (no
    # test listens there): they retry and log, and the daemon has checked their settings.
    env.update({"USE_CLOUDWATCH": "no", "SCRAPE_TARGETS": "127.0.0.1:9", "PROMETHEUS_ADDRESS": "127.0.0.1",
                "PROMETHEUS_PORT": "0", "LOG_FORMAT": "json", "AWS_EC2_METADATA_DISABLED": "true",
                "KUBERNETES_SERVICE_HOST": "127.61.0.1", "KUBERNETES_SERVICE_PORT": "9",
                "K8S_TOKEN_FILE": TOKEN_FILE, "K8S_CA_FILE": TOKEN_FILE, "AWS_REGION": "us-west-2",
                "AWS_ENDPOINT_URL_EC2": "http://127.61.0.1:9", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "not-a-secret"})
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
            if ev.get("level") == "error":
                warnings.append(ev.get("msg") + ": " + str(ev.get("error", "")))
            if ev.get("msg") == "listening":
                port = ev.get("port")
                break
        if not check(f"{label}: daemon starts with the rendered environment", port is not None,
                     f"exit {p.poll()}: {''.join(lines[-5:])}"):
            return
        check(f"{label}: daemon warns about no variable and logs no error", not warnings, warnings)
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
        stop_proc(p, timeout=20)
        p.stderr.close()


# --- kustomize -------------------------------------------------------------------------------

WORK = tempfile.mkdtemp(prefix="cmh-manifests-")
atexit.register(shutil.rmtree, WORK, True)
TOKEN_FILE = os.path.join(WORK, "token")
with open(TOKEN_FILE, "w") as f:
    f.write("not-a-token\n")

# Every overlay is an entry point, every component an option added to one: all are rendered.
OVERLAYS = sorted(os.listdir(os.path.join(MAN, "overlays")))
COMPONENTS = sorted(os.listdir(os.path.join(MAN, "components")))
CREDENTIALS = ("irsa", "pod-identity")
check("components are leader-election, direct-only, subnet-metrics, host-network; credentials overlays irsa, "
      "pod-identity",
      set(COMPONENTS) == {"leader-election", "direct-only", "subnet-metrics", "host-network"}
      and set(CREDENTIALS) <= set(OVERLAYS), (COMPONENTS, OVERLAYS))

# label -> directory; combinations are written as overlays of their own in WORK, as an operator
# would (resources: the credentials overlay; components: the options).
kdirs = {"kustomize base": os.path.join(MAN, "base")}
kdirs.update({f"kustomize overlays/{o}": os.path.join(MAN, "overlays", o) for o in OVERLAYS})
combos = {}  # label -> (credentials, set of components)


def write_overlay(name, resources, components):
    d = os.path.join(WORK, name)
    os.makedirs(d)
    with open(os.path.join(d, "kustomization.yaml"), "w") as f:
        yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                        "resources": [os.path.relpath(r, d) for r in resources],
                        "components": [os.path.relpath(c, d) for c in components]}, f)
    return d


for cred in CREDENTIALS:
    for n in range(1, len(COMPONENTS) + 1):
        for subset in itertools.combinations(COMPONENTS, n):
            orders = [subset] if n == 1 else [subset, tuple(reversed(subset))]
            for i, order in enumerate(orders):
                label = f"kustomize {cred} + {' + '.join(order)}"
                kdirs[label] = write_overlay(f"{cred}-{len(kdirs)}", [os.path.join(MAN, "overlays", cred)],
                                             [os.path.join(MAN, "components", c) for c in order])
                combos[label] = (cred, set(subset))

# The README's own examples ("Install"): the overlay its heredoc writes (its relative paths
# resolved from manifests/overlays/<name>/, where the README puts it) and the helm command's --set
# values, rendered and checked like the rest.
with open(os.path.join(SRC, "README.md")) as f:
    m = re.search(r"^## Install\n(.*?)^## ", f.read(), re.S | re.M)
DEPLOYING = m.group(1) if m else ""
m = re.search(r"cat > manifests/overlays/([\w-]+)/kustomization\.yaml <<'EOF'\n(.*?)\nEOF\n", DEPLOYING, re.S)
README_OVERLAY = yaml.safe_load(m.group(2)) if m else None
if check("README Install: a kustomize overlay example", isinstance(README_OVERLAY, dict), DEPLOYING[:200]):
    home = os.path.join(MAN, "overlays", m.group(1))
    d = os.path.join(WORK, "readme-example")
    os.makedirs(d)
    k = dict(README_OVERLAY)
    for field in ("resources", "components"):
        k[field] = [os.path.relpath(os.path.normpath(os.path.join(home, x)), d) for x in k.get(field) or []]
    with open(os.path.join(d, "kustomization.yaml"), "w") as f:
        yaml.safe_dump(k, f)
    kdirs["kustomize README example"] = d

renders = {}
for label, d in kdirs.items():
    try:
        renders[label] = mt.kustomize(d)
        check(f"{label}: renders", True)
    except RenderError as e:
        check(f"{label}: renders", False, e)

# What kustomize refuses: two overlays that both hold the base (the mistake the components
# replace), a component listed as a resource, an overlay listed as a component.
REFUSED = {
    "two credentials overlays as resources": write_overlay(
        "refused-two-overlays", [os.path.join(MAN, "overlays", c) for c in CREDENTIALS], []),
    "a component as a resource": write_overlay(
        "refused-component-resource", [os.path.join(MAN, "overlays", "irsa"),
                                       os.path.join(MAN, "components", "direct-only")], []),
    "an overlay as a component": write_overlay(
        "refused-overlay-component", [os.path.join(MAN, "base")], [os.path.join(MAN, "overlays", "irsa")]),
}
for what, d in REFUSED.items():
    try:
        mt.kustomize(d)
        check(f"kubectl kustomize refuses {what}", False, "rendered")
    except RenderError:
        check(f"kubectl kustomize refuses {what}", True)


def obj_key(o):
    return (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])


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
        if VARS[n]["type"] == "duration":
            same = d is not None and parse_seconds(v) == parse_seconds(d)
        else:
            same = d is not None and (str(v).lower() == d.lower())
        check(f"kustomize base: {n}={v} is the daemon's default", same, f"daemon default {d}")
    # The options an operator turns on are written out in the base, so the components only change
    # values and the daemon's defaults are visible in one place.
    listed = {e["name"] for e in c.get("env") or []}
    tunables = {"SCRAPE_MODE", "LEADER_ELECTION", "LEADER_ELECTION_LEASE_DURATION",
                "LEADER_ELECTION_RENEW_DEADLINE", "LEADER_ELECTION_RETRY_PERIOD", "SUBNET_METRICS",
                "CW_PER_AZ", "METRIC_UPDATE_INTERVAL", "AWS_CLUSTER_ID", "USE_PROMETHEUS", "POD_NAME"}
    check("kustomize base: lists every variable the components and overlays set, with its default",
          tunables <= listed, sorted(tunables - listed))


def cluster_id_of(overlay):
    """AWS_CLUSTER_ID as the overlay's own deployment-patch.yaml sets it (the operator's value)."""
    with open(os.path.join(MAN, "overlays", overlay, "deployment-patch.yaml")) as f:
        patch = yaml.safe_load(f)
    return [e["value"] for e in patch["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "AWS_CLUSTER_ID"][0]


def check_features(label, objs, cred, le, direct, subnets, cluster_id=None, host_network=False):
    """What the documented combination promises, whatever the component order: the credentials
    overlay's annotation and AWS_CLUSTER_ID (or the operator's, cluster_id) survive, each option
    is there, nothing else is."""
    d = by_kind(objs, "Deployment")[0]
    c = d["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"] if "valueFrom" not in e}
    sa = by_kind(objs, "ServiceAccount")[0]
    ann = sa["metadata"].get("annotations") or {}
    if cred == "irsa":
        check(f"{label}: keeps the IRSA role annotation",
              re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", ann.get("eks.amazonaws.com/role-arn", "")),
              ann)
    else:
        check(f"{label}: no IRSA annotation (Pod Identity)", "eks.amazonaws.com/role-arn" not in ann, ann)
    want_id = cluster_id or cluster_id_of(cred)
    check(f"{label}: AWS_CLUSTER_ID is {want_id}", env.get("AWS_CLUSTER_ID") == want_id, env.get("AWS_CLUSTER_ID"))
    rules = {(r, v) for role in by_kind(objs, "Role") for rule in role["rules"]
             for r in rule["resources"] for v in rule["verbs"]}
    check(f"{label}: leader election {'on' if le else 'off'}: LEADER_ELECTION, replicas, leases, "
          "PodDisruptionBudget",
          is_on(env.get("LEADER_ELECTION")) == le and d["spec"].get("replicas", 1) == (2 if le else 1)
          and (("leases", "update") in rules) == le and bool(by_kind(objs, "PodDisruptionBudget")) == le,
          (env.get("LEADER_ELECTION"), d["spec"].get("replicas"), sorted(rules)))
    ps = d["spec"]["template"]["spec"]
    check(f"{label}: host network {'on' if host_network else 'off'}: hostNetwork, dnsPolicy",
          bool(ps.get("hostNetwork")) == host_network
          and ps.get("dnsPolicy") == ("ClusterFirstWithHostNet" if host_network else None),
          (ps.get("hostNetwork"), ps.get("dnsPolicy")))
    check(f"{label}: direct only {'on' if direct else 'off'}: SCRAPE_MODE and pods/proxy",
          env.get("SCRAPE_MODE") == ("direct" if direct else "auto")
          and (("pods/proxy", "get") in rules) != direct, (env.get("SCRAPE_MODE"), sorted(rules)))
    check(f"{label}: subnet metrics {'on' if subnets else 'off'}: SUBNET_METRICS, CW_PER_AZ, ENIConfig grant",
          is_on(env.get("SUBNET_METRICS")) == subnets and is_on(env.get("CW_PER_AZ")) == subnets
          and len(by_kind(objs, "ClusterRole")) == len(by_kind(objs, "ClusterRoleBinding")) == int(subnets) + 1,
          (env.get("SUBNET_METRICS"), env.get("CW_PER_AZ"), [o["kind"] for o in objs]))


for label, (cred, comps) in combos.items():
    if label in renders:
        check_features(label, renders[label], cred, "leader-election" in comps, "direct-only" in comps,
                       "subnet-metrics" in comps, host_network="host-network" in comps)
for cred in CREDENTIALS:
    if f"kustomize overlays/{cred}" in renders:
        check_features(f"kustomize overlays/{cred}", renders[f"kustomize overlays/{cred}"], cred,
                       False, False, False)
label = "kustomize README example"
if label in renders:
    patches = [yaml.safe_load(p["patch"]) for p in README_OVERLAY.get("patches") or []]
    want_id = [e["value"] for p in patches if p["kind"] == "Deployment"
               for e in p["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "AWS_CLUSTER_ID"]
    check_features(label, renders[label], "irsa", True, False, True, cluster_id=want_id[0] if want_id else "?")
    img = README_OVERLAY["images"][0]
    sa = by_kind(renders[label], "ServiceAccount")[0]
    check(f"{label}: its image and role ARN",
          by_kind(renders[label], "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
          == f"{img['newName']}:{img['newTag']}" and sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
          == [p for p in patches if p["kind"] == "ServiceAccount"][0]["metadata"]["annotations"][
              "eks.amazonaws.com/role-arn"], sa)
example = renders.get("kustomize overlays/irsa-leader-election-subnet-metrics")
same = renders.get("kustomize irsa + leader-election + subnet-metrics")
if check("kustomize overlays/irsa-leader-election-subnet-metrics: rendered", example is not None):
    check_features("kustomize overlays/irsa-leader-election-subnet-metrics", example, "irsa", True, False, True)
    check("kustomize overlays/irsa-leader-election-subnet-metrics: the same objects as irsa + the two components",
          same is not None and {obj_key(o): o for o in example} == {obj_key(o): o for o in same})
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
        PID_TRUST = json.load(f)
    PID_SA, PID_ASSOC = sa, assoc


def check_pod_identity_trust(label, trust, assoc, sa):
    """The Pod Identity trust policy admits the EKS Auth service for the association's ServiceAccount
    only, and only on behalf of the association's account and cluster (aws:SourceAccount,
    aws:SourceArn: without them any cluster in any account could assume the role for a
    ServiceAccount of that name)."""
    before = failures
    st = trust["Statement"]
    cond = st[0].get("Condition", {}) if len(st) == 1 else {}
    tags = cond.get("StringEquals", {})
    check(f"{label}: lets pods.eks.amazonaws.com AssumeRole and TagSession for the rendered ServiceAccount only",
          len(st) == 1 and st[0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
          and sorted(st[0]["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
          and tags.get("aws:RequestTag/kubernetes-namespace") == sa["metadata"]["namespace"]
          and tags.get("aws:RequestTag/kubernetes-service-account") == sa["metadata"]["name"], st)
    m = re.match(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/", assoc.get("roleArn", ""))
    partition, account = (m.group(1), m.group(2)) if m else (None, None)
    arn = (cond.get("ArnEquals") or {}).get("aws:SourceArn", "")
    am = re.match(r"^arn:(aws[a-z-]*):eks:([a-z0-9-]+):(\d{12}):cluster/(.+)$", arn)
    check(f"{label}: aws:SourceAccount is the role's account {account}",
          account is not None and tags.get("aws:SourceAccount") == account, (tags, assoc))
    check(f"{label}: aws:SourceArn (ArnEquals) is the association's cluster {assoc.get('clusterName')} "
          "in that account",
          am is not None and am.group(1) == partition and am.group(3) == account
          and am.group(4) == assoc.get("clusterName") and "*" not in arn, (cond, assoc))
    return failures - before


if pid:
    check_pod_identity_trust("pod-identity trust policy", PID_TRUST, PID_ASSOC, PID_SA)

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

ECR = "111122223333.dkr.ecr.us-west-2.amazonaws.com/cni-metrics-helper"
APP_VERSION = str(chart_meta.get("appVersion"))
LE_ON = {"leaderElection": {"enabled": True}}
# The chart has no default image (no node could pull one): every case names the operator's image,
# through the cases' own image keys or, when they have none, this first values layer.
OWN_IMAGE = {"image": {"registry": ECR}}
HELM_CASES = {
    "defaults with image.registry": ([], "cni-metrics-helper", "kube-system"),
    # The documented upgrade from the original chart: its values file, our image's repository.
    "original values file with image.registry": ([ORIGINAL_VALUES, {"image": {"registry": ECR}}],
                                                 "cni-metrics-helper", "kube-system"),
    "original values file with image.registry and our tag": (
        [ORIGINAL_VALUES, {"image": {"registry": ECR, "tag": "0.2.0"}}], "cni-metrics-helper", "kube-system"),
    "own ECR in the account/region/domain form": (
        [{"image": {"registry": None, "account": "111122223333", "region": "eu-west-1"}}],
        "cni-metrics-helper", "kube-system"),
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
    # Each feature in both spellings, and both at once: the same objects (checked below).
    "leader election": ([LE_ON, {"env": {"AWS_CLUSTER_ID": "c1"}}], "cni-metrics-helper", "kube-system"),
    "leader election through env": ([{"env": {"AWS_CLUSTER_ID": "c1", "LEADER_ELECTION": "true"}}],
                                    "cni-metrics-helper", "kube-system"),
    "leader election both ways": ([LE_ON, {"env": {"AWS_CLUSTER_ID": "c1", "LEADER_ELECTION": True}}],
                                  "cni-metrics-helper", "kube-system"),
    "leader election on, env says false": ([LE_ON, {"env": {"LEADER_ELECTION": "false"}}],
                                           "cni-metrics-helper", "kube-system"),
    "leader election, lease timings": ([{"leaderElection": {
        "enabled": True, "leaseDuration": "30s", "renewDeadline": "20s", "retryPeriod": "4s"},
        "env": {"LEADER_ELECTION_RETRY_PERIOD": "5s"}}], "cni-metrics-helper", "kube-system"),
    "leader election, one replica": ([{"leaderElection": {"enabled": True, "replicas": 1}}],
                                     "cni-metrics-helper", "kube-system"),
    "leader election, own affinity": ([LE_ON, {"affinity": {"nodeAffinity": {"x": 1}}}],
                                      "cni-metrics-helper", "kube-system"),
    "leader election, own anti-affinity": ([LE_ON, {"affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"k8s-app": "cni-metrics-helper"}}}}]}}}],
        "cni-metrics-helper", "kube-system"),
    "direct only": ([{"scrapeMode": "direct"}], "cni-metrics-helper", "kube-system"),
    "direct only through env": ([{"env": {"SCRAPE_MODE": "direct"}}], "cni-metrics-helper", "kube-system"),
    "direct only through env, other case": ([{"env": {"SCRAPE_MODE": "Direct"}}], "cni-metrics-helper",
                                            "kube-system"),
    "empty SCRAPE_MODE and PROMETHEUS_ADDRESS": ([{"env": {"SCRAPE_MODE": "", "PROMETHEUS_ADDRESS": ""}}],
                                                 "cni-metrics-helper", "kube-system"),
    "subnet metrics": ([{"subnetMetrics": {"enabled": True}}], "cni-metrics-helper", "kube-system"),
    "host network": ([{"hostNetwork": True}], "cni-metrics-helper", "kube-system"),
    "host network with leader election": ([{"hostNetwork": True}, LE_ON], "cni-metrics-helper", "kube-system"),
    "subnet metrics through env": ([{"env": {"SUBNET_METRICS": "true"}}], "cni-metrics-helper", "kube-system"),
    "subnet metrics through env, CW_PER_AZ off": ([{"env": {"SUBNET_METRICS": "yes", "CW_PER_AZ": "false"}}],
                                                  "cni-metrics-helper", "kube-system"),
    "irsa, leader election, subnet metrics, direct": ([{
        "image": {"registry": ECR}, "leaderElection": {"enabled": True}, "subnetMetrics": {"enabled": True},
        "scrapeMode": "direct", "env": {"AWS_CLUSTER_ID": "prod-1"},
        "serviceAccount": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/cni-metrics-helper"}},
    }], "cni-metrics-helper", "kube-system"),
    "leader election, own lease name": ([LE_ON, {"env": {"LEADER_ELECTION_LEASE_NAME": "cmh-prod"}}],
                                        "cni-metrics-helper", "kube-system"),
    "network policy off": ([{"networkPolicy": {"enabled": False}}], "cni-metrics-helper", "kube-system"),
    "network policy, Prometheus namespace, own ports and egress": ([{
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}],
            "extraEgress": [{"ports": [{"protocol": "TCP", "port": 3128}],
                             "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]}]},
        "env": {"PROMETHEUS_PORT": "9102", "IPAMD_METRICS_PORT": "61679", "USE_PROMETHEUS": "true"}}],
        "cni-metrics-helper", "kube-system"),
    "other namespace, own ServiceAccount, port": ([{
        "fullnameOverride": None, "serviceAccount": {"create": False, "name": "cmh"},
        "env": {"PROMETHEUS_PORT": "9101", "SHUTDOWN_TIMEOUT": "20"},
        "image": {"registry": "registry.example/cmh", "tag": "1.2.3"},
    }], "metrics", "monitoring"),
}


# AWS's own values.yaml of the chart versions in use (test/data/helm, copied from the VPC CNI
# repository, SOURCES says which tag and commit): refused as they are, naming image.override; with
# image.override (the key AWS's chart already has) the operator's image and nothing else.
AWS_VALUES = {}
for path in sorted(glob.glob(os.path.join(SRC, "test", "data", "helm", "aws-vpc-cni-*-values.yaml"))):
    with open(path) as f:
        AWS_VALUES[os.path.basename(path).split("-")[3]] = yaml.safe_load(f)
check("helm: AWS's values files of v1.12 to v1.23 are in test/data/helm", len(AWS_VALUES) >= 5, sorted(AWS_VALUES))
OUR_IMAGE = f"{ECR}:0.2.0"
for tag, v in AWS_VALUES.items():
    HELM_CASES[f"AWS's {tag} values with image.override"] = (
        [v, {"image": {"override": OUR_IMAGE}}], "cni-metrics-helper", "kube-system")

HELM_EXTRA = {}  # case -> more helm arguments (the README's --set flags, as written)
m = re.search(r"```sh\n(helm upgrade --install .*?)\n```", DEPLOYING, re.S)
README_SETS = {}
if check("README Install: a helm example", m is not None, DEPLOYING[:200]):
    argv = shlex.split(m.group(1).replace("\\\n", " "))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    README_SETS = dict(x.replace("\\.", ".").split("=", 1) for x in sets)
    check("README helm example: release cni-metrics-helper, this chart, kube-system",
          argv[3:5] == ["cni-metrics-helper", "manifests/helm/cni-metrics-helper"]
          and ("-n" in argv or "--namespace" in argv) and "kube-system" in argv, argv)
    HELM_CASES["README example"] = ([], "cni-metrics-helper", "kube-system")
    HELM_EXTRA["README example"] = [x for v in sets for x in ("--set", v)]

# Values the chart must refuse, and a word the message must carry so the operator knows the fix.
HELM_REFUSED = {
    # No image named: no default image is rendered (none a node could pull).
    "defaults": ([], "image.override"),
    # The original chart's values file names AWS's image (602401143452...): refused, naming the fix.
    "original values file": ([ORIGINAL_VALUES], "image.override"),
    "override with AWS's image": ([{"image": {
        "override": "602401143452.dkr.ecr.us-west-2.amazonaws.com/cni-metrics-helper:v1.21.2"}}], "image.registry"),
    "registry in AWS's China account": ([{"image": {
        "registry": "918309763551.dkr.ecr.cn-north-1.amazonaws.com.cn/cni-metrics-helper"}}], "image.registry"),
    "public ECR eks/cni-metrics-helper": ([{"image": {"override": "public.ecr.aws/eks/cni-metrics-helper:v1.20.0"}}],
                                          "image.registry"),
    "env.POD_NAME": ([OWN_IMAGE, {"env": {"POD_NAME": "x"}}], "downward API"),
}
for tag, v in AWS_VALUES.items():
    HELM_REFUSED[f"AWS's {tag} values as they are"] = ([v], "image.override")
helm_renders, helm_notes = {}, {}
for case, (values, release, ns) in HELM_CASES.items():
    extra = HELM_EXTRA.get(case, [])
    values = [OWN_IMAGE] + values
    try:
        helm_renders[f"helm {case}"] = mt.helm_template(WORK, values, release, ns, extra)
        helm_notes[f"helm {case}"] = mt.helm_notes(WORK, values, release, ns, extra)
        check(f"helm {case}: renders", True)
        check(f"helm {case}: NOTES render", bool(helm_notes[f"helm {case}"].strip()))
    except RenderError as e:
        check(f"helm {case}: renders", False, e)
    # helm lint --strict with the same values: no warning, no error (an INFO, such as the missing
    # icon, is no finding).
    r = mt.run([mt.HELM, "lint", "--strict", mt.CHART, "--namespace", ns]
               + [x for f in mt.write_values(WORK, values) for x in ("-f", f)] + extra)
    findings = [ln for ln in r.stdout.splitlines() if re.match(r"^\[(WARNING|ERROR)\]", ln)]
    check(f"helm lint --strict {case}: clean", r.returncode == 0 and not findings, r.stdout + r.stderr)
for case, (values, word) in HELM_REFUSED.items():
    try:
        mt.helm_template(WORK, values)
        check(f"helm {case}: refused", False, "rendered")
    except RenderError as e:
        check(f"helm {case}: refused with a message naming {word}",
              "execution error" in str(e) and word in str(e), e)


def helm_ctr(label):
    return by_kind(helm_renders[label], "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def helm_env(label):
    return {e["name"]: e.get("value") for e in helm_ctr(label)["env"] if "valueFrom" not in e}


IMAGES = {
    "original values file with image.registry": f"{ECR}:{APP_VERSION}",
    "original values file with image.registry and our tag": f"{ECR}:0.2.0",
    "own ECR in the account/region/domain form":
        f"111122223333.dkr.ecr.eu-west-1.amazonaws.com/cni-metrics-helper:{APP_VERSION}",
    "defaults with image.registry": f"{ECR}:{APP_VERSION}",
}
IMAGES.update({f"AWS's {tag} values with image.override": OUR_IMAGE for tag in AWS_VALUES})
for case, want in IMAGES.items():
    if f"helm {case}" in helm_renders:
        got = helm_ctr(f"helm {case}")["image"]
        check(f"helm {case}: image {want}", got == want, got)
label = "helm original values file with image.registry"
if label in helm_renders:
    d = by_kind(helm_renders[label], "Deployment")[0]
    check(f"{label}: upgrade-compatible selector k8s-app=cni-metrics-helper",
          d["spec"]["selector"] == {"matchLabels": {"k8s-app": "cni-metrics-helper"}}, d["spec"]["selector"])
    check(f"{label}: NOTES say the original's v1.21.2 tag was replaced by {APP_VERSION}",
          "v1.21.2" in helm_notes[label] and APP_VERSION in helm_notes[label], helm_notes[label])


def comparable(objs):
    """The objects with the env in name order (the order variables are written in is no difference)."""
    out = {}
    for o in copy.deepcopy(objs):
        if o["kind"] == "Deployment":
            for c in o["spec"]["template"]["spec"]["containers"]:
                c["env"] = sorted(c["env"], key=lambda e: e["name"])
        out[obj_key(o)] = o
    return out


SAME = [("leader election", "leader election through env", "leader election both ways"),
        ("direct only", "direct only through env", "direct only through env, other case"),
        ("subnet metrics", "subnet metrics through env")]
for group in SAME:
    got = [helm_renders.get(f"helm {c}") for c in group]
    if all(g is not None for g in got):
        first = comparable(got[0])
        check(f"helm {' = '.join(group)}: the same objects", all(comparable(g) == first for g in got[1:]),
              [sorted(set(comparable(g)) ^ set(first)) for g in got[1:]])
if "helm leader election" in helm_renders:
    check("helm leader election: Deployment, Role with leases, Lease, PodDisruptionBudget, NetworkPolicy, "
          "the nodes ClusterRole",
          sorted(o["kind"] for o in helm_renders["helm leader election"]) ==
          ["ClusterRole", "ClusterRoleBinding", "Deployment", "Lease", "NetworkPolicy",
           "PodDisruptionBudget", "Role", "RoleBinding", "ServiceAccount"])
label = "helm leader election, own lease name"
if label in helm_renders:
    lease_rules = [r for r in by_kind(helm_renders[label], "Role")[0]["rules"] if "leases" in r["resources"]]
    check(f"{label}: LEADER_ELECTION_LEASE_NAME, the Lease and the grant all name cmh-prod",
          helm_env(label).get("LEADER_ELECTION_LEASE_NAME") == "cmh-prod"
          and [o["metadata"]["name"] for o in by_kind(helm_renders[label], "Lease")] == ["cmh-prod"]
          and [r.get("resourceNames") for r in lease_rules] == [["cmh-prod"]], lease_rules)
label = "helm network policy, Prometheus namespace, own ports and egress"
if label in helm_renders and check(f"{label}: a NetworkPolicy", by_kind(helm_renders[label], "NetworkPolicy")):
    np = by_kind(helm_renders[label], "NetworkPolicy")[0]
    mon = pod_peer("monitoring", labels={"app.kubernetes.io/name": "prometheus"})
    check(f"{label}: Prometheus's namespace reaches port 9102 and nothing else; other namespaces do not",
          np_allows(np, "Ingress", "TCP", 9102, mon) and not np_allows(np, "Ingress", "TCP", 9103, mon)
          and not np_allows(np, "Ingress", "TCP", 9102, pod_peer("default")), np["spec"]["ingress"])
    check(f"{label}: extraEgress lets out the proxy, the ipamD port follows IPAMD_METRICS_PORT",
          np_allows(np, "Egress", "TCP", 3128, {"ip": "10.0.0.10", "pod_labels": None})
          and not np_allows(np, "Egress", "TCP", 3128, {"ip": "10.0.0.11", "pod_labels": None})
          and np_allows(np, "Egress", "TCP", 61679, {"ip": "10.0.7.7", "pod_labels": None})
          and not np_allows(np, "Egress", "TCP", 61678, {"ip": "10.0.7.7", "pod_labels": None}), np["spec"]["egress"])
label = "helm leader election on, env says false"
if label in helm_renders:
    d = by_kind(helm_renders[label], "Deployment")[0]
    check(f"{label}: env wins: off, one replica, no PodDisruptionBudget",
          helm_env(label)["LEADER_ELECTION"] == "false" and d["spec"]["replicas"] == 1
          and not by_kind(helm_renders[label], "PodDisruptionBudget"), d["spec"])
label = "helm leader election, lease timings"
if label in helm_renders:
    e = helm_env(label)
    check(f"{label}: leaderElection timings, env.LEADER_ELECTION_RETRY_PERIOD wins",
          (e["LEADER_ELECTION_LEASE_DURATION"], e["LEADER_ELECTION_RENEW_DEADLINE"],
           e["LEADER_ELECTION_RETRY_PERIOD"]) == ("30s", "20s", "5s"), e)
label = "helm leader election, own affinity"
if label in helm_renders:
    aff = by_kind(helm_renders[label], "Deployment")[0]["spec"]["template"]["spec"]["affinity"]
    check(f"{label}: the user's nodeAffinity and our podAntiAffinity", set(aff) == {"nodeAffinity", "podAntiAffinity"}
          and aff["nodeAffinity"] == {"x": 1}, aff)
label = "helm leader election, own anti-affinity"
if label in helm_renders:
    aff = by_kind(helm_renders[label], "Deployment")[0]["spec"]["template"]["spec"]["affinity"]
    check(f"{label}: the user's podAntiAffinity as given",
          aff == HELM_CASES["leader election, own anti-affinity"][0][1]["affinity"], aff)
label = "helm subnet metrics through env, CW_PER_AZ off"
if label in helm_renders:
    e = helm_env(label)
    check(f"{label}: SUBNET_METRICS and CW_PER_AZ once each, as env says",
          e.get("SUBNET_METRICS") == "true" and e.get("CW_PER_AZ") == "false"
          and len(by_kind(helm_renders[label], "ClusterRole")) == 2, e)
label = "helm empty SCRAPE_MODE and PROMETHEUS_ADDRESS"
if label in helm_renders:
    env_list = helm_ctr(label)["env"]
    addr = [e for e in env_list if e["name"] == "PROMETHEUS_ADDRESS"]
    check(f"{label}: SCRAPE_MODE auto once, PROMETHEUS_ADDRESS left to the daemon's default",
          [e["name"] for e in env_list].count("SCRAPE_MODE") == 1
          and helm_env(label).get("SCRAPE_MODE") == "auto" and not addr, env_list)
label = "helm irsa, leader election, subnet metrics, direct"
if label in helm_renders:
    h = helm_renders[label]
    e = helm_env(label)
    rules = {(r, v) for role in by_kind(h, "Role") for rule in role["rules"] for r in rule["resources"]
             for v in rule["verbs"]}
    check(f"{label}: annotation, AWS_CLUSTER_ID, LEADER_ELECTION, SUBNET_METRICS, SCRAPE_MODE, no pods/proxy",
          by_kind(h, "ServiceAccount")[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
              "role/cni-metrics-helper") and e["AWS_CLUSTER_ID"] == "prod-1" and e["LEADER_ELECTION"] == "true"
          and e["SUBNET_METRICS"] == "true" and e["SCRAPE_MODE"] == "direct"
          and ("pods/proxy", "get") not in rules and ("leases", "update") in rules, (e, sorted(rules)))
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


def pod_shape(objs):
    d = by_kind(objs, "Deployment")[0]
    c = d["spec"]["template"]["spec"]["containers"][0]
    pdb = by_kind(objs, "PodDisruptionBudget")
    np = copy.deepcopy([x["spec"] for x in by_kind(objs, "NetworkPolicy")])
    for x in np:
        x.pop("podSelector")  # helm's adds the release's instance label
    return (c["resources"], c["securityContext"], d["spec"]["template"]["spec"]["securityContext"],
            c["ports"], c["livenessProbe"], c["readinessProbe"], d["spec"]["strategy"], d["spec"]["replicas"],
            sorted(json.dumps(r, sort_keys=True) for r in by_kind(objs, "Role")[0]["rules"]),
            pdb[0]["spec"]["minAvailable"] if pdb else None, np,
            [(x["metadata"]["namespace"], x["metadata"]["name"], x.get("spec")) for x in by_kind(objs, "Lease")])


label = "helm README example"
if label in helm_renders:
    check_features(label, helm_renders[label], "irsa", True, False, True,
                   cluster_id=README_SETS.get("env.AWS_CLUSTER_ID"))
    check(f"{label}: image is image.registry:appVersion",
          helm_ctr(label)["image"] == f"{README_SETS.get('image.registry')}:{APP_VERSION}", helm_ctr(label)["image"])

# The chart and the kustomize manifests describe the same pod, with and without the options.
for hl, kl in (("helm defaults with image.registry", "kustomize base"), ("helm README example", "kustomize README example"),
               ("helm irsa, leader election, subnet metrics, direct",
                "kustomize irsa + direct-only + leader-election + subnet-metrics")):
    if hl in helm_renders and kl in renders:
        check(f"{hl}: same resources, security, probes, strategy, replicas, RBAC, PDB, NetworkPolicy and "
              f"Lease as {kl}",
              pod_shape(helm_renders[hl]) == pod_shape(renders[kl]),
              (pod_shape(helm_renders[hl]), pod_shape(renders[kl])))

# --- every rendering -----------------------------------------------------------------------------

all_renders = dict(renders)
all_renders.update(helm_renders)
for label, objs in all_renders.items():
    case = HELM_CASES.get(label[len("helm "):], [[]])[0] if label.startswith("helm ") else []
    metrics_from = [x for v in case for x in (v.get("networkPolicy") or {}).get("metricsFrom") or []]
    check_rendering(label, objs, netpol=label != "helm network policy off", metrics_from=metrics_from)
for label in ("kustomize base", "kustomize irsa + direct-only + leader-election + subnet-metrics",
              "helm defaults with image.registry", "helm other namespace, own ServiceAccount, port",
              "helm irsa, leader election, subnet metrics, direct", "helm host network with leader election",
              "kustomize irsa + host-network"):
    if check(f"{label}: rendered for the daemon", label in all_renders):
        run_daemon_with(label, all_renders[label])

# Leases are used only by leader election: granted only where LEADER_ELECTION is on (checked per
# rendering above), and an opt-in rendering must exist once the code uses them.
check("src/ uses leases only with an opt-in grant (components/leader-election, helm leaderElection)",
      not USES_LEASES or ("kustomize irsa + leader-election" in renders and "helm leader election" in helm_renders),
      f"{USES_LEASES} use coordination.k8s.io")
# pods/proxy is used by the default (SCRAPE_MODE=auto): granted by default (checked per rendering
# above), with a way to drop it that also turns the proxy off.
check("src/ scrapes through pods/proxy", bool(USES_PROXY), "the proxy scraper is gone: drop the grant")


def rendered_mode(objs):
    c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env") or [] if "valueFrom" not in e}
    return str(effective(env, "SCRAPE_MODE") or "").lower()


for label in ("kustomize irsa + direct-only", "helm direct only", "helm direct only through env"):
    objs = all_renders.get(label)
    if check(f"{label}: rendered", objs is not None):
        grants = [r for role in by_kind(objs, "Role") for r in role.get("rules") or []
                  if "pods/proxy" in (r.get("resources") or [])]
        check(f"{label}: SCRAPE_MODE=direct and no pods/proxy grant",
              rendered_mode(objs) == "direct" and not grants, (rendered_mode(objs), grants))
for label in ("kustomize base", "helm defaults with image.registry"):
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
    called |= set(re.findall(r'EC2_ACTION\("([A-Za-z]+)"\)', text))  # ec2.c's action names
# SUBNET_METRICS: ec2:DescribeSubnets, in its own opt-in policy (Resource "*": the action has no
# resource-level permissions), and nothing else there.
with open(os.path.join(MAN, "iam", "subnet-metrics-policy.json")) as f:
    SUBNET_POLICY = json.load(f)
sst = SUBNET_POLICY.get("Statement", [])
check("iam subnet-metrics: exactly ec2:DescribeSubnets on *, allowed",
      [(x.get("Effect"), x.get("Action"), x.get("Resource")) for x in sst] ==
      [("Allow", "ec2:DescribeSubnets", "*")], sst)
check("iam subnet-metrics: the code calls DescribeSubnets", "DescribeSubnets" in called, sorted(called))
for label in ("kustomize pod-identity + subnet-metrics", "helm subnet metrics", "helm subnet metrics through env"):
    objs = renders.get(label) or helm_renders.get(label)
    if check(f"{label}: rendered", objs is not None):
        c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        check(f"{label}: SUBNET_METRICS=true and its ClusterRole beside the nodes one",
              env.get("SUBNET_METRICS") == "true" and len(by_kind(objs, "ClusterRole")) == 2, env)
# ec2:DescribeTags is asked only without AWS_CLUSTER_ID, as the original helper did; the shipped
# policy leaves it out (it cannot be limited to one instance): the overlays set AWS_CLUSTER_ID,
# and a denied call is logged and falls to the aws-node pods' CLUSTER_NAME (docs/migration.md).
check("iam: the code asks DescribeTags (the original's cluster-id lookup)", "DescribeTags" in called,
      sorted(called))
# SUBNET_PREFIX_METRICS: the free /28 count's two read-only actions, in their own opt-in policy.
with open(os.path.join(MAN, "iam", "subnet-prefix-metrics-policy.json")) as f:
    PREFIX_POLICY = json.load(f)
pst = PREFIX_POLICY.get("Statement", [])
check("iam subnet-prefix-metrics: exactly ec2:DescribeNetworkInterfaces and "
      "ec2:GetSubnetCidrReservations on *, allowed",
      [(x.get("Effect"), sorted(x.get("Action") or []), x.get("Resource")) for x in pst] ==
      [("Allow", ["ec2:DescribeNetworkInterfaces", "ec2:GetSubnetCidrReservations"], "*")], pst)
check("iam subnet-prefix-metrics: the code calls both",
      {"DescribeNetworkInterfaces", "GetSubnetCidrReservations"} <= called, sorted(called))
needs_policy = called - {"PutMetricData", "AssumeRoleWithWebIdentity", "GetCallerIdentity",
                         "DescribeSubnets", "DescribeTags", "DescribeNetworkInterfaces",
                         "GetSubnetCidrReservations"}
check("iam: the code calls no AWS action the policy lacks", not needs_policy, sorted(needs_policy))

# --- the checks must be able to fail --------------------------------------------------------------


def mutate(fn, start):
    objs = copy.deepcopy(start)
    fn(objs)
    return objs


def dep_of(objs):
    return by_kind(objs, "Deployment")[0]


def ctr_of(objs):
    return dep_of(objs)["spec"]["template"]["spec"]["containers"][0]


def drop_env(objs, name):
    ctr_of(objs)["env"] = [e for e in ctr_of(objs)["env"] if e["name"] != name]


def drop_kind(objs, kind):
    objs[:] = [o for o in objs if o.get("kind") != kind]


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
    "nodes list granted (the code gets one node)": lambda o: [r["rules"][0].update(verbs=["get", "list"])
                                                         for r in by_kind(o, "ClusterRole")],
    "no NODE_NAME beside the nodes grant": lambda o: ctr_of(o).update(
        env=[e for e in ctr_of(o)["env"] if e["name"] != "NODE_NAME"]),
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
    "IPv4-only listen address (no port-forward over ::1)": lambda o: set_env(o, "PROMETHEUS_ADDRESS", "0.0.0.0"),
    "host network without dnsPolicy ClusterFirstWithHostNet": lambda o: dep_of(o)["spec"]["template"][
        "spec"].update(hostNetwork=True),
    "grace below SHUTDOWN_TIMEOUT": lambda o: set_env(o, "SHUTDOWN_TIMEOUT", "40s"),
    "short grace period": lambda o: dep_of(o)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=5),
    "no memory limit": lambda o: ctr_of(o)["resources"].pop("limits"),
    "pods get granted (src/ never reads one pod)": lambda o: by_kind(o, "Role")[0]["rules"][0].update(
        verbs=["get", "list", "watch"]),
    "pods watch missing": lambda o: by_kind(o, "Role")[0]["rules"][0].update(verbs=["list"]),
    "a variable set twice": lambda o: ctr_of(o)["env"].append({"name": "SCRAPE_MODE", "value": "auto"}),
    "LEADER_ELECTION=true alone (no leases, one replica, Recreate)": lambda o: set_env(o, "LEADER_ELECTION", "true"),
    "no NetworkPolicy": lambda o: drop_kind(o, "NetworkPolicy"),
    "NetworkPolicy ingress open to all": lambda o: by_kind(o, "NetworkPolicy")[0]["spec"].update(ingress=[{}]),
    "NetworkPolicy ingress from a namespace to another port": lambda o: by_kind(o, "NetworkPolicy")[0][
        "spec"].update(ingress=[{"from": [{"namespaceSelector": {}}], "ports": [{"port": 22}]}]),
    "NetworkPolicy ingress from every pod of its namespace": lambda o: by_kind(o, "NetworkPolicy")[0][
        "spec"].update(ingress=[{"from": [{"podSelector": {}}], "ports": [{"port": 61681}]}]),
    "NetworkPolicy egress to all": lambda o: by_kind(o, "NetworkPolicy")[0]["spec"]["egress"].append({}),
    "NetworkPolicy egress without 443": lambda o: by_kind(o, "NetworkPolicy")[0]["spec"]["egress"][0].update(
        ports=[{"protocol": "TCP", "port": 61678}]),
    "NetworkPolicy port 80 anywhere": lambda o: by_kind(o, "NetworkPolicy")[0]["spec"]["egress"][2].pop("to"),
    "NetworkPolicy over other pods": lambda o: by_kind(o, "NetworkPolicy")[0]["spec"].update(
        podSelector={"matchLabels": {"k8s-app": "other"}}),
    "NetworkPolicy ingress only": lambda o: by_kind(o, "NetworkPolicy")[0]["spec"].update(policyTypes=["Ingress"]),
    "ipamD port moved, NetworkPolicy not": lambda o: set_env(o, "IPAMD_METRICS_PORT", "61679"),
    "PodDisruptionBudget with one replica": lambda o: o.append(copy.deepcopy(
        by_kind(renders.get("kustomize irsa + leader-election", []), "PodDisruptionBudget")[0])),
}
# Broken variants of the leader-election rendering.
LE_MUTANTS = {
    "leader election without POD_NAME": lambda o: drop_env(o, "POD_NAME"),
    "leader election with a fixed POD_NAME": lambda o: set_env(o, "POD_NAME", "helper"),
    "leader election with Recreate": lambda o: dep_of(o)["spec"].update(strategy={"type": "Recreate"}),
    "leader election with maxUnavailable 1": lambda o: dep_of(o)["spec"]["strategy"]["rollingUpdate"].update(
        maxUnavailable=1),
    "leader election without a PodDisruptionBudget": lambda o: drop_kind(o, "PodDisruptionBudget"),
    "PodDisruptionBudget over other pods": lambda o: by_kind(o, "PodDisruptionBudget")[0]["spec"].update(
        selector={"matchLabels": {"k8s-app": "other"}}),
    "PodDisruptionBudget minAvailable 0": lambda o: by_kind(o, "PodDisruptionBudget")[0]["spec"].update(
        minAvailable=0),
    "leader election without anti-affinity": lambda o: dep_of(o)["spec"]["template"]["spec"].pop("affinity"),
    "lease duration below the renew deadline": lambda o: set_env(o, "LEADER_ELECTION_LEASE_DURATION", "5s"),
    "Lease grant without resourceNames (every Lease)": lambda o: [
        r.pop("resourceNames", None) for r in by_kind(o, "Role")[0]["rules"] if "leases" in r["resources"]],
    "Lease grant with create": lambda o: [
        r["verbs"].append("create") for r in by_kind(o, "Role")[0]["rules"] if "leases" in r["resources"]],
    "Lease grant on another Lease": lambda o: [
        r.update(resourceNames=["kube-controller-manager"]) for r in by_kind(o, "Role")[0]["rules"]
        if "leases" in r["resources"]],
    "Lease not shipped": lambda o: drop_kind(o, "Lease"),
    "Lease in another namespace": lambda o: by_kind(o, "Lease")[0]["metadata"].update(namespace="default"),
    "Lease name differs from LEADER_ELECTION_LEASE_NAME": lambda o: set_env(o, "LEADER_ELECTION_LEASE_NAME", "x"),
    "PodDisruptionBudget that keeps unhealthy pods": lambda o: [p["spec"].pop("unhealthyPodEvictionPolicy", None)
                                                               for p in by_kind(o, "PodDisruptionBudget")],
    "leader election without the leases grant": lambda o: by_kind(o, "Role")[0].update(
        rules=[r for r in by_kind(o, "Role")[0]["rules"] if "leases" not in r["resources"]]),
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
le_render = renders.get("kustomize irsa + leader-election")
if base and le_render:
    for name, fn in MUTANTS.items():
        caught[name] = check_rendering(f"mutant {name}", mutate(fn, base))
    for name, fn in LE_MUTANTS.items():
        caught[name] = check_rendering(f"mutant {name}", mutate(fn, le_render))
for name, fn in IAM_MUTANTS.items():
    p = copy.deepcopy(POLICY)
    fn(p)
    caught["IAM " + name] = check_iam(f"mutant IAM {name}", p)
TRUST_MUTANTS = {
    "no aws:SourceAccount": lambda t: t["Statement"][0]["Condition"]["StringEquals"].pop("aws:SourceAccount"),
    "aws:SourceAccount of another account": lambda t: t["Statement"][0]["Condition"]["StringEquals"].update(
        {"aws:SourceAccount": "444455556666"}),
    "no aws:SourceArn": lambda t: t["Statement"][0]["Condition"].pop("ArnEquals"),
    "aws:SourceArn of every cluster": lambda t: t["Statement"][0]["Condition"]["ArnEquals"].update(
        {"aws:SourceArn": "arn:aws:eks:us-west-2:111122223333:cluster/*"}),
    "aws:SourceArn of another cluster": lambda t: t["Statement"][0]["Condition"]["ArnEquals"].update(
        {"aws:SourceArn": "arn:aws:eks:us-west-2:111122223333:cluster/other"}),
}
if pid:
    for name, fn in TRUST_MUTANTS.items():
        t = copy.deepcopy(PID_TRUST)
        fn(t)
        caught["Pod Identity trust " + name] = check_pod_identity_trust(f"mutant trust {name}", t, PID_ASSOC, PID_SA)
quiet = False
failures = real
for name, n in caught.items():
    check(f"the checks reject a mutant: {name}", n > 0)
check("the mutants ran", bool(base and le_render and pid) and len(caught) ==
      len(MUTANTS) + len(LE_MUTANTS) + len(IAM_MUTANTS) + len(TRUST_MUTANTS))
print(f"note  {len(caught)} deliberately broken renderings, {len(all_renders)} renderings checked "
      f"({len(renders)} kustomize, {len(helm_renders)} helm), {len(HELM_REFUSED) + len(REFUSED)} refusals")

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
