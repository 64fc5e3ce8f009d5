"""The functional API: docs/spec.md's stages and the fused whole, each with ``backend=``.

* ``summary_pool``      step 1, one modality       ``[B, P, D]`` / ``[B, D, *S]`` -> ``[B, D]``
* ``calibration_gates`` steps 2-6, all modalities  summaries -> (gates, diagnostics)
* ``gate_modulate``     step 7, one modality       (X, g) -> Y
* ``calibrate``         steps 1-7, all modalities  what ``PreFusionCalibration`` calls

Every function checks its arguments (docs/spec.md, "Bad input") before anything
runs, then hands them to the backend that ``backend=`` resolves to for the
inputs' device. ``calibrate`` is one call on purpose: a kernel backend makes it
a single autograd node, the only shape that reaches the traffic floor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _checks, backends
from .reference import GateParams, compute_dtype


def summary_pool(
    x: Tensor,
    layout: str = "sequence",
    mask: Optional[Tensor] = None,
    *,
    compute_dtype: Optional[torch.dtype] = None,
    backend: str = "auto",
) -> Tensor:
    """Step 1: the masked mean over positions, ``[B, D]`` in the compute dtype.

    ``compute_dtype`` defaults to ``promote_types(float32, x.dtype)``.
    """
    (layout,) = _checks.normalize_layouts(layout, 1, "layout")
    impl = backends.resolve(backend, x.device.type if isinstance(x, Tensor) else "cpu")
    _checks.check_feature(x, layout, "x", impl.dtypes)
    _checks.check_mask(mask, x, layout, "mask")
    ct = compute_dtype or torch.promote_types(torch.float32, x.dtype)
    if ct not in (torch.float32, torch.float64) or ct != torch.promote_types(ct, x.dtype):
        raise TypeError(f"compute_dtype: expected float32 or float64, at least as wide as x's {x.dtype}; got {ct}")
    return impl.summary(x, layout, mask, ct)


def calibration_gates(
    summaries: Sequence[Tensor],
    params: Sequence[GateParams],
    present: Optional[Tensor] = None,
    *,
    backend: str = "auto",
) -> tuple[list[Tensor], dict]:
    """Steps 2-6: summaries ``[B, D_m]`` (float32 or float64) to gates ``[B, D_m]``.

    Returns ``(gates, diagnostics)``. The gates are where ``present`` is False
    exactly 1; the diagnostics hold the values before that pass-through.
    """
    summaries = list(summaries)
    if len(summaries) < 2:
        raise ValueError(f"summaries: calibration compares modalities, so it needs at least 2; got {len(summaries)}")
    first = summaries[0]
    for i, s in enumerate(summaries):
        if not isinstance(s, Tensor) or s.dim() != 2:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"summaries[{i}]: expected a [B, D] tensor, got {got}")
        if s.dtype not in (torch.float32, torch.float64) or s.dtype != first.dtype:
            raise TypeError(f"summaries[{i}]: expected float32 or float64, the same for all; got {s.dtype} (summaries[0] is {first.dtype})")
        if s.shape[0] != first.shape[0]:
            raise ValueError(f"summaries[{i}]: batch size {s.shape[0]} differs from summaries[0]'s {first.shape[0]}")
        if s.device != first.device:
            raise ValueError(f"summaries[{i}]: on {s.device}, but summaries[0] is on {first.device}")
    params = _check_param_list(params, [s.shape[1] for s in summaries], first.device)
    _checks.check_present(present, first.shape[0], len(summaries), first.device)
    impl = backends.resolve(backend, first.device.type)
    return impl.gates(summaries, params, present)


def gate_modulate(x: Tensor, gate: Tensor, layout: str = "sequence", *, backend: str = "auto") -> Tensor:
    """Step 7: ``Y = (X * g).to(X.dtype)`` with ``g`` ``[B, D]`` broadcast over positions."""
    (layout,) = _checks.normalize_layouts(layout, 1, "layout")
    impl = backends.resolve(backend, x.device.type if isinstance(x, Tensor) else "cpu")
    _checks.check_feature(x, layout, "x", impl.dtypes)
    if not isinstance(gate, Tensor) or not gate.is_floating_point():
        got = gate.dtype if isinstance(gate, Tensor) else type(gate).__name__
        raise TypeError(f"gate: expected a floating-point tensor, got {got}")
    channels = x.shape[-1] if layout == "sequence" else x.shape[1]
    if gate.dim() != 2 or gate.shape[0] != x.shape[0] or gate.shape[1] != channels:
        raise ValueError(f"gate: expected shape [B, D] = ({x.shape[0]}, {channels}), got {tuple(gate.shape)}")
    if gate.device != x.device:
        raise ValueError(f"gate: on {gate.device}, but x is on {x.device}")
    return impl.modulate(x, gate, layout)


def calibrate(
    features: Sequence[Tensor],
    params: Sequence[GateParams],
    *,
    layouts="sequence",
    masks: Optional[Sequence[Optional[Tensor]]] = None,
    present: Optional[Tensor] = None,
    return_diagnostics: bool = False,
    backend: str = "auto",
    dims: Optional[Sequence[int]] = None,
):
    """Steps 1-7: calibrate every modality's features against the others.

    ``params`` holds one ``GateParams`` (or 8-tuple in its order) per modality.
    ``dims``, when given, are the channel counts the caller was built for.
    Returns the list of calibrated features, or ``(list, diagnostics)``.
    """
    impl, features, params, layouts, masks = _prepare(features, params, layouts, masks, present, dims, backend)
    outputs, diagnostics = impl.calibrate(features, params, layouts, masks, present)
    return (outputs, diagnostics) if return_diagnostics else outputs


def calibrate_(
    features: Sequence[Tensor],
    params: Sequence[GateParams],
    *,
    layouts="sequence",
    masks: Optional[Sequence[Optional[Tensor]]] = None,
    present: Optional[Tensor] = None,
    return_diagnostics: bool = False,
    backend: str = "auto",
    dims: Optional[Sequence[int]] = None,
):
    """``calibrate`` for inference, writing each ``Y_m`` into ``features[m]`` in place.

    Same values as ``calibrate``; no output memory is allocated (on the CPU
    backend the modulation pass writes straight into X). Nothing is recorded
    for autograd, so it refuses inputs that need a gradient while grad mode is
    on: use it under ``torch.no_grad()`` or ``torch.inference_mode()``.
    Returns ``features`` (the same tensors), or ``(features, diagnostics)``.
    """
    impl, features, params, layouts, masks = _prepare(features, params, layouts, masks, present, dims, backend)
    if torch.is_grad_enabled() and any(t.requires_grad for t in [*features, *(t for p in params for t in p)]):
        raise RuntimeError(
            "calibrate_: writes the features in place and records nothing for autograd; "
            "call it under torch.no_grad() or torch.inference_mode(), or use calibrate()"
        )
    # Every summary is taken before the first write, so only the written
    # features themselves must not share memory (masks and present are read first).
    _checks.check_inplace_targets(features, name="features")
    ct = compute_dtype(features[0].dtype, params)
    with torch.no_grad(), torch.autocast(device_type=features[0].device.type, enabled=False):
        summaries = [impl.summary(x, lay, v, ct) for x, lay, v in zip(features, layouts, masks)]
        gates, diagnostics = impl.gates(summaries, params, present)
        impl.modulate_(features, gates, layouts)
    return (features, diagnostics) if return_diagnostics else features


def _prepare(features, params, layouts, masks, present, dims, backend):
    """The checks every whole-calibration entry point makes, and its backend."""
    backends.check_name(backend)
    first = features[0] if isinstance(features, (list, tuple)) and len(features) else None
    impl = backends.resolve(backend, first.device.type if isinstance(first, Tensor) else "cpu")
    features, layouts, masks = _checks.check_features(features, layouts, masks, present, dims, impl.dtypes)
    _checks.warn_suspicious_masks(masks, present)
    channels = [x.shape[-1] if lay == "sequence" else x.shape[1] for x, lay in zip(features, layouts)]
    params = _check_param_list(params, channels, features[0].device)
    return impl, features, params, layouts, masks


def _check_param_list(params, channels: Sequence[int], device: torch.device) -> list[GateParams]:
    params = list(params)
    if len(params) != len(channels):
        raise ValueError(f"params: expected one GateParams per modality ({len(channels)}), got {len(params)}")
    params = _checks.check_params(params, device)
    for m, (p, dm) in enumerate(zip(params, channels)):
        d = p.proj_weight.shape[0]
        if m and d != params[0].proj_weight.shape[0]:
            raise ValueError(f"params[{m}].proj_weight: shared dim d = {d} differs from params[0]'s "
                             f"{params[0].proj_weight.shape[0]}; every modality projects into one shared space")  # fmt: skip
        r = p.hidden_weight.shape[0]
        expected = {
            "proj_weight": (d, dm), "proj_bias": (d,),
            "hidden_weight": (r, 2 * d + 2), "hidden_bias": (r,),
            "instance_weight": (1, r), "instance_bias": (1,),
            "dim_weight": (dm, r), "dim_bias": (dm,),
        }  # fmt: skip
        for field, t in zip(GateParams._fields, p):
            if tuple(t.shape) != expected[field]:
                raise ValueError(f"params[{m}].{field}: expected shape {expected[field]}, got {tuple(t.shape)}")
    return params


__all__ = ["GateParams", "calibrate", "calibrate_", "calibration_gates", "compute_dtype", "gate_modulate", "summary_pool"]
