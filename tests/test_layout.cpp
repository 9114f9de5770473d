// Memory-mapped reading, the streaming writer, sharded checkpoints, config.json, the reference's
// layer loaders (with a GPT-OSS-layout fixture dequantized independently here), the layouts and
// the bit-exactness of conversions between them.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mxfp4/io/checkpoint.hpp"
#include "mxfp4/io/gguf.hpp"
#include "mxfp4/io/layers.hpp"
#include "mxfp4/io/layout.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/io/uqff.hpp"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"

namespace {

namespace fs = std::filesystem;
using mxfp4::DType;
using mxfp4::Shape;
using mxfp4::Tensor;
using mxfp4::io::SafetensorsCheckpoint;
using mxfp4::io::SafetensorsFile;
using mxfp4::io::SafetensorsItem;
using mxfp4::io::write_safetensors;
using namespace mxfp4::test;

Bytes entry_bytes(const SafetensorsCheckpoint& c, const std::string& name) {
  const auto r = c.find(name);
  if (r.entry == nullptr) return {};
  const auto s = r.file->bytes(*r.entry);
  return Bytes(s.begin(), s.end());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mxfp4::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- memory-mapped reading ----------------------------------------------------------------------

TEST(safetensors_mmap, AlignedTensorsAreViewsOfTheMappingUnalignedOnesCopies) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  const Bytes odd = {1, 2, 3};
  const std::vector<float> f = {1.5f, -2.0f, 3.25f, 0.0f};
  Bytes fb(sizeof(float) * f.size());
  std::memcpy(fb.data(), f.data(), fb.size());
  const std::vector<float> g = {7.0f, 8.0f};
  Bytes gb(sizeof(float) * g.size());
  std::memcpy(gb.data(), g.data(), gb.size());
  // "g" starts at data offset 0 (8-aligned); "f" after the three bytes of "odd" is misaligned.
  write_safetensors(path, {{"g", "F32", {2}, gb}, {"odd", "U8", {3}, odd}, {"f", "F32", {4}, fb}});
  Tensor tg;
  Tensor tf;
  {
    const auto file = SafetensorsFile::open(path);
    EXPECT_TRUE(file.memory_mapped());
    EXPECT_TRUE(file.aligned(*file.find("g")));
    EXPECT_FALSE(file.aligned(*file.find("f")));
    tg = file.tensor("g");
    tf = file.tensor("f");
    EXPECT_EQ(tg.data(), static_cast<const void*>(file.bytes(*file.find("g")).data()));
    EXPECT_NE(tf.data(), static_cast<const void*>(file.bytes(*file.find("f")).data()));
  }
  // Both outlive the file object: the view keeps the mapping alive.
  EXPECT_EQ(tg.data_as<float>()[1], 8.0f);
  EXPECT_EQ(tf.data_as<float>()[2], 3.25f);
  // Writing through a view never reaches the file (private mapping).
  tg.data_as<float>()[0] = 99.0f;
  EXPECT_EQ(SafetensorsFile::open(path).tensor("g").data_as<float>()[0], 7.0f);
}

TEST(safetensors_mmap, NonUtf8NamesAndTruncatedFilesAreFormatErrors) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  std::string header = "{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  Bytes b;
  append_le(b, header.size(), 8);
  b.insert(b.end(), header.begin(), header.end());
  b.push_back(7);
  write_all(path, b);
  const std::string m = error_of([&] { SafetensorsFile::open(path); });
  EXPECT_NE(m.find(path), std::string::npos) << m;
  EXPECT_NE(m.find("UTF-8"), std::string::npos) << m;
  EXPECT_THROW(SafetensorsFile::open(path), mxfp4::FormatError);

  // A valid file cut anywhere in its data is refused from disk too.
  write_safetensors(path, {{"x", "F32", {64}, Bytes(256, 1)}});
  const Bytes whole = read_all(path);
  fs::resize_file(path, whole.size() - 5);
  EXPECT_THROW(SafetensorsFile::open(path), mxfp4::FormatError);
  fs::resize_file(path, 0);
  EXPECT_THROW(SafetensorsFile::open(path), mxfp4::FormatError);
}

// ---- the streaming writer -----------------------------------------------------------------------

TEST(safetensors_writer, StreamsTensorsInPiecesAndMatchesTheOneShotWriter) {
  TempDir dir;
  const Bytes a = pattern(1000, 1);
  const Bytes b = pattern(24, 2);
  write_safetensors(dir.file("one.safetensors"),
                    {{"a", "U8", {10, 100}, a}, {"e", "F32", {0}, {}}, {"b", "F32", {6}, b}},
                    {{"k", "v"}});
  {
    mxfp4::io::SafetensorsWriter w(dir.file("stream.safetensors"),
                                   {{"a", "U8", {10, 100}}, {"e", "F32", {0}}, {"b", "F32", {6}}},
                                   {{"k", "v"}});
    ASSERT_NE(w.next(), nullptr);
    EXPECT_EQ(w.next()->name, "a");
    w.write({a.data(), 300});
    w.write({a.data() + 300, 700});
    ASSERT_NE(w.next(), nullptr);
    EXPECT_EQ(w.next()->name, "b");  // the empty tensor needs no bytes
    Bytes both(b.begin(), b.end());
    w.write(both);
    EXPECT_EQ(w.next(), nullptr);
    EXPECT_FALSE(fs::exists(dir.file("stream.safetensors")));  // not before commit
    const std::uint64_t size = w.commit();
    EXPECT_EQ(size, fs::file_size(dir.file("stream.safetensors")));
  }
  EXPECT_EQ(read_all(dir.file("one.safetensors")), read_all(dir.file("stream.safetensors")));
}

TEST(safetensors_writer, MissingOrExtraBytesAndAbandonedWritersLeaveNothing) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  write_safetensors(path, {{"keep", "U8", {2}, Bytes{1, 2}}});
  const Bytes before = read_all(path);
  {
    mxfp4::io::SafetensorsWriter w(path, {{"a", "U8", {4}}});
    w.write(Bytes{1, 2});
    const std::string m = error_of([&] { w.commit(); });
    EXPECT_NE(m.find("'a'"), std::string::npos) << m;
    EXPECT_NE(m.find("2 of its bytes never arrived"), std::string::npos) << m;
  }
  {
    mxfp4::io::SafetensorsWriter w(path, {{"a", "U8", {2}}});
    EXPECT_THROW(w.write(Bytes{1, 2, 3}), mxfp4::InvalidArgument);
  }
  {
    mxfp4::io::SafetensorsWriter w(path, {{"a", "U8", {2}}});
    w.write(Bytes{5, 6});
    // Destroyed without commit (an exception elsewhere): the temporary goes away.
  }
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.safetensors"});
}

// ---- sharded checkpoints ------------------------------------------------------------------------

std::vector<mxfp4::io::StreamedTensor> streamed(const std::map<std::string, Bytes>& tensors,
                                                int* produced = nullptr) {
  std::vector<mxfp4::io::StreamedTensor> out;
  for (const auto& [name, bytes] : tensors) {
    const Bytes* b = &bytes;
    out.push_back({{name, "U8", {static_cast<std::int64_t>(b->size())}}, [b, produced] {
                     if (produced) ++*produced;
                     return mxfp4::io::TensorBytes{*b, nullptr};
                   }});
  }
  return out;
}

TEST(safetensors_shards, WritesAnIndexAndReadsItBackFromTheFolderOrTheIndex) {
  TempDir dir;
  std::map<std::string, Bytes> tensors;
  for (int i = 0; i < 7; ++i)
    tensors["t" + std::to_string(i)] = pattern(100 + 10 * static_cast<std::size_t>(i), i);
  int produced = 0;
  mxfp4::io::CheckpointWriteOptions options;
  options.max_shard_bytes = 250;
  const auto r = mxfp4::io::write_checkpoint(dir.file("ck/"), streamed(tensors, &produced),
                                             {{"format", "pt"}}, options);
  EXPECT_EQ(produced, 7);
  // Sizes 100, 110 | 120, 130 | 140 | 150 | 160: five shards of at most 250 bytes, and the index.
  ASSERT_EQ(r.files.size(), 6u);
  EXPECT_EQ(fs::path(r.files.back()).filename(), "model.safetensors.index.json");
  EXPECT_EQ(fs::path(r.files.front()).filename(), "model-00001-of-00005.safetensors");
  for (const std::string& where : {dir.file("ck"), dir.file("ck/model.safetensors.index.json")}) {
    const auto c = SafetensorsCheckpoint::open(where);
    EXPECT_TRUE(c.sharded());
    EXPECT_EQ(c.shards().size(), 5u);
    EXPECT_EQ(c.entries().size(), 7u);
    for (const auto& [name, bytes] : tensors)
      EXPECT_EQ(entry_bytes(c, name), bytes) << name;
    EXPECT_EQ(c.metadata().at("format"), "pt");
    EXPECT_EQ(c.metadata().count("total_size"), 0u);  // a number, not a string: not metadata
    for (const auto& s : c.shards())
      EXPECT_LE(s.data_size(), 250u);
  }
  // Copies point into their own shards.
  std::optional<SafetensorsCheckpoint> original = SafetensorsCheckpoint::open(dir.file("ck"));
  const SafetensorsCheckpoint copy = *original;
  original.reset();
  for (const auto& [name, bytes] : tensors)
    EXPECT_EQ(entry_bytes(copy, name), bytes) << name;
  // Rewriting the folder as one file removes the old shards and index.
  mxfp4::io::write_checkpoint(dir.file("ck"), streamed(tensors));
  EXPECT_EQ(dir.listing("ck"), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.file("ck")).entries().size(), 7u);
  // More than one shard cannot go to a single .safetensors file.
  EXPECT_THROW(
      mxfp4::io::write_checkpoint(dir.file("x.safetensors"), streamed(tensors), {}, options),
      mxfp4::InvalidArgument);
  EXPECT_FALSE(fs::exists(dir.file("x.safetensors")));
}

TEST(safetensors_shards, IndexesThatLieAreRefused) {
  TempDir dir;
  write_safetensors(dir.file("a.safetensors"),
                    {{"x", "U8", {1}, Bytes{1}}, {"y", "U8", {1}, Bytes{3}}});
  write_safetensors(dir.file("b.safetensors"), {{"z", "U8", {1}, Bytes{2}}});
  const std::string index = dir.file("model.safetensors.index.json");
  auto expect = [&](const std::string& json, const std::vector<std::string>& fragments) {
    write_text(index, json);
    const std::string m = error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); });
    for (const auto& f : fragments)
      EXPECT_NE(m.find(f), std::string::npos) << f << " in " << m;
  };
  // A shard holds a tensor the index does not list.
  expect(R"({"weight_map": {"x": "a.safetensors"}})", {"does not list tensor 'y'"});
  expect(R"({"weight_map": {"x": "b.safetensors", "z": "b.safetensors"}})",
         {"lists tensor 'x' in 'b.safetensors', which does not hold it"});
  expect(R"({"weight_map": {"x": "../a.safetensors"}})", {"not a plain file name"});
  expect(R"({"weight_map": {"x": "c.safetensors"}})", {"c.safetensors", "cannot open"});
  expect(R"({"weight_map": [1]})", {"weight_map"});
  expect("{not json", {"not valid JSON", index});
  write_safetensors(dir.file("b.safetensors"), {{"x", "U8", {1}, Bytes{2}}});
  expect(R"({"weight_map": {"x": "b.safetensors", "y": "a.safetensors"}})", {"'x' is in both"});
  // Files the index does not name are not part of the checkpoint.
  write_safetensors(dir.file("b.safetensors"), {{"z", "U8", {1}, Bytes{2}}});
  write_text(index, R"({"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}})");
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path().string()).entries().size(), 2u);
  fs::remove(index);
  // Two files and no index: which belong together is unknown.
  EXPECT_NE(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }).find("index"),
            std::string::npos);
}

TEST(safetensors_shards, AFullDiskKeepsTheOldCheckpoint) {
  TempDir dir;
  std::map<std::string, Bytes> small = {{"old", Bytes{1, 2, 3}}};
  mxfp4::io::write_checkpoint(dir.file("ck/"), streamed(small));
  const auto before = dir.listing("ck");
  const Bytes old_bytes = read_all(dir.file("ck/model.safetensors"));
  std::map<std::string, Bytes> big;
  for (int i = 0; i < 4; ++i)
    big["t" + std::to_string(i)] = Bytes(1u << 20, static_cast<std::uint8_t>(i));
  mxfp4::io::CheckpointWriteOptions options;
  options.max_shard_bytes = 1u << 20;
  const rlim_t limit = 512 * 1024;  // every shard fails half way, as on a full disk
  std::string m;
  {
    const FileSizeLimit full_disk(limit);
    m = error_of([&] { mxfp4::io::write_checkpoint(dir.file("ck"), streamed(big), {}, options); });
  }
  EXPECT_NE(m.find("cannot write"), std::string::npos) << m;
  EXPECT_EQ(dir.listing("ck"), before);
  EXPECT_EQ(read_all(dir.file("ck/model.safetensors")), old_bytes);
  // A folder the failed call created is gone again.
  {
    const FileSizeLimit full_disk(limit);
    EXPECT_THROW(mxfp4::io::write_checkpoint(dir.file("fresh"), streamed(big), {}, options),
                 mxfp4::IoError);
  }
  EXPECT_FALSE(fs::exists(dir.file("fresh")));
}

TEST(safetensors_shards, UnwritableOutputIsAnIoErrorNamingIt) {
  TempDir dir;
  std::map<std::string, Bytes> t = {{"a", Bytes{1}}};
  // A pipe (like a device) is never replaced by a file.
  ASSERT_EQ(::mkfifo(dir.file("pipe").c_str(), 0600), 0);
  const std::string m =
      error_of([&] { mxfp4::io::write_checkpoint(dir.file("pipe"), streamed(t)); });
  EXPECT_NE(m.find("not a regular file"), std::string::npos) << m;
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"pipe"});
  const std::string m2 = error_of(
      [&] { mxfp4::io::write_checkpoint(dir.file("no/such/x.safetensors"), streamed(t)); });
  EXPECT_NE(m2.find("cannot create a temporary"), std::string::npos) << m2;
}

// ---- config.json --------------------------------------------------------------------------------

TEST(hf_config, QuantizationConfigAndModulesToNotConvert) {
  TempDir dir;
  EXPECT_FALSE(mxfp4::io::read_hf_quantization_config(dir.path().string()).present);
  write_text(dir.file("config.json"),
             R"({"model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4",
                 "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}})");
  const auto c = mxfp4::io::read_hf_quantization_config(dir.path().string());
  EXPECT_TRUE(c.present);
  EXPECT_TRUE(c.is_mxfp4());
  ASSERT_EQ(c.modules_to_not_convert.size(), 2u);
  const auto& m = c.modules_to_not_convert;
  EXPECT_EQ(mxfp4::io::module_not_converted("model.layers.3.self_attn.q_proj.weight", m),
            "model.layers.*.self_attn");
  EXPECT_EQ(mxfp4::io::module_not_converted("lm_head.weight", m), "lm_head");
  EXPECT_EQ(mxfp4::io::module_not_converted("model.layers.3.mlp.experts.gate_up_proj", m), "");
  EXPECT_EQ(mxfp4::io::module_not_converted("model.layers.3.self_attention.weight", m), "");
  EXPECT_EQ(mxfp4::io::module_not_converted("lm_head_extra.weight", m), "");

  write_text(dir.file("config.json"), R"({"quantization_config": {"modules_to_not_convert": 3}})");
  EXPECT_THROW(mxfp4::io::read_hf_quantization_config(dir.path().string()), mxfp4::FormatError);
  write_text(dir.file("config.json"), "{");
  EXPECT_THROW(mxfp4::io::read_hf_quantization_config(dir.path().string()), mxfp4::FormatError);
}

// ---- a GPT-OSS-layout fixture -------------------------------------------------------------------

constexpr std::int64_t kE = 4;   // experts
constexpr std::int64_t kH = 64;  // hidden
constexpr std::int64_t kI = 32;  // expert intermediate
constexpr std::int64_t kV = 50;  // vocabulary

Bytes bf16_bytes(std::size_t n, std::uint32_t seed) {
  Bytes b(2 * n);
  std::uint32_t x = seed;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    const float v = (static_cast<float>(x >> 8) / 16777216.0f - 0.5f) * 0.2f;
    const std::uint16_t h = mxfp4::f32_to_bf16(v);
    b[2 * i] = static_cast<std::uint8_t>(h);
    b[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
  }
  return b;
}

// Writes a two-layer GPT-OSS checkpoint (real tensor names, small dims) as two shards with an
// index and a config.json; returns the bytes of the MXFP4 parts by name.
std::map<std::string, Bytes> write_gptoss_fixture(const fs::path& folder) {
  fs::create_directories(folder);
  std::map<std::string, Bytes> parts;
  std::vector<std::vector<SafetensorsItem>> shards(2);
  std::vector<Bytes> keep;
  keep.reserve(64);
  auto add = [&](int shard, const std::string& name, const std::string& dtype, Shape shape,
                 Bytes bytes) {
    keep.push_back(std::move(bytes));
    shards[static_cast<std::size_t>(shard)].push_back({name, dtype, std::move(shape), keep.back()});
  };
  std::uint32_t seed = 1;
  add(0, "model.embed_tokens.weight", "BF16", {kV, kH}, bf16_bytes(kV * kH, seed++));
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    add(layer, p + "input_layernorm.weight", "BF16", {kH}, bf16_bytes(kH, seed++));
    add(layer, p + "post_attention_layernorm.weight", "BF16", {kH}, bf16_bytes(kH, seed++));
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      add(layer, p + "self_attn." + proj + ".weight", "BF16", {kH, kH},
          bf16_bytes(kH * kH, seed++));
      add(layer, p + "self_attn." + proj + ".bias", "BF16", {kH}, bf16_bytes(kH, seed++));
    }
    add(layer, p + "self_attn.sinks", "BF16", {8}, bf16_bytes(8, seed++));
    add(layer, p + "mlp.router.weight", "BF16", {kE, kH}, bf16_bytes(kE * kH, seed++));
    add(layer, p + "mlp.router.bias", "BF16", {kE}, bf16_bytes(kE, seed++));
    struct Proj {
      const char* name;
      std::int64_t n, k;
    };
    for (const Proj& pr : {Proj{"gate_up_proj", 2 * kI, kH}, Proj{"down_proj", kH, kI}}) {
      const std::string base = p + "mlp.experts." + pr.name;
      const auto nb = static_cast<std::size_t>(kE * pr.n * pr.k / 2);
      const auto ns = static_cast<std::size_t>(kE * pr.n * pr.k / 32);
      Bytes scales = pattern(ns, seed++, 118, 130);
      scales.at(0) = 0;    // 2^-127: an f32 subnormal, not zero
      scales.at(1) = 254;  // 2^127
      parts[base + "_blocks"] = pattern(nb, seed++);
      parts[base + "_scales"] = scales;
      parts[base + "_bias"] = bf16_bytes(static_cast<std::size_t>(kE * pr.n), seed++);
      add(layer, base + "_blocks", "U8", {kE, pr.n, pr.k / 32, 16}, parts[base + "_blocks"]);
      add(layer, base + "_scales", "U8", {kE, pr.n, pr.k / 32}, parts[base + "_scales"]);
      add(layer, base + "_bias", "BF16", {kE, pr.n}, parts[base + "_bias"]);
    }
  }
  add(1, "model.norm.weight", "BF16", {kH}, bf16_bytes(kH, seed++));
  add(1, "lm_head.weight", "BF16", {kV, kH}, bf16_bytes(kV * kH, seed++));
  std::string weight_map;
  for (int s = 0; s < 2; ++s) {
    const std::string file = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
    write_safetensors((folder / file).string(), shards[static_cast<std::size_t>(s)]);
    for (const auto& item : shards[static_cast<std::size_t>(s)]) {
      weight_map += (weight_map.empty() ? "" : ",\n    ") + std::string("\"") + item.name +
                    "\": \"" + file + "\"";
    }
  }
  write_text((folder / "model.safetensors.index.json").string(),
             "{\"metadata\": {\"total_size\": 12345},\n  \"weight_map\": {\n    " + weight_map +
                 "\n  }\n}\n");
  write_text((folder / "config.json").string(), R"({
  "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
  "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2, "num_local_experts": 4,
  "experts_per_token": 4,
  "quantization_config": {
    "quant_method": "mxfp4",
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                               "model.embed_tokens", "lm_head"]
  }
})");
  return parts;
}

// The dequantization of HF transformers' convert_moe_packed_tensors, written out here: the
// E2M1 value of each nibble (low nibble = even column) times 2^(scale - 127).
std::vector<float> dequantize_gptoss(const Bytes& blocks, const Bytes& scales, std::int64_t e,
                                     std::int64_t n, std::int64_t k) {
  static const float kLut[16] = {+0.0f, 0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                 -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  std::vector<float> out(static_cast<std::size_t>(e * n * k));
  for (std::int64_t row = 0; row < e * n; ++row) {
    for (std::int64_t col = 0; col < k; ++col) {
      const std::int64_t g = col / 32;
      const std::uint8_t byte =
          blocks[static_cast<std::size_t>(row * (k / 2) + g * 16 + (col % 32) / 2)];
      const int code = col % 2 == 0 ? (byte & 0x0F) : (byte >> 4);
      const int s = scales[static_cast<std::size_t>(row * (k / 32) + g)];
      out[static_cast<std::size_t>(row * k + col)] =
          static_cast<float>(std::ldexp(static_cast<double>(kLut[code]), s - 127));
    }
  }
  return out;
}

TEST(gptoss_fixture, LoadsThroughPackedGptossLinearAndMatchesAnIndependentDequantization) {
  TempDir dir;
  const auto parts = write_gptoss_fixture(dir.path() / "gpt-oss-mini");
  const auto ck = SafetensorsCheckpoint::open((dir.path() / "gpt-oss-mini").string());
  EXPECT_TRUE(ck.sharded());
  EXPECT_TRUE(ck.quantization_config().is_mxfp4());
  EXPECT_EQ(ck.quantization_config().modules_to_not_convert.size(), 4u);
  for (int layer = 0; layer < 2; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.experts";
    struct Proj {
      const char* name;
      std::int64_t in, out;
    };
    for (const Proj& pr : {Proj{"gate_up_proj", kH, 2 * kI}, Proj{"down_proj", kI, kH}}) {
      SCOPED_TRACE(prefix + "." + pr.name);
      const mxfp4::Mxfp4Weight w =
          mxfp4::io::packed_gptoss_linear(ck, prefix, pr.name, kE, pr.in, pr.out, true);
      EXPECT_TRUE(w.stacked());
      EXPECT_EQ(w.num_experts(), kE);
      EXPECT_EQ(w.out_features(), pr.out);
      EXPECT_EQ(w.in_features(), pr.in);
      const std::string base = prefix + "." + pr.name;
      const auto expected = dequantize_gptoss(parts.at(base + "_blocks"),
                                              parts.at(base + "_scales"), kE, pr.out, pr.in);
      const Tensor got = w.dequantize(DType::f32);
      ASSERT_EQ(got.shape(), (Shape{kE, pr.out, pr.in}));
      ASSERT_EQ(std::memcmp(got.data(), expected.data(), expected.size() * sizeof(float)), 0);
      ASSERT_TRUE(w.bias().has_value());
      EXPECT_EQ(std::memcmp(w.bias()->data(), parts.at(base + "_bias").data(), w.bias()->nbytes()),
                0);
      // Zero copy: the blocks view the mapped shard.
      EXPECT_EQ(
          w.blocks().data(),
          static_cast<const void*>(
              ck.find(base + "_blocks").file->bytes(*ck.find(base + "_blocks").entry).data()));
    }
  }
  // Every mismatch names the tensor, the expected and the actual shape.
  const std::string m = error_of([&] {
    mxfp4::io::packed_gptoss_linear(ck, "model.layers.0.mlp.experts", "down_proj", kE, kH, kH,
                                    true);
  });
  EXPECT_NE(m.find("model.layers.0.mlp.experts.down_proj_blocks"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 64, 2, 16]"), std::string::npos) << m;  // expected
  EXPECT_NE(m.find("[4, 64, 1, 16]"), std::string::npos) << m;  // actual
  EXPECT_THROW(mxfp4::io::packed_gptoss_linear(ck, "model.layers.0.mlp.experts", "down_proj", 8, kI,
                                               kH, true),
               mxfp4::ShapeMismatch);
  EXPECT_THROW(mxfp4::io::packed_gptoss_linear(ck, "model.layers.0.mlp.experts", "up_proj", kE, kI,
                                               kH, false),
               mxfp4::FormatError);
  EXPECT_THROW(mxfp4::io::packed_gptoss_linear(ck, "model.layers.0.mlp.experts", "down_proj", kE,
                                               40, kH, false),
               mxfp4::InvalidArgument);
}

TEST(gptoss_fixture, DetectedConvertedToLinearAndBackBitForBit) {
  TempDir dir;
  write_gptoss_fixture(dir.path() / "src");
  EXPECT_EQ(mxfp4::io::detect_layout(dir.file("src")).name(), "gptoss");
  const auto logical = mxfp4::io::read_checkpoint(dir.file("src"));
  std::size_t weights = 0;
  for (const auto& t : logical.tensors) {
    if (!t.is_mxfp4()) continue;
    ++weights;
    EXPECT_EQ(t.experts, kE);
    EXPECT_EQ(t.bias_dtype, "BF16");
  }
  EXPECT_EQ(weights, 4u);

  const auto to_linear =
      mxfp4::io::convert_checkpoint(dir.file("src"), dir.file("linear"), "linear");
  EXPECT_EQ(to_linear.from, "gptoss");
  EXPECT_EQ(to_linear.mxfp4_weights, 4u);
  EXPECT_TRUE(fs::exists(dir.file("linear/config.json")));
  const auto lin = SafetensorsCheckpoint::open(dir.file("linear"));
  const auto src = SafetensorsCheckpoint::open(dir.file("src"));
  const std::string b = "model.layers.1.mlp.experts.gate_up_proj";
  ASSERT_NE(lin.find(b + ".blocks").entry, nullptr);
  EXPECT_EQ(lin.find(b + ".blocks").entry->shape, (Shape{kE, 2 * kI, kH / 2}));
  EXPECT_EQ(entry_bytes(lin, b + ".blocks"), entry_bytes(src, b + "_blocks"));
  EXPECT_EQ(entry_bytes(lin, b + ".scales"), entry_bytes(src, b + "_scales"));
  EXPECT_EQ(entry_bytes(lin, b + ".bias"), entry_bytes(src, b + "_bias"));
  // The reference's loader for this naming reads the converted weight.
  const auto w = mxfp4::io::packed_linear_b(lin, b, kE, kH, 2 * kI, true);
  EXPECT_EQ(w.num_experts(), kE);

  mxfp4::io::convert_checkpoint(dir.file("linear"), dir.file("back"), "gptoss");
  const auto back = SafetensorsCheckpoint::open(dir.file("back"));
  ASSERT_EQ(back.entries().size(), src.entries().size());
  for (const auto& r : src.entries()) {
    SCOPED_TRACE(r.entry->name);
    const auto o = back.find(r.entry->name);
    ASSERT_NE(o.entry, nullptr);
    EXPECT_EQ(o.entry->dtype, r.entry->dtype);
    EXPECT_EQ(o.entry->shape, r.entry->shape);
    EXPECT_EQ(entry_bytes(back, r.entry->name), entry_bytes(src, r.entry->name));
  }
}

TEST(gptoss_fixture, QuantizeHonoursModulesToNotConvertAndCarriesMxfp4Over) {
  TempDir dir;
  write_gptoss_fixture(dir.path() / "src");
  mxfp4::io::CheckpointQuantizeOptions o;
  o.layout = "gptoss";
  const auto r = mxfp4::io::quantize_checkpoint(dir.file("src"), dir.file("out"), o);
  std::size_t not_converted = 0;
  for (const auto& t : r.tensors) {
    if (t.skip == mxfp4::io::SkipReason::not_converted) {
      ++not_converted;
      EXPECT_NE(t.reason.find("modules_to_not_convert"), std::string::npos) << t.reason;
    }
    EXPECT_NE(t.action, mxfp4::io::TensorAction::quantized) << t.name;
  }
  // q/k/v/o of two layers, the two routers, embed_tokens and lm_head.
  EXPECT_EQ(not_converted, 8u + 2u + 2u);
  const auto src = SafetensorsCheckpoint::open(dir.file("src"));
  const auto out = SafetensorsCheckpoint::open(dir.file("out"));
  ASSERT_EQ(out.entries().size(), src.entries().size());
  for (const auto& e : src.entries())
    EXPECT_EQ(entry_bytes(out, e.entry->name), entry_bytes(src, e.entry->name)) << e.entry->name;
  EXPECT_TRUE(out.quantization_config().is_mxfp4());

  // Without the config's list, the attention weights are quantized.
  o.honour_modules_to_not_convert = false;
  o.include = "self_attn";
  const auto r2 = mxfp4::io::quantize_checkpoint(dir.file("src"), dir.file("out2"), o);
  EXPECT_EQ(r2.count(mxfp4::io::TensorAction::quantized), 8u);
  for (const auto& t : r2.tensors) {
    if (t.name == "lm_head.weight") {
      EXPECT_EQ(t.skip, mxfp4::io::SkipReason::not_included);
    }
  }
  const auto q2 = SafetensorsCheckpoint::open(dir.file("out2"));
  ASSERT_NE(q2.find("model.layers.0.self_attn.q_proj_blocks").entry, nullptr);
  EXPECT_EQ(q2.find("model.layers.0.self_attn.q_proj_blocks").entry->shape,
            (Shape{kH, kH / 32, 16}));
  EXPECT_NE(q2.find("model.layers.0.self_attn.q_proj_bias").entry, nullptr);
}

// ---- layouts ------------------------------------------------------------------------------------

TEST(layouts, RegistryNamesAndUnbuiltLayouts) {
  std::vector<std::string> names;
  for (const auto* l : mxfp4::io::layouts())
    names.emplace_back(l->name());
  for (const char* n : {"linear", "gptoss", "uqff1", "uqff-legacy", "gguf"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  EXPECT_EQ(mxfp4::io::find_layout("linear").name(), "linear");
  EXPECT_THROW(mxfp4::io::find_layout("nope"), mxfp4::InvalidArgument);
  for (const auto* l : mxfp4::io::layouts()) {
    if (!l->available()) {
      EXPECT_THROW(mxfp4::io::find_layout(l->name()), mxfp4::Unsupported) << l->name();
    }
  }
}

// Every weight's codes, scales and bias and every dense tensor's bytes, by logical name.
std::map<std::string, Bytes> fingerprint(const mxfp4::io::LogicalCheckpoint& c) {
  std::map<std::string, Bytes> f;
  for (const auto& t : c.tensors) {
    if (t.is_mxfp4()) {
      const auto w = t.weight();
      auto put = [&](const std::string& k, const Tensor& x) {
        const auto* p = static_cast<const std::uint8_t*>(x.data());
        f[t.name + "|" + k] = Bytes(p, p + x.nbytes());
      };
      put("blocks", w.blocks());
      put("scales", w.scales());
      if (w.bias()) put("bias", *w.bias());
    } else {
      const auto b = t.bytes();
      f[t.name + "|" + t.dtype + mxfp4::to_string(t.shape)] = Bytes(b.data.begin(), b.data.end());
    }
  }
  return f;
}

std::string extension(const std::string& layout) {
  if (layout == "gguf") return ".gguf";
  if (layout.starts_with("uqff")) return ".uqff";
  return ".safetensors";
}

// Converts `source` into every layout in `layouts`, then each of those into every layout, and
// back: every weight and tensor must come through bit for bit, and A -> B -> A gives A's file.
void round_trip_every_pair(const TempDir& dir, const std::string& source,
                           const std::vector<std::string>& layouts, const std::string& tag) {
  const auto reference = fingerprint(mxfp4::io::read_checkpoint(source));
  for (const auto& from : layouts) {
    const std::string a = dir.file(tag + "_a_" + from + extension(from));
    mxfp4::io::convert_checkpoint(source, a, from);
    for (const auto& to : layouts) {
      SCOPED_TRACE(tag + ": " + from + " -> " + to);
      const std::string b = dir.file(tag + "_b_" + from + "_" + to + extension(to));
      const auto r = mxfp4::io::convert_checkpoint(a, b, to);
      EXPECT_EQ(r.from, from);
      EXPECT_EQ(r.to, to);
      EXPECT_EQ(mxfp4::io::detect_layout(b).name(), to);
      EXPECT_EQ(fingerprint(mxfp4::io::read_checkpoint(b)), reference);
      const std::string c = dir.file(tag + "_c_" + from + "_" + to + extension(from));
      mxfp4::io::convert_checkpoint(b, c, from);
      EXPECT_EQ(read_all(c), read_all(a));
    }
  }
}

TEST(layouts, EveryPairOfLayoutsRoundTripsBitForBit) {
  TempDir dir;
  std::vector<std::string> all;
  for (const auto* l : mxfp4::io::layouts()) {
    ASSERT_TRUE(l->available()) << l->name();
    all.emplace_back(l->name());
  }
  ASSERT_EQ(all.size(), 5u);
  // MXFP4 weights only (what every layout holds, uqff-legacy included): dense and stacked,
  // with and without bias, f32 / bf16 / f16 biases, every scale byte including 0x00 and 0xFF.
  Tensor w1 = Tensor::empty({8, 64}, DType::f32);
  Tensor w2 = Tensor::empty({3, 4, 32}, DType::f32);
  for (Tensor* w : {&w1, &w2}) {
    const Bytes r = pattern(static_cast<std::size_t>(w->numel()), 7);
    for (std::int64_t i = 0; i < w->numel(); ++i)
      w->data_as<float>()[i] =
          (static_cast<float>(r[static_cast<std::size_t>(i)]) - 128.0f) / 17.0f;
  }
  w1.data_as<float>()[5] = std::numeric_limits<float>::infinity();  // a NaN block (0xFF)
  w1.data_as<float>()[64 + 40] = 1e-39f;  // a tiny block: a subnormal scale
  const Tensor b1 = Tensor::from_vector<float>(std::vector<float>(8, 0.25f), {8});
  const Tensor b2 =
      Tensor::from_vector<float>(std::vector<float>(12, -1.5f), {3, 4}).to(DType::bf16);
  const Tensor w3 = Tensor::from_vector<float>(std::vector<float>(2 * 32, 0.5f), {2, 32});
  const Tensor b3 = Tensor::from_vector<float>({1.0f, 2.0f}, {2}).to(DType::f16);
  write_safetensors(
      dir.file("dense.safetensors"),
      {mxfp4::io::safetensors_item("model.a.weight", w1),
       mxfp4::io::safetensors_item("model.a.bias", b1),
       mxfp4::io::safetensors_item("experts.b.weight", w2),
       mxfp4::io::safetensors_item("experts.b.bias", b2),
       mxfp4::io::safetensors_item("c.weight", w3), mxfp4::io::safetensors_item("c.bias", b3),
       mxfp4::io::safetensors_item("d.weight", w3)},
      {{"format", "pt"}});
  mxfp4::QuantizeOptions nan_ok;
  nan_ok.non_finite = mxfp4::NonFinitePolicy::nan_block;
  mxfp4::io::quantize_checkpoint(dir.file("dense.safetensors"), dir.file("w.safetensors"), nan_ok);
  const auto weights_only = mxfp4::io::read_checkpoint(dir.file("w.safetensors"));
  ASSERT_EQ(weights_only.tensors.size(), 4u);
  for (const auto& t : weights_only.tensors)
    ASSERT_TRUE(t.is_mxfp4()) << t.name;
  round_trip_every_pair(dir, dir.file("w.safetensors"), all, "weights");

  // With dense tensors (F32, BF16, I64 beside the weights): every layout but uqff-legacy, which
  // refuses them rather than dropping them.
  mxfp4::io::write_example_checkpoint(dir.file("ex.safetensors"));
  mxfp4::io::quantize_checkpoint(dir.file("ex.safetensors"), dir.file("q.safetensors"));
  std::vector<std::string> with_dense;
  for (const auto& l : all) {
    if (l != "uqff-legacy") with_dense.push_back(l);
  }
  round_trip_every_pair(dir, dir.file("q.safetensors"), with_dense, "mixed");
  const std::string m = error_of([&] {
    mxfp4::io::convert_checkpoint(dir.file("q.safetensors"), dir.file("x.uqff"), "uqff-legacy");
  });
  EXPECT_NE(m.find("MXFP4 weights only"), std::string::npos) << m;
  EXPECT_NE(m.find("norm.weight"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(dir.file("x.uqff")));
}

TEST(layouts, QuantizeWritesEveryLayoutWithTheSameBytes) {
  TempDir dir;
  const Tensor w = Tensor::from_vector<float>(std::vector<float>(4 * 64, 0.75f), {4, 64});
  const Tensor b = Tensor::from_vector<float>({1.0f, 2.0f, 3.0f, 4.0f}, {4});
  Tensor e = Tensor::empty({2, 4, 32}, DType::bf16);
  for (std::int64_t i = 0; i < e.numel(); ++i)
    e.data_as<mxfp4::bf16_t>()[i] = {mxfp4::f32_to_bf16(static_cast<float>(i % 13) - 6.0f)};
  write_safetensors(dir.file("in.safetensors"), {mxfp4::io::safetensors_item("l.weight", w),
                                                 mxfp4::io::safetensors_item("l.bias", b),
                                                 mxfp4::io::safetensors_item("e.weight", e)});
  mxfp4::io::CheckpointQuantizeOptions o;
  const auto linear =
      mxfp4::io::quantize_checkpoint(dir.file("in.safetensors"), dir.file("q.safetensors"), o);
  const auto reference = fingerprint(mxfp4::io::read_checkpoint(dir.file("q.safetensors")));
  for (const auto* l : mxfp4::io::layouts()) {
    SCOPED_TRACE(std::string(l->name()));
    o.layout = std::string(l->name());
    const std::string out = dir.file("q_" + o.layout + extension(o.layout));
    const auto r = mxfp4::io::quantize_checkpoint(dir.file("in.safetensors"), out, o);
    EXPECT_EQ(r.layout, o.layout);
    EXPECT_EQ(r.count(mxfp4::io::TensorAction::quantized), 2u);
    EXPECT_EQ(r.files, std::vector<std::string>{out});
    for (const auto& t : r.tensors) {
      EXPECT_FALSE(t.outputs.empty()) << t.name;
      if (t.name != "l.weight") continue;
      EXPECT_DOUBLE_EQ(t.sqnr_db, linear.tensors[0].sqnr_db);
    }
    EXPECT_EQ(mxfp4::io::detect_layout(out).name(), o.layout);
    EXPECT_EQ(fingerprint(mxfp4::io::read_checkpoint(out)), reference);
  }
}

TEST(layouts, EveryLayoutWritesGpuLayoutWeightsWithTheStandardBytes) {
  TempDir dir;
  const mxfp4::Mxfp4Weight dense = random_weight({8, 64}, 41, DType::f16);
  const mxfp4::Mxfp4Weight experts = random_weight({3, 4, 32}, 42, {});
  // An in-memory checkpoint whose producers give the weights in `layout`.
  auto checkpoint = [&](mxfp4::BlockLayout layout) {
    mxfp4::io::LogicalCheckpoint c;
    for (const auto* w : {&dense, &experts}) {
      mxfp4::io::LogicalTensor t;
      t.kind = mxfp4::io::LogicalTensor::Kind::mxfp4;
      t.name = w->stacked() ? "model.experts" : "model.proj";
      t.experts = w->stacked() ? w->num_experts() : 0;
      t.n = w->out_features();
      t.k = w->in_features();
      if (w->bias()) t.bias_dtype = "F16";
      t.weight = [w, layout] { return w->with_layout(layout); };
      c.tensors.push_back(std::move(t));
    }
    return c;
  };
  const auto standard = checkpoint(mxfp4::BlockLayout::standard);
  const auto gpu = checkpoint(mxfp4::BlockLayout::gpu);
  ASSERT_EQ(gpu.tensors[0].weight().layout(), mxfp4::BlockLayout::gpu);
  for (const auto* l : mxfp4::io::layouts()) {
    SCOPED_TRACE(std::string(l->name()));
    const std::string ext = extension(std::string(l->name()));
    const std::string a = dir.file("std_" + std::string(l->name()) + ext);
    const std::string b = dir.file("gpu_" + std::string(l->name()) + ext);
    l->write(standard, a);
    l->write(gpu, b);
    EXPECT_EQ(read_all(b), read_all(a));
    EXPECT_EQ(fingerprint(mxfp4::io::read_checkpoint(b, l->name())), fingerprint(standard));
  }
}

TEST(layouts, CodecLayoutsNameTheirTensorsLikeTheirFormats) {
  TempDir dir;
  mxfp4::io::write_example_checkpoint(dir.file("ex.safetensors"));
  mxfp4::io::quantize_checkpoint(dir.file("ex.safetensors"), dir.file("q.safetensors"));
  const auto q = SafetensorsCheckpoint::open(dir.file("q.safetensors"));

  // UQFF 1.x: the codec reads what the layout wrote, with the same codes and scales.
  mxfp4::io::convert_checkpoint(dir.file("q.safetensors"), dir.file("q.uqff"), "uqff1");
  const auto contents = mxfp4::io::read_uqff1(dir.file("q.uqff"));
  ASSERT_EQ(contents.layers.size(), 3u);
  EXPECT_EQ(contents.layers[2].prefix, "experts");
  const auto& experts = contents.layers[2].weight;
  EXPECT_EQ(std::memcmp(experts.blocks().data(), entry_bytes(q, "experts.blocks").data(),
                        experts.blocks().nbytes()),
            0);
  const auto uq = SafetensorsCheckpoint::open(dir.file("q.uqff"));
  EXPECT_EQ(uq.entries().front().entry->name, "uqff.version.major");
  EXPECT_EQ(entry_bytes(uq, "experts.weight.format"), Bytes{6});
  EXPECT_EQ(entry_bytes(uq, "norm.weight"), entry_bytes(q, "norm.weight"));

  // Legacy blobs: named by index, the layer names kept in the metadata.
  mxfp4::io::write_safetensors(
      dir.file("w.safetensors"),
      {{"x.blocks", "U8", {2, 16}, Bytes(32, 0x21)}, {"x.scales", "U8", {2, 1}, Bytes{127, 0}}});
  mxfp4::io::convert_checkpoint(dir.file("w.safetensors"), dir.file("w.uqff"), "uqff-legacy");
  const auto layers = mxfp4::io::read_uqff_legacy(dir.file("w.uqff"));
  ASSERT_EQ(layers.size(), 1u);
  EXPECT_EQ(layers[0].index, 0u);
  const auto legacy = SafetensorsCheckpoint::open(dir.file("w.uqff"));
  EXPECT_EQ(legacy.metadata().at("mxfp4.layer_names"), R"(["x"])");
  const auto back = mxfp4::io::read_checkpoint(dir.file("w.uqff"));
  ASSERT_EQ(back.tensors.size(), 1u);
  EXPECT_EQ(back.tensors[0].name, "x");

  // GGUF: P.weight is an MXFP4 tensor with GGUF's dims, the bias and dense tensors keep theirs.
  mxfp4::io::convert_checkpoint(dir.file("q.safetensors"), dir.file("q.gguf"), "gguf");
  const auto g = mxfp4::io::GgufFile::open(dir.file("q.gguf"));
  const auto* gw = g.find("experts.weight");
  ASSERT_NE(gw, nullptr);
  EXPECT_EQ(gw->type, mxfp4::io::GgmlType::mxfp4);
  EXPECT_EQ(gw->ne, (std::vector<std::uint64_t>{128, 64, 4}));
  ASSERT_NE(g.find("experts.bias"), nullptr);
  EXPECT_EQ(g.find("position_ids")->type, mxfp4::io::GgmlType::i64);
  const auto gm = g.mxfp4_weight("experts.weight", "experts.bias");
  EXPECT_EQ(std::memcmp(gm.scales().data(), entry_bytes(q, "experts.scales").data(),
                        gm.scales().nbytes()),
            0);
  EXPECT_THROW(mxfp4::io::convert_checkpoint(dir.file("q.safetensors"), dir.file("g/"), "gguf"),
               mxfp4::InvalidArgument);
}

TEST(layouts, LinearLoadersCheckEveryShape) {
  TempDir dir;
  mxfp4::io::write_example_checkpoint(dir.file("ex.safetensors"));
  mxfp4::io::quantize_checkpoint(dir.file("ex.safetensors"), dir.file("q.safetensors"));
  const auto ck = SafetensorsCheckpoint::open(dir.file("q.safetensors"));
  const auto up = mxfp4::io::linear_b(ck, "layers.0.mlp.up", 128, 256, true);
  EXPECT_EQ(up.out_features(), 256);
  EXPECT_EQ(up.bias()->dtype(), DType::f32);
  const auto experts = mxfp4::io::packed_linear_b(ck, "experts", 4, 128, 64, true);
  EXPECT_EQ(experts.num_experts(), 4);
  const std::string m =
      error_of([&] { mxfp4::io::linear_b(ck, "layers.0.mlp.up", 128, 255, false); });
  EXPECT_NE(m.find("'layers.0.mlp.up.blocks'"), std::string::npos) << m;
  EXPECT_NE(m.find("[255, 64]"), std::string::npos) << m;
  EXPECT_NE(m.find("[256, 64]"), std::string::npos) << m;
  EXPECT_THROW(mxfp4::io::linear_b(ck, "experts", 128, 64, false), mxfp4::ShapeMismatch);
  EXPECT_THROW(mxfp4::io::packed_linear_b(ck, "layers.0.mlp.up", 1, 128, 256, false),
               mxfp4::ShapeMismatch);
  const std::string d = error_of([&] { mxfp4::io::linear_b(ck, "norm", 128, 1, false); });
  EXPECT_NE(d.find("'norm.blocks' is missing"), std::string::npos) << d;
  // Wrong dtypes name the tensor and what it should be.
  write_safetensors(dir.file("bad.safetensors"), {{"x.blocks", "F32", {2, 4}, Bytes(32, 0)},
                                                  {"x.scales", "U8", {2, 1}, Bytes(2, 127)},
                                                  {"y.blocks", "U8", {2, 16}, Bytes(32, 0)},
                                                  {"y.scales", "U8", {2, 1}, Bytes(2, 127)},
                                                  {"y.bias", "I32", {2}, Bytes(8, 0)}});
  const auto bad = SafetensorsCheckpoint::open(dir.file("bad.safetensors"));
  const std::string t = error_of([&] { mxfp4::io::linear_b(bad, "x", 32, 2, false); });
  EXPECT_NE(t.find("'x.blocks' must be U8, got F32"), std::string::npos) << t;
  EXPECT_THROW(mxfp4::io::linear_b(bad, "x", 32, 2, false), mxfp4::DTypeMismatch);
  EXPECT_NO_THROW(mxfp4::io::linear_b(bad, "y", 32, 2, false));
  const std::string b = error_of([&] { mxfp4::io::linear_b(bad, "y", 32, 2, true); });
  EXPECT_NE(b.find("'y.bias' must be F32 or F16 or BF16, got I32"), std::string::npos) << b;
}

TEST(layouts, VerifyFindsChangedTensorsAndMissingSources) {
  TempDir dir;
  mxfp4::io::write_example_checkpoint(dir.file("ex.safetensors"));
  mxfp4::io::quantize_checkpoint(dir.file("ex.safetensors"), dir.file("q.safetensors"));
  const auto ok =
      mxfp4::io::verify_checkpoint(dir.file("ex.safetensors"), dir.file("q.safetensors"));
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.compared(), 3u);
  for (const auto& t : ok.tensors) {
    EXPECT_GT(t.sqnr_db, 15.0) << t.name;
    EXPECT_GT(t.max_abs_error, 0.0) << t.name;
  }
  // A source whose norm differs and whose experts are gone.
  const auto src = SafetensorsFile::open(dir.file("ex.safetensors"));
  std::vector<SafetensorsItem> items;
  Bytes norm(512, 0);
  for (const auto& e : src.entries()) {
    if (e.name == "experts.weight") continue;
    items.push_back({e.name, e.dtype, e.shape, e.name == "norm.weight" ? norm : src.bytes(e)});
  }
  write_safetensors(dir.file("other.safetensors"), items);
  const auto bad =
      mxfp4::io::verify_checkpoint(dir.file("other.safetensors"), dir.file("q.safetensors"));
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.changed, std::vector<std::string>{"norm.weight"});
  EXPECT_EQ(bad.compared(), 2u);
}

}  // namespace
