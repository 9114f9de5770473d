// GGUF: the split-half MXFP4 block layout against hand-built blocks, the exact bytes the writer
// produces for a file built by hand from the spec, round trips of every metadata type and tensor
// type, every kind of corrupt file the reader must refuse with a FormatError, and the writer's
// all-or-nothing behaviour.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/io/gguf.hpp"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"

namespace {

namespace fs = std::filesystem;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;
using namespace mxfp4::io;
using namespace mxfp4::test;

// Little-endian bytes built field by field, straight from the GGUF spec.
struct Builder : LittleEndianBuilder<Builder> {
  Builder& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Builder& pad_to(std::size_t alignment) {
    while (b.size() % alignment != 0)
      b.push_back(0);
    return *this;
  }
  Builder& header(std::uint64_t n_tensors, std::uint64_t n_kv, std::uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  // A tensor info: name, dims (innermost first), type, offset.
  Builder& info(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type,
                std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(ne.size()));
    for (auto d : ne)
      u64(d);
    return u32(type).u64(offset);
  }
};

// One F32 tensor "t" of ne [n] at `offset`, then `data_bytes` bytes of data.
Bytes one_f32_file(std::uint64_t n, std::uint64_t offset, std::size_t data_bytes) {
  Builder f;
  f.header(1, 0).info("t", {n}, 0, offset).pad_to(32);
  f.b.resize(f.b.size() + data_bytes, 0);
  return f.b;
}

template <typename E>
void expect_refused(const Bytes& bytes, const std::string& needle) {
  try {
    GgufFile::parse(bytes, "bad.gguf");
    ADD_FAILURE() << "parsed, but expected an error containing '" << needle << "'";
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("GGUF file 'bad.gguf'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
  }
}
void expect_format_error(const Bytes& bytes, const std::string& needle) {
  expect_refused<mxfp4::FormatError>(bytes, needle);
}

// ---- the MXFP4 block layout ---------------------------------------------------------------------

TEST(GgufMxfp4Layout, HandBuiltBlock) {
  // Element i of the block has code i % 16. Ours: byte j holds elements 2j (low) and 2j+1 (high).
  // GGUF: scale first, then qs[j] holds elements j (low) and j + 16 (high), i.e. j | j << 4.
  Bytes ours(16);
  for (int j = 0; j < 16; ++j)
    ours[j] = static_cast<std::uint8_t>(((2 * j) % 16) | (((2 * j + 1) % 16) << 4));
  const Bytes scale = {0x85};
  Bytes expected = {0x85};
  for (int j = 0; j < 16; ++j)
    expected.push_back(static_cast<std::uint8_t>(j | (j << 4)));
  Bytes gguf(17);
  mxfp4_to_gguf_blocks(ours, scale, gguf);
  EXPECT_EQ(gguf, expected);

  Bytes back(16), back_scale(1);
  gguf_blocks_to_mxfp4(gguf, back, back_scale);
  EXPECT_EQ(back, ours);
  EXPECT_EQ(back_scale, scale);
}

TEST(GgufMxfp4Layout, DistinctCodesLandWhereTheSpecSays) {
  // Elements 0..31 with codes that identify them: element i = (i * 7 + 3) % 16.
  auto code = [](int i) { return static_cast<std::uint8_t>((i * 7 + 3) % 16); };
  Bytes ours(16);
  for (int i = 0; i < 32; ++i)
    ours[i / 2] |= static_cast<std::uint8_t>(code(i) << (4 * (i % 2)));
  Bytes gguf(17);
  const Bytes scale = {0xFF};  // the NaN scale is kept byte for byte
  mxfp4_to_gguf_blocks(ours, scale, gguf);
  EXPECT_EQ(gguf[0], 0xFF);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(gguf[1 + j] & 0x0F, code(j)) << j;
    EXPECT_EQ(gguf[1 + j] >> 4, code(j + 16)) << j;
  }
}

TEST(GgufMxfp4Layout, RandomBytesRoundTripBothWays) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  const std::size_t n = 1000;
  Bytes blocks(n * 16), scales(n), gguf(n * 17);
  for (auto& x : blocks)
    x = static_cast<std::uint8_t>(byte(rng));
  for (auto& x : scales)
    x = static_cast<std::uint8_t>(byte(rng));
  mxfp4_to_gguf_blocks(blocks, scales, gguf);
  Bytes b2(n * 16), s2(n);
  gguf_blocks_to_mxfp4(gguf, b2, s2);
  EXPECT_EQ(b2, blocks);
  EXPECT_EQ(s2, scales);

  Bytes g(n * 17);
  for (auto& x : g)
    x = static_cast<std::uint8_t>(byte(rng));
  gguf_blocks_to_mxfp4(g, b2, s2);
  Bytes g2(n * 17);
  mxfp4_to_gguf_blocks(b2, s2, g2);
  EXPECT_EQ(g2, g);
}

TEST(GgufMxfp4Layout, SizeMismatchIsRefused) {
  Bytes blocks(32), scales(2), out(33);
  EXPECT_THROW(mxfp4_to_gguf_blocks(blocks, scales, out), mxfp4::InvalidArgument);
  Bytes gguf(34), b(31);
  EXPECT_THROW(gguf_blocks_to_mxfp4(gguf, b, scales), mxfp4::InvalidArgument);
}

TEST(GgufMxfp4Layout, WeightFromGgufDecodesLikeASplitHalfDecoder) {
  const Mxfp4Weight w = random_weight({6, 96}, 3, {}, 2.0f);
  const GgufTensorItem item = gguf_mxfp4_item("w", w);
  EXPECT_EQ(item.type, GgmlType::mxfp4);
  EXPECT_EQ(item.shape, (Shape{6, 96}));
  ASSERT_TRUE(item.fill);
  Bytes data(6 * 3 * 17);
  item.fill(data);
  // An independent decoder of the GGUF layout.
  std::vector<float> decoded;
  for (std::size_t b = 0; b < 18; ++b) {
    const std::uint8_t* blk = data.data() + b * 17;
    float block[32];
    for (int j = 0; j < 16; ++j) {
      block[j] = mxfp4::mxfp4_decode(blk[1 + j] & 0x0F, blk[0]);
      block[j + 16] = mxfp4::mxfp4_decode(blk[1 + j] >> 4, blk[0]);
    }
    decoded.insert(decoded.end(), block, block + 32);
  }
  const Tensor ref = w.dequantize(DType::f32);
  ASSERT_EQ(decoded.size(), static_cast<std::size_t>(ref.numel()));
  EXPECT_EQ(std::memcmp(decoded.data(), ref.data(), ref.nbytes()), 0);

  const Mxfp4Weight back = mxfp4_weight_from_gguf(data, {6, 96});
  EXPECT_EQ(bytes_of(back.blocks()), bytes_of(w.blocks()));
  EXPECT_EQ(bytes_of(back.scales()), bytes_of(w.scales()));
  EXPECT_THROW(mxfp4_weight_from_gguf(data, {6, 95}), mxfp4::ShapeMismatch);
  EXPECT_THROW(mxfp4_weight_from_gguf(data, {3, 96}), mxfp4::InvalidArgument);
  EXPECT_THROW(mxfp4_weight_from_gguf(data, {576}), mxfp4::ShapeMismatch);
}

// ---- exact bytes --------------------------------------------------------------------------------

TEST(GgufWriter, WritesExactlyTheSpecBytes) {
  TempDir dir;
  // Metadata: general.architecture = "test" (string), demo.n = u32 7, demo.list = [i16 -1, 2].
  // Tensors: "a" f32 [3] = {1, 2, 3}; "w" mxfp4 [1, 32] from one hand-built block.
  const std::vector<float> a = {1.0f, 2.0f, 3.0f};
  Bytes blocks(16), scales = {0x7F};
  for (int j = 0; j < 16; ++j)
    blocks[j] = static_cast<std::uint8_t>(j * 17);  // elements 2j and 2j+1 both code j
  const Mxfp4Weight w = Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {1, 16}),
                                                Tensor::from_vector(scales, {1, 1}));
  const Tensor at = Tensor::from_vector(a, {3});
  GgufMetadata meta = {
      {"general.architecture", "test"},
      {"demo.n", std::uint32_t{7}},
      {"demo.list", GgufValue::array_of<std::int16_t>(GgufValueType::int16, {-1, 2})}};
  const std::string path = dir.file("x.gguf");
  const std::uint64_t size = write_gguf(path, meta, {gguf_item("a", at), gguf_mxfp4_item("w", w)});

  Builder e;
  e.header(2, 3);
  e.str("general.architecture").u32(8).str("test");
  e.str("demo.n").u32(4).u32(7);
  e.str("demo.list").u32(9).u32(3).u64(2).u8(0xFF).u8(0xFF).u8(2).u8(0);
  e.info("a", {3}, 0, 0);
  e.info("w", {32, 1}, 39, 32);  // "a" is 12 bytes, padded to 32
  e.pad_to(32);
  for (float v : a) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    e.u32(bits);
  }
  e.pad_to(32);
  // GGUF block: the scale, then qs[j] = element j | element j+16 << 4. Element i has code i / 2.
  e.u8(0x7F);
  for (int j = 0; j < 16; ++j)
    e.u8(static_cast<std::uint8_t>((j / 2) | (((j + 16) / 2) << 4)));
  e.pad_to(32);

  const Bytes written = read_all(path);
  EXPECT_EQ(written, e.b);
  EXPECT_EQ(size, e.b.size());
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"x.gguf"});
}

TEST(GgufWriter, GpuLayoutWeightsAreWrittenWithTheStandardBytes) {
  TempDir dir;
  const Mxfp4Weight dense = random_weight({6, 64}, 31, DType::f32);
  const Mxfp4Weight experts = random_weight({3, 4, 96}, 32, {});
  const Mxfp4Weight dense_gpu = dense.with_layout(mxfp4::BlockLayout::gpu);
  const Mxfp4Weight experts_gpu = experts.with_layout(mxfp4::BlockLayout::gpu);
  ASSERT_NE(bytes_of(experts_gpu.blocks()), bytes_of(experts.blocks()));
  write_gguf(dir.file("std.gguf"), {},
             {gguf_mxfp4_item("d.weight", dense), gguf_item("d.bias", *dense.bias()),
              gguf_mxfp4_item("e.weight", experts)});
  write_gguf(dir.file("gpu.gguf"), {},
             {gguf_mxfp4_item("d.weight", dense_gpu), gguf_item("d.bias", *dense_gpu.bias()),
              gguf_mxfp4_item("e.weight", experts_gpu)});
  EXPECT_EQ(read_all(dir.file("gpu.gguf")), read_all(dir.file("std.gguf")));
  const GgufFile f = GgufFile::open(dir.file("gpu.gguf"));
  expect_same_weight(f.mxfp4_weight("d.weight", "d.bias"), dense);
  expect_same_weight(f.mxfp4_weight("e.weight"), experts);
}

// ---- round trips --------------------------------------------------------------------------------

GgufMetadata every_value_type() {
  GgufArray nested;
  nested.element_type = GgufValueType::array;
  nested.items.push_back(GgufValue::array_of<std::uint8_t>(GgufValueType::uint8, {1, 2, 3}));
  nested.items.push_back(GgufValue::array_of<std::uint8_t>(GgufValueType::uint8, {}));
  return {
      {"general.architecture", "llama"},
      {"general.alignment", std::uint32_t{64}},
      {"t.u8", std::uint8_t{200}},
      {"t.i8", std::int8_t{-100}},
      {"t.u16", std::uint16_t{60000}},
      {"t.i16", std::int16_t{-30000}},
      {"t.u32", std::uint32_t{4000000000u}},
      {"t.i32", std::int32_t{-2000000000}},
      {"t.f32", 1.5f},
      {"t.bool", true},
      {"t.string", "h\xC3\xA9llo"},
      {"t.u64", std::uint64_t{1} << 60},
      {"t.i64", -(std::int64_t{1} << 60)},
      {"t.f64", 3.25},
      {"t.strings", GgufValue::array_of<std::string>(GgufValueType::string, {"a", "", "ccc"})},
      {"t.floats", GgufValue::array_of<float>(GgufValueType::float32, {0.5f, -2.0f})},
      {"t.bools", GgufValue::array_of<bool>(GgufValueType::boolean, {true, false})},
      {"t.nested", GgufValue(nested)},
  };
}

TEST(GgufRoundTrip, EveryMetadataTypeAndTensorType) {
  TempDir dir;
  const GgufMetadata meta = every_value_type();
  std::vector<float> f(5 * 3);
  for (std::size_t i = 0; i < f.size(); ++i)
    f[i] = static_cast<float>(i) * 0.25f - 1.0f;
  const Tensor t32 = Tensor::from_vector(f, {5, 3});
  const Tensor t16 = t32.to(DType::f16);
  const Tensor tb16 = t32.to(DType::bf16);
  const Tensor ti32 = Tensor::from_vector(std::vector<std::int32_t>{1, -2, 3}, {3});
  const Tensor scalar = Tensor::from_vector(std::vector<float>{42.0f}, {});
  const Mxfp4Weight dense = random_weight({7, 64}, 1, DType::f32, 2.0f);
  const Mxfp4Weight experts = random_weight({3, 5, 96}, 2, DType::f32, 2.0f);
  const std::string path = dir.file("rt.gguf");
  write_gguf(
      path, meta,
      {gguf_item("f32", t32), gguf_item("f16", t16), gguf_item("bf16", tb16),
       gguf_item("i32", ti32), gguf_item("scalar", scalar), gguf_mxfp4_item("dense.weight", dense),
       gguf_item("dense.bias", *dense.bias()), gguf_mxfp4_item("experts.weight", experts),
       gguf_item("experts.bias", *experts.bias())});

  const GgufFile file = GgufFile::open(path);
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.alignment(), 64u);
  EXPECT_EQ(file.data_offset() % 64, 0u);
  EXPECT_EQ(file.metadata(), meta);
  ASSERT_NE(file.find_metadata("t.nested"), nullptr);
  EXPECT_EQ(*file.find_metadata("t.u64"), GgufValue(std::uint64_t{1} << 60));
  EXPECT_EQ(file.find_metadata("absent"), nullptr);
  ASSERT_EQ(file.tensors().size(), 9u);
  for (const GgufTensorInfo& t : file.tensors())
    EXPECT_EQ(t.offset % 64, 0u) << t.name;

  const GgufTensorInfo* i32 = file.find("f32");
  ASSERT_NE(i32, nullptr);
  EXPECT_EQ(i32->ne, (std::vector<std::uint64_t>{3, 5}));  // innermost first
  EXPECT_EQ(i32->shape(), (Shape{5, 3}));
  for (const auto& [name, t] : std::vector<std::pair<std::string, Tensor>>{
           {"f32", t32}, {"f16", t16}, {"bf16", tb16}, {"i32", ti32}, {"scalar", scalar}}) {
    const Tensor r = file.tensor(name);
    EXPECT_EQ(r.dtype(), t.dtype()) << name;
    EXPECT_EQ(r.shape(), t.shape()) << name;
    EXPECT_EQ(bytes_of(r), bytes_of(t)) << name;
  }
  EXPECT_EQ(file.find("dense.weight")->type, GgmlType::mxfp4);
  EXPECT_EQ(file.find("experts.weight")->ne, (std::vector<std::uint64_t>{96, 5, 3}));

  for (const auto& [name, w] :
       std::vector<std::pair<std::string, Mxfp4Weight>>{{"dense", dense}, {"experts", experts}}) {
    const Mxfp4Weight r = file.mxfp4_weight(name + ".weight", name + ".bias");
    EXPECT_EQ(r.stacked(), w.stacked());
    EXPECT_EQ(r.blocks().shape(), w.blocks().shape());
    EXPECT_EQ(bytes_of(r.blocks()), bytes_of(w.blocks())) << name;
    EXPECT_EQ(bytes_of(r.scales()), bytes_of(w.scales())) << name;
    ASSERT_TRUE(r.bias().has_value());
    EXPECT_EQ(bytes_of(*r.bias()), bytes_of(*w.bias()));
  }
  // Writing what we read gives the same file.
  std::vector<GgufTensorItem> items;
  std::vector<Tensor> keep;
  for (const GgufTensorInfo& t : file.tensors()) {
    GgufTensorItem it;
    it.name = t.name;
    it.type = t.type;
    it.shape = t.shape();
    it.data = file.bytes(t);
    items.push_back(it);
  }
  write_gguf(dir.file("rt2.gguf"), file.metadata(), items);
  EXPECT_EQ(read_all(dir.file("rt2.gguf")), read_all(path));
}

TEST(GgufReader, WrongAccessorsAreTypedErrors) {
  TempDir dir;
  const Mxfp4Weight w = random_weight({4, 32}, 5, {}, 2.0f);
  const Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {4});
  const Tensor wrong_bias = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  write_gguf(dir.file("a.gguf"), {},
             {gguf_mxfp4_item("w", w), gguf_item("b", t), gguf_item("b3", wrong_bias)});
  const GgufFile f = GgufFile::open(dir.file("a.gguf"));
  EXPECT_THROW(f.tensor("w"), mxfp4::DTypeMismatch);
  EXPECT_THROW(f.tensor("nope"), mxfp4::InvalidArgument);
  EXPECT_THROW(f.mxfp4_weight("b"), mxfp4::DTypeMismatch);
  EXPECT_THROW(f.mxfp4_weight("nope"), mxfp4::InvalidArgument);
  EXPECT_THROW(f.mxfp4_weight("w", "b3"), mxfp4::ShapeMismatch);
  EXPECT_NO_THROW(f.mxfp4_weight("w", "b"));
  EXPECT_THROW(GgufFile::open(dir.file("absent.gguf")), mxfp4::IoError);
}

// ---- corrupt files ------------------------------------------------------------------------------

TEST(GgufReader, EveryTruncationIsAFormatError) {
  TempDir dir;
  const Mxfp4Weight w = random_weight({2, 64}, 9, {}, 2.0f);
  write_gguf(dir.file("t.gguf"), every_value_type(), {gguf_mxfp4_item("w", w)});
  const Bytes full = read_all(dir.file("t.gguf"));
  const std::size_t data_end = full.size() - (64 - (2 * 2 * 17) % 64) % 64;
  for (std::size_t n = 0; n < data_end; ++n) {
    EXPECT_THROW(GgufFile::parse(prefix_of(full, n), "cut"), mxfp4::FormatError) << n;
  }
  EXPECT_NO_THROW(GgufFile::parse(prefix_of(full, data_end), "cut"));
}

TEST(GgufReader, BadHeaders) {
  expect_format_error({'G', 'G', 'U'}, "bad magic");
  expect_format_error(Builder{}.raw({'G', 'G', 'M', 'L'}).u32(3).u64(0).u64(0).b, "bad magic");
  expect_format_error(Builder{}.header(0, 0, 1).b, "unsupported GGUF version 1");
  expect_format_error(Builder{}.header(0, 0, 0x03000000).b, "big-endian");
  expect_format_error(Bytes{'G', 'G', 'U', 'F', 3, 0}, "truncated: version");
  expect_format_error(Builder{}.header(0, 1'000'000'000'000).b, "metadata count");
  expect_format_error(Builder{}.header(std::uint64_t{1} << 62, 0).b, "tensor count");
  EXPECT_NO_THROW(GgufFile::parse(Builder{}.header(0, 0).b, "empty"));
  EXPECT_NO_THROW(GgufFile::parse(Builder{}.header(0, 0, 2).b, "v2"));
}

TEST(GgufReader, BadMetadata) {
  // Key length larger than the file.
  expect_format_error(Builder{}.header(0, 1).u64(1000).raw(Bytes(20, 'a')).b, "metadata key 0");
  // Empty key, non-UTF-8 key, overlong UTF-8, duplicate key.
  expect_format_error(Builder{}.header(0, 1).str("").u32(0).u8(1).b, "is empty");
  expect_format_error(Builder{}.header(0, 1).str("a\xFF").u32(0).u8(1).b, "not valid UTF-8");
  expect_format_error(Builder{}.header(0, 1).str("a\xC0\xAF").u32(0).u8(1).b, "not valid UTF-8");
  expect_format_error(Builder{}.header(0, 2).str("k").u32(0).u8(1).str("k").u32(0).u8(2).b,
                      "appears more than once");
  // Unknown value type, bool byte 2, string length lying.
  expect_format_error(Builder{}.header(0, 1).str("k").u32(13).u8(1).b, "unknown value type 13");
  expect_format_error(Builder{}.header(0, 1).str("k").u32(7).u8(2).b, "not 0 or 1");
  expect_format_error(Builder{}.header(0, 1).str("k").u32(8).u64(1 << 30).raw(Bytes(20, 'x')).b,
                      "truncated");
  // Arrays: unknown element type, lying count, nesting too deep.
  expect_format_error(Builder{}.header(0, 1).str("k").u32(9).u32(77).u64(0).b,
                      "unknown array element type 77");
  expect_format_error(
      Builder{}.header(0, 1).str("k").u32(9).u32(4).u64(std::uint64_t{1} << 61).u32(1).b,
      "cannot fit");
  expect_format_error(Builder{}.header(0, 1).str("k").u32(9).u32(8).u64(1000).raw(Bytes(64, 0)).b,
                      "cannot fit");
  Builder deep;
  deep.header(0, 1).str("k").u32(9);
  for (int i = 0; i < 20; ++i)
    deep.u32(9).u64(1);
  deep.u32(0).u64(0);
  expect_format_error(deep.b, "nest deeper");
  // general.alignment of the wrong type or not a power of two.
  expect_format_error(Builder{}.header(0, 1).str("general.alignment").u32(10).u64(32).b,
                      "general.alignment must be uint32");
  expect_format_error(Builder{}.header(0, 1).str("general.alignment").u32(4).u32(48).b,
                      "not a power of two");
  expect_format_error(Builder{}.header(0, 1).str("general.alignment").u32(4).u32(0).b,
                      "not a power of two");
}

TEST(GgufReader, BadTensorInfos) {
  auto file = [](const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type,
                 std::uint64_t offset, std::size_t data) {
    Builder f;
    f.header(1, 0).info(name, std::move(ne), type, offset).pad_to(32);
    f.b.resize(f.b.size() + data, 0);
    return f.b;
  };
  EXPECT_NO_THROW(GgufFile::parse(file("t", {4}, 0, 0, 16), "ok"));
  expect_format_error(file("t\xFE", {4}, 0, 0, 16), "name is not valid UTF-8");
  expect_format_error(file("t", {1, 1, 1, 1, 1}, 0, 0, 16), "has 5 dims");
  expect_format_error(file("t", {4}, 4, 0, 16), "unknown ggml type 4");
  expect_format_error(file("t", {4}, 31, 0, 16), "unknown ggml type 31");
  expect_format_error(file("t", {4}, 1000, 0, 16), "unknown ggml type 1000");
  // Huge dims: over int64, product over int64, byte size over int64.
  expect_format_error(file("t", {std::uint64_t{1} << 63}, 0, 0, 16), "larger than int64");
  expect_format_error(file("t", {std::uint64_t{1} << 32, std::uint64_t{1} << 32}, 0, 0, 16),
                      "more elements than int64");
  expect_format_error(file("t", {std::uint64_t{1} << 62}, 0, 0, 16), "more bytes than int64");
  // A plausible but huge tensor: past the end of the data.
  expect_format_error(file("t", {std::uint64_t{1} << 40}, 0, 0, 16), "reaches past the end");
  // MXFP4 rows must be whole blocks.
  expect_format_error(file("t", {48, 2}, 39, 0, 64), "not a multiple of mxfp4's block size 32");
  EXPECT_NO_THROW(GgufFile::parse(file("t", {64, 2}, 39, 0, 68), "ok"));
  // Offsets: misaligned, outside the data, off the end by one byte.
  expect_format_error(file("t", {4}, 0, 8, 64), "not a multiple of the alignment 32");
  expect_format_error(file("t", {4}, 0, 64, 16), "reaches past the end");
  expect_format_error(file("t", {4}, 0, ~std::uint64_t{31}, 16), "reaches past the end");
  expect_format_error(file("t", {4}, 0, 0, 15), "reaches past the end");
  // The data section must exist when there are tensors.
  Builder nodata;
  nodata.header(1, 0).info("t", {0}, 0, 0);
  expect_format_error(nodata.b, "data section starts");
  // Duplicate names, overlapping tensors.
  Builder dup;
  dup.header(2, 0).info("t", {4}, 0, 0).info("t", {4}, 0, 32).pad_to(32);
  dup.b.resize(dup.b.size() + 64);
  expect_format_error(dup.b, "appears more than once");
  Builder overlap;
  overlap.header(2, 0).info("a", {16}, 0, 0).info("b", {4}, 0, 32).pad_to(32);
  overlap.b.resize(overlap.b.size() + 64);
  expect_format_error(overlap.b, "overlaps tensor 'a'");
  // Tensor name length lying.
  expect_format_error(Builder{}.header(1, 0).u64(std::uint64_t{1} << 40).raw(Bytes(30, 0)).b,
                      "tensor info 0 name");
  // An alignment of 64 moves the data section and the legal offsets.
  Builder al;
  al.header(1, 1).str("general.alignment").u32(4).u32(64).info("t", {4}, 0, 32).pad_to(64);
  al.b.resize(al.b.size() + 64);
  expect_format_error(al.b, "not a multiple of the alignment 64");
}

TEST(GgufReader, OneF32FileHelperIsValid) {
  const GgufFile f = GgufFile::parse(one_f32_file(4, 0, 16), "ok");
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.data_offset(), 64u);
  EXPECT_EQ(f.bytes(f.tensors()[0]).size(), 16u);
}

TEST(GgufReader, ParseAndParseViewAgreeWithOpen) {
  TempDir dir;
  const Mxfp4Weight w = random_weight({2, 64}, 8, {}, 2.0f);
  write_gguf(dir.file("a.gguf"), {{"k", "v"}}, {gguf_mxfp4_item("w", w)});
  const Bytes bytes = read_all(dir.file("a.gguf"));
  const GgufFile opened = GgufFile::open(dir.file("a.gguf"));
  const GgufFile parsed = GgufFile::parse(bytes, "mem");
  const GgufFile viewed = GgufFile::parse_view(bytes, "view");
  for (const GgufFile* f : {&opened, &parsed, &viewed}) {
    EXPECT_EQ(f->file_size(), bytes.size());
    EXPECT_EQ(f->metadata(), opened.metadata());
    const auto span = f->bytes(f->tensors().at(0));
    EXPECT_EQ(Bytes(span.begin(), span.end()),
              Bytes(bytes.begin() + static_cast<std::ptrdiff_t>(f->data_offset()),
                    bytes.begin() + static_cast<std::ptrdiff_t>(f->data_offset() + 2 * 2 * 17)));
  }
  EXPECT_EQ(viewed.bytes(viewed.tensors()[0]).data(), bytes.data() + viewed.data_offset());
  // A copy keeps the mapping alive after the original is gone.
  std::optional<GgufFile> copy;
  {
    const GgufFile f = GgufFile::open(dir.file("a.gguf"));
    copy = f;
  }
  EXPECT_EQ(bytes_of(copy->mxfp4_weight("w").blocks()), bytes_of(w.blocks()));
  // An empty file is a format error, not a failed mapping.
  write_all(dir.file("empty.gguf"), {});
  EXPECT_THROW(GgufFile::open(dir.file("empty.gguf")), mxfp4::FormatError);
  EXPECT_THROW(GgufFile::open(dir.path().string()), mxfp4::IoError);  // a folder
}

// ---- writer: streaming, refusals and atomicity --------------------------------------------------

TEST(GgufWriter, FillProducesEachTensorWhenReached) {
  TempDir dir;
  std::vector<std::string> calls;
  auto item = [&](const std::string& name, std::int64_t n, std::uint8_t value) {
    GgufTensorItem it;
    it.name = name;
    it.type = GgmlType::i8;
    it.shape = {n};
    it.fill = [&calls, name, n, value](std::span<std::uint8_t> out) {
      EXPECT_EQ(out.size(), static_cast<std::size_t>(n));
      calls.push_back(name);
      std::fill(out.begin(), out.end(), value);
    };
    return it;
  };
  write_gguf(dir.file("f.gguf"), {}, {item("a", 5, 1), item("b", 40, 2)});
  EXPECT_EQ(calls, (std::vector<std::string>{"a", "b"}));
  const GgufFile f = GgufFile::open(dir.file("f.gguf"));
  EXPECT_EQ(Bytes(f.bytes(*f.find("a")).begin(), f.bytes(*f.find("a")).end()), Bytes(5, 1));
  EXPECT_EQ(Bytes(f.bytes(*f.find("b")).begin(), f.bytes(*f.find("b")).end()), Bytes(40, 2));

  // A fill that throws: the error comes through and no file is left behind.
  GgufTensorItem bad = item("c", 4, 3);
  bad.fill = [](std::span<std::uint8_t>) { throw mxfp4::InvalidArgument("fill failed"); };
  EXPECT_THROW(write_gguf(dir.file("g.gguf"), {}, {item("a", 5, 1), bad}), mxfp4::InvalidArgument);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"f.gguf"});
}

// ---- writer refusals and atomicity -------------------------------------------------------------

TEST(GgufWriter, InvalidInputsTouchNothing) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  const Tensor t = Tensor::from_vector(std::vector<float>{1, 2}, {2});
  auto refused = [&](const GgufMetadata& meta, const std::vector<GgufTensorItem>& items,
                     const std::string& needle) {
    try {
      write_gguf(path, meta, items);
      ADD_FAILURE() << "expected InvalidArgument with " << needle;
    } catch (const mxfp4::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(dir.listing().empty());
  };
  refused({{"k", std::uint8_t{1}}, {"k", std::uint8_t{2}}}, {}, "appears more than once");
  refused({{"", std::uint8_t{1}}}, {}, "key is empty");
  refused({{"k\xFF", std::uint8_t{1}}}, {}, "not valid UTF-8");
  refused({{"k", "\xFF"}}, {}, "not valid UTF-8");
  refused({{"general.alignment", std::uint64_t{32}}}, {}, "power of two");
  refused({{"general.alignment", std::uint32_t{24}}}, {}, "power of two");
  GgufArray mixed;
  mixed.element_type = GgufValueType::uint8;
  mixed.items = {GgufValue(std::uint8_t{1}), GgufValue(std::int8_t{1})};
  refused({{"k", GgufValue(mixed)}}, {}, "int8 in an array of uint8");
  refused({}, {gguf_item("a", t), gguf_item("a", t)}, "appears more than once");
  refused({}, {gguf_item(std::string(64, 'n'), t)}, "GGUF allows 63");
  refused({}, {gguf_item("a\xFF", t)}, "not valid UTF-8");
  GgufTensorItem wrong = gguf_item("a", t);
  wrong.shape = {3};
  refused({}, {wrong}, "needs 12 bytes, got 8");
  wrong.shape = {1, 1, 1, 1, 2};
  refused({}, {wrong}, "more than 4 dims");
  wrong.shape = {2};
  wrong.type = GgmlType::mxfp4;
  refused({}, {wrong}, "block size 32");
  EXPECT_THROW(gguf_item("u8", Tensor::from_vector(std::vector<std::uint8_t>{1}, {1})),
               mxfp4::DTypeMismatch);
}

TEST(GgufWriter, FullDiskLeavesTheOldFile) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  const Tensor t = Tensor::from_vector(std::vector<float>{1, 2}, {2});
  write_gguf(path, {{"v", std::uint32_t{1}}}, {gguf_item("a", t)});
  const Bytes before = read_all(path);
  const Tensor big = Tensor::zeros({1 << 20}, DType::f32);
  bool threw = false;
  try {
    const FileSizeLimit limit(4096);
    write_gguf(path, {{"v", std::uint32_t{2}}}, {gguf_item("big", big)});
  } catch (const mxfp4::IoError& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find("cannot write"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"x.gguf"});
}

TEST(GgufWriter, MissingFolderIsAnIoError) {
  TempDir dir;
  EXPECT_THROW(write_gguf(dir.file("no/such/x.gguf"), {}, {}), mxfp4::IoError);
  EXPECT_TRUE(dir.listing().empty());
}

// Like the safetensors writer (the check lives in the shared AtomicFile): a pipe or device at
// the target is refused, never replaced by a regular file.
TEST(GgufWriter, RefusesToReplaceAPipe) {
  TempDir dir;
  const std::string pipe = dir.file("pipe");
  ASSERT_EQ(::mkfifo(pipe.c_str(), 0600), 0);
  const Tensor at = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  try {
    write_gguf(pipe, {}, {gguf_item("a", at)});
    FAIL() << "write_gguf replaced a pipe";
  } catch (const mxfp4::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_fifo(pipe));
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"pipe"});
}

TEST(GgufWriter, ReplacesAnExistingFileWhole) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  const Tensor t = Tensor::from_vector(std::vector<float>{1, 2}, {2});
  write_gguf(path, {{"v", std::uint32_t{1}}}, {gguf_item("a", t)});
  write_gguf(path, {{"v", std::uint32_t{2}}}, {});
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(*f.find_metadata("v"), GgufValue(std::uint32_t{2}));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"x.gguf"});
}

}  // namespace
