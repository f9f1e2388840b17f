#!/usr/bin/python3
"""Fake Kubernetes API server for the discovery and leader-election tests (loopback only).

Makes a throw-away CA and a server certificate for 127.0.0.1 with the openssl CLI, writes a
service-account token to --token-file, listens on 127.0.0.1:<kernel-chosen port> with TLS and
prints one line
    READY port=<port> ca=<CA PEM path> token_file=<path>
then serves until its standard input closes or --lifetime seconds pass.

API (every request needs "Authorization: Bearer <current token>", else 401):
  GET  /api/v1/namespaces/{ns}/pods?labelSelector=&limit=&continue=   PodList, paginated
  GET  /api/v1/namespaces/{ns}/pods?watch=1&resourceVersion=&allowWatchBookmarks=&timeoutSeconds=
       chunked stream of newline-delimited events (ADDED, MODIFIED, DELETED, BOOKMARK, and
       ERROR with a 410 Status when the resourceVersion is older than the last compaction)
  GET/PUT /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}, POST .../leases
       Lease get/create/update; update needs the current metadata.resourceVersion (else 409)

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
  token NEW          rotate the token: write NEW to the token file; only NEW is accepted
  stats              counters (lists, watches, unauthorized, injected failures, ...)
"""
import argparse
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
              "watch_open": 0, "lease_conflicts": 0, "tokens_seen": []},
}


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
        elif op == "fragment":
            STATE["fragment"] = pos[0] == "on"
        elif op == "token":
            STATE["token"] = pos[0]
            tmp = ARGS.token_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(pos[0] + "\n")
            os.replace(tmp, ARGS.token_file)
        elif op == "stats":
            pass
        else:
            return "ERR unknown command " + op
        out = dict(STATE["stats"])
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
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

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
            if tok and tok not in st["tokens_seen"]:
                st["tokens_seen"].append(tok)
            if tok != STATE["token"]:
                st["unauthorized"] += 1
                code = None
            elif STATE["fail"]:
                code = STATE["fail"].pop(0)
                st["injected"] += 1
            else:
                return True
        if code is None:
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
        if len(parts) == 7 and parts[5] == "leases":
            with COND:
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
        self.send_json(200, obj)

    def list(self, ns, q):
        sel = q.get("labelSelector", "")
        limit = int(q.get("limit", "0") or "0")
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
            pods = [copy.deepcopy(p) for n, p in pods if n > after]
        meta = {"resourceVersion": str(list_rv)}
        if limit and len(pods) > limit:
            pods = pods[:limit]
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


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--token", default="token-0")
    ap.add_argument("--lifetime", type=float, default=300)
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ARGS = ap.parse_args()
    d = tempfile.mkdtemp(prefix="fake-k8s-")
    try:
        make_certs(d)
        STATE["token"] = ARGS.token
        STATE["bookmark_interval"] = ARGS.bookmark_interval
        with open(ARGS.token_file, "w") as f:
            f.write(ARGS.token + "\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "srv.crt"), os.path.join(d, "srv.key"))
        srv = Server(("127.0.0.1", 0), Handler)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
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
