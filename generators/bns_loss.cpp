#include "generators/bns_loss.h"

#include "distributed/sync.h"

#include <torch/torch.h>

namespace zsq::generators {
namespace {

// Squared error with an optional slack: max(|d| - slack, 0)².
torch::Tensor slack_square(const torch::Tensor& d, const torch::Tensor& slack) {
  if (!slack.defined()) return d.pow(2);
  return torch::relu(d.abs() - slack).pow(2);
}

} // namespace

BnsVariant parse_bns_variant(const std::string& name) {
  if (name == "zeroq") return BnsVariant::kZeroQ;
  if (name == "genie") return BnsVariant::kGenie;
  if (name == "gdfq") return BnsVariant::kGdfq;
  TORCH_CHECK(false, "unknown BN-statistics loss '", name, "': use zeroq, genie or gdfq");
}

std::string bns_variant_name(BnsVariant v) {
  return v == BnsVariant::kZeroQ ? "zeroq" : v == BnsVariant::kGenie ? "genie" : "gdfq";
}

BnsLoss bns_loss(const std::vector<nn::BatchNorm2d>& layers, const BnsOptions& o, distributed::Communicator* comm) {
  TORCH_CHECK(!layers.empty(), "BN-statistics loss: the teacher has no BatchNorm layers");
  TORCH_CHECK(o.margin >= 0, "BN-statistics margin must be >= 0, got ", o.margin);
  TORCH_CHECK(!o.layerwise || o.variant == BnsVariant::kZeroQ,
              "layerwise sample enhancement needs per-sample statistics: use the zeroq BN-statistics loss");
  BnsLoss out;
  torch::Tensor total;
  const int64_t layer_count = static_cast<int64_t>(layers.size());
  for (int64_t l = 0; l < layer_count; ++l) {
    const nn::BatchNorm2d& bn = layers[l];
    const torch::Tensor& x = bn->tap_input();
    TORCH_CHECK(x.defined(), "BN-statistics loss: a BatchNorm saw no input with its tap on");
    const torch::Tensor mu = bn->running_mean.detach();
    const torch::Tensor var = bn->running_var.detach();
    const torch::Tensor sigma = torch::sqrt(var + 1e-6);
    const bool slack = o.margin > 0;
    torch::Tensor term;
    if (o.variant == BnsVariant::kZeroQ) {
      // Per-sample statistics over H, W (unbiased variance, as torch.std's default).
      const torch::Tensor flat = x.flatten(2);  // N×C×HW
      const torch::Tensor m = flat.mean(2);
      const torch::Tensor s = torch::sqrt(flat.var(2, /*unbiased=*/true) + 1e-6);
      const int64_t n = x.size(0);
      // Per-sample terms, N; DSG's enhancement weighs sample i's term of layer (i mod L) twice.
      torch::Tensor per_sample = slack_square(m - mu, slack ? o.margin * sigma : torch::Tensor()).sum(1) +
                                 slack_square(s - sigma, slack ? o.margin * sigma : torch::Tensor()).sum(1);
      if (o.layerwise) {
        const torch::Tensor boost = (torch::arange(n, torch::kInt64).remainder(layer_count) == l).to(x.scalar_type());
        per_sample = per_sample * (1 + boost);
      }
      term = per_sample.sum() / n;
    } else {
      torch::Tensor m, v;
      int64_t count = 0;
      if (comm && comm->size() > 1) {
        const distributed::Moments g = distributed::global_moments(*comm, x);
        m = g.mean;
        v = g.var;
        count = g.count;
      } else {
        m = x.mean({0, 2, 3});
        v = x.var({0, 2, 3}, /*unbiased=*/false);
        count = x.numel() / x.size(1);
      }
      if (o.variant == BnsVariant::kGenie) {
        TORCH_CHECK(count > 1, "genie's BN-statistics loss needs more than one value per channel");
        const torch::Tensor s = torch::sqrt(v * (static_cast<double>(count) / (count - 1)));  // unbiased std
        term = slack_square(m - mu, slack ? o.margin * sigma : torch::Tensor()).mean() +
               slack_square(s - sigma, slack ? o.margin * sigma : torch::Tensor()).mean();
      } else {
        term = slack_square(m - mu, slack ? o.margin * sigma : torch::Tensor()).mean() +
               slack_square(v - var, slack ? o.margin * var : torch::Tensor()).mean();
      }
    }
    out.per_layer.push_back(term.item<double>());
    total = total.defined() ? total + term : term;
  }
  if (o.variant == BnsVariant::kGdfq) total = total / static_cast<double>(layers.size());
  out.total = total;
  return out;
}

torch::Tensor image_prior_loss(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4, "image prior expects N×C×H×W, got ", images.sizes());
  const torch::Tensor flat = images.flatten(2);
  const int64_t n = images.size(0);
  return flat.mean(2).pow(2).sum() / n + (flat.std(2, /*unbiased=*/true) - 1).pow(2).sum() / n;
}

} // namespace zsq::generators
