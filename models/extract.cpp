#include "models/extract.h"
#include "models/extract_detail.h"

#include "framework/quant/bitplanes.h"
#include "framework/quant/integer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>

namespace zsq::models {

using quant::IntLayer;
using quant::IntLayerImpl;
using quant::IntLayerOptions;

namespace {

size_t bits_index(const StudentConfig& config, int64_t bits) {
  const auto it = std::find(config.bits.begin(), config.bits.end(), bits);
  TORCH_CHECK(it != config.bits.end(), "bit-width ", bits, " is not one of the model's (", bits_text(config.bits), ")");
  return static_cast<size_t>(it - config.bits.begin());
}

} // namespace

std::vector<LayerPair> pair_layers(torch::nn::Module& student) {
  std::vector<LayerPair> pairs;
  for (const auto& item : student.named_modules()) {
    torch::nn::Module* m = item.value().get();
    if (auto* conv = dynamic_cast<quant::QConv2dImpl*>(m)) {
      pairs.push_back({item.key(), conv, conv->bias, nullptr});
    } else if (auto* fc = dynamic_cast<quant::QLinearImpl*>(m)) {
      pairs.push_back({item.key(), fc, fc->bias, nullptr});
    } else if (auto* bn = dynamic_cast<quant::SwitchableBatchNorm2dImpl*>(m)) {
      TORCH_CHECK(!pairs.empty() && !pairs.back().bn && dynamic_cast<quant::QConv2dImpl*>(pairs.back().layer),
                  "BatchNorm '", item.key(), "' does not follow a quantized convolution; cannot fold it");
      const int64_t channels = bn->current()->options.num_features();
      const int64_t out = dynamic_cast<quant::QConv2dImpl*>(pairs.back().layer)->options.out_channels();
      TORCH_CHECK(channels == out, "BatchNorm '", item.key(), "' has ", channels, " channels, the convolution '",
                  pairs.back().name, "' before it ", out);
      pairs.back().bn = bn;
    }
  }
  TORCH_CHECK(!pairs.empty(), "the model has no quantized layers");
  return pairs;
}

namespace detail {

Folded fold(const LayerPair& p) {
  torch::NoGradGuard no_grad;
  const auto& o = p.layer->quant_options();
  const int64_t wb = p.layer->weight_bits();
  Folded f;
  f.codes = p.layer->weight_codes();
  f.weight_step = p.layer->weight_step().detach().clone();
  f.shift = o.top_bits() - wb;
  f.offset = o.nesting() == quant::Nesting::kShift ? (int64_t(1) << f.shift) - 1 : 0;
  f.act_step = p.layer->input_step().detach().clone();
  const quant::QuantRange range = p.layer->input_range();
  f.act_range = torch::tensor({-range.qn, range.qp});
  if (p.layer->input_border().defined()) f.act_border = p.layer->input_border().detach().clone();
  const int64_t out = f.weight_step.numel();
  torch::Tensor gain = torch::ones({out}), shift = torch::zeros({out});
  if (p.bn) {
    const nn::BatchNorm2d bn = p.bn->current();
    gain = bn->weight / torch::sqrt(bn->running_var + bn->options.eps());
    shift = bn->bias - bn->running_mean * gain;
  }
  f.scale = f.act_step * f.weight_step / 2 * gain;
  f.bias = shift;
  if (p.layer_bias.defined()) f.bias = f.bias + p.layer_bias.detach() * gain;
  return f;
}

void fill(IntLayerImpl& layer, const Folded& f) {
  torch::NoGradGuard no_grad;
  layer.weight_codes.copy_(f.codes.to(layer.weight_codes.scalar_type()));
  layer.weight_step.copy_(f.weight_step);
  layer.weight_shift.fill_(f.shift);
  layer.weight_offset.fill_(f.offset);
  layer.act_step.copy_(f.act_step);
  layer.act_range.copy_(f.act_range);
  TORCH_CHECK(layer.act_border.defined() == f.act_border.defined(), "a layer's rounding border (input_border) is "
              "in ", f.act_border.defined() ? "the student only" : "the integer model only");
  if (f.act_border.defined()) layer.act_border.copy_(f.act_border);
  layer.scale.copy_(f.scale);
  layer.bias.copy_(f.bias);
}

IntLayerImpl& int_layer(const Classifier& model, const std::string& name) {
  auto modules = model->named_modules();
  TORCH_CHECK(modules.contains(name), "the integer model has no layer '", name, "'");
  auto* layer = dynamic_cast<IntLayerImpl*>(modules[name].get());
  TORCH_CHECK(layer, "'", name, "' is not an integer layer");
  return *layer;
}

} // namespace detail

using detail::fill;
using detail::fold;
using detail::Folded;
using detail::int_layer;

namespace {
void write_config(h5::File& file, const StudentConfig& c) {
  file.set_attr("model_bits", c.bits);
  file.set_attr("wbits", c.middle_wbits());
  file.set_attr("abits", c.middle_abits());
  // One integer (0: the middle layers' bits) when both layers agree, as files before per-layer values; else
  // [first, last].
  if (c.first_bits == c.last_bits) {
    file.set_attr("first_last_bits", c.first_bits);
  } else {
    file.set_attr("first_last_bits", std::vector<int64_t>{c.first_bits, c.last_bits});
  }
  if (c.input_bits != StudentConfig::kSameBits) file.set_attr("input_bits", c.input_bits);  // absent: same
  file.set_attr("top_bits", c.top_bits);
  file.set_attr("nesting", quant::nesting_name(c.nesting));
  if (!c.input_range.empty()) file.set_attr("input_range", c.input_range);
  if (c.input_border) file.set_attr("input_border", int64_t{1});  // absent: no borders
}

// The narrowest signed width (at least 2 bits) that holds every code.
int64_t code_width(const torch::Tensor& codes) {
  if (codes.numel() == 0) return 2;
  const int64_t lo = codes.min().item<int64_t>(), hi = codes.max().item<int64_t>();
  int64_t width = 2;
  while (width < 16 && (lo < -(int64_t(1) << (width - 1)) || hi >= (int64_t(1) << (width - 1)))) ++width;
  return width;
}

std::string precision_text(const StudentConfig& c, int64_t bits) {
  const size_t i = bits_index(c, bits);
  return "w" + std::to_string(c.middle_wbits()[i]) + "a" + std::to_string(c.middle_abits()[i]);
}

} // namespace

IntegerFactory::IntegerFactory(StudentConfig config, int64_t bits) : config_(std::move(config)) {
  config_.check();
  index_ = bits_index(config_, bits);
}

int64_t IntegerFactory::weight_bits(LayerRole role) const {
  return config_.layer_wbits(role)[index_];
}

torch::nn::AnyModule IntegerFactory::conv2d(const ConvSpec& s) const {
  return torch::nn::AnyModule(IntLayer(IntLayerOptions(s.in_channels, s.out_channels)
                                           .kernel_size(s.kernel)
                                           .stride(s.stride)
                                           .padding(s.padding)
                                           .groups(s.groups)
                                           .weight_bits(weight_bits(s.role))
                                           .input_border(config_.input_border)));
}

torch::nn::AnyModule IntegerFactory::linear(const LinearSpec& s) const {
  return torch::nn::AnyModule(
      IntLayer(IntLayerOptions(s.in_features, s.out_features).conv(false).weight_bits(weight_bits(s.role))
                   .input_border(config_.input_border)));
}

torch::nn::AnyModule IntegerFactory::batch_norm(int64_t) const {
  return torch::nn::AnyModule(torch::nn::Identity());
}

Classifier extract_fixed(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                         int64_t bits) {
  set_bits(student, bits);
  return extract_as_set(student, spec, config, bits);
}

Classifier extract_as_set(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                          int64_t code_bits) {
  Classifier model = build(spec, IntegerFactory(config, code_bits));
  for (const LayerPair& p : pair_layers(student)) {
    IntLayerImpl& layer = int_layer(model, p.name);
    TORCH_CHECK(p.layer->weight_bits() <= layer.options.weight_bits() || layer.options.weight_bits() > 8,
                "layer '", p.name, "' has ", p.layer->weight_bits(), "-bit weights, more than its integer codes hold");
    fill(layer, fold(p));
  }
  model->eval();
  return model;
}

void save_fixed(const std::string& path, const Classifier& model, const ModelMeta& meta, const StudentConfig& config,
                int64_t bits, const std::string& mix) {
  // Version 2: each layer's weight codes bit-packed (weight_codes_packed, uint8) at the narrowest signed
  // width that holds them (weight_code_bits: at most the layer's weight bits), so the file weighs what the
  // bits say; version 1 stored them as int8/int16.
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, tensor] : named_state(*model)) {
    const std::string suffix = "weight_codes";
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string prefix = name.substr(0, name.size() - suffix.size());
      const int64_t width = code_width(tensor);
      tensors.emplace_back(prefix + "weight_codes_packed", quant::pack_codes(tensor, width));
      tensors.emplace_back(prefix + "weight_code_bits", torch::tensor(width));
    } else {
      tensors.emplace_back(name, tensor);
    }
  }
  ModelMeta m = meta;
  m.precision = mix.empty() ? precision_text(config, bits) : "mixed " + mix;
  h5::atomic_write(path, [&](h5::File& file) {
    for (const auto& [name, tensor] : tensors) file.write_tensor(name, tensor);
    file.set_attr("format", std::string(kFixedFormat));
    file.set_attr("version", kExtractFormatVersion);
    write_meta_attrs(file, m);
    write_config(file, config);
    file.set_attr("bits", bits);
    if (!mix.empty()) file.set_attr("mix", mix);
  });
}

void save_vertical(const std::string& path, torch::nn::Module& student, const ModelSpec& spec,
                   const StudentConfig& config, const ModelMeta& meta) {
  TORCH_CHECK(!config.input_border, "the vertical-layered form holds no rounding borders (input_border); extract "
              "fixed-precision models (--bits)");
  TORCH_CHECK(config.nesting == quant::Nesting::kShift,
              "vertical-layered files need shift nesting (rounding does not give 1-bit enhance layers)");
  (void)spec;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  // Per bit-width: input quantizer and folded BatchNorm.
  for (const int64_t b : config.bits) {
    set_bits(student, b);
    for (const LayerPair& p : pair_layers(student)) {
      const Folded f = fold(p);
      const std::string suffix = "_b" + std::to_string(b);
      tensors.emplace_back(p.name + ".act_step" + suffix, f.act_step);
      tensors.emplace_back(p.name + ".act_range" + suffix, f.act_range);
      tensors.emplace_back(p.name + ".scale" + suffix, f.scale);
      tensors.emplace_back(p.name + ".bias" + suffix, f.bias);
    }
  }
  // Shared: the weights as a basic layer plus bit-planes, and the top step.
  for (const LayerPair& p : pair_layers(student)) {
    const auto& o = p.layer->quant_options();
    const int64_t lo = *std::min_element(o.wbits().begin(), o.wbits().end());
    const int64_t hi = *std::max_element(o.wbits().begin(), o.wbits().end());
    const quant::VerticalLayers v = quant::make_vertical_layers(p.layer->weight_codes_at(hi), hi, lo);
    tensors.emplace_back(p.name + ".weight_basic", v.basic.to(hi <= 8 ? torch::kInt8 : torch::kInt16));
    for (int64_t k = lo + 1; k <= hi; ++k) {
      tensors.emplace_back(p.name + ".weight_plane_b" + std::to_string(k), v.planes[k - lo - 1]);
    }
    tensors.emplace_back(p.name + ".weight_step", p.layer->weight_step().detach().clone());
    tensors.emplace_back(p.name + ".weight_top_bits", torch::tensor(o.top_bits()));
    tensors.emplace_back(p.name + ".weight_bits_range", torch::tensor({lo, hi}));
  }
  ModelMeta m = meta;
  m.precision = "vertical " + bits_text(config.bits);
  h5::atomic_write(path, [&](h5::File& file) {
    for (const auto& [name, tensor] : tensors) file.write_tensor(name, tensor);
    file.set_attr("format", std::string(kVerticalFormat));
    file.set_attr("version", kExtractFormatVersion);
    write_meta_attrs(file, m);
    write_config(file, config);
  });
}

void write_student(h5::File& file, const torch::nn::Module& student, const StudentConfig& config,
                   const ModelMeta& meta) {
  for (const auto& [name, tensor] : named_state(student)) file.write_tensor(name, tensor);
  ModelMeta m = meta;
  m.precision = "once-for-all " + bits_text(config.bits);
  file.set_attr("format", std::string(kStudentFormat));
  file.set_attr("version", kExtractFormatVersion);
  write_meta_attrs(file, m);
  write_config(file, config);
}

void save_student(const std::string& path, const torch::nn::Module& student, const StudentConfig& config,
                  const ModelMeta& meta) {
  h5::atomic_write(path, [&](h5::File& file) { write_student(file, student, config, meta); });
}


} // namespace zsq::models
