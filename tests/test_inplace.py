"""ops.calibrate_ / PreFusionCalibration.calibrate_: inference in place."""

import pytest
import torch

from conftest import make_module
from mmcal_kernels import backends, ops
from mmcal_kernels.testing import random_case

CPU_BACKENDS = [b.name for b in backends.available() if b.usable and "cpu" in b.device_types]
DIMS, LAYOUTS, POSITIONS = [13, 6, 5], ["sequence", "spatial", "spatial"], [9, (3, 4), ()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_place_equals_out_of_place(backend, dtype):
    module = make_module(DIMS, LAYOUTS, seed=111, dtype=torch.float64 if dtype == torch.float64 else torch.float32, backend=backend)
    features, masks, present = random_case(DIMS, LAYOUTS, batch=4, positions=POSITIONS, dtype=dtype, seed=112)
    features[1] = features[1].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, want_diag = module(features, masks, present, return_diagnostics=True)
    targets = [x.clone() for x in features]
    pointers = [x.data_ptr() for x in targets]
    strides = [x.stride() for x in targets]
    with torch.inference_mode():
        got, diag = module.calibrate_(targets, masks, present, return_diagnostics=True)
    assert all(a is b for a, b in zip(got, targets))
    assert [x.data_ptr() for x in targets] == pointers and [x.stride() for x in targets] == strides
    for a, b in zip(targets, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(diag["agreement"], want_diag["agreement"], rtol=0, atol=0)


def test_in_place_refuses_to_run_under_autograd():
    module = make_module(DIMS, LAYOUTS, seed=113, dtype=torch.float32)
    features, masks, present = random_case(DIMS, LAYOUTS, positions=POSITIONS, seed=114)
    with pytest.raises(RuntimeError, match="calibrate_: writes the features in place"):
        ops.calibrate_(features, module.gate_params(), layouts=LAYOUTS, masks=masks, present=present)
