"""The container image, run as a cluster runs it. `make image` builds it with podman (its layers are
cached: an image built from the same sources is reused, not rebuilt); then the image runs with a
read-only root filesystem and no tmpfs, every capability dropped, no-new-privileges, as user
65532, on the host's loopback (--network=host), against the ipamD simulator and the CloudWatch
stand-in (botocore checks every request). Checked: the image is below 100 MB, its user is 65532 and
its --version and label are the CMake project version; every datum of every round equals the
simulator's truth under the aggregation rules; seen from the host, the process runs as uid 65532
with no capability, NoNewPrivs and a read-only root, and listens on 127.0.0.1 only; `podman stop`
(SIGTERM) flushes the last round before a clean exit."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish, http, read_events, spawn_cloudwatch_standin, spawn_ipamd_sim  # noqa: E402
from truth_model import Model, check_published_rounds  # noqa: E402

BUILD = os.environ["CMH_BUILD_DIR"]
SRC = os.environ["CMH_SOURCE_DIR"]
DATA = os.environ["CMH_DATA_DIR"]
PODMAN = os.environ.get("PODMAN", "podman").split()
MAX_BYTES = 100 * 1000 * 1000
NODES = 6


def cmake_version():
    with open(os.path.join(SRC, "CMakeLists.txt"), encoding="utf-8") as f:
        return re.search(r"^project\(cni-metrics-helper VERSION ([0-9][0-9.]*)", f.read(), re.M).group(1)


def podman(*args, timeout=60):
    return subprocess.run(PODMAN + list(args), capture_output=True, text=True, timeout=timeout)


VERSION = cmake_version()
IMAGE = f"cni-metrics-helper:{VERSION}"

# The image: built, or reused when the sources have not changed (podman's layer cache).
t0 = time.monotonic()
mk = subprocess.run(["make", "-C", SRC, "--no-print-directory", "image"], capture_output=True,
                    text=True, timeout=1500)
if not check("make image succeeds", mk.returncode == 0, (mk.stdout + mk.stderr)[-3000:]):
    finish()
print(f"make image: {time.monotonic() - t0:.0f} s")

info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
check("image below 100 MB", info["Size"] < MAX_BYTES, info["Size"])
print(f"image size: {info['Size'] / 1e6:.1f} MB")
cfg = info["Config"]
check("image user is 65532", cfg.get("User") == "65532:65532", cfg.get("User"))
check("entrypoint is the program", cfg.get("Entrypoint") == ["/usr/local/bin/cni-metrics-helper"],
      cfg.get("Entrypoint"))
check("version label = CMake version",
      cfg.get("Labels", {}).get("org.opencontainers.image.version") == VERSION, cfg.get("Labels"))
latest = json.loads(podman("image", "inspect", "cni-metrics-helper:latest").stdout or "[{}]")[0]
check(":latest is the same image", latest.get("Id") == info["Id"], (latest.get("Id"), info["Id"]))
v = podman("run", "--rm", "--network=none", IMAGE, "--version")
check("--version prints the CMake version", v.stdout.strip() == f"cni-metrics-helper {VERSION}",
      (v.stdout, v.stderr[-500:]))

tmp = tempfile.mkdtemp(prefix="cmh-image-")
name = f"cmh-image-test-{os.getpid()}"
sim = spawn_ipamd_sim(BUILD, DATA, tmp, NODES, "127.100.0.1", seed=21)
cw, standin = spawn_cloudwatch_standin(SRC, "AKIDIMAGE:image-secret", "eu-west-1", 280)
ctr = None
try:
    control = "http://" + re.search(r"control=(\S+)", sim.stdout.readline()).group(1)
    targets = ",".join("%s=%s:%s" % tuple(l.split()) for l in open(os.path.join(tmp, "targets")))
    env = {"SCRAPE_TARGETS": targets, "USE_CLOUDWATCH": "yes", "AWS_REGION": "eu-west-1",
           "AWS_CLUSTER_ID": "image", "AWS_ACCESS_KEY_ID": "AKIDIMAGE",
           "AWS_SECRET_ACCESS_KEY": "image-secret", "AWS_ENDPOINT_URL_CLOUDWATCH": standin,
           "AWS_EC2_METADATA_DISABLED": "true", "LOG_FORMAT": "json",
           "METRIC_UPDATE_INTERVAL": "3600", "SCRAPE_JITTER": "0", "PROMETHEUS_ADDRESS": "127.0.0.1",
           "PROMETHEUS_PORT": "0", "SHUTDOWN_TIMEOUT": "8"}
    run = ["run", "--rm", "--name", name, "--read-only", "--read-only-tmpfs=false", "--cap-drop=all",
           "--security-opt=no-new-privileges", "--user", "65532:65532", "--network=host"]
    for k, val in env.items():
        run += ["--env", f"{k}={val}"]
    ctr = subprocess.Popen(PODMAN + run + [IMAGE], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    listening = {}

    def note(ev):
        if ev.get("msg") == "listening":
            listening.update(ev)

    model = Model(2)
    rounds = []
    for epoch in range(4):
        if epoch:
            http(control + "/advance", "POST")
            podman("kill", "--signal", "USR1", name)
        r = read_events(ctr, "round", 60, note)
        if not check(f"round {epoch + 1} ran in the container", r is not None):
            break
        truth = [json.loads(l) for l in open(os.path.join(tmp, "epoch-%06d.nodes.jsonl" % epoch))]
        rounds.append((r, truth))
        if epoch == 0:
            # The confinement, seen from the host.
            pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
            status = open(f"/proc/{pid}/status").read()
            field = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
            check("runs as uid/gid 65532", field["Uid"].split() == ["65532"] * 4 and
                  field["Gid"].split() == ["65532"] * 4, (field["Uid"], field["Gid"]))
            check("no capability at all", all(int(field[c], 16) == 0 for c in
                                              ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")),
                  {c: field[c] for c in ("CapPrm", "CapEff", "CapBnd")})
            check("no-new-privileges", field.get("NoNewPrivs") == "1", field.get("NoNewPrivs"))
            root = [l.split() for l in open(f"/proc/{pid}/mountinfo") if l.split()[4] == "/"]
            check("root filesystem read-only", root and "ro" in root[0][5].split(","), root)
            check("no writable tmpfs", not any(l.split()[4] in ("/tmp", "/var/tmp", "/run")
                                               for l in open(f"/proc/{pid}/mountinfo")))
            ss = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True).stdout
            mine = [l.split()[3] for l in ss.splitlines() if f"pid={pid}," in l]
            check("listens, on 127.0.0.1 only", mine and all(a.startswith("127.0.0.1:") for a in mine),
                  mine)
    check("listening event says 127.0.0.1", listening.get("address") == "127.0.0.1", listening)

    # SIGTERM through podman stop: the last round is flushed, the exit is clean.
    stop = podman("stop", "--time", "20", name, timeout=40)
    stopped = read_events(ctr, "stopped", 30)
    rc = ctr.wait(timeout=30)
    ctr = None
    check("podman stop: exit 0", stop.returncode == 0 and rc == 0, (stop.returncode, rc, stop.stderr))
    datums = json.loads(http(standin + "/datums"))
    check("SIGTERM: everything flushed", stopped is not None and stopped.get("cw_dropped_shutdown") == 0
          and stopped.get("cw_published") == len(datums), (stopped, len(datums)))

    bad = check_published_rounds(model, datums, rounds, "image")
    check("every datum equals the simulator's truth, once", bad == 0 and len(datums) > 0,
          (bad, len(datums)))
    st = json.loads(http(standin + "/stats"))
    check("no bad signature or invalid request", st["duplicates"] == 0 and st["bad_signature"] == 0
          and st["invalid_params"] == 0, st)
finally:
    if ctr is not None:
        podman("rm", "--force", "--time", "0", name)
        ctr.wait(timeout=30)
    cw.stdin.close()
    cw.wait(timeout=10)
    sim.terminate()
    sim.wait(timeout=10)

finish()
