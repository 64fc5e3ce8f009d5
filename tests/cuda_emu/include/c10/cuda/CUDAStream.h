// CPU stand-in (tests/cuda_emu): emulated launches run at once, on no stream.
#pragma once

#include <cuda_runtime.h>

namespace c10 {
namespace cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace cuda
}  // namespace c10
