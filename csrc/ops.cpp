// Every op schema of the mmcal namespace, in one TORCH_LIBRARY block. Kernels
// are registered per device in TORCH_LIBRARY_IMPL blocks (cpu/ops_cpu.cpp,
// cuda/ops_cuda.cpp, and inplace.cpp for modulate_'s autograd);
// Python adds register_fake and register_autograd (mmcal_kernels/_cpp.py).
// Layouts are ints: 0 = "sequence" [B, P, D], 1 = "spatial" [B, D, *S].
#include <Python.h>
#include <torch/library.h>

#include "common/settings.h"
#include "cpu/kernel_table.h"

// Lets `import mmcal_kernels._C` load this library, whose static initialisers
// register the ops; it defines no Python functions.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(mmcal, m) {
  // Step 1 for every modality: masked means [B, D_m] in the compute dtype ct.
  m.def("summaries(Tensor[] xs, Tensor?[] masks, int[] layouts, ScalarType ct) -> Tensor[]");
  // Step 7 for every modality: Y = (X * g).to(X.dtype), like X (memory format kept).
  m.def("modulate(Tensor[] xs, Tensor[] gates, int[] layouts) -> Tensor[]");
  // Inference, in place: X *= g, rounded once; no new memory for the outputs.
  m.def("modulate_(Tensor(a!)[] xs, Tensor[] gates, int[] layouts) -> ()");
  // Backward: dg = sum_p dY * X over every position, [B, D_m] in ct.
  m.def("gate_grads(Tensor[] grad_ys, Tensor[] xs, int[] layouts, ScalarType ct) -> Tensor[]");
  // Backward: dX = dY * g + V * ds / count, like X; a None term is left out.
  // ds is the gradient of the summary; count is its divisor, max(1, valid
  // positions), which the op applies itself (common/views.h).
  m.def(
      "input_grads(Tensor[] xs, Tensor?[] grad_ys, Tensor?[] gates, Tensor?[] masks, Tensor?[] ds, "
      "int[] layouts) -> Tensor[]");
  // Steps 2-6 for every modality: summaries [B, D_m] in ct and the 8*M gate parameters to the gates,
  // the diagnostics and what gates_backward reads (the contract: docs/spec.md, reference.gates_with_intermediates).
  m.def("gates(Tensor[] summaries, Tensor[] params, Tensor? present) -> (Tensor[] gates, Tensor[] diagnostics, Tensor[] saved)");
  // Backward of gates: d summaries in ct and d params, each in its parameter's dtype; deterministic.
  m.def(
      "gates_backward(Tensor[] grad_gates, Tensor[] summaries, Tensor[] params, Tensor? present, "
      "Tensor[] diagnostics, Tensor[] saved) -> (Tensor[] grad_summaries, Tensor[] grad_params)");
  // Which CPU kernel table is in use (default, AVX2, AVX512): for info and tests.
  m.def("cpu_capability() -> str", []() { return std::string(mmcal::cpu::kernels().capability); });
  // The environment switches the kernels read (common/settings.h): Python passes os.environ's values.
  m.def("set_settings(str cpu_stream, str cuda_gate_warps) -> ()", &mmcal::set_settings);
}
