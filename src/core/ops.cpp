#include "mxfp4/ops.hpp"

#include <cmath>
#include <cstring>
#include <string>

#include "core/backend.hpp"
#include "core/checks.hpp"
#include "core/convert.hpp"
#include "core/weight_args.hpp"

namespace mxfp4 {

using detail::describe;

namespace {

void require_defined(const char* op, const char* name, const Tensor& t) {
  if (!t.defined()) throw InvalidArgument(std::string(op) + ": " + name + " is undefined");
}

void require_weight(const char* op, const Mxfp4Weight& w) {
  if (!w.defined()) throw InvalidArgument(std::string(op) + ": weight is empty");
}

void require_floating(const char* op, const char* name, const Tensor& t) {
  if (!is_floating(t.dtype())) {
    throw DTypeMismatch(std::string(op) + ": " + name + " must be f32, f16 or bf16, got " +
                        describe(name, t));
  }
}

void require_same_device(const char* op, const char* name, const Tensor& t, Device device) {
  if (!(t.device() == device)) {
    throw InvalidArgument(std::string(op) + ": " + name + " is on " + to_string(t.device()) +
                          " but the weight is on " + to_string(device));
  }
}

// An output buffer must have exactly the expected shape and dtype, and must not overlap an input.
void require_output(const char* op, const char* name, const Tensor& out, const Shape& shape,
                    DType dtype, Device device) {
  require_defined(op, name, out);
  const std::string expected = std::string(op) + ": " + name + " must be " +
                               std::string(dtype_name(dtype)) + " " + to_string(shape) + ", got " +
                               describe(name, out);
  if (out.shape() != shape) throw ShapeMismatch(expected);
  if (out.dtype() != dtype) throw DTypeMismatch(expected);
  require_same_device(op, name, out, device);
}

void require_disjoint(const char* op, const char* out_name, const Tensor& out, const char* name,
                      const Tensor& in) {
  if (out.nbytes() == 0 || in.nbytes() == 0) return;
  const auto* o = static_cast<const char*>(out.data());
  const auto* i = static_cast<const char*>(in.data());
  if (o < i + in.nbytes() && i < o + out.nbytes()) {
    throw InvalidArgument(std::string(op) + ": " + out_name + " overlaps " + name + "'s memory");
  }
}

// The backend's kernel for an operation on `device`; Unsupported when it has none.
template <typename Fn>
Fn kernel(const char* op, Device device, Fn detail::Backend::*entry) {
  const detail::Backend& backend = detail::backend_for(device);
  Fn fn = backend.*entry;
  if (fn == nullptr) {
    throw Unsupported(std::string(op) + " is not implemented for tensors on " + to_string(device) +
                      " (backend " + backend.name + ")");
  }
  return fn;
}

// Only the CUDA backend reads BlockLayout::gpu; every other one needs the standard codes.
bool reads_gpu_layout(Device device) {
  return device.type == DeviceType::cuda;
}

void require_readable_layout(const char* op, const Mxfp4Weight& w) {
  if (w.layout() == BlockLayout::gpu && !reads_gpu_layout(w.device())) {
    throw Unsupported(std::string(op) + ": the weight is in BlockLayout::gpu, which only the " +
                      "CUDA backend reads (the weight is on " + to_string(w.device()) +
                      "); convert it with with_layout(BlockLayout::standard)");
  }
}

Shape packed_shape(const Shape& weight_shape, std::int64_t per_row) {
  Shape s = weight_shape;
  s.back() = per_row;
  return s;
}

void validate_quantize_input(const char* op, const Tensor& weight) {
  require_defined(op, "weight", weight);
  require_floating(op, "weight", weight);
  if (weight.rank() != 2 && weight.rank() != 3) {
    throw ShapeMismatch(std::string(op) + ": weight must be [N, K] or [E, N, K], got " +
                        describe("weight", weight));
  }
  const std::int64_t k = weight.dim(-1);
  if (k <= 0 || k % kBlockSize != 0) {
    throw ShapeMismatch(std::string(op) +
                        ": K (weight's last dim) must be a positive multiple of " +
                        std::to_string(kBlockSize) + ", got K=" + std::to_string(k) + " in " +
                        describe("weight", weight));
  }
}

}  // namespace

void quantize_into(const Tensor& weight, Tensor& blocks, Tensor& scales,
                   const QuantizeOptions& options, const RunOptions& run) {
  const char* op = "quantize";
  validate_quantize_input(op, weight);
  const std::int64_t k = weight.dim(-1);
  require_output(op, "blocks", blocks, packed_shape(weight.shape(), k / 2), DType::u8,
                 weight.device());
  require_output(op, "scales", scales, packed_shape(weight.shape(), k / kBlockSize), DType::u8,
                 weight.device());
  require_disjoint(op, "blocks", blocks, "weight", weight);
  require_disjoint(op, "scales", scales, "weight", weight);
  require_disjoint(op, "scales", scales, "blocks", blocks);
  detail::require_known_rule(op, options.rule);
  detail::QuantizeArgs a{};
  a.weight = weight.data();
  a.weight_dtype = weight.dtype();
  a.rows = weight.numel() / k;
  a.k = k;
  a.blocks = static_cast<std::uint8_t*>(blocks.data());
  a.scales = static_cast<std::uint8_t*>(scales.data());
  a.rule = options.rule;
  a.stream = run.stream.handle;
  const std::int64_t bad = kernel(op, weight.device(), &detail::Backend::quantize)(a);
  if (bad >= 0 && options.non_finite == NonFinitePolicy::error) {
    const std::int64_t row = bad / k;
    const double v = weight.item_as_double(bad);
    std::string where;
    if (weight.rank() == 3) {
      const std::int64_t n = weight.dim(1);
      where = "expert " + std::to_string(row / n) + ", row " + std::to_string(row % n);
    } else {
      where = "row " + std::to_string(row);
    }
    throw NonFiniteValue(std::string(op) + ": weight " + to_string(weight.shape()) + " holds " +
                         (std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf")) + " at " + where +
                         ", column " + std::to_string(bad % k) +
                         " (use NonFinitePolicy::nan_block to encode such blocks as NaN)");
  }
}

QuantizedTensor quantize(const Tensor& weight, const QuantizeOptions& options,
                         const RunOptions& run) {
  validate_quantize_input("quantize", weight);
  const std::int64_t k = weight.dim(-1);
  QuantizedTensor q;
  q.blocks = Tensor::empty(packed_shape(weight.shape(), k / 2), DType::u8, weight.device());
  q.scales =
      Tensor::empty(packed_shape(weight.shape(), k / kBlockSize), DType::u8, weight.device());
  quantize_into(weight, q.blocks, q.scales, options, run);
  return q;
}

namespace {

Shape dequantized_shape(const Mxfp4Weight& w) {
  if (w.stacked()) return {w.num_experts(), w.out_features(), w.in_features()};
  return {w.out_features(), w.in_features()};
}

}  // namespace

void dequantize_into(const Mxfp4Weight& weight, Tensor& out, const RunOptions& run) {
  const char* op = "dequantize";
  require_weight(op, weight);
  require_defined(op, "out", out);
  require_floating(op, "out", out);
  require_output(op, "out", out, dequantized_shape(weight), out.dtype(), weight.device());
  require_disjoint(op, "out", out, "blocks", weight.blocks());
  require_disjoint(op, "out", out, "scales", weight.scales());
  // A backend that cannot read the GPU layout dequantizes a standard copy (the same values).
  const Mxfp4Weight standard =
      weight.layout() == BlockLayout::gpu && !reads_gpu_layout(weight.device())
          ? weight.with_layout(BlockLayout::standard)
          : Mxfp4Weight();
  const Mxfp4Weight& w = standard.defined() ? standard : weight;
  detail::DequantizeArgs a{};
  a.blocks = static_cast<const std::uint8_t*>(w.blocks().data());
  a.scales = static_cast<const std::uint8_t*>(w.scales().data());
  a.gpu_layout = w.layout() == BlockLayout::gpu;
  a.rows = weight.num_experts() * weight.out_features();
  a.k = weight.in_features();
  a.out = out.data();
  a.out_dtype = out.dtype();
  a.stream = run.stream.handle;
  kernel(op, weight.device(), &detail::Backend::dequantize)(a);
}

Tensor dequantize(const Mxfp4Weight& weight, DType dtype, const RunOptions& run) {
  require_weight("dequantize", weight);
  if (!is_floating(dtype)) {
    throw DTypeMismatch("dequantize: output dtype must be f32, f16 or bf16, got " +
                        std::string(dtype_name(dtype)));
  }
  Tensor out = Tensor::empty(dequantized_shape(weight), dtype, weight.device());
  dequantize_into(weight, out, run);
  return out;
}

namespace {

bool int8_activations(const char* op, const RunOptions& run) {
  if (run.precision != Precision::exact && run.precision != Precision::int8_activations) {
    throw InvalidArgument(std::string(op) + ": unknown RunOptions::precision " +
                          std::to_string(static_cast<int>(run.precision)) +
                          " (expected exact or int8_activations)");
  }
  return run.precision == Precision::int8_activations;
}

Shape linear_output_shape(const char* op, const Tensor& x, const Mxfp4Weight& w) {
  require_defined(op, "x", x);
  require_weight(op, w);
  require_floating(op, "x", x);
  require_same_device(op, "x", x, w.device());
  require_readable_layout(op, w);
  if (w.stacked()) {
    throw ShapeMismatch(std::string(op) + ": needs a dense [N, K] weight, got a stack of " +
                        std::to_string(w.num_experts()) + " experts (use gather_linear)");
  }
  if (x.rank() < 1 || x.dim(-1) != w.in_features()) {
    throw ShapeMismatch(std::string(op) +
                        ": x must be [..., K] with K=" + std::to_string(w.in_features()) +
                        " (weight in_features), got " + describe("x", x));
  }
  Shape out = x.shape();
  out.back() = w.out_features();
  return out;
}

}  // namespace

void linear_into(const Tensor& x, const Mxfp4Weight& weight, Tensor& out, const RunOptions& run) {
  const char* op = "linear";
  const Shape shape = linear_output_shape(op, x, weight);
  require_output(op, "out", out, shape, x.dtype(), weight.device());
  require_disjoint(op, "out", out, "x", x);
  detail::LinearArgs a{};
  a.x = x.data();
  a.x_dtype = x.dtype();
  a.m = x.numel() / weight.in_features();
  a.w = detail::weight_args(weight);
  a.out = out.data();
  a.stream = run.stream.handle;
  a.int8_activations = int8_activations(op, run);
  a.workspace = run.workspace.data;
  a.workspace_bytes = run.workspace.bytes;
  const auto fn = kernel(op, weight.device(), &detail::Backend::linear);
  if (a.m == 0 || a.w.n == 0) return;
  fn(a);
}

Tensor linear(const Tensor& x, const Mxfp4Weight& weight, const RunOptions& run) {
  Tensor out = Tensor::empty(linear_output_shape("linear", x, weight), x.dtype(), weight.device());
  linear_into(x, weight, out, run);
  return out;
}

namespace {

Shape gather_output_shape(const char* op, const Tensor& x, const Tensor& indices,
                          const Mxfp4Weight& w) {
  require_defined(op, "x", x);
  require_defined(op, "indices", indices);
  require_weight(op, w);
  require_floating(op, "x", x);
  require_same_device(op, "x", x, w.device());
  require_same_device(op, "indices", indices, w.device());
  require_readable_layout(op, w);
  if (!w.stacked()) {
    throw ShapeMismatch(std::string(op) + ": needs stacked experts [E, N, K], got a dense [" +
                        std::to_string(w.out_features()) + ", " + std::to_string(w.in_features()) +
                        "] weight (use linear)");
  }
  if (!is_index(indices.dtype())) {
    throw DTypeMismatch(std::string(op) + ": indices must be u32, i32 or i64, got " +
                        describe("indices", indices));
  }
  if (indices.rank() != 2) {
    throw ShapeMismatch(std::string(op) + ": indices must be [T, topk], got " +
                        describe("indices", indices));
  }
  const std::int64_t tokens = indices.dim(0);
  const std::int64_t topk = indices.dim(1);
  if (x.rank() == 2) {
    if (x.dim(0) != tokens) {
      throw ShapeMismatch(std::string(op) + ": x [T, K] must have T=" + std::to_string(tokens) +
                          " rows (indices' dim 0), got " + describe("x", x) + " with " +
                          describe("indices", indices));
    }
  } else if (x.rank() == 3) {
    if (x.dim(0) != tokens || x.dim(1) != topk) {
      std::string hint;
      if (x.dim(0) == tokens && x.dim(1) == 1 && topk > 1) {
        hint = " (to give every slot the token's row, pass x as [T, K])";
      }
      throw ShapeMismatch(std::string(op) + ": x [T, topk, K] must be [" + std::to_string(tokens) +
                          ", " + std::to_string(topk) + ", K] to match " +
                          describe("indices", indices) + ", got " + describe("x", x) + hint);
    }
  } else {
    throw ShapeMismatch(std::string(op) + ": x must be [T, K] or [T, topk, K], got " +
                        describe("x", x));
  }
  if (x.dim(-1) != w.in_features()) {
    throw ShapeMismatch(std::string(op) +
                        ": x's last dim must be K=" + std::to_string(w.in_features()) +
                        " (weight in_features), got " + describe("x", x));
  }
  return {tokens, topk, w.out_features()};
}

// Expert ids live in host memory on the CPU, so they are checked here, before any kernel runs.
void check_expert_ids(const char* op, const Tensor& indices, std::int64_t experts) {
  const std::int64_t topk = indices.dim(1);
  for (std::int64_t i = 0; i < indices.numel(); ++i) {
    const std::int64_t e = detail::load_index(indices.data(), indices.dtype(), i);
    if (e < 0 || e >= experts) {
      throw IndexOutOfRange(std::string(op) + ": indices[" + std::to_string(i / topk) + ", " +
                            std::to_string(i % topk) + "] = " + std::to_string(e) +
                            " is outside [0, " + std::to_string(experts) + ") (the weight has " +
                            std::to_string(experts) + " experts)");
    }
  }
}

}  // namespace

namespace {

// The arguments of a gather_linear call whose output `out` has been checked.
detail::GatherLinearArgs gather_args(const char* op, const Tensor& x, const Tensor& indices,
                                     const Mxfp4Weight& weight, const Shape& shape, Tensor& out,
                                     const RunOptions& run) {
  require_disjoint(op, "out", out, "x", x);
  require_disjoint(op, "out", out, "indices", indices);
  // Ids in host memory are checked here; a device checks its own (see gather_linear in ops.hpp).
  if (indices.device().type == DeviceType::cpu) check_expert_ids(op, indices, weight.num_experts());
  detail::GatherLinearArgs a{};
  a.x = x.data();
  a.x_dtype = x.dtype();
  a.x_per_slot = x.rank() == 3;
  a.tokens = shape[0];
  a.topk = shape[1];
  a.indices = indices.data();
  a.index_dtype = indices.dtype();
  a.w = detail::weight_args(weight);
  a.out = out.data();
  a.stream = run.stream.handle;
  a.workspace = run.workspace.data;
  a.workspace_bytes = run.workspace.bytes;
  a.int8_activations = int8_activations(op, run);
  return a;
}

}  // namespace

void gather_linear_into(const Tensor& x, const Tensor& indices, const Mxfp4Weight& weight,
                        Tensor& out, const RunOptions& run) {
  const char* op = "gather_linear";
  const Shape shape = gather_output_shape(op, x, indices, weight);
  require_output(op, "out", out, shape, x.dtype(), weight.device());
  const auto fn = kernel(op, weight.device(), &detail::Backend::gather_linear);
  const detail::GatherLinearArgs a = gather_args(op, x, indices, weight, shape, out, run);
  if (a.tokens == 0 || a.topk == 0 || a.w.n == 0) return;
  fn(a);
}

namespace {

// gather_linear_expert_order's output shapes: out [T * topk, N], perm [T * topk], offsets
// [E + 1]; the pairs' count must fit perm's i32.
struct ExpertOrderShapes {
  Shape gather, out, perm, offsets;
};
ExpertOrderShapes expert_order_shapes(const char* op, const Tensor& x, const Tensor& indices,
                                      const Mxfp4Weight& weight) {
  const Shape shape = gather_output_shape(op, x, indices, weight);
  const std::int64_t pairs = shape[0] * shape[1];
  if (pairs >= (std::int64_t{1} << 31)) {
    throw Unsupported(std::string(op) + ": T * topk = " + std::to_string(pairs) +
                      " pairs do not fit perm's i32 (at most 2^31 - 1)");
  }
  return {shape, {pairs, shape[2]}, {pairs}, {weight.num_experts() + 1}};
}

}  // namespace

void gather_linear_expert_order_into(const Tensor& x, const Tensor& indices,
                                     const Mxfp4Weight& weight, Tensor& out, Tensor& perm,
                                     Tensor& offsets, const RunOptions& run) {
  const char* op = "gather_linear_expert_order";
  const ExpertOrderShapes shapes = expert_order_shapes(op, x, indices, weight);
  require_output(op, "out", out, shapes.out, x.dtype(), weight.device());
  require_output(op, "perm", perm, shapes.perm, DType::i32, weight.device());
  require_output(op, "offsets", offsets, shapes.offsets, DType::i32, weight.device());
  const auto fn = kernel(op, weight.device(), &detail::Backend::gather_linear);
  require_disjoint(op, "perm", perm, "x", x);
  require_disjoint(op, "perm", perm, "indices", indices);
  require_disjoint(op, "offsets", offsets, "x", x);
  require_disjoint(op, "offsets", offsets, "indices", indices);
  require_disjoint(op, "perm", perm, "out", out);
  require_disjoint(op, "offsets", offsets, "out", out);
  require_disjoint(op, "offsets", offsets, "perm", perm);
  detail::GatherLinearArgs a = gather_args(op, x, indices, weight, shapes.gather, out, run);
  a.order_perm = static_cast<std::int32_t*>(perm.data());
  a.order_offsets = static_cast<std::int32_t*>(offsets.data());
  // With no pairs or no output rows the backend still writes perm and offsets.
  fn(a);
}

ExpertOrderOutput gather_linear_expert_order(const Tensor& x, const Tensor& indices,
                                             const Mxfp4Weight& weight, const RunOptions& run) {
  const ExpertOrderShapes shapes =
      expert_order_shapes("gather_linear_expert_order", x, indices, weight);
  ExpertOrderOutput r{Tensor::empty(shapes.out, x.dtype(), weight.device()),
                      Tensor::empty(shapes.perm, DType::i32, weight.device()),
                      Tensor::empty(shapes.offsets, DType::i32, weight.device())};
  gather_linear_expert_order_into(x, indices, weight, r.out, r.perm, r.offsets, run);
  return r;
}

std::size_t gather_linear_workspace_bytes(std::int64_t tokens, std::int64_t topk,
                                          std::int64_t experts, std::int64_t k) {
  std::int64_t pairs = 0;
  if (tokens < 0 || topk < 0 || experts < 0 || experts > (std::int64_t{1} << 40) ||
      __builtin_mul_overflow(tokens, topk, &pairs) || pairs > (std::int64_t{1} << 40) || k < 0 ||
      k > (std::int64_t{1} << 30) || k % kBlockSize != 0) {
    throw InvalidArgument(
        "gather_linear_workspace_bytes: tokens, topk and experts must be >= 0, tokens * topk "
        "and experts at most 2^40, and k a multiple of 32 in [0, 2^30], got tokens=" +
        std::to_string(tokens) + ", topk=" + std::to_string(topk) +
        ", experts=" + std::to_string(experts) + ", k=" + std::to_string(k));
  }
  return detail::cuda_gather_workspace_bytes(tokens, topk, experts, k);
}

Tensor gather_linear(const Tensor& x, const Tensor& indices, const Mxfp4Weight& weight,
                     const RunOptions& run) {
  Tensor out = Tensor::empty(gather_output_shape("gather_linear", x, indices, weight), x.dtype(),
                             weight.device());
  gather_linear_into(x, indices, weight, out, run);
  return out;
}

}  // namespace mxfp4
