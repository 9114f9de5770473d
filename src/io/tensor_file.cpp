#include "io/tensor_file.hpp"

#include <array>
#include <filesystem>
#include <set>
#include <utility>

#include "mxfp4/io/checkpoint.hpp"
#include "mxfp4/io/layout.hpp"
#include "mxfp4/io/safetensors.hpp"

namespace mxfp4::detail {

const char* file_format_name(FileFormat format) {
  switch (format) {
    case FileFormat::auto_detect:
      return "auto";
    case FileFormat::safetensors:
      return "safetensors";
    case FileFormat::gguf:
      return "gguf";
    case FileFormat::uqff1:
      return "uqff1";
    case FileFormat::gptoss:
      return "gptoss";
    case FileFormat::uqff_legacy:
      return "uqff-legacy";
  }
  throw InvalidArgument("unknown file format " + std::to_string(static_cast<int>(format)));
}

namespace {
constexpr FileFormat kAllFormats[] = {FileFormat::auto_detect, FileFormat::safetensors,
                                      FileFormat::gguf,        FileFormat::uqff1,
                                      FileFormat::gptoss,      FileFormat::uqff_legacy};
}  // namespace

FileFormat parse_file_format(std::string_view name) {
  std::string known;
  for (FileFormat f : kAllFormats) {
    if (name == file_format_name(f)) return f;
    known += (known.empty() ? "" : ", ") + std::string(file_format_name(f));
  }
  throw InvalidArgument("unknown file format '" + std::string(name) + "' (known: " + known + ")");
}

FileFormat file_format_from_int(std::int64_t value) {
  std::string known;
  for (FileFormat f : kAllFormats) {
    if (value == static_cast<int>(f)) return f;
    known += (known.empty() ? "" : ", ") + std::to_string(static_cast<int>(f)) + " " +
             file_format_name(f);
  }
  throw InvalidArgument("unknown file format " + std::to_string(value) + " (known: " + known + ")");
}

std::optional<std::size_t> TensorFileReader::find(std::string_view name) const {
  const auto& all = tensors();
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i].name == name) return i;
  }
  return std::nullopt;
}

namespace {

std::string weight_part_name(std::string_view prefix, const char* part) {
  return prefix.empty() ? std::string(part) : std::string(prefix) + "." + part;
}

class SafetensorsReader final : public TensorFileReader {
 public:
  explicit SafetensorsReader(io::SafetensorsFile file) : file_(std::move(file)) {
    for (const io::SafetensorsEntry& e : file_.entries()) {
      tensors_.push_back(
          {e.name, e.dtype, io::dtype_from_safetensors(e.dtype), e.shape, e.end - e.begin});
    }
    // Only well-formed pairs are listed; load_weight reports what is wrong with the others.
    for (const io::Mxfp4Pair& p : io::find_mxfp4_pairs(file_).pairs) {
      std::string prefix = p.prefix;
      if (!prefix.empty()) prefix.pop_back();  // the trailing dot
      weight_names_.push_back(std::move(prefix));
    }
  }

  const std::string& source() const override { return file_.source(); }
  FileFormat format() const override { return FileFormat::safetensors; }
  const std::vector<StoredTensorInfo>& tensors() const override { return tensors_; }
  const std::map<std::string, std::string>& metadata() const override { return file_.metadata(); }
  const std::vector<std::string>& weight_names() const override { return weight_names_; }

  Tensor read(std::string_view name) const override {
    if (file_.find(name) == nullptr) {
      throw InvalidArgument("file '" + file_.source() + "' has no tensor '" + std::string(name) +
                            "'");
    }
    return file_.tensor(name);
  }

  Mxfp4Weight load_weight(std::string_view prefix, Device device) const override {
    const std::string blocks = weight_part_name(prefix, "blocks");
    const std::string scales = weight_part_name(prefix, "scales");
    const std::string bias = weight_part_name(prefix, "bias");
    if (file_.find(blocks) == nullptr || file_.find(scales) == nullptr) {
      throw InvalidArgument("file '" + file_.source() + "' has no MXFP4 weight '" +
                            std::string(prefix) + "' (it needs tensors '" + blocks + "' and '" +
                            scales + "')");
    }
    std::optional<Tensor> b;
    if (file_.find(bias) != nullptr) b = file_.tensor(bias).to(device);
    try {
      return Mxfp4Weight::from_parts(file_.tensor(blocks).to(device),
                                     file_.tensor(scales).to(device), std::move(b));
    } catch (const ShapeMismatch& e) {
      throw FormatError("file '" + file_.source() + "', weight '" + std::string(prefix) +
                        "': " + e.what());
    } catch (const DTypeMismatch& e) {
      throw FormatError("file '" + file_.source() + "', weight '" + std::string(prefix) +
                        "': " + e.what());
    }
  }

 private:
  io::SafetensorsFile file_;
  std::vector<StoredTensorInfo> tensors_;
  std::vector<std::string> weight_names_;
};

// Any format the layout layer reads, seen through the linear names: every MXFP4 weight P is
// listed as P.blocks, P.scales (and P.bias), whatever the file calls its parts.
class LayoutReader final : public TensorFileReader {
 public:
  LayoutReader(io::LogicalCheckpoint checkpoint, FileFormat format)
      : checkpoint_(std::move(checkpoint)), format_(format) {
    for (std::size_t i = 0; i < checkpoint_.tensors.size(); ++i) {
      const io::LogicalTensor& t = checkpoint_.tensors[i];
      if (!t.is_mxfp4()) {
        const int bits = io::safetensors_dtype_bits(t.dtype);
        const auto numel = static_cast<std::uint64_t>(shape_numel(t.shape));
        add(t.name, t.dtype, t.shape, numel * static_cast<std::uint64_t>(bits) / 8, i, Part::dense);
        continue;
      }
      weight_names_.push_back(t.name);
      Shape lead;
      if (t.experts > 0) lead.push_back(t.experts);
      lead.push_back(t.n);
      Shape blocks = lead;
      blocks.push_back(t.k / 2);
      Shape scales = lead;
      scales.push_back(t.k / 32);
      add(weight_part_name(t.name, "blocks"), "U8", blocks,
          static_cast<std::uint64_t>(shape_numel(blocks)), i, Part::blocks);
      add(weight_part_name(t.name, "scales"), "U8", scales,
          static_cast<std::uint64_t>(shape_numel(scales)), i, Part::scales);
      if (t.has_bias()) {
        const int bits = io::safetensors_dtype_bits(t.bias_dtype);
        add(weight_part_name(t.name, "bias"), t.bias_dtype, lead,
            static_cast<std::uint64_t>(shape_numel(lead)) * static_cast<std::uint64_t>(bits) / 8, i,
            Part::bias);
      }
    }
  }

  const std::string& source() const override { return checkpoint_.source; }
  FileFormat format() const override { return format_; }
  const std::vector<StoredTensorInfo>& tensors() const override { return tensors_; }
  const std::map<std::string, std::string>& metadata() const override {
    return checkpoint_.metadata;
  }
  const std::vector<std::string>& weight_names() const override { return weight_names_; }

  Tensor read(std::string_view name) const override {
    const auto it = parts_.find(std::string(name));
    if (it == parts_.end()) {
      throw InvalidArgument("file '" + source() + "' has no tensor '" + std::string(name) + "'");
    }
    const io::LogicalTensor& t = checkpoint_.tensors[it->second.index];
    if (it->second.part != Part::dense) {
      const Mxfp4Weight w = t.weight();
      if (it->second.part == Part::blocks) return w.blocks();
      if (it->second.part == Part::scales) return w.scales();
      return *w.bias();
    }
    const std::optional<DType> dtype = io::dtype_from_safetensors(t.dtype);
    if (!dtype) {
      throw DTypeMismatch("file '" + source() + "': tensor '" + t.name + "' has dtype " + t.dtype +
                          ", which this library has no DType for");
    }
    io::TensorBytes b = t.bytes();
    return Tensor::view(b.data.data(), t.shape, *dtype, std::move(b.keep_alive));
  }

  Mxfp4Weight load_weight(std::string_view prefix, Device device) const override {
    const io::LogicalTensor* t = checkpoint_.find(prefix);
    if (t == nullptr || !t->is_mxfp4()) {
      throw InvalidArgument("file '" + source() + "' has no MXFP4 weight '" + std::string(prefix) +
                            "'");
    }
    const Mxfp4Weight w = t->weight();
    if (device == Device::cpu()) return w;
    return w.to(device);
  }

 private:
  enum class Part : std::uint8_t { dense, blocks, scales, bias };
  struct PartRef {
    std::size_t index;
    Part part;
  };

  void add(std::string name, const std::string& file_dtype, const Shape& shape,
           std::uint64_t nbytes, std::size_t index, Part part) {
    if (!parts_.emplace(name, PartRef{index, part}).second) {
      throw FormatError("file '" + source() + "': tensor name '" + name +
                        "' appears twice in its linear view (a dense tensor is named like an "
                        "MXFP4 weight's part)");
    }
    tensors_.push_back(
        {std::move(name), file_dtype, io::dtype_from_safetensors(file_dtype), shape, nbytes});
  }

  io::LogicalCheckpoint checkpoint_;
  FileFormat format_;
  std::vector<StoredTensorInfo> tensors_;
  std::vector<std::string> weight_names_;
  std::map<std::string, PartRef> parts_;
};

// The layout-layer name of a format other than safetensors: the format's own name.
std::string_view layout_of(FileFormat format) {
  if (format == FileFormat::auto_detect || format == FileFormat::safetensors) {
    throw InvalidArgument("unknown file format " + std::to_string(static_cast<int>(format)));
  }
  return file_format_name(format);
}

FileFormat format_of_layout(std::string_view layout) {
  for (FileFormat f :
       {FileFormat::gguf, FileFormat::uqff1, FileFormat::gptoss, FileFormat::uqff_legacy}) {
    if (layout_of(f) == layout) return f;
  }
  return FileFormat::safetensors;  // linear
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::unique_ptr<TensorFileReader> open_tensor_file(const std::string& path, FileFormat format) {
  switch (format) {
    case FileFormat::auto_detect: {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(path, ec)) {
        // Only files: let the safetensors reader name what is wrong with the path.
        return std::make_unique<SafetensorsReader>(io::SafetensorsFile::open(path));
      }
      // GGUF and UQFF 1.x by content. GPT-OSS and legacy UQFF files are safetensors files too
      // and stay readable as such (their tensors under the file's own names); name the format
      // to see their weights.
      const io::Layout& layout = io::detect_layout(path);
      const FileFormat detected = format_of_layout(layout.name());
      if (detected != FileFormat::gguf && detected != FileFormat::uqff1) {
        return std::make_unique<SafetensorsReader>(io::SafetensorsFile::open(path));
      }
      return std::make_unique<LayoutReader>(layout.read(path, true), detected);
    }
    case FileFormat::safetensors:
      return std::make_unique<SafetensorsReader>(io::SafetensorsFile::open(path));
    case FileFormat::gguf:
    case FileFormat::uqff1:
    case FileFormat::gptoss:
    case FileFormat::uqff_legacy: {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(path, ec)) {
        throw IoError("open: '" + path + "' does not exist or is not a regular file");
      }
      return std::make_unique<LayoutReader>(io::find_layout(layout_of(format)).read(path, true),
                                            format);
    }
  }
  throw InvalidArgument("open: unknown file format " + std::to_string(static_cast<int>(format)));
}

void append_weight(std::vector<NamedTensor>& out, std::string_view prefix,
                   const Mxfp4Weight& given) {
  if (!given.defined()) throw InvalidArgument("append_weight: weight is empty");
  const Mxfp4Weight weight = given.with_layout(BlockLayout::standard);  // what files hold
  out.push_back({weight_part_name(prefix, "blocks"), weight.blocks()});
  out.push_back({weight_part_name(prefix, "scales"), weight.scales()});
  if (weight.bias()) out.push_back({weight_part_name(prefix, "bias"), *weight.bias()});
}

namespace {

// Writes `tensors` (unique, non-empty names, CPU copies in `host`) through the layout `format`:
// P.blocks + P.scales (u8) with P.bias become one MXFP4 weight, the rest dense tensors.
std::uint64_t save_through_layout(const std::string& path, FileFormat format,
                                  const std::vector<NamedTensor>& tensors,
                                  const std::vector<Tensor>& host,
                                  const std::map<std::string, std::string>& metadata) {
  std::map<std::string, std::size_t> by_name;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    by_name.emplace(tensors[i].name, i);
  const auto find = [&](const std::string& name) -> const Tensor* {
    const auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : &host[it->second];
  };
  // The prefix P of a P.blocks (or bare "blocks") name, if `name` is one.
  const auto blocks_prefix = [](const std::string& name) -> std::optional<std::string> {
    if (name == "blocks") return std::string();
    if (ends_with(name, ".blocks")) return name.substr(0, name.size() - 7);
    return std::nullopt;
  };

  io::LogicalCheckpoint c;
  c.source = path;
  c.metadata = metadata;
  std::set<std::string> parts;  // names consumed by a weight
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::optional<std::string> p = blocks_prefix(tensors[i].name);
    if (!p) continue;
    const Tensor* scales = find(weight_part_name(*p, "scales"));
    if (scales == nullptr || host[i].dtype() != DType::u8 || scales->dtype() != DType::u8) {
      continue;
    }
    std::optional<Tensor> bias;
    if (const Tensor* b = find(weight_part_name(*p, "bias"))) bias = *b;
    Mxfp4Weight w;
    try {
      w = Mxfp4Weight::from_parts(host[i], *scales, bias);
    } catch (const Error& e) {
      throw InvalidArgument("save '" + path + "': tensors '" + tensors[i].name + "' and '" +
                            weight_part_name(*p, "scales") +
                            "' do not form an MXFP4 weight: " + e.what());
    }
    io::LogicalTensor t;
    t.kind = io::LogicalTensor::Kind::mxfp4;
    t.name = *p;
    const Shape& ws = w.blocks().shape();
    t.experts = ws.size() == 3 ? ws[0] : 0;
    t.n = ws[ws.size() - 2];
    t.k = ws.back() * 2;
    if (w.bias()) t.bias_dtype = std::string(io::safetensors_dtype_name(w.bias()->dtype()));
    t.weight = [w] { return w; };
    c.tensors.push_back(std::move(t));
    parts.insert(tensors[i].name);
    parts.insert(weight_part_name(*p, "scales"));
    if (bias) parts.insert(weight_part_name(*p, "bias"));
  }
  // Dense tensors after the weights would reorder the file; keep the caller's order instead.
  std::vector<io::LogicalTensor> ordered;
  std::size_t next_weight = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (blocks_prefix(tensors[i].name) && parts.count(tensors[i].name) != 0) {
      ordered.push_back(std::move(c.tensors[next_weight++]));
      continue;
    }
    if (parts.count(tensors[i].name) != 0) continue;
    io::LogicalTensor t;
    t.name = tensors[i].name;
    t.dtype = std::string(io::safetensors_dtype_name(host[i].dtype()));
    t.shape = host[i].shape();
    const Tensor tensor = host[i];
    t.bytes = [tensor] { return io::tensor_bytes(tensor); };
    ordered.push_back(std::move(t));
  }
  c.tensors = std::move(ordered);
  const io::Layout& layout = io::find_layout(layout_of(format));
  return layout.write(c, path).bytes;
}

}  // namespace

std::uint64_t save_tensor_file(const std::string& path, FileFormat format,
                               const std::vector<NamedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  if (format == FileFormat::auto_detect) {
    if (ends_with(path, ".safetensors")) {
      format = FileFormat::safetensors;
    } else if (ends_with(path, ".gguf")) {
      format = FileFormat::gguf;
    } else if (ends_with(path, ".uqff")) {
      format = FileFormat::uqff1;
    } else {
      throw InvalidArgument("save: cannot tell the format of '" + path +
                            "' from its extension (known: .safetensors, .gguf, .uqff); name the "
                            "format");
    }
  }
  (void)file_format_name(format);  // InvalidArgument for a value outside the enum
  std::set<std::string_view> seen;
  std::vector<Tensor> host;  // keeps host copies alive while the items view them
  host.reserve(tensors.size());
  std::vector<io::SafetensorsItem> items;
  items.reserve(tensors.size());
  for (const NamedTensor& t : tensors) {
    if (t.name.empty()) throw InvalidArgument("save '" + path + "': a tensor has an empty name");
    if (!seen.insert(t.name).second) {
      throw InvalidArgument("save '" + path + "': tensor name '" + t.name + "' appears twice");
    }
    if (!t.tensor.defined()) {
      throw InvalidArgument("save '" + path + "': tensor '" + t.name + "' is undefined");
    }
    host.push_back(t.tensor.device() == Device::cpu() ? t.tensor : t.tensor.to(Device::cpu()));
    if (format == FileFormat::safetensors) {
      items.push_back(io::safetensors_item(t.name, host.back()));
    }
  }
  if (format != FileFormat::safetensors) {
    return save_through_layout(path, format, tensors, host, metadata);
  }
  return io::write_safetensors(path, items, metadata);
}

}  // namespace mxfp4::detail
