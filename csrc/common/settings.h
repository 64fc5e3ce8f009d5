// The environment switches the kernels read (MMCAL_CPU_STREAM,
// MMCAL_CUDA_GATE_WARPS at a call; MMCAL_CPU_CAPABILITY when the kernel table
// is first chosen). An op runs without the GIL, and getenv there raced
// with another thread's putenv (Python's `os.environ[k] = v`), which can move
// the environment array: a read of freed memory, seen as a SIGSEGV when an
// inference server's threads called the module while one set a variable.
// So the values are read once, when the library loads (under the import's
// GIL), and the call-time two changed only through the op `set_settings`, to
// which Python hands os.environ's values
// (mmcal_kernels.backends.cpp.load.apply_settings). The kernel table is chosen
// once per process, so its setting is read only at load.
#pragma once

#include <mutex>
#include <string>
#include <cstdlib>

namespace mmcal {

class Settings {
 public:
  static Settings& get() {
    static Settings settings;
    return settings;
  }
  std::string cpu_stream() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cpu_stream_;
  }
  std::string cuda_gate_warps() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cuda_gate_warps_;
  }
  const std::string& cpu_capability() const { return cpu_capability_; }  // fixed at load
  void set(std::string cpu_stream, std::string cuda_gate_warps) {
    std::lock_guard<std::mutex> lock(mu_);
    cpu_stream_ = std::move(cpu_stream), cuda_gate_warps_ = std::move(cuda_gate_warps);
  }

 private:
  Settings()
      : cpu_stream_(env("MMCAL_CPU_STREAM")),
        cuda_gate_warps_(env("MMCAL_CUDA_GATE_WARPS")),
        cpu_capability_(env("MMCAL_CPU_CAPABILITY")) {}
  static std::string env(const char* name) {
    const char* text = std::getenv(name);
    return text == nullptr ? "" : text;
  }
  mutable std::mutex mu_;
  std::string cpu_stream_, cuda_gate_warps_;
  const std::string cpu_capability_;
};

// Read at load: a namespace-scope initialiser runs while the library is
// dlopened, inside Python's import, so the first read holds the GIL too.
inline const bool kSettingsReadAtLoad = (Settings::get(), true);

inline void set_settings(std::string cpu_stream, std::string cuda_gate_warps) {
  Settings::get().set(std::move(cpu_stream), std::move(cuda_gate_warps));
}

}  // namespace mmcal
