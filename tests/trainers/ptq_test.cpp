#include "trainers/ptq.h"

#include "framework/errors.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "tests/support.h"

namespace zsq::trainers {
namespace {

class PtqTest : public test::SeedingFixture {
 protected:
  void SetUp() override {
    SeedingFixture::SetUp();
    teacher_ = models::build(spec_, models::Fp32Factory());
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 10; ++i) teacher_->forward(torch::randn({32, 1, 16, 16}));  // BatchNorm statistics
    teacher_->eval();
    images_ = torch::randn({64, 1, 16, 16});
  }
  // A W2A4 student (first and last layer 8-bit) initialised from the teacher.
  models::Classifier student(int64_t top_bits = 2) {
    config_.bits = {2};
    config_.abits = {4};
    config_.top_bits = top_bits;
    models::Classifier s = models::build(spec_, models::QuantFactory(config_));
    models::init_student(*s, *teacher_, images_, {}, {models::BnEstimate::kShift}, {quant::WeightInit::kMse});
    return s;
  }
  static std::vector<torch::Tensor> codes(const models::Classifier& s) {
    std::vector<torch::Tensor> out;
    for (const auto& [name, c] : models::top_weight_codes(*s)) out.push_back(c);
    return out;
  }
  static bool same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (!torch::equal(a[i], b[i])) return false;
    }
    return a.size() == b.size();
  }
  models::ModelSpec spec_{"resnet8", 1, 10, 8};
  models::StudentConfig config_;
  models::Classifier teacher_;
  torch::Tensor images_;
};

TEST_F(PtqTest, ReconstructionLowersEveryBlocksErrorAndTheIntegerModelKeepsTheCodes) {
  models::Classifier s = student();
  PtqOptions o;
  o.iterations = 400;
  o.batch_size = 16;
  o.rounding_lr = 1e-2;  // few iterations: a faster rounding than the default
  o.drop = 0;            // the error is measured on the quantized input, as trained
  const std::vector<UnitReport> reports = reconstruct(*s, *teacher_, images_, o);
  ASSERT_EQ(reports.size(), 5u);  // stem, three blocks, head
  for (const UnitReport& r : reports) {
    EXPECT_GT(r.layers, 0) << r.name;
    EXPECT_LT(r.error_after, r.error_before) << r.name;
  }
  // AdaRound moved some 2-bit codes away from nearest rounding in every block.
  for (size_t i = 1; i + 1 < reports.size(); ++i) EXPECT_GT(reports[i].changed, 0.0) << reports[i].name;
  // The extracted integer model predicts what the fake-quantized student predicts.
  const models::Classifier fixed = models::extract_fixed(*s, spec_, config_, 2);
  torch::NoGradGuard no_grad;
  const torch::Tensor a = s->forward(images_).argmax(1), b = fixed->forward(images_).argmax(1);
  EXPECT_GE(a.eq(b).to(torch::kFloat).mean().item<double>(), 0.95);
}

TEST_F(PtqTest, SameSeedSameCodesAndThePredictionDifferenceTermChangesThem) {
  PtqOptions o;
  o.iterations = 60;
  o.batch_size = 16;
  o.rounding_lr = 1e-2;
  models::Classifier a = student(), b = student(), c = student();
  reconstruct(*a, *teacher_, images_, o);
  reconstruct(*b, *teacher_, images_, o);
  EXPECT_TRUE(same(codes(a), codes(b)));
  o.pd_weight = 10;
  reconstruct(*c, *teacher_, images_, o);
  EXPECT_FALSE(same(codes(a), codes(c)));
}

TEST_F(PtqTest, AquantBordersTrainAndTheSavedIntegerModelAppliesThem) {
  config_.input_border = true;
  models::Classifier s = student();
  PtqOptions o;
  o.iterations = 100;
  o.batch_size = 16;
  o.rounding_lr = 1e-2;
  o.border_lr = 1e-2;
  reconstruct(*s, *teacher_, images_, o);
  double moved = 0;
  for (const auto& item : s->named_parameters()) {
    if (item.key().find("act_border") != std::string::npos) moved += item.value().abs().sum().item<double>();
  }
  EXPECT_GT(moved, 0.0);
  ModelMeta meta;
  meta.arch = spec_.arch;
  meta.num_classes = spec_.num_classes;
  meta.input_shape = {1, 16, 16};
  meta.input_mean = {0.5};
  meta.input_std = {0.25};
  meta.width = spec_.width;
  models::save_fixed(path("w2a4.h5"), models::extract_fixed(*s, spec_, config_, 2), meta, config_, 2);
  const models::Classifier loaded = models::load_integer_model(path("w2a4.h5"));
  torch::NoGradGuard no_grad;
  const torch::Tensor fake = s->forward(images_), integer = loaded->forward(images_);
  EXPECT_GE(fake.argmax(1).eq(integer.argmax(1)).to(torch::kFloat).mean().item<double>(), 0.95);
  // The loaded borders are the trained ones: zeroed, the integer model computes something else.
  for (const auto& item : loaded->named_buffers()) {
    if (item.key().find("act_border") != std::string::npos) item.value().zero_();
  }
  EXPECT_GT((loaded->forward(images_) - integer).abs().max().item<double>(), 1e-3);
  EXPECT_THROW_WITH(models::save_vertical(path("v.h5"), *s, spec_, config_, meta), "holds no rounding borders");
}

TEST_F(PtqTest, RefusesWhatItCannotReconstruct) {
  PtqOptions o;
  o.iterations = 1;
  models::Classifier nested = student(/*top_bits=*/8);
  EXPECT_THROW_WITH(reconstruct(*nested, *teacher_, images_, o), "build the student with top_bits equal to its weight bits");
  models::Classifier s = student();
  o.batch_size = 65;
  EXPECT_THROW_WITH(reconstruct(*s, *teacher_, images_, o), "needs at least 65 images");
  o.batch_size = 32;
  o.iterations = 0;
  EXPECT_THROW(reconstruct(*s, *teacher_, images_, o), OptionError);
  o.iterations = 1;
  o.drop = 1;
  EXPECT_THROW_WITH(reconstruct(*s, *teacher_, images_, o), "drop probability must be in [0, 1)");
}

}  // namespace
}  // namespace zsq::trainers
