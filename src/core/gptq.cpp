// GPTQ for MXFP4 (include/mxfp4/gptq.hpp). The rows of W are independent given H, so the work is
// split into tiles of rows; inside a tile, columns go in order, one 32-column block at a time.
#include "mxfp4/gptq.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "core/checks.hpp"
#include "core/gptq_internal.hpp"
#include "cpu/thread_pool.hpp"

namespace mxfp4 {

using detail::describe;

namespace {

constexpr std::int64_t kMaxHessianDim = 65536;
constexpr int kMaxRefineSweeps = 1000;

std::string non_finite_name(double v) {
  return std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
}

void require_cpu(const char* op, const char* name, const Tensor& t) {
  if (t.device() != Device::cpu()) {
    throw Unsupported(std::string(op) + ": " + name + " is on " + to_string(t.device()) +
                      "; GPTQ runs on the CPU (copy it with .to(Device::cpu()))");
  }
}

void require_dim(const char* op, std::int64_t k) {
  if (k < 1 || k > kMaxHessianDim) {
    throw InvalidArgument(std::string(op) + ": in_features must be in [1, " +
                          std::to_string(kMaxHessianDim) + "], got " + std::to_string(k));
  }
}

void require_finite_values(const char* op, const std::vector<double>& v, std::int64_t k) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      const auto r = static_cast<std::int64_t>(i) / k;
      const auto c = static_cast<std::int64_t>(i) % k;
      throw NonFiniteValue(std::string(op) + ": hessian holds " + non_finite_name(v[i]) +
                           " at row " + std::to_string(r) + ", column " + std::to_string(c));
    }
  }
}

void require_options(const char* op, const GptqOptions& options) {
  detail::require_known_rule(op, options.rule);
  if (!std::isfinite(options.damp) || options.damp < 0.0) {
    throw InvalidArgument(std::string(op) + ": damp must be finite and >= 0, got " +
                          std::to_string(options.damp));
  }
}

// The elements of a CPU f32/f16/bf16 tensor as f32 (a converted copy unless already f32).
Tensor as_f32(const Tensor& t) {
  return t.dtype() == DType::f32 ? t : t.to(DType::f32);
}

// sum a[i] * b[i] in a fixed order (four partial sums, for instruction-level parallelism).
double dot(const double* a, const double* b, std::int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i)
    s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Rows per task of the Cholesky factorisation's off-block part.
constexpr std::int64_t kCholeskyRows = 4;
constexpr std::int64_t kCholeskyBlock = 32;

// Lower Cholesky factor of the symmetric positive definite a (row-major k x k, in place: the
// lower triangle becomes L, the upper is zeroed). Rows go in blocks: L[r][0, i0) for the rows r
// of a block depend only on rows before the block, so those are computed in parallel; the
// triangle inside the block follows sequentially. Returns the first column whose pivot is not
// positive (or not finite), or -1.
std::int64_t cholesky_lower(std::vector<double>& a, std::int64_t k) {
  double* m = a.data();
  for (std::int64_t i0 = 0; i0 < k; i0 += kCholeskyBlock) {
    const std::int64_t i1 = std::min(k, i0 + kCholeskyBlock);
    if (i0 > 0) {
      const std::int64_t tasks = (i1 - i0 + kCholeskyRows - 1) / kCholeskyRows;
      cpu::parallel_for(tasks, [&](std::int64_t task) {
        const std::int64_t r0 = i0 + task * kCholeskyRows;
        const std::int64_t r1 = std::min(i1, r0 + kCholeskyRows);
        for (std::int64_t j = 0; j < i0; ++j) {
          const double* lj = m + j * k;
          for (std::int64_t r = r0; r < r1; ++r) {
            double* lr = m + r * k;
            lr[j] = (lr[j] - dot(lr, lj, j)) / lj[j];
          }
        }
      });
    }
    for (std::int64_t r = i0; r < i1; ++r) {
      double* lr = m + r * k;
      for (std::int64_t j = i0; j < r; ++j) {
        const double* lj = m + j * k;
        lr[j] = (lr[j] - dot(lr, lj, j)) / lj[j];
      }
      const double pivot = lr[r] - dot(lr, lr, r);
      if (!(pivot > 0.0) || !std::isfinite(pivot)) return r;
      lr[r] = std::sqrt(pivot);
      for (std::int64_t j = r + 1; j < k; ++j)
        lr[j] = 0.0;
    }
  }
  return -1;
}

// After GPTQ: coordinate descent on one row's codes, its block scales kept. The row's output
// error on the calibration inputs is (q - w) H' (q - w)^T with q the dequantized row and w the
// weight as given; moving q_j by d changes it by d (2 g_j + d H'_jj) with g = (q - w) H'. Each
// weight in turn moves to whichever neighbouring E2M1 value (one step up or down in magnitude, or
// from zero to +-0.5) lowers it most; g follows each move. GPTQ fixes each column once, left to
// right, and never revisits it; this lets later columns' choices pull earlier ones back.
// Returns the number of moves.
std::int64_t refine_row(const float* w, const std::vector<double>& hd, std::int64_t k,
                        std::uint8_t* packed, const std::uint8_t* scales, int sweeps) {
  std::vector<double> q(static_cast<std::size_t>(k));
  std::vector<double> g(static_cast<std::size_t>(k), 0.0);
  auto code_at = [&](std::int64_t c) -> std::uint8_t {
    const std::uint8_t byte = packed[c / 2];
    return static_cast<std::uint8_t>(c % 2 == 0 ? byte & 0x0F : byte >> 4);
  };
  auto scale_of = [&](std::int64_t c) {
    return static_cast<double>(e8m0_decode(scales[c / kBlockSize]));
  };
  for (std::int64_t c = 0; c < k; ++c) {
    q[static_cast<std::size_t>(c)] = static_cast<double>(e2m1_decode(code_at(c))) * scale_of(c);
    if (!std::isfinite(q[static_cast<std::size_t>(c)])) return 0;  // a scale at f32's edge
  }
  for (std::int64_t c = 0; c < k; ++c) {
    const double e = q[static_cast<std::size_t>(c)] - static_cast<double>(w[c]);
    if (e == 0.0) continue;
    const double* hc = hd.data() + c * k;
    for (std::int64_t j = 0; j < k; ++j)
      g[static_cast<std::size_t>(j)] += e * hc[j];
  }
  std::int64_t moves = 0;
  for (int sweep = 0; sweep < sweeps; ++sweep) {
    std::int64_t moved = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      const std::uint8_t code = code_at(j);
      const auto sign = static_cast<std::uint8_t>(code & 0x8);
      const int mag = code & 0x7;
      std::uint8_t candidates[2];
      int count = 0;
      if (mag == 0) {
        candidates[count++] = 0x1;  // +0.5
        candidates[count++] = 0x9;  // -0.5
      } else {
        candidates[count++] = static_cast<std::uint8_t>(sign | (mag - 1));
        if (mag < 7) candidates[count++] = static_cast<std::uint8_t>(sign | (mag + 1));
      }
      const double s = scale_of(j);
      const double hjj = hd[static_cast<std::size_t>(j * k + j)];
      const double cur = q[static_cast<std::size_t>(j)];
      double best_gain = 0.0, best_d = 0.0;
      std::uint8_t best_code = code;
      for (int i = 0; i < count; ++i) {
        const double d = static_cast<double>(e2m1_decode(candidates[i])) * s - cur;
        const double gain = d * (2.0 * g[static_cast<std::size_t>(j)] + d * hjj);
        // Only clear gains: a tie (or rounding noise around one) keeps the code.
        if (gain < best_gain && gain < -1e-9 * d * d * hjj) {
          best_gain = gain;
          best_d = d;
          best_code = candidates[i];
        }
      }
      if (best_code == code) continue;
      q[static_cast<std::size_t>(j)] += best_d;
      const double* hj = hd.data() + j * k;
      for (std::int64_t i = 0; i < k; ++i)
        g[static_cast<std::size_t>(i)] += best_d * hj[i];
      std::uint8_t& byte = packed[j / 2];
      byte = (j % 2 == 0) ? static_cast<std::uint8_t>((byte & 0xF0) | best_code)
                          : static_cast<std::uint8_t>((byte & 0x0F) | (best_code << 4));
      ++moved;
    }
    moves += moved;
    if (moved == 0) break;
  }
  return moves;
}

}  // namespace

namespace detail {

std::vector<double> gptq_dampened(const std::vector<double>& h, std::int64_t k, double damp,
                                  const char* op) {
  const auto kk = static_cast<std::size_t>(k);
  // Symmetric part, dead columns, mean of the live diagonal.
  std::vector<bool> dead(kk, false);
  double diag_sum = 0.0;
  std::int64_t live = 0;
  for (std::int64_t i = 0; i < k; ++i) {
    const double d = h[static_cast<std::size_t>(i * k + i)];
    if (d < 0.0) {
      throw InvalidArgument(std::string(op) + ": hessian diagonal entry " + std::to_string(i) +
                            " is negative (" + std::to_string(d) +
                            "); X^T X has a non-negative diagonal");
    }
    if (d == 0.0) {
      dead[static_cast<std::size_t>(i)] = true;
    } else {
      diag_sum += d;
      ++live;
    }
  }
  const double mean_diag = live > 0 ? diag_sum / static_cast<double>(live) : 1.0;
  std::vector<double> a(kk * kk);
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = 0; j <= i; ++j) {
      double v =
          0.5 * (h[static_cast<std::size_t>(i * k + j)] + h[static_cast<std::size_t>(j * k + i)]);
      if (dead[static_cast<std::size_t>(i)] || dead[static_cast<std::size_t>(j)]) v = 0.0;
      if (i == j) v = (dead[static_cast<std::size_t>(i)] ? mean_diag : v) + damp * mean_diag;
      a[static_cast<std::size_t>(i * k + j)] = v;
      a[static_cast<std::size_t>(j * k + i)] = v;
    }
  }
  return a;
}

std::vector<double> gptq_inverse_factor(const std::vector<double>& h, std::int64_t k, double damp,
                                        const char* op) {
  const auto kk = static_cast<std::size_t>(k);
  // GPTQ goes left to right and needs the upper Cholesky factor U of H'^-1. With J the reversal
  // permutation, J H' J = L L^T (L lower) gives H' = (J L J)(J L J)^T with J L J upper, so
  // H'^-1 = (J L^-1 J)^T (J L^-1 J): U = J L^-1 J. One factorisation and one triangular inverse.
  std::vector<double> a = gptq_dampened(h, k, damp, op);
  std::reverse(a.begin(), a.end());  // J H' J: element (i, j) moves to (k-1-i, k-1-j)
  const std::int64_t bad = cholesky_lower(a, k);
  if (bad >= 0) {
    throw InvalidArgument(
        std::string(op) + ": hessian is not positive definite after dampening (damp " +
        std::to_string(damp) + ": the factorisation fails at column " +
        std::to_string(k - 1 - bad) + "); pass a Gram matrix X^T X or raise damp");
  }
  // Rows of (L^-1)^T: t_c[i] = (L^-1)[i][c] for i >= c, by forward substitution down column c.
  std::vector<double> t(kk * kk, 0.0);
  const double* l = a.data();
  // Columns go in groups that share each row of L as it streams past (it stays in cache for the
  // group's dot products).
  constexpr std::int64_t kGroup = 16;
  cpu::parallel_for((k + kGroup - 1) / kGroup, [&](std::int64_t task) {
    const std::int64_t c0 = task * kGroup;
    const std::int64_t c1 = std::min(k, c0 + kGroup);
    for (std::int64_t i = c0; i < k; ++i) {
      const double* li = l + i * k;
      for (std::int64_t c = c0; c < std::min(c1, i + 1); ++c) {
        double* tc = t.data() + c * k;
        tc[i] = c == i ? 1.0 / li[i] : -dot(li + c, tc + c, i - c) / li[i];
      }
    }
  });
  // U[i][j] = (L^-1)[k-1-i][k-1-j] = t_{k-1-j}[k-1-i] for j >= i, in L's storage (no longer
  // needed), so that at most two K x K matrices are held besides H.
  std::vector<double> u = std::move(a);
  std::fill(u.begin(), u.end(), 0.0);
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = i; j < k; ++j) {
      u[static_cast<std::size_t>(i * k + j)] =
          t[static_cast<std::size_t>((k - 1 - j) * k + (k - 1 - i))];
    }
  }
  return u;
}

}  // namespace detail

Hessian::Hessian(std::int64_t in_features) {
  require_dim("Hessian", in_features);
  k_ = in_features;
  h_.assign(static_cast<std::size_t>(k_ * k_), 0.0);
}

Hessian Hessian::from_values(std::int64_t in_features, std::vector<double> values) {
  const char* op = "Hessian::from_values";
  require_dim(op, in_features);
  if (values.size() != static_cast<std::size_t>(in_features * in_features)) {
    throw ShapeMismatch(std::string(op) + ": K=" + std::to_string(in_features) + " needs " +
                        std::to_string(in_features * in_features) + " values, got " +
                        std::to_string(values.size()));
  }
  require_finite_values(op, values, in_features);
  Hessian h(in_features);
  h.h_ = std::move(values);
  return h;
}

Hessian Hessian::from_tensor(const Tensor& hessian) {
  const char* op = "Hessian::from_tensor";
  if (!hessian.defined()) throw InvalidArgument(std::string(op) + ": hessian is undefined");
  require_cpu(op, "hessian", hessian);
  if (hessian.dtype() != DType::f32) {
    throw DTypeMismatch(std::string(op) + ": hessian must be f32, got " +
                        describe("hessian", hessian));
  }
  if (hessian.rank() != 2 || hessian.dim(0) != hessian.dim(1)) {
    throw ShapeMismatch(std::string(op) + ": hessian must be square [K, K], got " +
                        describe("hessian", hessian));
  }
  const std::int64_t k = hessian.dim(0);
  require_dim(op, k);
  const float* p = hessian.data_as<float>();
  std::vector<double> v(static_cast<std::size_t>(k * k));
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<double>(p[i]);
  return from_values(k, std::move(v));
}

void Hessian::add(const Tensor& activations) {
  const char* op = "Hessian::add";
  if (!activations.defined()) throw InvalidArgument(std::string(op) + ": activations undefined");
  require_cpu(op, "activations", activations);
  if (!is_floating(activations.dtype())) {
    throw DTypeMismatch(std::string(op) + ": activations must be f32, f16 or bf16, got " +
                        describe("activations", activations));
  }
  if (activations.rank() < 1 || activations.dim(-1) != k_) {
    throw ShapeMismatch(std::string(op) + ": activations must be [..., K] with K=" +
                        std::to_string(k_) + ", got " + describe("activations", activations));
  }
  const Tensor x = as_f32(activations);
  const float* xp = x.data_as<float>();
  const std::int64_t rows = x.numel() / k_;
  for (std::int64_t i = 0; i < rows * k_; ++i) {
    if (!std::isfinite(xp[i])) {
      throw NonFiniteValue(std::string(op) + ": activations " + to_string(activations.shape()) +
                           " hold " + non_finite_name(xp[i]) + " at row " + std::to_string(i / k_) +
                           ", column " + std::to_string(i % k_));
    }
  }
  // Chunks of rows in f64; each task owns a band of H's rows (lower triangle), so tasks never
  // write the same element and the sums' order does not depend on the thread count.
  constexpr std::int64_t kChunk = 64;
  constexpr std::int64_t kBand = 16;
  std::vector<double> chunk(static_cast<std::size_t>(kChunk * k_));
  double* hp = h_.data();
  const std::int64_t k = k_;
  for (std::int64_t r0 = 0; r0 < rows; r0 += kChunk) {
    const std::int64_t n = std::min(kChunk, rows - r0);
    for (std::int64_t i = 0; i < n * k; ++i)
      chunk[static_cast<std::size_t>(i)] = static_cast<double>(xp[r0 * k + i]);
    cpu::parallel_for((k + kBand - 1) / kBand, [&](std::int64_t task) {
      const std::int64_t b1 = std::min(k, (task + 1) * kBand);
      for (std::int64_t i = task * kBand; i < b1; ++i) {
        double* hi = hp + i * k;
        for (std::int64_t r = 0; r < n; ++r) {
          const double* xr = chunk.data() + r * k;
          const double xi = xr[i];
          if (xi == 0.0) continue;
          for (std::int64_t j = 0; j <= i; ++j)
            hi[j] += xi * xr[j];
        }
      }
    });
  }
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = i + 1; j < k; ++j)
      hp[i * k + j] = hp[j * k + i];
  }
  samples_ += rows;
}

Tensor Hessian::to_tensor() const {
  Tensor t = Tensor::empty({k_, k_}, DType::f32);
  float* p = t.data_as<float>();
  for (std::size_t i = 0; i < h_.size(); ++i)
    p[i] = static_cast<float>(h_[i]);
  return t;
}

Mxfp4Weight quantize_gptq(const Tensor& weight, const Hessian& hessian, std::optional<Tensor> bias,
                          const GptqOptions& options) {
  const char* op = "quantize_gptq";
  if (!weight.defined()) throw InvalidArgument(std::string(op) + ": weight is undefined");
  require_cpu(op, "weight", weight);
  if (!is_floating(weight.dtype())) {
    throw DTypeMismatch(std::string(op) + ": weight must be f32, f16 or bf16, got " +
                        describe("weight", weight));
  }
  if (weight.rank() != 2) {
    throw ShapeMismatch(std::string(op) + ": weight must be one matrix [N, K] (quantize each " +
                        "expert of a stack with its own Hessian), got " +
                        describe("weight", weight));
  }
  const std::int64_t n = weight.dim(0);
  const std::int64_t k = weight.dim(1);
  if (k <= 0 || k % kBlockSize != 0) {
    throw ShapeMismatch(std::string(op) + ": K (weight's last dim) must be a positive multiple " +
                        "of " + std::to_string(kBlockSize) + ", got " + describe("weight", weight));
  }
  if (hessian.in_features() != k) {
    throw ShapeMismatch(
        std::string(op) + ": hessian is for K=" + std::to_string(hessian.in_features()) +
        " inputs but " + describe("weight", weight) + " has K=" + std::to_string(k));
  }
  require_options(op, options);
  const Tensor w32 = as_f32(weight);
  const float* wp = w32.data_as<float>();
  for (std::int64_t i = 0; i < n * k; ++i) {
    if (!std::isfinite(wp[i])) {
      throw NonFiniteValue(std::string(op) + ": weight " + to_string(weight.shape()) + " holds " +
                           non_finite_name(wp[i]) + " at row " + std::to_string(i / k) +
                           ", column " + std::to_string(i % k));
    }
  }
  if (options.refine_sweeps < 0 || options.refine_sweeps > kMaxRefineSweeps) {
    throw InvalidArgument(std::string(op) + ": refine_sweeps must be in [0, " +
                          std::to_string(kMaxRefineSweeps) + "], got " +
                          std::to_string(options.refine_sweeps));
  }
  const std::vector<double> u = detail::gptq_inverse_factor(hessian.values(), k, options.damp, op);
  // A diagonal H moves no error; skipping the (zero) updates also keeps the signs of zero weights,
  // so the result is exactly round-to-nearest's.
  bool coupled = false;
  for (std::int64_t i = 0; i < k && !coupled; ++i) {
    for (std::int64_t j = i + 1; j < k; ++j) {
      if (u[static_cast<std::size_t>(i * k + j)] != 0.0) {
        coupled = true;
        break;
      }
    }
  }

  Tensor blocks = Tensor::empty({n, k / 2}, DType::u8);
  Tensor scales = Tensor::empty({n, k / kBlockSize}, DType::u8);
  std::uint8_t* bp = blocks.data_as<std::uint8_t>();
  std::uint8_t* sp = scales.data_as<std::uint8_t>();
  const ScaleRule rule = options.rule;
  constexpr std::int64_t kTile = 8;  // rows per task: each row of U is read once per tile
  const std::int64_t tasks = (n + kTile - 1) / kTile;
  cpu::parallel_for(tasks, [&](std::int64_t task) {
    const std::int64_t r0 = task * kTile;
    const std::int64_t rows = std::min(kTile, n - r0);
    std::vector<double> w(static_cast<std::size_t>(rows * k));
    for (std::int64_t i = 0; i < rows * k; ++i)
      w[static_cast<std::size_t>(i)] = static_cast<double>(wp[r0 * k + i]);
    // err[r][c]: row r's error at block column c, divided by U[c][c].
    double err[kTile][kBlockSize];
    for (std::int64_t c0 = 0; c0 < k; c0 += kBlockSize) {
      const std::int64_t c1 = c0 + kBlockSize;
      for (std::int64_t r = 0; r < rows; ++r) {
        double* wr = w.data() + r * k;
        float v[kBlockSize];
        for (int c = 0; c < kBlockSize; ++c)
          v[c] = static_cast<float>(wr[c0 + c]);
        std::uint8_t* packed = bp + (r0 + r) * (k / 2) + c0 / 2;
        // The scale from the block as the earlier columns' errors left it.
        const std::uint8_t scale = quantize_block(rule, v, packed);
        if (scale == kScaleNaN) {
          throw NonFiniteValue(std::string(op) + ": the error correction drove row " +
                               std::to_string(r0 + r) + ", columns " + std::to_string(c0) + ".." +
                               std::to_string(c1 - 1) + " beyond f32's range; raise damp");
        }
        sp[(r0 + r) * (k / kBlockSize) + c0 / kBlockSize] = scale;
        const int neg_e = kScaleBias - static_cast<int>(scale);
        const float s = e8m0_decode(scale);
        for (int c = 0; c < kBlockSize; ++c) {
          const std::int64_t col = c0 + c;
          const float x = scale_by_pow2(static_cast<float>(wr[col]), neg_e);
          const std::uint8_t code =
              rule == ScaleRule::mistralrs ? e2m1_encode_mistralrs(x) : e2m1_encode(x);
          std::uint8_t& byte = packed[c / 2];
          byte = (c % 2 == 0) ? static_cast<std::uint8_t>((byte & 0xF0) | code)
                              : static_cast<std::uint8_t>((byte & 0x0F) | (code << 4));
          const double q = static_cast<double>(e2m1_decode(code) * s);
          const double* ucol = u.data() + col * k;
          const double e = (wr[col] - q) / ucol[col];
          err[r][c] = e;
          if (!coupled) continue;
          for (std::int64_t j = col + 1; j < c1; ++j)
            wr[j] -= e * ucol[j];
        }
      }
      // The block's errors onto every later column (GPTQ's lazy batch update).
      if (coupled && c1 < k) {
        for (int c = 0; c < kBlockSize; ++c) {
          const double* urow = u.data() + (c0 + c) * k;
          for (std::int64_t r = 0; r < rows; ++r) {
            const double e = err[r][c];
            double* wr = w.data() + r * k;
            for (std::int64_t j = c1; j < k; ++j)
              wr[j] -= e * urow[j];
          }
        }
      }
    }
  });
  if (options.refine_sweeps > 0) {
    const std::vector<double> hd = detail::gptq_dampened(hessian.values(), k, options.damp, op);
    cpu::parallel_for(n, [&](std::int64_t row) {
      refine_row(wp + row * k, hd, k, bp + row * (k / 2), sp + row * (k / kBlockSize),
                 options.refine_sweeps);
    });
  }
  return Mxfp4Weight::from_parts(std::move(blocks), std::move(scales), std::move(bias));
}

namespace {

// The same typed error, its message prefixed with `context` (which expert of a stack failed).
[[noreturn]] void rethrow_with_context(const Error& e, const std::string& context) {
  const std::string message = context + ": " + e.what();
  switch (e.code()) {
    case ErrorCode::shape_mismatch:
      throw ShapeMismatch(message);
    case ErrorCode::dtype_mismatch:
      throw DTypeMismatch(message);
    case ErrorCode::non_finite:
      throw NonFiniteValue(message);
    case ErrorCode::unsupported:
      throw Unsupported(message);
    case ErrorCode::index_out_of_range:
      throw IndexOutOfRange(message);
    case ErrorCode::format_error:
      throw FormatError(message);
    case ErrorCode::io_error:
      throw IoError(message);
    case ErrorCode::device_error:
      throw DeviceError(message);
    case ErrorCode::invalid_argument:
      break;
  }
  throw InvalidArgument(message);
}

}  // namespace

namespace detail {

Mxfp4Weight quantize_gptq_experts(const Tensor& weight, std::int64_t count,
                                  const HessianOfExpert& hessian_of, std::optional<Tensor> bias,
                                  const GptqOptions& options) {
  const char* op = "quantize_gptq";
  if (!weight.defined()) throw InvalidArgument(std::string(op) + ": weight is undefined");
  if (weight.rank() != 3) {
    throw ShapeMismatch(std::string(op) + ": with " + std::to_string(count) +
                        " Hessians the weight must be a stack of experts [E, N, K], got " +
                        describe("weight", weight));
  }
  require_cpu(op, "weight", weight);
  if (!is_floating(weight.dtype())) {
    throw DTypeMismatch(std::string(op) + ": weight must be f32, f16 or bf16, got " +
                        describe("weight", weight));
  }
  const std::int64_t experts = weight.dim(0), n = weight.dim(1), k = weight.dim(2);
  if (count != experts) {
    throw ShapeMismatch(std::string(op) + ": " + describe("weight", weight) + " has " +
                        std::to_string(experts) + " experts but " + std::to_string(count) +
                        " Hessians were given");
  }
  if (bias &&
      (!bias->defined() || bias->rank() != 2 || bias->dim(0) != experts || bias->dim(1) != n)) {
    throw ShapeMismatch(std::string(op) + ": bias must be [" + std::to_string(experts) + ", " +
                        std::to_string(n) + "] for " + describe("weight", weight) +
                        (bias->defined() ? ", got " + describe("bias", *bias) : std::string()));
  }
  if (k <= 0 || k % kBlockSize != 0) {
    throw ShapeMismatch(std::string(op) + ": K (weight's last dim) must be a positive multiple " +
                        "of " + std::to_string(kBlockSize) + ", got " + describe("weight", weight));
  }
  require_options(op, options);  // per call, not per expert
  Tensor blocks = Tensor::empty({experts, n, k / 2}, DType::u8);
  Tensor scales = Tensor::empty({experts, n, k / kBlockSize}, DType::u8);
  for (std::int64_t e = 0; e < experts; ++e) {
    const Tensor slice = weight.slice_rows(e, e + 1).reshape({n, k});
    Mxfp4Weight one;
    try {
      one = quantize_gptq(slice, hessian_of(e), std::nullopt, options);
    } catch (const Error& err) {
      rethrow_with_context(err, std::string(op) + ": expert " + std::to_string(e));
    }
    std::memcpy(blocks.data_as<std::uint8_t>() + e * n * (k / 2), one.blocks().data(),
                one.blocks().nbytes());
    std::memcpy(scales.data_as<std::uint8_t>() + e * n * (k / kBlockSize), one.scales().data(),
                one.scales().nbytes());
  }
  return Mxfp4Weight::from_parts(std::move(blocks), std::move(scales), std::move(bias));
}

}  // namespace detail

Mxfp4Weight quantize_gptq(const Tensor& weight, const std::vector<Hessian>& hessians,
                          std::optional<Tensor> bias, const GptqOptions& options) {
  if (weight.defined() && weight.rank() == 2 && hessians.size() == 1) {
    return quantize_gptq(weight, hessians[0], std::move(bias), options);
  }
  return detail::quantize_gptq_experts(
      weight, static_cast<std::int64_t>(hessians.size()),
      [&](std::int64_t e) -> const Hessian& { return hessians[static_cast<std::size_t>(e)]; },
      std::move(bias), options);
}

}  // namespace mxfp4
