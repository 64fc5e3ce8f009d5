"""Each Triton pass alone against float64 torch, with EVERY autotune
configuration launched explicitly (``configs.forced``): layouts with 0-3
trailing dims, masks, strides (channels_last, transposed, sliced, permuted),
sizes that are multiples of no block, every dtype, B=0, P=0, position slices,
and more modalities than one launch holds."""

import pytest
import torch

from triton_env import DEVICE, configs
from mmcal_kernels.spec import layout_name, position_counts
from mmcal_kernels.compare import assert_close
from mmcal_kernels.backends.triton import elementwise, reductions
from mmcal_kernels.backends.triton.slots import MAX_SLOTS

SEQ, SPA = 0, 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _ct(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _make(kind, batch, dtype, gen):
    """(tensor, layout code): one modality of each memory layout the kernels meet."""
    def rnd(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)

    if kind == "sequence":
        return rnd(batch, 19, 37), SEQ
    if kind == "sequence-transposed":  # channels not contiguous: [B, D, P] seen as [B, P, D]
        return rnd(batch, 21, 13).transpose(1, 2), SEQ
    if kind == "sequence-sliced":
        return rnd(batch, 30, 40)[:, ::3, 1:34], SEQ
    if kind == "spatial-0":
        return rnd(batch, 29), SPA
    if kind == "spatial-1":
        return rnd(batch, 11, 17), SPA
    if kind == "spatial-2-channels-last":
        return rnd(batch, 33, 5, 3).to(memory_format=torch.channels_last), SPA
    if kind == "spatial-3-channels-last":
        return rnd(batch, 9, 2, 3, 5).to(memory_format=torch.channels_last_3d), SPA
    if kind == "spatial-2-permuted":  # trailing dims that do not flatten: a copy path
        return rnd(batch, 7, 6, 5).permute(0, 1, 3, 2), SPA
    raise ValueError(kind)


KINDS = ["sequence", "sequence-transposed", "sequence-sliced", "spatial-0", "spatial-1", "spatial-2-channels-last",
         "spatial-3-channels-last", "spatial-2-permuted"]  # fmt: skip
GROUPS = {  # at most MAX_SLOTS a launch; "five" takes two launches
    "seq-mix": ["sequence", "spatial-1", "sequence-transposed"],
    "spatial": ["spatial-0", "spatial-2-channels-last", "spatial-3-channels-last", "spatial-2-permuted"],
    "five": ["sequence-sliced", "spatial-1", "sequence", "spatial-0", "spatial-2-channels-last"],
}
assert len(GROUPS["five"]) > MAX_SLOTS


def _case(group, batch, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    made = [_make(k, batch, dtype, gen) for k in GROUPS[group]]
    xs, layouts = [m[0] for m in made], [m[1] for m in made]
    masks = []
    for x, lay in zip(xs, layouts):
        if lay == SEQ:
            mask = torch.rand((batch, x.shape[1]), generator=gen) > 0.35
            masks.append(mask.to(DEVICE))
        else:
            masks.append(None)
    return xs, layouts, masks


def _flat(x, lay):
    """[B, P, D] float64 view of the expected values."""
    x = x.double()
    return x if lay == SEQ else x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)


def _gate_view(g, x, lay):
    return g.unsqueeze(1) if lay == SEQ else g.reshape(g.shape + (1,) * (x.dim() - 2))


def _channels(x, lay):
    return x.shape[2] if lay == SEQ else x.shape[1]


def _rand_like_gate(x, lay, ct, gen, low=0.0):
    return (torch.rand((x.shape[0], _channels(x, lay)), generator=gen, dtype=torch.float64) * 4 + low).to(ct).to(DEVICE)


def _cases(table):
    """Every configuration x every dtype on one group; every group on float32 and bfloat16."""
    first = list(GROUPS)[0]
    cases = [(c, d, first) for c in range(len(table)) for d in DTYPES]
    return cases + [(c, d, g) for c in range(len(table)) for d in (torch.float32, torch.bfloat16) for g in list(GROUPS)[1:]]


@pytest.mark.parametrize("config, dtype, group", _cases(configs.REDUCE_CONFIGS), ids=str)
@pytest.mark.parametrize("slices", [None, 3])
def test_reductions(config, dtype, group, slices):
    xs, layouts, masks = _case(group, 3, dtype, seed=config)
    xs[0] = xs[0].clone()
    if layouts[0] == SEQ:  # a NaN at a padded position must reach no summary
        masks[0][1, 2] = False
        xs[0][1, 2, :] = float("nan")
    ct = _ct(dtype)
    gen = torch.Generator().manual_seed(7)
    dys = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE) for x in xs]
    with configs.forced(reductions.reduce_kernel, configs.REDUCE_CONFIGS[config][1]):
        means_sliced = reductions.reduce_all(xs, None, masks, layouts, ct, num_slices=slices)
        means = torch.ops.mmcal.triton_summaries(xs, masks, layouts, ct)
        dgs = torch.ops.mmcal.triton_gate_grads(dys, xs, layouts, ct)
        dgs_sliced = reductions.reduce_all(xs, dys, None, layouts, ct, num_slices=slices)
    for i, (x, lay, m) in enumerate(zip(xs, layouts, masks)):
        fx = _flat(x, lay)
        valid = m.to(torch.float64).unsqueeze(-1) if m is not None else torch.ones_like(fx[..., :1])
        want_sum = torch.where(valid > 0, fx, 0.0).sum(1)
        want_mean = want_sum / valid.sum(1).clamp_min(1)
        assert means_sliced[i].dtype == means[i].dtype == dgs[i].dtype == ct
        # Without dY the reduction is the summary: each slice divides its part by the row's count.
        assert_close(means_sliced[i], want_mean.to(ct), dtype, f"summary sliced[{i}]")
        assert_close(means[i], want_mean.to(ct), dtype, f"summary[{i}]")
        if not (m is not None and i == 0):  # dg sums every position, the NaN included
            want_dg = (_flat(dys[i], lay) * fx).sum(1)
            assert_close(dgs[i], want_dg.to(ct), dtype, f"dg[{i}]")
            assert_close(dgs_sliced[i], want_dg.to(ct), dtype, f"dg sliced[{i}]")


@pytest.mark.parametrize("config, dtype, group", _cases(configs.MAP_CONFIGS), ids=str)
def test_elementwise(config, dtype, group):
    xs, layouts, masks = _case(group, 3, dtype, seed=10 + config)
    ct = _ct(dtype)
    gen = torch.Generator().manual_seed(8)
    gates = [_rand_like_gate(x, lay, ct, gen) for x, lay in zip(xs, layouts)]
    ds = [_rand_like_gate(x, lay, ct, gen, low=-2.0) for x, lay in zip(xs, layouts)]
    dys = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE) for x in xs]
    if layouts[0] == SEQ:  # a non-finite ds at a padded position must not leak into it
        masks[0][0, 1] = False
        ds[0][0, :5] = float("inf")
    none = [None] * len(xs)
    with configs.forced(elementwise.map_kernel, configs.MAP_CONFIGS[config][1]):
        ys = torch.ops.mmcal.triton_modulate(xs, gates, layouts)
        full = torch.ops.mmcal.triton_input_grads(xs, dys, gates, masks, ds, layouts)
        ds_only = torch.ops.mmcal.triton_input_grads(xs, none, none, masks, ds, layouts)
        dy_only = torch.ops.mmcal.triton_input_grads(xs, dys, gates, none, none, layouts)
        inplace = [x.clone() for x in xs]
        torch.ops.mmcal.triton_modulate_(inplace, gates, layouts)
    for i, (x, lay, m) in enumerate(zip(xs, layouts, masks)):
        # dX's ds term is divided by the summary's position count inside the op.
        count = position_counts(x, layout_name(lay), m, torch.float64)
        g, q = _gate_view(gates[i].double(), x, lay), _gate_view(ds[i].double() / count, x, lay)
        if m is not None:
            valid = m.unsqueeze(-1)
        else:
            valid = torch.ones((), dtype=torch.bool, device=DEVICE)
        want_y = x.double() * g
        want_ds = torch.where(valid, q, 0.0).expand(x.shape)
        want_dy = dys[i].double() * g
        for got, want, name in ((ys[i], want_y, "Y"), (inplace[i], want_y, "Y in place"), (full[i], want_dy + want_ds, "dX"),
                                (ds_only[i], want_ds, "dX (ds only)"), (dy_only[i], want_dy, "dX (dY only)")):  # fmt: skip
            assert got.shape == x.shape and got.dtype == x.dtype, name
            if name != "Y in place":
                assert got.stride() == torch.empty_like(x).stride(), f"{name}[{i}]: not allocated like X"
            if m is not None:  # sample 0's ds is inf: its valid positions get inf, its padded one none
                assert torch.isfinite(got[0, 1]).all(), f"{name}[{i}]: the inf ds reached a padded position"
            assert_close(got, want.to(x.dtype), x.dtype, f"{name}[{i}]")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_features_with_float64_gates(dtype):
    """Float64 parameters make ct float64 under half features: the maps round
    each value from float64 to the half type as torch's .to() does (through
    float32). A direct cast read garbage in the interpreter."""
    xs, layouts, masks = _case(list(GROUPS)[0], 3, dtype, seed=21)
    gen = torch.Generator().manual_seed(9)
    gates = [_rand_like_gate(x, lay, torch.float64, gen) for x, lay in zip(xs, layouts)]
    ds = [_rand_like_gate(x, lay, torch.float64, gen, low=-2.0) for x, lay in zip(xs, layouts)]
    dys = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE) for x in xs]
    ys = torch.ops.mmcal.triton_modulate(xs, gates, layouts)
    dxs = torch.ops.mmcal.triton_input_grads(xs, dys, gates, masks, ds, layouts)
    inplace = [x.clone() for x in xs]
    torch.ops.mmcal.triton_modulate_(inplace, gates, layouts)
    for i, (x, lay, m) in enumerate(zip(xs, layouts, masks)):
        count = position_counts(x, layout_name(lay), m, torch.float64)
        g, q = _gate_view(gates[i], x, lay), _gate_view(ds[i] / count, x, lay)
        valid = m.unsqueeze(-1) if m is not None else torch.ones((), dtype=torch.bool, device=DEVICE)
        want_y = (x.double() * g).to(dtype)
        want_dx = (dys[i].double() * g + torch.where(valid, q, 0.0)).to(dtype)
        assert_close(ys[i], want_y, dtype, f"Y[{i}]")
        assert_close(inplace[i], want_y, dtype, f"Y in place[{i}]")
        assert_close(dxs[i], want_dx, dtype, f"dX[{i}]")


@pytest.mark.parametrize("batch, positions", [(0, 5), (3, 0)])
def test_empty(batch, positions):
    xs = [torch.randn(batch, positions, 6, device=DEVICE), torch.randn(batch, 4, positions, device=DEVICE)]
    masks = [torch.ones(batch, positions, dtype=torch.bool, device=DEVICE), None]
    layouts = [SEQ, SPA]
    gates = [torch.rand(batch, 6, device=DEVICE), torch.rand(batch, 4, device=DEVICE)]
    means = torch.ops.mmcal.triton_summaries(xs, masks, layouts, torch.float32)
    assert [tuple(m.shape) for m in means] == [(batch, 6), (batch, 4)]
    assert all((m == 0).all() for m in means)  # P = 0: max(1, 0) divides a zero sum
    ys = torch.ops.mmcal.triton_modulate(xs, gates, layouts)
    assert [y.shape for y in ys] == [x.shape for x in xs]
    dgs = torch.ops.mmcal.triton_gate_grads(ys, xs, layouts, torch.float32)
    assert all((d == 0).all() for d in dgs)


def test_offsets_past_2_31_elements_use_int64():
    """A batch stride of 2^30 elements: sample 2 starts past 2^31, where int32
    offsets wrap (the interpreter wraps them like a GPU would). The storage is
    reserved, never touched beyond the few elements the view reads."""
    stride = 2**30
    storage = torch.empty(2 * stride + 2 * 8, dtype=torch.bfloat16, device=DEVICE)
    x = storage.as_strided((3, 2, 8), (stride, 8, 1))
    values = torch.randn(3, 2, 8).to(torch.bfloat16)
    for b in range(3):
        x[b].copy_(values[b])
    mask = torch.tensor([[True, False], [True, True], [False, True]], device=DEVICE)
    gate = torch.rand(3, 8, device=DEVICE)
    means = torch.ops.mmcal.triton_summaries([x], [mask], [SEQ], torch.float32)[0]
    want = (values.double() * mask.cpu().double().unsqueeze(-1)).sum(1) / mask.cpu().sum(1, keepdim=True)
    assert_close(means.cpu(), want.float(), torch.bfloat16, "summary")
    y = torch.ops.mmcal.triton_modulate([x], [gate], [SEQ])[0]
    assert_close(y.cpu(), (values.double() * gate.cpu().double().unsqueeze(1)).to(torch.bfloat16), torch.bfloat16, "Y")
    dg = torch.ops.mmcal.triton_gate_grads([x], [x], [SEQ], torch.float32)[0]
    assert_close(dg.cpu(), (values.double() ** 2).sum(1).float(), torch.bfloat16, "dg")


def test_one_slice_keeps_precision_over_long_sums():
    """One program over 2^17 positions (slicing off): each tile element's
    running sum joins the total every PART_TILES tiles, so the mean of equal
    float32 terms and the gate gradient's sum of their squares stay within
    1e-5 of the exact values (a single running tile was 3.2e-5 off)."""
    positions = 1 << 17
    x = torch.full((1, positions, 16), 0.1, device=DEVICE)
    (mean,) = reductions.reduce_all([x], None, None, [SEQ], torch.float32, num_slices=1)
    (dg,) = reductions.reduce_all([x], [x], None, [SEQ], torch.float32, num_slices=1)
    term = torch.tensor(0.1, dtype=torch.float32).double()
    for name, got, exact in (("mean", mean, term), ("gate gradient", dg, term * term * positions)):
        rel = ((got.cpu().double() - exact).abs() / exact).max().item()
        assert rel < 1e-5, f"relative error {rel:.3g} of a {name} over 2^17 positions in one slice"


def test_slicing_rule_of_int_sizes_is_the_symbolic_rule():
    """Eager calls take builtins for the slicing rule; traced calls take
    torch.sym_max/sym_min. Both give the same slice counts."""

    def symbolic(batch, positions, channels):
        per_tile = torch.sym_max(1, batch * reductions.cdiv(channels, 128))
        return torch.sym_max(1, torch.sym_min(reductions.cdiv(positions, reductions.MIN_SLICE),
                                              reductions.cdiv(reductions.TARGET_PROGRAMS, per_tile)))  # fmt: skip

    for batch in (0, 1, 3, 32, 1000):
        for positions in (0, 1, 50, 4096, 1 << 20):
            for channels in (1, 74, 128, 129, 4096):
                assert reductions.slices(batch, positions, channels) == symbolic(batch, positions, channels)
