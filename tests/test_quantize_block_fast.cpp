// quantize_block_fast (src/core/quantize_block_fast.hpp, the GPU kernel's and the portable CPU
// table's block quantizer) against format.hpp's quantize_block, the definition: the element
// roundings on every f32 pattern where they can differ (all of them in optimized native builds),
// the scale exponents of every rule, and the scale byte and packed bytes of many blocks, built to
// hit ties, saturation, subnormals, huge values, signed zeros, NaN/Inf and mse's near ties, and
// drawn at random from several distributions over the whole exponent range.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/quantize_block_fast.hpp"
#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/weight.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::ScaleRule;
using mxfp4::test::from_bits;
using mxfp4::test::to_bits;
using Block = std::array<float, mxfp4::kBlockSize>;

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};

// The sweeps below take every mantissa of the exponents that matter in optimized native builds;
// unoptimized (sanitizer) builds and emulated ones (MXFP4_TEST_LIGHT, set for cross builds) take
// every kStride-th plus every mantissa near the patterns where a rounding boundary can fall.
#if defined(NDEBUG) && !defined(MXFP4_TEST_LIGHT)
constexpr std::uint32_t kStride = 1;
#else
constexpr std::uint32_t kStride = 101;
#endif

template <typename F>
void for_each_mantissa(F&& f) {
  if (kStride == 1) {
    for (std::uint32_t m = 0; m < 0x800000u; ++m)
      f(m);
    return;
  }
  for (std::uint32_t m = 0; m < 0x800000u; m += kStride)
    f(m);
  for (std::uint32_t center : {0x0u, 0x200000u, 0x400000u, 0x600000u, 0x7FF000u, 0x800000u}) {
    for (std::uint32_t d = 0; d < 512; ++d) {
      const std::uint32_t m = center + d - 256;  // wraps below 0: skipped by the test below
      if (m < 0x800000u) f(m);
    }
  }
}

std::string hex(std::uint32_t u) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", u);
  return buf;
}

// ---- elements ----------------------------------------------------------------------------------

// e2m1_index_even / e2m1_index_away against e2m1_encode / e2m1_encode_mistralrs on |x|: every
// pattern of the exponents 2^-31 .. 2^33 (the codes change only between 0.25 and 6), every
// kStride-th elsewhere, and the special values.
TEST(QuantizeBlockFast, ElementRoundingMatchesTheEncodersOnEveryPattern) {
  std::int64_t checked = 0, failures = 0;
  const auto check = [&](std::uint32_t bits) {
    const float x = from_bits(bits);
    const std::uint32_t even = mxfp4::detail::e2m1_index_even(x) & 15u;
    const std::uint32_t away = mxfp4::detail::e2m1_index_away(x) & 15u;
    const std::uint32_t ref_even = mxfp4::e2m1_encode(x) & 7u;
    const std::uint32_t ref_away = mxfp4::e2m1_encode_mistralrs(x) & 7u;
    ++checked;
    if ((even != ref_even || away != ref_away) && ++failures <= 10) {
      ADD_FAILURE() << "x = " << hex(bits) << " (" << x << "): ties-to-even " << even << " vs "
                    << ref_even << ", away " << away << " vs " << ref_away;
    }
  };
  for (std::uint32_t exp = 0; exp < 255; ++exp) {
    if (exp >= 96 && exp <= 160) {
      for_each_mantissa([&](std::uint32_t m) { check(exp << 23 | m); });
    } else {
      for (std::uint32_t m = 0; m < 0x800000u; m += 4099)
        check(exp << 23 | m);
      check(exp << 23 | 0x7FFFFFu);
    }
  }
  check(0x7F7FFFFFu);  // FLT_MAX
  EXPECT_EQ(failures, 0) << "of " << checked;
}

// mse's two candidates for r = |v| / 2^(e-1) <= 12: the codes and decoded magnitudes of
// e2m1_encode(r) (candidate e-1) and e2m1_encode(r / 2) (candidate e, in units of 2^(e-1)).
TEST(QuantizeBlockFast, MseCandidatesMatchTheEncoderOnEveryPattern) {
  std::int64_t checked = 0, failures = 0;
  const auto check = [&](std::uint32_t bits) {
    const float r = from_bits(bits);
    if (!(r <= 12.0f)) return;
    const auto c = mxfp4::detail::mse_candidates(r);
    const std::uint8_t lower = mxfp4::e2m1_encode(r) & 7u;
    const std::uint8_t upper = mxfp4::e2m1_encode(r * 0.5f) & 7u;
    const bool ok = (mxfp4::detail::index_bits(c.y_lower) & 15u) == lower &&
                    (mxfp4::detail::index_bits(c.y_upper) & 15u) == upper &&
                    c.value_lower == mxfp4::e2m1_decode(lower) &&
                    c.value_upper == 2.0f * mxfp4::e2m1_decode(upper);
    ++checked;
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << "r = " << hex(bits) << " (" << r << "): candidate e-1 code " << +lower
                    << " value " << c.value_lower << ", candidate e code " << +upper << " value "
                    << c.value_upper;
    }
  };
  for (std::uint32_t exp = 0; exp <= 130; ++exp) {
    if (exp >= 118) {
      for_each_mantissa([&](std::uint32_t m) { check(exp << 23 | m); });
    } else {
      for (std::uint32_t m = 0; m < 0x800000u; m += 4099)
        check(exp << 23 | m);
    }
  }
  EXPECT_EQ(failures, 0) << "of " << checked;
}

// ---- scale exponents ---------------------------------------------------------------------------

int reference_exponent(ScaleRule rule, float amax) {
  switch (rule) {
    case ScaleRule::floor:
      return mxfp4::exponent_floor_rule(amax);
    case ScaleRule::even:
      return mxfp4::exponent_even_rule(amax);
    case ScaleRule::mistralrs:
      return mxfp4::exponent_mistralrs_rule(amax);
    default:
      return mxfp4::exponent_ceil_rule(amax);
  }
}

// Every subnormal amax, and for every exponent the mantissas around each rule's boundaries.
TEST(QuantizeBlockFast, ScaleExponentsMatchTheRuleFunctions) {
  std::int64_t failures = 0;
  const auto check = [&](ScaleRule rule, std::uint32_t bits) {
    if (bits == 0 || bits > 0x7F7FFFFFu) return;
    const int fast = mxfp4::detail::rule_exponent_fast(rule, bits);
    const int ref = reference_exponent(rule, from_bits(bits));
    if (fast != ref && ++failures <= 10) {
      ADD_FAILURE() << mxfp4::scale_rule_name(rule) << " amax " << hex(bits) << ": " << fast
                    << " vs " << ref;
    }
  };
  for (ScaleRule rule : {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even}) {
    for (std::uint32_t m = 1; m < 0x800000u; m += kStride == 1 ? 1 : 7)
      check(rule, m);
    for (std::uint32_t exp = 1; exp < 255; ++exp) {
      for (std::uint32_t center : {0x0u, 0x400000u, 0x600000u, 0x800000u}) {
        for (std::uint32_t d = 0; d < 2048; ++d)
          check(rule, (exp << 23) + center + d - 1024);
      }
      for (std::uint32_t m = 0; m < 0x800000u; m += 4099)
        check(rule, exp << 23 | m);
    }
  }
  // mistralrs: the fast path decides from y = amax / 6; check the amax whose y lies near a power
  // of two (where the f64 logarithm matters) for every exponent of y, and amax across the range.
  for (std::uint32_t exp = 0; exp < 255; ++exp) {
    for (std::uint32_t center : {0x0u, 0x7FF000u, 0x800000u}) {
      for (std::uint32_t d = 0; d < 4096; d += kStride == 1 ? 1 : 3) {
        const float y = from_bits((exp << 23) + center + d - 2048);
        const float amax = y * 6.0f;
        for (std::uint32_t b : {to_bits(amax) - 1, to_bits(amax), to_bits(amax) + 1})
          check(ScaleRule::mistralrs, b);
      }
    }
    for (std::uint32_t m = 0; m < 0x800000u; m += 8191)
      check(ScaleRule::mistralrs, exp << 23 | m);
  }
  for (std::uint32_t m = 1; m < 64; ++m)
    check(ScaleRule::mistralrs, m);
  EXPECT_EQ(failures, 0);
}

// ---- blocks ------------------------------------------------------------------------------------

// Compares quantize_block_fast (both overloads, and the rule as a template argument) with
// quantize_block on one block; returns false after reporting a difference.
bool same_as_reference(ScaleRule rule, const Block& v, const std::string& what) {
  std::uint8_t ref[mxfp4::kBlockBytes], fast[mxfp4::kBlockBytes];
  const std::uint8_t ref_scale = mxfp4::quantize_block(rule, v.data(), ref);
  const std::uint8_t fast_scale = mxfp4::detail::quantize_block_fast(rule, v.data(), fast);
  std::uint32_t words[4] = {};
  std::uint8_t templ_scale = 0;
  switch (rule) {
    case ScaleRule::floor:
      templ_scale = mxfp4::detail::quantize_block_fast<ScaleRule::floor>(v.data(), words);
      break;
    case ScaleRule::ceil:
      templ_scale = mxfp4::detail::quantize_block_fast<ScaleRule::ceil>(v.data(), words);
      break;
    case ScaleRule::even:
      templ_scale = mxfp4::detail::quantize_block_fast<ScaleRule::even>(v.data(), words);
      break;
    case ScaleRule::mse:
      templ_scale = mxfp4::detail::quantize_block_fast<ScaleRule::mse>(v.data(), words);
      break;
    case ScaleRule::mistralrs:
      templ_scale = mxfp4::detail::quantize_block_fast<ScaleRule::mistralrs>(v.data(), words);
      break;
  }
  bool words_ok = true;
  for (int j = 0; j < mxfp4::kBlockBytes; ++j)
    words_ok = words_ok && static_cast<std::uint8_t>(words[j / 4] >> (8 * (j % 4))) == fast[j];
  if (ref_scale == fast_scale && templ_scale == fast_scale && words_ok &&
      std::memcmp(ref, fast, sizeof ref) == 0) {
    return true;
  }
  std::ostringstream msg;
  msg << mxfp4::scale_rule_name(rule) << ' ' << what << ": scale " << +fast_scale
      << " vs reference " << +ref_scale << "\n  bytes:";
  for (int j = 0; j < mxfp4::kBlockBytes; ++j)
    msg << ' ' << +fast[j] << '/' << +ref[j];
  msg << "\n  block:";
  for (float x : v)
    msg << ' ' << hex(to_bits(x));
  ADD_FAILURE() << msg.str();
  return false;
}

// Runs every rule on every block; stops reporting after a few failures.
void expect_all_rules_match(const std::vector<Block>& blocks, const std::string& family) {
  int failures = 0;
  for (std::size_t i = 0; i < blocks.size() && failures < 5; ++i) {
    for (ScaleRule rule : kRules) {
      if (!same_as_reference(rule, blocks[i], family + " #" + std::to_string(i))) ++failures;
    }
  }
  EXPECT_EQ(failures, 0) << family;
}

Block filled(float x) {
  Block b;
  b.fill(x);
  return b;
}

TEST(QuantizeBlockFast, SpecialBlocks) {
  std::vector<Block> blocks;
  const float kInf = std::numeric_limits<float>::infinity();
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  blocks.push_back(filled(0.0f));
  blocks.push_back(filled(-0.0f));
  Block zeros = filled(0.0f);
  for (int i = 0; i < 32; i += 3)
    zeros[i] = -0.0f;
  blocks.push_back(zeros);
  // NaN and Inf anywhere, with finite or huge neighbours.
  for (float bad : {kNaN, -kNaN, kInf, -kInf, from_bits(0x7F800001u), from_bits(0xFFFFFFFFu)}) {
    for (int pos : {0, 1, 15, 31}) {
      Block b = filled(1.5f);
      b[pos] = bad;
      blocks.push_back(b);
      b = filled(FLT_MAX);
      b[pos] = bad;
      blocks.push_back(b);
    }
  }
  // One nonzero element of every binade, both signs, among signed zeros.
  for (int k = -149; k <= 127; ++k) {
    for (float sign : {1.0f, -1.0f}) {
      Block b = filled(k % 2 ? -0.0f : 0.0f);
      b[(k + 149) % 32] = sign * std::ldexp(1.0f, k);
      blocks.push_back(b);
      b[(k + 150) % 32] = sign * std::ldexp(1.75f, k - 3);
      blocks.push_back(b);
    }
  }
  // The largest magnitudes: amax around 3 * 2^126 .. 2^128 (mse's candidate 126 overflows from
  // 3.5 * 2^126 on), with small and large neighbours.
  for (std::uint32_t bits : {0x7EC00000u, 0x7EC00001u, 0x7F3FFFFFu, 0x7F400000u, 0x7F5FFFFFu,
                             0x7F600000u, 0x7F600001u, 0x7F700000u, 0x7F7FFFFEu, 0x7F7FFFFFu}) {
    for (float other : {0.0f, 1.0f, 1e37f, 3e38f}) {
      Block b = filled(other);
      b[7] = from_bits(bits);
      b[8] = -from_bits(bits - 5);
      blocks.push_back(b);
    }
  }
  // Subnormal blocks, and subnormals beside normal numbers.
  for (std::uint32_t top : {1u, 2u, 3u, 5u, 0x1FFu, 0x3FFFFFu, 0x400000u, 0x7FFFFFu, 0x800000u}) {
    Block b;
    for (int i = 0; i < 32; ++i)
      b[i] = from_bits((top - top * static_cast<std::uint32_t>(i) / 32u) |
                       (i % 5 == 0 ? 0x80000000u : 0u));
    blocks.push_back(b);
    b[3] = 1e-30f;
    blocks.push_back(b);
  }
  // mistralrs' sign: a negative element whose quotient underflows to -0 in the reference's two
  // multiplications but not in one (-(2^-146 + 2^-149) with scale 2^4).
  Block under = filled(0.0f);
  under[0] = 100.0f;
  under[1] = -from_bits(0x9u);
  under[2] = -from_bits(0x1u);
  under[3] = -from_bits(0x3u);
  blocks.push_back(under);
  expect_all_rules_match(blocks, "special");
}

// Every element on E2M1's grid and on its midpoints, after scaling, for scales across the range.
TEST(QuantizeBlockFast, TiesAndSaturationAtEveryScale) {
  std::vector<Block> blocks;
  for (int k = -150; k <= 126; k += 1) {
    for (float top : {6.0f, 7.0f, 5.0f, 3.5f, 4.0f, 6.5f, 12.0f, 11.0f}) {
      Block b;
      for (int i = 0; i < 32; ++i) {
        const float step = static_cast<float>(i % 25) * 0.25f;  // 0, 0.25, ..., 6
        b[i] = std::ldexp((i % 2 ? -1.0f : 1.0f) * step, k);
      }
      b[31] = std::ldexp(top, k);
      if (std::isfinite(b[31])) blocks.push_back(b);
    }
  }
  expect_all_rules_match(blocks, "ties");
}

// Random blocks of several distributions, each scaled by 2^k with k over the whole range.
TEST(QuantizeBlockFast, RandomBlocksOfManyDistributions) {
  std::mt19937_64 rng(20261126);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-160, 130);
  const int kPerFamily = kStride == 1 ? 40000 : 4000;
  const char* names[] = {"normal", "heavy-tailed", "log-uniform", "few values", "bits"};
  for (int family = 0; family < 5; ++family) {
    std::vector<Block> blocks;
    for (int n = 0; n < kPerFamily; ++n) {
      const int k = exponent(rng);
      Block b;
      for (float& x : b) {
        float y = 0.0f;
        switch (family) {
          case 0:
            y = normal(rng);
            break;
          case 1: {  // Student-t with 2 degrees of freedom and cubes: outliers
            const float n1 = normal(rng), n2 = normal(rng), n3 = normal(rng);
            y = (rng() % 2) ? n1 / std::sqrt(0.5f * (n2 * n2 + n3 * n3) + 1e-30f) : n1 * n1 * n1;
            break;
          }
          case 2:  // magnitudes spread over 2^-40 .. 2^0
            y = std::ldexp(1.0f + static_cast<float>(rng() % 1024) / 1024.0f,
                           -static_cast<int>(rng() % 40)) *
                (rng() % 2 ? 1.0f : -1.0f);
            break;
          case 3:  // a few grid values: ties and equal candidate errors
            y = static_cast<float>(static_cast<int>(rng() % 25) - 12) * 0.25f;
            break;
          default:  // any finite pattern
            do {
              y = from_bits(static_cast<std::uint32_t>(rng()));
            } while (!std::isfinite(y));
            break;
        }
        x = family == 4 ? y : std::ldexp(y, k);
        if (!std::isfinite(x)) x = std::copysign(FLT_MAX, y);
      }
      blocks.push_back(b);
    }
    expect_all_rules_match(blocks, names[family]);
  }
}

// The mse rule's exact path (f32 estimates too close to decide) is exercised and agrees: blocks
// whose candidates tie exactly (only amax codes differently, or not at all) or nearly.
TEST(QuantizeBlockFast, MseNearTiesTakeTheExactPathAndAgree) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int exact = 0, failures = 0;
  const int kBlocks = kStride == 1 ? 200000 : 20000;
  for (int n = 0; n < kBlocks && failures < 5; ++n) {
    Block b;
    const int k = static_cast<int>(rng() % 200) - 100;
    if (n % 2) {
      // amax with tiny neighbours (code 0 in both candidates): the errors tie when amax rounds
      // the same in both.
      for (float& x : b)
        x = std::ldexp(normal(rng), k - 12);
      b[rng() % 32] = std::ldexp(6.0f + static_cast<float>(rng() % 4096) / 512.0f, k);
    } else {
      for (float& x : b)
        x = std::ldexp(static_cast<float>(static_cast<int>(rng() % 49) - 24) * 0.25f, k);
    }
    float amax = 0.0f;
    for (float x : b)
      amax = std::fmax(amax, std::fabs(x));
    const int e = mxfp4::exponent_ceil_rule(amax);
    if (amax > 0.0f && e > mxfp4::kMinScaleExponent && e <= 125) {
      bool used_exact = false;
      std::uint32_t words[4];
      mxfp4::detail::code_block_mse_fast(
          b.data(), [&](int i) { return b[static_cast<std::size_t>(i)]; }, e, false, words,
          &used_exact);
      exact += used_exact ? 1 : 0;
    }
    if (!same_as_reference(ScaleRule::mse, b, "near tie #" + std::to_string(n))) ++failures;
  }
  EXPECT_EQ(failures, 0);
  EXPECT_GT(exact, kBlocks / 100) << "too few blocks reached the exact path to test it";
}

// Blocks whose two squared errors differ by a few ulps or less, with the f32 estimates rounded
// differently: elements in (6, 7) code to 6 in both candidates (same error), and two elements
// balance each other: 7 + j ulps favours candidate e by 4 j ulps(7) (candidate e - 1 saturates
// to 6, candidate e rounds to 8) and 1.25 + m ulps favours e - 1 by m ulps(1.25) (1.5 against 1);
// m near 16 j. Without the estimate's margin some of these pick the wrong candidate.
TEST(QuantizeBlockFast, MseSumsCloserThanTheEstimateCanTell) {
  std::mt19937 rng(11);
  const std::uint32_t six = to_bits(6.0f), seven = to_bits(7.0f), five_fourths = to_bits(1.25f);
  const auto in_six_seven = [&] { return from_bits(six + 1 + rng() % (seven - six - 1)); };
  int failures = 0;
  const int kBlocks = kStride == 1 ? 100000 : 10000;
  for (int n = 0; n < kBlocks && failures < 5; ++n) {
    Block b;
    const float common = in_six_seven();
    for (float& x : b)
      x = rng() % 2 ? common : in_six_seven();
    const std::uint32_t j = 1 + rng() % 60;
    const int pos = static_cast<int>(rng() % 32);
    const int pos2 = (pos + 1 + static_cast<int>(rng() % 31)) % 32;
    b[pos] = from_bits(seven + j);
    b[pos2] = from_bits(five_fourths + 16 * j + rng() % 5 - 2);
    const int k = static_cast<int>(rng() % 240) - 120;
    for (float& x : b)
      x = std::ldexp(rng() % 2 ? x : -x, k);
    if (!same_as_reference(ScaleRule::mse, b, "close sums #" + std::to_string(n))) ++failures;
  }
  EXPECT_EQ(failures, 0);
}

// ---- bf16 blocks, mse rule (the GPU kernel's packed path) ---------------------------------------

using Bf16Block = std::array<std::uint16_t, mxfp4::kBlockSize>;

// The bf16 arithmetic of mse_pair_bf16 (host emulation, rounding as the device does) on every
// bf16 magnitude up to 12 in either half of a pair: the codes of both candidates (E2M1 of r and
// of r / 2) and n = d_u^2 - d_l^2, exactly (the decoded values, in f64, where everything here is
// exact).
TEST(QuantizeBlockFast, Bf16MsePairMatchesTheEncoderOnEveryPattern) {
  std::vector<std::uint16_t> patterns;
  for (std::uint32_t h = 0; h <= 0x4140u; ++h)  // 0x4140: 12
    patterns.push_back(static_cast<std::uint16_t>(h));
  std::int64_t failures = 0;
  const auto check = [&](std::uint16_t h, std::uint32_t y_lower, std::uint32_t y_upper,
                         std::uint32_t n) {
    const float r = from_bits(static_cast<std::uint32_t>(h) << 16);
    const std::uint8_t lower = mxfp4::e2m1_encode(r) & 7u;
    const std::uint8_t upper = mxfp4::e2m1_encode(r * 0.5f) & 7u;
    const double d_lower = static_cast<double>(r) - mxfp4::e2m1_decode(lower);
    const double d_upper = static_cast<double>(r) - 2.0 * mxfp4::e2m1_decode(upper);
    const double want = d_upper * d_upper - d_lower * d_lower;
    const double got = static_cast<double>(from_bits(n << 16));
    const bool ok = (mxfp4::detail::code_indices(y_lower) & 15u) == lower &&
                    (mxfp4::detail::code_indices(y_upper) & 15u) == upper && got == want;
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << "r = bf16 " << hex(h) << " (" << r << "): codes "
                    << (mxfp4::detail::code_indices(y_lower) & 15u) << "/" << +lower << ", "
                    << (mxfp4::detail::code_indices(y_upper) & 15u) << "/" << +upper << ", n "
                    << got << " vs " << want;
    }
  };
  const std::size_t count = patterns.size();
  for (std::size_t i = 0; i < count; ++i) {
    // Each pattern in the low half beside another in the high half, and the other way round:
    // the halves must not disturb each other (the index sum must not carry across).
    const std::uint16_t lo = patterns[i], hi = patterns[(i * 7919 + 13) % count];
    const auto c = mxfp4::detail::mse_pair_bf16(lo | (static_cast<std::uint32_t>(hi) << 16));
    check(lo, c.y_lower, c.y_upper, c.n);
    check(hi, c.y_lower >> 16, c.y_upper >> 16, c.n >> 16);
  }
  EXPECT_EQ(failures, 0) << "of " << count;
}

// Both ways of finding a bf16 block's largest magnitude (16-bit maxima for sm_90, 32-bit ones
// before) against a plain loop, on random patterns (NaN, Inf, signed zeros and subnormals among
// them) and on blocks of one sign.
TEST(QuantizeBlockFast, Bf16BlockAmaxBothWays) {
  std::mt19937_64 rng(3);
  int failures = 0;
  const int kBlocks = kStride == 1 ? 200000 : 20000;
  for (int n = 0; n < kBlocks && failures < 5; ++n) {
    std::uint32_t w[16];
    std::uint32_t want = 0;
    const int kind = n % 4;
    for (std::uint32_t& x : w) {
      std::uint32_t h[2];
      for (std::uint32_t& e : h) {
        e = static_cast<std::uint32_t>(rng()) & 0xFFFFu;
        if (kind == 1) e &= 0x7FFFu;                        // all nonnegative
        if (kind == 2) e |= 0x8000u;                        // all negative
        if (kind == 3) e &= rng() % 2 ? 0x807Fu : 0x8000u;  // zeros and subnormals
        want = std::max(want, (e & 0x7FFFu) << 16);
      }
      x = h[0] | (h[1] << 16);
    }
    const std::uint32_t a = mxfp4::detail::bf16_block_amax_bits_u16x2(w);
    const std::uint32_t b = mxfp4::detail::bf16_block_amax_bits_u32(w);
    if ((a != want || b != want) && ++failures <= 5) {
      ADD_FAILURE() << "block " << n << ": " << hex(a) << " / " << hex(b) << " vs " << hex(want);
    }
  }
  EXPECT_EQ(failures, 0);
}

// quantize_block_bf16_mse_fast (host emulation) against quantize_block(mse) on the block widened
// to f32; returns false after reporting a difference. *used_exact: whether the tie path ran.
bool bf16_mse_same_as_reference(const Bf16Block& h, const std::string& what,
                                bool* used_exact = nullptr) {
  Block v;
  std::uint32_t w[16];
  for (int k = 0; k < 16; ++k)
    w[k] = h[2 * k] | (static_cast<std::uint32_t>(h[2 * k + 1]) << 16);
  for (int i = 0; i < mxfp4::kBlockSize; ++i)
    v[i] = mxfp4::bf16_to_f32(h[i]);
  std::uint8_t ref[mxfp4::kBlockBytes];
  const std::uint8_t ref_scale = mxfp4::quantize_block(ScaleRule::mse, v.data(), ref);
  std::uint32_t words[4] = {};
  bool exact = false;
  const std::uint8_t scale = mxfp4::detail::quantize_block_bf16_mse_fast(
      w, words, [&](int i) { return v[static_cast<std::size_t>(i)]; }, &exact);
  if (used_exact != nullptr) *used_exact = exact;
  bool same = scale == ref_scale;
  for (int j = 0; j < mxfp4::kBlockBytes; ++j)
    same = same && static_cast<std::uint8_t>(words[j / 4] >> (8 * (j % 4))) == ref[j];
  if (same) return true;
  std::ostringstream msg;
  msg << "bf16 mse " << what << ": scale " << +scale << " vs reference " << +ref_scale
      << "\n  bytes:";
  for (int j = 0; j < mxfp4::kBlockBytes; ++j)
    msg << ' ' << +static_cast<std::uint8_t>(words[j / 4] >> (8 * (j % 4))) << '/' << +ref[j];
  msg << "\n  block:";
  for (std::uint16_t x : h)
    msg << ' ' << hex(x);
  ADD_FAILURE() << msg.str();
  return false;
}

Bf16Block to_bf16(const Block& b) {
  Bf16Block h;
  for (int i = 0; i < mxfp4::kBlockSize; ++i)
    h[i] = mxfp4::f32_to_bf16(b[i]);
  return h;
}

TEST(QuantizeBlockFast, Bf16MseSpecialBlocks) {
  std::vector<Bf16Block> blocks;
  Bf16Block z{};
  blocks.push_back(z);
  for (int i = 0; i < 32; i += 3)
    z[i] = 0x8000;  // signed zeros
  blocks.push_back(z);
  for (std::uint16_t bad : {0x7FC0, 0xFFC0, 0x7F80, 0xFF80, 0x7F81}) {
    for (int pos : {0, 1, 30, 31}) {
      Bf16Block b;
      b.fill(0x3FC0);  // 1.5
      b[pos] = bad;
      blocks.push_back(b);
      b.fill(0x7F7F);  // bf16's largest
      b[pos] = bad;
      blocks.push_back(b);
    }
  }
  // One nonzero element of every binade (subnormals included), among signed zeros; and every
  // binade beside subnormals, across the boundary of the packed path (ceil exponent -123).
  for (int k = -133; k <= 127; ++k) {
    for (std::uint16_t sign : {0, 0x8000}) {
      Bf16Block b{};
      for (int i = 0; i < 32; i += 2)
        b[i] = 0x8000;
      b[(k + 200) % 32] = sign | mxfp4::f32_to_bf16(std::ldexp(1.0f, k));
      blocks.push_back(b);
      b[(k + 201) % 32] = sign | mxfp4::f32_to_bf16(std::ldexp(1.75f, k - 3));
      for (int i = 5; i < 32; i += 7)
        b[i] = static_cast<std::uint16_t>(i * 3 + (i % 2 ? 0x8000 : 0));  // subnormals
      blocks.push_back(b);
    }
  }
  // The largest magnitudes: amax from 3 * 2^126 on (candidate 126 overflows from 3.5 * 2^126).
  for (std::uint16_t top : {0x7EC0, 0x7EC1, 0x7F3F, 0x7F40, 0x7F5F, 0x7F60, 0x7F61, 0x7F7F}) {
    for (std::uint16_t other : {0x0000, 0x3F80, 0x7B70, 0x7F00}) {
      Bf16Block b;
      b.fill(other);
      b[7] = top;
      b[8] = static_cast<std::uint16_t>(0x8000 | (top - 5));
      blocks.push_back(b);
    }
  }
  int failures = 0;
  for (std::size_t i = 0; i < blocks.size() && failures < 5; ++i)
    if (!bf16_mse_same_as_reference(blocks[i], "special #" + std::to_string(i))) ++failures;
  EXPECT_EQ(failures, 0);
}

// Random blocks of several distributions at every scale, ties and saturation on E2M1's grid,
// and blocks whose candidates tie exactly or nearly (the tie path must run, and agree).
TEST(QuantizeBlockFast, Bf16MseRandomBlocksAndTies) {
  std::mt19937_64 rng(20261126);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int kPerFamily = kStride == 1 ? 60000 : 6000;
  const char* names[] = {"normal", "heavy-tailed", "log-uniform", "grid",
                         "bits",   "tie",          "near tie"};
  int exact = 0;
  for (int family = 0; family < 7; ++family) {
    int failures = 0;
    for (int n = 0; n < kPerFamily && failures < 5; ++n) {
      const int k = static_cast<int>(rng() % 270) - 140;
      Block b;
      Bf16Block h;
      switch (family) {
        case 0:
          for (float& x : b)
            x = std::ldexp(normal(rng), k);
          break;
        case 1:
          for (float& x : b) {
            const float n1 = normal(rng), n2 = normal(rng), n3 = normal(rng);
            x = std::ldexp(
                (rng() % 2) ? n1 / std::sqrt(0.5f * (n2 * n2 + n3 * n3) + 1e-30f) : n1 * n1 * n1,
                k);
          }
          break;
        case 2:
          for (float& x : b)
            x = std::ldexp(1.0f + static_cast<float>(rng() % 128) / 128.0f,
                           k - static_cast<int>(rng() % 40)) *
                (rng() % 2 ? 1.0f : -1.0f);
          break;
        case 3:  // E2M1's grid and midpoints of both candidates, and above 6
          for (float& x : b)
            x = std::ldexp(static_cast<float>(static_cast<int>(rng() % 97) - 48) * 0.125f, k);
          break;
        case 5:  // amax and neighbours that code to 0 or alike in both: the sums tie exactly
          for (float& x : b)
            x = std::ldexp(normal(rng), k - 12 - static_cast<int>(rng() % 20));
          b[rng() % 32] = std::ldexp(6.0f + static_cast<float>(rng() % 64) / 64.0f, k);
          b[rng() % 32] = std::ldexp(static_cast<float>(rng() % 10) - 5.0f, k - 1);
          break;
        case 6: {
          // Errors that cancel to a few ulps or exactly: elements in (6, 7) (the same error in
          // both candidates), 7 + j/32 (favours candidate e by j/8) and elements 1.25 + m/128
          // (each favours e - 1 by m/128) whose m add up to 16 j - 2 .. 16 j + 2.
          const float common = 6.0f + static_cast<float>(1 + rng() % 31) / 32.0f;
          for (float& x : b)
            x = std::ldexp(rng() % 2 ? common : 6.0f + static_cast<float>(rng() % 32) / 32.0f, k);
          const int j = 1 + static_cast<int>(rng() % 6);
          int left = 16 * j + static_cast<int>(rng() % 5) - 2;
          b[31] = std::ldexp(7.0f + static_cast<float>(j) / 32.0f, k);
          // Tiny elements (0 in both candidates) whose squares f64 cannot add exactly to the
          // others: with D = 0 the reference's sums can still differ by their roundings.
          if (n % 2) {
            for (std::size_t i = 20; i < 24; ++i)
              b[i] = std::ldexp(1.0f + static_cast<float>(rng() % 128) / 128.0f,
                                k - 20 - static_cast<int>(rng() % 30));
          }
          for (int i = 0; left > 0; ++i) {
            const int m = left < 31 ? left : 16 + static_cast<int>(rng() % 16);  // <= 7 of them
            b[static_cast<std::size_t>(i)] =
                std::ldexp(1.25f + static_cast<float>(m) / 128.0f, k) * (rng() % 2 ? 1.0f : -1.0f);
            left -= m;
          }
          break;
        }
        default:
          break;
      }
      if (family == 4) {
        for (std::uint16_t& x : h) {
          do {
            x = static_cast<std::uint16_t>(rng());
          } while ((x & 0x7F80) == 0x7F80);
        }
      } else {
        for (float& x : b)
          if (!std::isfinite(x)) x = std::copysign(3e38f, x);
        h = to_bf16(b);
        for (std::uint16_t& x : h)
          if ((x & 0x7F80) == 0x7F80) x = static_cast<std::uint16_t>((x & 0x8000) | 0x7F7F);
      }
      bool used_exact = false;
      if (!bf16_mse_same_as_reference(h, std::string(names[family]) + " #" + std::to_string(n),
                                      &used_exact)) {
        ++failures;
      }
      exact += used_exact ? 1 : 0;
    }
    EXPECT_EQ(failures, 0) << names[family];
  }
  EXPECT_GT(exact, kPerFamily / 10) << "too few blocks reached the tie path to test it";
}

}  // namespace
