"""Kernel launches in one module forward (and forward+backward) per backend,
eager and under torch.compile, counted with torch.profiler on a GPU; written
to ``$OUT/launch_counts.json``. The Triton issue asks for the forward's count.

    python benchmarks/gpu/launch_counts.py [--out DIR]
"""

import argparse
import json
import os

import torch

from mmcal_kernels import backends
from mmcal_kernels.bench.contenders import make_module
from mmcal_kernels.bench.workloads import make_inputs
from mmcal_kernels.bench.workloads import WORKLOADS


def count_launches(fn) -> dict:
    fn()  # warm: autotuning and compilation launch kernels of their own
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]  # fmt: skip
    ours = [k for k in kernels if "_reduce_kernel" in k or "_map_kernel" in k or "mmcal" in k]
    return {"launches": len(kernels), "over_x": len(ours), "names": sorted(set(kernels))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    results = []
    for name in ("mosei-aligned", "cremad-resnet18"):
        w = WORKLOADS[name]
        features, masks, present = make_inputs(w, torch.float32, "cuda", 0)
        grads = [torch.randn_like(x) for x in features]
        for backend in [b.name for b in backends.available() if b.usable and "cuda" in b.device_types]:
            module = make_module(w, "cuda", backend)
            for compiled in (False, True):
                run = torch.compile(module) if compiled else module
                leaves = [x.detach().requires_grad_() for x in features]

                def forward():
                    with torch.no_grad():
                        run(features, masks, present)

                def fwd_bwd():
                    torch.autograd.backward(run(leaves, masks, present), grads)

                for what, fn in (("forward", forward), ("fwd+bwd", fwd_bwd)):
                    row = {"workload": name, "backend": backend, "compiled": compiled, "what": what, **count_launches(fn)}
                    print(f"{name:16s} {backend:10s} compiled={compiled!s:5s} {what:8s} launches {row['launches']:4d} "
                          f"(over X: {row['over_x']})")  # fmt: skip
                    results.append(row)
    device = torch.cuda.get_device_name()
    with open(os.path.join(args.out, "launch_counts.json"), "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
