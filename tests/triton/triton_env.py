"""Where the Triton tests run, imported first by every file here.

They need the Triton kernels themselves: on a CUDA GPU, or on CPU tensors
under ``TRITON_INTERPRET=1``, which must be set before triton is imported, so
they run in their own pytest process (``tests/run.sh`` runs both). In any
other process they skip, saying why.
"""

import os

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRETING
DEVICE = "cuda" if ON_GPU else "cpu"

if not (INTERPRETING or ON_GPU):
    pytest.skip(
        "Triton tests need a GPU or TRITON_INTERPRET=1 set before triton is imported; "
        "run them in their own process: TRITON_INTERPRET=1 python -m pytest tests/triton",
        allow_module_level=True,
    )

from mmcal_kernels import backends  # noqa: E402

TRITON = backends.get("triton")
if not TRITON.usable:
    pytest.skip(f"backend 'triton' unusable: {TRITON.why_not}", allow_module_level=True)

from mmcal_kernels.backends.triton import configs  # noqa: E402, F401  (for the test files, after the skip above)

gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the interpreter runs neither fake tensors nor torch.compile)")
