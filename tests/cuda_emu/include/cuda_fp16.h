// CPU stand-in for cuda_fp16.h (see cuda_runtime.h): __half as its bits, and
// the conversions the kernels use, rounding to nearest even as the GPU's do.
// Written out in integer arithmetic, so that any C++17 compiler builds it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  unsigned short bits;
};

inline float __half2float(__half h) {
  const std::uint32_t sign = (h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24
    const float f = std::ldexp(static_cast<float>(m), -24);
    return sign ? -f : f;
  }
  const std::uint32_t bits = sign | (e == 0x1fu ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline __half __float2half_rn(float v) {
  std::uint32_t x;
  std::memcpy(&x, &v, sizeof x);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const auto half = [sign](std::uint32_t bits) { return __half{static_cast<unsigned short>(sign | bits)}; };
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return half(0x7e00u);  // NaN
  if (x >= 0x477ff000u) return half(0x7c00u);  // 65520 and up round to infinity
  if (x < 0x33000000u) return half(0);         // below 2^-25: to zero
  // Keep `shift` low bits off the significand, rounding to nearest even.
  const auto round_off = [](std::uint32_t value, std::uint32_t shift) {
    const std::uint32_t kept = value >> shift, rest = value & ((1u << shift) - 1u), tie = 1u << (shift - 1u);
    return kept + (rest > tie || (rest == tie && (kept & 1u)) ? 1u : 0u);
  };
  if (x < 0x38800000u) {  // a subnormal half: units of 2^-24
    const std::uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
    return half(round_off(m, 126u - e));
  }
  return half(round_off(x - 0x38000000u, 13));  // exponent rebiased 127 -> 15; a carry moves into it
}
