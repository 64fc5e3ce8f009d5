"""The Triton gate network (docs/spec.md steps 2-6; mmcal_kernels/backends/triton/gate_network.py)
against the reference, with every parameter random (at the zero init of the
last layers every gradient through steps 2-5 is zero and a test cannot fail).

Forward: gates, every diagnostic and every saved tensor against
``reference.gates_with_intermediates``. Backward: ``grad_summaries`` and every
parameter gradient against autograd of ``reference.gates_from_summaries`` in
float64 on the same values. Tolerances: ``mmcal_kernels.compare.TOLERANCES`` of
the LEAST precise of the compute dtype and the compared tensor's dtype (a
parameter gradient is rounded once to its parameter's dtype):

    | dtype    | rtol   | atol (x max(1, max|want|)) |
    | float64  | 1e-10  | 1e-10 |
    | float32  | 5e-5   | 5e-6  |
    | float16  | 2e-3   | 5e-4  |
    | bfloat16 | 1.6e-2 | 4e-3  |

The interpreter takes about a second per program and stage, so the cases are
few and small; the 4096-wide one is marked slow.
"""

import re

import pytest
import torch

from triton_env import DEVICE, ON_GPU
from mmcal_kernels import reference
from mmcal_kernels.spec import DIAGNOSTIC_TENSORS, GateParams
from mmcal_kernels.compare import assert_close
from mmcal_kernels.autograd import diagnostics_dict
from mmcal_kernels.backends.triton import configs, gate_network
import triton  # noqa: E402  (after triton_env, which sets the interpreter up)
import triton.language as tl  # noqa: E402

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
PRECISION = [F64, F32, F16, BF16]  # most to least precise
OPCHECK_TESTS = None if ON_GPU else ("test_schema", "test_autograd_registration")


def _loosest(*dtypes):
    return max(dtypes, key=PRECISION.index)


def _make(batch, dims, d, hidden, ct, pdtypes, present, seed=0, strided=False, norm=None):
    """(summaries, flat params, present). ``pdtypes``: one dtype, or one per parameter tensor.
    ``norm`` puts modality 0's projection at the norm clamp: "tiny" (random values times 1e-9:
    0 < ||h_0|| < 1e-6, so the clamp, not the norm, is differentiated) or "zero" (h_0 = 0: u_0 = 0
    and its agreements are exactly 0, where relu'(0) = 0 decides)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        return torch.randn(shape, generator=gen, dtype=F64) * std

    num = len(dims)
    if strided:  # channels not contiguous: a transposed view
        summaries = [rnd(dim, batch).to(ct).t() for dim in dims]
    else:
        summaries = [rnd(batch, dim).to(ct) for dim in dims]
    flat = []
    for dim, r in zip(dims, hidden):
        shapes = [(d, dim), (d,), (r, 2 * d + 2), (r,), (1, r), (1,), (dim, r), (dim,)]
        flat += [rnd(*s, std=0.5) for s in shapes]
    if norm is not None:
        scale = {"zero": 0.0, "tiny": 1e-9}[norm]
        flat[0], flat[1] = flat[0] * scale, flat[1] * scale
    pdtypes = pdtypes if isinstance(pdtypes, (list, tuple)) else [pdtypes] * len(flat)
    flat = [t.to(dt) for t, dt in zip(flat, pdtypes)]
    if present == "some":
        pres = torch.rand(batch, num, generator=gen) > 0.4
        if batch > 0:
            pres[0] = True
    elif present == "none":
        pres = torch.zeros(batch, num, dtype=torch.bool)
    elif present == "one":
        pres = torch.zeros(batch, num, dtype=torch.bool)
        pres[torch.arange(batch), torch.randint(num, (batch,), generator=gen)] = True
    else:
        pres = None
    move = (lambda t: t.to(DEVICE)) if DEVICE != "cpu" else (lambda t: t)
    return [move(s) for s in summaries], [move(p) for p in flat], (move(pres) if pres is not None else None)


def _groups(flat, dtype=None):
    return [GateParams(*[t if dtype is None else t.to(dtype) for t in flat[8 * m : 8 * m + 8]]) for m in range(len(flat) // 8)]


def _check_forward(summaries, flat, present):
    ct = summaries[0].dtype
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(summaries, flat, present)
    diag = diagnostics_dict(diagnostics)
    want_gates, want_diag, inter = reference.gates_with_intermediates(summaries, _groups(flat), present)
    for m, (g, w) in enumerate(zip(gates, want_gates)):
        assert g.dtype == ct
        assert_close(g, w, ct, f"gates[{m}]")
    for key in DIAGNOSTIC_TENSORS:
        assert_close(diag[key], want_diag[key], ct, key)
    for m, (g, w) in enumerate(zip(diag["dimension_gates"], want_diag["dimension_gates"])):
        assert_close(g, w, ct, f"dimension_gates[{m}]")
    u, norm, context, *pre = saved
    assert_close(u, inter.u, ct, "saved u")
    assert_close(norm, torch.cat(inter.norm, 1), ct, "saved norm")
    assert_close(context, inter.context, ct, "saved context")
    for m, (p, w) in enumerate(zip(pre, inter.pre)):
        assert_close(p, w, ct, f"saved pre[{m}]")
    return gates


def _check_backward(summaries, flat, present, seed=7):
    ct = summaries[0].dtype
    gen = torch.Generator().manual_seed(seed)
    grad_gates = [torch.randn(s.shape, generator=gen, dtype=F64).to(device=s.device, dtype=ct) for s in summaries]
    leaves = [s.detach().clone().requires_grad_() for s in summaries] + [p.detach().clone().requires_grad_() for p in flat]
    num = len(summaries)
    gates, _, _ = torch.ops.mmcal.triton_gates(leaves[:num], leaves[num:], present)
    got = torch.autograd.grad(gates, leaves, grad_gates)
    oracle = [t.detach().double().requires_grad_() for t in leaves]
    want_gates, _ = reference.gates_from_summaries(oracle[:num], _groups(oracle[num:]), present)
    want = torch.autograd.grad(want_gates, oracle, [g.double() for g in grad_gates])
    for i, (g, w, leaf) in enumerate(zip(got, want, leaves)):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        name = f"grad summaries[{i}]" if i < num else f"grad params[{i - num}] ({GateParams._fields[(i - num) % 8]})"
        assert_close(g, w, _loosest(ct, leaf.dtype), name)
    return got


CASES = {  # batch, dims, d, hidden (per modality), ct, parameter dtypes, present, options
    "m2-f32-odd-batch-strided": (17, [3, 11], 5, [7, 7], F32, F32, "some", dict(strided=True)),
    "m3-f64-r-differs": (5, [1, 33, 130], 5, [7, 3, 9], F64, F64, None, {}),
    "m4-f32-bf16-params-one-present": (3, [16, 64, 257, 5], 32, [32, 32, 32, 32], F32, BF16, "one", {}),
    "m3-f32-f16-params-all-missing": (4, [2, 3, 4], 5, [7, 7, 7], F32, F16, "none", {}),
    "m2-f64-f32-params-d32": (17, [40, 9], 32, [32, 32], F64, F32, "some", {}),
    "m2-f64-bf16-params-b1": (1, [6, 300], 5, [7, 7], F64, BF16, "some", {}),
    "m2-f32-mixed-params": (2, [4, 3], 5, [7, 7], F32, [F32, BF16, F16, F64, F32, BF16, F16, F64] * 2, None, {}),
    "m3-f64-tiny-norm": (4, [3, 5, 2], 5, [7, 7, 7], F64, F64, "some", dict(norm="tiny")),
    "m3-f32-zero-norm": (4, [3, 5, 2], 5, [7, 7, 7], F32, F32, "some", dict(norm="zero")),
    "m5-fallback-f32-bf16": (6, [3, 4, 2, 5, 3], 5, [7, 3, 7, 7, 4], F32, BF16, "some", {}),
    "m5-fallback-f64": (3, [3, 4, 2, 5, 3], 5, [7, 3, 7, 7, 4], F64, F64, None, {}),
    "m2-b0": (0, [3, 5], 5, [7, 7], F32, F32, "some", {}),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_the_reference(case):
    batch, dims, d, hidden, ct, pdtypes, present, options = CASES[case]
    summaries, flat, pres = _make(batch, dims, d, hidden, ct, pdtypes, present, **options)
    _check_forward(summaries, flat, pres)
    grads = _check_backward(summaries, flat, pres)
    if batch == 0:
        assert all((g == 0).all() for g in grads[len(dims) :]), "B = 0: parameter gradients are zero"


@pytest.fixture
def gate_tiles(monkeypatch):
    """Set MMCAL_TRITON_GATE_BLOCKS for the test (``use("4x16")``); the default again after it."""

    def use(value):
        monkeypatch.setenv(gate_network.SETTING, value)
        gate_network.apply_settings()

    yield use
    monkeypatch.undo()
    gate_network.apply_settings()


# Forward blocks of fewer than 16 samples multiply by broadcasting (tl.dot
# needs 16 rows; the backward takes 16 there), wider slices take fewer, larger
# steps; 16x16 (the default) is every other test's. The cases: several blocks
# with a partial one (B = 17) and strided summaries, fp64 at d = 32, the norm
# clamp; four modalities once.
TILE_CASES = [(t, c) for t in ("1x16", "4x32", "32x16")
              for c in ("m2-f32-odd-batch-strided", "m2-f64-f32-params-d32", "m3-f32-zero-norm")]  # fmt: skip
TILE_CASES += [("8x64", "m2-f32-odd-batch-strided"), ("4x32", "m4-f32-bf16-params-one-present")]


@pytest.mark.parametrize("tiles, case", TILE_CASES)
def test_other_tiles_match_the_reference(gate_tiles, tiles, case):
    gate_tiles(tiles)
    assert gate_network.tiles() == tuple(int(n) for n in tiles.split("x"))
    batch, dims, d, hidden, ct, pdtypes, present, options = CASES[case]
    summaries, flat, pres = _make(batch, dims, d, hidden, ct, pdtypes, present, **options)
    _check_forward(summaries, flat, pres)
    _check_backward(summaries, flat, pres)


def test_the_tiles_reach_the_launches(gate_tiles, monkeypatch):
    """The setting is what the kernels are launched with: the samples a program
    (and so the grid) and the slice; the backward takes at least 16 samples a
    program (gate_network.BACKWARD_MIN_SAMPLES: fewer gave wrong parameter
    gradients on a GPU, a failure the interpreter does not show)."""
    seen = []
    real = configs.launch

    def spy(tuner, grid, args, meta, **kwargs):
        seen.append((meta.get("BLOCK_B"), meta.get("BLOCK_K"), grid(meta)))
        return real(tuner, grid, args, meta, **kwargs)

    monkeypatch.setattr(configs, "launch", spy)
    gate_tiles("4x32")
    summaries, flat, pres = _make(9, [3, 5], 5, [7, 7], F32, F32, "some", seed=13)
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(summaries, flat, pres)
    torch.ops.mmcal.triton_gates_backward([torch.ones_like(g) for g in gates], summaries, flat, pres,
                                          diagnostics, saved)  # fmt: skip
    assert seen[0] == (4, 32, (3,)), seen  # cdiv(9, 4) programs
    assert seen[1] == (16, 32, (1,)), seen  # the backward's 16 samples: cdiv(9, 16) blocks, a program each
    gate_tiles("32x16")
    seen.clear()
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(summaries, flat, pres)
    torch.ops.mmcal.triton_gates_backward([torch.ones_like(g) for g in gates], summaries, flat, pres,
                                          diagnostics, saved)  # fmt: skip
    assert [s[:2] for s in seen[:2]] == [(32, 16), (32, 16)], seen  # above 16, both take the setting


@triton.jit
def _contract_kernel(a_ptr, b_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                     TRANS_A: tl.constexpr):  # fmt: skip
    rm, rk, rn = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    if TRANS_A:  # stored [K, M] and transposed in registers, as the backward's tl.trans(dh)
        a = tl.trans(tl.load(a_ptr + rk[:, None] * M + rm[None, :]))
    else:
        a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], gate_network._mm(a, b))


# (M, K, N, TRANS_A): contracted over K. The forward's blocks of S < 16
# samples (the broadcast branch), and 16 rows (tl.dot), the second also with
# the backward's transposed operand.
CONTRACTIONS = [(s, 16, 16, False) for s in (1, 4, 8, 16)] + [(16, 16, 16, True)]


@pytest.mark.parametrize("m, k, n, trans_a", CONTRACTIONS, ids=lambda v: str(v))
def test_products_match_torch(m, k, n, trans_a):
    """gate_network._mm alone, in the gate kernels' 8 warps, against float64."""
    gen = torch.Generator().manual_seed(k + 3 * m)
    a = torch.randn((k, m) if trans_a else (m, k), generator=gen, dtype=F32)
    b = torch.randn(k, n, generator=gen, dtype=F32)
    a, b = a.to(DEVICE), b.to(DEVICE)
    out = torch.empty(m, n, dtype=F32, device=DEVICE)
    _contract_kernel[(1,)](a, b, out, m, k, n, trans_a, num_warps=8)
    want = (a.t() if trans_a else a).double() @ b.double()
    assert_close(out, want, F32, f"_mm [{m}, {k}] x [{k}, {n}] (transposed operand: {trans_a})")


def test_a_broadcast_product_triton_36_would_make_a_tf32_dot_does_not_compile():
    """[16, 4] x [4, 16]: the shape of the old backward's gradients at 4
    samples a program, which triton 3.6 rewrites into a TF32 tensor-core dot
    that counted K's padding twice (run 9). _mm refuses it at compile time."""
    a = torch.randn(4, 16, dtype=F32, device=DEVICE)
    b = torch.randn(4, 16, dtype=F32, device=DEVICE)
    out = torch.empty(16, 16, dtype=F32, device=DEVICE)
    with pytest.raises(Exception) as caught:
        _contract_kernel[(1,)](a, b, out, 16, 4, 16, True, num_warps=8)
    # Compiled, the message is on a chained cause (a CompilationError shows only the call site).
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("both outer sides >= 16" in text for text in chain), chain


@pytest.mark.parametrize("value", ["16", "3x16", "16x8", "16x16x1", "axb", "0x16"])
def test_a_bad_tiles_setting_raises_naming_the_variable(gate_tiles, value):
    with pytest.raises(ValueError, match=r"MMCAL_TRITON_GATE_BLOCKS='.*': expected SxK with S in \(1, 2, 4, 8, 16, 32\)"):
        gate_tiles(value)


def test_an_empty_tiles_setting_is_the_default(gate_tiles):
    gate_tiles("4x16")
    gate_tiles(" ")
    assert gate_network.tiles() == (gate_network.BLOCK_B, gate_network.BLOCK_K) == (16, 16)


def test_a_nan_summary_is_nan_where_the_reference_makes_it():
    """relu(NaN) is NaN: a NaN summary makes every support and conflict of its
    sample NaN, as in the reference (tl.maximum's default once gave 0 there)."""
    summaries, flat, present = _make(3, [2, 4, 3], 5, [7, 7, 7], F32, F32, None, seed=17)
    summaries[1][1, 2] = float("nan")
    gates, diagnostics, _ = torch.ops.mmcal.triton_gates(summaries, flat, present)
    diag = diagnostics_dict(diagnostics)
    want_gates, want_diag, _ = reference.gates_with_intermediates(summaries, _groups(flat), present)
    pairs = [(f"gates[{m}]", g, w) for m, (g, w) in enumerate(zip(gates, want_gates))]
    pairs += [(key, diag[key], want_diag[key]) for key in DIAGNOSTIC_TENSORS]
    assert want_diag["support"][1].isnan().all() and not want_diag["support"][0].isnan().any()
    for name, got, want in pairs:
        got, want = got.cpu(), want.cpu()
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN at {got.isnan().nonzero().tolist()}, the reference at {want.isnan().nonzero().tolist()}"
        torch.testing.assert_close(got, want, rtol=5e-5, atol=5e-6, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_a_4096_wide_modality():
    summaries, flat, pres = _make(3, [4096, 7], 32, [32, 32], F32, BF16, "some")
    _check_forward(summaries, flat, pres)
    _check_backward(summaries, flat, pres)


def test_gradcheck_float64():
    summaries, flat, pres = _make(2, [2, 3], 2, [3, 2], F64, F64, "some", seed=3)
    leaves = [t.requires_grad_() for t in summaries + flat]

    def gates(*ts):
        return tuple(torch.ops.mmcal.triton_gates(list(ts[:2]), list(ts[2:]), pres)[0])

    assert torch.autograd.gradcheck(gates, leaves, fast_mode=True)


def _op_samples():
    summaries, flat, pres = _make(3, [3, 4], 4, [5, 3], F32, F32, "some", seed=4)
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(summaries, flat, pres)
    grad_gates = [torch.randn_like(g) for g in gates]
    leaves = [s.clone().requires_grad_() for s in summaries], [p.clone().requires_grad_() for p in flat]
    return {
        "triton_gates": (leaves[0], leaves[1], pres),
        "triton_gates_backward": (grad_gates, summaries, flat, pres, list(diagnostics), list(saved)),
    }


@pytest.mark.parametrize("name", ["triton_gates", "triton_gates_backward"])
def test_opcheck(name):
    args = _op_samples()[name]
    torch.library.opcheck(getattr(torch.ops.mmcal, name).default, args, test_utils=OPCHECK_TESTS or
                          ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))  # fmt: skip


def test_second_derivative_raises():
    summaries, flat, pres = _make(2, [3, 4], 4, [5, 3], F64, F64, "some", seed=5)
    leaves = [t.requires_grad_() for t in summaries + flat]
    gates, _, _ = torch.ops.mmcal.triton_gates(leaves[:2], leaves[2:], pres)
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(sum(g.sum() for g in gates), leaves, create_graph=True)
    # The backward op itself, called on inputs that require grad, refuses to be differentiated.
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(summaries, flat, pres)
    grad_gates = [torch.randn_like(g).requires_grad_() for g in gates]
    grad_summaries, _ = torch.ops.mmcal.triton_gates_backward(grad_gates, summaries, flat, pres, diagnostics, saved)
    with pytest.raises(RuntimeError, match="no derivative"):
        grad_summaries[0].sum().backward()


def test_outputs_do_not_require_grad_but_diagnostics_and_saved_are_detached():
    summaries, flat, pres = _make(2, [3, 4], 4, [5, 3], F32, F32, None, seed=6)
    leaves = [t.requires_grad_() for t in summaries + flat]
    gates, diagnostics, saved = torch.ops.mmcal.triton_gates(leaves[:2], leaves[2:], pres)
    assert all(g.requires_grad for g in gates)
    assert not any(t.requires_grad for t in list(diagnostics) + list(saved))


@pytest.mark.parametrize("where", ["summaries[1]", "params[3]", "present"])
def test_device_mismatch_raises_value_error_naming_the_argument(where):
    summaries, flat, pres = _make(2, [3, 4], 4, [5, 3], F32, F32, "some", seed=8)
    if where == "summaries[1]":
        summaries[1] = summaries[1].to("meta")
    elif where == "params[3]":
        flat[3] = flat[3].to("meta")
    else:
        pres = pres.to("meta")
    with pytest.raises(ValueError, match=re.escape(where) + ".*on meta"):
        torch.ops.mmcal.triton_gates(summaries, flat, pres)


BAD = [
    (lambda s, p, q: (s, p[:-1], q), ValueError, r"params: expected 8 tensors per modality \(16\), got 15"),
    (lambda s, p, q: (s, p[:2] + [p[2][:, :-1]] + p[3:], q), ValueError, r"params\[2\] \(hidden_weight of modality 0\): expected \[r, 2d\+2\] = \[r, 10\]"),
    (lambda s, p, q: (s, p[:7] + [p[7].int()] + p[8:], q), TypeError, r"params\[7\] \(dim_bias of modality 0\): expected a floating-point"),
    (lambda s, p, q: ([s[0], s[1].double()], p, q), TypeError, r"summaries\[1\]: dtype torch.float64 differs"),
    (lambda s, p, q: ([s[0].half(), s[1].half()], p, q), TypeError, r"summaries\[0\]: expected the compute dtype"),
    (lambda s, p, q: (s, p, q.int()), TypeError, r"present: expected a bool tensor"),
    (lambda s, p, q: (s, p, q[:, :1]), ValueError, r"present: expected \[B, M\] = \[2, 2\]"),
    (lambda s, p, q: (s[:1], p[:8], None), ValueError, r"summaries: expected one \[B, D_m\] tensor per modality, at least 2, got 1"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_naming_the_argument(i):
    make, exc, match = BAD[i]
    summaries, flat, pres = _make(2, [3, 4], 4, [5, 3], F32, F32, "some", seed=9)
    with pytest.raises(exc, match=match):
        torch.ops.mmcal.triton_gates(*make(summaries, flat, pres))


@pytest.mark.parametrize("zero", ["d", "r"])
def test_a_zero_width_takes_the_torch_formulas(zero):
    """d = 0 or r = 0: empty products, which the C++ ops compute. The kernels'
    tiles need both at least 1, so the call takes the reference's formulas
    (it was refused, naming proj_weight even where r was the zero)."""
    d, hidden = (0, [5, 3]) if zero == "d" else (4, [5, 0])
    summaries, flat, pres = _make(3, [3, 4], d, hidden, F32, F32, "some", seed=12)
    grads = [torch.randn_like(s) for s in summaries]
    runs = {}
    for prefix in ("triton_", ""):
        gates, diagnostics, saved = getattr(torch.ops.mmcal, prefix + "gates")(summaries, flat, pres)
        back = getattr(torch.ops.mmcal, prefix + "gates_backward")(grads, summaries, flat, pres, diagnostics, saved)
        runs[prefix] = [*gates, *diagnostics, *back[0], *back[1]]
    for got, want in zip(runs["triton_"], runs[""]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_launch_counts_and_determinism(monkeypatch):
    launched = []
    real = configs.launch

    def counting(tuner, *args, **kwargs):
        launched.append(tuner.fn.__name__ if hasattr(tuner.fn, "__name__") else str(tuner.fn))
        return real(tuner, *args, **kwargs)

    monkeypatch.setattr(configs, "launch", counting)
    summaries, flat, pres = _make(19, [3, 6, 5], 5, [7, 7, 7], F32, BF16, "some", seed=10)
    leaves = [t.requires_grad_() for t in summaries + flat]
    gates, _, _ = torch.ops.mmcal.triton_gates(leaves[:3], leaves[3:], pres)
    assert len(launched) == 1, f"forward: {launched}"
    grad_gates = [torch.randn_like(g) for g in gates]
    first = torch.autograd.grad(gates, leaves, grad_gates, retain_graph=True)
    assert len(launched) == 3, f"backward: {launched[1:]}"
    again = torch.autograd.grad(gates, leaves, grad_gates)
    for a, b in zip(first, again):
        assert torch.equal(a, b), "the backward is not deterministic"
    # B = 0: no forward launch; the backward's reduction alone writes the zero parameter gradients.
    launched.clear()
    summaries, flat, pres = _make(0, [3, 4], 5, [7, 7], F32, F32, None)
    leaves = [t.requires_grad_() for t in summaries + flat]
    gates, _, _ = torch.ops.mmcal.triton_gates(leaves[:2], leaves[2:], pres)
    torch.autograd.grad(gates, leaves, [torch.zeros_like(g) for g in gates])
    assert len(launched) <= 2, launched


def test_torch_fallback_computes_in_ct_inside_an_autocast_region():
    """Past MAX_SLOTS modalities the ops compute with the reference's formulas
    (torch ops), which autocast would run in a lower dtype: docs/spec.md,
    "Numerics", wants ct whatever autocast says, as the kernels compute."""
    summaries, flat, pres = _make(3, [3, 4, 2, 5, 3], 5, [7, 3, 7, 7, 4], F32, F32, "some", seed=11)
    grads = [torch.randn_like(s) for s in summaries]
    ops = torch.ops.mmcal

    def run():
        gates, diagnostics, saved = ops.triton_gates(summaries, flat, pres)
        return gates, diagnostics, *ops.triton_gates_backward(grads, summaries, flat, pres, diagnostics, saved)

    plain = run()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        auto = run()
    for what, a, b in zip(("gates", "diagnostics", "grad_summaries", "grad_params"), auto, plain):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and torch.equal(x, y), f"{what}[{i}]: {x.dtype}, {(x.double() - y.double()).abs().max()}"


def _formulas(d, hidden, ct=F32, tiles=(16, 16), device="cpu"):
    """gate_network._torch_formulas for two modalities; a CPU device: the H200's budget unless patched."""
    return gate_network._torch_formulas(2, ct, d, hidden, tiles, torch.device(device))


def _check_formulas_taken(monkeypatch, d, hidden, seed):
    """Both ops at (d, hidden) give the reference's values and launch no kernel."""
    launched = []
    monkeypatch.setattr(configs, "launch", lambda tuner, *a, **k: launched.append(tuner))
    summaries, flat, pres = _make(3, [4, 3], d, hidden, F32, F32, "some", seed=seed)
    _check_forward(summaries, flat, pres)
    _check_backward(summaries, flat, pres)
    assert launched == [], f"{len(launched)} kernel launches"
    return summaries


@pytest.mark.parametrize("d, hidden", [(5, [7, 600]), (1100, [7, 7])], ids=["r-600", "d-1100"])
def test_tiles_too_wide_take_the_torch_formulas(monkeypatch, d, hidden):
    """A hidden width past 512 needs 1024-wide tiles, whose forward asked an
    H200 for more shared memory than it has (OutOfResources); such shapes,
    and d past 1024, take the reference's formulas both ways: no kernel, the
    reference's values."""
    _check_formulas_taken(monkeypatch, d, hidden, seed=12)
    assert _formulas(d, hidden)
    assert not _formulas(512, [512]) and not _formulas(1024, [64])


def test_wider_slices_take_the_torch_formulas_sooner(gate_tiles, monkeypatch):
    """A dot stages [width, K] operands in shared memory, and a program of 32
    samples dots 32 rows, so the estimate scales with both: at 16x32, d = 1024
    would ask an H200 for 260 KB (compiled for sm_90), so it takes the torch
    formulas, while d = 512 still takes the kernels."""
    assert not _formulas(1024, [64], tiles=(16, 16))
    assert _formulas(1024, [64], tiles=(16, 32)) and _formulas(64, [512], tiles=(16, 32))
    assert not _formulas(512, [256], tiles=(16, 32)) and not _formulas(256, [128], tiles=(16, 64))
    assert _formulas(512, [64], tiles=(16, 64))
    assert _formulas(1024, [64], tiles=(32, 16)) and not _formulas(512, [64], tiles=(32, 16))
    gate_tiles("16x64")
    _check_formulas_taken(monkeypatch, 512, [7, 7], seed=14)


def test_programs_of_32_samples_take_the_torch_formulas_sooner(gate_tiles, monkeypatch):
    """Through the ops: at 32x16 a program dots 32 rows, and d = 600
    (1024-wide tiles), which fits an H200 at the default, takes the torch
    formulas both ways; the ops pass the setting's sample count to the guard."""
    gate_tiles("32x16")
    _check_formulas_taken(monkeypatch, 600, [7, 7], seed=16)


# (architecture, bytes of shared memory a block may ask for) of four GPUs, and
# (d, r) that must and must not take the kernels there at the default tiles.
GPU_BUDGETS = {
    "H200": ((90, 232448), [(1024, 512), (128, 512)], [(2048, 64), (64, 1024)]),
    "A100": ((80, 166912), [(512, 256), (128, 128)], [(1024, 64), (64, 512)]),
    "RTX 4090": ((89, 101376), [(256, 128), (128, 128)], [(512, 64), (64, 256)]),
    "sm_100, untried": ((100, 232448), [(512, 512)], [(1024, 64)]),
}


@pytest.mark.parametrize("gpu", list(GPU_BUDGETS))
def test_the_tiles_must_fit_the_gpus_shared_memory(gpu, monkeypatch):
    """A launch that asks a block for more shared memory than the GPU gives
    fails (OutOfResources): an A100 gives 163 KB, and the backward at d = 1024
    compiles to 258 KB for sm_80 (210 KB for sm_90, which an H200's 227 KB
    holds). Such calls take the torch formulas on the GPU that lacks the room."""
    (arch, limit), kernels, formulas = GPU_BUDGETS[gpu]
    monkeypatch.setattr(gate_network.shared_memory, "budget", lambda device: (arch, limit))
    for d, r in kernels:
        assert not _formulas(d, [r, 7]), f"{gpu}: d = {d}, r = {r} should take the kernels"
    for d, r in formulas:
        assert _formulas(d, [r, 7]), f"{gpu}: d = {d}, r = {r} should take the torch formulas"


def test_a_float64_tile_takes_more_room():
    """Eight bytes an element, and more than twice the room in the backward:
    compiled for sm_90, the float64 backward asks for 276 KB at d = 512 (the
    float32 one fits an H200 up to d = 1024) and 176 KB at r = 256, so on an
    H200's budget float64 takes the kernels up to d = r = 256."""
    fits = gate_network.shared_memory.fits
    cpu = torch.device("cpu")  # no GPU: the H200's budget
    assert fits(cpu, 1024, 512, 4, (16, 16)) and fits(cpu, 256, 256, 8, (16, 16))
    assert not fits(cpu, 512, 64, 8, (16, 16)) and not fits(cpu, 64, 512, 8, (16, 16))
    # Through the ops' guard (below triton 3.9 every float64 call takes the formulas).
    assert _formulas(512, [64], ct=F64) and _formulas(64, [512], ct=F64) and not _formulas(1024, [512])
    assert _formulas(256, [256], ct=F64) != gate_network.FP64_KERNELS


def test_a_call_too_wide_for_its_gpu_launches_nothing(monkeypatch):
    """End to end, with an A100's budget: d = 600 (1024-wide tiles) fits an
    H200 but not an A100, so both ops compute with the torch formulas."""
    asked = []
    assert not _formulas(600, [7, 7])
    monkeypatch.setattr(gate_network.shared_memory, "budget", lambda device: asked.append(device) or (80, 166912))
    summaries = _check_formulas_taken(monkeypatch, 600, [7, 7], seed=15)
    assert asked and set(asked) == {summaries[0].device}, f"the budget of {asked}, the tensors on {summaries[0].device}"


def test_the_budget_is_the_tensors_gpus():
    """Without a GPU (the interpreter's CPU tensors) the guard takes the H200's budget."""
    shared_memory = gate_network.shared_memory
    assert shared_memory.budget(torch.device("cpu")) == (shared_memory.NO_GPU_ARCH, shared_memory.NO_GPU_LIMIT)
    if ON_GPU:
        props = torch.cuda.get_device_properties(0)
        assert shared_memory.budget(torch.device("cuda", 0)) == (10 * props.major + props.minor,
                                                                 props.shared_memory_per_block_optin)  # fmt: skip


def test_block_widths_are_triton_powers_of_two():
    """The host computes the tiles' widths with a bit shift (triton 3.9's
    next_power_of_2 is a slow constexpr_function on the host); tl.dot needs 16."""
    import triton

    assert [gate_network._pow2(n) for n in range(0, 5000)] == [max(16, triton.next_power_of_2(n)) for n in range(0, 5000)]
