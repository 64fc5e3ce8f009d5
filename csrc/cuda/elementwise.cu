// SPEC.md step 7 (the modulation Y = X * g, rounded once) and the
// backward's input gradient dX = dY * g + V * ds / count: the CUDA maps, one
// kernel for both. One warp per row, int64 offsets, rounding once from the
// accumulation type. The count (max(1, valid positions of the sample)) is
// counted here, by each warp from its sample's mask row, so that the backward
// launches nothing to divide ds: P/32 one-byte loads per warp, against the
// row's D/32 (or P/32) element loads. No ATen headers: see launch.cuh.
#include "../common/scalar_math.h"
#include "device_common.cuh"

namespace mmcal {
namespace cuda {
namespace {

// The divisor of sample b's ds, by the whole warp (every lane gets it).
template <typename Acc>
__device__ __forceinline__ Acc ds_divisor(const MapItem& it, int64_t b, int lane) {
  const int64_t P = it.vout.P;
  if (it.ds == nullptr || it.mask == nullptr) return mean_divisor<Acc>(P);
  int64_t count = 0;
  for (int64_t p0 = 0; p0 < P; p0 += kLanes) {
    const bool valid = p0 + lane < P && is_valid(it.mask, it.mask_sB, it.mask_sP, b, p0 + lane);
    count += __popc(__ballot_sync(0xffffffffu, valid));
  }
  return mean_divisor<Acc>(count);
}

template <typename T, typename Acc>
__device__ __forceinline__ void map_element(const MapItem& it, int64_t b, int64_t p, int64_t d, bool ok, Acc div) {
  const int64_t D = it.vout.D;
  const T* src = static_cast<const T*>(it.src);
  const Acc* gate = static_cast<const Acc*>(it.gate);
  const Acc* ds = static_cast<const Acc*>(it.ds);
  const Acc s = src ? to_acc(src[it.vsrc.offset(b, p, d)], Acc(0)) : Acc(0);
  const Acc g = src ? gate[b * D + d] : Acc(0);
  const Acc v = ds ? input_grad_value<Acc>(src != nullptr, s, g, true, ok, ds[b * D + d] / div) : modulate_value<Acc>(s, g);
  T* out = static_cast<T*>(it.out) + it.vout.offset(b, p, d);
  if constexpr (sizeof(Acc) == 8) *out = from_acc_d<T>(v);
  else *out = from_acc<T>(v);
}

// One warp per row: (b, p) rows with lanes over channels (kind 0), or (b, d)
// rows with lanes over positions (kind 1).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kLanes* kRows) map_kernel(const __grid_constant__ MapBatch batch, const __grid_constant__ Plan plan) {
  const int64_t unit = block_unit();
  if (unit >= plan.starts[batch.count]) return;  // past the end of the grid's last row (whole block)
  const int m = find_item(plan.starts, batch.count, unit);
  const MapItem& it = batch.items[m];
  const int lane = threadIdx.x % kLanes, row = threadIdx.x / kLanes;
  const int64_t r = (unit - plan.starts[m]) * kRows + row;
  const View3& v = it.vout;
  if (plan.kind[m] == 0) {
    if (r >= v.B * v.P) return;
    const int64_t b = r / v.P, p = r % v.P;
    const bool ok = is_valid(it.mask, it.mask_sB, it.mask_sP, b, p);
    const Acc div = ds_divisor<Acc>(it, b, lane);
    for (int64_t d = lane; d < v.D; d += kLanes) map_element<T, Acc>(it, b, p, d, ok, div);
  } else {
    if (r >= v.B * v.D) return;
    const int64_t b = r / v.D, d = r % v.D;
    const Acc div = ds_divisor<Acc>(it, b, lane);
    for (int64_t p = lane; p < v.P; p += kLanes)
      map_element<T, Acc>(it, b, p, d, is_valid(it.mask, it.mask_sB, it.mask_sP, b, p), div);
  }
}

Plan plan_map(const MapBatch& batch) {
  Plan plan{};
  int64_t start = 0;
  for (int m = 0; m < batch.count; ++m) {
    const MapItem& it = batch.items[m];
    const bool first = it.vout.sP == 1 && it.vout.sD != 1 && (it.src == nullptr || it.vsrc.sP == 1);
    plan.kind[m] = first ? 1 : 0;
    plan.aligned[m] = false;
    plan.starts[m] = start;
    start += ((first ? it.vout.B * it.vout.D : it.vout.B * it.vout.P) + kRows - 1) / kRows;
  }
  plan.starts[batch.count] = start;
  return plan;
}

template <typename T, typename Acc>
cudaError_t map_typed(const MapBatch& batch, cudaStream_t stream) {
  const Plan plan = plan_map(batch);
  const int64_t blocks = plan.starts[batch.count];
  if (blocks == 0) return cudaSuccess;
  dim3 grid;
  if (!grid_of(blocks, &grid)) return cudaErrorInvalidValue;  // over 2^47 units: no tensor is that large
  map_kernel<T, Acc><<<grid, kLanes * kRows, 0, stream>>>(batch, plan);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_map(const MapBatch& batch, DType dtype, bool wide, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return wide ? map_typed<float, double>(batch, stream) : map_typed<float, float>(batch, stream);
    case DType::F64: return map_typed<double, double>(batch, stream);
    case DType::F16: return wide ? map_typed<__half, double>(batch, stream) : map_typed<__half, float>(batch, stream);
    case DType::BF16:
      return wide ? map_typed<__nv_bfloat16, double>(batch, stream) : map_typed<__nv_bfloat16, float>(batch, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace mmcal
