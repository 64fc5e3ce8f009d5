"""The passes over X a kernel backend provides, written in plain torch ops: the fused node's glue tested on its
own, apart from any kernel."""

from types import SimpleNamespace

import torch

from mmcal_kernels import gates_torch, reference, spec
from mmcal_kernels.autograd import make_fused_function


def _broadcast(t, x, layout):
    return t.unsqueeze(1) if layout == "sequence" else t.reshape(t.shape + (1,) * (x.dim() - 2))


def summaries(xs, masks, layouts, ct):
    return [reference.summary(x, lay, v, ct) for x, v, lay in zip(xs, masks, layouts)]


def modulate(xs, gates, layouts):
    return [reference.modulate(x, g, lay) for x, g, lay in zip(xs, gates, layouts)]


def gate_grads(dys, xs, layouts, ct):
    out = []
    for dy, x, lay in zip(dys, xs, layouts):
        prod = dy.to(ct) * x.to(ct)
        out.append(prod.sum(1) if lay == "sequence" else prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1))
    return out


def input_grads(xs, dys, gates, masks, dss, layouts):
    out = []
    for x, dy, g, v, ds, lay in zip(xs, dys, gates, masks, dss, layouts):
        total = torch.zeros(x.shape, dtype=g.dtype if g is not None else ds.dtype)
        if dy is not None:
            total = total + dy.to(g.dtype) * _broadcast(g, x, lay)
        if ds is not None:
            term = _broadcast(ds / spec.position_counts(x, lay, v, ds.dtype), x, lay)
            if v is not None:
                term = torch.where(v.unsqueeze(-1), term, 0.0)
            total = total + term
        out.append(total.to(x.dtype))
    return out


TorchFused = make_fused_function(
    SimpleNamespace(summaries=summaries, modulate=modulate, gate_grads=gate_grads, input_grads=input_grads,
                    gates=gates_torch.gates, gates_backward=gates_torch.gates_backward),
    "torch",
)
