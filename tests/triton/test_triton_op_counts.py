"""The ``"triton"`` backend's step, counted (issue 12): at most 3 ops and 3
Triton launches in the forward, at most 4 of each in the backward, for every
M up to the slot count. Ops are counted as the benchmark counts them (each
custom op is 1; views, allocations and dtype queries left out); launches by
the one launcher every Triton op goes through (``configs.launch``)."""

import pytest
from triton_env import DEVICE, configs
from mmcal_kernels.backends.triton.slots import MAX_SLOTS
from test_op_counts import BACKWARD_MAX, CASES, FORWARD_MAX, check_counts


@pytest.fixture
def launches(monkeypatch):
    counted = []
    real = configs.launch

    def counting(tuner, *args, **kwargs):
        counted.append(getattr(tuner.fn, "__name__", str(tuner.fn)))
        return real(tuner, *args, **kwargs)

    monkeypatch.setattr(configs, "launch", counting)
    return counted


@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_step_dispatches_three_ops_and_launches_each_way(case, launches, monkeypatch):
    dims, layouts, positions = CASES[case]
    assert len(dims) <= MAX_SLOTS
    # check_counts counts the forward and the backward of its last step; the
    # launches of that step are the last ones recorded.
    fwd_ops, bwd_ops = check_counts("triton", dims, layouts, positions, device=DEVICE)
    assert set(fwd_ops) == {"mmcal::triton_summaries", "mmcal::triton_gates", "mmcal::triton_modulate"}
    assert set(bwd_ops) == {"mmcal::triton_gate_grads", "mmcal::triton_gates_backward", "mmcal::triton_input_grads"}
    step = launches[-(FORWARD_MAX + BACKWARD_MAX) :]
    forward, backward = step[:FORWARD_MAX], step[FORWARD_MAX:]
    assert forward == ["_reduce_kernel", "_gates_kernel", "_map_kernel"], forward
    assert backward == ["_reduce_kernel", "_gates_backward_kernel", "_reduce_partials_kernel", "_map_kernel"], backward
