"""Figures and the markdown table of a ``robustness.json``."""

from __future__ import annotations

import os

import numpy as np

from .corrupt import SEVERITIES
from .data import MODALITIES

VARIANTS = ("baseline", "calibrated")
STYLE = {"baseline": dict(color="tab:blue", marker="o"), "calibrated": dict(color="tab:orange", marker="s")}
MOD_COLORS = {"image": "tab:green", "audio": "tab:purple", "digits": "tab:brown"}


def runs_of(result, backbone, variant):
    return sorted((r for r in result["runs"] if r["backbone"] == backbone and r["variant"] == variant),
                  key=lambda r: r["seed"])  # fmt: skip


def backbones(result):
    return [b for b in ("sequence", "conv") if any(r["backbone"] == b for r in result["runs"])]


def acc(result, backbone, variant, name):
    """Test accuracies of one condition, one per seed (percent)."""
    return np.array([100 * r["test"][name]["acc"] for r in runs_of(result, backbone, variant)])


def paired_delta(result, backbone, name):
    """Calibrated minus baseline, per seed that has both."""
    base = {r["seed"]: r for r in runs_of(result, backbone, "baseline")}
    cal = {r["seed"]: r for r in runs_of(result, backbone, "calibrated")}
    seeds = sorted(set(base) & set(cal))
    return np.array([100 * (cal[s]["test"][name]["acc"] - base[s]["test"][name]["acc"]) for s in seeds])


def ms(x):
    if len(x) == 0:
        return "n/a"
    return f"{x.mean():.1f} ± {x.std(ddof=1):.1f}" if len(x) > 1 else f"{x.mean():.1f}"


def noise_name(target, s):
    return "clean" if s == 0 else f"noise/{target}/{s}"


def count_name(kind, k):
    return "clean" if k == 0 else (f"{kind}/random" if k == 1 else f"{kind}/two-random")


def _errorbar(ax, x, ys, variant, label=True):
    ys = np.array(ys)  # [points, seeds]
    err = ys.std(1, ddof=1) if ys.shape[1] > 1 else None
    ax.errorbar(x, ys.mean(1), yerr=err, capsize=3, label=variant if label else None, **STYLE[variant])


def figures(result, out, suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bbs = backbones(result)
    n_seeds = len(result["config"]["seeds"])
    paths = []

    def save(fig, name, title):
        fig.suptitle(title)
        fig.tight_layout()
        path = os.path.join(out, f"{name}{suffix}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    # 1. accuracy vs severity, corruption of one random modality per sample (or two)
    fig, axes = plt.subplots(len(bbs), 3, figsize=(13, 3.6 * len(bbs)), squeeze=False)
    for row, b in enumerate(bbs):
        for v in VARIANTS:
            _errorbar(axes[row, 0], range(6), [acc(result, b, v, noise_name("random", s)) for s in range(6)], v)
            for col, kind in ((1, "conflict"), (2, "removal")):
                _errorbar(axes[row, col], range(3), [acc(result, b, v, count_name(kind, k)) for k in range(3)], v)
        snr = {int(k): v for k, v in result["config"]["snr_db"].items()}
        axes[row, 0].set_xlabel("noise severity (0 = clean; SNR " + ", ".join(f"{snr[s]:g}" for s in SEVERITIES) + " dB)")
        for col, kind in ((1, "conflict"), (2, "removal")):
            axes[row, col].set_xlabel(f"modalities with {kind} (random per sample)")
            axes[row, col].set_xticks(range(3))
        for col, kind in enumerate(("noise", "conflict", "removal")):
            axes[row, col].set_title(f"{b} backbone: {kind}, one random modality" if col == 0 else f"{b} backbone: {kind}")
            axes[row, col].set_ylabel("test accuracy (%)")
            axes[row, col].grid(alpha=0.3)
        axes[row, 0].legend()
    save(fig, "accuracy", f"Accuracy under corruption, mean ± std over {n_seeds} seed(s)")

    # 2. per modality: noise curves, conflict and removal bars
    fig, axes = plt.subplots(len(bbs), 4, figsize=(17, 3.6 * len(bbs)), squeeze=False)
    for row, b in enumerate(bbs):
        for col, m in enumerate(MODALITIES):
            ax = axes[row, col]
            for v in VARIANTS:
                _errorbar(ax, range(6), [acc(result, b, v, noise_name(m, s)) for s in range(6)], v)
            ax.set_title(f"{b}: noise on {m} only")
            ax.set_xlabel("noise severity of " + m)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        ax = axes[row, 3]
        names = [f"{k}/{m}" for k in ("conflict", "removal") for m in MODALITIES]
        x = np.arange(len(names))
        for i, v in enumerate(VARIANTS):
            a = np.array([acc(result, b, v, n) for n in names])
            ax.bar(x + (i - 0.5) * 0.38, a.mean(1), 0.38, yerr=a.std(1, ddof=1) if a.shape[1] > 1 else None,
                   capsize=2, color=STYLE[v]["color"], label=v)  # fmt: skip
        ax.set_xticks(x, [n.replace("/", "\n") for n in names], fontsize=8)
        ax.set_ylim(max(0, ax.get_ylim()[0]), 100)
        ax.set_title(f"{b}: conflict / removal of one modality")
        ax.grid(alpha=0.3, axis="y")
        axes[row, 0].legend()
    save(fig, "accuracy_by_modality", f"Which modality is corrupted matters: mean ± std over {n_seeds} seed(s)")

    # 3. learned instance gates vs the severity of a modality's own corruption
    fig, axes = plt.subplots(len(bbs), 3, figsize=(13, 3.6 * len(bbs)), squeeze=False)
    for row, b in enumerate(bbs):
        runs = runs_of(result, b, "calibrated")
        for col, m in enumerate(MODALITIES):
            ax = axes[row, col]
            names = [noise_name(m, s) for s in range(6)] + [f"conflict/{m}"]
            for j, other in enumerate(MODALITIES):
                g = np.array([[r["test"][n]["instance_gate"][j] for r in runs] for n in names])
                err = g.std(1, ddof=1) if g.shape[1] > 1 else None
                ax.errorbar(range(7), g.mean(1), yerr=err, capsize=3, color=MOD_COLORS[other],
                            lw=2.5 if other == m else 1, ls="-" if other == m else "--",
                            marker="o" if other == m else ".", label=f"gate of {other}")  # fmt: skip
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xticks(range(7), [str(s) for s in range(6)] + ["conflict"])
            ax.set_xlabel(f"corruption of {m} (noise severity, or conflict)")
            ax.set_ylabel("mean instance gate 2·sigmoid(a)")
            ax.set_title(f"{b}: {m} corrupted")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    save(fig, "gates", f"Calibrated models: mean instance gate per modality (1 = identity), mean ± std over {n_seeds} seed(s)")

    # 4. training curves
    fig, axes = plt.subplots(len(bbs), 4, figsize=(17, 3.4 * len(bbs)), squeeze=False)
    keys = (("loss", "train loss (augmented)"), ("val_clean", "val acc. clean (%)"),
            ("val_corrupted", "val acc. corrupted mix (%)"))  # fmt: skip
    for row, b in enumerate(bbs):
        for v in VARIANTS:
            runs = runs_of(result, b, v)
            for col, (k, label) in enumerate(keys):
                y = np.array([r["curves"][k] for r in runs]) * (1 if k == "loss" else 100)
                ep = np.arange(1, y.shape[1] + 1)
                ax = axes[row, col]
                ax.plot(ep, y.mean(0), color=STYLE[v]["color"], label=v)
                ax.fill_between(ep, y.min(0), y.max(0), color=STYLE[v]["color"], alpha=0.2)
                ax.set_title(f"{b}: {label}")
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
        ax = axes[row, 3]
        runs = runs_of(result, b, "calibrated")
        g = np.array([r["curves"]["instance_gate_std"] for r in runs])  # [seeds, epochs, M]
        for j, m in enumerate(MODALITIES):
            ep = np.arange(1, g.shape[1] + 1)
            ax.plot(ep, g[:, :, j].mean(0), color=MOD_COLORS[m], label=m)
            ax.fill_between(ep, g[:, :, j].min(0), g[:, :, j].max(0), color=MOD_COLORS[m], alpha=0.2)
        ax.set_title(f"{b}: instance-gate spread (val)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("std over samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        axes[row, 0].legend()
    save(fig, "training", f"Training: mean over {n_seeds} seed(s), band = min..max")
    return paths


def table(result):
    """Markdown: test accuracy (%) mean ± std over seeds, and the paired
    difference calibrated - baseline (mean ± std over seeds)."""
    bbs = backbones(result)
    head = "| condition | " + " | ".join(f"{b} baseline | {b} calibrated | {b} Δ" for b in bbs) + " |"
    lines = [head, "| --- |" + " ---: |" * (3 * len(bbs))]
    for name in result["config"]["conditions"]:
        cells = []
        for b in bbs:
            cells += [ms(acc(result, b, v, name)) for v in VARIANTS]
            d = paired_delta(result, b, name)
            cells.append(f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}" if len(d) > 1 else (f"{d.mean():+.1f}" if len(d) else "n/a"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
