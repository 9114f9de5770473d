// The layouts built on the UQFF and GGUF codecs (uqff.hpp, gguf.hpp): how a logical checkpoint
// maps onto them.
//   uqff1        safetensors: uqff.version.{major,minor,patch} U32 scalars first, then per MXFP4
//                weight P: P.weight.format (U8 scalar 6), P.weight (blocks), P.weight.scales,
//                P.bias; dense tensors are kept under their names (UQFF readers ignore them).
//   uqff-legacy  safetensors of 1-D U8 UQFF 0.2.0 blobs named "0", "1", ...: MXFP4 weights only.
//                The weights' names are kept in __metadata__["mxfp4.layer_names"] (a JSON array),
//                so that converting back restores them; without it the names are the indices.
//   gguf         GGUF v3: P.weight as GGML_TYPE_MXFP4 (split-half blocks), P.bias and dense
//                tensors as F32/F16/BF16/I8/I16/I32/I64/F64; string metadata as string keys.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "io/layout_internal.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/io/gguf.hpp"
#include "mxfp4/io/uqff.hpp"

namespace mxfp4::io::detail {

namespace {

constexpr std::string_view kLayerNamesKey = "mxfp4.layer_names";

Shape with_last(Shape s, std::int64_t last) {
  s.push_back(last);
  return s;
}

// The one safetensors file of a checkpoint these single-file layouts read.
std::shared_ptr<SafetensorsCheckpoint> open_single(const std::string& path,
                                                   std::string_view layout) {
  auto st = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::open(path));
  if (st->sharded()) {
    throw Unsupported("checkpoint '" + path + "': sharded " + std::string(layout) +
                      " checkpoints are not supported; give one file");
  }
  return st;
}

LogicalCheckpoint base_checkpoint(const std::string& path, std::string_view layout,
                                  const SafetensorsCheckpoint& st) {
  LogicalCheckpoint c;
  c.source = path;
  c.layout = std::string(layout);
  c.metadata = st.metadata();
  c.config = st.quantization_config();
  c.folder = st.folder();
  c.source_bytes = st.total_bytes();
  return c;
}

LogicalTensor mxfp4_from(std::string name, const Mxfp4Weight& w,
                         std::function<Mxfp4Weight()> produce) {
  LogicalTensor t;
  t.kind = LogicalTensor::Kind::mxfp4;
  t.name = std::move(name);
  t.experts = w.stacked() ? w.num_experts() : 0;
  t.n = w.out_features();
  t.k = w.in_features();
  if (w.bias()) t.bias_dtype = std::string(safetensors_dtype_name(w.bias()->dtype()));
  t.weight = std::move(produce);
  return t;
}

void refuse_shards(const LayoutWriteOptions& options, std::string_view layout) {
  if (options.max_shard_bytes != 0) {
    throw InvalidArgument("layout " + std::string(layout) +
                          " writes one file; --max-shard-size is not supported for it");
  }
}

// ---- uqff1 --------------------------------------------------------------------------------------

class Uqff1Layout final : public Layout {
 public:
  std::string_view name() const override { return "uqff1"; }
  std::string_view description() const override {
    return "mistral.rs UQFF 1.x: P.weight.format, P.weight, P.weight.scales, P.bias";
  }
  bool detect(const std::string&, const SafetensorsCheckpoint* st) const override {
    return st != nullptr && st->find("uqff.version.major").entry != nullptr;
  }

  LogicalCheckpoint read(const std::string& path, bool) const override {
    auto st = open_single(path, name());
    // The layers' weights view the mapped file (no copy), so holding them costs no memory.
    const auto contents = std::make_shared<Uqff1Contents>(read_uqff1(st->shards().front()));
    LogicalCheckpoint c = base_checkpoint(path, name(), *st);
    c.keep_alive = st;
    std::map<std::string, const Uqff1Layer*> by_weight;  // P.weight -> layer
    std::set<std::string> owned = {"uqff.version.major", "uqff.version.minor",
                                   "uqff.version.patch"};
    for (const Uqff1Layer& l : contents->layers) {
      by_weight.emplace(l.prefix + ".weight", &l);
      owned.insert({l.prefix + ".weight.format", l.prefix + ".weight.scales"});
      if (l.weight.bias()) owned.insert(l.prefix + ".bias");
    }
    for (const auto& ref : st->entries()) {
      const SafetensorsEntry& e = *ref.entry;
      if (const auto it = by_weight.find(e.name); it != by_weight.end()) {
        const std::string p = it->second->prefix;
        const Uqff1Layer* layer = it->second;
        LogicalTensor t =
            mxfp4_from(p, layer->weight, [st, contents, layer] { return layer->weight; });
        t.source_names = {p + ".weight", p + ".weight.scales"};
        if (t.has_bias()) t.source_names.push_back(p + ".bias");
        c.tensors.push_back(std::move(t));
      } else if (owned.count(e.name) == 0) {
        c.tensors.push_back(dense_from(st, e));
      }
    }
    return c;
  }

  std::vector<std::vector<std::string>> output_names(const LogicalCheckpoint& c) const override {
    std::vector<std::vector<std::string>> names;
    for (const LogicalTensor& t : c.tensors) {
      if (!t.is_mxfp4()) {
        names.push_back({t.name});
        continue;
      }
      std::vector<std::string> n = {t.name + ".weight.format", t.name + ".weight",
                                    t.name + ".weight.scales"};
      if (t.has_bias()) n.push_back(t.name + ".bias");
      names.push_back(std::move(n));
    }
    return names;
  }

  LayoutWriteResult write(const LogicalCheckpoint& c, const std::string& out,
                          const LayoutWriteOptions& options) const override {
    refuse_shards(options, name());
    LayoutWriteResult result;
    result.names = output_names(c);
    std::vector<StreamedTensor> physical;
    for (const SafetensorsItem& item : uqff1_version_items()) {
      const auto data = item.data;  // static storage
      physical.push_back({{item.name, item.dtype, item.shape}, [data] {
                            return TensorBytes{data, nullptr};
                          }});
    }
    for (std::size_t i = 0; i < c.tensors.size(); ++i) {
      const LogicalTensor& t = c.tensors[i];
      const auto notify = tensor_notifier(options, i);
      if (!t.is_mxfp4()) {
        physical.push_back(dense_streamed(t, notify));
        continue;
      }
      auto w = std::make_shared<SharedWeight>(t);
      const Shape lead = lead_shape(t);
      const std::vector<SafetensorsTensorInfo> infos = {
          {t.name + ".weight.format", "U8", {}},
          {t.name + ".weight", "U8", with_last(lead, t.k / 2)},
          {t.name + ".weight.scales", "U8", with_last(lead, t.k / kBlockSize)},
          {t.name + ".bias", t.bias_dtype, lead}};
      const std::size_t parts = t.has_bias() ? 4 : 3;
      for (std::size_t k = 0; k < parts; ++k) {
        physical.push_back({infos[k], [w, k, parts, notify, prefix = t.name] {
                              if (k == 0) notify();
                              // The codec's own encoding of each part (format byte included).
                              const Mxfp4Weight& weight = w->get();
                              const auto items = uqff1_layer_items(prefix, weight);
                              TensorBytes b{items.at(k).data, nullptr};
                              if (k == 0) return b;  // static storage
                              b.keep_alive = std::make_shared<Mxfp4Weight>(weight);
                              if (k + 1 == parts) w->release();
                              return b;
                            }});
      }
    }
    const CheckpointWriteResult r = write_checkpoint(out, physical, c.metadata);
    result.files = r.files;
    result.bytes = r.bytes;
    return result;
  }
};

// ---- uqff-legacy --------------------------------------------------------------------------------

bool is_index_name(std::string_view s) {
  if (s.empty() || s.size() > 18 || (s.size() > 1 && s[0] == '0')) return false;
  return std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

class UqffLegacyLayout final : public Layout {
 public:
  std::string_view name() const override { return "uqff-legacy"; }
  std::string_view description() const override {
    return "mistral.rs UQFF 0.2.0 blobs in a .uqff file (MXFP4 weights only)";
  }
  bool detect(const std::string&, const SafetensorsCheckpoint* st) const override {
    if (st == nullptr || st->sharded() || st->entries().empty()) return false;
    for (const auto& r : st->entries()) {
      if (!is_index_name(r.entry->name) || r.entry->dtype != "U8" || r.entry->shape.size() != 1) {
        return false;
      }
    }
    return true;
  }

  LogicalCheckpoint read(const std::string& path, bool) const override {
    auto st = open_single(path, name());
    const SafetensorsFile& file = st->shards().front();
    const std::string prefix = "legacy UQFF file '" + path + "': ";
    // Validate every blob (views only) and order the layers by index.
    std::vector<std::pair<std::size_t, const SafetensorsEntry*>> blobs;
    for (const SafetensorsEntry& e : file.entries()) {
      if (!is_index_name(e.name)) {
        throw FormatError(prefix + "tensor '" + e.name +
                          "': the name is not a layer index (a decimal number, no leading zeros)");
      }
      if (e.dtype != "U8" || e.shape.size() != 1) {
        throw FormatError(prefix + "tensor '" + e.name + "': a blob must be 1-D U8, got " +
                          e.dtype + " " + to_string(e.shape));
      }
      blobs.emplace_back(std::stoull(e.name), &e);
    }
    std::sort(blobs.begin(), blobs.end());
    std::vector<std::string> names;
    if (const auto it = file.metadata().find(std::string(kLayerNamesKey));
        it != file.metadata().end()) {
      try {
        const auto j = nlohmann::json::parse(it->second);
        for (const auto& v : j)
          names.push_back(v.get<std::string>());
      } catch (const nlohmann::json::exception& e) {
        throw FormatError(prefix + "__metadata__['" + std::string(kLayerNamesKey) +
                          "'] is not a JSON array of strings: " + e.what());
      }
      if (names.size() != blobs.size()) {
        throw FormatError(prefix + "__metadata__['" + std::string(kLayerNamesKey) + "'] names " +
                          std::to_string(names.size()) + " layers, the file holds " +
                          std::to_string(blobs.size()));
      }
    }
    LogicalCheckpoint c = base_checkpoint(path, name(), *st);
    c.metadata.erase(std::string(kLayerNamesKey));
    c.keep_alive = st;
    for (std::size_t i = 0; i < blobs.size(); ++i) {
      const SafetensorsEntry& e = *blobs[i].second;
      const std::string source = path + "' tensor '" + e.name;
      const Mxfp4Weight probe = deserialize_uqff_blob(file.bytes(e), source);
      const std::string blob = e.name;
      LogicalTensor t = mxfp4_from(names.empty() ? e.name : names[i], probe, [st, blob, source] {
        const SafetensorsFile& f = st->shards().front();
        return deserialize_uqff_blob(f.bytes(*f.find(blob)), source);
      });
      t.source_names = {e.name};
      c.tensors.push_back(std::move(t));
    }
    return c;
  }

  std::vector<std::vector<std::string>> output_names(const LogicalCheckpoint& c) const override {
    std::vector<std::vector<std::string>> names;
    std::size_t index = 0;
    for (const LogicalTensor& t : c.tensors) {
      names.push_back({t.is_mxfp4() ? std::to_string(index++) : t.name});
    }
    return names;
  }

  LayoutWriteResult write(const LogicalCheckpoint& c, const std::string& out,
                          const LayoutWriteOptions& options) const override {
    refuse_shards(options, name());
    std::size_t dense = 0;
    const LogicalTensor* first_dense = nullptr;
    for (const LogicalTensor& t : c.tensors) {
      if (!t.is_mxfp4()) {
        ++dense;
        if (first_dense == nullptr) first_dense = &t;
      }
    }
    if (first_dense != nullptr) {
      throw InvalidArgument(
          "layout uqff-legacy holds MXFP4 weights only, but '" + c.source + "' has " +
          std::to_string(dense) + " other tensors (e.g. '" + first_dense->name +
          "'); they would be lost (use --include to quantize only what the file should hold, or "
          "another layout)");
    }
    LayoutWriteResult result;
    result.names = output_names(c);
    std::vector<StreamedTensor> physical;
    nlohmann::json names = nlohmann::json::array();
    for (std::size_t i = 0; i < c.tensors.size(); ++i) {
      const LogicalTensor& t = c.tensors[i];
      names.push_back(t.name);
      // The blob's size: header, then blocks, scales and bias, each with its 12 + 4*ndims bytes.
      const Shape lead = lead_shape(t);
      const auto rank = static_cast<std::int64_t>(lead.size() + 1);
      const std::int64_t rows = shape_numel(lead);
      std::int64_t size = 6 + 2 * (12 + 4 * rank) + rows * (t.k / 2 + t.k / kBlockSize);
      if (t.has_bias()) {
        size += 12 + 4 * (rank - 1) + rows * (safetensors_dtype_bits(t.bias_dtype) / 8);
      }
      physical.push_back({{result.names[i][0], "U8", {size}}, [&t, &options, i] {
                            if (options.on_tensor) options.on_tensor(i);
                            auto blob = std::make_shared<std::vector<std::uint8_t>>(
                                serialize_uqff_blob(t.weight()));
                            return TensorBytes{*blob, blob};
                          }});
    }
    std::map<std::string, std::string> metadata = c.metadata;
    metadata[std::string(kLayerNamesKey)] = names.dump();
    const CheckpointWriteResult r = write_checkpoint(out, physical, metadata);
    result.files = r.files;
    result.bytes = r.bytes;
    return result;
  }
};

// ---- gguf ---------------------------------------------------------------------------------------

struct GgufDense {
  std::string_view dtype;
  GgmlType type;
};
constexpr GgufDense kGgufDense[] = {
    {"F32", GgmlType::f32}, {"F16", GgmlType::f16}, {"BF16", GgmlType::bf16},
    {"I8", GgmlType::i8},   {"I16", GgmlType::i16}, {"I32", GgmlType::i32},
    {"I64", GgmlType::i64}, {"F64", GgmlType::f64},
};

std::optional<GgmlType> ggml_type_of(std::string_view dtype) {
  for (const auto& d : kGgufDense) {
    if (d.dtype == dtype) return d.type;
  }
  return std::nullopt;
}

std::optional<std::string_view> dtype_of(GgmlType type) {
  for (const auto& d : kGgufDense) {
    if (d.type == type) return d.dtype;
  }
  return std::nullopt;
}

// GGUF tensor name of an MXFP4 weight and its bias.
std::string gguf_weight_name(const std::string& p) {
  return p.empty() ? "weight" : p + ".weight";
}
std::string gguf_bias_name(const std::string& p) {
  return p.empty() ? "bias" : p + ".bias";
}

class GgufLayout final : public Layout {
 public:
  std::string_view name() const override { return "gguf"; }
  std::string_view description() const override {
    return "llama.cpp GGUF v3: P.weight as MXFP4 (type 39), dense tensors as F32/F16/BF16/...";
  }
  bool detect(const std::string&, const SafetensorsCheckpoint* st) const override {
    return st == nullptr;  // detect_layout asks only for files that start with "GGUF"
  }

  LogicalCheckpoint read(const std::string& path, bool) const override {
    auto g = std::make_shared<GgufFile>(GgufFile::open(path));
    const std::string prefix = "GGUF file '" + path + "': ";
    LogicalCheckpoint c;
    c.source = path;
    c.layout = std::string(name());
    c.source_bytes = g->file_size();
    c.keep_alive = g;
    c.folder = std::filesystem::path(path).parent_path().string();
    for (const auto& [key, value] : g->metadata()) {
      if (key == "general.alignment") continue;
      if (const std::string* s = value.get_if<std::string>()) c.metadata[key] = *s;
    }
    std::set<std::string> attached;
    for (const GgufTensorInfo& info : g->tensors()) {
      if (info.type != GgmlType::mxfp4) continue;
      const std::string p = info.name.ends_with(".weight")
                                ? info.name.substr(0, info.name.size() - 7)
                                : (info.name == "weight" ? "" : info.name);
      if (gguf_weight_name(p) != info.name) {
        throw FormatError(prefix + "MXFP4 tensor '" + info.name +
                          "' is not named P.weight, the only MXFP4 naming convert carries");
      }
      const Shape shape = info.shape();
      if (shape.size() != 2 && shape.size() != 3) {
        throw FormatError(prefix + "MXFP4 tensor '" + info.name + "' has shape " +
                          to_string(shape) + "; only [N, K] and [E, N, K] are weights");
      }
      const Shape lead(shape.begin(), shape.end() - 1);
      if (const GgufTensorInfo* b = g->find(gguf_bias_name(p));
          b != nullptr && b->shape() == lead &&
          (b->type == GgmlType::f32 || b->type == GgmlType::f16 || b->type == GgmlType::bf16)) {
        attached.insert(b->name);
      }
    }
    for (const GgufTensorInfo& info : g->tensors()) {
      if (attached.count(info.name) != 0) continue;
      if (info.type == GgmlType::mxfp4) {
        const std::string p =
            info.name == "weight" ? "" : info.name.substr(0, info.name.size() - 7);
        const std::string weight_name = info.name;
        const std::string bias_name = gguf_bias_name(p);
        const bool has_bias = attached.count(bias_name) != 0;
        LogicalTensor t;
        t.kind = LogicalTensor::Kind::mxfp4;
        t.name = p;
        const Shape shape = info.shape();
        t.experts = shape.size() == 3 ? shape[0] : 0;
        t.n = shape[shape.size() - 2];
        t.k = shape.back();
        if (has_bias) t.bias_dtype = std::string(*dtype_of(g->find(bias_name)->type));
        t.weight = [g, weight_name, bias_name, has_bias] {
          return has_bias ? g->mxfp4_weight(weight_name, bias_name) : g->mxfp4_weight(weight_name);
        };
        t.source_names = {weight_name};
        if (has_bias) t.source_names.push_back(bias_name);
        c.tensors.push_back(std::move(t));
        continue;
      }
      const auto dtype = dtype_of(info.type);
      if (!dtype) {
        throw FormatError(prefix + "tensor '" + info.name + "' is " +
                          std::string(ggml_type_name(info.type)) +
                          ", which has no safetensors dtype (convert carries F32, F16, BF16, I8, "
                          "I16, I32, I64, F64 and MXFP4 tensors)");
      }
      LogicalTensor t;
      t.name = info.name;
      t.dtype = std::string(*dtype);
      t.shape = info.shape();
      const std::string tensor_name = info.name;
      t.bytes = [g, tensor_name] { return TensorBytes{g->bytes(*g->find(tensor_name)), g}; };
      c.tensors.push_back(std::move(t));
    }
    return c;
  }

  std::vector<std::vector<std::string>> output_names(const LogicalCheckpoint& c) const override {
    std::vector<std::vector<std::string>> names;
    for (const LogicalTensor& t : c.tensors) {
      if (!t.is_mxfp4()) {
        names.push_back({t.name});
      } else if (t.has_bias()) {
        names.push_back({gguf_weight_name(t.name), gguf_bias_name(t.name)});
      } else {
        names.push_back({gguf_weight_name(t.name)});
      }
    }
    return names;
  }

  // Streams: each tensor's bytes are produced when GGUF's writer reaches it.
  LayoutWriteResult write(const LogicalCheckpoint& c, const std::string& out,
                          const LayoutWriteOptions& options) const override {
    refuse_shards(options, name());
    if (checkpoint_output_is_folder(out, 0)) {
      throw InvalidArgument("layout gguf writes one file; '" + out + "' is a folder");
    }
    LayoutWriteResult result;
    result.names = output_names(c);
    // Check every dtype before producing anything.
    for (const LogicalTensor& t : c.tensors) {
      const std::string& d = t.is_mxfp4() ? t.bias_dtype : t.dtype;
      if (!d.empty() && !ggml_type_of(d)) {
        throw InvalidArgument("layout gguf: tensor '" + t.name + "' is " + d +
                              ", which GGUF has no type for (F32, F16, BF16, I8, I16, I32, I64, "
                              "F64 and MXFP4 only)");
      }
    }
    auto copy_into = [](std::span<std::uint8_t> dst, std::span<const std::uint8_t> src,
                        const std::string& what) {
      if (dst.size() != src.size()) {
        throw InvalidArgument("layout gguf: tensor '" + what + "' has " +
                              std::to_string(src.size()) + " bytes, GGUF expects " +
                              std::to_string(dst.size()));
      }
      if (!src.empty()) std::memcpy(dst.data(), src.data(), src.size());
    };
    std::vector<GgufTensorItem> items;
    for (std::size_t i = 0; i < c.tensors.size(); ++i) {
      const LogicalTensor& t = c.tensors[i];
      const auto notify = tensor_notifier(options, i);
      if (!t.is_mxfp4()) {
        GgufTensorItem item;
        item.name = t.name;
        item.type = *ggml_type_of(t.dtype);
        item.shape = t.shape;
        item.fill = [&t, notify, copy_into](std::span<std::uint8_t> dst) {
          notify();
          copy_into(dst, t.bytes().data, t.name);
        };
        items.push_back(std::move(item));
        continue;
      }
      auto w = std::make_shared<SharedWeight>(t);
      GgufTensorItem weight;
      weight.name = gguf_weight_name(t.name);
      weight.type = GgmlType::mxfp4;
      weight.shape = t.weight_shape();
      const bool bias = t.has_bias();
      weight.fill = [w, notify, bias](std::span<std::uint8_t> dst) {
        notify();
        const Mxfp4Weight& m = w->get();
        mxfp4_to_gguf_blocks(
            {static_cast<const std::uint8_t*>(m.blocks().data()), m.blocks().nbytes()},
            {static_cast<const std::uint8_t*>(m.scales().data()), m.scales().nbytes()}, dst);
        if (!bias) w->release();
      };
      items.push_back(std::move(weight));
      if (bias) {
        GgufTensorItem b;
        b.name = gguf_bias_name(t.name);
        b.type = *ggml_type_of(t.bias_dtype);
        b.shape = lead_shape(t);
        b.fill = [w, copy_into, name = b.name](std::span<std::uint8_t> dst) {
          copy_into(dst, tensor_bytes(*w->get().bias()).data, name);
          w->release();
        };
        items.push_back(std::move(b));
      }
    }
    GgufMetadata metadata;
    for (const auto& [k, v] : c.metadata)
      metadata.emplace_back(k, GgufValue(v));
    result.bytes = write_gguf(out, metadata, items);
    result.files = {out};
    return result;
  }
};

}  // namespace

const Layout& uqff1_layout() {
  static const Uqff1Layout layout;
  return layout;
}
const Layout& uqff_legacy_layout() {
  static const UqffLegacyLayout layout;
  return layout;
}
const Layout& gguf_layout() {
  static const GgufLayout layout;
  return layout;
}

}  // namespace mxfp4::io::detail
