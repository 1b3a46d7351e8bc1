// torchvision models built in PyTorch (tests/models/make_torchvision_fixtures.py,
// run by CTest as a fixture) load into ZSQ's zoo by name and give the same
// logits on the same input.
#include "trainers/evaluate.h"

#include "framework/h5.h"
#include "tests/support.h"

namespace zsq::trainers {
namespace {

struct ParityCase {
  const char* file;
  const char* arch;
  std::vector<int64_t> input_shape;
};

void PrintTo(const ParityCase& c, std::ostream* os) { *os << c.arch; }

class TorchvisionParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(TorchvisionParity, SameLogitsAsPyTorch) {
  const ParityCase& c = GetParam();
  const std::string dir = ZSQ_FIXTURE_DIR;
  const std::string model_path = dir + "/" + c.file + ".h5";
  ASSERT_TRUE(std::filesystem::exists(model_path))
      << model_path << " is missing; CTest makes it with tests/models/make_torchvision_fixtures.py";
  // A bare state_dict says nothing about itself: the caller must.
  EXPECT_THROW_WITH(load_model(model_path), "does not say its architecture; pass --arch");
  ModelOverrides overrides;
  overrides.arch = c.arch;
  EXPECT_THROW_WITH(load_model(model_path, overrides), "pass --input-shape");
  overrides.input_shape = c.input_shape;
  const LoadedModel loaded = load_model(model_path, overrides);  // classes inferred from the last layer

  const h5::File io = h5::File::open_read(dir + "/" + c.file + "-io.h5");
  const torch::Tensor input = io.read_tensor("input");
  const torch::Tensor expected = io.read_tensor("logits");
  EXPECT_EQ(loaded.meta.num_classes, expected.size(1));
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = loaded.model->forward(input);
  ASSERT_EQ(logits.sizes(), expected.sizes());
  const double max_diff = (logits - expected).abs().max().item<double>();
  EXPECT_LT(max_diff, 1e-4) << c.arch << ": max |logit difference| " << max_diff;
}

INSTANTIATE_TEST_SUITE_P(Zoo, TorchvisionParity,
                         ::testing::Values(ParityCase{"tv_resnet18", "resnet18", {1, 64, 64}},
                                           ParityCase{"tv_mobilenet_v2", "mobilenet_v2", {3, 64, 64}},
                                           ParityCase{"tv_resnet50", "resnet50", {3, 64, 64}}),
                         [](const auto& info) { return std::string(info.param.arch); });

} // namespace
} // namespace zsq::trainers
