#include "trainers/ptq.h"

#include "framework/errors.h"
#include "framework/quant/adaround.h"
#include "framework/quant/layers.h"
#include "trainers/engine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <sstream>

namespace zsq::trainers {
namespace {

constexpr int64_t kChunk = 256;        // images per no-grad forward
constexpr int64_t kErrorImages = 256;  // images the before/after error is measured on

// A unit's quantized layer and its learned rounding.
struct Rounded {
  quant::QuantizedLayer* layer;
  std::unique_ptr<quant::AdaRound> rounding;
  torch::Tensor initial_codes;  // nearest rounding at the initial steps
};

bool owns(const std::vector<std::string>& modules, const std::string& path) {
  for (const std::string& m : modules) {
    if (m.empty() || path == m || path.rfind(m + ".", 0) == 0) return true;
  }
  return false;
}

std::vector<quant::QuantizedLayer*> unit_layers(torch::nn::Module& model, const models::Unit& unit) {
  std::vector<quant::QuantizedLayer*> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto* layer = dynamic_cast<quant::QuantizedLayer*>(item.value().get());
    if (layer && owns(unit.modules, item.key())) out.push_back(layer);
  }
  return out;
}

// `f` on every image of `x`, without gradients, in chunks.
torch::Tensor run_all(const std::function<torch::Tensor(const torch::Tensor&)>& f, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < x.size(0); i += kChunk) parts.push_back(f(x.slice(0, i, std::min(i + kChunk, x.size(0)))));
  return torch::cat(parts);
}

// BRECQ's lp_loss (p 2, "none" reduction off): Σ over channels (dim 1), mean over images and positions.
torch::Tensor reconstruction_error(const torch::Tensor& y_hat, const torch::Tensor& y) {
  return (y_hat - y).pow(2).sum(1).mean();
}

double cosine(double lr, int64_t t, int64_t steps) {
  return 0.5 * lr * (1 + std::cos(M_PI * static_cast<double>(t) / static_cast<double>(steps)));
}

// Everything one unit's reconstruction needs besides its layers.
struct UnitData {
  const models::Unit* unit;
  torch::Tensor x_fp, x_q, y, logits;  // logits: the teacher's, for PD-Quant (else undefined)
  std::function<torch::Tensor(const torch::Tensor&)> tail;  // the teacher's units above this one
};

class UnitTrainer {
 public:
  UnitTrainer(std::vector<Rounded>& layers, const PtqOptions& o, at::Generator gen)
      : layers_(layers), o_(o), gen_(std::move(gen)) {
    std::vector<torch::Tensor> v, ws, as, borders;
    for (Rounded& r : layers_) {
      v.push_back(r.rounding->v());
      ws.push_back(r.layer->weight_step_parameter());
      if (!r.layer->input_fixed()) {
        as.push_back(r.layer->input_steps()[r.layer->quant_options().index_of(r.layer->bits())]);
      }
      if (r.layer->input_border().defined()) borders.push_back(r.layer->input_border());
    }
    rounding_ = std::make_unique<torch::optim::Adam>(v, torch::optim::AdamOptions(o_.rounding_lr));
    add(ws, o_.weight_step_lr);
    add(as, o_.act_step_lr);
    add(borders, o_.border_lr);
  }

  void run(const UnitData& d) {
    const int64_t n = d.x_fp.size(0), steps = o_.iterations;
    for (Rounded& r : layers_) r.layer->set_input_drop(o_.drop, gen_);
    for (int64_t t = 0; t < steps; ++t) {
      const torch::Tensor idx = torch::randperm(n, gen_, torch::kLong).slice(0, 0, o_.batch_size);
      torch::Tensor x = d.x_q.index_select(0, idx);
      if (o_.drop > 0) {
        const torch::Tensor fp = torch::rand(x.sizes(), gen_, x.options()) < o_.drop;
        x = torch::where(fp, d.x_fp.index_select(0, idx), x);
      }
      set_soft_weights();
      const torch::Tensor y_hat = d.unit->forward(x);
      torch::Tensor loss = reconstruction_error(y_hat, d.y.index_select(0, idx));
      if (o_.pd_weight > 0) {
        loss = loss + o_.pd_weight * prediction_difference(d.tail(y_hat), d.logits.index_select(0, idx));
      }
      if (o_.round_weight > 0 && schedule_.regularizing(t, steps)) {
        const double beta = schedule_.beta(t, steps);
        for (Rounded& r : layers_) loss = loss + o_.round_weight * r.rounding->regularizer(beta);
      }
      rounding_->zero_grad();
      for (auto& [opt, lr] : steps_) opt->zero_grad();
      loss.backward();
      rounding_->step();
      // The cosine's value at t + 1 for step t (Genie's CosineAnnealingLR gives step t the value at t: one
      // step apart; the results in docs/RESULTS.md were measured so).
      for (auto& [opt, lr] : steps_) {
        for (auto& group : opt->param_groups()) {
          static_cast<torch::optim::AdamOptions&>(group.options()).lr(cosine(lr, t + 1, steps));
        }
        opt->step();
      }
    }
    finish();
  }

 private:
  // An Adam over `params` whose learning rate falls from `lr` to 0 on a cosine; with lr 0 (or none) they stay
  // frozen (out of the graph).
  void add(const std::vector<torch::Tensor>& params, double lr) {
    if (lr <= 0 || params.empty()) return;
    for (const torch::Tensor& p : params) p.set_requires_grad(true);
    steps_.emplace_back(std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(lr)), lr);
  }

  void set_soft_weights() {
    for (Rounded& r : layers_) r.layer->set_weight_override(r.rounding->soft_weight(r.layer->weight_step()));
  }

  // PD-Quant: KL(softmax(z/T) || softmax(z_q/T)), batchmean (F.kl_div(log_softmax(z_q/T), softmax(z/T))).
  torch::Tensor prediction_difference(const torch::Tensor& z_q, const torch::Tensor& z) const {
    const double t = o_.pd_temperature;
    return torch::kl_div(torch::log_softmax(z_q / t, 1), torch::softmax(z / t, 1), at::Reduction::Sum) / z.size(0);
  }

  // Hard rounding into the latent weights: codes · step, which the layer's own quantizer maps back to the codes.
  void finish() {
    torch::NoGradGuard no_grad;
    for (Rounded& r : layers_) {
      r.layer->set_weight_override({});
      r.layer->set_input_drop(0);
      r.layer->latent_weight().copy_(r.rounding->hard_weight(r.layer->weight_step()));
    }
  }

  std::vector<Rounded>& layers_;
  const PtqOptions& o_;
  at::Generator gen_;
  quant::RoundingSchedule schedule_;
  std::unique_ptr<torch::optim::Adam> rounding_;
  std::vector<std::pair<std::unique_ptr<torch::optim::Adam>, double>> steps_;
};

double changed_share(const std::vector<Rounded>& layers) {
  int64_t changed = 0, total = 0;
  for (const Rounded& r : layers) {
    const torch::Tensor now = r.layer->weight_codes().to(torch::kFloat);
    changed += now.ne(r.initial_codes).sum().item<int64_t>();
    total += now.numel();
  }
  return total > 0 ? static_cast<double>(changed) / static_cast<double>(total) : 0;
}

void check_units(const std::vector<models::Unit>& s, const std::vector<models::Unit>& t) {
  TORCH_CHECK(s.size() == t.size(), "ptq: the student has ", s.size(), " units and the teacher ", t.size());
  for (size_t i = 0; i < s.size(); ++i) {
    TORCH_CHECK(s[i].name == t[i].name, "ptq: unit ", i, " is '", s[i].name, "' in the student and '", t[i].name,
                "' in the teacher");
  }
}

}  // namespace

void PtqOptions::check() const {
  std::ostringstream bad;
  if (iterations < 1) bad << "iterations must be >= 1, got " << iterations;
  else if (batch_size < 1) bad << "batch size must be >= 1, got " << batch_size;
  else if (!(rounding_lr > 0)) bad << "rounding learning rate must be > 0, got " << rounding_lr;
  else if (!(weight_step_lr >= 0) || !(act_step_lr >= 0) || !(border_lr >= 0)) bad << "step and border learning rates must be >= 0";
  else if (!(round_weight >= 0)) bad << "rounding regulariser weight must be >= 0, got " << round_weight;
  else if (!(drop >= 0 && drop < 1)) bad << "drop probability must be in [0, 1), got " << drop;
  else if (!(pd_weight >= 0)) bad << "prediction-difference weight must be >= 0, got " << pd_weight;
  else if (!(pd_temperature > 0)) bad << "prediction-difference temperature must be > 0, got " << pd_temperature;
  if (!bad.str().empty()) throw OptionError("ptq: " + bad.str());
}

std::vector<UnitReport> reconstruct(models::ClassifierImpl& student, models::ClassifierImpl& teacher,
                                    const torch::Tensor& images, const PtqOptions& o,
                                    const std::function<void(const UnitReport&)>& progress) {
  o.check();
  TORCH_CHECK(images.dim() >= 2 && images.size(0) >= o.batch_size, "ptq: needs at least ", o.batch_size,
              " images (the batch size), got ", images.dim() >= 1 ? images.size(0) : 0);
  student.eval();
  teacher.eval();
  const FrozenParameters frozen_student(student), frozen_teacher(teacher);
  const std::vector<models::Unit> su = student.units(), tu = teacher.units();
  check_units(su, tu);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  UnitData d;
  d.x_fp = images;
  d.x_q = images;
  if (o.pd_weight > 0) d.logits = run_all([&](const torch::Tensor& x) { return teacher.forward(x); }, images);
  std::vector<UnitReport> reports;
  for (size_t i = 0; i < su.size(); ++i) {
    const auto start = std::chrono::steady_clock::now();
    UnitReport report;
    report.name = su[i].name;
    report.index = static_cast<int64_t>(i) + 1;
    report.units = static_cast<int64_t>(su.size());
    d.unit = &su[i];
    d.y = run_all(tu[i].forward, d.x_fp);
    d.tail = [&tu, i](const torch::Tensor& x) {
      torch::Tensor h = x;
      for (size_t j = i + 1; j < tu.size(); ++j) h = tu[j].forward(h);
      return h;
    };
    const int64_t m = std::min(kErrorImages, images.size(0));  // == the first chunk of run_all
    const auto error = [&](const torch::Tensor& y_hat) {
      return reconstruction_error(y_hat.slice(0, 0, m), d.y.slice(0, 0, m)).item<double>();
    };
    std::vector<Rounded> layers;
    for (quant::QuantizedLayer* layer : unit_layers(student, su[i])) {
      TORCH_CHECK(layer->quant_options().top_bits() == layer->weight_bits(), "ptq: a layer stores ",
                  layer->quant_options().top_bits(), "-bit codes for ", layer->weight_bits(),
                  "-bit weights; build the student with top_bits equal to its weight bits");
      layers.push_back({layer,
                        std::make_unique<quant::AdaRound>(layer->latent_weight(), layer->weight_step(),
                                                          quant::signed_range(layer->weight_bits())),
                        layer->weight_codes().to(torch::kFloat)});
    }
    report.layers = static_cast<int64_t>(layers.size());
    report.error_before = error(run_all(su[i].forward, d.x_q.slice(0, 0, m)));
    if (!layers.empty()) UnitTrainer(layers, o, gen).run(d);
    report.changed = changed_share(layers);
    d.x_q = run_all(su[i].forward, d.x_q);  // the next unit's input, and this one's error after
    report.error_after = error(d.x_q);
    d.x_fp = d.y;
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress) progress(report);
    reports.push_back(report);
  }
  return reports;
}

} // namespace zsq::trainers
