// at::parallel_for for the CPU host code. It is an inline template: compiled
// without -fopenmp under an OpenMP torch it silently runs every loop on one
// thread, so such a build stops here instead (build_config passes the flag).
#pragma once

#include <ATen/Parallel.h>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "mmcal: torch uses OpenMP but this file was compiled without -fopenmp; at::parallel_for would run serially"
#endif
