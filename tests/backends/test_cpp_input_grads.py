"""mmcal::input_grads takes ``ds`` and divides it by its row's count itself,
exactly once: the count is the row's True mask entries for a masked sequence,
else P (positions, the product of the trailing dims for a spatial map),
clamped to >= 1, as ``spec.position_counts`` says. Rows with different
counts tell a division done twice (ds / count^2) or not at all (ds) from the
right one."""

import pytest
import torch

from mmcal_kernels import reference
from mmcal_kernels.backends.cpp import load as _cpp
from mmcal_kernels.spec import position_counts

pytestmark = pytest.mark.skipif(not _cpp.load_extension(), reason="the C++ extension is not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _cpp.STATUS["cuda_kernels"] else [])


def _expected(x, dy, gate, mask, ds, layout):
    """dY * g + V * ds / count in float64, broadcast over positions."""
    count = position_counts(x, layout, mask, torch.float64)  # [B, 1]
    scaled = ds.double() / count
    if layout == "sequence":
        term = scaled[:, None, :]
        if mask is not None:
            term = term * mask[:, :, None]
    else:
        term = scaled.reshape(scaled.shape + (1,) * (x.dim() - 2))
    out = term.expand(x.shape)
    if dy is not None:
        g = gate.double()
        out = out + dy.double() * (g[:, None, :] if layout == "sequence" else g.reshape(g.shape + (1,) * (x.dim() - 2)))
    return out


def _masked_case(device, dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, 3, generator=gen, dtype=dtype)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, :] = True  # count 6 = P
    mask[1, [0, 3]] = True  # count 2
    mask[3, [1, 2, 4]] = True  # count 3; row 2 fully masked: count 0, clamped to 1
    ds = torch.randn(4, 3, generator=gen, dtype=torch.float64) + 2  # away from 0: every ratio shows
    return x.to(device), mask.to(device), ds.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_masked_rows_with_different_counts(device, dtype):
    x, mask, ds = _masked_case(device, dtype)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    (got,) = torch.ops.mmcal.input_grads([x], [None], [None], [mask], [ds.to(ct)], [0])
    want = _expected(x.cpu(), None, None, mask.cpu(), ds.cpu().to(ct), "sequence")
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-6, atol=1e-7)
    assert torch.all(got[2] == 0)  # a fully masked row gets no ds term at all
    # ds at row 1's valid positions: ds / 2, where twice gives ds / 4 and never ds.
    torch.testing.assert_close(got[1, [0, 3]].cpu().double(), (ds[1].cpu().to(ct) / 2).double().expand(2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_strided_mask_and_ds(device):
    """The count read through the mask's strides (every other column of a
    wider mask), ds through its own (a transposed [D, B])."""
    x, mask, ds = _masked_case(device, torch.float64)
    wide = torch.zeros(4, 12, dtype=torch.bool, device=device)
    wide[:, ::2] = mask
    wide[:, 1::2] = ~mask  # read as valid, the columns between would change every count
    strided_mask, strided_ds = wide[:, ::2], ds.t().contiguous().t()
    assert not strided_mask.is_contiguous() and not strided_ds.is_contiguous()
    (got,) = torch.ops.mmcal.input_grads([x], [None], [None], [strided_mask], [strided_ds], [0])
    want = _expected(x.cpu(), None, None, mask.cpu(), ds.cpu(), "sequence")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_both_terms_with_a_mask(device):
    x, mask, ds = _masked_case(device, torch.float64)
    gen = torch.Generator().manual_seed(6)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    gate = torch.rand(4, 3, generator=gen, dtype=torch.float64).to(device)
    (got,) = torch.ops.mmcal.input_grads([x], [dy], [gate], [mask], [ds], [0])
    want = _expected(x.cpu(), dy.cpu(), gate.cpu(), mask.cpu(), ds.cpu(), "sequence")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_spatial_and_unmasked_sequences_divide_by_p(device, memory_format):
    gen = torch.Generator().manual_seed(7)
    spatial = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)  # P = 20
    if memory_format == "channels_last":
        spatial = spatial.to(memory_format=torch.channels_last)
    sequence = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)  # P = 7
    ds = [torch.randn(2, 3, generator=gen, dtype=torch.float64) + 2 for _ in range(2)]
    xs = [spatial.to(device), sequence.to(device)]
    got = torch.ops.mmcal.input_grads(xs, [None, None], [None, None], [None, None], [d.to(device) for d in ds], [1, 0])
    torch.testing.assert_close(got[0].cpu(), (ds[0] / 20)[:, :, None, None].expand(spatial.shape))
    torch.testing.assert_close(got[1].cpu(), (ds[1] / 7)[:, None, :].expand(sequence.shape))


@pytest.mark.parametrize("device", DEVICES)
def test_summary_gradient_is_mask_over_count(device):
    """Through the summaries op's autograd, which hands input_grads the incoming gradient as ds."""
    x, mask, _ = _masked_case(device, torch.float64)
    x.requires_grad_(True)
    grad = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8)).to(device)
    (s,) = torch.ops.mmcal.summaries([x], [mask], [0], torch.float64)
    (got,) = torch.autograd.grad(s, x, grad)
    xr = x.detach().cpu().requires_grad_(True)
    (want,) = torch.autograd.grad(reference.summary(xr, "sequence", mask.cpu(), torch.float64), xr, grad.cpu())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
