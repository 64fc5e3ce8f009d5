"""The C++ CPU backend against the reference (all parameters random): layouts,
masks, presence, dtypes, odd sizes, strides, degenerate sizes, frozen features;
plus the op checks, gradcheck, torch.compile and bad input sent straight to
the C++ ops. ``test_every_capability_table`` re-runs this file with each CPU
kernel table the machine can run (the default table always), and with every
map output written by streaming stores where a table has them."""

import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import check_against_oracle, assert_compiled_matches_eager, KERNEL_CASES, KERNEL_DTYPES, make_module, on_meta, random_grads, tensors_in, run_float64_oracle, with_odd_bytes
from mmcal_kernels import GateParams, backends, functional
from mmcal_kernels.backends.cpp.load import STATUS
from mmcal_kernels.compare import assert_runs_close, random_case

pytestmark = pytest.mark.skipif(not backends.resolve("auto", "cpu").name == "cpu", reason=f"no C++ extension: {STATUS['why_not']}")

DTYPES, CASES = KERNEL_DTYPES, KERNEL_CASES




@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(case, dtype):
    dims, layouts, positions = CASES[case]
    feature_dtype, param_dtype = DTYPES[dtype]
    module = make_module(dims, layouts, seed=81, dtype=param_dtype, backend="cpu")
    features, masks, present = random_case(dims, layouts, batch=5, positions=positions, dtype=feature_dtype, seed=82)
    present[0] = False
    present[1, 0] = True
    check_against_oracle(module, features, masks, present)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16-mixed"])
def test_frozen_features_skip_the_input_gradient_pass(dtype):
    dims, layouts, positions = CASES["mixed-wide"]
    feature_dtype, param_dtype = DTYPES[dtype]
    module = make_module(dims, layouts, seed=83, dtype=param_dtype, backend="cpu")
    features, masks, present = random_case(dims, layouts, batch=3, positions=positions, dtype=feature_dtype, seed=84)
    grads = random_grads(features)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        outputs, diag = module(features, masks, present, return_diagnostics=True)  # features need no gradient
        torch.autograd.backward(outputs, grads)
    called = {e.name for e in prof.events()}
    assert "mmcal::gate_grads" in called and "mmcal::input_grads" not in called
    want = run_float64_oracle(module, features, masks, present, grads)
    got = (outputs, diag, [None] * len(features) + [p.grad for p in module.parameters()])
    want = (want[0], want[1], [None] * len(features) + want[2][len(features) :])
    assert_runs_close(got, want, feature_dtype, [n for n, _ in module.named_parameters()])


@pytest.mark.parametrize("memory_format", ["channels_last", "channels_last_3d"])
def test_channels_last(memory_format):
    fmt = getattr(torch, memory_format)
    trailing = (5, 3) if memory_format == "channels_last" else (2, 5, 3)
    dims = [19, 8]
    module = make_module(dims, "spatial", seed=85, dtype=torch.float32, backend="cpu")
    features, _, present = random_case(dims, "spatial", positions=[trailing, trailing], seed=86)
    cl = [x.contiguous(memory_format=fmt) for x in features]
    outputs, _, grads = check_against_oracle(module, cl, None, present)
    for x, y, g in zip(cl, outputs, grads):
        assert y.is_contiguous(memory_format=fmt) and y.stride() == x.stride() and g.stride() == x.stride()


def test_non_contiguous_and_expanded_inputs():
    dims, layouts = [6, 9], ["sequence", "spatial"]
    module = make_module(dims, layouts, seed=87, dtype=torch.float64, backend="cpu")
    seq = torch.randn(3, 6, 2 * 11, dtype=torch.float64).transpose(1, 2)[:, ::2]  # [3, 11, 6], strided
    spa = torch.randn(3, 5, 9, 4, dtype=torch.float64).permute(0, 2, 3, 1)[..., 1:4]  # trailing dims do not flatten
    masks = [torch.rand(3, 11) > 0.3, None]
    masks[0] = masks[0].t().contiguous().t()  # a mask with its own strides
    present = torch.tensor([[True, False], [True, True], [False, True]])
    check_against_oracle(module, [seq, spa], masks, present)
    # An expanded gradient (stride 0), as `Y.sum().backward()` makes.
    leaves = [seq.detach().requires_grad_(), spa.detach().requires_grad_()]
    sum(y.sum() for y in module(leaves, masks, present)).backward()
    ref = [x.detach().requires_grad_() for x in (seq, spa)]
    oracle = make_module(dims, layouts, seed=87, dtype=torch.float64, backend="reference")
    sum(y.sum() for y in oracle(ref, masks, present)).backward()
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "batch,positions,dims", [(0, [4, (2, 2)], [3, 2]), (2, [0, (0,)], [3, 2]), (2, [3, (2,)], [1, 1])], ids=["B=0", "P=0", "D=1"]
)
def test_degenerate_sizes(batch, positions, dims):
    layouts = ["sequence", "spatial"]
    module = make_module(dims, layouts, seed=88, dtype=torch.float64, backend="cpu")
    features, masks, present = random_case(dims, layouts, batch=batch, positions=positions, dtype=torch.float64, seed=89)
    check_against_oracle(module, features, masks, present)


def test_masks_and_present_with_any_nonzero_byte_as_true():
    """A bool mask or present whose True bytes are not 1 (a uint8 tensor viewed
    as bool): the kernels read a byte and test it against zero, as torch does.
    Read as C++ bool, the summary's position count summed the raw bytes."""
    dims, layouts = [6, 4, 5], ["sequence", "spatial", "sequence"]
    module = make_module(dims, layouts, seed=96, dtype=torch.float32, backend="cpu")
    features, masks, present = random_case(dims, layouts, batch=4, positions=[7, (2, 3), 9], seed=97)
    masks = [with_odd_bytes(m, seed=i) for i, m in enumerate(masks)]
    present = with_odd_bytes(present, seed=9)
    assert any(m is not None and m.view(torch.uint8).max() > 1 for m in masks) and present.view(torch.uint8).max() > 1
    check_against_oracle(module, features, masks, present)


def test_nan_in_padded_position_stays_in_its_position():
    module = make_module([5, 3], seed=90, dtype=torch.float32, backend="cpu")
    features, masks, _ = random_case([5, 3], seed=91, missing=False)
    masks[0][1, 2] = False
    features[0][1, 2, 3] = float("nan")
    ys = module(features, masks)
    assert ys[0].isnan().sum() == 1 and ys[0][1, 2, 3].isnan() and not ys[1].isnan().any()


def test_gradcheck_float64():
    dims, layouts = [3, 2, 4], ["sequence", "spatial", "spatial"]
    module = make_module(dims, layouts, shared_dim=3, hidden_dim=4, seed=92)
    features, masks, present = random_case(dims, layouts, batch=2, positions=[4, (2, 1), ()], dtype=torch.float64, seed=93)
    present[1, 2] = False
    params = [t.detach().requires_grad_() for p in module.gate_params() for t in p]
    leaves = [x.detach().requires_grad_() for x in features]

    def fused(*inputs):
        ps = [GateParams(*inputs[3 + 8 * m : 11 + 8 * m]) for m in range(3)]
        return tuple(functional.calibrate(list(inputs[:3]), ps, layouts=layouts, masks=masks, present=present, backend="cpu"))

    assert torch.autograd.gradcheck(fused, (*leaves, *params), eps=1e-6, atol=1e-7, rtol=1e-5)

    def stages(x, g):  # the stage ops' own registered autograd
        s = functional.summary_pool(x, "sequence", masks[0], backend="cpu")
        return s, functional.gate_modulate(x, g, "sequence", backend="cpu")

    gate = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stages, (leaves[0], gate))


def _op_samples(variant="plain"):
    """Arguments of each pass op. The variants make the fake kernels' outputs
    differ from a naive guess: half features (the summaries are in the compute
    dtype, not the features'), a channels-last map and a strided sequence (the
    outputs take their input's strides, as empty_like gives)."""
    dtype = torch.bfloat16 if variant == "bf16 features" else torch.float32
    x = torch.randn(2, 5, 3, dtype=dtype)
    spatial = torch.randn(2, 4, 2, 3, dtype=dtype)
    if variant == "channels-last":
        spatial = spatial.contiguous(memory_format=torch.channels_last)
    if variant == "strided":
        x = torch.randn(2, 3, 10, dtype=dtype).transpose(1, 2)[:, ::2]
    xs = [x, spatial]
    masks = [torch.rand(2, 5) > 0.3, None]
    gates = [torch.rand(2, 3), torch.rand(2, 4)]
    dys = [torch.randn_like(t) for t in xs]
    return {
        "summaries": (xs, masks, [0, 1], torch.float32),
        "modulate": ([t.clone().requires_grad_() for t in xs], [g.clone().requires_grad_() for g in gates], [0, 1]),
        "gate_grads": (dys, xs, [0, 1], torch.float32),
        "input_grads": (xs, dys, gates, masks, [torch.randn(2, 3), torch.randn(2, 4)], [0, 1]),
    }


@pytest.mark.parametrize("variant", ["plain", "bf16 features", "channels-last", "strided"])
@pytest.mark.parametrize("name", ["summaries", "modulate", "gate_grads", "input_grads"])
def test_opcheck(name, variant):
    args = _op_samples(variant)[name]
    torch.library.opcheck(getattr(torch.ops.mmcal, name).default, args)


def test_opcheck_summaries_with_grad():
    xs, masks, layouts, ct = _op_samples()["summaries"]
    torch.library.opcheck(torch.ops.mmcal.summaries.default, ([x.requires_grad_() for x in xs], masks, layouts, ct))


@pytest.mark.compile
def test_compile_fullgraph_no_graph_breaks_equals_eager():
    torch._dynamo.reset()
    dims, layouts = [6, 4, 3], ["sequence", "spatial", "spatial"]
    module = make_module(dims, layouts, seed=94, dtype=torch.float32, backend="cpu")
    features, masks, present = random_case(dims, layouts, batch=3, positions=[7, (2, 3), ()], seed=95)
    explanation = torch._dynamo.explain(module)(features, masks, present)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert_compiled_matches_eager(module, features, masks, present)


BAD = [
    ("summaries", lambda: ([torch.randn(2, 3)], [None], [0], torch.float32), ValueError, r"xs\[0\]: a 'sequence' input must be \[B, P, D\]"),
    ("summaries", lambda: ([torch.randn(2, 3, 4).int()], [None], [0], torch.float32), TypeError, r"xs\[0\]: unsupported dtype Int"),
    ("summaries", lambda: ([torch.randn(2, 3, 4)], [torch.ones(2, 4, dtype=torch.bool)], [0], torch.float32), ValueError, r"masks\[0\]: expected shape \[B, P\]"),
    ("summaries", lambda: ([torch.randn(2, 3, 4)], [torch.ones(2, 3)], [0], torch.float32), TypeError, r"masks\[0\]: expected a bool tensor"),
    ("summaries", lambda: ([torch.randn(2, 4, 3)], [torch.ones(2, 3, dtype=torch.bool)], [1], torch.float32), ValueError, r"masks\[0\]: masks apply to 'sequence' inputs only"),
    ("summaries", lambda: ([torch.randn(2, 3, 4), torch.randn(3, 3, 4)], [None, None], [0, 0], torch.float32), ValueError, r"xs\[1\]: batch size 3 differs"),
    ("summaries", lambda: ([torch.randn(2, 3, 4), torch.randn(2, 3, 4).double()], [None, None], [0, 0], torch.float64), TypeError, r"xs\[1\]: dtype Double differs"),
    ("summaries", lambda: ([torch.randn(2, 3, 4)], [None, None], [0], torch.float32), ValueError, r"masks: expected one entry"),
    ("summaries", lambda: ([torch.randn(2, 3, 4)], [None], [2], torch.float32), ValueError, r"layouts\[0\]: expected 0 \(sequence\) or 1 \(spatial\)"),
    ("summaries", lambda: ([torch.randn(2, 3, 4).double()], [None], [0], torch.float32), TypeError, r"ct: float64 features need a float64"),
    ("summaries", lambda: ([torch.randn(2, 3, 4)], [None], [0], torch.float16), TypeError, r"ct: expected float32 or float64"),
    ("modulate", lambda: ([torch.randn(2, 3, 4)], [torch.rand(2, 5)], [0]), ValueError, r"gates\[0\]: expected shape \[B, D\] = \[2, 4\]"),
    ("modulate", lambda: ([torch.randn(2, 3, 4)], [torch.rand(2, 4), torch.rand(2, 4)], [0]), ValueError, r"gates: expected one tensor per tensor of xs"),
    ("gate_grads", lambda: ([torch.randn(2, 3, 5)], [torch.randn(2, 3, 4)], [0], torch.float32), ValueError, r"grad_ys\[0\]: expected the shape of its features"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)], [None], [None], [None], [None], [0]), ValueError, r"neither grad_ys nor ds;"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)], [torch.randn(2, 3, 4)], [None], [None], [None], [0]), ValueError, r"gates\[0\]: needed exactly when"),
    # One compute dtype per call: the CUDA kernels launch once in it for every modality.
    ("modulate", lambda: ([torch.randn(2, 3, 4)] * 2, [torch.rand(2, 4), torch.rand(2, 4).double()], [0, 0]), TypeError, r"gates\[1\]: expected dtype Float \(the compute dtype, one for the call\), got Double"),
    ("modulate_", lambda: ([torch.randn(2, 3, 4), torch.randn(2, 3, 4)], [torch.rand(2, 4).double(), torch.rand(2, 4)], [0, 0]), TypeError, r"gates\[1\]: expected dtype Double"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)] * 2, [None, None], [None, None], [None, None], [torch.rand(2, 4), torch.rand(2, 4).double()], [0, 0]), TypeError, r"ds\[1\]: expected dtype Float"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)], [torch.randn(2, 3, 4)], [torch.rand(2, 4)], [None], [torch.rand(2, 4).double()], [0]), TypeError, r"ds\[0\]: expected dtype Float"),
    # Wrong in two ways: the C++ checks and the fakes both check the shape before the dtype.
    ("modulate", lambda: ([torch.randn(2, 3, 4), torch.randn(2, 5, 2, 2)], [torch.rand(2, 4), torch.rand(2, 4).half()], [0, 1]), ValueError, r"gates\[1\]: expected shape \[B, D\] = \[2, 5\]"),
    ("gate_grads", lambda: ([torch.randn(2, 3, 4), torch.randn(2, 4, 2, 2).double()], [torch.randn(2, 3, 4), torch.randn(2, 5, 2, 2)], [0, 1], torch.float32), ValueError, r"grad_ys\[1\]: expected the shape of its features"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)], [None], [None], [None], [torch.rand(2, 5).half()], [0]), TypeError, r"ds\[0\]: expected float32 or float64"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)] * 2, [None, None], [None, None], [None, None], [torch.rand(2, 4), torch.rand(2, 5).double()], [0, 0]), ValueError, r"ds\[1\]: expected shape"),
    # One argument on `meta` sends the call to the fake kernel: it must refuse, not return empty CPU memory.
    ("modulate", lambda: ([torch.randn(2, 3, 4)], [torch.rand(2, 4, device="meta")], [0]), ValueError, r"gates\[0\]: on meta, but xs\[0\] is on cpu"),
    ("modulate_", lambda: ([torch.randn(2, 3, 4)], [torch.rand(2, 4, device="meta")], [0]), ValueError, r"gates\[0\]: on meta, but xs\[0\] is on cpu"),
    ("summaries", lambda: ([torch.randn(2, 3, 4)], [torch.ones(2, 3, dtype=torch.bool, device="meta")], [0], torch.float32), ValueError, r"masks\[0\]: on meta, but xs\[0\] is on cpu"),
    ("gate_grads", lambda: ([torch.randn(2, 3, 4, device="meta")], [torch.randn(2, 3, 4)], [0], torch.float32), ValueError, r"grad_ys\[0\]: on meta, but xs\[0\] is on cpu"),
    ("input_grads", lambda: ([torch.randn(2, 3, 4)], [None], [None], [None], [torch.rand(2, 4, device="meta")], [0]), ValueError, r"ds\[0\]: on meta, but xs\[0\] is on cpu"),
    ("summaries", lambda: ([torch.randn(2, 3, 4), torch.randn(2, 3, 4, device="meta")], [None, None], [0, 0], torch.float32), ValueError, r"xs\[1\]: on meta, but xs\[0\] is on cpu"),
]


@pytest.mark.parametrize("name,make,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_to_the_cpp_ops(name, make, exc, match):
    with pytest.raises(exc, match=match):
        getattr(torch.ops.mmcal, name)(*make())


@pytest.mark.parametrize("name,make,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_fake_kernels_refuse_each_bad_call_alike(name, make, exc, match):
    """Every bad call above again with all its tensors on meta, which runs the
    op's fake kernel (torch.compile's view of it): the same exception type,
    naming the same argument (its words are Python's)."""
    args = make()
    if any(t.is_meta for t in tensors_in(args)):
        pytest.skip("the case is a device mismatch with meta itself")
    with pytest.raises(exc) as refused:
        getattr(torch.ops.mmcal, name)(*on_meta(args))
    named = re.split(r"[ :]", match.replace("\\", ""))[0]
    assert named in str(refused.value), f"the fake kernel does not name {named}: {refused.value}"


EMPTY_CALLS = {
    "summaries": ([], [], [], torch.float32), "modulate": ([], [], []), "modulate_": ([], [], []),
    "gate_grads": ([], [], [], torch.float32), "input_grads": ([], [], [], [], [], []),
    "gates": ([], [], None), "gates_backward": ([], [], [], None, [], []),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EMPTY_CALLS))
def test_a_call_without_tensors_raises_what_its_fake_raises(name):
    """Empty lists leave the dispatcher no key: it raised NotImplementedError
    ("There were no tensor arguments") where the fake kernel raised the op's
    ValueError. The kernel for keys without one of their own now checks too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op, args = getattr(torch.ops.mmcal, name), EMPTY_CALLS[name]
    with pytest.raises(ValueError, match=r"^(xs|summaries): expected") as real:
        op(*args)
    with FakeTensorMode(), pytest.raises(ValueError) as fake:
        op(*args)
    assert str(real.value) == str(fake.value)


def test_a_layout_or_device_without_kernels_is_named():
    from mmcal_kernels.backends.cpp.ops import no_kernel

    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match=r"^xs\[0\]: expected a dense \(strided\) tensor, got layout torch.sparse_coo"):
        torch.ops.mmcal.summaries([x.to_sparse()], [None], [0], torch.float32)
    # A dense tensor on a device the build has no kernels for (an XPU, an MPS)
    # gets there only on such a machine: the kernel itself, called directly.
    with pytest.raises(NotImplementedError, match=r"^mmcal::modulate: no kernel for cpu tensors .* has kernels for: cpu"):
        no_kernel("modulate")([x], [torch.rand(2, 4)], [0])


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _meta_gate_params(bad):
    params = []
    for dim in (4, 7):
        params += [_meta(6, dim), _meta(6), _meta(5, 14), _meta(5), _meta(1, 5), _meta(1), _meta(dim, 5), _meta(dim)]
    if bad == "shape":
        params[14] = _meta(4, 5)
    return params


FAKE_BAD = [
    ("summaries", lambda: ([_meta(2, 5, 8)], [_meta(2, 5)], [0], torch.float32), TypeError, r"masks\[0\]: expected a bool tensor"),
    ("summaries", lambda: ([_meta(2, 5, 8, dtype=torch.int32)], [None], [0], torch.float32), TypeError, r"xs\[0\]: unsupported dtype"),
    ("summaries", lambda: ([_meta(2, 5, 8)], [None], [0], torch.int64), TypeError, r"ct: expected float32 or float64"),
    ("summaries", lambda: ([_meta(2, 5, 8)], [None], [5], torch.float32), ValueError, r"layouts\[0\]: expected 0 \(sequence\) or 1"),
    ("modulate", lambda: ([_meta(2, 8)], [_meta(2, 8)], [0]), ValueError, r"xs\[0\]: a 'sequence' input must be \[B, P, D\]"),
    ("modulate", lambda: ([_meta(2, 5, 8)], [_meta(2, 8, dtype=torch.float16)], [0]), TypeError, r"gates\[0\]: expected the compute dtype"),
    ("modulate_", lambda: ([_meta(2, 5, 8)], [_meta(2, 9)], [0]), ValueError, r"gates\[0\]: expected \[2, 8\]"),
    ("input_grads", lambda: ([_meta(2, 5, 8)], [None], [None], [None], [None], [0]), ValueError, r"neither is given"),
    ("gates", lambda: ([_meta(3, 4), _meta(3, 7)], _meta_gate_params("shape"), None), ValueError, r"params\[14\] \(dim_weight of modality 1\)"),
    ("gates", lambda: ([_meta(3, 4), _meta(3, 7)], _meta_gate_params(None), _meta(3, 2)), TypeError, r"present: expected a bool tensor"),
]


@pytest.mark.parametrize("name,make,exc,match", FAKE_BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(FAKE_BAD)])
def test_fake_kernels_refuse_what_the_cpp_ops_refuse(name, make, exc, match):
    """On meta (and while torch.compile traces) the fake kernel runs instead of
    C++: it checks the same arguments, with the same exception types."""
    with pytest.raises(exc, match=match):
        getattr(torch.ops.mmcal, name)(*make())


def test_fake_kernels_take_what_the_cpp_ops_take():
    xs = [_meta(2, 5, 8), _meta(2, 3, 4, 4)]
    masks = [torch.ones(2, 5, dtype=torch.bool, device="meta"), None]
    summaries = torch.ops.mmcal.summaries(xs, masks, [0, 1], torch.float32)
    assert [tuple(s.shape) for s in summaries] == [(2, 8), (2, 3)]
    ys = torch.ops.mmcal.modulate(xs, summaries, [0, 1])
    assert [y.shape for y in ys] == [x.shape for x in xs]
    gates, diagnostics, saved = torch.ops.mmcal.gates([_meta(3, 4), _meta(3, 7)], _meta_gate_params(None), None)
    assert [tuple(g.shape) for g in gates] == [(3, 4), (3, 7)]


def test_capability_in_use_is_reported():
    assert torch.ops.mmcal.cpu_capability() in ("DEFAULT", "AVX2", "AVX512")
    expected = os.environ.get("MMCAL_CPU_CAPABILITY")
    if expected:
        assert torch.ops.mmcal.cpu_capability() == expected.upper()


@pytest.mark.parametrize("value,expect", [("Default", "DEFAULT"), ("DEFAULT", "DEFAULT"), ("sse9", "error")])
def test_capability_setting_in_any_case(value, expect):
    """MMCAL_CPU_CAPABILITY takes the names in any case (cpu_capability() and
    `info` print capitals, which the setting once refused); another value is
    an error naming the variable."""
    code = "import torch, mmcal_kernels; print(torch.ops.mmcal.cpu_capability())"
    env = dict(os.environ, MMCAL_CPU_CAPABILITY=value)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if expect == "error":
        assert result.returncode != 0 and "MMCAL_CPU_CAPABILITY: expected default, avx2 or avx512, got 'sse9'" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split()[-1] == expect


def test_every_capability_table():
    """The whole file again with each narrower table this CPU can run, and
    with every map output streamed (MMCAL_CPU_STREAM=always) by each
    table that has streaming stores (AVX2, AVX-512)."""
    if os.environ.get("MMCAL_CPU_CAPABILITY"):
        pytest.skip("already the re-run")
    in_use = torch.ops.mmcal.cpu_capability()
    narrower = {"AVX512": ["avx2", "default"], "AVX2": ["default"], "DEFAULT": []}[in_use]
    runs = [{"MMCAL_CPU_CAPABILITY": cap} for cap in narrower]
    runs += [{"MMCAL_CPU_CAPABILITY": cap, "MMCAL_CPU_STREAM": "always"}
             for cap in [in_use.lower(), *narrower] if cap != "default"]  # fmt: skip
    for extra in runs:
        env = dict(os.environ, **extra)
        cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "not compile and not slow"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__))
        assert result.returncode == 0, f"{extra}:\n{result.stdout[-4000:]}"


@pytest.mark.slow
def test_int64_indexing_over_2_31_elements():
    """A bf16 sequence of 2^31 + 2048 elements through every pass: offsets past
    int32 must land right. Checked against float64 sums taken in chunks, and on
    sampled rows at the start, middle and end. About 13 GB of memory; run with
    `pytest -m slow`."""
    width = 2048
    rows = (1 << 31) // width + 1
    x = torch.empty(1, rows, width, dtype=torch.bfloat16)
    chunk = 1 << 16
    pattern = torch.randn(chunk * 4 + 7, dtype=torch.bfloat16)
    flat = x.view(-1)
    for start in range(0, flat.numel(), pattern.numel()):
        flat[start : start + pattern.numel()] = pattern[: flat.numel() - start]
    assert x.numel() > 2**31

    def chunked_sum(fn):
        total = torch.zeros(width, dtype=torch.float64)
        for r in range(0, rows, chunk):
            total += fn(x[0, r : r + chunk].double()).sum(0)
        return total

    s = functional.summary_pool(x, "sequence", backend="cpu")[0].double()
    torch.testing.assert_close(s, chunked_sum(lambda t: t) / rows, rtol=1e-4, atol=1e-6)
    (dg,) = torch.ops.mmcal.gate_grads([x], [x], [0], torch.float32)
    torch.testing.assert_close(dg[0].double(), chunked_sum(lambda t: t * t), rtol=1e-4, atol=1e-3)

    gate = torch.rand(1, width) * 4
    y = functional.gate_modulate(x, gate, "sequence", backend="cpu")
    ds = torch.randn(1, width)
    (dx,) = torch.ops.mmcal.input_grads([x], [x], [gate], [None], [ds], [0])
    for r in (0, rows // 2, rows - 1):
        assert torch.equal(y[0, r], (x[0, r].float() * gate[0]).bfloat16())
        # input_grads divides ds by the position count (rows) itself.
        assert torch.equal(dx[0, r], (x[0, r].float() * gate[0] + ds[0] / rows).bfloat16())


@pytest.mark.parametrize("how", ["hvp", "create_graph"])
def test_second_derivative_is_refused_not_zero(how):
    """The reference has a second derivative; the fused node has none and must say so (it once returned 0)."""
    dims = [4, 3]
    module = make_module(dims, seed=96, dtype=torch.float64, backend="cpu")
    features, masks, present = random_case(dims, dtype=torch.float64, seed=97)
    x0 = features[0].requires_grad_()

    def loss(x):
        return sum(y.square().sum() for y in module([x, features[1]], masks, present))

    with pytest.raises(RuntimeError, match=r"the fused calibration node \(\w+ kernels\): a second derivative"):
        if how == "hvp":
            torch.autograd.functional.hvp(loss, x0, torch.ones_like(x0))
        else:
            torch.autograd.grad(loss(x0), x0, create_graph=True)


# Where each reduction's float32 sums may differ from float64 ones over at most 80 terms.
REDUCTION_TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(positions=st.integers(1, 80), channels=st.integers(1, 5), batch=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_channels_first_reductions_match_float64(positions, channels, batch, dtype, seed):
    """The NCHW reductions (summary and gate gradient) at every row length
    around the vector widths (8 to 32 lanes: whole blocks, an odd block left
    to one chain, a last partial block), against float64 sums of the same
    values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, positions, generator=gen).to(dtype)
    dy = torch.randn(batch, channels, positions, generator=gen).to(dtype)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    rtol, atol = REDUCTION_TOLERANCES[ct]
    summary = torch.ops.mmcal.summaries([x], [None], [1], ct)[0]
    grad = torch.ops.mmcal.gate_grads([dy], [x], [1], ct)[0]
    assert summary.dtype == grad.dtype == ct
    torch.testing.assert_close(summary.double(), x.double().mean(2), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), (dy.double() * x.double()).sum(2), rtol=rtol, atol=atol * positions)


# Where a map's output (one product and one sum in ct, rounded once to the
# feature dtype) may differ from the exact value computed in float64.
MAP_TOLERANCES = {
    torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-6),
    torch.float16: (2**-10, 1e-4), torch.bfloat16: (2**-7, 1e-3),
}  # fmt: skip


@settings(max_examples=60, deadline=None, derandomize=True)
@given(positions=st.integers(1, 80), channels=st.integers(1, 6), batch=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_channels_first_maps_match_float64(positions, channels, batch, dtype, seed):
    """The NCHW maps (modulation, and the input gradient with and without its
    dY term) at every row length around the vector widths: every dtype streams
    a run of channels (from one vector's lanes a channel; shorter rows go row
    by row), where a vector crossing from one channel into the next takes each
    channel's gate and ds for its own lanes; a half type's block is two float
    vectors, each with its own channels. Against float64 values of the same
    inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, positions, generator=gen).to(dtype)
    dy = torch.randn(batch, channels, positions, generator=gen).to(dtype)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    gate = (4 * torch.rand(batch, channels, generator=gen)).to(ct)
    ds = torch.randn(batch, channels, generator=gen).to(ct)
    rtol, atol = MAP_TOLERANCES[dtype]
    ops = torch.ops.mmcal

    def check(got, exact):
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=atol)

    g64, ds64 = gate.double()[:, :, None], ds.double()[:, :, None] / positions  # the op divides ds by the count
    check(ops.modulate([x], [gate], [1])[0], x.double() * g64)
    check(ops.input_grads([x], [dy], [gate], [None], [ds], [1])[0], dy.double() * g64 + ds64)
    check(ops.input_grads([x], [dy], [gate], [None], [None], [1])[0], dy.double() * g64)
    check(ops.input_grads([x], [None], [None], [None], [ds], [1])[0], ds64.expand_as(x))


def _sequence_case(gen, batch, positions, channels, dtype):
    """Features, dY and a mask whose rows hold every count: all True, some, none."""
    x = torch.randn(batch, positions, channels, generator=gen).to(dtype)
    dy = torch.randn(batch, positions, channels, generator=gen).to(dtype)
    mask = torch.rand(batch, positions, generator=gen) < 0.6
    mask[0] = True
    if batch > 2:
        mask[2] = False
    return x, dy, mask


@settings(max_examples=60, deadline=None, derandomize=True)
@given(channels=st.integers(1, 150), positions=st.integers(1, 6), batch=st.integers(1, 4), masked=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_channels_last_reductions_match_float64(channels, positions, batch, masked, dtype, seed):
    """The sequence reductions at every row width around the vector widths
    (8 to 32 lanes: whole blocks and a last partial block, read with one
    masked load; a half type's block is two float vectors), masked and not,
    against float64 sums of the same values. Up to 150 channels: rows of up
    to 8 float or double vectors sum in registers (4 on AVX2 and the portable
    table), wider ones in arrays."""
    gen = torch.Generator().manual_seed(seed)
    x, dy, mask = _sequence_case(gen, batch, positions, channels, dtype)
    mask = mask if masked else None
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    rtol, atol = REDUCTION_TOLERANCES[ct]
    summary = torch.ops.mmcal.summaries([x], [mask], [0], ct)[0]
    grad = torch.ops.mmcal.gate_grads([dy], [x], [0], ct)[0]
    keep = torch.ones(batch, positions, dtype=torch.bool) if mask is None else mask
    x64 = torch.where(keep[:, :, None], x.double(), 0.0)
    count = keep.sum(1, keepdim=True).clamp_min(1).double()
    torch.testing.assert_close(summary.double(), x64.sum(1) / count, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), (dy.double() * x.double()).sum(1), rtol=rtol, atol=atol * positions)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(channels=st.integers(1, 150), positions=st.integers(1, 6), batch=st.integers(1, 4), masked=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_channels_last_maps_match_float64(channels, positions, batch, masked, dtype, seed):
    """The sequence maps at every row width around the vector widths, with
    each set of terms the kernels are compiled for (dY and ds, dY alone, ds
    alone; the modulation), masked rows taking no ds term, against float64
    values of the same inputs. Every row's last partial block is one masked
    load and store (of 16-bit elements for the half types): lanes past the
    row must not be written (the next row's first elements) nor read into
    the result."""
    gen = torch.Generator().manual_seed(seed)
    x, dy, mask = _sequence_case(gen, batch, positions, channels, dtype)
    mask = mask if masked else None
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    gate = (4 * torch.rand(batch, channels, generator=gen)).to(ct)
    ds = torch.randn(batch, channels, generator=gen).to(ct)
    rtol, atol = MAP_TOLERANCES[dtype]
    ops = torch.ops.mmcal
    keep = torch.ones(batch, positions, dtype=torch.bool) if mask is None else mask
    count = keep.sum(1).clamp_min(1).double()[:, None, None]
    g64 = gate.double()[:, None, :]
    ds64 = torch.where(keep[:, :, None], ds.double()[:, None, :] / count, 0.0).expand(x.shape)

    def check(got, exact):
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=atol)

    check(ops.modulate([x], [gate], [0])[0], x.double() * g64)
    check(ops.input_grads([x], [dy], [gate], [mask], [ds], [0])[0], dy.double() * g64 + ds64)
    check(ops.input_grads([x], [dy], [gate], [mask], [None], [0])[0], dy.double() * g64)
    check(ops.input_grads([x], [None], [None], [mask], [ds], [0])[0], ds64)


def _masks_across_parts(batch, positions, gen):
    """One row per pattern: random; a full first part of 256 valid positions
    and only padding after it; padding up to the last position; valid runs
    that stop and start around each part boundary."""
    mask = torch.rand(batch, positions, generator=gen) < 0.5
    mask[1] = False
    mask[1, : min(256, positions)] = True
    mask[2] = False
    mask[2, -1] = True
    p = torch.arange(positions)
    mask[3] = (p % 256 < 250) | (p % 256 > 253)
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels,how", [(16, "rows"), (74, "rows"), (136, "rows"), (5, "transposed")])
@pytest.mark.parametrize("positions", [255, 256, 257, 513, 769])
def test_masked_reductions_across_part_boundaries(positions, channels, how, dtype):
    """Masked rows longer than one part of 256 sums: the positions counted in
    a part are the valid ones, a part that ends in padding is flushed all
    the same, and the last part (full or not) reaches the result. Rows of 16
    and 74 channels sum in registers (74 bfloat16: three blocks on AVX-512),
    136 float32 channels in arrays, a transposed sequence takes the any-stride
    path. Against float64 sums of the same values."""
    gen = torch.Generator().manual_seed(positions * 1000 + channels)
    batch = 4
    if how == "rows":
        x, dy = (torch.randn(batch, positions, channels, generator=gen).to(dtype) for _ in range(2))
    else:
        x, dy = (torch.randn(batch, channels, positions, generator=gen).to(dtype).transpose(1, 2) for _ in range(2))
    mask = _masks_across_parts(batch, positions, gen)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    rtol, atol = REDUCTION_TOLERANCES[ct]
    summary = torch.ops.mmcal.summaries([x], [mask], [0], ct)[0]
    grad = torch.ops.mmcal.gate_grads([dy], [x], [0], ct)[0]
    x64 = torch.where(mask[:, :, None], x.double(), 0.0)
    count = mask.sum(1, keepdim=True).clamp_min(1).double()
    torch.testing.assert_close(summary.double(), x64.sum(1) / count, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), (dy.double() * x.double()).sum(1), rtol=rtol, atol=atol * positions)


@pytest.mark.parametrize("layout", ["sequence", "wide-sequence", "spatial", "transposed-sequence", "strided-spatial"])
def test_reductions_keep_precision_over_long_sums(layout):
    """Every reduction path sums in blocks (three levels of 256): the mean of
    2^20 equal float32 terms, and the gate gradient's sum of their squares,
    stay within 1e-5 of the exact values. Measured: 3.7e-6 at most on every
    path and table; a plain running sum is off by percents, two levels on the
    channels-last path by 3.9e-5 (summary) and 2.1e-5 (gradient), two levels
    without vector lanes (the any-stride path) by 3.9e-5. Channels-last rows
    of up to 8 vectors (4 on AVX2 and the portable table) keep their sums in
    registers, wider ones in arrays: 16 and 136 channels take one each."""
    positions = 1 << 20
    if layout == "sequence":  # channels-last rows, sums in registers
        x, lay = torch.full((1, positions, 16), 0.1), "sequence"
    elif layout == "wide-sequence":  # channels-last rows past 8 vectors: sums in arrays (570 MB)
        x, lay = torch.full((1, positions, 136), 0.1), "sequence"
    elif layout == "spatial":  # NCHW: each channel's positions contiguous
        x, lay = torch.full((1, 16, positions), 0.1), "spatial"
    elif layout == "transposed-sequence":  # [B, P, D] with D the slow axis: not channels-last
        x, lay = torch.full((1, 2, positions), 0.1).transpose(1, 2), "sequence"
    else:  # every other position of an NCHW map: neither contiguous axis
        x, lay = torch.full((1, 2, 2 * positions), 0.1)[:, :, ::2], "spatial"
    term = torch.tensor(0.1, dtype=torch.float32).double()
    s = functional.summary_pool(x, lay, backend="cpu").double()
    (dg,) = torch.ops.mmcal.gate_grads([x], [x], [0 if lay == "sequence" else 1], torch.float32)
    for name, got, exact in (("mean", s, term), ("gate gradient", dg[0].double(), term * term * positions)):
        rel = ((got - exact).abs() / exact).max().item()
        assert rel < 1e-5, f"{layout}: relative error {rel:.3g} of a {name} over 2^20 positions"


ON_CPU_ONLY = [b for b in BAD if "on meta" not in b[3]]


@pytest.mark.parametrize("name,make,exc,match", ON_CPU_ONLY, ids=[f"{b[0]}-{i}" for i, b in enumerate(ON_CPU_ONLY)])
def test_every_bad_input_is_refused_by_the_fake_kernel_too(name, make, exc, match):
    """Every case the C++ op refuses, again with all its tensors on meta (the
    fake kernel, as under torch.compile): the same exception type, naming the
    same argument (the two messages are worded apart)."""
    op = getattr(torch.ops.mmcal, name)
    with pytest.raises(exc, match=match) as on_cpu:
        op(*make())
    named = re.match(r"[\w\[\]]+(, [\w\[\]]+)?(?=:)", str(on_cpu.value))
    with pytest.raises(exc) as faked:
        op(*on_meta(make()))
    if named is not None and named.group(0) != name:  # one C++ message names the op, not an argument
        assert named.group(0).split(",")[0] in str(faked.value), (str(on_cpu.value), str(faked.value))
