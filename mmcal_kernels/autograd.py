"""The autograd of the kernel backends: steps 1-7 for all modalities as ONE
node (docs/spec.md, "The hot path"), and the gradients of the stage ops.

A kernel backend supplies the ops (``backends.kernel_backend``); this file
chains them, the same for every backend:

* forward: the summaries of every modality (one pass over X), the gate
  network of steps 2-6 (one op on ``[B, D]``-sized tensors), the modulation of
  every modality (one pass);
* backward: ``dg = sum_p dY * X`` (one pass), the gate network's backward for
  ``ds`` and every parameter gradient (one op), then ``dX = dY * g + V * ds /
  count`` written once, skipped when no feature needs a gradient.

Nothing computes between the ops, so ``torch.compile`` traces forward and
backward whole and eager mode dispatches three ops each way. Double backward
is not supported and says so.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from . import checks
from .spec import DIAGNOSTIC_TENSORS, autocast_off, compute_dtype_of_flat, layout_name


def _batched(grads) -> bool:
    """A gradient of torch's legacy vmap, which ``is_grads_batched=True`` and
    ``jacobian(vectorize=True)`` run the backward under (functorch's own
    transforms are not active then)."""
    is_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return is_batched is not None and any(isinstance(g, Tensor) and is_batched(g) for g in grads)


def refuse_second_derivative(what: str, grads=()) -> None:
    """A backward run with create_graph=True (grad mode on) would have to
    differentiate the kernel backends' backward passes, which have no
    derivative: refuse before computing (SPEC: double backward says so).
    A vectorised backward (``is_grads_batched=True``,
    ``jacobian(vectorize=True)``) runs it under vmap, where the ops have no
    batching rule: refuse that too, with the remedy, before torch's own
    error about a batching fallback."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what}: a second derivative (create_graph=True, torch.autograd.functional.hvp, a gradient "
                           "penalty) is not supported by the kernel backends; use backend='reference' for it")  # fmt: skip
    # Traced (torch.compile's backward), neither can be: Dynamo cannot call the legacy check.
    if not torch.compiler.is_compiling() and (torch._C._are_functorch_transforms_active() or _batched(grads)):
        raise RuntimeError(f"{what}: a vectorised backward (torch.autograd.grad(..., is_grads_batched=True), "
                           "torch.autograd.functional.jacobian(vectorize=True), vmap over a backward) is not supported "
                           "by the kernel backends; use backend='reference' for it, or loop over the grad outputs")  # fmt: skip


def _ops_below_autograd(example: Tensor):
    """The fused node is the autograd of the ops it calls: in eager mode they
    run below the Autograd dispatch key, which skips the Python autograd
    kernel that torch.library registered for each (its wrapper and
    redispatch cost about 25 us an op on a CPU; a step calls six). Traced
    (Dynamo, or AOTAutograd's fake tensors) the ops are left as they are:
    the guard there made torch.compile(dynamic=True) recompile per length."""
    if torch.compiler.is_compiling() or is_fake(example):
        return contextlib.nullcontext()
    return torch._C._AutoDispatchBelowAutograd()


def stage_ops_below_autograd(*tensors: Optional[Tensor]):
    """A stage op of the functional API (``summary_pool``, ``gate_modulate``,
    ``calibration_gates``) whose inputs need no gradient, or called with grad
    mode off, runs below the Autograd key as the fused node's ops do: the
    Python autograd kernel that torch.library registered for it costs about
    6 us a call on a CPU, where a small modulation costs 4. Where an input
    needs a gradient, or under a functorch transform, the op keeps its
    autograd. (Dual tensors of forward-mode AD never get here: the backend
    refuses them first.)"""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return contextlib.nullcontext()
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return contextlib.nullcontext()
    return _ops_below_autograd(next(t for t in tensors if t is not None))


def _summaries_and_gates(passes, features, masks, flat_params, layouts, present):
    """Steps 1-6 with the ops of ``passes``, in the compute dtype: (summaries,
    gates, diagnostics, saved). The caller holds autocast off and the ops
    below Autograd."""
    ct = compute_dtype_of_flat(features[0].dtype, flat_params)
    summaries = passes.summaries(features, masks, layouts, ct)
    return (summaries, *passes.gates(summaries, flat_params, present))


def _none_where_unreached(grad_params: list, grad_gates: Sequence) -> list:
    """Where modality m's output (or gate) reached no loss (its incoming
    gradient is None), its gate layers, all but the projection (which also
    feeds the other modalities' context), have no path to the loss: autograd
    gives None there, not zeros, and an optimizer skips a None gradient
    (weight decay included)."""
    for m, grad in enumerate(grad_gates):
        if grad is None:
            grad_params[8 * m + 2 : 8 * m + 8] = [None] * 6
    return grad_params


def make_fused_function(passes, name: str) -> type:
    """An autograd.Function running steps 1-7 with the ops of ``passes`` (a
    KernelBackend): forward = summaries, gates, modulate; backward =
    gate_grads, gates_backward, input_grads. Three ops each way, the shape
    whose launches and bytes are fewest."""

    def run_ops(layouts, num, present, flat):
        features, masks, params = list(flat[:num]), list(flat[num : 2 * num]), list(flat[2 * num :])
        with autocast_off(features[0].device.type), _ops_below_autograd(features[0]):
            summaries, gates, diagnostics, saved = _summaries_and_gates(
                passes, features, masks, params, layouts, present
            )
            outputs = passes.modulate(features, gates, layouts)
        return features, masks, params, summaries, gates, diagnostics, saved, outputs

    def without_graph(layouts, num, present, *flat):
        """forward's outputs with no autograd node: for calls that record no
        graph (no_grad, inference_mode, nothing requiring grad), where
        Function.apply alone costs about 50 us on a CPU host, and under
        torch.export, where each op's own autograd records the graph."""
        *_, diagnostics, _saved, outputs = run_ops(layouts, num, present, flat)
        return (*outputs, *diagnostics)

    def forward(ctx, layouts, num, slots, *unique):
        present, *flat = _from_unique(unique, slots)
        features, masks, params, summaries, gates, diagnostics, saved, outputs = run_ops(layouts, num, present, flat)
        ctx.slots = slots
        ctx.layouts, ctx.num = layouts, num
        ctx.has_present = present is not None
        ctx.mask_slots = [m is not None for m in masks]
        ctx.save_for_backward(
            *features, *[m for m in masks if m is not None], *([present] if present is not None else []),
            *params, *gates, *summaries, *diagnostics, *saved,
        )  # fmt: skip
        ctx.mark_non_differentiable(*diagnostics)
        # The diagnostics never have a gradient: materialising zeros for them
        # would cost an op (a launch) each in every backward.
        ctx.set_materialize_grads(False)
        return (*outputs, *diagnostics)

    def backward(ctx, *grads):
        # create_graph=True runs the backward with grad mode on. Nothing here
        # is differentiable again, and a silently constant gradient (what
        # once_differentiable gives when only the saved inputs need grad) is
        # a wrong result: refuse instead.
        refuse_second_derivative(f"the fused calibration node ({name} kernels)", grads)
        num, layouts = ctx.num, ctx.layouts
        saved = list(ctx.saved_tensors)
        features, saved = saved[:num], saved[num:]
        masks = [saved.pop(0) if has else None for has in ctx.mask_slots]
        present = saved.pop(0) if ctx.has_present else None
        params, saved = saved[: 8 * num], saved[8 * num :]
        gates, summaries, saved = saved[:num], saved[num : 2 * num], saved[2 * num :]
        diagnostics, inter = saved[: 4 + num], saved[4 + num :]
        grad_outputs = list(grads[:num])  # None for an output that reached no loss (not materialised)

        needs = _from_unique(ctx.needs_input_grad[3:], ctx.slots, missing=False)[1:]  # after layouts, num, slots; present
        if not (any(needs[:num]) or any(needs[2 * num :])):
            return (None,) * len(ctx.needs_input_grad)
        # The passes over X run only where they have work: dg where dY exists (an
        # output that reached no loss has dg = 0, a [B, D] zero, not a zero dY of
        # X's size read twice), dX where a feature needs it (a frozen encoder's
        # features get none written). The common step keeps its three ops.
        reached = [m for m in range(num) if grad_outputs[m] is not None]
        wanted = [m for m in range(num) if needs[m]]
        with autocast_off(features[0].device.type), _ops_below_autograd(features[0]):
            dg = [None] * num
            if reached:  # none when autograd hands every output's gradient undefined (gradcheck tries it)
                sums = passes.gate_grads(_pick(grad_outputs, reached), _pick(features, reached),
                                         _pick(layouts, reached), gates[0].dtype)  # fmt: skip
                for m, g in zip(reached, sums):
                    dg[m] = g
            dg = [g if g is not None else torch.zeros_like(gates[m]) for m, g in enumerate(dg)]
            ds, grad_params = passes.gates_backward(dg, summaries, params, present, diagnostics, inter)
            grad_features = [None] * num
            if wanted:
                applied = [gates[m] if grad_outputs[m] is not None else None for m in range(num)]
                dxs = passes.input_grads(*(_pick(t, wanted) for t in (features, grad_outputs, applied, masks, ds, layouts)))
                for m, g in zip(wanted, dxs):
                    grad_features[m] = g
        grad_params = [g if n else None for g, n in zip(grad_params, needs[2 * num :])]
        grad_params = _none_where_unreached(grad_params, grads[:num])
        slot_grads = [None, *grad_features, *([None] * num), *grad_params]  # present, features, masks, parameters
        return (None, None, None, *_to_unique(slot_grads, ctx.slots, len(ctx.needs_input_grad) - 3))

    return type(f"Fused{name.capitalize()}Calibration", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward),
        "without_graph": staticmethod(without_graph),
    })  # fmt: skip


def records_graph(flat: Sequence) -> bool:
    """Whether autograd would record a node for a call on ``flat`` (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in flat)


def _pick(items: Sequence, indices: Sequence[int]) -> list:
    """The entries of ``items`` at ``indices`` (the modalities a pass has work for)."""
    return [items[i] for i in indices]


def _unique(slots_in: Sequence) -> tuple[list[Tensor], tuple[int, ...]]:
    """The distinct tensors of ``slots_in`` and, for each slot, the index of its
    tensor among them (-1 for None). One tensor in several slots is common (a
    mask shared by aligned modalities, tied gate layers, one feature given
    twice), and Dynamo refuses an autograd.Function whose inputs repeat a
    tensor: under torch.compile it broke the graph, and failed fullgraph=True."""
    unique: list[Tensor] = []
    slots = []
    if torch.compiler.is_compiling():
        # By identity, not id(): Dynamo guards an id() on the tensor's own
        # object, so every call with fresh tensors recompiled, until the
        # recompile limit sent the module back to eager.
        for t in slots_in:
            found = next((i for i, u in enumerate(unique) if u is t), -1) if t is not None else -1
            if t is not None and found < 0:
                found = len(unique)
                unique.append(t)
            slots.append(found)
        return unique, tuple(slots)
    index: dict[int, int] = {}
    for t in slots_in:
        if t is None:
            slots.append(-1)
            continue
        if id(t) not in index:
            index[id(t)] = len(unique)
            unique.append(t)
        slots.append(index[id(t)])
    return unique, tuple(slots)


def _from_unique(unique: Sequence, slots: tuple[int, ...], missing=None) -> list:
    """Each slot's entry of ``unique`` (``missing`` where a slot held None)."""
    return [unique[i] if i >= 0 else missing for i in slots]


def _to_unique(slot_grads: Sequence, slots: tuple[int, ...], count: int) -> list:
    """The gradient of each distinct tensor: the sum over the slots it filled,
    as autograd sums the gradients of a tensor used twice."""
    grads: list = [None] * count
    for i, g in zip(slots, slot_grads):
        if i >= 0 and g is not None:
            grads[i] = g if grads[i] is None else grads[i] + g
    return grads


def fused_calibrate(function: type, features, params, layouts, masks, present) -> tuple[list[Tensor], dict]:
    """``reference.calibrate``'s signature, computed by the fused ``function``
    (a ``make_fused_function`` class): through its autograd node where autograd
    records one, else the same three ops called directly."""
    num = len(features)
    masks = list(masks) if masks is not None else [None] * num
    flat = [*features, *masks, *[t for p in params for t in p]]
    if not records_graph(flat) or torch.compiler.is_exporting():
        # Strict torch.export traces an autograd.Function's forward with grad
        # off: its program carried no gradient at all. The ops' own autograd
        # (register_autograd) records under export, strict or not.
        out = function.without_graph(tuple(layouts), num, present, *flat)
    else:
        unique, slots = _unique([present, *flat])
        out = function.apply(tuple(layouts), num, slots, *unique)
    return list(out[:num]), diagnostics_dict(out[num:])


def fused_calibrate_(passes, features, params, layouts, masks, present) -> dict:
    """``calibrate_`` with the ops of ``passes`` (a KernelBackend): the three
    ops of the fused forward, the modulation in place, no autograd node.
    Returns the diagnostics. The caller has checked the arguments and the
    in-place targets."""
    flat_params = [t for p in params for t in p]
    with autocast_off(features[0].device.type):
        # Below Autograd: no Python autograd wrapper per op (they would record
        # nothing here). modulate_ keeps its own C++ Autograd kernel, which
        # refuses what mul_ refuses, and its version-counter bump.
        with _ops_below_autograd(features[0]):
            _, gates, diagnostics, _ = _summaries_and_gates(passes, features, masks, flat_params, layouts, present)
        passes.modulate_(features, gates, layouts)
    return diagnostics_dict(diagnostics)


def diagnostics_dict(diagnostics: Sequence[Tensor]) -> dict:
    """The gate-network ops' diagnostics list in the reference's dict form."""
    named = dict(zip(DIAGNOSTIC_TENSORS, diagnostics[:4]))
    named["dimension_gates"] = list(diagnostics[4:])
    return named


# ---- the stage ops -----------------------------------------------------------


def register_stage_autograd(ops, summaries_op: str, modulate_op: str, gate_grads_op: str, input_grads_op: str) -> None:
    """Gradients of the stage ops ``summaries`` and ``modulate`` through the
    backend's own passes (``ops``, a KernelBackend); the backward ops
    ``gate_grads`` and ``input_grads`` have none, and say so."""

    def summaries_setup(ctx, inputs, output):
        xs, masks, layouts, ct = inputs
        ctx.layouts = layouts
        ctx.mask_slots = [m is not None for m in masks]
        ctx.save_for_backward(*xs, *[m for m in masks if m is not None])

    def summaries_backward(ctx, grads):
        refuse_second_derivative(summaries_op, grads)
        saved = list(ctx.saved_tensors)
        xs, rest = saved[: len(ctx.layouts)], saved[len(ctx.layouts) :]
        masks = [rest.pop(0) if has else None for has in ctx.mask_slots]
        names = [layout_name(c) for c in ctx.layouts]
        none = [None] * len(xs)
        dxs = ops.input_grads(xs, none, none, masks, list(grads), names)  # the op divides by the position count
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
        refuse_second_derivative(modulate_op, grads)
        n = len(ctx.layouts)
        xs, gates = list(ctx.saved_tensors[:n]), list(ctx.saved_tensors[n:])
        names = [layout_name(c) for c in ctx.layouts]
        none = [None] * n
        dxs = ops.input_grads(xs, list(grads), gates, none, none, names)
        dgs = ops.gate_grads(list(grads), xs, names, gates[0].dtype)
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


def register_gates_autograd(gates_op: str, gates_backward_op: str, backward: Callable) -> None:
    """Gradients of a gate-network op (``gates_op``, steps 2-6) through its
    backward op (``backward``, a callable with ``gates_torch.gates_backward``'s
    signature); the backward op itself has none, and says so."""

    def setup(ctx, inputs, output):
        summaries, params, present = inputs
        _, diagnostics, saved = output
        ctx.num, ctx.num_params, ctx.has_present = len(summaries), len(params), present is not None
        ctx.mark_non_differentiable(*diagnostics, *saved)
        # No zeros materialised for the diagnostics and saved outputs: one op each per backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*summaries, *params, *([present] if present is not None else []), *diagnostics, *saved)

    def gates_backward(ctx, grad_gates, _grad_diagnostics, _grad_saved):
        refuse_second_derivative(gates_op, grad_gates)
        saved = list(ctx.saved_tensors)
        summaries, saved = saved[: ctx.num], saved[ctx.num :]
        params, saved = saved[: ctx.num_params], saved[ctx.num_params :]
        present = saved.pop(0) if ctx.has_present else None
        diagnostics, inter = saved[: 4 + ctx.num], saved[4 + ctx.num :]
        # A gate that reached no loss has no gradient: zeros, which the op needs as a tensor.
        reached = list(grad_gates)
        grad_gates = [g if g is not None else torch.zeros_like(s) for g, s in zip(grad_gates, summaries)]
        grad_summaries, grad_params = backward(grad_gates, summaries, params, present, diagnostics, inter)
        return list(grad_summaries), _none_where_unreached(list(grad_params), reached), None

    torch.library.register_autograd(gates_op, gates_backward, setup_context=setup)
    torch.library.register_autograd(gates_backward_op, _no_derivative(gates_backward_op),
                                    setup_context=lambda ctx, inputs, output: None)  # fmt: skip


_IN_PLACE_LIB = torch.library.Library("mmcal", "FRAGMENT")


def register_in_place_refusals(op_name: str) -> None:
    """For an in-place op defined in Python (a triton_op), the Autograd kernel
    that csrc/inplace.cpp gives mmcal::modulate_: refuse what autograd cannot
    record, in the caller's grad mode, then go below autograd. The kernel
    torch generates runs the op under no_grad, where the refusal cannot tell
    a no_grad caller from a training one. torch's own ADInplaceOrView kernel
    still bumps the version counters."""
    namespace, name = op_name.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default

    def autograd_kernel(keyset, xs, gates, layouts):
        checks.refuse_autograd_in_place(xs, gates, op_name)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, xs, gates, layouts)

    _IN_PLACE_LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True, allow_override=True)
