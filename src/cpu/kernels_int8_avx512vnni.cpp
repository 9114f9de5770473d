// The int8-activation product (cpu_kernels.hpp, "int8 activations") with AVX-512 VNNI: vpdpbusd
// multiplies the weight codes, made unsigned (2 * E2M1 value + 12, from a vpshufb table), by the
// signed int8 activations and adds each lane's products into its int32 sum, which starts at the
// lane's offset_fix (taking the +12 back out). The 16 f32 accumulators of the definition are the 16
// lanes of one register (64 weight bytes per step). The lane scale x_scale * 2^(e - 128) is one
// vscalefps (exact like the f32 product: a power of two, rounded once; NaN for e = 0xFF).
// Compiled for the avx512 table's features plus AVX512_VNNI; the avx512 table uses it when the
// CPU has VNNI (avx512vnni_usable).
//
// No inline function of the project's headers is called here (see kernels_avx512.cpp's note).

// First, before any header that might include <immintrin.h> without the pragmas.
#include "cpu/immintrin_avx512.hpp"

#include <algorithm>
#include <cstdint>

#include "cpu/cpu_kernels.hpp"

#include "cpu/isa_target.hpp"

MXFP4_ISA_TARGET_BEGIN

namespace mxfp4::cpu {
namespace {

using std::int64_t;
using std::uint8_t;

// Rows of x that share one decoded weight tile.
constexpr int kRowGroup = 4;

// 16 lanes -> one sum: l + l+8, then + l+4, + l+2, + l+1.
float reduce_lanes(__m512 acc) {
  const __m256 s8 =
      _mm256_add_ps(_mm512_castps512_ps256(acc),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

// C columns of the weight (starting at col) times R quantized rows, into out[r][col + c]: the
// decoded weights are shared by the R rows, each row's loads by the C columns.
template <int R, int C>
void tile(const detail::WeightArgs& w, int64_t flat0, const std::int8_t* const* x,
          float* const* out, int64_t col) {
  // vpermb reads 6 index bits: the 16-entry table of 2 * E2M1 value + 12, four times over, so
  // neither the low nibble nor the shifted high one needs masking.
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m512 nan = _mm512_set1_ps(__builtin_nanf(""));
  const __m512i lane_block =  // lane l of a 64-byte step belongs to its block l / 4
      _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const int64_t k = w.k;
  const int64_t half = k / 2;
  const int64_t section = int8_section_bytes(k);
  const uint8_t* codes[C];
  const uint8_t* scales[C];
  for (int c = 0; c < C; ++c) {
    codes[c] = w.blocks + (flat0 + c) * half;
    scales[c] = w.scales + (flat0 + c) * (k / 32);
  }
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      acc[r][c] = _mm512_setzero_ps();
  // 16 blocks (4 steps of 64 bytes) share one conversion of their scale bytes.
  for (int64_t g = 0; g < half; g += 256) {
    const auto block_mask = static_cast<__mmask16>(
        _bzhi_u32(0xFFFFu, static_cast<unsigned>(std::min<int64_t>(16, (half - g) / 16))));
    __m512 exponents[C];
    for (int c = 0; c < C; ++c) {
      const __m512i e = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(block_mask, scales[c] + g / 16));
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(128)));
      exponents[c] = _mm512_mask_mov_ps(f, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)), nan);
    }
    for (int64_t o = g; o < std::min(half, g + 256); o += 64) {
      // The weight's last step may hold 16, 32 or 48 bytes: the rest reads as zeros, and the
      // rows' padding is zero, so those lanes add fma(0, 0, acc) = acc (acc is never -0).
      const __mmask64 byte_mask =
          _bzhi_u64(~0ull, static_cast<unsigned>(std::min<int64_t>(64, half - o)));
      const __m512i pick =
          _mm512_add_epi32(lane_block, _mm512_set1_epi32(static_cast<int>((o - g) / 16)));
      __m512i w_even[C], w_odd[C];
      __m512 exponent[C];
      for (int c = 0; c < C; ++c) {
        const __m512i b = _mm512_maskz_loadu_epi8(byte_mask, codes[c] + o);
        w_even[c] = _mm512_permutexvar_epi8(b, lut);
        w_odd[c] = _mm512_permutexvar_epi8(_mm512_srli_epi16(b, 4), lut);
        exponent[c] = _mm512_permutexvar_ps(pick, exponents[c]);
      }
      for (int r = 0; r < R; ++r) {
        const std::int8_t* row = x[r];
        const __m512i x_even = _mm512_loadu_si512(row + o);
        const __m512i x_odd = _mm512_loadu_si512(row + section + o);
        // offset_fix and lane_scale of lanes o / 4 ..: byte o of their sections.
        const __m512i offset_fix = _mm512_loadu_si512(row + 2 * section + o);
        const __m512 x_scale = _mm512_loadu_ps(row + 3 * section + o);
        for (int c = 0; c < C; ++c) {
          __m512i v = _mm512_dpbusd_epi32(offset_fix, w_even[c], x_even);
          v = _mm512_dpbusd_epi32(v, w_odd[c], x_odd);
          acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_scalef_ps(x_scale, exponent[c]),
                                      acc[r][c]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      out[r][col + c] = reduce_lanes(acc[r][c]);
}

// C columns (the weight's columns flat0 .. flat0 + C - 1, output columns col ..) times every
// row of the batch, 4 rows at a time: the C columns' weights stay in L1 between row groups.
template <int C>
void columns_times_batch(const Int8RowBatch& rows, const detail::WeightArgs& w, int64_t flat0,
                         int64_t col) {
  for (int64_t r0 = 0; r0 < rows.count; r0 += kRowGroup) {
    const std::int8_t* const* x = rows.x_rows + r0;
    float* const* out = rows.out_rows + r0;
    switch (std::min<int64_t>(kRowGroup, rows.count - r0)) {
      case 1:
        tile<1, C>(w, flat0, x, out, col);
        break;
      case 2:
        tile<2, C>(w, flat0, x, out, col);
        break;
      case 3:
        tile<3, C>(w, flat0, x, out, col);
        break;
      default:
        tile<4, C>(w, flat0, x, out, col);
        break;
    }
  }
}

// Tiles of C columns, then the remaining columns one at a time.
template <int C>
void columns_in_tiles(const Int8RowBatch& rows, const detail::WeightArgs& w, int64_t expert,
                      int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + C <= n1; n += C)
    columns_times_batch<C>(rows, w, expert * w.n + n, n - n0);
  for (; n < n1; ++n)
    columns_times_batch<1>(rows, w, expert * w.n + n, n - n0);
}

}  // namespace

void matmul_rows_int8_avx512vnni(const Int8RowBatch& rows, const detail::WeightArgs& w,
                                 int64_t expert, int64_t n0, int64_t n1) {
  // R * C accumulators + 3 C registers of decoded weights and exponents: 4 columns for up to 2
  // rows, 3 for row groups of 3 or 4, within the 32 zmm registers.
  if (rows.count <= 2) {
    columns_in_tiles<4>(rows, w, expert, n0, n1);
  } else {
    columns_in_tiles<3>(rows, w, expert, n0, n1);
  }
}

}  // namespace mxfp4::cpu

MXFP4_ISA_TARGET_END
