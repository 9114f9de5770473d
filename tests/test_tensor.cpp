// Tensors (tensor.hpp): owning and viewing storage, shapes, typed access, conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "mxfp4/device.hpp"
#include "mxfp4/tensor.hpp"

namespace {

using mxfp4::Device;
using mxfp4::DType;
using mxfp4::Shape;
using mxfp4::Tensor;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(Tensor, DefaultIsUndefined) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(t.rank(), 0);
  EXPECT_THROW(t.data_as<float>(), mxfp4::InvalidArgument);
  EXPECT_THROW(t.reshape({1}), mxfp4::InvalidArgument);
  EXPECT_THROW(t.to(DType::f16), mxfp4::InvalidArgument);
  EXPECT_FALSE(t.clone().defined());
}

TEST(Tensor, EmptyAndZeros) {
  Tensor e = Tensor::empty({2, 3, 4}, DType::bf16);
  EXPECT_TRUE(e.defined());
  EXPECT_TRUE(e.owns_data());
  EXPECT_EQ(e.dtype(), DType::bf16);
  EXPECT_EQ(e.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(e.rank(), 3);
  EXPECT_EQ(e.numel(), 24);
  EXPECT_EQ(e.nbytes(), 48u);
  EXPECT_EQ(e.device(), Device::cpu());
  EXPECT_NE(e.data(), nullptr);
  // 64-byte aligned storage.
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(e.data()) % 64, 0u);

  Tensor z = Tensor::zeros({5, 7}, DType::i64);
  ASSERT_EQ(z.numel(), 35);
  const std::int64_t* p = z.data_as<std::int64_t>();
  for (int i = 0; i < 35; ++i)
    EXPECT_EQ(p[i], 0);

  Tensor scalar = Tensor::zeros({}, DType::f32);
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.item_as_double(0), 0.0);

  Tensor none = Tensor::zeros({3, 0}, DType::f32);
  EXPECT_EQ(none.numel(), 0);
  EXPECT_EQ(none.nbytes(), 0u);
  EXPECT_TRUE(none.defined());
}

TEST(Tensor, FromVectorAndItems) {
  Tensor f = Tensor::from_vector<float>({1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f}, {2, 3});
  EXPECT_EQ(f.dtype(), DType::f32);
  EXPECT_EQ(f.shape(), (Shape{2, 3}));
  EXPECT_EQ(f.data_as<float>()[2], 3.25f);
  EXPECT_EQ(f.item_as_double(4), 7.0);
  EXPECT_THROW(f.item_as_double(6), mxfp4::IndexOutOfRange);
  EXPECT_THROW(f.item_as_double(-1), mxfp4::IndexOutOfRange);

  Tensor u = Tensor::from_vector<std::uint32_t>({4000000000u, 1u}, {2});
  EXPECT_EQ(u.dtype(), DType::u32);
  EXPECT_EQ(u.item_as_double(0), 4000000000.0);
  Tensor i = Tensor::from_vector<std::int32_t>({-3, 9}, {2, 1});
  EXPECT_EQ(i.dtype(), DType::i32);
  EXPECT_EQ(i.item_as_double(0), -3.0);
  Tensor l = Tensor::from_vector<std::int64_t>({-(std::int64_t{1} << 40)}, {1});
  EXPECT_EQ(l.item_as_double(0), -1099511627776.0);
  Tensor b = Tensor::from_vector<std::uint8_t>({255, 0, 7}, {3});
  EXPECT_EQ(b.dtype(), DType::u8);
  EXPECT_EQ(b.item_as_double(0), 255.0);
  // bf16 0x3FC0 = 1.5, f16 0xC500 = -5.0.
  Tensor h = Tensor::from_vector<mxfp4::bf16_t>({{0x3FC0}}, {1});
  EXPECT_EQ(h.dtype(), DType::bf16);
  EXPECT_EQ(h.item_as_double(0), 1.5);
  Tensor g = Tensor::from_vector<mxfp4::f16_t>({{0xC500}}, {1, 1});
  EXPECT_EQ(g.dtype(), DType::f16);
  EXPECT_EQ(g.item_as_double(0), -5.0);

  try {
    (void)Tensor::from_vector<float>({1.0f, 2.0f, 3.0f}, {2, 2});
    FAIL() << "no exception";
  } catch (const mxfp4::ShapeMismatch& e) {
    EXPECT_TRUE(contains(e.what(), "[2, 2]")) << e.what();
    EXPECT_TRUE(contains(e.what(), "3 values")) << e.what();
  }
  Tensor empty = Tensor::from_vector<float>({}, {0, 4});
  EXPECT_EQ(empty.numel(), 0);
}

TEST(Tensor, ViewSharesTheCallersMemory) {
  std::vector<float> buf = {1, 2, 3, 4, 5, 6};
  Tensor v = Tensor::view(buf.data(), {3, 2}, DType::f32);
  EXPECT_FALSE(v.owns_data());
  EXPECT_EQ(v.data(), buf.data());
  v.data_as<float>()[5] = 60.0f;
  EXPECT_EQ(buf[5], 60.0f);
  buf[0] = 10.0f;
  EXPECT_EQ(v.item_as_double(0), 10.0);

  const std::vector<std::uint8_t> cbuf = {1, 2, 3, 4};
  Tensor cv = Tensor::view(static_cast<const void*>(cbuf.data()), {4}, DType::u8);
  EXPECT_EQ(cv.item_as_double(3), 4.0);

  EXPECT_THROW(Tensor::view(static_cast<void*>(nullptr), {2}, DType::f32), mxfp4::InvalidArgument);
  Tensor null_empty = Tensor::view(static_cast<void*>(nullptr), {0, 3}, DType::f32);
  EXPECT_TRUE(null_empty.defined());
  EXPECT_EQ(null_empty.numel(), 0);

  // Copies of a Tensor share storage.
  Tensor copy = v;
  copy.data_as<float>()[1] = -1.0f;
  EXPECT_EQ(buf[1], -1.0f);
  Tensor owned = Tensor::zeros({2}, DType::f32);
  Tensor owned_copy = owned;
  owned_copy.data_as<float>()[0] = 3.0f;
  EXPECT_EQ(owned.data_as<float>()[0], 3.0f);
}

TEST(Tensor, DataAsChecksTheDType) {
  Tensor t = Tensor::zeros({4}, DType::u8);
  EXPECT_NO_THROW(t.data_as<std::uint8_t>());
  try {
    (void)t.data_as<float>();
    FAIL() << "no exception";
  } catch (const mxfp4::DTypeMismatch& e) {
    EXPECT_TRUE(contains(e.what(), "u8")) << e.what();
    EXPECT_TRUE(contains(e.what(), "f32")) << e.what();
    EXPECT_EQ(e.code(), mxfp4::ErrorCode::dtype_mismatch);
  }
  EXPECT_THROW(t.data_as<std::int32_t>(), mxfp4::DTypeMismatch);
  const Tensor& ct = t;
  EXPECT_THROW(ct.data_as<std::uint32_t>(), mxfp4::DTypeMismatch);
  Tensor f16 = Tensor::zeros({4}, DType::f16);
  EXPECT_THROW(f16.data_as<mxfp4::bf16_t>(), mxfp4::DTypeMismatch);
  EXPECT_NO_THROW(f16.data_as<mxfp4::f16_t>());
  Tensor i64 = Tensor::zeros({4}, DType::i64);
  EXPECT_THROW(i64.data_as<std::int32_t>(), mxfp4::DTypeMismatch);
}

TEST(Tensor, Dim) {
  Tensor t = Tensor::zeros({2, 3, 5}, DType::f32);
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_EQ(t.dim(2), 5);
  EXPECT_EQ(t.dim(-1), 5);
  EXPECT_EQ(t.dim(-3), 2);
  EXPECT_THROW(t.dim(3), mxfp4::InvalidArgument);
  EXPECT_THROW(t.dim(-4), mxfp4::InvalidArgument);
  try {
    (void)t.dim(7);
    FAIL() << "no exception";
  } catch (const mxfp4::InvalidArgument& e) {
    EXPECT_TRUE(contains(e.what(), "[2, 3, 5]")) << e.what();
  }
  Tensor scalar = Tensor::zeros({}, DType::f32);
  EXPECT_THROW(scalar.dim(-1), mxfp4::InvalidArgument);
  EXPECT_THROW(scalar.dim(0), mxfp4::InvalidArgument);
}

TEST(Tensor, Reshape) {
  std::vector<float> vals(24);
  for (int i = 0; i < 24; ++i)
    vals[i] = static_cast<float>(i);
  Tensor t = Tensor::from_vector(vals, {2, 3, 4});
  Tensor r = t.reshape({6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.data(), t.data());           // same storage
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));  // the original keeps its shape
  EXPECT_EQ(t.reshape({-1}).shape(), (Shape{24}));
  EXPECT_EQ(t.reshape({-1, 2, 3}).shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(t.reshape({4, 1, 6}).shape(), (Shape{4, 1, 6}));
  EXPECT_EQ(r.item_as_double(23), 23.0);
  EXPECT_THROW(t.reshape({5, -1}), mxfp4::ShapeMismatch);
  EXPECT_THROW(t.reshape({-1, -1}), mxfp4::InvalidArgument);
  EXPECT_THROW(t.reshape({5, 5}), mxfp4::ShapeMismatch);
  EXPECT_THROW(t.reshape({-2, 12}), mxfp4::InvalidArgument);
  EXPECT_THROW(t.reshape({0, -1}), mxfp4::ShapeMismatch);
  Tensor empty = Tensor::zeros({0, 4}, DType::f32);
  EXPECT_EQ(empty.reshape({2, 0, 3}).numel(), 0);
  Tensor one = Tensor::zeros({1}, DType::f32);
  EXPECT_EQ(one.reshape({}).rank(), 0);
}

TEST(Tensor, SliceRows) {
  std::vector<std::int32_t> vals(12);
  for (int i = 0; i < 12; ++i)
    vals[i] = i;
  Tensor t = Tensor::from_vector(vals, {4, 3});
  Tensor s = t.slice_rows(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 3}));
  EXPECT_EQ(s.numel(), 6);
  EXPECT_EQ(s.item_as_double(0), 3.0);
  EXPECT_EQ(s.item_as_double(5), 8.0);
  s.data_as<std::int32_t>()[0] = 99;  // shares storage
  EXPECT_EQ(t.data_as<std::int32_t>()[3], 99);
  EXPECT_EQ(t.slice_rows(4, 4).numel(), 0);
  EXPECT_EQ(t.slice_rows(0, 4).numel(), 12);
  EXPECT_THROW(t.slice_rows(3, 5), mxfp4::IndexOutOfRange);
  EXPECT_THROW(t.slice_rows(-1, 2), mxfp4::IndexOutOfRange);
  EXPECT_THROW(t.slice_rows(3, 2), mxfp4::IndexOutOfRange);
  EXPECT_THROW(Tensor::zeros({}, DType::f32).slice_rows(0, 1), mxfp4::InvalidArgument);
  // A slice of a 3-D tensor keeps the trailing dims.
  Tensor c = Tensor::zeros({5, 2, 2}, DType::u8).slice_rows(2, 5);
  EXPECT_EQ(c.shape(), (Shape{3, 2, 2}));
}

TEST(Tensor, CloneIsADeepCopy) {
  std::vector<float> buf = {1, 2, 3, 4};
  Tensor v = Tensor::view(buf.data(), {2, 2}, DType::f32);
  Tensor c = v.clone();
  EXPECT_TRUE(c.owns_data());
  EXPECT_NE(c.data(), v.data());
  EXPECT_EQ(c.shape(), v.shape());
  EXPECT_EQ(c.dtype(), DType::f32);
  buf[0] = 100.0f;
  EXPECT_EQ(c.item_as_double(0), 1.0);
  EXPECT_EQ(c.item_as_double(3), 4.0);
  // A clone of a slice holds only the slice.
  Tensor s = v.slice_rows(1, 2).clone();
  EXPECT_EQ(s.numel(), 2);
  EXPECT_EQ(s.item_as_double(0), 3.0);
}

TEST(Tensor, ToConvertsAmongFloatingTypes) {
  // Values exact in every type, values that round, and specials.
  // f16: 1 + 2^-11 ties down to 1.0; bf16: 1 + 2^-8 ties down to 1.0, 1 + 3*2^-8 ties up.
  const float inf = std::numeric_limits<float>::infinity();
  Tensor f = Tensor::from_vector<float>({1.0f, -2.5f, 1.0f + std::ldexp(1.0f, -11),
                                         1.0f + 3.0f * std::ldexp(1.0f, -8), 70000.0f, -inf, 0.1f},
                                        {7});
  Tensor h = f.to(DType::f16);
  EXPECT_EQ(h.dtype(), DType::f16);
  EXPECT_EQ(h.shape(), f.shape());
  const mxfp4::f16_t* hp = h.data_as<mxfp4::f16_t>();
  EXPECT_EQ(hp[0].bits, 0x3C00);
  EXPECT_EQ(hp[1].bits, 0xC100);  // -2.5 = -1.25 * 2^1
  EXPECT_EQ(hp[2].bits, 0x3C00);
  EXPECT_EQ(hp[4].bits, 0x7C00);  // 70000 overflows f16
  EXPECT_EQ(hp[5].bits, 0xFC00);
  EXPECT_EQ(hp[6].bits, 0x2E66);  // 0.1 -> 0.0999755859375

  Tensor b = f.to(DType::bf16);
  const mxfp4::bf16_t* bp = b.data_as<mxfp4::bf16_t>();
  EXPECT_EQ(bp[0].bits, 0x3F80);
  EXPECT_EQ(bp[1].bits, 0xC020);
  EXPECT_EQ(bp[3].bits, 0x3F82);  // 1 + 3*2^-8 is the tie 0x3F81 | 0x3F82 -> 0x3F82
  EXPECT_EQ(bp[4].bits, 0x4789);  // 70000 = 0x4788B800 -> rounds up to 0x4789 (70144)
  EXPECT_EQ(bp[5].bits, 0xFF80);
  EXPECT_EQ(bp[6].bits, 0x3DCD);  // 0.1 = 0x3DCCCCCD -> 0x3DCD

  // Back to f32 exactly.
  Tensor back = h.to(DType::f32);
  EXPECT_EQ(back.data_as<float>()[1], -2.5f);
  EXPECT_EQ(back.data_as<float>()[6], 0.0999755859375f);
  EXPECT_EQ(b.to(DType::f32).data_as<float>()[4], 70144.0f);
  // f16 -> bf16: 0.0999755859375 = 0x3DCCC000 in f32 -> bf16 0x3DCD (0x3DCCC000 rounds up).
  EXPECT_EQ(h.to(DType::bf16).data_as<mxfp4::bf16_t>()[6].bits, 0x3DCD);
  // Same dtype: a deep copy.
  Tensor same = f.to(DType::f32);
  EXPECT_NE(same.data(), f.data());
  EXPECT_EQ(same.data_as<float>()[3], f.data_as<float>()[3]);
  // Integer types are refused, except as a same-dtype copy.
  EXPECT_THROW(f.to(DType::i32), mxfp4::DTypeMismatch);
  EXPECT_THROW(Tensor::zeros({2}, DType::u8).to(DType::f32), mxfp4::DTypeMismatch);
  EXPECT_NO_THROW(Tensor::zeros({2}, DType::u8).to(DType::u8));
  // NaN stays NaN.
  Tensor nan = Tensor::from_vector<float>({std::nanf("")}, {1});
  EXPECT_TRUE(std::isnan(nan.to(DType::f16).to(DType::f32).data_as<float>()[0]));
  EXPECT_TRUE(std::isnan(nan.to(DType::bf16).to(DType::f32).data_as<float>()[0]));
}

TEST(Tensor, ShapeOverflowAndNegativeDims) {
  const std::int64_t big = std::int64_t{1} << 40;
  EXPECT_THROW(mxfp4::shape_numel({big, big}), mxfp4::InvalidArgument);
  EXPECT_THROW(mxfp4::shape_numel({-1, 2}), mxfp4::InvalidArgument);
  EXPECT_EQ(mxfp4::shape_numel({}), 1);
  EXPECT_EQ(mxfp4::shape_numel({3, 0, big}), 0);
  EXPECT_EQ(mxfp4::shape_numel({big, 1 << 20}), std::int64_t{1} << 60);
  EXPECT_THROW(Tensor::empty({big, big}, DType::f32), mxfp4::InvalidArgument);
  EXPECT_THROW(Tensor::empty({2, -3}, DType::f32), mxfp4::InvalidArgument);
  // Elements fit int64 but bytes do not.
  EXPECT_THROW(Tensor::empty({std::int64_t{1} << 62, 1}, DType::i64), mxfp4::InvalidArgument);
  std::uint8_t dummy = 0;
  EXPECT_THROW(Tensor::view(&dummy, {big, big}, DType::u8), mxfp4::InvalidArgument);
  try {
    (void)Tensor::zeros({big, big, 4}, DType::u8);
    FAIL() << "no exception";
  } catch (const mxfp4::InvalidArgument& e) {
    EXPECT_TRUE(contains(e.what(), "[1099511627776, 1099511627776, 4]")) << e.what();
  }
  EXPECT_EQ(mxfp4::to_string(Shape{}), "[]");
  EXPECT_EQ(mxfp4::to_string(Shape{2, 3}), "[2, 3]");
}

TEST(Tensor, CudaDeviceIsUnsupportedWithoutTheCudaBackend) {
  EXPECT_EQ(mxfp4::to_string(Device::cuda(1)), "cuda:1");
  EXPECT_EQ(mxfp4::to_string(Device::cpu()), "cpu");
  EXPECT_FALSE(Device::cuda() == Device::cpu());
  EXPECT_FALSE(Device::cuda(0) == Device::cuda(1));
  if (mxfp4::cuda_built()) GTEST_SKIP() << "this build has the CUDA backend";
  EXPECT_THROW(Tensor::empty({2}, DType::f32, Device::cuda()), mxfp4::Unsupported);
  EXPECT_THROW(Tensor::zeros({2}, DType::f32, Device::cuda()), mxfp4::Unsupported);
  try {
    (void)Tensor::empty({2, 2}, DType::f32, Device::cuda(0));
    FAIL() << "no exception";
  } catch (const mxfp4::Unsupported& e) {
    EXPECT_TRUE(contains(e.what(), "cuda:0")) << e.what();
    EXPECT_EQ(e.code(), mxfp4::ErrorCode::unsupported);
  }
  // A view only records the device; touching the data from the host is refused.
  float dummy[2] = {0, 0};
  Tensor v = Tensor::view(dummy, {2}, DType::f32, Device::cuda());
  EXPECT_EQ(v.device(), Device::cuda());
  EXPECT_THROW(v.clone(), mxfp4::Unsupported);
  EXPECT_THROW(v.to(DType::f16), mxfp4::Unsupported);
  EXPECT_THROW(v.item_as_double(0), mxfp4::Unsupported);
}

TEST(Errors, CodesAndNames) {
  EXPECT_EQ(mxfp4::ShapeMismatch("x").code(), mxfp4::ErrorCode::shape_mismatch);
  EXPECT_EQ(mxfp4::InvalidArgument("x").code(), mxfp4::ErrorCode::invalid_argument);
  EXPECT_EQ(mxfp4::IndexOutOfRange("x").code(), mxfp4::ErrorCode::index_out_of_range);
  EXPECT_EQ(mxfp4::NonFiniteValue("x").code(), mxfp4::ErrorCode::non_finite);
  EXPECT_EQ(mxfp4::Unsupported("x").code(), mxfp4::ErrorCode::unsupported);
  EXPECT_STREQ(mxfp4::error_code_name(mxfp4::ErrorCode::shape_mismatch), "shape_mismatch");
  EXPECT_STREQ(mxfp4::error_code_name(mxfp4::ErrorCode::dtype_mismatch), "dtype_mismatch");
  EXPECT_STREQ(mxfp4::error_code_name(mxfp4::ErrorCode::index_out_of_range), "index_out_of_range");
  const mxfp4::Error& base = mxfp4::FormatError("bad magic");
  EXPECT_STREQ(base.what(), "bad magic");
}

}  // namespace
