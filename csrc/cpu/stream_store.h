// Non-temporal ("streaming") stores for the maps' outputs (elementwise.h),
// in the AVX2 and AVX-512 tables; the default table has none.
//
// Why: a plain store to a line not in cache first reads the line (write
// allocate), so a map that reads |X| and writes |X| moves 3|X| through DRAM.
// A streaming store writes the line without reading it: 2|X|. Measured on a
// 2-core AMD EPYC (32 MiB L3), x * g out of cache: 17 GB/s with plain stores,
// 24 GB/s streaming. The cost: the output leaves the cache, so a consumer that
// reads it right away pays DRAM. When the host streams: stream_choice.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vec_block.h"

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace mmcal {
namespace cpu {
namespace CPU_CAPABILITY {

// Streaming stores are weakly ordered: each thread fences its own (stream_fence)
// before the parallel region ends and another thread reads the output.
#if defined(CPU_CAPABILITY_AVX512)
inline constexpr bool kCanStream = true;
using StreamBits = __m512i;
inline void stream_bits(void* p, StreamBits v) { _mm512_stream_si512(static_cast<StreamBits*>(p), v); }
inline void stream_fence() { _mm_sfence(); }
#elif defined(CPU_CAPABILITY_AVX2)
inline constexpr bool kCanStream = true;
using StreamBits = __m256i;
inline void stream_bits(void* p, StreamBits v) { _mm256_stream_si256(static_cast<StreamBits*>(p), v); }
inline void stream_fence() { _mm_sfence(); }
#else
// Declared so that the kernels have one form; never called (kCanStream).
inline constexpr bool kCanStream = false;
struct StreamBits {
  unsigned char bytes[Vectorized<float>::size() * sizeof(float)];
};
inline void stream_bits(void*, StreamBits) {}
inline void stream_fence() {}
#endif

// A row of n elements starting at `out`, as the maps write it: elements
// [0, head) and [full, n) one by one, [head, full) in whole blocks. Streamed,
// the blocks cover whole 64-byte lines only: a line that a streaming store
// fills in part (the rest by a plain store, or by another row) is flushed in
// pieces, which measured slower than plain stores on rows of 147 floats.
struct RowSpan {
  int64_t head, full;
};

inline constexpr int64_t kLineBytes = 64;

template <typename T>
inline RowSpan row_span(const T* out, int64_t n, int64_t block, bool stream) {
  if (!stream) return {0, n - n % block};
  const uintptr_t addr = reinterpret_cast<uintptr_t>(out);
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((kLineBytes - addr % kLineBytes) % kLineBytes / sizeof(T)));
  const int64_t line = kLineBytes / static_cast<int64_t>(sizeof(T));
  return {head, head + (n - head) / line * line};
}

// One output vector, already in the output dtype, to an aligned address. The
// bits go through memcpy: no reliance on each Vectorized<T>'s conversions.
template <typename T>
inline void stream_vector(T* p, const Vectorized<T>& v) {
  static_assert(sizeof(Vectorized<T>) == sizeof(StreamBits), "a block of T is one vector register");
  StreamBits bits;
  std::memcpy(&bits, &v, sizeof bits);
  stream_bits(p, bits);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
