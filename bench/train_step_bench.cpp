// One training step (forward, cross-entropy, backward, SGD) of a ResNet-20
// student at one bit-width versus the FP32 model, batch 128, 1×28×28.
//   build/bench/zsq_bench_train_step [steps] [threads (default: all cores)] [arch]
#include "models/quant_factory.h"
#include "models/zoo.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

double median_step_ms(zsq::models::Classifier& model, int steps) {
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  model->train();
  const torch::Tensor x = torch::randn({128, 1, 28, 28});
  const torch::Tensor y = torch::randint(0, 10, {128});
  std::vector<double> ms;
  for (int i = 0; i < steps + 2; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    sgd.zero_grad();
    torch::cross_entropy_loss(model->forward(x), y).backward();
    sgd.step();
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 10;
  const int threads = argc > 2 ? std::atoi(argv[2]) : static_cast<int>(std::thread::hardware_concurrency());
  const std::string arch = argc > 3 ? argv[3] : "resnet20";
  at::set_num_threads(std::max(1, threads));
  torch::manual_seed(0);
  using namespace zsq::models;
  const ModelSpec spec{arch, 1, 10, 16};
  auto teacher = build(spec, Fp32Factory());
  const double fp32 = median_step_ms(teacher, steps);
  std::printf("%s, batch 128, 1x28x28, %d threads, median of %d steps\n", arch.c_str(), at::get_num_threads(), steps);
  std::printf("%-22s %9.1f ms\n", "FP32", fp32);
  StudentConfig cfg;
  cfg.bits = {2, 3, 4, 8};
  auto student = build(spec, QuantFactory(cfg));
  {  // BN running statistics that describe the data, as a trained teacher has.
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 20; ++i) teacher->forward(torch::randn({128, 1, 28, 28}));
  }
  teacher->eval();
  init_student(*student, *teacher, torch::randn({128, 1, 28, 28}));
  for (const int64_t b : {8, 4, 2}) {
    set_bits(*student, b);
    const double q = median_step_ms(student, steps);
    std::printf("student at %lld bits    %9.1f ms  %5.2fx FP32\n", static_cast<long long>(b), q, q / fp32);
  }
  return 0;
}
