"""Renders our manifests without kubectl or helm (Debian 12 ships neither a current kustomize nor
helm): the subset of kustomize and of Helm's Go templates that manifests/ uses, no more. Anything
outside that subset is an error, never silently ignored, so the chart and the kustomizations stay
within what this renderer (and the real tools) agree on.

Kustomize: resources (files and directories), namespace, images, patches (strategic merge, by
kind and name), patchesStrategicMerge. Helm: values.yaml coalesced with user values (null
deletes), .Values/.Release/.Chart/.Capabilities, text/template actions (if/else if/else, with,
range over lists and maps with $k, $v, define/include/template, variables, pipelines, trim
markers, comments) and the functions default, quote, toYaml, indent, nindent, trunc, trimSuffix,
printf, contains, eq, ne, not, and, or, empty, required, fail.

Usage: manifests_render.py kustomize DIR
       manifests_render.py helm CHART_DIR [--release NAME] [--namespace NS] [-f VALUES.yaml]...
Runs under /usr/bin/python3 with Debian's python3-yaml.
"""
import copy
import json
import os
import re
import sys

import yaml


class RenderError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# kustomize subset

# Strategic-merge keys of the list fields our patches touch (from the Kubernetes API types).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume", "Node"}

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches",
                        "patchesStrategicMerge"}


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def smp_merge(base, patch, field=None):
    """Strategic merge patch of one object (the subset: maps merge, null deletes, lists with a
    known merge key merge by that key, other lists replace)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if k.startswith("$"):
                raise RenderError(f"patch directive {k} is outside the supported subset")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = smp_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = [copy.deepcopy(x) for x in base]
        added = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise RenderError(f"patch of {field} needs {key} on every item")
            for i, cur in enumerate(out):
                if isinstance(cur, dict) and cur.get(key) == item[key]:
                    out[i] = smp_merge(cur, item, None)
                    break
            else:
                added.append(copy.deepcopy(item))
        # As kustomize does: items only the patch has come first, in the patch's order.
        return added + out
    return copy.deepcopy(patch)


def split_image(image):
    """'repo/name:tag' -> ('repo/name', ':tag'); keeps a digest as '@sha256:...'."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def set_images(obj, images):
    def visit(node):
        if isinstance(node, dict):
            for field in ("containers", "initContainers"):
                for c in node.get(field) or []:
                    name, suffix = split_image(c.get("image", ""))
                    for img in images:
                        if img["name"] != name:
                            continue
                        new_name = img.get("newName", name)
                        if "digest" in img:
                            suffix = "@" + img["digest"]
                        elif "newTag" in img:
                            suffix = ":" + str(img["newTag"])
                        c["image"] = new_name + suffix
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(obj)


def kustomize(directory):
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields outside the supported subset: {sorted(unknown)}")
    objs = []
    for res in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(p):
            objs.extend(kustomize(p))
        else:
            objs.extend(load_yaml_docs(p))
    patches = []
    for p in k.get("patchesStrategicMerge", []):
        patches.extend(load_yaml_docs(os.path.join(directory, p)))
    for p in k.get("patches", []):
        if "target" in p or "options" in p:
            raise RenderError(f"{path}: patch targets/options are outside the supported subset")
        if "path" in p:
            patches.extend(load_yaml_docs(os.path.join(directory, p["path"])))
        else:
            patches.extend(d for d in yaml.safe_load_all(p["patch"]) if d is not None)
    for patch in patches:
        kind, name = patch.get("kind"), patch.get("metadata", {}).get("name")
        hits = [i for i, o in enumerate(objs) if o.get("kind") == kind and o["metadata"]["name"] == name]
        if len(hits) != 1:
            raise RenderError(f"{path}: patch for {kind}/{name} matches {len(hits)} resources")
        objs[hits[0]] = smp_merge(objs[hits[0]], patch)
    ns = k.get("namespace")
    if ns:
        sa_names = {o["metadata"]["name"] for o in objs if o.get("kind") == "ServiceAccount"}
        for o in objs:
            if o.get("kind") not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
            if o.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
                for s in o.get("subjects") or []:
                    if s.get("kind") == "ServiceAccount" and s.get("name") in sa_names:
                        s["namespace"] = ns
    if k.get("images"):
        for o in objs:
            set_images(o, k["images"])
    return objs


# ---------------------------------------------------------------------------------------------
# Helm: Go text/template subset

TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<punct>[()|,])
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)

NO_VALUE = object()  # Go's "<no value>": printed as empty text by Helm


def tokenize(src, where):
    toks, pos = [], 0
    while pos < len(src):
        m = TOKEN_RE.match(src, pos)
        if not m:
            raise RenderError(f"{where}: cannot parse action near {src[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        # A field right after ')' or a var is a chained field access (e.g. (x).Field): not used.
        toks.append((kind, m.group()))
    return toks


def split_actions(text, where):
    """Text and actions with Go's trim markers applied: '{{- ' eats the whitespace before it,
    ' -}}' the whitespace after it."""
    parts, pos = [], 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            parts.append(("text", text[pos:]))
            break
        end = text.find("}}", start)
        if end < 0:
            raise RenderError(f"{where}: unclosed action")
        # A comment may contain '}}' only in its closing '*/}}'.
        inner = text[start + 2:end]
        if inner.lstrip("- \t\n").startswith("/*"):
            cend = text.find("*/", start)
            end = text.find("}}", cend)
            inner = text[start + 2:end]
        parts.append(("text", text[pos:start]))
        ltrim = inner.startswith("- ") or inner.startswith("-\n") or inner == "-"
        rtrim = inner.endswith(" -") or inner.endswith("\n-")
        body = inner[2 if ltrim else 0:len(inner) - (2 if rtrim else 0)].strip()
        parts.append(("action", body, ltrim, rtrim))
        pos = end + 2
    out = []
    for i, p in enumerate(parts):
        if p[0] == "text":
            s = p[1]
            if i > 0 and parts[i - 1][0] == "action" and parts[i - 1][3]:
                s = s.lstrip(" \t\r\n")
            if i + 1 < len(parts) and parts[i + 1][0] == "action" and parts[i + 1][2]:
                s = s.rstrip(" \t\r\n")
            out.append(("text", s))
        else:
            out.append(("action", p[1]))
    return out


class Parser:
    def __init__(self, text, where, defines):
        self.items = split_actions(text, where)
        self.pos = 0
        self.where = where
        self.defines = defines

    def parse(self):
        nodes, stop = self.parse_list(())
        if stop is not None:
            raise RenderError(f"{self.where}: unexpected {{{{{stop[0]}}}}}")
        return nodes

    def parse_list(self, stops):
        nodes = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if item[0] == "text":
                if item[1]:
                    nodes.append(("text", item[1]))
                continue
            body = item[1]
            if body.startswith("/*"):
                continue
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word):].strip()
            if word in ("end", "else"):
                if word not in stops and not (word == "else" and "else" in stops):
                    raise RenderError(f"{self.where}: unexpected {{{{{body}}}}}")
                return nodes, (word, rest)
            if word in ("if", "with", "range"):
                nodes.append(self.parse_block(word, rest))
            elif word == "define":
                name = json.loads(rest)
                body_nodes, stop = self.parse_list(("end",))
                if stop is None:
                    raise RenderError(f"{self.where}: define {name} without end")
                self.defines[name] = body_nodes
            elif word == "template":
                toks = tokenize(rest, self.where)
                name = json.loads(toks[0][1])
                nodes.append(("template", name, toks[1:]))
            elif word in ("block", "break", "continue"):
                raise RenderError(f"{self.where}: {word} is outside the supported subset")
            else:
                nodes.append(("action", self.parse_pipeline_decl(body)))
        if stops:
            raise RenderError(f"{self.where}: missing {{{{end}}}}")
        return nodes, None

    def parse_pipeline_decl(self, body):
        toks = tokenize(body, self.where)
        decl = None
        if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] in ("decl", "assign"):
            decl = (toks[0][1], toks[1][0])
            toks = toks[2:]
        return (decl, toks)

    def parse_block(self, word, rest):
        if word == "range":
            toks = tokenize(rest, self.where)
            rvars = []
            if any(t[0] == "decl" for t in toks):
                i = [t[0] for t in toks].index("decl")
                rvars = [t[1] for t in toks[:i] if t[0] == "var"]
                toks = toks[i + 1:]
            pipe = (None, toks)
        else:
            pipe = self.parse_pipeline_decl(rest)
            rvars = None
        body, stop = self.parse_list(("end", "else"))
        if stop is None:
            raise RenderError(f"{self.where}: {word} without end")
        else_nodes = []
        if stop[0] == "else":
            if stop[1].startswith("if ") and word == "if":
                else_nodes = [self.parse_block("if", stop[1][3:].strip())]
                return ("if", pipe, body, else_nodes)
            if stop[1]:
                raise RenderError(f"{self.where}: else {stop[1]} is outside the supported subset")
            else_nodes, stop = self.parse_list(("end",))
            if stop is None:
                raise RenderError(f"{self.where}: {word} without end")
        if word == "range":
            return ("range", rvars, pipe, body, else_nodes)
        return (word, pipe, body, else_nodes)


def truthy(v):
    if v is None or v is NO_VALUE:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def to_text(v):
    if v is None or v is NO_VALUE:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    if isinstance(v, (dict, list)):
        raise RenderError("printing a map or list directly (use toYaml)")
    return str(v)


def go_quote(s):
    return json.dumps(s, ensure_ascii=False)


def to_yaml(v):
    if v is None or v is NO_VALUE:
        return "null"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def indent(n, s):
    pad = " " * int(n)
    return "\n".join(pad + line for line in to_text(s).split("\n"))


def go_printf(fmt, *args):
    out, ai, i = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        a = args[ai]
        ai += 1
        if verb in ("s", "v", "d"):
            out.append(to_text(a))
        elif verb == "q":
            out.append(go_quote(to_text(a)))
        else:
            raise RenderError(f"printf verb %{verb} is outside the supported subset")
    return "".join(out)


class Engine:
    def __init__(self):
        self.defines = {}
        self.funcs = {
            "default": lambda d, v=NO_VALUE: v if truthy(v) else d,
            "quote": lambda *a: " ".join(go_quote(to_text(x)) for x in a if x is not None),
            "toYaml": to_yaml,
            "indent": indent,
            "nindent": lambda n, s: "\n" + indent(n, s),
            "trunc": lambda n, s: to_text(s)[:int(n)] if int(n) >= 0 else to_text(s)[int(n):],
            "trimSuffix": lambda suf, s: to_text(s)[:-len(suf)] if suf and to_text(s).endswith(suf) else to_text(s),
            "printf": go_printf,
            "contains": lambda sub, s: to_text(sub) in to_text(s),
            "eq": lambda a, *b: any(self.norm(a) == self.norm(x) for x in b),
            "ne": lambda a, b: self.norm(a) != self.norm(b),
            "not": lambda a: not truthy(a),
            "and": lambda *a: next((x for x in a if not truthy(x)), a[-1]),
            "or": lambda *a: next((x for x in a if truthy(x)), a[-1]),
            "empty": lambda v=NO_VALUE: not truthy(v),
            "required": self.required,
            "fail": self.fail,
            "include": self.include,
        }

    @staticmethod
    def norm(v):
        return None if v is NO_VALUE else v

    @staticmethod
    def required(msg, v=NO_VALUE):
        if v is None or v is NO_VALUE or v == "":
            raise RenderError(f"required: {msg}")
        return v

    @staticmethod
    def fail(msg):
        raise RenderError(f"fail: {msg}")

    def include(self, name, data):
        if name not in self.defines:
            raise RenderError(f"include of undefined template {name!r}")
        return self.exec_nodes(self.defines[name], data, [{"$": data}])

    def load(self, text, where):
        return Parser(text, where, self.defines).parse()

    # -- expressions --------------------------------------------------------------------------

    @staticmethod
    def field(value, names, what):
        for n in names:
            if value is None or value is NO_VALUE:
                raise RenderError(f"nil pointer evaluating {what}")
            if isinstance(value, dict):
                value = value.get(n, NO_VALUE)
            else:
                raise RenderError(f"can't evaluate field {n} in {what}")
        return value

    def lookup_var(self, name, scopes):
        for s in reversed(scopes):
            if name in s:
                return s[name]
        raise RenderError(f"undefined variable {name}")

    def operand(self, tok, dot, scopes):
        kind, text = tok
        if kind == "str":
            return json.loads(text)
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "field":
            return dot if text == "." else self.field(dot, text[1:].split("."), text)
        if kind == "var":
            parts = text.split(".")
            return self.field(self.lookup_var(parts[0], scopes), parts[1:], text)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "nil":
                return None
        raise RenderError(f"unexpected {text!r}")

    def group(self, toks):
        """Splits tokens into commands at top-level '|', keeping parenthesised groups whole."""
        cmds, cur, depth = [], [], 0
        for t in toks:
            if t == ("punct", "(") :
                depth += 1
            elif t == ("punct", ")"):
                depth -= 1
            if t == ("punct", "|") and depth == 0:
                cmds.append(cur)
                cur = []
            else:
                cur.append(t)
        cmds.append(cur)
        return cmds

    def args(self, toks, dot, scopes):
        out, i = [], 0
        while i < len(toks):
            t = toks[i]
            if t == ("punct", "("):
                depth, j = 1, i + 1
                while depth:
                    if toks[j] == ("punct", "("):
                        depth += 1
                    elif toks[j] == ("punct", ")"):
                        depth -= 1
                    j += 1
                out.append(self.pipeline(toks[i + 1:j - 1], dot, scopes))
                i = j
            else:
                out.append(("tok", t))
                i += 1
        return out

    def command(self, toks, dot, scopes, prev):
        items = self.args(toks, dot, scopes)
        if not items:
            raise RenderError("empty command")

        def val(x):
            return self.operand(x[1], dot, scopes) if isinstance(x, tuple) and x and x[0] == "tok" else x

        head = items[0]
        if isinstance(head, tuple) and head[0] == "tok" and head[1][0] == "ident" and \
                head[1][1] not in ("true", "false", "nil"):
            name = head[1][1]
            if name not in self.funcs:
                raise RenderError(f"function {name!r} is outside the supported subset")
            argv = [val(x) for x in items[1:]]
            if prev is not NO_ARG:
                argv.append(prev)
            try:
                return self.funcs[name](*argv)
            except TypeError as e:
                raise RenderError(f"wrong arguments to {name}: {e}") from e
        if len(items) != 1 or prev is not NO_ARG:
            raise RenderError("a non-function command takes no arguments")
        return val(head)

    def pipeline(self, toks, dot, scopes):
        prev = NO_ARG
        for cmd in self.group(toks):
            prev = self.command(cmd, dot, scopes, prev)
        return prev

    # -- statements ---------------------------------------------------------------------------

    def exec_nodes(self, nodes, dot, scopes):
        out = []
        for n in nodes:
            kind = n[0]
            if kind == "text":
                out.append(n[1])
            elif kind == "action":
                decl, toks = n[1]
                v = self.pipeline(toks, dot, scopes)
                if decl:
                    if decl[1] == "decl":
                        scopes[-1][decl[0]] = v
                    else:
                        for s in reversed(scopes):
                            if decl[0] in s:
                                s[decl[0]] = v
                                break
                        else:
                            raise RenderError(f"assignment to undeclared {decl[0]}")
                else:
                    out.append(to_text(v))
            elif kind == "template":
                data = self.pipeline(n[2], dot, scopes) if n[2] else None
                out.append(self.include(n[1], data))
            elif kind == "if":
                v = self.pipeline(n[1][1], dot, scopes)
                branch = n[2] if truthy(v) else n[3]
                out.append(self.exec_nodes(branch, dot, scopes + [{}]))
            elif kind == "with":
                v = self.pipeline(n[1][1], dot, scopes)
                if truthy(v):
                    out.append(self.exec_nodes(n[2], v, scopes + [{}]))
                else:
                    out.append(self.exec_nodes(n[3], dot, scopes + [{}]))
            elif kind == "range":
                rvars, pipe, body, else_nodes = n[1], n[2], n[3], n[4]
                v = self.pipeline(pipe[1], dot, scopes)
                if isinstance(v, dict):
                    pairs = [(k, v[k]) for k in sorted(v)]
                elif isinstance(v, list):
                    pairs = list(enumerate(v))
                elif v is None or v is NO_VALUE:
                    pairs = []  # Go: ranging over an invalid (nil) value runs the else branch
                else:
                    raise RenderError(f"range can't iterate over {v!r}")
                if not pairs:
                    out.append(self.exec_nodes(else_nodes, dot, scopes + [{}]))
                for k, item in pairs:
                    scope = {}
                    if len(rvars) == 1:
                        scope[rvars[0]] = item
                    elif len(rvars) == 2:
                        scope[rvars[0]], scope[rvars[1]] = k, item
                    out.append(self.exec_nodes(body, item, scopes + [scope]))
            else:
                raise RenderError(f"internal: node {kind}")
        return "".join(out)


NO_ARG = object()


def coalesce(defaults, user):
    """Helm's values merge: user maps merge into the chart's, a user null deletes the key."""
    if not isinstance(defaults, dict) or not isinstance(user, dict):
        return copy.deepcopy(user)
    out = copy.deepcopy(defaults)
    for k, v in user.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = coalesce(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def helm_template(chart_dir, values=None, release="cni-metrics-helper", namespace="kube-system",
                  with_notes=False):
    """Renders a chart like `helm template`: returns the list of objects (and the NOTES text)."""
    with open(os.path.join(chart_dir, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(os.path.join(chart_dir, "values.yaml")) as f:
        defaults = yaml.safe_load(f) or {}
    vals = defaults
    for v in values or []:
        vals = coalesce(vals, v)
    data = {
        "Values": vals,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True,
                    "IsUpgrade": False, "Revision": 1},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart.get("appVersion", "")},
        "Capabilities": {"KubeVersion": {"Version": "v1.30.0"}},
    }
    eng = Engine()
    tdir = os.path.join(chart_dir, "templates")
    names = sorted(os.listdir(tdir))
    parsed = {}
    for name in names:
        with open(os.path.join(tdir, name)) as f:
            parsed[name] = eng.load(f.read(), name)
    objs, notes = [], None
    for name in names:
        if name.startswith("_"):
            continue
        try:
            text = eng.exec_nodes(parsed[name], data, [{"$": data}])
        except RenderError as e:
            raise RenderError(f"{name}: {e}") from e
        if name == "NOTES.txt":
            notes = text
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            raise RenderError(f"{name}: rendered text is not YAML: {e}\n{text}") from e
        objs.extend(docs)
    return (objs, notes) if with_notes else objs


def main(argv):
    if len(argv) >= 2 and argv[0] == "kustomize":
        objs = kustomize(argv[1])
    elif len(argv) >= 2 and argv[0] == "helm":
        release, ns, values, i = "cni-metrics-helper", "kube-system", [], 2
        while i < len(argv):
            if argv[i] == "--release":
                release = argv[i + 1]
            elif argv[i] == "--namespace":
                ns = argv[i + 1]
            elif argv[i] == "-f":
                with open(argv[i + 1]) as f:
                    values.append(yaml.safe_load(f) or {})
            else:
                raise SystemExit(__doc__)
            i += 2
        objs = helm_template(argv[1], values, release, ns)
    else:
        raise SystemExit(__doc__)
    sys.stdout.write(yaml.safe_dump_all(objs, default_flow_style=False, sort_keys=False))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RenderError as e:
        print(f"manifests_render: {e}", file=sys.stderr)
        sys.exit(1)
