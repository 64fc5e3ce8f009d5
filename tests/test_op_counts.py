"""What one step of the module dispatches with a kernel backend (issue 12):
at most 3 compute ops in the forward (summaries, gates, modulate) and at most
4 in the backward (gate_grads, gates_backward, input_grads), for any number of
modalities up to a backend's slot count. On a GPU each op is a launch, and at
real sizes launches, not bytes, set the time. Counted as the benchmark counts
(``bench.counting``: views, allocations and dtype queries left out)."""

import pytest
import torch

from mmcal_kernels import backends
from mmcal_kernels.bench.counting import OpCounter
from conftest import make_module, random_grads

FORWARD_MAX, BACKWARD_MAX = 3, 4
CASES = {  # dims, layouts, positions
    "two-sequence": ([12, 7], ["sequence"] * 2, [9, 11]),
    "three-mixed": ([12, 7, 5], ["sequence", "sequence", "spatial"], [9, 11, (2, 3)]),
    "four-spatial": ([6, 5, 4, 3], ["spatial"] * 4, [(3,), (2, 2), (), (5,)]),
}


def count_step(module, features, masks, present):
    """(forward ops, backward ops, the backward's op names): after warm-up
    calls, so that the once-per-process mask look of the checks is spent."""
    for _ in range(10):
        module(features, masks=masks, present=present)
    forward = OpCounter()
    with forward:
        outputs = module(features, masks=masks, present=present)
    backward = OpCounter()
    grads = random_grads(outputs)
    with backward:
        torch.autograd.backward(outputs, grads)
    return sum(forward.ops.values()), sum(backward.ops.values()), dict(forward.ops), dict(backward.ops)


def inputs(dims, layouts, positions, batch=3, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    features, masks = [], []
    for d, lay, p in zip(dims, layouts, positions):
        shape = (batch, p, d) if lay == "sequence" else (batch, d, *p)
        features.append(torch.randn(shape, generator=gen).to(device).requires_grad_())
        masks.append((torch.rand(batch, p, generator=gen) > 0.3).to(device) if lay == "sequence" else None)
    present = torch.ones(batch, len(dims), dtype=torch.bool, device=device)
    present[0, -1] = False
    return features, masks, present


def check_counts(backend, dims, layouts, positions, device="cpu"):
    module = make_module(dims, layouts, dtype=torch.float32, backend=backend).to(device)
    features, masks, present = inputs(dims, layouts, positions, device=device)
    fwd, bwd, fwd_ops, bwd_ops = count_step(module, features, masks, present)
    assert fwd <= FORWARD_MAX, f"{backend}: {fwd} ops in the forward: {fwd_ops}"
    assert bwd <= BACKWARD_MAX, f"{backend}: {bwd} ops in the backward: {bwd_ops}"
    return fwd_ops, bwd_ops


@pytest.mark.skipif(not backends.get("cpu").usable, reason="the C++ extension is not built")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_backend_dispatches_three_ops_each_way(case):
    fwd_ops, bwd_ops = check_counts("cpu", *CASES[case])
    assert set(fwd_ops) == {"mmcal::summaries", "mmcal::gates", "mmcal::modulate"}
    assert set(bwd_ops) == {"mmcal::gate_grads", "mmcal::gates_backward", "mmcal::input_grads"}


def test_the_reference_dispatches_many():
    """The counter sees torch ops: the reference's step is far above the budget."""
    dims, layouts, positions = CASES["three-mixed"]
    with pytest.raises(AssertionError, match="ops in the forward"):
        check_counts("reference", dims, layouts, positions)


@pytest.mark.skipif(not backends.get("cpu").usable, reason="the C++ extension is not built")
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "calibrate_"])
def test_cpu_inference_dispatches_the_same_three_ops(mode):
    """An inference forward skips the autograd node, not an op, and the
    in-place call runs the same three ops (its modulation in place): the
    values of a forward that records a graph."""
    dims, layouts, positions = CASES["three-mixed"]
    module = make_module(dims, layouts, dtype=torch.float32, backend="cpu")
    features, masks, present = inputs(dims, layouts, positions)
    want = module(features, masks=masks, present=present)
    counter = OpCounter()
    if mode == "calibrate_":
        targets = [x.detach().clone() for x in features]
        with torch.no_grad(), counter:
            got = module.calibrate_(targets, masks, present)
        expected = {"mmcal::summaries": 1, "mmcal::gates": 1, "mmcal::modulate_": 1}
    else:
        with (torch.no_grad() if mode == "no_grad" else torch.inference_mode()), counter:
            got = module(features, masks=masks, present=present)
        expected = {"mmcal::summaries": 1, "mmcal::gates": 1, "mmcal::modulate": 1}
    assert dict(counter.ops) == expected, dict(counter.ops)
    for i, (a, e) in enumerate(zip(got, want)):
        assert a.grad_fn is None and torch.equal(a, e.detach()), f"output[{i}]"
