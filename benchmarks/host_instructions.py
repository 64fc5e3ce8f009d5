"""The eager module's host cost as instructions a call, counted by valgrind's
callgrind at host_overhead.py's tiny sizes (B = 2, 2-4 channels, d = 4), where
the ops compute almost nothing: what Python, the checks, the ops' host side
and autograd execute. On a shared machine the wall clock of the same step
moves by 1.5-2x from one minute to the next; an instruction count moves by
0.4% (forward+backward) to 5% (the no_grad forward) from run to run, so two
versions of the code can be compared run against run.

    python benchmarks/host_instructions.py [--backend cpu] [--calls 200]

Each kind of call runs in its own process under callgrind twice, with 10 and
with 10 + calls calls; the difference over calls is one call's instructions,
the import and set-up cancelled. Two processes run at once. Kinds: the
training step (forward, then ``torch.autograd.grad`` of every feature and
parameter, as the benchmark's step) and the forward under ``no_grad``. One
thread. Needs ``valgrind`` on the PATH; about 5 minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

KINDS = ("forward+backward", "forward, no_grad")
BASE_CALLS = 10


def run_calls(kind: str, backend: str, calls: int) -> None:
    """The worker: ``calls`` calls of ``kind`` and nothing else."""
    import torch

    from host_overhead import tiny_module_and_inputs

    torch.set_num_threads(1)
    module, xs = tiny_module_and_inputs(backend, torch.device("cpu"))
    leaves = [*xs, *module.parameters()]
    for _ in range(calls):
        if kind == "forward+backward":
            outputs = module(xs)
            torch.autograd.grad(outputs, leaves, [torch.ones_like(o) for o in outputs])
        else:
            with torch.no_grad():
                module(xs)


def counted(kind: str, backend: str, calls: int) -> int:
    """Instructions of a worker process making ``calls`` calls, as callgrind totals them."""
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable, __file__,
                   "--worker", kind, "--backend", backend, "--calls", str(calls)]  # fmt: skip
        # A fixed hash seed removes one source of spread (set and dict orders). Some remains: two runs of one
        # version counted forward+backward 0.4% apart, the no_grad forward up to 5% (docs/kernels.md).
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not found:
        raise SystemExit(f"callgrind run of {kind!r} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--calls", type=int, default=200, help="calls counted beyond the base run's")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_calls(args.worker, args.backend, args.calls)
    if shutil.which("valgrind") is None:
        raise SystemExit("host_instructions.py needs valgrind on the PATH (apt-get install valgrind)")
    runs = [(kind, n) for kind in KINDS for n in (BASE_CALLS, BASE_CALLS + args.calls)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        totals = dict(zip(runs, pool.map(lambda run: counted(run[0], args.backend, run[1]), runs)))
    import torch

    counted_as = f"({BASE_CALLS} + {args.calls} calls - {BASE_CALLS}) / {args.calls}"
    print(f"{platform.machine()}, torch {torch.__version__}, Python {platform.python_version()}; backend "
          f"{args.backend!r}, one thread; callgrind, {counted_as}")
    for kind in KINDS:
        per_call = (totals[kind, BASE_CALLS + args.calls] - totals[kind, BASE_CALLS]) / args.calls
        print(f"  {kind:18s} {per_call / 1e6:7.3f} M instructions a call")


if __name__ == "__main__":
    main()
