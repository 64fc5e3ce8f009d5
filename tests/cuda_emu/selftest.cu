// Kernels that break CUDA's rules on purpose, beside ones that keep them: the
// emulator's own tests (tests/backends/test_cuda_emulated.py) show that it
// catches what the kernel tests rely on it to catch. Built by build.py like
// csrc/cuda/*.cu, as mmcal_cuda_emu::selftest.
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <string>

namespace {

// Each thread writes its slot, then reads its neighbour's; with `sync`, a
// __syncthreads between the two.
__global__ void neighbour_kernel(int* out, bool sync) {
  __shared__ int slot[1024];
  const unsigned t = threadIdx.x, n = blockDim.x;
  slot[t] = static_cast<int>(t + 1000 * blockIdx.x);
  if (sync) __syncthreads();
  out[blockIdx.x * n + t] = slot[(t + 1) % n];
}

// Half the block waits at a barrier the other half never reaches.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < blockDim.x / 2) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// The upper half of each warp exits; the rest shuffles with the full mask.
__global__ void shuffle_after_exit_kernel(int* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[blockIdx.x * blockDim.x + threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// A butterfly sum of the lane indices over each warp (every lane gets the
// warp's total), plus the number of lanes whose index is a multiple of 3.
__global__ void warp_sum_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int multiples = __popc(__ballot_sync(0xffffffffu, threadIdx.x % 3 == 0));
  out[blockIdx.x * blockDim.x + threadIdx.x] = v * 100 + multiples;
}

at::Tensor selftest(c10::string_view kernel, int64_t blocks, int64_t threads) {
  at::Tensor out = at::full({blocks * threads}, -1, at::TensorOptions().dtype(at::kInt));
  int* p = out.data_ptr<int>();
  const unsigned grid = static_cast<unsigned>(blocks), block = static_cast<unsigned>(threads);
  const std::string which(kernel);
  if (which == "race" || which == "synced") {
    neighbour_kernel<<<grid, block, 0, nullptr>>>(p, which == "synced");
  } else if (which == "divergent_barrier") {
    divergent_barrier_kernel<<<grid, block, 0, nullptr>>>(p);
  } else if (which == "shuffle_after_exit") {
    shuffle_after_exit_kernel<<<grid, block, 0, nullptr>>>(p);
  } else if (which == "warp_sum") {
    warp_sum_kernel<<<grid, block, 0, nullptr>>>(p);
  } else {
    TORCH_CHECK_VALUE(false, "kernel: no self-test kernel '", which, "'");
  }
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, cudaGetErrorString(err));
  return out;
}

}  // namespace

// No tensor argument to dispatch on: the kernel for every key.
TORCH_LIBRARY_IMPL(mmcal_cuda_emu, CompositeExplicitAutograd, m) { m.impl("selftest", &selftest); }
