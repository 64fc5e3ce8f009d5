"""Does pre-fusion calibration make fusion robust to noisy, conflicting and
missing modalities? Audio-visual digits (``avdigits``), two backbones, each
with and without ``PreFusionCalibration``, several seeds, on the CPU.

    pip install ".[demo]"; apt-get install espeak-ng   # or: bash tests/install_demo_deps.sh
    python python/robustness.py                # 5 seeds x 2 backbones x 2 variants
    python python/robustness.py --quick        # 1 seed, a few steps (CI)
    python python/robustness.py --select       # the validation-only hyperparameter search
    python python/robustness.py --backbones conv --variants constant-gate --tag=-ablation --no-figures
                                               # the ablation of docs/robustness.md (it also passes --conditions)

Writes ``python/results/robustness.json`` (every run's numbers) and the
figures ``python/results/*.png`` (``--quick`` writes ``*-quick.*``).
Hyperparameters come from ``--select`` on the validation split (never the test
split) and are the same for both variants; see docs/robustness.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's mmcal_kernels, when not installed

from avdigits import corrupt  # noqa: E402
from avdigits.data import FORMAT_VERSION, MODALITIES, build  # noqa: E402
from avdigits.models import BACKBONES  # noqa: E402

RESULTS = os.path.join(HERE, "results")
# Chosen by --select on the validation split (see docs/robustness.md); the same for both variants.
HPARAMS = {"sequence": {"lr": 1e-2}, "conv": {"lr": 3e-2}}
COMMON = {"epochs": 4, "batch": 64, "weight_decay": 1e-4, "n_train": 2400, "n_val": 600, "n_test": 800,
          "clips_per_class": 100}  # fmt: skip
LR_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # --select's default: the grid of docs/robustness.md
QUICK = {"epochs": 2, "batch": 32, "weight_decay": 1e-4, "n_train": 96, "n_val": 40, "n_test": 60,
         "clips_per_class": 6, "steps": 3}  # fmt: skip


BYPASS = ("clean", "noise/random/3", "noise/random/5", "conflict/random", "removal/random")


def conditions():
    """Evaluation conditions: name -> (kind, target, severity, count)."""
    out = {"clean": ("clean", "random", 0, 0)}
    targets = list(enumerate(MODALITIES)) + [("random", "random")]
    for kind in ("noise", "conflict", "removal"):
        for target, tname in targets:
            for s in corrupt.SEVERITIES if kind == "noise" else (1,):
                out[f"{kind}/{tname}" + (f"/{s}" if kind == "noise" else "")] = (kind, target, s, 1)
        if kind != "noise":
            out[f"{kind}/two-random"] = (kind, "random", 1, 2)
    return out


def corrupted_sets(split, stats, names, seed=1234):
    """The corrupted copies of ``split``, one per condition, with fixed randomness
    (every model of a seed sees the very same corrupted samples). A condition's
    draw is seeded by its place among ALL conditions, not among ``names``, so a
    run of a few conditions (the ablation's ``--conditions``) corrupts the very
    samples the full run corrupted, and its models are compared pairwise."""
    conds, out = conditions(), {}
    place = {name: i for i, name in enumerate(conds)}
    for name in names:
        kind, target, severity, count = conds[name]
        gen = torch.Generator().manual_seed(seed + place[name])
        k, s = corrupt.plan(len(split), kind, target, severity, count, gen)
        out[name] = corrupt.apply(corrupt.batch_of(split, slice(None)), k, s, split, stats, gen)
    return out


def val_mixture(split, stats, seed=99):
    """The validation set under the training augmentation's distribution (fixed draw)."""
    gen = torch.Generator().manual_seed(seed)
    k, s = corrupt.random_plan(len(split), gen)
    return corrupt.apply(corrupt.batch_of(split, slice(None)), k, s, split, stats, gen)


def chunks(batch, size):
    n = len(batch["label"])
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, batch, size=400):
    """Accuracy; for a calibrated model also the instance gate of each modality
    (mean and spread over the samples where it is present) and the mean
    dimension gate."""
    model.eval()
    correct, inst, dims, present = 0, [], [], []
    for b in chunks(batch, size):
        logits, diag = model(b, diagnostics=True)
        correct += (logits.argmax(-1) == b["label"]).sum().item()
        if diag is not None:
            inst.append(diag["instance_gate"])
            dims.append(torch.stack([g.mean(1) for g in diag["dimension_gates"]], 1))
            present.append(b["present"])
    out = {"acc": correct / len(batch["label"])}
    if inst:
        inst, dims, present = torch.cat(inst), torch.cat(dims), torch.cat(present)
        per = [inst[present[:, m], m] for m in range(inst.shape[1])]
        out["instance_gate"] = [g.mean().item() if len(g) else float("nan") for g in per]
        out["instance_gate_std"] = [g.std().item() if len(g) > 1 else float("nan") for g in per]
        out["dimension_gate"] = [dims[present[:, m], m].mean().item() if len(per[m]) else float("nan")
                                 for m in range(inst.shape[1])]  # fmt: skip
    return out


def train_run(backbone, variant, seed, data, hp, evals, val_sets, pbar=None, steps=None, on_epoch=None):
    """Train one model; returns its record (curves, test results, gate weights).
    ``on_epoch(model, epoch)``, if given, runs after each epoch's validation
    (python/gate_probe.py records what the gate network sees there)."""
    torch.manual_seed(seed)
    model = BACKBONES[backbone](variant)
    gated = variant != "baseline"
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    n = len(data.train)
    per_epoch = steps or -(-n // hp["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, hp["lr"], total_steps=hp["epochs"] * per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(10_000 + seed)  # the augmentation stream: the same for both variants
    curves = {k: [] for k in ("loss", "val_clean", "val_corrupted", "instance_gate_val", "instance_gate_std")}
    start = time.perf_counter()
    for _ in range(hp["epochs"]):
        model.train()
        order, total = torch.randperm(n, generator=gen), 0.0
        for i in range(per_epoch):
            idx = order[i * hp["batch"] : (i + 1) * hp["batch"]]
            kind, sev = corrupt.random_plan(len(idx), gen)
            b = corrupt.apply(corrupt.batch_of(data.train, idx), kind, sev, data.train, data.stats, gen)
            loss = F.cross_entropy(model(b), b["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        curves["loss"].append(total / per_epoch)
        clean, mixed = evaluate(model, val_sets["clean"]), evaluate(model, val_sets["mixture"])
        curves["val_clean"].append(clean["acc"])
        curves["val_corrupted"].append(mixed["acc"])
        if gated:
            curves["instance_gate_val"].append(mixed["instance_gate"])
            curves["instance_gate_std"].append(mixed["instance_gate_std"])
        if on_epoch is not None:
            on_epoch(model, len(curves["loss"]))
        if pbar is not None:
            pbar.update(1)
    train_s = time.perf_counter() - start
    record = {"backbone": backbone, "variant": variant, "seed": seed,
              "hparams": hp, "train_seconds": train_s, "curves": curves,
              "test": {name: evaluate(model, b) for name, b in evals.items()}}  # fmt: skip
    if variant == "calibrated":
        # What the trained gates contribute: the same network with the calibration
        # taken out (every gate 1) on a few conditions.
        c, model.calib = model.calib, None
        record["test_without_calibration"] = {n: evaluate(model, evals[n])["acc"] for n in BYPASS if n in evals}
        model.calib = c
        record["gate_weight_norms"] = {
            "instance": [layer.weight.norm().item() for layer in c.gate_instance],
            "instance_bias": [layer.bias.item() for layer in c.gate_instance],
            "dimension": [layer.weight.norm().item() for layer in c.gate_dim],
        }
    return record


# Filled in the parent before the worker processes fork: per seed, the data,
# the corrupted test sets and the validation sets; and the progress queue.
SHARED: dict = {}


def _prepare(seed, cfg):
    data = build(cfg["n_train"], cfg["n_val"], cfg["n_test"], seed=seed, clips_per_class=cfg["clips_per_class"])
    val_sets = {"clean": corrupt.batch_of(data.val, slice(None)), "mixture": val_mixture(data.val, data.stats)}
    return data, val_sets


def _worker(task):
    torch.set_num_threads(1)
    backbone, variant, seed, hp, steps, split = task
    data, evals, val_sets = SHARED[seed]
    if split == "val":  # hyperparameter search: score on the validation split only
        evals = val_sets
    return train_run(backbone, variant, seed, data, hp, evals, val_sets, SHARED["queue"], steps)


class _Ticks:
    """What ``train_run`` calls ``pbar``: in a worker, one tick per epoch to the parent's bar."""

    def __init__(self, queue):
        self.queue = queue

    def update(self, n):
        self.queue.put(n)

    def set_postfix(self, **kw):
        pass


def run_all(tasks, workers, desc, total_epochs, on_result):
    """Run ``tasks`` in ``workers`` forked processes (one torch thread each), with a progress bar."""
    import multiprocessing as mp
    import queue as queue_mod

    from tqdm import tqdm

    ctx = mp.get_context("fork")
    SHARED["queue"] = _Ticks(ctx.Queue())
    results = [None] * len(tasks)
    with tqdm(total=total_epochs, desc=desc, unit="epoch", dynamic_ncols=True) as pbar, ctx.Pool(workers) as pool:
        pending = {pool.apply_async(_worker, (t,)): i for i, t in enumerate(tasks)}
        while pending:
            try:
                pbar.update(SHARED["queue"].queue.get(timeout=0.5))
            except queue_mod.Empty:
                pass
            for fut in [f for f in pending if f.ready()]:
                i = pending.pop(fut)
                results[i] = fut.get()
                on_result([r for r in results if r is not None])
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, tiny data, a few steps (CI smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0-4; --quick: 0)")
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--select", action="store_true", help="hyperparameter search on the validation split only")
    ap.add_argument("--lrs", type=float, nargs="+", default=None,
                    help=f"--select: learning rates to try (default: {' '.join(map(str, LR_GRID))}, the grid of docs/robustness.md)")
    ap.add_argument("--variants", nargs="+", default=None, choices=["baseline", "calibrated", "constant-gate"],
                    help="default: baseline calibrated; constant-gate: the ablation")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; --quick: 2)")
    ap.add_argument("--lr-from", default=None, metavar="SELECT_JSON",
                    help="take the learning rates a --select chose (its config must match this run's) instead of the built-in ones")
    ap.add_argument("--conditions", nargs="+", default=None, help="evaluate only these test conditions (default all)")
    ap.add_argument("--tag", default="", help="suffix of the output files; write --tag=-ablation (with '=': it starts with a dash)")
    ap.add_argument("--workers", type=int, default=2, help="processes, one torch thread each (default 2)")
    ap.add_argument("--out", default=RESULTS, help="output folder (default python/results)")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*reference backend.*")
    torch.set_num_threads(1)  # on a busy 2-core machine one thread per process is several times faster
    cfg = dict(QUICK if args.quick else COMMON)
    if args.epochs is not None:
        if args.epochs < 1:
            ap.error(f"--epochs: expected at least 1, got {args.epochs}")
        cfg["epochs"] = args.epochs
    if args.select:
        # A search trains baseline and calibrated on seed 100 and reads no test
        # condition: these options would be ignored, so refuse them.
        for option, value in (("--lr-from", args.lr_from), ("--seeds", args.seeds), ("--variants", args.variants),
                              ("--conditions", args.conditions)):  # fmt: skip
            if value is not None:
                ap.error(f"{option}: a --select does not take it (it chooses its own learning rates, on seed "
                         f"{SELECT_SEED}, for both variants, on the validation split); give one or the other")
        args.lrs = args.lrs or LR_GRID
    elif args.lrs is not None:
        ap.error("--lrs: only a --select tries learning rates; a run takes them from HPARAMS or --lr-from")
    args.variants = args.variants or ["baseline", "calibrated"]
    hparams = {b: dict(hp) for b, hp in HPARAMS.items()}
    if args.lr_from:
        with open(args.lr_from) as f:
            search = json.load(f)
        if _searched_another(search, cfg):
            ap.error(f"--lr-from: {args.lr_from} searched another configuration ({search['config']}, "
                     f"data format {search.get('data_format')}) than this run's ({cfg}, data format {FORMAT_VERSION})")
        for b in args.backbones:
            if b not in search["chosen"]:
                ap.error(f"--lr-from: {args.lr_from} chose no learning rate for backbone {b!r}")
            hparams[b]["lr"] = search["chosen"][b]["lr"]
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    suffix = ("-quick" if args.quick else "") + args.tag
    if args.select:
        path = os.path.join(args.out, f"select{suffix}.json")
        old = _read_if_present(path)
        if old is not None and _searched_another(old, cfg):
            ap.error(f"--select: {path} holds a search of another configuration ({old['config']}, data format "
                     f"{old.get('data_format')}); this one ({cfg}, data format {FORMAT_VERSION}) would replace it. "
                     "Pass --tag, --out, or move that file away")  # fmt: skip
        return select(args, cfg, started, path, old)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(range(5)))
    names = args.conditions or list(conditions())
    path = os.path.join(args.out, f"robustness{suffix}.json")
    config = run_config(cfg, hparams, seeds, args.variants, names)
    old = _read_if_present(path)
    if old is not None and old["config"] != config:
        changed = sorted(k for k in set(old["config"]) | set(config) if old["config"].get(k) != config.get(k))
        ap.error(f"{path} holds a run of another configuration (it differs in {', '.join(changed)}); this run "
                 "would replace it. Pass --tag, --out, or move that file away")  # fmt: skip
    for seed in seeds:
        data, val_sets = _prepare(seed, cfg)
        SHARED[seed] = (data, corrupted_sets(data.test, data.stats, names), val_sets)
    tasks = [(b, c, s, {**cfg, **hparams[b]}, cfg.get("steps"), "test")
             for s in seeds for b in args.backbones for c in args.variants]  # fmt: skip

    def write(runs):
        result = {
            "config": config,
            "machine": machine(args.workers),
            "wall_seconds": time.time() - started,
            "complete": len(runs) == len(tasks),
            "runs": sorted(runs, key=lambda r: (r["backbone"], r["variant"], r["seed"])),
        }  # fmt: skip
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        return result

    run_all(tasks, args.workers, "robustness", len(tasks) * cfg["epochs"], write)
    with open(path) as f:
        result = json.load(f)
    print(f"wrote {path} ({result['wall_seconds']:.0f} s)")
    if not args.no_figures:
        from avdigits import report

        for p in report.figures(result, args.out, suffix):
            print(f"wrote {p}")
        print(report.table(result))
    return result


def run_config(cfg, hparams, seeds, variants, names):
    """A run's ``config`` as its JSON stores it (lists, not tuples), so that a
    rerun's compares equal to the file's."""
    return json.loads(json.dumps({
        **cfg, "hparams": hparams, "data_format": FORMAT_VERSION, "seeds": seeds, "snr_db": corrupt.SNR_DB,
        "variants": variants, "conditions": {k: list(conditions()[k]) for k in names}}))  # fmt: skip


SELECT_SEED = 100  # not a reporting seed


def _read_if_present(path):
    """The JSON at ``path``, or None where there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _searched_another(search, cfg) -> bool:
    """Whether a --select file searched another configuration or data format than ``cfg``."""
    return search["config"] != cfg or search.get("data_format") != FORMAT_VERSION


def select(args, cfg, started, path, old):
    """Validation-only search: each candidate learning rate trains both variants
    of each backbone on seed 100; the score is the mean validation accuracy
    (clean, and under the training corruption mixture) of the two variants
    together, so the choice favours neither. The test split is not evaluated."""
    data, val_sets = _prepare(SELECT_SEED, cfg)
    SHARED[SELECT_SEED] = (data, None, val_sets)
    tasks = [(b, c, SELECT_SEED, {**cfg, "lr": lr}, None, "val")
             for b in args.backbones for lr in args.lrs for c in ("baseline", "calibrated")]  # fmt: skip
    runs = run_all(tasks, args.workers, "select", len(tasks) * cfg["epochs"], lambda runs: None)
    rows = [{"backbone": r["backbone"], "lr": r["hparams"]["lr"], "variant": r["variant"],
             "val_clean": r["test"]["clean"]["acc"], "val_corrupted": r["test"]["mixture"]["acc"]} for r in runs]  # fmt: skip
    curves = [{k: r[k] for k in ("backbone", "variant", "hparams", "curves")} for r in runs]
    wall = time.time() - started
    if old is not None:  # add to an earlier search of this configuration (main() checked), replacing what was rerun
        done = {(r["backbone"], r["lr"], r["variant"]) for r in rows}
        kept = [r for r in old["rows"] if (r["backbone"], r["lr"], r["variant"]) not in done]
        if kept:  # the time of the calls whose rows the file holds (a replaced row's time included)
            wall += old.get("wall_seconds", 0.0)
        rows = kept + rows
        curves = [c for c in old["curves"] if (c["backbone"], c["hparams"]["lr"], c["variant"]) not in done] + curves
    chosen = {}
    for b in sorted({r["backbone"] for r in rows}):
        score = {}
        for r in rows:
            if r["backbone"] == b:
                score.setdefault(r["lr"], []).append((r["val_clean"] + r["val_corrupted"]) / 2)
        score = {lr: sum(v) / len(v) for lr, v in score.items()}
        chosen[b] = {"lr": max(score, key=score.get), "score": score}
    out = {"rows": rows, "chosen": chosen, "config": cfg, "data_format": FORMAT_VERSION, "seed": SELECT_SEED,
           "machine": machine(args.workers), "wall_seconds": wall, "curves": curves}  # fmt: skip
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    for r in rows:
        print(r)
    print("chosen:", json.dumps({b: c["lr"] for b, c in chosen.items()}))
    return out


def machine(workers):
    return {"cpu": cpu_name(), "workers": workers, "threads_per_worker": 1, "torch": torch.__version__,
            "python": platform.python_version(), "backend": backend_name()}  # fmt: skip


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def backend_name():
    from mmcal_kernels import PreFusionCalibration

    return PreFusionCalibration([2, 2]).resolved_backend("cpu")


if __name__ == "__main__":
    main()
