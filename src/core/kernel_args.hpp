// Arguments of the kernels a backend provides. ops.cpp validates everything first: shapes agree,
// dtypes are allowed, pointers are on the backend's device, expert ids are in range. Kernels
// trust these structs and never allocate on behalf of the caller.
#pragma once

#include <cstdint>

#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::detail {

struct QuantizeArgs {
  const void* weight;  // [rows, k] in weight_dtype (f32, f16, bf16)
  DType weight_dtype;
  std::int64_t rows;
  std::int64_t k;        // multiple of 32
  std::uint8_t* blocks;  // [rows, k / 2]
  std::uint8_t* scales;  // [rows, k / 32]
  ScaleRule rule;
  void* stream;  // cudaStream_t for CUDA kernels; ignored on the CPU
};

struct DequantizeArgs {
  const std::uint8_t* blocks;  // [rows, k / 2]
  const std::uint8_t* scales;  // [rows, k / 32]
  std::int64_t rows;
  std::int64_t k;
  void* out;  // [rows, k] in out_dtype (f32, f16, bf16)
  DType out_dtype;
  void* stream;  // cudaStream_t for CUDA kernels; ignored on the CPU
};

// A weight as kernels see it: `experts` stacked [n, k] matrices (1 for a dense one).
struct WeightArgs {
  const std::uint8_t* blocks;  // [experts, n, k / 2]
  const std::uint8_t* scales;  // [experts, n, k / 32]
  const void* bias;            // [experts, n] in bias_dtype, or null
  DType bias_dtype;
  std::int64_t experts;
  std::int64_t n;
  std::int64_t k;
};

struct LinearArgs {
  const void* x;  // [m, k] in x_dtype
  DType x_dtype;
  std::int64_t m;
  WeightArgs w;  // experts == 1
  void* out;     // [m, n] in x_dtype
  void* stream;  // cudaStream_t for CUDA kernels; ignored on the CPU
};

struct GatherLinearArgs {
  const void* x;  // [tokens, k] or, when x_per_slot, [tokens, topk, k]; in x_dtype
  DType x_dtype;
  bool x_per_slot;
  std::int64_t tokens;
  std::int64_t topk;
  const void* indices;  // [tokens, topk] in index_dtype (u32, i32, i64), each in [0, experts)
  DType index_dtype;
  WeightArgs w;
  void* out;     // [tokens, topk, n] in x_dtype
  void* stream;  // cudaStream_t for CUDA kernels; ignored on the CPU
};

// The kernels of one backend, chosen once; a weight layout and its kernels never disagree.
// A null entry means the backend cannot run that operation (the call throws Unsupported).
struct Backend {
  const char* name;
  // Returns the flat index of the first NaN/Inf element of the weight (whose block was coded
  // with scale 0xFF), or -1 when every element is finite.
  std::int64_t (*quantize)(const QuantizeArgs&);
  void (*dequantize)(const DequantizeArgs&);
  void (*linear)(const LinearArgs&);
  void (*gather_linear)(const GatherLinearArgs&);
};

}  // namespace mxfp4::detail
