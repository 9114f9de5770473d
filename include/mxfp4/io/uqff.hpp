// UQFF, mistral.rs' format for quantized layers (FORMATS.md section 4), for MXFP4 layers.
//
// Legacy per-layer blob (UQFF 0.2.0, what mistral.rs' MXFP4Layer::serialize writes):
//   u32 LE version = (major << 16) | (minor << 8) | patch   (0x00000200 for 0.2.0)
//   u8     quantized type (Mxfp4 = 6)
//   u8     has_bias (0 or 1)
//   tensor blocks, tensor scales, then tensor bias if has_bias
//   tensor = u32 LE data length in bytes, u32 LE dtype code, u32 LE ndims, u32 LE each dim
//            (outermost first), then the raw little-endian data.
// Reading: major must be 0, a minor above 2 is too new, the patch is ignored.
// A legacy `.uqff` file is a safetensors file of 1-D U8 tensors, one blob each, named by the
// layer's position in the model's list of quantized layers ("0", "1", ...); large models are
// split into shards ("mxfp4-0.uqff", "mxfp4-1.uqff", ...) whose names continue the numbering.
//
// UQFF 1.x (current mistral.rs) is a safetensors file with U32 scalars uqff.version.major = 1,
// uqff.version.minor = 2, uqff.version.patch = 0 (readers need the same major and a minor <= 2)
// and, per MXFP4 layer with prefix P: P.weight.format = U8 scalar 6, P.weight = blocks (U8
// [.., N, K/2]), P.weight.scales = scales (U8 [.., N, K/32]) and P.bias if the layer has one.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::io {

struct UqffVersion {
  std::uint32_t major = 0;
  std::uint32_t minor = 0;
  std::uint32_t patch = 0;
  // The packed u32 of the legacy blob.
  constexpr std::uint32_t word() const { return (major << 16) | (minor << 8) | patch; }
  bool operator==(const UqffVersion&) const = default;
};
// What the blob writer writes and the newest blob the reader accepts.
inline constexpr UqffVersion kUqffBlobVersion{0, 2, 0};
// What write_uqff1 writes and the newest 1.x the reader accepts.
inline constexpr UqffVersion kUqff1Version{1, 2, 0};

// The quantized-type byte of a blob (mistral.rs' QuantizedSerdeType).
enum class UqffQuantType : std::uint8_t {
  gguf = 0,
  unquant = 1,
  hqq = 2,
  fp8 = 3,
  afq = 4,
  f8q8 = 5,
  mxfp4 = 6,
};

// The dtype codes of a blob tensor. 10..13 exist but mistral.rs cannot serialize their data;
// the reader refuses them.
enum class UqffDType : std::uint32_t {
  u8 = 0,
  u32 = 1,
  i32 = 2,
  i64 = 3,
  f16 = 4,
  bf16 = 5,
  f32 = 6,
  f64 = 7,
  i16 = 8,
  f8e4m3 = 9,
  f6e2m3 = 10,
  f6e3m2 = 11,
  f4 = 12,
  f8e8m0 = 13,
};
// "U8", "F32", ... (mistral.rs/candle names); "unknown" for other codes.
std::string_view uqff_dtype_name(UqffDType dtype) noexcept;

// ---- legacy blob --------------------------------------------------------------------------------

// One tensor of a blob, viewing the blob's bytes.
struct UqffBlobTensor {
  UqffDType dtype = UqffDType::u8;
  Shape shape;  // outermost first
  std::span<const std::uint8_t> data;
};

// A validated MXFP4 blob, viewing the bytes it was parsed from.
struct UqffBlob {
  UqffVersion version;
  UqffBlobTensor blocks;
  UqffBlobTensor scales;
  std::optional<UqffBlobTensor> bias;
};

// Parses an MXFP4 blob; throws FormatError naming `source` and what is wrong: truncated at any
// field, version major != 0 or minor > 2, type byte != 6, has_bias not 0 or 1, unknown or
// unserializable dtype code, data length != product(dims) * dtype size (overflow-checked),
// bytes left over after the last tensor.
UqffBlob parse_uqff_blob(std::span<const std::uint8_t> blob, const std::string& source = "blob");

// The blob of `weight` (its bias included when it has one), version 0.2.0, with the blocks in the
// standard layout whatever the weight's BlockLayout. Throws Unsupported (weight not on the CPU)
// or InvalidArgument (a dim or a data length over u32).
std::vector<std::uint8_t> serialize_uqff_blob(const Mxfp4Weight& weight);

// An owning CPU Mxfp4Weight from a blob. Besides parse_uqff_blob's errors, throws FormatError
// when blocks or scales are not U8, the bias is not F32/F16/BF16, or the shapes do not make a
// weight (Mxfp4Weight::from_parts' rules).
Mxfp4Weight deserialize_uqff_blob(std::span<const std::uint8_t> blob,
                                  const std::string& source = "blob");

// ---- legacy .uqff file --------------------------------------------------------------------------

struct UqffLegacyLayer {
  std::size_t index = 0;  // position in the model's list of quantized layers (the tensor name)
  Mxfp4Weight weight;
};

// "mxfp4-3.uqff" for (stem "mxfp4", shard 3).
std::string uqff_legacy_shard_name(std::string_view stem, std::size_t shard);

// Writes `layers` as blobs named first_index, first_index + 1, ... into a safetensors file at
// `path`, atomically (write_safetensors). Returns the file's size.
std::uint64_t write_uqff_legacy(const std::string& path, const std::vector<Mxfp4Weight>& layers,
                                std::size_t first_index = 0);
// Reads a legacy .uqff file: every tensor must be a 1-D U8 MXFP4 blob named by a decimal index
// (no sign, no leading zeros). Layers sorted by index. Throws IoError or FormatError naming the
// file and the tensor.
std::vector<UqffLegacyLayer> read_uqff_legacy(const std::string& path);
std::vector<UqffLegacyLayer> read_uqff_legacy(const SafetensorsFile& file);

// ---- UQFF 1.x -----------------------------------------------------------------------------------

struct Uqff1Layer {
  std::string
      prefix;  // P: the layer's tensors are P.weight, P.weight.scales, P.weight.format, P.bias
  Mxfp4Weight weight;
};

struct Uqff1Contents {
  UqffVersion version;
  std::vector<Uqff1Layer> layers;  // MXFP4 layers, in file order
  // Layers of other formats (prefix, format byte): present in the file, not decoded here.
  std::vector<std::pair<std::string, std::uint8_t>> other_layers;
};

// The three version scalars (U32 []), viewing static storage.
std::vector<SafetensorsItem> uqff1_version_items();
// The items of one MXFP4 layer: P.weight.format, P.weight, P.weight.scales and P.bias if any
// (the weight must outlive the write). Throws Unsupported (not on the CPU) or InvalidArgument (a
// BlockLayout::gpu weight, whose bytes are not what the file holds: pass
// weight.with_layout(BlockLayout::standard)).
std::vector<SafetensorsItem> uqff1_layer_items(const std::string& prefix,
                                               const Mxfp4Weight& weight);
// Writes a UQFF 1.2.0 file of `layers` (version scalars first, then each layer's items, blocks in
// the standard layout) atomically. Throws InvalidArgument (duplicate prefixes, ...) or IoError.
std::uint64_t write_uqff1(const std::string& path, const std::vector<Uqff1Layer>& layers,
                          const std::map<std::string, std::string>& metadata = {});
// Reads UQFF 1.x: version scalars present, U32 scalars, major 1, minor <= 2; every
// P.weight.format a U8 scalar; for format 6, P.weight and P.weight.scales U8 forming a weight and
// P.bias (if present) F32/F16/BF16 of the right shape. Throws IoError or FormatError naming the
// file and the tensor.
Uqff1Contents read_uqff1(const std::string& path);
Uqff1Contents read_uqff1(const SafetensorsFile& file);

}  // namespace mxfp4::io
