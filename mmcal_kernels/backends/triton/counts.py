"""The summary's divisor, ``max(1, valid positions of row b)``
(``spec.position_counts``), computed inside the kernels that need it: the
summary pass divides by it, and the backward's dX pass divides ``ds`` by it,
so no torch op runs between the passes for it."""

import triton
import triton.language as tl


@triton.jit
def row_count(m, b, P, HAS_MASK: tl.constexpr, BLOCK_P: tl.constexpr):
    if HAS_MASK:  # the row's valid positions: P bytes, small beside the row of X it divides
        acc = tl.zeros([BLOCK_P], dtype=tl.int32)
        for q0 in range(0, P, BLOCK_P):
            q = q0 + tl.arange(0, BLOCK_P)
            acc += (tl.load(m + b * P + q, mask=q < P, other=0) != 0).to(tl.int32)
        count = tl.sum(acc, axis=0)
    else:
        count = P
    return tl.maximum(count, 1)
