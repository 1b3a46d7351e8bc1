// The integer reference path for extracted fixed-precision models: each
// quantized convolution or linear layer quantizes its input to integers,
// multiplies integer activations by integer weights with exact integer
// accumulation (checked to fit 32 bits), then requantizes with one
// multiplier and one bias per output channel, into which the layer's
// BatchNorm is folded. Glue between layers (ReLU, residual adds, pooling)
// stays in float, as in the fake-quantized student.
//
// Weights: k-bit codes q (vertical-layered: q = q_top >> Δ, or the rounding
// cascade), whose value in units of the top step s is (2^(Δ+1)·q + o) / 2
// with o = 2^Δ - 1 (bin centre, shift nesting) or 0 (round nesting): the odd
// integer 2^(Δ+1)·q + o is what the accumulation multiplies.
//
// Buffers (all saved in the model file, names as below):
//   weight_codes  int8 (bits <= 8) or int16, the weight's shape
//   weight_step   float [out]  top-precision step s
//   weight_shift  int64 []     Δ
//   weight_offset int64 []     o
//   act_step      float []     input step
//   act_range     int64 [2]    input codes' [min, max]
//   act_border    float [2,in] AQuant's rounding border (δ, γ per input channel; only with input_border):
//                              the input codes are round(clamp(apply_border(x)/act_step))
//   scale         float [out]  act_step · s/2 · γ/sqrt(var + eps)  (γ/σ = 1 without BN)
//   bias          float [out]  β - mean·γ/σ + layer_bias·γ/σ
//   y = acc · scale + bias, acc = Σ act_codes · (2^(Δ+1)·q + o)
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>

namespace zsq::quant {

struct IntLayerOptions {
  IntLayerOptions(int64_t in, int64_t out) : in_(in), out_(out) {}
  TORCH_ARG(int64_t, in);        ///< input channels / features
  TORCH_ARG(int64_t, out);       ///< output channels / features
  TORCH_ARG(int64_t, kernel_size) = 1;  ///< convolution only
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(int64_t, padding) = 0;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(bool, conv) = true;  ///< false: a linear layer (weight out×in)
  TORCH_ARG(int64_t, weight_bits) = 8;  ///< selects the code dtype: int8 up to 8 bits, else int16
  TORCH_ARG(bool, input_border) = false;  ///< holds act_border
};

/// An integer convolution or linear layer (see the file comment).
class IntLayerImpl : public torch::nn::Cloneable<IntLayerImpl> {
 public:
  explicit IntLayerImpl(IntLayerOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x: float N×in×H×W (conv) or N×in (linear); returns float.
  torch::Tensor forward(const torch::Tensor& x);
  /// The integer accumulator of `x` (before requantization), int64 holding int32 values.
  torch::Tensor accumulate(const torch::Tensor& x) const;

  IntLayerOptions options;
  torch::Tensor weight_codes, weight_step, weight_shift, weight_offset, act_step, act_range, scale, bias;
  torch::Tensor act_border;  ///< undefined without input_border
};
TORCH_MODULE(IntLayer);

} // namespace zsq::quant
