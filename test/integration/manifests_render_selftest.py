"""The renderer in manifests_render.py against the documented semantics of Go's text/template,
Sprig and Helm (expected outputs written from the Go and Helm documentation, not from running the
renderer), and its kustomize subset against strategic-merge-patch rules. The chart tests trust
this renderer, so it must get these right, and refuse what it does not implement.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import manifests_render as mr  # noqa: E402

failures = 0


def check(name, ok, detail=""):
    global failures
    print(("ok    " if ok else "FAIL  ") + name + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        failures += 1


def render(tpl, data):
    eng = mr.Engine()
    nodes = eng.load(tpl, "t")
    return eng.exec_nodes(nodes, data, [{"$": data}])


DATA = {"m": {"b": 2, "a": 1}, "l": ["x", "y"], "s": "str", "e": "", "z": 0, "f": False, "n": None,
        "nested": {"k": {"v": "deep"}}, "num": 30, "t": True, "el": []}

CASES = [
    # (what, template, expected)
    ("text passes through", "a b\nc", "a b\nc"),
    ("field", "{{ .s }}", "str"),
    ("missing key prints nothing (Helm's <no value>)", "[{{ .missing }}]", "[]"),
    ("nested field", "{{ .nested.k.v }}", "deep"),
    ("trim left and right", "a  \n {{- .s -}} \n  b", "astrb"),
    ("trim only left", "a \n{{- .s }} \nb", "astr \nb"),
    ("comment disappears", "a{{/* c }} */}}b", "ab"),
    ("trimmed comment", "a \n{{- /* c */ -}}\n b", "ab"),
    ("range over a map is in key order", "{{ range $k, $v := .m }}{{ $k }}={{ $v }},{{ end }}", "a=1,b=2,"),
    ("range over a list sets dot", "{{ range .l }}<{{ . }}>{{ end }}", "<x><y>"),
    ("range with index", "{{ range $i, $v := .l }}{{ $i }}{{ $v }}{{ end }}", "0x1y"),
    ("range else on nil and on an empty list",
     "{{ range .n }}x{{ else }}nil{{ end }} {{ range .el }}x{{ else }}empty{{ end }}", "nil empty"),
    ("if else if else", "{{ if .z }}1{{ else if .s }}2{{ else }}3{{ end }}", "2"),
    ("empty string, 0, false, nil are false",
     "{{ if .e }}1{{ end }}{{ if .z }}2{{ end }}{{ if .f }}3{{ end }}{{ if .n }}4{{ end }}.", "."),
    ("with sets dot", "{{ with .nested.k }}{{ .v }}{{ end }}", "deep"),
    ("with else", "{{ with .e }}x{{ else }}none{{ end }}", "none"),
    ("variables and $", "{{ $x := .s }}{{ with .nested }}{{ $x }}{{ $.num }}{{ end }}", "str30"),
    ("variable assignment", "{{ $x := 1 }}{{ if .t }}{{ $x = 2 }}{{ end }}{{ $x }}", "2"),
    ("pipeline feeds the last argument", "{{ .s | printf \"%s-%s\" \"a\" }}", "a-str"),
    ("parenthesised argument", "{{ default (printf \"%s!\" .s) .e }}", "str!"),
    ("default on empty string", "{{ default \"d\" .e }}", "d"),
    ("default on false", "{{ default \"d\" .f }}", "d"),
    ("default on 0", "{{ default 7 .z }}", "7"),
    ("default keeps a value", "{{ default \"d\" .s }}", "str"),
    ("default on a missing key", "{{ default \"d\" .missing }}", "d"),
    ("quote", "{{ .s | quote }} {{ .num | quote }} {{ .t | quote }}", "\"str\" \"30\" \"true\""),
    ("quote escapes", "{{ \"a\\\"b\" | quote }}", "\"a\\\"b\""),
    ("toYaml sorts keys, no trailing newline", "{{ toYaml .m }}", "a: 1\nb: 2"),
    ("nindent", "x:{{ toYaml .m | nindent 2 }}", "x:\n  a: 1\n  b: 2"),
    ("indent", "{{ toYaml .l | indent 4 }}", "    - x\n    - y"),
    ("trunc and trimSuffix", "{{ \"abcdef-\" | trunc 4 }} {{ \"ab-\" | trimSuffix \"-\" }}", "abcd ab"),
    ("contains (substring first)", "{{ if contains \"tr\" .s }}y{{ end }}", "y"),
    ("eq, ne, not, and, or", "{{ eq .s \"str\" }} {{ ne .num 30 }} {{ not .e }} {{ and .s .z }} {{ or .e .s }}",
     "true false true 0 str"),
    ("define and include", "{{- define \"n\" -}}<{{ .s }}>{{- end -}}{{ include \"n\" . }}", "<str>"),
    ("template action", "{{- define \"n\" -}}[{{ . }}]{{- end -}}{{ template \"n\" .s }}", "[str]"),
    ("eq with several operands is true if any matches", "{{ eq .s \"a\" \"str\" }} {{ eq .s \"a\" \"b\" }}",
     "true false"),
    # Go 1.18+: and/or stop at the first argument that decides, so later ones are not evaluated.
    ("and stops at the first empty argument", "{{ and .f (fail \"evaluated\") }}", "false"),
    ("or stops at the first non-empty argument", "{{ or .s (fail \"evaluated\") }}", "str"),
    ("and/or with a piped value", "{{ .s | and .t }} {{ .e | or .z }}", "str "),
    ("hasKey", "{{ hasKey .m \"a\" }} {{ hasKey .m \"z\" }}", "true false"),
    ("index of a map and a list; a missing key is no value",
     "{{ index .m \"b\" }} {{ index .l 1 }} [{{ index .m \"z\" }}] {{ index .nested \"k\" \"v\" }}", "2 y [] deep"),
    ("dict passed to include", "{{- define \"d\" -}}{{ .k }}/{{ .n }}{{- end -}}{{ include \"d\" (dict \"k\" \"v\" \"n\" 1) }}",
     "v/1"),
    ("toString is fmt's %v (nil is <nil>)", "{{ toString .num }} {{ toString .t }} {{ toString .n }} {{ toString 1.5 }}",
     "30 true <nil> 1.5"),
    ("lower", "{{ lower \"AbC\" }} {{ \"X\" | lower }}", "abc x"),
    ("int of a string and a float; gt", "{{ int \"3\" }} {{ int 2.9 }} {{ gt (int \"3\") 2 }} {{ gt 1 1 }}",
     "3 2 true false"),
    ("regexMatch searches (unanchored) with RE2 syntax in a raw string",
     "{{ regexMatch `^v1\\.[0-9]+` \"v1.21.2\" }} {{ regexMatch `[0-9]` \"abc\" }} {{ regexMatch \"b\" \"abc\" }}",
     "true false true"),
    ("assignment inside if changes the outer variable", "{{ $x := \"\" }}{{ if .t }}{{ $x = printf \"%s!\" .s }}{{ end }}{{ $x }}",
     "str!"),
]

for what, tpl, want in CASES:
    try:
        got = render(tpl, DATA)
    except mr.RenderError as e:
        got = f"error: {e}"
    check(what, got == want, f"got {got!r}, want {want!r}")

ERRORS = [
    ("field of a missing map is an error (Helm: nil pointer evaluating)", "{{ .missing.x }}"),
    ("unknown function is refused", "{{ lookup \"v1\" \"Pod\" \"\" \"\" }}"),
    ("unclosed if is refused", "{{ if .s }}x"),
    ("stray end is refused", "x{{ end }}"),
    ("printing a map is refused (use toYaml)", "{{ .m }}"),
    ("required fails on empty", "{{ required \"need it\" .e }}"),
    ("fail fails", "{{ fail \"no\" }}"),
    ("range over a string is an error, as in Go", "{{ range .s }}x{{ end }}"),
    ("undefined variable", "{{ $nope }}"),
    ("include of an unknown template", "{{ include \"nope\" . }}"),
    ("and evaluates up to the deciding argument", "{{ and .t (fail \"evaluated\") }}"),
    ("lower of a non-string is an error, as in Sprig", "{{ lower .t }}"),
    ("gt of an int and a float is an error, as in Go", "{{ gt 2 1.5 }}"),
    ("hasKey of a non-map is an error", "{{ hasKey .l \"a\" }}"),
    ("index past the end of a list", "{{ index .l 5 }}"),
]
for what, tpl in ERRORS:
    try:
        got = render(tpl, DATA)
        check(what, False, f"rendered {got!r}")
    except mr.RenderError:
        check(what, True)

# Helm's values coalescing: maps merge, user null deletes, lists replace.
merged = mr.coalesce({"a": {"x": 1, "y": 2}, "l": [1, 2], "k": "v"}, {"a": {"y": None, "z": 3}, "l": [3]})
check("coalesce: maps merge, null deletes, lists replace", merged == {"a": {"x": 1, "z": 3}, "l": [3], "k": "v"},
      merged)

# Strategic merge patch: containers and env merge by name, other lists replace, null deletes.
base = {"spec": {"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "value": "1"},
                                                                    {"name": "Y", "value": "2"}],
                                 "args": ["p", "q"]}],
                 "tolerations": [{"key": "t"}], "drop": "me"}}
patch = {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}],
                                  "args": ["r"]},
                                 {"name": "b", "image": "j"}],
                  "tolerations": [{"key": "u"}], "drop": None}}
# The patch's items first (merged or new) in the patch's order, then the base's other items, as
# kubectl kustomize (v5.5) puts them.
want = {"spec": {"containers": [{"name": "a", "image": "i",
                                 "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"},
                                         {"name": "X", "value": "1"}], "args": ["r"]},
                                {"name": "b", "image": "j"}],
                 "tolerations": [{"key": "u"}]}}
got = mr.smp_merge(base, patch)
check("strategic merge: merge keys, replace, delete", got == want, got)
check("images: name:tag and digest", (mr.split_image("r.io:5000/a/b:1.2"), mr.split_image("a@sha256:00"))
      == (("r.io:5000/a/b", ":1.2"), ("a", "@sha256:00")))

with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "kustomization.yaml"), "w") as f:
        f.write("resources: []\nnamePrefix: x-\n")
    try:
        mr.kustomize(d)
        check("kustomize fields outside the subset are refused", False)
    except mr.RenderError:
        check("kustomize fields outside the subset are refused", True)


def tree(root, files):
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


# Components and JSON 6902 patches (expected objects written from the kustomize documentation:
# a component's resources join the accumulated ones and its patches apply to them, before the
# including kustomization's own patches; a failed "test" op is an error; "-" appends).
ROLE = """apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r, namespace: ns}
rules:
  - {apiGroups: [""], resources: [pods], verbs: [list]}
  - {apiGroups: [""], resources: [pods/proxy], verbs: [get]}
"""
ADD = """apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources: [extra.yaml]
patches:
  - target: {kind: Role, name: r}
    patch: |-
      - op: add
        path: /rules/-
        value: {apiGroups: [x], resources: [leases], verbs: [get]}
"""
DROP = """apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches:
  - target: {kind: Role, name: r}
    patch: |-
      - {op: test, path: /rules/1/resources, value: [pods/proxy]}
      - {op: remove, path: /rules/1}
"""
with tempfile.TemporaryDirectory() as d:
    tree(d, {
        "base/kustomization.yaml": "resources: [role.yaml]\n",
        "base/role.yaml": ROLE,
        "add/kustomization.yaml": ADD,
        "add/extra.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ns}\n",
        "drop/kustomization.yaml": DROP,
        "both/kustomization.yaml": "resources: [../base]\ncomponents: [../add, ../drop]\n",
        "both-reversed/kustomization.yaml": "resources: [../base]\ncomponents: [../drop, ../add]\n",
        "own-patch-last/kustomization.yaml": "resources: [../base]\ncomponents: [../add]\npatches:\n"
                                             "  - target: {kind: Role, name: r}\n    patch: |-\n"
                                             "      - {op: replace, path: /rules/2/verbs, value: [update]}\n",
        "twice/kustomization.yaml": "resources: [../base, ../both]\n",
        "comp-as-resource/kustomization.yaml": "resources: [../add]\n",
        "overlay-as-comp/kustomization.yaml": "resources: [../base]\ncomponents: [../both]\n",
        "test-fails/kustomization.yaml": "resources: [../both]\ncomponents: [../drop]\n",
    })
    want_rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                  {"apiGroups": ["x"], "resources": ["leases"], "verbs": ["get"]}]
    for name in ("both", "both-reversed"):
        try:
            objs = mr.kustomize(os.path.join(d, name))
            role = [o for o in objs if o["kind"] == "Role"]
            check(f"components {name}: patches applied in either order, component resource added",
                  role and role[0]["rules"] == want_rules and sorted(o["kind"] for o in objs) == ["ConfigMap", "Role"],
                  objs)
        except mr.RenderError as e:
            check(f"components {name}", False, e)
    try:
        objs = mr.kustomize(os.path.join(d, "own-patch-last"))
        check("the kustomization's own patches run after its components",
              [o for o in objs if o["kind"] == "Role"][0]["rules"][2]["verbs"] == ["update"], objs)
    except mr.RenderError as e:
        check("the kustomization's own patches run after its components", False, e)
    for name, what in (("twice", "the same resource added twice (kustomize: already registered id)"),
                       ("comp-as-resource", "a Component listed under resources"),
                       ("overlay-as-comp", "a Kustomization listed under components"),
                       ("test-fails", "a JSON patch whose test op fails")):
        try:
            mr.kustomize(os.path.join(d, name))
            check(f"refused: {what}", False, "rendered")
        except mr.RenderError:
            check(f"refused: {what}", True)

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
