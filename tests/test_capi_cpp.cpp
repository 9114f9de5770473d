// The C API against the C++ API and the reference kernels: the same bytes from quantize, the same
// results from linear and gather_linear, the same errors (status = ErrorCode, message = what()),
// and files the C++ reader reads back.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/mxfp4.h"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::DType;
using mxfp4::ScaleRule;
using mxfp4::Shape;
using mxfp4::Tensor;
using mxfp4::test::bytes_of;
using mxfp4::test::random_normal;

mxfp4_tensor describe(const Tensor& t) {
  mxfp4_tensor d{};
  d.data = const_cast<void*>(t.data());
  d.rank = t.rank();
  for (int i = 0; i < t.rank(); ++i)
    d.shape[i] = t.shape()[i];
  d.dtype = static_cast<std::int32_t>(t.dtype());
  d.device = {MXFP4_DEVICE_CPU, 0};
  return d;
}

struct CWeight {
  mxfp4_weight* handle = nullptr;
  ~CWeight() { mxfp4_weight_destroy(handle); }
};

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};

TEST(CApiVsCpp, QuantizeGivesTheReferenceBytesForEveryRuleAndDtype) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const Shape& shape : {Shape{7, 96}, Shape{3, 5, 64}}) {
      const Tensor w = random_normal(shape, 11, 2.5f).to(dtype);
      const std::int64_t k = shape.back();
      Shape bshape = shape, sshape = shape;
      bshape.back() = k / 2;
      sshape.back() = k / 32;
      for (ScaleRule rule : kRules) {
        SCOPED_TRACE(std::string(mxfp4::dtype_name(dtype)) + " " + mxfp4::to_string(shape) + " " +
                     mxfp4::scale_rule_name(rule));
        Tensor cb = Tensor::zeros(bshape, DType::u8), cs = Tensor::zeros(sshape, DType::u8);
        const mxfp4_tensor tw = describe(w), tb = describe(cb), ts = describe(cs);
        ASSERT_EQ(mxfp4_quantize(&tw, &tb, &ts, static_cast<std::int32_t>(rule), 0, nullptr),
                  MXFP4_OK)
            << mxfp4_last_error_message();
        const mxfp4::QuantizedTensor cpp = mxfp4::quantize(w, {rule});
        std::vector<std::uint8_t> rb(cb.nbytes()), rs(cs.nbytes());
        mxfp4::detail::QuantizeArgs a{};
        a.weight = w.data();
        a.weight_dtype = dtype;
        a.rows = w.numel() / k;
        a.k = k;
        a.blocks = rb.data();
        a.scales = rs.data();
        a.rule = rule;
        ASSERT_EQ(mxfp4::detail::reference_backend().quantize(a), -1);
        EXPECT_EQ(bytes_of(cb), rb);
        EXPECT_EQ(bytes_of(cs), rs);
        EXPECT_EQ(bytes_of(cpp.blocks), rb);
        EXPECT_EQ(bytes_of(cpp.scales), rs);
      }
    }
  }
}

TEST(CApiVsCpp, LinearAndGatherMatchTheCppApiBitForBit) {
  const Tensor w = random_normal({24, 128}, 21), bias = random_normal({24}, 22);
  const Tensor x = random_normal({5, 128}, 23);
  const mxfp4_tensor tw = describe(w), tbias = describe(bias);
  CWeight cw;
  ASSERT_EQ(mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_MSE, 0, nullptr, &cw.handle), MXFP4_OK);
  const mxfp4::Mxfp4Weight cpp = mxfp4::Mxfp4Weight::quantize(w, bias);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor xd = x.to(dtype);
    Tensor out = Tensor::zeros({5, 24}, dtype);
    const mxfp4_tensor txd = describe(xd), tout = describe(out);
    ASSERT_EQ(mxfp4_linear(&txd, cw.handle, &tout, nullptr), MXFP4_OK);
    EXPECT_EQ(bytes_of(out), bytes_of(mxfp4::linear(xd, cpp))) << mxfp4::dtype_name(dtype);
  }

  const Tensor ew = random_normal({4, 16, 64}, 24), eb = random_normal({4, 16}, 25);
  const mxfp4_tensor tew = describe(ew), teb = describe(eb);
  CWeight ce;
  ASSERT_EQ(mxfp4_weight_quantize(&tew, &teb, MXFP4_SCALE_FLOOR, 0, nullptr, &ce.handle), MXFP4_OK);
  const mxfp4::Mxfp4Weight cppe = mxfp4::Mxfp4Weight::quantize(ew, eb, {ScaleRule::floor});
  const Tensor ids = Tensor::from_vector(std::vector<std::int64_t>{3, 0, 1, 1, 2, 3}, {3, 2});
  const Tensor gx = random_normal({3, 64}, 26);
  Tensor gout = Tensor::zeros({3, 2, 16}, DType::f32);
  const mxfp4_tensor tgx = describe(gx), tids = describe(ids), tgout = describe(gout);
  ASSERT_EQ(mxfp4_gather_linear(&tgx, &tids, ce.handle, &tgout, nullptr), MXFP4_OK);
  EXPECT_EQ(bytes_of(gout), bytes_of(mxfp4::gather_linear(gx, ids, cppe)));

  Tensor deq = Tensor::zeros({4, 16, 64}, DType::bf16);
  const mxfp4_tensor tdeq = describe(deq);
  ASSERT_EQ(mxfp4_dequantize(ce.handle, &tdeq, nullptr), MXFP4_OK);
  EXPECT_EQ(bytes_of(deq), bytes_of(cppe.dequantize(DType::bf16)));
}

// Runs `cpp`, which must throw an mxfp4::Error, and `c`, which must fail with the same code and
// message.
void expect_same_error(const std::function<void()>& cpp, const std::function<mxfp4_status()>& c) {
  std::string what;
  int code = 0;
  try {
    cpp();
    ADD_FAILURE() << "the C++ call did not throw";
  } catch (const mxfp4::Error& e) {
    what = e.what();
    code = static_cast<int>(e.code());
  }
  EXPECT_EQ(static_cast<int>(c()), code);
  EXPECT_EQ(std::string(mxfp4_last_error_message()), what);
}

TEST(CApiVsCpp, ErrorsCarryTheCppCodeAndMessage) {
  const Tensor w = random_normal({8, 64}, 31);
  const mxfp4_tensor tw = describe(w);
  CWeight cw;
  ASSERT_EQ(mxfp4_weight_quantize(&tw, nullptr, MXFP4_SCALE_MSE, 0, nullptr, &cw.handle), MXFP4_OK);
  const mxfp4::Mxfp4Weight cpp = mxfp4::Mxfp4Weight::quantize(w);
  const Tensor bad_x = random_normal({2, 32}, 32);
  Tensor out = Tensor::zeros({2, 8}, DType::f32);
  const mxfp4_tensor tbx = describe(bad_x), tout = describe(out);
  expect_same_error([&] { (void)mxfp4::linear(bad_x, cpp); },
                    [&] { return mxfp4_linear(&tbx, cw.handle, &tout, nullptr); });

  const Tensor w40 = random_normal({2, 40}, 33);
  const mxfp4_tensor tw40 = describe(w40);
  mxfp4_weight* never = nullptr;
  expect_same_error([&] { (void)mxfp4::Mxfp4Weight::quantize(w40); },
                    [&] { return mxfp4_weight_quantize(&tw40, nullptr, 3, 0, nullptr, &never); });
  EXPECT_EQ(never, nullptr);

  Tensor nan_w = random_normal({2, 64}, 34);
  nan_w.data_as<float>()[70] = std::numeric_limits<float>::quiet_NaN();
  Tensor b = Tensor::zeros({2, 32}, DType::u8), s = Tensor::zeros({2, 2}, DType::u8);
  const mxfp4_tensor tn = describe(nan_w), tb = describe(b), ts = describe(s);
  expect_same_error([&] { (void)mxfp4::quantize(nan_w); },
                    [&] { return mxfp4_quantize(&tn, &tb, &ts, 3, 0, nullptr); });

  const Tensor ew = random_normal({2, 8, 64}, 35);
  const mxfp4::Mxfp4Weight cppe = mxfp4::Mxfp4Weight::quantize(ew);
  const mxfp4_tensor tew = describe(ew);
  CWeight ce;
  ASSERT_EQ(mxfp4_weight_quantize(&tew, nullptr, MXFP4_SCALE_MSE, 0, nullptr, &ce.handle),
            MXFP4_OK);
  const Tensor ids = Tensor::from_vector(std::vector<std::int32_t>{0, 2}, {1, 2});
  const Tensor gx = random_normal({1, 64}, 36);
  Tensor gout = Tensor::zeros({1, 2, 8}, DType::f32);
  const mxfp4_tensor tids = describe(ids), tgx = describe(gx), tgout = describe(gout);
  expect_same_error([&] { (void)mxfp4::gather_linear(gx, ids, cppe); },
                    [&] { return mxfp4_gather_linear(&tgx, &tids, ce.handle, &tgout, nullptr); });
}

TEST(CApiVsCpp, SavedFilesReadBackWithTheCppReader) {
  const mxfp4::test::TempDir dir;
  const std::string path = dir.file("w.safetensors");
  const Tensor w = random_normal({16, 64}, 41), bias = random_normal({16}, 42);
  const mxfp4_tensor tw = describe(w), tbias = describe(bias);
  CWeight cw;
  ASSERT_EQ(mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_MSE, 0, nullptr, &cw.handle), MXFP4_OK);
  mxfp4_writer* writer = nullptr;
  ASSERT_EQ(mxfp4_writer_create(&writer), MXFP4_OK);
  ASSERT_EQ(mxfp4_writer_add_weight(writer, "up", cw.handle), MXFP4_OK);
  ASSERT_EQ(mxfp4_writer_add_tensor(writer, "norm", &tbias), MXFP4_OK);
  ASSERT_EQ(mxfp4_writer_set_metadata(writer, "k", "v"), MXFP4_OK);
  ASSERT_EQ(mxfp4_writer_save(writer, path.c_str(), MXFP4_FORMAT_SAFETENSORS), MXFP4_OK);
  mxfp4_writer_destroy(writer);

  const mxfp4::io::SafetensorsFile f = mxfp4::io::SafetensorsFile::open(path);
  ASSERT_EQ(f.entries().size(), 4u);
  EXPECT_EQ(f.metadata().at("k"), "v");
  const mxfp4::Mxfp4Weight cpp = mxfp4::Mxfp4Weight::quantize(w, bias);
  EXPECT_EQ(bytes_of(f.tensor("up.blocks")), bytes_of(cpp.blocks()));
  EXPECT_EQ(bytes_of(f.tensor("up.scales")), bytes_of(cpp.scales()));
  EXPECT_EQ(bytes_of(f.tensor("up.bias")), bytes_of(bias));
  EXPECT_EQ(bytes_of(f.tensor("norm")), bytes_of(bias));
}

}  // namespace
