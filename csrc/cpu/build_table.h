// The kernel table of one capability, built slot by slot at each Combo's
// index from ComboTypes (kernel_table.h), never by position in a list.
// Included once per capability by kernels_<cap>.cpp.
#pragma once

#include <utility>

#include "elementwise.h"
#include "reductions.h"

#define MMCAL_STRINGIZE_(x) #x
#define MMCAL_STRINGIZE(x) MMCAL_STRINGIZE_(x)

namespace mmcal {
namespace cpu {
namespace CPU_CAPABILITY {

template <Combo C>
constexpr void fill_slot(KernelTable& table) {
  using T = typename ComboTypes<C>::T;
  using Acc = typename ComboTypes<C>::Acc;
  table.reduce[C] = reduce<T, Acc>;
  table.map[C] = map<T, Acc>;
}

// One fill_slot per index in [0, kNumCombos): no slot can be skipped, and a
// Combo added without its ComboTypes does not compile.
template <int... I>
constexpr KernelTable build_table(std::integer_sequence<int, I...>) {
  KernelTable table{};
  table.capability = MMCAL_STRINGIZE(CPU_CAPABILITY);
  (fill_slot<static_cast<Combo>(I)>(table), ...);
  return table;
}

inline constexpr KernelTable kTable = build_table(std::make_integer_sequence<int, kNumCombos>{});
// GCC cannot fold a function address against nullptr in a constant expression
// under -fsanitize=address (tests/sanitizers.sh): there dispatch.cpp's run-time
// complete() check alone guards the table.
#if !defined(__SANITIZE_ADDRESS__)
static_assert(complete(kTable), "a slot of the CPU kernel table is empty");
#endif

inline const KernelTable* kernel_table() { return &kTable; }

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmcal
