// Device helpers shared by the tensor-core kernels (sm80_linear.cu, sm80_gemm.cu, moe.cu): E2M1
// decoding into 16-bit MMA operands, E8M0 scales, mma.sync, cp.async, and the mapping from a
// tile of tokens to the rows of x and of the output (dense, or grouped by expert for the
// mixture-of-experts path).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/gpu_block_layout.hpp"
#include "cuda/common.cuh"
#include "mxfp4/format.hpp"

namespace mxfp4::cuda {

__device__ __forceinline__ float load_bias(const void* bias, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::f16:
      return f16_to_f32(static_cast<const std::uint16_t*>(bias)[i]);
    case DType::bf16:
      return bf16_to_f32(static_cast<const std::uint16_t*>(bias)[i]);
    default:
      return static_cast<const float*>(bias)[i];
  }
}

// Four E2M1 codes (the low four nibbles of v, lowest first) -> two pairs of 16-bit values: p0
// holds codes 0 (low half) and 1, p1 codes 2 and 3. prmt reads only a selector's low 16 bits, so
// the rest of v is ignored and callers need not mask it. Eight integer operations for four codes:
// - the magnitude's high (and, for bf16, low) byte comes from a byte table indexed with prmt;
// - the sign: prmt in sign-replicate mode (selector bit 3 = the code's sign bit) turns a 0x80
//   source byte into 0xFF for negative codes and leaves 0x80 for positive ones, so bit 6 of each
//   result byte is the sign; shifted to bit 7 it is OR-ed into the high byte.
// PTX prmt in its default mode: a selector nibble with bit 3 set yields the selected byte's sign
// replicated (__byte_perm ignores that bit, so it cannot express this).
__device__ __forceinline__ std::uint32_t prmt_sign_mode(std::uint32_t a, std::uint32_t b,
                                                        std::uint32_t sel) {
  std::uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

template <typename T>
__device__ __forceinline__ void decode4(std::uint32_t v, std::uint32_t& p0, std::uint32_t& p1) {
  const std::uint32_t sel = v & 0x7777u;
  const std::uint32_t sign = (prmt_sign_mode(0x80808080u, 0x80808080u, v) << 1) & 0x80808080u;
  if constexpr (std::is_same_v<T, __half>) {
    // f16 of 0, .5, 1, 1.5, 2, 3, 4, 6: high bytes 00 38 3C 3E 40 42 44 46, low bytes 0.
    const std::uint32_t hi = __byte_perm(0x3E3C3800u, 0x46444240u, sel) | sign;
    p0 = __byte_perm(hi, 0u, 0x1404);
    p1 = __byte_perm(hi, 0u, 0x3424);
  } else {
    // bf16: high bytes 00 3F 3F 3F 40 40 40 40, low bytes 00 00 80 C0 00 40 80 C0.
    const std::uint32_t hi = __byte_perm(0x3F3F3F00u, 0x40404040u, sel) | sign;
    const std::uint32_t lo = __byte_perm(0xC0800000u, 0xC0804000u, sel);
    p0 = __byte_perm(lo, hi, 0x5140);
    p1 = __byte_perm(lo, hi, 0x7362);
  }
}

// decode4<__nv_bfloat16> with its byte tables in registers the caller holds for a whole loop.
// Each table is ORed with threadIdx.x >> 16 (zero: blocks have at most 1024 threads), which
// ptxas cannot fold: as constants, it re-created them from uniform registers before each use
// (~25 instructions per k-tile in the wgmma GEMM's loop, 13% of it).
struct Bf16Tables {
  std::uint32_t sign, hi, lo;
};
__device__ __forceinline__ Bf16Tables bf16_tables() {
  const std::uint32_t zero = threadIdx.x >> 16;
  return {0x80808080u | zero, 0x3F3F3F00u | zero, 0xC0800000u | zero};
}
__device__ __forceinline__ void decode4_bf16(std::uint32_t v, const Bf16Tables& t,
                                             std::uint32_t& p0, std::uint32_t& p1) {
  const std::uint32_t sel = v & 0x7777u;
  const std::uint32_t sign = (prmt_sign_mode(t.sign, 0x80808080u, v) << 1) & 0x80808080u;
  const std::uint32_t hi = __byte_perm(t.hi, 0x40404040u, sel) | sign;
  const std::uint32_t lo = __byte_perm(t.lo, 0xC0804000u, sel);
  p0 = __byte_perm(lo, hi, 0x5140);
  p1 = __byte_perm(lo, hi, 0x7362);
}

// A block's 16 standard bytes (FORMATS.md section 1) from its bytes in memory, in the GPU layout
// if `gpu`. Byte loads: for the CUDA-core paths, which take misaligned buffers.
__device__ __forceinline__ void load_standard_block(const std::uint8_t* __restrict__ p, bool gpu,
                                                    std::uint8_t (&bytes)[kBlockBytes]) {
#pragma unroll
  for (int j = 0; j < kBlockBytes; ++j)
    bytes[j] = p[j];
  if (gpu) detail::standard_bytes_from_gpu(bytes, bytes);
}

// The exact CUDA-core dot product of one weight row (its packed blocks, in the GPU layout if
// `gpu`, and scales) with one row of x, by a whole warp: lanes stride over the blocks, each block
// summed in f32 and scaled, then a fixed butterfly reduction (every lane gets the sum). For f32
// x and misaligned buffers.
template <typename T>
__device__ __forceinline__ float warp_row_dot(const T* __restrict__ xr,
                                              const std::uint8_t* __restrict__ w,
                                              const std::uint8_t* __restrict__ s, std::int64_t nblk,
                                              int lane, bool gpu) {
  float acc = 0.0f;
  for (std::int64_t b = lane; b < nblk; b += 32) {
    std::uint8_t bytes[kBlockBytes];
    load_standard_block(w + b * kBlockBytes, gpu, bytes);
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < kBlockBytes; ++j) {
      part = fmaf(to_float(xr[b * kBlockSize + 2 * j]), e2m1_decode(bytes[j] & 0xF), part);
      part = fmaf(to_float(xr[b * kBlockSize + 2 * j + 1]), e2m1_decode(bytes[j] >> 4), part);
    }
    acc = fmaf(part, e8m0_decode(s[b]), acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    acc += __shfl_xor_sync(0xFFFFFFFFu, acc, off);
  return acc;
}

// E8M0 byte -> f32 without branches: 2^(s-127) is s << 23 for s in 1..254; bytes 0 (2^-127,
// subnormal) and 255 (NaN) both also need mantissa bit 22.
__device__ __forceinline__ float scale_value(std::uint32_t s) {
  const std::uint32_t special = ((s + 1u) & 0xFEu) == 0u ? 0x00400000u : 0u;
  return __uint_as_float((s << 23) | special);
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4],
                                          std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Transposes 4 words across the 4 lanes of a quad: lane t starts with words 0..3 of block t and
// ends with word t of blocks 0..3 (two butterfly rounds of shuffles).
__device__ __forceinline__ void quad_transpose(uint4& v, int t) {
  const bool r = t & 1;
  std::uint32_t b0 = __shfl_xor_sync(0xFFFFFFFFu, r ? v.x : v.y, 1);
  std::uint32_t b1 = __shfl_xor_sync(0xFFFFFFFFu, r ? v.z : v.w, 1);
  if (r) {
    v.x = b0;
    v.z = b1;
  } else {
    v.y = b0;
    v.w = b1;
  }
  const bool s = t & 2;
  b0 = __shfl_xor_sync(0xFFFFFFFFu, s ? v.x : v.z, 2);
  b1 = __shfl_xor_sync(0xFFFFFFFFu, s ? v.y : v.w, 2);
  if (s) {
    v.x = b0;
    v.y = b1;
  } else {
    v.z = b0;
    v.w = b1;
  }
}

__device__ __forceinline__ std::uint32_t word(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// E8M0 byte -> the same power of two as a 16-bit T, replicated in both halves of a word (the
// second operand of a packed multiply). bf16 has f32's exponent range, so every scale is exact:
// s << 7 for s in 1..254, 2^-127 is the subnormal 0x0040 and 0xFF the NaN 0x7FC0.
__device__ __forceinline__ std::uint32_t bf16_scale_pair(std::uint32_t s) {
  const std::uint32_t special = ((s + 1u) & 0xFEu) == 0u ? 0x0040u : 0u;
  const std::uint32_t bits = ((s << 7) | special) & 0xFFFFu;
  return bits | (bits << 16);
}

// Packed bf16 multiply (exact here: an E2M1 value times a power of two that bf16 holds), as
// a * b + (-0), since mul.bf16x2 needs sm_90 and fma.bf16x2 only sm_80; adding -0 keeps the
// sign of a zero product.
__device__ __forceinline__ std::uint32_t bf16x2_mul(std::uint32_t a, std::uint32_t b) {
  std::uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}

// Two f16 (a word) -> bf16 pairs hi and lo with hi + lo equal to them exactly: hi rounded to
// nearest, lo the (exact) rest; lo is 0 for an infinity (whose rest would be NaN).
__device__ __forceinline__ void split_f16x2(std::uint32_t v, std::uint32_t& hi, std::uint32_t& lo) {
  __half2 h;
  memcpy(&h, &v, 4);
  const float2 f = __half22float2(h);
  const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
  const float2 bf = __bfloat1622float2(b);
  const float r0 = isinf(f.x) ? 0.0f : f.x - bf.x;
  const float r1 = isinf(f.y) ? 0.0f : f.y - bf.y;
  const __nv_bfloat162 l = __floats2bfloat162_rn(r0, r1);
  memcpy(&hi, &b, 4);
  memcpy(&lo, &l, 4);
}

// Packed f16 multiply, exact where the products are f16 values (detail::f16_prescale_ok).
__device__ __forceinline__ std::uint32_t f16x2_mul(std::uint32_t a, std::uint32_t b) {
  std::uint32_t r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// Slot s of a GPU-layout word as T values, exact (detail::gpu_slot_f16 / gpu_slot_bf16 lifted by
// 2^14 / 2^126 in a packed multiply, which takes their subnormals): for MMAs whose block sums
// are scaled afterwards in f32.
template <typename T>
__device__ __forceinline__ std::uint32_t gpu_slot_lift(std::uint32_t w, int s) {
  if constexpr (std::is_same_v<T, __half>) {
    return f16x2_mul(detail::gpu_slot_f16(w, s), 0x74007400u);
  } else {
    return bf16x2_mul(detail::gpu_slot_bf16(w, s), 0x7E807E80u);
  }
}

// 16-byte asynchronous copy global -> shared; with src_bytes = 0 the destination is zero-filled
// and nothing is read.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Which rows of x and of the output a tile of tokens covers. Dense: tile i holds rows
// [i * tile, ...) of x and out. Grouped (mixture of experts): the (token, slot) pairs are sorted
// by expert into `perm` and a tile list names each tile's expert, first position and count
// (moe.cu); the grid may be larger than *tile_total, and spare CTAs exit. Pair p reads x row p
// (x [T, topk, K]) or p / topk (x [T, K]) and writes output row p.
struct IndexError;

// The x row pair p reads: x [T, topk, K] has a row per pair, x [T, K] one per token.
__device__ __forceinline__ std::int64_t pair_x_row(std::int64_t pair, int topk, bool x_per_slot) {
  return x_per_slot ? pair : pair / topk;
}

// gather_linear_expert_order's sort, written out by a small batch's routing in the CTA
// (route_in_cta; null: the scatter): position -> pair, and each expert's first position.
struct SortExport {
  std::int32_t* perm = nullptr;
  std::int32_t* offsets = nullptr;
};

struct TokenRows {
  // (The fields are ordered without padding: 128 bytes, as before the output's own permutation
  // was added; at 160 bytes two of the 256-token wgmma kernels spilled, ptxas -v, session 24.)
  const std::int32_t* perm = nullptr;  // null: dense (or routed in the CTA, see route.cuh)
  // The output row of each position: out_perm[p], or p where null (dense, and grouped results
  // written in expert order, gather_linear_expert_order); else perm, the pairs' rows.
  const std::int32_t* out_perm = nullptr;
  const int4* tile_list = nullptr;  // {expert, first position, count, x_first1} per tile
  const int* tile_total = nullptr;  // number of valid entries of tile_list
  // A second class of tiles of 16 tokens, computed in the same launch as tile_list's tiles of 8
  // (sm80_linear.cu), and the most entries its list can have.
  const int4* tile_list16 = nullptr;
  const int* tile_total16 = nullptr;
  std::int64_t rows = 0;  // rows of x (dense: also the number of tokens)
  // Small batches (route.cuh): each CTA sorts these route_pairs ids itself; perm then points to
  // the CTA's shared copy.
  const void* route_ids = nullptr;
  // Staged x: tiles of experts whose pairs read a contiguous run of x's rows, in order, are not
  // staged but read x_source ([source_rows, k], the caller's x) in place (Tile::x_first1;
  // moe.cu). Null: every tile reads the staged rows.
  const void* x_source = nullptr;
  std::int64_t source_rows = 0;
  IndexError* error = nullptr;  // where out-of-range ids are recorded
  int tile_bound16 = 0;
  int experts = 1;
  int topk = 1;
  int route_pairs = 0;
  int route_groups = 1;    // tiles a CTA computes at once, at most (sm80_linear.cu)
  int route_min_ctas = 0;  // CTAs that should get tiles, where fewer per CTA allow it
  // The wgmma GEMM's TMA loaders (sm90_gemm.cu): the token rows of each box of x and of
  // x_source, set per launch.
  int x_box_rows = 0;
  int source_box_rows = 0;
  DType route_dtype = DType::i32;
  bool x_per_slot = true;
  bool route_sixteens = true;  // experts with more than 8 pairs get tiles of 16, not 8
  bool x_by_position = false;  // grouped: x staged in expert order, row p at position p

  struct Tile {
    int expert;
    std::int64_t first;  // position of the tile's first pair
    int count;           // pairs in the tile (0: nothing to do)
    // Grouped tiles (moe.cu): 1 + the x row of the tile's first pair where its expert's pairs
    // read consecutive x rows, else 0. (No default: shared-memory arrays of tiles need a trivial
    // type; a tile initialized without it gets 0.)
    int x_first1;
  };

  __device__ __forceinline__ Tile tile(std::int64_t index, int tile_tokens) const {
    if (tile_list != nullptr) {
      if (index >= *tile_total) return {0, 0, 0};
      const int4 v = tile_list[index];
      return {v.x, v.y, v.z, v.w};
    }
    const std::int64_t first = index * tile_tokens;
    const std::int64_t left = rows - first;
    return {0, first, static_cast<int>(left < tile_tokens ? (left > 0 ? left : 0) : tile_tokens)};
  }
  // The pair at a position.
  __device__ __forceinline__ std::int64_t pair(std::int64_t position) const {
    return perm == nullptr ? position : perm[position];
  }
  // The output row of a position.
  __device__ __forceinline__ std::int64_t out_row(std::int64_t position) const {
    return out_perm == nullptr ? position : out_perm[position];
  }
  __device__ __forceinline__ std::int64_t x_row(std::int64_t pair_index) const {
    return pair_x_row(pair_index, topk, x_per_slot);
  }
  // The x row the tile position reads.
  __device__ __forceinline__ std::int64_t x_row_at(std::int64_t position) const {
    return x_by_position ? position : x_row(pair(position));
  }
};
static_assert(sizeof(TokenRows) == 128, "see the note on TokenRows' fields");

}  // namespace mxfp4::cuda
