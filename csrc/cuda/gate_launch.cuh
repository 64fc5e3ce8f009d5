// The launches of the CUDA gate-network kernels (gate_network.cu): steps 2-6
// of docs/spec.md for all modalities of a call, forward in one launch,
// backward in two. Declared without any ATen or torch header (see launch.cuh);
// gate_network_cuda.cpp checks the tensors, casts the parameters to the
// compute dtype once, allocates outputs and scratch, and fills a GateBatch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launch.cuh"

namespace mmcal {
namespace cuda {

constexpr int kGateSlots = 8;  // parameters per modality, GateParams order
// Warps a block of the per-sample kernels may have (GateBatch::warps); the
// first is the default: 16, 25-30% faster than 8 in these kernels on the
// H200, and equal to the float64 oracle and to 8 warps there (runs 5 and 6).
// MMCAL_CUDA_GATE_WARPS picks another (docs/kernels.md).
constexpr int kGateWarpChoices[] = {16, 8};

// One modality. Every pointer is to a contiguous tensor in the compute dtype
// ct (float, or double when ct is float64).
struct GateModality {
  // Inputs: the summary [B, D] and the parameters.
  const void* s;
  const void* proj_w;  // [d, D]
  const void* proj_b;  // [d]
  const void* hid_w;   // [r, 2d + 2]
  const void* hid_b;   // [r]
  const void* inst_w;  // [r]
  const void* inst_b;  // [1]
  const void* dim_w;   // [D, r]
  const void* dim_b;   // [D]
  int64_t D, r;
  int64_t dim_offset;     // first of this modality's D rows among all modalities' (sum of the D before it)
  int64_t hidden_offset;  // first of its r columns in the [B, sum r] hidden scratch
  // Forward outputs; the backward reads dim_gate and pre.
  void* gate;      // [B, D]
  void* dim_gate;  // [B, D], 2 sigmoid(z)
  void* pre;       // [B, r], the hidden layer before GELU
  // Backward.
  const void* grad_gate;  // [B, D]
  void* grad_s;           // [B, D], out
  void* dz;               // [B, D], scratch: d logits
  void* dpre;             // [B, r], scratch: d pre-activation
  void* dh;               // [B, d], scratch: d projection
  void* grads[kGateSlots];  // out: the parameter gradients, each shaped as its parameter
};

struct GateBatch {
  GateModality mods[kMaxModalities];
  int M;
  int warps;  // of the per-sample kernels' blocks: one of kGateWarpChoices
  int64_t B, d, rsum, dsum;  // dsum: sum of D over modalities
  const bool* present;       // [B, M] through its strides; null: every modality present
  int64_t present_sB, present_sM;
  // Per sample, all modalities: forward outputs, backward inputs.
  void* agreement;  // [B, M, M]
  void* support;    // [B, M]
  void* conflict;   // [B, M]
  void* instance;   // [B, M], 2 sigmoid(a)
  void* u;          // [B, M, d]
  void* norm;       // [B, M]
  void* context;    // [B, M, d]
  void* hidden;     // [B, rsum], scratch: GELU(pre)
  // Backward only.
  void* da;    // [B, M], scratch: d instance logit
  void* du;    // [B, M, d], scratch
  void* dctx;  // [B, M, d], scratch
  int64_t grad_starts[kMaxModalities * kGateSlots + 1];  // flat index of each parameter gradient's first element
};

// wide: ct is float64. Each returns the launch's error code.
cudaError_t launch_gates(const GateBatch& batch, bool wide, cudaStream_t stream);
cudaError_t launch_gates_backward(const GateBatch& batch, bool wide, cudaStream_t stream);

}  // namespace cuda
}  // namespace mmcal
