"""The ``"triton"`` backend. This file is its import guard and imports no
triton itself: the kernels (``reductions.py``, ``elementwise.py``, with their
launch ``configs.py`` and the modality ``slots.py``) and the backend built on
them (``ops.py``) load only where they can run (a CUDA GPU, or CPU tensors
under ``TRITON_INTERPRET=1``) with a supported Triton; otherwise the backend is
listed as unusable, with the reason ``python -m mmcal_kernels.info`` prints. A
Triton that is present but fails to load gives one warning."""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from ... import backends, checks

SUPPORTED = ((3, 6), (3, 9))  # tested range of triton releases (major, minor), inclusive


LOAD_FAILED = "loading the Triton kernels failed"  # a reason that warns: triton is present but broken


def _release(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)


def _why_not() -> str:
    """Empty when the Triton kernels can run here, else the reason."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if not interpreting and not torch.cuda.is_available():
        return ("installed, but no GPU is visible; set TRITON_INTERPRET=1 to run it on CPU tensors "
                "(slowly, for tests)")  # fmt: skip
    try:  # present but broken (a half-installed wheel, a torch it does not fit): the package still loads
        import triton

        version = triton.__version__
    except Exception as exc:
        return f"{LOAD_FAILED}: importing triton raised {type(exc).__name__}: {exc}"
    low, high = SUPPORTED
    if not low <= _release(version) <= high:
        return f"triton {version} is outside the supported {low[0]}.{low[1]}-{high[0]}.{high[1]}"
    return ""


def register() -> None:
    why = _why_not()
    if not why:
        try:
            from . import ops
        except Exception as exc:  # a triton/torch combination that cannot build the ops
            why = f"{LOAD_FAILED}: {type(exc).__name__}: {exc}"
        else:
            ops.register()
            return
    if why.startswith(LOAD_FAILED):
        warnings.warn(f"mmcal_kernels: backend 'triton' is unavailable ({why})", RuntimeWarning, stacklevel=3)
    backends.register(backends.Backend(
        name="triton", device_types=("cuda",), dtypes=checks.FEATURE_DTYPES, summary=None, gates=None, modulate=None,
        calibrate=None, built=why.startswith("installed"), usable=False, why_not=why, priority=5, notes="Triton kernels",
    ))  # fmt: skip
