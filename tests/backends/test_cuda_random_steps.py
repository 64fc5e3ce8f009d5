"""The CUDA backend's whole step on random calls (tests/random_steps.py says
what a case draws), forward and backward and in place, against the float64
reference, on a GPU (skipped without one; benchmarks/gpu/check.sh runs it).
No float64 features: the CUDA kernels take float32, float16 and bfloat16."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from random_steps import DTYPE_PAIRS, check_random_in_place, check_random_step, step_cases

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases(dtype_pairs=[k for k, (x, _) in DTYPE_PAIRS.items() if x != torch.float64]))
def test_random_steps_match_the_float64_reference(case):
    check_random_step(case, "cuda", "cuda")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases(dtype_pairs=[k for k, (x, _) in DTYPE_PAIRS.items() if x != torch.float64]))
def test_random_in_place_calls_match_the_float64_reference(case):
    check_random_in_place(case, "cuda", "cuda")
