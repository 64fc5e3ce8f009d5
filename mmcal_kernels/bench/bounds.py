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
  dX. X, dY and the masks are the contenders' own input sets, taken in their
  rotation (twice the last-level cache); Y and dX are one buffer each,
  reused call after call as the contenders' outputs are under the reusing
  allocator.
- ``floor kernels``: the same bytes moved by the ``cpu`` backend's own
  passes (where it is built): the modulation reads X and writes Y;
  forward+backward adds a modulation of dY into dX and a summary of all of X. A
  review found ``sum`` slower than the modulation over the same bytes in
  some processes (AVE's forward: the modulation alone took 0.63-0.98x the
  estimate then), so each round's floor is the faster of the two.
  A copy would not do as a floor: it also reads every line it writes, where
  streaming stores do not (a step beat a copy of its floor).
- ``products``: the gate network's matrix products of ONE sample, for the
  narrowest modality (a projection, the two gate layers; backward ``dz Wd``,
  ``dpre Wh`` and ``dh W``): a stand-in for the serial link between a
  tile's passes. Every other product could run beside a pass, and with two
  tiles in flight even these could (a review's point); they are a few
  percent of the estimate at most.

The estimate is, per round, the faster floor plus the products. It is a
lower bound under three assumptions: a write costs at least a read of the
same bytes from the same level of memory; a re-read of a tile in cache costs
nothing; the faster of the two floors moves its bytes as fast as any pass
could. It leaves out everything else a step does (the gate network's own
loops, the other products, allocation, Python, autograd), so it is low: a
target above it is not ruled out, which does not show it can be built. CPU only: on a GPU each product would be a launch costing more
than its arithmetic, which a fused kernel does not pay.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .timing import quantile_summary
from .workloads import Workload

FLOOR = "floor read"
FLOOR_KERNELS = "floor kernels"
FLOORS = (FLOOR, FLOOR_KERNELS)
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


def _check_pass(pass_name: str) -> None:
    if pass_name not in PASSES:
        raise ValueError(f"pass_name: an estimate is defined for {PASSES}, got {pass_name!r}")


def _touched(input_set, name):
    """The contenders' tensors of ``name`` in one input set (X, dY, V: one per modality, masks that exist)."""
    if name == "X":
        return list(input_set.features)
    if name == "dY":
        return list(input_set.grad_outputs)
    return [m for m in input_set.masks if m is not None]


def floor_read_call(sets: Sequence, pass_name: str) -> Callable[[], list]:
    """One call reads the next input set's X, dY and masks, and the shared
    outputs Y and dX, in ``TOUCHES[pass_name]`` order (``sets``: the
    contenders' ``InputSet``s, rotating)."""
    _check_pass(pass_name)
    x = sets[0].features[0]
    out_bytes = sum(t.numel() * t.element_size() for t in sets[0].features)
    gen = torch.Generator().manual_seed(0)
    outputs = {n: torch.rand(max(1, out_bytes // 4), generator=gen).to(x.device) for n in ("Y", "dX")}
    plan = [n for n in TOUCHES[pass_name] if n != "V" or any(m is not None for m in sets[0].masks)]
    step = [0]

    def read(input_set, name):
        return [outputs[name]] if name in outputs else _touched(input_set, name)

    def call():
        step[0] += 1
        input_set = sets[step[0] % len(sets)]
        return [t.sum() for name in plan for t in read(input_set, name)]

    call.plan, call.read = plan, read  # for the tests: what one call reads, in order
    return call


def floor_kernels_call(sets: Sequence, layouts: Sequence[str], pass_name: str) -> Callable[[], list]:
    """One call moves the floor's bytes with the cpu backend's passes: X read
    and Y written (the modulation); forward+backward also dY read and dX
    written (a modulation of dY) and all of X read (the summaries, without
    masks). The masks are not read (under 1% of |X|): a little low, as a
    lower bound may be."""
    from ..autograd import _ops_below_autograd  # the passes without their Python autograd wrapper
    from ..spec import layout_codes

    _check_pass(pass_name)
    codes = layout_codes(layouts)
    ct = sets[0].gates[0].dtype
    unmasked = [None] * len(sets[0].features)
    step = [0]

    def call():
        step[0] += 1
        s = sets[step[0] % len(sets)]
        with torch.no_grad(), _ops_below_autograd(s.features[0]):
            out = torch.ops.mmcal.modulate(s.features, s.gates, codes)
            if pass_name == "fwd+bwd":
                out = out + torch.ops.mmcal.modulate(s.grad_outputs, s.gates, codes)
                # every position of X: the backward's dg pass reads padded ones too (the summary skips them)
                out = out + torch.ops.mmcal.summaries(s.features, unmasked, codes, ct)
        return out

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


def _bounds(times: dict[str, Sequence[float]]) -> list[float]:
    """Per round: the faster of the floors timed, plus the products."""
    missing = [label for label in (FLOOR, PRODUCTS) if label not in times]
    if missing:
        raise ValueError(f"times: no {missing} among {sorted(times)}")
    floors = [times[label] for label in FLOORS if label in times]
    return [min(f) + p for f, p in zip(zip(*floors), times[PRODUCTS])]


def bound_ratios(times: dict[str, Sequence[float]]) -> dict[str, dict]:
    """Per round, the estimate (the faster floor + products) and each
    contender's time over it; median, p20, p80 over rounds."""
    bound = _bounds(times)
    out = {BOUND: quantile_summary(bound)}
    for label, series in times.items():
        if label not in (*FLOORS, PRODUCTS):
            out[label] = quantile_summary([t / b for t, b in zip(series, bound)])
    return out


def needed_ratios(times: dict[str, Sequence[float]], pass_name: str, eager: str, compiled: str) -> dict:
    """Per round, the time over the estimate that would meet issue 12's
    targets for ``pass_name``: min(eager / 3, compiled / 2) forward+backward,
    compiled / 2 forward (``eager`` may be absent there). Below 1 from p20 to
    p80: out of reach for any implementation (under the estimate's
    assumptions); at least 1 there: not ruled out by the estimate (which says
    nothing of whether it can be built); else undecided."""
    _check_pass(pass_name)
    bound = _bounds(times)
    if pass_name == "fwd+bwd":
        target = [min(e / 3, c / 2) for e, c in zip(times[eager], times[compiled])]
    else:
        target = [c / 2 for c in times[compiled]]
    out = quantile_summary([t / b for t, b in zip(target, bound)])
    out["verdict"] = "out of reach" if out["p80"] < 1 else "not ruled out" if out["p20"] >= 1 else "undecided"
    return out
