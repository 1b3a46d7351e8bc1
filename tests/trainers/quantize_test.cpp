// The once-for-all training loop: the distillation loss by hand, training
// lowering the summed loss, the min-norm solver, optimizer state round trips,
// sandwich sampling, and a divergence that stops the run and keeps the last
// checkpoint, recursive and feature distillation by hand, and joint training
// bringing every bit-width closer to the teacher than its calibrated start.
#include "trainers/quantize.h"

#include "framework/errors.h"
#include "framework/h5.h"
#include "framework/optim_state.h"
#include "generators/synthesizer.h"
#include "models/extract.h"
#include "trainers/mix_sampling.h"
#include "tests/support.h"

#include <csignal>
#include <map>
#include <set>

#include <unistd.h>

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

struct Toy {
  models::Classifier teacher;
  Dataset pool;
  Normalization norm{{0.5}, {0.25}};
  models::StudentConfig config;
};

Toy make_setup(std::vector<int64_t> bits) {
  Toy s;
  s.teacher = models::build({"resnet8", 1, 10, 8}, models::Fp32Factory());
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 10; ++i) s.teacher->forward(torch::randn({32, 1, 28, 28}));
  }
  s.teacher->eval();
  s.pool.images = torch::randint(0, 256, {64, 1, 28, 28}, torch::kUInt8);
  s.pool.labels = torch::zeros({64}, torch::kInt64);
  s.pool.name = "pool";
  s.config.bits = std::move(bits);
  return s;
}

QuantizeOptions small_options() {
  QuantizeOptions o;
  o.steps = 30;
  o.batch_size = 32;
  o.lr = 0.02;
  o.crop_padding = 0;
  o.horizontal_flip = false;
  o.calib_count = 64;
  return o;
}

// A teacher with 20 times larger logits: distillation losses well above float rounding.
void make_confident(Toy& s) {
  torch::NoGradGuard no_grad;
  for (const auto& item : s.teacher->named_parameters()) {
    if (item.key().rfind("fc.", 0) == 0) item.value().mul_(20);
  }
}

// One step at a negligible rate on the whole 64-image pool: the losses it reports are the start's.
QuantizeOptions probe_options() {
  QuantizeOptions o = small_options();
  o.steps = 1;
  o.batch_size = 64;
  o.lr = 1e-12;
  return o;
}

TEST_F(QuantizeTest, TrainingLowersTheSummedLoss) {
  Toy s = make_setup({4, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = small_options();
  std::vector<QuantizeStep> steps;
  const QuantizeResult result = quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr,
                                         [&](const QuantizeStep& r) { steps.push_back(r); });
  ASSERT_EQ(steps.size(), 30u);
  EXPECT_TRUE(result.complete);
  EXPECT_EQ(result.steps_done, 30);
  // The objective (the sum over bit-widths) falls; one bit-width alone may trade off against another.
  double first = 0, last = 0;
  for (int i = 0; i < 4; ++i) {
    first += steps[i].losses[0] + steps[i].losses[1];
    last += steps[26 + i].losses[0] + steps[26 + i].losses[1];
  }
  EXPECT_LT(last, 0.8 * first);
  // The weights trained: some top-precision codes moved from their start, not all of them.
  EXPECT_GT(result.changed_codes, 0.0);
  EXPECT_LT(result.changed_codes, 0.5);
  o.weights = {1.0};
  EXPECT_NE(error_of([&] { quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr); })
                .find("one value per bit-width (2)"),
            std::string::npos);
  o.weights = {};
  EXPECT_NE(error_of([&] { parse_weighting("average"); }).find("unknown --weighting 'average'"), std::string::npos);
  for (const Weighting w :
       {Weighting::kSum, Weighting::kSandwich, Weighting::kMinNorm, Weighting::kNormalized, Weighting::kPcGrad}) {
    EXPECT_EQ(parse_weighting(weighting_name(w)), w);
  }
}

// Option values are checked by the options struct itself and refused as OptionError (the command line's
// exit 2), naming the flag; the defaults pass.
TEST_F(QuantizeTest, OptionsCheckThemselves) {
  EXPECT_NO_THROW(QuantizeOptions{}.check());
  EXPECT_NO_THROW(TeacherOptions{}.check());
  QuantizeOptions q;
  q.steps = 0;
  EXPECT_THROW(q.check(), OptionError);
  EXPECT_THROW_WITH(q.check(), "--steps must be > 0, got 0");
  q = QuantizeOptions{};
  q.weighting = parse_weighting("min-norm");
  q.weights = {1, 2};
  EXPECT_THROW_WITH(q.check(), "--bit-weights has no meaning with --weighting min-norm");
  q = QuantizeOptions{};
  q.bn_reestimate_end = true;
  EXPECT_THROW(q.check(), OptionError);
  q = QuantizeOptions{};
  q.lowpass = -1;
  EXPECT_THROW_WITH(q.check(), "--lowpass must be >= 0, got -1");
  TeacherOptions t;
  t.epochs = 0;
  EXPECT_THROW_WITH(t.check(), "--epochs must be > 0, got 0");
  t = TeacherOptions{};
  t.mixup = -1;
  EXPECT_THROW(t.check(), OptionError);
}

TEST_F(QuantizeTest, MinNormWeights) {
  // Orthogonal gradients of norms 1 and 2: minimize a² + 4b² with a + b = 1 -> (0.8, 0.2).
  auto alpha = min_norm_weights(torch::tensor({{1.0, 0.0}, {0.0, 4.0}}, torch::kFloat64));
  EXPECT_NEAR(alpha[0], 0.8, 1e-6);
  EXPECT_NEAR(alpha[1], 0.2, 1e-6);
  // g1 = (1, 0), g2 = (1, 1): the closest point of the segment to 0 is g1.
  alpha = min_norm_weights(torch::tensor({{1.0, 1.0}, {1.0, 2.0}}, torch::kFloat64));
  EXPECT_NEAR(alpha[0], 1.0, 1e-6);
  EXPECT_NEAR(alpha[1], 0.0, 1e-6);
  // Three random gradients: the result is on the simplex and no vertex or the centre does better.
  const torch::Tensor g = torch::randn({3, 5}, torch::kFloat64);
  alpha = min_norm_weights(g.matmul(g.t()), 2000);
  const torch::Tensor a = torch::tensor(alpha, torch::kFloat64);
  EXPECT_NEAR(a.sum().item<double>(), 1.0, 1e-9);
  EXPECT_GE(a.min().item<double>(), 0.0);
  const double best = a.matmul(g).norm().item<double>();
  for (int i = 0; i < 3; ++i) EXPECT_LE(best, g[i].norm().item<double>() + 1e-9);
  EXPECT_LE(best, g.mean(0).norm().item<double>() + 1e-9);
}

TEST_F(QuantizeTest, OptimizerStateRoundTrip) {
  for (const bool adam : {false, true}) {
    torch::nn::Linear a(4, 3), b(4, 3);
    {
      torch::NoGradGuard no_grad;
      b->weight.copy_(a->weight);
      b->bias.copy_(a->bias);
    }
    const auto make = [&](torch::nn::Linear& m) -> std::unique_ptr<torch::optim::Optimizer> {
      if (adam) return std::make_unique<torch::optim::Adam>(m->parameters(), torch::optim::AdamOptions(0.01));
      return std::make_unique<torch::optim::SGD>(m->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    };
    auto oa = make(a), ob = make(b);
    const torch::Tensor x = torch::randn({8, 4});
    const auto step = [&](torch::nn::Linear& m, torch::optim::Optimizer& o) {
      o.zero_grad();
      m->forward(x).pow(2).sum().backward();
      o.step();
    };
    for (int i = 0; i < 3; ++i) {
      step(a, *oa);
      step(b, *ob);
    }
    const NamedTensors named_a = {{"weight", a->weight}, {"bias", a->bias}};
    const NamedTensors named_b = {{"weight", b->weight}, {"bias", b->bias}};
    std::map<std::string, torch::Tensor> saved;
    for (const auto& [name, t] : optimizer_state(*oa, named_a)) saved[name] = t.clone();
    EXPECT_EQ(saved.size(), adam ? 6u : 2u);
    ob = make(b);  // a fresh optimizer, then the restored state
    load_optimizer_state(*ob, named_b, saved);
    for (int i = 0; i < 3; ++i) {
      step(a, *oa);
      step(b, *ob);
    }
    EXPECT_TRUE(torch::equal(a->weight, b->weight)) << (adam ? "adam" : "sgd");
    saved["nothing.exp_avg"] = torch::zeros({1});
    EXPECT_NE(error_of([&] { load_optimizer_state(*ob, named_b, saved); }).find("names no parameter"), std::string::npos);
  }
}

TEST_F(QuantizeTest, SandwichTrainsHighestLowestAndOneMiddle) {
  Toy s = make_setup({2, 3, 4, 6, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = small_options();
  o.steps = 12;
  o.weighting = parse_weighting("sandwich");
  std::set<int64_t> middles;
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, [&](const QuantizeStep& r) {
    ASSERT_EQ(r.bits.size(), 3u);
    EXPECT_EQ(r.bits.front(), 2);
    EXPECT_EQ(r.bits.back(), 8);
    middles.insert(r.bits[1]);
  });
  EXPECT_GE(middles.size(), 2u);  // the middle one varies over 12 steps
  for (int64_t b : middles) EXPECT_TRUE(b == 3 || b == 4 || b == 6);
  // min-norm: the weights form a convex combination of the per-bit gradients.
  o.weighting = parse_weighting("min-norm");
  o.steps = 3;
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, [&](const QuantizeStep& r) {
    ASSERT_EQ(r.alphas.size(), 5u);
    double sum = 0;
    for (double a : r.alphas) {
      sum += a;
      EXPECT_GE(a, 0.0);
    }
    EXPECT_NEAR(sum, 1.0, 1e-9);
  });
}

// min-norm and normalized combine the bit-widths' gradients on the shared tensors only: from the same start,
// one step moves every per-bit tensor exactly as `sum` does, and the shared ones differently.
TEST_F(QuantizeTest, MinNormAndNormalizedLeaveThePerBitGradientsAlone) {
  Toy s = make_setup({2, 4, 8});
  auto after_one_step = [&](const std::string& weighting) {
    torch::manual_seed(5);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    QuantizeOptions o = small_options();
    o.steps = 1;
    o.weighting = parse_weighting(weighting);
    std::vector<double> alphas;
    quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr,
             [&](const QuantizeStep& r) { alphas = r.alphas; });
    EXPECT_EQ(alphas.size(), weighting == "min-norm" ? 3u : 0u);
    std::map<std::string, torch::Tensor> out;
    for (const auto& item : student->named_parameters()) out[item.key()] = item.value().detach().clone();
    return out;
  };
  const auto sum = after_one_step("sum");
  for (const std::string weighting : {"min-norm", "normalized", "pcgrad"}) {
    const auto other = after_one_step(weighting);
    int64_t per_bit = 0, shared_moved = 0;
    for (const auto& [name, value] : sum) {
      if (is_per_bit_tensor(name)) {
        ++per_bit;
        EXPECT_TRUE(torch::allclose(other.at(name), value, 1e-5, 1e-7)) << weighting << " " << name;
      } else {
        shared_moved += !torch::allclose(other.at(name), value, 1e-5, 1e-7);
      }
    }
    EXPECT_GT(per_bit, 0);
    EXPECT_GT(shared_moved, 0) << weighting;
  }
}

// --per-bit-lr scales one bit-width's own tensors' first SGD step (linear in the gradient) and nothing else.
TEST_F(QuantizeTest, PerBitLrScalesOnlyThatBitWidthsOwnTensors) {
  EXPECT_EQ(per_bit_tensor_bits("layer1.0.conv1.act_step_b4"), 4);
  EXPECT_EQ(per_bit_tensor_bits("layer1.0.bn1.b2.weight"), 2);
  EXPECT_EQ(per_bit_tensor_bits("bn1.b8.bias"), 8);
  EXPECT_EQ(per_bit_tensor_bits("layer1.0.conv1.weight"), -1);
  EXPECT_EQ(per_bit_tensor_bits("layer1.0.conv1.weight_step"), -1);
  Toy s = make_setup({2, 8});
  std::map<std::string, torch::Tensor> start;
  auto after_one_step = [&](std::vector<double> per_bit_lr) {
    torch::manual_seed(5);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    QuantizeOptions o = small_options();
    o.steps = 1;
    o.calib_count = 32;
    o.lr = 1;  // one step: large enough that the moves stand clear of float32 rounding
    o.per_bit_lr = std::move(per_bit_lr);
    std::map<std::string, torch::Tensor> out;
    quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr);
    for (const auto& item : student->named_parameters()) out[item.key()] = item.value().detach().clone();
    return out;
  };
  // The start: the same run with the learning rate scaled to 0 everywhere it can be.
  const auto frozen = after_one_step({0.0});
  const auto plain = after_one_step({});
  const auto scaled = after_one_step({3.0, 1.0});
  int64_t two_bit = 0;
  for (const auto& [name, value] : plain) {
    const int64_t b = per_bit_tensor_bits(name);
    if (b == 2) {
      const torch::Tensor moved = value - frozen.at(name), moved3 = scaled.at(name) - frozen.at(name);
      // Differences of float32 values near 1: compared to within a few ulps, counted where the move is clear.
      EXPECT_TRUE(torch::allclose(moved3, 3 * moved, 1e-3, 1e-6)) << name;
      two_bit += moved.abs().max().item<double>() > 1e-4;
    } else {
      EXPECT_TRUE(torch::allclose(scaled.at(name), value, 1e-5, 1e-9)) << name;
    }
  }
  EXPECT_GT(two_bit, 0);
  Toy three = make_setup({2, 4, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(three.config));
  QuantizeOptions o = small_options();
  o.per_bit_lr = {1, 2};
  EXPECT_THROW_WITH(quantize(*student, *three.teacher, {&three.pool, three.norm, nullptr}, o, nullptr, nullptr, nullptr),
                    "--per-bit-lr needs one value or one per bit-width (3), got 2");
  o.per_bit_lr = {-1};
  EXPECT_THROW_WITH(o.check(), "--per-bit-lr must be a finite number >= 0, got -1");
}

// PCGrad with the higher bit-widths first: a lower gradient loses its component along a higher one only where
// they conflict; the highest is kept whole.
TEST_F(QuantizeTest, PcGradRemovesOnlyTheConflictWithHigherBitWidths) {
  // Rows ascending: g_low = (1, -1), g_high = (0, 1). Conflict (dot -1): g_low -> (1, 0); sum (1, 1).
  torch::Tensor g = torch::tensor({1.0, -1.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  EXPECT_TRUE(torch::allclose(pcgrad_sum(g), torch::tensor({1.0, 1.0}, torch::kFloat64))) << pcgrad_sum(g);
  // No conflict: the plain sum.
  g = torch::tensor({1.0, 1.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  EXPECT_TRUE(torch::allclose(pcgrad_sum(g), torch::tensor({1.0, 2.0}, torch::kFloat64)));
  // The highest row is never projected, even when a lower one conflicts with it: (0, 1) kept, (0, -2) -> 0.
  g = torch::tensor({0.0, -2.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  EXPECT_TRUE(torch::allclose(pcgrad_sum(g), torch::tensor({0.0, 1.0}, torch::kFloat64)));
  // Three rows: the lowest is projected against both higher ones, against the raw gradients, highest first.
  g = torch::tensor({-1.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({3, 3});
  // g0 = (-1,-1,0): vs g2 = (0,0,1) no conflict; vs g1 = (1,0,0) dot -1 -> (0,-1,0). Sum (1,-1,1).
  EXPECT_TRUE(torch::allclose(pcgrad_sum(g), torch::tensor({1.0, -1.0, 1.0}, torch::kFloat64))) << pcgrad_sum(g);
}

// --weight-step-grad sum: after one min-norm step the weight steps are those of the plain sum, the latent weights
// are not; refused where it has no meaning.
TEST_F(QuantizeTest, WeightStepGradSumMovesTheStepsAsTheSumDoes) {
  Toy s = make_setup({2, 4, 8});
  auto after_one_step = [&](Weighting weighting, bool steps_sum) {
    torch::manual_seed(5);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    QuantizeOptions o = small_options();
    o.steps = 1;
    o.weighting = weighting;
    if (steps_sum) o.step_weighting = Weighting::kSum;
    quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr);
    std::map<std::string, torch::Tensor> out;
    for (const auto& item : student->named_parameters()) out[item.key()] = item.value().detach().clone();
    return out;
  };
  const auto sum = after_one_step(Weighting::kSum, false);
  const auto mgda = after_one_step(Weighting::kMinNorm, false);
  const auto mixed = after_one_step(Weighting::kMinNorm, true);
  int64_t steps = 0, weights_differ = 0, steps_differ_without = 0;
  for (const auto& [name, value] : sum) {
    if (is_weight_step(name)) {
      ++steps;
      EXPECT_TRUE(torch::allclose(mixed.at(name), value, 1e-5, 1e-9)) << name;
      steps_differ_without += !torch::allclose(mgda.at(name), value, 1e-5, 1e-9);
    } else if (!is_per_bit_tensor(name) && name.size() > 7 && name.substr(name.size() - 7) == ".weight") {
      EXPECT_TRUE(torch::allclose(mixed.at(name), mgda.at(name), 1e-5, 1e-9)) << name;
      weights_differ += !torch::allclose(mixed.at(name), value, 1e-5, 1e-9);
    }
  }
  EXPECT_GT(steps, 0);
  EXPECT_GT(steps_differ_without, 0);  // min-norm alone moves the steps otherwise: the test can tell
  EXPECT_GT(weights_differ, 0);
  // The other way round: pcgrad on the weights, the steps by MGDA; their α is reported (min-norm's only).
  const auto pcgrad = after_one_step(Weighting::kPcGrad, false);
  QuantizeOptions o = small_options();
  o.steps = 1;
  o.weighting = Weighting::kPcGrad;
  o.step_weighting = Weighting::kMinNorm;
  torch::manual_seed(5);
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  std::vector<double> alphas;
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr,
           [&](const QuantizeStep& r) { alphas = r.alphas; });
  EXPECT_EQ(alphas.size(), 3u);
  int64_t steps_differ = 0;
  for (const auto& item : student->named_parameters()) {
    const std::string& name = item.key();
    if (is_weight_step(name)) {
      steps_differ += !torch::allclose(item.value(), pcgrad.at(name), 1e-5, 1e-9);
    } else {
      EXPECT_TRUE(torch::allclose(item.value(), pcgrad.at(name), 1e-5, 1e-9)) << name;
    }
  }
  EXPECT_GT(steps_differ, 0);
  QuantizeOptions q;
  q.step_weighting = Weighting::kSandwich;
  EXPECT_THROW_WITH(q.check(), "--weight-step-grad cannot be sandwich");
  q.step_weighting = Weighting::kMinNorm;
  q.train = TrainScope::kPerBit;
  EXPECT_THROW_WITH(q.check(), "--weight-step-grad needs the weight steps to train");
}

// A fresh resnet8 student (seeded alike) trained on the pool with `o`: its buffers and parameters afterwards.
std::map<std::string, torch::Tensor> trained_state(Toy& s, const QuantizeOptions& o) {
  torch::manual_seed(7);
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr);
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : student->named_buffers()) out[item.key()] = item.value().detach().clone();
  for (const auto& item : student->named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

// bn_reestimate_end: after the last step only the bn_bits' BatchNorm statistics change (through the trained
// network); every trained tensor and the other bit-widths' statistics are those of the same run without it.
TEST_F(QuantizeTest, BatchNormReestimatedAtTheEndOnlyAtItsBitWidths) {
  Toy s = make_setup({2, 8});
  auto run = [&](bool at_end) {
    QuantizeOptions o = small_options();
    o.steps = 4;
    o.bn_bits = {2};
    o.bn_modes = {BnMode::kAbsolute};
    o.bn_reestimate_end = at_end;
    return trained_state(s, o);
  };
  const auto plain = run(false), reestimated = run(true);
  int64_t moved = 0;
  for (const auto& [name, value] : plain) {
    const bool stats = name.find("running_") != std::string::npos;
    const bool at_2 = name.find(".b2.") != std::string::npos;
    if (stats && at_2) {
      moved += !torch::allclose(reestimated.at(name), value, 1e-5, 1e-7);
    } else if (name.find("num_batches_tracked") == std::string::npos) {
      EXPECT_TRUE(torch::allclose(reestimated.at(name), value, 1e-6, 1e-8)) << name;
    }
  }
  EXPECT_GT(moved, 0);
  QuantizeOptions o = small_options();
  o.bn_reestimate_end = true;
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  EXPECT_THROW_WITH(quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr),
                    "--bn-reestimate-end on needs");
}

// bn_track: after every step the bn_bits' statistics move towards their re-estimate on the step's images; the
// other bit-widths' statistics stay where calibration put them. Refused without bn_bits or beside bn_train.
TEST_F(QuantizeTest, BatchNormTrackedWhileTrainingOnlyAtItsBitWidths) {
  Toy s = make_setup({2, 8});
  auto run = [&](double track) {
    QuantizeOptions o = small_options();
    o.steps = 3;
    o.bn_bits = {2};
    o.bn_modes = {BnMode::kCenter};
    o.bn_track = track;
    return trained_state(s, o);
  };
  const auto plain = run(0), tracked = run(0.5);
  int64_t moved = 0;
  for (const auto& [name, value] : plain) {
    if (name.find("running_") == std::string::npos) continue;
    if (name.find(".b2.") != std::string::npos) {
      moved += !torch::allclose(tracked.at(name), value, 1e-4, 1e-6);
    } else {
      EXPECT_TRUE(torch::equal(tracked.at(name), value)) << name;
    }
  }
  EXPECT_GT(moved, 0);
  QuantizeOptions o = small_options();
  o.bn_track = 0.1;
  EXPECT_THROW_WITH(o.check(), "--bn-track needs the bit-widths to re-estimate");
  o.bn_bits = {2};
  o.bn_train = {8};
  EXPECT_THROW_WITH(o.check(), "--bn-track and --bn-train both move");
  o.bn_train.clear();
  o.bn_track = 2;
  EXPECT_THROW_WITH(o.check(), "--bn-track must be in [0, 1]");
}

// Recursive distillation: each bit-width's target is the next higher one's logits on the same images, the
// highest one's the teacher's; feature distillation adds the MSE of the penultimate features to the
// teacher's. Checked by hand on the first step's batch (the whole pool, in another order; the loss is a
// batch mean) with a learning rate so small that the step changes nothing measurable.
TEST_F(QuantizeTest, RecursiveAndFeatureDistillationTargets) {
  Toy s = make_setup({2, 4, 8});
  make_confident(s);
  const std::vector<int64_t> bits = {2, 4, 8};
  const torch::Tensor x = normalize(s.pool.images, s.norm);
  torch::Tensor teacher_features, teacher_logits;
  {
    torch::NoGradGuard no_grad;
    teacher_features = s.teacher->features(x);
    teacher_logits = s.teacher->head(teacher_features);
  }
  double gap = 0;  // relative difference of the 2-bit loss to the two targets: the check tells them apart
  for (const bool recursive : {false, true}) {
    for (const double feature_weight : {0.0, 0.5}) {
      torch::manual_seed(3);
      auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
      QuantizeOptions o = probe_options();
      o.recursive = recursive;
      o.feature_weight = feature_weight;
      std::vector<double> reported;
      quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, [&](const QuantizeStep& r) {
        ASSERT_EQ(r.bits, bits);
        reported = r.losses;
      });
      ASSERT_EQ(reported.size(), 3u);
      torch::NoGradGuard no_grad;
      torch::Tensor higher = teacher_logits;
      for (int i = 2; i >= 0; --i) {
        models::set_bits(*student, bits[i]);
        const torch::Tensor features = student->features(x), logits = student->head(features);
        const double to_teacher = kd_loss(logits, teacher_logits, o.temperature).item<double>();
        const double to_higher = kd_loss(logits, higher, o.temperature).item<double>();
        const double feature = torch::mse_loss(features, teacher_features).item<double>();
        if (i == 0) {
          ASSERT_GT(feature, 1e-3);  // the feature term is visible at 2 bits
        }
        const double expected = (recursive ? to_higher : to_teacher) + feature_weight * feature;
        EXPECT_NEAR(reported[i], expected, 1e-4 * expected) << "recursive " << recursive << ", feature weight "
                                                                   << feature_weight << ", " << bits[i] << " bits";
        if (i == 0) gap = std::abs(to_higher - to_teacher) / to_teacher;
        higher = logits;
      }
    }
  }
  EXPECT_GT(gap, 0.05);
}

// Trained for mixing (--mix-samples): each step distils its random per-layer mixes after the bit-widths, each
// mix's loss is the KD of the student in that mix to the teacher (checked by hand), and min-norm weighs them as
// tasks of their own. The draws depend on (seed, step, sample) only and cover every bit-width.
TEST_F(QuantizeTest, TrainedForMixingDistilsTheStepsRandomMixes) {
  const std::vector<int64_t> bits = {2, 4, 8};
  EXPECT_EQ(step_mix(9, bits, 5, 3, 1), step_mix(9, bits, 5, 3, 1));
  EXPECT_NE(step_mix(9, bits, 5, 3, 1), step_mix(9, bits, 5, 3, 0));
  EXPECT_NE(step_mix(9, bits, 5, 3, 1), step_mix(9, bits, 5, 4, 1));
  EXPECT_NE(step_mix(9, bits, 5, 3, 1), step_mix(9, bits, 6, 3, 1));
  std::map<int64_t, int> seen;
  for (int64_t step = 0; step < 100; ++step) {
    for (const int64_t b : step_mix(9, bits, 0, step, 0)) ++seen[b];
  }
  ASSERT_EQ(seen.size(), 3u);
  for (const auto& [b, n] : seen) EXPECT_NEAR(n, 300, 60) << b << " bits";  // uniform over the bit-widths

  Toy s = make_setup(bits);
  make_confident(s);
  torch::manual_seed(3);
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = probe_options();
  o.mix_samples = 2;
  o.seed = 7;
  o.weighting = parse_weighting("min-norm");
  QuantizeStep report;
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr,
           [&](const QuantizeStep& r) { report = r; });
  ASSERT_EQ(report.bits, (std::vector<int64_t>{2, 4, 8, 0, 0}));
  ASSERT_EQ(report.losses.size(), 5u);
  ASSERT_EQ(report.alphas.size(), 5u);
  const torch::Tensor x = normalize(s.pool.images, s.norm);
  torch::NoGradGuard no_grad;
  const torch::Tensor teacher_logits = s.teacher->forward(x);
  const MixSampler sampler(*student, 2, 7);
  std::set<std::vector<int64_t>> distinct;
  for (int64_t j = 0; j < 2; ++j) {
    const models::Mix mix = sampler.apply(0, j);
    std::vector<int64_t> drawn;
    for (const auto& l : mix) drawn.push_back(l.w);
    EXPECT_EQ(drawn, step_mix(drawn.size(), bits, 7, 0, j));
    distinct.insert(drawn);
    const double expected = kd_loss(student->forward(x), teacher_logits, o.temperature).item<double>();
    EXPECT_NEAR(report.losses[3 + j], expected, 1e-4 * expected) << "mix " << j;
  }
  EXPECT_EQ(distinct.size(), 2u);
  models::set_bits(*student, 2);
  const double uniform2 = kd_loss(student->forward(x), teacher_logits, o.temperature).item<double>();
  EXPECT_NEAR(report.losses[0], uniform2, 1e-4 * uniform2);
  o.weighting = parse_weighting("pcgrad");
  EXPECT_NE(error_of([&] { o.check(); }).find("--mix-samples does not combine with pcgrad"), std::string::npos);
  o.weighting = parse_weighting("sum");
  o.mix_samples = -1;
  EXPECT_NE(error_of([&] { o.check(); }).find("--mix-samples must be >= 0"), std::string::npos);
}

// Joint training of the shared weights (min-norm, every tensor trains) brings every bit-width closer to the
// teacher on images it never trained on than the calibrated start (the frozen lattice) is; feature
// distillation brings the penultimate features closer to the teacher's than distillation of the logits alone.
TEST_F(QuantizeTest, JointTrainingRaisesEveryBitWidthsAgreementWithTheTeacher) {
  Toy s = make_setup({2, 4, 8});
  const torch::Tensor held_out = normalize(torch::randint(0, 256, {128, 1, 28, 28}, torch::kUInt8), s.norm);
  torch::Tensor teacher_features, teacher_logits;
  {
    torch::NoGradGuard no_grad;
    teacher_features = s.teacher->features(held_out);
    teacher_logits = s.teacher->head(teacher_features);
  }
  struct Distance {
    std::vector<double> kl, feature;
  };
  const auto distance = [&](models::Classifier& student) {
    torch::NoGradGuard no_grad;
    Distance d;
    for (const int64_t b : s.config.bits) {
      models::set_bits(*student, b);
      const torch::Tensor features = student->features(held_out);
      d.kl.push_back(kd_loss(student->head(features), teacher_logits, 1.0).item<double>());
      d.feature.push_back(torch::mse_loss(features, teacher_features).item<double>());
    }
    return d;
  };
  const auto trained = [&](double feature_weight) {
    torch::manual_seed(11);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    QuantizeOptions o = small_options();
    o.weighting = parse_weighting("min-norm");
    o.lr = 0.01;
    o.feature_weight = feature_weight;
    const QuantizeResult result = quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr);
    EXPECT_GT(result.changed_codes, 0.0);
    return distance(student);
  };
  torch::manual_seed(11);
  auto start = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  models::init_student(*start, *s.teacher, normalize(s.pool.images, s.norm));
  const Distance before = distance(start), logits_only = trained(0.0), with_features = trained(1.0);
  for (size_t i = 0; i < s.config.bits.size(); ++i) {
    EXPECT_LT(logits_only.kl[i], 0.9 * before.kl[i]) << s.config.bits[i] << " bits";
    EXPECT_LT(with_features.feature[i], logits_only.feature[i]) << s.config.bits[i] << " bits";
    EXPECT_LT(with_features.feature[i], before.feature[i]) << s.config.bits[i] << " bits";
  }
}

TEST_F(QuantizeTest, PerBitTrainingLeavesTheSharedWeightsAlone) {
  EXPECT_TRUE(is_per_bit_tensor("layer1.0.conv1.act_step_b4"));
  EXPECT_TRUE(is_per_bit_tensor("layer1.0.bn1.b2.weight"));
  EXPECT_FALSE(is_per_bit_tensor("layer1.0.conv1.weight"));
  EXPECT_FALSE(is_per_bit_tensor("layer1.0.conv1.weight_step"));
  Toy s = make_setup({2, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = small_options();
  o.steps = 4;
  o.train = TrainScope::kPerBit;
  std::map<std::string, torch::Tensor> first;
  int64_t shared = 0, own = 0;
  const QuantizeResult result = quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, [&](const QuantizeStep& r) {
    for (const auto& item : student->named_parameters()) {
      if (r.step == 1) {
        first[item.key()] = item.value().detach().clone();
      } else if (r.step == 4) {
        const bool same = torch::equal(first[item.key()], item.value());
        if (is_per_bit_tensor(item.key())) {
          own += !same;
        } else {
          shared += !same;
        }
      }
    }
  });
  EXPECT_EQ(shared, 0);  // latent weights, weight steps: frozen
  EXPECT_EQ(result.changed_codes, 0.0);
  EXPECT_GT(own, 0);     // activation steps and per-bit BatchNorm train
  EXPECT_THROW_WITH(parse_train_scope("some"), "--train must be 'all' or 'per-bit'");
  EXPECT_THROW_WITH(parse_bn_mode("both"), "--bn-mode must be 'shift', 'absolute', 'align' or 'center'");
  EXPECT_EQ(parse_train_scope(train_scope_name(TrainScope::kPerBit)), TrainScope::kPerBit);
  EXPECT_EQ(parse_bn_mode(bn_mode_name(BnMode::kAbsolute)), BnMode::kAbsolute);
}

// --weight-step-lr scales the shared weight steps' update and nothing else; 0 freezes them while the latent
// weights still train.
TEST_F(QuantizeTest, WeightStepLrScalesOnlyTheWeightSteps) {
  EXPECT_TRUE(is_weight_step("layer1.0.conv1.weight_step"));
  EXPECT_TRUE(is_weight_step("weight_step"));
  EXPECT_FALSE(is_weight_step("layer1.0.conv1.weight"));
  EXPECT_FALSE(is_weight_step("layer1.0.conv1.act_step_b4"));
  EXPECT_FALSE(is_weight_step("layer1.0.conv1.xweight_step"));
  Toy s = make_setup({2, 8});
  // The change of every parameter over the second step (the first one's values are recorded after it).
  std::map<std::string, std::map<std::string, torch::Tensor>> moved;
  for (const double m : {1.0, 0.5, 0.0}) {
    torch::manual_seed(3);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    QuantizeOptions o = small_options();
    o.steps = 2;
    o.weight_step_lr = m;
    std::map<std::string, torch::Tensor> first;
    quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, [&](const QuantizeStep& r) {
      for (const auto& item : student->named_parameters()) {
        if (r.step == 1) first[item.key()] = item.value().detach().clone();
        if (r.step == 2) moved[std::to_string(m)][item.key()] = item.value().detach() - first[item.key()];
      }
    });
  }
  int64_t steps = 0, weights = 0;
  for (const auto& [name, d1] : moved[std::to_string(1.0)]) {
    const torch::Tensor& half = moved[std::to_string(0.5)][name];
    const torch::Tensor& zero = moved[std::to_string(0.0)][name];
    if (is_weight_step(name)) {
      ++steps;
      EXPECT_TRUE(torch::equal(zero, torch::zeros_like(zero))) << name;
      EXPECT_GT(d1.abs().max().item<double>(), 0) << name;
      // Nearly half: the second step's gradient comes from slightly different weights.
      EXPECT_NEAR(half.norm().item<double>() / d1.norm().item<double>(), 0.5, 0.05) << name;
    } else if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && d1.dim() > 1) {
      ++weights;
      EXPECT_GT(zero.abs().max().item<double>(), 0) << name;  // latent weights train with frozen steps
    }
  }
  EXPECT_GT(steps, 0);
  EXPECT_GT(weights, 0);
  QuantizeOptions o = small_options();
  o.weight_step_lr = -1;
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  EXPECT_THROW_WITH(quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr),
                    "--weight-step-lr must be a finite number >= 0");
}

// --weighting normalized: each bit-width's gradient on the shared tensors rescaled to the mean norm.
TEST_F(QuantizeTest, NormalizedWeightingGivesEveryBitWidthTheMeanNorm) {
  const torch::Tensor g = torch::tensor({3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5}, torch::kFloat64).view({2, 4});
  // norms 5 and 0.5, mean 2.75: rows scaled by 0.55 and 5.5.
  const torch::Tensor want = torch::tensor({1.65, 2.2, 0.0, 2.75}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(normalized_sum(g), want, 1e-12, 1e-12)) << normalized_sum(g);
  EXPECT_TRUE(torch::equal(normalized_sum(torch::zeros({2, 3}, torch::kFloat64)), torch::zeros({3}, torch::kFloat64)));
  Toy s = make_setup({2, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = small_options();
  o.weighting = parse_weighting("normalized");
  std::vector<QuantizeStep> steps;
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr,
           [&](const QuantizeStep& r) { steps.push_back(r); });
  ASSERT_EQ(steps.size(), 30u);
  for (const auto& r : steps) {
    ASSERT_EQ(r.grad_norms.size(), 2u);
    EXPECT_GT(r.grad_norms[0], 0);
    EXPECT_GT(r.grad_norms[1], 0);
  }
  // The 2-bit loss is the larger one and so is its gradient: what the normalization evens out.
  EXPECT_GT(steps.front().grad_norms[0], steps.front().grad_norms[1]);
  const double first = steps.front().losses[0] + steps.front().losses[1];
  const double last = steps.back().losses[0] + steps.back().losses[1];
  EXPECT_LT(last, first);
  o.weights = {1, 2};
  EXPECT_THROW_WITH(quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, nullptr),
                    "--bit-weights has no meaning with --weighting normalized");
}

// With the pixel range known, the first layer's input steps are set from it and do not train, while every
// other activation step does (the synthetic images' range must not move them).
TEST_F(QuantizeTest, KnownInputRangeKeepsTheFirstLayersInputStepsFixed) {
  Toy s = make_setup({2, 4});
  s.config.first_bits = s.config.last_bits = models::StudentConfig::kSameBits;
  s.config.input_range = models::pixel_input_range(s.norm.mean, s.norm.std);
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = small_options();
  o.steps = 5;
  std::map<std::string, torch::Tensor> first;
  std::set<std::string> moved;
  quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, nullptr, nullptr, [&](const QuantizeStep& r) {
    for (const auto& item : student->named_parameters()) {
      if (item.key().find("act_step_b") == std::string::npos) continue;
      if (r.step == 1) first[item.key()] = item.value().detach().clone();
      if (r.step == 5 && !torch::equal(first[item.key()], item.value())) moved.insert(item.key());
    }
  });
  // Pixels in [0, 1] with mean 0.5, std 0.25: normalized [-2, 2]; 4 bits: z = 8 (split 7.5), max(2/8, 2/7).
  auto* conv1 = dynamic_cast<quant::QuantizedLayer*>(student->named_modules()["conv1"].get());
  ASSERT_TRUE(conv1);
  models::set_bits(*student, 4);
  EXPECT_FLOAT_EQ(conv1->input_step().item<float>(), 2.0f / 7);
  EXPECT_FALSE(moved.count("conv1.act_step_b2"));
  EXPECT_FALSE(moved.count("conv1.act_step_b4"));
  EXPECT_TRUE(moved.count("fc.act_step_b4"));
  size_t others = 0;  // activation steps of other layers than conv1 that trained
  for (const auto& name : moved) others += name.rfind("conv1.", 0) != 0;
  EXPECT_GE(others, 4u) << others;
}

// --clamp-pixels: images outside the pixel range train (and calibrate) exactly as their clamped copies do.
TEST_F(QuantizeTest, ClampPixelsTrainsOnTheClampedImages) {
  Toy s = make_setup({4});
  Dataset wide = s.pool, clamped = s.pool;
  wide.images = torch::rand({64, 1, 28, 28}) * 3 - 1;  // pixels in [-1, 2]
  clamped.images = wide.images.clamp(0, 1);
  QuantizeOptions o = small_options();
  o.steps = 3;
  const auto losses_on = [&](const Dataset& pool, bool clamp) {
    o.clamp_pixels = clamp;
    torch::manual_seed(0);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    std::vector<double> out;
    quantize(*student, *s.teacher, {&pool, s.norm, nullptr}, o, nullptr, nullptr,
             [&](const QuantizeStep& r) { out.push_back(r.losses.at(0)); });
    return out;
  };
  const std::vector<double> reference = losses_on(clamped, false);
  EXPECT_EQ(losses_on(wide, true), reference);
  EXPECT_NE(losses_on(wide, false), reference);
}

TEST_F(QuantizeTest, RefusesASynthesizerThatTrainsWhileSampling) {
  Toy s = make_setup({4, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  generators::SynthesizerOptions so;
  so.recipe = "adversarial";
  so.teacher_spec = {"resnet8", 1, 10, 8};
  auto synth = generators::make_synthesizer(s.teacher, {1, 28, 28}, 10, so);
  EXPECT_THROW_WITH(quantize(*student, *s.teacher, {nullptr, s.norm, synth.get()}, small_options(), nullptr, nullptr,
                             nullptr),
                    "recipe 'adversarial' trains a proxy student while it samples");
}

// Online, the generator's adversarial term works against the student being quantized, at its lowest
// bit-width, from the first student step on (the warm-up, before the student is calibrated, runs without it);
// after the run the synthesizer no longer refers to the student.
TEST_F(QuantizeTest, OnlineAdversaryIsTheStudentBeingQuantized) {
  Toy s = make_setup({2, 8});
  const auto run = [&](double adversarial, const std::vector<int64_t>& bn_train) {
    torch::manual_seed(4);
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    generators::SynthesizerOptions so;
    so.recipe = "gdfq";
    so.adversarial = adversarial;
    so.external_adversary = true;
    so.batch_size = 32;
    auto synth = generators::make_synthesizer(s.teacher, {1, 28, 28}, 10, so);
    EXPECT_EQ(synth->wants_adversary(), adversarial > 0);
    QuantizeOptions o = small_options();
    o.steps = 3;
    o.generator_warmup = 2;
    o.bn_train = bn_train;
    std::vector<QuantizeStep> steps;
    quantize(*student, *s.teacher, {nullptr, s.norm, synth.get()}, o, nullptr, nullptr,
             [&](const QuantizeStep& r) { steps.push_back(r); });
    generators::StepReport after;
    synth->train_step(&after);
    EXPECT_EQ(after.adversarial, 0.0);  // cleared at the end of the run
    return steps;
  };
  const auto plain = run(0, {}), adversarial = run(1, {});
  ASSERT_EQ(adversarial.size(), 5u);
  for (int i = 0; i < 2; ++i) {  // the warm-up: the same generator steps as without the term
    EXPECT_EQ(adversarial[i].generator_adversarial, 0.0);
    EXPECT_EQ(adversarial[i].generator_loss, plain[i].generator_loss);
  }
  for (int i = 2; i < 5; ++i) {
    EXPECT_LT(adversarial[i].generator_adversarial, 0.0) << "step " << i;
    EXPECT_EQ(plain[i].generator_adversarial, 0.0);
  }
  EXPECT_NE(adversarial[2].generator_loss, plain[2].generator_loss);
  EXPECT_THROW_WITH(run(1, {2}), "--bn-train 2 would update");
  EXPECT_NO_THROW(run(1, {8}));
}

// SIGKILL in the middle of a checkpoint write, as a death test: the run goes on in a child process (started
// afresh, so no OpenMP state crosses a fork), which the hook kills while it writes step 4's checkpoint. The
// checkpoint of step 2 stays, loadable, beside the killed write's temporary file, and a run resumed from it
// ends bit for bit where an uninterrupted run ends.
TEST_F(QuantizeTest, KilledDuringACheckpointWriteKeepsThePreviousOne) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  const bool child = ::testing::internal::InDeathTestChild();
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("zsq-test-kill-" + std::to_string(child ? ::getppid() : ::getpid()));
  if (!child) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  Toy s = make_setup({4, 8});
  QuantizeOptions o = small_options();
  o.steps = 6;
  o.checkpoint_every = 2;
  o.checkpoint = (dir / "checkpoint.h5").string();
  const auto train = [&](const QuantizeOptions& options) {
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    const CheckpointStudent write_student = [&](h5::File& file) {
      models::write_student(file, *student, s.config, ModelMeta{});
    };
    quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, options, write_student, nullptr, nullptr);
    return student;
  };
  EXPECT_EXIT(
      {
        QuantizeOptions killed = o;
        killed.checkpoint_hook = [](int64_t step) {
          if (step == 4) std::raise(SIGKILL);
        };
        train(killed);
      },
      ::testing::KilledBySignal(SIGKILL), "");
  EXPECT_EQ(read_checkpoint_info(o.checkpoint).step, 2);
  int64_t temporary = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    temporary += entry.path().filename().string().rfind(".checkpoint.h5.tmp.", 0) == 0;
  }
  EXPECT_EQ(temporary, 1);
  QuantizeOptions resume = o;
  resume.resume = true;
  const auto resumed = train(resume);
  QuantizeOptions straight = o;
  straight.checkpoint = (dir / "straight.h5").string();
  const auto uninterrupted = train(straight);
  EXPECT_EQ(read_checkpoint_info(o.checkpoint).step, 6);
  const auto a = resumed->named_parameters(), b = uninterrupted->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].value(), b[i].value())) << a[i].key();
  const auto x = resumed->named_buffers(), y = uninterrupted->named_buffers();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(torch::equal(x[i].value(), y[i].value())) << x[i].key();
  std::filesystem::remove_all(dir);
}

TEST_F(QuantizeTest, DivergenceStopsAndKeepsTheLastCheckpoint) {
  Toy s = make_setup({4, 8});
  auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
  QuantizeOptions o = small_options();
  o.steps = 10;
  o.checkpoint_every = 2;
  o.checkpoint = path("checkpoint.h5");
  const CheckpointStudent write_student = [&](h5::File& file) {
    models::write_student(file, *student, s.config, ModelMeta{});
  };
  // After step 5 a weight turns NaN: step 6 must stop the run; the checkpoint stays at step 4.
  const std::string error = error_of([&] {
    quantize(*student, *s.teacher, {&s.pool, s.norm, nullptr}, o, write_student, nullptr, [&](const QuantizeStep& r) {
      for (const auto& item : student->named_parameters()) {
        EXPECT_TRUE(torch::isfinite(item.value()).all().item<bool>()) << item.key() << " at step " << r.step;
      }
      if (r.step == 5) {
        torch::NoGradGuard no_grad;
        student->parameters()[0].view(-1)[0] = std::nan("");
      }
    });
  });
  EXPECT_NE(error.find("training diverged"), std::string::npos) << error;
  EXPECT_NE(error.find("at step 6"), std::string::npos) << error;
  EXPECT_NE(error.find("the checkpoint of step 4 is kept"), std::string::npos) << error;
  const CheckpointInfo info = read_checkpoint_info(o.checkpoint);
  EXPECT_EQ(info.step, 4);
  const h5::File file = h5::File::open_read(o.checkpoint);
  for (const std::string& name : file.dataset_names()) {
    const torch::Tensor t = file.read_tensor(name);
    if (torch::isFloatingType(t.scalar_type())) {
      EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
    }
  }
}

// A checkpoint holds the state of the parts that wrote it: an online run's checkpoint resumed from a pool, or a
// pool run's resumed with online generation, is refused with the reason before a step runs.
TEST_F(QuantizeTest, ResumeRefusesAnotherImageSource) {
  Toy s = make_setup({4, 8});
  const auto run = [&](bool online, const std::string& file, bool resume) {
    auto student = models::build({"resnet8", 1, 10, 8}, models::QuantFactory(s.config));
    generators::SynthesizerOptions so;
    so.recipe = "gdfq";
    so.batch_size = 32;
    auto synth = online ? generators::make_synthesizer(s.teacher, {1, 28, 28}, 10, so) : nullptr;
    QuantizeOptions o = small_options();
    o.steps = 3;
    o.stop_after = 1;
    o.checkpoint = path(file);
    o.resume = resume;
    const CheckpointStudent write_student = [&](h5::File& f) {
      models::write_student(f, *student, s.config, ModelMeta{});
    };
    quantize(*student, *s.teacher, {online ? nullptr : &s.pool, s.norm, synth.get()}, o, write_student, nullptr,
             nullptr);
  };
  run(/*online=*/true, "online.h5", false);
  run(/*online=*/false, "pool.h5", false);
  EXPECT_THROW_WITH(run(false, "online.h5", true), "made with online generation; resume it with the same --recipe");
  EXPECT_THROW_WITH(run(true, "pool.h5", true), "no generator tensor");
  EXPECT_NO_THROW(run(true, "online.h5", true));
  EXPECT_EQ(read_checkpoint_info(path("online.h5")).step, 2);
}

} // namespace
} // namespace zsq::trainers
