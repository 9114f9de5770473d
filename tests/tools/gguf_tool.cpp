// Test-only driver of the GGUF codec for tests/python/test_gguf_client.py (llama.cpp's `gguf`
// package on the other side):
//   gguf_tool write OUT.gguf DIR   writes a GGUF file from a fixed recipe, and DIR/manifest.json
//                                  describing what it wrote (metadata with types, tensors with
//                                  ggml type and row-major shape) plus DIR/<tensor>.f32, each
//                                  tensor's values in f32 as this library decodes them.
//   gguf_tool read IN.gguf DIR     reads any GGUF file and writes the same manifest and .f32 files.
// Exit code 0 on success; an error prints one line on stderr and exits 1.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/io/gguf.hpp"
#include "mxfp4/mxfp4.hpp"

namespace {

using namespace mxfp4;
using namespace mxfp4::io;
using nlohmann::json;

json value_json(const GgufValue& v) {
  json out;
  out["type"] = std::string(gguf_value_type_name(v.type()));
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, GgufArray>) {
          out["element_type"] = std::string(gguf_value_type_name(x.element_type));
          json items = json::array();
          for (const GgufValue& item : x.items)
            items.push_back(value_json(item)["value"]);
          out["value"] = std::move(items);
        } else if constexpr (std::is_same_v<T, std::uint8_t> || std::is_same_v<T, std::uint16_t> ||
                             std::is_same_v<T, std::uint32_t> || std::is_same_v<T, std::uint64_t>) {
          out["value"] = static_cast<std::uint64_t>(x);
        } else if constexpr (std::is_same_v<T, std::int8_t> || std::is_same_v<T, std::int16_t> ||
                             std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t>) {
          out["value"] = static_cast<std::int64_t>(x);
        } else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
          out["value"] = static_cast<double>(x);
        } else {
          out["value"] = x;  // bool, string
        }
      },
      v.value);
  return out;
}

void write_f32(const std::string& path, const Tensor& t) {
  const Tensor f = t.to(DType::f32);
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(f.data()), static_cast<std::streamsize>(f.nbytes()));
  if (!out) throw IoError("cannot write " + path);
}

struct Entry {
  std::string name;
  GgmlType type;
  Shape shape;
  Tensor values;  // undefined for types without a decoding here
};

// DIR/manifest.json and DIR/<name>.f32.
void dump(const GgufMetadata& metadata, std::uint64_t alignment, const std::vector<Entry>& entries,
          const std::string& dir) {
  json manifest;
  manifest["alignment"] = alignment;
  json meta = json::object();
  for (const auto& [key, value] : metadata)
    meta[key] = value_json(value);
  manifest["metadata"] = std::move(meta);
  json tensors = json::array();
  for (const Entry& e : entries) {
    json entry;
    entry["name"] = e.name;
    entry["type"] = std::string(ggml_type_name(e.type));
    entry["shape"] = e.shape;
    if (e.values.defined()) {
      const std::string values = dir + "/" + e.name + ".f32";
      write_f32(values, e.values);
      entry["values"] = values;
    }
    tensors.push_back(std::move(entry));
  }
  manifest["tensors"] = std::move(tensors);
  std::ofstream out(dir + "/manifest.json");
  out << manifest.dump(2) << "\n";
  if (!out) throw IoError("cannot write " + dir + "/manifest.json");
}

// What this library reads from a GGUF file.
void read_file(const std::string& path, const std::string& dir) {
  const GgufFile file = GgufFile::open(path);
  std::vector<Entry> entries;
  for (const GgufTensorInfo& t : file.tensors()) {
    Entry e{t.name, t.type, t.shape(), {}};
    if (t.type == GgmlType::mxfp4) {
      e.values = file.mxfp4_weight(t.name).dequantize(DType::f32);
    } else if (t.type == GgmlType::f32 || t.type == GgmlType::f16 || t.type == GgmlType::bf16) {
      e.values = file.tensor(t.name);
    }
    entries.push_back(std::move(e));
  }
  dump(file.metadata(), file.alignment(), entries, dir);
}

std::vector<float> normal_values(std::int64_t n, std::uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v)
    x = dist(rng);
  return v;
}

// The fixed recipe: metadata of every scalar type and arrays, float tensors of each type, MXFP4
// weights (dense with bias, stacked experts) and one MXFP4 weight whose scale bytes sweep the
// E8M0 range from 0x00 to 0xFE (0xFF is left out: ggml decodes it as 2^128, the spec and this
// library as NaN).
void write_recipe(const std::string& path, const std::string& dir) {
  GgufMetadata meta = {
      {"general.architecture", "mxfp4-test"},
      {"general.name", "gguf_tool recipe"},
      {"general.alignment", std::uint32_t{64}},
      {"test.u8", std::uint8_t{250}},
      {"test.i8", std::int8_t{-7}},
      {"test.u16", std::uint16_t{65000}},
      {"test.i16", std::int16_t{-300}},
      {"test.u32", std::uint32_t{4000000000u}},
      {"test.i32", std::int32_t{-123456}},
      {"test.f32", 0.125f},
      {"test.bool", true},
      {"test.u64", std::uint64_t{1} << 40},
      {"test.i64", std::int64_t{-5}},
      {"test.f64", -2.5},
      {"test.string", "caf\xC3\xA9"},
      {"test.strings", GgufValue::array_of<std::string>(GgufValueType::string, {"a", "bc", ""})},
      {"test.i32s", GgufValue::array_of<std::int32_t>(GgufValueType::int32, {1, -2, 3})},
      {"test.f32s", GgufValue::array_of<float>(GgufValueType::float32, {0.5f, -1.0f})},
  };
  const Tensor f32 = Tensor::from_vector(normal_values(5 * 7, 1, 3.0f), {5, 7});
  const Tensor f16 =
      Tensor::from_vector(normal_values(4 * 3 * 2, 2, 3.0f), {4, 3, 2}).to(DType::f16);
  const Tensor bf16 = Tensor::from_vector(normal_values(9, 3, 3.0f), {9}).to(DType::bf16);
  const Mxfp4Weight dense =
      Mxfp4Weight::quantize(Tensor::from_vector(normal_values(6 * 64, 4, 2.0f), {6, 64}),
                            Tensor::from_vector(normal_values(6, 5, 1.0f), {6}));
  const Mxfp4Weight experts =
      Mxfp4Weight::quantize(Tensor::from_vector(normal_values(3 * 4 * 96, 6, 0.01f), {3, 4, 96}));
  // 16 rows of 8 blocks = 128 blocks: scale byte 2 * i for block i (0x00 .. 0xFE), random codes.
  std::vector<std::uint8_t> blocks(16 * 128), scales(16 * 8);
  std::mt19937 rng(7);
  for (auto& b : blocks)
    b = static_cast<std::uint8_t>(rng() & 0xFF);
  for (std::size_t i = 0; i < scales.size(); ++i)
    scales[i] = static_cast<std::uint8_t>(2 * i);
  const Mxfp4Weight edge = Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {16, 128}),
                                                   Tensor::from_vector(scales, {16, 8}));
  std::vector<GgufTensorItem> items = {gguf_item("plain.f32", f32),
                                       gguf_item("plain.f16", f16),
                                       gguf_item("plain.bf16", bf16),
                                       gguf_mxfp4_item("dense.weight", dense),
                                       gguf_item("dense.bias", *dense.bias()),
                                       gguf_mxfp4_item("experts.weight", experts),
                                       gguf_mxfp4_item("edge.weight", edge)};
  write_gguf(path, meta, items);
  // The manifest describes what was handed to the writer, not what reading the file back gives.
  const Tensor values[] = {
      f32, f16, bf16, dense.dequantize(), *dense.bias(), experts.dequantize(), edge.dequantize()};
  std::vector<Entry> entries;
  for (std::size_t i = 0; i < items.size(); ++i)
    entries.push_back({items[i].name, items[i].type, items[i].shape, values[i]});
  dump(meta, 64, entries, dir);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 || (std::strcmp(argv[1], "write") != 0 && std::strcmp(argv[1], "read") != 0)) {
    std::cerr << "usage: gguf_tool write OUT.gguf DIR | gguf_tool read IN.gguf DIR\n";
    return 2;
  }
  try {
    if (std::strcmp(argv[1], "write") == 0) {
      write_recipe(argv[2], argv[3]);
    } else {
      read_file(argv[2], argv[3]);
    }
  } catch (const std::exception& e) {
    std::cerr << "gguf_tool: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
