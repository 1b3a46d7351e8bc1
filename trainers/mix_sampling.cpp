#include "trainers/mix_sampling.h"

#include "models/quant_factory.h"
#include "trainers/weighting.h"  // splitmix

namespace zsq::trainers {

std::vector<int64_t> step_mix(size_t layers, const std::vector<int64_t>& bits, uint64_t seed, int64_t step,
                              int64_t sample) {
  TORCH_CHECK(!bits.empty(), "step_mix: no bit-widths");
  // One stream per (seed, step, sample), distinct from the sandwich draw's (step_bits).
  uint64_t state = splitmix(splitmix(seed ^ 0x6d69786d69786d69ULL) + static_cast<uint64_t>(step));
  state = splitmix(state + static_cast<uint64_t>(sample));
  std::vector<int64_t> out(layers);
  for (auto& b : out) {
    state = splitmix(state);
    b = bits[state % bits.size()];
  }
  return out;
}

MixSampler::MixSampler(torch::nn::Module& student, int64_t samples, uint64_t seed)
    : bits_(models::model_bits(student)), samples_(samples), seed_(seed) {
  if (samples_ == 0) return;
  // Only the layers and their BatchNorms: a mix's cost (MACs, bytes) plays no part in training.
  for (const models::LayerPair& p : models::pair_layers(student)) {
    models::MixLayer l;
    l.name = p.name;
    l.layer = p.layer;
    l.bn = p.bn;
    layers_.push_back(l);
  }
}

models::Mix MixSampler::apply(int64_t step, int64_t sample) const {
  TORCH_CHECK(sample >= 0 && sample < samples_, "MixSampler: sample ", sample, " of ", samples_);
  models::Mix mix;
  for (const int64_t b : step_mix(layers_.size(), bits_, seed_, step, sample)) mix.push_back({b, b});
  models::set_mix(layers_, mix);
  return mix;
}

} // namespace zsq::trainers
