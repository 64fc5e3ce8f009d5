// Device helpers both kinds of CUDA kernel (reductions.cu, elementwise.cu)
// share: dtype conversions to and from the accumulation type, 16-byte loads,
// the mask test, and the launch plan that spreads one launch's blocks over the
// modalities of a batch. No ATen headers (see launch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../common/scalar_math.h"
#include "launch.cuh"

namespace mmcal {
namespace cuda {

constexpr int kLanes = 32;     // threads along the contiguous axis
constexpr int kRows = 8;       // warps per block
constexpr int kMaxVec = 8;     // 16 bytes of half types

template <typename T>
__device__ __forceinline__ float to_acc(T v, float) { return static_cast<float>(v); }
__device__ __forceinline__ float to_acc(__half v, float) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v, float) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ double to_acc(T v, double) { return static_cast<double>(to_acc(v, 0.0f)); }
__device__ __forceinline__ double to_acc(double v, double) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T>
__device__ __forceinline__ T from_acc_d(double v) {
  if constexpr (sizeof(T) == 8) return static_cast<T>(v);
  else return from_acc<T>(static_cast<float>(v));  // half types: round once from double via float is not exact,
}                                                  // but a float64 compute dtype with half features is rare

// Load kVec consecutive elements: one 16-byte load when `aligned`, else one at a time.
template <typename T, int kVec, typename Acc>
__device__ __forceinline__ void load_run(const T* p, bool aligned, int n, Acc* out) {
  if (aligned && n == kVec) {
    union { uint4 raw; T v[kVec]; } u;
    u.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = to_acc(u.v[i], Acc(0));
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = i < n ? to_acc(p[i], Acc(0)) : Acc(0);
  }
}

// scalar_math.h's mask_valid, by the name the CUDA kernels use.
__device__ __forceinline__ bool is_valid(const bool* mask, int64_t sB, int64_t sP, int64_t b, int64_t p) {
  return mask_valid(mask, sB, sP, b, p);
}

// Which modality a flat block index falls in, from the per-modality prefix of block counts.
__device__ __forceinline__ int find_item(const int64_t* starts, int count, int64_t unit) {
  int m = 0;
  while (m + 1 < count && unit >= starts[m + 1]) ++m;
  return m;
}

struct Plan {
  int64_t starts[kMaxModalities + 1];  // first unit of each modality
  int kind[kMaxModalities];            // 0: channels-last tiles, 1: one channel per warp
  bool aligned[kMaxModalities];        // 16-byte loads possible
};

// A pass launches one block per unit. More units than a grid's x extent
// (kMaxGridX) go in rows of y, the last row partly past the end: those blocks
// return at once. The grid of `units` blocks; false when even kMaxGridY rows
// cannot hold them.
inline bool grid_of(int64_t units, dim3* grid) {
  const int64_t rows = (units + kMaxGridX - 1) / kMaxGridX;
  if (rows > kMaxGridY) return false;
  *grid = dim3(static_cast<unsigned>((units + rows - 1) / rows), static_cast<unsigned>(rows));
  return true;
}

__device__ __forceinline__ int64_t block_unit() {
  return static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
}

}  // namespace cuda
}  // namespace mmcal
