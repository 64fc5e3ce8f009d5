"""docs/spec.md in plain PyTorch: the oracle every kernel backend is tested against.

Split by the stages of the spec so that each can be checked alone and so that a
kernel backend can reuse steps 2-6 (``gates_from_summaries``) for its backward
through ``torch.func.vjp``:

* ``summary``               step 1, one modality: masked mean over positions;
* ``gates_from_summaries``  steps 2-6, all modalities: summaries -> gates
                            (``gates_with_intermediates`` also keeps what a backward needs);
* ``modulate``              step 7, one modality: ``Y = (X.to(ct) * g).to(X.dtype)``;
* ``calibrate``             steps 1-7 composed.

Nothing here validates its inputs: the public entry points in ``functional`` do that
before any computation. Keep this file obviously correct rather than clever.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import NORM_EPS, GateParams, GatesIntermediates, at_least_one, autocast_off, compute_dtype


def summary(x: Tensor, layout: str, mask: Optional[Tensor] = None, ct: Optional[torch.dtype] = None) -> Tensor:
    """Step 1: ``s[b] = sum_p V[b,p] X[b,p,:] / max(1, sum_p V[b,p])``, shape ``[B, D]`` in ``ct``."""
    ct = ct or torch.promote_types(torch.float32, x.dtype)
    xc = x.to(ct)
    if layout == "sequence":
        if mask is None:
            return xc.sum(1) / at_least_one(x.shape[1])
        # A selection, not a product: a NaN at a padded position must reach
        # neither the sum nor (through the where's backward) the gradient.
        total = torch.where(mask.unsqueeze(-1), xc, 0).sum(1)
        count = mask.sum(1, keepdim=True).to(ct).clamp_min(1)
        return total / count
    flat = xc.flatten(2) if x.dim() > 2 else xc.unsqueeze(-1)  # [B, D, P]; P = 1 for [B, D]
    return flat.sum(-1) / at_least_one(flat.shape[-1])


def gates_with_intermediates(
    summaries: Sequence[Tensor],
    params: Sequence[GateParams],
    present: Optional[Tensor] = None,
) -> tuple[list[Tensor], dict, GatesIntermediates]:
    """Steps 2-6: the summaries ``[B, D_m]`` (in ``ct``) to the gates ``g_m`` ``[B, D_m]``.

    Returns ``(gates, diagnostics, intermediates)``; the diagnostics are
    detached and hold the values before step 6's pass-through for missing
    modalities.
    """
    ct = summaries[0].dtype
    batch, num, device = summaries[0].shape[0], len(summaries), summaries[0].device

    # Step 2: project to the shared space and normalise.
    norms, units = [], []
    for s, p in zip(summaries, params):
        h = F.linear(s, p.proj_weight.to(ct), p.proj_bias.to(ct))
        norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True)
        norms.append(norm), units.append(h / norm.clamp_min(NORM_EPS))
    u = torch.stack(units, 1)  # [B, M, d]

    # Step 3: agreement, and support/conflict/context over the present others.
    # torch.bmm, not `@`: on fake tensors torch 2.11's 3-d matmul specialises B.
    agreement = torch.bmm(u, u.transpose(1, 2))  # [B, M, M]
    if present is None:
        present = torch.ones(batch, num, dtype=torch.bool, device=device)
    others = ~torch.eye(num, dtype=torch.bool, device=device)
    w = (present.unsqueeze(1) & others).to(ct)  # w[b, m, n] = pi[b, n], n != m
    k = w.sum(-1).clamp_min(1)  # [B, M]
    support = (w * torch.relu(agreement)).sum(-1) / k
    conflict = (w * torch.relu(-agreement)).sum(-1) / k
    context = torch.bmm(w, u) / k.unsqueeze(-1)  # [B, M, d]

    gates, cues, pres, hidden, instance_gates, dimension_gates = [], [], [], [], [], []
    for m, p in enumerate(params):
        um, cm = units[m], context[:, m]
        # Step 4: the cue vector, length 2d + 2.
        cue = torch.cat([um * cm, um - cm, support[:, m : m + 1], conflict[:, m : m + 1]], dim=-1)
        # Step 5: the gate network (exact erf GELU).
        pre = F.linear(cue, p.hidden_weight.to(ct), p.hidden_bias.to(ct))
        e = F.gelu(pre)
        a = F.linear(e, p.instance_weight.to(ct), p.instance_bias.to(ct))  # [B, 1]
        z = F.linear(e, p.dim_weight.to(ct), p.dim_bias.to(ct))  # [B, D_m]
        # Step 6: the gate in (0, 4); a missing modality passes through.
        instance_gate = 2 * torch.sigmoid(a)
        dimension_gate = 2 * torch.sigmoid(z)
        gates.append(torch.where(present[:, m : m + 1], instance_gate * dimension_gate, 1.0))
        cues.append(cue), pres.append(pre), hidden.append(e)
        instance_gates.append(instance_gate), dimension_gates.append(dimension_gate)

    diagnostics = {
        "agreement": agreement.detach(),
        "support": support.detach(),
        "conflict": conflict.detach(),
        "instance_gate": torch.cat(instance_gates, 1).detach(),
        "dimension_gates": [g.detach() for g in dimension_gates],
    }
    intermediates = GatesIntermediates(
        list(summaries), norms, u, w, k, agreement, context, cues, pres, hidden, instance_gates, dimension_gates
    )
    return gates, diagnostics, intermediates


def gates_from_summaries(
    summaries: Sequence[Tensor],
    params: Sequence[GateParams],
    present: Optional[Tensor] = None,
) -> tuple[list[Tensor], dict]:
    """Steps 2-6 as ``(gates, diagnostics)``; see ``gates_with_intermediates``."""
    gates, diagnostics, _ = gates_with_intermediates(summaries, params, present)
    return gates, diagnostics


def modulate(x: Tensor, gate: Tensor, layout: str) -> Tensor:
    """Step 7: ``Y = (X.to(ct) * g).to(X.dtype)`` at every position, padded ones included."""
    ct = torch.promote_types(torch.promote_types(torch.float32, x.dtype), gate.dtype)
    if layout == "sequence":
        g = gate.unsqueeze(1)  # [B, 1, D]
    else:
        g = gate.reshape(gate.shape + (1,) * (x.dim() - 2))  # [B, D, 1, ...]
    # The product follows x's strides (TensorIterator), so channels_last stays.
    y = (x.to(ct) * g.to(ct)).to(x.dtype)
    if not torch.jit.is_tracing() and any(n > 1 and st == 0 for n, st in zip(x.shape, x.stride())):
        # Where x is expanded (a stride 0: it overlaps itself) TensorIterator may
        # take the gate's layout instead; docs/spec.md allocates every output
        # like its input, as the kernel backends do (torch.empty_like). The
        # strides torch.jit.trace records are tensors, which the test cannot read.
        y = torch.empty_like(x).copy_(y)
    return y


def modulate_(features: Sequence[Tensor], gates: Sequence[Tensor], layouts: Sequence[str]) -> None:
    """Step 7 in place, for inference: ``X *= g`` computed in the gate's dtype, rounded once."""
    for x, gate, layout in zip(features, gates, layouts):
        g = gate.unsqueeze(1) if layout == "sequence" else gate.reshape(gate.shape + (1,) * (x.dim() - 2))
        x.mul_(g)


def calibrate(
    features: Sequence[Tensor],
    params: Sequence[GateParams],
    layouts: Sequence[str],
    masks: Optional[Sequence[Optional[Tensor]]] = None,
    present: Optional[Tensor] = None,
) -> tuple[list[Tensor], dict]:
    """Steps 1-7 for all modalities. Returns ``(outputs, diagnostics)``."""
    masks = list(masks) if masks is not None else [None] * len(features)
    ct = compute_dtype(features[0].dtype, params)
    # Steps 1-6 run in ct whatever autocast says; step 7 rounds once.
    with autocast_off(features[0].device.type):
        summaries = [summary(x, lay, v, ct) for x, lay, v in zip(features, layouts, masks)]
        gates, diagnostics = gates_from_summaries(summaries, params, present)
        outputs = [modulate(x, g, lay) for x, g, lay in zip(features, gates, layouts)]
    return outputs, diagnostics
