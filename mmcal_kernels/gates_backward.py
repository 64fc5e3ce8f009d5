"""The backward of steps 2-6 written out in plain torch ops, from the
intermediates ``reference.gates_with_intermediates`` keeps.

The fused backends make steps 1-7 one autograd node (docs/spec.md's hot path): its
backward gets ``dg`` from one pass over ``dY`` and ``X``, runs these small
``[B, D]``-sized formulas for ``ds`` and the parameter gradients, then writes
``dX`` in one more pass. Plain torch ops, not ``torch.autograd.grad`` or
``torch.func.vjp``, so that ``torch.compile`` traces the whole backward without
a graph break. ``tests/test_gates_backward.py`` checks every gradient against
autograd of ``reference.gates_from_summaries`` in float64.

The derivatives follow the reference's ops exactly: ``clamp_min`` passes the
gradient where its input is >= the bound, ``relu'(0) = 0``, exact erf GELU.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .reference import NORM_EPS, GateParams, GatesIntermediates


def _gelu_grad(x: Tensor) -> Tensor:
    cdf = 0.5 * (1 + torch.erf(x * (1 / math.sqrt(2))))
    pdf = torch.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    return cdf + x * pdf


def gates_backward(
    saved: GatesIntermediates, params: Sequence[GateParams], present: Optional[Tensor], grad_gates: Sequence[Tensor]
) -> tuple[list[Tensor], list[GateParams]]:
    """Gradients of steps 2-6: (d summaries, d params) from d gates, all in the compute dtype.

    Parameter gradients come back in the compute dtype; the caller casts them
    to each parameter's dtype.
    """
    ct = saved.u.dtype
    d = saved.u.shape[-1]
    du = torch.zeros_like(saved.u)
    dcontext = torch.zeros_like(saved.context)
    dsupport, dconflict = [], []
    param_grads = []
    for m, p in enumerate(params):
        g = grad_gates[m].to(ct)
        if present is not None:
            g = torch.where(present[:, m : m + 1], g, 0.0)
        ig, dg, e = saved.instance_gate[m], saved.dimension_gate[m], saved.hidden[m]
        d_ig = (g * dg).sum(-1, keepdim=True)
        da = d_ig * ig * (1 - 0.5 * ig)  # d(2 sigmoid(a))/da = 2 s (1 - s), s = ig / 2
        dz = g * ig * dg * (1 - 0.5 * dg)
        w_inst, w_dim, w_hid = p.instance_weight.to(ct), p.dim_weight.to(ct), p.hidden_weight.to(ct)
        de = da @ w_inst + dz @ w_dim
        dpre = de * _gelu_grad(saved.pre[m])
        dcue = dpre @ w_hid
        um, cm = saved.u[:, m], saved.context[:, m]
        dq1, dq2 = dcue[:, :d], dcue[:, d : 2 * d]
        du[:, m] += dq1 * cm + dq2
        dcontext[:, m] += dq1 * um - dq2
        dsupport.append(dcue[:, 2 * d]), dconflict.append(dcue[:, 2 * d + 1])
        param_grads.append([dpre.T @ saved.cues[m], dpre.sum(0), da.T @ e, da.sum(0), dz.T @ e, dz.sum(0)])

    # Step 3: support, conflict and context back to the agreement and the units.
    w, k, agreement = saved.w, saved.k, saved.agreement
    dS = torch.stack(dsupport, 1) / k  # [B, M]
    dC = torch.stack(dconflict, 1) / k
    dA = w * (dS.unsqueeze(-1) * (agreement > 0) - dC.unsqueeze(-1) * (agreement < 0))
    du = du + (dA + dA.transpose(1, 2)) @ saved.u
    du = du + w.transpose(1, 2) @ (dcontext / k.unsqueeze(-1))

    # Step 2: normalisation and projection.
    grad_summaries, grads = [], []
    for m, p in enumerate(params):
        norm = saved.norm[m]
        clamped = norm.clamp_min(NORM_EPS)
        dum, um = du[:, m], saved.u[:, m]
        # u = h / max(||h||, eps). Where the norm is differentiated (||h|| >=
        # eps) the gradient is du's part orthogonal to u, over ||h||: written as
        # that projection, not as autograd's difference of two terms of size
        # |du| / ||h||, it cancels exactly where it is zero (d = 1: u = +-1 is
        # locally constant) and stays finite where ||h|| overflows (u = 0).
        radial = torch.where(norm >= NORM_EPS, (um * dum).sum(-1, keepdim=True), 0.0)
        dh = (dum - um * radial) / clamped
        grad_summaries.append(dh @ p.proj_weight.to(ct))
        hidden_w, hidden_b, inst_w, inst_b, dim_w, dim_b = param_grads[m]
        grads.append(GateParams(dh.T @ saved.summaries[m], dh.sum(0), hidden_w, hidden_b, inst_w, inst_b, dim_w, dim_b))
    return grad_summaries, grads
