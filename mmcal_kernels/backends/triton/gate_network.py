# docs/spec.md steps 2-6 (the gate network: projection and normalisation,
# agreement/support/conflict/context, cues, gate MLP, gates), forward and
# backward, for all modalities at once, as the ops of
# /work/shared-notes/gates_contract.md.
"""The gate network (steps 2-6) as two Triton ops:

* ``mmcal::triton_gates``: ONE launch. A program owns ``BLOCK_B`` samples and
  every modality (up to ``MAX_SLOTS`` as slots): it projects, normalises,
  compares, builds the cues, runs the gate MLP and writes the gates, the
  diagnostics and the tensors the backward reads.
* ``mmcal::triton_gates_backward``: one launch over blocks of samples writes
  ``grad_summaries`` and each program's partial parameter gradients into a
  workspace row; a second launch sums the rows in a fixed order (no atomics, so
  the result is deterministic) and writes each gradient in its parameter's dtype.

The stages of one program exchange ``[BLOCK_B, d]`` tensors through global
memory (the saved ``u``/``context`` and a scratch for the backward), separated
by ``tl.debug_barrier()``: a CTA barrier makes a block's global writes visible
to its own threads, and going through memory lets every stage tile its own
contraction instead of holding all modalities' weights in registers.

More than ``MAX_SLOTS`` modalities fall back to the torch formulas
(``reference.gates_with_intermediates`` / ``gates_backward.gates_backward``)
inside the ops, so every M stays right.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ... import gates_torch, op_checks
from ...spec import GateParams
from . import configs, shared_memory
from .rounding import to_stored
from .slots import MAX_SLOTS, cdiv, mask_bytes

NUM_PARAMS = len(GateParams._fields)  # 8 tensors per modality
# The default tiles: a program owns BLOCK_B samples (tl.dot needs >= 16 rows),
# and every contraction over D_m or d runs in BLOCK_K-wide slices (narrow, as
# the fp32 dots run on FMAs that hold a K-slice per thread).
# MMCAL_TRITON_GATE_BLOCKS chooses others (``tiles``).
BLOCK_B = 16
BLOCK_K = 16
SETTING = "MMCAL_TRITON_GATE_BLOCKS"
SAMPLE_CHOICES = (1, 2, 4, 8, 16, 32)
K_CHOICES = (16, 32, 64)
# The backward never takes fewer than 16 samples a program, whatever the
# setting: at 1, 4 and 8 samples its parameter gradients came out wrong on an
# H200 (triton 3.6, GPU run 9: 8x too large at 1 sample, 2x at 4, 1e-3 off at
# 8), though every test passes under the interpreter. Their contractions over
# the samples ([>= 16, S] x [S, >= 16], _mm's broadcast branch) are what
# triton 3.6 turns into a TF32 tensor-core dot (_mm's comment); the forward's
# ([S, K] x [K, n]) stay sums and were right at every setting tried.
BACKWARD_MIN_SAMPLES = 16
BLOCK_C = 256  # workspace columns per program of the reduction
# The partial gradients take (programs x parameters) elements: the backward
# runs at most this many programs' rows at once (each program then loops over
# several blocks of samples), so that the workspace stays within ~WORKSPACE_ELEMS.
WORKSPACE_ELEMS = 1 << 25
MAX_PROGRAMS = 1024


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


# Triton 3.6 cannot lower the gate kernels' fp64 dots: the backward's fails
# to compile for sm_80 and sm_90 at any size, the forward's on an H200 where
# a dot's K is large ("Currently fp64 don't support largeK MMA", an assertion
# in its MMAv2 lowering); 3.9 lowers both; 3.7 and 3.8 are untried. Below 3.9
# a float64 call takes the torch formulas both ways, with the same results
# and more launches.
FP64_KERNELS = _release(triton.__version__) >= (3, 9)

# One configuration each: BLOCK_B/BLOCK_K are fixed by the host (it sizes the
# grid and the workspace with them) and the tile widths follow d and r; there
# is nothing to autotune but the warps, and timing runs would cost a compile each.
GATES_CONFIGS = [((80, 90), triton.Config({}, num_warps=8))]  # 8 warps: d = r = 128 tiles without spilling
REDUCE_CONFIGS = [((80, 90), triton.Config({}, num_warps=4))]


# ---------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------


@triton.jit
def _mm(a, b):
    # "ieee": fp32 without TF32 rounding (the reference is exact fp32); fp64
    # lowers to DMMA on sm_80/sm_90 (checked by tests/test_triton_aot.py).
    # tl.dot needs every side >= 16: a forward block of fewer samples (the
    # setting; the backward never has one, BACKWARD_MIN_SAMPLES) multiplies by
    # broadcasting and summing, in the same dtype. The shapes are constexpr,
    # so each compiled kernel holds one of the two.
    if a.shape[0] >= 16 and a.shape[1] >= 16 and b.shape[1] >= 16:
        return tl.dot(a, b, input_precision="ieee")
    else:
        # Where both outer sides are >= 16, triton 3.6 rewrites this sum into
        # a TF32 tensor-core dot (read from its TTGIR), which, where K is below
        # the MMA instruction's K, sums K's padding too (inferred: on an H200
        # the backward's gradients came out 8/K times, run 9). Only the
        # forward's blocks of fewer than 16 samples, as the first side, come here.
        tl.static_assert(a.shape[0] < 16 or b.shape[1] < 16,
                         "_mm: a broadcast product with both outer sides >= 16 (triton 3.6 makes it a TF32 dot)")
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _const(hi, lo, ct):
    # A float64 constant as the sum of two float32s: Triton materialises a
    # Python float as float32, which would cost fp64 all but 7 digits.
    return tl.full([1], hi, tl.float32).to(ct) + tl.full([1], lo, tl.float32).to(ct)


@triton.jit
def _eps(ct):
    # NORM_EPS = 1e-6 rounded to ct (1 / 10^6 is correctly rounded in either dtype).
    return tl.full([1], 1, ct) / 1000000


@triton.jit
def _present(pr, rows64, row_ok, m, M, HAS_PRESENT: tl.constexpr):
    if HAS_PRESENT:
        return tl.load(pr + rows64 * M + m, mask=row_ok, other=0) != 0
    return row_ok | True


@triton.jit
def _two_sigmoid(x):
    return 2 / (1 + tl.exp(-x))


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@triton.jit
def _fwd_project(m, s, ssb, ssd, pw, pb, D, u, nrm, rows64, row_ok, M, d,
                 BLOCK_B: tl.constexpr, BLOCK_DD: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Step 2 for slot m: u = h / max(||h||, eps), h = W s + b; writes u and ||h||."""
    ct = u.dtype.element_ty
    dd = tl.arange(0, BLOCK_DD)
    dd_ok = dd < d
    h = tl.zeros([BLOCK_B, BLOCK_DD], dtype=ct)
    for k0 in range(0, D, BLOCK_K):
        kk = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_ok = kk < D
        sv = tl.load(s + rows64[:, None] * ssb + kk[None, :] * ssd, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wv = tl.load(pw + dd[None, :] * D + kk[:, None], mask=k_ok[:, None] & dd_ok[None, :], other=0.0)  # W[dd, k]^T
        h += _mm(sv.to(ct), wv.to(ct))
    h += tl.load(pb + dd, mask=dd_ok, other=0.0).to(ct)[None, :]
    norm = tl.sqrt(tl.sum(h * h, axis=1))
    uv = h / tl.maximum(norm, _eps(ct))[:, None]
    tl.store(u + (rows64 * M + m)[:, None] * d + dd[None, :], uv, mask=row_ok[:, None] & dd_ok[None, :])
    tl.store(nrm + rows64 * M + m, norm, mask=row_ok)


@triton.jit
def _fwd_compare(pr, u, ctx, agr, sup, con, rows64, row_ok, M, d,
                 NUM: tl.constexpr, HAS_PRESENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_DD: tl.constexpr):  # fmt: skip
    """Step 3 for every slot, from the u's step 2 wrote."""
    ct = u.dtype.element_ty
    dd = tl.arange(0, BLOCK_DD)
    tile_ok = row_ok[:, None] & (dd < d)[None, :]
    for m in tl.static_range(NUM):
        um = tl.load(u + (rows64 * M + m)[:, None] * d + dd[None, :], mask=tile_ok, other=0.0)
        support = tl.zeros([BLOCK_B], dtype=ct)
        conflict = tl.zeros([BLOCK_B], dtype=ct)
        count = tl.zeros([BLOCK_B], dtype=ct)
        context = tl.zeros([BLOCK_B, BLOCK_DD], dtype=ct)
        for n in tl.static_range(NUM):
            un = tl.load(u + (rows64 * M + n)[:, None] * d + dd[None, :], mask=tile_ok, other=0.0)
            a = tl.sum(um * un, axis=1)
            tl.store(agr + (rows64 * M + m) * M + n, a, mask=row_ok)
            if n != m:
                w = _present(pr, rows64, row_ok, n, M, HAS_PRESENT).to(ct)
                # relu(NaN) is NaN in torch; tl.maximum's default returns the other operand
                support += w * tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL)
                conflict += w * tl.maximum(-a, 0.0, propagate_nan=tl.PropagateNan.ALL)
                count += w
                context += w[:, None] * un
        k = tl.maximum(count, 1.0)
        tl.store(sup + rows64 * M + m, support / k, mask=row_ok)
        tl.store(con + rows64 * M + m, conflict / k, mask=row_ok)
        tl.store(ctx + (rows64 * M + m)[:, None] * d + dd[None, :], context / k[:, None], mask=tile_ok)


@triton.jit
def _u_ctx_tile(u, ctx, rows64, row_ok, M, m, d, k0, BLOCK_K: tl.constexpr):
    """Columns ``k0 .. k0 + BLOCK_K`` of ``u_m`` and ``c_m`` for a block of samples
    (with their offsets and mask): the cue's first two parts, forward and backward."""
    kk = k0 + tl.arange(0, BLOCK_K)
    k_ok = kk < d
    tile_ok = row_ok[:, None] & k_ok[None, :]
    at = (rows64 * M + m)[:, None] * d + kk[None, :]
    return kk, k_ok, at, tile_ok, tl.load(u + at, mask=tile_ok, other=0.0), tl.load(ctx + at, mask=tile_ok, other=0.0)


@triton.jit
def _fwd_gate(m, hw, hb, iw, ib, dw, db, pre, dgo, go, D, R, pr, u, ctx, sup, con, ig, rows64, row_ok, M, d,
              HAS_PRESENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Steps 4-6 for slot m."""
    ct = u.dtype.element_ty
    rr = tl.arange(0, BLOCK_R)
    r_ok = rr < R
    width = 2 * d + 2  # hidden_weight's row length: [u*c, u-c, S, C]
    acc = tl.zeros([BLOCK_B, BLOCK_R], dtype=ct)
    for k0 in range(0, d, BLOCK_K):
        kk, k_ok, at, tile_ok, uv, cv = _u_ctx_tile(u, ctx, rows64, row_ok, M, m, d, k0, BLOCK_K)
        w_ok = k_ok[:, None] & r_ok[None, :]
        w1 = tl.load(hw + rr[None, :] * width + kk[:, None], mask=w_ok, other=0.0).to(ct)
        w2 = tl.load(hw + rr[None, :] * width + d + kk[:, None], mask=w_ok, other=0.0).to(ct)
        acc += _mm(uv * cv, w1) + _mm(uv - cv, w2)
    sv = tl.load(sup + rows64 * M + m, mask=row_ok, other=0.0)
    cf = tl.load(con + rows64 * M + m, mask=row_ok, other=0.0)
    w_s = tl.load(hw + rr * width + 2 * d, mask=r_ok, other=0.0).to(ct)
    w_c = tl.load(hw + rr * width + 2 * d + 1, mask=r_ok, other=0.0).to(ct)
    acc += sv[:, None] * w_s[None, :] + cf[:, None] * w_c[None, :]
    acc += tl.load(hb + rr, mask=r_ok, other=0.0).to(ct)[None, :]
    tl.store(pre + rows64[:, None] * R + rr[None, :], acc, mask=row_ok[:, None] & r_ok[None, :])
    # Exact (erf) GELU; padded columns of r have acc = 0, so e = 0 there.
    e = 0.5 * acc * (1 + tl.math.erf(acc * _const(0.7071067690849304, 1.2101617485882343e-08, ct)))
    a = tl.sum(e * tl.load(iw + rr, mask=r_ok, other=0.0).to(ct)[None, :], axis=1) + tl.load(ib).to(ct)
    inst = _two_sigmoid(a)
    tl.store(ig + rows64 * M + m, inst, mask=row_ok)
    here = _present(pr, rows64, row_ok, m, M, HAS_PRESENT)
    for k0 in range(0, D, BLOCK_K):
        kk = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_ok = kk < D
        wd = tl.load(dw + kk[None, :] * R + rr[:, None], mask=r_ok[:, None] & k_ok[None, :], other=0.0).to(ct)
        z = _mm(e, wd) + tl.load(db + kk, mask=k_ok, other=0.0).to(ct)[None, :]
        dim_gate = _two_sigmoid(z)
        at = rows64[:, None] * D + kk[None, :]
        tile_ok = row_ok[:, None] & k_ok[None, :]
        tl.store(dgo + at, dim_gate, mask=tile_ok)
        tl.store(go + at, tl.where(here[:, None], inst[:, None] * dim_gate, 1.0), mask=tile_ok)


@triton.jit
def _gates_kernel(
    s0, ssb0, ssd0, pw0, pb0, hw0, hb0, iw0, ib0, dw0, db0, pre0, dgo0, go0, D0, R0,
    s1, ssb1, ssd1, pw1, pb1, hw1, hb1, iw1, ib1, dw1, db1, pre1, dgo1, go1, D1, R1,
    s2, ssb2, ssd2, pw2, pb2, hw2, hb2, iw2, ib2, dw2, db2, pre2, dgo2, go2, D2, R2,
    s3, ssb3, ssd3, pw3, pb3, hw3, hb3, iw3, ib3, dw3, db3, pre3, dgo3, go3, D3, R3,
    pr, u, nrm, ctx, agr, sup, con, ig, B, d,
    NUM: tl.constexpr, HAS_PRESENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_DD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows64 = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows64 < B
    M = NUM
    _fwd_project(0, s0, ssb0, ssd0, pw0, pb0, D0, u, nrm, rows64, row_ok, M, d, BLOCK_B, BLOCK_DD, BLOCK_K)
    if NUM > 1:
        _fwd_project(1, s1, ssb1, ssd1, pw1, pb1, D1, u, nrm, rows64, row_ok, M, d, BLOCK_B, BLOCK_DD, BLOCK_K)
    if NUM > 2:
        _fwd_project(2, s2, ssb2, ssd2, pw2, pb2, D2, u, nrm, rows64, row_ok, M, d, BLOCK_B, BLOCK_DD, BLOCK_K)
    if NUM > 3:
        _fwd_project(3, s3, ssb3, ssd3, pw3, pb3, D3, u, nrm, rows64, row_ok, M, d, BLOCK_B, BLOCK_DD, BLOCK_K)
    tl.debug_barrier()  # every slot's u written before any slot compares
    _fwd_compare(pr, u, ctx, agr, sup, con, rows64, row_ok, M, d, NUM, HAS_PRESENT, BLOCK_B, BLOCK_DD)
    tl.debug_barrier()
    _fwd_gate(0, hw0, hb0, iw0, ib0, dw0, db0, pre0, dgo0, go0, D0, R0, pr, u, ctx, sup, con, ig, rows64, row_ok, M, d,
              HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
    if NUM > 1:
        _fwd_gate(1, hw1, hb1, iw1, ib1, dw1, db1, pre1, dgo1, go1, D1, R1, pr, u, ctx, sup, con, ig, rows64, row_ok,
                  M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
    if NUM > 2:
        _fwd_gate(2, hw2, hb2, iw2, ib2, dw2, db2, pre2, dgo2, go2, D2, R2, pr, u, ctx, sup, con, ig, rows64, row_ok,
                  M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
    if NUM > 3:
        _fwd_gate(3, hw3, hb3, iw3, ib3, dw3, db3, pre3, dgo3, go3, D3, R3, pr, u, ctx, sup, con, ig, rows64, row_ok,
                  M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip


gates_kernel = configs.autotuned(_gates_kernel, GATES_CONFIGS, key=["NUM", "HAS_PRESENT"])


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------


@triton.jit
def _accumulate(ptr, value, mask, first):
    # A program's partial gradient over its blocks of samples, in its own
    # workspace row. The workspace is torch.empty (no fill launch): the first
    # block replaces what it reads there by zero before adding, so garbage (a
    # NaN) never enters even a sum that is then selected away.
    prev = tl.load(ptr, mask=mask, other=0.0)
    tl.store(ptr, tl.where(first != 0, 0.0, prev) + value, mask=mask)


@triton.jit
def _bwd_gate(m, gg, sgb, sgd, hw, iw, dw, pre, dgi, D, R, base, pr, u, ctx, sup, con, ig, scr, dcx, dsv, dcv,
              wsrow, first, rows64, row_ok, M, d,
              HAS_PRESENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Steps 6-4 back for slot m: d(dim/instance/hidden params) and the cues' gradient
    (du into scr, dcontext into dcx, dS and dC into dsv and dcv)."""
    ct = u.dtype.element_ty
    rr = tl.arange(0, BLOCK_R)
    r_ok = rr < R
    width = 2 * d + 2
    # The slot's workspace layout, in GateParams order.
    o_pb = d * D
    o_hw = o_pb + d
    o_hb = o_hw + R * width
    o_iw = o_hb + R
    o_ib = o_iw + R
    o_dw = o_ib + 1
    o_db = o_dw + D * R
    ws = wsrow + base
    row_here = row_ok & _present(pr, rows64, row_ok, m, M, HAS_PRESENT)  # dL/dg is ignored where missing

    x = tl.load(pre + rows64[:, None] * R + rr[None, :], mask=row_ok[:, None] & r_ok[None, :], other=0.0)
    cdf = 0.5 * (1 + tl.math.erf(x * _const(0.7071067690849304, 1.2101617485882343e-08, ct)))
    e = x * cdf
    gelu_grad = cdf + x * tl.exp(-0.5 * x * x) * _const(0.3989422917366028, -1.1335170135851058e-08, ct)
    inst = tl.load(ig + rows64 * M + m, mask=row_ok, other=0.0)

    d_inst = tl.zeros([BLOCK_B], dtype=ct)
    for k0 in range(0, D, BLOCK_K):
        kk = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        tile_ok = row_here[:, None] & (kk < D)[None, :]
        g = tl.load(gg + rows64[:, None] * sgb + kk[None, :] * sgd, mask=tile_ok, other=0.0).to(ct)
        dg = tl.load(dgi + rows64[:, None] * D + kk[None, :], mask=tile_ok, other=0.0)
        d_inst += tl.sum(g * dg, axis=1)
    da = d_inst * inst * (1 - 0.5 * inst)  # d(2 sigmoid(a))/da = 2 s (1 - s), s = inst / 2
    de = da[:, None] * tl.load(iw + rr, mask=r_ok, other=0.0).to(ct)[None, :]
    _accumulate(ws + o_iw + rr, tl.sum(da[:, None] * e, axis=0), r_ok, first)
    _accumulate(ws + o_ib + tl.arange(0, 1), tl.sum(da, axis=0) + tl.zeros([1], dtype=ct), tl.arange(0, 1) < 1, first)
    for k0 in range(0, D, BLOCK_K):
        kk = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_ok = kk < D
        tile_ok = row_here[:, None] & k_ok[None, :]
        g = tl.load(gg + rows64[:, None] * sgb + kk[None, :] * sgd, mask=tile_ok, other=0.0).to(ct)
        dg = tl.load(dgi + rows64[:, None] * D + kk[None, :], mask=tile_ok, other=0.0)
        dz = g * inst[:, None] * dg * (1 - 0.5 * dg)
        w_ok = k_ok[:, None] & r_ok[None, :]
        wd = tl.load(dw + kk[:, None] * R + rr[None, :], mask=w_ok, other=0.0).to(ct)  # [BLOCK_K, BLOCK_R]
        de += _mm(dz, wd)
        _accumulate(ws + o_dw + kk[:, None] * R + rr[None, :], _mm(tl.trans(dz), e), w_ok, first)
        _accumulate(ws + o_db + kk, tl.sum(dz, axis=0), k_ok, first)
    dpre = tl.where(r_ok[None, :], de * gelu_grad, 0.0)
    _accumulate(ws + o_hb + rr, tl.sum(dpre, axis=0), r_ok, first)

    sv = tl.load(sup + rows64 * M + m, mask=row_ok, other=0.0)
    cf = tl.load(con + rows64 * M + m, mask=row_ok, other=0.0)
    dpre_t = tl.trans(dpre)
    for k0 in range(0, d, BLOCK_K):
        kk, k_ok, at, tile_ok, uv, cv = _u_ctx_tile(u, ctx, rows64, row_ok, M, m, d, k0, BLOCK_K)
        w_ok = r_ok[:, None] & k_ok[None, :]
        col = rr[:, None] * width + kk[None, :]
        _accumulate(ws + o_hw + col, _mm(dpre_t, uv * cv), w_ok, first)
        _accumulate(ws + o_hw + col + d, _mm(dpre_t, uv - cv), w_ok, first)
        dq1 = _mm(dpre, tl.load(hw + col, mask=w_ok, other=0.0).to(ct))
        dq2 = _mm(dpre, tl.load(hw + col + d, mask=w_ok, other=0.0).to(ct))
        tl.store(scr + at, dq1 * cv + dq2, mask=tile_ok)  # du from the cue
        tl.store(dcx + at, dq1 * uv - dq2, mask=tile_ok)
    _accumulate(ws + o_hw + rr * width + 2 * d, tl.sum(dpre * sv[:, None], axis=0), r_ok, first)
    _accumulate(ws + o_hw + rr * width + 2 * d + 1, tl.sum(dpre * cf[:, None], axis=0), r_ok, first)
    w_s = tl.load(hw + rr * width + 2 * d, mask=r_ok, other=0.0).to(ct)
    w_c = tl.load(hw + rr * width + 2 * d + 1, mask=r_ok, other=0.0).to(ct)
    tl.store(dsv + rows64 * M + m, tl.sum(dpre * w_s[None, :], axis=1), mask=row_ok)
    tl.store(dcv + rows64 * M + m, tl.sum(dpre * w_c[None, :], axis=1), mask=row_ok)


@triton.jit
def _bwd_compare(pr, u, nrm, agr, scr, dcx, dsv, dcv, rows64, row_ok, M, d,
                 NUM: tl.constexpr, HAS_PRESENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_DD: tl.constexpr):  # fmt: skip
    """Step 3 back (support, conflict, context to the u's), then step 2's
    normalisation as a projection: dh = (du - u (u.du)) / max(||h||, eps), the
    radial term only where ||h|| >= eps. dh replaces du in the scratch."""
    ct = u.dtype.element_ty
    dd = tl.arange(0, BLOCK_DD)
    tile_ok = row_ok[:, None] & (dd < d)[None, :]
    total = tl.zeros([BLOCK_B], dtype=ct)
    for n in tl.static_range(NUM):
        total += _present(pr, rows64, row_ok, n, M, HAS_PRESENT).to(ct)
    for m in tl.static_range(NUM):
        at_m = (rows64 * M + m)[:, None] * d + dd[None, :]
        um = tl.load(u + at_m, mask=tile_ok, other=0.0)
        du = tl.load(scr + at_m, mask=tile_ok, other=0.0)
        p_m = _present(pr, rows64, row_ok, m, M, HAS_PRESENT).to(ct)
        k_m = tl.maximum(total - p_m, 1.0)
        ds_m = tl.load(dsv + rows64 * M + m, mask=row_ok, other=0.0) / k_m
        dc_m = tl.load(dcv + rows64 * M + m, mask=row_ok, other=0.0) / k_m
        for n in tl.static_range(NUM):
            if n != m:
                at_n = (rows64 * M + n)[:, None] * d + dd[None, :]
                p_n = _present(pr, rows64, row_ok, n, M, HAS_PRESENT).to(ct)
                k_n = tl.maximum(total - p_n, 1.0)
                ds_n = tl.load(dsv + rows64 * M + n, mask=row_ok, other=0.0) / k_n
                dc_n = tl.load(dcv + rows64 * M + n, mask=row_ok, other=0.0) / k_n
                a_mn = tl.load(agr + (rows64 * M + m) * M + n, mask=row_ok, other=0.0)
                a_nm = tl.load(agr + (rows64 * M + n) * M + m, mask=row_ok, other=0.0)
                # dA = w (dS [A > 0] - dC [A < 0]); u_m gets (dA + dA^T)[m, n] u_n.
                da_mn = p_n * (tl.where(a_mn > 0, ds_m, 0.0) - tl.where(a_mn < 0, dc_m, 0.0))
                da_nm = p_m * (tl.where(a_nm > 0, ds_n, 0.0) - tl.where(a_nm < 0, dc_n, 0.0))
                un = tl.load(u + at_n, mask=tile_ok, other=0.0)
                dctx_n = tl.load(dcx + at_n, mask=tile_ok, other=0.0)
                du += (da_mn + da_nm)[:, None] * un + (p_m / k_n)[:, None] * dctx_n
        norm = tl.load(nrm + rows64 * M + m, mask=row_ok, other=1.0)
        eps = _eps(ct)
        radial = tl.where(norm >= eps, tl.sum(um * du, axis=1), 0.0)
        dh = (du - um * radial[:, None]) / tl.maximum(norm, eps)[:, None]
        tl.store(scr + at_m, dh, mask=tile_ok)


@triton.jit
def _bwd_project(m, s, ssb, ssd, pw, gs, D, base, scr, wsrow, first, rows64, row_ok, M, d,
                 BLOCK_B: tl.constexpr, BLOCK_DD: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Step 2's projection back for slot m: ds = dh W, dW = dh^T s, db = sum dh."""
    ct = scr.dtype.element_ty
    dd = tl.arange(0, BLOCK_DD)
    dd_ok = dd < d
    ws = wsrow + base
    dh = tl.load(scr + (rows64 * M + m)[:, None] * d + dd[None, :], mask=row_ok[:, None] & dd_ok[None, :], other=0.0)
    _accumulate(ws + d * D + dd, tl.sum(dh, axis=0), dd_ok, first)
    dh_t = tl.trans(dh)
    for k0 in range(0, D, BLOCK_K):
        kk = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_ok = kk < D
        w_ok = dd_ok[:, None] & k_ok[None, :]
        at_w = dd[:, None] * D + kk[None, :]
        wp = tl.load(pw + at_w, mask=w_ok, other=0.0).to(ct)  # [BLOCK_DD, BLOCK_K]
        tile_ok = row_ok[:, None] & k_ok[None, :]
        tl.store(gs + rows64[:, None] * D + kk[None, :], _mm(dh, wp), mask=tile_ok)
        sv = tl.load(s + rows64[:, None] * ssb + kk[None, :] * ssd, mask=tile_ok, other=0.0).to(ct)
        _accumulate(ws + at_w, _mm(dh_t, sv), w_ok, first)


@triton.jit
def _gates_backward_kernel(
    gg0, sgb0, sgd0, s0, ssb0, ssd0, pw0, hw0, iw0, dw0, pre0, dgi0, gs0, D0, R0, base0,
    gg1, sgb1, sgd1, s1, ssb1, ssd1, pw1, hw1, iw1, dw1, pre1, dgi1, gs1, D1, R1, base1,
    gg2, sgb2, sgd2, s2, ssb2, ssd2, pw2, hw2, iw2, dw2, pre2, dgi2, gs2, D2, R2, base2,
    gg3, sgb3, sgd3, s3, ssb3, ssd3, pw3, hw3, iw3, dw3, pre3, dgi3, gs3, D3, R3, base3,
    pr, u, nrm, ctx, agr, sup, con, ig, scr, dcx, dsv, dcv, ws, B, d, width, blocks,
    NUM: tl.constexpr, HAS_PRESENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_DD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # Program p takes blocks p, p + G, p + 2G, ... in order and sums its
    # parameter gradients into workspace row p: deterministic for a given grid.
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    wsrow = ws + pid.to(tl.int64) * width
    M = NUM
    for blk in range(pid, blocks, programs):
        first = (blk == pid).to(tl.int32)
        rows64 = tl.arange(0, BLOCK_B).to(tl.int64) + blk * BLOCK_B  # blk * BLOCK_B < B + BLOCK_B fits int32
        row_ok = rows64 < B
        _bwd_gate(0, gg0, sgb0, sgd0, hw0, iw0, dw0, pre0, dgi0, D0, R0, base0, pr, u, ctx, sup, con, ig, scr, dcx, dsv, dcv,
                  wsrow, first, rows64, row_ok, M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
        if NUM > 1:
            _bwd_gate(1, gg1, sgb1, sgd1, hw1, iw1, dw1, pre1, dgi1, D1, R1, base1, pr, u, ctx, sup, con, ig, scr, dcx, dsv, dcv,
                      wsrow, first, rows64, row_ok, M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
        if NUM > 2:
            _bwd_gate(2, gg2, sgb2, sgd2, hw2, iw2, dw2, pre2, dgi2, D2, R2, base2, pr, u, ctx, sup, con, ig, scr, dcx, dsv, dcv,
                      wsrow, first, rows64, row_ok, M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
        if NUM > 3:
            _bwd_gate(3, gg3, sgb3, sgd3, hw3, iw3, dw3, pre3, dgi3, D3, R3, base3, pr, u, ctx, sup, con, ig, scr, dcx, dsv, dcv,
                      wsrow, first, rows64, row_ok, M, d, HAS_PRESENT, BLOCK_B, BLOCK_R, BLOCK_K)  # fmt: skip
        tl.debug_barrier()  # every slot's du, dcontext, dS, dC written
        _bwd_compare(pr, u, nrm, agr, scr, dcx, dsv, dcv, rows64, row_ok, M, d, NUM, HAS_PRESENT, BLOCK_B, BLOCK_DD)
        tl.debug_barrier()
        _bwd_project(0, s0, ssb0, ssd0, pw0, gs0, D0, base0, scr, wsrow, first, rows64, row_ok, M, d,
                     BLOCK_B, BLOCK_DD, BLOCK_K)  # fmt: skip
        if NUM > 1:
            _bwd_project(1, s1, ssb1, ssd1, pw1, gs1, D1, base1, scr, wsrow, first, rows64, row_ok, M, d,
                         BLOCK_B, BLOCK_DD, BLOCK_K)  # fmt: skip
        if NUM > 2:
            _bwd_project(2, s2, ssb2, ssd2, pw2, gs2, D2, base2, scr, wsrow, first, rows64, row_ok, M, d,
                         BLOCK_B, BLOCK_DD, BLOCK_K)  # fmt: skip
        if NUM > 3:
            _bwd_project(3, s3, ssb3, ssd3, pw3, gs3, D3, base3, scr, wsrow, first, rows64, row_ok, M, d,
                         BLOCK_B, BLOCK_DD, BLOCK_K)  # fmt: skip
        tl.debug_barrier()  # the next block reads this one's workspace sums


gates_backward_kernel = configs.autotuned(_gates_backward_kernel, GATES_CONFIGS, key=["NUM", "HAS_PRESENT"])


@triton.jit
def _scatter(ptr, acc, cols, start, size):
    tl.store(ptr + (cols - start), to_stored(acc, ptr), mask=(cols >= start) & (cols < start + size))


@triton.jit
def _scatter_slot(acc, cols, base, d, D, R, p0, p1, p2, p3, p4, p5, p6, p7):
    width = 2 * d + 2
    start = base
    _scatter(p0, acc, cols, start, d * D)
    start += d * D
    _scatter(p1, acc, cols, start, d)
    start += d
    _scatter(p2, acc, cols, start, R * width)
    start += R * width
    _scatter(p3, acc, cols, start, R)
    start += R
    _scatter(p4, acc, cols, start, R)
    start += R
    _scatter(p5, acc, cols, start, 1)
    start += 1
    _scatter(p6, acc, cols, start, D * R)
    start += D * R
    _scatter(p7, acc, cols, start, D)


@triton.jit
def _reduce_partials_kernel(
    base0, D0, R0, a0, b0, c0, e0, f0, g0, h0, i0,
    base1, D1, R1, a1, b1, c1, e1, f1, g1, h1, i1,
    base2, D2, R2, a2, b2, c2, e2, f2, g2, h2, i2,
    base3, D3, R3, a3, b3, c3, e3, f3, g3, h3, i3,
    ws, rows, width, d,
    NUM: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Rows in a fixed order: the same sum on every run. No rows (B = 0): zeros.
    ct = ws.dtype.element_ty
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = cols < width
    acc = tl.zeros([BLOCK_C], dtype=ct)
    for row in range(0, rows):
        # row * width < WORKSPACE_ELEMS (or 0 when one row): int32 is enough
        acc += tl.load(ws + row * width + cols, mask=ok, other=0.0)
    _scatter_slot(acc, cols, base0, d, D0, R0, a0, b0, c0, e0, f0, g0, h0, i0)
    if NUM > 1:
        _scatter_slot(acc, cols, base1, d, D1, R1, a1, b1, c1, e1, f1, g1, h1, i1)
    if NUM > 2:
        _scatter_slot(acc, cols, base2, d, D2, R2, a2, b2, c2, e2, f2, g2, h2, i2)
    if NUM > 3:
        _scatter_slot(acc, cols, base3, d, D3, R3, a3, b3, c3, e3, f3, g3, h3, i3)


reduce_partials_kernel = configs.autotuned(_reduce_partials_kernel, REDUCE_CONFIGS, key=["NUM"])


# ---------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------


def _parse_tiles(value: str) -> tuple[int, int]:
    """``"SxK"`` (samples a program, contraction slice) -> (S, K); empty: the default."""
    if not value.strip():
        return BLOCK_B, BLOCK_K
    parts = value.strip().lower().split("x")
    try:
        samples, k = (int(p) for p in parts)
    except ValueError:
        samples = k = -1
    if samples not in SAMPLE_CHOICES or k not in K_CHOICES:
        raise ValueError(f"{SETTING}={value!r}: expected SxK with S in {SAMPLE_CHOICES} (samples a program) "
                         f"and K in {K_CHOICES} (the contraction's slice), e.g. {BLOCK_B}x{BLOCK_K} (the default)")  # fmt: skip
    return samples, k


def apply_settings() -> None:
    """Read ``MMCAL_TRITON_GATE_BLOCKS`` again (it is read at import): the
    tiles of the next calls. A compiled graph keeps the tiles it was traced with."""
    global _TILES
    _TILES = _parse_tiles(os.environ.get(SETTING, ""))


def tiles() -> tuple[int, int]:
    """(samples a program, contraction slice) of the forward gate kernel's next launches."""
    return _TILES


def backward_tiles(tiles: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """The backward kernel's: ``tiles`` (the setting's by default), with at
    least BACKWARD_MIN_SAMPLES samples a program."""
    samples, k = _TILES if tiles is None else tiles
    return max(samples, BACKWARD_MIN_SAMPLES), k


_TILES = _parse_tiles(os.environ.get(SETTING, ""))


def _pow2(n: int) -> int:
    # tl.dot needs every side >= 16. Plain Python: triton 3.9's next_power_of_2
    # is a constexpr_function whose wrapper cost microseconds on the host a call.
    return max(16, 1 << (int(n) - 1).bit_length())


def _sizes(summaries, params) -> tuple[int, list[int], list[int]]:
    d = params[0].shape[0]
    dims = [s.shape[1] for s in summaries]
    hidden = [params[NUM_PARAMS * m + 2].shape[0] for m in range(len(summaries))]
    return d, dims, hidden


def _slot_width(d: int, dim: int, r: int) -> int:
    """A modality's parameter elements, in the workspace's GateParams order."""
    return d * dim + d + r * (2 * d + 2) + 2 * r + 1 + dim * r + dim


def _torch_formulas(num: int, ct: torch.dtype, d: int, hidden: list[int], tiles: tuple[int, int],
                    device: torch.device) -> bool:  # fmt: skip
    """Whether a call computes with the reference's formulas instead of the
    kernels: more modalities than one launch holds, float64 below triton 3.9,
    a zero d or r (empty products: the C++ ops take them, the kernels' tiles
    need both at least 1), or tiles whose blocks would ask ``device``'s GPU for more shared memory
    than it gives a block (``shared_memory.fits``: on an H200 d up to 1024
    and r up to 512 take the kernels, on an A100 up to 512 and 256). The
    forward and the backward decide alike, so one call's two halves run on
    the same side."""
    if num > MAX_SLOTS or (ct == torch.float64 and not FP64_KERNELS) or d == 0 or min(hidden, default=1) == 0:
        return True
    element_size = 8 if ct == torch.float64 else 4
    return not shared_memory.fits(device, _pow2(d), _pow2(max(hidden, default=1)), element_size, tiles)


def _torch_forward(summaries, params, present):
    """The reference's formulas, where _torch_formulas says the kernels cannot take the call."""
    num = len(summaries)
    gates, diag, inter = gates_torch.forward_in_ct(summaries, params, present)
    diagnostics = gates_torch.diagnostics_list(diag)
    norm = torch.cat(inter.norm, 1) if num else None
    saved = [inter.u, norm, inter.context] + list(inter.pre)
    return [g.detach() for g in gates], diagnostics, [t.detach() for t in saved]


def _params_ct(params, ct):
    # Contiguous parameters are handed over as they are (no copy, no cast: the
    # kernels convert on load); a strided one is copied once.
    return [p if p.is_contiguous() else p.contiguous() for p in params]


@triton_op("mmcal::triton_gates", mutates_args=())
def gates(summaries: list[Tensor], params: list[Tensor], present: Optional[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Steps 2-6 for every modality in one launch: (gates, diagnostics, saved) as in the contract."""
    op_checks.gates_args(summaries, params, present)
    d, dims, hidden = _sizes(summaries, params)
    num, ct, first = len(summaries), summaries[0].dtype, summaries[0]
    batch = first.shape[0]
    block_b, block_k = _TILES
    # Decided with the backward's tiles, so that both halves of a call take the same side.
    if _torch_formulas(num, ct, d, hidden, backward_tiles(), first.device):
        return _torch_forward(summaries, params, present)
    params = _params_ct(params, ct)

    def new(*shape):
        return torch.empty(shape, dtype=ct, device=first.device)

    gate_out = [new(batch, dim) for dim in dims]
    dim_gates = [new(batch, dim) for dim in dims]
    pres = [new(batch, r) for r in hidden]
    u, norm, context = new(batch, num, d), new(batch, num), new(batch, num, d)
    agreement, support, conflict, inst = new(batch, num, num), new(batch, num), new(batch, num), new(batch, num)
    if batch > 0:
        slots = []
        for m in range(num):
            s = summaries[m]
            slots.append([s, s.stride(0), s.stride(1), *params[NUM_PARAMS * m : NUM_PARAMS * (m + 1)], pres[m],
                          dim_gates[m], gate_out[m], dims[m], hidden[m]])  # fmt: skip
        args = [a for slot in slots + [slots[0]] * (MAX_SLOTS - num) for a in slot]
        pr = mask_bytes(present, u)
        args += [pr, u, norm, context, agreement, support, conflict, inst, batch, d]
        meta = dict(NUM=num, HAS_PRESENT=present is not None, BLOCK_B=block_b, BLOCK_DD=_pow2(d),
                    BLOCK_R=_pow2(max(hidden)), BLOCK_K=block_k)  # fmt: skip
        configs.launch(gates_kernel, lambda meta: (cdiv(batch, block_b),), args, meta, tune=False)
    diagnostics = [agreement, support, conflict, inst] + dim_gates
    return gate_out, diagnostics, [u, norm, context] + pres


def _torch_backward(grad_gates, summaries, params, present):
    _, _, inter = gates_torch.forward_in_ct(summaries, params, present)
    return gates_torch.backward_from(inter, params, present, grad_gates)


@triton_op("mmcal::triton_gates_backward", mutates_args=())
def gates_backward(
    grad_gates: list[Tensor],
    summaries: list[Tensor],
    params: list[Tensor],
    present: Optional[Tensor],
    diagnostics: list[Tensor],
    saved: list[Tensor],
) -> tuple[list[Tensor], list[Tensor]]:
    """Steps 6-2 back: (grad_summaries, grad_params), each parameter's gradient in its dtype."""
    op_checks.gates_backward_args(grad_gates, summaries, params, present, diagnostics, saved)
    d, dims, hidden = _sizes(summaries, params)
    num, ct, first = len(summaries), summaries[0].dtype, summaries[0]
    batch, device = first.shape[0], first.device
    block_b, block_k = backward_tiles()
    if _torch_formulas(num, ct, d, hidden, (block_b, block_k), device):
        return _torch_backward(grad_gates, summaries, params, present)
    params = _params_ct(params, ct)
    diagnostics = [t.contiguous() for t in diagnostics]
    saved = [t.contiguous() for t in saved]
    agreement, support, conflict, inst = diagnostics[:4]
    dim_gates = diagnostics[4:]
    u, norm, context = saved[:3]
    pres = saved[3:]

    grad_summaries = [torch.empty((batch, dim), dtype=ct, device=device) for dim in dims]
    # empty_like: _params_ct made every parameter contiguous, and it takes half
    # the host time of torch.empty(p.shape, dtype=, device=) (24 a call).
    grad_params = [torch.empty_like(p) for p in params]
    widths = [_slot_width(d, dim, r) for dim, r in zip(dims, hidden)]
    bases = [sum(widths[:m]) for m in range(num)]
    width = sum(widths)
    blocks = cdiv(batch, block_b)
    programs = max(0, min(blocks, MAX_PROGRAMS, max(1, WORKSPACE_ELEMS // width)))
    ws = torch.empty((programs, width), dtype=ct, device=device)
    if programs > 0:
        # Per-sample scratch of the cues' gradient: du (then dh), dcontext, dS, dC.
        scratch = [torch.empty((batch, num, d), dtype=ct, device=device) for _ in range(2)]
        scratch += [torch.empty((batch, num), dtype=ct, device=device) for _ in range(2)]
        slots = []
        for m in range(num):
            g, s = grad_gates[m], summaries[m]
            pw, _, hw, _, iw, _, dw, _ = params[NUM_PARAMS * m : NUM_PARAMS * (m + 1)]
            slots.append([g, g.stride(0), g.stride(1), s, s.stride(0), s.stride(1), pw, hw, iw, dw, pres[m],
                          dim_gates[m], grad_summaries[m], dims[m], hidden[m], bases[m]])  # fmt: skip
        args = [a for slot in slots + [slots[0]] * (MAX_SLOTS - num) for a in slot]
        pr = mask_bytes(present, u)
        args += [pr, u, norm, context, agreement, support, conflict, inst, *scratch, ws, batch, d, width, blocks]
        meta = dict(NUM=num, HAS_PRESENT=present is not None, BLOCK_B=block_b, BLOCK_DD=_pow2(d),
                    BLOCK_R=_pow2(max(hidden)), BLOCK_K=block_k)  # fmt: skip
        configs.launch(gates_backward_kernel, lambda meta: (programs,), args, meta, tune=False)
    slots = [[bases[m], dims[m], hidden[m], *grad_params[NUM_PARAMS * m : NUM_PARAMS * (m + 1)]] for m in range(num)]
    args = [a for slot in slots + [slots[0]] * (MAX_SLOTS - num) for a in slot] + [ws, programs, width, d]
    configs.launch(reduce_partials_kernel, lambda meta: (cdiv(width, BLOCK_C),), args,
                   dict(NUM=num, BLOCK_C=BLOCK_C), tune=False)  # fmt: skip
    return grad_summaries, grad_params
