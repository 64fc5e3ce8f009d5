"""The ``"triton"`` backend: the Triton ops (the passes over X, the gate
network) as a kernel backend, and the autograd of its stage ops.

On CUDA tensors ``"auto"`` prefers the C++/CUDA extension where it is built
(priority 10 against 5): it is compiled ahead of time, so its first call
costs no JIT compile, and on an H200 its eager step was 1.9-3.3x faster with
the same launch counts (docs/kernels.md, "Choosing a backend on a GPU"). Under ``TRITON_INTERPRET=1`` the backend also accepts
CPU tensors, by name only, so that the tests reach the kernels themselves.
"""

from __future__ import annotations

from ... import backends, checks
from ...autograd import register_gates_autograd, register_in_place_refusals, register_stage_autograd
from ..kernel_backend import KernelBackend
from . import configs, elementwise, gate_network, reductions

OPS = KernelBackend(
    "triton",
    summaries=reductions.summaries,
    modulate=elementwise.modulate,
    modulate_=elementwise.modulate_,
    gate_grads=reductions.gate_grads,
    input_grads=elementwise.input_grads,
    gates=gate_network.gates,
    gates_backward=gate_network.gates_backward,
)
register_stage_autograd(OPS, "mmcal::triton_summaries", "mmcal::triton_modulate", "mmcal::triton_gate_grads", "mmcal::triton_input_grads")
register_gates_autograd("mmcal::triton_gates", "mmcal::triton_gates_backward", gate_network.gates_backward)
register_in_place_refusals("mmcal::triton_modulate_")


def register() -> None:
    devices = ("cuda", "cpu") if configs.interpreting() else ("cuda",)
    backends.register(OPS.backend(
        "triton", device_types=devices, auto_device_types=("cuda",), dtypes=checks.FEATURE_DTYPES, priority=5,
        notes="Triton kernels" + (" (interpreter)" if configs.interpreting() else ""),
    ))  # fmt: skip
