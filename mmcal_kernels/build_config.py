"""The one build recipe of the compiled extension: its sources and flags.

``build_plan()`` decides which libraries to build, from which sources, with
which flags, for the torch and CUDA toolkit at hand and the build switches of
the environment. ``setup.py`` (which loads this file by its path, before the
package can be imported) and the JIT build in ``backends/cpp/load.py`` both build exactly
what it returns, so the two cannot drift apart (tests/test_build_recipe.py).
Imports nothing but the standard library at import time.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import subprocess
import warnings
from typing import Mapping, NamedTuple, Optional

# The main library (_C): the op schemas, the in-place autograd kernels, the CPU
# host code and the portable kernel table. Paths relative to csrc/.
MAIN_SOURCES = ("ops.cpp", "inplace.cpp", "cpu/ops_cpu.cpp", "cpu/gate_network.cpp", "cpu/dispatch.cpp",
                "cpu/kernels_default.cpp")
CUDA_SOURCES = ("cuda/reductions.cu", "cuda/elementwise.cu", "cuda/gate_network.cu", "cuda/ops_cuda.cpp",
                "cuda/gate_network_cuda.cpp")

# One library per instruction set, each compiled from cpu/kernels_<cap>.cpp and
# loaded at run time only on a CPU that has it (csrc/cpu/dispatch.cpp).
CAPABILITY_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}  # fmt: skip

# No --use_fast_math: it flushes float32 denormals to zero (Y = X * g would
# lose them, unlike torch's kernels, the reference and the CPU backend) and
# approximates division, exp and sqrt; the passes are bound by memory anyway.
NVCC_FLAGS = ["-O3", "-lineinfo"]
# No -std in either flag list: torch's BuildExtension (and cpp_extension.load)
# adds the standard its own headers need when the flags name none: -std=c++17
# on torch 2.11, -std=c++20 on 2.12-2.14 (seen in their build files). A
# -std=c++17 of ours overrode it, and torch 2.14's headers need C++20
# (std::strong_ordering, string_view::starts_with, requires-clauses): the
# build failed there. The stand-alone checks of the .cu files (tests) pass
# TORCH_CXX_STD, CI's torch's; tests/compat.sh builds them as C++17 on 2.11.
TORCH_CXX_STD = "-std=c++20"
DEFAULT_CUDA_ARCHS = "8.0;9.0"
MIN_CUDA_ARCH = (7, 5)


class BuildError(Exception):
    """The build switches ask for what this torch or toolkit cannot build."""


ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_switch(name: str, environ: Optional[Mapping[str, str]] = None) -> Optional[bool]:
    """An on/off environment switch: True (1, true, yes, on), False (0, false,
    no, off, or empty), None when unset; any other value is a BuildError
    naming it, where it once counted as off (MMCAL_CUDA=off built CUDA)."""
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        return None
    word = value.strip().lower()
    if word in ON or word in OFF or not word:
        return word in ON
    raise BuildError(f"{name}={value!r}: expected one of {', '.join(ON + OFF)}")


def env_flag(name: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """An on/off switch that is off unless set on (MMCAL_NO_EXTENSION, MMCAL_DEBUG, ...)."""
    return bool(env_switch(name, environ))


def sources(root: str, names) -> list[str]:
    return [os.path.join(root, name) for name in names]


def capability_flags() -> dict[str, list[str]]:
    """The per-instruction-set tables this machine's compiler targets (x86-64 only)."""
    return CAPABILITY_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else {}


# CPU flags (as /proc/cpuinfo names them) each table needs; csrc/cpu/dispatch.cpp asks the same.
REQUIRED_CPU_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}


def compiled_files(root: str, plan) -> tuple[str, ...]:
    """The files under ``root`` (csrc/) that a build of ``plan`` reads, relative
    to it: the plan's sources and every header they may include (``.cuh`` only
    where it compiles CUDA, so that a .cu edit leaves a CPU-only _C current)."""
    kinds = (".h", ".cuh") if any(lib.nvcc for lib in plan) else (".h",)
    headers = [os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
               for folder, _, names in os.walk(root) for name in names if name.endswith(kinds)]  # fmt: skip
    return tuple(sorted({*headers, *(source for lib in plan for source in lib.sources)}))


def sources_digest(root: str, files) -> str:
    """sha256 over ``files`` (relative to ``root``, csrc/), by name and content;
    a missing file hashes unlike any content, an empty file's included.
    setup.py records it beside _C, and the loader compares it with the
    checkout's sources: a _C built before csrc/ changed is stale."""
    digest = hashlib.sha256()
    for name in files:
        try:
            with open(os.path.join(root, name), "rb") as f:
                content = f.read()
        except OSError:
            content = None
        size = -1 if content is None else len(content)
        digest.update(name.encode() + b"\0" + size.to_bytes(8, "little", signed=True) + (content or b""))
    return digest.hexdigest()


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
    # -g0 in a release build: setuptools hands every compile Python's own
    # CFLAGS first, "-g" among them, and the libraries carried 19 MB of DWARF,
    # 94% of their size (the symbols that name a crash's frames stay).
    cxx = ["-O0", "-g"] if debug or asan else ["-O1", "-g"] if sanitize else ["-O3", "-g0"]
    cxx += ["-fvisibility=hidden"]  # the standard: torch adds it (NVCC_FLAGS says why)
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


def shared_cxx_runtime_flags(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Link flags that keep the C++ runtime a shared library, where the compiler
    would link its static ``libstdc++.a`` into the extension (Linux).

    A compiler with no ``libstdc++.so`` of its own (the GPU machine's
    ``CXX=/opt/gcc/bin/g++``: a dangling link beside ``libstdc++.a``) silently
    copies the runtime into ``_C``. Torch uses the system's shared one, and the
    two copies' locale tables differ: ``_C`` then crashed (SIGSEGV) formatting
    an error message with a number in it (docs/gpu.md, run 6). Naming the
    shared runtime after the objects makes the linker take it from the system's
    library path, as torch's own libraries do."""
    env = os.environ if environ is None else environ
    if platform.system() != "Linux":
        return []
    compiler = env.get("CXX") or "c++"  # torch.utils.cpp_extension's choice on Linux
    try:  # split: CXX may carry a launcher ("ccache g++")
        found = subprocess.run([*shlex.split(compiler), "-print-file-name=libstdc++.so"], capture_output=True,
                               text=True, timeout=60).stdout.strip()  # fmt: skip
    except (OSError, ValueError, subprocess.SubprocessError):
        return []  # no such compiler: the build itself says so
    if os.path.isabs(found) and os.path.exists(found):
        return []
    warnings.warn(f"mmcal_kernels: {compiler} has no shared libstdc++ (it would copy libstdc++.a into the "
                  "extension beside torch's libstdc++.so.6); linking the system's libstdc++.so.6", stacklevel=2)  # fmt: skip
    return ["-Wl,--push-state,--no-as-needed", "-l:libstdc++.so.6", "-Wl,--pop-state"]


def cuda_arch_flags(arch_list: str) -> list[str]:
    """``-gencode`` flags for an arch list like ``"8.0;9.0+PTX"`` (``;``, ``,`` or
    spaces between entries; ``9.0a``-style suffixes kept). Explicit flags, not
    TORCH_CUDA_ARCH_LIST: torch then adds none of its own (it skips its arch
    flags when the nvcc flags name one), in setup.py's build and the JIT build alike."""
    flags = []
    for entry in filter(None, re.split(r"[;,\s]+", arch_list.strip())):
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry)
        if match is None:
            raise BuildError(f"CUDA arch list {arch_list!r}: cannot read {entry!r} (expected e.g. 8.0, 9.0a, 9.0+PTX)")
        if (int(match.group(1)), int(match.group(2))) < MIN_CUDA_ARCH:
            raise BuildError(f"CUDA arch list {arch_list!r}: {entry} is older than the kernels support "
                             f"({MIN_CUDA_ARCH[0]}.{MIN_CUDA_ARCH[1]}, CUDA 13's oldest)")  # fmt: skip
        arch = match.group(1) + match.group(2) + match.group(3)
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if match.group(4):
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    if not flags:
        raise BuildError(f"CUDA arch list {arch_list!r} names no architecture")
    return flags


class Library(NamedTuple):
    """One shared library of the extension. (A NamedTuple, not a dataclass:
    setup.py loads this file by its path, outside sys.modules, where
    dataclasses cannot resolve the annotations.)"""

    module: str  # its name in the package: "_C", "mmcal_cpu_avx2", ...
    sources: tuple[str, ...]  # relative to csrc/
    cxx: tuple[str, ...]
    link: tuple[str, ...]
    nvcc: tuple[str, ...] = ()  # non-empty exactly when it has CUDA sources

    @property
    def jit_name(self) -> str:
        """torch.utils.cpp_extension.load's name for it: unique among the extensions of the process."""
        return "mmcal" + self.module if self.module.startswith("_") else self.module


def _why_no_cuda_toolkit(torch_cuda: Optional[str], cuda_home: Optional[str]) -> str:
    """Empty when the CUDA kernels can be built, else why not."""
    if torch_cuda is None:
        return "this torch has no CUDA"
    if cuda_home is None:
        return "no CUDA toolkit found (nvcc, CUDA_HOME)"
    if not os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        # torch guesses CUDA_HOME from the nvcc on PATH, which may be a wrapper outside the toolkit
        return f"CUDA_HOME={cuda_home} holds no include/cuda_runtime.h"
    return ""


def build_plan(tables: str = "all", environ: Optional[Mapping[str, str]] = None) -> list[Library]:
    """The libraries to build for the torch installed and the toolkit torch finds.

    ``tables``: ``"all"`` builds a CPU kernel table for every instruction set the
    compiler targets (setup.py: a wheel travels to other CPUs); ``"runnable"``
    only those this CPU can run (the JIT build, which loads every library it
    builds). Everything else, the CUDA part included, is the same for both.
    The CUDA kernels are built where torch has CUDA and a toolkit is found
    (``torch.utils.cpp_extension.CUDA_HOME``), unless ``MMCAL_CUDA=0``;
    ``MMCAL_CUDA=1`` without them raises BuildError.
    """
    import torch
    import torch.utils.cpp_extension as cpp_extension

    env = os.environ if environ is None else environ
    cxx, link = compile_flags(torch._C.has_openmp, debug=env_flag("MMCAL_DEBUG", env),
                              asan=env_flag("MMCAL_ASAN", env), sanitize=env_flag("MMCAL_SANITIZE", env))  # fmt: skip
    link += shared_cxx_runtime_flags(env)
    want_cuda = env_switch("MMCAL_CUDA", env)
    why_no_cuda = _why_no_cuda_toolkit(torch.version.cuda, cpp_extension.CUDA_HOME)
    if want_cuda and why_no_cuda:
        raise BuildError(f"MMCAL_CUDA={env['MMCAL_CUDA']}: {why_no_cuda}")
    has_cuda = not why_no_cuda
    if torch.version.cuda is not None and why_no_cuda and want_cuda is None:
        # A CUDA torch whose toolkit is not usable: a CPU-only _C, said out
        # loud (it once failed late with "cuda_runtime.h: No such file").
        warnings.warn(f"mmcal_kernels: building without the CUDA kernels: {why_no_cuda} "
                      "(set CUDA_HOME to the toolkit, or MMCAL_CUDA=0 to silence this)", stacklevel=2)  # fmt: skip
    per_table = {"all": capability_flags, "runnable": runnable_capability_flags}[tables]()
    libraries = [
        Library(f"mmcal_cpu_{cap}", (f"cpu/kernels_{cap}.cpp",), tuple(cxx + flags), tuple(link))
        for cap, flags in per_table.items()
    ]
    if has_cuda and want_cuda is not False:
        arches = env.get("MMCAL_CUDA_ARCH_LIST") or env.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
        nvcc = tuple(NVCC_FLAGS + cuda_arch_flags(arches))
        libraries.append(Library("_C", MAIN_SOURCES + CUDA_SOURCES, tuple(cxx), tuple(link), nvcc))
    else:
        libraries.append(Library("_C", MAIN_SOURCES, tuple(cxx), tuple(link)))
    return libraries
