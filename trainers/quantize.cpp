#include "trainers/quantize.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>

namespace zsq::trainers {

void quantize(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const Dataset& pool,
              const Normalization& norm, const QuantizeOptions& o,
              const std::function<void(const QuantizeStep&)>& on_step) {
  const std::vector<int64_t> bits = models::model_bits(student);
  TORCH_CHECK(!bits.empty(), "quantize: the student has no quantized layers");
  TORCH_CHECK(o.steps > 0, "--steps must be > 0, got ", o.steps);
  TORCH_CHECK(o.batch_size > 0 && o.batch_size <= pool.size(), "--batch-size must be in [1, ", pool.size(),
              " (the pool)], got ", o.batch_size);
  TORCH_CHECK(o.lr > 0, "--lr must be > 0, got ", o.lr);
  TORCH_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0, got ", o.weight_decay);
  TORCH_CHECK(o.temperature > 0, "--temperature must be > 0, got ", o.temperature);
  TORCH_CHECK(o.weights.empty() || o.weights.size() == bits.size(), "--bit-weights needs one value per bit-width (",
              bits.size(), "), got ", o.weights.size());
  for (double w : o.weights) TORCH_CHECK(w >= 0, "--bit-weights must be >= 0, got ", w);

  torch::manual_seed(o.seed);
  teacher.eval();
  for (const auto& p : teacher.parameters()) p.set_requires_grad(false);
  student.eval();  // GDFQ: BatchNorm keeps the teacher's statistics, its affine parameters train

  LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.shuffle = true;
  lo.seed = o.seed;
  lo.drop_last = true;
  lo.crop_padding = o.crop_padding;
  lo.horizontal_flip = o.horizontal_flip;
  BatchLoader loader(pool, norm, lo);

  // Weight decay on the latent weights only (make_sgd spares every 1-D tensor: steps, BatchNorm, biases).
  const std::unique_ptr<torch::optim::SGD> optimizer = make_sgd(student, o.lr, 0.9, /*nesterov=*/true, o.weight_decay);

  const auto start = std::chrono::steady_clock::now();
  int64_t epoch = 0, batch_index = 0;
  loader.set_epoch(0);
  for (int64_t step = 0; step < o.steps; ++step) {
    if (batch_index == loader.num_batches()) {
      loader.set_epoch(++epoch);
      batch_index = 0;
    }
    const Batch batch = loader.batch(batch_index++);
    const double lr = cosine_lr(o.lr, step, o.steps, 0);
    set_lr(*optimizer, lr);
    torch::Tensor teacher_logits;
    {
      torch::NoGradGuard no_grad;
      teacher_logits = teacher.forward(batch.images);
    }
    optimizer->zero_grad();
    QuantizeStep report;
    for (size_t i = 0; i < bits.size(); ++i) {
      models::set_bits(student, bits[i]);
      const torch::Tensor loss = kd_loss(student.forward(batch.images), teacher_logits, o.temperature);
      const double value = loss.item<double>();
      TORCH_CHECK(std::isfinite(value), "training diverged: the ", bits[i], "-bit loss is ", value, " at step ",
                  step + 1, "; lower --lr");
      // Backward per bit-width: the graphs do not stay alive together; gradients accumulate.
      (loss * (o.weights.empty() ? 1.0 : o.weights[i])).backward();
      report.losses.push_back(value);
    }
    optimizer->step();
    report.step = step + 1;
    report.steps = o.steps;
    report.lr = lr;
    report.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.images_per_second = static_cast<double>(report.step * o.batch_size) / report.elapsed_seconds;
    report.eta_seconds = report.elapsed_seconds / report.step * (o.steps - report.step);
    if (on_step) on_step(report);
  }
  models::set_bits(student, bits.front());
}

} // namespace zsq::trainers
