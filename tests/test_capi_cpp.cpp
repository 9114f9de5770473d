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
#include "mxfp4/gptq.hpp"
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

TEST(CApiVsCpp, GatherExpertOrderMatchesTheCppApiBitForBit) {
  const Tensor ew = random_normal({5, 16, 64}, 81), eb = random_normal({5, 16}, 82);
  const mxfp4_tensor tew = describe(ew), teb = describe(eb);
  CWeight ce;
  ASSERT_EQ(mxfp4_weight_quantize(&tew, &teb, MXFP4_SCALE_MSE, 0, nullptr, &ce.handle), MXFP4_OK);
  const mxfp4::Mxfp4Weight cppe = mxfp4::Mxfp4Weight::quantize(ew, eb);
  // Expert 2 gets no pair; i64 and u32 ids.
  const Tensor ids = Tensor::from_vector(
      std::vector<std::int64_t>{4, 0, 3, 1, 0, 4, 3, 3, 1, 0, 4, 1, 0, 0}, {7, 2});
  const Tensor uids = Tensor::from_vector(
      std::vector<std::uint32_t>{4, 0, 3, 1, 0, 4, 3, 3, 1, 0, 4, 1, 0, 0}, {7, 2});
  const Tensor gx = random_normal({7, 64}, 83), gxs = random_normal({7, 2, 64}, 84);
  mxfp4_run_options int8{};
  ASSERT_EQ(mxfp4_run_options_init(&int8), MXFP4_OK);
  int8.precision = MXFP4_PRECISION_INT8_ACTIVATIONS;
  mxfp4::RunOptions cpp_int8;
  cpp_int8.precision = mxfp4::Precision::int8_activations;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const Tensor* x : {&gx, &gxs}) {
      for (const Tensor* id : {&ids, &uids}) {
        for (const mxfp4_run_options* options :
             std::initializer_list<const mxfp4_run_options*>{nullptr, &int8}) {
          SCOPED_TRACE(std::string(mxfp4::dtype_name(dtype)) + " x " +
                       mxfp4::to_string(x->shape()) + " ids " +
                       std::string(mxfp4::dtype_name(id->dtype())) +
                       (options != nullptr ? " int8" : " exact"));
          const Tensor xd = x->to(dtype);
          Tensor out = Tensor::zeros({14, 16}, dtype);
          Tensor perm = Tensor::zeros({14}, DType::i32), offsets = Tensor::zeros({6}, DType::i32);
          const mxfp4_tensor txd = describe(xd), tids = describe(*id), tout = describe(out),
                             tperm = describe(perm), toffsets = describe(offsets);
          ASSERT_EQ(mxfp4_gather_linear_expert_order(&txd, &tids, ce.handle, &tout, &tperm,
                                                     &toffsets, options),
                    MXFP4_OK)
              << mxfp4_last_error_message();
          const mxfp4::ExpertOrderOutput cpp = mxfp4::gather_linear_expert_order(
              xd, *id, cppe, options != nullptr ? cpp_int8 : mxfp4::RunOptions{});
          EXPECT_EQ(bytes_of(out), bytes_of(cpp.out));
          EXPECT_EQ(bytes_of(perm), bytes_of(cpp.perm));
          EXPECT_EQ(bytes_of(offsets), bytes_of(cpp.offsets));
          EXPECT_EQ(bytes_of(offsets), bytes_of(Tensor::from_vector(
                                           std::vector<std::int32_t>{0, 5, 8, 8, 11, 14}, {6})));
        }
      }
    }
  }

  // The C++ errors, code and message: perm of the wrong dtype, offsets of the wrong length, an
  // id out of range.
  Tensor out = Tensor::zeros({14, 16}, DType::f32);
  Tensor perm = Tensor::zeros({14}, DType::i32), offsets = Tensor::zeros({6}, DType::i32);
  Tensor uperm = Tensor::zeros({14}, DType::u32), short_offsets = Tensor::zeros({5}, DType::i32);
  const Tensor bad_ids = Tensor::from_vector(
      std::vector<std::int32_t>{4, 0, 3, 1, 0, 4, 3, 5, 1, 0, 4, 1, 0, 0}, {7, 2});
  const mxfp4_tensor tgx = describe(gx), tids = describe(ids), tbad = describe(bad_ids),
                     tout = describe(out), tperm = describe(perm), toffsets = describe(offsets),
                     tuperm = describe(uperm), tshort = describe(short_offsets);
  const auto cpp_call = [&](const Tensor& i, Tensor& p, Tensor& o) {
    mxfp4::gather_linear_expert_order_into(gx, i, cppe, out, p, o);
  };
  expect_same_error([&] { cpp_call(ids, uperm, offsets); },
                    [&] {
                      return mxfp4_gather_linear_expert_order(&tgx, &tids, ce.handle, &tout,
                                                              &tuperm, &toffsets, nullptr);
                    });
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("perm must be i32 [14]"),
            std::string::npos)
      << mxfp4_last_error_message();
  expect_same_error([&] { cpp_call(ids, perm, short_offsets); },
                    [&] {
                      return mxfp4_gather_linear_expert_order(&tgx, &tids, ce.handle, &tout, &tperm,
                                                              &tshort, nullptr);
                    });
  expect_same_error([&] { cpp_call(bad_ids, perm, offsets); },
                    [&] {
                      return mxfp4_gather_linear_expert_order(&tgx, &tbad, ce.handle, &tout, &tperm,
                                                              &toffsets, nullptr);
                    });
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

TEST(CApiVsCpp, WithLayoutGivesTheCppBytesAndErrors) {
  const Tensor ew = random_normal({3, 8, 64}, 61), ebias = random_normal({3, 8}, 62);
  const mxfp4_tensor tew = describe(ew), tbias = describe(ebias);
  CWeight cw, cg, cs;
  ASSERT_EQ(mxfp4_weight_quantize(&tew, &tbias, MXFP4_SCALE_MSE, 0, nullptr, &cw.handle), MXFP4_OK);
  ASSERT_EQ(mxfp4_weight_with_layout(cw.handle, MXFP4_LAYOUT_GPU, &cg.handle), MXFP4_OK)
      << mxfp4_last_error_message();
  const mxfp4::Mxfp4Weight gpu =
      mxfp4::Mxfp4Weight::quantize(ew, ebias).with_layout(mxfp4::BlockLayout::gpu);
  mxfp4_tensor part{};
  ASSERT_EQ(mxfp4_weight_get_part(cg.handle, MXFP4_PART_BLOCKS, &part), MXFP4_OK);
  ASSERT_EQ(part.rank, 3);
  EXPECT_EQ(0, std::memcmp(part.data, gpu.blocks().data(), gpu.blocks().nbytes()));
  std::int32_t layout = -1;
  ASSERT_EQ(mxfp4_weight_get_layout(cg.handle, &layout), MXFP4_OK);
  EXPECT_EQ(layout, static_cast<std::int32_t>(mxfp4::BlockLayout::gpu));
  ASSERT_EQ(mxfp4_weight_with_layout(cg.handle, MXFP4_LAYOUT_STANDARD, &cs.handle), MXFP4_OK);
  ASSERT_EQ(mxfp4_weight_get_layout(cs.handle, &layout), MXFP4_OK);
  EXPECT_EQ(layout, MXFP4_LAYOUT_STANDARD);

  // The C++ errors, code and message: a gather on the CPU, a scale above 128.
  const Tensor ids = Tensor::from_vector(std::vector<std::int32_t>{0, 2}, {1, 2});
  const Tensor gx = random_normal({1, 64}, 63);
  Tensor gout = Tensor::zeros({1, 2, 8}, DType::f32);
  const mxfp4_tensor tids = describe(ids), tgx = describe(gx), tgout = describe(gout);
  expect_same_error([&] { (void)mxfp4::gather_linear(gx, ids, gpu); },
                    [&] { return mxfp4_gather_linear(&tgx, &tids, cg.handle, &tgout, nullptr); });
  const Tensor big = random_normal({2, 64}, 64, 1e6f);
  const mxfp4_tensor tbig = describe(big);
  CWeight cbig;
  ASSERT_EQ(mxfp4_weight_quantize(&tbig, nullptr, MXFP4_SCALE_MSE, 0, nullptr, &cbig.handle),
            MXFP4_OK);
  mxfp4_weight* never = nullptr;
  expect_same_error(
      [&] { (void)mxfp4::Mxfp4Weight::quantize(big).with_layout(mxfp4::BlockLayout::gpu); },
      [&] { return mxfp4_weight_with_layout(cbig.handle, MXFP4_LAYOUT_GPU, &never); });
  EXPECT_EQ(never, nullptr);
}

// ---- GPTQ: the C handles against mxfp4::Hessian and mxfp4::quantize_gptq ----

struct CHessian {
  mxfp4_hessian* handle = nullptr;
  ~CHessian() { mxfp4_hessian_destroy(handle); }
};

std::vector<double> c_values(const mxfp4_hessian* h, std::int64_t k) {
  std::vector<double> v(static_cast<std::size_t>(k * k));
  EXPECT_EQ(mxfp4_hessian_read_values(h, v.data(), v.size()), MXFP4_OK)
      << mxfp4_last_error_message();
  return v;
}

// Activations whose columns correlate (a shared component), so that GPTQ moves error around.
Tensor correlated_activations(std::int64_t rows, std::int64_t k, std::uint32_t seed) {
  const Tensor noise = random_normal({rows, k}, seed);
  const Tensor shared = random_normal({rows, 1}, seed + 1);
  Tensor x = Tensor::empty({rows, k}, DType::f32);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      x.data_as<float>()[r * k + c] =
          noise.data_as<float>()[r * k + c] + 2.0f * shared.data_as<float>()[r];
    }
  }
  return x;
}

TEST(CApiVsCpp, HessiansMatchTheCppAccumulatorBitForBit) {
  constexpr std::int64_t k = 96;
  const Tensor x1 = correlated_activations(70, k, 51), x2 = random_normal({3, 2, k}, 53);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(mxfp4::dtype_name(dtype));
    const Tensor a = x1.to(dtype), b = x2.to(dtype);
    mxfp4::Hessian cpp(k);
    cpp.add(a);
    cpp.add(b);
    CHessian c;
    ASSERT_EQ(mxfp4_hessian_create(k, &c.handle), MXFP4_OK);
    const mxfp4_tensor ta = describe(a), tb = describe(b);
    ASSERT_EQ(mxfp4_hessian_add(c.handle, &ta), MXFP4_OK) << mxfp4_last_error_message();
    ASSERT_EQ(mxfp4_hessian_add(c.handle, &tb), MXFP4_OK) << mxfp4_last_error_message();
    mxfp4_hessian_info info{};
    ASSERT_EQ(mxfp4_hessian_get_info(c.handle, &info), MXFP4_OK);
    EXPECT_EQ(info.in_features, k);
    EXPECT_EQ(info.samples, 76);
    EXPECT_EQ(info.samples, cpp.samples());
    EXPECT_EQ(c_values(c.handle, k), cpp.values());
  }
  // Whole matrices: f32 through from_tensor, f64 through from_values, as in C++.
  mxfp4::Hessian acc(k);
  acc.add(x1);
  const Tensor h32 = acc.to_tensor();
  const mxfp4_tensor th32 = describe(h32);
  CHessian from_tensor, from_values;
  ASSERT_EQ(mxfp4_hessian_from_tensor(&th32, &from_tensor.handle), MXFP4_OK);
  EXPECT_EQ(c_values(from_tensor.handle, k), mxfp4::Hessian::from_tensor(h32).values());
  ASSERT_EQ(
      mxfp4_hessian_from_values(k, acc.values().data(), acc.values().size(), &from_values.handle),
      MXFP4_OK);
  EXPECT_EQ(c_values(from_values.handle, k), acc.values());
  mxfp4_hessian_info info{};
  ASSERT_EQ(mxfp4_hessian_get_info(from_values.handle, &info), MXFP4_OK);
  EXPECT_EQ(info.samples, 0);
}

TEST(CApiVsCpp, QuantizeGptqMatchesTheCppApiBitForBit) {
  constexpr std::int64_t n = 24, k = 128;
  const Tensor x = correlated_activations(300, k, 61);
  mxfp4::Hessian cpp_h(k);
  cpp_h.add(x);
  CHessian ch;
  const mxfp4_tensor tx = describe(x);
  ASSERT_EQ(mxfp4_hessian_create(k, &ch.handle), MXFP4_OK);
  ASSERT_EQ(mxfp4_hessian_add(ch.handle, &tx), MXFP4_OK);
  const Tensor w32 = random_normal({n, k}, 62, 0.5f), bias = random_normal({n}, 63);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor w = w32.to(dtype);
    for (ScaleRule rule : kRules) {
      for (double damp : {0.01, 0.0, 0.5}) {
        SCOPED_TRACE(std::string(mxfp4::dtype_name(dtype)) + " " + mxfp4::scale_rule_name(rule) +
                     " damp " + std::to_string(damp));
        const bool with_bias = rule != ScaleRule::floor;
        const mxfp4_tensor tw = describe(w), tb = describe(bias);
        CWeight cw;
        ASSERT_EQ(mxfp4_quantize_gptq(&tw, ch.handle, with_bias ? &tb : nullptr,
                                      static_cast<std::int32_t>(rule), damp, &cw.handle),
                  MXFP4_OK)
            << mxfp4_last_error_message();
        const mxfp4::Mxfp4Weight cpp =
            mxfp4::quantize_gptq(w, cpp_h, with_bias ? std::optional<Tensor>(bias) : std::nullopt,
                                 mxfp4::GptqOptions{rule, damp});
        mxfp4_tensor part{};
        ASSERT_EQ(mxfp4_weight_get_part(cw.handle, MXFP4_PART_BLOCKS, &part), MXFP4_OK);
        EXPECT_EQ(mxfp4::test::bytes_of(
                      Tensor::view(part.data, {part.shape[0], part.shape[1]}, DType::u8)),
                  bytes_of(cpp.blocks()));
        ASSERT_EQ(mxfp4_weight_get_part(cw.handle, MXFP4_PART_SCALES, &part), MXFP4_OK);
        EXPECT_EQ(mxfp4::test::bytes_of(
                      Tensor::view(part.data, {part.shape[0], part.shape[1]}, DType::u8)),
                  bytes_of(cpp.scales()));
        ASSERT_EQ(mxfp4_weight_get_part(cw.handle, MXFP4_PART_BIAS, &part),
                  with_bias ? MXFP4_OK : MXFP4_ERR_INVALID_ARGUMENT);
        if (with_bias) {
          // A copy: the weight does not view the caller's bias.
          EXPECT_NE(part.data, bias.data());
          EXPECT_EQ(bytes_of(Tensor::view(part.data, {n}, DType::f32)), bytes_of(bias));
        }
      }
    }
  }
}

TEST(CApiVsCpp, GptqErrorsCarryTheCppCodeAndMessage) {
  constexpr std::int64_t k = 64;
  CHessian ch;
  ASSERT_EQ(mxfp4_hessian_create(k, &ch.handle), MXFP4_OK);
  mxfp4::Hessian cpp_h(k);
  const Tensor x = random_normal({40, k}, 71);
  const mxfp4_tensor tx = describe(x);
  ASSERT_EQ(mxfp4_hessian_add(ch.handle, &tx), MXFP4_OK);
  cpp_h.add(x);
  mxfp4_hessian* never_h = nullptr;
  mxfp4_weight* never_w = nullptr;

  // K out of range.
  for (std::int64_t bad_k : {std::int64_t{0}, std::int64_t{-3}, std::int64_t{65537}}) {
    expect_same_error([&] { (void)mxfp4::Hessian(bad_k); },
                      [&] { return mxfp4_hessian_create(bad_k, &never_h); });
  }
  // Activations of the wrong K, with NaN, of an integer dtype: H unchanged.
  const Tensor x32 = random_normal({4, 32}, 72);
  Tensor xnan = random_normal({3, k}, 73);
  xnan.data_as<float>()[k + 5] = std::numeric_limits<float>::quiet_NaN();
  const Tensor xint = Tensor::zeros({2, k}, DType::i32);
  for (const Tensor* bad : std::initializer_list<const Tensor*>{&x32, &xnan, &xint}) {
    const mxfp4_tensor tb = describe(*bad);
    expect_same_error([&] { cpp_h.add(*bad); }, [&] { return mxfp4_hessian_add(ch.handle, &tb); });
  }
  EXPECT_EQ(c_values(ch.handle, k), cpp_h.values());
  mxfp4_hessian_info info{};
  ASSERT_EQ(mxfp4_hessian_get_info(ch.handle, &info), MXFP4_OK);
  EXPECT_EQ(info.samples, 40);

  // Whole matrices: not square, wrong dtype, NaN, wrong count.
  const Tensor rect = Tensor::zeros({k, k + 1}, DType::f32),
               h64 = Tensor::zeros({k, k}, DType::i64);
  Tensor hnan = Tensor::zeros({k, k}, DType::f32);
  hnan.data_as<float>()[3 * k + 7] = std::numeric_limits<float>::infinity();
  for (const Tensor* bad : std::initializer_list<const Tensor*>{&rect, &h64, &hnan}) {
    const mxfp4_tensor tb = describe(*bad);
    expect_same_error([&] { (void)mxfp4::Hessian::from_tensor(*bad); },
                      [&] { return mxfp4_hessian_from_tensor(&tb, &never_h); });
  }
  std::vector<double> vals(static_cast<std::size_t>(k * k), 0.0);
  vals[5] = std::numeric_limits<double>::quiet_NaN();
  expect_same_error(
      [&] { (void)mxfp4::Hessian::from_values(k, vals); },
      [&] { return mxfp4_hessian_from_values(k, vals.data(), vals.size(), &never_h); });
  EXPECT_EQ(mxfp4_hessian_from_values(k, vals.data(), vals.size() - 1, &never_h),
            MXFP4_ERR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("needs 4096 values, got count 4095"),
            std::string::npos)
      << mxfp4_last_error_message();
  EXPECT_EQ(never_h, nullptr);

  // quantize_gptq: K mismatch, stacked experts, NaN weight, bad damp, bad rule, not positive
  // definite, a bias of the wrong shape.
  const Tensor w96 = random_normal({4, 96}, 74), stacked = random_normal({2, 4, k}, 75);
  Tensor wnan = random_normal({4, k}, 76);
  wnan.data_as<float>()[9] = -std::numeric_limits<float>::infinity();
  const Tensor w = random_normal({4, k}, 77), bias5 = random_normal({5}, 78);
  for (const Tensor* bad : std::initializer_list<const Tensor*>{&w96, &stacked, &wnan}) {
    const mxfp4_tensor tb = describe(*bad);
    expect_same_error([&] { (void)mxfp4::quantize_gptq(*bad, cpp_h); },
                      [&] {
                        return mxfp4_quantize_gptq(&tb, ch.handle, nullptr, MXFP4_SCALE_MSE, 0.01,
                                                   &never_w);
                      });
  }
  const mxfp4_tensor tw = describe(w), tb5 = describe(bias5);
  for (double damp :
       {-0.5, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    expect_same_error(
        [&] {
          (void)mxfp4::quantize_gptq(w, cpp_h, {}, mxfp4::GptqOptions{ScaleRule::mse, damp});
        },
        [&] {
          return mxfp4_quantize_gptq(&tw, ch.handle, nullptr, MXFP4_SCALE_MSE, damp, &never_w);
        });
  }
  expect_same_error(
      [&] { (void)mxfp4::quantize_gptq(w, cpp_h, bias5); },
      [&] { return mxfp4_quantize_gptq(&tw, ch.handle, &tb5, MXFP4_SCALE_MSE, 0.01, &never_w); });
  // Indefinite: 1 on the diagonal, 2 beside it in the first two columns.
  std::vector<double> indefinite(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i)
    indefinite[static_cast<std::size_t>(i * k + i)] = 1.0;
  indefinite[1] = indefinite[k] = 2.0;
  const mxfp4::Hessian cpp_bad = mxfp4::Hessian::from_values(k, indefinite);
  CHessian c_bad;
  ASSERT_EQ(mxfp4_hessian_from_values(k, indefinite.data(), indefinite.size(), &c_bad.handle),
            MXFP4_OK);
  expect_same_error(
      [&] {
        (void)mxfp4::quantize_gptq(w, cpp_bad, {}, mxfp4::GptqOptions{ScaleRule::mse, 0.0});
      },
      [&] {
        return mxfp4_quantize_gptq(&tw, c_bad.handle, nullptr, MXFP4_SCALE_MSE, 0.0, &never_w);
      });
  EXPECT_EQ(mxfp4_quantize_gptq(&tw, ch.handle, nullptr, 7, 0.01, &never_w),
            MXFP4_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("unknown scale rule 7"),
            std::string::npos);
  EXPECT_EQ(never_w, nullptr);
}

// mxfp4_quantize_gptq_experts against mxfp4::quantize_gptq(weight, std::vector<Hessian>): the
// same bytes for every dtype and rule, with and without bias, and the same errors where both
// report them (the C call checks its handles first, naming the one at fault).
TEST(CApiVsCpp, QuantizeGptqExpertsMatchesTheCppStackedOverloadBitForBit) {
  constexpr std::int64_t experts = 3, n = 8, k = 96;
  std::vector<mxfp4::Hessian> cpp_hs;
  std::vector<CHessian> c_hs(experts);
  std::vector<const mxfp4_hessian*> handles;
  for (std::int64_t e = 0; e < experts; ++e) {
    const Tensor x = correlated_activations(150, k, 81 + static_cast<std::uint32_t>(e));
    cpp_hs.emplace_back(k);
    cpp_hs.back().add(x);
    const mxfp4_tensor tx = describe(x);
    auto& c = c_hs[static_cast<std::size_t>(e)];
    ASSERT_EQ(mxfp4_hessian_create(k, &c.handle), MXFP4_OK);
    ASSERT_EQ(mxfp4_hessian_add(c.handle, &tx), MXFP4_OK);
    handles.push_back(c.handle);
  }
  const Tensor w32 = random_normal({experts, n, k}, 91, 0.5f);
  const Tensor bias = random_normal({experts, n}, 92);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor w = w32.to(dtype);
    for (ScaleRule rule : kRules) {
      const bool with_bias = rule != ScaleRule::even;
      const double damp = rule == ScaleRule::ceil ? 0.0 : 0.05;
      SCOPED_TRACE(std::string(mxfp4::dtype_name(dtype)) + " " + mxfp4::scale_rule_name(rule));
      const mxfp4_tensor tw = describe(w), tb = describe(bias);
      CWeight cw;
      ASSERT_EQ(mxfp4_quantize_gptq_experts(&tw, handles.data(), handles.size(),
                                            with_bias ? &tb : nullptr,
                                            static_cast<std::int32_t>(rule), damp, &cw.handle),
                MXFP4_OK)
          << mxfp4_last_error_message();
      const mxfp4::Mxfp4Weight cpp =
          mxfp4::quantize_gptq(w, cpp_hs, with_bias ? std::optional<Tensor>(bias) : std::nullopt,
                               mxfp4::GptqOptions{rule, damp});
      mxfp4_tensor part{};
      ASSERT_EQ(mxfp4_weight_get_part(cw.handle, MXFP4_PART_BLOCKS, &part), MXFP4_OK);
      ASSERT_EQ(part.rank, 3);
      EXPECT_EQ(bytes_of(Tensor::view(part.data, {experts, n, k / 2}, DType::u8)),
                bytes_of(cpp.blocks()));
      ASSERT_EQ(mxfp4_weight_get_part(cw.handle, MXFP4_PART_SCALES, &part), MXFP4_OK);
      EXPECT_EQ(bytes_of(Tensor::view(part.data, {experts, n, k / 32}, DType::u8)),
                bytes_of(cpp.scales()));
      ASSERT_EQ(mxfp4_weight_get_part(cw.handle, MXFP4_PART_BIAS, &part),
                with_bias ? MXFP4_OK : MXFP4_ERR_INVALID_ARGUMENT);
      if (with_bias) {
        EXPECT_NE(part.data, bias.data());
        EXPECT_EQ(bytes_of(Tensor::view(part.data, {experts, n}, DType::f32)), bytes_of(bias));
      }
    }
  }

  // Errors both APIs find the same way: a bias of the wrong shape, K not a multiple of 32, bad
  // damp, NaN in one expert, one expert's H not positive definite.
  mxfp4_weight* never_w = nullptr;
  const auto c_call = [&](const Tensor& w, const Tensor* b,
                          const std::vector<const mxfp4_hessian*>& hs, double damp) {
    const mxfp4_tensor tw = describe(w);
    mxfp4_tensor tb{};
    if (b != nullptr) tb = describe(*b);
    return mxfp4_quantize_gptq_experts(&tw, hs.data(), hs.size(), b != nullptr ? &tb : nullptr,
                                       MXFP4_SCALE_MSE, damp, &never_w);
  };
  const Tensor bias_flat = random_normal({experts * n}, 93);
  expect_same_error([&] { (void)mxfp4::quantize_gptq(w32, cpp_hs, bias_flat); },
                    [&] { return c_call(w32, &bias_flat, handles, 0.01); });
  for (double damp : {-1.0, std::numeric_limits<double>::quiet_NaN()}) {
    expect_same_error(
        [&] {
          (void)mxfp4::quantize_gptq(w32, cpp_hs, {}, mxfp4::GptqOptions{ScaleRule::mse, damp});
        },
        [&] { return c_call(w32, nullptr, handles, damp); });
  }
  Tensor wnan = w32.clone();
  wnan.data_as<float>()[2 * n * k + 7] = std::numeric_limits<float>::quiet_NaN();
  expect_same_error([&] { (void)mxfp4::quantize_gptq(wnan, cpp_hs); },
                    [&] { return c_call(wnan, nullptr, handles, 0.01); });
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("expert 2"), std::string::npos);
  std::vector<double> indefinite(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i)
    indefinite[static_cast<std::size_t>(i * k + i)] = 1.0;
  indefinite[1] = indefinite[k] = 2.0;
  CHessian c_bad;
  ASSERT_EQ(mxfp4_hessian_from_values(k, indefinite.data(), indefinite.size(), &c_bad.handle),
            MXFP4_OK);
  std::vector<mxfp4::Hessian> cpp_bad = cpp_hs;
  cpp_bad[1] = mxfp4::Hessian::from_values(k, indefinite);
  std::vector<const mxfp4_hessian*> c_bad_hs = handles;
  c_bad_hs[1] = c_bad.handle;
  expect_same_error(
      [&] {
        (void)mxfp4::quantize_gptq(w32, cpp_bad, {}, mxfp4::GptqOptions{ScaleRule::mse, 0.0});
      },
      [&] { return c_call(w32, nullptr, c_bad_hs, 0.0); });
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("expert 1"), std::string::npos);
  const Tensor w40 = random_normal({experts, n, 40}, 94);
  CHessian h40;
  ASSERT_EQ(mxfp4_hessian_create(40, &h40.handle), MXFP4_OK);
  const std::vector<const mxfp4_hessian*> hs40(experts, h40.handle);
  expect_same_error(
      [&] {
        (void)mxfp4::quantize_gptq(w40, std::vector<mxfp4::Hessian>(experts, mxfp4::Hessian(40)));
      },
      [&] { return c_call(w40, nullptr, hs40, 0.01); });
  // The C call's own checks: count, NULL handles, K of each handle, rank.
  EXPECT_EQ(c_call(w32, nullptr, {handles[0], handles[1]}, 0.01), MXFP4_ERR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("has 3 experts but count is 2"),
            std::string::npos)
      << mxfp4_last_error_message();
  EXPECT_EQ(c_call(w32, nullptr, {handles[0], nullptr, handles[2]}, 0.01),
            MXFP4_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("hessians[1] is NULL"), std::string::npos)
      << mxfp4_last_error_message();
  EXPECT_EQ(c_call(w32, nullptr, {handles[0], handles[1], h40.handle}, 0.01),
            MXFP4_ERR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(mxfp4_last_error_message())
                .find("hessians[2] is for K=40 inputs but weight f32 [3, 8, 96] has K=96"),
            std::string::npos)
      << mxfp4_last_error_message();
  EXPECT_EQ(c_call(w32.slice_rows(0, 1).reshape({n, k}), nullptr, {handles[0]}, 0.01),
            MXFP4_ERR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(mxfp4_last_error_message()).find("use mxfp4_quantize_gptq"),
            std::string::npos)
      << mxfp4_last_error_message();
  EXPECT_EQ(never_w, nullptr);
}

}  // namespace
