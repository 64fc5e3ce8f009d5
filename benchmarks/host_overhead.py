"""The eager module's host time: a step at sizes where the ops compute almost
nothing (B = 2, 2-4 channels, d = 4), beside each op of the step alone, so
that the difference is Python, argument checks and autograd: the floor an
eager GPU step cannot go below on a host of this speed. A bare autograd node
with the same differentiable inputs shows what any node pays.

    python benchmarks/host_overhead.py [--backend cpu] [--device cpu] [--threads 1]

Each op row times the chosen backend's own op (``mmcal::gates`` for "cpu" and
"cuda", ``mmcal::triton_gates`` for "triton"): on a GPU an eager Triton op's
host side includes Triton's Python launcher, which compiled code replaces.

``--stub-launches`` (with ``--backend triton`` under ``TRITON_INTERPRET=1``,
on a CPU machine) replaces every Triton launch with nothing: what is left is
the Triton ops' own Python (checks, allocation, arguments) and torch's
custom-op dispatch, measurable without a GPU. Its outputs are garbage; its
times are the host's.

On a GPU (``--device cuda --backend cuda``) the calls of a timed run are
launched back to back and synchronised once at its end: at these sizes the
GPU keeps up, so the time a call is the host's.
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform

import torch

from mmcal_kernels import PreFusionCalibration
from mmcal_kernels.bench.timing import wall_samples
from mmcal_kernels.info import cpu_name


def best_mean_us(fn, calls, repeats, sync=lambda: None):
    """The best of ``repeats`` means over ``calls`` calls, in microseconds (one ``sync`` a run)."""
    return min(wall_samples(fn, sync, calls=calls, rounds=repeats, warmup=min(calls, 30))) * 1e6


class BareNode(torch.autograd.Function):
    """An autograd node with the fused node's differentiable inputs and no work:
    what the engine and the leaves' gradient accumulation cost by themselves."""

    @staticmethod
    def forward(ctx, n_features, *inputs):
        outputs = tuple(x.clone() for x in inputs[:n_features])
        ctx.save_for_backward(*inputs)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        return (None, *ctx.saved_tensors)


class BackendOps:
    """``torch.ops.mmcal``'s ops of ``backend`` by their common names: the
    Triton backend registers its own (``mmcal::triton_gates``), with the same
    schemas as the C++ ones."""

    def __init__(self, backend: str):
        self.prefix = "triton_" if backend == "triton" else ""

    def __getattr__(self, name: str):
        return getattr(torch.ops.mmcal, self.prefix + name)


def tiny_module_and_inputs(backend: str, device: torch.device):
    """The module and features whose ops compute almost nothing (B = 2, 2-4
    channels, d = 4), every parameter random, the features needing a gradient."""
    torch.manual_seed(0)
    dims = (4, 3, 2)
    module = PreFusionCalibration(dims, shared_dim=4, backend=backend).to(device)
    for p in module.parameters():
        torch.nn.init.normal_(p)  # not the zero init, so every gradient is computed
    xs = [torch.randn(2, 3, dim, device=device, requires_grad=True) for dim in dims]
    return module, xs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the inputs' and the module's device)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=300, help="calls a timed run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the best one's mean counts")
    parser.add_argument("--stub-launches", action="store_true",
                        help="triton only: launch nothing, to time the ops' Python without a GPU")
    args = parser.parse_args()
    stubbed = []  # one entry per launch the stub took instead of Triton
    if args.stub_launches:
        if args.backend != "triton":
            parser.error("--stub-launches: only with --backend triton")
        from mmcal_kernels.backends.triton import configs

        def no_launch(*launch_args, **launch_kwargs):
            stubbed.append(None)

        configs._launch = no_launch
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best_us = functools.partial(best_mean_us, calls=args.calls, repeats=args.repeats, sync=sync)
    torch.set_num_threads(args.threads)
    module, xs = tiny_module_and_inputs(args.backend, device)
    dims = module.dims
    params = list(module.parameters())

    def forward():
        return module(xs)

    def forward_no_grad():  # evaluation and serving: autograd records nothing
        with torch.no_grad():
            return module(xs)

    copies = [x.detach().clone() for x in xs]
    # Timed on a copy whose last gate layers are zero: its gates are exactly 1,
    # so the features stay as they were call after call (with the random gates
    # they overflowed to inf and NaN within 100 calls), at the same work.
    identity = copy.deepcopy(module)
    identity.reset_gates()

    def in_place():
        return identity.calibrate_(copies)

    def step():
        outputs = module(xs)
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        for t in (*params, *xs):
            t.grad = None

    def step_grad():  # the benchmark's step: torch.autograd.grad accumulates no .grad
        outputs = module(xs)
        torch.autograd.grad(outputs, [*xs, *params], [torch.ones_like(o) for o in outputs])

    ops = BackendOps(args.backend)
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"CPU: {cpu_name()} ({platform.machine()}){gpu}; torch {torch.__version__}; {args.threads} thread(s); "
          f"backend {args.backend!r}, ops mmcal::{ops.prefix}*{', launches stubbed' if args.stub_launches else ''}; best of {args.repeats} means over {args.calls} calls")  # fmt: skip
    rows = {"module forward": best_us(forward), "module forward, no_grad": best_us(forward_no_grad),
            "module calibrate_": best_us(in_place), "module forward+backward": best_us(step),
            "module forward+backward, grad()": best_us(step_grad)}  # fmt: skip
    layouts = [0] * len(dims)
    with torch.no_grad():
        x = [t.detach() for t in xs]
        flat = [p.detach() for g in module.gate_params() for p in g]
        s = ops.summaries(x, [None] * len(dims), layouts, torch.float32)
        gates, diagnostics, saved = ops.gates(s, flat, None)
        gates, diagnostics, saved = list(gates), list(diagnostics), list(saved)
        rows.update({
            "op summaries": best_us(lambda: ops.summaries(x, [None] * len(dims), layouts, torch.float32)),
            "op gates": best_us(lambda: ops.gates(s, flat, None)),
            "op modulate": best_us(lambda: ops.modulate(x, gates, layouts)),
            "op gate_grads": best_us(lambda: ops.gate_grads(x, x, layouts, torch.float32)),
            "op gates_backward": best_us(lambda: ops.gates_backward(gates, s, flat, None, diagnostics, saved)),
            "op input_grads": best_us(lambda: ops.input_grads(x, x, gates, [None] * len(dims), s, layouts)),
        })  # fmt: skip
    leaves = [*xs, *params]

    def bare_forward():
        return BareNode.apply(len(xs), *leaves)

    def bare_step():
        outputs = BareNode.apply(len(xs), *leaves)
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        for t in leaves:
            t.grad = None

    def bare_step_grad():  # torch.autograd.grad accumulates no .grad
        outputs = BareNode.apply(len(xs), *leaves)
        torch.autograd.grad(outputs, leaves, [torch.ones_like(o) for o in outputs])

    rows.update({
        f"bare node forward ({len(leaves)} inputs)": best_us(bare_forward),
        "bare node fwd+bwd, backward()": best_us(bare_step),
        "bare node fwd+bwd, grad()": best_us(bare_step_grad),
    })  # fmt: skip
    for name, us in rows.items():
        print(f"  {name:33s} {us:8.1f} us")
    op_time = sum(us for name, us in rows.items() if name.startswith("op "))
    print(f"  {'step minus its six ops':33s} {rows['module forward+backward'] - op_time:8.1f} us (Python, checks, autograd)")
    if args.stub_launches:
        print(f"  launches the stub took             {len(stubbed)}")


if __name__ == "__main__":
    main()
