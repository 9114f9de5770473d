// The int8-activation product (cpu_kernels.hpp, "int8 activations") with AVX-512 VNNI: vpdpbusd
// multiplies the weight codes, made unsigned (2 * E2M1 value + 12, from a vpshufb table), by the
// signed int8 activations and adds each lane's products into its int32 sum; the lane's
// offset_sum takes the +12 back out. The 16 f32 accumulators of the definition are the 16 lanes
// of one register (64 weight bytes per step). The lane scale x_scale * 2^(e - 128) is one
// vscalefps (exact like the f32 product: a power of two, rounded once; NaN for e = 0xFF).
// Compiled for the avx512 table's features plus AVX512_VNNI; the avx512 table uses it when the
// CPU has VNNI (avx512vnni_usable).
//
// No inline function of the project's headers is called here (see kernels_avx512.cpp's note).

// GCC 12: _mm512_undefined_* inside the intrinsics trips -Wmaybe-uninitialized (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

#include "cpu/cpu_kernels.hpp"

#include "cpu/isa_target.hpp"

MXFP4_ISA_TARGET_BEGIN

namespace mxfp4::cpu {
namespace {

using std::int64_t;
using std::uint8_t;

// Rows of x that share one decoded weight register (8 accumulators + temporaries of 32 zmm).
constexpr int kRowGroup = 8;

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

template <int R>
void column_times_rows(const uint8_t* codes, const uint8_t* scales, int64_t k,
                       const std::int8_t* const* x, float* const* out, int64_t col) {
  const int64_t half = k / 2;
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  // vpshufb index that puts scale byte j (j = the 128-bit lane) in the low byte of each dword.
  const __m512i spread = _mm512_set_epi32(-253, -253, -253, -253, -254, -254, -254, -254, -255,
                                          -255, -255, -255, -256, -256, -256, -256);
  const __m512 nan = _mm512_set1_ps(__builtin_nanf(""));
  __m512 acc[R];
  for (int r = 0; r < R; ++r)
    acc[r] = _mm512_setzero_ps();
  for (int64_t o = 0; o < half; o += 64) {
    const int64_t bytes = std::min<int64_t>(64, half - o);  // a multiple of 16
    const __mmask64 byte_mask = bytes == 64 ? ~__mmask64{0} : (__mmask64{1} << bytes) - 1;
    const auto lane_mask = static_cast<__mmask16>((1u << (bytes / 4)) - 1u);
    const auto block_mask = static_cast<__mmask16>((1u << (bytes / 16)) - 1u);
    const __m512i w = _mm512_maskz_loadu_epi8(byte_mask, codes + o);
    const __m512i w_even = _mm512_shuffle_epi8(lut, _mm512_and_si512(w, nibble));
    const __m512i w_odd =
        _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble));
    // Exponents e - 128 as f32 per lane (NaN where e = 0xFF); absent blocks read 0 (-128).
    const __m128i e4 = _mm_maskz_loadu_epi8(block_mask, scales + o / 16);
    const __m512i e = _mm512_shuffle_epi8(_mm512_broadcastd_epi32(e4), spread);
    __m512 exponent = _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(128)));
    exponent =
        _mm512_mask_mov_ps(exponent, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)), nan);
    for (int r = 0; r < R; ++r) {
      const std::int8_t* row = x[r];
      const __m512i x_even = _mm512_maskz_loadu_epi8(byte_mask, row + o);
      const __m512i x_odd = _mm512_maskz_loadu_epi8(byte_mask, row + half + o);
      __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w_even, x_even);
      v = _mm512_dpbusd_epi32(v, w_odd, x_odd);
      v = _mm512_sub_epi32(v, _mm512_maskz_loadu_epi32(lane_mask, row + k + o));
      const __m512 x_scale =
          _mm512_maskz_loadu_ps(lane_mask, reinterpret_cast<const float*>(row + k + half) + o / 4);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_scalef_ps(x_scale, exponent), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r)
    out[r][col] = reduce_lanes(acc[r]);
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

void matmul_rows_int8_avx512vnni(const Int8RowBatch& rows, const detail::WeightArgs& w,
                                 int64_t expert, int64_t n0, int64_t n1) {
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
      case 4:
        columns_times_rows<4>(rows, r0, w, expert, n0, n1);
        break;
      case 5:
        columns_times_rows<5>(rows, r0, w, expert, n0, n1);
        break;
      case 6:
        columns_times_rows<6>(rows, r0, w, expert, n0, n1);
        break;
      case 7:
        columns_times_rows<7>(rows, r0, w, expert, n0, n1);
        break;
      default:
        columns_times_rows<8>(rows, r0, w, expert, n0, n1);
        break;
    }
  }
}

}  // namespace mxfp4::cpu

MXFP4_ISA_TARGET_END
