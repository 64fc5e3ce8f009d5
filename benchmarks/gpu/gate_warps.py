"""Where a CUDA step's time goes, and which block size the gate kernels want.

    python benchmarks/gpu/gate_warps.py [--workload mosei-aligned] [--out DIR]

On MOSEI-aligned's sizes (B = 32, float32, every parameter random), for each
of the per-sample gate kernels' block sizes (``MMCAL_CUDA_GATE_WARPS``: 16, the
default, and 8), times with CUDA events (triton's ``do_bench``, which can
hide host time: see ``time_wall``) and with a wall clock around back-to-back
calls (``time_wall``: host time included):

* ``gates``: the op ``mmcal::gates`` alone, and ``gates+backward``: it and
  ``mmcal::gates_backward``;
* ``module fwd`` and ``module fwd+bwd``: one eager step of the module with the
  ``cuda`` backend, as a user runs it;

and, for each, the kernels one call runs and their summed GPU time
(``torch.profiler``). A step's wall time against its kernels' time splits
host from GPU (the event time alone does not: it may hide the host); the two block sizes are compared on the same GPU in the same
process. Prints a table and writes ``gate-warps.json`` to ``--out``. GPU
only; every value it prints is measured here, on the GPU it names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # benchmarks/: the gate network's random inputs

from mmcal_kernels import backends  # noqa: E402
from mmcal_kernels.backends.cpp.load import apply_settings  # noqa: E402
from mmcal_kernels.bench.contenders import input_sets, make_module  # noqa: E402
from mmcal_kernels.bench.counting import cuda_launches  # noqa: E402
from mmcal_kernels.bench.timing import time_cuda, time_wall  # noqa: E402
from mmcal_kernels.bench.workloads import workload  # noqa: E402
from gate_network_cpu import make  # noqa: E402

WARPS = ("8", "16")


def steps(name: str) -> dict:
    """name -> a callable of one step, on fresh random inputs of the workload's sizes."""
    w = workload(name, torch.float32)
    summaries, params, present, grad_gates = make(w.batch, w.dims, 128, 128, seed=1)
    cuda = lambda t: t.cuda()  # noqa: E731
    summaries, grad_gates, present = list(map(cuda, summaries)), list(map(cuda, grad_gates)), present.cuda()
    flat = [cuda(t) for p in params for t in p]

    def gates():
        return torch.ops.mmcal.gates(summaries, flat, present)

    def gates_and_backward():
        _, diagnostics, saved = torch.ops.mmcal.gates(summaries, flat, present)
        return torch.ops.mmcal.gates_backward(grad_gates, summaries, flat, present, diagnostics, saved)

    module = make_module(w, "cuda", "cuda")
    (s,) = input_sets(w, torch.float32, "cuda", count=1)
    parameters = list(module.parameters())

    def module_forward():
        with torch.no_grad():
            return module(s.features, s.masks, s.present)

    def module_step():
        features = [x.detach().requires_grad_() for x in s.features]
        return torch.autograd.grad(module(features, s.masks, s.present), features + parameters, s.grad_outputs)

    return {"gates": gates, "gates+backward": gates_and_backward, "module fwd": module_forward,
            "module fwd+bwd": module_step}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mosei-aligned")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gate_warps: no CUDA device; nothing measured")
        return 0
    backends.available()
    print(f"gate_warps: {torch.cuda.get_device_name()}, torch {torch.__version__}, workload {args.workload}, float32")
    calls = steps(args.workload)
    rows = []
    for warps in WARPS:
        os.environ["MMCAL_CUDA_GATE_WARPS"] = warps
        apply_settings()  # the kernels read the environment only at load (csrc/common/settings.h)
        for name, call in calls.items():
            timing = time_cuda(call)
            wall = time_wall(call, torch.cuda.synchronize)
            launches = cuda_launches(call)
            rows.append({"warps": int(warps), "step": name, "median_ms": timing.median_ms, "p20_ms": timing.p20_ms,
                         "p80_ms": timing.p80_ms, "wall_ms": wall.median_ms, "wall_p20_ms": wall.p20_ms,
                         "wall_p80_ms": wall.p80_ms, "kernels": launches["kernels"],
                         "kernel_us": launches["kernel_us"], "names": launches["names"]})  # fmt: skip
            r = rows[-1]
            print(f"  warps {warps:>2s}  {name:16s} {r['wall_ms'] * 1e3:9.1f} us wall  "
                  f"{r['median_ms'] * 1e3:9.1f} us events  "
                  f"{r['kernel_us']:9.1f} us in {r['kernels']} kernels  {r['names']}", flush=True)
    os.environ.pop("MMCAL_CUDA_GATE_WARPS", None)
    apply_settings()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "workload": args.workload}
    with open(os.path.join(args.out, "gate-warps.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
