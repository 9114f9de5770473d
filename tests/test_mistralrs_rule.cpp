// The `mistralrs` scale rule reproduces mistral.rs' floor(log2f(amax / 6.0f)) (a correctly
// rounded log2f, as glibc's, returns the integer k for some floats just below 2^k). We define it
// as the f32 rounding of an f64 log2 so that CPU and GPU agree; this checks that definition
// against the C library's log2f on every float where the two could disagree: the floats just
// below each power of two, over the whole range amax / 6 can take.
#include <gtest/gtest.h>

#include <cmath>

#include "mxfp4/format.hpp"

namespace {

TEST(MistralrsRule, MatchesLog2fBelowEveryPowerOfTwo) {
  long checked = 0;
  for (int k = -149; k <= 127; ++k) {
    float y = std::ldexp(1.0f, k);
    // log2 of the floats within a few hundred ulps below 2^k rounds to k in f32 when |k| >= 2.
    for (int j = 0; j < 512; ++j) {
      y = std::nextafter(y, 0.0f);
      if (y == 0.0f) break;
      const float amax = y * 6.0f;
      if (!std::isfinite(amax) || amax / 6.0f != y) continue;
      const int expected = static_cast<int>(std::floor(std::log2(amax / 6.0f)));
      ASSERT_EQ(mxfp4::exponent_mistralrs_rule(amax), expected) << "amax " << amax;
      ++checked;
    }
  }
  EXPECT_GT(checked, 100000);
}

TEST(MistralrsRule, MatchesLog2fOnOrdinaryValues) {
  std::uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    const float amax = mxfp4::bits_to_float(0x00800000u + state % 0x7E000000u);
    const int expected = static_cast<int>(std::floor(std::log2(amax / 6.0f)));
    ASSERT_EQ(mxfp4::exponent_mistralrs_rule(amax), expected) << "amax " << amax;
  }
}

TEST(MistralrsRule, SmallestAmaxGivesTheSmallestScale) {
  // amax / 6 underflows to 0: the reference's saturating cast and clamp give byte 0.
  EXPECT_EQ(mxfp4::exponent_mistralrs_rule(mxfp4::bits_to_float(1u)), mxfp4::kMinScaleExponent);
}

}  // namespace
