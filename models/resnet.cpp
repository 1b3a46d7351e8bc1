// ResNets written once against the layer factory.
//  * CIFAR-style ResNet-(6n+2) (He et al. 2016, sec. 4.2): 3×3 stem, three
//    stages of n basic blocks at widths w, 2w, 4w; projection shortcuts
//    (1×1 conv + BN, "option B", as pytorchcv's resnet20_cifar10 used by
//    GDFQ/Genie) where the shape changes. Works for any input size.
//  * torchvision ResNet-18/50 with torchvision's module names (conv1, bn1,
//    layer1.0.conv1, layer1.0.downsample.0, fc), stride on the 3×3 conv of a
//    bottleneck (ResNet v1.5), so a torchvision state_dict loads directly.
#include "models/zoo.h"

#include <torch/torch.h>

namespace zsq::models {
namespace {

torch::nn::AnyModule conv(const LayerFactory& f, int64_t in, int64_t out, int64_t kernel, int64_t stride,
                          LayerRole role = LayerRole::kMiddle) {
  ConvSpec spec;
  spec.in_channels = in;
  spec.out_channels = out;
  spec.kernel = kernel;
  spec.stride = stride;
  spec.padding = kernel / 2;
  spec.role = role;
  return f.conv2d(spec);
}

// The shortcut branch: 1×1 conv + BN, registered as "downsample" (0, 1).
torch::nn::Sequential downsample(const LayerFactory& f, int64_t in, int64_t out, int64_t stride) {
  torch::nn::Sequential seq;
  seq->push_back(conv(f, in, out, 1, stride));
  seq->push_back(f.batch_norm(out));
  return seq;
}

class BlockBase : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;

 protected:
  torch::nn::AnyModule add(const std::string& name, torch::nn::AnyModule module) {
    register_module(name, module.ptr());
    return module;
  }
  torch::Tensor shortcut(const torch::Tensor& x) { return downsample_ ? downsample_->forward(x) : x; }
  torch::nn::Sequential downsample_{nullptr};
};

class BasicBlockImpl : public BlockBase {
 public:
  static constexpr int64_t kExpansion = 1;
  BasicBlockImpl(const LayerFactory& f, int64_t in, int64_t planes, int64_t stride) {
    conv1_ = add("conv1", conv(f, in, planes, 3, stride));
    bn1_ = add("bn1", f.batch_norm(planes));
    conv2_ = add("conv2", conv(f, planes, planes, 3, 1));
    bn2_ = add("bn2", f.batch_norm(planes));
    if (stride != 1 || in != planes) downsample_ = register_module("downsample", downsample(f, in, planes, stride));
  }
  torch::Tensor forward(torch::Tensor x) override {
    torch::Tensor out = torch::relu(bn1_.forward(conv1_.forward(x)));
    out = bn2_.forward(conv2_.forward(out));
    return torch::relu(out + shortcut(x));
  }

 private:
  torch::nn::AnyModule conv1_, bn1_, conv2_, bn2_;
};

class BottleneckImpl : public BlockBase {
 public:
  static constexpr int64_t kExpansion = 4;
  BottleneckImpl(const LayerFactory& f, int64_t in, int64_t planes, int64_t stride) {
    conv1_ = add("conv1", conv(f, in, planes, 1, 1));
    bn1_ = add("bn1", f.batch_norm(planes));
    conv2_ = add("conv2", conv(f, planes, planes, 3, stride));
    bn2_ = add("bn2", f.batch_norm(planes));
    conv3_ = add("conv3", conv(f, planes, planes * kExpansion, 1, 1));
    bn3_ = add("bn3", f.batch_norm(planes * kExpansion));
    if (stride != 1 || in != planes * kExpansion) {
      downsample_ = register_module("downsample", downsample(f, in, planes * kExpansion, stride));
    }
  }
  torch::Tensor forward(torch::Tensor x) override {
    torch::Tensor out = torch::relu(bn1_.forward(conv1_.forward(x)));
    out = torch::relu(bn2_.forward(conv2_.forward(out)));
    out = bn3_.forward(conv3_.forward(out));
    return torch::relu(out + shortcut(x));
  }

 private:
  torch::nn::AnyModule conv1_, bn1_, conv2_, bn2_, conv3_, bn3_;
};

// A stage of `blocks` blocks; returns it and updates `in` to its output width.
template <typename Block>
torch::nn::Sequential make_stage(const LayerFactory& f, int64_t& in, int64_t planes, int64_t blocks,
                                 int64_t stride) {
  torch::nn::Sequential stage;
  for (int64_t i = 0; i < blocks; ++i) {
    stage->push_back(std::make_shared<Block>(f, in, planes, i == 0 ? stride : 1));
    in = planes * Block::kExpansion;
  }
  return stage;
}

// A ResNet's units: the stem (convolution, BatchNorm, ReLU and, torchvision's, max pooling), one unit per
// block of each stage, named "<stage>.<i>", and the head (global pooling, the classifier).
std::vector<Unit> resnet_units(ClassifierImpl* model, torch::nn::AnyModule* conv1, torch::nn::AnyModule* bn1,
                               bool max_pool, const std::vector<std::pair<std::string, torch::nn::Sequential>>& stages) {
  std::vector<Unit> units{{"stem", {"conv1", "bn1"}, [conv1, bn1, max_pool](const torch::Tensor& x) {
                             const torch::Tensor y = torch::relu(bn1->forward(conv1->forward(x)));
                             return max_pool ? torch::max_pool2d(y, 3, 2, 1) : y;
                           }}};
  for (const auto& [name, stage] : stages) {
    for (size_t i = 0; i < stage->size(); ++i) {
      auto block = std::dynamic_pointer_cast<BlockBase>(stage->ptr(i));
      const std::string path = name + "." + std::to_string(i);
      units.push_back({path, {path}, [block](const torch::Tensor& x) { return block->forward(x); }});
    }
  }
  units.push_back({"head", {"fc"}, [model](const torch::Tensor& x) {
                     return model->head(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
                   }});
  return units;
}

class CifarResNet : public ClassifierImpl {
 public:
  CifarResNet(int depth, const ModelSpec& spec, const LayerFactory& f) {
    TORCH_CHECK(depth >= 8 && (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2, got ", depth);
    const int64_t n = (depth - 2) / 6, w = spec.width;
    conv1_ = f.conv2d({spec.in_channels, w, 3, 1, 1, 1, false, LayerRole::kFirst});
    register_module("conv1", conv1_.ptr());
    bn1_ = f.batch_norm(w);
    register_module("bn1", bn1_.ptr());
    int64_t in = w;
    layer1_ = register_module("layer1", make_stage<BasicBlockImpl>(f, in, w, n, 1));
    layer2_ = register_module("layer2", make_stage<BasicBlockImpl>(f, in, 2 * w, n, 2));
    layer3_ = register_module("layer3", make_stage<BasicBlockImpl>(f, in, 4 * w, n, 2));
    fc_ = f.linear({in, spec.num_classes, true, LayerRole::kLast});
    register_module("fc", fc_.ptr());
  }
  torch::Tensor features(torch::Tensor x) override {
    x = torch::relu(bn1_.forward(conv1_.forward(x)));
    x = layer3_->forward(layer2_->forward(layer1_->forward(x)));
    return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  }
  torch::Tensor head(torch::Tensor f) override { return fc_.forward(f); }
  std::vector<Unit> units() override {
    return resnet_units(this, &conv1_, &bn1_, false, {{"layer1", layer1_}, {"layer2", layer2_}, {"layer3", layer3_}});
  }

 private:
  torch::nn::AnyModule conv1_, bn1_, fc_;
  torch::nn::Sequential layer1_{nullptr}, layer2_{nullptr}, layer3_{nullptr};
};

template <typename Block>
class TorchvisionResNet : public ClassifierImpl {
 public:
  TorchvisionResNet(const std::array<int64_t, 4>& blocks, const ModelSpec& spec, const LayerFactory& f) {
    conv1_ = f.conv2d({spec.in_channels, 64, 7, 2, 3, 1, false, LayerRole::kFirst});
    register_module("conv1", conv1_.ptr());
    bn1_ = f.batch_norm(64);
    register_module("bn1", bn1_.ptr());
    int64_t in = 64;
    layer1_ = register_module("layer1", make_stage<Block>(f, in, 64, blocks[0], 1));
    layer2_ = register_module("layer2", make_stage<Block>(f, in, 128, blocks[1], 2));
    layer3_ = register_module("layer3", make_stage<Block>(f, in, 256, blocks[2], 2));
    layer4_ = register_module("layer4", make_stage<Block>(f, in, 512, blocks[3], 2));
    fc_ = f.linear({in, spec.num_classes, true, LayerRole::kLast});
    register_module("fc", fc_.ptr());
  }
  torch::Tensor features(torch::Tensor x) override {
    x = torch::relu(bn1_.forward(conv1_.forward(x)));
    x = torch::max_pool2d(x, 3, 2, 1);
    x = layer4_->forward(layer3_->forward(layer2_->forward(layer1_->forward(x))));
    return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  }
  torch::Tensor head(torch::Tensor f) override { return fc_.forward(f); }
  std::vector<Unit> units() override {
    return resnet_units(this, &conv1_, &bn1_, true,
                        {{"layer1", layer1_}, {"layer2", layer2_}, {"layer3", layer3_}, {"layer4", layer4_}});
  }

 private:
  torch::nn::AnyModule conv1_, bn1_, fc_;
  torch::nn::Sequential layer1_{nullptr}, layer2_{nullptr}, layer3_{nullptr}, layer4_{nullptr};
};

} // namespace

Classifier build_resnet_cifar(int depth, const ModelSpec& spec, const LayerFactory& factory) {
  return std::make_shared<CifarResNet>(depth, spec, factory);
}

Classifier build_resnet(int depth, const ModelSpec& spec, const LayerFactory& factory) {
  if (depth == 18) return std::make_shared<TorchvisionResNet<BasicBlockImpl>>(std::array<int64_t, 4>{2, 2, 2, 2}, spec, factory);
  if (depth == 50) return std::make_shared<TorchvisionResNet<BottleneckImpl>>(std::array<int64_t, 4>{3, 4, 6, 3}, spec, factory);
  TORCH_CHECK(false, "torchvision ResNet depth must be 18 or 50, got ", depth);
}

} // namespace zsq::models
