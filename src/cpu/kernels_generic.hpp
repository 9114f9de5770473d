// Portable implementations of the CPU kernel contract (cpu_kernels.hpp): the scalar table, and
// the parts of other tables (NEON's quantize) that have no vectorized version.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/convert.hpp"
#include "core/quantize_block_fast.hpp"
#include "cpu/cpu_kernels.hpp"
#include "mxfp4/format.hpp"
#include "reference/reference.hpp"

namespace mxfp4::cpu::generic {

// Quantize codes blocks [g0, g1) with quantize_block_fast (src/core/quantize_block_fast.hpp),
// whose bytes are quantize_block's (tests/test_quantize_block_fast.cpp) at 2 to 6 times its
// speed (bench_cpu_kernels --isa=scalar); returns the flat index of the first NaN/Inf, or -1, as
// reference::quantize does.
template <ScaleRule Rule, typename Load>
std::int64_t quantize_blocks_fast(const detail::QuantizeArgs& a, std::int64_t g0, std::int64_t g1,
                                  Load load) {
  std::int64_t first_non_finite = -1;
  float v[kBlockSize];
  for (std::int64_t g = g0; g < g1; ++g) {
    for (int i = 0; i < kBlockSize; ++i)
      v[i] = load(g * kBlockSize + i);
    std::uint32_t words[4];
    const std::uint8_t scale = detail::quantize_block_fast<Rule>(v, words);
    a.scales[g] = scale;
    detail::store_code_words(words, a.blocks + g * kBlockBytes);
    if (scale == kScaleNaN && first_non_finite < 0) {  // only a block with NaN/Inf gets 0xFF
      for (int i = 0; i < kBlockSize && first_non_finite < 0; ++i)
        if (!std::isfinite(v[i])) first_non_finite = g * kBlockSize + i;
    }
  }
  return first_non_finite;
}

template <ScaleRule Rule>
std::int64_t quantize_blocks_fast(const detail::QuantizeArgs& a, std::int64_t g0, std::int64_t g1) {
  switch (a.weight_dtype) {
    case DType::f16: {
      const auto* w = static_cast<const std::uint16_t*>(a.weight);
      return quantize_blocks_fast<Rule>(a, g0, g1,
                                        [w](std::int64_t i) { return f16_to_f32(w[i]); });
    }
    case DType::bf16: {
      const auto* w = static_cast<const std::uint16_t*>(a.weight);
      return quantize_blocks_fast<Rule>(a, g0, g1,
                                        [w](std::int64_t i) { return bf16_to_f32(w[i]); });
    }
    default: {
      const auto* w = static_cast<const float*>(a.weight);
      return quantize_blocks_fast<Rule>(a, g0, g1, [w](std::int64_t i) { return w[i]; });
    }
  }
}

// Rows [r0, r1), with reference::quantize's bytes and first non-finite index.
inline std::int64_t quantize_rows(const detail::QuantizeArgs& a, std::int64_t r0, std::int64_t r1) {
  const std::int64_t g0 = r0 * (a.k / kBlockSize), g1 = r1 * (a.k / kBlockSize);
  return detail::with_rule(
      a.rule, [&](auto rule) { return quantize_blocks_fast<decltype(rule)::value>(a, g0, g1); });
}

inline void dequantize_rows(const detail::DequantizeArgs& a, std::int64_t r0, std::int64_t r1) {
  detail::DequantizeArgs part = a;
  part.blocks = a.blocks + r0 * (a.k / 2);
  part.scales = a.scales + r0 * (a.k / kBlockSize);
  part.rows = r1 - r0;
  part.out =
      static_cast<char*>(a.out) + static_cast<std::size_t>(r0 * a.k) * dtype_size(a.out_dtype);
  reference::dequantize(part);
}

// Each output element: acc = 0; for k in order: acc = fma(x[k], w[k], acc); then + bias, with
// w[k] the exactly decoded weight (f32). The same for every count_hint.
inline void matmul_rows(const RowBatch& rows, const detail::WeightArgs& w, std::int64_t expert,
                        std::int64_t n0, std::int64_t n1) {
  const std::int64_t k = w.k;
  const std::int64_t blocks_per_row = k / kBlockSize;
  std::vector<float> xf(static_cast<std::size_t>(rows.count * k));
  for (std::int64_t i = 0; i < rows.count; ++i) {
    for (std::int64_t c = 0; c < k; ++c) {
      xf[static_cast<std::size_t>(i * k + c)] = detail::load_float(rows.x_rows[i], rows.dtype, c);
    }
  }
  std::vector<float> wrow(static_cast<std::size_t>(k));
  for (std::int64_t n = n0; n < n1; ++n) {
    const std::int64_t flat = expert * w.n + n;
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      dequantize_block(w.blocks + flat * (k / 2) + b * kBlockBytes,
                       w.scales[flat * blocks_per_row + b], wrow.data() + b * kBlockSize);
    }
    const float bias = w.bias != nullptr ? detail::load_float(w.bias, w.bias_dtype, flat) : 0.0f;
    for (std::int64_t i = 0; i < rows.count; ++i) {
      const float* x = xf.data() + i * k;
      float acc = 0.0f;
      for (std::int64_t c = 0; c < k; ++c)
        acc = std::fma(x[c], wrow[static_cast<std::size_t>(c)], acc);
      detail::store_float(rows.out_rows[i], rows.dtype, n, acc + bias);
    }
  }
}

// The int8-activation product, written straight from its definition in cpu_kernels.hpp (the
// oracle for the vectorized versions): the lane sums without the +12 offset, one lane at a time.
inline void matmul_rows_int8(const Int8RowBatch& rows, const detail::WeightArgs& w,
                             std::int64_t expert, std::int64_t n0, std::int64_t n1) {
  const std::int64_t k = w.k;
  const std::int64_t lanes = k / 8;
  for (std::int64_t n = n0; n < n1; ++n) {
    const std::int64_t flat = expert * w.n + n;
    const std::uint8_t* codes = w.blocks + flat * (k / 2);
    const std::uint8_t* scales = w.scales + flat * (k / kBlockSize);
    for (std::int64_t i = 0; i < rows.count; ++i) {
      const std::int8_t* even = rows.x_rows[i];
      const std::int8_t* odd = even + int8_section_bytes(k);
      float acc[16] = {};
      for (std::int64_t lane = 0; lane < lanes; ++lane) {
        std::int32_t v = 0;
        for (std::int64_t j = 4 * lane; j < 4 * lane + 4; ++j) {
          v += kE2M1Doubled[codes[j] & 0x0F] * even[j] + kE2M1Doubled[codes[j] >> 4] * odd[j];
        }
        float x_scale;
        std::memcpy(&x_scale, even + 3 * int8_section_bytes(k) + 4 * lane, sizeof x_scale);
        const std::uint8_t e = scales[lane / 4];
        const float w_scale = e == 0xFF ? std::numeric_limits<float>::quiet_NaN()
                                        : std::ldexp(1.0f, static_cast<int>(e) - 128);
        float& a = acc[lane % 16];
        a = std::fma(static_cast<float>(v), x_scale * w_scale, a);
      }
      for (int width = 8; width >= 1; width /= 2) {
        for (int l = 0; l < width; ++l)
          acc[l] = acc[l] + acc[l + width];
      }
      rows.out_rows[i][n - n0] = acc[0];
    }
  }
}

}  // namespace mxfp4::cpu::generic
