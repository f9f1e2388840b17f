"""The real helm and kubectl (kustomize) for the manifest tests: the pinned binaries `make deps`
installs (.ci/k8s-tools.sh), or CMH_HELM / CMH_KUBECTL when set. Missing tools are a failure
that says to run `make deps`, never a skip."""
import json
import os
import shutil
import subprocess
import tempfile

import yaml

SRC = os.environ["CMH_SOURCE_DIR"]
MAN = os.path.join(SRC, "manifests")
CHART = os.path.join(MAN, "helm", "cni-metrics-helper")


class RenderError(Exception):
    pass


def _tools():
    helm, kubectl = os.environ.get("CMH_HELM"), os.environ.get("CMH_KUBECTL")
    if not (helm and kubectl):
        r = subprocess.run([os.path.join(SRC, ".ci", "k8s-tools.sh"), "--where"], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise SystemExit("FAIL  " + (r.stderr.strip() or "no helm/kubectl: run 'make deps'"))
        d = r.stdout.strip()
        helm, kubectl = helm or os.path.join(d, "helm"), kubectl or os.path.join(d, "kubectl")
    return helm, kubectl


HELM, KUBECTL = _tools()


def run(argv, timeout=120):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir(),
                               "HELM_CACHE_HOME": os.path.join(tempfile.gettempdir(), "cmh-helm-cache"),
                               "HELM_CONFIG_HOME": os.path.join(tempfile.gettempdir(), "cmh-helm-config"),
                               "HELM_DATA_HOME": os.path.join(tempfile.gettempdir(), "cmh-helm-data"),
                               "KUBECONFIG": os.devnull})


def docs(text):
    return [o for o in yaml.safe_load_all(text) if o]


def kustomize(directory):
    """The objects `kubectl kustomize DIRECTORY` renders; RenderError with its message."""
    r = run([KUBECTL, "kustomize", directory])
    if r.returncode != 0:
        raise RenderError(r.stderr.strip())
    return docs(r.stdout)


def write_values(workdir, values_list):
    files = []
    for v in values_list:
        fd, path = tempfile.mkstemp(prefix="values-", suffix=".json", dir=workdir)
        with os.fdopen(fd, "w") as f:
            json.dump(v, f)
        files.append(path)
    return files


def helm_template(workdir, values_list, release="cni-metrics-helper", namespace="kube-system", extra=(),
                  chart=CHART):
    """The objects `helm template RELEASE CHART -n NAMESPACE -f V1 -f V2 ... EXTRA` renders."""
    argv = [HELM, "template", release, chart, "--namespace", namespace]
    for f in write_values(workdir, values_list):
        argv += ["-f", f]
    r = run(argv + list(extra))
    if r.returncode != 0:
        raise RenderError(r.stderr.strip())
    return docs(r.stdout)


_NOTES_CHART = None


def helm_notes(workdir, values_list, release="cni-metrics-helper", namespace="kube-system", extra=()):
    """NOTES.txt as helm's engine renders it: `helm template` leaves NOTES out, so a copy of the
    chart gets one more template that includes NOTES.txt (every template is a named template)."""
    global _NOTES_CHART
    if _NOTES_CHART is None:
        _NOTES_CHART = os.path.join(workdir, "notes-chart", "cni-metrics-helper")
        shutil.copytree(CHART, _NOTES_CHART)
        with open(os.path.join(_NOTES_CHART, "templates", "zz-notes.yaml"), "w") as f:
            f.write('kind: Notes\ntext: {{ include "cni-metrics-helper/templates/NOTES.txt" . | toJson }}\n')
    objs = helm_template(workdir, values_list, release, namespace,
                         list(extra) + ["--show-only", "templates/zz-notes.yaml"], chart=_NOTES_CHART)
    return objs[0]["text"]


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def daemon_env(objs, pod_name):
    """The rendered Deployment's environment as the daemon would get it: PATH, every literal
    value, and POD_NAME (the downward API's metadata.name) as pod_name."""
    c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": "/usr/bin:/bin"}
    for e in c.get("env") or []:
        if "valueFrom" not in e:
            env[e["name"]] = str(e.get("value", ""))
        elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
    return env
