#!/bin/sh
# Static analysis of our C: clang-tidy (bugprone-*, cert-*, clang-analyzer-*, configured and
# justified in .clang-tidy) and cppcheck (warning, portability, performance) over every src/*.c
# of the build's compile_commands.json (headers of include/cmh/ through them), plus the banned
# functions of STYLE.md. Any finding fails. Suppress one only in place, with the reason:
#   clang-tidy: `// NOLINT(check-name): why` on the line;  cppcheck: `// cppcheck-suppress id`.
#
#   test/static/analyze.sh [BUILD_DIR]      (default: build; needs CMAKE_EXPORT_COMPILE_COMMANDS)
set -eu

src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
jobs=${CMH_ANALYZE_JOBS:-2}

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "analyze.sh: $1 not found: install the Debian package '$2' (make deps installs it)" >&2
    exit 1
}
tidy=$(command -v clang-tidy-14 || command -v clang-tidy || echo clang-tidy)
need "$tidy" clang-tidy
need cppcheck cppcheck
if [ ! -f "$build/compile_commands.json" ]; then
    echo "analyze.sh: no $build/compile_commands.json (configure with CMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# Our sources only (not third_party/, not tests): the files of src/ that the build compiles.
/usr/bin/python3 - "$build/compile_commands.json" "$src" "$work" <<'EOF'
import json, os, sys
db, src, work = sys.argv[1], sys.argv[2], sys.argv[3]
top = os.path.join(src, "src") + os.sep
entries = [e for e in json.load(open(db))
           if os.path.normpath(os.path.join(e["directory"], e["file"])).startswith(top)]
seen, out = set(), []
for e in entries:
    f = os.path.normpath(os.path.join(e["directory"], e["file"]))
    if f not in seen:
        seen.add(f)
        out.append(e)
json.dump(out, open(os.path.join(work, "compile_commands.json"), "w"), indent=1)
# Largest first (the analyzer's time grows with the file), so the last ones to finish are short.
files = sorted(seen, key=lambda f: (-os.path.getsize(f), f))
open(os.path.join(work, "files"), "w").write("".join(f + "\n" for f in files))
EOF
nfiles=$(wc -l <"$work/files")
if [ "$nfiles" -lt 10 ]; then
    echo "analyze.sh: only $nfiles files of src/ in $build/compile_commands.json" >&2
    exit 1
fi
fail=0

# 1. Banned functions (STYLE.md), outside comments and string literals is close enough here.
if grep -nE '(^|[^A-Za-z0-9_>.])(strcpy|strcat|sprintf|vsprintf|strtok|atoi|atol|atoll|gets)[[:space:]]*\(' \
    $(find "$src/src" "$src/include/cmh" -name '*.[ch]' | sort) | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(/?\*|//)'; then
    echo "FAIL banned function (STYLE.md: use snprintf, strto* with errno and end pointer)"
    fail=1
fi

# 2. clang-tidy, $jobs files at a time. NDEBUG off, so that the analyzer sees the assertions. At a
#    lower priority: the CPU-bound analyzer takes what the tests beside it in `make test` (which
#    mostly wait on their peers, on time) leave idle, rather than delaying their wake-ups.
start=$(date +%s)
if ! xargs -P "$jobs" -n 1 nice -n 10 "$tidy" --quiet -p "$work" --config-file="$src/.clang-tidy" \
    --extra-arg=-UNDEBUG <"$work/files" >"$work/tidy.out" 2>"$work/tidy.err"; then
    fail=1
fi
if grep -qE '(warning|error):' "$work/tidy.out"; then
    grep -E '(warning|error):' "$work/tidy.out" | sort -u
    fail=1
fi
if [ "$fail" -ne 0 ] && ! grep -qE '(warning|error):' "$work/tidy.out"; then
    cat "$work/tidy.err" >&2
fi
echo "clang-tidy: $nfiles files, $(grep -cE '(warning|error):' "$work/tidy.out" || true) findings, $(($(date +%s) - start)) s"

# 3. cppcheck: the bug-finding categories (style is advisory: its knownConditionTrueFalse and
#    variableScope hits here are all false positives or taste).
start=$(date +%s)
if ! cppcheck --project="$work/compile_commands.json" --enable=warning,portability,performance \
    --inline-suppr --error-exitcode=3 --quiet -j "$jobs" -UNDEBUG \
    --template='{file}:{line}: {severity} [{id}] {message}' 2>"$work/cppcheck.out"; then
    fail=1
fi
if [ -s "$work/cppcheck.out" ]; then
    cat "$work/cppcheck.out"
    fail=1
fi
echo "cppcheck: $nfiles files, $(grep -c '\[' "$work/cppcheck.out" || true) findings, $(($(date +%s) - start)) s"

if [ "$fail" -ne 0 ]; then
    echo "static analysis: FAIL"
    exit 1
fi
echo "static analysis: clean"
