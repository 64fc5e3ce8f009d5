"""CalibratedFusion: calibration in front of an unchanged fusion module."""

import pytest
import torch
from torch import nn

from conftest import make_module
from mmcal_kernels import CalibratedFusion, PreFusionCalibration
from mmcal_kernels.compare import random_case


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.scale * sum(a.sum() for a in args[:2])


def test_features_are_calibrated_and_the_rest_passes_untouched():
    dims = [4, 3]
    calibration = make_module(dims, seed=61, dtype=torch.float32)
    fusion = Recorder()
    wrapped = CalibratedFusion(fusion, calibration)
    features, masks, present = random_case(dims, seed=62)
    extra = torch.randn(5)
    wrapped(*features, extra, "label", masks=masks, present=present, temperature=2.0)
    args, kwargs = fusion.calls[-1]
    want = calibration(features, masks, present)
    assert torch.equal(args[0], want[0]) and torch.equal(args[1], want[1])
    assert args[2] is extra and args[3] == "label" and kwargs == {"temperature": 2.0}


def test_forward_masks_passes_masks_and_present_on():
    dims = [4, 3]
    fusion = Recorder()
    wrapped = CalibratedFusion(fusion, PreFusionCalibration(dims, shared_dim=4), forward_masks=True)
    features, masks, present = random_case(dims, seed=63)
    wrapped(*features, masks=masks, present=present)
    _, kwargs = fusion.calls[-1]
    assert kwargs["masks"] is masks and kwargs["present"] is present


def test_identity_at_init_leaves_the_fusion_output_unchanged_and_trains():
    dims = [4, 3]
    fusion = Recorder()
    wrapped = CalibratedFusion(fusion, PreFusionCalibration(dims, shared_dim=4))
    features, masks, present = random_case(dims, seed=64)
    assert torch.equal(wrapped(*features, masks=masks), fusion(*features))
    wrapped(*features, masks=masks).backward()
    assert wrapped.calibration.gate_dim[0].weight.grad.abs().sum() > 0
    assert set(dict(wrapped.named_parameters())) >= {"fusion.scale", "calibration.proj.0.weight"}


def test_too_few_positional_arguments():
    wrapped = CalibratedFusion(Recorder(), PreFusionCalibration([4, 3, 2], shared_dim=4))
    with pytest.raises(ValueError, match=r"^args: the first 3 positional arguments must be the modality features, got 2"):
        wrapped(torch.randn(2, 5, 4), torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match=r"^calibration: expected a PreFusionCalibration"):
        CalibratedFusion(Recorder(), nn.Identity())
