"""The peers of the subnet-view end-to-end tests: the ipamD simulator, the CloudWatch and EC2
stand-ins (botocore checking every request), and the daemon environment that points at them."""
import json
import os
import re
import subprocess
import time

from testlib import spawn_ipamd_sim

SRC = os.environ["CMH_SOURCE_DIR"]


class Peers:
    """Starts the three peers (every one bound to 127.x, each with its own lifetime) for cluster
    `cluster`, nodes from address `base`, EC2 truth from truth_file. .env is the daemon's
    environment without the test's own settings."""

    def __init__(self, build, data, tmp, cluster, base, nodes, seed, truth_file, lifetime):
        key, secret = "AKID" + cluster.upper(), cluster + "-secret"
        common = ["--key", "%s:%s" % (key, secret), "--region", "us-west-2",
                  "--lifetime", str(int(lifetime))]
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                     text=True)
        self.sim = spawn_ipamd_sim(build, data, tmp, nodes, base, seed=seed, truth=False)
        self.cw = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/cloudwatch_standin.py")]
                                   + common, **pipes)
        self.ec2 = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "test/sim/ec2_standin.py")]
                                    + common + ["--truth", truth_file, "--page-size", "2"], **pipes)
        self.control = ""
        self.control = "http://" + re.search(r"control=(\S+)", self.sim.stdout.readline()).group(1)
        self.cw_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", self.cw.stdout.readline()).group(1)
        self.ec2_url = "http://127.0.0.1:" + re.search(r"http=(\d+)", self.ec2.stdout.readline()).group(1)
        targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
        self.env = {"PATH": "/usr/bin:/bin", "SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes",
                    "AWS_REGION": "us-west-2", "AWS_CLUSTER_ID": cluster, "AWS_ACCESS_KEY_ID": key,
                    "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_CLOUDWATCH": self.cw_url,
                    "AWS_ENDPOINT_URL_EC2": self.ec2_url, "AWS_EC2_METADATA_DISABLED": "true",
                    "LOG_FORMAT": "json", "SCRAPE_JITTER": "0", "PROMETHEUS_ADDRESS": "127.0.0.1",
                    "PROMETHEUS_PORT": "0", "USE_PROMETHEUS": "true", "CW_BACKOFF_BASE": "50ms",
                    "CW_BACKOFF_CAP": "300ms", "HTTP_TIMEOUT": "3", "SUBNET_METRICS": "true"}


def own_url(log_path, limit_s=20):
    """Our /metrics base URL from the daemon's JSON log file (its "listening" event), or None."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for line in open(log_path):
            ev = json.loads(line)
            if ev.get("msg") == "listening":
                return "http://127.0.0.1:%d" % ev["port"]
        time.sleep(0.2)
    return None
