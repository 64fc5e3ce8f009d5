"""Build and install mmcal_kernels.

PyTorch is a dependency, never something this build downloads: install torch
first, then ``pip install --no-build-isolation .`` (build isolation would hide
the installed torch from the C++ extension's build).

The C++/CUDA extension ``mmcal_kernels._C`` is built from ``csrc/`` when that
folder holds sources; the package works without it (reference backend).
Environment variables:

* ``MMCAL_NO_EXTENSION=1``   skip the extension: a pure-Python install.
* ``MAX_JOBS``               parallel compile jobs (ninja), as torch reads it.
"""

import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    if not sources or os.environ.get("MMCAL_NO_EXTENSION") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:
        raise SystemExit(
            "mmcal_kernels: building the C++ extension needs PyTorch installed first. Install torch, then "
            "`pip install --no-build-isolation .` (or set MMCAL_NO_EXTENSION=1 for a pure-Python install)."
        ) from exc
    ext = CppExtension("mmcal_kernels._C", sources, extra_compile_args={"cxx": ["-O3"]})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


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
    },
    entry_points={"console_scripts": ["mmcal-bench = mmcal_kernels.bench.runner:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
