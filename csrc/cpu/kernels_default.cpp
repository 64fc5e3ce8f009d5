// The portable baseline, compiled into _C with the default flags: always there.
#include "build_table.h"

namespace mmcal {
namespace cpu {

const KernelTable* default_kernel_table() { return CPU_CAPABILITY::kernel_table(); }

}  // namespace cpu
}  // namespace mmcal
