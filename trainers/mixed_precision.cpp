#include "trainers/mixed_precision.h"

#include "framework/errors.h"
#include "framework/h5.h"
#include "framework/quant/layers.h"
#include "generators/networks.h"
#include "trainers/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace zsq::trainers {

using models::Mix;
using models::MixLayer;

BnAdapt parse_bn_adapt(const std::string& name) {
  if (name == "keep") return BnAdapt::kKeep;
  if (name == "relative") return BnAdapt::kRelative;
  if (name == "absolute") return BnAdapt::kAbsolute;
  throw OptionError("--mix-bn must be keep, relative or absolute, got '" + name + "'");
}

const char* bn_adapt_name(BnAdapt mode) {
  return mode == BnAdapt::kKeep ? "keep" : mode == BnAdapt::kRelative ? "relative" : "absolute";
}

BnSnapshot::BnSnapshot(torch::nn::Module& module) {
  for (const auto& item : module.named_buffers()) {
    const std::string& name = item.key();
    if (name.find("running_mean") != std::string::npos || name.find("running_var") != std::string::npos) {
      saved_.emplace_back(item.value(), item.value().detach().clone());
    }
  }
}

void BnSnapshot::restore() {
  torch::NoGradGuard no_grad;
  for (auto& [live, copy] : saved_) live.copy_(copy);
}

MixedPrecision::MixedPrecision(torch::nn::Module& student, std::vector<MixLayer> layers, torch::Tensor images,
                               torch::Tensor reference_logits)
    : student_(student), layers_(std::move(layers)), images_(std::move(images)) {
  TORCH_CHECK(images_.dim() == 4 && images_.size(0) > 1, "mixed precision: expected N×C×H×W images (N > 1), got ",
              images_.sizes());
  TORCH_CHECK(reference_logits.dim() == 2 && reference_logits.size(0) == images_.size(0),
              "mixed precision: reference logits ", reference_logits.sizes(), " for ", images_.size(0), " images");
  reference_log_probs_ = torch::log_softmax(reference_logits.detach().to(torch::kFloat64), 1);
}

torch::Tensor MixedPrecision::forward() {
  auto* classifier = dynamic_cast<models::ClassifierImpl*>(&student_);
  TORCH_CHECK(classifier, "mixed precision: the student is not a zoo classifier");
  student_.eval();
  torch::NoGradGuard no_grad;
  return classifier->forward(images_);
}

double MixedPrecision::kl(const Mix& mix) {
  models::set_mix(layers_, mix);
  const torch::Tensor log_q = torch::log_softmax(forward().to(torch::kFloat64), 1);
  // KL(reference ‖ student), mean over images.
  return (reference_log_probs_.exp() * (reference_log_probs_ - log_q)).sum(1).mean().item<double>();
}

const std::vector<std::pair<torch::Tensor, torch::Tensor>>& MixedPrecision::uniform_moments(int64_t b) {
  auto it = moments_.find(b);
  if (it != moments_.end()) return it->second;
  models::set_mix(layers_, models::uniform_mix(layers_, b));
  for (const MixLayer& l : layers_) {
    if (l.bn) l.bn->norm_at(b)->set_tap(true);
  }
  forward();
  std::vector<std::pair<torch::Tensor, torch::Tensor>> m;
  for (const MixLayer& l : layers_) {
    if (!l.bn) {
      m.emplace_back();
      continue;
    }
    auto norm = l.bn->norm_at(b);
    // The formula set_reestimating applies to the mix's input, so that a layer whose input the mix leaves
    // as it is keeps its statistics bit for bit.
    const auto [var, mean] = torch::var_mean(norm->tap_input().detach(), {0, 2, 3}, /*unbiased=*/false);
    m.emplace_back(mean, var);
    norm->set_tap(false);
  }
  return moments_[b] = std::move(m);
}

void MixedPrecision::adapt_batch_norms(const Mix& mix, BnAdapt bn) {
  if (bn == BnAdapt::kRelative) {
    for (const models::LayerBits& l : mix) uniform_moments(l.w);
  }
  models::set_mix(layers_, mix);
  if (bn == BnAdapt::kKeep) return;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].bn) continue;
    if (bn == BnAdapt::kRelative) {
      const auto& [mean, var] = moments_.at(mix[i].w)[i];
      layers_[i].bn->set_reestimating(true, mean, var);
    } else {
      layers_[i].bn->set_reestimating(true);
    }
  }
  try {
    forward();
  } catch (...) {
    for (const MixLayer& l : layers_) {
      if (l.bn) l.bn->set_reestimating(false);
    }
    throw;
  }
  for (const MixLayer& l : layers_) {
    if (l.bn) l.bn->set_reestimating(false);
  }
}

Sensitivity MixedPrecision::sensitivity(BnAdapt bn) {
  Sensitivity s;
  s.bits = models::model_bits(student_);
  const int64_t top = *std::max_element(s.bits.begin(), s.bits.end());
  const Mix base = models::uniform_mix(layers_, top);
  s.base = kl(base);
  BnSnapshot snapshot(student_);
  for (size_t i = 0; i < layers_.size(); ++i) {
    s.layers.push_back(layers_[i].name);
    std::vector<double> row(s.bits.size(), s.base);
    for (size_t k = 0; k < s.bits.size(); ++k) {
      if (!layers_[i].free || s.bits[k] == top) continue;
      Mix mix = base;
      mix[i] = {s.bits[k], s.bits[k]};
      adapt_batch_norms(mix, bn);
      row[k] = kl(mix);
      snapshot.restore();
    }
    s.kl.push_back(row);
  }
  models::set_mix(layers_, base);
  return s;
}

std::pair<Budget, double> parse_budget(const std::string& text) {
  const size_t eq = text.find('=');
  const std::string usage = "--budget: expected size=40KB, wbits=3.5 or bops=1.2G, got '" + text + "'";
  if (eq == std::string::npos) throw OptionError(usage);
  const std::string kind = text.substr(0, eq), value = text.substr(eq + 1);
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(value, &used);
  } catch (const std::exception&) {
    throw OptionError(usage);
  }
  std::string unit = value.substr(used);
  double scale = 1;
  if (kind == "size") {
    if (unit == "" || unit == "B") scale = 1;
    else if (unit == "KB") scale = 1e3;
    else if (unit == "MB") scale = 1e6;
    else if (unit == "KiB") scale = 1024;
    else if (unit == "MiB") scale = 1024 * 1024;
    else throw OptionError("--budget size: unit must be B, KB, MB, KiB or MiB, got '" + unit + "'");
  } else if (kind == "bops") {
    if (unit == "") scale = 1;
    else if (unit == "K") scale = 1e3;
    else if (unit == "M") scale = 1e6;
    else if (unit == "G") scale = 1e9;
    else throw OptionError("--budget bops: unit must be K, M or G, got '" + unit + "'");
  } else if (kind != "wbits" || !unit.empty()) {
    throw OptionError(usage);
  }
  if (!(v > 0) || !std::isfinite(v)) throw OptionError("--budget: the value must be positive, got '" + value + "'");
  return {kind == "size" ? Budget::kBytes : kind == "bops" ? Budget::kBops : Budget::kMeanWeightBits, v * scale};
}

double budget_value(Budget kind, const models::MixCost& cost) {
  return kind == Budget::kBytes ? cost.bytes : kind == Budget::kBops ? cost.bops : cost.mean_wbits;
}

Mix complete_mix(const std::vector<MixLayer>& layers, Mix mix) {
  TORCH_CHECK(mix.size() == layers.size(), "complete_mix: ", mix.size(), " entries for ", layers.size(), " layers");
  int64_t last = -1;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].free) {
      last = static_cast<int64_t>(i);
    } else if (last >= 0) {
      mix[i] = mix[last];
    }
  }
  TORCH_CHECK(last >= 0, "mixed precision: no layer's bits vary with the model bit-width; nothing to mix");
  const auto first_free = std::find_if(layers.begin(), layers.end(), [](const MixLayer& l) { return l.free; });
  for (size_t i = 0; layers.begin() + i != first_free; ++i) mix[i] = mix[first_free - layers.begin()];
  return mix;
}

std::vector<FrontPoint> pareto_front(const std::vector<MixLayer>& layers, const Sensitivity& s, Budget kind) {
  TORCH_CHECK(s.layers.size() == layers.size(), "the sensitivity table has ", s.layers.size(), " layers, the model ",
              layers.size());
  // A partial mix over the layers so far: (cost, KL increase), with a back pointer to rebuild it.
  struct State {
    double cost, loss;
    int64_t parent;
    size_t choice;
  };
  const int64_t top = *std::max_element(s.bits.begin(), s.bits.end());
  std::vector<std::vector<State>> stages;
  std::vector<State> current{{0.0, 0.0, -1, 0}};
  std::vector<size_t> free_layers;
  // Cost is additive per layer except for the mean weight bits, which are additive in weight-bits.
  double total_weights = 0;
  for (const MixLayer& l : layers) total_weights += static_cast<double>(l.weights);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].free) continue;
    free_layers.push_back(i);
    std::vector<State> next;
    for (size_t k = 0; k < s.bits.size(); ++k) {
      Mix one = models::uniform_mix(layers, s.bits[k]);
      const models::MixCost c = models::mix_cost({layers[i]}, {one[i]});
      const double cost = kind == Budget::kMeanWeightBits
                              ? c.mean_wbits * static_cast<double>(layers[i].weights) / total_weights
                              : budget_value(kind, c);
      const double loss = s.bits[k] == top ? 0.0 : std::max(0.0, s.kl[i][k] - s.base);
      for (size_t j = 0; j < current.size(); ++j) {
        next.push_back({current[j].cost + cost, current[j].loss + loss, static_cast<int64_t>(j), k});
      }
    }
    std::sort(next.begin(), next.end(), [](const State& a, const State& b) {
      return a.cost < b.cost || (a.cost == b.cost && a.loss < b.loss);
    });
    std::vector<State> kept;
    for (const State& st : next) {
      if (kept.empty() || st.loss < kept.back().loss) kept.push_back(st);
    }
    stages.push_back(current);
    current = std::move(kept);
  }
  TORCH_CHECK(!free_layers.empty(), "mixed precision: no layer's bits vary with the model bit-width; nothing to mix");
  stages.push_back(current);
  std::vector<FrontPoint> front;
  for (size_t j = 0; j < current.size(); ++j) {
    Mix mix = models::uniform_mix(layers, top);
    int64_t at = static_cast<int64_t>(j);
    for (size_t f = free_layers.size(); f-- > 0;) {
      const State& st = stages[f + 1][at];
      mix[free_layers[f]] = {s.bits[st.choice], s.bits[st.choice]};
      at = st.parent;
    }
    FrontPoint p;
    p.mix = complete_mix(layers, mix);
    p.cost = models::mix_cost(layers, p.mix);
    p.predicted_kl = s.base + current[j].loss;
    front.push_back(std::move(p));
  }
  return front;
}

const FrontPoint& choose(const std::vector<FrontPoint>& front, Budget kind, double budget) {
  TORCH_CHECK(!front.empty(), "the Pareto front is empty");
  const FrontPoint* best = nullptr;
  for (const FrontPoint& p : front) {
    if (budget_value(kind, p.cost) <= budget && (!best || p.predicted_kl < best->predicted_kl)) best = &p;
  }
  ZSQ_CHECK_OPTION(best, "--budget: no mix fits ", budget, ": the cheapest costs ", budget_value(kind, front.front().cost));
  return *best;
}

torch::Tensor sample_checkpoint_generator(const std::string& checkpoint, int64_t num_classes,
                                          const std::vector<int64_t>& input_shape, const Normalization& norm,
                                          int64_t count, uint64_t seed) {
  TORCH_CHECK(count > 1, "--images must be at least 2, got ", count);
  const h5::File file = h5::File::open_read(checkpoint);
  std::map<std::string, torch::Tensor> state;
  for (const auto& [name, t] : read_group(file, std::string(models::kTrainingStateGroup) + "synthesizer/")) {
    if (name.rfind("generator.", 0) == 0) state.emplace(name.substr(10), t);
  }
  TORCH_CHECK(state.count("emb.weight") && state.count("l1.weight"), "'", checkpoint,
              "' holds no online generator (a run with --pool, or another recipe); pass --pool with synthetic images "
              "(zsq generate)");
  const int64_t latent = state.at("emb.weight").size(1);
  generators::GdfqGenerator generator(num_classes, latent, input_shape);
  if (state.count("dm.weight")) generator->add_mapping(latent);
  {
    torch::NoGradGuard no_grad;
    for (const auto& item : generator->named_parameters()) {
      TORCH_CHECK(state.count(item.key()) && state.at(item.key()).sizes() == item.value().sizes(), "'", checkpoint,
                  "': the generator tensor '", item.key(), "' is missing or has another shape");
      item.value().copy_(state.at(item.key()));
    }
    for (const auto& item : generator->named_buffers()) {
      if (state.count(item.key())) item.value().copy_(state.at(item.key()));
    }
  }
  generator->train();  // batch statistics, as GDFQ samples it
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<torch::Tensor> batches;
  const PixelClamp clamp(norm);
  for (int64_t done = 0; done < count; done += 64) {
    const int64_t n = std::min<int64_t>(64, count - done);
    const torch::Tensor y = torch::randint(num_classes, {n}, gen, torch::kInt64);
    const torch::Tensor z = at::randn({n, latent}, gen);
    batches.push_back(clamp(generator->forward(z, y)));
  }
  return torch::cat(batches);
}

} // namespace zsq::trainers
