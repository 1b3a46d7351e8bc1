#include "framework/quant/adaround.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace zsq::quant {
namespace {
constexpr double kZeta = 1.1, kGamma = -0.1;
}  // namespace

torch::Tensor rectified_sigmoid(const torch::Tensor& v) {
  return torch::clamp(torch::sigmoid(v) * (kZeta - kGamma) + kGamma, 0, 1);
}

bool RoundingSchedule::regularizing(int64_t t, int64_t steps) const {
  return static_cast<double>(t) >= warmup * static_cast<double>(steps);
}

double RoundingSchedule::beta(int64_t t, int64_t steps) const {
  // BRECQ's LinearTempDecay: rel_t = (t - start_decay) / (t_max - start_decay), end + (start - end)·max(0, 1 - rel_t).
  const double begin = warmup * static_cast<double>(steps);
  if (t < begin) return start;
  const double rel = (static_cast<double>(t) - begin) / std::max(1.0, static_cast<double>(steps) - begin);
  return end + (start - end) * std::max(0.0, 1.0 - rel);
}

AdaRound::AdaRound(const torch::Tensor& weight, const torch::Tensor& step, QuantRange range)
    : dims_(weight.dim()), range_(range) {
  TORCH_CHECK(weight.dim() >= 1 && step.dim() == 1 && step.size(0) == weight.size(0),
              "AdaRound: one step per output channel expected, got weight ", weight.sizes(), " and step ", step.sizes());
  TORCH_CHECK(step.min().item<double>() > 0, "AdaRound: steps must be positive");
  torch::NoGradGuard no_grad;
  const torch::Tensor scaled = weight.detach() / per_channel(step.detach());
  floor_ = torch::floor(scaled);
  // h(V) = frac: V = -log((ζ - γ) / (frac - γ) - 1) (BRECQ's init_alpha).
  const torch::Tensor frac = scaled - floor_;
  v_ = (-torch::log((kZeta - kGamma) / (frac - kGamma) - 1)).set_requires_grad(true);
}

torch::Tensor AdaRound::per_channel(const torch::Tensor& step) const {
  std::vector<int64_t> shape(static_cast<size_t>(dims_), 1);
  shape[0] = step.size(0);
  return step.reshape(shape);
}

torch::Tensor AdaRound::soft_weight(const torch::Tensor& step) const {
  const torch::Tensor codes = torch::clamp(floor_ + rectified_sigmoid(v_), -static_cast<double>(range_.qn),
                                           static_cast<double>(range_.qp));
  return codes * per_channel(step);
}

torch::Tensor AdaRound::regularizer(double beta) const {
  return (1 - (2 * rectified_sigmoid(v_) - 1).abs().pow(beta)).sum();
}

torch::Tensor AdaRound::hard_codes() const {
  torch::NoGradGuard no_grad;
  return torch::clamp(floor_ + (v_ >= 0).to(floor_.scalar_type()), -static_cast<double>(range_.qn),
                      static_cast<double>(range_.qp));
}

torch::Tensor AdaRound::hard_weight(const torch::Tensor& step) const { return hard_codes() * per_channel(step); }

} // namespace zsq::quant
