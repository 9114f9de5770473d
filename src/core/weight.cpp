#include "mxfp4/weight.hpp"

#include <string>
#include <utility>

#include "core/checks.hpp"
#include "mxfp4/ops.hpp"

namespace mxfp4 {

using detail::describe;

namespace {

constexpr ScaleRule kAllRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even,
                                   ScaleRule::mse, ScaleRule::mistralrs};

}  // namespace

const char* scale_rule_name(ScaleRule rule) noexcept {
  switch (rule) {
    case ScaleRule::floor:
      return "floor";
    case ScaleRule::ceil:
      return "ceil";
    case ScaleRule::even:
      return "even";
    case ScaleRule::mse:
      return "mse";
    case ScaleRule::mistralrs:
      return "mistralrs";
  }
  return "?";
}

ScaleRule parse_scale_rule(std::string_view name) {
  for (ScaleRule r : kAllRules) {
    if (name == scale_rule_name(r)) return r;
  }
  throw InvalidArgument("unknown scale rule '" + std::string(name) +
                        "' (expected one of floor, ceil, even, mse, mistralrs)");
}

Mxfp4Weight Mxfp4Weight::from_parts(Tensor blocks, Tensor scales, std::optional<Tensor> bias) {
  const char* op = "Mxfp4Weight::from_parts";
  if (!blocks.defined() || !scales.defined()) {
    throw InvalidArgument(std::string(op) + ": blocks and scales must both be defined");
  }
  if (blocks.dtype() != DType::u8) {
    throw DTypeMismatch(std::string(op) + ": blocks must be u8, got " + describe("blocks", blocks));
  }
  if (scales.dtype() != DType::u8) {
    throw DTypeMismatch(std::string(op) + ": scales must be u8, got " + describe("scales", scales));
  }
  if (blocks.rank() != 2 && blocks.rank() != 3) {
    throw ShapeMismatch(std::string(op) + ": blocks must be [N, K/2] or [E, N, K/2], got " +
                        describe("blocks", blocks));
  }
  if (scales.rank() != blocks.rank()) {
    throw ShapeMismatch(std::string(op) + ": scales must have the rank of blocks (" +
                        std::to_string(blocks.rank()) + "), got " + describe("scales", scales) +
                        " with " + describe("blocks", blocks));
  }
  const bool stacked = blocks.rank() == 3;
  for (int i = 0; i < blocks.rank() - 1; ++i) {
    if (blocks.dim(i) != scales.dim(i)) {
      throw ShapeMismatch(std::string(op) + ": blocks and scales disagree in dim " +
                          std::to_string(i) + ": " + describe("blocks", blocks) + ", " +
                          describe("scales", scales));
    }
  }
  const std::int64_t blocks_per_row = scales.dim(-1);
  if (blocks_per_row < 1) {
    throw ShapeMismatch(std::string(op) + ": K must be at least 32, got " +
                        describe("scales", scales));
  }
  if (blocks.dim(-1) != blocks_per_row * kBlockBytes) {
    throw ShapeMismatch(std::string(op) + ": scales " + to_string(scales.shape()) +
                        " mean K=" + std::to_string(blocks_per_row * kBlockSize) +
                        ", so blocks' last dim must be " +
                        std::to_string(blocks_per_row * kBlockBytes) + "; got " +
                        describe("blocks", blocks));
  }
  if (stacked && blocks.dim(0) < 1) {
    throw ShapeMismatch(std::string(op) + ": a stack needs at least one expert, got " +
                        describe("blocks", blocks));
  }
  if (!(scales.device() == blocks.device())) {
    throw InvalidArgument(std::string(op) + ": blocks on " + to_string(blocks.device()) +
                          " but scales on " + to_string(scales.device()));
  }
  Mxfp4Weight w;
  w.stacked_ = stacked;
  w.num_experts_ = stacked ? blocks.dim(0) : 1;
  w.out_features_ = blocks.dim(-2);
  w.in_features_ = blocks_per_row * kBlockSize;
  if (bias) {
    const Tensor& b = *bias;
    if (!b.defined()) {
      throw InvalidArgument(std::string(op) + ": bias is given but undefined");
    }
    if (!is_floating(b.dtype())) {
      throw DTypeMismatch(std::string(op) + ": bias must be f32, f16 or bf16, got " +
                          describe("bias", b));
    }
    const Shape expected =
        stacked ? Shape{w.num_experts_, w.out_features_} : Shape{w.out_features_};
    if (b.shape() != expected) {
      throw ShapeMismatch(std::string(op) + ": bias must be " + to_string(expected) + " for " +
                          describe("blocks", blocks) + ", got " + describe("bias", b));
    }
    if (!(b.device() == blocks.device())) {
      throw InvalidArgument(std::string(op) + ": blocks on " + to_string(blocks.device()) +
                            " but bias on " + to_string(b.device()));
    }
  }
  w.blocks_ = std::move(blocks);
  w.scales_ = std::move(scales);
  w.bias_ = std::move(bias);
  return w;
}

Mxfp4Weight Mxfp4Weight::quantize(const Tensor& weight, std::optional<Tensor> bias,
                                  const QuantizeOptions& options) {
  QuantizedTensor q = mxfp4::quantize(weight, options);
  return from_parts(std::move(q.blocks), std::move(q.scales), std::move(bias));
}

Tensor Mxfp4Weight::dequantize(DType dtype) const {
  return mxfp4::dequantize(*this, dtype);
}

Mxfp4Weight Mxfp4Weight::to(Device device) const {
  if (!defined()) throw InvalidArgument("Mxfp4Weight::to: the weight is empty");
  std::optional<Tensor> bias;
  if (bias_) bias = bias_->to(device);
  return from_parts(blocks_.to(device), scales_.to(device), std::move(bias));
}

}  // namespace mxfp4
