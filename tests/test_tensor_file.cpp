// The front ends' file seam (src/io/tensor_file.hpp) in every format: save named tensors and
// weights, open the file (by content and by name), and get the same weight bytes, dense tensors
// and metadata back; plus the errors of formats that cannot hold what they are given.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "io/tensor_file.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/weight.hpp"
#include "test_files.hpp"
#include "test_numbers.hpp"

namespace {

namespace fs = std::filesystem;
using mxfp4::Device;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;
using mxfp4::detail::FileFormat;
using mxfp4::detail::NamedTensor;
using namespace mxfp4::test;

struct Fixture {
  Mxfp4Weight dense;    // [48, 64] with an f32 bias
  Mxfp4Weight experts;  // [3, 16, 96] without a bias
  Tensor norm;          // f32 [8]
  Fixture()
      : dense(
            Mxfp4Weight::quantize(random_normal({48, 64}, 1, 1.5f), random_normal({48}, 2, 1.5f))),
        experts(Mxfp4Weight::quantize(random_normal({3, 16, 96}, 3, 1.5f))),
        norm(random_normal({8}, 4, 1.5f)) {}
  std::vector<NamedTensor> tensors(bool with_dense) const {
    std::vector<NamedTensor> out;
    mxfp4::detail::append_weight(out, "model.layers.0.proj", dense);
    if (with_dense) out.push_back({"model.norm.weight", norm});
    mxfp4::detail::append_weight(out, "model.layers.0.experts", experts);
    return out;
  }
};

struct Case {
  FileFormat format;
  const char* file;
  bool dense_tensors;  // whether the format holds dense tensors
};

constexpr Case kCases[] = {
    {FileFormat::safetensors, "m.safetensors", true},
    {FileFormat::gguf, "m.gguf", true},
    {FileFormat::uqff1, "m.uqff", true},
    {FileFormat::gptoss, "gptoss.safetensors", true},
    {FileFormat::uqff_legacy, "legacy.uqff", false},
};

TEST(TensorFile, EveryFormatRoundTripsWeightsTensorsAndMetadataBitExactly) {
  const Fixture f;
  for (const Case& c : kCases) {
    SCOPED_TRACE(mxfp4::detail::file_format_name(c.format));
    TempDir dir;
    const std::string path = dir.file(c.file);
    const std::uint64_t size = mxfp4::detail::save_tensor_file(
        path, c.format, f.tensors(c.dense_tensors), {{"note", "seam test"}});
    EXPECT_EQ(size, fs::file_size(path));
    EXPECT_EQ(dir.listing().size(), 1u);  // no temporary file left behind

    // auto reads GGUF and UQFF 1.x by content; GPT-OSS and legacy UQFF files stay safetensors.
    const bool by_content = c.format == FileFormat::safetensors || c.format == FileFormat::gguf ||
                            c.format == FileFormat::uqff1;
    if (!by_content) {
      EXPECT_EQ(mxfp4::detail::open_tensor_file(path)->format(), FileFormat::safetensors);
    }
    for (FileFormat open_as : {by_content ? FileFormat::auto_detect : c.format, c.format}) {
      const auto r = mxfp4::detail::open_tensor_file(path, open_as);
      EXPECT_EQ(r->format(), c.format);
      EXPECT_EQ(r->source(), path);
      EXPECT_EQ(r->weight_names(),
                (std::vector<std::string>{"model.layers.0.proj", "model.layers.0.experts"}));
      expect_same_weight(r->load_weight("model.layers.0.proj", Device::cpu()), f.dense);
      expect_same_weight(r->load_weight("model.layers.0.experts", Device::cpu()), f.experts);
      // The parts under their linear names, whatever the file calls them.
      EXPECT_EQ(bytes_of(r->read("model.layers.0.proj.blocks")), bytes_of(f.dense.blocks()));
      EXPECT_EQ(bytes_of(r->read("model.layers.0.experts.scales")), bytes_of(f.experts.scales()));
      EXPECT_EQ(bytes_of(r->read("model.layers.0.proj.bias")), bytes_of(*f.dense.bias()));
      const auto i = r->find("model.layers.0.experts.blocks");
      ASSERT_TRUE(i.has_value());
      EXPECT_EQ(r->tensors()[*i].shape, (Shape{3, 16, 48}));
      EXPECT_EQ(r->tensors()[*i].nbytes, 3u * 16u * 48u);
      if (c.dense_tensors) {
        const Tensor norm = r->read("model.norm.weight");
        EXPECT_EQ(norm.dtype(), DType::f32);
        EXPECT_EQ(norm.shape(), (Shape{8}));
        EXPECT_EQ(bytes_of(norm), bytes_of(f.norm));
        EXPECT_EQ(r->tensors().size(), 6u);
      } else {
        EXPECT_EQ(r->tensors().size(), 5u);
      }
      ASSERT_EQ(r->metadata().count("note"), 1u);
      EXPECT_EQ(r->metadata().at("note"), "seam test");
      EXPECT_THROW(r->read("model.layers.0.absent"), mxfp4::InvalidArgument);
      EXPECT_THROW(r->load_weight("model.norm", Device::cpu()), mxfp4::InvalidArgument);
    }
  }
}

TEST(TensorFile, GpuLayoutWeightsAreSavedWithTheStandardBytesInEveryFormat) {
  const Fixture f;
  Fixture g;
  g.dense = f.dense.with_layout(mxfp4::BlockLayout::gpu);
  g.experts = f.experts.with_layout(mxfp4::BlockLayout::gpu);
  ASSERT_NE(bytes_of(g.dense.blocks()), bytes_of(f.dense.blocks()));
  for (const Case& c : kCases) {
    SCOPED_TRACE(mxfp4::detail::file_format_name(c.format));
    TempDir dir;
    const std::string standard = dir.file(std::string("std_") + c.file);
    const std::string gpu = dir.file(std::string("gpu_") + c.file);
    mxfp4::detail::save_tensor_file(standard, c.format, f.tensors(c.dense_tensors), {});
    mxfp4::detail::save_tensor_file(gpu, c.format, g.tensors(c.dense_tensors), {});
    EXPECT_EQ(read_all(gpu), read_all(standard));
    const auto r = mxfp4::detail::open_tensor_file(gpu, c.format);
    const Mxfp4Weight back = r->load_weight("model.layers.0.proj", Device::cpu());
    EXPECT_EQ(back.layout(), mxfp4::BlockLayout::standard);
    expect_same_weight(back, f.dense);
    expect_same_weight(r->load_weight("model.layers.0.experts", Device::cpu()), f.experts);
  }
  // append_weight shares what it can: the scales and bias, not the converted blocks.
  std::vector<NamedTensor> parts;
  mxfp4::detail::append_weight(parts, "p", g.dense);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(bytes_of(parts[0].tensor), bytes_of(f.dense.blocks()));
  EXPECT_EQ(parts[1].tensor.data(), g.dense.scales().data());
  EXPECT_EQ(parts[2].tensor.data(), g.dense.bias()->data());
}

TEST(TensorFile, SaveTellsTheFormatFromTheExtension) {
  const Fixture f;
  TempDir dir;
  const std::map<std::string, FileFormat> expected = {{"a.safetensors", FileFormat::safetensors},
                                                      {"a.gguf", FileFormat::gguf},
                                                      {"a.uqff", FileFormat::uqff1}};
  for (const auto& [name, format] : expected) {
    SCOPED_TRACE(name);
    mxfp4::detail::save_tensor_file(dir.file(name), FileFormat::auto_detect, f.tensors(true));
    EXPECT_EQ(mxfp4::detail::open_tensor_file(dir.file(name))->format(), format);
  }
  EXPECT_THROW(
      mxfp4::detail::save_tensor_file(dir.file("a.bin"), FileFormat::auto_detect, f.tensors(true)),
      mxfp4::InvalidArgument);
}

TEST(TensorFile, FormatsRefuseWhatTheyCannotHoldAndLeaveNoFile) {
  const Fixture f;
  TempDir dir;
  // Legacy UQFF holds MXFP4 weights only.
  EXPECT_THROW(
      mxfp4::detail::save_tensor_file(dir.file("x.uqff"), FileFormat::uqff_legacy, f.tensors(true)),
      mxfp4::InvalidArgument);
  // GGUF has no u8 tensor type.
  std::vector<NamedTensor> bytes = {{"raw", Tensor::zeros({4}, DType::u8)}};
  EXPECT_THROW(mxfp4::detail::save_tensor_file(dir.file("x.gguf"), FileFormat::gguf, bytes),
               mxfp4::InvalidArgument);
  // Parts that do not make a weight are named.
  std::vector<NamedTensor> broken = {{"w.blocks", Tensor::zeros({4, 16}, DType::u8)},
                                     {"w.scales", Tensor::zeros({4, 3}, DType::u8)}};
  try {
    mxfp4::detail::save_tensor_file(dir.file("y.gguf"), FileFormat::gguf, broken);
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("w.blocks"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.listing().size(), 0u);
}

TEST(TensorFile, OpeningInTheWrongFormatIsAFormatError) {
  const Fixture f;
  TempDir dir;
  mxfp4::detail::save_tensor_file(dir.file("m.safetensors"), FileFormat::safetensors,
                                  f.tensors(true));
  mxfp4::detail::save_tensor_file(dir.file("m.gguf"), FileFormat::gguf, f.tensors(true));
  EXPECT_THROW(mxfp4::detail::open_tensor_file(dir.file("m.safetensors"), FileFormat::gguf),
               mxfp4::FormatError);
  EXPECT_THROW(mxfp4::detail::open_tensor_file(dir.file("m.gguf"), FileFormat::safetensors),
               mxfp4::FormatError);
  EXPECT_THROW(mxfp4::detail::open_tensor_file(dir.file("absent.gguf"), FileFormat::gguf),
               mxfp4::IoError);
  EXPECT_THROW(mxfp4::detail::open_tensor_file(dir.file("absent.gguf")), mxfp4::IoError);
}

TEST(TensorFile, FormatNamesAndNumbers) {
  for (FileFormat fmt : {FileFormat::auto_detect, FileFormat::safetensors, FileFormat::gguf,
                         FileFormat::uqff1, FileFormat::gptoss, FileFormat::uqff_legacy}) {
    EXPECT_EQ(mxfp4::detail::parse_file_format(mxfp4::detail::file_format_name(fmt)), fmt);
    EXPECT_EQ(mxfp4::detail::file_format_from_int(static_cast<int>(fmt)), fmt);
  }
  EXPECT_EQ(std::string(mxfp4::detail::file_format_name(FileFormat::uqff_legacy)), "uqff-legacy");
  EXPECT_THROW(mxfp4::detail::parse_file_format("ggml"), mxfp4::InvalidArgument);
  EXPECT_THROW(mxfp4::detail::file_format_from_int(6), mxfp4::InvalidArgument);
}

}  // namespace
