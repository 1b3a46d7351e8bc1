#include "framework/model_file.h"

#include "framework/data.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include <torch/torch.h>

namespace zsq {

ModelMeta read_meta_attrs(const h5::File& file) {
  ModelMeta meta;
  meta.format = file.attr_string("format").value_or("");
  meta.version = file.attr_int("version").value_or(0);
  meta.arch = file.attr_string("arch").value_or("");
  meta.num_classes = file.attr_int("num_classes").value_or(0);
  meta.input_shape = file.attr_ints("input_shape").value_or(std::vector<int64_t>{});
  meta.input_mean = file.attr_doubles("input_mean").value_or(std::vector<double>{});
  meta.input_std = file.attr_doubles("input_std").value_or(std::vector<double>{});
  meta.width = file.attr_int("width").value_or(0);
  meta.precision = file.attr_string("precision").value_or("");
  meta.recipe = file.attr_string("recipe").value_or("");
  TORCH_CHECK(meta.input_shape.empty() || meta.input_shape.size() == 3, "'", file.path(),
              "': attribute input_shape should be (C, H, W), has ", meta.input_shape.size(), " values");
  return meta;
}

ModelMeta read_model_meta(const h5::File& file) {
  ModelMeta meta = read_meta_attrs(file);
  if (!meta.format.empty()) {
    TORCH_CHECK(meta.format == kModelFormat, "'", file.path(), "' is a '", meta.format,
                "' file, not a model file (format '", kModelFormat, "')");
    TORCH_CHECK(meta.version >= 1 && meta.version <= kModelFormatVersion, "'", file.path(),
                "' has model format version ", meta.version, "; this zsq reads versions 1..", kModelFormatVersion);
  }
  return meta;
}

void write_meta_attrs(h5::File& file, const ModelMeta& meta) {
  if (!meta.arch.empty()) file.set_attr("arch", meta.arch);
  if (meta.num_classes > 0) file.set_attr("num_classes", meta.num_classes);
  if (!meta.input_shape.empty()) file.set_attr("input_shape", meta.input_shape);
  if (!meta.input_mean.empty()) file.set_attr("input_mean", meta.input_mean);
  if (!meta.input_std.empty()) file.set_attr("input_std", meta.input_std);
  if (meta.width > 0) file.set_attr("width", meta.width);
  file.set_attr("precision", meta.precision.empty() ? std::string("fp32") : meta.precision);
  file.set_attr("recipe", meta.recipe);
}

std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void save_model(const std::string& path, const torch::nn::Module& module, const ModelMeta& meta) {
  const auto state = named_state(module);
  h5::atomic_write(path, [&](h5::File& file) {
    for (const auto& [name, tensor] : state) file.write_tensor(name, tensor);
    file.set_attr("format", std::string(kModelFormat));
    file.set_attr("version", kModelFormatVersion);
    write_meta_attrs(file, meta);
  });
}

void load_state(const h5::File& file, torch::nn::Module& module, const std::vector<std::string>& ignore) {
  const auto state = named_state(module);
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (const auto& [name, tensor] : state) {
    expected.insert(name);
    if (!file.has(name)) {
      problems.push_back("missing tensor '" + name + "'");
      continue;
    }
    const auto shape = file.shape(name);
    if (shape != tensor.sizes().vec()) {
      std::ostringstream msg;
      msg << "'" << name << "' has shape " << c10::IntArrayRef(shape) << " in the file, the model expects "
          << tensor.sizes();
      problems.push_back(msg.str());
    }
  }
  const std::set<std::string> skip(ignore.begin(), ignore.end());
  const auto skipped = [&](const std::string& name) {
    if (skip.count(name)) return true;
    for (const std::string& group : ignore) {
      if (!group.empty() && group.back() == '/' && name.rfind(group, 0) == 0) return true;
    }
    return false;
  };
  for (const std::string& name : file.dataset_names()) {
    if (!expected.count(name) && !skipped(name)) problems.push_back("unexpected tensor '" + name + "'");
  }
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "'" << file.path() << "' does not match the model (" << problems.size() << " problem"
        << (problems.size() > 1 ? "s" : "") << "):";
    const size_t shown = std::min<size_t>(problems.size(), 12);
    for (size_t i = 0; i < shown; ++i) msg << "\n  " << problems[i];
    if (shown < problems.size()) msg << "\n  ... and " << problems.size() - shown << " more";
    TORCH_CHECK(false, msg.str());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : state) {
    torch::Tensor value = file.read_tensor(name);
    TORCH_CHECK(!(torch::isFloatingType(tensor.scalar_type()) && !torch::isFloatingType(value.scalar_type()) &&
                  value.scalar_type() != torch::kUInt8),
                "'", file.path(), "': '", name, "' holds integers, the model expects floating point");
    check_finite(value, "'" + file.path() + "'", name);
    tensor.copy_(value.to(tensor.scalar_type()));
  }
}

} // namespace zsq
