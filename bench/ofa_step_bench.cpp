// The whole once-for-all step of `zsq quantize` (teacher forward, every
// bit-width's forward and backward, the gradient combination, SGD), run by
// trainers::quantize itself on a pool, against the frozen step (--train
// per-bit: only the per-bit tensors train) and the FP32 step (teacher forward,
// FP32 student forward, distillation loss, backward, SGD). ResNet-20, bits
// 2,3,4,8, batch 64, 1x28x28. The three are interleaved; each repeat takes the
// median step time of its run, and the table is the median over the repeats.
//   build/bench/zsq_bench_ofa_step [repeats (5)] [steps per run (8)] [threads (1)] [arch (resnet20)] [batch (64)]
// bench/py_compare.sh runs it beside ../shared/bench/py_ofa_step.py (PyTorch-Python), interleaved.
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/quantize.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

using namespace zsq;

namespace {

int64_t kBatch = 64;  // images per step (argument 5)

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The FP32 step: what distilling into an FP32 copy of the teacher costs.
double fp32_step_ms(models::Classifier& teacher, const models::ModelSpec& spec, const torch::Tensor& images, int steps) {
  auto student = models::build(spec, models::Fp32Factory());
  student->eval();
  auto sgd = trainers::make_sgd(*student, 1e-4, 0.9, /*nesterov=*/true, 0);
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const torch::Tensor x = images.narrow(0, (i * kBatch) % images.size(0), kBatch);
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor target;
    {
      torch::NoGradGuard no_grad;
      target = teacher->forward(x);
    }
    sgd->zero_grad();
    trainers::kd_loss(student->forward(x), target, 4.0).backward();
    sgd->step();
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(ms);
}

double teacher_forward_ms(models::Classifier& teacher, const torch::Tensor& images, int steps) {
  torch::NoGradGuard no_grad;
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    teacher->forward(images.narrow(0, (i * kBatch) % images.size(0), kBatch));
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(ms);
}

// One quantize() run; the step time is the difference of consecutive steps' elapsed times (calibration at the
// start is not counted), the first two steps skipped.
double quantize_step_ms(models::Classifier& teacher, const models::ModelSpec& spec, const Dataset& pool,
                        const Normalization& norm, const std::string& train, const std::string& weighting, int steps) {
  models::StudentConfig config;
  config.bits = {2, 3, 4, 8};
  auto student = models::build(spec, models::QuantFactory(config));
  trainers::QuantizeOptions o;
  o.steps = steps;
  o.batch_size = kBatch;
  o.calib_count = kBatch;
  o.train = trainers::parse_train_scope(train);
  o.weighting = trainers::parse_weighting(weighting);
  std::vector<double> elapsed;
  trainers::quantize(*student, *teacher, {&pool, norm, nullptr}, o, nullptr, nullptr,
                     [&](const trainers::QuantizeStep& r) { elapsed.push_back(r.elapsed_seconds); });
  std::vector<double> ms;
  for (size_t i = 2; i < elapsed.size(); ++i) ms.push_back(1000 * (elapsed[i] - elapsed[i - 1]));
  return median(ms);
}

} // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  const int steps = argc > 2 ? std::max(4, std::atoi(argv[2])) : 8;
  const int threads = argc > 3 ? std::max(1, std::atoi(argv[3])) : 1;
  const std::string arch = argc > 4 ? argv[4] : "resnet20";
  kBatch = argc > 5 ? std::max(2, std::atoi(argv[5])) : 64;
  at::set_num_threads(threads);
  torch::manual_seed(0);
  const models::ModelSpec spec{arch, 1, 10, 16};
  auto teacher = models::build(spec, models::Fp32Factory());
  {  // BN running statistics that describe the data, as a trained teacher has.
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 20; ++i) teacher->forward(torch::randn({kBatch, 1, 28, 28}));
  }
  teacher->eval();
  Dataset pool;
  pool.name = "random";
  pool.images = torch::randint(0, 256, {kBatch * (steps + 1), 1, 28, 28}, torch::kUInt8);
  pool.labels = torch::randint(0, 10, {pool.images.size(0)});
  const Normalization norm{{0.5}, {0.25}};
  const torch::Tensor images = normalize(pool.images, norm);

  const std::vector<std::string> rows = {"teacher forward", "FP32 step", "frozen (per-bit)", "once-for-all, sum",
                                         "once-for-all, min-norm"};
  std::map<std::string, std::vector<double>> times;
  for (int r = 0; r < repeats; ++r) {
    times[rows[0]].push_back(teacher_forward_ms(teacher, images, steps));
    times[rows[1]].push_back(fp32_step_ms(teacher, spec, images, steps));
    times[rows[2]].push_back(quantize_step_ms(teacher, spec, pool, norm, "per-bit", "sum", steps));
    times[rows[3]].push_back(quantize_step_ms(teacher, spec, pool, norm, "all", "sum", steps));
    times[rows[4]].push_back(quantize_step_ms(teacher, spec, pool, norm, "all", "min-norm", steps));
    std::fprintf(stderr, "repeat %d/%d done\n", r + 1, repeats);
  }
  std::map<std::string, double> m;
  for (const auto& row : rows) m[row] = median(times[row]);
  const double fp32_reference = 4 * m["FP32 step"] - 3 * m["teacher forward"];  // 4 FP32 student steps + 1 teacher forward
  std::printf("%s, bits 2,3,4,8, batch %lld, 1x28x28, %d thread(s), median over %d interleaved repeats of the "
              "median of %d steps\n",
              arch.c_str(), static_cast<long long>(kBatch), at::get_num_threads(), repeats, steps - 2);
  std::printf("%-24s %9s %12s %16s\n", "step", "ms", "x frozen", "x (4 FP32 + T)");
  for (const auto& row : rows) {
    std::printf("%-24s %9.1f %12.2f %16.2f\n", row.c_str(), m[row], m[row] / m[rows[2]], m[row] / fp32_reference);
  }
  std::printf("4 FP32 student steps + 1 teacher forward: %.1f ms\n", fp32_reference);
  return 0;
}
