// What both kinds of CPU kernel (reductions.h, elementwise.h) build on,
// compiled once per capability: everything lives in a namespace named after
// the capability (CPU_CAPABILITY, set by the build per library), like ATen's
// own vector code, so the AVX2 and AVX-512 copies never meet at link time.
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

#include <tuple>
#include <type_traits>

#include "../common/scalar_math.h"
#include "kernel_table.h"

#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#endif

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
  // The k-th vector of Acc from p: one vector's lanes of elements.
  static Vectorized<Acc> load_vector(const T* p, int64_t k) { return Vectorized<Acc>::loadu(p + k * Vectorized<Acc>::size()); }
  static Vectorized<T> pack(const Vectorized<Acc>* v) { return v[0]; }
  static void store(T* p, const Vectorized<Acc>* v) { pack(v).store(p); }
  // The first `count` (1 to kWidth) elements; the lanes past them load as zero and are not stored.
  static void load_part(const T* p, int64_t count, Vectorized<Acc>* v) { v[0] = Vectorized<Acc>::loadu(p, count); }
  static void store_part(T* p, int64_t count, const Vectorized<Acc>* v) { v[0].store(p, count); }
};

template <typename H>
struct HalfBlock {
  using Acc = float;
  static constexpr int kVecs = 2;
  static constexpr int64_t kWidth = 2 * Vectorized<float>::size();
  static void load(const H* p, Vectorized<float>* v) { at::vec::load_to_float<H>(p, v[0], v[1]); }
  static Vectorized<float> load_vector(const H* p, int64_t k) {
    Vectorized<float> v;
    at::vec::load_to_float<H>(p + k * Vectorized<float>::size(), v);
    return v;
  }
  static Vectorized<H> pack(const Vectorized<float>* v) { return at::vec::convert_from_float<H>(v[0], v[1]); }
  static void store(H* p, const Vectorized<float>* v) { pack(v).store(p); }
  static void load_part(const H* p, int64_t count, Vectorized<float>* v) {
    std::tie(v[0], v[1]) = at::vec::convert_to_float<H>(Vectorized<H>::loadu(p, count));
  }
  static void store_part(H* p, int64_t count, const Vectorized<float>* v) { pack(v).store(p, count); }
};

// How many of a block's lanes fall in vector k (0 to V::size()), when the block holds `count` elements.
template <typename V>
constexpr int64_t lanes_of(int64_t count, int k) {
  const int64_t lanes = count - k * V::size();
  return lanes < 0 ? 0 : lanes > V::size() ? V::size() : lanes;
}
template <>
struct Block<c10::Half> : HalfBlock<c10::Half> {};
template <>
struct Block<c10::BFloat16> : HalfBlock<c10::BFloat16> {};

// Vectorised only where the block's accumulation type is the compute dtype.
template <typename T, typename Acc>
constexpr bool kVectorised = std::is_same_v<typename Block<T>::Acc, Acc>;

// scalar_math.h's mask_valid, by the name the CPU kernels use.
inline bool valid(const bool* mask, int64_t msb, int64_t msp, int64_t b, int64_t p) {
  return mask_valid(mask, msb, msp, b, p);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
