// The CUDA gate-network ops' host side: mmcal::gates and mmcal::gates_backward
// on CUDA tensors (the schemas: ops.cpp). Checks the arguments as the CPU op
// does (common/gate_args.h), casts each parameter to the compute dtype once
// (a no-op for contiguous float32 parameters), allocates the outputs and one
// scratch buffer, and launches gate_network.cu: one kernel forward, two
// backward. Up to kMaxModalities modalities; the cuda backend computes larger
// calls with torch ops (backends/cpp/ops.py).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "../common/gate_args.h"
#include "../common/settings.h"
#include "gate_launch.cuh"
#include "host_checks.h"

namespace mmcal {
namespace cuda {
namespace {

using at::Tensor;
using at::TensorList;
using namespace gate_args;

// The parameters in ct and contiguous: no copy where they already are.
std::vector<Tensor> cast_params(TensorList params, at::ScalarType ct) {
  std::vector<Tensor> out;
  out.reserve(params.size());
  for (const Tensor& p : params) {
    // Most calls: already ct and contiguous; skip the dispatched no-op .to(ct).
    out.push_back(p.scalar_type() == ct && p.is_contiguous() ? p : p.to(ct).contiguous());
  }
  return out;
}

void* ptr(const Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

// Warps a block of the per-sample kernels: MMCAL_CUDA_GATE_WARPS, read when
// the library loads or set through mmcal::set_settings (so a process can
// switch and measure both; common/settings.h), else the first of
// kGateWarpChoices. Every choice does the same sums in the same
// order (a row keeps its lanes whichever warp takes it), so the results are
// expected to agree to the last bit; the GPU tests compare within 1e-6.
int gate_warps() {
  const std::string text = Settings::get().cuda_gate_warps();
  if (text.empty()) return kGateWarpChoices[0];
  for (const int choice : kGateWarpChoices) {
    if (std::to_string(choice) == text) return choice;
  }
  std::string allowed;
  for (const int choice : kGateWarpChoices) allowed += (allowed.empty() ? "" : ", ") + std::to_string(choice);
  TORCH_CHECK_VALUE(false, "MMCAL_CUDA_GATE_WARPS: expected one of ", allowed, " (warps a block of the CUDA gate "
                    "kernels), got '", text, "'");
  return kGateWarpChoices[0];  // not reached
}

// What both directions fill alike: sizes, inputs, presence, per-modality offsets.
GateBatch batch_of(const Sizes& z, const std::vector<Tensor>& summaries, const std::vector<Tensor>& p,
                   const std::optional<Tensor>& present) {
  GateBatch g{};
  g.M = static_cast<int>(z.M);
  g.warps = gate_warps();
  g.B = z.B, g.d = z.d;
  for (int64_t m = 0; m < z.M; ++m) {
    GateModality& md = g.mods[m];
    const Tensor* pm = &p[kPerModality * m];
    md.s = summaries[m].const_data_ptr();
    md.proj_w = pm[kProjW].const_data_ptr(), md.proj_b = pm[kProjB].const_data_ptr();
    md.hid_w = pm[kHidW].const_data_ptr(), md.hid_b = pm[kHidB].const_data_ptr();
    md.inst_w = pm[kInstW].const_data_ptr(), md.inst_b = pm[kInstB].const_data_ptr();
    md.dim_w = pm[kDimW].const_data_ptr(), md.dim_b = pm[kDimB].const_data_ptr();
    md.D = z.D[m], md.r = z.r[m];
    md.dim_offset = g.dsum, md.hidden_offset = g.rsum;
    g.dsum += z.D[m], g.rsum += z.r[m];
  }
  if (present.has_value()) {
    g.present = present->const_data_ptr<bool>();
    g.present_sB = present->stride(0), g.present_sM = present->stride(1);
  }
  return g;
}

std::vector<Tensor> contiguous(TensorList ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.contiguous());
  return out;
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> gates(
    TensorList summaries, TensorList params, const std::optional<Tensor>& present) {
  const Sizes z = check_gate_args(summaries, params, present, c10::DeviceType::CUDA, "CUDA", "mmcal::gates",
                                  kMaxModalities);
  c10::cuda::CUDAGuard guard(summaries[0].device());
  const int64_t B = z.B, M = z.M, d = z.d;
  const auto opts = summaries[0].options().dtype(z.ct);
  const std::vector<Tensor> s = contiguous(summaries), p = cast_params(params, z.ct);
  GateBatch g = batch_of(z, s, p, present);

  Tensor agreement = at::empty({B, M, M}, opts), support = at::empty({B, M}, opts), conflict = at::empty({B, M}, opts);
  Tensor instance = at::empty({B, M}, opts);
  Tensor u = at::empty({B, M, d}, opts), norm = at::empty({B, M}, opts), context = at::empty({B, M, d}, opts);
  Tensor hidden = at::empty({B, g.rsum}, opts);
  std::vector<Tensor> gate, dim_gate, pre;
  for (int64_t m = 0; m < M; ++m) {
    gate.push_back(at::empty({B, z.D[m]}, opts));
    dim_gate.push_back(at::empty({B, z.D[m]}, opts));
    pre.push_back(at::empty({B, z.r[m]}, opts));
    g.mods[m].gate = ptr(gate[m]), g.mods[m].dim_gate = ptr(dim_gate[m]), g.mods[m].pre = ptr(pre[m]);
  }
  g.agreement = ptr(agreement), g.support = ptr(support), g.conflict = ptr(conflict), g.instance = ptr(instance);
  g.u = ptr(u), g.norm = ptr(norm), g.context = ptr(context), g.hidden = ptr(hidden);
  check_launch(launch_gates(g, z.ct == at::kDouble, c10::cuda::getCurrentCUDAStream()), "mmcal::gates");

  std::vector<Tensor> diagnostics = {agreement, support, conflict, instance};
  diagnostics.insert(diagnostics.end(), dim_gate.begin(), dim_gate.end());
  std::vector<Tensor> saved = {u, norm, context};
  saved.insert(saved.end(), pre.begin(), pre.end());
  return {gate, diagnostics, saved};
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>> gates_backward(
    TensorList grad_gates, TensorList summaries, TensorList params, const std::optional<Tensor>& present,
    TensorList diagnostics, TensorList saved) {
  const Sizes z = check_gate_args(summaries, params, present, c10::DeviceType::CUDA, "CUDA",
                                  "mmcal::gates_backward", kMaxModalities);
  const BackwardArgs a = check_backward_args(z, grad_gates, summaries, diagnostics, saved);
  c10::cuda::CUDAGuard guard(summaries[0].device());
  const int64_t B = z.B, M = z.M, d = z.d;
  const auto opts = summaries[0].options().dtype(z.ct);
  const std::vector<Tensor> s = contiguous(summaries), p = cast_params(params, z.ct);
  GateBatch g = batch_of(z, s, p, present);
  g.agreement = ptr(a.diagnostics[0]), g.support = ptr(a.diagnostics[1]), g.conflict = ptr(a.diagnostics[2]);
  g.instance = ptr(a.diagnostics[3]);
  g.u = ptr(a.saved[0]), g.norm = ptr(a.saved[1]), g.context = ptr(a.saved[2]);

  // One scratch allocation, carved per use: hidden, da, du, dctx, then per modality dz, dpre, dh.
  int64_t scratch_size = B * g.rsum + B * M + 2 * B * M * d;
  for (int64_t m = 0; m < M; ++m) scratch_size += B * (z.D[m] + z.r[m] + d);
  Tensor scratch = at::empty({scratch_size}, opts);
  int64_t used = 0;
  const auto carve = [&](int64_t n) {
    void* at = static_cast<char*>(scratch.data_ptr()) + used * scratch.element_size();
    used += n;
    return at;
  };
  g.hidden = carve(B * g.rsum), g.da = carve(B * M), g.du = carve(B * M * d), g.dctx = carve(B * M * d);

  std::vector<Tensor> grad_summaries, grads(params.size());
  int64_t start = 0;
  for (int64_t m = 0; m < M; ++m) {
    GateModality& md = g.mods[m];
    md.dim_gate = ptr(a.diagnostics[4 + m]);
    md.pre = ptr(a.saved[3 + m]);
    md.grad_gate = a.grad_gates[m].const_data_ptr();
    grad_summaries.push_back(at::empty({B, z.D[m]}, opts));
    md.grad_s = ptr(grad_summaries[m]);
    md.dz = carve(B * z.D[m]), md.dpre = carve(B * z.r[m]), md.dh = carve(B * d);
    for (int64_t slot = 0; slot < kPerModality; ++slot) {
      const int64_t i = kPerModality * m + slot;
      grads[i] = at::empty(params[i].sizes(), opts);
      md.grads[slot] = ptr(grads[i]);
      g.grad_starts[i] = start;
      start += grads[i].numel();
    }
  }
  g.grad_starts[kPerModality * M] = start;
  check_launch(launch_gates_backward(g, z.ct == at::kDouble, c10::cuda::getCurrentCUDAStream()),
                    "mmcal::gates_backward");
  // Each gradient in its parameter's dtype (a no-op where that is ct).
  // (Tested first: a no-op .to is still a dispatched call, 8 per modality.)
  for (size_t i = 0; i < grads.size(); ++i)
    if (grads[i].scalar_type() != params[i].scalar_type()) grads[i] = grads[i].to(params[i].scalar_type());
  return {grad_summaries, grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmcal, CUDA, m) {
  m.impl("gates", &gates);
  m.impl("gates_backward", &gates_backward);
}

}  // namespace cuda
}  // namespace mmcal
