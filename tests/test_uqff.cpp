// UQFF: golden bytes of the legacy MXFP4 blob built by hand from FORMATS.md section 4, the
// reader's version rule and its refusal of every kind of corrupt blob, legacy .uqff files of
// blobs, and UQFF 1.x on safetensors (names, dtypes and shapes checked tensor by tensor).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/io/uqff.hpp"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"

namespace {

using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;
using namespace mxfp4::io;
using namespace mxfp4::test;

struct Builder : LittleEndianBuilder<Builder> {
  // A blob tensor: data length, dtype code, ndims, dims, data.
  Builder& tensor(std::uint32_t code, std::vector<std::uint32_t> dims, const Bytes& data) {
    u32(static_cast<std::uint32_t>(data.size()))
        .u32(code)
        .u32(static_cast<std::uint32_t>(dims.size()));
    for (auto d : dims)
      u32(d);
    return raw(data);
  }
};

Bytes iota_bytes(std::size_t n, std::uint8_t start) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i)
    b[i] = static_cast<std::uint8_t>(start + i * 37);
  return b;
}

void expect_blob_error(const Bytes& blob, const std::string& needle) {
  try {
    deserialize_uqff_blob(blob, "b");
    ADD_FAILURE() << "deserialized, but expected an error containing '" << needle << "'";
  } catch (const mxfp4::FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("UQFF blob 'b'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
  }
}

// ---- golden bytes -------------------------------------------------------------------------------

TEST(UqffBlob, GoldenBytesWithBias) {
  // N = 2, K = 32: blocks u8 [2, 16], scales u8 [2, 1], bias bf16 [2].
  const Bytes blocks = iota_bytes(32, 3), scales = {0x7E, 0x81};
  const std::vector<std::uint16_t> bias_bits = {0x3F80, 0xC000};  // bf16 1.0, -2.0
  Tensor bias = Tensor::empty({2}, DType::bf16);
  std::memcpy(bias.data(), bias_bits.data(), 4);
  const Mxfp4Weight w = Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {2, 16}),
                                                Tensor::from_vector(scales, {2, 1}), bias);
  // Written out byte by byte from the layout description.
  Bytes expected = {
      0x00, 0x02, 0x00, 0x00,  // version 0.2.0 = 0x00000200, little-endian
      0x06,                    // quantized type Mxfp4
      0x01,                    // has_bias
      0x20, 0x00, 0x00, 0x00,  // blocks: 32 bytes
      0x00, 0x00, 0x00, 0x00,  //   dtype U8 = 0
      0x02, 0x00, 0x00, 0x00,  //   2 dims
      0x02, 0x00, 0x00, 0x00,  //   2
      0x10, 0x00, 0x00, 0x00,  //   16
  };
  expected.insert(expected.end(), blocks.begin(), blocks.end());
  const Bytes scales_header = {
      0x02, 0x00, 0x00, 0x00,  // scales: 2 bytes
      0x00, 0x00, 0x00, 0x00,  //   U8
      0x02, 0x00, 0x00, 0x00,  //   2 dims
      0x02, 0x00, 0x00, 0x00,  //   2
      0x01, 0x00, 0x00, 0x00,  //   1
      0x7E, 0x81,              //   data
      0x04, 0x00, 0x00, 0x00,  // bias: 4 bytes
      0x05, 0x00, 0x00, 0x00,  //   BF16 = 5
      0x01, 0x00, 0x00, 0x00,  //   1 dim
      0x02, 0x00, 0x00, 0x00,  //   2
      0x80, 0x3F, 0x00, 0xC0,  //   1.0, -2.0
  };
  expected.insert(expected.end(), scales_header.begin(), scales_header.end());

  EXPECT_EQ(serialize_uqff_blob(w), expected);
  const Mxfp4Weight back = deserialize_uqff_blob(expected);
  expect_same_weight(back, w);
  const UqffBlob view = parse_uqff_blob(expected);
  EXPECT_EQ(view.version, (UqffVersion{0, 2, 0}));
  EXPECT_EQ(view.blocks.dtype, UqffDType::u8);
  EXPECT_EQ(view.blocks.shape, (Shape{2, 16}));
  ASSERT_TRUE(view.bias.has_value());
  EXPECT_EQ(view.bias->dtype, UqffDType::bf16);
  EXPECT_EQ(view.bias->data.data(), expected.data() + expected.size() - 4);  // a view
}

TEST(UqffBlob, GoldenBytesStackedWithoutBias) {
  // E = 2, N = 1, K = 64: blocks u8 [2, 1, 32], scales u8 [2, 1, 2]; no bias.
  const Bytes blocks = iota_bytes(64, 11), scales = {1, 2, 0xFF, 0};
  const Mxfp4Weight w = Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {2, 1, 32}),
                                                Tensor::from_vector(scales, {2, 1, 2}));
  Builder e;
  e.u32(0x00000200).u8(6).u8(0);
  e.u32(64).u32(0).u32(3).u32(2).u32(1).u32(32).raw(blocks);
  e.u32(4).u32(0).u32(3).u32(2).u32(1).u32(2).raw(scales);
  EXPECT_EQ(serialize_uqff_blob(w), e.b);
  expect_same_weight(deserialize_uqff_blob(e.b), w);
}

TEST(UqffBlob, RoundTripsEveryBiasDtype) {
  for (std::optional<DType> bias :
       {std::optional<DType>{}, std::optional<DType>{DType::f32}, std::optional<DType>{DType::f16},
        std::optional<DType>{DType::bf16}}) {
    for (const Shape& shape : {Shape{5, 64}, Shape{3, 4, 96}}) {
      const Mxfp4Weight w = random_weight(shape, 17, bias);
      const Bytes blob = serialize_uqff_blob(w);
      expect_same_weight(deserialize_uqff_blob(blob), w);
      EXPECT_EQ(serialize_uqff_blob(deserialize_uqff_blob(blob)), blob);
    }
  }
}

// ---- the reader's rules -------------------------------------------------------------------------

Bytes minimal_blob(std::uint32_t version = 0x200, std::uint8_t type = 6,
                   std::uint8_t has_bias = 0) {
  Builder b;
  b.u32(version).u8(type).u8(has_bias);
  b.tensor(0, {1, 16}, Bytes(16, 0x21)).tensor(0, {1, 1}, {127});
  return b.b;
}

TEST(UqffBlob, VersionRule) {
  EXPECT_NO_THROW(deserialize_uqff_blob(minimal_blob(0x000200)));
  EXPECT_NO_THROW(deserialize_uqff_blob(minimal_blob(0x000100)));  // older minor
  EXPECT_NO_THROW(deserialize_uqff_blob(minimal_blob(0x0002FF)));  // patch ignored
  EXPECT_EQ(parse_uqff_blob(minimal_blob(0x000107)).version, (UqffVersion{0, 1, 7}));
  expect_blob_error(minimal_blob(0x000300), "newer than this reader");
  expect_blob_error(minimal_blob(0x010200), "major 1");
  expect_blob_error(minimal_blob(0xFFFF0000), "major 65535");
}

TEST(UqffBlob, HeaderBytes) {
  expect_blob_error(minimal_blob(0x200, 1), "quantized type 1 is not MXFP4 (6)");
  expect_blob_error(minimal_blob(0x200, 0), "quantized type 0");
  expect_blob_error(minimal_blob(0x200, 6, 2), "has_bias byte is 2");
  // has_bias 1 but no bias tensor.
  expect_blob_error(minimal_blob(0x200, 6, 1), "truncated: bias data length");
}

TEST(UqffBlob, EveryTruncationIsAFormatError) {
  const Bytes full = serialize_uqff_blob(random_weight({3, 64}, 4, DType::f16));
  for (std::size_t n = 0; n < full.size(); ++n) {
    EXPECT_THROW(deserialize_uqff_blob(prefix_of(full, n)), mxfp4::FormatError) << n;
  }
  Bytes longer = full;
  longer.push_back(0);
  expect_blob_error(longer, "1 bytes left over");
}

TEST(UqffBlob, LyingTensors) {
  auto blob = [](const Builder& tensors) {
    Builder b;
    b.u32(0x200).u8(6).u8(0).raw(tensors.b);
    return b.b;
  };
  const Builder scales = Builder{}.tensor(0, {1, 1}, {127});
  // Length larger than what is left, length disagreeing with the dims.
  expect_blob_error(blob(Builder{}.u32(1000).u32(0).u32(2).u32(1).u32(1000).raw(Bytes(20))),
                    "truncated: blocks data");
  expect_blob_error(blob(Builder{}.u32(16).u32(0).u32(2).u32(1).u32(15).raw(Bytes(16))),
                    "data length 16 but U8 [1, 15] needs 15 bytes");
  // ndims far larger than the blob, dims whose product overflows.
  expect_blob_error(blob(Builder{}.u32(0).u32(0).u32(0xFFFFFFFF).raw(Bytes(8))),
                    "ndims 4294967295 cannot fit");
  expect_blob_error(blob(Builder{}
                             .u32(0)
                             .u32(0)
                             .u32(4)
                             .u32(0xFFFFFFFF)
                             .u32(0xFFFFFFFF)
                             .u32(0xFFFFFFFF)
                             .u32(0xFFFFFFFF)),
                    "more bytes than int64");
  expect_blob_error(blob(Builder{}.u32(0).u32(6).u32(3).u32(0x80000000).u32(0x80000000).u32(2)),
                    "more bytes than int64");
  // dtype codes: unknown, and known without a data form.
  expect_blob_error(blob(Builder{}.tensor(14, {1}, {0})), "unknown dtype code 14");
  expect_blob_error(blob(Builder{}.tensor(12, {1}, {0})), "F4 (code 12) has no serialized");
  expect_blob_error(blob(Builder{}.tensor(13, {1}, {0})), "F8E8M0 (code 13)");
  // Valid blob tensors that do not make an MXFP4 weight.
  expect_blob_error(blob(Builder{}.tensor(6, {1, 4}, Bytes(16)).raw(scales.b)),
                    "blocks and scales must be U8, got F32 and U8");
  expect_blob_error(blob(Builder{}.tensor(0, {1, 16}, Bytes(16)).tensor(0, {1, 2}, {1, 2})),
                    "blocks' last dim must be 32");
  expect_blob_error(blob(Builder{}.tensor(0, {16}, Bytes(16)).tensor(0, {1}, {1})),
                    "blocks must be [N, K/2] or [E, N, K/2]");
  Builder bad_bias;
  bad_bias.u32(0x200).u8(6).u8(1).tensor(0, {1, 16}, Bytes(16)).raw(scales.b);
  Builder i32_bias = bad_bias;
  i32_bias.tensor(2, {1}, Bytes(4));
  expect_blob_error(i32_bias.b, "bias must be F32, F16 or BF16, got I32");
  Builder wrong_shape = bad_bias;
  wrong_shape.tensor(6, {2}, Bytes(8));
  expect_blob_error(wrong_shape.b, "bias must be [1]");
}

TEST(UqffBlob, WriterLimits) {
  // Shapes only: the writer refuses before it reads any data, so views of one byte suffice.
  const std::uint8_t byte = 0;
  // 2^28 rows of 16 bytes: a data length of 2^32, one over u32.
  const Mxfp4Weight long_data =
      Mxfp4Weight::from_parts(Tensor::view(&byte, {std::int64_t{1} << 28, 16}, DType::u8),
                              Tensor::view(&byte, {std::int64_t{1} << 28, 1}, DType::u8));
  EXPECT_THROW(serialize_uqff_blob(long_data), mxfp4::InvalidArgument);
  // 2^32 experts of zero rows: no data, but a dim over u32.
  const Mxfp4Weight long_dim =
      Mxfp4Weight::from_parts(Tensor::view(&byte, {std::int64_t{1} << 32, 0, 16}, DType::u8),
                              Tensor::view(&byte, {std::int64_t{1} << 32, 0, 1}, DType::u8));
  EXPECT_THROW(serialize_uqff_blob(long_dim), mxfp4::InvalidArgument);
  EXPECT_THROW(serialize_uqff_blob(Mxfp4Weight{}), mxfp4::InvalidArgument);
}

// ---- legacy .uqff files -------------------------------------------------------------------------

TEST(UqffLegacyFile, RoundTripAndNames) {
  TempDir dir;
  const std::vector<Mxfp4Weight> layers = {random_weight({4, 64}, 1, DType::bf16),
                                           random_weight({2, 3, 32}, 2, {}),
                                           random_weight({8, 32}, 3, DType::f32)};
  const std::string path = dir.file(uqff_legacy_shard_name("mxfp4", 1));
  EXPECT_EQ(uqff_legacy_shard_name("mxfp4", 1), "mxfp4-1.uqff");
  write_uqff_legacy(path, layers, 9);

  // The file is safetensors of 1-D U8 blobs named 9, 10, 11.
  const SafetensorsFile st = SafetensorsFile::open(path);
  ASSERT_EQ(st.entries().size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    const SafetensorsEntry* e = st.find(std::to_string(9 + i));
    ASSERT_NE(e, nullptr) << i;
    EXPECT_EQ(e->dtype, "U8");
    const Bytes blob = serialize_uqff_blob(layers[i]);
    EXPECT_EQ(e->shape, (Shape{static_cast<std::int64_t>(blob.size())}));
    const auto span = st.bytes(*e);
    EXPECT_EQ(Bytes(span.begin(), span.end()), blob);
  }
  const std::vector<UqffLegacyLayer> back = read_uqff_legacy(path);
  ASSERT_EQ(back.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back[i].index, 9 + i);
    expect_same_weight(back[i].weight, layers[i]);
  }
}

TEST(UqffLegacyFile, RefusesWhatIsNotABlobFile) {
  TempDir dir;
  const Bytes blob = serialize_uqff_blob(random_weight({1, 32}, 1, {}));
  auto refused = [&](const std::vector<SafetensorsItem>& items, const std::string& needle) {
    const std::string path = dir.file("bad.uqff");
    write_safetensors(path, items);
    try {
      read_uqff_legacy(path);
      ADD_FAILURE() << "read, but expected " << needle;
    } catch (const mxfp4::FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::int64_t n = static_cast<std::int64_t>(blob.size());
  refused({{"01", "U8", {n}, blob}}, "tensor '01': the name is not a layer index");
  refused({{"layer", "U8", {n}, blob}}, "not a layer index");
  refused({{"-1", "U8", {n}, blob}}, "not a layer index");
  refused({{"0", "I8", {n}, blob}}, "a blob must be 1-D U8, got I8");
  refused({{"0", "U8", {1, n}, blob}}, "1-D U8, got U8 [1, ");
  Bytes wrong = blob;
  wrong[4] = 1;  // type byte: Unquant
  refused({{"3", "U8", {n}, wrong}}, "tensor '3': quantized type 1 is not MXFP4");
}

// ---- UQFF 1.x -----------------------------------------------------------------------------------

TEST(Uqff1, WritesTheDescribedTensors) {
  TempDir dir;
  const Mxfp4Weight dense = random_weight({6, 64}, 5, DType::bf16);
  const Mxfp4Weight experts = random_weight({2, 4, 32}, 6, {});
  const std::string path = dir.file("model.uqff");
  write_uqff1(path,
              {{"model.layers.0.mlp.up_proj", dense}, {"model.layers.0.mlp.experts", experts}},
              {{"note", "test"}});

  const SafetensorsFile st = SafetensorsFile::open(path);
  EXPECT_EQ(st.metadata().at("note"), "test");
  auto scalar = [&](const std::string& name, const std::string& dtype) {
    const SafetensorsEntry* e = st.find(name);
    EXPECT_NE(e, nullptr) << name;
    if (e == nullptr) return Bytes{};
    EXPECT_EQ(e->dtype, dtype) << name;
    EXPECT_TRUE(e->shape.empty()) << name;
    const auto s = st.bytes(*e);
    return Bytes(s.begin(), s.end());
  };
  EXPECT_EQ(scalar("uqff.version.major", "U32"), (Bytes{1, 0, 0, 0}));
  EXPECT_EQ(scalar("uqff.version.minor", "U32"), (Bytes{2, 0, 0, 0}));
  EXPECT_EQ(scalar("uqff.version.patch", "U32"), (Bytes{0, 0, 0, 0}));
  EXPECT_EQ(scalar("model.layers.0.mlp.up_proj.weight.format", "U8"), Bytes{6});
  EXPECT_EQ(scalar("model.layers.0.mlp.experts.weight.format", "U8"), Bytes{6});
  const SafetensorsEntry* w = st.find("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, "U8");
  EXPECT_EQ(w->shape, (Shape{6, 32}));
  EXPECT_EQ(st.find("model.layers.0.mlp.up_proj.weight.scales")->shape, (Shape{6, 2}));
  EXPECT_EQ(st.find("model.layers.0.mlp.up_proj.bias")->dtype, "BF16");
  EXPECT_EQ(st.find("model.layers.0.mlp.experts.weight")->shape, (Shape{2, 4, 16}));
  EXPECT_EQ(st.find("model.layers.0.mlp.experts.bias"), nullptr);
  EXPECT_EQ(st.entries().size(), 3u + 4u + 3u);

  const Uqff1Contents c = read_uqff1(path);
  EXPECT_EQ(c.version, (UqffVersion{1, 2, 0}));
  ASSERT_EQ(c.layers.size(), 2u);
  EXPECT_TRUE(c.other_layers.empty());
  const Uqff1Layer* up = nullptr;
  const Uqff1Layer* ex = nullptr;
  for (const Uqff1Layer& l : c.layers) {
    if (l.prefix == "model.layers.0.mlp.up_proj") up = &l;
    if (l.prefix == "model.layers.0.mlp.experts") ex = &l;
  }
  ASSERT_NE(up, nullptr);
  ASSERT_NE(ex, nullptr);
  expect_same_weight(up->weight, dense);
  expect_same_weight(ex->weight, experts);
}

TEST(Uqff1, ReaderRules) {
  TempDir dir;
  const Mxfp4Weight w = random_weight({2, 32}, 7, DType::f32);
  const std::uint32_t one = 1, two = 2, three = 3, zero = 0;
  const std::uint8_t six = 6, five = 5;
  auto u32 = [](const std::string& name, const std::uint32_t& v) {
    return SafetensorsItem{name, "U32", {}, {reinterpret_cast<const std::uint8_t*>(&v), 4}};
  };
  auto version = [&](const std::uint32_t& major, const std::uint32_t& minor) {
    return std::vector<SafetensorsItem>{u32("uqff.version.major", major),
                                        u32("uqff.version.minor", minor),
                                        u32("uqff.version.patch", zero)};
  };
  auto with = [](std::vector<SafetensorsItem> a, const std::vector<SafetensorsItem>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  auto refused = [&](const std::vector<SafetensorsItem>& items, const std::string& needle) {
    const std::string path = dir.file("bad.uqff");
    write_safetensors(path, items);
    try {
      read_uqff1(path);
      ADD_FAILURE() << "read, but expected " << needle;
    } catch (const mxfp4::FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::vector<SafetensorsItem> layer = uqff1_layer_items("p", w);
  refused(layer, "has no 'uqff.version.major'");
  refused(with(version(two, zero), layer), "this reader reads major 1");
  refused(with(version(one, three), layer), "1.3.0 is newer than this reader");
  std::vector<SafetensorsItem> vec_version = version(one, two);
  vec_version[1].shape = {1};
  refused(with(vec_version, layer), "'uqff.version.minor' must be a U32 scalar");
  // An older minor is read.
  const std::string ok = dir.file("ok.uqff");
  write_safetensors(ok, with(version(one, one), layer));
  EXPECT_EQ(read_uqff1(ok).version, (UqffVersion{1, 1, 0}));

  const Tensor blocks = w.blocks(), scales = w.scales(), bias = *w.bias();
  const Tensor f32_blocks = Tensor::zeros({2, 4}, DType::f32);
  const Tensor bad_bias = Tensor::zeros({3}, DType::f32);
  const Tensor i32_bias = Tensor::zeros({2}, DType::i32);
  const SafetensorsItem format{"p.weight.format", "U8", {}, {&six, 1}};
  refused(with(version(one, two), {format, safetensors_item("p.weight", blocks)}),
          "layer 'p': MXFP4 layer has no 'p.weight.scales'");
  refused(with(version(one, two), {format, safetensors_item("p.weight", f32_blocks),
                                   safetensors_item("p.weight.scales", scales)}),
          "'p.weight' must be U8, got F32");
  refused(with(version(one, two),
               {format, safetensors_item("p.weight", blocks),
                safetensors_item("p.weight.scales", scales), safetensors_item("p.bias", bad_bias)}),
          "bias must be [2]");
  refused(with(version(one, two),
               {format, safetensors_item("p.weight", blocks),
                safetensors_item("p.weight.scales", scales), safetensors_item("p.bias", i32_bias)}),
          "'p.bias' must be F32, F16 or BF16, got I32");
  refused(with(version(one, two), {format, safetensors_item("p.weight", blocks),
                                   safetensors_item("p.weight.scales", blocks)}),
          "layer 'p'");
  refused(with(version(one, two), {SafetensorsItem{"p.weight.format", "U8", {1}, {&six, 1}}}),
          "'p.weight.format' must be a U8 scalar");

  // Layers of other formats are listed, not decoded.
  write_safetensors(ok, with(version(one, two),
                             with(layer, {SafetensorsItem{"q.weight.format", "U8", {}, {&five, 1}},
                                          safetensors_item("q.weight", bias)})));
  const Uqff1Contents c = read_uqff1(ok);
  ASSERT_EQ(c.layers.size(), 1u);
  expect_same_weight(c.layers[0].weight, w);
  ASSERT_EQ(c.other_layers.size(), 1u);
  EXPECT_EQ(c.other_layers[0], (std::pair<std::string, std::uint8_t>{"q", 5}));
}

// ---- weights in the GPU block layout ------------------------------------------------------------

TEST(UqffGpuLayout, EveryWriterWritesTheStandardBytes) {
  TempDir dir;
  const Mxfp4Weight dense = random_weight({6, 64}, 21, DType::bf16);
  const Mxfp4Weight experts = random_weight({2, 4, 32}, 22, {});
  const Mxfp4Weight dense_gpu = dense.with_layout(mxfp4::BlockLayout::gpu);
  const Mxfp4Weight experts_gpu = experts.with_layout(mxfp4::BlockLayout::gpu);
  ASSERT_NE(bytes_of(dense_gpu.blocks()), bytes_of(dense.blocks()));

  // Blobs.
  EXPECT_EQ(serialize_uqff_blob(dense_gpu), serialize_uqff_blob(dense));
  EXPECT_EQ(serialize_uqff_blob(experts_gpu), serialize_uqff_blob(experts));

  // Legacy .uqff files.
  write_uqff_legacy(dir.file("std-0.uqff"), {dense, experts});
  write_uqff_legacy(dir.file("gpu-0.uqff"), {dense_gpu, experts_gpu});
  EXPECT_EQ(read_all(dir.file("gpu-0.uqff")), read_all(dir.file("std-0.uqff")));
  const std::vector<UqffLegacyLayer> legacy = read_uqff_legacy(dir.file("gpu-0.uqff"));
  ASSERT_EQ(legacy.size(), 2u);
  expect_same_weight(legacy[0].weight, dense);
  EXPECT_EQ(legacy[0].weight.layout(), mxfp4::BlockLayout::standard);

  // UQFF 1.x.
  write_uqff1(dir.file("std.uqff"), {{"a", dense}, {"b", experts}});
  write_uqff1(dir.file("gpu.uqff"), {{"a", dense_gpu}, {"b", experts_gpu}});
  EXPECT_EQ(read_all(dir.file("gpu.uqff")), read_all(dir.file("std.uqff")));
  const Uqff1Contents c = read_uqff1(dir.file("gpu.uqff"));
  ASSERT_EQ(c.layers.size(), 2u);
  expect_same_weight(c.layers[0].weight, dense);
  expect_same_weight(c.layers[1].weight, experts);

  // The items view the weight's bytes, so a GPU-layout weight is refused rather than copied.
  try {
    uqff1_layer_items("a", dense_gpu);
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("uqff1_layer_items 'a'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("with_layout(BlockLayout::standard)"), std::string::npos) << msg;
  }
}

}  // namespace
