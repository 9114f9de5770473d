// The Python module mxfp4._mxfp4: nanobind bindings of the C++ API. Arrays come in through
// nanobind's ndarray (numpy's buffer protocol or any DLPack producer: PyTorch CPU and CUDA
// tensors, ...) and are viewed, never copied; results go back as numpy arrays for numpy inputs
// and as tensors of the input's framework for PyTorch inputs. numpy has no bf16 dtype of its
// own: numpy bf16 arrays are ml_dtypes.bfloat16 arrays, passed to the library as their uint16
// view. Library errors become the exception classes of mxfp4/_errors.py.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/tensor_file.hpp"
#include "mxfp4/cpu.hpp"
#include "mxfp4/device.hpp"
#include "mxfp4/gptq.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/rotate.hpp"
#include "mxfp4/version.hpp"
#include "mxfp4/weight.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using mxfp4::Device;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;

// What kind of array a result is returned as.
enum class Framework { numpy, torch, dlpack };

using InArray = nb::ndarray<nb::ro, nb::c_contig>;

// A caller's array seen as a Tensor view; `array` keeps the memory alive.
struct ArrayArg {
  InArray array;
  Tensor tensor;
  Framework framework = Framework::numpy;
};

bool is_torch_tensor(nb::handle obj) {
  nb::handle type = obj.type();
  if (!nb::hasattr(type, "__module__")) return false;
  const std::string module = nb::cast<std::string>(nb::str(type.attr("__module__")));
  return module == "torch" || module.rfind("torch.", 0) == 0;
}

bool is_numpy_bfloat16(nb::handle obj) {
  if (!nb::hasattr(obj, "dtype") || !nb::hasattr(obj, "view")) return false;
  nb::object dtype = obj.attr("dtype");
  return nb::hasattr(dtype, "name") && !is_torch_tensor(obj) &&
         nb::cast<std::string>(nb::str(dtype.attr("name"))) == "bfloat16";
}

std::string describe_dtype(const nb::dlpack::dtype& d) {
  const char* kind = "other";
  switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Bool:
      kind = "bool";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    default:
      break;
  }
  return std::string(kind) + std::to_string(d.bits);
}

DType to_dtype(const char* op, const char* name, const nb::dlpack::dtype& d, bool bf16_view) {
  using C = nb::dlpack::dtype_code;
  const auto code = static_cast<C>(d.code);
  if (d.lanes == 1) {
    if (code == C::Float && d.bits == 32) return DType::f32;
    if (code == C::Float && d.bits == 16) return DType::f16;
    if (code == C::Bfloat && d.bits == 16) return DType::bf16;
    if (code == C::UInt && d.bits == 16 && bf16_view) return DType::bf16;
    if (code == C::UInt && d.bits == 8) return DType::u8;
    if (code == C::UInt && d.bits == 32) return DType::u32;
    if (code == C::Int && d.bits == 32) return DType::i32;
    if (code == C::Int && d.bits == 64) return DType::i64;
  }
  std::string hint;
  if (code == C::Float && d.bits == 64) hint = " (convert float64 to float32 first)";
  throw mxfp4::DTypeMismatch(
      std::string(op) + ": " + name + " has element type " + describe_dtype(d) +
      ", which mxfp4 does not take (f32, f16, bf16, u8, u32, i32, i64)" + hint);
}

Device to_device(const char* op, const char* name, int device_type, int device_id) {
  if (device_type == nb::device::cpu::value) return Device::cpu();
  if (device_type == nb::device::cuda::value) return Device::cuda(device_id);
  throw mxfp4::Unsupported(std::string(op) + ": " + name + " lives on DLPack device type " +
                           std::to_string(device_type) + "; mxfp4 takes CPU and CUDA memory");
}

// `convert`: a non-contiguous input is copied to a contiguous one. Outputs never are (the
// results would land in the copy).
ArrayArg to_array(nb::handle obj, const char* op, const char* name, bool convert = true) {
  if (obj.is_none()) throw mxfp4::InvalidArgument(std::string(op) + ": " + name + " is None");
  nb::object source = nb::borrow(obj);
  const bool bf16_view = is_numpy_bfloat16(obj);
  if (bf16_view) source = obj.attr("view")("uint16");
  ArrayArg a;
  if (!nb::try_cast(source, a.array, convert)) {
    if (!convert && nb::try_cast(source, a.array, true)) {
      throw mxfp4::InvalidArgument(std::string(op) + ": " + name +
                                   " must be C-contiguous (results are written in place)");
    }
    throw mxfp4::InvalidArgument(std::string(op) + ": " + name +
                                 " must be an array (numpy, or a DLPack tensor such as a "
                                 "PyTorch tensor), got " +
                                 nb::cast<std::string>(nb::str(obj.type().attr("__name__"))));
  }
  a.framework = is_torch_tensor(obj) ? Framework::torch : Framework::numpy;
  const DType dtype = to_dtype(op, name, a.array.dtype(), bf16_view);
  const Device device = to_device(op, name, a.array.device_type(), a.array.device_id());
  Shape shape(a.array.ndim());
  for (std::size_t i = 0; i < a.array.ndim(); ++i) {
    shape[i] = static_cast<std::int64_t>(a.array.shape(i));
  }
  a.tensor = Tensor::view(a.array.data(), std::move(shape), dtype, device);
  return a;
}

std::optional<ArrayArg> to_optional_array(nb::handle obj, const char* op, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return to_array(obj, op, name);
}

// An output array must be writable: a read-only numpy array is refused rather than written.
ArrayArg to_output(nb::handle obj, const char* op, const char* name) {
  if (nb::hasattr(obj, "flags") && !is_torch_tensor(obj)) {
    nb::object flags = obj.attr("flags");
    if (nb::hasattr(flags, "writeable") && !nb::cast<bool>(flags.attr("writeable"))) {
      throw mxfp4::InvalidArgument(std::string(op) + ": " + name + " is read-only");
    }
  }
  return to_array(obj, op, name, false);
}

nb::object import_bfloat16() {
  try {
    return nb::module_::import_("ml_dtypes").attr("bfloat16");
  } catch (const nb::python_error&) {
    throw mxfp4::Unsupported(
        "bf16 numpy arrays need the ml_dtypes package (pip install ml_dtypes)");
  }
}

// What a returned array keeps alive: the Tensor (which may own the storage) and, for views of a
// weight's parts, the Python weight (which keeps the arrays it views alive).
struct ArrayOwner {
  Tensor tensor;
  nb::object extra;
};

// A Tensor as an array of `framework`; no copy. `extra` is kept alive with the array.
nb::object to_python(Tensor t, Framework framework, nb::object extra = {}) {
  if (t.device().type == mxfp4::DeviceType::cuda && framework == Framework::numpy) {
    framework = Framework::torch;
  }
  std::vector<std::size_t> shape(t.shape().begin(), t.shape().end());
  nb::dlpack::dtype dtype{};
  dtype.lanes = 1;
  dtype.bits = static_cast<std::uint8_t>(mxfp4::dtype_size(t.dtype()) * 8);
  using C = nb::dlpack::dtype_code;
  switch (t.dtype()) {
    case DType::f32:
    case DType::f16:
      dtype.code = static_cast<std::uint8_t>(C::Float);
      break;
    case DType::bf16:
      // numpy gets the uint16 bits, viewed as ml_dtypes.bfloat16 below.
      dtype.code = static_cast<std::uint8_t>(framework == Framework::numpy ? C::UInt : C::Bfloat);
      break;
    case DType::u8:
    case DType::u32:
      dtype.code = static_cast<std::uint8_t>(C::UInt);
      break;
    case DType::i32:
    case DType::i64:
      dtype.code = static_cast<std::uint8_t>(C::Int);
      break;
  }
  const bool cuda = t.device().type == mxfp4::DeviceType::cuda;
  const int device_type = cuda ? nb::device::cuda::value : nb::device::cpu::value;
  const int device_id = t.device().index;
  const DType element = t.dtype();
  void* data = t.data();
  auto* holder = new ArrayOwner{std::move(t), std::move(extra)};
  nb::capsule owner(holder, [](void* p) noexcept { delete static_cast<ArrayOwner*>(p); });
  switch (framework) {
    case Framework::numpy: {
      nb::object a = nb::ndarray<nb::numpy>(data, shape.size(), shape.data(), owner, nullptr, dtype,
                                            device_type, device_id)
                         .cast();
      if (element == DType::bf16) a = a.attr("view")(import_bfloat16());
      return a;
    }
    case Framework::torch:
      return nb::ndarray<nb::pytorch>(data, shape.size(), shape.data(), owner, nullptr, dtype,
                                      device_type, device_id)
          .cast();
    case Framework::dlpack:
      break;
  }
  return nb::ndarray<>(data, shape.size(), shape.data(), owner, nullptr, dtype, device_type,
                       device_id)
      .cast();
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos) {
    return Device::cuda(std::stoi(s.substr(5)));
  }
  throw mxfp4::InvalidArgument("unknown device '" + s + "' (cpu, cuda or cuda:N)");
}

DType parse_float_dtype(nb::handle obj) {
  // "f32", numpy's np.float32 (a type: its __name__), np.dtype("float32"), torch.float32.
  std::string name = nb::isinstance<nb::type_object>(obj)
                         ? nb::cast<std::string>(nb::str(obj.attr("__name__")))
                         : nb::cast<std::string>(nb::str(obj));
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  if (name == "float32" || name == "f32") return DType::f32;
  if (name == "float16" || name == "f16") return DType::f16;
  if (name == "bfloat16" || name == "bf16") return DType::bf16;
  throw mxfp4::InvalidArgument("unknown output dtype '" + name +
                               "' (f32, f16, bf16, or the numpy/torch float32, float16, bfloat16)");
}

// The stream an operation runs on: the caller's, or PyTorch's current stream for its CUDA
// tensors, so that our kernels are ordered with the caller's PyTorch work.
mxfp4::RunOptions run_options(std::optional<std::uintptr_t> stream, Framework framework,
                              Device device) {
  mxfp4::RunOptions run;
  if (stream) {
    run.stream.handle = reinterpret_cast<void*>(*stream);
  } else if (framework == Framework::torch && device.type == mxfp4::DeviceType::cuda) {
    nb::object cuda = nb::module_::import_("torch").attr("cuda");
    nb::object s = cuda.attr("current_stream")(device.index);
    run.stream.handle = reinterpret_cast<void*>(nb::cast<std::uintptr_t>(s.attr("cuda_stream")));
  }
  return run;
}

mxfp4::RunOptions run_options(std::optional<std::uintptr_t> stream, const ArrayArg& first) {
  return run_options(stream, first.framework, first.tensor.device());
}

// The Python Mxfp4Weight: the C++ weight plus the arrays it views (kept alive with it).
struct PyWeight {
  Mxfp4Weight weight;
  std::vector<InArray> keep_alive;
  Framework framework = Framework::numpy;
};

// A view of one of the weight's parts; the array keeps the Python weight alive.
nb::object part_to_python(const PyWeight& self, const Tensor& part, nb::handle owner) {
  return to_python(part, self.framework, nb::borrow(owner));
}

std::string weight_repr(const PyWeight& w) {
  const Mxfp4Weight& m = w.weight;
  if (!m.defined()) return "Mxfp4Weight(empty)";
  std::string s = "Mxfp4Weight(";
  if (m.stacked()) s += "experts=" + std::to_string(m.num_experts()) + ", ";
  s += "out_features=" + std::to_string(m.out_features()) +
       ", in_features=" + std::to_string(m.in_features()) +
       ", bias=" + (m.bias() ? "True" : "False") + ", device='" + mxfp4::to_string(m.device()) +
       "'";
  if (m.layout() != mxfp4::BlockLayout::standard) {
    s += ", layout=" + std::string(mxfp4::block_layout_name(m.layout()));
  }
  return s + ")";
}

PyWeight weight_quantize(nb::handle weight, nb::handle bias, mxfp4::ScaleRule rule,
                         mxfp4::NonFinitePolicy non_finite, std::optional<std::uintptr_t> stream) {
  const char* op = "Mxfp4Weight.quantize";
  ArrayArg w = to_array(weight, op, "weight");
  std::optional<ArrayArg> b = to_optional_array(bias, op, "bias");
  const mxfp4::RunOptions run = run_options(stream, w);
  mxfp4::QuantizeOptions options;
  options.rule = rule;
  options.non_finite = non_finite;
  PyWeight out;
  out.framework = w.framework;
  {
    nb::gil_scoped_release release;
    mxfp4::QuantizedTensor q = mxfp4::quantize(w.tensor, options, run);
    std::optional<Tensor> bt;
    if (b) bt = b->tensor.clone();
    out.weight = Mxfp4Weight::from_parts(std::move(q.blocks), std::move(q.scales), std::move(bt));
  }
  return out;
}

// ---- GPTQ (include/mxfp4/gptq.hpp) ----

// A Hessian from an array [K, K]: float64 (numpy) is taken as is, anything else goes through the
// library's f32 path (which names a wrong dtype or shape).
mxfp4::Hessian hessian_from_array(nb::handle obj, const char* op) {
  using F64 = nb::ndarray<const double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
  F64 f64;
  if (!is_torch_tensor(obj) && nb::try_cast(obj, f64, false)) {
    if (f64.shape(0) != f64.shape(1)) {
      throw mxfp4::ShapeMismatch(std::string(op) + ": hessian must be square [K, K], got [" +
                                 std::to_string(f64.shape(0)) + ", " +
                                 std::to_string(f64.shape(1)) + "]");
    }
    const auto k = static_cast<std::int64_t>(f64.shape(0));
    std::vector<double> v(f64.data(), f64.data() + f64.size());
    return mxfp4::Hessian::from_values(k, std::move(v));
  }
  ArrayArg h = to_array(obj, op, "hessian");
  return mxfp4::Hessian::from_tensor(h.tensor);
}

nb::object hessian_to_numpy(const mxfp4::Hessian& h) {
  auto* values = new std::vector<double>(h.values());
  nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<double>*>(p); });
  const std::size_t shape[2] = {static_cast<std::size_t>(h.in_features()),
                                static_cast<std::size_t>(h.in_features())};
  return nb::ndarray<nb::numpy, double, nb::ndim<2>>(values->data(), 2, shape, owner).cast();
}

void hessian_add(mxfp4::Hessian& self, nb::handle activations) {
  ArrayArg x = to_array(activations, "Hessian.add", "activations");
  nb::gil_scoped_release release;
  self.add(x.tensor);
}

PyWeight weight_quantize_gptq(nb::handle weight, nb::handle hessian, nb::handle bias,
                              mxfp4::ScaleRule rule, double damp, int refine_sweeps) {
  const char* op = "Mxfp4Weight.quantize_gptq";
  ArrayArg w = to_array(weight, op, "weight");
  std::optional<ArrayArg> b = to_optional_array(bias, op, "bias");
  if (hessian.is_none()) throw mxfp4::InvalidArgument(std::string(op) + ": hessian is None");
  // One Hessian (or array) for a matrix [N, K]; a list or tuple of them, one per expert, for a
  // stack [E, N, K].
  auto one_hessian = [&](nb::handle obj) -> mxfp4::Hessian {
    if (nb::isinstance<mxfp4::Hessian>(obj)) return *nb::inst_ptr<mxfp4::Hessian>(obj);
    return hessian_from_array(obj, op);
  };
  std::vector<mxfp4::Hessian> stack;
  const bool stacked = nb::isinstance<nb::list>(hessian) || nb::isinstance<nb::tuple>(hessian);
  std::optional<mxfp4::Hessian> owned;
  const mxfp4::Hessian* h = nullptr;
  if (stacked) {
    for (nb::handle item : hessian)
      stack.push_back(one_hessian(item));
  } else if (nb::isinstance<mxfp4::Hessian>(hessian)) {
    h = nb::inst_ptr<mxfp4::Hessian>(hessian);
  } else {
    owned = hessian_from_array(hessian, op);
    h = &*owned;
  }
  mxfp4::GptqOptions options;
  options.rule = rule;
  options.damp = damp;
  options.refine_sweeps = refine_sweeps;
  PyWeight out;
  out.framework = w.framework;
  {
    nb::gil_scoped_release release;
    std::optional<Tensor> bt;
    if (b) bt = b->tensor.clone();
    out.weight = stacked ? mxfp4::quantize_gptq(w.tensor, stack, std::move(bt), options)
                         : mxfp4::quantize_gptq(w.tensor, *h, std::move(bt), options);
  }
  return out;
}

PyWeight weight_from_parts(nb::handle blocks, nb::handle scales, nb::handle bias) {
  const char* op = "Mxfp4Weight.from_parts";
  ArrayArg bl = to_array(blocks, op, "blocks");
  ArrayArg sc = to_array(scales, op, "scales");
  std::optional<ArrayArg> bi = to_optional_array(bias, op, "bias");
  PyWeight out;
  out.framework = bl.framework;
  std::optional<Tensor> bt;
  if (bi) bt = bi->tensor;
  out.weight = Mxfp4Weight::from_parts(bl.tensor, sc.tensor, bt);
  out.keep_alive.push_back(bl.array);
  out.keep_alive.push_back(sc.array);
  if (bi) out.keep_alive.push_back(bi->array);
  return out;
}

PyWeight weight_to(const PyWeight& self, const std::string& device) {
  const Device d = parse_device(device);
  const Mxfp4Weight& w = self.weight;
  if (!w.defined()) throw mxfp4::InvalidArgument("Mxfp4Weight.to: the weight is empty");
  PyWeight out;
  out.framework = d.type == mxfp4::DeviceType::cuda ? Framework::torch : self.framework;
  nb::gil_scoped_release release;
  out.weight = w.to(d);
  return out;
}

PyWeight weight_with_layout(const PyWeight& self, mxfp4::BlockLayout layout) {
  PyWeight out;
  out.framework = self.framework;
  out.keep_alive = self.keep_alive;  // the scales and bias (and maybe blocks) are shared
  nb::gil_scoped_release release;
  out.weight = self.weight.with_layout(layout);
  return out;
}

nb::object dequantize(const PyWeight& self, nb::handle dtype, nb::handle out,
                      std::optional<std::uintptr_t> stream) {
  const char* op = "dequantize";
  if (!out.is_none()) {
    ArrayArg o = to_output(out, op, "out");
    const mxfp4::RunOptions run = run_options(stream, o);
    nb::gil_scoped_release release;
    mxfp4::dequantize_into(self.weight, o.tensor, run);
    return nb::borrow(out);
  }
  const DType d = dtype.is_none() ? DType::f32 : parse_float_dtype(dtype);
  const mxfp4::RunOptions run = run_options(stream, self.framework, self.weight.device());
  Tensor result;
  {
    nb::gil_scoped_release release;
    result = mxfp4::dequantize(self.weight, d, run);
  }
  return to_python(std::move(result), self.framework);
}

nb::object quantize(nb::handle weight, mxfp4::ScaleRule rule, mxfp4::NonFinitePolicy non_finite,
                    nb::handle out, std::optional<std::uintptr_t> stream) {
  const char* op = "quantize";
  ArrayArg w = to_array(weight, op, "weight");
  const mxfp4::RunOptions run = run_options(stream, w);
  mxfp4::QuantizeOptions options;
  options.rule = rule;
  options.non_finite = non_finite;
  if (!out.is_none()) {
    nb::tuple pair;
    if (!nb::try_cast(out, pair) || pair.size() != 2) {
      throw mxfp4::InvalidArgument("quantize: out must be a tuple (blocks, scales)");
    }
    ArrayArg b = to_output(pair[0], op, "blocks");
    ArrayArg s = to_output(pair[1], op, "scales");
    {
      nb::gil_scoped_release release;
      mxfp4::quantize_into(w.tensor, b.tensor, s.tensor, options, run);
    }
    return nb::borrow(out);
  }
  mxfp4::QuantizedTensor q;
  {
    nb::gil_scoped_release release;
    q = mxfp4::quantize(w.tensor, options, run);
  }
  return nb::make_tuple(to_python(std::move(q.blocks), w.framework),
                        to_python(std::move(q.scales), w.framework));
}

mxfp4::Precision parse_precision(const char* op, const std::string& precision) {
  if (precision == "exact") return mxfp4::Precision::exact;
  if (precision == "int8_activations") return mxfp4::Precision::int8_activations;
  throw mxfp4::InvalidArgument(std::string(op) + ": unknown precision '" + precision +
                               "' (known: exact, int8_activations)");
}

// The precision and, when given, the workspace (an array on the weight's device whose storage
// the call borrows as scratch) of a linear or gather_linear call.
void set_run_extras(mxfp4::RunOptions& run, const char* op, const std::string& precision,
                    nb::handle workspace, const PyWeight& weight,
                    std::optional<ArrayArg>& workspace_arg) {
  run.precision = parse_precision(op, precision);
  if (workspace.is_none()) return;
  workspace_arg = to_output(workspace, op, "workspace");
  Tensor& w = workspace_arg->tensor;
  if (w.device() != weight.weight.device()) {
    throw mxfp4::InvalidArgument(std::string(op) + ": workspace must be on the weight's device");
  }
  run.workspace = {w.data(), w.nbytes()};
}

nb::object linear(nb::handle x, const PyWeight& weight, nb::handle out,
                  std::optional<std::uintptr_t> stream, const std::string& precision,
                  nb::handle workspace) {
  const char* op = "linear";
  ArrayArg xa = to_array(x, op, "x");
  mxfp4::RunOptions run = run_options(stream, xa);
  std::optional<ArrayArg> workspace_arg;
  set_run_extras(run, op, precision, workspace, weight, workspace_arg);
  if (!out.is_none()) {
    ArrayArg o = to_output(out, op, "out");
    nb::gil_scoped_release release;
    mxfp4::linear_into(xa.tensor, weight.weight, o.tensor, run);
    return nb::borrow(out);
  }
  Tensor result;
  {
    nb::gil_scoped_release release;
    result = mxfp4::linear(xa.tensor, weight.weight, run);
  }
  return to_python(std::move(result), xa.framework);
}

nb::object rotate_blocks(nb::handle x, nb::handle out) {
  const char* op = "rotate_blocks";
  ArrayArg xa = to_array(x, op, "x");
  if (!out.is_none()) {
    ArrayArg o = to_output(out, op, "out");
    nb::gil_scoped_release release;
    mxfp4::rotate_blocks_into(xa.tensor, o.tensor);
    return nb::borrow(out);
  }
  Tensor result;
  {
    nb::gil_scoped_release release;
    result = mxfp4::rotate_blocks(xa.tensor);
  }
  return to_python(std::move(result), xa.framework);
}

nb::object gather_linear(nb::handle x, nb::handle indices, const PyWeight& weight, nb::handle out,
                         std::optional<std::uintptr_t> stream, const std::string& precision,
                         nb::handle workspace) {
  const char* op = "gather_linear";
  ArrayArg xa = to_array(x, op, "x");
  ArrayArg ids = to_array(indices, op, "indices");
  mxfp4::RunOptions run = run_options(stream, xa);
  std::optional<ArrayArg> workspace_arg;
  set_run_extras(run, op, precision, workspace, weight, workspace_arg);
  if (!out.is_none()) {
    ArrayArg o = to_output(out, op, "out");
    nb::gil_scoped_release release;
    mxfp4::gather_linear_into(xa.tensor, ids.tensor, weight.weight, o.tensor, run);
    return nb::borrow(out);
  }
  Tensor result;
  {
    nb::gil_scoped_release release;
    result = mxfp4::gather_linear(xa.tensor, ids.tensor, weight.weight, run);
  }
  return to_python(std::move(result), xa.framework);
}

// out, perm and offsets are given together or not at all: a partial set would leave the call
// half in the caller's buffers and half in new arrays.
nb::tuple gather_linear_expert_order(nb::handle x, nb::handle indices, const PyWeight& weight,
                                     nb::handle out, nb::handle perm, nb::handle offsets,
                                     std::optional<std::uintptr_t> stream,
                                     const std::string& precision, nb::handle workspace) {
  const char* op = "gather_linear_expert_order";
  ArrayArg xa = to_array(x, op, "x");
  ArrayArg ids = to_array(indices, op, "indices");
  mxfp4::RunOptions run = run_options(stream, xa);
  std::optional<ArrayArg> workspace_arg;
  set_run_extras(run, op, precision, workspace, weight, workspace_arg);
  const int given = static_cast<int>(!out.is_none()) + static_cast<int>(!perm.is_none()) +
                    static_cast<int>(!offsets.is_none());
  if (given == 3) {
    ArrayArg o = to_output(out, op, "out");
    ArrayArg p = to_output(perm, op, "perm");
    ArrayArg offs = to_output(offsets, op, "offsets");
    {
      nb::gil_scoped_release release;
      mxfp4::gather_linear_expert_order_into(xa.tensor, ids.tensor, weight.weight, o.tensor,
                                             p.tensor, offs.tensor, run);
    }
    return nb::make_tuple(out, perm, offsets);
  }
  if (given != 0) {
    throw mxfp4::InvalidArgument(std::string(op) +
                                 ": give out, perm and offsets together, or none of them");
  }
  mxfp4::ExpertOrderOutput result;
  {
    nb::gil_scoped_release release;
    result = mxfp4::gather_linear_expert_order(xa.tensor, ids.tensor, weight.weight, run);
  }
  return nb::make_tuple(to_python(std::move(result.out), xa.framework),
                        to_python(std::move(result.perm), xa.framework),
                        to_python(std::move(result.offsets), xa.framework));
}

// ---- Files ----

struct PyTensorInfo {
  std::string name;
  std::optional<std::string> dtype;
  std::string file_dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t nbytes = 0;
};

struct PyFile {
  std::unique_ptr<mxfp4::detail::TensorFileReader> reader;

  const mxfp4::detail::TensorFileReader& get() const {
    if (!reader) throw mxfp4::InvalidArgument("the file is closed");
    return *reader;
  }
};

PyFile file_open(const std::string& path, const std::string& format) {
  const auto f = mxfp4::detail::parse_file_format(format);
  PyFile out;
  nb::gil_scoped_release release;
  out.reader = mxfp4::detail::open_tensor_file(path, f);
  return out;
}

std::vector<PyTensorInfo> file_tensors(const PyFile& self) {
  std::vector<PyTensorInfo> out;
  for (const auto& t : self.get().tensors()) {
    PyTensorInfo i;
    i.name = t.name;
    if (t.dtype) i.dtype = std::string(mxfp4::dtype_name(*t.dtype));
    i.file_dtype = t.file_dtype;
    i.shape = t.shape;
    i.nbytes = t.nbytes;
    out.push_back(std::move(i));
  }
  return out;
}

std::uint64_t save(const std::string& path, nb::dict tensors, nb::handle metadata,
                   const std::string& format) {
  const char* op = "save";
  std::vector<mxfp4::detail::NamedTensor> items;
  std::vector<ArrayArg> keep;
  for (auto [key, value] : tensors) {
    if (!nb::isinstance<nb::str>(key)) {
      throw mxfp4::InvalidArgument("save: tensor names must be str");
    }
    const std::string name = nb::cast<std::string>(key);
    if (nb::isinstance<PyWeight>(value)) {
      mxfp4::detail::append_weight(items, name, nb::cast<const PyWeight&>(value).weight);
    } else {
      ArrayArg a = to_array(value, op, name.c_str());
      items.push_back({name, a.tensor});
      keep.push_back(std::move(a));
    }
  }
  std::map<std::string, std::string> meta;
  if (!metadata.is_none()) {
    for (auto [key, value] : nb::cast<nb::dict>(metadata)) {
      if (!nb::isinstance<nb::str>(key) || !nb::isinstance<nb::str>(value)) {
        throw mxfp4::InvalidArgument("save: metadata keys and values must be str");
      }
      meta[nb::cast<std::string>(key)] = nb::cast<std::string>(value);
    }
  }
  const auto f = mxfp4::detail::parse_file_format(format);
  nb::gil_scoped_release release;
  return mxfp4::detail::save_tensor_file(path, f, items, meta);
}

const char* error_class_name(mxfp4::ErrorCode code) {
  switch (code) {
    case mxfp4::ErrorCode::invalid_argument:
      return "InvalidArgument";
    case mxfp4::ErrorCode::shape_mismatch:
      return "ShapeMismatch";
    case mxfp4::ErrorCode::dtype_mismatch:
      return "DTypeMismatch";
    case mxfp4::ErrorCode::index_out_of_range:
      return "IndexOutOfRange";
    case mxfp4::ErrorCode::non_finite:
      return "NonFiniteValue";
    case mxfp4::ErrorCode::format_error:
      return "FormatError";
    case mxfp4::ErrorCode::io_error:
      return "IoError";
    case mxfp4::ErrorCode::unsupported:
      return "Unsupported";
    case mxfp4::ErrorCode::device_error:
      return "DeviceError";
  }
  return "Error";
}

void translate_error(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const mxfp4::Error& e) {
    PyObject* errors = PyImport_ImportModule("mxfp4._errors");
    PyObject* cls =
        errors != nullptr ? PyObject_GetAttrString(errors, error_class_name(e.code())) : nullptr;
    if (cls == nullptr) {
      PyErr_Clear();
      PyErr_SetString(PyExc_RuntimeError, e.what());
    } else {
      PyErr_SetString(cls, e.what());
    }
    Py_XDECREF(cls);
    Py_XDECREF(errors);
  }
}

}  // namespace

NB_MODULE(_mxfp4, m) {
  m.doc() = "Bindings of the mxfp4 C++ library (use the mxfp4 package, not this module).";
  nb::register_exception_translator(translate_error);
  // nanobind's exit-time check reports weights that module globals still hold when the
  // interpreter finalizes (seen with weights viewing DLPack arrays); these are not leaks: creating
  // and dropping such weights in a loop keeps the process size constant.
  nb::set_leak_warnings(false);

  m.attr("__version__") = mxfp4::version_string();
  m.def("cuda_built", &mxfp4::cuda_built,
        "True when this build of the library has its CUDA backend.");
  m.def("cuda_device_count", &mxfp4::cuda_device_count,
        "Number of usable CUDA devices (0 without the CUDA backend, a driver or a GPU).");
  m.def(
      "synchronize",
      [](std::optional<std::uintptr_t> stream) {
        nb::gil_scoped_release release;
        mxfp4::synchronize(mxfp4::Stream{stream ? reinterpret_cast<void*>(*stream) : nullptr});
      },
      "stream"_a = nb::none(), "Waits for the work enqueued on a CUDA stream (None: default).");
  m.def("set_num_threads", &mxfp4::set_num_threads, "n"_a,
        "Threads a CPU call uses, the caller included (0: the CPUs this process may use).");
  m.def("num_threads", &mxfp4::num_threads, "Threads a CPU call uses now.");

  nb::enum_<mxfp4::ScaleRule>(m, "ScaleRule",
                              "How the shared E8M0 scale of a 32-element block is chosen.")
      .value("floor", mxfp4::ScaleRule::floor, "OCP spec: floor(log2 amax) - 2; saturates.")
      .value("ceil", mxfp4::ScaleRule::ceil, "NVIDIA/triton: ceil(log2(amax / 6)).")
      .value("even", mxfp4::ScaleRule::even, "torchao EVEN.")
      .value("mse", mxfp4::ScaleRule::mse,
             "ceil exponent or one below, whichever has the smaller error (the default).")
      .value("mistralrs", mxfp4::ScaleRule::mistralrs,
             "mistral.rs 0.8.1's clipping rule, only to reproduce its bytes.");
  nb::enum_<mxfp4::NonFinitePolicy>(m, "NonFinitePolicy", "What quantize does with NaN or Inf.")
      .value("error", mxfp4::NonFinitePolicy::error, "Raise NonFiniteValue (the default).")
      .value("nan_block", mxfp4::NonFinitePolicy::nan_block,
             "Code the block with scale 0xFF, which decodes as NaN.");

  nb::enum_<mxfp4::BlockLayout>(m, "BlockLayout",
                                "How a weight's blocks hold their codes (only the bits inside a\n"
                                "16-byte block move).")
      .value("standard", mxfp4::BlockLayout::standard,
             "Element 2j in the low nibble of byte j: what files hold and every backend reads.")
      .value("gpu", mxfp4::BlockLayout::gpu,
             "The CUDA kernels' own layout (optional, made with Mxfp4Weight.with_layout): only\n"
             "the CUDA backend reads it; CPU linear refuses it. Needs every scale at most 128.");
  nb::class_<PyWeight>(m, "Mxfp4Weight",
                       "An MXFP4 weight: a dense matrix [N, K] or a stack of experts [E, N, K],\n"
                       "stored as blocks u8 [.., N, K/2], scales u8 [.., N, K/32] and an "
                       "optional\nbias [N] or [E, N]. Create it with Mxfp4Weight.quantize, "
                       "Mxfp4Weight.from_parts\nor File.load_weight.")
      .def_static("quantize", &weight_quantize, "weight"_a.none(), "bias"_a = nb::none(),
                  nb::kw_only(), "rule"_a = mxfp4::kDefaultScaleRule,
                  "non_finite"_a = mxfp4::NonFinitePolicy::error, "stream"_a = nb::none(),
                  "Quantizes weight (f32/f16/bf16 [N, K] or [E, N, K], K a multiple of 32).\n"
                  "bias (optional, [N] or [E, N]) is copied. The weight lives on the input's "
                  "device.")
      .def_static("quantize_gptq", &weight_quantize_gptq, "weight"_a.none(), "hessian"_a.none(),
                  "bias"_a = nb::none(), nb::kw_only(), "rule"_a = mxfp4::kDefaultScaleRule,
                  "damp"_a = 0.01, "refine_sweeps"_a = 0,
                  "Quantizes weight (f32/f16/bf16 [N, K] on the CPU, K a multiple of 32) with\n"
                  "GPTQ error correction: each column's rounding error moves onto the columns\n"
                  "not yet quantized so that x W^T changes least on the calibration inputs.\n"
                  "hessian: a Hessian accumulated from the layer's inputs, or an array X^T X\n"
                  "[K, K] (float32 or float64); for a stack of experts [E, N, K], a list of E\n"
                  "of them (each expert's own inputs). Each 32-column block's scale is chosen\n"
                  "by rule from the error-updated weights. damp * mean(diag H) is added to H's\n"
                  "diagonal (0.01, GPTQ's default). bias (optional, [N] or [E, N]) is copied.\n"
                  "A diagonal H gives exactly Mxfp4Weight.quantize's result.\n"
                  "refine_sweeps (0 to 1000, default 0): after GPTQ, up to this many sweeps of\n"
                  "coordinate descent on the codes, scales kept: each weight moves to a\n"
                  "neighbouring E2M1 value when that lowers tr((Q - W) H (Q - W)^T).")
      .def_static("from_parts", &weight_from_parts, "blocks"_a, "scales"_a, "bias"_a = nb::none(),
                  "A weight viewing existing parts (no copy; the arrays are kept alive):\n"
                  "blocks u8 [.., N, K/2], scales u8 [.., N, K/32], bias [N] / [E, N] or None.")
      .def_prop_ro(
          "stacked", [](const PyWeight& w) { return w.weight.stacked(); },
          "True for a stack of experts [E, N, K].")
      .def_prop_ro(
          "num_experts", [](const PyWeight& w) { return w.weight.num_experts(); },
          "E (1 for a dense weight).")
      .def_prop_ro(
          "out_features", [](const PyWeight& w) { return w.weight.out_features(); }, "N.")
      .def_prop_ro(
          "in_features", [](const PyWeight& w) { return w.weight.in_features(); }, "K.")
      .def_prop_ro(
          "device", [](const PyWeight& w) { return mxfp4::to_string(w.weight.device()); },
          "'cpu' or 'cuda:N'.")
      .def_prop_ro(
          "blocks",
          [](nb::handle self) {
            const PyWeight& w = nb::cast<const PyWeight&>(self);
            return part_to_python(w, w.weight.blocks(), self);
          },
          "The packed E2M1 codes, u8 [.., N, K/2], in the weight's layout (a view of the\n"
          "weight's storage).")
      .def_prop_ro(
          "scales",
          [](nb::handle self) {
            const PyWeight& w = nb::cast<const PyWeight&>(self);
            return part_to_python(w, w.weight.scales(), self);
          },
          "The E8M0 scales, u8 [.., N, K/32] (a view of the weight's storage).")
      .def_prop_ro(
          "bias",
          [](nb::handle self) -> nb::object {
            const PyWeight& w = nb::cast<const PyWeight&>(self);
            if (!w.weight.bias()) return nb::none();
            return part_to_python(w, *w.weight.bias(), self);
          },
          "The bias, or None.")
      .def("dequantize", &dequantize, "dtype"_a = nb::none(), nb::kw_only(), "out"_a = nb::none(),
           "stream"_a = nb::none(),
           "The full weight [N, K] or [E, N, K] in dtype 'f32' (default), 'f16' or 'bf16'\n"
           "(exact in f32 and bf16), or written into out.")
      .def_prop_ro(
          "layout", [](const PyWeight& w) { return w.weight.layout(); },
          "The BlockLayout of blocks (standard unless made with with_layout).")
      .def("to", &weight_to, "device"_a,
           "A copy of the weight on device ('cpu', 'cuda', 'cuda:N'), in the same layout.")
      .def("with_layout", &weight_with_layout, "layout"_a,
           "This weight with its blocks in layout (a BlockLayout): new blocks converted block\n"
           "by block, scales and bias shared (everything shared when already in it).\n"
           "BlockLayout.gpu is an optional re-layout for the CUDA kernels; it needs every\n"
           "scale at most 128 (InvalidArgument names the first block above). Files always\n"
           "hold the standard layout: saving converts.")
      .def("__repr__", &weight_repr);

  nb::class_<mxfp4::Hessian>(
      m, "Hessian",
      "The sum of x^T x over a layer's calibration inputs x (rows are samples), [K, K] in\n"
      "float64: what Mxfp4Weight.quantize_gptq needs. Stream batches with add().")
      .def(nb::init<std::int64_t>(), "in_features"_a, "An all-zero Hessian for K inputs.")
      .def_static(
          "from_array", [](nb::handle h) { return hessian_from_array(h, "Hessian.from_array"); },
          "hessian"_a, "A Hessian holding an existing matrix [K, K] (float32 or float64).")
      .def("add", &hessian_add, "activations"_a,
           "Adds x^T x for activations f32/f16/bf16 [..., K] (CPU); every row is a sample.")
      .def_prop_ro("in_features", &mxfp4::Hessian::in_features, "K.")
      .def_prop_ro("samples", &mxfp4::Hessian::samples, "Rows added so far.")
      .def("numpy", &hessian_to_numpy, "The matrix as a new float64 numpy array [K, K].")
      .def("__repr__", [](const mxfp4::Hessian& h) {
        return "Hessian(in_features=" + std::to_string(h.in_features()) +
               ", samples=" + std::to_string(h.samples()) + ")";
      });
  m.def(
      "hessian",
      [](nb::handle activations) {
        ArrayArg x = to_array(activations, "hessian", "activations");
        if (x.tensor.rank() < 1) {
          throw mxfp4::ShapeMismatch("hessian: activations must be [..., K], got a scalar");
        }
        mxfp4::Hessian h(x.tensor.dim(-1));
        nb::gil_scoped_release release;
        h.add(x.tensor);
        return h;
      },
      "activations"_a.none(),
      "Hessian(K) with activations [..., K] added: x^T x over its rows, float64.");
  m.def("quantize", &quantize, "weight"_a.none(), nb::kw_only(),
        "rule"_a = mxfp4::kDefaultScaleRule, "non_finite"_a = mxfp4::NonFinitePolicy::error,
        "out"_a = nb::none(), "stream"_a = nb::none(),
        "weight f32/f16/bf16 [.., N, K] -> (blocks u8 [.., N, K/2], scales u8 [.., N, K/32]),\n"
        "new arrays or written into out=(blocks, scales).");
  m.def(
      "dequantize",
      [](const PyWeight& w, nb::handle dtype, nb::handle out, std::optional<std::uintptr_t> s) {
        return dequantize(w, dtype, out, s);
      },
      "weight"_a, "dtype"_a = nb::none(), nb::kw_only(), "out"_a = nb::none(),
      "stream"_a = nb::none(), "The same as weight.dequantize(dtype, out=out).");
  m.def("linear", &linear, "x"_a.none(), "weight"_a, nb::kw_only(), "out"_a = nb::none(),
        "stream"_a = nb::none(), "precision"_a = "exact", "workspace"_a = nb::none(),
        "x [..., K] -> x W^T + bias [..., N] in x's dtype, for a dense weight; accumulates\n"
        "in f32. Returns a new array of x's framework, or writes into out.\n"
        "precision='int8_activations' rounds each 32-element block of x to int8 (CPU only,\n"
        "faster for few rows; error bounded by max|x_block|/254 * sum|w| per block);\n"
        "'exact' (default) uses x as given. workspace: an array on the weight's device (CUDA)\n"
        "of at least linear_workspace_bytes() bytes lent as scratch, so the call allocates\n"
        "nothing; CPU calls ignore it.");
  m.def("linear_workspace_bytes", &mxfp4::linear_workspace_bytes,
        "Bytes of workspace with which a CUDA linear on the current device never allocates:\n"
        "131076 per SM where the Hopper GEMM runs (stream-K's partial sums, for some bf16\n"
        "batches of more than 128 tokens), 0 elsewhere and in builds without CUDA.");
  m.def("rotate_blocks", &rotate_blocks, "x"_a.none(), nb::kw_only(), "out"_a = nb::none(),
        "x f32/f16/bf16 [..., K] (CPU, K a multiple of 32) -> x R in x's dtype: each 32-element\n"
        "block of every row times the normalized 32x32 Sylvester Hadamard matrix H (H = H^T =\n"
        "H^-1, entries +-1/sqrt(32)), computed in float64 and rounded once. Quantize\n"
        "rotate_blocks(W) and call linear(rotate_blocks(x), weight) to compute x W^T with the\n"
        "rotated weight; for GPTQ, take the Hessian of rotate_blocks(x). out may be x itself.");
  m.def("gather_linear", &gather_linear, "x"_a.none(), "indices"_a.none(), "weight"_a,
        nb::kw_only(), "out"_a = nb::none(), "stream"_a = nb::none(), "precision"_a = "exact",
        "workspace"_a = nb::none(),
        "Mixture of experts: out[t, s] = x_row W[e]^T + bias[e], e = indices[t, s], for a\n"
        "stacked weight [E, N, K]. x is [T, K] (every slot uses row t) or [T, topk, K];\n"
        "indices u32/i32/i64 [T, topk] in [0, E). Output [T, topk, N] in x's dtype.\n"
        "precision: as for linear. workspace: an array on the weight's device (CUDA) of at\n"
        "least gather_linear_workspace_bytes(T, topk, E) bytes lent as scratch, so the call\n"
        "allocates nothing; CPU calls ignore it.");
  m.def("gather_linear_expert_order", &gather_linear_expert_order, "x"_a.none(), "indices"_a.none(),
        "weight"_a, nb::kw_only(), "out"_a = nb::none(), "perm"_a = nb::none(),
        "offsets"_a = nb::none(), "stream"_a = nb::none(), "precision"_a = "exact",
        "workspace"_a = nb::none(),
        "gather_linear with its output in expert order, for fused pipelines. Returns\n"
        "(out, perm, offsets), new arrays of x's framework, or the arrays given as out=,\n"
        "perm= and offsets= (all three or none) written in place. Pair t * topk + s is\n"
        "(token t, slot s). out [T * topk, N] in x's dtype: row p is the result of pair\n"
        "perm[p]. perm int32 [T * topk]: the pairs grouped by expert in ascending id (the CPU\n"
        "keeps ascending pair order within an expert; CUDA may not). offsets int32 [E + 1]:\n"
        "expert e's rows are offsets[e]:offsets[e + 1]. x, indices, precision and workspace\n"
        "as for gather_linear.");
  m.def(
      "gather_linear_workspace_bytes",
      [](std::int64_t tokens, std::int64_t topk, std::int64_t experts, std::int64_t k) {
        return mxfp4::gather_linear_workspace_bytes(tokens, topk, experts, k);
      },
      "tokens"_a, "topk"_a, "experts"_a, "k"_a = 0,
      "Bytes of workspace a CUDA gather_linear of tokens x topk pairs over experts experts\n"
      "uses (0 for small batches). With the weight's k: also room to stage 16-bit x rows in\n"
      "expert order, which makes the Hopper GEMM for prefill faster.");

  nb::class_<PyTensorInfo>(m, "TensorInfo", "A tensor as a file lists it.")
      .def_ro("name", &PyTensorInfo::name)
      .def_ro("dtype", &PyTensorInfo::dtype,
              "mxfp4's dtype name ('f32', 'u8', ...) or None when it has none.")
      .def_ro("file_dtype", &PyTensorInfo::file_dtype, "The file's own dtype name ('F32', ...).")
      .def_prop_ro(
          "shape",
          [](const PyTensorInfo& t) {
            nb::list l;
            for (auto d : t.shape)
              l.append(d);
            return nb::tuple(l);
          },
          "The shape, a tuple.")
      .def_ro("nbytes", &PyTensorInfo::nbytes)
      .def("__repr__", [](const PyTensorInfo& t) {
        std::string shape = "(";
        for (std::size_t i = 0; i < t.shape.size(); ++i) {
          shape += (i ? ", " : "") + std::to_string(t.shape[i]);
        }
        shape += t.shape.size() == 1 ? ",)" : ")";
        return "TensorInfo(name='" + t.name + "', file_dtype='" + t.file_dtype +
               "', shape=" + shape + ")";
      });

  nb::class_<PyFile>(
      m, "File",
      "An opened file (safetensors, gguf, uqff1, gptoss or uqff-legacy); read-only.\n"
      "MXFP4 weights are listed as P.blocks, P.scales and P.bias in every format.")
      .def_static("open", &file_open, "path"_a, "format"_a = "auto",
                  "Opens and validates path in format: 'auto' (gguf or uqff1 by the contents,\n"
                  "else safetensors), 'safetensors', 'gguf', 'uqff1', 'gptoss' or 'uqff-legacy'.")
      .def_prop_ro(
          "path", [](const PyFile& f) { return f.get().source(); }, "The file's path.")
      .def_prop_ro(
          "format",
          [](const PyFile& f) { return mxfp4::detail::file_format_name(f.get().format()); },
          "The file's format ('safetensors', 'gguf', 'uqff1', 'gptoss', 'uqff-legacy').")
      .def_prop_ro("tensors", &file_tensors, "The tensors, in file order.")
      .def_prop_ro(
          "metadata", [](const PyFile& f) { return f.get().metadata(); },
          "The file's string metadata.")
      .def_prop_ro(
          "weight_names", [](const PyFile& f) { return f.get().weight_names(); },
          "Prefixes P of the MXFP4 weights (P.blocks + P.scales [+ P.bias]), in file order.")
      .def(
          "read",
          [](const PyFile& f, const std::string& name) {
            Tensor t;
            {
              nb::gil_scoped_release release;
              t = f.get().read(name);
            }
            return to_python(std::move(t), Framework::numpy);
          },
          "name"_a, "Tensor name as a new numpy array.")
      .def(
          "load_weight",
          [](const PyFile& f, const std::string& prefix, const std::string& device) {
            const Device d = parse_device(device);
            PyWeight w;
            w.framework = d.type == mxfp4::DeviceType::cuda ? Framework::torch : Framework::numpy;
            nb::gil_scoped_release release;
            w.weight = f.get().load_weight(prefix, d);
            return w;
          },
          "prefix"_a, "device"_a = "cpu",
          "The MXFP4 weight prefix (prefix.blocks, prefix.scales, prefix.bias if present)\n"
          "on device.")
      .def(
          "close", [](PyFile& f) { f.reader.reset(); },
          "Releases the file; loaded weights and read arrays stay valid.")
      .def("__enter__", [](nb::handle self) { return nb::borrow(self); })
      .def(
          "__exit__",
          [](PyFile& f, nb::handle, nb::handle, nb::handle) {
            f.reader.reset();
            return false;
          },
          "type"_a.none(), "value"_a.none(), "traceback"_a.none());

  m.def("save", &save, "path"_a, "tensors"_a, "metadata"_a = nb::none(), "format"_a = "auto",
        "Writes tensors (a dict: name -> array, or prefix -> Mxfp4Weight, written as\n"
        "prefix.blocks, prefix.scales and prefix.bias) and string metadata to path, atomically,\n"
        "in format: 'auto' (from the extension: .safetensors, .gguf, .uqff = uqff1),\n"
        "'safetensors', 'gguf', 'uqff1', 'gptoss' or 'uqff-legacy' (MXFP4 weights only).\n"
        "Returns the file's size in bytes.");
}
