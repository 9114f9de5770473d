// The avx512 kernel table (cpu_kernels.hpp). Its functions are compiled for AVX-512 F, BW, VL, DQ,
// VBMI plus AVX2, FMA, F16C, BMI2 (a target pragma: isa_target.hpp, list in CMakeLists.txt); the
// backend picks it at run time when CPUID and XGETBV report all of them.
//
// Everything below has internal linkage and calls no inline function of the project's headers at
// run time: an inline function instantiated here would be compiled with AVX-512 enabled, and the
// linker may keep that copy for callers in baseline translation units. The scalar helpers that
// restate format.hpp / dtype.hpp (E8M0 decoding, f32 -> bf16 rounding, the mistral.rs exponent)
// are checked against those headers by tests/test_cpu_avx512.cpp.
//
// matmul_rows, two paths chosen by count_hint (each output element's value depends only on the
// inputs, K and count_hint; never on [n0, n1) or on which rows a call gets):
// - count_hint <= kSmallRows (8, "decode", memory bound): the weight is streamed once, several
//   rows at a time; each block is decoded once (a vpermps from the 16-entry table of its scale:
//   E2M1 value x scale, exact) and used for every row of x. Per output element: 16-lane f32
//   accumulators fed by FMA block by block in k order -- for count_hint <= 2 two of them (the
//   block's even elements into one, its odd elements into the other), else one (even, then odd)
//   -- then the two added, then a fixed tree over the 16 lanes, then + bias.
// - otherwise ("prefill", compute bound): a blocked GEMM. A panel of W (kPanelCols columns x
//   kChunk k) is decoded to f32 once into a thread-local buffer, transposed so that each k holds
//   64 consecutive columns; a 6 x 64 FMA micro-kernel runs over the rows of x, read in place
//   (bf16 / f16 rows are first converted to f32). Per output element: one f32 accumulator fed by
//   FMA for k = 0, 1, ..., K-1 in order (kept in a thread-local f32 tile between k chunks), then
//   + bias.
// Outputs are rounded to nearest even (bf16 as dtype.hpp's f32_to_bf16, f16 by vcvtps2ph).

// First, before any header that might include <immintrin.h> without the pragmas.
#include "cpu/immintrin_avx512.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "cpu/cpu_features.hpp"
#include "cpu/cpu_kernels.hpp"

#include "cpu/isa_target.hpp"

MXFP4_ISA_TARGET_BEGIN

namespace mxfp4::cpu {
namespace {

using detail::DequantizeArgs;
using detail::QuantizeArgs;
using detail::WeightArgs;
using std::int64_t;
using std::uint16_t;
using std::uint32_t;
using std::uint8_t;

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// ---- Scalar helpers --------------------------------------------------------------------------

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// format.hpp's e8m0_decode: 0xFF is NaN, 0x00 is 2^-127 (a subnormal), else 2^(b - 127).
inline float e8m0_value(uint32_t b) {
  if (b == 0xFFu) return float_of(0x7FC00000u);
  if (b == 0u) return float_of(0x00400000u);
  return float_of(b << 23);
}

// dtype.hpp's f32_to_bf16: round to nearest even, NaN kept quiet.
inline uint16_t bf16_from(float f) {
  const uint32_t u = bits_of(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline float load_scalar(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f16:
      return _cvtsh_ss(static_cast<const uint16_t*>(base)[i]);
    case DType::bf16:
      return float_of(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16);
    default:
      return static_cast<const float*>(base)[i];
  }
}

inline void store_scalar(void* base, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::f16:
      static_cast<uint16_t*>(base)[i] =
          static_cast<uint16_t>(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(v), kRne), 0));
      break;
    case DType::bf16:
      static_cast<uint16_t*>(base)[i] = bf16_from(v);
      break;
    default:
      static_cast<float*>(base)[i] = v;
      break;
  }
}

// The decoded value of every (scale byte, E2M1 code) pair: E2M1 value times the E8M0 scale, the
// same f32 product as format.hpp's mxfp4_decode (so 0xFF rows are NaN, byte 254 overflows to Inf
// for |value| >= 2, byte 0 gives exact subnormals). 16 KiB; a weight touches a few rows of it.
struct DecodeTable {
  alignas(64) float v[256][16];
  DecodeTable() {
    static constexpr float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                        -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    for (uint32_t s = 0; s < 255; ++s) {
      const float scale = e8m0_value(s);
      for (int c = 0; c < 16; ++c)
        v[s][c] = kE2M1[c] * scale;
    }
    // NaN times a value is that NaN (x86 keeps the NaN operand): the quiet NaN of e8m0_decode
    // for every code. Written as bits: the compiler may compute value * NaN as -(|value| * NaN).
    for (int c = 0; c < 16; ++c)
      v[255][c] = float_of(0x7FC00000u);
  }
};
const float* decode_table() {
  static const DecodeTable table;
  return &table.v[0][0];
}

// A 64-byte aligned buffer that only grows: one per thread and purpose, reused across calls.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { release(); }
  template <typename T>
  T* get(std::size_t count) {
    const std::size_t bytes = count * sizeof(T);
    if (bytes > bytes_) {
      release();
      const std::size_t want = std::max<std::size_t>(bytes, 4096);
      data_ = ::operator new (want, std::align_val_t{64});
      bytes_ = want;
    }
    return static_cast<T*>(data_);
  }

 private:
  void release() {
    if (data_ != nullptr) ::operator delete (data_, std::align_val_t{64});
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

thread_local Scratch t_x;      // activations as f32 (both matmul paths)
thread_local Scratch t_xptr;   // row pointers of those activations (prefill)
thread_local Scratch t_panel;  // decoded, transposed weight panel (prefill)
thread_local Scratch t_tiles;  // f32 accumulators between k chunks (prefill)

// ---- Vector helpers --------------------------------------------------------------------------

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// f32 -> bf16 bits as in bf16_from, 16 lanes.
inline __m256i bf16_from(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// Loads and stores of 16 elements of a floating array, converted exactly to / rounded from f32.
template <DType D>
struct Io;
template <>
struct Io<DType::f32> {
  static __m512 load(const void* p, int64_t i) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  }
  static __m512 load(const void* p, int64_t i, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
  }
  static void store(void* p, int64_t i, __m512 v) {
    _mm512_storeu_ps(static_cast<float*>(p) + i, v);
  }
  static void store(void* p, int64_t i, __m512 v, __mmask16 m) {
    _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
  }
};
template <>
struct Io<DType::bf16> {
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 load(const void* p, int64_t i) {
    return widen(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
  }
  static __m512 load(const void* p, int64_t i, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i));
  }
  static void store(void* p, int64_t i, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), bf16_from(v));
  }
  static void store(void* p, int64_t i, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, m, bf16_from(v));
  }
};
template <>
struct Io<DType::f16> {
  static __m512 load(const void* p, int64_t i) {
    return _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
  }
  static __m512 load(const void* p, int64_t i, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i));
  }
  static void store(void* p, int64_t i, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i),
                        _mm512_cvtps_ph(v, kRne));
  }
  static void store(void* p, int64_t i, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, m, _mm512_cvtps_ph(v, kRne));
  }
};

// Transposes a 16 x 16 matrix of 32-bit lanes held in 16 registers: r[i] lane j -> r[j] lane i.
inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c]: rows 4i..4i+3 of column 4L + c in 128-bit lane L.
  __m512 u[16];
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 a88 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 add = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 b88 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 bdd = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(a88, b88, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(a88, b88, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(add, bdd, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(add, bdd, 0xDD);
  }
}

// Sum of the 16 lanes in a fixed order (halves, then quarters, ...).
inline float hsum(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

// ---- dequantize_rows -------------------------------------------------------------------------

template <DType D>
void dequantize_impl(const DequantizeArgs& a, int64_t r0, int64_t r1) {
  const float* table = decode_table();
  const int64_t per_row = a.k / kBlockSize;
  // Dword i of the result holds packed byte i / 2 (of the low or high half of the block); the
  // odd dwords are shifted right by 4 to bring the high nibble down; vpermps reads bits 3:0.
  alignas(64) uint8_t lo_idx[64], hi_idx[64];
  alignas(64) uint32_t shifts[16];
  for (int i = 0; i < 64; ++i) {
    lo_idx[i] = static_cast<uint8_t>(i / 8);
    hi_idx[i] = static_cast<uint8_t>(8 + i / 8);
  }
  for (int i = 0; i < 16; ++i)
    shifts[i] = (i & 1) ? 4u : 0u;
  const __m512i ilo = _mm512_load_si512(lo_idx), ihi = _mm512_load_si512(hi_idx);
  const __m512i sh = _mm512_load_si512(shifts);
  for (int64_t b = r0 * per_row; b < r1 * per_row; ++b) {
    const __m512i bytes = _mm512_zextsi128_si512(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.blocks + b * kBlockBytes)));
    const __m512 t = _mm512_load_ps(table + 16 * a.scales[b]);
    const __m512 lo =
        _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_permutexvar_epi8(ilo, bytes), sh), t);
    const __m512 hi =
        _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_permutexvar_epi8(ihi, bytes), sh), t);
    Io<D>::store(a.out, b * kBlockSize, lo);
    Io<D>::store(a.out, b * kBlockSize + 16, hi);
  }
}

void dequantize_rows(const DequantizeArgs& a, int64_t r0, int64_t r1) {
  switch (a.out_dtype) {
    case DType::f16:
      return dequantize_impl<DType::f16>(a, r0, r1);
    case DType::bf16:
      return dequantize_impl<DType::bf16>(a, r0, r1);
    default:
      return dequantize_impl<DType::f32>(a, r0, r1);
  }
}

// ---- quantize_rows ---------------------------------------------------------------------------
//
// 16 blocks at a time, transposed: lane l of T[i] is element i of block l. Every step of
// format.hpp's quantize_block is then a lane-wise operation, and mse's squared errors are summed in
// f64 in element order by a chain of 32 vector adds per candidate (explicit-rounding intrinsics:
// the compiler may not contract them into FMAs, which would change the sums).

// |s| rounded to the E2M1 grid (ties to even, above 6 saturated), with the sign bit of s: in
// [0, 2) the grid step is 0.5, in [2, 4) 1, from 4 on 2; adding and subtracting
// C = 2^(22, 23 or 24) rounds to that step exactly.
inline __m512 e2m1_round(__m512 s) {
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512i abs_bits = _mm512_andnot_si512(sign, _mm512_castps_si512(s));
  __m512i c = _mm512_add_epi32(_mm512_and_si512(abs_bits, _mm512_set1_epi32(0x7F800000)),
                               _mm512_set1_epi32(22 << 23));
  c = _mm512_min_epu32(_mm512_max_epu32(c, _mm512_set1_epi32(149 << 23)),
                       _mm512_set1_epi32(151 << 23));
  const __m512 cf = _mm512_castsi512_ps(c);
  const __m512 a = _mm512_castsi512_ps(abs_bits);
  const __m512 r = _mm512_min_ps(_mm512_sub_ps(_mm512_add_ps(a, cf), cf), _mm512_set1_ps(6.0f));
  // r | (s & sign)
  return _mm512_castsi512_ps(
      _mm512_ternarylogic_epi32(_mm512_castps_si512(r), _mm512_castps_si512(s), sign, 0xF8));
}

// E2M1 code of a value on the grid (e2m1_round's result, or mistral.rs' rounded value).
inline __m512i e2m1_code(__m512 r) {
  const __m512i table = _mm512_setr_epi32(0, 1, 2, 3, 4, 0, 5, 0, 6, 0, 0, 0, 7, 0, 0, 0);
  const __m512i ri = _mm512_castps_si512(r);
  const __m512 twice = _mm512_castsi512_ps(_mm512_add_epi32(
      _mm512_and_si512(ri, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(1 << 23)));
  const __m512i m = _mm512_permutexvar_epi32(_mm512_cvttps_epi32(twice), table);
  return _mm512_or_si512(m, _mm512_and_si512(_mm512_srli_epi32(ri, 28), _mm512_set1_epi32(8)));
}

// mistral.rs' element rounding (e2m1_encode_mistralrs): midpoints away from zero, the sign only
// for s < 0. Returns the code.
inline __m512i e2m1_code_mistralrs(__m512 s) {
  const __m512 a = _mm512_abs_ps(s);
  const __m512i one = _mm512_set1_epi32(1);
  __m512i m = _mm512_setzero_si512();
  static constexpr float kEdges[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  for (const float edge : kEdges)
    m = _mm512_mask_add_epi32(m, _mm512_cmp_ps_mask(a, _mm512_set1_ps(edge), _CMP_GE_OQ), m, one);
  const __mmask16 neg = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_or_epi32(m, neg, m, _mm512_set1_epi32(8));
}

// 2^(-e) as the two factors of format.hpp's scale_by_pow2 (neg_e = -e in [-127, 127]):
// x * f1 * f2, in that order, with half = neg_e / 2 truncated toward zero.
struct Pow2Factors {
  __m512 f1, f2;
};
inline Pow2Factors pow2_factors(__m512i neg_e) {
  const __m512i half = _mm512_srai_epi32(_mm512_add_epi32(neg_e, _mm512_srli_epi32(neg_e, 31)), 1);
  const __m512i bias = _mm512_set1_epi32(127);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(half, bias), 23)),
          _mm512_castsi512_ps(
              _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(neg_e, half), bias), 23))};
}

// The E8M0 value of finite scale bytes b in [0, 254] (byte 0 is 2^-127).
inline __m512 e8m0_values(__m512i b) {
  const __m512i v = _mm512_slli_epi32(b, 23);
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(
      v, _mm512_cmpeq_epi32_mask(b, _mm512_setzero_si512()), _mm512_set1_epi32(0x00400000)));
}

// Adds the squared errors (v - q)^2 of 16 lanes to two f64 accumulators (lanes 0-7, 8-15).
inline void add_squared_error(__m512d vlo, __m512d vhi, __m512 q, __m512d& lo, __m512d& hi) {
  const __m512d dlo = _mm512_sub_round_pd(vlo, _mm512_cvtps_pd(_mm512_castps512_ps256(q)), kRne);
  const __m512d dhi = _mm512_sub_round_pd(vhi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(q, 1)), kRne);
  lo = _mm512_add_round_pd(lo, _mm512_mul_round_pd(dlo, dlo, kRne), kRne);
  hi = _mm512_add_round_pd(hi, _mm512_mul_round_pd(dhi, dhi, kRne), kRne);
}

// format.hpp's exponent_mistralrs_rule (f32 division, f64 log2 of the C library, rounded to f32).
inline int mistralrs_exponent(float amax) {
  const float y = amax / 6.0f;
  if (!(y > 0.0f)) return -127;
  return static_cast<int>(std::floor(static_cast<float>(std::log2(static_cast<double>(y)))));
}

inline bool is_finite_bits(float v) {
  return (bits_of(v) & 0x7FFFFFFFu) < 0x7F800000u;
}

template <DType D, ScaleRule Rule>
int64_t quantize_impl(const QuantizeArgs& a, int64_t r0, int64_t r1) {
  const int64_t per_row = a.k / kBlockSize;
  const int64_t b_end = r1 * per_row;
  int64_t first_non_finite = -1;
  alignas(64) float T[32][16];   // T[i] lane l: element i of block l
  alignas(64) float RA[32][16];  // elements rounded with the first (or only) exponent
  alignas(64) float RB[32][16];  // mse: rounded with the exponent one below
  alignas(64) float amax_lanes[16];
  alignas(64) int32_t e_lanes[16];
  for (int64_t g = r0 * per_row; g < b_end; g += 16) {
    const int64_t nblk = std::min<int64_t>(16, b_end - g);
    const __mmask16 valid = first_lanes(nblk);
    {
      __m512 lo[16], hi[16];
      for (int l = 0; l < 16; ++l) {
        if (l < nblk) {
          lo[l] = Io<D>::load(a.weight, (g + l) * kBlockSize);
          hi[l] = Io<D>::load(a.weight, (g + l) * kBlockSize + 16);
        } else {
          lo[l] = hi[l] = _mm512_setzero_ps();
        }
      }
      transpose16(lo);
      transpose16(hi);
      for (int i = 0; i < 16; ++i) {
        _mm512_store_ps(T[i], lo[i]);
        _mm512_store_ps(T[16 + i], hi[i]);
      }
    }
    // Largest magnitude as bits (integer order is float order for non-negative floats; Inf and
    // NaN come out above the largest finite float).
    __m512i amax = _mm512_setzero_si512();
    for (int i = 0; i < 32; ++i) {
      amax = _mm512_max_epu32(
          amax, _mm512_and_si512(_mm512_load_si512(T[i]), _mm512_set1_epi32(0x7FFFFFFF)));
    }
    const __mmask16 non_finite =
        _mm512_cmpgt_epu32_mask(amax, _mm512_set1_epi32(0x7F7FFFFF)) & valid;
    const __mmask16 zero = _mm512_cmpeq_epi32_mask(amax, _mm512_setzero_si512());
    if (first_non_finite < 0 && non_finite != 0) {
      const int64_t blk = g + __builtin_ctz(non_finite);
      for (int i = 0; i < kBlockSize; ++i) {
        if (!is_finite_bits(load_scalar(a.weight, a.weight_dtype, blk * kBlockSize + i))) {
          first_non_finite = blk * kBlockSize + i;
          break;
        }
      }
    }
    const __m512 amaxf = _mm512_castsi512_ps(amax);
    // floor(log2 amax) and the normalised 23-bit fraction, subnormals included.
    const __m512i fl = _mm512_cvttps_epi32(_mm512_getexp_ps(amaxf));
    const __m512i frac = _mm512_and_si512(
        _mm512_castps_si512(_mm512_getmant_ps(amaxf, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero)),
        _mm512_set1_epi32(0x7FFFFF));
    const __m512i two = _mm512_set1_epi32(2);
    __m512i e;
    if constexpr (Rule == ScaleRule::floor) {
      e = _mm512_sub_epi32(fl, two);
    } else if constexpr (Rule == ScaleRule::ceil || Rule == ScaleRule::mse) {
      e = _mm512_mask_sub_epi32(_mm512_sub_epi32(fl, two),
                                _mm512_cmpgt_epi32_mask(frac, _mm512_set1_epi32(0x400000)), fl,
                                _mm512_set1_epi32(1));
    } else if constexpr (Rule == ScaleRule::even) {
      e = _mm512_mask_sub_epi32(_mm512_sub_epi32(fl, two),
                                _mm512_cmpge_epi32_mask(frac, _mm512_set1_epi32(0x600000)), fl,
                                _mm512_set1_epi32(1));
    } else {
      _mm512_store_ps(amax_lanes, amaxf);
      for (int l = 0; l < 16; ++l) {
        const bool used = ((valid & ~zero & ~non_finite) >> l) & 1u;
        e_lanes[l] = used ? mistralrs_exponent(amax_lanes[l]) : 0;
      }
      e = _mm512_load_si512(e_lanes);
    }
    const __m512i emin = _mm512_set1_epi32(kMinScaleExponent);
    const __m512i emax = _mm512_set1_epi32(kMaxScaleExponent);
    e = _mm512_min_epi32(e, emax);
    // Lanes whose (clamped) exponent exceeds -127 and that hold a finite non-zero block: mse
    // compares e with e - 1 there.
    const __mmask16 normal = static_cast<__mmask16>(valid & ~zero & ~non_finite);
    [[maybe_unused]] const __mmask16 try_lower =
        static_cast<__mmask16>(_mm512_cmpgt_epi32_mask(e, emin) & normal);
    e = _mm512_max_epi32(e, emin);
    // Scale bytes: e + 127; all-zero blocks 127; blocks with NaN / Inf 0xFF.
    __m512i scale = _mm512_add_epi32(e, _mm512_set1_epi32(kScaleBias));
    scale = _mm512_mask_mov_epi32(scale, zero, _mm512_set1_epi32(kZeroBlockScale));
    scale = _mm512_mask_mov_epi32(scale, non_finite, _mm512_set1_epi32(kScaleNaN));
    // neg_e for the element scaling: 127 - scale (0 for zero blocks; any value for non-finite
    // ones, whose codes are discarded, but keep it in range).
    const __m512i neg_a = _mm512_maskz_sub_epi32(static_cast<__mmask16>(~non_finite),
                                                 _mm512_set1_epi32(kScaleBias), scale);
    const Pow2Factors fa = pow2_factors(neg_a);
    [[maybe_unused]] __mmask16 use_b = 0;
    if constexpr (Rule == ScaleRule::mse) {
      const __m512i neg_b = _mm512_add_epi32(neg_a, _mm512_set1_epi32(1));
      const Pow2Factors fb = pow2_factors(_mm512_min_epi32(neg_b, emax));
      const __m512 sa = e8m0_values(scale);
      const __m512 sb = e8m0_values(
          _mm512_max_epi32(_mm512_sub_epi32(scale, _mm512_set1_epi32(1)), _mm512_setzero_si512()));
      __m512d ea_lo = _mm512_setzero_pd(), ea_hi = _mm512_setzero_pd();
      __m512d eb_lo = _mm512_setzero_pd(), eb_hi = _mm512_setzero_pd();
      for (int i = 0; i < 32; ++i) {
        const __m512 v = _mm512_load_ps(T[i]);
        const __m512d vlo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d vhi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        const __m512 ra = e2m1_round(_mm512_mul_ps(_mm512_mul_ps(v, fa.f1), fa.f2));
        const __m512 rb = e2m1_round(_mm512_mul_ps(_mm512_mul_ps(v, fb.f1), fb.f2));
        _mm512_store_ps(RA[i], ra);
        _mm512_store_ps(RB[i], rb);
        add_squared_error(vlo, vhi, _mm512_mul_ps(ra, sa), ea_lo, ea_hi);
        add_squared_error(vlo, vhi, _mm512_mul_ps(rb, sb), eb_lo, eb_hi);
      }
      const __mmask16 lower =
          static_cast<__mmask16>(_mm512_cmp_pd_mask(eb_lo, ea_lo, _CMP_LT_OQ) |
                                 (_mm512_cmp_pd_mask(eb_hi, ea_hi, _CMP_LT_OQ) << 8));
      use_b = static_cast<__mmask16>(lower & try_lower);
      scale = _mm512_mask_sub_epi32(scale, use_b, scale, _mm512_set1_epi32(1));
    }
    // Codes, packed in pairs: P[j] lane l = code(2j) | code(2j + 1) << 4 of block l.
    __m512 packed[16];
    const auto code_of = [&](int i) -> __m512i {
      if constexpr (Rule == ScaleRule::mistralrs) {
        const __m512 v = _mm512_load_ps(T[i]);
        return e2m1_code_mistralrs(_mm512_mul_ps(_mm512_mul_ps(v, fa.f1), fa.f2));
      } else if constexpr (Rule == ScaleRule::mse) {
        return e2m1_code(_mm512_mask_blend_ps(use_b, _mm512_load_ps(RA[i]), _mm512_load_ps(RB[i])));
      } else {
        const __m512 v = _mm512_load_ps(T[i]);
        return e2m1_code(e2m1_round(_mm512_mul_ps(_mm512_mul_ps(v, fa.f1), fa.f2)));
      }
    };
    for (int j = 0; j < 16; ++j) {
      const __m512i p = _mm512_or_si512(code_of(2 * j), _mm512_slli_epi32(code_of(2 * j + 1), 4));
      packed[j] =
          _mm512_castsi512_ps(_mm512_maskz_mov_epi32(static_cast<__mmask16>(~non_finite), p));
    }
    transpose16(packed);
    for (int l = 0; l < nblk; ++l) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a.blocks + (g + l) * kBlockBytes),
                       _mm512_cvtepi32_epi8(_mm512_castps_si512(packed[l])));
    }
    _mm_mask_storeu_epi8(a.scales + g, valid, _mm512_cvtepi32_epi8(scale));
  }
  return first_non_finite;
}

template <DType D>
int64_t quantize_dtype(const QuantizeArgs& a, int64_t r0, int64_t r1) {
  switch (a.rule) {
    case ScaleRule::floor:
      return quantize_impl<D, ScaleRule::floor>(a, r0, r1);
    case ScaleRule::ceil:
      return quantize_impl<D, ScaleRule::ceil>(a, r0, r1);
    case ScaleRule::even:
      return quantize_impl<D, ScaleRule::even>(a, r0, r1);
    case ScaleRule::mistralrs:
      return quantize_impl<D, ScaleRule::mistralrs>(a, r0, r1);
    default:
      return quantize_impl<D, ScaleRule::mse>(a, r0, r1);
  }
}

int64_t quantize_rows(const QuantizeArgs& a, int64_t r0, int64_t r1) {
  switch (a.weight_dtype) {
    case DType::f16:
      return quantize_dtype<DType::f16>(a, r0, r1);
    case DType::bf16:
      return quantize_dtype<DType::bf16>(a, r0, r1);
    default:
      return quantize_dtype<DType::f32>(a, r0, r1);
  }
}

// ---- matmul_rows: small batches (decode) ------------------------------------------------------

// count_hint up to this: the streaming path. Weight rows are read RW at a time (8 for one row of
// x): several sequential streams keep more misses in flight than one, and the hardware prefetcher
// serves them better than software prefetches did (measured).
constexpr int64_t kSmallRows = 8;
// count_hint up to this: two accumulators per output (more independent FMA chains for a short
// batch); above, one per output, so that more weight rows share each load of x.
constexpr int64_t kSplitRows = 2;

// Rows of x as f32, each block's 32 values reordered as its 16 even then its 16 odd elements (the
// order in which a block's low and high nibbles decode).
template <DType D>
void pack_x_even_odd(const RowBatch& rows, int64_t k, float* xp) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t i = 0; i < rows.count; ++i) {
    const void* x = rows.x_rows[i];
    float* dst = xp + i * k;
    for (int64_t c = 0; c < k; c += kBlockSize) {
      const __m512 lo = Io<D>::load(x, c), hi = Io<D>::load(x, c + 16);
      _mm512_store_ps(dst + c, _mm512_permutex2var_ps(lo, even, hi));
      _mm512_store_ps(dst + c + 16, _mm512_permutex2var_ps(lo, odd, hi));
    }
  }
}

// MR rows of x (even/odd order, stride k) times RW consecutive weight rows: res[m * RW + r].
// Split: two accumulators per output (even and odd elements), else one fed both, even first.
template <int MR, int RW, bool Split>
void small_tile(const float* xp, int64_t k, const uint8_t* blocks, const uint8_t* scales,
                const float* table, float* res) {
  const int64_t nb = k / kBlockSize;
  const int64_t row_bytes = k / 2;
  constexpr int kAcc = Split ? 2 : 1;
  __m512 acc[MR][RW][kAcc];
  for (auto& row : acc) {
    for (auto& out : row) {
      for (auto& a : out)
        a = _mm512_setzero_ps();
    }
  }
  // Row r of the block at b: from the pointer of row r % 2 plus (r / 2) * 2 rows, so that the
  // RW rows need two pointers and a few strides (held in registers, not spilled).
  const int64_t code_pair = 2 * row_bytes, scale_pair = 2 * nb;
  const auto decode = [&](int r, int64_t b, __m512& even, __m512& odd) {
    const uint8_t* p = blocks + (r & 1) * row_bytes + b * kBlockBytes + (r >> 1) * code_pair;
    const __m512i codes =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const uint8_t* s = scales + (r & 1) * nb + b + (r >> 1) * scale_pair;
    const __m512 t = _mm512_load_ps(table + 16 * std::size_t{*s});
    even = _mm512_permutexvar_ps(codes, t);
    odd = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), t);
  };
  for (int64_t b = 0; b < nb; ++b) {
    const float* x = xp + b * kBlockSize;
    if constexpr (Split) {
      // x first, each weight block used as soon as it is decoded (few live registers).
      __m512 xe[MR], xo[MR];
      for (int m = 0; m < MR; ++m) {
        xe[m] = _mm512_load_ps(x + m * k);
        xo[m] = _mm512_load_ps(x + m * k + 16);
      }
      // Unrolled, so that the accumulators stay in registers (GCC otherwise keeps this loop).
#pragma GCC unroll 16
      for (int r = 0; r < RW; ++r) {
        __m512 we, wo;
        decode(r, b, we, wo);
        for (int m = 0; m < MR; ++m) {
          acc[m][r][0] = _mm512_fmadd_ps(xe[m], we, acc[m][r][0]);
          acc[m][r][kAcc - 1] = _mm512_fmadd_ps(xo[m], wo, acc[m][r][kAcc - 1]);
        }
      }
    } else {
      // Weights first (2 RW registers), then each row of x streams past them.
      __m512 we[RW], wo[RW];
      for (int r = 0; r < RW; ++r)
        decode(r, b, we[r], wo[r]);
      for (int m = 0; m < MR; ++m) {
        const __m512 xe = _mm512_load_ps(x + m * k);
        for (int r = 0; r < RW; ++r)
          acc[m][r][0] = _mm512_fmadd_ps(xe, we[r], acc[m][r][0]);
        const __m512 xo = _mm512_load_ps(x + m * k + 16);
        for (int r = 0; r < RW; ++r)
          acc[m][r][0] = _mm512_fmadd_ps(xo, wo[r], acc[m][r][0]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < RW; ++r)
      res[m * RW + r] =
          hsum(Split ? _mm512_add_ps(acc[m][r][0], acc[m][r][kAcc - 1]) : acc[m][r][0]);
  }
}

inline float bias_at(const WeightArgs& w, int64_t flat) {
  return w.bias != nullptr ? load_scalar(w.bias, w.bias_dtype, flat) : 0.0f;
}

// Weight rows per pass for MR rows of x: 2 MR RW (Split) or MR RW accumulators, within the 32
// vector registers beside the weights and x.
template <int MR, bool Split>
constexpr int rows_per_pass() {
  if constexpr (Split) {
    return MR == 1 ? 8 : MR == 2 ? 4 : MR <= 4 ? 2 : 1;
  } else {
    return MR == 1 ? 8 : MR == 2 ? 6 : MR <= 4 ? 4 : MR <= 7 ? 3 : 2;
  }
}

template <int MR, bool Split>
void small_rows(const RowBatch& rows, int64_t m0, const float* xp, const WeightArgs& w,
                int64_t expert, int64_t n0, int64_t n1, const float* table) {
  constexpr int RW = rows_per_pass<MR, Split>();
  const int64_t k = w.k;
  const uint8_t* blocks = w.blocks + expert * w.n * (k / 2);
  const uint8_t* scales = w.scales + expert * w.n * (k / kBlockSize);
  float res[MR * RW];
  const auto emit = [&](int64_t n, int rw) {
    for (int r = 0; r < rw; ++r) {
      const float bias = bias_at(w, expert * w.n + n + r);
      for (int m = 0; m < MR; ++m)
        store_scalar(rows.out_rows[m0 + m], rows.dtype, n + r, res[m * rw + r] + bias);
    }
  };
  int64_t n = n0;
  for (; n + RW <= n1; n += RW) {
    small_tile<MR, RW, Split>(xp, k, blocks + n * (k / 2), scales + n * (k / kBlockSize), table,
                              res);
    emit(n, RW);
  }
  for (; n < n1; ++n) {
    small_tile<MR, 1, Split>(xp, k, blocks + n * (k / 2), scales + n * (k / kBlockSize), table,
                             res);
    emit(n, 1);
  }
}

template <bool Split>
void small_batch(const RowBatch& rows, int64_t m0, const float* x, const WeightArgs& w,
                 int64_t expert, int64_t n0, int64_t n1, const float* table) {
  switch (std::min<int64_t>(kSmallRows, rows.count - m0)) {
    case 1:
      return small_rows<1, Split>(rows, m0, x, w, expert, n0, n1, table);
    case 2:
      return small_rows<2, Split>(rows, m0, x, w, expert, n0, n1, table);
    case 3:
      return small_rows<3, Split>(rows, m0, x, w, expert, n0, n1, table);
    case 4:
      return small_rows<4, Split>(rows, m0, x, w, expert, n0, n1, table);
    case 5:
      return small_rows<5, Split>(rows, m0, x, w, expert, n0, n1, table);
    case 6:
      return small_rows<6, Split>(rows, m0, x, w, expert, n0, n1, table);
    case 7:
      return small_rows<7, Split>(rows, m0, x, w, expert, n0, n1, table);
    default:
      return small_rows<8, Split>(rows, m0, x, w, expert, n0, n1, table);
  }
}

template <DType D>
void matmul_small(const RowBatch& rows, const WeightArgs& w, int64_t expert, int64_t n0,
                  int64_t n1) {
  const int64_t k = w.k;
  float* xp = t_x.get<float>(static_cast<std::size_t>(rows.count * k));
  pack_x_even_odd<D>(rows, k, xp);
  const float* table = decode_table();
  // The accumulation scheme follows count_hint (never the rows this call got).
  const bool split = rows.count_hint <= kSplitRows;
  for (int64_t m0 = 0; m0 < rows.count; m0 += kSmallRows) {
    if (split) {
      small_batch<true>(rows, m0, xp + m0 * k, w, expert, n0, n1, table);
    } else {
      small_batch<false>(rows, m0, xp + m0 * k, w, expert, n0, n1, table);
    }
  }
}

// ---- matmul_rows: large batches (prefill) -----------------------------------------------------

constexpr int kTileRows = 6;         // rows of x per micro-tile
constexpr int64_t kSliver = 64;      // columns per micro-tile (4 vectors)
constexpr int64_t kChunk = 128;      // k per panel (a 64-column sliver of it: 32 KiB, in L1)
constexpr int64_t kPanelCols = 256;  // columns per panel

// Decodes weight rows [0, cols) of `blocks` (row stride k / 2) over k in [k0, k0 + kc) into
// panel[s][kk][64]: sliver s holds columns 64 s .. 64 s + 63 (zero past cols), each k contiguous.
void decode_panel(const uint8_t* blocks, const uint8_t* scales, int64_t k, int64_t cols, int64_t k0,
                  int64_t kc, const float* table, float* panel) {
  const int64_t nb = k / kBlockSize;
  const int64_t slivers = (cols + kSliver - 1) / kSliver;
  for (int64_t s = 0; s < slivers; ++s) {
    for (int q = 0; q < 4; ++q) {
      const int64_t row0 = s * kSliver + q * 16;
      const int64_t valid = std::clamp<int64_t>(cols - row0, 0, 16);
      for (int64_t b = k0 / kBlockSize; b < (k0 + kc) / kBlockSize; ++b) {
        float* dst = panel + s * kc * kSliver + (b * kBlockSize - k0) * kSliver + q * 16;
        // The even elements of the block (low nibbles) for 16 rows, then the odd ones: 16
        // registers and a transpose each.
        for (int half = 0; half < 2; ++half) {
          __m512 v[16];
#pragma GCC unroll 16
          for (int r = 0; r < 16; ++r) {
            if (r < valid) {
              const uint8_t* p = blocks + (row0 + r) * (k / 2) + b * kBlockBytes;
              __m512i codes =
                  _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
              if (half != 0) codes = _mm512_srli_epi32(codes, 4);
              v[r] = _mm512_permutexvar_ps(
                  codes, _mm512_load_ps(table + 16 * std::size_t{scales[(row0 + r) * nb + b]}));
            } else {
              v[r] = _mm512_setzero_ps();
            }
          }
          transpose16(v);
#pragma GCC unroll 16
          for (int j = 0; j < 16; ++j)
            _mm512_store_ps(dst + (2 * j + half) * kSliver, v[j]);
        }
      }
    }
  }
}

// tile[r][0..64) (+)= sum over kk < kc of x[r][kk] * panel[kk][0..64), one FMA per k in order.
// `prefetch` (null or kTileRows pointers): rows to bring towards L1 while this tile runs, one
// line of each per 16 k.
template <int R>
void micro_tile(const float* const* x, const float* const* prefetch, const float* panel, int64_t kc,
                float* tile, bool first) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < 4; ++j)
      acc[r][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(tile + r * kSliver + 16 * j);
  }
  const float* xr[R];
  for (int r = 0; r < R; ++r)
    xr[r] = x[r];
  if (prefetch != nullptr) {
    for (int64_t kk = 0; kk < kc; kk += 16) {
      for (int r = 0; r < kTileRows; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(prefetch[r] + kk), _MM_HINT_T0);
    }
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    const float* wk = panel + kk * kSliver;
    const __m512 w0 = _mm512_load_ps(wk), w1 = _mm512_load_ps(wk + 16);
    const __m512 w2 = _mm512_load_ps(wk + 32), w3 = _mm512_load_ps(wk + 48);
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(xr[r][kk]);
      acc[r][0] = _mm512_fmadd_ps(b, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(b, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(b, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(b, w3, acc[r][3]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < 4; ++j)
      _mm512_store_ps(tile + r * kSliver + 16 * j, acc[r][j]);
  }
}

using MicroFn = void (*)(const float* const*, const float* const*, const float*, int64_t, float*,
                         bool);
constexpr MicroFn kMicro[kTileRows + 1] = {nullptr,        &micro_tile<1>, &micro_tile<2>,
                                           &micro_tile<3>, &micro_tile<4>, &micro_tile<5>,
                                           &micro_tile<6>};

template <DType D>
void matmul_large(const RowBatch& rows, const WeightArgs& w, int64_t expert, int64_t n0,
                  int64_t n1) {
  const int64_t k = w.k;
  const int64_t count = rows.count;
  const float* table = decode_table();
  // x rows as f32: in place, or converted once.
  const float** xr = t_xptr.get<const float*>(static_cast<std::size_t>(count));
  if constexpr (D == DType::f32) {
    for (int64_t i = 0; i < count; ++i)
      xr[i] = static_cast<const float*>(rows.x_rows[i]);
  } else {
    float* xs = t_x.get<float>(static_cast<std::size_t>(count * k));
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t c = 0; c < k; c += 16)
        _mm512_store_ps(xs + i * k + c, Io<D>::load(rows.x_rows[i], c));
      xr[i] = xs + i * k;
    }
  }
  const int64_t groups = (count + kTileRows - 1) / kTileRows;
  constexpr int64_t kSlivers = kPanelCols / kSliver;
  float* panel = t_panel.get<float>(static_cast<std::size_t>(kPanelCols * kChunk));
  float* tiles =
      t_tiles.get<float>(static_cast<std::size_t>(groups * kSlivers * kTileRows * kSliver));
  const uint8_t* blocks = w.blocks + expert * w.n * (k / 2);
  const uint8_t* scales = w.scales + expert * w.n * (k / kBlockSize);
  alignas(64) float bias[kPanelCols];
  const float* ptrs[kTileRows];
  const float* next[kTileRows];
  for (int64_t c0 = n0; c0 < n1; c0 += kPanelCols) {
    const int64_t cols = std::min(kPanelCols, n1 - c0);
    const int64_t slivers = (cols + kSliver - 1) / kSliver;
    for (int64_t j = 0; j < kPanelCols; ++j)
      bias[j] = j < cols ? bias_at(w, expert * w.n + c0 + j) : 0.0f;
    for (int64_t k0 = 0; k0 < k; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, k - k0);
      const bool last = k0 + kc == k;
      decode_panel(blocks + c0 * (k / 2), scales + c0 * (k / kBlockSize), k, cols, k0, kc, table,
                   panel);
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t r0 = g * kTileRows;
        const int rcount = static_cast<int>(std::min<int64_t>(kTileRows, count - r0));
        for (int r = 0; r < rcount; ++r)
          ptrs[r] = xr[r0 + r] + k0;
        // The next group's rows (or this group's next chunk), fetched during this group's tiles.
        for (int r = 0; r < kTileRows; ++r) {
          const int64_t nr = r0 + kTileRows + r;
          next[r] = nr < count ? xr[nr] + k0 : xr[r0 + std::min(r, rcount - 1)] + k0 + kc;
        }
        for (int64_t s = 0; s < slivers; ++s) {
          float* tile = tiles + (g * kSlivers + s) * kTileRows * kSliver;
          kMicro[rcount](ptrs, s == 0 ? next : nullptr, panel + s * kc * kSliver, kc, tile,
                         k0 == 0);
          if (last) {
            const int64_t width = std::min(kSliver, cols - s * kSliver);
            for (int r = 0; r < rcount; ++r) {
              void* out = rows.out_rows[r0 + r];
              for (int64_t j = 0; j < width; j += 16) {
                const __m512 v = _mm512_add_ps(_mm512_load_ps(tile + r * kSliver + j),
                                               _mm512_load_ps(bias + s * kSliver + j));
                Io<D>::store(out, c0 + s * kSliver + j, v, first_lanes(width - j));
              }
            }
          }
        }
      }
    }
  }
}

void matmul_rows(const RowBatch& rows, const WeightArgs& w, int64_t expert, int64_t n0,
                 int64_t n1) {
  if (rows.count <= 0 || n1 <= n0) return;
  const bool small = rows.count_hint <= kSmallRows || w.k == 0;  // (K = 0: outputs = bias)
  switch (rows.dtype) {
    case DType::f16:
      return small ? matmul_small<DType::f16>(rows, w, expert, n0, n1)
                   : matmul_large<DType::f16>(rows, w, expert, n0, n1);
    case DType::bf16:
      return small ? matmul_small<DType::bf16>(rows, w, expert, n0, n1)
                   : matmul_large<DType::bf16>(rows, w, expert, n0, n1);
    default:
      return small ? matmul_small<DType::f32>(rows, w, expert, n0, n1)
                   : matmul_large<DType::f32>(rows, w, expert, n0, n1);
  }
}

}  // namespace

const Kernels& avx512_kernels() {
  // VNNI is not part of the table's required features (Skylake-SP has AVX-512 without it).
  static const Kernels table{Isa::avx512,
                             "avx512",
                             &quantize_rows,
                             &dequantize_rows,
                             &matmul_rows,
                             avx512vnni_usable(host_cpu_features()) ? &matmul_rows_int8_avx512vnni
                                                                    : &matmul_rows_int8_avx2};
  return table;
}

}  // namespace mxfp4::cpu

MXFP4_ISA_TARGET_END
