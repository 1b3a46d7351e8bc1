#include "generators/report.h"

#include "generators/bns_loss.h"

#include <torch/torch.h>

namespace zsq::generators {

PoolReport report_pool(models::ClassifierImpl& teacher, const torch::Tensor& images, const torch::Tensor& labels,
                       int64_t num_classes, int64_t max_pairs_images, int64_t bns_batch) {
  TORCH_CHECK(images.dim() == 4 && images.size(0) == labels.size(0) && images.size(0) > 0,
              "report_pool: need N×C×H×W images and N labels");
  torch::NoGradGuard no_grad;
  teacher.eval();
  PoolReport r;
  r.count = images.size(0);
  const torch::Tensor counts = torch::bincount(labels, {}, num_classes);
  r.label_histogram.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  std::vector<torch::Tensor> feats, probs;
  for (int64_t start = 0; start < r.count; start += 256) {
    const int64_t n = std::min<int64_t>(256, r.count - start);
    const torch::Tensor f = teacher.features(images.narrow(0, start, n));
    feats.push_back(f);
    probs.push_back(torch::softmax(teacher.head(f), 1));
  }
  const torch::Tensor f = torch::cat(feats), p = torch::cat(probs);
  r.agreement = p.argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
  r.confidence = p.gather(1, labels.unsqueeze(1)).to(torch::kFloat64).mean().item<double>();
  const int64_t m = std::min(max_pairs_images, r.count);
  if (m > 1) {
    const torch::Tensor unit = torch::nn::functional::normalize(f.narrow(0, 0, m).to(torch::kFloat64),
                                                                torch::nn::functional::NormalizeFuncOptions().dim(1));
    const torch::Tensor gram = unit.matmul(unit.t());
    r.feature_correlation = ((gram.sum() - gram.diagonal().sum()) / static_cast<double>(m * (m - 1))).item<double>();
  }
  models::set_bn_taps(teacher, true);
  teacher.forward(images.narrow(0, 0, std::min(bns_batch, r.count)));
  std::vector<nn::BatchNorm2d> bns;
  for (const auto& [name, bn] : models::batch_norms(teacher)) bns.push_back(bn);
  if (!bns.empty()) {
    const BnsLoss loss = bns_loss(bns, {BnsVariant::kGdfq, 0});
    r.bns_per_layer = loss.per_layer;
    r.bns = loss.total.item<double>();
  }
  models::set_bn_taps(teacher, false);
  return r;
}

} // namespace zsq::generators
