// The arguments of the gate-network ops (mmcal::gates, mmcal::gates_backward):
// their checks, shared by the CPU and CUDA host code so that both devices refuse
// the same input with the same message, and the sizes both read from them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <vector>

#include "checks.h"

namespace mmcal {
namespace gate_args {

inline constexpr double kNormEps = 1e-6;  // reference.NORM_EPS
inline constexpr int64_t kPerModality = 8;
enum Slot { kProjW, kProjB, kHidW, kHidB, kInstW, kInstB, kDimW, kDimB };
inline const char* const kSlotNames[] = {"proj_weight", "proj_bias",       "hidden_weight", "hidden_bias",
                                  "instance_weight", "instance_bias", "dim_weight",    "dim_bias"};

struct Sizes {
  int64_t B = 0, M = 0, d = 0;
  std::vector<int64_t> D, r;
  at::ScalarType ct = at::kFloat;
};

// "params[i] (proj_weight of modality m)", formatted only in a failed check's message.
struct ParamName {
  int64_t m, slot;
};
inline std::ostream& operator<<(std::ostream& os, const ParamName& p) {
  return os << arg("params", static_cast<size_t>(kPerModality * p.m + p.slot)) << " (" << kSlotNames[p.slot]
            << " of modality " << p.m << ")";
}
inline ParamName param_name(int64_t m, int64_t slot) { return {m, slot}; }

template <typename Name>
void check_device(const at::Tensor& t, const at::Tensor& first, const Name& name) {
  TORCH_CHECK_VALUE(t.device() == first.device(), name, ": on ", t.device(), ", but summaries[0] is on ",
                    first.device());
}

template <typename Name>
void check_tensor(const at::Tensor& t, const at::Tensor& first, at::IntArrayRef shape, at::ScalarType ct,
                  const Name& name) {
  check_device(t, first, name);
  TORCH_CHECK_VALUE(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ct, name, ": expected dtype ", ct, " (the compute dtype, summaries[0]'s), got ",
                   t.scalar_type());
}

// What both ops receive: summaries, the 8*M parameters, present.
// max_modalities: the most modalities the device's kernels take (the CUDA
// kernels' fixed arrays), checked before anything reads a per-modality entry.
inline Sizes check_gate_args(at::TensorList summaries, at::TensorList params, const std::optional<at::Tensor>& present,
                             c10::DeviceType device_type, const char* device_name, const char* op,
                             int64_t max_modalities = -1) {
  Sizes z;
  z.M = static_cast<int64_t>(summaries.size());
  TORCH_CHECK_VALUE(z.M >= 2, "summaries: expected one tensor per modality, at least 2, got ", z.M);
  TORCH_CHECK_VALUE(max_modalities < 0 || z.M <= max_modalities, "summaries: ", op, "'s ", device_name,
                    " kernels take at most ", max_modalities, " modalities, got ", z.M,
                    " (the cuda backend computes larger calls with torch ops)");
  const at::Tensor& s0 = summaries[0];
  TORCH_CHECK_VALUE(s0.device().type() == device_type, "summaries[0]: the ", device_name, " kernels take ", device_name,
                    " tensors, got one on ", s0.device());
  z.ct = s0.scalar_type();
  TORCH_CHECK_TYPE(z.ct == at::kFloat || z.ct == at::kDouble,
                   "summaries[0]: its dtype is the compute dtype, float32 or float64; got ", z.ct);
  TORCH_CHECK_VALUE(s0.dim() == 2, "summaries[0]: expected [B, D_0] (2 dims), got shape ", s0.sizes());
  z.B = s0.size(0);
  for (int64_t m = 0; m < z.M; ++m) {
    const at::Tensor& s = summaries[m];
    const ArgName name = arg("summaries", m);
    check_device(s, s0, name);
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == z.B, name, ": expected [B, D_", m, "] with B = ", z.B,
                      ", got shape ", s.sizes());
    TORCH_CHECK_TYPE(s.scalar_type() == z.ct, name, ": dtype ", s.scalar_type(), " differs from summaries[0]'s ",
                     z.ct);
    z.D.push_back(s.size(1));
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == kPerModality * z.M, "params: expected ", kPerModality,
                    " tensors per modality (", kPerModality * z.M, " for ", z.M, " modalities), got ",
                    params.size());
  for (int64_t i = 0; i < kPerModality * z.M; ++i) {
    const ParamName name = param_name(i / kPerModality, i % kPerModality);
    check_device(params[i], s0, name);
    TORCH_CHECK_TYPE(is_feature_dtype(params[i].scalar_type()), name, ": expected a floating-point dtype (float16, ",
                     "bfloat16, float32, float64), got ", params[i].scalar_type());
  }
  const at::Tensor& w0 = params[kProjW];
  TORCH_CHECK_VALUE(w0.dim() == 2, param_name(0, kProjW), ": expected [d, D_0], got shape ", w0.sizes());
  z.d = w0.size(0);
  const int64_t cue = 2 * z.d + 2;
  for (int64_t m = 0; m < z.M; ++m) {
    const at::Tensor* p = &params[kPerModality * m];
    const at::Tensor& wh = p[kHidW];
    TORCH_CHECK_VALUE(wh.dim() == 2 && wh.size(1) == cue, param_name(m, kHidW), ": expected [r, 2d+2] = [r, ", cue,
                      "], got shape ", wh.sizes());
    const int64_t r = wh.size(0), D = z.D[m];
    z.r.push_back(r);
    // Each slot's shape: its sizes and how many (the biases are 1-D).
    const int64_t want[kPerModality][2] = {{z.d, D}, {z.d}, {r, cue}, {r}, {1, r}, {1}, {D, r}, {D}};
    for (int64_t slot = 0; slot < kPerModality; ++slot) {
      const at::IntArrayRef shape(want[slot], slot % 2 == 0 ? 2 : 1);
      TORCH_CHECK_VALUE(p[slot].sizes() == shape, param_name(m, slot), ": expected shape ", shape, " (d = ", z.d,
                        ", D_", m, " = ", D, ", r = ", r, "), got ", p[slot].sizes());
    }
  }
  if (present.has_value()) {
    check_device(*present, s0, "present");
    TORCH_CHECK_TYPE(present->scalar_type() == at::kBool, "present: expected a bool tensor, got ",
                     present->scalar_type());
    TORCH_CHECK_VALUE(present->dim() == 2 && present->size(0) == z.B && present->size(1) == z.M,
                      "present: expected shape [B, M] = [", z.B, ", ", z.M, "], got ", present->sizes());
  }
  return z;
}

// The backward's own arguments (after check_gate_args): counts, shapes,
// dtypes and devices; returned contiguous, since the kernels read them through
// plain pointers (a no-op for the forward's own outputs).
struct BackwardArgs {
  std::vector<at::Tensor> grad_gates, diagnostics, saved;
};

inline BackwardArgs check_backward_args(const Sizes& z, at::TensorList grad_gates, at::TensorList summaries,
                                        at::TensorList diagnostics, at::TensorList saved) {
  const at::Tensor& s0 = summaries[0];
  const int64_t B = z.B, M = z.M, d = z.d;
  TORCH_CHECK_VALUE(static_cast<int64_t>(grad_gates.size()) == M, "grad_gates: expected one tensor per modality (", M,
                    "), got ", grad_gates.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(diagnostics.size()) == 4 + M,
                    "diagnostics: expected [agreement, support, conflict, instance_gate] and one dimension gate per "
                    "modality (",
                    4 + M, " tensors), got ", diagnostics.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(saved.size()) == 3 + M,
                    "saved: expected [u, norm, context] and one hidden pre-activation per modality (", 3 + M,
                    " tensors), got ", saved.size());
  BackwardArgs out;
  std::vector<at::Tensor>&g = out.grad_gates, &diag = out.diagnostics, &sv = out.saved;
  for (int64_t m = 0; m < M; ++m) {
    check_tensor(grad_gates[m], s0, {B, z.D[m]}, z.ct, arg("grad_gates", m));
    g.push_back(grad_gates[m].contiguous());
  }
  const char* diag_names[] = {"agreement", "support", "conflict", "instance_gate"};
  const int64_t diag_shapes[4][3] = {{B, M, M}, {B, M}, {B, M}, {B, M}};
  for (int64_t i = 0; i < 4 + M; ++i) {
    const int64_t gate_shape[2] = {B, i < 4 ? 0 : z.D[i - 4]};
    const at::IntArrayRef shape = i < 4 ? at::IntArrayRef(diag_shapes[i], i == 0 ? 3 : 2) : at::IntArrayRef(gate_shape);
    const auto name = lazy_name([&] {
      return i < 4 ? c10::str(arg("diagnostics", i), " (", diag_names[i], ")")
                   : c10::str(arg("diagnostics", i), " (dimension gate ", i - 4, ")");
    });
    check_tensor(diagnostics[i], s0, shape, z.ct, name);
    diag.push_back(diagnostics[i].contiguous());
  }
  const char* saved_names[] = {"u", "norm", "context"};
  const int64_t saved_shapes[3][3] = {{B, M, d}, {B, M}, {B, M, d}};
  for (int64_t i = 0; i < 3 + M; ++i) {
    const int64_t pre_shape[2] = {B, i < 3 ? 0 : z.r[i - 3]};
    const at::IntArrayRef shape = i < 3 ? at::IntArrayRef(saved_shapes[i], i == 1 ? 2 : 3) : at::IntArrayRef(pre_shape);
    const auto name = lazy_name([&] {
      return i < 3 ? c10::str(arg("saved", i), " (", saved_names[i], ")")
                   : c10::str(arg("saved", i), " (pre-activation ", i - 3, ")");
    });
    check_tensor(saved[i], s0, shape, z.ct, name);
    sv.push_back(saved[i].contiguous());
  }
  return out;
}

}  // namespace gate_args
}  // namespace mmcal
