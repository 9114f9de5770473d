// Data-aware quantization: GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization
// for Generative Pre-trained Transformers") adapted to MXFP4.
//
// Round-to-nearest (Mxfp4Weight::quantize) minimises each weight's own error. GPTQ minimises the
// error of the layer's output on calibration activations X [samples, K]: it quantizes one input
// column at a time and moves that column's error onto the columns not yet quantized, weighted by
// how the inputs correlate (the K x K matrix H = X^T X). For MXFP4 each row's 32-column block
// first gets its E8M0 scale, chosen by the scale rule from the block's weights as the earlier
// columns' errors have updated them; then its 32 columns are rounded to the nearest E2M1 code
// under that scale, one by one, each passing its error on.
//
// The result is an ordinary Mxfp4Weight: same layout, same readers and kernels. Use it when a
// model's accuracy after round-to-nearest is not enough and a few thousand representative input
// rows (tokens) per layer are at hand (see README.md and docs/minilm-embeddings.md).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "mxfp4/format.hpp"
#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4 {

// The sum of x^T x over calibration activations x (each row one sample): the K x K matrix GPTQ
// needs, accumulated in f64 so that activations can be streamed in batches. The scale of H does
// not matter to quantize_gptq (a sum and a mean give the same weight).
class Hessian {
 public:
  // An all-zero accumulator for K = in_features inputs (1 <= K <= 65536).
  explicit Hessian(std::int64_t in_features);
  // From a K x K f32 tensor computed elsewhere (e.g. X^T X). Throws ShapeMismatch for a shape
  // other than [K, K], DTypeMismatch for a dtype other than f32, Unsupported for device memory,
  // NonFiniteValue naming the first NaN/Inf entry. Only its symmetric part is used.
  static Hessian from_tensor(const Tensor& hessian);
  // From K * K row-major values; the same checks as from_tensor.
  static Hessian from_values(std::int64_t in_features, std::vector<double> values);

  // Adds x^T x for activations f32/f16/bf16 [..., K] on the CPU (every row of the flattened
  // [rows, K] is one sample). Throws ShapeMismatch when the last dim is not K and NonFiniteValue
  // naming the first NaN/Inf element (H is then unchanged).
  void add(const Tensor& activations);

  std::int64_t in_features() const { return k_; }
  // Rows added by add() so far.
  std::int64_t samples() const { return samples_; }
  // The K * K values, row-major and symmetric.
  const std::vector<double>& values() const { return h_; }
  // The matrix as an f32 tensor [K, K].
  Tensor to_tensor() const;

 private:
  std::int64_t k_ = 0;
  std::int64_t samples_ = 0;
  std::vector<double> h_;
};

struct GptqOptions {
  // How each 32-element block's scale is chosen (from the error-updated weights of the block).
  ScaleRule rule = kDefaultScaleRule;
  // Dampening: damp * mean(diag H) is added to H's diagonal before it is inverted (GPTQ's
  // percdamp). Finite and >= 0; more damping means less error correction.
  double damp = 0.01;
  // After GPTQ, up to this many sweeps (0 to 1000) of coordinate descent on the codes, each
  // block's scale kept: every weight in turn moves to a neighbouring E2M1 value (one step up or
  // down in magnitude, or from zero to +-0.5) when that lowers the layer's output error
  // tr((Q - W) H' (Q - W)^T), H' being H dampened as above; a sweep that moves nothing ends it.
  // GPTQ fixes each column once, left to right; this lets later columns' codes pull earlier ones
  // back. The error never rises; each sweep costs O(N K) plus O(K) per move, on top of O(N K^2)
  // once. 0 (default): plain GPTQ.
  int refine_sweeps = 0;
};

// Quantizes weight f32/f16/bf16 [N, K] (CPU, K a multiple of 32, finite) with GPTQ error
// correction under the Hessian H of the layer's inputs; bias (optional, [N]) is kept as given.
// Columns no calibration sample reached (H_ii == 0) are rounded to nearest and exchange no error
// with the others. With a diagonal H no error moves between columns and the result is exactly
// Mxfp4Weight::quantize's. Cost O(K^3 + N K^2) time, O(K^2) memory.
// Throws ShapeMismatch (weight not [N, K], K not a multiple of 32, H not K x K), DTypeMismatch,
// Unsupported (device memory), NonFiniteValue (NaN/Inf in weight), InvalidArgument (damp negative
// or not finite, refine_sweeps out of range, a negative diagonal entry of H, H not positive
// definite after dampening).
Mxfp4Weight quantize_gptq(const Tensor& weight, const Hessian& hessian,
                          std::optional<Tensor> bias = {}, const GptqOptions& options = {});

// Mixture-of-experts weights: weight [E, N, K] (or [N, K] with one Hessian), expert e quantized
// with hessians[e], the Hessian of the inputs routed to it; bias optional [E, N]. The result is
// one stacked weight, byte for byte what quantizing each expert alone and stacking gives.
// Throws ShapeMismatch when hessians.size() is not E (or bias not [E, N]), plus the errors of the
// single-matrix quantize_gptq, naming the expert.
Mxfp4Weight quantize_gptq(const Tensor& weight, const std::vector<Hessian>& hessians,
                          std::optional<Tensor> bias = {}, const GptqOptions& options = {});

}  // namespace mxfp4
