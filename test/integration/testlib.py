"""What every Python integration test shares: named checks, and the closing line CI reads
("N passed, N failed") with the exit status."""
import sys

failures = []
_passed = [0]


def check(name, cond, detail=""):
    """Records one check; returns cond so a test can stop early on a failed precondition."""
    if cond:
        _passed[0] += 1
    else:
        failures.append(f"{name}: {detail}")
    return cond


def finish():
    for f in failures:
        print("FAIL", f)
    print(f"{_passed[0]} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)
