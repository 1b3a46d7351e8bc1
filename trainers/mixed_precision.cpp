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

std::vector<std::pair<Budget, double>> parse_budgets(const std::string& text) {
  std::vector<std::pair<Budget, double>> out;
  size_t from = 0;
  while (true) {
    const size_t comma = text.find(',', from);
    out.push_back(parse_budget(text.substr(from, comma == std::string::npos ? std::string::npos : comma - from)));
    for (size_t k = 0; k + 1 < out.size(); ++k) {
      if (out[k].first == out.back().first) {
        throw OptionError("--budget: " + std::string(budget_name(out.back().first)) + " is given twice in '" + text + "'");
      }
    }
    if (comma == std::string::npos) break;
    from = comma + 1;
  }
  if (out.size() > 2) throw OptionError("--budget: at most two measures (e.g. size=100KB,bops=0.3G), got '" + text + "'");
  return out;
}

const char* budget_name(Budget kind) {
  return kind == Budget::kBytes ? "size" : kind == Budget::kBops ? "bops" : "wbits";
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

namespace {

// A partial mix over the free layers so far: its costs in the front's measure and the other one, its KL
// increase, and a back pointer to rebuild it.
struct State {
  double cost, cost2, loss;
  int64_t parent;
  size_t choice;
};

// The states no other state dominates in (cost, cost2, loss), cheapest first: sorted by cost, a state is
// dominated iff an earlier kept one has cost2 and loss no higher; `stair` holds, by cost2, the least loss
// of the kept states up to it (losses strictly falling as cost2 rises).
std::vector<State> non_dominated(std::vector<State> states) {
  std::sort(states.begin(), states.end(), [](const State& a, const State& b) {
    return a.cost != b.cost ? a.cost < b.cost : a.cost2 != b.cost2 ? a.cost2 < b.cost2 : a.loss < b.loss;
  });
  std::vector<State> kept;
  std::map<double, double> stair;
  for (const State& st : states) {
    auto it = stair.upper_bound(st.cost2);
    if (it != stair.begin() && std::prev(it)->second <= st.loss) continue;
    kept.push_back(st);
    for (it = stair.lower_bound(st.cost2); it != stair.end() && it->second >= st.loss;) it = stair.erase(it);
    stair[st.cost2] = st.loss;
  }
  return kept;
}

// Layer i's cost in `kind` at model bit-width b; the mean weight bits are additive as weight-bits over
// all weights.
double layer_cost(const std::vector<MixLayer>& layers, size_t i, int64_t b, Budget kind, double total_weights) {
  const models::MixCost c = models::mix_cost({layers[i]}, {models::LayerBits{b, b}});
  return kind == Budget::kMeanWeightBits ? c.mean_wbits * static_cast<double>(layers[i].weights) / total_weights
                                         : budget_value(kind, c);
}

} // namespace

std::vector<FrontPoint> pareto_front(const std::vector<MixLayer>& layers, const Sensitivity& s, Budget kind,
                                     std::optional<std::pair<Budget, double>> also) {
  TORCH_CHECK(s.layers.size() == layers.size(), "the sensitivity table has ", s.layers.size(), " layers, the model ",
              layers.size());
  const int64_t top = *std::max_element(s.bits.begin(), s.bits.end());
  double total_weights = 0;
  for (const MixLayer& l : layers) total_weights += static_cast<double>(l.weights);
  std::vector<size_t> free_layers;
  // The other measure: the fixed layers' part, and the least the free layers after each one can add.
  double fixed2 = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].free) free_layers.push_back(i);
    else if (also) fixed2 += layer_cost(layers, i, top, also->first, total_weights);
  }
  TORCH_CHECK(!free_layers.empty(), "mixed precision: no layer's bits vary with the model bit-width; nothing to mix");
  std::vector<double> least_after(free_layers.size() + 1, 0.0);
  for (size_t f = free_layers.size(); also && f-- > 0;) {
    double least = std::numeric_limits<double>::infinity();
    for (const int64_t b : s.bits) least = std::min(least, layer_cost(layers, free_layers[f], b, also->first, total_weights));
    least_after[f] = least_after[f + 1] + least;
  }
  std::vector<std::vector<State>> stages;
  std::vector<State> current{{0.0, 0.0, 0.0, -1, 0}};
  for (size_t f = 0; f < free_layers.size(); ++f) {
    const size_t i = free_layers[f];
    std::vector<State> next;
    for (size_t k = 0; k < s.bits.size(); ++k) {
      const double cost = layer_cost(layers, i, s.bits[k], kind, total_weights);
      const double cost2 = also ? layer_cost(layers, i, s.bits[k], also->first, total_weights) : 0.0;
      const double loss = s.bits[k] == top ? 0.0 : std::max(0.0, s.kl[i][k] - s.base);
      for (size_t j = 0; j < current.size(); ++j) {
        const State st{current[j].cost + cost, current[j].cost2 + cost2, current[j].loss + loss, static_cast<int64_t>(j), k};
        // Relative slack: the sums of the measure in another order may differ in the last bits.
        if (!also || fixed2 + st.cost2 + least_after[f + 1] <= also->second * (1 + 1e-12)) next.push_back(st);
      }
    }
    ZSQ_CHECK_OPTION(!next.empty(), "--budget: no mix fits ", budget_name(also->first), " ", also->second,
                     ": the cheapest costs ", fixed2 + least_after[0]);
    stages.push_back(std::move(current));
    current = non_dominated(std::move(next));
  }
  stages.push_back(current);
  // The (cost, KL) front of what is left: falling KL as the cost rises.
  std::vector<size_t> front_states;
  for (size_t j = 0; j < current.size(); ++j) {
    if (front_states.empty() || current[j].loss < current[front_states.back()].loss) front_states.push_back(j);
  }
  std::vector<FrontPoint> front;
  for (const size_t j : front_states) {
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
