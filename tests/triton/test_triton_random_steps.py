"""The Triton backend's whole step on random calls (tests/random_steps.py says
what a case draws), forward and backward and in place, against the float64
reference. Fewer cases than the CPU file's: the interpreter runs each launch
in Python, and on a GPU each new shape compiles its kernels (about a second
each), inside the GPU script's 45 s a test."""

from hypothesis import HealthCheck, given, settings

from triton_env import DEVICE, ON_GPU
from random_steps import check_random_in_place, check_random_step, step_cases


@settings(max_examples=8 if ON_GPU else 25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases(max_positions=6))
def test_random_steps_match_the_float64_reference(case):
    check_random_step(case, "triton", DEVICE)


@settings(max_examples=8 if ON_GPU else 20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases(max_positions=6))
def test_random_in_place_calls_match_the_float64_reference(case):
    check_random_in_place(case, "triton", DEVICE)
