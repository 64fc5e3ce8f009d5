// mmcal_cuda_emu::selftest(kernel, blocks, threads): runs one of selftest.cu's
// kernels over an int tensor of blocks * threads elements and returns it; a
// failed launch raises with the emulator's message.
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <string>

bool launch_selftest(const std::string& which, unsigned blocks, unsigned threads, int* out);

namespace {

at::Tensor selftest(c10::string_view kernel, int64_t blocks, int64_t threads) {
  at::Tensor out = at::full({blocks * threads}, -1, at::TensorOptions().dtype(at::kInt));
  const std::string which(kernel);
  const bool known = launch_selftest(which, static_cast<unsigned>(blocks), static_cast<unsigned>(threads),
                                     out.data_ptr<int>());
  TORCH_CHECK_VALUE(known, "kernel: no self-test kernel '", which, "'");
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, cudaGetErrorString(err));
  return out;
}

}  // namespace

// No tensor argument to dispatch on: the kernel for every key.
TORCH_LIBRARY_IMPL(mmcal_cuda_emu, CompositeExplicitAutograd, m) { m.impl("selftest", &selftest); }
