"""Steps 1-7 for all modalities as ONE autograd node (docs/spec.md, "The hot path").

A kernel backend supplies the four passes over X (``XPasses``); this file
supplies the rest, the same for every backend:

* forward: summaries of every modality (one pass), steps 2-6 on small tensors,
  modulation of every modality (one pass);
* backward: ``dg = sum_p dY * X`` (one pass), the hand-written backward of
  steps 2-6 (``gates_backward``) for ``ds`` and the parameter gradients, then
  ``dX = dY * g + V * ds / count`` written once, skipped when no feature needs
  a gradient.

Everything between the passes is plain torch code, so ``torch.compile`` traces
forward and backward whole. Double backward is not supported and says so.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .gates_backward import gates_backward
from .reference import (
    DIAGNOSTIC_TENSORS,
    GateParams,
    GatesIntermediates,
    at_least_one,
    compute_dtype,
    gates_with_intermediates,
)



class XPasses(NamedTuple):
    """The passes over X a backend provides; each takes all modalities at once.

    * ``summaries(xs, masks, layouts, ct) -> [B, D_m] in ct``, the masked means;
    * ``modulate(xs, gates, layouts) -> Y_m`` like ``X_m``, ``X * g`` rounded once;
    * ``gate_grads(dys, xs, layouts, ct) -> [B, D_m] in ct``, ``sum_p dY * X``;
    * ``input_grads(xs, dys, gates, masks, ds_scaled, layouts) -> dX_m`` like
      ``X_m``: ``dY * g + V * ds_scaled``, either term None to leave it out;
      with ``input_grads_divides``, it takes ``ds`` and divides by the count
      (``position_counts``) itself: ``dY * g + V * ds / count``.
    """

    summaries: Callable
    modulate: Callable
    gate_grads: Callable
    input_grads: Callable
    input_grads_divides: bool = False


def position_counts(x: Tensor, layout: str, mask: Optional[Tensor], ct: torch.dtype) -> Tensor:
    """``max(1, sum_p V[b, p])`` as ``[B, 1]`` in ct: the divisor of the summary."""
    if layout == "sequence" and mask is not None:
        return mask.sum(1, keepdim=True).to(ct).clamp_min(1)
    positions = x.shape[1] if layout == "sequence" else math.prod(x.shape[2:])
    return x.new_full((x.shape[0], 1), at_least_one(positions), dtype=ct)


def refuse_second_derivative(what: str) -> None:
    """A backward run with create_graph=True (grad mode on) would have to
    differentiate the kernel backends' backward passes, which have no
    derivative: refuse before computing (SPEC: double backward says so)."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what}: a second derivative (create_graph=True, torch.autograd.functional.hvp, a gradient "
                           "penalty) is not supported by the kernel backends; use backend='reference' for it")  # fmt: skip


def make_fused_function(passes: XPasses, name: str) -> type:
    """An autograd.Function running steps 1-7 with ``passes`` over X."""

    def forward(ctx, layouts, num, present, *flat):
        features, masks, params = _unflatten(num, flat)
        ct = compute_dtype(features[0].dtype, params)
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            summaries = passes.summaries(features, masks, layouts, ct)
            gates, diag, inter = gates_with_intermediates(summaries, params, present)
            outputs = passes.modulate(features, gates, layouts)
        ctx.layouts, ctx.num = layouts, num
        ctx.has_present = present is not None
        ctx.mask_slots = [m is not None for m in masks]
        ctx.save_for_backward(
            *features, *[m for m in masks if m is not None], *([present] if present is not None else []),
            *[t for p in params for t in p], *gates, *_flatten_saved(inter),
        )  # fmt: skip
        extras = [diag[k] for k in DIAGNOSTIC_TENSORS] + diag["dimension_gates"]
        ctx.mark_non_differentiable(*extras)
        return (*outputs, *extras)

    def backward(ctx, *grads):
        # create_graph=True runs the backward with grad mode on. Nothing here
        # is differentiable again, and a silently constant gradient (what
        # once_differentiable gives when only the saved inputs need grad) is
        # a wrong result: refuse instead.
        refuse_second_derivative(f"the fused calibration node ({name} kernels)")
        num, layouts = ctx.num, ctx.layouts
        saved = list(ctx.saved_tensors)
        features, saved = saved[:num], saved[num:]
        masks = []
        for has in ctx.mask_slots:
            masks.append(saved.pop(0) if has else None)
        present = saved.pop(0) if ctx.has_present else None
        flat_params, saved = saved[: 8 * num], saved[8 * num :]
        params = [GateParams(*flat_params[8 * m : 8 * m + 8]) for m in range(num)]
        gates, inter = saved[:num], _unflatten_saved(num, saved[num:])
        grad_outputs = list(grads[:num])
        ct = gates[0].dtype

        needs = ctx.needs_input_grad[3:]  # after layouts, num, present
        need_x = any(needs[:num])
        need_p = any(needs[2 * num :])
        if not (need_x or need_p):
            return (None,) * (3 + len(needs))
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            dg = passes.gate_grads(grad_outputs, features, layouts, ct)
            ds, dparams = gates_backward(inter, params, present, dg)
            grad_features = [None] * num
            if need_x:
                if not passes.input_grads_divides:
                    ds = [d / position_counts(x, lay, v, ct) for d, x, lay, v in zip(ds, features, layouts, masks)]
                grad_features = passes.input_grads(features, grad_outputs, gates, masks, ds, layouts)
                grad_features = [g if n else None for g, n in zip(grad_features, needs[:num])]
        grad_params = [
            g.to(p.dtype) if n else None
            for gp, pp, nn in zip(dparams, params, _chunks(needs[2 * num :], 8))
            for g, p, n in zip(gp, pp, nn)
        ]
        return (None, None, None, *grad_features, *([None] * num), *grad_params)

    return type(f"Fused{name.capitalize()}Calibration", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward),
    })  # fmt: skip


_PER_MODALITY = ("summaries", "norm", "cues", "pre", "hidden", "instance_gate", "dimension_gate")


def _flatten_saved(saved: GatesIntermediates) -> list[Tensor]:
    """Steps 2-6's intermediates as a flat tensor list (small: [B, D]-sized)."""
    flat = [t for name in _PER_MODALITY for t in getattr(saved, name)]
    return flat + [saved.u, saved.w, saved.k, saved.agreement, saved.context]


def _unflatten_saved(num: int, flat: Sequence[Tensor]) -> GatesIntermediates:
    fields = {name: list(flat[i * num : (i + 1) * num]) for i, name in enumerate(_PER_MODALITY)}
    u, w, k, agreement, context = flat[len(_PER_MODALITY) * num :]
    return GatesIntermediates(u=u, w=w, k=k, agreement=agreement, context=context, **fields)


def _chunks(seq, n):
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def _unflatten(num: int, flat: Sequence) -> tuple[list, list, list[GateParams]]:
    features, masks, flat_params = list(flat[:num]), list(flat[num : 2 * num]), flat[2 * num :]
    return features, masks, [GateParams(*flat_params[8 * m : 8 * m + 8]) for m in range(num)]


def fused_calibrate(function: type, features, params, layouts, masks, present) -> tuple[list[Tensor], dict]:
    """``reference.calibrate``'s signature, computed by the fused ``function``."""
    num = len(features)
    masks = list(masks) if masks is not None else [None] * num
    flat = [*features, *masks, *[t for p in params for t in p]]
    out = function.apply(tuple(layouts), num, present, *flat)
    outputs, extras = list(out[:num]), out[num:]
    diagnostics = dict(zip(DIAGNOSTIC_TENSORS, extras[:4]))
    diagnostics["dimension_gates"] = list(extras[4:])
    return outputs, diagnostics
