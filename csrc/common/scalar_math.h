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

// Position p of sample b of a bool mask [B, P] (strides sB, sP) is valid:
// its byte read as a byte, any nonzero byte True, as torch takes it (a uint8
// tensor viewed as bool may hold 2), where reading it as C++ bool is
// undefined. No mask: every position is valid. The one rule of the CPU and
// CUDA kernels and the CPU host code.
MMCAL_HD bool mask_valid(const bool* mask, int64_t sB, int64_t sP, int64_t b, int64_t p) {
  return mask == nullptr || reinterpret_cast<const unsigned char*>(mask)[b * sB + p * sP] != 0;
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
