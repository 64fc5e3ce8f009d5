"""Paired ratios: the contenders of one workload timed in alternating rounds,
so that a shared machine's drift cancels out of their ratios.

The main benchmark (``runner.py``) times each row on its own, minutes apart
from the rows it is compared with; on the project's 2-core VM, runs a few
minutes apart moved single rows by up to 2x, in both directions. Here every
contender of a workload is held at once, and each pass is timed in rounds:
a round times one block of calls (about ``--block-ms``) of every contender,
in an order that rotates from round to round, and the ratio of two contenders
is taken within each round. Drift slower than a round cancels out of it; the
spread of the per-round ratios (p20-p80) shows what faster noise is left.

    python benchmarks/paired.py                            # five real workloads, forward and fwd+bwd
    python benchmarks/paired.py --workloads mosei-aligned --rounds 31

Compiled contenders are the runner's (``fullgraph=True``, each its own
``CompileWatch``); dynamo is reset once per workload, and every timed call of
a compiled contender is checked to have run its compiled graph, with no
recompile. Writes ``<device>-paired.json`` (every round's time, and the
ratios) under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Sequence

import torch

from .. import backends
from . import bounds, report
from .compiled import CompileWatch, fresh, strict_recompiles
from .contenders import COMPILED, EAGER, contenders, input_sets, make_module, pass_callables
from .floors import PASSES
from .runner import DTYPES, allocator_label, machine_meta, package_info
from .timing import input_set_count, quantile_summary
from .workloads import NAMES, workload

REAL_WORKLOADS = tuple(n for n in NAMES if not n.startswith("stress"))


def round_order(labels: Sequence[str], round_index: int) -> list[str]:
    """The contenders in round ``round_index``: rotated by one each round, so
    over ``len(labels)`` rounds each runs once in every position (no
    contender is always the one that follows another's cache footprint)."""
    k = round_index % len(labels)
    return list(labels[k:]) + list(labels[:k])


def time_rounds(calls: dict[str, Callable[[], object]], numbers: dict[str, int], rounds: int,
                sync: Callable[[], None] = lambda: None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each contender in each round: ``numbers[label]``
    calls in one block, blocks of all contenders in ``round_order``."""
    labels = list(calls)
    times: dict[str, list[float]] = {label: [0.0] * rounds for label in labels}
    for r in range(rounds):
        for label in round_order(labels, r):
            fn, n = calls[label], numbers[label]
            sync()
            start = clock()
            for _ in range(n):
                fn()
            sync()
            times[label][r] = (clock() - start) / n
    return times


def paired_ratios(times: dict[str, list[float]], subject: str) -> dict[str, dict]:
    """For every other contender X: ``time(X) / time(subject)`` in each round
    (above 1: the subject is faster), summarised over rounds."""
    if subject not in times:
        raise ValueError(f"subject: {subject!r} is not among the timed contenders {sorted(times)}")
    base = times[subject]
    return {
        label: quantile_summary([t / s for t, s in zip(series, base)])
        for label, series in times.items()
        if label != subject
    }


def calls_per_block(fn: Callable[[], object], block_s: float, sync: Callable[[], None]) -> int:
    """How many calls fill about ``block_s`` seconds (at least one)."""
    sync()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    sync()
    once = max((time.perf_counter() - start) / 3, 1e-7)
    return max(1, round(block_s / once))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mmcal-bench-paired", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(REAL_WORKLOADS), choices=NAMES)
    p.add_argument("--passes", nargs="+", default=["forward", "fwd+bwd"], choices=PASSES)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--contenders", nargs="+", default=None,
                   help="contender labels (default: the eager reference, its torch.compile, every eager kernel "
                        "backend)")
    p.add_argument("--subject", default=None,
                   help="the contender the ratios are of (default: the first kernel backend)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block-ms", type=float, default=40.0, help="the time of one contender's block of calls in a round")
    p.add_argument("--bounds", action="store_true",
                   help="also time, in the same rounds, the bytes a pass must move from memory (read with sum, "
                        "and moved by the cpu backend's passes) and one sample's gate-network products, and give "
                        "every contender's time over the faster floor plus the products, an estimate of the least "
                        "time (bounds.py)")
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, 3 rounds, short blocks")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--name", default=None, help="file name stem instead of <device>-paired")
    p.add_argument("--compile-inner", default=None, help=argparse.SUPPRESS)  # tests: dynamo's "eager" backend
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds: expected at least 1, got {args.rounds}")
    if args.quick:
        args.rounds, args.block_ms = min(args.rounds, 3), min(args.block_ms, 5.0)
    return args


def chosen_contenders(args, device: torch.device):
    found = contenders(device, compile_reference=True)
    if args.contenders is None:
        labels = [EAGER, COMPILED] + [c.label for c in found if not c.compiled and c.backend != "reference"]
    else:
        labels = args.contenders
    by_label = {c.label: c for c in found}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise SystemExit(f"--contenders: {unknown} not available here; choose from {sorted(by_label)}")
    chosen = [by_label[label] for label in labels]
    kernel = [c.label for c in chosen if c.backend != "reference" and not c.compiled]
    subject = args.subject or (kernel[0] if kernel else None)
    if subject not in labels:
        raise SystemExit(f"--subject: {subject!r} is not among the contenders {labels}")
    return chosen, subject


def measure_workload(args, device, name: str, chosen, subject: str) -> list[dict]:
    """Every pass of one workload: all contenders held, timed in rounds."""
    dtype, param_dtype = DTYPES[args.dtype]
    w = workload(name, dtype)
    if args.quick:
        w = w.scaled(batch=4, max_positions=16)
    sets = input_sets(w, dtype, device, count=input_set_count(device, w.feature_bytes(dtype)))  # as the runner
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fresh()  # compiled contenders of this workload start from nothing; none is reset while another is held
    held = []
    for c in chosen:
        watch = CompileWatch(c.label, c.mode, inner=args.compile_inner) if c.compiled else None
        module = make_module(w, device, c.backend, param_dtype)
        held.append((c, watch, pass_callables(w, c, module, watch)))
    records = []
    for pass_name in args.passes:
        what = f"{w.name} {args.dtype} {pass_name}"
        calls, numbers, before = {}, {}, {}
        with strict_recompiles():
            for c, watch, fns in held:
                fn, step = fns[pass_name], [0]

                def call(fn=fn, step=step):
                    step[0] += 1
                    return fn(sets[step[0] % len(sets)])

                snap = watch.snapshot() if watch else None
                first = time.perf_counter()
                call()  # a compiled contender compiles here
                first_call_s = time.perf_counter() - first
                if watch:
                    watch.check_compiled(snap, f"{what} {c.label}")
                # every later call (block sizing and rounds) must run the compiled graph, none compile
                before[c.label] = (watch.snapshot() if watch else None, step, step[0], first_call_s)
                calls[c.label] = call
                numbers[c.label] = calls_per_block(call, args.block_ms / 1e3, sync)
            parts = bound_parts(args, w, device, pass_name, sets)
            for label, fn in parts.items():
                fn()  # first call: allocation and BLAS set-up stay out of the rounds
                calls[label], numbers[label] = fn, calls_per_block(fn, args.block_ms / 1e3, sync)
            times = time_rounds(calls, numbers, args.rounds, sync)
            for c, watch, _ in held:
                snap, step, steps_then, _ = before[c.label]
                if watch:
                    watch.check(snap, step[0] - steps_then, f"{what} {c.label}")
        ratios = paired_ratios({c.label: times[c.label] for c, _, _ in held}, subject)
        over_bound = bounds.bound_ratios(times) if parts else {}
        def timed(label):
            """The fields of every row of this pass: what was timed, and its rounds."""
            summary = quantile_summary(times[label])
            return {
                "workload": w.name, "dtype": args.dtype, "pass": pass_name, "backend": label,
                "allocator": allocator_label(device), "calls_per_block": numbers[label],
                "median_ms": summary["median"] * 1e3, "p20_ms": summary["p20"] * 1e3, "p80_ms": summary["p80"] * 1e3,
                "round_ms": [t * 1e3 for t in times[label]],
            }  # fmt: skip

        for c, _, _ in held:
            records.append({
                **timed(c.label), "compiled": c.compiled, "input_sets": len(sets), "first_call_s": before[c.label][3],
                "subject": subject,
                "ratio_vs_subject": ratios.get(c.label),  # time(this) / time(subject) per round; None for the subject
                "ratio_vs_bound": over_bound.get(c.label),  # time(this) / (faster floor + products) per round
            })  # fmt: skip
        rows = records[-len(held):]
        references = {COMPILED} | ({EAGER} if pass_name == "fwd+bwd" else set())  # the forward's target: compiled / 2
        needed = bounds.needed_ratios(times, pass_name, EAGER, COMPILED) if parts and references <= set(times) else None
        part_rows = [{
            **timed(label), "bound_part": True,
            "bound_ms": {k: v * 1e3 for k, v in over_bound[bounds.BOUND].items()},
            "needed": needed,  # issue 12's targets over the estimate, where both references ran
        } for label in parts]  # fmt: skip
        records += part_rows
        print(format_pass(rows, part_rows), flush=True)
    return records


def bound_parts(args, w, device, pass_name: str, sets) -> dict:
    """The timed parts of ``bounds.py``'s estimate, where asked and defined:
    the floor read over the contenders' own input ``sets``, the floor moved by
    the cpu backend's passes where that backend is built, and the products."""
    if not args.bounds or pass_name not in bounds.PASSES:
        return {}
    _, param_dtype = DTYPES[args.dtype]
    ct = torch.promote_types(torch.promote_types(torch.float32, sets[0].features[0].dtype), param_dtype)
    parts = {bounds.FLOOR: bounds.floor_read_call(sets, pass_name)}
    if backends.get("cpu").usable:
        parts[bounds.FLOOR_KERNELS] = bounds.floor_kernels_call(sets, w.layouts, pass_name)
    parts[bounds.PRODUCTS] = bounds.products_call(w, ct, device, pass_name)
    return parts


def format_pass(rows: list[dict], parts: Sequence[dict] = ()) -> str:
    first = rows[0]
    rounds = len(first["round_ms"])
    lines = [f"{first['workload']} {first['dtype']} {first['pass']} ({first['allocator']}, {rounds} rounds)"]
    for r in rows:
        ratio = r["ratio_vs_subject"]
        tail = (f"  {r['subject']} is {ratio['median']:.2f}x faster (p20-p80 {ratio['p20']:.2f}-{ratio['p80']:.2f})"
                if ratio else "  (subject)")  # fmt: skip
        spread = f"(p20-p80 {r['p20_ms']:.3f}-{r['p80_ms']:.3f})"
        lines.append(f"  {r['backend']:<20} median {r['median_ms']:8.3f} ms {spread}{tail}")
    for part in parts:
        spread = f"(p20-p80 {part['p20_ms']:.3f}-{part['p80_ms']:.3f})"
        lines.append(f"  {part['backend']:<20} median {part['median_ms']:8.3f} ms {spread}  (bound part)")
    if parts:
        bound = parts[0]["bound_ms"]
        over = ", ".join(f"{r['backend']} {r['ratio_vs_bound']['median']:.2f}x" for r in rows)
        lines.append(f"  estimate (faster floor + products) median {bound['median']:.3f} ms; time over it: {over}")
        needed = parts[0]["needed"]
        if needed:
            lines.append(f"  the targets need {needed['median']:.2f}x the estimate (p20-p80 {needed['p20']:.2f}-"
                         f"{needed['p80']:.2f}): {needed['verdict']}")
    return "\n".join(lines)


def run_meta(args, device) -> dict:
    return {
        **machine_meta(device), **package_info(), "allocator": allocator_label(device),
        "rounds": args.rounds, "block_ms": args.block_ms, "quick": args.quick, "bounds": args.bounds,
        "compile_backend": args.compile_inner or "inductor",
        "method": "contenders held together; each round one block of calls each, order rotated per round; "
                  "ratio = time(contender) / time(subject) within a round, median (p20-p80) over rounds",
    }  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.bounds and device.type != "cpu":
        # Each product would be a launch of a few microseconds where its arithmetic takes less: the
        # sum would measure launches, not what a fused kernel must spend, and overstate the estimate.
        raise SystemExit(f"--bounds: defined on the CPU only (bounds.py), not on {device.type}: on a GPU each "
                         "product is a launch, and the launches, not the products, would set the estimate")  # fmt: skip
    chosen, subject = chosen_contenders(args, device)
    meta = run_meta(args, device)
    meta["subject"] = subject
    stem = args.name or f"{report.device_tag(meta['device'], meta['threads'])}-paired{'-quick' if args.quick else ''}"
    path = os.path.join(args.out, f"{stem}.json")
    threads = f", {meta['threads']} threads" if meta["threads"] else ""
    print(f"{meta['device']} ({device.type}{threads}); torch {torch.__version__}; kernels {meta['kernels']}; "
          f"allocator {meta['allocator']}", flush=True)  # fmt: skip
    records = []
    for name in args.workloads:
        records += measure_workload(args, device, name, chosen, subject)
        report.write_json(path, dict(meta, complete=False), records)  # after every workload: a cut run keeps it
    report.write_json(path, dict(meta, complete=True), records)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
