#!/usr/bin/env bash
# The whole non-slow suite (the tests that throw included) against a build of
# csrc/ under AddressSanitizer and UndefinedBehaviorSanitizer:
#   bash tests/sanitizers.sh [pytest arguments; default: tests benchmarks]
#
# 1. Copies the tracked files of this checkout (with their uncommitted edits)
#    to $MMCAL_SANITIZE_DIR (default /tmp/mmcal-sanitize-src), so the checkout's
#    own build is never touched, and builds _C and the per-ISA kernel libraries
#    there with MMCAL_SANITIZE=1 (setup.py: -O1 -g
#    -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all;
#    CUDA off).
# 2. Runs `pytest tests benchmarks -m "not slow"` on that copy once per CPU
#    kernel table this CPU can run (MMCAL_CPU_CAPABILITY=default, avx2, and
#    avx512 where the CPU has it), with the sanitizer runtimes preloaded:
#    python and libtorch are not instrumented. libstdc++ is preloaded too:
#    without it ASan's __cxa_throw interceptor cannot find the real one
#    ("CHECK failed: ... real___cxa_throw") and every test that raises a C++
#    exception kills the process.
# nvcc's own tools crash (SIGSEGV) with the ASan runtime preloaded, so the
# tests that compile .cu files find an nvcc on PATH that drops LD_PRELOAD.
# MMCAL_SANITIZE_REUSE=1 keeps an instrumented copy already built in
# $MMCAL_SANITIZE_DIR (rerunning some tests without the 4-7 min build).
# Any sanitizer report ends that run with a non-zero status and is printed at
# the end (from $MMCAL_SANITIZE_DIR/sanitizer-report.*); this script then
# exits non-zero. The CUDA kernels' CPU build (tests/cuda_emu) is instrumented
# too (MMCAL_CUDA_EMU_SANITIZE=1), so the tests of test_cuda_emulated.py
# bounds-check every element the CUDA kernels touch.
# Leak detection is off (detect_leaks=0): CPython keeps
# allocations to the end of the process that LeakSanitizer reports as leaks at
# exit in every process, kernels or not (`python3 -c 'print(1)'` alone: 271
# bytes in 16 allocations), which would fail every test that starts one.
# Not part of CI: see README ("Source distribution and sanitizers") for times.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=${MMCAL_SANITIZE_DIR:-/tmp/mmcal-sanitize-src}
source tests/scratch_copy.sh
[ $# -gt 0 ] || set -- tests benchmarks
t0=$(date +%s)
if [ "${MMCAL_SANITIZE_REUSE:-0}" = 1 ] && compgen -G "$work/mmcal_kernels/_C*.so" > /dev/null; then
  echo "== reusing the instrumented build in $work (MMCAL_SANITIZE_REUSE=1)"
  cd "$work"
else
  scratch_copy "$work" MMCAL_SANITIZE_DIR
  cd "$work"
  echo "== building with MMCAL_SANITIZE=1 in $work"
  if ! MMCAL_SANITIZE=1 MMCAL_CUDA=0 "$PY" setup.py build_ext --inplace > build.log 2>&1; then
    tail -30 build.log; exit 1
  fi
  echo "   build took $(( $(date +%s) - t0 )) s"
fi
real_nvcc=$(command -v nvcc || true)
[ -n "$real_nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && real_nvcc=/usr/local/cuda/bin/nvcc; } || true
if [ -n "$real_nvcc" ]; then
  mkdir -p "$work/.sanitize-bin"
  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %s "$@"\n' "$real_nvcc" > "$work/.sanitize-bin/nvcc"
  chmod +x "$work/.sanitize-bin/nvcc"
  export PATH="$work/.sanitize-bin:$PATH"
fi

preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so) $(gcc -print-file-name=libstdc++.so.6)"
for lib in $preload; do [ -f "$lib" ] || { echo "missing sanitizer runtime $lib (install gcc's libasan/libubsan)" >&2; exit 1; }; done
export LD_PRELOAD="$preload"
# Reports go to files: pytest captures stderr, and a process the sanitizer
# aborts takes its captured output with it.
reports=$work/sanitizer-report
rm -f "$reports".*
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:print_summary=1:log_path=$reports
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:print_summary=1:log_path=$reports
export PYTHONPATH=$work MMCAL_NO_JIT=1  # the instrumented _C or nothing: never a JIT build of another copy
# The CUDA kernels as the CPU runs them (tests/backends/test_cuda_emulated.py)
# are built instrumented as well: a memcheck of the CUDA kernels with no GPU.
export MMCAL_CUDA_EMU_SANITIZE=1

caps="default avx2"
grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && caps="$caps avx512"
status=0
for cap in $caps; do
  echo "== MMCAL_CPU_CAPABILITY=$cap"
  # The run must use the instrumented build of this copy, with the table asked for.
  MMCAL_CPU_CAPABILITY=$cap "$PY" -c "
import mmcal_kernels, mmcal_kernels.backends.cpp.load as c
assert mmcal_kernels.__file__.startswith('$work/'), mmcal_kernels.__file__
assert c.STATUS['how'] == 'prebuilt mmcal_kernels._C', c.STATUS
assert c.STATUS['cpu_capability'].lower() == '$cap', c.STATUS
print('   loaded', c.STATUS['how'], 'from', mmcal_kernels.__file__.rsplit('/', 2)[0], '; kernel table', c.STATUS['cpu_capability'])
"
  s=$(date +%s)
  MMCAL_CPU_CAPABILITY=$cap "$PY" -m pytest -m "not slow" -q -p no:cacheprovider -rfE \
    --benchmark-disable "$@" || status=$?
  echo "   MMCAL_CPU_CAPABILITY=$cap took $(( $(date +%s) - s )) s (exit status so far: $status)"
done
# A report is an ASan ERROR or a UBSan runtime error. ASan also writes, once a
# process, that it "doesn't fully support makecontext/swapcontext" (the CUDA
# emulator's fibers); that warning alone is no report.
found=$(grep -l -E "ERROR: |runtime error" "$reports".* 2> /dev/null || true)
if [ -n "$found" ]; then
  echo "== sanitizer reports:"; cat $found; status=1
fi
echo "== sanitizers: total $(( $(date +%s) - t0 )) s, exit status $status"
exit $status
