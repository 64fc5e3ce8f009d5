"""The functional API: each stage alone against the reference, and the stages
composed equal to ``calibrate``."""

import warnings

import pytest
import torch

from conftest import make_module
from mmcal_kernels import autograd as mmcal_autograd
from mmcal_kernels import backends, functional, reference
from mmcal_kernels.compare import assert_close, random_case

DIMS, LAYOUTS = [5, 4, 3], ["sequence", "spatial", "spatial"]
POSITIONS = [6, (2, 3), ()]


def _case(dtype=torch.float64):
    module = make_module(DIMS, LAYOUTS, seed=31)
    features, masks, present = random_case(DIMS, LAYOUTS, positions=POSITIONS, dtype=dtype, seed=32)
    return module, features, masks, present


CPU_BACKENDS = ["auto"] + [b.name for b in backends.available() if b.usable and "cpu" in b.device_types]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_stages_compose_to_calibrate(backend):
    module, features, masks, present = _case()
    params = module.gate_params()
    summaries = [functional.summary_pool(x, lay, v, backend=backend) for x, lay, v in zip(features, LAYOUTS, masks)]
    gates, diag = functional.calibration_gates(summaries, params, present, backend=backend)
    staged = [functional.gate_modulate(x, g, lay, backend=backend) for x, g, lay in zip(features, gates, LAYOUTS)]
    fused, fused_diag = functional.calibrate(
        features, params, layouts=LAYOUTS, masks=masks, present=present, return_diagnostics=True, backend=backend
    )
    for a, b in zip(staged, fused):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    torch.testing.assert_close(diag["agreement"], fused_diag["agreement"], rtol=1e-13, atol=0)


KERNEL_CPU_BACKENDS = [b.name for b in backends.available() if b.usable and b.name != "reference" and "cpu" in b.device_types]


@pytest.mark.parametrize("backend", KERNEL_CPU_BACKENDS)
def test_stage_ops_leave_autograd_only_where_no_input_needs_a_gradient(backend, monkeypatch):
    """Each stage op runs below the Autograd key (skipping the Python autograd
    kernel torch.library registered) where no input needs a gradient or grad
    mode is off, and keeps its autograd where one does: there its output has a
    grad_fn and the gradients are those of the reference."""
    entered = []  # (torch.library's own autograd kernel also enters _AutoDispatchBelowAutograd: count ours)
    below = mmcal_autograd._ops_below_autograd
    monkeypatch.setattr(mmcal_autograd, "_ops_below_autograd", lambda example: entered.append(1) or below(example))
    module, features, masks, present = _case()
    params = module.gate_params()  # the module's parameters need gradients
    x, layout, mask = features[0], LAYOUTS[0], masks[0]

    def calls(fn):
        entered.clear()
        out = fn()
        return len(entered), out

    n, s = calls(lambda: functional.summary_pool(x, layout, mask, backend=backend))
    assert n == 1 and s.grad_fn is None
    summaries = [reference.summary(f, lay, m, torch.float64) for f, lay, m in zip(features, LAYOUTS, masks)]
    gate = summaries[0].sigmoid()
    n, y = calls(lambda: functional.gate_modulate(x, gate, layout, backend=backend))
    assert n == 1 and y.grad_fn is None
    with torch.no_grad():
        n, (gates, _) = calls(lambda: functional.calibration_gates(summaries, params, present, backend=backend))
    assert n == 1 and gates[0].grad_fn is None

    # An input that needs a gradient keeps the op's autograd, and the gradient is right.
    leaf = x.detach().requires_grad_()
    n, s = calls(lambda: functional.summary_pool(leaf, layout, mask, backend=backend))
    assert n == 0 and s.grad_fn is not None
    (got,) = torch.autograd.grad(s.sum(), leaf)
    (want,) = torch.autograd.grad(reference.summary(leaf, layout, mask, torch.float64).sum(), leaf)
    assert_close(got, want, torch.float64, "summary_pool's gradient")
    gate_leaf = gate.detach().requires_grad_()
    n, y = calls(lambda: functional.gate_modulate(x, gate_leaf, layout, backend=backend))
    assert n == 0 and y.grad_fn is not None
    n, (gates, _) = calls(lambda: functional.calibration_gates(summaries, params, present, backend=backend))
    assert n == 0 and gates[0].grad_fn is not None


def test_summary_pool_is_the_masked_mean():
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [False, True, False, False]])
    want = torch.stack([x[0, [0, 1, 3]].mean(0), x[1, 1]])
    torch.testing.assert_close(functional.summary_pool(x, "sequence", mask), want, rtol=1e-15, atol=0)
    spatial = torch.randn(2, 3, 4, 5, dtype=torch.float16)
    s = functional.summary_pool(spatial, "spatial")
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, spatial.float().mean((2, 3)), rtol=1e-6, atol=1e-6)
    assert functional.summary_pool(spatial, "spatial", compute_dtype=torch.float64).dtype == torch.float64


def test_gate_modulate_rounds_once_in_the_feature_dtype():
    x = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    g = torch.rand(3, 4) * 4
    y = functional.gate_modulate(x, g, "sequence")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (x.float() * g.unsqueeze(1)).bfloat16())
    xs = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(functional.gate_modulate(xs, g.double(), "spatial"), xs * g.double()[:, :, None, None])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gate_modulate_allocates_its_output_like_its_input(backend):
    """docs/spec.md: outputs are allocated like their input (torch.empty_like),
    on every backend. Where x overlaps itself (a dim expanded) torch's own
    elementwise layout rule followed the transposed gate in the reference."""
    torch.manual_seed(0)
    cases = [
        (torch.randn(1, 3, 5).expand(2, 3, 5), "sequence"),
        (torch.randn(2, 1, 5).expand(2, 3, 5), "sequence"),
        (torch.randn(1, 4, 3, 3).expand(2, 4, 3, 3), "spatial"),
        (torch.randn(2, 4, 1, 3).expand(2, 4, 5, 3), "spatial"),
        (torch.randn(3, 2, 5).transpose(0, 1), "sequence"),
    ]
    for x, layout in cases:
        dim = x.shape[2] if layout == "sequence" else x.shape[1]
        for g in (torch.rand(2, dim), torch.rand(dim, 2).t()):
            y = functional.gate_modulate(x, g, layout, backend=backend)
            assert y.stride() == torch.empty_like(x).stride(), (layout, x.stride(), g.stride(), y.stride())
            torch.testing.assert_close(y, reference.modulate(x.contiguous(), g, layout))


def test_gates_pass_missing_modalities_through_exactly():
    module, features, masks, present = _case()
    summaries = [reference.summary(x, lay, v) for x, lay, v in zip(features, LAYOUTS, masks)]
    gates, diag = functional.calibration_gates(summaries, module.gate_params(), present)
    for m, g in enumerate(gates):
        assert torch.equal(g[~present[:, m]], torch.ones_like(g[~present[:, m]]))
        # The diagnostics keep the computed values, before the pass-through.
        assert not torch.equal(diag["dimension_gates"][m], torch.ones_like(g))


def test_stage_op_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"^layout: expected one of \('sequence', 'spatial'\), got 'channels'"):
        functional.summary_pool(torch.randn(2, 3, 4), "channels")
    with pytest.raises(ValueError, match=r"^gate: expected shape \[B, D\] = \(2, 4\), got \(2, 3\)"):
        functional.gate_modulate(torch.randn(2, 3, 4), torch.rand(2, 3))
    with pytest.raises(TypeError, match=r"^summaries\[1\]"):
        functional.calibration_gates([torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64)], [])
    with pytest.raises(ValueError, match=r"^params: expected one GateParams per modality \(2\), got 0"):
        functional.calibration_gates([torch.randn(2, 3), torch.randn(2, 3)], [])
    module, features, masks, present = _case()
    params = module.gate_params()
    params[1] = params[1]._replace(dim_bias=torch.zeros(7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^params\[1\]\.dim_bias: expected shape \(4,\), got \(7,\)"):
        functional.calibrate(features, params, layouts=LAYOUTS)
    with pytest.raises(ValueError, match=r"^backend: unknown backend 'fast'"):
        functional.calibrate(features, module.gate_params(), layouts=LAYOUTS, backend="fast")
    # Named, not Python's "'NoneType' object is not iterable" or an IndexError.
    with pytest.raises(TypeError, match=r"^params: expected one GateParams per modality, got NoneType"):
        functional.calibrate(features, None, layouts=LAYOUTS)
    with pytest.raises(TypeError, match=r"^summaries: expected a list of \[B, D_m\] tensors"):
        functional.calibration_gates(None, params)
    for field in ("proj_weight", "hidden_weight"):
        params = module.gate_params()
        params[2] = params[2]._replace(**{field: torch.tensor(1.0, dtype=torch.float64)})
        with pytest.raises(ValueError, match=rf"^params\[2\]\.{field}: expected a 2-D weight, got shape \(\)"):
            functional.calibrate(features, params, layouts=LAYOUTS)
    # float8 is floating point, but promotes with nothing: refused as the C++ op refuses it.
    params = module.gate_params()
    params[0] = params[0]._replace(proj_bias=params[0].proj_bias.to(torch.float8_e5m2))
    with pytest.raises(TypeError, match=r"^params\[0\]\.proj_bias: expected one of float16, bfloat16, float32, float64, got torch.float8_e5m2"):
        functional.calibrate(features, params, layouts=LAYOUTS)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_stages_run_with_autocast_off(backend):
    """docs/spec.md, "Numerics": steps 1-6 in ct whatever autocast says, for
    the stage functions as for calibrate. The reference's products would run
    in bfloat16 under CPU autocast (errors near 1e-2). A kernel backend's
    backward also runs in ct when called inside the autocast region; the
    reference's backward is torch's autograd, which autocast reaches there
    (torch advises against a backward under autocast), so it is called
    outside, as torch advises."""
    module = make_module(DIMS, LAYOUTS, seed=33, dtype=torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, positions=POSITIONS, dtype=torch.float32, seed=34)
    params = module.gate_params()

    def forward():
        leaves = [x.detach().requires_grad_() for x in features]
        summaries = [functional.summary_pool(x, lay, v, backend=backend) for x, lay, v in zip(leaves, LAYOUTS, masks)]
        gates, diag = functional.calibration_gates(summaries, params, present, backend=backend)
        loss = sum((g * torch.linspace(-1, 1, g.shape[1])).sum() for g in gates)
        return gates, diag, loss, [*leaves, *module.parameters()]

    def backward(loss, inputs):
        return torch.autograd.grad(loss, inputs)

    gates, diag, loss, inputs = forward()
    plain = gates, diag, backward(loss, inputs)
    kernels = backends.resolve(backend, "cpu").name != "reference"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gates, diag, loss, inputs = forward()
        if kernels:
            auto = gates, diag, backward(loss, inputs)
    if not kernels:
        auto = gates, diag, backward(loss, inputs)
    for i, (a, e) in enumerate(zip(auto[0], plain[0])):
        assert a.dtype == torch.float32, f"gates[{i}]: {a.dtype}"
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=f"gates[{i}]")
    for key in ("agreement", "support", "conflict", "instance_gate"):
        assert auto[1][key].dtype == torch.float32, key
        torch.testing.assert_close(auto[1][key], plain[1][key], rtol=0, atol=0, msg=key)
    for i, (a, e) in enumerate(zip(auto[2], plain[2])):
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=f"gradient {i}")


def test_suspicious_masks_warn_once(monkeypatch):
    from mmcal_kernels import checks as _checks

    monkeypatch.setattr(_checks, "_MASK_LOOKS_LEFT", [8])
    monkeypatch.setattr(_checks, "_MASK_WARNED", set())
    module, features, _, _ = _case()
    params, batch, length = module.gate_params(), features[0].shape[0], features[0].shape[1]
    right_padded = torch.arange(length).expand(batch, length) < torch.tensor([length - 1, 2, 3])[:batch, None]
    masks = [right_padded, None, None][: len(features)]

    def run(masks, present=None):
        return functional.calibrate(features, params, layouts=LAYOUTS, masks=masks, present=present, backend="reference")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(masks)  # right padding: what a tokenizer gives, no warning
    with pytest.warns(UserWarning, match=r"masks\[0\]: every padded row has its padding at the START") as record:
        run([~right_padded, None, None][: len(features)])  # a key_padding_mask passed as is
    assert record[0].filename == __file__, "the warning should name the caller's line"
    empty = right_padded.clone()
    empty[1] = False
    with pytest.warns(UserWarning, match=r"masks\[0\]: row 1 has no valid position") as record:
        module([x.clone() for x in features], [empty, None, None][: len(features)])  # through the module
    assert record[0].filename == __file__, "the warning should name the caller's line, not the module's"
    present = torch.ones(batch, len(features), dtype=torch.bool)
    present[1, 0] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: neither warns again
        run([~right_padded, None, None][: len(features)])
        run([empty, None, None][: len(features)], present)
    monkeypatch.setattr(_checks, "_MASK_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run([empty, None, None][: len(features)], present)  # the empty row's modality is missing there: fine
        full_row = torch.arange(length).expand(batch, length) < torch.tensor([length, 2, 3])[:batch, None]
        run([full_row, None, None][: len(features)])  # the longest sequence unpadded, the rest right-padded
    monkeypatch.setattr(_checks, "_MASK_LOOKS_LEFT", [2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(masks)
        run(masks)
        run([~right_padded, None, None][: len(features)])  # past the looks budget: not looked at


def test_mask_look_steps_aside_under_vmap(monkeypatch):
    """Per-sample gradients (vmap over grad) with batched masks: reading a
    batched mask's values raises, so the look must not run there, whatever
    the process's history (its budget still unspent here)."""
    from mmcal_kernels import checks as _checks

    monkeypatch.setattr(_checks, "_MASK_LOOKS_LEFT", [8])
    monkeypatch.setattr(_checks, "_MASK_WARNED", set())
    module, features, masks, present = _case()
    module.backend = "auto"
    params = {n: p.detach() for n, p in module.named_parameters()}

    def loss(p, xs, ms):
        ys = torch.func.functional_call(module, p, ([x[None] for x in xs], [m if m is None else m[None] for m in ms]))
        return sum(y.square().sum() for y in ys)

    mask_dims = [None if m is None else 0 for m in masks]
    assert mask_dims.count(0) >= 1
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, mask_dims))(params, features, masks)
    assert _checks._MASK_LOOKS_LEFT == [8]
    for b in range(features[0].shape[0]):
        one = torch.func.grad(loss)(params, [x[b] for x in features], [m if m is None else m[b] for m in masks])
        for name in params:
            assert_close(per_sample[name][b], one[name], features[0].dtype, name)
