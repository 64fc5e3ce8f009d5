"""The argument checks of the pass and gate-network ops, in Python: what the
Triton ops check before they launch, and what the C++ ops' fake kernels
check, so that under ``torch.compile`` and on ``meta`` they refuse what the C++
kernels refuse (``csrc/common/checks.h``, ``gate_args.h``), with the same
exception types and argument names. The messages are Python's (``torch.float64``
where C++ says ``Double``)."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from . import checks
from .checks import PER_MODALITY
from .spec import layout_name


def summaries_args(xs: Sequence[Tensor], masks: Sequence[Optional[Tensor]], layouts: Sequence[int], ct) -> None:
    checks.check_op_features(xs, layouts)
    checks.check_lengths("masks", masks, len(xs))
    for i, (x, m, lay) in enumerate(zip(xs, masks, layouts)):
        checks.check_compute_dtype(ct, x, "ct")
        checks.check_mask(m, x, layout_name(lay), f"masks[{i}]")


def gate_grads_args(grad_ys: Sequence[Tensor], xs: Sequence[Tensor], layouts: Sequence[int], ct) -> None:
    checks.check_op_features(xs, layouts)
    checks.check_lengths("grad_ys", grad_ys, len(xs))
    for i, (x, dy) in enumerate(zip(xs, grad_ys)):
        checks.check_compute_dtype(ct, x, "ct")
        checks.check_like(dy, x, f"grad_ys[{i}]")


def modulate_args(xs: Sequence[Tensor], gates: Sequence[Tensor], layouts: Sequence[int]) -> None:
    checks.check_op_features(xs, layouts)
    checks.check_lengths("gates", gates, len(xs))
    for i, (x, g, lay) in enumerate(zip(xs, gates, layouts)):
        checks.check_per_channel(g, x, lay, f"gates[{i}]")
    checks.check_one_compute_dtype([(f"gates[{i}]", g) for i, g in enumerate(gates)])


def input_grads_args(xs, grad_ys, gates, masks, ds, layouts) -> None:
    checks.check_op_features(xs, layouts)
    for name, items in (("grad_ys", grad_ys), ("gates", gates), ("masks", masks), ("ds", ds)):
        checks.check_lengths(name, items, len(xs))
    for i, (x, dy, g, m, q, lay) in enumerate(zip(xs, grad_ys, gates, masks, ds, layouts)):
        if (dy is None) != (g is None):
            raise ValueError(f"grad_ys[{i}], gates[{i}]: give both (the dY * g term) or neither")
        if dy is None and q is None:
            raise ValueError(f"grad_ys[{i}], ds[{i}]: neither is given, so dX has no term")
        if dy is not None:
            checks.check_like(dy, x, f"grad_ys[{i}]")
            checks.check_per_channel(g, x, lay, f"gates[{i}]")
        if q is not None:
            checks.check_per_channel(q, x, lay, f"ds[{i}]")
        checks.check_mask(m, x, layout_name(lay), f"masks[{i}]")
    checks.check_one_compute_dtype([(f"{name}[{i}]", t) for i, (g, q) in enumerate(zip(gates, ds))
                                    for name, t in (("gates", g), ("ds", q))])  # fmt: skip


def gates_args(summaries: Sequence[Tensor], params: Sequence[Tensor], present: Optional[Tensor]) -> None:
    checks.check_gate_op_args(summaries, params, present)


def gates_backward_args(grad_gates, summaries, params, present, diagnostics, saved) -> None:
    """The forward's arguments, then what it returned, as the backward gets them back."""
    checks.check_gate_op_args(summaries, params, present)
    num, first = len(summaries), summaries[0]
    batch, ct, device = first.shape[0], first.dtype, first.device
    d = params[0].shape[0]
    dims = [s.shape[1] for s in summaries]
    hidden = [params[PER_MODALITY * m + 2].shape[0] for m in range(num)]
    checks.check_op_tensors("grad_gates", grad_gates, [(batch, dim) for dim in dims], ct, device)
    checks.check_op_tensors("diagnostics", diagnostics, [(batch, num, num), (batch, num), (batch, num), (batch, num)]
                            + [(batch, dim) for dim in dims], ct, device)  # fmt: skip
    checks.check_op_tensors("saved", saved, [(batch, num, d), (batch, num), (batch, num, d)] + [(batch, r) for r in hidden],
                            ct, device)  # fmt: skip
