"""The CUDA gate-network ops (csrc/cuda/gate_network.cu) on a GPU, skipped
without one: the same float64-oracle comparison as the CPU op's tests
(test_cpp_gate_network.py, whose cases and tolerances these reuse), every
parameter random; opcheck; determinism; the torch-ops path past
kMaxModalities; and the launches of one module step, counted by the
profiler: at most 3 forward and 4 backward (issue 12)."""

import pytest
import torch

from conftest import make_module, random_grads
from mmcal_kernels import GateParams
from mmcal_kernels.backends.cpp import ops as cpp_ops
from test_cpp_gate_network import BATCHES, DTYPES, PRESENCE, SHAPES, check_against_oracle, flat_params, make_case
from test_op_counts import BACKWARD_MAX, CASES, FORWARD_MAX, check_counts, inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def on_gpu(summaries, params, present, grad_gates):
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    return ([cuda(s) for s in summaries], [GateParams(*(cuda(t) for t in p)) for p in params], cuda(present),
            [cuda(g) for g in grad_gates])  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("presence", PRESENCE)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_oracle(shape, batch, presence, dtype):
    ct, param_dtype = DTYPES[dtype]
    gates, *_ = check_against_oracle(*on_gpu(*make_case(shape, batch, presence, ct, param_dtype, seed=batch + 7)))
    assert gates[0].is_cuda


@pytest.mark.parametrize("norm", ["zero", "tiny"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("shape", ["mosei-aligned", "two-odd", "five-with-D1"])
def test_projection_at_the_norm_clamp(shape, dtype, norm):
    ct, param_dtype = DTYPES[dtype]
    check_against_oracle(*on_gpu(*make_case(shape, 9, "some-missing", ct, param_dtype, seed=13, norm=norm)))


def test_mosei_sized_batch_of_32():
    check_against_oracle(*on_gpu(*make_case("mosei-aligned", 32, "some-missing", torch.float32, torch.float32, seed=11)))


def test_non_contiguous_arguments():
    summaries, params, present, grad_gates = on_gpu(*make_case("r-per-modality", 6, "some-missing", torch.float32,
                                                               torch.float32, seed=5))  # fmt: skip
    strided = lambda t: t.t().contiguous().t() if t.dim() == 2 else torch.stack([t, t], -1)[..., 0]  # noqa: E731
    params = [GateParams(*(strided(t) for t in p)) for p in params]
    check_against_oracle([strided(s) for s in summaries], params, strided(present), [strided(g) for g in grad_gates])


def test_deterministic():
    summaries, params, present, grad_gates = on_gpu(*make_case("mosei-aligned", 32, "some-missing", torch.float32,
                                                               torch.float32, seed=3))  # fmt: skip
    flat = flat_params(params)
    runs = []
    for _ in range(2):
        gates, diagnostics, saved = torch.ops.mmcal.gates(summaries, flat, present)
        runs.append([*gates, *torch.ops.mmcal.gates_backward(grad_gates, summaries, flat, present, diagnostics, saved)[1]])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    summaries, params, present, grad_gates = on_gpu(*make_case(((3, 5, 2), 4, 6), 3, "some-missing", torch.float32,
                                                               torch.float32, seed=17))  # fmt: skip
    flat = flat_params(params)
    if requires_grad:
        summaries = [s.requires_grad_() for s in summaries]
        flat = [t.requires_grad_() for t in flat]
    torch.library.opcheck(torch.ops.mmcal.gates.default, (summaries, flat, present))
    with torch.no_grad():
        _, diagnostics, saved = torch.ops.mmcal.gates(summaries, flat, present)
    args = ([g for g in grad_gates], [s.detach() for s in summaries], [t.detach() for t in flat], present,
            list(diagnostics), list(saved))  # fmt: skip
    torch.library.opcheck(torch.ops.mmcal.gates_backward.default, args)


def test_device_mismatch_names_the_argument():
    summaries, params, present, _ = on_gpu(*make_case("two-odd", 3, "some-missing", torch.float32, torch.float32))
    flat = flat_params(params)
    flat[3] = flat[3].cpu()
    with pytest.raises(ValueError, match=r"params\[3\]"):
        torch.ops.mmcal.gates(summaries, flat, present)


def test_more_modalities_than_the_kernels_take_use_torch_ops():
    """The cuda backend routes a call past kMaxModalities to the torch formulas."""
    num = cpp_ops.CUDA_MAX_GATE_MODALITIES + 1
    summaries, params, present, grad_gates = on_gpu(*make_case((tuple(range(2, 2 + num)), 4, 5), 3, "some-missing",
                                                               torch.float32, torch.float32, seed=2))  # fmt: skip
    gates, _, saved = cpp_ops.CUDA_OPS.gates(summaries, flat_params(params), present)
    assert len(gates) == num and gates[0].is_cuda


RAW_OP_PAST_THE_LIMIT = """
import torch
from mmcal_kernels import backends
backends.available()
from test_cpp_gate_network import make_case, flat_params
s, p, pr, _ = make_case((tuple(range(2, 11)), 4, 5), 3, "some-missing", torch.float32, torch.float32, seed=2)
try:
    torch.ops.mmcal.gates([t.cuda() for t in s], [t.cuda() for t in flat_params(p)], pr.cuda())
except ValueError as e:
    print("raised:", e)
"""


def test_raw_op_past_the_limit_raises(tmp_path):
    """In a child process: a crash there is this test's failure, not the session's end.
    The child carries a SIGSEGV tracer (native_frames.py), so a crash names its C++ frames.
    On the H200 machine it did crash until run 6: /opt/gcc's g++ linked its own
    libstdc++.a into _C, and formatting this error's numbers crossed the two
    runtimes' locale tables (build_config.shared_cxx_runtime_flags)."""
    import os
    import subprocess
    import sys

    from native_frames import name_frames, preload_env

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    env.update(preload_env(str(tmp_path)))
    child = subprocess.run([sys.executable, "-c", RAW_OP_PAST_THE_LIMIT], capture_output=True, text=True, env=env, timeout=120)
    frames = name_frames(child.stderr) if child.returncode else ""
    assert child.returncode == 0, f"exit {child.returncode}; frames in mmcal:\n{frames}\n{child.stderr[-3000:]}"
    assert "raised:" in child.stdout and "at most" in child.stdout, child.stdout


def _kernels(prof):
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_step_dispatches_three_ops_and_launches_each_way(case):
    """Dispatched ops (as the CPU test counts them) and CUDA kernels (torch.profiler)."""
    check_counts("cuda", *CASES[case], device="cuda")
    dims, layouts, positions = CASES[case]
    module = make_module(dims, layouts, dtype=torch.float32, backend="cuda").cuda()
    features, masks, present = inputs(dims, layouts, positions, device="cuda")
    outputs = module(features, masks=masks, present=present)
    grads = random_grads(outputs)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as fwd:
        outputs = module(features, masks=masks, present=present)
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as bwd:
        torch.autograd.backward(outputs, grads)
        torch.cuda.synchronize()
    forward, backward = _kernels(fwd), _kernels(bwd)
    assert len(forward) <= FORWARD_MAX, forward
    # gates_backward is 2 launches (per sample, then the parameter sums); the
    # backward's other ops are one each.
    assert len(backward) <= BACKWARD_MAX, backward


# Last in the file: a fault in the non-default block size must not poison the
# CUDA context of the tests of the default one (they share this process).
@pytest.mark.parametrize("presence", ["some-missing", "one-present"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("shape", ["mosei-aligned", "r-per-modality", "five-with-D1", "wide-4096"])
def test_both_block_sizes_match_the_oracle_and_each_other(shape, dtype, presence, kernel_setting):
    """MMCAL_CUDA_GATE_WARPS=16 (the default since run 6) and 8, each against
    the float64 oracle, and against each other within a tight tolerance (the
    same sums in the same order: expected equal)."""
    ct, param_dtype = DTYPES[dtype]
    case = on_gpu(*make_case(shape, 9, presence, ct, param_dtype, seed=23))
    flat = flat_params(case[1])
    runs = []
    for warps in ("16", "8"):
        kernel_setting("MMCAL_CUDA_GATE_WARPS", warps)
        check_against_oracle(*case)
        gates, diagnostics, saved = torch.ops.mmcal.gates(case[0], flat, case[2])
        ds, grads = torch.ops.mmcal.gates_backward(case[3], case[0], flat, case[2], diagnostics, saved)
        runs.append([*gates, *diagnostics, *ds, *grads])
    for i, (a, b) in enumerate(zip(*runs)):
        tol = 1e-6 if ct == torch.float32 else 1e-13
        torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=f"output {i}")


def test_bad_warps_setting_names_the_variable(kernel_setting):
    summaries, params, present, _ = on_gpu(*make_case("two-odd", 3, "some-missing", torch.float32, torch.float32))
    kernel_setting("MMCAL_CUDA_GATE_WARPS", "12")
    with pytest.raises(ValueError, match=r"MMCAL_CUDA_GATE_WARPS: expected one of 16, 8"):
        torch.ops.mmcal.gates(summaries, flat_params(params), present)
