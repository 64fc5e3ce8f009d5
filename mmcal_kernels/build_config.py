"""The one build recipe of the compiled extension: its sources and flags.

Read by ``setup.py`` (loaded from its path, before the package can be imported)
and by the JIT build in ``_cpp.py``, so that both build the same libraries with
the same flags. Imports nothing but the standard library.
"""

from __future__ import annotations

import os
import platform

# The main library (_C): the op schemas, the in-place autograd kernels, the CPU
# host code and the portable kernel table. Paths relative to csrc/.
MAIN_SOURCES = ("registration.cpp", "inplace.cpp", "cpu/passes_cpu.cpp", "cpu/gate_network.cpp", "cpu/dispatch.cpp",
                "cpu/kernels_default.cpp")
CUDA_SOURCES = ("cuda/passes.cu", "cuda/passes_cuda.cpp")

# One library per instruction set, each compiled from cpu/kernels_<cap>.cpp and
# loaded at run time only on a CPU that has it (csrc/cpu/dispatch.cpp).
CAPABILITY_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}  # fmt: skip

NVCC_FLAGS = ["-O3", "-lineinfo", "--use_fast_math", "-std=c++17"]
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def env_flag(name: str) -> bool:
    """An on/off environment switch (MMCAL_NO_EXTENSION, MMCAL_CUDA, ...): 1, true, yes or on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def sources(root: str, names) -> list[str]:
    return [os.path.join(root, name) for name in names]


def capability_flags() -> dict[str, list[str]]:
    """The per-instruction-set tables this machine's compiler targets (x86-64 only)."""
    return CAPABILITY_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else {}


# CPU flags (as /proc/cpuinfo names them) each table needs; csrc/cpu/dispatch.cpp asks the same.
REQUIRED_CPU_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}


def runnable_capability_flags() -> dict[str, list[str]]:
    """The tables this CPU can run: a JIT build loads every library it builds,
    so it builds no table whose code this CPU could not execute."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "").split())
    except OSError:
        return {}
    return {cap: fl for cap, fl in capability_flags().items() if set(REQUIRED_CPU_FLAGS[cap]) <= flags}


def compile_flags(has_openmp: bool, debug: bool = False, asan: bool = False, sanitize: bool = False):
    """``(cxx flags, link flags)`` for every C++ file of the extension."""
    cxx = ["-O0", "-g"] if debug or asan else ["-O1", "-g"] if sanitize else ["-O3"]
    cxx += ["-fvisibility=hidden", "-std=c++17"]
    link = []
    # at::parallel_for is a header template: without -fopenmp (under a torch
    # built with OpenMP, as the Linux wheels are) it compiles to a serial loop.
    # The runtime is the libgomp torch has already loaded (same soname).
    if has_openmp and platform.system() != "Windows":
        cxx += ["-fopenmp"]
        link += ["-fopenmp"]
    if sanitize:
        checks = "-fsanitize=address,undefined,float-cast-overflow"
        cxx += [checks, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        link += [checks]
    elif asan:
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address"]
    return cxx, link
