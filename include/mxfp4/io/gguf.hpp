// GGUF files (llama.cpp's container, version 3; FORMATS.md section 6 and ggml's docs/gguf.md):
//   "GGUF", u32 version, u64 tensor count, u64 metadata count,
//   metadata: key (u64 length + UTF-8 bytes), u32 value type, value,
//   tensor infos: name (string), u32 n_dims, u64 ne[n_dims] (innermost dim first), u32 ggml type,
//                 u64 offset (from the start of the data section, a multiple of the alignment),
//   padding to `general.alignment` (a u32 power of two, 32 when absent), the data section.
// All numbers are little-endian. Tensors of GGML_TYPE_MXFP4 (39) hold blocks of 32 elements in
// 17 bytes: the E8M0 scale byte first, then qs[16] where qs[j]'s low nibble is element j and its
// high nibble element j + 16 (a "split-half" layout, unlike the adjacent pairs of Mxfp4Weight).
// The conversions below move nibbles and scale bytes unchanged, so they are lossless both ways.
// One difference in meaning remains outside this file's control: ggml decodes the scale byte
// 0xFF as 2^128, while the MX spec (and Mxfp4Weight::dequantize) decode it as NaN.
//
// Shapes: a GGUF tensor stores its dims fastest-varying first (ne[0] is the row length), while
// mxfp4::Shape is row-major (outermost first). GgufTensorInfo keeps both; everything else in this
// API speaks row-major, so an Mxfp4Weight [N, K] is the GGUF tensor ne = [K, N].
//
// The reader maps the file into memory (nothing is read until used) and validates it completely
// (every length, count, dim, byte size, offset and type, with overflow-checked arithmetic) before
// handing anything out. The writer streams tensor by tensor.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::io {

inline constexpr std::uint32_t kGgufVersion = 3;            // what write_gguf writes
inline constexpr std::uint64_t kGgufDefaultAlignment = 32;  // when general.alignment is absent
inline constexpr int kGgufMaxDims = 4;                      // GGML_MAX_DIMS
inline constexpr std::size_t kGgufMaxTensorName = 63;       // GGML_MAX_NAME - 1 (NUL)
inline constexpr int kGgufMaxArrayDepth = 8;                // arrays of arrays, this deep at most
inline constexpr std::size_t kGgufMxfp4BlockBytes = 17;     // 1 scale + 16 packed bytes

// ---- metadata values ----------------------------------------------------------------------------

// The numeric codes are GGUF's gguf_type.
enum class GgufValueType : std::uint32_t {
  uint8 = 0,
  int8 = 1,
  uint16 = 2,
  int16 = 3,
  uint32 = 4,
  int32 = 5,
  float32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  uint64 = 10,
  int64 = 11,
  float64 = 12,
};
// "uint8", ..., "float64"; "unknown" for a code outside 0..12.
std::string_view gguf_value_type_name(GgufValueType type) noexcept;

struct GgufValue;

// An array: every item has `element_type` (write_gguf checks it). Arrays of arrays are allowed.
struct GgufArray {
  GgufValueType element_type = GgufValueType::uint8;
  std::vector<GgufValue> items;
  friend bool operator==(const GgufArray&, const GgufArray&) = default;
};

// One typed metadata value. The alternatives are in GGUF's type-code order, so
// `type() == GgufValueType(value.index())`.
struct GgufValue {
  using Storage = std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t,
                               std::uint32_t, std::int32_t, float, bool, std::string, GgufArray,
                               std::uint64_t, std::int64_t, double>;
  Storage value;

  template <typename T>
  static constexpr bool is_alternative =
      std::is_same_v<T, std::uint8_t> || std::is_same_v<T, std::int8_t> ||
      std::is_same_v<T, std::uint16_t> || std::is_same_v<T, std::int16_t> ||
      std::is_same_v<T, std::uint32_t> || std::is_same_v<T, std::int32_t> ||
      std::is_same_v<T, float> || std::is_same_v<T, bool> || std::is_same_v<T, std::string> ||
      std::is_same_v<T, GgufArray> || std::is_same_v<T, std::uint64_t> ||
      std::is_same_v<T, std::int64_t> || std::is_same_v<T, double>;

  GgufValue() = default;  // uint8 0
  // From any alternative's exact type (GgufValue(std::uint32_t{32}), GgufValue(true), ...).
  template <typename T>
  requires is_alternative<std::decay_t<T>> GgufValue(T v)
      : value(std::in_place_type<std::decay_t<T>>, std::move(v)) {}             // NOLINT
  GgufValue(const char* s) : value(std::in_place_type<std::string>, s) {}       // NOLINT
  GgufValue(std::string_view s) : value(std::in_place_type<std::string>, s) {}  // NOLINT

  GgufValueType type() const { return static_cast<GgufValueType>(value.index()); }
  // The value if it has exactly type T, else nullptr.
  template <typename T>
  const T* get_if() const {
    return std::get_if<T>(&value);
  }
  // An array of `element_type` holding `items` converted to that type's C++ type.
  template <typename T>
  static GgufValue array_of(GgufValueType element_type, const std::vector<T>& items) {
    GgufArray a;
    a.element_type = element_type;
    for (const T& x : items)
      a.items.emplace_back(x);
    return GgufValue(std::move(a));
  }
  bool operator==(const GgufValue&) const = default;
};

// Metadata in file order (keys are unique).
using GgufMetadata = std::vector<std::pair<std::string, GgufValue>>;

// ---- tensor types -------------------------------------------------------------------------------

// The numeric codes are ggml's ggml_type (the ones a GGUF file may hold; 4, 5, 31..33 and
// 36..38 were removed from ggml and are refused).
enum class GgmlType : std::uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q8_1 = 9,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,
  iq2_xxs = 16,
  iq2_xs = 17,
  iq3_xxs = 18,
  iq1_s = 19,
  iq4_nl = 20,
  iq3_s = 21,
  iq2_s = 22,
  iq4_xs = 23,
  i8 = 24,
  i16 = 25,
  i32 = 26,
  i64 = 27,
  f64 = 28,
  iq1_m = 29,
  bf16 = 30,
  tq1_0 = 34,
  tq2_0 = 35,
  mxfp4 = 39,
  nvfp4 = 40,
  q1_0 = 41,
};

// Size facts of a ggml type: `type_size` bytes hold `block_size` consecutive elements of a row.
struct GgmlTypeTraits {
  std::string_view name;  // ggml's name: "f32", "bf16", "mxfp4", "q4_K", ...
  std::uint32_t block_size;
  std::uint32_t type_size;
};
// Traits of a type code, or nullptr for a code ggml does not (or no longer) define.
const GgmlTypeTraits* ggml_type_traits(std::uint32_t code) noexcept;
// The name of a type ("f32", "mxfp4", ...); "unknown" for a code without traits.
std::string_view ggml_type_name(GgmlType type) noexcept;
// Bytes of a tensor of `type` with row-major `shape`: the last dim (GGUF's ne[0]) must be a
// multiple of the block size; overflow-checked (the result fits int64). Throws InvalidArgument
// (unknown type, negative dim, partial block, overflow).
std::uint64_t ggml_nbytes(GgmlType type, const Shape& shape);

// ---- MXFP4 block layouts ------------------------------------------------------------------------

// Our layout (blocks [.., K/2] with element 2j in the low nibble of byte j, scales [.., K/32])
// -> GGUF MXFP4 blocks (17 bytes each: scale, then the split-half qs[16]). Blocks are in the same
// order in both layouts (row-major, block index fastest). Sizes must agree: scales.size() blocks,
// blocks.size() == 16 * scales.size(), out.size() == 17 * scales.size(); else InvalidArgument.
// Bit-exact both ways: every byte (NaN scale 0xFF included) is kept.
void mxfp4_to_gguf_blocks(std::span<const std::uint8_t> blocks,
                          std::span<const std::uint8_t> scales, std::span<std::uint8_t> out);
// GGUF MXFP4 blocks -> our blocks and scales (the inverse of mxfp4_to_gguf_blocks).
void gguf_blocks_to_mxfp4(std::span<const std::uint8_t> gguf, std::span<std::uint8_t> blocks,
                          std::span<std::uint8_t> scales);

// An Mxfp4Weight (CPU, owning copies) from GGUF MXFP4 bytes of a row-major `shape` [N, K] or
// [E, N, K] (GGUF ne [K, N] or [K, N, E]); `bias` as Mxfp4Weight::from_parts takes it.
// Throws ShapeMismatch (rank, K % 32) or InvalidArgument (data size).
Mxfp4Weight mxfp4_weight_from_gguf(std::span<const std::uint8_t> data, const Shape& shape,
                                   std::optional<Tensor> bias = {});

// ---- reader -------------------------------------------------------------------------------------

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;  // dims as stored: innermost (fastest-varying) first
  GgmlType type = GgmlType::f32;
  std::uint64_t offset = 0;  // from the start of the data section
  std::uint64_t nbytes = 0;  // bytes of data the tensor spans
  // Row-major shape (ne reversed); a tensor with no dims is a scalar (shape {}).
  Shape shape() const;
};

class GgufFile {
 public:
  // Reads and validates `path`; throws IoError (cannot read) or FormatError naming the file and
  // what is wrong: bad magic, unsupported version (2 and 3 are read; 2 has 3's layout; a
  // big-endian file is named as such), truncation at any field, counts or lengths larger than
  // the bytes left, duplicate or non-UTF-8 keys and tensor names, unknown value or tensor types,
  // arrays nested deeper than kGgufMaxArrayDepth, bad general.alignment (not a u32 power of two),
  // more than 4 dims, dims or byte sizes over int64, a row length that is not a whole number
  // of blocks, offsets that are misaligned, outside the data section or overlapping.
  static GgufFile open(const std::string& path);
  // The same from bytes in memory; `source` names them in error messages.
  static GgufFile parse(std::vector<std::uint8_t> bytes, const std::string& source);
  // The same on borrowed bytes that the caller keeps alive and unchanged (the fuzzer).
  static GgufFile parse_view(std::span<const std::uint8_t> bytes, const std::string& source);

  const std::string& source() const { return source_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }
  // File offset where the data section starts, and the file's size.
  std::uint64_t data_offset() const { return data_offset_; }
  std::uint64_t file_size() const { return size_; }

  const GgufMetadata& metadata() const { return metadata_; }
  const GgufValue* find_metadata(std::string_view key) const;
  // In file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find(std::string_view name) const;
  // The tensor's bytes inside this file (valid while this object or a copy of it lives).
  std::span<const std::uint8_t> bytes(const GgufTensorInfo& info) const;
  // The tensor `name` of type F32, F16, BF16, I32 or I64 as an owning Tensor with the row-major
  // shape. Throws InvalidArgument if absent, DTypeMismatch for other types (MXFP4: use
  // mxfp4_weight).
  Tensor tensor(std::string_view name) const;
  // The MXFP4 tensor `name` (row-major [N, K] or [E, N, K]) as an Mxfp4Weight in our layout,
  // with the F32/F16/BF16 tensor `bias_name` ([N] or [E, N]) as its bias if given.
  // Throws InvalidArgument (absent), DTypeMismatch (not MXFP4) or ShapeMismatch.
  Mxfp4Weight mxfp4_weight(std::string_view name,
                           std::optional<std::string_view> bias_name = std::nullopt) const;

 private:
  std::string source_;
  static GgufFile parse_storage(std::shared_ptr<const void> storage, const std::uint8_t* data,
                                std::uint64_t size, const std::string& source);

  std::shared_ptr<const void> storage_;  // the mapping or the vector; shared by copies
  const std::uint8_t* data_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = kGgufDefaultAlignment;
  std::uint64_t data_offset_ = 0;
  GgufMetadata metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> tensor_index_;
  std::map<std::string, std::size_t, std::less<>> metadata_index_;
};

// ---- writer -------------------------------------------------------------------------------------

// One tensor to write, of `type` with the row-major `shape`, its bytes in ggml's own layout
// (e.g. 17-byte blocks for MXFP4): either `data` (viewing memory that outlives the write), or,
// when `fill` is set, produced by `fill` into a buffer of exactly the tensor's size when the
// writer reaches the tensor (so only one tensor's bytes are in memory at a time; `data` is then
// ignored).
struct GgufTensorItem {
  std::string name;
  GgmlType type = GgmlType::f32;
  Shape shape;
  std::span<const std::uint8_t> data;
  std::function<void(std::span<std::uint8_t> out)> fill;
};

// A GGUF item viewing a CPU Tensor of f32, f16, bf16, i32 or i64 (the Tensor must outlive the
// write). Throws DTypeMismatch (u8, u32: ggml has no such type) or Unsupported (not on the CPU).
GgufTensorItem gguf_item(std::string name, const Tensor& tensor);
// A GGUF MXFP4 item of `weight`'s blocks and scales, converted to GGUF's layout (from either
// BlockLayout) when the writer reaches it (the item shares the weight's storage); row-major shape
// [N, K] or [E, N, K]. The bias is not included: write it as its own tensor
// (gguf_item(name, *weight.bias())).
GgufTensorItem gguf_mxfp4_item(std::string name, const Mxfp4Weight& weight);

// Writes a GGUF v3 file atomically (a temporary file in the same folder, renamed over `path`
// after a successful write and fsync; on failure an existing `path` is left untouched).
// Metadata in the given order; `general.alignment`, if present, must be a uint32 power of two
// and is used for the data section (else 32). Tensors are placed in the given order, each at the
// next aligned offset, and the file is padded to the alignment. Throws InvalidArgument before
// touching the file system (duplicate or empty keys or names, names longer than 63 bytes,
// non-UTF-8 keys, names or string values, array items of the wrong type or nested too deep,
// data size != the size of type and shape, more than 4 dims), or IoError.
// Returns the size of the written file in bytes.
std::uint64_t write_gguf(const std::string& path, const GgufMetadata& metadata,
                         const std::vector<GgufTensorItem>& tensors);

}  // namespace mxfp4::io
