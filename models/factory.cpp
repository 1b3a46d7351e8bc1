#include "models/factory.h"

#include "framework/nn/batchnorm.h"

#include <torch/torch.h>

namespace zsq::models {

torch::nn::AnyModule Fp32Factory::conv2d(const ConvSpec& s) const {
  TORCH_CHECK(s.in_channels > 0 && s.out_channels > 0, "conv2d needs positive channel counts, got ",
              s.in_channels, " -> ", s.out_channels);
  return torch::nn::AnyModule(torch::nn::Conv2d(torch::nn::Conv2dOptions(s.in_channels, s.out_channels, s.kernel)
                                                    .stride(s.stride)
                                                    .padding(s.padding)
                                                    .groups(s.groups)
                                                    .bias(s.bias)));
}

torch::nn::AnyModule Fp32Factory::linear(const LinearSpec& s) const {
  TORCH_CHECK(s.in_features > 0 && s.out_features > 0, "linear needs positive sizes, got ", s.in_features,
              " -> ", s.out_features);
  return torch::nn::AnyModule(
      torch::nn::Linear(torch::nn::LinearOptions(s.in_features, s.out_features).bias(s.bias)));
}

torch::nn::AnyModule Fp32Factory::batch_norm(int64_t num_features) const {
  return torch::nn::AnyModule(nn::BatchNorm2d(nn::BatchNorm2dOptions(num_features)));
}

} // namespace zsq::models
