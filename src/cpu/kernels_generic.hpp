// Portable implementations of the CPU kernel contract (cpu_kernels.hpp): the scalar table, and
// the parts of other tables (NEON's quantize) that have no vectorized version.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/convert.hpp"
#include "cpu/cpu_kernels.hpp"
#include "mxfp4/format.hpp"
#include "reference/reference.hpp"

namespace mxfp4::cpu::generic {

// Quantize and dequantize are the reference's own loops, run on rows [r0, r1): their bytes are
// the definition every other table must match.
inline std::int64_t quantize_rows(const detail::QuantizeArgs& a, std::int64_t r0, std::int64_t r1) {
  detail::QuantizeArgs part = a;
  part.weight = static_cast<const char*>(a.weight) +
                static_cast<std::size_t>(r0 * a.k) * dtype_size(a.weight_dtype);
  part.rows = r1 - r0;
  part.blocks = a.blocks + r0 * (a.k / 2);
  part.scales = a.scales + r0 * (a.k / kBlockSize);
  const std::int64_t bad = reference::quantize(part);
  return bad < 0 ? -1 : bad + r0 * a.k;
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
