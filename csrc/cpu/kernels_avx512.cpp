// Built into its own library with AVX-512 F/BW/VL/DQ flags and
// -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 (setup.py); loaded only on a
// CPU that has them.
#include "build_table.h"

extern "C" __attribute__((visibility("default"))) const mmcal::cpu::KernelTable* mmcal_cpu_kernel_table_v1() {
  return mmcal::cpu::CPU_CAPABILITY::kernel_table();
}
