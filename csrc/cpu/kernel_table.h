// The CPU kernels one capability (default, AVX2, AVX-512) provides, as a table
// of plain function pointers. Each capability is compiled into its own shared
// library with its own flags and loaded with dlopen(RTLD_LOCAL), so no inline
// function compiled for a wider instruction set can be picked by the linker
// for code that runs on an older CPU (no SIGILL), and the choice is made at
// run time from what the CPU reports.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../common/view3.h"

namespace mmcal {
namespace cpu {

// Feature dtype T with accumulation/compute dtype Acc (SPEC.md's ct): the
// slots of the table. ComboTypes names each slot's types, and both the table
// (build_table.h) and the host's choice of slot (ops_cpu.cpp) are derived from
// it, so a slot's kernel and the dtypes it is picked for cannot drift apart.
enum Combo : int { F32_F32, F64_F64, F16_F32, BF16_F32, F32_F64, F16_F64, BF16_F64, kNumCombos };

template <Combo C>
struct ComboTypes;  // no definition: a Combo without types fails to compile where the table is built
template <typename T_, typename Acc_>
struct TypePair {
  using T = T_;
  using Acc = Acc_;
};
template <> struct ComboTypes<F32_F32> : TypePair<float, float> {};
template <> struct ComboTypes<F64_F64> : TypePair<double, double> {};
template <> struct ComboTypes<F16_F32> : TypePair<c10::Half, float> {};
template <> struct ComboTypes<BF16_F32> : TypePair<c10::BFloat16, float> {};
template <> struct ComboTypes<F32_F64> : TypePair<float, double> {};
template <> struct ComboTypes<F16_F64> : TypePair<c10::Half, double> {};
template <> struct ComboTypes<BF16_F64> : TypePair<c10::BFloat16, double> {};

// out[b, d] = sum_p sel(b, p) * x[b, p, d] * (dy ? dy[b, p, d] : 1) / (divide ? max(1, count_b) : 1)
struct ReduceArgs {
  const void* x;
  View3 vx;
  const void* dy;  // gate gradient: dg = sum_p dY * X over every position; else null
  View3 vdy;
  const bool* mask;  // [B, P] validity (True = valid); null = all valid
  int64_t mask_sB, mask_sP;
  bool divide;  // the summary: divide by max(1, valid positions)
  void* out;    // [B, D] contiguous, Acc
};

// out[b, p, d] = (src ? src[b, p, d] * gate[b, d] : 0) + (ds ? sel(b, p) * ds[b, d] : 0), rounded once to T
struct MapArgs {
  const void* src;  // X (modulation) or dY (input gradient); null = no such term
  View3 vsrc;
  const void* gate;  // [B, D] contiguous, Acc (required when src is given)
  const bool* mask;  // [B, P] or null
  int64_t mask_sB, mask_sP;
  const void* ds;  // [B, D] contiguous, Acc: ds / count; null = no such term
  void* out;
  View3 vout;
  bool stream;  // non-temporal stores where the table has them (stream_store.h); chosen by stream_choice.h
};

// How a pass walks its work items, chosen once per modality from the strides.
enum RowKind : int { kChannelsLast = 0, kChannelsFirst = 1, kGeneric = 2 };

// Reduce over tasks [begin, end): task t is (b = t / blocks, d-block t % blocks)
// of width ceil(D / blocks).
using ReduceFn = void (*)(const ReduceArgs&, RowKind, int64_t blocks, int64_t begin, int64_t end);
// Map over rows [begin, end): (b, p) pairs for channels-last and generic, (b, d) for channels-first.
using MapFn = void (*)(const MapArgs&, RowKind, int64_t begin, int64_t end);

struct KernelTable {
  const char* capability;
  ReduceFn reduce[kNumCombos];  // indexed by Combo
  MapFn map[kNumCombos];
};

// Every slot filled: a static_assert on each table compiled (build_table.h),
// and checked again on a library's table before it is used (dispatch.cpp).
constexpr bool complete(const KernelTable& t) {
  if (t.capability == nullptr) return false;
  for (int c = 0; c < kNumCombos; ++c)
    if (t.reduce[c] == nullptr || t.map[c] == nullptr) return false;
  return true;
}

// The table of the default capability, compiled into _C itself.
const KernelTable* default_kernel_table();
// The table in use: the widest the CPU supports whose library loads, unless
// MMCAL_CPU_CAPABILITY (default, avx2, avx512) asks for a narrower one.
const KernelTable& kernels();

}  // namespace cpu
}  // namespace mmcal

// Exported by each capability library.
extern "C" const mmcal::cpu::KernelTable* mmcal_cpu_kernel_table_v1();
