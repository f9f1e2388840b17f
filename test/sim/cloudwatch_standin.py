#!/usr/bin/python3
"""Loopback stand-in for CloudWatch PutMetricData (AWS Query protocol).

Every request is checked the way CloudWatch would, with botocore as the independent oracle:
  - the SigV4 signature is recomputed with botocore.auth.SigV4Auth from the bytes received
    (gzip body as sent) and the credentials the stand-in knows (--key ID:SECRET[:TOKEN]);
  - the form body (gzip accepted) is parsed back into PutMetricData's parameter structure by
    walking botocore's CloudWatch model, then validated with botocore.validate;
  - then CloudWatch's own rules the model does not carry: at most 1000 datums and 1 MB, value
    range, no NaN, timestamps within two weeks past / two hours future, distinct dimensions.
Accepted datums are recorded (and answered with the real PutMetricData XML); rejected requests
get CloudWatch's XML error.

Prints one line:  READY http=<port> [https=<port> ca=<path>]   and serves on 127.0.0.1 until
stdin closes or --lifetime seconds pass. Control routes (plain JSON, on the same port):
  GET  /datums        every recorded datum, in arrival order
  GET  /stats         counters: requests, accepted, by fault / rejection, duplicates, bad_sig...
  POST /faults        {"script":[FAULT, ...]} faults for the next requests, in order, then normal;
                      {"random":{"rate":0.3,"kinds":[...],"seed":1}} a fault with probability
                      rate for every request; {"poison":["metricName", ...]} any request holding
                      one of these metrics is refused with InvalidParameterValue (as a datum
                      CloudWatch refuses would be); {"down":true} resets every connection;
                      {"clear":true} forgets all of it.
  POST /reset         forget datums, counters and faults
FAULT: "ok", "throttle" (400 Throttling), "throttle429", "500", "503", "stall" (no answer for
--stall seconds), "reset" (half an answer, then TCP RST), "reset_early" (RST before any
answer byte), "denied" (403 AccessDenied), "expired" (403 ExpiredToken),
"invalid" (400 InvalidParameterValue), "307" (a redirect elsewhere, no body), or
{"kind":..., "retry_after":seconds}.
"""
import argparse
import datetime
import gzip
import json
import math
import os
import random
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import botocore.session
import botocore.validate

import standin_common  # noqa: E402  (test/sim/standin_common.py, beside this file)
import testca  # noqa: E402  (test/sim/testca.py, beside this file)

SESSION = botocore.session.get_session()
MODEL = SESSION.get_service_model("cloudwatch")
OP = MODEL.operation_model("PutMetricData")
XMLNS = MODEL.metadata["xmlNamespace"]

# The "reset" fault's half answer, before the RST.
HALF_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 500\r\n\r\n"
               b"<PutMetricDataResp")
LOCK = threading.Lock()
STATE = {}


def reset_state():
    STATE.update(datums=[], seen={}, stats={"requests": 0, "accepted": 0, "datums": 0,
                                            "duplicates": 0, "bad_signature": 0,
                                            "invalid_params": 0, "faults": {}, "poisoned": 0,
                                            "max_datums_in_request": 0,
                                            "max_raw_bytes": 0, "gzip_requests": 0},
                 script=[], random=None, rng=None, poison=set(), down=False, errors=[])


reset_state()


def parse_timestamp(text):
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(t)


def scalar(shape, text):
    tn = shape.type_name
    if tn == "double" or tn == "float":
        return float(text)
    if tn in ("integer", "long"):
        return int(text)
    if tn == "boolean":
        return {"true": True, "false": False}[text]
    if tn == "timestamp":
        return parse_timestamp(text)
    return text


class Unknown(Exception):
    pass


def prefixes_of(flat):
    """Every dotted prefix of every key ("a.b.c" gives "a", "a.b", "a.b.c")."""
    out = set()
    for k in flat:
        i = k.find(".")
        while i >= 0:
            out.add(k[:i])
            i = k.find(".", i + 1)
        out.add(k)
    return out


def build(shape, flat, prefix, pre):
    """Rebuilds the parameter value of shape from the flat form keys under prefix (pre: the
    set of key prefixes)."""
    if shape.type_name == "structure":
        out = {}
        for name, member in shape.members.items():
            key = prefix + name
            if member.type_name in ("structure", "list", "map"):
                if key in pre:
                    out[name] = build(member, flat, key + ".", pre)
            elif key in flat:
                out[name] = scalar(member, flat[key])
        return out
    if shape.type_name == "list":
        out, i = [], 1
        while True:
            key = "%smember.%d" % (prefix, i)
            if shape.member.type_name in ("structure", "list", "map"):
                if key not in pre or key in flat:
                    break
                out.append(build(shape.member, flat, key + ".", pre))
            else:
                if key not in flat:
                    break
                out.append(scalar(shape.member, flat[key]))
            i += 1
        return out
    raise Unknown("unsupported shape " + shape.type_name)


def known_keys(shape, prefix, keys, flat, pre):
    """Every flat key build() consumed, so leftovers can be refused."""
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            key = prefix + name
            if member.type_name in ("structure", "list"):
                known_keys(member, key + ".", keys, flat, pre)
            elif key in flat:
                keys.add(key)
    elif shape.type_name == "list":
        i = 1
        while True:
            key = "%smember.%d" % (prefix, i)
            if shape.member.type_name in ("structure", "list"):
                if key not in pre or key in flat:
                    break
                known_keys(shape.member, key + ".", keys, flat, pre)
            else:
                if key not in flat:
                    break
                keys.add(key)
            i += 1


def error_xml(code, message, sender=True):
    return ("<ErrorResponse xmlns=\"%s\"><Error><Type>%s</Type><Code>%s</Code>"
            "<Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>" %
            (XMLNS, "Sender" if sender else "Receiver", code,
             message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
             uuid.uuid4())).encode()


FAULTS = {
    "throttle": (400, "Throttling", "Rate exceeded"),
    "throttle429": (429, None, None),
    "500": (500, "InternalFailure", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unavailable"),
    "denied": (403, "AccessDenied", "User: arn:aws:sts::123456789012:assumed-role/cmh is not "
               "authorized to perform: cloudwatch:PutMetricData"),
    "expired": (403, "ExpiredToken", "The security token included in the request is expired"),
    "invalid": (400, "InvalidParameterValue", "The value for parameter MetricData is invalid."),
    "307": (307, None, None),
}


def value_ok(v):
    if not math.isfinite(v):
        return False
    m = abs(v)
    return m == 0 or (2.0 ** -360 <= m <= 2.0 ** 360)


def model_limits(shape, value, path):
    """What botocore.validate leaves out: string and list maximum lengths and string enums of
    the model. Returns an error message or None."""
    md = shape.metadata
    if shape.type_name == "string":
        if "max" in md and len(value) > md["max"]:
            return "%s: length %d exceeds %d" % (path, len(value), md["max"])
        enum = getattr(shape, "enum", None) or md.get("enum")
        if enum and value not in enum:
            return "%s: %r is not one of the model's values" % (path, value)
    elif shape.type_name == "list":
        if "max" in md and len(value) > md["max"]:
            return "%s: %d members exceed %d" % (path, len(value), md["max"])
        for i, v in enumerate(value, 1):
            why = model_limits(shape.member, v, "%s.member.%d" % (path, i))
            if why:
                return why
    elif shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                why = model_limits(member, value[name], (path + "." if path else "") + name)
                if why:
                    return why
    return None


def cloudwatch_rules(params, raw_len):
    """CloudWatch's limits beyond the model; returns an error message or None."""
    data = params.get("MetricData", [])
    if len(data) > 1000:
        return "The collection MetricData must not have a size greater than 1000."
    if raw_len > 1000000:
        return "Request size exceeds 1 MB"
    if params.get("Namespace", "").startswith("AWS/"):
        return "The value AWS/ for parameter Namespace is invalid."
    now = datetime.datetime.now(datetime.timezone.utc)
    for i, d in enumerate(data, 1):
        if "Value" in d and "StatisticValues" in d:
            return "The parameters MetricData.member.%d.Value and StatisticValues are mutually " \
                   "exclusive" % i
        for key in ("Value",):
            if key in d and not value_ok(d[key]):
                return "The value %r for parameter MetricData.member.%d.Value is invalid." % (d[key], i)
        sv = d.get("StatisticValues")
        if sv:
            for k in ("SampleCount", "Sum", "Minimum", "Maximum"):
                if not value_ok(sv[k]):
                    return "StatisticValues.%s of member %d is invalid" % (k, i)
            if sv["SampleCount"] <= 0 or sv["Minimum"] > sv["Maximum"]:
                return "StatisticValues of member %d is inconsistent" % i
        ts = d.get("Timestamp")
        if ts is not None:
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=datetime.timezone.utc)
            if ts < now - datetime.timedelta(days=14) or ts > now + datetime.timedelta(hours=2):
                return "The parameter MetricData.member.%d.Timestamp must specify a time " \
                       "within the past two weeks." % i
        names = [x["Name"] for x in d.get("Dimensions", [])]
        if len(set(names)) != len(names):
            return "The collection MetricData.member.%d.Dimensions must not contain " \
                   "duplicate names" % i
        if d.get("StorageResolution") not in (None, 1, 60):
            return "StorageResolution of member %d must be 1 or 60" % i
    return None


def datum_record(ns, d, request_no):
    ts = d.get("Timestamp")
    rec = {"namespace": ns, "metric": d["MetricName"],
           "dimensions": {x["Name"]: x["Value"] for x in d.get("Dimensions", [])},
           "timestamp_ms": int(round(ts.timestamp() * 1000)) if ts is not None else None,
           "unit": d.get("Unit"), "storage_resolution": d.get("StorageResolution"),
           "request": request_no}
    if "Value" in d:
        rec["value"] = d["Value"]
    if "StatisticValues" in d:
        sv = d["StatisticValues"]
        rec["stats"] = {"count": sv["SampleCount"], "sum": sv["Sum"], "min": sv["Minimum"],
                        "max": sv["Maximum"]}
    return rec


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="text/xml", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, obj, status=200):
        self.reply(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self):
        path = urlsplit(self.path).path
        with LOCK:
            if path == "/datums":
                return self.reply_json(STATE["datums"])
            if path == "/stats":
                return self.reply_json(dict(STATE["stats"], errors=STATE["errors"][-20:]))
        self.reply(404, b"not found", "text/plain")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0") or "0")
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if path == "/faults":
            return self.control(json.loads(body or b"{}"))
        if path == "/reset":
            with LOCK:
                reset_state()
            return self.reply_json({"ok": True})
        self.put_metric_data(body)

    def control(self, cmd):
        with LOCK:
            if cmd.get("clear"):
                STATE.update(script=[], random=None, poison=set(), down=False)
            if "script" in cmd:
                STATE["script"].extend(cmd["script"])
            if "random" in cmd:
                r = cmd["random"]
                STATE["random"] = r
                STATE["rng"] = random.Random(r.get("seed", 1))
            if "poison" in cmd:
                STATE["poison"] = set(cmd["poison"])
            if "down" in cmd:
                STATE["down"] = bool(cmd["down"])
        self.reply_json({"ok": True})

    def next_fault(self):
        with LOCK:
            if STATE["down"]:
                return {"kind": "reset"}
            if STATE["script"]:
                f = STATE["script"].pop(0)
            elif STATE["random"] and STATE["rng"].random() < STATE["random"]["rate"]:
                f = STATE["rng"].choice(STATE["random"]["kinds"])
            else:
                return None
            return f if isinstance(f, dict) else {"kind": f}

    def count(self, key):
        with LOCK:
            STATE["stats"]["faults"][key] = STATE["stats"]["faults"].get(key, 0) + 1

    def fail(self, status, code, message, counter):
        with LOCK:
            STATE["stats"][counter] += 1
            STATE["errors"].append({"code": code, "message": message})
        self.reply(status, error_xml(code, message))

    def put_metric_data(self, body):
        with LOCK:
            STATE["stats"]["requests"] += 1
            request_no = STATE["stats"]["requests"]
        fault = self.next_fault()
        kind = fault["kind"] if fault else "ok"
        if kind in ("reset", "reset_early"):
            self.count(kind)
            return standin_common.reset_connection(self, HALF_ANSWER if kind == "reset" else None)
        if kind == "stall":
            self.count("stall")
            time.sleep(ARGS.stall)
            self.close_connection = True
            return
        # Signature first, as AWS does (and a bad one must never be hidden by a fault).
        bad = standin_common.check_signature(self, body, "monitoring", ARGS.region, KEYS,
                                              token_must_be_signed=True)
        if bad:
            return self.fail(403, "SignatureDoesNotMatch", bad, "bad_signature")
        raw = body
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(body)
            except OSError as e:
                return self.fail(400, "MalformedInput", "bad gzip: %s" % e, "invalid_params")
            with LOCK:
                STATE["stats"]["gzip_requests"] += 1
        if kind in FAULTS:
            self.count(kind)
            status, code, message = FAULTS[kind]
            extra = []
            if fault.get("retry_after") is not None:
                extra.append(("Retry-After", str(fault["retry_after"])))
            if status == 307:
                extra.append(("Location", "https://127.0.0.1:9/elsewhere"))
            b = error_xml(code, message) if code else b""
            return self.reply(status, b, "text/xml", extra)
        try:
            form = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as e:
            return self.fail(400, "MalformedQueryString", str(e), "invalid_params")
        flat = {}
        for k, v in form:
            if k in flat:
                return self.fail(400, "MalformedQueryString", "duplicate " + k, "invalid_params")
            flat[k] = v
        if flat.pop("Action", None) != "PutMetricData" or flat.pop("Version", None) != \
                MODEL.api_version:
            return self.fail(400, "InvalidAction", "Action/Version", "invalid_params")
        try:
            pre = prefixes_of(flat)
            params = build(OP.input_shape, flat, "", pre)
        except (ValueError, KeyError, Unknown) as e:
            return self.fail(400, "InvalidParameterValue", "cannot parse: %s" % e,
                             "invalid_params")
        used = set()
        known_keys(OP.input_shape, "", used, flat, pre)
        left = set(flat) - used
        if left:
            return self.fail(400, "InvalidParameterValue", "unknown parameters %s" %
                             sorted(left)[:5], "invalid_params")
        try:
            botocore.validate.validate_parameters(params, OP.input_shape)
        except botocore.exceptions.ParamValidationError as e:
            return self.fail(400, "InvalidParameterValue", str(e), "invalid_params")
        why = model_limits(OP.input_shape, params, "") or cloudwatch_rules(params, len(raw))
        if why:
            return self.fail(400, "InvalidParameterValue", why, "invalid_params")
        with LOCK:
            poison = STATE["poison"]
            hit = [d["MetricName"] for d in params["MetricData"] if d["MetricName"] in poison]
        if hit:
            with LOCK:
                STATE["stats"]["poisoned"] += 1
            return self.reply(400, error_xml("InvalidParameterValue",
                                             "The value for MetricName %s is invalid." % hit[0]))
        with LOCK:
            st = STATE["stats"]
            st["accepted"] += 1
            st["max_datums_in_request"] = max(st["max_datums_in_request"],
                                              len(params["MetricData"]))
            st["max_raw_bytes"] = max(st["max_raw_bytes"], len(raw))
            for d in params["MetricData"]:
                rec = datum_record(params["Namespace"], d, request_no)
                key = json.dumps([rec["metric"], sorted(rec["dimensions"].items()),
                                  rec["timestamp_ms"]])
                if key in STATE["seen"]:
                    st["duplicates"] += 1
                STATE["seen"][key] = True
                STATE["datums"].append(rec)
                st["datums"] += 1
        self.reply(200, ("<PutMetricDataResponse xmlns=\"%s\"><ResponseMetadata><RequestId>%s"
                         "</RequestId></ResponseMetadata></PutMetricDataResponse>" %
                         (XMLNS, uuid.uuid4())).encode())


def make_certs(d):
    testca.make_certs(d, ca_cn="cmh cloudwatch test CA")


def main():
    global ARGS, KEYS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    standin_common.add_common_args(ap)
    ap.add_argument("--stall", type=float, default=30, help="seconds a 'stall' fault holds")
    ap.add_argument("--tls", action="store_true", help="also listen with HTTPS (test CA)")
    ARGS = ap.parse_args()
    KEYS = standin_common.parse_keys(ARGS.key)
    ThreadingHTTPServer.daemon_threads = True
    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    servers = [http]
    line = "READY http=%d" % http.server_address[1]
    tmp = None
    if ARGS.tls:
        tmp = tempfile.mkdtemp(prefix="cmh-cw-")
        make_certs(tmp)
        https = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(tmp, "srv.pem"), os.path.join(tmp, "srv.key"))
        https.socket = ctx.wrap_socket(https.socket, server_side=True,
                                       do_handshake_on_connect=False)
        servers.append(https)
        line += " https=%d ca=%s" % (https.server_address[1], os.path.join(tmp, "ca.pem"))
    standin_common.serve_until_stdin_closes(
        servers, line, ARGS.lifetime,
        cleanup=(lambda: shutil.rmtree(tmp, ignore_errors=True)) if tmp else None)


if __name__ == "__main__":
    main()
