"""Loading the compiled extension (``mmcal_kernels._C``: csrc/).

Loading, in order, with ONE warning if all fail (the package then runs on the
reference backend, and ``python -m mmcal_kernels.info`` says why):

1. the prebuilt ``mmcal_kernels._C``, unless it was built against another
   torch (``_build_info.TORCH_VERSION``): a library built for one torch can
   crash another, so it is skipped rather than tried; in a source checkout
   (an editable install), also unless csrc/ changed since it was built
   (``_build_info.SOURCES_DIGEST``): it would run the old kernels;
2. a JIT build of ``csrc/`` with ``torch.utils.cpp_extension.load``, cached
   per torch version under ``$MMCAL_CACHE`` (default ``~/.cache/mmcal_kernels``),
   where the sources are present (a source checkout); ``MMCAL_NO_JIT=1`` skips it.

``MMCAL_SKIP_PREBUILT=1`` ignores a prebuilt ``_C``, to exercise step 2.
``MMCAL_NO_EXTENSION=1`` (at run time, or at install: ``_build_info.EXTENSION``)
chooses the pure-Python package on purpose: nothing is loaded or built, and
nothing is warned.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from typing import Optional

import torch

from ... import build_config

PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mmcal_kernels/
SOURCES = os.path.join(os.path.dirname(PACKAGE), "csrc")

STATUS = {"loaded": False, "how": "", "why_not": "", "cpu_capability": "", "cuda_kernels": False}


def _torch_release(version: str) -> str:
    return version.split("+")[0]


def _load_prebuilt() -> Optional[str]:
    """None on success, else why not."""
    if os.environ.get("MMCAL_SKIP_PREBUILT") == "1":  # to exercise the fallbacks
        return "prebuilt _C skipped (MMCAL_SKIP_PREBUILT=1)"
    try:
        info = importlib.import_module("mmcal_kernels._build_info")
    except ImportError:
        info = None
    if info is not None and _torch_release(info.TORCH_VERSION) != _torch_release(torch.__version__):
        return f"_C was built against torch {info.TORCH_VERSION}, this is torch {torch.__version__}"
    files = getattr(info, "SOURCE_FILES", None)
    recorded = getattr(info, "SOURCES_DIGEST", None)
    if files and os.path.isdir(SOURCES) and build_config.sources_digest(SOURCES, files) != recorded:
        # An editable install whose csrc/ was edited or updated since its build.
        return "_C was built from older sources than csrc/ holds now (rebuild: pip install --no-build-isolation -e .)"
    try:
        importlib.import_module("mmcal_kernels._C")
    except ImportError as exc:  # not built, or an undefined symbol from another torch
        return f"import of _C failed: {exc}"
    return None


def _jit_build(why_prebuilt: str = "") -> Optional[str]:
    """None on success, else why not. ``why_prebuilt``: said first, since a build at import surprises."""
    if os.environ.get("MMCAL_NO_JIT") == "1":
        return "JIT build disabled (MMCAL_NO_JIT=1)"
    if not os.path.isdir(SOURCES):
        return f"no sources to JIT-build from ({SOURCES} is missing; install from a source checkout)"
    from torch.utils.cpp_extension import load

    cache = os.path.join(
        os.environ.get("MMCAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mmcal_kernels")),
        f"torch-{_torch_release(torch.__version__)}",
    )
    os.makedirs(cache, exist_ok=True)
    # setup.py's plan (build_config.build_plan), CUDA kernels included where
    # torch has CUDA and a toolkit; of the CPU kernel tables only those this
    # CPU can run, since load() loads every library it builds. _C comes last.
    try:
        plan = build_config.build_plan(tables="runnable")
    except build_config.BuildError as exc:
        return f"JIT build not possible: {exc}"
    because = f"{why_prebuilt}; " if why_prebuilt else ""
    print(f"mmcal_kernels: {because}building the C++ kernels for this torch (once; cached in {cache})", file=sys.stderr)
    try:
        for lib in plan:
            load(lib.jit_name, build_config.sources(SOURCES, lib.sources), extra_cflags=list(lib.cxx),
                 extra_cuda_cflags=list(lib.nvcc), extra_ldflags=list(lib.link), with_cuda=bool(lib.nvcc),
                 build_directory=cache, is_python_module=False, verbose=False)  # fmt: skip
    except Exception as exc:  # a compiler error, no compiler, ...
        return f"JIT build failed: {type(exc).__name__}: {_first_error(str(exc))}"
    return None


def _first_error(log: str) -> str:
    """The line of a build log that says what went wrong: the compiler's first
    "error:" (torch's message starts "Error building extension", then the
    first of ninja's command lines, which told nothing)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    named = [line for line in lines if re.search(r"\berror:", line, re.IGNORECASE)]
    return (named or lines or [""])[0][:300]


# The switches the kernels read at a call, which they take from the
# environment only when _C loads (csrc/common/settings.h).
KERNEL_SETTINGS = ("MMCAL_CPU_STREAM", "MMCAL_CUDA_GATE_WARPS")


def apply_settings(ops=None) -> None:
    """Hand the kernels os.environ's ``MMCAL_CPU_STREAM`` and
    ``MMCAL_CUDA_GATE_WARPS`` after changing them in a running process. The
    C++ side reads the environment only when it loads: an op runs without the
    GIL, and its getenv raced with other threads' ``os.environ`` writes (a
    SIGSEGV). ``ops``: another build's op namespace (tests' CUDA emulator)."""
    if ops is None:
        if not STATUS["loaded"]:
            return
        ops = torch.ops.mmcal
    ops.set_settings(*(os.environ.get(name, "") for name in KERNEL_SETTINGS))


def _pure_python_chosen() -> Optional[str]:
    """Why the extension is off on purpose (no warning then), else None."""
    if build_config.env_flag("MMCAL_NO_EXTENSION"):
        return "pure-Python mode chosen (MMCAL_NO_EXTENSION=1)"
    try:
        info = importlib.import_module("mmcal_kernels._build_info")
    except ImportError:
        return None
    if getattr(info, "EXTENSION", True) is False:
        return "installed without the compiled extension (MMCAL_NO_EXTENSION=1 at install)"
    return None


def load_extension() -> bool:
    if STATUS["loaded"]:
        return True
    chosen = _pure_python_chosen()
    if chosen:
        STATUS["why_not"] = chosen
        return False
    why_prebuilt = _load_prebuilt()
    if why_prebuilt is None:
        STATUS.update(loaded=True, how="prebuilt mmcal_kernels._C")
    else:
        why_jit = _jit_build(why_prebuilt)
        if why_jit is None:
            STATUS.update(loaded=True, how=f"JIT build (prebuilt skipped: {why_prebuilt})")
        else:
            STATUS["why_not"] = f"{why_prebuilt}; {why_jit}"
            warnings.warn(
                f"mmcal_kernels: the compiled kernels are unavailable, using the reference backend "
                f"({STATUS['why_not']})",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
    STATUS["cpu_capability"] = torch.ops.mmcal.cpu_capability()
    STATUS["cuda_kernels"] = torch._C._dispatch_has_kernel_for_dispatch_key("mmcal::summaries", "CUDA")
    return True
