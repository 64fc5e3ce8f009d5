#!/usr/bin/env bash
# On a lent GPU machine, after test_gpu.sh built _C (same machine, or run both
# in one command): the benchmark, its JSON and PNG under $OUT. Commit them to
# benchmarks/results/ with the device name the file carries.
#   bash benchmarks/gpu/test_gpu.sh && bash benchmarks/gpu/bench_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mmcal-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu/launch_counts.py --out "$OUT" 2>&1 | tee "$OUT/launch_counts.log"
python3 benchmarks/run.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log"
