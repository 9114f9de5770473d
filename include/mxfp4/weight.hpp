// An MXFP4 weight: packed E2M1 codes, E8M0 scales and an optional bias, either one dense matrix
// [N, K] or a stack of E expert matrices [E, N, K] (stored as blocks [.., N, K/2] u8 and scales
// [.., N, K/32] u8; the blocks in the adjacent-pair layout of FORMATS.md section 1 unless the
// weight was re-laid out for the CUDA kernels, see BlockLayout).
#pragma once

#include <cstdint>
#include <optional>

#include "mxfp4/format.hpp"
#include "mxfp4/tensor.hpp"

namespace mxfp4 {

// The scale rule quantize uses unless told otherwise: the lowest measured error
// (docs/scale-rules.md).
inline constexpr ScaleRule kDefaultScaleRule = ScaleRule::mse;

// "floor", "ceil", "even", "mse", "mistralrs".
const char* scale_rule_name(ScaleRule rule) noexcept;
// Parses the names above; throws InvalidArgument naming the accepted ones.
ScaleRule parse_scale_rule(std::string_view name);

// What quantize does with NaN or +/-Inf in the input.
enum class NonFinitePolicy : std::uint8_t {
  error = 0,     // throw NonFiniteValue naming the first offending element (the default)
  nan_block = 1  // encode the block with scale 0xFF, which decodes as NaN (torchao, triton)
};

struct QuantizeOptions {
  ScaleRule rule = kDefaultScaleRule;
  NonFinitePolicy non_finite = NonFinitePolicy::error;
};

// How a weight's blocks hold their codes. Every 16-byte block keeps its place and its 32 codes
// either way; only the bits inside a block move.
enum class BlockLayout : std::uint8_t {
  // FORMATS.md section 1: code 2j in the low nibble of byte j, 2j + 1 in the high one. What every
  // file format stores and every backend reads; what quantize and the loaders produce.
  standard = 0,
  // The CUDA kernels' own layout (src/core/gpu_block_layout.hpp): each block as four 32-bit words
  // that decode to bf16/f16 pairs in a few instructions. Optional, made once by with_layout; the
  // CUDA kernels read both layouts, the CPU backend refuses this one (linear and gather_linear
  // throw Unsupported; dequantize converts it back first). Needs every scale byte at most 128,
  // i.e. 2^1 (|values| <= 12), which real weights' scales are far below. Files never hold it:
  // every writer writes the standard bytes.
  gpu = 1
};

// "standard", "gpu".
const char* block_layout_name(BlockLayout layout) noexcept;
// Parses the names above; throws InvalidArgument naming the accepted ones.
BlockLayout parse_block_layout(std::string_view name);

class Mxfp4Weight {
 public:
  Mxfp4Weight() = default;  // empty; defined() is false

  // From existing parts. blocks u8 [N, K/2] or [E, N, K/2], in `layout`; scales u8 of the same
  // rank, [.., N, K/32]; bias f32/f16/bf16 [N] or [E, N]. Validates every shape and dtype (and,
  // for BlockLayout::gpu, every scale: InvalidArgument naming the first above 128, read through
  // a host copy for parts on a GPU); the parts are shared, not copied.
  static Mxfp4Weight from_parts(Tensor blocks, Tensor scales, std::optional<Tensor> bias = {},
                                BlockLayout layout = BlockLayout::standard);

  // Quantizes weight f32/f16/bf16 [N, K] or [E, N, K] (K a multiple of 32).
  static Mxfp4Weight quantize(const Tensor& weight, std::optional<Tensor> bias = {},
                              const QuantizeOptions& options = {});

  bool defined() const { return blocks_.defined(); }
  // True for a stack of experts [E, N, K]; false for a dense [N, K] matrix.
  bool stacked() const { return stacked_; }
  // E for a stack; 1 for a dense matrix.
  std::int64_t num_experts() const { return num_experts_; }
  std::int64_t out_features() const { return out_features_; }  // N
  std::int64_t in_features() const { return in_features_; }    // K
  Device device() const { return blocks_.device(); }
  // The layout of blocks() (standard unless made with with_layout or from_parts' layout).
  BlockLayout layout() const { return layout_; }

  const Tensor& blocks() const { return blocks_; }
  const Tensor& scales() const { return scales_; }
  const std::optional<Tensor>& bias() const { return bias_; }

  // The full weight, [N, K] or [E, N, K], in f32, f16 or bf16.
  Tensor dequantize(DType dtype = DType::f32) const;

  // A copy on `device`: blocks, scales and bias, each as Tensor::to copies it (the call waits for
  // the copies), in the same layout. InvalidArgument for an empty weight.
  Mxfp4Weight to(Device device) const;

  // This weight with its blocks in `layout`: *this itself (sharing everything) when they already
  // are, else a weight with new blocks, converted block by block, on the same device, sharing
  // scales and bias (a GPU weight's blocks go through a host copy; the call waits for the copies).
  // InvalidArgument for an empty weight, an unknown layout, or - to BlockLayout::gpu - a scale
  // above 128 (the message names the expert, row, block and scale).
  Mxfp4Weight with_layout(BlockLayout layout) const;

 private:
  Tensor blocks_;
  Tensor scales_;
  std::optional<Tensor> bias_;
  BlockLayout layout_ = BlockLayout::standard;
  bool stacked_ = false;
  std::int64_t num_experts_ = 0;
  std::int64_t out_features_ = 0;
  std::int64_t in_features_ = 0;
};

}  // namespace mxfp4
