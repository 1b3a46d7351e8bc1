// Losses shared by the trainers and the generators (which cannot depend on the trainers).
#pragma once

#include <torch/types.h>

namespace zsq::nn {

/// Distillation loss T² · KL(softmax(t/T) || softmax(s/T)), summed over
/// classes and averaged over the batch ('batchmean', as IntraQ/FDDA's
/// KLDivLoss); the teacher logits are detached. Logits N×K.
torch::Tensor kd_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, double temperature);

} // namespace zsq::nn
