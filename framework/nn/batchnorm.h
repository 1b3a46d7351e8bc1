// BatchNorm2d with torchvision's parameter names (weight, bias, running_mean,
// running_var, num_batches_tracked) and an input *tap*: while the tap is on,
// each forward records the batch mean and (biased) variance of the input, per
// channel, keeping the autograd graph so that data synthesis can push
// gradients through them. With the tap off the forward is torch::batch_norm
// plus one branch.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace zsq::nn {

struct BatchNorm2dOptions {
  BatchNorm2dOptions(int64_t num_features) : num_features_(num_features) {}
  TORCH_ARG(int64_t, num_features);
  /// Added to the variance; default 1e-5 (as torch).
  TORCH_ARG(double, eps) = 1e-5;
  /// Running-statistics momentum; default 0.1 (as torch).
  TORCH_ARG(double, momentum) = 0.1;
};

class BatchNorm2dImpl : public torch::nn::Cloneable<BatchNorm2dImpl> {
 public:
  explicit BatchNorm2dImpl(BatchNorm2dOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x: N×C×H×W.
  torch::Tensor forward(const torch::Tensor& x);

  /// Turns the input tap on or off; turning it off drops recorded moments.
  void set_tap(bool on);
  bool tap() const { return tap_; }
  /// Per-channel mean and biased variance of the last input seen with the tap
  /// on (undefined tensors before that).
  const torch::Tensor& tap_mean() const { return tap_mean_; }
  const torch::Tensor& tap_var() const { return tap_var_; }
  /// The last input seen with the tap on (the tensor itself, in the graph).
  const torch::Tensor& tap_input() const { return tap_input_; }

  BatchNorm2dOptions options;
  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  bool tap_ = false;
  torch::Tensor tap_mean_, tap_var_, tap_input_;
};
TORCH_MODULE(BatchNorm2d);

} // namespace zsq::nn
