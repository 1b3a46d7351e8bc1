// Data-parallel gradient averaging. The parameters are cut once into a fixed
// bucket plan (reverse parameter order, as DDP: the last layers' gradients are
// ready first; at most bucket_bytes per bucket, one dtype per bucket), so
// every rank issues the same collectives in the same order. Each bucket's
// gradients are packed into one flat buffer, averaged with one all-reduce and
// copied back.
//
// Parameters without a gradient: one small all-reduce first tells which
// parameters got a gradient on some rank. One that got none anywhere is
// skipped (its .grad stays undefined, as in single-process training); one
// that got a gradient on some ranks only counts as zero on the others.
//
// The MPI back-end runs the reduction after backward (no overlap): MPI on CPU
// tensors offers no progress while the process computes.
#pragma once

#include "distributed/communicator.h"

#include <memory>
#include <vector>

namespace zsq::distributed {

struct ReducerOptions {
  /// Largest bucket in bytes. Default 25 MiB (as DDP).
  int64_t bucket_bytes = int64_t(25) << 20;
};

class Reducer {
 public:
  /// params: in an order every rank shares (e.g. named_parameters()).
  Reducer(std::shared_ptr<Communicator> comm, std::vector<torch::Tensor> params, ReducerOptions options = {});
  /// Averages every parameter's gradient over the ranks (see the file comment).
  void reduce();
  /// The bucket plan: indices into params, per bucket.
  const std::vector<std::vector<size_t>>& buckets() const { return buckets_; }

 private:
  std::shared_ptr<Communicator> comm_;
  std::vector<torch::Tensor> params_;
  std::vector<std::vector<size_t>> buckets_;
  std::vector<torch::Tensor> buffers_;  ///< one flat buffer per bucket
};

} // namespace zsq::distributed
