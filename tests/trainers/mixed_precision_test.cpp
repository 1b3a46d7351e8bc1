// Data-free mixed precision: the Pareto front against brute force, budgets, sensitivity and the
// BatchNorm adaptation of a mix.
#include "trainers/mixed_precision.h"

#include "framework/errors.h"

#include "tests/models/student_fixture.h"

#include <random>

namespace zsq::trainers {
namespace {

using models::Mix;
using test::error_of;

class MixedPrecisionTest : public test::StudentFixture {
 protected:
  void SetUp() override {
    test::StudentFixture::SetUp();
    make({"resnet8", 1, 10, 8}, {2, 3, 4, 8});
    layers_ = models::mix_layers(*student_, meta_.input_shape);
  }
  std::vector<models::MixLayer> layers_;
};

// A random sensitivity table (lower bits cost more KL) and every one of the 4^8 mixes of the free layers.
Sensitivity random_table(const std::vector<models::MixLayer>& layers) {
  Sensitivity s;
  s.bits = {2, 3, 4, 8};
  s.base = 0.01;
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0, 1);
  for (const auto& l : layers) {
    s.layers.push_back(l.name);
    const double a = u(rng), b = u(rng);
    s.kl.push_back({s.base + a + b, s.base + a * 0.5 + b * 0.2, s.base + a * 0.1, s.base});
  }
  return s;
}

struct Enumerated {
  Mix mix;
  models::MixCost cost;
  double kl = 0;
};

std::vector<Enumerated> every_mix(const std::vector<models::MixLayer>& layers, const Sensitivity& s) {
  std::vector<size_t> free;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].free) free.push_back(i);
  }
  EXPECT_EQ(free.size(), 8u);
  std::vector<Enumerated> out;
  for (int64_t code = 0; code < 65536; ++code) {
    Enumerated e;
    e.mix = models::uniform_mix(layers, 8);
    e.kl = s.base;
    for (size_t f = 0; f < free.size(); ++f) {
      const size_t k = (code >> (2 * f)) & 3;
      e.mix[free[f]] = {s.bits[k], s.bits[k]};
      e.kl += s.kl[free[f]][k] - s.base;
    }
    e.mix = complete_mix(layers, e.mix);
    e.cost = models::mix_cost(layers, e.mix);
    out.push_back(std::move(e));
  }
  return out;
}

// The exact front must hold, for every mix, a point at most as costly with at most its predicted KL, and
// only points some mix reaches (their predicted KL is the table's sum).
TEST_F(MixedPrecisionTest, ParetoFrontIsExactAgainstBruteForce) {
  const Sensitivity s = random_table(layers_);
  const std::vector<Enumerated> all = every_mix(layers_, s);
  for (const Budget kind : {Budget::kBytes, Budget::kBops, Budget::kMeanWeightBits}) {
    SCOPED_TRACE(static_cast<int>(kind));
    const std::vector<FrontPoint> front = pareto_front(layers_, s, kind);
    ASSERT_FALSE(front.empty());
    for (size_t i = 1; i < front.size(); ++i) {
      EXPECT_GT(budget_value(kind, front[i].cost), budget_value(kind, front[i - 1].cost) - 1e-9);
      EXPECT_LT(front[i].predicted_kl, front[i - 1].predicted_kl);
    }
    for (const FrontPoint& p : front) {
      const auto it = std::find_if(all.begin(), all.end(), [&](const Enumerated& e) { return e.mix == p.mix; });
      ASSERT_TRUE(it != all.end()) << models::mix_text(p.mix);
      EXPECT_NEAR(p.predicted_kl, it->kl, 1e-9);
    }
    for (const Enumerated& e : all) {
      const double cost = budget_value(kind, e.cost);
      const bool covered = std::any_of(front.begin(), front.end(), [&](const FrontPoint& p) {
        return budget_value(kind, p.cost) <= cost + 1e-9 && p.predicted_kl <= e.kl + 1e-12;
      });
      ASSERT_TRUE(covered) << "mix " << models::mix_text(e.mix) << " beats the front";
    }
    // The choice under a budget: the least KL that fits; none below the cheapest.
    const double mid = (budget_value(kind, front.front().cost) + budget_value(kind, front.back().cost)) / 2;
    const FrontPoint& chosen = choose(front, kind, mid);
    EXPECT_LE(budget_value(kind, chosen.cost), mid);
    for (const FrontPoint& p : front) {
      if (budget_value(kind, p.cost) <= mid) {
        EXPECT_GE(p.predicted_kl, chosen.predicted_kl);
      }
    }
    EXPECT_NE(error_of([&] { choose(front, kind, budget_value(kind, front.front().cost) * 0.5); }).find("no mix fits"),
              std::string::npos);
  }
}

// Two measures at once (size and BOPs, either first): the front holds only mixes within the second limit
// and, for every mix within it, a point at most as costly in the first with at most its KL; a limit below
// the cheapest mix is refused.
TEST_F(MixedPrecisionTest, TwoMeasureFrontIsExactAgainstBruteForce) {
  const Sensitivity s = random_table(layers_);
  const std::vector<Enumerated> all = every_mix(layers_, s);
  for (const auto& [kind, other] : {std::make_pair(Budget::kBytes, Budget::kBops),
                                    std::make_pair(Budget::kBops, Budget::kBytes)}) {
    SCOPED_TRACE(static_cast<int>(kind));
    double lo = 1e300, hi = 0;
    for (const Enumerated& e : all) {
      lo = std::min(lo, budget_value(other, e.cost));
      hi = std::max(hi, budget_value(other, e.cost));
    }
    for (const double fraction : {0.2, 0.5}) {
      const double limit = lo + fraction * (hi - lo);
      const std::vector<FrontPoint> front = pareto_front(layers_, s, kind, std::make_pair(other, limit));
      const std::vector<FrontPoint> one = pareto_front(layers_, s, kind);
      ASSERT_FALSE(front.empty());
      for (const FrontPoint& p : front) EXPECT_LE(budget_value(other, p.cost), limit * (1 + 1e-9));
      int64_t within = 0;
      for (const Enumerated& e : all) {
        if (budget_value(other, e.cost) > limit) continue;
        ++within;
        const double cost = budget_value(kind, e.cost);
        const bool covered = std::any_of(front.begin(), front.end(), [&](const FrontPoint& p) {
          return budget_value(kind, p.cost) <= cost + 1e-9 && p.predicted_kl <= e.kl + 1e-12;
        });
        ASSERT_TRUE(covered) << "mix " << models::mix_text(e.mix) << " within the limit beats the front";
      }
      EXPECT_GT(within, 0);
      EXPECT_LT(within, static_cast<int64_t>(all.size()));
      // The limit binds: the unconstrained front's least KL is out of reach.
      EXPECT_GT(front.back().predicted_kl, one.back().predicted_kl);
    }
    EXPECT_NE(error_of([&] { pareto_front(layers_, s, kind, std::make_pair(other, lo * 0.9)); }).find("no mix fits"),
              std::string::npos);
  }
}

TEST_F(MixedPrecisionTest, BudgetsParseWithUnitsAndRefuseTheRest) {
  EXPECT_EQ(parse_budget("size=40KB"), std::make_pair(Budget::kBytes, 40000.0));
  EXPECT_EQ(parse_budget("size=2KiB"), std::make_pair(Budget::kBytes, 2048.0));
  EXPECT_EQ(parse_budget("size=1234"), std::make_pair(Budget::kBytes, 1234.0));
  EXPECT_EQ(parse_budget("wbits=3.5"), std::make_pair(Budget::kMeanWeightBits, 3.5));
  EXPECT_EQ(parse_budget("bops=1.5G"), std::make_pair(Budget::kBops, 1.5e9));
  EXPECT_NE(error_of([] { parse_budget("size=40kb"); }).find("unit must be B, KB, MB, KiB or MiB"), std::string::npos);
  EXPECT_NE(error_of([] { parse_budget("speed=3"); }).find("expected size=40KB"), std::string::npos);
  EXPECT_NE(error_of([] { parse_budget("wbits=-1"); }).find("must be positive"), std::string::npos);
  EXPECT_NE(error_of([] { parse_budget("wbits=3bits"); }).find("expected size=40KB"), std::string::npos);
  EXPECT_THROW(parse_budget("size"), OptionError);
  const auto two = parse_budgets("size=100KB,bops=0.3G");
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0], std::make_pair(Budget::kBytes, 1e5));
  EXPECT_EQ(two[1], std::make_pair(Budget::kBops, 3e8));
  EXPECT_EQ(parse_budgets("wbits=3").size(), 1u);
  EXPECT_NE(error_of([] { parse_budgets("size=1KB,size=2KB"); }).find("size is given twice"), std::string::npos);
  EXPECT_NE(error_of([] { parse_budgets("size=1KB,bops=1G,wbits=3"); }).find("at most two measures"), std::string::npos);
  EXPECT_NE(error_of([] { parse_budgets("size=1KB,"); }).find("expected size=40KB"), std::string::npos);
  EXPECT_THROW(parse_bn_adapt("both"), OptionError);
}

// Lowering a layer raises the KL to the reference; the table leaves the student as it was; adapting a
// uniform mix changes no statistic, a real mix changes the lowered layer's and later ones, and the
// snapshot gives the uniform model back.
TEST_F(MixedPrecisionTest, SensitivityAndBatchNormAdaptation) {
  const torch::Tensor images = torch::randn({64, 1, 28, 28});
  torch::Tensor reference;
  {
    torch::NoGradGuard no_grad;
    reference = teacher_->forward(images);
  }
  const torch::Tensor before = student_logits(4, images);
  MixedPrecision mp(*student_, layers_, images, reference);
  const Sensitivity s = mp.sensitivity(BnAdapt::kRelative);
  ASSERT_EQ(s.kl.size(), layers_.size());
  int raised = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].free) {
      EXPECT_EQ(s.kl[i], std::vector<double>(4, s.base));
      continue;
    }
    raised += s.kl[i][0] > s.base;
    EXPECT_NE(s.kl[i][0], s.kl[i][2]) << layers_[i].name;  // 2 and 4 bits measured apart
  }
  EXPECT_GE(raised, 6);  // 2-bit weights and inputs lose information in (nearly) every layer
  EXPECT_TRUE(torch::equal(student_logits(4, images), before));  // statistics restored
  BnSnapshot snapshot(*student_);
  const auto stats = [&] {
    std::vector<torch::Tensor> out;
    for (const auto& item : student_->named_buffers()) {
      if (item.key().find("running_") != std::string::npos) out.push_back(item.value().clone());
    }
    return out;
  };
  const auto start = stats();
  mp.adapt_batch_norms(models::uniform_mix(layers_, 3), BnAdapt::kRelative);
  auto now = stats();
  for (size_t i = 0; i < start.size(); ++i) EXPECT_TRUE(torch::equal(now[i], start[i]));
  Mix mix = models::uniform_mix(layers_, 4);
  mix[3] = {2, 2};
  mix = complete_mix(layers_, mix);
  const double kept = mp.kl(mix);
  mp.adapt_batch_norms(mix, BnAdapt::kRelative);
  EXPECT_NE(mp.kl(mix), kept);
  now = stats();
  size_t changed = 0;
  for (size_t i = 0; i < start.size(); ++i) changed += !torch::equal(now[i], start[i]);
  EXPECT_GT(changed, 0u);
  snapshot.restore();
  now = stats();
  for (size_t i = 0; i < start.size(); ++i) EXPECT_TRUE(torch::equal(now[i], start[i]));
}

} // namespace
} // namespace zsq::trainers
