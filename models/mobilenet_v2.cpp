// MobileNetV2 (Sandler et al. 2018) with torchvision's module names:
// features.0 = conv-BN-ReLU6 stem (features.0.0, features.0.1), features.1..17
// inverted residuals (features.k.conv.{0,1,2,3}), features.18 the 1×1 head,
// classifier.1 the linear layer (classifier.0 is dropout), so a torchvision
// state_dict loads directly. Width multiplier 1.0, channels rounded to 8.
#include "models/zoo.h"

#include <torch/torch.h>

namespace zsq::models {
namespace {

int64_t make_divisible(double v, int64_t divisor = 8) {
  int64_t out = std::max<int64_t>(divisor, (static_cast<int64_t>(v + divisor / 2.0) / divisor) * divisor);
  if (out < 0.9 * v) out += divisor;
  return out;
}

// torchvision's Conv2dNormActivation: conv (no bias), BN, ReLU6.
Chain conv_bn_relu6(const LayerFactory& f, int64_t in, int64_t out, int64_t kernel,
                                    int64_t stride, int64_t groups, LayerRole role = LayerRole::kMiddle) {
  Chain seq;
  seq->push_back(f.conv2d({in, out, kernel, stride, (kernel - 1) / 2, groups, false, role}));
  seq->push_back(f.batch_norm(out));
  seq->push_back(torch::nn::ReLU6());
  return seq;
}

class InvertedResidualImpl : public torch::nn::Module {
 public:
  InvertedResidualImpl(const LayerFactory& f, int64_t in, int64_t out, int64_t stride, int64_t expand_ratio)
      : use_residual_(stride == 1 && in == out) {
    const int64_t hidden = static_cast<int64_t>(std::llround(in * static_cast<double>(expand_ratio)));
    torch::nn::Sequential seq;
    if (expand_ratio != 1) seq->push_back(conv_bn_relu6(f, in, hidden, 1, 1, 1));
    seq->push_back(conv_bn_relu6(f, hidden, hidden, 3, stride, hidden));
    seq->push_back(f.conv2d({hidden, out, 1, 1, 0, 1, false, LayerRole::kMiddle}));
    seq->push_back(f.batch_norm(out));
    conv_ = register_module("conv", seq);
  }
  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor y = conv_->forward(x);
    return use_residual_ ? x + y : y;
  }

 private:
  bool use_residual_;
  torch::nn::Sequential conv_{nullptr};
};

class MobileNetV2 : public ClassifierImpl {
 public:
  MobileNetV2(const ModelSpec& spec, const LayerFactory& f) {
    // t (expansion), c (channels), n (repeats), s (stride of the first).
    const int64_t settings[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                                    {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    int64_t in = make_divisible(32);
    const int64_t last = make_divisible(1280);
    features_->push_back(conv_bn_relu6(f, spec.in_channels, in, 3, 2, 1, LayerRole::kFirst));
    for (const auto& s : settings) {
      const int64_t out = make_divisible(static_cast<double>(s[1]));
      for (int64_t i = 0; i < s[2]; ++i) {
        features_->push_back(std::make_shared<InvertedResidualImpl>(f, in, out, i == 0 ? s[3] : 1, s[0]));
        in = out;
      }
    }
    features_->push_back(conv_bn_relu6(f, in, last, 1, 1, 1));
    register_module("features", features_);
    classifier_->push_back(torch::nn::Dropout(0.2));
    classifier_->push_back(f.linear({last, spec.num_classes, true, LayerRole::kLast}));
    register_module("classifier", classifier_);
  }
  torch::Tensor features(torch::Tensor x) override {
    return torch::adaptive_avg_pool2d(features_->forward(x), {1, 1}).flatten(1);
  }
  torch::Tensor head(torch::Tensor f) override { return classifier_->forward(f); }
  std::vector<Unit> units() override {
    std::vector<Unit> u;
    for (size_t i = 0; i < features_->size(); ++i) {
      const std::string path = "features." + std::to_string(i);
      u.push_back({path, {path}, [this, i](const torch::Tensor& x) { return (features_->begin() + i)->forward(x); }});
    }
    u.push_back({"head", {"classifier"}, [this](const torch::Tensor& x) { return features_head(x); }});
    return u;
  }

 private:
  torch::Tensor features_head(const torch::Tensor& x) {
    return head(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
  }
  torch::nn::Sequential features_, classifier_;
};

} // namespace

Classifier build_mobilenet_v2(const ModelSpec& spec, const LayerFactory& factory) {
  return std::make_shared<MobileNetV2>(spec, factory);
}

} // namespace zsq::models
