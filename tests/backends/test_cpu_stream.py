"""The CPU maps' streaming (non-temporal) stores (csrc/cpu/stream_store.h,
stream_choice.h): the same values as plain stores, whatever the alignment of
each row, the dtype and the layout; MMCAL_CPU_STREAM checked. test_cpu.py's
capability re-runs put the whole backend through the oracle with every output
streamed (MMCAL_CPU_STREAM=always)."""

import pytest
import torch

from mmcal_kernels.backends.cpp import load as _cpp

pytestmark = pytest.mark.skipif(not _cpp.load_extension(), reason="the C++ extension is not built")

ops = torch.ops.mmcal
DTYPES = {  # feature dtype, compute dtype
    "float32": (torch.float32, torch.float32),
    "float64": (torch.float64, torch.float64),
    "float16": (torch.float16, torch.float32),
    "bfloat16": (torch.bfloat16, torch.float32),
}


def _features(dtype, D, P, gen):
    """Row starts at every alignment: widths that are multiples of no vector,
    a view that starts one element in, channels-first and channels_last maps."""
    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    return (
        [
            rand(3, P, D),
            rand(3, P, D + 1)[:, :, 1:],  # every row starts one element past a vector boundary
            rand(3, D, P + 3),
            rand(3, D, 5, 7).to(memory_format=torch.channels_last),
        ],
        [0, 0, 1, 1],
    )


def _both(kernel_setting, fn):
    kernel_setting("MMCAL_CPU_STREAM", "never")
    plain = fn()
    kernel_setting("MMCAL_CPU_STREAM", "always")
    return plain, fn()


@pytest.mark.parametrize("D,P", [(1, 3), (5, 50), (35, 9), (74, 17), (131, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_streamed_equals_plain(kernel_setting, dtype, D, P):
    """The same products, only the store differs: equal to the bit."""
    feature_dtype, ct = DTYPES[dtype]
    gen = torch.Generator().manual_seed(D * 100 + P)
    xs, layouts = _features(feature_dtype, D, P, gen)
    gates = [4 * torch.rand(3, D, generator=gen).to(ct) for _ in xs]
    plain, streamed = _both(kernel_setting, lambda: ops.modulate(xs, gates, layouts))
    for i, (a, b) in enumerate(zip(plain, streamed)):
        assert torch.equal(a, b), f"modulate, tensor {i}: {(a != b).sum().item()} of {a.numel()} elements differ"
        assert a.stride() == b.stride()


@pytest.mark.parametrize("D,P", [(5, 50), (74, 17), (131, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_grads_streamed_matches_plain(kernel_setting, dtype, D, P):
    """dY * g + V * ds / count with a mask: the elements before a row's first
    aligned vector take the scalar path when streamed, so a contracted
    multiply-add may round once where the vector path rounds twice."""
    feature_dtype, ct = DTYPES[dtype]
    gen = torch.Generator().manual_seed(D + P)
    xs, layouts = _features(feature_dtype, D, P, gen)
    dys = [torch.randn(x.shape, generator=gen).to(feature_dtype) for x in xs]
    gates = [4 * torch.rand(3, D, generator=gen).to(ct) for _ in xs]
    ds = [torch.randn(3, D, generator=gen).to(ct) for _ in xs]
    masks = [torch.rand(3, P, generator=gen) > 0.3, None, None, None]
    plain, streamed = _both(kernel_setting, lambda: ops.input_grads(xs, dys, gates, masks, ds, layouts))
    tol = {torch.float32: 2e-6, torch.float64: 1e-14, torch.float16: 1e-3, torch.bfloat16: 8e-3}[feature_dtype]
    for i, (a, b) in enumerate(zip(plain, streamed)):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=lambda m: f"input_grads, tensor {i}: {m}")


def test_in_place_modulate_is_unaffected(kernel_setting):
    kernel_setting("MMCAL_CPU_STREAM", "always")
    x = torch.randn(2, 9, 37)
    g = 4 * torch.rand(2, 37)
    want = x * g[:, None, :]
    ops.modulate_([x], [g], [0])
    assert torch.equal(x, want)


@pytest.mark.parametrize("reused", [False, True], ids=["fresh-output", "reused-output"])
def test_a_large_call_under_the_default_choice(kernel_setting, reused):
    """17.6 MB of output with 4 KB rows: over the default's 16 MiB, so it
    streams where its pages are mapped already (the second call, into the
    block the allocator hands out again); checked against torch's product."""
    kernel_setting("MMCAL_CPU_STREAM", None)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1100, 1001, generator=gen)[:, :, 1:]  # rows off the vector boundary
    g = 4 * torch.rand(4, 1000, generator=gen)
    want = x * g[:, None, :]
    if reused:
        ops.modulate([x], [g], [0])
    (y,) = ops.modulate([x], [g], [0])
    assert y.numel() * y.element_size() >= 16 * 2**20
    assert torch.equal(y, want)


@pytest.mark.parametrize("value", ["yes", "ALWAYS", " ", "0"])
def test_bad_switch_is_refused(kernel_setting, value):
    kernel_setting("MMCAL_CPU_STREAM", value)
    x, g = torch.randn(2, 3, 4), torch.rand(2, 4)
    with pytest.raises(ValueError, match="MMCAL_CPU_STREAM"):
        ops.modulate([x], [g], [0])
    with pytest.raises(ValueError, match="MMCAL_CPU_STREAM"):
        ops.input_grads([x], [x], [g], [None], [None], [0])


def test_the_switch_is_read_at_load_and_through_apply_settings_only(kernel_setting):
    """No getenv at a call: an op runs without the GIL, and its getenv raced
    with another thread's os.environ writes (a SIGSEGV in an inference-server
    test). A value written to os.environ alone changes nothing until
    apply_settings hands it over (kernel_setting does both)."""
    import os

    x, g = torch.randn(2, 3, 4), torch.rand(2, 4)
    kernel_setting("MMCAL_CPU_STREAM", "never")
    os.environ["MMCAL_CPU_STREAM"] = "not-a-mode"  # restored by the fixture
    ops.modulate([x], [g], [0])  # not read here
    _cpp.apply_settings()
    with pytest.raises(ValueError, match="MMCAL_CPU_STREAM: expected auto, always or never, got 'not-a-mode'"):
        ops.modulate([x], [g], [0])
