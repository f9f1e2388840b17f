#!/usr/bin/python3
"""Loopback HTTPS stand-in for STS AssumeRole (Query protocol, Version 2011-06-15), checked as STS
would with botocore as the independent oracle:
  - the SigV4 signature (service "sts", --region) is recomputed with botocore from the bytes
    received and the source credentials it knows (--key ID:SECRET[:TOKEN]);
  - the form body is read back into AssumeRole's parameters and validated with botocore against
    the STS model (RoleArn, RoleSessionName required; unknown parameters refused);
  - --role names the only role that may be assumed (else 403 AccessDenied).
It answers an AssumeRoleResponse carrying --issue ID:SECRET:TOKEN, expiring in an hour.

Prints one line:  READY https=<port> ca=<--ca-out>   and serves on 127.0.0.1 until stdin
closes or --lifetime seconds pass. GET /stats: {"requests", "assumed", "bad_signature",
"invalid", "denied", "calls": [{"RoleArn", "RoleSessionName", "key"}], "errors": [...]}.
"""
import argparse
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import botocore.session
import botocore.validate

import standin_common  # noqa: E402  (test/sim/standin_common.py, beside this file)
import testca  # noqa: E402

OP = botocore.session.get_session().get_service_model("sts").operation_model("AssumeRole")
LOCK = threading.Lock()
STATS = {"requests": 0, "assumed": 0, "bad_signature": 0, "invalid": 0, "denied": 0, "calls": [],
         "errors": []}


def error_xml(code, message):
    return ("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>"
            "<Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>"
            "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
            % (escape(code), escape(message)))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="text/xml"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                return self.reply(200, json.dumps(STATS), "application/json")
        self.reply(404, error_xml("NotFound", self.path))

    def fail(self, status, kind, code, message):
        with LOCK:
            STATS[kind] += 1
            STATS["errors"].append("%s: %s" % (code, message))
        self.reply(status, error_xml(code, message))

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with LOCK:
            STATS["requests"] += 1
        why = standin_common.check_signature(self, body, "sts", ARGS.region, KEYS)
        if why is not None:
            return self.fail(403, "bad_signature", "SignatureDoesNotMatch", why)
        try:
            form = dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))
        except (ValueError, UnicodeDecodeError):
            return self.fail(400, "invalid", "MalformedQueryString", "form body does not parse")
        if form.pop("Action", None) != "AssumeRole" or form.pop("Version", None) != "2011-06-15":
            return self.fail(400, "invalid", "InvalidAction", "not AssumeRole 2011-06-15")
        report = botocore.validate.ParamValidator().validate(form, OP.input_shape)
        if report.has_errors():
            return self.fail(400, "invalid", "ValidationError", report.generate_report())
        if form["RoleArn"] != ARGS.role:
            return self.fail(403, "denied", "AccessDenied", "not authorized to assume " + form["RoleArn"])
        akid, secret, token = ARGS.issue.split(":", 2)
        exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        with LOCK:
            STATS["assumed"] += 1
            STATS["calls"].append({"RoleArn": form["RoleArn"],
                                   "RoleSessionName": form["RoleSessionName"],
                                   "key": self.headers.get("Authorization", "").split("Credential=")[1]
                                   .split("/")[0]})
        self.reply(200, (
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
            "<AssumeRoleResult><AssumedRoleUser><AssumedRoleId>AROA:%s</AssumedRoleId>"
            "<Arn>%s</Arn></AssumedRoleUser><Credentials><AccessKeyId>%s</AccessKeyId>"
            "<SecretAccessKey>%s</SecretAccessKey><SessionToken>%s</SessionToken>"
            "<Expiration>%s</Expiration></Credentials></AssumeRoleResult>"
            "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>"
            % (escape(form["RoleSessionName"]), escape(form["RoleArn"]), escape(akid),
               escape(secret), escape(token), exp)))


def main():
    global ARGS, KEYS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    standin_common.add_common_args(ap)
    ap.add_argument("--role", required=True, help="the role ARN that may be assumed")
    ap.add_argument("--issue", required=True, help="ID:SECRET:TOKEN handed out")
    ap.add_argument("--ca-out", required=True, help="where to write the CA certificate (PEM)")
    ARGS = ap.parse_args()
    KEYS = standin_common.parse_keys(ARGS.key)
    d = tempfile.mkdtemp(prefix="cmh-sts-standin-")
    testca.make_certs(d)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(d, "srv.pem"), os.path.join(d, "srv.key"))
    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    shutil.copy(os.path.join(d, "ca.pem"), ARGS.ca_out)
    shutil.rmtree(d, ignore_errors=True)  # the key is loaded: nothing left to keep
    standin_common.serve_until_stdin_closes(
        [srv], "READY https=%d ca=%s" % (srv.server_address[1], ARGS.ca_out), ARGS.lifetime)


if __name__ == "__main__":
    sys.exit(main())
