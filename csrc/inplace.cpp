// mmcal::modulate_ writes into its inputs. This file makes it behave as
// Tensor.mul_ does under autograd, on every device:
// * Autograd key: refuse what autograd cannot record (grad mode on and a
//   tensor that requires grad: a leaf, a view of one, or a graph node), then
//   go below autograd. Under no_grad a leaf may be written, as with mul_.
// * ADInplaceOrView key: bump the version counter of every written tensor,
//   so a backward that saved one of them raises instead of reading the
//   modified values.
// check_inplace_targets holds what every device kernel checks before it
// writes (overlapping elements, memory shared between tensors, inference
// tensors outside inference mode): those hold with autograd off too.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isin.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include "common/checks.h"

namespace mmcal {
namespace {

// The storage elements a strided view touches, for the views the overlap
// analysis of at::MemoryOverlap cannot decide (TooHard): rare, so a tensor of
// indices is affordable there.
at::Tensor touched(const at::Tensor& x) {
  at::Tensor idx = at::full({}, x.storage_offset(), x.options().dtype(at::kLong));
  for (int64_t d = 0; d < x.dim(); ++d) {
    idx = idx.unsqueeze(-1).add(at::arange(x.size(d), idx.options()).mul(x.stride(d)));
  }
  return idx.flatten();
}

bool overlaps_itself(const at::Tensor& x) {
  switch (at::has_internal_overlap(x)) {
    case at::MemOverlap::No: return false;
    case at::MemOverlap::Yes: return true;
    default: break;
  }
  if (x.numel() < 2) return false;
  const at::Tensor sorted = std::get<0>(touched(x).sort());
  return sorted.slice(0, 1).eq(sorted.slice(0, 0, -1)).any().item<bool>();
}

bool share_elements(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || !a.has_storage() || !b.has_storage()) return false;
  if (!a.storage().is_alias_of(b.storage())) return false;
  switch (at::get_overlap_status(a, b)) {
    case at::MemOverlapStatus::No: return false;
    case at::MemOverlapStatus::Full:
    case at::MemOverlapStatus::Partial: return true;
    default: break;
  }
  // Interleaved views of one storage (channel slices, strided positions).
  if (a.element_size() != b.element_size()) return true;  // different element grids: assume the worst
  return at::isin(touched(a), touched(b)).any().item<bool>();
}

using ModulateInplace = void(at::TensorList, at::TensorList, at::IntArrayRef);

const c10::TypedOperatorHandle<ModulateInplace>& modulate_inplace_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mmcal::modulate_", "").typed<ModulateInplace>();
  return op;
}

void modulate_inplace_autograd(c10::DispatchKeySet ks, at::TensorList xs, at::TensorList gates,
                               at::IntArrayRef layouts) {
  if (c10::GradMode::is_enabled()) {
    for (size_t i = 0; i < xs.size(); ++i) {
      TORCH_CHECK(!(xs[i].is_leaf() && xs[i].requires_grad()), arg("xs", i),
                  ": a leaf Variable that requires grad is being used in an in-place operation (mmcal::modulate_)");
      TORCH_CHECK(!xs[i].requires_grad(), arg("xs", i),
                  ": requires grad, and the in-place mmcal::modulate_ records nothing for autograd; use "
                  "mmcal::modulate, or call it under torch.no_grad() or torch.inference_mode()");
    }
    for (size_t i = 0; i < gates.size(); ++i) {
      TORCH_CHECK(!gates[i].requires_grad(), arg("gates", i),
                  ": requires grad, and the in-place mmcal::modulate_ records nothing for autograd; use "
                  "mmcal::modulate, or call it under torch.no_grad() or torch.inference_mode()");
    }
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  modulate_inplace_op().redispatch(ks & c10::after_autograd_keyset, xs, gates, layouts);
}

void modulate_inplace_view(c10::DispatchKeySet ks, at::TensorList xs, at::TensorList gates, at::IntArrayRef layouts) {
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    modulate_inplace_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, xs, gates, layouts);
  }
  for (const at::Tensor& x : xs) x.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

void check_inplace_targets(at::TensorList xs, at::TensorList read, const char* name, const char* read_name) {
  for (size_t i = 0; i < xs.size(); ++i) {
    const at::Tensor& x = xs[i];
    TORCH_CHECK(!x.is_inference() || c10::InferenceMode::is_enabled(), arg(name, i),
                ": Inplace update to inference tensor outside InferenceMode is not allowed; clone it first, or "
                "write it inside torch.inference_mode()");
    TORCH_CHECK_VALUE(!overlaps_itself(x), arg(name, i),
                      ": more than one element refers to a single memory location (an expanded or broadcast "
                      "view), so writing in place would write them several times; pass x.clone(), or use the "
                      "out-of-place op");
    for (size_t j = 0; j < i; ++j) {
      TORCH_CHECK_VALUE(!share_elements(x, xs[j]), arg(name, i), " and ", arg(name, j),
                        ": share memory, so writing one in place would change the other; pass separate tensors "
                        "(e.g. .clone() one), or use the out-of-place op");
    }
    for (size_t j = 0; j < read.size(); ++j) {
      TORCH_CHECK_VALUE(!share_elements(x, read[j]), arg(name, i), " and ", arg(read_name, j),
                        ": share memory, so writing ", arg(name, i), " in place would change ",
                        arg(read_name, j), " while it is read; pass separate tensors");
    }
  }
}

TORCH_LIBRARY_IMPL(mmcal, Autograd, m) { m.impl("modulate_", TORCH_FN(modulate_inplace_autograd)); }

TORCH_LIBRARY_IMPL(mmcal, ADInplaceOrView, m) { m.impl("modulate_", TORCH_FN(modulate_inplace_view)); }

}  // namespace mmcal
