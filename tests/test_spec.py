"""spec.py: the facts every backend reads, checked against docs/spec.md's words."""

import torch

from mmcal_kernels import spec


def test_layout_codes_are_those_the_kernel_ops_take():
    # csrc/common/checks.h states the same codes for C++; the C++ ops refuse others.
    assert spec.LAYOUT_CODES == {"sequence": 0, "spatial": 1}
    assert spec.layout_codes(["spatial", "sequence"]) == [1, 0]
    assert [spec.layout_name(c) for c in (0, 1)] == ["sequence", "spatial"]


def test_compute_dtype_promotes_features_and_parameters():
    half = spec.GateParams(*[torch.zeros(1, dtype=torch.bfloat16)] * 8)
    double = spec.GateParams(*[torch.zeros(1, dtype=torch.float64)] * 8)
    assert spec.compute_dtype(torch.float16) == torch.float32
    assert spec.compute_dtype(torch.bfloat16, [half]) == torch.float32
    assert spec.compute_dtype(torch.float32, [half, double]) == torch.float64


def test_channels_and_positions_per_layout():
    seq, spatial, pooled = torch.empty(2, 7, 5), torch.empty(2, 5, 3, 4), torch.empty(2, 5)
    assert spec.channels(seq, "sequence") == spec.channels(spatial, "spatial") == spec.channels(pooled, "spatial") == 5
    assert (spec.positions(seq, "sequence"), spec.positions(spatial, "spatial"), spec.positions(pooled, "spatial")) == (7, 12, 1)


def test_position_counts_clamp_an_empty_row_to_one():
    x = torch.empty(3, 4, 2)
    mask = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    assert spec.position_counts(x, "sequence", mask, torch.float64).flatten().tolist() == [2.0, 1.0, 4.0]
    assert spec.position_counts(torch.empty(3, 2, 0), "spatial", None, torch.float32).flatten().tolist() == [1.0] * 3
