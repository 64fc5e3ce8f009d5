"""Corruptions of one or more modalities of a batch, per sample.

A batch is a dict of tensors (``batch_of``): ``image`` [B,28,28], ``audio``
[B,T,40], ``audio_len``, ``audio_power``, ``digits`` [B,8,8], ``label`` and
``present`` (bool [B,3]) and ``source_label`` ([B,3], the class each
modality's content shows; the label unless a conflict replaced it).

A plan says, per sample and modality, what happens: ``kind`` [B,3] in
NONE/NOISE/CONFLICT/REMOVE and ``severity`` [B,3] (1-5, for noise). Every
function returns a new batch and leaves its input as it was.

* noise:    additive white Gaussian noise at an SNR that falls with the
            severity (``SNR_DB``), relative to the sample's own signal power:
            on the pixels for the images, on the waveform for the speech (added
            in the mel power domain, where its cross terms with the speech
            average out);
* conflict: the modality is replaced by an item of ANOTHER class, drawn from
            the same split;
* removal:  the modality's features are zeros and ``present`` is False (the
            calibrated model is told; the baseline just sees the zeros).
"""

from __future__ import annotations

import torch

from .data import HOP, LOG_FLOOR, MAX_FRAMES, MODALITIES, Split, mel_power

NONE, NOISE, CONFLICT, REMOVE = 0, 1, 2, 3
KINDS = {"noise": NOISE, "conflict": CONFLICT, "removal": REMOVE}
SNR_DB = {1: 6.0, 2: 0.0, 3: -6.0, 4: -12.0, 5: -18.0}
SEVERITIES = tuple(SNR_DB)
FEATURES = {"image": ("image",), "audio": ("audio", "audio_len", "audio_power"), "digits": ("digits",)}


def batch_of(split: Split, idx) -> dict:
    b = {k: getattr(split, k)[idx] for k in ("image", "audio", "audio_len", "audio_power", "digits", "label")}
    b["present"] = torch.ones(len(b["label"]), len(MODALITIES), dtype=torch.bool)
    b["source_label"] = b["label"].unsqueeze(1).repeat(1, len(MODALITIES))
    return b


def _snr_scale(severity: torch.Tensor) -> torch.Tensor:
    """Noise power over signal power, per row; 0 where the severity is 0."""
    snr = torch.tensor([0.0] + [SNR_DB[s] for s in SEVERITIES])[severity]
    return torch.where(severity > 0, 10 ** (-snr / 10), 0.0)


def add_noise(batch: dict, modality: str, severity: torch.Tensor, stats: dict, gen: torch.Generator) -> dict:
    """Noise on ``modality`` at ``severity`` (int [B], 0 = untouched) per sample."""
    out = dict(batch)
    ratio = _snr_scale(severity)
    x = batch[modality]
    if modality in ("image", "digits"):
        mean, std = stats[modality]
        raw = x * std + mean
        power = raw.pow(2).flatten(1).mean(1)
        noise = torch.randn(x.shape, generator=gen) * (power * ratio).sqrt().view(-1, 1, 1)
        out[modality] = torch.where((severity > 0).view(-1, 1, 1), x + noise / std, x)
        return out
    mean, std = stats["audio"]
    rows = torch.nonzero(severity > 0).flatten()  # only these pay for the noise's STFT
    if len(rows) == 0:
        return out
    T = x.shape[1]
    valid = torch.arange(T) < batch["audio_len"][rows].unsqueeze(1)
    speech = torch.exp(x[rows] * std + mean) - LOG_FLOOR
    white = torch.randn(len(rows), (MAX_FRAMES - 1) * HOP, generator=gen)
    noise = mel_power(white)[:, :T] * (batch["audio_power"][rows] * ratio[rows]).view(-1, 1, 1)
    noisy = (torch.log(speech + noise + LOG_FLOOR) - mean) / std
    out["audio"] = x.index_put((rows,), torch.where(valid.unsqueeze(-1), noisy, x[rows]))
    return out


def conflict(batch: dict, modality: str, rows: torch.Tensor, pool: Split, gen: torch.Generator) -> dict:
    """Replace ``modality`` in ``rows`` (bool [B]) by an item of another class from ``pool``."""
    out = dict(batch)
    B, m = len(rows), MODALITIES.index(modality)
    # A random pool sample whose label differs from the row's: draw a class
    # offset in 1..9, then a random pool sample of that class.
    wrong = (batch["label"] + torch.randint(1, 10, (B,), generator=gen)) % 10
    by_class = [torch.nonzero(pool.label == c).flatten() for c in range(10)]
    donor = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,), generator=gen)][0] for c in wrong.tolist()])
    for key in FEATURES[modality]:
        src = getattr(pool, key)[donor]
        if key == "audio":
            T = batch["audio"].shape[1]
            src = src[:, :T] if src.shape[1] >= T else torch.nn.functional.pad(src, (0, 0, 0, T - src.shape[1]))
        shape = (-1,) + (1,) * (src.dim() - 1)
        out[key] = torch.where(rows.view(shape), src, batch[key])
    if modality == "audio":
        out["audio_len"] = out["audio_len"].clamp_max(batch["audio"].shape[1])
    out["source_label"] = batch["source_label"].clone()
    out["source_label"][rows, m] = wrong[rows]
    return out


def remove(batch: dict, modality: str, rows: torch.Tensor) -> dict:
    """``modality`` missing in ``rows``: zero features, ``present`` False."""
    out = dict(batch)
    x = batch[modality]
    out[modality] = torch.where(rows.view((-1,) + (1,) * (x.dim() - 1)), 0.0, x)
    out["present"] = batch["present"].clone()
    out["present"][rows, MODALITIES.index(modality)] = False
    return out


def apply(batch: dict, kind: torch.Tensor, severity: torch.Tensor, pool: Split, stats: dict, gen) -> dict:
    """Apply a plan (``kind``, ``severity``: [B, 3])."""
    for m, name in enumerate(MODALITIES):
        k = kind[:, m]
        if (k == CONFLICT).any():
            batch = conflict(batch, name, k == CONFLICT, pool, gen)
        if (k == NOISE).any():
            batch = add_noise(batch, name, torch.where(k == NOISE, severity[:, m], 0), stats, gen)
        if (k == REMOVE).any():
            batch = remove(batch, name, k == REMOVE)
    return batch


def pick_modalities(B: int, target, count: int, gen) -> torch.Tensor:
    """Bool [B, 3]: the modality ``target`` (index) for every row, or ``count``
    distinct random ones per row when ``target`` is ``"random"``."""
    M = len(MODALITIES)
    if target != "random":
        which = torch.zeros(B, M, dtype=torch.bool)
        which[:, target] = True
        return which
    order = torch.rand(B, M, generator=gen).argsort(1)
    return torch.zeros(B, M, dtype=torch.bool).scatter_(1, order[:, :count], True)


def plan(B: int, kind: str, target="random", severity: int = 1, count: int = 1, gen=None):
    """The plan of an evaluation condition: ``kind`` on ``count`` modalities
    (``target``: an index, or "random" per sample), at ``severity``."""
    which = pick_modalities(B, target, count, gen)
    k = torch.where(which, KINDS[kind], NONE) if kind != "clean" else torch.zeros(B, len(MODALITIES), dtype=torch.long)
    return k.long(), torch.where(which, severity, 0).long()


def random_plan(B: int, gen, p_count=(0.4, 0.45, 0.15)):
    """The training augmentation: 0, 1 or 2 random modalities per sample (with
    ``p_count``), each with a random kind and, for noise, a random severity."""
    count = torch.multinomial(torch.tensor(p_count), B, replacement=True, generator=gen)
    order = torch.rand(B, len(MODALITIES), generator=gen).argsort(1)
    which = torch.arange(len(MODALITIES)).expand(B, -1) < count.unsqueeze(1)
    which = torch.zeros_like(which).scatter_(1, order, which)
    kind = torch.randint(1, 4, (B, len(MODALITIES)), generator=gen)
    sev = torch.randint(1, len(SEVERITIES) + 1, (B, len(MODALITIES)), generator=gen)
    return torch.where(which, kind, NONE), torch.where(which, sev, 0)
