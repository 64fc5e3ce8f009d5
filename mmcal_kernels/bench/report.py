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
    ("ops", 5, "d"), ("faults_per_step", 6, ".0f"), ("first_call_s", 7, ".1f"),
)  # fmt: skip
HEADERS = {
    "median_ms": "median ms", "p20_ms": "p20 ms", "p80_ms": "p80 ms", "gbps": "GB/s",
    "floor_fraction": "floor", "speedup_vs_eager": "x eager", "speedup_vs_compile": "x compile",
    "ops": "ops", "faults_per_step": "faults", "first_call_s": "1st s",
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
        if r["backend"] in (EAGER, COMPILED) and r.get("median_ms"):
            base[(r["backend"],) + key(r)] = r["median_ms"]
    for r in records:
        for name, col in ((EAGER, "speedup_vs_eager"), (COMPILED, "speedup_vs_compile")):
            ref = base.get((name,) + key(r))
            r[col] = ref / r["median_ms"] if ref and r.get("median_ms") else None


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


def row_line(r: dict) -> str:
    """One finished row as one printed line."""
    head = f"{r['workload']} {r['dtype']} {r['backend']} {r['pass']} ({r['allocator']})"
    if r.get("error"):
        return f"{head}: FAILED {r['error']}"
    text = f"{head}: {r['median_ms']:.3f} ms (p20 {r['p20_ms']:.3f}, p80 {r['p80_ms']:.3f})"
    if r.get("floor_fraction"):
        text += f", {r['floor_fraction']:.2f} of floor"
    if r.get("ops") is not None:
        text += f", {r['ops']} ops"
    if r.get("faults_per_step") is not None:
        text += f", {r['faults_per_step']:.0f} page faults a step"
    launches = r.get("launches") or {}
    if "forward" in launches:
        text += ", launches " + "/".join(f"{k} {v['kernels']}" for k, v in launches.items())
    return text + f", first call {r['first_call_s']:.1f} s"


def title(name: str, device_type: str, threads, quick: bool, filters: dict, torch_version: str, kernels: str) -> str:
    run = "QUICK run (small shapes, few repeats: not representative)" if quick else "full run"
    if filters:
        run += ", filtered: " + "; ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                                          for k, v in filters.items())  # fmt: skip
    where = f"{name} ({device_type}{f', {threads} threads' if threads else ''})"
    extra = f"CPU kernels {kernels}" if device_type == "cpu" else "CUDA"
    return f"{where}, torch {torch_version}, {extra}\n{run}"


def write_json(path: str, meta: dict, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)


def plot_panels(records: list[dict], passes: list[str]) -> list[tuple[str, str]]:
    """(pass, "floor" | "speed") for each panel, top to bottom. The gate
    network alone has no byte floor (docs/spec.md): its passes get the speed
    panel only, where an empty floor panel used to stand."""
    has_floor = {r["pass"] for r in records if r.get("floor_fraction") is not None}
    return [(p, kind) for p in passes for kind in ("floor", "speed") if kind == "speed" or p in has_floor]


def write_png(path: str, records: list[dict], title: str) -> None:
    """Per module pass, one above the other: the fraction of docs/spec.md's
    byte floor (for the passes that have one), then the speedup against
    torch.compile of the reference with each bar's median ms written on it.
    Bars per workload / dtype / allocator."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.get("median_ms")]
    passes = [p for p in ("forward", "fwd+bwd", "fwd+bwd frozen", "summary", "modulate", "gates", "gates fwd+bwd")
              if any(r["pass"] == p for r in ok)]  # fmt: skip
    if not passes:
        return
    groups = sorted({(r["workload"], r["dtype"], r["allocator"]) for r in ok}, key=str)
    labels = sorted({r["backend"] for r in ok}, key=lambda b: (b != EAGER, b != COMPILED, b))
    versus = "speedup_vs_compile" if any(r["backend"] == COMPILED for r in ok) else "speedup_vs_eager"
    versus_name = "torch.compile of the reference" if versus == "speedup_vs_compile" else "the eager reference (no compiled rows)"
    width = 0.8 / max(1, len(labels))
    fig_w = min(60, max(12, 1.25 * len(groups) + 1.5, 0.22 * len(groups) * len(labels) + 1.5))
    title = "\n".join(textwrap.fill(line, width=int(fig_w * 9)) for line in title.split("\n"))
    panels = plot_panels(ok, passes)
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, 2.6 * len(panels) + 1.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (pass_name, kind) in zip(axes[:, 0], panels):
        for i, label in enumerate(labels):
            xs, ys, ms = [], [], []
            for k, g in enumerate(groups):
                match = [r for r in ok if (r["workload"], r["dtype"], r["allocator"]) == g
                         and r["backend"] == label and r["pass"] == pass_name]  # fmt: skip
                if match:
                    xs.append(k + i * width)
                    ys.append(match[0].get("floor_fraction" if kind == "floor" else versus) or 0.0)
                    ms.append(match[0]["median_ms"])
            bars = ax.bar(xs, ys, width, label=label, color=colors[i % len(colors)])
            if kind == "speed":
                for bar, m in zip(bars, ms):
                    ax.annotate(f"{m:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), rotation=90,
                                ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        if kind == "floor":
            ax.set_ylabel(f"{pass_name}\nfraction of floor", fontsize=10)
            ax.set_title(f"{pass_name}: fraction of docs/spec.md's byte floor (higher is better)", fontsize=10, loc="left")
        else:
            ax.set_ylabel(f"{pass_name}\nspeedup", fontsize=10)
            ax.set_title(f"{pass_name}: speedup vs {versus_name} (higher is better); on each bar its median ms",
                         fontsize=10, loc="left")  # fmt: skip
            ax.set_ylim(0, max([b.get_height() for b in ax.patches] + [1.0]) * 1.3)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
        ax.set_xticklabels([f"{w}\n{d}\n{a}" for w, d, a in groups], fontsize=9)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # tight_layout leaves the suptitle its room
    top = max(ax.get_position().y1 for ax in axes[:, 0])
    fig.legend(handles, names, loc="lower center", ncol=min(len(labels), 8), fontsize=10,
               bbox_to_anchor=(0.5, top + 0.25 / fig.get_figheight()))  # fmt: skip
    fig.savefig(path, dpi=100)
    plt.close(fig)
