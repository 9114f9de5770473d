// Block-wise Hadamard rotation (include/mxfp4/rotate.hpp): a fast Walsh-Hadamard transform of
// each 32-element block in f64, rows split over the CPU thread pool.
#include "mxfp4/rotate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>

#include "core/checks.hpp"
#include "core/convert.hpp"
#include "cpu/thread_pool.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4 {

using detail::describe;

namespace {

static_assert(kRotationBlock == 32, "the transform below is written for 32-element blocks");

// 1 / sqrt(32) = sqrt(2) / 8: the f64 nearest to it (dividing by 8 is exact).
constexpr double kNorm = std::numbers::sqrt2 / 8.0;

// v <- v H (H symmetric, Sylvester ordering, normalized): five butterfly stages, then one
// multiplication. Each stage only adds and subtracts, so for inputs of one binade (and any f32
// inputs whose exponents lie within 29 of each other) the sums are exact and the only rounding
// before the output's is that of the final multiplication.
void fwht32(double* v) {
  for (int h = 1; h < 32; h *= 2) {
    for (int i = 0; i < 32; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const double a = v[j];
        const double b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
  for (int j = 0; j < 32; ++j)
    v[j] *= kNorm;
}

void check_input(const char* op, const Tensor& x) {
  if (!x.defined()) throw InvalidArgument(std::string(op) + ": x is undefined");
  if (x.device() != Device::cpu()) {
    throw Unsupported(std::string(op) + ": x is on " + to_string(x.device()) +
                      "; rotate_blocks runs on the CPU (copy it with .to(Device::cpu()))");
  }
  if (!is_floating(x.dtype())) {
    throw DTypeMismatch(std::string(op) + ": x must be f32, f16 or bf16, got " + describe("x", x));
  }
  if (x.rank() < 1 || x.dim(-1) <= 0 || x.dim(-1) % kRotationBlock != 0) {
    throw ShapeMismatch(std::string(op) + ": x must be [..., K] with K a positive multiple of " +
                        std::to_string(kRotationBlock) + ", got " + describe("x", x));
  }
}

// Blocks per task: enough work to be worth a thread, few enough to balance.
constexpr std::int64_t kBlocksPerTask = 1024;

void rotate(const Tensor& x, Tensor& out) {
  const std::int64_t blocks = x.numel() / kRotationBlock;
  const DType in_type = x.dtype();
  const DType out_type = out.dtype();
  const void* src = x.data();
  void* dst = out.data();
  const std::int64_t tasks = (blocks + kBlocksPerTask - 1) / kBlocksPerTask;
  cpu::parallel_for(tasks, [&](std::int64_t task) {
    const std::int64_t b1 = std::min(blocks, (task + 1) * kBlocksPerTask);
    double v[kRotationBlock];
    for (std::int64_t b = task * kBlocksPerTask; b < b1; ++b) {
      const std::int64_t base = b * kRotationBlock;
      // The whole block is read before any of it is written, so out may be x.
      for (std::int64_t j = 0; j < kRotationBlock; ++j)
        v[j] = static_cast<double>(detail::load_float(src, in_type, base + j));
      fwht32(v);
      for (std::int64_t j = 0; j < kRotationBlock; ++j)
        detail::store_float(dst, out_type, base + j, static_cast<float>(v[j]));
    }
  });
}

}  // namespace

Tensor rotate_blocks(const Tensor& x) {
  check_input("rotate_blocks", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  rotate(x, out);
  return out;
}

void rotate_blocks_into(const Tensor& x, Tensor& out) {
  const char* op = "rotate_blocks_into";
  check_input(op, x);
  if (!out.defined()) throw InvalidArgument(std::string(op) + ": out is undefined");
  if (out.device() != Device::cpu()) {
    throw Unsupported(std::string(op) + ": out is on " + to_string(out.device()) +
                      "; rotate_blocks runs on the CPU");
  }
  if (out.dtype() != x.dtype()) {
    throw DTypeMismatch(std::string(op) + ": out must have x's dtype, got " + describe("x", x) +
                        " and " + describe("out", out));
  }
  if (out.shape() != x.shape()) {
    throw ShapeMismatch(std::string(op) + ": out must have x's shape, got " + describe("x", x) +
                        " and " + describe("out", out));
  }
  const auto* xb = static_cast<const unsigned char*>(x.data());
  const auto* ob = static_cast<const unsigned char*>(out.data());
  const std::size_t n = x.nbytes();
  // Compared as integers: pointers into different objects have no ordering in C++.
  const auto xa = reinterpret_cast<std::uintptr_t>(xb);
  const auto oa = reinterpret_cast<std::uintptr_t>(ob);
  if (n > 0 && xa != oa && xa < oa + n && oa < xa + n) {
    throw InvalidArgument(std::string(op) +
                          ": out overlaps x without being x (pass x itself to rotate in place)");
  }
  rotate(x, out);
}

}  // namespace mxfp4
