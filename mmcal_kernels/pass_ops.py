"""What every kernel backend builds on its five ops over X, written once.

A kernel backend (the C++ extension's ``mmcal::summaries`` ...; Triton's
``mmcal::triton_summaries`` ...) provides five ops with one schema family,
layouts as int codes (0 sequence, 1 spatial):

* ``summaries(xs, masks, layouts, ct)``, ``gate_grads(grad_ys, xs, layouts, ct)``;
* ``modulate(xs, gates, layouts)``, ``modulate_(xs, gates, layouts)`` (in place);
* ``input_grads(xs, grad_ys, gates, masks, ds_scaled, layouts)``; the C++ op
  takes ``ds`` there and divides by the count itself (``input_grads_divides``).

``PassOps`` turns them into the fused module path (``fused.py``), the stage
functions of the backend registry, and the autograd of the stage ops.
"""

from __future__ import annotations

import torch

from .fused import XPasses, fused_calibrate, make_fused_function, position_counts, refuse_second_derivative

LAYOUT_CODES = {"sequence": 0, "spatial": 1}
LAYOUT_NAMES = ("sequence", "spatial")


def codes(layouts):
    return [LAYOUT_CODES[lay] for lay in layouts]


class PassOps:
    def __init__(self, name: str, summaries, modulate, modulate_, gate_grads, input_grads, input_grads_divides=False):
        """``input_grads_divides``: the backend's input_grads takes ``ds`` and divides by the count itself."""
        self.name = name
        self.ops = dict(summaries=summaries, modulate=modulate, modulate_=modulate_, gate_grads=gate_grads,
                        input_grads=input_grads)  # fmt: skip
        self.input_grads_divides = input_grads_divides
        self.passes = XPasses(self.summaries, self.modulate, self.gate_grads, self.input_grads, input_grads_divides)
        self.fused = make_fused_function(self.passes, name)

    # ---- the passes, with layout names -----------------------------------
    def summaries(self, xs, masks, layouts, ct):
        return self.ops["summaries"](list(xs), list(masks), codes(layouts), ct)

    def modulate(self, xs, gates, layouts):
        return self.ops["modulate"](list(xs), list(gates), codes(layouts))

    def modulate_(self, xs, gates, layouts):
        self.ops["modulate_"](list(xs), list(gates), codes(layouts))

    def gate_grads(self, dys, xs, layouts, ct):
        return self.ops["gate_grads"](list(dys), list(xs), codes(layouts), ct)

    def input_grads(self, xs, dys, gates, masks, ds_scaled, layouts):
        return self.ops["input_grads"](list(xs), list(dys), list(gates), list(masks), list(ds_scaled), codes(layouts))

    # ---- the backend registry's stage functions ---------------------------
    def summary_one(self, x, layout, mask, ct):
        return self.summaries([x], [mask], [layout], ct)[0]

    def modulate_one(self, x, gate, layout):
        ct = torch.promote_types(torch.promote_types(torch.float32, x.dtype), gate.dtype)
        return self.modulate([x], [gate.to(ct)], [layout])[0]

    def calibrate(self, features, params, layouts, masks, present):
        return fused_calibrate(self.fused, features, params, layouts, masks, present)

    # ---- autograd of the stage ops -----------------------------------------
    def register_autograd(self, summaries_op: str, modulate_op: str, gate_grads_op: str, input_grads_op: str) -> None:
        """Gradients of the stage ops ``summaries`` and ``modulate`` through the backend's own
        passes; the backward ops ``gate_grads`` and ``input_grads`` have none, and say so."""
        ops = self.ops

        def summaries_setup(ctx, inputs, output):
            xs, masks, layouts, ct = inputs
            ctx.layouts = layouts
            ctx.mask_slots = [m is not None for m in masks]
            ctx.save_for_backward(*xs, *[m for m in masks if m is not None])

        def summaries_backward(ctx, grads):
            refuse_second_derivative(summaries_op)
            saved = list(ctx.saved_tensors)
            xs, rest = saved[: len(ctx.layouts)], saved[len(ctx.layouts) :]
            masks = [rest.pop(0) if has else None for has in ctx.mask_slots]
            names = [LAYOUT_NAMES[c] for c in ctx.layouts]
            ds = list(grads)
            if not self.input_grads_divides:
                ds = [g / position_counts(x, lay, v, g.dtype) for g, x, lay, v in zip(grads, xs, names, masks)]
            none = [None] * len(xs)
            dxs = ops["input_grads"](xs, none, none, masks, ds, list(ctx.layouts))
            # torch.library flattens a list of tensors into its items but keeps a
            # list holding None whole: the gradient of `masks` must mirror that.
            masks_grad = [None] * len(xs) if all(ctx.mask_slots) else None
            return dxs, masks_grad, None, None

        torch.library.register_autograd(summaries_op, summaries_backward, setup_context=summaries_setup)

        def modulate_setup(ctx, inputs, output):
            xs, gates, layouts = inputs
            ctx.layouts = layouts
            ctx.save_for_backward(*xs, *gates)

        def modulate_backward(ctx, grads):
            refuse_second_derivative(modulate_op)
            n = len(ctx.layouts)
            xs, gates = list(ctx.saved_tensors[:n]), list(ctx.saved_tensors[n:])
            none = [None] * n
            dxs = ops["input_grads"](xs, list(grads), gates, none, none, list(ctx.layouts))
            dgs = ops["gate_grads"](list(grads), xs, list(ctx.layouts), gates[0].dtype)
            return dxs, [d.to(g.dtype) for d, g in zip(dgs, gates)], None

        torch.library.register_autograd(modulate_op, modulate_backward, setup_context=modulate_setup)

        # Without an autograd kernel torch would let a graph through these ops
        # and give zero with a warning: a silently wrong second derivative.
        for op in (gate_grads_op, input_grads_op):
            torch.library.register_autograd(op, _no_derivative(op), setup_context=lambda ctx, inputs, output: None)


def _no_derivative(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"{op} is a backward pass and has no derivative of its own (a second derivative through "
                           "the kernel backends is not supported; use backend='reference' for it)")  # fmt: skip

    return backward
