// Helpers shared by the CPU benchmarks: deterministic random data, random MXFP4 weights (and
// copies of them to rotate over), and Google Benchmark rate counters.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "bench_rng.hpp"
#include "mxfp4/mxfp4.hpp"

namespace mxfp4::bench {

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

// Weights are rotated over copies that together exceed this many bytes (the last-level cache of
// the machines we run on is at most a few tens of MB).
inline constexpr double kRotationBytes = 128e6;

// How many copies of `bytes_each` bytes together exceed kRotationBytes.
inline std::size_t copies_for(double bytes_each) {
  return static_cast<std::size_t>(kRotationBytes / bytes_each) + 1;
}

// Copies of a random dense [N, K] weight (seeds 10, 11, ...), built once per shape.
inline const std::vector<Mxfp4Weight>& rotated_weights(std::int64_t n, std::int64_t k) {
  static std::map<std::pair<std::int64_t, std::int64_t>, std::vector<Mxfp4Weight>> cache;
  std::vector<Mxfp4Weight>& weights = cache[{n, k}];
  if (weights.empty()) {
    const std::size_t copies = copies_for(packed_bytes(n, k));
    for (std::size_t c = 0; c < copies; ++c)
      weights.push_back(random_weight(0, n, k, false, 10 + c));
  }
  return weights;
}

// A per-second counter of `per_iteration` units (decimal prefixes).
inline void set_rate(benchmark::State& state, const char* name, double per_iteration) {
  state.counters[name] = benchmark::Counter(
      per_iteration, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

}  // namespace mxfp4::bench
