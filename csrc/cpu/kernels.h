// The CPU passes over X, written once and compiled once per capability
// (kernels_default.cpp, kernels_avx2.cpp, kernels_avx512.cpp). Everything here
// lives in a namespace named after the capability, like ATen's own vector code.
//
// Fast paths vectorise with at::vec::Vectorized along the contiguous axis:
// channels (sD == 1: sequences, channels_last maps) or positions (sP == 1:
// NCHW maps). Other strides (transposed views, expanded gradients with stride
// 0) take a scalar path that is correct for any strides. Half types load and
// accumulate in float; all offsets are int64.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/scalar_math.h"
#include "kernel_table.h"

#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#endif
#define MMCAL_STRINGIZE_(x) #x
#define MMCAL_STRINGIZE(x) MMCAL_STRINGIZE_(x)

namespace mmcal {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// A block of kWidth elements of T as kVecs vectors of its accumulation type.
template <typename T>
struct Block {
  using Acc = T;  // float and double
  static constexpr int kVecs = 1;
  static constexpr int64_t kWidth = Vectorized<T>::size();
  static void load(const T* p, Vectorized<Acc>* v) { v[0] = Vectorized<Acc>::loadu(p); }
  static void store(T* p, const Vectorized<Acc>* v) { v[0].store(p); }
};

template <typename H>
struct HalfBlock {
  using Acc = float;
  static constexpr int kVecs = 2;
  static constexpr int64_t kWidth = 2 * Vectorized<float>::size();
  static void load(const H* p, Vectorized<float>* v) { at::vec::load_to_float<H>(p, v[0], v[1]); }
  static void store(H* p, const Vectorized<float>* v) { at::vec::convert_from_float<H>(v[0], v[1]).store(p); }
};
template <>
struct Block<c10::Half> : HalfBlock<c10::Half> {};
template <>
struct Block<c10::BFloat16> : HalfBlock<c10::BFloat16> {};

// Vectorised only where the block's accumulation type is the compute dtype.
template <typename T, typename Acc>
constexpr bool kVectorised = std::is_same_v<typename Block<T>::Acc, Acc>;

constexpr int64_t kBlockRows = 256;  // terms per partial sum in the reductions

inline bool valid(const bool* mask, int64_t msb, int64_t msp, int64_t b, int64_t p) {
  return mask == nullptr || mask[b * msb + p * msp];
}

template <typename Acc>
Acc divisor(const ReduceArgs& a, int64_t b) {
  if (!a.divide) return Acc(1);
  if (a.mask == nullptr) return mean_divisor<Acc>(a.vx.P);
  int64_t count = 0;
  for (int64_t p = 0; p < a.vx.P; ++p) count += a.mask[b * a.mask_sB + p * a.mask_sP] ? 1 : 0;
  return mean_divisor<Acc>(count);
}

// ---- reductions: summary (divide) and gate gradient (dy) -------------------

template <typename T, typename Acc>
void reduce_generic(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  Acc* out = static_cast<Acc*>(a.out);
  const Acc div = divisor<Acc>(a, b);
  for (int64_t d = d0; d < d1; ++d) {
    // Blocked like the fast paths, one level deeper: they also spread the
    // terms over vector lanes, this scalar loop has none. The rounding error
    // grows with 2 kBlockRows + P / kBlockRows^2 terms rather than P.
    Acc acc = 0, mid = 0, part = 0;
    int64_t in_part = 0, in_mid = 0;
    for (int64_t p = 0; p < a.vx.P; ++p) {
      if (!valid(a.mask, a.mask_sB, a.mask_sP, b, p)) continue;  // a selection: padded values are never read
      if (in_part == kBlockRows) {
        mid += part, part = 0, in_part = 0;
        if (++in_mid == kBlockRows) acc += mid, mid = 0, in_mid = 0;
      }
      Acc v = static_cast<Acc>(x[a.vx.offset(b, p, d)]);
      if (dy) v *= static_cast<Acc>(dy[a.vdy.offset(b, p, d)]);
      part += v, ++in_part;
    }
    out[b * a.vx.D + d] = (acc + (mid + part)) / div;
  }
}

// Channels contiguous: stream whole rows of x (and dy) into a per-task
// accumulator row, so memory is read in order.
template <typename T>
void reduce_channels_last(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const int64_t n = d1 - d0, full = n - n % W;
  // Two-level sum: rows add into `part`, which joins `acc` every kBlockRows
  // rows, so the rounding error grows with kBlockRows + P / kBlockRows terms
  // rather than P (1e-4 relative at P = 1M in float32 without it).
  std::vector<Acc> acc(static_cast<size_t>(n), Acc(0)), part(static_cast<size_t>(n), Acc(0));
  int64_t rows_in_part = 0;
  const auto flush = [&] {
    for (int64_t j = 0; j < n; ++j) acc[j] += part[j], part[j] = Acc(0);
    rows_in_part = 0;
  };
  for (int64_t p = 0; p < a.vx.P; ++p) {
    if (!valid(a.mask, a.mask_sB, a.mask_sP, b, p)) continue;
    if (rows_in_part++ == kBlockRows) flush(), rows_in_part = 1;
    const T* xr = x + a.vx.offset(b, p, d0);
    const T* gr = dy ? dy + a.vdy.offset(b, p, d0) : nullptr;
    for (int64_t j = 0; j < full; j += W) {
      V v[B::kVecs], g[B::kVecs];
      B::load(xr + j, v);
      if (gr) {
        B::load(gr + j, g);
        for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * g[k];
      }
      for (int k = 0; k < B::kVecs; ++k) {
        Acc* slot = part.data() + j + k * V::size();
        (V::loadu(slot) + v[k]).store(slot);
      }
    }
    for (int64_t j = full; j < n; ++j) {
      Acc v = static_cast<Acc>(xr[j]);
      if (gr) v *= static_cast<Acc>(gr[j]);
      part[j] += v;
    }
  }
  flush();
  const Acc div = divisor<Acc>(a, b);
  Acc* out = static_cast<Acc*>(a.out) + b * a.vx.D + d0;
  for (int64_t j = 0; j < n; ++j) out[j] = acc[j] / div;
}

// Positions contiguous (NCHW maps): one contiguous sum per channel.
template <typename T>
void reduce_channels_first(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const int64_t P = a.vx.P, full = P - P % W;
  const Acc div = divisor<Acc>(a, b);
  for (int64_t d = d0; d < d1; ++d) {
    const T* xr = x + a.vx.offset(b, 0, d);
    const T* gr = dy ? dy + a.vdy.offset(b, 0, d) : nullptr;
    V acc[B::kVecs];
    for (int k = 0; k < B::kVecs; ++k) acc[k] = V(Acc(0));
    for (int64_t p0 = 0; p0 < full; p0 += kBlockRows * W) {  // two-level sum, as above
      V part[B::kVecs];
      for (int k = 0; k < B::kVecs; ++k) part[k] = V(Acc(0));
      for (int64_t p = p0; p < std::min(full, p0 + kBlockRows * W); p += W) {
        V v[B::kVecs], g[B::kVecs];
        B::load(xr + p, v);
        if (gr) B::load(gr + p, g);
        for (int k = 0; k < B::kVecs; ++k) part[k] = part[k] + (gr ? v[k] * g[k] : v[k]);
      }
      for (int k = 0; k < B::kVecs; ++k) acc[k] = acc[k] + part[k];
    }
    Acc lanes[B::kWidth];
    for (int k = 0; k < B::kVecs; ++k) acc[k].store(lanes + k * V::size());
    Acc total = 0;
    for (int64_t i = 0; i < W; ++i) total += lanes[i];
    for (int64_t p = full; p < P; ++p) total += static_cast<Acc>(xr[p]) * (gr ? static_cast<Acc>(gr[p]) : Acc(1));
    static_cast<Acc*>(a.out)[b * a.vx.D + d] = total / div;
  }
}

template <typename T, typename Acc>
void reduce(const ReduceArgs& a, RowKind kind, int64_t blocks, int64_t begin, int64_t end) {
  const int64_t width = (a.vx.D + blocks - 1) / blocks;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = t / blocks, d0 = (t % blocks) * width, d1 = std::min(a.vx.D, d0 + width);
    if (d0 >= d1) continue;
    if constexpr (kVectorised<T, Acc>) {
      if (kind == kChannelsLast) {
        reduce_channels_last<T>(a, b, d0, d1);
        continue;
      }
      if (kind == kChannelsFirst && a.mask == nullptr) {
        reduce_channels_first<T>(a, b, d0, d1);
        continue;
      }
    }
    reduce_generic<T, Acc>(a, b, d0, d1);
  }
}

// ---- maps: modulation (src = X) and input gradient (src = dY, plus ds) -----

template <typename T>
void map_channels_last_row(const MapArgs& a, int64_t b, int64_t p) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const int64_t D = a.vout.D, full = D - D % W;
  const T* src = a.src ? static_cast<const T*>(a.src) + a.vsrc.offset(b, p, 0) : nullptr;
  const Acc* gate = a.gate ? static_cast<const Acc*>(a.gate) + b * D : nullptr;
  const bool ok = valid(a.mask, a.mask_sB, a.mask_sP, b, p);
  const Acc* ds = a.ds && ok ? static_cast<const Acc*>(a.ds) + b * D : nullptr;  // padded: no ds term
  T* out = static_cast<T*>(a.out) + a.vout.offset(b, p, 0);
  for (int64_t j = 0; j < full; j += W) {
    V v[B::kVecs];
    if (src) {
      B::load(src + j, v);
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * V::loadu(gate + j + k * V::size());
    } else {
      for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));
    }
    if (ds)
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + V::loadu(ds + j + k * V::size());
    B::store(out + j, v);
  }
  for (int64_t j = full; j < D; ++j) {
    Acc v = src ? static_cast<Acc>(src[j]) * gate[j] : Acc(0);
    if (ds) v += ds[j];
    out[j] = static_cast<T>(v);
  }
}

template <typename T>
void map_channels_first_row(const MapArgs& a, int64_t b, int64_t d) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const int64_t P = a.vout.P, D = a.vout.D, full = P - P % W;
  const T* src = a.src ? static_cast<const T*>(a.src) + a.vsrc.offset(b, 0, d) : nullptr;
  const Acc g = a.gate ? static_cast<const Acc*>(a.gate)[b * D + d] : Acc(0);
  const bool has_ds = a.ds != nullptr;
  const Acc ds = has_ds ? static_cast<const Acc*>(a.ds)[b * D + d] : Acc(0);
  T* out = static_cast<T*>(a.out) + a.vout.offset(b, 0, d);
  const V gv(g), dsv(ds);
  for (int64_t p = 0; p < full; p += W) {
    V v[B::kVecs];
    if (src) {
      B::load(src + p, v);
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * gv;
    } else {
      for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));
    }
    if (has_ds)
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + dsv;
    B::store(out + p, v);
  }
  for (int64_t p = full; p < P; ++p) {
    Acc v = src ? static_cast<Acc>(src[p]) * g : Acc(0);
    if (has_ds) v += ds;
    out[p] = static_cast<T>(v);
  }
}

// One output element; `d`-th channel of row (b, p). Any strides.
template <typename T, typename Acc>
inline void map_element(const MapArgs& a, int64_t b, int64_t p, int64_t d, bool ok) {
  const int64_t D = a.vout.D;
  const T* src = static_cast<const T*>(a.src);
  const Acc* gate = static_cast<const Acc*>(a.gate);
  const Acc* ds = static_cast<const Acc*>(a.ds);
  const Acc s = src ? static_cast<Acc>(src[a.vsrc.offset(b, p, d)]) : Acc(0);
  const Acc g = src ? gate[b * D + d] : Acc(0);
  const Acc v = ds ? input_grad_value<Acc>(src != nullptr, s, g, true, ok, ds[b * D + d]) : modulate_value<Acc>(s, g);
  static_cast<T*>(a.out)[a.vout.offset(b, p, d)] = static_cast<T>(v);
}

template <typename T, typename Acc>
void map(const MapArgs& a, RowKind kind, int64_t begin, int64_t end) {
  const int64_t P = a.vout.P, D = a.vout.D;
  if (kind == kChannelsFirst) {  // rows are (b, d)
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / D, d = r % D;
      if constexpr (kVectorised<T, Acc>) {
        if (a.mask == nullptr) {
          map_channels_first_row<T>(a, b, d);
          continue;
        }
      }
      for (int64_t p = 0; p < P; ++p) map_element<T, Acc>(a, b, p, d, valid(a.mask, a.mask_sB, a.mask_sP, b, p));
    }
    return;
  }
  for (int64_t r = begin; r < end; ++r) {  // rows are (b, p)
    const int64_t b = r / P, p = r % P;
    if constexpr (kVectorised<T, Acc>) {
      if (kind == kChannelsLast) {
        map_channels_last_row<T>(a, b, p);
        continue;
      }
    }
    const bool ok = valid(a.mask, a.mask_sB, a.mask_sP, b, p);
    for (int64_t d = 0; d < D; ++d) map_element<T, Acc>(a, b, p, d, ok);
  }
}

// The table of this capability: every (T, Acc) pair of kernel_table.h's Combo.
inline const KernelTable* kernel_table() {
  using c10::BFloat16;
  using c10::Half;
  static const KernelTable table = {
      MMCAL_STRINGIZE(CPU_CAPABILITY),
      {reduce<float, float>, reduce<double, double>, reduce<Half, float>, reduce<BFloat16, float>,
       reduce<float, double>, reduce<Half, double>, reduce<BFloat16, double>},
      {map<float, float>, map<double, double>, map<Half, float>, map<BFloat16, float>, map<float, double>,
       map<Half, double>, map<BFloat16, double>},
  };
  return &table;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
