// Google Benchmark of the CPU kernel tables (src/cpu/cpu_kernels.hpp) called directly on one
// thread: no pool, no dispatch. Compares, in the same run, with what bounds them:
//   BM_ReadBandwidth   one core summing a 1 GiB array with 512-bit loads, as 1 to 8 streams
//                      read side by side (the streaming read bandwidth a matrix-vector product
//                      can reach: the best of these)
//   BM_Sgemm           OpenBLAS cblas_sgemm on one thread, on the dequantized f32 weight
//   BM_DecodeVsBandwidth, BM_PrefillVsSgemm
//                      the targets as ratios (M = 1 weight GB/s over the 8-stream read
//                      bandwidth; sgemm time over ours at M = 512), both sides timed back to back
//                      in every iteration so that a noisy machine moves them together
// Counters (decimal units, per second of wall time):
//   weight_GB/s   MXFP4 bytes of the weight read per call (blocks + scales, 4.25 bits/weight)
//   GFLOP/s       2 * M * N * K per call
//   input_GB/s    quantize: f32 input read
// Matrix-vector shapes rotate over copies of the weight totalling > 256 MB (far above the
// last-level cache). Run with --benchmark_filter to pick; the table is chosen with
// --isa=avx512|avx2|scalar (default: the best one this CPU runs).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/kernel_args.hpp"
#include "cpu/cpu_kernels.hpp"
#include "cpu/int8_rows.hpp"
#include "mxfp4/dtype.hpp"

#if defined(MXFP4_BENCH_OPENBLAS)
#include <cblas.h>
#endif

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace {

using mxfp4::DType;
using mxfp4::cpu::Kernels;
using mxfp4::cpu::RowBatch;
using std::int64_t;
using std::uint8_t;

const Kernels* g_kernels = nullptr;

const Kernels& kernels() {
  return *g_kernels;
}

// 64-byte aligned, zero-initialised storage that is not default-constructed element by element.
template <typename T>
struct Buffer {
  explicit Buffer(std::size_t n)
      : ptr(static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{64}))), size(n) {
    std::memset(static_cast<void*>(ptr), 0, n * sizeof(T));
  }
  ~Buffer() { ::operator delete (ptr, std::align_val_t{64}); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* ptr;
  std::size_t size;
};

// A random MXFP4 weight [n, k]: every code, scales 2^-9 .. 2^4.
struct Weight {
  int64_t n, k;
  std::vector<uint8_t> blocks, scales;
  Weight(int64_t n_, int64_t k_, std::uint64_t seed)
      : n(n_),
        k(k_),
        blocks(static_cast<std::size_t>(n_ * k_ / 2)),
        scales(static_cast<std::size_t>(n_ * k_ / 32)) {
    std::mt19937_64 g(seed);
    for (std::size_t i = 0; i < blocks.size(); i += 8) {
      const std::uint64_t r = g();
      std::memcpy(blocks.data() + i, &r, std::min<std::size_t>(8, blocks.size() - i));
    }
    for (auto& s : scales)
      s = static_cast<uint8_t>(118 + g() % 14);
  }
  mxfp4::detail::WeightArgs args() const {
    return {blocks.data(), scales.data(), nullptr, DType::f32, 1, n, k};
  }
  double bytes() const { return static_cast<double>(blocks.size() + scales.size()); }
};

std::vector<float> random_floats(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& f : v)
    f = u(g);
  return v;
}

// ---- the machine's single-core streaming read bandwidth ----------------------------------------

#if defined(__x86_64__)
// Sums n floats read as `streams` equal parts side by side (several sequential streams keep more
// cache misses in flight than one; a matrix-vector product reads several weight rows at once).
__attribute__((target("avx512f"))) float sum_avx512(const float* p, std::size_t n, int streams) {
  const std::size_t part = n / static_cast<std::size_t>(streams);
  __m512 acc[8][2];
  for (auto& a : acc)
    a[0] = a[1] = _mm512_setzero_ps();
  for (std::size_t i = 0; i < part; i += 32) {
    for (int s = 0; s < streams; ++s) {
      const float* q = p + static_cast<std::size_t>(s) * part + i;
      acc[s][0] = _mm512_add_ps(acc[s][0], _mm512_load_ps(q));
      acc[s][1] = _mm512_add_ps(acc[s][1], _mm512_load_ps(q + 16));
    }
  }
  alignas(64) float lanes[16];
  __m512 t = _mm512_setzero_ps();
  for (const auto& a : acc)
    t = _mm512_add_ps(t, _mm512_add_ps(a[0], a[1]));
  _mm512_store_ps(lanes, t);
  float sum = 0.0f;
  for (const float v : lanes)
    sum += v;
  return sum;
}
#endif

// Arg: the number of streams (1 = one sequential pass).
void BM_ReadBandwidth(benchmark::State& state) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f")) {
    state.SkipWithError("no AVX-512");
    return;
  }
  const std::size_t n = std::size_t{1} << 28;  // 1 GiB of f32
  Buffer<float> buf(n);
  for (std::size_t i = 0; i < n; i += 1024)
    buf.ptr[i] = 1.0f;
  const int streams = static_cast<int>(state.range(0));
  for (auto _ : state)
    benchmark::DoNotOptimize(sum_avx512(buf.ptr, n, streams));
  state.counters["read_GB/s"] = benchmark::Counter(
      static_cast<double>(n * sizeof(float)) * static_cast<double>(state.iterations()) * 1e-9,
      benchmark::Counter::kIsRate);
#else
  state.SkipWithError("x86-64 only");
#endif
}
BENCHMARK(BM_ReadBandwidth)
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);

// ---- matmul_rows ------------------------------------------------------------------------------

// `copies` random weights [n, k] (seeds 100, 101, ...) to rotate over.
std::vector<std::unique_ptr<Weight>> weight_copies(int64_t n, int64_t k, int copies) {
  std::vector<std::unique_ptr<Weight>> w;
  for (int c = 0; c < copies; ++c)
    w.push_back(std::make_unique<Weight>(n, k, 100 + c));
  return w;
}

// weight_GB/s and GFLOP/s of the iterations so far, each M rows times the weight `w`.
void set_matmul_counters(benchmark::State& state, const Weight& w, int64_t m) {
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_GB/s"] =
      benchmark::Counter(w.bytes() * iters * 1e-9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(m) * static_cast<double>(w.n) *
                             static_cast<double>(w.k) * iters * 1e-9,
                         benchmark::Counter::kIsRate);
}

// M rows times an N x K weight, all columns in one call; weights rotated over `copies`.
void run_matmul(benchmark::State& state, int64_t m, int64_t n, int64_t k, int copies, DType dt,
                int64_t col_chunk) {
  const std::vector<std::unique_ptr<Weight>> w = weight_copies(n, k, copies);
  const std::vector<float> xf = random_floats(static_cast<std::size_t>(m * k), 1);
  const std::size_t es = dt == DType::f32 ? 4 : 2;
  std::vector<uint8_t> x(static_cast<std::size_t>(m * k) * es),
      out(static_cast<std::size_t>(m * n) * es);
  for (std::size_t i = 0; i < xf.size(); ++i) {
    if (dt == DType::f32) {
      std::memcpy(x.data() + 4 * i, &xf[i], 4);
    } else {
      const std::uint16_t h =
          dt == DType::bf16 ? mxfp4::f32_to_bf16(xf[i]) : mxfp4::f32_to_f16(xf[i]);
      std::memcpy(x.data() + 2 * i, &h, 2);
    }
  }
  std::vector<const void*> xr(static_cast<std::size_t>(m));
  std::vector<void*> orow(static_cast<std::size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    xr[static_cast<std::size_t>(i)] = x.data() + static_cast<std::size_t>(i * k) * es;
    orow[static_cast<std::size_t>(i)] = out.data() + static_cast<std::size_t>(i * n) * es;
  }
  const RowBatch batch{xr.data(), orow.data(), m, m, dt};
  const Kernels& kt = kernels();
  std::size_t next = 0;
  for (auto _ : state) {
    const auto wa = w[next]->args();
    for (int64_t c0 = 0; c0 < n; c0 += col_chunk)
      kt.matmul_rows(batch, wa, 0, c0, std::min(n, c0 + col_chunk));
    benchmark::ClobberMemory();
    next = (next + 1) % w.size();
  }
  set_matmul_counters(state, *w[0], m);
}

// Matrix-vector products (and small batches) on an 8192 x 8192 weight (34 MB), 8 copies.
void BM_Decode(benchmark::State& state) {
  run_matmul(state, state.range(0), 8192, 8192, 8, DType::f32, 8192);
}
BENCHMARK(BM_Decode)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

// The same matrix-vector product on a weight that stays in L2 (256 x 4096, 557 KB, one copy): the
// kernel's compute-bound rate, with no memory traffic to hide.
void BM_DecodeHot(benchmark::State& state) {
  run_matmul(state, state.range(0), 256, 4096, 1, DType::f32, 256);
}
BENCHMARK(BM_DecodeHot)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

// RunOptions::precision = int8_activations: the table's matmul_rows_int8 on the same hot weight
// and on BM_Decode's 8192 x 8192 copies. The rows are quantized once, outside the timed loop
// (the backend does it once per call: K elements per row, against N * K weights).
void run_matmul_int8(benchmark::State& state, int64_t m, int64_t n, int64_t k, int copies) {
  const std::vector<std::unique_ptr<Weight>> w = weight_copies(n, k, copies);
  const std::vector<float> xf = random_floats(static_cast<std::size_t>(m * k), 1);
  std::vector<std::int32_t> q(static_cast<std::size_t>(m * mxfp4::cpu::int8_row_bytes(k) / 4));
  std::vector<const std::int8_t*> xr(static_cast<std::size_t>(m));
  std::vector<float> out(static_cast<std::size_t>(m * n));
  std::vector<float*> orow(static_cast<std::size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    auto* row = reinterpret_cast<std::int8_t*>(q.data()) + i * mxfp4::cpu::int8_row_bytes(k);
    mxfp4::cpu::quantize_int8_row(xf.data() + i * k, DType::f32, k, row);
    xr[static_cast<std::size_t>(i)] = row;
    orow[static_cast<std::size_t>(i)] = out.data() + i * n;
  }
  const mxfp4::cpu::Int8RowBatch batch{xr.data(), orow.data(), m};
  const Kernels& kt = kernels();
  std::size_t next = 0;
  for (auto _ : state) {
    kt.matmul_rows_int8(batch, w[next]->args(), 0, 0, n);
    benchmark::ClobberMemory();
    next = (next + 1) % w.size();
  }
  set_matmul_counters(state, *w[0], m);
}

void BM_DecodeHotInt8(benchmark::State& state) {
  run_matmul_int8(state, state.range(0), 256, 4096, 1);
}
BENCHMARK(BM_DecodeHotInt8)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_DecodeInt8(benchmark::State& state) {
  run_matmul_int8(state, state.range(0), 8192, 8192, 8);
}
BENCHMARK(BM_DecodeInt8)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_DecodeBf16(benchmark::State& state) {
  run_matmul(state, state.range(0), 8192, 8192, 8, DType::bf16, 8192);
}
BENCHMARK(BM_DecodeBf16)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

// N = K = 4096 (8.5 MB of MXFP4); M from decode sizes to prefill. Arg 1: column chunk per call.
void BM_Matmul(benchmark::State& state) {
  run_matmul(state, state.range(0), 4096, 4096, 2, DType::f32, state.range(1));
}
BENCHMARK(BM_Matmul)
    ->Args({1, 4096})
    ->Args({8, 4096})
    ->Args({9, 4096})
    ->Args({16, 4096})
    ->Args({32, 4096})
    ->Args({64, 4096})
    ->Args({512, 4096})
    ->Args({512, 256})
    ->Args({512, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_MatmulBf16(benchmark::State& state) {
  run_matmul(state, state.range(0), 4096, 4096, 2, DType::bf16, 4096);
}
BENCHMARK(BM_MatmulBf16)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

#if defined(MXFP4_BENCH_OPENBLAS)
// The weight as f32 [n, k], for sgemm.
std::vector<float> dequantized(const Weight& w) {
  std::vector<float> wf(static_cast<std::size_t>(w.n * w.k));
  const mxfp4::detail::DequantizeArgs da{w.blocks.data(), w.scales.data(), w.n,    w.k,
                                         wf.data(),       DType::f32,      nullptr};
  kernels().dequantize_rows(da, 0, w.n);
  return wf;
}

// OpenBLAS on the dequantized weight: C[M, N] = X[M, K] W[N, K]^T, one thread.
void BM_Sgemm(benchmark::State& state) {
  const int64_t m = state.range(0), n = 4096, k = 4096;
  openblas_set_num_threads(1);
  const Weight w(n, k, 100);
  const std::vector<float> wf = dequantized(w);
  const std::vector<float> x = random_floats(static_cast<std::size_t>(m * k), 1);
  std::vector<float> c(static_cast<std::size_t>(m * n));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k), wf.data(),
                static_cast<int>(k), 0.0f, c.data(), static_cast<int>(n));
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(m * n * k) * static_cast<double>(state.iterations()) * 1e-9,
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Sgemm)->Arg(64)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif

// ---- the targets as ratios, each pair timed back to back ----------------------------------------
// This machine's other tenants change its speed from one second to the next; alternating the two
// sides of a comparison within each iteration makes their ratio steady where the rates are not.

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

#if defined(__x86_64__)
// M = 1 on an 8192 x 8192 weight (8 copies, 272 MB) against the read bandwidth (8 streams).
void BM_DecodeVsBandwidth(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx512f")) {
    state.SkipWithError("no AVX-512");
    return;
  }
  const int64_t n = 8192, k = 8192;
  const std::vector<std::unique_ptr<Weight>> w = weight_copies(n, k, 8);
  const std::size_t nbw = std::size_t{1} << 26;  // 256 MiB
  Buffer<float> buf(nbw);
  const std::vector<float> x = random_floats(static_cast<std::size_t>(k), 1);
  std::vector<float> out(static_cast<std::size_t>(n));
  const void* xr = x.data();
  void* orow = out.data();
  const RowBatch batch{&xr, &orow, 1, 1, DType::f32};
  double t_kernel = 0.0, t_read = 0.0;
  std::size_t next = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    kernels().matmul_rows(batch, w[next]->args(), 0, 0, n);
    benchmark::ClobberMemory();
    t_kernel += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(sum_avx512(buf.ptr, nbw, 8));
    t_read += seconds_since(t0);
    next = (next + 1) % w.size();
  }
  const double iters = static_cast<double>(state.iterations());
  const double weight_rate = w[0]->bytes() * iters / t_kernel;
  const double read_rate = static_cast<double>(nbw * sizeof(float)) * iters / t_read;
  state.counters["weight_GB/s"] = weight_rate * 1e-9;
  state.counters["read_GB/s"] = read_rate * 1e-9;
  state.counters["fraction"] = weight_rate / read_rate;
}
BENCHMARK(BM_DecodeVsBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
#endif

#if defined(MXFP4_BENCH_OPENBLAS)
// M = 512, N = K = 4096 against OpenBLAS sgemm (one thread) on the dequantized weight.
void BM_PrefillVsSgemm(benchmark::State& state) {
  const int64_t m = 512, n = 4096, k = 4096;
  const Weight w(n, k, 100);
  const std::vector<float> wf = dequantized(w);
  const std::vector<float> x = random_floats(static_cast<std::size_t>(m * k), 1);
  std::vector<float> out(static_cast<std::size_t>(m * n)), c(out.size());
  std::vector<const void*> xr(static_cast<std::size_t>(m));
  std::vector<void*> orow(static_cast<std::size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    xr[static_cast<std::size_t>(i)] = x.data() + i * k;
    orow[static_cast<std::size_t>(i)] = out.data() + i * n;
  }
  const RowBatch batch{xr.data(), orow.data(), m, m, DType::f32};
  double t_kernel = 0.0, t_blas = 0.0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    kernels().matmul_rows(batch, w.args(), 0, 0, n);
    benchmark::ClobberMemory();
    t_kernel += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k), wf.data(),
                static_cast<int>(k), 0.0f, c.data(), static_cast<int>(n));
    benchmark::ClobberMemory();
    t_blas += seconds_since(t0);
  }
  const double flops =
      2.0 * static_cast<double>(m * n * k) * static_cast<double>(state.iterations());
  state.counters["GFLOP/s"] = flops / t_kernel * 1e-9;
  state.counters["sgemm_GFLOP/s"] = flops / t_blas * 1e-9;
  state.counters["ratio"] = t_blas / t_kernel;
}
BENCHMARK(BM_PrefillVsSgemm)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
#endif

// ---- quantize / dequantize ---------------------------------------------------------------------

void BM_Quantize(benchmark::State& state) {
  const auto rule = static_cast<mxfp4::ScaleRule>(state.range(0));
  const int64_t rows = 2048, k = 4096;
  const std::vector<float> wf = random_floats(static_cast<std::size_t>(rows * k), 3);
  std::vector<uint8_t> blocks(static_cast<std::size_t>(rows * k / 2));
  std::vector<uint8_t> scales(static_cast<std::size_t>(rows * k / 32));
  const mxfp4::detail::QuantizeArgs a{wf.data(),     DType::f32,    rows, k,
                                      blocks.data(), scales.data(), rule, nullptr};
  for (auto _ : state) {
    benchmark::DoNotOptimize(kernels().quantize_rows(a, 0, rows));
    benchmark::ClobberMemory();
  }
  state.counters["input_GB/s"] = benchmark::Counter(
      static_cast<double>(wf.size() * 4) * static_cast<double>(state.iterations()) * 1e-9,
      benchmark::Counter::kIsRate);
}
// floor, ceil, even, mse (the default), mistralrs
BENCHMARK(BM_Quantize)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Dequantize(benchmark::State& state) {
  const auto dt = static_cast<DType>(state.range(0));
  const int64_t rows = 2048, k = 4096;
  const Weight w(rows, k, 5);
  std::vector<uint8_t> out(static_cast<std::size_t>(rows * k) * (dt == DType::f32 ? 4 : 2));
  const mxfp4::detail::DequantizeArgs a{w.blocks.data(), w.scales.data(), rows, k, out.data(), dt,
                                        nullptr};
  for (auto _ : state) {
    kernels().dequantize_rows(a, 0, rows);
    benchmark::ClobberMemory();
  }
  state.counters["output_GB/s"] = benchmark::Counter(
      static_cast<double>(out.size()) * static_cast<double>(state.iterations()) * 1e-9,
      benchmark::Counter::kIsRate);
}
// f32, f16, bf16
BENCHMARK(BM_Dequantize)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

#if defined(__x86_64__)
// F16C (CPUID 1, ECX bit 29) and BMI2 (CPUID 7, EBX bit 8), read directly: clang 14's
// __builtin_cpu_supports knows neither name.
bool cpu_has_f16c_bmi2() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & (1u << 29)) == 0) return false;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (b & (1u << 8)) != 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::string isa;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--isa=", 0) == 0) {
      isa = a.substr(6);
    } else {
      args.push_back(argv[i]);
    }
  }
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c_bmi2();
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vbmi");
  if (isa.empty()) isa = avx512 ? "avx512" : avx2 ? "avx2" : "scalar";
  if ((isa == "avx512" && !avx512) || (isa == "avx2" && !avx2)) {
    std::fprintf(stderr, "this CPU cannot run --isa=%s\n", isa.c_str());
    return 2;
  }
  g_kernels = isa == "avx512" ? &mxfp4::cpu::avx512_kernels()
              : isa == "avx2" ? &mxfp4::cpu::avx2_kernels()
                              : &mxfp4::cpu::scalar_kernels();
#else
  g_kernels = &mxfp4::cpu::scalar_kernels();
#endif
#if defined(MXFP4_BENCH_OPENBLAS)
  // OpenBLAS starts its worker threads when it loads; idle, they spin and yield on the cores the
  // benchmarks run on. One thread: no workers.
  openblas_set_num_threads(1);
#endif
  benchmark::AddCustomContext("kernels", g_kernels->name);
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
