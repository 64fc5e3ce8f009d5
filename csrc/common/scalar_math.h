// Scalar math shared by the CPU and CUDA kernels. Host-and-device inline
// functions, so that the CPU tests exercise the very code the GPU runs.
#pragma once

#include <cstdint>

#include "macros.h"

namespace mmcal {

// SPEC.md step 1: the summary divides by max(1, number of valid positions),
// so a fully masked row (or P = 0) gives zeros, never a division by zero.
template <typename Acc>
MMCAL_HD Acc mean_divisor(int64_t count) {
  return static_cast<Acc>(count < 1 ? 1 : count);
}

// One rounding: Y = (X.to(ct) * g).to(X.dtype). Acc is ct.
template <typename Acc>
MMCAL_HD Acc modulate_value(Acc x, Acc gate) {
  return x * gate;
}

// dX = dY * g + V * ds / count. `valid` selects, never multiplies, so a
// non-finite ds_scaled at a padded position cannot leak in (and vice versa).
template <typename Acc>
MMCAL_HD Acc input_grad_value(bool has_dy, Acc dy, Acc gate, bool has_ds, bool valid, Acc ds_scaled) {
  Acc out = has_dy ? dy * gate : Acc(0);
  if (has_ds && valid) out += ds_scaled;
  return out;
}

}  // namespace mmcal
