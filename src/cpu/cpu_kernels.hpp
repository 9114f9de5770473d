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

// ---- int8 activations (RunOptions::precision = int8_activations) ----------------------------
//
// An activation row of K elements, quantized once per call by quantize_int8_row (int8_rows.hpp),
// is four sections of S = int8_section_bytes(K) bytes (K/2 rounded up to 64, zero padded, so
// that 64-byte loads never need a mask), int8_row_bytes(K) = 4S in all, 64-byte aligned when the
// row is:
//   [0, S)      int8 q of the even elements: byte j is element 2j (it meets the low nibble of
//               weight byte j)
//   [S, 2S)     int8 q of the odd elements: byte j is element 2j + 1 (the high nibble)
//   [2S, 3S)    int32 offset_fix[K/8]: -12 * the sum of lane L's eight q values (elements
//               8L .. 8L+7), which undoes the +12 that makes the weights unsigned for
//               vpdpbusd / vpmaddubsw
//   [3S, 4S)    f32 lane_scale[K/8]: the scale of lane L's block (L / 4): max |x| / 127
//               rounded to f32, 0 for a zero block, NaN for a block with NaN or Inf
// A "lane" is 8 elements: 4 bytes of the even half and the same 4 bytes of the odd half.
//
// Each output element (definition; every table matches it bit for bit):
//   v[L]   = sum over the lane's 8 elements of q * (2 * E2M1 value)       exact int32
//   s[L]   = lane_scale[L] * 2^(e8m0 - 128)                               one f32 product
//   acc[l] = 0 for l < 16; for L = 0, 1, ..., K/8 - 1: acc[L % 16] = fma(float(v[L]), s[L],
//            acc[L % 16])
//   out    = ((acc[l] + acc[l+8]) then + [l+4] then + [l+2] then + [l+1]) for l = 0 (a tree)
// The kernels write out without bias; the backend adds the bias and rounds to x's dtype.
constexpr std::int64_t int8_section_bytes(std::int64_t k) {
  return (k / 2 + 63) / 64 * 64;
}
constexpr std::int64_t int8_row_bytes(std::int64_t k) {
  return 4 * int8_section_bytes(k);
}

struct Int8RowBatch {
  const std::int8_t* const* x_rows;  // `count` quantized rows (layout above)
  float* const* out_rows;            // `count` pointers; out_rows[i][n - n0] for n in [n0, n1)
  std::int64_t count;
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
  // The int8-activation product (layout and definition above) for columns [n0, n1); its value
  // depends only on the quantized rows and the weight, never on the split or the row count.
  void (*matmul_rows_int8)(const Int8RowBatch& rows, const detail::WeightArgs& w,
                           std::int64_t expert, std::int64_t n0, std::int64_t n1);
};

// Each is defined in its own translation unit; avx2 and avx512 exist only on x86-64 builds,
// neon only on AArch64 builds.
const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();
const Kernels& neon_kernels();

// The vectorized int8-activation products (x86-64 builds): AVX2 (kernels_int8_avx2.cpp, in the
// avx2 table) and AVX-512 VNNI (kernels_int8_avx512vnni.cpp; the avx512 table uses it where
// avx512vnni_usable(), cpu_features.hpp, else the AVX2 one).
void matmul_rows_int8_avx2(const Int8RowBatch& rows, const detail::WeightArgs& w,
                           std::int64_t expert, std::int64_t n0, std::int64_t n1);
void matmul_rows_int8_avx512vnni(const Int8RowBatch& rows, const detail::WeightArgs& w,
                                 std::int64_t expert, std::int64_t n0, std::int64_t n1);

}  // namespace mxfp4::cpu
