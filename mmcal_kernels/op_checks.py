"""The argument checks of the pass and gate-network ops, in Python: what the
Triton ops check before they launch, and what the C++ ops' fake kernels
check, so that under ``torch.compile`` and on ``meta`` they refuse what the C++
kernels refuse (``csrc/common/checks.h``, ``gate_args.h``), with the same
exception types and argument names. The messages are Python's (``torch.float64``
where C++ says ``Double``)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import checks
from .checks import COMPUTE_DTYPES, PARAM_DTYPES, PER_MODALITY
from .spec import GateParams, layout_name


# Each function checks in the order of its C++ counterpart (csrc/common/checks.h,
# the ops in cpu/ops_cpu.cpp), so that an argument wrong in two ways raises the
# same exception type on both sides.


def summaries_args(xs: Sequence[Tensor], masks: Sequence[Optional[Tensor]], layouts: Sequence[int], ct) -> None:
    checks.check_lengths("masks", masks, len(xs))
    checks.check_op_features(xs, layouts)
    for i, (x, m, lay) in enumerate(zip(xs, masks, layouts)):
        checks.check_compute_dtype(ct, x, "ct")
        checks.check_mask(m, x, layout_name(lay), f"masks[{i}]")


def gate_grads_args(grad_ys: Sequence[Tensor], xs: Sequence[Tensor], layouts: Sequence[int], ct) -> None:
    checks.check_lengths("grad_ys", grad_ys, len(xs))
    checks.check_op_features(xs, layouts)
    for i, (x, dy) in enumerate(zip(xs, grad_ys)):
        checks.check_compute_dtype(ct, x, "ct")
        checks.check_like(dy, x, f"grad_ys[{i}]")


def modulate_args(xs: Sequence[Tensor], gates: Sequence[Tensor], layouts: Sequence[int]) -> None:
    checks.check_op_features(xs, layouts)
    checks.check_lengths("gates", gates, len(xs))
    ct = _first_dtype(gates[0], "gates[0]")
    for i, (x, g, lay) in enumerate(zip(xs, gates, layouts)):
        checks.check_call_compute_dtype(ct, x, f"gates[{i}]")
        checks.check_per_channel(g, x, lay, f"gates[{i}]", ct, "gates[0]")


def input_grads_args(xs, grad_ys, gates, masks, ds, layouts) -> None:
    checks.check_op_features(xs, layouts)
    for name, items in (("grad_ys", grad_ys), ("gates", gates), ("masks", masks), ("ds", ds)):
        checks.check_lengths(name, items, len(xs))
    ct = ct_from = None  # the call's compute dtype: the first modality's gate's, or its ds's
    for i, (x, dy, g, m, q, lay) in enumerate(zip(xs, grad_ys, gates, masks, ds, layouts)):
        if dy is None and q is None:
            raise ValueError(f"grad_ys[{i}], ds[{i}]: neither is given, so dX has no term")
        if (dy is None) != (g is None):
            raise ValueError(f"grad_ys[{i}], gates[{i}]: give both (the dY * g term) or neither")
        named = f"gates[{i}]" if g is not None else f"ds[{i}]"  # the tensor that carries the compute dtype
        if ct is None:
            ct, ct_from = _first_dtype(g if g is not None else q, named), named
        checks.check_call_compute_dtype(ct, x, named)
        if dy is not None:
            checks.check_like(dy, x, f"grad_ys[{i}]")
            checks.check_per_channel(g, x, lay, f"gates[{i}]", ct, ct_from)
        if q is not None:
            checks.check_per_channel(q, x, lay, f"ds[{i}]", ct, ct_from)
        checks.check_mask(m, x, layout_name(lay), f"masks[{i}]")


def _first_dtype(t, name: str) -> torch.dtype:
    """The dtype of the tensor that sets a call's compute dtype."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    return t.dtype


def gates_args(summaries: Sequence[Tensor], params: Sequence[Tensor], present: Optional[Tensor]) -> None:
    """The gate-network op's inputs, in ``gate_args::check_gate_args``' order:
    parameters named by their flat index, as the C++ op names them."""
    if len(summaries) < 2:
        raise ValueError(f"summaries: expected one [B, D_m] tensor per modality, at least 2, got {len(summaries)}")
    for i, s in enumerate(summaries):
        if not isinstance(s, Tensor):
            raise TypeError(f"summaries[{i}]: expected a tensor, got {type(s).__name__}")
        checks.check_strided(s, f"summaries[{i}]")
    first = summaries[0]
    if first.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"summaries[0]: expected the compute dtype, float32 or float64, got {first.dtype}")
    if first.dim() != 2:
        raise ValueError(f"summaries[0]: expected [B, D_0] (2 dims), got {tuple(first.shape)}")
    for i, s in enumerate(summaries):
        if s.device != first.device:
            raise ValueError(f"summaries[{i}]: on {s.device}, but summaries[0] is on {first.device}")
        if s.dim() != 2 or s.shape[0] != first.shape[0]:
            raise ValueError(f"summaries[{i}]: expected [B, D_m] with B = {first.shape[0]}, got {tuple(s.shape)}")
        if s.dtype != first.dtype:
            raise TypeError(f"summaries[{i}]: dtype {s.dtype} differs from summaries[0]'s {first.dtype}")
    num = len(summaries)
    if len(params) != PER_MODALITY * num:
        raise ValueError(f"params: expected {PER_MODALITY} tensors per modality ({PER_MODALITY * num}), got {len(params)}")
    device = first.device
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{_param_name(i)}: expected a tensor, got {type(p).__name__}")
        if p.layout is not torch.strided:  # check_strided's test, the name built only for the error
            checks.check_strided(p, _param_name(i))
        if p.device != device:
            raise ValueError(f"{_param_name(i)}: on {p.device}, but summaries[0] is on {device}")
        if p.dtype not in PARAM_DTYPES:  # as the C++ op: float8 is floating point but cannot promote
            raise TypeError(f"{_param_name(i)}: expected a floating-point dtype ({checks._dtype_names(PARAM_DTYPES)}), "
                            f"got {p.dtype}")  # fmt: skip
    if params[0].dim() != 2:
        raise ValueError(f"{_param_name(0)}: expected [d, D_0], got {list(params[0].shape)}")
    d = params[0].shape[0]
    cue = 2 * d + 2
    for m in range(num):
        pw, pb, hw, hb, iw, ib, dw, db = params[PER_MODALITY * m : PER_MODALITY * (m + 1)]
        if hw.dim() != 2 or hw.shape[1] != cue:
            raise ValueError(f"{_param_name(PER_MODALITY * m + 2)}: expected [r, 2d+2] = [r, {cue}], got {list(hw.shape)}")
        dim, r = summaries[m].shape[1], hw.shape[0]
        want = [(d, dim), (d,), (r, cue), (r,), (1, r), (1,), (dim, r), (dim,)]
        for j, (p, shape) in enumerate(zip((pw, pb, hw, hb, iw, ib, dw, db), want)):
            if tuple(p.shape) != shape:
                raise ValueError(f"{_param_name(PER_MODALITY * m + j)}: expected {list(shape)} "
                                 f"(d = {d}, D_{m} = {dim}, r = {r}), got {list(p.shape)}")  # fmt: skip
    if present is not None:
        if not isinstance(present, Tensor):
            raise TypeError(f"present: expected a bool tensor, got {type(present).__name__}")
        checks.check_strided(present, "present")
        if present.device != first.device:
            raise ValueError(f"present: on {present.device}, but summaries[0] is on {first.device}")
        if present.dtype != torch.bool:
            raise TypeError(f"present: expected a bool tensor, got {present.dtype}")
        if tuple(present.shape) != (first.shape[0], num):
            raise ValueError(f"present: expected [B, M] = [{first.shape[0]}, {num}], got {list(present.shape)}")


def _param_name(i: int) -> str:
    # Built only for an error: an eager call checks 8 parameters a modality.
    return f"params[{i}] ({GateParams._fields[i % PER_MODALITY]} of modality {i // PER_MODALITY})"


def gates_backward_args(grad_gates, summaries, params, present, diagnostics, saved) -> None:
    """The forward's arguments, then what it returned, as the backward gets
    them back (``gate_args::check_backward_args``' order: the three counts,
    then each tensor's device, shape and dtype)."""
    gates_args(summaries, params, present)
    num, first = len(summaries), summaries[0]
    batch, ct, device = first.shape[0], first.dtype, first.device
    d = params[0].shape[0]
    dims = [s.shape[1] for s in summaries]
    hidden = [params[PER_MODALITY * m + 2].shape[0] for m in range(num)]
    lists = [
        ("grad_gates", grad_gates, [(batch, dim) for dim in dims]),
        ("diagnostics", diagnostics, [(batch, num, num), (batch, num), (batch, num), (batch, num)]
                                     + [(batch, dim) for dim in dims]),
        ("saved", saved, [(batch, num, d), (batch, num), (batch, num, d)] + [(batch, r) for r in hidden]),
    ]  # fmt: skip
    for name, tensors, shapes in lists:
        if len(tensors) != len(shapes):
            raise ValueError(f"{name}: expected {len(shapes)} tensors, got {len(tensors)}")
    for name, tensors, shapes in lists:
        _returned(name, tensors, shapes, ct, device)


def _returned(name: str, tensors, shapes, ct, device) -> None:
    """A list an op gets back from its own forward: device, shape, compute dtype."""
    for i, (t, shape) in enumerate(zip(tensors, shapes)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}]: expected a tensor, got {type(t).__name__}")
        if t.layout is not torch.strided:
            checks.check_strided(t, f"{name}[{i}]")
        if t.device != device:
            raise ValueError(f"{name}[{i}]: on {t.device}, but summaries[0] is on {device}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}[{i}]: expected {list(shape)}, got {list(t.shape)}")
        if t.dtype != ct:
            raise TypeError(f"{name}[{i}]: expected the compute dtype {ct}, got {t.dtype}")
