// safetensors files (https://github.com/huggingface/safetensors, FORMATS.md section 5):
// 8 bytes u64 LE header length n, n bytes of JSON, then the data buffer.
// This first reader loads the whole file and validates it completely before handing anything
// out; the formats issue replaces it with a memory-mapped one behind the same interface.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/tensor.hpp"

namespace mxfp4::io {

// Largest JSON header accepted (the limit of the reference implementation).
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

// A safetensors dtype name ("F32", "BF16", "U8", ...) -> our DType, if we have one.
std::optional<DType> dtype_from_safetensors(std::string_view name);
// Our DType -> its safetensors name.
std::string_view safetensors_dtype_name(DType dtype);
// Bytes per element of a safetensors dtype name; throws FormatError for an unknown name and
// InvalidArgument for F4, which packs two elements in a byte (use safetensors_nbytes).
std::size_t safetensors_dtype_size(std::string_view name);
// Bits per element (4 for F4, 8 for U8, ...); throws FormatError for an unknown name.
// Known names: BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3,
// F8_E5M2, F8_E8M0, F4.
int safetensors_dtype_bits(std::string_view name);
// Bytes of a tensor of `dtype` and `shape`: product(shape) * size, overflow-checked (the result
// fits int64). F4 needs an even number of elements. Throws FormatError (unknown dtype, negative
// dim, odd F4 count, overflow).
std::uint64_t safetensors_nbytes(std::string_view dtype, const Shape& shape);

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as written in the file ("F32", "F64", "F8_E4M3", ...)
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data buffer
  std::uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Reads and validates `path`; throws IoError (cannot read) or FormatError naming the file and
  // what is wrong (header too large, bad JSON, unknown dtype, offsets out of order, overlapping,
  // with gaps or outside the buffer, byte span != numel * dtype size, duplicate names).
  static SafetensorsFile open(const std::string& path);
  // The same from bytes in memory; `source` names them in error messages.
  static SafetensorsFile parse(std::vector<std::uint8_t> bytes, const std::string& source);

  // The path (or the name given to parse) that error messages use.
  const std::string& source() const { return source_; }
  // Size of the whole file and of its data buffer (the bytes after the header), in bytes.
  std::uint64_t file_size() const { return file_.size(); }
  std::uint64_t data_size() const { return file_.size() - data_start_; }

  // In file order (by offset).
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(std::string_view name) const;
  std::span<const std::uint8_t> bytes(const SafetensorsEntry& entry) const;
  // The tensor `name` as an owning Tensor (a copy); throws InvalidArgument if absent and
  // DTypeMismatch if its dtype has no DType.
  Tensor tensor(std::string_view name) const;

 private:
  std::string source_;
  std::vector<std::uint8_t> file_;
  std::uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
};

// One tensor to write: raw little-endian bytes of `dtype` (a safetensors name) and `shape`.
struct SafetensorsItem {
  std::string name;
  std::string dtype;
  Shape shape;
  std::span<const std::uint8_t> data;
};

// A safetensors item viewing a Tensor's bytes (the Tensor must outlive the write).
SafetensorsItem safetensors_item(std::string name, const Tensor& tensor);

// Writes `items` (in the given order) and `metadata` to `path` atomically: everything goes to a
// temporary file in the same folder, which is renamed over `path` only after a successful write
// and flush; on any failure the temporary is removed and an existing `path` is left untouched.
// The header is compact JSON: "__metadata__" first (omitted when empty), then the tensors in
// the given order, each {"dtype", "shape", "data_offsets"}; it is padded with spaces so that the
// data buffer starts at a multiple of 8 bytes, as the Hugging Face implementation does.
// Throws InvalidArgument (duplicate names, a tensor named "__metadata__", unknown dtype,
// data size != numel * dtype size, invalid UTF-8) before touching the file system, or IoError.
// Returns the size of the written file in bytes.
std::uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsItem>& items,
                                const std::map<std::string, std::string>& metadata = {});

}  // namespace mxfp4::io
