"""Renders our manifests without kubectl or helm (Debian 12 ships neither a current kustomize nor
helm): the subset of kustomize and of Helm's Go templates that manifests/ uses, no more. Anything
outside that subset is an error, never silently ignored, so the chart and the kustomizations stay
within what this renderer (and the real tools) agree on.

Kustomize: resources (files and directories), components (`kind: Component` directories, applied
after the resources and before the including kustomization's own patches), namespace, images,
patches (strategic merge by kind and name; JSON 6902 add/remove/replace/test with a target),
patchesStrategicMerge; a resource id (kind, namespace, name) added twice is an error, as in
kustomize. Helm: values.yaml coalesced with user values (null deletes),
.Values/.Release/.Chart/.Capabilities, text/template actions (if/else if/else, with, range over
lists and maps with $k, $v, define/include/template, variables, pipelines, trim markers,
comments) and the functions default, quote, toYaml, indent, nindent, trunc, trimSuffix, printf,
contains, eq, ne, gt, not, and, or (both short-circuit, as since Go 1.18), empty, required, fail,
index, dict, hasKey, toString, lower, int, regexMatch.

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

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "images",
                        "patches", "patchesStrategicMerge"}
TARGET_FIELDS = {"kind", "name", "namespace", "group", "version"}


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
        first, used = [], set()
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise RenderError(f"patch of {field} needs {key} on every item")
            for i, cur in enumerate(base):
                if i not in used and isinstance(cur, dict) and cur.get(key) == item[key]:
                    first.append(smp_merge(cur, item, None))
                    used.add(i)
                    break
            else:
                first.append(copy.deepcopy(item))
        # As kustomize (kyaml) does: the patch's items first, merged or new, in the patch's order,
        # then the items only the base has, in the base's order.
        return first + [copy.deepcopy(x) for i, x in enumerate(base) if i not in used]
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


def json_pointer(path):
    if not path.startswith("/"):
        raise RenderError(f"JSON patch path {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json6902(obj, ops, where):
    """RFC 6902 add, remove, replace and test on one object (a test that fails is an error, as in
    kustomize, so a patch that relies on a list's layout cannot silently edit the wrong item)."""
    obj = copy.deepcopy(obj)
    for op in ops:
        kind = op.get("op")
        if kind not in ("add", "remove", "replace", "test"):
            raise RenderError(f"{where}: JSON patch op {kind!r} is outside the supported subset")
        parts = json_pointer(op["path"])
        parent = obj
        for p in parts[:-1]:
            if isinstance(parent, list):
                parent = parent[int(p)]
            elif isinstance(parent, dict) and p in parent:
                parent = parent[p]
            else:
                raise RenderError(f"{where}: JSON patch path {op['path']} does not exist")
        last = parts[-1]
        if isinstance(parent, list):
            n = len(parent) if last == "-" and kind == "add" else int(last)
            if not 0 <= n <= len(parent) - (0 if kind == "add" else 1):
                raise RenderError(f"{where}: JSON patch index {op['path']} out of range")
        elif not isinstance(parent, dict) or (kind != "add" and last not in parent):
            raise RenderError(f"{where}: JSON patch path {op['path']} does not exist")
        else:
            n = last
        if kind == "test":
            if parent[n] != op.get("value"):
                raise RenderError(f"{where}: JSON patch test failed at {op['path']}: "
                                  f"{parent[n]!r} != {op.get('value')!r}")
        elif kind == "remove":
            del parent[n]
        elif kind == "replace":
            parent[n] = copy.deepcopy(op["value"])
        elif isinstance(parent, list):
            parent.insert(n, copy.deepcopy(op["value"]))
        else:
            parent[n] = copy.deepcopy(op["value"])
    return obj


def target_matches(obj, target):
    md = obj.get("metadata") or {}
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    return all((
        target.get("kind") in (None, obj.get("kind")),
        target.get("name") in (None, md.get("name")),
        target.get("namespace") in (None, md.get("namespace")),
        target.get("group") in (None, group),
        target.get("version") in (None, version),
    ))


def res_id(o):
    return (o.get("kind"), (o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name"))


def add_resources(objs, new, where):
    """kustomize refuses a second resource with an id it already holds."""
    ids = {res_id(o) for o in objs}
    for o in new:
        if res_id(o) in ids:
            raise RenderError(f"{where}: may not add resource with an already registered id: {res_id(o)}")
        ids.add(res_id(o))
        objs.append(o)


def kustomize(directory, want_kind="Kustomization", objs=None):
    """Renders the kustomization in directory; a Component (want_kind) is applied to objs, the
    resources accumulated so far by the kustomization that lists it."""
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields outside the supported subset: {sorted(unknown)}")
    kind = k.get("kind", "Kustomization")
    if kind != want_kind:
        raise RenderError(f"{path}: expected kind {want_kind!r}, got {kind!r} (a Component is listed "
                          "under components:, a Kustomization under resources:)")
    objs = [] if objs is None else objs
    for res in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, res))
        add_resources(objs, kustomize(p) if os.path.isdir(p) else load_yaml_docs(p), path)
    for comp in k.get("components", []):
        objs = kustomize(os.path.normpath(os.path.join(directory, comp)), "Component", objs)
    patches = []
    for p in k.get("patchesStrategicMerge", []):
        patches.extend((None, d) for d in load_yaml_docs(os.path.join(directory, p)))
    for p in k.get("patches", []):
        if "options" in p or set(p.get("target") or {}) - TARGET_FIELDS:
            raise RenderError(f"{path}: patch options/target fields are outside the supported subset")
        if "path" in p:
            docs = load_yaml_docs(os.path.join(directory, p["path"]))
        else:
            docs = [d for d in yaml.safe_load_all(p["patch"]) if d is not None]
        if "target" in p:
            if len(docs) != 1 or not isinstance(docs[0], list):
                raise RenderError(f"{path}: a patch with a target must be a JSON 6902 list of operations")
            patches.append((p["target"], docs[0]))
        else:
            patches.extend((None, d) for d in docs)
    for target, patch in patches:
        if target is None:
            target = {"kind": patch.get("kind"), "name": patch.get("metadata", {}).get("name")}
        hits = [i for i, o in enumerate(objs) if target_matches(o, target)]
        if target.get("name") is None or len(hits) != 1:
            raise RenderError(f"{path}: patch for {target} matches {len(hits)} resources")
        if isinstance(patch, list):
            objs[hits[0]] = json6902(objs[hits[0]], patch, path)
        else:
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


def to_string(v):
    """Sprig's toString: fmt's %v (a nil is "<nil>", a whole float has no decimals)."""
    if v is None or v is NO_VALUE:
        return "<nil>"
    if isinstance(v, (dict, list)):
        raise RenderError("toString of a map or list is outside the supported subset")
    return to_text(v)


def to_int(v):
    """Sprig's int (cast.ToInt): numbers truncate, numeric strings parse, anything else is 0."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            return 0
    return 0


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
            "gt": self.gt,
            "empty": lambda v=NO_VALUE: not truthy(v),
            "required": self.required,
            "fail": self.fail,
            "include": self.include,
            "index": self.index,
            "dict": self.dict,
            "hasKey": self.has_key,
            "toString": to_string,
            "lower": lambda s: self.want_str("lower", s).lower(),
            "int": to_int,
            "regexMatch": lambda rx, s: re.search(self.want_str("regexMatch", rx),
                                                  self.want_str("regexMatch", s)) is not None,
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

    @staticmethod
    def want_str(fn, s):
        # Sprig's string functions take a Go string: anything else is a template error.
        if not isinstance(s, str):
            raise RenderError(f"wrong type for value in {fn}; expected string; got {type(s).__name__}")
        return s

    @staticmethod
    def gt(a, b):
        # Go compares basic kinds only with their own kind (int with int, float with float...).
        kinds = [("int" if isinstance(x, int) and not isinstance(x, bool) else type(x).__name__)
                 for x in (a, b)]
        if kinds[0] != kinds[1] or kinds[0] not in ("int", "float", "str"):
            raise RenderError(f"incompatible types for comparison: {kinds}")
        return a > b

    @staticmethod
    def index(coll, *keys):
        for k in keys:
            if isinstance(coll, dict):
                coll = coll.get(k, NO_VALUE)  # Go: the map's zero value for a missing key
            elif isinstance(coll, list):
                if not isinstance(k, int) or not 0 <= k < len(coll):
                    raise RenderError(f"index out of range: {k}")
                coll = coll[k]
            else:
                raise RenderError(f"can't index item of type {type(coll).__name__}")
        return coll

    @staticmethod
    def dict(*kv):
        if len(kv) % 2:
            kv = kv + ("",)  # Sprig: a missing last value is ""
        return {to_string(kv[i]): kv[i + 1] for i in range(0, len(kv), 2)}

    @staticmethod
    def has_key(d, key):
        if not isinstance(d, dict):
            raise RenderError(f"hasKey: expected a map, got {type(d).__name__}")
        return key in d

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

    def args(self, toks):
        """The command's words; a parenthesised group stays unevaluated (("group", toks)) until
        its value is needed, so that and/or can stop early as Go's do."""
        out, i = [], 0
        while i < len(toks):
            t = toks[i]
            if t == ("punct", "("):
                depth, j = 1, i + 1
                while depth:
                    if j >= len(toks):
                        raise RenderError("unclosed (")
                    if toks[j] == ("punct", "("):
                        depth += 1
                    elif toks[j] == ("punct", ")"):
                        depth -= 1
                    j += 1
                out.append(("group", toks[i + 1:j - 1]))
                i = j
            else:
                out.append(("tok", t))
                i += 1
        return out

    def command(self, toks, dot, scopes, prev):
        items = self.args(toks)
        if not items:
            raise RenderError("empty command")

        def val(x):
            if x[0] == "group":
                return self.pipeline(x[1], dot, scopes)
            return self.operand(x[1], dot, scopes)

        head = items[0]
        if head[0] == "tok" and head[1][0] == "ident" and head[1][1] not in ("true", "false", "nil"):
            name = head[1][1]
            if name in ("and", "or"):
                # Go 1.18+: arguments are evaluated left to right only until the result is known
                # (a piped value, already evaluated, comes last).
                rest = items[1:] + ([("value", prev)] if prev is not NO_ARG else [])
                if not rest:
                    raise RenderError(f"wrong arguments to {name}: none")
                for i, x in enumerate(rest):
                    v = x[1] if x[0] == "value" else val(x)
                    if i == len(rest) - 1 or truthy(v) == (name == "or"):
                        return v
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
