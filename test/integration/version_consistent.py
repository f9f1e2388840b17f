"""One version, defined once: CMake's project(VERSION) in CMakeLists.txt. The program's --version
prints it (CMH_VERSION comes from it), `make version` and so `make image` tag with it, the Helm
chart's appVersion is it, the kustomize base deploys the image of that tag, and CHANGELOG.md has a
section for it (or an Unreleased one on top)."""
import glob
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

SRC = os.environ["CMH_SOURCE_DIR"]
BIN = os.environ["CMH_BIN"]


def read(*path):
    with open(os.path.join(SRC, *path), encoding="utf-8") as f:
        return f.read()


m = re.search(r"^project\(cni-metrics-helper VERSION ([0-9]+\.[0-9]+\.[0-9]+)[ )]", read("CMakeLists.txt"),
              re.M)
if not check("CMakeLists.txt: project(cni-metrics-helper VERSION X.Y.Z ...)", m is not None):
    finish()
version = m.group(1)
print("version", version)

out = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
check("--version", out == f"cni-metrics-helper {version}", out)
mk = subprocess.run(["make", "-s", "-C", SRC, "--no-print-directory", "version"], capture_output=True,
                    text=True, timeout=30).stdout.strip()
check("make version (the image tag)", mk == version, mk)

charts = glob.glob(os.path.join(SRC, "manifests", "helm", "*", "Chart.yaml"))
check("a Helm chart exists", len(charts) > 0)
for chart in charts:
    text = open(chart, encoding="utf-8").read()
    app = re.search(r"^appVersion:\s*\"?([^\"\s]+)\"?\s*$", text, re.M)
    rel = os.path.relpath(chart, SRC)
    check(f"{rel}: appVersion = {version}", app is not None and app.group(1) == version,
          app.group(1) if app else "no appVersion")
    ver = re.search(r"^version:\s*\"?([0-9]+\.[0-9]+\.[0-9]+\S*?)\"?\s*$", text, re.M)
    check(f"{rel}: version is SemVer", ver is not None, text)

kust = os.path.join(SRC, "manifests", "base", "kustomization.yaml")
if os.path.exists(kust):
    tags = re.findall(r"^\s*newTag:\s*\"?([^\"\s]+)\"?\s*$", read("manifests", "base", "kustomization.yaml"),
                      re.M)
    check(f"manifests/base/kustomization.yaml: newTag = {version}", tags == [version], tags)

log = read("CHANGELOG.md")
heads = re.findall(r"^## \[([^\]]+)\]", log, re.M)
check("CHANGELOG.md: the version's section, or Unreleased on top",
      version in heads or (heads and heads[0] == "Unreleased"), heads)

finish()
