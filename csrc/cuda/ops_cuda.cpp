// The CUDA ops' host side: checks, allocation, one launch per pass for up to
// kMaxModalities modalities (larger calls are split into several launches),
// and the TORCH_LIBRARY_IMPL(mmcal, CUDA) block. Built only where torch has
// CUDA (build_config.py); the kernels are in reductions.cu and elementwise.cu,
// free of ATen headers.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "host_checks.h"
#include "launch.cuh"

namespace mmcal {
namespace cuda {
namespace {

using at::Tensor;
using at::TensorList;

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

template <typename Name>
void check_on_cuda(const Tensor& x, const Name& name) {
  TORCH_CHECK_VALUE(x.is_cuda(), name, ": the CUDA kernels take CUDA tensors, got one on ", x.device());
}

std::vector<Tensor> reduce_all(TensorList xs, TensorList dys, const OptionalTensors* masks, at::IntArrayRef layouts,
                               at::ScalarType ct) {
  check_features(xs, layouts, "xs");
  c10::cuda::CUDAGuard guard(xs[0].device());
  std::vector<Tensor> outs, keep;  // keep: contiguous copies alive until launched
  ReduceBatch batch{};
  batch.divide = masks != nullptr;
  const auto flush = [&] {
    if (batch.count == 0) return;
    check_launch(launch_reduce(batch, dtype_of(xs[0].scalar_type()), ct == at::kDouble, c10::cuda::getCurrentCUDAStream()),
                 "mmcal reduction");
    batch.count = 0;
  };
  for (size_t i = 0; i < xs.size(); ++i) {
    check_on_cuda(xs[i], arg("xs", i));
    check_compute_dtype(ct, xs[i].scalar_type(), "ct");
    const Tensor x = readable(xs[i], layouts[i]);
    keep.push_back(x);
    ReduceItem& it = batch.items[batch.count];
    it = ReduceItem{};
    it.x = x.const_data_ptr();
    it.vx = view3(x, layouts[i]);
    if (!dys.empty()) {
      check_grad_like(dys[i], xs[i], arg("grad_ys", i));
      const Tensor dy = readable(dys[i], layouts[i]);
      keep.push_back(dy);
      it.dy = dy.const_data_ptr();
      it.vdy = view3(dy, layouts[i]);
    }
    if (masks) {
      const std::optional<Tensor> mask = masks->get(i);
      check_mask(mask, xs[i], layouts[i], arg("masks", i));
      if (mask.has_value()) {
        it.mask = mask->const_data_ptr<bool>();
        it.mask_sB = mask->stride(0);
        it.mask_sP = mask->stride(1);
      }
    }
    Tensor out = at::empty({it.vx.B, it.vx.D}, x.options().dtype(ct));
    it.out = out.data_ptr();
    outs.push_back(out);
    if (out.numel() > 0 && ++batch.count == kMaxModalities) flush();
  }
  flush();
  return outs;
}

std::vector<Tensor> summaries(TensorList xs, const OptionalTensors& masks, at::IntArrayRef layouts, at::ScalarType ct) {
  TORCH_CHECK_VALUE(masks.size() == xs.size(), "masks: expected one entry per tensor of xs (", xs.size(), "), got ",
                    masks.size());
  return reduce_all(xs, {}, &masks, layouts, ct);
}

std::vector<Tensor> gate_grads(TensorList dys, TensorList xs, at::IntArrayRef layouts, at::ScalarType ct) {
  TORCH_CHECK_VALUE(dys.size() == xs.size(), "grad_ys: expected one tensor per tensor of xs (", xs.size(), "), got ",
                    dys.size());
  return reduce_all(xs, dys, nullptr, layouts, ct);
}

std::vector<Tensor> map_all(TensorList xs, const std::vector<Tensor>& srcs, const std::vector<Tensor>& gates,
                            const std::vector<std::optional<Tensor>>& masks, const std::vector<Tensor>& ds,
                            at::IntArrayRef layouts, at::ScalarType ct) {
  c10::cuda::CUDAGuard guard(xs[0].device());
  std::vector<Tensor> outs, keep, copy_back;  // copy_back: (result, scratch) pairs, see below
  MapBatch batch{};
  const auto flush = [&] {
    if (batch.count == 0) return;
    check_launch(launch_map(batch, dtype_of(xs[0].scalar_type()), ct == at::kDouble, c10::cuda::getCurrentCUDAStream()),
                 "mmcal map");
    batch.count = 0;
  };
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor result = at::empty_like(xs[i]);  // keeps the memory format (the dim order) of X
    outs.push_back(result);
    if (result.numel() == 0) continue;
    // Trailing dims that do not flatten to one stride: write a contiguous scratch, then copy.
    Tensor out = result;
    if (!flattenable(result, layouts[i])) {
      out = at::empty(xs[i].sizes(), xs[i].options());
      copy_back.push_back(result), copy_back.push_back(out);
    }
    MapItem& it = batch.items[batch.count];
    it = MapItem{};
    it.out = out.data_ptr();
    it.vout = view3(out, layouts[i]);
    if (srcs[i].defined()) {
      const Tensor src = readable(srcs[i], layouts[i]);
      const Tensor gate = gates[i].contiguous();
      keep.push_back(src), keep.push_back(gate);
      it.src = src.const_data_ptr();
      it.vsrc = view3(src, layouts[i]);
      it.gate = gate.const_data_ptr();
    }
    if (ds[i].defined()) {
      const Tensor d = ds[i].contiguous();
      keep.push_back(d);
      it.ds = d.const_data_ptr();
    }
    if (masks[i].has_value()) {
      it.mask = masks[i]->const_data_ptr<bool>();
      it.mask_sB = masks[i]->stride(0);
      it.mask_sP = masks[i]->stride(1);
    }
    if (++batch.count == kMaxModalities) flush();
  }
  flush();
  for (size_t i = 0; i < copy_back.size(); i += 2) copy_back[i].copy_(copy_back[i + 1]);
  return outs;
}

std::vector<Tensor> modulate(TensorList xs, TensorList gates, at::IntArrayRef layouts) {
  check_modulate_args(xs, gates, layouts);
  for (size_t i = 0; i < xs.size(); ++i) check_on_cuda(xs[i], arg("xs", i));
  std::vector<Tensor> srcs(xs.begin(), xs.end()), g(gates.begin(), gates.end()), none(xs.size());
  return map_all(xs, srcs, g, std::vector<std::optional<Tensor>>(xs.size()), none, layouts, gates[0].scalar_type());
}

// In place: through a fresh output and a copy (one extra pass; the CPU op
// writes in place directly).
void modulate_inplace(TensorList xs, TensorList gates, at::IntArrayRef layouts) {
  check_modulate_args(xs, gates, layouts);
  check_inplace_targets(xs, gates, "xs", "gates");
  const std::vector<Tensor> outs = modulate(xs, gates, layouts);
  for (size_t i = 0; i < xs.size(); ++i) xs[i].copy_(outs[i]);
}

std::vector<Tensor> input_grads(TensorList xs, const OptionalTensors& dys, const OptionalTensors& gates,
                                const OptionalTensors& masks, const OptionalTensors& ds,
                                at::IntArrayRef layouts) {
  const std::vector<InputGradTerms> terms = check_input_grads_args(xs, dys, gates, masks, ds, layouts);
  std::vector<Tensor> srcs(xs.size()), g(xs.size()), d(xs.size());
  std::vector<std::optional<Tensor>> m(xs.size());
  at::ScalarType ct = at::kFloat;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_on_cuda(xs[i], arg("xs", i));
    const InputGradTerms& t = terms[i];
    srcs[i] = t.dy.value_or(Tensor()), g[i] = t.gate.value_or(Tensor()), m[i] = t.mask;
    if (t.ds.has_value()) d[i] = *t.ds;  // divided by the count in the kernel
    ct = t.gate.has_value() ? t.gate->scalar_type() : t.ds->scalar_type();
  }
  return map_all(xs, srcs, g, m, d, layouts, ct);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmcal, CUDA, m) {
  m.impl("summaries", &summaries);
  m.impl("modulate", &modulate);
  m.impl("modulate_", &modulate_inplace);
  m.impl("gate_grads", &gate_grads);
  m.impl("input_grads", &input_grads);
}

}  // namespace cuda
}  // namespace mmcal
