// Helpers shared by the CPU benchmarks: deterministic random data, random MXFP4 weights, and
// Google Benchmark rate counters.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "mxfp4/mxfp4.hpp"

namespace mxfp4::bench {

// xoshiro256** seeded by splitmix64: the same numbers on every platform and standard library.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) {
    for (auto& w : s_) {
      std::uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      w = z ^ (z >> 31);
    }
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in (-1, 1), as f32.
  float symmetric() {
    return static_cast<float>((static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-52 - 1.0);
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

inline Tensor random_f32(Shape shape, std::uint64_t seed) {
  Tensor t = Tensor::empty(std::move(shape), DType::f32);
  Rng rng(seed);
  float* p = t.data_as<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    p[i] = rng.symmetric();
  return t;
}

// A weight built from random parts: every E2M1 code, scales 2^-9 .. 2^-1 (bytes 118 .. 126).
// experts == 0 gives a dense [n, k] weight, else a stack [experts, n, k]; the optional bias is
// random f32 of the matching shape.
inline Mxfp4Weight random_weight(std::int64_t experts, std::int64_t n, std::int64_t k,
                                 bool with_bias, std::uint64_t seed) {
  const bool stacked = experts > 0;
  const Shape bshape = stacked ? Shape{experts, n, k / 2} : Shape{n, k / 2};
  const Shape sshape = stacked ? Shape{experts, n, k / kBlockSize} : Shape{n, k / kBlockSize};
  const Shape biasshape = stacked ? Shape{experts, n} : Shape{n};
  Tensor blocks = Tensor::empty(bshape, DType::u8);
  Tensor scales = Tensor::empty(sshape, DType::u8);
  Rng rng(seed);
  auto* b = blocks.data_as<std::uint8_t>();
  for (std::int64_t i = 0; i < blocks.numel(); i += 8) {
    const std::uint64_t r = rng.next();
    std::memcpy(b + i, &r, static_cast<std::size_t>(std::min<std::int64_t>(8, blocks.numel() - i)));
  }
  auto* s = scales.data_as<std::uint8_t>();
  for (std::int64_t i = 0; i < scales.numel(); ++i) {
    s[i] = static_cast<std::uint8_t>(118 + rng.next() % 9);
  }
  std::optional<Tensor> bias;
  if (with_bias) bias = random_f32(biasshape, seed ^ 0xB1A5);
  return Mxfp4Weight::from_parts(std::move(blocks), std::move(scales), std::move(bias));
}

// MXFP4 bytes of an [N, K] matrix: K/2 code bytes and K/32 scale bytes per row (4.25 bits each).
inline double packed_bytes(std::int64_t n, std::int64_t k) {
  return static_cast<double>(n) * static_cast<double>(k / 2 + k / kBlockSize);
}

// A per-second counter of `per_iteration` units (decimal prefixes).
inline void set_rate(benchmark::State& state, const char* name, double per_iteration) {
  state.counters[name] = benchmark::Counter(
      per_iteration, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

}  // namespace mxfp4::bench
