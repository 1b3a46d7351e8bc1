#include "models/mixed.h"

#include "framework/errors.h"
#include "framework/quant/layers.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace zsq::models {

namespace {

bool varies(const std::vector<int64_t>& v) { return std::adjacent_find(v.begin(), v.end(), std::not_equal_to<>()) != v.end(); }

int64_t macs_of(const MixLayer& l) {
  const std::vector<int64_t>& in = l.layer->last_input_sizes();
  TORCH_CHECK(!in.empty(), "layer '", l.name, "' saw no input");
  if (auto* conv = dynamic_cast<quant::QConv2dImpl*>(l.layer)) {
    const auto& o = conv->options;
    TORCH_CHECK(in.size() == 4, "layer '", l.name, "': expected an N×C×H×W input");
    const int64_t h = (in[2] + 2 * o.padding() - o.kernel_size()) / o.stride() + 1;
    const int64_t w = (in[3] + 2 * o.padding() - o.kernel_size()) / o.stride() + 1;
    return l.weights * h * w;  // each weight is used once per output position
  }
  return l.weights;
}

} // namespace

std::vector<MixLayer> mix_layers(torch::nn::Module& student, const std::vector<int64_t>& input_shape) {
  TORCH_CHECK(input_shape.size() == 3, "mix_layers: the input shape must be C,H,W");
  auto* classifier = dynamic_cast<ClassifierImpl*>(&student);
  TORCH_CHECK(classifier, "mixed precision: the student is not a zoo classifier");
  const std::vector<int64_t> bits = model_bits(student);
  TORCH_CHECK(!bits.empty(), "mixed precision needs a quantized student");
  const bool was_training = student.is_training();
  set_bits(student, *std::max_element(bits.begin(), bits.end()));
  student.eval();
  {
    torch::NoGradGuard no_grad;
    std::vector<int64_t> shape{1};
    shape.insert(shape.end(), input_shape.begin(), input_shape.end());
    classifier->forward(torch::zeros(shape));
  }
  student.train(was_training);
  std::vector<MixLayer> out;
  for (const LayerPair& p : pair_layers(student)) {
    MixLayer l;
    l.name = p.name;
    l.layer = p.layer;
    l.bn = p.bn;
    const torch::Tensor& w = dynamic_cast<quant::QConv2dImpl*>(p.layer) ? dynamic_cast<quant::QConv2dImpl*>(p.layer)->weight
                                                                        : dynamic_cast<quant::QLinearImpl*>(p.layer)->weight;
    l.weights = w.numel();
    l.channels = w.size(0);
    l.macs = macs_of(l);
    l.free = varies(p.layer->quant_options().wbits()) || varies(p.layer->quant_options().abits());
    out.push_back(l);
  }
  return out;
}

Mix uniform_mix(const std::vector<MixLayer>& layers, int64_t b) { return Mix(layers.size(), LayerBits{b, b}); }

void set_mix(const std::vector<MixLayer>& layers, const Mix& mix) {
  TORCH_CHECK(mix.size() == layers.size(), "a mix of ", mix.size(), " layers for a model with ", layers.size(),
              " quantized layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i].layer->set_layer_bits(mix[i].w, mix[i].a);
    if (layers[i].bn) layers[i].bn->set_bits(mix[i].w);
  }
}

MixCost mix_cost(const std::vector<MixLayer>& layers, const Mix& mix) {
  TORCH_CHECK(mix.size() == layers.size(), "a mix of ", mix.size(), " layers for ", layers.size());
  MixCost c;
  double weights = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& o = layers[i].layer->quant_options();
    const int64_t wb = o.wbits()[o.index_of(mix[i].w)], ab = o.abits()[o.index_of(mix[i].a)];
    // Packed codes, and per output channel three floats (weight step, folded scale and bias).
    c.bytes += std::ceil(static_cast<double>(layers[i].weights) * wb / 8.0) + 12.0 * layers[i].channels;
    c.mean_wbits += static_cast<double>(layers[i].weights) * wb;
    c.bops += static_cast<double>(layers[i].macs) * wb * ab;
    weights += static_cast<double>(layers[i].weights);
  }
  c.mean_wbits /= weights;
  return c;
}

std::string mix_text(const Mix& mix) {
  std::ostringstream s;
  for (size_t i = 0; i < mix.size(); ++i) {
    s << (i ? "," : "") << mix[i].w;
    if (mix[i].a != mix[i].w) s << "/" << mix[i].a;
  }
  return s.str();
}

Mix parse_mix(const std::string& text, const std::vector<MixLayer>& layers, const std::vector<int64_t>& model_bits) {
  Mix mix;
  std::stringstream in(text);
  std::string item;
  const auto parse_bits = [&](const std::string& s, const std::string& entry) {
    size_t used = 0;
    int64_t b = -1;
    try {
      b = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ZSQ_CHECK_OPTION(used == s.size() && !s.empty() &&
                    std::find(model_bits.begin(), model_bits.end(), b) != model_bits.end(),
                "mix entry ", mix.size() + 1, " '", entry, "': expected one of the model's bit-widths (",
                bits_text(model_bits), "), or w/a");
    return b;
  };
  while (std::getline(in, item, ',')) {
    const size_t slash = item.find('/');
    const int64_t w = parse_bits(item.substr(0, slash), item);
    const int64_t a = slash == std::string::npos ? w : parse_bits(item.substr(slash + 1), item);
    mix.push_back({w, a});
  }
  if (mix.size() == 1 && layers.size() > 1) mix.assign(layers.size(), mix.front());  // "3": every layer
  ZSQ_CHECK_OPTION(mix.size() == layers.size(), "--mix '", text, "' has ", mix.size(), " entries; the model has ",
              layers.size(), " quantized layers");
  return mix;
}

Classifier extract_mixed(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                         const std::vector<MixLayer>& layers, const Mix& mix) {
  set_mix(layers, mix);
  // The code type follows the widest weights the mix uses.
  int64_t code_bits = mix.front().w, widest = -1;
  for (const LayerBits& l : mix) {
    const auto& wbits = config.middle_wbits();
    const int64_t wb = wbits[std::find(config.bits.begin(), config.bits.end(), l.w) - config.bits.begin()];
    if (wb > widest) widest = wb, code_bits = l.w;
  }
  return extract_as_set(student, spec, config, code_bits);
}

} // namespace zsq::models
