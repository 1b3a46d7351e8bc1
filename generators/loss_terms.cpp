#include "generators/loss_terms.h"

#include <torch/torch.h>

namespace zsq::generators {

torch::Tensor label_ce(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& soft) {
  return soft.defined() ? -(soft * torch::log_softmax(logits, 1)).sum(1).mean() : torch::cross_entropy_loss(logits, labels);
}

torch::Tensor soft_inception(const torch::Tensor& logits, const torch::Tensor& labels, double floor,
                             at::Generator& gen) {
  const int64_t n = labels.size(0);
  const torch::Tensor soft = torch::rand({n}, gen) * (1 - floor) + floor;
  const torch::Tensor target = torch::where(torch::rand({n}, gen) < 0.5, soft, torch::ones({n}));
  const torch::Tensor p = torch::softmax(logits, 1).gather(1, labels.unsqueeze(1)).squeeze(1);
  return (p - target).pow(2).mean();
}

torch::Tensor marginal_distance(const torch::Tensor& features, const torch::Tensor& labels,
                                const torch::Tensor& centroid_sum, const torch::Tensor& centroid_count, double low,
                                double up) {
  const torch::Tensor known = centroid_count.index_select(0, labels) > 0;
  if (!known.any().item<bool>()) return {};
  const torch::Tensor centre = (centroid_sum / centroid_count.clamp_min(1).unsqueeze(1)).index_select(0, labels);
  const torch::Tensor d = 1 - torch::cosine_similarity(features, centre, 1);
  const torch::Tensor mask = known.to(torch::kFloat32);
  const torch::Tensor count = mask.sum();
  return (torch::relu(low - d) * mask).sum() / count + (torch::relu(d - up) * mask).sum() / count;
}

torch::Tensor adversarial_term(const torch::Tensor& teacher_logits, const torch::Tensor& student_logits) {
  const torch::Tensor t_log = torch::log_softmax(teacher_logits, 1);
  const torch::Tensor kl = (t_log.exp() * (t_log - torch::log_softmax(student_logits, 1))).sum(1);
  const torch::Tensor mask = student_logits.argmax(1).eq(teacher_logits.argmax(1)).to(kl.scalar_type()).detach();
  return -(kl * mask).mean();
}

} // namespace zsq::generators
