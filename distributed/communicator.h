// Collectives over the ranks of an MPI job: all-reduce, broadcast,
// all-gather, barrier on CPU tensors over MPI. (The NCCL back-end for CUDA
// tensors is compiled only with ZSQ_WITH_NCCL and is not part of this build.)
//
// The library talks on its own duplicate of MPI_COMM_WORLD. Without mpirun the
// communicator is a world of one and every collective is the identity, so
// trainers and tests run unchanged on one process.
//
// Every collective runs under a watchdog: one that has not finished after
// `timeout_seconds` logs the rank, the operation and its sequence number, then
// ends the whole job with MPI_Abort instead of hanging.
#pragma once

#include "distributed/world.h"

#include <torch/types.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace zsq::distributed {

enum class ReduceOp { kSum, kAverage, kMax };

struct CommunicatorOptions {
  /// Deadline of one collective in seconds; 0 disables the watchdog. Default 600 (10 min).
  double timeout_seconds = 600;
};

class Communicator {
 public:
  /// The communicator of this process's job (a world of one without mpirun).
  /// Calls init_world().
  static std::shared_ptr<Communicator> create(CommunicatorOptions options = {});
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return world_.rank; }
  int size() const { return world_.world_size; }
  int local_rank() const { return world_.local_rank; }

  /// In place over every rank. Contiguous CPU tensor of float32, float64,
  /// int32, int64, uint8 or int8 (kAverage: floating point only). Every rank
  /// passes the same shape and dtype.
  void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  /// In place: every rank gets root's values.
  void broadcast(torch::Tensor& tensor, int root = 0);
  /// Returns [size, tensor.sizes()...]: row r is rank r's tensor.
  torch::Tensor all_gather(const torch::Tensor& tensor);
  void barrier();

  /// Number of collectives issued so far on this rank.
  int64_t sequence() const { return sequence_; }

 private:
  explicit Communicator(const World& world, CommunicatorOptions options);
  class Watch;  // marks one collective in flight for the watchdog
  void watchdog_loop();

  World world_;
  CommunicatorOptions options_;
  void* comm_ = nullptr;  ///< MPI_Comm (duplicate of MPI_COMM_WORLD), null for a world of one
  int64_t sequence_ = 0;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool in_flight_ = false;
  std::string op_;
  int64_t op_sequence_ = 0;
  int64_t op_bytes_ = 0;
  double op_start_ = 0;
  std::thread watchdog_;
};

} // namespace zsq::distributed
