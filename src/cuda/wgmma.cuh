// Hopper (sm_90a) warpgroup MMA helpers: wgmma with A from registers and B from shared memory
// in the 128-byte-swizzled K-major layout, its descriptor, and the fences around it. Only
// meaningful in sm_90a device code; the callers guard with MXFP4_SM90A_DEVICE.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MXFP4_SM90A_DEVICE 1
#endif

namespace mxfp4::cuda::sm90 {

// Shared-memory matrix descriptor of a K-major operand stored in 128-byte swizzle atoms (8 rows
// of 128 bytes, 16-byte chunk c of row r at c ^ (r % 8), atoms 1024-byte aligned and 1024
// bytes apart): start address, leading byte offset (unused for this layout, 1 by convention),
// stride byte offset 1024 (from one 8-row group to the next), swizzle mode 1 (128 bytes).
// Built as a base (sw128_desc_lo: the low word, for a stage's start) plus a small offset
// (sw128_desc_at): for addresses of one stage, below 256 KiB, the offset's 16-byte units never
// carry into the layout bits, so each wgmma costs one 32-bit add instead of a mask, shift and
// merge.
__device__ __forceinline__ std::uint32_t sw128_desc_lo(std::uint32_t smem_address) {
  return ((smem_address & 0x3FFFFu) >> 4) | (1u << 16);
}
__device__ __forceinline__ std::uint64_t sw128_desc_at(std::uint32_t lo, std::uint32_t offset) {
  return static_cast<std::uint64_t>(lo + (offset >> 4)) | (std::uint64_t{1024 >> 4} << 32) |
         (std::uint64_t{1} << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared memory written through the generic proxy (cp.async, ordinary stores) and read next by
// the tensor cores (async proxy) needs this fence in the writing threads before the barrier.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// mbarriers in shared memory (CTA scope): init by one thread before a __syncthreads; arrive with
// release semantics; wait for the phase of the given parity to complete (acquire).
__device__ __forceinline__ void mbarrier_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbarrier_wait(std::uint32_t bar, std::uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Arrives on `bar` once every cp.async this thread issued before has landed; the arrival counts
// toward the barrier's expected count (.noinc).
__device__ __forceinline__ void cp_async_arrive_noinc(std::uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and adds `bytes` to the transactions the current phase waits for (TMA copies).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
// TMA: the box at coordinates (c0 innermost, c1) of the 2D tensor map `map` (a __grid_constant__
// kernel parameter) to shared memory at dst, completing `bar`'s transactions.
__device__ __forceinline__ void tma_load_2d(std::uint32_t dst, const void* map, int c0, int c1,
                                            std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// Thread-block clusters: this CTA's rank, a barrier of every thread of every CTA of the cluster
// (release / acquire at cluster scope), and stores into another CTA's shared memory.
__device__ __forceinline__ std::uint32_t cluster_rank() {
  std::uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile(
      "barrier.cluster.arrive.release.aligned;\n"
      "barrier.cluster.wait.acquire.aligned;\n" ::
          : "memory");
}
// The shared::cluster address of `smem_address` (this CTA's shared window) in CTA `rank`.
__device__ __forceinline__ std::uint32_t cluster_map(std::uint32_t smem_address,
                                                     std::uint32_t rank) {
  std::uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(smem_address), "r"(rank));
  return r;
}
__device__ __forceinline__ void store_cluster(std::uint32_t address, float a, float b, float c,
                                              float d) {
  asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "f"(a), "f"(b),
               "f"(c), "f"(d)
               : "memory");
}
// Barrier `id` (1..15; 0 is __syncthreads) among `threads` threads, whole warps.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Moves this warpgroup's register budget down to or up to N per thread (warp-specialized kernels:
// the loading warpgroup gives registers to the computing ones).
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// Keeps the compiler from moving accesses of accumulator registers across a wgmma or a wait
// (they are written asynchronously), and keeps A fragment registers live, unchanged, until a
// wait shows the wgmma that reads them done.
template <int N>
__device__ __forceinline__ void fence_accumulators(float* d) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
__device__ __forceinline__ void fence_registers(std::uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+r"(r[i])::"memory");
}
template <int A, int B, int C>
__device__ __forceinline__ void fence_registers(std::uint32_t (&r)[A][B][C]) {
#pragma unroll
  for (int i = 0; i < A; ++i) {
#pragma unroll
    for (int j = 0; j < B; ++j)
      fence_registers(r[i][j]);
  }
}

// D[64 x N] (f32, accumulated; d points to the N / 2 accumulator registers of the thread) +=
// A[64 x 16] (bf16, or f16 with kF16, registers: the mma.sync m16n8k16 A fragment of each warp's
// 16 rows) * B[16 x N] (the same type in shared memory, K-major, described by desc).
#define MXFP4_WGMMA_M64N32K16(AB)                                                               \
  asm volatile(                                                                                 \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                              \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." AB "." AB                                   \
      " "                                                                                       \
      "{"                                                                                       \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                         \
      "%8, %9, %10, %11, %12, %13, %14, %15"                                                    \
      "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"                                          \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),     \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), \
        "+f"(d[14]), "+f"(d[15])                                                                \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
template <bool kF16 = false>
__device__ __forceinline__ void wgmma_m64n32k16(float* d, const std::uint32_t (&a)[4],
                                                std::uint64_t desc) {
  if constexpr (kF16) {
    MXFP4_WGMMA_M64N32K16("f16");
  } else {
    MXFP4_WGMMA_M64N32K16("bf16");
  }
}
#undef MXFP4_WGMMA_M64N32K16

#define MXFP4_WGMMA_M64N64K16(AB)                                                                  \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." AB "." AB                                      \
      " "                                                                                          \
      "{"                                                                                          \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                            \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                      \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                                    \
      "%24, %25, %26, %27, %28, %29, %30, %31"                                                     \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                             \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                         \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
template <bool kF16 = false>
__device__ __forceinline__ void wgmma_m64n64k16(float* d, const std::uint32_t (&a)[4],
                                                std::uint64_t desc) {
  if constexpr (kF16) {
    MXFP4_WGMMA_M64N64K16("f16");
  } else {
    MXFP4_WGMMA_M64N64K16("bf16");
  }
}
#undef MXFP4_WGMMA_M64N64K16

#define MXFP4_WGMMA_M64N128K16(AB)                                                                 \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." AB "." AB                                     \
      " "                                                                                          \
      "{"                                                                                          \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                            \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                      \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                                    \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                                    \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                                    \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                                    \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                                    \
      "%56, %57, %58, %59, %60, %61, %62, %63"                                                     \
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                             \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63])                                                                                \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
template <bool kF16 = false>
__device__ __forceinline__ void wgmma_m64n128k16(float* d, const std::uint32_t (&a)[4],
                                                 std::uint64_t desc) {
  if constexpr (kF16) {
    MXFP4_WGMMA_M64N128K16("f16");
  } else {
    MXFP4_WGMMA_M64N128K16("bf16");
  }
}
#undef MXFP4_WGMMA_M64N128K16

#define MXFP4_WGMMA_M64N192K16(AB)                                                                 \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"                                                \
      "wgmma.mma_async.sync.aligned.m64n192k16.f32." AB "." AB                                     \
      " "                                                                                          \
      "{"                                                                                          \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                            \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                      \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                                    \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                                    \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                                    \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                                    \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                                    \
      "%56, %57, %58, %59, %60, %61, %62, %63,"                                                    \
      "%64, %65, %66, %67, %68, %69, %70, %71,"                                                    \
      "%72, %73, %74, %75, %76, %77, %78, %79,"                                                    \
      "%80, %81, %82, %83, %84, %85, %86, %87,"                                                    \
      "%88, %89, %90, %91, %92, %93, %94, %95"                                                     \
      "}, {%96, %97, %98, %99}, %100, p, 1, 1, 0;\n}\n"                                            \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), \
        "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), \
        "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), \
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), \
        "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
template <bool kF16 = false>
__device__ __forceinline__ void wgmma_m64n192k16(float* d, const std::uint32_t (&a)[4],
                                                 std::uint64_t desc) {
  if constexpr (kF16) {
    MXFP4_WGMMA_M64N192K16("f16");
  } else {
    MXFP4_WGMMA_M64N192K16("bf16");
  }
}
#undef MXFP4_WGMMA_M64N192K16

#define MXFP4_WGMMA_M64N256K16(AB)                                                                 \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"                                                \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." AB "." AB                                     \
      " "                                                                                          \
      "{"                                                                                          \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                            \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                      \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                                    \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                                    \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                                    \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                                    \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                                    \
      "%56, %57, %58, %59, %60, %61, %62, %63,"                                                    \
      "%64, %65, %66, %67, %68, %69, %70, %71,"                                                    \
      "%72, %73, %74, %75, %76, %77, %78, %79,"                                                    \
      "%80, %81, %82, %83, %84, %85, %86, %87,"                                                    \
      "%88, %89, %90, %91, %92, %93, %94, %95,"                                                    \
      "%96, %97, %98, %99, %100, %101, %102, %103,"                                                \
      "%104, %105, %106, %107, %108, %109, %110, %111,"                                            \
      "%112, %113, %114, %115, %116, %117, %118, %119,"                                            \
      "%120, %121, %122, %123, %124, %125, %126, %127"                                             \
      "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"                                        \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), \
        "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), \
        "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), \
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), \
        "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), \
        "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),          \
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),        \
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),        \
        "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),        \
        "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])         \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
template <bool kF16 = false>
__device__ __forceinline__ void wgmma_m64n256k16(float* d, const std::uint32_t (&a)[4],
                                                 std::uint64_t desc) {
  if constexpr (kF16) {
    MXFP4_WGMMA_M64N256K16("f16");
  } else {
    MXFP4_WGMMA_M64N256K16("bf16");
  }
}
#undef MXFP4_WGMMA_M64N256K16

}  // namespace mxfp4::cuda::sm90
