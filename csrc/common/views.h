// Every modality seen as a strided [B, P, D] view (View3, view3.h) from its
// tensor and layout code, for the CPU and CUDA host code. The kernels only ever
// see the View3; this is where a tensor's strides become one.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>

#include "view3.h"

namespace mmcal {

constexpr int64_t kSequence = 0;  // [B, P, D]
constexpr int64_t kSpatial = 1;   // [B, D, *S]

inline int64_t channels(const at::Tensor& x, int64_t layout) { return layout == kSequence ? x.size(2) : x.size(1); }
inline int64_t positions(const at::Tensor& x, int64_t layout) {
  if (layout == kSequence) return x.size(1);
  int64_t p = 1;
  for (int64_t i = 2; i < x.dim(); ++i) p *= x.size(i);
  return p;
}

// The trailing dims of a spatial map collapse to one stride (size-1 dims ignored).
inline bool flattenable(const at::Tensor& x, int64_t layout) {
  if (layout == kSequence) return true;
  int64_t expected = -1;
  for (int64_t i = x.dim() - 1; i >= 2; --i) {
    if (x.size(i) == 1) continue;
    if (expected != -1 && x.stride(i) != expected) return false;
    expected = x.stride(i) * x.size(i);
  }
  return true;
}

// x as a [B, P, D] view, copying only a spatial map whose trailing dims do not flatten.
inline at::Tensor readable(const at::Tensor& x, int64_t layout) {
  return flattenable(x, layout) ? x : x.contiguous();
}

inline View3 view3(const at::Tensor& x, int64_t layout) {
  if (layout == kSequence) return {x.size(0), x.size(1), x.size(2), x.stride(0), x.stride(1), x.stride(2)};
  int64_t sP = 1;  // innermost non-trivial trailing stride (any value when P <= 1)
  for (int64_t i = x.dim() - 1; i >= 2; --i) {
    if (x.size(i) != 1) {
      sP = x.stride(i);
      break;
    }
  }
  return {x.size(0), positions(x, layout), x.size(1), x.stride(0), sP, x.stride(1)};
}

}  // namespace mmcal
