// safetensors reader and writer (FORMATS.md section 5). The reader trusts nothing: every length,
// offset and dim is checked, with overflow-checked arithmetic, before any byte is handed out.
#include "mxfp4/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
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

std::string os_error(int err) {
  return std::system_category().message(err);
}

// Closes a file descriptor on scope exit unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

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

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  const std::string prefix = "safetensors file '" + path + "': ";
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(prefix + "cannot open: " + os_error(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw IoError(prefix + "cannot stat: " + os_error(errno));
  if (!S_ISREG(st.st_mode)) throw IoError(prefix + "is not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  std::vector<std::uint8_t> bytes;
  try {
    bytes.resize(static_cast<std::size_t>(size));
  } catch (const std::bad_alloc&) {
    throw IoError(prefix + "cannot allocate " + std::to_string(size) + " bytes to read it");
  } catch (const std::length_error&) {
    throw IoError(prefix + "is too large (" + std::to_string(size) + " bytes) to read");
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t r = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(prefix + "read failed after " + std::to_string(done) +
                    " bytes: " + os_error(errno));
    }
    if (r == 0) {
      throw IoError(prefix + "ended after " + std::to_string(done) + " of " + std::to_string(size) +
                    " bytes (changed while being read?)");
    }
    done += static_cast<std::size_t>(r);
  }
  return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<std::uint8_t> bytes, const std::string& source) {
  const std::string prefix = "safetensors file '" + source + "': ";

  if (bytes.size() < 8) {
    fail(prefix, "is " + std::to_string(bytes.size()) +
                     " bytes long, shorter than the 8-byte header length field");
  }
  const std::uint64_t header_len = read_u64_le(bytes.data());
  const std::uint64_t after_len = bytes.size() - 8;
  if (header_len > kMaxSafetensorsHeader) {
    fail(prefix, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                     std::to_string(kMaxSafetensorsHeader) + " bytes (header too large)");
  }
  if (header_len > after_len) {
    fail(prefix, "header length " + std::to_string(header_len) + " is larger than the " +
                     std::to_string(after_len) + " bytes that follow the length field");
  }
  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = bytes.size() - data_start;

  const auto* first = bytes.data() + 8;
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
  file.file_ = std::move(bytes);
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
  return {file_.data() + data_start_ + entry.begin,
          static_cast<std::size_t>(entry.end - entry.begin)};
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
  Tensor t = Tensor::empty(e->shape, *dtype);
  const auto span = bytes(*e);
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

// Buffered writes to a file descriptor; large spans go straight through.
class FdWriter {
 public:
  FdWriter(int fd, const std::string& tmp) : fd_(fd), tmp_(tmp) { buffer_.reserve(kBuffer); }

  void write(const std::uint8_t* p, std::size_t n) {
    if (buffer_.size() + n <= kBuffer) {
      buffer_.insert(buffer_.end(), p, p + n);
      return;
    }
    flush();
    if (n >= kBuffer) {
      write_all(p, n);
    } else {
      buffer_.insert(buffer_.end(), p, p + n);
    }
  }
  void flush() {
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

 private:
  static constexpr std::size_t kBuffer = std::size_t{1} << 20;

  void write_all(const std::uint8_t* p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IoError("cannot write '" + tmp_ + "': " + os_error(errno));
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  int fd_;
  std::string tmp_;
  std::vector<std::uint8_t> buffer_;
};

// A name for the temporary beside `path` that no other writer (thread or process) picks.
std::string temporary_name(const std::string& path, int attempt) {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t x = static_cast<std::uint64_t>(::getpid()) * 0x9E3779B97F4A7C15ull;
  x ^= static_cast<std::uint64_t>(
      std::chrono::high_resolution_clock::now().time_since_epoch().count());
  x ^= (counter.fetch_add(1) + static_cast<std::uint64_t>(attempt)) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  static constexpr char kAlnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string suffix;
  for (int i = 0; i < 8; ++i) {
    suffix += kAlnum[x % 36];
    x /= 36;
  }
  return path + ".tmp." + suffix;
}

}  // namespace

std::uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsItem>& items,
                                const std::map<std::string, std::string>& metadata) {
  const std::string prefix = "write_safetensors '" + path + "': ";

  // Validate everything and build the header before touching the file system.
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
  try {
    if (!metadata.empty()) {
      json m = json::object();
      for (const auto& [k, v] : metadata)
        m[k] = v;
      add("__metadata__", m);
    }
    std::set<std::string_view> names;
    for (const SafetensorsItem& item : items) {
      const std::string tprefix = prefix + "tensor '" + item.name + "': ";
      if (item.name == "__metadata__") {
        throw InvalidArgument(tprefix + "the name is reserved for the metadata");
      }
      if (!names.insert(item.name).second) {
        throw InvalidArgument(tprefix + "appears more than once (names must be unique)");
      }
      std::uint64_t nbytes = 0;
      const std::string err = try_nbytes(item.dtype, item.shape, nbytes);
      if (!err.empty()) throw InvalidArgument(tprefix + err);
      if (item.data.size() != nbytes) {
        throw InvalidArgument(tprefix + item.dtype + " " + to_string(item.shape) + " needs " +
                              std::to_string(nbytes) + " bytes, got " +
                              std::to_string(item.data.size()));
      }
      if (nbytes > std::numeric_limits<std::uint64_t>::max() - offset) {
        throw InvalidArgument(tprefix + "the data buffer would exceed 2^64 bytes");
      }
      nlohmann::ordered_json shape = nlohmann::ordered_json::array();
      for (std::int64_t d : item.shape)
        shape.push_back(d);
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = item.dtype;
      entry["shape"] = std::move(shape);
      entry["data_offsets"] = {offset, offset + nbytes};
      add(item.name, entry);
      offset += nbytes;
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

  std::string tmp;
  int raw_fd = -1;
  for (int attempt = 0; attempt < 100 && raw_fd < 0; ++attempt) {
    tmp = temporary_name(path, attempt);
    // 0666 lets the umask decide the final permissions, as for any newly created file.
    raw_fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (raw_fd < 0 && errno != EEXIST) break;
  }
  if (raw_fd < 0) {
    throw IoError(prefix + "cannot create a temporary file beside it ('" + tmp +
                  "'): " + os_error(errno));
  }
  FdGuard fd(raw_fd);
  try {
    FdWriter out(fd.get(), tmp);
    std::uint8_t len[8];
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i, n >>= 8)
      len[i] = static_cast<std::uint8_t>(n & 0xFF);
    out.write(len, sizeof len);
    out.write(reinterpret_cast<const std::uint8_t*>(header.data()), header.size());
    for (const SafetensorsItem& item : items)
      out.write(item.data.data(), item.data.size());
    out.flush();
    if (::fsync(fd.get()) != 0) throw IoError(prefix + "fsync failed: " + os_error(errno));
    if (::close(fd.release()) != 0) throw IoError(prefix + "close failed: " + os_error(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IoError(prefix + "cannot rename the temporary '" + tmp + "' to it: " + os_error(errno));
    }
  } catch (const IoError& e) {
    ::unlink(tmp.c_str());
    throw IoError(std::string(e.what()).starts_with(prefix) ? e.what() : prefix + e.what());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; the data is already safe, so a failure here is not an error.
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return 8 + header.size() + offset;
}

}  // namespace mxfp4::io
