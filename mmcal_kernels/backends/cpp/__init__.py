"""The ``"cpu"`` and ``"cuda"`` backends: the compiled extension (csrc/),
loaded by ``load.py``, its ops made a kernel backend by ``ops.py``."""

from __future__ import annotations

import torch

from ... import backends, checks
from . import load, ops


def register() -> None:
    ok = load.load_extension()
    status = load.STATUS
    if ok:
        ops.register()
    dtypes = checks.FEATURE_DTYPES
    backends.register(ops.OPS.backend(
        "cpu", device_types=("cpu",), dtypes=dtypes, built=ok, usable=ok, why_not=status["why_not"], priority=10,
        notes=f"C++ extension ({status['how'] or 'not loaded'}; kernels {status['cpu_capability'] or '-'})",
    ))  # fmt: skip
    cuda_ok = ok and status["cuda_kernels"] and torch.cuda.is_available()
    why = "" if cuda_ok else (status["why_not"] or ("_C was built without CUDA" if not status["cuda_kernels"] else "no GPU visible"))
    backends.register(ops.CUDA_OPS.backend(
        "cuda", device_types=("cuda",), dtypes=dtypes, built=ok and status["cuda_kernels"], usable=cuda_ok,
        why_not=why, priority=10, notes="C++/CUDA extension",
    ))  # fmt: skip
