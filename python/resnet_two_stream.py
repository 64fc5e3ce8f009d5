"""A two-stream ResNet-style audio-visual classifier (as in CREMA-D / AVE
models with OGM-GE-style late fusion), trained a few steps on random data with
and without pre-fusion calibration.

The audio encoder gives a ``[B, C, H, W]`` spectrogram map, the visual encoder
a ``[B, C, T, H, W]`` clip map. The calibration ("spatial" layout) sits between
the encoders and the fusion head, which is left as it is.

    python python/resnet_two_stream.py --steps 30
"""

import argparse

import torch
from torch import nn

from mmcal_kernels import CalibratedFusion, PreFusionCalibration
from random_data_comparison import compare

CHANNELS = 32
CLASSES = 6


class BasicBlock(nn.Module):
    def __init__(self, conv, norm, channels):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, bias=False), norm(channels), nn.ReLU(),
            conv(channels, channels, 3, padding=1, bias=False), norm(channels),
        )  # fmt: skip

    def forward(self, x):
        return torch.relu(x + self.body(x))


def encoder(conv, norm, in_channels):
    return nn.Sequential(
        conv(in_channels, CHANNELS, 3, stride=2, padding=1, bias=False), norm(CHANNELS), nn.ReLU(),
        BasicBlock(conv, norm, CHANNELS),
    )  # fmt: skip


class ConcatFusion(nn.Module):
    """Global average pool of each map, concatenate, classify."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2 * CHANNELS, CLASSES)

    def forward(self, audio, visual):
        return self.fc(torch.cat([audio.mean((2, 3)), visual.mean((2, 3, 4))], -1))


class AudioVisualNet(nn.Module):
    def __init__(self, fusion):
        super().__init__()
        self.audio = encoder(nn.Conv2d, nn.BatchNorm2d, 1)
        self.visual = encoder(nn.Conv3d, nn.BatchNorm3d, 3)
        self.fusion = fusion

    def forward(self, spectrogram, clip):
        return self.fusion(self.audio(spectrogram), self.visual(clip))


def random_batch(batch, gen):
    labels = torch.randint(0, CLASSES, (batch,), generator=gen)
    spectrogram = torch.randn(batch, 1, 32, 24, generator=gen)
    clip = torch.randn(batch, 3, 2, 16, 16, generator=gen)
    # Make the label visible in both streams, more clearly in the audio one.
    spectrogram[:, 0, :, :CLASSES] += 1.5 * nn.functional.one_hot(labels, CLASSES)[:, None, :]
    clip[:, 0, :, 0, :CLASSES] += 0.5 * nn.functional.one_hot(labels, CLASSES)[:, None, :]
    return spectrogram, clip, labels


def train(model, steps, seed, batch=16):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        spectrogram, clip, labels = random_batch(batch, gen)
        loss = nn.functional.cross_entropy(model(spectrogram, clip), labels)
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
    plain = AudioVisualNet(ConcatFusion())
    torch.manual_seed(args.seed)
    calibration = PreFusionCalibration([CHANNELS, CHANNELS], shared_dim=32, layouts="spatial")
    calibrated = AudioVisualNet(CalibratedFusion(ConcatFusion(), calibration))
    # Same encoders and head: only the calibration differs.
    calibrated.audio.load_state_dict(plain.audio.state_dict())
    calibrated.visual.load_state_dict(plain.visual.state_dict())
    calibrated.fusion.fusion.load_state_dict(plain.fusion.state_dict())
    compare(plain, calibrated, train, args.steps, args.seed)


if __name__ == "__main__":
    main()
