// The avx2 kernel table: AVX2 + FMA + F16C intrinsics, single-threaded entry points (the backend's
// thread pool splits the work above them). Its functions are compiled for AVX2, FMA, F16C and
// BMI2 only (a target pragma: isa_target.hpp, list in CMakeLists.txt); nothing here uses AVX-512.
//
// Decoding a block. E2M1 values are exact bf16 numbers, so 32 codes become f32 by two byte
// lookups (vpshufb on 16-entry tables of the bf16 high and low bytes, sign included) and two
// interleaves (bytes to bf16 words, words to f32); then a multiplication by the block's E8M0
// scale as an f32 (0x00 -> 2^-127, 0xFF -> NaN, from a 256-entry table), the very product
// mxfp4_decode computes. Dequantize first puts the codes in an order that makes the four f32
// vectors come out in element order; the matmul skips that step and decodes every block in a
// fixed permuted order (kPermutation: within each 8 elements, the even ones then the odd ones),
// and permutes x the same way once per call instead.
//
// matmul_rows has two paths, chosen by count_hint only:
// - small (count_hint <= kSmallRows = 8, decode: memory-bound): each weight block is decoded in
//   registers and used by up to 4 rows at once (5 to 8 rows: a second group decodes again), with
//   1 to 4 weight rows side by side so that 4 to 8 accumulator chains hide the FMA latency. Each
//   output element has one 8-lane f32 accumulator: block after block it takes
//   fma(x[8q..8q+8), w[8q..8q+8), acc) for q = 0..3 (permuted order), then the lanes are summed
//   in a fixed tree, then + bias.
// - large (blocked GEMM): per cache block of K (kKC) the rows of x are packed transposed (x^T
//   panels of 16 or 8 rows), kNB weight rows are decoded to f32 into an aligned thread-local
//   buffer, and a 16x6 (or 8x12) FMA micro-kernel broadcasts weights against x columns; partial
//   sums wait in an f32 buffer between K blocks. Each output element is a single fma chain over
//   k in the permuted order, from +0, then + bias (the order of the generic kernel, permuted).
// In both, an element's operations do not depend on [n0, n1), on the rows a call gets, or on
// which other rows or columns share its registers (tests/test_cpu_avx2.cpp checks, bit for bit).
//
// quantize_rows reproduces quantize_block (format.hpp) bit for bit: the block's largest
// magnitude from the integer maximum of |bits|, the scale exponent from the same scalar rule
// functions, the division by the scale as the same two multiplications, element rounding on the
// bit patterns (ties to even, or away from zero for the mistralrs rule). The mse rule computes
// both candidates' squared errors as vectors, then adds each candidate's f64 sum in element
// order, 4 blocks side by side in the lanes of a vector.
#if defined(__clang__)
// The scalar helpers of format.hpp inlined here must round like the reference (no FMA contraction).
#pragma clang fp contract(off)
#endif

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/convert.hpp"
#include "core/kernel_args.hpp"
#include "cpu/cpu_kernels.hpp"
#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"

#include "cpu/isa_target.hpp"

MXFP4_ISA_TARGET_BEGIN

namespace mxfp4::cpu {
namespace {

using std::int64_t;
using std::uint32_t;
using std::uint8_t;

// count_hint at or below this takes the small-M path.
constexpr int64_t kSmallRows = 8;
// Large path blocking: K per cache block (a multiple of 32), rows of x per outer block, columns
// of W per outer block, decoded weight rows per inner block (a multiple of 12).
constexpr int64_t kKC = 256;
constexpr int64_t kMC = 192;
constexpr int64_t kNC = 384;
constexpr int64_t kNB = 48;

// ---- thread-local aligned scratch ---------------------------------------------------------------

class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(p_); }
  float* get(std::size_t floats) {
    if (floats > cap_) {
      std::free(p_);
      p_ = nullptr;
      cap_ = 0;
      const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (p_ == nullptr) throw std::bad_alloc();
      cap_ = bytes / sizeof(float);
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  std::size_t cap_ = 0;
};

thread_local Scratch t_xperm;   // small path: permuted f32 rows of x
thread_local Scratch t_rowtmp;  // large path: converted rows of one panel
thread_local Scratch t_apack;   // large path: packed x^T panels
thread_local Scratch t_wdec;    // large path: decoded weight rows
thread_local Scratch t_cacc;    // large path: partial sums between K blocks

// ---- tables -------------------------------------------------------------------------------------

struct Tables {
  alignas(64) float scale[256];  // E8M0 byte -> f32 (e8m0_decode)
  alignas(16) uint8_t hi[16];    // E2M1 code -> byte 3 of its f32 (sign, exponent)
  alignas(16) uint8_t lo[16];    // E2M1 code -> byte 2 of its f32 (exponent lsb, mantissa)
  alignas(32) float mag[8];      // E2M1 magnitude index -> value
};

const Tables& tables() {
  static const Tables t = [] {
    Tables r{};
    for (int b = 0; b < 256; ++b)
      r.scale[b] = e8m0_decode(static_cast<uint8_t>(b));
    for (int c = 0; c < 16; ++c) {
      const uint32_t bits = float_bits(kE2M1Values[c]);
      r.hi[c] = static_cast<uint8_t>(bits >> 24);
      r.lo[c] = static_cast<uint8_t>(bits >> 16);
      if ((bits & 0xFFFFu) != 0) std::abort();  // E2M1 values are bf16 numbers
    }
    for (int m = 0; m < 8; ++m)
      r.mag[m] = kE2M1Values[m];
    return r;
  }();
  return t;
}

inline __m128i load128(const void* p) {
  return _mm_loadu_si128(static_cast<const __m128i*>(p));
}
inline void store128(void* p, __m128i v) {
  _mm_storeu_si128(static_cast<__m128i*>(p), v);
}

// ---- block decoding -----------------------------------------------------------------------------

struct Decoder {
  __m256i hi, lo, nib, shift, natural;
  explicit Decoder(const Tables& t)
      : hi(_mm256_broadcastsi128_si256(load128(t.hi))),
        lo(_mm256_broadcastsi128_si256(load128(t.lo))),
        nib(_mm256_set1_epi8(0x0F)),
        shift(_mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
        natural(_mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)) {}

  // 32 codes (one byte each) -> four vectors of their f32 values: vector q holds the codes at
  // bytes 4q .. 4q+3 of lane 0, then bytes 4q .. 4q+3 of lane 1.
  inline void values(__m256i codes, __m256 s, __m256 out[4]) const {
    const __m256i h = _mm256_shuffle_epi8(hi, codes);
    const __m256i l = _mm256_shuffle_epi8(lo, codes);
    const __m256i w0 = _mm256_unpacklo_epi8(l, h);  // bf16 bits
    const __m256i w1 = _mm256_unpackhi_epi8(l, h);
    const __m256i z = _mm256_setzero_si256();
    out[0] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, w0)), s);
    out[1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, w0)), s);
    out[2] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, w1)), s);
    out[3] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, w1)), s);
  }

  // Block in the permuted order (kPermutation): lane 0 of the codes holds the low nibbles
  // (elements 0, 2, .., 30), lane 1 the high nibbles (1, 3, .., 31).
  inline void permuted(const uint8_t* packed, __m256 s, __m256 out[4]) const {
    const __m256i v = _mm256_broadcastsi128_si256(load128(packed));
    values(_mm256_and_si256(_mm256_srlv_epi32(v, shift), nib), s, out);
  }

  // Block in element order: out[j] = elements 8j .. 8j+7.
  inline void natural_order(const uint8_t* packed, __m256 s, __m256 out[4]) const {
    const __m128i v = load128(packed);
    const __m128i l = _mm_and_si128(v, _mm256_castsi256_si128(nib));
    const __m128i h = _mm_and_si128(_mm_srli_epi16(v, 4), _mm256_castsi256_si128(nib));
    const __m256i c = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(l, h)),
                                              _mm_unpackhi_epi8(l, h), 1);  // element order
    values(_mm256_permutevar8x32_epi32(c, natural), s, out);
  }
};

// kPermutation[i] = the element of a block at position i of the permuted decode (documentation;
// permute_row applies it to x).
[[maybe_unused]] constexpr int kPermutation[32] = {0,  2,  4,  6,  1,  3,  5,  7,  8,  10, 12,
                                                   14, 9,  11, 13, 15, 16, 18, 20, 22, 17, 19,
                                                   21, 23, 24, 26, 28, 30, 25, 27, 29, 31};

// ---- conversions of x and of outputs ------------------------------------------------------------

template <DType D>
inline __m256 load8(const void* base, int64_t i) {
  if constexpr (D == DType::f32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (D == DType::bf16) {
    const __m128i h = load128(static_cast<const std::uint16_t*>(base) + i);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(load128(static_cast<const std::uint16_t*>(base) + i));
  }
}

// Elements [k0, k0 + kc) of row x (kc a multiple of 32) -> f32 in the permuted order, at dst.
template <DType D>
void permute_row(const void* x, int64_t k0, int64_t kc, float* dst) {
  const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t k = 0; k < kc; k += 8)
    _mm256_storeu_ps(dst + k, _mm256_permutevar8x32_ps(load8<D>(x, k0 + k), idx));
}

void permute_row_any(const void* x, DType d, int64_t k0, int64_t kc, float* dst) {
  switch (d) {
    case DType::bf16:
      permute_row<DType::bf16>(x, k0, kc, dst);
      break;
    case DType::f16:
      permute_row<DType::f16>(x, k0, kc, dst);
      break;
    default:
      permute_row<DType::f32>(x, k0, kc, dst);
      break;
  }
}

// f32 -> bf16 bits, 8 at a time, as f32_to_bf16 (round to nearest even, NaN quieted).
inline __m128i to_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

inline void store_scalar(void* out, DType d, int64_t i, float v) {
  detail::store_float(out, d, i, v);
}

// Horizontal sum in a fixed order.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---- matmul: small-M path -----------------------------------------------------------------------

// Every (row, column) of the small path has one 8-lane accumulator; for each block in order it
// takes fma(x slice q, w slice q, acc) for q = 0, 1, 2, 3, then the lanes are summed by hsum.

// R rows (x permuted, f32) against C weight rows (`blocks` / `scales` of the first, the others
// bpr blocks apart), each block decoded in registers once for all R rows. The accumulators
// come from and go to acc[r * C + c].
template <int R, int C>
void decode_fma(const float* const* xs, const uint8_t* blocks, const uint8_t* scales, int64_t bpr,
                const float* stab, const Decoder& dec, __m256* acc) {
  const Decoder d = dec;  // local copies stay in registers
  const float* x[R];
  for (int r = 0; r < R; ++r)
    x[r] = xs[r];
  __m256 a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      a[r][c] = acc[r * C + c];
  for (int64_t b = 0; b < bpr; ++b) {
    for (int c = 0; c < C; ++c) {
      __m256 w[4];
      d.permuted(blocks + (c * bpr + b) * kBlockBytes,
                 _mm256_broadcast_ss(stab + scales[c * bpr + b]), w);
      for (int r = 0; r < R; ++r) {
        const float* xb = x[r] + b * kBlockSize;
        for (int q = 0; q < 4; ++q)
          a[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8 * q), w[q], a[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      acc[r * C + c] = a[r][c];
}

// All rows against C weight rows: groups of at most 4 rows (more would not fit in registers),
// each decoding the weights again.
template <int C>
void small_group(const float* const* xs, int64_t nrows, const uint8_t* blocks,
                 const uint8_t* scales, int64_t bpr, const float* stab, const Decoder& dec,
                 __m256* acc) {
  for (; nrows > 4; nrows -= 4, xs += 4, acc += 4 * C)
    decode_fma<4, C>(xs, blocks, scales, bpr, stab, dec, acc);
  switch (nrows) {
    case 1:
      decode_fma<1, C>(xs, blocks, scales, bpr, stab, dec, acc);
      break;
    case 2:
      decode_fma<2, C>(xs, blocks, scales, bpr, stab, dec, acc);
      break;
    case 3:
      decode_fma<3, C>(xs, blocks, scales, bpr, stab, dec, acc);
      break;
    default:
      decode_fma<4, C>(xs, blocks, scales, bpr, stab, dec, acc);
      break;
  }
}

void matmul_small(const RowBatch& rows, const detail::WeightArgs& w, int64_t expert, int64_t n0,
                  int64_t n1) {
  const Tables& t = tables();
  const Decoder dec(t);
  const int64_t k = w.k;
  const int64_t bpr = k / kBlockSize;
  const int64_t nrows = rows.count;
  float* xp = t_xperm.get(static_cast<std::size_t>(nrows * k));
  const float* xs[kSmallRows];
  for (int64_t i = 0; i < nrows; ++i) {
    permute_row_any(rows.x_rows[i], rows.dtype, 0, k, xp + i * k);
    xs[i] = xp + i * k;
  }
  // Weight rows per group: enough independent accumulators to cover the FMA latency.
  const int64_t group = nrows == 1 ? 4 : nrows == 2 ? 3 : 2;
  __m256 acc[kSmallRows * 4];
  for (int64_t n = n0; n < n1;) {
    const int64_t cols = n1 - n >= group ? group : 1;
    const int64_t flat = expert * w.n + n;
    const uint8_t* blocks = w.blocks + flat * (k / 2);
    const uint8_t* scales = w.scales + flat * bpr;
    for (int64_t i = 0; i < nrows * cols; ++i)
      acc[i] = _mm256_setzero_ps();
    switch (cols) {
      case 4:
        small_group<4>(xs, nrows, blocks, scales, bpr, t.scale, dec, acc);
        break;
      case 3:
        small_group<3>(xs, nrows, blocks, scales, bpr, t.scale, dec, acc);
        break;
      case 2:
        small_group<2>(xs, nrows, blocks, scales, bpr, t.scale, dec, acc);
        break;
      default:
        small_group<1>(xs, nrows, blocks, scales, bpr, t.scale, dec, acc);
        break;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const float bias =
          w.bias != nullptr ? detail::load_float(w.bias, w.bias_dtype, flat + c) : 0.0f;
      for (int64_t r = 0; r < nrows; ++r)
        store_scalar(rows.out_rows[r], rows.dtype, n + c, hsum(acc[r * cols + c]) + bias);
    }
    n += cols;
  }
}

// ---- matmul: large-M path (blocked GEMM) --------------------------------------------------------

// 8x8 transpose: 8 rows of 8 floats at src (ld floats apart) -> 8 rows at dst (ldd apart).
inline void transpose8(const float* src, int64_t ld, float* dst, int64_t ldd) {
  __m256 r0 = _mm256_load_ps(src + 0 * ld), r1 = _mm256_load_ps(src + 1 * ld);
  __m256 r2 = _mm256_load_ps(src + 2 * ld), r3 = _mm256_load_ps(src + 3 * ld);
  __m256 r4 = _mm256_load_ps(src + 4 * ld), r5 = _mm256_load_ps(src + 5 * ld);
  __m256 r6 = _mm256_load_ps(src + 6 * ld), r7 = _mm256_load_ps(src + 7 * ld);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_store_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_store_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_store_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_store_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_store_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_store_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_store_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_store_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// Where the output of one micro-tile goes.
struct TileOut {
  const RowBatch* rows;
  int64_t row0;        // first row of the tile in the batch
  int64_t valid_rows;  // rows of the tile that exist
  int64_t col0;        // first output column
  int64_t valid_cols;
  const float* bias;  // bias of col0.. (f32), or null
};

// acc[j][v] += sum over k of a[k][8v..8v+8] * w[j][k], for j < NR: rows of the panel in vector
// lanes, weight rows broadcast. `a` is [kc][8 * MV], w rows are ldw floats apart. The partial
// sums come from / go to c (rows ldc apart, [NR][8 * MV]) unless first / last.
template <int MV, int NR>
void micro_kernel(const float* a, const float* w, int64_t ldw, int64_t kc, float* c, int64_t ldc,
                  bool first, bool last, const TileOut& out) {
  __m256 acc[NR][MV];
  for (int j = 0; j < NR; ++j)
    for (int v = 0; v < MV; ++v)
      acc[j][v] = first ? _mm256_setzero_ps() : _mm256_load_ps(c + j * ldc + 8 * v);
  for (int64_t k = 0; k < kc; ++k) {
    __m256 av[MV];
    for (int v = 0; v < MV; ++v)
      av[v] = _mm256_load_ps(a + k * 8 * MV + 8 * v);
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_broadcast_ss(w + j * ldw + k);
      for (int v = 0; v < MV; ++v)
        acc[j][v] = _mm256_fmadd_ps(av[v], b, acc[j][v]);
    }
  }
  if (!last) {
    for (int j = 0; j < NR; ++j)
      for (int v = 0; v < MV; ++v)
        _mm256_store_ps(c + j * ldc + 8 * v, acc[j][v]);
    return;
  }
  alignas(32) float tile[NR][8 * MV];
  for (int j = 0; j < NR; ++j)
    for (int v = 0; v < MV; ++v)
      _mm256_store_ps(&tile[j][8 * v], acc[j][v]);
  const RowBatch& rb = *out.rows;
  for (int64_t m = 0; m < out.valid_rows; ++m) {
    void* dst = rb.out_rows[out.row0 + m];
    for (int64_t j = 0; j < out.valid_cols; ++j) {
      const float bias = out.bias != nullptr ? out.bias[j] : 0.0f;
      store_scalar(dst, rb.dtype, out.col0 + j, tile[j][m] + bias);
    }
  }
}

void matmul_large(const RowBatch& rows, const detail::WeightArgs& w, int64_t expert, int64_t n0,
                  int64_t n1) {
  const Tables& t = tables();
  const Decoder dec(t);
  const int64_t k = w.k;
  const int64_t bpr = k / kBlockSize;
  constexpr int64_t kNBPad = kNB;  // multiple of both NR (6 and 12)
  static_assert(kNBPad % 12 == 0 && kKC % kBlockSize == 0);

  const int64_t mc_max = std::min(kMC, rows.count);
  const int64_t mc_pad = (mc_max + 15) / 16 * 16;
  float* rowtmp = t_rowtmp.get(static_cast<std::size_t>(16 * kKC));
  float* apack = t_apack.get(static_cast<std::size_t>(mc_pad * kKC));
  float* wdec = t_wdec.get(static_cast<std::size_t>(kNBPad * kKC));
  float* cacc = k > kKC ? t_cacc.get(static_cast<std::size_t>((kNC + kNBPad) * mc_pad)) : nullptr;
  alignas(32) float bias_f32[kNBPad];

  for (int64_t mb = 0; mb < rows.count; mb += kMC) {
    const int64_t mc = std::min(kMC, rows.count - mb);
    // Panels: 16 rows each; the last one 8 wide when at most 8 rows remain.
    const int64_t full16 = mc / 16;
    const int64_t rem = mc - full16 * 16;
    const int64_t npanels = full16 + (rem > 0 ? 1 : 0);
    auto panel_width = [&](int64_t p) -> int64_t { return p < full16 ? 16 : (rem <= 8 ? 8 : 16); };

    for (int64_t nb0 = n0; nb0 < n1; nb0 += kNC) {
      const int64_t nc = std::min(kNC, n1 - nb0);
      for (int64_t kb = 0; kb < k; kb += kKC) {
        const int64_t kc = std::min(kKC, k - kb);
        const bool first = kb == 0;
        const bool last = kb + kc == k;
        // Pack x^T panels: apack + p * 16 * kKC is [kc][width].
        for (int64_t p = 0; p < npanels; ++p) {
          const int64_t width = panel_width(p);
          const int64_t r0 = mb + p * 16;
          const int64_t valid = std::min(width, rows.count - r0);
          for (int64_t r = 0; r < width; ++r) {
            float* dst = rowtmp + r * kKC;
            if (r < valid) {
              permute_row_any(rows.x_rows[r0 + r], rows.dtype, kb, kc, dst);
            } else {
              std::memset(dst, 0, static_cast<std::size_t>(kc) * sizeof(float));
            }
          }
          float* ap = apack + p * 16 * kKC;
          for (int64_t h = 0; h < width; h += 8)
            for (int64_t kk = 0; kk < kc; kk += 8)
              transpose8(rowtmp + h * kKC + kk, kKC, ap + kk * width + h, width);
        }
        for (int64_t nb = nb0; nb < nb0 + nc; nb += kNB) {
          const int64_t nbc = std::min(kNB, nb0 + nc - nb);
          // Decode weight rows nb .. nb + nbc, K range [kb, kb + kc), permuted; zero the padding.
          for (int64_t j = 0; j < nbc; ++j) {
            const int64_t flat = expert * w.n + nb + j;
            const uint8_t* blocks = w.blocks + flat * (k / 2) + (kb / kBlockSize) * kBlockBytes;
            const uint8_t* scales = w.scales + flat * bpr + kb / kBlockSize;
            float* dst = wdec + j * kKC;
            for (int64_t b = 0; b < kc / kBlockSize; ++b) {
              __m256 v[4];
              dec.permuted(blocks + b * kBlockBytes, _mm256_broadcast_ss(t.scale + scales[b]), v);
              for (int q = 0; q < 4; ++q)
                _mm256_store_ps(dst + b * kBlockSize + 8 * q, v[q]);
            }
            if (last) {
              bias_f32[j] =
                  w.bias != nullptr ? detail::load_float(w.bias, w.bias_dtype, flat) : 0.0f;
            }
          }
          const int64_t nbc_pad = (nbc + 11) / 12 * 12;
          for (int64_t j = nbc; j < nbc_pad; ++j)
            std::memset(wdec + j * kKC, 0, static_cast<std::size_t>(kc) * sizeof(float));

          for (int64_t p = 0; p < npanels; ++p) {
            const int64_t width = panel_width(p);
            const int64_t r0 = mb + p * 16;
            const float* ap = apack + p * 16 * kKC;
            const int64_t nr = width == 16 ? 6 : 12;
            for (int64_t j0 = 0; j0 < nbc; j0 += nr) {
              const TileOut to{&rows,
                               r0,
                               std::min(width, rows.count - r0),
                               nb + j0,
                               std::min(nr, nbc - j0),
                               w.bias != nullptr ? bias_f32 + j0 : nullptr};
              // Partial sums of columns nb + j0.., rows r0..: at cacc[(n - nb0)][m - mb].
              float* c = cacc != nullptr ? cacc + (nb - nb0 + j0) * mc_pad + p * 16 : nullptr;
              if (width == 16) {
                micro_kernel<2, 6>(ap, wdec + j0 * kKC, kKC, kc, c, mc_pad, first, last, to);
              } else {
                micro_kernel<1, 12>(ap, wdec + j0 * kKC, kKC, kc, c, mc_pad, first, last, to);
              }
            }
          }
        }
      }
    }
  }
}

void matmul_rows(const RowBatch& rows, const detail::WeightArgs& w, int64_t expert, int64_t n0,
                 int64_t n1) {
  if (rows.count <= 0 || n1 <= n0) return;
  // (count <= count_hint by contract; the test on count only keeps a bad call in bounds.)
  if (rows.count_hint <= kSmallRows && rows.count <= kSmallRows) {
    matmul_small(rows, w, expert, n0, n1);
  } else {
    matmul_large(rows, w, expert, n0, n1);
  }
}

// ---- dequantize ---------------------------------------------------------------------------------

template <DType D>
void dequantize_impl(const detail::DequantizeArgs& a, int64_t g0, int64_t g1) {
  const Tables& t = tables();
  const Decoder dec(t);
  for (int64_t g = g0; g < g1; ++g) {
    __m256 v[4];
    dec.natural_order(a.blocks + g * kBlockBytes, _mm256_broadcast_ss(t.scale + a.scales[g]), v);
    const int64_t base = g * kBlockSize;
    for (int q = 0; q < 4; ++q) {
      if constexpr (D == DType::f32) {
        _mm256_storeu_ps(static_cast<float*>(a.out) + base + 8 * q, v[q]);
      } else if constexpr (D == DType::bf16) {
        store128(static_cast<std::uint16_t*>(a.out) + base + 8 * q, to_bf16(v[q]));
      } else {
        store128(static_cast<std::uint16_t*>(a.out) + base + 8 * q,
                 _mm256_cvtps_ph(v[q], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
    }
  }
}

void dequantize_rows(const detail::DequantizeArgs& a, int64_t r0, int64_t r1) {
  const int64_t bpr = a.k / kBlockSize;
  switch (a.out_dtype) {
    case DType::bf16:
      dequantize_impl<DType::bf16>(a, r0 * bpr, r1 * bpr);
      break;
    case DType::f16:
      dequantize_impl<DType::f16>(a, r0 * bpr, r1 * bpr);
      break;
    default:
      dequantize_impl<DType::f32>(a, r0 * bpr, r1 * bpr);
      break;
  }
}

// ---- quantize -----------------------------------------------------------------------------------

// |q| -> E2M1 magnitude index m (0..7). From 1 up, E2M1 is f32 rounded to one mantissa bit:
// m = (|q| bits - bits(0.5) + half an E2M1 step [- 1 + the kept bit, for ties to even]) >> 22,
// saturated at 7 (the bit pattern order is the order of |q|). Below 1 that formula is <= the
// true index, which there counts the two midpoints passed: 0.25 and 0.75. The largest of the two
// is the index.
template <bool Away>  // ties away from zero (e2m1_encode_mistralrs), else to even (e2m1_encode)
struct Encoder {
  __m256i abs_mask, bias, one, seven, t_lo, t_mid, eight;
  Encoder()
      : abs_mask(_mm256_set1_epi32(0x7FFFFFFF)),
        bias(_mm256_set1_epi32(Away ? 0x200000 - 0x3F000000 : 0x1FFFFF - 0x3F000000)),
        one(_mm256_set1_epi32(1)),
        seven(_mm256_set1_epi32(7)),
        // "|q| > 0.25" (ties to even: 0.25 -> 0) or "|q| >= 0.25"; then "|q| >= 0.75".
        t_lo(_mm256_set1_epi32(Away ? 0x3E7FFFFF : 0x3E800000)),
        t_mid(_mm256_set1_epi32(0x3F3FFFFF)),
        eight(_mm256_set1_epi32(8)) {}
  // 8 scaled values -> magnitude indices (one per 32-bit lane).
  inline __m256i encode(__m256 q) const {
    const __m256i a = _mm256_and_si256(_mm256_castps_si256(q), abs_mask);
    __m256i r = _mm256_add_epi32(a, bias);
    if constexpr (!Away) r = _mm256_add_epi32(r, _mm256_and_si256(_mm256_srli_epi32(a, 22), one));
    const __m256i hi = _mm256_srai_epi32(r, 22);
    const __m256i lo_neg =
        _mm256_add_epi32(_mm256_cmpgt_epi32(a, t_lo), _mm256_cmpgt_epi32(a, t_mid));
    const __m256i lo = _mm256_sub_epi32(_mm256_setzero_si256(), lo_neg);
    return _mm256_min_epi32(_mm256_max_epi32(hi, lo), seven);
  }
  // Code bit 3: e2m1_encode takes the sign bit (-0 included); e2m1_encode_mistralrs takes q < 0.
  inline __m256i sign(__m256 q) const {
    if constexpr (Away) {
      return _mm256_and_si256(
          _mm256_castps_si256(_mm256_cmp_ps(q, _mm256_setzero_ps(), _CMP_LT_OQ)), eight);
    } else {
      return _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(q), 28), eight);
    }
  }
};

// 2^e as an f32 for e in [-126, 127] (scale_block uses [-64, 64]).
inline __m256 pow2(int e) {
  return _mm256_castsi256_ps(_mm256_set1_epi32((e + 127) << 23));
}

// v * 2^neg_e as scale_by_pow2 computes it (two multiplications, in that order).
inline void scale_block(const __m256 v[4], int neg_e, __m256 q[4]) {
  const int half = neg_e / 2;
  const __m256 f1 = pow2(half);
  const __m256 f2 = pow2(neg_e - half);
  for (int i = 0; i < 4; ++i)
    q[i] = _mm256_mul_ps(_mm256_mul_ps(v[i], f1), f2);
}

// 32 codes (4 vectors of 8 lanes, element order) -> 16 packed bytes.
inline void pack_codes(const __m256i c[4], uint8_t* dst) {
  const __m256i p01 = _mm256_packus_epi32(c[0], c[1]);
  const __m256i p23 = _mm256_packus_epi32(c[2], c[3]);
  __m256i b = _mm256_packus_epi16(p01, p23);
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  const __m256i words =
      _mm256_and_si256(_mm256_or_si256(b, _mm256_srli_epi16(b, 4)), _mm256_set1_epi16(0x00FF));
  store128(dst,
           _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1)));
}

template <DType D>
inline void load_block(const void* base, int64_t i, __m256 v[4]) {
  for (int q = 0; q < 4; ++q)
    v[q] = load8<D>(base, i + 8 * q);
}

// Largest |bits| of the block (the integer order of |x| patterns is the order of |x|, NaN last).
inline uint32_t max_abs_bits(const __m256 v[4]) {
  const __m256i m = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i a =
      _mm256_max_epu32(_mm256_max_epu32(_mm256_and_si256(_mm256_castps_si256(v[0]), m),
                                        _mm256_and_si256(_mm256_castps_si256(v[1]), m)),
                       _mm256_max_epu32(_mm256_and_si256(_mm256_castps_si256(v[2]), m),
                                        _mm256_and_si256(_mm256_castps_si256(v[3]), m)));
  __m128i x = _mm_max_epu32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  x = _mm_max_epu32(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_max_epu32(x, _mm_shuffle_epi32(x, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(x));
}

// The two candidates of the mse rule for one block: codes[c] of the block divided by 2^(e - c)
// (rounded by e2m1_encode), and sq[c][0..31], the squared errors of the values they decode to,
// as block_squared_error computes them (element order, f64).
inline void candidates(const __m256 v[4], int e, const Encoder<false>& enc, const __m256& mag,
                       __m256i codes[2][4], double (*sq)[kBlockSize]) {
  const __m256i sign_mask = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  __m256d vd[8];
  for (int i = 0; i < 4; ++i) {
    vd[2 * i] = _mm256_cvtps_pd(_mm256_castps256_ps128(v[i]));
    vd[2 * i + 1] = _mm256_cvtps_pd(_mm256_extractf128_ps(v[i], 1));
  }
  for (int c = 0; c < 2; ++c) {
    __m256 q[4];
    scale_block(v, c - e, q);
    const __m256 s = _mm256_set1_ps(e8m0_decode(e8m0_from_exponent(e - c)));
    const __m256 mag_s = _mm256_mul_ps(mag, s);  // |value| * scale, exact or Inf
    for (int i = 0; i < 4; ++i) {
      const __m256i m = enc.encode(q[i]);
      const __m256i sign = _mm256_and_si256(_mm256_castps_si256(q[i]), sign_mask);
      codes[c][i] = _mm256_or_si256(m, _mm256_srli_epi32(sign, 28));
      // e2m1_decode(code) * scale: a negative code gives the negated product (no NaN here).
      const __m256 dq =
          _mm256_xor_ps(_mm256_permutevar8x32_ps(mag_s, m), _mm256_castsi256_ps(sign));
      const __m256d d0 = _mm256_sub_pd(vd[2 * i], _mm256_cvtps_pd(_mm256_castps256_ps128(dq)));
      const __m256d d1 =
          _mm256_sub_pd(vd[2 * i + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(dq, 1)));
      _mm256_store_pd(sq[c] + 8 * i, _mm256_mul_pd(d0, d0));
      _mm256_store_pd(sq[c] + 8 * i + 4, _mm256_mul_pd(d1, d1));
    }
  }
}

// Codes of a block coded with the given scale byte (the final step of quantize_block).
template <bool Away>
inline void encode_block(const __m256 v[4], uint8_t scale, const Encoder<Away>& enc, __m256i c[4]) {
  __m256 q[4];
  scale_block(v, kScaleBias - static_cast<int>(scale), q);
  for (int i = 0; i < 4; ++i)
    c[i] = _mm256_or_si256(enc.encode(q[i]), enc.sign(q[i]));
}

// Scale byte of a finite block with largest magnitude bits amax_bits, every rule but mse.
template <ScaleRule Rule>
inline uint8_t scale_of(uint32_t amax_bits) {
  if (amax_bits == 0) return kZeroBlockScale;
  const float amax = bits_to_float(amax_bits);
  int e = 0;
  if constexpr (Rule == ScaleRule::floor) {
    e = exponent_floor_rule(amax);
  } else if constexpr (Rule == ScaleRule::ceil) {
    e = exponent_ceil_rule(amax);
  } else if constexpr (Rule == ScaleRule::even) {
    e = exponent_even_rule(amax);
  } else {
    e = exponent_mistralrs_rule(amax);
  }
  return e8m0_from_exponent(e);
}

// First non-finite element of a block at flat index base, or -1.
template <DType D>
int64_t first_non_finite_in(const void* weight, int64_t base) {
  for (int i = 0; i < kBlockSize; ++i) {
    const float x = detail::load_float(weight, D, base + i);
    if (!(std::fabs(x) <= 3.40282347e38f)) return base + i;
  }
  return -1;
}

// A block holding NaN or Inf: scale 0xFF, zero codes. Returns `first` updated.
template <DType D>
inline int64_t non_finite_block(const detail::QuantizeArgs& a, int64_t g, int64_t first) {
  std::memset(a.blocks + g * kBlockBytes, 0, kBlockBytes);
  a.scales[g] = kScaleNaN;
  return first >= 0 ? first : first_non_finite_in<D>(a.weight, g * kBlockSize);
}

// Two passes over groups of blocks: the scales first (independent short chains), then the codes;
// so the long chain of one block (maximum, exponent, scaling, rounding) does not serialize them.
template <DType D, ScaleRule Rule>
int64_t quantize_impl(const detail::QuantizeArgs& a, int64_t g0, int64_t g1) {
  constexpr int G = 8;
  const Encoder<Rule == ScaleRule::mistralrs> enc;
  int64_t first = -1;
  for (int64_t g = g0; g < g1; g += G) {
    const int nb = static_cast<int>(std::min<int64_t>(G, g1 - g));
    bool finite[G];
    for (int b = 0; b < nb; ++b) {
      __m256 v[4];
      load_block<D>(a.weight, (g + b) * kBlockSize, v);
      const uint32_t amax_bits = max_abs_bits(v);
      finite[b] = amax_bits <= 0x7F7FFFFFu;
      if (finite[b]) {
        a.scales[g + b] = scale_of<Rule>(amax_bits);
      } else {
        first = non_finite_block<D>(a, g + b, first);
      }
    }
    for (int b = 0; b < nb; ++b) {
      if (!finite[b]) continue;
      __m256 v[4];
      load_block<D>(a.weight, (g + b) * kBlockSize, v);
      __m256i c[4];
      encode_block(v, a.scales[g + b], enc, c);
      pack_codes(c, a.blocks + (g + b) * kBlockBytes);
    }
  }
  return first;
}

// 4x4 transpose of f64: t[j][b] = r[b][j].
inline void transpose4(const __m256d r[4], __m256d t[4]) {
  const __m256d a0 = _mm256_unpacklo_pd(r[0], r[1]), a1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d a2 = _mm256_unpacklo_pd(r[2], r[3]), a3 = _mm256_unpackhi_pd(r[2], r[3]);
  t[0] = _mm256_permute2f128_pd(a0, a2, 0x20);
  t[1] = _mm256_permute2f128_pd(a1, a3, 0x20);
  t[2] = _mm256_permute2f128_pd(a0, a2, 0x31);
  t[3] = _mm256_permute2f128_pd(a1, a3, 0x31);
}

// The mse rule, 8 blocks at a time: exponents first, then the candidates' squared errors as
// vectors in element order; then each sum is added in element order, 4 blocks side by side in
// the lanes of an f64 vector (2 candidates x 2 vectors: 4 independent chains).
template <DType D>
int64_t quantize_mse(const detail::QuantizeArgs& a, int64_t g0, int64_t g1) {
  constexpr int G = 8;
  const Encoder<false> enc;
  const __m256 mag = _mm256_load_ps(tables().mag);
  int64_t first = -1;
  alignas(32) double sq[G][2][kBlockSize];  // [block][candidate][element]
  __m256i codes[G][2][4];
  for (int64_t g = g0; g < g1; g += G) {
    const int nb = static_cast<int>(std::min<int64_t>(G, g1 - g));
    int e[G];
    bool search[G];
    bool any = false;
    for (int b = 0; b < nb; ++b) {
      search[b] = false;
      __m256 v[4];
      load_block<D>(a.weight, (g + b) * kBlockSize, v);
      const uint32_t amax_bits = max_abs_bits(v);
      if (amax_bits > 0x7F7FFFFFu) {
        first = non_finite_block<D>(a, g + b, first);
        continue;
      }
      e[b] = 0;  // all-zero block: kZeroBlockScale
      if (amax_bits != 0) {
        e[b] = exponent_ceil_rule(bits_to_float(amax_bits));
        if (e[b] > kMaxScaleExponent) e[b] = kMaxScaleExponent;
        search[b] = e[b] > kMinScaleExponent;
      }
      any = any || search[b];
      if (!search[b]) {
        const uint8_t scale = e8m0_from_exponent(e[b]);
        __m256i cb[4];
        encode_block(v, scale, enc, cb);
        a.scales[g + b] = scale;
        pack_codes(cb, a.blocks + (g + b) * kBlockBytes);
      }
    }
    if (!any) continue;
    for (int b = 0; b < G; ++b) {
      if (b < nb && search[b]) {
        __m256 v[4];
        load_block<D>(a.weight, (g + b) * kBlockSize, v);
        candidates(v, e[b], enc, mag, codes[b], sq[b]);
      } else {
        std::memset(sq[b], 0, sizeof sq[b]);
      }
    }
    __m256d err[2][2];  // [candidate][blocks 0-3 / 4-7]
    for (int c = 0; c < 2; ++c)
      for (int h = 0; h < 2; ++h)
        err[c][h] = _mm256_setzero_pd();
    for (int i = 0; i < kBlockSize; i += 4) {
      for (int c = 0; c < 2; ++c) {
        for (int h = 0; h < 2; ++h) {
          __m256d r[4], t[4];
          for (int b = 0; b < 4; ++b)
            r[b] = _mm256_load_pd(&sq[4 * h + b][c][i]);
          transpose4(r, t);
          for (int j = 0; j < 4; ++j)
            err[c][h] = _mm256_add_pd(err[c][h], t[j]);
        }
      }
    }
    alignas(32) double e0[G], e1[G];
    _mm256_store_pd(e0, err[0][0]);
    _mm256_store_pd(e0 + 4, err[0][1]);
    _mm256_store_pd(e1, err[1][0]);
    _mm256_store_pd(e1 + 4, err[1][1]);
    for (int b = 0; b < nb; ++b) {
      if (!search[b]) continue;
      // Ties keep the larger exponent: it never saturates.
      const int pick = e1[b] < e0[b] ? 1 : 0;
      a.scales[g + b] = e8m0_from_exponent(e[b] - pick);
      pack_codes(codes[b][pick], a.blocks + (g + b) * kBlockBytes);
    }
  }
  return first;
}

template <DType D>
int64_t quantize_dtype(const detail::QuantizeArgs& a, int64_t g0, int64_t g1) {
  switch (a.rule) {
    case ScaleRule::floor:
      return quantize_impl<D, ScaleRule::floor>(a, g0, g1);
    case ScaleRule::ceil:
      return quantize_impl<D, ScaleRule::ceil>(a, g0, g1);
    case ScaleRule::even:
      return quantize_impl<D, ScaleRule::even>(a, g0, g1);
    case ScaleRule::mse:
      return quantize_mse<D>(a, g0, g1);
    case ScaleRule::mistralrs:
      return quantize_impl<D, ScaleRule::mistralrs>(a, g0, g1);
  }
  return quantize_impl<D, ScaleRule::floor>(a, g0, g1);
}

int64_t quantize_rows(const detail::QuantizeArgs& a, int64_t r0, int64_t r1) {
  const int64_t bpr = a.k / kBlockSize;
  switch (a.weight_dtype) {
    case DType::bf16:
      return quantize_dtype<DType::bf16>(a, r0 * bpr, r1 * bpr);
    case DType::f16:
      return quantize_dtype<DType::f16>(a, r0 * bpr, r1 * bpr);
    default:
      return quantize_dtype<DType::f32>(a, r0 * bpr, r1 * bpr);
  }
}

}  // namespace

const Kernels& avx2_kernels() {
  static const Kernels table{Isa::avx2,        "avx2",       &quantize_rows,
                             &dequantize_rows, &matmul_rows, &matmul_rows_int8_avx2};
  return table;
}

}  // namespace mxfp4::cpu

MXFP4_ISA_TARGET_END
