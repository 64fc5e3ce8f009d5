"""The reference against docs/spec.md: a case worked by hand, an independent loop
oracle on random cases, gradcheck, and the spec's edge cases."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_module, random_grads
from mmcal_kernels import GateParams, functional, reference
from mmcal_kernels.compare import assert_close, forward_backward, random_case
from spec_oracle import oracle


def _params(module):
    return [GateParams(*(t.detach() for t in p)) for p in module.gate_params()]


def test_hand_computed_tiny_case():
    # B=1, M=2, D=2, P=2, d=2, r=1 with identity projections: every number below
    # follows the spec's formulas by hand.
    x0 = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)  # s0 = [2, 0] -> u0 = [1, 0]
    x1 = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)  # s1 = [.5, 1] -> u1 = [1, 2]/sqrt5
    eye, zero2 = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    ones6 = torch.ones(1, 6, dtype=torch.float64)
    p = GateParams(
        eye, zero2, ones6, torch.zeros(1, dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
        torch.tensor([[1.0], [-1.0]], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64),
    )  # fmt: skip
    (y0, y1), diag = functional.calibrate([x0, x1], [p, p], return_diagnostics=True)

    r5 = 1 / math.sqrt(5)
    assert diag["agreement"][0].flatten().tolist() == pytest.approx([1, r5, r5, 1], rel=1e-14)
    assert diag["support"][0].tolist() == pytest.approx([r5, r5], rel=1e-14)
    assert diag["conflict"][0].tolist() == [0.0, 0.0]

    def gelu(v):
        return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))

    def sig2(v):
        return 2 / (1 + math.exp(-v))

    # q0 = [u0*u1, u0-u1, S, C] = [r5, 0, 1-r5, -2r5, r5, 0]: its sum is 1 - r5.
    # q1 = [u1*u0, u1-u0, S, C] = [r5, 0, r5-1, 2r5, r5, 0]: its sum is 5r5 - 1.
    for x, y, pre, m in ((x0, y0, 1 - r5, 0), (x1, y1, 5 * r5 - 1, 1)):
        e = gelu(pre)
        gate = [sig2(e) * sig2(e), sig2(e) * sig2(-e + 0.5)]
        assert diag["instance_gate"][0, m].item() == pytest.approx(sig2(e), rel=1e-14)
        assert diag["dimension_gates"][m][0].tolist() == pytest.approx([sig2(e), sig2(-e + 0.5)], rel=1e-14)
        expected = x * torch.tensor(gate, dtype=torch.float64)
        torch.testing.assert_close(y, expected, rtol=1e-14, atol=0)


@st.composite
def spec_cases(draw):
    num = draw(st.integers(2, 4))
    layouts = [draw(st.sampled_from(["sequence", "spatial"])) for _ in range(num)]
    dims = [draw(st.integers(1, 6)) for _ in range(num)]
    positions = [
        draw(st.integers(0, 5)) if lay == "sequence" else tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
        for lay in layouts
    ]
    return dict(
        num=num, layouts=layouts, dims=dims, positions=positions,
        batch=draw(st.integers(1, 3)), shared_dim=draw(st.integers(1, 5)), hidden_dim=draw(st.integers(1, 5)),
        masked=draw(st.booleans()), missing=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


def _grad_or_zeros(t):
    # The loop oracle never touches what a case does not use (a parameter of a
    # modality missing everywhere, features with P = 0): autograd leaves None.
    return t.grad if t.grad is not None else torch.zeros_like(t)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_cases())
def test_reference_matches_independent_oracle_float64(case):
    """Outputs, diagnostics and all gradients to 1e-10 relative, on random shapes,
    layouts, masks and presence patterns."""
    module = make_module(case["dims"], case["layouts"], shared_dim=case["shared_dim"], hidden_dim=case["hidden_dim"], seed=case["seed"])
    features, masks, present = random_case(
        case["dims"], case["layouts"], batch=case["batch"], positions=case["positions"], dtype=torch.float64,
        masked=case["masked"], missing=case["missing"], seed=case["seed"],
    )  # fmt: skip
    grads = random_grads([torch.empty_like(x) for x in features], seed=case["seed"])
    got = forward_backward(module, features, masks, present, grads)

    leaves = [x.detach().requires_grad_() for x in features]
    params = [GateParams(*(t.detach().requires_grad_() for t in p)) for p in module.gate_params()]
    outs, diag = oracle(leaves, params, case["layouts"], masks, present)
    torch.autograd.backward(outs, grads)
    # named_parameters order: proj.{m}.weight/bias for every m, then gate_hidden, gate_instance, gate_dim.
    want_param_grads = [_grad_or_zeros(params[m][i]) for pair in ((0, 1), (2, 3), (4, 5), (6, 7)) for m in range(case["num"]) for i in pair]

    outs_got, diag_got, grads_got = got
    for i, (a, e) in enumerate(zip(outs_got, outs)):
        assert_close(a, e, torch.float64, f"output[{i}]")
    for key in ("agreement", "support", "conflict", "instance_gate"):
        assert_close(diag_got[key], diag[key], torch.float64, key)
    for i, (a, e) in enumerate(zip(diag_got["dimension_gates"], diag["dimension_gates"])):
        assert_close(a, e, torch.float64, f"dimension_gates[{i}]")
    for i, x in enumerate(leaves):
        assert_close(grads_got[i], _grad_or_zeros(x), torch.float64, f"grad features[{i}]")
    names = [n for n, _ in module.named_parameters()]
    for name, a, e in zip(names, grads_got[len(leaves) :], want_param_grads, strict=True):
        assert_close(a, e, torch.float64, f"grad {name}")


def test_gradcheck_float64_features_and_parameters():
    dims, layouts = [3, 2, 4], ["sequence", "spatial", "spatial"]
    module = make_module(dims, layouts, shared_dim=3, hidden_dim=4, seed=7)
    features, masks, present = random_case(dims, layouts, batch=2, positions=[4, (2, 1), ()], dtype=torch.float64, seed=3)
    present[1, 2] = False
    params = [t.detach().requires_grad_() for p in module.gate_params() for t in p]
    leaves = [x.detach().requires_grad_() for x in features]

    def fn(*inputs):
        xs, flat = inputs[:3], inputs[3:]
        ps = [GateParams(*flat[8 * m : 8 * m + 8]) for m in range(3)]
        return tuple(functional.calibrate(list(xs), ps, layouts=layouts, masks=masks, present=present))

    assert torch.autograd.gradcheck(fn, (*leaves, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def _calibrate_with_oracle(module, features, masks, present):
    got = module(features, masks=masks, present=present, return_diagnostics=True)
    want = oracle(features, _params(module), module.layouts, masks, present)
    for i, (a, e) in enumerate(zip(got[0], want[0])):
        assert_close(a, e, torch.float64, f"output[{i}]")
    return got


def test_one_modality_present_and_none_present():
    dims = [4, 3, 5]
    module = make_module(dims, seed=1)
    features, masks, _ = random_case(dims, batch=3, dtype=torch.float64, seed=2)
    present = torch.tensor([[True, False, False], [False, False, False], [True, True, False]])
    ys, diag = _calibrate_with_oracle(module, features, masks, present)
    for m in range(3):
        missing = ~present[:, m]
        assert torch.equal(ys[m][missing], features[m][missing]), f"missing modality {m} must pass through"
    # Alone in its sample, a modality has no others: support, conflict and context are 0.
    assert diag["support"][0, 0] == 0 and diag["conflict"][0, 0] == 0
    assert (ys[0][0] != features[0][0]).any(), "a present modality alone is still gated"
    # Gradients reach the parameters of modalities present somewhere, not of one missing everywhere.
    torch.autograd.backward(ys, random_grads(ys))
    assert module.proj[0].weight.grad.abs().sum() > 0 and module.proj[1].weight.grad.abs().sum() > 0
    assert module.gate_dim[2].weight.grad.abs().sum() == 0


def test_all_padded_row_summarises_to_zero():
    dims = [4, 3]
    module = make_module(dims, seed=4)
    features, masks, present = random_case(dims, batch=3, dtype=torch.float64, missing=False, seed=5)
    masks[1][2] = False  # sample 2 of modality 1: every position padded
    s = functional.summary_pool(features[1], "sequence", masks[1])
    assert torch.equal(s[2], torch.zeros(3, dtype=torch.float64))
    _calibrate_with_oracle(module, features, masks, present)


def test_nan_in_padded_position_reaches_no_other_output():
    dims = [4, 3]
    module = make_module(dims, seed=6)
    features, masks, _ = random_case(dims, batch=3, dtype=torch.float64, missing=False, seed=7)
    masks[0][1, 2] = False
    poisoned = [x.clone() for x in features]
    poisoned[0][1, 2, 1] = float("nan")
    clean, _ = module(features, masks=masks, return_diagnostics=True)
    dirty, diag = module(poisoned, masks=masks, return_diagnostics=True)
    nan_out = dirty[0].isnan()
    assert nan_out.sum() == 1 and nan_out[1, 2, 1], "the NaN stays in its own position of Y only"
    assert torch.equal(dirty[0][~nan_out], clean[0][~nan_out])
    assert torch.equal(dirty[1], clean[1])
    assert all(torch.isfinite(v).all() for k, v in diag.items() if k != "dimension_gates")


def test_padded_values_reach_no_gradient_through_the_summary():
    """The summary's backward gives padded positions nothing and takes nothing
    from them: with dY zero at padded positions, a padded value (however large)
    changes no gradient. (With dY non-zero there, it does reach the gate
    gradient through dg = sum_p dY*X over every position, as the spec's
    modulation at padded positions implies; a NaN there then spreads in the
    backward exactly as autograd of the spec's formula spreads it.)"""
    dims = [4, 3]
    module = make_module(dims, seed=6)
    features, masks, _ = random_case(dims, batch=3, dtype=torch.float64, missing=False, seed=7)
    masks[0][1, 2] = False
    poisoned = [x.clone() for x in features]
    poisoned[0][1, 2] = 1e6
    grads = random_grads(features)
    grads[0] = grads[0] * masks[0].unsqueeze(-1)
    clean = forward_backward(module, features, masks, None, grads)
    dirty = forward_backward(module, poisoned, masks, None, grads)
    for a, e in zip(dirty[2], clean[2]):  # dX of every feature, every parameter gradient
        assert torch.equal(a, e)


@pytest.mark.parametrize("trailing", [(), (5,), (3, 4), (2, 3, 2)], ids=["BD", "BDT", "BDHW", "BDTHW"])
def test_spatial_trailing_dims_match_oracle(trailing):
    dims, layouts = [3, 4], ["spatial", "sequence"]
    module = make_module(dims, layouts, seed=8)
    features, masks, present = random_case(dims, layouts, batch=2, positions=[trailing, 4], dtype=torch.float64, seed=9)
    ys, _ = _calibrate_with_oracle(module, features, masks, present)
    assert ys[0].shape == features[0].shape


def test_summary_stage_reaches_no_padded_value():
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False, False], [False] * 5])
    x[0, 1] = float("inf")
    s = reference.summary(x, "sequence", mask)
    torch.testing.assert_close(s[0], (x[0, 0] + x[0, 2]) / 2)
    assert torch.equal(s[1], torch.zeros(3, dtype=torch.float64))
