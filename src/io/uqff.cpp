// UQFF codecs for MXFP4 layers (FORMATS.md section 4): the legacy 0.2.0 blob, legacy .uqff files
// of blobs, and UQFF 1.x on safetensors. Every length and dim of a blob is checked against the
// bytes that are there before anything is allocated.
#include "mxfp4/io/uqff.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <set>

#include "mxfp4/error.hpp"

namespace mxfp4::io {

static_assert(std::endian::native == std::endian::little,
              "UQFF data is little-endian; this code hands out the bytes unswapped");

namespace {

constexpr std::uint64_t kInt64Max =
    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

struct DTypeCode {
  UqffDType code;
  std::string_view name;
  std::uint32_t size;  // bytes per element; 0 for codes whose data cannot be serialized
};
constexpr DTypeCode kDTypes[] = {
    {UqffDType::u8, "U8", 1},         {UqffDType::u32, "U32", 4},
    {UqffDType::i32, "I32", 4},       {UqffDType::i64, "I64", 8},
    {UqffDType::f16, "F16", 2},       {UqffDType::bf16, "BF16", 2},
    {UqffDType::f32, "F32", 4},       {UqffDType::f64, "F64", 8},
    {UqffDType::i16, "I16", 2},       {UqffDType::f8e4m3, "F8E4M3", 1},
    {UqffDType::f6e2m3, "F6E2M3", 0}, {UqffDType::f6e3m2, "F6E3M2", 0},
    {UqffDType::f4, "F4", 0},         {UqffDType::f8e8m0, "F8E8M0", 0},
};

const DTypeCode* find_code(std::uint32_t code) {
  for (const DTypeCode& d : kDTypes) {
    if (static_cast<std::uint32_t>(d.code) == code) return &d;
  }
  return nullptr;
}

std::optional<UqffDType> uqff_code_of(DType d) {
  switch (d) {
    case DType::u8:
      return UqffDType::u8;
    case DType::u32:
      return UqffDType::u32;
    case DType::i32:
      return UqffDType::i32;
    case DType::i64:
      return UqffDType::i64;
    case DType::f16:
      return UqffDType::f16;
    case DType::bf16:
      return UqffDType::bf16;
    case DType::f32:
      return UqffDType::f32;
  }
  return std::nullopt;
}

std::optional<DType> dtype_of_code(UqffDType d) {
  switch (d) {
    case UqffDType::u8:
      return DType::u8;
    case UqffDType::u32:
      return DType::u32;
    case UqffDType::i32:
      return DType::i32;
    case UqffDType::i64:
      return DType::i64;
    case UqffDType::f16:
      return DType::f16;
    case UqffDType::bf16:
      return DType::bf16;
    case UqffDType::f32:
      return DType::f32;
    default:
      return std::nullopt;
  }
}

class BlobReader {
 public:
  BlobReader(std::span<const std::uint8_t> b, std::string prefix)
      : b_(b), prefix_(std::move(prefix)) {}
  [[noreturn]] void fail(const std::string& what) const { throw FormatError(prefix_ + what); }
  std::uint64_t pos() const { return pos_; }
  std::uint64_t left() const { return b_.size() - pos_; }
  void need(std::uint64_t n, const std::string& what) const {
    if (n > left()) {
      fail("truncated: " + what + " needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " but the blob has " + std::to_string(left()) + " left");
    }
  }
  std::uint8_t u8(const std::string& what) {
    need(1, what);
    return b_[pos_++];
  }
  std::uint32_t u32(const std::string& what) {
    need(4, what);
    std::uint32_t v;
    std::memcpy(&v, b_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  std::span<const std::uint8_t> take(std::uint64_t n, const std::string& what) {
    need(n, what);
    auto s = b_.subspan(static_cast<std::size_t>(pos_), static_cast<std::size_t>(n));
    pos_ += n;
    return s;
  }

  UqffBlobTensor tensor(const std::string& name) {
    UqffBlobTensor t;
    const std::uint32_t len = u32(name + " data length");
    const std::uint32_t code = u32(name + " dtype code");
    const DTypeCode* d = find_code(code);
    if (d == nullptr) fail(name + ": unknown dtype code " + std::to_string(code));
    if (d->size == 0) {
      fail(name + ": dtype " + std::string(d->name) + " (code " + std::to_string(code) +
           ") has no serialized data form");
    }
    t.dtype = d->code;
    const std::uint32_t ndims = u32(name + " ndims");
    if (ndims > left() / 4) {
      fail(name + ": ndims " + std::to_string(ndims) + " cannot fit in the " +
           std::to_string(left()) + " bytes left");
    }
    std::uint64_t numel = 1;
    bool overflow = false;
    for (std::uint32_t i = 0; i < ndims; ++i) {
      const std::uint32_t dim = u32(name + " dim " + std::to_string(i));
      t.shape.push_back(dim);
      if (dim != 0 && numel > kInt64Max / dim) overflow = true;
      if (!overflow) numel *= dim;
    }
    if (overflow || numel > kInt64Max / d->size) {
      fail(name + ": shape " + to_string(t.shape) + " of " + std::string(d->name) +
           " has more bytes than int64 holds");
    }
    if (numel * d->size != len) {
      fail(name + ": data length " + std::to_string(len) + " but " + std::string(d->name) + " " +
           to_string(t.shape) + " needs " + std::to_string(numel * d->size) + " bytes");
    }
    t.data = take(len, name + " data");
    return t;
  }

 private:
  std::span<const std::uint8_t> b_;
  std::string prefix_;
  std::uint64_t pos_ = 0;
};

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// The blob encoding of `t`, or InvalidArgument / DTypeMismatch (before any data is read).
void check_blob_tensor(const Tensor& t, const std::string& what) {
  if (!uqff_code_of(t.dtype())) {
    throw DTypeMismatch("serialize_uqff_blob: " + what + " has dtype " +
                        std::string(dtype_name(t.dtype())) + ", which UQFF has no code for");
  }
  constexpr std::uint64_t kU32Max = std::numeric_limits<std::uint32_t>::max();
  if (t.nbytes() > kU32Max) {
    throw InvalidArgument("serialize_uqff_blob: " + what + " holds " + std::to_string(t.nbytes()) +
                          " bytes; a UQFF blob tensor holds at most 2^32 - 1");
  }
  for (std::int64_t d : t.shape()) {
    if (static_cast<std::uint64_t>(d) > kU32Max) {
      throw InvalidArgument("serialize_uqff_blob: " + what + " shape " + to_string(t.shape()) +
                            " has a dim over 2^32 - 1");
    }
  }
}

void put_tensor(std::vector<std::uint8_t>& out, const Tensor& t) {
  put_u32(out, static_cast<std::uint32_t>(t.nbytes()));
  put_u32(out, static_cast<std::uint32_t>(*uqff_code_of(t.dtype())));
  put_u32(out, static_cast<std::uint32_t>(t.rank()));
  for (std::int64_t d : t.shape())
    put_u32(out, static_cast<std::uint32_t>(d));
  const auto* p = static_cast<const std::uint8_t*>(t.data());
  out.insert(out.end(), p, p + t.nbytes());
}

Tensor owning_tensor(const UqffBlobTensor& t) {
  Tensor out = Tensor::empty(t.shape, *dtype_of_code(t.dtype));
  if (!t.data.empty()) std::memcpy(out.data(), t.data.data(), t.data.size());
  return out;
}

// A decimal index without sign or leading zeros, or nullopt.
std::optional<std::size_t> parse_index(std::string_view s) {
  if (s.empty() || s.size() > 19 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  std::size_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::size_t>(c - '0');
  }
  return v;
}

void check_cpu(const Mxfp4Weight& w, const std::string& what) {
  if (!w.defined()) throw InvalidArgument(what + ": the weight is empty");
  if (w.device().type != DeviceType::cpu) {
    throw Unsupported(what + ": the weight is on " + to_string(w.device()) +
                      "; only CPU weights can be written");
  }
}

}  // namespace

std::string_view uqff_dtype_name(UqffDType dtype) noexcept {
  const DTypeCode* d = find_code(static_cast<std::uint32_t>(dtype));
  return d == nullptr ? "unknown" : d->name;
}

// ---- legacy blob --------------------------------------------------------------------------------

UqffBlob parse_uqff_blob(std::span<const std::uint8_t> blob, const std::string& source) {
  BlobReader r(blob, "UQFF blob '" + source + "': ");
  UqffBlob out;
  const std::uint32_t word = r.u32("version");
  out.version = {word >> 16, (word >> 8) & 0xFFu, word & 0xFFu};
  if (out.version.major != kUqffBlobVersion.major) {
    r.fail("version " + std::to_string(out.version.major) + "." +
           std::to_string(out.version.minor) + "." + std::to_string(out.version.patch) +
           " has major " + std::to_string(out.version.major) + "; this reader reads major " +
           std::to_string(kUqffBlobVersion.major));
  }
  if (out.version.minor > kUqffBlobVersion.minor) {
    r.fail("version 0." + std::to_string(out.version.minor) + "." +
           std::to_string(out.version.patch) + " is newer than this reader (0." +
           std::to_string(kUqffBlobVersion.minor) + ".x)");
  }
  const std::uint8_t type = r.u8("quantized type");
  if (type != static_cast<std::uint8_t>(UqffQuantType::mxfp4)) {
    r.fail("quantized type " + std::to_string(type) + " is not MXFP4 (6)");
  }
  const std::uint8_t has_bias = r.u8("has_bias");
  if (has_bias > 1) r.fail("has_bias byte is " + std::to_string(has_bias) + ", not 0 or 1");
  out.blocks = r.tensor("blocks");
  out.scales = r.tensor("scales");
  if (has_bias == 1) out.bias = r.tensor("bias");
  if (r.left() != 0) {
    r.fail(std::to_string(r.left()) + " bytes left over after the last tensor (at offset " +
           std::to_string(r.pos()) + ")");
  }
  return out;
}

std::vector<std::uint8_t> serialize_uqff_blob(const Mxfp4Weight& given) {
  check_cpu(given, "serialize_uqff_blob");
  const Mxfp4Weight weight = given.with_layout(BlockLayout::standard);  // what files hold
  check_blob_tensor(weight.blocks(), "blocks");
  check_blob_tensor(weight.scales(), "scales");
  if (weight.bias()) check_blob_tensor(*weight.bias(), "bias");
  std::size_t size = 6 + 2 * (12 + 4 * static_cast<std::size_t>(weight.blocks().rank())) +
                     weight.blocks().nbytes() + weight.scales().nbytes();
  if (weight.bias())
    size += 12 + 4 * static_cast<std::size_t>(weight.bias()->rank()) + weight.bias()->nbytes();
  std::vector<std::uint8_t> out;
  out.reserve(size);
  put_u32(out, kUqffBlobVersion.word());
  out.push_back(static_cast<std::uint8_t>(UqffQuantType::mxfp4));
  out.push_back(weight.bias() ? 1 : 0);
  put_tensor(out, weight.blocks());
  put_tensor(out, weight.scales());
  if (weight.bias()) put_tensor(out, *weight.bias());
  return out;
}

Mxfp4Weight deserialize_uqff_blob(std::span<const std::uint8_t> blob, const std::string& source) {
  const UqffBlob b = parse_uqff_blob(blob, source);
  const std::string prefix = "UQFF blob '" + source + "': ";
  if (b.blocks.dtype != UqffDType::u8 || b.scales.dtype != UqffDType::u8) {
    throw FormatError(prefix + "blocks and scales must be U8, got " +
                      std::string(uqff_dtype_name(b.blocks.dtype)) + " and " +
                      std::string(uqff_dtype_name(b.scales.dtype)));
  }
  std::optional<Tensor> bias;
  if (b.bias) {
    const UqffDType d = b.bias->dtype;
    if (d != UqffDType::f32 && d != UqffDType::f16 && d != UqffDType::bf16) {
      throw FormatError(prefix + "bias must be F32, F16 or BF16, got " +
                        std::string(uqff_dtype_name(d)));
    }
    bias = owning_tensor(*b.bias);
  }
  try {
    return Mxfp4Weight::from_parts(owning_tensor(b.blocks), owning_tensor(b.scales),
                                   std::move(bias));
  } catch (const ShapeMismatch& e) {
    throw FormatError(prefix + e.what());
  } catch (const InvalidArgument& e) {
    throw FormatError(prefix + e.what());
  }
}

// ---- legacy .uqff file --------------------------------------------------------------------------

std::string uqff_legacy_shard_name(std::string_view stem, std::size_t shard) {
  return std::string(stem) + "-" + std::to_string(shard) + ".uqff";
}

std::uint64_t write_uqff_legacy(const std::string& path, const std::vector<Mxfp4Weight>& layers,
                                std::size_t first_index) {
  std::vector<std::vector<std::uint8_t>> blobs;
  blobs.reserve(layers.size());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    check_cpu(layers[i], "write_uqff_legacy '" + path + "' layer " + std::to_string(i));
    blobs.push_back(serialize_uqff_blob(layers[i]));
  }
  std::vector<SafetensorsItem> items;
  for (std::size_t i = 0; i < blobs.size(); ++i) {
    items.push_back({std::to_string(first_index + i),
                     "U8",
                     {static_cast<std::int64_t>(blobs[i].size())},
                     blobs[i]});
  }
  return write_safetensors(path, items);
}

std::vector<UqffLegacyLayer> read_uqff_legacy(const SafetensorsFile& file) {
  const std::string prefix = "legacy UQFF file '" + file.source() + "': ";
  std::vector<UqffLegacyLayer> out;
  for (const SafetensorsEntry& e : file.entries()) {
    const std::string what = prefix + "tensor '" + e.name + "': ";
    const std::optional<std::size_t> index = parse_index(e.name);
    if (!index) {
      throw FormatError(what +
                        "the name is not a layer index (a decimal number, no leading zeros)");
    }
    if (e.dtype != "U8" || e.shape.size() != 1) {
      throw FormatError(what + "a blob must be 1-D U8, got " + e.dtype + " " + to_string(e.shape));
    }
    out.push_back(
        {*index, deserialize_uqff_blob(file.bytes(e), file.source() + "' tensor '" + e.name)});
  }
  std::sort(out.begin(), out.end(),
            [](const UqffLegacyLayer& a, const UqffLegacyLayer& b) { return a.index < b.index; });
  return out;
}

std::vector<UqffLegacyLayer> read_uqff_legacy(const std::string& path) {
  return read_uqff_legacy(SafetensorsFile::open(path));
}

// ---- UQFF 1.x -----------------------------------------------------------------------------------

namespace {

const std::uint32_t kVersionWords[3] = {kUqff1Version.major, kUqff1Version.minor,
                                        kUqff1Version.patch};
const std::uint8_t kMxfp4Format = static_cast<std::uint8_t>(UqffQuantType::mxfp4);
constexpr std::string_view kVersionNames[3] = {"uqff.version.major", "uqff.version.minor",
                                               "uqff.version.patch"};
constexpr std::string_view kFormatSuffix = ".weight.format";

std::span<const std::uint8_t> bytes_of(const void* p, std::size_t n) {
  return {static_cast<const std::uint8_t*>(p), n};
}

}  // namespace

std::vector<SafetensorsItem> uqff1_version_items() {
  std::vector<SafetensorsItem> items;
  for (int i = 0; i < 3; ++i)
    items.push_back({std::string(kVersionNames[i]), "U32", {}, bytes_of(&kVersionWords[i], 4)});
  return items;
}

std::vector<SafetensorsItem> uqff1_layer_items(const std::string& prefix,
                                               const Mxfp4Weight& weight) {
  check_cpu(weight, "uqff1_layer_items '" + prefix + "'");
  // The items view the weight's own bytes, so a converted copy could not outlive this call.
  if (weight.layout() != BlockLayout::standard) {
    throw InvalidArgument("uqff1_layer_items '" + prefix +
                          "': the weight is in BlockLayout::" + block_layout_name(weight.layout()) +
                          "; files hold the standard layout: pass "
                          "weight.with_layout(BlockLayout::standard)");
  }
  std::vector<SafetensorsItem> items;
  items.push_back({prefix + std::string(kFormatSuffix), "U8", {}, bytes_of(&kMxfp4Format, 1)});
  items.push_back(safetensors_item(prefix + ".weight", weight.blocks()));
  items.push_back(safetensors_item(prefix + ".weight.scales", weight.scales()));
  if (weight.bias()) items.push_back(safetensors_item(prefix + ".bias", *weight.bias()));
  return items;
}

std::uint64_t write_uqff1(const std::string& path, const std::vector<Uqff1Layer>& layers,
                          const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsItem> items = uqff1_version_items();
  std::vector<Mxfp4Weight> standard;  // the bytes the items view, alive until the write is done
  standard.reserve(layers.size());
  for (const Uqff1Layer& l : layers) {
    check_cpu(l.weight, "write_uqff1 '" + l.prefix + "'");
    standard.push_back(l.weight.with_layout(BlockLayout::standard));
    for (SafetensorsItem& item : uqff1_layer_items(l.prefix, standard.back()))
      items.push_back(std::move(item));
  }
  return write_safetensors(path, items, metadata);
}

Uqff1Contents read_uqff1(const SafetensorsFile& file) {
  const std::string prefix = "UQFF file '" + file.source() + "': ";
  Uqff1Contents out;
  std::uint32_t words[3] = {};
  for (int i = 0; i < 3; ++i) {
    const std::string name(kVersionNames[i]);
    const SafetensorsEntry* e = file.find(name);
    if (e == nullptr) throw FormatError(prefix + "has no '" + name + "' (not a UQFF 1.x file?)");
    if (e->dtype != "U32" || !e->shape.empty()) {
      throw FormatError(prefix + "'" + name + "' must be a U32 scalar, got " + e->dtype + " " +
                        to_string(e->shape));
    }
    std::memcpy(&words[i], file.bytes(*e).data(), 4);
  }
  out.version = {words[0], words[1], words[2]};
  const std::string v =
      std::to_string(words[0]) + "." + std::to_string(words[1]) + "." + std::to_string(words[2]);
  if (out.version.major != kUqff1Version.major) {
    throw FormatError(prefix + "UQFF version " + v + ": this reader reads major " +
                      std::to_string(kUqff1Version.major));
  }
  if (out.version.minor > kUqff1Version.minor) {
    throw FormatError(prefix + "UQFF version " + v + " is newer than this reader (1." +
                      std::to_string(kUqff1Version.minor) + ".x)");
  }
  for (const SafetensorsEntry& e : file.entries()) {
    if (!e.name.ends_with(kFormatSuffix)) continue;
    const std::string p = e.name.substr(0, e.name.size() - kFormatSuffix.size());
    const std::string what = prefix + "layer '" + p + "': ";
    if (e.dtype != "U8" || !e.shape.empty()) {
      throw FormatError(what + "'" + e.name + "' must be a U8 scalar, got " + e.dtype + " " +
                        to_string(e.shape));
    }
    const std::uint8_t format = file.bytes(e)[0];
    if (format != kMxfp4Format) {
      out.other_layers.emplace_back(p, format);
      continue;
    }
    auto u8_tensor = [&](const std::string& name) {
      const SafetensorsEntry* t = file.find(name);
      if (t == nullptr) throw FormatError(what + "MXFP4 layer has no '" + name + "'");
      if (t->dtype != "U8") {
        throw FormatError(what + "'" + name + "' must be U8, got " + t->dtype + " " +
                          to_string(t->shape));
      }
      return file.tensor(name);
    };
    Tensor blocks = u8_tensor(p + ".weight");
    Tensor scales = u8_tensor(p + ".weight.scales");
    std::optional<Tensor> bias;
    if (const SafetensorsEntry* b = file.find(p + ".bias")) {
      if (b->dtype != "F32" && b->dtype != "F16" && b->dtype != "BF16") {
        throw FormatError(what + "'" + b->name + "' must be F32, F16 or BF16, got " + b->dtype);
      }
      bias = file.tensor(b->name);
    }
    try {
      out.layers.push_back(
          {p, Mxfp4Weight::from_parts(std::move(blocks), std::move(scales), std::move(bias))});
    } catch (const ShapeMismatch& e2) {
      throw FormatError(what + e2.what());
    } catch (const InvalidArgument& e2) {
      throw FormatError(what + e2.what());
    }
  }
  return out;
}

Uqff1Contents read_uqff1(const std::string& path) {
  return read_uqff1(SafetensorsFile::open(path));
}

}  // namespace mxfp4::io
