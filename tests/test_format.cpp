// The MXFP4 number format (format.hpp): E2M1 codes, E8M0 scales, packing and the scale rules.
// Every expected value here is worked out by hand from FORMATS.md section 1 (never with the
// functions under test); the comments show the arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mxfp4/format.hpp"
#include "mxfp4/weight.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::ScaleRule;
using namespace mxfp4::test;

// E2M1 magnitudes by code 0..7 (FORMATS.md section 1).
constexpr float kMagnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};

std::string rule_label(ScaleRule r) {
  return mxfp4::scale_rule_name(r);
}

// One quantized block, codes unpacked.
struct Coded {
  std::uint8_t scale = 0;
  std::uint8_t packed[16] = {};
  std::uint8_t code(int i) const {
    return static_cast<std::uint8_t>((i % 2 == 0) ? (packed[i / 2] & 0x0F) : (packed[i / 2] >> 4));
  }
};

Coded quantize(ScaleRule rule, const std::vector<float>& head, float fill = 0.0f) {
  float v[32];
  for (int i = 0; i < 32; ++i)
    v[i] = i < static_cast<int>(head.size()) ? head[i] : fill;
  Coded c;
  c.scale = mxfp4::quantize_block(rule, v, c.packed);
  return c;
}

std::vector<float> dequantize(const Coded& c) {
  std::vector<float> out(32);
  mxfp4::dequantize_block(c.packed, c.scale, out.data());
  return out;
}

// ---- E2M1 ---------------------------------------------------------------------------------------

TEST(E2M1, DecodesAll16Codes) {
  for (int code = 0; code < 16; ++code) {
    const float expected = code < 8 ? kMagnitudes[code] : -kMagnitudes[code - 8];
    const float got = mxfp4::e2m1_decode(static_cast<std::uint8_t>(code));
    EXPECT_EQ(got, expected) << "code " << code;
    EXPECT_EQ(std::signbit(got), code >= 8) << "code " << code;
    // Only the low nibble counts.
    EXPECT_EQ(to_bits(mxfp4::e2m1_decode(static_cast<std::uint8_t>(code | 0xA0))), to_bits(got));
  }
  EXPECT_EQ(to_bits(mxfp4::e2m1_decode(8)), 0x80000000u);  // code 8 is -0.0
  EXPECT_EQ(to_bits(mxfp4::e2m1_decode(0)), 0x00000000u);
}

TEST(E2M1, DoubledTableIsTwiceTheValue) {
  const int doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  for (int code = 0; code < 16; ++code) {
    EXPECT_EQ(mxfp4::kE2M1Doubled[code], doubled[code]) << "code " << code;
    EXPECT_EQ(mxfp4::kE2M1Values[code], static_cast<float>(doubled[code]) / 2.0f);
  }
}

TEST(E2M1, EncodesEveryRepresentableValueToItsCode) {
  for (int code = 0; code < 16; ++code) {
    const float v = code < 8 ? kMagnitudes[code] : -kMagnitudes[code - 8];
    EXPECT_EQ(mxfp4::e2m1_encode(v), code) << "value " << v;
  }
}

// Midpoint between neighbours m[i] and m[i+1], and the code a tie goes to (the even one).
struct Tie {
  float mid;
  int lower;   // code below the midpoint
  int winner;  // even code
};
constexpr Tie kTies[] = {
    {0.25f, 0, 0},  // 0 | 0.5
    {0.75f, 1, 2},  // 0.5 | 1.0
    {1.25f, 2, 2},  // 1.0 | 1.5
    {1.75f, 3, 4},  // 1.5 | 2.0
    {2.5f, 4, 4},   // 2.0 | 3.0
    {3.5f, 5, 6},   // 3.0 | 4.0
    {5.0f, 6, 6},   // 4.0 | 6.0
};

TEST(E2M1, TiesGoToTheEvenCode) {
  for (const Tie& t : kTies) {
    EXPECT_EQ(mxfp4::e2m1_encode(t.mid), t.winner) << "tie " << t.mid;
    EXPECT_EQ(mxfp4::e2m1_encode(-t.mid), t.winner | 8) << "tie " << -t.mid;
  }
  // The table above, spelled out as the issue states it.
  EXPECT_EQ(mxfp4::e2m1_encode(0.25f), 0);
  EXPECT_EQ(mxfp4::e2m1_encode(0.75f), 2);  // 1.0
  EXPECT_EQ(mxfp4::e2m1_encode(1.25f), 2);  // 1.0
  EXPECT_EQ(mxfp4::e2m1_encode(1.75f), 4);  // 2.0
  EXPECT_EQ(mxfp4::e2m1_encode(2.5f), 4);   // 2.0
  EXPECT_EQ(mxfp4::e2m1_encode(3.5f), 6);   // 4.0
  EXPECT_EQ(mxfp4::e2m1_encode(5.0f), 6);   // 4.0
}

TEST(E2M1, JustOffAMidpointGoesToTheNearer) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const Tie& t : kTies) {
    const float below = std::nextafter(t.mid, 0.0f);
    const float above = std::nextafter(t.mid, inf);
    EXPECT_EQ(mxfp4::e2m1_encode(below), t.lower) << "just below " << t.mid;
    EXPECT_EQ(mxfp4::e2m1_encode(above), t.lower + 1) << "just above " << t.mid;
    EXPECT_EQ(mxfp4::e2m1_encode(-below), t.lower | 8) << "just above " << -t.mid;
    EXPECT_EQ(mxfp4::e2m1_encode(-above), (t.lower + 1) | 8) << "just below " << -t.mid;
  }
}

TEST(E2M1, SaturatesAtSix) {
  const float big[] = {std::nextafter(6.0f, 7.0f),
                       6.5f,
                       7.0f,
                       7.999f,
                       8.0f,
                       100.0f,
                       1e20f,
                       std::numeric_limits<float>::max(),
                       std::numeric_limits<float>::infinity()};
  for (float v : big) {
    EXPECT_EQ(mxfp4::e2m1_encode(v), 7) << v;
    EXPECT_EQ(mxfp4::e2m1_encode(-v), 15) << -v;
  }
}

TEST(E2M1, KeepsTheSign) {
  EXPECT_EQ(mxfp4::e2m1_encode(-0.1f), 8);
  EXPECT_EQ(mxfp4::e2m1_encode(-0.0f), 8);
  EXPECT_EQ(mxfp4::e2m1_encode(0.0f), 0);
  EXPECT_EQ(mxfp4::e2m1_encode(-1e-30f), 8);
  EXPECT_EQ(mxfp4::e2m1_encode(-std::numeric_limits<float>::denorm_min()), 8);
  EXPECT_EQ(mxfp4::e2m1_encode(0.1f), 0);
  EXPECT_EQ(mxfp4::e2m1_encode(-0.3f), 9);
}

TEST(E2M1, MistralrsRoundsMidpointsAwayFromZero) {
  for (const Tie& t : kTies) {
    EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(t.mid), t.lower + 1) << t.mid;
    EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(-t.mid), (t.lower + 1) | 8) << -t.mid;
    EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(std::nextafter(t.mid, 0.0f)), t.lower) << t.mid;
  }
  for (int code = 0; code < 8; ++code) {
    EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(kMagnitudes[code]), code);
    if (code > 0) {
      EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(-kMagnitudes[code]), code | 8);
    }
  }
  // The sign bit is set only for x < 0: -0.0 is code 0, a small negative is code 8.
  EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(-0.0f), 0);
  EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(-0.1f), 8);
  EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(100.0f), 7);
  EXPECT_EQ(mxfp4::e2m1_encode_mistralrs(-100.0f), 15);
}

// ---- E8M0 ---------------------------------------------------------------------------------------

TEST(E8M0, DecodesAll256Bytes) {
  for (int b = 0; b < 256; ++b) {
    const float got = mxfp4::e8m0_decode(static_cast<std::uint8_t>(b));
    if (b == 255) {
      EXPECT_TRUE(std::isnan(got));
    } else if (b == 0) {
      EXPECT_EQ(to_bits(got), 0x00400000u);  // 2^-127, an f32 subnormal, not zero
      EXPECT_EQ(static_cast<double>(got), std::ldexp(1.0, -127));
    } else {
      EXPECT_EQ(got, std::ldexp(1.0f, b - 127)) << "byte " << b;
      EXPECT_EQ(to_bits(got), static_cast<std::uint32_t>(b) << 23) << "byte " << b;
    }
  }
  EXPECT_EQ(mxfp4::e8m0_decode(127), 1.0f);
  EXPECT_EQ(mxfp4::e8m0_decode(128), 2.0f);
  EXPECT_EQ(mxfp4::e8m0_decode(126), 0.5f);
  EXPECT_EQ(mxfp4::e8m0_decode(254), std::ldexp(1.0f, 127));
}

TEST(E8M0, FromExponentClamps) {
  EXPECT_EQ(mxfp4::e8m0_from_exponent(0), 127);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(1), 128);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(-1), 126);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(-127), 0);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(-126), 1);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(127), 254);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(126), 253);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(-128), 0);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(128), 254);  // never the NaN byte
  EXPECT_EQ(mxfp4::e8m0_from_exponent(-100000), 0);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(100000), 254);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(std::numeric_limits<int>::min()), 0);
  EXPECT_EQ(mxfp4::e8m0_from_exponent(std::numeric_limits<int>::max()), 254);
  for (int e = -127; e <= 127; ++e)
    EXPECT_EQ(mxfp4::e8m0_from_exponent(e), e + 127);
}

TEST(E8M0, ElementDecodeIsValueTimesScale) {
  EXPECT_EQ(mxfp4::mxfp4_decode(7, 127), 6.0f);
  EXPECT_EQ(mxfp4::mxfp4_decode(15, 130), -48.0f);               // -6 * 2^3
  EXPECT_EQ(mxfp4::mxfp4_decode(1, 0), std::ldexp(1.0f, -128));  // 0.5 * 2^-127
  EXPECT_EQ(to_bits(mxfp4::mxfp4_decode(8, 127)), 0x80000000u);
  EXPECT_TRUE(std::isnan(mxfp4::mxfp4_decode(0, 255)));
  EXPECT_EQ(mxfp4::mxfp4_decode(3, 254), 1.5f * std::ldexp(1.0f, 127));
  EXPECT_EQ(mxfp4::mxfp4_decode(4, 254), std::numeric_limits<float>::infinity());  // 2^128
}

// ---- helpers the scale rules build on ----------------------------------------------------------

TEST(FormatHelpers, FloorLog2IsExact) {
  EXPECT_EQ(mxfp4::floor_log2(1.0f), 0);
  EXPECT_EQ(mxfp4::floor_log2(std::nextafter(1.0f, 0.0f)), -1);
  EXPECT_EQ(mxfp4::floor_log2(6.0f), 2);
  EXPECT_EQ(mxfp4::floor_log2(3e38f), 127);
  EXPECT_EQ(mxfp4::floor_log2(std::numeric_limits<float>::max()), 127);
  EXPECT_EQ(mxfp4::floor_log2(std::numeric_limits<float>::min()), -126);
  EXPECT_EQ(mxfp4::floor_log2(from_bits(0x00400000u)), -127);
  EXPECT_EQ(mxfp4::floor_log2(from_bits(0x007FFFFFu)), -127);
  EXPECT_EQ(mxfp4::floor_log2(std::numeric_limits<float>::denorm_min()), -149);
  EXPECT_EQ(mxfp4::floor_log2(1e-40f), -133);  // 1e-40 = 1.089 * 2^-133
  for (int k = -149; k <= 127; ++k)
    EXPECT_EQ(mxfp4::floor_log2(std::ldexp(1.0f, k)), k) << k;
}

TEST(FormatHelpers, ScaleByPow2IsExactOverTheWholeRange) {
  EXPECT_EQ(mxfp4::scale_by_pow2(1.0f, 127), std::ldexp(1.0f, 127));
  EXPECT_EQ(mxfp4::scale_by_pow2(std::ldexp(1.0f, -127), 127), 1.0f);
  EXPECT_EQ(mxfp4::scale_by_pow2(3e38f, -125), 3e38f / std::ldexp(1.0f, 125));
  EXPECT_EQ(mxfp4::scale_by_pow2(-3.0f, 0), -3.0f);
  EXPECT_EQ(to_bits(mxfp4::scale_by_pow2(-0.0f, 5)), 0x80000000u);
}

// ---- packing ------------------------------------------------------------------------------------

TEST(Packing, EvenElementLowNibbleOddElementHighNibble) {
  // v[i] takes the value of code i % 16; the block's amax is 6, so every rule but mistralrs
  // keeps scale 2^0 (floor: floor(log2 6) - 2 = 0) and every value is coded exactly.
  std::vector<float> v(32);
  for (int i = 0; i < 32; ++i)
    v[i] = i % 16 < 8 ? kMagnitudes[i % 16] : -kMagnitudes[i % 16 - 8];
  const Coded c = quantize(ScaleRule::floor, v);
  EXPECT_EQ(c.scale, 127);
  const std::uint8_t expected[16] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE,
                                     0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
  for (int j = 0; j < 16; ++j)
    EXPECT_EQ(c.packed[j], expected[j]) << "byte " << j;
  const std::vector<float> back = dequantize(c);
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(to_bits(back[i]), to_bits(v[i])) << "element " << i;
}

TEST(Packing, SingleElementLandsInItsNibble) {
  // Element 5 = 2*2 + 1: the high nibble of byte 2. 4.0 at scale 2^0 is code 6.
  std::vector<float> v(32, 0.0f);
  v[5] = 4.0f;
  Coded c = quantize(ScaleRule::floor, v);
  EXPECT_EQ(c.scale, 127);
  for (int j = 0; j < 16; ++j)
    EXPECT_EQ(c.packed[j], j == 2 ? 0x60 : 0x00) << "byte " << j;
  // Element 30 = 2*15: the low nibble of byte 15. -4.0 is code 14.
  v[5] = 0.0f;
  v[30] = -4.0f;
  c = quantize(ScaleRule::floor, v);
  for (int j = 0; j < 16; ++j)
    EXPECT_EQ(c.packed[j], j == 15 ? 0x0E : 0x00) << "byte " << j;
}

TEST(Packing, DequantizeBlockReadsTheSameLayout) {
  std::uint8_t packed[16] = {};
  packed[0] = 0x72;   // element 0: code 2 (1.0), element 1: code 7 (6.0)
  packed[15] = 0x9F;  // element 30: code 15 (-6.0), element 31: code 9 (-0.5)
  float out[32];
  mxfp4::dequantize_block(packed, 125, out);  // scale 2^-2
  EXPECT_EQ(out[0], 0.25f);
  EXPECT_EQ(out[1], 1.5f);
  EXPECT_EQ(out[30], -1.5f);
  EXPECT_EQ(out[31], -0.125f);
  for (int i = 2; i < 30; ++i)
    EXPECT_EQ(out[i], 0.0f);
  mxfp4::dequantize_block(packed, 255, out);
  for (int i = 0; i < 32; ++i)
    EXPECT_TRUE(std::isnan(out[i])) << i;
}

// ---- scale rules --------------------------------------------------------------------------------

// A block holding `amax` and zeros; the scale byte each rule must give, worked out by hand:
//   floor:     floor(log2 amax) - 2
//   ceil:      ceil(log2(amax / 6))
//   even:      amax rounded to one mantissa bit (half up), then floor
//   mse:       for a single non-zero element always the ceil exponent (the one below saturates
//              to 3 * 2^e and is never closer)
//   mistralrs: floor(log2(amax / 6))
// then clamped to [-127, 127] and biased by 127.
struct ScaleCase {
  const char* what;
  float amax;
  int floor, ceil, even, mse, mistralrs;
};

const ScaleCase kScaleCases[] = {
    // 4 = 2^2: floor 2-2=0; ceil log2(4/6)=-0.58 -> 0; even 0; mistralrs floor(-0.58) = -1.
    {"4.0", 4.0f, 127, 127, 127, 127, 126},
    // 1 = 2^0: floor -2; ceil log2(1/6) = -2.58 -> -2; mistralrs -3.
    {"1.0", 1.0f, 125, 125, 125, 125, 124},
    // 0.5: floor -3; ceil log2(1/12) = -3.58 -> -3; mistralrs -4.
    {"0.5", 0.5f, 124, 124, 124, 124, 123},
    // 6 = 6*2^0: floor(log2 6) = 2 -> 0; ceil 0; even (1.5 < 1.75) 0; mistralrs 0.
    {"6.0", 6.0f, 127, 127, 127, 127, 127},
    // 12 = 6*2^1: floor 3-2 = 1; all rules 1.
    {"12.0", 12.0f, 128, 128, 128, 128, 128},
    // 0.75 = 6*2^-3: floor(log2 .75) = -1 -> -3; all rules -3.
    {"0.75", 0.75f, 124, 124, 124, 124, 124},
    // 5 = 1.25*2^2: floor 0; ceil log2(5/6) -> 0; even 0; mistralrs floor(-0.26) = -1.
    {"5.0", 5.0f, 127, 127, 127, 127, 126},
    // 11.9 = 1.4875*2^3: floor 1; ceil log2(1.983) -> 1; even 1; mistralrs floor(0.99) = 0.
    {"11.9", 11.9f, 128, 128, 128, 128, 127},
    // 7 = 1.75*2^2: floor 0; ceil log2(7/6)=0.22 -> 1; even rounds 7 up to 8 -> 1; mistralrs 0.
    {"7.0", 7.0f, 127, 128, 128, 128, 127},
    // 6.96 = 1.74*2^2: even does not round up -> 0; ceil 1.
    {"6.96", 6.96f, 127, 128, 127, 128, 127},
    // 1e-40 (subnormal) = 1.089*2^-133: every rule gives about -135, clamped to -127: byte 0.
    {"1e-40", 1e-40f, 0, 0, 0, 0, 0},
    // 2^-127 (subnormal 0x00400000): floor -129, ceil -129, mistralrs -130: all clamp to 0.
    {"2^-127", std::ldexp(1.0f, -127), 0, 0, 0, 0, 0},
    // The smallest subnormal 2^-149: amax / 6 underflows to 0 in f32 for mistralrs; byte 0.
    {"2^-149", std::numeric_limits<float>::denorm_min(), 0, 0, 0, 0, 0},
    // 3 * 2^-149: amax / 6 = 2^-150 rounds (to even) to 0 as well.
    {"3*2^-149", 3.0f * std::numeric_limits<float>::denorm_min(), 0, 0, 0, 0, 0},
    // FLT_MIN = 2^-126: floor -128 -> -127 (byte 0), mistralrs -129 -> byte 0.
    {"2^-126", std::numeric_limits<float>::min(), 0, 0, 0, 0, 0},
    // 2^-125: floor -127 (byte 0).
    {"2^-125", std::ldexp(1.0f, -125), 0, 0, 0, 0, 0},
    // 2^-124: floor -126 (byte 1); mse tries -127 (8 saturates) and keeps -126; mistralrs -127.
    {"2^-124", std::ldexp(1.0f, -124), 1, 1, 1, 1, 0},
    // 2^-120: floor -122 (byte 5); ceil log2(2^-120/6) = -122.58 -> -122; mistralrs -123.
    {"2^-120", std::ldexp(1.0f, -120), 5, 5, 5, 5, 4},
    // 3e38 = 1.763*2^127: floor 125 (252); ceil 1.763 > 1.5 -> 126 (253); even 1.763 >= 1.75 ->
    // 126; mse: e=126 codes 3e38/2^126 = 3.53 as 4, which decodes to 2^128 = +Inf in f32 (infinite
    // error), while e=125 saturates 7.05 to 6 (finite) -> 125 (252); mistralrs log2(5e37) =
    // 125.23 -> 125 (252).
    {"3e38", 3e38f, 252, 253, 253, 252, 252},
    // FLT_MAX = (2 - 2^-23)*2^127: floor 125; ceil, even 126; mse 125 (126 decodes to Inf, as
    // above); mistralrs log2 = 125.4 -> 125.
    {"FLT_MAX", std::numeric_limits<float>::max(), 252, 253, 253, 252, 252},
};

int expected_for(const ScaleCase& c, ScaleRule r) {
  switch (r) {
    case ScaleRule::floor:
      return c.floor;
    case ScaleRule::ceil:
      return c.ceil;
    case ScaleRule::even:
      return c.even;
    case ScaleRule::mse:
      return c.mse;
    case ScaleRule::mistralrs:
      return c.mistralrs;
  }
  return -1;
}

TEST(ScaleRules, HandComputedBlocks) {
  for (const ScaleCase& c : kScaleCases) {
    for (ScaleRule r : kRules) {
      // The largest magnitude anywhere in the block, with either sign, and smaller neighbours.
      for (int pos : {0, 13, 31}) {
        for (float sign : {1.0f, -1.0f}) {
          std::vector<float> v(32, 0.0f);
          v[pos] = sign * c.amax;
          const Coded q = quantize(r, v);
          EXPECT_EQ(q.scale, expected_for(c, r)) << "amax " << c.what << " rule " << rule_label(r)
                                                 << " at " << pos << " sign " << sign;
        }
      }
    }
  }
}

TEST(ScaleRules, ElementsAfterTheScale) {
  // floor on 5.0: scale 2^0, 5.0 is a tie between 4 and 6 -> 4 (even code 6).
  EXPECT_EQ(dequantize(quantize(ScaleRule::floor, {5.0f}))[0], 4.0f);
  // mistralrs on 5.0: scale 2^-1, 5/0.5 = 10 clips to 6 -> 3.0 (FORMATS.md "where wrong" 1).
  EXPECT_EQ(dequantize(quantize(ScaleRule::mistralrs, {5.0f}))[0], 3.0f);
  // mistralrs on 11.9: scale 2^0, 11.9 clips to 6.0.
  EXPECT_EQ(dequantize(quantize(ScaleRule::mistralrs, {11.9f}))[0], 6.0f);
  // The other rules on 11.9: scale 2^1, 11.9/2 = 5.95 -> 6 -> 12.0.
  for (ScaleRule r : {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse}) {
    EXPECT_EQ(dequantize(quantize(r, {11.9f}))[0], 12.0f) << rule_label(r);
    EXPECT_EQ(dequantize(quantize(r, {-11.9f}))[0], -12.0f) << rule_label(r);
  }
  // floor on 7: scale 2^0, saturates to 6. even/ceil on 7: scale 2^1, 3.5 ties to 4 -> 8.
  EXPECT_EQ(dequantize(quantize(ScaleRule::floor, {7.0f}))[0], 6.0f);
  EXPECT_EQ(dequantize(quantize(ScaleRule::even, {7.0f}))[0], 8.0f);
  EXPECT_EQ(dequantize(quantize(ScaleRule::ceil, {7.0f}))[0], 8.0f);
  // Powers of two and 6*2^k come back exactly under every rule.
  for (ScaleRule r : kRules) {
    for (float a : {4.0f, 1.0f, 0.5f, 6.0f, 12.0f, 0.75f}) {
      if (r == ScaleRule::mistralrs && (a == 4.0f || a == 1.0f || a == 0.5f)) {
        // mistralrs' scale is 2^(k-3) for amax = 2^k: 8 clips to 6, i.e. 0.75 * amax.
        EXPECT_EQ(dequantize(quantize(r, {a}))[0], 0.75f * a) << a;
      } else {
        EXPECT_EQ(dequantize(quantize(r, {a}))[0], a) << rule_label(r) << " " << a;
      }
    }
  }
  // A subnormal block: scale byte 0 (2^-127), 2^-127 / 2^-127 = 1 (code 2) decodes exactly.
  const float s = std::ldexp(1.0f, -127);
  const Coded sub = quantize(ScaleRule::floor, {s, -s, 0.5f * s, 0.75f * s});
  EXPECT_EQ(sub.scale, 0);
  EXPECT_EQ(sub.code(0), 2);
  EXPECT_EQ(sub.code(1), 10);
  EXPECT_EQ(sub.code(2), 1);
  EXPECT_EQ(sub.code(3), 2);  // 0.75 ties to 1.0 (even code 2)
  const std::vector<float> back = dequantize(sub);
  EXPECT_EQ(back[0], s);
  EXPECT_EQ(back[1], -s);
  EXPECT_EQ(back[2], 0.5f * s);
  EXPECT_EQ(back[3], s);
  // 1e-40 at scale 2^-127: 1e-40 * 2^127 = 0.017 -> code 0.
  const Coded tiny = quantize(ScaleRule::ceil, {1e-40f, -1e-40f});
  EXPECT_EQ(tiny.code(0), 0);
  EXPECT_EQ(tiny.code(1), 8);
  // 2^-120 under floor: scale 2^-122, 2^-120 is 4 (code 6).
  EXPECT_EQ(quantize(ScaleRule::floor, {std::ldexp(1.0f, -120)}).code(0), 6);
  // mistralrs: scale 2^-123, 8 clips to 6 (code 7).
  EXPECT_EQ(quantize(ScaleRule::mistralrs, {std::ldexp(1.0f, -120)}).code(0), 7);
  // 3e38 under floor: 3e38 / 2^125 = 7.05 saturates to 6 (code 7), which decodes finite.
  const Coded huge = quantize(ScaleRule::floor, {3e38f, -1e38f});
  EXPECT_EQ(huge.code(0), 7);
  EXPECT_EQ(dequantize(huge)[0], 6.0f * std::ldexp(1.0f, 125));
  // 1e38 / 2^125 = 2.35 -> 2 (code 4, negative 12).
  EXPECT_EQ(huge.code(1), 12);
  // Under ceil: 3e38 / 2^126 = 3.53 -> 4 (code 6). 4 * 2^126 = 2^128 lies beyond f32.
  EXPECT_EQ(quantize(ScaleRule::ceil, {3e38f}).code(0), 6);
}

TEST(ScaleRules, EvenRoundsOneAndThreeQuartersUp) {
  const float inf = std::numeric_limits<float>::infinity();
  for (int k : {-100, -10, -3, 0, 1, 5, 60, 100}) {
    // 1.75 * 2^k rounds to 2^(k+1): e = k + 1 - 2 = k - 1.
    EXPECT_EQ(quantize(ScaleRule::even, {std::ldexp(1.75f, k)}).scale, k - 1 + 127) << k;
    // 1.74 * 2^k and the float just below 1.75 * 2^k stay at 2^k: e = k - 2.
    EXPECT_EQ(quantize(ScaleRule::even, {std::ldexp(1.74f, k)}).scale, k - 2 + 127) << k;
    EXPECT_EQ(quantize(ScaleRule::even, {std::ldexp(std::nextafter(1.75f, 0.0f), k)}).scale,
              k - 2 + 127)
        << k;
    // floor ignores the mantissa; ceil switches at 1.5.
    EXPECT_EQ(quantize(ScaleRule::floor, {std::ldexp(1.99f, k)}).scale, k - 2 + 127) << k;
    EXPECT_EQ(quantize(ScaleRule::ceil, {std::ldexp(1.5f, k)}).scale, k - 2 + 127) << k;
    EXPECT_EQ(quantize(ScaleRule::ceil, {std::ldexp(std::nextafter(1.5f, inf), k)}).scale,
              k - 1 + 127)
        << k;
  }
}

TEST(ScaleRules, MseKeepsTheSmallerSquaredError) {
  // amax 6.5 = 1.625*2^2: the ceil exponent is 1, the candidate below is 0.
  // {6.5, 1.5 x 31}: e=1: 6.5/2 = 3.25 -> 3 (error 0.5), 1.5/2 = 0.75 ties to 1 -> 2.0 (error 0.5
  // each): 0.25 + 31 * 0.25 = 8. e=0: 6.5 saturates to 6 (0.25), 1.5 exact: 0.25. Lower wins.
  const Coded lower = quantize(ScaleRule::mse, {6.5f}, 1.5f);
  EXPECT_EQ(lower.scale, 127);
  EXPECT_EQ(dequantize(lower)[0], 6.0f);
  EXPECT_EQ(dequantize(lower)[1], 1.5f);
  EXPECT_EQ(quantize(ScaleRule::ceil, {6.5f}, 1.5f).scale, 128);
  // {7.5, 1.0 x 31}: e=1: 7.5/2 = 3.75 -> 4 -> 8 (0.25), 1.0/2 = 0.5 exact: 0.25. e=0: 7.5 -> 6
  // (2.25). The ceil exponent wins.
  const Coded upper = quantize(ScaleRule::mse, {7.5f}, 1.0f);
  EXPECT_EQ(upper.scale, 128);
  EXPECT_EQ(dequantize(upper)[0], 8.0f);
  EXPECT_EQ(dequantize(upper)[1], 1.0f);
  // {6.5, 1.0 x 31}: e=1: 6.5 -> 6 (0.25), 1.0 exact: 0.25. e=0: 6.5 -> 6 (0.25), 1.0 exact:
  // 0.25. A tie keeps the larger exponent.
  const Coded tie = quantize(ScaleRule::mse, {6.5f}, 1.0f);
  EXPECT_EQ(tie.scale, 128);
  EXPECT_EQ(dequantize(tie)[0], 6.0f);
  // The same, scaled by 2^-100: every error scales by 2^-200, still a tie.
  EXPECT_EQ(quantize(ScaleRule::mse, {std::ldexp(6.5f, -100)}, std::ldexp(1.0f, -100)).scale,
            128 - 100);
  // And the lower-wins block scaled by 2^50.
  EXPECT_EQ(quantize(ScaleRule::mse, {std::ldexp(6.5f, 50)}, std::ldexp(1.5f, 50)).scale, 127 + 50);
}

TEST(ScaleRules, AllZeroBlock) {
  for (ScaleRule r : kRules) {
    std::vector<float> v(32);
    for (int i = 0; i < 32; ++i)
      v[i] = (i % 2) ? -0.0f : 0.0f;
    const Coded q = quantize(r, v);
    EXPECT_EQ(q.scale, mxfp4::kZeroBlockScale) << rule_label(r);
    EXPECT_EQ(q.scale, 127) << rule_label(r);
    // The codes keep the signs of the zeros (odd elements, high nibbles, are -0 -> code 8),
    // except mistralrs, whose sign bit is set only for x < 0.
    const std::uint8_t byte = r == ScaleRule::mistralrs ? 0x00 : 0x80;
    for (int j = 0; j < 16; ++j)
      EXPECT_EQ(q.packed[j], byte) << rule_label(r) << " byte " << j;
    for (float x : dequantize(q))
      EXPECT_EQ(x, 0.0f);
  }
}

TEST(ScaleRules, NonFiniteBlockIsNaNScaleAndZeroCodes) {
  const float specials[] = {
      std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
      std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  for (ScaleRule r : kRules) {
    for (float bad : specials) {
      for (int pos : {0, 1, 16, 31}) {
        std::vector<float> v(32, 1.0f);
        v[pos] = bad;
        const Coded q = quantize(r, v);
        EXPECT_EQ(q.scale, 0xFF) << rule_label(r) << " " << bad << " at " << pos;
        for (int j = 0; j < 16; ++j)
          EXPECT_EQ(q.packed[j], 0) << rule_label(r) << " byte " << j;
        for (float x : dequantize(q))
          EXPECT_TRUE(std::isnan(x));
      }
    }
  }
}

TEST(ScaleRules, MistralrsExponentMatchesTheCLibraryNearPowersOfTwo) {
  // mistral.rs computes floor(log2f(amax / 6)); the library computes it through an f64 log2
  // rounded to f32. They must agree on every amax whose quotient lies near a power of two,
  // where a 1-ulp difference in log2 could change the floor.
  const float inf = std::numeric_limits<float>::infinity();
  int checked = 0;
  for (int k = -147; k <= 125; ++k) {
    float a = std::ldexp(6.0f, k);
    for (int i = 0; i < 40; ++i)
      a = std::nextafter(a, 0.0f);
    for (int i = 0; i < 80; ++i, a = std::nextafter(a, inf)) {
      const float y = a / 6.0f;
      if (!(y > 0.0f)) continue;
      const int libc = static_cast<int>(std::floor(std::log2(y)));  // float overload: log2f
      EXPECT_EQ(mxfp4::exponent_mistralrs_rule(a), libc) << "amax " << a;
      ++checked;
    }
  }
  EXPECT_GT(checked, 20000);
}

}  // namespace
