// Block-wise Hadamard rotation along the last dimension, for quantizing rotated weights.
//
// A linear layer y = x W^T equals (x R)(W R)^T for any orthogonal R. With R block-diagonal, one
// normalized 32 x 32 Hadamard matrix H per 32-element block of K (the MXFP4 block), R = R^T =
// R^-1 and each rotated block mixes only the 32 values that share one E8M0 scale. The weight is
// quantized as W R, the activations are rotated at run time (x R, O(K log 32) per row), and
//   linear(rotate_blocks(x), quantize_gptq(rotate_blocks(W), H of rotate_blocks(x)))  ~  x W^T.
// For GPTQ the Hessian is that of the rotated inputs: accumulate it from rotate_blocks(x). This is
// the rotation of "MR-GPTQ" (Egiazarian et al. 2025, "Bridging the Gap Between Promise and
// Performance for Microscaling FP4 Quantization"). Whether it pays depends on the weights and the
// method: on all-MiniLM-L6-v2 it makes round-to-nearest worse and GPTQ better
// (docs/minilm-embeddings.md).
//
// H is Sylvester's: H[i][j] = (-1)^popcount(i & j) / sqrt(32), symmetric and its own inverse,
// so rotate_blocks(rotate_blocks(x)) == x up to rounding.
#pragma once

#include <cstdint>

#include "mxfp4/tensor.hpp"

namespace mxfp4 {

// Elements per rotated block: the MXFP4 block.
inline constexpr std::int64_t kRotationBlock = 32;

// x f32/f16/bf16 [..., K] on the CPU, K a positive multiple of 32 -> x R in x's dtype and shape:
// each 32-element block of every row multiplied by H (a fast Walsh-Hadamard transform). The
// arithmetic is f64 and each result is rounded once to f32 (for f32 inputs, within one unit in
// the last place of the exact x R); f16 and bf16 results are that f32 rounded to nearest even.
// NaN or Inf in a block spreads to the whole block, as in a dense product. x with zero rows
// gives an empty result.
// Throws InvalidArgument (x undefined), Unsupported (x not in CPU memory), DTypeMismatch (x not
// f32/f16/bf16), ShapeMismatch (x of rank 0, last dim not a positive multiple of 32).
Tensor rotate_blocks(const Tensor& x);

// The same into `out` (same shape and dtype as x, CPU). out may be x itself (in place); any
// other overlap of the two is refused (InvalidArgument). Throws ShapeMismatch / DTypeMismatch
// when out's shape or dtype differs from x's, plus rotate_blocks' errors.
void rotate_blocks_into(const Tensor& x, Tensor& out);

}  // namespace mxfp4
