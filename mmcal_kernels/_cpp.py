"""The compiled extension: loading it, its fake and autograd registrations, and
the ``"cpu"`` / ``"cuda"`` backends built on it.

Loading, in order, with ONE warning if all fail (the package then runs on the
reference backend, and ``python -m mmcal_kernels.info`` says why):

1. the prebuilt ``mmcal_kernels._C``, unless it was built against another
   torch (``_build_info.TORCH_VERSION``): a library built for one torch can
   crash another, so it is skipped rather than tried;
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
import sys
import warnings
from typing import Optional

import torch

from . import _checks, backends, build_config, reference
from .gate_network_ops import register_cpp_gate_ops
from .pass_ops import LAYOUT_NAMES, PassOps

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = os.path.join(os.path.dirname(HERE), "csrc")

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
    try:
        importlib.import_module("mmcal_kernels._C")
    except ImportError as exc:  # not built, or an undefined symbol from another torch
        return f"import of _C failed: {exc}"
    return None


def _jit_build() -> Optional[str]:
    """None on success, else why not."""
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
    # The recipe setup.py builds (build_config), the CPU part: every kernel
    # table this CPU can run, then _C. CUDA kernels need the setup.py build
    # (nvcc, an arch list); a JIT-built _C has none.
    cxx, link = build_config.compile_flags(torch._C.has_openmp)
    print(f"mmcal_kernels: building the C++ kernels for this torch (once; cached in {cache})", file=sys.stderr)
    try:
        for cap, cap_flags in build_config.runnable_capability_flags().items():
            load(f"mmcal_cpu_{cap}", [os.path.join(SOURCES, "cpu", f"kernels_{cap}.cpp")], extra_cflags=cxx + cap_flags,
                 extra_ldflags=link, build_directory=cache, is_python_module=False, verbose=False)  # fmt: skip
        load("mmcal_C", build_config.sources(SOURCES, build_config.MAIN_SOURCES), extra_cflags=cxx, extra_ldflags=link,
             build_directory=cache, is_python_module=False, verbose=False)  # fmt: skip
    except Exception as exc:  # a compiler error, no compiler, ...
        return f"JIT build failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


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
        why_jit = _jit_build()
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


# ---- the ops as the passes of the fused node and the stage functions ------

OPS = PassOps(
    "cpp",
    summaries=lambda *a: torch.ops.mmcal.summaries(*a),
    modulate=lambda *a: torch.ops.mmcal.modulate(*a),
    modulate_=lambda *a: torch.ops.mmcal.modulate_(*a),
    gate_grads=lambda *a: torch.ops.mmcal.gate_grads(*a),
    input_grads=lambda *a: torch.ops.mmcal.input_grads(*a),
)  # resolved at call time: the ops exist only once the extension has loaded


# ---- fake (meta) implementations and autograd of the stage ops -------------


def _channels(x, code):
    return reference.channels(x, LAYOUT_NAMES[code])


def _one_device(**lists) -> None:
    """Every tensor of an op on xs[0]'s device, as the C++ ops check: a fake
    kernel is what runs when one argument is on ``meta``, so it checks too."""
    device = lists["xs"][0].device
    for name, items in lists.items():
        for i, t in enumerate(items):
            if t is not None and t.device != device:
                raise ValueError(f"{name}[{i}]: on {t.device}, but xs[0] is on {device}")


def _register_python_side() -> None:
    @torch.library.register_fake("mmcal::summaries")
    def _(xs, masks, layouts, ct):
        torch._check(len(xs) == len(masks) == len(layouts), lambda: "xs, masks, layouts: lengths differ")
        _one_device(xs=xs, masks=masks)
        return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]

    @torch.library.register_fake("mmcal::modulate")
    def _(xs, gates, layouts):
        torch._check(len(xs) == len(gates) == len(layouts), lambda: "xs, gates, layouts: lengths differ")
        _one_device(xs=xs, gates=gates)
        for x, g, c in zip(xs, gates, layouts):
            torch._check(g.shape[0] == x.shape[0] and g.shape[1] == _channels(x, c), lambda: "gates: expected [B, D]")
        return [torch.empty_like(x) for x in xs]

    @torch.library.register_fake("mmcal::modulate_")
    def _(xs, gates, layouts):
        torch._check(len(xs) == len(gates) == len(layouts), lambda: "xs, gates, layouts: lengths differ")
        _one_device(xs=xs, gates=gates)
        return None

    @torch.library.register_fake("mmcal::gate_grads")
    def _(dys, xs, layouts, ct):
        torch._check(len(xs) == len(dys) == len(layouts), lambda: "grad_ys, xs, layouts: lengths differ")
        _one_device(xs=xs, grad_ys=dys)
        return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]

    @torch.library.register_fake("mmcal::input_grads")
    def _(xs, dys, gates, masks, ds_scaled, layouts):
        torch._check(len(xs) == len(dys) == len(gates) == len(masks) == len(ds_scaled) == len(layouts),
                     lambda: "input_grads: list lengths differ")  # fmt: skip
        _one_device(xs=xs, grad_ys=dys, gates=gates, masks=masks, ds_scaled=ds_scaled)
        return [torch.empty_like(x) for x in xs]

    OPS.register_autograd("mmcal::summaries", "mmcal::modulate", "mmcal::gate_grads", "mmcal::input_grads")
    register_cpp_gate_ops()


# ---- the backends ----------------------------------------------------------


def register_backends() -> None:
    ok = load_extension()
    if ok:
        _register_python_side()
    dtypes = _checks.FEATURE_DTYPES
    common = dict(summary=OPS.summary_one, gates=reference.gates_from_summaries, modulate=OPS.modulate_one,
                  calibrate=OPS.calibrate, modulate_=OPS.modulate_)  # fmt: skip
    backends.register(backends.Backend(
        name="cpu", device_types=("cpu",), dtypes=dtypes, built=ok, usable=ok, why_not=STATUS["why_not"],
        priority=10, notes=f"C++ extension ({STATUS['how'] or 'not loaded'}; kernels {STATUS['cpu_capability'] or '-'})",
        **common,
    ))  # fmt: skip
    cuda_ok = ok and STATUS["cuda_kernels"] and torch.cuda.is_available()
    why = "" if cuda_ok else (STATUS["why_not"] or ("_C was built without CUDA" if not STATUS["cuda_kernels"] else "no GPU visible"))
    backends.register(backends.Backend(
        name="cuda", device_types=("cuda",), dtypes=dtypes, built=ok and STATUS["cuda_kernels"], usable=cuda_ok,
        why_not=why, priority=10, notes="C++/CUDA extension", **common,
    ))  # fmt: skip
