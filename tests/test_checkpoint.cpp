// Whole-checkpoint quantization and dequantization (mxfp4/io/checkpoint.hpp) on the built-in
// example and on hand-made files with every kind of tensor the quantizer must skip.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "mxfp4/io/checkpoint.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"

namespace {

namespace fs = std::filesystem;
using mxfp4::DType;
using mxfp4::Shape;
using mxfp4::Tensor;
using mxfp4::io::SafetensorsFile;
using mxfp4::io::SkipReason;
using mxfp4::io::TensorAction;
using namespace mxfp4::test;

Bytes entry_bytes(const SafetensorsFile& f, const std::string& name) {
  const auto* e = f.find(name);
  if (e == nullptr) throw std::runtime_error("no tensor " + name);
  const auto s = f.bytes(*e);
  return Bytes(s.begin(), s.end());
}

// A float tensor of `dtype` with values from a small deterministic sequence (not the library's).
Tensor values(Shape shape, DType dtype, float scale = 1.0f) {
  Tensor t = Tensor::empty(std::move(shape), DType::f32);
  auto* p = t.data_as<float>();
  std::uint32_t x = 12345;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    x = x * 1103515245u + 12345u;
    p[i] = scale * (static_cast<float>((x >> 8) & 0xFFFF) / 32768.0f - 1.0f);
  }
  return t.to(dtype);
}

void write(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
           const std::vector<mxfp4::io::SafetensorsItem>& raw = {},
           const std::map<std::string, std::string>& metadata = {}) {
  std::vector<mxfp4::io::SafetensorsItem> items;
  for (const auto& [name, t] : tensors)
    items.push_back(mxfp4::io::safetensors_item(name, t));
  items.insert(items.end(), raw.begin(), raw.end());
  mxfp4::io::write_safetensors(path, items, metadata);
}

const mxfp4::io::TensorReport& report_for(const mxfp4::io::QuantizeReport& r,
                                          const std::string& name) {
  for (const auto& t : r.tensors) {
    if (t.name == name) return t;
  }
  throw std::runtime_error("no report for " + name);
}

// ---- the example --------------------------------------------------------------------------------

TEST(checkpoint_example, HasTheDocumentedTensorsAndIsDeterministic) {
  TempDir dir;
  const std::string a = dir.file("a.safetensors");
  const std::string b = dir.file("b.safetensors");
  const std::uint64_t size = mxfp4::io::write_example_checkpoint(a);
  mxfp4::io::write_example_checkpoint(b);
  EXPECT_EQ(read_all(a), read_all(b));
  EXPECT_EQ(size, fs::file_size(a));

  const auto f = SafetensorsFile::open(a);
  const std::map<std::string, std::pair<std::string, Shape>> expected = {
      {"layers.0.mlp.up.weight", {"F32", {256, 128}}},
      {"layers.0.mlp.up.bias", {"F32", {256}}},
      {"layers.0.mlp.down.weight", {"BF16", {128, 256}}},
      {"layers.0.mlp.down.bias", {"BF16", {128}}},
      {"experts.weight", {"F32", {4, 64, 128}}},
      {"experts.bias", {"F32", {4, 64}}},
      {"norm.weight", {"F32", {128}}},
      {"embed.weight", {"F32", {100, 40}}},
      {"position_ids", {"I64", {1, 16}}},
  };
  ASSERT_EQ(f.entries().size(), expected.size());
  for (const auto& e : f.entries()) {
    ASSERT_TRUE(expected.count(e.name)) << e.name;
    EXPECT_EQ(e.dtype, expected.at(e.name).first) << e.name;
    EXPECT_EQ(e.shape, expected.at(e.name).second) << e.name;
  }
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  // Weights look like a trained layer's: mean ~0, std ~1/sqrt(K), all finite, not all equal.
  const Tensor up = f.tensor("layers.0.mlp.up.weight");
  double sum = 0, sq = 0;
  for (std::int64_t i = 0; i < up.numel(); ++i) {
    const double v = up.item_as_double(i);
    ASSERT_TRUE(std::isfinite(v));
    sum += v;
    sq += v * v;
  }
  const double mean = sum / static_cast<double>(up.numel());
  const double sd = std::sqrt(sq / static_cast<double>(up.numel()) - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(sd, 1.0 / std::sqrt(128.0), 0.01);
  const Tensor ids = f.tensor("position_ids");
  for (std::int64_t i = 0; i < 16; ++i)
    EXPECT_EQ(ids.data_as<std::int64_t>()[i], i);
}

// ---- quantize -----------------------------------------------------------------------------------

TEST(checkpoint_quantize, ExampleOutputNamesShapesAndReport) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string out = dir.file("out.safetensors");
  mxfp4::io::write_example_checkpoint(in);
  const auto report = mxfp4::io::quantize_checkpoint(in, out);
  EXPECT_EQ(report.rule, mxfp4::kDefaultScaleRule);
  EXPECT_EQ(report.count(TensorAction::quantized), 3u);
  EXPECT_EQ(report.count(TensorAction::skipped), 2u);
  EXPECT_EQ(report.count(TensorAction::copied), 4u);
  EXPECT_EQ(report.quantized_values, 256 * 128 + 128 * 256 + 4 * 64 * 128);
  EXPECT_EQ(report.quantized_bytes_in, 256u * 128 * 4 + 128u * 256 * 2 + 4u * 64 * 128 * 4);
  EXPECT_DOUBLE_EQ(report.bits_per_weight(), 4.25);
  EXPECT_EQ(report.file_bytes_in, fs::file_size(in));
  EXPECT_EQ(report.file_bytes_out, fs::file_size(out));

  const auto& norm = report_for(report, "norm.weight");
  EXPECT_EQ(norm.action, TensorAction::skipped);
  EXPECT_EQ(norm.skip, SkipReason::rank);
  EXPECT_NE(norm.reason.find("rank 1"), std::string::npos) << norm.reason;
  const auto& embed = report_for(report, "embed.weight");
  EXPECT_EQ(embed.action, TensorAction::skipped);
  EXPECT_EQ(embed.skip, SkipReason::k_not_multiple);
  EXPECT_NE(embed.reason.find("K=40"), std::string::npos) << embed.reason;
  EXPECT_EQ(report_for(report, "layers.0.mlp.up.bias").action, TensorAction::copied);
  EXPECT_EQ(report_for(report, "position_ids").action, TensorAction::copied);

  const auto f = SafetensorsFile::open(out);
  const std::map<std::string, std::pair<std::string, Shape>> expected = {
      {"layers.0.mlp.up.blocks", {"U8", {256, 64}}},
      {"layers.0.mlp.up.scales", {"U8", {256, 4}}},
      {"layers.0.mlp.up.bias", {"F32", {256}}},
      {"layers.0.mlp.down.blocks", {"U8", {128, 128}}},
      {"layers.0.mlp.down.scales", {"U8", {128, 8}}},
      {"layers.0.mlp.down.bias", {"BF16", {128}}},
      {"experts.blocks", {"U8", {4, 64, 64}}},
      {"experts.scales", {"U8", {4, 64, 4}}},
      {"experts.bias", {"F32", {4, 64}}},
      {"norm.weight", {"F32", {128}}},
      {"embed.weight", {"F32", {100, 40}}},
      {"position_ids", {"I64", {1, 16}}},
  };
  ASSERT_EQ(f.entries().size(), expected.size());
  std::vector<std::string> order;
  for (const auto& e : f.entries()) {
    ASSERT_TRUE(expected.count(e.name)) << e.name;
    EXPECT_EQ(e.dtype, expected.at(e.name).first) << e.name;
    EXPECT_EQ(e.shape, expected.at(e.name).second) << e.name;
    order.push_back(e.name);
  }
  // The input's order, with blocks and scales where the weight was.
  EXPECT_EQ(order.front(), "layers.0.mlp.up.blocks");
  EXPECT_EQ(order[1], "layers.0.mlp.up.scales");
  EXPECT_EQ(order[2], "layers.0.mlp.up.bias");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at(std::string(mxfp4::io::kScaleRuleMetadataKey)),
            mxfp4::scale_rule_name(mxfp4::kDefaultScaleRule));
  EXPECT_EQ(f.metadata().at(std::string(mxfp4::io::kVersionMetadataKey)), mxfp4::version_string());
}

TEST(checkpoint_quantize, BytesMatchTheLibraryAndOtherTensorsAreCopiedExactly) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  mxfp4::io::write_example_checkpoint(in);
  const auto src = SafetensorsFile::open(in);
  for (mxfp4::ScaleRule rule :
       {mxfp4::ScaleRule::floor, mxfp4::ScaleRule::ceil, mxfp4::ScaleRule::even,
        mxfp4::ScaleRule::mse, mxfp4::ScaleRule::mistralrs}) {
    SCOPED_TRACE(mxfp4::scale_rule_name(rule));
    const std::string out = dir.file(std::string("out_") + mxfp4::scale_rule_name(rule));
    mxfp4::QuantizeOptions options;
    options.rule = rule;
    const auto report = mxfp4::io::quantize_checkpoint(in, out, options);
    EXPECT_EQ(report.rule, rule);
    const auto q = SafetensorsFile::open(out);
    EXPECT_EQ(q.metadata().at("mxfp4.scale_rule"), mxfp4::scale_rule_name(rule));
    for (const std::string p : {"layers.0.mlp.up.", "layers.0.mlp.down.", "experts."}) {
      const Tensor w = src.tensor(p + "weight");
      const mxfp4::QuantizedTensor ref = mxfp4::quantize(w, options);
      const Bytes blocks = entry_bytes(q, p + "blocks");
      const Bytes scales = entry_bytes(q, p + "scales");
      ASSERT_EQ(blocks.size(), ref.blocks.nbytes());
      ASSERT_EQ(scales.size(), ref.scales.nbytes());
      EXPECT_EQ(std::memcmp(blocks.data(), ref.blocks.data(), blocks.size()), 0) << p;
      EXPECT_EQ(std::memcmp(scales.data(), ref.scales.data(), scales.size()), 0) << p;

      // The reported error is that of the decoded weight against the source.
      const Tensor back = mxfp4::Mxfp4Weight::from_parts(ref.blocks, ref.scales).dequantize();
      double signal = 0, noise = 0, max_err = 0;
      for (std::int64_t i = 0; i < w.numel(); ++i) {
        const double x = w.item_as_double(i);
        const double d = x - back.item_as_double(i);
        signal += x * x;
        noise += d * d;
        max_err = std::max(max_err, std::fabs(d));
      }
      const auto& r = report_for(report, p + "weight");
      EXPECT_EQ(r.action, TensorAction::quantized);
      EXPECT_NEAR(r.sqnr_db, 10 * std::log10(signal / noise), 1e-9) << p;
      EXPECT_DOUBLE_EQ(r.max_abs_error, max_err) << p;
      EXPECT_GT(r.sqnr_db, 10.0) << p;  // MXFP4 on Gaussian weights: ~15-20 dB
      EXPECT_LT(r.sqnr_db, 30.0) << p;
      EXPECT_EQ(r.nan_blocks, 0);
      EXPECT_EQ(r.outputs, (std::vector<std::string>{p + "blocks", p + "scales"}));
    }
    for (const std::string name : {"layers.0.mlp.up.bias", "layers.0.mlp.down.bias", "experts.bias",
                                   "norm.weight", "embed.weight", "position_ids"}) {
      EXPECT_EQ(entry_bytes(q, name), entry_bytes(src, name)) << name;
      EXPECT_EQ(q.find(name)->dtype, src.find(name)->dtype) << name;
      EXPECT_EQ(q.find(name)->shape, src.find(name)->shape) << name;
    }
  }
}

TEST(checkpoint_quantize, EverySkipReason) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string out = dir.file("out.safetensors");
  write(in,
        {
            {"weight", values({8, 64}, DType::f16)},           // bare name: quantized
            {"a.weight", values({2, 2, 2, 32}, DType::f32)},   // 4-D
            {"b.weight", values({3}, DType::f32)},             // 1-D
            {"c.weight", Tensor::zeros({4, 32}, DType::i32)},  // integer
            {"e.weight", Tensor::zeros({4, 0}, DType::f32)},   // K = 0
            {"f.weight", values({4, 48}, DType::bf16)},        // K % 32
            {"g.weight", Tensor::zeros({0, 64}, DType::f32)},  // no rows
            {"myweight", values({4, 32}, DType::f32)},         // not P.weight
            {"h.weight.bias", values({4, 32}, DType::f32)},    // not P.weight
            {"i.weight", values({2, 3, 32}, DType::bf16)},     // 3-D: quantized
        },
        {{"d.weight", "F64", {4, 32}, Bytes(4 * 32 * 8, 0)},  // F64
         {"j.weight", "F8_E4M3", {4, 32}, Bytes(4 * 32, 0)},  // F8
         {"k.weight", "U8", {4, 32}, Bytes(4 * 32, 0)}},      // U8
        {{"format", "pt"}, {"mxfp4.scale_rule", "stale"}});
  const auto report = mxfp4::io::quantize_checkpoint(in, out);
  const std::map<std::string, SkipReason> skipped = {
      {"a.weight", SkipReason::rank},         {"b.weight", SkipReason::rank},
      {"c.weight", SkipReason::not_floating}, {"d.weight", SkipReason::unsupported_dtype},
      {"e.weight", SkipReason::k_zero},       {"f.weight", SkipReason::k_not_multiple},
      {"g.weight", SkipReason::empty},        {"j.weight", SkipReason::unsupported_dtype},
      {"k.weight", SkipReason::not_floating},
  };
  const auto src = SafetensorsFile::open(in);
  const auto q = SafetensorsFile::open(out);
  for (const auto& t : report.tensors) {
    SCOPED_TRACE(t.name);
    if (t.name == "weight" || t.name == "i.weight") {
      EXPECT_EQ(t.action, TensorAction::quantized);
      continue;
    }
    const auto it = skipped.find(t.name);
    if (it == skipped.end()) {
      EXPECT_EQ(t.action, TensorAction::copied);
    } else {
      EXPECT_EQ(t.action, TensorAction::skipped);
      EXPECT_EQ(t.skip, it->second) << mxfp4::io::skip_reason_name(t.skip) << ": " << t.reason;
      EXPECT_FALSE(t.reason.empty());
    }
    EXPECT_EQ(entry_bytes(q, t.name), entry_bytes(src, t.name));
  }
  EXPECT_EQ(report.tensors.size(), src.entries().size());
  EXPECT_NE(report_for(report, "d.weight").reason.find("F64"), std::string::npos);
  EXPECT_NE(report_for(report, "f.weight").reason.find("K=48"), std::string::npos);
  ASSERT_NE(q.find("blocks"), nullptr);
  EXPECT_EQ(q.find("blocks")->shape, (Shape{8, 32}));
  EXPECT_EQ(q.find("scales")->shape, (Shape{8, 2}));
  EXPECT_EQ(q.find("i.blocks")->shape, (Shape{2, 3, 16}));
  EXPECT_EQ(q.find("i.scales")->shape, (Shape{2, 3, 1}));
  EXPECT_EQ(q.find("weight"), nullptr);
  EXPECT_EQ(q.metadata().at("mxfp4.scale_rule"), mxfp4::scale_rule_name(mxfp4::kDefaultScaleRule));
  EXPECT_EQ(q.metadata().at("format"), "pt");
}

TEST(checkpoint_quantize, WeightNames) {
  EXPECT_TRUE(mxfp4::io::is_weight_name("weight"));
  EXPECT_TRUE(mxfp4::io::is_weight_name("a.b.weight"));
  EXPECT_TRUE(mxfp4::io::is_weight_name(".weight"));
  EXPECT_FALSE(mxfp4::io::is_weight_name("myweight"));
  EXPECT_FALSE(mxfp4::io::is_weight_name("weights"));
  EXPECT_FALSE(mxfp4::io::is_weight_name("a.weight.b"));
  EXPECT_FALSE(mxfp4::io::is_weight_name(""));
}

TEST(checkpoint_quantize, NameCollisionIsAnError) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string out = dir.file("out.safetensors");
  write(in, {{"p.weight", values({2, 32}, DType::f32)}, {"p.scales", values({1}, DType::f32)}});
  try {
    mxfp4::io::quantize_checkpoint(in, out);
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::FormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("p.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("p.scales"), std::string::npos) << m;
    EXPECT_NE(m.find(in), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(out));
}

TEST(checkpoint_quantize, NonFiniteWeightFailsWithoutOutput) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string out = dir.file("out.safetensors");
  Tensor w = values({4, 64}, DType::f32);
  w.data_as<float>()[2 * 64 + 40] = std::numeric_limits<float>::quiet_NaN();
  write(in, {{"ok.weight", values({2, 32}, DType::f32)}, {"bad.weight", w}});
  try {
    mxfp4::io::quantize_checkpoint(in, out);
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::NonFiniteValue& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("bad.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("NaN"), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(in).parent_path()), {}), 1);

  // An existing output survives the failure.
  mxfp4::io::write_example_checkpoint(out);
  const Bytes before = read_all(out);
  EXPECT_THROW(mxfp4::io::quantize_checkpoint(in, out), mxfp4::NonFiniteValue);
  EXPECT_EQ(read_all(out), before);

  // Inf too, in bf16.
  Tensor inf = values({2, 32}, DType::f32);
  inf.data_as<float>()[5] = -std::numeric_limits<float>::infinity();
  write(in, {{"inf.weight", inf.to(DType::bf16)}});
  EXPECT_THROW(mxfp4::io::quantize_checkpoint(in, dir.file("x")), mxfp4::NonFiniteValue);
  EXPECT_FALSE(fs::exists(dir.file("x")));
}

TEST(checkpoint_quantize, NonFiniteAllowedBecomesNanBlocks) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string out = dir.file("out.safetensors");
  Tensor w = values({2, 64}, DType::f32);
  w.data_as<float>()[64 + 33] = std::numeric_limits<float>::infinity();  // row 1, block 1
  write(in, {{"w.weight", w}});
  mxfp4::QuantizeOptions options;
  options.non_finite = mxfp4::NonFinitePolicy::nan_block;
  const auto report = mxfp4::io::quantize_checkpoint(in, out, options);
  const auto& r = report_for(report, "w.weight");
  EXPECT_EQ(r.action, TensorAction::quantized);
  EXPECT_EQ(r.nan_blocks, 1);
  EXPECT_TRUE(std::isfinite(r.sqnr_db));
  const Bytes scales = entry_bytes(SafetensorsFile::open(out), "w.scales");
  ASSERT_EQ(scales.size(), 4u);
  EXPECT_EQ(scales[3], mxfp4::kScaleNaN);
  EXPECT_NE(scales[0], mxfp4::kScaleNaN);
}

TEST(checkpoint_quantize, InPlaceAndBadInputs) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  mxfp4::io::write_example_checkpoint(path);
  mxfp4::io::quantize_checkpoint(path, path);
  EXPECT_NE(SafetensorsFile::open(path).find("experts.blocks"), nullptr);
  // Quantizing again finds nothing new to do (blocks are U8 and are copied).
  const auto again = mxfp4::io::quantize_checkpoint(path, dir.file("again.safetensors"));
  EXPECT_EQ(again.count(TensorAction::quantized), 0u);
  EXPECT_EQ(again.bits_per_weight(), 0.0);

  EXPECT_THROW(mxfp4::io::quantize_checkpoint(dir.file("absent"), dir.file("o")), mxfp4::IoError);
  write_text(dir.file("junk"), "definitely not a safetensors file");
  EXPECT_THROW(mxfp4::io::quantize_checkpoint(dir.file("junk"), dir.file("o")), mxfp4::FormatError);
  mxfp4::QuantizeOptions bad;
  bad.rule = static_cast<mxfp4::ScaleRule>(99);
  EXPECT_THROW(mxfp4::io::quantize_checkpoint(path, dir.file("o"), bad), mxfp4::InvalidArgument)
      << "rule 99 must be refused";
  EXPECT_FALSE(fs::exists(dir.file("o")));
}

// ---- dequantize ---------------------------------------------------------------------------------

TEST(checkpoint_dequantize, GivesBackTheLibrarysDequantization) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string q = dir.file("q.safetensors");
  mxfp4::io::write_example_checkpoint(in);
  mxfp4::io::quantize_checkpoint(in, q);
  const auto qf = SafetensorsFile::open(q);

  const auto layout = mxfp4::io::find_mxfp4_pairs(qf);
  EXPECT_TRUE(layout.problems.empty());
  ASSERT_EQ(layout.pairs.size(), 3u);
  for (const auto& p : layout.pairs) {
    if (p.prefix == "experts.") {
      EXPECT_TRUE(p.stacked);
      EXPECT_EQ(p.experts, 4);
      EXPECT_EQ(p.n, 64);
      EXPECT_EQ(p.k, 128);
    } else if (p.prefix == "layers.0.mlp.down.") {
      EXPECT_FALSE(p.stacked);
      EXPECT_EQ(p.n, 128);
      EXPECT_EQ(p.k, 256);
    } else {
      EXPECT_EQ(p.prefix, "layers.0.mlp.up.");
      EXPECT_EQ(p.n, 256);
      EXPECT_EQ(p.k, 128);
    }
  }

  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(std::string(mxfp4::dtype_name(dtype)));
    const std::string out = dir.file("d_" + std::string(mxfp4::dtype_name(dtype)));
    const auto report = mxfp4::io::dequantize_checkpoint(q, out, dtype);
    EXPECT_EQ(report.dequantized.size(), 3u);
    EXPECT_EQ(report.copied.size(), 6u);
    EXPECT_EQ(report.file_bytes_out, fs::file_size(out));
    const auto d = SafetensorsFile::open(out);
    EXPECT_EQ(d.entries().size(), 9u);
    for (const std::string p : {"layers.0.mlp.up.", "layers.0.mlp.down.", "experts."}) {
      EXPECT_EQ(d.find(p + "blocks"), nullptr);
      EXPECT_EQ(d.find(p + "scales"), nullptr);
      const auto w =
          mxfp4::Mxfp4Weight::from_parts(qf.tensor(p + "blocks"), qf.tensor(p + "scales"));
      const Tensor expected = mxfp4::dequantize(w, dtype);
      const Tensor got = d.tensor(p + "weight");
      EXPECT_EQ(got.dtype(), dtype);
      EXPECT_EQ(got.shape(), expected.shape());
      ASSERT_EQ(got.nbytes(), expected.nbytes());
      EXPECT_EQ(std::memcmp(got.data(), expected.data(), got.nbytes()), 0) << p;
    }
    for (const std::string name : {"layers.0.mlp.up.bias", "norm.weight", "embed.weight",
                                   "position_ids", "experts.bias", "layers.0.mlp.down.bias"}) {
      EXPECT_EQ(entry_bytes(d, name), entry_bytes(qf, name)) << name;
    }
    EXPECT_EQ(d.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  }

  // f32 dequantization of f32 weights is close to the original: the error the report gave.
  const auto src = SafetensorsFile::open(in);
  const auto d = SafetensorsFile::open(dir.file("d_f32"));
  const Tensor orig = src.tensor("layers.0.mlp.up.weight");
  const Tensor back = d.tensor("layers.0.mlp.up.weight");
  double max_err = 0;
  for (std::int64_t i = 0; i < orig.numel(); ++i) {
    max_err = std::max(max_err, std::fabs(orig.item_as_double(i) - back.item_as_double(i)));
  }
  EXPECT_GT(max_err, 0.0);
  EXPECT_LT(max_err, 0.25);
}

TEST(checkpoint_dequantize, UnpairedOrInvalidPairsAreErrors) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string out = dir.file("out.safetensors");
  auto expect_error = [&](const std::vector<std::string>& fragments) {
    try {
      mxfp4::io::dequantize_checkpoint(in, out);
      ADD_FAILURE() << "no error";
    } catch (const mxfp4::FormatError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(in), std::string::npos) << m;
      for (const auto& f : fragments)
        EXPECT_NE(m.find(f), std::string::npos) << f << " in " << m;
    }
    EXPECT_FALSE(fs::exists(out));
  };
  write(in, {{"x.blocks", Tensor::zeros({2, 16}, DType::u8)}});
  expect_error({"x.blocks", "x.scales"});
  write(in, {{"x.scales", Tensor::zeros({2, 1}, DType::u8)}});
  expect_error({"x.scales", "x.blocks"});
  write(in, {{"x.blocks", Tensor::zeros({2, 16}, DType::u8)},
             {"x.scales", Tensor::zeros({2, 2}, DType::u8)}});  // K=64 needs 32 bytes of blocks
  expect_error({"x.blocks", "x.scales", "[2, 16]"});
  write(in, {{"x.blocks", Tensor::zeros({2, 16}, DType::f32)},
             {"x.scales", Tensor::zeros({2, 1}, DType::u8)}});
  expect_error({"x.blocks", "U8"});
  write(in, {{"x.blocks", Tensor::zeros({16}, DType::u8)},
             {"x.scales", Tensor::zeros({1}, DType::u8)}});
  expect_error({"x.blocks"});
  write(in, {{"x.blocks", Tensor::zeros({2, 16}, DType::u8)},
             {"x.scales", Tensor::zeros({2, 1}, DType::u8)},
             {"x.weight", Tensor::zeros({2, 32}, DType::f32)}});
  expect_error({"x.weight", "already"});

  // Fixed, the same file dequantizes. Byte 0x21: low nibble code 1 = 0.5 (element 0), high
  // nibble code 2 = 1.0 (element 1); row 0 has scale 2^(128-127) = 2, row 1 scale 1.
  write(in, {{"x.blocks",
              Tensor::from_vector<std::uint8_t>(std::vector<std::uint8_t>(32, 0x21), {2, 16})},
             {"x.scales", Tensor::from_vector<std::uint8_t>({128, 127}, {2, 1})}});
  mxfp4::io::dequantize_checkpoint(in, out);
  const Tensor w = SafetensorsFile::open(out).tensor("x.weight");
  ASSERT_EQ(w.shape(), (Shape{2, 32}));
  const float* v = w.data_as<float>();
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], 2.0f);
  EXPECT_EQ(v[31], 2.0f);
  EXPECT_EQ(v[32], 0.5f);
  EXPECT_EQ(v[33], 1.0f);
  EXPECT_THROW(mxfp4::io::dequantize_checkpoint(in, dir.file("o"), DType::u8),
               mxfp4::DTypeMismatch);
}

}  // namespace

// ---- GPTQ: a Hessians file ----------------------------------------------------------------------

namespace gptq {

// H = X^T X of activations [rows, k] whose columns share a component (so GPTQ moves error).
mxfp4::Hessian hessian_of(std::int64_t k, std::int64_t rows) {
  Tensor x = values({rows, k}, DType::f32);
  const Tensor shared = values({rows}, DType::f32, 3.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < k; ++c)
      x.data_as<float>()[r * k + c] += shared.data_as<float>()[(r * 7 + 3) % rows];
  }
  mxfp4::Hessian h(k);
  h.add(x);
  return h;
}

// An F64 safetensors item viewing `v` (which must outlive the write).
mxfp4::io::SafetensorsItem f64_item(const std::string& name, const std::vector<double>& v,
                                    std::int64_t k) {
  return {name,
          "F64",
          {k, k},
          std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(v.data()),
                                        v.size() * sizeof(double))};
}

}  // namespace gptq

TEST(checkpoint_gptq, NamedWeightsGetQuantizeGptqsBytesOthersRoundToNearest) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string hessians = dir.file("h.safetensors");
  mxfp4::io::write_example_checkpoint(in);
  const auto src = SafetensorsFile::open(in);
  // up (F32 [256, 128]) with an F32 Hessian, down (BF16 [128, 256]) with an F64 one.
  const mxfp4::Hessian h_up = gptq::hessian_of(128, 400);
  const mxfp4::Hessian h_down = gptq::hessian_of(256, 600);
  const Tensor up32 = h_up.to_tensor();
  write(hessians, {{"layers.0.mlp.up.weight", up32}},
        {gptq::f64_item("layers.0.mlp.down.weight", h_down.values(), 256)});

  for (mxfp4::ScaleRule rule : {mxfp4::ScaleRule::mse, mxfp4::ScaleRule::floor}) {
    for (double damp : {0.01, 0.1}) {
      SCOPED_TRACE(std::string(mxfp4::scale_rule_name(rule)) + " damp " + std::to_string(damp));
      const std::string out = dir.file("out.safetensors");
      mxfp4::io::CheckpointQuantizeOptions options;
      options.quantize.rule = rule;
      options.hessians = hessians;
      options.damp = damp;
      const auto report = mxfp4::io::quantize_checkpoint(in, out, options);
      const auto q = SafetensorsFile::open(out);
      const mxfp4::GptqOptions go{rule, damp};
      const mxfp4::Mxfp4Weight up = mxfp4::quantize_gptq(src.tensor("layers.0.mlp.up.weight"),
                                                         mxfp4::Hessian::from_tensor(up32), {}, go);
      const mxfp4::Mxfp4Weight down =
          mxfp4::quantize_gptq(src.tensor("layers.0.mlp.down.weight"),
                               mxfp4::Hessian::from_values(256, h_down.values()), {}, go);
      EXPECT_EQ(entry_bytes(q, "layers.0.mlp.up.blocks"), bytes_of(up.blocks()));
      EXPECT_EQ(entry_bytes(q, "layers.0.mlp.up.scales"), bytes_of(up.scales()));
      EXPECT_EQ(entry_bytes(q, "layers.0.mlp.down.blocks"), bytes_of(down.blocks()));
      EXPECT_EQ(entry_bytes(q, "layers.0.mlp.down.scales"), bytes_of(down.scales()));
      // GPTQ changed something: not the round-to-nearest bytes.
      const mxfp4::QuantizedTensor up_rtn =
          mxfp4::quantize(src.tensor("layers.0.mlp.up.weight"), {rule});
      EXPECT_NE(entry_bytes(q, "layers.0.mlp.up.blocks"), bytes_of(up_rtn.blocks));
      // Weights without a Hessian: round to nearest, as before.
      const mxfp4::QuantizedTensor experts = mxfp4::quantize(src.tensor("experts.weight"), {rule});
      EXPECT_EQ(entry_bytes(q, "experts.blocks"), bytes_of(experts.blocks));
      EXPECT_EQ(entry_bytes(q, "experts.scales"), bytes_of(experts.scales));
      for (const std::string name : {"layers.0.mlp.up.bias", "layers.0.mlp.down.bias",
                                     "experts.bias", "norm.weight", "position_ids"}) {
        EXPECT_EQ(entry_bytes(q, name), entry_bytes(src, name)) << name;
      }
      using mxfp4::io::QuantizeMethod;
      EXPECT_EQ(report_for(report, "layers.0.mlp.up.weight").method, QuantizeMethod::gptq);
      EXPECT_EQ(report_for(report, "layers.0.mlp.down.weight").method, QuantizeMethod::gptq);
      EXPECT_EQ(report_for(report, "experts.weight").method, QuantizeMethod::rtn);
      EXPECT_EQ(report_for(report, "experts.weight").action, TensorAction::quantized);
      // The error columns describe the GPTQ weight (worse per weight than round to nearest,
      // which minimises exactly that, but still MXFP4-sized).
      const auto& r = report_for(report, "layers.0.mlp.up.weight");
      EXPECT_GT(r.sqnr_db, 5.0);
      EXPECT_LT(r.sqnr_db, 30.0);
      EXPECT_EQ(report.count(TensorAction::quantized), 3u);
    }
  }
  EXPECT_STREQ(mxfp4::io::quantize_method_name(mxfp4::io::QuantizeMethod::rtn), "rtn");
  EXPECT_STREQ(mxfp4::io::quantize_method_name(mxfp4::io::QuantizeMethod::gptq), "gptq");
}

// A stack of experts [E, N, K] named in the Hessians file takes [E, K, K], one Hessian per expert
// (F32 or F64): byte for byte quantize_gptq(weight, std::vector<Hessian>), the bias carried over.
TEST(checkpoint_gptq, StackedExpertsTakeOneHessianPerExpert) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string hessians = dir.file("h.safetensors");
  const std::string out = dir.file("out.safetensors");
  mxfp4::io::write_example_checkpoint(in);
  const auto src = SafetensorsFile::open(in);
  const Tensor experts = src.tensor("experts.weight");
  ASSERT_EQ(experts.shape(), (mxfp4::Shape{4, 64, 128}));
  std::vector<mxfp4::Hessian> hs;
  std::vector<double> f64;
  for (std::int64_t e = 0; e < 4; ++e) {
    hs.push_back(gptq::hessian_of(128, 200 + 50 * e));
    f64.insert(f64.end(), hs.back().values().begin(), hs.back().values().end());
  }
  const std::span<const std::uint8_t> f64_bytes(reinterpret_cast<const std::uint8_t*>(f64.data()),
                                                f64.size() * sizeof(double));
  Tensor f32 = Tensor::empty({4, 128, 128}, DType::f32);
  for (std::size_t i = 0; i < f64.size(); ++i)
    f32.data_as<float>()[i] = static_cast<float>(f64[i]);
  for (const bool use_f64 : {false, true}) {
    SCOPED_TRACE(use_f64 ? "F64" : "F32");
    if (use_f64) {
      write(hessians, {}, {{"experts.weight", "F64", {4, 128, 128}, f64_bytes}});
    } else {
      write(hessians, {{"experts.weight", f32}});
    }
    // The F32 file holds each H rounded to f32: the reference reads it the same way.
    std::vector<mxfp4::Hessian> want;
    for (std::int64_t e = 0; e < 4; ++e) {
      want.push_back(use_f64 ? hs[static_cast<std::size_t>(e)]
                             : mxfp4::Hessian::from_tensor(
                                   f32.slice_rows(e, e + 1).reshape({128, 128}).clone()));
    }
    mxfp4::io::CheckpointQuantizeOptions options;
    options.quantize.rule = mxfp4::ScaleRule::ceil;
    options.hessians = hessians;
    options.damp = 0.05;
    const auto report = mxfp4::io::quantize_checkpoint(in, out, options);
    const auto q = SafetensorsFile::open(out);
    const mxfp4::Mxfp4Weight ref =
        mxfp4::quantize_gptq(experts, want, {}, mxfp4::GptqOptions{mxfp4::ScaleRule::ceil, 0.05});
    EXPECT_EQ(entry_bytes(q, "experts.blocks"), bytes_of(ref.blocks()));
    EXPECT_EQ(entry_bytes(q, "experts.scales"), bytes_of(ref.scales()));
    EXPECT_EQ(entry_bytes(q, "experts.bias"), entry_bytes(src, "experts.bias"));
    const mxfp4::QuantizedTensor rtn = mxfp4::quantize(experts, {mxfp4::ScaleRule::ceil});
    EXPECT_NE(entry_bytes(q, "experts.blocks"), bytes_of(rtn.blocks));
    using mxfp4::io::QuantizeMethod;
    EXPECT_EQ(report_for(report, "experts.weight").method, QuantizeMethod::gptq);
    EXPECT_EQ(report_for(report, "layers.0.mlp.up.weight").method, QuantizeMethod::rtn);
    EXPECT_EQ(
        entry_bytes(q, "layers.0.mlp.up.blocks"),
        bytes_of(mxfp4::quantize(src.tensor("layers.0.mlp.up.weight"), {mxfp4::ScaleRule::ceil})
                     .blocks));
  }
}

TEST(checkpoint_gptq, BadHessiansAreErrorsBeforeAnyOutput) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors");
  const std::string hessians = dir.file("h.safetensors");
  const std::string out = dir.file("out.safetensors");
  mxfp4::io::write_example_checkpoint(in);
  const Tensor good = gptq::hessian_of(128, 300).to_tensor();

  // Runs quantize_checkpoint with a Hessians file of `tensors`; expects an error of type E whose
  // message holds `part`, and no output.
  const auto expect_error = [&](const std::vector<std::pair<std::string, Tensor>>& tensors,
                                const std::string& part, auto error_type, double damp = 0.01,
                                const std::string& exclude = "") {
    using E = decltype(error_type);
    write(hessians, tensors);
    mxfp4::io::CheckpointQuantizeOptions options;
    options.hessians = hessians;
    options.damp = damp;
    options.exclude = exclude;
    try {
      mxfp4::io::quantize_checkpoint(in, out, options);
      ADD_FAILURE() << "no error for " << part;
    } catch (const E& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(out)) << part;
  };
  const mxfp4::InvalidArgument invalid("");
  const mxfp4::ShapeMismatch shape("");
  expect_error({{"layers.9.weight", good}},
               "Hessian 'layers.9.weight' names no weight of the input to quantize", invalid);
  expect_error({{"norm.weight", good}},
               "'norm.weight' names a tensor that is not quantized (skipped: rank 1", invalid);
  expect_error({{"layers.0.mlp.up.bias", good}}, "not quantized (not a P.weight)", invalid);
  expect_error({{"layers.0.mlp.up.weight", good}}, "(skipped: matches --exclude 'up')", invalid,
               0.01, "up");
  // A stack of experts takes [E, K, K]: one matrix, or the wrong count, is named with both shapes.
  expect_error({{"experts.weight", good}},
               "Hessian 'experts.weight' is [128, 128] but weight F32 [4, 64, 128] (a stack of 4 "
               "experts, one Hessian each) needs [E, K, K] = [4, 128, 128]",
               shape);
  expect_error({{"experts.weight", Tensor::zeros({3, 128, 128}, DType::f32)}},
               "is [3, 128, 128] but weight F32 [4, 64, 128]", shape);
  expect_error({{"layers.0.mlp.up.weight", Tensor::zeros({1, 128, 128}, DType::f32)}},
               "is [1, 128, 128] but weight F32 [256, 128] needs [K, K] = [128, 128]", shape);
  expect_error({{"layers.0.mlp.down.weight", good}},
               "is [128, 128] but weight BF16 [128, 256] needs [K, K] = [256, 256]", shape);
  expect_error({{"layers.0.mlp.up.weight", Tensor::zeros({128, 64}, DType::f32)}}, "is [128, 64]",
               shape);
  expect_error({{"layers.0.mlp.up.weight", good.to(DType::bf16)}},
               "is BF16; Hessians must be F32 or F64", mxfp4::DTypeMismatch(""));
  expect_error({{"layers.0.mlp.up.weight", good}}, "damp must be finite and >= 0", invalid, -1.0);
  // Found while quantizing: NaN, not positive definite. Still nothing is written.
  Tensor nan = good.clone();
  nan.data_as<float>()[5 * 128 + 2] = std::numeric_limits<float>::quiet_NaN();
  expect_error({{"layers.0.mlp.up.weight", nan}},
               "tensor 'layers.0.mlp.up.weight': Hessian::from_values: hessian holds NaN at row 5, "
               "column 2",
               mxfp4::NonFiniteValue(""));
  Tensor indefinite = Tensor::zeros({128, 128}, DType::f32);
  for (int i = 0; i < 128; ++i)
    indefinite.data_as<float>()[i * 128 + i] = 1.0f;
  indefinite.data_as<float>()[1] = indefinite.data_as<float>()[128] = 2.0f;
  expect_error({{"layers.0.mlp.up.weight", indefinite}}, "not positive definite", invalid, 0.0);
  // In a stack, the expert whose Hessian fails is named.
  Tensor stack = Tensor::zeros({4, 128, 128}, DType::f32);
  for (std::int64_t e = 0; e < 4; ++e) {
    std::memcpy(stack.data_as<float>() + e * 128 * 128,
                (e == 2 ? indefinite : good).data_as<float>(), 128 * 128 * sizeof(float));
  }
  expect_error({{"experts.weight", stack}},
               "tensor 'experts.weight': quantize_gptq: expert 2: quantize_gptq: hessian is not "
               "positive definite",
               invalid, 0.0);
  // Experts go in order, each Hessian read when its turn comes: expert 2 fails before expert 3's
  // Inf is seen; with expert 2 mended, expert 3's Inf is the error.
  stack.data_as<float>()[3 * 128 * 128 + 7 * 128 + 1] = std::numeric_limits<float>::infinity();
  expect_error({{"experts.weight", stack}},
               "tensor 'experts.weight': quantize_gptq: expert 2: quantize_gptq: hessian is not "
               "positive definite",
               invalid, 0.0);
  std::memcpy(stack.data_as<float>() + 2 * 128 * 128, good.data(), good.nbytes());
  expect_error({{"experts.weight", stack}},
               "tensor 'experts.weight': quantize_gptq: expert 3: Hessian::from_values: hessian "
               "holds +Inf at row 7, column 1",
               mxfp4::NonFiniteValue(""));

  // An absent file; an existing output survives a failure.
  mxfp4::io::CheckpointQuantizeOptions options;
  options.hessians = dir.file("absent.safetensors");
  EXPECT_THROW(mxfp4::io::quantize_checkpoint(in, out, options), mxfp4::IoError);
  EXPECT_FALSE(fs::exists(out));
  mxfp4::io::write_example_checkpoint(out);
  const Bytes before = read_all(out);
  write(hessians, {{"experts.weight", good}});
  options.hessians = hessians;
  EXPECT_THROW(mxfp4::io::quantize_checkpoint(in, out, options), mxfp4::ShapeMismatch);
  EXPECT_EQ(read_all(out), before);
}
