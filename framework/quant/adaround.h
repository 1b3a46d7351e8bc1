// AdaRound (Nagel et al. 2020), as BRECQ's quant/adaptive_rounding.py and Genie's quantizer.py code it:
// each weight rounds down or up from its floor on the grid, chosen by a learned soft bit
//   h(V) = clamp(sigmoid(V)·(ζ - γ) + γ, 0, 1),  ζ = 1.1, γ = -0.1 (the rectified sigmoid),
//   W̃ = clamp(⌊W/s0⌋ + h(V), -Qn, Qp) · s,
// with the floor ⌊W/s0⌋ frozen at the initial step s0 while the step s may train (Genie-M). V starts where
// h(V) = frac(W/s0), so the soft weight starts at W itself (inside the range). The regulariser
// Σ 1 - |2h - 1|^β pushes every h to 0 or 1 as β anneals from 20 to 2; after reconstruction the hard
// codes are ⌊W/s0⌋ + [V >= 0].
#pragma once

#include "framework/quant/fake_quant.h"

#include <torch/types.h>

#include <cstdint>

namespace zsq::quant {

/// The rectified sigmoid clamp(sigmoid(v)·1.2 - 0.1, 0, 1).
torch::Tensor rectified_sigmoid(const torch::Tensor& v);

/// β of the regulariser at step t of `steps` (BRECQ's LinearTempDecay: none during the first `warmup` share
/// of the steps, then linear from `start` to `end`); regularizing() is false during the warm-up.
struct RoundingSchedule {
  double start = 20, end = 2, warmup = 0.2;
  bool regularizing(int64_t t, int64_t steps) const;
  double beta(int64_t t, int64_t steps) const;
};

/// One layer's learned rounding. `weight` any shape with the output channel first, `step` [out] (positive),
/// codes in [-range.qn, range.qp].
class AdaRound {
 public:
  AdaRound(const torch::Tensor& weight, const torch::Tensor& step, QuantRange range);
  /// The rounding variables V (a leaf that requires grad).
  const torch::Tensor& v() const { return v_; }
  /// The soft-rounded weight at step `step` ([out], differentiable in V and in the step).
  torch::Tensor soft_weight(const torch::Tensor& step) const;
  /// Σ 1 - |2h(V) - 1|^β over every weight.
  torch::Tensor regularizer(double beta) const;
  /// The codes after hard rounding, clamp(⌊W/s0⌋ + [V >= 0]) (float, integer-valued).
  torch::Tensor hard_codes() const;
  /// The hard-rounded weight at step `step`: hard_codes() · step.
  torch::Tensor hard_weight(const torch::Tensor& step) const;

 private:
  torch::Tensor per_channel(const torch::Tensor& step) const;
  int64_t dims_;
  torch::Tensor floor_, v_;
  QuantRange range_;
};

} // namespace zsq::quant
