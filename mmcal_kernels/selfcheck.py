"""A small forward+backward check of one backend against the float64 reference,
and of its inference paths (a forward under no_grad, calibrate_).

Used by ``python -m mmcal_kernels.info`` on every usable backend. The case mixes
both layouts, a validity mask, a missing modality and randomised parameters,
so every gradient path is live.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .module import PreFusionCalibration
from .compare import assert_close, assert_runs_close, forward_backward, randomize_, random_case, reference_copy

DIMS = (6, 5, 3)
LAYOUTS = ("sequence", "spatial", "spatial")
POSITIONS = (7, (3, 2), ())


@dataclass
class CheckResult:
    backend: str
    device: str
    dtype: torch.dtype
    ok: bool
    message: str


def check_backend(backend: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> CheckResult:
    """Compare ``backend`` in ``dtype`` with the reference in float64: outputs,
    diagnostics, and the gradients of features and parameters."""
    try:
        module = randomize_(PreFusionCalibration(DIMS, shared_dim=4, hidden_dim=5, layouts=LAYOUTS, backend=backend))
        oracle = reference_copy(module, torch.float64)
        # float64 features get float64 parameters; the others keep float32
        # parameters, as in mixed precision.
        module = module.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        features, masks, present = random_case(
            DIMS, LAYOUTS, batch=4, positions=POSITIONS, dtype=dtype, device=device, seed=1
        )
        present[0] = torch.tensor([True, False, True])
        gen = torch.Generator().manual_seed(2)
        grad_outputs = [torch.randn(x.shape, generator=gen).to(device=device, dtype=dtype) for x in features]

        got = forward_backward(module, features, masks, present, grad_outputs)
        want = forward_backward(
            oracle, [x.double().cpu() for x in features], [m if m is None else m.cpu() for m in masks],
            present.cpu(), [g.double().cpu() for g in grad_outputs],
        )  # fmt: skip
        assert_runs_close(got, want, dtype, [n for n, _ in module.named_parameters()])
        # Inference takes other paths (no autograd node; calibrate_ in place): the same values.
        with torch.no_grad():
            inference = module(features, masks=masks, present=present)
            in_place = module.calibrate_([x.clone() for x in features], masks, present)
        for name, outputs in (("no_grad", inference), ("calibrate_", in_place)):
            for i, (a, e) in enumerate(zip(outputs, want[0], strict=True)):
                assert_close(a, e, dtype, f"{name} output[{i}]")
    except Exception as exc:  # the report says what failed; info exits non-zero
        return CheckResult(backend, device, dtype, False, f"{type(exc).__name__}: {exc}")
    return CheckResult(backend, device, dtype, True, "forward, diagnostics, gradients, no_grad and calibrate_ match "
                       "the float64 reference")  # fmt: skip
