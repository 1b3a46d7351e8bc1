// The once-for-all student: the zoo's architectures built with quantized
// layers (framework/quant/layers.h), switched between bit-widths as a whole,
// and initialised from an FP32 teacher by parameter name.
//
//   StudentConfig cfg;  cfg.bits = {2, 3, 4, 8};
//   auto student = models::build(spec, QuantFactory(cfg));
//   init_student(*student, *teacher, calibration_images);  // normalized N×C×H×W
//   set_bits(*student, 4);
//   torch::Tensor logits = student->forward(images);
#pragma once

#include "framework/quant/fake_quant.h"
#include "framework/quant/layers.h"
#include "models/factory.h"

#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace zsq::models {

struct StudentConfig {
  /// The model's bit-widths, the keys of set_bits (e.g. {2, 3, 4, 8}).
  std::vector<int64_t> bits;
  /// Weight / activation bits of the middle layers at each model bit-width;
  /// empty: equal to bits.
  std::vector<int64_t> wbits, abits;
  /// Weight and activation bits of the first and of the last layer, at every
  /// model bit-width; kSameBits: the middle layers' bits at each bit-width
  /// (every layer quantized alike, the protocol of data-free QAT papers).
  /// Default 8.
  static constexpr int64_t kSameBits = 0;
  int64_t first_bits = 8, last_bits = 8;
  /// Bits of the network input (the first layer's input quantizer) at every
  /// model bit-width; kSameBits (default): the first layer's activation bits.
  /// 8 keeps 8-bit pixels exact: the protocol of GDFQ's code, which does not
  /// quantize the network input.
  int64_t input_bits = kSameBits;
  /// Precision of the stored weight codes (the first and last layer use at
  /// least their fixed bits). Default 8.
  int64_t top_bits = 8;
  quant::Nesting nesting = quant::Nesting::kShift;
  /// The network input's known range {lo, hi} (normalized units; e.g.
  /// pixel_input_range): the first layer's input steps are derived from it
  /// and neither calibrate nor train (QuantLayerOptions::input_bounds).
  /// Empty: they are calibrated and trained like every other step.
  std::vector<double> input_range;
  /// AQuant's learned rounding border on every quantized layer's input (QuantLayerOptions::input_border;
  /// zsq ptq --border). Default off.
  bool input_border = false;

  /// Checks the lists; throws with the offending values.
  void check() const;
  /// wbits / abits, or bits where they are empty.
  const std::vector<int64_t>& middle_wbits() const { return wbits.empty() ? bits : wbits; }
  const std::vector<int64_t>& middle_abits() const { return abits.empty() ? bits : abits; }
  /// Weight / activation bits of a layer of `role` at each model bit-width.
  std::vector<int64_t> layer_wbits(LayerRole role) const;
  std::vector<int64_t> layer_abits(LayerRole role) const;
  /// "8", "same", "4,8" (first, last): the text --first-last-bits takes.
  std::string first_last_text() const;
};

/// Parses --first-last-bits: "N" or "same" for both layers, or "F,L" (each N
/// or same) for the first and the last layer; throws on anything else.
std::pair<int64_t, int64_t> parse_first_last_bits(const std::string& text);
/// Parses --input-bits: "N" (in [2, 16]) or "same"; throws on anything else.
int64_t parse_input_bits(const std::string& text);

/// Builds QConv2d / QLinear / SwitchableBatchNorm2d with the parameter names
/// of the FP32 layers (plus the quantizer state).
class QuantFactory : public LayerFactory {
 public:
  explicit QuantFactory(StudentConfig config);
  torch::nn::AnyModule conv2d(const ConvSpec& spec) const override;
  torch::nn::AnyModule linear(const LinearSpec& spec) const override;
  torch::nn::AnyModule batch_norm(int64_t num_features) const override;

 private:
  quant::QuantLayerOptions options_for(LayerRole role) const;
  StudentConfig config_;
};

/// Switches every quantized layer and switchable BN of `model` to model
/// bit-width b. Throws when b is not one of the model's, or the model has no
/// quantized layer.
void set_bits(const torch::nn::Module& model, int64_t b);

/// The model's bit-widths (empty for an FP32 model).
std::vector<int64_t> model_bits(const torch::nn::Module& model);

/// How init_student sets the weight steps.
struct QuantizerInit {
  quant::WeightInit weight_init = quant::WeightInit::kLsq;
};

/// The range {lo, hi} of pixels in [0, 1] after normalization, over every
/// channel: lo = min -mean/std, hi = max (1 - mean)/std.
std::vector<double> pixel_input_range(const std::vector<double>& mean, const std::vector<double>& std);

/// The input steps of the layers whose input range is known (they must not train).
std::vector<torch::Tensor> fixed_input_steps(const torch::nn::Module& model);

/// Every quantized layer's integer weight codes at the top precision (int16),
/// named by the layer's module path.
std::vector<std::pair<std::string, torch::Tensor>> top_weight_codes(const torch::nn::Module& model);

/// The share of the codes in `start` (top_weight_codes of the same model
/// earlier) that differ from the model's codes now; throws when a layer does
/// not fit.
double changed_code_share(const torch::nn::Module& model,
                          const std::vector<std::pair<std::string, torch::Tensor>>& start);

/// How calibration re-estimates BatchNorm statistics (--bn-mode): the images'
/// own moments, the teacher's moved by the student-teacher difference on the
/// images, aligned to the teacher's normalized features (least squares), or
/// the images' variance with the mean that centers the features where the
/// teacher's normalized features are on the same images.
enum class BnEstimate { kAbsolute, kShift, kAlign, kCenter };

/// Initialises `student` from `teacher` (same architecture, FP32): latent
/// weights and biases are the teacher's, every per-bit BatchNorm is the
/// teacher's BatchNorm, weight steps follow LSQ's per-channel init at the top
/// precision, and every activation step is calibrated on `images` (normalized
/// N×C×H×W) at every bit-width, in eval mode. Throws listing every tensor
/// that does not match. Leaves the student at its first bit-width, in the
/// training mode it had.
/// `bn_bits` and `estimates` as in calibrate(), with the teacher as the
/// reference; weight steps as `init` says.
void init_student(torch::nn::Module& student, torch::nn::Module& teacher, const torch::Tensor& images,
                  const std::vector<int64_t>& bn_bits = {}, const std::vector<BnEstimate>& estimates = {BnEstimate::kShift},
                  const QuantizerInit& init = {});

/// Runs `images` through `student` at every bit-width with calibration on
/// (activation steps set from the data), in eval mode, without gradients.
/// At the bit-widths in `bn_bits` the switchable BatchNorms also re-estimate
/// their running statistics from the same forward (each layer from the
/// quantized network below it), before the layers after them calibrate, as
/// `estimates` says (one for every bit-width of `bn_bits`, or one per
/// bit-width in their order): kAbsolute, the images' statistics; with
/// `reference` (the FP32 network of the same architecture, eval mode; needed
/// by the others), kShift: the reference's statistics shifted by the difference
/// between the student's and the reference's statistics on the images (see
/// SwitchableBatchNorm2dImpl::set_reestimating), which keeps the part of the
/// statistics the images got wrong out; with `estimate` kAlign, chosen so that
/// the student's normalized features match the reference's on the same images
/// (SwitchableBatchNorm2dImpl::set_aligning).
/// With `activation_steps` false only the BatchNorms of `bn_bits` are
/// re-estimated (e.g. after training moved the weights); the steps stay.
/// `momentum` < 1 moves the statistics only that far towards the estimates
/// (SwitchableBatchNorm2dImpl::set_estimate_momentum), e.g. every step of a
/// network that keeps training.
void calibrate(torch::nn::Module& student, const torch::Tensor& images, const std::vector<int64_t>& bn_bits = {},
               torch::nn::Module* reference = nullptr, bool activation_steps = true,
               const std::vector<BnEstimate>& estimates = {BnEstimate::kShift}, double momentum = 1);

} // namespace zsq::models
