#!/usr/bin/python3
"""Differential test: our credential-document parsers (via aws_creds_probe) against botocore.

Generates N documents of each kind, varied the way real answers vary (key and element order,
whitespace, `"Key" : "value"` spacing, unknown keys and elements, XML entities and CDATA, an XML
declaration, fractional seconds and UTC offsets in timestamps), plus truncated copies:
  J  IMDS / container-credential JSON  -> botocore's reading: json + botocore.utils.parse_timestamp
  X  STS AssumeRoleWithWebIdentity XML -> botocore's Query-protocol parser with the STS model
  T  ISO-8601 timestamps               -> botocore.utils.parse_timestamp
Valid documents must give the same credentials, error code and expiry (ms); a document botocore
cannot read must be rejected by us too. Usage: aws_creds_botocore_diff.py PROBE [N]
"""
import json
import random
import subprocess
import sys
from xml.sax.saxutils import escape

import botocore.parsers
import botocore.session
import botocore.utils

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def rand_str(rng, alphabet, lo, hi):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_time(rng):
    y, mo, d = rng.randint(2000, 2099), rng.randint(1, 12), rng.randint(1, 28)
    h, mi, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    base = "%04d-%02d-%02dT%02d:%02d:%02d" % (y, mo, d, h, mi, s)
    frac = rng.choice(["", "", ".%03d" % rng.randint(0, 999), ".5"])
    tz = rng.choice(["Z", "Z", "+00:00", "+05:30", "-08:00"])
    return base + frac + tz


def creds(rng):
    return {"AccessKeyId": "ASIA" + rand_str(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 12, 16),
            "SecretAccessKey": rand_str(rng, B64, 40, 40),
            "Token": rand_str(rng, B64, 20, 900),
            "Expiration": rand_time(rng)}


def gen_json(rng):
    c = creds(rng)
    items = list(c.items())
    extra = [("Code", "Success"), ("LastUpdated", rand_time(rng)), ("Type", "AWS-HMAC"),
             ("RoleArn", "arn:aws:iam::123456789012:role/r"), ("AccountId", "123456789012")]
    items += rng.sample(extra, rng.randint(0, len(extra)))
    rng.shuffle(items)
    colon = rng.choice([":", " : ", ": "])
    nl = rng.choice(["", "\n  "])
    body = "{" + nl + ("," + nl).join(json.dumps(k) + colon + json.dumps(v) for k, v in items)
    return body + ("\n" if nl else "") + "}"


def xml_text(rng, s):
    if rng.random() < 0.1:
        return "<![CDATA[" + s + "]]>"
    return escape(s)


def gen_xml(rng):
    decl = rng.choice(["", '<?xml version="1.0" encoding="UTF-8"?>\n'])
    ns = ' xmlns="https://sts.amazonaws.com/doc/2011-06-15/"'
    if rng.random() < 0.25:
        code = rng.choice(["InvalidIdentityToken", "ExpiredTokenException", "AccessDenied"])
        msg = rng.choice(["", "No OpenIDConnect provider found in your account for https://x",
                          "a < b & c"])
        parts = ["<Type>Sender</Type>", "<Code>%s</Code>" % code]
        if msg:
            parts.append("<Message>%s</Message>" % xml_text(rng, msg))
        rng.shuffle(parts)
        return decl + "<ErrorResponse%s>\n  <Error>%s</Error>\n  <RequestId>r</RequestId>\n" \
            "</ErrorResponse>\n" % (ns, "\n    ".join(parts))
    c = creds(rng)
    if rng.random() < 0.2:
        c["SecretAccessKey"] = c["SecretAccessKey"][:30] + "&<>" + c["SecretAccessKey"][33:]
    names = {"AccessKeyId": "AccessKeyId", "SecretAccessKey": "SecretAccessKey",
             "Token": "SessionToken", "Expiration": "Expiration"}
    fields = ["<%s>%s</%s>" % (names[k], xml_text(rng, v), names[k]) for k, v in c.items()]
    rng.shuffle(fields)
    result = ["<Credentials>" + "\n      ".join(fields) + "</Credentials>",
              "<Audience>my-cluster.sk1.us-west-2.eks.amazonaws.com</Audience>",
              "<AssumedRoleUser><AssumedRoleId>AROA:s</AssumedRoleId><Arn>arn:aws:sts::1:"
              "assumed-role/r/s</Arn></AssumedRoleUser>",
              "<Provider>arn:aws:iam::1:oidc-provider/x</Provider>",
              "<SubjectFromWebIdentityToken>system:serviceaccount:kube-system:cni-metrics-helper"
              "</SubjectFromWebIdentityToken>"]
    rng.shuffle(result)
    return (decl + "<AssumeRoleWithWebIdentityResponse%s>\n  <AssumeRoleWithWebIdentityResult>"
            "\n    %s\n  </AssumeRoleWithWebIdentityResult>\n  <ResponseMetadata><RequestId>x"
            "</RequestId></ResponseMetadata>\n</AssumeRoleWithWebIdentityResponse>\n"
            % (ns, "\n    ".join(result)))


def ms(dt):
    return int(round(dt.timestamp() * 1000))


def oracle_json(doc):
    try:
        d = json.loads(doc)
        if not isinstance(d, dict):
            return None
        if d.get("Code", "Success") != "Success":
            return {"code": d["Code"]}
        return {"akid": d["AccessKeyId"], "secret": d["SecretAccessKey"], "token": d["Token"],
                "expires_ms": ms(botocore.utils.parse_timestamp(d["Expiration"]))}
    except Exception:
        return None


STS = botocore.session.get_session().get_service_model("sts")
OUT = STS.operation_model("AssumeRoleWithWebIdentity").output_shape


def oracle_xml(doc):
    error = "<ErrorResponse" in doc
    try:
        parser = botocore.parsers.create_parser("query")
        r = parser.parse({"body": doc.encode(), "headers": {},
                          "status_code": 400 if error else 200}, OUT)
    except Exception:
        return None
    if error:
        code = r.get("Error", {}).get("Code")
        return {"code": code} if code else None
    c = r.get("Credentials")
    if not c or len(c) != 4:
        return None
    return {"akid": c["AccessKeyId"], "secret": c["SecretAccessKey"], "token": c["SessionToken"],
            "expires_ms": ms(c["Expiration"])}


def main():
    probe = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    rng = random.Random(20261126)
    cases = []
    for i in range(n):
        for kind, gen in (("J", gen_json), ("X", gen_xml)):
            doc = gen(rng)
            cases.append((kind, doc, True))
            cut = rng.randint(0, len(doc.rstrip()) - 1)
            cases.append((kind, doc[:cut], False))
        cases.append(("T", rand_time(rng), True))
    lines = "".join("%s %s\n" % (k, d.encode().hex()) for k, d, _ in cases)
    out = subprocess.run([probe], input=lines.encode(), capture_output=True, timeout=240,
                         check=True).stdout.decode().splitlines()
    assert len(out) == len(cases), (len(out), len(cases))
    checked = {"valid": 0, "rejected": 0}
    bad = []
    for (kind, doc, whole), line in zip(cases, out):
        ours = json.loads(line)
        if kind == "T":
            want = ms(botocore.utils.parse_timestamp(doc))
            if ours["rc"] != 0 or ours["expires_ms"] != want:
                bad.append((kind, doc, ours, want))
            checked["valid"] += 1
            continue
        want = oracle_json(doc) if kind == "J" else oracle_xml(doc)
        if whole and want is None:
            bad.append((kind, doc, ours, "botocore could not read a generated document"))
            continue
        if want is None:
            checked["rejected"] += 1
            if ours["rc"] == 0:
                bad.append((kind, doc, ours, "botocore rejects"))
            continue
        checked["valid"] += 1
        if ours["rc"] != 0:
            bad.append((kind, doc, ours, want))
        elif "code" in want:
            if ours["code"] != want["code"]:
                bad.append((kind, doc, ours, want))
        elif any(ours[k] != v for k, v in want.items()):
            bad.append((kind, doc, ours, want))
    for b in bad[:5]:
        print("MISMATCH", json.dumps(b, default=str)[:2000])
    print("documents: %d, agreed valid: %d, both rejected: %d, mismatches: %d"
          % (len(cases), checked["valid"], checked["rejected"], len(bad)))
    sys.exit(1 if bad or checked["valid"] < n or checked["rejected"] < n // 2 else 0)


if __name__ == "__main__":
    main()
