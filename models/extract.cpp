#include "models/extract.h"

#include "framework/quant/bitplanes.h"
#include "framework/quant/integer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
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

// A quantized layer of the student, with the BatchNorm that follows it.
struct LayerPair {
  std::string name;
  quant::QuantizedLayer* layer = nullptr;
  torch::Tensor layer_bias;  ///< undefined when the layer has none
  quant::SwitchableBatchNorm2dImpl* bn = nullptr;
};

// Every BatchNorm follows its convolution in module registration order, in
// every architecture of the zoo; the pairing is checked by channel count.
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

// The integer-layer buffers of one pair at the student's current bit-width.
struct Folded {
  torch::Tensor codes, weight_step, act_step, act_range, scale, bias;
  int64_t shift = 0, offset = 0;
};

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
                                           .weight_bits(weight_bits(s.role))));
}

torch::nn::AnyModule IntegerFactory::linear(const LinearSpec& s) const {
  return torch::nn::AnyModule(
      IntLayer(IntLayerOptions(s.in_features, s.out_features).conv(false).weight_bits(weight_bits(s.role))));
}

torch::nn::AnyModule IntegerFactory::batch_norm(int64_t) const {
  return torch::nn::AnyModule(torch::nn::Identity());
}

Classifier extract_fixed(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                         int64_t bits) {
  set_bits(student, bits);
  Classifier model = build(spec, IntegerFactory(config, bits));
  for (const LayerPair& p : pair_layers(student)) fill(int_layer(model, p.name), fold(p));
  model->eval();
  return model;
}

void save_fixed(const std::string& path, const Classifier& model, const ModelMeta& meta, const StudentConfig& config,
                int64_t bits) {
  const auto state = named_state(*model);
  ModelMeta m = meta;
  m.precision = precision_text(config, bits);
  h5::atomic_write(path, [&](h5::File& file) {
    for (const auto& [name, tensor] : state) file.write_tensor(name, tensor);
    file.set_attr("format", std::string(kFixedFormat));
    file.set_attr("version", kExtractFormatVersion);
    write_meta_attrs(file, m);
    write_config(file, config);
    file.set_attr("bits", bits);
  });
}

void save_vertical(const std::string& path, torch::nn::Module& student, const ModelSpec& spec,
                   const StudentConfig& config, const ModelMeta& meta) {
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

ExtractedFile read_extracted(const h5::File& file, bool allow_student) {
  ExtractedFile x;
  x.meta = read_meta_attrs(file);
  x.format = x.meta.format;
  if (allow_student) {
    TORCH_CHECK(x.format == kStudentFormat, "'", file.path(), "' is not a student checkpoint (format '", x.format,
                "'; expected '", kStudentFormat, "')");
  } else {
    TORCH_CHECK(x.format == kFixedFormat || x.format == kVerticalFormat, "'", file.path(),
                "' is not an extracted model (format '", x.format, "'; expected '", kFixedFormat, "' or '",
                kVerticalFormat, "')");
  }
  TORCH_CHECK(x.meta.version >= 1 && x.meta.version <= kExtractFormatVersion, "'", file.path(), "' has format version ",
              x.meta.version, "; this zsq reads versions 1..", kExtractFormatVersion);
  const auto need_int = [&](const char* key) {
    const auto v = file.attr_int(key);
    TORCH_CHECK(v, "'", file.path(), "' lacks the attribute '", key, "'");
    return *v;
  };
  const auto need_ints = [&](const char* key) {
    const auto v = file.attr_ints(key);
    TORCH_CHECK(v, "'", file.path(), "' lacks the attribute '", key, "'");
    return *v;
  };
  TORCH_CHECK(!x.meta.arch.empty() && x.meta.num_classes > 0 && x.meta.input_shape.size() == 3, "'", file.path(),
              "' lacks arch, num_classes or input_shape");
  x.spec = {x.meta.arch, x.meta.input_shape[0], x.meta.num_classes, x.meta.width > 0 ? x.meta.width : 16};
  x.config.bits = need_ints("model_bits");
  x.config.wbits = need_ints("wbits");
  x.config.abits = need_ints("abits");
  const std::vector<int64_t> first_last = need_ints("first_last_bits");
  TORCH_CHECK(first_last.size() == 1 || first_last.size() == 2, "'", file.path(),
              "': attribute 'first_last_bits' should hold one or two integers, has ", first_last.size());
  x.config.first_bits = first_last.front();
  x.config.last_bits = first_last.back();
  x.config.input_bits = file.attr_int("input_bits").value_or(StudentConfig::kSameBits);
  x.config.top_bits = need_int("top_bits");
  x.config.nesting = quant::parse_nesting(file.attr_string("nesting").value_or("shift"));
  x.config.input_range = file.attr_doubles("input_range").value_or(std::vector<double>{});  // absent: calibrated
  x.config.check();
  if (x.format == kFixedFormat) x.bits = need_int("bits");
  return x;
}

namespace {

torch::Tensor need_tensor(const h5::File& file, const std::string& name) {
  TORCH_CHECK(file.has(name), "'", file.path(), "' lacks the tensor '", name, "'");
  return file.read_tensor(name);
}

void fill_from_vertical(const h5::File& file, const std::string& name, IntLayerImpl& layer, int64_t bits) {
  const std::string key = name + ".";
  const torch::Tensor range = need_tensor(file, key + "weight_bits_range").to(torch::kInt64);
  TORCH_CHECK(range.numel() == 2, "'", file.path(), "': ", key, "weight_bits_range must hold 2 values");
  quant::VerticalLayers v;
  v.min_bits = range[0].item<int64_t>();
  v.top_bits = range[1].item<int64_t>();
  const int64_t wb = layer.options.weight_bits();
  TORCH_CHECK(wb >= v.min_bits && wb <= v.top_bits, "'", file.path(), "': layer '", name, "' stores ", v.min_bits,
              "..", v.top_bits, " weight bits, ", wb, " requested");
  v.basic = need_tensor(file, key + "weight_basic").to(torch::kInt16);
  v.shape = v.basic.sizes().vec();
  for (int64_t k = v.min_bits + 1; k <= v.top_bits; ++k) {
    v.planes.push_back(need_tensor(file, key + "weight_plane_b" + std::to_string(k)).to(torch::kUInt8));
  }
  TORCH_CHECK(v.basic.sizes() == layer.weight_codes.sizes(), "'", file.path(), "': '", key, "weight_basic' has shape ",
              v.basic.sizes(), ", the model expects ", layer.weight_codes.sizes());
  Folded f;
  f.codes = quant::rebuild_codes(v, wb);
  f.weight_step = need_tensor(file, key + "weight_step").to(torch::kFloat32);
  const int64_t top = need_tensor(file, key + "weight_top_bits").to(torch::kInt64).item<int64_t>();
  f.shift = top - wb;
  f.offset = (int64_t(1) << f.shift) - 1;
  const std::string suffix = "_b" + std::to_string(bits);
  f.act_step = need_tensor(file, key + "act_step" + suffix).to(torch::kFloat32).reshape({});
  f.act_range = need_tensor(file, key + "act_range" + suffix).to(torch::kInt64);
  f.scale = need_tensor(file, key + "scale" + suffix).to(torch::kFloat32);
  f.bias = need_tensor(file, key + "bias" + suffix).to(torch::kFloat32);
  TORCH_CHECK(f.scale.sizes() == layer.scale.sizes() && f.weight_step.sizes() == layer.weight_step.sizes() &&
                  f.act_range.numel() == 2,
              "'", file.path(), "': the tensors of layer '", name, "' do not fit the model");
  fill(layer, f);
}

} // namespace

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

LoadedStudent load_student(const std::string& path) {
  const h5::File file = h5::File::open_read(path);
  const ExtractedFile x = read_extracted(file, /*allow_student=*/true);
  LoadedStudent s{build(x.spec, QuantFactory(x.config)), x.spec, x.config, x.meta};
  load_state(file, *s.model, {kTrainingStateGroup});  // a checkpoint's training state is not the model's
  set_bits(*s.model, x.config.bits.front());
  s.model->eval();
  return s;
}

Classifier load_integer_model(const std::string& path, int64_t bits) {
  const h5::File file = h5::File::open_read(path);
  const ExtractedFile x = read_extracted(file);
  if (x.format == kFixedFormat) {
    TORCH_CHECK(bits == 0 || bits == x.bits, "'", path, "' is a fixed ", x.bits, "-bit model; --bits ", bits,
                " needs the vertical-layered file");
    Classifier model = build(x.spec, IntegerFactory(x.config, x.bits));
    load_state(file, *model);
    model->eval();
    return model;
  }
  TORCH_CHECK(bits > 0, "'", path, "' is vertical-layered; choose a bit-width with --bits (one of ",
              bits_text(x.config.bits), ")");
  Classifier model = build(x.spec, IntegerFactory(x.config, bits));
  for (const auto& item : model->named_modules()) {
    if (auto* layer = dynamic_cast<IntLayerImpl*>(item.value().get())) fill_from_vertical(file, item.key(), *layer, bits);
  }
  model->eval();
  return model;
}

} // namespace zsq::models
