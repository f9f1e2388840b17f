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
# Items only the patch has come first, as kubectl kustomize (v5) puts them.
want = {"spec": {"containers": [{"name": "b", "image": "j"},
                                {"name": "a", "image": "i",
                                 "env": [{"name": "Z", "value": "4"}, {"name": "X", "value": "1"},
                                         {"name": "Y", "value": "3"}], "args": ["r"]}],
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

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
