// Trained for mixing (Bit-Mixer's idea, Bulat & Tzimiropoulos 2021): besides the uniform bit-widths,
// every once-for-all step also distils a few random per-layer mixes, each quantized layer (and the
// BatchNorm after it) at a model bit-width drawn uniformly and independently, so the shared weights and
// each bit-width's activation steps and BatchNorm learn to work next to layers at other bit-widths.
// A mix is a task like a bit-width: its KD loss to the teacher, its gradient in the --weighting
// combination. The draw depends on (seed, step, sample) only: every rank and a resumed run draw the
// same mixes.
#pragma once

#include "models/mixed.h"

#include <cstdint>
#include <vector>

namespace zsq::trainers {

/// The model bit-width of each of `layers` quantized layers in mix `sample` of step `step`.
std::vector<int64_t> step_mix(size_t layers, const std::vector<int64_t>& bits, uint64_t seed, int64_t step,
                              int64_t sample);

class MixSampler {
 public:
  /// `samples` mixes per step (0: none) over the student's quantized layers and model bit-widths.
  MixSampler(torch::nn::Module& student, int64_t samples, uint64_t seed);
  int64_t samples() const { return samples_; }
  /// Switches the student to mix `sample` of step `step` (set_bits undoes it).
  models::Mix apply(int64_t step, int64_t sample) const;

 private:
  std::vector<models::MixLayer> layers_;
  std::vector<int64_t> bits_;
  int64_t samples_ = 0;
  uint64_t seed_ = 0;
};

} // namespace zsq::trainers
