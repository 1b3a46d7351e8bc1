#include "models/quant_factory.h"

#include "framework/quant/layers.h"
#include "framework/model_file.h"
#include "models/zoo.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <sstream>

namespace zsq::models {

using quant::QuantLayerOptions;

void StudentConfig::check() const {
  TORCH_CHECK(!bits.empty(), "the student needs at least one bit-width");
  TORCH_CHECK(wbits.empty() || wbits.size() == bits.size(), "--wbits must list one value per --bits entry (",
              bits.size(), "), got ", wbits.size());
  TORCH_CHECK(abits.empty() || abits.size() == bits.size(), "--abits must list one value per --bits entry (",
              bits.size(), "), got ", abits.size());
  for (const int64_t b : {first_bits, last_bits}) {
    TORCH_CHECK(b == kSameBits || (b >= 2 && b <= 16), "first/last layer bits must be in [2, 16] or 'same', got ", b);
  }
  TORCH_CHECK(input_bits == kSameBits || (input_bits >= 2 && input_bits <= 16),
              "input bits must be in [2, 16] or 'same', got ", input_bits);
  for (const int64_t b : bits) TORCH_CHECK(b >= 2 && b <= top_bits, "bits must be in [2, top bits = ", top_bits, "], got ", b);
  for (const int64_t b : wbits) TORCH_CHECK(b >= 2 && b <= top_bits, "wbits must be in [2, top bits = ", top_bits, "], got ", b);
  for (const int64_t b : abits) TORCH_CHECK(b >= 2 && b <= 16, "abits must be in [2, 16], got ", b);
}

namespace {
// A layer's bits at every model bit-width: its role's fixed bits, or the middle layers' (`middle`).
std::vector<int64_t> role_bits(const StudentConfig& c, LayerRole role, const std::vector<int64_t>& middle) {
  const int64_t fixed = role == LayerRole::kFirst ? c.first_bits
                        : role == LayerRole::kLast ? c.last_bits
                                                   : StudentConfig::kSameBits;
  return fixed == StudentConfig::kSameBits ? middle : std::vector<int64_t>(c.bits.size(), fixed);
}
} // namespace

std::vector<int64_t> StudentConfig::layer_wbits(LayerRole role) const { return role_bits(*this, role, middle_wbits()); }
std::vector<int64_t> StudentConfig::layer_abits(LayerRole role) const {
  if (role == LayerRole::kFirst && input_bits != kSameBits) return std::vector<int64_t>(bits.size(), input_bits);
  return role_bits(*this, role, middle_abits());
}

std::string StudentConfig::first_last_text() const {
  const auto one = [](int64_t b) { return b == kSameBits ? std::string("same") : std::to_string(b); };
  return first_bits == last_bits ? one(first_bits) : one(first_bits) + "," + one(last_bits);
}

namespace {
// "same" -> kSameBits, "N" -> N in [2, 16]; anything else -> nullopt.
std::optional<int64_t> parse_layer_bits(const std::string& part) {
  if (part == "same") return StudentConfig::kSameBits;
  size_t used = 0;
  int64_t b = -1;
  try {
    b = std::stoll(part, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != part.size() || b < 2 || b > 16) return std::nullopt;
  return b;
}
} // namespace

std::pair<int64_t, int64_t> parse_first_last_bits(const std::string& text) {
  const auto one = [&](const std::string& part) -> int64_t {
    const std::optional<int64_t> b = parse_layer_bits(part);
    TORCH_CHECK(b, "--first-last-bits takes N, 'same' or FIRST,LAST (each N in [2, 16] or 'same'), got '", text, "'");
    return *b;
  };
  const size_t comma = text.find(',');
  if (comma == std::string::npos) {
    const int64_t b = one(text);
    return {b, b};
  }
  return {one(text.substr(0, comma)), one(text.substr(comma + 1))};
}

int64_t parse_input_bits(const std::string& text) {
  const std::optional<int64_t> b = parse_layer_bits(text);
  TORCH_CHECK(b, "--input-bits takes N in [2, 16] or 'same', got '", text, "'");
  return *b;
}

QuantFactory::QuantFactory(StudentConfig config) : config_(std::move(config)) { config_.check(); }

QuantLayerOptions QuantFactory::options_for(LayerRole role) const {
  QuantLayerOptions o;
  o.bits(config_.bits).nesting(config_.nesting);
  o.wbits(config_.layer_wbits(role)).abits(config_.layer_abits(role));
  o.top_bits(std::max(config_.top_bits, *std::max_element(o.wbits().begin(), o.wbits().end())));
  if (role == LayerRole::kFirst) o.input_bounds(config_.input_range);
  o.input_border(config_.input_border);
  return o;
}

torch::nn::AnyModule QuantFactory::conv2d(const ConvSpec& s) const {
  return torch::nn::AnyModule(quant::QConv2d(quant::QConv2dOptions(s.in_channels, s.out_channels, s.kernel)
                                                 .stride(s.stride)
                                                 .padding(s.padding)
                                                 .groups(s.groups)
                                                 .bias(s.bias)
                                                 .quant(options_for(s.role))));
}

torch::nn::AnyModule QuantFactory::linear(const LinearSpec& s) const {
  return torch::nn::AnyModule(
      quant::QLinear(quant::QLinearOptions(s.in_features, s.out_features).bias(s.bias).quant(options_for(s.role))));
}

torch::nn::AnyModule QuantFactory::batch_norm(int64_t num_features) const {
  return torch::nn::AnyModule(quant::SwitchableBatchNorm2d(num_features, config_.bits));
}

namespace {

std::vector<quant::BitSwitchable*> switchables(const torch::nn::Module& model) {
  std::vector<quant::BitSwitchable*> out;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* s = dynamic_cast<quant::BitSwitchable*>(m.get())) out.push_back(s);
  }
  return out;
}

std::vector<quant::QuantizedLayer*> quantized_layers(const torch::nn::Module& model) {
  std::vector<quant::QuantizedLayer*> out;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* q = dynamic_cast<quant::QuantizedLayer*>(m.get())) out.push_back(q);
  }
  return out;
}

} // namespace

std::vector<std::pair<std::string, torch::Tensor>> top_weight_codes(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules()) {
    if (auto* q = dynamic_cast<quant::QuantizedLayer*>(item.value().get())) {
      out.emplace_back(item.key(), q->weight_codes_at(q->quant_options().top_bits()));
    }
  }
  return out;
}

double changed_code_share(const torch::nn::Module& model,
                          const std::vector<std::pair<std::string, torch::Tensor>>& start_codes) {
  std::map<std::string, torch::Tensor> now;
  for (const auto& [name, t] : top_weight_codes(model)) now.emplace(name, t);
  int64_t changed = 0, total = 0;
  for (const auto& [name, start] : start_codes) {
    const auto it = now.find(name);
    TORCH_CHECK(it != now.end() && it->second.sizes() == start.sizes(), "the start codes of layer '", name,
                "' do not fit the student");
    changed += it->second.ne(start).sum().item<int64_t>();
    total += start.numel();
  }
  return total > 0 ? static_cast<double>(changed) / static_cast<double>(total) : 0.0;
}

void set_bits(const torch::nn::Module& model, int64_t b) {
  const auto all = switchables(model);
  TORCH_CHECK(!all.empty(), "set_bits: the model has no quantized layers (is it an FP32 model?)");
  for (auto* s : all) s->set_bits(b);
}

std::vector<int64_t> model_bits(const torch::nn::Module& model) {
  const auto layers = quantized_layers(model);
  return layers.empty() ? std::vector<int64_t>{} : layers.front()->quant_options().bits();
}

std::vector<double> pixel_input_range(const std::vector<double>& mean, const std::vector<double>& std) {
  TORCH_CHECK(!mean.empty() && mean.size() == std.size(), "pixel input range: ", mean.size(), " means and ", std.size(),
              " standard deviations");
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t c = 0; c < mean.size(); ++c) {
    TORCH_CHECK(std[c] > 0 && std::isfinite(std[c]) && std::isfinite(mean[c]), "pixel input range: channel ", c,
                " has mean ", mean[c], " and standard deviation ", std[c]);
    lo = std::min(lo, -mean[c] / std[c]);
    hi = std::max(hi, (1.0 - mean[c]) / std[c]);
  }
  return {lo, hi};
}

std::vector<torch::Tensor> fixed_input_steps(const torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (auto* layer : quantized_layers(model)) {
    if (layer->input_fixed()) out.insert(out.end(), layer->input_steps().begin(), layer->input_steps().end());
  }
  return out;
}

namespace {

// What calibrate() needs of the reference network on the calibration images, by BatchNorm name: the
// input moments of each BatchNorm, or (align) its normalized input itself.
struct ReferenceTaps {
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> moments;
  std::map<std::string, torch::Tensor> targets;
};

ReferenceTaps reference_taps(torch::nn::Module& reference, const torch::Tensor& images, bool align) {
  // Moments always; the normalized inputs (the size of the images' activations) only when aligning.
  auto* ref = dynamic_cast<ClassifierImpl*>(&reference);
  TORCH_CHECK(ref, "calibrate: the reference is not a zoo classifier");
  ReferenceTaps taps;
  const bool ref_training = ref->is_training();
  ref->eval();
  set_bn_taps(*ref, true);
  try {
    ref->forward(images);
    for (const auto& [name, bn] : batch_norms(*ref)) {
      TORCH_CHECK(bn->tap_mean().defined(), "calibrate: the reference's BatchNorm '", name, "' saw no input");
      taps.moments[name] = {bn->tap_mean().detach(), bn->tap_var().detach()};
      if (align) {
        taps.targets[name] = (bn->tap_input().detach() - bn->running_mean.view({1, -1, 1, 1})) /
                             (bn->running_var.view({1, -1, 1, 1}) + bn->options.eps()).sqrt();
      }
    }
  } catch (...) {
    set_bn_taps(*ref, false);
    ref->train(ref_training);
    throw;
  }
  set_bn_taps(*ref, false);
  ref->train(ref_training);
  return taps;
}

} // namespace

void calibrate(torch::nn::Module& student, const torch::Tensor& images, const std::vector<int64_t>& bn_bits,
               torch::nn::Module* reference, bool activation_steps, const std::vector<BnEstimate>& estimates,
               double momentum) {
  const auto layers = quantized_layers(student);
  TORCH_CHECK(!layers.empty(), "calibrate: the model has no quantized layers");
  TORCH_CHECK(images.dim() == 4 && images.size(0) > 0, "calibrate: expected a non-empty N×C×H×W batch, got ",
              images.sizes());
  const bool was_training = student.is_training();
  student.eval();
  torch::NoGradGuard no_grad;
  auto* classifier = dynamic_cast<ClassifierImpl*>(&student);
  TORCH_CHECK(classifier, "calibrate: the student is not a zoo classifier");
  const std::vector<int64_t> bits = model_bits(student);
  for (const int64_t b : bn_bits) {
    TORCH_CHECK(std::find(bits.begin(), bits.end(), b) != bits.end(), "BatchNorm re-estimation at ", b,
                " bits: the model has no such bit-width");
  }
  TORCH_CHECK(estimates.size() == 1 || estimates.size() == bn_bits.size(), "calibrate: ", estimates.size(),
              " BatchNorm estimates for ", bn_bits.size(), " bit-widths (give one, or one per bit-width)");
  const auto estimate_at = [&](int64_t b) {
    const size_t i = std::find(bn_bits.begin(), bn_bits.end(), b) - bn_bits.begin();
    return estimates.size() == 1 ? estimates.front() : estimates[i];
  };
  const bool relative = std::any_of(bn_bits.begin(), bn_bits.end(),
                                    [&](int64_t b) { return estimate_at(b) != BnEstimate::kAbsolute; });
  TORCH_CHECK(!relative || reference, "calibrate: shift and align BatchNorm estimates need a reference network");
  std::vector<std::pair<std::string, quant::SwitchableBatchNorm2dImpl*>> norms;
  for (const auto& item : student.named_modules("", /*include_self=*/false)) {
    if (auto* n = item.value()->as<quant::SwitchableBatchNorm2dImpl>()) norms.emplace_back(item.key(), n);
  }
  ReferenceTaps ref;
  if (relative) {
    const bool align = std::any_of(bn_bits.begin(), bn_bits.end(),
                                   [&](int64_t b) { return estimate_at(b) == BnEstimate::kAlign ||
                                                           estimate_at(b) == BnEstimate::kCenter; });
    ref = reference_taps(*reference, images, align);
    for (const auto& [name, n] : norms) {
      TORCH_CHECK(ref.moments.count(name), "calibrate: the reference has no BatchNorm '", name, "'");
    }
  }
  const auto set_modes = [&](bool calibrating, bool reestimating, BnEstimate estimate) {
    for (auto* layer : layers) layer->set_calibrating(calibrating && activation_steps);
    for (auto& [name, n] : norms) {
      n->set_estimate_momentum(reestimating ? momentum : 1);
      if (reestimating && (estimate == BnEstimate::kAlign || estimate == BnEstimate::kCenter)) {
        n->set_aligning(ref.targets.at(name), /*fit_slope=*/estimate == BnEstimate::kAlign);
      } else if (reestimating && estimate == BnEstimate::kShift) {
        n->set_reestimating(true, ref.moments[name].first, ref.moments[name].second);
      } else {
        n->set_reestimating(reestimating);
      }
    }
  };
  try {
    for (const int64_t b : bits) {
      const bool reestimate = std::find(bn_bits.begin(), bn_bits.end(), b) != bn_bits.end();
      if (!activation_steps && !reestimate) continue;
      set_bits(student, b);
      set_modes(true, reestimate, reestimate ? estimate_at(b) : BnEstimate::kAbsolute);
      classifier->forward(images);
    }
  } catch (...) {
    set_modes(false, false, BnEstimate::kAbsolute);
    throw;
  }
  set_modes(false, false, BnEstimate::kAbsolute);
  set_bits(student, bits.front());
  student.train(was_training);
}

void init_student(torch::nn::Module& student, torch::nn::Module& teacher, const torch::Tensor& images,
                  const std::vector<int64_t>& bn_bits, const std::vector<BnEstimate>& estimates,
                  const QuantizerInit& init) {
  std::map<std::string, torch::Tensor> source;
  for (const auto& [name, t] : named_state(teacher)) source[name] = t;
  std::map<std::string, bool> used;
  std::vector<std::string> problems;
  // Quantizer state has no FP32 counterpart.
  static const std::regex quant_state(R"((^|\.)(weight_step|act_step_b\d+|act_border_b\d+|act_ready_b\d+|input_signed)$)");
  // Per-bit BatchNorm: "<prefix>.b<k>.<leaf>" comes from "<prefix>.<leaf>".
  static const std::regex per_bit(R"(^(.*)\.b\d+\.([^.]+)$)");
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : named_state(student)) {
    if (std::regex_search(name, quant_state)) continue;
    std::string from = name;
    std::smatch m;
    if (!source.count(from) && std::regex_match(name, m, per_bit)) from = m[1].str() + "." + m[2].str();
    const auto it = source.find(from);
    if (it == source.end()) {
      problems.push_back("student tensor '" + name + "' has no counterpart in the teacher");
      continue;
    }
    if (it->second.sizes() != t.sizes()) {
      std::ostringstream msg;
      msg << "'" << name << "': student shape " << t.sizes() << ", teacher '" << from << "' shape "
          << it->second.sizes();
      problems.push_back(msg.str());
      continue;
    }
    t.copy_(it->second);
    used[from] = true;
  }
  for (const auto& [name, t] : source) {
    if (!used.count(name)) problems.push_back("teacher tensor '" + name + "' has no place in the student");
  }
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "the teacher does not fit the student (" << problems.size() << " problems):";
    for (const auto& p : problems) msg << "\n  " << p;
    TORCH_CHECK(false, msg.str());
  }
  for (auto* layer : quantized_layers(student)) layer->init_weight_step(init.weight_init);
  calibrate(student, images, bn_bits, &teacher, /*activation_steps=*/true, estimates);
}

} // namespace zsq::models
