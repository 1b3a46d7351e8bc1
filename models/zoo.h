// The model zoo: build any architecture by name against a layer factory.
//
//   auto model = zsq::models::build({"resnet20", /*in_channels=*/1, /*num_classes=*/10},
//                                   zsq::models::Fp32Factory());
//   torch::Tensor logits = model->forward(images);  // N×10
#pragma once

#include "framework/nn/batchnorm.h"
#include "models/factory.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace zsq::models {

/// A Sequential with a plain Tensor -> Tensor forward, so chains can nest
/// (torch::nn::Sequential cannot be stored inside another one).
class ChainImpl : public torch::nn::SequentialImpl {
 public:
  using SequentialImpl::SequentialImpl;
  torch::Tensor forward(torch::Tensor x) { return SequentialImpl::forward(x); }
};
TORCH_MODULE(Chain);

/// A piece of a network that post-training quantization reconstructs as one (BRECQ's blocks): the stem, a
/// residual block, the head. Running a model's units in turn on its input gives its logits.
struct Unit {
  std::string name;                  ///< e.g. "layer1.0"
  std::vector<std::string> modules;  ///< the module paths it owns (every module at or under them)
  std::function<torch::Tensor(const torch::Tensor&)> forward;
};

/// An image classifier: N×C×H×W in, N×num_classes logits out.
class ClassifierImpl : public torch::nn::Module {
 public:
  /// The network as units in forward order (valid while the model lives). Default: one unit, the whole network.
  virtual std::vector<Unit> units();
  /// Logits: head(features(x)).
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  /// The penultimate features (after global pooling), N×D.
  virtual torch::Tensor features(torch::Tensor x) = 0;
  /// The classifier on the features: N×D -> N×num_classes.
  virtual torch::Tensor head(torch::Tensor f) = 0;
};
using Classifier = std::shared_ptr<ClassifierImpl>;

struct ModelSpec {
  std::string arch;         ///< one of known_archs()
  int64_t in_channels = 3;
  int64_t num_classes = 10;
  /// Base width of the CIFAR-style ResNets (default 16); ignored by others.
  int64_t width = 16;
};

/// "resnet8", "resnet20", "resnet32", "resnet56" (CIFAR-style, any input
/// size), "resnet18", "resnet50", "mobilenet_v2" (torchvision names).
const std::vector<std::string>& known_archs();

/// Builds `spec.arch` with `factory`; throws on an unknown name or bad sizes.
Classifier build(const ModelSpec& spec, const LayerFactory& factory);

/// Every BatchNorm2d of `model`, with its module path, in forward order.
std::vector<std::pair<std::string, nn::BatchNorm2d>> batch_norms(const torch::nn::Module& model);

/// Turns the input tap of every BatchNorm2d on or off.
void set_bn_taps(const torch::nn::Module& model, bool on);

/// Number of parameters (elements).
int64_t parameter_count(const torch::nn::Module& model);

// Builders, one per family (used by build()).
Classifier build_resnet_cifar(int depth, const ModelSpec& spec, const LayerFactory& factory);
Classifier build_resnet(int depth, const ModelSpec& spec, const LayerFactory& factory);
Classifier build_mobilenet_v2(const ModelSpec& spec, const LayerFactory& factory);

} // namespace zsq::models
