// Run under mpirun: all-reduce time per MiB over MPI, and the share of a
// data-parallel ResNet-20 training step spent in gradient averaging.
//   mpirun -np 2 build/bench/zsq_bench_distributed [threads per process (default 1)]
#include "distributed/communicator.h"
#include "distributed/reducer.h"
#include "distributed/sync.h"
#include "models/zoo.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

int run(int argc, char** argv) {
  using namespace zsq;
  at::set_num_threads(argc > 1 ? std::max(1, std::atoi(argv[1])) : 1);
  auto comm = distributed::Communicator::create();
  const bool root = comm->rank() == 0;
  if (root) std::printf("%d processes, %d threads each\n", comm->size(), at::get_num_threads());

  if (root) std::printf("\nall-reduce (sum, float32), median of 10\n%10s %12s %12s\n", "MiB", "ms", "ms per MiB");
  for (const int64_t mib : {1, 4, 16, 64, 256}) {
    torch::Tensor t = torch::ones({mib * (1 << 20) / 4});
    std::vector<double> ms;
    for (int i = 0; i < 12; ++i) {
      comm->barrier();
      const auto t0 = std::chrono::steady_clock::now();
      comm->all_reduce(t);
      if (i >= 2) ms.push_back(1e3 * seconds_since(t0));
    }
    std::sort(ms.begin(), ms.end());
    if (root) std::printf("%10lld %12.2f %12.3f\n", static_cast<long long>(mib), ms[5], ms[5] / mib);
  }

  // ResNet-20, global batch 128 (64 per rank), one thread per rank.
  torch::manual_seed(0);
  auto model = models::build({"resnet20", 1, 10, 16}, models::Fp32Factory());
  distributed::broadcast_state(*comm, *model);
  distributed::Reducer reducer(comm, model->parameters());
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  const int64_t per_rank = 128 / comm->size();
  const torch::Tensor x = torch::randn({per_rank, 1, 28, 28});
  const torch::Tensor y = torch::randint(0, 10, {per_rank});
  double step_total = 0, reduce_total = 0;
  const int steps = 12;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    sgd.zero_grad();
    torch::cross_entropy_loss(model->forward(x), y).backward();
    const auto t1 = std::chrono::steady_clock::now();
    reducer.reduce();
    const double reduce_s = seconds_since(t1);
    sgd.step();
    if (i >= 2) {
      step_total += seconds_since(t0);
      reduce_total += reduce_s;
    }
  }
  torch::Tensor totals = torch::tensor({step_total, reduce_total}, torch::kFloat64);
  comm->all_reduce(totals, distributed::ReduceOp::kMax);
  if (root) {
    std::printf("\nResNet-20 step, global batch 128 (%lld per rank): %.1f ms, gradient averaging %.2f ms (%.1f %%), "
                "%zu bucket(s)\n",
                static_cast<long long>(per_rank), 1e3 * totals[0].item<double>() / (steps - 2),
                1e3 * totals[1].item<double>() / (steps - 2),
                100 * totals[1].item<double>() / totals[0].item<double>(), reducer.buckets().size());
  }
  return 0;
}

int main(int argc, char** argv) {
  const int code = run(argc, argv);  // releases the communicator
  zsq::distributed::finalize_world();
  return code;
}
