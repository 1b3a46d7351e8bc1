// One save/load interface for the stateful parts of a run: a module, an
// optimizer, a synthesizer, tensors kept as they are. A checkpoint writes each
// part's state() into its own HDF5 group and hands that group back to the
// part's load_state() on resume; a part never sees the file.
//
//   OptimizerState momenta(sgd, params);
//   for (const auto& [name, t] : momenta.state()) file.write_tensor("train/optimizer/" + name, t);
//   ...
//   momenta.load_state(read_group(file, "train/optimizer/"));   // bit-for-bit where it left off
#pragma once

#include "framework/optim_state.h"  // NamedTensors

#include <torch/torch.h>

#include <map>
#include <string>

namespace zsq {

using TensorMap = std::map<std::string, torch::Tensor>;

class Stateful {
 public:
  virtual ~Stateful() = default;
  /// The tensors that restore this part, by name.
  virtual NamedTensors state() = 0;
  /// Restores what state() returned; throws naming the first tensor that is missing, unexpected or misshapen.
  virtual void load_state(const TensorMap& state) = 0;
};

/// A module's parameters and buffers (named_state order). Loading wants exactly
/// those names with their shapes; messages call the module `what` (e.g. "generator").
class ModuleState final : public Stateful {
 public:
  ModuleState(torch::nn::Module& module, std::string what) : module_(module), what_(std::move(what)) {}
  NamedTensors state() override;
  void load_state(const TensorMap& state) override;

 private:
  torch::nn::Module& module_;
  std::string what_;
};

/// An optimizer's state for its named parameters (optimizer_state, load_optimizer_state).
class OptimizerState final : public Stateful {
 public:
  OptimizerState(torch::optim::Optimizer& optimizer, NamedTensors params)
      : optimizer_(optimizer), params_(std::move(params)) {}
  NamedTensors state() override { return optimizer_state(optimizer_, params_); }
  void load_state(const TensorMap& state) override { load_optimizer_state(optimizer_, params_, state); }

 private:
  torch::optim::Optimizer& optimizer_;
  NamedTensors params_;
};

/// Tensors a run keeps as they are (e.g. the weight codes it started from):
/// state() returns them, load_state() replaces them.
class HeldTensors final : public Stateful {
 public:
  explicit HeldTensors(NamedTensors* tensors) : tensors_(tensors) {}
  NamedTensors state() override { return *tensors_; }
  void load_state(const TensorMap& state) override { tensors_->assign(state.begin(), state.end()); }

 private:
  NamedTensors* tensors_;
};

/// `parts` with `prefix` before every name.
NamedTensors with_prefix(const std::string& prefix, const NamedTensors& parts);
/// The entries of `state` whose names start with `prefix`, the prefix removed.
TensorMap under_prefix(const TensorMap& state, const std::string& prefix);

} // namespace zsq
