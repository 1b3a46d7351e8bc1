#include "generators/synth_base.h"

#include "framework/seed.h"

namespace zsq::generators {
namespace detail {
namespace {

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
    const auto seed = static_cast<uint64_t>(torch::randint(0, int64_t(1) << 40, {1}, gen_).item<int64_t>());
    GenieGenerator generator = [&] {
      ScopedSeed scoped(seed);  // a fresh generator per batch, initialised from this rank's stream
      return GenieGenerator(options_.latent_dim, shape_);
    }();
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
} // namespace detail


std::pair<torch::Tensor, torch::Tensor> Synthesizer::train_step(StepReport*) {
  TORCH_CHECK(false, "recipe '", recipe_.name, "' trains no generator; only gdfq and qimera alternate with the student");
}

void Synthesizer::load_state(const TensorMap& state) {
  TORCH_CHECK(state.empty(), "recipe '", recipe_.name, "' keeps no state, the checkpoint has ", state.size(),
              " synthesizer tensors");
}

std::unique_ptr<Synthesizer> make_synthesizer(models::Classifier teacher, std::vector<int64_t> shape,
                                              int64_t num_classes, const SynthesizerOptions& options,
                                              std::shared_ptr<distributed::Communicator> comm) {
  TORCH_CHECK(shape.size() == 3, "input shape must be C,H,W");
  TORCH_CHECK(num_classes >= 2, "the teacher must have at least 2 classes");
  const Recipe r = resolve_recipe(options);
  if (r.variables == "noise") return std::make_unique<detail::NoiseSynthesizer>(teacher, shape, num_classes, r, options, comm);
  if (r.variables == "pixels") return std::make_unique<detail::PixelSynthesizer>(teacher, shape, num_classes, r, options, comm);
  if (r.variables == "generator+latents") {
    return std::make_unique<detail::GenieSynthesizer>(teacher, shape, num_classes, r, options, comm);
  }
  return detail::make_generator_synthesizer(teacher, shape, num_classes, r, options, comm);
}

} // namespace zsq::generators
