#!/usr/bin/python3
"""Loopback stand-in for EC2 DescribeSubnets and DescribeTags (EC2 Query protocol, Version 2016-11-15).

Every request is checked the way EC2 would, with botocore as the independent oracle:
  - the SigV4 signature (service "ec2") is recomputed with botocore.auth.SigV4Auth from the bytes
    received and the credentials the stand-in knows (--key ID:SECRET[:TOKEN]);
  - the form body is read back into DescribeSubnets' parameters (SubnetId.N, MaxResults,
    NextToken, DryRun) and validated with botocore.validate against the EC2 model; unknown
    parameters, another Action or Version, MaxResults together with ids are refused as EC2 does.
Subnets come from a JSON truth file (--truth): {"subnets": [{"SubnetId", "CidrBlock",
"Ipv6CidrBlocks": [...], "AvailabilityZone", "AvailableIpAddressCount"}, ...]}. Answers are
paginated with NextToken at --page-size subnets (smaller than EC2's, so paging is exercised).
DescribeTags: the form's Filter.N.Name / Filter.N.Value.M are read back into Filters and validated
with botocore against DescribeTags' model; the tags are the truth file's "tags": [{"ResourceId",
"Key", "Value"}, ...] (or POST /tags), filtered as EC2 does (a tag matches when, for every filter,
its field equals one of the filter's values; resource-id, key, value and resource-type are
served) and answered sorted by key in byte order, an order that is not the helper's preference.

Prints one line:  READY http=<port>   and serves on 127.0.0.1 until stdin closes or --lifetime
seconds pass. Control routes (plain JSON, on the same port):
  GET  /truth     the subnets as served now
  GET  /stats     counters: requests, pages, describe calls by kind, bad_signature, faults, errors
  POST /subnet    {"SubnetId": id, "AvailableIpAddressCount": n} drains or refills a subnet
  POST /faults    {"script": [FAULT, ...]} faults for the next DescribeSubnets requests, in order;
                  with "deny": [action, ...] every request of those actions answers "denied"
  POST /tags      {"tags": [...]} replaces the tags
  POST /drain     {"SubnetId": id, "points": [[t, n], ...]} a scripted drain: from now, the subnet's
                  AvailableIpAddressCount is the n of the last point whose t (seconds since this
                  request, increasing) has passed (the first point's n before that)
  POST /outage    {"seconds": s} every DescribeSubnets request fails (500 InternalError) for s
                  seconds: the daemon's subnet view goes stale
  POST /usage     {"interfaces": [...], "reservations": [...]} replaces what the two usage actions
                  serve (same shapes as in the truth file)
DescribeNetworkInterfaces (Filter subnet-id, MaxResults, NextToken) and GetSubnetCidrReservations
(SubnetId, MaxResults, NextToken) are served from the truth file's "interfaces":
[{"NetworkInterfaceId", "SubnetId", "PrivateIpAddresses": [...], "Ipv4Prefixes": [...]}] and
"reservations": [{"SubnetId", "Cidr"}], validated with botocore like DescribeSubnets; /stats counts
them (usage_requests by action, with the MaxResults and filters each asked for).
  POST /reset     counters and faults forgotten (the truth stays)
--faults '[FAULT, ...]' sets the script from the start.
Unknown ids answer 400 InvalidSubnetID.NotFound; --notfound-message says how the message names
them: "first" (EC2's wording, "The subnet ID 'subnet-...' does not exist", the first unknown id
only), "all" (every unknown id, "The subnet IDs 'subnet-a, subnet-b' do not exist", as EC2 words
InvalidInstanceID.NotFound) or "vague" (no id at all: a wording the client cannot read).
FAULT: "ok", "throttle" (503 RequestLimitExceeded), "500" (InternalError), "denied" (403
UnauthorizedOperation), "expired" (400 RequestExpired), "garbage" (200 with a non-XML body),
"reset" (half an answer, then TCP RST), "reset_early" (RST before any answer), or
{"kind": ..., "retry_after": seconds}.
"""
import argparse
import base64
import json
import sys
import bisect
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import botocore.session
import botocore.validate

import standin_common  # noqa: E402  (test/sim/standin_common.py, beside this file)

SESSION = botocore.session.get_session()
MODEL = SESSION.get_service_model("ec2")
OP = MODEL.operation_model("DescribeSubnets")
TAGS_OP = MODEL.operation_model("DescribeTags")
XMLNS = MODEL.metadata["xmlNamespace"].rstrip("/") + "/"
VERSION = MODEL.metadata["apiVersion"]

# The "reset" fault's half answer, before the RST.
HALF_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 500\r\n\r\n"
               b"<DescribeSubnetsResp")
LOCK = threading.Lock()
STATE = {}


def reset_counters():
    STATE.update(stats={"requests": 0, "pages": 0, "describe_by_ids": 0, "describe_all": 0,
                        "not_found": 0, "describe_tags": 0, "tag_filters": [],
                        "bad_signature": 0, "invalid": 0, "faults": {}, "errors": []},
                 script=[], deny=[])


def error_xml(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
            '<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>'
            % (escape(code), escape(message), uuid.uuid4()))


def subnet_xml(s):
    v6 = "".join("<item><ipv6CidrBlock>%s</ipv6CidrBlock><associationId>subnet-cidr-assoc-%d"
                 "</associationId><ipv6CidrBlockState><state>associated</state>"
                 "</ipv6CidrBlockState></item>" % (escape(c), i)
                 for i, c in enumerate(s.get("Ipv6CidrBlocks", [])))
    return ("<item><subnetId>{id}</subnetId><subnetArn>arn:aws:ec2:{az}:111122223333:subnet/{id}"
            "</subnetArn><state>available</state><vpcId>vpc-0123456789abcdef0</vpcId>"
            "<ownerId>111122223333</ownerId>{cidr}<ipv6CidrBlockAssociationSet>{v6}"
            "</ipv6CidrBlockAssociationSet><availableIpAddressCount>{n}</availableIpAddressCount>"
            "<availabilityZone>{az}</availabilityZone><availabilityZoneId>use1-az9"
            "</availabilityZoneId><defaultForAz>false</defaultForAz><mapPublicIpOnLaunch>false"
            "</mapPublicIpOnLaunch><tagSet><item><key>Name</key><value>{id} &amp; co</value>"
            "</item></tagSet></item>").format(
                id=escape(s["SubnetId"]), az=escape(s["AvailabilityZone"]),
                cidr="<cidrBlock>%s</cidrBlock>" % escape(s["CidrBlock"]) if s.get("CidrBlock")
                else "", v6=v6, n=int(s["AvailableIpAddressCount"]))


def page_of(items, params, size):
    """(the page of items that params' NextToken points at, the <nextToken> element or ""), or
    None for a token we did not hand out."""
    start = 0
    if "NextToken" in params:
        try:
            start = int(base64.b64decode(params["NextToken"]).decode().split(":")[1])
        except (ValueError, IndexError):
            return None
    token = ""
    if start + size < len(items):
        token = "<nextToken>%s</nextToken>" % base64.b64encode(
            ("page:%d:%s" % (start + size, "x" * 40)).encode()).decode()
    return items[start:start + size], token


def paging_param(k, v, params):
    """MaxResults, NextToken and DryRun, common to the three actions: True when k is one."""
    if k == "MaxResults":
        params["MaxResults"] = int(v)
    elif k == "NextToken":
        params["NextToken"] = v
    elif k == "DryRun":
        params["DryRun"] = v == "true"
    else:
        return False
    return True


def eni_xml(i):
    ips = i.get("PrivateIpAddresses", [])
    return ("<item><networkInterfaceId>{id}</networkInterfaceId><subnetId>{sub}</subnetId>"
            "<vpcId>vpc-0123456789abcdef0</vpcId><availabilityZone>us-west-2a</availabilityZone>"
            "<status>in-use</status>{primary}<privateIpAddressesSet>{ips}</privateIpAddressesSet>"
            "<ipv4PrefixSet>{pfx}</ipv4PrefixSet><ipv6AddressesSet/><tagSet/></item>").format(
                id=escape(i["NetworkInterfaceId"]), sub=escape(i["SubnetId"]),
                primary="<privateIpAddress>%s</privateIpAddress>" % escape(ips[0]) if ips else "",
                ips="".join("<item><privateIpAddress>%s</privateIpAddress><primary>%s</primary>"
                            "</item>" % (escape(a), "true" if k == 0 else "false")
                            for k, a in enumerate(ips)),
                pfx="".join("<item><ipv4Prefix>%s</ipv4Prefix></item>" % escape(p)
                            for p in i.get("Ipv4Prefixes", [])))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="text/xml;charset=UTF-8", extra=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def reply_json(self, obj, status=200):
        self.reply(status, json.dumps(obj), "application/json")

    def do_GET(self):
        with LOCK:
            if self.path == "/truth":
                return self.reply_json({"subnets": STATE["subnets"]})
            if self.path == "/stats":
                return self.reply_json(STATE["stats"])
        self.reply_json({"error": "not found"}, 404)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if self.path in ("/subnet", "/faults", "/reset", "/tags", "/drain", "/outage", "/usage"):
            return self.control(json.loads(body or b"{}"))
        self.describe(body)

    def control(self, cmd):
        with LOCK:
            if self.path == "/reset":
                reset_counters()
            elif self.path == "/tags":
                STATE["tags"] = list(cmd.get("tags", []))
            elif self.path == "/faults":
                STATE["script"] = list(cmd.get("script", []))
                STATE["deny"] = list(cmd.get("deny", []))
            elif self.path == "/drain":
                times = [float(p[0]) for p in cmd["points"]]
                if times != sorted(times) or not times:
                    return self.reply_json({"error": "points must be in time order"}, 400)
                STATE["drains"][cmd["SubnetId"]] = (time.monotonic(), times,
                                                    [int(p[1]) for p in cmd["points"]])
            elif self.path == "/usage":
                STATE["interfaces"] = cmd.get("interfaces", [])
                STATE["reservations"] = cmd.get("reservations", [])
            elif self.path == "/outage":
                STATE["outage_until"] = time.monotonic() + float(cmd["seconds"])
            elif self.path == "/subnet":
                for s in STATE["subnets"]:
                    if s["SubnetId"] == cmd["SubnetId"]:
                        s["AvailableIpAddressCount"] = int(cmd["AvailableIpAddressCount"])
                        break
                else:
                    return self.reply_json({"error": "no such subnet"}, 404)
        self.reply_json({"ok": True})

    def invalid(self, status, code, message):
        with LOCK:
            STATE["stats"]["invalid"] += 1
            STATE["stats"]["errors"].append("%s: %s" % (code, message))
        self.reply(status, error_xml(code, message))

    def describe(self, body):
        with LOCK:
            STATE["stats"]["requests"] += 1
        why = standin_common.check_signature(self, body, "ec2", ARGS.region, KEYS)
        if why is not None:
            with LOCK:
                STATE["stats"]["bad_signature"] += 1
                STATE["stats"]["errors"].append(why)
            return self.reply(401, error_xml("AuthFailure", why))
        if not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return self.invalid(400, "InvalidParameterValue", "not a form body")
        try:
            form = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError):
            return self.invalid(400, "MalformedQueryString", "form body does not parse")
        flat = {}
        for k, v in form:
            if k in flat:
                return self.invalid(400, "InvalidParameterValue", "parameter %s twice" % k)
            flat[k] = v
        action = flat.pop("Action", None)
        if flat.pop("Version", None) != VERSION:
            return self.invalid(400, "InvalidParameterValue", "Version must be " + VERSION)
        if action in ("DescribeNetworkInterfaces", "GetSubnetCidrReservations"):
            return self.usage(action, flat)
        if action == "DescribeTags":
            return self.describe_tags(flat)
        if action != "DescribeSubnets":
            return self.invalid(400, "InvalidAction", "action %s is not served" % action)
        params, ids = {}, {}
        for k, v in flat.items():
            if k.startswith("SubnetId."):
                try:
                    ids[int(k.split(".", 1)[1])] = v
                except ValueError:
                    return self.invalid(400, "UnknownParameter", k)
            elif not paging_param(k, v, params):
                return self.invalid(400, "UnknownParameter", "The parameter %s is not recognized" % k)
        if ids:
            if sorted(ids) != list(range(1, len(ids) + 1)):
                return self.invalid(400, "InvalidParameterValue", "SubnetId.N not 1..n")
            params["SubnetIds"] = [ids[i] for i in sorted(ids)]
        try:
            botocore.validate.validate_parameters(params, OP.input_shape)
        except botocore.exceptions.ParamValidationError as e:
            return self.invalid(400, "InvalidParameterValue", str(e))
        if ids and "MaxResults" in params:
            return self.invalid(400, "InvalidParameterCombination",
                                "The parameter SubnetIds cannot be used with MaxResults")
        fault = next_fault()
        if fault is None and time.monotonic() < STATE["outage_until"]:
            fault = "500"
        if fault is not None and self.fault(fault):
            return
        with LOCK:
            now = time.monotonic()
            for s in STATE["subnets"]:
                d = STATE["drains"].get(s["SubnetId"])
                if d is not None:
                    k = bisect.bisect_right(d[1], now - d[0])
                    s["AvailableIpAddressCount"] = d[2][max(k - 1, 0)]
            subnets = [dict(s) for s in STATE["subnets"]]
            STATE["stats"]["describe_by_ids" if ids else "describe_all"] += 1
        if ids:
            known = {s["SubnetId"]: s for s in subnets}
            missing = [i for i in params["SubnetIds"] if i not in known]
            if missing:
                with LOCK:
                    STATE["stats"]["not_found"] += 1
                if ARGS.notfound_message == "all" and len(missing) > 1:
                    text = "The subnet IDs '%s' do not exist" % ", ".join(missing)
                elif ARGS.notfound_message == "vague":
                    text = "One or more subnet IDs do not exist"
                else:
                    text = "The subnet ID '%s' does not exist" % missing[0]
                return self.reply(400, error_xml("InvalidSubnetID.NotFound", text))
            subnets = [known[i] for i in params["SubnetIds"]]
        paged = page_of(subnets, params, min(ARGS.page_size, params.get("MaxResults", ARGS.page_size)))
        if paged is None:
            return self.invalid(400, "InvalidParameterValue", "bad NextToken")
        page, token = paged
        with LOCK:
            STATE["stats"]["pages"] += 1
        self.reply(200, '<?xml version="1.0" encoding="UTF-8"?>\n<DescribeSubnetsResponse '
                   'xmlns="%s">\n  <requestId>%s</requestId>\n  <subnetSet>%s</subnetSet>%s\n'
                   '</DescribeSubnetsResponse>\n'
                   % (XMLNS, uuid.uuid4(), "".join(subnet_xml(s) for s in page), token))

    def usage(self, action, flat):
        """DescribeNetworkInterfaces or GetSubnetCidrReservations, validated with botocore."""
        params, filters = {}, {}
        for k, v in flat.items():
            parts = k.split(".")
            if paging_param(k, v, params):
                pass
            elif k == "SubnetId" and action == "GetSubnetCidrReservations":
                params["SubnetId"] = v
            elif parts[0] == "Filter" and len(parts) in (3, 4) and parts[1].isdigit():
                f = filters.setdefault(int(parts[1]), {"Values": {}})
                if len(parts) == 3 and parts[2] == "Name":
                    f["Name"] = v
                elif len(parts) == 4 and parts[2] == "Value" and parts[3].isdigit():
                    f["Values"][int(parts[3])] = v
                else:
                    return self.invalid(400, "UnknownParameter", k)
            else:
                return self.invalid(400, "UnknownParameter", "The parameter %s is not recognized" % k)
        if filters:
            params["Filters"] = [{"Name": filters[i].get("Name"),
                                  "Values": [filters[i]["Values"][j] for j in sorted(filters[i]["Values"])]}
                                 for i in sorted(filters)]
        try:
            botocore.validate.validate_parameters(params, MODEL.operation_model(action).input_shape)
        except botocore.exceptions.ParamValidationError as e:
            return self.invalid(400, "InvalidParameterValue", str(e))
        mr = params.get("MaxResults")
        if mr is not None and not 5 <= mr <= 1000:
            return self.invalid(400, "InvalidParameterValue", "MaxResults must be 5 to 1000")
        with LOCK:
            STATE["stats"]["requests_by_action"] = STATE["stats"].get("requests_by_action", {})
            STATE["stats"]["requests_by_action"][action] = \
                STATE["stats"]["requests_by_action"].get(action, 0) + 1
            STATE["stats"].setdefault("usage_requests", []).append(
                {"action": action, "MaxResults": mr, "Filters": params.get("Filters"),
                 "SubnetId": params.get("SubnetId")})
        with LOCK:
            denied = action in STATE["deny"]
        fault = "denied" if denied else next_fault()
        if fault is not None and self.fault(fault, action):
            return
        if action == "DescribeNetworkInterfaces":
            subnet_ids = [v for f in params.get("Filters", []) if f["Name"] == "subnet-id"
                          for v in f["Values"]]
            with LOCK:
                items = [dict(i) for i in STATE["interfaces"]
                         if not subnet_ids or i["SubnetId"] in subnet_ids]
        else:
            with LOCK:
                items = [dict(r) for r in STATE["reservations"] if r["SubnetId"] == params["SubnetId"]]
        paged = page_of(items, params, min(ARGS.page_size * 3, mr or 1000))
        if paged is None:
            return self.invalid(400, "InvalidParameterValue", "bad NextToken")
        page, token = paged
        if action == "DescribeNetworkInterfaces":
            body = "<networkInterfaceSet>%s</networkInterfaceSet>" % "".join(eni_xml(i) for i in page)
        else:
            body = ("<subnetIpv4CidrReservationSet>%s</subnetIpv4CidrReservationSet>"
                    "<subnetIpv6CidrReservationSet/>" % "".join(
                        "<item><subnetCidrReservationId>scr-%017x</subnetCidrReservationId>"
                        "<subnetId>%s</subnetId><cidr>%s</cidr><reservationType>prefix"
                        "</reservationType><ownerId>111122223333</ownerId></item>"
                        % (abs(hash(r["Cidr"])), escape(r["SubnetId"]), escape(r["Cidr"]))
                        for r in page))
        self.reply(200, '<?xml version="1.0" encoding="UTF-8"?>\n<%sResponse xmlns="%s">\n'
                   '  <requestId>%s</requestId>\n  %s%s\n</%sResponse>\n'
                   % (action, XMLNS, uuid.uuid4(), body, token, action))

    def describe_tags(self, flat):
        filters, params = {}, {}
        for k, v in flat.items():
            part = k.split(".")
            if part[0] == "Filter" and len(part) == 3 and part[2] == "Name" and part[1].isdigit():
                filters.setdefault(int(part[1]), {"Values": {}})["Name"] = v
            elif part[0] == "Filter" and len(part) == 4 and part[2] == "Value" and part[1].isdigit() \
                    and part[3].isdigit():
                filters.setdefault(int(part[1]), {"Values": {}})["Values"][int(part[3])] = v
            elif k == "MaxResults":
                params["MaxResults"] = int(v)
            elif k == "DryRun":
                params["DryRun"] = v == "true"
            else:
                return self.invalid(400, "UnknownParameter", "The parameter %s is not recognized" % k)
        if sorted(filters) != list(range(1, len(filters) + 1)):
            return self.invalid(400, "InvalidParameterValue", "Filter.N not 1..n")
        flist = []
        for i in sorted(filters):
            f = filters[i]
            if "Name" not in f or sorted(f["Values"]) != list(range(1, len(f["Values"]) + 1)):
                return self.invalid(400, "InvalidParameterValue", "Filter.%d without Name or Value.1..n" % i)
            flist.append({"Name": f["Name"], "Values": [f["Values"][j] for j in sorted(f["Values"])]})
        if flist:
            params["Filters"] = flist
        try:
            botocore.validate.validate_parameters(params, TAGS_OP.input_shape)
        except botocore.exceptions.ParamValidationError as e:
            return self.invalid(400, "InvalidParameterValue", str(e))
        fields = {"resource-id": "ResourceId", "key": "Key", "value": "Value",
                  "resource-type": "ResourceType"}
        for f in flist:
            if f["Name"] not in fields:
                return self.invalid(400, "InvalidParameterValue", "The filter '%s' is invalid" % f["Name"])
        fault = next_fault()
        if fault is not None and self.fault(fault):
            return
        with LOCK:
            STATE["stats"]["describe_tags"] += 1
            STATE["stats"]["tag_filters"].append(flist)
            tags = [dict(t, ResourceType=t.get("ResourceType", "instance")) for t in STATE["tags"]]
        hits = [t for t in tags if all(t[fields[f["Name"]]] in f["Values"] for f in flist)]
        hits.sort(key=lambda t: t["Key"].encode())
        items = "".join("<item><resourceId>%s</resourceId><resourceType>%s</resourceType><key>%s</key>"
                        "<value>%s</value></item>" % (escape(t["ResourceId"]), escape(t["ResourceType"]),
                                                       escape(t["Key"]), escape(t["Value"])) for t in hits)
        self.reply(200, '<?xml version="1.0" encoding="UTF-8"?>\n<DescribeTagsResponse xmlns="%s">\n'
                   '  <requestId>%s</requestId>\n  <tagSet>%s</tagSet>\n</DescribeTagsResponse>\n'
                   % (XMLNS, uuid.uuid4(), items))

    def fault(self, f, action="DescribeSubnets"):
        """Answers with the fault; False for "ok" (answer normally)."""
        kind = f["kind"] if isinstance(f, dict) else f
        extra = [("Retry-After", str(f["retry_after"]))] if isinstance(f, dict) and \
            "retry_after" in f else []
        with LOCK:
            STATE["stats"]["faults"][kind] = STATE["stats"]["faults"].get(kind, 0) + 1
        if kind == "ok":
            return False
        if kind == "throttle":
            self.reply(503, error_xml("RequestLimitExceeded", "Request limit exceeded."), extra=extra)
        elif kind == "500":
            self.reply(500, error_xml("InternalError", "An internal error has occurred"), extra=extra)
        elif kind == "denied":
            self.reply(403, error_xml("UnauthorizedOperation",
                                      "You are not authorized to perform this operation. "
                                      "ec2:" + action))
        elif kind == "expired":
            self.reply(400, error_xml("RequestExpired", "Request has expired."))
        elif kind == "garbage":
            self.reply(200, "<html>proxy error</html", "text/html")
        elif kind in ("reset", "reset_early"):
            standin_common.reset_connection(self, HALF_ANSWER if kind == "reset" else None)
        else:
            raise ValueError("unknown fault " + kind)
        return True


def next_fault():
    with LOCK:
        return STATE["script"].pop(0) if STATE["script"] else None


def main():
    global ARGS, KEYS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    standin_common.add_common_args(ap)
    ap.add_argument("--truth", required=True, help="JSON file with the subnets")
    ap.add_argument("--page-size", type=int, default=2)
    ap.add_argument("--faults", default="[]", help="JSON list: the fault script from the start")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--notfound-message", choices=("first", "all", "vague"), default="first")
    ARGS = ap.parse_args()
    if not ARGS.bind.startswith("127."):
        sys.exit("--bind must be a loopback address")
    KEYS = standin_common.parse_keys(ARGS.key)
    with open(ARGS.truth) as f:
        truth = json.load(f)
    STATE["subnets"] = truth.get("subnets", [])
    STATE["tags"] = truth.get("tags", [])
    STATE["interfaces"] = truth.get("interfaces", [])
    STATE["reservations"] = truth.get("reservations", [])
    reset_counters()
    STATE.update(drains={}, outage_until=0.0)
    STATE["script"] = json.loads(ARGS.faults)
    ThreadingHTTPServer.daemon_threads = True
    http = ThreadingHTTPServer((ARGS.bind, 0), Handler)
    standin_common.serve_until_stdin_closes([http], "READY http=%d" % http.server_address[1],
                                            ARGS.lifetime)


if __name__ == "__main__":
    main()
