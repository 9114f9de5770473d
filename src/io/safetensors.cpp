// safetensors reader and writer (FORMATS.md section 5). The reader trusts nothing: every length,
// offset and dim is checked, with overflow-checked arithmetic, before any byte is handed out.
#include "mxfp4/io/safetensors.hpp"

#include "io/atomic_file.hpp"
#include "io/posix_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include "mxfp4/error.hpp"

namespace mxfp4::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader hands out the bytes unswapped");

namespace {

using nlohmann::json;

struct DTypeInfo {
  std::string_view name;
  int bits;
  std::optional<DType> dtype;
};

// Every safetensors dtype this reader knows. F4 (E2M1) packs two elements in a byte.
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", 8, std::nullopt},    {"U8", 8, DType::u8},         {"I8", 8, std::nullopt},
    {"I16", 16, std::nullopt},    {"U16", 16, std::nullopt},    {"F16", 16, DType::f16},
    {"BF16", 16, DType::bf16},    {"I32", 32, DType::i32},      {"U32", 32, DType::u32},
    {"F32", 32, DType::f32},      {"F64", 64, std::nullopt},    {"I64", 64, DType::i64},
    {"U64", 64, std::nullopt},    {"F8_E4M3", 8, std::nullopt}, {"F8_E5M2", 8, std::nullopt},
    {"F8_E8M0", 8, std::nullopt}, {"F4", 4, std::nullopt},
};

const DTypeInfo* find_dtype(std::string_view name) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

std::string known_dtype_list() {
  std::string s;
  for (const DTypeInfo& d : kDTypes) {
    if (!s.empty()) s += ", ";
    s += d.name;
  }
  return s;
}

// Bytes of `dtype` x `shape`, or an explanation of why there is no such size.
std::string try_nbytes(std::string_view dtype, const Shape& shape, std::uint64_t& out) {
  const DTypeInfo* info = find_dtype(dtype);
  if (info == nullptr) {
    return "unknown dtype '" + std::string(dtype) + "' (known: " + known_dtype_list() + ")";
  }
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t numel = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return "shape " + to_string(shape) + " has a negative dim";
    const auto ud = static_cast<std::uint64_t>(d);
    if (ud != 0 && numel > kMax / ud) {
      return "shape " + to_string(shape) + " has more elements than int64 holds";
    }
    numel *= ud;
  }
  if (info->bits == 4) {
    if (numel % 2 != 0) {
      return "shape " + to_string(shape) + " holds " + std::to_string(numel) + " elements of " +
             std::string(dtype) + ", which packs two per byte: the count must be even";
    }
    out = numel / 2;
    return {};
  }
  const auto size = static_cast<std::uint64_t>(info->bits / 8);
  if (numel > kMax / size) {
    return "shape " + to_string(shape) + " of " + std::string(dtype) +
           " has more bytes than int64 holds";
  }
  out = numel * size;
  return {};
}

[[noreturn]] void fail(const std::string& prefix, const std::string& what) {
  throw FormatError(prefix + what);
}

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i)
    v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer, or an explanation.
std::string json_uint(const json& v, std::uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return {};
  }
  if (v.is_number_integer()) {
    const auto i = v.get<std::int64_t>();
    if (i >= 0) {  // "-0"
      out = static_cast<std::uint64_t>(i);
      return {};
    }
    return "is negative (" + std::to_string(i) + ")";
  }
  return "is not a non-negative integer (got " + v.dump() + ")";
}

// Tracks the keys of every open JSON object to find duplicates, which nlohmann's DOM would
// silently collapse (the last one wins), and bounds the nesting depth.
class HeaderCallback {
 public:
  explicit HeaderCallback(std::string prefix) : prefix_(std::move(prefix)) {}

  bool operator()(int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        // A header needs depth 2 at most (root object > entry > shape array); a little slack
        // keeps the "shape must be an array" messages for near misses.
        if (depth > 3) {
          throw FormatError(prefix_ + "header JSON nests deeper than a safetensors header can" +
                            where());
        }
        if (event == json::parse_event_t::object_start) keys_.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys_.empty()) keys_.pop_back();
        break;
      case json::parse_event_t::key: {
        std::string key = parsed.get<std::string>();
        if (depth == 1) entry_ = key;
        if (!keys_.empty() && !keys_.back().insert(key).second) {
          if (depth == 1) {
            throw FormatError(prefix_ + "tensor '" + key +
                              "' appears more than once in the header (names must be unique)");
          }
          throw FormatError(prefix_ + "key '" + key + "' appears more than once" + where());
        }
        break;
      }
      default:
        break;
    }
    return true;
  }

 private:
  std::string where() const { return entry_.empty() ? "" : " (in '" + entry_ + "')"; }

  std::string prefix_;
  std::vector<std::set<std::string>> keys_;
  std::string entry_;
};

}  // namespace

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  const DTypeInfo* info = find_dtype(name);
  return info == nullptr ? std::nullopt : info->dtype;
}

std::string_view safetensors_dtype_name(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  throw InvalidArgument("safetensors_dtype_name: dtype " + std::string(dtype_name(dtype)) +
                        " has no safetensors name");
}

int safetensors_dtype_bits(std::string_view name) {
  const DTypeInfo* info = find_dtype(name);
  if (info == nullptr) {
    throw FormatError("unknown safetensors dtype '" + std::string(name) +
                      "' (known: " + known_dtype_list() + ")");
  }
  return info->bits;
}

std::size_t safetensors_dtype_size(std::string_view name) {
  const int bits = safetensors_dtype_bits(name);
  if (bits % 8 != 0) {
    throw InvalidArgument("safetensors dtype " + std::string(name) + " has " +
                          std::to_string(bits) +
                          "-bit elements, not a whole number of bytes (use safetensors_nbytes)");
  }
  return static_cast<std::size_t>(bits / 8);
}

std::uint64_t safetensors_nbytes(std::string_view dtype, const Shape& shape) {
  std::uint64_t n = 0;
  const std::string err = try_nbytes(dtype, shape, n);
  if (!err.empty()) throw FormatError(err);
  return n;
}

// ---- reader -------------------------------------------------------------------------------------

// The bytes of a file: a private memory mapping, an owned buffer, or borrowed bytes.
struct SafetensorsFile::Storage {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  std::shared_ptr<void> map;  // non-null: the file's mapping
  std::vector<std::uint8_t> owned;
};

bool SafetensorsFile::memory_mapped() const {
  return storage_ != nullptr && storage_->map != nullptr;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  // Private and writable: tensors handed out may be written through (copy on write) without ever
  // reaching the file.
  FileMap m = map_file(path, "safetensors file '" + path + "': ", true);
  auto storage = std::make_shared<Storage>();
  storage->data = static_cast<const std::uint8_t*>(m.mapping.get());
  storage->size = m.size;
  storage->map = std::move(m.mapping);
  return parse_storage(std::move(storage), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<std::uint8_t> bytes, const std::string& source) {
  auto storage = std::make_shared<Storage>();
  storage->owned = std::move(bytes);
  storage->data = storage->owned.data();
  storage->size = storage->owned.size();
  return parse_storage(std::move(storage), source);
}

SafetensorsFile SafetensorsFile::parse_view(std::span<const std::uint8_t> bytes,
                                            const std::string& source) {
  auto storage = std::make_shared<Storage>();
  storage->data = bytes.data();
  storage->size = bytes.size();
  return parse_storage(std::move(storage), source);
}

SafetensorsFile SafetensorsFile::parse_storage(std::shared_ptr<Storage> storage,
                                               const std::string& source) {
  const std::string prefix = "safetensors file '" + source + "': ";
  const std::uint8_t* const base = storage->data;
  const std::uint64_t total = storage->size;

  if (total < 8) {
    fail(prefix, "is " + std::to_string(total) +
                     " bytes long, shorter than the 8-byte header length field");
  }
  const std::uint64_t header_len = read_u64_le(base);
  const std::uint64_t after_len = total - 8;
  if (header_len > kMaxSafetensorsHeader) {
    fail(prefix, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                     std::to_string(kMaxSafetensorsHeader) + " bytes (header too large)");
  }
  if (header_len > after_len) {
    fail(prefix, "header length " + std::to_string(header_len) + " is larger than the " +
                     std::to_string(after_len) + " bytes that follow the length field");
  }
  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = total - data_start;

  const auto* first = base + 8;
  // nlohmann's lexer takes a NUL byte for the end of the input and would ignore what follows;
  // JSON text never holds one (strings escape control characters), so refuse it here.
  if (const void* nul = std::memchr(first, 0, static_cast<std::size_t>(header_len))) {
    fail(prefix, "header is not valid JSON: NUL byte at header offset " +
                     std::to_string(static_cast<const std::uint8_t*>(nul) - first));
  }
  json root;
  try {
    root = json::parse(first, first + header_len, HeaderCallback(prefix));
  } catch (const json::exception& e) {
    fail(prefix, std::string("header is not valid JSON: ") + e.what());
  }
  if (!root.is_object()) {
    fail(prefix, std::string("header JSON must be an object, got ") + root.type_name());
  }

  SafetensorsFile file;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const json& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) {
        fail(prefix,
             std::string("__metadata__ must be an object of strings, got ") + value.type_name());
      }
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) {
          fail(prefix, "__metadata__['" + m.key() + "'] must be a string, got " +
                           m.value().type_name() + " " + m.value().dump());
        }
        file.metadata_.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    const std::string tprefix = "tensor '" + name + "': ";
    if (!value.is_object()) {
      fail(prefix,
           tprefix + "must be an object {dtype, shape, data_offsets}, got " + value.type_name());
    }
    for (const char* required : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(required)) fail(prefix, tprefix + "has no '" + required + "'");
    }
    for (auto k = value.begin(); k != value.end(); ++k) {
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets") {
        fail(prefix, tprefix + "has unexpected key '" + k.key() +
                         "' (expected exactly dtype, shape, data_offsets)");
      }
    }
    SafetensorsEntry e;
    e.name = name;
    const json& dtype = value["dtype"];
    if (!dtype.is_string()) fail(prefix, tprefix + "dtype must be a string, got " + dtype.dump());
    e.dtype = dtype.get<std::string>();
    if (find_dtype(e.dtype) == nullptr) {
      fail(prefix, tprefix + "unknown dtype '" + e.dtype + "' (known: " + known_dtype_list() + ")");
    }
    const json& shape = value["shape"];
    if (!shape.is_array()) fail(prefix, tprefix + "shape must be an array, got " + shape.dump());
    for (std::size_t i = 0; i < shape.size(); ++i) {
      std::uint64_t d = 0;
      const std::string err = json_uint(shape[i], d);
      if (!err.empty()) fail(prefix, tprefix + "shape dim " + std::to_string(i) + " " + err);
      if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        fail(prefix, tprefix + "shape dim " + std::to_string(i) + " = " + std::to_string(d) +
                         " is larger than int64 holds");
      }
      e.shape.push_back(static_cast<std::int64_t>(d));
    }
    const json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      fail(prefix, tprefix + "data_offsets must be an array [begin, end], got " + offsets.dump());
    }
    for (std::size_t i = 0; i < 2; ++i) {
      std::uint64_t v = 0;
      const std::string err = json_uint(offsets[i], v);
      if (!err.empty()) fail(prefix, tprefix + "data_offsets[" + std::to_string(i) + "] " + err);
      (i == 0 ? e.begin : e.end) = v;
    }
    if (e.begin > e.end) {
      fail(prefix, tprefix + "data_offsets [" + std::to_string(e.begin) + ", " +
                       std::to_string(e.end) + "] are out of order (begin > end)");
    }
    if (e.end > data_size) {
      fail(prefix, tprefix + "data_offsets [" + std::to_string(e.begin) + ", " +
                       std::to_string(e.end) + "] reach past the end of the " +
                       std::to_string(data_size) + "-byte data buffer");
    }
    std::uint64_t nbytes = 0;
    const std::string err = try_nbytes(e.dtype, e.shape, nbytes);
    if (!err.empty()) fail(prefix, tprefix + err);
    if (e.end - e.begin != nbytes) {
      fail(prefix, tprefix + "data_offsets [" + std::to_string(e.begin) + ", " +
                       std::to_string(e.end) + "] span " + std::to_string(e.end - e.begin) +
                       " bytes but " + e.dtype + " " + to_string(e.shape) + " needs " +
                       std::to_string(nbytes));
    }
    file.entries_.push_back(std::move(e));
  }

  std::sort(file.entries_.begin(), file.entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  std::uint64_t expected = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& e : file.entries_) {
    if (e.begin != expected) {
      const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
      if (e.begin < expected) {
        fail(prefix, "tensor '" + e.name + "': data_offsets " + range + " overlap tensor '" +
                         previous->name + "', which ends at " + std::to_string(expected));
      }
      fail(prefix,
           "tensor '" + e.name + "': data_offsets " + range + " leave a gap: the previous " +
               (previous ? "tensor '" + previous->name + "' ends" : std::string("data starts")) +
               " at " + std::to_string(expected));
    }
    expected = e.end;
    previous = &e;
  }
  if (expected != data_size) {
    fail(prefix, "the tensors cover " + std::to_string(expected) +
                     " bytes but the data buffer holds " + std::to_string(data_size) + " (" +
                     std::to_string(data_size - expected) + " bytes belong to no tensor)");
  }

  for (std::size_t i = 0; i < file.entries_.size(); ++i)
    file.index_.emplace(file.entries_[i].name, i);
  file.source_ = source;
  file.base_ = base;
  file.size_ = total;
  file.storage_ = std::move(storage);
  file.data_start_ = data_start;
  return file;
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::span<const std::uint8_t> SafetensorsFile::bytes(const SafetensorsEntry& entry) const {
  // Only entries of this file have offsets validated against this buffer.
  if (entry.end < entry.begin || entry.end > data_size()) {
    throw InvalidArgument("safetensors file '" + source_ + "': entry '" + entry.name +
                          "' does not belong to this file");
  }
  return {base_ + data_start_ + entry.begin, static_cast<std::size_t>(entry.end - entry.begin)};
}

bool SafetensorsFile::aligned(const SafetensorsEntry& entry) const {
  const int bits = safetensors_dtype_bits(entry.dtype);
  const auto size = static_cast<std::uintptr_t>(bits < 8 ? 1 : bits / 8);
  return reinterpret_cast<std::uintptr_t>(bytes(entry).data()) % size == 0;
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) {
    throw InvalidArgument("safetensors file '" + source_ + "': no tensor named '" +
                          std::string(name) + "'");
  }
  const std::optional<DType> dtype = dtype_from_safetensors(e->dtype);
  if (!dtype) {
    throw DTypeMismatch("safetensors file '" + source_ + "': tensor '" + e->name + "' is " +
                        e->dtype +
                        ", which has no mxfp4 DType (f32, f16, bf16, u8, u32, i32, i64)");
  }
  const auto span = bytes(*e);
  if (aligned(*e)) return Tensor::view(span.data(), e->shape, *dtype, keep_alive());
  Tensor t = Tensor::empty(e->shape, *dtype);
  if (!span.empty()) std::memcpy(t.data(), span.data(), span.size());
  return t;
}

// ---- writer -------------------------------------------------------------------------------------

SafetensorsItem safetensors_item(std::string name, const Tensor& tensor) {
  if (!tensor.defined()) {
    throw InvalidArgument("safetensors_item: tensor '" + name + "' is undefined");
  }
  if (tensor.device().type != DeviceType::cpu) {
    throw Unsupported("safetensors_item: tensor '" + name + "' is on " +
                      to_string(tensor.device()) + "; only CPU tensors can be written");
  }
  SafetensorsItem item;
  item.dtype = std::string(safetensors_dtype_name(tensor.dtype()));
  item.shape = tensor.shape();
  item.data = {static_cast<const std::uint8_t*>(tensor.data()), tensor.nbytes()};
  item.name = std::move(name);
  return item;
}

namespace {

// The header of a file holding `tensors` with `metadata`, validated; sets sizes and data_size.
std::string build_header(const std::string& prefix,
                         const std::vector<SafetensorsTensorInfo>& tensors,
                         const std::map<std::string, std::string>& metadata,
                         std::vector<std::uint64_t>& sizes, std::uint64_t& data_size) {
  std::string header = "{";
  bool first = true;
  auto add = [&](const std::string& key, const auto& value) {
    if (!first) header += ',';
    first = false;
    header += json(key).dump();
    header += ':';
    header += value.dump();
  };
  std::uint64_t offset = 0;
  sizes.clear();
  try {
    if (!metadata.empty()) {
      json m = json::object();
      for (const auto& [k, v] : metadata)
        m[k] = v;
      add("__metadata__", m);
    }
    std::set<std::string_view> names;
    for (const SafetensorsTensorInfo& t : tensors) {
      const std::string tprefix = prefix + "tensor '" + t.name + "': ";
      if (t.name == "__metadata__") {
        throw InvalidArgument(tprefix + "the name is reserved for the metadata");
      }
      if (!names.insert(t.name).second) {
        throw InvalidArgument(tprefix + "appears more than once (names must be unique)");
      }
      std::uint64_t nbytes = 0;
      const std::string err = try_nbytes(t.dtype, t.shape, nbytes);
      if (!err.empty()) throw InvalidArgument(tprefix + err);
      if (nbytes > std::numeric_limits<std::uint64_t>::max() - offset) {
        throw InvalidArgument(tprefix + "the data buffer would exceed 2^64 bytes");
      }
      nlohmann::ordered_json shape = nlohmann::ordered_json::array();
      for (std::int64_t d : t.shape)
        shape.push_back(d);
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = t.dtype;
      entry["shape"] = std::move(shape);
      entry["data_offsets"] = {offset, offset + nbytes};
      add(t.name, entry);
      offset += nbytes;
      sizes.push_back(nbytes);
    }
  } catch (const json::exception& e) {
    throw InvalidArgument(prefix + "a tensor name or metadata string is not valid UTF-8 (" +
                          e.what() + ")");
  }
  header += '}';
  // Hugging Face pads the header with spaces so that the data buffer starts 8-byte aligned.
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > kMaxSafetensorsHeader) {
    throw InvalidArgument(prefix + "the header would be " + std::to_string(header.size()) +
                          " bytes, over the limit of " + std::to_string(kMaxSafetensorsHeader));
  }
  data_size = offset;
  return header;
}

}  // namespace

class SafetensorsWriter::Impl {
 public:
  std::string prefix;
  std::unique_ptr<AtomicFile> out;  // null once discarded
  std::vector<SafetensorsTensorInfo> tensors;
  std::vector<std::uint64_t> sizes;
  std::size_t current = 0;
  std::uint64_t done_in_current = 0;
  bool finished = false;
  bool published = false;

  // Removes the temporary unless it was published.
  void discard() noexcept { out.reset(); }
  void skip_complete() {
    while (current < tensors.size() && done_in_current == sizes[current]) {
      ++current;
      done_in_current = 0;
    }
  }
  // Runs `f`; on an IoError the temporary is removed and the message names the target.
  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const IoError& e) {
      discard();
      throw IoError(std::string(e.what()).starts_with(prefix) ? e.what() : prefix + e.what());
    } catch (...) {
      discard();
      throw;
    }
  }
};

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<SafetensorsTensorInfo> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>()), path_(std::move(path)) {
  Impl& w = *impl_;
  w.prefix = "write_safetensors '" + path_ + "': ";
  std::uint64_t data_size = 0;
  const std::string header = build_header(w.prefix, tensors, metadata, w.sizes, data_size);
  w.tensors = std::move(tensors);
  file_size_ = 8 + header.size() + data_size;
  w.out = std::make_unique<AtomicFile>(path_, "write_safetensors '" + path_ + "'");
  w.guarded([&] {
    std::uint8_t len[8];
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i, n >>= 8)
      len[i] = static_cast<std::uint8_t>(n & 0xFF);
    w.out->write(len, sizeof len);
    w.out->write(header.data(), header.size());
    w.skip_complete();
  });
}

SafetensorsWriter::~SafetensorsWriter() = default;

const SafetensorsTensorInfo* SafetensorsWriter::next() const {
  return impl_->current < impl_->tensors.size() ? &impl_->tensors[impl_->current] : nullptr;
}

void SafetensorsWriter::write(std::span<const std::uint8_t> bytes) {
  Impl& w = *impl_;
  if (w.finished || !w.out) {
    throw InvalidArgument(w.prefix + "write after the file was finished or failed");
  }
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    if (w.current >= w.tensors.size()) {
      const std::size_t extra = bytes.size() - pos;
      w.discard();
      throw InvalidArgument(w.prefix + std::to_string(extra) +
                            " bytes more than the header announces");
    }
    const std::uint64_t room = w.sizes[w.current] - w.done_in_current;
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(room, bytes.size() - pos));
    w.guarded([&] { w.out->write(bytes.data() + pos, n); });
    pos += n;
    w.done_in_current += n;
    w.skip_complete();
  }
}

void SafetensorsWriter::finish() {
  Impl& w = *impl_;
  if (w.finished) return;
  if (!w.out) throw InvalidArgument(w.prefix + "finish after a failed write");
  if (w.current < w.tensors.size()) {
    const auto& t = w.tensors[w.current];
    const std::string missing = std::to_string(w.sizes[w.current] - w.done_in_current);
    w.discard();
    throw InvalidArgument(w.prefix + "tensor '" + t.name + "': " + missing +
                          " of its bytes never arrived");
  }
  w.guarded([&] { w.out->finish(); });
  w.finished = true;
}

void SafetensorsWriter::publish() {
  Impl& w = *impl_;
  if (!w.finished) throw InvalidArgument(w.prefix + "publish before finish");
  if (w.published) return;
  if (!w.out) throw InvalidArgument(w.prefix + "publish after a failed write");
  w.guarded([&] { w.out->publish(); });
  w.published = true;
}

std::uint64_t SafetensorsWriter::commit() {
  finish();
  publish();
  return file_size_;
}

std::uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsItem>& items,
                                const std::map<std::string, std::string>& metadata) {
  const std::string prefix = "write_safetensors '" + path + "': ";
  std::vector<SafetensorsTensorInfo> infos;
  infos.reserve(items.size());
  for (const SafetensorsItem& item : items) {
    std::uint64_t nbytes = 0;
    const std::string tprefix = prefix + "tensor '" + item.name + "': ";
    const std::string err = try_nbytes(item.dtype, item.shape, nbytes);
    if (!err.empty()) throw InvalidArgument(tprefix + err);
    if (item.data.size() != nbytes) {
      throw InvalidArgument(tprefix + item.dtype + " " + to_string(item.shape) + " needs " +
                            std::to_string(nbytes) + " bytes, got " +
                            std::to_string(item.data.size()));
    }
    infos.push_back({item.name, item.dtype, item.shape});
  }
  SafetensorsWriter writer(path, std::move(infos), metadata);
  for (const SafetensorsItem& item : items)
    writer.write(item.data);
  return writer.commit();
}

TensorBytes tensor_bytes(const Tensor& tensor) {
  if (!tensor.defined() || tensor.device().type != DeviceType::cpu) {
    throw InvalidArgument("tensor_bytes: the tensor must be a defined CPU tensor");
  }
  TensorBytes b;
  b.data = {static_cast<const std::uint8_t*>(tensor.data()), tensor.nbytes()};
  b.keep_alive = std::make_shared<Tensor>(tensor);
  return b;
}

// ---- Hugging Face config.json -------------------------------------------------------------------

namespace {

std::optional<std::string> read_text_file(const std::filesystem::path& p, const std::string& what) {
  std::error_code ec;
  if (!std::filesystem::exists(p, ec)) return std::nullopt;
  const std::string prefix = what + " '" + p.string() + "': ";
  FdGuard fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(prefix + "cannot open: " + os_error(errno));
  std::string text;
  char buf[65536];
  while (true) {
    const ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(prefix + "read failed: " + os_error(errno));
    }
    if (r == 0) break;
    text.append(buf, static_cast<std::size_t>(r));
    // config.json and indexes are small; a huge one is not what it claims to be.
    if (text.size() > kMaxSafetensorsHeader) {
      throw FormatError(prefix + "is larger than " + std::to_string(kMaxSafetensorsHeader) +
                        " bytes");
    }
  }
  return text;
}

json parse_json_file(const std::string& text, const std::string& prefix) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError(prefix + "is not valid JSON: " + e.what());
  }
}

}  // namespace

HfQuantizationConfig read_hf_quantization_config(const std::string& folder) {
  const std::filesystem::path p = std::filesystem::path(folder) / "config.json";
  HfQuantizationConfig config;
  const auto text = read_text_file(p, "config");
  if (!text) return config;
  const std::string prefix = "config '" + p.string() + "': ";
  const json root = parse_json_file(*text, prefix);
  if (!root.is_object()) throw FormatError(prefix + "must be a JSON object");
  const auto q = root.find("quantization_config");
  if (q == root.end() || q->is_null()) return config;
  if (!q->is_object()) throw FormatError(prefix + "quantization_config must be an object");
  config.present = true;
  if (const auto m = q->find("quant_method"); m != q->end()) {
    if (!m->is_string())
      throw FormatError(prefix + "quantization_config.quant_method must be a string");
    config.quant_method = m->get<std::string>();
  }
  if (const auto m = q->find("modules_to_not_convert"); m != q->end() && !m->is_null()) {
    if (!m->is_array()) {
      throw FormatError(prefix + "quantization_config.modules_to_not_convert must be an array");
    }
    for (const json& v : *m) {
      if (!v.is_string()) {
        throw FormatError(prefix + "quantization_config.modules_to_not_convert holds " + v.dump() +
                          ", not a string");
      }
      config.modules_to_not_convert.push_back(v.get<std::string>());
    }
  }
  return config;
}

namespace {

// Whether the dotted name parts `name` start with the pattern's parts ('*' matches one part).
bool module_prefix_matches(const std::vector<std::string_view>& name,
                           const std::vector<std::string_view>& pattern) {
  if (pattern.empty() || pattern.size() > name.size()) return false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != "*" && pattern[i] != name[i]) return false;
  }
  return true;
}

std::vector<std::string_view> split_dots(std::string_view s) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = s.find('.', start);
    parts.push_back(s.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return parts;
}

}  // namespace

std::string module_not_converted(std::string_view name, const std::vector<std::string>& modules) {
  const auto parts = split_dots(name);
  for (const std::string& m : modules) {
    const auto pattern = split_dots(m);
    // A listed module matches wherever it sits in the name ("lm_head" in "model.lm_head.weight"
    // too, as transformers' substring test does for whole name parts).
    for (std::size_t start = 0; start + pattern.size() <= parts.size(); ++start) {
      const std::vector<std::string_view> tail(parts.begin() + static_cast<std::ptrdiff_t>(start),
                                               parts.end());
      if (module_prefix_matches(tail, pattern)) return m;
    }
  }
  return {};
}

// ---- checkpoints --------------------------------------------------------------------------------

SafetensorsCheckpoint SafetensorsCheckpoint::from_file(SafetensorsFile file) {
  SafetensorsCheckpoint c;
  c.source_ = file.source();
  c.folder_ = std::filesystem::path(file.source()).parent_path().string();
  if (c.folder_.empty()) c.folder_ = ".";
  c.metadata_ = file.metadata();
  c.shards_.push_back(std::move(file));
  c.index_entries();
  return c;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const SafetensorsCheckpoint& other) {
  *this = other;
}

SafetensorsCheckpoint& SafetensorsCheckpoint::operator=(const SafetensorsCheckpoint& other) {
  if (this == &other) return *this;
  source_ = other.source_;
  folder_ = other.folder_;
  sharded_ = other.sharded_;
  shards_ = other.shards_;
  metadata_ = other.metadata_;
  config_ = other.config_;
  index_entries();
  return *this;
}

void SafetensorsCheckpoint::index_entries() {
  refs_.clear();
  by_name_.clear();
  for (const SafetensorsFile& f : shards_) {
    for (const SafetensorsEntry& e : f.entries()) {
      if (by_name_.count(e.name) != 0) {
        const Ref& other = refs_[by_name_.at(e.name)];
        throw FormatError("checkpoint '" + source_ + "': tensor '" + e.name + "' is in both '" +
                          other.file->source() + "' and '" + f.source() + "'");
      }
      by_name_.emplace(e.name, refs_.size());
      refs_.push_back({&f, &e});
    }
  }
}

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  fs::path index;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / kSafetensorsIndexName, ec)) {
      index = p / kSafetensorsIndexName;
    } else if (fs::exists(p / kSafetensorsSingleName, ec)) {
      SafetensorsCheckpoint c =
          from_file(SafetensorsFile::open((p / kSafetensorsSingleName).string()));
      c.source_ = path;
      c.folder_ = path;
      c.config_ = read_hf_quantization_config(path);
      return c;
    } else {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p, ec)) {
        if (e.path().extension() == ".safetensors") found.push_back(e.path());
      }
      if (ec) throw IoError("checkpoint folder '" + path + "': cannot list: " + ec.message());
      if (found.size() != 1) {
        throw FormatError("checkpoint folder '" + path + "': has no " +
                          std::string(kSafetensorsIndexName) + " and " +
                          (found.empty() ? std::string("no .safetensors file")
                                         : std::to_string(found.size()) +
                                               " .safetensors files (which belong together "
                                               "needs an index)"));
      }
      SafetensorsCheckpoint c = from_file(SafetensorsFile::open(found.front().string()));
      c.source_ = path;
      c.folder_ = path;
      c.config_ = read_hf_quantization_config(path);
      return c;
    }
  } else if (p.filename().string().ends_with(".index.json")) {
    index = p;
  } else {
    SafetensorsCheckpoint c = from_file(SafetensorsFile::open(path));
    c.config_ = read_hf_quantization_config(c.folder_);
    return c;
  }

  const std::string prefix = "safetensors index '" + index.string() + "': ";
  const auto text = read_text_file(index, "safetensors index");
  if (!text) throw IoError(prefix + "cannot open: no such file");
  const json root = parse_json_file(*text, prefix);
  if (!root.is_object()) throw FormatError(prefix + "must be a JSON object");
  const auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object()) {
    throw FormatError(prefix + "has no \"weight_map\" object (tensor name -> shard file)");
  }
  SafetensorsCheckpoint c;
  c.source_ = path;
  c.folder_ = index.parent_path().string();
  if (c.folder_.empty()) c.folder_ = ".";
  c.sharded_ = true;
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      throw FormatError(prefix + "weight_map['" + it.key() + "'] must be a file name, got " +
                        it.value().dump());
    }
    const std::string shard = it.value().get<std::string>();
    // Shards are plain names in the index's folder: an index must not reach other files.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      throw FormatError(prefix + "weight_map['" + it.key() + "'] = '" + shard +
                        "' is not a plain file name in the index's folder");
    }
    if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end()) {
      shard_names.push_back(shard);
    }
    weight_map.emplace(it.key(), shard);
  }
  std::sort(shard_names.begin(), shard_names.end());
  for (const std::string& name : shard_names) {
    c.shards_.push_back(SafetensorsFile::open((fs::path(c.folder_) / name).string()));
  }
  c.index_entries();
  for (const auto& [name, shard] : weight_map) {
    const Ref r = c.find(name);
    if (r.file == nullptr) {
      throw FormatError(prefix + "lists tensor '" + name + "' in '" + shard +
                        "', which does not hold it");
    }
    if (fs::path(r.file->source()).filename() != shard) {
      throw FormatError(prefix + "lists tensor '" + name + "' in '" + shard + "', but it is in '" +
                        r.file->source() + "'");
    }
  }
  for (const Ref& r : c.refs_) {
    if (weight_map.count(r.entry->name) == 0) {
      throw FormatError(prefix + "does not list tensor '" + r.entry->name + "' of shard '" +
                        r.file->source() + "'");
    }
  }
  if (!c.shards_.empty()) c.metadata_ = c.shards_.front().metadata();
  if (const auto m = root.find("metadata"); m != root.end() && m->is_object()) {
    for (auto it = m->begin(); it != m->end(); ++it) {
      if (it.value().is_string()) {
        c.metadata_[it.key()] = it.value().get<std::string>();
      }
    }
  }
  c.config_ = read_hf_quantization_config(c.folder_);
  return c;
}

SafetensorsCheckpoint::Ref SafetensorsCheckpoint::find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? Ref{} : refs_[it->second];
}

Tensor SafetensorsCheckpoint::tensor(std::string_view name) const {
  const Ref r = find(name);
  if (r.file == nullptr) {
    throw InvalidArgument("checkpoint '" + source_ + "': no tensor named '" + std::string(name) +
                          "'");
  }
  return r.file->tensor(name);
}

std::uint64_t SafetensorsCheckpoint::total_bytes() const {
  std::uint64_t n = 0;
  for (const SafetensorsFile& f : shards_)
    n += f.file_size();
  return n;
}

// ---- writing checkpoints ------------------------------------------------------------------------

bool checkpoint_output_is_folder(const std::string& out, std::uint64_t max_shard_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(out, ec) || out.ends_with('/')) return true;
  return max_shard_bytes != 0 && !out.ends_with(".safetensors");
}

namespace {
CheckpointWriteResult write_planned(const std::string& out, const std::string& prefix,
                                    const std::vector<StreamedTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata,
                                    const CheckpointWriteOptions& options,
                                    const std::vector<std::vector<std::size_t>>& shards,
                                    const std::vector<std::string>& paths, std::uint64_t total,
                                    bool single_file);
}  // namespace

CheckpointWriteResult write_checkpoint(const std::string& out,
                                       const std::vector<StreamedTensor>& tensors,
                                       const std::map<std::string, std::string>& metadata,
                                       const CheckpointWriteOptions& options) {
  namespace fs = std::filesystem;
  const std::string prefix = "write_checkpoint '" + out + "': ";
  // Plan the shards from the sizes the header announces: nothing is produced yet.
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t shard_bytes = 0;
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    std::uint64_t nbytes = 0;
    const std::string err = try_nbytes(tensors[i].info.dtype, tensors[i].info.shape, nbytes);
    if (!err.empty())
      throw InvalidArgument(prefix + "tensor '" + tensors[i].info.name + "': " + err);
    if (options.max_shard_bytes != 0 && !shards.back().empty() &&
        shard_bytes + nbytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += nbytes;
    total += nbytes;
  }
  const bool single_file = !checkpoint_output_is_folder(out, options.max_shard_bytes);
  if (single_file && shards.size() > 1) {
    throw InvalidArgument(prefix + "the tensors need " + std::to_string(shards.size()) +
                          " shards of at most " + std::to_string(options.max_shard_bytes) +
                          " bytes; give a folder (not a .safetensors file) as the output");
  }
  std::vector<std::string> paths;
  bool created_folder = false;
  if (single_file) {
    paths.push_back(out);
  } else {
    std::error_code ec;
    if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
      throw IoError(prefix + "exists and is not a folder");
    }
    created_folder = !fs::exists(out, ec);
    fs::create_directories(out, ec);
    if (ec) throw IoError(prefix + "cannot create the folder: " + ec.message());
    if (shards.size() == 1) {
      paths.push_back((fs::path(out) / kSafetensorsSingleName).string());
    } else {
      const std::string n = std::to_string(shards.size());
      const std::string count = std::string(n.size() < 5 ? 5 - n.size() : 0, '0') + n;
      for (std::size_t s = 0; s < shards.size(); ++s) {
        const std::string k = std::to_string(s + 1);
        const std::string idx = std::string(count.size() - k.size(), '0') + k;
        paths.push_back(
            (fs::path(out) / ("model-" + idx + "-of-" + count + ".safetensors")).string());
      }
    }
  }

  try {
    return write_planned(out, prefix, tensors, metadata, options, shards, paths, total,
                         single_file);
  } catch (...) {
    // A folder this call created holds nothing on failure: the temporaries are gone.
    std::error_code ec;
    if (created_folder) fs::remove(out, ec);
    throw;
  }
}

namespace {

CheckpointWriteResult write_planned(const std::string& out, const std::string& prefix,
                                    const std::vector<StreamedTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata,
                                    const CheckpointWriteOptions& options,
                                    const std::vector<std::vector<std::size_t>>& shards,
                                    const std::vector<std::string>& paths, std::uint64_t total,
                                    bool single_file) {
  namespace fs = std::filesystem;
  CheckpointWriteResult result;
  std::vector<std::unique_ptr<SafetensorsWriter>> writers;
  std::uint64_t written = 0;
  json weight_map = json::object();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    std::vector<SafetensorsTensorInfo> infos;
    for (std::size_t i : shards[s])
      infos.push_back(tensors[i].info);
    writers.push_back(std::make_unique<SafetensorsWriter>(paths[s], std::move(infos), metadata));
    SafetensorsWriter& w = *writers.back();
    for (std::size_t i : shards[s]) {
      const StreamedTensor& t = tensors[i];
      const TensorBytes b = t.produce();
      const std::uint64_t expected = safetensors_nbytes(t.info.dtype, t.info.shape);
      if (b.data.size() != expected) {
        throw InvalidArgument(prefix + "tensor '" + t.info.name + "': " + t.info.dtype + " " +
                              to_string(t.info.shape) + " needs " + std::to_string(expected) +
                              " bytes, its producer gave " + std::to_string(b.data.size()));
      }
      w.write(b.data);
      written += b.data.size();
      weight_map[t.info.name] = fs::path(paths[s]).filename().string();
      if (options.on_tensor_written) options.on_tensor_written(i, written);
    }
    w.finish();
  }
  // Finished before any shard is published, published last: a reader that finds the index finds
  // every shard it names. Destroyed unpublished (an exception), it removes its temporary.
  std::unique_ptr<AtomicFile> index;
  if (shards.size() > 1) {
    const std::string index_path = (fs::path(out) / kSafetensorsIndexName).string();
    json text = json::object();
    text["metadata"] = json::object({{"total_size", total}});
    text["weight_map"] = std::move(weight_map);
    const std::string dumped = text.dump(2) + "\n";
    index = std::make_unique<AtomicFile>(index_path, prefix + "the index '" + index_path + "'");
    index->write(dumped.data(), dumped.size());
    index->finish();
  }
  for (auto& w : writers) {
    w->publish();
    result.files.push_back(w->path());
    result.bytes += w->file_size();
  }
  if (index) {
    index->publish();
    result.files.push_back(index->path());
    result.bytes += index->size();
  }
  if (!single_file) {
    // Files of an earlier checkpoint in the same folder would make it ambiguous.
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(out, ec)) {
      const std::string name = e.path().filename().string();
      const bool ours = name == kSafetensorsIndexName || name == kSafetensorsSingleName ||
                        (name.starts_with("model-") && name.ends_with(".safetensors") &&
                         name.find("-of-") != std::string::npos);
      if (ours && std::find(result.files.begin(), result.files.end(), e.path().string()) ==
                      result.files.end()) {
        fs::remove(e.path(), ec);
      }
    }
  }
  return result;
}

}  // namespace

}  // namespace mxfp4::io
