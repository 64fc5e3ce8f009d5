// SPEC.md step 7 (the modulation Y = X * g, rounded once) and the
// backward's input gradient dX = dY * g + V * ds / count: the CPU maps, one
// function for both (src = X or dY; the ds term only for the gradient). The
// ds term arrives already divided by the count.
// Reached through the kernel table (build_table.h).
#pragma once

#include <cstring>

#include "stream_store.h"
#include "vec_block.h"

namespace mmcal {
namespace cpu {
namespace CPU_CAPABILITY {

// Streams (stream_store.h) where the host asked for it and the table can.
template <typename T>
inline RowSpan span_of(const MapArgs& a, const T* out, int64_t n) {
  static_assert(kLineBytes % (Block<T>::kWidth * sizeof(T)) == 0, "whole lines are whole blocks");
  return row_span(out, n, Block<T>::kWidth, kCanStream && a.stream);
}

template <typename T>
inline void store_block(const MapArgs& a, T* out, const Vectorized<typename Block<T>::Acc>* v) {
  if constexpr (kCanStream) {
    if (a.stream) return stream_vector(out, Block<T>::pack(v));
  }
  Block<T>::store(out, v);
}

template <typename T>
void map_channels_last_row(const MapArgs& a, int64_t b, int64_t p) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const int64_t D = a.vout.D;
  const T* src = a.src ? static_cast<const T*>(a.src) + a.vsrc.offset(b, p, 0) : nullptr;
  const Acc* gate = a.gate ? static_cast<const Acc*>(a.gate) + b * D : nullptr;
  const bool ok = valid(a.mask, a.mask_sB, a.mask_sP, b, p);
  const Acc* ds = a.ds && ok ? static_cast<const Acc*>(a.ds) + b * D : nullptr;  // padded: no ds term
  T* out = static_cast<T*>(a.out) + a.vout.offset(b, p, 0);
  const auto one = [&](int64_t j) {
    Acc v = src ? static_cast<Acc>(src[j]) * gate[j] : Acc(0);
    if (ds) v += ds[j];
    out[j] = static_cast<T>(v);
  };
  const RowSpan span = span_of(a, out, D);
  for (int64_t j = 0; j < span.head; ++j) one(j);
  for (int64_t j = span.head; j < span.full; j += W) {
    V v[B::kVecs];
    if (src) {
      B::load(src + j, v);
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * V::loadu(gate + j + k * V::size());
    } else {
      for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));
    }
    if (ds)
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + V::loadu(ds + j + k * V::size());
    store_block(a, out + j, v);
  }
  for (int64_t j = span.full; j < D; ++j) one(j);
}

template <typename T>
void map_channels_first_row(const MapArgs& a, int64_t b, int64_t d) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const int64_t P = a.vout.P, D = a.vout.D;
  const T* src = a.src ? static_cast<const T*>(a.src) + a.vsrc.offset(b, 0, d) : nullptr;
  const Acc g = a.gate ? static_cast<const Acc*>(a.gate)[b * D + d] : Acc(0);
  const bool has_ds = a.ds != nullptr;
  const Acc ds = has_ds ? static_cast<const Acc*>(a.ds)[b * D + d] : Acc(0);
  T* out = static_cast<T*>(a.out) + a.vout.offset(b, 0, d);
  const auto one = [&](int64_t p) {
    Acc v = src ? static_cast<Acc>(src[p]) * g : Acc(0);
    if (has_ds) v += ds;
    out[p] = static_cast<T>(v);
  };
  const V gv(g), dsv(ds);
  const RowSpan span = span_of(a, out, P);
  for (int64_t p = 0; p < span.head; ++p) one(p);
  for (int64_t p = span.head; p < span.full; p += W) {
    V v[B::kVecs];
    if (src) {
      B::load(src + p, v);
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * gv;
    } else {
      for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));
    }
    if (has_ds)
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + dsv;
    store_block(a, out + p, v);
  }
  for (int64_t p = span.full; p < P; ++p) one(p);
}

// NCHW maps whose channels lie back to back (each channel's positions right
// after the previous channel's, in the source and in the output): a run of
// one sample's channels is one stream of vectors, and a vector that crosses
// from one channel into the next takes the gate (and ds) of each for its own
// lanes. Row by row, ResNet layer-4 maps (49 or 54 positions a channel) end
// every row in 1-6 scalar elements and pay the row's setup, and ran 8-19%
// slower than channels_last maps of the same bytes (AMD EPYC). Needs at least one
// vector's lanes a channel, so that a vector crosses at most one boundary.
inline bool channels_back_to_back(const MapArgs& a, int64_t lanes) {
  const View3 &o = a.vout, &s = a.vsrc;
  return a.mask == nullptr && !a.stream && o.P >= lanes && o.sP == 1 && o.sD == o.P &&
         (a.src == nullptr || (s.sP == 1 && s.sD == s.P));
}

// All bits set in the first `lanes` entries, clear in the next `lanes`:
// loadu(first_lanes<Acc>() + lanes - k) is a blendv mask of lanes [0, k) (all
// bits, so every table's blendv reads it alike: the AVX sign bit, the
// portable table's low bit, AVX-512's compare with all ones). A mask from a
// table, not Vectorized::set(a, b, k), whose switch on k mispredicted on
// every crossing.
template <typename Acc>
const Acc* first_lanes() {
  constexpr int64_t lanes = Vectorized<Acc>::size();
  struct Table {
    alignas(64) Acc bits[2 * lanes];
    Table() {
      std::memset(bits, 0xFF, lanes * sizeof(Acc));
      std::memset(bits + lanes, 0, lanes * sizeof(Acc));
    }
  };
  static const Table table;
  return table.bits;
}

template <typename T>
void map_channels_first_run(const MapArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using Acc = typename Block<T>::Acc;
  using V = Vectorized<Acc>;
  static_assert(Block<T>::kVecs == 1, "one vector a block: float and double");
  constexpr int64_t lanes = V::size();
  const int64_t P = a.vout.P, D = a.vout.D, n = (d1 - d0) * P;
  const T* src = a.src ? static_cast<const T*>(a.src) + a.vsrc.offset(b, 0, d0) : nullptr;
  const Acc* gate = a.gate ? static_cast<const Acc*>(a.gate) + b * D : nullptr;
  const Acc* ds = a.ds ? static_cast<const Acc*>(a.ds) + b * D : nullptr;
  T* out = static_cast<T*>(a.out) + a.vout.offset(b, 0, d0);
  const Acc* masks = first_lanes<Acc>();
  const auto value = [&](V v, const V& g, const V& add) {
    v = src ? v * g : V(Acc(0));
    return ds ? v + add : v;
  };
  int64_t i = 0;  // the next vector's first element, counted from the run's start
  for (int64_t d = d0; d < d1; ++d) {
    const int64_t row_end = (d - d0 + 1) * P;
    const V g(gate ? gate[d] : Acc(0)), add(ds ? ds[d] : Acc(0));
    for (; i + lanes <= row_end; i += lanes) value(src ? V::loadu(src + i) : V(), g, add).store(out + i);
    if (i < row_end && i + lanes <= n) {  // crosses into channel d + 1: its first row_end - i lanes are d's
      const V first = V::loadu(masks + lanes - (row_end - i));
      const V g1 = V::blendv(V(gate ? gate[d + 1] : Acc(0)), g, first);
      const V add1 = V::blendv(V(ds ? ds[d + 1] : Acc(0)), add, first);
      value(src ? V::loadu(src + i) : V(), g1, add1).store(out + i);
      i += lanes;
    }
  }
  // The run's last partial vector: fewer than `lanes` elements, all of the last channel (P >= lanes).
  const int64_t last = d1 - 1;
  for (; i < n; ++i) {
    Acc v = src ? static_cast<Acc>(src[i]) * (gate ? gate[last] : Acc(0)) : Acc(0);
    if (ds) v += ds[last];
    out[i] = static_cast<T>(v);
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
void map_rows(const MapArgs& a, RowKind kind, int64_t begin, int64_t end) {
  const int64_t P = a.vout.P, D = a.vout.D;
  if (kind == kChannelsFirst) {  // rows are (b, d)
    if constexpr (kVectorised<T, Acc> && Block<T>::kVecs == 1) {  // float, double: halves go row by row
      if (channels_back_to_back(a, Vectorized<Acc>::size())) {
        for (int64_t r = begin; r < end;) {  // one call per run of one sample's channels
          const int64_t b = r / D, run_end = std::min(end, (b + 1) * D);
          map_channels_first_run<T>(a, b, r - b * D, run_end - b * D);
          r = run_end;
        }
        return;
      }
    }
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

template <typename T, typename Acc>
void map(const MapArgs& a, RowKind kind, int64_t begin, int64_t end) {
  map_rows<T, Acc>(a, kind, begin, end);
  if constexpr (kCanStream) {
    if (a.stream) stream_fence();
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
