#!/usr/bin/env bash
# Cost of one time-to-exhaustion estimate per estimator and window size (docs/forecast.md).
set -euo pipefail
build="${1:-build}"
"$build/test/bench_forecast"
