"""What Triton makes of a product written as a broadcast and a sum,
``tl.sum(a[:, :, None] * b[None, :, :], axis=1)`` (``[M, K] x [K, N]``), the
pattern of the Triton gate kernels' ``_mm`` below 16 rows: compiled for a GPU
this machine need not have, it prints for each shape whether the TTGIR keeps
the sum (``tt.reduce``) or has turned it into a ``tt.dot``, with the dot's
input precision and operand layout.

    python benchmarks/gpu/broadcast_product_ttgir.py [--arch 90] [--warps 8] [MxKxN ...]

Run 9's wrong backward (benchmarks/results/nvidia-h200.md) is read from this:
triton 3.6 turns ``[16, S] x [S, 16]`` into a TF32 tensor-core dot. A
compile-time report, no GPU and no timing; ``_mm`` itself now refuses the
shapes that become dots, so the pattern is spelled out here.
"""

from __future__ import annotations

import argparse
import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def _broadcast_product(a_ptr, b_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    rm, rk, rn = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], tl.sum(a[:, :, None] * b[None, :, :], axis=1))


def lowering(shape: tuple[int, int, int], arch: int, warps: int) -> str:
    m, k, n = shape
    signature = {"a_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": "*fp32", "M": "constexpr", "K": "constexpr", "N": "constexpr"}
    source = ASTSource(fn=_broadcast_product, signature=signature, constexprs={"M": m, "K": k, "N": n})
    ttgir = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps}).asm["ttgir"]
    dot = re.search(r"tt\.dot .*", ttgir)
    if dot is None:
        return "a sum (tt.reduce)" if '"tt.reduce"' in ttgir else "neither a dot nor a reduce"
    precision = re.search(r"inputPrecision = (\w+)", dot.group(0))
    parent = re.search(r"parent = #(\w+)", dot.group(0))
    precision = precision.group(1) if precision else "not printed (the attribute's default)"
    return f"a dot (tt.dot), input precision {precision}, operands in #{parent.group(1) if parent else '?'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--warps", type=int, default=8, help="the gate kernels run 8")
    parser.add_argument("shapes", nargs="*", default=["16x1x16", "16x4x16", "16x8x16", "1x16x16", "4x16x16", "8x16x16",
                                                      "16x4x8", "8x4x32"])  # fmt: skip
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, {args.warps} warps, float32")
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split("x"))
        print(f"  [{shape[0]}, {shape[1]}] x [{shape[1]}, {shape[2]}]: {lowering(shape, args.arch, args.warps)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
