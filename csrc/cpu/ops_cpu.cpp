// The CPU ops' host side: argument checks, output allocation, the choice of
// fast path from the strides, at::parallel_for over batch x channel (or
// position) blocks, and the TORCH_LIBRARY_IMPL(mmcal, CPU) block. The
// arithmetic is in reductions.h and elementwise.h, reached through the kernel
// table of the CPU's capability (dispatch.cpp).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../common/checks.h"
#include "../common/scalar_math.h"
#include "parallel.h"
#include "kernel_table.h"
#include "stream_choice.h"

namespace mmcal {
namespace cpu {
namespace {

using at::Tensor;
using at::TensorList;

// Work per parallel chunk: enough elements that a thread's start-up is noise.
constexpr int64_t kChunkElements = 1 << 15;

int64_t total_bytes(TensorList ts) {
  int64_t bytes = 0;
  for (const Tensor& t : ts) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

template <Combo C>
bool holds(at::ScalarType t, at::ScalarType acc) {
  using Types = ComboTypes<C>;
  return c10::CppTypeToScalarType<typename Types::T>::value == t &&
         c10::CppTypeToScalarType<typename Types::Acc>::value == acc;
}

template <int... I>
Combo find_combo(at::ScalarType t, at::ScalarType acc, std::integer_sequence<int, I...>) {
  Combo found = kNumCombos;
  ((found = found == kNumCombos && holds<static_cast<Combo>(I)>(t, acc) ? static_cast<Combo>(I) : found), ...);
  return found;
}

// The table slot for features of dtype t computed in acc: read off
// ComboTypes, the same types the slot's kernels were instantiated with.
Combo combo(at::ScalarType t, at::ScalarType acc) {
  const Combo c = find_combo(t, acc, std::make_integer_sequence<int, kNumCombos>{});
  TORCH_CHECK_TYPE(c != kNumCombos, "unsupported dtype ", t, " with compute dtype ", acc);
  return c;
}

const bool* mask_ptr(const std::optional<Tensor>& m, int64_t& sB, int64_t& sP) {
  sB = m.has_value() ? m->stride(0) : 0;
  sP = m.has_value() ? m->stride(1) : 0;
  return m.has_value() ? m->const_data_ptr<bool>() : nullptr;
}

std::optional<Tensor> get(const OptionalTensors& list, size_t i) { return list.get(i); }

template <typename Name>
void check_on_cpu(const Tensor& x, const Name& name) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), name, ": the CPU kernels take CPU tensors, got one on ", x.device());
}

// Both reductions: the summary (mask, divide) and the gate gradient (dy).
std::vector<Tensor> reduce_all(TensorList xs, TensorList dys, const OptionalTensors* masks, at::IntArrayRef layouts,
                               at::ScalarType ct, const char* name) {
  check_features(xs, layouts, name);
  std::vector<Tensor> outs;
  const int64_t threads = at::get_num_threads();
  for (size_t i = 0; i < xs.size(); ++i) {
    check_on_cpu(xs[i], arg(name, i));
    check_compute_dtype(ct, xs[i].scalar_type(), "ct");
    const int64_t layout = layouts[i];
    const Tensor x = readable(xs[i], layout);
    Tensor dy;
    if (!dys.empty()) {
      check_grad_like(dys[i], xs[i], arg("grad_ys", i));
      dy = readable(dys[i], layout);
    }
    std::optional<Tensor> mask = masks ? get(*masks, i) : std::nullopt;
    check_mask(mask, xs[i], layout, arg("masks", i));

    ReduceArgs a{};
    a.x = x.const_data_ptr();
    a.vx = view3(x, layout);
    a.dy = dy.defined() ? dy.const_data_ptr() : nullptr;
    if (dy.defined()) a.vdy = view3(dy, layout);
    a.mask = mask_ptr(mask, a.mask_sB, a.mask_sP);
    a.divide = masks != nullptr;
    Tensor out = at::empty({a.vx.B, a.vx.D}, x.options().dtype(ct));
    a.out = out.data_ptr();
    outs.push_back(out);
    if (out.numel() == 0) continue;

    const bool last = a.vx.channels_last() && (!a.dy || a.vdy.channels_last());
    const bool first = a.vx.channels_first() && (!a.dy || a.vdy.channels_first()) && !a.mask;
    const RowKind kind = last ? kChannelsLast : first ? kChannelsFirst : kGeneric;
    int64_t blocks = a.vx.D;  // one channel a task: channels-first and generic
    if (kind == kChannelsLast) {  // whole rows a task, split channels only when the batch is too small
      blocks = a.vx.B >= 4 * threads ? 1 : std::min((4 * threads + a.vx.B - 1) / a.vx.B, std::max<int64_t>(1, a.vx.D / 64));
    }
    const int64_t width = (a.vx.D + blocks - 1) / blocks;
    const int64_t grain = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, a.vx.P * width));
    const ReduceFn fn = kernels().reduce[combo(x.scalar_type(), ct)];
    at::parallel_for(0, a.vx.B * blocks, grain, [&](int64_t begin, int64_t end) { fn(a, kind, blocks, begin, end); });
  }
  return outs;
}

std::vector<Tensor> summaries(TensorList xs, const OptionalTensors& masks, at::IntArrayRef layouts, at::ScalarType ct) {
  TORCH_CHECK_VALUE(masks.size() == xs.size(), "masks: expected one entry (tensor or None) per tensor of xs (",
                    xs.size(), "), got ", masks.size());
  return reduce_all(xs, {}, &masks, layouts, ct, "xs");
}

std::vector<Tensor> gate_grads(TensorList dys, TensorList xs, at::IntArrayRef layouts, at::ScalarType ct) {
  TORCH_CHECK_VALUE(dys.size() == xs.size(), "grad_ys: expected one tensor per tensor of xs (", xs.size(), "), got ",
                    dys.size());
  return reduce_all(xs, dys, nullptr, layouts, ct, "xs");
}

// Both maps: the modulation (src = X) and the input gradient (src = dY, and
// ds), written into `out`, whose trailing dims must flatten. `src` may be
// `out` itself: each element is read, then written, by the same thread.
void map_into(const Tensor& out, int64_t layout, const Tensor& src_in, const Tensor& gate,
              const std::optional<Tensor>& mask, const Tensor& ds, Streaming streaming) {
  if (out.numel() == 0) return;
  const Tensor src = src_in.defined() ? readable(src_in, layout) : Tensor();
  const Tensor gate_c = gate.defined() ? gate.contiguous() : Tensor();
  const Tensor ds_c = ds.defined() ? ds.contiguous() : Tensor();
  MapArgs a{};
  a.vout = view3(out, layout);
  a.out = out.data_ptr();
  a.src = src.defined() ? src.const_data_ptr() : nullptr;
  if (src.defined()) a.vsrc = view3(src, layout);
  a.gate = gate_c.defined() ? gate_c.const_data_ptr() : nullptr;
  a.ds = ds_c.defined() ? ds_c.const_data_ptr() : nullptr;
  a.mask = mask_ptr(mask, a.mask_sB, a.mask_sP);

  const bool last = a.vout.channels_last() && (!a.src || a.vsrc.channels_last());
  const bool first = a.vout.channels_first() && (!a.src || a.vsrc.channels_first());
  const RowKind kind = last ? kChannelsLast : first ? kChannelsFirst : kGeneric;
  const int64_t rows = kind == kChannelsFirst ? a.vout.B * a.vout.D : a.vout.B * a.vout.P;
  const int64_t row_len = kind == kChannelsFirst ? a.vout.P : a.vout.D;
  const int64_t grain = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, row_len));
  a.stream = kind != kGeneric && stream_output(streaming, out, row_len);
  const at::ScalarType ct = gate_c.defined() ? gate_c.scalar_type() : ds_c.scalar_type();
  const MapFn fn = kernels().map[combo(out.scalar_type(), ct)];
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { fn(a, kind, begin, end); });
}

// Into `result` (allocated like X, or X itself): through a contiguous scratch
// when its trailing dims do not flatten to one stride (correct, one extra pass).
void map_to(const Tensor& result, int64_t layout, const Tensor& src, const Tensor& gate,
            const std::optional<Tensor>& mask, const Tensor& ds, Streaming streaming) {
  if (flattenable(result, layout)) return map_into(result, layout, src, gate, mask, ds, streaming);
  const Tensor scratch = at::empty(result.sizes(), result.options());
  map_into(scratch, layout, src, gate, mask, ds, Streaming::kNo);  // read back at once by the copy
  result.copy_(scratch);
}

Tensor map_one(const Tensor& like, int64_t layout, const Tensor& src, const Tensor& gate,
               const std::optional<Tensor>& mask, const Tensor& ds, Streaming streaming) {
  Tensor result = at::empty_like(like);  // keeps the memory format (the dim order) of X
  map_to(result, layout, src, gate, mask, ds, streaming);
  return result;
}

void check_modulate(TensorList xs, TensorList gates, at::IntArrayRef layouts) {
  check_modulate_args(xs, gates, layouts);
  for (size_t i = 0; i < xs.size(); ++i) check_on_cpu(xs[i], arg("xs", i));
}

std::vector<Tensor> modulate(TensorList xs, TensorList gates, at::IntArrayRef layouts) {
  check_modulate(xs, gates, layouts);
  const Streaming streaming = streaming_for_call(total_bytes(xs));
  std::vector<Tensor> outs;
  for (size_t i = 0; i < xs.size(); ++i)
    outs.push_back(map_one(xs[i], layouts[i], xs[i], gates[i], std::nullopt, Tensor(), streaming));
  return outs;
}

void modulate_inplace(TensorList xs, TensorList gates, at::IntArrayRef layouts) {
  check_modulate(xs, gates, layouts);
  check_inplace_targets(xs, gates, "xs", "gates");
  // Never streamed: the pass has just read each output line (its input) into cache.
  for (size_t i = 0; i < xs.size(); ++i)
    map_to(xs[i], layouts[i], xs[i], gates[i], std::nullopt, Tensor(), Streaming::kNo);
}

// ds / max(1, valid positions) of each sample, [B, D] in ds's dtype (ct):
// the term every valid position of the sample receives, SPEC.md step 1's
// divisor as spec.position_counts takes it (a masked sequence's True
// entries, else P), the same division in the same dtype. One loop, where
// at::full (or the mask's sum, cast and clamp) and at::div cost two to four
// dispatches, about 10 us a modality at small sizes: more than the map.
template <typename scalar_t>
void divide_by_counts(const Tensor& ds, int64_t positions, const bool* mask, int64_t mask_sB, int64_t mask_sP,
                      Tensor& out) {
  const int64_t B = ds.size(0), D = ds.size(1), sB = ds.stride(0), sD = ds.stride(1);
  const scalar_t* in = ds.const_data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t count = positions;
    if (mask != nullptr) {
      count = 0;
      for (int64_t p = 0; p < positions; ++p) count += mask_valid(mask, mask_sB, mask_sP, b, p);
    }
    const scalar_t div = mean_divisor<scalar_t>(count);
    for (int64_t d = 0; d < D; ++d) o[b * D + d] = in[b * sB + d * sD] / div;
  }
}

Tensor ds_per_position(const Tensor& x, int64_t layout, const std::optional<Tensor>& mask, const Tensor& ds) {
  Tensor out = at::empty({ds.size(0), ds.size(1)}, ds.options());
  int64_t mask_sB = 0, mask_sP = 0;
  const bool* m = layout == kSequence ? mask_ptr(mask, mask_sB, mask_sP) : nullptr;
  const int64_t P = positions(x, layout);
  if (ds.scalar_type() == at::kDouble)
    divide_by_counts<double>(ds, P, m, mask_sB, mask_sP, out);
  else
    divide_by_counts<float>(ds, P, m, mask_sB, mask_sP, out);
  return out;
}

std::vector<Tensor> input_grads(TensorList xs, const OptionalTensors& dys, const OptionalTensors& gates,
                                const OptionalTensors& masks, const OptionalTensors& ds,
                                at::IntArrayRef layouts) {
  const std::vector<InputGradTerms> terms = check_input_grads_args(xs, dys, gates, masks, ds, layouts);
  const Streaming streaming = streaming_for_call(total_bytes(xs));
  std::vector<Tensor> outs;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_on_cpu(xs[i], arg("xs", i));
    const InputGradTerms& t = terms[i];
    const Tensor ds_term = t.ds.has_value() ? ds_per_position(xs[i], layouts[i], t.mask, *t.ds) : Tensor();
    outs.push_back(map_one(xs[i], layouts[i], t.dy.value_or(Tensor()), t.gate.value_or(Tensor()), t.mask, ds_term,
                           streaming));
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmcal, CPU, m) {
  m.impl("summaries", &summaries);
  m.impl("modulate", &modulate);
  m.impl("modulate_", &modulate_inplace);
  m.impl("gate_grads", &gate_grads);
  m.impl("input_grads", &input_grads);
}

}  // namespace cpu
}  // namespace mmcal
