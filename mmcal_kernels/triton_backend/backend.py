"""The ``"triton"`` backend: the Triton ops as the passes of the fused node,
the stage functions, and the stage ops' autograd.

On CUDA tensors ``"auto"`` prefers the C++/CUDA extension where it is built
(priority 10 against 5): it is compiled ahead of time, so its first call
costs no JIT compile, and no GPU has yet measured which is faster (README,
"Choosing a backend"). Under ``TRITON_INTERPRET=1`` the backend also accepts
CPU tensors, by name only, so that the tests reach the kernels themselves.
"""

from __future__ import annotations

from .. import _checks, backends, reference
from ..pass_ops import PassOps
from . import configs, elementwise, gate_network, reductions  # noqa: F401 (gate_network registers its ops)

OPS = PassOps(
    "triton",
    summaries=reductions.summaries,
    modulate=elementwise.modulate,
    modulate_=elementwise.modulate_,
    gate_grads=reductions.gate_grads,
    input_grads=elementwise.input_grads,
)
OPS.register_autograd("mmcal::triton_summaries", "mmcal::triton_modulate", "mmcal::triton_gate_grads", "mmcal::triton_input_grads")


def register() -> None:
    devices = ("cuda", "cpu") if configs.interpreting() else ("cuda",)
    backends.register(backends.Backend(
        name="triton", device_types=devices, auto_device_types=("cuda",),
        dtypes=_checks.FEATURE_DTYPES,
        summary=OPS.summary_one, gates=reference.gates_from_summaries, modulate=OPS.modulate_one,
        calibrate=OPS.calibrate, modulate_=OPS.modulate_, priority=5,
        notes="Triton kernels" + (" (interpreter)" if configs.interpreting() else ""),
    ))  # fmt: skip
