"""Input checks shared by every public entry point (SPEC.md, "Bad input").

Each check raises before any computation, naming the argument, what it got and
what it expects. They look only at metadata (shapes, dtypes, devices), so they
are traceable by ``torch.compile`` with dynamic shapes: a comparison of sizes
becomes a guard, never a graph break.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .reference import LAYOUTS, GateParams

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def normalize_layouts(layouts, num: int, name: str = "layouts") -> list[str]:
    """One layout string for all modalities, or a list with one per modality."""
    if isinstance(layouts, str):
        layouts = [layouts] * num
    layouts = list(layouts)
    if len(layouts) != num:
        raise ValueError(f"{name}: expected one entry per modality ({num}), got {len(layouts)}")
    for i, lay in enumerate(layouts):
        if lay not in LAYOUTS:
            raise ValueError(f"{name}[{i}]: expected one of {LAYOUTS}, got {lay!r}")
    return layouts


def check_feature(x, layout: str, name: str, dtypes=FEATURE_DTYPES) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name}: unsupported dtype {x.dtype}; expected one of {_dtype_names(dtypes)}")
    if layout == "sequence" and x.dim() != 3:
        raise ValueError(f"{name}: a 'sequence' input must be [B, P, D] (3 dims), got shape {tuple(x.shape)}")
    if layout == "spatial" and x.dim() < 2:
        raise ValueError(f"{name}: a 'spatial' input must be [B, D, *S] (2 or more dims), got shape {tuple(x.shape)}")


def check_mask(mask, x: Tensor, layout: str, name: str) -> None:
    if mask is None:
        return
    if layout != "sequence":
        raise ValueError(f"{name}: masks apply to 'sequence' inputs only; this modality is 'spatial', pass None")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool tensor (True = valid position), got {got}")
    if mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: expected shape [B, P] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{name}: on {mask.device}, but the features are on {x.device}")


def check_present(present, batch: int, num: int, device: torch.device, name: str = "present") -> None:
    if present is None:
        return
    if not isinstance(present, Tensor) or present.dtype != torch.bool:
        got = present.dtype if isinstance(present, Tensor) else type(present).__name__
        raise TypeError(f"{name}: expected a bool tensor (False = modality missing), got {got}")
    if present.dim() != 2 or present.shape[0] != batch or present.shape[1] != num:
        raise ValueError(f"{name}: expected shape [B, M] = ({batch}, {num}), got {tuple(present.shape)}")
    if present.device != device:
        raise ValueError(f"{name}: on {present.device}, but the features are on {device}")


def check_features(
    features,
    layouts,
    masks=None,
    present=None,
    dims: Optional[Sequence[int]] = None,
    dtypes=FEATURE_DTYPES,
) -> tuple[list[Tensor], list[str], list[Optional[Tensor]]]:
    """All of SPEC.md's checks on one call. Returns (features, layouts, masks) as lists."""
    if isinstance(features, Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(f"features: expected a list of tensors, one per modality, got {type(features).__name__}")
    features = list(features)
    num = len(features)
    if num < 2:
        raise ValueError(f"features: calibration compares modalities, so it needs at least 2; got {num}")
    if dims is not None and num != len(dims):
        raise ValueError(f"features: the module was built for {len(dims)} modalities, got {num}")
    layouts = normalize_layouts(layouts, num)
    if masks is None:
        masks = [None] * num
    elif isinstance(masks, Tensor) or len(masks) != num:
        got = "a tensor" if isinstance(masks, Tensor) else f"{len(masks)} entries"
        raise ValueError(f"masks: expected a list with one entry (tensor or None) per modality ({num}), got {got}")
    masks = list(masks)

    first = features[0]
    for i, (x, lay) in enumerate(zip(features, layouts)):
        check_feature(x, lay, f"features[{i}]", dtypes)
        if x.dtype != first.dtype:
            raise TypeError(f"features[{i}]: dtype {x.dtype} differs from features[0]'s {first.dtype}; all features of one call share one dtype")
        if x.device != first.device:
            raise ValueError(f"features[{i}]: on {x.device}, but features[0] is on {first.device}")
        if x.shape[0] != first.shape[0]:
            raise ValueError(f"features[{i}]: batch size {x.shape[0]} differs from features[0]'s {first.shape[0]}")
        channels = x.shape[-1] if lay == "sequence" else x.shape[1]
        if dims is not None and channels != dims[i]:
            where = "last dim" if lay == "sequence" else "dim 1"
            raise ValueError(f"features[{i}]: expected {dims[i]} channels ({where} of a {lay!r} input), got {channels} in shape {tuple(x.shape)}")
        check_mask(masks[i], x, lay, f"masks[{i}]")
    check_present(present, first.shape[0], num, first.device)
    return features, layouts, masks


def check_params(params: Sequence[GateParams], device: torch.device, name: str = "params") -> list[GateParams]:
    params = [p if isinstance(p, GateParams) else GateParams(*p) for p in params]
    for m, p in enumerate(params):
        for field, t in zip(GateParams._fields, p):
            if not t.is_floating_point():
                raise TypeError(f"{name}[{m}].{field}: expected a floating-point tensor, got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{name}[{m}].{field}: on {t.device}, but the features are on {device}")
    return params
