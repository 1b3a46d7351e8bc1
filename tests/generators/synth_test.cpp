// BN-statistics losses against direct computations, and the recipes doing
// what they are for.
#include "generators/bns_loss.h"
#include "generators/loss_terms.h"
#include "generators/networks.h"
#include "generators/synthesizer.h"

#include "tests/support.h"

namespace zsq::generators {
namespace {

using test::error_of;

class SynthTest : public test::SeedingFixture {
 protected:
  void SetUp() override {
    SeedingFixture::SetUp();
    teacher_ = models::build({"resnet8", 1, 10, 8}, models::Fp32Factory());
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 20; ++i) teacher_->forward(torch::randn({32, 1, 28, 28}) * 0.8 + 0.3);
    teacher_->eval();
    for (const auto& [name, bn] : models::batch_norms(*teacher_)) bns_.push_back(bn);
  }
  // Runs the teacher on x with taps on.
  void tap(const torch::Tensor& x) {
    models::set_bn_taps(*teacher_, true);
    teacher_->forward(x);
  }
  models::Classifier teacher_;
  std::vector<nn::BatchNorm2d> bns_;
};

TEST_F(SynthTest, BnsVariantsMatchDirectComputation) {
  tap(torch::randn({6, 1, 28, 28}));
  double zeroq = 0, genie = 0, gdfq = 0;
  for (const auto& bn : bns_) {
    const torch::Tensor x = bn->tap_input().detach().to(torch::kFloat64);
    const int64_t n = x.size(0), c = x.size(1);
    const torch::Tensor mu = bn->running_mean.to(torch::kFloat64), var = bn->running_var.to(torch::kFloat64);
    const torch::Tensor sigma = (var + 1e-6).sqrt();
    const torch::Tensor per_channel = x.transpose(0, 1).reshape({c, -1});  // C × (N·H·W)
    for (int64_t i = 0; i < n; ++i) {  // one image at a time
      const torch::Tensor xi = x[i].reshape({c, -1});
      zeroq += ((xi.mean(1) - mu).pow(2).sum() + ((xi.var(1, true) + 1e-6).sqrt() - sigma).pow(2).sum()).item<double>() / n;
    }
    genie += ((per_channel.mean(1) - mu).pow(2).mean() + (per_channel.std(1, true) - sigma).pow(2).mean()).item<double>();
    gdfq += ((per_channel.mean(1) - mu).pow(2).mean() + (per_channel.var(1, false) - var).pow(2).mean()).item<double>();
  }
  gdfq /= static_cast<double>(bns_.size());
  EXPECT_NEAR(bns_loss(bns_, {BnsVariant::kZeroQ, 0}).total.item<double>(), zeroq, 1e-3 * zeroq);
  EXPECT_NEAR(bns_loss(bns_, {BnsVariant::kGenie, 0}).total.item<double>(), genie, 1e-3 * genie);
  EXPECT_NEAR(bns_loss(bns_, {BnsVariant::kGdfq, 0}).total.item<double>(), gdfq, 1e-3 * gdfq);
  EXPECT_EQ(bns_loss(bns_, {BnsVariant::kGdfq, 0}).per_layer.size(), bns_.size());
}

TEST_F(SynthTest, SlackMarginZeroesTheLossInsideIt) {
  tap(torch::randn({8, 1, 28, 28}));
  for (const BnsVariant v : {BnsVariant::kZeroQ, BnsVariant::kGenie, BnsVariant::kGdfq}) {
    SCOPED_TRACE(bns_variant_name(v));
    const double plain = bns_loss(bns_, {v, 0}).total.item<double>();
    const double some = bns_loss(bns_, {v, 0.05}).total.item<double>();
    EXPECT_GT(plain, 0);
    EXPECT_LT(some, plain);
    EXPECT_EQ(bns_loss(bns_, {v, 1e6}).total.item<double>(), 0.0);
  }
  models::set_bn_taps(*teacher_, false);
  EXPECT_NE(error_of([&] { bns_loss(bns_, {}); }).find("saw no input with its tap on"), std::string::npos);
}

TEST_F(SynthTest, LayerwiseEnhancementWeighsOneLayerPerSampleTwice) {
  const int64_t layers = static_cast<int64_t>(bns_.size());
  tap(torch::randn({layers, 1, 28, 28}));  // one sample per layer
  const double plain = bns_loss(bns_, {BnsVariant::kZeroQ, 0, false}).total.item<double>();
  const double enhanced = bns_loss(bns_, {BnsVariant::kZeroQ, 0, true}).total.item<double>();
  // Sample i's term of layer i counts twice: the extra is Σ_i term(i, i) / N.
  double extra = 0;
  for (int64_t i = 0; i < layers; ++i) {
    const torch::Tensor x = bns_[i]->tap_input().detach()[i].reshape({bns_[i]->tap_input().size(1), -1});
    const torch::Tensor sigma = (bns_[i]->running_var + 1e-6).sqrt();
    extra += ((x.mean(1) - bns_[i]->running_mean).pow(2).sum() + ((x.var(1, true) + 1e-6).sqrt() - sigma).pow(2).sum())
                 .item<double>() / layers;
  }
  EXPECT_NEAR(enhanced - plain, extra, 1e-3 * extra);
  EXPECT_NE(error_of([&] { bns_loss(bns_, {BnsVariant::kGdfq, 0, true}); }).find("needs per-sample statistics"),
            std::string::npos);
}

TEST_F(SynthTest, ImagePrior) {
  const torch::Tensor x = torch::tensor({{{{1.0f, 3.0f}, {1.0f, 3.0f}}}});  // mean 2, unbiased std 2/sqrt(3)·sqrt(... )
  const double mean = 2.0, std = std::sqrt(4.0 / 3.0);
  EXPECT_NEAR(image_prior_loss(x).item<double>(), mean * mean + (std - 1) * (std - 1), 1e-5);
}

// The fixture's teacher is random: its predictions hardly depend on the image (p(target) stays near 0.1,
// the cross-entropy near ln 10), so the generator has no class to aim at and only its BN-statistics term
// can fall. At GDFQ's weight 0.1 that term is 2 % of the loss and its fall drowned in noise (it failed on a
// fresh machine); at weight 1 it falls steadily (0.051 -> 0.046 in 40 steps).
TEST_F(SynthTest, GdfqTrainingLowersBns) {
  SynthesizerOptions o;
  o.recipe = "gdfq";
  o.batch_size = 32;
  o.iterations = 40;
  o.lr = 1e-2;
  o.bns_weight = 1;
  auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  std::vector<StepReport> reports;
  synth->fit([&](const StepReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 40u);
  const auto mean_of = [&](size_t from, size_t to, double StepReport::*field) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += reports[i].*field;
    return s / static_cast<double>(to - from);
  };
  EXPECT_LT(mean_of(35, 40, &StepReport::bns), 0.95 * mean_of(0, 5, &StepReport::bns));
  const auto [images, labels] = synth->next_batch(nullptr);
  EXPECT_EQ(images.sizes(), torch::IntArrayRef({32, 1, 28, 28}));
  EXPECT_EQ(labels.sizes(), torch::IntArrayRef({32}));
}

// --gen-clamp-pixels: the losses see the generated images clamped to the pixel range, the images handed on are as
// generated (the trainer clamps them itself).
TEST_F(SynthTest, GeneratorLossesSeeTheClampedImages) {
  SynthesizerOptions o;
  o.recipe = "gdfq";
  o.batch_size = 16;
  o.latent_dim = 16;
  o.bns_weight = 1;
  o.ce_weight = 0;
  o.seed = 3;
  const PixelClamp clamp(Normalization{{0.5}, {0.25}});  // pixels [0, 1] are [-2, 2]: N(0, 1) images clip a little
  const auto bns_of = [&](const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    tap(x);
    const double v = bns_loss(bns_, {BnsVariant::kGdfq, 0}).total.item<double>();
    models::set_bn_taps(*teacher_, false);
    return v;
  };
  for (const bool clamped : {false, true}) {
    SCOPED_TRACE(clamped);
    o.loss_clamp = clamped ? clamp : PixelClamp();
    auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
    StepReport report;
    const torch::Tensor images = synth->train_step(&report).first;
    const torch::Tensor inside = clamp(images);
    ASSERT_GT((inside != images).sum().item<int64_t>(), 0) << "the test needs pixels outside the range";
    EXPECT_NEAR(report.bns, bns_of(clamped ? inside : images), 1e-5 * report.bns);
    EXPECT_GT(std::abs(bns_of(inside) - bns_of(images)), 1e-3 * report.bns);
  }
}

TEST_F(SynthTest, ZeroqLowersBns) {
  SynthesizerOptions o;
  o.recipe = "zeroq";
  o.batch_size = 16;
  o.iterations = 30;
  o.lr = 0.1;
  auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  std::vector<StepReport> reports;
  synth->next_batch([&](const StepReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 30u);
  EXPECT_LT(reports.back().bns, 0.5 * reports.front().bns);
}

TEST_F(SynthTest, GenieLowersBns) {
  SynthesizerOptions o;
  o.recipe = "genie";
  o.batch_size = 16;
  o.iterations = 40;
  o.latent_dim = 32;
  o.teacher_spec = {"resnet8", 1, 10, 8};
  auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  std::vector<double> bns;
  const auto [x, y] = synth->next_batch([&](const StepReport& r) { bns.push_back(r.bns); });
  ASSERT_EQ(bns.size(), 40u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += bns[i], last += bns[35 + i];
  EXPECT_LT(last, 0.7 * first);
  EXPECT_EQ(x.sizes(), torch::IntArrayRef({16, 1, 28, 28}));
  o.teacher_spec.arch = "";
  EXPECT_NE(error_of([&] { make_synthesizer(teacher_, {1, 28, 28}, 10, o); }).find("needs the teacher's architecture"),
            std::string::npos);
}

TEST_F(SynthTest, IntraqOptimizesTowardsItsLabelsAndUsesCentroids) {
  SynthesizerOptions o;
  o.recipe = "intraq";
  o.batch_size = 16;
  o.iterations = 40;
  o.lr = 0.1;
  auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  std::vector<StepReport> first, second;
  const auto [x, y] = synth->next_batch([&](const StepReport& r) { first.push_back(r); });
  EXPECT_GT(first.back().confidence, first.front().confidence);  // p(target label) rises
  EXPECT_LT(first.back().bns, first.front().bns);
  EXPECT_GT((torch::bincount(y, {}, 10) > 0).sum().item<int64_t>(), 3);  // uniform target labels, not one predicted class
  // The second batch also has the marginal distance term (centroids of the first).
  o.soft_target = 0;
  o.lor = 0;
  o.margin_low = 0.9;  // features of one teacher are alike (cosine > 0.1): the lower bound binds
  o.margin_up = 1.0;
  auto plain = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  std::vector<StepReport> a, b;
  plain->next_batch([&](const StepReport& r) { a.push_back(r); });
  plain->next_batch([&](const StepReport& r) { b.push_back(r); });
  EXPECT_EQ(a.front().ce, 0.0);  // no centroid yet: nothing but BN statistics
  EXPECT_GT(b.front().ce, 0.0);  // the marginal distance now counts
}

// The generator networks on their own: output shapes, the class embedding as a factor of the input,
// Qimera's mapping layer, and the shapes they refuse.
TEST_F(SynthTest, GeneratorNetworks) {
  GdfqGenerator gdfq(10, 16, std::vector<int64_t>{1, 28, 28});
  gdfq->eval();
  const torch::Tensor z = torch::randn({4, 16});
  const torch::Tensor y = torch::tensor({0, 3, 3, 9});
  const torch::Tensor x = gdfq->forward(z, y);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{4, 1, 28, 28}));
  EXPECT_TRUE(torch::allclose(gdfq->body(z * gdfq->emb->forward(y)), x));
  EXPECT_FALSE(torch::allclose(gdfq->forward(z, torch::tensor({1, 3, 3, 9})).narrow(0, 0, 1), x.narrow(0, 0, 1)));
  const size_t plain = gdfq->parameters().size();
  gdfq->add_mapping(16);
  EXPECT_EQ(gdfq->parameters().size(), plain + 2);
  EXPECT_THROW_WITH(GdfqGenerator(10, 16, std::vector<int64_t>{1, 30, 28}), "height and width divisible by 4");
  GenieGenerator genie(8, std::vector<int64_t>{3, 32, 32});
  EXPECT_EQ(genie->forward(torch::randn({2, 8})).sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  EXPECT_THROW_WITH(GenieGenerator(8, std::vector<int64_t>{3, 30, 32}), "height and width divisible by");
}

TEST_F(SynthTest, QimeraSuperposesClassesWithSoftTargets) {
  SynthesizerOptions o;
  o.recipe = "qimera";
  o.batch_size = 16;
  o.iterations = 3;
  o.superpose_prob = 1;  // every step superposed
  o.mapping = 1;
  auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  const auto params = synth->parameters();
  std::vector<StepReport> reports;
  synth->fit([&](const StepReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 3u);
  // The same run without superposition computes other losses from the first step on.
  SynthesizerOptions single = o;
  single.superpose_prob = 0;
  auto without = make_synthesizer(teacher_, {1, 28, 28}, 10, single);
  std::vector<StepReport> plain_reports;
  without->fit([&](const StepReport& r) { plain_reports.push_back(r); });
  EXPECT_NE(reports.front().ce, plain_reports.front().ce);
  // The cross-entropy is to the soft mixture, not to its top class (the labels train_step returns): a
  // plain step's reported cross-entropy is the hard one of its images, a superposed step's is not.
  const auto hard_ce = [&](Synthesizer& s, StepReport* report) {
    const auto [images, labels] = s.train_step(report);
    torch::NoGradGuard no_grad;
    return torch::cross_entropy_loss(teacher_->forward(images), labels).item<double>();
  };
  StepReport superposed_step, plain_step;
  const double superposed_hard = hard_ce(*synth, &superposed_step), plain_hard = hard_ce(*without, &plain_step);
  EXPECT_NEAR(plain_step.ce, plain_hard, 1e-5 * plain_hard);
  EXPECT_GT(std::abs(superposed_step.ce - superposed_hard), 100 * 1e-5 * superposed_hard);
  auto plain = make_synthesizer(teacher_, {1, 28, 28}, 10, SynthesizerOptions{});
  EXPECT_EQ(params.size(), plain->parameters().size() + 2);  // the mapping layer's weight and bias
  o.recipe = "zeroq";
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("need the class-conditional generator"), std::string::npos);
  o.recipe = "qimera";
  o.superpose_k = 1;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("--superpose-k must be >= 2"), std::string::npos);
}

TEST_F(SynthTest, AdversarialTermAndProxyStudent) {
  SynthesizerOptions o;
  o.recipe = "adversarial";
  o.batch_size = 64;
  o.iterations = 12;
  o.latent_dim = 16;
  o.student_steps = 3;
  o.adversarial = 0.5;
  o.teacher_spec = {"resnet8", 1, 10, 8};
  auto synth = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  EXPECT_TRUE(synth->trains_while_sampling());
  std::vector<StepReport> reports;
  synth->fit([&](const StepReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 12u);
  // The generator's loss is gdfq's plus the (non-positive) adversarial term.
  // Its weight ramps up linearly over the 12 warm-up steps to 0.5.
  for (size_t k = 0; k < reports.size(); ++k) {
    const StepReport& r = reports[k];
    EXPECT_LE(r.adversarial, 0);
    EXPECT_NEAR(r.adversarial_weight, 0.5 * static_cast<double>(k + 1) / 12, 1e-12);
    EXPECT_NEAR(r.total, 0.1 * r.bns + r.ce + r.adversarial_weight * r.adversarial, 1e-4 * (1 + std::abs(r.total)));
  }
  // Once the student agrees with the teacher on some samples, the term is negative.
  EXPECT_TRUE(std::any_of(reports.begin(), reports.end(), [](const StepReport& r) { return r.adversarial < 0; }));
  // The proxy student learns the teacher on the generated images.
  EXPECT_LT(reports.back().student_kd, 0.5 * reports.front().student_kd);
  // Each sampled batch is one more training step: the generator moves between batches.
  const torch::Tensor before = synth->parameters()[0].clone();
  StepReport sampled;
  const auto [x, y] = synth->next_batch([&](const StepReport& r) { sampled = r; });
  EXPECT_EQ(x.sizes(), torch::IntArrayRef({64, 1, 28, 28}));
  EXPECT_FALSE(torch::equal(before, synth->parameters()[0]));
  EXPECT_EQ(sampled.step, 1);
  EXPECT_LE(sampled.adversarial, 0);
  EXPECT_EQ(sampled.adversarial_weight, 0.5);  // full weight after the warm-up
  // --stride 2: one written batch is two training steps, the second one's images.
  o.iterations = 2;
  o.batch_size = 16;
  auto one = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  o.stride = 2;
  auto two = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
  one->fit(nullptr);
  two->fit(nullptr);
  one->next_batch(nullptr);
  const torch::Tensor second = one->next_batch(nullptr).first;
  EXPECT_TRUE(torch::equal(two->next_batch(nullptr).first, second));
  EXPECT_TRUE(torch::equal(one->parameters()[0], two->parameters()[0]));
  o.stride = -1;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("--stride must be >= 1"), std::string::npos);
  o.stride = 0;
  o.lor = 1;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("local object reinforcement cannot be combined"), std::string::npos);
  o.lor = -1;
  // gdfq with the adversarial part is the same recipe; without a generator it is refused.
  o.recipe = "gdfq";
  o.adversarial = 1;
  EXPECT_NO_THROW(resolve_recipe(o));
  o.recipe = "zeroq";
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("the adversarial term needs a trained generator"), std::string::npos);
  o.recipe = "gdfq";
  o.adversarial = 0;
  o.stride = 2;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("--stride and --student-steps need the adversarial part"),
            std::string::npos);
  o.stride = 0;
  o.adversarial = 1;
  o.recipe = "adversarial";
  o.adversarial = -0.5;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("--adversarial must be >= 0"), std::string::npos);
  o.adversarial = -1;
  o.teacher_spec = {"", 1, 10, 16};
  EXPECT_NE(error_of([&] { make_synthesizer(teacher_, {1, 28, 28}, 10, o); }).find("needs the teacher's architecture"),
            std::string::npos);
}

TEST_F(SynthTest, SameSeedSameImages) {
  for (const char* recipe : {"noise", "gdfq", "genie", "adversarial"}) {
    SCOPED_TRACE(recipe);
    SynthesizerOptions o;
    o.recipe = recipe;
    o.batch_size = 8;
    o.iterations = 2;
    o.seed = 5;
    o.latent_dim = 16;
    o.teacher_spec = {"resnet8", 1, 10, 8};
    auto a = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
    auto b = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
    a->fit(nullptr);
    b->fit(nullptr);
    const auto [xa, ya] = a->next_batch(nullptr);
    const auto [xb, yb] = b->next_batch(nullptr);
    EXPECT_TRUE(torch::equal(xa, xb));
    EXPECT_TRUE(torch::equal(ya, yb));
    o.seed = 6;
    auto c = make_synthesizer(teacher_, {1, 28, 28}, 10, o);
    c->fit(nullptr);
    EXPECT_FALSE(torch::equal(c->next_batch(nullptr).first, xa));
  }
}

TEST_F(SynthTest, ClearErrors) {
  SynthesizerOptions o;
  o.recipe = "genius";
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("unknown recipe 'genius'; known: noise, zeroq, dsg, gdfq, qimera, genie, intraq, adversarial"),
            std::string::npos);
  o.recipe = "gdfq";
  o.bns = "dsg";
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("unknown BN-statistics loss 'dsg'"), std::string::npos);
  o.bns = "";
  o.recipe = "genie";
  o.ce_weight = 1;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("no target labels"), std::string::npos);
  o = SynthesizerOptions();
  EXPECT_NE(error_of([&] { make_synthesizer(teacher_, {1, 30, 30}, 10, o); }).find("divisible by 4"),
            std::string::npos);
  o.batch_size = 1;
  EXPECT_NE(error_of([&] { resolve_recipe(o); }).find("--batch-size must be >= 2"), std::string::npos);
}


// Each loss term of the synthesizers against its formula on small inputs.
TEST(LossTerms, LabelCrossEntropyHardAndSoft) {
  const torch::Tensor logits = torch::tensor({{2.0f, 0.0f, -1.0f}, {0.5f, 1.5f, 0.0f}});
  const torch::Tensor labels = torch::tensor({0, 1}, torch::kInt64);
  const torch::Tensor log_p = torch::log_softmax(logits, 1);
  const double hard = -(log_p[0][0].item<double>() + log_p[1][1].item<double>()) / 2;
  EXPECT_NEAR(label_ce(logits, labels).item<double>(), hard, 1e-6);
  EXPECT_NEAR(label_ce(logits, labels, torch::one_hot(labels, 3).to(torch::kFloat32)).item<double>(), hard, 1e-6);
  // Soft targets are used instead of the labels (Qimera): a half-half target between classes 0 and 2.
  const torch::Tensor soft = torch::tensor({{0.5f, 0.0f, 0.5f}, {0.5f, 0.0f, 0.5f}});
  const double want = -(0.5 * (log_p[0][0] + log_p[0][2] + log_p[1][0] + log_p[1][2])).item<double>() / 2;
  EXPECT_NEAR(label_ce(logits, labels, soft).item<double>(), want, 1e-6);
  EXPECT_GT(std::abs(want - hard), 0.1);
}

TEST(LossTerms, SoftInceptionTargetsBetweenTheFloorAndOne) {
  const torch::Tensor logits = torch::tensor({{2.0f, 0.0f}, {0.0f, 1.0f}, {1.0f, 1.0f}});
  const torch::Tensor labels = torch::tensor({0, 1, 0}, torch::kInt64);
  const torch::Tensor p = torch::softmax(logits, 1).gather(1, labels.unsqueeze(1)).squeeze(1);
  at::Generator gen = at::detail::createCPUGenerator(3);
  // Floor 1: every target is 1.
  EXPECT_NEAR(soft_inception(logits, labels, 1.0, gen).item<double>(), (p - 1).pow(2).mean().item<double>(), 1e-7);
  // Floor 0: targets in [0, 1], so the loss is at most the floor-1 loss's worst case and differs from it.
  double lowest = 1e9, highest = -1e9;
  for (int i = 0; i < 20; ++i) {
    const double v = soft_inception(logits, labels, 0.0, gen).item<double>();
    lowest = std::min(lowest, v);
    highest = std::max(highest, v);
  }
  EXPECT_LT(lowest, highest);  // the targets are drawn
  EXPECT_LE(highest, 1.0);
}

TEST(LossTerms, MarginalDistanceKeepsTheCosineDistanceInItsBand) {
  const torch::Tensor centroid_sum = torch::tensor({{2.0f, 0.0f}, {0.0f, 0.0f}});
  const torch::Tensor count = torch::tensor({2.0f, 0.0f});  // class 0 has a centroid (1, 0), class 1 none
  const torch::Tensor labels = torch::tensor({0, 0, 1}, torch::kInt64);
  // d = 0 (on the centroid) and d = 1 (orthogonal); the class-1 sample does not count.
  const torch::Tensor features = torch::tensor({{3.0f, 0.0f}, {0.0f, 1.0f}, {5.0f, 5.0f}});
  const double got = marginal_distance(features, labels, centroid_sum, count, 0.05, 0.8).item<double>();
  EXPECT_NEAR(got, ((0.05 - 0.0) + (1.0 - 0.8)) / 2, 1e-6);  // one sample under the band, one over it
  EXPECT_FALSE(marginal_distance(features.narrow(0, 2, 1), labels.narrow(0, 2, 1), centroid_sum, count, 0.05, 0.8)
                   .defined());
}

TEST(LossTerms, AdversarialTermOnlyWhereTheStudentAgrees) {
  const torch::Tensor teacher = torch::tensor({{2.0f, 0.0f}, {0.0f, 2.0f}});
  EXPECT_NEAR(adversarial_term(teacher, teacher).item<double>(), 0.0, 1e-7);  // no divergence
  const torch::Tensor student = torch::tensor({{1.0f, 0.0f}, {2.0f, 0.0f}});  // agrees on sample 0 only
  const torch::Tensor t = torch::log_softmax(teacher[0], 0), s = torch::log_softmax(student[0], 0);
  const double kl0 = (t.exp() * (t - s)).sum().item<double>();
  EXPECT_GT(kl0, 0);
  EXPECT_NEAR(adversarial_term(teacher, student).item<double>(), -kl0 / 2, 1e-6);
}

} // namespace
} // namespace zsq::generators
