"""Argument checks of the Triton ops: bad input is a ValueError or TypeError
that names the argument, never an out-of-bounds kernel. Shape-only, so they
also run on fake tensors under ``torch.compile``."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _checks, reference
from ..pass_ops import LAYOUT_NAMES
from .slots import SEQUENCE, SPATIAL

COMPUTE_DTYPES = (torch.float32, torch.float64)


def _fail(cls, message: str):
    raise cls(message)


def lengths(name: str, items: Sequence, count: int, what: str = "xs") -> None:
    if len(items) != count:
        _fail(ValueError, f"{name}: expected one entry per tensor of {what} ({count}), got {len(items)}")


def features(xs: Sequence[Tensor], layouts: Sequence[int], name: str = "xs") -> None:
    if len(xs) == 0:
        _fail(ValueError, f"{name}: expected at least one tensor")
    lengths("layouts", layouts, len(xs), name)
    first = xs[0]
    for i, (x, layout) in enumerate(zip(xs, layouts)):
        where = f"{name}[{i}]"
        if layout not in (SEQUENCE, SPATIAL):
            _fail(ValueError, f"layouts[{i}]: expected 0 (sequence) or 1 (spatial), got {layout}")
        _checks.check_feature(x, LAYOUT_NAMES[layout], where)
        if x.dtype != first.dtype:
            _fail(TypeError, f"{where}: dtype {x.dtype} differs from {name}[0]'s {first.dtype}")
        if x.device != first.device:
            _fail(ValueError, f"{where}: on {x.device}, but {name}[0] is on {first.device}")
        if x.shape[0] != first.shape[0]:
            _fail(ValueError, f"{where}: batch {x.shape[0]} differs from {name}[0]'s {first.shape[0]}")


def channels(x: Tensor, layout: int) -> int:
    return reference.channels(x, LAYOUT_NAMES[layout])


def compute_dtype(ct: torch.dtype, x: Tensor, name: str = "ct") -> None:
    if ct not in COMPUTE_DTYPES or torch.promote_types(ct, x.dtype) != ct:
        _fail(TypeError, f"{name}: the compute dtype must be float32 or float64 and hold {x.dtype}, got {ct}")


def like(t: Tensor, x: Tensor, name: str) -> None:
    """A gradient of ``Y = f(X)``: X's shape, dtype and device."""
    if not isinstance(t, Tensor):
        _fail(TypeError, f"{name}: expected a tensor, got {type(t).__name__}")
    if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
        _fail(ValueError, f"{name}: expected {tuple(x.shape)} {x.dtype} on {x.device}, "
                          f"got {tuple(t.shape)} {t.dtype} on {t.device}")  # fmt: skip


def per_channel(g: Tensor, x: Tensor, layout: int, name: str) -> None:
    """A gate (or ds): ``[B, D]`` in the compute dtype, on X's device: the products are taken in it."""
    if not isinstance(g, Tensor):
        _fail(TypeError, f"{name}: expected a tensor, got {type(g).__name__}")
    if g.dtype not in COMPUTE_DTYPES or torch.promote_types(g.dtype, x.dtype) != g.dtype:
        _fail(TypeError, f"{name}: expected the compute dtype (float32 or float64, holding {x.dtype}), got {g.dtype}")
    if g.dim() != 2 or g.shape[0] != x.shape[0] or g.shape[1] != channels(x, layout):
        _fail(ValueError, f"{name}: expected [{x.shape[0]}, {channels(x, layout)}], got {tuple(g.shape)}")
    if g.device != x.device:
        _fail(ValueError, f"{name}: on {g.device}, but the features are on {x.device}")


def mask(m: Optional[Tensor], x: Tensor, layout: int, name: str) -> None:
    _checks.check_mask(m, x, LAYOUT_NAMES[layout], name)
