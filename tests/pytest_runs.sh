# The suite's two pytest commands, sourced by tests/run.sh (the README's test
# command) and tests/compat.sh (the oldest supported versions), so that both
# run the same selection. Each takes extra pytest arguments; $PY is the python.
#
# 1. run_unit: the unit suite, then the pytest-benchmark suite once through as
#    a smoke test. tests/triton skips there: it needs the interpreter on before
#    triton is imported, which that process's torch.compile tests do first.
# 2. run_interpreter: the Triton kernels themselves, on CPU tensors, in
#    Triton's interpreter: Python-bound, so one thread.
run_unit() {
  "$PY" -m pytest tests benchmarks -m "not slow" -q -p no:cacheprovider --benchmark-disable "$@"
}
run_interpreter() {
  OMP_NUM_THREADS=1 TRITON_INTERPRET=1 "$PY" -m pytest tests/triton -m "not slow" -q -p no:cacheprovider "$@"
}
