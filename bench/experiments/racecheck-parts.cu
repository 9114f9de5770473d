// A minimal kernel for compute-sanitizer's racecheck (session 20): two computing warpgroups of a
// CTA hand f32 sums from the second to the first through shared memory between named barriers of
// 256 threads (bar.sync 3, 256), as sm90_gemm.cu's two warpgroups on alternate k-tiles do, in
// seven variants; each result is checked. Build: nvcc -O2 -arch=sm_90a racecheck-parts.cu; run:
// compute-sanitizer --tool racecheck ./a.out. On an H100 (CUDA 13 image, 2026-11-27), racecheck
// reported no hazard in modes 0-4 and hazards in modes 5 and 6, where warpgroup 0 alone meets a
// barrier of its own (5, 128 threads) in some tiles around writes to a region only it touches, as
// sm90_gemm.cu's split of a flagged f16 stage does. Every mode is race-free by construction (and
// every result right), so those reports are racecheck's; the library's kernel with the whole
// buffer (mode 5's pattern) draws none, with parts (mode 6's) it does. See bench/RESULTS.md.
#include <cstdio>
__device__ __forceinline__ void nb(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
template <int kMode>
__global__ void __launch_bounds__(384) k(float* out, int tiles) {
  __shared__ float4 red[128 * 8];
  __shared__ float4 own[2 * 128 * 4];
  const int wg = threadIdx.x / 128, t = threadIdx.x & 127;
  if (wg == 0) return;  // the "producer"
  const int c = wg - 1;
  float acc[32];
  float total = 0.f;
  for (int tile = 0; tile < tiles; ++tile) {
    for (int i = 0; i < 32; ++i)
      acc[i] = (float)(t + i + tile + c);
    if (kMode >= 3 &&
        (kMode < 5 ||
         (c == 0 &&
          (tile & 1) ==
              1))) {  // each warpgroup on its own region between barriers of its own (5 + c, 128)
      nb(5 + c, 128);
      float4* o = own + c * 512;
      for (int i = 0; i < 4; ++i)
        o[t + 128 * i] = make_float4(1.f * tile, 0.f, 0.f, 0.f);
      nb(5 + c, 128);
      for (int i = 0; i < 4; ++i)
        acc[i] += own[c * 512 + ((t + 64) & 127) + 128 * i].y * 0.f;
      nb(5 + c, 128);
    }
    if (kMode == 0 || kMode == 3 || kMode == 5) {  // whole buffer, two barriers
      if (c == 1)
        for (int i = 0; i < 32; i += 4)
          red[(i / 4) * 128 + t] = make_float4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]);
      nb(3, 256);
      if (c == 0)
        for (int i = 0; i < 32; i += 4) {
          float4 v = red[(i / 4) * 128 + t];
          acc[i] += v.x;
          acc[i + 1] += v.y;
          acc[i + 2] += v.z;
          acc[i + 3] += v.w;
        }
      nb(3, 256);
    } else if (kMode == 1 || kMode == 4 ||
               kMode == 6) {  // parts of 8 floats through one part-sized buffer, two barriers each
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        if (c == 1)
          for (int i = 0; i < 8; i += 4)
            red[(i / 4) * 128 + t] = make_float4(acc[8 * h + i], acc[8 * h + i + 1],
                                                 acc[8 * h + i + 2], acc[8 * h + i + 3]);
        nb(3, 256);
        if (c == 0)
          for (int i = 0; i < 8; i += 4) {
            float4 v = red[(i / 4) * 128 + t];
            acc[8 * h + i] += v.x;
            acc[8 * h + i + 1] += v.y;
            acc[8 * h + i + 2] += v.z;
            acc[8 * h + i + 3] += v.w;
          }
        nb(3, 256);
      }
    } else {  // parts through two alternating part-sized buffers, one barrier each
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        float4* b = red + (h & 1) * 256;
        if (c == 1)
          for (int i = 0; i < 8; i += 4)
            b[(i / 4) * 128 + t] = make_float4(acc[8 * h + i], acc[8 * h + i + 1],
                                               acc[8 * h + i + 2], acc[8 * h + i + 3]);
        nb(3, 256);
        if (c == 0)
          for (int i = 0; i < 8; i += 4) {
            float4 v = b[(i / 4) * 128 + t];
            acc[8 * h + i] += v.x;
            acc[8 * h + i + 1] += v.y;
            acc[8 * h + i + 2] += v.z;
            acc[8 * h + i + 3] += v.w;
          }
      }
    }
    if (c == 0)
      for (int i = 0; i < 32; ++i)
        total += acc[i];
  }
  if (c == 0) out[blockIdx.x * 128 + t] = total;
}
int main() {
  float* d;
  cudaMalloc(&d, 4 * 128 * 4);
  float h[512];
  cudaMemset(d, 0, 4 * 128 * 4);
  for (int mode = 0; mode < 7; ++mode) {
    if (mode == 0) k<0><<<4, 384>>>(d, 3);
    if (mode == 1) k<1><<<4, 384>>>(d, 3);
    if (mode == 2) k<2><<<4, 384>>>(d, 3);
    if (mode == 3) k<3><<<4, 384>>>(d, 3);
    if (mode == 4) k<4><<<4, 384>>>(d, 3);
    if (mode == 5) k<5><<<4, 384>>>(d, 5);
    if (mode == 6) k<6><<<4, 384>>>(d, 5);
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    double want = 0;
    for (int tile = 0; tile < 3; ++tile)
      for (int i = 0; i < 32; ++i)
        want += 2.0 * (5 + i + tile) + 1;  // t = 5
    std::printf("mode %d: %s (t=5: %.0f, want %.0f)\n", mode,
                cudaGetErrorString(cudaGetLastError()), h[5], want);
  }
  return 0;
}
