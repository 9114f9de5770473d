// The layout registry and the two safetensors layouts that differ only in naming and in the
// shape of the blocks: `linear` (P.blocks [.., N, K/2]) and `gptoss` (P_blocks [.., N, K/32, 16]).
#include "mxfp4/io/layout.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "io/layout_internal.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::io {

Shape LogicalTensor::weight_shape() const {
  if (experts > 0) return {experts, n, k};
  return {n, k};
}

const LogicalTensor* LogicalCheckpoint::find(std::string_view name) const {
  for (const LogicalTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const Mxfp4Weight& detail::SharedWeight::get() {
  if (!w_.defined()) {
    w_ = t_.weight();
    // Every layout writes the standard bytes (a producer may give a GPU-layout weight).
    w_ = w_.with_layout(BlockLayout::standard);
    const bool ok = w_.out_features() == t_.n && w_.in_features() == t_.k &&
                    (w_.stacked() ? w_.num_experts() == t_.experts : t_.experts == 0) &&
                    w_.bias().has_value() == t_.has_bias() &&
                    (!t_.has_bias() || safetensors_dtype_name(w_.bias()->dtype()) == t_.bias_dtype);
    if (!ok) {
      throw InvalidArgument(
          "MXFP4 weight '" + t_.name + "': its producer gave a weight that is not " +
          to_string(t_.weight_shape()) +
          (t_.has_bias() ? " with a " + t_.bias_dtype + " bias" : " without bias"));
    }
  }
  return w_;
}

namespace {

bool is_float_dtype(std::string_view d) {
  return d == "F32" || d == "F16" || d == "BF16";
}

// How a safetensors layout names the parts of an MXFP4 weight.
struct Naming {
  std::string_view blocks;  // suffix including its separator: ".blocks" or "_blocks"
  std::string_view scales;
  std::string_view bias;
  bool four_d;  // blocks as [.., N, K/32, 16]
};

constexpr Naming kLinearNaming{".blocks", ".scales", ".bias", false};
constexpr Naming kGptossNaming{"_blocks", "_scales", "_bias", true};

// P + suffix; a weight without a layer name uses the suffix without its separator.
std::string part(const std::string& name, std::string_view suffix) {
  if (name.empty()) return std::string(suffix.substr(1));
  return name + std::string(suffix);
}

// If `name` is P + suffix (or the bare suffix without separator), sets P.
bool strip(std::string_view name, std::string_view suffix, std::string& p) {
  if (name == suffix.substr(1)) {
    p.clear();
    return true;
  }
  if (name.size() > suffix.size() && name.ends_with(suffix)) {
    p = std::string(name.substr(0, name.size() - suffix.size()));
    return true;
  }
  return false;
}

std::string describe(const SafetensorsEntry& e) {
  return "'" + e.name + "' " + e.dtype + " " + to_string(e.shape);
}

// A tensor viewing a checkpoint entry's bytes as `shape` u8 (no copy; keeps the file alive).
Tensor u8_view(const SafetensorsCheckpoint::Ref& r, const Shape& shape) {
  return Tensor::view(r.file->bytes(*r.entry).data(), shape, DType::u8, r.file->keep_alive());
}

LogicalCheckpoint read_named(const std::string& path, const Naming& naming, std::string_view layout,
                             bool strict) {
  auto st = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::open(path));
  const std::string prefix = "checkpoint '" + path + "' (layout " + std::string(layout) + "): ";
  LogicalCheckpoint c;
  c.source = path;
  c.layout = std::string(layout);
  c.metadata = st->metadata();
  c.config = st->quantization_config();
  c.folder = st->folder();
  c.source_bytes = st->total_bytes();
  c.keep_alive = st;

  // Find the MXFP4 weights first: their scales and bias are consumed by them.
  std::map<std::string, LogicalTensor> weights;  // by blocks name
  std::set<std::string> consumed;
  for (const auto& ref : st->entries()) {
    try {
      const SafetensorsEntry& e = *ref.entry;
      std::string p;
      if (strip(e.name, naming.scales, p) && st->find(part(p, naming.blocks)).entry == nullptr) {
        throw FormatError(prefix + "tensor " + describe(e) + " has no partner '" +
                          part(p, naming.blocks) + "' (MXFP4 scales need their blocks)");
      }
      if (!strip(e.name, naming.blocks, p)) continue;
      const auto sref = st->find(part(p, naming.scales));
      if (sref.entry == nullptr) {
        throw FormatError(prefix + "tensor " + describe(e) + " has no partner '" +
                          part(p, naming.scales) + "' (MXFP4 blocks need their scales)");
      }
      const SafetensorsEntry& s = *sref.entry;
      const std::string pair = prefix + "MXFP4 pair " + describe(e) + " and " + describe(s) + ": ";
      if (e.dtype != "U8" || s.dtype != "U8") throw FormatError(pair + "both must be U8");
      const std::size_t lead = naming.four_d ? e.shape.size() - 2 : e.shape.size() - 1;
      if (e.shape.size() < (naming.four_d ? 3u : 2u) ||
          e.shape.size() > (naming.four_d ? 4u : 3u)) {
        throw FormatError(pair + (naming.four_d ? "blocks must be [N, K/32, 16] or [E, N, K/32, 16]"
                                                : "blocks must be [N, K/2] or [E, N, K/2]"));
      }
      if (naming.four_d && e.shape.back() != kBlockBytes) {
        throw FormatError(pair + "the last dim of the blocks must be 16");
      }
      Shape blocks3(e.shape.begin(), e.shape.begin() + static_cast<std::ptrdiff_t>(lead));
      const std::int64_t row_bytes =
          naming.four_d ? e.shape[lead] * kBlockBytes : e.shape[lead];  // K/2
      blocks3.push_back(row_bytes);
      Mxfp4Weight probe;
      try {
        probe = Mxfp4Weight::from_parts(u8_view(ref, blocks3), u8_view(sref, s.shape));
      } catch (const Error& err) {
        throw FormatError(pair + err.what());
      }
      LogicalTensor t;
      t.kind = LogicalTensor::Kind::mxfp4;
      t.name = p;
      t.experts = probe.stacked() ? probe.num_experts() : 0;
      t.n = probe.out_features();
      t.k = probe.in_features();
      std::string bias_name;
      const auto bref = st->find(part(p, naming.bias));
      Shape bias_shape = probe.stacked() ? Shape{t.experts, t.n} : Shape{t.n};
      if (bref.entry != nullptr && is_float_dtype(bref.entry->dtype) &&
          bref.entry->shape == bias_shape) {
        bias_name = bref.entry->name;
        t.bias_dtype = bref.entry->dtype;
        consumed.insert(bias_name);
      }
      const std::string blocks_name = e.name;
      const std::string scales_name = s.name;
      const Shape scales_shape = s.shape;
      t.weight = [st, blocks_name, scales_name, bias_name, blocks3, scales_shape] {
        std::optional<Tensor> bias;
        if (!bias_name.empty()) bias = st->tensor(bias_name);
        return Mxfp4Weight::from_parts(u8_view(st->find(blocks_name), blocks3),
                                       u8_view(st->find(scales_name), scales_shape),
                                       std::move(bias));
      };
      t.source_names = {blocks_name, scales_name};
      if (!bias_name.empty()) t.source_names.push_back(bias_name);
      consumed.insert(scales_name);
      weights.emplace(e.name, std::move(t));
    } catch (const FormatError&) {
      if (strict) throw;
    }
  }

  for (const auto& ref : st->entries()) {
    const SafetensorsEntry& e = *ref.entry;
    if (auto it = weights.find(e.name); it != weights.end()) {
      c.tensors.push_back(std::move(it->second));
      continue;
    }
    if (consumed.count(e.name) != 0) continue;
    c.tensors.push_back(detail::dense_from(st, e));
  }
  return c;
}

std::vector<std::vector<std::string>> names_for(const LogicalCheckpoint& c, const Naming& naming) {
  std::vector<std::vector<std::string>> names;
  for (const LogicalTensor& t : c.tensors) {
    if (!t.is_mxfp4()) {
      names.push_back({t.name});
      continue;
    }
    std::vector<std::string> n = {part(t.name, naming.blocks), part(t.name, naming.scales)};
    if (t.has_bias()) n.push_back(part(t.name, naming.bias));
    names.push_back(std::move(n));
  }
  return names;
}

LayoutWriteResult write_named(const LogicalCheckpoint& c, const std::string& out,
                              const LayoutWriteOptions& options, const Naming& naming) {
  LayoutWriteResult result;
  result.names = names_for(c, naming);
  std::vector<StreamedTensor> physical;
  for (std::size_t i = 0; i < c.tensors.size(); ++i) {
    const LogicalTensor& t = c.tensors[i];
    const auto& names = result.names[i];
    const auto notify = detail::tensor_notifier(options, i);
    if (!t.is_mxfp4()) {
      physical.push_back(detail::dense_streamed(t, notify));
      continue;
    }
    auto w = std::make_shared<detail::SharedWeight>(t);
    Shape lead = detail::lead_shape(t);
    Shape bshape = lead;
    if (naming.four_d) {
      bshape.push_back(t.k / kBlockSize);
      bshape.push_back(kBlockBytes);
    } else {
      bshape.push_back(t.k / 2);
    }
    Shape sshape = lead;
    sshape.push_back(t.k / kBlockSize);
    const bool bias = t.has_bias();
    physical.push_back({{names[0], "U8", bshape}, [w, notify] {
                          notify();
                          return tensor_bytes(w->get().blocks());
                        }});
    physical.push_back({{names[1], "U8", sshape}, [w, bias] {
                          TensorBytes b = tensor_bytes(w->get().scales());
                          if (!bias) w->release();
                          return b;
                        }});
    if (bias) {
      physical.push_back({{names[2], t.bias_dtype, lead}, [w] {
                            TensorBytes b = tensor_bytes(*w->get().bias());
                            w->release();
                            return b;
                          }});
    }
  }
  CheckpointWriteOptions wo;
  wo.max_shard_bytes = options.max_shard_bytes;
  const CheckpointWriteResult r = write_checkpoint(out, physical, c.metadata, wo);
  result.files = r.files;
  result.bytes = r.bytes;
  return result;
}

class NamedLayout final : public Layout {
 public:
  NamedLayout(std::string_view name, std::string_view description, Naming naming)
      : name_(name), description_(description), naming_(naming) {}
  std::string_view name() const override { return name_; }
  std::string_view description() const override { return description_; }
  bool detect(const std::string&, const SafetensorsCheckpoint* st) const override {
    if (st == nullptr) return false;
    if (!naming_.four_d) return true;  // linear reads any safetensors checkpoint
    for (const auto& r : st->entries()) {
      std::string p;
      if (strip(r.entry->name, naming_.blocks, p) &&
          st->find(part(p, naming_.scales)).entry != nullptr) {
        return true;
      }
    }
    return false;
  }
  LogicalCheckpoint read(const std::string& path, bool strict) const override {
    return read_named(path, naming_, name_, strict);
  }
  std::vector<std::vector<std::string>> output_names(const LogicalCheckpoint& c) const override {
    return names_for(c, naming_);
  }
  LayoutWriteResult write(const LogicalCheckpoint& c, const std::string& out,
                          const LayoutWriteOptions& options) const override {
    return write_named(c, out, options, naming_);
  }

 private:
  std::string_view name_;
  std::string_view description_;
  Naming naming_;
};

// A registered name whose codec is not in this build yet.
class PendingLayout final : public Layout {
 public:
  PendingLayout(std::string_view name, std::string_view description)
      : name_(name), description_(description) {}
  std::string_view name() const override { return name_; }
  std::string_view description() const override { return description_; }
  bool available() const override { return false; }
  bool detect(const std::string&, const SafetensorsCheckpoint*) const override { return false; }
  LogicalCheckpoint read(const std::string&, bool) const override { unavailable(); }
  std::vector<std::vector<std::string>> output_names(const LogicalCheckpoint&) const override {
    unavailable();
  }
  LayoutWriteResult write(const LogicalCheckpoint&, const std::string&,
                          const LayoutWriteOptions&) const override {
    unavailable();
  }
  [[noreturn]] void unavailable() const {
    throw Unsupported("layout '" + std::string(name_) + "' (" + std::string(description_) +
                      ") is not built yet in this version of mxfp4");
  }

 private:
  std::string_view name_;
  std::string_view description_;
};

}  // namespace

// ==== LAYOUT REGISTRATION POINT ==================================================================
// Every layout the command and the API know, in detection order (the most specific first; linear
// reads any safetensors checkpoint, so it comes last). A new layout is a Layout object added here
// (the UQFF and GGUF ones live in layout_codecs.cpp); a name reserved for a codec that is not
// built yet can stand here as a PendingLayout, which says so when asked for.
const std::vector<const Layout*>& layouts() {
  static const NamedLayout linear("linear", "P.blocks [.., N, K/2] + P.scales + P.bias",
                                  kLinearNaming);
  static const NamedLayout gptoss(
      "gptoss", "GPT-OSS: P_blocks [.., N, K/32, 16] + P_scales + P_bias", kGptossNaming);
  static const std::vector<const Layout*> all = {&detail::uqff1_layout(),
                                                 &detail::uqff_legacy_layout(),
                                                 &detail::gguf_layout(), &gptoss, &linear};
  return all;
}
// =================================================================================================

std::string layout_names() {
  // The order users read: ours first.
  std::string s;
  for (std::string_view n : {"linear", "gptoss", "uqff1", "uqff-legacy", "gguf"}) {
    if (!s.empty()) s += ", ";
    s += n;
  }
  for (const Layout* l : layouts()) {
    if (s.find(l->name()) == std::string::npos) s += ", " + std::string(l->name());
  }
  return s;
}

const Layout& find_layout(std::string_view name) {
  for (const Layout* l : layouts()) {
    if (l->name() == name) {
      if (!l->available()) {
        throw Unsupported("layout '" + std::string(name) + "' (" + std::string(l->description()) +
                          ") is not built yet in this version of mxfp4");
      }
      return *l;
    }
  }
  throw InvalidArgument("unknown layout '" + std::string(name) + "' (known: " + layout_names() +
                        ")");
}

const Layout& detect_layout(const std::string& path) {
  // GGUF files announce themselves with their magic; everything else must be safetensors.
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    char magic[4] = {};
    const bool gguf = fd >= 0 && ::read(fd, magic, 4) == 4 && std::string_view(magic, 4) == "GGUF";
    if (fd >= 0) ::close(fd);
    if (gguf) {
      for (const Layout* l : layouts()) {
        if (l->available() && l->detect(path, nullptr)) return *l;
      }
      find_layout("gguf");  // throws Unsupported while GGUF is not built
      throw FormatError("'" + path + "' starts like a GGUF file, which no layout reads");
    }
  }
  const SafetensorsCheckpoint st = SafetensorsCheckpoint::open(path);
  for (const Layout* l : layouts()) {
    if (l->available() && l->detect(path, &st)) return *l;
  }
  throw FormatError("checkpoint '" + path + "': no layout reads it");
}

LogicalCheckpoint read_checkpoint(const std::string& path, std::string_view layout, bool strict) {
  const Layout& l = layout.empty() ? detect_layout(path) : find_layout(layout);
  return l.read(path, strict);
}

}  // namespace mxfp4::io
