// The once-for-all training loop on a pool: the distillation loss by hand,
// and training lowering the summed loss on the pool.
#include "trainers/quantize.h"

#include "tests/support.h"

namespace zsq::trainers {
namespace {

using test::error_of;
using QuantizeTest = test::SeedingFixture;

TEST_F(QuantizeTest, DistillationLossByHand) {
  const torch::Tensor t = torch::tensor({{2.0f, 0.0f}});
  const torch::Tensor s = torch::tensor({{0.0f, 0.0f}});
  // T = 2: target softmax(1, 0) = (e/(e+1), 1/(e+1)); student uniform.
  const double p = std::exp(1.0) / (std::exp(1.0) + 1), q = 1 - p;
  const double kl = p * std::log(p / 0.5) + q * std::log(q / 0.5);
  EXPECT_NEAR(kd_loss(s, t, 2.0).item<double>(), 4 * kl, 1e-6);
  EXPECT_NEAR(kd_loss(t, t, 2.0).item<double>(), 0.0, 1e-6);
  EXPECT_NE(error_of([&] { kd_loss(s, t, 0.0); }).find("temperature must be > 0"), std::string::npos);
}

TEST_F(QuantizeTest, TrainingLowersTheSummedLoss) {
  auto teacher = models::build({"resnet8", 1, 10, 8}, models::Fp32Factory());
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 10; ++i) teacher->forward(torch::randn({32, 1, 28, 28}));
  }
  teacher->eval();
  Dataset pool;
  pool.images = torch::randint(0, 256, {64, 1, 28, 28}, torch::kUInt8);
  pool.labels = torch::zeros({64}, torch::kInt64);
  pool.name = "pool";
  const Normalization norm{{0.5}, {0.25}};
  models::StudentConfig config;
  config.bits = {4, 8};
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(config));
  models::init_student(*student, *teacher, normalize(pool.images, norm));
  QuantizeOptions o;
  o.steps = 30;
  o.batch_size = 32;
  o.lr = 0.02;
  o.crop_padding = 0;
  o.horizontal_flip = false;
  std::vector<QuantizeStep> steps;
  quantize(*student, *teacher, pool, norm, o, [&](const QuantizeStep& r) { steps.push_back(r); });
  ASSERT_EQ(steps.size(), 30u);
  // The objective (the sum over bit-widths) falls; one bit-width alone may trade off against another.
  double first = 0, last = 0;
  for (int i = 0; i < 4; ++i) {
    first += steps[i].losses[0] + steps[i].losses[1];
    last += steps[26 + i].losses[0] + steps[26 + i].losses[1];
  }
  EXPECT_LT(last, 0.8 * first);
  o.weights = {1.0};
  EXPECT_NE(error_of([&] { quantize(*student, *teacher, pool, norm, o, nullptr); }).find("one value per bit-width (2)"),
            std::string::npos);
}

} // namespace
} // namespace zsq::trainers
