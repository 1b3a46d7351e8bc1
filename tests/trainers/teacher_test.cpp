#include "trainers/teacher.h"

#include "tests/support.h"

#include "framework/model_file.h"

#include <filesystem>

namespace zsq::trainers {
namespace {

using TeacherTest = test::SeedingFixture;

Dataset head(const Dataset& d, int64_t n) {
  Dataset out = d;
  out.images = d.images.narrow(0, 0, n);
  out.labels = d.labels.narrow(0, 0, n);
  return out;
}

TeacherOptions tiny_options() {
  TeacherOptions o;
  o.model = {"resnet8", 1, 10, 8};
  o.epochs = 3;
  o.batch_size = 64;
  o.lr = 0.05;
  o.train_limit = 2048;
  return o;
}

TEST(CosineLr, WarmupThenCosineToZero) {
  EXPECT_DOUBLE_EQ(cosine_lr(0.1, 0, 100, 0), 0.1);
  EXPECT_NEAR(cosine_lr(0.1, 50, 100, 0), 0.05, 1e-12);
  EXPECT_NEAR(cosine_lr(0.1, 100, 100, 0), 0.0, 1e-12);
  EXPECT_NEAR(cosine_lr(0.1, 4, 100, 10), 0.05, 1e-12);  // (4+1)/10 of the peak
  EXPECT_NEAR(cosine_lr(0.1, 10, 100, 10), 0.1, 1e-12);
  EXPECT_NEAR(cosine_lr(0.1, 55, 100, 10), 0.05, 1e-12);
}

TEST_F(TeacherTest, LearnsFashionMnistAndWritesALoadableFile) {
  const Dataset train = load_fashion_mnist(kFashionMnistDir, Split::kTrain);
  const Dataset test = head(load_fashion_mnist(kFashionMnistDir, Split::kTest), 1000);
  TeacherOptions o = tiny_options();
  o.out = path("teacher.h5");
  std::vector<EpochReport> reports;
  const TeacherResult result =
      train_teacher(o, train, test, fashion_mnist_normalization(), [&](const EpochReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 3u);
  EXPECT_LT(reports.back().train_loss, reports.front().train_loss);
  EXPECT_GT(result.test_acc, 0.55) << "3 epochs on 2048 images should be far above chance (0.10)";
  EXPECT_GT(result.images_per_second, 0);
  EXPECT_NEAR(reports.back().eta_seconds, 0.0, 1e-9);
  // The file holds the trained model: same accuracy when loaded back.
  const LoadedModel loaded = load_model(o.out);
  EXPECT_EQ(loaded.meta.arch, "resnet8");
  EXPECT_EQ(loaded.meta.width, 8);
  EXPECT_EQ(loaded.meta.input_shape, (std::vector<int64_t>{1, 28, 28}));
  const EvalResult again = evaluate(*loaded.model, test, loaded.norm());
  EXPECT_DOUBLE_EQ(again.top1, result.test_acc);
  EXPECT_EQ(again.count, 1000);
}

TEST_F(TeacherTest, SameSeedSameModel) {
  const Dataset train = head(load_fashion_mnist(kFashionMnistDir, Split::kTrain), 512);
  const Dataset test = head(load_fashion_mnist(kFashionMnistDir, Split::kTest), 128);
  TeacherOptions o = tiny_options();
  o.epochs = 1;
  o.eval_each_epoch = false;
  const auto a = train_teacher(o, train, test, fashion_mnist_normalization(), nullptr);
  const auto b = train_teacher(o, train, test, fashion_mnist_normalization(), nullptr);
  o.seed = 1;
  const auto c = train_teacher(o, train, test, fashion_mnist_normalization(), nullptr);
  const auto pa = a.model->parameters(), pb = b.model->parameters(), pc = c.model->parameters();
  bool all_equal = true, any_differs = false;
  for (size_t i = 0; i < pa.size(); ++i) {
    all_equal &= torch::equal(pa[i], pb[i]);
    any_differs |= !torch::equal(pa[i], pc[i]);
  }
  EXPECT_TRUE(all_equal);
  EXPECT_TRUE(any_differs);
}

// A run interrupted while it writes epoch 2's checkpoint keeps epoch 1's, and resumed from it ends bit for bit where
// an uninterrupted run ends; the checkpoint is gone once the model file is written.
TEST_F(TeacherTest, InterruptedRunResumesBitForBit) {
  const Dataset train = head(load_fashion_mnist(kFashionMnistDir, Split::kTrain), 256);
  const Dataset test = head(load_fashion_mnist(kFashionMnistDir, Split::kTest), 64);
  TeacherOptions o = tiny_options();
  o.epochs = 3;
  o.mixup = 0.2;  // its draws depend on the step: they must continue, not restart
  o.eval_each_epoch = false;
  o.out = path("teacher.h5");
  o.checkpoint = path("teacher.checkpoint.h5");
  TeacherOptions crashing = o;
  crashing.checkpoint_hook = [](int64_t epoch) {
    if (epoch == 2) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW_WITH(train_teacher(crashing, train, test, fashion_mnist_normalization(), nullptr), "interrupted");
  EXPECT_EQ(read_teacher_checkpoint_info(o.checkpoint).epoch, 1);
  EXPECT_FALSE(std::filesystem::exists(o.out));
  TeacherOptions resume = o;
  resume.resume = true;
  std::vector<int64_t> epochs;
  const TeacherResult resumed = train_teacher(resume, train, test, fashion_mnist_normalization(),
                                              [&](const EpochReport& r) { epochs.push_back(r.epoch); });
  EXPECT_EQ(resumed.resumed_from, 1);
  EXPECT_EQ(epochs, (std::vector<int64_t>{2, 3}));
  EXPECT_FALSE(std::filesystem::exists(o.checkpoint));
  TeacherOptions straight = o;
  straight.checkpoint = "";
  straight.out = path("straight.h5");
  const TeacherResult uninterrupted = train_teacher(straight, train, test, fashion_mnist_normalization(), nullptr);
  const auto a = named_state(*resumed.model), b = named_state(*uninterrupted.model);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  EXPECT_THROW_WITH(train_teacher(resume, train, test, fashion_mnist_normalization(), nullptr), "file not found");
  EXPECT_THROW(train_teacher(crashing, train, test, fashion_mnist_normalization(), nullptr), std::runtime_error);
  resume.epochs = 4;
  EXPECT_THROW_WITH(train_teacher(resume, train, test, fashion_mnist_normalization(), nullptr),
                    "plans 3 epochs, this run 4");
}

TEST(MixPlan, BetaLambdaAndPermutationFromSeedRankAndStep) {
  const MixPlan a = mix_plan(1.0, 16, 3, 0, 7), b = mix_plan(1.0, 16, 3, 0, 7);
  EXPECT_EQ(a.lambda, b.lambda);
  EXPECT_TRUE(torch::equal(a.permutation, b.permutation));
  EXPECT_TRUE(torch::equal(std::get<0>(a.permutation.sort()), torch::arange(16)));
  EXPECT_NE(mix_plan(1.0, 16, 3, 1, 7).lambda, a.lambda);  // another rank
  EXPECT_NE(mix_plan(1.0, 16, 3, 0, 8).lambda, a.lambda);  // another step
  // λ ~ Beta(α, α): mean 1/2, variance 1/(4(2α+1)).
  for (const double alpha : {1.0, 0.2}) {
    double sum = 0, sum2 = 0;
    const int n = 4000;
    for (int step = 0; step < n; ++step) {
      const double l = mix_plan(alpha, 4, 0, 0, step).lambda;
      ASSERT_GE(l, 0);
      ASSERT_LE(l, 1);
      sum += l;
      sum2 += l * l;
    }
    const double mean = sum / n, var = sum2 / n - mean * mean;
    EXPECT_NEAR(mean, 0.5, 0.02) << alpha;
    EXPECT_NEAR(var, 1 / (4 * (2 * alpha + 1)), 0.01) << alpha;
  }
  EXPECT_THROW_WITH(mix_plan(0, 4, 0, 0, 0), "mixup alpha must be > 0");
}

TEST_F(TeacherTest, MixupTrainsWithCrossEntropyAndDistillation) {
  const Dataset train = load_fashion_mnist(kFashionMnistDir, Split::kTrain);
  const Dataset test = head(load_fashion_mnist(kFashionMnistDir, Split::kTest), 1000);
  TeacherOptions o = tiny_options();
  o.eval_each_epoch = false;
  const TeacherResult plain = train_teacher(o, train, test, fashion_mnist_normalization(), nullptr);
  o.mixup = 1.0;
  const TeacherResult mixed = train_teacher(o, train, test, fashion_mnist_normalization(), nullptr);
  EXPECT_GT(mixed.test_acc, 0.5) << "mixup training should still learn";
  EXPECT_FALSE(torch::equal(plain.model->parameters()[0], mixed.model->parameters()[0]));
  // Distillation on mixed images: the student learns the teacher's function.
  o.distill_from = plain.model;
  o.seed = 1;
  const TeacherResult distilled = train_teacher(o, train, test, fashion_mnist_normalization(), nullptr);
  EXPECT_GT(distilled.test_acc, 0.3) << "far above chance (0.10) after 3 short epochs from a weak teacher";
}

TEST_F(TeacherTest, BadOptionsAreRejectedWithTheirName) {
  const Dataset train = head(load_fashion_mnist(kFashionMnistDir, Split::kTrain), 256);
  const Dataset test = head(load_fashion_mnist(kFashionMnistDir, Split::kTest), 64);
  auto check = [&](auto change, const std::string& message) {
    TeacherOptions o = tiny_options();
    change(o);
    EXPECT_THROW_WITH(check_teacher_options(o, train, test), message);
  };
  check([](TeacherOptions& o) { o.epochs = 0; }, "--epochs must be > 0");
  check([](TeacherOptions& o) { o.lr = -1; }, "--lr must be > 0");
  check([](TeacherOptions& o) { o.momentum = 1.0; }, "--momentum must be in [0, 1)");
  check([](TeacherOptions& o) { o.label_smoothing = 1.0; }, "--label-smoothing must be in [0, 1)");
  check([](TeacherOptions& o) { o.mixup = -1; }, "--mixup must be >= 0");
  check([](TeacherOptions& o) { o.warmup_epochs = 5; }, "--warmup-epochs must be in [0, epochs)");
  check([](TeacherOptions& o) { o.batch_size = 1000; }, "is larger than the 256 training images");
  check([](TeacherOptions& o) { o.model.num_classes = 5; }, "the data has 10 classes, the model 5");
  check([&](TeacherOptions& o) { o.out = path("missing/dir/t.h5"); }, "does not exist");
}

} // namespace
} // namespace zsq::trainers
