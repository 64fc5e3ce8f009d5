"""An estimate of the least time any implementation of a pass needs on this
machine, timed in the same rounds as the contenders (``paired.py --bounds``),
so that a target ratio can be checked against what is possible and not only
against what was built.

Steps 2-7 of docs/spec.md work sample by sample (only the weight gradients
sum over the batch), so the cheapest schedule tiles by sample: summarise a
tile of samples, compute its gates, modulate it while it is still in cache,
and overlap the gate network of one tile with the passes over the next. The
estimate charges what even that schedule cannot avoid:

- ``floor read``: the bytes that must cross from memory, read with ``sum``:
  X once (the modulation re-reads its tile from cache) and Y forward; then
  dY once (the ``dX`` pass re-reads its tile), X again (it reaches the
  backward from wherever the forward left it: cache if it fits there) and
  dX. The inputs X, dY and the masks rotate through twice the last-level
  cache as the contenders' inputs do; Y and dX are one buffer each, reused
  call after call as the contenders' outputs are under the reusing
  allocator. A copy would not do as the floor: it also reads every line it
  writes, where streaming stores do not (a step beat a copy of its floor).
- ``products``: the gate network's matrix products of ONE sample, for the
  narrowest modality: the link that no overlap hides (the first tile's
  projection, its two gate layers; backward ``dz Wd``, ``dpre Wh`` and
  ``dh W``). Every other product could run beside a pass.

The estimate is their sum, per round. It is a lower bound under three
assumptions: a write costs at least a read of the same bytes from the same
level of memory; a re-read of a tile in cache costs nothing; ``sum`` reads
as fast as any pass could. It leaves out everything else a step does (the
gate network's own loops, the other products, allocation, Python, autograd),
so it is low: a target above it is not ruled out, which does not show it can
be built. CPU only: on a GPU each product would be a launch costing more
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
# What must cross from memory in each pass, in a step's order: "V" is the
# masks (the summary and the dX pass read them); Y and dX are written.
TOUCHES = {
    "forward": ("X", "V", "Y"),
    "fwd+bwd": ("X", "V", "Y", "dY", "X", "dX", "V"),
}
ROTATING = ("X", "V", "dY")  # inputs, cold at a step's start; outputs are reused buffers


def _check_pass(pass_name: str) -> None:
    if pass_name not in PASSES:
        raise ValueError(f"pass_name: an estimate is defined for {PASSES}, got {pass_name!r}")


def floor_read_call(w: Workload, dtype: torch.dtype, device, pass_name: str,
                    cache_bytes: int | None = None) -> Callable[[], object]:  # fmt: skip
    """One call reads the next slot's inputs and the shared outputs in ``TOUCHES[pass_name]`` order."""
    _check_pass(pass_name)
    sizes = {"X": w.feature_bytes(dtype), "V": w.mask_bytes()}
    sizes.update(Y=sizes["X"], dY=sizes["X"], dX=sizes["X"])
    names = [n for n in dict.fromkeys(TOUCHES[pass_name]) if sizes[n] > 0]
    gen = torch.Generator().manual_seed(0)

    def buffer(name):
        return torch.rand(max(1, sizes[name] // 4), generator=gen).to(device)

    rotating = [n for n in names if n in ROTATING]
    count = input_set_count(torch.device(device), sum(sizes[n] for n in rotating), cache_bytes)
    shared = {n: buffer(n) for n in names if n not in ROTATING}
    slots = [{**{n: buffer(n) for n in rotating}, **shared} for _ in range(count)]
    plan = [n for n in TOUCHES[pass_name] if n in names]
    step = [0]

    def call():
        step[0] += 1
        slot = slots[step[0] % len(slots)]
        return [slot[n].sum() for n in plan]

    call.slots, call.plan = slots, plan  # for the tests: what one call reads, in order
    return call


def product_shapes(w: Workload, pass_name: str, shared_dim: int = 128, hidden_dim: int | None = None):
    """(rows, inner, cols, transposed) of each product of one sample that no
    overlap hides; ``transposed``: the weight is read as ``W.t()`` (the forward's layers)."""
    _check_pass(pass_name)
    d, r, D = shared_dim, hidden_dim or shared_dim, min(w.dims)
    shapes = [(1, D, d, True), (1, 2 * d + 2, r, True), (1, r, D, True)]
    if pass_name == "fwd+bwd":
        shapes += [(1, D, r, False), (1, r, 2 * d + 2, False), (1, d, D, False)]
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
