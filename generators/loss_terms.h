// The loss terms a synthesizer adds to the BN-statistics loss (bns_loss.h),
// each on its own so that it can be tested and recombined. All take the
// teacher's outputs on the batch (in the graph) and return a scalar.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

namespace zsq::generators {

/// Cross-entropy of the teacher's logits to the target labels, or, with
/// `soft` (N × classes, Qimera's superposed targets), to that distribution:
/// −Σ_c soft_c · log softmax(logits)_c, averaged over the batch.
torch::Tensor label_ce(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& soft = {});

/// IntraQ's soft inception loss: mean of (p_y − p*)², p_y the teacher's
/// probability of the label, p* ~ U(floor, 1) for a random half of the
/// samples and 1 for the rest (two draws from `gen`: the targets, the half).
torch::Tensor soft_inception(const torch::Tensor& logits, const torch::Tensor& labels, double floor,
                             at::Generator& gen);

/// IntraQ's marginal distance: d = 1 − cos(feature, centroid of its class)
/// kept in [low, up], mean of relu(low − d) + relu(d − up) over the samples
/// whose class has a centroid (`count` > 0); undefined when none has.
torch::Tensor marginal_distance(const torch::Tensor& features, const torch::Tensor& labels,
                                const torch::Tensor& centroid_sum, const torch::Tensor& centroid_count, double low,
                                double up);

/// Fast-DFKD's adversarial term (fast_meta.py): −KL(p_t || p_s) at T = 1,
/// summed over classes, on the samples where the student's top-1 agrees with
/// the teacher's, averaged over the whole batch (≤ 0).
torch::Tensor adversarial_term(const torch::Tensor& teacher_logits, const torch::Tensor& student_logits);

} // namespace zsq::generators
