// Operations on MXFP4 weights. Each validates its arguments (throwing the typed errors of
// error.hpp with the argument's name, the expected and the actual shape or dtype) and then runs
// the kernel the backend table holds for the tensors' device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4 {

// How an operation runs: for CUDA tensors, the stream it is enqueued on. linear and
// gather_linear on CUDA tensors never synchronize with the host and never allocate in their
// `_into` forms, so a caller can capture them in a CUDA graph.
// Scratch memory a caller lends an operation (device memory on the weight's device).
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

// The arithmetic of linear and gather_linear.
// - exact (default): f32 arithmetic on exactly decoded weights; x is used as given.
// - int8_activations: faster where it pays (CPU decode, small M): each 32-element block of an x
//   row is rounded to int8 with its own f32 scale (max |x| / 127, round to nearest), multiplied
//   by the weight's E2M1 codes (as the integers 2 * value) in exact integer arithmetic, and the
//   block sums are scaled and added in f32. The error against exact is bounded by the rounding
//   of x: |y - y_exact| <= sum over blocks of (max|x_block| / 254) * sum |w| over the block, plus
//   f32 rounding (docs/cpu-int8.md has the derivation and measurements). A NaN or Inf in a block
//   of x makes that row's outputs NaN.
//   CPU only: on CUDA tensors the option is ignored (exact arithmetic).
enum class Precision : std::uint8_t { exact = 0, int8_activations = 1 };

struct RunOptions {
  Stream stream;
  // CUDA gather_linear: scratch for sorting tokens by expert, of at least
  // gather_linear_workspace_bytes(...) bytes. CUDA linear on Hopper: scratch for stream-K's
  // partial sums (some bf16 batches of 129 tokens or more), linear_workspace_bytes() bytes (17.3
  // MB on 132 SMs); a smaller one is not used. Without it, calls that need scratch take
  // stream-ordered memory (cudaMallocAsync / cudaFreeAsync on `stream`), which a CUDA graph can
  // capture too. Other operations need none.
  Workspace workspace = {};
  // linear and gather_linear: exact, or activations rounded to int8 (see Precision). Other
  // operations ignore it.
  Precision precision = Precision::exact;
};

// Packed parts of a quantized tensor.
struct QuantizedTensor {
  Tensor blocks;  // u8 [.., N, K/2]
  Tensor scales;  // u8 [.., N, K/32]
};

// weight f32/f16/bf16 [N, K] or [E, N, K] -> blocks and scales.
QuantizedTensor quantize(const Tensor& weight, const QuantizeOptions& options = {},
                         const RunOptions& run = {});
// Writes into caller-provided blocks and scales of the right shapes (u8).
void quantize_into(const Tensor& weight, Tensor& blocks, Tensor& scales,
                   const QuantizeOptions& options = {}, const RunOptions& run = {});

// weight -> [.., N, K] in dtype (f32, f16 or bf16). Exact in f32 and bf16 (up to f32's range:
// scale 254 with |E2M1| >= 2 is +/-Inf); f16 rounds to nearest even, overflowing to +/-Inf.
// The same values from either BlockLayout (off CUDA, a BlockLayout::gpu weight's blocks are
// converted back to a temporary standard copy first).
Tensor dequantize(const Mxfp4Weight& weight, DType dtype = DType::f32, const RunOptions& run = {});
void dequantize_into(const Mxfp4Weight& weight, Tensor& out, const RunOptions& run = {});

// Dense linear layer: x [..., K] -> [..., N] = x W^T + bias, for a dense (not stacked) weight.
// x is f32, f16 or bf16; the output has x's dtype and leading dims; accumulation in f32 or
// better. x with zero rows gives an empty output. A BlockLayout::gpu weight runs on CUDA only
// (Unsupported elsewhere; the same for gather_linear).
Tensor linear(const Tensor& x, const Mxfp4Weight& weight, const RunOptions& run = {});
void linear_into(const Tensor& x, const Mxfp4Weight& weight, Tensor& out,
                 const RunOptions& run = {});

// Mixture of experts: for each token t and slot s, y[t, s] = x_row W[e]^T + bias[e] with
// e = indices[t, s], for a stacked weight [E, N, K].
// - x [T, K]: every slot of token t uses row x[t].
// - x [T, topk, K]: slot (t, s) uses row x[t, s]. (x [T, 1, K] with topk > 1 is refused: pass
//   x [T, K] to broadcast.)
// indices [T, topk] u32, i32 or i64; every id must lie in [0, E) (IndexOutOfRange otherwise).
// Output [T, topk, N] in x's dtype.
//
// On CUDA tensors the ids are read on the GPU, so an out-of-range id cannot throw at the call:
// it is recorded on the device, its output row is filled with NaN, and the next
// mxfp4::synchronize() throws IndexOutOfRange naming it. No id is ever used to read memory.
Tensor gather_linear(const Tensor& x, const Tensor& indices, const Mxfp4Weight& weight,
                     const RunOptions& run = {});
void gather_linear_into(const Tensor& x, const Tensor& indices, const Mxfp4Weight& weight,
                        Tensor& out, const RunOptions& run = {});

// gather_linear with its output in expert order, for fused pipelines (an activation, the next
// layer's grouped input, a weighted sum over the slots) that would otherwise undo the scatter:
// - out [T * topk, N] in x's dtype: row p holds pair perm[p]'s result, y[t, s] with
//   t * topk + s = perm[p];
// - perm i32 [T * topk]: a permutation of the pairs, grouped by expert in ascending id;
// - offsets i32 [E + 1]: expert e's rows are [offsets[e], offsets[e + 1]); offsets[0] = 0 and
//   offsets[E] is the number of pairs with a valid id (T * topk unless some are out of range).
// Within an expert the CPU keeps the pairs in ascending order; CUDA may order them differently
// from call to call (perm says how; every row's value is the same). T * topk must be below 2^31.
// Out-of-range ids: as gather_linear (the CPU throws before writing; on CUDA their pairs take
// rows [offsets[E], T * topk), filled with NaN, and the next mxfp4::synchronize() throws).
// RunOptions as for gather_linear, workspace included; on CUDA, batches of at most 64 pairs with
// f32 x or buffers not 16-byte aligned sort in memory of the call where the workspace is smaller
// than they need (gather_linear_workspace_bytes promises them none).
struct ExpertOrderOutput {
  Tensor out;
  Tensor perm;
  Tensor offsets;
};
ExpertOrderOutput gather_linear_expert_order(const Tensor& x, const Tensor& indices,
                                             const Mxfp4Weight& weight, const RunOptions& run = {});
void gather_linear_expert_order_into(const Tensor& x, const Tensor& indices,
                                     const Mxfp4Weight& weight, Tensor& out, Tensor& perm,
                                     Tensor& offsets, const RunOptions& run = {});
// Bytes of RunOptions::workspace a CUDA gather_linear of `tokens` x `topk` pairs over `experts`
// experts uses (0 for small batches, which route inside the kernel). With the weight's `k`
// (> 0), also room to stage 16-bit x rows in expert order (2 bytes x k per pair), which makes the
// Hopper GEMM for prefill faster; a workspace of the smaller size still works.
std::size_t gather_linear_workspace_bytes(std::int64_t tokens, std::int64_t topk,
                                          std::int64_t experts, std::int64_t k = 0);
// Bytes of RunOptions::workspace with which a CUDA linear on the current device never allocates:
// 131076 per SM where the Hopper GEMM runs (stream-K's partial sums, for some bf16 batches of
// more than 128 tokens), 0 elsewhere, without a CUDA device, and in builds without CUDA.
std::size_t linear_workspace_bytes();

}  // namespace mxfp4
