// Mixed precision from one once-for-all student: every quantized layer at its own weight and activation
// bit-width, chosen among the model's bit-widths. A layer at model bit-width b uses b's weight bits (the
// shared codes cut to them), b's input step and activation bits, and the BatchNorm after it is b's.
//
//   auto layers = mix_layers(*student, {1, 28, 28});
//   Mix mix = uniform_mix(layers, 4);
//   mix[3] = {2, 2};                       // the fourth quantized layer at the 2-bit model's bits
//   set_mix(layers, mix);                  // the student now runs that configuration
//   MixCost cost = mix_cost(layers, mix);  // weight bytes, mean weight bits, BOPs
#pragma once

#include "models/extract.h"

#include <string>
#include <vector>

namespace zsq::models {

/// One quantized layer as mixed precision sees it.
struct MixLayer {
  std::string name;
  quant::QuantizedLayer* layer = nullptr;
  quant::SwitchableBatchNorm2dImpl* bn = nullptr;  ///< the BatchNorm after it, or null
  int64_t weights = 0;   ///< weight count
  int64_t channels = 0;  ///< output channels (per-channel float data in a fixed file)
  int64_t macs = 0;      ///< multiply-accumulates per image
  /// Whether its weight or activation bits differ between model bit-widths (the first and last layer
  /// at fixed bits do not: a mix leaves them at the top model bit-width).
  bool free = false;
};

/// The student's quantized layers in module order, with their sizes; the multiply-accumulates come from
/// one forward of a zero image of `input_shape` (C,H,W) at the top bit-width (eval mode, no gradients;
/// the student must be calibrated). Leaves the student at its top bit-width.
std::vector<MixLayer> mix_layers(torch::nn::Module& student, const std::vector<int64_t>& input_shape);

/// Per quantized layer (mix_layers order), the model bit-width of its weights and of its input.
struct LayerBits {
  int64_t w = 0, a = 0;
  bool operator==(const LayerBits& o) const { return w == o.w && a == o.a; }
};
using Mix = std::vector<LayerBits>;

/// Every layer at model bit-width b.
Mix uniform_mix(const std::vector<MixLayer>& layers, int64_t b);
/// Switches each layer, and the BatchNorm after it (to the weights' bit-width), to its entry of `mix`.
/// Throws when the lengths differ or a bit-width is not the model's.
void set_mix(const std::vector<MixLayer>& layers, const Mix& mix);

/// What a mix costs: the weights' packed codes plus the per-channel float data of a fixed file, the
/// mean weight bits over all weights, and BOPs (weight bits × activation bits × MACs, per image).
struct MixCost {
  double bytes = 0, mean_wbits = 0, bops = 0;
};
MixCost mix_cost(const std::vector<MixLayer>& layers, const Mix& mix);

/// "4,4,3,2/4,8": one entry per quantized layer, "b" (weights and input at model bit-width b) or "w/a".
std::string mix_text(const Mix& mix);
/// Parses mix_text for these layers and model bit-widths (one entry alone: every layer); throws naming
/// the bad entry.
Mix parse_mix(const std::string& text, const std::vector<MixLayer>& layers, const std::vector<int64_t>& model_bits);

/// The integer model of the student in configuration `mix` (BatchNorm running statistics as they are).
Classifier extract_mixed(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                         const std::vector<MixLayer>& layers, const Mix& mix);

} // namespace zsq::models
