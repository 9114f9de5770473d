// Block-wise Hadamard rotation (include/mxfp4/rotate.hpp): against a dense product with H built
// here from its definition, orthogonality and involution, f16/bf16, in place, threads, what it
// does for quantization (x R (W R)^T = x W^T, quantized too), and errors.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/cpu.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/rotate.hpp"
#include "mxfp4/weight.hpp"
#include "test_expect.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::DType;
using mxfp4::Tensor;
using mxfp4::test::expect_error;
using mxfp4::test::random_normal_values;

constexpr int kB = 32;

// The definition: Sylvester's Hadamard matrix, H[i][j] = (-1)^popcount(i & j), not normalized.
int sign(int i, int j) {
  return std::popcount(static_cast<unsigned>(i & j)) % 2 == 0 ? 1 : -1;
}

// x R for x [rows, k] by the dense product with each block's H, in long double.
std::vector<double> dense_rotate(const std::vector<float>& x, std::int64_t k) {
  std::vector<double> y(x.size());
  const long double norm = 1.0L / std::sqrt(32.0L);
  for (std::size_t b = 0; b < x.size() / kB; ++b) {
    for (int j = 0; j < kB; ++j) {
      long double acc = 0.0L;
      for (int i = 0; i < kB; ++i)
        acc += static_cast<long double>(x[b * kB + static_cast<std::size_t>(i)]) * sign(i, j);
      y[b * kB + static_cast<std::size_t>(j)] = static_cast<double>(acc * norm);
    }
  }
  (void)k;
  return y;
}

std::vector<float> values(const Tensor& t) {
  const Tensor f = t.dtype() == DType::f32 ? t : t.to(DType::f32);
  const float* p = f.data_as<float>();
  return std::vector<float>(p, p + f.numel());
}

std::vector<std::uint8_t> bytes(const Tensor& t) {
  const auto* p = static_cast<const std::uint8_t*>(t.data());
  return std::vector<std::uint8_t>(p, p + t.nbytes());
}

TEST(RotateBlocks, MatchesDenseHadamardProduct) {
  const std::int64_t rows = 7, k = 96;
  const std::vector<float> x = random_normal_values(static_cast<std::size_t>(rows * k), 1);
  const Tensor y = mxfp4::rotate_blocks(Tensor::from_vector(x, {rows, k}));
  ASSERT_EQ(y.shape(), (mxfp4::Shape{rows, k}));
  ASSERT_EQ(y.dtype(), DType::f32);
  const std::vector<float> got = values(y);
  const std::vector<double> want = dense_rotate(x, k);
  for (std::size_t i = 0; i < got.size(); ++i) {
    // Within one unit in the last place of the exact value (f32: 2^-23 relative, plus room for
    // values near zero, where the exact value's own ulp is tiny).
    EXPECT_NEAR(got[i], want[i], std::abs(want[i]) * 0x1p-23 + 1e-12) << i;
  }
}

TEST(RotateBlocks, IntegersAreExact) {
  // Integer blocks: the butterflies are exact, so each output is (sum of +-x) * (1/sqrt(32))
  // rounded once, which the dense product computes the same way.
  const std::int64_t rows = 3, k = 64;
  std::mt19937 gen(2);
  std::uniform_int_distribution<int> dist(-1000, 1000);
  std::vector<float> x(static_cast<std::size_t>(rows * k));
  for (float& v : x)
    v = static_cast<float>(dist(gen));
  const std::vector<float> got = values(mxfp4::rotate_blocks(Tensor::from_vector(x, {rows, k})));
  const double norm = std::numbers::sqrt2 / 8.0;  // 1/sqrt(32), rounded once
  for (std::size_t b = 0; b < x.size() / kB; ++b) {
    for (int j = 0; j < kB; ++j) {
      double sum = 0.0;
      for (int i = 0; i < kB; ++i)
        sum += x[b * kB + static_cast<std::size_t>(i)] * sign(i, j);
      EXPECT_EQ(got[b * kB + static_cast<std::size_t>(j)], static_cast<float>(sum * norm));
    }
  }
}

TEST(RotateBlocks, IsOrthogonalSymmetricAndItsOwnInverse) {
  // The rows of the identity rotate into the rows of R: R = R^T and R R^T = I.
  std::vector<float> eye(kB * kB, 0.0f);
  for (int i = 0; i < kB; ++i)
    eye[static_cast<std::size_t>(i * kB + i)] = 1.0f;
  const std::vector<float> r = values(mxfp4::rotate_blocks(Tensor::from_vector(eye, {kB, kB})));
  for (int i = 0; i < kB; ++i) {
    for (int j = 0; j < kB; ++j) {
      EXPECT_EQ(r[static_cast<std::size_t>(i * kB + j)], r[static_cast<std::size_t>(j * kB + i)]);
      EXPECT_EQ(std::abs(r[static_cast<std::size_t>(i * kB + j)]),
                static_cast<float>(std::numbers::sqrt2 / 8.0));
      double dot = 0.0;
      for (int c = 0; c < kB; ++c) {
        dot += static_cast<double>(r[static_cast<std::size_t>(i * kB + c)]) *
               r[static_cast<std::size_t>(j * kB + c)];
      }
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-6);
    }
  }
  // Twice gives x back, to f32 rounding; norms are kept.
  const std::int64_t rows = 5, k = 128;
  const std::vector<float> x = random_normal_values(static_cast<std::size_t>(rows * k), 3, 10.0f);
  const Tensor once = mxfp4::rotate_blocks(Tensor::from_vector(x, {rows, k}));
  const std::vector<float> twice = values(mxfp4::rotate_blocks(once));
  const std::vector<float> y = values(once);
  for (std::size_t b = 0; b < x.size() / kB; ++b) {
    double nx = 0.0, ny = 0.0;
    for (std::size_t i = b * kB; i < (b + 1) * kB; ++i) {
      EXPECT_NEAR(twice[i], x[i], 4e-7 * 10.0 * 4) << i;
      nx += static_cast<double>(x[i]) * x[i];
      ny += static_cast<double>(y[i]) * y[i];
    }
    EXPECT_NEAR(ny, nx, nx * 1e-6);
  }
}

TEST(RotateBlocks, BlocksAreIndependentAndShapesKept) {
  // [2, 3, 64]: every 32-element block of every row is rotated on its own.
  const std::vector<float> x = random_normal_values(2 * 3 * 64, 4);
  const Tensor y = mxfp4::rotate_blocks(Tensor::from_vector(x, {2, 3, 64}));
  EXPECT_EQ(y.shape(), (mxfp4::Shape{2, 3, 64}));
  const std::vector<float> got = values(y);
  for (std::size_t b = 0; b < x.size() / kB; ++b) {
    const std::vector<float> one(x.begin() + static_cast<std::ptrdiff_t>(b * kB),
                                 x.begin() + static_cast<std::ptrdiff_t>((b + 1) * kB));
    const std::vector<float> alone = values(mxfp4::rotate_blocks(Tensor::from_vector(one, {kB})));
    for (int j = 0; j < kB; ++j)
      EXPECT_EQ(got[b * kB + static_cast<std::size_t>(j)], alone[static_cast<std::size_t>(j)]);
  }
  // No rows: an empty result of the same shape.
  const Tensor empty = mxfp4::rotate_blocks(Tensor::empty({0, 64}, DType::f32));
  EXPECT_EQ(empty.shape(), (mxfp4::Shape{0, 64}));
}

TEST(RotateBlocks, HalfTypesRoundTheF32Result) {
  const std::int64_t rows = 4, k = 64;
  const Tensor x32 =
      Tensor::from_vector(random_normal_values(static_cast<std::size_t>(rows * k), 5), {rows, k});
  for (DType dt : {DType::f16, DType::bf16}) {
    const Tensor x = x32.to(dt);
    const Tensor y = mxfp4::rotate_blocks(x);
    EXPECT_EQ(y.dtype(), dt);
    // The half input is exact in f32: rotating it there and rounding gives the same bits.
    EXPECT_EQ(bytes(y), bytes(mxfp4::rotate_blocks(x.to(DType::f32)).to(dt)));
  }
}

TEST(RotateBlocks, IntoAndInPlace) {
  const std::int64_t rows = 6, k = 96;
  const std::vector<float> x = random_normal_values(static_cast<std::size_t>(rows * k), 6);
  const Tensor xt = Tensor::from_vector(x, {rows, k});
  const Tensor want = mxfp4::rotate_blocks(xt);
  Tensor out = Tensor::empty({rows, k}, DType::f32);
  mxfp4::rotate_blocks_into(xt, out);
  EXPECT_EQ(bytes(out), bytes(want));
  Tensor inplace = xt.clone();
  mxfp4::rotate_blocks_into(inplace, inplace);
  EXPECT_EQ(bytes(inplace), bytes(want));
}

TEST(RotateBlocks, ThreadCountDoesNotChangeResults) {
  // More blocks than one task holds, so several threads share the work.
  const std::int64_t rows = 300, k = 256;
  const Tensor x =
      Tensor::from_vector(random_normal_values(static_cast<std::size_t>(rows * k), 7), {rows, k});
  const int before = mxfp4::num_threads();
  mxfp4::set_num_threads(1);
  const std::vector<std::uint8_t> one = bytes(mxfp4::rotate_blocks(x));
  mxfp4::set_num_threads(4);
  const std::vector<std::uint8_t> four = bytes(mxfp4::rotate_blocks(x));
  mxfp4::set_num_threads(before);
  EXPECT_EQ(one, four);
  // And each row alone gives the same bits as the whole tensor.
  const std::vector<float> all = values(mxfp4::rotate_blocks(x));
  for (std::int64_t r : {0L, 151L, 299L}) {
    const std::vector<float> row = values(mxfp4::rotate_blocks(x.slice_rows(r, r + 1)));
    for (std::int64_t c = 0; c < k; ++c)
      ASSERT_EQ(row[static_cast<std::size_t>(c)], all[static_cast<std::size_t>(r * k + c)]);
  }
}

// sum over the weight of (w - q)^2 / sum w^2 for round-to-nearest (default rule).
double relative_error(const std::vector<float>& w, std::int64_t n, std::int64_t k) {
  const mxfp4::Mxfp4Weight q = mxfp4::Mxfp4Weight::quantize(Tensor::from_vector(w, {n, k}));
  const std::vector<float> d = values(mxfp4::dequantize(q));
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    num += (static_cast<double>(w[i]) - d[i]) * (static_cast<double>(w[i]) - d[i]);
    den += static_cast<double>(w[i]) * w[i];
  }
  return num / den;
}

TEST(RotateBlocks, RotatedWeightWithRotatedInputsComputesTheLayer) {
  const std::int64_t m = 5, n = 24, k = 128;
  const std::vector<float> w = random_normal_values(static_cast<std::size_t>(n * k), 8, 0.05f);
  const std::vector<float> x = random_normal_values(static_cast<std::size_t>(m * k), 9);
  const Tensor wt = Tensor::from_vector(w, {n, k});
  const Tensor xt = Tensor::from_vector(x, {m, k});
  // Exactly: the rotated weight in f32 (no quantization) with rotated inputs is x W^T.
  const std::vector<float> wr = values(mxfp4::rotate_blocks(wt));
  const std::vector<float> xr = values(mxfp4::rotate_blocks(xt));
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double direct = 0.0, rotated = 0.0, scale = 0.0;
      for (std::int64_t c = 0; c < k; ++c) {
        const auto a = static_cast<std::size_t>(i * k + c);
        const auto b = static_cast<std::size_t>(j * k + c);
        direct += static_cast<double>(x[a]) * w[b];
        rotated += static_cast<double>(xr[a]) * wr[b];
        scale += std::abs(static_cast<double>(x[a]) * w[b]);
      }
      EXPECT_NEAR(rotated, direct, 1e-6 * scale);
    }
  }
  // Quantized: linear(rotate_blocks(x), quantize(rotate_blocks(W))) is x W^T up to the
  // weight's quantization error, which the rotation leaves about as it is for Gaussian weights.
  const mxfp4::Mxfp4Weight q = mxfp4::Mxfp4Weight::quantize(mxfp4::rotate_blocks(wt));
  const std::vector<float> y = values(mxfp4::linear(mxfp4::rotate_blocks(xt), q));
  double err = 0.0, sig = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double direct = 0.0;
      for (std::int64_t c = 0; c < k; ++c) {
        direct += static_cast<double>(x[static_cast<std::size_t>(i * k + c)]) *
                  w[static_cast<std::size_t>(j * k + c)];
      }
      const double d = y[static_cast<std::size_t>(i * n + j)] - direct;
      err += d * d;
      sig += direct * direct;
    }
  }
  const double weight_error = relative_error(wr, n, k);
  EXPECT_GT(weight_error, 0.0);
  EXPECT_LT(weight_error, 0.03);  // about 18 dB, as for unrotated Gaussian weights
  EXPECT_LT(err / sig, 4.0 * weight_error);
  EXPECT_GT(err / sig, weight_error / 4.0);
}

TEST(RotateBlocks, Errors) {
  expect_error<mxfp4::InvalidArgument>([] { mxfp4::rotate_blocks(Tensor()); }, "undefined");
  expect_error<mxfp4::ShapeMismatch>(
      [] {
        mxfp4::rotate_blocks(Tensor::zeros({4, 48}, DType::f32));
      },
      "multiple of 32, got x f32 [4, 48]");
  expect_error<mxfp4::ShapeMismatch>(
      [] {
        mxfp4::rotate_blocks(Tensor::zeros({4, 0}, DType::f32));
      },
      "positive multiple of 32");
  expect_error<mxfp4::ShapeMismatch>([] { mxfp4::rotate_blocks(Tensor::zeros({}, DType::f32)); },
                                     "[..., K]");
  expect_error<mxfp4::DTypeMismatch>(
      [] {
        mxfp4::rotate_blocks(Tensor::zeros({2, 32}, DType::u8));
      },
      "f32, f16 or bf16");
  expect_error<mxfp4::DTypeMismatch>(
      [] {
        mxfp4::rotate_blocks(Tensor::zeros({2, 32}, DType::i32));
      },
      "got x i32");
  float dummy[64] = {};
  expect_error<mxfp4::Unsupported>(
      [&] {
        mxfp4::rotate_blocks(Tensor::view(dummy, {2, 32}, DType::f32, mxfp4::Device::cuda(0)));
      },
      "CPU");

  const Tensor x = Tensor::zeros({2, 64}, DType::f32);
  Tensor wrong_shape = Tensor::empty({2, 32}, DType::f32);
  expect_error<mxfp4::ShapeMismatch>([&] { mxfp4::rotate_blocks_into(x, wrong_shape); },
                                     "out must have x's shape");
  Tensor wrong_dtype = Tensor::empty({2, 64}, DType::bf16);
  expect_error<mxfp4::DTypeMismatch>([&] { mxfp4::rotate_blocks_into(x, wrong_dtype); },
                                     "out must have x's dtype");
  Tensor undefined;
  expect_error<mxfp4::InvalidArgument>([&] { mxfp4::rotate_blocks_into(x, undefined); },
                                       "out is undefined");
  // Overlapping by half a row: refused, the input left as it was.
  std::vector<float> buf(3 * 64, 1.0f);
  const Tensor src = Tensor::view(buf.data(), {2, 64}, DType::f32);
  Tensor dst = Tensor::view(buf.data() + 32, {2, 64}, DType::f32);
  expect_error<mxfp4::InvalidArgument>([&] { mxfp4::rotate_blocks_into(src, dst); }, "overlaps x");
  for (float v : buf)
    EXPECT_EQ(v, 1.0f);
}

TEST(RotateBlocks, NonFiniteValuesStayInTheirBlock) {
  std::vector<float> x(64, 1.0f);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> y = values(mxfp4::rotate_blocks(Tensor::from_vector(x, {64})));
  for (int i = 0; i < 32; ++i)
    EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(i)])) << i;
  // The second block is all ones: only its first output is non-zero (32 / sqrt(32)).
  EXPECT_FLOAT_EQ(y[32], std::sqrt(32.0f));
  for (int i = 33; i < 64; ++i)
    EXPECT_EQ(y[static_cast<std::size_t>(i)], 0.0f) << i;
}

}  // namespace
