// The once-for-all student: built from the zoo with quantized layers,
// initialised from a teacher, switched between bit-widths.
#include "framework/quant/layers.h"
#include "models/quant_factory.h"
#include "models/zoo.h"

#include "tests/support.h"

#include <set>

namespace zsq::models {
namespace {

using test::error_of;
using StudentTest = test::SeedingFixture;

StudentConfig config(std::vector<int64_t> bits) {
  StudentConfig c;
  c.bits = std::move(bits);
  return c;
}

// A small teacher whose BN running statistics describe its data.
Classifier small_teacher(const std::string& arch = "resnet8", int64_t width = 8) {
  auto teacher = build({arch, 1, 10, width}, Fp32Factory());
  torch::NoGradGuard no_grad;
  teacher->train();
  for (int i = 0; i < 20; ++i) teacher->forward(torch::randn({32, 1, 28, 28}));
  teacher->eval();
  return teacher;
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

TEST_F(StudentTest, KeepsTheTeachersNamesAndAddsQuantizerState) {
  auto teacher = build({"resnet20", 1, 10}, Fp32Factory());
  auto student = build({"resnet20", 1, 10}, QuantFactory(config({2, 4, 8})));
  std::set<std::string> student_names;
  for (const auto& p : student->named_parameters()) student_names.insert(p.key());
  for (const auto& p : teacher->named_parameters()) {
    const std::string& n = p.key();
    const bool is_bn = n.find("bn") != std::string::npos || n.find("downsample.1") != std::string::npos;
    if (is_bn) {
      const auto dot = n.rfind('.');
      for (const char* b : {".b2", ".b4", ".b8"}) {
        EXPECT_TRUE(student_names.count(n.substr(0, dot) + b + n.substr(dot))) << n << b;
      }
    } else {
      EXPECT_TRUE(student_names.count(n)) << n;
    }
  }
  EXPECT_TRUE(student_names.count("conv1.weight_step"));
  EXPECT_TRUE(student_names.count("layer1.0.conv1.act_step_b2"));
  EXPECT_TRUE(student_names.count("fc.act_step_b8"));
  std::ostringstream text;
  student->named_modules()["layer2.0.conv1"]->pretty_print(text);
  EXPECT_EQ(text.str(),
            "zsq::quant::QConv2d(16, 32, kernel_size=3, stride=2, padding=1, bits=2,4,8, wbits=2,4,8, abits=2,4,8, "
            "top_bits=8, nesting=shift)");
  std::ostringstream first;
  student->named_modules()["conv1"]->pretty_print(first);
  EXPECT_NE(first.str().find("wbits=8,8,8, abits=8,8,8"), std::string::npos) << first.str();
}

TEST_F(StudentTest, InitialisedStudentFollowsTheTeacherCloserWithMoreBits) {
  auto teacher = small_teacher();
  auto student = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 3, 4, 8})));
  const torch::Tensor calib = torch::randn({64, 1, 28, 28});
  init_student(*student, *teacher, calib);
  student->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({64, 1, 28, 28});
  const torch::Tensor want = teacher->forward(x);
  std::map<int64_t, double> err;
  for (const int64_t b : {2, 3, 4, 8}) {
    set_bits(*student, b);
    err[b] = relative_error(student->forward(x), want);
  }
  EXPECT_LT(err[8], 0.05) << "8-bit student far from the teacher";
  EXPECT_LT(err[8], err[4]);
  EXPECT_LT(err[4], err[2]);
  EXPECT_LT(err[3], err[2]);
  // The first layer sees normalized (signed) images, the others ReLU outputs.
  auto* first = dynamic_cast<quant::QuantizedLayer*>(student->named_modules()["conv1"].get());
  auto* middle = dynamic_cast<quant::QuantizedLayer*>(student->named_modules()["layer1.0.conv2"].get());
  ASSERT_TRUE(first && middle);
  EXPECT_TRUE(first->input_signed());
  EXPECT_FALSE(middle->input_signed());
}

TEST_F(StudentTest, SwitchingChangesOnlyPerBitState) {
  auto teacher = small_teacher();
  auto student = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 4})));
  init_student(*student, *teacher, torch::randn({32, 1, 28, 28}));
  auto params = student->named_parameters();
  auto buffers = student->named_buffers();
  const void* weight_storage = params["layer1.0.conv1.weight"].data_ptr();
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : params) before[p.key()] = p.value().detach().clone();
  for (const auto& b : buffers) before[b.key()] = b.value().clone();

  set_bits(*student, 4);
  student->train();
  torch::optim::SGD sgd(student->parameters(), torch::optim::SGDOptions(0.1));
  sgd.zero_grad();
  const torch::Tensor loss =
      torch::cross_entropy_loss(student->forward(torch::randn({16, 1, 28, 28})), torch::randint(0, 10, {16}));
  loss.backward();
  sgd.step();

  EXPECT_EQ(student->named_parameters()["layer1.0.conv1.weight"].data_ptr(), weight_storage);  // one tensor
  const auto changed = [&](const std::string& name, const torch::Tensor& now) {
    return !torch::equal(before.at(name), now.detach());
  };
  for (const auto& p : student->named_parameters()) {
    const std::string& n = p.key();
    if (n.find(".b2.") != std::string::npos || n.find("act_step_b2") != std::string::npos) {
      EXPECT_FALSE(changed(n, p.value())) << n << " (2-bit state) changed during a 4-bit step";
    }
  }
  for (const auto& b : student->named_buffers()) {
    if (b.key().find(".b2.") != std::string::npos) {
      EXPECT_FALSE(changed(b.key(), b.value())) << b.key();
    }
  }
  EXPECT_TRUE(changed("layer1.0.conv1.weight", params["layer1.0.conv1.weight"]));
  EXPECT_TRUE(changed("layer1.0.conv1.act_step_b4", params["layer1.0.conv1.act_step_b4"]));
  EXPECT_TRUE(changed("layer1.0.conv1.weight_step", params["layer1.0.conv1.weight_step"]));
  EXPECT_TRUE(changed("layer1.0.bn1.b4.running_mean", buffers["layer1.0.bn1.b4.running_mean"]));
}

TEST_F(StudentTest, BatchNormReestimationSetsTheImagesStatisticsOrShiftsTheTeachers) {
  quant::SwitchableBatchNorm2d bn(3, std::vector<int64_t>{2, 4});
  bn->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({8, 3, 5, 5}) * torch::tensor({1.0, 2.0, 3.0}).view({1, 3, 1, 1}) + 1.5;
  // Absolute: one train-mode step with momentum 1; the other bit-width keeps its statistics.
  bn->set_bits(2);
  bn->set_reestimating(true);
  const torch::Tensor y = bn->forward(x);
  bn->set_reestimating(false);
  const auto& b2 = bn->norms()[0];
  const auto& b4 = bn->norms()[1];
  EXPECT_TRUE(torch::allclose(b2->running_mean, x.mean({0, 2, 3}), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(b2->running_var, x.var({0, 2, 3}, /*unbiased=*/true), 1e-5, 1e-6));
  EXPECT_TRUE(torch::equal(b4->running_mean, torch::zeros({3})));
  EXPECT_TRUE(torch::equal(b4->running_var, torch::ones({3})));
  EXPECT_LT(y.mean({0, 2, 3}).abs().max().item<double>(), 1e-5);  // normalized with what it just measured
  EXPECT_TRUE(torch::equal(bn->forward(x), y));                  // and kept it
  // Shift: images whose statistics equal the reference's leave the teacher's statistics alone ...
  bn->set_bits(4);
  b4->running_mean.copy_(torch::tensor({0.5, -1.0, 2.0}));
  b4->running_var.copy_(torch::tensor({4.0, 0.25, 1.0}));
  const torch::Tensor mean = x.mean({0, 2, 3}), var = x.var({0, 2, 3}, /*unbiased=*/false);
  bn->set_reestimating(true, mean, var);
  bn->forward(x);
  EXPECT_TRUE(torch::allclose(b4->running_mean, torch::tensor({0.5, -1.0, 2.0}), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(b4->running_var, torch::tensor({4.0, 0.25, 1.0}), 1e-5, 1e-6));
  // ... and a quantized input moved by +1 and scaled by 2 moves them by the same amounts.
  bn->set_reestimating(true, mean, var);
  bn->forward((x - mean.view({1, 3, 1, 1})) * 2 + mean.view({1, 3, 1, 1}) + 1);
  bn->set_reestimating(false);
  EXPECT_TRUE(torch::allclose(b4->running_mean, torch::tensor({1.5, 0.0, 3.0}), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(b4->running_var, torch::tensor({16.0, 1.0, 4.0}), 1e-4, 1e-5));
  EXPECT_NE(error_of([&] { bn->set_reestimating(true, torch::zeros({2}), torch::ones({2})); })
                .find("reference moments of 2 channels for a 3-channel BatchNorm"),
            std::string::npos);
}

TEST_F(StudentTest, BatchNormAlignmentFitsTheReferencesNormalizedFeatures) {
  quant::SwitchableBatchNorm2d bn(3, std::vector<int64_t>{2, 4});
  bn->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({16, 3, 6, 6}) * 2 + 1;
  // Channels 0 and 1: the target is a line of x (slopes 0.5 and 2); channel 2 falls as x rises.
  const torch::Tensor slope = torch::tensor({0.5, 2.0, -1.0}).view({1, 3, 1, 1});
  const torch::Tensor target = x * slope + torch::tensor({0.3, -1.0, 0.0}).view({1, 3, 1, 1});
  bn->set_bits(2);
  const auto& b2 = bn->norms()[0];
  b2->running_mean.copy_(torch::tensor({0.0, 0.0, 7.0}));
  b2->running_var.copy_(torch::tensor({1.0, 1.0, 9.0}));
  bn->set_aligning(target);
  bn->forward(x);
  bn->set_reestimating(false);
  const torch::Tensor y = bn->forward(x);  // normalized by what alignment set
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 2), target.narrow(1, 0, 2), 1e-4, 1e-4));
  EXPECT_FLOAT_EQ(b2->running_mean[2].item<float>(), 7.0F);  // no usable slope: kept
  EXPECT_FLOAT_EQ(b2->running_var[2].item<float>(), 9.0F);
  EXPECT_TRUE(torch::equal(bn->norms()[1]->running_var, torch::ones({3})));  // the other bit-width untouched
  // Noise in the target does not scale the features up to its spread (least squares, not matching moments):
  // a target of x plus noise of x's own variance leaves the slope near 1 (variance near 1), where matching
  // the target's moments would halve the variance.
  const torch::Tensor noisy = x + torch::randn(x.sizes()) * 2;
  bn->set_aligning(noisy);
  bn->forward(x);
  bn->set_reestimating(false);
  EXPECT_NEAR(b2->running_var[0].item<double>(), 1.0, 0.2);
  // Centering only: the input's own variance, and the mean that puts the normalized input's mean at the target's.
  bn->set_aligning(target, /*fit_slope=*/false);
  bn->forward(x);
  bn->set_reestimating(false);
  EXPECT_TRUE(torch::allclose(b2->running_var, x.var({0, 2, 3}, /*unbiased=*/false), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(bn->forward(x).mean({0, 2, 3}), target.mean({0, 2, 3}), 1e-4, 1e-4));
  EXPECT_NE(error_of([&] { bn->set_aligning(torch::zeros({16, 2, 6, 6})); }).find("the target must be N×3×H×W"),
            std::string::npos);
  bn->set_aligning(torch::zeros({4, 3, 6, 6}));
  EXPECT_NE(error_of([&] { bn->forward(x); }).find("the same images through both networks"), std::string::npos);
  bn->set_reestimating(false);
}

// A momentum below 1 moves the running statistics that part of the way to what a full re-estimation sets.
TEST_F(StudentTest, BatchNormEstimateMomentumMovesPartOfTheWay) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({8, 3, 5, 5}) * 3 + 2;
  const torch::Tensor target = x * 0.5 - 1;
  const auto statistics_after = [&](double momentum, bool align) {
    quant::SwitchableBatchNorm2d bn(3, std::vector<int64_t>{2, 4});
    bn->eval();
    bn->set_bits(2);
    bn->current()->running_mean.fill_(0.5);
    bn->current()->running_var.fill_(4.0);
    if (align) bn->set_aligning(target, /*fit_slope=*/false); else bn->set_reestimating(true);
    bn->set_estimate_momentum(momentum);
    bn->forward(x);
    bn->set_reestimating(false);
    return std::pair{bn->current()->running_mean.clone(), bn->current()->running_var.clone()};
  };
  for (const bool align : {false, true}) {
    SCOPED_TRACE(align);
    const auto [full_mean, full_var] = statistics_after(1.0, align);
    const auto [mean, var] = statistics_after(0.25, align);
    EXPECT_FALSE(torch::allclose(full_mean, torch::full({3}, 0.5)));
    EXPECT_TRUE(torch::allclose(mean, 0.75 * 0.5 + 0.25 * full_mean, 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(var, 0.75 * 4.0 + 0.25 * full_var, 1e-5, 1e-6));
  }
  quant::SwitchableBatchNorm2d bn(3, std::vector<int64_t>{2});
  for (const double bad : {0.0, -0.1, 1.5}) {
    EXPECT_NE(error_of([&] { bn->set_estimate_momentum(bad); }).find("momentum must be in (0, 1]"), std::string::npos);
  }
}

TEST_F(StudentTest, BatchNormEstimatesPerBitWidth) {
  auto teacher = small_teacher();
  const torch::Tensor calib = torch::randn({64, 1, 28, 28}) * 0.5 + 0.3;
  const auto make = [&](const std::vector<BnEstimate>& estimates) {
    auto s = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 3, 8})));
    init_student(*s, *teacher, calib, {2, 3}, estimates);
    std::map<std::string, torch::Tensor> out;
    for (const auto& b : s->named_buffers()) out[b.key()] = b.value();
    return out;
  };
  const auto mixed = make({BnEstimate::kAbsolute, BnEstimate::kAlign});
  const auto absolute = make({BnEstimate::kAbsolute});
  const auto aligned = make({BnEstimate::kAlign});
  int compared = 0;
  for (const auto& [name, t] : mixed) {
    if (name.find("running_") == std::string::npos || name.find(".b8.") != std::string::npos) continue;
    const bool at2 = name.find(".b2.") != std::string::npos;
    EXPECT_TRUE(torch::equal(t, (at2 ? absolute : aligned).at(name))) << name;
    EXPECT_FALSE(torch::allclose(t, (at2 ? aligned : absolute).at(name), 1e-3, 1e-4)) << name;
    ++compared;
  }
  EXPECT_GT(compared, 0);
  auto s = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 3, 8})));
  EXPECT_NE(error_of([&] { init_student(*s, *teacher, calib, {2, 3}, {BnEstimate::kAbsolute, BnEstimate::kAlign,
                                                                      BnEstimate::kShift}); })
                .find("3 BatchNorm estimates for 2 bit-widths"),
            std::string::npos);
  EXPECT_NE(error_of([&] { calibrate(*s, calib, {3}, nullptr, true, {BnEstimate::kAlign}); })
                .find("need a reference network"),
            std::string::npos);
}

TEST_F(StudentTest, CalibrationReestimatesOnlyTheChosenBitWidthsBatchNorms) {
  auto teacher = small_teacher();  // statistics of randn images
  const torch::Tensor calib = torch::randn({64, 1, 28, 28}) * 0.5 + 0.3;  // not the teacher's data
  auto plain = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 8})));
  init_student(*plain, *teacher, calib);
  auto shifted = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 8})));
  init_student(*shifted, *teacher, calib, {2});
  auto absolute = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 8})));
  init_student(*absolute, *teacher, calib, {2}, {BnEstimate::kAbsolute});
  const auto state = [](Classifier& m) {
    std::map<std::string, torch::Tensor> out;
    for (const auto& b : m->named_buffers()) out[b.key()] = b.value();
    return out;
  };
  const auto p = state(plain), s = state(shifted), a = state(absolute);
  int moved = 0;
  for (const auto& [name, t] : p) {
    if (name.find("running_") == std::string::npos) continue;
    if (name.find(".b8.") != std::string::npos) {
      EXPECT_TRUE(torch::equal(t, s.at(name))) << name;
      EXPECT_TRUE(torch::equal(t, a.at(name))) << name;
    } else {
      moved += !torch::allclose(t, s.at(name), 1e-3, 1e-4);
      EXPECT_FALSE(torch::allclose(s.at(name), a.at(name), 1e-3, 1e-4)) << name;
    }
  }
  EXPECT_GT(moved, 0) << "shift re-estimation left every 2-bit statistic where it was";
  // The first BatchNorm sees the 8-bit-input first layer: the shift is the quantization's, small next to the
  // difference between the images and the data the teacher's statistics describe.
  const torch::Tensor teacher_var = teacher->named_buffers()["bn1.running_var"];
  EXPECT_LT(relative_error(s.at("bn1.b2.running_var"), teacher_var), 0.05);
  EXPECT_GT(relative_error(a.at("bn1.b2.running_var"), teacher_var), 0.05);
  // On images like the teacher's data, re-estimated 2-bit students follow the teacher closer than without.
  const torch::Tensor like = torch::randn({256, 1, 28, 28});
  init_student(*plain, *teacher, like);
  init_student(*shifted, *teacher, like, {2});
  init_student(*absolute, *teacher, like, {2}, {BnEstimate::kAbsolute});
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({64, 1, 28, 28});
  const torch::Tensor want = teacher->forward(x);
  const auto error_at_2 = [&](Classifier& m) {
    set_bits(*m, 2);
    return relative_error(m->forward(x), want);
  };
  const double e_plain = error_at_2(plain), e_shifted = error_at_2(shifted), e_absolute = error_at_2(absolute);
  EXPECT_LT(e_shifted, e_plain);
  EXPECT_LT(e_absolute, e_plain);
  EXPECT_NE(error_of([&] { init_student(*plain, *teacher, calib, {4}); }).find("re-estimation at 4 bits: the model has no such bit-width"),
            std::string::npos);
}

TEST_F(StudentTest, CalibratesOnLargeBatches) {
  // 1400 images: layer inputs of 17.6M values, sampled for the step search (a float32 linspace of
  // sample indices once ran past the end here).
  auto teacher = small_teacher("resnet8", 16);
  auto student = build({"resnet8", 1, 10, 16}, QuantFactory(config({2, 8})));
  init_student(*student, *teacher, torch::randn({1400, 1, 28, 28}));
  for (const auto& p : student->named_parameters()) {
    if (p.key().find("act_step") != std::string::npos) {
      EXPECT_GT(p.value().item<double>(), 0) << p.key();
    }
  }
}

TEST_F(StudentTest, ClearErrors) {
  auto student = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 4})));
  EXPECT_NE(error_of([&] { student->forward(torch::randn({2, 1, 28, 28})); }).find("never calibrated"),
            std::string::npos);
  EXPECT_NE(error_of([&] { set_bits(*student, 3); }).find("bit-width 3 is not one of this model's (2,4)"),
            std::string::npos);
  auto fp32 = build({"resnet8", 1, 10, 8}, Fp32Factory());
  EXPECT_NE(error_of([&] { set_bits(*fp32, 4); }).find("no quantized layers"), std::string::npos);
  auto wide_teacher = build({"resnet8", 1, 10, 16}, Fp32Factory());
  const std::string mismatch = error_of([&] { init_student(*student, *wide_teacher, torch::randn({4, 1, 28, 28})); });
  EXPECT_NE(mismatch.find("the teacher does not fit the student"), std::string::npos) << mismatch;
  EXPECT_NE(mismatch.find("'conv1.weight': student shape [8, 1, 3, 3], teacher 'conv1.weight' shape [16, 1, 3, 3]"),
            std::string::npos)
      << mismatch;
  auto other = build({"resnet20", 1, 10, 8}, Fp32Factory());
  EXPECT_NE(error_of([&] { init_student(*student, *other, torch::randn({4, 1, 28, 28})); })
                .find("teacher tensor 'layer1.1.conv1.weight' has no place in the student"),
            std::string::npos);
  StudentConfig bad = config({2, 4});
  bad.wbits = {2};
  EXPECT_NE(error_of([&] { QuantFactory{bad}; }).find("--wbits must list one value per --bits entry (2), got 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { QuantFactory{config({2, 9})}; }).find("bits must be in [2, top bits = 8], got 9"),
            std::string::npos);
}

TEST_F(StudentTest, FirstLastBitsSameFollowTheMiddleLayers) {
  const auto layer_text = [](const Classifier& model, const std::string& name) {
    std::ostringstream text;
    model->named_modules()[name]->pretty_print(text);
    return text.str();
  };
  StudentConfig same = config({2, 4, 8});
  same.abits = {4, 4, 8};
  std::tie(same.first_bits, same.last_bits) = parse_first_last_bits("same");
  const Classifier all = build({"resnet8", 1, 10, 8}, QuantFactory(same));
  for (const char* name : {"conv1", "fc", "layer1.0.conv1"}) {
    EXPECT_NE(layer_text(all, name).find("wbits=2,4,8, abits=4,4,8"), std::string::npos) << layer_text(all, name);
  }
  EXPECT_EQ(same.first_last_text(), "same");
  StudentConfig split = config({2, 4});
  std::tie(split.first_bits, split.last_bits) = parse_first_last_bits("4,same");
  EXPECT_EQ(split.first_last_text(), "4,same");
  const Classifier mixed = build({"resnet8", 1, 10, 8}, QuantFactory(split));
  EXPECT_NE(layer_text(mixed, "conv1").find("wbits=4,4, abits=4,4"), std::string::npos) << layer_text(mixed, "conv1");
  EXPECT_NE(layer_text(mixed, "fc").find("wbits=2,4, abits=2,4"), std::string::npos) << layer_text(mixed, "fc");
  EXPECT_EQ(parse_first_last_bits("8"), std::make_pair(int64_t(8), int64_t(8)));
  for (const char* bad : {"", "x", "1", "17", "4,", ",4", "4,8,8", "same4"}) {
    EXPECT_NE(error_of([&] { parse_first_last_bits(bad); }).find("--first-last-bits takes N, 'same' or FIRST,LAST"),
              std::string::npos)
        << bad;
  }
}

// --input-bits: the first layer's input at its own bits (GDFQ's protocol leaves 8-bit pixels exact), its
// weights and every other layer at the model's bits.
TEST_F(StudentTest, InputBitsSetOnlyTheFirstLayersInput) {
  const auto layer_text = [](const Classifier& model, const std::string& name) {
    std::ostringstream text;
    model->named_modules()[name]->pretty_print(text);
    return text.str();
  };
  StudentConfig c = config({2, 4});
  c.first_bits = c.last_bits = StudentConfig::kSameBits;
  c.input_bits = parse_input_bits("8");
  const Classifier model = build({"resnet8", 1, 10, 8}, QuantFactory(c));
  EXPECT_NE(layer_text(model, "conv1").find("wbits=2,4, abits=8,8"), std::string::npos) << layer_text(model, "conv1");
  EXPECT_NE(layer_text(model, "layer1.0.conv1").find("wbits=2,4, abits=2,4"), std::string::npos);
  EXPECT_NE(layer_text(model, "fc").find("wbits=2,4, abits=2,4"), std::string::npos);
  EXPECT_EQ(parse_input_bits("same"), StudentConfig::kSameBits);
  for (const char* bad : {"", "1", "17", "8,8", "x"}) {
    EXPECT_NE(error_of([&] { parse_input_bits(bad); }).find("--input-bits takes N in [2, 16] or 'same'"),
              std::string::npos)
        << bad;
  }
  c.input_bits = 1;
  EXPECT_NE(error_of([&] { QuantFactory{c}; }).find("input bits must be in [2, 16] or 'same', got 1"), std::string::npos);
}

// The network input's range is known (pixels in [0, 1] under the normalization): the first layer's input
// steps come from it, not from the calibration images, however wide those are, and do not train.
TEST_F(StudentTest, KnownInputRangeSetsTheFirstLayersStepsAndCalibrationLeavesThem) {
  auto teacher = small_teacher();
  StudentConfig c = config({2, 4, 8});
  c.first_bits = c.last_bits = StudentConfig::kSameBits;
  c.input_range = pixel_input_range({0.25}, {0.5});
  EXPECT_EQ(c.input_range, (std::vector<double>{-0.5, 1.5}));
  const torch::Tensor wide = torch::randn({64, 1, 28, 28}) * 6;  // synthetic images far outside the pixel range
  auto fixed = build({"resnet8", 1, 10, 8}, QuantFactory(c));
  StudentConfig plain = c;
  plain.input_range.clear();
  auto calibrated = build({"resnet8", 1, 10, 8}, QuantFactory(plain));
  init_student(*fixed, *teacher, wide);
  init_student(*calibrated, *teacher, wide);
  auto* first = dynamic_cast<quant::QuantizedLayer*>(fixed->named_modules()["conv1"].get());
  auto* other = dynamic_cast<quant::QuantizedLayer*>(calibrated->named_modules()["conv1"].get());
  auto* middle = dynamic_cast<quant::QuantizedLayer*>(fixed->named_modules()["layer1.0.conv1"].get());
  ASSERT_TRUE(first && other && middle);
  EXPECT_TRUE(first->input_fixed());
  EXPECT_FALSE(middle->input_fixed());
  EXPECT_FALSE(other->input_fixed());
  EXPECT_TRUE(first->input_signed());
  // [-0.5, 1.5] on 2^b levels with zero on a level: 2 bits: z = 1, s = max(0.5/1, 1.5/2) = 0.75;
  // 4 bits: z = 4 (split 3.75), s = max(0.5/4, 1.5/11) = 0.13636; 8 bits: z = 64, s = max(0.5/64, 1.5/191).
  const std::map<int64_t, std::pair<int64_t, double>> want{{2, {1, 0.75}}, {4, {4, 1.5 / 11}}, {8, {64, 1.5 / 191}}};
  for (const auto& [b, zs] : want) {
    set_bits(*fixed, b);
    set_bits(*calibrated, b);
    EXPECT_EQ(first->input_range().qn, zs.first) << b;
    EXPECT_EQ(first->input_range().qp, (int64_t(1) << b) - 1 - zs.first) << b;
    EXPECT_FLOAT_EQ(first->input_step().item<float>(), static_cast<float>(zs.second)) << b;
    // Calibrated on the wide images, the step would be another one.
    EXPECT_GT(std::abs(other->input_step().item<float>() - first->input_step().item<float>()),
              0.2 * first->input_step().item<float>())
        << b;
  }
  for (const auto& step : fixed_input_steps(*fixed)) EXPECT_FALSE(step.requires_grad());
  EXPECT_EQ(fixed_input_steps(*fixed).size(), 3u);
  EXPECT_TRUE(fixed_input_steps(*calibrated).empty());
  const auto before = first->input_step().clone();
  calibrate(*fixed, wide * 3);
  set_bits(*fixed, 8);
  EXPECT_TRUE(torch::equal(before, first->input_step()));
  // Every pixel value is representable without clipping: 0 and 1 quantize to within half a step.
  const torch::Tensor pixels = (torch::tensor({0.0f, 0.25f, 1.0f}).reshape({1, 1, 1, 3}) - 0.25) / 0.5;
  for (const int64_t b : {2, 4, 8}) {
    set_bits(*fixed, b);
    const torch::Tensor q = first->quantize_input(pixels);
    EXPECT_LE((q - pixels).abs().max().item<float>(), first->input_step().item<float>() / 2 + 1e-6) << b;
  }
  EXPECT_NE(error_of([&] { pixel_input_range({0.5}, {0.0}); }).find("channel 0 has mean 0.5 and standard deviation 0"),
            std::string::npos);
}

TEST_F(StudentTest, MseWeightStepsQuantizeWithLessErrorThanLsq) {
  auto teacher = small_teacher();
  StudentConfig c = config({2, 3, 8});
  c.first_bits = c.last_bits = StudentConfig::kSameBits;
  auto lsq = build({"resnet8", 1, 10, 8}, QuantFactory(c));
  auto mse = build({"resnet8", 1, 10, 8}, QuantFactory(c));
  const torch::Tensor calib = torch::randn({16, 1, 28, 28});
  init_student(*lsq, *teacher, calib);
  QuantizerInit init;
  init.weight_init = quant::WeightInit::kMse;
  init_student(*mse, *teacher, calib, {}, {BnEstimate::kShift}, init);
  // Per channel, the squared error summed over the bit-widths that share the step.
  const auto error = [](const Classifier& model, const std::string& name) {
    auto* layer = dynamic_cast<quant::QuantizedLayer*>(model->named_modules()[name].get());
    const torch::Tensor w = model->named_modules()[name]->named_parameters()["weight"].detach();
    torch::Tensor total = torch::zeros({w.size(0)});
    for (const int64_t b : {2, 3, 8}) {
      set_bits(*model, b);
      total += (layer->quantized_weight().detach() - w).pow(2).reshape({w.size(0), -1}).sum(1);
    }
    return total;
  };
  double lsq_total = 0, mse_total = 0;
  for (const auto& item : mse->named_modules()) {
    if (!dynamic_cast<quant::QuantizedLayer*>(item.value().get())) continue;
    const torch::Tensor e_mse = error(mse, item.key()), e_lsq = error(lsq, item.key());
    // LSQ's step is a candidate, so no channel can be worse (float slack only).
    EXPECT_TRUE((e_mse <= e_lsq * (1 + 1e-5) + 1e-12).all().item<bool>()) << item.key();
    lsq_total += e_lsq.sum().item<double>();
    mse_total += e_mse.sum().item<double>();
  }
  EXPECT_LT(mse_total, 0.8 * lsq_total);
  // One bit-width: its own least-squares step (the 9-weight filters of the first layer at 4 bits).
  StudentConfig four = config({4});
  four.first_bits = four.last_bits = StudentConfig::kSameBits;
  auto single = build({"resnet8", 1, 10, 8}, QuantFactory(four));
  init_student(*single, *teacher, calib, {}, {BnEstimate::kShift}, init);
  auto* conv1 = dynamic_cast<quant::QuantizedLayer*>(single->named_modules()["conv1"].get());
  const torch::Tensor w = single->named_modules()["conv1"]->named_parameters()["weight"].detach();
  const auto err = [&](const torch::Tensor& step) {
    return (quant::vl_fake_quant(w, step, 8, 4, quant::Nesting::kShift, 1.0) - w).pow(2).sum().item<double>();
  };
  const torch::Tensor found = conv1->weight_step();
  EXPECT_LE(err(found), err(found * 1.05) + 1e-12);
  EXPECT_LE(err(found), err(found * 0.95) + 1e-12);
  EXPECT_EQ(quant::parse_weight_init("mse"), quant::WeightInit::kMse);
  EXPECT_NE(error_of([] { quant::parse_weight_init("max"); }).find("unknown weight-step initialisation 'max'"),
            std::string::npos);
}

// A quantized layer's forward reads no flag back from its buffers once it knows them (on a GPU every such
// read would wait for the device); a write to a buffer (a load, a broadcast) is seen on the next forward.
TEST_F(StudentTest, ForwardReadsNoFlagBackOnceKnownAndSeesWrittenFlags) {
  auto teacher = small_teacher();
  auto student = build({"resnet8", 1, 10, 8}, QuantFactory(config({2, 4, 8})));
  init_student(*student, *teacher, torch::randn({16, 1, 28, 28}));
  std::vector<quant::QuantizedLayer*> layers;
  for (const auto& m : student->modules()) {
    if (auto* q = dynamic_cast<quant::QuantizedLayer*>(m.get())) layers.push_back(q);
  }
  ASSERT_GT(layers.size(), 5u);
  const auto reads = [&] {
    int64_t n = 0;
    for (const auto* q : layers) n += q->host_reads();
    return n;
  };
  torch::NoGradGuard no_grad;
  student->eval();
  const torch::Tensor x = torch::randn({4, 1, 28, 28});
  for (const int64_t b : {2, 4, 8}) {
    set_bits(*student, b);
    student->forward(x);
  }
  const int64_t known = reads();
  EXPECT_GT(known, 0);
  std::map<int64_t, torch::Tensor> before;
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (const int64_t b : {2, 4, 8}) {
      set_bits(*student, b);
      before[b] = student->forward(x);
    }
  }
  EXPECT_EQ(reads(), known);
  // Flip a middle layer's signedness as a load would (copy_ into the buffer): the next forward reads it.
  auto* middle = dynamic_cast<quant::QuantizedLayer*>(student->named_modules()["layer1.0.conv2"].get());
  ASSERT_TRUE(middle);
  torch::Tensor flag = student->named_buffers()["layer1.0.conv2.input_signed"];
  const bool was = middle->input_signed();
  flag.copy_(torch::tensor(!was));
  set_bits(*student, 2);
  const torch::Tensor after = student->forward(x);
  EXPECT_EQ(middle->input_signed(), !was);
  EXPECT_GT(reads(), known);
  EXPECT_FALSE(torch::equal(after, before[2]));  // the 2-bit input range changed with the flag
}

} // namespace
} // namespace zsq::models
