#!/usr/bin/python3
"""Differential test: our SigV4 signer against botocore's SigV4Auth on generated requests.

Usage: sigv4_botocore_diff.py ORACLE_BINARY [COUNT] [SEED]
Generates COUNT (default 3000) random requests -- methods, paths with odd characters and dot
segments, query parameters with reserved characters, duplicates and empty values, headers with
odd spacing, case and duplicates, unsigned headers, binary and gzip'd bodies, session tokens,
random regions/services/times -- signs each with botocore (clock pinned per request) and with
our signer (the oracle program), and requires the same Authorization, X-Amz-Date and
X-Amz-Security-Token. A deliberately wrong secret must then be caught (the check can fail).
"""
import datetime
import gzip
import hashlib
import json
import random
import subprocess
import sys
import types

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class PinnedClock(datetime.datetime):
    """Stands in for datetime.datetime inside botocore.auth so add_auth signs at a chosen time."""

    pinned = None

    @classmethod
    def utcnow(cls):
        return cls.pinned

    @classmethod
    def now(cls, tz=None):
        return cls.pinned.replace(tzinfo=tz) if tz else cls.pinned


botocore.auth.datetime = types.SimpleNamespace(datetime=PinnedClock, timezone=datetime.timezone)

PATH_ATOMS = ["a", "B", "z9", "-._~", "%20", "%2F", "%25", "%41", "%e1%88%b4", "!", "$", "&",
              "'", "(", ")", "*", "+", ",", ";", "=", ":", "@", " ", "\u1234", "\u00e9",
              ".", "..", "", "x y", "%", "[", "]", "|", "^", "`", "{", "}", '"', "<", ">"]
QUERY_ALPHABET = list("abcXYZ019-._~ !\"#$%&'()*+,/:;<=>?@[\\]^`{|}") + ["\u00e9", "\u1234",
                                                                          "\U0001f600"]
HEADER_NAMES = ["Content-Type", "X-Custom", "x-custom", "X-CUSTOM", "Accept", "Content-Encoding",
                "My-Header1", "my-header2", "Cache-Control", "X-Amz-Target", "X-Amz-Meta-Zeta",
                "A", "z-last", "User-Agent", "Expect", "X-Amzn-Trace-Id"]
HEADER_VALUE_ALPHABET = list("abcXYZ0189 \t-_.,;:=/\"'()[]{}<>?@!#$%&*+^`|~")
REGIONS = ["us-east-1", "eu-west-3", "ap-southeast-2", "cn-north-1", "us-gov-west-1"]
SERVICES = ["monitoring", "sts", "ec2", "service", "execute-api"]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "get", "post"]


def rand_path(rng):
    if rng.random() < 0.1:
        return rng.choice(["", "/", "//", "/./", "/../", "/a/../../b/"])
    segs = [rng.choice(PATH_ATOMS) + (rng.choice(PATH_ATOMS) if rng.random() < 0.5 else "")
            for _ in range(rng.randint(1, 5))]
    path = "/" + "/".join(segs)
    if rng.random() < 0.3:
        path += "/"
    # urlsplit trims leading C0/space and would cut at '?' or '#': keep the path well-formed.
    return path.rstrip(" ")


def rand_text(rng, alphabet, lo, hi):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_query(rng):
    params = []
    for _ in range(rng.choice([0, 0, 1, 2, 3, 6])):
        key = rand_text(rng, QUERY_ALPHABET, 0 if rng.random() < 0.05 else 1, 8)
        value = "" if rng.random() < 0.2 else rand_text(rng, QUERY_ALPHABET, 1, 12)
        params.append((key, value))
        if rng.random() < 0.2:  # duplicate key, same or different value
            params.append((key, value if rng.random() < 0.5 else rand_text(rng, QUERY_ALPHABET, 0, 5)))
    rng.shuffle(params)
    return params


def rand_header_value(rng):
    v = rand_text(rng, HEADER_VALUE_ALPHABET, 0, 20)
    if rng.random() < 0.3:
        v = "  " + v + " \t "
    if rng.random() < 0.3:
        v = v.replace(" ", "   ")
    return v


def rand_body(rng):
    r = rng.random()
    if r < 0.3:
        return b""
    if r < 0.6:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
    form = "Action=PutMetricData&Namespace=Kubernetes&MetricData.member.1.MetricName=m%d" % rng.randint(0, 9999)
    return gzip.compress(form.encode(), mtime=0) if r < 0.85 else form.encode()


def generate(rng):
    host = rng.choice(["monitoring.us-east-1.amazonaws.com", "sts.amazonaws.com",
                       "127.0.0.1:8443", "example.amazonaws.com", "[::1]:9000"])
    headers = [("Host" if rng.random() < 0.7 else rng.choice(["host", "HOST"]), host)]
    for _ in range(rng.randint(0, 6)):
        headers.append((rng.choice(HEADER_NAMES), rand_header_value(rng)))
    rng.shuffle(headers)
    token = None
    if rng.random() < 0.4:
        token = rand_text(rng, list("ABCDEFabcdef0123456789+/="), 20, 200)
    return {
        "method": rng.choice(METHODS),
        "host": host,
        "path": rand_path(rng),
        "query": rand_query(rng),
        "headers": headers,
        "body": rand_body(rng),
        "region": rng.choice(REGIONS),
        "service": rng.choice(SERVICES),
        "time": rng.randint(946684800, 2145916800),  # 2000 .. 2038
        "akid": "AKID" + rand_text(rng, list("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), 12, 16),
        "secret": rand_text(rng, list("abcdefghijklmnopqrstuvwxyzABCDEF0123456789/+"), 40, 40),
        "token": token,
        "precomputed_hash": rng.random() < 0.2,
    }


def botocore_sign(case):
    PinnedClock.pinned = PinnedClock.utcfromtimestamp(case["time"])
    req = AWSRequest(method=case["method"], url="https://" + case["host"] + case["path"],
                     data=case["body"], params=list(case["query"]))
    for name, value in case["headers"]:
        req.headers[name] = value  # HTTPMessage appends: duplicates are kept, in order
    creds = Credentials(case["akid"], case["secret"], case["token"])
    SigV4Auth(creds, case["service"], case["region"]).add_auth(req)
    return req


def botocore_canonical(req, case):
    """botocore's canonical request for a signed request (Authorization taken out again)."""
    del req.headers["Authorization"]
    auth = SigV4Auth(Credentials(case["akid"], case["secret"], case["token"]), case["service"],
                     case["region"])
    return auth.canonical_request(req)


def to_oracle(case, secret=None):
    d = {
        "method": case["method"], "path": case["path"],
        "query": [list(p) for p in case["query"]],
        "headers": [list(h) for h in case["headers"]],
        "body_hex": case["body"].hex(), "region": case["region"], "service": case["service"],
        "time": case["time"], "akid": case["akid"], "secret": secret or case["secret"],
    }
    if case["token"] is not None:
        d["token"] = case["token"]
    if case["precomputed_hash"]:
        d["payload_hash"] = hashlib.sha256(case["body"]).hexdigest()
    return json.dumps(d)


def main():
    oracle = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 20260826
    rng = random.Random(seed)
    cases = [generate(rng) for _ in range(count)]
    # The last line is the negative control: same request, one secret character changed.
    lines = [to_oracle(c) for c in cases]
    lines.append(to_oracle(cases[0], secret="X" + cases[0]["secret"][1:]))
    proc = subprocess.run([oracle], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, timeout=120, check=True)
    results = [json.loads(l) for l in proc.stdout.splitlines()]
    assert len(results) == count + 1, "oracle answered %d of %d" % (len(results), count + 1)

    failures = 0
    for i, (case, ours) in enumerate(zip(cases, results)):
        theirs = botocore_sign(case)
        want = {"Authorization": theirs.headers["Authorization"],
                "X-Amz-Date": theirs.headers["X-Amz-Date"]}
        if case["token"] is not None:
            want["X-Amz-Security-Token"] = theirs.headers["X-Amz-Security-Token"]
        got = dict(ours.get("add", []))
        if "error" in ours or got != want:
            failures += 1
            if failures <= 5:
                print("MISMATCH case %d (seed %d): %r" % (i, seed, case), file=sys.stderr)
                print("  ours:  %r" % (ours,), file=sys.stderr)
                print("  botocore: %r" % (want,), file=sys.stderr)
                print("  botocore canonical request:\n%s" % botocore_canonical(theirs, case),
                      file=sys.stderr)
    control = dict(results[-1].get("add", []))
    reference = botocore_sign(cases[0]).headers["Authorization"]
    if control.get("Authorization") == reference:
        print("negative control: a wrong secret was not detected", file=sys.stderr)
        failures += 1
    print("sigv4 vs botocore %s: %d requests, %d mismatches (seed %d)"
          % (botocore.__version__, count, failures, seed))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
