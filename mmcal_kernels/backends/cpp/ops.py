"""The C++ extension's ops (csrc/ops.cpp) as a kernel backend: their fake
kernels (for ``torch.compile`` and ``meta``: the C++ kernels' argument checks,
in Python, ``op_checks``, then the output shapes), the
autograd of the stage ops and of the gate network, and the ``KernelBackend``s
the ``"cpu"`` and ``"cuda"`` backends compute with. Registered once the
library has loaded."""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from ... import gates_torch, op_checks
from ...autograd import register_gates_autograd, register_stage_autograd
from ...spec import channels, layout_name
from ..kernel_backend import KernelBackend

# Resolved at call time: the ops exist only once the extension has loaded.
_PASSES = dict(
    summaries=lambda *a: torch.ops.mmcal.summaries(*a),
    modulate=lambda *a: torch.ops.mmcal.modulate(*a),
    modulate_=lambda *a: torch.ops.mmcal.modulate_(*a),
    gate_grads=lambda *a: torch.ops.mmcal.gate_grads(*a),
    input_grads=lambda *a: torch.ops.mmcal.input_grads(*a),
)
OPS = KernelBackend(
    "cpp",
    **_PASSES,
    gates=lambda *a: torch.ops.mmcal.gates(*a),
    gates_backward=lambda *a: torch.ops.mmcal.gates_backward(*a),
)
# The CUDA gate-network kernels pass every modality's pointers as one kernel
# argument, up to csrc/cuda/launch.cuh's kMaxModalities; a call with more
# modalities computes steps 2-6 with torch ops (gates_torch.py). Both
# directions decide by the same count, so the backward reads what its
# forward saved.
CUDA_MAX_GATE_MODALITIES = 8


def _cuda_gates(summaries, params, present):
    if len(summaries) <= CUDA_MAX_GATE_MODALITIES:
        return torch.ops.mmcal.gates(summaries, params, present)
    return gates_torch.gates(summaries, params, present)


def _cuda_gates_backward(grad_gates, summaries, params, present, diagnostics, saved):
    if len(summaries) <= CUDA_MAX_GATE_MODALITIES:
        return torch.ops.mmcal.gates_backward(grad_gates, summaries, params, present, diagnostics, saved)
    return gates_torch.gates_backward(grad_gates, summaries, params, present, diagnostics, saved)


CUDA_OPS = KernelBackend("cuda", **_PASSES, gates=_cuda_gates, gates_backward=_cuda_gates_backward)


def _channels(x, code):
    return channels(x, layout_name(code))


def _per_channel(xs, layouts, ct):
    """``[B, D_m]`` in ct for each modality: what summaries and gate_grads return."""
    return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]


def one_device(**lists) -> None:
    """Every tensor of an op on xs[0]'s device, as the C++ ops check: a fake
    kernel is what runs when one argument is on ``meta``, so it checks too."""
    if len(lists["xs"]) == 0:
        return  # op_checks names the empty list
    device = lists["xs"][0].device
    for name, items in lists.items():
        for i, t in enumerate(items):
            if t is not None and t.device != device:
                raise ValueError(f"{name}[{i}]: on {t.device}, but xs[0] is on {device}")


# The arguments each op checks, in Python (op_checks: what its fake checks).
_OP_CHECKS = {
    "summaries": op_checks.summaries_args, "modulate": op_checks.modulate_args,
    "modulate_": op_checks.modulate_args, "gate_grads": op_checks.gate_grads_args,
    "input_grads": op_checks.input_grads_args, "gates": op_checks.gates_args,
    "gates_backward": op_checks.gates_backward_args,
}  # fmt: skip
_NO_KERNEL_LIB = None  # the Library holding the kernels below (registrations live while it does)


def no_kernel(name: str):
    """The op's kernel for every dispatch key the library has no kernel of its
    own for: no tensor at all (empty lists, where the dispatcher said only
    "There were no tensor arguments"), a layout or a device this build has no
    kernels for. It makes the op's own argument checks, so an empty list or a
    sparse tensor raises the ValueError / TypeError the fake kernel raises,
    naming the argument; what passes them is a device without kernels."""
    check = _OP_CHECKS[name]

    def kernel(*args):
        check(*args)
        from .load import STATUS  # set once the library loaded, before any call

        built = ("cpu", "cuda") if STATUS["cuda_kernels"] else ("cpu",)
        tensors = [t for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
        # The tensor that sent the call here: the first the kernels cannot take.
        odd = next((t for t in tensors if t.device.type not in built or t.layout is not torch.strided), tensors[0])
        raise NotImplementedError(f"mmcal::{name}: no kernel for {odd.device.type} tensors (layout {odd.layout}); "
                                  f"this build of mmcal_kernels has kernels for: {', '.join(built)}")  # fmt: skip

    return kernel


def register() -> None:
    """The fakes and the autograd of the loaded library's ops."""
    global _NO_KERNEL_LIB
    _NO_KERNEL_LIB = torch.library.Library("mmcal", "IMPL")
    for name in _OP_CHECKS:
        # CompositeExplicitAutograd: the dispatcher's choice wherever no kernel
        # of the op's own matches (the empty key set of a call without tensors included).
        _NO_KERNEL_LIB.impl(name, no_kernel(name), "CompositeExplicitAutograd")

    @torch.library.register_fake("mmcal::summaries")
    def _(xs, masks, layouts, ct):
        one_device(xs=xs, masks=masks)
        op_checks.summaries_args(xs, masks, layouts, ct)
        return _per_channel(xs, layouts, ct)

    @torch.library.register_fake("mmcal::modulate")
    def _(xs, gates, layouts):
        one_device(xs=xs, gates=gates)
        op_checks.modulate_args(xs, gates, layouts)
        return [torch.empty_like(x) for x in xs]

    @torch.library.register_fake("mmcal::modulate_")
    def _(xs, gates, layouts):
        one_device(xs=xs, gates=gates)
        op_checks.modulate_args(xs, gates, layouts)
        return None

    @torch.library.register_fake("mmcal::gate_grads")
    def _(dys, xs, layouts, ct):
        one_device(xs=xs, grad_ys=dys)
        op_checks.gate_grads_args(dys, xs, layouts, ct)
        return _per_channel(xs, layouts, ct)

    @torch.library.register_fake("mmcal::input_grads")
    def _(xs, dys, gates, masks, ds, layouts):
        one_device(xs=xs, grad_ys=dys, gates=gates, masks=masks, ds=ds)
        op_checks.input_grads_args(xs, dys, gates, masks, ds, layouts)
        return [torch.empty_like(x) for x in xs]

    @torch.library.register_fake("mmcal::gates")
    def _(summaries, params, present):
        op_checks.gates_args(summaries, params, present)
        num, s0 = len(summaries), summaries[0]
        ct, batch, d = s0.dtype, s0.shape[0], params[0].shape[0]
        gates = [s.new_empty((batch, s.shape[1]), dtype=ct) for s in summaries]
        diagnostics = [s0.new_empty((batch, num, num), dtype=ct)] + [s0.new_empty((batch, num), dtype=ct) for _ in range(3)]
        saved = [s0.new_empty((batch, num, d), dtype=ct), s0.new_empty((batch, num), dtype=ct),
                 s0.new_empty((batch, num, d), dtype=ct)]  # fmt: skip
        saved += [s0.new_empty((batch, params[8 * m + 2].shape[0]), dtype=ct) for m in range(num)]
        return gates, diagnostics + [s.new_empty((batch, s.shape[1]), dtype=ct) for s in summaries], saved

    @torch.library.register_fake("mmcal::gates_backward")
    def _(grad_gates, summaries, params, present, diagnostics, saved):
        op_checks.gates_backward_args(grad_gates, summaries, params, present, diagnostics, saved)
        # Contiguous, as the C++ op returns them, whatever the parameters' strides.
        return [s.new_empty(s.shape) for s in summaries], [p.new_empty(p.shape) for p in params]

    register_stage_autograd(OPS, "mmcal::summaries", "mmcal::modulate", "mmcal::gate_grads", "mmcal::input_grads")
    register_gates_autograd("mmcal::gates", "mmcal::gates_backward", OPS.gates_backward)
