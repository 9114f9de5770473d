// Quantizes a small weight, runs a linear layer and checks it against a dense f64 product.
#include <cmath>
#include <cstdio>
#include <vector>

#include <mxfp4/mxfp4.hpp>

int main() {
  const int n = 8, k = 64;
  std::vector<float> w(n * k), x(k);
  for (int i = 0; i < n * k; ++i)
    w[i] = std::sin(0.37f * static_cast<float>(i));
  for (int i = 0; i < k; ++i)
    x[i] = std::cos(0.11f * static_cast<float>(i));

  auto weight = mxfp4::Mxfp4Weight::quantize(mxfp4::Tensor::from_vector(w, {n, k}));
  mxfp4::Tensor y = mxfp4::linear(mxfp4::Tensor::from_vector(x, {1, k}), weight);
  mxfp4::Tensor wq = weight.dequantize();

  double worst = 0;
  for (int r = 0; r < n; ++r) {
    double ref = 0;
    for (int c = 0; c < k; ++c)
      ref += double(wq.data_as<float>()[r * k + c]) * x[c];
    worst = std::fmax(worst, std::fabs(ref - y.data_as<float>()[r]));
  }
  try {
    mxfp4::Mxfp4Weight::quantize(mxfp4::Tensor::zeros({n, 33}, mxfp4::DType::f32));
    std::puts("consumer: expected an error for K=33");
    return 1;
  } catch (const mxfp4::ShapeMismatch& e) {
    std::printf("consumer: K=33 refused as expected: %s\n", e.what());
  }
  std::printf("consumer: mxfp4 %s, linear [1,%d]x[%d,%d]^T, max |error| vs f64 = %.3g\n",
              mxfp4::version_string(), k, n, k, worst);
  return worst < 1e-4 ? 0 : 1;
}
