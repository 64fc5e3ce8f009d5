"""Steps 2-6 with the gate-network op contract (docs/kernels.md, "The
gate-network ops"), in torch ops: the forward is the reference's
``gates_with_intermediates``, the backward the hand-written ``gates_backward``.

A kernel backend without gate-network kernels computes with these, so the
fused node has one shape for every backend; each call is some 80 small torch
ops forward and 130 backward, where a kernel backend's ops are one each.

* ``gates(summaries, params, present) -> (gates, diagnostics, saved)``
* ``gates_backward(grad_gates, summaries, params, present, diagnostics, saved)
  -> (grad_summaries, grad_params)``

``params`` is flat (8 tensors per modality, ``GateParams`` order);
``diagnostics`` is ``[agreement, support, conflict, instance_gate,
dimension_gate_0, ...]``; ``saved`` is whatever the backward reads (here the
reference's intermediates); parameter gradients come back in each parameter's dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from .gates_backward import gates_backward as _gates_backward
from .reference import gates_with_intermediates
from .spec import DIAGNOSTIC_TENSORS, GateParams, GatesIntermediates, autocast_off

_PER_MODALITY = ("summaries", "norm", "cues", "pre", "hidden", "instance_gate", "dimension_gate")


def grouped(flat: Sequence[Tensor]) -> list[GateParams]:
    return [GateParams(*flat[i : i + 8]) for i in range(0, len(flat), 8)]


def diagnostics_list(diag: dict) -> list[Tensor]:
    """The reference's diagnostics dict in the ops' list order."""
    return [diag[k] for k in DIAGNOSTIC_TENSORS] + list(diag["dimension_gates"])


def forward_in_ct(summaries: Sequence[Tensor], params: Sequence[Tensor], present: Optional[Tensor]):
    """The reference's ``gates_with_intermediates`` on flat ``params``, with
    autocast off: in ct, as the ops' contract says, even called inside an
    autocast region. Every torch-formula stand-in for the kernels goes
    through it (here, and the Triton fallback)."""
    with autocast_off(summaries[0].device.type):
        return gates_with_intermediates(summaries, grouped(params), present)


def backward_from(inter: GatesIntermediates, params: Sequence[Tensor], present, grad_gates):
    """``gates_backward`` from the reference's intermediates: (grad_summaries, flat
    parameter gradients, each in its parameter's dtype)."""
    with autocast_off(inter.u.device.type):  # in ct, as the ops' contract says, even called inside autocast
        grad_summaries, grads = _gates_backward(inter, grouped(params), present, list(grad_gates))
    return grad_summaries, [g.to(p.dtype) for g, p in zip((g for gp in grads for g in gp), params)]


def gates(summaries: Sequence[Tensor], params: Sequence[Tensor], present: Optional[Tensor]):
    out, diag, inter = forward_in_ct(summaries, params, present)
    diagnostics = diagnostics_list(diag)
    saved = [t for name in _PER_MODALITY for t in getattr(inter, name)]
    return out, diagnostics, saved + [inter.u, inter.w, inter.k, inter.agreement, inter.context]


def gates_backward(grad_gates, summaries, params, present, diagnostics, saved):
    num = len(summaries)
    fields = {name: list(saved[i * num : (i + 1) * num]) for i, name in enumerate(_PER_MODALITY)}
    u, w, k, agreement, context = saved[len(_PER_MODALITY) * num :]
    inter = GatesIntermediates(u=u, w=w, k=k, agreement=agreement, context=context, **fields)
    return backward_from(inter, params, present, grad_gates)
