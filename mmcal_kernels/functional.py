"""The functional API: docs/spec.md's stages and the fused whole, each with ``backend=``.

* ``summary_pool``      step 1, one modality       ``[B, P, D]`` / ``[B, D, *S]`` -> ``[B, D]``
* ``calibration_gates`` steps 2-6, all modalities  summaries -> (gates, diagnostics)
* ``gate_modulate``     step 7, one modality       (X, g) -> Y
* ``calibrate``         steps 1-7, all modalities  what ``PreFusionCalibration`` calls
* ``calibrate_``        steps 1-7, in place        inference: Y written into the features

Every function checks its arguments (docs/spec.md, "Bad input") before anything
runs, then hands them to the backend that ``backend=`` resolves to for the
inputs' device. ``calibrate`` is one call on purpose: a kernel backend makes it
a single autograd node, the only shape that reaches the traffic floor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import backends, checks
from .spec import GateParams, autocast_off, channels, compute_dtype


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
    (layout,) = checks.normalize_layouts(layout, 1, "layout")
    impl = backends.resolve(backend, x.device.type if isinstance(x, Tensor) else "cpu", inputs=(x, mask))
    checks.check_feature(x, layout, "x", impl.dtypes)
    checks.check_mask(mask, x, layout, "mask")
    ct = compute_dtype or torch.promote_types(torch.float32, x.dtype)
    checks.check_compute_dtype(ct, x)
    with autocast_off(x.device.type):
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
    summaries = checks.check_summaries(summaries)
    first = summaries[0]
    params = checks.check_param_list(params, [s.shape[1] for s in summaries], first.device)
    checks.check_present(present, first.shape[0], len(summaries), first.device)
    impl = backends.resolve(backend, first.device.type, inputs=(summaries, params))
    with autocast_off(first.device.type):  # docs/spec.md, "Numerics": steps 2-6 in ct, as calibrate runs them
        return impl.gates(summaries, params, present)


def gate_modulate(x: Tensor, gate: Tensor, layout: str = "sequence", *, backend: str = "auto") -> Tensor:
    """Step 7: ``Y = (X * g).to(X.dtype)`` with ``g`` ``[B, D]`` broadcast over positions."""
    (layout,) = checks.normalize_layouts(layout, 1, "layout")
    impl = backends.resolve(backend, x.device.type if isinstance(x, Tensor) else "cpu", inputs=(x, gate))
    checks.check_feature(x, layout, "x", impl.dtypes)
    checks.check_gate(gate, x, layout)
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
    return _calibrate(features, params, layouts, masks, present, return_diagnostics, backend, dims)


def _calibrate(features, params, layouts, masks, present, return_diagnostics, backend, dims, param_name=None):
    """``calibrate``; ``param_name`` names a parameter in an error (the module's layer names)."""
    impl, features, params, layouts, masks = _prepare(features, params, layouts, masks, present, dims, backend, param_name)
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
    return _calibrate_(features, params, layouts, masks, present, return_diagnostics, backend, dims)


def _calibrate_(features, params, layouts, masks, present, return_diagnostics, backend, dims, param_name=None):
    """``calibrate_``; ``param_name`` as in ``_calibrate``."""
    impl, features, params, layouts, masks = _prepare(features, params, layouts, masks, present, dims, backend, param_name)
    checks.refuse_grad_in_place([*features, *(t for p in params for t in p)])
    # Every summary is taken before the first write, so only the written
    # features themselves must not share memory (masks and present are read first).
    checks.check_inplace_targets(features, name="features")
    with torch.no_grad():
        if impl.calibrate_ is not None:  # a kernel backend: three ops, as in its forward
            diagnostics = impl.calibrate_(features, params, layouts, masks, present)
        else:
            ct = compute_dtype(features[0].dtype, params)
            with autocast_off(features[0].device.type):
                summaries = [impl.summary(x, lay, v, ct) for x, lay, v in zip(features, layouts, masks)]
                gates, diagnostics = impl.gates(summaries, params, present)
                impl.modulate_(features, gates, layouts)
    return (features, diagnostics) if return_diagnostics else features


def _prepare(features, params, layouts, masks, present, dims, backend, param_name=None):
    """The checks every whole-calibration entry point makes, and its backend."""
    backends.check_name(backend)
    first = features[0] if isinstance(features, (list, tuple)) and len(features) else None
    device_type = first.device.type if isinstance(first, Tensor) else "cpu"
    impl = backends.resolve(backend, device_type, inputs=(features if isinstance(features, (list, tuple)) else (), params))
    features, layouts, masks = checks.check_features(features, layouts, masks, present, dims, impl.dtypes)
    checks.warn_suspicious_masks(masks, present)
    counts = [channels(x, lay) for x, lay in zip(features, layouts)]
    params = checks.check_param_list(params, counts, features[0].device, param_name=param_name)
    return impl, features, params, layouts, masks


__all__ = ["GateParams", "calibrate", "calibrate_", "calibration_gates", "compute_dtype", "gate_modulate", "summary_pool"]
