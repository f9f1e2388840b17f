#!/usr/bin/python3
"""Loopback stand-in for the AWS credential endpoints: IMDSv2, ECS / EKS Pod Identity container
credentials (plain HTTP listener) and STS (HTTPS listener, certificate from a CA made at start).

It never invents behaviour of its own: it replays recorded traffic (smithy-rs
`default-credential-provider-chain/<case>/http-traffic.json` from test/data/aws/), serves
the amazon-ec2-metadata-mock (AEMM) default IMDS tree, or follows a script the test sends, and it
counts and logs every request so a test can prove that nothing (or exactly what) was asked.

Prints one line on stdout:  READY http=<port> https=<port> ca=<path of the CA PEM>
then reads commands, one JSON object a line, on stdin and answers each with one JSON line:
  {"cmd":"replay","case":"<dir>"}   queue the exchanges of <dir>/http-traffic.json, in order
  {"cmd":"script","exchanges":[{"method":..,"path":..,"status":..,"headers":{..},"body":..,
        "stall":seconds,"expect_headers":{..}}]}    queue scripted exchanges ("{{EXP+N}}" in a body
        becomes the ISO-8601 UTC time N seconds from now)
  {"cmd":"aemm","extra":{path: value}}   serve the AEMM IMDS tree (IMDSv2 token enforced)
  {"cmd":"log"}     -> {"requests":[...],"mismatches":[...],"left":<exchanges not yet served>}
  {"cmd":"reset"}   forget queue, mode and log
Exits when stdin closes or --lifetime seconds pass. Binds 127.0.0.1 only.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import testca  # noqa: E402  (test/sim/testca.py, beside this file)

LOCK = threading.Lock()
STATE = {"queue": [], "log": [], "mismatches": [], "aemm": None, "token": None}
# Recorded request headers a client must reproduce exactly (the rest are SDK user agents etc.).
SIGNIFICANT = ("x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds")


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def expand(body):
    out, i = [], 0
    while True:
        j = body.find("{{EXP+", i)
        if j < 0:
            out.append(body[i:])
            return "".join(out)
        k = body.index("}}", j)
        out.append(body[i:j])
        out.append(iso(time.time() + int(body[j + 6:k])))
        i = k + 2


def load_replay(case_dir):
    with open(os.path.join(case_dir, "http-traffic.json")) as f:
        events = json.load(f)["events"]
    conns = {}
    order = []
    for e in events:
        cid, a = e["connection_id"], e["action"]
        if cid not in conns:
            conns[cid] = {"body": "", "reqbody": "", "headers": {}, "status": None}
            order.append(cid)
        c = conns[cid]
        if "Request" in a:
            r = a["Request"]["request"]
            u = urlsplit(r["uri"])
            c["method"] = r["method"]
            c["path"] = u.path + ("?" + u.query if u.query else "")
            c["expect_headers"] = {k: v[0] for k, v in r["headers"].items() if k in SIGNIFICANT}
        elif "Response" in a:
            ok = a["Response"]["response"]["Ok"]
            c["status"] = ok["status"]
            c["headers"] = {k: v[0] for k, v in ok["headers"].items()
                            if k not in ("content-length", "connection")}
        elif "Data" in a:
            d = a["Data"]
            key = "body" if d["direction"] == "Response" else "reqbody"
            c[key] += d["data"]["Utf8"]
    return [conns[c] for c in order]


def aemm_tree(data, extra):
    with open(os.path.join(data, "aws/amazon-ec2-metadata-mock/"
                           "aemm-metadata-default-values.json")) as f:
        d = json.load(f)
    tree = {}
    for part in ("metadata", "dynamic"):
        for k, p in d[part]["paths"].items():
            v = d[part]["values"].get(k)
            if v is None:
                continue
            tree[p] = json.dumps(v, indent="\t") if isinstance(v, (dict, list)) else str(v)
    tree.update(extra or {})
    return tree


def aemm_answer(tree, path):
    if path in tree:
        return 200, tree[path]
    prefix = path if path.endswith("/") else path + "/"
    kids = sorted({p[len(prefix):].split("/")[0] for p in tree if p.startswith(prefix)})
    if kids:
        return 200, "\n".join(kids)
    return 404, None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, headers=None):
        data = body.encode() if isinstance(body, str) else (body or b"")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        n = int(self.headers.get("Content-Length", "0") or "0")
        body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        listener = self.server.name
        with LOCK:
            STATE["log"].append({"listener": listener, "method": self.command, "path": self.path,
                                 "headers": hdrs, "body": body})
            aemm = STATE["aemm"]
            ex = None if aemm is not None or not STATE["queue"] else STATE["queue"].pop(0)
        if aemm is not None:
            return self.serve_aemm(aemm, hdrs)
        if ex is None:
            with LOCK:
                STATE["mismatches"].append("unexpected %s %s" % (self.command, self.path))
            return self.reply(500, "stand-in: no exchange queued")
        if ex.get("method") != self.command or ex.get("path") != self.path:
            with LOCK:
                STATE["mismatches"].append("expected %s %s, got %s %s" % (
                    ex.get("method"), ex.get("path"), self.command, self.path))
            return self.reply(500, "stand-in: unexpected request")
        for k, v in ex.get("expect_headers", {}).items():
            if hdrs.get(k) != v:
                with LOCK:
                    STATE["mismatches"].append("%s %s: header %s is %r, recorded %r" % (
                        self.command, self.path, k, hdrs.get(k), v))
        if ex.get("stall"):
            time.sleep(ex["stall"])
            self.close_connection = True
            return
        self.reply(ex["status"], expand(ex.get("body", "")), ex.get("headers"))

    def serve_aemm(self, tree, hdrs):
        if self.command == "PUT" and self.path == "/latest/api/token":
            if "x-aws-ec2-metadata-token-ttl-seconds" not in hdrs:
                return self.reply(400, "missing ttl")
            with LOCK:
                STATE["token"] = "aemm-token-%d" % len(STATE["log"])
                tok = STATE["token"]
            return self.reply(200, tok, {"x-aws-ec2-metadata-token-ttl-seconds":
                                         hdrs["x-aws-ec2-metadata-token-ttl-seconds"]})
        with LOCK:
            tok = STATE["token"]
        if self.command != "GET" or tok is None or hdrs.get("x-aws-ec2-metadata-token") != tok:
            return self.reply(401, "")  # IMDSv2 only: no token, no answer
        status, body = aemm_answer(tree, self.path)
        self.reply(status, body if body is not None else "", {"content-type": "text/plain"})

    do_GET = do_POST = do_PUT = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name, ctx):
        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        if ctx is not None:
            self.socket = ctx.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        pass


def make_certs(d):
    testca.make_certs(d, ca_cn="cmh aws stand-in CA")


def command(cmd, data):
    with LOCK:
        c = cmd.get("cmd")
        if c == "replay":
            STATE["queue"] = load_replay(cmd["case"])
            STATE["aemm"] = None
            return {"ok": True, "n": len(STATE["queue"])}
        if c == "script":
            STATE["queue"] = list(cmd["exchanges"])
            STATE["aemm"] = None
            return {"ok": True, "n": len(STATE["queue"])}
        if c == "aemm":
            STATE["aemm"] = aemm_tree(data, cmd.get("extra"))
            STATE["token"] = None
            return {"ok": True}
        if c == "log":
            return {"requests": STATE["log"], "mismatches": STATE["mismatches"],
                    "left": len(STATE["queue"])}
        if c == "reset":
            STATE.update(queue=[], log=[], mismatches=[], aemm=None, token=None)
            return {"ok": True}
    return {"error": "unknown command"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifetime", type=float, default=120)
    ap.add_argument("--data", default=os.environ.get("CMH_DATA_DIR", ""))
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cmh-aws-standin-")
    try:
        make_certs(d)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "srv.pem"), os.path.join(d, "srv.key"))
        servers = [Server("http", None), Server("https", ctx)]
        for s in servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        print("READY http=%d https=%d ca=%s" % (servers[0].server_address[1],
                                                servers[1].server_address[1],
                                                os.path.join(d, "ca.pem")), flush=True)
        deadline = time.time() + args.lifetime

        def watchdog():
            time.sleep(max(0.0, deadline - time.time()))
            shutil.rmtree(d, ignore_errors=True)
            os._exit(0)
        threading.Thread(target=watchdog, daemon=True).start()
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                out = command(json.loads(line), args.data)
            except Exception as e:  # a broken command is the test's bug: say so, keep serving
                out = {"error": repr(e)}
            print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
