// A CPU stand-in for the CUDA runtime, so that the project's CUDA kernels
// (csrc/cuda/*.cu, compiled as C++ by tests/cuda_emu/emulated_ops.py) run and are
// tested on a machine with no GPU. Only what those kernels use is here: 1-D
// grids and blocks, __syncthreads, warp shuffles and ballots, __shared__
// arrays and __ldg.
//
// Each block runs as one fiber (ucontext) per CUDA thread on the calling
// thread, blocks one after another. A fiber runs until it reaches a barrier
// (__syncthreads, or the warp barrier inside a shuffle or ballot), then the
// next runs, in an order that MMCAL_CUDA_EMU_ORDER sets: "forward" (thread 0
// first) or "reverse", warp by warp, each warp run through its shuffles until
// its lanes reach __syncthreads; or "shuffle:<seed>", rounds in which every
// thread runs to its next barrier, in a new permutation each round. A value
// one warp writes and another reads with no __syncthreads between them is
// therefore seen before the write in one of forward and reverse order,
// however many shuffles either passes first: the tests run both, and a
// missing __syncthreads gives a wrong result. A
// __syncthreads or shuffle that not every live thread of its block (warp)
// reaches is a deadlock on a GPU; here the launch fails with a message that
// says which threads waited where (cudaGetLastError, cudaGetErrorString).
//
// Blocks run one at a time, so `__shared__` is a function-local static: one
// copy, reused by the next block (uninitialised shared memory on a GPU holds
// garbage as well).
#pragma once

#include <math.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  unsigned x, y, z, w;
};
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };

namespace mmcal_emu {

constexpr unsigned kWarp = 32;
constexpr std::size_t kStackBytes = 256 * 1024;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  State state = State::Runnable;
};

// The launch in progress on this thread.
struct Grid {
  dim3 grid, block, block_idx;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  unsigned current = 0;                  // the running fiber = its thread index
  std::vector<std::uint64_t> lane_data;  // one word per thread: shuffles and ballots
  const std::function<void()>* body = nullptr;
  std::string failure;
};

inline thread_local Grid* active = nullptr;
inline thread_local cudaError_t last_error = cudaSuccess;
inline thread_local std::string last_message;

inline Grid& grid() { return *active; }

inline const char* state_name(State s) {
  switch (s) {
    case State::Runnable: return "running";
    case State::AtBlockBarrier: return "__syncthreads";
    case State::AtWarpBarrier: return "a warp shuffle/ballot";
    default: return "exited";
  }
}

// Park the running fiber in `s` and return to the scheduler.
inline void park(State s) {
  Grid& g = grid();
  Fiber& f = g.fibers[g.current];
  f.state = s;
  swapcontext(&f.ctx, &g.scheduler);
}

// A misuse found inside a kernel: the launch fails with `why`; this fiber never resumes.
[[noreturn]] inline void fail(const std::string& why) {
  Grid& g = grid();
  if (g.failure.empty()) g.failure = why;
  park(State::Done);
  std::abort();  // not reached: the scheduler does not resume a failed launch
}

inline void trampoline() {
  Grid& g = grid();
  (*g.body)();
  g.fibers[g.current].state = State::Done;  // uc_link returns to the scheduler
}


inline std::string where_they_wait(const Grid& g) {
  std::string out;
  for (std::size_t t = 0; t < g.fibers.size(); ++t) {
    if (t == 0 || g.fibers[t].state != g.fibers[t - 1].state) {
      out += (out.empty() ? "" : ", ") + std::string("thread ") + std::to_string(t) + "+ at " +
             state_name(g.fibers[t].state);
    }
  }
  return out;
}

// Release warp w if all its lanes wait at its barrier. Exited threads count
// as missing, as the programming guide has it (a full-mask shuffle needs
// every lane): with one exited, the barrier never opens and the launch fails.
inline bool release_warp(Grid& g, unsigned w) {
  const unsigned n = static_cast<unsigned>(g.fibers.size());
  for (unsigned t = w * kWarp; t < n && t < (w + 1) * kWarp; ++t) {
    if (g.fibers[t].state != State::AtWarpBarrier) return false;
  }
  for (unsigned t = w * kWarp; t < n && t < (w + 1) * kWarp; ++t) g.fibers[t].state = State::Runnable;
  return true;
}

// Release the threads a barrier holds: each warp whose lanes all wait at its
// barrier, else the block when every thread waits at __syncthreads (exited
// threads count as missing here too: a barrier in code that not every thread
// reaches is undefined).
inline bool release(Grid& g) {
  bool released = false;
  const unsigned n = static_cast<unsigned>(g.fibers.size());
  for (unsigned w = 0; w * kWarp < n; ++w) released = release_warp(g, w) || released;
  if (released) return true;
  for (const Fiber& f : g.fibers) {
    if (f.state != State::AtBlockBarrier) return false;
  }
  for (Fiber& f : g.fibers) f.state = State::Runnable;
  return true;
}

inline cudaError_t fail_launch(const std::string& why) {
  last_error = cudaErrorLaunchFailure;
  last_message = "emulated launch failed: " + why;
  return last_error;
}

inline cudaError_t run(dim3 grid_dim, dim3 block_dim, const std::function<void()>& body) {
  if (grid_dim.z != 1 || block_dim.y != 1 || block_dim.z != 1) {
    return fail_launch("only 1-D blocks and 1-D or 2-D grids are emulated");
  }
  if (block_dim.x == 0 || block_dim.x > 1024 || grid_dim.x == 0 || grid_dim.y == 0 || grid_dim.y > 65535) {
    return fail_launch("invalid launch configuration");
  }
#ifdef MMCAL_MAX_GRID_X  // the emulated GPU's x extent (emulated_ops.py sets it small)
  if (grid_dim.x > MMCAL_MAX_GRID_X) return fail_launch("grid x extent over MMCAL_MAX_GRID_X");
#endif
  const char* env = std::getenv("MMCAL_CUDA_EMU_ORDER");
  const std::string how = env && *env ? env : "forward";
  const bool shuffle = how.rfind("shuffle:", 0) == 0 && how.size() > 8 && how.size() <= 8 + 9 &&  // 1-9 digits
                       how.find_first_not_of("0123456789", 8) == std::string::npos;
  if (how != "forward" && how != "reverse" && !shuffle) {
    return fail_launch("MMCAL_CUDA_EMU_ORDER: expected forward, reverse or shuffle:<seed>, got '" + how + "'");
  }
  // The order the threads of a block run in; with shuffle, a new permutation every round.
  std::mt19937 rng(shuffle ? std::stoul(how.substr(8)) : 0u);
  std::vector<unsigned> order(block_dim.x);
  for (unsigned i = 0; i < block_dim.x; ++i) order[i] = how == "reverse" ? block_dim.x - 1 - i : i;

  Grid g;
  g.grid = grid_dim, g.block = block_dim, g.body = &body;
  g.fibers.resize(block_dim.x);
  g.lane_data.assign(block_dim.x, 0);
  for (Fiber& f : g.fibers) f.stack.reset(new char[kStackBytes]);
  Grid* outer = active;
  active = &g;
  const std::uint64_t blocks = static_cast<std::uint64_t>(grid_dim.x) * grid_dim.y;
  for (std::uint64_t b = 0; b < blocks && g.failure.empty(); ++b) {
    g.block_idx = dim3(static_cast<unsigned>(b % grid_dim.x), static_cast<unsigned>(b / grid_dim.x));
    for (Fiber& f : g.fibers) {
      f.state = State::Runnable;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &g.scheduler;
      makecontext(&f.ctx, &trampoline, 0);
    }
    // Run thread t until it parks; false once the launch has failed.
    const auto step = [&](unsigned t) {
      g.current = t;
      swapcontext(&g.scheduler, &g.fibers[t].ctx);
      return g.failure.empty();
    };
    for (;;) {
      if (shuffle) {
        // A round: each runnable thread to its next barrier, in a new order.
        std::shuffle(order.begin(), order.end(), rng);
        for (const unsigned t : order) {
          if (g.fibers[t].state == State::Runnable && !step(t)) break;
        }
      } else {
        // Warp by warp in `order`, each through its shuffles (released as soon
        // as its lanes all wait) to __syncthreads or its end. Why not a round
        // per shuffle: a warp that passes more shuffles than another would
        // trail it round by round, so its read of a value the other writes,
        // with no __syncthreads between, would see the write in both orders.
        for (std::size_t at = 0; at < order.size() && g.failure.empty();) {
          const unsigned w = order[at] / kWarp;
          std::size_t end = at;
          while (end < order.size() && order[end] / kWarp == w) ++end;
          for (bool ran = true; ran && g.failure.empty();) {
            ran = false;
            for (std::size_t i = at; i < end; ++i) {
              if (g.fibers[order[i]].state != State::Runnable) continue;
              ran = true;
              if (!step(order[i])) break;
            }
            ran = (g.failure.empty() && release_warp(g, w)) || ran;
          }
          at = end;
        }
      }
      if (!g.failure.empty()) break;
      bool done = true;
      for (const Fiber& f : g.fibers) done = done && f.state == State::Done;
      if (done) break;
      if (!release(g)) {
        g.failure = "deadlock: " + where_they_wait(g);
        break;
      }
    }
    if (!g.failure.empty()) g.failure = "block " + std::to_string(b) + ": " + g.failure;
  }
  active = outer;
  if (!g.failure.empty()) return fail_launch(g.failure);
  return cudaSuccess;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), as emulated_ops.py rewrites it.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid_dim, dim3 block_dim, std::size_t, cudaStream_t,
                   Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "a kernel argument per parameter");
  // Arguments are copied once, as CUDA copies them into the launch; every thread reads that copy.
  const std::tuple<std::decay_t<Params>...> copied(std::forward<Args>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, copied); };
  return run(grid_dim, block_dim, body);
}

inline unsigned lane_id() { return grid().current % kWarp; }

// A full-mask exchange of a whole warp: the only kind the kernels use. (A lane
// that has exited is caught where the warp barrier never opens: release.)
inline void check_full_warp(unsigned mask, const char* what) {
  Grid& g = grid();
  if (mask != 0xffffffffu) fail(std::string(what) + ": only a full mask is emulated");
  if (g.current - lane_id() + kWarp > g.fibers.size()) fail(std::string(what) + " in a partial warp");
}

inline dim3 dim3_of(unsigned x) { return dim3(x); }

}  // namespace mmcal_emu

#define threadIdx (::mmcal_emu::dim3_of(::mmcal_emu::grid().current))
#define blockIdx (::mmcal_emu::grid().block_idx)
#define blockDim (::mmcal_emu::grid().block)
#define gridDim (::mmcal_emu::grid().grid)

inline void __syncthreads() { mmcal_emu::park(mmcal_emu::State::AtBlockBarrier); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable<T>::value, "a shuffled value");
  using namespace mmcal_emu;
  if (width != 32 || lane_mask < 0 || lane_mask >= 32) fail("__shfl_xor_sync: width 32 and a lane mask below 32");
  check_full_warp(mask, "__shfl_xor_sync");
  Grid& g = grid();
  const unsigned me = g.current, partner = me - lane_id() + (lane_id() ^ static_cast<unsigned>(lane_mask));
  std::memcpy(&g.lane_data[me], &value, sizeof(T));
  park(State::AtWarpBarrier);  // every lane has written
  T out;
  std::memcpy(&out, &g.lane_data[partner], sizeof(T));
  park(State::AtWarpBarrier);  // every lane has read, before any writes again
  return out;
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  using namespace mmcal_emu;
  check_full_warp(mask, "__ballot_sync");
  Grid& g = grid();
  const unsigned first = g.current - lane_id();
  g.lane_data[g.current] = predicate != 0;
  park(State::AtWarpBarrier);
  unsigned bits = 0;
  for (unsigned lane = 0; lane < kWarp; ++lane) bits |= (g.lane_data[first + lane] != 0 ? 1u : 0u) << lane;
  park(State::AtWarpBarrier);
  return bits;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t err = mmcal_emu::last_error;
  mmcal_emu::last_error = cudaSuccess;
  return err;
}

inline const char* cudaGetErrorString(cudaError_t err) {
  if (err == cudaSuccess) return "no error";
  if (err == cudaErrorInvalidValue) return "invalid argument";
  return mmcal_emu::last_message.c_str();
}
