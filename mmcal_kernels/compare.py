"""Helpers for checking a backend against the reference: used by the test suite,
``python -m mmcal_kernels.info`` and the benchmarks, so all judge alike.

* ``TOLERANCES``: per feature dtype, the (rtol, atol) a backend's result must
  meet against the float64 reference on the same inputs and parameters.
* ``randomize_``: every parameter to random values. The last gate layers start
  at zero, which makes every gradient through the summaries and cues exactly
  zero: an equivalence test at initialisation cannot fail.
* ``random_case``: features, masks and presence, never zeros.
* ``reference_copy``: a module's copy on the reference backend (the oracle).
* ``assert_close``: fails saying where and by how much two tensors differ.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .spec import DIAGNOSTIC_TENSORS

# Against the float64 reference: |got - want| <= rtol * |want| + atol * scale,
# with scale the largest |want| of the tensor but at least 1, so that
# cancellation in a sum is judged against the size of its terms, and a
# gradient that is exactly zero in float64 may be a rounding residue elsewhere.
# Measured over 40 random cases of the test suite, the worst tensor of the
# reference (float32 compute) uses about a third of each budget below (most
# use far less: a fourteenth-session audit measured 0.004-0.15 of the float32
# budget for the cpu backend). Half types: the output is rounded once, a
# feature gradient up to three times (the reference casts each of its two
# paths back to the feature dtype, then adds).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (5e-5, 5e-6),
    torch.float16: (2e-3, 5e-4),
    torch.bfloat16: (1.6e-2, 4e-3),
}


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
    """Fill every parameter with N(0, std^2) noise (in place); returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
    return module


def reference_copy(module: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A deep copy of ``module`` (tied layers stay tied) that computes with the
    reference backend, in ``dtype`` when given: the oracle of a comparison."""
    oracle = copy.deepcopy(module)
    if dtype is not None:
        oracle = oracle.to(dtype)
    oracle.backend = "reference"
    return oracle


def _random(shape, dtype, device, gen) -> Tensor:
    # Drawn in float64 on the CPU so a case is the same on every device and dtype.
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def random_case(
    dims: Sequence[int],
    layouts: Union[str, Sequence[str]] = "sequence",
    *,
    batch: int = 3,
    positions: Optional[Sequence] = None,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    masked: bool = True,
    missing: bool = True,
    seed: int = 0,
) -> tuple[list[Tensor], list[Optional[Tensor]], Optional[Tensor]]:
    """Random ``(features, masks, present)`` for a module of these dims and layouts.

    ``positions[m]`` is a length for a ``"sequence"`` modality, or the tuple of
    trailing sizes ``S`` for a ``"spatial"`` one (``()`` for ``[B, D]``).
    ``masked`` draws a validity mask for every sequence modality (about 30%
    padded, row 0 keeping its first position); ``missing`` draws ``present``
    with about 25% of the entries missing.
    """
    num = len(dims)
    layouts = [layouts] * num if isinstance(layouts, str) else list(layouts)
    if positions is None:
        positions = [5 + 2 * m if lay == "sequence" else (3, 2) for m, lay in enumerate(layouts)]
    gen = torch.Generator().manual_seed(seed)
    features, masks = [], []
    for d, lay, pos in zip(dims, layouts, positions):
        if lay == "sequence":
            features.append(_random((batch, pos, d), dtype, device, gen))
            if masked:
                mask = torch.rand((batch, pos), generator=gen) > 0.3
                if batch and pos:
                    mask[0, 0] = True
                masks.append(mask.to(device))
            else:
                masks.append(None)
        else:
            features.append(_random((batch, d, *pos), dtype, device, gen))
            masks.append(None)
    present = (torch.rand((batch, num), generator=gen) > 0.25).to(device) if missing else None
    return features, masks, present


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, name: str = "tensor", *, slack: float = 0.0) -> None:
    """``|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected| + slack`` elementwise, NaNs equal.

    ``slack`` (0 unless given) is an absolute allowance on top of the table,
    for a caller that has measured one (the reference's own error on a sum
    that cancels)."""
    rtol, atol = TOLERANCES[dtype]
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.numel() == 0:
        return
    nan_mismatch = a.isnan() != e.isnan()
    if nan_mismatch.any():
        idx = tuple(nan_mismatch.nonzero()[0].tolist())
        raise AssertionError(f"{name}: NaN in one but not the other at {idx}: got {a[idx].item()}, expected {e[idx].item()}")
    finite = e.isfinite() & a.isfinite()
    inf_mismatch = (~finite & ~e.isnan()) & (a != e)
    if inf_mismatch.any():
        idx = tuple(inf_mismatch.nonzero()[0].tolist())
        raise AssertionError(f"{name}: non-finite mismatch at {idx}: got {a[idx].item()}, expected {e[idx].item()}")
    a, e = torch.where(finite, a, 0), torch.where(finite, e, 0)
    scale = max(1.0, e.abs().max().item())
    diff = (a - e).abs()
    allowed = atol * scale + rtol * e.abs() + slack
    bad = diff > allowed
    if bad.any():
        worst = tuple(int(i) for i in torch.unravel_index((diff - allowed).argmax(), diff.shape))
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())} of {diff.numel()} elements differ beyond rtol={rtol}, "
            f"atol={atol} x scale {scale:.3g}{f' + slack {slack:.3g}' if slack else ''}; worst at {worst}: got {a[worst].item():.10g}, "
            f"expected {e[worst].item():.10g} (abs diff {diff[worst].item():.3g}); "
            f"max abs diff {diff.max().item():.3g}, max rel diff {(diff / e.abs().clamp_min(1e-300)).max().item():.3g}"
        )


def forward_backward(module, features, masks, present, grad_outputs):
    """Run ``module`` forward with diagnostics and backward from ``grad_outputs``.

    Returns ``(outputs, diagnostics, grads)``; ``grads`` lists the gradients of
    the features, then of the parameters in ``named_parameters`` order.
    """
    features = [x.detach().requires_grad_() for x in features]
    module.zero_grad(set_to_none=True)
    outputs, diagnostics = module(features, masks=masks, present=present, return_diagnostics=True)
    torch.autograd.backward(outputs, grad_outputs)
    grads = [x.grad for x in features] + [p.grad for p in module.parameters()]
    return outputs, diagnostics, grads


def assert_runs_close(got, want, dtype: torch.dtype, param_names=()) -> None:
    """Compare two ``forward_backward`` results: outputs, diagnostics, gradients.

    Outputs at the tolerance of ``dtype`` (the features'); the diagnostics and
    the gradients at that of their own dtype: the diagnostics are in the
    compute dtype and never rounded lower, a parameter's gradient is rounded
    once to the parameter's dtype. (Judged at a half feature dtype, an error
    10^4 times the real one passed.) A gradient that is None on one side
    must be None on the other.
    """
    (outs, diag, grads), (outs_w, diag_w, grads_w) = got, want
    for i, (a, e) in enumerate(zip(outs, outs_w, strict=True)):
        assert_close(a, e, dtype, f"output[{i}]")
    for key in DIAGNOSTIC_TENSORS:
        assert_close(diag[key], diag_w[key], diag[key].dtype, key)
    for i, (a, e) in enumerate(zip(diag["dimension_gates"], diag_w["dimension_gates"], strict=True)):
        assert_close(a, e, a.dtype, f"dimension_gates[{i}]")
    names = [f"grad features[{i}]" for i in range(len(outs))] + [f"grad {n}" for n in param_names]
    names += [f"grad parameter {i}" for i in range(len(names), len(grads))]
    for name, a, e in zip(names, grads, grads_w, strict=True):
        if (a is None) != (e is None):
            raise AssertionError(f"{name}: {'None' if a is None else 'a tensor'}, expected {'None' if e is None else 'a tensor'}")
        if a is not None:
            assert_close(a, e, a.dtype, name)
