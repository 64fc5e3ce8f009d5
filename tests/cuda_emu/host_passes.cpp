// csrc/cuda/ops_cuda.cpp, the host side of the CUDA passes over X, built for
// CPU tensors around the emulated kernels (emulated_ops.py): registered as
// mmcal_cuda_emu::summaries, ::modulate, ... for the CPU key instead of mmcal's
// CUDA key. Its checks that a tensor is on the CUDA device ask for the CPU.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "../common/checks.h"

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m) _TORCH_LIBRARY_IMPL(mmcal_cuda_emu, CPU, m, C10_UID)
#define CUDA CPU
#define is_cuda is_cpu

#include "ops_cuda.cpp"

// csrc/inplace.cpp defines this beside mmcal's own autograd registrations of
// modulate_, which this library must not repeat: mmcal_cuda_emu::modulate_
// raises instead (its kernel is modulate's, which the tests run).
void mmcal::check_inplace_targets(at::TensorList, at::TensorList, const char*, const char*) {
  TORCH_CHECK(false, "mmcal_cuda_emu::modulate_ is not emulated; its kernel is mmcal_cuda_emu::modulate's");
}
