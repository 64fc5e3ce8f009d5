// Picks the CPU kernel table at first use: the widest capability the CPU
// reports whose library is found next to _C and loads, or the one named by
// MMCAL_CPU_CAPABILITY (default, avx2, avx512). The default table is compiled
// into _C, so there is always one.
#include <dlfcn.h>
#include <glob.h>

#include <c10/util/Exception.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernel_table.h"

namespace mmcal {
namespace cpu {
namespace {

std::string own_directory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&default_kernel_table), &info) == 0 || info.dli_fname == nullptr) return ".";
  std::string path(info.dli_fname);
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool cpu_supports(const std::string& cap) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (cap == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (cap == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  return false;
}

const KernelTable* load(const std::string& cap) {
  // setuptools names it mmcal_cpu_<cap>.cpython-*.so; the JIT fallback mmcal_cpu_<cap>.so.
  glob_t found;
  const std::string pattern = own_directory() + "/mmcal_cpu_" + cap + "*.so";
  const KernelTable* table = nullptr;
  if (glob(pattern.c_str(), 0, nullptr, &found) == 0) {
    for (size_t i = 0; i < found.gl_pathc && table == nullptr; ++i) {
      void* handle = dlopen(found.gl_pathv[i], RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) continue;
      auto getter = reinterpret_cast<const KernelTable* (*)()>(dlsym(handle, "mmcal_cpu_kernel_table_v1"));
      // An empty slot would be a call through null: such a table (a stale or
      // partial build) is passed over for a narrower one.
      if (getter != nullptr && complete(*getter())) table = getter();
    }
  }
  globfree(&found);
  return table;
}

const KernelTable* select() {
  const char* env = std::getenv("MMCAL_CPU_CAPABILITY");
  std::string wanted = env ? env : "";
  // Any case: cpu_capability() and `python -m mmcal_kernels.info` print the names in capitals.
  for (auto& ch : wanted) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  TORCH_CHECK_VALUE(wanted.empty() || wanted == "default" || wanted == "avx2" || wanted == "avx512",
                    "MMCAL_CPU_CAPABILITY: expected default, avx2 or avx512, got '", wanted, "'");
  std::vector<std::string> order = {"avx512", "avx2"};
  if (!wanted.empty()) order.erase(order.begin(), wanted == "avx2" ? order.begin() + 1 : wanted == "default" ? order.end() : order.begin());
  for (const auto& cap : order) {
    if (!cpu_supports(cap)) continue;
    if (const KernelTable* table = load(cap)) return table;
  }
  return default_kernel_table();
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable* table = select();
  return *table;
}

}  // namespace cpu
}  // namespace mmcal
