"""The CUDA backend against the reference on a GPU (skipped without one):
dtypes, layouts, masks, presence, channels_last, strides, opcheck, and
torch.compile. Run by benchmarks/gpu/check.sh on a lent GPU machine."""

import pytest
import torch

from conftest import assert_compiled_matches_eager, KERNEL_CASES, KERNEL_DTYPES, make_module, random_grads, run_float64_oracle, with_odd_bytes
from mmcal_kernels import backends
from mmcal_kernels.compare import assert_runs_close, forward_backward, random_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
DTYPES, CASES = KERNEL_DTYPES, KERNEL_CASES


def _check(module, features, masks, present):
    grads = random_grads(features)
    got = forward_backward(module, features, masks, present, grads)
    cpu = [x.cpu() for x in features]
    want = run_float64_oracle(module.cpu(), cpu, [m if m is None else m.cpu() for m in masks], present.cpu(), [g.cpu() for g in grads])
    module.cuda()
    assert_runs_close(got, want, features[0].dtype, [n for n, _ in module.named_parameters()])
    return got


def test_cuda_backend_is_usable():
    b = backends.available()
    assert any(x.name == "cuda" and x.usable for x in b), [(x.name, x.why_not) for x in b]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(case, dtype):
    dims, layouts, positions = CASES[case]
    feature_dtype, param_dtype = DTYPES[dtype]
    module = make_module(dims, layouts, seed=101, dtype=param_dtype, backend="cuda").cuda()
    features, masks, present = random_case(dims, layouts, batch=5, positions=positions, dtype=feature_dtype, device="cuda", seed=102)
    present[0] = False
    _check(module, features, masks, present)


def test_channels_last_and_strided():
    dims = [19, 8]
    module = make_module(dims, "spatial", seed=103, dtype=torch.float32, backend="cuda").cuda()
    features, _, present = random_case(dims, "spatial", positions=[(5, 3), (5, 3)], device="cuda", seed=104)
    cl = [x.contiguous(memory_format=torch.channels_last) for x in features]
    outputs, _, _ = _check(module, cl, [None, None], present)
    assert all(y.stride() == x.stride() for x, y in zip(cl, outputs))
    strided = [x[:, :, ::2] for x in features]
    _check(module, strided, [None, None], present)


def test_masked_sequence_with_contiguous_positions():
    """A transposed sequence takes the warp-per-channel kernels, whose masking
    and count no other GPU case reaches (the mutant sweep found it so in the
    emulation)."""
    dims = [9, 4]
    module = make_module(dims, "sequence", seed=105, dtype=torch.float32, backend="cuda").cuda()
    gen = torch.Generator().manual_seed(106)
    features = [torch.randn(3, d, 17, generator=gen).transpose(1, 2).cuda() for d in dims]  # positions contiguous
    masks = [(torch.rand(3, 17, generator=gen) > 0.4).cuda() for _ in dims]
    present = torch.tensor([[True, True], [True, False], [True, True]]).cuda()
    _check(module, features, masks, present)


def test_masks_and_present_with_any_nonzero_byte_as_true():
    """True stored as any nonzero byte (a uint8 tensor viewed as bool) is True
    in the CUDA kernels' mask and presence reads, as in torch."""
    dims, layouts, positions = CASES["sequence-masked"]
    module = make_module(dims, layouts, seed=109, dtype=torch.float32, backend="cuda").cuda()
    features, masks, present = random_case(dims, layouts, batch=5, positions=positions, device="cuda", seed=110)
    masks = [with_odd_bytes(m, seed=i) for i, m in enumerate(masks)]
    _check(module, features, masks, with_odd_bytes(present, seed=9))


def test_pass_ops_refuse_two_compute_dtypes_in_one_call():
    """The CUDA passes launch once in one compute dtype: a float64 gate beside
    a float32 one is refused, not read as float32."""
    xs = [torch.randn(2, 3, 8, device="cuda"), torch.randn(2, 4, 6, device="cuda")]
    gates = [torch.rand(2, 8, device="cuda"), torch.rand(2, 6, device="cuda", dtype=torch.float64)]
    with pytest.raises(TypeError, match=r"gates\[1\]: expected dtype Float \(the compute dtype, one for the call\)"):
        torch.ops.mmcal.modulate(xs, gates, [0, 0])


def test_inference_paths_give_the_training_forward_values():
    """A forward under no_grad skips the autograd node and calibrate_ runs
    the same three ops in place: the values of a forward that records a graph."""
    dims, layouts, positions = CASES["sequence-masked"]
    module = make_module(dims, layouts, seed=107, dtype=torch.float32, backend="cuda").cuda()
    features, masks, present = random_case(dims, layouts, batch=5, positions=positions, device="cuda", seed=108)
    want = module([x.requires_grad_() for x in features], masks=masks, present=present)
    with torch.no_grad():
        inference = module(features, masks=masks, present=present)
        in_place = module.calibrate_([x.detach().clone() for x in features], masks, present)
    for i, (a, b, e) in enumerate(zip(inference, in_place, want)):
        assert a.grad_fn is None and torch.equal(a, e.detach()), f"no_grad output[{i}]"
        assert torch.equal(b, e.detach()), f"calibrate_ output[{i}]"


@pytest.mark.parametrize("name", ["summaries", "modulate", "gate_grads", "input_grads"])
def test_opcheck_on_cuda(name):
    x = torch.randn(2, 5, 3, device="cuda")
    xs = [x, torch.randn(2, 4, 2, 3, device="cuda")]
    masks = [torch.rand(2, 5, device="cuda") > 0.3, None]
    gates = [torch.rand(2, 3, device="cuda"), torch.rand(2, 4, device="cuda")]
    dys = [torch.randn_like(t) for t in xs]
    args = {
        "summaries": (xs, masks, [0, 1], torch.float32),
        "modulate": (xs, gates, [0, 1]),
        "gate_grads": (dys, xs, [0, 1], torch.float32),
        "input_grads": (xs, dys, gates, masks, [torch.randn(2, 3, device="cuda"), torch.randn(2, 4, device="cuda")], [0, 1]),
    }[name]
    torch.library.opcheck(getattr(torch.ops.mmcal, name).default, args)


def test_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    dims, layouts = [64, 24], ["sequence", "spatial"]
    module = make_module(dims, layouts, seed=105, dtype=torch.float32, backend="cuda").cuda()
    features, masks, present = random_case(dims, layouts, batch=4, positions=[33, (4, 8)], device="cuda", seed=106)
    assert torch._dynamo.explain(module)(features, masks, present).graph_break_count == 0
    assert_compiled_matches_eager(module, features, masks, present)


@pytest.mark.parametrize("layout", ["channels-last-tiles", "warp-per-channel"])
def test_long_sums_keep_precision_on_the_gpu(layout):
    """The blocked sums of reductions.cu on the hardware: the same bound as under
    the CPU build of the kernels (test_cuda_emulated.py)."""
    from test_cuda_emulated import long_sum_errors

    errors = long_sum_errors(torch.ops.mmcal, layout, device="cuda")
    assert max(errors) < 1e-5, f"relative errors (mean, sum of squares): {errors}"
