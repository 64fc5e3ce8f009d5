"""What any implementation of a pass must spend on this machine, timed in the
same rounds as the contenders (``paired.py --bounds``), so that a target ratio
can be checked against what is possible and not only against what was built.

Two parts, each a timed callable beside the contenders:

- ``floor read``: a sum over as many bytes as the pass's byte floor
  (floors.py), rotating through buffers twice the last-level cache as the
  contenders' inputs do. Reading is the cheapest way to move a byte: a copy
  (the benchmark's bandwidth probe) also reads every line it writes, where
  streaming stores (the kernels' large outputs) do not, so a step can beat a
  copy of its floor (AVE's forward does) but not a read of it. The features'
  and masks' bytes only: the parameters are the same tensors in every call
  and may stay in cache, so the floor's ``|P|`` terms are left out. The
  passes over X are memory-bound; no implementation moves fewer bytes.
- ``products``: the gate network's matrix products on the critical path, at
  the workload's shapes, through ``torch.mm`` (the BLAS every backend here
  uses): the forward's three per modality (``s W^T``, ``q Wh^T``,
  ``e Wd^T``) and, for forward+backward, the backward's three that lead to
  ``ds`` (``dz Wd``, ``dpre Wh``, ``dh W``). The weight gradients' products
  are left out: nothing downstream waits on them, so an implementation could
  hide them under the ``dX`` pass.

The bound is their sum, per round: the floor and the products cannot overlap
in a step, because each pass's stage waits on the one before (the gate network
needs every summary; the modulation, every gate; the ``dX`` pass, ``ds``).
It assumes BLAS at the rate torch's own reaches at these shapes: a faster
small-matrix library would lower it. CPU only: on a GPU each product is a
launch that costs more than its arithmetic, and a fused kernel pays neither.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .floors import floor_bytes
from .timing import input_set_count, median_p20_p80
from .workloads import Workload

FLOOR = "floor read"
PRODUCTS = "products"
BOUND = "bound"
# The passes a bound is defined for: the module's steps, features needing gradients.
PASSES = ("forward", "fwd+bwd")


def _check_pass(pass_name: str) -> None:
    if pass_name not in PASSES:
        raise ValueError(f"pass_name: a bound is defined for {PASSES}, got {pass_name!r}")


def floor_read_call(w: Workload, dtype: torch.dtype, device, pass_name: str,
                    cache_bytes: int | None = None) -> Callable[[], object]:  # fmt: skip
    """One call reads the pass's floor (no parameter bytes) once."""
    _check_pass(pass_name)
    total = floor_bytes(pass_name, w.feature_bytes(dtype), w.mask_bytes(), 0, 0)
    count = input_set_count(torch.device(device), total, cache_bytes)
    gen = torch.Generator().manual_seed(0)
    buffers = [torch.rand(max(1, total // 4), generator=gen).to(device) for _ in range(count)]
    step = [0]

    def call():
        step[0] += 1
        return buffers[step[0] % len(buffers)].sum()

    call.buffers = buffers  # for the tests: what one call reads
    return call


def product_shapes(w: Workload, pass_name: str, shared_dim: int = 128, hidden_dim: int | None = None):
    """(rows, inner, cols, transposed) of each product on the critical path;
    ``transposed``: the weight is read as ``W.t()`` (the forward's layers)."""
    _check_pass(pass_name)
    d, r, B = shared_dim, hidden_dim or shared_dim, w.batch
    shapes = []
    for D in w.dims:
        shapes += [(B, D, d, True), (B, 2 * d + 2, r, True), (B, r, D, True)]
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

    return call


def bound_ratios(times: dict[str, Sequence[float]]) -> dict[str, dict]:
    """Per round, the bound (floor read + products) and each contender's time
    over it (at least 1 for anything that does the work); median, p20, p80."""
    missing = [label for label in (FLOOR, PRODUCTS) if label not in times]
    if missing:
        raise ValueError(f"times: no {missing} among {sorted(times)}")
    bound = [f + p for f, p in zip(times[FLOOR], times[PRODUCTS])]
    out = {BOUND: dict(zip(("median", "p20", "p80"), median_p20_p80(bound)))}
    for label, series in times.items():
        if label in (FLOOR, PRODUCTS):
            continue
        out[label] = dict(zip(("median", "p20", "p80"), median_p20_p80([t / b for t, b in zip(series, bound)])))
    return out
