#include "cpu/backend.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "core/convert.hpp"
#include "cpu/cpu_features.hpp"
#include "cpu/int8_rows.hpp"
#include "cpu/thread_pool.hpp"
#include "mxfp4/cpu.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4::cpu {

static_assert(static_cast<int>(CpuIsa::scalar) == static_cast<int>(Isa::scalar) &&
              static_cast<int>(CpuIsa::avx2) == static_cast<int>(Isa::avx2) &&
              static_cast<int>(CpuIsa::avx512) == static_cast<int>(Isa::avx512) &&
              static_cast<int>(CpuIsa::neon) == static_cast<int>(Isa::neon));

namespace {

constexpr std::int64_t kColumnQuantum = 64;  // kernels tile columns; chunks keep tiles whole
constexpr std::int64_t kRowQuantum = 16;
constexpr std::int64_t kMaxTaskRows = 256;
constexpr std::int64_t kTaskMacs = std::int64_t{1} << 18;  // ~10-100 us: dwarfs a task hand-off
constexpr std::int64_t kTaskElements = std::int64_t{1} << 15;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// ---- quantize / dequantize: rows are independent, so any cut gives the same bytes ---------------

std::int64_t run_quantize(const Kernels& kernels, const detail::QuantizeArgs& a) {
  const std::int64_t per_task = rows_per_task(a.k);
  const std::int64_t tasks = ceil_div(a.rows, per_task);
  std::vector<std::int64_t> first_non_finite(static_cast<std::size_t>(tasks), -1);
  parallel_for(tasks, [&](std::int64_t t) {
    const std::int64_t r0 = t * per_task;
    first_non_finite[static_cast<std::size_t>(t)] =
        kernels.quantize_rows(a, r0, std::min(a.rows, r0 + per_task));
  });
  // Tasks hold increasing rows: the first task that saw one has the first non-finite element.
  for (const std::int64_t i : first_non_finite) {
    if (i >= 0) return i;
  }
  return -1;
}

void run_dequantize(const Kernels& kernels, const detail::DequantizeArgs& a) {
  const std::int64_t per_task = rows_per_task(a.k);
  parallel_for(ceil_div(a.rows, per_task), [&](std::int64_t t) {
    const std::int64_t r0 = t * per_task;
    kernels.dequantize_rows(a, r0, std::min(a.rows, r0 + per_task));
  });
}

// ---- linear / gather_linear ---------------------------------------------------------------------

// One kernel call: rows [row0, row0 + rows) of the row-pointer arrays (a batch of count_hint
// rows that all use `expert`) times columns [n0, n1).
struct MatmulTask {
  std::int64_t expert;
  std::int64_t row0;
  std::int64_t rows;
  std::int64_t count_hint;
  std::int64_t n0;
  std::int64_t n1;
};

void append_tasks(std::vector<MatmulTask>& tasks, std::int64_t expert, std::int64_t row0,
                  std::int64_t rows, std::int64_t n, std::int64_t k) {
  const MatmulSplit s = split_matmul(rows, n, k);
  // Column-major order: the threads that run neighbouring tasks share a weight chunk (read from
  // memory once, then from the shared cache) and differ in activation rows.
  for (std::int64_t c = 0; c < s.col_chunks; ++c) {
    for (std::int64_t r = 0; r < s.row_chunks; ++r) {
      const std::int64_t r0 = r * s.row_chunk;
      const std::int64_t n0 = c * s.col_chunk;
      tasks.push_back({expert, row0 + r0, std::min(s.row_chunk, rows - r0), rows, n0,
                       std::min(n, n0 + s.col_chunk)});
    }
  }
}

void run_matmul_tasks(const Kernels& kernels, const std::vector<MatmulTask>& tasks,
                      const std::vector<const void*>& x_rows, const std::vector<void*>& out_rows,
                      DType dtype, const detail::WeightArgs& w) {
  parallel_for(static_cast<std::int64_t>(tasks.size()), [&](std::int64_t i) {
    const MatmulTask& t = tasks[static_cast<std::size_t>(i)];
    const RowBatch batch{x_rows.data() + t.row0, out_rows.data() + t.row0, t.rows, t.count_hint,
                         dtype};
    kernels.matmul_rows(batch, w, t.expert, t.n0, t.n1);
  });
}

// ---- int8 activations: rows quantized once per call, then the same task split ----------------

// Quantized copies of `count` activation rows (int8_row_bytes(k) each), 64-byte aligned.
class Int8Rows {
 public:
  Int8Rows(std::int64_t count, std::int64_t k)
      : k_(k),
        data_(static_cast<std::int8_t*>(::operator new (
            static_cast<std::size_t>(std::max<std::int64_t>(1, count* int8_row_bytes(k))),
            std::align_val_t{64}))) {}
  Int8Rows(const Int8Rows&) = delete;
  Int8Rows& operator=(const Int8Rows&) = delete;
  ~Int8Rows() { ::operator delete (data_, std::align_val_t{64}); }
  std::int8_t* row(std::int64_t i) const { return data_ + i * int8_row_bytes(k_); }

 private:
  std::int64_t k_;
  std::int8_t* data_;
};

// rows[i] <- row i of x ([count, k] in dtype); rows are independent, so any split is the same.
void quantize_rows_int8(const void* x, DType dtype, std::int64_t count, std::int64_t k,
                        const Int8Rows& rows) {
  const std::int64_t per_task = rows_per_task(k);
  const auto elem = static_cast<std::int64_t>(dtype_size(dtype));
  parallel_for(ceil_div(count, per_task), [&](std::int64_t t) {
    for (std::int64_t i = t * per_task; i < std::min(count, (t + 1) * per_task); ++i)
      quantize_int8_row(static_cast<const char*>(x) + i * k * elem, dtype, k, rows.row(i));
  });
}

// The kernel writes f32 sums into a per-thread tile; the bias is added and the result rounded to
// `dtype` here, once, so every table shares that step.
void run_matmul_tasks_int8(const Kernels& kernels, const std::vector<MatmulTask>& tasks,
                           const std::vector<const std::int8_t*>& x_rows,
                           const std::vector<void*>& out_rows, DType dtype,
                           const detail::WeightArgs& w) {
  parallel_for(static_cast<std::int64_t>(tasks.size()), [&](std::int64_t i) {
    const MatmulTask& t = tasks[static_cast<std::size_t>(i)];
    const std::int64_t cols = t.n1 - t.n0;
    thread_local std::vector<float> tile;
    thread_local std::vector<float*> tile_rows;
    tile.resize(static_cast<std::size_t>(t.rows * cols));
    tile_rows.resize(static_cast<std::size_t>(t.rows));
    for (std::int64_t r = 0; r < t.rows; ++r)
      tile_rows[static_cast<std::size_t>(r)] = tile.data() + r * cols;
    const Int8RowBatch batch{x_rows.data() + t.row0, tile_rows.data(), t.rows};
    kernels.matmul_rows_int8(batch, w, t.expert, t.n0, t.n1);
    for (std::int64_t r = 0; r < t.rows; ++r) {
      void* out = out_rows[static_cast<std::size_t>(t.row0 + r)];
      const float* sums = tile_rows[static_cast<std::size_t>(r)];
      for (std::int64_t n = t.n0; n < t.n1; ++n) {
        const float bias =
            w.bias != nullptr ? detail::load_float(w.bias, w.bias_dtype, t.expert * w.n + n) : 0.0f;
        detail::store_float(out, dtype, n, sums[n - t.n0] + bias);
      }
    }
  });
}

void run_linear_int8(const Kernels& kernels, const detail::LinearArgs& a) {
  const std::int64_t k = a.w.k;
  const std::int64_t n = a.w.n;
  const auto row_bytes = static_cast<std::int64_t>(dtype_size(a.x_dtype));
  const Int8Rows quantized(a.m, k);
  quantize_rows_int8(a.x, a.x_dtype, a.m, k, quantized);
  std::vector<const std::int8_t*> x_rows(static_cast<std::size_t>(a.m));
  std::vector<void*> out_rows(static_cast<std::size_t>(a.m));
  for (std::int64_t i = 0; i < a.m; ++i) {
    x_rows[static_cast<std::size_t>(i)] = quantized.row(i);
    out_rows[static_cast<std::size_t>(i)] = static_cast<char*>(a.out) + i * n * row_bytes;
  }
  std::vector<MatmulTask> tasks;
  append_tasks(tasks, 0, 0, a.m, n, k);
  run_matmul_tasks_int8(kernels, tasks, x_rows, out_rows, a.x_dtype, a.w);
}

void run_linear(const Kernels& kernels, const detail::LinearArgs& a) {
  if (a.int8_activations) {
    run_linear_int8(kernels, a);
    return;
  }
  const std::int64_t k = a.w.k;
  const std::int64_t n = a.w.n;
  const auto row_bytes = static_cast<std::int64_t>(dtype_size(a.x_dtype));
  std::vector<const void*> x_rows(static_cast<std::size_t>(a.m));
  std::vector<void*> out_rows(static_cast<std::size_t>(a.m));
  for (std::int64_t i = 0; i < a.m; ++i) {
    x_rows[static_cast<std::size_t>(i)] = static_cast<const char*>(a.x) + i * k * row_bytes;
    out_rows[static_cast<std::size_t>(i)] = static_cast<char*>(a.out) + i * n * row_bytes;
  }
  std::vector<MatmulTask> tasks;
  append_tasks(tasks, 0, 0, a.m, n, k);
  run_matmul_tasks(kernels, tasks, x_rows, out_rows, a.x_dtype, a.w);
}

// The (token, slot) pairs grouped by expert with a counting sort (stable: slot order within an
// expert), then one batch per expert, so each expert's weights are read once per call. Expert
// order (a.order_offsets given): the sort's positions are the output rows, and the sort is
// returned.
void run_gather_linear(const Kernels& kernels, const detail::GatherLinearArgs& a) {
  const std::int64_t k = a.w.k;
  const std::int64_t n = a.w.n;
  const std::int64_t experts = a.w.experts;
  const std::int64_t slots = a.tokens * a.topk;
  const auto elem = static_cast<std::int64_t>(dtype_size(a.x_dtype));
  std::vector<std::int64_t> expert_of(static_cast<std::size_t>(slots));
  std::vector<std::int64_t> start(static_cast<std::size_t>(experts + 1), 0);
  for (std::int64_t s = 0; s < slots; ++s) {
    const std::int64_t e = detail::load_index(a.indices, a.index_dtype, s);  // checked by ops.cpp
    expert_of[static_cast<std::size_t>(s)] = e;
    ++start[static_cast<std::size_t>(e + 1)];
  }
  for (std::int64_t e = 0; e < experts; ++e)
    start[static_cast<std::size_t>(e + 1)] += start[static_cast<std::size_t>(e)];
  std::vector<std::int64_t> fill(start.begin(), start.end() - 1);
  // int8: each distinct x row is quantized once, however many slots use it.
  const std::int64_t distinct_rows = a.int8_activations ? (a.x_per_slot ? slots : a.tokens) : 0;
  const Int8Rows quantized(distinct_rows, k);
  if (a.int8_activations) quantize_rows_int8(a.x, a.x_dtype, distinct_rows, k, quantized);
  std::vector<const void*> x_rows(static_cast<std::size_t>(slots));
  std::vector<const std::int8_t*> x_rows_int8(a.int8_activations ? static_cast<std::size_t>(slots)
                                                                 : 0);
  std::vector<void*> out_rows(static_cast<std::size_t>(slots));
  for (std::int64_t s = 0; s < slots; ++s) {
    const std::int64_t pos =
        fill[static_cast<std::size_t>(expert_of[static_cast<std::size_t>(s)])]++;
    const std::int64_t x_row = a.x_per_slot ? s : s / a.topk;
    x_rows[static_cast<std::size_t>(pos)] = static_cast<const char*>(a.x) + x_row * k * elem;
    if (a.int8_activations) x_rows_int8[static_cast<std::size_t>(pos)] = quantized.row(x_row);
    const std::int64_t out_row = a.order_offsets != nullptr ? pos : s;
    out_rows[static_cast<std::size_t>(pos)] = static_cast<char*>(a.out) + out_row * n * elem;
    if (a.order_offsets != nullptr) a.order_perm[pos] = static_cast<std::int32_t>(s);  // < 2^31
  }
  if (a.order_offsets != nullptr) {
    for (std::int64_t e = 0; e <= experts; ++e)
      a.order_offsets[e] = static_cast<std::int32_t>(start[static_cast<std::size_t>(e)]);
  }
  if (n == 0 || slots == 0) return;
  std::vector<MatmulTask> tasks;
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::int64_t row0 = start[static_cast<std::size_t>(e)];
    const std::int64_t rows = start[static_cast<std::size_t>(e + 1)] - row0;
    if (rows > 0) append_tasks(tasks, e, row0, rows, n, k);
  }
  if (a.int8_activations) {
    run_matmul_tasks_int8(kernels, tasks, x_rows_int8, out_rows, a.x_dtype, a.w);
  } else {
    run_matmul_tasks(kernels, tasks, x_rows, out_rows, a.x_dtype, a.w);
  }
}

// ---- one backend per kernel table ---------------------------------------------------------------

template <Isa I>
const Kernels& table();
template <>
const Kernels& table<Isa::scalar>() {
  return scalar_kernels();
}
#if defined(MXFP4_CPU_X86)
template <>
const Kernels& table<Isa::avx2>() {
  return avx2_kernels();
}
template <>
const Kernels& table<Isa::avx512>() {
  return avx512_kernels();
}
#endif
#if defined(MXFP4_CPU_AARCH64)
template <>
const Kernels& table<Isa::neon>() {
  return neon_kernels();
}
#endif

template <Isa I>
std::int64_t quantize(const detail::QuantizeArgs& a) {
  return run_quantize(table<I>(), a);
}
template <Isa I>
void dequantize(const detail::DequantizeArgs& a) {
  run_dequantize(table<I>(), a);
}
template <Isa I>
void linear(const detail::LinearArgs& a) {
  run_linear(table<I>(), a);
}
template <Isa I>
void gather_linear(const detail::GatherLinearArgs& a) {
  run_gather_linear(table<I>(), a);
}

struct IsaBackend {
  Isa isa;
  detail::Backend backend;
};

template <Isa I>
constexpr IsaBackend make_backend(const char* name) {
  return {I, {name, &quantize<I>, &dequantize<I>, &linear<I>, &gather_linear<I>}};
}

constexpr IsaBackend kScalarBackend = make_backend<Isa::scalar>("cpu-scalar");
#if defined(MXFP4_CPU_X86)
constexpr IsaBackend kAvx2Backend = make_backend<Isa::avx2>("cpu-avx2");
constexpr IsaBackend kAvx512Backend = make_backend<Isa::avx512>("cpu-avx512");
#endif
#if defined(MXFP4_CPU_AARCH64)
constexpr IsaBackend kNeonBackend = make_backend<Isa::neon>("cpu-neon");
#endif

// Only for levels require_isa has accepted.
const IsaBackend& backend_of(Isa isa) {
#if defined(MXFP4_CPU_X86)
  if (isa == Isa::avx512) return kAvx512Backend;
  if (isa == Isa::avx2) return kAvx2Backend;
#endif
#if defined(MXFP4_CPU_AARCH64)
  if (isa == Isa::neon) return kNeonBackend;
#endif
  (void)isa;
  return kScalarBackend;
}

// The level at start: the best this machine runs, capped by MXFP4_CPU_ISA (read once).
const IsaBackend& initial_backend() {
  // A pointer, not a reference, to the table: g++ 13 takes a reference bound to a lambda's
  // result for a dangling temporary (-Wdangling-reference).
  static const IsaBackend* const initial = [] {
    const IsaChoice choice =
        parse_isa_env(std::getenv("MXFP4_CPU_ISA"), best_isa(host_cpu_features()));  // NOLINT
    if (!choice.warning.empty())
      std::fprintf(stderr, "mxfp4: warning: %s\n", choice.warning.c_str());
    return &backend_of(choice.isa);
  }();
  return *initial;
}

std::atomic<const IsaBackend*> g_selected{nullptr};

const IsaBackend& selected() {
  const IsaBackend* b = g_selected.load(std::memory_order_acquire);
  if (b == nullptr) [[unlikely]] {
    // A concurrent set_cpu_isa may have stored first; it wins.
    const IsaBackend* expected = nullptr;
    b = &initial_backend();
    if (!g_selected.compare_exchange_strong(expected, b, std::memory_order_acq_rel)) b = expected;
  }
  return *b;
}

}  // namespace

const detail::Backend& cpu_backend() {
  return selected().backend;
}

MatmulSplit split_matmul(std::int64_t rows, std::int64_t n, std::int64_t k) {
  MatmulSplit s{};
  const std::int64_t cuts = ceil_div(rows, kMaxTaskRows);
  s.row_chunk = std::min(rows, ceil_div(ceil_div(rows, cuts), kRowQuantum) * kRowQuantum);
  s.row_chunks = ceil_div(rows, s.row_chunk);
  const std::int64_t quanta = ceil_div(kTaskMacs, kColumnQuantum * s.row_chunk * k);
  s.col_chunk = std::min(n, kColumnQuantum * quanta);
  s.col_chunks = ceil_div(n, s.col_chunk);
  return s;
}

std::int64_t rows_per_task(std::int64_t k) {
  return std::max<std::int64_t>(1, kTaskElements / k);
}

}  // namespace mxfp4::cpu

namespace mxfp4 {

const char* cpu_isa_name(CpuIsa isa) noexcept {
  return cpu::isa_name(static_cast<cpu::Isa>(isa));
}

CpuIsa cpu_isa_supported() {
  return static_cast<CpuIsa>(cpu::best_isa(cpu::host_cpu_features()));
}

CpuIsa cpu_isa() {
  return static_cast<CpuIsa>(cpu::selected().isa);
}

void set_cpu_isa(CpuIsa isa) {
  if (isa != CpuIsa::scalar && isa != CpuIsa::avx2 && isa != CpuIsa::avx512 &&
      isa != CpuIsa::neon) {
    throw InvalidArgument("set_cpu_isa: unknown instruction set " +
                          std::to_string(static_cast<int>(isa)) +
                          " (expected scalar, avx2, avx512 or neon)");
  }
  const auto level = static_cast<cpu::Isa>(isa);
  cpu::require_isa(cpu::host_cpu_features(), level,
                   (std::string("set_cpu_isa(") + cpu::isa_name(level) + ")").c_str());
  cpu::selected();  // reads MXFP4_CPU_ISA now, so that it cannot override this call later
  cpu::g_selected.store(&cpu::backend_of(level), std::memory_order_release);
}

}  // namespace mxfp4
