// The save/load interface of a run's stateful parts (framework/state.h).
#include "framework/state.h"

#include "framework/seed.h"

#include "tests/support.h"

namespace zsq {
namespace {

torch::nn::Sequential small_module() {
  return torch::nn::Sequential(torch::nn::Linear(3, 2), torch::nn::BatchNorm1d(2));
}

TensorMap as_map(const NamedTensors& tensors) {
  TensorMap out;
  for (const auto& [name, t] : tensors) out.emplace(name, t.clone());
  return out;
}

TEST(StateTest, ModuleStateRestoresEveryTensorAndRefusesAnotherModule) {
  torch::manual_seed(1);
  auto a = small_module();
  torch::manual_seed(2);
  auto b = small_module();
  ModuleState from(*a, "generator"), to(*b, "generator");
  const TensorMap saved = as_map(from.state());
  EXPECT_EQ(saved.size(), 7u);  // weight, bias; BatchNorm weight, bias, running mean/var, batch count
  ASSERT_FALSE(torch::equal(a[0]->as<torch::nn::Linear>()->weight, b[0]->as<torch::nn::Linear>()->weight));
  to.load_state(saved);
  for (const auto& [name, t] : to.state()) EXPECT_TRUE(torch::equal(t, saved.at(name))) << name;

  TensorMap missing = saved;
  missing.erase("0.bias");
  EXPECT_NE(test::error_of([&] { to.load_state(missing); }).find("no generator tensor '0.bias'"), std::string::npos);
  TensorMap misshapen = saved;
  misshapen["0.weight"] = torch::zeros({2, 4});
  EXPECT_NE(test::error_of([&] { to.load_state(misshapen); }).find("'0.weight' has shape [2, 4]"), std::string::npos);
  TensorMap extra = saved;
  extra["2.weight"] = torch::zeros({1});
  EXPECT_NE(test::error_of([&] { to.load_state(extra); }).find("has 8 tensors"), std::string::npos);
}

TEST(StateTest, OptimizerStateContinuesWhereTheSavedOneStood) {
  torch::manual_seed(3);
  auto model = small_module();
  NamedTensors params;
  for (const auto& item : model->named_parameters()) params.emplace_back(item.key(), item.value());
  torch::optim::SGD first(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  model->forward(torch::randn({4, 3})).sum().backward();
  first.step();
  const TensorMap saved = as_map(OptimizerState(first, params).state());
  ASSERT_FALSE(saved.empty());
  torch::optim::SGD second(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  EXPECT_TRUE(OptimizerState(second, params).state().empty());  // never stepped: no momenta yet
  OptimizerState(second, params).load_state(saved);
  for (const auto& [name, t] : OptimizerState(second, params).state()) EXPECT_TRUE(torch::equal(t, saved.at(name)));
}

TEST(StateTest, HeldTensorsAndPrefixes) {
  NamedTensors codes = {{"conv1", torch::ones({2})}};
  HeldTensors held(&codes);
  EXPECT_EQ(held.state().size(), 1u);
  held.load_state({{"conv2", torch::zeros({3})}, {"conv3", torch::zeros({1})}});
  ASSERT_EQ(codes.size(), 2u);
  EXPECT_EQ(codes[0].first, "conv2");

  const NamedTensors prefixed = with_prefix("adam.", {{"w", torch::ones({1})}, {"b", torch::ones({1})}});
  EXPECT_EQ(prefixed[0].first, "adam.w");
  TensorMap both = as_map(prefixed);
  both.emplace("generator.w", torch::zeros({1}));
  both.emplace("adamx", torch::zeros({1}));  // shares the letters, not the prefix
  const TensorMap adam = under_prefix(both, "adam.");
  ASSERT_EQ(adam.size(), 2u);
  EXPECT_TRUE(adam.count("w") && adam.count("b"));
  EXPECT_TRUE(under_prefix(both, "optimizer.").empty());
}

// A seeded construction draws what torch::manual_seed would have it draw, and leaves the global generator as
// it found it: the next draw is the one it would have been without the construction.
TEST(StateTest, ScopedSeedSeedsOneConstructionAndPutsTheGeneratorBack) {
  torch::manual_seed(11);
  const torch::Tensor expected = torch::nn::Linear(4, 3)->weight.detach().clone();
  torch::manual_seed(5);
  const torch::Tensor undisturbed = torch::rand({6});
  torch::manual_seed(5);
  torch::Tensor built;
  {
    ScopedSeed seed(11);
    built = torch::nn::Linear(4, 3)->weight.detach().clone();
  }
  EXPECT_TRUE(torch::equal(built, expected));
  EXPECT_TRUE(torch::equal(torch::rand({6}), undisturbed));
}

} // namespace
} // namespace zsq
