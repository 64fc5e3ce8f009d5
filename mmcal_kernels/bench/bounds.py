"""An estimate of the least time any implementation of a pass needs on this
machine, timed in the same rounds as the contenders (``paired.py --bounds``),
so that a target ratio can be checked against what is possible and not only
against what was built.

Two parts, each a timed callable beside the contenders:

- ``floor read``: the pass's byte floor (floors.py; features and masks, not
  the parameters, which are the same tensors every call and may stay in
  cache), read with ``sum`` in the order a step touches it: the forward
  reads X (summary), X again and Y (the modulation; its write read instead),
  forward+backward then dY and X (the ``dg`` pass), dY and dX (the ``dX``
  pass). Each buffer rotates through twice the last-level cache as the
  contenders' inputs do, so the first touch of X and dY comes from memory as
  in a step, and a second touch finds in cache whatever a step could find
  there. A copy would not do as the floor: it also reads every line it
  writes, where streaming stores (the kernels' large outputs) do not, and a
  step beat a copy of its floor (AVE's forward, 0.99x).
- ``products``: the gate network's matrix products that no schedule can
  overlap with a pass, at the workload's shapes, through ``torch.mm`` (the
  BLAS every backend here uses). The agreement needs every modality's
  projection, so the last one summarised must be projected after all the
  summary passes; the first modality modulated needs its two gate layers
  after that; backward, the first modality whose ``dg`` is done still needs
  ``dz Wd`` and ``dpre Wh``, and the first ``dX`` pass needs one ``dh W``.
  Every other product could run beside the passes (other modalities' layers,
  the weight gradients). This takes, for each of those links, the modality
  with the fewest channels.

The estimate is their sum, per round. It is a lower bound under three
assumptions: a write costs at least a read of the same bytes from the same
level of memory; ``sum`` reads at the fastest rate any pass could; BLAS at
the rate torch's own reaches at these shapes (a faster small-matrix library
would lower it). CPU only: on a GPU each product is a launch that costs more
than its arithmetic, which a fused kernel does not pay.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .timing import input_set_count, median_p20_p80
from .workloads import Workload

FLOOR = "floor read"
PRODUCTS = "products"
BOUND = "bound"
# The passes an estimate is defined for: the module's steps, features needing gradients.
PASSES = ("forward", "fwd+bwd")
# The buffers each pass touches, in a step's order; "V" is the masks (summary and dX pass).
TOUCHES = {
    "forward": ("X", "V", "X", "Y"),
    "fwd+bwd": ("X", "V", "X", "Y", "dY", "X", "dY", "dX", "V"),
}


def _check_pass(pass_name: str) -> None:
    if pass_name not in PASSES:
        raise ValueError(f"pass_name: an estimate is defined for {PASSES}, got {pass_name!r}")


def floor_read_call(w: Workload, dtype: torch.dtype, device, pass_name: str,
                    cache_bytes: int | None = None) -> Callable[[], object]:  # fmt: skip
    """One call reads the next slot's buffers in ``TOUCHES[pass_name]`` order."""
    _check_pass(pass_name)
    sizes = {"X": w.feature_bytes(dtype), "V": w.mask_bytes()}
    sizes.update(Y=sizes["X"], dY=sizes["X"], dX=sizes["X"])
    names = [n for n in dict.fromkeys(TOUCHES[pass_name]) if sizes[n] > 0]
    slot_bytes = sum(sizes[n] for n in names)
    count = input_set_count(torch.device(device), slot_bytes, cache_bytes)
    gen = torch.Generator().manual_seed(0)
    slots = [{n: torch.rand(max(1, sizes[n] // 4), generator=gen).to(device) for n in names} for _ in range(count)]
    plan = [n for n in TOUCHES[pass_name] if n in names]
    step = [0]

    def call():
        step[0] += 1
        slot = slots[step[0] % len(slots)]
        return [slot[n].sum() for n in plan]

    call.slots, call.plan = slots, plan  # for the tests: what one call reads, in order
    return call


def product_shapes(w: Workload, pass_name: str, shared_dim: int = 128, hidden_dim: int | None = None):
    """(rows, inner, cols, transposed) of each product no schedule can overlap
    with a pass; ``transposed``: the weight is read as ``W.t()`` (the forward's layers)."""
    _check_pass(pass_name)
    d, r, B, D = shared_dim, hidden_dim or shared_dim, w.batch, min(w.dims)
    shapes = [(B, D, d, True), (B, 2 * d + 2, r, True), (B, r, D, True)]
    if pass_name == "fwd+bwd":
        shapes += [(B, D, r, False), (B, r, 2 * d + 2, False), (B, d, D, False)]
    return shapes


def products_call(w: Workload, compute_dtype: torch.dtype, device, pass_name: str, shared_dim: int = 128,
                  hidden_dim: int | None = None, seed: int = 0) -> Callable[[], None]:  # fmt: skip
    """One call runs every product of ``product_shapes`` into preallocated outputs."""
    gen = torch.Generator().manual_seed(seed)
    work = []
    for rows, inner, cols, transposed in product_shapes(w, pass_name, shared_dim, hidden_dim):
        a = torch.randn(rows, inner, generator=gen).to(device=device, dtype=compute_dtype)
        weight = torch.randn(*((cols, inner) if transposed else (inner, cols)), generator=gen)
        weight = weight.to(device=device, dtype=compute_dtype)
        out = torch.empty(rows, cols, device=device, dtype=compute_dtype)
        work.append((a, weight.t() if transposed else weight, out))

    def call():
        for a, b, out in work:
            torch.mm(a, b, out=out)

    call.work = work  # for the tests: the operands of each product
    return call


def _summary(values: Sequence[float]) -> dict:
    return dict(zip(("median", "p20", "p80"), median_p20_p80(values)))


def bound_ratios(times: dict[str, Sequence[float]]) -> dict[str, dict]:
    """Per round, the estimate (floor read + products) and each contender's
    time over it; median, p20, p80 over rounds."""
    missing = [label for label in (FLOOR, PRODUCTS) if label not in times]
    if missing:
        raise ValueError(f"times: no {missing} among {sorted(times)}")
    bound = [f + p for f, p in zip(times[FLOOR], times[PRODUCTS])]
    out = {BOUND: _summary(bound)}
    for label, series in times.items():
        if label not in (FLOOR, PRODUCTS):
            out[label] = _summary([t / b for t, b in zip(series, bound)])
    return out


def needed_ratios(times: dict[str, Sequence[float]], pass_name: str, eager: str, compiled: str) -> dict:
    """Per round, the time over the estimate that would meet issue 12's
    targets for ``pass_name``: min(eager / 3, compiled / 2) forward+backward,
    compiled / 2 forward. Below 1 from p20 to p80: out of reach for any
    implementation (under the estimate's assumptions); at least 1 there: not
    ruled out by the estimate (which says nothing of whether it can be
    built); else undecided."""
    _check_pass(pass_name)
    bound = [f + p for f, p in zip(times[FLOOR], times[PRODUCTS])]
    if pass_name == "fwd+bwd":
        target = [min(e / 3, c / 2) for e, c in zip(times[eager], times[compiled])]
    else:
        target = [c / 2 for c in times[compiled]]
    out = _summary([t / b for t, b in zip(target, bound)])
    out["verdict"] = "out of reach" if out["p80"] < 1 else "not ruled out" if out["p20"] >= 1 else "undecided"
    return out
