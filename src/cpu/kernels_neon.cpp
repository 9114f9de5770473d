// The NEON kernel table (AArch64 Advanced SIMD, part of the architecture's baseline, so this file
// needs no target flags and the table needs no run-time detection). Built only for AArch64
// (CMakeLists.txt).
//
// Decoding: an E2M1 code's f32 value has zeros in its low 16 bits, so two byte tables
// (vqtbl1q_u8) give the upper half of its bits -- the value as a bf16 -- and a widening shift
// makes it an f32, exactly. Times the block's E8M0 scale (e8m0_decode: subnormal 2^-127 and NaN
// included) it is the reference's decoded weight, bit for bit.
//
// quantize_rows is generic::quantize_rows; dequantize_rows and matmul_rows decode with NEON.
#include <arm_neon.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/kernels_generic.hpp"

namespace mxfp4::cpu {

namespace {

// Bits 31-24 and 23-16 of kE2M1Values[code] as f32.
constexpr std::uint8_t kE2M1High[16] = {0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40,
                                        0x80, 0xBF, 0xBF, 0xBF, 0xC0, 0xC0, 0xC0, 0xC0};
constexpr std::uint8_t kE2M1Low[16] = {0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0,
                                       0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0};

// One block: 16 packed bytes -> 32 decoded f32 weights in element order (low nibble first).
inline void decode_block(const std::uint8_t* packed, std::uint8_t scale_byte, float* out) {
  const uint8x16_t high_table = vld1q_u8(kE2M1High);
  const uint8x16_t low_table = vld1q_u8(kE2M1Low);
  const uint8x16_t bytes = vld1q_u8(packed);
  // Element order: byte j holds elements 2j (low nibble) and 2j + 1 (high nibble).
  const uint8x16_t lo_codes = vandq_u8(bytes, vdupq_n_u8(0x0F));
  const uint8x16_t hi_codes = vshrq_n_u8(bytes, 4);
  const uint8x16_t codes0 = vzip1q_u8(lo_codes, hi_codes);  // elements 0..15
  const uint8x16_t codes1 = vzip2q_u8(lo_codes, hi_codes);  // elements 16..31
  const float32x4_t scale = vdupq_n_f32(e8m0_decode(scale_byte));
  const uint8x16_t codes[2] = {codes0, codes1};
  for (int h = 0; h < 2; ++h) {
    const uint8x16_t hb = vqtbl1q_u8(high_table, codes[h]);
    const uint8x16_t lb = vqtbl1q_u8(low_table, codes[h]);
    // Little-endian 16-bit lanes: low byte first.
    const uint16x8_t half0 = vreinterpretq_u16_u8(vzip1q_u8(lb, hb));  // elements 0..7
    const uint16x8_t half1 = vreinterpretq_u16_u8(vzip2q_u8(lb, hb));  // elements 8..15
    float* o = out + 16 * h;
    vst1q_f32(o + 0, vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(half0), 16)), scale));
    vst1q_f32(o + 4, vmulq_f32(vreinterpretq_f32_u32(vshll_high_n_u16(half0, 16)), scale));
    vst1q_f32(o + 8, vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(half1), 16)), scale));
    vst1q_f32(o + 12, vmulq_f32(vreinterpretq_f32_u32(vshll_high_n_u16(half1, 16)), scale));
  }
}

void dequantize_rows(const detail::DequantizeArgs& a, std::int64_t r0, std::int64_t r1) {
  const std::int64_t blocks_per_row = a.k / kBlockSize;
  float v[kBlockSize];
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      const std::int64_t base = r * a.k + b * kBlockSize;
      const std::uint8_t* packed = a.blocks + r * (a.k / 2) + b * kBlockBytes;
      const std::uint8_t scale = a.scales[r * blocks_per_row + b];
      if (a.out_dtype == DType::f32) {
        decode_block(packed, scale, static_cast<float*>(a.out) + base);
        continue;
      }
      decode_block(packed, scale, v);
      for (int i = 0; i < kBlockSize; ++i)
        detail::store_float(a.out, a.out_dtype, base + i, v[i]);
    }
  }
}

// sum_c x[c] * w[c] over k (a multiple of 32) with 16 lanes of partial sums (four f32x4
// accumulators, element c in lane c % 16), then the lanes added in a fixed order: the result
// depends only on x, w and k.
inline float dot(const float* x, const float* w, std::int64_t k) {
  float32x4_t acc0 = vdupq_n_f32(0.0f);
  float32x4_t acc1 = vdupq_n_f32(0.0f);
  float32x4_t acc2 = vdupq_n_f32(0.0f);
  float32x4_t acc3 = vdupq_n_f32(0.0f);
  for (std::int64_t c = 0; c < k; c += 16) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(x + c), vld1q_f32(w + c));
    acc1 = vfmaq_f32(acc1, vld1q_f32(x + c + 4), vld1q_f32(w + c + 4));
    acc2 = vfmaq_f32(acc2, vld1q_f32(x + c + 8), vld1q_f32(w + c + 8));
    acc3 = vfmaq_f32(acc3, vld1q_f32(x + c + 12), vld1q_f32(w + c + 12));
  }
  return vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
}

// Each weight row is decoded once per call into f32 and then multiplied by every activation row
// of the batch; the same code path for every count_hint.
void matmul_rows(const RowBatch& rows, const detail::WeightArgs& w, std::int64_t expert,
                 std::int64_t n0, std::int64_t n1) {
  const std::int64_t k = w.k;
  const std::int64_t blocks_per_row = k / kBlockSize;
  std::vector<float> xf(static_cast<std::size_t>(rows.count * k));
  for (std::int64_t i = 0; i < rows.count; ++i) {
    float* dst = xf.data() + i * k;
    if (rows.dtype == DType::f32) {
      const auto* src = static_cast<const float*>(rows.x_rows[i]);
      for (std::int64_t c = 0; c < k; c += 4)
        vst1q_f32(dst + c, vld1q_f32(src + c));
      continue;
    }
    for (std::int64_t c = 0; c < k; ++c)
      dst[c] = detail::load_float(rows.x_rows[i], rows.dtype, c);
  }
  std::vector<float> wrow(static_cast<std::size_t>(k));
  for (std::int64_t n = n0; n < n1; ++n) {
    const std::int64_t flat = expert * w.n + n;
    for (std::int64_t b = 0; b < blocks_per_row; ++b) {
      decode_block(w.blocks + flat * (k / 2) + b * kBlockBytes, w.scales[flat * blocks_per_row + b],
                   wrow.data() + b * kBlockSize);
    }
    const float bias = w.bias != nullptr ? detail::load_float(w.bias, w.bias_dtype, flat) : 0.0f;
    for (std::int64_t i = 0; i < rows.count; ++i) {
      const float acc = dot(xf.data() + i * k, wrow.data(), k);
      if (rows.dtype == DType::f32) {
        static_cast<float*>(rows.out_rows[i])[n] = acc + bias;
      } else {
        detail::store_float(rows.out_rows[i], rows.dtype, n, acc + bias);
      }
    }
  }
}

}  // namespace

const Kernels& neon_kernels() {
  static const Kernels table{Isa::neon,        "neon",       &generic::quantize_rows,
                             &dequantize_rows, &matmul_rows, &generic::matmul_rows_int8};
  return table;
}

}  // namespace mxfp4::cpu
