// Quantized layers of the once-for-all student: convolution and linear layers
// with vertical-layered weights and per-bit LSQ activation quantizers, and
// switchable BatchNorm (one BN per bit-width). The whole model switches
// bit-width at once (set_bits, models/quant_factory.h); weights are one FP32
// tensor shared by every bit-width, everything else is private to a bit-width.
//
// Parameter names: `weight` and `bias` as torch's Conv2d/Linear (so a teacher
// loads by name), `weight_step` (per output channel, top precision), and per
// bit-width b: `act_step_b<b>`; switchable BN holds BatchNorm2d children
// named `b<b>` (so `bn1.b4.running_mean`).
//
// Activation quantizers are per tensor, unsigned when calibration saw no
// negative input (after ReLU) and signed otherwise; their steps are set by
// calibrate (LSQ's 2·mean|x|/sqrt(Qp) on a batch) and a forward before that
// is an error.
#pragma once

#include "framework/nn/batchnorm.h"
#include "framework/quant/fake_quant.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace zsq::quant {

/// How init_weight_step sets a layer's weight steps.
enum class WeightInit {
  kLsq,  ///< LSQ's per-channel 2·mean|w|/sqrt(Qp) at the lowest weight bit-width
  kMse,  ///< per channel, the least squared error of the nested weights summed over the layer's weight bit-widths
};
WeightInit parse_weight_init(const std::string& name);

/// "2,3,4,8"
std::string bits_text(const std::vector<int64_t>& bits);
/// Position of bit-width b in `bits`; throws naming the model's bit-widths.
size_t bit_index(const std::vector<int64_t>& bits, int64_t b);

/// Smallest step a quantizer uses.
inline constexpr double kMinStep = 1e-8;
/// The step a quantizer uses for a learned step parameter: |s| floored at
/// kMinStep, so that an optimizer step that crosses zero cannot break the
/// quantizer (its gradient then flips sign and pushes |s| back).
torch::Tensor positive_step(const torch::Tensor& step);

/// The bit-widths of one quantized layer, for each bit-width of the model.
struct QuantLayerOptions {
  QuantLayerOptions() = default;
  /// Checks lengths and ranges; throws with the offending values.
  void check() const;
  /// Index of model bit-width `b` in bits(); throws when absent.
  size_t index_of(int64_t b) const;

  /// The model's bit-widths (the keys of set_bits), e.g. {2, 3, 4, 8}.
  TORCH_ARG(std::vector<int64_t>, bits);
  /// Weight bits at each model bit-width (same length as bits).
  TORCH_ARG(std::vector<int64_t>, wbits);
  /// Activation bits at each model bit-width (same length as bits).
  TORCH_ARG(std::vector<int64_t>, abits);
  /// Precision of the stored weight codes; every wbits <= top_bits. Default 8.
  TORCH_ARG(int64_t, top_bits) = 8;
  /// How lower weight codes nest in higher ones. Default shift.
  TORCH_ARG(Nesting, nesting) = Nesting::kShift;
  /// The known range {lo, hi} of the layer's input (the first layer's: pixels
  /// in [0, 1] after normalization), or empty. When given, the input steps of
  /// every bit-width are derived from it and neither calibrate nor train: the
  /// codes cover [lo, hi] with all 2^abits levels and zero on a level
  /// (-z·s <= lo, (2^abits - 1 - z)·s >= hi, the smallest such s over integer
  /// z), so no pixel is clipped and zero padding stays exact.
  TORCH_ARG(std::vector<double>, input_bounds);
  /// AQuant's learned rounding border of the input, coarse-grained to one linear function per input channel
  /// and bit-width (parameters act_border_b<k>, [2, channels], zeros: round to nearest): the input codes are
  /// round(clamp(u·(1 + γ/Qp) + δ)), u = x/s, that is floor(u) + [frac(u) >= 0.5 - δ - γ·u/Qp] while the
  /// border stays in (0, 1). Default off (no such parameters).
  TORCH_ARG(bool, input_border) = false;

};

/// Anything whose behaviour depends on the model's current bit-width.
class BitSwitchable {
 public:
  virtual ~BitSwitchable() = default;
  /// Selects model bit-width b (one of options().bits()).
  virtual void set_bits(int64_t b) = 0;
  virtual int64_t bits() const = 0;
};

/// A host copy of a 0-dim bool buffer, read back (.item) only when the buffer changed: its version counter
/// (bumped by every in-place write: copy_, fill_, a load or broadcast) or its storage differ from the last read.
/// A forward on a GPU then does not wait for the device to learn a flag it already knows.
class HostFlag {
 public:
  bool get(const torch::Tensor& flag) const {
    const int64_t version = flag._version();
    const void* data = flag.data_ptr();
    if (version != version_ || data != data_) {
      value_ = flag.item<bool>();
      version_ = version;
      data_ = data;
      ++reads_;
    }
    return value_;
  }
  int64_t reads() const { return reads_; }

 private:
  mutable int64_t version_ = -1;
  mutable const void* data_ = nullptr;
  mutable bool value_ = false;
  mutable int64_t reads_ = 0;
};

/// Shared machinery of QConv2d and QLinear: the weight quantizer and the
/// per-bit input quantizers.
class QuantizedLayer : public BitSwitchable {
 public:
  void set_bits(int64_t b) override;
  int64_t bits() const override { return options_.bits()[index_]; }
  /// Mixed precision: the weights at model bit-width `weight_b`'s weight bits, the input at model bit-width
  /// `act_b`'s activation bits and step (each one of options().bits()); set_bits(b) is (b, b).
  void set_layer_bits(int64_t weight_b, int64_t act_b);
  /// The model bit-width whose weight bits the layer uses (bits() unless set_layer_bits split them).
  int64_t weight_model_bits() const { return options_.bits()[weight_index_]; }
  int64_t weight_bits() const { return options_.wbits()[weight_index_]; }
  int64_t activation_bits() const { return options_.abits()[index_]; }
  const QuantLayerOptions& quant_options() const { return options_; }
  /// Sizes of the last input a forward quantized (empty before the first): what mixed precision counts
  /// multiply-accumulates from.
  const std::vector<int64_t>& last_input_sizes() const { return last_input_sizes_; }

  /// The fake-quantized weight at the current bit-width (differentiable).
  torch::Tensor quantized_weight() const;
  /// The integer weight codes at the current bit-width (int16).
  torch::Tensor weight_codes() const { return weight_codes_at(weight_bits()); }
  /// The integer weight codes at `wbits` weight bits (int16).
  torch::Tensor weight_codes_at(int64_t wbits) const;
  /// The fake-quantized input at the current bit-width (differentiable).
  torch::Tensor quantize_input(const torch::Tensor& x);

  /// While on, each forward sets the current bit-width's input step (and the
  /// layer's input signedness) from its input instead of requiring them.
  void set_calibrating(bool on) { calibrating_ = on; }
  /// Sets weight_step for the lowest weight bit-width (LSQ's per-channel
  /// initial value, or the step with the least squared error of the nested
  /// weights summed over the layer's weight bit-widths), divided by
  /// 2^(top_bits - lowest) (see the .cpp).
  void init_weight_step(WeightInit init = WeightInit::kLsq);
  /// Whether the input steps come from options().input_bounds() (then they
  /// neither calibrate nor train).
  bool input_fixed() const { return !input_zero_.empty(); }
  /// The per-bit input step parameters (act_step_b<k>), in options().bits() order.
  const std::vector<torch::Tensor>& input_steps() const { return act_steps_; }
  /// The current bit-width's rounding border parameters ([2, channels]: δ, γ), undefined without borders.
  torch::Tensor input_border() const { return act_borders_.empty() ? torch::Tensor() : act_borders_[index_]; }

  /// Whether the input quantizer is signed (seen negative inputs in calibration).
  bool input_signed() const { return signed_mirror_.get(input_signed_); }
  /// How many times this layer read a flag back from its buffers (test hook: a forward reads nothing
  /// once the flags are known, so a GPU never waits for them).
  int64_t host_reads() const;
  QuantRange input_range() const;
  /// The input step in use at the current bit-width (positive_step of the parameter).
  torch::Tensor input_step() const { return positive_step(act_steps_[index_]); }
  /// The weight steps in use (positive_step of weight_step), [out].
  torch::Tensor weight_step() const { return positive_step(weight_step_); }
  /// The latent FP32 weight (the module's `weight` parameter).
  const torch::Tensor& latent_weight() const { return weight_; }
  /// The weight_step parameter itself (what an optimizer of the steps trains).
  const torch::Tensor& weight_step_parameter() const { return weight_step_; }

  /// Post-training quantization: while `w` is defined, quantized_weight() returns it instead of the layer's
  /// own quantizer (the caller recomputes it before each forward: AdaRound's soft rounding, see adaround.h);
  /// an undefined tensor switches the override off.
  void set_weight_override(torch::Tensor w) { weight_override_ = std::move(w); }
  /// QDrop (Wei et al. 2022): while p > 0, each element of the quantized input keeps its full-precision value
  /// with probability p (drawn from `generator`) instead of its quantized one; 0 switches it off.
  void set_input_drop(double p, c10::optional<at::Generator> generator = c10::nullopt) {
    TORCH_CHECK(p >= 0 && p < 1, "input drop probability must be in [0, 1), got ", p);
    drop_ = p;
    drop_generator_ = std::move(generator);
  }

 protected:
  /// Registers weight_step, the per-bit input steps (and borders, over `in_channels`) and state on `module`.
  void register_quant_state(torch::nn::Module& module, const torch::Tensor& weight, int64_t in_channels,
                            QuantLayerOptions options);

  QuantLayerOptions options_;
  size_t index_ = 0;         ///< the activation's (and by default the weights') model bit-width
  size_t weight_index_ = 0;  ///< the weights' model bit-width
  std::vector<int64_t> last_input_sizes_;
  bool calibrating_ = false;
  std::vector<int64_t> input_zero_;   ///< per bit-width: codes below zero of a fixed input range (empty: not fixed)
  torch::Tensor weight_;        ///< the module's weight (same tensor)
  torch::Tensor weight_step_;   ///< [out], top precision
  std::vector<torch::Tensor> act_steps_;   ///< one 0-dim step per model bit-width
  std::vector<torch::Tensor> act_borders_; ///< one [2, channels] border per model bit-width (input_border only)
  std::vector<torch::Tensor> act_ready_;   ///< one 0-dim bool buffer per model bit-width
  torch::Tensor input_signed_;  ///< 0-dim bool buffer
  // Host copies of the flags, refreshed only when their buffer changed (loaded, calibrated, broadcast).
  std::vector<HostFlag> ready_mirrors_;
  HostFlag signed_mirror_;
  torch::Tensor weight_override_;
  double drop_ = 0;
  c10::optional<at::Generator> drop_generator_;
};

struct QConv2dOptions {
  QConv2dOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(int64_t, kernel_size);
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(int64_t, padding) = 0;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(bool, bias) = false;
  TORCH_ARG(QuantLayerOptions, quant);
};

/// Conv2d on the quantized input with the quantized weight.
class QConv2dImpl : public torch::nn::Cloneable<QConv2dImpl>, public QuantizedLayer {
 public:
  explicit QConv2dImpl(QConv2dOptions opts);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x: N×in×H×W.
  torch::Tensor forward(const torch::Tensor& x);

  QConv2dOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(QConv2d);

struct QLinearOptions {
  QLinearOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(QuantLayerOptions, quant);
};

/// Linear on the quantized input with the quantized weight.
class QLinearImpl : public torch::nn::Cloneable<QLinearImpl>, public QuantizedLayer {
 public:
  explicit QLinearImpl(QLinearOptions opts);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x: N×in.
  torch::Tensor forward(const torch::Tensor& x);

  QLinearOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(QLinear);

/// One BatchNorm2d per model bit-width, children named b<bits>.
class SwitchableBatchNorm2dImpl : public torch::nn::Cloneable<SwitchableBatchNorm2dImpl>, public BitSwitchable {
 public:
  SwitchableBatchNorm2dImpl(int64_t num_features, std::vector<int64_t> bits);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);
  void set_bits(int64_t b) override;
  int64_t bits() const override { return bits_[index_]; }
  /// The BatchNorm2d of the current bit-width.
  nn::BatchNorm2d current() const { return norms_[index_]; }
  const std::vector<nn::BatchNorm2d>& norms() const { return norms_; }
  /// The BatchNorm2d of bit-width b (one of the model's).
  nn::BatchNorm2d norm_at(int64_t b) const;
  /// While on, each forward first re-estimates the current bit-width's running
  /// mean and variance from its input, then normalizes with them. Without a
  /// reference: the batch mean and unbiased variance (one train-mode step with
  /// momentum 1). With one (the FP32 network's batch mean and biased variance
  /// at this layer on the same images): only the quantization's shift moves
  /// the statistics, mean += batch mean - reference mean, var *= batch var /
  /// reference var (biased), so a mismatch between the images and the data the
  /// running statistics came from cancels.
  void set_reestimating(bool on, torch::Tensor reference_mean = {}, torch::Tensor reference_var = {});
  /// Re-estimation (until set_reestimating(false)) aligned to `target`, the
  /// reference network's normalized input of this BatchNorm on the same images
  /// ((x - running mean) / sqrt(running var + eps), N×C×H×W): per channel, the
  /// running mean and variance that make the normalized input the least-squares
  /// fit of the target, (x - m) / sqrt(v + eps) ≈ target. A channel whose input
  /// does not rise with the target (slope <= 1e-6) keeps its statistics.
  /// Without `fit_slope`: v is the input's own (biased) variance and only m is
  /// fitted, so that the normalized input's mean is the target's.
  void set_aligning(torch::Tensor target, bool fit_slope = true);
  /// How far each re-estimation moves the running statistics towards its estimate: 1 (the default) all the
  /// way; m < 1: running = (1 - m)·running + m·estimate (statistics that track a network still training).
  void set_estimate_momentum(double m);

 private:
  int64_t num_features_;
  std::vector<int64_t> bits_;
  std::vector<nn::BatchNorm2d> norms_;
  size_t index_ = 0;
  std::pair<torch::Tensor, torch::Tensor> estimate_statistics(const torch::Tensor& x) const;  ///< mean, variance
  std::pair<torch::Tensor, torch::Tensor> align_statistics(const torch::Tensor& x) const;

  bool reestimating_ = false, fit_slope_ = true;
  double momentum_ = 1;
  torch::Tensor reference_mean_, reference_var_, target_;
};
TORCH_MODULE(SwitchableBatchNorm2d);

} // namespace zsq::quant
