// Once-for-all quantization-aware training on a fixed pool of images (e.g. a
// synthetic pool from `zsq generate`): every step, the student runs at every
// bit-width on the same batch and each bit-width's distillation loss to the
// FP32 teacher is summed into one backward pass and one optimizer step.
//
//   KD_b = T² · KL(softmax(t/T) || softmax(s_b/T)), summed over classes and
//   averaged over the batch ('batchmean', as IntraQ/FDDA's KLDivLoss), and
//   L = Σ_b λ_b · KD_b with fixed weights λ_b (default 1).
//
// As GDFQ's trainer, the student stays in eval mode: every BatchNorm keeps the
// teacher's running statistics while its affine parameters train.
//
// Not yet built (next session): online generation alternating with the
// student, checkpoints with exact resume, data parallelism, other weighting
// rules (sandwich, recursive distillation, min-norm).
#pragma once

#include "framework/data.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/teacher.h"  // kd_loss, make_sgd

#include <functional>
#include <string>
#include <vector>

namespace zsq::trainers {

struct QuantizeOptions {
  int64_t steps = 1000;
  int64_t batch_size = 64;
  double lr = 1e-4;            ///< peak learning rate (SGD with Nesterov momentum 0.9, cosine to 0)
  double weight_decay = 0;     ///< on latent weights only
  double temperature = 4;
  std::vector<double> weights; ///< λ_b per bit-width (empty: all 1)
  int64_t crop_padding = 2;    ///< augmentation of the pool's images
  bool horizontal_flip = true;
  uint64_t seed = 0;
};

struct QuantizeStep {
  int64_t step = 0, steps = 0;
  std::vector<double> losses;  ///< KD per bit-width, in the model's bit order
  double lr = 0, images_per_second = 0, elapsed_seconds = 0, eta_seconds = 0;
};

/// Trains `student` (initialised, e.g. by init_student) on `pool` normalized
/// with `norm`. Throws on a non-finite loss, naming the step and bit-width.
void quantize(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const Dataset& pool,
              const Normalization& norm, const QuantizeOptions& options,
              const std::function<void(const QuantizeStep&)>& on_step);

} // namespace zsq::trainers
