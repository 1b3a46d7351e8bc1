#include "framework/nn/losses.h"

#include <torch/torch.h>

namespace zsq::nn {

torch::Tensor kd_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, double temperature) {
  TORCH_CHECK(student_logits.sizes() == teacher_logits.sizes(), "kd_loss: logits of shape ", student_logits.sizes(),
              " and ", teacher_logits.sizes());
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  const torch::Tensor target = torch::softmax(teacher_logits.detach() / temperature, 1);
  const torch::Tensor log_p = torch::log_softmax(student_logits / temperature, 1);
  return (target * (torch::log(target.clamp_min(1e-12)) - log_p)).sum(1).mean() * (temperature * temperature);
}

} // namespace zsq::nn
