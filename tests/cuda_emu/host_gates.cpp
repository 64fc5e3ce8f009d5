// csrc/cuda/gate_network_cuda.cpp, the CUDA gate ops' host side, built for CPU
// tensors around the emulated kernels (emulated_ops.py): the same checks, casts,
// allocations and GateBatch, registered as mmcal_cuda_emu::gates and
// ::gates_backward for the CPU key instead of mmcal's CUDA key. The file's own
// device checks name the CUDA device type; here that type is the CPU.
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "../common/gate_args.h"

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m) _TORCH_LIBRARY_IMPL(mmcal_cuda_emu, CPU, m, C10_UID)
#define CUDA CPU

#include "gate_network_cuda.cpp"

// This library's own copy of the kernels' settings (common/settings.h), set as mmcal's are.
TORCH_LIBRARY_FRAGMENT(mmcal_cuda_emu, m) {
  m.def("set_settings(str cpu_stream, str cuda_gate_warps) -> ()", &mmcal::set_settings);
}
