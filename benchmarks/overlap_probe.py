"""Could the gate network hide under the passes on this CPU? A probe of the
premise behind the sample-tiled schedule that issue 12's CPU targets would need.

    python benchmarks/overlap_probe.py [--seconds 3] [--mib 256] [--workload mosei-aligned] [--rounds 3]

docs/benchmarks.md ("What any implementation could reach") says the targets
would take a schedule that tiles by sample and runs one tile's gate network
while the passes stream another tile. On a 2-core machine that assumes:
(1) a stream on one thread keeps most of what two threads reach, and
(2) a stream on one core and the gate ops on the other slow each other little.
This measures both with the package's own gate ops and a plain copy:

- **stream**: ``dst.copy_(src)`` of ``--mib`` MiB (past the L3), counted as
  read + write bytes; the passes run at 0.84-0.89 of this rate (README).
- **gates**: ``mmcal::gates`` then ``mmcal::gates_backward`` at a workload's
  sizes (benchmarks/gate_network_cpu.py), float32, every parameter random.

Each alone on all threads, alone on one thread, then both side by side, one
thread each (two Python threads: the ops release the GIL), started together
and run for the same wall time. Rounds alternate the modes so that a shared
machine's drift spreads over all of them; the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import threading
import time

import torch

import mmcal_kernels  # noqa: F401  (registers torch.ops.mmcal)
from mmcal_kernels.info import cpu_name

from gate_network_cpu import WORKLOADS, make


def _loop(fn, seconds: float, start: threading.Barrier | None = None) -> float:
    """Calls of ``fn`` per second over ``seconds`` of wall time."""
    fn()  # warm: first-touch pages, BLAS packing buffers
    if start is not None:
        start.wait()
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        count += 1
    return count / elapsed


def _side_by_side(stream, gates, seconds: float) -> tuple[float, float]:
    start, rates = threading.Barrier(2), {}

    def run(name, fn):
        rates[name] = _loop(fn, seconds, start)

    other = threading.Thread(target=run, args=("gates", gates))
    other.start()
    run("stream", stream)
    other.join()
    return rates["stream"], rates["gates"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time of each measurement")
    parser.add_argument("--mib", type=int, default=256, help="size of the copied buffer")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mosei-aligned")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    src = torch.randn(args.mib * 2**20 // 4)
    dst = torch.empty_like(src)
    stream_bytes = 2 * src.numel() * 4
    summaries, params, present, grads = make(**WORKLOADS[args.workload])
    flat = [t for p in params for t in p]

    def stream():
        dst.copy_(src)

    def gates():
        _, diagnostics, saved = torch.ops.mmcal.gates(summaries, flat, present)
        torch.ops.mmcal.gates_backward(grads, summaries, flat, present, diagnostics, saved)

    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {threads} threads by default; "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")  # fmt: skip
    print(f"stream: copy_ of {args.mib} MiB (read + write); gates: mmcal::gates + gates_backward, "
          f"{args.workload} {WORKLOADS[args.workload]}, float32; {args.seconds} s each, {args.rounds} rounds")  # fmt: skip
    # Calls per second, by side and mode; the units are applied when printed.
    rates: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    many, one = f"alone, {threads} threads", "alone, 1 thread"
    beside = {"stream": "beside gates, 1 thread each", "gates": "beside stream, 1 thread each"}
    with torch.no_grad():
        for _ in range(args.rounds):
            for count, mode in ((threads, many), (1, one)):
                torch.set_num_threads(count)
                rates["stream", mode].append(_loop(stream, args.seconds))
                rates["gates", mode].append(_loop(gates, args.seconds))
            for side, rate in zip(("stream", "gates"), _side_by_side(stream, gates, args.seconds)):
                rates[side, beside[side]].append(rate)
    torch.set_num_threads(threads)
    shown = {"stream": ("GB/s", lambda r: r * stream_bytes / 1e9), "gates": ("us a call", lambda r: 1e6 / r)}
    for (side, mode), values in rates.items():
        unit, convert = shown[side]
        values = [convert(r) for r in values]
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {f'{side} {mode} ({unit})':48s} median {statistics.median(values):8.1f}   (rounds: {spread})")
    # Round by round, each side's rate alone on one thread over its rate
    # beside the other (above 1: slowed): a drift between rounds cancels.
    for side in ("stream", "gates"):
        slowed = [a / b for a, b in zip(rates[side, one], rates[side, beside[side]])]
        spread = ", ".join(f"{v:.2f}" for v in slowed)
        print(f"  {side} slowed by the other side, x (median) {statistics.median(slowed):5.2f}   (rounds: {spread})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
