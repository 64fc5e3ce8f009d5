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
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad

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
    """Every name ``backend=`` takes: ``"auto"``, then the registered backends in registration order."""
    return ("auto",) + tuple(_REGISTRY)


def check_name(name: str, arg: str = "backend") -> str:
    if name not in names():
        raise ValueError(f"{arg}: unknown backend {name!r}; expected one of {names()}")
    return name


def _tensors(inputs):
    """The tensors in ``inputs``: tensors, None, and lists or tuples of them (GateParams)."""
    for item in inputs:
        if isinstance(item, Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            yield from _tensors(item)


def _has_tangent(inputs) -> bool:
    """A forward-AD level is open and an input carries a tangent. The kernel
    ops have no forward derivative, and below the Autograd key (where the
    kernel backends call them) a tangent is dropped without a word: the
    output would read as having a zero JVP."""
    # No dual_level() open: the common case, one read. (A private name: should a torch
    # drop it, every call looks at its inputs' tangents instead of skipping.)
    level = getattr(forward_ad, "_current_level", None)
    if level is not None and level < 0:
        return False
    return any(forward_ad.unpack_dual(t).tangent is not None for t in _tensors(inputs))


def _only_reference_runs(inputs) -> Optional[str]:
    """Why only the reference (plain torch ops) can compute this call, or None.
    A call traced by torch.compile is left to it (it takes every backend)."""
    if torch.compiler.is_compiling():
        return None
    if torch._C._are_functorch_transforms_active():
        return ("does not run under torch.func transforms (grad, vmap, jacrev, ...): its ops have no batching rules "
                "and its autograd no functorch form")  # fmt: skip
    if _has_tangent(inputs):
        return ("does not run under forward-mode AD (torch.autograd.forward_ad: an input is a dual tensor): its ops "
                "have no forward derivative")  # fmt: skip
    if torch.jit.is_tracing():
        return ("does not run under torch.jit.trace (the tracer refuses its ops' lists of optional tensors); "
                "torch.compile and torch.export take every backend")  # fmt: skip
    return None


def resolve(name: str, device_type: str, arg: str = "backend", inputs: Sequence = ()) -> Backend:
    """The backend that computes a call whose tensors are on ``device_type``.
    ``inputs`` (the call's tensors, or lists of them) are looked at only for
    tangents of forward-mode AD."""
    check_name(name, arg)
    reference_only = _only_reference_runs(inputs)
    if name == "auto":
        if reference_only:
            return _REGISTRY["reference"]
        return _REGISTRY[_AUTO.get(device_type, "reference")]  # the reference runs on any device
    backend = _REGISTRY[name]
    if reference_only and name != "reference":
        raise RuntimeError(f"{arg}: backend {name!r} {reference_only}; use backend='auto' (the reference there) or "
                           "'reference'")  # fmt: skip
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
