// Reading extracted models and students back: attributes, fixed files (version 1: int8/int16 codes,
// version 2: bit-packed), vertical-layered files rebuilt at one bit-width.
#include "framework/data.h"
#include "framework/quant/bitplanes.h"
#include "models/extract.h"
#include "models/extract_detail.h"

#include <torch/torch.h>

#include <set>

namespace zsq::models {

using detail::Folded;
using quant::IntLayerImpl;

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
  x.config.input_border = file.attr_int("input_border").value_or(0) != 0;
  x.config.top_bits = need_int("top_bits");
  x.config.nesting = quant::parse_nesting(file.attr_string("nesting").value_or("shift"));
  x.config.input_range = file.attr_doubles("input_range").value_or(std::vector<double>{});  // absent: calibrated
  x.config.check();
  if (x.format == kFixedFormat) {
    x.bits = need_int("bits");
    x.mix = file.attr_string("mix").value_or("");
  }
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

// A version-2 fixed file: every tensor by name, the weight codes from their packed form.
void load_packed_state(const h5::File& file, torch::nn::Module& model) {
  const std::string suffix = "weight_codes";
  std::set<std::string> expected;
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : named_state(model)) {
    const bool codes = name.size() >= suffix.size() &&
                       name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (!codes) {
      expected.insert(name);
      const torch::Tensor value = need_tensor(file, name);
      TORCH_CHECK(value.sizes() == tensor.sizes(), "'", file.path(), "': '", name, "' has shape ", value.sizes(),
                  ", the model expects ", tensor.sizes());
      check_finite(value, "'" + file.path() + "'", name);
      tensor.copy_(value.to(tensor.scalar_type()));
      continue;
    }
    const std::string prefix = name.substr(0, name.size() - suffix.size());
    expected.insert(prefix + "weight_codes_packed");
    expected.insert(prefix + "weight_code_bits");
    const int64_t width = need_tensor(file, prefix + "weight_code_bits").to(torch::kInt64).item<int64_t>();
    TORCH_CHECK(width >= 2 && width <= 16, "'", file.path(), "': '", prefix, "weight_code_bits' is ", width,
                "; expected 2..16");
    const torch::Tensor packed = need_tensor(file, prefix + "weight_codes_packed");
    TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 1 &&
                    packed.numel() == (tensor.numel() * width + 7) / 8,
                "'", file.path(), "': '", prefix, "weight_codes_packed' should be ", (tensor.numel() * width + 7) / 8,
                " bytes (uint8) for ", tensor.numel(), " codes of ", width, " bits");
    tensor.copy_(quant::unpack_codes(packed, width, tensor.numel()).reshape(tensor.sizes()).to(tensor.scalar_type()));
  }
  for (const std::string& name : file.dataset_names()) {
    TORCH_CHECK(expected.count(name), "'", file.path(), "' holds an unexpected tensor '", name, "'");
  }
}

} // namespace

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
    TORCH_CHECK(bits == 0 || x.mix.empty(), "'", path, "' is a mixed-precision model (", x.mix,
                "); it has no --bits to choose");
    TORCH_CHECK(bits == 0 || bits == x.bits, "'", path, "' is a fixed ", x.bits, "-bit model; --bits ", bits,
                " needs the vertical-layered file");
    Classifier model = build(x.spec, IntegerFactory(x.config, x.bits));
    if (x.meta.version >= 2) {
      load_packed_state(file, *model);
    } else {
      load_state(file, *model);
    }
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
