"""Random whole calls (steps 1-7, forward and backward, and ``calibrate_``)
for a kernel backend against its float64 reference copy: the hypothesis
strategy and the checks, shared by the cpu, triton and cuda test files.

A case draws what the curated cases fix:
- 2-5 modalities in either layout; channel counts on both sides of the
  vector widths and of the CPU's register sums (up to 128 floats a row);
  empty sequences; spatial maps of 0-3 trailing dims of 0-6 (so NCHW rows
  both shorter and longer than a vector); B = 0-4; odd ``d`` and ``r``;
  every feature / parameter dtype pair;
- per modality a memory layout: contiguous, channels first in memory,
  channels at every other element, channels-last, one sample broadcast over
  the batch;
- masks that leave a whole row empty (its summary is zero) or are stored
  transposed; ``present`` absent, random, all False or one modality per
  sample; frozen features (no ``dX`` pass);
- ``strided_params``: the call goes through ``functional.calibrate`` with
  every weight stored transposed and every vector at every other element;
- ``projection_0``: modality 0's projection weight and bias zeros (``h = 0``
  for every sample: the norm is clamped, ``u = 0`` and every agreement with
  it sits at relu's kink) or its weight scaled by 1e-9 and its bias zero
  (``0 < ||h|| < eps``: ``u = h / eps``, and the normalisation's backward
  keeps no radial term). The features stay as drawn, so the gates still
  receive a gradient.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

from conftest import random_grads, run_float64_oracle
from mmcal_kernels import GateParams, PreFusionCalibration, functional
from mmcal_kernels.compare import assert_close, assert_runs_close, randomize_, reference_copy
from mmcal_kernels.spec import DIAGNOSTIC_TENSORS

# feature dtype, parameter dtype: the compute dtype is their promotion with float32.
DTYPE_PAIRS = {
    "float32": (torch.float32, torch.float32),
    "float64": (torch.float64, torch.float64),
    "float16/float32": (torch.float16, torch.float32),
    "bfloat16/float32": (torch.bfloat16, torch.float32),
    "bfloat16/bfloat16": (torch.bfloat16, torch.bfloat16),
    "float32/bfloat16": (torch.float32, torch.bfloat16),
}
MEMORY = ["contiguous", "channels-first-in-memory", "channels-strided", "channels-last", "batch-broadcast"]
MASKS = ["none", "random", "an-empty-row", "transposed-in-memory"]
PRESENCE = ["none", "random", "all-missing", "one-present"]


@st.composite
def step_cases(draw, max_modalities=5, max_positions=9, dtype_pairs=tuple(DTYPE_PAIRS)):
    num = draw(st.integers(2, max_modalities))
    layouts = [draw(st.sampled_from(["sequence", "spatial"])) for _ in range(num)]
    dims = [draw(st.sampled_from([1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 65, 129, 257])) for _ in range(num)]
    positions = [
        draw(st.integers(0, max_positions)) if lay == "sequence"
        else tuple(draw(st.lists(st.integers(0, 6) if draw(st.booleans()) else st.integers(1, 6), max_size=3)))
        for lay in layouts
    ]  # fmt: skip
    return dict(
        layouts=layouts, dims=dims, positions=positions, batch=draw(st.integers(0, 4)),
        shared_dim=draw(st.integers(1, 6)), hidden_dim=draw(st.integers(1, 6)),
        dtypes=draw(st.sampled_from(list(dtype_pairs))),
        memory=[draw(st.sampled_from(MEMORY)) for _ in range(num)],
        masks=draw(st.sampled_from(MASKS)), presence=draw(st.sampled_from(PRESENCE)),
        frozen=draw(st.booleans()), strided_params=draw(st.booleans()),
        projection_0=draw(st.sampled_from(["as drawn", "zero", "tiny"])), seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


def _laid_out(x: torch.Tensor, how: str) -> torch.Tensor:
    """``x``'s values in another memory layout (the same shape)."""
    if how == "channels-first-in-memory" and x.dim() >= 3:  # [B, P, D] stored as [B, D, P], and so on
        return x.transpose(1, -1).contiguous().transpose(1, -1)
    if how == "channels-strided":  # every other element of the last dim
        wide = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device).normal_()
        wide[..., ::2] = x
        return wide[..., ::2]
    if how == "channels-last" and x.dim() in (4, 5):
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if how == "batch-broadcast" and x.shape[0] > 0:  # one sample's memory for every row (overlapping)
        return x[:1].expand_as(x)
    return x


def _features(case, dtype, device, gen):
    features = []
    for d, lay, pos, how in zip(case["dims"], case["layouts"], case["positions"], case["memory"]):
        shape = (case["batch"], pos, d) if lay == "sequence" else (case["batch"], d, *pos)
        x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        features.append(_laid_out(x, how))
    return features


def _masks(case, features, device, gen):
    masks = []
    for x, lay in zip(features, case["layouts"]):
        if lay != "sequence" or case["masks"] == "none":
            masks.append(None)
            continue
        batch, positions = x.shape[:2]
        if case["masks"] == "transposed-in-memory":
            mask = (torch.rand((positions, batch), generator=gen) > 0.3).t()
        else:
            mask = torch.rand((batch, positions), generator=gen) > 0.3
            if case["masks"] == "an-empty-row" and batch:
                mask[0] = False
        masks.append(mask.to(device))
    return masks


def _present(case, device, gen):
    batch, num = case["batch"], len(case["dims"])
    kind = case["presence"]
    if kind == "none":
        return None
    if kind == "all-missing":
        return torch.zeros((batch, num), dtype=torch.bool, device=device)
    if kind == "one-present":
        chosen = torch.randint(0, num, (batch,), generator=gen)
        return torch.nn.functional.one_hot(chosen, num).bool().to(device)
    return (torch.rand((batch, num), generator=gen) > 0.25).to(device)


def _random_call(case, backend, device):
    """The case's module (every parameter random) and its arguments."""
    feature_dtype, param_dtype = DTYPE_PAIRS[case["dtypes"]]
    module = PreFusionCalibration(case["dims"], shared_dim=case["shared_dim"], hidden_dim=case["hidden_dim"],
                                  layouts=case["layouts"], backend=backend)  # fmt: skip
    module = randomize_(module, seed=case["seed"]).to(device=device, dtype=param_dtype)
    gen = torch.Generator().manual_seed(case["seed"])
    features = _features(case, feature_dtype, device, gen)
    if case["projection_0"] != "as drawn":
        with torch.no_grad():
            module.proj[0].bias.zero_()
            module.proj[0].weight.mul_(0.0 if case["projection_0"] == "zero" else 1e-9)
    return module, features, _masks(case, features, device, gen), _present(case, device, gen)


def check_random_step(case, backend, device="cpu"):
    """One random call through ``backend``'s module, forward and backward,
    against the float64 reference copy at the feature dtype's tolerances
    (parameter gradients at their own dtype's)."""
    module, features, masks, present = _random_call(case, backend, device)
    grads = random_grads(features, seed=case["seed"] + 1)
    want = run_float64_oracle(module, features, masks, present, grads)
    if case["frozen"]:  # no dX pass; the parameters still get their gradients
        want = (want[0], want[1], [None] * len(features) + want[2][len(features) :])
    got = _run(module, features, masks, present, grads, case["frozen"], case["strided_params"])
    names = [n for n, _ in module.named_parameters()]
    assert_run_close_or_rounding(
        got, want, features[0].dtype, names,
        lambda: _run(reference_copy(module), features, masks, present, grads, case["frozen"], case["strided_params"]),
    )  # fmt: skip
    for x, y, g in zip(features, got[0], got[2]):
        assert y.dtype == x.dtype and y.shape == x.shape
        assert g is None if case["frozen"] else (g.dtype == x.dtype and g.shape == x.shape)


def _named_diagnostics(diagnostics):
    """A run's diagnostics as (name, tensor), each dimension gate apart."""
    named = [(key, diagnostics[key]) for key in DIAGNOSTIC_TENSORS]
    return named + [(f"dimension_gates[{m}]", t) for m, t in enumerate(diagnostics["dimension_gates"])]


def _flat_tensors(run):
    """Every tensor of a ``_run`` result, in order (None where a gradient is None)."""
    outputs, diagnostics, grads = run
    return [*outputs, *(t for _, t in _named_diagnostics(diagnostics)), *grads]


def assert_run_close_or_rounding(got, want, dtype, names, run_reference_in_dtype, factor=64.0):
    """``assert_runs_close(got, want, dtype, names)``; where that fails, each
    tensor of ``got`` within its dtype's tolerance plus ``factor`` times the
    largest error the reference makes on that tensor in the same dtypes
    (``run_reference_in_dtype()`` reruns it; ``want`` is the float64 oracle).

    A sum whose terms dwarf its value (a one-element bias gradient over the
    batch; a gradient through a clamped norm, 1/eps = 1e6 times an O(1)
    cancellation) loses more than the table allows in float32, in the
    reference's own torch ops too: the table scales its allowance by the
    value, not by the terms. A different summation order is a rounding
    difference of the same size; a wrong formula errs by O(1) of the value.
    docs/testing.md, "Past the tolerance table", has the draws that needed it.
    """
    try:
        assert_runs_close(got, want, dtype, names)
    except AssertionError as beyond_the_table:
        _assert_within_reference_error(got, run_reference_in_dtype(), want, beyond_the_table, factor)


def _assert_within_reference_error(got, reference, want, why, factor):
    """Each tensor of ``got`` within its dtype's tolerance plus ``factor`` times
    the largest error the reference makes in the same dtypes on that tensor."""
    for i, (g, r, w) in enumerate(zip(_flat_tensors(got), _flat_tensors(reference), _flat_tensors(want), strict=True)):
        if g is None or w is None:
            assert g is None and w is None and r is None, f"tensor {i} of the run: None on one side only"
            continue
        if w.numel() == 0:
            continue
        own = (r.detach().double().cpu() - w.detach().double().cpu()).abs().nan_to_num(0.0).max().item()
        try:
            assert_close(g, w, g.dtype, f"tensor {i} of the run", slack=factor * own)
        except AssertionError as beyond:
            raise AssertionError(
                f"{beyond}. The slack is {factor}x the reference's own error in these dtypes ({own:.3g}). "
                f"Against the table alone: {why}"
            ) from None


def _strided_leaf(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as a leaf in other memory: a matrix stored transposed,
    a vector at every other element."""
    t = t.detach()
    if t.dim() == 2:
        return t.t().contiguous().t().requires_grad_()
    wide = t.new_empty(2 * t.shape[0]).normal_()
    wide[::2] = t
    return wide[::2].detach().requires_grad_()


def _run(module, features, masks, present, grads, frozen, strided_params):
    """``forward_backward``'s result (outputs, diagnostics, the features'
    gradients then the parameters' in ``named_parameters`` order), through
    the module, or through ``functional.calibrate`` with strided copies of
    its parameters."""
    if not frozen:
        features = [x.detach().requires_grad_() for x in features]
    if not strided_params:
        module.zero_grad(set_to_none=True)
        outputs, diagnostics = module(features, masks=masks, present=present, return_diagnostics=True)
        torch.autograd.backward(outputs, grads)
        param_grads = [p.grad for p in module.parameters()]
    else:
        params = [GateParams(*(_strided_leaf(t) for t in p)) for p in module.gate_params()]
        outputs, diagnostics = functional.calibrate(features, params, layouts=module.layouts, masks=masks, present=present,
                                                    return_diagnostics=True, backend=module.backend)  # fmt: skip
        torch.autograd.backward(outputs, grads)
        # named_parameters order: proj.{m}.weight and .bias for every m, then gate_hidden, gate_instance, gate_dim.
        param_grads = [p[i].grad for pair in ((0, 1), (2, 3), (4, 5), (6, 7)) for p in params for i in pair]
    return outputs, diagnostics, [None if frozen else x.grad for x in features] + param_grads


def check_random_in_place(case, backend, device="cpu"):
    """``calibrate_`` on the same random calls, under no_grad: each feature
    holds the float64 reference's output afterwards (within its dtype's
    tolerance), and the diagnostics match; a feature whose
    elements overlap (one sample broadcast over the batch) is refused, as
    ``Tensor.mul_`` refuses it, and nothing is written."""
    module, features, masks, present = _random_call(case, backend, device)
    before = [x.clone() for x in features]
    overlapping = [i for i, x in enumerate(features) if x.numel() > 1 and torch._debug_has_internal_overlap(x) == 1]
    with torch.no_grad():
        if overlapping:
            with pytest.raises(ValueError, match=rf"features\[{overlapping[0]}\]: more than one element"):
                module.calibrate_(features, masks, present)
            for x, b in zip(features, before):
                assert torch.equal(x, b), "a refused call wrote a feature"
            return
        returned, diagnostics = module.calibrate_(features, masks, present, return_diagnostics=True)
    with torch.no_grad():
        oracle = reference_copy(module, torch.float64)
        want, want_diagnostics = oracle([b.double() for b in before], masks, present, return_diagnostics=True)
    assert all(r is x for r, x in zip(returned, features, strict=True))
    for i, (x, w) in enumerate(zip(features, want)):
        assert_close(x, w, x.dtype, f"features[{i}] after calibrate_")
    for (name, a), (_, e) in zip(_named_diagnostics(diagnostics), _named_diagnostics(want_diagnostics), strict=True):
        assert_close(a, e, a.dtype, name)
