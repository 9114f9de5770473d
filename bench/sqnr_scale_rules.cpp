// Measures the quantization error of each MXFP4 scale rule on synthetic weight distributions,
// through the public API (mxfp4::quantize, then Mxfp4Weight::dequantize), and prints markdown
// tables: SQNR in dB, the share of blocks that saturate, the largest element error relative to
// the block's amax, and a per-block check that `mse` is never worse than the other rules.
//
// Deterministic: its own generator (xoshiro256** seeded by splitmix64) and its own sampling
// (Box-Muller, inverse CDFs), never std:: distributions, whose output differs across standard
// libraries. Only std::log / std::cos / std::pow are taken from the C library.
//
//   sqnr_scale_rules [--elements N] [--seed S]
//
// N is the number of weights per distribution (default 4194304 = 1024 rows x 4096).

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "bench_rng.hpp"
#include "mxfp4/mxfp4.hpp"

namespace {

// ---- Random numbers ---------------------------------------------------------------------------

// bench_rng.hpp's generator, with the samplers these distributions need.
class Rng : public mxfp4::bench::Rng {
 public:
  using mxfp4::bench::Rng::Rng;
  // Uniform in the open interval (0, 1): never 0, never 1.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  // Standard normal by Box-Muller; both outputs of a pair are used, in order.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double theta = 6.283185307179586476925 * uniform();
    spare_ = r * std::sin(theta);
    has_spare_ = true;
    return r * std::cos(theta);
  }
  // Laplace with unit variance (scale b = 1/sqrt(2)), by the inverse CDF.
  double laplace() {
    const double u = uniform() - 0.5;  // (-0.5, 0.5)
    const double b = 0.70710678118654752440;
    const double mag = -b * std::log(1.0 - 2.0 * std::fabs(u));
    return u < 0.0 ? -mag : mag;
  }
  // Student-t with 3 degrees of freedom: Z / sqrt(chi2_3 / 3), chi2_3 a sum of three squared
  // normals.
  double student_t3() {
    const double z = normal();
    const double a = normal(), b = normal(), c = normal();
    return z / std::sqrt((a * a + b * b + c * c) / 3.0);
  }

 private:
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// ---- Distributions -----------------------------------------------------------------------------

struct Distribution {
  const char* name;
  const char* description;
  void (*fill)(Rng& rng, std::int64_t rows, std::int64_t k, float* w);
};

void fill_gaussian(Rng& rng, std::int64_t rows, std::int64_t k, float* w) {
  for (std::int64_t i = 0; i < rows * k; ++i)
    w[i] = static_cast<float>(rng.normal());
}
void fill_laplace(Rng& rng, std::int64_t rows, std::int64_t k, float* w) {
  for (std::int64_t i = 0; i < rows * k; ++i)
    w[i] = static_cast<float>(rng.laplace());
}
void fill_student_t3(Rng& rng, std::int64_t rows, std::int64_t k, float* w) {
  for (std::int64_t i = 0; i < rows * k; ++i)
    w[i] = static_cast<float>(rng.student_t3());
}
// Gaussian; each element independently, with probability 0.1%, multiplied by U(20, 50).
void fill_outliers(Rng& rng, std::int64_t rows, std::int64_t k, float* w) {
  for (std::int64_t i = 0; i < rows * k; ++i) {
    double v = rng.normal();
    if (rng.uniform() < 0.001) v *= 20.0 + 30.0 * rng.uniform();
    w[i] = static_cast<float>(v);
  }
}
// 10^U(-1, 1): a log-uniform factor over two decades.
double two_decades(Rng& rng) {
  return std::pow(10.0, 2.0 * rng.uniform() - 1.0);
}
// Gaussian rows, each row (output channel) with its own standard deviation.
void fill_row_scales(Rng& rng, std::int64_t rows, std::int64_t k, float* w) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const double sigma = two_decades(rng);
    for (std::int64_t i = 0; i < k; ++i)
      w[r * k + i] = static_cast<float>(sigma * rng.normal());
  }
}
// Gaussian columns, each column (input channel, i.e. along the block axis K) with its own
// standard deviation, shared by all rows: the blocks mix magnitudes.
void fill_column_scales(Rng& rng, std::int64_t rows, std::int64_t k, float* w) {
  std::vector<double> sigma(static_cast<std::size_t>(k));
  for (auto& s : sigma)
    s = two_decades(rng);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t i = 0; i < k; ++i) {
      w[r * k + i] = static_cast<float>(sigma[static_cast<std::size_t>(i)] * rng.normal());
    }
  }
}

const Distribution kDistributions[] = {
    {"Gaussian", "N(0, 1)", fill_gaussian},
    {"Laplace", "unit variance, inverse CDF", fill_laplace},
    {"Student-t(3)", "Z / sqrt(chi2_3 / 3)", fill_student_t3},
    {"Gaussian + 0.1% outliers x20-50", "N(0, 1), 0.1% of elements times U(20, 50)", fill_outliers},
    {"Gaussian, per-row scale", "row sigma = 10^U(-1, 1)", fill_row_scales},
    {"Gaussian, per-column scale", "column sigma = 10^U(-1, 1), same for all rows",
     fill_column_scales},
};
constexpr int kNumDistributions = static_cast<int>(std::size(kDistributions));

constexpr mxfp4::ScaleRule kRules[] = {mxfp4::ScaleRule::floor, mxfp4::ScaleRule::ceil,
                                       mxfp4::ScaleRule::even, mxfp4::ScaleRule::mse,
                                       mxfp4::ScaleRule::mistralrs};
constexpr int kNumRules = static_cast<int>(std::size(kRules));
constexpr int kMseIndex = 3;
constexpr int kCeilIndex = 1;

// ---- Measurement -------------------------------------------------------------------------------

struct RuleResult {
  double sqnr_db = 0.0;
  double saturated_fraction = 0.0;  // blocks with some |w| > 6 * 2^e
  double mean_rel_max_err = 0.0;    // mean over blocks of max_i |w_i - q_i| / amax
  double worst_rel_max_err = 0.0;   // the same, worst block
  std::vector<double> block_sq_err;
  std::vector<std::uint8_t> scales;
};

RuleResult measure(const std::vector<float>& w, std::int64_t rows, std::int64_t k,
                   mxfp4::ScaleRule rule) {
  using mxfp4::kBlockSize;
  const mxfp4::Tensor input = mxfp4::Tensor::view(w.data(), {rows, k}, mxfp4::DType::f32);
  mxfp4::QuantizeOptions options;
  options.rule = rule;
  mxfp4::QuantizedTensor q = mxfp4::quantize(input, options);
  const mxfp4::Mxfp4Weight weight = mxfp4::Mxfp4Weight::from_parts(q.blocks, q.scales);
  const mxfp4::Tensor deq = weight.dequantize(mxfp4::DType::f32);
  const float* d = deq.data_as<float>();
  const std::uint8_t* scales = q.scales.data_as<std::uint8_t>();

  const std::int64_t num_blocks = rows * k / kBlockSize;
  RuleResult r;
  r.block_sq_err.resize(static_cast<std::size_t>(num_blocks));
  r.scales.assign(scales, scales + num_blocks);
  double signal = 0.0, noise = 0.0, rel_sum = 0.0;
  std::int64_t saturated = 0, nonzero_blocks = 0;
  for (std::int64_t b = 0; b < num_blocks; ++b) {
    const float* wb = w.data() + b * kBlockSize;
    const float* db = d + b * kBlockSize;
    const double limit = 6.0 * std::ldexp(1.0, static_cast<int>(scales[b]) - mxfp4::kScaleBias);
    double block_noise = 0.0, amax = 0.0, max_err = 0.0;
    bool sat = false;
    for (int i = 0; i < kBlockSize; ++i) {
      const double x = wb[i];
      const double e = x - static_cast<double>(db[i]);
      signal += x * x;
      block_noise += e * e;
      amax = std::max(amax, std::fabs(x));
      max_err = std::max(max_err, std::fabs(e));
      if (std::fabs(x) > limit) sat = true;
    }
    noise += block_noise;
    r.block_sq_err[static_cast<std::size_t>(b)] = block_noise;
    if (sat) ++saturated;
    if (amax > 0.0) {
      const double rel = max_err / amax;
      rel_sum += rel;
      r.worst_rel_max_err = std::max(r.worst_rel_max_err, rel);
      ++nonzero_blocks;
    }
  }
  r.sqnr_db = 10.0 * std::log10(signal / noise);
  r.saturated_fraction = static_cast<double>(saturated) / static_cast<double>(num_blocks);
  r.mean_rel_max_err = nonzero_blocks ? rel_sum / static_cast<double>(nonzero_blocks) : 0.0;
  return r;
}

struct DistributionResult {
  std::array<RuleResult, kNumRules> rules;
  // Blocks where mse's squared error exceeds another rule's (must be 0 for floor/ceil/even).
  std::array<std::int64_t, kNumRules> mse_worse{};
  double mse_took_lower = 0.0;  // share of blocks where mse chose ceil's exponent minus one
  std::int64_t num_blocks = 0;
};

// ---- Output ------------------------------------------------------------------------------------

void print_header_row(const char* first) {
  std::printf("| %s |", first);
  for (auto rule : kRules) {
    std::printf(" %s%s |", mxfp4::scale_rule_name(rule),
                rule == mxfp4::kDefaultScaleRule ? " (default)" : "");
  }
  std::printf("\n|---|");
  for (int i = 0; i < kNumRules; ++i)
    std::printf("---:|");
  std::printf("\n");
}

// One table row; `value` gives the number per rule, `best_is_max` which end is best (bold).
template <typename F>
void print_row(const char* name, const DistributionResult& dr, const char* fmt, double factor,
               bool best_is_max, F value) {
  std::array<std::string, kNumRules> cells;
  std::array<double, kNumRules> shown{};
  char buf[64];
  for (int i = 0; i < kNumRules; ++i) {
    std::snprintf(buf, sizeof buf, fmt, value(dr.rules[static_cast<std::size_t>(i)]) * factor);
    cells[static_cast<std::size_t>(i)] = buf;
    shown[static_cast<std::size_t>(i)] = std::strtod(buf, nullptr);  // compare what is printed
  }
  const double best = best_is_max ? *std::max_element(shown.begin(), shown.end())
                                  : *std::min_element(shown.begin(), shown.end());
  std::printf("| %s |", name);
  for (int i = 0; i < kNumRules; ++i) {
    const auto ui = static_cast<std::size_t>(i);
    if (shown[ui] == best) {
      std::printf(" **%s** |", cells[ui].c_str());
    } else {
      std::printf(" %s |", cells[ui].c_str());
    }
  }
  std::printf("\n");
}

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: %s [--elements N] [--seed S]\n"
               "  --elements N  weights per distribution (default 4194304); rounded up to a\n"
               "                whole number of rows of 4096 (or of 32 when N < 4096)\n"
               "  --seed S      generator seed (default 20261125)\n",
               argv0);
  std::exit(code);
}

std::int64_t parse_positive(const char* argv0, const char* flag, const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v <= 0) {
    std::fprintf(stderr, "%s: %s needs a positive integer, got '%s'\n", argv0, flag, text);
    usage(argv0, 2);
  }
  return static_cast<std::int64_t>(v);
}

int run(int argc, char** argv) {
  std::int64_t elements = 4 * 1024 * 1024;
  std::uint64_t seed = 20261125;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") usage(argv[0], 0);
    if ((arg == "--elements" || arg == "--seed") && i + 1 < argc) {
      const std::int64_t v = parse_positive(argv[0], argv[i], argv[i + 1]);
      if (arg == "--elements") {
        elements = v;
      } else {
        seed = static_cast<std::uint64_t>(v);
      }
      ++i;
    } else {
      std::fprintf(stderr, "%s: unknown or incomplete argument '%s'\n", argv[0], argv[i]);
      usage(argv[0], 2);
    }
  }
  const std::int64_t k =
      elements >= 4096 ? 4096 : (elements + mxfp4::kBlockSize - 1) / mxfp4::kBlockSize * 32;
  const std::int64_t rows = (elements + k - 1) / k;
  const auto start = std::chrono::steady_clock::now();

  std::array<DistributionResult, kNumDistributions> results;
  std::vector<float> w(static_cast<std::size_t>(rows * k));
  for (int di = 0; di < kNumDistributions; ++di) {
    // Each distribution gets its own stream, so adding one does not change the others.
    Rng rng(seed + 0x1000u * static_cast<std::uint64_t>(di));
    kDistributions[di].fill(rng, rows, k, w.data());
    DistributionResult& dr = results[static_cast<std::size_t>(di)];
    for (int ri = 0; ri < kNumRules; ++ri) {
      dr.rules[static_cast<std::size_t>(ri)] = measure(w, rows, k, kRules[ri]);
    }
    const RuleResult& mse = dr.rules[kMseIndex];
    const RuleResult& ceil = dr.rules[kCeilIndex];
    dr.num_blocks = static_cast<std::int64_t>(mse.block_sq_err.size());
    std::int64_t lower = 0;
    for (std::size_t b = 0; b < mse.block_sq_err.size(); ++b) {
      for (int ri = 0; ri < kNumRules; ++ri) {
        if (mse.block_sq_err[b] > dr.rules[static_cast<std::size_t>(ri)].block_sq_err[b]) {
          ++dr.mse_worse[static_cast<std::size_t>(ri)];
        }
      }
      if (mse.scales[b] + 1 == ceil.scales[b]) ++lower;
    }
    dr.mse_took_lower = static_cast<double>(lower) / static_cast<double>(dr.num_blocks);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::printf(
      "MXFP4 scale rules: quantize -> dequantize error, %lld weights per distribution "
      "(%lld rows x %lld), seed %llu\n\n",
      static_cast<long long>(rows * k), static_cast<long long>(rows), static_cast<long long>(k),
      static_cast<unsigned long long>(seed));

  std::printf(
      "SQNR in dB = 10 log10(sum w^2 / sum (w - dequant(quant(w)))^2), higher is better; "
      "best per row in bold\n\n");
  print_header_row("distribution");
  for (int di = 0; di < kNumDistributions; ++di) {
    print_row(kDistributions[di].name, results[static_cast<std::size_t>(di)], "%.2f", 1.0, true,
              [](const RuleResult& r) { return r.sqnr_db; });
  }

  std::printf("\nSaturated blocks in %% (some |w| > 6 * 2^e, clipped to the largest code)\n\n");
  print_header_row("distribution");
  for (int di = 0; di < kNumDistributions; ++di) {
    print_row(kDistributions[di].name, results[static_cast<std::size_t>(di)], "%.2f", 100.0, false,
              [](const RuleResult& r) { return r.saturated_fraction; });
  }

  std::printf(
      "\nLargest element error relative to the block's amax, mean over blocks, in %% "
      "(lower is better)\n\n");
  print_header_row("distribution");
  for (int di = 0; di < kNumDistributions; ++di) {
    print_row(kDistributions[di].name, results[static_cast<std::size_t>(di)], "%.2f", 100.0, false,
              [](const RuleResult& r) { return r.mean_rel_max_err; });
  }

  std::printf("\nLargest element error relative to the block's amax, worst block, in %%\n\n");
  print_header_row("distribution");
  for (int di = 0; di < kNumDistributions; ++di) {
    print_row(kDistributions[di].name, results[static_cast<std::size_t>(di)], "%.2f", 100.0, false,
              [](const RuleResult& r) { return r.worst_rel_max_err; });
  }

  std::printf(
      "\nPer-block check of mse: blocks whose squared error under mse exceeds the "
      "rule's, and the share of blocks where mse chose ceil's exponent minus one\n\n");
  std::printf("| distribution | blocks |");
  for (int ri = 0; ri < kNumRules; ++ri) {
    if (ri != kMseIndex) std::printf(" mse worse than %s |", mxfp4::scale_rule_name(kRules[ri]));
  }
  std::printf(" mse chose ceil - 1 |\n|---|---:|");
  for (int ri = 0; ri < kNumRules; ++ri) {
    if (ri != kMseIndex) std::printf("---:|");
  }
  std::printf("---:|\n");
  for (int di = 0; di < kNumDistributions; ++di) {
    const DistributionResult& dr = results[static_cast<std::size_t>(di)];
    std::printf("| %s | %lld |", kDistributions[di].name, static_cast<long long>(dr.num_blocks));
    for (int ri = 0; ri < kNumRules; ++ri) {
      if (ri != kMseIndex) {
        std::printf(" %lld |", static_cast<long long>(dr.mse_worse[static_cast<std::size_t>(ri)]));
      }
    }
    std::printf(" %.2f%% |\n", 100.0 * dr.mse_took_lower);
  }

  std::printf("\nDistributions:\n");
  for (const auto& d : kDistributions)
    std::printf("- %s: %s\n", d.name, d.description);
  std::printf("\n(%.1f s)\n", seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sqnr_scale_rules: %s\n", e.what());
    return 1;
  }
}
