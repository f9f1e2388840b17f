"""The release script's steps that need no registry (.ci/release/release.sh --local), as the release
runs them: a tag that is not v<CMake version> is refused before anything is built; then the source
archive of HEAD, the image (make image: podman's cached layers, so no second build), the chart
package when `make chart` exists, image-digests.txt naming the local image's id, and SHA256SUMS
that verify."""
import os
import re
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

SRC = os.environ["CMH_SOURCE_DIR"]
SCRIPT = os.path.join(SRC, ".ci", "release", "release.sh")
PODMAN = os.environ.get("PODMAN", "podman").split()

with open(os.path.join(SRC, "CMakeLists.txt"), encoding="utf-8") as f:
    version = re.search(r"^project\(cni-metrics-helper VERSION ([0-9.]+)", f.read(), re.M).group(1)
out = tempfile.mkdtemp(prefix="cmh-release-")

bad = subprocess.run([SCRIPT, "--local", out, "--tag", "v999.0.0"], capture_output=True, text=True,
                     timeout=60)
check("a tag other than v<version> is refused", bad.returncode == 1 and f"v{version}" in bad.stderr,
      (bad.returncode, bad.stderr[-500:]))
check("nothing built for a refused tag", not os.listdir(out), os.listdir(out))

r = subprocess.run([SCRIPT, "--local", out], capture_output=True, text=True, timeout=1500)
if not check("release.sh --local succeeds", r.returncode == 0, (r.stdout + r.stderr)[-3000:]):
    finish()
files = sorted(os.listdir(out))
print("artifacts:", files)
sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
check("SHA256SUMS verifies", sums.returncode == 0, sums.stdout + sums.stderr)
listed = [line.split()[1] for line in open(os.path.join(out, "SHA256SUMS"))]
src_tar = f"cni-metrics-helper-{version}.tar.gz"
check("the source archive is listed", src_tar in listed, listed)
with tarfile.open(os.path.join(out, src_tar)) as t:
    names = set(t.getnames())
prefix = f"cni-metrics-helper-{version}/"
check("the source archive holds the tree with LICENSE, NOTICE, test data",
      {prefix + p for p in ("LICENSE", "NOTICE", "CMakeLists.txt", "Dockerfile",
                            "test/data/SOURCES.md")} <= names, len(names))
image_id = subprocess.run(PODMAN + ["image", "inspect", "--format", "{{.Id}}",
                                    f"cni-metrics-helper:{version}"],
                          capture_output=True, text=True).stdout.strip()
digests = open(os.path.join(out, "image-digests.txt")).read()
check("image-digests.txt names the image built", image_id and f"sha256:{image_id}" in digests,
      (image_id, digests))
has_chart = subprocess.run(["make", "-n", "-C", SRC, "--no-print-directory", "chart"],
                           capture_output=True).returncode == 0
charts = [f for f in listed if f.endswith(".tgz")]
if has_chart:
    check("the chart is packaged and listed", len(charts) == 1, listed)
else:
    check("without make chart, the release says so", "no 'make chart' target" in r.stderr, r.stderr)

finish()
