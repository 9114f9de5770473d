// Tensor-parallel and expert-parallel MXFP4 layers over NCCL: one process per GPU, each holding
// its shard of the weight (mxfp4/parallel.hpp says which part). Built as the library mxfp4_nccl
// (CMake target mxfp4::mxfp4_nccl inside this project) when CUDA is on and NCCL is found
// (MXFP4_NCCL=AUTO/ON); link it instead of mxfp4_static.
//
// Bootstrap: rank 0 calls nccl_unique_id_hex() and hands the string to the other ranks (a file
// through write_nccl_unique_id / read_nccl_unique_id, an environment variable, MPI, ...). The
// process that created the id serves NCCL's bootstrap, so it must be one of the ranks and stay
// alive until every rank has built its NcclCommunicator. Keep NCCL_NVLS_ENABLE=0 in the
// environment where NVLink multicast must stay off.
//
// Every layer runs on the communicator's device and enqueues its work (the local MXFP4 kernel
// and the NCCL calls) on RunOptions::stream. Every rank must call the same layers in the same
// order with inputs of matching shapes (NCCL collectives pair up across ranks). A layer reuses
// one scratch buffer across calls: use one layer object from one stream at a time.
// Failures of CUDA or NCCL throw DeviceError naming the call; bad arguments throw the errors of
// mxfp4/error.hpp before anything is enqueued.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mxfp4/ops.hpp"
#include "mxfp4/parallel.hpp"

struct ncclComm;  // nccl.h's communicator (ncclComm_t is ncclComm*)

namespace mxfp4::parallel {

// A new NCCL unique id (ncclGetUniqueId) as 256 lowercase hex characters.
std::string nccl_unique_id_hex();
// Writes `hex` to `path` atomically (a temporary beside it, then a rename), so that a reader
// polling for the file never sees half of it. Throws IoError.
void write_nccl_unique_id(const std::string& path, const std::string& hex);
// Waits up to `timeout_seconds` for `path` to exist and returns the id in it. Throws IoError on
// time-out and FormatError when the file does not hold 256 hex characters.
std::string read_nccl_unique_id(const std::string& path, double timeout_seconds = 120.0);

// One rank of an NCCL communicator on one GPU (ncclCommInitRank). Not copyable.
class NcclCommunicator {
 public:
  // Selects `device` (cudaSetDevice) and joins the communicator of `ranks` ranks whose unique id
  // is `unique_id_hex`. Blocks until every rank has joined.
  NcclCommunicator(const std::string& unique_id_hex, int rank, int ranks, int device);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int ranks() const { return ranks_; }
  int device() const { return device_; }
  ncclComm* handle() const { return comm_; }
  // Waits until every rank reaches this call (an all-reduce of one value, then a synchronize).
  void barrier(Stream stream = {});
  // The largest (or summed) value over ranks of one number; synchronizes `stream`.
  double all_reduce_max(double value, Stream stream = {});
  double all_reduce_sum(double value, Stream stream = {});

 private:
  double all_reduce(double value, bool max, Stream stream);

  ncclComm* comm_ = nullptr;
  int rank_ = 0;
  int ranks_ = 1;
  int device_ = 0;
};

// Bytes this rank sent to and received from other ranks in a layer's last forward call, counted
// from the algorithm rather than measured: all-gather (R - 1) pieces, ring all-reduce
// 2 (R - 1) / R of the buffer, all-to-all the rows (and expert ids) that go to or come from
// other ranks, dispatch and combine. What a rank sends to itself is not counted.
struct CommBytes {
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
};

// y = x W^T + b with W split by rows (output features) across ranks: every rank computes its
// columns of y and an all-gather gives every rank the whole y.
class ColumnParallelLinear {
 public:
  // `shard`: this rank's part, as shard_column / load_column_shard return it (CPU or the
  // communicator's device; a CPU shard is copied there). `out_features`: N of the whole layer.
  ColumnParallelLinear(NcclCommunicator& comm, const Mxfp4Weight& shard, std::int64_t out_features);
  // x [..., K] (f32/f16/bf16, the same on every rank, on the communicator's device) -> [..., N].
  Tensor forward(const Tensor& x, const RunOptions& run = {});
  // This rank's columns only, [..., N_r], no communication: the input a RowParallelLinear
  // expects when its K split matches (row_shard(N) == column_shard(N), e.g. N/32 divisible by
  // the ranks).
  Tensor forward_local(const Tensor& x, const RunOptions& run = {});
  Range columns() const { return columns_; }
  const Mxfp4Weight& weight() const { return weight_; }
  CommBytes last_bytes() const { return bytes_; }

 private:
  NcclCommunicator* comm_;
  Mxfp4Weight weight_;
  Range columns_;
  std::int64_t out_features_;
  std::int64_t max_shard_;
  Tensor scratch_;
  CommBytes bytes_;
};

// y = x W^T + b with W split along K (input features) at block bounds: every rank multiplies its
// columns of x by its part and an all-reduce sums the partial products; the bias lives on rank 0.
class RowParallelLinear {
 public:
  // `shard`: as shard_row / load_row_shard return it. `in_features`: K of the whole layer.
  RowParallelLinear(NcclCommunicator& comm, const Mxfp4Weight& shard, std::int64_t in_features);
  // x_local [..., K_r]: this rank's columns of x -> [..., N], the full sum, on every rank. The
  // partial products and the sum are in x's dtype.
  Tensor forward(const Tensor& x_local, const RunOptions& run = {});
  // This rank's columns [..., K_r] of a full input x [..., K] (a strided copy on the device).
  Tensor slice_input(const Tensor& x, const RunOptions& run = {}) const;
  Range rows() const { return rows_; }
  const Mxfp4Weight& weight() const { return weight_; }
  CommBytes last_bytes() const { return bytes_; }

 private:
  NcclCommunicator* comm_;
  Mxfp4Weight weight_;
  Range rows_;
  std::int64_t in_features_;
  CommBytes bytes_;
};

// A mixture-of-experts layer (gather_linear) with its experts split across ranks: every rank
// routes its own tokens, sends each (token, slot) pair's x row to the rank holding the expert
// (grouped ncclSend/ncclRecv, an all-to-all), that rank runs gather_linear on its experts, and
// the results travel back to be put in place.
class ExpertParallelMoE {
 public:
  // `local_experts`: this rank's experts, as shard_experts / load_expert_shard return them.
  // `experts`: E of the whole layer.
  ExpertParallelMoE(NcclCommunicator& comm, const Mxfp4Weight& local_experts, std::int64_t experts);
  // x [T, K] this rank's tokens (T may differ between ranks and be 0), indices [T, topk] their
  // global expert ids (CPU or device; u32, i32 or i64) -> [T, topk, N] in x's dtype. Reads the
  // indices on the host and exchanges the pair counts, so it synchronizes `run.stream` twice;
  // an id outside [0, E) throws IndexOutOfRange on the rank that holds it (the other ranks
  // then wait in NCCL: treat it as fatal for the job).
  Tensor forward(const Tensor& x, const Tensor& indices, const RunOptions& run = {});
  Range experts() const { return experts_; }
  const Mxfp4Weight& weight() const { return weight_; }
  CommBytes last_bytes() const { return bytes_; }

 private:
  NcclCommunicator* comm_;
  Mxfp4Weight weight_;
  Range experts_;
  std::int64_t num_experts_;
  Tensor scratch_;
  CommBytes bytes_;
  DispatchPlan host_plan_;  // host arrays the last call uploaded, kept until they were read
  std::vector<std::int32_t> host_pairs_;
};

}  // namespace mxfp4::parallel
