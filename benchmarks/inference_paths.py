"""Eager inference with and without the autograd node, timed in alternating
rounds in one process: a forward under ``torch.no_grad()`` through
``Function.apply`` or through the three ops directly, and ``calibrate_`` as
one-modality stages (M + 2 ops) or as the fused forward's three ops. The old
paths are still reachable (``records_graph`` forced true; a registry entry
without ``calibrate_``), so the ratio is measured, not remembered.

    python benchmarks/inference_paths.py [--backend cpu] [--rounds 31] [--calls 100]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform

import torch

from mmcal_kernels import PreFusionCalibration, autograd, backends
from mmcal_kernels.bench.paired import paired_ratios, time_rounds
from mmcal_kernels.bench.timing import median_p20_p80
from mmcal_kernels.info import cpu_name

CASES = {  # label: dims, batch, positions, shared dim
    "dims (4, 3, 2), B = 2, P = 3, d = 4": ((4, 3, 2), 2, 3, 4),
    "MOSEI dims, B = 1, P = 50, d = 128": ((768, 74, 35), 1, 50, 128),
    "MOSEI-aligned, B = 32, P = 50, d = 128": ((768, 74, 35), 32, 50, 128),
}


class Paths:
    """Switches between the new paths and the old ones."""

    def __init__(self, backend: str):
        self.name, self.records_graph = backend, autograd.records_graph
        self.new = backends.get(backend)
        self.old = dataclasses.replace(self.new, calibrate_=None)

    def use_old(self, old: bool) -> None:
        autograd.records_graph = (lambda flat: True) if old else self.records_graph
        backends._REGISTRY[self.name] = self.old if old else self.new

    def on(self, old: bool, fn):
        """``fn`` on one path; the switch (two assignments) is in both contenders' calls alike."""

        def call():
            self.use_old(old)
            fn()

        return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", type=int, default=100, help="calls a timed block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = Paths(args.backend)
    print(f"CPU: {cpu_name()} ({platform.machine()}); torch {torch.__version__}; {args.threads} thread(s); "
          f"backend {args.backend!r}; {args.rounds} alternating rounds of {args.calls} calls; medians, "
          "before/after with p20-p80")  # fmt: skip
    try:
        for label, (dims, batch, positions, shared) in CASES.items():
            module = PreFusionCalibration(dims, shared_dim=shared, backend=args.backend)
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.05)
            xs = [torch.randn(batch, positions, dim) for dim in dims]

            def forward_no_grad():
                with torch.no_grad():
                    module(xs)

            # calibrate_ on a copy whose last gate layers are zero: gates exactly 1,
            # so the features stay as they were call after call, at the same work
            # (with the random gates they reached inf and NaN within 1000 calls).
            identity = copy.deepcopy(module)
            identity.reset_gates()

            def in_place():
                identity.calibrate_(xs)

            for call, fn in (("forward, no_grad", forward_no_grad), ("calibrate_", in_place)):
                calls = {"before": paths.on(True, fn), "after": paths.on(False, fn)}
                for warm in calls.values():
                    warm()
                times = time_rounds(calls, dict.fromkeys(calls, args.calls), args.rounds)
                ratio = paired_ratios(times, "after")["before"]
                before, after = (median_p20_p80(times[k])[0] * 1e6 for k in ("before", "after"))
                print(f"  {label:40s} {call:17s} before {before:8.1f} us  after {after:8.1f} us  ratio "
                      f"{ratio['median']:.2f} ({ratio['p20']:.2f}-{ratio['p80']:.2f})", flush=True)  # fmt: skip
    finally:
        paths.use_old(False)


if __name__ == "__main__":
    main()
