// Argument checks shared by the CPU and CUDA host code, so that both devices
// refuse the same input with the same message. Errors use TORCH_CHECK_VALUE / TORCH_CHECK_TYPE, so Python
// sees ValueError / TypeError as SPEC.md's "Bad input" table says.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "views.h"

namespace mmcal {

using OptionalTensors = c10::List<std::optional<at::Tensor>>;

// An argument's name in an error message, formatted only when a check fails
// (TORCH_CHECK streams its message lazily). The checks run on every call, and
// building their ~100 names a training step as strings cost more than the
// checks themselves.
struct ArgName {
  const char* list;
  size_t index;
};
inline std::ostream& operator<<(std::ostream& os, const ArgName& a) { return os << a.list << '[' << a.index << ']'; }
inline ArgName arg(const char* list, size_t index) { return {list, index}; }

// Any other composed name, built by `make` when a message needs it.
template <typename F>
struct LazyName {
  F make;
};
template <typename F>
LazyName<F> lazy_name(F make) {
  return {std::move(make)};
}
template <typename F>
std::ostream& operator<<(std::ostream& os, const LazyName<F>& n) {
  return os << n.make();
}

inline bool is_feature_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Layouts, feature dims and dtype of every modality of one call.
inline void check_features(at::TensorList xs, at::IntArrayRef layouts, const char* name) {
  TORCH_CHECK_VALUE(!xs.empty(), name, ": expected at least one tensor, got none");
  TORCH_CHECK_VALUE(layouts.size() == xs.size(), "layouts: expected one entry per tensor of ", name, " (",
                    xs.size(), "), got ", layouts.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const at::Tensor& x = xs[i];
    TORCH_CHECK_VALUE(layouts[i] == kSequence || layouts[i] == kSpatial, arg("layouts", i),
                      ": expected 0 (sequence) or 1 (spatial), got ", layouts[i]);
    TORCH_CHECK_TYPE(is_feature_dtype(x.scalar_type()), arg(name, i), ": unsupported dtype ", x.scalar_type(),
                     "; expected one of float16, bfloat16, float32, float64");
    TORCH_CHECK_VALUE(layouts[i] != kSequence || x.dim() == 3, arg(name, i),
                      ": a 'sequence' input must be [B, P, D] (3 dims), got shape ", x.sizes());
    TORCH_CHECK_VALUE(layouts[i] != kSpatial || x.dim() >= 2, arg(name, i),
                      ": a 'spatial' input must be [B, D, *S] (2 or more dims), got shape ", x.sizes());
    TORCH_CHECK_TYPE(x.scalar_type() == xs[0].scalar_type(), arg(name, i), ": dtype ", x.scalar_type(),
                     " differs from ", name, "[0]'s ", xs[0].scalar_type());
    TORCH_CHECK_VALUE(x.device() == xs[0].device(), arg(name, i), ": on ", x.device(), ", but ", name,
                      "[0] is on ", xs[0].device());
    TORCH_CHECK_VALUE(x.size(0) == xs[0].size(0), arg(name, i), ": batch size ", x.size(0), " differs from ",
                      name, "[0]'s ", xs[0].size(0));
  }
}

template <typename Name>
void check_mask(const std::optional<at::Tensor>& mask, const at::Tensor& x, int64_t layout, const Name& name) {
  if (!mask.has_value()) return;
  TORCH_CHECK_VALUE(layout == kSequence, name,
                    ": masks apply to 'sequence' inputs only; pass None for a 'spatial' one");
  TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, name, ": expected a bool tensor (True = valid position), got ",
                   mask->scalar_type());
  TORCH_CHECK_VALUE(mask->dim() == 2 && mask->size(0) == x.size(0) && mask->size(1) == x.size(1), name,
                    ": expected shape [B, P] = [", x.size(0), ", ", x.size(1), "], got ", mask->sizes());
  TORCH_CHECK_VALUE(mask->device() == x.device(), name, ": on ", mask->device(), ", but the features are on ",
                    x.device());
}

template <typename Name>
void check_compute_dtype(at::ScalarType ct, at::ScalarType feature, const Name& name) {
  TORCH_CHECK_TYPE(ct == at::kFloat || ct == at::kDouble, name, ": expected float32 or float64, got ", ct);
  TORCH_CHECK_TYPE(feature != at::kDouble || ct == at::kDouble, name,
                   ": float64 features need a float64 compute dtype, got ", ct);
}

// A [B, D] per-channel tensor (gate, ds) in the compute dtype.
template <typename Name>
void check_per_channel(const at::Tensor& t, const at::Tensor& x, int64_t layout, at::ScalarType ct, const Name& name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == channels(x, layout), name,
                    ": expected shape [B, D] = [", x.size(0), ", ", channels(x, layout), "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ct, name, ": expected dtype ", ct, " (the compute dtype, one for the call), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, ": on ", t.device(), ", but the features are on ", x.device());
}

// dY of one modality: the shape and dtype of its X.
template <typename Name>
void check_grad_like(const at::Tensor& dy, const at::Tensor& x, const Name& name) {
  TORCH_CHECK_VALUE(dy.device() == x.device(), name, ": on ", dy.device(), ", but the features are on ", x.device());
  TORCH_CHECK_VALUE(dy.sizes() == x.sizes(), name, ": expected the shape of its features ", x.sizes(), ", got ",
                    dy.sizes());
  TORCH_CHECK_TYPE(dy.scalar_type() == x.scalar_type(), name, ": expected dtype ", x.scalar_type(), ", got ",
                   dy.scalar_type());
}

inline void check_modulate_args(at::TensorList xs, at::TensorList gates, at::IntArrayRef layouts) {
  check_features(xs, layouts, "xs");
  TORCH_CHECK_VALUE(gates.size() == xs.size(), "gates: expected one tensor per tensor of xs (", xs.size(), "), got ",
                    gates.size());
  // One compute dtype for the call: the kernels launch once for all modalities in it.
  const at::ScalarType ct = gates.empty() ? at::kFloat : gates[0].scalar_type();
  for (size_t i = 0; i < xs.size(); ++i) {
    check_compute_dtype(ct, xs[i].scalar_type(), arg("gates", i));
    check_per_channel(gates[i], xs[i], layouts[i], ct, arg("gates", i));
  }
}

// Before an op writes `xs` in place (inplace.cpp): no tensor of xs whose
// elements overlap, none sharing memory with another of xs or with `read`,
// no inference tensor outside inference mode.
void check_inplace_targets(at::TensorList xs, at::TensorList read, const char* name, const char* read_name);

// One modality's terms of dX = dY * g + V * ds / count (either term may be absent).
struct InputGradTerms {
  std::optional<at::Tensor> dy, gate, mask, ds;
};

inline std::vector<InputGradTerms> check_input_grads_args(at::TensorList xs, const OptionalTensors& dys,
                                                          const OptionalTensors& gates, const OptionalTensors& masks,
                                                          const OptionalTensors& ds, at::IntArrayRef layouts) {
  check_features(xs, layouts, "xs");
  for (auto [list, name] : {std::pair{&dys, "grad_ys"}, {&gates, "gates"}, {&masks, "masks"}, {&ds, "ds"}}) {
    TORCH_CHECK_VALUE(list->size() == xs.size(), name, ": expected one entry (tensor or None) per tensor of xs (",
                      xs.size(), "), got ", list->size());
  }
  std::vector<InputGradTerms> terms;
  std::optional<at::ScalarType> call_ct;  // one compute dtype for the call, the first modality's
  for (size_t i = 0; i < xs.size(); ++i) {
    InputGradTerms t{dys.get(i), gates.get(i), masks.get(i), ds.get(i)};
    TORCH_CHECK_VALUE(t.dy.has_value() || t.ds.has_value(), "input_grads: modality ", i,
                      " has neither grad_ys nor ds; give at least one");
    TORCH_CHECK_VALUE(t.dy.has_value() == t.gate.has_value(), arg("gates", i), ": needed exactly when ",
                      arg("grad_ys", i), " is given");
    if (!call_ct) call_ct = t.gate.has_value() ? t.gate->scalar_type() : t.ds->scalar_type();
    const at::ScalarType ct = *call_ct;
    check_compute_dtype(ct, xs[i].scalar_type(), arg(t.gate.has_value() ? "gates" : "ds", i));
    if (t.dy.has_value()) {
      check_grad_like(*t.dy, xs[i], arg("grad_ys", i));
      check_per_channel(*t.gate, xs[i], layouts[i], ct, arg("gates", i));
    }
    if (t.ds.has_value()) check_per_channel(*t.ds, xs[i], layouts[i], ct, arg("ds", i));
    check_mask(t.mask, xs[i], layouts[i], arg("masks", i));
    terms.push_back(t);
  }
  return terms;
}

}  // namespace mmcal
