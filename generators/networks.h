// The generator networks of the synthesis recipes (GDFQ's, Genie's) and Genie's
// swinging convolution, as modules: built by generators/synthesizer.cpp and
// tested on their own.
#pragma once

#include "models/factory.h"

#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include <vector>

namespace zsq::generators {

// GDFQ's CIFAR generator (xushoukai/GDFQ main.py `Generator`), for inputs whose
// height and width divide by 4. The positional 0.8 of its BatchNorm2d is eps.
class GdfqGeneratorImpl : public torch::nn::Module {
 public:
  GdfqGeneratorImpl(int64_t num_classes, int64_t latent, std::vector<int64_t> shape) : shape_(std::move(shape)) {
    TORCH_CHECK(shape_[1] % 4 == 0 && shape_[2] % 4 == 0, "the gdfq generator needs height and width divisible by 4, "
                "got ", shape_[1], "×", shape_[2]);
    emb = register_module("emb", torch::nn::Embedding(num_classes, latent));
    l1 = register_module("l1", torch::nn::Linear(latent, 128 * shape_[1] / 4 * shape_[2] / 4));
    bn0 = register_module("bn0", torch::nn::BatchNorm2d(128));
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(128, 128, 3).padding(1)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(128).eps(0.8)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(128, 64, 3).padding(1)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(64).eps(0.8)));
    conv3 = register_module("conv3", torch::nn::Conv2d(torch::nn::Conv2dOptions(64, shape_[0], 3).padding(1)));
    bn3 = register_module("bn3", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(shape_[0]).affine(false)));
  }
  /// Qimera's disentanglement mapping: a linear layer on the embedding (off by default).
  void add_mapping(int64_t latent) { dm = register_module("dm", torch::nn::Linear(latent, latent)); }
  torch::Tensor forward(const torch::Tensor& z, const torch::Tensor& y) { return body(z * emb->forward(y)); }
  /// The generator after its input embedding (e: N × latent).
  torch::Tensor body(torch::Tensor e) {
    if (dm) e = dm->forward(e);
    const int64_t n = e.size(0);
    torch::Tensor x = l1->forward(e).view({n, 128, shape_[1] / 4, shape_[2] / 4});
    x = bn0->forward(x);
    const auto up = torch::nn::functional::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(
        torch::kNearest);
    x = torch::nn::functional::interpolate(x, up);
    x = torch::leaky_relu(bn1->forward(conv1->forward(x)), 0.2);
    x = torch::nn::functional::interpolate(x, up);
    x = torch::leaky_relu(bn2->forward(conv2->forward(x)), 0.2);
    return bn3->forward(torch::tanh(conv3->forward(x)));
  }
  torch::nn::Embedding emb{nullptr};
  torch::nn::Linear l1{nullptr}, dm{nullptr};
  torch::nn::BatchNorm2d bn0{nullptr}, bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};

 private:
  std::vector<int64_t> shape_;
};
TORCH_MODULE(GdfqGenerator);

// Genie's swing convolution (SamsungLabs/Genie distill.py SwingConv2d): before
// a strided convolution, reflect-pad the input by 1 and crop it back at a
// random offset in {0,1,2}² (one draw per call for the whole batch). Same
// parameter names as torch's Conv2d, so a teacher's weights load by name.
class SwingConv2dImpl : public torch::nn::Module {
 public:
  SwingConv2dImpl(const models::ConvSpec& s, at::Generator gen) : spec_(s), gen_(std::move(gen)) {
    weight = register_parameter("weight", torch::empty({s.out_channels, s.in_channels / s.groups, s.kernel, s.kernel}));
    if (s.bias) bias = register_parameter("bias", torch::zeros({s.out_channels}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor padded = torch::reflection_pad2d(x, {1, 1, 1, 1});
    const torch::Tensor offset = torch::randint(0, 3, {2}, gen_);
    const int64_t dy = offset[0].item<int64_t>(), dx = offset[1].item<int64_t>();
    const torch::Tensor shifted = padded.narrow(2, dy, x.size(2)).narrow(3, dx, x.size(3));
    return torch::conv2d(shifted, weight, bias, spec_.stride, spec_.padding, 1, spec_.groups);
  }
  torch::Tensor weight, bias;

 private:
  models::ConvSpec spec_;
  at::Generator gen_;
};
TORCH_MODULE(SwingConv2d);

class SwingFactory : public models::Fp32Factory {
 public:
  explicit SwingFactory(at::Generator gen) : gen_(std::move(gen)) {}
  torch::nn::AnyModule conv2d(const models::ConvSpec& spec) const override {
    if (spec.stride == 1) return Fp32Factory::conv2d(spec);
    return torch::nn::AnyModule(SwingConv2d(spec, gen_));
  }

 private:
  at::Generator gen_;
};

// Genie's generator (distill.py Generator), for height and width divisible by 4.
class GenieGeneratorImpl : public torch::nn::Module {
 public:
  GenieGeneratorImpl(int64_t latent, std::vector<int64_t> shape) : shape_(std::move(shape)) {
    TORCH_CHECK(shape_[1] % 4 == 0 && shape_[2] % 4 == 0, "the genie generator needs height and width divisible by "
                "4, got ", shape_[1], "×", shape_[2]);
    l1 = register_module("l1", torch::nn::Linear(latent, 128 * shape_[1] / 4 * shape_[2] / 4));
    bn0 = register_module("bn0", torch::nn::BatchNorm2d(128));
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(128, 64, 3).padding(1)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(64));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(64, shape_[0], 3).padding(1)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(shape_[0]).affine(false)));
  }
  torch::Tensor forward(const torch::Tensor& z) {
    const auto up = torch::nn::functional::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(
        torch::kNearest);
    torch::Tensor x = bn0->forward(l1->forward(z).view({z.size(0), 128, shape_[1] / 4, shape_[2] / 4}));
    x = torch::nn::functional::interpolate(x, up);
    x = torch::leaky_relu(bn1->forward(conv1->forward(x)), 0.2);
    x = torch::nn::functional::interpolate(x, up);
    return bn2->forward(torch::tanh(conv2->forward(x)));
  }
  torch::nn::Linear l1{nullptr};
  torch::nn::BatchNorm2d bn0{nullptr}, bn1{nullptr}, bn2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};

 private:
  std::vector<int64_t> shape_;
};
TORCH_MODULE(GenieGenerator);

} // namespace zsq::generators
