// What the trainers' loops share (zsq train-teacher and zsq quantize): the
// sharded loader's options, the wall clock behind progress lines, the
// divergence check, the parameters that train, a student frozen for one forward.
#pragma once

#include "framework/data.h"
#include "framework/optim_state.h"  // NamedTensors
#include "models/zoo.h"

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace zsq::trainers {

/// This rank's shard of a training set: shuffled by `seed` (per epoch), the
/// last partial batch dropped, the given augmentation.
LoaderOptions training_loader(int64_t local_batch, uint64_t seed, int rank, int world, int64_t crop_padding,
                              bool horizontal_flip);

/// The wall clock of a training loop, started at construction.
class Progress {
 public:
  Progress() : start_(std::chrono::steady_clock::now()) {}
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  /// Seconds still to go for `left` units when `done` (> 0) took elapsed().
  double eta(int64_t done, int64_t left) const {
    return elapsed() / static_cast<double>(done) * static_cast<double>(left);
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

/// Throws "training diverged: <what> is <loss> at <where>; <note>lower --lr"
/// when `loss` is not finite.
void check_not_diverged(double loss, const std::string& what, const std::string& where, const std::string& note = "");

/// The parameters of `module` that require gradients, by name.
NamedTensors trained_parameters(torch::nn::Module& module);

/// Every parameter of a module out of the graph (requires_grad off) while alive; the flags come back after.
class FrozenParameters {
 public:
  explicit FrozenParameters(torch::nn::Module& module);
  ~FrozenParameters();
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, bool>> saved_;
};

/// The student's logits at bit-width `bits` with none of its parameters in the graph (the generator's
/// adversarial term: the gradient reaches the images only).
torch::Tensor frozen_logits(models::ClassifierImpl& student, int64_t bits, const torch::Tensor& images);

} // namespace zsq::trainers
