// A faster quantize_block (include/mxfp4/format.hpp) for the GPU kernel and the portable CPU
// table: the same scale byte and the same 16 packed bytes for every rule and every input
// (tests/test_quantize_block_fast.cpp checks it), in a third to a fifth of the operations.
// format.hpp stays the readable definition; this file is an internal header (MXFP4_HD, device and
// host).
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
