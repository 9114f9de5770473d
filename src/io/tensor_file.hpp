// The seam between the front ends (C API, Python module) and the file formats: open a file and
// list its tensors and MXFP4 weights, or save named tensors. Each format implements
// TensorFileReader and one branch of save_tensor_file; the front ends see only this header, so a
// new format needs no change in them. Implemented: safetensors (the linear layout, plus any other
// tensors), and through the layout layer (mxfp4/io/layout.hpp) GGUF, UQFF 1.x, GPT-OSS and legacy
// UQFF. Whatever names a file gives its MXFP4 weights, the non-safetensors readers list and read
// them under the linear names P.blocks, P.scales and P.bias, and the writers take them so.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::detail {

// The numeric values are part of the C API (mxfp4_format): append, never renumber.
enum class FileFormat : std::uint8_t {
  auto_detect = 0,  // reading: from the contents; writing: from the path's extension
  safetensors = 1,
  gguf = 2,         // llama.cpp GGUF v3 (P.weight as GGML_TYPE_MXFP4)
  uqff1 = 3,        // mistral.rs UQFF 1.x (P.weight.format, P.weight, P.weight.scales, P.bias)
  gptoss = 4,       // GPT-OSS safetensors (P_blocks [.., N, K/32, 16], P_scales, P_bias)
  uqff_legacy = 5,  // mistral.rs UQFF 0.2.0 blobs named "0", "1", ... (MXFP4 weights only)
};
// "auto", "safetensors", "gguf", "uqff1", "gptoss", "uqff-legacy"; throws InvalidArgument for a
// value outside the enum.
const char* file_format_name(FileFormat format);
// The names above, as the Python module takes them; throws InvalidArgument naming them.
FileFormat parse_file_format(std::string_view name);
// FileFormat from the C API's integer; throws InvalidArgument for an unknown value.
FileFormat file_format_from_int(std::int64_t value);

struct StoredTensorInfo {
  std::string name;
  std::string file_dtype;      // the file's own dtype name ("F32", "BF16", "F8_E4M3", ...)
  std::optional<DType> dtype;  // ours, when there is one
  Shape shape;
  std::uint64_t nbytes = 0;
};

class TensorFileReader {
 public:
  virtual ~TensorFileReader() = default;

  // The path error messages name.
  virtual const std::string& source() const = 0;
  virtual FileFormat format() const = 0;
  // In file order.
  virtual const std::vector<StoredTensorInfo>& tensors() const = 0;
  virtual const std::map<std::string, std::string>& metadata() const = 0;
  // Tensor `name` as an owning CPU tensor; throws InvalidArgument when absent and DTypeMismatch
  // when the library has no DType for its file dtype.
  virtual Tensor read(std::string_view name) const = 0;
  // Prefixes (without their trailing dot) of the MXFP4 weights the file holds, in file order.
  virtual const std::vector<std::string>& weight_names() const = 0;
  // The MXFP4 weight `prefix` (its parts, and its bias if present) on `device`; throws
  // InvalidArgument naming the tensors it needs when absent.
  virtual Mxfp4Weight load_weight(std::string_view prefix, Device device) const = 0;

  // Position of tensor `name` in tensors(), if present.
  std::optional<std::size_t> find(std::string_view name) const;
};

// Opens and validates `path`; throws IoError / FormatError as the format's reader does.
// auto_detect: GGUF by its magic, a safetensors file with uqff.version.* scalars as UQFF 1.x,
// anything else as safetensors (GPT-OSS and legacy UQFF files too: name gptoss / uqff_legacy to
// read their weights through the linear names).
std::unique_ptr<TensorFileReader> open_tensor_file(const std::string& path,
                                                   FileFormat format = FileFormat::auto_detect);

struct NamedTensor {
  std::string name;
  Tensor tensor;  // any device; copied to the host when written
};

// Appends `prefix.blocks`, `prefix.scales` and `prefix.bias` (if any) of `weight` to `out`
// (`blocks`, ... for an empty prefix). The tensors share the weight's storage, except the blocks
// of a BlockLayout::gpu weight: a standard copy, since files hold the standard layout.
void append_weight(std::vector<NamedTensor>& out, std::string_view prefix,
                   const Mxfp4Weight& weight);

// Writes `tensors` (in order) and `metadata` to `path` atomically (temporary file in the same
// folder, renamed over `path`; nothing is left behind on failure). Throws InvalidArgument for
// duplicate or empty names and for a path whose extension names no format under auto_detect
// (.safetensors, .gguf, .uqff = UQFF 1.x). Formats other than safetensors take every pair of u8
// tensors P.blocks + P.scales (with P.bias if present) as an MXFP4 weight and the rest as dense
// tensors, and refuse what they cannot hold (legacy UQFF: MXFP4 weights only; GGUF: no u8/u32
// dense tensors; metadata values are strings everywhere).
// Returns the size of the file in bytes.
std::uint64_t save_tensor_file(const std::string& path, FileFormat format,
                               const std::vector<NamedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace mxfp4::detail
