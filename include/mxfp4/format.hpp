// The MXFP4 number format (OCP Microscaling Formats v1.0, "MX" spec, sections 5.3 and 6.3):
// the E2M1 element, the E8M0 scale, the 32-element block with adjacent-pair nibble packing,
// and the rules that choose a block's scale. Pure functions, no allocation; nothing else in
// the project redefines these tables. Usable from CUDA device code (MXFP4_HD).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define MXFP4_HD __host__ __device__
#else
#define MXFP4_HD
#endif

namespace mxfp4 {

// Elements per block along K; one E8M0 scale byte per block.
inline constexpr int kBlockSize = 32;
// Packed bytes per block: two E2M1 codes per byte, element 2j in the low nibble of byte j.
inline constexpr int kBlockBytes = kBlockSize / 2;
// E8M0 bias: scale byte b means 2^(b - 127).
inline constexpr int kScaleBias = 127;
// E8M0 byte that encodes NaN (the spec reserves 0xFF; there is no Inf and no zero).
inline constexpr std::uint8_t kScaleNaN = 0xFF;
// Scale written for a block whose elements are all zero (any scale decodes it to zeros; 2^0
// keeps the block harmless in every output dtype and matches ggml and mistral.rs).
inline constexpr std::uint8_t kZeroBlockScale = 127;
// Exponent range of a finite E8M0 scale.
inline constexpr int kMinScaleExponent = -127;
inline constexpr int kMaxScaleExponent = 127;

// E2M1 code -> value. Codes 0..7: +0, 0.5, 1, 1.5, 2, 3, 4, 6; 8..15 the same negated (8 = -0).
inline constexpr float kE2M1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
// Twice the E2M1 value, an exact small integer: value = kE2M1Doubled[code] * 2^(scale - 128).
// Integer kernels (int8 dot products) use this table.
inline constexpr std::int8_t kE2M1Doubled[16] = {0, 1,  2,  3,  4,  6,  8,  12,
                                                 0, -1, -2, -3, -4, -6, -8, -12};

static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559,
              "MXFP4 decoding assumes IEEE-754 binary32");

MXFP4_HD inline std::uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
MXFP4_HD inline float bits_to_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// Equals kE2M1Values[code & 15], computed from the bits so device code needs no table:
// magnitude m = e * 2 + mantissa; m = 1 is the subnormal 0.5, m >= 2 is (1 + mant / 2) * 2^(e-1).
MXFP4_HD inline float e2m1_decode(std::uint8_t code) {
  const std::uint32_t m = code & 0x7u;
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x8u) << 28;
  std::uint32_t bits = 0;
  if (m == 1) {
    bits = 0x3F000000u;
  } else if (m >= 2) {
    bits = (((m >> 1) + 126u) << 23) | ((m & 1u) << 22);
  }
  return bits_to_float(sign | bits);
}

// Nearest E2M1 code to x (already divided by the block scale): ties to the even code, magnitudes
// above 6 saturate to 6, the sign bit is kept (so -0.1 -> code 8, "-0"). x must not be NaN.
MXFP4_HD inline std::uint8_t e2m1_encode(float x) {
  const std::uint8_t sign = (float_bits(x) >> 31) ? 0x8 : 0x0;
  const float a = fabsf(x);
  std::uint8_t m;
  // Midpoints between neighbours; "<=" where the lower neighbour has the even code.
  if (a <= 0.25f) {
    m = 0;
  } else if (a < 0.75f) {
    m = 1;
  } else if (a <= 1.25f) {
    m = 2;
  } else if (a < 1.75f) {
    m = 3;
  } else if (a <= 2.5f) {
    m = 4;
  } else if (a < 3.5f) {
    m = 5;
  } else if (a <= 5.0f) {
    m = 6;
  } else {
    m = 7;
  }
  return static_cast<std::uint8_t>(sign | m);
}

// The element rounding of mistral.rs' quantizer: midpoints go away from zero, and the sign bit
// is set only for x < 0 (so -0.0 -> code 0). Kept only to reproduce its bytes.
MXFP4_HD inline std::uint8_t e2m1_encode_mistralrs(float x) {
  const float a = fabsf(x);
  std::uint8_t m;
  if (a < 0.25f) {
    m = 0;
  } else if (a < 0.75f) {
    m = 1;
  } else if (a < 1.25f) {
    m = 2;
  } else if (a < 1.75f) {
    m = 3;
  } else if (a < 2.5f) {
    m = 4;
  } else if (a < 3.5f) {
    m = 5;
  } else if (a < 5.0f) {
    m = 6;
  } else {
    m = 7;
  }
  return static_cast<std::uint8_t>(x < 0.0f ? (m | 0x8) : m);
}

// E8M0 byte -> 2^(byte - 127) as f32. 0xFF is NaN; 0x00 is 2^-127, the f32 subnormal 0x00400000
// (not zero, unlike byte << 23, which the reference uses).
MXFP4_HD inline float e8m0_decode(std::uint8_t byte) {
  if (byte == kScaleNaN) return bits_to_float(0x7FC00000u);
  if (byte == 0) return bits_to_float(0x00400000u);
  return bits_to_float(static_cast<std::uint32_t>(byte) << 23);
}

// Shared exponent -> E8M0 byte, clamped to the finite range [-127, 127].
MXFP4_HD inline std::uint8_t e8m0_from_exponent(int e) {
  if (e < kMinScaleExponent) e = kMinScaleExponent;
  if (e > kMaxScaleExponent) e = kMaxScaleExponent;
  return static_cast<std::uint8_t>(e + kScaleBias);
}

// Decoded element: E2M1 value times the block scale, exactly (rounded only where the product
// leaves f32's range: scale 254 with |value| >= 2 overflows to +/-Inf).
MXFP4_HD inline float mxfp4_decode(std::uint8_t code, std::uint8_t scale) {
  return e2m1_decode(code) * e8m0_decode(scale);
}

// x * 2^-e for e in [-127, 127], in two steps so that neither factor is an f32 subnormal (a
// flush-to-zero unit would turn 2^-127 into 0). Exact whenever the result is a normal f32.
MXFP4_HD inline float scale_by_pow2(float x, int neg_e) {
  const int half = neg_e / 2;
  return x * bits_to_float(static_cast<std::uint32_t>(half + 127) << 23) *
         bits_to_float(static_cast<std::uint32_t>(neg_e - half + 127) << 23);
}

// floor(log2(a)) for a finite a > 0, exact, subnormals included.
MXFP4_HD inline int floor_log2(float a) {
  const std::uint32_t u = float_bits(a) & 0x7FFFFFFFu;
  const int biased = static_cast<int>(u >> 23);
  if (biased != 0) return biased - 127;
  int p = 22;  // position of the leading one of a subnormal's fraction
  while (p > 0 && !((u >> p) & 1u))
    --p;
  return p - 149;
}

// The 23-bit fraction of a finite a > 0 normalised so that a = (1 + f / 2^23) * 2^floor_log2(a).
MXFP4_HD inline std::uint32_t normalized_fraction(float a) {
  std::uint32_t u = float_bits(a) & 0x7FFFFFFFu;
  if ((u >> 23) != 0) return u & 0x7FFFFFu;
  while (!(u & 0x800000u))
    u <<= 1;
  return u & 0x7FFFFFu;
}

// How a block's shared exponent e (scale byte e + 127) is chosen from its largest magnitude amax.
// The numeric values are part of the C API and the file metadata: append, never renumber.
enum class ScaleRule : std::uint8_t {
  floor = 0,      // OCP spec: floor(log2 amax) - 2. amax / 2^e in [4, 8): above 6 saturates.
  ceil = 1,       // NVIDIA/triton: ceil(log2(amax / 6)). Never saturates.
  even = 2,       // torchao EVEN: amax rounded to one mantissa bit, then the floor rule.
  mse = 3,        // tries the ceil exponent and one below; keeps the smaller squared error.
  mistralrs = 4,  // mistral.rs: floor(log2(amax / 6)), clips; its own element rounding.
};

// Exponent the floor/ceil/even rules give for finite amax > 0 (before clamping).
MXFP4_HD inline int exponent_floor_rule(float amax) {
  return floor_log2(amax) - 2;
}
MXFP4_HD inline int exponent_ceil_rule(float amax) {
  // amax = m * 2^fl, m in [1, 2): amax <= 6 * 2^(fl-2) exactly when m <= 1.5.
  return normalized_fraction(amax) <= 0x400000u ? floor_log2(amax) - 2 : floor_log2(amax) - 1;
}
MXFP4_HD inline int exponent_even_rule(float amax) {
  // Adding 2^21 to the bit pattern carries into the exponent exactly when m >= 1.75.
  return normalized_fraction(amax) >= 0x600000u ? floor_log2(amax) - 1 : floor_log2(amax) - 2;
}
// mistral.rs computes floor(log2f(amax / 6.0f)) in f32. A correctly rounded log2f returns the
// integer k for some y just below 2^k (|k| >= 2), so floor gives k where the exact floor(log2 y)
// is k - 1; its bytes depend on that. We define the rule as the f32 rounding of an f64 log2,
// which every backend computes the same way (tests check it equals the C library's log2f on
// every float near a power of two, where the two could differ).
MXFP4_HD inline int exponent_mistralrs_rule(float amax) {
  const float y = amax / 6.0f;
  // y underflows to 0 for amax <= 3 * 2^-149: log2 is then -inf, which no int holds (casting it
  // is undefined); mistral.rs' saturating `as i32` and clamp give the smallest scale, byte 0.
  if (!(y > 0.0f)) return kMinScaleExponent;
  return static_cast<int>(floorf(static_cast<float>(log2(static_cast<double>(y)))));
}

// Squared error of the block when coded with exponent e (elements rounded by e2m1_encode),
// measured on the values dequantization produces in f32: a candidate whose codes decode past
// f32's range (|value| * 2^e >= 2^128) scores +Inf, so mse never picks an exponent that turns
// finite weights into Inf. Summed in f64 in element order: every backend must use this order
// to pick the same scale.
MXFP4_HD inline double block_squared_error(const float* v, int e) {
  const float scale = e8m0_decode(e8m0_from_exponent(e));
  double err = 0.0;
  for (int i = 0; i < kBlockSize; ++i) {
    const float q = e2m1_decode(e2m1_encode(scale_by_pow2(v[i], -e))) * scale;
    const double d = static_cast<double>(v[i]) - static_cast<double>(q);
    err += d * d;
  }
  return err;
}

// Quantizes one block of 32 values: writes 16 packed bytes and returns the scale byte.
// - A block holding NaN or +/-Inf gets scale 0xFF (decodes as NaN) and all-zero codes.
// - An all-zero block gets kZeroBlockScale; its codes keep the signs of the zeros.
MXFP4_HD inline std::uint8_t quantize_block(ScaleRule rule, const float* v, std::uint8_t* packed) {
  float amax = 0.0f;
  bool finite = true;
  for (int i = 0; i < kBlockSize; ++i) {
    const float a = fabsf(v[i]);
    if (!(a <= 3.40282347e38f)) finite = false;  // NaN fails every compare
    if (a > amax) amax = a;
  }
  if (!finite) {
    for (int j = 0; j < kBlockBytes; ++j)
      packed[j] = 0;
    return kScaleNaN;
  }
  std::uint8_t scale = kZeroBlockScale;
  if (amax > 0.0f) {
    int e = 0;
    switch (rule) {
      case ScaleRule::floor:
        e = exponent_floor_rule(amax);
        break;
      case ScaleRule::ceil:
        e = exponent_ceil_rule(amax);
        break;
      case ScaleRule::even:
        e = exponent_even_rule(amax);
        break;
      case ScaleRule::mse: {
        e = exponent_ceil_rule(amax);
        if (e > kMaxScaleExponent) e = kMaxScaleExponent;
        if (e > kMinScaleExponent) {
          // Ties keep the larger exponent: it never saturates.
          if (block_squared_error(v, e - 1) < block_squared_error(v, e)) e -= 1;
        }
        break;
      }
      case ScaleRule::mistralrs:
        e = exponent_mistralrs_rule(amax);
        break;
    }
    scale = e8m0_from_exponent(e);
  }
  const int neg_e = kScaleBias - static_cast<int>(scale);
  for (int j = 0; j < kBlockBytes; ++j) {
    const float lo = scale_by_pow2(v[2 * j], neg_e);
    const float hi = scale_by_pow2(v[2 * j + 1], neg_e);
    std::uint8_t clo, chi;
    if (rule == ScaleRule::mistralrs) {
      clo = e2m1_encode_mistralrs(lo);
      chi = e2m1_encode_mistralrs(hi);
    } else {
      clo = e2m1_encode(lo);
      chi = e2m1_encode(hi);
    }
    packed[j] = static_cast<std::uint8_t>(clo | (chi << 4));
  }
  return scale;
}

// Decodes one block (16 packed bytes + its scale) to 32 f32 values.
MXFP4_HD inline void dequantize_block(const std::uint8_t* packed, std::uint8_t scale, float* out) {
  const float s = e8m0_decode(scale);
  for (int j = 0; j < kBlockBytes; ++j) {
    out[2 * j] = e2m1_decode(packed[j] & 0x0F) * s;
    out[2 * j + 1] = e2m1_decode(packed[j] >> 4) * s;
  }
}

}  // namespace mxfp4
