"""ops.calibrate_ / PreFusionCalibration.calibrate_: inference in place."""

import pytest
import torch

from conftest import make_module
from mmcal_kernels import backends, functional
from mmcal_kernels.compare import random_case

CPU_BACKENDS = [b.name for b in backends.available() if b.usable and "cpu" in b.device_types]
DIMS, LAYOUTS, POSITIONS = [13, 6, 5], ["sequence", "spatial", "spatial"], [9, (3, 4), ()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_place_equals_out_of_place(backend, dtype):
    module = make_module(DIMS, LAYOUTS, seed=111, dtype=torch.float64 if dtype == torch.float64 else torch.float32, backend=backend)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=4, positions=POSITIONS, dtype=dtype, seed=112)
    features[1] = features[1].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, want_diag = module(features, masks, present, return_diagnostics=True)
    targets = [x.clone() for x in features]
    pointers = [x.data_ptr() for x in targets]
    strides = [x.stride() for x in targets]
    with torch.inference_mode():
        got, diag = module.calibrate_(targets, masks, present, return_diagnostics=True)
    assert all(a is b for a, b in zip(got, targets))
    assert [x.data_ptr() for x in targets] == pointers and [x.stride() for x in targets] == strides
    for a, b in zip(targets, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(diag["agreement"], want_diag["agreement"], rtol=0, atol=0)


def test_in_place_refuses_to_run_under_autograd():
    module = make_module(DIMS, LAYOUTS, seed=113, dtype=torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, positions=POSITIONS, seed=114)
    with pytest.raises(RuntimeError, match="calibrate_: writes the features in place"):
        functional.calibrate_(features, module.gate_params(), layouts=LAYOUTS, masks=masks, present=present)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["leaf", "graph node"])
def test_module_in_place_refuses_a_feature_that_needs_grad(backend, kind):
    """The module reads its own parameters without recording, but a feature that
    needs a gradient under grad mode is refused before anything is written:
    its gradient would otherwise skip the gate."""
    module = make_module([4, 3], seed=116, dtype=torch.float32, backend=backend)
    base = torch.randn(2, 5, 4, requires_grad=True)
    x = base if kind == "leaf" else base * 2.0
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="calibrate_: writes the features in place"):
        module.calibrate_([x, torch.randn(2, 6, 3)])
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)
    other = torch.randn(2, 6, 3)
    got = module.calibrate_([before.clone(), other.clone()])  # nothing needs grad: allowed in grad mode
    with torch.no_grad():
        want = module([before, other])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- what Tensor.mul_ refuses or records, the in-place calibration does too ----


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_place_bumps_the_version_counter(backend):
    """A backward that saved a tensor which calibrate_ then wrote must raise, as after mul_."""
    module = make_module([4, 3], seed=115, dtype=torch.float32, backend=backend)
    base = torch.randn(2, 5, 4, requires_grad=True)
    h = base.exp()  # exp saves its output for the backward
    version = h._version
    with torch.no_grad():
        module.calibrate_([h, torch.randn(2, 6, 3)])
    assert h._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_in_place_op_declares_its_mutation():
    schema = torch.ops.mmcal.modulate_.default._schema
    assert schema.is_mutable
    (xs,) = [a for a in schema.arguments if a.name == "xs"]
    assert xs.alias_info is not None and xs.alias_info.is_write


def _gate(x):
    return torch.rand(x.shape[0], x.shape[-1]) + 0.5


def test_in_place_op_refuses_what_mul_refuses():
    op = torch.ops.mmcal.modulate_
    leaf = torch.randn(2, 5, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"xs\[0\]: a leaf Variable that requires grad"):
        op([leaf], [_gate(leaf)], [0])
    with pytest.raises(RuntimeError, match=r"xs\[0\]: requires grad"):
        op([leaf[:, 1:]], [_gate(leaf)], [0])  # a view of the leaf
    nonleaf = leaf * 2
    with pytest.raises(RuntimeError, match=r"xs\[0\]: requires grad"):
        op([nonleaf], [_gate(leaf)], [0])
    gate = _gate(leaf).requires_grad_()
    with pytest.raises(RuntimeError, match=r"gates\[0\]: requires grad"):
        op([torch.randn(2, 5, 4)], [gate], [0])
    with torch.inference_mode():
        frozen = torch.randn(2, 5, 4)
    with pytest.raises(RuntimeError, match=r"xs\[0\]: Inplace update to inference tensor outside InferenceMode"):
        op([frozen], [_gate(frozen)], [0])
    # What mul_ allows, it allows: a leaf under no_grad, an inference tensor in inference mode.
    with torch.no_grad():
        want = leaf * gate.detach().unsqueeze(1)
        op([leaf], [gate.detach()], [0])
    torch.testing.assert_close(leaf.detach(), want, rtol=0, atol=0)
    with torch.inference_mode():
        g = _gate(frozen)
        want = frozen * g.unsqueeze(1)
        op([frozen], [g], [0])
    torch.testing.assert_close(frozen, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_place_refuses_overlapping_or_shared_memory(backend):
    module = make_module([4, 4], seed=116, dtype=torch.float32, backend=backend)
    other = torch.randn(2, 6, 4)
    expanded = torch.randn(1, 5, 4).expand(2, 5, 4)
    shared = torch.randn(2, 5, 4)
    base = torch.randn(2, 5, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"features\[0\]: more than one element refers to a single memory location"):
            module.calibrate_([expanded, other])
        with pytest.raises(ValueError, match=r"features\[1\] and features\[0\]: share memory"):
            module.calibrate_([shared, shared])
        with pytest.raises(ValueError, match=r"features\[1\] and features\[0\]: share memory"):
            module.calibrate_([base[..., :4], base[..., 2:6]])  # partly overlapping channel slices
        # Disjoint slices of one tensor share a storage but no element: allowed, and right.
        want = module([base[..., :4], base[..., 4:]])
        module.calibrate_([base[..., :4], base[..., 4:]])
    torch.testing.assert_close(base, torch.cat(want, -1), rtol=0, atol=0)


def test_in_place_op_refuses_overlapping_or_shared_memory():
    op = torch.ops.mmcal.modulate_
    x = torch.ones(1, 3, 4).expand(2, 3, 4)
    with pytest.raises(ValueError, match=r"xs\[0\]: more than one element refers to a single memory location"):
        op([x], [_gate(x)], [0])
    assert torch.equal(x, torch.ones(2, 3, 4))
    y = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"xs\[1\] and xs\[0\]: share memory"):
        op([y, y[:, 1:]], [_gate(y), _gate(y)], [0, 0])
    # A gate that is a view into the features it scales.
    z = torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match=r"xs\[0\] and gates\[0\]: share memory"):
        op([z], [z[:, 0]], [0])
    # A view that overlaps itself with no zero stride (element [0, 1, 0] is [0, 0, 2]): ATen's
    # check cannot decide it, so the elements are compared, before anything is written.
    v = torch.randn(40).as_strided((2, 3, 4), (4, 2, 1))
    before = v.clone()
    with pytest.raises(ValueError, match=r"xs\[0\]: more than one element refers to a single memory location"):
        op([v], [_gate(v)], [0])
    assert torch.equal(v, before)
    # Interleaved views whose overlap torch cannot decide quickly are checked element by element.
    w = torch.randn(2, 3, 8)
    op([w[..., 0::2], w[..., 1::2]], [_gate(w[..., 0::2]), _gate(w[..., 1::2])], [0, 0])
    with pytest.raises(ValueError, match=r"xs\[1\] and xs\[0\]: share memory"):
        op([w[..., 0::2], w[..., 2::2]], [_gate(w[..., 0::2]), _gate(w[..., 2::2])], [0, 0])
