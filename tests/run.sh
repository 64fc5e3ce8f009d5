#!/usr/bin/env bash
# The test command (README): installs what a fresh machine lacks, then runs the
# suite. Extra arguments go to pytest, e.g. `bash tests/run.sh -k dtype`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch 2.13.0's CPU build lies on this kind of machine's disk; any other
# version would pull several GB. Install it only if it is not already there.
if ! "$PY" -c 'import torch, sys; sys.exit(not torch.__version__.startswith(("2.11", "2.12", "2.13")))' 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
# ninja: torch.utils.cpp_extension.load needs it for the CPU build of the CUDA kernels (tests/cuda_emu).
"$PY" -m pip install -q "setuptools>=70.1" ninja pytest hypothesis pytest-benchmark matplotlib tqdm
# Triton (3.6-3.9 supported): keep one that is there (a GPU machine's), else install it.
if ! "$PY" -c 'import triton' 2>/dev/null; then
  "$PY" -m pip install -q "triton>=3.6,<3.10"
fi
# The real-data experiment's tests (python/avdigits): espeak-ng and the "demo"
# extra; they skip, saying why, where these cannot be installed.
PYTHON="$PY" bash tests/install_demo_deps.sh
# Lint first (pyproject.toml's [tool.ruff.lint]: pyflakes and pycodestyle's
# errors), pinned, so a new ruff's rules cannot fail a run that passed: under
# a second, and an undefined name fails here, not 15 minutes into the suite.
"$PY" -m pip install -q "ruff==0.17.6"
"$PY" -m ruff check --no-cache .
start=$(date +%s)
"$PY" -m pip install -q --no-build-isolation -e .  # builds mmcal_kernels._C (C++; CUDA where torch has it)
echo "install and extension build took $(( $(date +%s) - start )) s"

# The two pytest processes of tests/pytest_runs.sh, side by side (one after
# the other took 20 minutes on a slower 2-core machine of this kind;
# MMCAL_TESTS_IN_TURN=1 runs them in turn); the interpreter's output is printed
# when both have ended.
source tests/pytest_runs.sh
status=0
interp_log=$(mktemp)
if [[ "${MMCAL_TESTS_IN_TURN:-0}" == 1 ]]; then
  run_unit "$@" || status=$?
  run_interpreter "$@" || status=$?
else
  run_interpreter "$@" >"$interp_log" 2>&1 &
  interp_pid=$!
  run_unit "$@" || status=$?
  wait "$interp_pid" || status=$?
  echo "--- the Triton interpreter's pytest (ran beside the unit suite) ---"
  cat "$interp_log"
fi
rm -f "$interp_log"
exit $status
