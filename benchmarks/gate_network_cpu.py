"""Steps 2-6 on the CPU: the ops mmcal::gates / mmcal::gates_backward against
the eager torch version (reference.gates_with_intermediates, then
gates_backward.gates_backward), forward and forward+backward, in microseconds.

    python benchmarks/gate_network_cpu.py [--min-run-time 2] [--workload mosei-aligned]

Sizes: mosei-aligned (B=32, D=(768, 74, 35), d=r=128) and a two-modality one
(B=64, D=(512, 512)); float32, every parameter random. The machine may be
shared: the load average is printed with the numbers, and the fastest block
beside the median.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.utils.benchmark import Timer

from mmcal_kernels import GateParams, reference
from mmcal_kernels.info import cpu_name
from mmcal_kernels.gates_backward import gates_backward

WORKLOADS = {
    "mosei-aligned": dict(batch=32, dims=(768, 74, 35), d=128, r=128),
    "two-512": dict(batch=64, dims=(512, 512), d=128, r=128),
}


def make(batch, dims, d, r, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, fan_in=None):
        scale = fan_in ** -0.5 if fan_in else 0.5
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    summaries = [rand(batch, dm) for dm in dims]
    params = [GateParams(rand(d, dm, fan_in=dm), rand(d), rand(r, 2 * d + 2, fan_in=2 * d + 2), rand(r),
                         rand(1, r, fan_in=r), rand(1), rand(dm, r, fan_in=r), rand(dm)) for dm in dims]  # fmt: skip
    present = torch.rand((batch, len(dims)), generator=gen) > 0.2
    grads = [rand(batch, dm) for dm in dims]
    return summaries, params, present, grads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")  # fmt: skip
    for name in args.workload or list(WORKLOADS):
        summaries, params, present, grads = make(**WORKLOADS[name])
        flat = [t for p in params for t in p]

        def torch_forward():
            return reference.gates_with_intermediates(summaries, params, present)

        def torch_forward_backward():
            _, _, inter = reference.gates_with_intermediates(summaries, params, present)
            return gates_backward(inter, params, present, grads)

        def op_forward():
            return torch.ops.mmcal.gates(summaries, flat, present)

        def op_forward_backward():
            _, diagnostics, saved = torch.ops.mmcal.gates(summaries, flat, present)
            return torch.ops.mmcal.gates_backward(grads, summaries, flat, present, diagnostics, saved)

        # The floor of any implementation: the same matrix products alone
        # (3 per modality forward, 6 more backward), into preallocated outputs.
        w = WORKLOADS[name]
        gemms = []
        for s, p in zip(summaries, params):
            q = torch.randn(w["batch"], 2 * w["d"] + 2)
            h, pre, e = s @ p.proj_weight.t(), q @ p.hidden_weight.t(), torch.randn(w["batch"], w["r"])
            z = e @ p.dim_weight.t()
            gemms.append([(s, p.proj_weight.t(), h), (q, p.hidden_weight.t(), pre), (e, p.dim_weight.t(), z),
                          (z, p.dim_weight, e.clone()), (z.t(), e, p.dim_weight.clone()), (pre, p.hidden_weight, q.clone()),
                          (pre.t(), q, p.hidden_weight.clone()), (h, p.proj_weight, s.clone()),
                          (h.t(), s, p.proj_weight.clone())])  # fmt: skip

        def gemms_forward():
            for per in gemms:
                for a, b, out in per[:3]:
                    torch.mm(a, b, out=out)

        def gemms_forward_backward():
            for per in gemms:
                for a, b, out in per:
                    torch.mm(a, b, out=out)

        results = {}
        with torch.no_grad():
            for label, fn in [("torch forward", torch_forward), ("op forward", op_forward),
                              ("GEMMs alone forward", gemms_forward),
                              ("torch forward+backward", torch_forward_backward),
                              ("op forward+backward", op_forward_backward),
                              ("GEMMs alone fwd+bwd", gemms_forward_backward)]:  # fmt: skip
                fn()
                # Timer runs on ONE thread unless told: give it torch's setting.
                timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
                m = timer.blocked_autorange(min_run_time=args.min_run_time)
                # The fastest block as well: on a shared machine the median
                # carries the stalls of threads descheduled by other processes.
                results[label] = (m.median * 1e6, m.iqr * 1e6, min(m.times) * 1e6)
        print(f"\n{name}: {WORKLOADS[name]}, float32, present with ~20% missing")
        for label, (median, iqr, fastest) in results.items():
            print(f"  {label:24s} median {median:8.1f} us (IQR {iqr:7.1f}), fastest block {fastest:8.1f} us")
        for what in ("forward", "forward+backward"):
            t, o = results["torch " + what], results["op " + what]
            print(f"  speed-up {what}: {t[0] / o[0]:.1f}x (medians), {t[2] / o[2]:.1f}x (fastest blocks)")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
