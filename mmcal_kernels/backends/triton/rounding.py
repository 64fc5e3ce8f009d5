"""How a kernel rounds a value in the compute dtype to the dtype it stores:
to a half type through float32, as torch's ``.to()`` rounds a float64 (and
the reference with it). The interpreter has no direct float64 -> bfloat16."""

import triton
import triton.language as tl


@triton.jit
def to_stored(value, ptr):
    ty = ptr.dtype.element_ty
    if ty.primitive_bitwidth < 32:
        value = value.to(tl.float32)
    return value.to(ty)
