// MMCAL_HD marks a function that runs on the host and, under nvcc, the device.
#pragma once

#if defined(__CUDACC__)
#define MMCAL_HD __host__ __device__ __forceinline__
#else
#define MMCAL_HD inline
#endif
