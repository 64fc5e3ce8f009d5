"""The benchmark's outputs: the printed table, the JSON records, the PNG."""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from .contenders import COMPILED, EAGER

COLUMNS = (
    ("workload", 16, "s"), ("dtype", 10, "s"), ("backend", 17, "s"), ("pass", 14, "s"), ("alloc", 7, "s"),
    ("median_ms", 10, ".3f"), ("p20_ms", 9, ".3f"), ("p80_ms", 9, ".3f"), ("gbps", 7, ".1f"),
    ("floor_fraction", 6, ".2f"), ("speedup_vs_eager", 7, ".2f"), ("speedup_vs_compile", 7, ".2f"),
)  # fmt: skip
HEADERS = {
    "median_ms": "median ms", "p20_ms": "p20 ms", "p80_ms": "p80 ms", "gbps": "GB/s",
    "floor_fraction": "floor", "speedup_vs_eager": "x eager", "speedup_vs_compile": "x compile",
}  # fmt: skip


def device_tag(device_name: str, threads: Optional[int]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return f"{slug}-{threads}t" if threads else slug


def add_speedups(records: list[dict]) -> None:
    """Speedup against the eager reference and torch.compile of it, same workload,
    dtype, pass and allocator (all measured in the same process)."""
    key = lambda r: (r["workload"], r["dtype"], r["pass"], r["allocator"])  # noqa: E731
    base = {}
    for r in records:
        if r["backend"] in (EAGER, COMPILED):
            base[(r["backend"],) + key(r)] = r["median_ms"]
    for r in records:
        for name, col in ((EAGER, "speedup_vs_eager"), (COMPILED, "speedup_vs_compile")):
            ref = base.get((name,) + key(r))
            r[col] = ref / r["median_ms"] if ref and r["median_ms"] > 0 else None


def format_table(records: list[dict]) -> str:
    def cell(value, width, fmt):
        text = "-" if value is None else format(value, fmt)
        return text.rjust(width) if fmt != "s" else text.ljust(width)

    lines = ["  ".join(cell(HEADERS.get(c, c), w, "s") for c, w, _ in COLUMNS)]
    lines.append("-" * len(lines[0]))
    for r in records:
        row = dict(r, alloc=r["allocator"])
        lines.append("  ".join(cell(row.get(c), w, f) for c, w, f in COLUMNS))
    return "\n".join(lines)


def write_json(path: str, meta: dict, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)


def write_png(path: str, records: list[dict], title: str) -> None:
    """Floor fraction per backend and workload, one panel per module pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = [p for p in ("forward", "fwd+bwd", "fwd+bwd frozen", "summary", "modulate")
              if any(r["pass"] == p and r["floor_fraction"] for r in records)]  # fmt: skip
    groups = sorted({(r["workload"], r["dtype"], r["allocator"]) for r in records}, key=str)
    labels = sorted({r["backend"] for r in records}, key=lambda b: (b != EAGER, b != COMPILED, b))
    fig, axes = plt.subplots(len(passes), 1, figsize=(max(8, 0.9 * len(groups) * len(labels) / 2), 2.6 * len(passes)),
                             squeeze=False, sharex=True)  # fmt: skip
    width = 0.8 / max(1, len(labels))
    for ax, pass_name in zip(axes[:, 0], passes):
        for i, label in enumerate(labels):
            values = []
            for g in groups:
                match = [r for r in records if (r["workload"], r["dtype"], r["allocator"]) == g
                         and r["backend"] == label and r["pass"] == pass_name]  # fmt: skip
                values.append(match[0]["floor_fraction"] if match and match[0]["floor_fraction"] else 0.0)
            ax.bar([k + i * width for k in range(len(groups))], values, width, label=label)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_ylabel(f"{pass_name}\nfraction of floor")
    axes[-1, 0].set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
    axes[-1, 0].set_xticklabels([f"{w}\n{d}\n{a}" for w, d, a in groups], fontsize=7)
    axes[0, 0].legend(fontsize=8, ncol=len(labels))
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
