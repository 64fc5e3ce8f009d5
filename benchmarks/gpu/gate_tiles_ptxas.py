"""Registers, spills and shared memory of the Triton gate kernels for each
``MMCAL_TRITON_GATE_BLOCKS`` setting, compiled for a GPU this machine need
not have (Triton's ``GPUTarget``, then ``ptxas -v``, the ptxas Triton uses).

    python benchmarks/gpu/gate_tiles_ptxas.py [--arch 90] [--d 128] [--r 128] [16x16 4x16 1x16 ...]

float32 compute and parameters, three live modalities. It reads the kernels'
signatures from tests/backends/test_triton_aot.py (the one place that spells
them out). A compile-time report, no timing: which settings a lent GPU
should time (docs/kernels.md, "The Triton gate kernels' tiles").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "backends"))

import test_triton_aot as aot  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from mmcal_kernels.backends.triton import gate_network  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--r", type=int, default=128)
    parser.add_argument("tiles", nargs="*", default=["16x16", "8x16", "4x16", "2x32", "1x16"])
    args = parser.parse_args()
    version = subprocess.run([aot._ptxas(args.arch), "--version"], capture_output=True, text=True).stdout
    ptxas = version.strip().splitlines()[-1] if version.strip() else "ptxas ?"
    print(f"triton {triton.__version__}, ptxas {ptxas}, sm_{args.arch}, float32, d = {args.d}, r = {args.r}")
    for tiles in args.tiles:
        block_b, block_k = gate_network._parse_tiles(tiles)
        for kernel in ("gates", "gates_backward"):
            tuner, slot, shared, consts = aot._gate_variants("*fp32", "*fp32", (block_b, block_k))[kernel]
            consts = dict(consts, BLOCK_DD=gate_network._pow2(args.d), BLOCK_R=gate_network._pow2(args.r))
            (cfg,) = [c for archs, c in tuner.mmcal_table if args.arch in archs]
            compiled = triton.compile(aot._gate_source(tuner.fn, slot, shared, consts),
                                      target=GPUTarget("cuda", args.arch, 32),
                                      options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                registers, spills, _ = aot._ptxas_report(compiled, args.arch, pathlib.Path(tmp))
            print(f"{tiles:>6s} {kernel:15s} registers {max(registers):3d}  spill stores/loads (bytes) "
                  f"{'/'.join(map(str, spills)):>11s}  shared memory {compiled.metadata.shared:6d} B", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
