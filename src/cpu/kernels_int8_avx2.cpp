// The int8-activation product (cpu_kernels.hpp, "int8 activations") with AVX2: vpmaddubsw
// multiplies the weight codes, made unsigned (2 * E2M1 value + 12, from a vpshufb table), by the
// signed int8 activations; vpmaddwd adds pairs into the int32 lane sums; the lane's offset_sum
// takes the +12 back out. The 16 f32 accumulators of the definition are two 8-lane registers
// (lanes 0-7 and 8-15 of every 64 weight bytes). Compiled for AVX2, FMA, F16C, BMI2 (the avx2
// table's list) and used by the avx2 table, and by the avx512 table on CPUs without AVX-512 VNNI.
//
// No inline function of the project's headers is called here (see kernels_avx512.cpp's note).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/cpu_kernels.hpp"

#include "cpu/isa_target.hpp"

MXFP4_ISA_TARGET_BEGIN

namespace mxfp4::cpu {
namespace {

using std::int64_t;
using std::uint32_t;
using std::uint8_t;

// Rows of x that share one decoded weight register (4 rows x 2 accumulators + temporaries fit
// the 16 ymm registers).
constexpr int kRowGroup = 4;

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// 2^(e - 128) for every E8M0 byte e (NaN for 0xFF): the weight scale of the doubled codes.
struct HalfScaleTable {
  float v[256];
  HalfScaleTable() {
    v[0] = float_of(0x00200000u);  // 2^-128, subnormal
    v[1] = float_of(0x00400000u);  // 2^-127, subnormal
    for (uint32_t e = 2; e < 255; ++e)
      v[e] = float_of((e - 1) << 23);
    v[255] = float_of(0x7FC00000u);
  }
};
const float* half_scale_table() {
  static const HalfScaleTable table;
  return table.v;
}

// 16 lanes (acc_lo: 0-7, acc_hi: 8-15) -> one sum: l + l+8, then + l+4, + l+2, + l+1.
float reduce_lanes(__m256 acc_lo, __m256 acc_hi) {
  const __m256 s8 = _mm256_add_ps(acc_lo, acc_hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

// 32 bytes at p, or 16 bytes and 16 zeros when `full` is false.
__m256i load_bytes(const void* p, bool full) {
  if (full) return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  return _mm256_inserti128_si256(_mm256_setzero_si256(),
                                 _mm_loadu_si128(static_cast<const __m128i*>(p)), 0);
}
__m256 load_floats(const float* p, bool full) {
  if (full) return _mm256_loadu_ps(p);
  return _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_loadu_ps(p), 0);
}

// Column `flat` of the weight times R quantized rows; sums into out[r][col].
template <int R>
void column_times_rows(const uint8_t* codes, const uint8_t* scales, int64_t k,
                       const std::int8_t* const* x, float* const* out, int64_t col) {
  const int64_t half = k / 2;
  const float* half_scale = half_scale_table();
  const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                       12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r)
    acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  // 32 weight bytes (8 lanes, 2 blocks) per step; the last step of a row may have 16.
  for (int64_t o = 0; o < half; o += 32) {
    const bool full = half - o >= 32;
    const int h = static_cast<int>((o / 32) & 1);  // which 8 of the 16 accumulators
    const __m256i w = load_bytes(codes + o, full);
    const __m256i w_even = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, nibble));
    const __m256i w_odd =
        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble));
    const float s0 = half_scale[scales[o / 16]];
    const float s1 = full ? half_scale[scales[o / 16 + 1]] : 0.0f;
    const __m256 w_scale = _mm256_setr_m128(_mm_set1_ps(s0), _mm_set1_ps(s1));
    for (int r = 0; r < R; ++r) {
      const std::int8_t* row = x[r];
      const __m256i x_even = load_bytes(row + o, full);
      const __m256i x_odd = load_bytes(row + half + o, full);
      const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w_even, x_even),
                                             _mm256_maddubs_epi16(w_odd, x_odd));
      const __m256i offset_sum = load_bytes(row + k + o, full);  // int32 [o / 4 ..]
      const __m256i v = _mm256_sub_epi32(_mm256_madd_epi16(pairs, ones), offset_sum);
      const __m256 x_scale =
          load_floats(reinterpret_cast<const float*>(row + k + half) + o / 4, full);
      acc[r][h] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(x_scale, w_scale), acc[r][h]);
    }
  }
  for (int r = 0; r < R; ++r)
    out[r][col] = reduce_lanes(acc[r][0], acc[r][1]);
}

template <int R>
void columns_times_rows(const Int8RowBatch& rows, int64_t r0, const detail::WeightArgs& w,
                        int64_t expert, int64_t n0, int64_t n1) {
  const int64_t k = w.k;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t flat = expert * w.n + n;
    column_times_rows<R>(w.blocks + flat * (k / 2), w.scales + flat * (k / 32), k, rows.x_rows + r0,
                         rows.out_rows + r0, n - n0);
  }
}

}  // namespace

void matmul_rows_int8_avx2(const Int8RowBatch& rows, const detail::WeightArgs& w, int64_t expert,
                           int64_t n0, int64_t n1) {
  for (int64_t r0 = 0; r0 < rows.count; r0 += kRowGroup) {
    switch (std::min<int64_t>(kRowGroup, rows.count - r0)) {
      case 1:
        columns_times_rows<1>(rows, r0, w, expert, n0, n1);
        break;
      case 2:
        columns_times_rows<2>(rows, r0, w, expert, n0, n1);
        break;
      case 3:
        columns_times_rows<3>(rows, r0, w, expert, n0, n1);
        break;
      default:
        columns_times_rows<4>(rows, r0, w, expert, n0, n1);
        break;
    }
  }
}

}  // namespace mxfp4::cpu

MXFP4_ISA_TARGET_END
