#include "io/tensor_file.hpp"

#include <array>
#include <fstream>
#include <set>
#include <utility>

#include "mxfp4/io/checkpoint.hpp"
#include "mxfp4/io/safetensors.hpp"

namespace mxfp4::detail {

const char* file_format_name(FileFormat format) {
  switch (format) {
    case FileFormat::auto_detect:
      return "auto";
    case FileFormat::safetensors:
      return "safetensors";
  }
  throw InvalidArgument("unknown file format " + std::to_string(static_cast<int>(format)));
}

FileFormat parse_file_format(std::string_view name) {
  if (name == "auto") return FileFormat::auto_detect;
  if (name == "safetensors") return FileFormat::safetensors;
  throw InvalidArgument("unknown file format '" + std::string(name) +
                        "' (known: auto, safetensors)");
}

FileFormat file_format_from_int(std::int64_t value) {
  if (value == static_cast<int>(FileFormat::auto_detect)) return FileFormat::auto_detect;
  if (value == static_cast<int>(FileFormat::safetensors)) return FileFormat::safetensors;
  throw InvalidArgument("unknown file format " + std::to_string(value) +
                        " (known: 0 auto, 1 safetensors)");
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

// Formats this build recognises by their first bytes but cannot read yet.
void refuse_known_unsupported(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::array<char, 4> magic{};
  if (!in.read(magic.data(), magic.size())) return;  // let the reader report short files
  if (std::string_view(magic.data(), magic.size()) == "GGUF") {
    throw Unsupported("file '" + path + "' is GGUF, which this build cannot read yet");
  }
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::unique_ptr<TensorFileReader> open_tensor_file(const std::string& path, FileFormat format) {
  switch (format) {
    case FileFormat::auto_detect:
      refuse_known_unsupported(path);
      return std::make_unique<SafetensorsReader>(io::SafetensorsFile::open(path));
    case FileFormat::safetensors:
      return std::make_unique<SafetensorsReader>(io::SafetensorsFile::open(path));
  }
  throw InvalidArgument("open: unknown file format " + std::to_string(static_cast<int>(format)));
}

void append_weight(std::vector<NamedTensor>& out, std::string_view prefix,
                   const Mxfp4Weight& weight) {
  if (!weight.defined()) throw InvalidArgument("append_weight: weight is empty");
  out.push_back({weight_part_name(prefix, "blocks"), weight.blocks()});
  out.push_back({weight_part_name(prefix, "scales"), weight.scales()});
  if (weight.bias()) out.push_back({weight_part_name(prefix, "bias"), *weight.bias()});
}

std::uint64_t save_tensor_file(const std::string& path, FileFormat format,
                               const std::vector<NamedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  if (format == FileFormat::auto_detect) {
    if (!ends_with(path, ".safetensors")) {
      throw InvalidArgument("save: cannot tell the format of '" + path +
                            "' from its extension (known: .safetensors); name the format");
    }
    format = FileFormat::safetensors;
  }
  if (format != FileFormat::safetensors) {
    throw InvalidArgument("save: unknown file format " + std::to_string(static_cast<int>(format)));
  }
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
    items.push_back(io::safetensors_item(t.name, host.back()));
  }
  return io::write_safetensors(path, items, metadata);
}

}  // namespace mxfp4::detail
