"""Would an autograd node written in C++ cut the eager host cost? A probe of
the one structural change left for the host side of a step.

    python benchmarks/autograd_node_probe.py [--rounds 7] [--calls 2000] [--threads 1]

An eager GPU step is bound by its host (README, "GPU"; benchmarks/host_overhead.py):
Python, the ops' host side and the autograd engine. The fused node is a Python
``torch.autograd.Function``. The usual C++ alternative is a
``torch::autograd::Function`` behind a custom op's Autograd kernel, called from
Python through ``torch.ops``. This compiles one (``load_inline``, a
``TORCH_LIBRARY`` block, no pybind) and times it beside host_overhead.py's
Python ``BareNode``, doing the same nothing: the forward clones its first 3
inputs and saves all of them, the backward hands the saved tensors back as
gradients. Each runs with 3 inputs (the features) and 27 (the module's
differentiable inputs at M = 3), recording a node (forward), and forward then
``torch.autograd.grad`` (the harness's step). For scale, the module's own eager
step at sizes where its ops compute almost nothing (host_overhead.py's) is
timed in the same rounds.

Rounds alternate the contenders so that a shared machine's drift spreads over
all of them; printed: the median over rounds of each best-of-5 mean, and the
median of the per-round ratios C++ / Python (below 1: C++ is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import timeit
from typing import Callable

import torch
from torch.utils.cpp_extension import load_inline

from mmcal_kernels.info import cpu_name

from host_overhead import BareNode as PythonBareNode, tiny_module_and_inputs

CPP_NODE = r"""
#include <torch/library.h>
#include <torch/autograd.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BareNode : public torch::autograd::Function<BareNode> {
  static variable_list forward(AutogradContext* ctx, int64_t n, at::TensorList inputs) {
    ctx->save_for_backward(inputs.vec());
    variable_list out;
    for (int64_t i = 0; i < n; ++i) out.push_back(inputs[i].clone());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out = {at::Tensor()};  // n
    for (const auto& t : ctx->get_saved_variables()) out.push_back(t);
    return out;
  }
};

std::vector<at::Tensor> bare(int64_t n, at::TensorList inputs) { return BareNode::apply(n, inputs); }
}  // namespace

TORCH_LIBRARY(mmcal_node_probe, m) { m.def("bare(int n, Tensor[] inputs) -> Tensor[]"); }
TORCH_LIBRARY_IMPL(mmcal_node_probe, Autograd, m) { m.impl("bare", &bare); }
"""


def build(build_dir: str) -> None:
    load_inline("mmcal_node_probe", cpp_sources=CPP_NODE, is_python_module=False, build_directory=build_dir,
                extra_cflags=["-O2"])  # fmt: skip


def contenders(counts) -> dict[str, Callable[[], object]]:
    """Each contender's call, by name: a node's forward, its step, and the module's step."""
    cpp = torch.ops.mmcal_node_probe.bare.default
    calls = {}
    for k in counts:
        inputs = [torch.randn(2, 3, requires_grad=True) for _ in range(k)]
        ones = [torch.ones(2, 3) for _ in range(3)]
        calls[f"C++ node, {k} inputs, forward"] = lambda inputs=inputs: cpp(3, inputs)
        calls[f"Python node, {k} inputs, forward"] = lambda inputs=inputs: PythonBareNode.apply(3, *inputs)
        calls[f"C++ node, {k} inputs, forward+grad"] = lambda inputs=inputs, ones=ones: torch.autograd.grad(
            cpp(3, inputs), inputs, ones
        )
        calls[f"Python node, {k} inputs, forward+grad"] = lambda inputs=inputs, ones=ones: torch.autograd.grad(
            PythonBareNode.apply(3, *inputs), inputs, ones
        )
    module, xs = tiny_module_and_inputs("cpu", torch.device("cpu"))
    params = list(module.parameters())

    def module_step():
        outputs = module(xs)
        torch.autograd.grad(outputs, [*xs, *params], [torch.ones_like(o) for o in outputs])

    calls["module 'cpu', tiny sizes, forward+grad"] = module_step
    return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls a timed mean")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--build-dir", default=None, help="where load_inline builds (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        build(args.build_dir or tmp)
        calls = contenders((3, 27))
        # Time real nodes only: each contender's outputs must hang from its own node.
        inputs = [torch.randn(2, 3, requires_grad=True) for _ in range(3)]
        for node, out in (("CppNode<", torch.ops.mmcal_node_probe.bare.default(3, inputs)),
                          ("BareNodeBackward", PythonBareNode.apply(3, *inputs))):  # fmt: skip
            name = out[0].grad_fn.name() if out[0].grad_fn is not None else "no node"
            if node not in name:
                raise SystemExit(f"autograd_node_probe: expected the outputs of a {node}, got {name}")
        for fn in calls.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, fn in calls.items():
                times[name].append(min(timeit.repeat(fn, number=args.calls, repeat=5)) / args.calls * 1e6)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.2f} (1 min); {args.rounds} rounds, best of 5 means over {args.calls} calls")  # fmt: skip
    for name, values in times.items():
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:44s} median {statistics.median(values):7.1f} us   (rounds: {spread})")
    # Round by round: a drift between rounds cancels in the ratio.
    for name, values in times.items():
        if name.startswith("C++"):
            ratios = [c / p for c, p in zip(values, times[name.replace("C++", "Python")])]
            spread = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"  {name.removeprefix('C++ node, ') + ', C++ / Python':44s} median {statistics.median(ratios):7.2f}      (rounds: {spread})")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
