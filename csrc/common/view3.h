// Every modality as a strided [B, P, D] view: "sequence" inputs are that
// already; a "spatial" [B, D, *S] map whose trailing dims flatten to one
// stride is [B, P, D] with its strides permuted (sP = 1 for NCHW, sD = 1 for
// channels_last). Plain C++ so that .cu files share it without ATen headers.
#pragma once

#include <cstdint>

#include "macros.h"

namespace mmcal {

struct View3 {
  int64_t B, P, D;     // sizes
  int64_t sB, sP, sD;  // strides, in elements (any value, 0 included)

  MMCAL_HD bool channels_last() const { return sD == 1; }
  MMCAL_HD bool channels_first() const { return sP == 1 && sD != 1; }
  MMCAL_HD int64_t offset(int64_t b, int64_t p, int64_t d) const { return b * sB + p * sP + d * sD; }
};

}  // namespace mmcal
