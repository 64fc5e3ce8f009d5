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
* ``MMCAL_CUDA=0|1``          skip, or require, the CUDA build (default: when torch has CUDA and CUDA_HOME
                              holds a toolkit, include/cuda_runtime.h; otherwise a CPU-only build, with a warning).
* ``MMCAL_CUDA_ARCH_LIST``    e.g. "8.0;9.0" (default "8.0;9.0", oldest 7.5; TORCH_CUDA_ARCH_LIST is honoured too).
* ``MMCAL_DEBUG=1``           -O0 -g; ``MMCAL_ASAN=1`` adds AddressSanitizer.
* ``MMCAL_SANITIZE=1``        -O1 -g with AddressSanitizer and UndefinedBehaviorSanitizer, every
                              report fatal (tests/sanitizers.sh builds and runs the suite so).
* ``MAX_JOBS``                parallel compile jobs (ninja), as torch reads it.

Switches take 1/true/yes/on and 0/false/no/off (any case); another value stops the build, naming it.

Only commands that compile (build, build_ext, install, develop, bdist_wheel,
editable_wheel, ...) look for torch: ``sdist``, ``egg_info`` and ``dist_info``
need nothing but setuptools, so ``python -m build --sdist`` works without torch
and a source distribution's content never depends on the machine it was made on
(MANIFEST.in lists it).
"""

import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_config():
    """mmcal_kernels/build_config.py by its path: the package itself imports torch."""
    spec = importlib.util.spec_from_file_location("mmcal_build_config", os.path.join(HERE, "mmcal_kernels", "build_config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_config = _load_build_config()


# The setup.py commands that compile, or run one that does. Any other command
# (sdist, egg_info, dist_info, check, clean, --version, ...) gets no extension
# modules, so it needs no torch.
BUILD_COMMANDS = {
    "build", "build_ext", "install", "install_lib", "develop", "editable_wheel",
    "bdist", "bdist_wheel", "bdist_egg", "bdist_dumb", "bdist_rpm",
}  # fmt: skip


def _compiles(argv):
    return any(arg in BUILD_COMMANDS for arg in argv[1:])


PACKAGE_DIR = os.path.join(HERE, "mmcal_kernels")


def _write_build_info(package_dir=None, **facts):
    """What the loader (mmcal_kernels/backends/cpp/load.py) reads: the torch _C was built
    against (it skips _C under another torch), or that none was built on purpose."""
    with open(os.path.join(package_dir or PACKAGE_DIR, "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py."""\n' + "".join(f"{k} = {v!r}\n" for k, v in facts.items()))


def _recording_build_ext(base, facts):
    """``base`` (torch's BuildExtension) that records ``facts`` only once every
    library has built: written first, a failed or interrupted build left the
    old libraries beside a record of the new torch, and the loader then
    refused a good _C or loaded a bad one. Written into the source tree (an
    in-place or editable build) and, when building for a wheel, into the
    build directory too (build_py copied the package there before this ran)."""

    class BuildExt(base):
        def run(self):
            super().run()
            _write_build_info(**facts)
            if not self.inplace:
                target = os.path.join(self.build_lib, "mmcal_kernels")
                if os.path.isdir(target):
                    _write_build_info(target, **facts)

    return BuildExt


def extension_modules(argv):
    """``(ext_modules, cmdclass, build_info)``: build_info is what _write_build_info records (after the
    build, through cmdclass's build_ext, when there are modules), or None."""
    if build_config.env_flag("MMCAL_NO_EXTENSION"):
        # A pure-Python install chosen on purpose: the package says so, no warning.
        return [], {}, (dict(EXTENSION=False) if _compiles(argv) else None)
    if not glob.glob(os.path.join(HERE, "csrc", "*.cpp")) or not _compiles(argv):
        return [], {}, None
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        # pip's default build isolation hides an installed torch: the usual case, named first.
        raise SystemExit(
            "mmcal_kernels: building the C++ extension needs PyTorch, and this build cannot import it. If torch "
            "is installed, pip's build isolation hides it: run `pip install --no-build-isolation .`; otherwise "
            "install torch first (or set MMCAL_NO_EXTENSION=1 for a pure-Python install)."
        ) from exc

    jobs = os.environ.get("MAX_JOBS")
    if jobs is not None and not (jobs.strip().isdigit() and int(jobs) > 0):  # torch would ignore it silently
        raise SystemExit(f"mmcal_kernels: MAX_JOBS={jobs!r}: expected a positive number of parallel compile jobs")
    # The same plan as the JIT build in mmcal_kernels/backends/cpp/load.py, every CPU kernel
    # table included (a BuildError becomes main()'s SystemExit).
    plan = build_config.build_plan(tables="all")
    modules = []
    for lib in plan:
        sources = build_config.sources("csrc", lib.sources)
        if lib.nvcc:
            args = {"cxx": list(lib.cxx), "nvcc": list(lib.nvcc)}
            modules.append(CUDAExtension(f"mmcal_kernels.{lib.module}", sources, extra_compile_args=args,
                                         extra_link_args=list(lib.link)))  # fmt: skip
        else:
            modules.append(CppExtension(f"mmcal_kernels.{lib.module}", sources, extra_compile_args={"cxx": list(lib.cxx)},
                                        extra_link_args=list(lib.link)))  # fmt: skip
    # What the loader checks before it loads _C: the torch it was built against,
    # and (in a source checkout, an editable install) that csrc/ has not
    # changed since: a stale _C would run the old kernels without a word.
    csrc = os.path.join(HERE, "csrc")
    files = build_config.compiled_files(csrc, plan)
    facts = dict(EXTENSION=True, TORCH_VERSION=torch.__version__, SOURCE_FILES=files,
                 SOURCES_DIGEST=build_config.sources_digest(csrc, files))  # fmt: skip
    return modules, {"build_ext": _recording_build_ext(BuildExtension.with_options(use_ninja=True), facts)}, facts


def main():
    try:
        ext_modules, cmdclass, build_info = extension_modules(sys.argv)
    except build_config.BuildError as exc:  # a build switch with a value it cannot take
        raise SystemExit(f"mmcal_kernels: {exc}") from exc
    if build_info is not None and not ext_modules:  # nothing to build (MMCAL_NO_EXTENSION=1): record it now
        _write_build_info(**build_info)
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
            "triton": ["triton>=3.6,<3.10"],  # the tested range (backends/triton/__init__.py SUPPORTED)
            "test": ["pytest", "hypothesis", "numpy"],
            "bench": ["matplotlib", "tqdm", "pytest-benchmark"],
            "demo": ["mlxtend", "scikit-learn", "matplotlib", "tqdm"],
        },
        entry_points={"console_scripts": [
            "mmcal-bench = mmcal_kernels.bench.runner:main",
            "mmcal-bench-paired = mmcal_kernels.bench.paired:main",
        ]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


# setuptools' build backend runs this file as __main__ too; tests import it
# under another name to read extension_modules without building.
if __name__ == "__main__":
    main()
