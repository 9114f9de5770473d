// f16 and bf16 <-> f32 conversions (dtype.hpp). Expected values come from hand-written bit
// patterns and from an independent rounding in double arithmetic (test_numbers.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "mxfp4/dtype.hpp"
#include "test_numbers.hpp"

namespace {

using namespace mxfp4::test;

bool is_f16_nan(std::uint16_t h) {
  return (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0;
}
bool is_bf16_nan(std::uint16_t h) {
  return (h & 0x7F80) == 0x7F80 && (h & 0x7F) != 0;
}

// ---- bf16 ---------------------------------------------------------------------------------------

TEST(BF16, ExactValues) {
  EXPECT_EQ(mxfp4::f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(mxfp4::f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(mxfp4::f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(mxfp4::f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(mxfp4::f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(mxfp4::f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(mxfp4::f32_to_bf16(std::ldexp(1.0f, -133)), 0x0001);  // smallest bf16 subnormal
}

TEST(BF16, RoundsToNearestTiesToEven) {
  // 1 + 2^-8 lies halfway between 0x3F80 (even) and 0x3F81: down.
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x3F808000u)), 0x3F80);
  // Halfway between 0x3F81 and 0x3F82 (even): up.
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x3F818000u)), 0x3F82);
  // Just above / below a midpoint.
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x3F808001u)), 0x3F81);
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x3F807FFFu)), 0x3F80);
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x3F817FFFu)), 0x3F81);
  // Negative ties mirror.
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0xBF808000u)), 0xBF80);
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0xBF818000u)), 0xBF82);
  // A tie that carries into the exponent: 0x3FFF8000 -> 0x4000 (2.0).
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x3FFF8000u)), 0x4000);
  // Subnormal ties.
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x00008000u)), 0x0000);
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x00018000u)), 0x0002);
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x00008001u)), 0x0001);
}

TEST(BF16, OverflowGoesToInfinity) {
  EXPECT_EQ(mxfp4::f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(mxfp4::f32_to_bf16(-std::numeric_limits<float>::max()), 0xFF80);
  // Largest bf16 is 0x7F7F; 0x7F7F8000 is the tie above it (0x7F7F is odd): Inf.
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x7F7F8000u)), 0x7F80);
  EXPECT_EQ(mxfp4::f32_to_bf16(from_bits(0x7F7F7FFFu)), 0x7F7F);
}

TEST(BF16, NaNStaysNaN) {
  // Including NaNs whose payload sits only in the 16 bits that truncation would drop.
  const std::uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u,
                                0x7FFFFFFFu, 0x7F80FFFFu, 0x7FBFFFFFu};
  for (std::uint32_t n : nans) {
    const std::uint16_t h = mxfp4::f32_to_bf16(from_bits(n));
    EXPECT_TRUE(is_bf16_nan(h)) << std::hex << n << " -> " << h;
    EXPECT_EQ(h >> 15, n >> 31) << std::hex << n;
    EXPECT_TRUE(std::isnan(mxfp4::bf16_to_f32(h)));
  }
}

TEST(BF16, ExhaustiveDecodeAndRoundTrip) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = mxfp4::bf16_to_f32(h);
    const double expected = decode_bf16(h);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_TRUE(is_bf16_nan(mxfp4::f32_to_bf16(f))) << std::hex << b;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), expected) << std::hex << b;
    ASSERT_EQ(std::signbit(f), (b >> 15) != 0) << std::hex << b;
    ASSERT_EQ(mxfp4::f32_to_bf16(f), h) << std::hex << b;
  }
}

TEST(BF16, MatchesAnIndependentRoundingOnRandomFloats) {
  std::mt19937_64 rng(0xBF16);
  for (int i = 0; i < 400000; ++i) {
    const auto u = static_cast<std::uint32_t>(rng());
    const float f = from_bits(u);
    if (std::isnan(f)) continue;
    const std::uint16_t h = mxfp4::f32_to_bf16(f);
    const double expected = std::isinf(f) ? static_cast<double>(f) : round_bf16(f);
    ASSERT_EQ(decode_bf16(h), expected) << std::hex << u;
    ASSERT_EQ((h >> 15) != 0, (u >> 31) != 0) << std::hex << u;
  }
}

// ---- f16 ----------------------------------------------------------------------------------------

TEST(F16, ExhaustiveRoundTrip) {
  int nans = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = mxfp4::f16_to_f32(h);
    const double expected = decode_f16(h);
    if (std::isnan(expected)) {
      ++nans;
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      const std::uint16_t back = mxfp4::f32_to_f16(f);
      ASSERT_TRUE(is_f16_nan(back)) << std::hex << b << " -> " << back;
      ASSERT_EQ(back >> 15, h >> 15) << std::hex << b;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), expected) << std::hex << b;
    ASSERT_EQ(std::signbit(f), (b >> 15) != 0) << std::hex << b;
    ASSERT_EQ(mxfp4::f32_to_f16(f), h) << std::hex << b;
  }
  EXPECT_EQ(nans, 2 * 1023);
}

TEST(F16, TiesToEvenInTheNormalRange) {
  // 1 + 2^-11: halfway between 0x3C00 (even) and 0x3C01.
  EXPECT_EQ(mxfp4::f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  // 1 + 3 * 2^-11: halfway between 0x3C01 and 0x3C02 (even).
  EXPECT_EQ(mxfp4::f32_to_f16(1.0f + 3.0f * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(mxfp4::f32_to_f16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3C01);
  EXPECT_EQ(mxfp4::f32_to_f16(std::nextafter(1.0f + 3.0f * std::ldexp(1.0f, -11), 0.0f)), 0x3C01);
  EXPECT_EQ(mxfp4::f32_to_f16(-(1.0f + std::ldexp(1.0f, -11))), 0xBC00);
  // Spacing 2 from 2048 to 4096: 2049 lies halfway between 2048 (0x6800, even) and 2050.
  EXPECT_EQ(mxfp4::f32_to_f16(2049.0f), 0x6800);
  EXPECT_EQ(mxfp4::f32_to_f16(2051.0f), 0x6802);  // 2050 | 2052 (even) -> 2052
  // A tie that carries into the exponent: 2047.5 is halfway between 2047 (0x67FF) and 2048.
  EXPECT_EQ(mxfp4::f32_to_f16(2047.5f), 0x6800);
}

TEST(F16, TiesToEvenInTheSubnormalRange) {
  const float q = std::ldexp(1.0f, -24);                         // f16 subnormal spacing
  EXPECT_EQ(mxfp4::f32_to_f16(q), 0x0001);                       // smallest subnormal 2^-24
  EXPECT_EQ(mxfp4::f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);   // tie 0 | 1 -> 0
  EXPECT_EQ(mxfp4::f32_to_f16(-std::ldexp(1.0f, -25)), 0x8000);  // -0
  EXPECT_EQ(mxfp4::f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);   // 0.75 q -> q
  EXPECT_EQ(mxfp4::f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(mxfp4::f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 0.0f)), 0x0000);
  EXPECT_EQ(mxfp4::f32_to_f16(1.5f * q), 0x0002);  // tie 1 | 2 -> 2
  EXPECT_EQ(mxfp4::f32_to_f16(2.5f * q), 0x0002);  // tie 2 | 3 -> 2
  EXPECT_EQ(mxfp4::f32_to_f16(3.5f * q), 0x0004);  // tie 3 | 4 -> 4
  EXPECT_EQ(mxfp4::f32_to_f16(1e-10f), 0x0000);
  EXPECT_EQ(mxfp4::f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  // The subnormal / normal boundary: 1022.5 q ties to 1022 (0x03FE); 1023.5 q ties up to
  // 1024 q = 2^-14, the smallest normal 0x0400.
  EXPECT_EQ(mxfp4::f32_to_f16(1022.5f * q), 0x03FE);
  EXPECT_EQ(mxfp4::f32_to_f16(1023.5f * q), 0x0400);
  EXPECT_EQ(mxfp4::f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(mxfp4::f32_to_f16(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);
}

TEST(F16, OverflowAndSpecials) {
  EXPECT_EQ(mxfp4::f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(mxfp4::f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(mxfp4::f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(mxfp4::f32_to_f16(65520.0f), 0x7C00);  // tie 65504 (odd) | 65536 -> Inf
  EXPECT_EQ(mxfp4::f32_to_f16(-65520.0f), 0xFC00);
  EXPECT_EQ(mxfp4::f32_to_f16(1e10f), 0x7C00);
  EXPECT_EQ(mxfp4::f32_to_f16(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(mxfp4::f32_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(mxfp4::f32_to_f16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(mxfp4::f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(mxfp4::f32_to_f16(-0.0f), 0x8000);
  const std::uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7FFFFFFFu, 0xFF801000u};
  for (std::uint32_t n : nans) {
    const std::uint16_t h = mxfp4::f32_to_f16(from_bits(n));
    EXPECT_TRUE(is_f16_nan(h)) << std::hex << n << " -> " << h;
    EXPECT_EQ(h >> 15, n >> 31);
  }
}

TEST(F16, MatchesAnIndependentRoundingOnRandomFloats) {
  std::mt19937_64 rng(0xF16);
  for (int i = 0; i < 400000; ++i) {
    std::uint32_t u = static_cast<std::uint32_t>(rng());
    if (i % 2 == 0) {
      // Concentrate on f16's range: f32 exponents 100..145 (2^-27 .. 2^18).
      const std::uint32_t exp = 100u + static_cast<std::uint32_t>(rng() % 46);
      u = (u & 0x807FFFFFu) | (exp << 23);
    }
    const float f = from_bits(u);
    if (std::isnan(f)) continue;
    const std::uint16_t h = mxfp4::f32_to_f16(f);
    const double expected = std::isinf(f) ? static_cast<double>(f) : round_f16(f);
    ASSERT_EQ(decode_f16(h), expected) << std::hex << u << " " << f;
    ASSERT_EQ((h >> 15) != 0, (u >> 31) != 0) << std::hex << u;
  }
}

TEST(Halfs, DTypeTables) {
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::f32), 4u);
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::f16), 2u);
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::bf16), 2u);
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::u8), 1u);
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::u32), 4u);
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::i32), 4u);
  EXPECT_EQ(mxfp4::dtype_size(mxfp4::DType::i64), 8u);
  const char* names[] = {"f32", "f16", "bf16", "u8", "u32", "i32", "i64"};
  for (int i = 0; i < 7; ++i) {
    const auto d = static_cast<mxfp4::DType>(i);
    EXPECT_EQ(mxfp4::dtype_name(d), names[i]);
    EXPECT_EQ(mxfp4::parse_dtype(names[i]), d);
  }
  EXPECT_TRUE(mxfp4::is_floating(mxfp4::DType::bf16));
  EXPECT_FALSE(mxfp4::is_floating(mxfp4::DType::u8));
  EXPECT_TRUE(mxfp4::is_index(mxfp4::DType::i64));
  EXPECT_FALSE(mxfp4::is_index(mxfp4::DType::u8));
  EXPECT_EQ(to_bits(mxfp4::bf16_to_f32(0x3F80)), 0x3F800000u);
}

}  // namespace
