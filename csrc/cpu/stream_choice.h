// The host's choice of streaming (non-temporal) stores for a map's output
// (the kernels' side: stream_store.h). Streaming skips the read of each output
// line that a plain store makes first, and pays where that read would have come
// from DRAM; measured on a 2-core AMD EPYC (32 MiB L3), modulate out of cache:
// - rows of >= 1152 bytes 1.27-1.29x faster, 588 bytes even, 296 bytes 0.87x,
//   140 bytes 0.52x (a row's partial lines go element by element);
// - with a consumer reading the output at once, a loss below ~16 MiB (the
//   output would have stayed in cache), a gain above;
// - into fresh pages (glibc maps each output over 32 MB anew) 0.93x: the
//   kernel zero-fills a page at its first touch, through the cache, so plain
//   stores find their lines there.
// Hence, by default, an output streams when its call's outputs reach 16 MiB,
// its rows are at least 1 KiB and its first, middle and last pages are mapped
// already (memory the allocator reuses). MMCAL_CPU_STREAM=always / never
// overrides it (read when _C loads, or set through mmcal::set_settings:
// common/settings.h says why not at every call; the tests run both ways).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "../common/settings.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace mmcal {
namespace cpu {

inline constexpr int64_t kStreamCallBytes = int64_t(16) << 20;
inline constexpr int64_t kStreamRowBytes = 1024;

enum class Streaming { kNo, kIfWorthIt, kYes };

// For one call whose outputs total `bytes`.
inline Streaming streaming_for_call(int64_t bytes) {
  const std::string mode = Settings::get().cpu_stream();
  if (mode == "always") return Streaming::kYes;
  if (mode == "never") return Streaming::kNo;
  TORCH_CHECK_VALUE(mode.empty() || mode == "auto", "MMCAL_CPU_STREAM: expected auto, always or never, got '", mode,
                    "'");
  return bytes >= kStreamCallBytes ? Streaming::kIfWorthIt : Streaming::kNo;
}

// Whether the pages at the start, middle and end of [p, p + bytes) are resident.
inline bool pages_mapped(const void* p, int64_t bytes) {
#if defined(__linux__)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t last = start + static_cast<uintptr_t>(bytes - 1);
  for (const uintptr_t at : {start, start + static_cast<uintptr_t>(bytes / 2), last}) {
    unsigned char resident = 0;
    if (mincore(reinterpret_cast<void*>(at & ~(page - 1)), page, &resident) != 0 || (resident & 1) == 0) return false;
  }
  return true;
#else
  (void)p, (void)bytes;
  return false;  // unknown: plain stores, as before streaming existed
#endif
}

inline bool stream_output(Streaming choice, const at::Tensor& out, int64_t row_elements) {
  if (choice != Streaming::kIfWorthIt) return choice == Streaming::kYes;
  return row_elements * out.element_size() >= kStreamRowBytes &&
         pages_mapped(out.const_data_ptr(), static_cast<int64_t>(out.nbytes()));
}

}  // namespace cpu
}  // namespace mmcal
