// Kernels that break CUDA's rules on purpose, beside ones that keep them: the
// emulator's own tests (tests/backends/test_cuda_emulated.py) show that it
// catches what the kernel tests rely on it to catch. Built by emulated_ops.py like
// csrc/cuda/*.cu (and, like them, free of ATen headers); selftest_op.cpp
// registers mmcal_cuda_emu::selftest, which launches them.
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
// Warp 1 writes a shared value after one shuffle; warp 0 reads it after eight
// shuffles, with a __syncthreads between the two only with `sync`. (A
// scheduler that ran a round per shuffle kept warp 0 behind warp 1 in every
// order and never showed this race.)
__global__ void uneven_warps_kernel(int* out, bool sync) {
  __shared__ int value;
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 0) {
    int v = 0;
    for (int i = 0; i < 8; ++i) v += __shfl_xor_sync(0xffffffffu, 1, 1);
    if (sync) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = v + value;
  } else {
    const int v = __shfl_xor_sync(0xffffffffu, 1, 1);
    if (lane == 0) value = 100 * v + static_cast<int>(blockIdx.x);
    if (sync) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 0;
  }
}
}  // namespace

// Launches the named kernel over `out` (blocks * threads ints); false for an unknown name.
bool launch_selftest(const std::string& which, unsigned blocks, unsigned threads, int* out) {
  if (which == "race" || which == "synced") {
    neighbour_kernel<<<blocks, threads, 0, nullptr>>>(out, which == "synced");
  } else if (which == "divergent_barrier") {
    divergent_barrier_kernel<<<blocks, threads, 0, nullptr>>>(out);
  } else if (which == "shuffle_after_exit") {
    shuffle_after_exit_kernel<<<blocks, threads, 0, nullptr>>>(out);
  } else if (which == "uneven_race" || which == "uneven_synced") {
    uneven_warps_kernel<<<blocks, threads, 0, nullptr>>>(out, which == "uneven_synced");
  } else if (which == "warp_sum") {
    warp_sum_kernel<<<blocks, threads, 0, nullptr>>>(out);
  } else {
    return false;
  }
  return true;
}
