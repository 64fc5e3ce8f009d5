// Picks the CPU kernel table at first use: the widest capability the CPU
// reports whose library is found next to _C and loads, or the one named by
// MMCAL_CPU_CAPABILITY (default, avx2, avx512). The default table is compiled
// into _C, so there is always one.
#include <dlfcn.h>
#include <elf.h>
#include <glob.h>

#include <c10/util/Exception.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../common/settings.h"
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

// dlopen maps a library's loadable segments and touches them: in a file cut
// short (an interrupted copy, a full disk) that is a SIGBUS, which killed the
// process at import. Such a file is passed over like one that fails to load.
bool segments_within_file(const char* path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return false;
  const auto size = static_cast<uint64_t>(f.tellg());
  Elf64_Ehdr eh;
  f.seekg(0);
  if (size < sizeof(eh) || !f.read(reinterpret_cast<char*>(&eh), sizeof(eh))) return false;
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return false;
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr)) return true;  // dlopen judges
  if (eh.e_phoff + static_cast<uint64_t>(eh.e_phnum) * sizeof(Elf64_Phdr) > size) return false;
  for (uint64_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    f.seekg(static_cast<std::streamoff>(eh.e_phoff + i * sizeof(ph)));
    if (!f.read(reinterpret_cast<char*>(&ph), sizeof(ph))) return false;
    if (ph.p_type == PT_LOAD && ph.p_offset + ph.p_filesz > size) return false;
  }
  return true;
}

const KernelTable* load(const std::string& cap) {
  // setuptools names it mmcal_cpu_<cap>.cpython-*.so; the JIT fallback mmcal_cpu_<cap>.so.
  glob_t found;
  const std::string pattern = own_directory() + "/mmcal_cpu_" + cap + "*.so";
  const KernelTable* table = nullptr;
  if (glob(pattern.c_str(), 0, nullptr, &found) == 0) {
    for (size_t i = 0; i < found.gl_pathc && table == nullptr; ++i) {
      if (!segments_within_file(found.gl_pathv[i])) continue;
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
  std::string wanted = Settings::get().cpu_capability();  // read at load (common/settings.h)
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
