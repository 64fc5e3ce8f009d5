// The launches of the CUDA kernels (reductions.cu, elementwise.cu) and the
// batches they take, declared without any ATen or torch header: raw pointers,
// sizes and a cudaStream_t, so that `nvcc -c` checks the .cu files on a
// machine whose torch has no CUDA. ops_cuda.cpp (built only where torch has
// CUDA) validates tensors, allocates outputs and calls these.
//
// All modalities of one call go in one launch per pass: each modality's
// pointers and sizes are a kernel argument, up to kMaxModalities.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/view3.h"

namespace mmcal {
namespace cuda {

constexpr int kMaxModalities = 8;

// A grid's extents: 2^31 - 1 blocks along x, 65535 along y. The emulated
// build (tests/cuda_emu) sets a small x extent, so that its tests of every
// kernel take the paths a GPU takes only past 2^31 - 1 blocks.
#ifndef MMCAL_MAX_GRID_X
#define MMCAL_MAX_GRID_X 2147483647
#endif
constexpr int64_t kMaxGridX = MMCAL_MAX_GRID_X;
constexpr int64_t kMaxGridY = 65535;

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

struct ReduceItem {
  const void* x;
  View3 vx;
  const void* dy;  // null: summary
  View3 vdy;
  const bool* mask;
  int64_t mask_sB, mask_sP;
  void* out;  // [B, D] contiguous, in the accumulation type (float, or double for float64 calls)
};

struct ReduceBatch {
  ReduceItem items[kMaxModalities];
  int count;
  bool divide;  // summary: divide by max(1, valid positions)
};

struct MapItem {
  const void* src;  // X or dY; null: no such term
  View3 vsrc;
  const void* gate;  // [B, D] contiguous, accumulation type
  const bool* mask;
  int64_t mask_sB, mask_sP;
  const void* ds;  // [B, D] contiguous, accumulation type, not yet divided by the count; null: no such term
  void* out;
  View3 vout;
};

struct MapBatch {
  MapItem items[kMaxModalities];
  int count;
};

// dtype: of the features; wide: accumulate and read gates in double (float64 compute dtype).
// Return the launch's error code (cudaSuccess when fine).
cudaError_t launch_reduce(const ReduceBatch& batch, DType dtype, bool wide, cudaStream_t stream);
cudaError_t launch_map(const MapBatch& batch, DType dtype, bool wide, cudaStream_t stream);

}  // namespace cuda
}  // namespace mmcal
