"""The op contract a kernel backend fills, and what the package builds on it.

A kernel backend (the C++ extension: ``mmcal::summaries`` ...; Triton:
``mmcal::triton_summaries`` ...) provides five ops over X with one schema
family, all modalities per call, layouts as int codes (``spec.LAYOUT_CODES``):

* ``summaries(xs, masks, layouts, ct)``: step 1, ``[B, D_m]`` in ct, divided by
  the position count inside the op;
* ``modulate(xs, gates, layouts)``: step 7; ``modulate_`` the same in place;
* ``gate_grads(grad_ys, xs, layouts, ct)``: ``dg = sum_p dY * X``;
* ``input_grads(xs, grad_ys, gates, masks, ds, layouts)``:
  ``dX = dY * g + V * ds / count``, either term None to leave it out;

and the two ops of the gate network (steps 2-6, all modalities at once),
``gates`` and ``gates_backward`` (their contract: ``gates_torch.py``, which is
also the stand-in for a backend that has no such kernels).

``KernelBackend`` adapts them to layout names, and gives the backend registry
its stage functions and the fused node of ``autograd.py``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import autograd, gates_torch
from ..spec import layout_codes
from . import Backend


class KernelBackend:
    def __init__(self, name: str, *, summaries: Callable, modulate: Callable, modulate_: Callable,
                 gate_grads: Callable, input_grads: Callable, gates: Callable = gates_torch.gates,
                 gates_backward: Callable = gates_torch.gates_backward):  # fmt: skip
        self.name = name
        self._summaries, self._modulate, self._modulate_ = summaries, modulate, modulate_
        self._gate_grads, self._input_grads = gate_grads, input_grads
        # The gate network takes flat lists and no layouts: the fused node calls the ops as they are.
        self.gates, self.gates_backward = gates, gates_backward
        self.fused = autograd.make_fused_function(self, name)

    # ---- the passes, all modalities per call, layouts by name ---------------
    def summaries(self, xs, masks, layouts, ct):
        return self._summaries(list(xs), list(masks), layout_codes(layouts), ct)

    def modulate(self, xs, gates, layouts):
        return self._modulate(list(xs), list(gates), layout_codes(layouts))

    def modulate_(self, xs, gates, layouts):
        self._modulate_(list(xs), list(gates), layout_codes(layouts))

    def gate_grads(self, dys, xs, layouts, ct):
        return self._gate_grads(list(dys), list(xs), layout_codes(layouts), ct)

    def input_grads(self, xs, dys, gates, masks, ds, layouts):
        return self._input_grads(list(xs), list(dys), list(gates), list(masks), list(ds), layout_codes(layouts))

    # ---- the backend registry's stage functions ---------------------------
    # Each runs its op below the Autograd key where no input needs a gradient
    # (autograd.stage_ops_below_autograd says why).
    def summary_one(self, x, layout, mask, ct):
        with autograd.stage_ops_below_autograd(x):
            return self.summaries([x], [mask], [layout], ct)[0]

    def modulate_one(self, x, gate, layout):
        ct = torch.promote_types(torch.promote_types(torch.float32, x.dtype), gate.dtype)
        with autograd.stage_ops_below_autograd(x, gate):
            return self.modulate([x], [gate.to(ct)], [layout])[0]

    def gates_stage(self, summaries, params, present):
        """``reference.gates_from_summaries``' signature, computed by the gate-network op
        (differentiable through its registered autograd)."""
        flat = [t for p in params for t in p]
        with autograd.stage_ops_below_autograd(*summaries, *flat):
            gates, diagnostics, _ = self.gates(list(summaries), flat, present)
        return list(gates), autograd.diagnostics_dict(diagnostics)

    def calibrate(self, features, params, layouts, masks, present):
        return autograd.fused_calibrate(self.fused, features, params, layouts, masks, present)

    def calibrate_(self, features, params, layouts, masks, present):
        return autograd.fused_calibrate_(self, features, params, layouts, masks, present)

    def backend(self, name: str, *, device_types, dtypes, built: bool = True, usable: bool = True, why_not: str = "",
                priority: int = 0, auto_device_types: Optional[tuple] = None, notes: str = "") -> Backend:  # fmt: skip
        """The registry entry of a backend computing with these ops."""
        return Backend(
            name=name, device_types=device_types, dtypes=dtypes, summary=self.summary_one,
            gates=self.gates_stage, modulate=self.modulate_one, calibrate=self.calibrate,
            modulate_=self.modulate_, calibrate_=self.calibrate_, built=built, usable=usable, why_not=why_not,
            priority=priority, auto_device_types=auto_device_types, notes=notes,
        )  # fmt: skip
