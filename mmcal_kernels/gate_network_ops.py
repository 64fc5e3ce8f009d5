"""The Python side of the gate-network ops ``mmcal::gates`` and
``mmcal::gates_backward`` (steps 2-6 of docs/spec.md as two ops, all
modalities at once; C++ in csrc/cpu/gate_network.cpp): their fake kernels,
their autograd, and ``gates_op``, the call in the reference's form.

Argument layout (the contract shared with the Triton ops):
``gates(summaries, params, present) -> (gates, diagnostics, saved)`` with
``params`` the 8*M tensors modality by modality in ``GateParams`` order,
``diagnostics = [agreement, support, conflict, instance_gate, dimension_gate_0..M-1]``
and ``saved = [u, norm, context, pre_0..M-1]``;
``gates_backward(grad_gates, summaries, params, present, diagnostics, saved)
-> (grad_summaries, grad_params)``, each parameter gradient in its parameter's dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .fused import refuse_second_derivative

PER_MODALITY = 8  # len(GateParams)
GATES_OP = "mmcal::gates"
GATES_BACKWARD_OP = "mmcal::gates_backward"


def _one_device(summaries, **items) -> None:
    """Every tensor on summaries[0]'s device, as the C++ ops check: an argument
    on ``meta`` sends the call to the fake kernel, which must refuse it too."""
    device = summaries[0].device
    for name, value in (("summaries", summaries), *items.items()):
        if isinstance(value, (list, tuple)):
            for i, t in enumerate(value):
                if t is not None and t.device != device:
                    raise ValueError(f"{name}[{i}]: on {t.device}, but summaries[0] is on {device}")
        elif value is not None and value.device != device:
            raise ValueError(f"{name}: on {value.device}, but summaries[0] is on {device}")


def _check_lengths(summaries, params) -> int:
    num = len(summaries)
    if num < 2:
        raise ValueError(f"summaries: expected one tensor per modality, at least 2, got {num}")
    if len(params) != PER_MODALITY * num:
        raise ValueError(f"params: expected {PER_MODALITY} tensors per modality ({PER_MODALITY * num} for {num} "
                         f"modalities), got {len(params)}")  # fmt: skip
    ct = summaries[0].dtype
    if ct not in (torch.float32, torch.float64):
        raise TypeError(f"summaries[0]: its dtype is the compute dtype, float32 or float64; got {ct}")
    return num


def _gates_fake(summaries, params, present):
    num = _check_lengths(summaries, params)
    _one_device(summaries, params=params, present=present)
    s0, ct = summaries[0], summaries[0].dtype
    batch, d = s0.shape[0], params[0].shape[0]
    gates = [s.new_empty((batch, s.shape[1]), dtype=ct) for s in summaries]
    diagnostics = [s0.new_empty((batch, num, num), dtype=ct)] + [s0.new_empty((batch, num), dtype=ct) for _ in range(3)]
    diagnostics += [s.new_empty((batch, s.shape[1]), dtype=ct) for s in summaries]
    saved = [s0.new_empty((batch, num, d), dtype=ct), s0.new_empty((batch, num), dtype=ct),
             s0.new_empty((batch, num, d), dtype=ct)]  # fmt: skip
    saved += [s0.new_empty((batch, params[PER_MODALITY * m + 2].shape[0]), dtype=ct) for m in range(num)]
    return gates, diagnostics, saved


def _gates_backward_fake(grad_gates, summaries, params, present, diagnostics, saved):
    num = _check_lengths(summaries, params)
    _one_device(summaries, grad_gates=grad_gates, params=params, present=present, diagnostics=diagnostics, saved=saved)
    if len(grad_gates) != num:
        raise ValueError(f"grad_gates: expected one tensor per modality ({num}), got {len(grad_gates)}")
    ct = summaries[0].dtype
    # Contiguous, as the C++ op returns them, whatever the parameters' strides.
    return [s.new_empty(s.shape, dtype=ct) for s in summaries], [p.new_empty(p.shape) for p in params]


def _gates_setup(ctx, inputs, output):
    summaries, params, present = inputs
    _, diagnostics, saved = output
    ctx.num, ctx.has_present = len(summaries), present is not None
    ctx.mark_non_differentiable(*diagnostics, *saved)
    ctx.save_for_backward(*summaries, *params, *([present] if present is not None else []), *diagnostics, *saved)


def _gates_backward(ctx, grad_gates, _grad_diagnostics, _grad_saved):
    refuse_second_derivative(GATES_OP)
    num, saved = ctx.num, list(ctx.saved_tensors)
    summaries, saved = saved[:num], saved[num:]
    params, saved = saved[: PER_MODALITY * num], saved[PER_MODALITY * num :]
    present = saved.pop(0) if ctx.has_present else None
    diagnostics, inter = saved[: 4 + num], saved[4 + num :]
    # A gate that reached no loss has no gradient: zeros, which the op needs as a tensor.
    grad_gates = [g if g is not None else torch.zeros_like(s) for g, s in zip(grad_gates, summaries)]
    grad_summaries, grad_params = torch.ops.mmcal.gates_backward(grad_gates, summaries, params, present, diagnostics, inter)
    return list(grad_summaries), list(grad_params), None


def _gates_backward_has_no_derivative(ctx, *grads):
    raise RuntimeError(f"{GATES_BACKWARD_OP} is a backward pass and has no derivative of its own (a second derivative "
                       "through the kernel backends is not supported; use backend='reference' for it)")  # fmt: skip


def register_cpp_gate_ops() -> None:
    """Fake kernels and autograd of the C++ gate-network ops (once the extension has loaded)."""
    torch.library.register_fake(GATES_OP)(_gates_fake)
    torch.library.register_fake(GATES_BACKWARD_OP)(_gates_backward_fake)
    torch.library.register_autograd(GATES_OP, _gates_backward, setup_context=_gates_setup)
    # Without an autograd kernel torch would let a graph through the backward
    # op and give zero with a warning: a silently wrong second derivative.
    torch.library.register_autograd(GATES_BACKWARD_OP, _gates_backward_has_no_derivative,
                                    setup_context=lambda ctx, inputs, output: None)  # fmt: skip


def flat_params(params) -> list[Tensor]:
    """The op's ``params``: ``GateParams`` per modality flattened, or an already flat list as it is."""
    params = list(params)
    if params and isinstance(params[0], (tuple, list)):
        return [t for p in params for t in p]
    return params


def diagnostics_dict(diagnostics: Sequence[Tensor]) -> dict:
    """The op's diagnostics list in the reference's dict form."""
    return {
        "agreement": diagnostics[0],
        "support": diagnostics[1],
        "conflict": diagnostics[2],
        "instance_gate": diagnostics[3],
        "dimension_gates": list(diagnostics[4:]),
    }


def gates_op(summaries: Sequence[Tensor], params, present: Optional[Tensor] = None):
    """Steps 2-6 through ``mmcal::gates``: ``(gates, diagnostics, saved)`` with the
    diagnostics in ``reference.gates_with_intermediates``' dict form and ``saved``
    the op's list ``[u, norm, context, pre_0, ...]``. ``params``: one ``GateParams``
    per modality, or the 8*M tensors flat. Differentiable through ``mmcal::gates_backward``."""
    gates, diagnostics, saved = torch.ops.mmcal.gates(list(summaries), flat_params(params), present)
    return list(gates), diagnostics_dict(diagnostics), list(saved)
