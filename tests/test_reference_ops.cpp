// The operations (ops.hpp) as the backend table runs them, against an oracle written here in
// float64: its own E2M1 table, its own scale rules and element rounding, its own f16 / bf16
// decoding, and a float64 matrix product. Nothing of the library is used to compute an
// expected value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/ops.hpp"
#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::ScaleRule;
using namespace mxfp4::test;
using mxfp4::Shape;
using mxfp4::Tensor;

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};
constexpr DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16};

std::string rule_label(ScaleRule r) {
  return mxfp4::scale_rule_name(r);
}
std::string dtype_label(DType d) {
  return std::string(mxfp4::dtype_name(d));
}

// ---- random numbers (fixed seeds; normals by Box-Muller)
// -----------------------------------------

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : g_(seed) {}
  // Uniform in (0, 1).
  double uniform() { return (static_cast<double>(g_() >> 11) + 0.5) * 0x1p-53; }
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double t = 2.0 * 3.14159265358979323846 * uniform();
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }
  double laplace() { return (g_() & 1 ? 1.0 : -1.0) * -std::log(uniform()); }
  std::uint64_t next() { return g_(); }
  int below(int n) { return static_cast<int>(g_() % static_cast<std::uint64_t>(n)); }

 private:
  std::mt19937_64 g_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// ---- the oracle: formats
// --------------------------------------------------------------------------

constexpr double kMag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};

double e2m1_value(int code) {
  return code < 8 ? kMag[code] : -kMag[code - 8];
}

double mx_value(int code, int scale) {
  if (scale == 255) return std::numeric_limits<double>::quiet_NaN();
  return e2m1_value(code) * std::ldexp(1.0, scale - 127);
}

// Element i of a floating tensor, decoded here.
std::vector<double> values_of(const Tensor& t) {
  std::vector<double> out(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::uint16_t h;
    switch (t.dtype()) {
      case DType::f32: {
        float f;
        std::memcpy(&f, static_cast<const char*>(t.data()) + 4 * i, 4);
        out[i] = f;
        break;
      }
      case DType::f16:
        std::memcpy(&h, static_cast<const char*>(t.data()) + 2 * i, 2);
        out[i] = decode_f16(h);
        break;
      case DType::bf16:
        std::memcpy(&h, static_cast<const char*>(t.data()) + 2 * i, 2);
        out[i] = decode_bf16(h);
        break;
      default:
        ADD_FAILURE() << "values_of: not a floating tensor";
        return out;
    }
  }
  return out;
}

// Same dtype, shape and bytes (memcmp is not called on empty, possibly null, storage).
bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  return a.nbytes() == 0 || std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

std::vector<std::uint8_t> bytes_of(const Tensor& t) {
  EXPECT_EQ(t.dtype(), DType::u8);
  const auto* p = static_cast<const std::uint8_t*>(t.data());
  return std::vector<std::uint8_t>(p, p + t.numel());
}

// ---- the oracle: scale rules and element rounding
// --------------------------------------------------

int floor_log2(double a) {
  int ex;
  std::frexp(a, &ex);
  return ex - 1;
}

// Nearest E2M1 magnitude index for a >= 0: ties to the even index, or (mistralrs) away from 0.
int nearest_magnitude(double a, bool ties_away) {
  int best = 0;
  double best_d = std::fabs(a - kMag[0]);
  for (int i = 1; i < 8; ++i) {
    const double d = std::fabs(a - kMag[i]);
    if (d < best_d || (d == best_d && (ties_away || i % 2 == 0))) {
      best = i;
      best_d = d;
    }
  }
  return best;
}

int element_code(double x, ScaleRule rule) {
  if (rule == ScaleRule::mistralrs) return nearest_magnitude(std::fabs(x), true) | (x < 0 ? 8 : 0);
  return nearest_magnitude(std::fabs(x), false) | (std::signbit(x) ? 8 : 0);
}

double block_sse(const double* v, int e) {
  double sse = 0.0;
  for (int i = 0; i < 32; ++i) {
    const double x = std::ldexp(v[i], -e);
    const double d = v[i] - e2m1_value(element_code(x, ScaleRule::floor)) * std::ldexp(1.0, e);
    sse += d * d;
  }
  return sse;
}

int ceil_exponent(double amax) {  // smallest e with amax <= 6 * 2^e
  int e = floor_log2(amax) - 3;
  while (std::ldexp(6.0, e) < amax)
    ++e;
  return e;
}

int rule_exponent(ScaleRule rule, const double* v, double amax) {
  const int fl = floor_log2(amax);
  switch (rule) {
    case ScaleRule::floor:
      return fl - 2;
    case ScaleRule::ceil:
      return ceil_exponent(amax);
    case ScaleRule::even:
      return (amax / std::ldexp(1.0, fl) >= 1.75 ? fl + 1 : fl) - 2;
    case ScaleRule::mse: {
      int e = std::min(ceil_exponent(amax), 127);
      if (e > -127 && block_sse(v, e - 1) < block_sse(v, e)) --e;
      return e;
    }
    case ScaleRule::mistralrs: {  // largest e with 6 * 2^e <= amax
      int e = fl - 3;
      while (std::ldexp(6.0, e + 1) <= amax)
        ++e;
      return e;
    }
  }
  return 0;
}

// One block: returns the scale byte and fills 32 codes.
int oracle_block(ScaleRule rule, const double* v, int* codes) {
  double amax = 0.0;
  for (int i = 0; i < 32; ++i) {
    if (!std::isfinite(v[i])) {
      for (int j = 0; j < 32; ++j)
        codes[j] = 0;
      return 255;
    }
    amax = std::max(amax, std::fabs(v[i]));
  }
  int e = 0;
  if (amax > 0.0) e = std::clamp(rule_exponent(rule, v, amax), -127, 127);
  for (int i = 0; i < 32; ++i)
    codes[i] = element_code(std::ldexp(v[i], -e), rule);
  return e + 127;
}

struct OracleQuantized {
  std::vector<std::uint8_t> blocks;
  std::vector<std::uint8_t> scales;
};

OracleQuantized oracle_quantize(const std::vector<double>& w, ScaleRule rule) {
  OracleQuantized q;
  const std::size_t nblocks = w.size() / 32;
  q.blocks.assign(w.size() / 2, 0);
  q.scales.assign(nblocks, 0);
  int codes[32];
  for (std::size_t b = 0; b < nblocks; ++b) {
    q.scales[b] = static_cast<std::uint8_t>(oracle_block(rule, &w[b * 32], codes));
    for (int j = 0; j < 16; ++j) {
      q.blocks[b * 16 + j] = static_cast<std::uint8_t>(codes[2 * j] | (codes[2 * j + 1] << 4));
    }
  }
  return q;
}

// Decodes blocks and scales (any shape [.., N, K/2], [.., N, K/32]) to float64.
std::vector<double> oracle_dequantize(const std::vector<std::uint8_t>& blocks,
                                      const std::vector<std::uint8_t>& scales) {
  std::vector<double> w(blocks.size() * 2);
  for (std::size_t i = 0; i < w.size(); ++i) {
    const std::uint8_t byte = blocks[i / 2];
    const int code = (i % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
    w[i] = mx_value(code, scales[i / 32]);
  }
  return w;
}
std::vector<double> oracle_dequantize(const Mxfp4Weight& w) {
  return oracle_dequantize(bytes_of(w.blocks()), bytes_of(w.scales()));
}

// ---- test data
// ------------------------------------------------------------------------------------

// Values of a [rows, k] matrix, block by block a mixture of: Gaussian blocks at a row scale
// (wide: 2^-128 .. 2^110, including f32 subnormals; narrow: what f16 holds), blocks of exact
// E2M1 values and midpoints times 2^j with 6 * 2^j present (every rounding tie), all-zero blocks
// with signed zeros, and Laplace blocks with an outlier.
std::vector<float> mixed_values(std::int64_t rows, std::int64_t k, std::uint64_t seed, bool wide) {
  Rng rng(seed);
  const double wide_mults[] = {1.0, 0x1p-20, 0x1p24, 0x1p-128, 0x1p110, 0x1p-140, 3.0};
  const double narrow_mults[] = {1.0, 0x1p-6, 0x1p5, 0.3};
  const double grid[] = {0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75,
                         2.0, 2.5,  3.0, 3.5,  4.0, 5.0,  6.0};
  std::vector<float> v(static_cast<std::size_t>(rows * k));
  for (std::int64_t r = 0; r < rows; ++r) {
    const double mult = wide ? wide_mults[rng.below(7)] : narrow_mults[rng.below(4)];
    for (std::int64_t b = 0; b < k / 32; ++b) {
      float* blk = &v[static_cast<std::size_t>(r * k + b * 32)];
      const int kind = rng.below(8);
      if (kind == 0) {
        for (int i = 0; i < 32; ++i)
          blk[i] = (rng.next() & 1) ? -0.0f : 0.0f;
      } else if (kind == 1) {
        const int j = rng.below(7) - 3;
        for (int i = 0; i < 32; ++i) {
          const double g = i == 0 ? 6.0 : grid[rng.below(15)];
          blk[i] = static_cast<float>(std::ldexp((rng.next() & 1) ? -g : g, j));
        }
      } else if (kind == 2) {
        for (int i = 0; i < 32; ++i)
          blk[i] = static_cast<float>(rng.laplace() * mult);
        blk[rng.below(32)] = static_cast<float>(20.0 * mult);
      } else {
        for (int i = 0; i < 32; ++i)
          blk[i] = static_cast<float>(rng.normal() * mult);
      }
    }
  }
  return v;
}

Tensor gaussian(const Shape& shape, std::uint64_t seed, double sigma = 1.0) {
  Rng rng(seed);
  std::vector<float> v(static_cast<std::size_t>(mxfp4::shape_numel(shape)));
  for (float& x : v)
    x = static_cast<float>(rng.normal() * sigma);
  return Tensor::from_vector(v, shape);
}

// ---- quantize
// -------------------------------------------------------------------------------------

void expect_quantize_matches_oracle(const Tensor& weight, ScaleRule rule, const std::string& what) {
  mxfp4::QuantizeOptions opt;
  opt.rule = rule;
  const mxfp4::QuantizedTensor q = mxfp4::quantize(weight, opt);
  Shape bshape = weight.shape();
  bshape.back() /= 2;
  Shape sshape = weight.shape();
  sshape.back() /= 32;
  ASSERT_EQ(q.blocks.shape(), bshape) << what;
  ASSERT_EQ(q.scales.shape(), sshape) << what;
  ASSERT_EQ(q.blocks.dtype(), DType::u8);
  ASSERT_EQ(q.scales.dtype(), DType::u8);
  const OracleQuantized o = oracle_quantize(values_of(weight), rule);
  const std::vector<std::uint8_t> blocks = bytes_of(q.blocks);
  const std::vector<std::uint8_t> scales = bytes_of(q.scales);
  int bad = 0;
  for (std::size_t i = 0; i < scales.size() && bad < 5; ++i) {
    if (scales[i] != o.scales[i]) {
      ++bad;
      ADD_FAILURE() << what << ": scale of block " << i << " is " << int(scales[i]) << ", expected "
                    << int(o.scales[i]);
    }
  }
  for (std::size_t i = 0; i < blocks.size() && bad < 5; ++i) {
    if (blocks[i] != o.blocks[i]) {
      ++bad;
      ADD_FAILURE() << what << ": packed byte " << i << " (block " << i / 16 << ") is 0x"
                    << std::hex << int(blocks[i]) << ", expected 0x" << int(o.blocks[i]);
    }
  }
}

TEST(Quantize, MatchesTheOracleForEveryRuleAndInputType) {
  for (DType dt : kFloatTypes) {
    const bool wide = dt != DType::f16;
    const std::vector<float> dense = mixed_values(24, 256, 11 + static_cast<int>(dt), wide);
    const std::vector<float> stacked = mixed_values(3 * 7, 96, 23 + static_cast<int>(dt), wide);
    const Tensor wd = Tensor::from_vector(dense, {24, 256}).to(dt);
    const Tensor ws = Tensor::from_vector(stacked, {3, 7, 96}).to(dt);
    for (ScaleRule r : kRules) {
      const std::string tag = std::string(dtype_label(dt)) + " " + rule_label(r);
      expect_quantize_matches_oracle(wd, r, "dense " + tag);
      expect_quantize_matches_oracle(ws, r, "stacked " + tag);
    }
  }
}

TEST(Quantize, DefaultRuleIsMseAndQuantizeIntoAgrees) {
  EXPECT_EQ(mxfp4::kDefaultScaleRule, ScaleRule::mse);
  const Tensor w = Tensor::from_vector(mixed_values(5, 64, 7, true), {5, 64});
  const mxfp4::QuantizedTensor q = mxfp4::quantize(w);
  const OracleQuantized o = oracle_quantize(values_of(w), ScaleRule::mse);
  EXPECT_EQ(bytes_of(q.blocks), o.blocks);
  EXPECT_EQ(bytes_of(q.scales), o.scales);
  Tensor blocks = Tensor::zeros({5, 32}, DType::u8);
  Tensor scales = Tensor::zeros({5, 2}, DType::u8);
  mxfp4::quantize_into(w, blocks, scales);
  EXPECT_EQ(bytes_of(blocks), o.blocks);
  EXPECT_EQ(bytes_of(scales), o.scales);
}

TEST(Quantize, WeightObjectDenseAndStacked) {
  const Tensor w = gaussian({3, 5, 64}, 5);
  const Tensor bias = gaussian({3, 5}, 6).to(DType::bf16);
  const Mxfp4Weight q = Mxfp4Weight::quantize(w, bias);
  EXPECT_TRUE(q.defined());
  EXPECT_TRUE(q.stacked());
  EXPECT_EQ(q.num_experts(), 3);
  EXPECT_EQ(q.out_features(), 5);
  EXPECT_EQ(q.in_features(), 64);
  EXPECT_EQ(q.blocks().shape(), (Shape{3, 5, 32}));
  EXPECT_EQ(q.scales().shape(), (Shape{3, 5, 2}));
  ASSERT_TRUE(q.bias().has_value());
  EXPECT_EQ(q.bias()->data(), bias.data());  // shared, not copied
  const Mxfp4Weight d = Mxfp4Weight::quantize(gaussian({7, 32}, 8));
  EXPECT_FALSE(d.stacked());
  EXPECT_EQ(d.num_experts(), 1);
  EXPECT_EQ(d.out_features(), 7);
  EXPECT_EQ(d.in_features(), 32);
  EXPECT_FALSE(d.bias().has_value());
  EXPECT_FALSE(Mxfp4Weight().defined());
  // from_parts shares the parts.
  const Mxfp4Weight p = Mxfp4Weight::from_parts(q.blocks(), q.scales());
  EXPECT_EQ(p.blocks().data(), q.blocks().data());
  EXPECT_EQ(p.num_experts(), 3);
  // to() copies every part, on the same device too.
  const Mxfp4Weight c = q.to(mxfp4::Device::cpu());
  EXPECT_NE(c.blocks().data(), q.blocks().data());
  EXPECT_NE(c.scales().data(), q.scales().data());
  ASSERT_TRUE(c.bias().has_value());
  EXPECT_NE(c.bias()->data(), q.bias()->data());
  EXPECT_EQ(std::memcmp(c.blocks().data(), q.blocks().data(), q.blocks().nbytes()), 0);
  EXPECT_EQ(std::memcmp(c.scales().data(), q.scales().data(), q.scales().nbytes()), 0);
  EXPECT_EQ(std::memcmp(c.bias()->data(), q.bias()->data(), q.bias()->nbytes()), 0);
  EXPECT_EQ(c.bias()->dtype(), DType::bf16);
  EXPECT_TRUE(c.stacked());
  EXPECT_FALSE(d.to(mxfp4::Device::cpu()).bias().has_value());
  EXPECT_THROW(Mxfp4Weight().to(mxfp4::Device::cpu()), mxfp4::InvalidArgument);
}

TEST(Quantize, NanBlockPolicyWritesTheNaNScale) {
  std::vector<float> v = mixed_values(4, 96, 3, false);
  v[2 * 96 + 40] = std::numeric_limits<float>::quiet_NaN();  // row 2, block 1
  v[3 * 96 + 95] = -std::numeric_limits<float>::infinity();  // row 3, block 2
  v[0 * 96 + 0] = std::numeric_limits<float>::infinity();    // row 0, block 0
  for (DType dt : kFloatTypes) {
    const Tensor w = Tensor::from_vector(v, {4, 96}).to(dt);
    mxfp4::QuantizeOptions opt;
    opt.non_finite = mxfp4::NonFinitePolicy::nan_block;
    for (ScaleRule r : kRules) {
      opt.rule = r;
      const Mxfp4Weight q = Mxfp4Weight::quantize(w, std::nullopt, opt);
      const OracleQuantized o = oracle_quantize(values_of(w), r);
      const std::vector<std::uint8_t> scales = bytes_of(q.scales());
      EXPECT_EQ(scales, o.scales) << dtype_label(dt) << " " << rule_label(r);
      EXPECT_EQ(bytes_of(q.blocks()), o.blocks) << dtype_label(dt) << " " << rule_label(r);
      EXPECT_EQ(scales[2 * 3 + 1], 0xFF);
      EXPECT_EQ(scales[3 * 3 + 2], 0xFF);
      EXPECT_EQ(scales[0], 0xFF);
      const Tensor back = q.dequantize(DType::f32);
      const float* p = back.data_as<float>();
      for (int i = 0; i < 32; ++i) {
        EXPECT_TRUE(std::isnan(p[2 * 96 + 32 + i]));
        EXPECT_TRUE(std::isnan(p[i]));
      }
      EXPECT_FALSE(std::isnan(p[2 * 96 + 31]));
      EXPECT_FALSE(std::isnan(p[2 * 96 + 64]));
    }
  }
}

// ---- dequantize
// -----------------------------------------------------------------------------------

TEST(Dequantize, ArbitraryBytesToEveryOutputType) {
  // Random codes and random scales over the whole E8M0 range (0, 254, 255 included), stacked.
  Rng rng(99);
  const std::int64_t e = 2, n = 5, k = 128;
  std::vector<std::uint8_t> blocks(static_cast<std::size_t>(e * n * k / 2));
  std::vector<std::uint8_t> scales(static_cast<std::size_t>(e * n * k / 32));
  for (auto& b : blocks)
    b = static_cast<std::uint8_t>(rng.next());
  for (std::size_t i = 0; i < scales.size(); ++i) {
    const int pick = rng.below(4);
    scales[i] = static_cast<std::uint8_t>(pick == 0 ? rng.next() : 100 + rng.below(50));
  }
  scales[0] = 0;
  scales[1] = 254;
  scales[2] = 255;
  scales[3] = 253;
  scales[4] = 127 - 24;  // f16 subnormal range
  scales[5] = 127 + 14;  // f16 overflow for 6
  const Mxfp4Weight w = Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {e, n, k / 2}),
                                                Tensor::from_vector(scales, {e, n, k / 32}));
  const std::vector<double> exact = oracle_dequantize(blocks, scales);
  for (DType dt : kFloatTypes) {
    const Tensor out = mxfp4::dequantize(w, dt);
    ASSERT_EQ(out.shape(), (Shape{e, n, k}));
    ASSERT_EQ(out.dtype(), dt);
    const std::vector<double> got = values_of(out);
    for (std::size_t i = 0; i < exact.size(); ++i) {
      if (std::isnan(exact[i])) {
        ASSERT_TRUE(std::isnan(got[i])) << dtype_label(dt) << " element " << i;
        continue;
      }
      const double expected = round_to(dt, exact[i]);
      ASSERT_EQ(got[i], expected) << dtype_label(dt) << " element " << i << " exact " << exact[i];
      ASSERT_EQ(std::signbit(got[i]), std::signbit(expected)) << dtype_label(dt) << " " << i;
    }
    // Into a caller's buffer, and through the weight object: the same bytes.
    Tensor into = Tensor::zeros({e, n, k}, dt);
    mxfp4::dequantize_into(w, into);
    EXPECT_TRUE(same_bytes(into, out));
    const Tensor via = w.dequantize(dt);
    EXPECT_TRUE(same_bytes(via, out));
  }
  // f32 bit-exact: 2^-127 * 0.5 = 2^-128 is an f32 subnormal and must come back exactly.
  const Tensor f = mxfp4::dequantize(w);
  const float* p = f.data_as<float>();
  for (int i = 0; i < 32; ++i) {
    const int code = (i % 2 == 0) ? (blocks[i / 2] & 0xF) : (blocks[i / 2] >> 4);
    const float expected = static_cast<float>(e2m1_value(code) * std::ldexp(1.0, -127));
    EXPECT_EQ(std::memcmp(&p[i], &expected, 4), 0) << "element " << i;
  }
}

// ---- quantize -> dequantize error bounds
// -----------------------------------------------------------

// Half the spacing of the E2M1 grid around |x| (x in units of the block scale, |x| <= 6).
double half_step(double ax) {
  return ax <= 2.0 ? 0.25 : ax <= 4.0 ? 0.5 : 1.0;
}

TEST(RoundTrip, ErrorBoundsPerRule) {
  const std::int64_t n = 48, k = 256;
  // Gaussian rows, Laplace rows and rows with rare large outliers.
  Rng rng(2024);
  std::vector<float> v(static_cast<std::size_t>(n * k));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t i = 0; i < k; ++i) {
      double x = r % 3 == 0 ? rng.normal() : r % 3 == 1 ? rng.laplace() : rng.normal() * 0.02;
      if (r % 3 == 2 && rng.below(97) == 0) x = rng.normal() * 3.0;
      v[static_cast<std::size_t>(r * k + i)] = static_cast<float>(x);
    }
  }
  const Tensor w = Tensor::from_vector(v, {n, k});
  for (ScaleRule rule : kRules) {
    mxfp4::QuantizeOptions opt;
    opt.rule = rule;
    const Mxfp4Weight q = Mxfp4Weight::quantize(w, std::nullopt, opt);
    const std::vector<std::uint8_t> scales = bytes_of(q.scales());
    const std::vector<double> back = values_of(q.dequantize());
    int saturated = 0;
    for (std::size_t b = 0; b < scales.size(); ++b) {
      const int e = scales[b] - 127;
      const double step = std::ldexp(1.0, e);
      double amax = 0.0, sse = 0.0;
      for (std::size_t i = b * 32; i < b * 32 + 32; ++i) {
        amax = std::max(amax, std::fabs(static_cast<double>(v[i])));
        const double x = static_cast<double>(v[i]);
        const double err = std::fabs(x - back[i]);
        sse += err * err;
        if (std::fabs(x) <= 6.0 * step) {
          // Inside the grid every rule rounds to a neighbour: at most half a step.
          ASSERT_LE(err, half_step(std::fabs(x) / step) * step)
              << rule_label(rule) << " element " << i << " x " << x << " q " << back[i];
        } else {
          // Beyond 6 * 2^e the value saturates to +/-6 * 2^e.
          ++saturated;
          ASSERT_EQ(back[i], std::copysign(6.0 * step, x)) << rule_label(rule) << " " << i;
          const double over = std::fabs(x) - 6.0 * step;
          switch (rule) {
            case ScaleRule::floor:  // amax / 2^e < 8
              ASSERT_LT(over, 2.0 * step) << i;
              break;
            case ScaleRule::even:  // amax / 2^e < 7
              ASSERT_LT(over, 1.0 * step) << i;
              break;
            case ScaleRule::ceil:  // never saturates
              ADD_FAILURE() << "ceil saturated element " << i;
              break;
            case ScaleRule::mse:  // the candidate below the ceil exponent: amax / 2^e <= 12
              ASSERT_LE(over, 6.0 * step) << i;
              break;
            case ScaleRule::mistralrs:  // amax / 2^e < 12: clips, the known defect
              ASSERT_LT(over, 6.0 * step) << i;
              break;
          }
        }
      }
      if (amax == 0.0) continue;
      if (rule == ScaleRule::mse) {
        // mse never does worse than the ceil exponent on its own block.
        const int ce = ceil_exponent(amax);
        std::vector<double> blk(v.begin() + static_cast<std::ptrdiff_t>(b * 32),
                                v.begin() + static_cast<std::ptrdiff_t>(b * 32 + 32));
        ASSERT_LE(sse, block_sse(blk.data(), ce)) << "block " << b;
        ASSERT_TRUE(e == ce || e == ce - 1) << "block " << b;
      }
      // The block's largest magnitude sets the exponent: amax / 2^e in the rule's range.
      const double ratio = amax / step;
      switch (rule) {
        case ScaleRule::floor:
          ASSERT_TRUE(ratio >= 4.0 && ratio < 8.0) << ratio;
          break;
        case ScaleRule::ceil:
          ASSERT_TRUE(ratio > 3.0 && ratio <= 6.0) << ratio;
          break;
        case ScaleRule::even:
          ASSERT_TRUE(ratio >= 3.5 && ratio < 7.0) << ratio;
          break;
        case ScaleRule::mse:
          ASSERT_TRUE(ratio > 3.0 && ratio <= 12.0) << ratio;
          break;
        case ScaleRule::mistralrs:
          ASSERT_TRUE(ratio >= 6.0 && ratio < 12.0) << ratio;
          break;
      }
    }
    if (rule == ScaleRule::ceil) {
      EXPECT_EQ(saturated, 0);
    }
    if (rule == ScaleRule::mistralrs || rule == ScaleRule::floor) {
      EXPECT_GT(saturated, 0) << rule_label(rule);
    }
  }
}

// ---- linear
// ---------------------------------------------------------------------------------------

// Checks out (x's dtype) against the float64 product of the decoded x and weight.
void expect_linear_close(const Tensor& x, const Mxfp4Weight& w, const Tensor& out,
                         const std::string& what) {
  const std::int64_t k = w.in_features(), n = w.out_features();
  Shape expected_shape = x.shape();
  expected_shape.back() = n;
  ASSERT_EQ(out.shape(), expected_shape) << what;
  ASSERT_EQ(out.dtype(), x.dtype()) << what;
  const std::vector<double> xv = values_of(x);
  const std::vector<double> wv = oracle_dequantize(w);
  const std::vector<double> bv =
      w.bias() ? values_of(*w.bias()) : std::vector<double>(static_cast<std::size_t>(n), 0.0);
  const std::vector<double> got = values_of(out);
  const std::int64_t m = x.numel() / k;
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t o = 0; o < n; ++o) {
      double exact = bv[static_cast<std::size_t>(o)], mag = std::fabs(exact);
      for (std::int64_t i = 0; i < k; ++i) {
        const double t =
            xv[static_cast<std::size_t>(r * k + i)] * wv[static_cast<std::size_t>(o * k + i)];
        exact += t;
        mag += std::fabs(t);
      }
      // f32 accumulation error allowance, growing with sqrt(K) (the reference is far tighter).
      double tol = 1e-6 * std::sqrt(static_cast<double>(k)) * mag + 1e-30;
      // One rounding to the output type.
      const double g = got[static_cast<std::size_t>(r * n + o)];
      tol += ulp_of(x.dtype(), std::max(std::fabs(exact), std::fabs(g)));
      ASSERT_LE(std::fabs(g - exact), tol)
          << what << ": out[" << r << ", " << o << "] = " << g << ", exact " << exact;
    }
  }
}

struct LinearShape {
  Shape x_shape;  // [..., K]
  std::int64_t n;
};

TEST(Linear, MatchesFloat64OnRandomShapes) {
  const LinearShape shapes[] = {
      {{1, 32}, 7}, {{1, 64}, 1},   {{3, 64}, 33}, {{5, 96}, 16},      {{2, 3, 64}, 7},
      {{4, 32}, 9}, {{2, 2880}, 9}, {{96}, 5},     {{1, 1, 1, 32}, 3}, {{0, 64}, 4},
  };
  const std::optional<DType> biases[] = {std::nullopt, DType::f32, DType::bf16, DType::f16};
  std::uint64_t seed = 1000;
  for (const LinearShape& s : shapes) {
    const std::int64_t k = s.x_shape.back();
    const Tensor wf = gaussian({s.n, k}, ++seed, 0.5);
    for (std::optional<DType> bias_dtype : biases) {
      std::optional<Tensor> bias;
      if (bias_dtype) bias = gaussian({s.n}, ++seed).to(*bias_dtype);
      const Mxfp4Weight w = Mxfp4Weight::quantize(wf, bias);
      for (DType dt : kFloatTypes) {
        const Tensor x = gaussian(s.x_shape, ++seed).to(dt);
        const std::string what = "x " + mxfp4::to_string(s.x_shape) + " " + dtype_label(dt) +
                                 " N=" + std::to_string(s.n) + " bias " +
                                 (bias_dtype ? dtype_label(*bias_dtype) : "none");
        const Tensor out = mxfp4::linear(x, w);
        expect_linear_close(x, w, out, what);
        // linear_into writes the same values into a caller's buffer.
        Shape os = s.x_shape;
        os.back() = s.n;
        Tensor into = Tensor::zeros(os, dt);
        mxfp4::linear_into(x, w, into);
        EXPECT_TRUE(same_bytes(into, out)) << what;
      }
    }
  }
}

TEST(Linear, EveryRuleAndExactSmallCase) {
  // W = row 0: 1.0 everywhere, row 1: -0.5 at column 3 only, row 2: 6 * 2^-3 at column 31 and
  // 4 * 2^-3 at column 63 (all exact in MXFP4); bias (1, 2, -3).
  std::vector<float> wv(3 * 64, 0.0f);
  for (int i = 0; i < 64; ++i)
    wv[i] = 1.0f;
  wv[64 + 3] = -0.5f;
  wv[128 + 31] = 0.75f;
  wv[128 + 63] = 0.5f;
  std::vector<float> xv(2 * 64);
  for (int i = 0; i < 64; ++i) {
    xv[i] = static_cast<float>(i);      // x0 = 0, 1, ..., 63
    xv[64 + i] = i % 2 ? -1.0f : 2.0f;  // x1 = 2, -1, 2, -1, ...
  }
  // y0 = (sum 0..63, -0.5*3, 0.75*31 + 0.5*63) + b = (2016, -1.5, 54.75) + (1, 2, -3)
  // y1 = (32*2 - 32, -0.5*-1, 0.75*-1 + 0.5*-1) + b = (32, 0.5, -1.25) + (1, 2, -3)
  const double expected[6] = {2017.0, 0.5, 51.75, 33.0, 2.5, -4.25};
  for (ScaleRule r : kRules) {
    if (r == ScaleRule::mistralrs) continue;  // clips 1.0 -> 0.75 (scale 2^-3, 8 -> 6)
    mxfp4::QuantizeOptions opt;
    opt.rule = r;
    const Mxfp4Weight w = Mxfp4Weight::quantize(Tensor::from_vector(wv, {3, 64}),
                                                Tensor::from_vector<float>({1, 2, -3}, {3}), opt);
    for (DType dt : {DType::f32, DType::bf16}) {  // bf16 holds all x and y exactly but 2017
      const Tensor out = mxfp4::linear(Tensor::from_vector(xv, {2, 64}).to(dt), w);
      const std::vector<double> got = values_of(out);
      for (int i = 0; i < 6; ++i) {
        EXPECT_EQ(got[i], round_to(dt, expected[i]))
            << rule_label(r) << " " << dtype_label(dt) << " " << i;
      }
    }
  }
}

// ---- gather_linear
// --------------------------------------------------------------------------------

Tensor make_indices(const std::vector<std::int64_t>& ids, std::int64_t t, std::int64_t topk,
                    DType dt) {
  switch (dt) {
    case DType::u32: {
      std::vector<std::uint32_t> v(ids.begin(), ids.end());
      return Tensor::from_vector(v, {t, topk});
    }
    case DType::i32: {
      std::vector<std::int32_t> v(ids.begin(), ids.end());
      return Tensor::from_vector(v, {t, topk});
    }
    default:
      return Tensor::from_vector(ids, {t, topk});
  }
}

void expect_gather_close(const Tensor& x, const std::vector<std::int64_t>& ids, std::int64_t topk,
                         const Mxfp4Weight& w, const Tensor& out, const std::string& what) {
  const std::int64_t k = w.in_features(), n = w.out_features();
  const std::int64_t t = x.dim(0);
  ASSERT_EQ(out.shape(), (Shape{t, topk, n})) << what;
  ASSERT_EQ(out.dtype(), x.dtype()) << what;
  const bool per_slot = x.rank() == 3;
  const std::vector<double> xv = values_of(x);
  const std::vector<double> wv = oracle_dequantize(w);
  const std::vector<double> bv = w.bias() ? values_of(*w.bias()) : std::vector<double>();
  const std::vector<double> got = values_of(out);
  for (std::int64_t tok = 0; tok < t; ++tok) {
    for (std::int64_t s = 0; s < topk; ++s) {
      const std::int64_t slot = tok * topk + s;
      const std::int64_t e = ids[static_cast<std::size_t>(slot)];
      const std::int64_t xrow = per_slot ? slot : tok;
      for (std::int64_t o = 0; o < n; ++o) {
        double exact = bv.empty() ? 0.0 : bv[static_cast<std::size_t>(e * n + o)];
        double mag = std::fabs(exact);
        for (std::int64_t i = 0; i < k; ++i) {
          const double p = xv[static_cast<std::size_t>(xrow * k + i)] *
                           wv[static_cast<std::size_t>((e * n + o) * k + i)];
          exact += p;
          mag += std::fabs(p);
        }
        const double g = got[static_cast<std::size_t>(slot * n + o)];
        const double tol = 1e-6 * std::sqrt(static_cast<double>(k)) * mag + 1e-30 +
                           ulp_of(x.dtype(), std::max(std::fabs(exact), std::fabs(g)));
        ASSERT_LE(std::fabs(g - exact), tol)
            << what << ": out[" << tok << ", " << s << ", " << o << "] = " << g << ", exact "
            << exact << " (expert " << e << ")";
      }
    }
  }
}

TEST(GatherLinear, MatchesFloat64) {
  const std::int64_t k = 64, n = 5, tokens = 3;
  std::uint64_t seed = 7000;
  for (std::int64_t experts : {1, 64}) {
    const Tensor wf = gaussian({experts, n, k}, ++seed, 0.5);
    const std::optional<DType> biases[] = {std::nullopt, DType::f32, DType::bf16};
    for (std::optional<DType> bias_dtype : biases) {
      std::optional<Tensor> bias;
      if (bias_dtype) bias = gaussian({experts, n}, ++seed).to(*bias_dtype);
      const Mxfp4Weight w = Mxfp4Weight::quantize(wf, bias);
      ASSERT_TRUE(w.stacked());
      ASSERT_EQ(w.num_experts(), experts);
      for (std::int64_t topk : {1, 2, 4}) {
        // Ids: random, with the first and the last expert always present.
        Rng rng(++seed);
        std::vector<std::int64_t> ids = {experts - 1};
        while (static_cast<std::int64_t>(ids.size()) < tokens * topk - 1) {
          ids.push_back(rng.below(static_cast<int>(experts)));
        }
        ids.push_back(0);
        for (DType index_dtype : {DType::u32, DType::i32, DType::i64}) {
          const Tensor indices = make_indices(ids, tokens, topk, index_dtype);
          for (DType dt : kFloatTypes) {
            const std::string what = "E=" + std::to_string(experts) +
                                     " topk=" + std::to_string(topk) + " " +
                                     dtype_label(index_dtype) + " x " + dtype_label(dt) + " bias " +
                                     (bias_dtype ? dtype_label(*bias_dtype) : "none");
            const Tensor x2 = gaussian({tokens, k}, ++seed).to(dt);
            const Tensor out2 = mxfp4::gather_linear(x2, indices, w);
            expect_gather_close(x2, ids, topk, w, out2, what + " x [T, K]");
            const Tensor x3 = gaussian({tokens, topk, k}, ++seed).to(dt);
            const Tensor out3 = mxfp4::gather_linear(x3, indices, w);
            expect_gather_close(x3, ids, topk, w, out3, what + " x [T, topk, K]");
            Tensor into = Tensor::zeros({tokens, topk, n}, dt);
            mxfp4::gather_linear_into(x3, indices, w, into);
            EXPECT_TRUE(same_bytes(into, out3)) << what;
          }
        }
      }
    }
  }
}

TEST(GatherLinear, BroadcastRowEqualsRepeatedRows) {
  // x [T, K] gives every slot the token's row: the same as x [T, topk, K] with the row repeated.
  const std::int64_t k = 96, n = 7, tokens = 2, topk = 3;
  const Mxfp4Weight w = Mxfp4Weight::quantize(gaussian({4, n, k}, 1), gaussian({4, n}, 2));
  const Tensor x = gaussian({tokens, k}, 3);
  std::vector<float> rep;
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t s = 0; s < topk; ++s) {
      rep.insert(rep.end(), x.data_as<float>() + t * k, x.data_as<float>() + (t + 1) * k);
    }
  }
  const Tensor x3 = Tensor::from_vector(rep, {tokens, topk, k});
  const Tensor idx = Tensor::from_vector<std::int32_t>({3, 0, 3, 1, 2, 1}, {tokens, topk});
  const Tensor a = mxfp4::gather_linear(x, idx, w);
  const Tensor b = mxfp4::gather_linear(x3, idx, w);
  EXPECT_TRUE(same_bytes(a, b));
  // Slots with the same expert and the same row agree (t=0: slots 0 and 2 use expert 3).
  const float* p = a.data_as<float>();
  for (std::int64_t o = 0; o < n; ++o)
    EXPECT_EQ(p[0 * n + o], p[2 * n + o]);
  // x [T, 1, K] with topk = 1 is the per-slot form and is accepted.
  const Tensor one = mxfp4::gather_linear(
      x.reshape({tokens, 1, k}), Tensor::from_vector<std::uint32_t>({2, 0}, {tokens, 1}), w);
  EXPECT_EQ(one.shape(), (Shape{tokens, 1, n}));
  // Zero tokens give an empty output.
  const Tensor none =
      mxfp4::gather_linear(Tensor::zeros({0, k}, DType::f32), Tensor::zeros({0, 2}, DType::i64), w);
  EXPECT_EQ(none.shape(), (Shape{0, 2, n}));
}

// gather_linear_expert_order through the public API: rows of gather_linear's output, byte for
// byte, in the stable sort of the pairs by expert, for both x ranks, exact and int8 arithmetic;
// the _into form writes the same; zero tokens give offsets of zeros.
TEST(GatherLinear, ExpertOrderHoldsTheScatteredRowsSorted) {
  const std::int64_t k = 64, n = 9, tokens = 7, topk = 3, experts = 5;
  const Mxfp4Weight w =
      Mxfp4Weight::quantize(gaussian({experts, n, k}, 11), gaussian({experts, n}, 12));
  const std::vector<std::int64_t> ids = {4, 0, 4, 2, 2, 0, 1, 4, 0, 0, 2,
                                         4, 4, 1, 0, 2, 4, 0, 0, 1, 4};
  const Tensor indices = make_indices(ids, tokens, topk, DType::i64);
  std::vector<std::int32_t> perm;
  std::vector<std::int32_t> offsets;
  for (std::int64_t e = 0; e < experts; ++e) {
    offsets.push_back(static_cast<std::int32_t>(perm.size()));
    for (std::size_t p = 0; p < ids.size(); ++p) {
      if (ids[p] == e) perm.push_back(static_cast<std::int32_t>(p));
    }
  }
  offsets.push_back(static_cast<std::int32_t>(perm.size()));
  for (const Tensor& x :
       {gaussian({tokens, k}, 13).to(DType::bf16), gaussian({tokens, topk, k}, 14)}) {
    for (const mxfp4::Precision precision :
         {mxfp4::Precision::exact, mxfp4::Precision::int8_activations}) {
      mxfp4::RunOptions run;
      run.precision = precision;
      const Tensor scattered = mxfp4::gather_linear(x, indices, w, run);
      const mxfp4::ExpertOrderOutput got = mxfp4::gather_linear_expert_order(x, indices, w, run);
      ASSERT_EQ(got.out.shape(), (Shape{tokens * topk, n}));
      ASSERT_EQ(got.out.dtype(), x.dtype());
      ASSERT_EQ(got.perm.dtype(), DType::i32);
      ASSERT_EQ(got.offsets.dtype(), DType::i32);
      ASSERT_EQ(std::vector<std::int32_t>(got.perm.data_as<std::int32_t>(),
                                          got.perm.data_as<std::int32_t>() + perm.size()),
                perm);
      ASSERT_EQ(std::vector<std::int32_t>(got.offsets.data_as<std::int32_t>(),
                                          got.offsets.data_as<std::int32_t>() + offsets.size()),
                offsets);
      const std::size_t row = static_cast<std::size_t>(n) * mxfp4::dtype_size(x.dtype());
      for (std::size_t p = 0; p < perm.size(); ++p) {
        EXPECT_EQ(std::memcmp(static_cast<const char*>(got.out.data()) + p * row,
                              static_cast<const char*>(scattered.data()) + perm[p] * row, row),
                  0)
            << "position " << p;
      }
      Tensor out = Tensor::zeros({tokens * topk, n}, x.dtype());
      Tensor perm_into = Tensor::zeros({tokens * topk}, DType::i32);
      Tensor offsets_into = Tensor::zeros({experts + 1}, DType::i32);
      mxfp4::gather_linear_expert_order_into(x, indices, w, out, perm_into, offsets_into, run);
      EXPECT_TRUE(same_bytes(out, got.out));
      EXPECT_TRUE(same_bytes(perm_into, got.perm));
      EXPECT_TRUE(same_bytes(offsets_into, got.offsets));
    }
  }
  // Zero tokens: nothing to compute, offsets all zero.
  Tensor out = Tensor::zeros({0, n}, DType::f32);
  Tensor perm_none = Tensor::zeros({0}, DType::i32);
  Tensor offsets_none = Tensor::from_vector<std::int32_t>({9, 9, 9, 9, 9, 9}, {experts + 1});
  mxfp4::gather_linear_expert_order_into(Tensor::zeros({0, k}, DType::f32),
                                         Tensor::zeros({0, 2}, DType::i32), w, out, perm_none,
                                         offsets_none);
  for (std::int64_t e = 0; e <= experts; ++e)
    EXPECT_EQ(offsets_none.data_as<std::int32_t>()[e], 0) << e;
}

}  // namespace
