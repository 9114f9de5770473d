// A faster quantize_block (include/mxfp4/format.hpp) for the GPU kernel and the portable CPU
// table: the same scale byte and the same 16 packed bytes for every rule and every input
// (tests/test_quantize_block_fast.cpp checks it), in a third to a fifth of the operations.
// format.hpp stays the readable definition; this file is an internal header (MXFP4_HD, device and
// host). The GPU kernel codes bf16 blocks with the mse rule through quantize_block_bf16_mse_fast
// (below), in packed bf16x2 arithmetic.
//
// Element rounding. x = |v| / 2^e (one multiplication by 2^-e, exact wherever the result is a
// normal f32; below 2^-126 every rounding gives code 0 anyway) is first clamped to 6. Its binade
// p = 2^max(0, floor(log2 x)) fixes the E2M1 step there, p / 2 (0.5 below 2, then 1, then 2), and
// y = p * (2^22 + 3) + x is rounded by the FPU to a multiple of that step: p * 2^22 has exactly
// that ulp, so the one rounding of the addition is E2M1's rounding, ties to the even multiple,
// and an even multiple is an even code. The offset 3p (6 steps) makes the low 4 bits of
// bits(y) + (bits(y) >> 22) the code's magnitude index k + 2 log2(p) (k: steps above p * 2^22;
// the exponent field adds 2 per binade), so the code needs no table. y - p * (2^22 + 3) is the
// E2M1 value, exactly. The mistralrs rule rounds ties away from zero: the larger of that sum and
// the same one made with an odd offset (3.5p, whose ties go to the odd multiple).
// p * (2^22 + 3) is an exact product, so contracting these lines into FMAs changes nothing.
//
// The mse rule. Both candidates are coded in one pass, in units of 2^(e-1): r = |v| / 2^(e-1);
// candidate e-1 rounds r on the E2M1 grid, candidate e rounds r on the doubled grid
// {0, 1, 2, 3, 4, 6, 8, 12} (binade max(2, .), offset 2p: the index is then k + 2 log2(p) - 2).
// Each element's difference r - value is exact in f32 (it is a multiple of ulp(r) below 2^24
// ulps), and is the reference's f64 difference divided by 2^(e-1); so comparing the reference's
// f64 sums is comparing the same sums in these units (a power of two scales every f64 rounding
// alike). The sums here are f32 estimates G1, G0, each within 2^-17 G + 2^-139 of the reference's
// f64 sum F (f32 rounding of at most 64 operations, the f64 sum's own 31 roundings, and the
// sub-2^-126 elements), whether or not a compiler contracts d * d + g: the estimate decides when
// |G0 - G1| exceeds 2^-16 (G0 + G1) + 2^-100, and otherwise (a near tie: 1 block in 10^4 to 10^5
// of random data) both sums are computed as the reference computes them, in f64 (in these
// units, reading the block again through the caller's load). Near f32's top (ceil exponent 126)
// candidate 126 can decode amax past f32's range, which the reference scores +Inf: then 125 is
// chosen.
#pragma once

#include <cstdint>
#include <type_traits>

#include "mxfp4/format.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

#if defined(__CUDA_ARCH__)
#define MXFP4_FAST_UNROLL _Pragma("unroll")
#define MXFP4_FAST_NO_UNROLL _Pragma("unroll 1")
#else
#define MXFP4_FAST_UNROLL
#define MXFP4_FAST_NO_UNROLL
#endif

namespace mxfp4::detail {

// y = p * kMagicEven + x rounds x to E2M1's grid in p's binade (see above); kMagicOdd rounds
// ties the other way; kMagicDoubled rounds on the doubled grid of mse's candidate e.
inline constexpr float kMagicEven = 4194307.0f;     // 2^22 + 3
inline constexpr float kMagicOdd = 4194307.5f;      // 2^22 + 3.5
inline constexpr float kMagicDoubled = 4194306.0f;  // 2^22 + 2
// Largest finite magnitude bits; a block whose largest |bits| is above is NaN/Inf.
inline constexpr std::uint32_t kMaxFiniteBits = 0x7F7FFFFFu;

// min and max of finite a, b >= 0. On the host, by arithmetic on the bit patterns (whose order
// is the values' order): a compiler turns a < b ? a : b into a branch where the smaller value
// makes the rest constant (saturation), and that branch is mispredicted on real data.
MXFP4_HD inline float min_float(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fminf(a, b);
#else
  const std::int32_t ia = static_cast<std::int32_t>(float_bits(a));
  const std::int32_t ib = static_cast<std::int32_t>(float_bits(b));
  const std::int32_t d = ia - ib;
  return bits_to_float(static_cast<std::uint32_t>(ib + (d & (d >> 31))));
#endif
}
MXFP4_HD inline float max_float(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  const std::int32_t ia = static_cast<std::int32_t>(float_bits(a));
  const std::int32_t ib = static_cast<std::int32_t>(float_bits(b));
  const std::int32_t d = ia - ib;
  return bits_to_float(static_cast<std::uint32_t>(ia - (d & (d >> 31))));
#endif
}
MXFP4_HD inline std::uint32_t max_u32(std::uint32_t a, std::uint32_t b) {
  return a > b ? a : b;
}

// (word >> 4) | (nibble << 28): appends a code above the previous ones (8 appends: the first
// element ends in the low nibble).
MXFP4_HD inline std::uint32_t append_code(std::uint32_t word, std::uint32_t nibble) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(word, nibble, 4);
#else
  return (word >> 4) | (nibble << 28);
#endif
}
// (word << 4) | (bits >> 28): the sign bit of bits lands on bit 3 of the new low nibble (bits 0-2
// take junk that the caller masks off). Called from the last element down to the first.
MXFP4_HD inline std::uint32_t prepend_sign(std::uint32_t word, std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_l(bits, word, 4);
#else
  return (word << 4) | (bits >> 28);
#endif
}

// 2^max(lowest, floor(log2 x)) for finite x >= 0; lowest_bits is the bit pattern of 2^lowest.
MXFP4_HD inline float binade(float x, std::uint32_t lowest_bits) {
  return bits_to_float(max_u32(float_bits(x), lowest_bits) & 0x7F800000u);
}

// The magnitude index (low 4 bits of the result; the rest is junk) of y = p * magic + x.
MXFP4_HD inline std::uint32_t index_bits(float y) {
  const std::uint32_t u = float_bits(y);
  return u + (u >> 22);
}

// E2M1 rounding of x >= 0 (finite; above 6 saturates): the magnitude index in the low 4 bits of
// the result (junk above). Ties to even (e2m1_encode) or away from zero (the mistralrs rule).
MXFP4_HD inline std::uint32_t e2m1_index_even(float x) {
  const float rc = min_float(x, 6.0f);
  const float p = binade(rc, 0x3F800000u);
  return index_bits(p * kMagicEven + rc);
}
MXFP4_HD inline std::uint32_t e2m1_index_away(float x) {
  const float rc = min_float(x, 6.0f);
  const float p = binade(rc, 0x3F800000u);
  return index_bits(max_float(p * kMagicEven + rc, (p * kMagicOdd + rc) - p * 0.5f));
}

// The shared exponent of every rule but mse for a finite amax > 0 given by its bits, before
// clamping: format.hpp's exponent_*_rule functions, without their loops and, for the mistralrs
// rule, without the f64 logarithm except near a power of two.
MXFP4_HD inline int rule_exponent_fast(ScaleRule rule, std::uint32_t amax_bits) {
  const float amax = bits_to_float(amax_bits);
  if (rule == ScaleRule::mistralrs) {
    // floor(log2 y) is the answer unless y is a power of two or within 2^-11 below one: there
    // log2(y) is at least 2^-23 above floor and 3.5e-4 below floor + 1, far more than the f32
    // rounding of a log2 below 128 in magnitude moves it.
    const float y = amax / 6.0f;
    const std::uint32_t u = float_bits(y);
    const std::uint32_t frac = u & 0x7FFFFFu;
    if (u >= 0x00800000u && frac != 0 && frac < 0x7FF000u) return static_cast<int>(u >> 23) - 127;
    return exponent_mistralrs_rule(amax);
  }
  if (amax_bits < 0x00800000u) {  // a subnormal amax: rare, the reference's loops
    switch (rule) {
      case ScaleRule::floor:
        return exponent_floor_rule(amax);
      case ScaleRule::even:
        return exponent_even_rule(amax);
      default:
        return exponent_ceil_rule(amax);
    }
  }
  const int fl = static_cast<int>(amax_bits >> 23) - 127;
  const std::uint32_t frac = amax_bits & 0x7FFFFFu;
  switch (rule) {
    case ScaleRule::floor:
      return fl - 2;
    case ScaleRule::even:
      return frac >= 0x600000u ? fl - 1 : fl - 2;
    default:  // ceil, and mse's first candidate
      return frac <= 0x400000u ? fl - 2 : fl - 1;
  }
}

// Sign bits of elements 8w..8w+7 on bits 4i+3 (the other bits are junk).
MXFP4_HD inline std::uint32_t sign_word(const float* v, int w) {
  std::uint32_t signs = 0;
  MXFP4_FAST_UNROLL
  for (int i = 7; i >= 0; --i)
    signs = prepend_sign(signs, float_bits(v[8 * w + i]));
  return signs;
}

// Codes of a finite block for the scale exponent e in [-127, 126]: words[w] holds elements
// 8w..8w+7, element 8w+i in bits 4i..4i+3 (so the bytes, little-endian, are quantize_block's).
template <ScaleRule Rule>
MXFP4_HD inline void code_block_fast(const float* v, int e, std::uint32_t (&words)[4]) {
  const float inv_scale = bits_to_float(static_cast<std::uint32_t>(127 - e) << 23);  // 2^-e
  MXFP4_FAST_UNROLL
  for (int w = 0; w < 4; ++w) {
    std::uint32_t word = 0;
    std::uint32_t signs = 0;
    MXFP4_FAST_UNROLL
    for (int i = 0; i < 8; ++i) {
      const float x = v[8 * w + i];
      float r;
      if constexpr (Rule == ScaleRule::mistralrs) {
        // e2m1_encode_mistralrs sets the sign for q < 0 only (not for -0), q being the
        // reference's quotient: two multiplications, which can underflow to -0 where one would
        // not. (Not q + 0 to clear the sign of -0: that contracts to an FMA that keeps it.)
        const float q = scale_by_pow2(x, -e);
        r = fabsf(q);
        signs = (signs >> 4) | (q < 0.0f ? 0x80000000u : 0u);
      } else {
        r = fabsf(x) * inv_scale;
      }
      word =
          append_code(word, Rule == ScaleRule::mistralrs ? e2m1_index_away(r) : e2m1_index_even(r));
    }
    if constexpr (Rule != ScaleRule::mistralrs) signs = sign_word(v, w);
    words[w] = (word & 0x77777777u) | (signs & 0x88888888u);
  }
}

// mse's two candidates for one element, r = |v| / 2^(e-1) (at most 12): y (whose index_bits
// are the code) and the decoded magnitude, in units of 2^(e-1), of candidate e - 1 (E2M1 on r,
// saturating at 6) and of candidate e (the doubled grid on r; r <= 12 never saturates it).
struct MseCandidates {
  float y_lower, value_lower, y_upper, value_upper;
};
MXFP4_HD inline MseCandidates mse_candidates(float r) {
  MseCandidates c;
  const float rc = min_float(r, 6.0f);
  const float p_lower = binade(rc, 0x3F800000u);
  c.y_lower = p_lower * kMagicEven + rc;
  c.value_lower = c.y_lower - p_lower * kMagicEven;
  const float p_upper = binade(r, 0x40000000u);
  c.y_upper = p_upper * kMagicDoubled + r;
  c.value_upper = c.y_upper - p_upper * kMagicDoubled;
  return c;
}

// acc + d * d rounded once, as block_squared_error's f64 sum does: d * d is exact there (d has
// at most 24 significant bits), so an FMA gives the same; the device spells the operations out.
MXFP4_HD inline double add_square(double acc, double d) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(acc, __dmul_rn(d, d));
#else
  return acc + d * d;
#endif
}

// block_squared_error(v, e - 1) < block_squared_error(v, e), computed as the reference does but
// in units of 2^(e-1) (the same f64 roundings: every term and partial sum is scaled by 2^(2-2e),
// far from f64's limits). The slow path of the mse rule, for near ties. load(i) returns element
// i: the GPU kernel reads the block again from shared memory, so that this rare loop, kept rolled,
// neither indexes the register copy (which would move it to local memory) nor needs registers
// of its own.
template <typename Load>
MXFP4_HD inline bool mse_lower_is_better_exact(const Load& load, float inv_unit) {
  double err_lower = 0.0, err_upper = 0.0;
  MXFP4_FAST_NO_UNROLL
  for (int i = 0; i < kBlockSize; ++i) {
    const float a = fabsf(load(i));
    const MseCandidates c = mse_candidates(a * inv_unit);
    const double r = static_cast<double>(a) * static_cast<double>(inv_unit);  // exact
    err_lower = add_square(err_lower, r - static_cast<double>(c.value_lower));
    err_upper = add_square(err_upper, r - static_cast<double>(c.value_upper));
  }
  return err_lower < err_upper;
}

// The mse rule for a finite block whose ceil-rule exponent e is in [-126, 126]: returns the
// chosen exponent (e - 1 or e) and that candidate's codes. upper_overflows: candidate e decodes
// amax past f32's range (+Inf error for the reference), so e - 1 wins. *used_exact (tests) tells
// whether the f32 estimate left the choice to the f64 sums.
template <typename Load>
MXFP4_HD inline int code_block_mse_fast(const float* v, const Load& load, int e,
                                        bool upper_overflows, std::uint32_t (&words)[4],
                                        bool* used_exact = nullptr) {
  const float inv_unit = bits_to_float(static_cast<std::uint32_t>(128 - e) << 23);  // 2^-(e-1)
  std::uint32_t lower[4], upper[4];
  float g_lower = 0.0f, g_upper = 0.0f;  // f32 estimates of the two squared errors
  MXFP4_FAST_UNROLL
  for (int w = 0; w < 4; ++w) {
    std::uint32_t word_lower = 0, word_upper = 0;
    MXFP4_FAST_UNROLL
    for (int i = 0; i < 8; ++i) {
      const float r = fabsf(v[8 * w + i]) * inv_unit;
      const MseCandidates c = mse_candidates(r);
      const float d_lower = r - c.value_lower;  // exact wherever r is a normal f32
      const float d_upper = r - c.value_upper;
      g_lower = d_lower * d_lower + g_lower;
      g_upper = d_upper * d_upper + g_upper;
      word_lower = append_code(word_lower, index_bits(c.y_lower));
      word_upper = append_code(word_upper, index_bits(c.y_upper));
    }
    lower[w] = word_lower;
    upper[w] = word_upper;
  }
  const float margin = (g_upper + g_lower) * 0x1p-16f + 0x1p-100f;
  bool pick_lower;
  if (upper_overflows || g_upper - g_lower > margin) {
    pick_lower = true;
  } else if (g_lower - g_upper > margin) {
    pick_lower = false;
  } else {
    pick_lower = mse_lower_is_better_exact(load, inv_unit);  // ties keep e, as the reference
    if (used_exact != nullptr) *used_exact = true;
  }
  MXFP4_FAST_UNROLL
  for (int w = 0; w < 4; ++w) {
    words[w] = ((pick_lower ? lower[w] : upper[w]) & 0x77777777u) | (sign_word(v, w) & 0x88888888u);
  }
  return pick_lower ? e - 1 : e;
}

// quantize_block for the rule Rule: returns the scale byte; words[w] receives the codes of
// elements 8w..8w+7, element 8w+i in bits 4i..4i+3 (the packed bytes in little-endian order).
// load(i) returns v[i] (see mse_lower_is_better_exact).
template <ScaleRule Rule, typename Load>
MXFP4_HD inline std::uint8_t quantize_block_fast(const float* v, std::uint32_t (&words)[4],
                                                 const Load& load) {
  std::uint32_t amax_bits = 0;
  MXFP4_FAST_UNROLL
  for (int i = 0; i < kBlockSize; ++i)
    amax_bits = max_u32(amax_bits, float_bits(v[i]) & 0x7FFFFFFFu);
  if (amax_bits > kMaxFiniteBits) {  // NaN or Inf
    MXFP4_FAST_UNROLL
    for (int w = 0; w < 4; ++w)
      words[w] = 0;
    return kScaleNaN;
  }
  // Every rule gives at most 126 (amax < 2^128), which code_block_fast needs.
  int e = 0;  // an all-zero block: kZeroBlockScale, codes from the signs of the zeros
  if (amax_bits != 0) {
    e = rule_exponent_fast(Rule == ScaleRule::mse ? ScaleRule::ceil : Rule, amax_bits);
    if constexpr (Rule == ScaleRule::mse) {
      if (e > kMinScaleExponent) {
        // Candidate 126 (the largest) decodes amax past f32's range when amax / 2^126 rounds
        // to 4 or 6, from 3.5 * 2^126 on.
        const bool upper_overflows = e == 126 && amax_bits >= 0x7F600000u;
        return static_cast<std::uint8_t>(code_block_mse_fast(v, load, e, upper_overflows, words) +
                                         kScaleBias);
      }
    }
    if (e < kMinScaleExponent) e = kMinScaleExponent;
  }
  code_block_fast<Rule == ScaleRule::mse ? ScaleRule::ceil : Rule>(v, e, words);
  return static_cast<std::uint8_t>(e + kScaleBias);
}

// The same with v in memory (host code; a device caller with v in registers passes a load).
template <ScaleRule Rule>
MXFP4_HD inline std::uint8_t quantize_block_fast(const float* v, std::uint32_t (&words)[4]) {
  return quantize_block_fast<Rule>(v, words, [v](int i) { return v[i]; });
}

// ---- bf16 input, mse rule ----------------------------------------------------------------------
//
// The GPU kernel's path for bf16 weights and the mse rule: the block stays in its packed form,
// pairs of bf16 (element 2k in bits 0..15 of word k, element 2k+1 in bits 16..31), and both
// candidates are coded two elements an instruction with bf16x2 arithmetic (fma.rn.bf16x2 and
// friends: the exact result rounded once to bf16, ties to even). The same scale byte and bytes as
// quantize_block (tests/test_quantize_block_fast.cpp checks the arithmetic on every bf16 pattern
// and on many blocks, through the host emulation below, which rounds the same way).
//
// Why bf16 arithmetic is enough. A bf16 value has 8 significant bits. Let e be the ceil-rule
// exponent and r = |v| / 2^(e-1) (at most 12), computed exactly as bf16 * 2^-(e-1) whenever r is
// a normal number. Only e >= -123 takes this path: then any bf16 subnormal |v| < 2^-126 gives
// r < 2^-2, coded 0 by both candidates whether or not the hardware flushes it; smaller blocks
// go to the f32 path.
// - Element rounding: the f32 construction above in bf16: y = p * 67 + rc with p = 2^j in
//   {1, 2, 4} (binade of rc = min(r, 6), at least 1) lies in [64p, 128p), where bf16's step is
//   p / 2, E2M1's step in p's binade; the one rounding of the fma is E2M1's, ties to even
//   (y's mantissa is 6 + 2 rc / p, even exactly when the code is). Candidate e, on the doubled
//   grid, uses y = p * 66 + r with p in {2, 4, 8} (binade of r, at least 2). In both, the low 4
//   bits of u + (u >> 6) (u: y's 16 bits) are the code's magnitude index, as for f32 (the
//   mantissa is at most 10, so the sum never carries out of a half: one 32-bit addition
//   serves both halves of a pair), and y - p * 67 (resp. 66) is the E2M1 value, exactly.
// - The choice compares S_l = sum d_l^2 and S_u = sum d_u^2 (d = r - value, in units of
//   2^(e-1)): candidate e - 1 wins when D = S_u - S_l > 0. Each element adds
//   n = d_u^2 - d_l^2 = a * b with a = v_u - v_l and b = (v_l + v_u) - 2 r. v_l, v_u, a and
//   v_l + v_u are multiples of 1/2 below 24 (at most 6 bits). For r > 1/4, b is a multiple of
//   ulp(r) smaller than 256 ulp(r) in magnitude: |b| < 1/2 on (1/4, 1/2) (v_l = 1/2, v_u = 0;
//   ulp 2^-9), |b| <= |d_l| + |d_u| <= 3/4 on [1/2, 2) (ulp >= 2^-8), <= 1 on [2, 4) (2^-6), < 3
//   on [4, 8) (2^-5; d_l = r - 6 above 6) and <= 8 on [8, 12] (2^-4). So every step is exact in
//   bf16, and so is n. Written out, n = 1/4 - |r - 1/2| on (1/4, 3/4), 1/4 - |r - 3/2| on
//   (5/4, 7/4), -4 (r - 7) on (7, 10], -12 (r - 9) on (10, 12] and 0 elsewhere (a = 0 there,
//   whatever finite b is: r <= 1/4 included): at most 8 significant bits, a multiple of 2^-9 of
//   magnitude at most 36. Their sum D is a multiple of 2^-9 below 2^11 in magnitude: exact in
//   f32, in any order.
// - The reference sums d^2 in f64 in element order (in absolute units: a power of two, which
//   rounds alike). Those sums are within 31 * 2^-53 * 1152 < 2^-37 of S_l and S_u (every term is
//   at most 36), so when D != 0 (|D| >= 2^-9) the reference's comparison has D's sign. When
//   D = 0 its f64 sums may still differ by their roundings (elements far below 2^-14 carry bits
//   f64 drops): then both sums are computed as the reference computes them
//   (mse_lower_is_better_exact), rarely (an exact tie). Near f32's top candidate 126 can decode
//   amax past f32's range: then 125 is chosen, as in code_block_mse_fast.

// Packed bf16 pairs, the device's bf16x2 instructions. On the host, an emulation for the tests:
// each result is computed in f64 and rounded to f32 and then to bf16 (ties to even). Every
// operation below is exact on the values it meets except the rounding fma of y, whose f64 result
// is exact unless rc is below 2^-40 p, where every rounding gives 67p (resp. 66p); so the
// emulation gives the hardware's results.
#if defined(__CUDA_ARCH__)
__device__ inline __nv_bfloat162 bf16x2_from_bits(std::uint32_t u) {
  __nv_bfloat162 b;
  memcpy(&b, &u, sizeof b);
  return b;
}
__device__ inline std::uint32_t bf16x2_bits(__nv_bfloat162 b) {
  std::uint32_t u;
  memcpy(&u, &b, sizeof u);
  return u;
}
#else
inline float bf16x2_half(std::uint32_t pair, int high) {
  return bits_to_float(high ? pair & 0xFFFF0000u : pair << 16);
}
inline std::uint32_t bf16x2_round(double x) {
  const std::uint32_t u = float_bits(static_cast<float>(x));
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
template <typename F>
inline std::uint32_t bf16x2_map(std::uint32_t a, std::uint32_t b, std::uint32_t c, F f) {
  const auto half = [&](int h) {
    return bf16x2_round(f(static_cast<double>(bf16x2_half(a, h)),
                          static_cast<double>(bf16x2_half(b, h)),
                          static_cast<double>(bf16x2_half(c, h))));
  };
  return half(0) | (half(1) << 16);
}
#endif

// a * b + c, rounded once to bf16 (ties to even), in each half.
MXFP4_HD inline std::uint32_t bf16x2_fma(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
#if defined(__CUDA_ARCH__)
  return bf16x2_bits(__hfma2(bf16x2_from_bits(a), bf16x2_from_bits(b), bf16x2_from_bits(c)));
#else
  return bf16x2_map(a, b, c, [](double x, double y, double z) { return std::fma(x, y, z); });
#endif
}
MXFP4_HD inline std::uint32_t bf16x2_mul(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return bf16x2_bits(__hmul2_rn(bf16x2_from_bits(a), bf16x2_from_bits(b)));
#else
  return bf16x2_map(a, b, 0, [](double x, double y, double) { return x * y; });
#endif
}
MXFP4_HD inline std::uint32_t bf16x2_add(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return bf16x2_bits(__hadd2_rn(bf16x2_from_bits(a), bf16x2_from_bits(b)));
#else
  return bf16x2_map(a, b, 0, [](double x, double y, double) { return x + y; });
#endif
}
MXFP4_HD inline std::uint32_t bf16x2_sub(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return bf16x2_bits(__hsub2_rn(bf16x2_from_bits(a), bf16x2_from_bits(b)));
#else
  return bf16x2_map(a, b, 0, [](double x, double y, double) { return x - y; });
#endif
}
// min / max of values that are never NaN here.
MXFP4_HD inline std::uint32_t bf16x2_min(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return bf16x2_bits(__hmin2(bf16x2_from_bits(a), bf16x2_from_bits(b)));
#else
  return bf16x2_map(a, b, 0, [](double x, double y, double) { return x < y ? x : y; });
#endif
}
MXFP4_HD inline std::uint32_t bf16x2_max(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return bf16x2_bits(__hmax2(bf16x2_from_bits(a), bf16x2_from_bits(b)));
#else
  return bf16x2_map(a, b, 0, [](double x, double y, double) { return x > y ? x : y; });
#endif
}
// Maximum of each 16-bit half, unsigned and signed.
MXFP4_HD inline std::uint32_t max_u16x2(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __vmaxu2(a, b);
#else
  return max_u32(a & 0xFFFF0000u, b & 0xFFFF0000u) | max_u32(a & 0xFFFFu, b & 0xFFFFu);
#endif
}
MXFP4_HD inline std::uint32_t max_s16x2(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __vmaxs2(a, b);
#else
  // Flipping the sign bits maps the signed order onto the unsigned one.
  return max_u16x2(a ^ 0x80008000u, b ^ 0x80008000u) ^ 0x80008000u;
#endif
}
// lop3.b32 (PTX): bit i of the result is bit (a_i b_i c_i), read as a 3-bit number, of the look-up
// table kLut (so kLut = f(0xF0, 0xCC, 0xAA) for the function f). The host emulates the same
// table, so that the CPU tests check the very constant the GPU runs.
template <std::uint32_t kLut>
MXFP4_HD inline std::uint32_t lop3(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
#if defined(__CUDA_ARCH__)
  std::uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, %4;" : "=r"(r) : "r"(a), "r"(b), "r"(c), "n"(kLut));
  return r;
#else
  std::uint32_t r = 0;
  for (int i = 0; i < 32; ++i) {
    const std::uint32_t index = ((a >> i) & 1u) << 2 | ((b >> i) & 1u) << 1 | ((c >> i) & 1u);
    r |= ((kLut >> index) & 1u) << i;
  }
  return r;
#endif
}
// (a & ~mask) | (b & mask) in one instruction (a compiler splits the usual spellings in two):
// f(0xF0, 0xCC, 0xAA) = (0xF0 & 0x55) | (0xCC & 0xAA) = 0xD8.
template <std::uint32_t Mask>
MXFP4_HD inline std::uint32_t bit_select(std::uint32_t a, std::uint32_t b) {
  return lop3<0xD8u>(a, b, Mask);
}
// prmt.b32 (PTX): byte i of the result is byte s_i of the pair (b:a), s_i = bits 4i..4i+2 of
// selector; when bit 4i+3 is set, the sign (top bit) of that byte is replicated over all 8 bits.
template <std::uint32_t Selector>
MXFP4_HD inline std::uint32_t byte_perm(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  std::uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "n"(Selector));
  return r;
#else
  const std::uint64_t both = (static_cast<std::uint64_t>(b) << 32) | a;
  std::uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const std::uint32_t s = (Selector >> (4 * i)) & 0xFu;
    std::uint32_t byte = static_cast<std::uint32_t>(both >> (8 * (s & 7u))) & 0xFFu;
    if (s & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
    r |= byte << (8 * i);
  }
  return r;
#endif
}

// bf16 bit patterns, both halves.
inline constexpr std::uint32_t kBf16One = 0x3F803F80u;
inline constexpr std::uint32_t kBf16Two = 0x40004000u;
inline constexpr std::uint32_t kBf16Six = 0x40C040C0u;
inline constexpr std::uint32_t kBf16MinusTwo = 0xC000C000u;
inline constexpr std::uint32_t kBf16Magic = 0x42864286u;         // 67 = 2^6 + 3
inline constexpr std::uint32_t kBf16MinusMagic = 0xC286C286u;    // -67
inline constexpr std::uint32_t kBf16MagicDoubled = 0x42844284u;  // 66 = 2^6 + 2
inline constexpr std::uint32_t kBf16MinusMagicDoubled = 0xC284C284u;
inline constexpr std::uint32_t kBf16ExponentMask = 0x7F807F80u;
// The smallest ceil-rule exponent the packed path takes (see above).
inline constexpr int kBf16MseMinExponent = -123;

// Both mse candidates of a pair r = |v| / 2^(e-1) (bf16x2): y of candidate e - 1 and of
// candidate e (code_indices gives their codes), and n = d_u^2 - d_l^2 for both elements.
struct MsePairBf16 {
  std::uint32_t y_lower, y_upper, n;
};
MXFP4_HD inline MsePairBf16 mse_pair_bf16(std::uint32_t r) {
  MsePairBf16 c;
  const std::uint32_t rc = bf16x2_min(r, kBf16Six);
  const std::uint32_t p_lower = bf16x2_max(rc & kBf16ExponentMask, kBf16One);
  const std::uint32_t p_upper = bf16x2_max(r & kBf16ExponentMask, kBf16Two);
  c.y_lower = bf16x2_fma(p_lower, kBf16Magic, rc);
  c.y_upper = bf16x2_fma(p_upper, kBf16MagicDoubled, r);
  const std::uint32_t v_lower = bf16x2_fma(p_lower, kBf16MinusMagic, c.y_lower);
  const std::uint32_t v_upper = bf16x2_fma(p_upper, kBf16MinusMagicDoubled, c.y_upper);
  const std::uint32_t a = bf16x2_sub(v_upper, v_lower);
  const std::uint32_t b = bf16x2_fma(r, kBf16MinusTwo, bf16x2_add(v_lower, v_upper));
  c.n = bf16x2_mul(a, b);
  return c;
}

// The magnitude indices of a pair's codes from its y (either candidate): bits 0..3 and 16..19
// (the other bits are junk).
MXFP4_HD inline std::uint32_t code_indices(std::uint32_t y) {
  return y + (y >> 6);
}

// The signs of a block of pairs, for pack_codes_bf16: for pairs k = 2j, 2j + 1, the sign bits
// of elements [2k, 2k + 2, 2k + 1, 2k + 3] replicated over the bytes of signs[j] (prmt's sign
// replication of the byte holding each element's top bit).
MXFP4_HD inline void sign_bytes_bf16(const std::uint32_t (&w)[16], std::uint32_t (&signs)[8]) {
  MXFP4_FAST_UNROLL
  for (int j = 0; j < 8; ++j)
    signs[j] = byte_perm<0xFBD9u>(w[2 * j], w[2 * j + 1]);
}

// The four code words of a block from the chosen candidate's y pairs and the signs. Word q holds
// elements 8q..8q+7: for pairs k = 4q..4q+3 the index bytes are gathered as [e0, e2, e1, e3] and
// [e4, e6, e5, e7] (the order of the sign bytes), each element's sign put on bit 3, then split
// into even and odd elements, whose low nibbles interleave into the packed bytes.
MXFP4_HD inline void pack_codes_bf16(const std::uint32_t (&y)[16], const std::uint32_t (&signs)[8],
                                     std::uint32_t (&words)[4]) {
  MXFP4_FAST_UNROLL
  for (int q = 0; q < 4; ++q) {
    const std::uint32_t* yq = y + 4 * q;
    const std::uint32_t s =
        byte_perm<0x6240u>(code_indices(yq[0]), code_indices(yq[1])) | (signs[2 * q] & 0x08080808u);
    const std::uint32_t t = byte_perm<0x6240u>(code_indices(yq[2]), code_indices(yq[3])) |
                            (signs[2 * q + 1] & 0x08080808u);
    const std::uint32_t even = byte_perm<0x5410u>(s, t);
    const std::uint32_t odd = byte_perm<0x7632u>(s, t);
    words[q] = bit_select<0xF0F0F0F0u>(even, odd << 4);
  }
}

// The largest magnitude of a block of pairs, as f32 bits (NaN and Inf included), two ways.
// With 16-bit maxima (sm_90): as signed 16-bit numbers the nonnegative elements order by
// magnitude (their maximum, if there is one, is >= 0); as unsigned ones the negative elements
// do, above all nonnegative ones. So no magnitude needs taking.
MXFP4_HD inline std::uint32_t bf16_block_amax_bits_u16x2(const std::uint32_t (&w)[16]) {
  std::uint32_t top_signed = w[0], top_unsigned = w[0];
  MXFP4_FAST_UNROLL
  for (int k = 1; k < 16; ++k) {
    top_signed = max_s16x2(top_signed, w[k]);
    top_unsigned = max_u16x2(top_unsigned, w[k]);
  }
  const std::uint32_t mag = max_u16x2(max_s16x2(top_signed, 0), top_unsigned & 0x7FFF7FFFu);
  return max_u32(mag << 16, mag & 0xFFFF0000u);
}
// With 32-bit maxima: the high halves' magnitudes in place, the low halves' shifted past the
// sign bit.
MXFP4_HD inline std::uint32_t bf16_block_amax_bits_u32(const std::uint32_t (&w)[16]) {
  std::uint32_t high = 0, low = 0;
  MXFP4_FAST_UNROLL
  for (int k = 0; k < 16; ++k) {
    high = max_u32(high, w[k] & 0x7FFF0000u);
    low = max_u32(low, w[k] << 17);
  }
  return max_u32(high, low >> 1);
}

// quantize_block_fast<ScaleRule::mse> for a block of bf16 given as 16 pairs (w[k]: element 2k
// in the low half); load(i) returns element i as f32 (the rare exact path reads it). *used_exact
// (tests) tells whether an exact tie left the choice to the f64 sums.
template <typename Load>
MXFP4_HD inline std::uint8_t quantize_block_bf16_mse_fast(const std::uint32_t (&w)[16],
                                                          std::uint32_t (&words)[4],
                                                          const Load& load,
                                                          bool* used_exact = nullptr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  const std::uint32_t amax_bits = bf16_block_amax_bits_u32(w);  // no 16-bit max before sm_90
#else
  const std::uint32_t amax_bits = bf16_block_amax_bits_u16x2(w);
#endif
  if (amax_bits == 0) {  // all zeros: kZeroBlockScale, codes 0 with the zeros' signs
    std::uint32_t zero[16], signs[8];
    MXFP4_FAST_UNROLL
    for (int k = 0; k < 16; ++k)
      zero[k] = kBf16Magic;  // y of r = 0: index 0
    sign_bytes_bf16(w, signs);
    pack_codes_bf16(zero, signs, words);
    return kZeroBlockScale;
  }
  const int e = amax_bits > kMaxFiniteBits ? kMinScaleExponent
                                           : rule_exponent_fast(ScaleRule::ceil, amax_bits);
  if (e < kBf16MseMinExponent) {  // NaN/Inf, tiny blocks: the f32 path
    float v[kBlockSize];
    MXFP4_FAST_UNROLL
    for (int k = 0; k < 16; ++k) {
      v[2 * k] = bits_to_float(w[k] << 16);
      v[2 * k + 1] = bits_to_float(w[k] & 0xFFFF0000u);
    }
    return quantize_block_fast<ScaleRule::mse>(v, words, load);
  }
  // 2^-(e-1) in both halves (e - 1 in [-124, 125]: a normal bf16).
  const std::uint32_t inv_unit = static_cast<std::uint32_t>(128 - e) << 7;
  const std::uint32_t inv_unit2 = inv_unit | (inv_unit << 16);
  std::uint32_t signs[8];  // taken now: w is not needed after the loop below
  sign_bytes_bf16(w, signs);
  std::uint32_t y_lower[16], y_upper[16];
  float sum0 = 0.0f, sum1 = 0.0f;  // D = S_u - S_l, exactly (two halves, any order)
  MXFP4_FAST_UNROLL
  for (int k = 0; k < 16; ++k) {
    const MsePairBf16 c = mse_pair_bf16(bf16x2_mul(w[k] & 0x7FFF7FFFu, inv_unit2));
    y_lower[k] = c.y_lower;
    y_upper[k] = c.y_upper;
    const float lo = bits_to_float(c.n << 16), hi = bits_to_float(c.n & 0xFFFF0000u);
    sum0 = k == 0 ? lo : sum0 + lo;
    sum1 = k == 0 ? hi : sum1 + hi;
  }
  const float d = sum0 + sum1;
  // Candidate 126 decodes amax past f32's range from amax = 3.5 * 2^126 on: 125 wins.
  const bool upper_overflows = e == 126 && amax_bits >= 0x7F600000u;
  if (d == 0.0f && !upper_overflows) {
    // An exact tie: the f64 sums decide. This rare path codes the block again, from the
    // elements as load gives them, rather than keeping both candidates' codes alive across it.
    const bool pick_lower = mse_lower_is_better_exact(load, bits_to_float(inv_unit << 16));
    if (used_exact != nullptr) *used_exact = true;
    std::uint32_t y[16];
    MXFP4_FAST_UNROLL
    for (int k = 0; k < 16; ++k) {
      const std::uint32_t pair =
          (float_bits(load(2 * k)) >> 16) | (float_bits(load(2 * k + 1)) & 0xFFFF0000u);
      const MsePairBf16 c = mse_pair_bf16(bf16x2_mul(pair & 0x7FFF7FFFu, inv_unit2));
      y[k] = pick_lower ? c.y_lower : c.y_upper;
    }
    pack_codes_bf16(y, signs, words);
    return static_cast<std::uint8_t>((pick_lower ? e - 1 : e) + kScaleBias);
  }
  const bool pick_lower = upper_overflows || d > 0.0f;
  std::uint32_t y[16];
  MXFP4_FAST_UNROLL
  for (int k = 0; k < 16; ++k)
    y[k] = pick_lower ? y_lower[k] : y_upper[k];
  pack_codes_bf16(y, signs, words);
  return static_cast<std::uint8_t>((pick_lower ? e - 1 : e) + kScaleBias);
}

// f(std::integral_constant<ScaleRule, rule>{}) for a rule known at run time: the one switch
// over the rules behind every caller that compiles a loop per rule (host and device).
template <typename F>
MXFP4_HD inline decltype(auto) with_rule(ScaleRule rule, F&& f) {
  switch (rule) {
    case ScaleRule::ceil:
      return f(std::integral_constant<ScaleRule, ScaleRule::ceil>{});
    case ScaleRule::even:
      return f(std::integral_constant<ScaleRule, ScaleRule::even>{});
    case ScaleRule::mse:
      return f(std::integral_constant<ScaleRule, ScaleRule::mse>{});
    case ScaleRule::mistralrs:
      return f(std::integral_constant<ScaleRule, ScaleRule::mistralrs>{});
    case ScaleRule::floor:
    default:
      return f(std::integral_constant<ScaleRule, ScaleRule::floor>{});
  }
}

// The 16 packed bytes of a block's four code words, lowest byte first.
MXFP4_HD inline void store_code_words(const std::uint32_t (&words)[4], std::uint8_t* packed) {
  for (int w = 0; w < 4; ++w)
    for (int b = 0; b < 4; ++b)
      packed[4 * w + b] = static_cast<std::uint8_t>(words[w] >> (8 * b));
}

// The same for a rule known at run time.
MXFP4_HD inline std::uint8_t quantize_block_fast(ScaleRule rule, const float* v,
                                                 std::uint32_t (&words)[4]) {
  return with_rule(rule, [&](auto r) { return quantize_block_fast<decltype(r)::value>(v, words); });
}

// quantize_block's interface: returns the scale byte and writes the 16 packed bytes.
MXFP4_HD inline std::uint8_t quantize_block_fast(ScaleRule rule, const float* v,
                                                 std::uint8_t* packed) {
  std::uint32_t words[4];
  const std::uint8_t scale = quantize_block_fast(rule, v, words);
  store_code_words(words, packed);
  return scale;
}

}  // namespace mxfp4::detail
