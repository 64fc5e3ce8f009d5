"""The two backbones, each with or without ``PreFusionCalibration`` in front of
its fusion. ``variant`` is "baseline" (no calibration), "calibrated"
(``PreFusionCalibration``) or "constant-gate" (an ablation: the calibration's
gate parametrisation, ``2 sigmoid(a) * 2 sigmoid(z)`` per modality and channel,
identity at initialisation, but learned as constants that do not look at the
input). The backbone is the same network in every variant (same parameters in
the same creation order, so one seed gives every variant the same initial
backbone).

* ``SequenceModel``: MulT-style. Per modality a small encoder turns the input
  into a ``[B, L, D]`` stream (MNIST rows, 8x8 rows, log-mel frames with a
  padding mask); calibration (``"sequence"`` layout, the audio mask passed,
  True = VALID); then cross-modal attention (each modality attends to each
  other one, MulT's crossmodal blocks), masked mean pool, linear head.
* ``ConvModel``: three small CNN streams giving ``[B, C, H, W]`` maps (the
  spectrogram as a ``[T, 40]`` image); calibration on the maps (``"spatial"``
  layout); global average pooling, concatenation, linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcal_kernels import PreFusionCalibration

from .data import MAX_FRAMES, N_MELS


class ConstantGate(nn.Module):
    """Ablation: learned per-modality gates that ignore the input (no cross-modal cues)."""

    def __init__(self, dims, layouts):
        super().__init__()
        self.layouts = [layouts] * len(dims) if isinstance(layouts, str) else list(layouts)
        self.instance = nn.Parameter(torch.zeros(len(dims)))
        self.dim = nn.ParameterList(nn.Parameter(torch.zeros(d)) for d in dims)

    def forward(self, streams, masks=None, present=None, return_diagnostics=False):
        B = streams[0].shape[0]
        inst = 2 * torch.sigmoid(self.instance)
        dims = [2 * torch.sigmoid(z) for z in self.dim]
        out = []
        for m, (x, layout) in enumerate(zip(streams, self.layouts)):
            g = inst[m] * dims[m]
            out.append(x * (g if layout == "sequence" else g.view(-1, *([1] * (x.dim() - 2)))))
        if not return_diagnostics:
            return out
        diag = {"instance_gate": inst.detach().expand(B, -1), "dimension_gates": [d.detach().expand(B, -1) for d in dims]}
        return out, diag


def make_calibration(variant, dims, layouts, shared_dim, backend):
    if variant == "calibrated":
        return PreFusionCalibration(dims, shared_dim=shared_dim, layouts=layouts, backend=backend)
    if variant == "constant-gate":
        return ConstantGate(dims, layouts)
    if variant != "baseline":
        raise ValueError(f"variant: expected baseline, calibrated or constant-gate, got {variant!r}")
    return None


def audio_mask(batch, T):
    return torch.arange(T) < batch["audio_len"].unsqueeze(1)  # True = VALID frame


class CalibratedModel(nn.Module):
    """Shared plumbing: encode, optionally calibrate, fuse."""

    calib: PreFusionCalibration | ConstantGate | None

    def calibrate(self, streams, masks, batch, diagnostics):
        if self.calib is None:
            return streams, None
        if diagnostics:
            return self.calib(streams, masks=masks, present=batch["present"], return_diagnostics=True)
        return self.calib(streams, masks=masks, present=batch["present"]), None

    def forward(self, batch, diagnostics=False):
        streams, masks = self.encode(batch)
        streams, diag = self.calibrate(streams, masks, batch, diagnostics)
        logits = self.fuse(streams, masks)
        return (logits, diag) if diagnostics else logits


class CrossModalBlock(nn.Module):
    """Target stream attends to a source stream (MulT's crossmodal attention)."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_t, self.norm_s, self.norm_f = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, target, source, source_valid):
        s = self.norm_s(source)
        kpm = None if source_valid is None else ~source_valid  # key_padding_mask: True = PADDED
        target = target + self.attn(self.norm_t(target), s, s, key_padding_mask=kpm, need_weights=False)[0]
        return target + self.ff(self.norm_f(target))


class SequenceModel(CalibratedModel):
    def __init__(self, variant: str, width=32, heads=4, shared_dim=32, backend="auto"):
        super().__init__()
        self.image_in = nn.Sequential(nn.Linear(28, width), nn.GELU(), nn.Linear(width, width))
        self.digits_in = nn.Sequential(nn.Linear(8, width), nn.GELU(), nn.Linear(width, width))
        self.audio_conv = nn.Conv1d(N_MELS, width, 3, padding=1)
        self.audio_in = nn.Sequential(nn.GELU(), nn.Linear(width, width))
        self.pos = nn.ParameterList(nn.Parameter(0.02 * torch.randn(n, width)) for n in (28, MAX_FRAMES, 8))
        self.blocks = nn.ModuleList(CrossModalBlock(width, heads) for _ in range(6))
        self.head = nn.Linear(3 * width, 10)
        self.calib = make_calibration(variant, [width] * 3, "sequence", shared_dim, backend)

    def encode(self, batch):
        T = int(batch["audio_len"].max())  # crop the padding the whole batch shares
        audio = self.audio_conv(batch["audio"][:, :T].transpose(1, 2)).transpose(1, 2)
        streams = [self.image_in(batch["image"]), self.audio_in(audio), self.digits_in(batch["digits"])]
        streams = [s + p[: s.shape[1]] for s, p in zip(streams, self.pos)]
        return streams, [None, audio_mask(batch, T), None]

    def fuse(self, streams, masks):
        pooled, k = [], 0
        for m, target in enumerate(streams):
            for n, source in enumerate(streams):
                if n != m:
                    target = self.blocks[k](target, source, masks[n])
                    k += 1
            if masks[m] is None:
                pooled.append(target.mean(1))
            else:
                v = masks[m].unsqueeze(-1).to(target.dtype)
                pooled.append((target * v).sum(1) / v.sum(1).clamp_min(1))
        return self.head(torch.cat(pooled, -1))


def conv_stream(channels, pools):
    layers, c_in = [], 1
    for c_out, pool in zip((16, channels), pools):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if pool else []
        c_in = c_out
    return nn.Sequential(*layers)


class ConvModel(CalibratedModel):
    def __init__(self, variant: str, channels=32, shared_dim=32, backend="auto"):
        super().__init__()
        # image -> [B,C,7,7]; spectrogram [T=40, 40] -> [B,C,10,10]; 8x8 -> [B,C,4,4]
        self.streams = nn.ModuleList(conv_stream(channels, p) for p in ((True, True), (True, True), (False, True)))
        self.head = nn.Linear(3 * channels, 10)
        self.calib = make_calibration(variant, [channels] * 3, "spatial", shared_dim, backend)

    def encode(self, batch):
        # Padded frames are 0 and every batch has the same map size; the
        # spectrogram's frames are averaged in pairs (40 ms) to halve its cost.
        audio = F.avg_pool2d(batch["audio"].unsqueeze(1), (2, 1))
        inputs = (batch["image"].unsqueeze(1), audio, batch["digits"].unsqueeze(1))
        return [s(x) for s, x in zip(self.streams, inputs)], None

    def fuse(self, streams, masks):
        return self.head(torch.cat([s.mean((2, 3)) for s in streams], -1))


BACKBONES = {"sequence": SequenceModel, "conv": ConvModel}
