// The layer factory: every architecture asks it for its convolutions, linear
// layers and batch norms, so one definition builds the FP32 teacher (this
// file) and, with another factory, the quantized student, with identical
// parameter names. A layer's role tells the factory whether it is the first
// or the last layer (kept at 8 bits by default when quantized).
#pragma once

#include <torch/nn/modules/container/any.h>

#include <cstdint>

namespace zsq::models {

enum class LayerRole { kFirst, kMiddle, kLast };

struct ConvSpec {
  int64_t in_channels = 0, out_channels = 0, kernel = 3, stride = 1, padding = 0, groups = 1;
  bool bias = false;
  LayerRole role = LayerRole::kMiddle;
};

struct LinearSpec {
  int64_t in_features = 0, out_features = 0;
  bool bias = true;
  LayerRole role = LayerRole::kLast;
};

/// Builds layers; each returns a module whose forward takes and returns one
/// tensor, with PyTorch's parameter names (weight, bias, running_mean, ...).
class LayerFactory {
 public:
  virtual ~LayerFactory() = default;
  virtual torch::nn::AnyModule conv2d(const ConvSpec& spec) const = 0;
  virtual torch::nn::AnyModule linear(const LinearSpec& spec) const = 0;
  virtual torch::nn::AnyModule batch_norm(int64_t num_features) const = 0;
};

/// Plain FP32 layers: torch::nn::Conv2d / Linear and zsq::nn::BatchNorm2d.
class Fp32Factory : public LayerFactory {
 public:
  torch::nn::AnyModule conv2d(const ConvSpec& spec) const override;
  torch::nn::AnyModule linear(const LinearSpec& spec) const override;
  torch::nn::AnyModule batch_norm(int64_t num_features) const override;
};

} // namespace zsq::models
