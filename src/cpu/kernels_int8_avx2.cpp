// The int8-activation product (cpu_kernels.hpp, "int8 activations") with AVX2: vpmaddubsw
// multiplies the weight codes, made unsigned (2 * E2M1 value + 12, from a vpshufb table), by the
// signed int8 activations; vpmaddwd adds pairs into the int32 lane sums; the lane's offset_fix
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

// 32 weight bytes at `o` (8 lanes, 2 blocks; 16 bytes and 1 block when not `full`) times R rows,
// into acc[r] (the accumulators of those 8 lanes). The rows' sections are zero padded to 64
// bytes, so their loads are always whole.
template <int R>
inline void half_step(const uint8_t* codes, const uint8_t* scales, int64_t section,
                      const std::int8_t* const* x, int64_t o, bool full, __m256* acc) {
  const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                       12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const float* half_scale = half_scale_table();
  const __m256i w = load_bytes(codes + o, full);
  const __m256i w_even = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, nibble));
  const __m256i w_odd = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble));
  const float s0 = half_scale[scales[o / 16]];
  const float s1 = full ? half_scale[scales[o / 16 + 1]] : 0.0f;
  const __m256 w_scale = _mm256_setr_m128(_mm_set1_ps(s0), _mm_set1_ps(s1));
  for (int r = 0; r < R; ++r) {
    const std::int8_t* row = x[r];
    const auto load = [&](int64_t at) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + at));
    };
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w_even, load(o)),
                                           _mm256_maddubs_epi16(w_odd, load(section + o)));
    // offset_fix and lane_scale of lanes o / 4 ..: byte o of their sections.
    const __m256i v = _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), load(2 * section + o));
    const __m256 x_scale = _mm256_castsi256_ps(load(3 * section + o));
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(x_scale, w_scale), acc[r]);
  }
}

// Column `col` of the weight times R quantized rows; sums into out[r][col].
template <int R>
void column_times_rows(const uint8_t* codes, const uint8_t* scales, int64_t k,
                       const std::int8_t* const* x, float* const* out, int64_t col) {
  const int64_t half = k / 2;
  const int64_t section = int8_section_bytes(k);
  __m256 acc_lo[R], acc_hi[R];  // lanes 0-7 and 8-15 of each 64-byte step
  for (int r = 0; r < R; ++r)
    acc_lo[r] = acc_hi[r] = _mm256_setzero_ps();
  for (int64_t o = 0; o < half; o += 64) {
    const int64_t left = half - o;  // 16, 32, 48 or >= 64
    half_step<R>(codes, scales, section, x, o, left >= 32, acc_lo);
    if (left > 32) half_step<R>(codes, scales, section, x, o + 32, left >= 64, acc_hi);
  }
  for (int r = 0; r < R; ++r)
    out[r][col] = reduce_lanes(acc_lo[r], acc_hi[r]);
}

}  // namespace

void matmul_rows_int8_avx2(const Int8RowBatch& rows, const detail::WeightArgs& w, int64_t expert,
                           int64_t n0, int64_t n1) {
  const int64_t k = w.k;
  // Each column's weights stay in L1 while every row group passes over them.
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t flat = expert * w.n + n;
    const uint8_t* codes = w.blocks + flat * (k / 2);
    const uint8_t* scales = w.scales + flat * (k / 32);
    for (int64_t r0 = 0; r0 < rows.count; r0 += kRowGroup) {
      const std::int8_t* const* x = rows.x_rows + r0;
      float* const* out = rows.out_rows + r0;
      switch (std::min<int64_t>(kRowGroup, rows.count - r0)) {
        case 1:
          column_times_rows<1>(codes, scales, k, x, out, n - n0);
          break;
        case 2:
          column_times_rows<2>(codes, scales, k, x, out, n - n0);
          break;
        case 3:
          column_times_rows<3>(codes, scales, k, x, out, n - n0);
          break;
        default:
          column_times_rows<4>(codes, scales, k, x, out, n - n0);
          break;
      }
    }
  }
}

}  // namespace mxfp4::cpu

MXFP4_ISA_TARGET_END
