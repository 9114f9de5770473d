// The CPU kernels, one table per instruction set. Each table lives in its own translation unit
// compiled with that ISA's flags (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp,
// kernels_neon.cpp on AArch64);
// src/cpu/backend.cpp picks one table once, at start, from CPUID and XGETBV (or a forced lower
// level), splits the work over the thread pool and calls these single-threaded entry points.
//
// Contract for every table:
// - quantize_rows is bit-identical to reference::quantize (same bytes, same first non-finite
//   index) for every scale rule;
// - dequantize_rows is bit-identical to reference::dequantize;
// - matmul_rows computes with f32 arithmetic on exactly decoded weights (no rounding of x or W
//   to a narrower type), and each output element's value depends only on the inputs, K, and
//   `count_hint` (the total number of rows of the call, which may select a small-M or large-M
//   code path) -- never on [n0, n1), on which subset of rows a call gets, or on the thread
//   count. Results are then identical whatever the number of threads.
#pragma once

#include <cstdint>

#include "core/kernel_args.hpp"

namespace mxfp4::cpu {

// The values are those of mxfp4::CpuIsa. avx2 and avx512 exist on x86-64, neon on AArch64.
enum class Isa : std::uint8_t { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

// A batch of activation rows, each multiplied by the same weight matrix (one expert).
struct RowBatch {
  const void* const* x_rows;  // `count` pointers to K elements of `dtype`
  void* const* out_rows;  // `count` pointers to N elements of `dtype` (columns [n0, n1) written)
  std::int64_t count;
  std::int64_t count_hint;  // rows in the whole call (>= count): selects the code path
  DType dtype;              // of x and out: f32, f16 or bf16
};

struct Kernels {
  Isa isa;
  const char* name;  // "scalar", "avx2", "avx512", "neon"
  // Rows [r0, r1) of a.weight -> a.blocks / a.scales; returns the flat index of the first
  // non-finite element in those rows, or -1.
  std::int64_t (*quantize_rows)(const detail::QuantizeArgs& a, std::int64_t r0, std::int64_t r1);
  // Rows [r0, r1) of the packed weight -> a.out.
  void (*dequantize_rows)(const detail::DequantizeArgs& a, std::int64_t r0, std::int64_t r1);
  // out_rows[i][n] = sum_k x_rows[i][k] * W[expert, n, k] + bias[expert, n], n in [n0, n1).
  void (*matmul_rows)(const RowBatch& rows, const detail::WeightArgs& w, std::int64_t expert,
                      std::int64_t n0, std::int64_t n1);
};

// Each is defined in its own translation unit; avx2 and avx512 exist only on x86-64 builds,
// neon only on AArch64 builds.
const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();
const Kernels& neon_kernels();

}  // namespace mxfp4::cpu
