"""What is timed: for each contender and pass, a callable over one input set.

Contenders: the reference in eager mode, ``torch.compile`` of the reference,
on CUDA also ``torch.compile(mode="reduce-overhead")`` of it (CUDA graphs),
and every usable kernel backend (found in the registry, so new backends show
up here without edits), in eager mode and, labelled ``<name>+compile``, under
``torch.compile`` (the kernels stay custom ops). On CUDA each kernel backend
also runs as ``<name>+reduce-overhead``: its few launches replayed as one CUDA
graph, without the host's Python, autograd and allocation per step, the one
way a step can approach the bytes' floor at these sizes. Passes are those of
``floors.PASSES``.

Every compiled contender is compiled through its own ``CompileWatch``
(``compiled.py``): ``fullgraph=True``, and counted so that an eager fallback
or a recompile while timing fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import backends, functional
from ..module import PreFusionCalibration
from ..spec import compute_dtype
from ..compare import randomize_
from .compiled import CompileWatch
from .workloads import Workload, make_inputs

EAGER, COMPILED, GRAPHS = "reference", "reference+compile", "reference+reduce-overhead"


@dataclass(frozen=True)
class Contender:
    label: str  # as printed: "reference", "reference+compile", a kernel backend's name, "<name>+compile"
    backend: str
    compiled: bool
    mode: Optional[str] = None  # torch.compile's mode: None (default) or "reduce-overhead"


def contenders(device: torch.device, compile_reference: bool = True, only=None) -> list[Contender]:
    """``compile_reference`` False leaves out every compiled contender (compiling is most of a run's time)."""
    device = torch.device(device)
    found = [Contender(EAGER, "reference", False)]
    if compile_reference:
        found.append(Contender(COMPILED, "reference", True))
        if device.type == "cuda":  # CUDA graphs: the launch overhead of the small ops of steps 2-6 removed
            found.append(Contender(GRAPHS, "reference", True, "reduce-overhead"))
    for b in backends.available():
        if b.name != "reference" and b.usable and device.type in (b.auto_device_types or b.device_types):
            found.append(Contender(b.name, b.name, False))
            if compile_reference:
                found.append(Contender(f"{b.name}+compile", b.name, True))
                if device.type == "cuda":
                    found.append(Contender(f"{b.name}+reduce-overhead", b.name, True, "reduce-overhead"))
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


def make_module(w: Workload, device, backend: str, param_dtype=torch.float32, shared_dim: int = 128) -> PreFusionCalibration:
    module = PreFusionCalibration(w.dims, shared_dim=shared_dim, layouts=list(w.layouts), backend=backend)
    return randomize_(module, std=0.05).to(device=device, dtype=param_dtype)  # live gates, not the identity


def pass_callables(
    w: Workload, contender: Contender, module: PreFusionCalibration, watch: Optional[CompileWatch] = None
) -> dict[str, Callable]:
    """pass name -> fn(InputSet) for this contender. A compiled contender needs
    its own ``watch`` (call ``compiled.fresh()`` first): every function here is
    compiled through it, new for this contender and workload."""
    layouts, backend = list(w.layouts), contender.backend
    params = [p for p in module.parameters()]
    gate_params = module.gate_params()
    if contender.compiled and watch is None:
        raise ValueError(f"{contender.label}: a compiled contender needs its own CompileWatch")
    model = watch.compile(module) if contender.compiled else module
    mark_step = (
        torch.compiler.cudagraph_mark_step_begin if contender.mode == "reduce-overhead" else (lambda: None)
    )  # CUDA graphs: each call is a new step (its outputs may be overwritten by the next replay)

    def summary_all(features, masks):
        ct = compute_dtype(features[0].dtype, gate_params)
        return [functional.summary_pool(x, lay, v, compute_dtype=ct, backend=backend) for x, lay, v in zip(features, layouts, masks)]

    def gates(summaries, present):
        return functional.calibration_gates(summaries, gate_params, present, backend=backend)

    def modulate_all(features, gates):
        return [functional.gate_modulate(x, g, lay, backend=backend) for x, g, lay in zip(features, gates, layouts)]

    if contender.compiled:
        summary_all, gates, modulate_all = map(watch.compile, (summary_all, gates, modulate_all))

    def forward(s: InputSet):
        mark_step()
        with torch.no_grad():
            return model(s.features, s.masks, s.present)

    def forward_with_grad(s: InputSet):
        """The forward of fwd+bwd alone: (outputs, what to differentiate)."""
        mark_step()
        features = [x.detach().requires_grad_() for x in s.features]
        return model(features, s.masks, s.present), features + params

    def fwd_bwd(s: InputSet):
        ys, inputs = forward_with_grad(s)
        return torch.autograd.grad(ys, inputs, s.grad_outputs)

    def fwd_bwd_frozen(s: InputSet):
        mark_step()
        ys = model(s.features, s.masks, s.present)
        return torch.autograd.grad(ys, params, s.grad_outputs)

    def summary(s: InputSet):
        mark_step()
        with torch.no_grad():
            return summary_all(s.features, s.masks)

    def gates_only(s: InputSet):
        mark_step()
        with torch.no_grad():
            return gates(s.summaries, s.present)

    def gates_fwd_bwd(s: InputSet):
        """The gate network alone, forward and backward: gradients of the
        summaries and every parameter, with the gates' values as dg."""
        mark_step()
        summaries = [t.detach().requires_grad_() for t in s.summaries]
        gate_values, _ = gates(summaries, s.present)
        return torch.autograd.grad(gate_values, summaries + params, s.gates)

    def modulate(s: InputSet):
        mark_step()
        with torch.no_grad():
            return modulate_all(s.features, s.gates)

    return {
        "forward": forward, "fwd+bwd": fwd_bwd, "fwd+bwd frozen": fwd_bwd_frozen,
        "summary": summary, "gates": gates_only, "gates fwd+bwd": gates_fwd_bwd, "modulate": modulate,
        "_forward_with_grad": forward_with_grad,  # not a pass: for the launch counts of fwd+bwd's two halves
    }  # fmt: skip
