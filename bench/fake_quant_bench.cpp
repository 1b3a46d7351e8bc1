// Fused fake quantization versus the same math as a chain of ATen ops,
// forward + backward, on the shapes named in the quantization-core issue.
//   build/bench/zsq_bench_fake_quant [repeats] [threads (default: all cores)]
#include "framework/quant/fake_quant.h"
#include "framework/quant/reference.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

namespace {

// Median wall time in milliseconds of `fn` over `repeats` runs after 3 warm-ups.
double median_ms(const std::function<void()>& fn, int repeats) {
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

using Quantizer = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>;

// Forward and backward of one quantizer call, as training runs it.
std::function<void()> step(const torch::Tensor& x, const torch::Tensor& s, const torch::Tensor& gy, Quantizer q) {
  return [=] {
    torch::Tensor xv = x.detach().requires_grad_(true);
    torch::Tensor sv = s.detach().requires_grad_(true);
    q(xv, sv).backward(gy);
  };
}

void compare(const char* name, const torch::Tensor& x, const torch::Tensor& s, Quantizer fused, Quantizer chain,
             int repeats) {
  const torch::Tensor gy = torch::randn_like(x);
  const double copy = median_ms([&] { x.clone(); }, repeats);
  const double fused_ms = median_ms(step(x, s, gy, fused), repeats);
  const double chain_ms = median_ms(step(x, s, gy, chain), repeats);
  std::printf("%-44s %9lld  %8.3f  %8.3f  %8.3f  %7.1fx\n", name, static_cast<long long>(x.numel()), copy, chain_ms,
              fused_ms, chain_ms / fused_ms);
}

} // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  const int threads = argc > 2 ? std::atoi(argv[2]) : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
  torch::manual_seed(0);
  using namespace zsq::quant;
  std::printf("threads %d, median of %d runs, forward + backward, milliseconds\n", at::get_num_threads(), repeats);
  std::printf("%-44s %9s  %8s  %8s  %8s  %8s\n", "case", "elements", "copy", "ATen", "fused", "speed-up");

  const torch::Tensor act = torch::relu(torch::randn({128, 16, 28, 28}));
  const QuantRange u4 = unsigned_range(4);
  const torch::Tensor act_step = lsq_init_step(act, u4, false);
  const double g_act = lsq_grad_scale(act.numel(), u4);
  compare("LSQ activation 128x16x28x28, u4, per tensor", act, act_step,
          [&](auto& x, auto& s) { return lsq_fake_quant(x, s, u4, g_act); },
          [&](auto& x, auto& s) { return lsq_fake_quant_reference(x, s, u4, g_act); }, repeats);

  const torch::Tensor weight = torch::randn({64, 64, 3, 3}) * 0.05;
  const QuantRange s8 = signed_range(8);
  const torch::Tensor w_step = lsq_init_step(weight, s8, true);
  for (const int64_t bits : {8, 4, 2}) {
    const double g = lsq_grad_scale(weight.numel(), signed_range(bits));
    const std::string name = "vertical-layered weight 64x64x3x3, w" + std::to_string(bits);
    compare(name.c_str(), weight, w_step,
            [&](auto& x, auto& s) { return vl_fake_quant(x, s, 8, bits, Nesting::kShift, g); },
            [&](auto& x, auto& s) { return vl_fake_quant_reference(x, s, 8, bits, Nesting::kShift, g); }, repeats);
  }
  const torch::Tensor big_weight = torch::randn({512, 512, 3, 3}) * 0.02;
  const torch::Tensor big_step = lsq_init_step(big_weight, s8, true);
  const double g4 = lsq_grad_scale(big_weight.numel(), signed_range(4));
  compare("vertical-layered weight 512x512x3x3, w4", big_weight, big_step,
          [&](auto& x, auto& s) { return vl_fake_quant(x, s, 8, 4, Nesting::kShift, g4); },
          [&](auto& x, auto& s) { return vl_fake_quant_reference(x, s, 8, 4, Nesting::kShift, g4); }, repeats);
  return 0;
}
