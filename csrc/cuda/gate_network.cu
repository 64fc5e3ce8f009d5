// The gate network (steps 2-6 of docs/spec.md) on the GPU: forward in one
// launch, backward in two, for all modalities of a call. Oracle:
// reference.gates_with_intermediates; the backward is the math of
// gates_backward.py and csrc/cpu/gate_network.cpp.
//
// Why this shape: steps 2-6 work on [B, D]-sized tensors (MOSEI: 32 x 877
// values in, ~200k multiply-adds per sample), so as torch ops they cost ~100
// launches each way of a few microseconds, far more than their arithmetic.
// Here one block owns one sample from the summaries to the gates (a sample
// depends on every modality of itself and of nothing else), its small values
// in shared memory, its vectors in global scratch that stays in L1/L2;
// products are one warp per output row over the row's contiguous weights
// (coalesced), or one thread per output column where the weights are read
// by column. With a block a sample, the products are latency-bound: each sum
// issues the loads of several terms (warp_rows: of several rows) before it
// adds the first, in the same order as a plain loop (tests/backends/
// sass_loads.py reads the loads in flight back from the SASS). The
// parameter gradients are sums over samples: a second launch
// gives each gradient element to one thread, which sums the samples in order.
// No atomics, so two runs give the same bits. No ATen headers: see launch.cuh.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "gate_launch.cuh"

namespace mmcal {
namespace cuda {
namespace {

constexpr int kWarpSize = 32;
// The per-sample kernels run with GateBatch::warps warps a block (16, the
// default, or 8: kGateWarpChoices). A block is one sample, so MOSEI's
// B = 32 fills 32 SMs; its products are latency-bound, and more warps
// keep more loads in flight. Both sizes compile without spills (sm_80,
// sm_90); 32 warps would spill on sm_80. Per-parameter sums: kParamThreads.
constexpr int kParamThreads = 256;
// Rows a block of the forward reduces at once (warp_rows): 4 a warp at 8
// warps, 2 at 16 (whose 128 registers a thread would spill 4).
constexpr int kRowsPerBlock = 32;
constexpr double kNormEps = 1e-6;  // reference.NORM_EPS

__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dev_erf(float x) { return erff(x); }
__device__ __forceinline__ double dev_erf(double x) { return erf(x); }
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {  // fixed butterfly: deterministic
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// acc = add(acc, load(i)) for i = begin, begin + step, ... < end, in that
// order: the same sum as the plain loop, to the bit. Why: nvcc leaves such a
// loop rolled (or unrolled with an exit test after each term), so a warp waits
// one memory latency per term; here the loads of kInFlight terms are issued
// (predicated) before the first of them is added, one latency per kInFlight
// terms. load returns what one term reads (a T, or a small struct of them).
// 8 terms of up to three floats; 4 of anything wider, which keeps the float64
// kernels at 16 warps (128 registers a thread) free of spills.
template <typename Acc, typename Load, typename Add>
__device__ __forceinline__ Acc ordered_sum(Acc acc, int64_t begin, int64_t end, int64_t step, Load load, Add add) {
  using Term = decltype(load(begin));
  constexpr int kInFlight = sizeof(Term) <= 12 ? 8 : 4;
  for (int64_t i = begin; i < end; i += kInFlight * step) {
    Term term[kInFlight];
#pragma unroll
    for (int t = 0; t < kInFlight; ++t)
      if (i + t * step < end) term[t] = load(i + t * step);
#pragma unroll
    for (int t = 0; t < kInFlight; ++t)
      if (i + t * step < end) acc = add(acc, term[t]);
  }
  return acc;
}

template <typename T>
struct Pair {
  T a, b;
};

// sum + a * b: the add of every dot product here (ordered_dot, warp_rows).
struct AddProduct {
  template <typename T>
  __device__ __forceinline__ T operator()(T sum, const Pair<T>& p) const {
    return sum + p.a * p.b;
  }
};

// sum of a(i) * b(i) over the same range, in order (one FMA per term).
template <typename T, typename A, typename B>
__device__ __forceinline__ T ordered_dot(T acc, int64_t begin, int64_t end, int64_t step, A a, B b) {
  return ordered_sum(acc, begin, end, step, [&](int64_t i) { return Pair<T>{a(i), b(i)}; }, AddProduct{});
}

// Both sums of a(i) * b(i) and of a(i) * c(i) over the same range, in order:
// two products that share a factor, with one load of it.
template <typename T, typename A, typename B, typename C>
__device__ __forceinline__ Pair<T> ordered_dot_pair(int64_t begin, int64_t end, int64_t step, A a, B b, C c) {
  struct Term {
    T a, b, c;
  };
  return ordered_sum(
      Pair<T>{0, 0}, begin, end, step, [&](int64_t i) { return Term{a(i), b(i), c(i)}; },
      [](Pair<T> acc, const Term& t) { return Pair<T>{acc.a + t.a * t.b, acc.b + t.a * t.c}; });
}

// The rows first, first + stride, ... < count (a warp's share of a matrix-
// vector product), each summed over its terms k = lane, lane + 32, ... < n
// and then across the warp by warp_sum's butterfly: the same sums, to the
// bit, as one row at a time. kRows rows go at once, so that their loads are
// in flight together (a row of 128 terms is 4 a lane: alone, a latency per
// row). setup(row) returns the row's state with its term count n;
// load(state, k) what term k reads; add(sum, term) adds it; finish(state,
// sum) runs on lane t for the group's t-th row, those of a group together.
template <int kRows, typename T, typename Setup, typename Load, typename Add, typename Finish>
__device__ __forceinline__ void warp_rows(int64_t first, int64_t count, int64_t stride, int lane, Setup setup,
                                          Load load, Add add, Finish finish) {
  using Row = decltype(setup(first));
  using Term = decltype(load(setup(first), first));
  // Up to 128 bytes of terms in flight a lane (32 registers).
  constexpr int kTerms = kRows * sizeof(Term) * 4 <= 128 ? 4 : kRows * sizeof(Term) * 2 <= 128 ? 2 : 1;
  for (int64_t base = first; base < count; base += kRows * stride) {
    Row row[kRows];
    bool live[kRows];
    T acc[kRows];
    int64_t most = 0;
#pragma unroll
    for (int t = 0; t < kRows; ++t) {
      live[t] = base + t * stride < count;
      if (live[t]) {
        row[t] = setup(base + t * stride);
        most = row[t].n > most ? row[t].n : most;
      }
      acc[t] = T(0);
    }
    for (int64_t k = lane; k < most; k += kTerms * kWarpSize) {
      Term term[kRows][kTerms];
#pragma unroll
      for (int t = 0; t < kRows; ++t)
#pragma unroll
        for (int i = 0; i < kTerms; ++i)
          if (live[t] && k + i * kWarpSize < row[t].n) term[t][i] = load(row[t], k + i * kWarpSize);
#pragma unroll
      for (int t = 0; t < kRows; ++t)
#pragma unroll
        for (int i = 0; i < kTerms; ++i)
          if (live[t] && k + i * kWarpSize < row[t].n) acc[t] = add(acc[t], term[t][i]);
    }
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off /= 2)
#pragma unroll
      for (int t = 0; t < kRows; ++t) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], off);
    // Lane t takes row t (selected, not indexed: a register array indexed by lane would go to local memory).
    Row mine = row[0];
    T sum = acc[0];
    bool on = lane == 0 && live[0];
#pragma unroll
    for (int t = 1; t < kRows; ++t)
      if (lane == t) mine = row[t], sum = acc[t], on = live[t];
    if (on) finish(mine, sum);
  }
}

template <typename T>
__device__ __forceinline__ T two_sigmoid(T x) {
  return T(2) / (T(1) + dev_exp(-x));
}

// Exact (erf) GELU and its derivative Phi(x) + x phi(x).
template <typename T>
__device__ __forceinline__ T gelu_cdf(T x) {
  return T(0.5) * (T(1) + dev_erf(x * T(0.70710678118654752440)));
}
template <typename T>
__device__ __forceinline__ T gelu_pdf(T x) {
  return dev_exp(T(-0.5) * x * x) * T(0.39894228040143267794);
}

template <typename T>
__device__ __forceinline__ const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
__device__ __forceinline__ T* out(void* p) {
  return static_cast<T*>(p);
}

__device__ __forceinline__ bool is_present(const GateBatch& g, int64_t b, int m) {
  // Read as a byte: any nonzero byte is True, as torch takes a bool tensor.
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(g.present);
  return bytes == nullptr || bytes[b * g.present_sB + m * g.present_sM] != 0;
}

// Which modality a flat row falls in, given each modality's first row
// (``first``: GateModality::dim_offset or ::hidden_offset).
__device__ __forceinline__ int modality_of(const GateBatch& g, int64_t row, int64_t GateModality::*first) {
  int m = 0;
  while (m + 1 < g.M && row >= g.mods[m + 1].*first) ++m;
  return m;
}

// One sample's small values, for every modality.
template <typename T>
struct Sample {
  T w[kMaxModalities][kMaxModalities];  // w[m][n] = present[n], n != m; 0 on the diagonal
  T k[kMaxModalities];                  // max(1, sum_n w[m][n])
  T norm[kMaxModalities];
  T agree[kMaxModalities][kMaxModalities];
  T support[kMaxModalities], conflict[kMaxModalities];
  T ig[kMaxModalities];  // the instance gate 2 sigmoid(a)
  T da[kMaxModalities], dS[kMaxModalities], dC[kMaxModalities], radial[kMaxModalities];
};

template <typename T>
__device__ void weights_of_sample(const GateBatch& g, int64_t b, Sample<T>& sh) {
  const int t = threadIdx.x;
  if (t < g.M) {
    T sum = 0;
    for (int n = 0; n < g.M; ++n) {
      const T w = (n != t && is_present(g, b, n)) ? T(1) : T(0);
      sh.w[t][n] = w;
      sum += w;
    }
    sh.k[t] = sum > T(1) ? sum : T(1);
  }
}

// ---- forward ------------------------------------------------------------------

template <typename T, int kWarps>
__global__ void __launch_bounds__(kWarps* kWarpSize) gates_kernel(const __grid_constant__ GateBatch g) {
  static_assert(kWarps >= kMaxModalities, "a warp per modality");
  constexpr int kThreads = kWarps * kWarpSize;
  __shared__ Sample<T> sh;
  const int64_t b = blockIdx.x, d = g.d, cue = 2 * g.d + 2;
  const int M = g.M, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const T eps = static_cast<T>(kNormEps);
  T* u = out<T>(g.u) + b * M * d;
  T* ctx = out<T>(g.context) + b * M * d;
  T* hid = out<T>(g.hidden) + b * g.rsum;
  weights_of_sample(g, b, sh);

  // Step 2: h_m = W_m s_m + b_m into u, a warp per row of W_m (several at once).
  struct ProjRow {
    const T *w, *s, *bias;
    int64_t n, row;
  };
  warp_rows<kRowsPerBlock / kWarps, T>(
      warp, M * d, kWarps, lane,
      [&](int64_t row) {
        const int m = static_cast<int>(row / d);
        const int64_t j = row % d;
        const GateModality& md = g.mods[m];
        return ProjRow{in<T>(md.proj_w) + j * md.D, in<T>(md.s) + b * md.D, in<T>(md.proj_b) + j, md.D, row};
      },
      [](const ProjRow& r, int64_t k) { return Pair<T>{__ldg(r.w + k), __ldg(r.s + k)}; },
      AddProduct{},
      [&](const ProjRow& r, T acc) { u[r.row] = acc + __ldg(r.bias); });
  __syncthreads();
  // The norm (its square summed in ct, so it overflows where the reference's does), then u.
  if (warp < M) {
    const T* uw = u + warp * d;
    T sq = ordered_sum(T(0), lane, d, kWarpSize, [&](int64_t j) { return uw[j]; }, [](T acc, T v) { return acc + v * v; });
    sq = warp_sum(sq);
    if (lane == 0) {
      sh.norm[warp] = dev_sqrt(sq);
      out<T>(g.norm)[b * M + warp] = sh.norm[warp];
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < M * d; i += kThreads) {
    const T n = sh.norm[i / d];
    u[i] /= n > eps ? n : eps;
  }
  __syncthreads();

  // Step 3: agreement, one warp per pair m <= n; support, conflict, context.
  for (int pair = warp; pair < M * M; pair += kWarps) {
    const int m = pair / M, n = pair % M;
    if (n < m) continue;
    T acc = 0;
    for (int64_t j = lane; j < d; j += kWarpSize) acc += u[m * d + j] * u[n * d + j];
    acc = warp_sum(acc);
    if (lane == 0) sh.agree[m][n] = sh.agree[n][m] = acc;
  }
  __syncthreads();
  if (threadIdx.x < M) {
    const int m = threadIdx.x;
    T s = 0, c = 0;
    for (int n = 0; n < M; ++n) {
      if (sh.w[m][n] == T(0)) continue;
      const T a = sh.agree[m][n];
      s += a < T(0) ? T(0) : a;  // relu, NaN kept: relu(NaN) is NaN in torch
      c += a > T(0) ? T(0) : -a;
    }
    sh.support[m] = s / sh.k[m];
    sh.conflict[m] = c / sh.k[m];
    out<T>(g.support)[b * M + m] = sh.support[m];
    out<T>(g.conflict)[b * M + m] = sh.conflict[m];
  }
  for (int i = threadIdx.x; i < M * M; i += kThreads) out<T>(g.agreement)[b * M * M + i] = sh.agree[i / M][i % M];
  for (int64_t i = threadIdx.x; i < M * d; i += kThreads) {
    const int m = static_cast<int>(i / d);
    const int64_t j = i % d;
    T c = 0;
    for (int n = 0; n < M; ++n)
      if (sh.w[m][n] != T(0)) c += u[n * d + j];
    ctx[i] = c / sh.k[m];
  }
  __syncthreads();

  // Steps 4-5: the cue q_m = [u*c, u-c, S, C] is formed as it is read; a warp per hidden unit.
  struct HiddenRow {
    const T *w, *um, *cm;
    int64_t n, row, i;
    int m;
  };
  struct CueTerm {
    T w_prod, w_diff, u, c;
  };
  warp_rows<kRowsPerBlock / kWarps, T>(
      warp, g.rsum, kWarps, lane,
      [&](int64_t row) {
        const int m = modality_of(g, row, &GateModality::hidden_offset);
        const int64_t i = row - g.mods[m].hidden_offset;
        return HiddenRow{in<T>(g.mods[m].hid_w) + i * cue, u + m * d, ctx + m * d, d, row, i, m};
      },
      [&](const HiddenRow& r, int64_t j) { return CueTerm{__ldg(r.w + j), __ldg(r.w + d + j), r.um[j], r.cm[j]}; },
      [](T acc, const CueTerm& t) { return acc + (t.w_prod * (t.u * t.c) + t.w_diff * (t.u - t.c)); },
      [&](const HiddenRow& r, T acc) {
        const GateModality& md = g.mods[r.m];
        const T x = acc + __ldg(r.w + 2 * d) * sh.support[r.m] + __ldg(r.w + 2 * d + 1) * sh.conflict[r.m] +
                    __ldg(in<T>(md.hid_b) + r.i);
        out<T>(md.pre)[b * md.r + r.i] = x;
        hid[r.row] = x * gelu_cdf(x);
      });
  __syncthreads();
  // Step 5: the instance logit, a warp per modality.
  if (warp < M) {
    const GateModality& md = g.mods[warp];
    const T* e = hid + md.hidden_offset;
    T acc = ordered_dot(T(0), lane, md.r, kWarpSize, [&](int64_t i) { return __ldg(in<T>(md.inst_w) + i); },
                        [&](int64_t i) { return e[i]; });
    acc = warp_sum(acc);
    if (lane == 0) {
      sh.ig[warp] = two_sigmoid(acc + __ldg(in<T>(md.inst_b)));
      out<T>(g.instance)[b * M + warp] = sh.ig[warp];
    }
  }
  __syncthreads();
  // Steps 5-6: the dimension logits, a warp per row of W_dim; the gates and the pass-through.
  struct DimRow {
    const T *w, *e;
    int64_t n, j;
    int m;
  };
  warp_rows<kRowsPerBlock / kWarps, T>(
      warp, g.dsum, kWarps, lane,
      [&](int64_t row) {
        const int m = modality_of(g, row, &GateModality::dim_offset);
        const GateModality& md = g.mods[m];
        const int64_t j = row - md.dim_offset;
        return DimRow{in<T>(md.dim_w) + j * md.r, hid + md.hidden_offset, md.r, j, m};
      },
      [](const DimRow& r, int64_t i) { return Pair<T>{__ldg(r.w + i), r.e[i]}; },
      AddProduct{},
      [&](const DimRow& r, T acc) {
        const GateModality& md = g.mods[r.m];
        const T dg = two_sigmoid(acc + __ldg(in<T>(md.dim_b) + r.j));
        out<T>(md.dim_gate)[b * md.D + r.j] = dg;
        out<T>(md.gate)[b * md.D + r.j] = is_present(g, b, r.m) ? sh.ig[r.m] * dg : T(1);
      });
}

// ---- backward, per sample ----------------------------------------------------------

template <typename T, int kWarps>
__global__ void __launch_bounds__(kWarps* kWarpSize) gates_backward_kernel(const __grid_constant__ GateBatch g) {
  static_assert(kWarps >= kMaxModalities, "a warp per modality");
  constexpr int kThreads = kWarps * kWarpSize;
  __shared__ Sample<T> sh;
  const int64_t b = blockIdx.x, d = g.d, cue = 2 * g.d + 2;
  const int M = g.M, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const T eps = static_cast<T>(kNormEps);
  const T* u = in<T>(g.u) + b * M * d;
  const T* ctx = in<T>(g.context) + b * M * d;
  T* hid = out<T>(g.hidden) + b * g.rsum;
  T* du = out<T>(g.du) + b * M * d;
  T* dctx = out<T>(g.dctx) + b * M * d;
  weights_of_sample(g, b, sh);
  if (threadIdx.x < M) {
    sh.norm[threadIdx.x] = in<T>(g.norm)[b * M + threadIdx.x];
    sh.ig[threadIdx.x] = in<T>(g.instance)[b * M + threadIdx.x];
  }
  __syncthreads();

  // Step 6 back: to the dimension logits z and the instance logit a. A
  // missing modality's gate is the constant 1: its gradient is selected
  // away (not multiplied by 0, so a non-finite one stays out).
  for (int64_t row = threadIdx.x; row < g.dsum; row += kThreads) {
    const int m = modality_of(g, row, &GateModality::dim_offset);
    const GateModality& md = g.mods[m];
    const int64_t i = b * md.D + row - md.dim_offset;
    const T dg = in<T>(md.dim_gate)[i];
    out<T>(md.dz)[i] = is_present(g, b, m) ? in<T>(md.grad_gate)[i] * sh.ig[m] * dg * (T(1) - T(0.5) * dg) : T(0);
  }
  if (warp < M) {
    const GateModality& md = g.mods[warp];
    T acc = 0;
    for (int64_t j = lane; j < md.D; j += kWarpSize) acc += in<T>(md.grad_gate)[b * md.D + j] * in<T>(md.dim_gate)[b * md.D + j];
    acc = warp_sum(acc);
    if (lane == 0) {
      const T ig = sh.ig[warp];
      sh.da[warp] = is_present(g, b, warp) ? acc * ig * (T(1) - T(0.5) * ig) : T(0);
      out<T>(g.da)[b * M + warp] = sh.da[warp];
    }
  }
  __syncthreads();

  // Step 5 back: one thread per hidden unit (W_dim read by column:
  // neighbouring threads, neighbouring addresses). GELU again, for the
  // weight gradients of the second launch.
  for (int64_t row = threadIdx.x; row < g.rsum; row += kThreads) {
    const int m = modality_of(g, row, &GateModality::hidden_offset);
    const GateModality& md = g.mods[m];
    const int64_t i = row - md.hidden_offset;
    const T* w = in<T>(md.dim_w) + i;
    const T* dz = in<T>(md.dz) + b * md.D;
    const T de = ordered_dot(sh.da[m] * __ldg(in<T>(md.inst_w) + i), 0, md.D, 1, [&](int64_t j) { return dz[j]; },
                             [&](int64_t j) { return __ldg(w + j * md.r); });
    const T x = in<T>(md.pre)[b * md.r + i];
    const T cdf = gelu_cdf(x);
    hid[row] = x * cdf;
    out<T>(md.dpre)[b * md.r + i] = de * (cdf + x * gelu_pdf(x));
  }
  __syncthreads();

  // Step 4 back: dq = dpre W_hid, one thread per (modality, j) for the u*c
  // and u-c parts, a warp per modality for the support and conflict parts.
  for (int64_t idx = threadIdx.x; idx < M * d; idx += kThreads) {
    const int m = static_cast<int>(idx / d);
    const int64_t j = idx % d;
    const GateModality& md = g.mods[m];
    const T* w = in<T>(md.hid_w);
    const T* dp = in<T>(md.dpre) + b * md.r;
    const Pair<T> sums = ordered_dot_pair<T>(
        0, md.r, 1, [&](int64_t i) { return dp[i]; }, [&](int64_t i) { return __ldg(w + i * cue + j); },
        [&](int64_t i) { return __ldg(w + i * cue + d + j); });
    const T prod = sums.a, diff = sums.b;
    du[idx] = prod * ctx[idx] + diff;
    dctx[idx] = prod * u[idx] - diff;
  }
  if (warp < M) {
    const GateModality& md = g.mods[warp];
    const T* w = in<T>(md.hid_w);
    const T* dp = in<T>(md.dpre) + b * md.r;
    const Pair<T> sums = ordered_dot_pair<T>(
        lane, md.r, kWarpSize, [&](int64_t i) { return dp[i]; }, [&](int64_t i) { return __ldg(w + i * cue + 2 * d); },
        [&](int64_t i) { return __ldg(w + i * cue + 2 * d + 1); });
    const T s = warp_sum(sums.a), c = warp_sum(sums.b);
    if (lane == 0) {
      sh.dS[warp] = s / sh.k[warp];
      sh.dC[warp] = c / sh.k[warp];
    }
  }
  __syncthreads();
  // Step 3 back: support and conflict to the agreement (relu'(0) = 0), held in sh.agree.
  if (threadIdx.x < M * M) {
    const int m = threadIdx.x / M, n = threadIdx.x % M;
    const T a = in<T>(g.agreement)[b * M * M + threadIdx.x];
    const T v = (a > T(0) ? sh.dS[m] : T(0)) - (a < T(0) ? sh.dC[m] : T(0));
    sh.agree[m][n] = sh.w[m][n] != T(0) ? v : T(0);
  }
  __syncthreads();
  // du_m += sum_n (dA[m,n] + dA[n,m]) u_n + sum_n w[n,m] dctx_n / k_n.
  for (int64_t idx = threadIdx.x; idx < M * d; idx += kThreads) {
    const int m = static_cast<int>(idx / d);
    const int64_t j = idx % d;
    struct Term {
      T coef, u, dctx, k;
      bool context;
    };
    du[idx] = ordered_sum(
        du[idx], 0, M, 1,
        [&](int64_t n) {
          const T coef = sh.agree[m][n] + sh.agree[n][m];
          const bool context = sh.w[n][m] != T(0);
          return Term{coef, coef != T(0) ? u[n * d + j] : T(0), context ? dctx[n * d + j] : T(0), sh.k[n], context};
        },
        // The division here, not in the load: it would wait for its load.
        [&](T acc, const Term& t) {
          if (t.coef != T(0)) acc += t.coef * t.u;
          return t.context ? acc + t.dctx / t.k : acc;
        });
  }
  __syncthreads();
  // Step 2 back: the normalisation as du's part orthogonal to u.
  if (warp < M) {
    const T *uw = u + warp * d, *duw = du + warp * d;
    T acc = ordered_dot(T(0), lane, d, kWarpSize, [&](int64_t j) { return uw[j]; }, [&](int64_t j) { return duw[j]; });
    acc = warp_sum(acc);
    if (lane == 0) sh.radial[warp] = sh.norm[warp] >= eps ? acc : T(0);
  }
  __syncthreads();
  for (int64_t idx = threadIdx.x; idx < M * d; idx += kThreads) {
    const int m = static_cast<int>(idx / d);
    const int64_t j = idx % d;
    const T n = sh.norm[m];
    out<T>(g.mods[m].dh)[b * d + j] = (du[idx] - u[idx] * sh.radial[m]) / (n > eps ? n : eps);
  }
  __syncthreads();
  // ds_m = dh_m W_m, one thread per summary element (W_m read by column).
  for (int64_t row = threadIdx.x; row < g.dsum; row += kThreads) {
    const int m = modality_of(g, row, &GateModality::dim_offset);
    const GateModality& md = g.mods[m];
    const int64_t k = row - md.dim_offset;
    const T* dh = in<T>(md.dh) + b * d;
    const T* w = in<T>(md.proj_w) + k;
    out<T>(md.grad_s)[b * md.D + k] = ordered_dot(T(0), 0, d, 1, [&](int64_t j) { return dh[j]; },
                                                  [&](int64_t j) { return __ldg(w + j * md.D); });
  }
}

// ---- backward, the parameter gradients: sums over samples ----------------------------

// One thread per gradient element, samples summed in order in double.
template <typename T>
__global__ void __launch_bounds__(kParamThreads) param_grads_kernel(const __grid_constant__ GateBatch g) {
  const int segments = g.M * kGateSlots;
  const int64_t total = g.grad_starts[segments];
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kParamThreads) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kParamThreads) {
    int seg = 0;
    while (seg + 1 < segments && e >= g.grad_starts[seg + 1]) ++seg;
    const int m = seg / kGateSlots, slot = seg % kGateSlots;
    const GateModality& md = g.mods[m];
    const int64_t i = e - g.grad_starts[seg], d = g.d, cue = 2 * g.d + 2, B = g.B;
    double acc = 0;
    switch (slot) {
      case 0: {  // proj_weight [d, D]: sum_b dh[b, j] s[b, k]
        const int64_t j = i / md.D, k = i % md.D;
        for (int64_t s = 0; s < B; ++s)
          acc += static_cast<double>(in<T>(md.dh)[s * d + j]) * static_cast<double>(in<T>(md.s)[s * md.D + k]);
        break;
      }
      case 1:  // proj_bias
        for (int64_t s = 0; s < B; ++s) acc += static_cast<double>(in<T>(md.dh)[s * d + i]);
        break;
      case 2: {  // hidden_weight [r, 2d+2]: sum_b dpre[b, j] q[b, k]
        // The cue q[s, m, k] rebuilt from u, the context, support and conflict;
        // its source chosen once (k is fixed here), so that the loads of many
        // samples are in flight together.
        const int64_t j = i / cue, k = i % cue;
        const bool from_u = k < 2 * d, product = k < d;
        const int64_t at = m * d + (product ? k : k - d);
        const T* x = from_u ? in<T>(g.u) + at : (k == 2 * d ? in<T>(g.support) : in<T>(g.conflict)) + m;
        const T* c = in<T>(g.context) + at;  // read only where from_u
        const int64_t stride = from_u ? g.M * d : g.M;
        struct Term {
          T dpre, x, c;
        };
        acc = ordered_sum(
            0.0, 0, B, 1,
            [&](int64_t s) {
              return Term{in<T>(md.dpre)[s * md.r + j], x[s * stride], from_u ? c[s * stride] : T(0)};
            },
            [&](double sum, const Term& t) {
              const T q = !from_u ? t.x : product ? t.x * t.c : t.x - t.c;
              return sum + static_cast<double>(t.dpre) * static_cast<double>(q);
            });
        break;
      }
      case 3:  // hidden_bias
        for (int64_t s = 0; s < B; ++s) acc += static_cast<double>(in<T>(md.dpre)[s * md.r + i]);
        break;
      case 4:  // instance_weight [1, r]: sum_b da[b] e[b, i]
        for (int64_t s = 0; s < B; ++s)
          acc += static_cast<double>(in<T>(g.da)[s * g.M + m]) *
                 static_cast<double>(in<T>(g.hidden)[s * g.rsum + md.hidden_offset + i]);
        break;
      case 5:  // instance_bias
        for (int64_t s = 0; s < B; ++s) acc += static_cast<double>(in<T>(g.da)[s * g.M + m]);
        break;
      case 6: {  // dim_weight [D, r]: sum_b dz[b, j] e[b, k]
        const int64_t j = i / md.r, k = i % md.r;
        for (int64_t s = 0; s < B; ++s)
          acc += static_cast<double>(in<T>(md.dz)[s * md.D + j]) *
                 static_cast<double>(in<T>(g.hidden)[s * g.rsum + md.hidden_offset + k]);
        break;
      }
      default:  // dim_bias
        for (int64_t s = 0; s < B; ++s) acc += static_cast<double>(in<T>(md.dz)[s * md.D + i]);
        break;
    }
    out<T>(md.grads[slot])[i] = static_cast<T>(acc);
  }
}

template <typename T, int kWarps>
cudaError_t gates_typed(const GateBatch& g, cudaStream_t stream) {
  if (g.B == 0) return cudaSuccess;
  if (g.B > kMaxGridX) return cudaErrorInvalidValue;  // a block per sample: past the grid's x extent
  gates_kernel<T, kWarps><<<static_cast<unsigned>(g.B), kWarps * kWarpSize, 0, stream>>>(g);
  return cudaGetLastError();
}

template <typename T, int kWarps>
cudaError_t gates_backward_typed(const GateBatch& g, cudaStream_t stream) {
  if (g.B > kMaxGridX) return cudaErrorInvalidValue;
  if (g.B > 0) {
    gates_backward_kernel<T, kWarps><<<static_cast<unsigned>(g.B), kWarps * kWarpSize, 0, stream>>>(g);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // With B = 0 this still runs: it writes the zero gradients of an empty batch.
  const int64_t total = g.grad_starts[g.M * kGateSlots];
  if (total == 0) return cudaSuccess;
  // The kernel strides over the grid: a few waves of blocks, within the x extent.
  const int64_t cap = kMaxGridX < 65535 ? kMaxGridX : 65535;
  const int64_t blocks = (total + kParamThreads - 1) / kParamThreads;
  param_grads_kernel<T><<<static_cast<unsigned>(blocks < cap ? blocks : cap), kParamThreads, 0, stream>>>(g);
  return cudaGetLastError();
}

// launch(std::integral_constant<int, W>) for the block size W = warps, one of
// kGateWarpChoices (the host side checked it; anything else is an invalid value).
template <typename Launch>
cudaError_t with_warps(int warps, Launch&& launch) {
  static_assert(sizeof(kGateWarpChoices) / sizeof(int) == 2, "a block size added to kGateWarpChoices needs its case here");
  if (warps == kGateWarpChoices[0]) return launch(std::integral_constant<int, kGateWarpChoices[0]>{});
  if (warps == kGateWarpChoices[1]) return launch(std::integral_constant<int, kGateWarpChoices[1]>{});
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_gates(const GateBatch& batch, bool wide, cudaStream_t stream) {
  return with_warps(batch.warps, [&](auto warps) {
    constexpr int kWarps = decltype(warps)::value;
    return wide ? gates_typed<double, kWarps>(batch, stream) : gates_typed<float, kWarps>(batch, stream);
  });
}

cudaError_t launch_gates_backward(const GateBatch& batch, bool wide, cudaStream_t stream) {
  return with_warps(batch.warps, [&](auto warps) {
    constexpr int kWarps = decltype(warps)::value;
    return wide ? gates_backward_typed<double, kWarps>(batch, stream) : gates_backward_typed<float, kWarps>(batch, stream);
  });
}

}  // namespace cuda
}  // namespace mmcal
