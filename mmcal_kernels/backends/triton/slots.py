"""Host-side packing of modalities into the kernels' argument slots.

A Triton kernel cannot take a variable number of tensors, and a table of
``data_ptr()`` values breaks under fake tensors and ``torch.compile``. So each
kernel has ``MAX_SLOTS`` groups of arguments (a tensor pointer, its sizes and
its strides), a ``NUM`` constexpr says how many are live, and one launch covers
them all; calls with more modalities launch once per ``MAX_SLOTS`` of them.
Unused slots repeat slot 0's arguments: the constexpr ``NUM`` prunes their code.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch._subclasses.fake_tensor import is_fake
from torch import Tensor

from ...spec import SEQUENCE

MAX_SLOTS = 4  # docs/spec.md's workloads have 2 or 3 modalities; more take more launches


class View3(NamedTuple):
    """A feature tensor seen as ``[B, P, D]`` through its strides (no copy)."""

    positions: int
    channels: int
    stride_b: int
    stride_p: int
    stride_d: int


def flattenable(x: Tensor, layout: int) -> bool:
    """Whether a spatial map's trailing dims walk memory with one stride."""
    if layout == SEQUENCE:
        return True
    expected = None
    for size, stride in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])):
        if size == 1:
            continue
        if expected is not None and stride != expected:
            return False
        expected = stride * size
    return True


def readable(x: Tensor, layout: int) -> Tensor:
    """``x`` itself, or a contiguous copy of a map whose trailing dims do not flatten."""
    return x if flattenable(x, layout) else x.contiguous()


def view3(x: Tensor, layout: int) -> View3:
    if layout == SEQUENCE:
        return View3(x.shape[1], x.shape[2], x.stride(0), x.stride(1), x.stride(2))
    stride_p = 1  # any value does when P <= 1
    for size, stride in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])):
        if size != 1:
            stride_p = stride
            break
    return View3(math.prod(x.shape[2:]), x.shape[1], x.stride(0), stride_p, x.stride(1))


def mask_bytes(mask: Optional[Tensor], like: Tensor) -> Tensor:
    """A mask as contiguous uint8 ``[B, P]`` (index ``b * P + p``); ``like`` stands in when absent."""
    if mask is None:
        return like
    if torch.compiler.is_compiling() or is_fake(mask):
        # Inductor (torch 2.11) cannot lower a bool -> uint8 view (torch.iinfo(bool)):
        # a [B, P] byte copy there, the free view in eager. Inductor traces a
        # triton_op's body after Dynamo, where is_compiling() is False but the
        # tensors are fake (seen on an H200 with torch 2.11: the view reached
        # Inductor and failed to lower).
        return mask.contiguous().to(torch.uint8)
    return mask.contiguous().view(torch.uint8)


def groups(count: int) -> list[range]:
    """Modality indices, ``MAX_SLOTS`` a launch."""
    return [range(i, min(count, i + MAX_SLOTS)) for i in range(0, count, MAX_SLOTS)]


def pad(slots: list[tuple]) -> list:
    """Flat kernel arguments for ``MAX_SLOTS`` slots, unused ones repeating the first."""
    padded = slots + [slots[0]] * (MAX_SLOTS - len(slots))
    return [a for slot in padded for a in slot]


def size_class(xs) -> int:
    """The autotune key's size: log2 of the elements touched (0 for symbolic sizes)."""
    total = sum(x.numel() for x in xs)
    return total.bit_length() if isinstance(total, int) else 0


def cdiv(a, b):
    return -(-a // b)
