// The C API (include/mxfp4/mxfp4.h): a thin layer over the C++ API. Every entry point runs its
// body inside `guarded`, which turns every exception into a status code and the calling thread's
// last error message; nothing here has logic the C++ API lacks.
#include "mxfp4/mxfp4.h"

#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/checks.hpp"
#include "core/gptq_internal.hpp"
#include "io/tensor_file.hpp"
#include "mxfp4/cpu.hpp"
#include "mxfp4/device.hpp"
#include "mxfp4/gptq.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/rotate.hpp"
#include "mxfp4/version.hpp"
#include "mxfp4/weight.hpp"

static_assert(MXFP4_VERSION_MAJOR == mxfp4::kVersionMajor &&
                  MXFP4_VERSION_MINOR == mxfp4::kVersionMinor &&
                  MXFP4_VERSION_PATCH == mxfp4::kVersionPatch,
              "mxfp4.h and version.hpp disagree");
static_assert(static_cast<int>(mxfp4::ErrorCode::device_error) == MXFP4_ERR_DEVICE);
static_assert(static_cast<int>(mxfp4::DType::i64) == MXFP4_I64);
static_assert(static_cast<int>(mxfp4::ScaleRule::mistralrs) == MXFP4_SCALE_MISTRALRS);
static_assert(static_cast<int>(mxfp4::NonFinitePolicy::nan_block) == MXFP4_NON_FINITE_NAN_BLOCK);
static_assert(static_cast<int>(mxfp4::BlockLayout::gpu) == MXFP4_LAYOUT_GPU);
static_assert(static_cast<int>(mxfp4::detail::FileFormat::safetensors) == MXFP4_FORMAT_SAFETENSORS);
static_assert(static_cast<int>(mxfp4::Precision::int8_activations) ==
              MXFP4_PRECISION_INT8_ACTIVATIONS);
static_assert(static_cast<int>(mxfp4::detail::FileFormat::gguf) == MXFP4_FORMAT_GGUF);
static_assert(static_cast<int>(mxfp4::detail::FileFormat::uqff1) == MXFP4_FORMAT_UQFF1);
static_assert(static_cast<int>(mxfp4::detail::FileFormat::gptoss) == MXFP4_FORMAT_GPTOSS);
static_assert(static_cast<int>(mxfp4::detail::FileFormat::uqff_legacy) == MXFP4_FORMAT_UQFF_LEGACY);

struct mxfp4_weight {
  mxfp4::Mxfp4Weight weight;
};

struct mxfp4_hessian {
  mxfp4::Hessian hessian;
};

struct mxfp4_file {
  std::unique_ptr<mxfp4::detail::TensorFileReader> reader;
};

struct mxfp4_writer {
  std::vector<mxfp4::detail::NamedTensor> tensors;
  std::map<std::string, std::string> metadata;
};

namespace {

using mxfp4::Device;
using mxfp4::DType;
using mxfp4::InvalidArgument;
using mxfp4::Shape;
using mxfp4::Tensor;

thread_local std::string last_error_storage;
thread_local const char* last_error = "";

mxfp4_status fail(mxfp4_status status, const char* message) noexcept {
  try {
    last_error_storage = message;
    last_error = last_error_storage.c_str();
  } catch (...) {
    last_error = "out of memory while recording an error message";
  }
  return status;
}

template <typename Body>
mxfp4_status guarded(Body&& body) noexcept {
  try {
    body();
    return MXFP4_OK;
  } catch (const mxfp4::Error& e) {
    return fail(static_cast<mxfp4_status>(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(MXFP4_ERR_OUT_OF_MEMORY, "out of host memory");
  } catch (const std::exception& e) {
    try {
      return fail(MXFP4_ERR_INTERNAL, (std::string("internal error: ") + e.what()).c_str());
    } catch (...) {
      return fail(MXFP4_ERR_INTERNAL, "internal error");
    }
  } catch (...) {
    return fail(MXFP4_ERR_INTERNAL, "internal error: an unknown exception");
  }
}

std::string where(const char* op, const char* name) {
  return std::string(op) + ": " + name;
}

template <typename T>
T& require(const char* op, const char* name, T* p) {
  if (p == nullptr) throw InvalidArgument(where(op, name) + " is NULL");
  return *p;
}

const char* require_string(const char* op, const char* name, const char* s) {
  if (s == nullptr) throw InvalidArgument(where(op, name) + " is NULL");
  return s;
}

Device to_device(const char* op, const char* name, mxfp4_device d) {
  if (d.type == MXFP4_DEVICE_CPU) {
    if (d.index != 0) {
      throw InvalidArgument(where(op, name) + ": a CPU device has index 0, got " +
                            std::to_string(d.index));
    }
    return Device::cpu();
  }
  if (d.type == MXFP4_DEVICE_CUDA) {
    if (d.index < 0) {
      throw InvalidArgument(where(op, name) + ": CUDA device index must be >= 0, got " +
                            std::to_string(d.index));
    }
    return Device::cuda(d.index);
  }
  throw InvalidArgument(where(op, name) + ": unknown device type " + std::to_string(d.type) +
                        " (0 CPU, 1 CUDA)");
}

mxfp4_device from_device(Device d) {
  mxfp4_device out{};
  out.type = d.type == mxfp4::DeviceType::cuda ? MXFP4_DEVICE_CUDA : MXFP4_DEVICE_CPU;
  out.index = d.index;
  return out;
}

DType to_dtype(const char* op, const char* name, std::int32_t dtype) {
  if (dtype < MXFP4_F32 || dtype > MXFP4_I64) {
    throw InvalidArgument(where(op, name) + ": unknown dtype " + std::to_string(dtype) +
                          " (0 f32, 1 f16, 2 bf16, 3 u8, 4 u32, 5 i32, 6 i64)");
  }
  return static_cast<DType>(dtype);
}

// A view of the caller's tensor after checking every field of the descriptor.
Tensor to_tensor(const char* op, const char* name, const mxfp4_tensor* t) {
  const mxfp4_tensor& d = require(op, name, t);
  if (d.rank < 0 || d.rank > MXFP4_MAX_RANK) {
    throw InvalidArgument(where(op, name) + ": rank must be in [0, " +
                          std::to_string(MXFP4_MAX_RANK) + "], got " + std::to_string(d.rank));
  }
  const DType dtype = to_dtype(op, name, d.dtype);
  const Device device = to_device(op, name, d.device);
  Shape shape(d.shape, d.shape + d.rank);
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      throw InvalidArgument(where(op, name) + ": dim " + std::to_string(i) +
                            " is negative in shape " + mxfp4::to_string(shape));
    }
  }
  std::int64_t numel = 0;
  try {
    numel = mxfp4::shape_numel(shape);
  } catch (const InvalidArgument&) {
    throw InvalidArgument(where(op, name) + ": " + mxfp4::to_string(shape) +
                          " is too large to address");
  }
  if (numel > 0 && d.data == nullptr) {
    throw InvalidArgument(where(op, name) + ": data is NULL for " +
                          std::string(mxfp4::dtype_name(dtype)) + " " + mxfp4::to_string(shape));
  }
  if (numel > INT64_MAX / static_cast<std::int64_t>(mxfp4::dtype_size(dtype))) {
    throw InvalidArgument(where(op, name) + ": " + mxfp4::to_string(shape) +
                          " is too large to address");
  }
  return Tensor::view(d.data, std::move(shape), dtype, device);
}

std::optional<Tensor> to_optional_tensor(const char* op, const char* name, const mxfp4_tensor* t) {
  if (t == nullptr) return std::nullopt;
  return to_tensor(op, name, t);
}

void describe_tensor(const Tensor& t, mxfp4_tensor& out) {
  mxfp4_tensor d{};
  d.data = const_cast<void*>(t.data());  // the header says: do not write through it
  d.rank = t.rank();
  for (int i = 0; i < t.rank() && i < MXFP4_MAX_RANK; ++i)
    d.shape[i] = t.shape()[i];
  d.dtype = static_cast<std::int32_t>(t.dtype());
  d.device = from_device(t.device());
  out = d;
}

mxfp4::QuantizeOptions quantize_options(const char* op, std::int32_t rule,
                                        std::int32_t non_finite) {
  if (rule < MXFP4_SCALE_FLOOR || rule > MXFP4_SCALE_MISTRALRS) {
    throw InvalidArgument(std::string(op) + ": unknown scale rule " + std::to_string(rule) +
                          " (0 floor, 1 ceil, 2 even, 3 mse, 4 mistralrs)");
  }
  if (non_finite != MXFP4_NON_FINITE_ERROR && non_finite != MXFP4_NON_FINITE_NAN_BLOCK) {
    throw InvalidArgument(std::string(op) + ": unknown non-finite policy " +
                          std::to_string(non_finite) + " (0 error, 1 nan_block)");
  }
  mxfp4::QuantizeOptions o;
  o.rule = static_cast<mxfp4::ScaleRule>(rule);
  o.non_finite = static_cast<mxfp4::NonFinitePolicy>(non_finite);
  return o;
}

mxfp4::RunOptions run_options(void* stream) {
  mxfp4::RunOptions r;
  r.stream.handle = stream;
  return r;
}

mxfp4::RunOptions run_options(const char* op, const mxfp4_run_options* options) {
  mxfp4::RunOptions r;
  if (options == nullptr) return r;
  r.stream.handle = options->stream;
  switch (options->precision) {
    case MXFP4_PRECISION_EXACT:
      r.precision = mxfp4::Precision::exact;
      break;
    case MXFP4_PRECISION_INT8_ACTIVATIONS:
      r.precision = mxfp4::Precision::int8_activations;
      break;
    default:
      throw mxfp4::InvalidArgument(std::string(op) + ": unknown precision " +
                                   std::to_string(options->precision) +
                                   " (known: 0 exact, 1 int8_activations)");
  }
  if (options->workspace == nullptr && options->workspace_bytes != 0) {
    throw mxfp4::InvalidArgument(std::string(op) + ": workspace is NULL but workspace_bytes is " +
                                 std::to_string(options->workspace_bytes));
  }
  r.workspace = {options->workspace, options->workspace_bytes};
  return r;
}

const mxfp4::Mxfp4Weight& weight_of(const char* op, const mxfp4_weight* w) {
  return require(op, "weight", w).weight;
}

const mxfp4::Hessian& hessian_of(const char* op, const mxfp4_hessian* h) {
  return require(op, "hessian", h).hessian;
}

const mxfp4::detail::TensorFileReader& reader_of(const char* op, const mxfp4_file* f) {
  return *require(op, "file", f).reader;
}

mxfp4::GptqOptions gptq_options(const char* op, int32_t rule, double damp) {
  mxfp4::GptqOptions options;
  options.rule = quantize_options(op, rule, MXFP4_NON_FINITE_ERROR).rule;
  options.damp = damp;
  return options;
}

// A handle for a GPTQ result; the bias, validated as given, is kept as a copy.
mxfp4_weight* gptq_result(mxfp4::Mxfp4Weight q, const std::optional<Tensor>& bias) {
  auto handle = std::make_unique<mxfp4_weight>();
  if (bias) {
    handle->weight = mxfp4::Mxfp4Weight::from_parts(q.blocks(), q.scales(), bias->clone());
  } else {
    handle->weight = std::move(q);
  }
  return handle.release();
}

}  // namespace

extern "C" {

uint32_t mxfp4_version(void) {
  return (static_cast<uint32_t>(mxfp4::kVersionMajor) << 16) |
         (static_cast<uint32_t>(mxfp4::kVersionMinor) << 8) |
         static_cast<uint32_t>(mxfp4::kVersionPatch);
}

const char* mxfp4_version_string(void) {
  return mxfp4::version_string();
}

const char* mxfp4_status_name(int32_t status) {
  switch (status) {
    case MXFP4_OK:
      return "ok";
    case MXFP4_ERR_OUT_OF_MEMORY:
      return "out_of_memory";
    case MXFP4_ERR_INTERNAL:
      return "internal";
    default:
      break;
  }
  if (status >= MXFP4_ERR_INVALID_ARGUMENT && status <= MXFP4_ERR_DEVICE) {
    return mxfp4::error_code_name(static_cast<mxfp4::ErrorCode>(status));
  }
  return "unknown";
}

const char* mxfp4_last_error_message(void) {
  return last_error;
}

const char* mxfp4_dtype_name(int32_t dtype) {
  if (dtype < MXFP4_F32 || dtype > MXFP4_I64) return "unknown";
  return mxfp4::dtype_name(static_cast<DType>(dtype)).data();
}

int mxfp4_cuda_built(void) {
  return mxfp4::cuda_built() ? 1 : 0;
}

mxfp4_status mxfp4_cuda_device_count(int* count) {
  return guarded([&] {
    int& out = require("cuda_device_count", "count", count);
    out = mxfp4::cuda_device_count();
  });
}

mxfp4_status mxfp4_synchronize(void* stream) {
  return guarded([&] { mxfp4::synchronize(mxfp4::Stream{stream}); });
}

mxfp4_status mxfp4_set_num_threads(int n) {
  return guarded([&] { mxfp4::set_num_threads(n); });
}

mxfp4_status mxfp4_num_threads(int* n) {
  return guarded([&] {
    int& out = require("num_threads", "n", n);
    out = mxfp4::num_threads();
  });
}

const char* mxfp4_scale_rule_name(int32_t rule) {
  if (rule < MXFP4_SCALE_FLOOR || rule > MXFP4_SCALE_MISTRALRS) return "unknown";
  return mxfp4::scale_rule_name(static_cast<mxfp4::ScaleRule>(rule));
}

mxfp4_status mxfp4_parse_scale_rule(const char* name, int32_t* rule) {
  return guarded([&] {
    const char* s = require_string("parse_scale_rule", "name", name);
    int32_t& out = require("parse_scale_rule", "rule", rule);
    out = static_cast<int32_t>(mxfp4::parse_scale_rule(s));
  });
}

mxfp4_status mxfp4_weight_quantize(const mxfp4_tensor* weight, const mxfp4_tensor* bias,
                                   int32_t rule, int32_t non_finite, void* stream,
                                   mxfp4_weight** out) {
  return guarded([&] {
    const char* op = "weight_quantize";
    mxfp4_weight*& result = require(op, "out", out);
    const Tensor w = to_tensor(op, "weight", weight);
    std::optional<Tensor> b = to_optional_tensor(op, "bias", bias);
    const mxfp4::QuantizeOptions options = quantize_options(op, rule, non_finite);
    mxfp4::QuantizedTensor q = mxfp4::quantize(w, options, run_options(stream));
    if (b) b = b->clone();
    auto handle = std::make_unique<mxfp4_weight>();
    handle->weight =
        mxfp4::Mxfp4Weight::from_parts(std::move(q.blocks), std::move(q.scales), std::move(b));
    result = handle.release();
  });
}

mxfp4_status mxfp4_weight_from_parts(const mxfp4_tensor* blocks, const mxfp4_tensor* scales,
                                     const mxfp4_tensor* bias, uint32_t flags, mxfp4_weight** out) {
  return guarded([&] {
    const char* op = "weight_from_parts";
    mxfp4_weight*& result = require(op, "out", out);
    if (flags != MXFP4_COPY && flags != MXFP4_BORROW) {
      throw InvalidArgument(std::string(op) + ": unknown flags " + std::to_string(flags) +
                            " (MXFP4_COPY 0 or MXFP4_BORROW 1)");
    }
    Tensor bl = to_tensor(op, "blocks", blocks);
    Tensor sc = to_tensor(op, "scales", scales);
    std::optional<Tensor> bi = to_optional_tensor(op, "bias", bias);
    // Validate on the views first, so that a bad weight costs no copy.
    auto handle = std::make_unique<mxfp4_weight>();
    handle->weight = mxfp4::Mxfp4Weight::from_parts(bl, sc, bi);
    if (flags == MXFP4_COPY) {
      if (bi) bi = bi->clone();
      handle->weight = mxfp4::Mxfp4Weight::from_parts(bl.clone(), sc.clone(), std::move(bi));
    }
    result = handle.release();
  });
}

mxfp4_status mxfp4_weight_get_info(const mxfp4_weight* weight, mxfp4_weight_info* info) {
  return guarded([&] {
    const char* op = "weight_get_info";
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    mxfp4_weight_info& out = require(op, "info", info);
    mxfp4_weight_info i{};
    i.stacked = w.stacked() ? 1 : 0;
    i.has_bias = w.bias() ? 1 : 0;
    i.num_experts = w.num_experts();
    i.out_features = w.out_features();
    i.in_features = w.in_features();
    i.device = from_device(w.device());
    out = i;
  });
}

mxfp4_status mxfp4_weight_get_layout(const mxfp4_weight* weight, int32_t* layout) {
  return guarded([&] {
    const char* op = "weight_get_layout";
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    int32_t& out = require(op, "layout", layout);
    out = static_cast<int32_t>(w.layout());
  });
}

mxfp4_status mxfp4_weight_with_layout(const mxfp4_weight* weight, int32_t layout,
                                      mxfp4_weight** out) {
  return guarded([&] {
    const char* op = "weight_with_layout";
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    mxfp4_weight*& result = require(op, "out", out);
    if (layout != MXFP4_LAYOUT_STANDARD && layout != MXFP4_LAYOUT_GPU) {
      throw InvalidArgument(std::string(op) + ": unknown layout " + std::to_string(layout) +
                            " (MXFP4_LAYOUT_STANDARD 0 or MXFP4_LAYOUT_GPU 1)");
    }
    auto handle = std::make_unique<mxfp4_weight>();
    handle->weight = w.with_layout(static_cast<mxfp4::BlockLayout>(layout));
    result = handle.release();
  });
}

mxfp4_status mxfp4_weight_get_part(const mxfp4_weight* weight, int32_t part, mxfp4_tensor* view) {
  return guarded([&] {
    const char* op = "weight_get_part";
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    mxfp4_tensor& out = require(op, "view", view);
    switch (part) {
      case MXFP4_PART_BLOCKS:
        describe_tensor(w.blocks(), out);
        return;
      case MXFP4_PART_SCALES:
        describe_tensor(w.scales(), out);
        return;
      case MXFP4_PART_BIAS:
        if (!w.bias()) throw InvalidArgument(std::string(op) + ": the weight has no bias");
        describe_tensor(*w.bias(), out);
        return;
      default:
        throw InvalidArgument(std::string(op) + ": unknown part " + std::to_string(part) +
                              " (0 blocks, 1 scales, 2 bias)");
    }
  });
}

void mxfp4_weight_destroy(mxfp4_weight* weight) {
  delete weight;
}

mxfp4_status mxfp4_hessian_create(int64_t in_features, mxfp4_hessian** out) {
  return guarded([&] {
    mxfp4_hessian*& result = require("hessian_create", "out", out);
    auto handle = std::make_unique<mxfp4_hessian>(mxfp4_hessian{mxfp4::Hessian(in_features)});
    result = handle.release();
  });
}

mxfp4_status mxfp4_hessian_from_tensor(const mxfp4_tensor* matrix, mxfp4_hessian** out) {
  return guarded([&] {
    const char* op = "hessian_from_tensor";
    mxfp4_hessian*& result = require(op, "out", out);
    const Tensor m = to_tensor(op, "matrix", matrix);
    auto handle = std::make_unique<mxfp4_hessian>(mxfp4_hessian{mxfp4::Hessian::from_tensor(m)});
    result = handle.release();
  });
}

mxfp4_status mxfp4_hessian_from_values(int64_t in_features, const double* values, size_t count,
                                       mxfp4_hessian** out) {
  return guarded([&] {
    const char* op = "hessian_from_values";
    mxfp4_hessian*& result = require(op, "out", out);
    if (values == nullptr) throw InvalidArgument(where(op, "values") + " is NULL");
    // The count is checked against K before the copy, so that a lying count reads nothing; a K
    // out of range copies nothing and gets Hessian::from_values's error.
    constexpr std::int64_t kMaxInFeatures = 65536;  // gptq.hpp
    const bool k_ok = in_features >= 1 && in_features <= kMaxInFeatures;
    if (k_ok && count != static_cast<std::size_t>(in_features * in_features)) {
      throw mxfp4::ShapeMismatch(std::string(op) + ": K=" + std::to_string(in_features) +
                                 " needs " + std::to_string(in_features * in_features) +
                                 " values, got count " + std::to_string(count));
    }
    std::vector<double> v;
    if (k_ok) v.assign(values, values + count);
    auto handle = std::make_unique<mxfp4_hessian>(
        mxfp4_hessian{mxfp4::Hessian::from_values(in_features, std::move(v))});
    result = handle.release();
  });
}

mxfp4_status mxfp4_hessian_add(mxfp4_hessian* hessian, const mxfp4_tensor* activations) {
  return guarded([&] {
    const char* op = "hessian_add";
    mxfp4_hessian& h = require(op, "hessian", hessian);
    const Tensor x = to_tensor(op, "activations", activations);
    h.hessian.add(x);
  });
}

mxfp4_status mxfp4_hessian_get_info(const mxfp4_hessian* hessian, mxfp4_hessian_info* info) {
  return guarded([&] {
    const char* op = "hessian_get_info";
    const mxfp4::Hessian& h = hessian_of(op, hessian);
    mxfp4_hessian_info& out = require(op, "info", info);
    mxfp4_hessian_info i{};
    i.in_features = h.in_features();
    i.samples = h.samples();
    out = i;
  });
}

mxfp4_status mxfp4_hessian_read_values(const mxfp4_hessian* hessian, double* values, size_t count) {
  return guarded([&] {
    const char* op = "hessian_read_values";
    const mxfp4::Hessian& h = hessian_of(op, hessian);
    double* dst = &require(op, "values", values);
    const std::vector<double>& v = h.values();
    if (count != v.size()) {
      throw mxfp4::ShapeMismatch(
          std::string(op) + ": the hessian has K=" + std::to_string(h.in_features()) + ", so " +
          std::to_string(v.size()) + " values; count is " + std::to_string(count));
    }
    std::copy(v.begin(), v.end(), dst);
  });
}

void mxfp4_hessian_destroy(mxfp4_hessian* hessian) {
  delete hessian;
}

mxfp4_status mxfp4_quantize_gptq(const mxfp4_tensor* weight, const mxfp4_hessian* hessian,
                                 const mxfp4_tensor* bias, int32_t rule, double damp,
                                 mxfp4_weight** out) {
  return guarded([&] {
    const char* op = "quantize_gptq";
    mxfp4_weight*& result = require(op, "out", out);
    const Tensor w = to_tensor(op, "weight", weight);
    const mxfp4::Hessian& h = hessian_of(op, hessian);
    std::optional<Tensor> b = to_optional_tensor(op, "bias", bias);
    const mxfp4::GptqOptions options = gptq_options(op, rule, damp);
    mxfp4::Mxfp4Weight q = mxfp4::quantize_gptq(w, h, b, options);
    result = gptq_result(std::move(q), b);
  });
}

mxfp4_status mxfp4_quantize_gptq_experts(const mxfp4_tensor* weight,
                                         const mxfp4_hessian* const* hessians, size_t count,
                                         const mxfp4_tensor* bias, int32_t rule, double damp,
                                         mxfp4_weight** out) {
  return guarded([&] {
    const char* op = "quantize_gptq_experts";
    mxfp4_weight*& result = require(op, "out", out);
    const Tensor w = to_tensor(op, "weight", weight);
    if (w.rank() != 3) {
      throw mxfp4::ShapeMismatch(
          std::string(op) +
          ": weight must be a stack of experts [E, N, K] (for one matrix [N, K] " +
          "use mxfp4_quantize_gptq), got " + mxfp4::detail::describe("weight", w));
    }
    if (hessians == nullptr) throw InvalidArgument(where(op, "hessians") + " is NULL");
    const std::int64_t experts = w.dim(0), k = w.dim(2);
    if (count != static_cast<std::size_t>(experts)) {
      throw mxfp4::ShapeMismatch(std::string(op) + ": " + mxfp4::detail::describe("weight", w) +
                                 " has " + std::to_string(experts) + " experts but count is " +
                                 std::to_string(count) + " (one Hessian per expert)");
    }
    // Every handle before any work, so that a bad one costs no quantization.
    for (std::size_t e = 0; e < count; ++e) {
      const std::string name = "hessians[" + std::to_string(e) + "]";
      if (hessians[e] == nullptr) throw InvalidArgument(where(op, name.c_str()) + " is NULL");
      const std::int64_t hk = hessians[e]->hessian.in_features();
      if (hk != k) {
        throw mxfp4::ShapeMismatch(
            std::string(op) + ": " + name + " is for K=" + std::to_string(hk) + " inputs but " +
            mxfp4::detail::describe("weight", w) + " has K=" + std::to_string(k));
      }
    }
    std::optional<Tensor> b = to_optional_tensor(op, "bias", bias);
    const mxfp4::GptqOptions options = gptq_options(op, rule, damp);
    // The handles are lent, not copied (each H is K * K doubles).
    mxfp4::Mxfp4Weight q = mxfp4::detail::quantize_gptq_experts(
        w, experts,
        [&](std::int64_t e) -> const mxfp4::Hessian& {
          return hessians[static_cast<std::size_t>(e)]->hessian;
        },
        b, options);
    result = gptq_result(std::move(q), b);
  });
}

mxfp4_status mxfp4_quantize(const mxfp4_tensor* weight, const mxfp4_tensor* blocks,
                            const mxfp4_tensor* scales, int32_t rule, int32_t non_finite,
                            void* stream) {
  return guarded([&] {
    const char* op = "quantize";
    const Tensor w = to_tensor(op, "weight", weight);
    Tensor b = to_tensor(op, "blocks", blocks);
    Tensor s = to_tensor(op, "scales", scales);
    mxfp4::quantize_into(w, b, s, quantize_options(op, rule, non_finite), run_options(stream));
  });
}

mxfp4_status mxfp4_dequantize(const mxfp4_weight* weight, const mxfp4_tensor* out, void* stream) {
  return guarded([&] {
    const char* op = "dequantize";
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    Tensor o = to_tensor(op, "out", out);
    mxfp4::dequantize_into(w, o, run_options(stream));
  });
}

mxfp4_status mxfp4_linear(const mxfp4_tensor* x, const mxfp4_weight* weight,
                          const mxfp4_tensor* out, void* stream) {
  return guarded([&] {
    const char* op = "linear";
    const Tensor xv = to_tensor(op, "x", x);
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    Tensor o = to_tensor(op, "out", out);
    mxfp4::linear_into(xv, w, o, run_options(stream));
  });
}

mxfp4_status mxfp4_rotate_blocks(const mxfp4_tensor* x, const mxfp4_tensor* out) {
  return guarded([&] {
    const char* op = "rotate_blocks";
    const Tensor xv = to_tensor(op, "x", x);
    Tensor o = to_tensor(op, "out", out);
    mxfp4::rotate_blocks_into(xv, o);
  });
}

mxfp4_status mxfp4_gather_linear(const mxfp4_tensor* x, const mxfp4_tensor* indices,
                                 const mxfp4_weight* weight, const mxfp4_tensor* out,
                                 void* stream) {
  return guarded([&] {
    const char* op = "gather_linear";
    const Tensor xv = to_tensor(op, "x", x);
    const Tensor ids = to_tensor(op, "indices", indices);
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    Tensor o = to_tensor(op, "out", out);
    mxfp4::gather_linear_into(xv, ids, w, o, run_options(stream));
  });
}

mxfp4_status mxfp4_run_options_init(mxfp4_run_options* options) {
  return guarded([&] {
    mxfp4_run_options& o = require("run_options_init", "options", options);
    o = mxfp4_run_options{};
    o.precision = MXFP4_PRECISION_EXACT;
  });
}

mxfp4_status mxfp4_linear_ex(const mxfp4_tensor* x, const mxfp4_weight* weight,
                             const mxfp4_tensor* out, const mxfp4_run_options* options) {
  return guarded([&] {
    const char* op = "linear";
    const mxfp4::RunOptions run = run_options(op, options);
    const Tensor xv = to_tensor(op, "x", x);
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    Tensor o = to_tensor(op, "out", out);
    mxfp4::linear_into(xv, w, o, run);
  });
}

mxfp4_status mxfp4_gather_linear_ex(const mxfp4_tensor* x, const mxfp4_tensor* indices,
                                    const mxfp4_weight* weight, const mxfp4_tensor* out,
                                    const mxfp4_run_options* options) {
  return guarded([&] {
    const char* op = "gather_linear";
    const mxfp4::RunOptions run = run_options(op, options);
    const Tensor xv = to_tensor(op, "x", x);
    const Tensor ids = to_tensor(op, "indices", indices);
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    Tensor o = to_tensor(op, "out", out);
    mxfp4::gather_linear_into(xv, ids, w, o, run);
  });
}

mxfp4_status mxfp4_gather_linear_expert_order(const mxfp4_tensor* x, const mxfp4_tensor* indices,
                                              const mxfp4_weight* weight, const mxfp4_tensor* out,
                                              const mxfp4_tensor* perm, const mxfp4_tensor* offsets,
                                              const mxfp4_run_options* options) {
  return guarded([&] {
    const char* op = "gather_linear_expert_order";
    const mxfp4::RunOptions run = run_options(op, options);
    const Tensor xv = to_tensor(op, "x", x);
    const Tensor ids = to_tensor(op, "indices", indices);
    const mxfp4::Mxfp4Weight& w = weight_of(op, weight);
    Tensor o = to_tensor(op, "out", out);
    Tensor p = to_tensor(op, "perm", perm);
    Tensor offs = to_tensor(op, "offsets", offsets);
    mxfp4::gather_linear_expert_order_into(xv, ids, w, o, p, offs, run);
  });
}

mxfp4_status mxfp4_gather_linear_workspace_bytes(int64_t tokens, int64_t topk, int64_t experts,
                                                 size_t* bytes) {
  return guarded([&] {
    std::size_t& result = require("gather_linear_workspace_bytes", "bytes", bytes);
    result = mxfp4::gather_linear_workspace_bytes(tokens, topk, experts);
  });
}

mxfp4_status mxfp4_gather_linear_workspace_bytes_k(int64_t tokens, int64_t topk, int64_t experts,
                                                   int64_t k, size_t* bytes) {
  return guarded([&] {
    std::size_t& result = require("gather_linear_workspace_bytes_k", "bytes", bytes);
    result = mxfp4::gather_linear_workspace_bytes(tokens, topk, experts, k);
  });
}

mxfp4_status mxfp4_linear_workspace_bytes(size_t* bytes) {
  return guarded([&] {
    std::size_t& result = require("linear_workspace_bytes", "bytes", bytes);
    result = mxfp4::linear_workspace_bytes();
  });
}

mxfp4_status mxfp4_file_open(const char* path, int32_t format, mxfp4_file** out) {
  return guarded([&] {
    const char* op = "file_open";
    const char* p = require_string(op, "path", path);
    mxfp4_file*& result = require(op, "out", out);
    auto handle = std::make_unique<mxfp4_file>();
    handle->reader =
        mxfp4::detail::open_tensor_file(p, mxfp4::detail::file_format_from_int(format));
    result = handle.release();
  });
}

void mxfp4_file_close(mxfp4_file* file) {
  delete file;
}

mxfp4_status mxfp4_file_tensor_count(const mxfp4_file* file, size_t* count) {
  return guarded([&] {
    const char* op = "file_tensor_count";
    const auto& r = reader_of(op, file);
    require(op, "count", count) = r.tensors().size();
  });
}

mxfp4_status mxfp4_file_tensor_info(const mxfp4_file* file, size_t index, mxfp4_tensor_info* info) {
  return guarded([&] {
    const char* op = "file_tensor_info";
    const auto& r = reader_of(op, file);
    mxfp4_tensor_info& out = require(op, "info", info);
    if (index >= r.tensors().size()) {
      throw InvalidArgument(std::string(op) + ": index " + std::to_string(index) +
                            " is out of range: the file has " + std::to_string(r.tensors().size()) +
                            " tensors");
    }
    const mxfp4::detail::StoredTensorInfo& t = r.tensors()[index];
    mxfp4_tensor_info i{};
    i.name = t.name.c_str();
    i.file_dtype = t.file_dtype.c_str();
    i.dtype = t.dtype ? static_cast<int32_t>(*t.dtype) : -1;
    i.rank = static_cast<int32_t>(t.shape.size());
    for (std::size_t d = 0; d < t.shape.size() && d < MXFP4_MAX_RANK; ++d)
      i.shape[d] = t.shape[d];
    i.nbytes = t.nbytes;
    out = i;
  });
}

mxfp4_status mxfp4_file_find_tensor(const mxfp4_file* file, const char* name, size_t* index) {
  return guarded([&] {
    const char* op = "file_find_tensor";
    const auto& r = reader_of(op, file);
    const char* n = require_string(op, "name", name);
    size_t& out = require(op, "index", index);
    const std::optional<std::size_t> i = r.find(n);
    if (!i) {
      throw InvalidArgument("file '" + r.source() + "' has no tensor '" + std::string(n) + "'");
    }
    out = *i;
  });
}

mxfp4_status mxfp4_file_read_tensor(const mxfp4_file* file, const char* name,
                                    const mxfp4_tensor* out, void* stream) {
  return guarded([&] {
    const char* op = "file_read_tensor";
    const auto& r = reader_of(op, file);
    const char* n = require_string(op, "name", name);
    Tensor o = to_tensor(op, "out", out);
    const Tensor src = r.read(n);
    if (src.dtype() != o.dtype() || src.shape() != o.shape()) {
      const std::string msg = std::string(op) + ": tensor '" + n + "' is " +
                              std::string(mxfp4::dtype_name(src.dtype())) + " " +
                              mxfp4::to_string(src.shape()) + " but out is " +
                              std::string(mxfp4::dtype_name(o.dtype())) + " " +
                              mxfp4::to_string(o.shape());
      if (src.dtype() != o.dtype()) throw mxfp4::DTypeMismatch(msg);
      throw mxfp4::ShapeMismatch(msg);
    }
    // `src` dies on return: wait for an asynchronous copy to finish reading it.
    o.copy_from(src, mxfp4::Stream{stream});
    if (stream != nullptr) mxfp4::synchronize(mxfp4::Stream{stream});
  });
}

mxfp4_status mxfp4_file_metadata(const mxfp4_file* file, const char* key, const char** value) {
  return guarded([&] {
    const char* op = "file_metadata";
    const auto& r = reader_of(op, file);
    const char* k = require_string(op, "key", key);
    const char*& out = require(op, "value", value);
    const auto it = r.metadata().find(k);
    if (it == r.metadata().end()) {
      throw InvalidArgument("file '" + r.source() + "' has no metadata key '" + k + "'");
    }
    out = it->second.c_str();
  });
}

mxfp4_status mxfp4_file_weight_count(const mxfp4_file* file, size_t* count) {
  return guarded([&] {
    const char* op = "file_weight_count";
    const auto& r = reader_of(op, file);
    require(op, "count", count) = r.weight_names().size();
  });
}

mxfp4_status mxfp4_file_weight_name(const mxfp4_file* file, size_t index, const char** prefix) {
  return guarded([&] {
    const char* op = "file_weight_name";
    const auto& r = reader_of(op, file);
    const char*& out = require(op, "prefix", prefix);
    if (index >= r.weight_names().size()) {
      throw InvalidArgument(std::string(op) + ": index " + std::to_string(index) +
                            " is out of range: the file has " +
                            std::to_string(r.weight_names().size()) + " MXFP4 weights");
    }
    out = r.weight_names()[index].c_str();
  });
}

mxfp4_status mxfp4_file_load_weight(const mxfp4_file* file, const char* prefix, mxfp4_device device,
                                    mxfp4_weight** out) {
  return guarded([&] {
    const char* op = "file_load_weight";
    const auto& r = reader_of(op, file);
    const char* p = require_string(op, "prefix", prefix);
    mxfp4_weight*& result = require(op, "out", out);
    auto handle = std::make_unique<mxfp4_weight>();
    handle->weight = r.load_weight(p, to_device(op, "device", device));
    result = handle.release();
  });
}

mxfp4_status mxfp4_writer_create(mxfp4_writer** out) {
  return guarded([&] {
    mxfp4_writer*& result = require("writer_create", "out", out);
    result = new mxfp4_writer();
  });
}

void mxfp4_writer_destroy(mxfp4_writer* writer) {
  delete writer;
}

mxfp4_status mxfp4_writer_add_tensor(mxfp4_writer* writer, const char* name,
                                     const mxfp4_tensor* tensor) {
  return guarded([&] {
    const char* op = "writer_add_tensor";
    mxfp4_writer& w = require(op, "writer", writer);
    const char* n = require_string(op, "name", name);
    const Tensor t = to_tensor(op, "tensor", tensor);
    w.tensors.push_back({n, t.to(Device::cpu())});
  });
}

mxfp4_status mxfp4_writer_add_weight(mxfp4_writer* writer, const char* prefix,
                                     const mxfp4_weight* weight) {
  return guarded([&] {
    const char* op = "writer_add_weight";
    mxfp4_writer& w = require(op, "writer", writer);
    const char* p = require_string(op, "prefix", prefix);
    const mxfp4::Mxfp4Weight& mw = weight_of(op, weight);
    std::vector<mxfp4::detail::NamedTensor> parts;
    mxfp4::detail::append_weight(parts, p, mw);
    w.tensors.insert(w.tensors.end(), parts.begin(), parts.end());
  });
}

mxfp4_status mxfp4_writer_set_metadata(mxfp4_writer* writer, const char* key, const char* value) {
  return guarded([&] {
    const char* op = "writer_set_metadata";
    mxfp4_writer& w = require(op, "writer", writer);
    const char* k = require_string(op, "key", key);
    const char* v = require_string(op, "value", value);
    w.metadata[k] = v;
  });
}

mxfp4_status mxfp4_writer_save(const mxfp4_writer* writer, const char* path, int32_t format) {
  return guarded([&] {
    const char* op = "writer_save";
    const mxfp4_writer& w = require(op, "writer", writer);
    const char* p = require_string(op, "path", path);
    mxfp4::detail::save_tensor_file(p, mxfp4::detail::file_format_from_int(format), w.tensors,
                                    w.metadata);
  });
}

}  // extern "C"
