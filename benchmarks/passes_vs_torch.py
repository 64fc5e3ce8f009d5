"""Each pass over X of a kernel backend against the same arithmetic in eager
torch ops, at a real workload's shapes: the kernel's own speed, with its
inputs in cache (the same tensors every call), called below autograd as the
fused node calls it. Ratio = torch time / kernel time, so above 1 the kernel
is faster. Where bytes from DRAM set the time (the benchmark's rotating
inputs), both sides meet at the copy bandwidth; this table shows what each
side costs beyond that, per row and per call.

    python benchmarks/passes_vs_torch.py [--threads 1] [--workloads mosei-aligned cremad-resnet18] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from mmcal_kernels import reference, spec
from mmcal_kernels.bench.contenders import input_sets
from mmcal_kernels.bench.timing import wall_samples
from mmcal_kernels.bench.workloads import WORKLOADS
from mmcal_kernels.info import cpu_name


def _per_sample(t, x, layout):
    """[B, D] broadcast against X of this layout."""
    return t.unsqueeze(1) if layout == "sequence" else t.reshape(t.shape + (1,) * (x.dim() - 2))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_passes(layouts, ct):
    """The four passes as a user would write them in eager torch ops."""

    def summaries(xs, masks):
        return [reference.summary(x, lay, m, ct) for x, m, lay in zip(xs, masks, layouts)]

    def modulate(xs, gates):
        return [reference.modulate(x, g, lay) for x, g, lay in zip(xs, gates, layouts)]

    def gate_grads(dys, xs):
        dims = lambda x, lay: 1 if lay == "sequence" else tuple(range(2, x.dim()))  # noqa: E731
        return [(dy.to(ct) * x.to(ct)).sum(dims(x, lay)) for dy, x, lay in zip(dys, xs, layouts)]  # in ct, as the spec's

    def input_grads(xs, dys, gates, masks, dss):
        out = []
        for x, dy, g, m, ds, lay in zip(xs, dys, gates, masks, dss, layouts):
            term = _per_sample(ds / spec.position_counts(x, lay, m, ct), x, lay)
            if m is not None:
                term = torch.where(m.unsqueeze(-1), term, 0.0)
            out.append(torch.addcmul(term, dy, _per_sample(g, x, lay)).to(x.dtype))  # dX in the features' dtype
        return out

    return summaries, modulate, gate_grads, input_grads


def kernel_passes(layouts, ct):
    codes, ops = spec.layout_codes(layouts), torch.ops.mmcal

    def summaries(xs, masks):
        return ops.summaries(xs, masks, codes, ct)

    def modulate(xs, gates):
        return ops.modulate(xs, gates, codes)

    def gate_grads(dys, xs):
        return ops.gate_grads(dys, xs, codes, ct)

    def input_grads(xs, dys, gates, masks, dss):
        return ops.input_grads(xs, dys, gates, masks, dss, codes)

    return summaries, modulate, gate_grads, input_grads


def median_us(fn, calls, rounds):
    with torch._C._AutoDispatchBelowAutograd():  # as the fused node calls its ops
        return statistics.median(wall_samples(fn, lambda: None, calls=calls, rounds=rounds, warmup=calls)) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["mosei-aligned", "mosei-unaligned", "cremad-resnet18"],
                        choices=sorted(WORKLOADS))  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the features' dtype (ct is float32)")
    parser.add_argument("--calls", type=int, default=50, help="calls a timed round")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds; the median counts")
    parser.add_argument("--out", default=None, help="also append the report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype, ct = DTYPES[args.dtype], torch.float32
    tol = 1e-4 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps  # one rounding to the dtype apart at most
    lines = [
        f"CPU: {cpu_name()} ({platform.machine()}); torch {torch.__version__}; {torch.get_num_threads()} thread(s); "
        f"kernels {torch.ops.mmcal.cpu_capability()}",
        f"{args.dtype} features, float32 compute, inputs in cache; median of rounds, microseconds a call of all modalities; torch / kernel",
        f"{'workload':18s} {'pass':12s} {'kernel':>9s} {'torch':>9s} {'ratio':>6s}",
    ]
    print("\n".join(lines), flush=True)
    for name in args.workloads:
        w = WORKLOADS[name]
        (s,) = input_sets(w, dtype, torch.device("cpu"), count=1)
        dss = [torch.randn_like(g) for g in s.gates]
        args_of = {
            "summaries": (s.features, s.masks),
            "modulate": (s.features, s.gates),
            "gate_grads": (s.grad_outputs, s.features),
            "input_grads": (s.features, s.grad_outputs, s.gates, s.masks, dss),
        }
        sides = {"kernel": kernel_passes(w.layouts, ct), "torch": torch_passes(w.layouts, ct)}
        for i, pass_name in enumerate(args_of):
            fns = {side: passes[i] for side, passes in sides.items()}
            got = [t.double() for t in fns["kernel"](*args_of[pass_name])]
            want = [t.double() for t in fns["torch"](*args_of[pass_name])]
            for a, b in zip(got, want):  # the same arithmetic on both sides, or the ratio means nothing
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)
            us = {side: median_us(lambda f=f: f(*args_of[pass_name]), args.calls, args.rounds) for side, f in fns.items()}
            line = f"{name:18s} {pass_name:12s} {us['kernel']:9.1f} {us['torch']:9.1f} {us['torch'] / us['kernel']:6.2f}"
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
