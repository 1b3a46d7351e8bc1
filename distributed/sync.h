// Keeping replicas identical, and batch statistics over every rank.
#pragma once

#include "distributed/communicator.h"

#include <torch/nn/module.h>

namespace zsq::distributed {

/// Broadcasts every parameter and buffer of `module` from `root`, in name
/// order (start of training, after a resume). buffers_only: only buffers
/// (e.g. BatchNorm running statistics before an evaluation).
void broadcast_state(Communicator& comm, const torch::nn::Module& module, int root = 0, bool buffers_only = false);

/// Throws, naming the tensors and ranks, unless every rank holds exactly
/// rank 0's parameters and buffers (a 64-bit hash of each tensor's bytes,
/// all-gathered). A debug check: costs one pass over the model.
void check_replicas(Communicator& comm, const torch::nn::Module& module);

/// Per-channel mean and biased variance over every rank's batch.
struct Moments {
  torch::Tensor mean, var;  ///< [C], float32
  int64_t count = 0;        ///< values per channel over all ranks (N·H·W summed)
};

/// The moments of x (N×C×H×W, or N×C) as if all ranks' batches were one
/// batch, differentiable with respect to x: per-rank sums are all-reduced (in
/// float64), and the gradient each rank receives is that of the global
/// statistics with respect to its own samples. So N ranks × B samples give
/// the loss of 1 rank × N·B samples, and summing the ranks' parameter
/// gradients gives its gradient.
Moments global_moments(Communicator& comm, const torch::Tensor& x);

} // namespace zsq::distributed
