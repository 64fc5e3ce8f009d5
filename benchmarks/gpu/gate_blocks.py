"""Where a GPU step's time goes, and which block sizes the gate kernels want.

    python benchmarks/gpu/gate_blocks.py [--backends cuda triton] [--workload mosei-aligned]
                                         [--settings S ...] [--batches B ...] [--out DIR]
    TRITON_INTERPRET=1 python benchmarks/gpu/gate_blocks.py --backends triton --smoke

The gate kernels' block sizes are a setting of each backend, read from the
environment (docs/kernels.md, "Environment variables"):

* ``cuda``: ``MMCAL_CUDA_GATE_WARPS``, warps a block of the per-sample
  kernels: 16 (the default) and 8;
* ``triton``: ``MMCAL_TRITON_GATE_BLOCKS``, ``SxK``: samples a program and
  the contractions' slice: 16x16 (the default, ``tl.dot``), and blocks of
  fewer samples (broadcast products, more programs: MOSEI's B = 32 runs on 2
  programs at 16 samples, on 8 at 4). Below 16 the setting reaches the
  forward kernel only: the backward keeps 16 samples a program
  (``gate_network.BACKWARD_MIN_SAMPLES``).

On MOSEI-aligned's sizes (B = 32, float32, every parameter random; other
batch sizes with ``--batches``, since the samples a program trade programs
against weight reads, and that trade moves with B), for each setting, times
with CUDA events (triton's ``do_bench``, which can hide host time: see
``time_wall``) and with a wall clock around back-to-back calls (``time_wall``:
host time included):

* ``gates``: the backend's gate op alone, and ``gates+backward``: it and its
  backward op;
* ``module fwd`` and ``module fwd+bwd``: one eager step of the module with
  the backend, as a user runs it;

and, for each, the kernels one call runs and their summed GPU time
(``torch.profiler``). A step's wall time against its kernels' time splits
host from GPU (the event time alone does not: it may hide the host); the
settings are compared on the same GPU in the same process. Prints a table and
writes every backend's rows to ``gate-blocks.json`` in ``--out`` (after each row). Every value it prints is
measured here, on the GPU it names. ``--smoke`` (no GPU: the Triton backend
under the interpreter) runs every step once on CPU tensors at tiny sizes,
wall time only, so that CI and ``check.sh --dry-run`` run the script's every line
but the GPU's timers; its figures time the interpreter and mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # benchmarks/: the gate network's random inputs

from mmcal_kernels import backends  # noqa: E402
from mmcal_kernels.bench.contenders import input_sets, make_module  # noqa: E402
from mmcal_kernels.bench.counting import cuda_launches  # noqa: E402
from mmcal_kernels.bench.timing import time_cuda, time_wall  # noqa: E402
from mmcal_kernels.bench.workloads import workload  # noqa: E402
from gate_network_cpu import make  # noqa: E402


def _apply_cuda():
    from mmcal_kernels.backends.cpp.load import apply_settings

    apply_settings()  # the kernels read the environment only at load (csrc/common/settings.h)


def _apply_triton():
    from mmcal_kernels.backends.triton import gate_network

    gate_network.apply_settings()


# backend -> (the variable, its values to compare (the default first), how the backend rereads it, its ops)
SETTINGS = {
    "cuda": ("MMCAL_CUDA_GATE_WARPS", ("16", "8"), _apply_cuda, ("gates", "gates_backward")),
    "triton": ("MMCAL_TRITON_GATE_BLOCKS", ("16x16", "8x16", "4x16", "2x32", "1x16"), _apply_triton,
               ("triton_gates", "triton_gates_backward")),
}  # fmt: skip


def steps(name: str, backend: str, device: str, smoke: bool = False, batch: Optional[int] = None) -> tuple:
    """(the inputs' batch size, name -> a callable of one step), on fresh
    random inputs of the workload's sizes (d = r = 128; ``batch`` samples,
    default the workload's); a smoke run's are tiny (B = 2 unless given, 4
    positions, at most 8 channels, d = r = 16), as the interpreter runs a
    program at a time."""
    w, d = workload(name, torch.float32), 128
    if smoke:
        w = dataclasses.replace(w.scaled(batch=batch or 2, max_positions=4), dims=tuple(min(c, 8) for c in w.dims))
        d = 16
    elif batch is not None:
        w = w.scaled(batch=batch)
    summaries, params, present, grad_gates = make(w.batch, w.dims, d, d, seed=1)
    move = lambda t: t.to(device)  # noqa: E731
    summaries, grad_gates, present = list(map(move, summaries)), list(map(move, grad_gates)), present.to(device)
    flat = [move(t) for p in params for t in p]
    forward_op, backward_op = (getattr(torch.ops.mmcal, op) for op in SETTINGS[backend][3])

    def gates():
        return forward_op(summaries, flat, present)

    def gates_and_backward():
        _, diagnostics, saved = forward_op(summaries, flat, present)
        return backward_op(grad_gates, summaries, flat, present, diagnostics, saved)

    module = make_module(w, device, backend, shared_dim=d)
    (s,) = input_sets(w, torch.float32, device, count=1)
    parameters = list(module.parameters())

    def module_forward():
        with torch.no_grad():
            return module(s.features, s.masks, s.present)

    def module_step():
        features = [x.detach().requires_grad_() for x in s.features]
        return torch.autograd.grad(module(features, s.masks, s.present), features + parameters, s.grad_outputs)

    sizes = {summaries[0].shape[0], s.features[0].shape[0], present.shape[0]}
    assert len(sizes) == 1, f"the gate ops' and the module's inputs disagree on the batch: {sizes}"
    return sizes.pop(), {"gates": gates, "gates+backward": gates_and_backward, "module fwd": module_forward,
                         "module fwd+bwd": module_step}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=sorted(SETTINGS), default=["cuda"])
    parser.add_argument("--workload", default="mosei-aligned")
    parser.add_argument("--settings", nargs="+", help="the values to compare, for every backend named "
                        "(default: each backend's list above)")  # fmt: skip
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes to time each setting at "
                        "(default: the workload's)")  # fmt: skip
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--smoke", action="store_true", help="no GPU: CPU tensors, tiny sizes, one call a step (Triton's interpreter)")
    args = parser.parse_args()
    if args.batches and min(args.batches) < 1:
        parser.error(f"--batches: every batch size must be at least 1, got {args.batches}")
    gpu = not args.smoke
    if gpu and not torch.cuda.is_available():
        print(f"gate_blocks: no CUDA device; nothing measured ({', '.join(args.backends)})")
        return 0
    if not gpu and (args.backends != ["triton"] or os.environ.get("TRITON_INTERPRET") != "1"):
        print("gate_blocks: --smoke runs the triton backend alone, under TRITON_INTERPRET=1")
        return 2
    usable = {b.name for b in backends.available() if b.usable}
    device = torch.cuda.get_device_name() if gpu else "CPU (smoke run: Triton's interpreter, figures mean nothing)"
    meta = {"device": device, "torch": torch.__version__, "workload": args.workload, "smoke": not gpu,
            "variables": {b: SETTINGS[b][0] for b in args.backends}}  # fmt: skip
    rows, status = [], 0
    for backend in args.backends:
        if backend not in usable:
            print(f"gate_blocks: backend {backend!r} is not usable here; nothing measured for it")
            status = 1
            continue
        print(f"gate_blocks: {device}, torch {torch.__version__}, backend {backend}, workload {args.workload}"
              f"{'' if gpu else ' at tiny sizes'}, float32, {SETTINGS[backend][0]}")  # fmt: skip
        _measure(args, backend, "cuda" if gpu else "cpu", meta, rows)
    return status


def _measure(args, backend: str, device: str, meta: dict, rows: list) -> None:
    variable, choices, apply, _ = SETTINGS[backend]
    gpu = device == "cuda"
    before = os.environ.get(variable)
    try:
        for batch, value, step, call in _cases(args, backend, device, choices, variable, apply):
            if gpu:
                timing = time_cuda(call)  # warms up first: a cold Triton setting compiles here
                wall = time_wall(call, torch.cuda.synchronize)
                launches = cuda_launches(call)
            else:
                wall = timing = time_wall(call, lambda: None, calls=1, rounds=1, warmup=0)
                launches = {"kernels": None, "kernel_us": None, "names": {}}
            rows.append({"backend": backend, "setting": value, "batch": batch, "step": step,
                         "median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
                         "wall_ms": wall.median_ms, "wall_p20_ms": wall.p20_ms, "wall_p80_ms": wall.p80_ms,
                         "kernels": launches["kernels"], "kernel_us": launches["kernel_us"],
                         "names": launches["names"]})  # fmt: skip
            if backend == "cuda":
                rows[-1]["warps"] = int(value)  # the key runs 5-7 wrote
            r = rows[-1]
            kernels = f"{r['kernel_us']:9.1f} us in {r['kernels']} kernels  {r['names']}" if gpu else ""
            print(f"  {value:>5s}  B={batch:<4d} {step:16s} {r['wall_ms'] * 1e3:9.1f} us wall  "
                  f"{r['median_ms'] * 1e3:9.1f} us events  {kernels}", flush=True)
            # Written after every row: a run cut at its limit keeps what it measured.
            with open(os.path.join(args.out, "gate-blocks.json"), "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
        apply()


def _cases(args, backend, device, choices, variable, apply):
    """(batch, setting, step, callable) in the order timed: each batch size's
    inputs are made once, then every setting is applied and its steps run."""
    for batch in args.batches or [None]:
        size, calls = steps(args.workload, backend, device, smoke=device != "cuda", batch=batch)
        for value in args.settings or choices:
            os.environ[variable] = value
            apply()
            for step, call in calls.items():
                yield size, value, step, call


if __name__ == "__main__":
    sys.exit(main())
