"""AWS_CA_BUNDLE, end to end through the daemon, with IRSA credentials (AWS_ROLE_ARN and
AWS_WEB_IDENTITY_TOKEN_FILE) from an STS stand-in that serves HTTPS under a CA made at test time:
- with the CA as AWS_CA_BUNDLE, the daemon gets credentials from STS and publishes, signed with
  them, to the CloudWatch stand-in;
- without it, TLS verification fails: nothing reaches STS, nothing is published, and /readyz
  says the STS call failed on the certificate;
- with it, an STS AccessDenied is named on /readyz;
- a bundle that cannot be read stops the start with an error naming the variable."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, failures, finish, http, http_status, read_events, stop_all, stop_proc  # noqa: E402

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
SHARED = os.environ["CMH_SHARED_DIR"]

STS_OK = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAWEB1</AccessKeyId>
      <SecretAccessKey>secretweb</SecretAccessKey>
      <SessionToken>tokenweb</SessionToken>
      <Expiration>{{EXP+3600}}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>
"""
STS_DENIED = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
  <Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>
"""


def standin(cmd):
    aws.stdin.write(json.dumps(cmd) + "\n")
    aws.stdin.flush()
    return json.loads(aws.stdout.readline())


tmp = tempfile.mkdtemp(prefix="cmh-cabundle-")
token = os.path.join(tmp, "token")
with open(token, "w") as f:
    f.write("irsa.jwt.token\n")
sim = subprocess.Popen([os.path.join(BUILD, "test", "ipamd_sim"), "--nodes", "2", "--base", "127.152.0.1",
                        "--seed", "5", "--template", os.path.join(SHARED, "testdata/ipamd/cni_test1.data"),
                        "--truth-dir", tmp, "--targets-out", os.path.join(tmp, "targets"), "--workers", "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
aws = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/aws_standin.py"), "--lifetime", "120"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
cw = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py"),
                       "--key", "ASIAWEB1:secretweb:tokenweb", "--region", "us-west-2", "--lifetime", "120"],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
daemon = None
try:
    control = "http://" + re.search(r"control=(\S+)", sim.stdout.readline()).group(1)
    ready = aws.stdout.readline()
    m = re.search(r"https=(\d+) ca=(\S+)", ready)
    check("STS stand-in ready with its own CA", m is not None, ready)
    sts_url, ca = "https://127.0.0.1:%s/" % m.group(1), m.group(2)
    cw_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", cw.stdout.readline()).group(1)
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
    base_env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
                "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": "e2e",
                "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/cni-metrics-helper",
                "AWS_WEB_IDENTITY_TOKEN_FILE": token, "AWS_ENDPOINT_URL_STS": sts_url,
                "AWS_ENDPOINT_URL_CLOUDWATCH": cw_url, "AWS_EC2_METADATA_DISABLED": "true",
                "LOG_FORMAT": "json", "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0",
                "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "HTTP_TIMEOUT": "3",
                "SHUTDOWN_TIMEOUT": "3"}

    def start(extra):
        global daemon
        daemon = subprocess.Popen([BIN], env=dict(base_env, **extra), stderr=subprocess.PIPE, text=True)
        ev = read_events(daemon, "listening", 10)
        return "http://127.0.0.1:%d" % ev["port"] if ev else None

    def stop():
        global daemon
        rc = stop_proc(daemon, timeout=10)
        daemon = None
        return rc

    def datums():
        return len(json.loads(http(cw_url + "/datums")))

    def wait_readyz(own, pred, limit_s=20):
        deadline = time.monotonic() + limit_s
        st, body = None, ""
        while time.monotonic() < deadline:
            st, body = http_status(own + "/readyz")
            if pred(st, body):
                break
            time.sleep(0.3)
        return st, body

    # 1. The bundle trusted: STS over HTTPS, then datums signed with its credentials.
    standin({"cmd": "script", "exchanges": [{"method": "POST", "path": "/", "status": 200, "body": STS_OK,
                                               "headers": {"content-type": "text/xml"}}]})
    own = start({"AWS_CA_BUNDLE": ca})
    deadline = time.monotonic() + 20
    while own and time.monotonic() < deadline and datums() == 0:
        time.sleep(0.3)
    n1 = datums()
    check("with AWS_CA_BUNDLE: datums published with the STS credentials", n1 > 0, n1)
    st = json.loads(http(cw_url + "/stats"))
    check("CloudWatch stand-in: every request signed with ASIAWEB1 and valid",
          st["bad_signature"] == 0 and st["invalid_params"] == 0, st)
    log = standin({"cmd": "log"})
    sts_reqs = [r for r in log["requests"] if r["listener"] == "https"]
    check("one AssumeRoleWithWebIdentity with the role and the token file's token",
          len(sts_reqs) == 1 and "Action=AssumeRoleWithWebIdentity" in sts_reqs[0]["body"]
          and "WebIdentityToken=irsa.jwt.token" in sts_reqs[0]["body"]
          and "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fcni-metrics-helper" in sts_reqs[0]["body"]
          and not log["mismatches"], (sts_reqs, log["mismatches"]))
    check("daemon 1 stopped cleanly", stop() == 0)

    # 2. Without the bundle: the stand-in's certificate is not trusted; nothing reaches STS.
    standin({"cmd": "reset"})
    own = start({})
    st, body = wait_readyz(own, lambda s, b: "STS" in b)
    check("without AWS_CA_BUNDLE: /readyz 503, the STS call failed on the certificate",
          st == 503 and "AssumeRoleWithWebIdentity" in body and
          re.search(r"certificate|SSL|verif", body, re.I) is not None, (st, body))
    log = standin({"cmd": "log"})
    check("without AWS_CA_BUNDLE: no request reached STS", log["requests"] == [], log["requests"])
    check("without AWS_CA_BUNDLE: nothing more published", datums() == n1, datums())
    check("daemon 2 stopped cleanly", stop() == 0)

    # 3. With the bundle, STS refuses: the reason is named.
    standin({"cmd": "reset"})
    standin({"cmd": "script", "exchanges": [{"method": "POST", "path": "/", "status": 403, "body": STS_DENIED,
                                               "headers": {"content-type": "text/xml"}}] * 4})
    own = start({"AWS_CA_BUNDLE": ca})
    st, body = wait_readyz(own, lambda s, b: "AccessDenied" in b)
    check("STS AccessDenied: /readyz 503 naming it", st == 503 and "AccessDenied" in body and
          "sts:AssumeRoleWithWebIdentity" in body, (st, body))
    check("STS AccessDenied: nothing more published", datums() == n1, datums())
    check("daemon 3 stopped cleanly", stop() == 0)

    # 4. A bundle that cannot be read is a configuration error.
    r = subprocess.run([BIN], env=dict(base_env, AWS_CA_BUNDLE=os.path.join(tmp, "missing.pem")),
                       capture_output=True, text=True, timeout=10)
    check("unreadable AWS_CA_BUNDLE: the start fails naming the variable and the reason",
          r.returncode != 0 and "AWS_CA_BUNDLE=" in r.stderr and "No such file" in r.stderr,
          (r.returncode, r.stderr[-400:]))
finally:
    stop_all(daemon, [aws, cw], sim, control)
finish()
