// Floating-point helpers the numeric tests share, written independently of the library: float
// bits, decoders of f16 and bf16 (sign, biased exponent, fraction -> double), rounding to a
// format in double arithmetic, and random f32 tensors (std::mt19937).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "mxfp4/dtype.hpp"
#include "mxfp4/tensor.hpp"

namespace mxfp4::test {

inline float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline std::uint32_t to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline double decode_f16(std::uint16_t h) {
  const int exp = (h >> 10) & 0x1F;
  const int man = h & 0x3FF;
  double v;
  if (exp == 0x1F) {
    v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(man), -24);
  } else {
    v = std::ldexp(1024.0 + man, exp - 15 - 10);
  }
  return (h >> 15) ? -v : v;
}
inline double decode_bf16(std::uint16_t h) {
  const int exp = (h >> 7) & 0xFF;
  const int man = h & 0x7F;
  double v;
  if (exp == 0xFF) {
    v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(man), -133);
  } else {
    v = std::ldexp(128.0 + man, exp - 127 - 7);
  }
  return (h >> 15) ? -v : v;
}

// Nearest value with `mant` fraction bits and exponent >= emin (gradual underflow below), ties
// to even, +/-Inf past the largest finite value; zeros, infinities and NaN stay as they are.
inline double round_to_format(double v, int mant, int emin, int emax) {
  if (v == 0.0 || !std::isfinite(v)) return v;
  const double a = std::fabs(v);
  int ex;
  std::frexp(a, &ex);  // a = f * 2^ex, f in [0.5, 1)
  const int e = std::max(ex - 1, emin);
  const double quantum = std::ldexp(1.0, e - mant);
  double r = std::nearbyint(a / quantum) * quantum;  // default rounding mode: nearest even
  if (r > std::ldexp(2.0 - std::ldexp(1.0, -mant), emax)) {
    r = std::numeric_limits<double>::infinity();
  }
  return std::copysign(r, v);
}
inline double round_f32(double v) {
  return round_to_format(v, 23, -126, 127);
}
inline double round_f16(double v) {
  return round_to_format(v, 10, -14, 15);
}
inline double round_bf16(double v) {
  return round_to_format(v, 7, -126, 127);
}
// f32, f16 or bf16.
inline double round_to(DType d, double v) {
  return d == DType::f16 ? round_f16(v) : d == DType::bf16 ? round_bf16(v) : round_f32(v);
}

// Spacing of format `d` (f32, f16 or bf16) at magnitude |v| (the larger spacing at a power of
// two).
inline double ulp_of(DType d, double v) {
  const int mant = d == DType::f16 ? 10 : d == DType::bf16 ? 7 : 23;
  const int emin = d == DType::f16 ? -14 : -126;
  int ex;
  std::frexp(std::fabs(v), &ex);
  return std::ldexp(1.0, std::max(ex - 1, emin) - mant);
}

// f32 values uniform in [-scale, scale).
inline Tensor random_uniform(const Shape& shape, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
  for (auto& x : v)
    x = dist(rng);
  return Tensor::from_vector(v, shape);
}

// n f32 values normal(0, stddev).
inline std::vector<float> random_normal_values(std::size_t n, std::uint32_t seed,
                                               float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v)
    x = dist(rng);
  return v;
}

// The same as a tensor.
inline Tensor random_normal(const Shape& shape, std::uint32_t seed, float stddev = 1.0f) {
  return Tensor::from_vector(
      random_normal_values(static_cast<std::size_t>(shape_numel(shape)), seed, stddev), shape);
}

}  // namespace mxfp4::test
