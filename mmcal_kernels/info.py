"""``python -m mmcal_kernels.info``: versions, devices, backends, and a self-check of each.

Exits 1 if a usable backend fails its check against the reference.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__, backends
from .selfcheck import check_backend


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def triton_version() -> str:
    try:
        import triton
    except Exception as exc:  # not installed, or broken: say which
        return f"not available ({type(exc).__name__}: {exc})"
    return triton.__version__


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return found


def describe_environment() -> list[str]:
    lines = [
        f"mmcal_kernels {__version__}",
        f"python        {platform.python_version()}",
        f"torch         {torch.__version__}",
        f"triton        {triton_version()}",
        f"CUDA (torch)  {torch.version.cuda or 'none (CPU build)'}",
        f"cpu           {cpu_name()}, {torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}        {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("cuda          no GPU visible")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcal_kernels.info", description=__doc__)
    parser.add_argument("--no-check", action="store_true", help="list backends without running the self-check")
    args = parser.parse_args(argv)

    print("\n".join(describe_environment()))
    print("\nbackends:")
    for b in backends.available():
        state = "usable" if b.usable else ("not usable here" if b.built else "not built") + (f": {b.why_not}" if b.why_not else "")
        parts = [state, f"devices {', '.join(b.device_types)}", b.notes]
        print(f"  {b.name:<10} " + "; ".join(p for p in parts if p))
    for dev in devices():
        print(f"  auto on {dev.split(':')[0]:<5}-> {backends.resolve('auto', dev.split(':')[0]).name}")
    if args.no_check:
        return 0

    print("\nself-check against the float64 reference (randomised parameters, masks, a missing modality):")
    failed = 0
    for b in backends.available():
        if not b.usable:
            continue
        for dev in devices():
            if dev.split(":")[0] not in b.device_types:
                continue
            for dtype in (torch.float32, torch.float64):
                if dtype not in b.dtypes:
                    continue
                r = check_backend(b.name, dev, dtype)
                failed += not r.ok
                verdict = "PASS" if r.ok else "FAIL"
                print(f"  {verdict} {r.backend:<10} {r.device:<7} {str(r.dtype).replace('torch.', ''):<8} {r.message}")
    print(f"\n{'all checks passed' if not failed else f'{failed} check(s) FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
