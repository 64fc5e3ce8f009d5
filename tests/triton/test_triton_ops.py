"""The Triton ops as ``torch.library`` ops: ``opcheck`` (on CPU under the
interpreter only its schema and autograd-registration checks, whose fake-tensor
checks need a GPU; all of them on a GPU), and bad input sent straight to each
op: a ValueError or TypeError that names the argument, never a kernel launch."""

import pytest
import torch

from conftest import on_meta, tensors_in
from triton_env import DEVICE, ON_GPU

OPCHECK_TESTS = None if ON_GPU else ("test_schema", "test_autograd_registration")


def _samples():
    xs = [torch.randn(2, 5, 3, device=DEVICE), torch.randn(2, 4, 2, 3, device=DEVICE)]
    masks = [(torch.rand(2, 5) > 0.3).to(DEVICE), None]
    gates = [torch.rand(2, 3, device=DEVICE), torch.rand(2, 4, device=DEVICE)]
    dys = [torch.randn_like(t) for t in xs]
    ds = [torch.randn(2, 3, device=DEVICE), torch.randn(2, 4, device=DEVICE)]
    return {
        "triton_summaries": (xs, masks, [0, 1], torch.float32),
        "triton_modulate": ([t.clone().requires_grad_() for t in xs], [g.clone().requires_grad_() for g in gates], [0, 1]),
        "triton_modulate_": ([t.clone() for t in xs], gates, [0, 1]),
        "triton_gate_grads": (dys, xs, [0, 1], torch.float32),
        "triton_input_grads": (xs, dys, gates, masks, ds, [0, 1]),
    }


@pytest.mark.parametrize("name", list(_samples()))
def test_opcheck(name):
    args = _samples()[name]
    torch.library.opcheck(getattr(torch.ops.mmcal, name).default, args, test_utils=OPCHECK_TESTS or
                          ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))  # fmt: skip


def test_opcheck_summaries_with_grad():
    xs, masks, layouts, ct = _samples()["triton_summaries"]
    args = ([x.requires_grad_() for x in xs], masks, layouts, ct)
    torch.library.opcheck(torch.ops.mmcal.triton_summaries.default, args, test_utils=OPCHECK_TESTS or
                          ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))  # fmt: skip


def t(*shape, dtype=torch.float32):
    return torch.randn(shape, device=DEVICE).to(dtype)


def b(*shape):
    return torch.ones(shape, dtype=torch.bool, device=DEVICE)


BAD = [
    ("triton_summaries", lambda: ([t(2, 3)], [None], [0], torch.float32), ValueError, r"xs\[0\]: a 'sequence' input must be \[B, P, D\]"),
    ("triton_summaries", lambda: ([t(2, 3, 4).int()], [None], [0], torch.float32), TypeError, r"xs\[0\]: unsupported dtype torch.int32"),
    ("triton_summaries", lambda: ([t(2, 3, 4)], [b(2, 4)], [0], torch.float32), ValueError, r"masks\[0\]: expected shape \[B, P\] = \(2, 3\)"),
    ("triton_summaries", lambda: ([t(2, 3, 4)], [torch.ones(2, 3, device=DEVICE)], [0], torch.float32), TypeError, r"masks\[0\]: expected a bool tensor \(True = valid position\)"),
    ("triton_summaries", lambda: ([t(2, 4, 3)], [b(2, 3)], [1], torch.float32), ValueError, r"masks\[0\]: masks apply to 'sequence' inputs only"),
    ("triton_summaries", lambda: ([t(2, 3, 4), t(3, 3, 4)], [None, None], [0, 0], torch.float32), ValueError, r"xs\[1\]: batch size 3 differs"),
    ("triton_summaries", lambda: ([t(2, 3, 4), t(2, 3, 4).double()], [None, None], [0, 0], torch.float64), TypeError, r"xs\[1\]: dtype torch.float64 differs"),
    ("triton_summaries", lambda: ([t(2, 3, 4)], [None, None], [0], torch.float32), ValueError, r"masks: expected one entry"),
    ("triton_summaries", lambda: ([t(2, 3, 4)], [None], [2], torch.float32), ValueError, r"layouts\[0\]: expected 0 \(sequence\) or 1"),
    ("triton_summaries", lambda: ([t(2, 3, 4).double()], [None], [0], torch.float32), TypeError, r"ct: expected float32 or float64, at least as wide as x.s torch.float64"),
    ("triton_summaries", lambda: ([t(2, 3, 4)], [None], [0], torch.float16), TypeError, r"ct: expected float32 or float64"),
    ("triton_summaries", lambda: ([], [], [], torch.float32), ValueError, r"xs: expected at least one tensor"),
    ("triton_modulate", lambda: ([t(2, 3, 4)], [torch.rand(2, 5, device=DEVICE)], [0]), ValueError, r"gates\[0\]: expected \[2, 4\]"),
    ("triton_modulate", lambda: ([t(2, 3, 4)], [torch.rand(2, 4, device=DEVICE)] * 2, [0]), ValueError, r"gates: expected one entry"),
    ("triton_modulate_", lambda: ([t(2, 4, 3)], [torch.rand(2, 3, device=DEVICE)], [1]), ValueError, r"gates\[0\]: expected \[2, 4\]"),
    ("triton_modulate", lambda: ([t(2, 3, 4)], [torch.rand(2, 4, device=DEVICE).half()], [0]), TypeError, r"gates\[0\]: expected the compute dtype"),
    ("triton_modulate", lambda: ([t(2, 3, 4).double()], [torch.rand(2, 4, device=DEVICE)], [0]), TypeError, r"gates\[0\]: expected the compute dtype .* holding torch.float64"),
    ("triton_gate_grads", lambda: ([t(2, 3, 5)], [t(2, 3, 4)], [0], torch.float32), ValueError, r"grad_ys\[0\]: expected \(2, 3, 4\)"),
    ("triton_gate_grads", lambda: ([t(2, 3, 4).double()], [t(2, 3, 4)], [0], torch.float32), TypeError, r"grad_ys\[0\]: expected dtype torch.float32, got torch.float64"),
    ("triton_input_grads", lambda: ([t(2, 3, 4)], [None], [None], [None], [None], [0]), ValueError, r"neither is given"),
    ("triton_input_grads", lambda: ([t(2, 3, 4)], [t(2, 3, 4)], [None], [None], [None], [0]), ValueError, r"give both"),
    ("triton_input_grads", lambda: ([t(2, 3, 4)], [None], [None], [None], [torch.rand(2, 3, device=DEVICE)], [0]), ValueError, r"ds\[0\]: expected \[2, 4\]"),
    ("triton_modulate", lambda: ([t(2, 3, 4)] * 2, [torch.rand(2, 4, device=DEVICE), torch.rand(2, 4, device=DEVICE).double()], [0, 0]), TypeError, r"gates\[1\]: expected torch.float32, the compute dtype of gates\[0\] \(one for the call\)"),
    ("triton_input_grads", lambda: ([t(2, 3, 4)], [t(2, 3, 4)], [torch.rand(2, 4, device=DEVICE)], [None], [torch.rand(2, 4, device=DEVICE).double()], [0]), TypeError, r"ds\[0\]: expected torch.float32, the compute dtype of gates\[0\]"),
]


@pytest.mark.parametrize("name,make,exc,match", BAD, ids=[f"{x[0]}-{i}" for i, x in enumerate(BAD)])
def test_bad_input_to_the_triton_ops(name, make, exc, match):
    with pytest.raises(exc, match=match):
        getattr(torch.ops.mmcal, name)(*make())


def _gate_args():
    torch.manual_seed(0)
    flat = []
    for dim in (3, 4):
        flat += [t(5, dim), t(5), t(6, 12), t(6), t(1, 6), t(1), t(dim, 6), t(dim)]
    summaries, present = [t(2, 3), t(2, 4)], b(2, 2)
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(summaries, flat, present)
    return summaries, flat, present, [torch.randn_like(g) for g in gates], list(diagnostics), list(saved)


def _with_sparse(args, position, index=None):
    args = [list(a) if isinstance(a, (list, tuple)) else a for a in args]
    if index is None:
        args[position] = args[position].to_sparse()
    else:
        args[position][index] = args[position][index].to_sparse()
    return args


def _pass_args():
    xs, ys = [t(2, 3, 4), t(2, 5, 3)], [t(2, 3, 4), t(2, 5, 3)]
    return xs, ys, [t(2, 4), t(2, 3)], [b(2, 3), None]


SPARSE = [  # (op, arguments with one sparse tensor, the name the error gives it)
    ("modulate", lambda: _with_sparse((_pass_args()[0], _pass_args()[2], [0, 0]), 1, 1), r"gates\[1\]"),
    ("gate_grads", lambda: _with_sparse((_pass_args()[1], _pass_args()[0], [0, 0], torch.float32), 0, 1), r"grad_ys\[1\]"),
    ("input_grads", lambda: _with_sparse((_pass_args()[0], [None, None], [None, None], [None, None], _pass_args()[2], [0, 0]), 4, 1), r"ds\[1\]"),
    ("summaries", lambda: _with_sparse((_pass_args()[0], _pass_args()[3], [0, 0], torch.float32), 1, 0), r"masks\[0\]"),
    ("summaries", lambda: _with_sparse((_pass_args()[0], [None, None], [0, 0], torch.float32), 0, 1), r"xs\[1\]"),
    ("gates", lambda: _with_sparse(_gate_args()[:3], 0, 1), r"summaries\[1\]"),
    ("gates", lambda: _with_sparse(_gate_args()[:3], 1, 0), r"params\[0\] \(proj_weight of modality 0\)"),
    ("gates", lambda: _with_sparse(_gate_args()[:3], 2), r"present"),
    ("gates_backward", lambda: _with_sparse(_order_backward(_gate_args()), 0, 0), r"grad_gates\[0\]"),
    ("gates_backward", lambda: _with_sparse(_order_backward(_gate_args()), 4, 0), r"diagnostics\[0\]"),
    ("gates_backward", lambda: _with_sparse(_order_backward(_gate_args()), 5, 3), r"saved\[3\]"),
]  # fmt: skip


def _order_backward(args):
    summaries, flat, present, grads, diagnostics, saved = args
    return grads, summaries, flat, present, diagnostics, saved


@pytest.mark.parametrize("name,make,named", SPARSE, ids=[f"{s[0]}-{s[2]}" for s in SPARSE])
def test_a_sparse_argument_is_refused_by_name(name, make, named):
    """The ops read strides, and a sparse tensor has none: a TypeError naming
    it, from the Triton op and from the C++ op of the same name (its kernel for
    keys without one of its own), where torch's own errors named nothing."""
    for prefix in ("triton_", "") if hasattr(torch.ops.mmcal, name) else ("triton_",):
        with pytest.raises(TypeError, match=rf"^{named}: expected a dense \(strided\) tensor, got layout torch.sparse_coo"):
            getattr(torch.ops.mmcal, prefix + name)(*make())


@pytest.mark.parametrize("name", ["summaries", "modulate", "modulate_", "gate_grads", "input_grads", "gates", "gates_backward"])
def test_a_call_on_meta_launches_nothing_and_returns_meta_outputs(name):
    """Meta tensors have shapes and no data: a launch failed copying out of
    them (under the interpreter). Nothing is launched; the outputs match the
    C++ ops' fake kernels in shape, dtype and strides."""
    xs, ys, gates, masks = _pass_args()
    summaries, flat, present, grads, diagnostics, saved = _gate_args()
    args = {
        "summaries": (xs, masks, [0, 0], torch.float32), "modulate": (xs, gates, [0, 0]),
        "modulate_": (xs, gates, [0, 0]), "gate_grads": (ys, xs, [0, 0], torch.float32),
        "input_grads": (xs, ys, gates, masks, gates, [0, 0]), "gates": (summaries, flat, present),
        "gates_backward": (grads, summaries, flat, present, diagnostics, saved),
    }[name]  # fmt: skip
    got = tensors_in(getattr(torch.ops.mmcal, "triton_" + name)(*on_meta(args)))
    assert all(o.is_meta for o in got)
    if hasattr(torch.ops.mmcal, name):
        want = tensors_in(getattr(torch.ops.mmcal, name)(*on_meta(args)))
        assert [(o.shape, o.dtype, o.stride()) for o in got] == [(o.shape, o.dtype, o.stride()) for o in want]
