"""Differential test of the DescribeSubnets parser: random answers (subnets with IPv4/IPv6
blocks, tags holding look-alike element names, entities and CDATA, pretty-printed or not,
NextToken, EC2 error documents) are parsed by botocore's own EC2 response parser (the oracle)
and by ours (ec2_xml_oracle); every kept field must agree, and every answer botocore reads as a
page must parse. Usage: ec2_xml_botocore_diff.py ORACLE COUNT"""
import ipaddress
import json
import random
import struct
import subprocess
import sys
import os

import botocore.parsers
import botocore.session

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

ORACLE, COUNT = sys.argv[1], int(sys.argv[2])
MODEL = botocore.session.get_session().get_service_model("ec2")
OP = MODEL.operation_model("DescribeSubnets")
PARSER = botocore.parsers.EC2QueryParser()
rng = random.Random(8)


def esc(s):
    """Text as XML, by one of three spellings that mean the same."""
    k = rng.random()
    if k < 0.2 and "]]>" not in s:
        return "<![CDATA[%s]]>" % s
    out = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if k < 0.4:
        out = out.replace("-", "&#45;")
    return out


def ws():
    return rng.choice(["", "\n", "\n    ", " "])


def subnet():
    sid = "subnet-%0*x" % (rng.choice([8, 17]), rng.getrandbits(68) % (16 ** 17))
    net = ipaddress.ip_network((rng.getrandbits(32) >> (32 - 24) << 8, 24))
    v6 = [str(ipaddress.ip_network((rng.getrandbits(64) << 64, 64))) for _ in range(rng.choice([0, 0, 1, 2]))]
    tags = "".join("<item><key>%s</key><value>%s</value></item>" % (esc(rng.choice(["Name", "subnetId", "a<b"])),
                                                                    esc(rng.choice(["x & y", "<subnetId>", "kube"])))
                   for _ in range(rng.choice([0, 1, 3])))
    s = {"id": sid, "az": rng.choice(["us-east-1a", "eu-west-3c", "ap-south-2b"]),
         "cidr": str(net), "available": rng.choice([0, 1, 250, 8187, 65531]), "v6": v6}
    fields = ["<subnetId>%s</subnetId>" % esc(sid),
              "<availabilityZone>%s</availabilityZone>" % esc(s["az"]),
              "<availableIpAddressCount>%d</availableIpAddressCount>" % s["available"],
              "<cidrBlock>%s</cidrBlock>" % esc(s["cidr"]),
              "<state>available</state>", "<vpcId>vpc-1</vpcId>", "<tagSet>%s</tagSet>" % tags,
              "<ipv6CidrBlockAssociationSet>%s</ipv6CidrBlockAssociationSet>" % "".join(
                  "<item><ipv6CidrBlock>%s</ipv6CidrBlock><ipv6CidrBlockState><state>associated"
                  "</state></ipv6CidrBlockState></item>" % esc(c) for c in v6)]
    rng.shuffle(fields)
    return s, "<item>" + ws() + ws().join(fields) + ws() + "</item>"


def page():
    if rng.random() < 0.15:
        code = rng.choice(["UnauthorizedOperation", "RequestLimitExceeded", "InvalidSubnetID.NotFound"])
        msg = rng.choice(["You are not authorized & denied", "Request limit exceeded.", "<x> missing"])
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
                '<Message>%s</Message></Error></Errors><RequestID>r-1</RequestID></Response>'
                % (code, esc(msg)))
        return {"error": (code, msg)}, body, 400
    subs = [subnet() for _ in range(rng.choice([0, 1, 2, 5]))]
    token = rng.choice(["", "eyJ2IjoiMiJ9", "a+b/c=="])
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<DescribeSubnetsResponse xmlns="http://ec2.'
            'amazonaws.com/doc/2016-11-15/">' + ws() + "<requestId>r-1</requestId>" + ws() +
            "<subnetSet>" + ws().join(x for _, x in subs) + "</subnetSet>" + ws() +
            ("<nextToken>%s</nextToken>" % esc(token) if token else "") + ws() +
            "</DescribeSubnetsResponse>")
    return {"subnets": [s for s, _ in subs], "token": token}, body, 200


cases = [page() for _ in range(COUNT)]
stdin = b"".join(struct.pack(">I", len(b.encode())) + b.encode() for _, b, _ in cases)
out = subprocess.run([ORACLE], input=stdin, capture_output=True, timeout=120, check=True).stdout.decode().splitlines()
check("one answer per page", len(out) == len(cases), (len(out), len(cases)))
bad = 0
for (want, body, status), line in zip(cases, out):
    ours = json.loads(line)
    parsed = PARSER.parse({"body": body.encode(), "headers": {}, "status_code": status}, OP.output_shape)
    if "error" in want:
        theirs = (parsed["Error"]["Code"], parsed["Error"]["Message"])
        ok = ours["rc"] == 0 and (ours["error_code"], ours["error_message"]) == theirs == want["error"]
    else:
        theirs = [{"id": s["SubnetId"], "az": s["AvailabilityZone"], "cidr": s["CidrBlock"],
                   "available": s["AvailableIpAddressCount"],
                   "v6": [a["Ipv6CidrBlock"] for a in s.get("Ipv6CidrBlockAssociationSet", [])]}
                  for s in parsed.get("Subnets", [])]
        ok = (ours["rc"] == 0 and ours["subnets"] == theirs == want["subnets"] and
              ours["next_token"] == parsed.get("NextToken", "") == want["token"])
    if not ok:
        bad += 1
        if bad <= 3:
            check("page agrees with botocore", False, (line[:300], body[:300]))
check(f"{COUNT} answers: our parser agrees with botocore's EC2 parser", bad == 0, bad)
finish()
