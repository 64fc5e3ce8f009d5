"""Timers and the copy-bandwidth probe.

CPU: ``torch.utils.benchmark.Timer`` (it sets threads and synchronises as
PyTorch's own benchmarks do). CUDA: ``triton.testing.do_bench`` when triton is
importable (it flushes L2 between calls), else CUDA events. Every timed callable
rotates through several input sets so small working sets do not stay in cache:
on a CPU as many as make twice the last-level cache (``input_set_count``).
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch


FALLBACK_LLC_BYTES = 32 * 2**20  # where the size cannot be read: the project machine's L3


def last_level_cache_bytes() -> int:
    """The largest CPU cache of cpu0 (Linux sysfs; else glibc's sysconf; else 32 MiB)."""
    sizes = []
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            if entry.startswith("index"):
                with open(os.path.join(root, entry, "size")) as f:
                    text = f.read().strip()
                scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
                sizes.append(int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        sizes = []
    if not sizes:
        try:
            sizes = [os.sysconf("SC_LEVEL3_CACHE_SIZE"), os.sysconf("SC_LEVEL2_CACHE_SIZE")]
        except (ValueError, OSError, AttributeError):
            sizes = []
    return max([s for s in sizes if s > 0], default=FALLBACK_LLC_BYTES)


def input_set_count(device: torch.device, feature_bytes: int, cache_bytes: Optional[int] = None) -> int:
    """How many input sets a timed callable rotates through. On a CPU, enough
    that their features alone are twice the last-level cache, so no call finds
    its inputs still cached from the round before (4 sets of MOSI's or
    MOSEI-aligned's float32 features fit a 32 MiB L3: that flattered them).
    At least 2, at most 64 (tiny --quick shapes). On a GPU the timer flushes
    L2 between calls itself: 4 sets below 64 MiB, else 2, as before."""
    if device.type != "cpu":
        return 4 if feature_bytes < 64 * 2**20 else 2
    cache = cache_bytes if cache_bytes is not None else last_level_cache_bytes()
    return max(2, min(64, -(-2 * cache // max(1, feature_bytes))))


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int


def median_p20_p80(values: Sequence[float]) -> tuple[float, float, float]:
    """The median and the 20th and 80th percentiles (inclusive deciles) of ``values``."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    q = statistics.quantiles(ordered, n=10, method="inclusive")  # deciles
    return statistics.median(ordered), q[1], q[7]


def quantile_summary(values: Sequence[float]) -> dict:
    """``median_p20_p80`` as the JSON records store it: {"median", "p20", "p80"}."""
    return dict(zip(("median", "p20", "p80"), median_p20_p80(values)))


def _quantiles(times_s: Sequence[float]) -> Timing:
    return Timing(*median_p20_p80([t * 1e3 for t in times_s]), len(times_s))


def rotating(fn: Callable, input_sets: Sequence) -> Callable[[], object]:
    """A no-argument callable that calls ``fn(*inputs)`` on the next input set each time."""
    cycle = itertools.cycle(input_sets)
    return lambda: fn(*next(cycle))


def minor_page_faults() -> Optional[int]:
    """The process's minor page faults so far (all threads), or None where the
    platform does not count them. A step whose fresh outputs the allocator
    takes from the kernel pays one fault per 4 KiB page it first writes."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_cpu(call: Callable[[], object], *, min_reps: int = 5, max_reps: int = 50, budget_s: float = 2.0,
             warmup: int = 2) -> Timing:  # fmt: skip
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(0.01 / once))  # each sample at least ~10 ms, to beat timer noise
    reps = int(min(max_reps, max(min_reps, budget_s / (once * number))))
    timer = Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    samples = [timer.timeit(number).mean for _ in range(reps)]
    return _quantiles(samples)


def time_cuda(call: Callable[[], object], *, reps_ms: int = 200, warmup_ms: int = 25) -> Timing:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        med, p20, p80 = do_bench(call, warmup=warmup_ms, rep=reps_ms, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80, -1)
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    samples = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return _quantiles(samples)


def time_wall(call: Callable[[], object], sync: Callable[[], object], *, calls: int = 20, rounds: int = 15,
              warmup: int = 3) -> Timing:  # fmt: skip
    """Wall-clock time a call, as a loop of eager steps sees it: ``calls`` calls
    back to back, then ``sync`` (``torch.cuda.synchronize`` on a GPU), per
    round; the per-call time of each round. Host time counts here, where
    ``do_bench`` can hide it: that enqueues an L2-clearing write before each
    call and times between CUDA events, so a host that launches the call
    while the write runs adds nothing to the reading."""
    return _quantiles(wall_samples(call, sync, calls=calls, rounds=rounds, warmup=warmup))


def wall_samples(call: Callable[[], object], sync: Callable[[], object], *, calls: int, rounds: int,
                 warmup: int) -> list[float]:  # fmt: skip
    """Seconds per call of each round of ``calls`` back-to-back calls and one
    ``sync``, after ``warmup`` calls: ``time_wall``'s samples, and those of
    ``benchmarks/host_overhead.py``, which takes their best."""
    for _ in range(warmup):
        call()
    sync()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        samples.append((time.perf_counter() - t0) / calls)
    return samples


def time_call(call: Callable[[], object], device: torch.device, quick: bool = False) -> Timing:
    if device.type == "cuda":
        return time_cuda(call, reps_ms=40 if quick else 200)
    if quick:
        return time_cpu(call, min_reps=3, max_reps=5, budget_s=0.3, warmup=1)
    return time_cpu(call)


def copy_bandwidth(device: torch.device, quick: bool = False) -> tuple[float, Timing]:
    """Bytes per second of a device-to-device copy (bytes read plus written) on
    buffers large enough to leave every cache.

    Shared machines vary by 20% from one probe to the next (seen on the 2-core
    CPU machines), so this takes the best median of four probes (256 MiB and
    1 GiB, twice each): floor fractions are then measured against the best the
    memory system showed, never flattered by a slow probe.
    """
    sizes = [64 << 20] if quick else [256 << 20, 1 << 30] * 2
    best = None
    for nbytes in sizes:
        src = torch.randn(nbytes // 4, device=device)
        dst = torch.empty_like(src)
        t = time_call(lambda dst=dst, src=src: dst.copy_(src), device, quick)
        bw = 2 * nbytes / (t.median_ms / 1e3)
        if best is None or bw > best[0]:
            best = (bw, t)
        del src, dst
    return best
