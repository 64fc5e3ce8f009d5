// Host-side checks both CUDA host files (ops_cuda.cpp, gate_network_cuda.cpp)
// share. ATen here, so never included by a .cu file (see launch.cuh).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

namespace mmcal {
namespace cuda {

// A launch's error (cudaGetLastError after it) as a RuntimeError naming the op.
inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace mmcal
