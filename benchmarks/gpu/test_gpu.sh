#!/usr/bin/env bash
# On a lent GPU machine (torch 2.11, triton 3.6, Python 3.12, no network), in
# one command: build _C with CUDA against that machine's torch, run the whole
# suite (the GPU tests included), write logs under $OUT.
#   bash benchmarks/gpu/test_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mmcal-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} MMCAL_CUDA=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])' | tee -a "$OUT/device.txt"
start=$(date +%s)
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tee "$OUT/build.log"
echo "build took $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
python3 -m mmcal_kernels.info 2>&1 | tee "$OUT/info.log"
# The whole suite on the GPU: the CUDA extension's tests, and tests/triton on
# CUDA tensors (full opcheck, torch.compile, generated code). The interpreter
# run of tests/triton is CI's (it would not fit this command's 600 s).
python3 -m pytest tests -m "not slow" -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
exit "${PIPESTATUS[0]}"
