#!/usr/bin/env bash
# The oldest supported versions, proven on the CPU machine (README,
# "Compatibility"): a venv with torch 2.11.0 (PyPI's wheel is the CUDA 13.0
# build, several GB: not part of .ci/run) and triton 3.6.0, the extension
# built WITH CUDA (nvcc, no GPU needed), then both test processes as
# tests/run.sh runs them, one after the other. Extra arguments go to both pytest runs.
#
# The build and the tests run in a copy of this checkout's files (tracked and
# untracked-but-not-ignored, as they are on disk) under $MMCAL_COMPAT_SRC, so
# the checkout's own _C and _build_info.py (built for the main python's torch)
# stay untouched.
#
#   MMCAL_COMPAT_VENV  the venv (default /work/venv-compat), made or reused
#   MMCAL_COMPAT_SRC   the copy (default /tmp/mmcal-compat-src), made anew each run but for build/
#   MMCAL_COMPAT_TORCH / MMCAL_COMPAT_TRITON  the pair (default 2.11.0 / 3.6.0, the oldest; 2.12.0 / 3.7.0
#                      for the middle of the range, in its own venv and copy: docs/testing.md)
#   MMCAL_COMPAT_PYTHON the python that makes the venv (default python3.11, else python3)
#   CUDA_HOME          the CUDA toolkit, if the search below finds the wrong one
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${MMCAL_COMPAT_VENV:-/work/venv-compat}
SRC=${MMCAL_COMPAT_SRC:-/tmp/mmcal-compat-src}
TORCH_VERSION=${MMCAL_COMPAT_TORCH:-2.11.0}
TRITON_VERSION=${MMCAL_COMPAT_TRITON:-3.6.0}
start=$(date +%s)

# 1. The venv, made once and reused while it holds the wanted versions.
if [ ! -x "$VENV/bin/python" ]; then
  BASE=${MMCAL_COMPAT_PYTHON:-$(command -v python3.11 || command -v python3)}
  "$BASE" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" - <<EOF 2>/dev/null
import sys, torch, triton
sys.exit(not (torch.__version__.split("+")[0] == "$TORCH_VERSION" and triton.__version__ == "$TRITON_VERSION"))
EOF
then
  echo "compat: installing torch==$TORCH_VERSION triton==$TRITON_VERSION into $VENV (several GB, once)"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION"
fi
# numpy < 2.4: triton 3.6's interpreter takes int() of 1-element arrays, which
# numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python
# scalars"): every kernel loop with run-time bounds would fail (3.9 is fixed).
"$PY" -m pip install -q "setuptools>=70.1" ninja "numpy<2.4" pytest hypothesis pytest-benchmark matplotlib tqdm
"$PY" -c 'import torch, triton; print(f"compat: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")'

# 2. The CUDA toolkit: the directory holding include/cuda_runtime.h and
#    bin/nvcc. torch takes dirname(dirname(which nvcc)), wrong where the nvcc
#    on the PATH is a wrapper script outside the toolkit.
find_cuda_home() {
  local cands=() nvcc
  [ -n "${CUDA_HOME:-}" ] && cands+=("$CUDA_HOME")
  [ -n "${CUDA_PATH:-}" ] && cands+=("$CUDA_PATH")
  if nvcc=$(command -v nvcc); then
    cands+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")")
    # a wrapper script: the toolkit's nvcc is named inside it
    cands+=($(grep -aoE '/[^ "]*/bin/nvcc' "$nvcc" 2>/dev/null | sed 's|/bin/nvcc$||' || true))
  fi
  cands+=(/usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV) /opt/cuda)
  for d in "${cands[@]}"; do
    if [ -f "$d/include/cuda_runtime.h" ] && [ -x "$d/bin/nvcc" ]; then echo "$d"; return 0; fi
  done
  return 1
}
if ! CUDA_HOME=$(find_cuda_home); then
  echo "compat: no CUDA toolkit found (a directory with include/cuda_runtime.h and bin/nvcc); set CUDA_HOME" >&2
  exit 2
fi
export CUDA_HOME
echo "compat: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*'))"

# 3. A copy of the checkout's files, built in place there with CUDA. The
#    copy is made anew; its build/ (ninja's objects) is kept from the last run,
#    so only changed sources recompile (the files keep their mtimes).
rm -rf "$SRC.build"
[ -d "$SRC/build" ] && mv "$SRC/build" "$SRC.build"
rm -rf "$SRC"
mkdir -p "$SRC"
[ -d "$SRC.build" ] && mv "$SRC.build" "$SRC/build"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
  | (cd "$REPO" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) \
  | tar -C "$REPO" --null -T - -cf - | tar -C "$SRC" -xf -
cd "$SRC"
build_start=$(date +%s)
if ! MMCAL_CUDA=1 MMCAL_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=${MAX_JOBS:-2} \
     "$PY" setup.py build_ext --inplace > "$SRC/build.log" 2>&1; then
  tail -40 "$SRC/build.log"
  echo "compat: the extension build FAILED (log: $SRC/build.log)" >&2
  exit 1
fi
echo "compat: extension build (CPU + CUDA sm_80/sm_90) took $(( $(date +%s) - build_start )) s"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import sys
from mmcal_kernels.backends.cpp import load as _cpp
ok = _cpp.load_extension()
print(f"compat: _C {_cpp.STATUS['how'] or _cpp.STATUS['why_not']}; CUDA kernels: {_cpp.STATUS['cuda_kernels']}")
sys.exit(not (ok and _cpp.STATUS["how"].startswith("prebuilt") and _cpp.STATUS["cuda_kernels"]))
EOF

# 4. The two test processes of tests/run.sh (tests/pytest_runs.sh), in turn.
source "$REPO/tests/pytest_runs.sh"
status=0
run_unit "$@" 2>&1 | tee "$SRC/pytest-main.log" || status=$?
run_interpreter "$@" 2>&1 | tee "$SRC/pytest-interpret.log" || status=$?
echo
echo "compat: torch $TORCH_VERSION + triton $TRITON_VERSION, $(( $(date +%s) - start )) s in all; final lines:"
echo "  main:        $(grep -E '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s|no tests ran' "$SRC/pytest-main.log" | tail -1)"
echo "  interpreter: $(grep -E '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s|no tests ran' "$SRC/pytest-interpret.log" | tail -1)"
exit $status
