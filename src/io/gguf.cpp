// GGUF reader and writer (FORMATS.md section 6). The reader trusts nothing: every count, length,
// dim, byte size and offset is checked against the bytes that are actually there, with
// overflow-checked arithmetic, before anything is allocated or handed out.
#include "mxfp4/io/gguf.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <new>
#include <set>

#include "io/atomic_file.hpp"
#include "io/posix_file.hpp"
#include "io/utf8.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4::io {

static_assert(std::endian::native == std::endian::little,
              "GGUF data is little-endian; this reader hands out the bytes unswapped");

namespace {

constexpr std::uint64_t kInt64Max =
    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

struct TypeEntry {
  std::uint32_t code;
  GgmlTypeTraits traits;
};

// Block sizes and bytes per block, as ggml's type_traits (and gguf-py's GGML_QUANT_SIZES) give.
constexpr TypeEntry kGgmlTypes[] = {
    {0, {"f32", 1, 4}},         {1, {"f16", 1, 2}},         {2, {"q4_0", 32, 18}},
    {3, {"q4_1", 32, 20}},      {6, {"q5_0", 32, 22}},      {7, {"q5_1", 32, 24}},
    {8, {"q8_0", 32, 34}},      {9, {"q8_1", 32, 40}},      {10, {"q2_K", 256, 84}},
    {11, {"q3_K", 256, 110}},   {12, {"q4_K", 256, 144}},   {13, {"q5_K", 256, 176}},
    {14, {"q6_K", 256, 210}},   {15, {"q8_K", 256, 292}},   {16, {"iq2_xxs", 256, 66}},
    {17, {"iq2_xs", 256, 74}},  {18, {"iq3_xxs", 256, 98}}, {19, {"iq1_s", 256, 50}},
    {20, {"iq4_nl", 32, 18}},   {21, {"iq3_s", 256, 110}},  {22, {"iq2_s", 256, 82}},
    {23, {"iq4_xs", 256, 136}}, {24, {"i8", 1, 1}},         {25, {"i16", 1, 2}},
    {26, {"i32", 1, 4}},        {27, {"i64", 1, 8}},        {28, {"f64", 1, 8}},
    {29, {"iq1_m", 256, 56}},   {30, {"bf16", 1, 2}},       {34, {"tq1_0", 256, 54}},
    {35, {"tq2_0", 256, 66}},   {39, {"mxfp4", 32, 17}},    {40, {"nvfp4", 64, 36}},
    {41, {"q1_0", 128, 18}},
};
static_assert(kGgufMxfp4BlockBytes == 1 + static_cast<std::size_t>(kBlockBytes));

// Bytes of a tensor with dims `ne` (innermost first), or an explanation.
std::string try_ggml_nbytes(std::uint32_t code, std::span<const std::uint64_t> ne,
                            std::uint64_t& out) {
  const GgmlTypeTraits* t = ggml_type_traits(code);
  if (t == nullptr) return "unknown ggml type " + std::to_string(code);
  std::uint64_t numel = 1;
  for (std::uint64_t d : ne) {
    if (d > kInt64Max) return "dim " + std::to_string(d) + " is larger than int64 holds";
    if (d != 0 && numel > kInt64Max / d) return "more elements than int64 holds";
    numel *= d;
  }
  const std::uint64_t row = ne.empty() ? 1 : ne[0];
  if (row % t->block_size != 0) {
    return "its row length ne[0] = " + std::to_string(row) + " is not a multiple of " +
           std::string(t->name) + "'s block size " + std::to_string(t->block_size);
  }
  const std::uint64_t blocks = numel / t->block_size;
  if (blocks > kInt64Max / t->type_size) return "more bytes than int64 holds";
  out = blocks * t->type_size;
  return {};
}

std::string ne_string(std::span<const std::uint64_t> ne) {
  std::string s = "[";
  for (std::size_t i = 0; i < ne.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ne[i]);
  }
  return s + "]";
}

// Bounds-checked little-endian reads from the file; every failure names the field and offset.
class Cursor {
 public:
  Cursor(std::span<const std::uint8_t> bytes, std::string prefix)
      : bytes_(bytes), prefix_(std::move(prefix)) {}

  std::uint64_t pos() const { return pos_; }
  std::uint64_t left() const { return bytes_.size() - pos_; }
  const std::string& prefix() const { return prefix_; }

  [[noreturn]] void fail(const std::string& what) const { throw FormatError(prefix_ + what); }

  void need(std::uint64_t n, const std::string& what) const {
    if (n > left()) {
      fail("truncated: " + what + " needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " but the file has " + std::to_string(left()) + " left");
    }
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const auto n = read<std::uint64_t>(what + " length");
    need(n, what + " (" + std::to_string(n) + " bytes)");
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += n;
    return s;
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::string prefix_;
  std::uint64_t pos_ = 0;
};

// Fewest bytes a value of `type` occupies in a file (for checking counts before allocating).
std::uint64_t min_value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::uint8:
    case GgufValueType::int8:
    case GgufValueType::boolean:
      return 1;
    case GgufValueType::uint16:
    case GgufValueType::int16:
      return 2;
    case GgufValueType::uint32:
    case GgufValueType::int32:
    case GgufValueType::float32:
      return 4;
    case GgufValueType::uint64:
    case GgufValueType::int64:
    case GgufValueType::float64:
    case GgufValueType::string:
      return 8;
    case GgufValueType::array:
      return 12;
  }
  return 1;
}

bool known_value_type(std::uint32_t code) {
  return code <= static_cast<std::uint32_t>(GgufValueType::float64);
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& what, int depth) {
  switch (type) {
    case GgufValueType::uint8:
      return c.read<std::uint8_t>(what);
    case GgufValueType::int8:
      return c.read<std::int8_t>(what);
    case GgufValueType::uint16:
      return c.read<std::uint16_t>(what);
    case GgufValueType::int16:
      return c.read<std::int16_t>(what);
    case GgufValueType::uint32:
      return c.read<std::uint32_t>(what);
    case GgufValueType::int32:
      return c.read<std::int32_t>(what);
    case GgufValueType::float32:
      return c.read<float>(what);
    case GgufValueType::uint64:
      return c.read<std::uint64_t>(what);
    case GgufValueType::int64:
      return c.read<std::int64_t>(what);
    case GgufValueType::float64:
      return c.read<double>(what);
    case GgufValueType::boolean: {
      const std::uint64_t at = c.pos();
      const auto b = c.read<std::uint8_t>(what);
      if (b > 1) {
        c.fail(what + ": bool byte at offset " + std::to_string(at) + " is " + std::to_string(b) +
               ", not 0 or 1");
      }
      return b == 1;
    }
    case GgufValueType::string:
      return c.read_string(what);
    case GgufValueType::array: {
      if (depth >= kGgufMaxArrayDepth) {
        c.fail(what + ": arrays nest deeper than " + std::to_string(kGgufMaxArrayDepth) +
               " levels");
      }
      const auto code = c.read<std::uint32_t>(what + " element type");
      if (!known_value_type(code)) {
        c.fail(what + ": unknown array element type " + std::to_string(code));
      }
      GgufArray a;
      a.element_type = static_cast<GgufValueType>(code);
      const auto n = c.read<std::uint64_t>(what + " element count");
      const std::uint64_t min = min_value_bytes(a.element_type);
      if (n > c.left() / min) {
        c.fail(what + ": array of " + std::to_string(n) + " " +
               std::string(gguf_value_type_name(a.element_type)) + " values cannot fit in the " +
               std::to_string(c.left()) + " bytes left");
      }
      a.items.reserve(static_cast<std::size_t>(n));
      for (std::uint64_t i = 0; i < n; ++i) {
        a.items.push_back(
            read_value(c, a.element_type, what + "[" + std::to_string(i) + "]", depth + 1));
      }
      return GgufValue(std::move(a));
    }
  }
  c.fail(what + ": unknown value type");
}

std::optional<DType> dtype_of_ggml(GgmlType type) {
  switch (type) {
    case GgmlType::f32:
      return DType::f32;
    case GgmlType::f16:
      return DType::f16;
    case GgmlType::bf16:
      return DType::bf16;
    case GgmlType::i32:
      return DType::i32;
    case GgmlType::i64:
      return DType::i64;
    default:
      return std::nullopt;
  }
}

}  // namespace

std::string_view gguf_value_type_name(GgufValueType type) noexcept {
  static constexpr std::string_view kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                                "int32",  "float32", "bool",   "string", "array",
                                                "uint64", "int64",   "float64"};
  const auto i = static_cast<std::uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

const GgmlTypeTraits* ggml_type_traits(std::uint32_t code) noexcept {
  for (const TypeEntry& e : kGgmlTypes) {
    if (e.code == code) return &e.traits;
  }
  return nullptr;
}

std::string_view ggml_type_name(GgmlType type) noexcept {
  const GgmlTypeTraits* t = ggml_type_traits(static_cast<std::uint32_t>(type));
  return t == nullptr ? "unknown" : t->name;
}

std::uint64_t ggml_nbytes(GgmlType type, const Shape& shape) {
  std::vector<std::uint64_t> ne;
  for (auto it = shape.rbegin(); it != shape.rend(); ++it) {
    if (*it < 0)
      throw InvalidArgument("ggml_nbytes: shape " + to_string(shape) + " has a negative dim");
    ne.push_back(static_cast<std::uint64_t>(*it));
  }
  std::uint64_t n = 0;
  const std::string err = try_ggml_nbytes(static_cast<std::uint32_t>(type), ne, n);
  if (!err.empty()) throw InvalidArgument("ggml_nbytes: shape " + to_string(shape) + ": " + err);
  return n;
}

// ---- MXFP4 block layouts ------------------------------------------------------------------------

void mxfp4_to_gguf_blocks(std::span<const std::uint8_t> blocks,
                          std::span<const std::uint8_t> scales, std::span<std::uint8_t> out) {
  const std::size_t n = scales.size();
  if (blocks.size() != n * kBlockBytes || out.size() != n * kGgufMxfp4BlockBytes) {
    throw InvalidArgument("mxfp4_to_gguf_blocks: " + std::to_string(n) + " scales need " +
                          std::to_string(n * kBlockBytes) + " block bytes and " +
                          std::to_string(n * kGgufMxfp4BlockBytes) + " output bytes, got " +
                          std::to_string(blocks.size()) + " and " + std::to_string(out.size()));
  }
  for (std::size_t b = 0; b < n; ++b) {
    const std::uint8_t* in = blocks.data() + b * kBlockBytes;
    std::uint8_t* o = out.data() + b * kGgufMxfp4BlockBytes;
    o[0] = scales[b];
    // Element i of the block: ours in byte i/2 (low nibble if i is even); GGUF's in byte i % 16
    // (low nibble for i < 16). So GGUF byte j holds elements j and j + 16.
    for (int j = 0; j < kBlockBytes; ++j) {
      const int lo = j, hi = j + kBlockBytes;
      const std::uint8_t clo = (in[lo / 2] >> (4 * (lo % 2))) & 0x0F;
      const std::uint8_t chi = (in[hi / 2] >> (4 * (hi % 2))) & 0x0F;
      o[1 + j] = static_cast<std::uint8_t>(clo | (chi << 4));
    }
  }
}

void gguf_blocks_to_mxfp4(std::span<const std::uint8_t> gguf, std::span<std::uint8_t> blocks,
                          std::span<std::uint8_t> scales) {
  const std::size_t n = scales.size();
  if (gguf.size() != n * kGgufMxfp4BlockBytes || blocks.size() != n * kBlockBytes) {
    throw InvalidArgument("gguf_blocks_to_mxfp4: " + std::to_string(n) + " scales need " +
                          std::to_string(n * kGgufMxfp4BlockBytes) + " GGUF bytes and " +
                          std::to_string(n * kBlockBytes) + " block bytes, got " +
                          std::to_string(gguf.size()) + " and " + std::to_string(blocks.size()));
  }
  for (std::size_t b = 0; b < n; ++b) {
    const std::uint8_t* in = gguf.data() + b * kGgufMxfp4BlockBytes;
    std::uint8_t* o = blocks.data() + b * kBlockBytes;
    scales[b] = in[0];
    // Our byte j holds elements 2j and 2j + 1; element i sits in GGUF byte 1 + i % 16.
    for (int j = 0; j < kBlockBytes; ++j) {
      const int e0 = 2 * j, e1 = 2 * j + 1;
      const std::uint8_t c0 = (in[1 + e0 % kBlockBytes] >> (4 * (e0 / kBlockBytes))) & 0x0F;
      const std::uint8_t c1 = (in[1 + e1 % kBlockBytes] >> (4 * (e1 / kBlockBytes))) & 0x0F;
      o[j] = static_cast<std::uint8_t>(c0 | (c1 << 4));
    }
  }
}

Mxfp4Weight mxfp4_weight_from_gguf(std::span<const std::uint8_t> data, const Shape& shape,
                                   std::optional<Tensor> bias) {
  if (shape.size() != 2 && shape.size() != 3) {
    throw ShapeMismatch("mxfp4_weight_from_gguf: an MXFP4 weight is [N, K] or [E, N, K], got " +
                        to_string(shape));
  }
  const std::int64_t k = shape.back();
  if (k < kBlockSize || k % kBlockSize != 0) {
    throw ShapeMismatch("mxfp4_weight_from_gguf: K = " + std::to_string(k) + " of shape " +
                        to_string(shape) + " is not a positive multiple of 32");
  }
  const std::uint64_t nbytes = ggml_nbytes(GgmlType::mxfp4, shape);
  if (data.size() != nbytes) {
    throw InvalidArgument("mxfp4_weight_from_gguf: MXFP4 " + to_string(shape) + " needs " +
                          std::to_string(nbytes) + " bytes, got " + std::to_string(data.size()));
  }
  Shape bshape = shape, sshape = shape;
  bshape.back() = k / 2;
  sshape.back() = k / kBlockSize;
  Tensor blocks = Tensor::empty(bshape, DType::u8);
  Tensor scales = Tensor::empty(sshape, DType::u8);
  gguf_blocks_to_mxfp4(data, {blocks.data_as<std::uint8_t>(), blocks.nbytes()},
                       {scales.data_as<std::uint8_t>(), scales.nbytes()});
  return Mxfp4Weight::from_parts(std::move(blocks), std::move(scales), std::move(bias));
}

// ---- reader -------------------------------------------------------------------------------------

Shape GgufTensorInfo::shape() const {
  Shape s;
  for (auto it = ne.rbegin(); it != ne.rend(); ++it)
    s.push_back(static_cast<std::int64_t>(*it));
  return s;
}

GgufFile GgufFile::open(const std::string& path) {
  FileMap m = map_file(path, "GGUF file '" + path + "': ", false);
  const auto* data = static_cast<const std::uint8_t*>(m.mapping.get());
  if (data == nullptr) return parse({}, path);  // an empty file: parse names the problem
  return parse_storage(std::move(m.mapping), data, m.size, path);
}

GgufFile GgufFile::parse(std::vector<std::uint8_t> bytes, const std::string& source) {
  auto owned = std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes));
  const std::uint8_t* data = owned->data();
  const std::uint64_t size = owned->size();
  return parse_storage(std::move(owned), data, size, source);
}

GgufFile GgufFile::parse_view(std::span<const std::uint8_t> bytes, const std::string& source) {
  return parse_storage(nullptr, bytes.data(), bytes.size(), source);
}

GgufFile GgufFile::parse_storage(std::shared_ptr<const void> storage, const std::uint8_t* data,
                                 std::uint64_t size, const std::string& source) {
  const std::span<const std::uint8_t> bytes(data, static_cast<std::size_t>(size));
  Cursor c(bytes, "GGUF file '" + source + "': ");
  GgufFile file;

  if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0) {
    c.fail("bad magic number (the file does not start with \"GGUF\")");
  }
  c.read<std::uint32_t>("magic");
  file.version_ = c.read<std::uint32_t>("version");
  if (file.version_ != 2 && file.version_ != 3) {
    if ((file.version_ & 0xFFFFu) == 0 && file.version_ != 0) {
      c.fail("version field reads " + std::to_string(file.version_) +
             ": a big-endian GGUF file, which this reader does not support");
    }
    c.fail("unsupported GGUF version " + std::to_string(file.version_) + " (reads 2 and 3)");
  }
  const auto n_tensors = c.read<std::uint64_t>("tensor count");
  const auto n_kv = c.read<std::uint64_t>("metadata count");
  // A key/value takes at least 13 bytes (key length, type, one byte); a tensor info at least 24.
  if (n_kv > c.left() / 13) {
    c.fail("metadata count " + std::to_string(n_kv) + " cannot fit in the " +
           std::to_string(c.left()) + " bytes left");
  }
  if (n_tensors > c.left() / 24) {
    c.fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
           std::to_string(c.left()) + " bytes left");
  }

  file.metadata_.reserve(static_cast<std::size_t>(n_kv));
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string what = "metadata key " + std::to_string(i);
    const std::uint64_t at = c.pos();
    std::string key = c.read_string(what);
    if (key.empty()) c.fail(what + " at offset " + std::to_string(at) + " is empty");
    if (!is_valid_utf8(key)) {
      c.fail(what + " at offset " + std::to_string(at) + " is not valid UTF-8");
    }
    const std::string kwhat = "metadata '" + key + "'";
    const auto code = c.read<std::uint32_t>(kwhat + " type");
    if (!known_value_type(code)) c.fail(kwhat + ": unknown value type " + std::to_string(code));
    GgufValue value = read_value(c, static_cast<GgufValueType>(code), kwhat, 0);
    if (!file.metadata_index_.emplace(key, file.metadata_.size()).second) {
      c.fail(kwhat + " appears more than once (keys must be unique)");
    }
    file.metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = file.find_metadata("general.alignment")) {
    const auto* v = a->get_if<std::uint32_t>();
    if (v == nullptr) {
      c.fail("general.alignment must be uint32, got " +
             std::string(gguf_value_type_name(a->type())));
    }
    if (*v == 0 || !std::has_single_bit(*v)) {
      c.fail("general.alignment = " + std::to_string(*v) + " is not a power of two");
    }
    file.alignment_ = *v;
  }

  file.tensors_.reserve(static_cast<std::size_t>(n_tensors));
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    const std::string what = "tensor info " + std::to_string(i);
    const std::uint64_t at = c.pos();
    GgufTensorInfo t;
    t.name = c.read_string(what + " name");
    if (!is_valid_utf8(t.name)) {
      c.fail(what + " at offset " + std::to_string(at) + ": the name is not valid UTF-8");
    }
    const std::string twhat = "tensor '" + t.name + "'";
    if (!file.tensor_index_.emplace(t.name, file.tensors_.size()).second) {
      c.fail(twhat + " appears more than once (names must be unique)");
    }
    const auto n_dims = c.read<std::uint32_t>(twhat + " n_dims");
    if (n_dims > static_cast<std::uint32_t>(kGgufMaxDims)) {
      c.fail(twhat + " has " + std::to_string(n_dims) + " dims (at most " +
             std::to_string(kGgufMaxDims) + ")");
    }
    for (std::uint32_t d = 0; d < n_dims; ++d)
      t.ne.push_back(c.read<std::uint64_t>(twhat + " ne[" + std::to_string(d) + "]"));
    const auto code = c.read<std::uint32_t>(twhat + " type");
    if (ggml_type_traits(code) == nullptr) {
      c.fail(twhat + " has unknown ggml type " + std::to_string(code));
    }
    t.type = static_cast<GgmlType>(code);
    t.offset = c.read<std::uint64_t>(twhat + " offset");
    const std::string err = try_ggml_nbytes(code, t.ne, t.nbytes);
    if (!err.empty()) {
      c.fail(twhat + " (" + std::string(ggml_type_name(t.type)) + ", ne " + ne_string(t.ne) +
             "): " + err);
    }
    if (t.offset % file.alignment_ != 0) {
      c.fail(twhat + " offset " + std::to_string(t.offset) +
             " is not a multiple of the alignment " + std::to_string(file.alignment_));
    }
    file.tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const std::uint64_t end_of_infos = c.pos();
  const std::uint64_t pad = (file.alignment_ - end_of_infos % file.alignment_) % file.alignment_;
  file.data_offset_ = end_of_infos + pad;  // < 2^32 + file size: no overflow
  const std::uint64_t data_size = file.data_offset_ <= size ? size - file.data_offset_ : 0;
  if (!file.tensors_.empty() && file.data_offset_ > size) {
    c.fail("truncated: the data section starts at offset " + std::to_string(file.data_offset_) +
           " but the file ends at " + std::to_string(size));
  }
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& t : file.tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      c.fail("tensor '" + t.name + "' of " + std::to_string(t.nbytes) + " bytes at data offset " +
             std::to_string(t.offset) + " reaches past the end of the data section (" +
             std::to_string(data_size) + " bytes): truncated file or bad offset");
    }
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& prev = *by_offset[i - 1];
    const GgufTensorInfo& cur = *by_offset[i];
    if (cur.offset < prev.offset + prev.nbytes) {
      c.fail("tensor '" + cur.name + "' at data offset " + std::to_string(cur.offset) +
             " overlaps tensor '" + prev.name + "', which spans [" + std::to_string(prev.offset) +
             ", " + std::to_string(prev.offset + prev.nbytes) + ")");
    }
  }

  file.source_ = source;
  file.storage_ = std::move(storage);
  file.data_ = data;
  file.size_ = size;
  return file;
}

const GgufValue* GgufFile::find_metadata(std::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufFile::find(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::uint8_t> GgufFile::bytes(const GgufTensorInfo& info) const {
  // Only infos of this file have offsets validated against this buffer.
  const std::uint64_t data_size = size_ >= data_offset_ ? size_ - data_offset_ : 0;
  if (info.offset > data_size || info.nbytes > data_size - info.offset) {
    throw InvalidArgument("GGUF file '" + source_ + "': tensor info '" + info.name +
                          "' does not belong to this file");
  }
  return {data_ + data_offset_ + info.offset, static_cast<std::size_t>(info.nbytes)};
}

Tensor GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find(name);
  if (t == nullptr) {
    throw InvalidArgument("GGUF file '" + source_ + "': no tensor named '" + std::string(name) +
                          "'");
  }
  const std::optional<DType> dtype = dtype_of_ggml(t->type);
  if (!dtype) {
    throw DTypeMismatch("GGUF file '" + source_ + "': tensor '" + t->name + "' is " +
                        std::string(ggml_type_name(t->type)) +
                        ", which has no mxfp4 DType (f32, f16, bf16, i32, i64 have one; mxfp4 "
                        "tensors load with mxfp4_weight)");
  }
  Tensor out = Tensor::empty(t->shape(), *dtype);
  const auto span = bytes(*t);
  if (!span.empty()) std::memcpy(out.data(), span.data(), span.size());
  return out;
}

Mxfp4Weight GgufFile::mxfp4_weight(std::string_view name,
                                   std::optional<std::string_view> bias_name) const {
  const std::string prefix = "GGUF file '" + source_ + "': ";
  const GgufTensorInfo* t = find(name);
  if (t == nullptr) {
    throw InvalidArgument(prefix + "no tensor named '" + std::string(name) + "'");
  }
  if (t->type != GgmlType::mxfp4) {
    throw DTypeMismatch(prefix + "tensor '" + t->name + "' is " +
                        std::string(ggml_type_name(t->type)) + ", not mxfp4");
  }
  std::optional<Tensor> bias;
  if (bias_name) {
    bias = tensor(*bias_name);
  }
  try {
    return mxfp4_weight_from_gguf(bytes(*t), t->shape(), std::move(bias));
  } catch (const ShapeMismatch& e) {
    throw ShapeMismatch(prefix + "tensor '" + t->name + "': " + e.what());
  } catch (const DTypeMismatch& e) {
    throw DTypeMismatch(prefix + "tensor '" + t->name + "': " + e.what());
  }
}

// ---- writer -------------------------------------------------------------------------------------

GgufTensorItem gguf_item(std::string name, const Tensor& tensor) {
  if (!tensor.defined()) throw InvalidArgument("gguf_item: tensor '" + name + "' is undefined");
  if (tensor.device().type != DeviceType::cpu) {
    throw Unsupported("gguf_item: tensor '" + name + "' is on " + to_string(tensor.device()) +
                      "; only CPU tensors can be written");
  }
  GgufTensorItem item;
  switch (tensor.dtype()) {
    case DType::f32:
      item.type = GgmlType::f32;
      break;
    case DType::f16:
      item.type = GgmlType::f16;
      break;
    case DType::bf16:
      item.type = GgmlType::bf16;
      break;
    case DType::i32:
      item.type = GgmlType::i32;
      break;
    case DType::i64:
      item.type = GgmlType::i64;
      break;
    default:
      throw DTypeMismatch("gguf_item: tensor '" + name + "' is " +
                          std::string(dtype_name(tensor.dtype())) +
                          ", which GGUF has no type for (f32, f16, bf16, i32, i64)");
  }
  item.shape = tensor.shape();
  item.data = {static_cast<const std::uint8_t*>(tensor.data()), tensor.nbytes()};
  item.name = std::move(name);
  return item;
}

GgufTensorItem gguf_mxfp4_item(std::string name, const Mxfp4Weight& weight) {
  if (!weight.defined()) throw InvalidArgument("gguf_mxfp4_item: weight '" + name + "' is empty");
  if (weight.device().type != DeviceType::cpu) {
    throw Unsupported("gguf_mxfp4_item: weight '" + name + "' is on " + to_string(weight.device()) +
                      "; only CPU weights can be written");
  }
  GgufTensorItem item;
  item.type = GgmlType::mxfp4;
  item.shape = weight.stacked()
                   ? Shape{weight.num_experts(), weight.out_features(), weight.in_features()}
                   : Shape{weight.out_features(), weight.in_features()};
  item.fill = [weight](std::span<std::uint8_t> out) {
    // Converted here, when the bytes are written, so that one copy at a time is in memory.
    const Mxfp4Weight w = weight.with_layout(BlockLayout::standard);
    mxfp4_to_gguf_blocks({w.blocks().data_as<std::uint8_t>(), w.blocks().nbytes()},
                         {w.scales().data_as<std::uint8_t>(), w.scales().nbytes()}, out);
  };
  item.name = std::move(name);
  return item;
}

namespace {

class Encoder {
 public:
  explicit Encoder(std::string prefix) : prefix_(std::move(prefix)) {}
  std::vector<std::uint8_t> out;

  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  void put_string(const std::string& s) {
    put<std::uint64_t>(s.size());
    out.insert(out.end(), s.begin(), s.end());
  }
  void put_value(const GgufValue& v, const std::string& what, int depth) {
    if (const auto* s = v.get_if<std::string>()) {
      if (!is_valid_utf8(*s)) throw InvalidArgument(prefix_ + what + ": string is not valid UTF-8");
      put_string(*s);
    } else if (const auto* a = v.get_if<GgufArray>()) {
      if (depth >= kGgufMaxArrayDepth) {
        throw InvalidArgument(prefix_ + what + ": arrays nest deeper than " +
                              std::to_string(kGgufMaxArrayDepth) + " levels");
      }
      if (!known_value_type(static_cast<std::uint32_t>(a->element_type))) {
        throw InvalidArgument(prefix_ + what + ": unknown array element type " +
                              std::to_string(static_cast<std::uint32_t>(a->element_type)));
      }
      put<std::uint32_t>(static_cast<std::uint32_t>(a->element_type));
      put<std::uint64_t>(a->items.size());
      for (std::size_t i = 0; i < a->items.size(); ++i) {
        const GgufValue& item = a->items[i];
        const std::string iwhat = what + "[" + std::to_string(i) + "]";
        if (item.type() != a->element_type) {
          throw InvalidArgument(
              prefix_ + iwhat + " is " + std::string(gguf_value_type_name(item.type())) +
              " in an array of " + std::string(gguf_value_type_name(a->element_type)));
        }
        put_value(item, iwhat, depth + 1);
      }
    } else {
      std::visit(
          [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, bool>) {
              put<std::uint8_t>(x ? 1 : 0);
            } else if constexpr (std::is_arithmetic_v<T>) {
              put<T>(x);
            }
          },
          v.value);
    }
  }

 private:
  std::string prefix_;
};

}  // namespace

std::uint64_t write_gguf(const std::string& path, const GgufMetadata& metadata,
                         const std::vector<GgufTensorItem>& tensors) {
  const std::string prefix = "write_gguf '" + path + "': ";
  Encoder enc(prefix);

  // Validate everything and encode the header before touching the file system.
  std::uint64_t alignment = kGgufDefaultAlignment;
  enc.out.insert(enc.out.end(), {'G', 'G', 'U', 'F'});
  enc.put<std::uint32_t>(kGgufVersion);
  enc.put<std::uint64_t>(tensors.size());
  enc.put<std::uint64_t>(metadata.size());
  std::set<std::string_view> keys;
  for (const auto& [key, value] : metadata) {
    const std::string what = "metadata '" + key + "'";
    if (key.empty()) throw InvalidArgument(prefix + "a metadata key is empty");
    if (!is_valid_utf8(key)) throw InvalidArgument(prefix + what + ": key is not valid UTF-8");
    if (!keys.insert(key).second) {
      throw InvalidArgument(prefix + what + " appears more than once (keys must be unique)");
    }
    if (key == "general.alignment") {
      const auto* v = value.get_if<std::uint32_t>();
      if (v == nullptr || *v == 0 || !std::has_single_bit(*v)) {
        throw InvalidArgument(prefix + "general.alignment must be a uint32 power of two");
      }
      alignment = *v;
    }
    enc.put_string(key);
    enc.put<std::uint32_t>(static_cast<std::uint32_t>(value.type()));
    enc.put_value(value, what, 0);
  }
  std::set<std::string_view> names;
  std::vector<std::uint64_t> nbytes;
  std::uint64_t offset = 0;
  for (const GgufTensorItem& t : tensors) {
    const std::string what = prefix + "tensor '" + t.name + "': ";
    if (t.name.empty()) throw InvalidArgument(prefix + "a tensor name is empty");
    if (t.name.size() > kGgufMaxTensorName) {
      throw InvalidArgument(what + "the name is " + std::to_string(t.name.size()) +
                            " bytes; GGUF allows " + std::to_string(kGgufMaxTensorName));
    }
    if (!is_valid_utf8(t.name)) throw InvalidArgument(what + "the name is not valid UTF-8");
    if (!names.insert(t.name).second) {
      throw InvalidArgument(what + "appears more than once (names must be unique)");
    }
    if (t.shape.size() > static_cast<std::size_t>(kGgufMaxDims)) {
      throw InvalidArgument(what + "shape " + to_string(t.shape) + " has more than " +
                            std::to_string(kGgufMaxDims) + " dims");
    }
    std::uint64_t n = 0;
    try {
      n = ggml_nbytes(t.type, t.shape);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(what + e.what());
    }
    if (!t.fill && t.data.size() != n) {
      throw InvalidArgument(what + std::string(ggml_type_name(t.type)) + " " + to_string(t.shape) +
                            " needs " + std::to_string(n) + " bytes, got " +
                            std::to_string(t.data.size()));
    }
    enc.put_string(t.name);
    enc.put<std::uint32_t>(static_cast<std::uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it)
      enc.put<std::uint64_t>(static_cast<std::uint64_t>(*it));
    enc.put<std::uint32_t>(static_cast<std::uint32_t>(t.type));
    enc.put<std::uint64_t>(offset);
    nbytes.push_back(n);
    const std::uint64_t padded = n + (alignment - n % alignment) % alignment;
    if (padded > kInt64Max - offset) {
      throw InvalidArgument(what + "the data section would exceed 2^63 bytes");
    }
    offset += padded;
  }
  const std::uint64_t header_pad = (alignment - enc.out.size() % alignment) % alignment;

  AtomicFile out(path, "write_gguf '" + path + "'");
  out.write(enc.out.data(), enc.out.size());
  out.write_zeros(static_cast<std::size_t>(header_pad));
  std::vector<std::uint8_t> buffer;  // one filled tensor at a time
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const GgufTensorItem& t = tensors[i];
    std::span<const std::uint8_t> data = t.data;
    if (t.fill) {
      buffer.assign(static_cast<std::size_t>(nbytes[i]), 0);
      t.fill(buffer);
      data = buffer;
    }
    out.write(data.data(), data.size());
    out.write_zeros(static_cast<std::size_t>((alignment - data.size() % alignment) % alignment));
  }
  const std::uint64_t written = out.size();
  out.commit();
  return written;
}

}  // namespace mxfp4::io
