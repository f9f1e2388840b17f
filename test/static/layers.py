"""Proves the layering of the source tree from its #include lines, and keeps it.

Folders are layers; dependencies point down this list and never up:

    core <- http <- k8s <- scrape <- round <- aws <- cmd <- top (daemon.c, daemon.h, main.c)

Every #include of a project header ("cmh/...") in src/ and include/cmh/ is read. The test fails,
naming file:line, on:
- an upward edge (a folder including a header of a folder above it);
- a folder reaching into another folder's test seams (a *_int.h header is for the module's own
  folder and for the tests, fuzzers and benches, never for another folder);
- a quoted include that is not "cmh/..." (relative paths would bypass the public headers);
- a source or header in a folder this list does not rank (a new folder must take a place here);
- a cycle in the folder graph (impossible while the order holds, checked on its own so the message
  says which folders close the loop).
Usage: layers.py [SOURCE_DIR] (default: the repository this file is in).
"""
import os
import re
import sys

LAYERS = ["core", "http", "k8s", "scrape", "round", "aws", "cmd", "top"]
RANK = {name: i for i, name in enumerate(LAYERS)}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def folder_of_file(rel):
    """The layer of a file given relative to the source dir, or None when unranked."""
    parts = rel.split(os.sep)
    if parts[0] == "src":
        inner = parts[1:]
    elif parts[:2] == ["include", "cmh"]:
        inner = parts[2:]
    else:
        return None
    if len(inner) == 1:
        return "top"
    return inner[0] if inner[0] in RANK else None


def folder_of_include(path):
    """The layer of an included "cmh/..." header, or None when unranked."""
    inner = path.split("/")[1:]
    if len(inner) == 1:
        return "top"
    return inner[0] if inner[0] in RANK else None


def find_cycle(edges):
    """A folder cycle as a list of names, or None. edges: {folder: set(folders)}."""
    state = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    errors = []
    edges = {}
    files = 0
    for top in ("src", os.path.join("include", "cmh")):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(names):
                if not name.endswith((".c", ".h")):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                files += 1
                src = folder_of_file(rel)
                if src is None:
                    errors.append(f"{rel}:1: folder not in the layer list {LAYERS}")
                    continue
                with open(full, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        inc = m.group(1)
                        where = f"{rel}:{lineno}"
                        if not inc.startswith("cmh/"):
                            errors.append(f'{where}: "{inc}" is not a public "cmh/..." header')
                            continue
                        dst = folder_of_include(inc)
                        if dst is None:
                            errors.append(f"{where}: {inc} is in a folder not in {LAYERS}")
                            continue
                        if dst != src:
                            edges.setdefault(src, set()).add(dst)
                            if inc.endswith("_int.h"):
                                errors.append(f"{where}: {src} reaches into {inc}, a test seam "
                                              f"of {dst}")
                        if RANK[dst] > RANK[src]:
                            errors.append(f"{where}: {src} includes {inc}: upward edge "
                                          f"{src} -> {dst} (layers point down {' <- '.join(LAYERS)})")
    if files == 0:
        errors.append(f"{root}: no sources found under src/ and include/cmh/")
    cycle = find_cycle(edges)
    if cycle:
        errors.append("folder cycle: " + " -> ".join(cycle))
    for e in errors:
        print(e)
    if errors:
        print(f"FAIL: {len(errors)} layering violation(s) in {files} files")
        return 1
    print(f"OK: {files} files, folder edges "
          + ", ".join(f"{s}->{d}" for s in LAYERS for d in sorted(edges.get(s, ()), key=RANK.get)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
