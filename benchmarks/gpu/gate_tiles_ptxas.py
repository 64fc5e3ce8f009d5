"""Registers, spills and shared memory of the Triton gate kernels for each
``MMCAL_TRITON_GATE_BLOCKS`` setting, compiled for a GPU this machine need
not have (Triton's ``GPUTarget``, then ``ptxas -v``, the ptxas Triton uses).

    python benchmarks/gpu/gate_tiles_ptxas.py [--arch 90] [--d 128] [--r 128] [--dtype fp32] [--loops] [16x16 4x16 1x16 ...]

float32 (or ``--dtype fp64``) compute and parameters, three live modalities. It reads the kernels'
signatures from tests/backends/test_triton_aot.py (the one place that spells
them out). A compile-time report, no timing: which settings a lent GPU
should time (docs/kernels.md, "The Triton gate kernels' tiles"). ``--loops``
also reads the forward kernel's machine code (nvdisasm, as
tests/backends/sass_loads.py does for the CUDA kernels) and prints, for
each loop over a contraction, its instructions by kind: what one slice
costs a thread.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "backends"))

import sass_loads  # noqa: E402
import test_triton_aot as aot  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from mmcal_kernels.backends.triton import gate_network  # noqa: E402

KINDS = ("LDGSTS", "DEPBAR", "LDG", "LDS", "STS", "BAR", "FFMA")  # async copy, its wait, loads, shared, barrier, FMA


def loop_mix(compiled, tmp: str) -> list[str]:
    """One line per loop of the kernel: its source line, instructions, and their kinds."""
    cubin = os.path.join(tmp, "kernel.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    source = open(gate_network.__file__).read().split("\n")
    lines = []
    for instructions in sass_loads.disassemble(cubin, sass_loads.find_nvdisasm()).values():
        for loop in sorted(sass_loads.loops(instructions), key=lambda lp: lp.start):
            body = [i for i in instructions if loop.contains(i.address)]
            kinds = collections.Counter(sass_loads._split(i.text)[0].split(".")[0] for i in body)
            where = collections.Counter(i.chain[0][1] for i in body if i.chain).most_common(1)
            line = where[0][0] if where else 0
            mix = " ".join(f"{k} {kinds[k]}" for k in KINDS)
            # Plain loads issued before the first use of one; not read for a loop of
            # asynchronous copies (LDGSTS write shared memory, not a register).
            flight = "-" if kinds["LDGSTS"] else sass_loads.loads_in_flight(instructions, loop)
            lines.append(f"      loop at line {line:3d} ({source[line - 1].strip()[:48]}): {len(body):3d} instructions: {mix}, "
                         f"{flight} LDG in flight")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--r", type=int, default=128)
    parser.add_argument("--dtype", choices=("fp32", "fp64"), default="fp32", help="compute and parameter dtype")
    parser.add_argument("--loops", action="store_true", help="also each forward loop's instructions by kind")
    parser.add_argument("tiles", nargs="*", default=["16x16", "8x16", "4x16", "2x32", "1x16"])
    args = parser.parse_args()
    version = subprocess.run([aot._ptxas(args.arch), "--version"], capture_output=True, text=True).stdout
    ptxas = version.strip().splitlines()[-1] if version.strip() else "ptxas ?"
    print(f"triton {triton.__version__}, ptxas {ptxas}, sm_{args.arch}, {args.dtype}, d = {args.d}, r = {args.r}")
    for tiles in args.tiles:
        forward = gate_network._parse_tiles(tiles)
        for kernel, launched in (("gates", forward), ("gates_backward", gate_network.backward_tiles(forward))):
            tuner, slot, shared, consts = aot._gate_variants(f"*{args.dtype}", f"*{args.dtype}", launched)[kernel]
            consts = dict(consts, BLOCK_DD=gate_network._pow2(args.d), BLOCK_R=gate_network._pow2(args.r))
            (cfg,) = [c for archs, c in tuner.mmcal_table if args.arch in archs]
            compiled = triton.compile(aot._gate_source(tuner.fn, slot, shared, consts),
                                      target=GPUTarget("cuda", args.arch, 32),
                                      options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                registers, spills, _ = aot._ptxas_report(compiled, args.arch, pathlib.Path(tmp))
                print(f"{tiles:>6s} {kernel:15s} registers {max(registers):3d}  spill stores/loads (bytes) "
                      f"{'/'.join(map(str, spills)):>11s}  shared memory {compiled.metadata.shared:6d} B", flush=True)  # fmt: skip
                if args.loops and kernel == "gates":
                    print("\n".join(loop_mix(compiled, tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
