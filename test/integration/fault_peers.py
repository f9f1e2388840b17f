"""Peers and process handling shared by the fault matrix (test_fault_matrix.py) and the soak
(test/soak/soak.py): the ipamD fleet simulator, the fake Kubernetes API, the CloudWatch stand-in,
the AWS credential stand-in and the daemon itself, each started on loopback and stopped by the
caller (every wait bounded). Nothing here decides what is right; the tests do, against the
simulator's truth (truth_model.py) and the stand-ins' own records."""
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request

from testlib import parse_metrics, stop_proc

PY = "/usr/bin/python3"
BIN = os.environ.get("CMH_BIN", "")
BUILD = os.environ.get("CMH_BUILD_DIR", "")
SRC = os.environ.get("CMH_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DATA = os.environ.get("CMH_DATA_DIR", os.path.join(SRC, "test", "data"))
TEMPLATE = os.path.join(DATA, "ipamd/cni_test1.data")


def sanitized(build_dir=None):
    """True in a -DCMH_SANITIZE=ON build (ASan+UBSan), read from the build's CMake cache."""
    try:
        with open(os.path.join(build_dir or BUILD, "CMakeCache.txt")) as f:
            return "CMH_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


def http(url, method="GET", body=None, timeout=30):
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


class Sim:
    """ipamd_sim: N nodes on base..base+N-1 at `port` (all of them, or the caller fails)."""

    def __init__(self, nodes, base, port, tmp, faults="", churn=0, restart=0, seed=1, truth=True,
                 sim_bin=None, extra=()):
        self.tmp = tmp
        self.targets_file = os.path.join(tmp, "targets")
        args = [sim_bin or os.path.join(BUILD, "test", "ipamd_sim"), "--nodes", str(nodes),
                "--base", base, "--port", str(port), "--seed", str(seed), "--template", TEMPLATE,
                "--targets-out", self.targets_file, "--churn", str(churn), "--restart", str(restart)]
        if truth:
            args += ["--truth-dir", tmp]
        if faults:
            args += ["--faults", faults]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"control=(\S+)", line)
        if m is None:
            self.stop()
            raise RuntimeError("simulator did not start: %r" % line)
        self.control = "http://" + m.group(1)
        self.nodes = [l.split() for l in open(self.targets_file)]  # name ip port
        self.epoch = 0

    def all_on_port(self, port):
        return all(int(p) == port for _, _, p in self.nodes)

    def advance(self):
        out = json.loads(http(self.control + "/advance", "POST", b""))
        self.epoch = out.get("epoch", self.epoch + 1)
        return out

    def set_faults(self, spec):
        http(self.control + "/faults", "POST", spec.encode())

    def stats(self):
        return json.loads(http(self.control + "/stats"))

    def truth(self, epoch):
        with open(os.path.join(self.tmp, "epoch-%06d.nodes.jsonl" % epoch)) as f:
            return [json.loads(l) for l in f]

    def epoch_summary(self, epoch):
        with open(os.path.join(self.tmp, "epoch-%06d.json" % epoch)) as f:
            return json.load(f)

    def stop(self):
        try:
            http(self.control + "/quit", "POST", b"", timeout=5)
        except Exception:
            pass
        stop_proc(self.proc, timeout=10)


class StdinPeer:
    """A Python stand-in of test/sim/ that prints its READY line on stdout and lives until its stdin
    closes."""

    def _start(self, argv, ready_re, what):
        """Starts it; the match of ready_re on its first line (stopped and RuntimeError if none)."""
        self.proc = subprocess.Popen([PY] + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.search(ready_re, line)
        if m is None:
            self.stop()
            raise RuntimeError("%s did not start: %r" % (what, line))
        return m

    def stop(self):
        try:
            self.proc.stdin.close()
        except Exception:
            pass
        stop_proc(self.proc, timeout=10)


class K8sApi(StdinPeer):
    """test/sim/fake_k8s_api.py: one command a line on stdin, one answer line each."""

    def __init__(self, tmp, lifetime):
        m = self._start([os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
                         os.path.join(tmp, "token"), "--lifetime", str(int(lifetime))],
                        r"port=(\d+) ca=(\S+) token_file=(\S+)", "fake API")
        self.port, self.ca, self.token_file = m.groups()
        self.lock = threading.Lock()

    def cmd(self, line):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return self.proc.stdout.readline().strip()

    def cmds(self, lines):
        """Many commands at once (answers read on a thread, so neither pipe fills)."""
        answers = []
        with self.lock:
            t = threading.Thread(target=lambda: answers.extend(self.proc.stdout.readline().strip()
                                                               for _ in lines))
            t.start()
            self.proc.stdin.write("".join(l + "\n" for l in lines))
            self.proc.stdin.flush()
            t.join(120)
        return answers

    def stats(self):
        a = self.cmd("stats")
        return json.loads(a[3:]) if a.startswith("OK ") else {}

    def env(self):
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": self.port,
                "K8S_CA_FILE": self.ca, "K8S_TOKEN_FILE": self.token_file}


class CloudWatch(StdinPeer):
    """test/sim/cloudwatch_standin.py with static keys AKIDFAULT:fault-secret."""
    KEY, SECRET = "AKIDFAULT", "fault-secret"

    def __init__(self, lifetime, stall=2, token=None):
        key = "%s:%s" % (self.KEY, self.SECRET) + (":" + token if token else "")
        m = self._start([os.path.join(SRC, "test/sim/cloudwatch_standin.py"), "--key", key, "--region",
                         "us-west-2", "--lifetime", str(int(lifetime)), "--stall", str(stall)],
                        r"http=(\d+)", "CloudWatch stand-in")
        self.url = "http://127.0.0.1:%s" % m.group(1)

    def faults(self, obj):
        http(self.url + "/faults", "POST", obj)

    def stats(self):
        return json.loads(http(self.url + "/stats"))

    def datums(self):
        return json.loads(http(self.url + "/datums", timeout=120))

    def env(self):
        return {"USE_CLOUDWATCH": "yes", "AWS_REGION": "us-west-2", "AWS_ENDPOINT_URL_CLOUDWATCH": self.url,
                "AWS_EC2_METADATA_DISABLED": "true"}


class AwsCreds(StdinPeer):
    """test/sim/aws_standin.py: scripted IMDSv2 / container-credential exchanges."""

    def __init__(self, lifetime):
        m = self._start([os.path.join(SRC, "test/sim/aws_standin.py"), "--lifetime", str(int(lifetime)),
                         "--data", DATA], r"http=(\d+)", "credential stand-in")
        self.url = "http://127.0.0.1:%s" % m.group(1)

    def cmd(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())


BASE_ENV = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json", "PROMETHEUS_ADDRESS": "127.0.0.1",
            "PROMETHEUS_PORT": "0", "USE_PROMETHEUS": "true", "AWS_CLUSTER_ID": "faults",
            "AWS_EC2_METADATA_DISABLED": "true", "USE_CLOUDWATCH": "no"}


class Daemon:
    """The daemon with its JSON log read on a thread: events() by message, /metrics as a dict,
    RSS and open fds from /proc. `wrap` prefixes the command (valgrind)."""

    def __init__(self, env, log_path=None, wrap=(), keep=("round", "datum", "listening", "stopped",
                                                        "stopping")):
        full = dict(BASE_ENV)
        full.update({k: v for k, v in os.environ.items() if k in ("ASAN_OPTIONS", "UBSAN_OPTIONS")})
        full.update(env)
        if log_path is None and os.environ.get("FM_LOG_DIR"):
            log_path = os.path.join(os.environ["FM_LOG_DIR"], "daemon-%d-%d.log" % (os.getpid(), time.monotonic_ns()))
        self.log = open(log_path, "w") if log_path else None
        self.proc = subprocess.Popen(list(wrap) + [BIN], env=full, stderr=subprocess.PIPE, text=True)
        self.q = queue.Queue()
        self.keep = set(keep)
        self.port = None
        self.port_ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            if self.log:
                self.log.write(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # valgrind's own lines, when wrapped
            msg = ev.get("msg")
            if msg == "listening":
                self.port = ev["port"]
                self.port_ready.set()
            if msg in self.keep:
                self.q.put(ev)
        if self.log:
            self.log.flush()
        self.q.put(None)

    def next(self, msg, limit_s=30):
        """The next event with this message (events of other kept messages before it are
        returned in a list with it): (event or None, [events before])."""
        before = []
        deadline = time.monotonic() + limit_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, before
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                return None, before
            if ev is None:
                self.q.put(None)
                return None, before
            if ev.get("msg") == msg:
                return ev, before
            before.append(ev)

    def drain(self):
        out = []
        while True:
            try:
                ev = self.q.get_nowait()
            except queue.Empty:
                return out
            if ev is None:
                self.q.put(None)
                return out
            out.append(ev)

    def url(self, path):
        self.port_ready.wait(30)
        return "http://127.0.0.1:%s%s" % (self.port, path)

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self):
        """Every sample of our /metrics: 'name{labels}' -> float."""
        st, body = self.get("/metrics")
        return parse_metrics(body)

    def proc_status(self):
        """(VmRSS kB, VmHWM kB, open fds) from /proc, or None once the process is gone."""
        try:
            rss = hwm = 0
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
            fds = len(os.listdir("/proc/%d/fd" % self.proc.pid))
            return rss, hwm, fds
        except OSError:
            return None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            rc = None
        self.reader.join(10)
        if self.log:
            self.log.close()
            self.log = None
        return rc

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)
