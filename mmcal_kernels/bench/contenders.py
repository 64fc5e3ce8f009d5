"""What is timed: for each contender and pass, a callable over one input set.

Contenders: the reference in eager mode, ``torch.compile`` of the reference,
and every usable kernel backend (found in the registry, so new backends show
up here without edits), in eager mode and, labelled ``<name>+compile``, under
``torch.compile`` (the kernels stay custom ops; Inductor compiles the glue
of steps 2-6 around them). Passes are those of ``floors.PASSES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import backends, ops
from ..module import PreFusionCalibration
from ..reference import compute_dtype
from ..testing import randomize_
from .workloads import Workload, make_inputs

EAGER, COMPILED = "reference", "reference+compile"


@dataclass(frozen=True)
class Contender:
    label: str  # as printed: "reference", "reference+compile", a kernel backend's name, "<name>+compile"
    backend: str
    compiled: bool


def contenders(device: torch.device, compile_reference: bool = True, only=None) -> list[Contender]:
    """``compile_reference`` False leaves out every compiled contender (compiling is most of a run's time)."""
    found = [Contender(EAGER, "reference", False)]
    if compile_reference:
        found.append(Contender(COMPILED, "reference", True))
    for b in backends.available():
        if b.name != "reference" and b.usable and device.type in (b.auto_device_types or b.device_types):
            found.append(Contender(b.name, b.name, False))
            if compile_reference:
                found.append(Contender(f"{b.name}+compile", b.name, True))
    return [c for c in found if only is None or c.label in only]


@dataclass
class InputSet:
    features: list
    masks: list
    present: torch.Tensor
    grad_outputs: list  # materialised random dY, not an expanded view
    summaries: list  # for the gates stage alone
    gates: list  # for the modulation stage alone, in (0, 4)


def input_sets(w: Workload, dtype: torch.dtype, device, count: int, seed: int = 0) -> list[InputSet]:
    sets = []
    for i in range(count):
        features, masks, present = make_inputs(w, dtype, device, seed + i)
        gen = torch.Generator().manual_seed(10_000 + seed + i)
        grads = [torch.randn(x.shape, generator=gen).to(device=device, dtype=dtype) for x in features]
        ct = torch.promote_types(torch.float32, dtype)
        summaries = [torch.randn(w.batch, d, generator=gen).to(device=device, dtype=ct) for d in w.dims]
        gates = [(4 * torch.rand(w.batch, d, generator=gen)).to(device=device, dtype=ct) for d in w.dims]
        sets.append(InputSet(features, masks, present, grads, summaries, gates))
    return sets


def make_module(w: Workload, device, backend: str, param_dtype=torch.float32) -> PreFusionCalibration:
    module = PreFusionCalibration(w.dims, shared_dim=128, layouts=list(w.layouts), backend=backend)
    return randomize_(module, std=0.05).to(device=device, dtype=param_dtype)  # live gates, not the identity


def pass_callables(w: Workload, contender: Contender, module: PreFusionCalibration) -> dict[str, Callable]:
    """pass name -> fn(InputSet) for this contender."""
    layouts, backend = list(w.layouts), contender.backend
    params = [p for p in module.parameters()]
    gate_params = module.gate_params()
    model = torch.compile(module) if contender.compiled else module

    def summary_all(features, masks):
        ct = compute_dtype(features[0].dtype, gate_params)
        return [ops.summary_pool(x, lay, v, compute_dtype=ct, backend=backend) for x, lay, v in zip(features, layouts, masks)]

    def gates(summaries, present):
        return ops.calibration_gates(summaries, gate_params, present, backend=backend)

    def modulate_all(features, gates):
        return [ops.gate_modulate(x, g, lay, backend=backend) for x, g, lay in zip(features, gates, layouts)]

    if contender.compiled:
        summary_all, gates, modulate_all = map(torch.compile, (summary_all, gates, modulate_all))

    def forward(s: InputSet):
        with torch.no_grad():
            return model(s.features, s.masks, s.present)

    def fwd_bwd(s: InputSet):
        features = [x.detach().requires_grad_() for x in s.features]
        ys = model(features, s.masks, s.present)
        return torch.autograd.grad(ys, features + params, s.grad_outputs)

    def fwd_bwd_frozen(s: InputSet):
        ys = model(s.features, s.masks, s.present)
        return torch.autograd.grad(ys, params, s.grad_outputs)

    def summary(s: InputSet):
        with torch.no_grad():
            return summary_all(s.features, s.masks)

    def gates_only(s: InputSet):
        with torch.no_grad():
            return gates(s.summaries, s.present)

    def modulate(s: InputSet):
        with torch.no_grad():
            return modulate_all(s.features, s.gates)

    return {
        "forward": forward, "fwd+bwd": fwd_bwd, "fwd+bwd frozen": fwd_bwd_frozen,
        "summary": summary, "gates": gates_only, "modulate": modulate,
    }  # fmt: skip
