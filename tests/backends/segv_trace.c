// Preloaded into a child process (LD_PRELOAD) by a test that expects it may
// die on SIGSEGV: prints the native frames, which Python's faulthandler
// cannot, then dies of the same signal. Each frame reads "object(+offset)",
// for addr2line.
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_fault(int sig) {
  void* frames[64];
  const char head[] = "segv_trace: native frames (addr2line -f -C -e OBJECT +OFFSET):\n";
  write(2, head, sizeof head - 1);
  backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  void* warm[1];
  backtrace(warm, 1);  // loads libgcc_s now: not safe inside the handler
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fault;
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGBUS, &sa, NULL);
}
