"""The one-autograd-node structure (mmcal_kernels.autograd) with plain-torch passes
against the reference: outputs, diagnostics, every gradient, frozen features."""

import contextlib

import pytest
import torch
from torch.autograd import forward_ad
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_module, random_grads
from mmcal_kernels import backends, functional, reference
from mmcal_kernels.autograd import fused_calibrate
from mmcal_kernels.compare import assert_close, random_case
from torch_passes import TorchFused

DIMS, LAYOUTS = [6, 4, 3, 5], ["sequence", "spatial", "spatial", "sequence"]
POSITIONS = [7, (2, 3), (), 4]


def _run(fn, module, features, masks, present, grads, frozen=False):
    leaves = [x.detach().requires_grad_(not frozen) for x in features]
    params = module.gate_params()
    module.zero_grad(set_to_none=True)
    outputs, diag = fn(leaves, params, module.layouts, masks, present)
    torch.autograd.backward(outputs, grads)
    return outputs, diag, [x.grad for x in leaves] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("frozen", [False, True], ids=["features-need-grad", "frozen-features"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fused_node_matches_reference(dtype, frozen):
    module = make_module(DIMS, LAYOUTS, seed=71, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=5, positions=POSITIONS, dtype=dtype, seed=72)
    present[0] = torch.tensor([True, False, False, False])
    grads = random_grads(features)
    got = _run(lambda *a: fused_calibrate(TorchFused, *a), module, features, masks, present, grads, frozen)
    want = _run(reference.calibrate, module, features, masks, present, grads, frozen)
    # Same math in a different order: float64 at 1e-10; lower dtypes within their table.
    for i, (a, e) in enumerate(zip(got[0], want[0])):
        assert_close(a, e, dtype, f"output[{i}]")
    for key in ("agreement", "support", "conflict", "instance_gate"):
        assert_close(got[1][key], want[1][key], dtype, key)
    for i, (a, e) in enumerate(zip(got[2], want[2])):
        if a is None or e is None:
            assert a is None and e is None and frozen, f"gradient {i}"
        else:
            assert_close(a, e, dtype, f"gradient {i}")


def test_fused_node_is_one_node_and_refuses_double_backward():
    module = make_module(DIMS, LAYOUTS, seed=73)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=2, positions=POSITIONS, dtype=torch.float64, seed=74)
    leaves = [x.requires_grad_() for x in features]
    outputs, _ = fused_calibrate(TorchFused, leaves, module.gate_params(), LAYOUTS, masks, present)
    assert len({y.grad_fn for y in outputs}) == 1 and "TorchCalibration" in type(outputs[0].grad_fn).__name__
    # A graph through the backward (create_graph=True: hvp, a gradient penalty)
    # is refused where it is asked for, not returned as a constant gradient.
    with pytest.raises(RuntimeError, match=r"the fused calibration node \(\w+ kernels\): a second derivative"):
        torch.autograd.grad(outputs[0].sum(), leaves[0], create_graph=True)
    (g,) = torch.autograd.grad(outputs[0].sum(), leaves[0])  # a first derivative is fine
    assert g.shape == leaves[0].shape and not g.requires_grad


def test_fused_node_runs_with_autocast_off_both_ways():
    """Steps 1-7 run in ct with autocast off (docs/spec.md). The node enters
    autocast-off only where autocast is on; these passes are torch ops, which
    autocast would run in bfloat16 (errors near 1e-2, past float32's table)."""
    module = make_module(DIMS, LAYOUTS, seed=75, dtype=torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=5, positions=POSITIONS, dtype=torch.float32, seed=76)
    grads = random_grads(features)
    run = lambda: _run(lambda *a: fused_calibrate(TorchFused, *a), module, features, masks, present, grads)  # noqa: E731
    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run()  # forward and backward both under autocast
    assert not torch.is_autocast_enabled("cpu")
    for i, (a, e) in enumerate(zip(auto[0], plain[0])):
        assert a.dtype == torch.float32
        assert_close(a, e, torch.float32, f"output[{i}]")
    for i, (a, e) in enumerate(zip(auto[2], plain[2])):
        assert_close(a, e, torch.float32, f"gradient {i}")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "nothing-requires-grad"])
def test_a_call_that_records_no_graph_skips_the_node(mode, monkeypatch):
    """Where autograd records nothing, the three ops run without the node
    (Function.apply is most of an eager inference call's host time): the
    same values, no grad_fn, and apply never entered."""
    module = make_module(DIMS, LAYOUTS, seed=77, dtype=torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=4, positions=POSITIONS, dtype=torch.float32, seed=78)
    leaves = [x.requires_grad_(mode != "nothing-requires-grad") for x in features]
    params = module.gate_params()
    if mode == "nothing-requires-grad":
        params = [type(p)(*(t.detach() for t in p)) for p in params]
    want_out, want_diag = fused_calibrate(TorchFused, leaves, module.gate_params(), LAYOUTS, masks, present)
    assert want_out[0].grad_fn is not None

    def refuse(*args):
        raise AssertionError("Function.apply called for a call that records no graph")

    monkeypatch.setattr(TorchFused, "apply", refuse)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, contextlib.nullcontext)
    with context():
        got_out, got_diag = fused_calibrate(TorchFused, leaves, params, LAYOUTS, masks, present)
    # The same ops on the same values in one process: the same bits.
    for i, (a, e) in enumerate(zip(got_out, want_out)):
        assert a.grad_fn is None and not a.requires_grad, f"output[{i}]"
        assert torch.equal(a, e), f"output[{i}]"
    for key in ("agreement", "support", "conflict", "instance_gate"):
        assert torch.equal(got_diag[key], want_diag[key]), key
    for i, (a, e) in enumerate(zip(got_diag["dimension_gates"], want_diag["dimension_gates"])):
        assert torch.equal(a, e), f"dimension_gates[{i}]"
    with pytest.raises(AssertionError, match="Function.apply called"):  # a graph still goes through the node
        fused_calibrate(TorchFused, leaves if mode != "nothing-requires-grad" else [x.requires_grad_() for x in leaves],
                        module.gate_params(), LAYOUTS, masks, present)  # fmt: skip


KERNEL_CPU_BACKENDS = [b.name for b in backends.available() if b.usable and b.name != "reference" and "cpu" in b.device_types]


@pytest.mark.parametrize("path", ["fused node", "gates op"])
@pytest.mark.parametrize("backend", KERNEL_CPU_BACKENDS)
def test_an_output_that_reaches_no_loss_leaves_its_gate_layers_without_gradient(backend, path):
    """Autograd gives None, not zeros, to a parameter with no path to the loss,
    and optimizers skip a None gradient (weight decay too). Where only
    modality 1's output (or gate) reaches the loss, the gate layers of 0 and 2
    have none; their projections do (through modality 1's context)."""
    dims, layouts = DIMS[:3], LAYOUTS[:3]
    module = make_module(dims, layouts, seed=75)
    features, masks, present = random_case(dims, layouts, batch=3, positions=POSITIONS[:3], dtype=torch.float64, seed=76)

    def grads_of(name):
        module.backend = name
        module.zero_grad(set_to_none=True)
        if path == "fused node":
            used = module(features, masks, present)[1]
        else:
            summaries = [reference.summary(x, lay, m, torch.float64) for x, lay, m in zip(features, layouts, masks)]
            used = functional.calibration_gates(summaries, module.gate_params(), present, backend=name)[0][1]
        (used * random_grads([used])[0]).sum().backward()
        return {n: p.grad for n, p in module.named_parameters()}

    got, want = grads_of(backend), grads_of("reference")
    unreached = {f"{layer}.{m}.{t}" for layer in ("gate_hidden", "gate_instance", "gate_dim") for m in (0, 2)
                 for t in ("weight", "bias")}  # fmt: skip
    assert {n for n, g in want.items() if g is None} == unreached
    assert {n for n, g in got.items() if g is None} == unreached
    for n, g in got.items():
        if g is not None:
            assert_close(g, want[n], torch.float64, n)


def test_torch_func_transforms_run_the_reference_under_auto():
    """torch.func (grad, vmap) needs ops with batching rules and a functorch
    autograd, which only the reference's plain torch ops have: "auto" picks
    it there, and a kernel backend named explicitly says why it cannot run."""
    dims, layouts = DIMS[:3], LAYOUTS[:3]
    module = make_module(dims, layouts, seed=77, backend="auto")
    features, masks, present = random_case(dims, layouts, batch=3, positions=POSITIONS[:3], dtype=torch.float64, seed=78)
    weights = random_grads(features)
    params = dict(module.named_parameters())

    def loss(p):
        outputs = torch.func.functional_call(module, p, (features, masks, present))
        return sum((y * w).sum() for y, w in zip(outputs, weights))

    got = torch.func.grad(loss)(params)
    module.zero_grad(set_to_none=True)
    loss(params).backward()
    for name, p in params.items():
        assert_close(got[name], p.grad, torch.float64, name)
    with torch.no_grad():  # vmap over a stack of batches: each slice equals its own call
        stacked = torch.func.vmap(lambda *xs: module(list(xs)))(*[torch.stack([x, 2 * x]) for x in features])
        alone = module([2 * x for x in features])
        for i, (y, want) in enumerate(zip(stacked, alone)):
            assert_close(y[1], want, torch.float64, f"vmap[{i}]")
    for name in KERNEL_CPU_BACKENDS:
        module.backend = name
        with pytest.raises(RuntimeError, match=rf"^backend: backend '{name}' does not run under torch.func transforms"):
            torch.func.grad(loss)(params)


def test_one_tensor_in_several_slots_sums_its_gradients():
    """The fused node takes each distinct tensor once (Dynamo refuses repeats):
    a feature given twice, a shared mask and tied gate layers get the sum of
    their slots' gradients, as the reference's autograd gives."""
    dims, layouts = [4, 4, 3], ["sequence", "sequence", "spatial"]
    module = make_module(dims, layouts, seed=77)
    module.gate_dim[1] = module.gate_dim[0]  # one Linear (4 wide) in two modalities' slots
    features, _, present = random_case(dims, layouts, batch=3, positions=[5, 5, (2, 2)], dtype=torch.float64, seed=78)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(79)) > 0.3
    grads = random_grads(features)

    def run(fn):
        x = features[0].detach().requires_grad_()
        module.zero_grad(set_to_none=True)
        outputs, _ = fn([x, x, features[2]], module.gate_params(), layouts, [mask, mask, None], present)
        torch.autograd.backward(outputs, grads)
        return [x.grad] + [p.grad for p in module.parameters()]

    got, want = run(lambda *a: fused_calibrate(TorchFused, *a)), run(reference.calibrate)
    assert len(got) == len(want)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, torch.float64, f"gradient {i}")


def _forward_ad_tangents(module, features, tangents, masks, present):
    """Each output's tangent (None where it has none) of a forward-mode AD call under no_grad."""
    with torch.no_grad(), forward_ad.dual_level():
        duals = [forward_ad.make_dual(x, t) for x, t in zip(features, tangents)]
        return [forward_ad.unpack_dual(y).tangent for y in module(duals, masks, present)]


def test_forward_mode_ad_runs_the_reference_under_auto_and_a_kernel_backend_refuses():
    """The kernel ops have no forward derivative, and below the Autograd key a
    dual input's tangent is dropped without a word (the output reads as a zero
    JVP): "auto" takes the reference there, a named kernel backend refuses."""
    dims, layouts = DIMS[:3], LAYOUTS[:3]
    module = make_module(dims, layouts, seed=81, backend="reference")
    features, masks, present = random_case(dims, layouts, batch=3, positions=POSITIONS[:3], dtype=torch.float64, seed=82)
    tangents = random_grads(features, seed=83)
    want = _forward_ad_tangents(module, features, tangents, masks, present)
    assert all(t is not None and t.abs().max() > 0 for t in want)
    module.backend = "auto"
    for i, (got, w) in enumerate(zip(_forward_ad_tangents(module, features, tangents, masks, present), want)):
        assert_close(got, w, torch.float64, f"tangent[{i}]")
    for name in KERNEL_CPU_BACKENDS:
        module.backend = name
        with pytest.raises(RuntimeError, match=rf"^backend: backend '{name}' does not run under forward-mode AD"):
            _forward_ad_tangents(module, features, tangents, masks, present)
        with torch.no_grad(), forward_ad.dual_level():  # the stage functions too
            dual = forward_ad.make_dual(features[0], tangents[0])
            with pytest.raises(RuntimeError, match="does not run under forward-mode AD"):
                functional.summary_pool(dual, layouts[0], masks[0], backend=name)
        with forward_ad.dual_level():  # a level open but no tangent among the inputs: the kernels run
            module(features, masks, present)


@pytest.mark.parametrize("how", ["is_grads_batched", "jacobian(vectorize=True)"])
@pytest.mark.parametrize("path", ["fused node", "stage op"])
def test_a_vectorised_backward_through_a_kernel_backend_says_why_it_cannot_run(how, path):
    """torch runs these backwards under its legacy vmap, where the ops have no
    batching rule: refused with the remedy, not torch's batching-fallback error."""
    dims, layouts = DIMS[:2], LAYOUTS[:2]
    for name in KERNEL_CPU_BACKENDS:
        module = make_module(dims, layouts, seed=84, backend=name)
        features, masks, present = random_case(dims, layouts, batch=2, positions=POSITIONS[:2], dtype=torch.float64, seed=85)

        def first_output(x):
            if path == "stage op":
                return functional.summary_pool(x, layouts[0], masks[0], backend=name)
            return module([x, features[1]], masks, present)[0]

        x = features[0].detach().requires_grad_()
        match = "a vectorised backward .* is not supported by the kernel backends; use backend='reference'"
        with pytest.raises(RuntimeError, match=match):
            if how == "is_grads_batched":
                y = first_output(x)
                torch.autograd.grad(y, x, torch.randn(3, *y.shape, dtype=y.dtype), is_grads_batched=True)
            else:
                torch.autograd.functional.jacobian(first_output, x.detach(), vectorize=True)


class _PassCalls(TorchDispatchMode):
    """For each mmcal pass op called, how many modalities it was given; and the
    shapes of every tensor any op returned."""

    def __init__(self):
        super().__init__()
        self.modalities, self.shapes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.name()
        if name.split("::")[-1].split(".")[0].endswith(("gate_grads", "input_grads")):
            self.modalities.append((name.split("::")[-1].split(".")[0], len(args[0])))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("backend", KERNEL_CPU_BACKENDS)
def test_the_backward_passes_skip_unreached_outputs_and_frozen_features(backend):
    """An output that reached no loss has dg = 0: no zero dY of its feature's
    size is made and read; a feature that needs no gradient (a frozen
    encoder's) gets no dX written. The gradients that remain match the reference."""
    dims, layouts = DIMS[:3], LAYOUTS[:3]
    module = make_module(dims, layouts, seed=91, backend=backend)
    features, masks, present = random_case(dims, layouts, batch=3, positions=POSITIONS[:3], dtype=torch.float64, seed=92)
    weights = random_grads(features)
    for used, frozen in (([1, 2], [0]), ([0, 1, 2], [1]), ([1], [])):

        def step(backend_name, record=None):
            module.backend = backend_name
            module.zero_grad(set_to_none=True)
            xs = [x.detach().requires_grad_(m not in frozen) for m, x in enumerate(features)]
            ys = module(xs, masks, present)
            loss = sum((ys[m] * weights[m]).sum() for m in used)
            with record or contextlib.nullcontext():
                loss.backward()
            return [x.grad for x in xs] + [p.grad for p in module.parameters()]

        calls = _PassCalls()
        got = step(backend, calls)
        want = step("reference")
        names = [f"features[{m}]" for m in range(3)] + [n for n, _ in module.named_parameters()]
        for name, a, b in zip(names, got, want):
            assert (a is None) == (b is None), f"{used=} {frozen=}: {name}"
            if a is not None:
                assert_close(a, b, torch.float64, f"{used=} {frozen=}: {name}")
        needing = 3 - len(frozen)
        assert ("gate_grads", len(used)) in calls.modalities and ("input_grads", needing) in calls.modalities, calls.modalities
        for m in range(3):
            if m not in used and m in frozen:
                assert tuple(features[m].shape) not in calls.shapes, f"{used=} {frozen=}: a tensor of X[{m}]'s size"
