"""The two reductions over X, as one Triton kernel: the summaries (step 1,
masked) and the gate gradient ``dg = sum_p dY * X`` of the backward.

Every modality of a call in one launch (``slots.py``). A program owns one
sample, one tile of channels and one slice of the positions; it accumulates a
``[BLOCK_P, BLOCK_D]`` tile in the compute dtype and sums it once at the end,
so the result does not depend on scheduling (no atomics). Very long
sequences (``MIN_SLICE``) are cut into ``S`` slices whose partial sums are
added by torch afterwards, which keeps enough programs in flight when ``B x D``
is small; the summary divides each slice's part by the row's position count
(``counts.row_count``), so its slices' sum is the mean.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ... import op_checks
from . import configs
from .counts import row_count
from .slots import cdiv, groups, mask_bytes, pad, readable, size_class, view3

TARGET_PROGRAMS = 1024  # a few waves of programs on a 108-132 SM GPU
# Positions a slice must hold. Slicing costs one more launch (torch's sum of
# the slices' partial sums), a few microseconds on a GPU: it pays only where
# one program's serial loop is longer than that, about 1 MiB of a
# [P, BLOCK_D] fp32 tile (P >= 2048). Below, the reduction is one launch and
# the forward and backward stay at three and four launches.
MIN_SLICE = 2048
PART_TILES = tl.constexpr(256)  # tiles a partial sum takes before it joins the running total


@triton.jit
def _reduce_slot(t, x, y, m, o, B, P, D, sxb, sxp, sxd, syb, syp, syd, S,
                 HAS_DY: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    acc_t = o.dtype.element_ty  # the compute dtype
    nd = tl.cdiv(D, BLOCK_D)
    s = t % S
    r = t // S
    b = (r // nd).to(tl.int64)
    d = (r % nd) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    d64 = d.to(tl.int64)
    chunk = tl.cdiv(P, S)
    p_begin = s * chunk
    p_end = tl.minimum(p_begin + chunk, P)
    # Each element of the tile runs a sum of PART_TILES terms; the tile's
    # rows are then summed as a tree into `total`, which takes one part every
    # BLOCK_P * PART_TILES positions. The rounding error grows with about
    # PART_TILES + P / (BLOCK_P PART_TILES) terms rather than P / BLOCK_P:
    # one running tile over 2^18 equal float32 terms was 6.5e-5 off.
    total = tl.zeros([BLOCK_D], dtype=acc_t)
    part = tl.zeros([BLOCK_P, BLOCK_D], dtype=acc_t)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = p < p_end
        if HAS_MASK:  # a selection: padded values are never loaded
            ok = ok & (tl.load(m + b * P + p, mask=ok, other=0) != 0)
        tile_ok = ok[:, None] & d_ok[None, :]
        p64 = p.to(tl.int64)[:, None]
        v = tl.load(x + b * sxb + p64 * sxp + d64[None, :] * sxd, mask=tile_ok, other=0.0).to(acc_t)
        if HAS_DY:
            v = v * tl.load(y + b * syb + p64 * syp + d64[None, :] * syd, mask=tile_ok, other=0.0).to(acc_t)
        part += v
        if ((p0 - p_begin) // BLOCK_P) % PART_TILES == PART_TILES - 1:
            total += tl.sum(part, axis=0)
            part = tl.zeros([BLOCK_P, BLOCK_D], dtype=acc_t)
    total += tl.sum(part, axis=0)
    if not HAS_DY:  # the summary: a mean. Each slice divides its part, so the slices' sum is the mean.
        total = total / row_count(m, b, P, HAS_MASK, BLOCK_P).to(acc_t)
    tl.store(o + (s * B + b) * D + d64, total, mask=d_ok)


@triton.jit
def _reduce_kernel(
    x0, y0, m0, o0, P0, D0, sxb0, sxp0, sxd0, syb0, syp0, syd0, S0,
    x1, y1, m1, o1, P1, D1, sxb1, sxp1, sxd1, syb1, syp1, syd1, S1,
    x2, y2, m2, o2, P2, D2, sxb2, sxp2, sxd2, syb2, syp2, syd2, S2,
    x3, y3, m3, o3, P3, D3, sxb3, sxp3, sxd3, syb3, syp3, syd3, S3,
    B, SIZE_CLASS,
    NUM: tl.constexpr, HAS_DY: tl.constexpr, MASKS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Programs are numbered slot after slot; NUM (constexpr) prunes unused slots.
    pid = tl.program_id(0)
    end0 = B * tl.cdiv(D0, BLOCK_D) * S0
    if pid < end0:
        _reduce_slot(pid, x0, y0, m0, o0, B, P0, D0, sxb0, sxp0, sxd0, syb0, syp0, syd0, S0,
                     HAS_DY, (MASKS & 1) != 0, BLOCK_P, BLOCK_D)  # fmt: skip
    if NUM > 1:
        end1 = end0 + B * tl.cdiv(D1, BLOCK_D) * S1
        if (pid >= end0) & (pid < end1):
            _reduce_slot(pid - end0, x1, y1, m1, o1, B, P1, D1, sxb1, sxp1, sxd1, syb1, syp1, syd1, S1,
                         HAS_DY, (MASKS & 2) != 0, BLOCK_P, BLOCK_D)  # fmt: skip
        if NUM > 2:
            end2 = end1 + B * tl.cdiv(D2, BLOCK_D) * S2
            if (pid >= end1) & (pid < end2):
                _reduce_slot(pid - end1, x2, y2, m2, o2, B, P2, D2, sxb2, sxp2, sxd2, syb2, syp2, syd2, S2,
                             HAS_DY, (MASKS & 4) != 0, BLOCK_P, BLOCK_D)  # fmt: skip
            if NUM > 3:
                end3 = end2 + B * tl.cdiv(D3, BLOCK_D) * S3
                if (pid >= end2) & (pid < end3):
                    _reduce_slot(pid - end2, x3, y3, m3, o3, B, P3, D3, sxb3, sxp3, sxd3, syb3, syp3, syd3, S3,
                                 HAS_DY, (MASKS & 8) != 0, BLOCK_P, BLOCK_D)  # fmt: skip


reduce_kernel = configs.autotuned(_reduce_kernel, configs.REDUCE_CONFIGS, key=["NUM", "HAS_DY", "MASKS", "SIZE_CLASS"])


def slices(batch, positions, channels):
    """How many slices of the positions each (sample, channel tile) is cut into: a shape rule only."""
    # Eager sizes are ints: the builtins, not torch.sym_max/sym_min's Python; traced sizes may be SymInts.
    ints = all(type(v) is int for v in (batch, positions, channels))
    most, least = (max, min) if ints else (torch.sym_max, torch.sym_min)
    per_tile = most(1, batch * cdiv(channels, 128))
    return most(1, least(cdiv(positions, MIN_SLICE), cdiv(TARGET_PROGRAMS, per_tile)))


def reduce_all(xs, dys, masks, layouts, ct: torch.dtype, num_slices: Optional[int] = None) -> list[Tensor]:
    """``sum_p`` over valid positions of X (or of dY * X), ``[B, D_m]`` in ct, one launch per 4 modalities."""
    batch = xs[0].shape[0]
    outs = []
    for group in groups(len(xs)):
        slots, parts, mask_bits = [], [], 0
        for slot, i in enumerate(group):
            x = readable(xs[i], layouts[i])
            vx = view3(x, layouts[i])
            y = readable(dys[i], layouts[i]) if dys is not None else x
            vy = view3(y, layouts[i])
            m = masks[i] if masks is not None else None
            mask_bits |= (m is not None) << slot
            s = num_slices or slices(batch, vx.positions, vx.channels)
            o = x.new_empty((s, batch, vx.channels) if s > 1 else (batch, vx.channels), dtype=ct)
            parts.append(o)
            slots.append((x, y, mask_bytes(m, x), o, vx.positions, vx.channels, vx.stride_b, vx.stride_p,
                          vx.stride_d, vy.stride_b, vy.stride_p, vy.stride_d, s))  # fmt: skip
        if batch > 0:
            tiles = [(slot_args[5], slot_args[12]) for slot_args in slots]  # (D, S) of each slot

            def grid(meta, tiles=tiles):
                return (sum(batch * cdiv(d, meta["BLOCK_D"]) * s for d, s in tiles),)

            configs.launch(reduce_kernel, grid, pad(slots) + [batch, size_class([xs[i] for i in group])],
                           dict(NUM=len(group), HAS_DY=dys is not None, MASKS=mask_bits))  # fmt: skip
        outs += [o.sum(0) if o.dim() == 3 else o for o in parts]
    return outs


@triton_op("mmcal::triton_summaries", mutates_args=())
def summaries(xs: list[Tensor], masks: list[Optional[Tensor]], layouts: list[int], ct: torch.dtype) -> list[Tensor]:
    """Step 1 for every modality: masked means ``[B, D_m]`` in ct."""
    op_checks.summaries_args(xs, masks, layouts, ct)
    return reduce_all(xs, None, masks, layouts, ct)


@triton_op("mmcal::triton_gate_grads", mutates_args=())
def gate_grads(grad_ys: list[Tensor], xs: list[Tensor], layouts: list[int], ct: torch.dtype) -> list[Tensor]:
    """The backward's ``dg = sum_p dY * X`` over every position, ``[B, D_m]`` in ct."""
    op_checks.gate_grads_args(grad_ys, xs, layouts, ct)
    return reduce_all(xs, grad_ys, None, layouts, ct)
