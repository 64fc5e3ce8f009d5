"""The C++ CPU backend's whole step on random calls (tests/random_steps.py says
what a case draws), forward and backward and in place, against the float64
reference."""

import pytest
from hypothesis import HealthCheck, given, settings

from mmcal_kernels import backends
from mmcal_kernels.backends.cpp.load import STATUS
from random_steps import check_random_in_place, check_random_step, step_cases

pytestmark = pytest.mark.skipif(backends.resolve("auto", "cpu").name != "cpu", reason=f"no C++ extension: {STATUS['why_not']}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases())
def test_random_steps_match_the_float64_reference(case):
    check_random_step(case, "cpu")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases())
def test_random_in_place_calls_match_the_float64_reference(case):
    check_random_in_place(case, "cpu")
