"""Benchmark workloads taken from published multimodal models, in one place.

Sequence workloads carry padding masks (lengths drawn in [P/2, P]); spatial
ones are ResNet18 layer-4 maps as the audio-visual models use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    dims: tuple[int, ...]
    layouts: tuple[str, ...]
    positions: tuple  # per modality: a length ("sequence") or trailing sizes ("spatial")
    source: str

    def feature_bytes(self, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return sum(self.batch * d * _count(p) * elem for d, p in zip(self.dims, self.positions))

    def mask_bytes(self) -> int:  # bool, one byte a position
        return sum(self.batch * p for p, lay in zip(self.positions, self.layouts) if lay == "sequence")

    def scaled(self, batch: Optional[int] = None, max_positions: Optional[int] = None) -> "Workload":
        """A smaller copy for smoke runs: same dims and layouts."""

        def shrink(p):
            if max_positions is None:
                return p
            if isinstance(p, int):
                return min(p, max_positions)
            return tuple(min(s, 3) for s in p)

        return Workload(
            self.name, batch or self.batch, self.dims, self.layouts, tuple(shrink(p) for p in self.positions), self.source
        )


def _count(p) -> int:
    return p if isinstance(p, int) else math.prod(p)


SEQ3 = ("sequence",) * 3
AV = ("spatial", "spatial")

WORKLOADS = {
    # CMU-MOSEI, word-aligned features as MulT (Tsai et al., ACL 2019) uses them:
    # BERT text 768, COVAREP audio 74, Facet vision 35, 50 steps; batch 32.
    "mosei-aligned": Workload("mosei-aligned", 32, (768, 74, 35), SEQ3, (50, 50, 50), "CMU-MOSEI aligned, MulT"),
    # CMU-MOSEI unaligned (MulT's unaligned setting): text 50, audio and vision 500 steps.
    "mosei-unaligned": Workload("mosei-unaligned", 32, (768, 74, 35), SEQ3, (50, 500, 500), "CMU-MOSEI unaligned, MulT"),
    # CMU-MOSI unaligned with GloVe text (MulT): 300/5/20 wide, 50/375/500 steps, batch 24.
    "mosi-unaligned": Workload("mosi-unaligned", 24, (300, 5, 20), SEQ3, (50, 375, 500), "CMU-MOSI unaligned, GloVe, MulT"),
    # CREMA-D with ResNet18 encoders (OGM-GE, Peng et al., CVPR 2022): layer-4 maps,
    # audio spectrogram [B,512,9,6], visual [B,512,T,7,7]; T=1 here (the range's low end).
    "cremad-resnet18": Workload("cremad-resnet18", 64, (512, 512), AV, ((9, 6), (1, 7, 7)), "CREMA-D ResNet18 layer 4, OGM-GE"),
    # AVE with ResNet18 encoders (OGM-GE): audio [B,512,9,32], visual [B,512,T,7,7]; T=3 (the high end).
    "ave-resnet18": Workload("ave-resnet18", 64, (512, 512), AV, ((9, 32), (3, 7, 7)), "AVE ResNet18 layer 4, OGM-GE"),
}

# Stress: 256 MiB of features in every dtype (the sequence length doubles for
# 2-byte dtypes), three transformer streams of BERT-large/base widths.
STRESS_BYTES = 256 * 2**20


def stress(dtype: torch.dtype) -> Workload:
    elem = torch.empty((), dtype=dtype).element_size()
    dims, batch = (1024, 512, 512), 32
    length = STRESS_BYTES // (batch * sum(dims) * elem)
    return Workload("stress-256MiB", batch, dims, SEQ3, (length,) * 3, "synthetic, 256 MiB of features")


def workload(name: str, dtype: torch.dtype) -> Workload:
    return stress(dtype) if name == "stress-256MiB" else WORKLOADS[name]


NAMES = tuple(WORKLOADS) + ("stress-256MiB",)
# Working sets over 32 MB pay first-touch page faults under glibc's default
# allocator; those are measured under both allocator settings.
LARGE_BYTES = 32 * 10**6


def make_inputs(w: Workload, dtype: torch.dtype, device, seed: int):
    """Fresh random features (never zeros), padding masks (True = valid), presence all True."""
    gen = torch.Generator().manual_seed(seed)
    features, masks = [], []
    for d, lay, p in zip(w.dims, w.layouts, w.positions):
        if lay == "sequence":
            x = torch.randn((w.batch, p, d), generator=gen, dtype=torch.float32)
            lengths = torch.randint(max(1, p // 2), p + 1, (w.batch,), generator=gen)
            masks.append((torch.arange(p) < lengths.unsqueeze(1)).to(device))
        else:
            x = torch.randn((w.batch, d, *p), generator=gen, dtype=torch.float32)
            masks.append(None)
        features.append(x.to(device=device, dtype=dtype))
    present = torch.ones(w.batch, len(w.dims), dtype=torch.bool, device=device)
    return features, masks, present
