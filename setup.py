"""Build and install mmcal_kernels.

PyTorch is a dependency, never something this build downloads: install torch
first, then ``pip install --no-build-isolation .`` (build isolation would hide
the installed torch from the extension's build).

What is built (all optional: without it the package runs on its reference):

* ``mmcal_kernels._C``: the op schemas, the CPU passes with the portable
  kernel table, and, where torch has CUDA and nvcc is found, the CUDA passes;
* ``mmcal_kernels.mmcal_cpu_avx2`` / ``mmcal_cpu_avx512`` (x86-64): the same
  CPU kernels compiled for those instruction sets, each in its own library,
  loaded at run time only on a CPU that has them (never a SIGILL elsewhere).

Environment variables:

* ``MMCAL_NO_EXTENSION=1``    pure-Python install.
* ``MMCAL_CUDA=0|1``          skip, or require, the CUDA build (default: when torch has CUDA and nvcc exists).
* ``MMCAL_CUDA_ARCH_LIST``    e.g. "8.0;9.0" (default "8.0;9.0"; TORCH_CUDA_ARCH_LIST is honoured too).
* ``MMCAL_DEBUG=1``           -O0 -g; ``MMCAL_ASAN=1`` adds AddressSanitizer (see README).
* ``MMCAL_SANITIZE=1``        -O1 -g with AddressSanitizer and UndefinedBehaviorSanitizer, every
                              report fatal (tests/sanitizers.sh builds and runs the suite so).
* ``MAX_JOBS``                parallel compile jobs (ninja), as torch reads it.

Only commands that compile (build, build_ext, install, develop, bdist_wheel,
editable_wheel, ...) look for torch: ``sdist``, ``egg_info`` and ``dist_info``
need nothing but setuptools, so ``python -m build --sdist`` works without torch
and a source distribution's content never depends on the machine it was made on
(MANIFEST.in lists it).
"""

import glob
import os
import platform
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CAPABILITY_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}  # fmt: skip


# The setup.py commands that compile, or run one that does. Any other command
# (sdist, egg_info, dist_info, check, clean, --version, ...) gets no extension
# modules, so it needs no torch.
BUILD_COMMANDS = {
    "build", "build_ext", "install", "install_lib", "develop", "editable_wheel",
    "bdist", "bdist_wheel", "bdist_egg", "bdist_dumb", "bdist_rpm",
}  # fmt: skip


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiles(argv):
    return any(arg in BUILD_COMMANDS for arg in argv[1:])


def _write_build_info(**facts):
    """What the loader (mmcal_kernels/_cpp.py) reads: the torch _C was built
    against (it skips _C under another torch), or that none was built on purpose."""
    with open(os.path.join(HERE, "mmcal_kernels", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py."""\n' + "".join(f"{k} = {v!r}\n" for k, v in facts.items()))


def extension_modules():
    if _flag("MMCAL_NO_EXTENSION"):
        if _compiles(sys.argv):  # a pure-Python install chosen on purpose: the package says so, no warning
            _write_build_info(EXTENSION=False)
        return [], {}
    if not glob.glob(os.path.join(HERE, "csrc", "*.cpp")):
        return [], {}
    if not _compiles(sys.argv):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            "mmcal_kernels: building the C++ extension needs PyTorch installed first. Install torch, then "
            "`pip install --no-build-isolation .` (or set MMCAL_NO_EXTENSION=1 for a pure-Python install)."
        ) from exc

    debug, asan, sanitize = _flag("MMCAL_DEBUG"), _flag("MMCAL_ASAN"), _flag("MMCAL_SANITIZE")
    cxx = ["-O0", "-g"] if debug or asan else ["-O1", "-g"] if sanitize else ["-O3"]
    cxx += ["-fvisibility=hidden", "-std=c++17"]
    link = []
    # at::parallel_for is a header template: without -fopenmp (under a torch
    # built with OpenMP, as the Linux wheels are) it compiles to a serial loop.
    # The runtime is the libgomp torch has already loaded (same soname).
    if torch._C.has_openmp and platform.system() != "Windows":
        cxx += ["-fopenmp"]
        link += ["-fopenmp"]
    if sanitize:
        checks = "-fsanitize=address,undefined,float-cast-overflow"
        cxx += [checks, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        link += [checks]
    elif asan:
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address"]

    sources = ["csrc/registration.cpp", "csrc/inplace.cpp", "csrc/cpu/passes_cpu.cpp", "csrc/cpu/dispatch.cpp", "csrc/cpu/kernels_default.cpp"]
    want_cuda = os.environ.get("MMCAL_CUDA")
    has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if want_cuda == "1" and not has_cuda:
        raise SystemExit("MMCAL_CUDA=1: torch has no CUDA, or nvcc (CUDA_HOME) was not found")
    build_cuda = has_cuda and want_cuda != "0"
    if build_cuda:
        arches = os.environ.get("MMCAL_CUDA_ARCH_LIST") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0"
        os.environ["TORCH_CUDA_ARCH_LIST"] = arches
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        nvcc = ["-O3", "-lineinfo", "--use_fast_math", "-std=c++17"]
        main = CUDAExtension("mmcal_kernels._C", sources, extra_compile_args={"cxx": cxx + ["-DMMCAL_WITH_CUDA"], "nvcc": nvcc},
                             extra_link_args=link)  # fmt: skip
    else:
        main = CppExtension("mmcal_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    modules = [main]
    if platform.machine().lower() in ("x86_64", "amd64"):
        for cap, flags in CAPABILITY_FLAGS.items():
            modules.append(
                CppExtension(f"mmcal_kernels.mmcal_cpu_{cap}", [f"csrc/cpu/kernels_{cap}.cpp"],
                             extra_compile_args={"cxx": cxx + flags}, extra_link_args=link)  # fmt: skip
            )
    _write_build_info(EXTENSION=True, TORCH_VERSION=torch.__version__, CUDA=build_cuda)
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="mmcal_kernels",
    version="0.1.0",
    description="Fused kernels for pre-fusion calibration of multimodal features (PyTorch)",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["mmcal_kernels", "mmcal_kernels.*"]),
    install_requires=["torch>=2.11"],
    extras_require={
        "triton": ["triton>=3.6"],
        "test": ["pytest", "hypothesis", "numpy"],
        "bench": ["matplotlib", "tqdm", "pytest-benchmark"],
        "demo": ["mlxtend", "scikit-learn", "matplotlib", "tqdm"],
    },
    entry_points={"console_scripts": ["mmcal-bench = mmcal_kernels.bench.runner:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
