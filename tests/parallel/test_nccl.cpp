// The NCCL layers on several GPUs, one process per GPU (scripts/gpu-check-multi launches it):
// column-parallel, row-parallel, an MLP of both and expert-parallel MoE against the single-device
// result on the same GPU, then (with --bench) timings of a Llama-70B MLP and a GPT-OSS-120b MoE
// layer. Prints one "PASS <case>" or "FAIL <case>: why" line per case and rank; exits 1 when a
// case failed, 2 on bad arguments, 3 when the set-up (CUDA, NCCL) failed.
//
//   test_nccl --rank R --ranks N --id-file PATH [--work-dir DIR] [--bench] [--bench-only]
//
// Rank 0 creates the NCCL id and writes it to PATH; the others wait for it there.
#include <cuda_runtime.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../test_numbers.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/parallel.hpp"
#include "mxfp4/parallel_nccl.hpp"

namespace mp = mxfp4::parallel;
using mxfp4::Device;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;
using mxfp4::test::random_uniform;

namespace {

struct Args {
  int rank = -1;
  int ranks = 0;
  std::string id_file;
  std::string work_dir = std::filesystem::temp_directory_path().string();
  bool bench = false;
  bool tests = true;
};

Device gpu(const mp::NcclCommunicator& comm) {
  return Device::cuda(comm.device());
}

// Random bytes in [lo, lo + span) (splitmix64), fast enough for gigabytes of weights.
Tensor random_bytes(const Shape& shape, std::uint64_t seed, unsigned lo, unsigned span) {
  Tensor t = Tensor::empty(shape, DType::u8);
  auto* p = static_cast<std::uint8_t*>(t.data());
  std::uint64_t state = seed;
  const auto n = static_cast<std::size_t>(t.numel());
  for (std::size_t i = 0; i < n; i += 8) {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    for (std::size_t j = 0; j < 8 && i + j < n; ++j) {
      const auto byte = static_cast<unsigned>((z >> (8 * j)) & 0xFF);
      p[i + j] = static_cast<std::uint8_t>(span >= 256 ? byte : lo + byte % span);
    }
  }
  return t;
}

// Sharded against single-device results: the largest error relative to the largest reference
// magnitude, and the relative L2 error. Both paths round to the same dtype; the sharded one
// also rounds partial sums (row-parallel), so the bound is a few bf16 ulps of the output scale.
std::string compare(const Tensor& got, const Tensor& want, double tol) {
  if (got.shape() != want.shape()) {
    return "shape " + mxfp4::to_string(got.shape()) + " != " + mxfp4::to_string(want.shape());
  }
  double max_ref = 0;
  double max_err = 0;
  double err2 = 0;
  double ref2 = 0;
  for (std::int64_t i = 0; i < want.numel(); ++i) {
    const double g = got.item_as_double(i);
    const double w = want.item_as_double(i);
    if (!std::isfinite(g) || !std::isfinite(w)) {
      return "non-finite value at element " + std::to_string(i) + " (got " + std::to_string(g) +
             ", want " + std::to_string(w) + ")";
    }
    max_ref = std::max(max_ref, std::abs(w));
    max_err = std::max(max_err, std::abs(g - w));
    err2 += (g - w) * (g - w);
    ref2 += w * w;
  }
  const double rel_max = max_ref > 0 ? max_err / max_ref : max_err;
  const double rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  if (rel_max > tol || rel_l2 > tol / 3) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "max error %.3g of max |ref| %.3g (rel %.3g), rel L2 %.3g, tol %.3g", max_err,
                  max_ref, rel_max, rel_l2, tol);
    return buf;
  }
  return "";
}

// bf16 outputs: 2^-9 relative per rounding; the row-parallel sum rounds each rank's partial
// product and each step of the all-reduce (up to ~2 R roundings of terms as large as the output).
// A lost, doubled or misplaced shard, or a bias added twice (biases are large here), is off by
// tens of percent.
constexpr double kTol = 3e-2;

class Runner {
 public:
  Runner(mp::NcclCommunicator& comm, std::string work_dir)
      : comm_(comm), work_dir_(std::move(work_dir)) {}

  void run(const std::string& name, const std::function<std::string()>& body) {
    std::printf("RUN %s\n", name.c_str());  // the last one names the case of a hang
    std::fflush(stdout);
    std::string why;
    try {
      why = body();
      mxfp4::synchronize();
    } catch (const std::exception& e) {
      why = std::string("exception: ") + e.what();
    }
    const std::string where =
        " [" + std::to_string(comm_.ranks()) + " ranks, rank " + std::to_string(comm_.rank()) + "]";
    if (why.empty()) {
      std::printf("PASS %s%s\n", name.c_str(), where.c_str());
    } else {
      std::printf("FAIL %s%s: %s\n", name.c_str(), where.c_str(), why.c_str());
      ++failures_;
    }
    std::fflush(stdout);
  }
  int failures() const { return failures_; }
  mp::NcclCommunicator& comm() { return comm_; }
  std::string path(const std::string& name) const {
    return (std::filesystem::path(work_dir_) /
            (name + "-rank" + std::to_string(comm_.rank()) + ".safetensors"))
        .string();
  }

 private:
  mp::NcclCommunicator& comm_;
  std::string work_dir_;
  int failures_ = 0;
};

// A weight with a large bias (so that a bias added twice or lost shows), the same on every rank.
Mxfp4Weight make_weight(const Shape& shape, std::uint32_t seed) {
  mxfp4::QuantizeOptions options;
  options.rule = mxfp4::ScaleRule::floor;  // the fastest rule: only the shards matter here
  return Mxfp4Weight::quantize(
      random_uniform(shape, seed),
      random_uniform(Shape(shape.begin(), shape.end() - 1), seed + 1, 8.0F), options);
}

// Each rank writes the whole weight to a file of its own and reads its shard back from the
// memory-mapped checkpoint.
mxfp4::io::SafetensorsCheckpoint save(const Mxfp4Weight& w, const std::string& file) {
  mxfp4::io::write_safetensors(file, {mxfp4::io::safetensors_item("w.blocks", w.blocks()),
                                      mxfp4::io::safetensors_item("w.scales", w.scales()),
                                      mxfp4::io::safetensors_item("w.bias", *w.bias())});
  return mxfp4::io::SafetensorsCheckpoint::open(file);
}

const mp::CheckpointWeightNames kNames{"w.blocks", "w.scales", "w.bias"};

std::string column_case(Runner& run, std::int64_t m, std::int64_t n, std::int64_t k, DType dtype,
                        bool from_file) {
  auto& comm = run.comm();
  const Mxfp4Weight w = make_weight({n, k}, 100);
  const Mxfp4Weight shard = from_file ? mp::load_column_shard(save(w, run.path("column")), kNames,
                                                              comm.rank(), comm.ranks())
                                      : mp::shard_column(w, comm.rank(), comm.ranks());
  mp::ColumnParallelLinear layer(comm, shard, n);
  const Tensor x = random_uniform({m, k}, 101).to(dtype).to(gpu(comm));
  const Tensor got = layer.forward(x).to(Device::cpu());
  const Tensor want = mxfp4::linear(x, w.to(gpu(comm))).to(Device::cpu());
  return compare(got, want, kTol);
}

std::string row_case(Runner& run, std::int64_t m, std::int64_t n, std::int64_t k, DType dtype,
                     bool from_file) {
  auto& comm = run.comm();
  const Mxfp4Weight w = make_weight({n, k}, 200);
  const Mxfp4Weight shard =
      from_file ? mp::load_row_shard(save(w, run.path("row")), kNames, comm.rank(), comm.ranks())
                : mp::shard_row(w, comm.rank(), comm.ranks());
  mp::RowParallelLinear layer(comm, shard, k);
  const Tensor x = random_uniform({m, k}, 201).to(dtype).to(gpu(comm));
  const Tensor got = layer.forward(layer.slice_input(x)).to(Device::cpu());
  const Tensor want = mxfp4::linear(x, w.to(gpu(comm))).to(Device::cpu());
  return compare(got, want, kTol);
}

std::string mlp_case(Runner& run, std::int64_t m, std::int64_t d, std::int64_t h) {
  auto& comm = run.comm();
  const Mxfp4Weight up = make_weight({h, d}, 300);
  const Mxfp4Weight down = make_weight({d, h}, 310);
  mp::ColumnParallelLinear up_layer(comm, mp::shard_column(up, comm.rank(), comm.ranks()), h);
  mp::RowParallelLinear down_layer(comm, mp::shard_row(down, comm.rank(), comm.ranks()), h);
  const Tensor x = random_uniform({m, d}, 301).to(DType::bf16).to(gpu(comm));
  const Tensor got = down_layer.forward(up_layer.forward_local(x)).to(Device::cpu());
  const Tensor want =
      mxfp4::linear(mxfp4::linear(x, up.to(gpu(comm))), down.to(gpu(comm))).to(Device::cpu());
  return compare(got, want, kTol);
}

// Tokens [t0, t1) of `total` belong to this rank (uneven; a rank may have none).
std::pair<std::int64_t, std::int64_t> my_tokens(std::int64_t total, int rank, int ranks) {
  return {total * rank / ranks, total * (rank + 1) / ranks};
}

enum class Routing { random, all_to_last, all_to_first };

std::string moe_case(Runner& run, std::int64_t total, std::int64_t experts, std::int64_t n,
                     std::int64_t k, std::int64_t topk, Routing routing, bool ids_on_device,
                     bool from_file) {
  auto& comm = run.comm();
  const Mxfp4Weight w = make_weight({experts, n, k}, 400);
  const Mxfp4Weight shard = from_file ? mp::load_expert_shard(save(w, run.path("experts")), kNames,
                                                              comm.rank(), comm.ranks())
                                      : mp::shard_experts(w, comm.rank(), comm.ranks());
  mp::ExpertParallelMoE layer(comm, shard, experts);
  const Tensor x_all = random_uniform({total, k}, 401).to(DType::bf16);
  std::mt19937 rng(402);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(total * topk));
  for (auto& v : ids) {
    v = routing == Routing::random        ? static_cast<std::int32_t>(rng() % experts)
        : routing == Routing::all_to_last ? static_cast<std::int32_t>(experts - 1)
                                          : 0;
  }
  const auto [t0, t1] = my_tokens(total, comm.rank(), comm.ranks());
  const Tensor x = x_all.slice_rows(t0, t1).clone().to(gpu(comm));
  const Tensor idx = Tensor::from_vector(
      std::vector<std::int32_t>(ids.begin() + t0 * topk, ids.begin() + t1 * topk), {t1 - t0, topk});
  const Tensor got = layer.forward(x, ids_on_device ? idx.to(gpu(comm)) : idx).to(Device::cpu());
  if (t1 == t0) {
    return got.shape() == Shape{0, topk, n} ? "" : "shape " + mxfp4::to_string(got.shape());
  }
  const Tensor want = mxfp4::gather_linear(x, idx.to(gpu(comm)), w.to(gpu(comm))).to(Device::cpu());
  return compare(got, want, kTol);
}

void run_tests(Runner& run) {
  const int r = run.comm().ranks();
  const auto rs = [](std::int64_t v) { return std::to_string(v); };
  // Column-parallel: N not divisible by the ranks, decode and GEMM paths, a checkpoint.
  for (const auto& [m, n, k] : std::vector<std::array<std::int64_t, 3>>{
           {1, 1000, 512}, {37, 1000, 512}, {300, 1000, 512}, {64, 9000, 1024}}) {
    run.run("column-parallel M=" + rs(m) + " N=" + rs(n) + " K=" + rs(k) + " bf16",
            [&, m = m, n = n, k = k] { return column_case(run, m, n, k, DType::bf16, false); });
  }
  run.run("column-parallel M=5 N=333 K=256 f32 from checkpoint",
          [&] { return column_case(run, 5, 333, 256, DType::f32, true); });
  // Row-parallel: K/32 = 50 blocks (uneven over 4), bias on rank 0 only.
  for (const std::int64_t m : {1, 37, 300}) {
    run.run("row-parallel M=" + rs(m) + " N=768 K=1600 bf16",
            [&, m] { return row_case(run, m, 768, 1600, DType::bf16, false); });
  }
  run.run("row-parallel M=64 N=8192 K=2048 bf16",
          [&] { return row_case(run, 64, 8192, 2048, DType::bf16, false); });
  run.run("row-parallel M=7 N=200 K=544 f16 from checkpoint",
          [&] { return row_case(run, 7, 200, 544, DType::f16, true); });
  if (2048 / 32 % r == 0) {
    run.run("MLP column(local) + row M=33 D=1024 H=2048",
            [&] { return mlp_case(run, 33, 1024, 2048); });
  }
  // Expert-parallel: E = 6 (uneven over 4), tokens split unevenly, skewed routing, a rank with no
  // tokens, ids on the host and on the device.
  run.run("expert-parallel T=100 E=6 N=256 K=512 top-2 random",
          [&] { return moe_case(run, 100, 6, 256, 512, 2, Routing::random, false, false); });
  run.run("expert-parallel T=300 E=8 N=320 K=256 top-4 random, device ids, from checkpoint",
          [&] { return moe_case(run, 300, 8, 320, 256, 4, Routing::random, true, true); });
  run.run("expert-parallel T=50 E=6 N=128 K=256 top-2 all to the last expert",
          [&] { return moe_case(run, 50, 6, 128, 256, 2, Routing::all_to_last, false, false); });
  run.run("expert-parallel T=50 E=6 N=128 K=256 top-1 all to expert 0",
          [&] { return moe_case(run, 50, 6, 128, 256, 1, Routing::all_to_first, true, false); });
  run.run("expert-parallel T=1 E=4 N=64 K=64 top-2 (ranks without tokens)",
          [&] { return moe_case(run, 1, 4, 64, 64, 2, Routing::random, false, false); });
  run.run("expert-parallel T=2048 E=32 N=512 K=1024 top-4 random",
          [&] { return moe_case(run, 2048, 32, 512, 1024, 4, Routing::random, true, false); });
}

// ---- benchmark ----------------------------------------------------------------------------------

// Mean microseconds per call of f over `iters` calls after `warmup`, the slowest rank's.
double time_us(mp::NcclCommunicator& comm, const std::function<void()>& f, int warmup = 3,
               int iters = 20) {
  for (int i = 0; i < warmup; ++i)
    f();
  mxfp4::synchronize();
  comm.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i)
    f();
  mxfp4::synchronize();
  const auto t1 = std::chrono::steady_clock::now();
  const double us = std::chrono::duration<double, std::micro>(t1 - t0).count() / iters;
  return comm.all_reduce_max(us);
}

void bench_line(mp::NcclCommunicator& comm, const std::string& name, double us, double bytes) {
  if (comm.rank() == 0) {
    std::printf("BENCH|%s|%d|%.1f|%.0f\n", name.c_str(), comm.ranks(), us, bytes);
    std::fflush(stdout);
  }
}

Mxfp4Weight random_mxfp4(const Shape& rows_shape, std::int64_t k, std::uint64_t seed) {
  Shape b = rows_shape;
  b.push_back(k / 2);
  Shape s = rows_shape;
  s.push_back(k / 32);
  // Scales 2^-6 .. 2^-3 keep every product of these random codes well inside bf16.
  return Mxfp4Weight::from_parts(random_bytes(b, seed, 0, 256), random_bytes(s, seed + 7, 121, 4));
}

void run_bench(mp::NcclCommunicator& comm) {
  const Device d = gpu(comm);
  const int r = comm.rank();
  const int ranks = comm.ranks();
  {  // Llama-70B MLP: up [28672, 8192] column-parallel (local), down [8192, 28672] row-parallel.
    const std::int64_t dm = 8192;
    const std::int64_t h = 28672;
    const mp::Range cols = mp::column_shard(h, r, ranks);
    const mp::Range rows = mp::row_shard(h, r, ranks);
    mp::ColumnParallelLinear up(comm, random_mxfp4({cols.size()}, dm, 1000 + r), h);
    mp::RowParallelLinear down(comm, random_mxfp4({dm}, rows.size(), 2000 + r), h);
    for (const std::int64_t m : {16, 2048}) {
      const Tensor x = random_uniform({m, dm}, 3000).to(DType::bf16).to(d);
      const double us = time_us(comm, [&] { down.forward(up.forward_local(x)); });
      const double bytes = comm.all_reduce_sum(static_cast<double>(down.last_bytes().sent)) / ranks;
      bench_line(comm, "Llama-70B MLP M=" + std::to_string(m), us, bytes);
      if (m == 16) {  // the up projection alone with its all-gather (a column-parallel layer)
        const double up_us = time_us(comm, [&] { up.forward(x); });
        const double up_bytes =
            comm.all_reduce_sum(static_cast<double>(up.last_bytes().sent)) / ranks;
        bench_line(comm, "Llama-70B up 28672x8192, all-gathered, M=16", up_us, up_bytes);
      }
      if (ranks == 1) {  // the same weights through the single-device API: the cost of NCCL
        const double direct =
            time_us(comm, [&] { mxfp4::linear(mxfp4::linear(x, up.weight()), down.weight()); });
        bench_line(comm, "Llama-70B MLP M=" + std::to_string(m) + ", 1 GPU without NCCL", direct,
                   0);
      }
    }
  }
  {  // GPT-OSS-120b MoE layer: E=128, N=5760, K=2880, top-4; tokens split evenly across ranks.
    const std::int64_t e = 128;
    const std::int64_t n = 5760;
    const std::int64_t k = 2880;
    const std::int64_t topk = 4;
    const mp::Range mine = mp::expert_shard(e, r, ranks);
    mp::ExpertParallelMoE moe(comm, random_mxfp4({mine.size(), n}, k, 4000 + r), e);
    for (const std::int64_t total : {128, 4096}) {
      const std::int64_t t = total / ranks;
      std::mt19937 rng(5000 + static_cast<unsigned>(r));
      std::vector<std::int32_t> ids(static_cast<std::size_t>(t * topk));
      for (auto& v : ids)
        v = static_cast<std::int32_t>(rng() % e);
      const Tensor idx = Tensor::from_vector(ids, {t, topk}).to(d);
      const Tensor x =
          random_uniform({t, k}, 6000 + static_cast<unsigned>(r)).to(DType::bf16).to(d);
      const double us = time_us(comm, [&] { moe.forward(x, idx); });
      const double bytes = comm.all_reduce_sum(static_cast<double>(moe.last_bytes().sent)) / ranks;
      bench_line(comm, "GPT-OSS-120b MoE T=" + std::to_string(total) + " top-4", us, bytes);
      if (ranks == 1) {
        const double direct = time_us(comm, [&] { mxfp4::gather_linear(x, idx, moe.weight()); });
        bench_line(comm,
                   "GPT-OSS-120b MoE T=" + std::to_string(total) + " top-4, 1 GPU without NCCL",
                   direct, 0);
      }
    }
  }
}

int parse(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(s + " needs a value");
      return argv[++i];
    };
    if (s == "--rank") {
      a.rank = std::stoi(value());
    } else if (s == "--ranks") {
      a.ranks = std::stoi(value());
    } else if (s == "--id-file") {
      a.id_file = value();
    } else if (s == "--work-dir") {
      a.work_dir = value();
    } else if (s == "--bench") {
      a.bench = true;
    } else if (s == "--bench-only") {
      a.bench = true;
      a.tests = false;
    } else {
      throw std::runtime_error("unknown argument " + s);
    }
  }
  if (a.ranks < 1 || a.rank < 0 || a.rank >= a.ranks || a.id_file.empty()) {
    throw std::runtime_error("need --rank R --ranks N (0 <= R < N) and --id-file PATH");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // NVLink multicast stays off on shared machines, whatever the caller's environment says.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  Args args;
  try {
    parse(argc, argv, args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_nccl: %s\n", e.what());
    return 2;
  }
  try {
    const int devices = mxfp4::cuda_device_count();
    if (devices <= args.rank) {
      std::fprintf(stderr, "test_nccl: rank %d needs GPU %d but %d GPU(s) are visible\n", args.rank,
                   args.rank, devices);
      return 3;
    }
    std::string id;
    if (args.rank == 0) {
      id = mp::nccl_unique_id_hex();
      mp::write_nccl_unique_id(args.id_file, id);
    } else {
      id = mp::read_nccl_unique_id(args.id_file, 120.0);
    }
    mp::NcclCommunicator comm(id, args.rank, args.ranks, args.rank);
    Runner runner(comm, args.work_dir);
    if (args.tests) run_tests(runner);
    // Every rank finishes its cases before the benchmark's collectives start.
    comm.barrier();
    if (args.bench) run_bench(comm);
    comm.barrier();
    return runner.failures() == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_nccl: rank %d: %s\n", args.rank, e.what());
    std::printf("FAIL set-up or benchmark [%d ranks, rank %d]: %s\n", args.ranks, args.rank,
                e.what());
    return 3;
  }
}
