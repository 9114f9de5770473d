#include "reference/reference.hpp"

#include <cmath>
#include <vector>

#include "core/convert.hpp"

namespace mxfp4::reference {

using detail::load_float;
using detail::load_index;
using detail::store_float;

std::int64_t quantize(const detail::QuantizeArgs& a) {
  const std::int64_t blocks_per_row = a.k / kBlockSize;
  std::int64_t first_non_finite = -1;
  float v[kBlockSize];
  for (std::int64_t r = 0; r < a.rows; ++r) {
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      const std::int64_t base = r * a.k + b * kBlockSize;
      for (int i = 0; i < kBlockSize; ++i) {
        v[i] = load_float(a.weight, a.weight_dtype, base + i);
        if (first_non_finite < 0 && !std::isfinite(v[i])) first_non_finite = base + i;
      }
      a.scales[r * blocks_per_row + b] =
          quantize_block(a.rule, v, a.blocks + r * (a.k / 2) + b * kBlockBytes);
    }
  }
  return first_non_finite;
}

void dequantize(const detail::DequantizeArgs& a) {
  const std::int64_t blocks_per_row = a.k / kBlockSize;
  float v[kBlockSize];
  for (std::int64_t r = 0; r < a.rows; ++r) {
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      dequantize_block(a.blocks + r * (a.k / 2) + b * kBlockBytes, a.scales[r * blocks_per_row + b],
                       v);
      const std::int64_t base = r * a.k + b * kBlockSize;
      for (int i = 0; i < kBlockSize; ++i)
        store_float(a.out, a.out_dtype, base + i, v[i]);
    }
  }
}

namespace {

// Decodes row `row` of expert `expert` into w (k floats), exactly.
void decode_row(const detail::WeightArgs& w, std::int64_t expert, std::int64_t row, float* out) {
  const std::int64_t blocks_per_row = w.k / kBlockSize;
  const std::int64_t flat_row = expert * w.n + row;
  const std::uint8_t* blocks = w.blocks + flat_row * (w.k / 2);
  const std::uint8_t* scales = w.scales + flat_row * blocks_per_row;
  for (std::int64_t b = 0; b < blocks_per_row; ++b) {
    dequantize_block(blocks + b * kBlockBytes, scales[b], out + b * kBlockSize);
  }
}

// out[o, :] = x_row . W[expert]^T + bias[expert], accumulated in f64.
void dot_rows(const detail::WeightArgs& w, std::int64_t expert, const std::vector<double>& x_row,
              std::vector<float>& w_row, void* out, DType out_dtype, std::int64_t out_offset) {
  for (std::int64_t n = 0; n < w.n; ++n) {
    decode_row(w, expert, n, w_row.data());
    double acc = 0.0;
    for (std::int64_t k = 0; k < w.k; ++k)
      acc += x_row[k] * static_cast<double>(w_row[k]);
    if (w.bias != nullptr) acc += load_float(w.bias, w.bias_dtype, expert * w.n + n);
    store_float(out, out_dtype, out_offset + n, static_cast<float>(acc));
  }
}

void load_row(const void* x, DType dtype, std::int64_t offset, std::vector<double>& row) {
  for (std::size_t k = 0; k < row.size(); ++k) {
    row[k] = load_float(x, dtype, offset + static_cast<std::int64_t>(k));
  }
}

}  // namespace

void linear(const detail::LinearArgs& a) {
  std::vector<double> x_row(static_cast<std::size_t>(a.w.k));
  std::vector<float> w_row(static_cast<std::size_t>(a.w.k));
  for (std::int64_t m = 0; m < a.m; ++m) {
    load_row(a.x, a.x_dtype, m * a.w.k, x_row);
    dot_rows(a.w, 0, x_row, w_row, a.out, a.x_dtype, m * a.w.n);
  }
}

void gather_linear(const detail::GatherLinearArgs& a) {
  // Expert order: pair p's output row is its place in the pairs sorted by expert, stably.
  const std::int64_t pairs = a.tokens * a.topk;
  std::vector<std::int64_t> row_of(static_cast<std::size_t>(pairs));
  if (a.order_offsets != nullptr) {
    std::int64_t place = 0;
    for (std::int64_t e = 0; e < a.w.experts; ++e) {
      a.order_offsets[e] = static_cast<std::int32_t>(place);
      for (std::int64_t p = 0; p < pairs; ++p) {
        if (load_index(a.indices, a.index_dtype, p) != e) continue;
        a.order_perm[place] = static_cast<std::int32_t>(p);
        row_of[static_cast<std::size_t>(p)] = place++;
      }
    }
    a.order_offsets[a.w.experts] = static_cast<std::int32_t>(place);
  }
  std::vector<double> x_row(static_cast<std::size_t>(a.w.k));
  std::vector<float> w_row(static_cast<std::size_t>(a.w.k));
  for (std::int64_t t = 0; t < a.tokens; ++t) {
    for (std::int64_t s = 0; s < a.topk; ++s) {
      const std::int64_t slot = t * a.topk + s;
      const std::int64_t expert = load_index(a.indices, a.index_dtype, slot);
      const std::int64_t row =
          a.order_offsets != nullptr ? row_of[static_cast<std::size_t>(slot)] : slot;
      load_row(a.x, a.x_dtype, (a.x_per_slot ? slot : t) * a.w.k, x_row);
      dot_rows(a.w, expert, x_row, w_row, a.out, a.x_dtype, row * a.w.n);
    }
  }
}

}  // namespace mxfp4::reference
