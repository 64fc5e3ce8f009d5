"""The registry of backends: what each one is, where it runs, and whether it is usable here.

A backend supplies the three stages and the fused whole of docs/spec.md:
``summary``, ``gates``, ``modulate`` and ``calibrate``, with the signatures of
``mmcal_kernels.reference``. ``resolve`` turns a user's choice (a name, or
``"auto"``) into a backend for a device. Usability, and what ``"auto"`` picks
on each device type, are decided once, when a backend registers, so that
resolving inside a compiled forward is a plain dictionary lookup (no graph
break, with the default constructor under ``fullgraph=True`` too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import reference


@dataclass(frozen=True)
class Backend:
    name: str
    device_types: tuple[str, ...]  # devices whose tensors it computes on
    dtypes: tuple[torch.dtype, ...]  # feature dtypes it accepts
    summary: Callable
    gates: Callable
    modulate: Callable
    calibrate: Callable
    modulate_: Callable = None  # in place, for inference: (xs, gates, layouts) -> None
    # calibrate_ whole, checks done: (features, params, layouts, masks, present)
    # -> diagnostics; None: summary, gates and modulate_ one stage at a time
    calibrate_: Optional[Callable] = None
    built: bool = True
    usable: bool = True
    why_not: str = ""  # when not built or not usable, the reason
    priority: int = 0  # "auto" takes the usable backend of highest priority
    # devices "auto" may pick it for (None: all of device_types); Triton's
    # interpreter runs on CPU tensors, but only when asked for by name
    auto_device_types: Optional[tuple[str, ...]] = None
    notes: str = field(default="", compare=False)


_REGISTRY: dict[str, Backend] = {}
_AUTO: dict[str, str] = {}  # device type -> the name of what "auto" picks there


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend
    # Decided here, not per call: inside a compiled forward "auto" is then one
    # dictionary lookup that dynamo guards on, never a traced max() over a
    # generator with a key function (a graph break, an error under fullgraph).
    _AUTO.clear()
    for b in _REGISTRY.values():
        if b.usable:
            for device_type in b.auto_device_types or b.device_types:
                if device_type not in _AUTO or b.priority > _REGISTRY[_AUTO[device_type]].priority:
                    _AUTO[device_type] = b.name


def available() -> list[Backend]:
    """Every registered backend, usable or not, in registration order."""
    return list(_REGISTRY.values())


def get(name: str) -> Backend:
    """The registered backend called ``name``, usable or not (``"auto"`` names none)."""
    if name not in _REGISTRY:
        raise ValueError(f"name: no backend called {name!r}; registered: {tuple(_REGISTRY)}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return ("auto",) + tuple(_REGISTRY)


def check_name(name: str, arg: str = "backend") -> str:
    if name not in names():
        raise ValueError(f"{arg}: unknown backend {name!r}; expected one of {names()}")
    return name


def _under_torch_func() -> bool:
    """Inside torch.func.grad / vmap / jacrev, where only the reference (plain
    torch ops) works. A traced call is left to torch.compile."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def resolve(name: str, device_type: str, arg: str = "backend") -> Backend:
    """The backend that computes a call whose tensors are on ``device_type``."""
    check_name(name, arg)
    transformed = _under_torch_func()
    if name == "auto":
        if transformed:
            return _REGISTRY["reference"]
        return _REGISTRY[_AUTO.get(device_type, "reference")]  # the reference runs on any device
    backend = _REGISTRY[name]
    if transformed and name != "reference":
        raise RuntimeError(
            f"{arg}: backend {name!r} does not run under torch.func transforms (grad, vmap, jacrev, ...): its ops have "
            "no batching rules and its autograd no functorch form; use backend='auto' (the reference there) or "
            "'reference'"
        )
    if not backend.usable:
        raise RuntimeError(f"{arg}: backend {name!r} is not usable here: {backend.why_not}")
    if device_type not in backend.device_types:
        raise ValueError(
            f"{arg}: backend {name!r} runs on {backend.device_types} tensors, got {device_type} tensors"
        )
    return backend


register(
    Backend(
        name="reference",
        device_types=("cpu", "cuda", "meta", "mps", "xpu"),
        dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
        summary=reference.summary,
        gates=reference.gates_from_summaries,
        modulate=reference.modulate,
        calibrate=reference.calibrate,
        modulate_=reference.modulate_,
        priority=0,
        notes="plain PyTorch, autograd backward; the oracle",
    )
)
