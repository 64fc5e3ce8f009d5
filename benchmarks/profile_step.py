"""Where an eager training step of a kernel backend spends its time, split by
``torch.profiler``: the passes over X, the gate network (and the BLAS inside
it), allocation, and the rest (Python, argument checks, autograd). The
README's profile split is this script's output.

    python benchmarks/profile_step.py [--workload mosei-aligned] [--backend cpu] [--steps 50] [--out FILE]
    python benchmarks/profile_step.py --device cuda --backend triton --top 15   # a GPU's host side

The profiler adds its own cost to every op, so the step reads slower here
than in the benchmark; read the split, not the total. Its own allocations
can also move the heap under the step's large outputs, which then land on
fresh pages: the op that first writes them (mostly ``input_grads``, the
``dX`` pass) pays the page faults, and the split charges them to the passes.
So the same steps run once more without the profiler, just before, and the
report gives both walls and the page faults a step of each (CPU,
``getrusage``): where the profiled window faults and the plain one does
not, its pass time is inflated by them. On a GPU the split is
the host's time (the ops' CPU time, launches included) and the wall time
ends after a synchronisation; ``--top`` lists the events that took the most
host time of their own, where a launch, a wait or a copy shows by name
(``cudaLaunchKernel``, ``cuLaunchKernel``, ``cudaStreamSynchronize``).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mmcal_kernels.bench.contenders import contenders, input_sets, make_module, pass_callables
from mmcal_kernels.bench.timing import input_set_count
from mmcal_kernels.bench.workloads import WORKLOADS
from mmcal_kernels.info import cpu_name

PASSES = ("summaries", "modulate", "gate_grads", "input_grads")
GATES = ("gates", "gates_backward")
BLAS = ("aten::mm", "aten::addmm")
ALLOCATION = ("aten::empty", "aten::empty_strided")
# The harness's backward is torch.autograd.grad; named, its own time (outside
# every node and op) is the engine's: graph setup, accumulation, release. On
# CPU only: with CUDA inputs the engine runs the nodes on the device's worker
# thread, and the profiler counts self time per thread, so the named call's
# own time would hold the whole backward that the calling thread waits for.
ENGINE = "torch.autograd.grad (named by profile_step)"


def name_the_engine_call() -> None:
    """Wrap ``torch.autograd.grad`` in a ``record_function`` for this process
    (a diagnostic script: the benchmark itself must not dispatch the extra op)."""
    grad = torch.autograd.grad

    def named(*args, **kwargs):
        with record_function(ENGINE):
            return grad(*args, **kwargs)

    torch.autograd.grad = named


def split_us(averages, steps: int, wall_us: float, prefix: str = "") -> dict[str, float]:
    """Microseconds a step in each part. Custom ops count with their children
    (the CPU time inside them), allocation by its own time, wherever it runs;
    the engine's own time where the call was named (CPU only).
    ``prefix``: the backend's op names after ``mmcal::`` (``triton_`` for Triton)."""
    total = {a.key: a.cpu_time_total for a in averages}
    own = {a.key: a.self_cpu_time_total for a in averages}
    passes = sum(total.get(f"mmcal::{prefix}{k}", 0.0) for k in PASSES) / steps
    gates = sum(total.get(f"mmcal::{prefix}{k}", 0.0) for k in GATES) / steps
    return {
        "step (wall, profiled)": wall_us,
        "passes over X (4 ops)": passes,
        "gate network (2 ops)": gates,
        "  of which BLAS products": sum(total.get(k, 0.0) for k in BLAS) / steps,
        "allocation (anywhere)": sum(own.get(k, 0.0) for k in ALLOCATION) / steps,
        "the rest: Python, checks, autograd": wall_us - passes - gates,
        **({"  of which the autograd engine's own": own[ENGINE] / steps} if ENGINE in own else {}),
    }


def minor_faults() -> int:
    """Page faults of this process so far that the kernel served without I/O
    (a first touch of a fresh page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def top_rows(averages, steps: int, count: int) -> list[str]:
    """The ``count`` events with the most host time of their own, per step."""
    ranked = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:count]
    return [f"  {a.key[:60]:60s} {a.self_cpu_time_total / steps:9.1f} us self, {a.count / steps:5.1f} calls a step"
            for a in ranked]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="mosei-aligned", choices=sorted(WORKLOADS))
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the inputs' and the module's device")
    parser.add_argument("--top", type=int, default=0, help="also list this many events by their own host time")
    parser.add_argument("--steps", type=int, default=50, help="profiled steps (after as many warm-up steps)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    w = WORKLOADS[args.workload]
    (contender,) = [c for c in contenders(device, compile_reference=False) if c.label == args.backend]
    module = make_module(w, device, args.backend)
    sets = input_sets(w, torch.float32, device, count=input_set_count(device, w.feature_bytes(torch.float32)))
    fwd_bwd = pass_callables(w, contender, module)["fwd+bwd"]
    if device.type == "cpu":
        name_the_engine_call()

    def timed_steps() -> tuple[float, float]:
        """(us a step, page faults a step) over args.steps steps."""
        faults, start = minor_faults(), time.perf_counter()
        for i in range(args.steps):
            fwd_bwd(sets[i % len(sets)])
        sync()
        return (time.perf_counter() - start) / args.steps * 1e6, (minor_faults() - faults) / args.steps

    timed_steps()  # warm-up
    plain_us, plain_faults = timed_steps()
    with profile(activities=activities) as prof:
        wall_us, profiled_faults = timed_steps()
    averages = prof.key_averages()
    rows = split_us(averages, args.steps, wall_us, "triton_" if args.backend == "triton" else "")
    rows = {"step (wall, no profiler, just before)": plain_us, **rows}
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    lines = [
        f"CPU: {cpu_name()} ({platform.machine()}){gpu}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); "
        f"kernels {torch.ops.mmcal.cpu_capability()}",
        f"{args.workload} float32 forward+backward, eager {args.backend!r}, {args.steps} steps under torch.profiler",
    ] + [f"  {name:38s} {us / 1000:7.2f} ms" for name, us in rows.items()]
    lines.append(f"  page faults a step: {profiled_faults:.0f} profiled, {plain_faults:.0f} not")
    if args.top:
        lines += [f"the {args.top} events with the most host time of their own:", *top_rows(averages, args.steps, args.top)]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
