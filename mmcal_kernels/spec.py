"""docs/spec.md's facts, each stated once: the parameters, the layouts and
their op codes, the compute dtype, the channel count, the summary's divisor,
and the names of the diagnostics. Every other module (the reference, the
checks, the autograd layer, the kernels' launchers) reads them from here.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

LAYOUTS = ("sequence", "spatial")
# The kernel ops take layouts as ints (csrc/common/checks.h states the same codes for C++).
LAYOUT_CODES = {name: code for code, name in enumerate(LAYOUTS)}
SEQUENCE, SPATIAL = LAYOUT_CODES["sequence"], LAYOUT_CODES["spatial"]

NORM_EPS = 1e-6  # step 2: u = h / max(||h||, NORM_EPS)
DIAGNOSTIC_TENSORS = ("agreement", "support", "conflict", "instance_gate")  # and "dimension_gates", a list


class GateParams(NamedTuple):
    """The parameters of one modality, in docs/spec.md's order and shapes."""

    proj_weight: Tensor  # [d, D_m]
    proj_bias: Tensor  # [d]
    hidden_weight: Tensor  # [r, 2d+2]
    hidden_bias: Tensor  # [r]
    instance_weight: Tensor  # [1, r]
    instance_bias: Tensor  # [1]
    dim_weight: Tensor  # [D_m, r]
    dim_bias: Tensor  # [D_m]


def layout_codes(layouts: Sequence[str]) -> list[int]:
    return [LAYOUT_CODES[lay] for lay in layouts]


def layout_name(code: int) -> str:
    return LAYOUTS[code]


def compute_dtype(feature_dtype: torch.dtype, params: Sequence[GateParams] = ()) -> torch.dtype:
    """``ct = promote_types(float32, feature dtype, parameter dtype)``."""
    return compute_dtype_of_flat(feature_dtype, [t for p in params for t in p])


def compute_dtype_of_flat(feature_dtype: torch.dtype, flat_params: Sequence[Tensor]) -> torch.dtype:
    """``compute_dtype`` of the parameters as one flat list (the fused node's form)."""
    ct = torch.promote_types(torch.float32, feature_dtype)
    # Each promote_types is a dispatched call: promote each distinct dtype once
    # (usually one), not the 8M parameters one by one.
    for dtype in {t.dtype for t in flat_params} - {ct}:
        ct = torch.promote_types(ct, dtype)
    return ct


def channels(x: Tensor, layout: str) -> int:
    """``D_m``: channels last for ``"sequence"``, dim 1 for ``"spatial"``."""
    return x.shape[-1] if layout == "sequence" else x.shape[1]


def positions(x: Tensor, layout: str) -> int:
    """``P_m``: dim 1 for ``"sequence"``, the product of the trailing dims for ``"spatial"`` (1 for ``[B, D]``)."""
    return x.shape[1] if layout == "sequence" else math.prod(x.shape[2:])


def at_least_one(n):
    """``max(n, 1)`` for a size: ``torch.sym_max`` on a SymInt (no guard), the
    builtin on a plain int (under Dynamo, torch 2.11 graph-breaks on
    ``torch.sym_max`` of plain ints; 2.13 does not)."""
    return torch.sym_max(n, 1) if isinstance(n, torch.SymInt) else max(n, 1)


def position_counts(x: Tensor, layout: str, mask: Optional[Tensor], ct: torch.dtype) -> Tensor:
    """``max(1, sum_p V[b, p])`` as ``[B, 1]`` in ct: the divisor of step 1's summary."""
    if layout == "sequence" and mask is not None:
        return mask.sum(1, keepdim=True).to(ct).clamp_min(1)
    return x.new_full((x.shape[0], 1), at_least_one(positions(x, layout)), dtype=ct)


class GatesIntermediates(NamedTuple):
    """What steps 2-6 compute on the way, kept for a hand-written backward."""

    summaries: list  # s_m [B, D_m]
    norm: list  # ||h_m|| [B, 1]
    u: Tensor  # [B, M, d]
    w: Tensor  # [B, M, M] weights of the others
    k: Tensor  # [B, M]
    agreement: Tensor  # [B, M, M]
    context: Tensor  # [B, M, d]
    cues: list  # q_m [B, 2d+2]
    pre: list  # gate_hidden pre-activation [B, r]
    hidden: list  # e_m = GELU(pre)
    instance_gate: list  # 2 sigmoid(a) [B, 1]
    dimension_gate: list  # 2 sigmoid(z) [B, D_m]


def autocast_off(device_type: str):
    """Steps 1-7 run with autocast off ("Numerics"). Entering torch.autocast
    costs about 10 us, so it is entered only where autocast is on; a traced
    call always enters it, as the graph must say so. The meta device has no
    autocast to turn off (torch.autocast refuses it)."""
    if device_type == "meta":
        return contextlib.nullcontext()
    if torch.compiler.is_compiling() or torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
