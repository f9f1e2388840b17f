"""Differential test: `cni-metrics-helper parse` against an independent parser, Debian's
python3-prometheus-client (prometheus_client.parser), on the real ipamD scrapes and on thousands
of generated expositions (escapes, UTF-8, whitespace, every value form, timestamps, all types).
Both must give the same samples, in the same order, with bit-identical values.

A `parse` process costs more to start (dynamic loading) than to parse one exposition, so the
generated expositions are parsed BATCH at a time: a batch is their concatenation, family names
unique across it, which is itself an exposition whose samples are theirs in order (the first of
each batch starts the input, the others follow another exposition's last line, and a batch may
cross the 64 KiB reads). A batch that differs is redone one exposition at a time to name the one
that differs; two parse processes run at a time while this one compares.

Usage: prom_differential.py [COUNT] [SEED]"""
import concurrent.futures
import math
import os
import random
import re
import struct
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

BIN = os.environ["CMH_BIN"]
DATA = os.environ["CMH_DATA_DIR"]
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 20261126
BATCH = 10

# Our canonical output, read strictly: name{l="v",...} value [timestamp]
LINE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
UNESC = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def unescape(s):
    return re.sub(r'\\[\\"n]', lambda m: UNESC[m.group(0)], s)


def bits(v):
    return "nan" if math.isnan(v) else struct.pack("<d", v).hex()


def run_parse(text_bytes):
    return subprocess.run([BIN, "parse", "-"], input=text_bytes, capture_output=True, timeout=60)


def ours(text_bytes, counters, r=None):
    if r is None:
        r = run_parse(text_bytes)
    if r.returncode != 0:
        raise AssertionError(f"parse rejected it: {r.stderr.decode(errors='replace')}")
    out = []
    for line in r.stdout.decode("utf-8").split("\n")[:-1]:
        m = LINE_RE.match(line)
        if m is None:
            raise AssertionError(f"non-canonical output line {line!r}")
        name, labels, value, ts = m.groups()
        lab = {}
        if labels:
            pos = 0
            while pos < len(labels):
                lm = LABEL_RE.match(labels, pos)
                if lm is None:
                    raise AssertionError(f"bad labels in {line!r}")
                lab[lm.group(1)] = unescape(lm.group(2))
                pos = lm.end()
            if list(lab) != sorted(lab):
                raise AssertionError(f"labels not sorted in {line!r}")
        # prometheus_client reports a counter's samples with a _total suffix (OpenMetrics style).
        if name in counters and not name.endswith("_total"):
            name += "_total"
        v = float(value)
        out.append((name, tuple(sorted(lab.items())), bits(v),
                    None if ts is None else float(int(ts)) / 1000))
    return out


def theirs(text):
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, tuple(sorted(s.labels.items())), bits(s.value), s.timestamp))
    return out


def counters_of(text):
    return {m.group(1) for m in re.finditer(r'^\s*#\s*TYPE\s+(\S+)\s+counter\s*$', text, re.M)}


def compare(name, data, r=None):
    """Our samples of data (r: the finished `parse` run on it, if already run) against theirs."""
    text = data.decode("utf-8")
    a = ours(data, counters_of(text), r)
    b = theirs(text)
    if a != b:
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                raise AssertionError(f"{name}: sample {i} differs:\n ours   {x}\n theirs {y}")
        raise AssertionError(f"{name}: {len(a)} samples vs {len(b)}")
    return len(a)


# ---- generator -------------------------------------------------------------------------------

ALPHA = ("abcdefghijklmnopqrstuvwxyz" "ABCDEFGHIJKLMNOPQRSTUVWXYZ" "0123456789 _-.:/,={}#+\t"
         "\"\\\n" "éß€佖😀")


def gen_name(rng, used):
    while True:
        first = rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
        rest = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_:")
                       for _ in range(rng.randint(0, 24)))
        n = first + rest
        # Keep family names apart from each other's suffixed sample names.
        base = re.sub(r'(_sum|_count|_bucket|_total|_created|_info|_gsum|_gcount)$', '', n)
        if base not in used and n not in used and not n.startswith("__"):
            used.add(base)
            used.add(n)
            return n


def gen_label_value(rng):
    s = "".join(rng.choice(ALPHA) for _ in range(rng.choice([0, 1, 3, 8, 20, 40])))
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def gen_value(rng):
    k = rng.randrange(14)
    if k == 0:
        return rng.choice(["NaN", "+Inf", "-Inf", "Inf", "-inf", "nan", "Infinity"])
    if k == 1:
        return str(rng.randint(-10**6, 10**6))
    if k == 2:
        return repr(rng.uniform(-1e6, 1e6))
    if k == 3:
        return "%.*e" % (rng.randint(0, 20), rng.uniform(-10, 10) * 10 ** rng.randint(-300, 300))
    if k == 4:  # more digits than a double holds: the strtod path
        return str(rng.randint(0, 10**30)) + "." + str(rng.randint(0, 10**25))
    if k == 5:
        return rng.choice(["0", "-0", "+0", "08", ".5", "5.", "+.5e-3", "1E+5", "4.9e-324",
                           "2.2250738585072011e-308", "1.7976931348623157e308", "1e-400",
                           "9007199254740993", "0.1"])
    if k == 6:
        return "%d.%0*d" % (rng.randint(0, 99999), rng.randint(1, 9), rng.randint(0, 10**8))
    if k == 7:
        return "%de%d" % (rng.randint(1, 999999), rng.randint(-30, 30))
    return str(rng.randint(0, 2**53))


def sp(rng):
    return " " * rng.choice([0, 0, 0, 1, 2])


def gen_labels(rng, extra=None):
    n = rng.choice([0, 0, 1, 2, 3, 5])
    names = rng.sample(["a", "b", "method", "code", "path", "_x", "le_", "instance", "A1", "z_z",
                        "quantile_", "job"], n)
    parts = [f'{sp(rng)}{k}{sp(rng)}={sp(rng)}"{gen_label_value(rng)}"{sp(rng)}' for k in names]
    if extra is not None:
        parts.insert(rng.randrange(len(parts) + 1), f'{extra[0]}="{extra[1]}"')
    if not parts:
        return rng.choice(["", "", "{}"])
    trail = "," if rng.random() < 0.2 else ""
    return sp(rng)[:1] + "{" + ",".join(parts) + trail + "}"


def gen_sample(rng, name, extra=None):
    line = name + gen_labels(rng, extra) + " " * rng.randint(1, 2) + gen_value(rng)
    if rng.random() < 0.3:
        line += " " * rng.randint(1, 2) + str(rng.randint(-2**63, 2**63 - 1) if rng.random() < 0.2
                                               else rng.randint(0, 2 * 10**12))
    if rng.random() < 0.1:
        line = " " * rng.randint(1, 3) + line
    return line


def gen_exposition(rng, used):
    lines = []
    for _ in range(rng.randint(1, 12)):
        name = gen_name(rng, used)
        typ = rng.choice(["counter", "gauge", "untyped", "summary", "histogram", None])
        if rng.random() < 0.7:
            lines.append(f"# HELP {name} " + gen_label_value(rng).replace('\\"', '"'))
        if typ is not None:
            lines.append(f"# TYPE {name} {typ}")
        for _ in range(rng.randint(0, 6)):
            if typ == "summary":
                k = rng.randrange(3)
                if k == 0:
                    lines.append(gen_sample(rng, name, ("quantile", gen_value(rng))))
                else:
                    lines.append(gen_sample(rng, name + ("_sum", "_count")[k - 1]))
            elif typ == "histogram":
                k = rng.randrange(3)
                if k == 0:
                    v = rng.choice(["+Inf", "0.5", "1", "10", "2.5e-3"])
                    lines.append(gen_sample(rng, name + "_bucket", ("le", v)).replace(
                        " -", " ").replace(" -Inf", " +Inf"))
                else:
                    lines.append(gen_sample(rng, name + ("_sum", "_count")[k - 1]).replace(
                        " -", " "))
            else:
                lines.append(gen_sample(rng, name))
        if rng.random() < 0.2:
            lines.append(rng.choice(["", "#", "# a comment", "  ", "#\tx y z"]))
    return "\n".join(lines) + "\n"


def main():
    total = 0
    for f in ["cni_test1.data", "vpc-cni_docs-troubleshooting_metrics_excerpt.txt"]:
        with open(os.path.join(DATA, "ipamd", f), "rb") as fh:
            n = compare(f, fh.read())
        print(f"{f}: {n} samples identical")
        total += n
    rng = random.Random(SEED)
    batches = []
    for first in range(0, COUNT, BATCH):
        used = set()
        batches.append([gen_exposition(rng, used) for _ in range(first, min(first + BATCH, COUNT))])
    samples = 0
    data = ["".join(b).encode("utf-8") for b in batches]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for k, r in enumerate(pool.map(run_parse, data)):
            try:
                samples += compare(f"generated #{k * BATCH}..", data[k], r)
                continue
            except AssertionError as e:
                batch_error = e
            pool.shutdown(cancel_futures=True)
            for j, text in enumerate(batches[k]):
                try:
                    compare(f"generated #{k * BATCH + j}", text.encode("utf-8"))
                except AssertionError as e:
                    print(f"seed {SEED}, exposition {k * BATCH + j}:\n{text}")
                    print(e)
                    sys.exit(1)
            print(f"seed {SEED}, expositions {k * BATCH}..{k * BATCH + len(batches[k]) - 1}, "
                  f"each alike alone, differ together:\n{data[k].decode('utf-8')}")
            print(batch_error)
            sys.exit(1)
    print(f"{COUNT} generated expositions: {samples} samples identical (seed {SEED})")


main()
