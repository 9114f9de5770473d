// The error of RunOptions::precision = int8_activations against the exact path (docs/cpu-int8.md),
// on random data shaped like transformer activations, next to the error the MXFP4 weight itself
// brings (exact path against f64 products with the f32 weight before quantization).
//
// For each shape and activation distribution: 64 rows of x, 512 output columns of a weight
// quantized (default rule) from N(0, 1) f32 values; with y the exact MXFP4 output, y8 the int8
// one, and yw the f64 product with the unquantized weight:
//   int8 rel RMS  = sqrt(sum (y8 - y)^2 / sum y^2)        int8 max = max |y8 - y| / rms(y)
//   weight rel RMS = sqrt(sum (y - yw)^2 / sum yw^2)       (MXFP4's own error, for scale)
// Distributions: gaussian N(0, 1); laplace (heavier tails); outliers: N(0, 1) with 1% of the
// channels (the same for every row) scaled by 30, as in LLM hidden states.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/mxfp4.hpp"

namespace {

using mxfp4::DType;
using mxfp4::Tensor;

std::vector<float> activations(const std::string& kind, std::int64_t rows, std::int64_t k,
                               std::mt19937& g) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::exponential_distribution<float> expo(1.0f);
  std::bernoulli_distribution coin(0.5);
  std::vector<bool> outlier(static_cast<std::size_t>(k), false);
  std::uniform_int_distribution<std::int64_t> channel(0, k - 1);
  for (std::int64_t i = 0; i < k / 100; ++i)
    outlier[static_cast<std::size_t>(channel(g))] = true;
  std::vector<float> x(static_cast<std::size_t>(rows * k));
  for (std::int64_t i = 0; i < rows * k; ++i) {
    float v = normal(g);
    if (kind == "laplace") v = (coin(g) ? 1.0f : -1.0f) * expo(g);
    if (kind == "outliers" && outlier[static_cast<std::size_t>(i % k)]) v *= 30.0f;
    x[static_cast<std::size_t>(i)] = v;
  }
  return x;
}

}  // namespace

int main() {
  constexpr std::int64_t kRows = 64;
  constexpr std::int64_t kCols = 512;
  std::printf("%-10s %-10s %14s %14s %16s\n", "K", "x", "int8 rel RMS", "int8 max/rms",
              "weight rel RMS");
  for (const std::int64_t k : {std::int64_t{2880}, std::int64_t{4096}, std::int64_t{8192}}) {
    std::mt19937 g(static_cast<unsigned>(k));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> wf(static_cast<std::size_t>(kCols * k));
    for (float& v : wf)
      v = normal(g);
    const mxfp4::Mxfp4Weight w = mxfp4::Mxfp4Weight::quantize(Tensor::from_vector(wf, {kCols, k}));
    for (const char* kind : {"gaussian", "laplace", "outliers"}) {
      const std::vector<float> xv = activations(kind, kRows, k, g);
      const Tensor x = Tensor::from_vector(xv, {kRows, k});
      mxfp4::RunOptions int8;
      int8.precision = mxfp4::Precision::int8_activations;
      const Tensor y = mxfp4::linear(x, w);
      const Tensor y8 = mxfp4::linear(x, w, int8);
      double err2 = 0, ref2 = 0, max_err = 0, werr2 = 0, wref2 = 0;
      for (std::int64_t i = 0; i < kRows; ++i) {
        for (std::int64_t c = 0; c < kCols; ++c) {
          const double exact = y.data_as<float>()[i * kCols + c];
          const double approx = y8.data_as<float>()[i * kCols + c];
          double yw = 0;
          for (std::int64_t j = 0; j < k; ++j)
            yw += static_cast<double>(xv[static_cast<std::size_t>(i * k + j)]) *
                  wf[static_cast<std::size_t>(c * k + j)];
          err2 += (approx - exact) * (approx - exact);
          ref2 += exact * exact;
          max_err = std::max(max_err, std::fabs(approx - exact));
          werr2 += (exact - yw) * (exact - yw);
          wref2 += yw * yw;
        }
      }
      const double rms = std::sqrt(ref2 / static_cast<double>(kRows * kCols));
      std::printf("%-10lld %-10s %14.3e %14.3e %16.3e\n", static_cast<long long>(k), kind,
                  std::sqrt(err2 / ref2), max_err / rms, std::sqrt(werr2 / wref2));
    }
  }
  return 0;
}
