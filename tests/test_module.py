"""PreFusionCalibration as a module: parameters, identity at init, layouts and
memory formats, odd sizes, and how it behaves under PyTorch's machinery."""

import copy
import io
import warnings

import pytest
import torch

from conftest import check_against_oracle, make_module, random_grads
from mmcal_kernels import CalibratedFusion, PreFusionCalibration, backends
from mmcal_kernels.compare import assert_close, forward_backward, random_case

# Every backend that computes on CPU tensors here: the tests of layouts, sizes,
# dtypes and modes below check each against the float64 reference (the
# reference against itself would pass whatever it computed).
CPU_BACKENDS = [b.name for b in backends.available() if b.usable and "cpu" in b.device_types]


def test_parameter_names_shapes_and_init():
    torch.manual_seed(0)
    module = PreFusionCalibration([7, 3], shared_dim=6, hidden_dim=5)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    assert shapes == {
        "proj.0.weight": (6, 7), "proj.0.bias": (6,), "proj.1.weight": (6, 3), "proj.1.bias": (6,),
        "gate_hidden.0.weight": (5, 14), "gate_hidden.0.bias": (5,),
        "gate_hidden.1.weight": (5, 14), "gate_hidden.1.bias": (5,),
        "gate_instance.0.weight": (1, 5), "gate_instance.0.bias": (1,),
        "gate_instance.1.weight": (1, 5), "gate_instance.1.bias": (1,),
        "gate_dim.0.weight": (7, 5), "gate_dim.0.bias": (7,), "gate_dim.1.weight": (3, 5), "gate_dim.1.bias": (3,),
    }  # fmt: skip
    for name, p in module.named_parameters():
        layer = module.get_submodule(name.rsplit(".", 1)[0])
        if name.startswith(("gate_instance", "gate_dim")):
            assert torch.count_nonzero(p) == 0, name
        else:  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero
            assert 0 < p.abs().max() <= layer.in_features**-0.5, name
    assert PreFusionCalibration([4, 4]).hidden_dim == 128 and PreFusionCalibration([4, 4], shared_dim=8).hidden_dim == 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_identity_at_initialisation(dtype):
    dims, layouts = [5, 4, 3], ["sequence", "spatial", "spatial"]
    module = PreFusionCalibration(dims, shared_dim=8, layouts=layouts)
    features, masks, present = random_case(dims, layouts, positions=[6, (3, 3), ()], dtype=dtype)
    ys, diag = module(features, masks=masks, present=present, return_diagnostics=True)
    for x, y in zip(features, ys):
        assert torch.equal(x, y) and y.dtype == x.dtype
    assert torch.equal(diag["instance_gate"], torch.ones_like(diag["instance_gate"]))
    assert all(torch.equal(g, torch.ones_like(g)) for g in diag["dimension_gates"])


def test_repr_names_the_backend_auto_will_use():
    text = repr(PreFusionCalibration([3, 4], shared_dim=4))
    fastest = "cpu" if backends.resolve("auto", "cpu").name == "cpu" else "reference"
    assert f"backend='auto' -> '{fastest}' on cpu" in text
    assert "backend='reference'" in repr(PreFusionCalibration([3, 4], backend="reference"))


def test_repr_never_raises_where_the_backend_cannot_run():
    """A checkpoint trained on a GPU printed on a CPU machine, a module built on
    meta before it is materialised: the repr says why, it does not raise."""
    cases = [(PreFusionCalibration([3, 4], shared_dim=4, backend="cpu").to("meta"), "not usable on meta here")]
    for name in ("cuda", "triton"):
        if not backends.get(name).usable or "cpu" not in backends.get(name).device_types:
            cases.append((PreFusionCalibration([3, 4], shared_dim=4, backend=name), "not usable on cpu here"))
    for module, says in cases:
        assert says in repr(module)
        assert says in repr(torch.nn.Sequential(module))


def test_deferred_initialisation_keeps_the_zero_gate_layers():
    """FSDP materialises a module built on meta with to_empty, then each
    submodule's reset_parameters: the last gate layers must come back zeros
    (the identity at start), and the module's own reset_parameters does all."""
    dims = [5, 3]
    module = PreFusionCalibration(dims, shared_dim=4).to("meta").to_empty(device="cpu")
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    features, masks, present = random_case(dims, "sequence", positions=[4, 4], dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(features, module(features, masks, present)))
    for p in module.parameters():
        torch.nn.init.normal_(p)
    module.reset_parameters()
    assert all(torch.equal(x, y) for x, y in zip(features, module(features, masks, present)))
    assert all(p.abs().max() > 0 for n, p in module.named_parameters() if n.startswith(("proj", "gate_hidden")))
    # A plain Linear swapped in as a gate layer (or unpickled as one) is zeroed too, not drawn at random.
    module.gate_dim[1] = torch.nn.Linear(4, dims[1])
    module.gate_instance[0] = torch.nn.Linear(4, 1)
    module.reset_parameters()
    assert all(torch.equal(x, y) for x, y in zip(features, module(features, masks, present)))


def test_jit_script_is_refused_with_the_alternatives_named():
    """torch.jit.script once failed inside the backends' Python with a
    TorchScript frontend error about an f-string; it is refused up front, for
    the module alone and inside a wrapper, naming what does work."""
    module = PreFusionCalibration([4, 3], shared_dim=4)
    for target in (module, CalibratedFusion(torch.nn.Identity(), module)):
        with pytest.raises(RuntimeError, match=r"torch\.jit\.script cannot compile.*torch\.export\.export"):
            torch.jit.script(target)


def test_jit_trace_runs_the_reference_under_auto_and_a_kernel_backend_refuses():
    """The tracer refuses the kernel ops' lists of optional tensors: "auto"
    traces the reference (a correct graph), a named kernel backend says so."""
    dims = [4, 3]
    module = make_module(dims, "sequence", seed=5, dtype=torch.float32, backend="auto")
    features, _, _ = random_case(dims, "sequence", positions=[5, 5], dtype=torch.float32, seed=6)

    class Wrapped(torch.nn.Module):
        def __init__(self, calibration):
            super().__init__()
            self.calibration = calibration

        def forward(self, a, b):
            return tuple(self.calibration([a, b]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(Wrapped(module), tuple(features))
        again, _, _ = random_case(dims, "sequence", positions=[5, 5], dtype=torch.float32, seed=7)
        for got, want in zip(traced(*again), module(again)):
            assert_close(got, want, torch.float32, "traced")
        for name in [n for n in backends.names() if n not in ("auto", "reference") and backends.get(n).usable
                     and "cpu" in backends.get(n).device_types]:  # fmt: skip
            module.backend = name
            with pytest.raises(RuntimeError, match=rf"backend '{name}' does not run under torch.jit.trace"):
                torch.jit.trace(Wrapped(module), tuple(features))




@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("memory_format", ["channels_last", "channels_last_3d"])
def test_channels_last_maps_keep_their_format(memory_format, backend):
    fmt = getattr(torch, memory_format)
    trailing = (4, 3) if memory_format == "channels_last" else (2, 4, 3)
    dims = [5, 3]
    module = make_module(dims, "spatial", seed=1, backend=backend)
    features, _, present = random_case(dims, "spatial", positions=[trailing, trailing], dtype=torch.float64, seed=2)
    cl = [x.contiguous(memory_format=fmt) for x in features]
    outputs, _, grads = check_against_oracle(module, cl, None, present)
    for x, y, gx in zip(cl, outputs, grads):
        assert y.is_contiguous(memory_format=fmt) and y.stride() == torch.empty_like(x).stride()
    ref = module(features, present=present)
    for a, b in zip(outputs, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs_match_contiguous(backend):
    dims, layouts = [4, 6], ["sequence", "spatial"]
    module = make_module(dims, layouts, seed=3, backend=backend)
    base_seq = torch.randn(3, 4, 2 * 9, dtype=torch.float64)
    seq = base_seq.transpose(1, 2)[:, ::2]  # [3, 9, 4], strided, not dense
    spa = torch.randn(3, 5, 6, 2, dtype=torch.float64).permute(0, 2, 3, 1)[..., 1:4]  # [3, 6, 2, 3]
    masks = [torch.rand(3, 9) > 0.3, None]
    present = torch.tensor([[True, False], [True, True], [False, True]])
    assert not seq.is_contiguous() and not spa.is_contiguous()
    got = check_against_oracle(module, [seq, spa], masks, present)
    want = forward_backward(module, [seq.contiguous(), spa.contiguous()], masks, present, random_grads([seq, spa]))
    for a, b in zip(got[0] + got[2], want[0] + want[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "batch,positions,dims",
    [(0, [4, (2, 2)], [3, 2]), (2, [0, (0,)], [3, 2]), (2, [3, (2,)], [1, 1]), (0, [0, ()], [1, 2])],
    ids=["B=0", "P=0", "D=1", "B=0,P=0"],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_degenerate_sizes_match_oracle(batch, positions, dims, backend):
    layouts = ["sequence", "spatial"]
    module = make_module(dims, layouts, seed=4, backend=backend)
    features, masks, present = random_case(dims, layouts, batch=batch, positions=positions, dtype=torch.float64, seed=5)
    outputs, diag, _ = check_against_oracle(module, features, masks, present)
    assert [y.shape for y in outputs] == [x.shape for x in features]
    assert diag["agreement"].shape == (batch, 2, 2)


def test_state_dict_round_trip():
    dims = [4, 3]
    module = make_module(dims, seed=5, dtype=torch.float32)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    fresh = PreFusionCalibration(dims, shared_dim=4, hidden_dim=5, backend=module.backend)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    # The state dict itself round-trips bit for bit...
    assert fresh.state_dict().keys() == module.state_dict().keys()
    for name, tensor in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    # ...and the same backend on the same parameters computes the same values.
    features, masks, present = random_case(dims, seed=6)
    for a, b in zip(module(features, masks, present), fresh(features, masks, present)):
        assert torch.equal(a, b)
    # A module on another backend ("auto": a CPU kernel table whose rounding
    # depends on the machine's vector width) agrees within float32's tolerance.
    auto = PreFusionCalibration(dims, shared_dim=4, hidden_dim=5)
    auto.load_state_dict(fresh.state_dict())
    for m, (a, b) in enumerate(zip(module(features, masks, present), auto(features, masks, present))):
        assert_close(b, a, torch.float32, f"output {m} of 'auto' ({auto.resolved_backend()})")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_to_dtype_follows_the_compute_dtype_rule(backend):
    dims = [4, 3]
    module = make_module(dims, seed=7, dtype=torch.float32, backend=backend)
    features, masks, present = random_case(dims, dtype=torch.float64, seed=8)
    as64 = copy.deepcopy(module).to(torch.float64)
    y64 = as64(features, masks, present)
    assert all(y.dtype == torch.float64 for y in y64)
    # bf16 parameters: ct = promote(float32, bf16, bf16) = float32; outputs keep the features' dtype.
    as_bf16 = copy.deepcopy(module).to(torch.bfloat16)
    feats16 = [x.to(torch.bfloat16) for x in features]
    ys, diag = as_bf16(feats16, masks, present, return_diagnostics=True)
    assert all(y.dtype == torch.bfloat16 for y in ys) and diag["support"].dtype == torch.float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_changes_nothing(backend):
    dims, layouts = [6, 4], ["sequence", "spatial"]
    module = make_module(dims, layouts, seed=9, dtype=torch.float32, backend=backend)
    features, masks, present = random_case(dims, layouts, seed=10)
    plain, diag = module(features, masks, present, return_diagnostics=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, diag_auto = module(features, masks, present, return_diagnostics=True)
    for a, b in zip(plain, auto):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert diag_auto["agreement"].dtype == torch.float32
    assert torch.equal(diag["agreement"], diag_auto["agreement"])


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_meta_device_gives_shapes_without_data(backend):
    """A module moved to "meta" (deferred init, shape inference) runs on meta
    features with the backend that lists the device; torch.autocast refuses
    the device, so autocast is not entered there."""
    module = PreFusionCalibration([8, 4], shared_dim=6, layouts=["sequence", "spatial"], backend=backend).to("meta")
    xs = [torch.randn(2, 3, 8, device="meta"), torch.randn(2, 4, 5, 5, device="meta")]
    masks = [torch.ones(2, 3, dtype=torch.bool, device="meta"), None]
    ys, diag = module(xs, masks, return_diagnostics=True)
    assert [(y.device.type, y.shape) for y in ys] == [("meta", x.shape) for x in xs]
    assert diag["agreement"].shape == (2, 2, 2)
    with torch.no_grad():
        assert [y.shape for y in module.calibrate_(xs, masks)] == [x.shape for x in xs]


def test_hooks_on_the_gate_layers_warn_that_they_do_not_run():
    """The module reads its layers' parameters and never calls them: a hook
    there would silently not run, so the first call says so, naming the
    layer and the caller's line."""
    module = PreFusionCalibration([4, 3], shared_dim=5)
    xs = [torch.randn(2, 3, 4), torch.randn(2, 6, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(xs)  # no hook: no warning
    calls = []
    module.gate_dim[1].register_forward_hook(lambda *args: calls.append(args))
    with pytest.warns(UserWarning, match=r"forward hooks on its layers \(gate_dim.1\) do not run") as record:
        module(xs)
    assert record[0].filename == __file__ and calls == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(xs)  # once


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_grad_saves_nothing_for_backward(backend):
    dims = [5, 3]
    module = make_module(dims, seed=11, dtype=torch.float32, backend=backend)
    features, masks, present = random_case(dims, seed=12)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.no_grad():
            ys = module(features, masks, present)
        assert not packed and all(y.grad_fn is None for y in ys)
        module(features, masks, present)
        assert packed, "the hook must see what a grad-enabled forward saves (else this test proves nothing)"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_diagnostics_are_detached_in_compute_dtype(backend):
    dims = [5, 3]
    module = make_module(dims, seed=13, dtype=torch.float32, backend=backend)
    features, masks, present = random_case(dims, dtype=torch.float16, seed=14)
    ys, diag = module([x.requires_grad_() for x in features], masks, present, return_diagnostics=True)
    tensors = [diag[k] for k in ("agreement", "support", "conflict", "instance_gate")] + diag["dimension_gates"]
    assert all(not t.requires_grad and t.dtype == torch.float32 for t in tensors)
    assert diag["agreement"].shape == (3, 2, 2) and diag["instance_gate"].shape == (3, 2)
    assert [g.shape for g in diag["dimension_gates"]] == [(3, 5), (3, 3)]


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


def test_parametrized_and_swapped_parameters_are_the_ones_used():
    """gate_params reads the layers' parameter dicts (fast) and falls back to
    attribute access where a parametrization computes the weight; a
    functional_call's swapped tensors are used too."""
    from torch.nn.utils import parametrize

    from mmcal_kernels import reference

    dims = [5, 3]
    module = make_module(dims, seed=21, dtype=torch.float32)
    features, masks, present = random_case(dims, seed=22)
    plain = module.gate_params()
    parametrize.register_parametrization(module.proj[0], "weight", _Doubled())
    params = module.gate_params()
    assert torch.equal(params[0].proj_weight, 2 * plain[0].proj_weight)
    got = module(features, masks, present)
    want = reference.calibrate(features, params, module.layouts, masks, present)[0]
    for a, e in zip(got, want):
        assert_close(a, e, torch.float32, "parametrized")
    swapped = {"gate_dim.1.bias": torch.randn(3)}
    got = torch.func.functional_call(module, swapped, (features, masks, present))
    assert torch.equal(module.gate_params()[1].dim_bias, plain[1].dim_bias)  # restored after the call
    params[1] = params[1]._replace(dim_bias=swapped["gate_dim.1.bias"])
    want = reference.calibrate(features, params, module.layouts, masks, present)[0]
    for a, e in zip(got, want):
        assert_close(a, e, torch.float32, "functional_call")
