// Google Benchmark of the public API (linear_into, gather_linear_into, quantize_into) on CPU
// tensors: the dispatched CPU backend with its thread pool. In the same run, the baselines and
// floors it is compared against (DESIGN.md, "Performance method"):
//   read_bandwidth/threads:T   the machine's streaming read bandwidth: T threads each summing
//                              their half of a 1 GiB f32 array as 8 sequential streams read side
//                              by side, with AVX-512 loads (AVX2 where the CPU lacks AVX-512)
//   .../sgemm                  OpenBLAS cblas_sgemm on the dequantized f32 weight, with
//                              OpenBLAS's own threads (as many as the library's pool); left out
//                              when CMake did not find OpenBLAS
//   .../reference              the scalar reference kernels (src/reference: the seed's algorithm,
//                              one thread, f64 accumulation) called directly; slow (~0.8 GFLOP/s),
//                              so only for M = 1 and 8 (and M = 64 on 4096x4096) and gather T = 1
//   .../mxfp4-<isa>            the public API, with the CPU backend forced to that instruction set
//                              (set_cpu_isa); without a suffix, the best one this CPU runs
//   .../mxfp4-int8[-<isa>]     the same with RunOptions::precision = int8_activations
//   ratio/<shape>-M=<m>/int8_vs_exact
//                              int8 and exact calls alternated in every iteration: their weight
//                              GB/s and speedup = exact time / int8 time
// Counters (decimal units, per second of wall time):
//   weight_GB/s   MXFP4 bytes of the weights a call touches (K/2 code + K/32 scale bytes per row,
//                 4.25 bits per weight), whatever the kernel actually reads (sgemm reads f32)
//   GFLOP/s       2 * rows * N * K per call
//   input_GB/s    quantize: f32 input read; read_GB/s: bytes summed
// Data is random (never zeros). Dense weights rotate over copies totalling > 128 MB (the LLC is
// 48 MiB on the development machine); gather_linear cycles through 64 random routings of
// distinct experts per token (uniform). Asserts nothing about time.
//
// Options besides Google Benchmark's: --threads=N (set_num_threads; default 0 = every CPU).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "core/kernel_args.hpp"
#include "core/weight_args.hpp"
#include "mxfp4/cpu.hpp"
#include "mxfp4/mxfp4.hpp"
#include "reference/reference.hpp"

#if defined(MXFP4_BENCH_OPENBLAS)
#include <cblas.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using mxfp4::CpuIsa;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Tensor;
using mxfp4::bench::copies_for;
using mxfp4::bench::packed_bytes;
using mxfp4::bench::random_f32;
using mxfp4::bench::random_weight;
using mxfp4::bench::Rng;
using mxfp4::bench::rotated_weights;
using mxfp4::bench::set_rate;
using mxfp4::detail::weight_args;
using std::int64_t;

void set_linear_counters(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  set_rate(state, "weight_GB/s", packed_bytes(n, k) * 1e-9);
  set_rate(state, "GFLOP/s",
           2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) * 1e-9);
}

// The CPU backend's instruction set for one benchmark, restored afterwards.
class IsaScope {
 public:
  explicit IsaScope(std::optional<CpuIsa> isa) : previous_(mxfp4::cpu_isa()) {
    if (isa) mxfp4::set_cpu_isa(*isa);
  }
  ~IsaScope() { mxfp4::set_cpu_isa(previous_); }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  CpuIsa previous_;
};

// ---- Streaming read bandwidth ------------------------------------------------------------------

constexpr int kStreams = 8;

#if defined(__x86_64__)
// Sums n floats (n a multiple of 32 * kStreams) read as kStreams equal parts side by side.
__attribute__((target("avx512f"))) float sum_avx512(const float* p, std::size_t n) {
  const std::size_t part = n / kStreams;
  __m512 acc[kStreams][2];
  for (auto& a : acc)
    a[0] = a[1] = _mm512_setzero_ps();
  for (std::size_t i = 0; i < part; i += 32) {
    for (int s = 0; s < kStreams; ++s) {
      const float* q = p + static_cast<std::size_t>(s) * part + i;
      acc[s][0] = _mm512_add_ps(acc[s][0], _mm512_loadu_ps(q));
      acc[s][1] = _mm512_add_ps(acc[s][1], _mm512_loadu_ps(q + 16));
    }
  }
  __m512 t = _mm512_setzero_ps();
  for (const auto& a : acc)
    t = _mm512_add_ps(t, _mm512_add_ps(a[0], a[1]));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, t);
  float sum = 0.0f;
  for (const float v : lanes)
    sum += v;
  return sum;
}

__attribute__((target("avx2"))) float sum_avx2(const float* p, std::size_t n) {
  const std::size_t part = n / kStreams;
  __m256 acc[kStreams][2];
  for (auto& a : acc)
    a[0] = a[1] = _mm256_setzero_ps();
  for (std::size_t i = 0; i < part; i += 16) {
    for (int s = 0; s < kStreams; ++s) {
      const float* q = p + static_cast<std::size_t>(s) * part + i;
      acc[s][0] = _mm256_add_ps(acc[s][0], _mm256_loadu_ps(q));
      acc[s][1] = _mm256_add_ps(acc[s][1], _mm256_loadu_ps(q + 8));
    }
  }
  __m256 t = _mm256_setzero_ps();
  for (const auto& a : acc)
    t = _mm256_add_ps(t, _mm256_add_ps(a[0], a[1]));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, t);
  float sum = 0.0f;
  for (const float v : lanes)
    sum += v;
  return sum;
}
#endif

float sum_scalar(const float* p, std::size_t n) {
  float acc[16] = {};
  for (std::size_t i = 0; i < n; i += 16)
    for (int j = 0; j < 16; ++j)
      acc[j] += p[i + static_cast<std::size_t>(j)];
  float sum = 0.0f;
  for (const float v : acc)
    sum += v;
  return sum;
}

using SumFn = float (*)(const float*, std::size_t);

SumFn best_sum(const char** name) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) {
    *name = "avx512";
    return sum_avx512;
  }
  if (__builtin_cpu_supports("avx2")) {
    *name = "avx2";
    return sum_avx2;
  }
#endif
  *name = "scalar";
  return sum_scalar;
}

// A buffer of n random non-zero floats (every page written).
std::unique_ptr<float[]> random_buffer(std::size_t n) {
  std::unique_ptr<float[]> buf(new float[n]);
  Rng rng(7);
  for (std::size_t i = 0; i < n; ++i)
    buf[i] = static_cast<float>((rng.next() >> 40) + 1) * 0x1.0p-24f;
  return buf;
}

// Sums n floats with `threads` threads, each an equal share.
float read_parallel(SumFn sum, const float* p, std::size_t n, std::size_t threads) {
  const std::size_t share = n / threads;
  std::vector<float> sums(threads);
  std::vector<std::thread> workers;
  for (std::size_t t = 1; t < threads; ++t)
    workers.emplace_back([&, t] { sums[t] = sum(p + t * share, share); });
  sums[0] = sum(p, share);
  for (auto& w : workers)
    w.join();
  float total = 0.0f;
  for (const float v : sums)
    total += v;
  return total;
}

// Arg: threads, each summing an equal share of a 1 GiB array.
void bm_read_bandwidth(benchmark::State& state) {
  const auto threads = static_cast<std::size_t>(state.range(0));
  const std::size_t n = std::size_t{1} << 28;  // 1 GiB of f32
  const std::unique_ptr<float[]> buf = random_buffer(n);
  const char* isa = nullptr;
  const SumFn sum = best_sum(&isa);
  for (auto _ : state)
    benchmark::DoNotOptimize(read_parallel(sum, buf.get(), n, threads));
  set_rate(state, "read_GB/s", static_cast<double>(n * sizeof(float)) * 1e-9);
  state.SetLabel(isa);
}

// ---- quantize (public API) ---------------------------------------------------------------------

// Arg: threads.
void bm_quantize(benchmark::State& state, mxfp4::ScaleRule rule) {
  const int64_t rows = 4096, k = 4096;
  const Tensor input = random_f32({rows, k}, 1);
  Tensor blocks = Tensor::empty({rows, k / 2}, DType::u8);
  Tensor scales = Tensor::empty({rows, k / mxfp4::kBlockSize}, DType::u8);
  mxfp4::QuantizeOptions options;
  options.rule = rule;
  const int previous = mxfp4::num_threads();
  mxfp4::set_num_threads(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    mxfp4::quantize_into(input, blocks, scales, options);
    benchmark::DoNotOptimize(blocks.data());
    benchmark::ClobberMemory();
  }
  mxfp4::set_num_threads(previous);
  set_rate(state, "input_GB/s", static_cast<double>(input.nbytes()) * 1e-9);
}

// ---- linear ------------------------------------------------------------------------------------

void bm_linear(benchmark::State& state, int64_t m, int64_t n, int64_t k, std::optional<CpuIsa> isa,
               mxfp4::Precision precision) {
  const std::vector<Mxfp4Weight>& weights = rotated_weights(n, k);
  const Tensor x = random_f32({m, k}, 3);
  Tensor out = Tensor::empty({m, n}, DType::f32);
  const IsaScope scope(isa);
  mxfp4::RunOptions run;
  run.precision = precision;
  std::size_t next = 0;
  for (auto _ : state) {
    mxfp4::linear_into(x, weights[next], out, run);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    next = next + 1 == weights.size() ? 0 : next + 1;
  }
  set_linear_counters(state, m, n, k);
  state.SetLabel(mxfp4::cpu_isa_name(mxfp4::cpu_isa()));
}

void bm_linear_reference(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  const std::vector<Mxfp4Weight>& weights = rotated_weights(n, k);
  const Tensor x = random_f32({m, k}, 3);
  Tensor out = Tensor::empty({m, n}, DType::f32);
  std::size_t next = 0;
  for (auto _ : state) {
    const mxfp4::detail::LinearArgs args{x.data(),   DType::f32, m, weight_args(weights[next]),
                                         out.data(), nullptr};
    mxfp4::reference::linear(args);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    next = next + 1 == weights.size() ? 0 : next + 1;
  }
  set_linear_counters(state, m, n, k);
}

#if defined(MXFP4_BENCH_OPENBLAS)
// Copies of the dequantized f32 weight, together > 128 MB, built once per shape.
const std::vector<Tensor>& rotated_f32_weights(int64_t n, int64_t k) {
  static std::map<std::pair<int64_t, int64_t>, std::vector<Tensor>> cache;
  std::vector<Tensor>& weights = cache[{n, k}];
  if (weights.empty()) {
    const std::vector<Mxfp4Weight>& packed = rotated_weights(n, k);
    const std::size_t copies =
        std::min(packed.size(), copies_for(4.0 * static_cast<double>(n) * static_cast<double>(k)));
    for (std::size_t c = 0; c < copies; ++c)
      weights.push_back(packed[c].dequantize(DType::f32));
  }
  return weights;
}

// C[M, N] = X[M, K] W[N, K]^T on the dequantized weight, with OpenBLAS's threads.
void bm_sgemm(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  const std::vector<Tensor>& weights = rotated_f32_weights(n, k);
  const Tensor x = random_f32({m, k}, 3);
  Tensor out = Tensor::empty({m, n}, DType::f32);
  openblas_set_num_threads(mxfp4::num_threads());
  std::size_t next = 0;
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, x.data_as<float>(), static_cast<int>(k),
                weights[next].data_as<float>(), static_cast<int>(k), 0.0f, out.data_as<float>(),
                static_cast<int>(n));
    benchmark::ClobberMemory();
    next = next + 1 == weights.size() ? 0 : next + 1;
  }
  openblas_set_num_threads(1);
  set_linear_counters(state, m, n, k);
  state.SetLabel(std::to_string(weights.size()) + " f32 copies");
}
#endif

// ---- the targets as ratios, both sides timed back to back in every iteration ------------------
// Other tenants of a shared machine change its speed from one second to the next; alternating
// the two sides of a comparison within each iteration keeps their ratio steady.

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// M = 1 on the Llama-70B up weight (two copies, 250 MB) against the read bandwidth of as many
// threads as the library's pool (a 512 MiB array).
void bm_decode_vs_bandwidth(benchmark::State& state) {
  const int64_t n = 28672, k = 8192;
  const std::vector<Mxfp4Weight>& weights = rotated_weights(n, k);
  const Tensor x = random_f32({1, k}, 3);
  Tensor out = Tensor::empty({1, n}, DType::f32);
  const std::size_t nbw = std::size_t{1} << 27;
  const std::unique_ptr<float[]> buf = random_buffer(nbw);
  const char* isa = nullptr;
  const SumFn sum = best_sum(&isa);
  const auto threads = static_cast<std::size_t>(mxfp4::num_threads());
  double t_kernel = 0.0, t_read = 0.0;
  std::size_t next = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    mxfp4::linear_into(x, weights[next], out);
    benchmark::ClobberMemory();
    t_kernel += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(read_parallel(sum, buf.get(), nbw, threads));
    t_read += seconds_since(t0);
    next = next + 1 == weights.size() ? 0 : next + 1;
  }
  const double iters = static_cast<double>(state.iterations());
  const double weight_rate = packed_bytes(n, k) * iters / t_kernel;
  const double read_rate = static_cast<double>(nbw * sizeof(float)) * iters / t_read;
  state.counters["weight_GB/s"] = weight_rate * 1e-9;
  state.counters["read_GB/s"] = read_rate * 1e-9;
  state.counters["fraction"] = weight_rate / read_rate;
}

// RunOptions::precision = int8_activations against exact, both timed back to back in every
// iteration on the same rotated weights (each call its own copy), so that a noisy machine moves
// them together. speedup = exact time / int8 time.
void bm_int8_vs_exact(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  const std::vector<Mxfp4Weight>& weights = rotated_weights(n, k);
  const Tensor x = random_f32({m, k}, 3);
  Tensor out = Tensor::empty({m, n}, DType::f32);
  mxfp4::RunOptions int8;
  int8.precision = mxfp4::Precision::int8_activations;
  double t_exact = 0.0, t_int8 = 0.0;
  std::size_t next = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    mxfp4::linear_into(x, weights[next], out);
    benchmark::ClobberMemory();
    t_exact += seconds_since(t0);
    next = next + 1 == weights.size() ? 0 : next + 1;
    t0 = std::chrono::steady_clock::now();
    mxfp4::linear_into(x, weights[next], out, int8);
    benchmark::ClobberMemory();
    t_int8 += seconds_since(t0);
    next = next + 1 == weights.size() ? 0 : next + 1;
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["exact_GB/s"] = packed_bytes(n, k) * iters / t_exact * 1e-9;
  state.counters["int8_GB/s"] = packed_bytes(n, k) * iters / t_int8 * 1e-9;
  state.counters["speedup"] = t_exact / t_int8;
}

#if defined(MXFP4_BENCH_OPENBLAS)
// M = 512 on 4096x4096 against OpenBLAS sgemm (as many threads as the pool) on the dequantized
// weight.
void bm_prefill_vs_sgemm(benchmark::State& state) {
  const int64_t m = 512, n = 4096, k = 4096;
  const Mxfp4Weight& w = rotated_weights(n, k)[0];
  const Tensor wf = w.dequantize(DType::f32);
  const Tensor x = random_f32({m, k}, 3);
  Tensor out = Tensor::empty({m, n}, DType::f32);
  Tensor c = Tensor::empty({m, n}, DType::f32);
  openblas_set_num_threads(mxfp4::num_threads());
  double t_kernel = 0.0, t_blas = 0.0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    mxfp4::linear_into(x, w, out);
    benchmark::ClobberMemory();
    t_kernel += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, x.data_as<float>(), static_cast<int>(k),
                wf.data_as<float>(), static_cast<int>(k), 0.0f, c.data_as<float>(),
                static_cast<int>(n));
    benchmark::ClobberMemory();
    t_blas += seconds_since(t0);
  }
  openblas_set_num_threads(1);
  const double flops =
      2.0 * static_cast<double>(m * n * k) * static_cast<double>(state.iterations());
  state.counters["GFLOP/s"] = flops / t_kernel * 1e-9;
  state.counters["sgemm_GFLOP/s"] = flops / t_blas * 1e-9;
  state.counters["ratio"] = t_blas / t_kernel;
}
#endif

// ---- gather_linear -----------------------------------------------------------------------------

constexpr int64_t kExperts = 32, kTopK = 4, kGatherK = 2880;

const Mxfp4Weight& expert_weight(int64_t n) {
  static std::map<int64_t, Mxfp4Weight> cache;
  Mxfp4Weight& w = cache[n];
  if (!w.defined()) w = random_weight(kExperts, n, kGatherK, true, 4);
  return w;
}

// 64 routings of `tokens` tokens to kTopK distinct experts each (uniform), and the mean number of
// distinct experts a call touches.
struct Routings {
  std::vector<Tensor> indices;
  double mean_experts = 0.0;
};

Routings make_routings(int64_t tokens) {
  constexpr int kChoices = 64;
  Routings r;
  Rng rng(5);
  for (int c = 0; c < kChoices; ++c) {
    Tensor idx = Tensor::empty({tokens, kTopK}, DType::u32);
    auto* p = idx.data_as<std::uint32_t>();
    std::vector<bool> used(kExperts, false);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t s = 0; s < kTopK; ++s) {
        std::uint32_t e;
        bool repeated;
        do {
          e = static_cast<std::uint32_t>(rng.next() % static_cast<std::uint64_t>(kExperts));
          repeated = false;
          for (int64_t j = 0; j < s; ++j)
            repeated = repeated || p[t * kTopK + j] == e;
        } while (repeated);
        p[t * kTopK + s] = e;
        used[e] = true;
      }
    }
    r.mean_experts += static_cast<double>(std::count(used.begin(), used.end(), true)) / kChoices;
    r.indices.push_back(idx);
  }
  return r;
}

void set_gather_counters(benchmark::State& state, const Routings& r, int64_t tokens, int64_t n) {
  set_rate(state, "weight_GB/s", r.mean_experts * packed_bytes(n, kGatherK) * 1e-9);
  set_rate(state, "GFLOP/s",
           2.0 * static_cast<double>(tokens * kTopK) * static_cast<double>(n) *
               static_cast<double>(kGatherK) * 1e-9);
  state.counters["experts/call"] = r.mean_experts;
}

void bm_gather_linear(benchmark::State& state, int64_t n, int64_t tokens, bool reference,
                      mxfp4::Precision precision) {
  mxfp4::RunOptions run;
  run.precision = precision;
  const Mxfp4Weight& w = expert_weight(n);
  const Routings r = make_routings(tokens);
  const Tensor x = random_f32({tokens, kGatherK}, 6);
  Tensor out = Tensor::empty({tokens, kTopK, n}, DType::f32);
  std::size_t next = 0;
  for (auto _ : state) {
    const Tensor& idx = r.indices[next];
    if (reference) {
      const mxfp4::detail::GatherLinearArgs args{x.data(),   DType::f32, false,      tokens,
                                                 kTopK,      idx.data(), DType::u32, weight_args(w),
                                                 out.data(), nullptr};
      mxfp4::reference::gather_linear(args);
    } else {
      mxfp4::gather_linear_into(x, idx, w, out, run);
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    next = next + 1 == r.indices.size() ? 0 : next + 1;
  }
  set_gather_counters(state, r, tokens, n);
}

// ---- registration ------------------------------------------------------------------------------

struct Shape {
  const char* name;
  int64_t n, k;
};

constexpr Shape kShapes[] = {
    {"4096x4096", 4096, 4096},
    {"gptoss-gate_up-5760x2880", 5760, 2880},
    {"gptoss-down-2880x2880", 2880, 2880},
    {"llama70b-up-28672x8192", 28672, 8192},
};
constexpr int64_t kMs[] = {1, 8, 64, 512};
constexpr mxfp4::Precision kExact = mxfp4::Precision::exact;
constexpr mxfp4::Precision kInt8 = mxfp4::Precision::int8_activations;

benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b) {
  return b->MinTime(0.5)->UseRealTime()->Unit(benchmark::kMillisecond);
}

std::string linear_name(const Shape& s, int64_t m, const std::string& who) {
  return "linear/" + std::string(s.name) + "/M=" + std::to_string(m) + "/" + who;
}

void register_all() {
  for (const int64_t t : {1, 2})
    configure(benchmark::RegisterBenchmark("read_bandwidth", bm_read_bandwidth)->Arg(t));
  configure(benchmark::RegisterBenchmark("quantize/f32/4096x4096/mse(default)", bm_quantize,
                                         mxfp4::ScaleRule::mse)
                ->ArgName("threads")
                ->Arg(1)
                ->Arg(2));

  // The public API at the best instruction set.
  for (const Shape& s : kShapes)
    for (const int64_t m : kMs)
      configure(benchmark::RegisterBenchmark(linear_name(s, m, "mxfp4").c_str(), bm_linear, m, s.n,
                                             s.k, std::nullopt, kExact));
  for (const int64_t t : {int64_t{1}, int64_t{64}})
    for (const int64_t n : {int64_t{5760}, int64_t{2880}}) {
      const std::string name = "gather_linear/gptoss-E=32-top4/N=" + std::to_string(n) +
                               "/K=2880/T=" + std::to_string(t) + "/mxfp4";
      configure(benchmark::RegisterBenchmark(name.c_str(), bm_gather_linear, n, t, false, kExact));
    }

  // RunOptions::precision = int8_activations (docs/cpu-int8.md), at decode sizes.
  for (const Shape& s : kShapes)
    for (const int64_t m : {int64_t{1}, int64_t{8}})
      configure(benchmark::RegisterBenchmark(linear_name(s, m, "mxfp4-int8").c_str(), bm_linear, m,
                                             s.n, s.k, std::nullopt, kInt8));
  for (const int64_t t : {int64_t{1}, int64_t{64}})
    for (const int64_t n : {int64_t{5760}, int64_t{2880}}) {
      const std::string name = "gather_linear/gptoss-E=32-top4/N=" + std::to_string(n) +
                               "/K=2880/T=" + std::to_string(t) + "/mxfp4-int8";
      configure(benchmark::RegisterBenchmark(name.c_str(), bm_gather_linear, n, t, false, kInt8));
    }
  if (CpuIsa::avx2 <= mxfp4::cpu_isa_supported() && CpuIsa::avx2 != mxfp4::cpu_isa_supported()) {
    for (const int64_t m : {int64_t{1}, int64_t{8}})
      configure(benchmark::RegisterBenchmark(linear_name(kShapes[0], m, "mxfp4-int8-avx2").c_str(),
                                             bm_linear, m, kShapes[0].n, kShapes[0].k,
                                             std::optional<CpuIsa>(CpuIsa::avx2), kInt8));
  }

  // Lower instruction sets this CPU runs, on 4096x4096.
  const Shape& sq = kShapes[0];
  for (const CpuIsa isa : {CpuIsa::avx2, CpuIsa::scalar}) {
    if (isa > mxfp4::cpu_isa_supported()) continue;
    for (const int64_t m : {int64_t{1}, int64_t{512}}) {
      const std::string who = std::string("mxfp4-") + mxfp4::cpu_isa_name(isa);
      configure(benchmark::RegisterBenchmark(linear_name(sq, m, who).c_str(), bm_linear, m, sq.n,
                                             sq.k, std::optional<CpuIsa>(isa), kExact));
    }
  }

  // The reference's algorithm (one thread; linear in M, so only small M).
  for (const Shape& s : kShapes)
    for (const int64_t m : {int64_t{1}, int64_t{8}})
      configure(benchmark::RegisterBenchmark(linear_name(s, m, "reference").c_str(),
                                             bm_linear_reference, m, s.n, s.k));
  configure(benchmark::RegisterBenchmark(linear_name(sq, 64, "reference").c_str(),
                                         bm_linear_reference, 64, sq.n, sq.k));
  for (const int64_t n : {int64_t{5760}, int64_t{2880}}) {
    const std::string name =
        "gather_linear/gptoss-E=32-top4/N=" + std::to_string(n) + "/K=2880/T=1/reference";
    configure(benchmark::RegisterBenchmark(name.c_str(), bm_gather_linear, n, 1, true, kExact));
  }

  for (const Shape& s : kShapes)
    for (const int64_t m : {int64_t{1}, int64_t{8}}) {
      const std::string name =
          "ratio/" + std::string(s.name) + "-M=" + std::to_string(m) + "/int8_vs_exact";
      configure(benchmark::RegisterBenchmark(name.c_str(), bm_int8_vs_exact, m, s.n, s.k));
    }

  configure(benchmark::RegisterBenchmark("ratio/llama70b-up-M=1/mxfp4_vs_read_bandwidth",
                                         bm_decode_vs_bandwidth))
      ->MinTime(2.0);

#if defined(MXFP4_BENCH_OPENBLAS)
  // OpenBLAS last: its idle workers spin for a while after each call.
  configure(
      benchmark::RegisterBenchmark("ratio/4096x4096-M=512/mxfp4_vs_sgemm", bm_prefill_vs_sgemm))
      ->MinTime(2.0);
  for (const Shape& s : kShapes)
    for (const int64_t m : kMs)
      configure(
          benchmark::RegisterBenchmark(linear_name(s, m, "sgemm").c_str(), bm_sgemm, m, s.n, s.k));
#endif
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  int threads = 0;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--threads=", 0) == 0) {
      threads = std::atoi(a.c_str() + 10);
    } else {
      args.push_back(argv[i]);
    }
  }
  mxfp4::set_num_threads(threads);
#if defined(MXFP4_BENCH_OPENBLAS)
  openblas_set_num_threads(1);
  benchmark::AddCustomContext("openblas", openblas_get_config());
#endif
  benchmark::AddCustomContext("mxfp4_threads", std::to_string(mxfp4::num_threads()));
  benchmark::AddCustomContext("mxfp4_cpu_isa", mxfp4::cpu_isa_name(mxfp4::cpu_isa()));
  register_all();
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
