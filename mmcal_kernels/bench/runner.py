"""``mmcal-bench`` / ``python benchmarks/run.py``: time every contender on every
workload, print the table, write ``<out>/<device-tag>.json`` and ``.png``.

On the CPU, workloads over 32 MB are measured twice: as the process stands, and
with glibc told to keep freed memory (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``, which act only if set before the process starts,
so this program re-runs itself in a subprocess for that setting). A fresh
output over the mmap threshold otherwise pays first-touch page faults on every
call, which can cost several times the kernel time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

from .. import __version__
from ..info import _cpu_name, _triton_version
from . import report
from .contenders import contenders, input_sets, make_module, pass_callables
from .floors import PASSES, floor_bytes
from .timing import copy_bandwidth, time_call
from .workloads import LARGE_BYTES, NAMES, workload

DTYPES = {"float32": (torch.float32, torch.float32), "bf16-mixed": (torch.bfloat16, torch.float32)}
REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "8000000000"}


def allocator_label(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-caching"
    return "reuse" if all(os.environ.get(k) == v for k, v in REUSE_ENV.items()) else "glibc"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mmcal-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, few repeats")
    p.add_argument("--workloads", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    p.add_argument("--backends", nargs="+", default=None, help="contender labels to keep (default: all)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders (reference and kernel backends)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="folder for JSON and PNG")
    p.add_argument("--allocator-rerun", choices=("auto", "always", "never"), default="auto",
                   help="CPU: re-run large workloads with the reusing allocator (auto: those over 32 MB)")
    p.add_argument("--child-json", default=None, help=argparse.SUPPRESS)  # the re-run's records go here
    return p.parse_args(argv)


def measure(args, device: torch.device) -> tuple[list[dict], dict]:
    from tqdm import tqdm

    alloc = allocator_label(device)
    bandwidth, bw_timing = copy_bandwidth(device, quick=args.quick)
    meta = {"copy_bandwidth_gbps": {alloc: bandwidth / 1e9}}
    jobs = []
    for name in args.workloads:
        for dname in args.dtypes:
            w = workload(name, DTYPES[dname][0])
            if args.quick:
                w = w.scaled(batch=4, max_positions=16)
            jobs.append((w, dname))
    chosen = contenders(device, compile_reference=not args.no_compile, only=args.backends)
    records = []
    bar = tqdm(total=len(jobs) * len(chosen) * len(args.passes), desc=f"timing ({alloc})", file=sys.stderr,
               disable=not sys.stderr.isatty() and not os.environ.get("MMCAL_BENCH_PROGRESS"))  # fmt: skip
    for w, dname in jobs:
        dtype, param_dtype = DTYPES[dname]
        x_bytes, v_bytes = w.feature_bytes(dtype), w.mask_bytes()
        sets = input_sets(w, dtype, device, count=4 if x_bytes < 64 * 2**20 else 2)
        for c in chosen:
            module = make_module(w, device, c.backend, param_dtype)
            p_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
            g_bytes = sum(g.numel() * g.element_size() for g in sets[0].gates)
            calls = pass_callables(w, c, module)
            for pass_name in args.passes:
                bar.set_postfix_str(f"{w.name} {dname} {c.label} {pass_name}")
                fn = calls[pass_name]
                start = time.perf_counter()
                fn(sets[0])  # the first call compiles, for the compiled contender
                first_call_s = time.perf_counter() - start
                cycle = iter(range(1 << 62))
                timing = time_call(lambda: fn(sets[next(cycle) % len(sets)]), device, args.quick)
                floor = floor_bytes(pass_name, x_bytes, v_bytes, p_bytes, g_bytes)
                seconds = timing.median_ms / 1e3
                records.append({
                    "workload": w.name, "dtype": dname, "feature_dtype": str(dtype).replace("torch.", ""),
                    "param_dtype": str(param_dtype).replace("torch.", ""), "backend": c.label, "pass": pass_name,
                    "allocator": alloc, "median_ms": timing.median_ms, "p20_ms": timing.p20_ms,
                    "p80_ms": timing.p80_ms, "samples": timing.samples, "first_call_s": first_call_s,
                    "batch": w.batch, "dims": list(w.dims), "positions": [list(p) if isinstance(p, tuple) else p for p in w.positions],
                    "feature_bytes": x_bytes, "floor_bytes": floor,
                    "gbps": floor / seconds / 1e9 if floor else None,
                    "floor_fraction": (floor / bandwidth) / seconds if floor else None,
                })  # fmt: skip
                bar.update()
            del module, calls
    bar.close()
    return records, meta


def rerun_with_reusing_allocator(args, device, argv) -> tuple[list[dict], dict]:
    large = [n for n in args.workloads
             if any(workload(n, DTYPES[d][0]).feature_bytes(DTYPES[d][0]) > LARGE_BYTES for d in args.dtypes)]  # fmt: skip
    if args.allocator_rerun == "always":
        large = list(args.workloads)
    if not large:
        return [], {}
    with tempfile.TemporaryDirectory() as tmp:
        child_json = os.path.join(tmp, "records.json")
        cmd = [sys.executable, "-m", "mmcal_kernels.bench.runner", *_strip(argv), "--workloads", *large,
               "--child-json", child_json]  # fmt: skip
        print(f"\nre-running {', '.join(large)} with {' '.join(f'{k}={v}' for k, v in REUSE_ENV.items())}", flush=True)
        subprocess.run(cmd, env=dict(os.environ, **REUSE_ENV), check=True)
        with open(child_json) as f:
            child = json.load(f)
    return child["records"], child["meta"]


def _strip(argv):
    """argv without --workloads and its values (the re-run names its own)."""
    out, skipping = [], False
    for a in argv:
        if a.startswith("--"):
            skipping = a == "--workloads"
        if not skipping:
            out.append(a)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    records, meta = measure(args, device)
    if args.child_json:
        report.write_json(args.child_json, meta, records)
        return 0
    if device.type == "cpu" and args.allocator_rerun != "never":
        more, more_meta = rerun_with_reusing_allocator(args, device, argv)
        records += more
        meta["copy_bandwidth_gbps"].update(more_meta.get("copy_bandwidth_gbps", {}))
    report.add_speedups(records)
    order = {name: i for i, name in enumerate(PASSES)}
    records.sort(key=lambda r: (r["workload"], r["dtype"], r["allocator"], order[r["pass"]]))

    threads = torch.get_num_threads() if device.type == "cpu" else None
    name = _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    tag = report.device_tag(name, threads) + ("-quick" if args.quick else "")
    meta.update({
        "device": name, "device_type": device.type, "threads": threads, "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "triton": _triton_version(),
        "cuda": torch.version.cuda, "mmcal_kernels": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "allocator_env": {k: os.environ.get(k) for k in REUSE_ENV}, "quick": args.quick,
        "floors": "SPEC.md: summary |X|, modulate 2|X|, forward 3|X|, fwd+bwd 7|X|, frozen 5|X| (+ masks, parameters)",
    })  # fmt: skip
    bw = ", ".join(f"{k} {v:.1f} GB/s" for k, v in meta["copy_bandwidth_gbps"].items())
    print(f"\n{name} ({device.type}{f', {threads} threads' if threads else ''}); torch {torch.__version__}; copy bandwidth: {bw}")
    print(report.format_table(records))
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{tag}.json")
    png_path = os.path.join(args.out, f"{tag}.png")
    report.write_json(json_path, meta, records)
    report.write_png(png_path, records, f"{name}: fraction of SPEC.md's byte floor (higher is better)")
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
