// Without mpirun the communicator is a world of one: collectives are the
// identity and the Reducer leaves gradients as they are.
#include "distributed/communicator.h"
#include "distributed/reducer.h"
#include "distributed/sync.h"

#include "tests/support.h"

namespace zsq::distributed {
namespace {

TEST(SingleProcess, CollectivesAreTheIdentity) {
  auto comm = Communicator::create();
  ASSERT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->rank(), 0);
  torch::Tensor t = torch::arange(5, torch::kFloat32);
  comm->all_reduce(t, ReduceOp::kAverage);
  EXPECT_TRUE(torch::equal(t, torch::arange(5, torch::kFloat32)));
  comm->broadcast(t, 0);
  EXPECT_TRUE(torch::equal(comm->all_gather(t), t.unsqueeze(0)));
  comm->barrier();
  EXPECT_THROW(comm->broadcast(t, 1), c10::Error);
  torch::Tensor half = torch::ones({2}, torch::kFloat16);
  EXPECT_THROW(comm->all_reduce(half), c10::Error);

  torch::Tensor p = torch::zeros({3}, torch::requires_grad());
  p.mutable_grad() = torch::full({3}, 2.0f);
  Reducer(comm, {p}).reduce();
  EXPECT_TRUE(torch::equal(p.grad(), torch::full({3}, 2.0f)));
  const Moments m = global_moments(*comm, torch::tensor({{1.0f, 2.0f}, {3.0f, 6.0f}}));
  EXPECT_TRUE(torch::allclose(m.mean, torch::tensor({2.0f, 4.0f})));
  EXPECT_TRUE(torch::allclose(m.var, torch::tensor({1.0f, 4.0f})));
  EXPECT_THROW(Communicator::create(CommunicatorOptions{-1}), c10::Error);
}

} // namespace
} // namespace zsq::distributed
