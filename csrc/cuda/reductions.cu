// SPEC.md step 1 (the summaries: masked means over positions) and the
// backward's gate gradient dg = sum_p dY * X: the CUDA reductions over
// positions, one kernel for both. fp32 accumulation (fp64 for float64 calls),
// int64 offsets, 16-byte loads where a row is aligned, and no floating-point
// atomics: every output element is reduced by one block in a fixed order
// (deterministic). No ATen headers: see launch.cuh.
#include "../common/scalar_math.h"
#include "device_common.cuh"

namespace mmcal {
namespace cuda {
namespace {

// N running sums in three levels: a term joins `part`, which joins `mid`
// every kSumBlock terms, which joins `total` every kSumBlock parts. A thread
// sums P / 32 (or P / 8) terms, millions on a long video or a 2^28-position
// map: a plain running sum there loses 1e-3 (at 2^22 positions, measured under
// tests/cuda_emu) to 1e-2 of the result; blocked, the rounding error grows with
// about 2 kSumBlock + n / kSumBlock^2 terms instead of n, as in the CPU kernels
// (csrc/cpu/reductions.h). One counter for all N: they take their terms together.
constexpr int kSumBlock = 256;

template <typename Acc, int N>
struct BlockedSums {
  Acc total[N], mid[N], part[N];
  int in_part = 0, in_mid = 0;

  __device__ __forceinline__ BlockedSums() {
#pragma unroll
    for (int i = 0; i < N; ++i) total[i] = mid[i] = part[i] = Acc(0);
  }
  __device__ __forceinline__ void add(const Acc* v) {
#pragma unroll
    for (int i = 0; i < N; ++i) part[i] += v[i];
    if (++in_part < kSumBlock) return;
    in_part = 0;
#pragma unroll
    for (int i = 0; i < N; ++i) mid[i] += part[i], part[i] = Acc(0);
    if (++in_mid < kSumBlock) return;
    in_mid = 0;
#pragma unroll
    for (int i = 0; i < N; ++i) total[i] += mid[i], mid[i] = Acc(0);
  }
  __device__ __forceinline__ Acc sum(int i) const { return total[i] + (mid[i] + part[i]); }
};

template <typename T, typename Acc>
__global__ void __launch_bounds__(kLanes* kRows) reduce_kernel(const __grid_constant__ ReduceBatch batch, const __grid_constant__ Plan plan) {
  constexpr int kVec = 16 / sizeof(T) < kMaxVec ? 16 / sizeof(T) : kMaxVec;
  __shared__ Acc partial[kRows][kLanes * kVec];
  const int64_t unit = block_unit();
  if (unit >= plan.starts[batch.count]) return;  // past the end of the grid's last row (whole block)
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
    BlockedSums<Acc, kVec> acc;
    for (int64_t p = row; p < v.P; p += kRows) {
      if (n == 0 || !is_valid(it.mask, it.mask_sB, it.mask_sP, b, p)) continue;
      Acc xv[kVec], gv[kVec];
      load_run<T, kVec>(x + v.offset(b, p, d0), plan.aligned[m], n, xv);
      if (dy) {
        load_run<T, kVec>(dy + it.vdy.offset(b, p, d0), plan.aligned[m], n, gv);
#pragma unroll
        for (int i = 0; i < kVec; ++i) xv[i] *= gv[i];
      }
      acc.add(xv);
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) partial[row][lane * kVec + i] = acc.sum(i);
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
  BlockedSums<Acc, 1> sums;
  int64_t count = 0;
  for (int64_t p = lane; p < v.P; p += kLanes) {
    if (!is_valid(it.mask, it.mask_sB, it.mask_sP, b, p)) continue;
    Acc xv = to_acc(x[v.offset(b, p, d)], Acc(0));
    if (dy) xv *= to_acc(dy[it.vdy.offset(b, p, d)], Acc(0));
    sums.add(&xv);
    ++count;
  }
  Acc acc = sums.sum(0);
  for (int off = kLanes / 2; off > 0; off /= 2) {  // fixed butterfly: deterministic
    acc += __shfl_xor_sync(0xffffffffu, acc, off);
    count += __shfl_xor_sync(0xffffffffu, count, off);
  }
  if (lane == 0) {
    const Acc div = batch.divide ? mean_divisor<Acc>(it.mask ? count : v.P) : Acc(1);
    static_cast<Acc*>(it.out)[b * v.D + d] = acc / div;
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

template <typename T, typename Acc>
cudaError_t reduce_typed(const ReduceBatch& batch, cudaStream_t stream) {
  const Plan plan = plan_reduce<T>(batch);
  const int64_t blocks = plan.starts[batch.count];
  if (blocks == 0) return cudaSuccess;
  dim3 grid;
  if (!grid_of(blocks, &grid)) return cudaErrorInvalidValue;  // over 2^47 units: no tensor is that large
  reduce_kernel<T, Acc><<<grid, kLanes * kRows, 0, stream>>>(batch, plan);
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

}  // namespace cuda
}  // namespace mmcal
