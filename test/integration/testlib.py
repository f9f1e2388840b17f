"""What every Python integration test shares: named checks, the closing line CI reads
("N passed, N failed") with the exit status, and the daemon's plumbing (its JSON log read up to
an event, a bounded stop, its /metrics page parsed)."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

failures = []
_passed = [0]


def check(name, cond, detail=""):
    """Records one check; returns cond so a test can stop early on a failed precondition."""
    if cond:
        _passed[0] += 1
    else:
        failures.append(f"{name}: {detail}")
    return cond


def finish():
    for f in failures:
        print("FAIL", f)
    print(f"{_passed[0]} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


def read_events(proc, msg, limit_s=20, each=None, max_lines=100000):
    """Reads the daemon's JSON log (proc.stderr, text) until the event whose "msg" is msg, at most
    limit_s seconds and max_lines lines; each(ev), when given, sees every event read, that one
    included. Returns the event, or None (time or lines spent, or the log closed)."""
    deadline = time.monotonic() + limit_s
    for _ in range(max_lines):
        if time.monotonic() > deadline:
            return None
        line = proc.stderr.readline()
        if not line:
            return None
        ev = json.loads(line)
        if each is not None:
            each(ev)
        if ev.get("msg") == msg:
            return ev
    return None


def stop_proc(p, sig=signal.SIGTERM, timeout=15):
    """Sends sig and waits (bounded; killed after timeout). The exit status, or None when it had
    to be killed (or p is None)."""
    if p is None or p.poll() is not None:
        return p.returncode if p is not None else None
    p.send_signal(sig)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
        return None


def parse_metrics(body):
    """Every sample of a Prometheus text page: 'name{labels}' -> float."""
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def http(url, method="GET", body=None, timeout=10):
    """The answer's body to a request (body, when given, sent as JSON); raises on an error status."""
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def http_status(url, timeout=10):
    """(status, text) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def spawn_ipamd_sim(build, data, tmp, nodes, base, seed=None, truth=True):
    """The ipamD fleet simulator serving cni_test1.data: `nodes` endpoints from address `base`, one
    worker, the target list ("name ip port" lines) in tmp/targets and, with truth, the truth files
    in tmp. Returns the Popen; its first stdout line says READY with the control address."""
    args = [os.path.join(build, "test", "ipamd_sim"), "--nodes", str(nodes), "--base", base,
            "--template", os.path.join(data, "ipamd/cni_test1.data"),
            "--targets-out", os.path.join(tmp, "targets"), "--workers", "1"]
    if seed is not None:
        args += ["--seed", str(seed)]
    if truth:
        args += ["--truth-dir", tmp]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def spawn_cloudwatch_standin(src, key, region, lifetime, *extra):
    """test/sim/cloudwatch_standin.py (botocore checks every request) on 127.0.0.1, accepting the
    credentials `key` ("AKID:secret[:token]") in `region`; extra arguments follow. Returns (Popen,
    its base URL, or None when it did not start); it exits when its stdin is closed or after
    `lifetime` seconds."""
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(src, "test/sim/cloudwatch_standin.py"),
                          "--key", key, "--region", region, "--lifetime", str(lifetime), *extra],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r"http=(\d+)", p.stdout.readline())
    return p, ("http://127.0.0.1:%s" % m.group(1)) if m else None


def stop_all(daemon, peers, sim, control):
    """Ends a test that ran a daemon, stand-ins reading their stdin (closed: they exit) and the
    ipamD simulator (asked to quit on its control URL, then terminated); every wait bounded."""
    if daemon is not None:
        daemon.kill()
        daemon.wait()
    for p in peers:
        p.stdin.close()
        p.wait(timeout=10)
    try:
        http(control + "/quit", "POST")
    except Exception:
        pass
    sim.terminate()
    sim.wait(timeout=10)


def serve_ipamd(body_for_scrape):
    """A scripted ipamD on 127.0.0.1 (port of the kernel's choosing): the n-th scrape (from 1) is
    answered 200 with body_for_scrape(n) as Prometheus text. Returns (server, port)."""
    lock, count = threading.Lock(), [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                count[0] += 1
                n = count[0]
            body = body_for_scrape(n)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]
