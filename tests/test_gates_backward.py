"""The hand-written backward of steps 2-6 against autograd of the reference, float64."""

import pytest
import torch

from conftest import check_against_oracle, make_module
from mmcal_kernels import GateParams, reference
from mmcal_kernels.gates_backward import gates_backward
from mmcal_kernels.reference import gates_with_intermediates
from mmcal_kernels.compare import assert_close

CASES = {
    "all-present": (None, False),
    "some-missing": ("random", False),
    "one-and-none-present": ("rows", False),
    "zero-norm-projection": (None, 0.0),
    "tiny-norm-projection": (None, 1e-7),  # 0 < ||h|| < eps: the clamp, not the norm, is differentiated
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gates_backward_matches_autograd(case, seed):
    presence, zero_norm = CASES[case]
    dims = [5, 3, 4]
    module = make_module(dims, shared_dim=4, hidden_dim=6, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    batch = 4
    summaries = [torch.randn(batch, d, generator=gen, dtype=torch.float64) for d in dims]
    present = None
    if presence == "random":
        present = torch.rand(batch, 3, generator=gen) > 0.4
    elif presence == "rows":
        present = torch.tensor([[True, False, False], [False, False, False], [True, True, True], [False, True, False]])
    params = [GateParams(*(t.detach().clone() for t in p)) for p in module.gate_params()]
    if zero_norm is not False:  # ||h|| below the clamp for modality 1
        p1 = params[1]
        params[1] = p1._replace(proj_weight=torch.zeros_like(p1.proj_weight), proj_bias=torch.full_like(p1.proj_bias, zero_norm))
    grad_gates = [torch.randn(batch, d, generator=gen, dtype=torch.float64) for d in dims]

    leaves_s = [s.clone().requires_grad_() for s in summaries]
    leaves_p = [GateParams(*(t.clone().requires_grad_() for t in p)) for p in params]
    gates, diag = reference.gates_from_summaries(leaves_s, leaves_p, present)
    torch.autograd.backward(gates, grad_gates)

    got_gates, got_diag, saved = gates_with_intermediates(summaries, params, present)
    for a, e in zip(got_gates, gates):
        assert torch.equal(a, e.detach())
    assert torch.equal(got_diag["agreement"], diag["agreement"])
    got_ds, got_dp = gates_backward(saved, params, present, grad_gates)
    for m in range(3):
        assert_close(got_ds[m], leaves_s[m].grad, torch.float64, f"d summaries[{m}]")
        for field, a, leaf in zip(GateParams._fields, got_dp[m], leaves_p[m]):
            want = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            assert_close(a, want, torch.float64, f"d params[{m}].{field}")


def _module_grads(module, features, backend):
    module.backend = backend
    module.zero_grad(set_to_none=True)
    leaves = [x.detach().clone().requires_grad_() for x in features]
    outputs = module(leaves)
    gen = torch.Generator().manual_seed(7)
    torch.autograd.backward(outputs, [torch.randn(y.shape, generator=gen, dtype=y.dtype) for y in outputs])
    return [x.grad for x in leaves] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("magnitude", [1e20, 1e30])
@pytest.mark.parametrize("backend", ["cpu"])
def test_overflowing_features_give_the_references_finite_gradients(backend, magnitude):
    """|X| >= 1e20 in float32: ||h|| overflows to inf, u = h / inf = 0. Autograd of
    the reference then gives finite gradients; the hand-written backward once gave NaN."""
    dims = [4, 3]
    module = make_module(dims, seed=31, dtype=torch.float32)
    features = [torch.full((2, 5, 4), magnitude), torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(32))]
    want = _module_grads(module, features, "reference")
    got = _module_grads(module, features, backend)
    names = ["dX0", "dX1"] + [n for n, _ in module.named_parameters()]
    for name, a, e in zip(names, got, want):
        assert e.isfinite().all(), f"reference {name} is not finite: the case no longer tests overflow"
        assert_close(a, e, torch.float32, name)


@pytest.mark.parametrize("backend", ["cpu"])
def test_shared_dim_one_cancels_exactly(backend):
    """With d = 1, u = h / |h| = +-1 is locally constant, so every gradient
    through the projection is exactly zero. Autograd of the float32 reference
    gets it as the difference of two terms of size |du| / |h| and leaves
    rounding residue (up to 1e-3 here); the hand-written backward, written as
    du's projection orthogonal to u, gives 0.0, and everything else matches
    the float64 oracle."""
    dims = [64, 32]
    module = make_module(dims, shared_dim=1, hidden_dim=8, seed=3, dtype=torch.float32, backend=backend)
    gen = torch.Generator().manual_seed(3)
    features = [torch.randn(32, 5, 64, generator=gen) * 3, torch.randn(32, 6, 32, generator=gen) * 3]
    _, _, grads = check_against_oracle(module, features)
    names = [n for n, _ in module.named_parameters()]
    for name, g in zip(names, grads[len(features):]):
        if name.startswith("proj."):
            assert torch.count_nonzero(g) == 0, f"{name}: {g.abs().max().item():.3g}, expected exactly 0 at d = 1"


def test_torch_formulas_compute_in_ct_inside_an_autocast_region():
    """gates_torch is the gate network of a backend without gate kernels (the
    CUDA backend past its slot count, Triton's float64 below triton 3.9): a
    call inside an autocast region still computes in ct (docs/spec.md,
    "Numerics"), as the C++ ops do, forward and backward."""
    from mmcal_kernels import gates_torch

    dims = [5, 3, 4]
    module = make_module(dims, shared_dim=4, hidden_dim=6, seed=5, dtype=torch.float32)
    gen = torch.Generator().manual_seed(6)
    summaries = [torch.randn(3, d, generator=gen) for d in dims]
    grad_gates = [torch.randn(3, d, generator=gen) for d in dims]
    flat = [t.detach() for p in module.gate_params() for t in p]
    present = torch.tensor([[True, False, True], [True, True, True], [False, True, True]])

    def run():
        gates, diagnostics, saved = gates_torch.gates(summaries, flat, present)
        return gates, diagnostics, *gates_torch.gates_backward(grad_gates, summaries, flat, present, diagnostics, saved)

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run()
    for what, a, b in zip(("gates", "diagnostics", "grad_summaries", "grad_params"), auto, plain):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and torch.equal(x, y), f"{what}[{i}]: {x.dtype}, {(x.double() - y.double()).abs().max()}"
