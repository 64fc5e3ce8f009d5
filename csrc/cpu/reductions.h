// SPEC.md step 1 (the summaries: masked means over positions) and the
// backward's gate gradient dg = sum_p dY * X: the CPU reductions over
// positions, one function for both (the summary divides by the count, the
// gradient reads dY). Reached through the kernel table (build_table.h).
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "vec_block.h"

namespace mmcal {
namespace cpu {
namespace CPU_CAPABILITY {

constexpr int64_t kBlockRows = 256;  // terms per partial sum

// The row order and the three-level sum of the reductions over positions:
// row(p) adds position p of sample b into `part`, for the valid positions in
// ascending order (padded ones are selected away, never read); part_to_mid()
// adds `part` into `mid` and clears it after every kBlockRows rows, and
// mid_to_acc() adds `mid` into `acc` after every kBlockRows parts; the caller
// returns acc + (mid + part). The rounding error then grows with about
// 2 kBlockRows + P / kBlockRows^2 terms rather than P. (With two levels,
// P / kBlockRows: 3.9e-5 relative for the mean of 2^20 equal float32 terms,
// 3.7e-6 with three.) A full part is flushed even when only padded
// positions follow it: that changes no sum. The register sums below take
// the same order, written out.
template <typename Row, typename PartToMid, typename MidToAcc>
inline void for_rows_in_three_levels(const ReduceArgs& a, int64_t b, Row row, PartToMid part_to_mid,
                                     MidToAcc mid_to_acc) {
  int64_t p = 0, parts_in_mid = 0;
  for (;;) {
    for (int64_t rows = 0; p < a.vx.P && rows < kBlockRows; ++p) {
      if (!valid(a.mask, a.mask_sB, a.mask_sP, b, p)) continue;  // a selection: padded values are never read
      row(p);
      ++rows;
    }
    if (p == a.vx.P) return;
    part_to_mid();
    if (++parts_in_mid == kBlockRows) mid_to_acc(), parts_in_mid = 0;
  }
}

template <typename Acc>
Acc divisor(const ReduceArgs& a, int64_t b) {
  if (!a.divide) return Acc(1);
  if (a.mask == nullptr) return mean_divisor<Acc>(a.vx.P);
  int64_t count = 0;
  for (int64_t p = 0; p < a.vx.P; ++p) count += valid(a.mask, a.mask_sB, a.mask_sP, b, p) ? 1 : 0;
  return mean_divisor<Acc>(count);
}

template <typename T, typename Acc>
void reduce_generic(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  Acc* out = static_cast<Acc*>(a.out);
  const Acc div = divisor<Acc>(a, b);
  for (int64_t d = d0; d < d1; ++d) {
    // Three levels like the fast paths: they also spread the terms over
    // vector lanes, this scalar loop has none.
    Acc acc = 0, mid = 0, part = 0;
    for_rows_in_three_levels(
        a, b,
        [&](int64_t p) {
          Acc v = static_cast<Acc>(x[a.vx.offset(b, p, d)]);
          if (dy) v *= static_cast<Acc>(dy[a.vdy.offset(b, p, d)]);
          part += v;
        },
        [&] { mid += part, part = 0; }, [&] { acc += mid, mid = 0; });
    out[b * a.vx.D + d] = (acc + (mid + part)) / div;
  }
}

// The block of terms at x + i: x, or dy * x for the gate gradient (dy not null).
template <typename T>
inline void load_terms(const T* x, const T* dy, int64_t i, Vectorized<typename Block<T>::Acc>* v) {
  using B = Block<T>;
  B::load(x + i, v);
  if (dy) {
    Vectorized<typename B::Acc> g[B::kVecs];
    B::load(dy + i, g);
    for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * g[k];
  }
}

// The first `count` (1 to kWidth) terms at x + i; the block's other lanes are zero.
template <typename T>
inline void load_terms_part(const T* x, const T* dy, int64_t i, int64_t count, Vectorized<typename Block<T>::Acc>* v) {
  using B = Block<T>;
  B::load_part(x + i, count, v);
  if (dy) {
    Vectorized<typename B::Acc> g[B::kVecs];
    B::load_part(dy + i, count, g);
    for (int k = 0; k < B::kVecs; ++k) v[k] = v[k] * g[k];
  }
}

// Rows of a few blocks: reduce_channels_last's three accumulators kept in
// registers across the rows, where its row-sized arrays load and store every
// vector of every row (MOSEI's 35- and 74-wide summaries ran at about 0.6x
// torch's mean, one thread). The same sums in the same order; the last block
// is partial (1 to kWidth elements). A half type's block is two float vectors.
template <typename T, int NB, bool kDy>
void reduce_channels_last_in_registers(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int K = B::kVecs, NV = NB * K;
  constexpr int64_t W = B::kWidth;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const int64_t n = d1 - d0, last = n - (NB - 1) * W;
  // Every loop over k is unrolled by pragma: left to itself GCC kept these
  // arrays on the stack, and each row's adds waited on store-to-load forwards.
  V mid[NV], acc[NV];
#pragma GCC unroll 8
  for (int k = 0; k < NV; ++k) mid[k] = acc[k] = V(Acc(0));
  // for_rows_in_three_levels written out, with `part` local to one part and
  // added into `mid` when the part ends: then the row loop keeps all three
  // in registers (read back from the assembly). With `part` kept across the
  // parts and a flush test in the row loop, GCC gave `part` a home on the
  // stack and stored every vector of it every row; through the helper's
  // lambdas it also loaded it back before every add.
  int64_t p = 0, parts_in_mid = 0;
  for (;;) {
    V part[NV];
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) part[k] = V(Acc(0));
    for (int64_t rows = 0; p < a.vx.P && rows < kBlockRows; ++p) {
      if (!valid(a.mask, a.mask_sB, a.mask_sP, b, p)) continue;
      const T* xr = x + a.vx.offset(b, p, d0);
      const T* gr = kDy ? dy + a.vdy.offset(b, p, d0) : nullptr;
      // One flat loop over the whole blocks' vectors, each added as it is loaded.
#pragma GCC unroll 8
      for (int k = 0; k < NV - K; ++k) {
        V v = B::load_vector(xr, k);
        if constexpr (kDy) v = v * B::load_vector(gr, k);
        part[k] = part[k] + v;
      }
      V v[K];
      load_terms_part(xr, gr, (NB - 1) * W, last, v);
      part[NV - K] = part[NV - K] + v[0];
      if constexpr (K == 2) part[NV - 1] = part[NV - 1] + v[1];
      ++rows;
    }
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) mid[k] = mid[k] + part[k];
    if (p == a.vx.P) break;
    if (++parts_in_mid == kBlockRows) {
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k) acc[k] = acc[k] + mid[k], mid[k] = V(Acc(0));
      parts_in_mid = 0;
    }
  }
  const V div(divisor<Acc>(a, b));
  Acc* out = static_cast<Acc*>(a.out) + b * a.vx.D + d0;
#pragma GCC unroll 8
  for (int k = 0; k < NV; ++k)  // vector k holds elements [k L, k L + L) of the row; a store of 0 lanes writes none
    // (The whole blocks' count is a constant: with every count computed, GCC kept the sums on the stack.)
    ((acc[k] + mid[k]) / div).store(out + k * V::size(), k < NV - K ? V::size() : lanes_of<V>(last, k - (NV - K)));
}

// As many blocks as the registers hold three times over with room to spare:
// 8 vectors of the accumulation type where they are 64 bytes, else 4.
template <typename T>
inline constexpr int kRegisterRowBlocks =
    (sizeof(Vectorized<typename Block<T>::Acc>) >= 64 ? 8 : 4) / Block<T>::kVecs;

template <typename T, bool kDy, int... I>
bool reduce_in_registers(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1, int64_t blocks,
                         std::integer_sequence<int, I...>) {
  return ((blocks == I + 1 ? (reduce_channels_last_in_registers<T, I + 1, kDy>(a, b, d0, d1), true) : false) || ...);
}

// Channels contiguous: stream whole rows of x (and dy) into a per-task
// accumulator row, so memory is read in order.
template <typename T>
void reduce_channels_last(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  const int64_t blocks = (d1 - d0 + W - 1) / W;
  constexpr auto counts = std::make_integer_sequence<int, kRegisterRowBlocks<T>>{};
  if (blocks <= kRegisterRowBlocks<T>)
    return void(a.dy ? reduce_in_registers<T, true>(a, b, d0, d1, blocks, counts)
                     : reduce_in_registers<T, false>(a, b, d0, d1, blocks, counts));
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const int64_t n = d1 - d0, full = n - n % W;
  // The three levels of for_rows_in_three_levels as row-sized arrays,
  // rounded up to whole blocks: a row's last partial block adds into the
  // padding, which is never read out.
  const int64_t padded = (n + W - 1) / W * W;
  std::vector<Acc> acc(static_cast<size_t>(padded), Acc(0)), mid(acc), part(acc);
  const auto part_to_mid = [&] {
    for (int64_t j = 0; j < n; ++j) mid[j] += part[j], part[j] = Acc(0);
  };
  const auto mid_to_acc = [&] {
    for (int64_t j = 0; j < n; ++j) acc[j] += mid[j], mid[j] = Acc(0);
  };
  const auto add_row = [&](int64_t p) {
    const T* xr = x + a.vx.offset(b, p, d0);
    const T* gr = dy ? dy + a.vdy.offset(b, p, d0) : nullptr;
    for (int64_t j = 0; j < full; j += W) {
      V v[B::kVecs];
      load_terms(xr, gr, j, v);
      for (int k = 0; k < B::kVecs; ++k) {
        Acc* slot = part.data() + j + k * V::size();
        (V::loadu(slot) + v[k]).store(slot);
      }
    }
    if (full < n) {  // one partial block: lanes past n load as zero
      V v[B::kVecs];
      load_terms_part(xr, gr, full, n - full, v);
      for (int k = 0; k < B::kVecs; ++k) {
        Acc* slot = part.data() + full + k * V::size();
        (V::loadu(slot) + v[k]).store(slot);
      }
    }
  };
  for_rows_in_three_levels(a, b, add_row, part_to_mid, mid_to_acc);
  const Acc div = divisor<Acc>(a, b);
  Acc* out = static_cast<Acc*>(a.out) + b * a.vx.D + d0;
  for (int64_t j = 0; j < n; ++j) out[j] = (acc[j] + (mid[j] + part[j])) / div;
}

// The lanes of v summed as a tree (log2 of the width deep), not one after
// another: a serial sum of 8 or 16 lanes is a chain of dependent adds that
// costs as much as a short row's loads. For float on AVX2 / AVX-512,
// at::vec::vec_reduce_all's tree of shuffles in registers: the same tree
// through an array on the stack was a chain of store-to-load forwards, and
// left the NCHW summary of ResNet layer-4 maps (49 positions a channel) at
// 0.6x torch's own mean (AMD EPYC, one thread). Other types and the portable
// table have no such tree in at::vec, so they keep the array.
template <typename Acc>
Acc tree_sum(const Vectorized<Acc>& v) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<Acc, float>)
    return at::vec::vec_reduce_all<float>([](const Vectorized<float>& x, const Vectorized<float>& y) { return x + y; }, v);
#endif
  constexpr int64_t n = Vectorized<Acc>::size();
  Acc lanes[n];
  v.store(lanes);
  for (int64_t half = n / 2; half >= 1; half /= 2)
    for (int64_t i = 0; i < half; ++i) lanes[i] += lanes[i + half];
  return lanes[0];
}

// Positions contiguous (NCHW maps): one contiguous sum per channel. Conv
// maps have short rows (ResNet layer 4: 49 or 54 positions, 6 or 7 vectors),
// so each row is summed in two independent chains of vector adds and its
// lanes as a tree: a single chain left the loads waiting on the adds.
template <typename T>
void reduce_channels_first(const ReduceArgs& a, int64_t b, int64_t d0, int64_t d1) {
  using B = Block<T>;
  using Acc = typename B::Acc;
  using V = Vectorized<Acc>;
  constexpr int64_t W = B::kWidth;
  constexpr int K = B::kVecs;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const int64_t P = a.vx.P, full = P - P % W;
  const Acc div = divisor<Acc>(a, b);
  for (int64_t d = d0; d < d1; ++d) {
    const T* xr = x + a.vx.offset(b, 0, d);
    const T* gr = dy ? dy + a.vdy.offset(b, 0, d) : nullptr;
    V acc(Acc(0)), mid(Acc(0));  // three levels, as above: blocks of kBlockRows vectors into mid, kBlockRows of those into acc
    int64_t blocks_in_mid = 0;
    for (int64_t p0 = 0; p0 < full; p0 += kBlockRows * W) {
      const int64_t p1 = std::min(full, p0 + kBlockRows * W);
      V even[K], odd[K], v[K];
      for (int k = 0; k < K; ++k) even[k] = V(Acc(0)), odd[k] = V(Acc(0));
      int64_t p = p0;
      for (; p + 2 * W <= p1; p += 2 * W) {
        load_terms(xr, gr, p, v);
        for (int k = 0; k < K; ++k) even[k] = even[k] + v[k];
        load_terms(xr, gr, p + W, v);
        for (int k = 0; k < K; ++k) odd[k] = odd[k] + v[k];
      }
      if (p < p1) {
        load_terms(xr, gr, p, v);
        for (int k = 0; k < K; ++k) even[k] = even[k] + v[k];
      }
      for (int k = 0; k < K; ++k) mid = mid + (even[k] + odd[k]);
      if (++blocks_in_mid == kBlockRows) acc = acc + mid, mid = V(Acc(0)), blocks_in_mid = 0;
    }
    V rest(Acc(0));  // the row's last partial block, lanes past P zero
    if (full < P) {
      V v[K];
      load_terms_part(xr, gr, full, P - full, v);
      for (int k = 0; k < K; ++k) rest = rest + v[k];
    }
    static_cast<Acc*>(a.out)[b * a.vx.D + d] = tree_sum((acc + mid) + rest) / div;
  }
}

// Tasks [begin, end) of one sample cover one contiguous run of channels:
// each run is one call, so a channel a task (channels-first maps: 512 tasks
// of 50 positions a sample) pays the call and index arithmetic once a run.
// Every channel is summed in the same order either way.
template <typename T, typename Acc>
void reduce(const ReduceArgs& a, RowKind kind, int64_t blocks, int64_t begin, int64_t end) {
  const int64_t width = (a.vx.D + blocks - 1) / blocks;
  for (int64_t t = begin; t < end;) {
    const int64_t b = t / blocks, run_end = std::min(end, (b + 1) * blocks);
    const int64_t d0 = (t % blocks) * width, d1 = std::min(a.vx.D, (run_end - b * blocks) * width);
    t = run_end;
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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
