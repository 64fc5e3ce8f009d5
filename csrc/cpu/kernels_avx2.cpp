// Built into its own library with -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2
// -DCPU_CAPABILITY_AVX2 (setup.py); loaded only on a CPU that has AVX2.
#include "build_table.h"

extern "C" __attribute__((visibility("default"))) const mmcal::cpu::KernelTable* mmcal_cpu_kernel_table_v1() {
  return mmcal::cpu::CPU_CAPABILITY::kernel_table();
}
