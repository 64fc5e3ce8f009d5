"""Every feature dtype, and mixed precision, against the float64 reference on the
same values, with the per-dtype tolerances of ``mmcal_kernels.compare.TOLERANCES``."""

import pytest
import torch

from conftest import make_module, random_grads, run_float64_oracle
from mmcal_kernels.compare import TOLERANCES, assert_close, assert_runs_close, forward_backward, random_case

DIMS = (6, 5, 3)
LAYOUTS = ("sequence", "spatial", "sequence")
POSITIONS = (9, (3, 2), 4)

CASES = {
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float32),
    "bfloat16-mixed": (torch.bfloat16, torch.float32),  # bf16 features, fp32 parameters
    "bfloat16-pure": (torch.bfloat16, torch.bfloat16),  # ct is still float32
    "float64": (torch.float64, torch.float64),
}


@pytest.mark.parametrize("case", CASES)
def test_dtype_against_float64(case):
    feature_dtype, param_dtype = CASES[case]
    module = make_module(DIMS, LAYOUTS, seed=21, dtype=param_dtype)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=4, positions=POSITIONS, dtype=feature_dtype, seed=22)
    grads = random_grads(features)
    got = forward_backward(module, features, masks, present, grads)
    want = run_float64_oracle(module, features, masks, present, grads)
    for y, x in zip(got[0], features):
        assert y.dtype == feature_dtype
    assert_runs_close(got, want, feature_dtype, [n for n, _ in module.named_parameters()])


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_assert_close_rejects_errors_beyond_the_table(dtype):
    rtol, atol = TOLERANCES[dtype]
    expected = torch.randn(50, dtype=torch.float64) + 3
    assert_close(expected * (1 + rtol / 2), expected, dtype)
    with pytest.raises(AssertionError, match=r"worst at \(7,\)"):
        wrong = expected.clone()
        wrong[7] += (rtol + atol) * 2 * expected.abs().max()
        assert_close(wrong, expected, dtype)


@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_assert_close_rejects_a_non_finite_value_where_the_other_is_finite(special):
    """A NaN or an infinity on one side only must fail, not be masked out with the
    other non-finite elements; the same non-finite value on both sides passes."""
    expected = torch.randn(20, dtype=torch.float64) + 3
    got = expected.clone()
    got[4] = special
    with pytest.raises(AssertionError, match=r"at \(4,\)"):
        assert_close(got, expected, torch.float32)
    with pytest.raises(AssertionError, match=r"at \(4,\)"):
        assert_close(expected, got, torch.float32)
    assert_close(got, got.clone(), torch.float32)
    if special == float("inf"):
        with pytest.raises(AssertionError, match=r"at \(4,\)"):
            assert_close(got, torch.where(got.isinf(), -got, got), torch.float32)


def test_assert_runs_close_judges_diagnostics_and_gradients_at_their_own_dtype():
    """Half features: the diagnostics (compute dtype, float32) and a float32
    parameter's gradient are judged at float32's tolerance, not the features'
    (an error of 1e-3 passed there, 20x float32's budget)."""
    module = make_module(DIMS, LAYOUTS, seed=23, dtype=torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=4, positions=POSITIONS, dtype=torch.float16, seed=24)
    got = forward_backward(module, features, masks, present, random_grads(features))
    names = [n for n, _ in module.named_parameters()]
    assert_runs_close(got, got, torch.float16, names)
    for where in ("support", "dimension_gates", "parameter"):
        outs, diag, grads = got[0], dict(got[1]), list(got[2])
        if where == "support":
            diag["support"] = diag["support"] * (1 + 1e-3)
        elif where == "dimension_gates":
            diag["dimension_gates"] = [g * (1 + 1e-3) for g in diag["dimension_gates"]]
        else:
            grads[len(features)] = grads[len(features)] * (1 + 1e-3) + 1e-3
        with pytest.raises(AssertionError, match=r"\(torch.float32\)"):
            assert_runs_close((outs, diag, grads), got, torch.float16, names)
