// safetensors files (https://github.com/huggingface/safetensors, FORMATS.md section 5):
// 8 bytes u64 LE header length n, n bytes of JSON, then the data buffer.
// The reader memory-maps the file and validates the whole header before handing anything out;
// tensors are zero-copy views of the mapping where their bytes are aligned for their dtype.
// The writer streams tensor by tensor and replaces its target atomically. Sharded checkpoints
// (model.safetensors.index.json) are read and written by SafetensorsCheckpoint and
// write_checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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
  // Memory-maps and validates `path`; throws IoError (cannot open or map) or FormatError naming
  // the file and what is wrong (header too large, bad JSON or UTF-8, unknown dtype, offsets out
  // of order, overlapping, with gaps or outside the buffer, byte span != numel * dtype size,
  // duplicate names). The mapping is private: nothing written through a tensor reaches the
  // file. As with any memory-mapped file, another process truncating it while it is open makes
  // later reads fault; the checkpoints this reads are not written while being read.
  static SafetensorsFile open(const std::string& path);
  // The same checks on bytes in memory; `source` names them in error messages.
  static SafetensorsFile parse(std::vector<std::uint8_t> bytes, const std::string& source);
  // The same checks on borrowed bytes that the caller keeps alive and unchanged (the fuzzers).
  static SafetensorsFile parse_view(std::span<const std::uint8_t> bytes, const std::string& source);

  // The path (or the name given to parse) that error messages use.
  const std::string& source() const { return source_; }
  // Size of the whole file and of its data buffer (the bytes after the header), in bytes.
  std::uint64_t file_size() const { return size_; }
  std::uint64_t data_size() const { return size_ - data_start_; }
  std::uint64_t header_size() const { return data_start_ - 8; }
  bool memory_mapped() const;

  // In file order (by offset).
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(std::string_view name) const;
  std::span<const std::uint8_t> bytes(const SafetensorsEntry& entry) const;
  // Whether the entry's bytes sit at an address that is a multiple of its element size, so that
  // tensor() can view them without a copy.
  bool aligned(const SafetensorsEntry& entry) const;
  // The tensor `name`: a view sharing the file's memory when aligned() (no copy; the mapping
  // stays alive as long as the tensor), an owning copy otherwise. Throws InvalidArgument if
  // absent and DTypeMismatch if its dtype has no DType.
  Tensor tensor(std::string_view name) const;
  // Keeps the file's bytes alive (for views built on bytes()).
  std::shared_ptr<const void> keep_alive() const { return storage_; }

 private:
  struct Storage;
  static SafetensorsFile parse_storage(std::shared_ptr<Storage> storage, const std::string& source);

  std::string source_;
  std::shared_ptr<Storage> storage_;  // shared by copies of this object and by its tensors
  const std::uint8_t* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
};

// ---- writing ------------------------------------------------------------------------------------

// One tensor to write: raw little-endian bytes of `dtype` (a safetensors name) and `shape`.
struct SafetensorsItem {
  std::string name;
  std::string dtype;
  Shape shape;
  std::span<const std::uint8_t> data;
};

// A safetensors item viewing a Tensor's bytes (the Tensor must outlive the write).
SafetensorsItem safetensors_item(std::string name, const Tensor& tensor);

// A tensor's name, dtype and shape: what the header says about it before its bytes exist.
struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;
  Shape shape;
};

// Streams one safetensors file: the header is fixed up front, then each tensor's bytes arrive
// in header order (in one or several write() calls), so no more than one tensor needs to be in
// memory. Everything goes to a temporary file beside `path`; commit() renames it over `path`.
// Destroying the writer before commit() (an exception, a failed write) removes the temporary and
// leaves an existing `path` untouched.
class SafetensorsWriter {
 public:
  // Validates the tensors and metadata (InvalidArgument: duplicate or reserved names, unknown
  // dtype, invalid UTF-8, header over the cap) before touching the file system, then creates the
  // temporary and writes the header (IoError). The header is compact JSON: "__metadata__" first
  // (omitted when empty), then the tensors in the given order, each {"dtype", "shape",
  // "data_offsets"}, padded with spaces so that the data starts at a multiple of 8 bytes.
  SafetensorsWriter(std::string path, std::vector<SafetensorsTensorInfo> tensors,
                    const std::map<std::string, std::string>& metadata = {});
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter();

  // The next tensor expected (in header order), or nullptr when all bytes have arrived.
  const SafetensorsTensorInfo* next() const;
  // Appends bytes of the tensor next() names; a tensor's bytes may come in several pieces.
  // Throws InvalidArgument when more bytes arrive than the header announced, IoError when the
  // write fails (the temporary is then removed).
  void write(std::span<const std::uint8_t> bytes);
  // Flushes and syncs the temporary (InvalidArgument if bytes are missing, IoError otherwise),
  // keeping it under its temporary name; publish() renames it. Sharded writers finish every shard
  // before publishing any.
  void finish();
  // Renames the finished temporary over `path` (IoError on failure, temporary removed).
  void publish();
  // finish() then publish(). Returns the size of the written file in bytes.
  std::uint64_t commit();
  // Size of the whole file once written.
  std::uint64_t file_size() const { return file_size_; }
  const std::string& path() const { return path_; }

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  std::uint64_t file_size_ = 0;
};

// Writes `items` (in the given order) and `metadata` to `path` atomically through a
// SafetensorsWriter. Throws InvalidArgument (duplicate names, a tensor named "__metadata__",
// unknown dtype, data size != numel * dtype size, invalid UTF-8) before touching the file system,
// or IoError. Returns the size of the written file in bytes.
std::uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsItem>& items,
                                const std::map<std::string, std::string>& metadata = {});

// ---- checkpoints: one file or shards ------------------------------------------------------------

// The name of the index of a sharded checkpoint, and of a one-file checkpoint in a folder.
inline constexpr std::string_view kSafetensorsIndexName = "model.safetensors.index.json";
inline constexpr std::string_view kSafetensorsSingleName = "model.safetensors";

// The quantization_config of a Hugging Face config.json, as far as MXFP4 is concerned.
struct HfQuantizationConfig {
  bool present = false;                             // config.json has a quantization_config
  std::string quant_method;                         // "mxfp4" for GPT-OSS checkpoints
  std::vector<std::string> modules_to_not_convert;  // module names, '*' matches one name part
  bool is_mxfp4() const { return quant_method == "mxfp4"; }
};

// Reads `folder`/config.json if it exists (an absent file gives present = false); throws
// FormatError naming the file when it is not JSON or quantization_config is malformed.
HfQuantizationConfig read_hf_quantization_config(const std::string& folder);

// Whether the tensor `name` belongs to a module listed in `modules` (the rule of HF
// transformers: a listed module matches itself and everything under it; '*' in a pattern matches
// one dotted name part, e.g. "model.layers.*.self_attn"). Returns the matching pattern or "".
std::string module_not_converted(std::string_view name, const std::vector<std::string>& modules);

// A safetensors checkpoint: one file, or the shards a model.safetensors.index.json lists.
class SafetensorsCheckpoint {
 public:
  // `path` is a .safetensors file, an index JSON, or a folder holding model.safetensors.index.json,
  // model.safetensors, or exactly one *.safetensors file. Every shard is opened and validated; the
  // index must list every tensor of every shard exactly once and nothing else, and its shard
  // names must be plain file names in the index's folder. Throws IoError / FormatError naming the
  // file. config.json beside the files is read (read_hf_quantization_config).
  static SafetensorsCheckpoint open(const std::string& path);
  // A checkpoint of one already-open file.
  static SafetensorsCheckpoint from_file(SafetensorsFile file);

  SafetensorsCheckpoint() = default;
  // Copies share the open files; their entries() point into their own shard list.
  SafetensorsCheckpoint(const SafetensorsCheckpoint& other);
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint& other);
  SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept = default;
  SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) noexcept = default;

  const std::string& source() const { return source_; }
  // The folder holding the files (config.json is read from there).
  const std::string& folder() const { return folder_; }
  bool sharded() const { return sharded_; }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  const HfQuantizationConfig& quantization_config() const { return config_; }
  // The first shard's __metadata__ plus the index's "metadata" strings.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  struct Ref {
    const SafetensorsFile* file = nullptr;
    const SafetensorsEntry* entry = nullptr;
  };
  // Every tensor, shard by shard, each in file order.
  const std::vector<Ref>& entries() const { return refs_; }
  // nullptr file/entry when absent.
  Ref find(std::string_view name) const;
  Tensor tensor(std::string_view name) const;  // as SafetensorsFile::tensor
  std::uint64_t total_bytes() const;           // sum of the shards' file sizes

 private:
  void index_entries();

  std::string source_;
  std::string folder_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> shards_;
  std::vector<Ref> refs_;
  std::map<std::string, std::size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_;
  HfQuantizationConfig config_;
};

// Bytes of one tensor to write and whatever keeps them alive until they are written.
struct TensorBytes {
  std::span<const std::uint8_t> data;
  std::shared_ptr<const void> keep_alive;
};
// The bytes of a Tensor (CPU), kept alive by a copy of it.
TensorBytes tensor_bytes(const Tensor& tensor);

// A tensor to write whose bytes are produced only when the writer reaches it.
struct StreamedTensor {
  SafetensorsTensorInfo info;
  std::function<TensorBytes()> produce;
};

struct CheckpointWriteOptions {
  // 0: one file. Otherwise the largest shard's data size in bytes (a tensor larger than this
  // gets a shard of its own); more than one shard needs a folder as the output.
  std::uint64_t max_shard_bytes = 0;
  // Called after each tensor is written (index in `tensors`, bytes written so far).
  std::function<void(std::size_t, std::uint64_t)> on_tensor_written;
};

struct CheckpointWriteResult {
  std::vector<std::string> files;  // written, the index last when sharded
  std::uint64_t bytes = 0;         // sum of the written files' sizes
};

// Whether write_checkpoint treats `out` as a folder: an existing folder, a path ending in '/', or
// (with a shard size) any path not ending in ".safetensors".
bool checkpoint_output_is_folder(const std::string& out, std::uint64_t max_shard_bytes);

// Writes `tensors` in order, producing each one's bytes just before it is written:
//  - `out` a file (see checkpoint_output_is_folder): one file (InvalidArgument if
//    max_shard_bytes needs more);
//  - otherwise `out` is a folder (created if absent): model.safetensors when one shard suffices,
//    else model-00001-of-0000N.safetensors ... plus model.safetensors.index.json with
//    {"metadata": {"total_size": ...}, "weight_map": {...}}.
// Every file goes to a temporary first; all are published only after all were written, the
// index last. On failure the temporaries are removed and existing files are left as they were.
CheckpointWriteResult write_checkpoint(const std::string& out,
                                       const std::vector<StreamedTensor>& tensors,
                                       const std::map<std::string, std::string>& metadata = {},
                                       const CheckpointWriteOptions& options = {});

}  // namespace mxfp4::io
