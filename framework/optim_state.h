// Optimizer state as named tensors, so that a checkpoint stores it as plain
// HDF5 datasets (readable with h5py) and a resumed run continues bit-for-bit.
//
// Names are "<parameter name>.<field>": SGD's "momentum_buffer"; Adam's
// "exp_avg", "exp_avg_sq", "max_exp_avg_sq" (amsgrad) and "step" (int64
// scalar). A parameter without state (never stepped) has no entry. The
// learning rates are not stored: the schedules recompute them from the step.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace zsq {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// The state of `optimizer` (SGD or Adam) for the parameters `params`
/// (name → tensor, each one of the optimizer's parameters).
NamedTensors optimizer_state(torch::optim::Optimizer& optimizer, const NamedTensors& params);

/// Restores what optimizer_state() wrote. Every entry must name a parameter of
/// `params` and have its shape; throws a message naming the first problem.
void load_optimizer_state(torch::optim::Optimizer& optimizer, const NamedTensors& params,
                          const std::map<std::string, torch::Tensor>& state);

} // namespace zsq
