"""The hand-written backward of steps 2-6 against autograd of the reference, float64."""

import pytest
import torch

from conftest import make_module
from mmcal_kernels import GateParams, reference
from mmcal_kernels.gates_backward import gates_backward
from mmcal_kernels.reference import gates_with_intermediates
from mmcal_kernels.testing import assert_close

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
