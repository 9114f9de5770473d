// Portable implementations of the CPU kernel contract (cpu_kernels.hpp), written so that each
// ISA translation unit can include them and let its compiler flags vectorize what they can.
// The scalar table uses them as they are; the AVX2 and AVX-512 tables replace the hot paths
// with intrinsics and fall back to these for the rest.
#pragma once

#include <cmath>
#include <vector>

#include "core/convert.hpp"
#include "cpu/cpu_kernels.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::cpu::generic {

inline std::int64_t quantize_rows(const detail::QuantizeArgs& a, std::int64_t r0, std::int64_t r1) {
  const std::int64_t blocks_per_row = a.k / kBlockSize;
  std::int64_t first_non_finite = -1;
  float v[kBlockSize];
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      const std::int64_t base = r * a.k + b * kBlockSize;
      for (int i = 0; i < kBlockSize; ++i) {
        v[i] = detail::load_float(a.weight, a.weight_dtype, base + i);
      }
      if (first_non_finite < 0) {
        for (int i = 0; i < kBlockSize; ++i) {
          if (!std::isfinite(v[i])) {
            first_non_finite = base + i;
            break;
          }
        }
      }
      a.scales[r * blocks_per_row + b] =
          quantize_block(a.rule, v, a.blocks + r * (a.k / 2) + b * kBlockBytes);
    }
  }
  return first_non_finite;
}

inline void dequantize_rows(const detail::DequantizeArgs& a, std::int64_t r0, std::int64_t r1) {
  const std::int64_t blocks_per_row = a.k / kBlockSize;
  float v[kBlockSize];
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      dequantize_block(a.blocks + r * (a.k / 2) + b * kBlockBytes, a.scales[r * blocks_per_row + b],
                       v);
      const std::int64_t base = r * a.k + b * kBlockSize;
      for (int i = 0; i < kBlockSize; ++i)
        detail::store_float(a.out, a.out_dtype, base + i, v[i]);
    }
  }
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

}  // namespace mxfp4::cpu::generic
