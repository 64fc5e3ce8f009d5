"""Why does one seed's calibrated conv model keep a noisy modality's gate open?

Retrains the calibrated models of ``robustness.py`` (same data, seeds,
hyperparameters and augmentation stream; one torch thread a process, as the
run, so the same numbers) and records after every epoch, on VALIDATION items
only, what each modality's gate network sees and gives, on clean items and
with that modality at -18 dB: the instance logit ``a`` (mean and 10th / 90th
percentiles), the instance gate ``2 sigmoid(a)``, its slope ``d gate / d a``
(how much of a gradient reaches ``a``: near 0 the gate is saturated and
learns no more), the mean dimension gate, support and conflict, and the
model's accuracy. Each retrained model's training curves are compared with
the committed run's, to show it is the same model.

    python python/gate_probe.py                       # conv, seeds 0-4, 4 epochs
    python python/gate_probe.py --epochs 12 --tag=-12ep

Writes ``python/results/gate-probe{tag}.json`` and prints a table per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import robustness  # noqa: E402
from avdigits import corrupt  # noqa: E402
from avdigits.data import MODALITIES  # noqa: E402

from mmcal_kernels import reference  # noqa: E402

SEVERITY = 5  # -18 dB (corrupt.SNR_DB)


def probe_sets(split, stats, seed=4321):
    """Validation items: clean, and each modality alone at -18 dB (fixed draws)."""
    sets = {"clean": corrupt.batch_of(split, slice(None))}
    for m, name in enumerate(MODALITIES):
        gen = torch.Generator().manual_seed(seed + m)
        kind, sev = corrupt.plan(len(split), "noise", m, SEVERITY, 1, gen)
        sets[f"{name} at -18 dB"] = corrupt.apply(corrupt.batch_of(split, slice(None)), kind, sev, split, stats, gen)
    return sets


def _quantile(t, q):
    return torch.quantile(t, q).item() if t.numel() else float("nan")


@torch.no_grad()
def probe(model, batch, size=300):
    """Per modality: the gate network's logit, gate, slope and cues over ``batch``; and the accuracy."""
    model.eval()
    calib = model.calib
    logits, support, conflict, dim_gate, correct = [], [], [], [], 0
    for b in robustness.chunks(batch, size):
        streams, masks = model.encode(b)
        masks = masks or [None] * len(streams)
        summaries = [reference.summary(x, lay, v) for x, lay, v in zip(streams, calib.layouts, masks)]
        params = calib.gate_params()
        _, diag, inter = reference.gates_with_intermediates(summaries, params, b["present"])
        logits.append(torch.cat([torch.nn.functional.linear(e, p.instance_weight, p.instance_bias)
                                 for e, p in zip(inter.hidden, params)], 1))  # fmt: skip
        support.append(diag["support"]), conflict.append(diag["conflict"])
        dim_gate.append(torch.stack([g.mean(1) for g in diag["dimension_gates"]], 1))
        correct += (model(b).argmax(-1) == b["label"]).sum().item()
    a, support, conflict, dim_gate = (torch.cat(t) for t in (logits, support, conflict, dim_gate))
    s = torch.sigmoid(a)
    out = {"acc": correct / len(batch["label"])}
    for m, name in enumerate(MODALITIES):
        am = a[:, m]
        out[name] = {
            "logit_mean": am.mean().item(), "logit_p10": _quantile(am, 0.1), "logit_p90": _quantile(am, 0.9),
            "gate": (2 * s[:, m]).mean().item(), "slope": (2 * s[:, m] * (1 - s[:, m])).mean().item(),
            "dimension_gate": dim_gate[:, m].mean().item(),
            "support": support[:, m].mean().item(), "conflict": conflict[:, m].mean().item(),
        }  # fmt: skip
    return out


def run_seed(task):
    """One calibrated model, trained as robustness.py trains it, probed after every epoch."""
    torch.set_num_threads(1)
    backbone, seed, cfg, hp = task
    data, val_sets = robustness._prepare(seed, cfg)
    sets = probe_sets(data.val, data.stats)
    epochs = []

    def on_epoch(model, epoch):
        epochs.append({"epoch": epoch, **{name: probe(model, b) for name, b in sets.items()}})

    record = robustness.train_run(backbone, "calibrated", seed, data, {**cfg, **hp}, {}, val_sets, on_epoch=on_epoch)
    return {"seed": seed, "curves": record["curves"], "epochs": epochs}


def same_as_run(result, committed):
    """Whether the retrained model's training loss and validation curves equal the committed run's."""
    if committed is None:
        return None
    keys = ("loss", "val_clean", "val_corrupted")
    return all(all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(result["curves"][k], committed["curves"][k]))
               and len(result["curves"][k]) == len(committed["curves"][k]) for k in keys)  # fmt: skip


def table(result):
    lines = [f"seed {result['seed']} (same model as the committed run: {result['same_as_run']})"]
    lines.append(f"  {'epoch':>5} {'set':<20} {'acc':>5}  " + "  ".join(f"{m + ': a / gate / slope':<28}" for m in MODALITIES))
    for e in result["epochs"]:
        for name in [k for k in e if k != "epoch"]:
            p = e[name]
            cells = "  ".join(f"{p[m]['logit_mean']:7.2f} / {p[m]['gate']:4.2f} / {p[m]['slope']:5.3f}      " for m in MODALITIES)
            lines.append(f"  {e['epoch']:>5} {name:<20} {p['acc']:5.3f}  {cells}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="conv", choices=["conv", "sequence"])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    ap.add_argument("--epochs", type=int, default=robustness.COMMON["epochs"])
    ap.add_argument("--tag", default="", help="suffix of the output file and of the committed run compared with")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=robustness.RESULTS)
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs: expected at least 1, got {args.epochs}")
    warnings.filterwarnings("ignore", message=".*reference backend.*")
    cfg = {**robustness.COMMON, "epochs": args.epochs}
    run = robustness._read_if_present(os.path.join(robustness.RESULTS, f"robustness{args.tag}.json"))
    committed = {}
    hp = robustness.HPARAMS[args.backbone]
    if run is not None and run["config"]["epochs"] == args.epochs:
        # The run's own learning rate (a 12-epoch run takes its own search's), not the 4-epoch constant.
        hp = run["config"]["hparams"][args.backbone]
        committed = {r["seed"]: r for r in run["runs"] if r["backbone"] == args.backbone and r["variant"] == "calibrated"}
    tasks = [(args.backbone, seed, cfg, hp) for seed in args.seeds]
    started = time.time()
    with mp.get_context("fork").Pool(args.workers) as pool:
        results = pool.map(run_seed, tasks)
    for r in results:
        r["same_as_run"] = same_as_run(r, committed.get(r["seed"]))
        print(table(r), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gate-probe{args.tag}.json")
    with open(path, "w") as f:
        json.dump({"backbone": args.backbone, "config": cfg, "hparams": hp, "severity_db": corrupt.SNR_DB[SEVERITY],
                   "machine": robustness.machine(args.workers), "wall_seconds": time.time() - started,
                   "results": results}, f, indent=1)  # fmt: skip
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
