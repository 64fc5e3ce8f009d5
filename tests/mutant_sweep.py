"""Can the tests see a wrong branch of a kernel? Plants each mutant below in
turn (one small edit of a kernel: a clamp dropped, relu'(0) taken as 1, a
mask ignored, a sum over the wrong stride, ...) in a scratch copy of the
checkout, and runs the tests that guard that kernel there, stopping at their
first failure. Every mutant must fail a test: one that passes is a gap in the tests (or an
edit that changes nothing, which then does not belong in the list).

    python tests/mutant_sweep.py [--only NAME ...] [--tests FILE ...] [--list]

``--tests`` runs the given test files instead of each target's own (in the
target's environment): how strong one file is alone, e.g. the random whole
calls against the CPU mutants (docs/testing.md, "Random whole calls").

The copy goes to $MMCAL_MUTANT_DIR (default /tmp/mmcal-mutant-sweep), so the
checkout is never edited; the copy is built once (`setup.py build_ext
--inplace`, MAX_JOBS=2) and rebuilt when a C++ mutant is planted and again
when it is restored (ninja recompiles the one file). The tests must pass on
the unmutated copy first. About 50 min on 2 cores. Exit status: the number of mutants no test noticed (255 if a
baseline fails). The CUDA kernels run in the CPU emulation
(tests/cuda_emu), the Triton ones in Triton's interpreter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]

# Which tests guard which kernel, and the environment they run in.
TARGETS = {
    "cpu": (["tests/backends/test_cpp_gate_network.py", "tests/test_gates_backward.py"], {}),
    "cpu-passes": (["tests/backends/test_cpu.py", "tests/backends/test_cpu_stream.py",
                    "tests/backends/test_cpp_input_grads.py"], {}),
    "cuda-emulated": (["tests/backends/test_cuda_emulated.py"], {}),
    "triton": (["tests/triton/test_triton_gate_network.py"], {"TRITON_INTERPRET": "1"}),
    "triton-passes": (["tests/triton/test_triton_passes.py"], {"TRITON_INTERPRET": "1"}),
    "in-place": (["tests/test_inplace.py", "tests/test_functional.py"], {}),
    "triton-in-place": (["tests/triton/test_triton_module.py"], {"TRITON_INTERPRET": "1"}),
    "autograd": (["tests/test_autograd.py", "tests/backends/test_cpp_gate_network.py"], {}),
    "export": (["tests/test_compile.py"], {}),
    "loading": (["tests/backends/test_cpp_load.py"], {}),
    "build-recipe": (["tests/backends/test_cpp_build_recipe.py"], {}),
    "module": (["tests/test_module.py", "tests/test_functional.py", "tests/test_autograd.py"], {}),
    "compare": (["tests/test_dtypes.py"], {}),
}


@dataclass(frozen=True)
class Mutant:
    name: str
    target: str  # a key of TARGETS
    path: str
    old: str  # must occur exactly once in path
    new: str


CPU = "csrc/cpu/gate_network.cpp"
SUMS = "csrc/cpu/reductions.h"
MAPS = "csrc/cpu/elementwise.h"
VEC = "csrc/cpu/vec_block.h"
CPU_HOST = "csrc/cpu/ops_cpu.cpp"
CUDA = "csrc/cuda/gate_network.cu"
TRITON = "mmcal_kernels/backends/triton/gate_network.py"
CUDA_SUMS = "csrc/cuda/reductions.cu"
CUDA_MAPS = "csrc/cuda/elementwise.cu"
TRITON_SUMS = "mmcal_kernels/backends/triton/reductions.py"
TRITON_MAPS = "mmcal_kernels/backends/triton/elementwise.py"
TRITON_COUNTS = "mmcal_kernels/backends/triton/counts.py"
TRITON_SHARED = "mmcal_kernels/backends/triton/shared_memory.py"
INPLACE = "csrc/inplace.cpp"
CUDA_COMMON = "csrc/cuda/device_common.cuh"
CHECKS_H = "csrc/common/checks.h"
MODULE = "mmcal_kernels/module.py"
AUTOGRAD = "mmcal_kernels/autograd.py"
BACKENDS = "mmcal_kernels/backends/__init__.py"
CHECKS = "mmcal_kernels/checks.py"
CPP_OPS = "mmcal_kernels/backends/cpp/ops.py"
BUILD_CONFIG = "mmcal_kernels/build_config.py"

MUTANTS = [
    # Step 2, the norm clamp u = h / max(||h||, eps), forward and backward.
    Mutant("cpu: forward norm not clamped", "cpu", CPU,
           "const T clamped = std::max(n, eps);\n          np[b * M + m] = n;", "const T clamped = n;\n          np[b * M + m] = n;"),
    Mutant("cpu: radial term kept below eps", "cpu", CPU,
           "const T radial = n >= eps ? dot(um, dum, d) : T(0);", "const T radial = dot(um, dum, d);"),
    Mutant("cpu: normalisation's backward as autograd's formula (rounds at d = 1)", "cpu", CPU,
           "dhm[j] = (dum[j] - um[j] * radial) / clamped;",
           "dhm[j] = dum[j] / clamped - um[j] * clamped * (radial * clamped) / (clamped * clamped * clamped);"),
    Mutant("cpu: backward divides by norm + eps", "cpu", CPU,
           "const T clamped = std::max(n, eps);\n          T* dhm", "const T clamped = n + eps;\n          T* dhm"),
    # Step 3: relu'(0) = 0, the weights of the other modalities, k = max(1, ...).
    Mutant("cpu: relu'(0) taken as 1 for support", "cpu", CPU,
           "const T v = (a > 0 ? dS[m] : T(0))", "const T v = (a >= 0 ? dS[m] : T(0))"),
    Mutant("cpu: k not clamped to 1", "cpu", CPU, "k[m] = std::max(1.0, sum);", "k[m] = sum;"),
    Mutant("cpu: context includes the modality itself", "cpu", CPU,
           "w[m * M + n] = (n != m && pres(b, n)) ? 1.0 : 0.0;", "w[m * M + n] = pres(b, n) ? 1.0 : 0.0;"),
    Mutant("cpu: support gradient not divided by k", "cpu", CPU,
           "dS[m] = dq[2 * d] / static_cast<T>(k[m]);", "dS[m] = dq[2 * d];"),
    # Step 5: GELU.
    Mutant("cpu: GELU off by one part in 1e7", "cpu", CPU,
           "e[i] = T(0.5) * x[i] * (T(1) + ep[offset[m] + i]);",
           "e[i] = T(0.5) * x[i] * (T(1) + ep[offset[m] + i]) * T(1.0000001);"),
    # Step 6 back: a missing modality's gate is the constant 1.
    Mutant("cpu: missing modality's dz left unwritten", "cpu", CPU,
           "            std::fill(dzm + b * D, dzm + (b + 1) * D, T(0));\n", ""),
    Mutant("cpu: missing modality's da left unwritten", "cpu", CPU,
           "            dap[b * M + m] = 0;\n            continue;", "            continue;"),
    # The parameter gradients: batch sums, strides, dtypes.
    Mutant("cpu: instance bias sums one sample short", "cpu", CPU,
           "case 3: column_sums<T>(dap + m, B, 1, M,", "case 3: column_sums<T>(dap + m, B > 1 ? B - 1 : B, 1, M,"),
    Mutant("cpu: instance weight's scale read at the wrong stride", "cpu", CPU,
           "z.r[m], z.r[m], dap + m, M,", "z.r[m], z.r[m], dap + m, 1,"),
    Mutant("cpu: gradients not cast to their parameter's dtype", "cpu", CPU,
           "  for (size_t i = 0; i < grads.size(); ++i)\n"
           "    if (grads[i].scalar_type() != params[i].scalar_type()) grads[i] = grads[i].to(params[i].scalar_type());\n",
           ""),
    Mutant("cpu: the backward op leaves autocast on below it", "cpu", CPU,
           "  const AutocastOff no_autocast(c10::autocast_dispatch_keyset);\n  const Sizes z = check_gate_args(summaries, params, present, c10::DeviceType::CPU, \"CPU\", \"mmcal::gates_backward\");",
           "  const Sizes z = check_gate_args(summaries, params, present, c10::DeviceType::CPU, \"CPU\", \"mmcal::gates_backward\");"),
    Mutant("cpu: a gapped parameter vector read as contiguous", "cpu", CPU,
           "if (given.scalar_type() == ct && (weight_for_blas || given.is_contiguous())) {",
           "if (given.scalar_type() == ct) {"),
    # The CPU passes over X (steps 1 and 7, and their backward): masks, counts, row tails.
    # The strided path and the wide channels-last rows share one row loop (for_rows_in_three_levels).
    Mutant("cpu passes: a padded position summed by the strided and wide channels-last paths", "cpu-passes", SUMS,
           "      if (!valid(a.mask, a.mask_sB, a.mask_sP, b, p)) continue;  // a selection", "      // a selection"),
    Mutant("cpu passes: a padded position summed by a short row's register sum", "cpu-passes", SUMS,
           "      if (!valid(a.mask, a.mask_sB, a.mask_sP, b, p)) continue;\n      const T* xr", "      const T* xr"),
    Mutant("cpu passes: the mean's count includes padding", "cpu-passes", SUMS,
           "count += valid(a.mask, a.mask_sB, a.mask_sP, b, p) ? 1 : 0;", "count += 1;"),
    Mutant("cpu passes: an NCHW row's sum drops its last position", "cpu-passes", SUMS,
           "load_terms_part(xr, gr, full, P - full, v);", "load_terms_part(xr, gr, full, P - full - 1, v);"),
    Mutant("cpu passes: a padded position gets the ds term", "cpu-passes", MAPS,
           "if (valid(a.mask, a.mask_sB, a.mask_sP, b, p))\n              map_channels_last_rows", "if (true)\n              map_channels_last_rows"),
    Mutant("cpu passes: a row's last partial block skipped", "cpu-passes", MAPS,
           "for (int64_t j = span.full; j < n; j += W) {", "for (int64_t j = span.full; j + W <= n; j += W) {"),
    Mutant("cpu passes: a run of NCHW channels ends on the first channel's gate", "cpu-passes", MAPS,
           "V::loadu(src + i, n - i) * V(gate_of(d1 - 1));", "V::loadu(src + i, n - i) * V(gate_of(d0));"),
    Mutant("cpu passes: a vector crossing two channels takes the second's gate for all lanes", "cpu-passes", MAPS,
           "const V g1 = V::blendv(V(gate_of(d + 1)), g, first);", "const V g1(gate_of(d + 1));"),
    Mutant("cpu passes: a half type's vector crossing two channels takes the first's gate for all lanes",
           "cpu-passes", MAPS, "if (left < lanes && d + 1 < d1) {", "if (false) {"),
    Mutant("cpu passes: a half type's run tracks its channels a lane short", "cpu-passes", MAPS,
           "    at += lanes;\n", "    at += lanes - 1;\n"),
    # The same branches in the CUDA kernels (emulated) and the Triton ones (interpreted).
    Mutant("cuda: forward norm not clamped", "cuda-emulated", CUDA, "u[i] /= n > eps ? n : eps;", "u[i] /= n;"),
    Mutant("cuda: radial term kept below eps", "cuda-emulated", CUDA, "sh.norm[warp] >= eps ? acc : T(0);", "acc;"),
    Mutant("cuda: relu'(0) taken as 1 for support", "cuda-emulated", CUDA,
           "const T v = (a > T(0) ? sh.dS[m]", "const T v = (a >= T(0) ? sh.dS[m]"),
    Mutant("cuda: backward divides by norm + eps", "cuda-emulated", CUDA, "/ (n > eps ? n : eps);", "/ (n + eps);"),
    Mutant("triton: forward norm not clamped", "triton", TRITON,
           "uv = h / tl.maximum(norm, _eps(ct))[:, None]", "uv = h / norm[:, None]"),
    Mutant("triton: radial term kept below eps", "triton", TRITON,
           "radial = tl.where(norm >= eps, tl.sum(um * du, axis=1), 0.0)", "radial = tl.sum(um * du, axis=1)"),
    Mutant("triton: relu'(0) taken as 1 for support", "triton", TRITON,
           "da_mn = p_n * (tl.where(a_mn > 0, ds_m, 0.0)", "da_mn = p_n * (tl.where(a_mn >= 0, ds_m, 0.0)"),
    Mutant("triton: the first block adds to the empty workspace", "triton", TRITON,
           "tl.where(first != 0, 0.0, prev) + value", "prev + value"),
    Mutant("triton: a block of fewer than 16 samples multiplies by the slice's first column only", "triton", TRITON,
           "return tl.sum(a[:, :, None] * b[None, :, :], axis=1)", "return tl.sum(a[:, :1, None] * b[None, :1, :], axis=1)"),
    Mutant("triton: apply_settings reads the tiles into a local", "triton", TRITON,
           "    global _TILES\n", ""),
    Mutant("triton: the backward takes the setting's fewer than 16 samples", "triton", TRITON,
           "return max(samples, BACKWARD_MIN_SAMPLES), k", "return samples, k"),
    Mutant("triton: _mm lets through a broadcast product triton 3.6 makes a TF32 dot", "triton", TRITON,
           "tl.static_assert(a.shape[0] < 16 or b.shape[1] < 16,", "tl.static_assert(True,"),
    # The shared-memory guard: an sm_90 GPU estimated as the other layouts
    # compile (an H200 would lose d = 1024); float64 taken for float32.
    Mutant("triton: an sm_90 GPU's backward estimated as an untried architecture's", "triton", TRITON_SHARED,
           "    if arch == 90:\n", "    if arch == -90:\n"),
    Mutant("triton: a float64 backward estimated as float32's", "triton", TRITON_SHARED,
           "return BACKWARD[90, element_size].bytes(", "return BACKWARD[90, 4].bytes("),
    # The passes over X in CUDA (emulated) and Triton (interpreted): masks and counts.
    Mutant("cuda passes: a padded position summed by the channel tiles", "cuda-emulated", CUDA_SUMS,
           "if (n == 0 || !is_valid(it.mask, it.mask_sB, it.mask_sP, b, p)) continue;", "if (n == 0) continue;"),
    Mutant("cuda passes: the channel tiles' count includes padding", "cuda-emulated", CUDA_SUMS,
           "count += is_valid(it.mask, it.mask_sB, it.mask_sP, b, p);", "count += 1;"),
    Mutant("cuda passes: a padded position summed by the warp per channel", "cuda-emulated", CUDA_SUMS,
           "    if (!is_valid(it.mask, it.mask_sB, it.mask_sP, b, p)) continue;\n    Acc xv", "    Acc xv"),
    Mutant("cuda passes: the warp per channel's count not summed over lanes", "cuda-emulated", CUDA_SUMS,
           "    count += __shfl_xor_sync(0xffffffffu, count, off);\n", ""),
    Mutant("cuda passes: a padded position gets the ds term", "cuda-emulated", CUDA_MAPS,
           "const bool ok = is_valid(it.mask, it.mask_sB, it.mask_sP, b, p);", "const bool ok = true;"),
    Mutant("cuda passes: an NCHW row loses its last position", "cuda-emulated", CUDA_MAPS,
           "for (int64_t p = lane; p < v.P; p += kLanes)", "for (int64_t p = lane; p < v.P - 1; p += kLanes)"),
    Mutant("triton passes: a padded position summed", "triton-passes", TRITON_SUMS,
           "ok = ok & (tl.load(m + b * P + p, mask=ok, other=0) != 0)", "ok = ok"),
    Mutant("triton passes: the count includes padding", "triton-passes", TRITON_COUNTS,
           "acc += (tl.load(m + b * P + q, mask=q < P, other=0) != 0).to(tl.int32)", "acc += (q < P).to(tl.int32)"),
    Mutant("triton passes: an empty row's count not clamped to 1", "triton-passes", TRITON_COUNTS,
           "return tl.maximum(count, 1)", "return count"),
    Mutant("triton passes: a padded position gets the ds term", "triton-passes", TRITON_MAPS,
           "term = tl.where(valid[:, None], dsv, 0.0)", "term = tl.where(p_ok[:, None], dsv, 0.0)"),
    Mutant("triton passes: ds not divided by the count", "triton-passes", TRITON_MAPS,
           "dsv = dsv / row_count(m, b, P, HAS_MASK, BLOCK_P).to(dsv.dtype)", "dsv = dsv"),
    # In place: what Tensor.mul_ refuses, mmcal::modulate_ refuses (docs/spec.md, "In place").
    Mutant("in place: the version counter not bumped", "in-place", INPLACE,
           "for (const at::Tensor& x : xs) x.unsafeGetTensorImpl()->bump_version();", ""),
    Mutant("in place: a non-leaf that requires grad written", "in-place", INPLACE,
           "TORCH_CHECK(!xs[i].requires_grad(), arg(\"xs\", i),", "TORCH_CHECK(true, arg(\"xs\", i),"),
    Mutant("in place: a gate that requires grad read", "in-place", INPLACE,
           "TORCH_CHECK(!gates[i].requires_grad(), arg(\"gates\", i),", "TORCH_CHECK(true, arg(\"gates\", i),"),
    Mutant("in place: an inference tensor written outside inference mode", "in-place", INPLACE,
           "TORCH_CHECK(!x.is_inference() || c10::InferenceMode::is_enabled(), arg(name, i),",
           "TORCH_CHECK(true, arg(name, i),"),
    Mutant("in place: interleaved views of one storage taken as disjoint", "in-place", INPLACE,
           "return at::isin(touched(a), touched(b)).any().item<bool>();", "return false;"),
    Mutant("in place: a view that overlaps itself, too hard for ATen, taken as safe", "in-place", INPLACE,
           "return sorted.slice(0, 1).eq(sorted.slice(0, 0, -1)).any().item<bool>();", "return false;"),
    Mutant("in place: a gate that shares memory with a feature let through", "in-place", INPLACE,
           "TORCH_CHECK_VALUE(!share_elements(x, read[j]),", "TORCH_CHECK_VALUE(true,"),
    Mutant("in place: the module writes a feature that needs grad", "in-place", MODULE,
           "checks.refuse_grad_in_place([x for x in features if isinstance(x, Tensor)])",
           "pass"),
    Mutant("triton in place: a tensor that needs grad written", "triton-in-place", AUTOGRAD,
           "checks.refuse_autograd_in_place(xs, gates, op_name)", "pass"),
    # Added 2026-11-27 with the fixes they guard: the grid's rows, one compute dtype, None gradients.
    Mutant("cuda passes: a grid's rows of y ignored", "cuda-emulated", CUDA_COMMON,
           "return static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;", "return blockIdx.x;"),
    Mutant("cuda passes: gates of two compute dtypes in one call let through", "cuda-emulated", CHECKS_H,
           "check_per_channel(gates[i], xs[i], layouts[i], ct, arg(\"gates\", i));",
           "check_per_channel(gates[i], xs[i], layouts[i], gates[i].scalar_type(), arg(\"gates\", i));"),
    Mutant("autograd: an unused gate's layers get zeros, not None", "autograd", AUTOGRAD,
           "grad_params[8 * m + 2 : 8 * m + 8] = [None] * 6", "pass"),
    # Added in the thirteenth session with the fixes they guard.
    Mutant("cpu passes: the strided and wide channels-last sums back to two levels", "cpu-passes", SUMS,
           "if (++parts_in_mid == kBlockRows) mid_to_acc()", "if (++parts_in_mid == 1) mid_to_acc()"),
    # Added in the fifteenth session: a row's last partial vector (float, double) in one masked load and store;
    # the seventeenth made it a partial block for the half types too.
    Mutant("cpu passes: a row's partial vector stores one lane short", "cpu-passes", MAPS,
           "B::store_part(out + j, count, v);", "B::store_part(out + j, count - 1, v);"),
    Mutant("cpu passes: a streamed row's rest taken as one partial vector (AVX2: 8 lanes, a line is 16)",
           "cpu-passes", MAPS, "for (int64_t j = span.full; j < n; j += W) {", "for (int64_t j = span.full; j < n; j += n) {"),
    Mutant("cpu passes: the ds term left out of a row's partial vector", "cpu-passes", MAPS,
           "if constexpr (kDs)\n      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + part_of(",
           "if constexpr (false)\n      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + part_of("),
    Mutant("cpu passes: a channels-last row's partial vector reads gate and ds from the row's start", "cpu-passes",
           MAPS, "V::loadu(t + j, count) : V(Acc(0))", "V::loadu(t, count) : V(Acc(0))"),
    Mutant("cpu passes: a channels-last sum drops the row's partial vector", "cpu-passes", SUMS,
           "load_terms_part(xr, gr, full, n - full, v);", "for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));"),
    Mutant("cpu passes: a short row's register sum drops its partial vector", "cpu-passes", SUMS,
           "load_terms_part(xr, gr, (NB - 1) * W, last, v);", "for (int i = 0; i < K; ++i) v[i] = V(Acc(0));"),
    Mutant("cpu passes: a short row's register sum back to two levels", "cpu-passes", SUMS,
           "if (++parts_in_mid == kBlockRows) {", "if (++parts_in_mid == 1) {"),
    # Added in the eighteenth session: the ds term's division by the count, now a loop in the host code;
    # a register sum's parts.
    Mutant("cpu passes: the ds term's count includes padding", "cpu-passes", CPU_HOST,
           "count += mask_valid(mask, mask_sB, mask_sP, b, p);", "count += 1;"),
    Mutant("cpu passes: the ds term's count reads the mask as contiguous", "cpu-passes", CPU_HOST,
           "count += mask_valid(mask, mask_sB, mask_sP, b, p);", "count += mask_valid(mask, mask_sB, 1, b, p);"),
    Mutant("cpu passes: the ds term reads ds as contiguous", "cpu-passes", CPU_HOST,
           "in[b * sB + d * sD] / div", "in[b * D + d] / div"),
    Mutant("cpu passes: a short row's register sum drops its last part", "cpu-passes", SUMS,
           "#pragma GCC unroll 8\n    for (int k = 0; k < NV; ++k) mid[k] = mid[k] + part[k];\n    if (p == a.vx.P) break;",
           "    if (p == a.vx.P) break;\n#pragma GCC unroll 8\n    for (int k = 0; k < NV; ++k) mid[k] = mid[k] + part[k];"),
    Mutant("cpu passes: the partial vector of the gate gradient reads no dY", "cpu-passes", SUMS,
           "    B::load_part(dy + i, count, g);\n    for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * g[k];", "    (void)g;"),
    Mutant("cpu passes: a half type's partial block loads only its first float vector's lanes", "cpu-passes", VEC,
           "Vectorized<H>::loadu(p, count)", "Vectorized<H>::loadu(p, std::min<int64_t>(count, Vectorized<float>::size()))"),
    Mutant("triton passes: a tile's running sums never join the total early", "triton-passes", TRITON_SUMS,
           "% PART_TILES == PART_TILES - 1:", "% PART_TILES == PART_TILES:"),
    Mutant("cuda: relu(NaN) taken as 0 in the support", "cuda-emulated", CUDA,
           "s += a < T(0) ? T(0) : a;", "s += a > T(0) ? a : T(0);"),
    Mutant("triton: relu(NaN) taken as 0 in the support", "triton", TRITON,
           "support += w * tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL)", "support += w * tl.maximum(a, 0.0)"),
    Mutant("autograd: a tensor in two slots gets one slot's gradient", "autograd", AUTOGRAD,
           "grads[i] = g if grads[i] is None else grads[i] + g", "grads[i] = g"),
    Mutant("autograd: export traces the fused node", "export", AUTOGRAD,
           "if not records_graph(flat) or torch.compiler.is_exporting():", "if not records_graph(flat):"),
    Mutant("cpu passes: a truncated kernel table dlopened", "loading", "csrc/cpu/dispatch.cpp",
           "      if (!segments_within_file(found.gl_pathv[i])) continue;\n", ""),
    # Added in the fourteenth session: the module in training code, and the suite's own gaps.
    Mutant("autograd: the diagnostics left differentiable", "module", AUTOGRAD,
           "        ctx.mark_non_differentiable(*diagnostics)\n", ""),
    Mutant("autograd: a vectorised backward let through to the ops", "module", AUTOGRAD,
           "_are_functorch_transforms_active() or _batched(grads)):", "_are_functorch_transforms_active()):"),
    Mutant("backends: a dual input's tangent not looked at", "module", BACKENDS,
           "    if _has_tangent(inputs):", "    if False:"),
    Mutant("module: the last gate layers as plain nn.Linear", "module", MODULE,
           "self.gate_dim = nn.ModuleList(ZeroInitLinear(hidden_dim, d) for d in dims)",
           "self.gate_dim = nn.ModuleList(nn.Linear(hidden_dim, d) for d in dims)"),
    Mutant("autograd: dX written for frozen features too", "module", AUTOGRAD,
           "wanted = [m for m in range(num) if needs[m]]", "wanted = list(range(num)) if any(needs[:num]) else []"),
    Mutant("compare: a NaN on one side only passes", "compare", "mmcal_kernels/compare.py",
           "    if nan_mismatch.any():", "    if False:"),
    Mutant("compare: an infinity on one side only passes", "compare", "mmcal_kernels/compare.py",
           "    if inf_mismatch.any():", "    if False:"),
    Mutant("compare: diagnostics judged at the half feature dtype", "compare", "mmcal_kernels/compare.py",
           "assert_close(diag[key], diag_w[key], diag[key].dtype, key)", "assert_close(diag[key], diag_w[key], dtype, key)"),
    Mutant("fakes: the summaries in the features' dtype, not the compute dtype", "cpu-passes", CPP_OPS,
           ", dtype=ct) for x, c in zip(xs, layouts)]", ", dtype=x.dtype) for x, c in zip(xs, layouts)]"),
    Mutant("fakes: the gate-network gradients with the parameters' strides", "cpu", CPP_OPS,
           "[p.new_empty(p.shape) for p in params]", "[torch.empty_like(p) for p in params]"),
    Mutant("fakes: present's shape not checked", "cpu", "mmcal_kernels/op_checks.py",
           "        if tuple(present.shape) != (first.shape[0], num):", "        if False:"),
    Mutant("fakes: what the forward returned not checked for shape", "cpu", "mmcal_kernels/op_checks.py",
           "        if tuple(t.shape) != tuple(shape):", "        if False:"),
    Mutant("checks: the mask look runs under vmap", "module", CHECKS,
           "    if torch._C._are_functorch_transforms_active():\n        return\n", ""),
    Mutant("checks: the mask look's budget never spent", "module", CHECKS,
           "    _MASK_LOOKS_LEFT[0] -= 1\n", ""),
    Mutant("checks: an empty row of a missing modality warns", "module", CHECKS,
           "            empty &= present[:, i]\n", "            pass\n"),
    Mutant("checks: padding at the start of ANY padded row warns", "module", CHECKS,
           "bool((starts_padded | ~padded).all())", "bool((starts_padded | ~padded).any())"),
    # Added in the twentieth session: the C++ runtime a build links (the H200 machine's /opt/gcc).
    Mutant("build: a dangling libstdc++.so taken for a shared runtime", "build-recipe", BUILD_CONFIG,
           "    if os.path.isabs(found) and os.path.exists(found):", "    if os.path.isabs(found):"),
    Mutant("build: a launcher in CXX run as the compiler's name", "build-recipe", BUILD_CONFIG,
           "[*shlex.split(compiler), \"-print-file-name=libstdc++.so\"]", "[compiler, \"-print-file-name=libstdc++.so\"]"),
]  # fmt: skip
# Left out, since they change nothing the tests could see (the first two tried):
# - du_n += dctx_m / k_n instead of / k_m: a missing modality's dctx is 0 (its
#   gate is the constant 1), and two present modalities have the same k.
# - the squared norm summed in double: its terms are float products, which
#   overflow where the reference's do, and the rest is rounding.
# - the streaming stores' closing fence dropped: the thread pool's join
#   orders the stores in practice, so a test could not tell (not tried).
# - the NCHW sum back to two levels: its vector lanes and even/odd chains
#   already split the terms, so 2^20 equal terms stay within the test's 1e-5
#   (2.7e-6 to 4.0e-6 measured with two levels, not planted).


def build(copy: Path) -> None:
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=copy, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"build failed in {copy}:\n{done.stderr[-2000:]}")


def stale(mutants, root: Path) -> list[str]:
    """One line per mutant whose text does not occur exactly once in its file
    under ``root``: planted, it would change nothing or the wrong place."""
    counts = ((m, (root / m.path).read_text().count(m.old)) for m in mutants)
    return [f"{m.name}: its pattern occurs {n} times in {m.path}" for m, n in counts if n != 1]


def run_tests(copy: Path, target: str, log: Path, only_files=None) -> bool:
    files, extra_env = TARGETS[target]
    files = only_files or files
    # MMCAL_NO_JIT: a _C that is not of the copy's sources fails loudly (no cpu
    # backend) rather than JIT-building them in every pytest process.
    env = dict(os.environ, PYTHONPATH=str(copy), MMCAL_NO_JIT="1", **extra_env)
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pytest", *files, "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider"],
                              cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    return done.returncode == 0


def first_failure(log: Path) -> str:
    lines = log.read_text().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return (failed or lines[-1:] or ["(no output)"])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="mutants whose name contains any of these")
    parser.add_argument("--tests", nargs="+", metavar="FILE", help="run these test files instead of each target's own")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or any(part in m.name for part in args.only)]
    if args.list:
        print("\n".join(f"{m.name}  ({m.path})" for m in mutants))
        return 0
    copy = Path(os.environ.get("MMCAL_MUTANT_DIR", "/tmp/mmcal-mutant-sweep"))
    subprocess.run(["bash", "-c", 'source tests/scratch_copy.sh && scratch_copy "$0" MMCAL_MUTANT_DIR keep-build', str(copy)],
                   cwd=CHECKOUT, check=True)  # fmt: skip
    problems = stale(mutants, copy)
    if problems:  # refused up front, before any build
        raise SystemExit("\n".join(problems) + "\nupdate MUTANTS")
    # The copy's files keep the checkout's times, older than objects a previous
    # sweep built from mutated text: touch what mutants edit, so the build
    # recompiles it rather than keeping a mutant.
    for path in {m.path for m in MUTANTS}:
        os.utime(copy / path)
    build(copy)
    for target in sorted({m.target for m in mutants}):
        log = copy / f"mutant-baseline-{target}.log"
        if not run_tests(copy, target, log, args.tests):
            print(f"the {target} tests fail on the unmutated copy: see {log}", file=sys.stderr)
            return 255
    missed = sweep(copy, mutants, args.tests)
    print(f"mutant sweep: {missed} of {len(mutants)} mutant(s) no test noticed")
    return missed


def sweep(copy: Path, mutants, only_files=None) -> int:
    """Plants each mutant in turn, runs its target's tests, restores the file;
    returns how many no test noticed. A C++ mutant's build stays in the copy
    after its file is restored: the next mutant rebuilds first, whatever it
    edits (its tests once ran on the last C++ mutant's _C, so a Python
    mutant after it could be credited with that mutant's failures)."""
    missed = 0
    built_from_a_mutant = False
    for i, m in enumerate(mutants):
        path = copy / m.path
        original = path.read_text()
        path.write_text(original.replace(m.old, m.new))
        start = time.perf_counter()
        try:
            compiled = m.path.startswith("csrc/") and m.path.endswith((".cpp", ".h"))  # a .cu is the emulation's to rebuild
            if compiled or built_from_a_mutant:
                build(copy)
            built_from_a_mutant = compiled
            log = copy / f"mutant-{i}.log"
            if run_tests(copy, m.target, log, only_files):
                missed += 1
                print(f"NOT NOTICED: {m.name}: every test passed", flush=True)
            else:
                print(f"noticed:     {m.name} ({time.perf_counter() - start:.0f} s): {first_failure(log)}", flush=True)
        finally:
            path.write_text(original)
    return missed


if __name__ == "__main__":
    sys.exit(main())
