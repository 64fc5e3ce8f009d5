"""Shared fixtures. Every equivalence test randomises ALL parameters first:
at their zero initialisation every gradient through steps 1-5 is zero, and a
test there cannot fail."""

import os

import pytest
import torch
from torch.utils._pytree import tree_leaves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The suite tests this checkout, and so must its child processes (the
# examples, the benchmark CLI, the re-runs under each CPU kernel table):
# a child started from another directory, or as a script, would import
# whatever mmcal_kernels is installed, and pass or fail on another tree.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != ROOT]]
)

from mmcal_kernels import PreFusionCalibration  # noqa: E402
from mmcal_kernels.compare import assert_runs_close, forward_backward, randomize_, reference_copy  # noqa: E402

# On a lent GPU a stage's time limit can kill pytest before it prints its
# summary or writes its junit XML (a test failed there once with no trace
# left). With MMCAL_FAILURE_LOG set (benchmarks/gpu/check.sh sets it), each
# failure is appended to that file as it happens.
_FAILURE_LOG = os.environ.get("MMCAL_FAILURE_LOG")


def pytest_runtest_logreport(report):
    if _FAILURE_LOG and report.failed:
        with open(_FAILURE_LOG, "a") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


def make_module(dims, layouts="sequence", *, shared_dim=4, hidden_dim=5, seed=0, dtype=torch.float64, backend="reference"):
    """A module with every parameter random, in ``dtype``."""
    module = PreFusionCalibration(dims, shared_dim=shared_dim, hidden_dim=hidden_dim, layouts=layouts, backend=backend)
    return randomize_(module, seed=seed).to(dtype)


def on_meta(arg):
    """The same op arguments with every tensor on meta (lists and tuples kept):
    the call that runs an op's fake kernel instead of its C++ one."""
    if isinstance(arg, torch.Tensor):
        return arg.detach().to("meta")
    if isinstance(arg, (list, tuple)):
        return type(arg)(on_meta(a) for a in arg)
    return arg


def tensors_in(args) -> list:
    """Every tensor in op arguments or results (lists, tuples, dicts), in order."""
    return [t for t in tree_leaves(args) if isinstance(t, torch.Tensor)]


def with_odd_bytes(flags, seed=0):
    """The same bool tensor with each True stored as a random nonzero byte
    (1-255), as a uint8 tensor viewed as bool holds: torch takes any nonzero
    byte as True, and so must every kernel."""
    if flags is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(1, 256, flags.shape, generator=gen, dtype=torch.uint8)
    return (flags.to(torch.uint8) * values.to(flags.device)).view(torch.bool)  # drawn on the CPU, any device's flags


def random_grads(outputs, seed=123):
    gen = torch.Generator().manual_seed(seed)
    # Drawn on the CPU (the same values on every device), then put where the outputs are.
    return [torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=y.device, dtype=y.dtype) for y in outputs]


def run_float64_oracle(module, features, masks, present, grad_outputs):
    """``forward_backward`` of a float64 reference copy of ``module`` on float64 copies of the inputs."""
    oracle = reference_copy(module, torch.float64)
    return forward_backward(oracle, [x.double() for x in features], masks, present, [g.double() for g in grad_outputs])


def check_against_oracle(module, features, masks=None, present=None):
    """Forward and backward of ``module`` against its float64 reference copy, at the features' dtype tolerances."""
    grads = random_grads(features)
    got = forward_backward(module, features, masks, present, grads)
    want = run_float64_oracle(module, features, masks, present, grads)
    assert_runs_close(got, want, features[0].dtype, [n for n, _ in module.named_parameters()])
    return got


def assert_compiled_matches_eager(module, features, masks, present):
    """torch.compile(fullgraph=True) of ``module``: outputs and every gradient equal to eager."""
    compiled = torch.compile(module, fullgraph=True)
    grads = random_grads(features)
    got = forward_backward(compiled, features, masks, present, grads)
    want = forward_backward(module, features, masks, present, grads)
    for a, b in zip(got[0] + got[2], want[0] + want[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return got, want


# Kernel backends are checked on these, against the float64 reference.
KERNEL_DTYPES = {  # feature dtype, parameter dtype
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float32),
    "bfloat16-mixed": (torch.bfloat16, torch.float32),
    "float64": (torch.float64, torch.float64),
}
# Sizes that are multiples of no vector width (8 floats, 16 halves), and some that are.
KERNEL_CASES = {  # dims, layouts, positions
    "sequence-masked": ([13, 33, 5], ["sequence"] * 3, [7, 19, 1]),
    "spatial-trailing-0-1-2-3": ([3, 17, 9, 6], ["spatial"] * 4, [(), (11,), (3, 5), (2, 3, 3)]),
    "mixed-wide": ([64, 24], ["sequence", "spatial"], [40, (4, 8)]),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def kernel_setting():
    """``set(name, value, ops=None)``: change an environment switch the kernels
    read (MMCAL_CPU_STREAM, MMCAL_CUDA_GATE_WARPS; None unsets it) and hand it
    to them, since they read the environment only when they load
    (csrc/common/settings.h); ``ops`` also another build's namespace (the CUDA
    emulator). Restored, and handed over again, after the test."""
    import os

    from mmcal_kernels.backends.cpp import load as cpp_load

    saved, targets = {}, [None]

    def apply():
        for ops in targets:
            cpp_load.apply_settings(ops)

    def set_(name, value, ops=None):
        assert name in cpp_load.KERNEL_SETTINGS, name
        saved.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        if ops is not None and ops not in targets:
            targets.append(ops)
        apply()

    yield set_
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    apply()

