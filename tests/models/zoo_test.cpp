#include "models/zoo.h"

#include "tests/support.h"

#include <map>
#include <set>

namespace zsq::models {
namespace {

using ZooTest = test::SeedingFixture;

std::set<std::string> state_names(const torch::nn::Module& m) {
  std::set<std::string> names;
  for (const auto& p : m.named_parameters()) names.insert(p.key());
  for (const auto& b : m.named_buffers()) names.insert(b.key());
  return names;
}

TEST_F(ZooTest, EveryArchitectureRunsOnAnyChannelsAndClasses) {
  for (const auto& arch : known_archs()) {
    for (int64_t channels : {1, 3}) {
      const int64_t size = arch.rfind("resnet", 0) == 0 && arch != "resnet18" && arch != "resnet50" ? 28 : 40;
      auto model = build({arch, channels, 7}, Fp32Factory());
      model->eval();
      torch::NoGradGuard no_grad;
      const torch::Tensor out = model->forward(torch::randn({2, channels, size, size}));
      EXPECT_EQ(out.sizes(), torch::IntArrayRef({2, 7})) << arch << " with " << channels << " channels";
      EXPECT_TRUE(torch::isfinite(out).all().item<bool>()) << arch;
    }
  }
  EXPECT_THROW_WITH(build({"resnet21", 1, 10}, Fp32Factory()), "unknown architecture 'resnet21'; known: resnet8");
  EXPECT_THROW_WITH(build({"resnet20", 1, 1}, Fp32Factory()), "num_classes must be > 1");
  EXPECT_THROW_WITH(build({"resnet20", 0, 10}, Fp32Factory()), "in_channels must be > 0");
}

TEST_F(ZooTest, UnitsRunInTurnGiveTheLogitsAndOwnEveryLayer) {
  for (const auto& arch : known_archs()) {
    const bool cifar = arch.rfind("resnet", 0) == 0 && arch != "resnet18" && arch != "resnet50";
    auto model = build({arch, 1, 7, 8}, Fp32Factory());
    model->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor x = torch::randn({2, 1, cifar ? 28 : 40, cifar ? 28 : 40});
    torch::Tensor h = x;
    const std::vector<Unit> units = model->units();
    ASSERT_GT(units.size(), 2u) << arch;  // stem, blocks, head: reconstruction works block by block
    for (const Unit& u : units) h = u.forward(h);
    EXPECT_TRUE(torch::equal(h, model->forward(x))) << arch;
    // Every convolution and linear layer belongs to exactly one unit.
    for (const auto& item : model->named_parameters()) {
      if (item.key().find("weight") == std::string::npos || item.value().dim() < 2) continue;
      int owners = 0;
      for (const Unit& u : units) {
        for (const std::string& m : u.modules) owners += item.key().rfind(m + ".", 0) == 0 ? 1 : 0;
      }
      EXPECT_EQ(owners, 1) << arch << ": " << item.key();
    }
  }
}

TEST_F(ZooTest, TorchvisionNamesAndParameterCounts) {
  // Counts of torchvision's models with 3 channels and 1000 classes.
  const std::map<std::string, int64_t> counts = {
      {"resnet18", 11689512}, {"resnet50", 25557032}, {"mobilenet_v2", 3504872}};
  for (const auto& [arch, count] : counts) {
    EXPECT_EQ(parameter_count(*build({arch, 3, 1000}, Fp32Factory())), count) << arch;
  }
  const auto r18 = state_names(*build({"resnet18", 3, 10}, Fp32Factory()));
  for (const char* name : {"conv1.weight", "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight",
                           "layer1.1.bn2.bias", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight",
                           "layer3.0.downsample.1.running_mean", "fc.weight", "fc.bias"}) {
    EXPECT_TRUE(r18.count(name)) << name;
  }
  EXPECT_FALSE(r18.count("layer1.0.downsample.0.weight"));
  EXPECT_EQ(r18.size(), 122u);  // len(torchvision.models.resnet18().state_dict())
  const auto mb = state_names(*build({"mobilenet_v2", 3, 10}, Fp32Factory()));
  for (const char* name : {"features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
                           "features.1.conv.1.weight", "features.1.conv.2.bias", "features.2.conv.0.0.weight",
                           "features.2.conv.1.1.weight", "features.2.conv.3.running_var", "features.18.0.weight",
                           "features.18.1.num_batches_tracked", "classifier.1.weight"}) {
    EXPECT_TRUE(mb.count(name)) << name;
  }
  EXPECT_EQ(mb.size(), 314u);  // len(torchvision.models.mobilenet_v2().state_dict())
  const auto r20 = state_names(*build({"resnet20", 1, 10}, Fp32Factory()));
  EXPECT_TRUE(r20.count("layer3.2.conv2.weight"));
  EXPECT_TRUE(r20.count("layer2.0.downsample.0.weight"));
  EXPECT_FALSE(r20.count("layer4.0.conv1.weight"));
}

// Records the role of every layer the factory is asked for.
class RecordingFactory : public Fp32Factory {
 public:
  torch::nn::AnyModule conv2d(const ConvSpec& spec) const override {
    roles.push_back(spec.role);
    return Fp32Factory::conv2d(spec);
  }
  torch::nn::AnyModule linear(const LinearSpec& spec) const override {
    roles.push_back(spec.role);
    return Fp32Factory::linear(spec);
  }
  mutable std::vector<LayerRole> roles;
};

TEST_F(ZooTest, FactoryBuildsEveryLayerWithOneFirstAndOneLast) {
  for (const auto& arch : known_archs()) {
    RecordingFactory factory;
    auto model = build({arch, 3, 10}, factory);
    ASSERT_GE(factory.roles.size(), 3u) << arch;
    EXPECT_EQ(factory.roles.front(), LayerRole::kFirst) << arch;
    EXPECT_EQ(std::count(factory.roles.begin(), factory.roles.end(), LayerRole::kFirst), 1) << arch;
    EXPECT_EQ(std::count(factory.roles.begin(), factory.roles.end(), LayerRole::kLast), 1) << arch;
    // Every conv and linear weight came through the factory.
    int64_t weights = 0;
    for (const auto& p : model->named_parameters()) {
      weights += p.value().dim() >= 2;
    }
    EXPECT_EQ(weights, static_cast<int64_t>(factory.roles.size())) << arch;
  }
}

TEST_F(ZooTest, BatchNormTapRecordsInputMomentsWithGradient) {
  nn::BatchNorm2d bn(nn::BatchNorm2dOptions(3));
  const torch::Tensor x = (torch::randn({4, 3, 5, 5}) * 2 + 1).requires_grad_(true);
  bn->forward(x);
  EXPECT_FALSE(bn->tap_mean().defined());
  bn->set_tap(true);
  const torch::Tensor y = bn->forward(x);
  ASSERT_TRUE(bn->tap_mean().defined());
  EXPECT_TRUE(torch::allclose(bn->tap_mean(), x.mean({0, 2, 3})));
  const torch::Tensor centered = x - x.mean({0, 2, 3}, true);
  EXPECT_TRUE(torch::allclose(bn->tap_var(), centered.pow(2).mean({0, 2, 3})));
  bn->tap_mean().sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), torch::full_like(x, 1.0 / 100)));
  bn->set_tap(false);
  EXPECT_FALSE(bn->tap_mean().defined());

  // On a whole model: taps change nothing in the output and fill every BN.
  auto model = build({"resnet8", 1, 10}, Fp32Factory());
  model->eval();
  const torch::Tensor input = torch::randn({3, 1, 16, 16});
  const torch::Tensor before = model->forward(input);
  set_bn_taps(*model, true);
  const torch::Tensor after = model->forward(input);
  EXPECT_TRUE(torch::equal(before, after));
  const auto bns = batch_norms(*model);
  EXPECT_EQ(bns.size(), 9u);  // stem + 3 stages × 2 + 2 downsample
  EXPECT_EQ(bns.front().first, "bn1");
  for (const auto& [name, module] : bns) {
    ASSERT_TRUE(module->tap_mean().defined()) << name;
    EXPECT_EQ(module->tap_mean().size(0), module->options.num_features()) << name;
  }
  set_bn_taps(*model, false);
  for (const auto& [name, module] : bns) EXPECT_FALSE(module->tap_mean().defined()) << name;
}

TEST_F(ZooTest, BatchNormMatchesTorch) {
  nn::BatchNorm2d ours(nn::BatchNorm2dOptions(4));
  torch::nn::BatchNorm2d ref(torch::nn::BatchNorm2dOptions(4));
  const torch::Tensor x = torch::randn({8, 4, 3, 3});
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::allclose(ours->forward(x * (i + 1)), ref->forward(x * (i + 1)), 1e-5, 1e-6));
  }
  EXPECT_TRUE(torch::allclose(ours->running_var, ref->running_var));
  EXPECT_EQ(ours->num_batches_tracked.item<int64_t>(), 3);
  ours->eval();
  ref->eval();
  EXPECT_TRUE(torch::allclose(ours->forward(x), ref->forward(x), 1e-5, 1e-6));
  std::ostringstream printed;
  ours->pretty_print(printed);
  EXPECT_EQ(printed.str(), "zsq::nn::BatchNorm2d(4, eps=1e-05, momentum=0.1)");
}

} // namespace
} // namespace zsq::models
