#!/usr/bin/env bash
# Can the emulated CUDA tests see a missing barrier? Deletes each
# `__syncthreads();` of the given .cu files in turn (default: every file of
# csrc/cuda that has one), in a scratch copy of the checkout, and runs
# tests/backends/test_cuda_emulated.py there (stopping at its first failure).
# Every deletion must fail a test: a deletion no test notices is either a
# barrier the kernel does not need or a gap in the tests, and it is listed.
#
#   bash tests/cuda_emu/barrier_sweep.sh [csrc/cuda/FILE.cu ...]
#
# Needs the checkout's own build of _C (the emulated ops take its schemas);
# the copy goes to $MMCAL_SWEEP_DIR (default /tmp/mmcal-barrier-sweep), so the
# checkout is never edited. A first run with every barrier in place must
# pass. About 15-30 s a barrier on 2 cores. Exit status: the number of
# deletions no test noticed (255 if the first run fails).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$(pwd)
PY=${PYTHON:-python3}
work=${MMCAL_SWEEP_DIR:-/tmp/mmcal-barrier-sweep}
[ $# -gt 0 ] || set -- $(grep -l "__syncthreads();" csrc/cuda/*.cu)
source tests/scratch_copy.sh
scratch_copy "$work" MMCAL_SWEEP_DIR keep-build  # build/: the emulated host objects, reused

# The tests must pass on the copy as it is, or a failure below would prove nothing.
run_tests() {
  PYTHONPATH="$src" "$PY" -m pytest "$work/tests/backends/test_cuda_emulated.py" -m "not slow" -x -q \
    -p no:cacheprovider > "$1" 2>&1
}
if ! run_tests "$work/sweep-baseline.log"; then
  echo "the emulated tests fail with every barrier in place: see $work/sweep-baseline.log" >&2; exit 255
fi

missed=0
for file in "$@"; do
  count=$(grep -o "__syncthreads();" "$work/$file" | wc -l)
  cp "$work/$file" "$work/$file.orig"
  for ((i = 0; i < count; ++i)); do
    line=$("$PY" - "$work/$file" "$i" <<'EOF'
import sys
path, nth = sys.argv[1], int(sys.argv[2])
text = open(path).read()
at = -1
for _ in range(nth + 1):
    at = text.index("__syncthreads();", at + 1)
open(path, "w").write(text[:at] + text[at + len("__syncthreads();"):])
print(text.count("\n", 0, at) + 1)
EOF
)
    log="$work/sweep-$(basename "$file")-$i.log"
    if run_tests "$log"; then
      echo "NOT NOTICED: $file:$line (barrier $i): every test passed without it"
      missed=$((missed + 1))
    else
      echo "noticed:     $file:$line (barrier $i): $(grep -m1 -E '^FAILED|^ERROR' "$log" || tail -n 1 "$log")"
    fi
    cp "$work/$file.orig" "$work/$file"
  done
done
echo "barrier sweep: $missed deletion(s) no test noticed"
exit "$missed"
