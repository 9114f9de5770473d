// GPTQ for MXFP4 (include/mxfp4/gptq.hpp): against round-to-nearest, against a textbook scalar
// GPTQ written here, exact invariants (diagonal H, scale of H, dead columns, threads) and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/gptq_internal.hpp"
#include "mxfp4/cpu.hpp"
#include "mxfp4/gptq.hpp"
#include "mxfp4/ops.hpp"
#include "test_expect.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::DType;
using mxfp4::GptqOptions;
using mxfp4::Hessian;
using mxfp4::Mxfp4Weight;
using mxfp4::ScaleRule;
using mxfp4::Tensor;
using mxfp4::test::expect_error;
using mxfp4::test::random_normal_values;

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};

// Activations [s, k] whose columns correlate: a few shared factors plus a little noise, as the
// inputs of a real layer do.
std::vector<float> correlated_activations(std::int64_t s, std::int64_t k, std::uint32_t seed) {
  const std::int64_t factors = std::max<std::int64_t>(4, k / 8);
  const std::vector<float> z = random_normal_values(static_cast<std::size_t>(s * factors), seed);
  const std::vector<float> mix =
      random_normal_values(static_cast<std::size_t>(factors * k), seed + 1);
  const std::vector<float> noise =
      random_normal_values(static_cast<std::size_t>(s * k), seed + 2, 0.2f);
  std::vector<float> x(static_cast<std::size_t>(s * k));
  for (std::int64_t r = 0; r < s; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      double acc = noise[static_cast<std::size_t>(r * k + c)];
      for (std::int64_t f = 0; f < factors; ++f) {
        acc += static_cast<double>(z[static_cast<std::size_t>(r * factors + f)]) *
               mix[static_cast<std::size_t>(f * k + c)];
      }
      x[static_cast<std::size_t>(r * k + c)] = static_cast<float>(acc);
    }
  }
  return x;
}

std::vector<float> dequantized(const Mxfp4Weight& w) {
  const Tensor d = w.dequantize(DType::f32);
  const float* p = d.data_as<float>();
  return {p, p + d.numel()};
}

// ||X W^T - X Q^T||_F in f64.
double output_error(const std::vector<float>& x, const std::vector<float>& w,
                    const std::vector<float>& q, std::int64_t s, std::int64_t n, std::int64_t k) {
  double total = 0.0;
  for (std::int64_t r = 0; r < s; ++r) {
    for (std::int64_t o = 0; o < n; ++o) {
      double acc = 0.0;
      for (std::int64_t c = 0; c < k; ++c) {
        const auto wi = static_cast<std::size_t>(o * k + c);
        acc += static_cast<double>(x[static_cast<std::size_t>(r * k + c)]) *
               (static_cast<double>(w[wi]) - static_cast<double>(q[wi]));
      }
      total += acc * acc;
    }
  }
  return std::sqrt(total);
}

Tensor matrix(const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  return Tensor::from_vector(v, {rows, cols});
}

std::vector<std::uint8_t> bytes(const Tensor& t) {
  const auto* p = t.data_as<std::uint8_t>();
  return {p, p + t.numel()};
}

void expect_same_weight(const Mxfp4Weight& a, const Mxfp4Weight& b) {
  EXPECT_EQ(bytes(a.scales()), bytes(b.scales()));
  EXPECT_EQ(bytes(a.blocks()), bytes(b.blocks()));
}

// ---- A textbook GPTQ, written the paper's way: explicit inverse, then the upper Cholesky factor
// of the inverse, then every column's error applied at once to every later column. ----

std::vector<double> reference_prepared(const std::vector<double>& h, std::int64_t k, double damp) {
  std::vector<double> a(h);
  double sum = 0.0;
  std::int64_t live = 0;
  for (std::int64_t i = 0; i < k; ++i) {
    if (h[static_cast<std::size_t>(i * k + i)] != 0.0) {
      sum += h[static_cast<std::size_t>(i * k + i)];
      ++live;
    }
  }
  const double mean = live > 0 ? sum / static_cast<double>(live) : 1.0;
  for (std::int64_t i = 0; i < k; ++i) {
    if (h[static_cast<std::size_t>(i * k + i)] == 0.0) {
      for (std::int64_t j = 0; j < k; ++j) {
        a[static_cast<std::size_t>(i * k + j)] = 0.0;
        a[static_cast<std::size_t>(j * k + i)] = 0.0;
      }
      a[static_cast<std::size_t>(i * k + i)] = mean;
    }
  }
  for (std::int64_t i = 0; i < k; ++i)
    a[static_cast<std::size_t>(i * k + i)] += damp * mean;
  return a;
}

// Gauss-Jordan inverse with partial pivoting.
std::vector<double> reference_inverse(std::vector<double> a, std::int64_t k) {
  std::vector<double> inv(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i)
    inv[static_cast<std::size_t>(i * k + i)] = 1.0;
  auto at = [k](std::vector<double>& m, std::int64_t i, std::int64_t j) -> double& {
    return m[static_cast<std::size_t>(i * k + j)];
  };
  for (std::int64_t c = 0; c < k; ++c) {
    std::int64_t p = c;
    for (std::int64_t r = c + 1; r < k; ++r) {
      if (std::fabs(at(a, r, c)) > std::fabs(at(a, p, c))) p = r;
    }
    for (std::int64_t j = 0; j < k; ++j) {
      std::swap(at(a, c, j), at(a, p, j));
      std::swap(at(inv, c, j), at(inv, p, j));
    }
    const double d = at(a, c, c);
    for (std::int64_t j = 0; j < k; ++j) {
      at(a, c, j) /= d;
      at(inv, c, j) /= d;
    }
    for (std::int64_t r = 0; r < k; ++r) {
      if (r == c) continue;
      const double f = at(a, r, c);
      for (std::int64_t j = 0; j < k; ++j) {
        at(a, r, j) -= f * at(a, c, j);
        at(inv, r, j) -= f * at(inv, c, j);
      }
    }
  }
  return inv;
}

// Upper U with U^T U = a.
std::vector<double> reference_upper_cholesky(const std::vector<double>& a, std::int64_t k) {
  std::vector<double> u(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i) {
    double d = a[static_cast<std::size_t>(i * k + i)];
    for (std::int64_t t = 0; t < i; ++t)
      d -= u[static_cast<std::size_t>(t * k + i)] * u[static_cast<std::size_t>(t * k + i)];
    const double uii = std::sqrt(d);
    u[static_cast<std::size_t>(i * k + i)] = uii;
    for (std::int64_t j = i + 1; j < k; ++j) {
      double v = a[static_cast<std::size_t>(i * k + j)];
      for (std::int64_t t = 0; t < i; ++t)
        v -= u[static_cast<std::size_t>(t * k + i)] * u[static_cast<std::size_t>(t * k + j)];
      u[static_cast<std::size_t>(i * k + j)] = v / uii;
    }
  }
  return u;
}

// Dequantized result of the textbook GPTQ with MXFP4 blocks (scale from the updated block).
std::vector<float> reference_gptq(const std::vector<float>& w, const std::vector<double>& h,
                                  std::int64_t n, std::int64_t k, ScaleRule rule, double damp) {
  const std::vector<double> u =
      reference_upper_cholesky(reference_inverse(reference_prepared(h, k, damp), k), k);
  std::vector<double> cur(w.begin(), w.end());
  std::vector<float> out(w.size());
  std::vector<std::uint8_t> scale(static_cast<std::size_t>(n));
  for (std::int64_t c = 0; c < k; ++c) {
    if (c % mxfp4::kBlockSize == 0) {
      // Each row's scale for this block, from the block as the earlier columns left it.
      for (std::int64_t r = 0; r < n; ++r) {
        float block[mxfp4::kBlockSize];
        for (int i = 0; i < mxfp4::kBlockSize; ++i)
          block[i] = static_cast<float>(cur[static_cast<std::size_t>(r * k + c + i)]);
        std::uint8_t packed[mxfp4::kBlockBytes];
        scale[static_cast<std::size_t>(r)] = mxfp4::quantize_block(rule, block, packed);
      }
    }
    for (std::int64_t r = 0; r < n; ++r) {
      double* row = cur.data() + r * k;
      const std::uint8_t sc = scale[static_cast<std::size_t>(r)];
      const float x = mxfp4::scale_by_pow2(static_cast<float>(row[c]),
                                           mxfp4::kScaleBias - static_cast<int>(sc));
      const std::uint8_t code =
          rule == ScaleRule::mistralrs ? mxfp4::e2m1_encode_mistralrs(x) : mxfp4::e2m1_encode(x);
      const float q = mxfp4::mxfp4_decode(code, sc);
      out[static_cast<std::size_t>(r * k + c)] = q;
      const double e = (row[c] - q) / u[static_cast<std::size_t>(c * k + c)];
      for (std::int64_t j = c + 1; j < k; ++j)
        row[j] -= e * u[static_cast<std::size_t>(c * k + j)];
    }
  }
  return out;
}

struct Problem {
  std::int64_t s, n, k;
  std::vector<float> x, w;
  Hessian h;
};

Problem make_problem(std::int64_t s, std::int64_t n, std::int64_t k, std::uint32_t seed) {
  Problem p{s,
            n,
            k,
            correlated_activations(s, k, seed),
            random_normal_values(static_cast<std::size_t>(n * k), seed + 10, 0.05f),
            Hessian(k)};
  p.h.add(matrix(p.x, s, k));
  return p;
}

TEST(Gptq, HessianAddIsTheSumOfOuterProductsInRowOrder) {
  const std::int64_t s = 150, k = 40;  // more rows than one internal chunk
  std::vector<float> x = random_normal_values(static_cast<std::size_t>(s * k), 7);
  for (std::int64_t r = 0; r < s; r += 3)
    x[static_cast<std::size_t>(r * k + 5)] = 0.0f;  // zeros are skipped: still the same sums
  Hessian h(k);
  h.add(matrix(x, s, k).reshape({3, s / 3, k}));  // [..., K]: every row one sample
  std::vector<double> expect(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t r = 0; r < s; ++r) {
    for (std::int64_t i = 0; i < k; ++i) {
      for (std::int64_t j = 0; j <= i; ++j) {
        expect[static_cast<std::size_t>(i * k + j)] +=
            static_cast<double>(x[static_cast<std::size_t>(r * k + i)]) *
            static_cast<double>(x[static_cast<std::size_t>(r * k + j)]);
      }
    }
  }
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = i + 1; j < k; ++j)
      expect[static_cast<std::size_t>(i * k + j)] = expect[static_cast<std::size_t>(j * k + i)];
  }
  EXPECT_EQ(h.values(), expect);
  EXPECT_EQ(h.samples(), s);
  EXPECT_EQ(h.in_features(), k);
  // Streaming in two batches (the second in bf16) adds up.
  Hessian streamed(k);
  streamed.add(matrix(x, s, k).slice_rows(0, 70));
  streamed.add(matrix(x, s, k).slice_rows(70, s).to(DType::bf16));
  EXPECT_EQ(streamed.samples(), s);
  Hessian bf(k);
  bf.add(matrix(x, s, k).slice_rows(0, 70));
  const Tensor rest = matrix(x, s, k).slice_rows(70, s).to(DType::bf16).to(DType::f32);
  bf.add(rest);
  EXPECT_EQ(streamed.values(), bf.values());
  const Tensor t = h.to_tensor();
  ASSERT_EQ(t.shape(), (mxfp4::Shape{k, k}));
  EXPECT_EQ(t.data_as<float>()[3 * k + 2], static_cast<float>(expect[3 * k + 2]));
}

TEST(Gptq, InverseFactorTimesHessianIsIdentity) {
  // K = 100: partial blocks and column groups; column 7 dead (never a nonzero input).
  for (std::int64_t k : {96, 100}) {
    for (double damp : {0.0, 0.01}) {
      std::vector<float> x = correlated_activations(400, k, 11);
      for (std::int64_t r = 0; r < 400; ++r)
        x[static_cast<std::size_t>(r * k + 7)] = 0.0f;
      Hessian h(k);
      h.add(matrix(x, 400, k));
      const std::vector<double> u = mxfp4::detail::gptq_inverse_factor(h.values(), k, damp, "t");
      const std::vector<double> a = reference_prepared(h.values(), k, damp);
      for (std::int64_t j = 0; j < k; ++j) {
        if (j != 7) {
          ASSERT_EQ(u[static_cast<std::size_t>(7 * k + j)], 0.0);  // no error moves
        }
      }
      double max_off = 0.0;
      for (std::int64_t i = 0; i < k; ++i) {
        for (std::int64_t j = 0; j < i; ++j)
          ASSERT_EQ(u[static_cast<std::size_t>(i * k + j)], 0.0);
        ASSERT_GT(u[static_cast<std::size_t>(i * k + i)], 0.0);
      }
      // (U^T U) A = I
      std::vector<double> inv(static_cast<std::size_t>(k * k), 0.0);
      for (std::int64_t i = 0; i < k; ++i) {
        for (std::int64_t j = 0; j < k; ++j) {
          double acc = 0.0;
          for (std::int64_t t = 0; t <= std::min(i, j); ++t)
            acc += u[static_cast<std::size_t>(t * k + i)] * u[static_cast<std::size_t>(t * k + j)];
          inv[static_cast<std::size_t>(i * k + j)] = acc;
        }
      }
      for (std::int64_t i = 0; i < k; ++i) {
        for (std::int64_t j = 0; j < k; ++j) {
          double acc = 0.0;
          for (std::int64_t t = 0; t < k; ++t)
            acc +=
                inv[static_cast<std::size_t>(i * k + t)] * a[static_cast<std::size_t>(t * k + j)];
          max_off = std::max(max_off, std::fabs(acc - (i == j ? 1.0 : 0.0)));
        }
      }
      EXPECT_LT(max_off, 1e-8) << "K " << k << " damp " << damp;
      // And it is the factor the textbook route gives.
      const std::vector<double> ref = reference_upper_cholesky(reference_inverse(a, k), k);
      double largest = 0.0;
      for (double v : ref)
        largest = std::max(largest, std::fabs(v));
      for (std::size_t i = 0; i < u.size(); ++i)
        ASSERT_NEAR(u[i], ref[i], 1e-8 * largest) << "element " << i;
    }
  }
}

TEST(Gptq, BeatsRoundToNearestOnTheOutput) {
  struct Shape {
    std::int64_t s, n, k;
    std::uint32_t seed;
  };
  for (const Shape& sh : {Shape{256, 16, 64, 1}, Shape{300, 33, 128, 2}, Shape{512, 64, 256, 3},
                          Shape{600, 8, 512, 4}}) {
    const Problem p = make_problem(sh.s, sh.n, sh.k, sh.seed);
    for (ScaleRule rule : kRules) {
      GptqOptions o;
      o.rule = rule;
      const Mxfp4Weight g = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o);
      mxfp4::QuantizeOptions qo;
      qo.rule = rule;
      const Mxfp4Weight r = Mxfp4Weight::quantize(matrix(p.w, p.n, p.k), {}, qo);
      const double eg = output_error(p.x, p.w, dequantized(g), p.s, p.n, p.k);
      const double er = output_error(p.x, p.w, dequantized(r), p.s, p.n, p.k);
      EXPECT_LT(eg, 0.5 * er) << "N=" << p.n << " K=" << p.k << " rule "
                              << mxfp4::scale_rule_name(rule) << ": gptq " << eg << " rtn " << er;
    }
  }
}

TEST(Gptq, MatchesTheTextbookAlgorithm) {
  for (ScaleRule rule : {ScaleRule::mse, ScaleRule::floor}) {
    const Problem p = make_problem(300, 24, 128, 21);
    GptqOptions o;
    o.rule = rule;
    const std::vector<float> got =
        dequantized(mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o));
    const std::vector<float> ref = reference_gptq(p.w, p.h.values(), p.n, p.k, rule, 0.01);
    std::size_t same = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      same += got[i] == ref[i] ? 1 : 0;
    // Different summation orders may round a weight that sits on a midpoint the other way.
    EXPECT_GE(static_cast<double>(same), 0.995 * static_cast<double>(got.size()));
    const double eg = output_error(p.x, p.w, got, p.s, p.n, p.k);
    const double er = output_error(p.x, p.w, ref, p.s, p.n, p.k);
    EXPECT_NEAR(eg, er, 0.01 * er);
  }
}

TEST(Gptq, DiagonalHessianIsExactlyRoundToNearest) {
  const std::int64_t n = 20, k = 96;
  std::vector<float> w = random_normal_values(static_cast<std::size_t>(n * k), 31);
  w[5] = -0.0f;  // signs of zeros are kept too
  std::vector<double> diag(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i)
    diag[static_cast<std::size_t>(i * k + i)] = 0.5 + static_cast<double>(i % 7);
  diag[3 * k + 3] = 0.0;  // a dead column
  for (ScaleRule rule : kRules) {
    mxfp4::QuantizeOptions qo;
    qo.rule = rule;
    GptqOptions o;
    o.rule = rule;
    for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
      const Tensor wt = matrix(w, n, k).to(dt);
      const Mxfp4Weight rtn = Mxfp4Weight::quantize(wt, {}, qo);
      expect_same_weight(mxfp4::quantize_gptq(wt, Hessian(k), {}, o), rtn);  // no samples
      expect_same_weight(mxfp4::quantize_gptq(wt, Hessian::from_values(k, diag), {}, o), rtn);
    }
  }
}

TEST(Gptq, ScalingTheHessianByAPowerOfTwoChangesNothing) {
  const Problem p = make_problem(200, 16, 128, 41);
  std::vector<double> scaled = p.h.values();
  for (double& v : scaled)
    v *= 4.0;
  const Mxfp4Weight a = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h);
  const Mxfp4Weight b =
      mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), Hessian::from_values(p.k, scaled));
  expect_same_weight(a, b);
}

TEST(Gptq, SameBytesWithAnyThreadCount) {
  const Problem p = make_problem(200, 40, 256, 43);
  const int before = mxfp4::num_threads();
  mxfp4::set_num_threads(1);
  Hessian h1(p.k);
  h1.add(matrix(p.x, p.s, p.k));
  const Mxfp4Weight one = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), h1);
  mxfp4::set_num_threads(3);
  Hessian h3(p.k);
  h3.add(matrix(p.x, p.s, p.k));
  const Mxfp4Weight three = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), h3);
  mxfp4::set_num_threads(before);
  EXPECT_EQ(h1.values(), h3.values());
  expect_same_weight(one, three);
}

TEST(Gptq, DeadBlocksAreRoundToNearestAndOutputsValid) {
  const std::int64_t s = 200, n = 12, k = 128;
  std::vector<float> x = correlated_activations(s, k, 51);
  for (std::int64_t r = 0; r < s; ++r) {
    for (std::int64_t c = 32; c < 64; ++c)
      x[static_cast<std::size_t>(r * k + c)] = 0.0f;  // block 1 never sees an input
  }
  Hessian h(k);
  h.add(matrix(x, s, k));
  const std::vector<float> w = random_normal_values(static_cast<std::size_t>(n * k), 52, 0.05f);
  const std::vector<float> bias = random_normal_values(static_cast<std::size_t>(n), 53);
  const Mxfp4Weight g = mxfp4::quantize_gptq(matrix(w, n, k), h, Tensor::from_vector(bias, {n}));
  const Mxfp4Weight r = Mxfp4Weight::quantize(matrix(w, n, k));
  ASSERT_TRUE(g.bias().has_value());
  EXPECT_EQ(g.bias()->data_as<float>()[3], bias[3]);
  EXPECT_EQ(g.out_features(), n);
  EXPECT_EQ(g.in_features(), k);
  const std::vector<std::uint8_t> gs = bytes(g.scales()), rs = bytes(r.scales());
  const std::vector<std::uint8_t> gb = bytes(g.blocks()), rb = bytes(r.blocks());
  for (std::int64_t row = 0; row < n; ++row) {
    EXPECT_EQ(gs[static_cast<std::size_t>(row * 4 + 1)], rs[static_cast<std::size_t>(row * 4 + 1)]);
    for (std::int64_t j = 16; j < 32; ++j)
      EXPECT_EQ(gb[static_cast<std::size_t>(row * 64 + j)],
                rb[static_cast<std::size_t>(row * 64 + j)]);
  }
  // Every scale is finite and within a few binades of the weights' (|w| ~ 0.05 here).
  for (std::uint8_t sc : gs) {
    EXPECT_NE(sc, mxfp4::kScaleNaN);
    EXPECT_GE(sc, 127 - 12);
    EXPECT_LE(sc, 127 - 3);
  }
  for (float v : dequantized(g))
    EXPECT_TRUE(std::isfinite(v));
}

TEST(Gptq, Errors) {
  const std::int64_t n = 4, k = 64;
  const std::vector<float> w = random_normal_values(static_cast<std::size_t>(n * k), 61);
  const Tensor wt = matrix(w, n, k);
  Hessian h(k);
  h.add(matrix(correlated_activations(100, k, 62), 100, k));

  expect_error<mxfp4::ShapeMismatch>([&] { mxfp4::quantize_gptq(wt, Hessian(32)); },
                                     "hessian is for K=32");
  expect_error<mxfp4::ShapeMismatch>(
      [&] {
        mxfp4::quantize_gptq(Tensor::zeros({4, 40}, DType::f32), Hessian(40));
      },
      "multiple of 32");
  expect_error<mxfp4::ShapeMismatch>(
      [&] {
        mxfp4::quantize_gptq(Tensor::zeros({2, 4, 64}, DType::f32), h);
      },
      "one matrix");
  expect_error<mxfp4::DTypeMismatch>(
      [&] {
        mxfp4::quantize_gptq(Tensor::zeros({4, 64}, DType::u8), h);
      },
      "f32, f16 or bf16");
  std::vector<float> bad = w;
  bad[2 * k + 7] = std::numeric_limits<float>::quiet_NaN();
  expect_error<mxfp4::NonFiniteValue>([&] { mxfp4::quantize_gptq(matrix(bad, n, k), h); },
                                      "NaN at row 2, column 7");
  GptqOptions o;
  o.damp = -0.1;
  expect_error<mxfp4::InvalidArgument>([&] { mxfp4::quantize_gptq(wt, h, {}, o); }, "damp");
  o.damp = std::numeric_limits<double>::quiet_NaN();
  expect_error<mxfp4::InvalidArgument>([&] { mxfp4::quantize_gptq(wt, h, {}, o); }, "damp");
  o.damp = 0.01;
  o.rule = static_cast<ScaleRule>(9);
  expect_error<mxfp4::InvalidArgument>([&] { mxfp4::quantize_gptq(wt, h, {}, o); }, "scale rule");
  expect_error<mxfp4::ShapeMismatch>(
      [&] { mxfp4::quantize_gptq(wt, h, Tensor::zeros({n + 1}, DType::f32)); }, "bias");

  // Not positive definite: an indefinite matrix (diagonal 1, a strong negative coupling).
  std::vector<double> indefinite(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i)
    indefinite[static_cast<std::size_t>(i * k + i)] = 1.0;
  indefinite[10 * k + 11] = indefinite[11 * k + 10] = 3.0;
  GptqOptions no_damp;
  no_damp.damp = 0.0;
  expect_error<mxfp4::InvalidArgument>(
      [&] { mxfp4::quantize_gptq(wt, Hessian::from_values(k, indefinite), {}, no_damp); },
      "not positive definite after dampening");
  // Singular without dampening (every sample the same direction), fine with it.
  std::vector<float> rank_one(static_cast<std::size_t>(10 * k), 1.0f);
  Hessian singular(k);
  singular.add(matrix(rank_one, 10, k));
  expect_error<mxfp4::InvalidArgument>([&] { mxfp4::quantize_gptq(wt, singular, {}, no_damp); },
                                       "not positive definite");
  EXPECT_NO_THROW(mxfp4::quantize_gptq(wt, singular));
  std::vector<double> negative(static_cast<std::size_t>(k * k), 0.0);
  negative[5 * k + 5] = -1.0;
  expect_error<mxfp4::InvalidArgument>(
      [&] { mxfp4::quantize_gptq(wt, Hessian::from_values(k, negative)); },
      "diagonal entry 5 is negative");

  // The Hessian's own checks.
  expect_error<mxfp4::InvalidArgument>([] { Hessian h0(0); }, "in_features");
  std::vector<double> nan_h(static_cast<std::size_t>(k * k), 0.0);
  nan_h[3 * k + 1] = std::numeric_limits<double>::infinity();
  expect_error<mxfp4::NonFiniteValue>([&] { Hessian::from_values(k, nan_h); },
                                      "+Inf at row 3, column 1");
  expect_error<mxfp4::ShapeMismatch>([&] { Hessian::from_values(k, std::vector<double>(5)); },
                                     "needs 4096 values");
  expect_error<mxfp4::ShapeMismatch>(
      [&] {
        Hessian::from_tensor(Tensor::zeros({64, 32}, DType::f32));
      },
      "square");
  expect_error<mxfp4::DTypeMismatch>(
      [&] {
        Hessian::from_tensor(Tensor::zeros({64, 64}, DType::bf16));
      },
      "must be f32");
  Hessian acc(k);
  expect_error<mxfp4::ShapeMismatch>([&] { acc.add(Tensor::zeros({3, 32}, DType::f32)); }, "K=64");
  std::vector<float> xs(static_cast<std::size_t>(2 * k), 1.0f);
  xs[k + 9] = -std::numeric_limits<float>::infinity();
  expect_error<mxfp4::NonFiniteValue>([&] { acc.add(matrix(xs, 2, k)); },
                                      "-Inf at row 1, column 9");
  EXPECT_EQ(acc.samples(), 0);  // unchanged by the refused batch
  EXPECT_EQ(acc.values(), std::vector<double>(static_cast<std::size_t>(k * k), 0.0));
  const Hessian round_trip = Hessian::from_tensor(h.to_tensor());
  EXPECT_EQ(round_trip.in_features(), k);
}

// ---- Refinement after GPTQ (GptqOptions::refine_sweeps) ----

// tr((Q - W) H' (Q - W)^T) with H' = reference_prepared(H, damp): what refinement lowers.
double hessian_error(const std::vector<float>& w, const std::vector<float>& q,
                     const std::vector<double>& hd, std::int64_t n, std::int64_t k) {
  double total = 0.0;
  std::vector<double> e(static_cast<std::size_t>(k));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      const auto i = static_cast<std::size_t>(r * k + c);
      e[static_cast<std::size_t>(c)] = static_cast<double>(q[i]) - static_cast<double>(w[i]);
    }
    for (std::int64_t a = 0; a < k; ++a) {
      for (std::int64_t b = 0; b < k; ++b) {
        total += e[static_cast<std::size_t>(a)] * hd[static_cast<std::size_t>(a * k + b)] *
                 e[static_cast<std::size_t>(b)];
      }
    }
  }
  return total;
}

TEST(GptqRefine, LowersTheErrorAndKeepsTheScales) {
  const Problem p = make_problem(400, 24, 128, 71);
  const std::vector<double> hd = reference_prepared(p.h.values(), p.k, 0.01);
  const Mxfp4Weight plain = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h);
  double previous = hessian_error(p.w, dequantized(plain), hd, p.n, p.k);
  const double start = previous;
  for (int sweeps : {1, 2, 5, 50}) {
    GptqOptions o;
    o.refine_sweeps = sweeps;
    const Mxfp4Weight r = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o);
    EXPECT_EQ(bytes(r.scales()), bytes(plain.scales())) << sweeps;
    const double e = hessian_error(p.w, dequantized(r), hd, p.n, p.k);
    EXPECT_LE(e, previous * (1.0 + 1e-12)) << sweeps;
    previous = e;
  }
  // On correlated inputs GPTQ's one left-to-right pass leaves room: clearly lower at the end,
  // and the output error on the calibration rows follows.
  EXPECT_LT(previous, 0.97 * start);
  GptqOptions o;
  o.refine_sweeps = 50;
  const std::vector<float> refined =
      dequantized(mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o));
  EXPECT_LT(output_error(p.x, p.w, refined, p.s, p.n, p.k),
            output_error(p.x, p.w, dequantized(plain), p.s, p.n, p.k));
}

TEST(GptqRefine, EndsInALocalMinimum) {
  // Converged (a sweep moved nothing): no single weight's move to a neighbouring E2M1 value
  // under its block's scale lowers the error, checked here by trying each one.
  const Problem p = make_problem(300, 6, 64, 73);
  const std::vector<double> hd = reference_prepared(p.h.values(), p.k, 0.01);
  GptqOptions o;
  o.refine_sweeps = 1000;
  const Mxfp4Weight r = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o);
  std::vector<float> q = dequantized(r);
  const double base = hessian_error(p.w, q, hd, p.n, p.k);
  const float grid[] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const auto* scales = r.scales().data_as<std::uint8_t>();
  for (std::int64_t i = 0; i < p.n * p.k; ++i) {
    const float s = mxfp4::e8m0_decode(scales[i / 32]);
    const float v = q[static_cast<std::size_t>(i)] / s;
    int m = 0;
    while (grid[m] != std::abs(v))
      ++m;
    std::vector<float> tries;
    const float sign = std::signbit(v) ? -1.0f : 1.0f;
    if (m == 0) {
      tries = {0.5f, -0.5f};
    } else {
      tries.push_back(sign * grid[m - 1]);
      if (m < 7) tries.push_back(sign * grid[m + 1]);
    }
    for (float t : tries) {
      std::vector<float> moved = q;
      moved[static_cast<std::size_t>(i)] = t * s;
      EXPECT_GE(hessian_error(p.w, moved, hd, p.n, p.k), base * (1.0 - 1e-12)) << i;
    }
  }
}

TEST(GptqRefine, DiagonalHessianStaysRoundToNearest) {
  // Each weight's error is then its own: round-to-nearest is already the best code.
  const std::int64_t n = 12, k = 96;
  const std::vector<float> w = random_normal_values(static_cast<std::size_t>(n * k), 75);
  std::vector<double> diag(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i)
    diag[static_cast<std::size_t>(i * k + i)] = 0.5 + static_cast<double>(i % 5);
  for (ScaleRule rule : {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse}) {
    mxfp4::QuantizeOptions qo;
    qo.rule = rule;
    GptqOptions o;
    o.rule = rule;
    o.refine_sweeps = 10;
    expect_same_weight(mxfp4::quantize_gptq(matrix(w, n, k), Hessian::from_values(k, diag), {}, o),
                       Mxfp4Weight::quantize(matrix(w, n, k), {}, qo));
  }
}

TEST(GptqRefine, SameBytesWithAnyThreadCountAndErrors) {
  const Problem p = make_problem(200, 40, 128, 77);
  GptqOptions o;
  o.refine_sweeps = 3;
  const int before = mxfp4::num_threads();
  mxfp4::set_num_threads(1);
  const Mxfp4Weight one = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o);
  mxfp4::set_num_threads(3);
  const Mxfp4Weight three = mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o);
  mxfp4::set_num_threads(before);
  expect_same_weight(one, three);
  for (int bad : {-1, 1001}) {
    o.refine_sweeps = bad;
    expect_error<mxfp4::InvalidArgument>(
        [&] { mxfp4::quantize_gptq(matrix(p.w, p.n, p.k), p.h, {}, o); }, "refine_sweeps");
  }
}

}  // namespace

// A stack of experts [E, N, K], each with the Hessian of its own inputs: byte for byte what
// quantizing each expert alone gives, bias kept; a count or shape that does not fit is refused,
// and a failing expert is named.
TEST(Gptq, StackedExpertsEachUseTheirOwnHessian) {
  const std::int64_t experts = 3, n = 5, k = 64;
  std::vector<float> w;
  std::vector<Hessian> hs;
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::vector<float> we = random_normal_values(static_cast<std::size_t>(n * k),
                                                       70 + static_cast<std::uint32_t>(e), 0.05f);
    w.insert(w.end(), we.begin(), we.end());
    Hessian h(k);
    h.add(matrix(correlated_activations(120, k, 80 + static_cast<std::uint32_t>(e)), 120, k));
    hs.push_back(std::move(h));
  }
  const Tensor stacked = Tensor::from_vector(w, {experts, n, k});
  const Tensor bias = Tensor::from_vector(
      random_normal_values(static_cast<std::size_t>(experts * n), 90), {experts, n});
  for (ScaleRule rule : kRules) {
    GptqOptions options;
    options.rule = rule;
    const Mxfp4Weight got = mxfp4::quantize_gptq(stacked, hs, bias, options);
    ASSERT_EQ(got.blocks().shape(), (mxfp4::Shape{experts, n, k / 2}));
    ASSERT_EQ(got.scales().shape(), (mxfp4::Shape{experts, n, k / 32}));
    ASSERT_TRUE(got.bias().has_value());
    EXPECT_EQ(std::memcmp(got.bias()->data(), bias.data(), bias.nbytes()), 0);
    for (std::int64_t e = 0; e < experts; ++e) {
      const Tensor we = Tensor::from_vector(
          std::vector<float>(w.begin() + e * n * k, w.begin() + (e + 1) * n * k), {n, k});
      const Mxfp4Weight one =
          mxfp4::quantize_gptq(we, hs[static_cast<std::size_t>(e)], std::nullopt, options);
      EXPECT_EQ(std::memcmp(got.blocks().data_as<std::uint8_t>() + e * n * (k / 2),
                            one.blocks().data(), one.blocks().nbytes()),
                0)
          << "expert " << e;
      EXPECT_EQ(std::memcmp(got.scales().data_as<std::uint8_t>() + e * n * (k / 32),
                            one.scales().data(), one.scales().nbytes()),
                0)
          << "expert " << e;
    }
    // Another expert's Hessian gives other bytes: each expert really used its own.
    std::vector<Hessian> swapped;
    swapped.push_back(hs[1]);
    swapped.push_back(hs[0]);
    swapped.push_back(hs[2]);
    const Mxfp4Weight other = mxfp4::quantize_gptq(stacked, swapped, std::nullopt, options);
    EXPECT_NE(std::memcmp(other.blocks().data(), got.blocks().data(), got.blocks().nbytes()), 0);
  }
  // One matrix with one Hessian is the single-matrix call.
  const Tensor first = stacked.slice_rows(0, 1).reshape({n, k});
  const Mxfp4Weight single = mxfp4::quantize_gptq(first, std::vector<Hessian>{hs[0]});
  const Mxfp4Weight direct = mxfp4::quantize_gptq(first, hs[0]);
  EXPECT_EQ(std::memcmp(single.blocks().data(), direct.blocks().data(), direct.blocks().nbytes()),
            0);

  expect_error<mxfp4::ShapeMismatch>(
      [&] {
        mxfp4::quantize_gptq(stacked, std::vector<Hessian>{hs[0], hs[1]});
      },
      "has 3 experts but 2 Hessians");
  expect_error<mxfp4::ShapeMismatch>(
      [&] {
        mxfp4::quantize_gptq(first, std::vector<Hessian>{hs[0], hs[1]});
      },
      "must be a stack of experts [E, N, K]");
  expect_error<mxfp4::ShapeMismatch>(
      [&] { mxfp4::quantize_gptq(stacked, hs, Tensor::zeros({experts * n}, DType::f32)); },
      "bias must be [3, 5]");
  std::vector<Hessian> bad = hs;
  bad[2] = Hessian(32);
  expect_error<mxfp4::ShapeMismatch>([&] { mxfp4::quantize_gptq(stacked, bad); },
                                     "quantize_gptq: expert 2: quantize_gptq: hessian is for K=32");
  std::vector<float> with_nan = w;
  with_nan[static_cast<std::size_t>(n * k + 3)] = std::nanf("");
  expect_error<mxfp4::NonFiniteValue>(
      [&] {
        mxfp4::quantize_gptq(Tensor::from_vector(with_nan, {experts, n, k}), hs);
      },
      "expert 1");
}

// The Hessians of a stack through a callback (what the C API and the Hessians file of
// `mxfp4 quantize` use): asked for once per expert, in order, after every per-call check; the
// same bytes as the std::vector overload; an error thrown by the callback names the expert; a
// per-call argument (damp) is reported once, not as an expert's error.
TEST(Gptq, StackedExpertsFromACallback) {
  const std::int64_t experts = 3, n = 4, k = 64;
  const Tensor stacked = Tensor::from_vector(
      random_normal_values(static_cast<std::size_t>(experts * n * k), 101, 0.1f), {experts, n, k});
  std::vector<Hessian> hs;
  for (std::int64_t e = 0; e < experts; ++e) {
    Hessian h(k);
    h.add(matrix(correlated_activations(90, k, 110 + static_cast<std::uint32_t>(e)), 90, k));
    hs.push_back(std::move(h));
  }
  std::vector<std::int64_t> asked;
  const mxfp4::detail::HessianOfExpert from_list = [&](std::int64_t e) -> const Hessian& {
    asked.push_back(e);
    return hs[static_cast<std::size_t>(e)];
  };
  const Mxfp4Weight got =
      mxfp4::detail::quantize_gptq_experts(stacked, experts, from_list, std::nullopt, {});
  EXPECT_EQ(asked, (std::vector<std::int64_t>{0, 1, 2}));
  const Mxfp4Weight want = mxfp4::quantize_gptq(stacked, hs);
  EXPECT_EQ(std::memcmp(got.blocks().data(), want.blocks().data(), want.blocks().nbytes()), 0);
  EXPECT_EQ(std::memcmp(got.scales().data(), want.scales().data(), want.scales().nbytes()), 0);

  asked.clear();
  GptqOptions bad_damp;
  bad_damp.damp = -1.0;
  expect_error<mxfp4::InvalidArgument>(
      [&] {
        mxfp4::detail::quantize_gptq_experts(stacked, experts, from_list, std::nullopt, bad_damp);
      },
      "quantize_gptq: damp must be finite and >= 0");
  EXPECT_TRUE(asked.empty());
  expect_error<mxfp4::ShapeMismatch>(
      [&] { mxfp4::detail::quantize_gptq_experts(stacked, 2, from_list, std::nullopt, {}); },
      "has 3 experts but 2 Hessians");
  EXPECT_TRUE(asked.empty());
  const mxfp4::detail::HessianOfExpert failing = [&](std::int64_t e) -> const Hessian& {
    if (e == 1) throw mxfp4::FormatError("no Hessian here");
    return hs[static_cast<std::size_t>(e)];
  };
  expect_error<mxfp4::FormatError>(
      [&] { mxfp4::detail::quantize_gptq_experts(stacked, experts, failing, std::nullopt, {}); },
      "quantize_gptq: expert 1: no Hessian here");
}
