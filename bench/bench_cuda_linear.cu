// GPU benchmark of the dense MXFP4 linear layer, with cuBLAS bf16 on the dequantized weight and
// the card's device-to-device copy bandwidth measured in the same run.
//
//   bench_cuda_linear [--quick] [--out FILE.md]
//
// Every timed region is a CUDA graph of `reps` calls, replayed after a warm-up; weights (ours
// and cuBLAS's) rotate through enough copies to exceed the L2 cache, so each call reads its
// weight from DRAM. Inputs are random, never zeros. Prints a markdown table.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/mxfp4.hpp"

namespace {

#define CHECK_CUDA(call)                                                                         \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)
#define CHECK_CUBLAS(call)                                                            \
  do {                                                                                \
    cublasStatus_t s_ = (call);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
      std::fprintf(stderr, "%s:%d %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, \
                   static_cast<int>(s_));                                             \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

using mxfp4::DType;
using mxfp4::Tensor;
const mxfp4::Device kGpu = mxfp4::Device::cuda(0);

Tensor random_host(mxfp4::Shape shape, DType dtype, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor f = Tensor::empty(shape, DType::f32);
  float* p = f.data_as<float>();
  for (std::int64_t i = 0; i < f.numel(); ++i) {
    double s = 0;
    for (int j = 0; j < 3; ++j)
      s += static_cast<double>(rng() >> 11) * 0x1.0p-53 - 0.5;
    p[i] = static_cast<float>(s);
  }
  return dtype == DType::f32 ? f : f.to(dtype);
}

// Milliseconds per replay of `graph`, median of `trials` replays after warm-ups.
template <typename F>
double time_graph(cudaStream_t stream, int reps, F&& body, int trials = 7) {
  cudaGraph_t graph;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int r = 0; r < reps; ++r)
    body(r);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int w = 0; w < 2; ++w)
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
  std::vector<double> ms;
  for (int t = 0; t < trials; ++t) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float v = 0;
    CHECK_CUDA(cudaEventElapsedTime(&v, start, stop));
    ms.push_back(v / reps);
  }
  CHECK_CUDA(cudaGetLastError());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double copy_bandwidth(cudaStream_t stream) {
  const std::size_t bytes = std::size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double ms = time_graph(stream, 4, [&](int) {
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3);  // bytes read + written per second
}

struct Shape {
  const char* name;
  std::int64_t n, k;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  bool skip_quantize = false;
  std::string out_path;
  std::int64_t only_n = 0, only_m = 0;  // --n / --m: run just that weight height / token count
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--no-quantize") == 0) skip_quantize = true;
    if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_path = argv[++i];
    if (std::strcmp(argv[i], "--n") == 0 && i + 1 < argc) only_n = std::atoll(argv[++i]);
    if (std::strcmp(argv[i], "--m") == 0 && i + 1 < argc) only_m = std::atoll(argv[++i]);
  }
  if (mxfp4::cuda_device_count() == 0) {
    std::fprintf(stderr, "bench_cuda_linear: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t handle;
  CHECK_CUBLAS(cublasCreate(&handle));
  CHECK_CUBLAS(cublasSetStream(handle, stream));
  void* cublas_ws;
  const std::size_t cublas_ws_bytes = std::size_t{64} << 20;
  CHECK_CUDA(cudaMalloc(&cublas_ws, cublas_ws_bytes));
  CHECK_CUBLAS(cublasSetWorkspace(handle, cublas_ws, cublas_ws_bytes));

  const double copy_bw = copy_bandwidth(stream);
  std::string report;
  char line[512];
  std::snprintf(line, sizeof line,
                "Device: %s, %d SMs, L2 %d MiB. Measured device-to-device copy: %.0f GB/s "
                "(read + write).\n\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_bw / 1e9);
  report += line;
  report +=
      "| shape (N x K) | M | mxfp4 us | weight TB/s | % of copy BW | TFLOP/s | cuBLAS bf16 us | "
      "cuBLAS TFLOP/s | speedup vs cuBLAS |\n|---|---|---|---|---|---|---|---|---|\n";

  std::vector<Shape> shapes = {{"4096x4096", 4096, 4096},
                               {"GPT-OSS gate_up 5760x2880", 5760, 2880},
                               {"GPT-OSS down 2880x2880", 2880, 2880},
                               {"Llama-70B up 28672x8192", 28672, 8192},
                               {"Llama-70B down 8192x28672", 8192, 28672}};
  std::vector<std::int64_t> ms = {1, 4, 8, 16, 64, 256, 1024, 4096};
  if (quick) {
    shapes = {shapes[0], shapes[3]};
    ms = {1, 16, 256, 4096};
  }
  const std::size_t rotate_bytes = std::size_t{256} << 20;  // > 5x an H100's 50 MB L2

  for (const Shape& s : shapes) {
    if (only_n != 0 && s.n != only_n) continue;
    const Tensor w_host = random_host({s.n, s.k}, DType::f32, 1);
    const auto wq = mxfp4::Mxfp4Weight::quantize(w_host);
    const std::size_t q_bytes = wq.blocks().nbytes() + wq.scales().nbytes();
    const int copies = static_cast<int>(std::max<std::size_t>(2, rotate_bytes / q_bytes + 1));
    std::vector<mxfp4::Mxfp4Weight> wg;
    for (int c = 0; c < copies; ++c) {
      wg.push_back(mxfp4::Mxfp4Weight::from_parts(wq.blocks().to(kGpu), wq.scales().to(kGpu)));
    }
    const Tensor wd = wq.dequantize(DType::bf16);
    const int dcopies = static_cast<int>(std::max<std::size_t>(1, rotate_bytes / wd.nbytes() + 1));
    std::vector<Tensor> wdg;
    for (int c = 0; c < dcopies; ++c)
      wdg.push_back(wd.to(kGpu));

    for (std::int64_t m : ms) {
      if (only_m != 0 && m != only_m) continue;
      const Tensor x = random_host({m, s.k}, DType::bf16, 2).to(kGpu);
      Tensor y = Tensor::empty({m, s.n}, DType::bf16, kGpu);
      const double flops = 2.0 * static_cast<double>(m) * s.n * s.k;
      const int reps = std::max(copies, dcopies) * (m <= 64 ? 4 : 1);
      const double ours = time_graph(stream, reps, [&](int r) {
        mxfp4::linear_into(x, wg[r % copies], y, {mxfp4::Stream{stream}});
      });
      const float alpha = 1.0f, beta = 0.0f;
      const double theirs = time_graph(stream, reps, [&](int r) {
        CHECK_CUBLAS(cublasGemmEx(
            handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(s.n), static_cast<int>(m),
            static_cast<int>(s.k), &alpha, wdg[r % dcopies].data(), CUDA_R_16BF,
            static_cast<int>(s.k), x.data(), CUDA_R_16BF, static_cast<int>(s.k), &beta, y.data(),
            CUDA_R_16BF, static_cast<int>(s.n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      });
      const double tbs = static_cast<double>(q_bytes) / (ours * 1e-3) / 1e12;
      std::snprintf(line, sizeof line,
                    "| %s | %lld | %.1f | %.2f | %.0f%% | %.1f | %.1f | %.1f | %.2fx |\n", s.name,
                    static_cast<long long>(m), ours * 1e3, tbs, 100.0 * tbs * 1e12 / copy_bw,
                    flops / (ours * 1e-3) / 1e12, theirs * 1e3, flops / (theirs * 1e-3) / 1e12,
                    theirs / ours);
      report += line;
      std::fputs(line, stdout);
      std::fflush(stdout);
    }
  }

  // Quantize throughput (includes its one host synchronization, which reports NaN/Inf).
  report += "\n| quantize input | rule | GB/s of input |\n|---|---|---|\n";
  for (DType dtype : {DType::bf16, DType::f32}) {
    if (skip_quantize) break;
    const Tensor w = random_host({8192, 8192}, dtype, 3).to(kGpu);
    Tensor blocks = Tensor::empty({8192, 4096}, DType::u8, kGpu);
    Tensor scales = Tensor::empty({8192, 256}, DType::u8, kGpu);
    for (auto rule : {mxfp4::ScaleRule::mse, mxfp4::ScaleRule::floor}) {
      const mxfp4::QuantizeOptions opts{rule, mxfp4::NonFinitePolicy::error};
      mxfp4::quantize_into(w, blocks, scales, opts, {mxfp4::Stream{stream}});
      std::vector<double> t;
      for (int i = 0; i < 5; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        mxfp4::quantize_into(w, blocks, scales, opts, {mxfp4::Stream{stream}});
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(t.begin(), t.end());
      std::snprintf(line, sizeof line, "| %s 8192x8192 | %s | %.0f |\n",
                    std::string(mxfp4::dtype_name(dtype)).c_str(), mxfp4::scale_rule_name(rule),
                    static_cast<double>(w.nbytes()) / t[2] / 1e9);
      report += line;
    }
  }
  std::fputs("\n", stdout);
  std::fputs(report.c_str(), stdout);
  if (!out_path.empty()) {
    if (FILE* f = std::fopen(out_path.c_str(), "w")) {
      std::fputs(report.c_str(), f);
      std::fclose(f);
    }
  }
  cublasDestroy(handle);
  cudaFree(cublas_ws);
  return 0;
}
