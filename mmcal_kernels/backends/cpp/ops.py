"""The C++ extension's ops (csrc/ops.cpp) as a kernel backend: their fake
kernels (shapes and device checks for ``torch.compile`` and ``meta``), the
autograd of the stage ops, and the ``KernelBackend`` the ``"cpu"`` and
``"cuda"`` backends compute with. Registered once the library has loaded."""

from __future__ import annotations

import torch

from ...autograd import register_stage_autograd
from ...spec import channels, layout_name
from ..kernel_backend import KernelBackend

OPS = KernelBackend(
    "cpp",
    summaries=lambda *a: torch.ops.mmcal.summaries(*a),
    modulate=lambda *a: torch.ops.mmcal.modulate(*a),
    modulate_=lambda *a: torch.ops.mmcal.modulate_(*a),
    gate_grads=lambda *a: torch.ops.mmcal.gate_grads(*a),
    input_grads=lambda *a: torch.ops.mmcal.input_grads(*a),
)  # resolved at call time: the ops exist only once the extension has loaded


def _channels(x, code):
    return channels(x, layout_name(code))


def one_device(**lists) -> None:
    """Every tensor of an op on xs[0]'s device, as the C++ ops check: a fake
    kernel is what runs when one argument is on ``meta``, so it checks too."""
    device = lists["xs"][0].device
    for name, items in lists.items():
        for i, t in enumerate(items):
            if t is not None and t.device != device:
                raise ValueError(f"{name}[{i}]: on {t.device}, but xs[0] is on {device}")


def register() -> None:
    """The fakes and the autograd of the loaded library's ops."""

    @torch.library.register_fake("mmcal::summaries")
    def _(xs, masks, layouts, ct):
        torch._check(len(xs) == len(masks) == len(layouts), lambda: "xs, masks, layouts: lengths differ")
        one_device(xs=xs, masks=masks)
        return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]

    @torch.library.register_fake("mmcal::modulate")
    def _(xs, gates, layouts):
        torch._check(len(xs) == len(gates) == len(layouts), lambda: "xs, gates, layouts: lengths differ")
        one_device(xs=xs, gates=gates)
        for x, g, c in zip(xs, gates, layouts):
            torch._check(g.shape[0] == x.shape[0] and g.shape[1] == _channels(x, c), lambda: "gates: expected [B, D]")
        return [torch.empty_like(x) for x in xs]

    @torch.library.register_fake("mmcal::modulate_")
    def _(xs, gates, layouts):
        torch._check(len(xs) == len(gates) == len(layouts), lambda: "xs, gates, layouts: lengths differ")
        one_device(xs=xs, gates=gates)
        return None

    @torch.library.register_fake("mmcal::gate_grads")
    def _(dys, xs, layouts, ct):
        torch._check(len(xs) == len(dys) == len(layouts), lambda: "grad_ys, xs, layouts: lengths differ")
        one_device(xs=xs, grad_ys=dys)
        return [x.new_empty((x.shape[0], _channels(x, c)), dtype=ct) for x, c in zip(xs, layouts)]

    @torch.library.register_fake("mmcal::input_grads")
    def _(xs, dys, gates, masks, ds, layouts):
        torch._check(len(xs) == len(dys) == len(gates) == len(masks) == len(ds) == len(layouts),
                     lambda: "input_grads: list lengths differ")  # fmt: skip
        one_device(xs=xs, grad_ys=dys, gates=gates, masks=masks, ds=ds)
        return [torch.empty_like(x) for x in xs]

    register_stage_autograd(OPS, "mmcal::summaries", "mmcal::modulate", "mmcal::gate_grads", "mmcal::input_grads")
