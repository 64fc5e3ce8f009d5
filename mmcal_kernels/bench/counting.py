"""What one step dispatches: aten/custom compute ops (any device) and CUDA kernel launches.

``count_ops`` runs a step under a ``TorchDispatchMode`` and counts the ops
that compute: views, allocations, detach/alias and scalar reads are left out.
It is meant for eager contenders: dynamo runs a frame eagerly while a
dispatch mode is active, so a compiled step cannot be counted this way (its
rows carry ``None``; on a GPU, ``cuda_launches`` counts them).

``cuda_launches`` runs a step under ``torch.profiler`` and counts the kernels
the GPU ran (memcpy/memset left out) and the host's CUDA-graph launches.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NOT_COMPUTE = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::detach", "aten::alias", "aten::lift_fresh", "aten::_local_scalar_dense", "aten::sym_size",
    "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset", "aten::is_same_size", "aten::set_",
    "aten::resize_", "aten::_unsafe_view", "aten::_has_compatible_shallow_copy_type", "aten::result_type", "aten::promote_types",
}  # fmt: skip


def is_compute(func) -> bool:
    name = func._schema.name
    return not (getattr(func, "is_view", False) or name in NOT_COMPUTE or name.startswith("aten::_to_dense"))


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if is_compute(func):
            self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(step: Callable[[], object]) -> tuple[Optional[int], Optional[dict]]:
    """(compute ops one call of ``step`` dispatches, per op name); (None, None) if it cannot be counted."""
    counter = OpCounter()
    try:
        with counter:
            step()
    except Exception:  # e.g. a higher-order op with no rule for a user mode: no count rather than no row
        return None, None
    return sum(counter.ops.values()), dict(counter.ops)


LAUNCH_APIS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchCooperativeKernel")


def classify_events(events) -> dict:
    """Kernel count from profiler events: GPU-side kernels (no memcpy/memset),
    their summed durations (``kernel_us``: the GPU's busy time, to set
    against a step's wall time, whose rest is the host's), host launch calls,
    and CUDA-graph launches. ``name_us`` splits the busy time by kernel name,
    so a slow step names its slow kernel."""
    kernels, names, name_us = 0, Counter(), Counter()
    launches = graphs = 0
    kernel_us = 0.0
    for e in events:
        device_type = getattr(e, "device_type", None)
        if device_type == torch.autograd.DeviceType.CUDA:
            if not e.name.startswith(("Memcpy", "Memset", "[memory]")):
                kernels += 1
                names[e.name] += 1
                span = getattr(e, "time_range", None)
                us = span.elapsed_us() if span is not None else 0.0
                kernel_us += us
                name_us[e.name] += us
        elif e.name in LAUNCH_APIS:
            launches += 1
        elif e.name == "cudaGraphLaunch":
            graphs += 1
    return {"kernels": kernels, "kernel_us": round(kernel_us, 1), "launch_calls": launches, "graph_launches": graphs,
            "names": dict(names.most_common(12)),
            "name_us": {name: round(us, 1) for name, us in name_us.most_common(12)}}  # fmt: skip


def cuda_launches(step: Callable[[], object]) -> dict:
    """Profile one call of ``step`` (already warm) on the GPU."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return classify_events(prof.events())
