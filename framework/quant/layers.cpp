#include "framework/quant/layers.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace zsq::quant {
WeightInit parse_weight_init(const std::string& name) {
  if (name == "lsq") return WeightInit::kLsq;
  if (name == "mse") return WeightInit::kMse;
  TORCH_CHECK(false, "unknown weight-step initialisation '", name, "': use 'mse' or 'lsq'");
}

void QuantLayerOptions::check() const {
  TORCH_CHECK(!bits_.empty(), "quantized layer: no bit-widths given");
  TORCH_CHECK(wbits_.size() == bits_.size() && abits_.size() == bits_.size(),
              "quantized layer: bits (", bits_text(bits_), "), wbits (", bits_text(wbits_), ") and abits (",
              bits_text(abits_), ") must have the same length");
  TORCH_CHECK(top_bits_ >= 2 && top_bits_ <= 16, "top bits must be in [2, 16], got ", top_bits_);
  for (size_t i = 0; i < bits_.size(); ++i) {
    TORCH_CHECK(std::count(bits_.begin(), bits_.end(), bits_[i]) == 1, "bit-width ", bits_[i], " listed twice");
    TORCH_CHECK(wbits_[i] >= 2 && wbits_[i] <= top_bits_, "weight bits must be in [2, top bits = ", top_bits_,
                "], got ", wbits_[i]);
    TORCH_CHECK(abits_[i] >= 2 && abits_[i] <= 16, "activation bits must be in [2, 16], got ", abits_[i]);
  }
}

size_t QuantLayerOptions::index_of(int64_t b) const { return bit_index(bits_, b); }

// --- QuantizedLayer -------------------------------------------------------------

void QuantizedLayer::register_quant_state(torch::nn::Module& module, const torch::Tensor& weight,
                                          int64_t in_channels, QuantLayerOptions options) {
  options.check();
  options_ = std::move(options);
  index_ = std::min(index_, options_.bits().size() - 1);
  weight_index_ = std::min(weight_index_, options_.bits().size() - 1);
  weight_ = weight;
  weight_step_ = module.register_parameter("weight_step", torch::ones({weight.size(0)}) * 1e-2);
  act_steps_.clear();
  act_borders_.clear();
  act_ready_.clear();
  ready_mirrors_.assign(options_.bits().size(), HostFlag());
  for (const int64_t b : options_.bits()) {
    const std::string suffix = "_b" + std::to_string(b);
    act_steps_.push_back(module.register_parameter("act_step" + suffix, torch::ones({}) * 1e-1));
    if (options_.input_border()) {
      act_borders_.push_back(module.register_parameter("act_border" + suffix, torch::zeros({2, in_channels})));
    }
    act_ready_.push_back(module.register_buffer("act_ready" + suffix, torch::zeros({}, torch::kBool)));
  }
  input_signed_ = module.register_buffer("input_signed", torch::zeros({}, torch::kBool));
  input_zero_.clear();
  const auto& bounds = options_.input_bounds();
  if (bounds.empty()) return;
  TORCH_CHECK(bounds.size() == 2 && std::isfinite(bounds[0]) && std::isfinite(bounds[1]) && bounds[0] < bounds[1] &&
                  bounds[1] > 0,
              "quantized layer: the input range must be {lo, hi} with lo < hi and hi > 0");
  torch::NoGradGuard no_grad;
  const double lo = bounds[0], hi = bounds[1];
  for (size_t i = 0; i < act_steps_.size(); ++i) {
    const int64_t levels = (int64_t(1) << options_.abits()[i]) - 1;
    int64_t zero = 0;
    double step = hi / static_cast<double>(levels);
    if (lo < 0) {
      // z codes below zero, levels - z above: the smallest step that clips neither end, over the two
      // integers around the real-valued split.
      step = std::numeric_limits<double>::infinity();
      const double split = -lo / ((hi - lo) / static_cast<double>(levels));
      for (const double candidate : {std::floor(split), std::ceil(split)}) {
        const int64_t z = std::clamp<int64_t>(static_cast<int64_t>(candidate), 1, levels - 1);
        const double s = std::max(-lo / static_cast<double>(z), hi / static_cast<double>(levels - z));
        if (s < step) step = s, zero = z;
      }
    }
    input_zero_.push_back(zero);
    act_steps_[i].fill_(std::max(step, kMinStep));
    act_steps_[i].set_requires_grad(false);
    act_ready_[i].fill_(true);
  }
  input_signed_.fill_(lo < 0);
}

void QuantizedLayer::set_bits(int64_t b) { index_ = weight_index_ = options_.index_of(b); }

void QuantizedLayer::set_layer_bits(int64_t weight_b, int64_t act_b) {
  const size_t w = options_.index_of(weight_b), a = options_.index_of(act_b);
  weight_index_ = w;
  index_ = a;
}

torch::Tensor positive_step(const torch::Tensor& step) { return step.abs().clamp_min(kMinStep); }

torch::Tensor QuantizedLayer::quantized_weight() const {
  if (weight_override_.defined()) return weight_override_;
  // The step of bit-width k is s·2^Δ (Δ = top - k), so dL/ds = 2^Δ·dL/ds_k and
  // an SGD step on s moves s_k 4^Δ times further than LSQ would move its own
  // step. Dividing LSQ's g at k by 4^Δ gives s_k LSQ's update at every
  // bit-width (the role Double Rounding's per-bit learning-rate scaling, ALRS,
  // plays for its shared scale).
  const int64_t wb = weight_bits();
  const double g = lsq_grad_scale(weight_.numel(), signed_range(wb)) /
                   std::ldexp(1.0, static_cast<int>(2 * (options_.top_bits() - wb)));
  return vl_fake_quant(weight_, positive_step(weight_step_), options_.top_bits(), wb, options_.nesting(), g);
}

torch::Tensor QuantizedLayer::weight_codes_at(int64_t wbits) const {
  return vl_codes(weight_, positive_step(weight_step_), options_.top_bits(), wbits, options_.nesting());
}

int64_t QuantizedLayer::host_reads() const {
  int64_t reads = signed_mirror_.reads();
  for (const HostFlag& m : ready_mirrors_) reads += m.reads();
  return reads;
}

QuantRange QuantizedLayer::input_range() const {
  if (input_fixed()) {
    const int64_t zero = input_zero_[index_];
    return {zero, (int64_t(1) << activation_bits()) - 1 - zero};
  }
  return input_signed() ? signed_range(activation_bits()) : unsigned_range(activation_bits());
}

// The activation step that minimizes the squared fake-quantization error on the
// calibration batch: a grid of 100 steps from max|x|/Qp (no clipping) down to
// 1/100 of it, geometric, on an evenly strided sample of at most 2^16 values.
// LSQ's init 2·mean|x|/sqrt(Qp) is meant for low bit-widths; at 8 bits it
// spends 9/10 of the range on values that never occur (the demo's W8A8
// student lost 2 points of top-1 with it, ~0.5 with this rule).
namespace {
torch::Tensor mse_init_step(const torch::Tensor& x, const QuantRange& range) {
  torch::Tensor flat = x.detach().reshape(-1).to(torch::kFloat32);
  constexpr int64_t kSample = int64_t(1) << 16;
  if (flat.numel() > kSample) {
    // Evenly spaced indices in integer arithmetic: a float32 linspace rounds its
    // last entries past numel - 1 on large inputs (seen at 1400+ calibration images).
    const torch::Tensor pick = torch::arange(kSample, torch::kInt64).mul(flat.numel() - 1).div(kSample - 1, "floor");
    flat = flat.index_select(0, pick);
  }
  flat = flat.contiguous();
  const double top = flat.abs().max().item<double>() / static_cast<double>(std::max(range.qp, range.qn));
  if (!(top > 0) || !std::isfinite(top)) return lsq_init_step(x, range, /*per_channel=*/false);
  double best = top, best_error = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 100; ++i) {
    const double s = top * std::pow(0.01, i / 99.0);
    const torch::Tensor q = lsq_fake_quant(flat, torch::tensor(static_cast<float>(s)), range, 1.0);
    const double error = (q - flat).pow(2).sum().item<double>();
    if (error < best_error) best_error = error, best = s;
  }
  return torch::tensor(static_cast<float>(best));
}
} // namespace

torch::Tensor QuantizedLayer::quantize_input(const torch::Tensor& x) {
  if (last_input_sizes_.size() != static_cast<size_t>(x.dim()) || !std::equal(last_input_sizes_.begin(),
                                                                               last_input_sizes_.end(),
                                                                               x.sizes().begin())) {
    last_input_sizes_ = x.sizes().vec();
  }
  torch::Tensor& step = act_steps_[index_];
  if (calibrating_ && !input_fixed()) {
    torch::NoGradGuard no_grad;
    // Signedness is a property of the layer (what feeds it), decided once.
    if (!ready_mirrors_[index_].get(act_ready_[index_]) && x.min().item<float>() < 0) input_signed_.fill_(true);
    step.copy_(mse_init_step(x, input_range()).reshape({}));
    act_ready_[index_].fill_(true);
  }
  TORCH_CHECK(ready_mirrors_[index_].get(act_ready_[index_]), "the input quantizer of this layer at ", bits(),
              " bits was never calibrated; initialise the student (init_student / calibrate) first");
  const QuantRange range = input_range();
  const torch::Tensor s = positive_step(step);
  const torch::Tensor in = act_borders_.empty() ? x : apply_border(x, act_borders_[index_], s, range.qp);
  torch::Tensor q = lsq_fake_quant(in, s, range, lsq_grad_scale(x.numel(), range));
  if (drop_ <= 0) return q;
  // QDrop's code: torch.where(torch.rand_like(x) < p, x_q, x) with p 0.5, the chance of the quantized value.
  const torch::Tensor keep = torch::rand(x.sizes(), drop_generator_, x.options()) < drop_;
  return torch::where(keep, x, q);
}

void QuantizedLayer::init_weight_step(WeightInit init) {
  torch::NoGradGuard no_grad;
  // LSQ's init for the *lowest* weight bit-width, carried up to the top
  // precision: s_top = s_min / 2^(top - min). Initialising at the top instead
  // (2·mean|w|/sqrt(127)) puts nearly every weight in the two middle codes of
  // the 2-bit layer (q_8 >> 6 in {-1, 0}) with levels about 6x too large, and
  // a 2-bit student then starts with exploding activations. This way each
  // bit-width starts from a sensible grid; the top one clips |w| > 4·mean|w|.
  const int64_t min_bits = *std::min_element(options_.wbits().begin(), options_.wbits().end());
  const double carry = std::ldexp(1.0, static_cast<int>(options_.top_bits() - min_bits));
  const torch::Tensor lowest = lsq_init_step(weight_, signed_range(min_bits), /*per_channel=*/true);
  if (init == WeightInit::kLsq) {
    weight_step_.copy_(lowest / carry);
    return;
  }
  // Per output channel, the step with the least squared error summed over the layer's weight bit-widths
  // (their nested weights share the step), over LSQ's step and a geometric grid of 200 steps from 1/20
  // to 4 times it. LSQ's rule ignores the distribution: on the 9-weight filters of a 1-channel first
  // convolution at 4 bits it leaves 6.6x the error of this step (measured on the ResNet-8 teacher: 2.8 %
  // vs 0.42 % of the weights' energy). The sum matters for a shared lattice: the lowest bit-width's own
  // optimum clips tightly, and the higher bit-widths inherit the range (measured on ResNet-20, bits
  // 2,3,4,8 calibrated only: the 2-bit optimum alone gave W8A8 89.0 % against LSQ's 93.7 %).
  std::vector<int64_t> widths = options_.wbits();
  std::sort(widths.begin(), widths.end());
  widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
  const torch::Tensor w = weight_.detach().to(torch::kFloat32);
  const int64_t out = w.size(0);
  const auto error_of = [&](const torch::Tensor& lowest_step) {
    const torch::Tensor s = (lowest_step / carry).clamp_min(kMinStep);
    torch::Tensor total = torch::zeros({out});
    for (const int64_t wb : widths) {
      const torch::Tensor q = vl_fake_quant(w, s, options_.top_bits(), wb, options_.nesting(), 1.0);
      total += (q - w).pow(2).reshape({out, -1}).sum(1);
    }
    return total;
  };
  torch::Tensor best = lowest.clone(), best_error = error_of(lowest);  // never worse than LSQ's step
  for (int i = 0; i < 200; ++i) {
    const torch::Tensor s = lowest * (0.05 * std::pow(80.0, i / 199.0));
    const torch::Tensor error = error_of(s);
    const torch::Tensor better = error < best_error;
    best = torch::where(better, s, best);
    best_error = torch::where(better, error, best_error);
  }
  weight_step_.copy_((best / carry).clamp_min(kMinStep));
}

// --- QConv2d -----------------------------------------------------------------------

QConv2dImpl::QConv2dImpl(QConv2dOptions opts) : options(std::move(opts)) { reset(); }

void QConv2dImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.in_channels() > 0 && o.out_channels() > 0 && o.kernel_size() > 0 && o.stride() > 0 &&
                  o.padding() >= 0 && o.groups() > 0,
              "QConv2d: bad sizes ", o.in_channels(), " -> ", o.out_channels(), ", kernel ", o.kernel_size());
  TORCH_CHECK(o.in_channels() % o.groups() == 0 && o.out_channels() % o.groups() == 0,
              "QConv2d: channels must divide by groups");
  weight = register_parameter(
      "weight", torch::empty({o.out_channels(), o.in_channels() / o.groups(), o.kernel_size(), o.kernel_size()}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (o.bias()) {
    bias = register_parameter("bias", torch::zeros({o.out_channels()}));
  } else {
    bias = torch::Tensor();
  }
  register_quant_state(*this, weight, o.in_channels(), o.quant());
}

void QConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << "zsq::quant::QConv2d(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride()
         << ", padding=" << options.padding();
  if (options.groups() != 1) stream << ", groups=" << options.groups();
  stream << ", bits=" << bits_text(options_.bits()) << ", wbits=" << bits_text(options_.wbits())
         << ", abits=" << bits_text(options_.abits()) << ", top_bits=" << options_.top_bits()
         << ", nesting=" << nesting_name(options_.nesting()) << ")";
}

torch::Tensor QConv2dImpl::forward(const torch::Tensor& x) {
  return torch::conv2d(quantize_input(x), quantized_weight(), bias, options.stride(), options.padding(),
                       /*dilation=*/1, options.groups());
}

// --- QLinear ------------------------------------------------------------------------

QLinearImpl::QLinearImpl(QLinearOptions opts) : options(std::move(opts)) { reset(); }

void QLinearImpl::reset() {
  TORCH_CHECK(options.in_features() > 0 && options.out_features() > 0, "QLinear: bad sizes ",
              options.in_features(), " -> ", options.out_features());
  weight = register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (options.bias()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
    bias = register_parameter("bias", torch::empty({options.out_features()}).uniform_(-bound, bound));
  } else {
    bias = torch::Tensor();
  }
  register_quant_state(*this, weight, options.in_features(), options.quant());
}

void QLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "zsq::quant::QLinear(in_features=" << options.in_features() << ", out_features=" << options.out_features()
         << ", bits=" << bits_text(options_.bits()) << ", wbits=" << bits_text(options_.wbits())
         << ", abits=" << bits_text(options_.abits()) << ", top_bits=" << options_.top_bits()
         << ", nesting=" << nesting_name(options_.nesting()) << ")";
}

torch::Tensor QLinearImpl::forward(const torch::Tensor& x) {
  return torch::linear(quantize_input(x), quantized_weight(), bias);
}

// --- SwitchableBatchNorm2d --------------------------------------------------------------

SwitchableBatchNorm2dImpl::SwitchableBatchNorm2dImpl(int64_t num_features, std::vector<int64_t> bits)
    : num_features_(num_features), bits_(std::move(bits)) {
  reset();
}

void SwitchableBatchNorm2dImpl::reset() {
  TORCH_CHECK(!bits_.empty(), "switchable BatchNorm: no bit-widths given");
  norms_.clear();
  for (const int64_t b : bits_) {
    norms_.push_back(register_module("b" + std::to_string(b), nn::BatchNorm2d(nn::BatchNorm2dOptions(num_features_))));
  }
  index_ = std::min(index_, bits_.size() - 1);
}

void SwitchableBatchNorm2dImpl::pretty_print(std::ostream& stream) const {
  stream << "zsq::quant::SwitchableBatchNorm2d(" << num_features_ << ", bits=" << bits_text(bits_) << ")";
}

torch::Tensor SwitchableBatchNorm2dImpl::forward(const torch::Tensor& x) {
  nn::BatchNorm2d& norm = norms_[index_];
  if (reestimating_) {
    torch::NoGradGuard no_grad;
    TORCH_CHECK(x.dim() == 4 && x.size(1) == num_features_ && x.size(0) * x.size(2) * x.size(3) > 1,
                "BatchNorm re-estimation needs N×", num_features_, "×H×W input with more than one value per channel, got ",
                x.sizes());
    const auto [mean, var] = estimate_statistics(x);
    for (auto [running, estimate] : {std::pair{norm->running_mean, mean}, std::pair{norm->running_var, var}}) {
      if (momentum_ == 1) running.copy_(estimate); else running.lerp_(estimate, momentum_);
    }
  }
  return norm->forward(x);
}

std::pair<torch::Tensor, torch::Tensor> SwitchableBatchNorm2dImpl::estimate_statistics(const torch::Tensor& x) const {
  const nn::BatchNorm2d& norm = norms_[index_];
  if (target_.defined()) return align_statistics(x);
  if (!reference_mean_.defined()) {
    const auto [var, mean] = torch::var_mean(x, {0, 2, 3}, /*unbiased=*/true);
    return {mean, var};
  }
  const auto [var, mean] = torch::var_mean(x, {0, 2, 3}, /*unbiased=*/false);
  // A channel the reference hardly uses (variance below BatchNorm's eps) gives no usable ratio: keep it.
  const double eps = norm->options.eps();
  return {norm->running_mean + (mean - reference_mean_),
          norm->running_var * torch::where(reference_var_ > eps, var.clamp_min(eps) / reference_var_, torch::ones_like(var))};
}

void SwitchableBatchNorm2dImpl::set_estimate_momentum(double m) {
  TORCH_CHECK(m > 0 && m <= 1, "BatchNorm re-estimation momentum must be in (0, 1], got ", m);
  momentum_ = m;
}

void SwitchableBatchNorm2dImpl::set_reestimating(bool on, torch::Tensor reference_mean, torch::Tensor reference_var) {
  TORCH_CHECK(reference_mean.defined() == reference_var.defined(),
              "BatchNorm re-estimation: give both reference moments or neither");
  if (reference_mean.defined()) {
    TORCH_CHECK(reference_mean.numel() == num_features_ && reference_var.numel() == num_features_,
                "BatchNorm re-estimation: reference moments of ", reference_mean.numel(), " channels for a ",
                num_features_, "-channel BatchNorm");
  }
  reestimating_ = on;
  target_ = torch::Tensor();
  const bool relative = on && reference_mean.defined();
  reference_mean_ = relative ? reference_mean.detach().reshape({num_features_}) : torch::Tensor();
  reference_var_ = relative ? reference_var.detach().reshape({num_features_}) : torch::Tensor();
}

void SwitchableBatchNorm2dImpl::set_aligning(torch::Tensor target, bool fit_slope) {
  TORCH_CHECK(target.defined() && target.dim() == 4 && target.size(1) == num_features_,
              "BatchNorm alignment: the target must be N×", num_features_, "×H×W");
  set_reestimating(true);
  target_ = target.detach();
  fit_slope_ = fit_slope;
}

// Per channel, the least-squares line target ≈ a·x + c, then the statistics that normalize x by it:
// 1 / sqrt(var + eps) = a, mean = -c / a. Without fit_slope_, a = 1 / sqrt(var(x) + eps): x's own spread.
std::pair<torch::Tensor, torch::Tensor> SwitchableBatchNorm2dImpl::align_statistics(const torch::Tensor& x) const {
  TORCH_CHECK(x.sizes() == target_.sizes(), "BatchNorm alignment: input ", x.sizes(), " against a target of ",
              target_.sizes(), " (the same images through both networks)");
  auto norm = current();
  const auto [var_x, mean_x] = torch::var_mean(x, {0, 2, 3}, /*unbiased=*/false);
  const auto mean_t = target_.mean({0, 2, 3});
  const auto shape = std::vector<int64_t>{1, num_features_, 1, 1};
  const double eps = norm->options.eps();
  if (!fit_slope_) return {mean_x - mean_t * (var_x + eps).sqrt(), var_x};
  const auto cov = ((x - mean_x.view(shape)) * (target_ - mean_t.view(shape))).mean({0, 2, 3});
  const auto slope = cov / var_x.clamp_min(1e-12);
  const auto usable = slope > 1e-6;
  const auto a = slope.clamp_min(1e-6);
  return {torch::where(usable, mean_x - mean_t / a, norm->running_mean),
          torch::where(usable, (a.pow(-2) - eps).clamp_min(0), norm->running_var)};
}

void SwitchableBatchNorm2dImpl::set_bits(int64_t b) { index_ = bit_index(bits_, b); }

nn::BatchNorm2d SwitchableBatchNorm2dImpl::norm_at(int64_t b) const { return norms_[bit_index(bits_, b)]; }

} // namespace zsq::quant
