"""Autotune configurations of the Triton kernels, by GPU architecture, and how
they are launched: autotuned on a GPU, one explicit configuration under the
interpreter.

``triton.autotune`` with two or more configurations fails under
``TRITON_INTERPRET=1`` ("0 active drivers"), so there the launcher runs the
bare kernel with one configuration, and the tests run every configuration in
turn through ``forced``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

import torch
import triton
from torch._subclasses.fake_tensor import is_fake

# (architectures, configuration). The reductions stream [BLOCK_P, BLOCK_D]
# tiles down the positions; the maps write one tile a program. Wider channel
# tiles give 16-byte accesses on channels-last rows; sm_90's larger register
# file and L2 take more warps and deeper tiles.
REDUCE_CONFIGS = [
    ((80, 90), triton.Config({"BLOCK_P": 32, "BLOCK_D": 64}, num_warps=4)),
    ((80, 90), triton.Config({"BLOCK_P": 16, "BLOCK_D": 128}, num_warps=4)),
    ((80,), triton.Config({"BLOCK_P": 64, "BLOCK_D": 64}, num_warps=8)),
    ((90,), triton.Config({"BLOCK_P": 32, "BLOCK_D": 128}, num_warps=8)),
]
MAP_CONFIGS = [
    ((80, 90), triton.Config({"BLOCK_P": 16, "BLOCK_D": 64}, num_warps=4)),
    ((80, 90), triton.Config({"BLOCK_P": 8, "BLOCK_D": 128}, num_warps=4)),
    ((80,), triton.Config({"BLOCK_P": 32, "BLOCK_D": 64}, num_warps=8)),
    ((90,), triton.Config({"BLOCK_P": 16, "BLOCK_D": 256}, num_warps=8)),
]
ARCHS = (80, 90)


def for_arch(table, arch: int) -> list:
    """The configurations for compute capability ``arch`` (e.g. 90); newer GPUs take sm_90's."""
    arch = max(a for a in ARCHS if a <= arch) if arch >= ARCHS[0] else ARCHS[0]
    return [cfg for archs, cfg in table if arch in archs]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _prune_for_device(table):
    def prune(configs, named_args, **kwargs):
        if not torch.cuda.is_available():  # tracing with fake tensors on a machine without a GPU
            return configs
        major, minor = torch.cuda.get_device_capability()
        keep = {id(c) for c in for_arch(table, 10 * major + minor)}
        return [c for c in configs if id(c) in keep] or configs

    return prune


def autotuned(kernel, table, key: list[str]):
    """``kernel`` autotuned over every configuration of ``table`` that suits the GPU it runs on."""
    tuner = triton.autotune(
        configs=[cfg for _, cfg in table], key=key, prune_configs_by={"early_config_prune": _prune_for_device(table)}
    )(kernel)
    tuner.mmcal_table = table  # for fixed_config
    return tuner


def fixed_config(tuner) -> triton.Config:
    """The first configuration for the GPU at hand: for launches that must not be
    autotuned, such as an in-place write, which the autotuner's timing runs would
    apply to the same data several times."""
    if interpreting() or not torch.cuda.is_available():
        return tuner.configs[0]
    major, minor = torch.cuda.get_device_capability()
    return for_arch(tuner.mmcal_table, 10 * major + minor)[0]


_FORCED: dict[int, triton.Config] = {}


@contextlib.contextmanager
def forced(tuner, config: triton.Config):
    """Launch ``tuner``'s kernel with ``config`` only (tests, and the interpreter)."""
    _FORCED[id(tuner)] = config
    try:
        yield
    finally:
        _FORCED.pop(id(tuner), None)


def _on_tensors_device(t: Optional[torch.Tensor]):
    """The GPU of ``t`` (a launch's first tensor; the op's checks put all on
    one device) as the current device, where it is not already. Triton
    launches on the current device and its stream, and neither triton_op nor
    wrap_triton sets it in eager mode: a call on cuda:1 while cuda:0 is
    current would run on GPU 0 with GPU 1's pointers (the CUDA backend's
    CUDAGuard does this for its ops). A no-op on one GPU, under fake tensors
    and under the interpreter; compiled code has Inductor's own guard."""
    if t is None or t.device.type != "cuda" or torch.compiler.is_compiling() or is_fake(t):
        return contextlib.nullcontext()
    if t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def launch(tuner, grid: Callable[[dict], tuple], args: list, constexprs: dict, tune: bool = True) -> None:
    """One launch of ``tuner`` (a ``triton.autotune`` object) through ``wrap_triton``;
    ``tune=False`` launches ``fixed_config`` without autotuning. Tensors on
    ``meta`` have shapes and no data: nothing is launched, and the op returns
    its meta outputs, as the C++ ops' fakes do (launched, the interpreter
    failed copying out of them)."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is not None and first.is_meta and not is_fake(first):  # the op's checks put all on one device
        return
    with _on_tensors_device(first):
        _launch(tuner, grid, args, constexprs, tune)


def _launch(tuner, grid: Callable[[dict], tuple], args: list, constexprs: dict, tune: bool) -> None:
    from torch.library import wrap_triton

    config: Optional[triton.Config] = _FORCED.get(id(tuner))
    if config is None and (interpreting() or not tune):
        config = fixed_config(tuner)
    if config is None:
        wrap_triton(tuner)[grid](*args, **constexprs)
        return
    meta = dict(constexprs, **config.kwargs)
    # Under the interpreter ``tuner.fn`` is an InterpretedFunction: torch 2.13's
    # wrap_triton hands it back unchanged, torch 2.11's refuses it ("only works
    # on functions annotated with triton.jit"). Nothing traces an interpreted
    # launch, so it is launched directly on both.
    kernel = tuner.fn if interpreting() else wrap_triton(tuner.fn)
    kernel[grid(meta)](*args, **meta, num_warps=config.num_warps, num_stages=config.num_stages)
