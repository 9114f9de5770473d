#include "mxfp4/weight.hpp"

#include <cstdint>
#include <string>
#include <utility>

#include "core/checks.hpp"
#include "core/gpu_block_layout.hpp"
#include "mxfp4/ops.hpp"

namespace mxfp4 {

using detail::describe;

namespace {

constexpr ScaleRule kAllRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even,
                                   ScaleRule::mse, ScaleRule::mistralrs};

constexpr BlockLayout kAllLayouts[] = {BlockLayout::standard, BlockLayout::gpu};

bool known_layout(BlockLayout layout) {
  return layout == BlockLayout::standard || layout == BlockLayout::gpu;
}

void require_known_layout(const char* op, BlockLayout layout) {
  if (!known_layout(layout)) {
    throw InvalidArgument(std::string(op) + ": unknown BlockLayout " +
                          std::to_string(static_cast<int>(layout)) + " (standard 0 or gpu 1)");
  }
}

// `t` on the host: itself when it is there, else a copy.
Tensor on_host(const Tensor& t) {
  return t.device() == Device::cpu() ? t : t.to(Device::cpu());
}

// BlockLayout::gpu decodes a block's scale s as bf16 2^(s - 1), which holds only for s <= 128
// (core/gpu_block_layout.hpp): refuse a weight with a larger scale, naming the first one.
void require_gpu_layout_scales(const char* op, const Tensor& scales) {
  const Tensor host = on_host(scales);
  const auto* s = static_cast<const std::uint8_t*>(host.data());
  const std::int64_t per_row = scales.dim(-1);
  const std::int64_t rows = scales.dim(-2);
  for (std::int64_t i = 0; i < host.numel(); ++i) {
    if (static_cast<std::uint32_t>(s[i]) <= detail::kGpuLayoutMaxScale) continue;
    const std::int64_t row = i / per_row;
    std::string where;
    if (scales.rank() == 3) where = "expert " + std::to_string(row / rows) + ", ";
    where += "row " + std::to_string(row % rows) + ", block " + std::to_string(i % per_row);
    throw InvalidArgument(std::string(op) + ": BlockLayout::gpu needs every scale at most " +
                          std::to_string(detail::kGpuLayoutMaxScale) + " (2^1), but " + where +
                          " has scale " + std::to_string(s[i]) +
                          (s[i] == 0xFF ? " (NaN)" : " (2^" + std::to_string(s[i] - 127) + ")"));
  }
}

// `blocks` (host memory, whole 16-byte blocks) converted from the other layout to `to`, in a new
// host tensor.
Tensor convert_blocks(const Tensor& blocks, BlockLayout to) {
  Tensor out = Tensor::empty(blocks.shape(), DType::u8);
  const auto* in = static_cast<const std::uint8_t*>(blocks.data());
  auto* dst = static_cast<std::uint8_t*>(out.data());
  const std::int64_t count = blocks.numel() / kBlockBytes;
  for (std::int64_t b = 0; b < count; ++b) {
    if (to == BlockLayout::gpu) {
      detail::gpu_bytes_from_standard(in + b * kBlockBytes, dst + b * kBlockBytes);
    } else {
      detail::standard_bytes_from_gpu(in + b * kBlockBytes, dst + b * kBlockBytes);
    }
  }
  return out;
}

}  // namespace

const char* block_layout_name(BlockLayout layout) noexcept {
  switch (layout) {
    case BlockLayout::standard:
      return "standard";
    case BlockLayout::gpu:
      return "gpu";
  }
  return "?";
}

BlockLayout parse_block_layout(std::string_view name) {
  for (BlockLayout l : kAllLayouts) {
    if (name == block_layout_name(l)) return l;
  }
  throw InvalidArgument("unknown block layout '" + std::string(name) +
                        "' (expected one of standard, gpu)");
}

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

Mxfp4Weight Mxfp4Weight::from_parts(Tensor blocks, Tensor scales, std::optional<Tensor> bias,
                                    BlockLayout layout) {
  const char* op = "Mxfp4Weight::from_parts";
  require_known_layout(op, layout);
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
  if (layout == BlockLayout::gpu) require_gpu_layout_scales(op, scales);
  w.blocks_ = std::move(blocks);
  w.scales_ = std::move(scales);
  w.bias_ = std::move(bias);
  w.layout_ = layout;
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
  // The parts were validated when this weight was made: only the layout tag is carried over, so
  // that a GPU-layout weight's scales are not checked again.
  Mxfp4Weight w = from_parts(blocks_.to(device), scales_.to(device), std::move(bias));
  w.layout_ = layout_;
  return w;
}

Mxfp4Weight Mxfp4Weight::with_layout(BlockLayout layout) const {
  const char* op = "Mxfp4Weight::with_layout";
  if (!defined()) throw InvalidArgument(std::string(op) + ": the weight is empty");
  require_known_layout(op, layout);
  if (layout == layout_) return *this;
  if (layout == BlockLayout::gpu) require_gpu_layout_scales(op, scales_);
  Tensor blocks = convert_blocks(on_host(blocks_), layout);
  Mxfp4Weight w = *this;
  w.blocks_ = device() == Device::cpu() ? std::move(blocks) : blocks.to(device());
  w.layout_ = layout;
  return w;
}

}  // namespace mxfp4
