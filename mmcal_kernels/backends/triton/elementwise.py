"""The two elementwise passes over X, as one Triton kernel: the modulation
``Y = X * g`` (step 7) and the input gradient ``dX = dY * g + V * ds / count``
of the backward, each term optional per modality.

Every modality of a call in one launch (``slots.py``); a program writes one
``[BLOCK_P, BLOCK_D]`` tile. The product is taken in the gate's dtype (the
compute dtype) and rounded once on the store. The mask selects ``ds``
(``tl.where``), so a non-finite value never crosses between positions.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ... import checks, op_checks
from . import configs
from .counts import row_count
from .rounding import to_stored
from .slots import cdiv, flattenable, groups, mask_bytes, pad, readable, size_class, view3


@triton.jit
def _map_slot(t, src, g, ds, m, out, B, P, D, ssb, ssp, ssd, sob, sop, sod,
              HAS_SRC: tl.constexpr, HAS_DS: tl.constexpr, HAS_MASK: tl.constexpr,
              BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    nd = tl.cdiv(D, BLOCK_D)
    npb = tl.cdiv(P, BLOCK_P)
    r = t // nd
    d = (t % nd) * BLOCK_D + tl.arange(0, BLOCK_D)
    p = (r % npb) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = (r // npb).to(tl.int64)
    d_ok = d < D
    p_ok = p < P
    tile_ok = p_ok[:, None] & d_ok[None, :]
    d64 = d.to(tl.int64)[None, :]
    p64 = p.to(tl.int64)[:, None]
    if HAS_SRC:
        gv = tl.load(g + b * D + d64, mask=d_ok[None, :], other=0.0)
        val = tl.load(src + b * ssb + p64 * ssp + d64 * ssd, mask=tile_ok, other=0.0).to(gv.dtype) * gv
    if HAS_DS:
        dsv = tl.load(ds + b * D + d64, mask=d_ok[None, :], other=0.0)
        dsv = dsv / row_count(m, b, P, HAS_MASK, BLOCK_P).to(dsv.dtype)  # the summary's divisor, as in its pass
        valid = p_ok
        if HAS_MASK:
            valid = valid & (tl.load(m + b * P + p, mask=p_ok, other=0) != 0)
        term = tl.where(valid[:, None], dsv, 0.0)
        if HAS_SRC:
            val = val + term
        else:
            val = term
    tl.store(out + b * sob + p64 * sop + d64 * sod, to_stored(val, out), mask=tile_ok)


@triton.jit
def _map_kernel(
    s0, g0, q0, m0, o0, P0, D0, ssb0, ssp0, ssd0, sob0, sop0, sod0,
    s1, g1, q1, m1, o1, P1, D1, ssb1, ssp1, ssd1, sob1, sop1, sod1,
    s2, g2, q2, m2, o2, P2, D2, ssb2, ssp2, ssd2, sob2, sop2, sod2,
    s3, g3, q3, m3, o3, P3, D3, ssb3, ssp3, ssd3, sob3, sop3, sod3,
    B, SIZE_CLASS,
    NUM: tl.constexpr, SRCS: tl.constexpr, DSS: tl.constexpr, MASKS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Programs are numbered slot after slot; NUM (constexpr) prunes unused slots.
    pid = tl.program_id(0)
    end0 = B * tl.cdiv(P0, BLOCK_P) * tl.cdiv(D0, BLOCK_D)
    if pid < end0:
        _map_slot(pid, s0, g0, q0, m0, o0, B, P0, D0, ssb0, ssp0, ssd0, sob0, sop0, sod0,
                  (SRCS & 1) != 0, (DSS & 1) != 0, (MASKS & 1) != 0, BLOCK_P, BLOCK_D)  # fmt: skip
    if NUM > 1:
        end1 = end0 + B * tl.cdiv(P1, BLOCK_P) * tl.cdiv(D1, BLOCK_D)
        if (pid >= end0) & (pid < end1):
            _map_slot(pid - end0, s1, g1, q1, m1, o1, B, P1, D1, ssb1, ssp1, ssd1, sob1, sop1, sod1,
                      (SRCS & 2) != 0, (DSS & 2) != 0, (MASKS & 2) != 0, BLOCK_P, BLOCK_D)  # fmt: skip
        if NUM > 2:
            end2 = end1 + B * tl.cdiv(P2, BLOCK_P) * tl.cdiv(D2, BLOCK_D)
            if (pid >= end1) & (pid < end2):
                _map_slot(pid - end1, s2, g2, q2, m2, o2, B, P2, D2, ssb2, ssp2, ssd2, sob2, sop2, sod2,
                          (SRCS & 4) != 0, (DSS & 4) != 0, (MASKS & 4) != 0, BLOCK_P, BLOCK_D)  # fmt: skip
            if NUM > 3:
                end3 = end2 + B * tl.cdiv(P3, BLOCK_P) * tl.cdiv(D3, BLOCK_D)
                if (pid >= end2) & (pid < end3):
                    _map_slot(pid - end2, s3, g3, q3, m3, o3, B, P3, D3, ssb3, ssp3, ssd3, sob3, sop3, sod3,
                              (SRCS & 8) != 0, (DSS & 8) != 0, (MASKS & 8) != 0, BLOCK_P, BLOCK_D)  # fmt: skip


map_kernel = configs.autotuned(_map_kernel, configs.MAP_CONFIGS, key=["NUM", "SRCS", "DSS", "MASKS", "SIZE_CLASS"])


def map_all(outs, layouts, srcs, gates, dss, masks, tune: bool = True) -> None:
    """``outs[i] = srcs[i] * gates[i] + V * dss[i]`` (either term None), one launch per 4 modalities.

    ``outs[i]`` must flatten (``slots.flattenable``); it may be ``srcs[i]`` itself,
    and then ``tune=False``: no autotuning, whose timing runs would write it again.
    """
    batch = outs[0].shape[0]
    for group in groups(len(outs)):
        slots, bits = [], {"SRCS": 0, "DSS": 0, "MASKS": 0}
        for slot, i in enumerate(group):
            out, lay = outs[i], layouts[i]
            src = readable(srcs[i], lay) if srcs[i] is not None else out
            vo, vs = view3(out, lay), view3(src, lay)
            # An absent term's pointer is a stand-in its flag keeps the kernel from reading.
            g = gates[i].contiguous() if gates[i] is not None else dss[i]
            q = dss[i].contiguous() if dss[i] is not None else g
            bits["SRCS"] |= (srcs[i] is not None) << slot
            bits["DSS"] |= (dss[i] is not None) << slot
            bits["MASKS"] |= (masks[i] is not None and dss[i] is not None) << slot
            slots.append((src, g, q, mask_bytes(masks[i], out), out, vo.positions, vo.channels,
                          vs.stride_b, vs.stride_p, vs.stride_d, vo.stride_b, vo.stride_p, vo.stride_d))  # fmt: skip
        if batch == 0 or all(slot_args[5] == 0 for slot_args in slots):  # no positions anywhere
            continue
        tiles = [(slot_args[5], slot_args[6]) for slot_args in slots]  # (P, D) of each slot

        def grid(meta, tiles=tiles):
            return (sum(batch * cdiv(p, meta["BLOCK_P"]) * cdiv(d, meta["BLOCK_D"]) for p, d in tiles),)

        configs.launch(map_kernel, grid, pad(slots) + [batch, size_class([outs[i] for i in group])],
                       dict(NUM=len(group), **bits), tune=tune)  # fmt: skip


def _into_like(xs, layouts, compute) -> list[Tensor]:
    """Outputs allocated like each X (memory format kept); one whose trailing
    dims do not flatten is computed in a contiguous scratch and copied in."""
    results = [torch.empty_like(x) for x in xs]
    targets = [r if flattenable(r, lay) else torch.empty(r.shape, dtype=r.dtype, device=r.device)
               for r, lay in zip(results, layouts)]  # fmt: skip
    compute(targets)
    for r, t in zip(results, targets):
        if t is not r:
            r.copy_(t)
    return results


@triton_op("mmcal::triton_modulate", mutates_args=())
def modulate(xs: list[Tensor], gates: list[Tensor], layouts: list[int]) -> list[Tensor]:
    """Step 7 for every modality: ``(X * g).to(X.dtype)``, like X."""
    op_checks.modulate_args(xs, gates, layouts)
    none = [None] * len(xs)
    return _into_like(xs, layouts, lambda outs: map_all(outs, layouts, xs, gates, none, none))


@triton_op("mmcal::triton_modulate_", mutates_args={"xs"})
def modulate_(xs: list[Tensor], gates: list[Tensor], layouts: list[int]) -> None:
    """Step 7 in place, for inference: ``X *= g``, rounded once."""
    op_checks.modulate_args(xs, gates, layouts)
    checks.check_inplace_targets(xs, gates, name="xs", read_name="gates")
    none = [None] * len(xs)
    direct = [flattenable(x, lay) for x, lay in zip(xs, layouts)]
    targets = [x if ok else x.contiguous() for x, ok in zip(xs, direct)]
    map_all(targets, layouts, targets, gates, none, none, tune=False)
    for x, t, ok in zip(xs, targets, direct):
        if not ok:
            x.copy_(t)


@triton_op("mmcal::triton_input_grads", mutates_args=())
def input_grads(
    xs: list[Tensor],
    grad_ys: list[Optional[Tensor]],
    gates: list[Optional[Tensor]],
    masks: list[Optional[Tensor]],
    ds: list[Optional[Tensor]],
    layouts: list[int],
) -> list[Tensor]:
    """The backward's ``dX = dY * g + V * ds / count``, like X; a None term is left out."""
    op_checks.input_grads_args(xs, grad_ys, gates, masks, ds, layouts)
    return _into_like(xs, layouts, lambda outs: map_all(outs, layouts, grad_ys, gates, ds, masks))
