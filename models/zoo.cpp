#include "models/zoo.h"

#include <torch/torch.h>

namespace zsq::models {

const std::vector<std::string>& known_archs() {
  static const std::vector<std::string> archs = {"resnet8",  "resnet20", "resnet32",    "resnet56",
                                                 "resnet18", "resnet50", "mobilenet_v2"};
  return archs;
}

std::vector<Unit> ClassifierImpl::units() {
  return {{"model", {""}, [this](const torch::Tensor& x) { return forward(x); }}};
}

Classifier build(const ModelSpec& spec, const LayerFactory& factory) {
  TORCH_CHECK(spec.in_channels > 0, "in_channels must be > 0, got ", spec.in_channels);
  TORCH_CHECK(spec.num_classes > 1, "num_classes must be > 1, got ", spec.num_classes);
  TORCH_CHECK(spec.width > 0 && spec.width <= 1024, "width must be in [1, 1024], got ", spec.width);
  const std::string& a = spec.arch;
  if (a == "resnet8") return build_resnet_cifar(8, spec, factory);
  if (a == "resnet20") return build_resnet_cifar(20, spec, factory);
  if (a == "resnet32") return build_resnet_cifar(32, spec, factory);
  if (a == "resnet56") return build_resnet_cifar(56, spec, factory);
  if (a == "resnet18") return build_resnet(18, spec, factory);
  if (a == "resnet50") return build_resnet(50, spec, factory);
  if (a == "mobilenet_v2") return build_mobilenet_v2(spec, factory);
  std::string list;
  for (const auto& name : known_archs()) list += (list.empty() ? "" : ", ") + name;
  TORCH_CHECK(false, "unknown architecture '", a, "'; known: ", list);
}

std::vector<std::pair<std::string, nn::BatchNorm2d>> batch_norms(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, nn::BatchNorm2d>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto bn = std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(item.value())) {
      out.emplace_back(item.key(), nn::BatchNorm2d(bn));
    }
  }
  return out;
}

void set_bn_taps(const torch::nn::Module& model, bool on) {
  for (auto& [name, bn] : batch_norms(model)) bn->set_tap(on);
}

int64_t parameter_count(const torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

} // namespace zsq::models
