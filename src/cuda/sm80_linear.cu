// Dense MXFP4 linear layer on NVIDIA GPUs from sm_80 on: y[m, n] = sum_k x[m, k] W[n, k] + b[n].
//
// bf16/f16 activations run on the tensor cores with mma.sync m16n8k16. A warp owns 16 weight
// rows and 8 * NT tokens. The weight is the MMA's A operand, so a 16-row tile is filled even
// when there is one token (decode). The MMA's reduction order over k is free as long as A and
// B agree, so we permute k inside each 32-element block such that lane (g, t) holds elements
// 8t..8t+7 of the block: its A fragment is one 4-byte word of packed codes per row, and its B
// fragment one 16-byte load of x. Each block is multiplied on its own (two MMAs) and its f32
// partial sum scaled by the block's E8M0 scale in f32, so E2M1 values are fed to the tensor
// cores exactly in either 16-bit type and no scale can overflow or flush a 16-bit operand.
// The warps of a CTA split K; partial sums are reduced through shared memory in a fixed order
// (deterministic results). No allocation, no host synchronization.
//
// f32 activations (and any misaligned input) take an exact CUDA-core path.
#include <cstdint>

#include "cuda/backend.hpp"
#include "cuda/common.cuh"
#include "mxfp4/format.hpp"

namespace mxfp4::cuda {

namespace {

constexpr int kWarps = 8;  // warps per CTA, splitting K

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

// Four E2M1 codes (the nibbles of v, lowest first) -> two pairs of 16-bit values: p0 holds codes
// 0 (low half) and 1, p1 codes 2 and 3. Eight integer operations for four codes:
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

// What a lane loads for one step of 8 blocks: for rows a (g) and b (g + 8), blocks b0 + t and
// b0 + 4 + t (16 bytes each), and those blocks' scales packed as bytes [a0, a1, b0, b1].
struct Step {
  uint4 wa[2], wb[2];
  std::uint32_t scales;
};

__device__ __forceinline__ Step load_step(const std::uint8_t* __restrict__ wa_row,
                                          const std::uint8_t* __restrict__ wb_row,
                                          const std::uint8_t* __restrict__ sa_row,
                                          const std::uint8_t* __restrict__ sb_row, int b0, int t,
                                          int nblk) {
  Step st;
  std::uint32_t packed = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int blk = b0 + 4 * h + t;
    if (blk < nblk) {
      st.wa[h] = __ldg(reinterpret_cast<const uint4*>(wa_row + blk * kBlockBytes));
      st.wb[h] = __ldg(reinterpret_cast<const uint4*>(wb_row + blk * kBlockBytes));
      packed |= (static_cast<std::uint32_t>(__ldg(sa_row + blk)) << (8 * h)) |
                (static_cast<std::uint32_t>(__ldg(sb_row + blk)) << (16 + 8 * h));
    } else {
      st.wa[h] = st.wb[h] = make_uint4(0, 0, 0, 0);
      packed |= 0x7F7F7F7Fu & (0xFFu << (8 * h) | 0xFFu << (16 + 8 * h));
    }
  }
  st.scales = packed;
  return st;
}

// Register caps chosen so that no variant spills: 3 CTAs per SM for decode (NT = 1), 2 above.
template <typename T, int NT>
__global__ void __launch_bounds__(kWarps * 32, NT == 1 ? 4 : 2)
    linear_mma_kernel(const T* __restrict__ x, int m, const std::uint8_t* __restrict__ blocks,
                      const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                      DType bias_dtype, T* __restrict__ out, int n, int k) {
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row0 = static_cast<int>(blockIdx.x) * 16;
  const int tok0 = static_cast<int>(blockIdx.y) * 8 * NT;
  const int nblk = k / kBlockSize;

  // Rows past n and tokens past m read row n-1 / token m-1 (in bounds) and are never stored.
  const int ra = min(row0 + g, n - 1);
  const int rb = min(row0 + g + 8, n - 1);
  const std::uint8_t* wa_row = blocks + std::int64_t{ra} * (k / 2);
  const std::uint8_t* wb_row = blocks + std::int64_t{rb} * (k / 2);
  const std::uint8_t* sa_row = scales + std::int64_t{ra} * nblk;
  const std::uint8_t* sb_row = scales + std::int64_t{rb} * nblk;
  // Lane (g, t) reads x[tok0 + 8 nt + g][32 blk + 8t .. +8) for each n-tile nt.
  const T* x_lane = x + (std::int64_t{tok0} + g) * k + 8 * t;
  // 8 tokens further: 8 * k 16-bit values = k uint4.
  const std::int64_t x_tile_stride = k;
  const int tokens_left = m - tok0 - g;  // n-tile nt is valid for this lane when 8 nt < this

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

  constexpr int kStep = 8;  // blocks per warp step
  int b0 = warp * kStep;
  Step next = load_step(wa_row, wb_row, sa_row, sb_row, b0, t, nblk);
  for (; b0 < nblk; b0 += kWarps * kStep) {
    Step cur = next;
    // Issue the next step's loads before computing on this one: bytes in flight hide latency.
    if (b0 + kWarps * kStep < nblk) {
      next = load_step(wa_row, wb_row, sa_row, sb_row, b0 + kWarps * kStep, t, nblk);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      quad_transpose(cur.wa[h], t);
      quad_transpose(cur.wb[h], t);
    }
    // This step's x for the lane: block b0 + i starts 4 * i uint4 further; one base per n-tile.
    const int blocks_left = nblk - b0;
    const uint4* xs = reinterpret_cast<const uint4*>(x_lane + std::int64_t{b0} * kBlockSize);
    // Scales of block j (of each half) for rows a and b, from the quad lane that loaded them.
    std::uint32_t sc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      sc[j] = __shfl_sync(0xFFFFFFFFu, cur.scales, (lane & ~3) | j);
      // Blocks past the end hold zero codes and scale 1 and meet zero x: no branch needed.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = 4 * h + j;  // block b0 + i
        const float fa = scale_value((sc[j] >> (8 * h)) & 0xFFu);
        const float fb = scale_value((sc[j] >> (16 + 8 * h)) & 0xFFu);
        const std::uint32_t wa = word(cur.wa[h], j);
        const std::uint32_t wb = word(cur.wb[h], j);
        std::uint32_t a0[4], a1[4];  // A fragments of the block's two k16 steps
        decode4<T>(wa & 0xFFFFu, a0[0], a0[2]);
        decode4<T>(wb & 0xFFFFu, a0[1], a0[3]);
        decode4<T>(wa >> 16, a1[0], a1[2]);
        decode4<T>(wb >> 16, a1[1], a1[3]);
        const bool in_k = i < blocks_left;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          uint4 xv = make_uint4(0, 0, 0, 0);
          if (8 * nt < tokens_left && in_k) xv = __ldg(xs + nt * x_tile_stride + 4 * i);
          float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          mma_16816<T>(part, a0, xv.x, xv.y);
          mma_16816<T>(part, a1, xv.z, xv.w);
          acc[nt][0] = fmaf(part[0], fa, acc[nt][0]);
          acc[nt][1] = fmaf(part[1], fa, acc[nt][1]);
          acc[nt][2] = fmaf(part[2], fb, acc[nt][2]);
          acc[nt][3] = fmaf(part[3], fb, acc[nt][3]);
        }
      }
    }
  }

  __shared__ float partial[kWarps][NT * 4][32];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      partial[warp][nt * 4 + i][lane] = acc[nt][i];
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < NT * 4 * 32; idx += kWarps * 32) {
    const int frag = idx >> 5;
    const int l = idx & 31;
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
      s += partial[w][frag][l];
    const int nt = frag >> 2;
    const int i = frag & 3;
    const int row = row0 + (l >> 2) + (i >= 2 ? 8 : 0);
    const int token = tok0 + nt * 8 + 2 * (l & 3) + (i & 1);
    if (row < n && token < m) {
      if (bias != nullptr) s += load_bias(bias, bias_dtype, row);
      out[std::int64_t{token} * n + row] = from_float<T>(s);
    }
  }
}

// Exact CUDA-core path: one warp per (token, row), lanes stride over the row's blocks, a fixed
// butterfly reduction.
template <typename T>
__global__ void __launch_bounds__(256)
    linear_simple_kernel(const T* __restrict__ x, std::int64_t m,
                         const std::uint8_t* __restrict__ blocks,
                         const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                         DType bias_dtype, T* __restrict__ out, std::int64_t n, std::int64_t k) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (item >= m * n) return;
  const std::int64_t token = item / n;
  const std::int64_t row = item % n;
  const std::int64_t nblk = k / kBlockSize;
  const std::uint8_t* w = blocks + row * (k / 2);
  const T* xr = x + token * k;
  float acc = 0.0f;
  for (std::int64_t b = lane; b < nblk; b += 32) {
    const float s = e8m0_decode(scales[row * nblk + b]);
    float part = 0.0f;
    for (int j = 0; j < kBlockBytes; ++j) {
      const std::uint8_t byte = w[b * kBlockBytes + j];
      part = fmaf(to_float(xr[b * kBlockSize + 2 * j]), e2m1_decode(byte & 0xF), part);
      part = fmaf(to_float(xr[b * kBlockSize + 2 * j + 1]), e2m1_decode(byte >> 4), part);
    }
    acc = fmaf(part, s, acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    acc += __shfl_xor_sync(0xFFFFFFFFu, acc, off);
  if (lane == 0) {
    if (bias != nullptr) acc += load_bias(bias, bias_dtype, row);
    out[token * n + row] = from_float<T>(acc);
  }
}

bool aligned(const void* p, std::uintptr_t bytes) {
  return (reinterpret_cast<std::uintptr_t>(p) & (bytes - 1)) == 0;
}

template <typename T, int NT>
void launch_mma(const detail::LinearArgs& a, cudaStream_t stream) {
  const int n = static_cast<int>(a.w.n);
  const int k = static_cast<int>(a.w.k);
  const std::int64_t tokens_per_cta = 8 * NT;
  // grid.y is limited to 65535: walk the tokens in slices of that many CTAs.
  const std::int64_t max_tokens = tokens_per_cta * 65535;
  for (std::int64_t first = 0; first < a.m; first += max_tokens) {
    const std::int64_t count = std::min<std::int64_t>(max_tokens, a.m - first);
    const dim3 grid(static_cast<unsigned>((n + 15) / 16),
                    static_cast<unsigned>((count + tokens_per_cta - 1) / tokens_per_cta));
    linear_mma_kernel<T, NT><<<grid, kWarps * 32, 0, stream>>>(
        static_cast<const T*>(a.x) + first * k, static_cast<int>(count), a.w.blocks, a.w.scales,
        a.w.bias, a.w.bias_dtype, static_cast<T*>(a.out) + first * n, n, k);
    check_launch("linear_mma_kernel");
  }
}

}  // namespace

void linear(const detail::LinearArgs& a) {
  cudaStream_t stream = as_stream(a.stream);
  const bool int_sizes = a.w.n < (std::int64_t{1} << 31) && a.w.k < (std::int64_t{1} << 30);
  const bool tensor_cores =
      a.x_dtype != DType::f32 && int_sizes && aligned(a.x, 16) && aligned(a.w.blocks, 16);
  if (!tensor_cores) {
    const std::int64_t items = a.m * a.w.n;
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      linear_simple_kernel<T><<<blocks_for(items, 8), 256, 0, stream>>>(
          static_cast<const T*>(a.x), a.m, a.w.blocks, a.w.scales, a.w.bias, a.w.bias_dtype,
          static_cast<T*>(a.out), a.w.n, a.w.k);
    });
    check_launch("linear_simple_kernel");
    return;
  }
  auto run = [&](auto zero) {
    using T = decltype(zero);
    if (a.m <= 8) {
      launch_mma<T, 1>(a, stream);
    } else if (a.m <= 16) {
      launch_mma<T, 2>(a, stream);
    } else {
      launch_mma<T, 4>(a, stream);
    }
  };
  if (a.x_dtype == DType::f16) {
    run(__half{});
  } else {
    run(__nv_bfloat16{});
  }
}

}  // namespace mxfp4::cuda
