// Runs under `mpirun -np 2` (in the zsq_mpi_test executable): collectives,
// the Reducer, replica checks, data-parallel equivalence, global moments.
#include "distributed/communicator.h"
#include "distributed/reducer.h"
#include "distributed/sync.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace zsq::distributed {
namespace {

std::shared_ptr<Communicator> shared_comm() {
  static std::shared_ptr<Communicator> c = Communicator::create(CommunicatorOptions{60});
  return c;
}
Communicator& comm() { return *shared_comm(); }

TEST(Collectives, AllReduceEveryDtypeAndSize) {
  const int r = comm().rank(), n = comm().size();
  ASSERT_GE(n, 2);
  for (const auto dtype : {torch::kFloat32, torch::kFloat64, torch::kInt32, torch::kInt64, torch::kUInt8, torch::kInt8}) {
    for (const int64_t size : {int64_t(0), int64_t(1), int64_t(7), int64_t(1 << 20) + 3}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " size " + std::to_string(size));
      const torch::Tensor base = torch::arange(size, torch::kInt64).remainder(50);
      torch::Tensor t = (base + r).to(dtype);
      comm().all_reduce(t, ReduceOp::kSum);
      EXPECT_TRUE(torch::equal(t, (base * n + n * (n - 1) / 2).to(dtype)));
      torch::Tensor m = (base + r).to(dtype);
      comm().all_reduce(m, ReduceOp::kMax);
      EXPECT_TRUE(torch::equal(m, (base + n - 1).to(dtype)));
      if (torch::isFloatingType(dtype)) {
        torch::Tensor a = (base + r).to(dtype);
        comm().all_reduce(a, ReduceOp::kAverage);
        EXPECT_TRUE(torch::allclose(a, (base + (n - 1) / 2.0).to(dtype)));
      }
    }
  }
  torch::Tensor ints = torch::ones({3}, torch::kInt32);
  EXPECT_THROW(comm().all_reduce(ints, ReduceOp::kAverage), c10::Error);
  torch::Tensor strided = torch::ones({4, 4}).t();
  EXPECT_THROW(comm().all_reduce(strided), c10::Error);
}

TEST(Collectives, BroadcastAndAllGather) {
  const int r = comm().rank(), n = comm().size();
  torch::Tensor t = torch::full({5, 3}, static_cast<double>(r), torch::kFloat64);
  comm().broadcast(t, n - 1);
  EXPECT_TRUE(torch::equal(t, torch::full({5, 3}, static_cast<double>(n - 1), torch::kFloat64)));
  const torch::Tensor all = comm().all_gather(torch::full({2}, r, torch::kInt64));
  ASSERT_EQ(all.sizes(), torch::IntArrayRef({n, 2}));
  for (int k = 0; k < n; ++k) EXPECT_EQ(all[k][1].item<int64_t>(), k);
  comm().barrier();
  EXPECT_THROW(comm().broadcast(t, n), c10::Error);
}

TEST(ReducerTest, AveragesAcrossBucketsAndSkipsMissingGradients) {
  const int r = comm().rank(), n = comm().size();
  std::vector<torch::Tensor> params;
  for (int64_t k = 0; k < 6; ++k) params.push_back(torch::zeros({1000 + k}, torch::requires_grad()));
  Reducer reducer(shared_comm(), params, ReducerOptions{8192});  // ~2 parameters per bucket
  EXPECT_GE(reducer.buckets().size(), 3u);
  EXPECT_EQ(reducer.buckets().front().front(), 5u);  // reverse order
  for (int64_t k = 0; k < 4; ++k) params[k].mutable_grad() = torch::full({1000 + k}, static_cast<float>(r + k));
  if (r == 0) params[4].mutable_grad() = torch::full({1004}, 6.0f);  // a gradient on one rank only
  // params[5]: no gradient anywhere
  reducer.reduce();
  for (int64_t k = 0; k < 4; ++k) {
    EXPECT_TRUE(torch::allclose(params[k].grad(), torch::full({1000 + k}, k + (n - 1) / 2.0f))) << k;
  }
  ASSERT_TRUE(params[4].grad().defined());
  EXPECT_TRUE(torch::allclose(params[4].grad(), torch::full({1004}, 6.0f / n)));
  EXPECT_FALSE(params[5].grad().defined());
}

torch::nn::Sequential tiny_net() {
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)), torch::nn::ReLU(),
                               torch::nn::Flatten(), torch::nn::Linear(4 * 6 * 6, 3));
}

TEST(DataParallel, TwoHalvesEqualOneWholeBatch) {
  const int r = comm().rank(), n = comm().size();
  torch::manual_seed(123 + r);  // different initialisations: the broadcast must fix them
  auto dist = tiny_net();
  torch::manual_seed(7);
  auto single = tiny_net();
  broadcast_state(comm(), *dist);
  {  // rank 0's initialisation is what both start from
    torch::NoGradGuard no_grad;
    auto sp = single->parameters();
    auto dp = dist->parameters();
    if (r == 0) {
      for (size_t i = 0; i < sp.size(); ++i) sp[i].copy_(dp[i]);
    }
    for (auto& p : sp) comm().broadcast(p, 0);
  }
  torch::optim::SGD opt_dist(dist->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD opt_single(single->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  Reducer reducer(shared_comm(), dist->parameters());
  torch::manual_seed(99);  // the same batches on every rank
  for (int step = 0; step < 3; ++step) {
    const torch::Tensor x = torch::randn({8 * n, 1, 6, 6});
    const torch::Tensor y = torch::randint(0, 3, {8 * n});
    opt_single.zero_grad();
    torch::cross_entropy_loss(single->forward(x), y).backward();
    opt_single.step();
    opt_dist.zero_grad();
    torch::cross_entropy_loss(dist->forward(x.narrow(0, 8 * r, 8)), y.narrow(0, 8 * r, 8)).backward();
    reducer.reduce();
    opt_dist.step();
    EXPECT_NO_THROW(check_replicas(comm(), *dist)) << "step " << step;
  }
  auto sp = single->parameters();
  auto dp = dist->parameters();
  for (size_t i = 0; i < sp.size(); ++i) EXPECT_TRUE(torch::allclose(sp[i], dp[i], 1e-5, 1e-6)) << i;
}

TEST(DataParallel, ReplicaCheckNamesTheDifferingRank) {
  auto net = tiny_net();
  broadcast_state(comm(), *net);
  EXPECT_NO_THROW(check_replicas(comm(), *net));
  if (comm().rank() == 1) {
    torch::NoGradGuard no_grad;
    net->parameters()[0].add_(1e-3);
  }
  try {
    check_replicas(comm(), *net);
    ADD_FAILURE() << "no difference found";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1: '0.weight'"), std::string::npos) << e.what();
  }
}

TEST(GlobalMoments, EqualTheSingleProcessMomentsAndGradients) {
  const int r = comm().rank(), n = comm().size();
  torch::manual_seed(5);
  const torch::Tensor full = torch::randn({4 * n, 3, 5, 5}) * 2 + 1;
  const torch::Tensor target = torch::randn({3});
  // Single process on the whole batch.
  torch::Tensor xs = full.clone().requires_grad_(true);
  const torch::Tensor mean_s = xs.mean({0, 2, 3});
  const torch::Tensor var_s = xs.var({0, 2, 3}, /*unbiased=*/false);
  const torch::Tensor loss_s = (mean_s - target).pow(2).sum() + (var_s - 1).pow(2).sum();
  loss_s.backward();
  // This rank's half.
  torch::Tensor xd = full.narrow(0, 4 * r, 4).clone().requires_grad_(true);
  const Moments m = global_moments(comm(), xd);
  EXPECT_EQ(m.count, 4 * n * 25);
  EXPECT_TRUE(torch::allclose(m.mean, mean_s.detach(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(m.var, var_s.detach(), 1e-5, 1e-6));
  const torch::Tensor loss_d = (m.mean - target).pow(2).sum() + (m.var - 1).pow(2).sum();
  EXPECT_NEAR(loss_d.item<double>(), loss_s.item<double>(), 1e-4);
  loss_d.backward();
  EXPECT_TRUE(torch::allclose(xd.grad(), xs.grad().narrow(0, 4 * r, 4), 1e-4, 1e-6));
}

} // namespace
} // namespace zsq::distributed
