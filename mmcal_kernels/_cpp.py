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
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import warnings
from typing import Optional

import torch

from . import backends, reference
from .fused import XPasses, fused_calibrate, make_fused_function, position_counts

LAYOUT_CODES = {"sequence": 0, "spatial": 1}
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
    flags = ["-O3", "-fvisibility=hidden", "-std=c++17"]
    ldflags = []
    if torch._C.has_openmp and platform.system() != "Windows":  # else at::parallel_for runs serially (see setup.py)
        flags, ldflags = flags + ["-fopenmp"], ["-fopenmp"]
    print(f"mmcal_kernels: building the C++ kernels for this torch (once; cached in {cache})", file=sys.stderr)
    try:
        if platform.machine().lower() in ("x86_64", "amd64"):
            capabilities = {
                "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
            }
            for cap, cap_flags in capabilities.items():
                load(f"mmcal_cpu_{cap}", [os.path.join(SOURCES, "cpu", f"kernels_{cap}.cpp")], extra_cflags=flags + cap_flags,
                     extra_ldflags=ldflags, build_directory=cache, is_python_module=False, verbose=False)  # fmt: skip
        main = ["registration.cpp", "cpu/passes_cpu.cpp", "cpu/dispatch.cpp", "cpu/kernels_default.cpp"]
        load("mmcal_C", [os.path.join(SOURCES, s) for s in main], extra_cflags=flags, extra_ldflags=ldflags, build_directory=cache,
             is_python_module=False, verbose=False)  # fmt: skip
    except Exception as exc:  # a compiler error, no compiler, ...
        return f"JIT build failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def load_extension() -> bool:
    if STATUS["loaded"]:
        return True
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


# ---- the ops as Python functions of layout names --------------------------


def _codes(layouts):
    return [LAYOUT_CODES[lay] for lay in layouts]


def summaries(xs, masks, layouts, ct):
    return torch.ops.mmcal.summaries(list(xs), list(masks), _codes(layouts), ct)


def modulate(xs, gates, layouts):
    return torch.ops.mmcal.modulate(list(xs), list(gates), _codes(layouts))


def modulate_(xs, gates, layouts):
    torch.ops.mmcal.modulate_(list(xs), list(gates), _codes(layouts))


def gate_grads(dys, xs, layouts, ct):
    return torch.ops.mmcal.gate_grads(list(dys), list(xs), _codes(layouts), ct)


def input_grads(xs, dys, gates, masks, ds_scaled, layouts):
    return torch.ops.mmcal.input_grads(list(xs), list(dys), list(gates), list(masks), list(ds_scaled), _codes(layouts))


PASSES = XPasses(summaries, modulate, gate_grads, input_grads)


# ---- fake (meta) implementations and autograd of the stage ops -------------


def _channels(x, code):
    return x.shape[2] if code == 0 else x.shape[1]


def _register_python_side() -> None:
    @torch.library.register_fake("mmcal::summaries")
    def _(xs, masks, layouts, ct):
        torch._check(len(xs) == len(masks) == len(layouts), lambda: "xs, masks, layouts: lengths differ")
        return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]

    @torch.library.register_fake("mmcal::modulate")
    def _(xs, gates, layouts):
        torch._check(len(xs) == len(gates) == len(layouts), lambda: "xs, gates, layouts: lengths differ")
        for x, g, c in zip(xs, gates, layouts):
            torch._check(g.shape[0] == x.shape[0] and g.shape[1] == _channels(x, c), lambda: "gates: expected [B, D]")
        return [torch.empty_like(x) for x in xs]

    @torch.library.register_fake("mmcal::modulate_")
    def _(xs, gates, layouts):
        torch._check(len(xs) == len(gates) == len(layouts), lambda: "xs, gates, layouts: lengths differ")
        return None

    @torch.library.register_fake("mmcal::gate_grads")
    def _(dys, xs, layouts, ct):
        torch._check(len(xs) == len(dys) == len(layouts), lambda: "grad_ys, xs, layouts: lengths differ")
        return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]

    @torch.library.register_fake("mmcal::input_grads")
    def _(xs, dys, gates, masks, ds_scaled, layouts):
        torch._check(len(xs) == len(dys) == len(gates) == len(masks) == len(ds_scaled) == len(layouts),
                     lambda: "input_grads: list lengths differ")  # fmt: skip
        return [torch.empty_like(x) for x in xs]

    def summaries_setup(ctx, inputs, output):
        xs, masks, layouts, ct = inputs
        ctx.layouts = layouts
        ctx.mask_slots = [m is not None for m in masks]
        ctx.save_for_backward(*xs, *[m for m in masks if m is not None])

    def summaries_backward(ctx, grads):
        saved = list(ctx.saved_tensors)
        xs, rest = saved[: len(ctx.layouts)], saved[len(ctx.layouts) :]
        masks = [rest.pop(0) if has else None for has in ctx.mask_slots]
        layouts = [("sequence", "spatial")[c] for c in ctx.layouts]
        ds = [g / position_counts(x, lay, v, g.dtype) for g, x, lay, v in zip(grads, xs, layouts, masks)]
        none = [None] * len(xs)
        dxs = torch.ops.mmcal.input_grads(xs, none, none, masks, ds, list(ctx.layouts))
        # torch.library flattens a list of tensors into its items but keeps a
        # list holding None whole: the gradient of `masks` must mirror that.
        masks_grad = [None] * len(xs) if all(ctx.mask_slots) else None
        return dxs, masks_grad, None, None

    torch.library.register_autograd("mmcal::summaries", summaries_backward, setup_context=summaries_setup)

    def modulate_setup(ctx, inputs, output):
        xs, gates, layouts = inputs
        ctx.layouts = layouts
        ctx.save_for_backward(*xs, *gates)

    def modulate_backward(ctx, grads):
        n = len(ctx.layouts)
        xs, gates = list(ctx.saved_tensors[:n]), list(ctx.saved_tensors[n:])
        none = [None] * n
        dxs = torch.ops.mmcal.input_grads(xs, list(grads), gates, none, none, list(ctx.layouts))
        dgs = torch.ops.mmcal.gate_grads(list(grads), xs, list(ctx.layouts), gates[0].dtype)
        return dxs, [d.to(g.dtype) for d, g in zip(dgs, gates)], None

    torch.library.register_autograd("mmcal::modulate", modulate_backward, setup_context=modulate_setup)


# ---- the backends ----------------------------------------------------------


def _summary(x, layout, mask, ct):
    return summaries([x], [mask], [layout], ct)[0]


def _modulate(x, gate, layout):
    ct = torch.promote_types(torch.promote_types(torch.float32, x.dtype), gate.dtype)
    return modulate([x], [gate.to(ct)], [layout])[0]


CppFused = make_fused_function(PASSES, "cpp")


def _calibrate(features, params, layouts, masks, present):
    return fused_calibrate(CppFused, features, params, layouts, masks, present)


def register_backends() -> None:
    ok = load_extension()
    if ok:
        _register_python_side()
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    common = dict(summary=_summary, gates=reference.gates_from_summaries, modulate=_modulate, calibrate=_calibrate,
                  modulate_=modulate_)  # fmt: skip
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
