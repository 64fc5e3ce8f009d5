"""docs/spec.md written a second, independent way: loops over samples and modalities
in float64, one formula per line of the spec, no batching.

Slow and only for tiny cases; it exists so that the reference is itself checked
against something not written the same way. It differentiates with autograd.
"""

from __future__ import annotations

import math

import torch


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def _sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def _positions(x, layout):
    """The [P, D] matrix of one sample's features, whatever the layout."""
    if layout == "sequence":
        return x  # [P, D]
    return x.reshape(x.shape[0], -1).T  # [D, *S] -> [P, D]


def oracle(features, params, layouts, masks, present):
    """Returns (outputs, diagnostics) for float64 features and parameters."""
    num = len(features)
    batch = features[0].shape[0]
    masks = masks or [None] * num
    out_rows = [[] for _ in range(num)]
    diag = {k: [] for k in ("agreement", "support", "conflict", "instance_gate")}
    dim_gates = [[] for _ in range(num)]
    for b in range(batch):
        pi = [True] * num if present is None else [bool(present[b, m]) for m in range(num)]
        u = []
        for m in range(num):
            rows = _positions(features[m][b], layouts[m])
            valid = [p for p in range(rows.shape[0]) if masks[m] is None or bool(masks[m][b, p])]
            s = sum((rows[p] for p in valid), torch.zeros(rows.shape[1], dtype=torch.float64)) / max(1, len(valid))
            W, bias = params[m][0], params[m][1]
            h = W @ s + bias
            u.append(h / torch.clamp(torch.sqrt((h * h).sum()), min=1e-6))
        A = torch.stack([torch.stack([u[m].dot(u[n]) for n in range(num)]) for m in range(num)])
        S, C, inst = [], [], []
        for m in range(num):
            others = [n for n in range(num) if n != m and pi[n]]
            k = max(1, len(others))
            S_m = sum((torch.clamp(A[m, n], min=0) for n in others), torch.zeros((), dtype=torch.float64)) / k
            C_m = sum((torch.clamp(-A[m, n], min=0) for n in others), torch.zeros((), dtype=torch.float64)) / k
            c_m = sum((u[n] for n in others), torch.zeros_like(u[m])) / k
            q = torch.cat([u[m] * c_m, u[m] - c_m, S_m.reshape(1), C_m.reshape(1)])
            _, _, Wh, bh, Wi, bi, Wd, bd = params[m]
            e = _gelu(Wh @ q + bh)
            a = Wi @ e + bi  # [1]
            z = Wd @ e + bd  # [D_m]
            ig, dg = 2 * _sigmoid(a), 2 * _sigmoid(z)
            g = ig * dg if pi[m] else torch.ones_like(z)
            x = features[m][b]
            gb = g if layouts[m] == "sequence" else g.reshape((-1,) + (1,) * (x.dim() - 1))
            out_rows[m].append(x * gb)
            S.append(S_m), C.append(C_m), inst.append(ig[0])
            dim_gates[m].append(dg)
        diag["agreement"].append(A)
        diag["support"].append(torch.stack(S))
        diag["conflict"].append(torch.stack(C))
        diag["instance_gate"].append(torch.stack(inst))
    outputs = [torch.stack(rows) for rows in out_rows]
    diagnostics = {k: torch.stack(v) for k, v in diag.items()}
    diagnostics["dimension_gates"] = [torch.stack(v) for v in dim_gates]
    return outputs, diagnostics
