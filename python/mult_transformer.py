"""A MulT-style cross-modal transformer on three padded streams, trained a few
steps on random data with and without pre-fusion calibration.

The streams have CMU-MOSI's unaligned widths (GloVe text 300, COVAREP audio 5,
Facet vision 20) at shortened lengths. The fusion model is left as it is;
``CalibratedFusion`` puts the calibration in front of it and forwards the masks,
which the model turns into ``key_padding_mask`` (True = PADDED, the opposite of
the calibration's masks, where True = VALID).

    python python/mult_transformer.py --steps 30
"""

import argparse

import torch
from torch import nn

from mmcal_kernels import CalibratedFusion, PreFusionCalibration
from random_data_comparison import compare

DIMS = (300, 5, 20)
LENGTHS = (20, 37, 50)


class CrossModalBlock(nn.Module):
    """Target stream attends to a source stream (MulT's crossmodal attention)."""

    def __init__(self, width, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, target, source, source_valid):
        attended, _ = self.attn(self.norm(target), source, source, key_padding_mask=~source_valid)
        target = target + attended
        return target + self.ff(self.norm(target))


class MulTFusion(nn.Module):
    """Each modality attends to the other two; masked mean pool; regression head."""

    def __init__(self, dims=DIMS, width=32):
        super().__init__()
        self.inputs = nn.ModuleList(nn.Linear(d, width) for d in dims)
        self.blocks = nn.ModuleList(CrossModalBlock(width) for _ in range(len(dims) * (len(dims) - 1)))
        self.head = nn.Sequential(nn.Linear(len(dims) * width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, *streams, masks, present=None):
        h = [proj(x) for proj, x in zip(self.inputs, streams)]
        pooled, k = [], 0
        for m in range(len(h)):
            t = h[m]
            for n in range(len(h)):
                if n != m:
                    t = self.blocks[k](t, h[n], masks[n])
                    k += 1
            v = masks[m].unsqueeze(-1).to(t.dtype)
            pooled.append((t * v).sum(1) / v.sum(1).clamp_min(1))
        return self.head(torch.cat(pooled, -1)).squeeze(-1)


def random_batch(batch, gen):
    streams = [torch.randn(batch, n, d, generator=gen) for n, d in zip(LENGTHS, DIMS)]
    masks = []
    for n in LENGTHS:
        lengths = torch.randint(n // 2, n + 1, (batch,), generator=gen)
        masks.append(torch.arange(n) < lengths.unsqueeze(1))  # True = valid position
    # A target that needs the modalities together: the text summary against audio's.
    text = (streams[0] * masks[0].unsqueeze(-1)).sum(1) / masks[0].sum(1, keepdim=True)
    audio = (streams[1] * masks[1].unsqueeze(-1)).sum(1) / masks[1].sum(1, keepdim=True)
    target = 4 * text[:, :5].sum(-1) * audio.sum(-1)
    return streams, masks, target


def train(model, steps, seed, batch=16):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        streams, masks, target = random_batch(batch, gen)
        pred = model(*streams, masks=masks)
        loss = nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    plain = MulTFusion()
    torch.manual_seed(args.seed)
    wrapped = CalibratedFusion(
        MulTFusion(), PreFusionCalibration(DIMS, shared_dim=32), forward_masks=True
    )  # same fusion weights as `plain`: only the calibration differs
    print(wrapped.calibration)
    compare(plain, wrapped, train, args.steps, args.seed)


if __name__ == "__main__":
    main()
