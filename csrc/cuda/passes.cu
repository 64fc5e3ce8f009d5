// CUDA passes over X: the summaries / gate gradients (reductions over
// positions) and the modulation / input gradient (maps). No ATen headers: see
// passes.cuh. fp32 accumulation (fp64 for float64 calls), int64 offsets,
// 16-byte loads where a row is aligned, and no floating-point atomics: every
// output element is reduced by one block in a fixed order (deterministic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/scalar_math.h"
#include "passes.cuh"

namespace mmcal {
namespace cuda {
namespace {

constexpr int kLanes = 32;     // threads along the contiguous axis
constexpr int kRows = 8;       // warps per block
constexpr int kMaxVec = 8;     // 16 bytes of half types

template <typename T>
__device__ __forceinline__ float to_acc(T v, float) { return static_cast<float>(v); }
__device__ __forceinline__ float to_acc(__half v, float) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v, float) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ double to_acc(T v, double) { return static_cast<double>(to_acc(v, 0.0f)); }
__device__ __forceinline__ double to_acc(double v, double) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T>
__device__ __forceinline__ T from_acc_d(double v) {
  if constexpr (sizeof(T) == 8) return static_cast<T>(v);
  else return from_acc<T>(static_cast<float>(v));  // half types: round once from double via float is not exact,
}                                                  // but a float64 compute dtype with half features is rare

// Load kVec consecutive elements: one 16-byte load when `aligned`, else one at a time.
template <typename T, int kVec, typename Acc>
__device__ __forceinline__ void load_run(const T* p, bool aligned, int n, Acc* out) {
  if (aligned && n == kVec) {
    union { uint4 raw; T v[kVec]; } u;
    u.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = to_acc(u.v[i], Acc(0));
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = i < n ? to_acc(p[i], Acc(0)) : Acc(0);
  }
}

__device__ __forceinline__ bool is_valid(const bool* mask, int64_t sB, int64_t sP, int64_t b, int64_t p) {
  return mask == nullptr || mask[b * sB + p * sP];
}

// Which modality a flat block index falls in, from the per-modality prefix of block counts.
__device__ __forceinline__ int find_item(const int64_t* starts, int count, int64_t unit) {
  int m = 0;
  while (m + 1 < count && unit >= starts[m + 1]) ++m;
  return m;
}

struct Plan {
  int64_t starts[kMaxModalities + 1];  // first unit of each modality
  int kind[kMaxModalities];            // 0: channels-last tiles, 1: one channel per warp
  bool aligned[kMaxModalities];        // 16-byte loads possible
};

// ---- reductions -------------------------------------------------------------

template <typename T, typename Acc>
__global__ void __launch_bounds__(kLanes* kRows) reduce_kernel(const __grid_constant__ ReduceBatch batch, const __grid_constant__ Plan plan) {
  constexpr int kVec = 16 / sizeof(T) < kMaxVec ? 16 / sizeof(T) : kMaxVec;
  __shared__ Acc partial[kRows][kLanes * kVec];
  const int64_t unit = blockIdx.x;
  const int m = find_item(plan.starts, batch.count, unit);
  const ReduceItem& it = batch.items[m];
  const View3& v = it.vx;
  const T* x = static_cast<const T*>(it.x);
  const T* dy = static_cast<const T*>(it.dy);
  const int64_t local = unit - plan.starts[m];
  const int lane = threadIdx.x % kLanes, row = threadIdx.x / kLanes;

  int64_t b, d0;
  if (plan.kind[m] == 0) {  // a tile of kLanes * kVec channels; rows of the block step through positions
    const int64_t tiles = (v.D + kLanes * kVec - 1) / (kLanes * kVec);
    b = local / tiles;
    d0 = (local % tiles) * kLanes * kVec + lane * kVec;
    const int n = static_cast<int>(d0 < v.D ? (v.D - d0 < kVec ? v.D - d0 : kVec) : 0);
    Acc acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = 0;
    for (int64_t p = row; p < v.P; p += kRows) {
      if (n == 0 || !is_valid(it.mask, it.mask_sB, it.mask_sP, b, p)) continue;
      Acc xv[kVec], gv[kVec];
      load_run<T, kVec>(x + v.offset(b, p, d0), plan.aligned[m], n, xv);
      if (dy) {
        load_run<T, kVec>(dy + it.vdy.offset(b, p, d0), plan.aligned[m], n, gv);
#pragma unroll
        for (int i = 0; i < kVec; ++i) xv[i] *= gv[i];
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] += xv[i];
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) partial[row][lane * kVec + i] = acc[i];
    __syncthreads();
    if (row == 0 && n > 0) {
      int64_t count = v.P;
      if (batch.divide && it.mask) {
        count = 0;
        for (int64_t p = 0; p < v.P; ++p) count += is_valid(it.mask, it.mask_sB, it.mask_sP, b, p);
      }
      const Acc div = batch.divide ? mean_divisor<Acc>(count) : Acc(1);
      for (int i = 0; i < n; ++i) {
        Acc total = 0;
        for (int r = 0; r < kRows; ++r) total += partial[r][lane * kVec + i];  // fixed order
        static_cast<Acc*>(it.out)[b * v.D + d0 + i] = total / div;
      }
    }
    return;
  }
  // One channel per warp, lanes over positions (coalesced when positions are contiguous).
  const int64_t channel = local * kRows + row;
  if (channel >= v.B * v.D) return;
  b = channel / v.D;
  const int64_t d = channel % v.D;
  Acc acc = 0;
  int64_t count = 0;
  for (int64_t p = lane; p < v.P; p += kLanes) {
    if (!is_valid(it.mask, it.mask_sB, it.mask_sP, b, p)) continue;
    Acc xv = to_acc(x[v.offset(b, p, d)], Acc(0));
    if (dy) xv *= to_acc(dy[it.vdy.offset(b, p, d)], Acc(0));
    acc += xv;
    ++count;
  }
  for (int off = kLanes / 2; off > 0; off /= 2) {  // fixed butterfly: deterministic
    acc += __shfl_xor_sync(0xffffffffu, acc, off);
    count += __shfl_xor_sync(0xffffffffu, count, off);
  }
  if (lane == 0) {
    const Acc div = batch.divide ? mean_divisor<Acc>(it.mask ? count : v.P) : Acc(1);
    static_cast<Acc*>(it.out)[b * v.D + d] = acc / div;
  }
}

// ---- maps -------------------------------------------------------------------

template <typename T, typename Acc>
__device__ __forceinline__ void map_element(const MapItem& it, int64_t b, int64_t p, int64_t d, bool ok) {
  const int64_t D = it.vout.D;
  const T* src = static_cast<const T*>(it.src);
  const Acc* gate = static_cast<const Acc*>(it.gate);
  const Acc* ds = static_cast<const Acc*>(it.ds);
  const Acc s = src ? to_acc(src[it.vsrc.offset(b, p, d)], Acc(0)) : Acc(0);
  const Acc g = src ? gate[b * D + d] : Acc(0);
  const Acc v = ds ? input_grad_value<Acc>(src != nullptr, s, g, true, ok, ds[b * D + d]) : modulate_value<Acc>(s, g);
  T* out = static_cast<T*>(it.out) + it.vout.offset(b, p, d);
  if constexpr (sizeof(Acc) == 8) *out = from_acc_d<T>(v);
  else *out = from_acc<T>(v);
}

// One warp per row: (b, p) rows with lanes over channels (kind 0), or (b, d)
// rows with lanes over positions (kind 1).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kLanes* kRows) map_kernel(const __grid_constant__ MapBatch batch, const __grid_constant__ Plan plan) {
  const int64_t unit = blockIdx.x;
  const int m = find_item(plan.starts, batch.count, unit);
  const MapItem& it = batch.items[m];
  const int lane = threadIdx.x % kLanes, row = threadIdx.x / kLanes;
  const int64_t r = (unit - plan.starts[m]) * kRows + row;
  const View3& v = it.vout;
  if (plan.kind[m] == 0) {
    if (r >= v.B * v.P) return;
    const int64_t b = r / v.P, p = r % v.P;
    const bool ok = is_valid(it.mask, it.mask_sB, it.mask_sP, b, p);
    for (int64_t d = lane; d < v.D; d += kLanes) map_element<T, Acc>(it, b, p, d, ok);
  } else {
    if (r >= v.B * v.D) return;
    const int64_t b = r / v.D, d = r % v.D;
    for (int64_t p = lane; p < v.P; p += kLanes)
      map_element<T, Acc>(it, b, p, d, is_valid(it.mask, it.mask_sB, it.mask_sP, b, p));
  }
}

template <typename T>
Plan plan_reduce(const ReduceBatch& batch) {
  constexpr int kVec = 16 / sizeof(T) < kMaxVec ? 16 / sizeof(T) : kMaxVec;
  Plan plan{};
  int64_t start = 0;
  for (int m = 0; m < batch.count; ++m) {
    const ReduceItem& it = batch.items[m];
    const View3& v = it.vx;
    const bool last = v.sD == 1 && (it.dy == nullptr || it.vdy.sD == 1);
    plan.kind[m] = last ? 0 : 1;
    const auto aligned = [](const void* p, const View3& w) {
      return reinterpret_cast<uintptr_t>(p) % 16 == 0 && w.sB % kVec == 0 && w.sP % kVec == 0;
    };
    plan.aligned[m] = last && v.D % kVec == 0 && aligned(it.x, v) && (it.dy == nullptr || aligned(it.dy, it.vdy));
    plan.starts[m] = start;
    start += last ? v.B * ((v.D + kLanes * kVec - 1) / (kLanes * kVec)) : (v.B * v.D + kRows - 1) / kRows;
  }
  plan.starts[batch.count] = start;
  return plan;
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
cudaError_t reduce_typed(const ReduceBatch& batch, cudaStream_t stream) {
  const Plan plan = plan_reduce<T>(batch);
  const int64_t blocks = plan.starts[batch.count];
  if (blocks == 0) return cudaSuccess;
  reduce_kernel<T, Acc><<<static_cast<unsigned>(blocks), kLanes * kRows, 0, stream>>>(batch, plan);
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t map_typed(const MapBatch& batch, cudaStream_t stream) {
  const Plan plan = plan_map(batch);
  const int64_t blocks = plan.starts[batch.count];
  if (blocks == 0) return cudaSuccess;
  map_kernel<T, Acc><<<static_cast<unsigned>(blocks), kLanes * kRows, 0, stream>>>(batch, plan);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_reduce(const ReduceBatch& batch, DType dtype, bool wide, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return wide ? reduce_typed<float, double>(batch, stream) : reduce_typed<float, float>(batch, stream);
    case DType::F64: return reduce_typed<double, double>(batch, stream);
    case DType::F16: return wide ? reduce_typed<__half, double>(batch, stream) : reduce_typed<__half, float>(batch, stream);
    case DType::BF16:
      return wide ? reduce_typed<__nv_bfloat16, double>(batch, stream) : reduce_typed<__nv_bfloat16, float>(batch, stream);
  }
  return cudaErrorInvalidValue;
}

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
