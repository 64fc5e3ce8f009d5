// SPEC.md step 7 (the modulation Y = X * g, rounded once) and the
// backward's input gradient dX = dY * g + V * ds / count: the CPU maps, one
// function for both (src = X or dY; the ds term only for the gradient). The
// ds term arrives already divided by the count.
// Reached through the kernel table (build_table.h).
#pragma once

#include <algorithm>
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

// One contiguous row of a map: n elements of src (X or dY) and out. The gate
// and ds are per element (kPerLane: a channels-last row, one gate a channel)
// or one value for the whole row (an NCHW row, one channel).
// The terms a map computes are template flags, not pointer tests: GCC turned
// `if (ds) v += ds[j]` in a row's scalar tail into an AVX-512 masked load from
// the null pointer, whose masked-off lanes fault and are suppressed by a
// microcode assist on every row (AMD EPYC: modulate of MOSEI's 74-wide audio
// 4-6x slower than torch's own broadcast multiply). No load is emitted for a
// term a variant lacks. A row's last partial block is one masked load and
// store (at::vec's loadu/store with a count), not element by element: the
// 10-element tail of a 74-wide row cost as much as its 4 full vectors. Half
// types too: one 16-bit load of up to kWidth elements, converted to floats.
// Inlined into each caller's loop over rows, where the two row bodies stood before they were one.
template <typename T, bool kSrc, bool kDs, bool kPerLane>
inline __attribute__((always_inline)) void map_row(const MapArgs& a, const T* src, T* out, int64_t n, const typename Block<T>::Acc* gate,
             const typename Block<T>::Acc* ds) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const V gate_row(!kPerLane && kSrc ? gate[0] : Acc(0)), ds_row(!kPerLane && kDs ? ds[0] : Acc(0));
  // The term's value at element j, one scalar, a whole vector, or the `count` lanes of a partial one.
  const auto one_of = [](const Acc* t, int64_t j) { return kPerLane ? t[j] : t[0]; };
  const auto vector_of = [](const Acc* t, const V& row, int64_t j) { return kPerLane ? V::loadu(t + j) : row; };
  // (A half block's second vector may hold none of them: then nothing is read past the row.)
  const auto part_of = [](const Acc* t, const V& row, int64_t j, int64_t count) {
    return kPerLane ? (count > 0 ? V::loadu(t + j, count) : V(Acc(0))) : row;
  };
  const auto one = [&](int64_t j) {
    Acc v = Acc(0);
    if constexpr (kSrc) v = static_cast<Acc>(src[j]) * one_of(gate, j);
    if constexpr (kDs) v += one_of(ds, j);
    out[j] = static_cast<T>(v);
  };
  const RowSpan span = span_of(a, out, n);
  for (int64_t j = 0; j < span.head; ++j) one(j);
  for (int64_t j = span.head; j < span.full; j += W) {
    V v[B::kVecs];
    if constexpr (kSrc) {
      B::load(src + j, v);
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * vector_of(gate, gate_row, j + k * V::size());
    } else {
      for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));
    }
    if constexpr (kDs)
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + vector_of(ds, ds_row, j + k * V::size());
    store_block(a, out + j, v);
  }
  // The rest in blocks, the last one partial (more than one block when
  // streaming: the rest is then what follows the last whole line).
  for (int64_t j = span.full; j < n; j += W) {
    const int64_t count = std::min<int64_t>(W, n - j);
    V v[B::kVecs];
    if constexpr (kSrc) {
      B::load_part(src + j, count, v);
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * part_of(gate, gate_row, j + k * V::size(), lanes_of<V>(count, k));
    } else {
      for (int k = 0; k < B::kVecs; ++k) v[k] = V(Acc(0));
    }
    if constexpr (kDs)
      for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] + part_of(ds, ds_row, j + k * V::size(), lanes_of<V>(count, k));
    B::store_part(out + j, count, v);
  }
}

template <typename T, bool kSrc, bool kDs>
void map_channels_last_rows(const MapArgs& a, int64_t b, int64_t p0, int64_t p1) {
  using Acc = typename Block<T>::Acc;
  const int64_t D = a.vout.D;
  const Acc* gate = kSrc ? static_cast<const Acc*>(a.gate) + b * D : nullptr;
  const Acc* ds = kDs ? static_cast<const Acc*>(a.ds) + b * D : nullptr;
  for (int64_t p = p0; p < p1; ++p) {
    const T* src = kSrc ? static_cast<const T*>(a.src) + a.vsrc.offset(b, p, 0) : nullptr;
    map_row<T, kSrc, kDs, true>(a, src, static_cast<T*>(a.out) + a.vout.offset(b, p, 0), D, gate, ds);
  }
}

template <typename T, bool kSrc, bool kDs>
void map_channels_first_row(const MapArgs& a, int64_t b, int64_t d) {
  using Acc = typename Block<T>::Acc;
  const int64_t D = a.vout.D;
  const T* src = kSrc ? static_cast<const T*>(a.src) + a.vsrc.offset(b, 0, d) : nullptr;
  const Acc* gate = kSrc ? static_cast<const Acc*>(a.gate) + b * D + d : nullptr;
  const Acc* ds = kDs ? static_cast<const Acc*>(a.ds) + b * D + d : nullptr;
  map_row<T, kSrc, kDs, false>(a, src, static_cast<T*>(a.out) + a.vout.offset(b, 0, d), a.vout.P, gate, ds);
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

// Where a run of sample b's channels [d0, d1) starts: its n elements of src
// and out, and the sample's gates and ds terms (indexed by channel).
template <typename T, bool kSrc, bool kDs>
struct ChannelRun {
  using Acc = typename Block<T>::Acc;
  const T* src;
  const Acc* gate;
  const Acc* ds;
  T* out;
  int64_t n;
  ChannelRun(const MapArgs& a, int64_t b, int64_t d0, int64_t d1)
      : src(kSrc ? static_cast<const T*>(a.src) + a.vsrc.offset(b, 0, d0) : nullptr),
        gate(kSrc ? static_cast<const Acc*>(a.gate) + b * a.vout.D : nullptr),
        ds(kDs ? static_cast<const Acc*>(a.ds) + b * a.vout.D : nullptr),
        out(static_cast<T*>(a.out) + a.vout.offset(b, 0, d0)),
        n((d1 - d0) * a.vout.P) {}
};

template <typename T, bool kSrc, bool kDs>
void map_channels_first_run(const MapArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using Acc = typename Block<T>::Acc;
  using V = Vectorized<Acc>;
  static_assert(Block<T>::kVecs == 1, "one vector a block: float and double");
  constexpr int64_t lanes = V::size();
  const ChannelRun<T, kSrc, kDs> run(a, b, d0, d1);
  const int64_t P = a.vout.P, n = run.n;
  const T* src = run.src;
  T* out = run.out;
  const Acc* masks = first_lanes<Acc>();
  const auto value = [&](int64_t i, const V& g, const V& add) {
    V v(Acc(0));
    if constexpr (kSrc) v = V::loadu(src + i) * g;
    if constexpr (kDs) v = v + add;
    return v;
  };
  const auto gate_of = [&](int64_t d) { return kSrc ? run.gate[d] : Acc(0); };
  const auto ds_of = [&](int64_t d) { return kDs ? run.ds[d] : Acc(0); };
  int64_t i = 0;  // the next vector's first element, counted from the run's start
  for (int64_t d = d0; d < d1; ++d) {
    const int64_t row_end = (d - d0 + 1) * P;
    const V g(gate_of(d)), add(ds_of(d));
    for (; i + lanes <= row_end; i += lanes) value(i, g, add).store(out + i);
    if (i < row_end && i + lanes <= n) {  // crosses into channel d + 1: its first row_end - i lanes are d's
      const V first = V::loadu(masks + lanes - (row_end - i));
      const V g1 = V::blendv(V(gate_of(d + 1)), g, first);
      const V add1 = V::blendv(V(ds_of(d + 1)), add, first);
      value(i, g1, add1).store(out + i);
      i += lanes;
    }
  }
  // The run's last partial vector: fewer than `lanes` elements, all of the last channel (P >= lanes).
  if (i < n) {
    V v(Acc(0));
    if constexpr (kSrc) v = V::loadu(src + i, n - i) * V(gate_of(d1 - 1));
    if constexpr (kDs) v = v + V(ds_of(d1 - 1));
    v.store(out + i, n - i);
  }
}

// The same runs for half types, whose block is two float vectors: each vector
// takes the gate (and ds) of the channels its own lanes fall in, tracked from
// vector to vector without a division. Row by row, bf16 ResNet layer-4 maps
// (49 or 54 positions a channel: one whole block and a masked partial one a
// row) ran 1.2-1.3x slower than torch.compile's broadcast multiply (AMD EPYC,
// AVX-512, 2 threads, CREMA-D's maps).
template <typename T, bool kSrc, bool kDs>
void map_channels_first_run_half(const MapArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using B = Block<T>;
  using V = Vectorized<float>;
  static_assert(B::kVecs == 2, "two float vectors a block: the half types");
  constexpr int64_t lanes = V::size(), W = B::kWidth;
  const ChannelRun<T, kSrc, kDs> run(a, b, d0, d1);
  const int64_t P = a.vout.P, n = run.n;
  const float *gate = run.gate, *ds = run.ds;
  const float* masks = first_lanes<float>();
  int64_t d = d0, at = 0;  // the channel of the next vector's first lane, and that lane's position in it
  // The next vector's gate and ds terms, then step past its lanes. A vector
  // crosses at most one boundary (P >= lanes). A partial block's vector that
  // starts past the run's last element holds no lanes and reads nothing: the
  // gate after the run's last channel may lie past the gates' end (found by
  // tests/sanitizers.sh).
  const auto terms = [&](V& g, V& add) {
    if (d == d1) {
      g = add = V(0.f);
      return;
    }
    const int64_t left = P - at;  // lanes still in channel d
    g = V(kSrc ? gate[d] : 0.f);
    add = V(kDs ? ds[d] : 0.f);
    if (left < lanes && d + 1 < d1) {
      const V first = V::loadu(masks + lanes - left);
      if constexpr (kSrc) g = V::blendv(V(gate[d + 1]), g, first);
      if constexpr (kDs) add = V::blendv(V(ds[d + 1]), add, first);
    }
    at += lanes;
    if (at >= P) at -= P, ++d;
  };
  const auto apply = [&](V* v) {
    for (int k = 0; k < B::kVecs; ++k) {
      V g, add;
      terms(g, add);
      if constexpr (kSrc) v[k] = v[k] * g;
      else v[k] = V(0.f);
      if constexpr (kDs) v[k] = v[k] + add;
    }
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    V v[B::kVecs];
    if constexpr (kSrc) B::load(run.src + i, v);
    apply(v);
    B::store(run.out + i, v);
  }
  if (i < n) {  // the run's last partial block
    V v[B::kVecs];
    if constexpr (kSrc) B::load_part(run.src + i, n - i, v);
    apply(v);
    B::store_part(run.out + i, n - i, v);
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

template <typename T, typename Acc, bool kSrc, bool kDs>
void map_rows(const MapArgs& a, RowKind kind, int64_t begin, int64_t end) {
  const int64_t P = a.vout.P, D = a.vout.D;
  if (kind == kChannelsFirst) {  // rows are (b, d)
    if constexpr (kVectorised<T, Acc>) {
      if (channels_back_to_back(a, Vectorized<Acc>::size())) {
        for (int64_t r = begin; r < end;) {  // one call per run of one sample's channels
          const int64_t b = r / D, run_end = std::min(end, (b + 1) * D);
          if constexpr (Block<T>::kVecs == 1)
            map_channels_first_run<T, kSrc, kDs>(a, b, r - b * D, run_end - b * D);
          else
            map_channels_first_run_half<T, kSrc, kDs>(a, b, r - b * D, run_end - b * D);
          r = run_end;
        }
        return;
      }
    }
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / D, d = r % D;
      if constexpr (kVectorised<T, Acc>) {
        if (a.mask == nullptr) {
          map_channels_first_row<T, kSrc, kDs>(a, b, d);
          continue;
        }
      }
      for (int64_t p = 0; p < P; ++p) map_element<T, Acc>(a, b, p, d, valid(a.mask, a.mask_sB, a.mask_sP, b, p));
    }
    return;
  }
  if constexpr (kVectorised<T, Acc>) {
    if (kind == kChannelsLast) {
      // Runs of one sample's rows: a row's index arithmetic (a division) and
      // call cost as much as its work at MOSEI's 35 or 74 channels.
      for (int64_t r = begin; r < end;) {
        const int64_t b = r / P, p0 = r % P, p1 = std::min(P, p0 + (end - r));
        if (kDs && a.mask != nullptr) {
          for (int64_t p = p0; p < p1; ++p) {
            if (valid(a.mask, a.mask_sB, a.mask_sP, b, p))
              map_channels_last_rows<T, kSrc, kDs>(a, b, p, p + 1);
            else
              map_channels_last_rows<T, kSrc, false>(a, b, p, p + 1);  // a padded row takes no ds term
          }
        } else {
          map_channels_last_rows<T, kSrc, kDs>(a, b, p0, p1);
        }
        r += p1 - p0;
      }
      return;
    }
  }
  for (int64_t r = begin; r < end; ++r) {  // rows are (b, p)
    const int64_t b = r / P, p = r % P;
    const bool ok = valid(a.mask, a.mask_sB, a.mask_sP, b, p);
    for (int64_t d = 0; d < D; ++d) map_element<T, Acc>(a, b, p, d, ok);
  }
}

template <typename T, typename Acc>
void map(const MapArgs& a, RowKind kind, int64_t begin, int64_t end) {
  if (a.src != nullptr)
    a.ds != nullptr ? map_rows<T, Acc, true, true>(a, kind, begin, end) : map_rows<T, Acc, true, false>(a, kind, begin, end);
  else
    a.ds != nullptr ? map_rows<T, Acc, false, true>(a, kind, begin, end) : map_rows<T, Acc, false, false>(a, kind, begin, end);
  if constexpr (kCanStream) {
    if (a.stream) stream_fence();
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
