// GDFQ's generator trained beside the student (and Qimera's superposed embeddings, the adversarial proxy student).
#include "generators/synth_base.h"

#include "framework/seed.h"

namespace zsq::generators::detail {
namespace {

class GeneratorSynthesizer : public Base {
 public:
  GeneratorSynthesizer(models::Classifier teacher, std::vector<int64_t> shape, int64_t classes, const Recipe& recipe,
                       const SynthesizerOptions& o, std::shared_ptr<distributed::Communicator> comm)
      : Base(std::move(teacher), shape, classes, recipe, o, comm),
        generator_(GdfqGenerator(classes, o.latent_dim, shape)) {
    // Every rank starts from the same generator (seeded like rank 0's stream).
    ScopedSeed seed(o.seed);
    generator_ = GdfqGenerator(classes, o.latent_dim, shape);
    if (recipe.mapping) generator_->add_mapping(o.latent_dim);
    if (comm_) distributed::broadcast_state(*comm_, *generator_);
    if (recipe.adversarial > 0 && !o.external_adversary) {
      TORCH_CHECK(!o.teacher_spec.arch.empty(), "the adversarial part needs the teacher's architecture (teacher_spec)");
      student_ = models::build(o.teacher_spec, models::Fp32Factory());  // its initial weights follow the generator's
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

  // The generator's tensors ("generator.") and its optimizer's state ("adam.", once it stepped).
  NamedTensors state() override {
    NamedTensors out = with_prefix("generator.", ModuleState(*generator_, "generator").state());
    if (adam_) {
      const NamedTensors adam = with_prefix("adam.", OptimizerState(*adam_, named_parameters()).state());
      out.insert(out.end(), adam.begin(), adam.end());
    }
    return out;
  }

  void load_state(const TensorMap& state) override {
    const TensorMap generator = under_prefix(state, "generator."), adam = under_prefix(state, "adam.");
    for (const auto& [name, t] : state) {
      TORCH_CHECK(name.rfind("generator.", 0) == 0 || name.rfind("adam.", 0) == 0, "unexpected synthesizer state '",
                  name, "'");
    }
    ModuleState(*generator_, "generator").load_state(generator);
    if (!adam.empty()) {
      train_step_setup();
      OptimizerState(*adam_, named_parameters()).load_state(adam);
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
  NamedTensors named_parameters() const {
    NamedTensors params;
    for (const auto& item : generator_->named_parameters()) params.emplace_back(item.key(), item.value());
    return params;
  }

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

} // namespace

std::unique_ptr<Synthesizer> make_generator_synthesizer(models::Classifier teacher, std::vector<int64_t> shape,
                                                        int64_t classes, const Recipe& recipe,
                                                        const SynthesizerOptions& o,
                                                        std::shared_ptr<distributed::Communicator> comm) {
  return std::make_unique<GeneratorSynthesizer>(std::move(teacher), std::move(shape), classes, recipe, o, std::move(comm));
}

} // namespace zsq::generators::detail
