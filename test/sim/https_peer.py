#!/usr/bin/python3
"""Scripted loopback HTTP/HTTPS peer for the curl_uv tests.

Makes a throw-away CA and server certificate with the openssl CLI, then listens on three
127.0.0.1 ports picked by the kernel: plain HTTP, HTTPS with a certificate from that CA, and
HTTPS with a self-signed ("rogue") certificate nobody trusts. Prints one line
    READY http=<port> https=<port> rogue=<port> ca=<path of the CA PEM>
and serves until its standard input closes or --lifetime seconds pass.

Routes (every listener): /ok, /echo (method, path, headers and body back as JSON), /stall (never
answers), /reset (TCP RST after reading the request), /big?n=N (N bytes, Content-Length),
/bigchunked?n=N (N bytes, chunked), /429 (Retry-After: 7), /429date (Retry-After as an HTTP date
two minutes ahead), /stats (accepted TCP connections per listener, as JSON).
"""
import argparse
import email.utils
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import testca  # noqa: E402  (test/sim/testca.py, beside this file)

ACCEPTS = {"http": 0, "https": 0, "rogue": 0}
LOCK = threading.Lock()


def make_certs(d):
    testca.make_certs(d, rogue=True)


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

    def send_body(self, status, body, ctype="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        n = int(q.get("n", ["0"])[0])
        length = int(self.headers.get("Content-Length", "0") or "0")
        body = self.rfile.read(length) if length else b""
        if url.path == "/ok":
            self.send_body(200, b"hello\n")
        elif url.path == "/echo":
            doc = {"method": self.command, "path": self.path,
                   "headers": [[k, v] for k, v in self.headers.items()], "body_hex": body.hex()}
            self.send_body(200, json.dumps(doc).encode(), "application/json")
        elif url.path == "/stall":
            time.sleep(20)
            self.close_connection = True
        elif url.path == "/reset":
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            if isinstance(self.request, ssl.SSLSocket):
                # Close the TCP socket under TLS without a close_notify: a real reset.
                os.close(self.request.detach())
            else:
                self.request.close()
        elif url.path == "/big":
            self.send_body(200, b"x" * n)
        elif url.path == "/bigchunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            left = n
            while left > 0:
                c = min(1000, left)
                self.wfile.write(b"%x\r\n" % c + b"y" * c + b"\r\n")
                left -= c
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/429":
            self.send_body(429, b"slow down", extra=[("Retry-After", "7")])
        elif url.path == "/429date":
            when = email.utils.formatdate(time.time() + 120, usegmt=True)
            self.send_body(429, b"slow down", extra=[("Retry-After", when)])
        elif url.path == "/stats":
            with LOCK:
                self.send_body(200, json.dumps(ACCEPTS).encode(), "application/json")
        else:
            self.send_body(404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, name, tls_ctx):
        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        if tls_ctx is not None:
            self.socket = tls_ctx.wrap_socket(self.socket, server_side=True,
                                              do_handshake_on_connect=False)

    def get_request(self):
        conn = super().get_request()
        with LOCK:
            ACCEPTS[self.name] += 1
        return conn

    def handle_error(self, request, client_address):
        pass  # handshakes refused by the client, resets: expected here


def tls_context(d, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(d, cert), os.path.join(d, key))
    return ctx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifetime", type=float, default=120)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cmh-peer-")
    try:
        make_certs(d)
        servers = {"http": Server("http", None),
                   "https": Server("https", tls_context(d, "srv.pem", "srv.key")),
                   "rogue": Server("rogue", tls_context(d, "rogue.pem", "rogue.key"))}
        for s in servers.values():
            threading.Thread(target=s.serve_forever, daemon=True).start()
        print("READY http=%d https=%d rogue=%d ca=%s" % (
            servers["http"].server_address[1], servers["https"].server_address[1],
            servers["rogue"].server_address[1], os.path.join(d, "ca.pem")), flush=True)
        # Serve until the test closes our stdin (or dies), bounded by the lifetime.
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait(args.lifetime)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
