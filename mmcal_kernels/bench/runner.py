"""``mmcal-bench`` / ``python benchmarks/run.py``: time every contender on every
workload, print the table, write ``<out>/<device-tag>.json`` and ``.png``.

On the CPU, every row records the minor page faults of a step
(``faults_per_step``), and a workload is measured twice when it is over 32 MB
or any of its rows faulted at least ``RERUN_FAULTS_PER_STEP`` times a step: as
the process stands, and with glibc told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, which act only if
set before the process starts, so this program re-runs itself in a subprocess
for that setting). Under glibc's defaults an output the allocator takes fresh
from the kernel (over the mmap threshold, or after glibc trimmed the top of its
heap) pays a fault per 4 KiB page on every call, which can cost more than the
kernel: MOSEI-aligned's 5.6 MB step faulted 1161-2276 times. The child imports the
very package this process runs (same ``mmcal_kernels`` directory and ``_C``;
checked), whatever the working directory. ``--quick`` starts no re-run unless
``--allocator-rerun always`` asks for it.

Each finished row is written to the JSON at once (a cut run keeps its rows)
and, when stdout is not a terminal, printed as one line. A run with any filter
(``--workloads``, ``--dtypes``, ``--passes``, ``--backends``, ``--no-compile``)
writes ``<device-tag>-filtered.json``, never the full run's file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import torch

from .. import __version__
from ..info import cpu_name, triton_version
from . import report
from .compiled import CompileFallback, CompileWatch, fresh, strict_recompiles
from .contenders import contenders, input_sets, make_module, pass_callables
from .counting import count_ops, cuda_launches
from .floors import PASSES, floor_bytes
from .timing import copy_bandwidth, input_set_count, minor_page_faults, time_call
from .workloads import LARGE_BYTES, NAMES, workload

DTYPES = {"float32": (torch.float32, torch.float32), "bf16-mixed": (torch.bfloat16, torch.float32)}
REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "8000000000"}
FILTERS = ("workloads", "dtypes", "passes", "backends", "no_compile")
LAUNCH_PASSES = ("forward", "fwd+bwd")


def allocator_label(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-caching"
    return "reuse" if all(os.environ.get(k) == v for k, v in REUSE_ENV.items()) else "glibc"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def package_info() -> dict:
    """Which build this process measures: the package directory, the extension and its CPU kernel table."""
    import mmcal_kernels
    from .. import backends
    from ..backends.cpp.load import STATUS

    backends.available()  # loads the extension as the package does (or not, under MMCAL_NO_EXTENSION)
    ext = sys.modules.get("mmcal_kernels._C")
    return {
        "package": os.path.dirname(os.path.abspath(mmcal_kernels.__file__)),
        "extension": getattr(ext, "__file__", None) or STATUS["how"] or "not loaded",
        "kernels": STATUS["cpu_capability"] or "none (extension not loaded)",
        "cuda_kernels": bool(STATUS["cuda_kernels"]),
    }


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
                   help="CPU: re-run workloads with the reusing allocator (auto: those over 32 MB or whose steps "
                        "page-faulted, none with --quick; always: every workload)")
    p.add_argument("--keep-going", action="store_true",
                   help="record a failing row (compile fallback, error) and go on; the exit status is still 1")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="start no new row after S seconds (eager rows run first, then compiled ones)")
    p.add_argument("--name", default=None, help="file name stem instead of the device tag")
    p.add_argument("--compile-inner", default=None, help=argparse.SUPPRESS)  # tests: dynamo's "eager" backend, no Inductor
    p.add_argument("--child-json", default=None, help=argparse.SUPPRESS)  # the re-run's records go here
    p.add_argument("--expect-package", default=None, help=argparse.SUPPRESS)  # the re-run checks what it imports
    return p.parse_args(argv)


def filters_used(args) -> dict:
    """The filter flags that differ from a full run (empty: this is the full run)."""
    defaults = vars(parse_args([]))
    return {k: getattr(args, k) for k in FILTERS if getattr(args, k) != defaults[k]}


def output_stem(name: str, threads, quick: bool, filtered: bool) -> str:
    return report.device_tag(name, threads) + ("-quick" if quick else "") + ("-filtered" if filtered else "")


class Interrupted(Exception):
    """SIGTERM (e.g. from ``timeout``): stop, keep what was measured."""


_INTERRUPTED: list = []  # set by the handler: an Interrupted that a library wrapped is still one


def _on_sigterm(signum, frame):
    _INTERRUPTED.append(f"signal {signum}")
    raise Interrupted(f"signal {signum}")


class Progress:
    """Where finished rows go: the JSON (rewritten after every row), one printed line when
    stdout is not a terminal, the tqdm bar when stderr is one."""

    def __init__(self, json_path, meta: dict, total: int, desc: str):
        from tqdm import tqdm

        self.json_path, self.meta, self.records, self.total = json_path, meta, [], total
        self.lines = not sys.stdout.isatty() or bool(os.environ.get("MMCAL_BENCH_LINES"))
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr,
                        disable=not sys.stderr.isatty() and not os.environ.get("MMCAL_BENCH_PROGRESS"))  # fmt: skip

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.bar.update()
        if self.lines:
            print(f"[{len(self.records)}/{self.total}] {report.row_line(record)}", flush=True)
        if self.json_path:
            report.write_json(self.json_path, self.meta, self.records)

    def close(self) -> None:
        self.bar.close()


def _jobs(args):
    """(workload, dtype) in the order given, dtype-major: under a time budget, the first dtype
    of every workload is measured before the second."""
    jobs = []
    for dname in args.dtypes:
        for name in args.workloads:
            w = workload(name, DTYPES[dname][0])
            if args.quick:
                w = w.scaled(batch=4, max_positions=16)
            jobs.append((w, dname))
    return jobs


def measure(args, device: torch.device, progress_for) -> tuple[list[dict], dict]:
    """``progress_for(meta, total)`` gives the ``Progress`` that takes each finished row."""
    alloc = allocator_label(device)
    pkg = package_info()
    name = device_name(device)
    bandwidth, bw_timing = copy_bandwidth(device, quick=args.quick)
    meta = {"copy_bandwidth_gbps": {alloc: bandwidth / 1e9}, "device": name, **pkg}
    jobs = _jobs(args)
    chosen = contenders(device, compile_reference=not args.no_compile, only=args.backends)
    total = len(jobs) * len(chosen) * len(args.passes)
    meta.update(skipped_rows=0, errors=[])
    progress = progress_for(meta, total)
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    cost = {}  # pass -> seconds the last compiled row of it took (compile included): no row starts that cannot end
    common = {"allocator": alloc, "device": name, "kernels": pkg["kernels"]}
    try:
        # eager contenders first (seconds), then compiled ones (a compile each): a time budget keeps the cheap rows
        for phase in (False, True):
            for w, dname in jobs:
                phase_contenders = [c for c in chosen if c.compiled == phase]
                if not phase_contenders:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    meta["skipped_rows"] += len(phase_contenders) * len(args.passes)
                    continue
                dtype, param_dtype = DTYPES[dname]
                x_bytes, v_bytes = w.feature_bytes(dtype), w.mask_bytes()
                sets = input_sets(w, dtype, device, count=input_set_count(device, x_bytes))
                for c in phase_contenders:
                    _measure_contender(args, device, w, dname, c, sets, common, progress, deadline, meta,
                                       bandwidth, x_bytes, v_bytes, cost)  # fmt: skip
                del sets
    finally:
        progress.close()
    return progress.records, meta


def _measure_contender(args, device, w, dname, c, sets, common, progress, deadline, meta, bandwidth, x_bytes, v_bytes,
                       cost):  # fmt: skip
    dtype, param_dtype = DTYPES[dname]
    watch = None
    if c.compiled:  # its own compiled functions, from a clean dynamo: no inherited cache entries
        fresh()
        watch = CompileWatch(c.label, c.mode, inner=args.compile_inner)
    module = make_module(w, device, c.backend, param_dtype)
    p_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    g_bytes = sum(g.numel() * g.element_size() for g in sets[0].gates)
    calls = pass_callables(w, c, module, watch)
    for pass_name in args.passes:
        row_start = time.monotonic()
        expected = cost.get(pass_name, 0.0) if c.compiled else 0.0
        if deadline is not None and row_start + expected > deadline:
            meta["skipped_rows"] += 1
            continue
        what = f"{w.name} {dname} {c.label} {pass_name} ({common['allocator']})"
        progress.note(what)
        record = {
            "workload": w.name, "dtype": dname, "feature_dtype": str(dtype).replace("torch.", ""),
            "param_dtype": str(param_dtype).replace("torch.", ""), "backend": c.label, "pass": pass_name,
            **common, "compiled": c.compiled, "compile_mode": c.mode,
            "batch": w.batch, "dims": list(w.dims),
            "positions": [list(p) if isinstance(p, tuple) else p for p in w.positions], "feature_bytes": x_bytes,
            "input_sets": len(sets),
        }  # fmt: skip
        try:
            record.update(_time_row(args, device, c, calls, pass_name, sets, watch, what))
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _INTERRUPTED:  # e.g. raised inside Inductor and wrapped in its InductorError
                raise Interrupted(_INTERRUPTED[0]) from exc
            if not args.keep_going:
                raise
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            print(f"FAILED {what}: {message}", file=sys.stderr, flush=True)
            meta["errors"].append(f"{what}: {message}")
            record.update(error=message, median_ms=None, p20_ms=None, p80_ms=None, floor_bytes=None, gbps=None,
                          floor_fraction=None)  # fmt: skip
            if isinstance(exc, CompileFallback) or watch is not None:
                fresh()  # a broken compile state must not leak into the next row
            progress.add(record)
            continue
        floor = floor_bytes(pass_name, x_bytes, v_bytes, p_bytes, g_bytes)
        seconds = record["median_ms"] / 1e3
        record.update(floor_bytes=floor, gbps=floor / seconds / 1e9 if floor else None,
                      floor_fraction=(floor / bandwidth) / seconds if floor else None)  # fmt: skip
        if c.compiled:
            cost[pass_name] = time.monotonic() - row_start
        progress.add(record)


def _time_row(args, device, c, calls, pass_name, sets, watch, what) -> dict:
    try:
        return _time_row_inner(args, device, c, calls, pass_name, sets, watch, what)
    except CompileFallback:
        raise
    except Exception as exc:
        # dynamo's own refusals (a graph break under fullgraph, the recompile limit) say the same: not compiled
        if watch is not None and type(exc).__module__.startswith("torch._dynamo"):
            raise CompileFallback(f"{what}: the compiled contender cannot run as one compiled graph: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc  # fmt: skip
        raise


def _time_row_inner(args, device, c, calls, pass_name, sets, watch, what) -> dict:
    fn = calls[pass_name]
    with strict_recompiles():
        before = watch.snapshot() if watch else None
        start = time.perf_counter()
        fn(sets[0])  # the first call compiles, for a compiled contender
        first_call_s = time.perf_counter() - start
        if watch:
            watch.check_compiled(before, what)
            before = watch.snapshot()
        steps = [0]

        def call():
            steps[0] += 1
            return fn(sets[steps[0] % len(sets)])

        faults_before = minor_page_faults() if device.type == "cpu" else None
        timing = time_call(call, device, args.quick)
        faults = None if faults_before is None else (minor_page_faults() - faults_before) / max(1, steps[0])
        if watch:
            watch.check(before, steps[0], what)
    row = {"median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
           "samples": timing.samples, "first_call_s": first_call_s,
           "graphs_compiled": watch.compiles if watch else None, "faults_per_step": faults}  # fmt: skip
    # what one step dispatches (eager contenders: a compiled frame runs eagerly under a dispatch mode)
    row["ops"] = None if c.compiled else count_ops(lambda: fn(sets[0]))[0]
    if device.type == "cuda" and pass_name in LAUNCH_PASSES:
        row["launches"] = _launches(calls, pass_name, sets[0])
    return row


def _launches(calls, pass_name, s) -> dict:
    """CUDA kernels of one step; for fwd+bwd, of its forward and its backward apart."""
    try:
        if pass_name == "forward":
            return {"forward": cuda_launches(lambda: calls["forward"](s))}
        held = {}

        def fwd():
            held["ys"], held["inputs"] = calls["_forward_with_grad"](s)

        forward = cuda_launches(fwd)
        backward = cuda_launches(lambda: torch.autograd.grad(held["ys"], held["inputs"], s.grad_outputs))
        return {"forward": forward, "backward": backward}
    except Exception as exc:  # counting must never cost the row
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


# Faults a step under glibc's defaults (1 MiB of fresh pages) from which a workload is measured again
# under the reusing allocator: a fault cost 3.4-4.7 us of system time on the 2-core AMD EPYC VM (MOSEI-aligned
# steps), so this is about a millisecond.
RERUN_FAULTS_PER_STEP = 256


def workloads_to_rerun(args, records) -> list[str]:
    """The workloads worth a second process under the reusing allocator: those over 32 MB, and those
    whose rows page-faulted (``records``: this process's rows)."""
    if args.allocator_rerun == "always":
        return list(args.workloads)
    if args.quick:  # a smoke run has no workload worth a second process
        return []
    large = {n for n in args.workloads
             if any(workload(n, DTYPES[d][0]).feature_bytes(DTYPES[d][0]) > LARGE_BYTES for d in args.dtypes)}  # fmt: skip
    faulting = {r["workload"] for r in records if (r.get("faults_per_step") or 0) >= RERUN_FAULTS_PER_STEP}
    return [n for n in args.workloads if n in large | faulting]


def rerun_with_reusing_allocator(args, device, argv, records=()) -> tuple[list[dict], dict]:
    again = workloads_to_rerun(args, records)
    if not again:
        return [], {}
    here = package_info()
    with tempfile.TemporaryDirectory() as tmp:
        child_json = os.path.join(tmp, "records.json")
        cmd = [sys.executable, "-m", "mmcal_kernels.bench.runner", *_strip(argv), "--workloads", *again,
               "--child-json", child_json, "--expect-package", here["package"]]  # fmt: skip
        # The child must import THIS package (not a source tree in its working directory, whose _C may
        # be missing or another build): its parent directory goes first on the path, and the child
        # runs from an empty directory.
        root = os.path.dirname(here["package"])
        env = dict(os.environ, **REUSE_ENV)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        print(f"\nre-running {', '.join(again)} with {' '.join(f'{k}={v}' for k, v in REUSE_ENV.items())}", flush=True)
        subprocess.run(cmd, env=env, cwd=tmp, check=True)
        with open(child_json) as f:
            child = json.load(f)
    for key in ("package", "extension", "kernels"):
        if child["meta"].get(key) != here[key]:
            raise RuntimeError(f"the allocator re-run measured another build: its {key} is "
                               f"{child['meta'].get(key)!r}, this process's {here[key]!r}")  # fmt: skip
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


def machine_meta(device: torch.device) -> dict:
    """Where and with what a run measured: device, threads, versions, date, allocator settings."""
    threads = torch.get_num_threads() if device.type == "cpu" else None
    return {
        "device": device_name(device), "device_type": device.type, "threads": threads, "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version(),
        "cuda": torch.version.cuda, "mmcal_kernels": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "allocator_env": {k: os.environ.get(k) for k in REUSE_ENV},
    }  # fmt: skip


def run_meta(args, device: torch.device) -> dict:
    return {
        **machine_meta(device), "quick": args.quick,
        "filters": filters_used(args), "time_budget_s": args.time_budget,
        "compile_backend": args.compile_inner or "inductor",
        "compile_check": "each compiled contender: dynamo reset, its own CompileWatch backend, fullgraph=True; "
                         "an eager fallback or a recompile while timing fails the row",
        "floors": "docs/spec.md: summary |X|, modulate 2|X|, forward 3|X|, fwd+bwd 7|X|, frozen 5|X| (+ masks, parameters)",
    }  # fmt: skip


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.expect_package and package_info()["package"] != args.expect_package:
        print(f"the re-run imported mmcal_kernels from {package_info()['package']}, not {args.expect_package}",
              file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    meta = run_meta(args, device)
    name, threads = meta["device"], meta["threads"]
    stem = args.name or output_stem(name, threads, args.quick, bool(meta["filters"]))
    json_path = args.child_json or os.path.join(args.out, f"{stem}.json")
    png_path = os.path.join(args.out, f"{stem}.png")
    title = report.title(name, device.type, threads, args.quick, meta["filters"], torch.__version__,
                         package_info()["kernels"])  # fmt: skip
    desc = f"timing ({allocator_label(device)})"
    meta["complete"] = False
    records, interrupted = [], None

    def progress_for(measured_meta, total):
        meta.update(measured_meta)
        return Progress(json_path, meta, total, desc)

    try:
        records, measured_meta = measure(args, device, progress_for)
        meta.update(measured_meta)  # the counts of skipped and failed rows as they ended
    except (Interrupted, KeyboardInterrupt) as exc:
        interrupted = str(exc) or type(exc).__name__
        records = _read_records(json_path)
    if args.child_json:
        meta["complete"] = interrupted is None
        report.write_json(args.child_json, meta, records)
        return 0 if interrupted is None and not meta.get("errors") else 1
    if interrupted is None and device.type == "cpu" and args.allocator_rerun != "never":
        more, more_meta = rerun_with_reusing_allocator(args, device, argv, records)
        records += more
        meta["copy_bandwidth_gbps"].update(more_meta.get("copy_bandwidth_gbps", {}))
        meta["errors"] = meta.get("errors", []) + more_meta.get("errors", [])
        meta["skipped_rows"] = meta.get("skipped_rows", 0) + more_meta.get("skipped_rows", 0)
    report.add_speedups(records)
    order = {p: i for i, p in enumerate(PASSES)}
    records.sort(key=lambda r: (r["workload"], r["dtype"], r["allocator"], order[r["pass"]]))
    meta["complete"] = interrupted is None and not meta.get("skipped_rows")
    meta["interrupted"] = interrupted

    bw = ", ".join(f"{k} {v:.1f} GB/s" for k, v in meta.get("copy_bandwidth_gbps", {}).items())
    print(f"\n{name} ({device.type}{f', {threads} threads' if threads else ''}); torch {torch.__version__}; "
          f"kernels {meta.get('kernels')}; copy bandwidth: {bw}")  # fmt: skip
    print(report.format_table(records))
    report.write_json(json_path, meta, records)
    report.write_png(png_path, records, title)
    print(f"\nwrote {json_path} and {png_path}")
    if interrupted or meta.get("skipped_rows"):
        print(f"INCOMPLETE: {meta.get('skipped_rows', 0)} row(s) skipped (time budget)"
              + (f"; interrupted by {interrupted}" if interrupted else ""), flush=True)  # fmt: skip
    if meta.get("errors"):
        print(f"\nFAILED: {len(meta['errors'])} row(s) failed; their timings are NOT in the table:", file=sys.stderr)
        for e in meta["errors"]:
            print(f"  {e}", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


def _read_records(path) -> list[dict]:
    try:
        with open(path) as f:
            return json.load(f)["records"]
    except (OSError, ValueError, KeyError):
        return []


def cli() -> None:
    """``main`` as a program. After an interruption its outputs are written, but compile workers
    busy with an abandoned compile could hold the exit past ``timeout -k``: leave at once."""
    rc = main()
    if _INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    cli()
