// The reference's MXFP4 layer loaders over a safetensors checkpoint.
#include "mxfp4/io/layers.hpp"

#include <string>

#include "mxfp4/error.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::io {

namespace {

std::string join(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  return std::string(prefix) + "." + std::string(name);
}

void check_dims(const char* loader, std::int64_t experts, std::int64_t in_dim,
                std::int64_t out_dim) {
  if (experts < 1 || in_dim < 1 || out_dim < 1) {
    throw InvalidArgument(
        std::string(loader) + ": experts, in_dim and out_dim must be positive, got " +
        std::to_string(experts) + ", " + std::to_string(in_dim) + ", " + std::to_string(out_dim));
  }
  if (in_dim % kBlockSize != 0) {
    throw InvalidArgument(std::string(loader) + ": in_dim " + std::to_string(in_dim) +
                          " is not a multiple of " + std::to_string(kBlockSize));
  }
}

// The tensor `name` of `checkpoint`, checked against `dtypes` (safetensors names) and `shape`.
Tensor load_checked(const SafetensorsCheckpoint& checkpoint, const char* loader,
                    const std::string& name, std::initializer_list<std::string_view> dtypes,
                    const Shape& shape) {
  const std::string prefix =
      std::string(loader) + ": checkpoint '" + checkpoint.source() + "': tensor '" + name + "' ";
  const auto ref = checkpoint.find(name);
  if (ref.entry == nullptr) throw FormatError(prefix + "is missing");
  bool dtype_ok = false;
  std::string accepted;
  for (std::string_view d : dtypes) {
    dtype_ok |= ref.entry->dtype == d;
    accepted += (accepted.empty() ? "" : " or ") + std::string(d);
  }
  if (!dtype_ok) {
    throw DTypeMismatch(prefix + "must be " + accepted + ", got " + ref.entry->dtype);
  }
  if (ref.entry->shape != shape) {
    throw ShapeMismatch(prefix + "must have shape " + to_string(shape) + ", got " +
                        to_string(ref.entry->shape));
  }
  return ref.file->tensor(name);
}

Mxfp4Weight load(const SafetensorsCheckpoint& checkpoint, const char* loader,
                 const std::string& blocks, const std::string& scales, const std::string& bias,
                 bool stacked, bool four_d, std::int64_t experts, std::int64_t in_dim,
                 std::int64_t out_dim, bool with_bias) {
  check_dims(loader, experts, in_dim, out_dim);
  Shape lead = stacked ? Shape{experts, out_dim} : Shape{out_dim};
  Shape bshape = lead;
  if (four_d) {
    bshape.push_back(in_dim / kBlockSize);
    bshape.push_back(kBlockSize / 2);
  } else {
    bshape.push_back(in_dim / 2);
  }
  Shape sshape = lead;
  sshape.push_back(in_dim / kBlockSize);
  Tensor b = load_checked(checkpoint, loader, blocks, {"U8"}, bshape);
  if (four_d) {
    Shape flat = lead;
    flat.push_back(in_dim / 2);
    b = b.reshape(flat);
  }
  Tensor s = load_checked(checkpoint, loader, scales, {"U8"}, sshape);
  std::optional<Tensor> bt;
  if (with_bias) bt = load_checked(checkpoint, loader, bias, {"F32", "F16", "BF16"}, lead);
  return Mxfp4Weight::from_parts(std::move(b), std::move(s), std::move(bt));
}

}  // namespace

Mxfp4Weight linear_b(const SafetensorsCheckpoint& checkpoint, std::string_view prefix,
                     std::int64_t in_dim, std::int64_t out_dim, bool bias) {
  return load(checkpoint, "linear_b", join(prefix, "blocks"), join(prefix, "scales"),
              join(prefix, "bias"), false, false, 1, in_dim, out_dim, bias);
}

Mxfp4Weight packed_linear_b(const SafetensorsCheckpoint& checkpoint, std::string_view prefix,
                            std::int64_t num_local_experts, std::int64_t in_dim,
                            std::int64_t out_dim, bool bias) {
  return load(checkpoint, "packed_linear_b", join(prefix, "blocks"), join(prefix, "scales"),
              join(prefix, "bias"), true, false, num_local_experts, in_dim, out_dim, bias);
}

Mxfp4Weight packed_gptoss_linear(const SafetensorsCheckpoint& checkpoint, std::string_view prefix,
                                 std::string_view name, std::int64_t num_local_experts,
                                 std::int64_t in_dim, std::int64_t out_dim, bool bias) {
  const std::string base = join(prefix, name);
  return load(checkpoint, "packed_gptoss_linear", base + "_blocks", base + "_scales",
              base + "_bias", true, true, num_local_experts, in_dim, out_dim, bias);
}

}  // namespace mxfp4::io
