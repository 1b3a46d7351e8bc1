#include "generators/synthesizer.h"

#include "distributed/reducer.h"
#include "distributed/sync.h"
#include "framework/errors.h"
#include "framework/model_file.h"
#include "framework/nn/losses.h"
#include "generators/networks.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <sstream>

namespace zsq::generators {
namespace {


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
    torch::Tensor input = images;
    if (recipe_.lor && torch::rand({1}, gen_).item<float>() < 0.5f) input = crop_and_flip(images);
    models::set_bn_taps(*teacher_, true);
    const torch::Tensor features = teacher_->features(input);
    const torch::Tensor logits = teacher_->head(features);
    const BnsLoss b = bns_loss(bns_, {recipe_.bns, recipe_.margin, recipe_.layerwise}, comm_.get());
    models::set_bn_taps(*teacher_, false);
    torch::Tensor total = recipe_.bns_weight * b.total;
    report->bns = b.total.item<double>();
    if (recipe_.ce_weight > 0 && (labels.defined() || soft.defined())) {
      const torch::Tensor ce = soft.defined() ? -(soft * torch::log_softmax(logits, 1)).sum(1).mean()
                                              : torch::cross_entropy_loss(logits, labels);
      total = total + recipe_.ce_weight * ce;
      report->ce = ce.item<double>();
    }
    if (recipe_.prior_weight > 0) {
      const torch::Tensor prior = image_prior_loss(images);
      total = total + recipe_.prior_weight * prior;
      report->prior = prior.item<double>();
    }
    if (recipe_.soft_target > 0 && labels.defined()) {
      // IntraQ's soft inception loss: (p_y - p*)², p* ~ U(soft_target, 1) for half the samples, else 1.
      const int64_t n = labels.size(0);
      const torch::Tensor soft = torch::rand({n}, gen_) * (1 - recipe_.soft_target) + recipe_.soft_target;
      const torch::Tensor target = torch::where(torch::rand({n}, gen_) < 0.5, soft, torch::ones({n}));
      const torch::Tensor p = torch::softmax(logits, 1).gather(1, labels.unsqueeze(1)).squeeze(1);
      const torch::Tensor term = (p - target).pow(2).mean();
      total = total + term;
      report->ce += term.item<double>();
    }
    if (recipe_.margin_low >= 0 && labels.defined() && centroid_count_.defined()) {
      // IntraQ's marginal distance: 1 - cos(feature, centroid of its class) kept in [low, up].
      const torch::Tensor known = centroid_count_.index_select(0, labels) > 0;
      if (known.any().item<bool>()) {
        const torch::Tensor centre = (centroid_sum_ / centroid_count_.clamp_min(1).unsqueeze(1)).index_select(0, labels);
        const torch::Tensor d = 1 - torch::cosine_similarity(features, centre, 1);
        const torch::Tensor mask = known.to(torch::kFloat32);
        const torch::Tensor count = mask.sum();
        const torch::Tensor term = (torch::relu(recipe_.margin_low - d) * mask).sum() / count +
                                   (torch::relu(d - recipe_.margin_up) * mask).sum() / count;
        total = total + term;
        report->ce += term.item<double>();
      }
    }
    if (recipe_.adversarial > 0 && (student_ || adversary_)) {
      // Fast-DFKD's adversarial term (fast_meta.py): −KL(p_t || p_s) at T = 1,
      // summed over classes, on the samples where the student's top-1 agrees
      // with the teacher's, averaged over the whole batch. The student is the
      // proxy trained here, or the caller's (online: the student being quantized;
      // before set_adversary, i.e. during zsq quantize's generator warm-up, the
      // term is off).
      const torch::Tensor s_logits = student_ ? student_->forward(input) : adversary_(input);
      const torch::Tensor t_log = torch::log_softmax(logits, 1);
      const torch::Tensor kl = (t_log.exp() * (t_log - torch::log_softmax(s_logits, 1))).sum(1);
      const torch::Tensor mask = s_logits.argmax(1).eq(logits.argmax(1)).to(kl.scalar_type()).detach();
      const torch::Tensor term = -(kl * mask).mean();
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

StepReport step_report(int64_t step, int64_t steps) {
  StepReport r;
  r.step = step + 1;
  r.steps = steps;
  return r;
}

class NoiseSynthesizer : public Base {
 public:
  using Base::Base;
  std::pair<torch::Tensor, torch::Tensor> next_batch(const std::function<void(const StepReport&)>&) override {
    const torch::Tensor x = randn({options_.batch_size, shape_[0], shape_[1], shape_[2]});
    return {x, predict(x)};
  }
};

class PixelSynthesizer : public Base {
 public:
  using Base::Base;
  std::pair<torch::Tensor, torch::Tensor> next_batch(const std::function<void(const StepReport&)>& progress) override {
    torch::Tensor x = randn({options_.batch_size, shape_[0], shape_[1], shape_[2]}).requires_grad_(true);
    // Recipes with a label loss optimize towards uniform target labels; the others label by prediction.
    const bool labelled = recipe_.ce_weight > 0 || recipe_.soft_target > 0 || recipe_.margin_low >= 0;
    const torch::Tensor y = labelled ? random_labels(options_.batch_size) : torch::Tensor();
    torch::optim::Adam adam({x}, torch::optim::AdamOptions(recipe_.lr));
    Plateau plateau(adam, recipe_.lr, recipe_.patience);
    for (int64_t step = 0; step < recipe_.iterations; ++step) {
      StepReport report = step_report(step, recipe_.iterations);
      adam.zero_grad();
      loss(x, y, &report).backward();
      adam.step();
      plateau.step(report.total);
      if (progress) progress(report);
    }
    const torch::Tensor images = x.detach();
    const torch::Tensor labels = labelled ? y : predict(images);
    if (recipe_.margin_low >= 0) update_centroids(images, labels);
    return {images, labels};
  }
};

class GeneratorSynthesizer : public Base {
 public:
  GeneratorSynthesizer(models::Classifier teacher, std::vector<int64_t> shape, int64_t classes, const Recipe& recipe,
                       const SynthesizerOptions& o, std::shared_ptr<distributed::Communicator> comm)
      : Base(std::move(teacher), shape, classes, recipe, o, comm),
        generator_(GdfqGenerator(classes, o.latent_dim, shape)) {
    // Every rank starts from the same generator (seeded like rank 0's stream).
    torch::manual_seed(o.seed);
    generator_ = GdfqGenerator(classes, o.latent_dim, shape);
    if (recipe.mapping) generator_->add_mapping(o.latent_dim);
    if (comm_) distributed::broadcast_state(*comm_, *generator_);
    if (recipe.adversarial > 0 && !o.external_adversary) {
      TORCH_CHECK(!o.teacher_spec.arch.empty(), "the adversarial part needs the teacher's architecture (teacher_spec)");
      student_ = models::build(o.teacher_spec, models::Fp32Factory());
      if (comm_) distributed::broadcast_state(*comm_, *student_);
      student_->eval();
      for (const auto& p : student_->parameters()) p.set_requires_grad(false);  // on only in its own steps
    }
  }
  std::vector<torch::Tensor> parameters() const override { return generator_->parameters(); }

  void fit(const std::function<void(const StepReport&)>& progress) override {
    for (int64_t step = 0; step < recipe_.iterations; ++step) {
      StepReport report = step_report(step, recipe_.iterations);
      train_step(&report);
      if (progress) progress(report);
    }
  }

  bool trains_generator() const override { return true; }

  std::pair<torch::Tensor, torch::Tensor> train_step(StepReport* report) override {
    generator_->train();
    train_step_setup();
    const torch::Tensor y = random_labels(options_.batch_size);
    const torch::Tensor z = randn({options_.batch_size, options_.latent_dim});
    adam_->zero_grad();
    torch::Tensor images, labels;
    if (recipe_.superpose_prob > 0 && torch::rand({1}, gen_).item<double>() < recipe_.superpose_prob) {
      // Qimera's superposed embeddings: each sample mixes K classes with
      // weights softmax(N(0, 1)); its target is the same mixture.
      const int64_t n = options_.batch_size, k = recipe_.superpose_k;
      const torch::Tensor ys = random_labels(n * k).view({n, k});
      const torch::Tensor lambda = torch::softmax(randn({n, k}), 1);
      const torch::Tensor e = (lambda.unsqueeze(2) * z.unsqueeze(1) * generator_->emb->forward(ys)).sum(1);
      const torch::Tensor soft = torch::zeros({n, classes_}).scatter_add(1, ys, lambda);
      images = generator_->body(e);
      labels = soft.argmax(1);
      loss(images, labels, report, soft).backward();
    } else {
      images = generator_->forward(z, y);
      labels = y;
      loss(images, y, report).backward();
    }
    if (reducer_) reducer_->reduce();
    adam_->step();
    if (student_) {
      remember(images.detach(), last_logits_);
      report->student_kd = train_student();
    }
    return {images.detach(), labels};
  }
  bool trains_while_sampling() const override { return static_cast<bool>(student_); }
  models::Classifier proxy_student() const override { return student_; }

  NamedTensors state() override {
    NamedTensors out;
    for (const auto& [name, t] : named_state(*generator_)) out.emplace_back("generator." + name, t);
    if (adam_) {
      NamedTensors params;
      for (const auto& item : generator_->named_parameters()) params.emplace_back(item.key(), item.value());
      for (const auto& [name, t] : optimizer_state(*adam_, params)) out.emplace_back("adam." + name, t);
    }
    return out;
  }

  void load_state(const std::map<std::string, torch::Tensor>& state) override {
    std::map<std::string, torch::Tensor> adam;
    size_t found = 0;
    torch::NoGradGuard no_grad;
    for (const auto& [name, t] : named_state(*generator_)) {
      const auto it = state.find("generator." + name);
      TORCH_CHECK(it != state.end(), "the checkpoint has no generator tensor '", name, "'");
      TORCH_CHECK(it->second.sizes() == t.sizes(), "the checkpoint's generator tensor '", name, "' has shape ",
                  it->second.sizes(), ", the recipe's generator ", t.sizes());
      t.copy_(it->second);
      ++found;
    }
    for (const auto& [name, t] : state) {
      if (name.rfind("adam.", 0) == 0) {
        adam.emplace(name.substr(5), t);
      } else {
        TORCH_CHECK(name.rfind("generator.", 0) == 0, "unexpected synthesizer state '", name, "'");
      }
    }
    TORCH_CHECK(found + adam.size() == state.size(), "the checkpoint's generator does not match the recipe's");
    if (!adam.empty()) {
      train_step_setup();
      NamedTensors params;
      for (const auto& item : generator_->named_parameters()) params.emplace_back(item.key(), item.value());
      load_optimizer_state(*adam_, params, adam);
    }
  }

  std::pair<torch::Tensor, torch::Tensor> next_batch(const std::function<void(const StepReport&)>& progress) override {
    if (student_) {  // the adversarial recipe's pool is its trajectory: one more training step per batch
      StepReport report = step_report(sampled_, sampled_ + 1);
      ++sampled_;
      std::pair<torch::Tensor, torch::Tensor> batch;
      for (int64_t k = 0; k < recipe_.stride; ++k) {
        report = step_report(sampled_ - 1, sampled_);  // the last step's losses
        batch = train_step(&report);
      }
      if (progress) progress(report);
      return batch;
    }
    torch::NoGradGuard no_grad;
    const torch::Tensor y = random_labels(options_.batch_size);
    const torch::Tensor z = randn({options_.batch_size, options_.latent_dim});
    return {generator_->forward(z, y), y};  // batch statistics, as GDFQ samples it
  }

 private:
  void train_step_setup() {
    if (adam_) return;
    adam_ = std::make_unique<torch::optim::Adam>(generator_->parameters(),
                                                 torch::optim::AdamOptions(recipe_.lr).betas({0.5, 0.999}));
    if (comm_ && comm_->size() > 1) reducer_ = std::make_unique<distributed::Reducer>(comm_, generator_->parameters());
  }

  // Keeps a generated batch and the teacher's logits for the proxy student, in
  // a ring of kBankImages images (the oldest overwritten).
  void remember(const torch::Tensor& images, const torch::Tensor& logits) {
    if (!bank_images_.defined()) {
      // At most kBankImages images and kBankBytes of them (large inputs keep fewer), at least one batch.
      const int64_t image_bytes = images[0].numel() * static_cast<int64_t>(sizeof(float));
      bank_capacity_ = std::max(images.size(0), std::min(kBankImages, kBankBytes / image_bytes));
      std::vector<int64_t> shape{bank_capacity_};
      shape.insert(shape.end(), images.sizes().begin() + 1, images.sizes().end());
      bank_images_ = torch::empty(shape);
      bank_logits_ = torch::empty({bank_capacity_, logits.size(1)});
    }
    const torch::Tensor slots = torch::arange(bank_next_, bank_next_ + images.size(0)).remainder(bank_capacity_);
    bank_images_.index_copy_(0, slots, images);
    bank_logits_.index_copy_(0, slots, logits);
    bank_next_ += images.size(0);
  }

  // student_steps steps of distillation from the teacher's stored logits: the
  // first on the newest batch, the others on random batches of the bank.
  // Returns the last step's loss.
  double train_student() {
    if (!student_sgd_) {
      student_sgd_ = std::make_unique<torch::optim::SGD>(
          student_->parameters(), torch::optim::SGDOptions(kStudentLr).momentum(0.9).weight_decay(5e-4));
      if (comm_ && comm_->size() > 1) student_reducer_ = std::make_unique<distributed::Reducer>(comm_, student_->parameters());
    }
    const int64_t n = options_.batch_size, filled = std::min(bank_next_, bank_capacity_);
    double last = 0;
    for (const auto& p : student_->parameters()) p.set_requires_grad(true);
    student_->train();
    for (int64_t k = 0; k < recipe_.student_steps; ++k) {
      const torch::Tensor index =
          k == 0 ? torch::arange(bank_next_ - n, bank_next_).remainder(bank_capacity_) : torch::randint(0, filled, {n}, gen_);
      const torch::Tensor x = bank_images_.index_select(0, index);
      student_sgd_->zero_grad();
      const torch::Tensor loss = nn::kd_loss(student_->forward(x), bank_logits_.index_select(0, index), kStudentTemperature);
      loss.backward();
      if (student_reducer_) student_reducer_->reduce();
      student_sgd_->step();
      last = loss.item<double>();
    }
    student_->eval();
    for (const auto& p : student_->parameters()) p.set_requires_grad(false);
    // Each rank's BatchNorm statistics saw its own bank: use rank 0's, so every rank's adversarial term uses one student.
    if (comm_ && comm_->size() > 1) distributed::broadcast_state(*comm_, *student_, 0, /*buffers_only=*/true);
    return last;
  }

  // The proxy student: SGD lr 0.05 momentum 0.9 (our choice; Fast-DFKD uses a
  // cosine schedule over its epochs, which a stream of steps does not have),
  // distillation at T = 4 as our yardstick, a bank of up to 65 536 images and 1 GiB.
  static constexpr double kStudentLr = 0.05, kStudentTemperature = 4.0;
  static constexpr int64_t kBankImages = 65536, kBankBytes = int64_t(1) << 30;

  GdfqGenerator generator_;
  std::unique_ptr<torch::optim::Adam> adam_;
  std::unique_ptr<distributed::Reducer> reducer_;
  std::unique_ptr<torch::optim::SGD> student_sgd_;
  std::unique_ptr<distributed::Reducer> student_reducer_;
  torch::Tensor bank_images_, bank_logits_;
  int64_t bank_next_ = 0, bank_capacity_ = 0, sampled_ = 0;  ///< images remembered so far; ring size; batches sampled
};

// Genie-D: per batch a fresh generator and learned latents, optimized together
// against the genie BN-statistics loss (+ image prior) of a teacher copy whose
// strided convolutions swing. As the code (not its docstring): the latents get
// Adam at lr (0.1) with loss-plateau decay (patience 100, ×0.1, min 1e-4), the
// generator Adam at lr/10 (0.01) decayed ×0.95 every 100 steps.
class GenieSynthesizer : public Base {
 public:
  GenieSynthesizer(models::Classifier teacher, std::vector<int64_t> shape, int64_t classes, const Recipe& recipe,
                   const SynthesizerOptions& o, std::shared_ptr<distributed::Communicator> comm)
      : Base(nullptr, shape, classes, recipe, o, comm) {
    TORCH_CHECK(!o.teacher_spec.arch.empty(), "the genie recipe needs the teacher's architecture (teacher_spec)");
    // The swinging copy of the teacher, with its weights.
    teacher_ = models::build(o.teacher_spec, SwingFactory(gen_));
    predictor_ = teacher;
    predictor_->eval();
    torch::NoGradGuard no_grad;
    auto from = teacher->named_parameters();
    for (auto& p : teacher_->named_parameters()) p.value().copy_(from[p.key()]);
    auto from_buffers = teacher->named_buffers();
    for (auto& b : teacher_->named_buffers()) b.value().copy_(from_buffers[b.key()]);
    teacher_->eval();
    for (const auto& p : teacher_->parameters()) p.set_requires_grad(false);
    bns_.clear();
    for (const auto& [name, bn] : models::batch_norms(*teacher_)) bns_.push_back(bn);
  }

  std::pair<torch::Tensor, torch::Tensor> next_batch(const std::function<void(const StepReport&)>& progress) override {
    torch::manual_seed(static_cast<uint64_t>(torch::randint(0, int64_t(1) << 40, {1}, gen_).item<int64_t>()));
    GenieGenerator generator(options_.latent_dim, shape_);
    generator->train();
    torch::Tensor z = randn({options_.batch_size, options_.latent_dim}).requires_grad_(true);
    torch::optim::Adam opt_z({z}, torch::optim::AdamOptions(recipe_.lr));
    torch::optim::Adam opt_g(generator->parameters(), torch::optim::AdamOptions(recipe_.lr / 10));
    Plateau plateau(opt_z, recipe_.lr, 100);
    double lr_g = recipe_.lr / 10;
    for (int64_t step = 0; step < recipe_.iterations; ++step) {
      StepReport report = step_report(step, recipe_.iterations);
      opt_z.zero_grad();
      opt_g.zero_grad();
      loss(generator->forward(z), torch::Tensor(), &report).backward();
      opt_z.step();
      opt_g.step();
      plateau.step(report.total);
      if ((step + 1) % 100 == 0) {
        lr_g *= 0.95;
        static_cast<torch::optim::AdamOptions&>(opt_g.param_groups()[0].options()).lr(lr_g);
      }
      if (progress) progress(report);
    }
    torch::Tensor images;
    {
      torch::NoGradGuard no_grad;
      images = generator->forward(z.detach());
    }
    return {images, predict(images)};
  }
};

} // namespace

std::pair<torch::Tensor, torch::Tensor> Synthesizer::train_step(StepReport*) {
  TORCH_CHECK(false, "recipe '", recipe_.name, "' trains no generator; only gdfq and qimera alternate with the student");
}

void Synthesizer::load_state(const std::map<std::string, torch::Tensor>& state) {
  TORCH_CHECK(state.empty(), "recipe '", recipe_.name, "' keeps no state, the checkpoint has ", state.size(),
              " synthesizer tensors");
}

const std::vector<std::string>& known_recipes() {
  static const std::vector<std::string> names = {"noise", "zeroq", "dsg", "gdfq", "qimera", "genie", "intraq", "adversarial"};
  return names;
}

std::string Recipe::describe() const {
  std::ostringstream out;
  out << name << ": variables=" << variables;
  if (variables != "noise") {
    out << ", bns=" << bns_variant_name(bns) << "×" << bns_weight << ", ce×" << ce_weight << ", prior×"
        << prior_weight << ", margin " << margin << ", lr " << lr << ", " << iterations << " steps";
    if (lor) out << ", local object reinforcement";
    if (superpose_prob > 0) out << ", superposed embeddings p " << superpose_prob << " K " << superpose_k;
    if (mapping) out << ", mapping layer";
    if (layerwise) out << ", layerwise sample enhancement";
    if (adversarial > 0) {
      out << ", adversarial×" << adversarial << " (proxy student, " << student_steps << " steps per step, a batch every "
          << stride << " steps)";
    }
    if (soft_target > 0) out << ", soft inception U(" << soft_target << ", 1)";
    if (margin_low >= 0) out << ", marginal distance [" << margin_low << ", " << margin_up << "]";
  }
  return out.str();
}

Recipe resolve_recipe(const SynthesizerOptions& o) {
  Recipe r;
  r.name = o.recipe;
  if (o.recipe == "noise") {
    r.variables = "noise";
  } else if (o.recipe == "zeroq") {
    r = {o.recipe, "pixels", BnsVariant::kZeroQ, 1.0, 0.0, 1.0, 0.0, 0.5, 500};
  } else if (o.recipe == "dsg") {
    r = {o.recipe, "pixels", BnsVariant::kZeroQ, 1.0, 0.0, 1.0, 0.1, 0.5, 500};
    r.layerwise = true;
  } else if (o.recipe == "gdfq") {
    r = {o.recipe, "generator", BnsVariant::kGdfq, 0.1, 1.0, 0.0, 0.0, 1e-3, 400};
  } else if (o.recipe == "qimera") {
    r = {o.recipe, "generator", BnsVariant::kGdfq, 0.1, 1.0, 0.0, 0.0, 1e-3, 400};
    r.superpose_prob = 0.4;  // Qimera's CIFAR-10 script: p 0.4, K 2, mapping layer off
    r.superpose_k = 2;
  } else if (o.recipe == "adversarial") {
    r = {o.recipe, "generator", BnsVariant::kGdfq, 0.1, 1.0, 0.0, 0.0, 1e-3, 400};
    r.adversarial = 1.0;  // DFAD / Fast-DFKD; Fast-DFKD's CIFAR scripts use 0.5-1.1
    r.student_steps = 2;
  } else if (o.recipe == "intraq") {
    r = {o.recipe, "pixels", BnsVariant::kGdfq, 1.0, 0.0, 0.0, 0.0, 0.5, 1000};
    r.lor = true;
    r.soft_target = 0.95;
    r.margin_low = 0.05;
    r.margin_up = 0.8;
    r.patience = 50;
  } else if (o.recipe == "genie") {
    r = {o.recipe, "generator+latents", BnsVariant::kGenie, 1.0, 0.0, 1.0, 0.0, 0.1, 4000};
  } else {
    std::string known;
    for (const auto& n : known_recipes()) known += (known.empty() ? "" : ", ") + n;
    ZSQ_CHECK_OPTION(false, "unknown recipe '", o.recipe, "'; known: ", known);
  }
  if (!o.bns.empty()) r.bns = parse_bns_variant(o.bns);
  if (o.bns_weight >= 0) r.bns_weight = o.bns_weight;
  if (o.ce_weight >= 0) r.ce_weight = o.ce_weight;
  if (o.prior_weight >= 0) r.prior_weight = o.prior_weight;
  if (o.lr >= 0) r.lr = o.lr;
  if (o.iterations >= 0) r.iterations = o.iterations;
  if (o.margin >= 0) r.margin = o.margin;
  if (o.lor >= 0) r.lor = o.lor > 0;
  if (o.superpose_prob >= 0) r.superpose_prob = o.superpose_prob;
  if (o.superpose_k > 0) r.superpose_k = o.superpose_k;
  if (o.mapping >= 0) r.mapping = o.mapping > 0;
  if (o.layerwise >= 0) r.layerwise = o.layerwise > 0;
  if (o.adversarial >= 0) r.adversarial = o.adversarial;
  if (o.student_steps > 0) r.student_steps = o.student_steps;
  if (o.stride > 0) r.stride = o.stride;
  ZSQ_CHECK_OPTION(o.stride >= 0, "--stride must be >= 1, got ", o.stride);
  ZSQ_CHECK_OPTION(o.adversarial >= 0 || o.adversarial == -1, "--adversarial must be >= 0, got ", o.adversarial);
  ZSQ_CHECK_OPTION(o.student_steps >= 0, "--student-steps must be >= 1, got ", o.student_steps);
  ZSQ_CHECK_OPTION(r.adversarial == 0 || r.variables == "generator",
                   "the adversarial term needs a trained generator (gdfq, qimera, adversarial)");
  ZSQ_CHECK_OPTION((o.stride == 0 && o.student_steps == 0) || r.adversarial > 0,
                   "--stride and --student-steps need the adversarial part (--adversarial > 0)");
  ZSQ_CHECK_OPTION(!o.external_adversary || (o.stride == 0 && o.student_steps == 0),
                   "--stride and --student-steps are for the proxy student of a pool; online, the adversary is the "
                   "student being quantized");
  ZSQ_CHECK_OPTION(r.adversarial == 0 || !r.lor,
                   "local object reinforcement cannot be combined with the adversarial part (the bank keeps uncropped images)");
  ZSQ_CHECK_OPTION(!r.layerwise || r.bns == BnsVariant::kZeroQ,
                   "layerwise sample enhancement needs per-sample statistics: use --bns zeroq");
  ZSQ_CHECK_OPTION(r.superpose_prob <= 1, "--superpose-prob must be in [0, 1], got ", r.superpose_prob);
  ZSQ_CHECK_OPTION(r.superpose_k >= 2, "--superpose-k must be >= 2, got ", r.superpose_k);
  ZSQ_CHECK_OPTION(r.variables == "generator" || (r.superpose_prob == 0 && !r.mapping),
                   "superposed embeddings and the mapping layer need the class-conditional generator (gdfq, qimera)");
  if (o.soft_target >= 0) r.soft_target = o.soft_target;
  if (o.margin_low > -2) r.margin_low = o.margin_low;
  if (o.margin_up > -2) r.margin_up = o.margin_up;
  ZSQ_CHECK_OPTION(r.soft_target < 1, "--soft-target must be in [0, 1), got ", r.soft_target);
  ZSQ_CHECK_OPTION(r.margin_low < 0 || r.margin_up >= r.margin_low, "--margin-up must be >= --margin-low");
  ZSQ_CHECK_OPTION(o.batch_size >= 2, "--batch-size must be >= 2 for synthesis, got ", o.batch_size);
  ZSQ_CHECK_OPTION(o.margin >= 0 || o.margin == -1, "--margin must be >= 0, got ", o.margin);
  ZSQ_CHECK_OPTION(o.latent_dim >= 1, "--latent-dim must be >= 1, got ", o.latent_dim);
  ZSQ_CHECK_OPTION(r.variables == "noise" || r.lr > 0, "--lr must be > 0, got ", r.lr);
  ZSQ_CHECK_OPTION(r.variables != "generator+latents" || (r.ce_weight == 0 && r.soft_target == 0 && r.margin_low < 0),
                   "the ", r.name, " recipe has no target labels: --ce-weight, --soft-target and --margin-low are off");
  return r;
}

std::unique_ptr<Synthesizer> make_synthesizer(models::Classifier teacher, std::vector<int64_t> shape,
                                              int64_t num_classes, const SynthesizerOptions& options,
                                              std::shared_ptr<distributed::Communicator> comm) {
  TORCH_CHECK(shape.size() == 3, "input shape must be C,H,W");
  TORCH_CHECK(num_classes >= 2, "the teacher must have at least 2 classes");
  const Recipe r = resolve_recipe(options);
  if (r.variables == "noise") return std::make_unique<NoiseSynthesizer>(teacher, shape, num_classes, r, options, comm);
  if (r.variables == "pixels") return std::make_unique<PixelSynthesizer>(teacher, shape, num_classes, r, options, comm);
  if (r.variables == "generator+latents") {
    return std::make_unique<GenieSynthesizer>(teacher, shape, num_classes, r, options, comm);
  }
  return std::make_unique<GeneratorSynthesizer>(teacher, shape, num_classes, r, options, comm);
}

} // namespace zsq::generators
