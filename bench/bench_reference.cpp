// Google Benchmark of the scalar reference kernels (src/reference: the seed's algorithm, one
// thread, one block at a time, f64 accumulation), called directly with the kernel argument structs
// of src/core/kernel_args.hpp. The public API dispatches to the optimized CPU backend instead
// (bench/bench_cpu.cpp measures that); these numbers are the baseline of the reference's
// algorithm that the optimized kernels are compared against. Tensors are only used as storage;
// their shapes are valid by construction. Asserts nothing about time.
//
// Counters (decimal units; rates are per second of wall time):
//   bytes_per_second  quantize: f32 input read; dequantize: output written
//   items_per_second  weights processed (quantize, dequantize)
//   weight_bytes/s    linear, gather_linear: MXFP4 bytes of the weights touched (4.25 bits each)
//   FLOP/s            linear, gather_linear: 2 * rows * N * K per call
//
// Data is random (never all zeros). Linear weights are rotated over several copies whose total
// exceeds the last-level cache; gather_linear cycles through different expert choices.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "core/kernel_args.hpp"
#include "core/weight_args.hpp"
#include "mxfp4/mxfp4.hpp"
#include "reference/reference.hpp"

namespace {

using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Tensor;
using mxfp4::bench::packed_bytes;
using mxfp4::bench::random_f32;
using mxfp4::bench::random_weight;
using mxfp4::bench::Rng;
using mxfp4::bench::rotated_weights;
using mxfp4::bench::set_rate;
using mxfp4::detail::weight_args;

// ---- Shared inputs, built once -----------------------------------------------------------------

constexpr std::int64_t kSquare = 4096;

const Tensor& square_f32_input() {
  static const Tensor t = random_f32({kSquare, kSquare}, 1);
  return t;
}

const Mxfp4Weight& square_weight() {
  static const Mxfp4Weight w = random_weight(0, kSquare, kSquare, false, 2);
  return w;
}

// ---- Benchmarks --------------------------------------------------------------------------------

void bm_quantize(benchmark::State& state, mxfp4::ScaleRule rule) {
  const Tensor& input = square_f32_input();
  Tensor blocks = Tensor::empty({kSquare, kSquare / 2}, DType::u8);
  Tensor scales = Tensor::empty({kSquare, kSquare / mxfp4::kBlockSize}, DType::u8);
  const mxfp4::detail::QuantizeArgs args{input.data(),
                                         DType::f32,
                                         kSquare,
                                         kSquare,
                                         blocks.data_as<std::uint8_t>(),
                                         scales.data_as<std::uint8_t>(),
                                         rule,
                                         nullptr};
  for (auto _ : state) {
    benchmark::DoNotOptimize(mxfp4::reference::quantize(args));
    benchmark::DoNotOptimize(blocks.data());
    benchmark::ClobberMemory();
  }
  const auto iters = static_cast<std::int64_t>(state.iterations());
  state.SetBytesProcessed(iters * static_cast<std::int64_t>(input.nbytes()));
  state.SetItemsProcessed(iters * input.numel());
}

void bm_dequantize(benchmark::State& state, DType dtype) {
  const Mxfp4Weight& w = square_weight();
  Tensor out = Tensor::empty({kSquare, kSquare}, dtype);
  const mxfp4::detail::DequantizeArgs args{w.blocks().data_as<std::uint8_t>(),
                                           w.scales().data_as<std::uint8_t>(),
                                           kSquare,
                                           kSquare,
                                           out.data(),
                                           dtype,
                                           nullptr};
  for (auto _ : state) {
    mxfp4::reference::dequantize(args);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const auto iters = static_cast<std::int64_t>(state.iterations());
  state.SetBytesProcessed(iters * static_cast<std::int64_t>(out.nbytes()));
  state.SetItemsProcessed(iters * out.numel());
  set_rate(state, "weight_bytes/s", packed_bytes(kSquare, kSquare));
}

void bm_linear(benchmark::State& state, std::int64_t m, std::int64_t n, std::int64_t k) {
  const std::vector<Mxfp4Weight>& weights = rotated_weights(n, k);
  const std::size_t copies = weights.size();
  const Tensor x = random_f32({m, k}, 3);
  Tensor out = Tensor::empty({m, n}, DType::f32);
  std::size_t next = 0;
  for (auto _ : state) {
    const mxfp4::detail::LinearArgs args{x.data(),   DType::f32, m, weight_args(weights[next]),
                                         out.data(), nullptr};
    mxfp4::reference::linear(args);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    next = next + 1 == copies ? 0 : next + 1;
  }
  set_rate(state, "weight_bytes/s", packed_bytes(n, k));
  set_rate(state, "FLOP/s", 2.0 * static_cast<double>(m * n * k));
}

void bm_gather_linear(benchmark::State& state, std::int64_t experts, std::int64_t n, std::int64_t k,
                      std::int64_t topk, std::int64_t tokens) {
  static const Mxfp4Weight w = random_weight(experts, n, k, true, 4);
  // Different expert choices per call (distinct within a token), cycled.
  constexpr int kChoices = 64;
  std::vector<Tensor> indices;
  Rng rng(5);
  for (int c = 0; c < kChoices; ++c) {
    Tensor idx = Tensor::empty({tokens, topk}, DType::u32);
    auto* p = idx.data_as<std::uint32_t>();
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t s = 0; s < topk; ++s) {
        std::uint32_t e;
        bool repeated;
        do {
          e = static_cast<std::uint32_t>(rng.next() % static_cast<std::uint64_t>(experts));
          repeated = false;
          for (std::int64_t j = 0; j < s; ++j)
            repeated = repeated || p[t * topk + j] == e;
        } while (repeated);
        p[t * topk + s] = e;
      }
    }
    indices.push_back(idx);
  }
  const Tensor x = random_f32({tokens, k}, 6);
  Tensor out = Tensor::empty({tokens, topk, n}, DType::f32);
  int next = 0;
  for (auto _ : state) {
    const mxfp4::detail::GatherLinearArgs args{
        x.data(),   DType::f32,     false,
        tokens,     topk,           indices[static_cast<std::size_t>(next)].data(),
        DType::u32, weight_args(w), out.data(),
        nullptr};
    mxfp4::reference::gather_linear(args);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    next = next + 1 == kChoices ? 0 : next + 1;
  }
  // With T = 1 every selected expert is distinct, so each slot touches a whole expert matrix.
  const double slots = static_cast<double>(tokens * topk);
  set_rate(state, "weight_bytes/s", slots * packed_bytes(n, k));
  set_rate(state, "FLOP/s", 2.0 * slots * static_cast<double>(n * k));
}

// Short runs: the reference is slow, and a default run should stay within about two minutes.
constexpr double kMinTime = 1.0;

void configure(benchmark::internal::Benchmark* b) {
  b->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMillisecond);
}

void register_all() {
  using mxfp4::ScaleRule;
  for (ScaleRule rule :
       {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse, ScaleRule::mistralrs}) {
    std::string name = std::string("quantize/f32/4096x4096/") + mxfp4::scale_rule_name(rule);
    if (rule == mxfp4::kDefaultScaleRule) name += "(default)";
    configure(benchmark::RegisterBenchmark(name.c_str(), bm_quantize, rule));
  }
  configure(benchmark::RegisterBenchmark("dequantize/4096x4096/f32", bm_dequantize, DType::f32));
  configure(benchmark::RegisterBenchmark("dequantize/4096x4096/bf16", bm_dequantize, DType::bf16));
  configure(benchmark::RegisterBenchmark("linear/f32/M=1/N=4096/K=4096", bm_linear, 1, 4096, 4096));
  configure(benchmark::RegisterBenchmark("linear/f32/M=8/N=4096/K=4096", bm_linear, 8, 4096, 4096));
  configure(benchmark::RegisterBenchmark("linear/f32/M=1/N=5760/K=2880", bm_linear, 1, 5760, 2880));
  configure(benchmark::RegisterBenchmark("gather_linear/f32/E=32/N=2880/K=2880/top4/T=1",
                                         bm_gather_linear, 32, 2880, 2880, 4, 1));
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
