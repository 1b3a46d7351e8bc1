#include "trainers/engine.h"

#include "models/quant_factory.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace zsq::trainers {

LoaderOptions training_loader(int64_t local_batch, uint64_t seed, int rank, int world, int64_t crop_padding,
                              bool horizontal_flip) {
  LoaderOptions lo;
  lo.batch_size = local_batch;
  lo.shuffle = true;
  lo.seed = seed;
  lo.rank = rank;
  lo.world_size = world;
  lo.drop_last = true;
  lo.crop_padding = crop_padding;
  lo.horizontal_flip = horizontal_flip;
  return lo;
}

void check_not_diverged(double loss, const std::string& what, const std::string& where, const std::string& note) {
  TORCH_CHECK(std::isfinite(loss), "training diverged: ", what, " is ", loss, " at ", where, "; ", note, "lower --lr");
}

NamedTensors trained_parameters(torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters()) {
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  }
  return out;
}

FrozenParameters::FrozenParameters(torch::nn::Module& module) {
  for (torch::Tensor& p : module.parameters()) {
    saved_.emplace_back(p, p.requires_grad());
    p.set_requires_grad(false);
  }
}

FrozenParameters::~FrozenParameters() {
  for (auto& [p, on] : saved_) p.set_requires_grad(on);
}

torch::Tensor frozen_logits(models::ClassifierImpl& student, int64_t bits, const torch::Tensor& images) {
  const FrozenParameters frozen(student);
  models::set_bits(student, bits);
  return student.forward(images);
}

} // namespace zsq::trainers
