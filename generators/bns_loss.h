// BatchNorm-statistics (BNS) losses: how far the statistics of what enters
// each teacher BatchNorm are from its running statistics. Three variants, as
// the reference codes compute them (research/zsq_methods.md section 1):
//
//   zeroq  per-sample (n, c) mean and std (unbiased var + 1e-6) of the BN input
//          against running mean and sqrt(running_var + 1e-6), Σ_{n,c}(…)² / N,
//          summed over layers  (amirgholami/ZeroQ distill_data.py own_loss)
//   genie  batch mean and unbiased batch std (no eps) against running mean and
//          sqrt(running_var + 1e-6), squared error averaged over channels,
//          summed over layers  (SamsungLabs/Genie distill.py)
//   gdfq   batch mean and biased batch variance against running mean and
//          running_var, MSE over channels, averaged over layers
//          (xushoukai/GDFQ trainer.py; also Qimera, IntraQ, AdaDFQ)
//
// With a communicator the batch statistics (genie, gdfq) are those of all
// ranks' batches together (distributed::global_moments), so N ranks × B
// samples give the loss of one rank with N·B samples.
//
// DSG's slack alignment: with margin m > 0 a statistic's error counts only
// beyond m·σ_c (means and stds) or m·σ_c² (variances): max(|d| - slack, 0)².
// (DSG does not publish its exact rule for the slack; this is ours.)
#pragma once

#include "distributed/communicator.h"
#include "framework/nn/batchnorm.h"

#include <string>
#include <vector>

namespace zsq::generators {

enum class BnsVariant { kZeroQ, kGenie, kGdfq };
BnsVariant parse_bns_variant(const std::string& name);  ///< "zeroq", "genie", "gdfq"
std::string bns_variant_name(BnsVariant variant);

struct BnsOptions {
  BnsVariant variant = BnsVariant::kGdfq;
  /// DSG slack in units of the running std (0: off).
  double margin = 0;
  /// DSG's layerwise sample enhancement (zeroq variant only, whose terms are
  /// per sample): sample n counts layer (n mod L) twice, L = number of layers.
  bool layerwise = false;
};

struct BnsLoss {
  torch::Tensor total;             ///< 0-dim, differentiable
  std::vector<double> per_layer;   ///< each layer's term (before averaging over layers for gdfq)
};

/// The loss over `layers` (teacher BatchNorms whose tap was on during the
/// forward of the batch). comm may be null (one process).
BnsLoss bns_loss(const std::vector<nn::BatchNorm2d>& layers, const BnsOptions& options,
                 distributed::Communicator* comm = nullptr);

/// Image prior of ZeroQ and Genie: each image's per-channel mean should be 0
/// and std (unbiased) 1 in normalized space: Σ_{n,c}(mean² + (std - 1)²) / N.
torch::Tensor image_prior_loss(const torch::Tensor& images);

} // namespace zsq::generators
