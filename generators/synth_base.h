// Internal to generators/: what every synthesizer shares (the teacher with
// BN taps, the losses of one batch, the random stream), and the synthesizer
// classes defined in their own files.
#pragma once

#include "generators/synthesizer.h"

#include "distributed/reducer.h"
#include "distributed/sync.h"
#include "framework/errors.h"
#include "framework/model_file.h"
#include "framework/nn/losses.h"
#include "generators/loss_terms.h"
#include "generators/networks.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace zsq::generators::detail {

// Shared machinery: the teacher with taps, the losses of one batch.
class Base : public Synthesizer {
 public:
  torch::Tensor rng_state() const override { return gen_.get_state(); }
  void set_rng_state(const torch::Tensor& state) override {
    TORCH_CHECK(state.scalar_type() == torch::kUInt8 && state.sizes() == gen_.get_state().sizes(),
                "the checkpoint's random state of the synthesizer has the wrong type or size");
    gen_.set_state(state);
  }

  Base(models::Classifier teacher, std::vector<int64_t> shape, int64_t classes, const Recipe& recipe,
       const SynthesizerOptions& o, std::shared_ptr<distributed::Communicator> comm)
      : teacher_(std::move(teacher)), shape_(std::move(shape)), classes_(classes), options_(o),
        comm_(std::move(comm)) {
    recipe_ = recipe;
    external_ = o.external_adversary;
    const int rank = comm_ ? comm_->rank() : 0;
    gen_ = at::make_generator<at::CPUGeneratorImpl>(o.seed + 1000003ull * static_cast<uint64_t>(rank));
    predictor_ = teacher_;
    if (!teacher_) return;  // the subclass builds its own teacher copy
    teacher_->eval();
    for (const auto& p : teacher_->parameters()) p.set_requires_grad(false);
    for (const auto& [name, bn] : models::batch_norms(*teacher_)) bns_.push_back(bn);
  }

 protected:
  torch::Tensor randn(std::vector<int64_t> shape) { return torch::randn(shape, gen_); }
  torch::Tensor random_labels(int64_t n) { return torch::randint(0, classes_, {n}, gen_); }

  // Loss of a batch (images in the graph); labels undefined: no CE.
  // soft: optional N × classes target distribution (Qimera), used by the cross-entropy instead of labels.
  torch::Tensor loss(const torch::Tensor& images, const torch::Tensor& labels, StepReport* report,
                     const torch::Tensor& soft = torch::Tensor()) {
    torch::Tensor input = options_.loss_clamp(images);
    if (recipe_.lor && torch::rand({1}, gen_).item<float>() < 0.5f) input = crop_and_flip(input);
    models::set_bn_taps(*teacher_, true);
    const torch::Tensor features = teacher_->features(input);
    const torch::Tensor logits = teacher_->head(features);
    const BnsLoss b = bns_loss(bns_, {recipe_.bns, recipe_.margin, recipe_.layerwise}, comm_.get());
    models::set_bn_taps(*teacher_, false);
    torch::Tensor total = recipe_.bns_weight * b.total;
    report->bns = b.total.item<double>();
    if (recipe_.ce_weight > 0 && (labels.defined() || soft.defined())) {
      const torch::Tensor ce = label_ce(logits, labels, soft);
      total = total + recipe_.ce_weight * ce;
      report->ce = ce.item<double>();
    }
    if (recipe_.prior_weight > 0) {
      const torch::Tensor prior = image_prior_loss(images);
      total = total + recipe_.prior_weight * prior;
      report->prior = prior.item<double>();
    }
    if (recipe_.soft_target > 0 && labels.defined()) {
      const torch::Tensor term = soft_inception(logits, labels, recipe_.soft_target, gen_);
      total = total + term;
      report->ce += term.item<double>();
    }
    if (recipe_.margin_low >= 0 && labels.defined() && centroid_count_.defined()) {
      const torch::Tensor term =
          marginal_distance(features, labels, centroid_sum_, centroid_count_, recipe_.margin_low, recipe_.margin_up);
      if (term.defined()) {
        total = total + term;
        report->ce += term.item<double>();
      }
    }
    if (recipe_.adversarial > 0 && (student_ || adversary_)) {
      // The student is the proxy trained here, or the caller's (online: the student being quantized; before
      // set_adversary, i.e. during zsq quantize's generator warm-up, the term is off).
      const torch::Tensor term = adversarial_term(logits, student_ ? student_->forward(input) : adversary_(input));
      // Our addition: the weight ramps up linearly over the warm-up (`iterations`
      // steps). The proxy student starts untrained, and at full weight from step 1
      // its first disagreements can throw the generator far off the teacher's
      // statistics (demo teacher, seed 1: BN loss 0.1 -> 10 within 10 steps, a
      // pool the teacher agreed with on 37 %).
      // The caller's student is calibrated and agrees with the teacher from its first step: no ramp.
      const double ramp = external_ ? 1.0
                                    : std::min(1.0, static_cast<double>(++adversarial_steps_) /
                                                        static_cast<double>(std::max<int64_t>(1, recipe_.iterations)));
      report->adversarial_weight = recipe_.adversarial * ramp;
      total = total + report->adversarial_weight * term;
      report->adversarial = term.item<double>();
    }
    last_logits_ = logits.detach();
    const torch::Tensor target = labels.defined() ? labels : logits.argmax(1);
    report->confidence = torch::softmax(logits.detach(), 1).gather(1, target.unsqueeze(1)).mean().item<double>();
    report->total = total.item<double>();
    return total;
  }

  // Adds a finished batch's teacher features to the class centroids.
  void update_centroids(const torch::Tensor& images, const torch::Tensor& labels) {
    torch::NoGradGuard no_grad;
    const torch::Tensor f = predictor_->features(images);
    if (!centroid_count_.defined()) {
      centroid_sum_ = torch::zeros({classes_, f.size(1)});
      centroid_count_ = torch::zeros({classes_});
    }
    centroid_sum_.index_add_(0, labels, f);
    centroid_count_.index_add_(0, labels, torch::ones({labels.size(0)}));
  }

  // IntraQ's local object reinforcement: per image a random crop of 50-100 % of
  // the area (aspect 3/4-4/3) resized back, and a horizontal flip half the time.
  torch::Tensor crop_and_flip(const torch::Tensor& images) {
    const int64_t h = images.size(2), w = images.size(3);
    std::vector<torch::Tensor> out;
    for (int64_t i = 0; i < images.size(0); ++i) {
      const double area = 0.5 + 0.5 * torch::rand({1}, gen_).item<double>();
      const double ratio = std::exp(std::log(3.0 / 4) + (std::log(4.0 / 3) - std::log(3.0 / 4)) * torch::rand({1}, gen_).item<double>());
      const int64_t ch = std::clamp<int64_t>(std::llround(std::sqrt(area / ratio) * h), 1, h);
      const int64_t cw = std::clamp<int64_t>(std::llround(std::sqrt(area * ratio) * w), 1, w);
      const int64_t y0 = torch::randint(0, h - ch + 1, {1}, gen_).item<int64_t>();
      const int64_t x0 = torch::randint(0, w - cw + 1, {1}, gen_).item<int64_t>();
      torch::Tensor crop = images[i].unsqueeze(0).narrow(2, y0, ch).narrow(3, x0, cw);
      crop = torch::nn::functional::interpolate(crop, torch::nn::functional::InterpolateFuncOptions()
                                                          .size(std::vector<int64_t>{h, w})
                                                          .mode(torch::kBilinear)
                                                          .align_corners(false));
      if (torch::rand({1}, gen_).item<float>() < 0.5f) crop = torch::flip(crop, {3});
      out.push_back(crop);
    }
    return torch::cat(out);
  }

  // Labels for label-free recipes: the plain teacher's prediction.
  torch::Tensor predict(const torch::Tensor& images) {
    torch::NoGradGuard no_grad;
    return predictor_->forward(images).argmax(1);
  }

  torch::Tensor centroid_sum_, centroid_count_;  ///< per class, for the marginal distance
  torch::Tensor last_logits_;     ///< the teacher's logits of the last loss() call (detached)
  models::Classifier student_;    ///< the adversarial recipe's proxy student (else null)
  int64_t adversarial_steps_ = 0;  ///< loss() calls with the adversarial term so far (its ramp)
  models::Classifier teacher_;    ///< the model the losses use
  models::Classifier predictor_;  ///< the plain teacher
  std::vector<int64_t> shape_;
  int64_t classes_;
  SynthesizerOptions options_;
  std::shared_ptr<distributed::Communicator> comm_;
  std::vector<nn::BatchNorm2d> bns_;
  at::Generator gen_;
};

// ReduceLROnPlateau(mode min, factor 0.1, min_lr 1e-4) stepped on the total
// loss after every optimization step, as ZeroQ, IntraQ and Genie use it.
class Plateau {
 public:
  Plateau(torch::optim::Optimizer& optimizer, double lr, int64_t patience)
      : optimizer_(optimizer), lr_(lr), patience_(patience) {}
  void step(double loss) {
    if (loss < best_) {
      best_ = loss;
      since_best_ = 0;
    } else if (++since_best_ > patience_ && lr_ > 1e-4) {
      lr_ = std::max(lr_ * 0.1, 1e-4);
      for (auto& group : optimizer_.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr_);
      since_best_ = 0;
    }
  }

 private:
  torch::optim::Optimizer& optimizer_;
  double lr_, best_ = std::numeric_limits<double>::infinity();
  int64_t patience_, since_best_ = 0;
};

inline StepReport step_report(int64_t step, int64_t steps) {
  StepReport r;
  r.step = step + 1;
  r.steps = steps;
  return r;
}

/// GDFQ / Qimera / the adversarial recipe: a class-conditional generator trained against the teacher
/// (generators/generator_synthesizer.cpp).
std::unique_ptr<Synthesizer> make_generator_synthesizer(models::Classifier teacher, std::vector<int64_t> shape,
                                                        int64_t classes, const Recipe& recipe,
                                                        const SynthesizerOptions& o,
                                                        std::shared_ptr<distributed::Communicator> comm);

} // namespace zsq::generators::detail
