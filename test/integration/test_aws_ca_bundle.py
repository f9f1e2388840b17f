"""AWS_CA_BUNDLE, end to end through the daemon, with IRSA credentials (AWS_ROLE_ARN and
AWS_WEB_IDENTITY_TOKEN_FILE) from an STS stand-in that serves HTTPS under a CA made at test time:
- with the CA as AWS_CA_BUNDLE, the daemon gets credentials from STS and publishes, signed with
  them, to the CloudWatch stand-in;
- without it, TLS verification fails: nothing reaches STS, nothing is published, and /readyz
  says the STS call failed on the certificate;
- with it, an STS AccessDenied is named on /readyz;
- STS answering 503, Throttling and a bare 500 before it answers: the rounds made meanwhile are
  published once it does, every datum accounted for;
- a bundle that cannot be read stops the start with an error naming the variable."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import (check, finish, http, http_status, parse_metrics, read_events,  # noqa: E402
                     spawn_ipamd_sim, stop_all, stop_proc)

BIN = os.environ["CMH_BIN"]
BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]

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

STS_UNAVAILABLE = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Receiver</Type><Code>ServiceUnavailable</Code><Message>Service unavailable</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c8</RequestId>
</ErrorResponse>
"""
STS_THROTTLED = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c9</RequestId>
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
sim = spawn_ipamd_sim(BUILD, DATA, tmp, 2, "127.152.0.1", seed=5)
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

    # 5. STS failing (503, throttling, a 500 with no XML), then answering: the rounds made meanwhile
    #    are kept and published once credentials come; produced = received + dropped, exactly.
    standin({"cmd": "reset"})
    fail = [{"method": "POST", "path": "/", "status": 503, "body": STS_UNAVAILABLE,
             "headers": {"content-type": "text/xml"}},
            {"method": "POST", "path": "/", "status": 400, "body": STS_THROTTLED,
             "headers": {"content-type": "text/xml"}},
            {"method": "POST", "path": "/", "status": 500, "body": "oops",
             "headers": {"content-type": "text/plain"}}]
    standin({"cmd": "script", "exchanges": fail + [{"method": "POST", "path": "/", "status": 200, "body": STS_OK,
                                                      "headers": {"content-type": "text/xml"}}]})
    before = datums()
    daemon = subprocess.Popen([BIN], env=dict(base_env, AWS_CA_BUNDLE=ca, USE_PROMETHEUS="true",
                                              CW_BACKOFF_BASE="100ms", CW_BACKOFF_CAP="1"),
                              stderr=subprocess.PIPE, text=True)
    port = [None]
    seen = []

    def note(ev):
        if ev.get("msg") == "listening":
            port[0] = ev["port"]
        elif ev.get("msg") == "cloudwatch has no credentials":
            seen.append(ev.get("why", ""))

    rounds = [read_events(daemon, "round", 15, note)]
    for _ in range(2):  # a round after each of the first two failures: made while STS fails
        read_events(daemon, "cloudwatch has no credentials", 15, note)
        daemon.send_signal(signal.SIGUSR1)
        rounds.append(read_events(daemon, "round", 15, note))
    own = "http://127.0.0.1:%s" % port[0]
    m, deadline = {}, time.monotonic() + 30
    while time.monotonic() < deadline:
        m = parse_metrics(http(own + "/metrics").decode())
        if m.get("cni_metrics_helper_cloudwatch_queue_datums", 1) == 0 and datums() > before:
            break
        time.sleep(0.3)
    produced = sum(r["datums"] for r in rounds if r)
    received = datums() - before
    dropped = sum(v for k, v in m.items() if k.startswith('cni_metrics_helper_cloudwatch_datums_total{outcome="dropped'))
    check("STS 503/throttling/500: the failures seen, every round while it failed",
          len([r for r in rounds if r]) == 3 and len(seen) >= 2 and
          "ServiceUnavailable" in " ".join(seen) and "Throttling" in " ".join(seen), (rounds, seen))
    check("STS recovered: produced = received + dropped, none dropped",
          produced > 0 and received + dropped == produced and dropped == 0, (produced, received, dropped))
    st = json.loads(http(cw_url + "/stats"))
    check("STS recovered: every request signed with the STS credentials", st["bad_signature"] == 0, st)
    log = standin({"cmd": "log"})
    check("STS recovered: four AssumeRoleWithWebIdentity calls, the script used up",
          len([r for r in log["requests"] if r["listener"] == "https"]) == 4 and log["left"] == 0, log)
    st, body = http_status(own + "/readyz")
    check("STS recovered: /readyz 200", st == 200, (st, body))
    check("daemon 5 stopped cleanly", stop() == 0)

    # 4. A bundle that cannot be read is a configuration error.
    r = subprocess.run([BIN], env=dict(base_env, AWS_CA_BUNDLE=os.path.join(tmp, "missing.pem")),
                       capture_output=True, text=True, timeout=10)
    check("unreadable AWS_CA_BUNDLE: the start fails naming the variable and the reason",
          r.returncode != 0 and "AWS_CA_BUNDLE=" in r.stderr and "No such file" in r.stderr,
          (r.returncode, r.stderr[-400:]))
finally:
    stop_all(daemon, [aws, cw], sim, control)
finish()
