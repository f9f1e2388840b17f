#!/usr/bin/python3
"""The CloudWatch stand-in must itself be right before it may judge the publisher.

Requests built entirely by botocore (its Query serializer for PutMetricData, its SigV4 signer)
must be accepted and recorded exactly; the same requests with one thing wrong -- a byte of the
body, the secret, the region, a parameter the model refuses (1001 datums, a 256-character name, an
unknown unit, a missing StatisticValues member), a NaN, a timestamp three weeks old -- must be
refused with the error code CloudWatch gives. Every scripted fault must come back as scripted.
Usage: cloudwatch_standin_selftest.py   (starts test/sim/cloudwatch_standin.py itself)
"""
import datetime
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.serialize import create_serializer

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "..", "sim", "cloudwatch_standin.py")
REGION = "eu-central-1"
KEY, SECRET, TOKEN = "AKIDSELFTEST", "self/test+secret", "tok"

MODEL = botocore.session.get_session().get_service_model("cloudwatch")
OP = MODEL.operation_model("PutMetricData")
SER = create_serializer("query")
FAILED = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILED.append(what)


def datum(i, now):
    d = {"MetricName": "m%d" % (i % 5), "Timestamp": now - datetime.timedelta(seconds=i),
         "Dimensions": [{"Name": "CLUSTER_ID", "Value": "c1"}, {"Name": "node", "Value": "n%d" % i}],
         "Unit": "Count", "StorageResolution": 60}
    if i % 2:
        d["StatisticValues"] = {"SampleCount": 3.0, "Sum": i / 7.0, "Minimum": -1.5,
                                "Maximum": 1e100}
    else:
        d["Value"] = i / 3.0
    return d


def send(port, params, secret=SECRET, region=REGION, tamper=None, raw_params=False,
         compress=True):
    """Serializes params with botocore (or takes a ready form when raw_params), gzips, signs."""
    if raw_params:
        body = params.encode()
    else:
        req = SER.serialize_to_request(params, OP)
        body = req["body"] if isinstance(req["body"], bytes) else \
            "&".join("%s=%s" % kv for kv in []) or None
        if not isinstance(req["body"], bytes):
            from urllib.parse import urlencode
            body = urlencode(req["body"]).encode()
    if compress:
        body = gzip.compress(body)
    url = "http://127.0.0.1:%d/" % port
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if compress:
        headers["Content-Encoding"] = "gzip"
    areq = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(KEY, secret, TOKEN), "monitoring", region).add_auth(areq)
    if tamper:
        body = tamper(body)
    r = urllib.request.Request(url, data=body, method="POST", headers=dict(areq.headers.items()))
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def code_of(text):
    i = text.find("<Code>")
    return text[i + 6:text.index("</Code>")] if i >= 0 else ""


def ctl(port, method, path, obj=None):
    data = json.dumps(obj).encode() if obj is not None else None
    r = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, method=method)
    with urllib.request.urlopen(r, timeout=30) as resp:
        return json.loads(resp.read())


def main():
    p = subprocess.Popen([sys.executable, STANDIN, "--region", REGION, "--lifetime", "250",
                          "--key", "%s:%s:%s" % (KEY, SECRET, TOKEN), "--stall", "1"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        port = int(line.split()[1].split("=")[1])
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        params = {"Namespace": "Kubernetes", "MetricData": [datum(i, now) for i in range(1000)]}
        t0 = time.monotonic()
        st, text = send(port, params)
        took = time.monotonic() - t0
        check(st == 200 and "PutMetricDataResponse" in text,
              "1000 datums from botocore's serializer accepted (%.2fs)" % took)
        got = ctl(port, "GET", "/datums")
        check(len(got) == 1000, "1000 datums recorded")
        ok = True
        for i, r in enumerate(got):
            d = params["MetricData"][i]
            ok &= r["metric"] == d["MetricName"] and r["dimensions"]["node"] == "n%d" % i
            ok &= r["timestamp_ms"] == int(d["Timestamp"].timestamp() * 1000)
            if "Value" in d:
                ok &= r["value"] == d["Value"]
            else:
                sv = d["StatisticValues"]
                ok &= r["stats"] == {"count": sv["SampleCount"], "sum": sv["Sum"],
                                     "min": sv["Minimum"], "max": sv["Maximum"]}
        check(ok, "every recorded datum equals what was sent")
        st, text = send(port, params, compress=False)
        check(st == 200, "uncompressed body accepted too")
        stats = ctl(port, "GET", "/stats")
        check(stats["duplicates"] == 1000, "resending is counted as 1000 duplicates")

        one = {"Namespace": "Kubernetes", "MetricData": [datum(0, now)]}

        def flip(b):
            return b[:-3] + bytes([b[-3] ^ 1]) + b[-2:]
        cases = [
            ("tampered body", dict(tamper=flip), 403, "SignatureDoesNotMatch"),
            ("wrong secret", dict(secret="nope"), 403, "SignatureDoesNotMatch"),
            ("wrong region", dict(region="us-east-1"), 403, "SignatureDoesNotMatch"),
        ]
        for what, kw, want_status, want_code in cases:
            st, text = send(port, one, **kw)
            check(st == want_status and code_of(text) == want_code,
                  "%s refused: %d %s" % (what, st, code_of(text)))

        def form(extra):
            base = ("Action=PutMetricData&Version=2010-08-01&Namespace=Kubernetes"
                    "&MetricData.member.1.MetricName=m&MetricData.member.1.Value=1"
                    "&MetricData.member.1.Timestamp=%s" % now.strftime("%Y-%m-%dT%H:%M:%SZ"))
            return base + extra
        old = (now - datetime.timedelta(days=21)).strftime("%Y-%m-%dT%H:%M:%SZ")
        many = "".join("&MetricData.member.%d.MetricName=m&MetricData.member.%d.Value=1" %
                       (i, i) for i in range(2, 1002))
        bad = [
            ("1001 datums", many),
            ("256-character metric name", "&MetricData.member.2.MetricName=" + "x" * 256 +
             "&MetricData.member.2.Value=1"),
            ("unknown unit", "&MetricData.member.1.Unit=Furlongs"),
            ("incomplete StatisticValues",
             "&MetricData.member.2.MetricName=s&MetricData.member.2.StatisticValues.Sum=1"),
            ("NaN value", "&MetricData.member.2.MetricName=n&MetricData.member.2.Value=NaN"),
            ("value beyond 2^360", "&MetricData.member.2.MetricName=n&MetricData.member.2."
             "Value=1e200"),
            ("timestamp three weeks old", "&MetricData.member.2.MetricName=o&MetricData."
             "member.2.Value=1&MetricData.member.2.Timestamp=" + old.replace(":", "%3A")),
            ("unknown parameter", "&MetricData.member.1.Colour=red"),
            ("storage resolution 30", "&MetricData.member.1.StorageResolution=30"),
        ]
        for what, extra in bad:
            st, text = send(port, form(extra), raw_params=True)
            check(st == 400 and code_of(text) == "InvalidParameterValue",
                  "%s refused: %d %s" % (what, st, code_of(text)))
        st, text = send(port, form(""), raw_params=True)
        check(st == 200, "the same hand-written form without the fault accepted")

        ctl(port, "POST", "/faults", {"script": ["throttle", "500", "503", "denied", "expired",
                                                 "invalid", {"kind": "throttle429",
                                                             "retry_after": 7}]})
        want = [(400, "Throttling"), (500, "InternalFailure"), (503, "ServiceUnavailable"),
                (403, "AccessDenied"), (403, "ExpiredToken"), (400, "InvalidParameterValue"),
                (429, "")]
        for ws, wc in want:
            st, text = send(port, one)
            check(st == ws and code_of(text) == wc, "scripted %d %s" % (ws, wc))
        ctl(port, "POST", "/faults", {"script": ["reset", "stall"]})
        for what in ("reset", "stall"):
            t0 = time.monotonic()
            try:
                st, text = send(port, one)
                check(False, "%s gave an answer %d" % (what, st))
            except Exception as e:  # noqa: BLE001 -- any transport failure is the point
                check(True, "%s: no answer (%s, %.1fs)" % (what, type(e).__name__,
                                                          time.monotonic() - t0))
        st, _ = send(port, one)
        check(st == 200, "after the script, requests succeed again")
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    if FAILED:
        print("%d check(s) failed" % len(FAILED))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
