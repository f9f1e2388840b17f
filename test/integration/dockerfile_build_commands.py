"""Proves the Dockerfile without a Docker engine: copies the build context (the files git knows,
tracked or not ignored, minus .dockerignore) into a clean directory, runs the build stage's RUN
commands there exactly as written in the Dockerfile (except apt-get, whose packages must exist in
Debian and be installed here), then checks the runtime stage: the file it copies was built, it is
the ENTRYPOINT, the USER is not root, and every shared library `ldd` finds for the binary comes
from a package the runtime stage installs, one of their dependencies, or the base image's
(Priority: required) packages, as `dpkg -S` and `apt-cache depends` tell.
"""
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

SRC = os.environ["CMH_SOURCE_DIR"]
failures = 0


def check(name, ok, detail=""):
    global failures
    print(("ok    " if ok else "FAIL  ") + name + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        failures += 1
    return ok


def parse_dockerfile(path):
    """[(stage_name, base, [(INSTRUCTION, args)])] with continuation lines joined."""
    with open(path) as f:
        text = f.read()
    logical, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        logical.append(cur + line)
        cur = ""
    stages = []
    for line in logical:
        instr, _, args = line.strip().partition(" ")
        instr = instr.upper()
        args = args.strip()
        if instr == "FROM":
            m = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            stages.append((m.group(2), m.group(1), []))
        else:
            stages[-1][2].append((instr, args))
    return stages


def apt_packages(cmd):
    """Package names of the `apt-get install` in a RUN command."""
    pkgs = []
    for part in re.split(r"&&|;", cmd):
        words = shlex.split(part)
        if "apt-get" in words and "install" in words:
            for w in words[words.index("install") + 1:]:
                if not w.startswith("-"):
                    pkgs.append(w)
    return pkgs


def dockerignore_patterns():
    path = os.path.join(SRC, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


def ignored(rel, patterns):
    parts = rel.split("/")
    for p in patterns:
        p = p.rstrip("/")
        if p.startswith("**/"):
            if any(fnmatch.fnmatch(x, p[3:]) for x in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:i + 1]), p) for i in range(len(parts))):
            return True
    return False


def dpkg_package(path):
    """The Debian package owning a file (tries the path as given and its resolved form, since
    usr-merge makes /lib and /usr/lib the same)."""
    cands = {path, os.path.realpath(path)}
    for c in list(cands):
        if c.startswith("/lib"):
            cands.add("/usr" + c)
        if c.startswith("/usr/lib"):
            cands.add(c[4:])
    for c in sorted(cands):
        r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].split(",")[0].strip()
    return None


def depends_closure(pkgs):
    r = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                        "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + pkgs,
                       capture_output=True, text=True, timeout=120)
    out = set(pkgs)
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*(?:\|)?(?:Pre)?Depends: (\S+)$", line)
        if m and not m.group(1).startswith("<"):
            out.add(m.group(1).split(":")[0])
        elif line and not line.startswith(" "):
            out.add(line.strip().split(":")[0])
    return out


def priority(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Priority} ${Essential}", pkg], capture_output=True,
                       text=True)
    return r.stdout.split() if r.returncode == 0 else []


def main():
    stages = parse_dockerfile(os.path.join(SRC, "Dockerfile"))
    check("Dockerfile: two stages, Debian 12 build and Debian 12 runtime",
          len(stages) == 2 and stages[0][1].startswith("debian:12") and stages[1][1].startswith("debian:12"),
          [(s[0], s[1]) for s in stages])
    if len(stages) != 2:
        return
    build_name, _, build = stages[0]
    _, _, runtime = stages[1]

    # Every package both stages install exists in Debian (the local apt lists) and, for the
    # build stage, is installed here: the commands below then run as they would in the image.
    for label, instrs in (("build", build), ("runtime", runtime)):
        pkgs = [p for i, a in instrs if i == "RUN" for p in apt_packages(a)]
        check(f"{label} stage installs packages", bool(pkgs))
        for p in pkgs:
            r = subprocess.run(["apt-cache", "show", "--no-all-versions", p], capture_output=True, text=True)
            check(f"{label} stage: {p} is a Debian package", r.returncode == 0 and "Package:" in r.stdout,
                  r.stderr.strip())
            if label == "build":
                check(f"build stage: {p} is installed on this machine", "required" in priority(p)
                      or subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                        text=True).stdout.endswith("installed"))

    # The build stage installs what the build needs: the Makefile's BUILD_DEPS (but the formatter)
    # and every package CMakeLists.txt names for a missing dependency.
    build_pkgs = {p for i, a in build if i == "RUN" for p in apt_packages(a)}
    with open(os.path.join(SRC, "Makefile")) as f:
        m = re.search(r"^BUILD_DEPS\s*:=((?:.*\\\n)*.*)$", f.read(), re.M)
    needed = set(m.group(1).replace("\\", " ").split()) - {"clang-format"} if m else set()
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        cm = f.read()
    needed |= set(re.findall(r"cmh_require_pkg\(\s*\S+\s+\S+\s+(\S+?)\s*\)", cm))
    needed |= {p for p in re.findall(r"install the Debian package '([^'$]+)'", cm)}
    check("build stage installs the Makefile's BUILD_DEPS and CMake's required packages",
          bool(needed) and needed <= build_pkgs, sorted(needed - build_pkgs))

    workdir = [a for i, a in build if i == "WORKDIR"]
    copies = [a for i, a in build if i == "COPY"]
    check("build stage: WORKDIR then COPY . .", len(workdir) == 1 and copies == [". ."], (workdir, copies))
    if len(workdir) != 1:
        return
    wd = workdir[0]

    tmp = tempfile.mkdtemp(prefix="cmh-dockerfile-")
    try:
        ctx = os.path.join(tmp, "src")
        os.makedirs(ctx)
        r = subprocess.run(["git", "-C", SRC, "ls-files", "-z", "-co", "--exclude-standard"],
                           capture_output=True, check=True)
        patterns = dockerignore_patterns()
        n = 0
        for rel in r.stdout.decode().split("\0"):
            src = os.path.join(SRC, rel)
            if not rel or ignored(rel, patterns) or not os.path.isfile(src):
                continue
            os.makedirs(os.path.dirname(os.path.join(ctx, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(ctx, rel))
            n += 1
        check(f"build context copied ({n} files)", n > 10)

        runs = [a for i, a in build if i == "RUN" and not apt_packages(a)]
        check("build stage has build commands", bool(runs))
        t0 = time.monotonic()
        for cmd in runs:
            local = cmd.replace(wd, ctx)
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": tmp, "LANG": "C.UTF-8"}
            r = subprocess.run(["/bin/sh", "-c", local], cwd=ctx, env=env, capture_output=True,
                               text=True, timeout=600)
            check(f"build stage: `{cmd[:60]}...` succeeds", r.returncode == 0,
                  (r.stdout + r.stderr)[-3000:])
            if r.returncode != 0:
                return
        print(f"note  build stage commands took {time.monotonic() - t0:.1f}s")

        copy_from = [a for i, a in runtime if i == "COPY" and a.startswith(f"--from={build_name}")]
        check("runtime stage copies one file from the build stage", len(copy_from) == 1, copy_from)
        if len(copy_from) != 1:
            return
        _, src_path, dst_path = copy_from[0].split()
        built = src_path.replace(wd, ctx) if src_path.startswith(wd) else os.path.join(ctx, src_path)
        if not check("the copied file was built", os.path.isfile(built), built):
            return
        entry = [a for i, a in runtime if i == "ENTRYPOINT"]
        check("ENTRYPOINT is the copied binary", len(entry) == 1 and json.loads(entry[0]) == [dst_path], entry)
        user = [a for i, a in runtime if i == "USER"]
        check("runtime USER is not root", len(user) == 1 and user[0].split(":")[0] not in ("0", "root"), user)
        r = subprocess.run([built, "--version"], capture_output=True, text=True, timeout=30)
        check("the built binary runs", r.returncode == 0 and r.stdout.startswith("cni-metrics-helper"),
              r.stdout + r.stderr)

        # Shared libraries: every one must come with the runtime stage's packages.
        r = subprocess.run(["ldd", built], capture_output=True, text=True, timeout=30)
        check("ldd works on the binary", r.returncode == 0, r.stderr)
        libs = {}
        for line in r.stdout.splitlines():
            m = re.match(r"^\s*(\S+)\s+=>\s+(\S+)", line) or re.match(r"^\s*(/\S+)\s+\(", line)
            if m:
                path = m.group(2) if m.lastindex == 2 else m.group(1)
                if path == "not":
                    check(f"library {m.group(1)} found", False, line)
                    continue
                libs[os.path.basename(m.group(1))] = path
        check("ldd lists libraries", bool(libs), r.stdout)
        runtime_pkgs = [p for i, a in runtime if i == "RUN" for p in apt_packages(a)]
        closure = depends_closure(runtime_pkgs)
        for so, path in sorted(libs.items()):
            pkg = dpkg_package(path)
            if not check(f"{so}: owned by a Debian package", pkg is not None, path):
                continue
            prio = priority(pkg)
            covered = pkg in closure or "required" in prio or "yes" in prio
            check(f"{so} ({pkg}) comes with the runtime stage", covered,
                  f"add {pkg} to the runtime stage's apt-get install")
        owners = {dpkg_package(path) for path in libs.values()}
        unused = [p for p in runtime_pkgs if p != "ca-certificates" and p not in owners]
        if unused:
            print(f"note  runtime packages no linked library comes from yet: {' '.join(unused)}")
        # The check can fail: with no runtime packages, the libraries beyond the base image's
        # (libuv at least) are uncovered.
        bare = depends_closure(["libc6"])
        uncovered = [so for so, path in libs.items()
                     if (dpkg_package(path) or "?") not in bare and "required" not in priority(dpkg_package(path) or "?")]
        check("without the runtime packages, libuv is reported missing", "libuv.so.1" in uncovered, uncovered)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


main()
print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
