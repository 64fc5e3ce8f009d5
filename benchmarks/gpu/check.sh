#!/usr/bin/env bash
# The one command for a lent GPU machine (no network; torch with CUDA, triton,
# nvcc there), from the repository root or anywhere:
#
#   bash benchmarks/gpu/check.sh               # on the GPU, under 480 s on 16 cores
#   bash benchmarks/gpu/check.sh --dry-run     # on a CPU machine: every stage, GPU parts skipped
#                                              # (or MMCAL_GPU_DRY_RUN=1)
#   MMCAL_GPU_PLAN=benchmarks/gpu/next-run.env bash benchmarks/gpu/check.sh
#                                              # a follow-up run: the plan file (bash) sets which
#                                              # tests, workloads and contenders, and the limits
#
# Stages, each with a hard time limit, each writing under $OUT as it goes:
#   1. env      nvidia-smi, versions                                   -> check.log
#   2. build    find CUDA_HOME, build _C in place for THIS GPU's arch  -> build.log
#               stops here (exit 1, log tail shown) if the build fails or _C has no CUDA kernels
#   3. tests    the CUDA gate-network kernels (own process)             -> tests.log
#               the CUDA backend, the .cu compile checks, tests/triton on the GPU (full opcheck,
#               torch.compile), per-test timeout                        -> tests.log (appended), tests.xml
#               (both processes' junit), failures.log (each failure as it happens)
#               whatever they report, the benchmark runs
#   3b. blocks  the gate ops and one module step on MOSEI-aligned with each of the gate
#               kernels' block sizes (cuda: 16 and 8 warps; triton: samples a program
#               x the contractions' slice), for each of BLOCK_BACKENDS (at each of
#               BLOCK_BATCHES): wall time, kernels, their GPU time
#               (benchmarks/gpu/gate_blocks.py)                         -> gate-blocks.json
#   3c. host    the eager step's host time at tiny sizes, beside each op alone
#               (and, with HOST_PROFILE_WORKLOAD, the step there under torch.profiler)
#               (benchmarks/host_overhead.py), for each of HOST_BACKENDS -> check.log
#   4. bench    mosei-aligned (issue 12's target) first, then stress and the other real
#               workloads, fp32 and bf16-mixed, forward and fwd+bwd; eager
#               reference/cuda/triton first, then the compiled reference and kernel
#               backends, each also under reduce-overhead (CUDA graphs: a row fails if
#               Inductor skips them), each its own watched compile;
#               CUDA launches of each row's forward and backward (torch.profiler);
#               JSON rewritten after every row                          -> <gpu>-filtered.json/.png
#   5. summary  tests and rows at a glance, per-stage times            -> check.log
# At most 8 files under $OUT, the most a lent machine sends back: check.log build.log tests.log
# tests.xml failures.log gate-blocks.json <gpu>-filtered.json/.png
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/mmcal-gpu-out}
mkdir -p "$OUT"
DRY=${MMCAL_GPU_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
# Defaults: the full run. A plan file may set any of these (and the limits below).
GATE_TESTS=(tests/backends/test_cuda_gate_network.py)
GATE_ARGS=()  # more pytest arguments for that first process, e.g. (-k "name or name")
TESTS=(tests/triton/test_triton_gate_network.py tests/triton/test_triton_op_counts.py tests/backends/test_cuda.py
       tests/backends/test_cuda_random_steps.py
       tests/backends/test_cpp_input_grads.py tests/triton tests/backends/test_cuda_compile.py)
WORKLOADS=(mosei-aligned stress-256MiB cremad-resnet18 ave-resnet18 mosei-unaligned mosi-unaligned)
DTYPES=(float32 bf16-mixed)
BACKENDS=()  # empty: every contender
HOST_BACKENDS=(cuda)  # whose eager step and ops the host stage times
BLOCK_BACKENDS=(cuda)  # whose gate-kernel block sizes the blocks stage compares
BLOCK_SETTINGS=()  # the settings it compares (empty: each backend's list in gate_blocks.py)
BLOCK_BATCHES=()  # the batch sizes it times them at (empty: the workload's)
HOST_PROFILE_WORKLOAD=""  # a workload: also profile each one's training step there (profile_step.py --top)
if [[ -n "${MMCAL_GPU_PLAN:-}" ]]; then
  # shellcheck source=/dev/null
  source "$MMCAL_GPU_PLAN" || { echo "FATAL: cannot read the plan $MMCAL_GPU_PLAN"; exit 1; }
fi
TOTAL=${MMCAL_GPU_TOTAL_S:-470}     # the whole script; the benchmark gets what is left
BUILD_S=${MMCAL_GPU_BUILD_S:-170}
TESTS_S=${MMCAL_GPU_TESTS_S:-150}
TEST_TIMEOUT_S=${MMCAL_GPU_TEST_TIMEOUT_S:-45}
BLOCKS_S=${MMCAL_GPU_BLOCKS_S:-45}  # 0: skip the stage
HOST_S=${MMCAL_GPU_HOST_S:-40}     # 0: skip the stage
SUMMARY_RESERVE_S=25
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MAX_JOBS=${MAX_JOBS:-16}
exec > >(tee -a "$OUT/check.log") 2>&1
T0=$(date +%s)
declare -A STAGE_S
now() { echo $(( $(date +%s) - T0 )); }
stage() { STAGE_NAME=$1; STAGE_T=$(date +%s); echo; echo "=== [$(now) s] $1 (limit $2 s)"; }
done_stage() { STAGE_S[$STAGE_NAME]=$(( $(date +%s) - STAGE_T )); echo "=== $STAGE_NAME took ${STAGE_S[$STAGE_NAME]} s"; }
echo "mmcal_kernels GPU check, $(date -u +%FT%TZ), dry run: $DRY, OUT=$OUT, plan: ${MMCAL_GPU_PLAN:-the full run}"

# ---- 1. env -----------------------------------------------------------------
stage env 20
git log --oneline -1 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: none"
timeout 20 "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
EOF
done_stage

# ---- 2. build -----------------------------------------------------------------
stage build "$BUILD_S"
find_cuda_home() {  # the directory with include/cuda_runtime.h (torch's guess fails with an nvcc wrapper)
  local nvcc cands=()
  [[ -n "${CUDA_HOME:-}" ]] && cands+=("$CUDA_HOME")
  cands+=(/usr/local/cuda)
  nvcc=$(command -v nvcc 2>/dev/null) && cands+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")")
  cands+=("$(timeout 30 "$PY" -c 'import torch.utils.cpp_extension as c; print(c.CUDA_HOME or "")' 2>/dev/null)")
  cands+=(/usr/local/cuda-*)
  for c in "${cands[@]}"; do
    if [[ -n "$c" && -f "$c/include/cuda_runtime.h" ]]; then echo "$c"; return 0; fi
  done
  return 1
}
if [[ $DRY == 1 ]]; then
  echo "dry run: building the CPU kernels only (no GPU: no arch, no CUDA kernels to check)"
  CUDA_HOME_FOUND=$(find_cuda_home) && echo "CUDA_HOME would be $CUDA_HOME_FOUND" || echo "no CUDA toolkit here"
  BUILD_ENV=(MMCAL_CUDA=0)
else
  if ! CUDA_HOME_FOUND=$(find_cuda_home); then
    echo "FATAL: no CUDA toolkit (include/cuda_runtime.h) in \$CUDA_HOME, /usr/local/cuda, nvcc's prefix or torch's CUDA_HOME"
    exit 1
  fi
  ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  echo "CUDA_HOME=$CUDA_HOME_FOUND, arch $ARCH"
  export CUDA_HOME=$CUDA_HOME_FOUND PATH="$CUDA_HOME_FOUND/bin:$PATH"
  BUILD_ENV=(MMCAL_CUDA=1 "MMCAL_CUDA_ARCH_LIST=$ARCH")
fi
if ! env "${BUILD_ENV[@]}" timeout -k 10 "$BUILD_S" "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  echo "FATAL: the build failed (or ran past $BUILD_S s); the end of $OUT/build.log:"
  tail -n 40 "$OUT/build.log"
  exit 1
fi
tail -n 3 "$OUT/build.log"
if ! timeout 60 "$PY" - "$DRY" <<'EOF'
import sys, torch, mmcal_kernels
from mmcal_kernels import backends
from mmcal_kernels.backends.cpp import load as _cpp
backends.available()
st = _cpp.STATUS
print("extension:", st["how"] or st["why_not"], "| CPU kernels", st["cpu_capability"], "| CUDA kernels", st["cuda_kernels"])
if not st["loaded"] or "prebuilt" not in st["how"]:
    sys.exit("FATAL: the prebuilt _C did not load (a JIT build would measure another build)")
cuda = torch._C._dispatch_has_kernel_for_dispatch_key("mmcal::summaries", "CUDA")
if sys.argv[1] != "1" and not cuda:
    sys.exit("FATAL: _C has no CUDA kernels (mmcal::summaries has no CUDA dispatch key)")
EOF
then
  tail -n 40 "$OUT/build.log"
  exit 1
fi
done_stage

# ---- 3. tests (never stop the run) --------------------------------------------
stage tests "$TESTS_S"
TIMEOUT_ARGS=()
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  TIMEOUT_ARGS=(--timeout "$TEST_TIMEOUT_S")
else
  echo "pytest-timeout missing: only the stage's $TESTS_S s limit applies"
fi
# Two processes: the CUDA gate-network kernels first, alone (new kernels: a
# bad access would poison the CUDA context of every test after it), then the
# rest, most telling first; the .cu spill checks (nvcc only, no GPU) last.
# SIGINT at a limit: pytest stops as on Ctrl-C and still writes the junit XML of what ran.
# Each failure also goes to failures.log as it happens (tests/conftest.py):
# a pytest cut at its limit may leave neither its summary nor its XML.
export MMCAL_FAILURE_LOG="$OUT/failures.log"
GATE_TESTS_S=${MMCAL_GPU_GATE_TESTS_S:-$(( TESTS_S / 3 ))}  # the first process's part of the stage
(( GATE_TESTS_S < TESTS_S )) || GATE_TESTS_S=$(( TESTS_S - 30 ))
(( GATE_TESTS_S > 0 )) || GATE_TESTS_S=1  # timeout 0 would mean no limit
JUNIT=$(mktemp -d)  # the two processes' XML, merged into $OUT/tests.xml at the stage's end
echo "pytest ${GATE_TESTS[*]} ${GATE_ARGS[*]} (limit $GATE_TESTS_S s)"
timeout -s INT -k 15 "$GATE_TESTS_S" "$PY" -m pytest "${GATE_TESTS[@]}" "${GATE_ARGS[@]}" -m "not slow" -q -rfEs \
  -p no:cacheprovider "${TIMEOUT_ARGS[@]}" --junitxml="$JUNIT/gates.xml" >"$OUT/tests.log" 2>&1
GATE_RC=$?
echo "exit status $GATE_RC"; tail -n 8 "$OUT/tests.log"
REST_S=$(( TESTS_S - $(date +%s) + STAGE_T ))
(( REST_S < 30 )) && REST_S=30
echo "pytest ${TESTS[*]} (limit $REST_S s)"
timeout -s INT -k 15 "$REST_S" "$PY" -m pytest "${TESTS[@]}" -m "not slow" -q -rfEs -p no:cacheprovider \
  "${TIMEOUT_ARGS[@]}" --junitxml="$JUNIT/rest.xml" >>"$OUT/tests.log" 2>&1
TESTS_RC=$?
tail -n 15 "$OUT/tests.log"
[[ $TESTS_RC == 124 || $TESTS_RC == 137 || $TESTS_RC == 2 ]] && echo "tests: interrupted or cut at the stage limit ($TESTS_S s)"
echo "tests exit status $TESTS_RC (the benchmark runs regardless)"
# A process that wrote no XML (it crashed, or was killed past -k) becomes an
# error in tests.xml, so the summary never reads a crash as a pass.
timeout 20 "$PY" - "$JUNIT" "$OUT/tests.xml" "gates=$GATE_RC" "rest=$TESTS_RC" <<'EOF'
import os, sys
import xml.etree.ElementTree as ET
merged = ET.Element("testsuites")
for arg in sys.argv[3:]:
    name, status = arg.split("=")
    try:
        root = ET.parse(os.path.join(sys.argv[1], name + ".xml")).getroot()
        merged.extend([root] if root.tag == "testsuite" else list(root))
        continue
    except (OSError, ET.ParseError) as e:
        why = f"pytest process '{name}' left no readable junit XML (exit status {status}: crashed or killed?): {e}"
    print(why)
    suite = ET.SubElement(merged, "testsuite", name=name, tests="1", errors="1", failures="0", skipped="0")
    case = ET.SubElement(suite, "testcase", classname="check.sh", name=f"{name} process")
    ET.SubElement(case, "error", message=why)
ET.ElementTree(merged).write(sys.argv[2])
EOF
rm -rf "$JUNIT"
done_stage

# ---- 3b. the gate kernels' time and block sizes ---------------------------------
stage blocks "$BLOCKS_S"
if (( BLOCKS_S > 0 )); then
  if [[ $DRY == 1 ]]; then  # no GPU: the script's smoke run (Triton's interpreter, tiny sizes)
    BLOCK_ARGS=(--backends triton --smoke --settings 16x16 4x16)
    (( ${#BLOCK_BATCHES[@]} > 0 )) && BLOCK_ARGS+=(--batches 2 3)  # tiny, as the interpreter needs
    BLOCK_ENV=(TRITON_INTERPRET=1)
  else
    BLOCK_ARGS=(--backends "${BLOCK_BACKENDS[@]}")
    (( ${#BLOCK_SETTINGS[@]} > 0 )) && BLOCK_ARGS+=(--settings "${BLOCK_SETTINGS[@]}")
    (( ${#BLOCK_BATCHES[@]} > 0 )) && BLOCK_ARGS+=(--batches "${BLOCK_BATCHES[@]}")
    BLOCK_ENV=()
  fi
  env "${BLOCK_ENV[@]}" timeout -k 10 "$BLOCKS_S" "$PY" benchmarks/gpu/gate_blocks.py "${BLOCK_ARGS[@]}" --out "$OUT"
  echo "gate_blocks ${BLOCK_ARGS[*]} exit status $?"
fi
done_stage

# ---- 3c. the eager step's host time ------------------------------------------
stage host "$HOST_S"
if (( HOST_S > 0 )); then
  # Each backend its share of the stage (a cold Triton backend compiles its
  # tiny-size kernels inside its share).
  (( ${#HOST_BACKENDS[@]} > 0 )) || HOST_BACKENDS=(cuda)
  [[ $DRY == 1 ]] && HOST_BACKENDS=(cpu)  # no GPU: the CPU backend once
  # With a profile, host_overhead keeps two thirds of a backend's share: it
  # prints its rows only at its end (run 8: about 40 s for triton, 20 for cuda).
  HOST_SHARE=$(( HOST_S / ${#HOST_BACKENDS[@]} ))
  PROFILE_SHARE=0
  [[ -n "$HOST_PROFILE_WORKLOAD" ]] && PROFILE_SHARE=$(( HOST_SHARE / 3 )) && HOST_SHARE=$(( HOST_SHARE - PROFILE_SHARE ))
  (( HOST_SHARE < 1 )) && HOST_SHARE=1  # timeout 0 would mean no limit
  (( PROFILE_SHARE < 1 )) && PROFILE_SHARE=1
  for HOST_BACKEND in "${HOST_BACKENDS[@]}"; do
    if [[ $DRY == 1 ]]; then
      HOST_ARGS=(--device cpu --backend cpu --calls 30 --repeats 2)
    else
      HOST_ARGS=(--device cuda --backend "$HOST_BACKEND")
    fi
    timeout -k 10 "$HOST_SHARE" "$PY" benchmarks/host_overhead.py "${HOST_ARGS[@]}" 2>&1
    echo "host_overhead ${HOST_ARGS[*]} exit status $?"
    [[ -n "$HOST_PROFILE_WORKLOAD" ]] || continue
    # The step at a real size: where its host time goes, launches and waits by name.
    if [[ $DRY == 1 ]]; then
      PROFILE_ARGS=(--device cpu --backend cpu --steps 2 --top 5)
    else
      PROFILE_ARGS=(--device cuda --backend "$HOST_BACKEND" --steps 20 --top 15)
    fi
    timeout -k 10 "$PROFILE_SHARE" "$PY" benchmarks/profile_step.py --workload "$HOST_PROFILE_WORKLOAD" \
      "${PROFILE_ARGS[@]}" 2>&1 | grep -v '^USDT:'
    echo "profile_step ${PROFILE_ARGS[*]} exit status ${PIPESTATUS[0]}"
  done
fi
done_stage

# ---- 4. bench -----------------------------------------------------------------
BENCH_S=$(( TOTAL - $(now) - SUMMARY_RESERVE_S ))
(( BENCH_S < 60 )) && BENCH_S=60
stage bench "$BENCH_S"
if [[ $DRY == 1 ]]; then
  BENCH_ARGS=(--device cpu --quick --allocator-rerun never)
else
  BENCH_ARGS=(--device cuda)
fi
(( ${#BACKENDS[@]} > 0 )) && BENCH_ARGS+=(--backends "${BACKENDS[@]}")
timeout -k 15 "$BENCH_S" "$PY" benchmarks/run.py "${BENCH_ARGS[@]}" --workloads "${WORKLOADS[@]}" \
  --dtypes "${DTYPES[@]}" --passes forward fwd+bwd --keep-going --time-budget $(( BENCH_S - 45 )) --out "$OUT"
BENCH_RC=$?
echo "benchmark exit status $BENCH_RC"
done_stage

# ---- 5. summary -----------------------------------------------------------------
stage summary "$SUMMARY_RESERVE_S"
timeout 20 "$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
try:
    root = ET.parse(os.path.join(out, "tests.xml")).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    print(f"tests: {n['tests']} run, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped")
    for s in suites:
        for case in s.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                print(f"  FAILED {case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:150]}")
except (OSError, ET.ParseError) as e:
    print("tests: no junit XML (cut before pytest wrote it?):", e)
paths = sorted(p for p in glob.glob(os.path.join(out, "*.json")) if not p.endswith("gate-blocks.json"))
if not paths:
    sys.exit("bench: no JSON")
data = json.load(open(paths[0]))
meta, rows = data["meta"], data["records"]
ok = [r for r in rows if r.get("median_ms")]
print(f"bench: {len(ok)} rows timed, {len(rows) - len(ok)} failed, {meta.get('skipped_rows', 0)} skipped (budget); "
      f"complete {meta.get('complete')}; {meta.get('device')}; {paths[0]}")
for e in meta.get("errors", [])[:8]:
    print("  FAILED", e[:200])
from mmcal_kernels.bench import report
report.add_speedups(ok)  # a cut run's JSON has its rows, not yet their speedups
png = paths[0][:-5] + ".png"
if not os.path.exists(png) and ok:  # the run was killed before its end: draw what the JSON holds
    report.write_png(png, ok, f"{meta.get('device')}: CUT run, {len(ok)} rows")
print(f"{'workload':16s} {'dtype':10s} {'backend':26s} {'pass':8s} {'ms':>9s} {'x compile':>9s} {'launches fwd/bwd':>16s} {'kernel us fwd/bwd':>18s}")
for r in ok:
    if r["workload"] not in ("mosei-aligned", "stress-256MiB"):
        continue
    la = r.get("launches") or {}
    launches = "/".join(str(v.get("kernels")) for k, v in la.items() if isinstance(v, dict)) or "-"
    busy = "/".join(str(v.get("kernel_us", "?")) for k, v in la.items() if isinstance(v, dict)) or "-"
    x = r.get("speedup_vs_compile")
    print(f"{r['workload']:16s} {r['dtype']:10s} {r['backend']:26s} {r['pass']:8s} {r['median_ms']:9.3f} "
          f"{(f'{x:.2f}' if x else '-'):>9s} {launches:>16s} {busy:>18s}")
EOF
done_stage
echo
echo "=== stage times (s): $(for k in env build tests blocks host bench summary; do printf '%s %s  ' "$k" "${STAGE_S[$k]:-?}"; done)total $(now)"
echo "files under $OUT:"; ls -la "$OUT"
sleep 1  # let tee finish check.log
exit 0
