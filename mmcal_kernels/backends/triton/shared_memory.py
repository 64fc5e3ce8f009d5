"""How much shared memory the Triton gate kernels ask for, and whether the GPU
at hand gives a block that much: the kernels' tiles grow with the next power
of two of ``d`` (``BLOCK_DD``) and of the widest ``r`` (``BLOCK_R``), and a
launch that asks for more than the GPU's per-block limit fails with Triton's
``OutOfResources``. ``gate_network._torch_formulas`` sends such shapes to the
torch formulas instead, on the GPU the call runs on.

The estimates are upper bounds fitted to the compile metadata
(``CompiledKernel.metadata.shared``) of the default tiles, 16x16, float32 and
float64 (compute and parameters), 8 warps, compiled here for sm_80 and sm_90
without a GPU (triton 3.9; the GPU image's triton 3.6 gave the same bytes at
the points checked; the figures, and the command that measures them, are in
``benchmarks/results/triton-gate-shared-memory.txt``). Each kernel's bytes
are the larger of a term in ``BLOCK_DD`` and one in ``BLOCK_R`` (KB here:
1024 bytes). They equal the measured bytes at most points of 256 and more
(where the per-block limits of real GPUs fall: sm_86/sm_89 99 KB, A100
163 KB, H100/H200 227 KB) and exceed them at the others, and
``tests/backends/test_triton_aot.py`` checks them against every gate-kernel
compile it makes. sm_80's layouts take more than sm_90's at the largest
sizes: d = 1024 asks an sm_80 block for 258 KB in the backward, an sm_90
block for 210 KB.

float64 has its own figures (triton 3.9 only compiles those kernels): its
backward takes more than twice float32's, 276 KB at d = 512, so on an H200
float64 takes the kernels up to d = 256 and r = 256 (the old rule, half the
float32 widths, let d = 512 through).

Scaled, fitted at 16x16 only: a setting other than 16x16 takes each term
times ``K / 16``, and times ``S / 16`` where ``S`` is above 16 (a dot stages
``[width, K]`` operands; compiled, 16x32 at d = 1024 asks for 266240 B in the
forward, twice the 16x16 figure; a review's compiles of 16x64 and 32x64 in
float64 stayed below the estimate). Below 16 samples the kernels do not use
``tl.dot`` and take far less (8-11 KB at d = r = 128), so the estimate is
generous there.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

# The H200's limit (the GPU the old fixed caps were measured on), used where
# no GPU is visible: the interpreter, and tracing with fake CUDA tensors on a
# machine without one.
NO_GPU_LIMIT = 232448
NO_GPU_ARCH = 90


class Term(NamedTuple):
    """Bytes at 16x16 tiles: the least of ``per_unit * width + fixed`` over the
    lines, each an upper bound at every measured point. Other tiles scale the
    whole term (compiled, the fixed part grows with the tiles too)."""

    lines: tuple[tuple[int, int], ...]  # (per_unit, fixed)

    def bytes(self, width: int, scale: float) -> int:
        return int(min(per_unit * width + fixed for per_unit, fixed in self.lines) * scale)


def term(*lines: tuple[int, int]) -> Term:
    return Term(tuple(lines))


class KernelBytes(NamedTuple):
    dd: Term  # in BLOCK_DD
    r: Term  # in BLOCK_R

    def bytes(self, block_dd: int, block_r: int, scale: float) -> int:
        return max(self.dd.bytes(block_dd, scale), self.r.bytes(block_r, scale))


# Measured (16x16; bytes; the results file has every point):
# - forward, float32, sm_80 and sm_90 alike: 37888 at d = r = 128, 133120 at
#   d = 1024, 136192 at r = 512; float64 takes twice each term (24576 at
#   d = r = 32, 135168 at d = 512).
# - backward, float32: sm_80 53248, 102400, 200704 at r = 128, 256, 512 and
#   264192 at d = 1024; sm_90 53248, 102400, 184320 and 215040.
# - backward, float64, sm_80 and sm_90 alike: 98304 and 180224 at r = 128 and
#   256, 151552 and 282624 at d = 256 and 512: more than twice float32's.
FORWARD = {4: KernelBytes(dd=term((128, 2048)), r=term((256, 5120))),
           8: KernelBytes(dd=term((256, 4096)), r=term((512, 10240)))}  # fmt: skip
BACKWARD = {
    (80, 4): KernelBytes(dd=term((256, 2048)), r=term((384, 4096))),
    (90, 4): KernelBytes(dd=term((208, 2048)), r=term((384, 4096), (320, 20480))),
    (80, 8): KernelBytes(dd=term((512, 20480)), r=term((640, 16384))),
    (90, 8): KernelBytes(dd=term((512, 20480)), r=term((640, 16384))),
}


def backward_bytes(arch: int, element_size: int, block_dd: int, block_r: int, scale: float) -> int:
    """sm_80-sm_89 compile like sm_80, sm_90 like itself; any other
    architecture (untried) takes the larger of the two estimates."""
    if 80 <= arch < 90:
        return BACKWARD[80, element_size].bytes(block_dd, block_r, scale)
    if arch == 90:
        return BACKWARD[90, element_size].bytes(block_dd, block_r, scale)
    return max(BACKWARD[a, element_size].bytes(block_dd, block_r, scale) for a in (80, 90))


def estimate(arch: int, block_dd: int, block_r: int, element_size: int, tiles: tuple[int, int]) -> tuple[int, int]:
    """(forward, backward) bytes of shared memory a block asks for, an upper estimate."""
    samples, k = tiles
    scale = (k / 16) * (max(samples, 16) / 16)
    return (FORWARD[element_size].bytes(block_dd, block_r, scale),
            backward_bytes(arch, element_size, block_dd, block_r, scale))  # fmt: skip


@functools.lru_cache(maxsize=None)
def _budget_of(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    # ROCm's properties have no opt-in figure (this package targets NVIDIA GPUs).
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if not limit:
        limit = getattr(props, "shared_memory_per_block", NO_GPU_LIMIT)
    return 10 * props.major + props.minor, limit


def budget(device: torch.device) -> tuple[int, int]:
    """(architecture, shared bytes a block may ask for) of ``device``'s GPU;
    the H200's where that GPU is not visible (a CPU tensor under the
    interpreter; a fake ``cuda:N`` traced on a machine with fewer GPUs)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return NO_GPU_ARCH, NO_GPU_LIMIT
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return NO_GPU_ARCH, NO_GPU_LIMIT
    return _budget_of(index)


def fits(device: torch.device, block_dd: int, block_r: int, element_size: int, tiles: tuple[int, int]) -> bool:
    """Whether both gate kernels' blocks fit ``device``'s shared memory."""
    arch, limit = budget(device)
    return max(estimate(arch, block_dd, block_r, element_size, tiles)) <= limit
