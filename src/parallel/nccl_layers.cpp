// Tensor-parallel and expert-parallel layers over NCCL (include/mxfp4/parallel_nccl.hpp).
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "io/atomic_file.hpp"
#include "mxfp4/parallel_nccl.hpp"
#include "parallel/nccl_kernels.hpp"

namespace mxfp4::parallel {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw DeviceError(std::string("parallel: ") + what + ": " + cudaGetErrorString(err));
  }
}

void check_nccl(ncclResult_t res, const char* what, ncclComm* comm = nullptr) {
  if (res != ncclSuccess && res != ncclInProgress) {
    std::string detail = ncclGetErrorString(res);
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') detail += " (" + std::string(last) + ")";
    throw DeviceError(std::string("parallel: ") + what + ": " + detail);
  }
}

void check_launch(const char* error, const char* what) {
  if (error != nullptr) throw DeviceError(std::string("parallel: ") + what + ": " + error);
}

cudaStream_t stream_of(const RunOptions& run) {
  return static_cast<cudaStream_t>(run.stream.handle);
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f16:
      return ncclFloat16;
    case DType::bf16:
      return ncclBfloat16;
    default:
      throw DTypeMismatch("parallel: x must be f32, f16 or bf16, got " +
                          std::string(dtype_name(dtype)));
  }
}

Mxfp4Weight on_device(const Mxfp4Weight& w, Device device, const char* what) {
  if (!w.defined()) throw InvalidArgument(std::string("parallel::") + what + ": empty weight");
  if (w.device() == device) return w;
  return w.to(device);
}

void check_input(const Tensor& x, std::int64_t k, Device device, const char* what) {
  if (!x.defined() || x.rank() < 1) {
    throw ShapeMismatch(std::string("parallel::") + what + ": x must be [..., K]");
  }
  nccl_type(x.dtype());
  if (x.device() != device) {
    throw InvalidArgument(std::string("parallel::") + what + ": x is on " + to_string(x.device()) +
                          ", the layer on " + to_string(device));
  }
  if (x.dim(-1) != k) {
    throw ShapeMismatch(std::string("parallel::") + what + ": x " + to_string(x.shape()) +
                        " must end in K = " + std::to_string(k));
  }
}

Shape with_last(const Shape& shape, std::int64_t last) {
  Shape s = shape;
  s.back() = last;
  return s;
}

// Carves aligned pieces out of one cached device buffer that grows as needed.
class Arena {
 public:
  explicit Arena(Tensor& cache, Device device) : cache_(cache), device_(device) {}
  std::size_t add(std::size_t bytes) {
    const std::size_t at = total_;
    total_ += (bytes + 255) / 256 * 256;
    return at;
  }
  void allocate() {
    if (!cache_.defined() || cache_.nbytes() < total_) {
      cache_ = Tensor();  // free the old buffer first
      cache_ = Tensor::empty({static_cast<std::int64_t>(std::max<std::size_t>(total_, 256))},
                             DType::u8, device_);
    }
  }
  void* at(std::size_t offset) { return static_cast<std::uint8_t*>(cache_.data()) + offset; }
  Tensor view(std::size_t offset, Shape shape, DType dtype) {
    return Tensor::view(at(offset), std::move(shape), dtype, device_);
  }

 private:
  Tensor& cache_;
  Device device_;
  std::size_t total_ = 0;
};

constexpr std::size_t kIdBytes = sizeof(ncclUniqueId);

}  // namespace

// ---- bootstrap ----------------------------------------------------------------------------------

std::string nccl_unique_id_hex() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (std::size_t i = 0; i < kIdBytes; ++i) {
    const auto b = static_cast<unsigned char>(id.internal[i]);
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  return hex;
}

void write_nccl_unique_id(const std::string& path, const std::string& hex) {
  // All or nothing: a reader polling for `path` never sees half an id.
  io::AtomicFile out(path, "parallel: the NCCL id file '" + path + "'");
  const std::string line = hex + "\n";
  out.write(line.data(), line.size());
  out.commit();
}

std::string read_nccl_unique_id(const std::string& path, double timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<long>(timeout_seconds * 1000));
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw IoError("parallel: no NCCL id appeared at '" + path + "' within " +
                    std::to_string(timeout_seconds) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ifstream in(path);
  std::string hex;
  in >> hex;
  if (hex.size() != 2 * kIdBytes ||
      hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw FormatError("parallel: '" + path + "' does not hold an NCCL id (" +
                      std::to_string(2 * kIdBytes) + " hex digits)");
  }
  return hex;
}

// ---- communicator -------------------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(const std::string& unique_id_hex, int rank, int ranks,
                                   int device)
    : rank_(rank), ranks_(ranks), device_(device) {
  check_rank(rank, ranks);
  if (unique_id_hex.size() != 2 * kIdBytes) {
    throw InvalidArgument("parallel: an NCCL unique id has " + std::to_string(2 * kIdBytes) +
                          " hex digits, got " + std::to_string(unique_id_hex.size()));
  }
  ncclUniqueId id;
  for (std::size_t i = 0; i < kIdBytes; ++i) {
    const auto nibble = [&](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      throw InvalidArgument("parallel: the NCCL unique id holds a non-hex character");
    };
    id.internal[i] =
        static_cast<char>(nibble(unique_id_hex[2 * i]) * 16 + nibble(unique_id_hex[2 * i + 1]));
  }
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, ranks, id, rank), "ncclCommInitRank");
  comm_ = comm;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    ncclCommFinalize(comm_);
    ncclCommDestroy(comm_);
  }
}

double NcclCommunicator::all_reduce(double value, bool max, Stream stream) {
  check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  const auto s = static_cast<cudaStream_t>(stream.handle);
  Tensor buf = Tensor::empty({1}, DType::i64, Device::cuda(device_));  // 8 bytes: one double
  check_cuda(cudaMemcpyAsync(buf.data(), &value, sizeof value, cudaMemcpyHostToDevice, s),
             "cudaMemcpyAsync");
  check_nccl(
      ncclAllReduce(buf.data(), buf.data(), 1, ncclFloat64, max ? ncclMax : ncclSum, comm_, s),
      "ncclAllReduce", comm_);
  double out = 0;
  check_cuda(cudaMemcpyAsync(&out, buf.data(), sizeof out, cudaMemcpyDeviceToHost, s),
             "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  return out;
}

void NcclCommunicator::barrier(Stream stream) {
  all_reduce(0.0, false, stream);
}
double NcclCommunicator::all_reduce_max(double value, Stream stream) {
  return all_reduce(value, true, stream);
}
double NcclCommunicator::all_reduce_sum(double value, Stream stream) {
  return all_reduce(value, false, stream);
}

// ---- column-parallel ----------------------------------------------------------------------------

ColumnParallelLinear::ColumnParallelLinear(NcclCommunicator& comm, const Mxfp4Weight& shard,
                                           std::int64_t out_features)
    : comm_(&comm),
      weight_(on_device(shard, Device::cuda(comm.device()), "ColumnParallelLinear")),
      columns_(column_shard(out_features, comm.rank(), comm.ranks())),
      out_features_(out_features),
      max_shard_(0) {
  if (weight_.stacked() || weight_.out_features() != columns_.size()) {
    throw ShapeMismatch("parallel::ColumnParallelLinear: rank " + std::to_string(comm.rank()) +
                        " holds rows [" + std::to_string(columns_.begin) + ", " +
                        std::to_string(columns_.end) + ") of N = " + std::to_string(out_features) +
                        ", a dense [" + std::to_string(columns_.size()) +
                        ", K] shard, but got N = " + std::to_string(weight_.out_features()) +
                        (weight_.stacked() ? " (a stack)" : ""));
  }
  for (int r = 0; r < comm.ranks(); ++r) {
    max_shard_ = std::max(max_shard_, column_shard(out_features, r, comm.ranks()).size());
  }
}

Tensor ColumnParallelLinear::forward_local(const Tensor& x, const RunOptions& run) {
  check_input(x, weight_.in_features(), weight_.device(), "ColumnParallelLinear");
  bytes_ = {};
  return linear(x, weight_, run);
}

Tensor ColumnParallelLinear::forward(const Tensor& x, const RunOptions& run) {
  const Device device = weight_.device();
  check_input(x, weight_.in_features(), device, "ColumnParallelLinear");
  check_cuda(cudaSetDevice(comm_->device()), "cudaSetDevice");
  const std::int64_t k = weight_.in_features();
  const std::int64_t m = x.numel() / k;
  const std::int64_t ranks = comm_->ranks();
  const std::size_t es = dtype_size(x.dtype());
  Tensor out = Tensor::empty(with_last(x.shape(), out_features_), x.dtype(), device);
  bytes_ = {};
  if (m == 0) return out;
  // Every rank's shard is padded to the largest one, so that one ncclAllGather of equal pieces
  // carries them; the padding is never read.
  const auto piece = static_cast<std::size_t>(m * max_shard_);
  Arena arena(scratch_, device);
  const std::size_t send_at = arena.add(piece * es);
  const std::size_t recv_at = arena.add(piece * es * static_cast<std::size_t>(ranks));
  arena.allocate();
  Tensor local = arena.view(send_at, {m, columns_.size()}, x.dtype());
  linear_into(x.reshape({m, k}), weight_, local, run);
  const cudaStream_t s = stream_of(run);
  check_nccl(ncclAllGather(arena.at(send_at), arena.at(recv_at), piece, nccl_type(x.dtype()),
                           comm_->handle(), s),
             "ncclAllGather", comm_->handle());
  // [rank][m][N_r] -> [m][N]: one strided copy per rank.
  for (int r = 0; r < ranks; ++r) {
    const Range cols = column_shard(out_features_, r, static_cast<int>(ranks));
    const auto* src = static_cast<const std::uint8_t*>(arena.at(recv_at)) +
                      static_cast<std::size_t>(r) * piece * es;
    check_cuda(
        cudaMemcpy2DAsync(
            static_cast<std::uint8_t*>(out.data()) + static_cast<std::size_t>(cols.begin) * es,
            static_cast<std::size_t>(out_features_) * es, src,
            static_cast<std::size_t>(cols.size()) * es, static_cast<std::size_t>(cols.size()) * es,
            static_cast<std::size_t>(m), cudaMemcpyDeviceToDevice, s),
        "cudaMemcpy2DAsync");
  }
  bytes_.sent = piece * es * static_cast<std::uint64_t>(ranks - 1);
  bytes_.received = bytes_.sent;
  return out;
}

// ---- row-parallel -------------------------------------------------------------------------------

RowParallelLinear::RowParallelLinear(NcclCommunicator& comm, const Mxfp4Weight& shard,
                                     std::int64_t in_features)
    : comm_(&comm),
      weight_(on_device(shard, Device::cuda(comm.device()), "RowParallelLinear")),
      rows_(row_shard(in_features, comm.rank(), comm.ranks())),
      in_features_(in_features) {
  if (weight_.stacked() || weight_.in_features() != rows_.size()) {
    throw ShapeMismatch("parallel::RowParallelLinear: rank " + std::to_string(comm.rank()) +
                        " holds columns [" + std::to_string(rows_.begin) + ", " +
                        std::to_string(rows_.end) + ") of K = " + std::to_string(in_features) +
                        ", a dense [N, " + std::to_string(rows_.size()) +
                        "] shard, but got K = " + std::to_string(weight_.in_features()) +
                        (weight_.stacked() ? " (a stack)" : ""));
  }
  if (weight_.bias().has_value() && comm.rank() != 0) {
    throw InvalidArgument(
        "parallel::RowParallelLinear: the bias belongs to rank 0 only (it is "
        "added once, before the sum); shard_row leaves it there");
  }
}

Tensor RowParallelLinear::slice_input(const Tensor& x, const RunOptions& run) const {
  check_input(x, in_features_, weight_.device(), "RowParallelLinear::slice_input");
  check_cuda(cudaSetDevice(comm_->device()), "cudaSetDevice");
  const std::int64_t m = x.numel() / in_features_;
  const std::size_t es = dtype_size(x.dtype());
  Tensor out = Tensor::empty(with_last(x.shape(), rows_.size()), x.dtype(), weight_.device());
  if (m == 0) return out;
  check_cuda(
      cudaMemcpy2DAsync(
          out.data(), static_cast<std::size_t>(rows_.size()) * es,
          static_cast<const std::uint8_t*>(x.data()) + static_cast<std::size_t>(rows_.begin) * es,
          static_cast<std::size_t>(in_features_) * es, static_cast<std::size_t>(rows_.size()) * es,
          static_cast<std::size_t>(m), cudaMemcpyDeviceToDevice, stream_of(run)),
      "cudaMemcpy2DAsync");
  return out;
}

Tensor RowParallelLinear::forward(const Tensor& x_local, const RunOptions& run) {
  check_input(x_local, rows_.size(), weight_.device(), "RowParallelLinear");
  check_cuda(cudaSetDevice(comm_->device()), "cudaSetDevice");
  const std::int64_t n = weight_.out_features();
  Tensor out = Tensor::empty(with_last(x_local.shape(), n), x_local.dtype(), weight_.device());
  bytes_ = {};
  const auto count = static_cast<std::size_t>(out.numel());
  if (count == 0) return out;
  linear_into(x_local, weight_, out, run);
  check_nccl(ncclAllReduce(out.data(), out.data(), count, nccl_type(x_local.dtype()), ncclSum,
                           comm_->handle(), stream_of(run)),
             "ncclAllReduce", comm_->handle());
  // A ring all-reduce sends 2 (R - 1) / R of the buffer from every rank.
  const auto r = static_cast<std::uint64_t>(comm_->ranks());
  bytes_.sent = 2 * (r - 1) * out.nbytes() / r;
  bytes_.received = bytes_.sent;
  return out;
}

// ---- expert-parallel ----------------------------------------------------------------------------

ExpertParallelMoE::ExpertParallelMoE(NcclCommunicator& comm, const Mxfp4Weight& local_experts,
                                     std::int64_t experts)
    : comm_(&comm),
      weight_(on_device(local_experts, Device::cuda(comm.device()), "ExpertParallelMoE")),
      experts_(expert_shard(experts, comm.rank(), comm.ranks())),
      num_experts_(experts) {
  if (!weight_.stacked() || weight_.num_experts() != experts_.size()) {
    throw ShapeMismatch("parallel::ExpertParallelMoE: rank " + std::to_string(comm.rank()) +
                        " holds experts [" + std::to_string(experts_.begin) + ", " +
                        std::to_string(experts_.end) + ") of E = " + std::to_string(experts) +
                        ", a stack of " + std::to_string(experts_.size()) + ", but got " +
                        (weight_.stacked() ? std::to_string(weight_.num_experts()) + " experts"
                                           : std::string("a dense weight")));
  }
}

Tensor ExpertParallelMoE::forward(const Tensor& x, const Tensor& indices, const RunOptions& run) {
  const Device device = weight_.device();
  const std::int64_t k = weight_.in_features();
  const std::int64_t n = weight_.out_features();
  if (!x.defined() || x.rank() != 2) {
    throw ShapeMismatch("parallel::ExpertParallelMoE: x must be [T, K]");
  }
  check_input(x, k, device, "ExpertParallelMoE");
  if (!indices.defined() || indices.rank() != 2 || indices.dim(0) != x.dim(0)) {
    throw ShapeMismatch("parallel::ExpertParallelMoE: indices must be [T, topk] with T = " +
                        std::to_string(x.dim(0)));
  }
  check_cuda(cudaSetDevice(comm_->device()), "cudaSetDevice");
  const cudaStream_t s = stream_of(run);
  const int ranks = comm_->ranks();
  const auto ru = static_cast<std::size_t>(ranks);
  const std::size_t es = dtype_size(x.dtype());
  const ncclDataType_t type = nccl_type(x.dtype());
  ncclComm* comm = comm_->handle();

  // 1. The plan, from the indices on the host.
  Tensor host_indices = indices;
  if (indices.device() != Device::cpu()) {
    host_indices = indices.to(Device::cpu(), run.stream);
    check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }
  DispatchPlan plan = plan_dispatch(host_indices, num_experts_, ranks);
  const std::int64_t tokens = plan.tokens;
  const std::int64_t topk = plan.topk;
  const auto pairs_out = static_cast<std::size_t>(tokens * topk);

  // 2. Every rank's counts to every rank.
  Arena counts_arena(scratch_, device);
  const std::size_t counts_at = counts_arena.add(ru * ru * sizeof(std::int64_t));
  counts_arena.allocate();
  std::vector<std::int64_t> all_counts(ru * ru);
  auto* counts_dev = static_cast<std::int64_t*>(counts_arena.at(counts_at));
  check_cuda(cudaMemcpyAsync(counts_dev + static_cast<std::size_t>(comm_->rank()) * ru,
                             plan.send_counts.data(), ru * sizeof(std::int64_t),
                             cudaMemcpyHostToDevice, s),
             "cudaMemcpyAsync");
  check_nccl(ncclAllGather(counts_dev + static_cast<std::size_t>(comm_->rank()) * ru, counts_dev,
                           ru, ncclInt64, comm, s),
             "ncclAllGather", comm);
  check_cuda(cudaMemcpyAsync(all_counts.data(), counts_dev, ru * ru * sizeof(std::int64_t),
                             cudaMemcpyDeviceToHost, s),
             "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  // The stream has drained: the host arrays the previous call uploaded are no longer needed.
  host_plan_ = {};
  host_pairs_ = {};
  const std::vector<std::int64_t> recv_counts = receive_counts(all_counts, comm_->rank(), ranks);
  const std::vector<std::int64_t> recv_offsets = offsets_from_counts(recv_counts);
  std::int64_t pairs_in_total = 0;
  for (const std::int64_t c : recv_counts)
    pairs_in_total += c;
  const auto pairs_in = static_cast<std::size_t>(pairs_in_total);

  // 3. Scratch: rows and ids to send and receive, results, the plan's index arrays.
  const auto xrow = static_cast<std::size_t>(k) * es;
  const auto yrow = static_cast<std::size_t>(n) * es;
  Arena arena(scratch_, device);
  const std::size_t send_x = arena.add(pairs_out * xrow);
  const std::size_t send_ids = arena.add(pairs_out * sizeof(std::int32_t));
  const std::size_t token_at = arena.add(pairs_out * sizeof(std::int32_t));
  const std::size_t pair_at = arena.add(pairs_out * sizeof(std::int32_t));
  const std::size_t recv_x = arena.add(pairs_in * xrow);
  const std::size_t recv_ids = arena.add(pairs_in * sizeof(std::int32_t));
  const std::size_t y_in = arena.add(pairs_in * yrow);
  const std::size_t back = arena.add(pairs_out * yrow);
  arena.allocate();
  Tensor out = Tensor::empty({tokens, topk, n}, x.dtype(), device);

  std::vector<std::int32_t> send_pair32(plan.send_pair.begin(), plan.send_pair.end());
  if (pairs_out > 0) {
    check_cuda(cudaMemcpyAsync(arena.at(send_ids), plan.send_local_expert.data(),
                               pairs_out * sizeof(std::int32_t), cudaMemcpyHostToDevice, s),
               "cudaMemcpyAsync");
    check_cuda(cudaMemcpyAsync(arena.at(token_at), plan.send_token.data(),
                               pairs_out * sizeof(std::int32_t), cudaMemcpyHostToDevice, s),
               "cudaMemcpyAsync");
    check_cuda(cudaMemcpyAsync(arena.at(pair_at), send_pair32.data(),
                               pairs_out * sizeof(std::int32_t), cudaMemcpyHostToDevice, s),
               "cudaMemcpyAsync");
    check_launch(detail::gather_rows(arena.at(send_x), x.data(),
                                     static_cast<const std::int32_t*>(arena.at(token_at)),
                                     static_cast<std::int64_t>(pairs_out), xrow, s),
                 "gather_rows");
  }

  const auto at_row = [&](std::size_t base, std::int64_t row, std::size_t row_bytes) {
    return static_cast<std::uint8_t*>(arena.at(base)) + static_cast<std::size_t>(row) * row_bytes;
  };
  bytes_ = {};
  // 4. Dispatch: x rows and local expert ids to the experts' ranks.
  check_nccl(ncclGroupStart(), "ncclGroupStart", comm);
  for (int p = 0; p < ranks; ++p) {
    const auto pu = static_cast<std::size_t>(p);
    const std::int64_t sc = plan.send_counts[pu];
    const std::int64_t so = plan.send_offsets[pu];
    const std::int64_t rc = recv_counts[pu];
    const std::int64_t ro = recv_offsets[pu];
    if (sc > 0) {
      check_nccl(
          ncclSend(at_row(send_x, so, xrow), static_cast<std::size_t>(sc * k), type, p, comm, s),
          "ncclSend", comm);
      check_nccl(ncclSend(at_row(send_ids, so, sizeof(std::int32_t)), static_cast<std::size_t>(sc),
                          ncclInt32, p, comm, s),
                 "ncclSend", comm);
      if (p != comm_->rank()) bytes_.sent += static_cast<std::uint64_t>(sc) * (xrow + 4);
    }
    if (rc > 0) {
      check_nccl(
          ncclRecv(at_row(recv_x, ro, xrow), static_cast<std::size_t>(rc * k), type, p, comm, s),
          "ncclRecv", comm);
      check_nccl(ncclRecv(at_row(recv_ids, ro, sizeof(std::int32_t)), static_cast<std::size_t>(rc),
                          ncclInt32, p, comm, s),
                 "ncclRecv", comm);
      if (p != comm_->rank()) bytes_.received += static_cast<std::uint64_t>(rc) * (xrow + 4);
    }
  }
  check_nccl(ncclGroupEnd(), "ncclGroupEnd", comm);

  // 5. This rank's experts on the pairs it received.
  if (pairs_in > 0) {
    const auto pin = static_cast<std::int64_t>(pairs_in);
    Tensor y = arena.view(y_in, {pin, 1, n}, x.dtype());
    gather_linear_into(arena.view(recv_x, {pin, k}, x.dtype()),
                       arena.view(recv_ids, {pin, 1}, DType::i32), weight_, y, run);
  }

  // 6. Combine: results back to the tokens' ranks, then into [T, topk, N].
  check_nccl(ncclGroupStart(), "ncclGroupStart", comm);
  for (int p = 0; p < ranks; ++p) {
    const auto pu = static_cast<std::size_t>(p);
    const std::int64_t sc = plan.send_counts[pu];
    const std::int64_t rc = recv_counts[pu];
    if (rc > 0) {
      check_nccl(ncclSend(at_row(y_in, recv_offsets[pu], yrow), static_cast<std::size_t>(rc * n),
                          type, p, comm, s),
                 "ncclSend", comm);
      if (p != comm_->rank()) bytes_.sent += static_cast<std::uint64_t>(rc) * yrow;
    }
    if (sc > 0) {
      check_nccl(ncclRecv(at_row(back, plan.send_offsets[pu], yrow),
                          static_cast<std::size_t>(sc * n), type, p, comm, s),
                 "ncclRecv", comm);
      if (p != comm_->rank()) bytes_.received += static_cast<std::uint64_t>(sc) * yrow;
    }
  }
  check_nccl(ncclGroupEnd(), "ncclGroupEnd", comm);
  if (pairs_out > 0) {
    check_launch(detail::scatter_rows(out.data(), arena.at(back),
                                      static_cast<const std::int32_t*>(arena.at(pair_at)),
                                      static_cast<std::int64_t>(pairs_out), yrow, s),
                 "scatter_rows");
  }
  // The uploads above may still read these host arrays (cudaMemcpyAsync from pageable memory
  // need not have copied them yet): they stay alive until the next call has synchronized.
  host_plan_ = std::move(plan);
  host_pairs_ = std::move(send_pair32);
  return out;
}

}  // namespace mxfp4::parallel
