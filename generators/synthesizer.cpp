#include "generators/synthesizer.h"

#include "distributed/reducer.h"
#include "distributed/sync.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <limits>

#include <sstream>

namespace zsq::generators {
namespace {

// GDFQ's CIFAR generator (xushoukai/GDFQ main.py `Generator`), for inputs whose
// height and width divide by 4. The positional 0.8 of its BatchNorm2d is eps.
class GdfqGeneratorImpl : public torch::nn::Module {
 public:
  GdfqGeneratorImpl(int64_t num_classes, int64_t latent, std::vector<int64_t> shape) : shape_(std::move(shape)) {
    TORCH_CHECK(shape_[1] % 4 == 0 && shape_[2] % 4 == 0, "the gdfq generator needs height and width divisible by 4, "
                "got ", shape_[1], "×", shape_[2]);
    emb = register_module("emb", torch::nn::Embedding(num_classes, latent));
    l1 = register_module("l1", torch::nn::Linear(latent, 128 * shape_[1] / 4 * shape_[2] / 4));
    bn0 = register_module("bn0", torch::nn::BatchNorm2d(128));
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(128, 128, 3).padding(1)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(128).eps(0.8)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(128, 64, 3).padding(1)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(64).eps(0.8)));
    conv3 = register_module("conv3", torch::nn::Conv2d(torch::nn::Conv2dOptions(64, shape_[0], 3).padding(1)));
    bn3 = register_module("bn3", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(shape_[0]).affine(false)));
  }
  torch::Tensor forward(const torch::Tensor& z, const torch::Tensor& y) {
    torch::Tensor x = l1->forward(z * emb->forward(y)).view({z.size(0), 128, shape_[1] / 4, shape_[2] / 4});
    x = bn0->forward(x);
    const auto up = torch::nn::functional::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(
        torch::kNearest);
    x = torch::nn::functional::interpolate(x, up);
    x = torch::leaky_relu(bn1->forward(conv1->forward(x)), 0.2);
    x = torch::nn::functional::interpolate(x, up);
    x = torch::leaky_relu(bn2->forward(conv2->forward(x)), 0.2);
    return bn3->forward(torch::tanh(conv3->forward(x)));
  }
  torch::nn::Embedding emb{nullptr};
  torch::nn::Linear l1{nullptr};
  torch::nn::BatchNorm2d bn0{nullptr}, bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};

 private:
  std::vector<int64_t> shape_;
};
TORCH_MODULE(GdfqGenerator);

// Shared machinery: the teacher with taps, the losses of one batch.
class Base : public Synthesizer {
 public:
  Base(models::Classifier teacher, std::vector<int64_t> shape, int64_t classes, const Recipe& recipe,
       const SynthesizerOptions& o, std::shared_ptr<distributed::Communicator> comm)
      : teacher_(std::move(teacher)), shape_(std::move(shape)), classes_(classes), options_(o),
        comm_(std::move(comm)) {
    recipe_ = recipe;
    teacher_->eval();
    for (const auto& p : teacher_->parameters()) p.set_requires_grad(false);
    for (const auto& [name, bn] : models::batch_norms(*teacher_)) bns_.push_back(bn);
    const int rank = comm_ ? comm_->rank() : 0;
    gen_ = at::make_generator<at::CPUGeneratorImpl>(o.seed + 1000003ull * static_cast<uint64_t>(rank));
  }

 protected:
  torch::Tensor randn(std::vector<int64_t> shape) { return torch::randn(shape, gen_); }
  torch::Tensor random_labels(int64_t n) { return torch::randint(0, classes_, {n}, gen_); }

  // Loss of a batch (images in the graph); labels undefined: no CE.
  torch::Tensor loss(const torch::Tensor& images, const torch::Tensor& labels, StepReport* report) {
    models::set_bn_taps(*teacher_, true);
    const torch::Tensor logits = teacher_->forward(images);
    const BnsLoss b = bns_loss(bns_, {recipe_.bns, recipe_.margin}, comm_.get());
    models::set_bn_taps(*teacher_, false);
    torch::Tensor total = recipe_.bns_weight * b.total;
    report->bns = b.total.item<double>();
    if (recipe_.ce_weight > 0 && labels.defined()) {
      const torch::Tensor ce = torch::cross_entropy_loss(logits, labels);
      total = total + recipe_.ce_weight * ce;
      report->ce = ce.item<double>();
    }
    if (recipe_.prior_weight > 0) {
      const torch::Tensor prior = image_prior_loss(images);
      total = total + recipe_.prior_weight * prior;
      report->prior = prior.item<double>();
    }
    const torch::Tensor target = labels.defined() ? labels : logits.argmax(1);
    report->confidence = torch::softmax(logits.detach(), 1).gather(1, target.unsqueeze(1)).mean().item<double>();
    report->total = total.item<double>();
    return total;
  }

  torch::Tensor predict(const torch::Tensor& images) {
    torch::NoGradGuard no_grad;
    return teacher_->forward(images).argmax(1);
  }

  models::Classifier teacher_;
  std::vector<int64_t> shape_;
  int64_t classes_;
  SynthesizerOptions options_;
  std::shared_ptr<distributed::Communicator> comm_;
  std::vector<nn::BatchNorm2d> bns_;
  at::Generator gen_;
};

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
    torch::optim::Adam adam({x}, torch::optim::AdamOptions(recipe_.lr));
    double lr = recipe_.lr, best = std::numeric_limits<double>::infinity();
    int64_t since_best = 0;
    for (int64_t step = 0; step < recipe_.iterations; ++step) {
      StepReport report;
      report.step = step + 1;
      report.steps = recipe_.iterations;
      adam.zero_grad();
      loss(x, torch::Tensor(), &report).backward();
      adam.step();
      // ReduceLROnPlateau(patience 100, factor 0.1, min 1e-4) on the total loss, as ZeroQ.
      if (report.total < best) {
        best = report.total;
        since_best = 0;
      } else if (++since_best > 100 && lr > 1e-4) {
        lr = std::max(lr * 0.1, 1e-4);
        static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(lr);
        since_best = 0;
      }
      if (progress) progress(report);
    }
    const torch::Tensor images = x.detach();
    return {images, predict(images)};
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
    if (comm_) distributed::broadcast_state(*comm_, *generator_);
  }
  std::vector<torch::Tensor> parameters() const override { return generator_->parameters(); }

  void fit(const std::function<void(const StepReport&)>& progress) override {
    generator_->train();
    torch::optim::Adam adam(generator_->parameters(), torch::optim::AdamOptions(recipe_.lr).betas({0.5, 0.999}));
    std::unique_ptr<distributed::Reducer> reducer;
    if (comm_ && comm_->size() > 1) reducer = std::make_unique<distributed::Reducer>(comm_, generator_->parameters());
    for (int64_t step = 0; step < recipe_.iterations; ++step) {
      StepReport report;
      report.step = step + 1;
      report.steps = recipe_.iterations;
      const torch::Tensor y = random_labels(options_.batch_size);
      const torch::Tensor z = randn({options_.batch_size, options_.latent_dim});
      adam.zero_grad();
      loss(generator_->forward(z, y), y, &report).backward();
      if (reducer) reducer->reduce();
      adam.step();
      if (progress) progress(report);
    }
  }

  std::pair<torch::Tensor, torch::Tensor> next_batch(const std::function<void(const StepReport&)>&) override {
    torch::NoGradGuard no_grad;
    const torch::Tensor y = random_labels(options_.batch_size);
    const torch::Tensor z = randn({options_.batch_size, options_.latent_dim});
    return {generator_->forward(z, y), y};  // batch statistics, as GDFQ samples it
  }

 private:
  GdfqGenerator generator_;
};

} // namespace

const std::vector<std::string>& known_recipes() {
  static const std::vector<std::string> names = {"noise", "zeroq", "gdfq"};
  return names;
}

std::string Recipe::describe() const {
  std::ostringstream out;
  out << name << ": variables=" << variables;
  if (variables != "noise") {
    out << ", bns=" << bns_variant_name(bns) << "×" << bns_weight << ", ce×" << ce_weight << ", prior×"
        << prior_weight << ", margin " << margin << ", lr " << lr << ", " << iterations << " steps";
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
  } else if (o.recipe == "gdfq") {
    r = {o.recipe, "generator", BnsVariant::kGdfq, 0.1, 1.0, 0.0, 0.0, 1e-3, 400};
  } else {
    std::string known;
    for (const auto& n : known_recipes()) known += (known.empty() ? "" : ", ") + n;
    TORCH_CHECK(false, "unknown recipe '", o.recipe, "'; known: ", known);
  }
  if (!o.bns.empty()) r.bns = parse_bns_variant(o.bns);
  if (o.bns_weight >= 0) r.bns_weight = o.bns_weight;
  if (o.ce_weight >= 0) r.ce_weight = o.ce_weight;
  if (o.prior_weight >= 0) r.prior_weight = o.prior_weight;
  if (o.lr >= 0) r.lr = o.lr;
  if (o.iterations >= 0) r.iterations = o.iterations;
  r.margin = o.margin;
  TORCH_CHECK(o.batch_size >= 2, "--batch-size must be >= 2 for synthesis, got ", o.batch_size);
  TORCH_CHECK(o.margin >= 0, "--margin must be >= 0, got ", o.margin);
  TORCH_CHECK(o.latent_dim >= 1, "--latent-dim must be >= 1, got ", o.latent_dim);
  TORCH_CHECK(r.variables == "noise" || r.lr > 0, "--lr must be > 0, got ", r.lr);
  TORCH_CHECK(r.variables != "pixels" || r.ce_weight == 0, "the zeroq recipe has no target labels: --ce-weight must be 0");
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
  return std::make_unique<GeneratorSynthesizer>(teacher, shape, num_classes, r, options, comm);
}

} // namespace zsq::generators
