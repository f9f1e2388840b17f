#!/usr/bin/python3
"""Fake Kubernetes API server for the discovery and leader-election tests (loopback only).

Makes a throw-away CA and a server certificate for 127.0.0.1 with the openssl CLI, writes a
service-account token to --token-file, listens on 127.0.0.1:<kernel-chosen port> with TLS and
prints one line
    READY port=<port> ca=<CA PEM path> token_file=<path>
then serves until its standard input closes or --lifetime seconds pass.

API (every request needs "Authorization: Bearer <current token>", else 401; with --plain-http it
serves plain http without token checks, as `kubectl proxy` does, and counts in stats
plain_with_auth the requests that carried an Authorization header all the same):
  GET  /api/v1/namespaces/{ns}/pods?labelSelector=&limit=&continue=   PodList, paginated
  GET  /api/v1/namespaces/{ns}/pods?watch=1&resourceVersion=&allowWatchBookmarks=&timeoutSeconds=
       chunked stream of newline-delimited events (ADDED, MODIFIED, DELETED, BOOKMARK, and
       ERROR with a 410 Status when the resourceVersion is older than the last compaction)
  GET/PUT /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}, POST .../leases
       Lease get/create/update; update needs the current metadata.resourceVersion (else 409)
  GET  /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}   the pod proxy: forwards a GET to
       the pod's address (the `proxy` table, else the pod's hostIP:port) and streams the answer
       back; 503 with a Status when the pod cannot be reached (as the API server does). Served
       over HTTP/2 (ALPN h2: every request a stream of one connection) and over HTTP/1.1.

RBAC (--rbac FILE): FILE is a JSON list of rendered objects. Its Roles, ClusterRoles and their
bindings authorize the token's user, the ServiceAccount --rbac-subject NS:NAME, as the API server's
RBAC authorizer does (a Role's rules in its namespace through a RoleBinding there, a ClusterRole's
everywhere through a ClusterRoleBinding; verbs from the method and path: GET of a collection is
list, with watch=1 watch, of one object get, POST create, PUT update; resourceNames match only a
request that names its object, so never a create); any other request answers 403 Forbidden, and
its "verb group/resource ns/name" is kept in stats forbidden_requests. Its Lease objects exist
from the start, as if applied. Without --rbac every authenticated request is allowed.

Control: one command per line on standard input, one answer line ("OK <json>" or "ERR <text>")
on standard output:
  add NAME NODE IP [phase=Running] [ns=kube-system] [labels=k8s-app=aws-node]
  set NAME [ip=IP] [node=NODE] [phase=PHASE]      (a MODIFIED event)
  del NAME                                         (a DELETED event)
  compact            older resourceVersions now answer 410 Gone
  gone               compact, and end every open watch with an ERROR 410 event
  disconnect         cut every open watch (no final chunk)
  fail N [CODE]      the next N API requests answer CODE (default 500)
  stall SECONDS      open and new watches send nothing for that long (the slow watch)
  down SECONDS       every connection is closed at once for that long (the API is down)
  fragment on|off    write each watch event in 7-byte chunks
  token NEW [file=no]  rotate the token: write NEW to the token file; only NEW is accepted
                     (file=no: the file keeps the old token, as when the kubelet is late)
  lease NAME HOLDER SECONDS [ns=kube-system]   write a Lease as another replica would: holder
                     HOLDER ("-" for none), renewTime now, leaseDurationSeconds the JSON value
                     SECONDS ("none" leaves it out), a new resourceVersion
  node NAME PROVIDERID   a Node (GET /api/v1/nodes/NAME) with spec.providerID PROVIDERID
  podenv NAME KEY VALUE  the aws-node container of pod NAME gets env KEY=VALUE (a MODIFIED event)
  eniconfig NAME SUBNET  an ENIConfig (GET /apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs
                     lists them; 404 until the first one, as when the CRD is not installed)
  eniconfig-del NAME     the ENIConfig is deleted (the CRD stays: an empty list, not a 404)
  eniconfig-forbid on|off  the ENIConfig list answers 403 Forbidden (no RBAC to list them)
                     while on; stats count eniconfig_lists (every list request, 403 included)
  proxy POD HOST:PORT   the pod proxy reaches POD at HOST:PORT (not its hostIP)
  proxyfault POD KIND   KIND = 503 (answer 503 at once), slow=SECONDS (wait before answering),
                        none; POD may be * (every pod)
  listdelay SECONDS [N]  the next N pod lists (default 1) are answered SECONDS late, with the
                     pods as they are then (an API server slow to answer the first list)
  leasedelay SECONDS a Lease update is applied at once but answered SECONDS later (0: at once)
  leasebarrier N     the next N Lease GETs wait for each other (at most 5 s) and are answered
                     together, so N candidates race on the same state (one wins, the rest 409)
  getlease NAME [ns=kube-system]  the stored Lease as JSON (null when absent), as an admin sees it
  stats              counters (lists, watches, unauthorized, injected failures, ...)
                     (h2_connections, h2_streams, h1_connections, proxy_requests,
                     proxy_by_pod, proxy_unauthorized, proxy_unreachable, proxy_faults,
                     proxy_gzip)
"""
import argparse
import http.client
import queue
import select
import base64
import copy
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import h2.config  # noqa: E402  (python3-h2, Debian)
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402

import testca  # noqa: E402  (test/sim/testca.py, beside this file)

COND = threading.Condition()
STATE = {
    "rv": 100,
    "compacted": 0,
    "pods": {},          # (ns, name) -> pod object
    "events": [],        # (rv, type, ns, pod object)
    "leases": {},        # (ns, name) -> lease object
    "token": "",
    "fail": [],          # HTTP codes for the next API requests
    "stall_until": 0.0,
    "down_until": 0.0,
    "cut_gen": 0,        # disconnect generation
    "gone_gen": 0,       # ERROR 410 generation
    "fragment": False,
    "bookmark_interval": 1.0,
    "stats": {"lists": 0, "watches": 0, "unauthorized": 0, "injected": 0, "refused": 0,
              "requests": 0, "bookmarks": 0, "events_sent": 0, "gone_sent": 0,
              "watch_open": 0, "lease_conflicts": 0, "tokens_seen": [],
              "h2_connections": 0, "h2_streams": 0, "h1_connections": 0, "proxy_requests": 0,
              "proxy_by_pod": {}, "proxy_unauthorized": 0, "proxy_unreachable": 0,
              "proxy_faults": 0, "proxy_gzip": 0, "forbidden": 0, "forbidden_requests": []},
    "proxy": {},         # pod -> (host, port) the pod proxy dials instead of the hostIP
    "proxy_fault": {},   # pod (or "*") -> ("503",) | ("slow", seconds)
    "lease_barrier": 0,  # Lease GETs still to arrive before the held ones are answered
    "lease_delay": 0.0,  # seconds between applying a Lease update and answering it
    "list_delay": (0.0, 0),  # (seconds, how many more pod lists) answered that late
}


RBAC = {"rules": None, "user": ("kube-system", "cni-metrics-helper")}  # rules: None = allow all


def load_rbac(path, subject):
    """The rules that apply to subject (ns, name), each with the namespace it holds in (None: every
    namespace), from the rendered objects in path; and the Leases among them, stored as applied."""
    with open(path) as f:
        objs = json.load(f)
    ns, name = subject.split(":", 1)
    RBAC["user"] = (ns, name)
    roles = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("rules") or []
             for o in objs if o.get("kind") == "Role"}
    croles = {o["metadata"]["name"]: o.get("rules") or [] for o in objs if o.get("kind") == "ClusterRole"}
    rules = []
    for b in objs:
        if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(sub.get("kind") == "ServiceAccount" and sub.get("name") == name
                   and sub.get("namespace") == ns for sub in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        where = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        if ref["kind"] == "ClusterRole":
            got = croles.get(ref["name"], [])
        elif b["kind"] == "RoleBinding":
            got = roles.get((where, ref["name"]), [])
        else:
            got = []  # a ClusterRoleBinding cannot refer to a Role
        rules += [(where, r) for r in got]
    RBAC["rules"] = rules
    for o in objs:
        if o.get("kind") == "Lease":
            lease = copy.deepcopy(o)
            STATE["rv"] += 1
            lease["metadata"]["resourceVersion"] = str(STATE["rv"])
            lease.setdefault("spec", {})
            STATE["leases"][(lease["metadata"]["namespace"], lease["metadata"]["name"])] = lease


def request_attrs(method, path, query):
    """(verb, apiGroup, resource, namespace, name) of a request, as the API server reads it."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return (method.lower(), "", "", None, "")
    ns = None
    if len(rest) >= 2 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource += "/" + rest[2]  # a subresource (pods/proxy): named by its object
        name = name.split(":", 1)[0]
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("1", "true") else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method)
    return (verb, group, resource, ns, name)


def rbac_allowed(method, path):
    """None when allowed, else the Forbidden message; counts and records a refusal."""
    if RBAC["rules"] is None:
        return None
    url = urlsplit(path)
    q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    verb, group, resource, ns, name = request_attrs(method, url.path, q)
    for where, r in RBAC["rules"]:
        if where is not None and where != ns:
            continue
        if not any(x in ("*", verb) for x in r.get("verbs") or []):
            continue
        if not any(x in ("*", group) for x in r.get("apiGroups") or []):
            continue
        if not any(x in ("*", resource) for x in r.get("resources") or []):
            continue
        if r.get("resourceNames") and name not in r["resourceNames"]:
            continue
        return None
    what = "%s %s%s %s/%s" % (verb, group + "/" if group else "", resource, ns or "", name)
    with COND:
        STATE["stats"]["forbidden"] += 1
        if len(STATE["stats"]["forbidden_requests"]) < 200:
            STATE["stats"]["forbidden_requests"].append(what)
    user = "system:serviceaccount:%s:%s" % RBAC["user"]
    scope = ('in the namespace "%s"' % ns) if ns else "at the cluster scope"
    return ('%s%s "%s" is forbidden: User "%s" cannot %s resource "%s" in API group "%s" %s'
            % (resource, "." + group if group else "", name, user, verb, resource, group, scope))


def make_certs(d):
    testca.make_certs(d, ca="ca.crt", cert="srv.crt", ca_cn="fake kubernetes CA",
                      server_cn="kube-apiserver", san="IP:127.0.0.1,DNS:kubernetes.default.svc")


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def make_pod(ns, name, node, ip, phase, labels):
    """A pod shaped like a real aws-node pod, with the bulk the discovery must ignore."""
    env = [{"name": "ENV_%02d" % i, "value": "value-%d" % i} for i in range(24)]
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": "uid-" + name, "labels": labels,
                     "generateName": "aws-node-", "resourceVersion": "0",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": "aws-node", "controller": True}],
                     "annotations": {"note": "x" * 200}},
        "spec": {"nodeName": node, "hostNetwork": True, "serviceAccountName": "aws-node",
                 "containers": [{"name": "aws-node", "image": "amazon-k8s-cni:v1.19.0",
                                 "env": env, "ports": [{"containerPort": 61678,
                                                        "name": "metrics"}]}]},
        "status": {"phase": phase, "hostIP": ip, "podIP": ip,
                   "hostIPs": [{"ip": ip}] if ip else [],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def selector_match(sel, labels):
    for term in [t for t in sel.split(",") if t]:
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        else:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
    return True


def record(kind, ns, pod):
    """Appends an event; the caller holds COND."""
    STATE["rv"] += 1
    pod["metadata"]["resourceVersion"] = str(STATE["rv"])
    STATE["events"].append((STATE["rv"], kind, ns, copy.deepcopy(pod)))
    COND.notify_all()


def command(line):
    words = line.split()
    if not words:
        return "OK {}"
    op, args = words[0], words[1:]
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    pos = [a for a in args if "=" not in a]
    with COND:
        if op == "add":
            ns = kv.get("ns", "kube-system")
            labels = dict(t.split("=", 1) for t in kv.get("labels", "k8s-app=aws-node").split(","))
            name, node, ip = pos[0], pos[1], pos[2] if len(pos) > 2 else ""
            pod = make_pod(ns, name, node, ip, kv.get("phase", "Running"), labels)
            STATE["pods"][(ns, name)] = pod
            record("ADDED", ns, pod)
        elif op == "set":
            ns = kv.get("ns", "kube-system")
            pod = STATE["pods"][(ns, pos[0])]
            if "ip" in kv:
                pod["status"]["hostIP"] = kv["ip"]
                pod["status"]["podIP"] = kv["ip"]
            if "node" in kv:
                pod["spec"]["nodeName"] = kv["node"]
            if "phase" in kv:
                pod["status"]["phase"] = kv["phase"]
            record("MODIFIED", ns, pod)
        elif op == "storm":
            # storm NAME COUNT [same]: COUNT MODIFIED events for one pod, each flipping its phase
            # between Pending and Running (ending where it began when COUNT is even), or with
            # "same" changing only an annotation (nothing discovery keeps).
            ns = kv.get("ns", "kube-system")
            pod = STATE["pods"][(ns, pos[0])]
            for i in range(int(pos[1])):
                if len(pos) > 2 and pos[2] == "same":
                    pod["metadata"]["annotations"]["note"] = "storm-%d" % i
                else:
                    pod["status"]["phase"] = (
                        "Pending" if pod["status"]["phase"] == "Running" else "Running")
                record("MODIFIED", ns, pod)
        elif op == "del":
            ns = kv.get("ns", "kube-system")
            pod = STATE["pods"].pop((ns, pos[0]))
            record("DELETED", ns, pod)
        elif op == "compact":
            STATE["compacted"] = STATE["rv"]
        elif op == "gone":
            STATE["compacted"] = STATE["rv"]
            STATE["gone_gen"] += 1
            COND.notify_all()
        elif op == "disconnect":
            STATE["cut_gen"] += 1
            COND.notify_all()
        elif op == "fail":
            STATE["fail"] = [int(pos[1]) if len(pos) > 1 else 500] * int(pos[0])
        elif op == "stall":
            STATE["stall_until"] = time.monotonic() + float(pos[0])
            COND.notify_all()
        elif op == "down":
            STATE["down_until"] = time.monotonic() + float(pos[0])
            STATE["cut_gen"] += 1
            COND.notify_all()
        elif op == "node":
            STATE.setdefault("nodes", {})[pos[0]] = {
                "kind": "Node", "apiVersion": "v1",
                "metadata": {"name": pos[0], "labels": {"kubernetes.io/hostname": pos[0]}},
                "spec": {"providerID": pos[1]},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}
        elif op == "podenv":
            ns = kv.get("ns", "kube-system")
            pod = STATE["pods"][(ns, pos[0])]
            pod["spec"]["containers"][0]["env"].append({"name": pos[1], "value": pos[2]})
            record("MODIFIED", ns, pod)
        elif op == "eniconfig":
            # eniconfig NAME SUBNET: an ENIConfig (cluster-scoped; the CRD exists from then on).
            STATE.setdefault("eniconfigs", {})[pos[0]] = pos[1]
        elif op == "eniconfig-del":
            STATE.setdefault("eniconfigs", {}).pop(pos[0], None)
        elif op == "eniconfig-forbid":
            STATE["eniconfig_forbid"] = pos[0] == "on"
        elif op == "fragment":
            STATE["fragment"] = pos[0] == "on"
        elif op == "token":
            STATE["token"] = pos[0]
            if kv.get("file", "yes") != "no":
                tmp = ARGS.token_file + ".tmp"
                with open(tmp, "w") as f:
                    f.write(pos[0] + "\n")
                os.replace(tmp, ARGS.token_file)
        elif op == "listdelay":
            STATE["list_delay"] = (float(pos[0]), int(pos[1]) if len(pos) > 1 else 1)
        elif op == "leasedelay":
            STATE["lease_delay"] = float(pos[0])
        elif op == "leasebarrier":
            STATE["lease_barrier"] = int(pos[0])
        elif op == "lease":
            ns = kv.get("ns", "kube-system")
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            spec = {"acquireTime": now, "renewTime": now, "leaseTransitions": 0}
            if pos[1] != "-":
                spec["holderIdentity"] = pos[1]
            if pos[2] != "none":
                spec["leaseDurationSeconds"] = json.loads(pos[2])
            STATE["rv"] += 1
            STATE["leases"][(ns, pos[0])] = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": pos[0], "namespace": ns, "resourceVersion": str(STATE["rv"])},
                "spec": spec}
        elif op == "proxy":
            host, port = pos[1].rsplit(":", 1)
            STATE["proxy"][pos[0]] = (host, int(port))
        elif op == "proxyfault":
            kind = pos[1] if len(pos) > 1 else "slow=" + kv["slow"]
            if kind == "none":
                STATE["proxy_fault"].pop(pos[0], None)
            elif kind == "503":
                STATE["proxy_fault"][pos[0]] = ("503",)
            elif kind.startswith("slow="):
                STATE["proxy_fault"][pos[0]] = ("slow", float(kind[5:]))
            else:
                return "ERR unknown proxy fault " + kind
        elif op == "getlease":
            # getlease NAME [ns=kube-system]: the stored Lease (null when absent), past RBAC.
            return "OK " + json.dumps(STATE["leases"].get((kv.get("ns", "kube-system"), pos[0])))
        elif op == "stats":
            pass
        else:
            return "ERR unknown command " + op
        out = copy.deepcopy(STATE["stats"])
        out["rv"] = STATE["rv"]
        out["compacted"] = STATE["compacted"]
        return "OK " + json.dumps(out)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def verify_request(self, request, client_address):
        with COND:
            if time.monotonic() < STATE["down_until"]:
                STATE["stats"]["refused"] += 1
                return False
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def setup(self):
        self.request.settimeout(10)
        if not ARGS.plain_http:
            self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

    def handle(self):
        if not ARGS.plain_http and self.request.selected_alpn_protocol() == "h2":
            with COND:
                STATE["stats"]["h2_connections"] += 1
            return H2Connection(self.request).run()
        with COND:
            STATE["stats"]["h1_connections"] += 1
        return super().handle()

    def log_message(self, fmt, *args):
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def gate(self):
        """Token check and injected failures; True when the request may proceed."""
        auth = self.headers.get("Authorization", "")
        with COND:
            st = STATE["stats"]
            st["requests"] += 1
            tok = auth[7:] if auth.startswith("Bearer ") else ""
            if ARGS.plain_http:
                # kubectl proxy: the proxy authenticates; a client's own token in clear is
                # counted (a test proves none is sent) and the request stands for the proxy's.
                if auth:
                    st["plain_with_auth"] = st.get("plain_with_auth", 0) + 1
                tok = STATE["token"]
            if time.monotonic() < STATE["down_until"]:  # down: kept-alive connections too
                st["refused"] += 1
                self.close_connection = True
                return False
            if tok and tok not in st["tokens_seen"]:
                st["tokens_seen"].append(tok)
            if tok != STATE["token"]:
                st["unauthorized"] += 1
                code = None
            elif STATE["fail"]:
                code = STATE["fail"].pop(0)
                st["injected"] += 1
            else:
                code = 0
        if code == 0:
            forbidden = rbac_allowed(self.command, self.path)
            if forbidden is None:
                return True
            self.send_json(403, status(403, "Forbidden", forbidden))
        elif code is None:
            self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        else:
            self.send_json(code, status(code, "InternalError", "injected failure"))
        return False

    def body_json(self):
        n = int(self.headers.get("Content-Length", "0") or "0")
        try:
            return json.loads(self.rfile.read(n) or b"null")
        except ValueError:
            return None

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = url.path.strip("/").split("/")
        if not self.gate():
            return
        if len(parts) == 5 and parts[:2] == ["api", "v1"] and parts[4] == "pods":
            if q.get("watch") in ("1", "true"):
                return self.watch(parts[3], q)
            return self.list(parts[3], q)
        if len(parts) >= 7 and parts[4] == "pods" and parts[6] == "proxy":
            return self.proxy_h1(url.path)
        if len(parts) == 4 and parts[:3] == ["api", "v1", "nodes"]:
            with COND:
                node = STATE.get("nodes", {}).get(parts[3])
                STATE["stats"]["node_gets"] = STATE["stats"].get("node_gets", 0) + 1
            if node is None:
                return self.send_json(404, status(404, "NotFound", 'nodes "%s" not found' % parts[3]))
            return self.send_json(200, node)
        if parts == ["apis", "crd.k8s.amazonaws.com", "v1alpha1", "eniconfigs"]:
            with COND:
                enis = STATE.get("eniconfigs")
                STATE["stats"]["eniconfig_lists"] = STATE["stats"].get("eniconfig_lists", 0) + 1
                forbid = STATE.get("eniconfig_forbid", False)
            if forbid:  # what the API server answers a service account without the ClusterRole
                return self.send_json(403, status(
                    403, "Forbidden", 'eniconfigs.crd.k8s.amazonaws.com is forbidden: User '
                    '"system:serviceaccount:kube-system:cni-metrics-helper" cannot list resource '
                    '"eniconfigs" in API group "crd.k8s.amazonaws.com" at the cluster scope'))
            if enis is None:  # the CRD is not installed: 404, as the API server answers
                return self.send_json(404, status(404, "NotFound", "the server could not find "
                                                  "the requested resource"))
            return self.send_json(200, {"apiVersion": "crd.k8s.amazonaws.com/v1alpha1",
                                        "kind": "ENIConfigList", "metadata": {"resourceVersion": "1"},
                                        "items": [{"apiVersion": "crd.k8s.amazonaws.com/v1alpha1",
                                                   "kind": "ENIConfig", "metadata": {"name": n},
                                                   "spec": {"subnet": sn, "securityGroups": ["sg-1"]}}
                                                  for n, sn in sorted(enis.items())]})
        if len(parts) == 7 and parts[5] == "leases":
            with COND:
                if STATE["lease_barrier"] > 0:
                    STATE["lease_barrier"] -= 1
                    COND.notify_all()
                    COND.wait_for(lambda: STATE["lease_barrier"] == 0, timeout=5)
                    STATE["lease_barrier"] = 0
                lease = STATE["leases"].get((parts[4], parts[6]))
            if lease is None:
                return self.send_json(404, status(404, "NotFound", "lease not found"))
            return self.send_json(200, lease)
        self.send_json(404, status(404, "NotFound", "no route " + url.path))

    def do_POST(self):
        parts = urlsplit(self.path).path.strip("/").split("/")
        if not self.gate():
            return
        obj = self.body_json()
        if len(parts) != 6 or parts[5] != "leases" or not isinstance(obj, dict):
            return self.send_json(400, status(400, "BadRequest", "bad lease create"))
        name = obj.get("metadata", {}).get("name", "")
        with COND:
            if (parts[4], name) in STATE["leases"]:
                STATE["stats"]["lease_conflicts"] += 1
                return self.send_json(409, status(409, "AlreadyExists", "lease exists"))
            STATE["rv"] += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(STATE["rv"])
            obj["metadata"]["namespace"] = parts[4]
            STATE["leases"][(parts[4], name)] = obj
        self.send_json(201, obj)

    def do_PUT(self):
        parts = urlsplit(self.path).path.strip("/").split("/")
        if not self.gate():
            return
        obj = self.body_json()
        if len(parts) != 7 or parts[5] != "leases" or not isinstance(obj, dict):
            return self.send_json(400, status(400, "BadRequest", "bad lease update"))
        with COND:
            cur = STATE["leases"].get((parts[4], parts[6]))
            if cur is None:
                return self.send_json(404, status(404, "NotFound", "lease not found"))
            if obj.get("metadata", {}).get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                STATE["stats"]["lease_conflicts"] += 1
                return self.send_json(409, status(409, "Conflict", "the object has been modified"))
            STATE["rv"] += 1
            obj["metadata"]["resourceVersion"] = str(STATE["rv"])
            STATE["leases"][(parts[4], parts[6])] = obj
            delay = STATE["lease_delay"]
        if delay > 0:
            time.sleep(delay)
        self.send_json(200, obj)

    def proxy_h1(self, path):
        """The pod proxy over HTTP/1.1: the whole answer, then the connection closes."""
        self.close_connection = True
        events = list(proxy_events(path, "Bearer " + STATE["token"],
                                   self.headers.get("Accept-Encoding", "")))
        status, headers = events[0][1], events[0][2]
        body = b"".join(e[1] for e in events if e[0] == "data")
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # said, so a client does not reuse it
        self.end_headers()
        self.wfile.write(body)

    def list(self, ns, q):
        sel = q.get("labelSelector", "")
        limit = int(q.get("limit", "0") or "0")
        with COND:
            delay, n = STATE["list_delay"]
            if n > 0:
                STATE["list_delay"] = (delay, n - 1)
        if n > 0 and delay > 0:
            time.sleep(delay)
        with COND:
            STATE["stats"]["lists"] += 1
            list_rv, after = STATE["rv"], ""
            if q.get("continue"):
                try:
                    tok = json.loads(base64.urlsafe_b64decode(q["continue"]))
                except ValueError:
                    return self.send_json(400, status(400, "BadRequest", "bad continue token"))
                list_rv, after = tok["rv"], tok["after"]
                if list_rv < STATE["compacted"]:
                    return self.send_json(410, status(410, "Expired", "continue token expired"))
            pods = sorted(((n, p) for (pns, n), p in STATE["pods"].items()
                           if pns == ns and selector_match(sel, p["metadata"]["labels"])),
                          key=lambda x: x[0])
            pods = [p for n, p in pods if n > after]
            more = limit and len(pods) > limit
            pods = [copy.deepcopy(p) for p in (pods[:limit] if more else pods)]  # one page only
        meta = {"resourceVersion": str(list_rv)}
        if more:
            tok = {"rv": list_rv, "after": pods[-1]["metadata"]["name"]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(tok).encode()).decode()
        self.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta,
                             "items": pods})

    def chunk(self, data):
        pieces = [data[i:i + 7] for i in range(0, len(data), 7)] if STATE["fragment"] else [data]
        for p in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            self.wfile.flush()

    def watch(self, ns, q):
        sel = q.get("labelSelector", "")
        bookmarks = q.get("allowWatchBookmarks") == "true"
        deadline = time.monotonic() + float(q.get("timeoutSeconds", "1800") or "1800")
        try:
            since = int(q.get("resourceVersion", "0") or "0")
        except ValueError:
            return self.send_json(400, status(400, "BadRequest", "bad resourceVersion"))
        with COND:
            STATE["stats"]["watches"] += 1
            cut, gone = STATE["cut_gen"], STATE["gone_gen"]
            expired = since < STATE["compacted"]
            if since == 0:
                since = STATE["rv"]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        sent, next_bm = since, time.monotonic() + STATE["bookmark_interval"]
        with COND:
            STATE["stats"]["watch_open"] += 1
        try:
            if expired:
                return self.send_gone()
            while True:
                out = []
                with COND:
                    now = time.monotonic()
                    if STATE["cut_gen"] != cut:
                        self.close_connection = True
                        return  # no final chunk: the client sees a broken stream
                    if STATE["gone_gen"] != gone:
                        out = None
                    elif now >= STATE["stall_until"]:
                        for rv, kind, ens, pod in STATE["events"]:
                            if rv > sent and ens == ns and selector_match(
                                    sel, pod["metadata"]["labels"]):
                                out.append({"type": kind, "object": pod})
                            if rv > sent:
                                sent = rv
                        if bookmarks and now >= next_bm:
                            out.append({"type": "BOOKMARK", "object": {
                                "kind": "Pod", "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(sent)}}})
                            STATE["stats"]["bookmarks"] += 1
                            next_bm = now + STATE["bookmark_interval"]
                        STATE["stats"]["events_sent"] += len(out)
                if out is None:
                    return self.send_gone()
                for ev in out:
                    self.chunk(json.dumps(ev).encode() + b"\n")
                with COND:
                    stalled = time.monotonic() < STATE["stall_until"]
                if time.monotonic() >= deadline and not stalled:
                    break  # a stalled server does not even end the watch on time
                with COND:
                    COND.wait(0.05)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with COND:
                STATE["stats"]["watch_open"] -= 1

    def send_gone(self):
        with COND:
            STATE["stats"]["gone_sent"] += 1
        ev = {"type": "ERROR", "object": status(410, "Expired", "too old resource version")}
        self.chunk(json.dumps(ev).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def status_body(code, reason, message):
    return json.dumps(status(code, reason, message)).encode()


def proxy_events(path, auth, accept_encoding=""):
    """Yields ("headers", status, [(name, value)]), then ("data", bytes)..., then ("end",) or
    ("reset",): what the pod proxy answers for path (the gate included). Like the API server's
    proxy, the client's Accept-Encoding goes to the pod and the body comes back as the pod sent it
    (the count of requests that asked for gzip is in stats proxy_gzip)."""
    parts = path.strip("/").split("/")
    with COND:
        st = STATE["stats"]
        st["requests"] += 1
        tok = auth[7:] if auth.startswith("Bearer ") else ""
        if tok and tok not in st["tokens_seen"]:
            st["tokens_seen"].append(tok)
        if tok != STATE["token"]:
            st["unauthorized"] += 1
            st["proxy_unauthorized"] += 1
            ok = False
        else:
            ok = True
    jh = [("content-type", "application/json")]
    if not ok:
        yield ("headers", 401, jh)
        yield ("data", status_body(401, "Unauthorized", "Unauthorized"))
        yield ("end",)
        return
    forbidden = rbac_allowed("GET", path)
    if forbidden is not None:
        yield ("headers", 403, jh)
        yield ("data", status_body(403, "Forbidden", forbidden))
        yield ("end",)
        return
    if len(parts) < 7 or parts[:2] != ["api", "v1"] or parts[2] != "namespaces" or parts[4] != "pods":
        yield ("headers", 404, jh)
        yield ("data", status_body(404, "NotFound", "no route " + path))
        yield ("end",)
        return
    ns, pod_port, rest = parts[3], parts[5], "/" + "/".join(parts[7:])
    pod, _, port = pod_port.partition(":")
    with COND:
        st["proxy_requests"] += 1
        st["proxy_by_pod"][pod] = st["proxy_by_pod"].get(pod, 0) + 1
        fault = STATE["proxy_fault"].get(pod) or STATE["proxy_fault"].get("*")
        obj = STATE["pods"].get((ns, pod))
        target = STATE["proxy"].get(pod)
        if target is None and obj is not None:
            target = (obj["status"].get("hostIP", ""), int(port or "80"))
        if fault:
            st["proxy_faults"] += 1
    if obj is None:
        yield ("headers", 404, jh)
        yield ("data", status_body(404, "NotFound", 'pods "%s" not found' % pod))
        yield ("end",)
        return
    if fault and fault[0] == "slow":
        time.sleep(fault[1])
    if fault and fault[0] == "503":
        yield ("headers", 503, jh)
        yield ("data", status_body(503, "ServiceUnavailable",
                                   "error trying to reach service: injected fault"))
        yield ("end",)
        return
    try:
        c = http.client.HTTPConnection(target[0], target[1], timeout=10)
        fwd = {"Accept": "text/plain", "Connection": "close"}
        if accept_encoding:
            fwd["Accept-Encoding"] = accept_encoding
            if "gzip" in accept_encoding:
                with COND:
                    st["proxy_gzip"] += 1
        c.request("GET", rest, headers=fwd)
        r = c.getresponse()
    except OSError as e:
        with COND:
            st["proxy_unreachable"] += 1
        yield ("headers", 503, jh)
        yield ("data", status_body(503, "ServiceUnavailable",
                                   "error trying to reach service: dial tcp %s:%s: %s"
                                   % (target[0], target[1], e)))
        yield ("end",)
        return
    except http.client.HTTPException:
        yield ("headers", 502, jh)
        yield ("data", status_body(502, "BadGateway", "bad answer from the pod"))
        yield ("end",)
        return
    hdrs = [(k.lower(), v) for k, v in r.getheaders()
            if k.lower() in ("content-type", "content-encoding")]
    yield ("headers", r.status, hdrs)
    try:
        while True:
            chunk = r.read1(16384)
            if not chunk:
                break
            yield ("data", chunk)
        if r.length:
            # The pod closed before its Content-Length: a reverse proxy resets the stream.
            yield ("reset",)
            return
    except (OSError, http.client.HTTPException):
        yield ("reset",)
        return
    finally:
        c.close()
    yield ("end",)


class H2Connection:
    """One HTTP/2 connection: this thread alone reads and writes the TLS socket; each request runs
    in a worker thread that feeds its answer through a queue, sent as flow control allows."""

    def __init__(self, sock):
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.out = queue.Queue()     # (stream id, event) from workers
        self.wake_r, self.wake_w = socket.socketpair()
        self.pending = {}            # stream id -> bytes waiting for window
        self.ending = {}             # stream id -> "end" or "reset", once pending is sent
        self.dead = set()            # streams reset by the client

    def run(self):
        try:
            self.conn.initiate_connection()
            self.flush()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if self.sock.pending() == 0:
                    r, _, _ = select.select([self.sock, self.wake_r], [], [], 0.5)
                else:
                    r = [self.sock]
                if self.wake_r in r:
                    self.wake_r.recv(4096)
                if self.sock in r:
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    try:
                        events = self.conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        self.flush()
                        return
                    for ev in events:
                        if not self.on_event(ev):
                            self.flush()
                            return
                self.drain_workers()
                self.send_pending()
                self.flush()
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.wake_r.close()
            self.wake_w.close()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def on_event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            with COND:
                STATE["stats"]["h2_streams"] += 1
            h = dict(ev.headers)
            threading.Thread(target=self.worker, daemon=True,
                             args=(ev.stream_id, h.get(":method", ""), h.get(":path", ""),
                                   h.get("authorization", ""),
                                   h.get("accept-encoding", ""))).start()
        elif isinstance(ev, h2.events.DataReceived):
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            self.dead.add(ev.stream_id)
            self.pending.pop(ev.stream_id, None)
            self.ending.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            return False
        return True

    def worker(self, sid, method, path, auth, accept_encoding):
        try:
            if method != "GET":
                events = iter([("headers", 405, []), ("end",)])
            else:
                events = proxy_events(urlsplit(path).path, auth, accept_encoding)
            for e in events:
                self.out.put((sid, e))
                self.wake_w.send(b"x")
        except OSError:
            pass

    def drain_workers(self):
        while True:
            try:
                sid, e = self.out.get_nowait()
            except queue.Empty:
                return
            if sid in self.dead:
                continue
            try:
                if e[0] == "headers":
                    self.conn.send_headers(sid, [(":status", str(e[1]))] + list(e[2]))
                elif e[0] == "data":
                    self.pending.setdefault(sid, bytearray()).extend(e[1])
                elif e[0] in ("end", "reset"):
                    # What the pod sent before it broke off still goes out first.
                    self.ending[sid] = e[0]
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.dead.add(sid)

    def send_pending(self):
        for sid in list(self.pending) + [s for s in self.ending if s not in self.pending]:
            if sid in self.dead:
                self.pending.pop(sid, None)
                self.ending.pop(sid, None)
                continue
            buf = self.pending.get(sid, bytearray())
            try:
                off = 0
                while off < len(buf):
                    n = min(len(buf) - off, self.conn.local_flow_control_window(sid),
                            self.conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    self.conn.send_data(sid, bytes(buf[off:off + n]))
                    off += n
                del buf[:off]
                if buf:
                    continue
                self.pending.pop(sid, None)
                how = self.ending.pop(sid, None)
                if how == "end":
                    self.conn.end_stream(sid)
                elif how == "reset":
                    self.conn.reset_stream(sid, error_code=2)
                    self.dead.add(sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.dead.add(sid)
                self.pending.pop(sid, None)
                self.ending.pop(sid, None)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--token", default="token-0")
    ap.add_argument("--lifetime", type=float, default=300)
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ap.add_argument("--plain-http", action="store_true",
                    help="serve plain http and no token checks, as `kubectl proxy` in front of the API")
    ap.add_argument("--rbac", help="JSON list of rendered objects: enforce their RBAC, apply their Leases")
    ap.add_argument("--rbac-subject", default="kube-system:cni-metrics-helper",
                    help="NS:NAME, the ServiceAccount the token stands for")
    ARGS = ap.parse_args()
    if ARGS.rbac:
        load_rbac(ARGS.rbac, ARGS.rbac_subject)
    d = tempfile.mkdtemp(prefix="fake-k8s-")
    try:
        make_certs(d)
        STATE["token"] = ARGS.token
        STATE["bookmark_interval"] = ARGS.bookmark_interval
        with open(ARGS.token_file, "w") as f:
            f.write(ARGS.token + "\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "srv.crt"), os.path.join(d, "srv.key"))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        srv = Server(("127.0.0.1", 0), Handler)
        if not ARGS.plain_http:
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True,
                                         do_handshake_on_connect=False)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        ca = os.path.join(ARGS.token_file + ".ca.crt")
        shutil.copy(os.path.join(d, "ca.crt"), ca)
        print("READY port=%d ca=%s token_file=%s" % (srv.server_address[1], ca, ARGS.token_file),
              flush=True)
        end = time.monotonic() + ARGS.lifetime
        stop = threading.Event()
        threading.Thread(target=lambda: (stop.wait(max(0, end - time.monotonic())),
                                         os._exit(0)), daemon=True).start()
        for line in sys.stdin:
            try:
                print(command(line), flush=True)
            except (KeyError, IndexError, ValueError) as e:
                print("ERR %s" % e, flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
