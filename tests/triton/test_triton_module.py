"""The ``"triton"`` backend's fused node (steps 1-7 in one autograd node)
against the float64 reference, all parameters random: layouts, masks,
presence, dtypes with mixed precision, odd sizes, strides, degenerate sizes,
frozen features, in-place inference, and gradcheck in float64."""

import pytest
import torch

from triton_env import DEVICE
from conftest import check_against_oracle, KERNEL_CASES, KERNEL_DTYPES, make_module, random_grads, run_float64_oracle, with_odd_bytes
from mmcal_kernels import GateParams, functional
from mmcal_kernels.compare import assert_runs_close, random_case


def _to(features, masks, present):
    move = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    return [move(x) for x in features], [move(m) for m in masks], move(present)


def _module(dims, layouts, seed, dtype, **kw):
    return make_module(dims, layouts, seed=seed, dtype=dtype, backend="triton", **kw).to(DEVICE)




@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_matches_reference(case, dtype):
    dims, layouts, positions = KERNEL_CASES[case]
    feature_dtype, param_dtype = KERNEL_DTYPES[dtype]
    module = _module(dims, layouts, 81, param_dtype)
    features, masks, present = _to(*random_case(dims, layouts, batch=5, positions=positions, dtype=feature_dtype, seed=82))
    present[0] = False
    present[1, 0] = True
    check_against_oracle(module, features, masks, present)


def test_five_modalities_take_two_launches_and_match():
    dims, layouts = [5, 3, 7, 2, 4], ["sequence", "spatial", "sequence", "spatial", "spatial"]
    module = _module(dims, layouts, 70, torch.float32)
    features, masks, present = _to(*random_case(dims, layouts, batch=3, positions=[6, (2, 3), 4, (), (3,)], seed=71))
    check_against_oracle(module, features, masks, present)


@pytest.mark.parametrize("memory_format", ["channels_last", "channels_last_3d"])
def test_channels_last(memory_format):
    fmt = getattr(torch, memory_format)
    trailing = (5, 3) if memory_format == "channels_last" else (2, 5, 3)
    dims = [19, 8]
    module = _module(dims, "spatial", 85, torch.float32)
    features, _, present = _to(*random_case(dims, "spatial", positions=[trailing, trailing], seed=86))
    cl = [x.contiguous(memory_format=fmt) for x in features]
    outputs, _, grads = check_against_oracle(module, cl, [None, None], present)
    for x, y, g in zip(cl, outputs, grads):
        assert y.stride() == x.stride() and g.stride() == x.stride()


def test_non_contiguous_inputs_and_expanded_gradient():
    dims, layouts = [6, 9], ["sequence", "spatial"]
    module = _module(dims, layouts, 87, torch.float64)
    seq = torch.randn(3, 6, 22, dtype=torch.float64, device=DEVICE).transpose(1, 2)[:, ::2]  # [3, 11, 6], strided
    spa = torch.randn(3, 5, 9, 4, dtype=torch.float64, device=DEVICE).permute(0, 2, 3, 1)[..., 1:4]  # no flattening
    masks = [(torch.rand(3, 11) > 0.3).to(DEVICE), None]
    present = torch.tensor([[True, False], [True, True], [False, True]], device=DEVICE)
    check_against_oracle(module, [seq, spa], masks, present)
    leaves = [seq.detach().requires_grad_(), spa.detach().requires_grad_()]
    sum(y.sum() for y in module(leaves, masks, present)).backward()  # dY with stride 0
    oracle = make_module(dims, layouts, seed=87, dtype=torch.float64).to(DEVICE)
    ref = [x.detach().requires_grad_() for x in (seq, spa)]
    sum(y.sum() for y in oracle(ref, masks, present)).backward()
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_masks_and_present_with_any_nonzero_byte_as_true():
    """True stored as any nonzero byte (a uint8 tensor viewed as bool) is True
    in the kernels' mask and presence reads, as in torch."""
    dims, layouts = [6, 4, 5], ["sequence", "spatial", "sequence"]
    module = _module(dims, layouts, 90, torch.float32)
    features, masks, present = random_case(dims, layouts, batch=4, positions=[7, (2, 3), 9], seed=91)
    masks = [with_odd_bytes(m, seed=i) for i, m in enumerate(masks)]
    check_against_oracle(module, *_to(features, masks, with_odd_bytes(present, seed=9)))


@pytest.mark.parametrize("batch,positions", [(0, [4, (2, 2)]), (2, [0, (0,)])], ids=["B=0", "P=0"])
def test_degenerate_sizes(batch, positions):
    dims, layouts = [3, 2], ["sequence", "spatial"]
    module = _module(dims, layouts, 88, torch.float64)
    check_against_oracle(module, *_to(*random_case(dims, layouts, batch=batch, positions=positions, dtype=torch.float64, seed=89)))


def test_frozen_features_skip_the_input_gradient_pass():
    dims, layouts, positions = KERNEL_CASES["mixed-wide"]
    module = _module(dims, layouts, 83, torch.float32)
    features, masks, present = _to(*random_case(dims, layouts, batch=3, positions=positions, seed=84))
    grads = random_grads(features)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        outputs, diag = module(features, masks, present, return_diagnostics=True)
        torch.autograd.backward(outputs, grads)
    called = {e.name for e in prof.events()}
    assert "mmcal::triton_gate_grads" in called and "mmcal::triton_input_grads" not in called
    want = run_float64_oracle(module, features, masks, present, grads)
    got = (outputs, diag, [None] * len(features) + [p.grad for p in module.parameters()])
    want = (want[0], want[1], [None] * len(features) + want[2][len(features) :])
    assert_runs_close(got, want, torch.float32, [n for n, _ in module.named_parameters()])


def test_in_place_inference_matches_out_of_place():
    dims, layouts = [6, 4], ["sequence", "spatial"]
    module = _module(dims, layouts, 60, torch.float32)
    features, masks, present = _to(*random_case(dims, layouts, batch=3, positions=[5, (2, 3)], seed=61))
    with torch.no_grad():
        want = module(features, masks, present)
        copies = [x.clone() for x in features]
        module.calibrate_(copies, masks, present)
    for a, b in zip(copies, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradcheck_float64():
    # fast_mode: a few random directions instead of one per input element, as
    # each evaluation runs the kernels in the interpreter
    dims, layouts = [3, 2, 4], ["sequence", "spatial", "spatial"]
    module = make_module(dims, layouts, shared_dim=3, hidden_dim=4, seed=92)
    features, masks, present = _to(*random_case(dims, layouts, batch=2, positions=[4, (2, 1), ()], dtype=torch.float64, seed=93))
    present[1, 2] = False
    params = [t.detach().to(DEVICE).requires_grad_() for p in module.gate_params() for t in p]
    leaves = [x.detach().requires_grad_() for x in features]

    def fused(*inputs):
        ps = [GateParams(*inputs[3 + 8 * m : 11 + 8 * m]) for m in range(3)]
        return tuple(functional.calibrate(list(inputs[:3]), ps, layouts=layouts, masks=masks, present=present, backend="triton"))

    assert torch.autograd.gradcheck(fused, (*leaves, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)

    def stages(x, g):  # the stage ops' own registered autograd
        s = functional.summary_pool(x, "sequence", masks[0], backend="triton")
        return s, functional.gate_modulate(x, g, "sequence", backend="triton")

    gate = torch.rand(2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(stages, (leaves[0], gate), fast_mode=True)


def test_launches_each_way(monkeypatch):
    """Forward: one summary launch, one gate-network launch and one modulation
    launch for all three modalities; backward: one dg launch, the gate
    network's two, and one dX launch (none for frozen X)."""
    from mmcal_kernels.backends.triton import configs

    launched = []
    real_launch = configs.launch
    monkeypatch.setattr(configs, "launch", lambda tuner, *a, **k: (launched.append(tuner.fn.__name__), real_launch(tuner, *a, **k)))
    dims, layouts = [6, 4, 3], ["sequence", "spatial", "spatial"]
    module = _module(dims, layouts, 62, torch.float32)
    features, masks, present = _to(*random_case(dims, layouts, batch=3, positions=[5, (2, 3), ()], seed=63))
    leaves = [x.detach().requires_grad_() for x in features]
    forward, backward = ["_reduce_kernel", "_gates_kernel", "_map_kernel"], ["_reduce_kernel", "_gates_backward_kernel", "_reduce_partials_kernel"]
    outputs = module(leaves, masks, present)
    assert launched == forward
    launched.clear()
    torch.autograd.backward(outputs, random_grads(outputs))
    assert launched == backward + ["_map_kernel"]
    launched.clear()
    torch.autograd.backward(module(features, masks, present), random_grads(outputs))  # frozen features
    assert launched == forward + backward


# ---- no silent wrong result: in place, second derivatives ------------------


def test_in_place_first_call_is_right():
    """The in-place launch is the first of its kind here: on a GPU, an autotuned
    in-place launch would multiply X by the gate once per timing run."""
    dims, layouts = [9, 5], ["sequence", "spatial"]
    module = _module(dims, layouts, 62, torch.float32)
    features, masks, present = _to(*random_case(dims, layouts, batch=3, positions=[11, (3, 7)], seed=63))
    targets = [x.clone() for x in features]
    with torch.no_grad():
        module.calibrate_(targets, masks, present)  # before any out-of-place call with these sizes
        want = module(features, masks, present)
    for a, b in zip(targets, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_in_place_bumps_versions_and_refuses_shared_memory():
    dims, layouts = [4, 4], ["sequence", "sequence"]
    module = _module(dims, layouts, 64, torch.float32)
    base = torch.randn(2, 5, 4, device=DEVICE, requires_grad=True)
    h = base.exp()  # saves its output for the backward
    with torch.no_grad():
        module.calibrate_([h, torch.randn(2, 6, 4, device=DEVICE)])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()
    x = torch.randn(2, 5, 4, device=DEVICE)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"features\[0\]: more than one element refers to a single memory location"):
            module.calibrate_([torch.randn(1, 5, 4, device=DEVICE).expand(2, 5, 4), x])
        with pytest.raises(ValueError, match=r"features\[1\] and features\[0\]: share memory"):
            module.calibrate_([x, x])
    op = torch.ops.mmcal.triton_modulate_
    y = torch.ones(1, 3, 4, device=DEVICE).expand(2, 3, 4)
    with pytest.raises(ValueError, match=r"xs\[0\]: more than one element refers to a single memory location"):
        op([y], [torch.rand(2, 4, device=DEVICE)], [0])
    z = torch.randn(2, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"xs\[0\] and gates\[0\]: share memory"):
        op([z], [z[:, 0]], [0])


def test_in_place_op_refuses_what_autograd_cannot_record():
    """As Tensor.mul_ and the C++ mmcal::modulate_: with grad mode on, a written
    tensor or a gate that requires grad is refused before anything is written
    (its gradient would skip the gate); under no_grad the write goes ahead."""
    op = torch.ops.mmcal.triton_modulate_
    gate = torch.rand(2, 4, device=DEVICE) + 0.5
    leaf = torch.randn(2, 3, 4, device=DEVICE, requires_grad=True)
    node = leaf * 2.0
    before = node.detach().clone()
    with pytest.raises(RuntimeError, match=r"xs\[0\]: a leaf Variable that requires grad is being used in an in-place"):
        op([leaf], [gate], [0])
    with pytest.raises(RuntimeError, match=r"xs\[0\]: requires grad, and the in-place mmcal::triton_modulate_ records nothing"):
        op([node], [gate], [0])
    assert torch.equal(node.detach(), before)
    with pytest.raises(RuntimeError, match=r"gates\[0\]: requires grad"):
        op([before.clone()], [gate.clone().requires_grad_()], [0])
    with torch.no_grad():
        op([node], [gate], [0])
    torch.testing.assert_close(node.detach(), before * gate[:, None, :])


def test_second_derivative_is_refused_not_zero():
    dims, layouts = [4, 3], ["sequence", "spatial"]
    module = _module(dims, layouts, 65, torch.float64)
    features, masks, present = _to(*random_case(dims, layouts, batch=2, positions=[5, (2, 2)], dtype=torch.float64, seed=66))
    x0 = features[0].requires_grad_()

    def loss(x):
        return sum(y.square().sum() for y in module([x, features[1]], masks, present))

    with pytest.raises(RuntimeError, match=r"the fused calibration node \(\w+ kernels\): a second derivative"):
        torch.autograd.functional.hvp(loss, x0, torch.ones_like(x0))
    x = torch.randn(2, 5, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    g = torch.rand(2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = functional.gate_modulate(x, g, "sequence", backend="triton")
    with pytest.raises(RuntimeError, match="a second derivative"):
        torch.autograd.grad(y.square().sum(), (x, g), create_graph=True)
