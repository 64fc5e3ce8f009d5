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
start=$(date +%s)
"$PY" -m pip install -q --no-build-isolation -e .  # builds mmcal_kernels._C (C++; CUDA where torch has it)
echo "install and extension build took $(( $(date +%s) - start )) s"

# 1. The unit suite, then the pytest-benchmark suite once through as a smoke
#    test. tests/triton skips here: it needs the interpreter on before triton
#    is imported, which this process's torch.compile tests do first.
status=0
"$PY" -m pytest tests benchmarks -m "not slow" -q -p no:cacheprovider --benchmark-disable "$@" || status=$?
# 2. The Triton kernels themselves, on CPU tensors, in Triton's interpreter.
TRITON_INTERPRET=1 "$PY" -m pytest tests/triton -m "not slow" -q -p no:cacheprovider "$@" || status=$?
exit $status
