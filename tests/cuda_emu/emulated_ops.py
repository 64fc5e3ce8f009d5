"""Builds the project's CUDA kernels and their host code for the CPU, so that
tests run them with no GPU: `load()` returns ``torch.ops.mmcal_cuda_emu``,
the mmcal CUDA ops (same schemas, same host code, same kernels) on CPU tensors,
plus ``selftest``, the emulator's own test kernels (selftest.cu, selftest_op.cpp).

How: each csrc/cuda/*.cu is compiled as C++ against the stand-in CUDA headers
of include/ (cuda_runtime.h says how the kernels run), after one textual
change, each ``kernel<<<config>>>(args)`` into ``mmcal_emu::launch(kernel,
config, args)``; host_gates.cpp and host_passes.cpp build the host files for
CPU tensors. The kernels' source is the one nvcc compiles: nothing is copied
by hand.
"""

import os
import re
from pathlib import Path

import torch

from mmcal_kernels.backends.cpp.load import STATUS
from mmcal_kernels.build_config import compile_flags

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CUDA_SRC = REPO / "csrc" / "cuda"
KERNEL_FILES = ("gate_network.cu", "reductions.cu", "elementwise.cu")
OPS = ("summaries", "modulate", "modulate_", "gate_grads", "input_grads", "gates", "gates_backward")
NAMESPACE = "mmcal_cuda_emu"

# kernel_name<template args><<<config>>>(  ->  ::mmcal_emu::launch(kernel_name<template args>, config,
_LAUNCH = re.compile(r"(\b\w+(?:<[\w\s,:]*>)?)<<<(.+?)>>>\(")

_state = {}


def rewrite_launches(text, name):
    """``text`` with every ``<<<...>>>`` launch as a call of mmcal_emu::launch; raises if one is left."""
    out, count = _LAUNCH.subn(lambda m: f"::mmcal_emu::launch({m.group(1)}, {m.group(2)}, ", text)
    if "<<<" in out or count == 0:
        raise RuntimeError(f"{name}: a kernel launch emulated_ops.py cannot rewrite ({count} rewritten)")
    return out


def _define_schemas():
    """The emulated ops take mmcal's own schemas, read from the loaded extension."""
    lib = torch.library.Library(NAMESPACE, "DEF")
    for op in OPS:
        schema = str(getattr(torch.ops.mmcal, op).default._schema)
        lib.define(schema.split("::", 1)[1])
    lib.define("selftest(str kernel, int blocks, int threads) -> Tensor")  # selftest.cu
    return lib


EMULATED_MAX_GRID_X = 64


def load(verbose=False):
    """Compile (cached in build/cuda_emu-torch<version>) and load; returns torch.ops.mmcal_cuda_emu."""
    if "ops" in _state:
        return _state["ops"]
    from torch.utils.cpp_extension import load as load_extension

    if not hasattr(torch.ops.mmcal, "gates"):
        raise RuntimeError(f"no mmcal C++ extension to take the schemas from: {STATUS['why_not']}")
    # tests/sanitizers.sh sets MMCAL_CUDA_EMU_SANITIZE=1: the emulated kernels
    # are then built with setup.py's MMCAL_SANITIZE flags (AddressSanitizer,
    # UBSan), so that every element a CUDA kernel reads or writes is checked
    # against the tensor it belongs to: a GPU-less memcheck.
    sanitize = os.environ.get("MMCAL_CUDA_EMU_SANITIZE") == "1"
    cflags, ldflags = compile_flags(False, sanitize=True) if sanitize else (["-O2"], [])
    # One build per torch: the objects hold that torch's ABI.
    build = REPO / "build" / f"cuda_emu-torch{torch.__version__}{'-sanitize' if sanitize else ''}"
    build.mkdir(parents=True, exist_ok=True)
    sources = [str(HERE / "host_gates.cpp"), str(HERE / "host_passes.cpp"), str(HERE / "selftest_op.cpp")]
    for path in [CUDA_SRC / name for name in KERNEL_FILES] + [HERE / "selftest.cu"]:
        name = path.name
        text = rewrite_launches(path.read_text(), name)
        target = build / (Path(name).stem + "_emu.cpp")
        if not target.exists() or target.read_text() != text:  # unchanged text keeps the compiled object
            target.write_text(text)
        sources.append(str(target))
    _state["lib"] = _define_schemas()
    load_extension(
        name="mmcal_cuda_emu_sanitize" if sanitize else "mmcal_cuda_emu",
        sources=sources,
        extra_include_paths=[str(HERE / "include"), str(CUDA_SRC)],
        # A grid row of 64 blocks: every pass of more units than that takes
        # the 2-D grid that only a GPU with over 2^31 - 1 units would need.
        extra_cflags=[*cflags, "-Wno-unknown-pragmas", f"-DMMCAL_MAX_GRID_X={EMULATED_MAX_GRID_X}"],
        extra_ldflags=ldflags,
        build_directory=str(build),
        is_python_module=False,
        verbose=verbose,
    )
    _state["ops"] = getattr(torch.ops, NAMESPACE)
    return _state["ops"]
